//! The AWS credentials that `auth = "aws-iam"` endpoints sign with, kept fresh.
//!
//! Owns the cache and its refresher: one task per process fetches credentials from a
//! [`Source`] (the standard chain, `aws_chain`), keeps them where each attempt reads them with a
//! lock-free borrow of a `watch` channel, fetches again ahead of their expiry, and again at once
//! when a watched credentials file changes. A failed refresh keeps the credentials it had until
//! they expire. It leaves where credentials come from to `aws_chain`, signing to `sigv4`, and
//! what an attempt without credentials becomes to `attempt` (a retryable failure).
//!
//! Nothing here logs a key id, a secret or a session token: only the source's name and the
//! expiry.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{error, info, warn};

use super::sigv4::Credentials;

/// Credentials with less than this left are fetched again (in the background; attempts go on
/// signing with them until they expire). The AWS SDKs refresh about as early; instance-profile
/// and container credentials are replaced about this long before they expire.
const REFRESH_AHEAD: Duration = Duration::from_secs(5 * 60);
/// The first wait after a failed fetch, or after one that brought credentials already inside
/// [`REFRESH_AHEAD`]; it doubles each time it happens again in a row, up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_secs(1);
/// The longest wait between fetches while they fail.
const MAX_RETRY: Duration = Duration::from_secs(60);
/// How often watched credentials files are looked at for a change.
const FILE_POLL: Duration = Duration::from_secs(1);

/// Credentials as a source gave them.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub credentials: Credentials,
    /// When they stop working; `None` for long-term keys.
    pub expires: Option<SystemTime>,
    /// Which link of the chain gave them, for logs ("environment", "profile file", ...).
    pub source: &'static str,
}

/// Why no source gave credentials. Its text must never hold a secret.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct FetchError(pub String);

/// A fetch of credentials, as a boxed future.
pub type Fetch = Pin<Box<dyn Future<Output = Result<Fetched, FetchError>> + Send>>;

/// Where credentials come from.
pub trait Source: Send + Sync + 'static {
    /// Fetches credentials anew, from the first link of the chain that has some.
    fn fetch(&self) -> Fetch;
    /// Files whose change means credentials should be fetched again at once (the shared
    /// credentials and config files).
    fn watched_files(&self) -> Vec<PathBuf>;
}

/// An attempt found no credentials to sign with: none were ever fetched, or the last expired
/// and no refresh has replaced them. Retryable: the batch waits (retries, then the spool).
#[derive(Debug, Clone, thiserror::Error)]
#[error("no AWS credentials to sign with: {reason}")]
pub struct NoCredentials {
    reason: Arc<str>,
}

/// What attempts read.
#[derive(Debug, Clone, Default)]
struct State {
    current: Option<Arc<Fetched>>,
    /// The first fetch has ended, well or not.
    tried: bool,
    /// What the last failed fetch said, if the last fetch failed.
    error: Option<Arc<str>>,
}

impl State {
    fn usable(&self, now: SystemTime) -> Option<Arc<Fetched>> {
        self.current
            .as_ref()
            .filter(|c| c.expires.is_none_or(|at| at > now))
            .cloned()
    }

    fn missing(&self) -> NoCredentials {
        let reason: Arc<str> = match (&self.current, &self.error) {
            (Some(_), Some(e)) => format!("they expired and refreshing failed: {e}").into(),
            (Some(_), None) => "they expired before a refresh replaced them".into(),
            (None, Some(e)) => e.clone(),
            (None, None) => "none fetched yet".into(),
        };
        NoCredentials { reason }
    }
}

/// The process's AWS credentials, kept fresh by a task of its own that ends when this is
/// dropped.
pub struct AwsCredentials {
    state: watch::Receiver<State>,
    refresher: JoinHandle<()>,
}

impl std::fmt::Debug for AwsCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.state.borrow();
        f.debug_struct("AwsCredentials")
            .field("source", &state.current.as_ref().map(|c| c.source))
            .field("expires", &state.current.as_ref().and_then(|c| c.expires))
            .finish_non_exhaustive()
    }
}

impl Drop for AwsCredentials {
    fn drop(&mut self) {
        self.refresher.abort();
    }
}

impl AwsCredentials {
    /// Starts fetching from `source` at once, on the current tokio runtime.
    pub fn start(source: impl Source) -> AwsCredentials {
        let (tx, rx) = watch::channel(State::default());
        AwsCredentials {
            state: rx,
            refresher: tokio::spawn(refresh(Arc::new(source), tx)),
        }
    }

