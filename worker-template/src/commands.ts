// Sends gateway commands (presence, voice state, request guild members, request soundboard
// sounds) back through the router's control API: `POST {SHARDHOOK_CONTROL_URL}/v1/gateway/commands`,
// signed with the same Standard Webhooks keys the router signs its events with. The router
// picks the shard (`(guild_id >> 22) % shard_count`, or the `shard_id` given), paces the
// command under Discord's per-connection budget and answers at once; what Discord sends back
// (GUILD_MEMBERS_CHUNK, VOICE_SERVER_UPDATE...) arrives later as ordinary events.
//
// Only fetch, Web Crypto, TextEncoder and btoa are used, so the Worker and the Lambda (Node 20)
// share it. Errors reaching the router (connection refused, timeout) are thrown, as discord.ts
// does: an awaiting handler then fails and the router retries its batch. The router's own
// answers are returned as a `CommandResult`. With several routers sharing the bot (`[cluster]`),
// a router answers 421 for a shard another one holds, naming that router's control address:
// the command is sent there once, signed afresh, but only if that address is one of the routers
// this handler was configured with (`SHARDHOOK_CONTROL_URLS`, or `SHARDHOOK_CONTROL_URL`
// itself). A 421 naming any other address (a forged lease in Redis, a man in the middle) is
// refused: a fresh, unspent signed command never goes to a host nobody configured.

import {
  GatewayOpcodes,
  type GatewayPresenceUpdateData,
  type GatewayRequestGuildMembersData,
  type GatewayRequestSoundboardSoundsData,
  type GatewayVoiceStateUpdateData,
  type Snowflake,
} from "discord-api-types/v10";
import { importSecret, type SigningKey } from "./verify";

/** What sending a command needs from the environment. */
export interface ControlEnv {
  /** The router's control API, e.g. `http://127.0.0.1:8080` (its `control.listen`). */
  SHARDHOOK_CONTROL_URL?: string;
  /**
   * In a cluster: every router's control API (space- or comma-separated base URLs, e.g.
   * `http://10.0.0.5:8080 http://10.0.0.6:8080`), the only places a 421 may send a command to.
   */
  SHARDHOOK_CONTROL_URLS?: string;
  /** The router's `signing.secret`: commands are signed with it... */
  SHARDHOOK_SIGNING_SECRET?: string;
  /** ...and with each of these (space-separated), so a rotation works in either order. */
  SHARDHOOK_PREVIOUS_SIGNING_SECRETS?: string;
  /**
   * The router's `signing.control_secret`, when commands have a key of their own: then only
   * this key signs them, and a handler that sends commands needs no key that signs events.
   */
  SHARDHOOK_CONTROL_SECRET?: string;
}

/** The shard a command goes to: the one holding a guild, or a shard by id. */
export type CommandTarget = { guild_id: Snowflake; shard_id?: never } | { shard_id: number; guild_id?: never };

/** Presence is per connection, so it may also go to every shard the router runs. */
export type PresenceTarget = CommandTarget | { shard_id: "all"; guild_id?: never };

/** A request to the control API: where it goes, the opcode and its `d`. */
export type GatewayCommandRequest =
  | (PresenceTarget & { op: GatewayOpcodes.PresenceUpdate; d: GatewayPresenceUpdateData })
  | (CommandTarget & { op: GatewayOpcodes.VoiceStateUpdate; d: GatewayVoiceStateUpdateData })
  | (CommandTarget & { op: GatewayOpcodes.RequestGuildMembers; d: GatewayRequestGuildMembersData })
  | (CommandTarget & { op: GatewayOpcodes.RequestSoundboardSounds; d: GatewayRequestSoundboardSoundsData });

/** What the router answered. */
export type CommandResult =
  /** 202: queued on these shards; Discord's answer comes later as events. */
  | { kind: "queued"; status: number; shards: number[] }
  /**
   * 429: the shard's send budget (120 per 60 s, heartbeats set aside) is spent; try again in
   * `retryAfter` seconds. With `shard_id: "all"`, `queued` lists the shards that took it.
   */
  | { kind: "rate_limited"; status: 429; retryAfter: number; error: string; queued: number[] }
  /**
   * Anything else: 400 a bad command, 401 a bad, stale or replayed signature, 404 a shard this
   * router does not run, 421 a shard another router of the cluster holds when its address was
   * not given (or it answered 421 too), 503 a shard not connected (worth retrying later), or an
   * unexpected status.
   */
  | { kind: "refused"; status: number; error: string; queued: number[] };

