// The Worker through SELF.fetch, inside workerd, with Discord's REST mocked by fetchMock.
import { createExecutionContext, env, fetchMock, SELF, waitOnExecutionContext } from "cloudflare:test";
import { afterEach, beforeAll, beforeEach, describe, expect, it, vi } from "vitest";
import worker from "../src/index";
import { deliver, Handlers, signingKeys } from "../src/delivery";
import { batchBody, requestBody, FIXTURE_NOW, fixture, interaction, message, nowSeconds, ready, signedHeaders } from "./helpers";

const DISCORD = "https://discord.test";

/** Requests the Worker made to the mocked Discord. */
let calls: { method: string; path: string; authorization?: string; body: unknown }[];

function mockDiscord(path: string | RegExp, status = 200, reply: unknown = { id: "1" }, times = 1, method = "POST") {
  fetchMock
    .get(DISCORD)
    .intercept({ path, method })
    .reply(status, (options) => {
      const headers = options.headers as Record<string, string>;
      calls.push({
        method: options.method,
        path: options.path,
        authorization: headers.authorization,
        body: JSON.parse(String(options.body)),
      });
      return reply;
    })
    .times(times);
}

function post(body: string, headers: Record<string, string>) {
  return SELF.fetch("https://handler.test/", { method: "POST", body, headers });
}

beforeAll(() => {
  fetchMock.activate();
  fetchMock.disableNetConnect();
});
beforeEach(() => {
  calls = [];
});
afterEach(() => {
  vi.useRealTimers();
  fetchMock.assertNoPendingInterceptors();
});

describe("the router's own request (the fixture)", () => {
  it("is handled at its own timestamp: the !ping in it is answered with pong", async () => {
    vi.useFakeTimers({ toFake: ["Date"] });
    vi.setSystemTime(FIXTURE_NOW * 1000);
    mockDiscord("/api/v10/channels/1551597200998400001/messages");
    const response = await post(fixture.body, fixture.headers);
    expect(await response.text()).toBe("handled 1 of 3 events");
    expect(response.status).toBe(200);
    expect(calls).toEqual([
      {
        method: "POST",
        path: "/api/v10/channels/1551597200998400001/messages",
        authorization: "Bot test-bot-token",
        body: { content: "pong" },
      },
    ]);
  });

  it("is refused with 401 once stale by the clock, and nothing is handled", async () => {
    vi.useFakeTimers({ toFake: ["Date"] });
    vi.setSystemTime((FIXTURE_NOW + 301) * 1000);
    const response = await post(fixture.body, fixture.headers);
    expect(response.status).toBe(401);
    expect(await response.text()).toBe("webhook-timestamp is more than 5 minutes away");
    expect(calls).toEqual([]);
  });

  it("is handled when signed afresh with either key (rotation)", async () => {
    for (const secret of [fixture.secret, fixture.previous_secret]) {
      mockDiscord("/api/v10/channels/1551597200998400001/messages");
      const response = await post(fixture.body, signedHeaders(fixture.body, [secret]));
      expect(response.status, secret).toBe(200);
    }
    expect(calls).toHaveLength(2);
  });
});

describe("refusals answer 401 and handle nothing", () => {
  const body = batchBody([{ t: "MESSAGE_CREATE", s: 1, d: message("!ping") }]);
  const good = () => signedHeaders(body, [fixture.secret]);

  it("a tampered body", async () => {
    const response = await post(body.replace("!ping", "!pinG"), good());
    expect([response.status, await response.text()]).toEqual([401, "no signature matches"]);
  });

  it("a stale timestamp", async () => {
    const response = await post(body, signedHeaders(body, [fixture.secret], nowSeconds() - 600));
    expect([response.status, await response.text()]).toEqual([401, "webhook-timestamp is more than 5 minutes away"]);
  });

  it("a wrong key", async () => {
    const response = await post(body, signedHeaders(body, ["whsec_" + btoa("not the key shardhook signs with")]));
    expect([response.status, await response.text()]).toEqual([401, "no signature matches"]);
  });

  it("a truncated signature", async () => {
    const headers = good();
    headers["webhook-signature"] = headers["webhook-signature"].slice(0, 24);
    const response = await post(body, headers);
    expect(response.status).toBe(401);
  });

  it.each(["webhook-id", "webhook-timestamp", "webhook-signature"])("a missing %s header", async (name) => {
    const headers = good();
    delete headers[name];
    const response = await post(body, headers);
    expect([response.status, await response.text()]).toEqual([401, `missing ${name} header`]);
  });

  afterEach(() => expect(calls).toEqual([]));
});

