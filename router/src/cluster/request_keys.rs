//! The store's calls for what signed requests share across the bot's routers: spent request
//! ids (`spent:{id}`), the global REST limit's next slot (`rest:global`), the
//! invalid-request count (`rest:invalid`) and each route bucket's window (`rest:route:{hash}`,
//! a hash of method, route and major parameter: never a token). Kept apart from `store`'s tenure, checkpoint and
//! stream calls; the keys are listed there.
//!
//! Owns these calls and their Lua scripts; what to do with the answers is `spent_ids`' and
//! `rest_limits`'.

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;

use super::store::{Store, StoreError};

/// Frees a request id claimed by this router, and only then.
static RELEASE_ID: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
",
    )
});

/// Reserves the next slot of the bot's global REST limit (a GCRA by Redis' clock, in
/// microseconds), unless it is more than ARGV[2] away: {reserved, wait}.
static GLOBAL_SLOT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local wait = tat - now
if wait > tonumber(ARGV[2]) then return {0, wait} end
redis.call('SET', KEYS[1], string.format('%.0f', tat + interval), 'PX', math.floor((wait + interval) / 1000) + 1000)
return {1, wait}
",
    )
});

/// Counts an invalid answer (ARGV[1]: a unique member) in the bot's 10-minute window, kept to
/// the newest 10,000.
static INVALID_RECORD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 600000)
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -10001)
redis.call('PEXPIRE', KEYS[1], 600000)
return 1
",
    )
});

/// The bot's invalid answers in the last 10 minutes, and the milliseconds until fewer than
/// ARGV[1] are: {count, wait}.
static INVALID_COUNT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 600000)
local count = redis.call('ZCARD', KEYS[1])
local limit = tonumber(ARGV[1])
if count < limit then return {count, 0} end
local leaving = redis.call('ZRANGE', KEYS[1], count - limit, count - limit, 'WITHSCORES')
return {count, math.max(0, tonumber(leaving[2]) + 600000 - now)}
",
    )
});

/// Takes one request of a route bucket by Redis' clock (milliseconds): {1, 0} taken; {2, wait}
/// spent until its reset; {3, wait} being learned; {0, wait} spent past ARGV[1] (max wait).
/// A bucket unknown, or past its reset, lets one request go and holds the rest for up to
/// ARGV[2] ms while it learns the bucket (with the limit known: a fresh window's `limit - 1`
/// go at once, its reset still to be learned).
static ROUTE_TAKE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local b = redis.call('HMGET', KEYS[1], 'remaining', 'reset', 'limit', 'learning')
local remaining, reset, limit = tonumber(b[1]), tonumber(b[2]), tonumber(b[3])
if reset == nil or reset <= now then
  local left = 0
  if limit ~= nil and b[4] ~= '1' then left = limit - 1 end
  redis.call('HSET', KEYS[1], 'remaining', left, 'reset', now + tonumber(ARGV[2]), 'learning', '1', 'since', now)
  redis.call('PEXPIRE', KEYS[1], 3600000)
  return {1, 0}
end
if remaining > 0 then
  redis.call('HINCRBY', KEYS[1], 'remaining', -1)
  return {1, 0}
end
local wait = reset - now
if b[4] == '1' then return {3, wait} end
if wait > tonumber(ARGV[1]) then return {0, wait} end
return {2, wait}
",
    )
});

/// Records a response's `X-RateLimit-*` (ARGV: limit, remaining, reset-after in ms) for a
/// route bucket. In the window already known, the lower `remaining` holds (requests taken since
/// this one reached Discord are in Redis' count, not in its header); a reset later than the
/// known one by over half a second is a new window, whose header is taken as it is. While a
/// new window is being learned, an answer whose reset comes before that window began is a
/// late one from the window before: it is ignored.
static ROUTE_LEARN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local reset = now + tonumber(ARGV[3])
local remaining = tonumber(ARGV[2])
local b = redis.call('HMGET', KEYS[1], 'remaining', 'reset', 'learning', 'since')
local known, known_reset = tonumber(b[1]), tonumber(b[2])
if b[3] == '1' and b[4] and reset <= tonumber(b[4]) then return 0 end
if known ~= nil and known_reset ~= nil and known_reset > now and reset <= known_reset + 500 then
  if known < remaining then remaining = known end