export interface SendOptions {
  /** Give up on the router after this long (default 5000 ms); the error is thrown. */
  timeoutMs?: number;
}

export const COMMANDS_PATH = "/v1/gateway/commands";

/** Sends one gateway command through the router and reports what it answered. */
export async function sendGatewayCommand(
  env: ControlEnv,
  command: GatewayCommandRequest,
  { timeoutMs = 5000 }: SendOptions = {},
): Promise<CommandResult> {
  const base = env.SHARDHOOK_CONTROL_URL?.trim().replace(/\/+$/, "");
  if (!base) throw new Error("SHARDHOOK_CONTROL_URL is not set");
  const keys = await commandKeys(env);
  const body = JSON.stringify(command);
  let response = await postCommand(base, keys, body, timeoutMs);
  if (response.status === 421) {
    // Another router of the cluster holds the shard: once to it, if it is one of ours.
    const text = await response.text();
    const named = ownerControl(base, text);
    if (!named) return commandResult(421, null, text);
    const owner = configuredRouter(env, base, named);
    if (!owner) {
      return {
        kind: "refused",
        status: 421,
        error: `the router answered 421 naming ${new URL(named).host}, which is not in SHARDHOOK_CONTROL_URLS; the command was not sent there`,
        queued: [],
      };
    }
    response = await postCommand(owner, keys, body, timeoutMs);
  }
  return commandResult(response.status, response.headers.get("retry-after"), await response.text());
}

/** One signed POST of `body` to `base`'s command path. */
async function postCommand(base: string, keys: readonly SigningKey[], body: string, timeoutMs: number) {
  // A fresh id per request: the router refuses one it has seen. A retried handler sends the
  // command again as a new request.
  const id = `msg_${crypto.randomUUID().replaceAll("-", "")}`;
  const timestamp = Math.floor(Date.now() / 1000);
  return fetch(`${base}${COMMANDS_PATH}`, {
    method: "POST",
    headers: {
      "content-type": "application/json",
      "webhook-id": id,
      "webhook-timestamp": String(timestamp),
      "webhook-signature": await signature(keys, id, timestamp, body),
    },
    body,
    signal: AbortSignal.timeout(timeoutMs),
  });
}

/**
 * The base URL of the router a 421 names (`control`: `host:port`), on the scheme of `base`;
 * `undefined` when the answer names none.
 */
export function ownerControl(base: string, text: string): string | undefined {
  try {
    const body: unknown = JSON.parse(text);
    if (typeof body !== "object" || body === null) return undefined;
    const control = (body as { control?: unknown }).control;
    if (typeof control !== "string" || !/^[A-Za-z0-9.\-\[\]:]+$/.test(control)) return undefined;
    return `${new URL(base).protocol}//${control}`;
  } catch {
    return undefined;
  }
}

/**
 * The configured router (`SHARDHOOK_CONTROL_URLS`, or `base` itself) whose origin is `named`'s,
 * as configured (its scheme and any path prefix kept); `undefined` when none is.
 */
export function configuredRouter(env: ControlEnv, base: string, named: string): string | undefined {
  let origin: string;
  try {
    origin = new URL(named).origin;
  } catch {
    return undefined;
  }
  const configured = [base, ...(env.SHARDHOOK_CONTROL_URLS ?? "").split(/[\s,]+/)]
    .map((url) => url.trim().replace(/\/+$/, ""))
    .filter((url) => url.length > 0);
  return configured.find((url) => {
    try {
      const parsed = new URL(url);
      // The host and port a 421 names, on any scheme configured for them.
      return parsed.host === new URL(origin).host;
    } catch {
      return false;
    }
  });
}

/** op 8: members of `d.guild_id`, sent on the shard holding that guild. */
export function requestGuildMembers(env: ControlEnv, d: GatewayRequestGuildMembersData, options?: SendOptions) {
  return sendGatewayCommand(env, { guild_id: d.guild_id, op: GatewayOpcodes.RequestGuildMembers, d }, options);
}

