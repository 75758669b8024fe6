// Builds signed requests the way shardhook does, with the official npm verifier's signer.
import { Webhook } from "standardwebhooks";
import fixture from "./fixtures/shardhook-request.json";

export { fixture };

/** The fixture's own `webhook-timestamp`: the moment it was signed. */
export const FIXTURE_NOW = Number(fixture.headers["webhook-timestamp"]);

export const nowSeconds = () => Math.floor(Date.now() / 1000);

type Event = { t: string; s: number; d: unknown; deferred?: boolean };

/** A request of one shard's batch, as the router writes it (wire format v2). */
export function batchBody(events: Event[], shard = 0): string {
  return requestBody([{ shard_id: shard, events }]);
}

/** A request carrying several shards' batches (wire format v2). */
export function requestBody(batches: { shard_id: number; session_id?: string; events: Event[] }[]): string {
  return JSON.stringify({
    v: 2,
    shard_count: 2,
    batches: batches.map((b) => ({ shard_id: b.shard_id, session_id: b.session_id ?? "sess-1", events: b.events })),
  });
}

/** Headers signing `body` at `at` (Unix seconds) with each of `secrets`, by standardwebhooks. */
export function signedHeaders(
  body: string,
  secrets: string[],
  at: number = nowSeconds(),
  id = `msg_test_${Math.random().toString(36).slice(2)}`,
): Record<string, string> {
  const signature = secrets
    .map((secret) => new Webhook(secret).sign(id, new Date(at * 1000), body))
    .join(" ");
  return {
    "content-type": "application/json",
    "webhook-id": id,
    "webhook-timestamp": String(at),
    "webhook-signature": signature,
  };
}

export function message(content: string, channel = "1551597200998400001", bot = false) {
  return {
    id: "1551601395302400002",
    channel_id: channel,
    guild_id: "1551597200998400000",
    content,
    author: { id: "1100000000000000003", username: "someone", discriminator: "0", avatar: null, bot },
    attachments: [],
    embeds: [],
    mentions: [],
    mention_roles: [],
    mention_everyone: false,
    pinned: false,
    tts: false,
    timestamp: "2026-11-22T00:00:00.000000+00:00",
    edited_timestamp: null,
    flags: 0,
    type: 0,
  };
}

export function interaction(id = "1300000000000000001", token = "interaction-token") {
  return {
    id,
    token,
    application_id: "1100000000000000001",
    type: 2,
    version: 1,
    channel_id: "1551597200998400001",
    data: { id: "1300000000000000002", name: "hello", type: 1 },
    locale: "en-US",
    entitlements: [],
    authorizing_integration_owners: {},
    attachment_size_limit: 8388608,
  };
}

export function ready() {
  return {
    v: 10,
    user: { id: "1100000000000000001", username: "shardhook-sim", discriminator: "0", avatar: null, bot: true },
    guilds: [{ id: "1551597200998400000", unavailable: true }],
    session_id: "sess-1",
    resume_gateway_url: "ws://127.0.0.1:1/resume",
    shard: [0, 2],
    application: { id: "1100000000000000001", flags: 0 },
  };
}
