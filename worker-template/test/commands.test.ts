// The gateway-command helper inside workerd: its signed requests checked by the verify module
// and by the npm standardwebhooks package, the router's answers mapped to results, and the
// `!members` example end to end, with the control API and Discord mocked by fetchMock.
import { createExecutionContext, env, fetchMock, SELF } from "cloudflare:test";
import { GatewayOpcodes } from "discord-api-types/v10";
import { Webhook } from "standardwebhooks";
import { afterEach, beforeAll, beforeEach, describe, expect, it, vi } from "vitest";
import {
  commandKeys,
  requestGuildMembers,
  requestSoundboardSounds,
  sendGatewayCommand,
  signature,
  updatePresence,
  updateVoiceState,
} from "../src/commands";
import worker from "../src/index";
import { importSecret, verify } from "../src/verify";
import { batchBody, fixture, message, nowSeconds, signedHeaders } from "./helpers";

const ROUTER = "https://router.test";
const DISCORD = "https://discord.test";
const GUILD = "1551597200998400000";

/** Requests that reached the mocked control API, as sent. */
let commands: { path: string; headers: Record<string, string>; body: string }[];
/** Messages the Worker posted to the mocked Discord. */
let replies: { path: string; body: unknown }[];

function mockRouter(status: number, reply: unknown, headers: Record<string, string> = {}) {
  fetchMock
    .get(ROUTER)
    .intercept({ path: "/v1/gateway/commands", method: "POST" })
    .reply(
      status,
      (options) => {
        commands.push({ path: options.path, headers: options.headers as Record<string, string>, body: String(options.body) });
        return typeof reply === "string" ? reply : JSON.stringify(reply);
      },
      { headers: { "content-type": "application/json", ...headers } },
    );
}

function mockDiscordMessage(channel = "1551597200998400001") {
  fetchMock
    .get(DISCORD)
    .intercept({ path: `/api/v10/channels/${channel}/messages`, method: "POST" })
    .reply(200, (options) => {
      replies.push({ path: options.path, body: JSON.parse(String(options.body)) });
      return { id: "1" };
    });
}

const members = { guild_id: GUILD, query: "", limit: 0 };
const bytes = (text: string) => new TextEncoder().encode(text);

beforeAll(() => {
  fetchMock.activate();
  fetchMock.disableNetConnect();
});
beforeEach(() => {
  commands = [];
  replies = [];
});
afterEach(() => {
  vi.useRealTimers();
  fetchMock.assertNoPendingInterceptors();
});