describe("each event reaches its handler", () => {
  it("INTERACTION_CREATE answers through the interaction callback, without the bot token", async () => {
    mockDiscord("/api/v10/interactions/1300000000000000001/interaction-token/callback", 204, "");
    const body = batchBody([{ t: "INTERACTION_CREATE", s: 3, d: interaction() }], 1);
    const response = await post(body, signedHeaders(body, [fixture.secret]));
    expect(response.status).toBe(200);
    expect(calls).toEqual([
      {
        method: "POST",
        path: "/api/v10/interactions/1300000000000000001/interaction-token/callback",
        authorization: undefined,
        body: { type: 4, data: { content: "Hello from shard 1: you ran /hello." } },
      },
    ]);
  });

  it("an INTERACTION_CREATE the router deferred edits the original response instead", async () => {
    mockDiscord("/api/v10/webhooks/1100000000000000001/interaction-token/messages/@original", 200, { id: "1" }, 1, "PATCH");
    const body = batchBody([{ t: "INTERACTION_CREATE", s: 3, d: interaction(), deferred: true }]);
    const response = await post(body, signedHeaders(body, [fixture.secret]));
    expect(response.status).toBe(200);
    expect(calls).toEqual([
      {
        method: "PATCH",
        path: "/api/v10/webhooks/1100000000000000001/interaction-token/messages/@original",
        authorization: undefined,
        body: { content: "Hello from shard 0: you ran /hello." },
      },
    ]);
  });

  it("READY is logged", async () => {
    const log = vi.spyOn(console, "log");
    const body = batchBody([{ t: "READY", s: 1, d: ready() }]);
    const response = await post(body, signedHeaders(body, [fixture.secret]));
    expect(response.status).toBe(200);
    expect(log).toHaveBeenCalledWith("shard 0/2 ready as shardhook-sim in session sess-1 with 1 guilds");
    log.mockRestore();
  });

  it("messages other than !ping, and bots' !ping, get no reply; unhandled events are acknowledged", async () => {
    const body = batchBody([
      { t: "MESSAGE_CREATE", s: 1, d: message("hello") },
      { t: "MESSAGE_CREATE", s: 2, d: message("!ping", "1", true) },
      { t: "TYPING_START", s: 3, d: {} },
    ]);
    const response = await post(body, signedHeaders(body, [fixture.secret]));
    expect([response.status, await response.text()]).toEqual([200, "handled 2 of 3 events"]);
    expect(calls).toEqual([]);
  });

  it("a batch runs in seq order, one reply per !ping", async () => {
    mockDiscord(/^\/api\/v10\/channels\/\d+\/messages$/, 200, { id: "1" }, 2);
    const body = batchBody([
      { t: "MESSAGE_CREATE", s: 5, d: message("!ping", "10") },
      { t: "MESSAGE_CREATE", s: 6, d: message("!ping", "20") },
    ]);
    const response = await post(body, signedHeaders(body, [fixture.secret]));
    expect(response.status).toBe(200);
    expect(calls.map((c) => c.path)).toEqual(["/api/v10/channels/10/messages", "/api/v10/channels/20/messages"]);
  });

  it("a handler that fails answers 500, so the router retries the batch", async () => {
    mockDiscord("/api/v10/channels/10/messages", 502, { message: "bad gateway" });
    const error = vi.spyOn(console, "error").mockImplementation(() => {});
    const body = batchBody([{ t: "MESSAGE_CREATE", s: 5, d: message("!ping", "10") }]);
    const response = await post(body, signedHeaders(body, [fixture.secret]));
    expect([response.status, await response.text()]).toEqual([500, "a handler failed"]);
    expect(calls).toHaveLength(1);
    expect(String(error.mock.calls[0]?.[1])).toContain("Discord answered 502");
    error.mockRestore();
  });

  it("a verified body that is not a shardhook request answers 400 saying where, which the router does not retry", async () => {
    const bad: [string, string][] = [
      ["[]", "body is not a JSON object"],
      ["{not json", "body is not UTF-8 JSON"],
      [JSON.stringify({ v: 2, events: [] }), "body is missing shard_count"],
      [JSON.stringify({ v: 3, shard_count: 1, batches: [] }), "unsupported wire format version 3"],
      [JSON.stringify({ v: 2, shard_count: 1, batches: [{ shard_id: 0, session_id: "s", events: [{ t: "X", s: 1, d: {} }] }, { shard_id: 1, events: [] }] }), "batches[1] is missing shard_id, session_id or events"],
      [JSON.stringify({ v: 2, shard_count: 1, batches: [{ shard_id: 0, session_id: "s", events: [{ t: "X" }] }] }), "batches[0].events[0] is missing t, s or d"],
      [JSON.stringify({ v: 1, shard_id: 0, shard_count: 1, session_id: "s", events: [{ t: "X" }] }), "body.events[0] is missing t, s or d"],
    ];
    for (const [body, reason] of bad) {
      const response = await post(body, signedHeaders(body, [fixture.secret]));
      expect([response.status, await response.text()], body).toEqual([400, reason]);
    }
  });

  it("a request of many shards' batches runs each batch in seq order, each handler told its shard", async () => {
    mockDiscord(/^\/api\/v10\/channels\/\d+\/messages$/, 200, { id: "1" }, 3);
    const body = requestBody([
      { shard_id: 0, events: [{ t: "MESSAGE_CREATE", s: 5, d: message("!ping", "10") }, { t: "MESSAGE_CREATE", s: 6, d: message("!ping", "11") }] },
      { shard_id: 1, session_id: "sess-2", events: [{ t: "MESSAGE_CREATE", s: 9, d: message("!ping", "20") }] },
    ]);
    const response = await post(body, signedHeaders(body, [fixture.secret]));
    expect([response.status, await response.text()]).toEqual([200, "handled 3 of 3 events"]);
    const paths = calls.map((c) => c.path);
    expect(paths.sort()).toEqual(["/api/v10/channels/10/messages", "/api/v10/channels/11/messages", "/api/v10/channels/20/messages"]);
    // Shard 0's two events in seq order.
    expect(paths.indexOf("/api/v10/channels/10/messages")).toBeLessThan(paths.indexOf("/api/v10/channels/11/messages"));
  });

  it("one batch's failing handler fails the whole request (500), after the other batches ran", async () => {
    mockDiscord("/api/v10/channels/10/messages", 502, { message: "bad gateway" });
    mockDiscord("/api/v10/channels/20/messages", 200, { id: "1" });
    const error = vi.spyOn(console, "error").mockImplementation(() => {});
    const body = requestBody([
      { shard_id: 0, events: [{ t: "MESSAGE_CREATE", s: 5, d: message("!ping", "10") }] },
      { shard_id: 1, events: [{ t: "MESSAGE_CREATE", s: 9, d: message("!ping", "20") }] },
    ]);
    const response = await post(body, signedHeaders(body, [fixture.secret]));
    expect([response.status, await response.text()]).toEqual([500, "a handler failed"]);
    expect(calls.map((c) => c.path).sort()).toEqual(["/api/v10/channels/10/messages", "/api/v10/channels/20/messages"]);
    error.mockRestore();
  });

  it("a v1 body (a dead letter of an earlier version, replayed) is still handled", async () => {
    const body = JSON.stringify({ v: 1, shard_id: 0, shard_count: 1, session_id: "s", events: [{ t: "TYPING_START", s: 1, d: {} }] });
    const response = await post(body, signedHeaders(body, [fixture.secret]));
    expect([response.status, await response.text()]).toEqual([200, "handled 0 of 1 events"]);
  });

  it("GET is not allowed", async () => {
    const response = await SELF.fetch("https://handler.test/");
    expect(response.status).toBe(405);
  });
});

