//! Dead letters: batches delivery gave up on, kept as JSON lines so nothing is lost silently
//! and `shardhook replay` can send them again.
//!
//! Owns the file format (one object per line: when, webhook id, endpoint, status, error,
//! attempts, shard, and the body itself as JSON) and appending to it. Each record is written
//! with one `write_all` and synced, since dead letters are rare and each one matters.

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

/// The append-only dead-letter file.
#[derive(Debug)]
pub struct DeadLetters {
    path: PathBuf,
    file: Mutex<Option<tokio::fs::File>>,
}

impl DeadLetters {
    pub fn new(dir: &Path) -> DeadLetters {
        DeadLetters {
            path: dir.join(FILE_NAME),
            file: Mutex::new(None),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one record and syncs it to disk.
    pub async fn append(&self, letter: &DeadLetter) -> Result<(), DeadLetterError> {
        let write_error = |source| DeadLetterError::Write {
            path: self.path.clone(),
            source,
        };
        let mut line = serde_json::to_vec(letter).expect("dead letters serialise");
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
        let letters = DeadLetters::new(&dir);
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
