// The `discord()` helper inside workerd: straight to Discord with the bot token, or, with
// SHARDHOOK_REST_URL set, through the router's REST proxy, signed over method, path with query
// and body as the README states, with no token, both mocked by fetchMock.
import { env, fetchMock } from "cloudflare:test";
import { afterEach, beforeAll, describe, expect, it } from "vitest";
import { discord, restSigned } from "../src/discord";
import { importSecret, verify } from "../src/verify";
import fixture from "./fixtures/shardhook-request.json";

const ROUTER = "https://router.test";
const DISCORD = "https://discord.test";

type Seen = { path: string; headers: Record<string, string>; body: string };

function intercept(origin: string, path: string, method: string, seen: Seen[], status = 200) {
  fetchMock
    .get(origin)
    .intercept({ path, method })
    .reply(status, (options) => {
      seen.push({ path: options.path, headers: options.headers as Record<string, string>, body: String(options.body ?? "") });
      return JSON.stringify({ id: "1" });
    }, { headers: { "content-type": "application/json" } });
}

/** The template's own Standard Webhooks check of `signed` under `secret`. */
async function checked(signed: string, headers: Record<string, string>, secret: string) {
  return verify(headers, new TextEncoder().encode(signed), [await importSecret(secret)], Math.floor(Date.now() / 1000));
}

beforeAll(() => {
  fetchMock.activate();
  fetchMock.disableNetConnect();
});
afterEach(() => fetchMock.assertNoPendingInterceptors());

describe("discord()", () => {
  it("goes straight to Discord with the bot token when SHARDHOOK_REST_URL is not set", async () => {
    const seen: Seen[] = [];
    intercept(DISCORD, "/api/v10/channels/5/messages", "POST", seen);
    await discord(env, "POST", "/channels/5/messages", { content: "hi" });
    expect(seen).toHaveLength(1);
    expect(seen[0].headers.authorization).toBe("Bot test-bot-token");
    expect(seen[0].headers["webhook-signature"]).toBeUndefined();
  });

  it("goes through the router, signed and without the token, when SHARDHOOK_REST_URL is set", async () => {
    const seen: Seen[] = [];
    intercept(ROUTER, "/api/v10/channels/5/messages?wait=true", "POST", seen);
    const through = { ...env, SHARDHOOK_REST_URL: `${ROUTER}/`, DISCORD_TOKEN: undefined };
    await discord(through, "POST", "/channels/5/messages?wait=true", { content: "hi" });
    expect(seen).toHaveLength(1);
    const { headers, body } = seen[0];
    expect(headers.authorization).toBeUndefined();
    expect(JSON.parse(body)).toEqual({ content: "hi" });
    expect(headers["webhook-id"]).toMatch(/^rest_[0-9a-f]{32}$/);
    // The signed string: `{METHOD} {path and query}\n{body}` as a Standard Webhooks body,
    // checked by the verify module under each configured key.
    const signed = restSigned("POST", "/api/v10/channels/5/messages?wait=true", body);
    expect(signed).toBe('POST /api/v10/channels/5/messages?wait=true\n{"content":"hi"}');
    for (const secret of [fixture.secret, fixture.previous_secret]) {
      expect((await checked(signed, headers, secret)).ok, secret).toBe(true);
    }
    const moved = restSigned("POST", "/api/v10/channels/6/messages", body);
    expect((await checked(moved, headers, fixture.secret)).ok).toBe(false);
  });

  it("signs a GET over an empty body and sends none", async () => {
    const seen: Seen[] = [];
    intercept(ROUTER, "/api/v10/guilds/1/members/2", "GET", seen);
    await discord({ ...env, SHARDHOOK_REST_URL: ROUTER }, "GET", "/guilds/1/members/2");
    const { headers } = seen[0];
    expect(headers["content-type"]).toBeUndefined();
    expect((await checked("GET /api/v10/guilds/1/members/2\n", headers, fixture.secret)).ok).toBe(true);
  });

  it("throws the router's refusal so the batch is retried", async () => {
    const seen: Seen[] = [];
    intercept(ROUTER, "/api/v10/channels/5/messages", "POST", seen, 401);
    await expect(discord({ ...env, SHARDHOOK_REST_URL: ROUTER }, "POST", "/channels/5/messages", { content: "x" })).rejects.toThrow(
      /401/,
    );
  });
});
