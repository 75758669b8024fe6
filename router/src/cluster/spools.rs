//! Spools in a cluster: each shard's batches that no endpoint could take yet, kept in a Redis
//! stream rather than on the machine's disk, so they count as safe and outlive the machine,
//! and drained by whichever router holds the shard.
//!
//! Owns the bridge from delivery's `RemoteSpool` to `store`'s stream calls; when to spool and
//! drain is delivery's.

use super::store::{Entry, Store};
use crate::state::spool::{Answer, Checked, RemoteSpool};

/// Shards' spools in the cluster's Redis.
pub(super) struct RedisSpools {
    pub(super) store: Store,
}

impl RemoteSpool for RedisSpools {
    fn len(&self, shard: u32) -> Answer<'_, u64> {
        Box::pin(async move { self.store.spool_len(shard).await.map_err(|e| e.to_string()) })
    }

    fn push(&self, shard: u32, record: Vec<u8>) -> Answer<'_, ()> {
        Box::pin(async move {
            self.store
                .spool_push(shard, &record)
                .await
                .map_err(|e| e.to_string())
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
