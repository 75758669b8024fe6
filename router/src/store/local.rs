//! The store of a router alone: everything kept in files under `state.dir`, as `state`
//! writes them: checkpoints (written by the `Checkpointer`), spools and dead letters, spent
//! request ids; the REST limits in memory (this process is the bot's only client), every
//! shard of the plan held from the start.
//!
//! Owns the choices only; the files' formats are `state`'s.

use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::checkpointer::Checkpointer;
use super::{Alone, Finale, Later, NotEnoughIdentifies, Owners, Parts, SpentIdSets, Store};
use crate::delivery::Keeping;
use crate::gateway::bot_info::SessionStartLimit;
use crate::gateway::identify::SharedTurns;
use crate::gateway::session::Session;
use crate::gateway::tenure::Tenure;
use crate::state::checkpoint::{load_all, Wanted};
use crate::state::request_ids::{LocalIds, SpentIds};
use crate::state::rest_limits::{LocalLimits, RestLimits};

/// Files under `state.dir`.
#[derive(Debug)]
pub(crate) struct LocalStore {
    dir: PathBuf,
    /// The bot, whose checkpoints alone are resumed from.
    bot: String,
    /// `state.checkpoint_max_age`.
    max_age: Duration,
}

impl LocalStore {
    /// The store under `dir` for `bot` (`Token::bot`), resuming from checkpoints no older
    /// than `max_age`.
    pub(crate) fn new(dir: PathBuf, bot: String, max_age: Duration) -> LocalStore {
        LocalStore { dir, bot, max_age }
    }

    /// The store `config` names: its `state.dir`, its token's bot, its checkpoints' age.
    pub(crate) fn of(
        config: &crate::config::Config,
    ) -> Result<LocalStore, crate::config::ConfigError> {
        Ok(LocalStore::new(
            config.state.dir.clone(),
            config.token()?.bot(),
            config.state.checkpoint_max_age,
        ))
    }
}

impl Store for LocalStore {
    fn keeping(&self) -> Keeping {
        Keeping::Local
    }

    fn spent_ids(&self) -> Result<SpentIdSets, String> {
        let now = crate::unix_now();
        let failed = |e: std::io::Error| {
            format!(
                "failed to read spent request ids in {}: {e}",
                self.dir.display()
            )
        };
        let commands: Arc<dyn SpentIds> = Arc::new(LocalIds::open(&self.dir, now).map_err(failed)?);
        let rest: Arc<dyn SpentIds> =
            Arc::new(LocalIds::open_rest(&self.dir, now).map_err(failed)?);
        Ok(SpentIdSets { commands, rest })
    }

    fn rest_limits(&self) -> Arc<dyn RestLimits> {
        Arc::new(LocalLimits::default())
    }

    fn owners(&self) -> Arc<dyn Owners> {
        Arc::new(Alone)
    }

    fn begin(
        &self,
        total: u32,
        planned: Range<u32>,
        limit: &SessionStartLimit,
    ) -> Result<Vec<(u32, Tenure)>, NotEnoughIdentifies> {
        let wanted = Wanted {
            shard_count: total,
            bot: &self.bot,
            max_age: self.max_age,
            now: crate::unix_now(),
        };
        let mut checkpoints = load_all(&self.dir, &wanted);
        checkpoints.retain(|id, _| planned.contains(id));
        // Shards with a checkpoint RESUME; only the others spend an identify.
        let need = planned.len() as u32 - checkpoints.len() as u32;
        if need > limit.remaining {
            return Err(NotEnoughIdentifies {
                need,
                remaining: limit.remaining,
                total: limit.total,
                reset_secs: limit.reset_after / 1000,
            });
        }
        Ok(planned
            .map(|id| {
                let resume = checkpoints
                    .remove(&id)
                    .map(|cp| Session::from_checkpoint(&cp));
                (id, Tenure::Held { grant: 0, resume })
            })
            .collect())
    }

    fn identify_turns<'a>(
        &'a self,
        _limit: &'a SessionStartLimit,
    ) -> Later<'a, Option<Arc<dyn SharedTurns>>> {
        // This process is the only one identifying: its own queue paces it.
        Box::pin(std::future::ready(None))
    }

    fn keeper(
        &self,
        parts: Parts,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Later<'static, Finale> {
        let interval = parts.checkpoint_interval;
        let checkpointer = Checkpointer::new(&self.dir, parts);
        Box::pin(async move {
            let mut checkpointer = checkpointer.run(interval, shutdown.cancelled_owned()).await;
            Box::new(move || {
                let wrote = checkpointer.write_final();
                tracing::info!(wrote, "resume checkpoints written");
            }) as Finale
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::request_ids::{Claim, CAPACITY};

    #[tokio::test]
    async fn rest_calls_filling_their_ids_leave_room_for_commands() {
        let dir = std::env::temp_dir().join(format!("shardhook-store-ids-{}", std::process::id()));
        let store = LocalStore::new(dir.clone(), "1".to_owned(), Duration::from_secs(60));
        let ids = store.spent_ids().unwrap();
        let now = crate::unix_now();
        for n in 0..CAPACITY {
            let id = format!("rest{n}");
            assert_eq!(ids.rest.claim(&id, now + 300, now).await, Claim::Claimed);
        }
        assert_eq!(
            ids.rest.claim("one more", now + 300, now).await,
            Claim::Full
        );
        assert_eq!(
            ids.commands.claim("a command", now + 300, now).await,
            Claim::Claimed,
            "the commands' set is their own"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
