//! What the routers of a bot share in Redis, and every call that reads or writes it.
//!
//! Owns the keys (all under `shardhook:{bot}:`), the Lua scripts that make each step atomic,
//! and a timeout on every call. It decides nothing: when to renew, take or give up a shard is
//! the coordinator's. Keys:
//! - `nodes`: a sorted set of live routers, scored by when their membership expires (ms, by
//!   Redis' clock); `node:{id}`: each one's `NodeInfo`, expiring with it.
//! - `lease:{shard}`: `{node}#{fence}`, expiring `lease_ttl` after its last renewal;
//!   `fence:{shard}`: the fencing token, incremented on every acquisition.
//! - `checkpoint:{shard}`: the shard's resume checkpoint (JSON), written only by the holder of
//!   the current lease and fence.
//! - `identify:{bucket}`: held 5 s after an IDENTIFY in the bucket; `starts`: session starts
//!   left today, expiring when Discord resets them.
//! - `spool:{shard}`: the shard's spool, a stream of batches no endpoint could take yet (field
//!   `record`: the batch's JSON), written only under the shard's current lease and fence, and
//!   drained by whichever router holds the shard.
//! - `spent:{id}`: a signed request's `webhook-id` (gateway command or REST call), claimed by
//!   the router checking it (value: its node id) and kept until the signature's window ends,
//!   unless that router frees it (the request was not acted on).
//! - `rest:global`: the bot's global REST limit, the next free slot (Unix microseconds by
//!   Redis' clock); `rest:invalid`: the bot's answers of 401, 403 or 429 from Discord in the
//!   last 10 minutes (a sorted set by time).
//! - `dead-letters`: a stream of every router's dead letters (field `record`: the JSON line of
//!   the dead-letter file), until `shardhook cluster dead-letters` moves them to a file; at
//!   most `cluster.dead_letters_max` entries (past it a router waits, dropping nothing).
//!
//! Every record a router acts on carries a MAC (`seal`): checkpoints and node records as a
//! `mac` member of their JSON, stream entries as a `mac` field beside `record`. A record whose
//! MAC fails is refused: a checkpoint is not resumed from, a node is left out, a spooled batch
//! or dead letter is set apart (`Entry::Refused`) for its caller to put aside.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;
use serde::{Deserialize, Serialize};

use super::seal::{opened_json, sealed_json, Refused, Seal, Unsealed};
use crate::state::checkpoint::Checkpoint;

/// A Redis call that failed or took too long.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// No answer within `cluster.redis_timeout`.
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    /// Redis answered with an error, or the connection failed.
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// A stored value is not what this version writes.
    #[error("Redis key {key} holds something unreadable: {message}")]
    Unreadable {
        /// The key.
        key: String,
        /// Why it does not parse.
        message: String,
    },
    /// A stored value is not one a router of this bot wrote.
    #[error("Redis: {0}")]
    Refused(#[from] Refused),
}

impl From<Unsealed> for StoreError {
    fn from(e: Unsealed) -> StoreError {
        match e {
            Unsealed::Unreadable { key, message } => StoreError::Unreadable { key, message },
            Unsealed::Refused(refused) => StoreError::Refused(refused),
        }
    }
}

/// A stream entry as read: verified, or refused with its raw bytes and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Verified(Vec<u8>),
    Refused(Vec<u8>, Refused),
}

/// One router as the others see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// `cluster.node_id`.
    pub id: String,
    /// Its rendezvous weight.
    pub weight: f64,
    /// Where its control API answers (`host:port`).
    pub control: String,
    /// When it joined, Unix milliseconds.
    pub started_ms: u64,
}

/// A shard's lease as read: who holds it, under which fence, for how much longer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The holder's node id.
    pub node: String,
    /// The fencing token of this tenure.
    pub fence: u64,
    /// Milliseconds until it expires unless renewed.
    pub ttl_ms: i64,
}

/// What an identify turn came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turn {
    /// This router may IDENTIFY now; a session start is spent.
    Go,
    /// Another router identified in the bucket; try again after this long.
    Wait(Duration),
    /// No session start is left until Discord resets them, in this long.
    Exhausted(Duration),
}

/// Renews a lease and writes the shard's checkpoint if one is given, only while `lease` and
/// `fence` are still this tenure's.
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if redis.call('GET', KEYS[3]) ~= ARGV[3] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
if ARGV[4] ~= '' then redis.call('SET', KEYS[2], ARGV[4], 'PX', ARGV[5]) end
return 1
";

