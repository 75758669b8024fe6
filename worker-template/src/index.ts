// The Cloudflare Worker shardhook posts to: adapts a fetch request to `deliver` and answers.
// Configuration (wrangler.toml and secrets): SHARDHOOK_SIGNING_SECRET, optionally
// SHARDHOOK_PREVIOUS_SIGNING_SECRETS (space-separated, during rotation), DISCORD_TOKEN,
// DISCORD_API_URL, SHARDHOOK_CONTROL_URL (the router's control API, for gateway commands;
// SHARDHOOK_CONTROL_URLS in a cluster: every router's, the only places a 421 may redirect to) and
// SHARDHOOK_REST_URL (the router's REST proxy: set, Discord is called through it, signed).

import type { ControlEnv } from "./commands";
import { deliver, signingKeys } from "./delivery";
import type { DiscordEnv } from "./discord";
import { exampleHandlers } from "./handlers";

export interface Env extends DiscordEnv, ControlEnv {
  SHARDHOOK_SIGNING_SECRET?: string;
  SHARDHOOK_PREVIOUS_SIGNING_SECRETS?: string;
}

const handlers = exampleHandlers<Env>();

export default {
  async fetch(request, env, ctx): Promise<Response> {
    if (request.method !== "POST") {
      return new Response("shardhook posts events here", { status: 405, headers: { allow: "POST" } });
    }
    let keys;
    try {
      keys = await signingKeys(env.SHARDHOOK_SIGNING_SECRET, env.SHARDHOOK_PREVIOUS_SIGNING_SECRETS);
    } catch (error) {
      console.error("the signing secret is misconfigured", error);
      return new Response("the signing secret is misconfigured", { status: 500 });
    }
    const answer = await deliver({
      headers: request.headers,
      body: new Uint8Array(await request.arrayBuffer()),
      keys,
      now: Math.floor(Date.now() / 1000),
      handlers,
      env,
      waitUntil: (promise) => ctx.waitUntil(promise),
    });
    return new Response(answer.body, {
      status: answer.status,
      headers: { "content-type": "text/plain; charset=utf-8" },
    });
  },
} satisfies ExportedHandler<Env>;
