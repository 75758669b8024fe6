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

use super::store::{Entry, Store};
use super::ClusterError;
use crate::config::Config;
use crate::state::dead_letter::Mirror;

/// Dead letters kept in the cluster's stream, at most `max`.
#[derive(Debug)]
pub(super) struct RedisDeadLetters {
    pub(super) store: Store,
    pub(super) max: u64,
    /// The stream's length as last written, for `/metrics`.
    pub(super) held: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Mirror for RedisDeadLetters {
    fn keep<'a>(
        &'a self,
        record: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>> {
        Box::pin(async move {
            let kept = self
                .store
                .keep_dead_letter(record, self.max)
                .await
                .map_err(|e| e.to_string())?;
            let len = match kept {
                Ok(len) | Err(len) => len,
            };
            self.held.store(len, std::sync::atomic::Ordering::Relaxed);
            match kept {
                // Past nine tenths of the bound: said at every dead letter, before any waits.
                Ok(len) if len * 10 >= self.max * 9 => {
                    tracing::error!(
                        held = len,
                        bound = self.max,
                        "the cluster's dead-letter stream is nearly full: move them out with `shardhook cluster dead-letters --out FILE`; at cluster.dead_letters_max, shards wait rather than drop one"
                    );
                    Ok(())
                }
                Ok(_) => Ok(()),
                Err(len) => {
                    tracing::error!(
                        held = len,
                        bound = self.max,
                        "the cluster's dead-letter stream is full (cluster.dead_letters_max): this shard waits until `shardhook cluster dead-letters --out FILE` moves them out"
                    );
                    Err(format!(
                        "the cluster's dead-letter stream holds its bound of {len}"
                    ))
                }
            }
        })
    }
}

/// How many records are moved per round trip.
const BATCH: usize = 500;

/// What `export` moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exported {
    /// Dead letters written to the file for `replay`.
    pub moved: usize,
    /// Records that failed their MAC (not written by a router of this bot), written apart to
    /// `refused_path(out)` and never to the file `replay` reads.
    pub refused: usize,
}

/// Where `export` writes the records it refused.
pub fn refused_path(out: &Path) -> std::path::PathBuf {
    let mut name = out.as_os_str().to_owned();
    name.push(".refused");
    name.into()
}

/// Moves every dead letter in the cluster's stream to `out` (appended, one JSON line each, the
/// dead-letter file's format), forgetting each batch only once it is synced there. A record
/// that fails its MAC goes to `refused_path(out)` instead, so `replay` never signs and sends
/// what Redis made up.
pub async fn export(config: &Config, out: &Path) -> Result<Exported, ClusterError> {
    let (store, _) = super::open_store(config)?;
    let open = |path: &Path| {
        crate::state::files::options()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| ClusterError::File {
                path: path.to_owned(),
                source: e,
            })
    };
    let refused_out = refused_path(out);
    let mut file = open(out)?;
    let mut refused_file = None;
    let mut done = Exported {
        moved: 0,
        refused: 0,
    };
    loop {
        let batch = store.dead_letters(BATCH).await?;
        if batch.is_empty() {
            return Ok(done);
        }
        let (mut text, mut refused, mut refusals) = (Vec::new(), Vec::new(), 0);
        for (_, entry) in &batch {
            let (into, record) = match entry {
                Entry::Verified(record) => (&mut text, record),
                Entry::Refused(record, why) => {
                    tracing::error!(
                        "a dead letter in Redis was refused ({why}); it goes to {}",
                        refused_out.display()
                    );
                    refusals += 1;
                    (&mut refused, record)
                }
            };
            into.extend_from_slice(record);
            into.push(b'\n');
        }
        let write = |file: &mut std::fs::File, path: &Path, bytes: &[u8]| {
            file.write_all(bytes)
                .and_then(|()| file.sync_data())
                .map_err(|e| ClusterError::File {
                    path: path.to_owned(),
                    source: e,
                })
        };
        write(&mut file, out, &text)?;
        if !refused.is_empty() {
            if refused_file.is_none() {
                refused_file = Some(open(&refused_out)?);
            }
            let into = refused_file.as_mut().expect("just opened");
            write(into, &refused_out, &refused)?;
        }
        let ids: Vec<String> = batch.into_iter().map(|(id, _)| id).collect();
        store.forget_dead_letters(&ids).await?;
        done.refused += refusals;
        done.moved += ids.len() - refusals;
    }
}