/// Takes a free lease under a new fence.
const ACQUIRE: &str = r"
local held = redis.call('GET', KEYS[1])
if held then return {0, held} end
local fence = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. '#' .. fence, 'PX', ARGV[2])
return {1, tostring(fence)}
";

/// Writes the final checkpoint and gives the lease up, if it is still this tenure's.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if redis.call('GET', KEYS[3]) ~= ARGV[2] then return 0 end
if ARGV[3] ~= '' then redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[4]) end
redis.call('DEL', KEYS[1])
return 1
";

/// Renews this router's membership and answers the live routers' info.
const HEARTBEAT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local out = {}
for _, node in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local info = redis.call('GET', ARGV[4] .. node)
  if info then table.insert(out, info) end
end
return out
";

/// One IDENTIFY's turn in a bucket, spending a session start when there is a budget.
const TURN: &str = r"
local wait = redis.call('PTTL', KEYS[1])
if wait > 0 then return {0, wait} end
if wait == -1 then return {0, tonumber(ARGV[2])} end
local left = redis.call('GET', KEYS[2])
if left then
  if tonumber(left) <= 0 then return {2, redis.call('PTTL', KEYS[2])} end
  redis.call('DECR', KEYS[2])
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return {1, 0}
";

/// Adds a record (ARGV[1], its MAC ARGV[2]) to a stream unless it holds ARGV[3] entries:
/// {added, length}.
const KEEP_BOUNDED: &str = r"
local len = redis.call('XLEN', KEYS[1])
if len >= tonumber(ARGV[3]) then return {0, len} end
redis.call('XADD', KEYS[1], '*', 'record', ARGV[1], 'mac', ARGV[2])
return {1, len + 1}
";

/// Adds a spool record (ARGV[2], its MAC ARGV[3]) while the shard's lease is ARGV[1].
const PUSH_FENCED: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('XADD', KEYS[2], '*', 'record', ARGV[2], 'mac', ARGV[3])
return 1
";

/// One entry of a stream as XRANGE answers it: its id and its fields.
type StreamEntry = (String, Vec<(String, Vec<u8>)>);

/// The shared state of one bot's routers in Redis.
#[derive(Clone)]
pub struct Store {
    pub(super) conn: ConnectionManager,
    /// `shardhook:{bot}:`.
    prefix: String,
    timeout: Duration,
    scripts: std::sync::Arc<Scripts>,
    seal: Seal,
}

struct Scripts {
    renew: Script,
    acquire: Script,
    release: Script,
    heartbeat: Script,
    turn: Script,
    keep_bounded: Script,
    push_fenced: Script,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// A store for `bot` on the Redis at `url`. The connection is made on first use and
    /// remade after a failure, so a Redis that is down at start does not stop the router.
    /// With `rediss://`, `ca` (PEM) is the CA trusted for the server's certificate instead of
    /// the system's roots.
    pub fn new(
        url: &str,
        bot: &str,
        seal: Seal,
        ca: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<Store, StoreError> {
        let client = match ca {
            Some(root_cert) => redis::Client::build_with_tls(
                url,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(root_cert),
                },
            )?,
            None => redis::Client::open(url)?,
        };
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(Store {
            conn,
            prefix: format!("shardhook:{bot}:"),
            timeout,
            scripts: std::sync::Arc::new(Scripts {
                renew: Script::new(RENEW),
                acquire: Script::new(ACQUIRE),
                release: Script::new(RELEASE),
                heartbeat: Script::new(HEARTBEAT),
                turn: Script::new(TURN),
                keep_bounded: Script::new(KEEP_BOUNDED),
                push_fenced: Script::new(PUSH_FENCED),
            }),
            seal,
        })
    }

