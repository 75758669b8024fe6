// The gateway-command helper in Node 20, as the Lambda runs it, against a local HTTP server
// standing in for the router's control API (and Discord's REST, for `!members`' reply): the
// request checked by the verify module and by standardwebhooks, the answers mapped to results.
import { createServer, type IncomingHttpHeaders, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { Webhook } from "standardwebhooks";
import { afterAll, beforeAll, beforeEach, describe, expect, it, vi } from "vitest";
import { requestGuildMembers, type ControlEnv } from "../../worker-template/src/commands";
import { importSecret, verify } from "../../worker-template/src/verify";
import fixture from "../../worker-template/test/fixtures/shardhook-request.json";
import { handler, type FunctionUrlEvent } from "../src/index";

const GUILD = "1551597200998400000";
const members = { guild_id: GUILD, query: "", limit: 10 };

/** What the server answers to the next command requests, in order (202 when none is left). */
let answers: { status: number; body: string; headers?: Record<string, string> }[];
let commands: { url?: string; headers: IncomingHttpHeaders; body: string }[];
let replies: { url?: string; authorization?: string; body: unknown }[];
let server: Server;
let base: string;

beforeAll(async () => {
  server = createServer(async (request, response) => {
    let body = "";
    for await (const chunk of request) body += chunk;
    if (request.url?.startsWith("/api/v10/")) {
      replies.push({ url: request.url, authorization: request.headers.authorization, body: JSON.parse(body) });
      response.writeHead(200, { "content-type": "application/json" }).end('{"id":"1"}');
      return;
    }
    commands.push({ url: request.url, headers: request.headers, body });
    const answer = answers.shift() ?? { status: 202, body: '{"queued":[1]}' };
    response.writeHead(answer.status, { "content-type": "application/json", ...answer.headers }).end(answer.body);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  vi.stubEnv("SHARDHOOK_CONTROL_URL", base);
  vi.stubEnv("DISCORD_API_URL", `${base}/api/v10`);
  vi.stubEnv("DISCORD_TOKEN", "lambda-bot-token");
  vi.stubEnv("SHARDHOOK_SIGNING_SECRET", fixture.secret);
  vi.stubEnv("SHARDHOOK_PREVIOUS_SIGNING_SECRETS", "");
});
afterAll(() => {
  vi.unstubAllEnvs();
  server.close();
});
beforeEach(() => {
  answers = [];
  commands = [];
  replies = [];
});

const env = (): ControlEnv => ({ SHARDHOOK_CONTROL_URL: base, SHARDHOOK_SIGNING_SECRET: fixture.secret });
const nowSeconds = () => Math.floor(Date.now() / 1000);
const headerRecord = (headers: IncomingHttpHeaders) =>
  Object.fromEntries(Object.entries(headers).map(([k, v]) => [k, String(v)]));

describe("the signed request, in Node", () => {
  it("verifies with the verify module and with standardwebhooks, with a fresh id and a timestamp of now", async () => {
    const before = nowSeconds();
    await requestGuildMembers(env(), members);
    await requestGuildMembers(env(), members);
    const after = nowSeconds();
    expect(commands.map((c) => c.url)).toEqual(["/v1/gateway/commands", "/v1/gateway/commands"]);
    const key = await importSecret(fixture.secret);
    for (const { headers, body } of commands) {
      expect(JSON.parse(body)).toEqual({ guild_id: GUILD, op: 8, d: members });
      const result = await verify(headerRecord(headers), new TextEncoder().encode(body), [key], nowSeconds());
      expect(result.ok).toBe(true);
      expect(new Webhook(fixture.secret).verify(body, headerRecord(headers))).toEqual(JSON.parse(body));
      expect(() => new Webhook(fixture.previous_secret).verify(body, headerRecord(headers))).toThrow();
      const stamp = Number(headers["webhook-timestamp"]);
      expect(stamp).toBeGreaterThanOrEqual(before);
      expect(stamp).toBeLessThanOrEqual(after);
    }
    expect(commands[0].headers["webhook-id"]).not.toBe(commands[1].headers["webhook-id"]);
  });

  it("throws when the router cannot be reached, so an awaiting handler's batch is retried", async () => {
    const closed = createServer();
    await new Promise<void>((resolve) => closed.listen(0, "127.0.0.1", resolve));
    const port = (closed.address() as AddressInfo).port;
    await new Promise<void>((resolve) => closed.close(() => resolve()));
    await expect(requestGuildMembers({ ...env(), SHARDHOOK_CONTROL_URL: `http://127.0.0.1:${port}` }, members)).rejects.toThrow();
  });
});

describe("the router's answers, in Node", () => {
  it("202, 429 with Retry-After, 400, 401 and 503 map to queued, rate limited and refused", async () => {
    answers = [
      { status: 202, body: '{"queued":[3]}' },
      { status: 429, body: '{"error":"shard 3\'s send budget is spent","queued":[],"retry_after":9}', headers: { "retry-after": "9" } },
      { status: 400, body: '{"error":"guild_id `x` is not a snowflake"}' },
      { status: 401, body: '{"error":"webhook-timestamp is more than 5 minutes from now"}' },
      { status: 503, body: '{"error":"shard 3: not connected","queued":[]}' },
    ];
    const results = [];
    for (let i = 0; i < 5; i++) results.push(await requestGuildMembers(env(), members));
    expect(results).toEqual([
      { kind: "queued", status: 202, shards: [3] },
      { kind: "rate_limited", status: 429, retryAfter: 9, error: "shard 3's send budget is spent", queued: [] },
      { kind: "refused", status: 400, error: "guild_id `x` is not a snowflake", queued: [] },
      { kind: "refused", status: 401, error: "webhook-timestamp is more than 5 minutes from now", queued: [] },
      { kind: "refused", status: 503, error: "shard 3: not connected", queued: [] },
    ]);
  });
});

describe("421 from a router of a cluster, in Node", () => {
  /** Another "router", counting the commands it is sent. */
  let other: Server;
  let otherHost: string;
  let reached: number;
  beforeAll(async () => {
    other = createServer((request, response) => {
      reached += 1;
      request.resume();
      response.writeHead(202, { "content-type": "application/json" }).end('{"queued":[1]}');
    });
    await new Promise<void>((resolve) => other.listen(0, "127.0.0.1", resolve));
    otherHost = `127.0.0.1:${(other.address() as AddressInfo).port}`;
  });
  afterAll(() => other.close());
  beforeEach(() => {
    reached = 0;
  });

  // Node's fetch (undici) sends a request answered 421 once more by itself, as it is, before
  // its caller sees the answer: the router answers that copy 421 too.
  const redirect = () => ({
    status: 421,
    body: JSON.stringify({ error: "shard 1 is run by another router of the cluster", owner: "b", control: otherHost }),
  });

  it("goes once to the router it names when that router is in SHARDHOOK_CONTROL_URLS", async () => {
    answers = [redirect(), redirect()];
    const result = await requestGuildMembers({ ...env(), SHARDHOOK_CONTROL_URLS: `${base},http://${otherHost}` }, members);
    expect(result).toEqual({ kind: "queued", status: 202, shards: [1] });
    expect(reached).toBe(1);
  });

  it("is refused, with nothing sent, when the router it names is not configured", async () => {
    answers = [redirect(), redirect()];
    const result = await requestGuildMembers(env(), members);
    expect(result).toMatchObject({ kind: "refused", status: 421, queued: [] });
    expect(result.kind === "refused" && result.error).toContain(`naming ${otherHost}`);
    expect(reached).toBe(0);
    expect(commands).toHaveLength(2);
  });
});

describe("!members through the Lambda handler", () => {
  it("sends op 8 for the message's guild to SHARDHOOK_CONTROL_URL and replies in the channel", async () => {
    const body = JSON.stringify({
      v: 1,
      shard_id: 1,
      shard_count: 2,
      session_id: "s",
      events: [{ t: "MESSAGE_CREATE", s: 5, d: { id: "42", channel_id: "77", guild_id: GUILD, content: "!members", author: { id: "9", username: "u", bot: false } } }],
    });
    const now = new Date();
    const event: FunctionUrlEvent = {
      requestContext: { http: { method: "POST" } },
      headers: {
        "webhook-id": "msg_lambda_members",
        "webhook-timestamp": String(Math.floor(now.getTime() / 1000)),
        "webhook-signature": new Webhook(fixture.secret).sign("msg_lambda_members", now, body),
      },
      body,
    };
    const result = await handler(event);
    expect(result).toMatchObject({ statusCode: 200, body: "handled 1 of 1 events" });
    expect(commands.map((c) => JSON.parse(c.body))).toEqual([
      { guild_id: GUILD, op: 8, d: { guild_id: GUILD, query: "", limit: 0, nonce: "42" } },
    ]);
    expect(new Webhook(fixture.secret).verify(commands[0].body, headerRecord(commands[0].headers))).toBeTruthy();
    expect(replies).toEqual([
      {
        url: "/api/v10/channels/77/messages",
        authorization: "Bot lambda-bot-token",
        body: { content: "Asked Discord for this server's members on shard 1; they arrive as GUILD_MEMBERS_CHUNK events." },
      },
    ]);
  });
});