    /// The credentials to sign an attempt with now. Cheap once fetched (a read of the current
    /// value); before the first fetch has ended it waits for it, `wait` at most.
    pub async fn get(&self, wait: Duration) -> Result<Arc<Fetched>, NoCredentials> {
        {
            let state = self.state.borrow();
            if let Some(current) = state.usable(SystemTime::now()) {
                return Ok(current);
            }
            if state.tried {
                return Err(state.missing());
            }
        }
        let mut state = self.state.clone();
        // A timeout or a refresher gone both leave the state as it is: judged below.
        let _ = tokio::time::timeout(wait, state.wait_for(|s| s.tried)).await;
        let state = self.state.borrow();
        state
            .usable(SystemTime::now())
            .ok_or_else(|| state.missing())
    }
}

/// What the last fetch came to, for [`next_fetch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Last {
    /// Credentials that expire at this time, or never.
    Got(Option<SystemTime>),
    Failed,
}

/// How long to wait before the next fetch (`None`: until a watched file changes), and how many
/// fetches in a row have now been `misses` (failed, or brought credentials already due for
/// refresh): those back off from [`FIRST_RETRY`] to [`MAX_RETRY`]. The decision only; the
/// refresher sleeps.
fn next_fetch(last: Last, now: SystemTime, misses: &mut u32) -> Option<Duration> {
    let backoff = |misses: u32| {
        FIRST_RETRY
            .saturating_mul(1 << misses.saturating_sub(1).min(10))
            .min(MAX_RETRY)
    };
    match last {
        Last::Got(None) => {
            *misses = 0;
            None
        }
        Last::Got(Some(expires)) => {
            let left = expires.duration_since(now).unwrap_or_default();
            match left.checked_sub(REFRESH_AHEAD) {
                Some(ahead) if !ahead.is_zero() => {
                    *misses = 0;
                    Some(ahead)
                }
                // Short-lived already: fetch again soon, but never in a tight loop, and while
                // these still work.
                _ => {
                    *misses += 1;
                    let wait = backoff(*misses);
                    Some(if left.is_zero() {
                        wait
                    } else {
                        wait.min(left / 2)
                    })
                }
            }
        }
        Last::Failed => {
            *misses += 1;
            Some(backoff(*misses))
        }
    }
}

/// The refresher: fetch, publish, wait (for the schedule or a changed file), again.
async fn refresh(source: Arc<dyn Source>, tx: watch::Sender<State>) {
    let files = source.watched_files();
    let mut misses = 0u32;
    loop {
        // Before the fetch, so a change while it runs is seen after it.
        let stamps = file_stamps(&files).await;
        let last = match source.fetch().await {
            Ok(fetched) => {
                let expires = fetched.expires;
                info!(
                    source = fetched.source,
                    expires = ?expires.map(httpdate::fmt_http_date),
                    "AWS credentials fetched for aws-iam endpoints"
                );
                tx.send_replace(State {
                    current: Some(Arc::new(fetched)),
                    tried: true,
                    error: None,
                });
                Last::Got(expires)
            }
            Err(e) => {
                tx.send_modify(|state| {
                    let now = SystemTime::now();
                    match state.usable(now).and_then(|c| c.expires) {
                        Some(expires) => warn!(
                            error = %e,
                            expires = %httpdate::fmt_http_date(expires),
                            "failed to refresh the AWS credentials; signing with the current ones until they expire"
                        ),
                        None if state.usable(now).is_some() => warn!(error = %e, "failed to fetch AWS credentials again; signing with the current ones"),
                        None => error!(error = %e, "no AWS credentials for aws-iam endpoints; their deliveries wait (retries, then the spool) until some are found"),
                    }
                    state.tried = true;
                    state.error = Some(e.0.as_str().into());
                });
                Last::Failed
            }
        };
        let wait = next_fetch(last, SystemTime::now(), &mut misses);
        let deadline = wait.map(|wait| Instant::now() + wait);
        // Until the deadline, or a watched file changes.
        loop {
            let step = match deadline {
                Some(at) if files.is_empty() => at.saturating_duration_since(Instant::now()),
                Some(at) => at.saturating_duration_since(Instant::now()).min(FILE_POLL),
                None if files.is_empty() => return, // long-term keys from the environment
                None => FILE_POLL,
            };
            tokio::time::sleep(step).await;
            if deadline.is_some_and(|at| Instant::now() >= at) {
                break;
            }
            if file_stamps(&files).await != stamps {
                info!("an AWS credentials file changed; fetching credentials again");
                misses = 0;
                break;
            }
        }
    }
}

/// What tells a file's versions apart: modification time, length and inode (a rename of a new
/// file over it changes the inode), or nothing for a file that is not there.
type Stamp = Option<(Option<SystemTime>, u64, u64)>;

