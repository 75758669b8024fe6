//! The double's event payloads: READY, GUILD_CREATE and the steady traffic, shaped like
//! Discord's (v10) so handlers written against the double work against Discord.
//!
//! Owns only building JSON text; when and to whom it is sent is `connection`'s business.

use serde_json::json;

/// Discord's epoch (2015-01-01) in Unix milliseconds, for snowflakes.
const DISCORD_EPOCH_MS: u64 = 1_420_070_400_000;
/// A fixed "now" for generated snowflakes, so runs are reproducible.
const BASE_MS: u64 = 1_790_000_000_000 - DISCORD_EPOCH_MS;

/// The id of the double's bot user and application.
pub const APPLICATION_ID: u64 = 1_100_000_000_000_000_001;

/// A snowflake whose shard, for `total` shards, is `(n % total)`'s owner by Discord's rule
/// `(id >> 22) % total`. Used for guild ids so each shard owns a known set.
pub fn guild_id(n: u64) -> u64 {
    (BASE_MS + n) << 22
}

/// The guilds `guild_id(0..guilds)` that shard `shard` of `total` owns, in order: every
/// `total`-th, from the first `n` with `(BASE_MS + n) % total == shard` (no scan of them all).
pub fn guilds_of(shard: u32, total: u32, guilds: u64) -> impl Iterator<Item = u64> {
    let total = u64::from(total.max(1));
    let first = (u64::from(shard) + total - BASE_MS % total) % total;
    (first..guilds).step_by(total as usize).map(guild_id)
}

/// The shard Discord routes a guild to.
pub fn shard_of(guild_id: u64, total: u32) -> u32 {
    ((guild_id >> 22) % total as u64) as u32
}

/// A unique snowflake for messages and channels.
pub fn snowflake(counter: u64) -> u64 {
    ((BASE_MS + 1_000_000) << 22) | (counter & 0x3f_ffff)
}

/// Wraps `d` in a dispatch envelope, keys in Discord's order.
pub fn dispatch(name: &str, seq: u64, d: &str) -> String {
    format!(r#"{{"t":"{name}","s":{seq},"op":0,"d":{d}}}"#)
}

/// READY for a new session on `shard`, listing `guilds` as unavailable (GUILD_CREATE follows).
pub fn ready(session_id: &str, resume_url: &str, shard: [u32; 2], guilds: &[u64]) -> String {
    let guilds: Vec<_> = guilds
        .iter()
        .map(|id| json!({"id": id.to_string(), "unavailable": true}))
        .collect();
    json!({
        "v": 10,
        "user": {"id": APPLICATION_ID.to_string(), "username": "shardhook-sim", "discriminator": "0", "bot": true, "global_name": null, "avatar": null},
        "guilds": guilds,
        "session_id": session_id,
        "resume_gateway_url": resume_url,
        "shard": shard,
        "application": {"id": APPLICATION_ID.to_string(), "flags": 0},
        "private_channels": [],
        "_trace": ["shardhook-simulator"],
    })
    .to_string()
}

/// GUILD_CREATE for one guild with a `general` text channel.
pub fn guild_create(guild_id: u64) -> String {
    json!({
        "id": guild_id.to_string(),
        "name": format!("Simulated guild {guild_id}"),
        "owner_id": "1100000000000000002",
        "member_count": 3,
        "large": false,
        "unavailable": false,
        "channels": [{"id": (guild_id + 1).to_string(), "type": 0, "name": "general", "guild_id": guild_id.to_string()}],
        "roles": [],
        "members": [],
        "voice_states": [],
        "presences": [],
        "threads": [],
        "joined_at": "2026-01-01T00:00:00.000000+00:00",
    })
    .to_string()
}

/// A MESSAGE_CREATE from a user in `guild_id`'s first channel.
pub fn message_create(counter: u64, guild_id: u64, content: &str) -> String {
    json!({
        "id": snowflake(counter).to_string(),
        "type": 0,
        "channel_id": (guild_id + 1).to_string(),
        "guild_id": guild_id.to_string(),
        "author": {"id": "1100000000000000003", "username": "simulated-user", "discriminator": "0", "global_name": "Simulated User", "avatar": null},
        "member": {"roles": [], "joined_at": "2026-01-01T00:00:00.000000+00:00", "deaf": false, "mute": false, "flags": 0},
        "content": content,
        "timestamp": "2026-11-22T00:00:00.000000+00:00",
        "edited_timestamp": null,
        "tts": false,
        "mention_everyone": false,
        "mentions": [],
        "mention_roles": [],
        "attachments": [],
        "embeds": [],
        "pinned": false,
        "flags": 0,
        "nonce": counter.to_string(),
    })
    .to_string()
}

/// A dispatch whose `d` is padded to about `size` bytes, for the oversize fault.
pub fn padded(size: usize) -> String {
    json!({"padding": "x".repeat(size)}).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shards_guilds_are_those_discords_rule_gives_it() {
        for total in [1, 2, 3, 4, 7] {
            for shard in 0..total {
                let scanned: Vec<u64> = (0..50)
                    .map(guild_id)
                    .filter(|g| shard_of(*g, total) == shard)
                    .collect();
                assert_eq!(guilds_of(shard, total, 50).collect::<Vec<_>>(), scanned);
            }
        }
    }

    #[test]
    fn guild_ids_land_on_the_shard_discord_would_pick() {
        for n in 0..20u64 {
            assert_eq!(shard_of(guild_id(n), 4), ((BASE_MS + n) % 4) as u32);
        }
    }

    #[test]
    fn payloads_are_json() {
        let d = message_create(7, guild_id(1), "!ping");
        let v: serde_json::Value =
            serde_json::from_str(&dispatch("MESSAGE_CREATE", 3, &d)).unwrap();
        assert_eq!(v["d"]["content"], "!ping");
        assert_eq!(v["s"], 3);
        let v: serde_json::Value =
            serde_json::from_str(&ready("s", "ws://x", [0, 1], &[1])).unwrap();
        assert_eq!(v["session_id"], "s");
    }
}
