//! One delivery endpoint at run time: its URL, timeout, request pacing, in-flight cap,
//! connections and circuit breaker.
//!
//! Owns the per-endpoint resources a request must hold before it is sent. Whether to retry
//! and where to go next are `retry`'s and `ring`'s business.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::Quota;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::{DeliveryConfig, EndpointConfig, EndpointFormat};
use crate::delivery::circuit::Circuit;
use crate::delivery::http::{BadUrl, Pool};
use crate::delivery::outbox::Outbox;
use crate::delivery::pacer::Pacer;
use crate::tls::Tls;

#[derive(Debug)]
pub struct Endpoint {
    pub name: String,
    pub url: reqwest::Url,
    pub timeout: Duration,
    /// For `auth = "aws-iam"`: the region to SigV4-sign each attempt for (with the process's
    /// AWS credentials, `Shared::aws_credentials`).
    pub aws_region: Option<String>,
    /// The requests it takes: shardhook's batches, or Carbon's events.
    pub format: EndpointFormat,
    pacer: Option<Pacer>,
    in_flight: Arc<Semaphore>,
    /// Shards' batches waiting for a request (shardhook's format only).
    pub outbox: Outbox,
    /// Its connections, as many idle as can be in flight.
    pub pool: Pool,
    pub circuit: Circuit,
}

impl Endpoint {
    /// Builds an endpoint from validated config; `aws_region` is set for `auth = "aws-iam"`. `tls` is
    /// the platform's settings, used unless the endpoint has a `ca_file`.
    pub fn new(
        config: &EndpointConfig,
        delivery: &DeliveryConfig,
        aws_region: Option<String>,
        tls: &Tls,
    ) -> Result<Endpoint, BadUrl> {
        let pacer = config.rate_limit.map(|r| {
            let per_second = NonZeroU32::new(r.per_second.max(1)).expect("at least 1");
            let burst =
                NonZeroU32::new(r.burst.unwrap_or(r.per_second).max(1)).expect("at least 1");
            Pacer::new(Quota::per_second(per_second).allow_burst(burst))
        });
        let url = reqwest::Url::parse(&config.url).expect("validated by config");
        let own;
        let tls = match &config.ca_file {
            None => tls,
            Some(path) => {
                let pem = std::fs::read(path).map_err(|e| BadUrl::CaFile {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
                own = crate::tls::private_ca(&pem).map_err(|reason| BadUrl::CaFile {
                    path: path.clone(),
                    reason,
                })?;
                &own
            }
        };
        Ok(Endpoint {
            name: config.name.clone(),
            pool: Pool::new(&url, config.max_in_flight, tls, config.http2)?,
            url,
            timeout: config.timeout.unwrap_or(delivery.timeout),
            aws_region,
            format: config.format,
            pacer,
            in_flight: Arc::new(Semaphore::new(config.max_in_flight)),
            outbox: Outbox::default(),
            circuit: Circuit::new(delivery.circuit_failures, delivery.circuit_cooldown),
        })
    }

    /// Waits for the endpoint's rate limit only; says whether it had to.
    pub async fn paced(&self) -> bool {
        let Some(pacer) = &self.pacer else {
            return false;
        };
        let waited = pacer.try_acquire().is_err();
        if waited {
            pacer.acquire().await;
        }
        waited
    }

    /// Waits for the endpoint's rate limit and a free in-flight slot; hold the permit while
    /// the request is out. Also says whether the rate limit made it wait.
    pub async fn ready(&self) -> (OwnedSemaphorePermit, bool) {
        let waited = self.paced().await;
        let permit = self
            .in_flight
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        (permit, waited)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::http::tests::serve_tls;

    /// An endpoint at `url` with `ca_file`, on TLS settings that trust nothing else.
    fn endpoint_trusting(url: &str, ca_file: Option<&str>) -> Result<Endpoint, BadUrl> {
        let config = EndpointConfig {
            ca_file: ca_file
                .map(|f| concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/").to_owned() + f)
                .map(Into::into),
            ..EndpointConfig::new("internal", url)
        };
        let nothing = crate::tls::trusting(rustls::RootCertStore::empty());
        Endpoint::new(&config, &DeliveryConfig::default(), None, &nothing)
    }

    #[tokio::test]
    async fn an_endpoint_with_a_ca_file_trusts_that_ca() {
        let (url, _, _) = serve_tls().await;
        let post = |endpoint: Endpoint| async move {
            let headers = http::HeaderMap::new();
            endpoint
                .pool
                .post(headers, bytes::Bytes::new(), Duration::from_secs(10))
                .await
        };
        let trusted = endpoint_trusting(&url, Some("tls-ca.pem")).unwrap();
        assert_eq!(post(trusted).await.unwrap().status, 204);
        let untrusted = endpoint_trusting(&url, None).unwrap();
        let refused = post(untrusted).await.unwrap_err().to_string();
        assert!(refused.contains("TLS"), "{refused}");
    }

    #[test]
    fn a_ca_file_that_is_missing_or_not_pem_is_refused_by_name() {
        let url = "https://localhost:9/";
        let missing = endpoint_trusting(url, Some("no-such.pem"))
            .unwrap_err()
            .to_string();
        assert!(missing.contains("no-such.pem"), "{missing}");
        let key = endpoint_trusting(url, Some("tls-localhost.key"))
            .unwrap_err()
            .to_string();
        assert!(
            key.contains("tls-localhost.key") && key.contains("no PEM certificate"),
            "{key}"
        );
    }
    use crate::config::RateLimitConfig;
    use tokio::time::Instant;

    #[tokio::test(start_paused = true)]
    async fn requests_are_spaced_by_the_rate_limit_after_the_burst() {
        let config = EndpointConfig {
            max_in_flight: 4,
            rate_limit: Some(RateLimitConfig {
                per_second: 10,
                burst: Some(2),
            }),
            ..EndpointConfig::new("a", "http://127.0.0.1:1/")
        };
        let tls = crate::tls::trusting(rustls::RootCertStore::empty());
        let endpoint = Endpoint::new(&config, &DeliveryConfig::default(), None, &tls).unwrap();
        let start = Instant::now();
        let mut at = Vec::new();
        for _ in 0..12 {
            drop(endpoint.ready().await.0);
            at.push(Instant::now() - start);
        }
        assert!(
            at[1] < Duration::from_millis(1),
            "the burst of 2 goes at once: {at:?}"
        );
        for pair in at[2..].windows(2) {
            assert_eq!(pair[1] - pair[0], Duration::from_millis(100), "{at:?}");
        }
    }
}
