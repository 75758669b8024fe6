//! How the double behaves (`SimConfig`) and the numbers of Discord's rules it enforces.
//!
//! Owns only settings and constants; the connections that apply them are `connection`'s, the
//! REST routes `rest`'s.

use std::time::Duration;

/// How the double behaves. `Default` is a small, Discord-like bot.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// The bot token it accepts (`Authorization: Bot ...` and IDENTIFY/RESUME).
    pub token: String,
    /// The shard count `GET /gateway/bot` recommends at least (more once the guilds need
    /// more: `guilds_per_shard`); IDENTIFY with fewer gets close 4011.
    pub shards: u32,
    /// Guilds in all at the start (`Simulator::add_guilds` adds more), spread over shards by
    /// Discord's rule `(guild_id >> 22) % total`.
    pub guilds: u32,
    /// Most guilds a shard may hold: IDENTIFY for a shard over it gets close 4011 ("sharding
    /// required"). Discord's: 2,500.
    pub guild_cap: u32,
    /// Guilds per shard `GET /gateway/bot` recommends: it asks for `guilds / guilds_per_shard`
    /// shards (rounded up) once that is more than `shards`. Discord's: about 1,000.
    pub guilds_per_shard: u32,
    /// Traffic dispatches per second on each identified connection (0 for none), below one
    /// too (0.2 is one every 5 s).
    pub rate: f64,
    /// Shards `0..hot_shards` carry `hot_rate` instead of `rate`: busy guilds crowd on a few
    /// shards of a real bot.
    pub hot_shards: u32,
    /// The traffic rate of the hot shards.
    pub hot_rate: f64,
    /// Traffic at random (exponential gaps of the rate's mean), as real guilds send it, instead
    /// of on a beat.
    pub poisson: bool,
    /// Stop traffic on a shard after this many traffic events across its sessions.
    pub events_per_shard: Option<u64>,
    /// `session_start_limit.max_concurrency`.
    pub max_concurrency: u32,
    /// `session_start_limit.total` and the starting `remaining`.
    pub session_start_limit: u32,
    /// The heartbeat interval sent in HELLO.
    pub heartbeat_interval: Duration,
    /// How long a disconnected session can still be resumed.
    pub resume_window: Duration,
    /// Intents refused with close 4014 (privileged intents not enabled for the bot).
    pub disallowed_intents: u64,
    /// Every n-th MESSAGE_CREATE has content `!ping` (0 for never).
    pub ping_every: u64,
    /// The first this many connections never get HELLO: a gateway that accepts the
    /// WebSocket, then stalls.
    pub withhold_hello: u64,
    /// Requests per `rest_route_window` each REST bucket allows, per major parameter (channel,
    /// guild, webhook and token). Discord's create-message bucket: 5 per 5 s a channel.
    pub rest_route_limit: u32,
    /// The window of `rest_route_limit`, opened by a bucket's first request.
    pub rest_route_window: Duration,
    /// Globally limited REST requests a second (Discord: 50). Interaction callbacks and
    /// webhook-token routes are exempt.
    pub rest_global_limit: u32,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            token: DEFAULT_TOKEN.to_owned(),
            shards: 1,
            guilds: 2,
            guild_cap: 2500,
            guilds_per_shard: 1000,
            rate: 10.0,
            hot_shards: 0,
            hot_rate: 0.0,
            poisson: false,
            events_per_shard: None,
            max_concurrency: 1,
            session_start_limit: 1000,
            heartbeat_interval: Duration::from_millis(41_250),
            resume_window: Duration::from_secs(120),
            disallowed_intents: 0,
            ping_every: 5,
            withhold_hello: 0,
            rest_route_limit: 5,
            rest_route_window: Duration::from_secs(5),
            rest_global_limit: 50,
        }
    }
}

/// The token `shardhook simulate` accepts unless told otherwise.
pub const DEFAULT_TOKEN: &str = "shardhook-simulated-token";

/// Discord's identify spacing per bucket.
pub const IDENTIFY_INTERVAL: Duration = Duration::from_secs(5);
/// Slack allowed on the identify spacing for scheduling jitter between sender and receiver.
pub const IDENTIFY_TOLERANCE: Duration = Duration::from_millis(100);
/// Payloads a client may send per connection per window.
pub const SEND_LIMIT: usize = 120;
/// Sends per connection are counted over this window (Discord: 120 per 60 s).
pub const SEND_WINDOW: Duration = Duration::from_secs(60);
/// Largest payload a client may send.
pub const MAX_CLIENT_PAYLOAD: usize = 4096;
/// Largest REST request body the double reads (Discord's upload limit for boosted guilds is
/// higher; this leaves room for the tests' uploads).
pub(crate) const MAX_REST_BODY: usize = 32 * 1024 * 1024;
/// Events kept per session for replay on RESUME; older ones make a resume fail like Discord's.
pub(crate) const REPLAY_BUFFER: usize = 20_000;
