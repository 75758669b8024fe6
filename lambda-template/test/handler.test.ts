// The Lambda handler invoked with function URL events (payload format 2.0) built from the
// router's real signed request, its body plain and base64-encoded, against a local HTTP server
// standing in for Discord's REST API.
import { createServer, type IncomingMessage, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { Webhook } from "standardwebhooks";
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it, vi } from "vitest";
import { Handlers } from "../../worker-template/src/delivery";
import fixture from "../../worker-template/test/fixtures/shardhook-request.json";
import { createHandler, handler, type FunctionUrlEvent } from "../src/index";

const FIXTURE_NOW = Number(fixture.headers["webhook-timestamp"]);

let discord: Server;
let calls: { method?: string; url?: string; authorization?: string; body: unknown }[];

beforeAll(async () => {
  discord = createServer(async (request: IncomingMessage, response) => {
    let text = "";
    for await (const chunk of request) text += chunk;
    calls.push({
      method: request.method,
      url: request.url,
      authorization: request.headers.authorization,
      body: JSON.parse(text),
    });
    response.writeHead(200, { "content-type": "application/json" }).end('{"id":"1"}');
  });
  await new Promise<void>((resolve) => discord.listen(0, "127.0.0.1", resolve));
  const { port } = discord.address() as AddressInfo;
  vi.stubEnv("DISCORD_API_URL", `http://127.0.0.1:${port}/api/v10`);
  vi.stubEnv("DISCORD_TOKEN", "lambda-bot-token");
  vi.stubEnv("SHARDHOOK_SIGNING_SECRET", fixture.secret);
  vi.stubEnv("SHARDHOOK_PREVIOUS_SIGNING_SECRETS", fixture.previous_secret);
});
afterAll(() => {
  vi.unstubAllEnvs();
  discord.close();
});
beforeEach(() => {
  calls = [];
});
afterEach(() => {
  vi.useRealTimers();
});

/** The event a function URL hands Lambda for the router's request. */
function urlEvent(body: string, headers: Record<string, string>, base64 = false): FunctionUrlEvent {
  return {
    requestContext: { http: { method: "POST" } },
    headers: Object.fromEntries(Object.entries(headers).map(([k, v]) => [k.toLowerCase(), v])),
    body: base64 ? Buffer.from(body, "utf8").toString("base64") : body,
    isBase64Encoded: base64,
  };
}

function atFixtureTime(offset = 0) {
  vi.useFakeTimers({ toFake: ["Date"] });
  vi.setSystemTime((FIXTURE_NOW + offset) * 1000);
}

const pong = {
  method: "POST",
  url: "/api/v10/channels/1551597200998400001/messages",
  authorization: "Bot lambda-bot-token",
  body: { content: "pong" },
};

describe("the router's own request", () => {
  it.each([false, true])("is verified and handled (base64-encoded body: %s)", async (base64) => {
    atFixtureTime();
    const result = await handler(urlEvent(fixture.body, fixture.headers, base64));
    expect(result).toMatchObject({ statusCode: 200, body: "handled 1 of 3 events" });
    expect(calls).toEqual([pong]);
  });

  it("is refused when a base64 body is verified without decoding it", async () => {
    atFixtureTime();
    const event = urlEvent(fixture.body, fixture.headers, true);
    const result = await handler({ ...event, isBase64Encoded: false });
    expect(result).toMatchObject({ statusCode: 401, body: "no signature matches" });
  });

  it("is refused once stale", async () => {
    atFixtureTime(301);
    const result = await handler(urlEvent(fixture.body, fixture.headers, true));
    expect(result).toMatchObject({ statusCode: 401, body: "webhook-timestamp is more than 5 minutes away" });
  });

  it("is handled when only the previous key is still configured, or only the current one", async () => {
    atFixtureTime();
    const previousOnly = createHandler(new Handlers(), () => ({ SHARDHOOK_SIGNING_SECRET: fixture.previous_secret }));
    expect((await previousOnly(urlEvent(fixture.body, fixture.headers))).statusCode).toBe(200);
    const wrongOnly = createHandler(new Handlers(), () => ({
      SHARDHOOK_SIGNING_SECRET: "whsec_" + Buffer.from("thirty-two bytes of another key!").toString("base64"),
    }));
    expect((await wrongOnly(urlEvent(fixture.body, fixture.headers))).statusCode).toBe(401);
  });
});

