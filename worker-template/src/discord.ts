// A minimal Discord REST client for handlers: one JSON request, an error on any non-2xx answer
// so the batch is retried. With SHARDHOOK_REST_URL set, the request goes through the router's
// REST proxy, signed, and the router adds the bot token and keeps every handler's requests
// within Discord's rate limits; without it, it goes straight to Discord with DISCORD_TOKEN, and
// rate limits are left to the router's redelivery.

import { commandKeys, signature, type ControlEnv } from "./commands";

/** What a handler needs to call Discord. */
export interface DiscordEnv extends ControlEnv {
  /** The bot token (a secret: `wrangler secret put DISCORD_TOKEN`); not needed through the router. */
  DISCORD_TOKEN?: string;
  /** The REST base, e.g. the simulator's `http://127.0.0.1:9000/api/v10` locally. */
  DISCORD_API_URL?: string;
  /**
   * The router's REST proxy (its `control.listen` with `rest.enabled`), e.g.
   * `http://127.0.0.1:8080`: when set, every request goes through it, signed with the keys
   * gateway commands are signed with, and no DISCORD_TOKEN is needed.
   */
  SHARDHOOK_REST_URL?: string;
}

export const DEFAULT_API_URL = "https://discord.com/api/v10";

/** The path every Discord API request has below the proxy's base. */
export const REST_PREFIX = "/api/v10";

export class DiscordError extends Error {
  constructor(
    readonly method: string,
    readonly path: string,
    readonly status: number,
    readonly detail: string,
  ) {
    super(`Discord answered ${status} to ${method} ${path}: ${detail}`);
  }
}

/**
 * Sends `body` as JSON to `{path}` (below `/api/v10`, with its query if any). `auth: false`
 * leaves the token out, for routes authorised by their own token (interaction callbacks);
 * through the router the token is the router's business either way.
 */
export async function discord(
  env: DiscordEnv,
  method: "GET" | "POST" | "PATCH" | "DELETE" | "PUT",
  path: string,
  body?: unknown,
  { auth = true }: { auth?: boolean } = {},
): Promise<unknown> {
  const text = body === undefined ? "" : JSON.stringify(body);
  const headers: Record<string, string> = body === undefined ? {} : { "content-type": "application/json" };
  let url: string;
  const proxy = env.SHARDHOOK_REST_URL?.trim().replace(/\/+$/, "");
  if (proxy) {
    const target = `${REST_PREFIX}${path}`;
    // A fresh id per request: the router refuses one it has seen.
    const id = `rest_${crypto.randomUUID().replaceAll("-", "")}`;
    const timestamp = Math.floor(Date.now() / 1000);
    headers["webhook-id"] = id;
    headers["webhook-timestamp"] = String(timestamp);
    headers["webhook-signature"] = await signature(await commandKeys(env), id, timestamp, restSigned(method, target, text));
    url = `${proxy}${target}`;
  } else {
    if (auth) {
      if (!env.DISCORD_TOKEN) throw new Error("DISCORD_TOKEN is not set");
      headers.authorization = `Bot ${env.DISCORD_TOKEN}`;
    }
    url = `${(env.DISCORD_API_URL || DEFAULT_API_URL).replace(/\/+$/, "")}${path}`;
  }
  const response = await fetch(url, { method, headers, body: body === undefined ? undefined : text });
  const answer = await response.text();
  if (!response.ok) throw new DiscordError(method, path, response.status, answer.slice(0, 200));
  try {
    return answer ? JSON.parse(answer) : null;
  } catch {
    return answer;
  }
}

/** What a request through the router's REST proxy is signed over, as the body of a Standard Webhooks signature. */
export function restSigned(method: string, target: string, body: string): string {
  return `${method} ${target}\n${body}`;
}
