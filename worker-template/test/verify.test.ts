// The verify module on its own: the router's real request at its own timestamp, signatures by
// the npm standardwebhooks package, and every kind of refusal.
import { afterEach, describe, expect, it, vi } from "vitest";
import { importSecret, MAX_SIGNATURES, TOLERANCE_SECONDS, verify } from "../src/verify";
import { batchBody, FIXTURE_NOW, fixture, message, nowSeconds, signedHeaders } from "./helpers";

const bytes = (text: string) => new TextEncoder().encode(text);
const current = () => importSecret(fixture.secret);
const previous = () => importSecret(fixture.previous_secret);
const [currentSig, previousSig] = fixture.headers["webhook-signature"].split(" ");

describe("a request signed by shardhook itself", () => {
  it("verifies at its own timestamp with the current key", async () => {
    const result = await verify(fixture.headers, bytes(fixture.body), [await current()], FIXTURE_NOW);
    expect(result).toEqual({ ok: true, id: fixture.headers["webhook-id"], timestamp: FIXTURE_NOW });
  });

  it("verifies with only the previous key (rotation), through its second signature", async () => {
    const result = await verify(fixture.headers, bytes(fixture.body), [await previous()], FIXTURE_NOW);
    expect(result.ok).toBe(true);
    const onlyFirst = { ...fixture.headers, "webhook-signature": currentSig };
    expect(await verify(onlyFirst, bytes(fixture.body), [await previous()], FIXTURE_NOW)).toEqual({
      ok: false,
      reason: "no signature matches",
    });
    const onlySecond = { ...fixture.headers, "webhook-signature": previousSig };
    expect((await verify(onlySecond, bytes(fixture.body), [await previous()], FIXTURE_NOW)).ok).toBe(true);
  });

  it("verifies through a Headers object and up to 5 minutes either side", async () => {
    const headers = new Headers(fixture.headers);
    for (const now of [FIXTURE_NOW - TOLERANCE_SECONDS, FIXTURE_NOW + TOLERANCE_SECONDS]) {
      expect((await verify(headers, bytes(fixture.body), [await current()], now)).ok).toBe(true);
    }
  });

  it("is refused once stale (an hour later), and just outside the window either side", async () => {
    for (const now of [FIXTURE_NOW + 3600, FIXTURE_NOW + TOLERANCE_SECONDS + 1, FIXTURE_NOW - TOLERANCE_SECONDS - 1]) {
      expect(await verify(fixture.headers, bytes(fixture.body), [await current()], now)).toEqual({
        ok: false,
        reason: "webhook-timestamp is more than 5 minutes away",
      });
    }
  });

  it("is refused when one byte of the body changes", async () => {
    const tampered = fixture.body.replace('"content":"!ping"', '"content":"!pong"');
    expect(tampered).not.toBe(fixture.body);
    const result = await verify(fixture.headers, bytes(tampered), [await current(), await previous()], FIXTURE_NOW);
    expect(result).toEqual({ ok: false, reason: "no signature matches" });
  });

  it("is refused when the id or timestamp header is changed", async () => {
    const keys = [await current()];
    const otherId = { ...fixture.headers, "webhook-id": "msg_other" };
    expect((await verify(otherId, bytes(fixture.body), keys, FIXTURE_NOW)).ok).toBe(false);
    const otherStamp = { ...fixture.headers, "webhook-timestamp": String(FIXTURE_NOW + 1) };
    expect((await verify(otherStamp, bytes(fixture.body), keys, FIXTURE_NOW)).ok).toBe(false);
  });
});

describe("signatures made by the standardwebhooks npm package", () => {
  const body = batchBody([{ t: "MESSAGE_CREATE", s: 7, d: message("!ping") }]);

  it("verify, whichever of several signatures matches", async () => {
    const headers = signedHeaders(body, [fixture.previous_secret, fixture.secret]);
    expect((await verify(headers, bytes(body), [await current()], nowSeconds())).ok).toBe(true);
    expect((await verify(headers, bytes(body), [await previous()], nowSeconds())).ok).toBe(true);
  });

  it("are refused under a wrong key", async () => {
    const wrong = await importSecret("whsec_" + btoa("a different 32-byte secret key!!"));
    const headers = signedHeaders(body, [fixture.secret]);
    expect(await verify(headers, bytes(body), [wrong], nowSeconds())).toEqual({
      ok: false,
      reason: "no signature matches",
    });
  });

  it("are refused when truncated", async () => {
    const headers = signedHeaders(body, [fixture.secret]);
    const full = headers["webhook-signature"];
    // Cut to a shorter, still well-formed base64 value, and to malformed ones.
    const shorter = `v1,${btoa(atob(full.slice(3)).slice(0, 16))}`;
    expect((await verify({ ...headers, "webhook-signature": shorter }, bytes(body), [await current()], nowSeconds())).ok).toBe(false);
    for (const cut of [full.slice(0, -1), full.slice(0, -4), "v1,"]) {
      const result = await verify({ ...headers, "webhook-signature": cut }, bytes(body), [await current()], nowSeconds());
      expect(result.ok, cut).toBe(false);
    }
  });

  it("are refused as stale or from the future", async () => {
    for (const at of [nowSeconds() - 301, nowSeconds() + 301]) {
      const headers = signedHeaders(body, [fixture.secret], at);
      expect(await verify(headers, bytes(body), [await current()], nowSeconds())).toEqual({
        ok: false,
        reason: "webhook-timestamp is more than 5 minutes away",
      });
    }
  });
});