describe("configuration and deferred work", () => {
  it("without a signing secret the Worker answers 500 (retried), not 2xx", async () => {
    const error = vi.spyOn(console, "error").mockImplementation(() => {});
    const body = batchBody([]);
    const request = new Request<unknown, IncomingRequestCfProperties>("https://handler.test/", { method: "POST", body, headers: signedHeaders(body, [fixture.secret]) });
    const ctx = createExecutionContext();
    const response = await worker.fetch(request, { ...env, SHARDHOOK_SIGNING_SECRET: undefined }, ctx);
    expect(response.status).toBe(500);
    error.mockRestore();
  });

  it("with only the new key configured, the previous key's signature is refused", async () => {
    const body = batchBody([]);
    const request = new Request<unknown, IncomingRequestCfProperties>("https://handler.test/", { method: "POST", body, headers: signedHeaders(body, [fixture.previous_secret]) });
    const response = await worker.fetch(request, { ...env, SHARDHOOK_PREVIOUS_SIGNING_SECRETS: undefined }, createExecutionContext());
    expect(response.status).toBe(401);
  });

  it("waitUntil work runs after the answer, through the execution context", async () => {
    let release!: () => void;
    const done: string[] = [];
    const handlers = new Handlers<typeof env>().on("MESSAGE_CREATE", (m, ctx) => {
      ctx.waitUntil(new Promise<void>((resolve) => (release = resolve)).then(() => { done.push(m.content); }));
    });
    const body = batchBody([{ t: "MESSAGE_CREATE", s: 1, d: message("later") }]);
    const ctx = createExecutionContext();
    const answer = await deliver({
      headers: signedHeaders(body, [fixture.secret]),
      body: new TextEncoder().encode(body),
      keys: await signingKeys(env.SHARDHOOK_SIGNING_SECRET),
      now: nowSeconds(),
      handlers,
      env,
      waitUntil: (p) => ctx.waitUntil(p),
    });
    expect(answer.status).toBe(200);
    expect(done).toEqual([]);
    release();
    await waitOnExecutionContext(ctx);
    expect(done).toEqual(["later"]);
  });
});