end
redis.call('HSET', KEYS[1], 'remaining', remaining, 'reset', reset, 'limit', ARGV[1], 'learning', '0')
redis.call('PEXPIRE', KEYS[1], 3600000)
return 1
",
    )
});

/// How long a request learning a route bucket holds the others back at most (it failed, or its
/// answer carried no bucket headers).
const LEARNING: Duration = Duration::from_secs(2);

/// The Redis key part for a route bucket: a digest, so a path's parts never become key names.
fn route_key(key: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(key.as_bytes());
    let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
    format!("rest:route:{hex}")
}

impl Store {
    /// Takes one request of the route bucket `key` (see `ROUTE_TAKE`): the script's code and
    /// wait.
    pub async fn take_route(
        &self,
        key: &str,
        max_wait: Duration,
    ) -> Result<(i64, Duration), StoreError> {
        let mut conn = self.conn.clone();
        let (code, wait_ms): (i64, i64) = self
            .timed(
                ROUTE_TAKE
                    .key(self.key(&route_key(key)))
                    .arg(max_wait.as_millis().min(u64::MAX as u128) as u64)
                    .arg(LEARNING.as_millis() as u64)
                    .invoke_async(&mut conn),
            )
            .await?;
        Ok((code, Duration::from_millis(wait_ms.max(0) as u64)))
    }

    /// Records what a response said of the route bucket `key`.
    pub async fn learn_route(
        &self,
        key: &str,
        limit: u32,
        remaining: u32,
        reset_after: Duration,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        self.timed(
            ROUTE_LEARN
                .key(self.key(&route_key(key)))
                .arg(limit)
                .arg(remaining)
                .arg(reset_after.as_millis().min(u64::MAX as u128) as u64)
                .invoke_async::<i64>(&mut conn),
        )
        .await
        .map(drop)
    }

    /// Claims the request id `id` for `node` for `ttl` (one set for every router of the bot):
    /// false if any router claimed or spent it already.
    pub async fn claim_id(&self, id: &str, node: &str, ttl: Duration) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        let set: Option<String> = self
            .timed(
                redis::cmd("SET")
                    .arg(self.key(&format!("spent:{id}")))
                    .arg(node)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl.as_millis().max(1) as u64)
                    .query_async(&mut conn),
            )
            .await?;
        Ok(set.is_some())
    }

    /// Frees the request id `id` if `node` holds its claim (its request was not acted on).
    pub async fn release_id(&self, id: &str, node: &str) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        self.timed(
            RELEASE_ID
                .key(self.key(&format!("spent:{id}")))
                .arg(node)
                .invoke_async::<i64>(&mut conn),
        )
        .await
        .map(drop)
    }

    /// Reserves the next slot of the bot's global REST limit, `per_second` a second, unless
    /// it is more than `max_wait` away: (reserved, the wait for it).
    pub async fn global_slot(
        &self,
        per_second: u16,
        max_wait: Duration,
    ) -> Result<(bool, Duration), StoreError> {
        let mut conn = self.conn.clone();
        let interval = 1_000_000 / u64::from(per_second.max(1));
        let (reserved, wait_us): (i64, i64) = self
            .timed(
                GLOBAL_SLOT
                    .key(self.key("rest:global"))
                    .arg(interval)
                    .arg(max_wait.as_micros().min(u64::MAX as u128) as u64)
                    .invoke_async(&mut conn),
            )
            .await?;
        Ok((reserved == 1, Duration::from_micros(wait_us.max(0) as u64)))
    }

    /// Counts an invalid answer from Discord in the bot's window; `member` is unique.
    pub async fn record_invalid(&self, member: &str) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        self.timed(
            INVALID_RECORD
                .key(self.key("rest:invalid"))
                .arg(member)
                .invoke_async::<i64>(&mut conn),
        )
        .await
        .map(drop)
    }

    /// The bot's invalid answers in the last 10 minutes, and how long until fewer than
    /// `limit` are.
    pub async fn invalid_count(&self, limit: u32) -> Result<(usize, Duration), StoreError> {
        let mut conn = self.conn.clone();
        let (count, wait_ms): (i64, i64) = self
            .timed(
                INVALID_COUNT
                    .key(self.key("rest:invalid"))
                    .arg(limit.max(1))
                    .invoke_async(&mut conn),
            )
            .await?;
        Ok((
            count.max(0) as usize,
            Duration::from_millis(wait_ms.max(0) as u64),
        ))
    }
}