describe("malformed headers", () => {
  const body = batchBody([]);
  const good = signedHeaders(body, [fixture.secret]);

  it.each([
    ["webhook-id", "missing webhook-id header"],
    ["webhook-timestamp", "missing webhook-timestamp header"],
    ["webhook-signature", "missing webhook-signature header"],
  ])("without %s are refused", async (name, reason) => {
    const headers: Record<string, string> = { ...good };
    delete headers[name];
    expect(await verify(headers, bytes(body), [await current()], nowSeconds())).toEqual({ ok: false, reason });
    expect(await verify({ ...headers, [name]: "  " }, bytes(body), [await current()], nowSeconds())).toEqual({
      ok: false,
      reason,
    });
  });

  it.each(["12.5", "-1", "soon", "1e9", "99999999999999"])("with timestamp %s are refused", async (stamp) => {
    const result = await verify({ ...good, "webhook-timestamp": stamp }, bytes(body), [await current()], nowSeconds());
    expect(result).toEqual({ ok: false, reason: "malformed webhook-timestamp header" });
  });

  it("with no v1 signature are refused", async () => {
    const sig = good["webhook-signature"];
    for (const bad of [sig.replace("v1,", "v2,"), sig.slice(3), "v1,not base64!"]) {
      const result = await verify({ ...good, "webhook-signature": bad }, bytes(body), [await current()], nowSeconds());
      expect(result).toEqual({ ok: false, reason: "malformed webhook-signature header" });
    }
  });

  it("a secret that is not base64 is a configuration error", async () => {
    await expect(importSecret("whsec_not base64")).rejects.toThrow(/not whsec_/);
    await expect(importSecret("whsec_")).rejects.toThrow(/not whsec_/);
  });
});

describe("the cost of a check without the key", () => {
  afterEach(() => {
    vi.restoreAllMocks();
  });

  const body = batchBody([{ t: "MESSAGE_CREATE", s: 7, d: message("x".repeat(64 * 1024)) }]);
  /** A well-formed entry that matches no key: 32 bytes of base64. */
  const forged = (n: number) => `v1,${btoa(String(n).padStart(32, "0"))}`;

  it("is one HMAC per key, however many entries the header holds", async () => {
    const sign = vi.spyOn(crypto.subtle, "sign");
    const check = vi.spyOn(crypto.subtle, "verify");
    const good = signedHeaders(body, [fixture.secret]);
    const entries = Array.from({ length: MAX_SIGNATURES - 1 }, (_, n) => forged(n));
    const headers = { ...good, "webhook-signature": [...entries, good["webhook-signature"]].join(" ") };
    const keys = [await previous(), await current()];
    expect((await verify(headers, bytes(body), keys, nowSeconds())).ok).toBe(true);
    expect(sign).toHaveBeenCalledTimes(keys.length);
    expect(check).not.toHaveBeenCalled();
    sign.mockClear();
    const none = { ...good, "webhook-signature": entries.join(" ") };
    expect(await verify(none, bytes(body), keys, nowSeconds())).toEqual({ ok: false, reason: "no signature matches" });
    expect(sign).toHaveBeenCalledTimes(keys.length);
  });

  it("is nothing for a header with too many entries", async () => {
    const sign = vi.spyOn(crypto.subtle, "sign");
    const good = signedHeaders(body, [fixture.secret]);
    const entries = Array.from({ length: 2500 }, (_, n) => forged(n));
    const headers = { ...good, "webhook-signature": [good["webhook-signature"], ...entries].join(" ") };
    expect(await verify(headers, bytes(body), [await current()], nowSeconds())).toEqual({
      ok: false,
      reason: "too many entries in webhook-signature header",
    });
    expect(sign).not.toHaveBeenCalled();
  });

  it("ignores entries that are not 32 bytes", async () => {
    const good = signedHeaders(body, [fixture.secret]);
    const short = `v1,${btoa("sixteen bytes!!!")}`;
    const long = `v1,${btoa("x".repeat(48))}`;
    const withGood = { ...good, "webhook-signature": `${short} ${long} ${good["webhook-signature"]}` };
    expect((await verify(withGood, bytes(body), [await current()], nowSeconds())).ok).toBe(true);
    const without = { ...good, "webhook-signature": `${short} ${long}` };
    expect(await verify(without, bytes(body), [await current()], nowSeconds())).toEqual({
      ok: false,
      reason: "malformed webhook-signature header",
    });
  });
});
