// One delivery from shardhook, platform-free: verify the signature, parse the request (wire
// format v2: the batches of one or many shards), hand each event to the handler registered for
// its name, and decide the HTTP answer. The Worker (`index.ts`) and the Lambda template adapt
// their requests to `deliver` and nothing else.
//
// Delivery is at least once: a request that timed out at the router may have been handled and
// is sent again with the same `webhook-id`, and a request that failed is retried with all its
// batches. An event is identified by (shard_id, session_id, s); handlers whose effects must not
// repeat should record that key (KV, D1, a Durable Object, DynamoDB...) and skip events they
// have already seen.

import type { GatewayDispatchEvents, GatewayDispatchPayload } from "discord-api-types/v10";
import { importSecret, verify, type HeaderSource, type SigningKey } from "./verify";

/** A gateway event name, e.g. `"MESSAGE_CREATE"`. */
export type EventName = `${GatewayDispatchEvents}`;

/** The `d` of the event `N`, as discord-api-types (v10) describes it. */
export type EventData<N extends EventName> = GatewayDispatchPayload extends infer P
  ? P extends { t: infer T; d: infer D }
    ? N extends `${T & string}`
      ? D
      : never
    : never
  : never;

/** One shard's events in a request: one session, in seq order. */
export interface Batch {
  shard_id: number;
  /** The shard count of the request that carried it. */
  shard_count: number;
  session_id: string;
  /** `deferred` is true on an INTERACTION_CREATE the router already acknowledged
   * (`interactions.auto_defer`). */
  events: { t: string; s: number; d: unknown; deferred?: boolean }[];
}

/** The request body shardhook sends (README, "The wire format"): the ready batches of one or
 * many shards. */
export interface DeliveryBody {
  v: 2;
  shard_count: number;
  batches: Omit<Batch, "shard_count">[];
}

/** What a handler knows besides the event itself. */
export interface EventContext<Env> {
  env: Env;
  shardId: number;
  shardCount: number;
  sessionId: string;
  seq: number;
  /** The request's id: the same on every retry of the request. */
  webhookId: string;
  /**
   * The router already answered this interaction with a deferred response
   * (`interactions.auto_defer`): edit `@original` instead of calling back.
   */
  deferred: boolean;
  /**
   * Work that may finish after the answer (Workers: `ctx.waitUntil`). The router will not
   * retry it if it fails, so await instead whatever must happen for the event to count as
   * handled.
   */
  waitUntil(promise: Promise<unknown>): void;
}

export type Handler<N extends EventName, Env> = (
  data: EventData<N>,
  ctx: EventContext<Env>,
) => void | Promise<void>;

/** Handlers by event name. Events without one are acknowledged and skipped. */
export class Handlers<Env> {
  private readonly byName = new Map<string, Handler<never, Env>>();

  on<N extends EventName>(name: N, handler: Handler<N, Env>): this {
    this.byName.set(name, handler as Handler<never, Env>);
    return this;
  }

  /**
   * Runs each batch's events in seq order, the batches of different shards side by side; the
   * first handler that throws stops its batch, and the request fails (the router retries all of
   * it) once every batch has finished or stopped.
   */
  async dispatchAll(
    batches: readonly Batch[],
    meta: { env: Env; webhookId: string; waitUntil(promise: Promise<unknown>): void },
  ): Promise<number> {
    const results = await Promise.allSettled(batches.map((batch) => this.dispatch(batch, meta)));
    const failed = results.find((r): r is PromiseRejectedResult => r.status === "rejected");
    if (failed) throw failed.reason;
    return results.reduce((sum, r) => sum + (r.status === "fulfilled" ? r.value : 0), 0);
  }

  /** Runs one batch's events in seq order; the first handler that throws stops the batch. */
  async dispatch(
    batch: Batch,
    meta: { env: Env; webhookId: string; waitUntil(promise: Promise<unknown>): void },
  ): Promise<number> {
    let handled = 0;
    for (const event of batch.events) {
      const handler = this.byName.get(event.t);
      if (!handler) continue;
      await handler(event.d as never, {
        env: meta.env,
        shardId: batch.shard_id,
        shardCount: batch.shard_count,
        sessionId: batch.session_id,
        seq: event.s,
        webhookId: meta.webhookId,
        deferred: event.deferred === true,
        waitUntil: meta.waitUntil,
      });
      handled += 1;
    }
    return handled;
  }
}

/** The answer to give shardhook. */
export interface Answer {
  status: number;
  body: string;
}

