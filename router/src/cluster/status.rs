//! `shardhook cluster status`: the cluster as Redis holds it, for humans.
//!
//! Owns the report's layout; the reads are `store`'s. Nothing is written.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::ClusterError;
use crate::config::Config;

/// The report for the bot `config` names: routers with their shards, then every shard's
/// lease and checkpoint. `shard_count` is how many shards to list.
pub async fn report(config: &Config, shard_count: u32) -> Result<String, ClusterError> {
    let settings = config.cluster.as_ref().ok_or(ClusterError::NotConfigured)?;
    let (store, bot) = super::open_store(config)?;
    let nodes = store.nodes().await?;
    let leases = store.leases(shard_count).await?;
    let mut per_node: BTreeMap<&str, usize> = BTreeMap::new();
    for lease in leases.iter().flatten() {
        *per_node.entry(lease.node.as_str()).or_default() += 1;
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "cluster of bot {bot} on {}",
        crate::secret::redact_url(&settings.redis_url)
    );
    let _ = writeln!(out, "\nnodes ({}):", nodes.len());
    let now_ms = super::now_ms();
    for (node, expires_ms) in &nodes {
        let _ = writeln!(
            out,
            "  {:<24} control {:<21} weight {:<4} shards {:<5} up {:>6} s  membership expires in {} ms",
            node.id,
            node.control,
            node.weight,
            per_node.get(node.id.as_str()).copied().unwrap_or(0),
            now_ms.saturating_sub(node.started_ms) / 1000,
            expires_ms
        );
    }
    let _ = writeln!(out, "\nshards ({shard_count}):");
    for (shard, lease) in leases.iter().enumerate() {
        let checkpoint = store.checkpoint(shard as u32).await?;
        let held = match lease {
            Some(l) => format!(
                "{} (fence {}, lease expires in {} ms)",
                l.node, l.fence, l.ttl_ms
            ),
            None => "nobody".to_owned(),
        };
        let resume = match &checkpoint {
            Some(cp) => format!(
                "checkpoint seq {} of session {} ({} s old)",
                cp.seq,
                cp.session_id,
                cp.written_at
                    .map_or(0, |at| crate::delivery::signer::unix_now()
                        .saturating_sub(at))
            ),
            None => "no checkpoint".to_owned(),
        };
        let _ = writeln!(out, "  {shard:>5}  held by {held}; {resume}");
    }
    Ok(out)
}