/** op 4: join, move or leave (`channel_id: null`) a voice channel of `d.guild_id`. */
export function updateVoiceState(env: ControlEnv, d: GatewayVoiceStateUpdateData, options?: SendOptions) {
  return sendGatewayCommand(env, { guild_id: d.guild_id, op: GatewayOpcodes.VoiceStateUpdate, d }, options);
}

/** op 3: the bot's presence, on every shard (the default) or on one. */
export function updatePresence(
  env: ControlEnv,
  d: GatewayPresenceUpdateData,
  shard: number | "all" = "all",
  options?: SendOptions,
) {
  return sendGatewayCommand(env, { shard_id: shard, op: GatewayOpcodes.PresenceUpdate, d }, options);
}

/**
 * op 31: soundboard sounds of `d.guild_ids`, sent on the shard holding the first guild unless
 * `target` says otherwise (guilds on other shards need a request each).
 */
export function requestSoundboardSounds(
  env: ControlEnv,
  d: GatewayRequestSoundboardSoundsData,
  target: CommandTarget = { guild_id: d.guild_ids[0] ?? "" },
  options?: SendOptions,
) {
  return sendGatewayCommand(env, { ...target, op: GatewayOpcodes.RequestSoundboardSounds, d }, options);
}

/** Maps the router's answer (status, `Retry-After`, JSON body) to a `CommandResult`. */
export function commandResult(status: number, retryAfter: string | null, text: string): CommandResult {
  let body: { queued?: unknown; error?: unknown; retry_after?: unknown } = {};
  try {
    const parsed: unknown = JSON.parse(text);
    if (typeof parsed === "object" && parsed !== null) body = parsed;
  } catch {
    // Not the router's JSON (a proxy's page, say): the text is the error.
  }
  const queued = Array.isArray(body.queued) ? body.queued.filter(Number.isInteger) : [];
  const error = typeof body.error === "string" ? body.error : text.slice(0, 200) || `HTTP ${status}`;
  if (status >= 200 && status < 300) return { kind: "queued", status, shards: queued };
  if (status === 429) {
    const header = retryAfter !== null && /^\s*\d+\s*$/.test(retryAfter) ? Number(retryAfter) : NaN;
    const fromBody = typeof body.retry_after === "number" ? Math.ceil(body.retry_after) : NaN;
    const seconds = Number.isFinite(header) ? header : Number.isFinite(fromBody) ? fromBody : 1;
    return { kind: "rate_limited", status: 429, retryAfter: Math.max(seconds, 1), error, queued };
  }
  return { kind: "refused", status, error, queued };
}

/**
 * The `webhook-signature` value: `v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>` per
 * key, space-separated, as the router writes it.
 */
export async function signature(
  keys: readonly SigningKey[],
  id: string,
  timestamp: number,
  body: string,
): Promise<string> {
  const signed = new TextEncoder().encode(`${id}.${timestamp}.${body}`);
  const entries = await Promise.all(
    keys.map(async (key) => `v1,${toBase64(new Uint8Array(await crypto.subtle.sign("HMAC", key, signed)))}`),
  );
  return entries.join(" ");
}

/**
 * `SHARDHOOK_CONTROL_SECRET` alone when set; else the current signing key first, then the
 * previous ones. Each is imported once per isolate.
 */
export async function commandKeys(env: ControlEnv): Promise<SigningKey[]> {
  const control = env.SHARDHOOK_CONTROL_SECRET?.trim();
  if (control) return [await cachedSigningKey(control)];
  const current = env.SHARDHOOK_SIGNING_SECRET?.trim();
  if (!current) throw new Error("SHARDHOOK_SIGNING_SECRET is not set");
  const previous = (env.SHARDHOOK_PREVIOUS_SIGNING_SECRETS ?? "").split(/\s+/).filter((s) => s.length > 0);
  return Promise.all([current, ...previous].map(cachedSigningKey));
}

const keyCache = new Map<string, Promise<SigningKey>>();

function cachedSigningKey(secret: string): Promise<SigningKey> {
  let key = keyCache.get(secret);
  if (!key) {
    key = importSecret(secret);
    keyCache.set(secret, key);
    key.catch(() => keyCache.delete(secret));
  }
  return key;
}

function toBase64(bytes: Uint8Array): string {
  let binary = "";
  for (const byte of bytes) binary += String.fromCharCode(byte);
  return btoa(binary);
}