describe("the signed request", () => {
  it("goes to {SHARDHOOK_CONTROL_URL}/v1/gateway/commands with the command as its body", async () => {
    mockRouter(202, { queued: [1] });
    await requestGuildMembers(env, members);
    expect(commands).toHaveLength(1);
    expect(commands[0].path).toBe("/v1/gateway/commands");
    expect(commands[0].headers["content-type"]).toBe("application/json");
    expect(JSON.parse(commands[0].body)).toEqual({ guild_id: GUILD, op: 8, d: members });
  });

  it("verifies with the verify module, under the current key and the previous one", async () => {
    mockRouter(202, { queued: [1] });
    await requestGuildMembers(env, members);
    const { headers, body } = commands[0];
    // Signed with both configured keys, as the router signs: either side may rotate first.
    expect(headers["webhook-signature"]).toMatch(/^v1,[A-Za-z0-9+/]{43}= v1,[A-Za-z0-9+/]{43}=$/);
    for (const secret of [fixture.secret, fixture.previous_secret]) {
      const result = await verify(headers, bytes(body), [await importSecret(secret)], nowSeconds());
      expect(result, secret).toEqual({ ok: true, id: headers["webhook-id"], timestamp: Number(headers["webhook-timestamp"]) });
    }
    const other = await importSecret("whsec_" + btoa("a different 32-byte secret key!!"));
    expect((await verify(headers, bytes(body), [other], nowSeconds())).ok).toBe(false);
    expect((await verify(headers, bytes(body.replace('"limit":0', '"limit":1')), [await importSecret(fixture.secret)], nowSeconds())).ok).toBe(false);
  });

  it("is signed with SHARDHOOK_CONTROL_SECRET alone when it is set", async () => {
    const control = "whsec_" + btoa("the control key, 32 bytes long!!");
    mockRouter(202, { queued: [1] });
    await requestGuildMembers({ ...env, SHARDHOOK_CONTROL_SECRET: control }, members);
    const { headers, body } = commands[0];
    expect(headers["webhook-signature"]).toMatch(/^v1,[A-Za-z0-9+/]{43}=$/);
    expect(new Webhook(control).verify(body, headers)).toEqual({ guild_id: GUILD, op: 8, d: members });
    for (const eventKey of [fixture.secret, fixture.previous_secret]) {
      expect(() => new Webhook(eventKey).verify(body, headers), eventKey).toThrow();
    }
  });

  it("verifies with the standardwebhooks package", async () => {
    mockRouter(202, { queued: [1] });
    await requestGuildMembers(env, members);
    const { headers, body } = commands[0];
    for (const secret of [fixture.secret, fixture.previous_secret]) {
      expect(new Webhook(secret).verify(body, headers)).toEqual({ guild_id: GUILD, op: 8, d: members });
    }
    expect(() => new Webhook("whsec_" + btoa("a different 32-byte secret key!!")).verify(body, headers)).toThrow();
  });

  it("is signed exactly as standardwebhooks signs the same id, timestamp and body", async () => {
    const body = JSON.stringify({ guild_id: GUILD, op: 8, d: members });
    const at = nowSeconds();
    const ours = await signature(await commandKeys(env), "msg_same", at, body);
    const theirs = [fixture.secret, fixture.previous_secret]
      .map((secret) => new Webhook(secret).sign("msg_same", new Date(at * 1000), body))
      .join(" ");
    expect(ours).toBe(theirs);
    // And the verify module accepts what standardwebhooks signed for the router.
    const headers = signedHeaders(body, [fixture.secret], at, "msg_same");
    expect(headers["webhook-signature"]).toBe(ours.split(" ")[0]);
  });

  it("has a fresh webhook-id every time, and a timestamp of now", async () => {
    vi.useFakeTimers({ toFake: ["Date"] });
    vi.setSystemTime(1_800_000_000_500);
    for (let i = 0; i < 3; i++) mockRouter(202, { queued: [1] });
    for (let i = 0; i < 3; i++) await requestGuildMembers(env, members);
    const ids = commands.map((c) => c.headers["webhook-id"]);
    expect(new Set(ids).size).toBe(3);
    for (const id of ids) expect(id).toMatch(/^msg_[0-9a-f]{32}$/);
    expect(commands.map((c) => c.headers["webhook-timestamp"])).toEqual(["1800000000", "1800000000", "1800000000"]);

    vi.useRealTimers();
    mockRouter(202, { queued: [1] });
    const before = nowSeconds();
    await requestGuildMembers(env, members);
    const stamp = Number(commands[3].headers["webhook-timestamp"]);
    expect(stamp).toBeGreaterThanOrEqual(before);
    expect(stamp).toBeLessThanOrEqual(nowSeconds());
  });

  it("targets: op 3 on every shard or one, op 4 by guild, op 31 by its first guild", async () => {
    for (let i = 0; i < 4; i++) mockRouter(202, { queued: [0] });
    const presence = { since: null, activities: [], status: "online" as never, afk: false };
    await updatePresence(env, presence);
    await updatePresence(env, presence, 1);
    const voice = { guild_id: GUILD, channel_id: null, self_mute: false, self_deaf: true };
    await updateVoiceState(env, voice);
    await requestSoundboardSounds(env, { guild_ids: [GUILD, "2"] });
    expect(commands.map((c) => JSON.parse(c.body))).toEqual([
      { shard_id: "all", op: 3, d: presence },
      { shard_id: 1, op: 3, d: presence },
      { guild_id: GUILD, op: 4, d: voice },
      { guild_id: GUILD, op: 31, d: { guild_ids: [GUILD, "2"] } },
    ]);
  });

  it("is not sent without SHARDHOOK_CONTROL_URL or a signing secret", async () => {
    await expect(requestGuildMembers({ ...env, SHARDHOOK_CONTROL_URL: undefined }, members)).rejects.toThrow(
      "SHARDHOOK_CONTROL_URL is not set",
    );
    await expect(requestGuildMembers({ ...env, SHARDHOOK_SIGNING_SECRET: undefined }, members)).rejects.toThrow(
      "SHARDHOOK_SIGNING_SECRET is not set",
    );
    expect(commands).toEqual([]);
  });
});

