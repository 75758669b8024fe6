//! Interactions: each INTERACTION_CREATE goes in a lane of its own, never behind its shard's
//! batches, since Discord gives its handler 3 s to answer. With `interactions.auto_defer` it is
//! first acknowledged with a deferred response, before its handler sees it; when it is finally
//! dead-lettered, the user is told with the configured error message.
//!
//! Owns the lane's schedule and those two calls to Discord's REST API; `worker` diverts
//! interactions here as it reads them, and `attempt` sends.

use std::sync::Arc;
use std::time::Duration;

use tracing::warn;

use super::attempt::attempt_interaction;
use super::batch::{Batch, DeferredInteraction};
use super::shared::Shared;
use crate::config::EndpointFormat;
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
/// How long Discord waits for an interaction's first response.
const RESPONSE_WINDOW: Duration = Duration::from_secs(3);
/// How long a deferred interaction's token stays valid for its handler's follow-ups.
const TOKEN_LIFETIME: Duration = Duration::from_secs(15 * 60);

impl Shared {
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
                self.stats.deferred(event.received_at.elapsed());
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

/// Delivers one interaction in a lane of its own, whatever its shard's batches are doing:
/// deferred first with `interactions.auto_defer`, then sent as a request of its own and retried
/// until Discord would no longer take its response (3 s from its arrival, or the 15 minutes of
/// a deferred token), then dead-lettered. Its seq must have been started in `progress`; it is
/// finished here.
pub(super) async fn deliver_interaction(shared: Arc<Shared>, event: Dispatch) {
    let (shard, session, seq) = (event.shard_id, event.session_id.clone(), event.seq);
    let deferred = match shared.config.interactions.auto_defer {
        true => shared.defer(&event).await,
        false => None,
    };
    let (window, max_backoff) = match deferred {
        Some(_) => (TOKEN_LIFETIME, shared.config.delivery.max_backoff),
        None => (RESPONSE_WINDOW, RESPONSE_WINDOW / 4),
    };
    let deadline = event.received_at + window;
    let request = match shared.home_format(shard) {
        EndpointFormat::Carbon => super::carbon::request_for(&shared, &event, deferred),
        EndpointFormat::Shardhook => {
            let mut batch = Batch::new(event);
            if let Some(interaction) = deferred {
                batch.mark_deferred(interaction);
            }
            batch.finish()
        }
    };
    attempt_interaction(&shared, request, deadline, max_backoff).await;
    shared.progress.finished(shard, &session, seq);
}
