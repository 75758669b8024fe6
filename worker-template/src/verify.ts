// Verifies shardhook's Standard Webhooks signatures. It owns the signature check and the
// timestamp window; parsing the body and handling events are left to `delivery.ts`.
//
// Only Web Crypto, TextEncoder and atob are used, so the same module runs in Workers and in
// Node 20 (the Lambda template imports it too).

/** How far `webhook-timestamp` may be from now, either way: Standard Webhooks' 5 minutes. */
export const TOLERANCE_SECONDS = 5 * 60;

/** Reads a request header by its lower-case name. */
export type HeaderSource =
  | { get(name: string): string | null }
  | Record<string, string | undefined>;

export type Verified = { ok: true; id: string; timestamp: number };
export type Refused = { ok: false; reason: string };

/** A signing key, decoded once and kept for every request an isolate serves. */
export type SigningKey = CryptoKey;

const encoder = new TextEncoder();

/**
 * Decodes a `whsec_...` secret (the prefix is optional, as in the official libraries) into an
 * HMAC-SHA256 key, for verifying (the default) or, for requests a handler sends to the router
 * (`commands.ts`), for signing. Throws on a secret that is not base64: a configuration error,
 * not a bad request.
 */
export async function importSecret(
  secret: string,
  usage: "verify" | "sign" = "verify",
): Promise<SigningKey> {
  const raw = decodeBase64(secret.trim().replace(/^whsec_/, ""));
  if (raw === null || raw.length === 0) {
    throw new Error("a signing secret is not whsec_ followed by base64");
  }
  return crypto.subtle.importKey("raw", raw, { name: "HMAC", hash: "SHA-256" }, false, [usage]);
}

/**
 * Checks `body` (the raw bytes, before any parsing) against the `webhook-*` headers with each
 * of `keys`; any `v1,` signature matching any key passes. `now` is Unix seconds.
 */
export async function verify(
  headers: HeaderSource,
  body: Uint8Array,
  keys: readonly SigningKey[],
  now: number,
): Promise<Verified | Refused> {
  const id = header(headers, "webhook-id");
  const stamp = header(headers, "webhook-timestamp");
  const signature = header(headers, "webhook-signature");
  if (!id) return refuse("missing webhook-id header");
  if (!stamp) return refuse("missing webhook-timestamp header");
  if (!signature) return refuse("missing webhook-signature header");
  if (!/^[0-9]{1,12}$/.test(stamp)) return refuse("malformed webhook-timestamp header");
  const timestamp = Number(stamp);
  if (Math.abs(now - timestamp) > TOLERANCE_SECONDS) {
    return refuse("webhook-timestamp is more than 5 minutes away");
  }
  const candidates = signature
    .split(" ")
    .filter((entry) => entry.startsWith("v1,"))
    .map((entry) => decodeBase64(entry.slice(3)))
    .filter((bytes) => bytes !== null);
  if (candidates.length === 0) return refuse("malformed webhook-signature header");

  const signed = concat(encoder.encode(`${id}.${stamp}.`), body);
  for (const key of keys) {
    for (const candidate of candidates) {
      // Web Crypto compares in constant time and refuses a signature of the wrong length.
      if (await crypto.subtle.verify("HMAC", key, candidate, signed)) {
        return { ok: true, id, timestamp };
      }
    }
  }
  return refuse("no signature matches");
}

function refuse(reason: string): Refused {
  return { ok: false, reason };
}

function header(headers: HeaderSource, name: string): string | undefined {
  const value =
    typeof headers.get === "function"
      ? (headers as { get(name: string): string | null }).get(name)
      : (headers as Record<string, string | undefined>)[name];
  return value?.trim() || undefined;
}

/** Strict base64 (padding required, as Standard Webhooks writes it); `null` if malformed. */
function decodeBase64(text: string): Uint8Array<ArrayBuffer> | null {
  if (text.length % 4 !== 0 || !/^[A-Za-z0-9+/]*={0,2}$/.test(text)) return null;
  try {
    return Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
  } catch {
    return null;
  }
}

function concat(a: Uint8Array, b: Uint8Array): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(a.length + b.length);
  out.set(a, 0);
  out.set(b, a.length);
  return out;
}