    pub(super) fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Runs one call under the timeout.
    pub(super) async fn timed<T>(
        &self,
        call: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(answer) => Ok(answer?),
            Err(_) => Err(StoreError::Timeout(self.timeout)),
        }
    }

    /// Renews `me`'s membership for `ttl` and returns every live router (`me` included).
    pub async fn heartbeat(
        &self,
        me: &NodeInfo,
        ttl: Duration,
    ) -> Result<Vec<NodeInfo>, StoreError> {
        let info = sealed_json(&self.seal, &format!("node:{}", me.id), me);
        let mut conn = self.conn.clone();
        let raw: Vec<String> = self
            .timed(
                self.scripts
                    .heartbeat
                    .key(self.key("nodes"))
                    .key(self.key(&format!("node:{}", me.id)))
                    .arg(&me.id)
                    .arg(ttl.as_millis() as u64)
                    .arg(info)
                    .arg(self.key("node:"))
                    .invoke_async(&mut conn),
            )
            .await?;
        Ok(raw.iter().filter_map(|text| self.node_info(text)).collect())
    }

    /// A node record read back, if it is one a router of this bot wrote (logged if not).
    fn node_info(&self, text: &str) -> Option<NodeInfo> {
        #[derive(Deserialize)]
        struct Id {
            id: String,
        }
        let id = serde_json::from_str::<Id>(text).ok()?.id;
        match opened_json(&self.seal, &format!("node:{id}"), text) {
            Ok(info) => Some(info),
            Err(e) => {
                tracing::error!(node = %id, "a node record in Redis was refused and is ignored: {e}");
                None
            }
        }
    }

    /// Takes `me` out of the live routers at once (a clean stop), so the others take its
    /// shards as it lets them go.
    pub async fn leave(&self, node: &str) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let mut pipe = redis::pipe();
        pipe.zrem(self.key("nodes"), node)
            .ignore()
            .del(self.key(&format!("node:{node}")))
            .ignore();
        self.timed(pipe.query_async::<()>(&mut conn)).await
    }

    /// Takes the leases nobody holds among `shards` for `node`, in one round trip: per shard,
    /// the new fencing token, or `None` (another router holds it).
    pub async fn acquire_many(
        &self,
        shards: &[u32],
        node: &str,
        ttl: Duration,
    ) -> Result<Vec<Option<u64>>, StoreError> {
        if shards.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for shard in shards {
            let mut invocation = self.scripts.acquire.prepare_invoke();
            invocation
                .key(self.key(&format!("lease:{shard}")))
                .key(self.key(&format!("fence:{shard}")))
                .arg(node)
                .arg(ttl.as_millis() as u64);
            pipe.invoke_script(&invocation);
        }
        let mut conn = self.conn.clone();
        self.timed(self.scripts.acquire.load_async(&mut conn))
            .await?;
        let answers: Vec<(i64, String)> = self.timed(pipe.query_async(&mut conn)).await?;
        Ok(answers
            .into_iter()
            .map(|(taken, fence)| (taken == 1).then(|| fence.parse().ok()).flatten())
            .collect())
    }

    /// Renews each `(shard, fence, checkpoint)` lease of `node` in one round trip, writing the
    /// checkpoint with it when given. Per shard: whether the lease and fence were still
    /// `node`'s (false: another router took the shard; nothing was written).
    pub async fn renew(
        &self,
        node: &str,
        ttl: Duration,
        checkpoint_ttl: Duration,
        leases: &[(u32, u64, Option<&Checkpoint>)],
    ) -> Result<Vec<bool>, StoreError> {
        if leases.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for (shard, fence, checkpoint) in leases {
            let json = checkpoint
                .map(|cp| sealed_json(&self.seal, &format!("checkpoint:{shard}"), cp))
                .unwrap_or_default();
            let mut invocation = self.scripts.renew.prepare_invoke();
            invocation
                .key(self.key(&format!("lease:{shard}")))
                .key(self.key(&format!("checkpoint:{shard}")))
                .key(self.key(&format!("fence:{shard}")))
                .arg(format!("{node}#{fence}"))
                .arg(ttl.as_millis() as u64)
                .arg(fence.to_string())
                .arg(json)
                .arg(checkpoint_ttl.as_millis() as u64);
            pipe.invoke_script(&invocation);
        }
        // EVALSHA needs the scripts loaded first (a restarted Redis has none).
        let mut conn = self.conn.clone();
        self.timed(self.scripts.renew.load_async(&mut conn)).await?;
        let held: Vec<i64> = self.timed(pipe.query_async(&mut conn)).await?;
        Ok(held.into_iter().map(|h| h == 1).collect())
    }

    /// Writes `checkpoint` and gives `shard`'s lease up, if `node` still holds it under
    /// `fence`; false if it did not (nothing written).
    pub async fn release(
        &self,
        shard: u32,
        node: &str,
        fence: u64,
        checkpoint: Option<&Checkpoint>,
        checkpoint_ttl: Duration,
    ) -> Result<bool, StoreError> {
        let json = checkpoint
            .map(|cp| sealed_json(&self.seal, &format!("checkpoint:{shard}"), cp))
            .unwrap_or_default();
        let mut conn = self.conn.clone();
        let released: i64 = self
            .timed(
                self.scripts
                    .release
                    .key(self.key(&format!("lease:{shard}")))
                    .key(self.key(&format!("checkpoint:{shard}")))
                    .key(self.key(&format!("fence:{shard}")))
                    .arg(format!("{node}#{fence}"))
                    .arg(fence.to_string())
                    .arg(json)
                    .arg(checkpoint_ttl.as_millis() as u64)
                    .invoke_async(&mut conn),
            )
            .await?;
        Ok(released == 1)
    }

    /// `shard`'s checkpoint, if one is kept.
    pub async fn checkpoint(&self, shard: u32) -> Result<Option<Checkpoint>, StoreError> {
        let mut conn = self.conn.clone();
        let key = self.key(&format!("checkpoint:{shard}"));
        let raw: Option<String> = self
            .timed(redis::cmd("GET").arg(&key).query_async(&mut conn))
            .await?;
        raw.map(|text| opened_json(&self.seal, &format!("checkpoint:{shard}"), &text))
            .transpose()
            .map_err(StoreError::from)
    }

    /// Every shard's lease, for shards `0..count`.
    pub async fn leases(&self, count: u32) -> Result<Vec<Option<Lease>>, StoreError> {
        self.leases_of(&(0..count).collect::<Vec<_>>()).await
    }

    /// The leases of `shards`, in their order.
    pub async fn leases_of(&self, shards: &[u32]) -> Result<Vec<Option<Lease>>, StoreError> {
        if shards.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.conn.clone();
        let mut pipe = redis::pipe();
        for shard in shards {
            let key = self.key(&format!("lease:{shard}"));
            pipe.get(&key).pttl(&key);
        }
        let raw: Vec<(Option<String>, i64)> = self.timed(pipe.query_async(&mut conn)).await?;
        Ok(raw
            .into_iter()
            .map(|(value, ttl_ms)| {
                let (node, fence) = value?
                    .rsplit_once('#')
                    .map(|(n, f)| (n.to_owned(), f.to_owned()))?;
                Some(Lease {
                    node,
                    fence: fence.parse().ok()?,
                    ttl_ms,
                })
            })
            .collect())
    }

    /// The live routers, without renewing anyone's membership (for `cluster status`).
    pub async fn nodes(&self) -> Result<Vec<(NodeInfo, i64)>, StoreError> {
        let mut conn = self.conn.clone();
        let now_ms = super::now_ms() as i64;
        let members: Vec<(String, f64)> = self
            .timed(
                redis::cmd("ZRANGE")
                    .arg(self.key("nodes"))
                    .arg(0)
                    .arg(-1)
                    .arg("WITHSCORES")
                    .query_async(&mut conn),
            )
            .await?;
        let mut out = Vec::new();
        for (id, expires) in members {
            let info: Option<String> = self
                .timed(
                    redis::cmd("GET")
                        .arg(self.key(&format!("node:{id}")))
                        .query_async(&mut conn),
                )
                .await?;
            if let Some(info) = info.and_then(|i| self.node_info(&i)) {
                out.push((info, expires as i64 - now_ms));
            }
        }
        Ok(out)
    }

    /// Records the session starts Discord says are left, unless a router already did since
    /// they last reset: they then expire when Discord resets them.
    pub async fn offer_starts(
        &self,
        remaining: u32,
        reset_after: Duration,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        self.timed(
            redis::cmd("SET")
                .arg(self.key("starts"))
                .arg(remaining)
                .arg("PX")
                .arg(reset_after.as_millis().max(1) as u64)
                .arg("NX")
                .query_async::<Option<String>>(&mut conn),
        )
        .await
        .map(drop)
    }

    /// Up to `count` of the oldest records of the stream `name`, with their ids.
    async fn stream_head(
        &self,
        name: &str,
        count: usize,
    ) -> Result<Vec<(String, Entry)>, StoreError> {
        let mut conn = self.conn.clone();
        let entries: Vec<StreamEntry> = self
            .timed(
                redis::cmd("XRANGE")
                    .arg(self.key(name))
                    .arg("-")
                    .arg("+")
                    .arg("COUNT")
                    .arg(count)
                    .query_async(&mut conn),
            )
            .await?;
        Ok(entries
            .into_iter()
            .map(|(id, fields)| {
                let field = |name: &str| fields.iter().find(|(k, _)| k == name).map(|(_, v)| v);
                let record = field("record").cloned().unwrap_or_default();
                let mac = field("mac").map(|m| String::from_utf8_lossy(m).into_owned());
                let entry = match self.seal.verify(name, &record, mac.as_deref()) {
                    Ok(()) => Entry::Verified(record),
                    Err(refused) => Entry::Refused(record, refused),
                };
                (id, entry)
            })
            .collect())
    }

    /// Removes the records `ids` from the stream `name`.
    async fn stream_delete(&self, name: &str, ids: &[String]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn.clone();
        self.timed(
            redis::cmd("XDEL")
                .arg(self.key(name))
                .arg(ids)
                .query_async::<i64>(&mut conn),
        )
        .await
        .map(drop)
    }

    /// Keeps one dead letter (a JSON record) in the cluster's stream of them, unless it
    /// holds `max` already: the stream's length after (`Ok`), or at the bound (`Err`).
    pub async fn keep_dead_letter(
        &self,
        record: &str,
        max: u64,
    ) -> Result<Result<u64, u64>, StoreError> {
        let mut conn = self.conn.clone();
        let (kept, len): (i64, i64) = self
            .timed(
                self.scripts
                    .keep_bounded
                    .key(self.key("dead-letters"))
                    .arg(record)
                    .arg(self.seal.sign("dead-letters", record.as_bytes()))
                    .arg(max)
                    .invoke_async(&mut conn),
            )
            .await?;
        let len = len.max(0) as u64;
        Ok(if kept == 1 { Ok(len) } else { Err(len) })
    }

    /// Up to `count` of the oldest dead letters kept: (stream id, record).
    pub async fn dead_letters(&self, count: usize) -> Result<Vec<(String, Entry)>, StoreError> {
        self.stream_head("dead-letters", count).await
    }

    /// Forgets the dead letters `ids` (once they are written elsewhere).
    pub async fn forget_dead_letters(&self, ids: &[String]) -> Result<(), StoreError> {
        self.stream_delete("dead-letters", ids).await
    }

    /// Batches in `shard`'s spool.
    pub async fn spool_len(&self, shard: u32) -> Result<u64, StoreError> {
        let mut conn = self.conn.clone();
        self.timed(
            redis::cmd("XLEN")
                .arg(self.key(&format!("spool:{shard}")))
                .query_async(&mut conn),
        )
        .await
    }

    /// Adds a record at the end of `shard`'s spool if `node` still holds the shard under
    /// `fence`; false if not (nothing added).
    pub async fn spool_push(
        &self,
        shard: u32,
        record: &[u8],
        node: &str,
        fence: u64,
    ) -> Result<bool, StoreError> {
        let name = format!("spool:{shard}");
        let mut conn = self.conn.clone();
        let added: i64 = self
            .timed(
                self.scripts
                    .push_fenced
                    .key(self.key(&format!("lease:{shard}")))
                    .key(self.key(&name))
                    .arg(format!("{node}#{fence}"))
                    .arg(record)
                    .arg(self.seal.sign(&name, record))
                    .invoke_async(&mut conn),
            )
            .await?;
        Ok(added == 1)
    }

    /// The oldest record of `shard`'s spool and its id.
    pub async fn spool_first(&self, shard: u32) -> Result<Option<(String, Entry)>, StoreError> {
        let head = self.stream_head(&format!("spool:{shard}"), 1).await?;
        Ok(head.into_iter().next())
    }

    /// Removes the record `id` from `shard`'s spool.
    pub async fn spool_remove(&self, shard: u32, id: &str) -> Result<(), StoreError> {
        self.stream_delete(&format!("spool:{shard}"), &[id.to_owned()])
            .await
    }

    /// Asks for `bucket`'s IDENTIFY turn for `node`, held `interval` once given.
    pub async fn turn(
        &self,
        bucket: u32,
        node: &str,
        interval: Duration,
    ) -> Result<Turn, StoreError> {
        let mut conn = self.conn.clone();
        let (verdict, ms): (i64, i64) = self
            .timed(
                self.scripts
                    .turn
                    .key(self.key(&format!("identify:{bucket}")))
                    .key(self.key("starts"))
                    .arg(node)
                    .arg(interval.as_millis() as u64)
                    .invoke_async(&mut conn),
            )
            .await?;
        let after = Duration::from_millis(ms.max(1) as u64);
        Ok(match verdict {
            1 => Turn::Go,
            2 => Turn::Exhausted(after),
            _ => Turn::Wait(after),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Child, Command, Stdio};

    /// A throwaway redis-server on a free port, killed on drop.
    struct Server(Child, u16);

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn server() -> Server {
        use std::io::BufRead;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("redis-server (scripts/test installs it)");
        let out = std::io::BufReader::new(child.stdout.take().unwrap());
        for line in out.lines() {
            if line.unwrap().contains("Ready to accept connections") {
                break;
            }
        }
        Server(child, port)
    }

    fn seal() -> Seal {
        Seal::of(&crate::secret::Token::new("MTIz.test.token").unwrap())
    }

    /// A store on a fresh server (kept running while the server value lives).
    fn store() -> (Server, Store) {
        let server = server();
        let url = format!("redis://127.0.0.1:{}", server.1);
        let store = Store::new(&url, "id:1", seal(), None, Duration::from_secs(5)).unwrap();
        (server, store)
    }

    fn checkpoint(seq: u64) -> Checkpoint {
        Checkpoint {
            shard_id: 0,
            shard_count: 1,
            session_id: "s".into(),
            resume_url: "wss://x".into(),
            seq,
            bot: Some("id:1".into()),
            written_at: Some(1),
        }
    }

    #[tokio::test]
    async fn a_router_whose_lease_moved_on_cannot_write_the_checkpoint_or_give_the_lease_up() {
        let (_server, store) = store();
        let (ttl, keep) = (Duration::from_secs(30), Duration::from_secs(60));
        assert_eq!(store.acquire_many(&[0], "a", ttl).await.unwrap(), [Some(1)]);
        assert_eq!(
            store.acquire_many(&[0], "b", ttl).await.unwrap(),
            [None],
            "held"
        );
        let cp = checkpoint(10);
        assert_eq!(
            store
                .renew("a", ttl, keep, &[(0, 1, Some(&cp))])
                .await
                .unwrap(),
            [true]
        );
        // a's lease lapses (a paused router): b takes the shard under a new fence and moves on.
        let mut conn = store.conn.clone();
        let _: () = redis::cmd("DEL")
            .arg("shardhook:id:1:lease:0")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(store.acquire_many(&[0], "b", ttl).await.unwrap(), [Some(2)]);
        assert_eq!(
            store
                .renew("b", ttl, keep, &[(0, 2, Some(&checkpoint(20)))])
                .await
                .unwrap(),
            [true]
        );
        // a wakes and writes what it had: refused, and b's checkpoint stands.
        let stale = checkpoint(12);
        assert_eq!(
            store
                .renew("a", ttl, keep, &[(0, 1, Some(&stale))])
                .await
                .unwrap(),
            [false]
        );
        assert!(!store.release(0, "a", 1, Some(&stale), keep).await.unwrap());
        assert_eq!(store.checkpoint(0).await.unwrap().unwrap().seq, 20);
        // b hands over: its final checkpoint is written and the lease is free.
        assert!(store
            .release(0, "b", 2, Some(&checkpoint(21)), keep)
            .await
            .unwrap());
        assert_eq!(store.checkpoint(0).await.unwrap().unwrap().seq, 21);
        assert_eq!(store.acquire_many(&[0], "a", ttl).await.unwrap(), [Some(3)]);
    }

    #[tokio::test]
    async fn records_no_router_of_the_bot_wrote_are_refused() {
        let (_server, store) = store();
        let (ttl, keep) = (Duration::from_secs(30), Duration::from_secs(60));
        assert_eq!(
            store.acquire_many(&[0, 1], "a", ttl).await.unwrap(),
            [Some(1), Some(1)]
        );
        store
            .renew("a", ttl, keep, &[(0, 1, Some(&checkpoint(7)))])
            .await
            .unwrap();
        assert_eq!(store.checkpoint(0).await.unwrap().unwrap().seq, 7);
        let mut conn = store.conn.clone();
        let setter = store.conn.clone();
        let set = |key: &str, value: String| {
            let mut conn = setter.clone();
            let key = key.to_owned();
            async move {
                let _: () = redis::cmd("SET")
                    .arg(key)
                    .arg(value)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
            }
        };
        // A checkpoint moved from shard 0's key to shard 1's: its MAC names shard 0.
        let sealed: String = redis::cmd("GET")
            .arg("shardhook:id:1:checkpoint:0")
            .query_async(&mut conn)
            .await
            .unwrap();
        set("shardhook:id:1:checkpoint:1", sealed.clone()).await;
        assert!(matches!(
            store.checkpoint(1).await,
            Err(StoreError::Refused(Refused::Mismatch { .. }))
        ));
        // Its resume URL edited, the MAC kept.
        set(
            "shardhook:id:1:checkpoint:0",
            sealed.replace("wss://x", "ws://attacker"),
        )
        .await;
        assert!(matches!(
            store.checkpoint(0).await,
            Err(StoreError::Refused(_))
        ));
        // Plain JSON, as an earlier version (or an attacker) writes it.
        let plain = serde_json::to_string(&checkpoint(9)).unwrap();
        set("shardhook:id:1:checkpoint:0", plain).await;
        assert!(matches!(
            store.checkpoint(0).await,
            Err(StoreError::Refused(Refused::Missing { .. }))
        ));
        // A spool entry added without the MAC, after one a router wrote.
        assert!(store.spool_push(0, b"{\"a\":1}", "a", 1).await.unwrap());
        // Under another router's lease, or an old fence: nothing added.
        assert!(!store.spool_push(0, b"{\"b\":1}", "b", 1).await.unwrap());
        assert!(!store.spool_push(0, b"{\"b\":1}", "a", 0).await.unwrap());
        let _: String = redis::cmd("XADD")
            .arg("shardhook:id:1:spool:0")
            .arg("*")
            .arg("record")
            .arg("{\"forged\":1}")
            .query_async(&mut conn)
            .await
            .unwrap();
        let (first, entry) = store.spool_first(0).await.unwrap().unwrap();
        assert_eq!(entry, Entry::Verified(b"{\"a\":1}".to_vec()));
        store.spool_remove(0, &first).await.unwrap();
        let (_, entry) = store.spool_first(0).await.unwrap().unwrap();
        assert!(matches!(entry, Entry::Refused(ref raw, _) if raw == b"{\"forged\":1}"));
        // A node record written by hand drops out of the live routers.
        let me = NodeInfo {
            id: "a".into(),
            weight: 1.0,
            control: "127.0.0.1:1".into(),
            started_ms: 1,
        };
        let live = store.heartbeat(&me, ttl).await.unwrap();
        assert_eq!(live, [me]);
        set(
            "shardhook:id:1:node:a",
            r#"{"id":"a","weight":1.0,"control":"169.254.169.254:80","started_ms":1}"#.into(),
        )
        .await;
        assert!(store.nodes().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn identify_turns_are_one_per_bucket_per_interval_and_spend_the_days_starts() {
        let (_server, store) = store();
        let interval = Duration::from_secs(5);
        store
            .offer_starts(2, Duration::from_secs(3600))
            .await
            .unwrap();
        // Another router's offer after ours changes nothing: the count is the cluster's.
        store
            .offer_starts(1000, Duration::from_secs(3600))
            .await
            .unwrap();
        assert_eq!(store.turn(0, "a", interval).await.unwrap(), Turn::Go);
        assert!(matches!(
            store.turn(0, "b", interval).await.unwrap(),
            Turn::Wait(wait) if wait > Duration::from_secs(4) && wait <= interval
        ));
        assert_eq!(store.turn(1, "b", interval).await.unwrap(), Turn::Go);
        assert!(matches!(
            store.turn(2, "c", interval).await.unwrap(),
            Turn::Exhausted(reset) if reset > Duration::from_secs(3500)
        ));
    }

    #[tokio::test]
    async fn a_redis_that_never_answers_is_an_error_not_a_hang() {
        // Accepts connections (the kernel's backlog) and never says a word.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = silent.local_addr().unwrap().port();
        let store = Store::new(
            &format!("redis://127.0.0.1:{port}"),
            "id:1",
            seal(),
            None,
            Duration::from_millis(300),
        )
        .unwrap();
        let answer = store.checkpoint(0).await;
        assert!(answer.is_err(), "{answer:?}");
        drop(silent);
    }
}