describe("the router's answers", () => {
  const send = (extra: Partial<typeof env> = {}) =>
    sendGatewayCommand({ ...env, ...extra }, { guild_id: GUILD, op: GatewayOpcodes.RequestGuildMembers, d: members });

  it("202 is queued, on the shards it names", async () => {
    mockRouter(202, { queued: [1] });
    expect(await send()).toEqual({ kind: "queued", status: 202, shards: [1] });
  });

  it("429 is rate limited for Retry-After seconds", async () => {
    mockRouter(429, { error: "shard 1's send budget is spent", queued: [], retry_after: 7 }, { "retry-after": "7" });
    expect(await send()).toEqual({ kind: "rate_limited", status: 429, retryAfter: 7, error: "shard 1's send budget is spent", queued: [] });
  });

  it("429 without Retry-After falls back to the body's retry_after, then to 1 s", async () => {
    mockRouter(429, { error: "busy", queued: [0], retry_after: 3 });
    expect(await send()).toMatchObject({ kind: "rate_limited", retryAfter: 3, queued: [0] });
    mockRouter(429, "slow down");
    expect(await send()).toEqual({ kind: "rate_limited", status: 429, retryAfter: 1, error: "slow down", queued: [] });
  });

  it.each([
    [400, "op 2 is not a command a client may send"],
    [401, "webhook-id msg_x was already used"],
    [404, "shard 7 is not run by this process"],
    [503, "shard 1: not connected"],
  ])("%i is refused with the router's error", async (status, error) => {
    mockRouter(status, { error });
    expect(await send()).toEqual({ kind: "refused", status, error, queued: [] });
  });

  it("421 from a router of a cluster: sent once more, signed afresh, to the configured router it names", async () => {
    const other = "router-b.test:8443";
    mockRouter(421, { error: "shard 1 is run by another router of the cluster", owner: "b", control: other });
    const elsewhere: { headers: Record<string, string>; body: string }[] = [];
    fetchMock
      .get(`https://${other}`)
      .intercept({ path: "/v1/gateway/commands", method: "POST" })
      .reply(202, (options) => {
        elsewhere.push({ headers: options.headers as Record<string, string>, body: String(options.body) });
        return JSON.stringify({ queued: [1] });
      });
    const routers = `${ROUTER}, https://${other}/`;
    expect(await send({ SHARDHOOK_CONTROL_URLS: routers })).toEqual({ kind: "queued", status: 202, shards: [1] });
    expect(elsewhere).toHaveLength(1);
    expect(elsewhere[0].body).toBe(commands[0].body);
    expect(elsewhere[0].headers["webhook-id"]).not.toBe(commands[0].headers["webhook-id"]);
    const keys = await commandKeys(env);
    const { headers, body } = elsewhere[0];
    const timestamp = Number(headers["webhook-timestamp"]);
    expect(headers["webhook-signature"]).toBe(await signature(keys, headers["webhook-id"], timestamp, body));
  });

  it.each([
    ["an address nobody configured", "169.254.169.254:80", "https://router-b.test:8443"],
    ["a configured router's host on another port", "router-b.test:80", "https://router-b.test:8443"],
    ["any router, when none but this one is configured", "router-b.test:8443", undefined],
  ])("421 naming %s is refused and nothing is sent there", async (_, control, routers) => {
    mockRouter(421, { error: "shard 1 is run by another router of the cluster", owner: "b", control });
    // Nothing else is mocked: a request to any other host fails the test (net connect is off).
    const result = await send(routers ? { SHARDHOOK_CONTROL_URLS: routers } : {});
    expect(result).toMatchObject({ kind: "refused", status: 421, queued: [] });
    expect(result.kind === "refused" && result.error).toContain(`naming ${control}`);
    expect(result.kind === "refused" && result.error).toContain("SHARDHOOK_CONTROL_URLS");
    expect(commands).toHaveLength(1);
  });

  it("421 naming no router is refused", async () => {
    mockRouter(421, { error: "elsewhere" });
    expect(await send()).toMatchObject({ kind: "refused", status: 421, error: "elsewhere" });
  });

  it("a 503 after some shards of shard_id \"all\" took it keeps them; a non-JSON answer is its text", async () => {
    mockRouter(503, { error: "shard 1: not connected", queued: [0] });
    expect(await updatePresence(env, { since: null, activities: [], status: "idle" as never, afk: false })).toEqual({
      kind: "refused",
      status: 503,
      error: "shard 1: not connected",
      queued: [0],
    });
    mockRouter(502, "<html>bad gateway</html>");
    expect(await send()).toEqual({ kind: "refused", status: 502, error: "<html>bad gateway</html>", queued: [] });
  });
});