describe("refusals", () => {
  it("a tampered body, plain or base64", async () => {
    atFixtureTime();
    const tampered = fixture.body.replace('"s":4', '"s":5');
    for (const base64 of [false, true]) {
      const result = await handler(urlEvent(tampered, fixture.headers, base64));
      expect(result).toMatchObject({ statusCode: 401, body: "no signature matches" });
    }
  });

  it.each(["webhook-id", "webhook-timestamp", "webhook-signature"])("a missing %s", async (name) => {
    atFixtureTime();
    const headers: Record<string, string> = { ...fixture.headers };
    delete headers[name];
    const result = await handler(urlEvent(fixture.body, headers));
    expect(result).toMatchObject({ statusCode: 401, body: `missing ${name} header` });
  });

  it("a truncated signature", async () => {
    atFixtureTime();
    const headers = { ...fixture.headers, "webhook-signature": fixture.headers["webhook-signature"].split(" ")[0].slice(0, 30) };
    expect((await handler(urlEvent(fixture.body, headers))).statusCode).toBe(401);
  });

  it("a header of many signature entries, with no HMAC computed over the body", async () => {
    atFixtureTime();
    const sign = vi.spyOn(crypto.subtle, "sign");
    const check = vi.spyOn(crypto.subtle, "verify");
    const forged = Array.from({ length: 2500 }, (_, n) => `v1,${Buffer.from(String(n).padStart(32, "0")).toString("base64")}`);
    const headers = { ...fixture.headers, "webhook-signature": [fixture.headers["webhook-signature"], ...forged].join(" ") };
    const result = await handler(urlEvent(fixture.body, headers));
    expect(result).toMatchObject({ statusCode: 401, body: "too many entries in webhook-signature header" });
    expect(sign).not.toHaveBeenCalled();
    expect(check).not.toHaveBeenCalled();
    sign.mockRestore();
    check.mockRestore();
  });

  it("GET", async () => {
    const result = await handler({ requestContext: { http: { method: "GET" } }, headers: {} });
    expect(result.statusCode).toBe(405);
  });

  afterEach(() => expect(calls).toEqual([]));
});

describe("dispatch", () => {
  it("INTERACTION_CREATE is answered through its callback, freshly signed by standardwebhooks", async () => {
    const body = JSON.stringify({
      v: 2,
      shard_count: 1,
      batches: [
        {
          shard_id: 0,
          session_id: "s",
          events: [{ t: "INTERACTION_CREATE", s: 9, d: { id: "77", token: "tok", type: 2, data: { name: "hello" } } }],
        },
      ],
    });
    const now = new Date();
    const headers = {
      "webhook-id": "msg_lambda",
      "webhook-timestamp": String(Math.floor(now.getTime() / 1000)),
      "webhook-signature": new Webhook(fixture.secret).sign("msg_lambda", now, body),
    };
    const result = await handler(urlEvent(body, headers, true));
    expect(result.statusCode).toBe(200);
    expect(calls).toEqual([
      {
        method: "POST",
        url: "/api/v10/interactions/77/tok/callback",
        authorization: undefined,
        body: { type: 4, data: { content: "Hello from shard 0: you ran /hello." } },
      },
    ]);
  });

  it("a request of several shards' batches dispatches every event with its own shard", async () => {
    const seen: string[] = [];
    const recording = createHandler(
      new Handlers<object>().on("MESSAGE_CREATE", (message, ctx) => {
        seen.push(`${ctx.shardId}/${ctx.shardCount} ${ctx.sessionId} ${ctx.seq} ${message.id}`);
      }),
    );
    const body = JSON.stringify({
      v: 2,
      shard_count: 4,
      batches: [
        { shard_id: 1, session_id: "a", events: [{ t: "MESSAGE_CREATE", s: 5, d: { id: "m5" } }, { t: "MESSAGE_CREATE", s: 6, d: { id: "m6" } }] },
        { shard_id: 3, session_id: "b", events: [{ t: "MESSAGE_CREATE", s: 2, d: { id: "m2" } }] },
      ],
    });
    const now = new Date();
    const headers = {
      "webhook-id": "msg_2b_0123456789abcdef",
      "webhook-timestamp": String(Math.floor(now.getTime() / 1000)),
      "webhook-signature": new Webhook(fixture.secret).sign("msg_2b_0123456789abcdef", now, body),
    };
    const result = await recording(urlEvent(body, headers));
    expect(result).toMatchObject({ statusCode: 200, body: "handled 3 of 3 events" });
    expect([...seen].sort()).toEqual(["1/4 a 5 m5", "1/4 a 6 m6", "3/4 b 2 m2"]);
    expect(seen.indexOf("1/4 a 5 m5")).toBeLessThan(seen.indexOf("1/4 a 6 m6"));
  });

  it("deferred work is finished before Lambda answers, and a throwing handler answers 500", async () => {
    atFixtureTime();
    const order: string[] = [];
    const deferring = createHandler(
      new Handlers<object>().on("MESSAGE_CREATE", (_m, ctx) => {
        ctx.waitUntil(Promise.resolve().then(() => order.push("deferred")));
      }),
    );
    expect((await deferring(urlEvent(fixture.body, fixture.headers))).statusCode).toBe(200);
    expect(order).toEqual(["deferred"]);

    const error = vi.spyOn(console, "error").mockImplementation(() => {});
    const throwing = createHandler(
      new Handlers<object>().on("GUILD_CREATE", () => {
        throw new Error("database down");
      }),
    );
    expect(await throwing(urlEvent(fixture.body, fixture.headers))).toMatchObject({ statusCode: 500, body: "a handler failed" });
    error.mockRestore();
  });
});
