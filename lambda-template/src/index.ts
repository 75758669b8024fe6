// The AWS Lambda handler shardhook posts to through a function URL (payload format 2.0). It
// reuses the Worker template's verification, dispatch and example handlers; only the request
// and the environment are adapted here. Runtime: Node.js 20 (`npm run build:lambda` bundles it
// into lambda-template/dist/index.mjs; the handler is `index.handler`).
//
// Environment: SHARDHOOK_SIGNING_SECRET, optionally SHARDHOOK_PREVIOUS_SIGNING_SECRETS
// (space-separated), DISCORD_TOKEN, DISCORD_API_URL, SHARDHOOK_CONTROL_URL (the router's
// control API, for gateway commands such as `!members`' op 8; SHARDHOOK_CONTROL_URLS, in a
// cluster, every router's, the only places a 421 may redirect a command to), SHARDHOOK_REST_URL (the router's
// REST proxy: set, `discord()` calls Discord through it, signed, and DISCORD_TOKEN is not
// needed) and, when the router has a signing.control_secret, SHARDHOOK_CONTROL_SECRET (then
// only it signs commands and REST requests).

import type { ControlEnv } from "../../worker-template/src/commands";
import { deliver, signingKeys, type Handlers } from "../../worker-template/src/delivery";
import type { DiscordEnv } from "../../worker-template/src/discord";
import { exampleHandlers } from "../../worker-template/src/handlers";

export interface Env extends DiscordEnv, ControlEnv {
  SHARDHOOK_SIGNING_SECRET?: string;
  SHARDHOOK_PREVIOUS_SIGNING_SECRETS?: string;
}

/** The parts of a function URL event (payload format 2.0) this handler reads. */
export interface FunctionUrlEvent {
  requestContext?: { http?: { method?: string } };
  /** Lower-cased names; repeated headers joined with commas. */
  headers?: Record<string, string | undefined>;
  body?: string;
  isBase64Encoded?: boolean;
}

export interface FunctionUrlResult {
  statusCode: number;
  headers: Record<string, string>;
  body: string;
}

/** Builds a handler over `handlers` and an environment read on each call. */
export function createHandler(
  handlers: Handlers<Env>,
  readEnv: () => Env = () => process.env as Env,
): (event: FunctionUrlEvent) => Promise<FunctionUrlResult> {
  return async (event) => {
    const method = event.requestContext?.http?.method ?? "POST";
    if (method !== "POST") return result(405, "shardhook posts events here");
    const env = readEnv();
    let keys;
    try {
      keys = await signingKeys(env.SHARDHOOK_SIGNING_SECRET, env.SHARDHOOK_PREVIOUS_SIGNING_SECRETS);
    } catch (error) {
      console.error("the signing secret is misconfigured", error);
      return result(500, "the signing secret is misconfigured");
    }
    // The signature covers the bytes shardhook sent: undo the function URL's base64 first.
    const body = event.isBase64Encoded
      ? new Uint8Array(Buffer.from(event.body ?? "", "base64"))
      : new TextEncoder().encode(event.body ?? "");
    // Lambda has no work after the answer, so deferred work is awaited before answering.
    const deferred: Promise<unknown>[] = [];
    const answer = await deliver({
      headers: event.headers ?? {},
      body,
      keys,
      now: Math.floor(Date.now() / 1000),
      handlers,
      env,
      waitUntil: (promise) => deferred.push(promise),
    });
    for (const outcome of await Promise.allSettled(deferred)) {
      if (outcome.status === "rejected") console.error("deferred work failed", outcome.reason);
    }
    return result(answer.status, answer.body);
  };
}

function result(statusCode: number, body: string): FunctionUrlResult {
  return { statusCode, headers: { "content-type": "text/plain; charset=utf-8" }, body };
}

export const handler = createHandler(exampleHandlers<Env>());