describe("the !members example", () => {
  function post(events: { t: string; s: number; d: unknown }[]) {
    const body = batchBody(events);
    return SELF.fetch("https://handler.test/", { method: "POST", body, headers: signedHeaders(body, [fixture.secret]) });
  }

  it("asks the router for the message's guild's members (op 8) and says so in the channel", async () => {
    mockRouter(202, { queued: [1] });
    mockDiscordMessage();
    const response = await post([{ t: "MESSAGE_CREATE", s: 1, d: message("!members") }]);
    expect([response.status, await response.text()]).toEqual([200, "handled 1 of 1 events"]);
    expect(commands).toHaveLength(1);
    const { headers, body } = commands[0];
    expect(JSON.parse(body)).toEqual({
      guild_id: GUILD,
      op: 8,
      d: { guild_id: GUILD, query: "", limit: 0, nonce: "1551601395302400002" },
    });
    expect((await verify(headers, bytes(body), [await importSecret(fixture.secret)], nowSeconds())).ok).toBe(true);
    expect(replies).toEqual([
      {
        path: "/api/v10/channels/1551597200998400001/messages",
        body: { content: "Asked Discord for this server's members on shard 1; they arrive as GUILD_MEMBERS_CHUNK events." },
      },
    ]);
  });

  it("says when to try again when the shard's budget is spent, and why when refused", async () => {
    mockRouter(429, { error: "shard 1's send budget is spent", queued: [], retry_after: 12 }, { "retry-after": "12" });
    mockDiscordMessage();
    mockRouter(503, { error: "shard 1: not connected", queued: [] });
    mockDiscordMessage();
    expect((await post([{ t: "MESSAGE_CREATE", s: 1, d: message("!members") }])).status).toBe(200);
    expect((await post([{ t: "MESSAGE_CREATE", s: 2, d: message("!members") }])).status).toBe(200);
    expect(replies.map((r) => r.body)).toEqual([
      { content: "The gateway is busy; try `!members` again in 12 s." },
      { content: "The router refused the request (503): shard 1: not connected" },
    ]);
  });

  it("is ignored in a DM and from bots", async () => {
    const { guild_id: _, ...dm } = message("!members");
    const response = await post([
      { t: "MESSAGE_CREATE", s: 1, d: dm },
      { t: "MESSAGE_CREATE", s: 2, d: message("!members", "1551597200998400001", true) },
    ]);
    expect(response.status).toBe(200);
    expect(commands).toEqual([]);
    expect(replies).toEqual([]);
  });

  it("without SHARDHOOK_CONTROL_URL it says so instead of failing the batch", async () => {
    mockDiscordMessage();
    const body = batchBody([{ t: "MESSAGE_CREATE", s: 1, d: message("!members") }]);
    const request = new Request<unknown, IncomingRequestCfProperties>("https://handler.test/", { method: "POST", body, headers: signedHeaders(body, [fixture.secret]) });
    const response = await worker.fetch(request, { ...env, SHARDHOOK_CONTROL_URL: undefined }, createExecutionContext());
    expect(response.status).toBe(200);
    expect(commands).toEqual([]);
    expect(replies.map((r) => r.body)).toEqual([{ content: "I cannot send gateway commands: SHARDHOOK_CONTROL_URL is not set." }]);
  });

  it("GUILD_MEMBERS_CHUNK, the answer that comes back later, is logged with its count", async () => {
    const log = vi.spyOn(console, "log");
    const member = (id: string) => ({ user: { id, username: `u${id}`, discriminator: "0", avatar: null }, roles: [], joined_at: "2026-01-01T00:00:00.000000+00:00", deaf: false, mute: false, flags: 0 });
    const response = await post([
      { t: "GUILD_MEMBERS_CHUNK", s: 3, d: { guild_id: GUILD, members: [member("1"), member("2"), member("3")], chunk_index: 0, chunk_count: 2, nonce: "1551601395302400002" } },
      { t: "GUILD_MEMBERS_CHUNK", s: 4, d: { guild_id: GUILD, members: [member("4")], chunk_index: 1, chunk_count: 2 } },
    ]);
    expect([response.status, await response.text()]).toEqual([200, "handled 2 of 2 events"]);
    expect(log).toHaveBeenCalledWith(`guild ${GUILD}: members chunk 1/2 with 3 members on shard 0 (request 1551601395302400002)`);
    expect(log).toHaveBeenCalledWith(`guild ${GUILD}: members chunk 2/2 with 1 member on shard 0`);
    log.mockRestore();
  });
});
