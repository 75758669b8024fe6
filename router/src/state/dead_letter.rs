//! Dead letters: batches delivery gave up on, kept as JSON lines so nothing is lost silently
//! and `shardhook replay` can send them again.
//!
//! Owns the file format (one object per line: when, webhook id, endpoint, status, error,
//! attempts, shard, and the body itself as JSON) and appending to it. Each record is written
//! with one `write_all` and synced, since dead letters are rare and each one matters. In a
//! cluster each record is also kept in a `Mirror` that outlives the machine (Redis), and counts
//! as kept only once it is there.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::config::EndpointFormat;
use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;

/// The dead-letter file's name in `state.dir`.
pub const FILE_NAME: &str = "dead-letters.jsonl";

/// One dead-lettered batch.
#[derive(Debug, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Unix seconds when it was set aside.
    pub at: u64,
    /// The batch's `webhook-id`, stable across its attempts and a replay.
    pub webhook_id: String,
    /// The shard whose events it holds.
    pub shard_id: u32,
    /// The endpoint's name: what `replay` and a person go by.
    pub endpoint: String,
    /// The endpoint's URL when it was given up, without userinfo or query (they may hold
    /// credentials).
    pub url: String,
    /// The last HTTP status, if the endpoint answered at all.
    pub status: Option<u16>,
    /// Why it was given up, in words.
    pub error: String,
    /// Attempts made.
    pub attempts: u32,
    /// The request body, as sent.
    pub body: Box<RawValue>,
    /// The body's format, `"carbon"` for a Carbon endpoint's request (absent: shardhook's);
    /// `replay` sends it only to endpoints of that format.
    #[serde(default, skip_serializing_if = "EndpointFormat::is_shardhook")]
    pub format: EndpointFormat,
}

/// Why a dead letter could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    #[error("failed to write dead letter to {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("failed to read dead letters from {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} line {line}: not a dead letter: {source}")]
    Parse {
        path: PathBuf,
        line: usize,
        source: serde_json::Error,
    },
}

/// Somewhere beside the file that outlives this machine (a cluster's Redis), where every dead
/// letter is kept too.
pub trait Mirror: Send + Sync + std::fmt::Debug {
    /// Keeps one record (a JSON line without its line feed); an error says why not.
    fn keep<'a>(
        &'a self,
        record: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + 'a>>;
}

/// How long to wait before trying a mirror that failed again.
const MIRROR_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// The append-only dead-letter file.
#[derive(Debug)]
pub struct DeadLetters {
    path: PathBuf,
    file: Mutex<Option<tokio::fs::File>>,
    /// Where each record is also kept, in a cluster.
    mirror: Option<std::sync::Arc<dyn Mirror>>,
}

impl DeadLetters {
    /// The file under `dir`, each record also kept in `mirror` when given.
    pub fn new(dir: &Path, mirror: Option<std::sync::Arc<dyn Mirror>>) -> DeadLetters {
        DeadLetters {
            path: dir.join(FILE_NAME),
            file: Mutex::new(None),
            mirror,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one record and syncs it to disk; with a mirror, also keeps it there, trying
    /// until it is kept (the batch is not safe before: this is backpressure on its shard).
    pub async fn append(&self, letter: &DeadLetter) -> Result<(), DeadLetterError> {
        let mut line = serde_json::to_vec(letter).expect("dead letters serialise");
        let written = self.write(&line).await;
        if let Some(mirror) = &self.mirror {
            let record = String::from_utf8(std::mem::take(&mut line)).expect("JSON is UTF-8");
            while let Err(e) = mirror.keep(&record).await {
                tracing::warn!(
                    webhook_id = %letter.webhook_id,
                    "could not keep a dead letter beyond this machine: {e}; trying again"
                );
                tokio::time::sleep(MIRROR_RETRY).await;
            }
        }
        written
    }

    async fn write(&self, record: &[u8]) -> Result<(), DeadLetterError> {
        let write_error = |source| DeadLetterError::Write {
            path: self.path.clone(),
            source,
        };
        let mut line = Vec::with_capacity(record.len() + 1);
        line.extend_from_slice(record);
        line.push(b'\n');
        let mut file = self.file.lock().await;
        if file.is_none() {
            if let Some(dir) = self.path.parent() {
                super::files::create_dir(dir).map_err(write_error)?;
            }
            let opened = super::files::options()
                .create(true)
                .append(true)
                .open(&self.path)
                .map_err(write_error)?;
            *file = Some(tokio::fs::File::from_std(opened));
        }
        let f = file.as_mut().expect("opened above");
        f.write_all(&line).await.map_err(write_error)?;
        f.sync_data().await.map_err(write_error)
    }
}

/// Reads a dead-letter file; a bad line is an error naming the file and line.
pub fn read(path: &Path) -> Result<Vec<DeadLetter>, DeadLetterError> {
    let text = std::fs::read_to_string(path).map_err(|source| DeadLetterError::Read {
        path: path.to_owned(),
        source,
    })?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|source| DeadLetterError::Parse {
                path: path.to_owned(),
                line: i + 1,
                source,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn records_round_trip_with_the_body_as_json() {
        let dir = std::env::temp_dir().join(format!("shardhook-dl-{}", std::process::id()));
        let letters = DeadLetters::new(&dir, None);
        let body = RawValue::from_string(r#"{"v":1,"events":[]}"#.to_owned()).unwrap();
        let letter = DeadLetter {
            at: 1,
            webhook_id: "msg_1".into(),
            shard_id: 2,
            endpoint: "a".into(),
            url: "http://127.0.0.1:1/".into(),
            status: Some(400),
            error: "400 Bad Request".into(),
            attempts: 1,
            body,
            format: EndpointFormat::Shardhook,
        };
        letters.append(&letter).await.unwrap();
        letters.append(&letter).await.unwrap();
        #[cfg(unix)]
        {
            use crate::state::files::mode_of;
            assert_eq!(mode_of(&dir).unwrap(), 0o700);
            assert_eq!(mode_of(letters.path()).unwrap(), 0o600);
        }
        let back = read(letters.path()).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(back[1].body.get(), r#"{"v":1,"events":[]}"#);
        std::fs::write(letters.path(), "not json\n").unwrap();
        let err = read(letters.path()).unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
