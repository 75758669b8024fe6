//! Spools in a cluster: each shard's batches that no endpoint could take yet, kept in a Redis
//! stream rather than on the machine's disk, so they count as safe and outlive the machine,
//! and drained by whichever router holds the shard.
//!
//! Owns the bridge from delivery's `RemoteSpool` to `store`'s stream calls, fenced: a batch is
//! added only while this router's lease and fencing token are the shard's, so a router paused
//! past its lease cannot add to the new holder's spool. When to spool and drain is delivery's.

use super::store::{Entry, Store};
use crate::state::spool::{Answer, Checked, Pushed, RemoteSpool};

/// Shards' spools in the cluster's Redis, written only under this router's lease and fence.
pub(super) struct RedisSpools {
    pub(super) store: Store,
    pub(super) node: String,
    /// Which shards this router holds, under which fence.
    pub(super) view: std::sync::Arc<super::View>,
}

impl RemoteSpool for RedisSpools {
    fn len(&self, shard: u32) -> Answer<'_, u64> {
        Box::pin(async move { self.store.spool_len(shard).await.map_err(|e| e.to_string()) })
    }

    fn push(&self, shard: u32, record: Vec<u8>) -> Answer<'_, Pushed> {
        Box::pin(async move {
            let Some(fence) = self.view.fence(shard) else {
                return Ok(Pushed::NotHeld);
            };
            let added = self
                .store
                .spool_push(shard, &record, &self.node, fence)
                .await
                .map_err(|e| e.to_string())?;
            Ok(if added {
                Pushed::Added
            } else {
                Pushed::NotHeld
            })
        })
    }

    fn first(&self, shard: u32) -> Answer<'_, Option<(String, Checked)>> {
        Box::pin(async move {
            let first = self
                .store
                .spool_first(shard)
                .await
                .map_err(|e| e.to_string())?;
            Ok(first.map(|(id, entry)| match entry {
                Entry::Verified(record) => (id, Ok(record)),
                Entry::Refused(record, why) => {
                    tracing::error!(
                        shard_id = shard,
                        "a spooled batch in Redis was refused ({why}): it is not sent, its raw bytes go to the dead-letter file"
                    );
                    (id, Err(record))
                }
            }))
        })
    }

    fn remove(&self, shard: u32, id: String) -> Answer<'_, ()> {
        Box::pin(async move {
            self.store
                .spool_remove(shard, &id)
                .await
                .map_err(|e| e.to_string())
        })
    }
}