/// Each file's [`Stamp`], read on the blocking pool.
async fn file_stamps(files: &[PathBuf]) -> Vec<Stamp> {
    use std::os::unix::fs::MetadataExt as _;
    let files = files.to_vec();
    tokio::task::spawn_blocking(move || {
        files
            .iter()
            .map(|f| {
                let meta = std::fs::metadata(f).ok()?;
                Some((meta.modified().ok(), meta.len(), meta.ino()))
            })
            .collect()
    })
    .await
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
    }

    #[test]
    fn credentials_are_fetched_five_minutes_before_they_expire() {
        let mut misses = 3;
        let wait = next_fetch(Last::Got(Some(at(3600))), at(0), &mut misses);
        assert_eq!(wait, Some(Duration::from_secs(3600) - 5 * MIN));
        assert_eq!(misses, 0);
    }

    #[test]
    fn long_term_keys_wait_for_a_file_change() {
        let mut misses = 2;
        assert_eq!(next_fetch(Last::Got(None), at(0), &mut misses), None);
        assert_eq!(misses, 0);
    }

    #[test]
    fn short_lived_credentials_are_fetched_again_soon_but_never_in_a_tight_loop() {
        let mut misses = 0;
        let waits: Vec<_> = (0..9)
            .map(|_| next_fetch(Last::Got(Some(at(4 * 60))), at(0), &mut misses).unwrap())
            .collect();
        let secs: Vec<u64> = waits.iter().map(Duration::as_secs).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 60, 60, 60], "doubling from 1 s");
        // Never later than half their time left.
        let mut misses = 10;
        let one_minute = next_fetch(Last::Got(Some(at(60))), at(0), &mut misses).unwrap();
        assert_eq!(one_minute, Duration::from_secs(30));
        // Expired on arrival: backing off as a failure does, not at once.
        let mut misses = 0;
        let gone = next_fetch(Last::Got(Some(at(0))), at(5), &mut misses).unwrap();
        assert_eq!(gone, FIRST_RETRY);
    }

    /// A source that hands out what the test queues, one per fetch, and fails when none is.
    struct Queued(std::sync::Mutex<Vec<Result<Fetched, FetchError>>>);

    impl Source for Arc<Queued> {
        fn fetch(&self) -> Fetch {
            let next = self.0.lock().unwrap().pop();
            Box::pin(async move { next.unwrap_or_else(|| Err(FetchError("queue empty".into()))) })
        }
        fn watched_files(&self) -> Vec<PathBuf> {
            Vec::new()
        }
    }

    fn fetched(key: &str, expires: Option<SystemTime>) -> Result<Fetched, FetchError> {
        Ok(Fetched {
            credentials: Credentials::new(key.into(), "secret".into(), None),
            expires,
            source: "test",
        })
    }

    fn key_of(fetched: &Fetched) -> String {
        let printed = format!("{:?}", fetched.credentials);
        printed.split('"').nth(1).unwrap().to_owned()
    }

    #[tokio::test]
    async fn no_credentials_at_all_is_a_clear_error_that_names_the_cause() {
        let source = Arc::new(Queued(std::sync::Mutex::new(vec![Err(FetchError(
            "no source in the chain has credentials (environment: not set)".into(),
        ))])));
        let cache = AwsCredentials::start(source);
        let err = cache
            .get(Duration::from_secs(10))
            .await
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "no AWS credentials to sign with: no source in the chain has credentials \
             (environment: not set)"
        );
    }

    #[tokio::test]
    async fn a_failed_refresh_keeps_the_credentials_until_they_expire() {
        // Fetched in order: short-lived keys, then failures only.
        let soon = SystemTime::now() + Duration::from_secs(2);
        let source = Arc::new(Queued(std::sync::Mutex::new(vec![fetched(
            "AKIDSHORT",
            Some(soon),
        )])));
        let cache = AwsCredentials::start(source.clone());
        let got = cache.get(Duration::from_secs(10)).await.unwrap();
        assert_eq!(key_of(&got), "AKIDSHORT");
        // The refresh a second later fails; the keys still sign until they expire.
        let mut state = cache.state.clone();
        state.wait_for(|s| s.error.is_some()).await.unwrap();
        assert_eq!(
            key_of(&cache.get(Duration::ZERO).await.unwrap()),
            "AKIDSHORT"
        );
        assert!(SystemTime::now() < soon);
        tokio::time::sleep(soon.duration_since(SystemTime::now()).unwrap_or_default()).await;
        let err = cache.get(Duration::ZERO).await.unwrap_err().to_string();
        assert!(
            err.contains("expired and refreshing failed: queue empty"),
            "{err}"
        );
    }

    #[test]
    fn failures_back_off_from_one_second_to_a_minute() {
        let mut misses = 0;
        let secs: Vec<u64> = (0..9)
            .map(|_| {
                next_fetch(Last::Failed, at(0), &mut misses)
                    .unwrap()
                    .as_secs()
            })
            .collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
    }
}
