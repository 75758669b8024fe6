// A minimal Discord REST client for handlers: one authenticated JSON request, an error on any
// non-2xx answer so the batch is retried. Rate-limit buckets and retries are left to the
// router's redelivery; a busy bot would put a REST library (e.g. @discordjs/rest) here.

/** What a handler needs to call Discord. */
export interface DiscordEnv {
  /** The bot token (a secret: `wrangler secret put DISCORD_TOKEN`). */
  DISCORD_TOKEN?: string;
  /** The REST base, e.g. the simulator's `http://127.0.0.1:9000/api/v10` locally. */
  DISCORD_API_URL?: string;
}

export const DEFAULT_API_URL = "https://discord.com/api/v10";

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
 * Sends `body` as JSON to `{DISCORD_API_URL}{path}`. `auth: false` leaves the token out, for
 * routes authorised by their own token (interaction callbacks).
 */
export async function discord(
  env: DiscordEnv,
  method: "POST" | "PATCH" | "DELETE" | "PUT",
  path: string,
  body: unknown,
  { auth = true }: { auth?: boolean } = {},
): Promise<unknown> {
  const headers: Record<string, string> = { "content-type": "application/json" };
  if (auth) {
    if (!env.DISCORD_TOKEN) throw new Error("DISCORD_TOKEN is not set");
    headers.authorization = `Bot ${env.DISCORD_TOKEN}`;
  }
  const base = (env.DISCORD_API_URL || DEFAULT_API_URL).replace(/\/+$/, "");
  const response = await fetch(`${base}${path}`, {
    method,
    headers,
    body: JSON.stringify(body),
  });
  const text = await response.text();
  if (!response.ok) throw new DiscordError(method, path, response.status, text.slice(0, 200));
  try {
    return text ? JSON.parse(text) : null;
  } catch {
    return text;
  }
}
