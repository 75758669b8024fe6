//! Interactions: with `interactions.auto_defer`, each INTERACTION_CREATE is acknowledged with
//! a deferred response as it arrives (Discord gives 3 s), before its handler sees it; when its
//! batch is finally dead-lettered, the user is told with the configured error message.
//!
//! Owns those two calls to Discord's REST API and the deferrals under way; it leaves sending
//! the interaction to its endpoint to `worker` and `attempt`.

use std::sync::atomic::Ordering as AtomicOrdering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::warn;

use super::batch::DeferredInteraction;
use super::shared::Shared;
use super::INTERACTION_CREATE;
use crate::gateway::dispatch::Dispatch;

/// The fields of an interaction that deferring and editing need.
#[derive(serde::Deserialize)]
struct InteractionRef<'a> {
    id: &'a str,
    token: &'a str,
    #[serde(rename = "type")]
    kind: u8,
    application_id: &'a str,
}

/// Interaction type 3 is a message component: its deferral is type 6 (update), not 5.
const MESSAGE_COMPONENT: u8 = 3;
/// How long deferring may hold up forwarding the interaction.
const DEFER_TIMEOUT: Duration = Duration::from_secs(2);

impl Shared {
    /// The deferral started for `event` when it arrived, once it is done.
    pub(super) async fn deferred(&self, event: &Dispatch) -> Option<DeferredInteraction> {
        if !event.is_named(INTERACTION_CREATE) {
            return None;
        }
        let started = self
            .deferrals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(event.shard_id, event.seq))?;
        started.await.ok().flatten()
    }

    /// Acknowledges an INTERACTION_CREATE with a deferred response and says so; `None` if
    /// Discord refused.
    pub(super) async fn defer(&self, event: &Dispatch) -> Option<DeferredInteraction> {
        let interaction: InteractionRef = match serde_json::from_slice(event.data()) {
            Ok(i) => i,
            Err(e) => {
                warn!(
                    seq = event.seq,
                    "cannot defer an interaction without id, token, type and application_id: {e}"
                );
                return None;
            }
        };
        let kind = if interaction.kind == MESSAGE_COMPONENT {
            6
        } else {
            5
        };
        let path = format!(
            "/interactions/{}/{}/callback",
            interaction.id, interaction.token
        );
        let sent = self
            .discord(
                reqwest::Method::POST,
                &path,
                format!(r#"{{"type":{kind}}}"#),
            )
            .send()
            .await;
        match sent {
            Ok(response) if response.status().is_success() => {
                self.stats
                    .interactions_deferred
                    .fetch_add(1, AtomicOrdering::Relaxed);
                self.stats
                    .defer_latencies
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(event.received_at.elapsed());
                Some(DeferredInteraction {
                    application_id: interaction.application_id.to_owned(),
                    token: interaction.token.to_owned(),
                })
            }
            Ok(response) => {
                warn!(status = %response.status(), "Discord refused to defer an interaction; forwarding it as is");
                None
            }
            Err(e) => {
                warn!(
                    "failed to defer an interaction; forwarding it as is: {}",
                    e.without_url()
                );
                None
            }
        }
    }

    /// A JSON request to Discord's REST API at `path` (below `discord.api_url`). Interaction
    /// callbacks and webhook edits carry their own token, so no bot token is sent.
    pub(super) fn discord(
        &self,
        method: reqwest::Method,
        path: &str,
        body: String,
    ) -> reqwest::RequestBuilder {
        let base = self.config.discord.api_url.trim_end_matches('/');
        self.client
            .request(method, format!("{base}{path}"))
            .timeout(DEFER_TIMEOUT)
            .header("content-type", "application/json")
            .body(body)
    }

    /// Edits each deferred interaction's response with the configured error message.
    pub(super) async fn apologise(&self, interactions: &[DeferredInteraction]) {
        let body =
            serde_json::json!({ "content": self.config.interactions.error_message }).to_string();
        for interaction in interactions {
            let path = format!(
                "/webhooks/{}/{}/messages/@original",
                interaction.application_id, interaction.token
            );
            let sent = self
                .discord(reqwest::Method::PATCH, &path, body.clone())
                .send()
                .await;
            if let Err(e) = sent.and_then(|r| r.error_for_status()) {
                warn!(
                    "failed to tell the user an interaction failed: {}",
                    e.without_url()
                );
            }
        }
    }
}

/// With `interactions.auto_defer`: starts deferring each interaction as it arrives, then
/// passes every event on to the delivery loop.
pub(super) async fn defer_on_arrival(
    shared: Arc<Shared>,
    mut rx: mpsc::Receiver<Dispatch>,
    tx: mpsc::Sender<Dispatch>,
) {
    while let Some(event) = rx.recv().await {
        if event.is_named(INTERACTION_CREATE) && shared.wanted(&event) {
            let (deferring, key) = (shared.clone(), (event.shard_id, event.seq));
            let interaction = event.clone();
            let started = tokio::spawn(async move { deferring.defer(&interaction).await });
            shared
                .deferrals
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(key, started);
        }
        if tx.send(event).await.is_err() {
            return;
        }
    }
}
