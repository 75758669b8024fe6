// Verifies shardhook's Standard Webhooks signatures. It owns the signature check and the
// timestamp window; parsing the body and handling events are left to `delivery.ts`.
//
// Only Web Crypto, TextEncoder and atob are used, so the same module runs in Workers and in
// Node 20 (the Lambda template imports it too).

/** How far `webhook-timestamp` may be from now, either way: Standard Webhooks' 5 minutes. */
export const TOLERANCE_SECONDS = 5 * 60;

/**
 * The most entries `webhook-signature` may hold. The router sends one per key it signs with
 * (the current one and those being rotated out); a header with more is refused before any
 * work, so a stranger cannot make the check costly.
 */
export const MAX_SIGNATURES = 8;

/** An HMAC-SHA256 signature's length; an entry of any other length cannot match. */
const SIGNATURE_BYTES = 32;

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
 * HMAC-SHA256 key. Verifying computes the HMAC and compares it (see `verify`), so a key only
 * ever signs. Throws on a secret that is not base64: a configuration error, not a bad request.
 */
export async function importSecret(secret: string): Promise<SigningKey> {
  const raw = decodeBase64(secret.trim().replace(/^whsec_/, ""));
  if (raw === null || raw.length === 0) {
    throw new Error("a signing secret is not whsec_ followed by base64");
  }
  return crypto.subtle.importKey("raw", raw, { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
}

/**
 * Checks `body` (the raw bytes, before any parsing) against the `webhook-*` headers with each
 * of `keys`; any `v1,` signature matching any key passes. `now` is Unix seconds.
 *
 * The HMAC over the body is computed once per key, whatever the header holds, and compared
 * in constant time with each entry; entries that are not 32 bytes of base64 are ignored, and a
 * header with more than `MAX_SIGNATURES` entries is refused unread.
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
  const entries = signature.split(" ").filter((entry) => entry.length > 0);
  if (entries.length > MAX_SIGNATURES) return refuse("too many entries in webhook-signature header");
  const candidates = entries
    .filter((entry) => entry.startsWith("v1,"))
    .map((entry) => decodeBase64(entry.slice(3)))
    .filter((bytes): bytes is Uint8Array<ArrayBuffer> => bytes?.length === SIGNATURE_BYTES);
  if (candidates.length === 0) return refuse("malformed webhook-signature header");

  const signed = concat(encoder.encode(`${id}.${stamp}.`), body);
  for (const key of keys) {
    const expected = new Uint8Array(await crypto.subtle.sign("HMAC", key, signed));
    if (candidates.some((candidate) => sameBytes(expected, candidate))) {
      return { ok: true, id, timestamp };
    }
  }
  return refuse("no signature matches");
}

/** Whether `a` and `b` hold the same bytes, in time that depends on their length only. */
function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  let differ = 0;
  for (let i = 0; i < a.length; i++) differ |= a[i] ^ b[i];
  return differ === 0;
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
