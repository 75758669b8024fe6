//! Dead letters in a cluster: each one kept in a Redis stream as well as in the router's file,
//! so a dead machine takes none with it, and moved from the stream to a file for
//! `shardhook replay` by `shardhook cluster dead-letters`.
//!
//! Owns the mirror the dead-letter file writes through and the move to a file; the record's
//! format is `state::dead_letter`'s, the stream `store`'s.

use std::future::Future;
use std::io::Write;
use std::path::Path;
use std::pin::Pin;

use super::store::Store;
use super::ClusterError;
use crate::config::Config;
use crate::state::dead_letter::Mirror;

/// Dead letters kept in the cluster's stream.
#[derive(Debug)]
pub(super) struct RedisDeadLetters {
    pub(super) store: Store,
}

impl Mirror for RedisDeadLetters {
    fn keep<'a>(
        &'a self,
        record: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>> {
        Box::pin(async move {
            self.store
                .keep_dead_letter(record)
                .await
                .map_err(|e| e.to_string())
        })
    }
}

/// How many records are moved per round trip.
const BATCH: usize = 500;

/// Moves every dead letter in the cluster's stream to `out` (appended, one JSON line each, the
/// dead-letter file's format), forgetting each batch only once it is synced there. Returns how
/// many moved.
pub async fn export(config: &Config, out: &Path) -> Result<usize, ClusterError> {
    let settings = config.cluster.as_ref().ok_or(ClusterError::NotConfigured)?;
    let store = Store::new(
        &settings.redis_url,
        &config.token()?.bot(),
        settings.redis_timeout,
    )?;
    let file_error = |e: std::io::Error| ClusterError::File {
        path: out.to_owned(),
        source: e,
    };
    let mut file = crate::state::files::options()
        .create(true)
        .append(true)
        .open(out)
        .map_err(file_error)?;
    let mut moved = 0;
    loop {
        let batch = store.dead_letters(BATCH).await?;
        if batch.is_empty() {
            return Ok(moved);
        }
        let mut text = String::new();
        for (_, record) in &batch {
            text.push_str(record);
            text.push('\n');
        }
        file.write_all(text.as_bytes()).map_err(file_error)?;
        file.sync_data().map_err(file_error)?;
        let ids: Vec<String> = batch.into_iter().map(|(id, _)| id).collect();
        store.forget_dead_letters(&ids).await?;
        moved += ids.len();
    }
}
