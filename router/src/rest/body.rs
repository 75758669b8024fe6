//! A request body on its way through the proxy. The signature covers the body, so nothing may
//! go to Discord before the last byte has arrived and been checked; an upload of 8 MiB or more
//! must still not be held whole in memory. So the body is read as it arrives, within
//! `rest.max_body`, each part shown to the caller's check as it comes; a small one is kept in
//! memory, a larger one written to a file under the state directory that is unlinked as soon as
//! it is opened, and sent on from there as a stream of known length.
//!
//! Owns the body's bytes between the caller and Discord. Whether they are signed is the control
//! API's to decide (it sees each part through `receive`'s `observe`); sending is `proxy`'s.

use std::io::{self, SeekFrom};
use std::path::{Path, PathBuf};

use axum::body::Bytes;
use bytes::BytesMut;
use futures_util::StreamExt;
use http_body_util::StreamBody;
use hyper::body::Frame;
use tokio::fs::File;
use tokio::io::{AsyncSeekExt, AsyncWriteExt};
use tokio_util::io::ReaderStream;

use crate::state::files;

/// Bodies up to this size stay in memory (JSON bodies, small attachments); larger ones go to a
/// file.
pub const IN_MEMORY: usize = 64 * 1024;

/// The most held in memory at once for a body in a file: each write to it and each read back.
const CHUNK: usize = 64 * 1024;

/// The directory under the state directory that holds bodies on their way (each file unlinked
/// as soon as it is open, so it is normally empty).
const DIR: &str = "rest-bodies";

/// A received body, ready to be sent on.
#[derive(Debug)]
pub enum Spooled {
    /// Up to `IN_MEMORY` bytes.
    Memory(Bytes),
    /// Written to an unlinked file, positioned at its start.
    File {
        /// The open file, which nothing else can reach.
        file: File,
        /// Its length in bytes.
        len: u64,
    },
}

/// Why a body could not be received.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BodyError {
    /// Past `rest.max_body`.
    #[error("the body is larger than rest.max_body ({0} bytes)")]
    TooLarge(usize),
    /// The caller's connection failed mid-body.
    #[error("the body broke off: {0}")]
    BrokeOff(#[source] axum::Error),
    /// The file to hold it could not be made or written.
    #[error("failed to hold the body in {}: {source}", .dir.display())]
    Spool {
        /// Where the file was to be.
        dir: PathBuf,
        /// What failed.
        #[source]
        source: io::Error,
    },
}

impl Spooled {
    /// The body as reqwest sends it: in memory as it is, from a file a `CHUNK` at a time (its
    /// length is `len`, for `Content-Length`).
    pub fn into_request_body(self) -> reqwest::Body {
        match self {
            Spooled::Memory(bytes) => bytes.into(),
            Spooled::File { file, .. } => {
                let frames = ReaderStream::with_capacity(file, CHUNK).map(|r| r.map(Frame::data));
                reqwest::Body::wrap(StreamBody::new(frames))
            }
        }
    }
}

/// Reads `body` as it arrives, at most `max` bytes, showing each part to `observe` before it
/// is kept; past `IN_MEMORY` it goes to a file under `state_dir`.
pub async fn receive(
    body: axum::body::Body,
    max: usize,
    state_dir: &Path,
    mut observe: impl FnMut(&[u8]),
) -> Result<Spooled, BodyError> {
    let dir = state_dir.join(DIR);
    let spool = |source| BodyError::Spool {
        dir: dir.clone(),
        source,
    };
    let mut parts = body.into_data_stream();
    let mut memory = BytesMut::new();
    let mut file: Option<File> = None;
    let mut len = 0usize;
    while let Some(part) = parts.next().await {
        let part = part.map_err(BodyError::BrokeOff)?;
        len += part.len();
        if len > max {
            return Err(BodyError::TooLarge(max));
        }
        observe(&part);
        if let Some(file) = &mut file {
            file.write_all(&part).await.map_err(spool)?;
        } else if len <= IN_MEMORY {
            memory.extend_from_slice(&part);
        } else {
            let mut opened = open_unlinked(&dir).await.map_err(spool)?;
            opened.write_all(&memory).await.map_err(spool)?;
            opened.write_all(&part).await.map_err(spool)?;
            memory = BytesMut::new();
            file = Some(opened);
        }
    }
    let Some(mut file) = file else {
        return Ok(Spooled::Memory(memory.freeze()));
    };
    file.flush().await.map_err(spool)?;
    file.seek(SeekFrom::Start(0)).await.map_err(spool)?;
    Ok(Spooled::File {
        file,
        len: len as u64,
    })
}