export interface Delivery<Env> {
  headers: HeaderSource;
  /** The raw body bytes, exactly as they arrived. */
  body: Uint8Array;
  /** The current signing key first, then keys being rotated out. */
  keys: readonly SigningKey[];
  /** Unix seconds. */
  now: number;
  handlers: Handlers<Env>;
  env: Env;
  waitUntil(promise: Promise<unknown>): void;
}

/**
 * Verifies, parses and dispatches one request. 401 when the signature does not hold, 400 for
 * a verified body that is not a shardhook request (retrying cannot help, so the router
 * dead-letters it), 500 when a handler throws (the router retries the whole request), 200
 * once every event of every batch is handled.
 */
export async function deliver<Env>(delivery: Delivery<Env>): Promise<Answer> {
  const verified = await verify(delivery.headers, delivery.body, delivery.keys, delivery.now);
  if (!verified.ok) return { status: 401, body: verified.reason };

  const batches = parseBatches(delivery.body);
  if (typeof batches === "string") return { status: 400, body: batches };

  const events = batches.reduce((sum, b) => sum + b.events.length, 0);
  try {
    const handled = await delivery.handlers.dispatchAll(batches, {
      env: delivery.env,
      webhookId: verified.id,
      waitUntil: delivery.waitUntil,
    });
    return { status: 200, body: `handled ${handled} of ${events} events` };
  } catch (error) {
    console.error(`request ${verified.id} failed; shardhook will retry it`, error);
    return { status: 500, body: "a handler failed" };
  }
}

/**
 * Parses a verified body into its batches; a string says what is wrong, and where. Takes wire
 * format v2 and, for dead letters of earlier versions sent again by `shardhook replay`, v1 (one
 * batch: `{"v":1,"shard_id":..,"shard_count":..,"session_id":..,"events":[..]}`).
 */
export function parseBatches(body: Uint8Array): Batch[] | string {
  let value: unknown;
  try {
    value = JSON.parse(new TextDecoder("utf-8", { fatal: true, ignoreBOM: false }).decode(body));
  } catch {
    return "body is not UTF-8 JSON";
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) return "body is not a JSON object";
  const request = value as { v?: unknown; shard_count?: unknown; batches?: unknown };
  if (request.v === 1) {
    const problem = checkBatch(value, "body");
    return problem ?? [value as Batch];
  }
  if (request.v !== 2) return `unsupported wire format version ${JSON.stringify(request.v)}`;
  if (!Number.isInteger(request.shard_count)) return "body is missing shard_count";
  if (!Array.isArray(request.batches)) return "body is missing batches";
  const batches: Batch[] = [];
  for (const [i, item] of request.batches.entries()) {
    const batch = { ...(item as object), shard_count: request.shard_count } as Batch;
    const problem = checkBatch(batch, `batches[${i}]`);
    if (problem) return problem;
    batches.push(batch);
  }
  return batches;
}

/** What is wrong with one batch object, or undefined. */
function checkBatch(value: unknown, where: string): string | undefined {
  const batch = value as Partial<Batch> | null;
  if (typeof batch !== "object" || batch === null) return `${where} is not a JSON object`;
  if (
    !Number.isInteger(batch.shard_id) ||
    !Number.isInteger(batch.shard_count) ||
    typeof batch.session_id !== "string" ||
    !Array.isArray(batch.events)
  ) {
    return `${where} is missing shard_id, session_id or events`;
  }
  for (const [j, event] of batch.events.entries()) {
    if (typeof event?.t !== "string" || !Number.isInteger(event.s) || !("d" in event)) {
      return `${where}.events[${j}] is missing t, s or d`;
    }
  }
  return undefined;
}

/**
 * Imports the current secret and the space-separated previous ones. Decoded keys are cached
 * per secret string, so an isolate imports each once.
 */
export async function signingKeys(current: string | undefined, previous?: string): Promise<SigningKey[]> {
  const secrets = [current ?? "", ...(previous ?? "").split(/\s+/)].filter((s) => s.length > 0);
  if (!current || secrets.length === 0) {
    throw new Error("SHARDHOOK_SIGNING_SECRET is not set");
  }
  return Promise.all(secrets.map(cachedKey));
}

const keyCache = new Map<string, Promise<SigningKey>>();

function cachedKey(secret: string): Promise<SigningKey> {
  let key = keyCache.get(secret);
  if (!key) {
    key = importSecret(secret);
    keyCache.set(secret, key);
    key.catch(() => keyCache.delete(secret));
  }
  return key;
}
