//! The store's calls for what signed requests share across the bot's routers: spent request
//! ids (`spent:{id}`), the global REST limit's next slot (`rest:global`) and the
//! invalid-request count (`rest:invalid`). Kept apart from `store`'s tenure, checkpoint and
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

impl Store {
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