/// A new file in `dir` (made 0700 if missing), open for reading and writing, 0600, and
/// already unlinked: only this open file reaches its bytes, and they go when it is closed.
async fn open_unlinked(dir: &Path) -> io::Result<File> {
    let dir = dir.to_owned();
    let file = tokio::task::spawn_blocking(move || {
        files::create_dir(&dir)?;
        let name = format!("body-{}-{:016x}.tmp", std::process::id(), fastrand::u64(..));
        let path = dir.join(name);
        let file = files::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        // Left behind only if the process dies between these two calls.
        std::fs::remove_file(&path)?;
        Ok::<_, io::Error>(file)
    })
    .await
    .map_err(io::Error::other)??;
    let mut file = File::from_std(file);
    file.set_max_buf_size(CHUNK);
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunked(parts: Vec<Vec<u8>>) -> axum::body::Body {
        let stream = futures_util::stream::iter(
            parts
                .into_iter()
                .map(|p| Ok::<_, io::Error>(Bytes::from(p))),
        );
        axum::body::Body::from_stream(stream)
    }

    async fn collect(spooled: Spooled) -> Vec<u8> {
        let body = spooled.into_request_body();
        let collected = http_body_util::BodyExt::collect(body).await.unwrap();
        collected.to_bytes().to_vec()
    }

    #[tokio::test]
    async fn a_small_body_stays_in_memory_and_a_large_one_goes_to_an_unlinked_file() {
        let dir = std::env::temp_dir().join(format!("shardhook-body-{}", fastrand::u64(..)));
        let mut seen = Vec::new();
        let small = receive(
            chunked(vec![b"ab".to_vec(), b"c".to_vec()]),
            100,
            &dir,
            |p| seen.extend_from_slice(p),
        )
        .await
        .unwrap();
        assert!(matches!(&small, Spooled::Memory(b) if b == "abc"));
        assert_eq!(seen, b"abc");

        let mut rng = fastrand::Rng::with_seed(7);
        let whole: Vec<u8> = (0..IN_MEMORY * 3 + 5).map(|_| rng.u8(..)).collect();
        let parts: Vec<Vec<u8>> = whole.chunks(10_000).map(<[u8]>::to_vec).collect();
        let mut seen = Vec::new();
        let large = receive(chunked(parts), whole.len(), &dir, |p| {
            seen.extend_from_slice(p)
        })
        .await
        .unwrap();
        assert!(matches!(large, Spooled::File { len, .. } if len == whole.len() as u64));
        assert_eq!(seen, whole, "every part was shown, in order");
        let names: Vec<_> = std::fs::read_dir(dir.join(DIR)).unwrap().collect();
        assert!(names.is_empty(), "the file has no name: {names:?}");
        assert_eq!(collect(large).await, whole);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_body_past_the_limit_is_refused_before_the_part_that_crosses_it_is_shown() {
        let dir = std::env::temp_dir().join(format!("shardhook-body-{}", fastrand::u64(..)));
        let mut shown = 0;
        let refused = receive(chunked(vec![vec![0; 60], vec![0; 60]]), 100, &dir, |p| {
            shown += p.len()
        })
        .await
        .unwrap_err();
        assert!(matches!(refused, BodyError::TooLarge(100)), "{refused}");
        assert_eq!(
            refused.to_string(),
            "the body is larger than rest.max_body (100 bytes)"
        );
        assert_eq!(shown, 60);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn an_empty_body_is_an_empty_body_in_memory_and_no_file_is_made() {
        let missing = Path::new("/nonexistent/shardhook");
        let spooled = receive(axum::body::Body::empty(), 10, missing, |_| {})
            .await
            .unwrap();
        assert!(matches!(&spooled, Spooled::Memory(b) if b.is_empty()));
    }
}
