//! The coordinator: this router's side of the cluster, one task.
//!
//! Owns which shards run here. Every `BALANCE` it renews its membership, ranks the live
//! routers per shard by weighted rendezvous hashing, takes the free leases of the shards that
//! rank it first (granting each shard its tenure from the checkpoint in Redis), and hands over
//! the shards that rank another router first (stop reading, deliver what was read, close
//! resumably, write the final checkpoint, give the lease up). Every renewal interval it renews
//! its leases and writes the checkpoints that moved, both under the fencing token; a refused
//! write means another router holds the shard now, and the shard stops here at once. When
//! Redis stays unreachable until a lease could have expired, every shard stops reading until
//! Redis answers again. It does not open connections or deliver: shards and delivery do.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{error, info, warn};

use super::store::{NodeInfo, Store, StoreError};
use super::view::View;
use crate::config::ClusterConfig;
use crate::delivery::ring::Ring;
use crate::delivery::DeliveryHandle;
use crate::gateway::handle::{ShardHandle, ShardState};
use crate::gateway::session::Session;
use crate::gateway::tenure::{Tenure, Tenures};
use crate::state::checkpoint::{Checkpoint, Wanted};
use crate::store::Parts;

/// How often membership is renewed and shards are taken or handed over.
const BALANCE: Duration = Duration::from_millis(250);
/// Shards handed over at once: a stopping router lets its shards go a few at a time, so the
/// others resume them as a stream rather than all at once.
const HANDOVERS_AT_ONCE: usize = 4;
/// How long a router that joins watches the membership before it takes shards, so routers
/// started together see each other first and each shard identifies once, on its owner (rather
/// than all on the first router up, then handed over).
const JOIN_GRACE: Duration = Duration::from_secs(1);
/// How often delivery is asked whether a released shard's events are all safe.
const DRAIN_POLL: Duration = Duration::from_millis(10);

/// What this router holds of one shard.
#[derive(Debug)]
struct Owned {
    /// The fencing token of this tenure.
    fence: u64,
    /// The checkpoint the tenure started from: its seq is safe even before delivery says so.
    floor: Option<(Arc<str>, u64)>,
    /// The checkpoint last written to Redis.
    written: Option<Checkpoint>,
    /// When it was last written.
    written_at: Option<Instant>,
    /// When the lease was last taken or renewed: it holds until this plus `lease_ttl`.
    renewed_at: Instant,
    /// Being handed over.
    releasing: bool,
}

/// This router's side of the cluster.
pub struct Coordinator {
    store: Store,
    me: NodeInfo,
    settings: ClusterConfig,
    parts: Parts,
    shards: BTreeMap<u32, ShardHandle>,
    view: Arc<View>,
    owned: BTreeMap<u32, Owned>,
    /// The live routers at the last heartbeat.
    nodes: Vec<NodeInfo>,
    /// When this router first saw itself a member.
    joined: Option<Instant>,
}

/// Everything a handover needs, moved into its task.
struct Handover {
    store: Store,
    node: String,
    shard: ShardHandle,
    tenures: Tenures,
    delivery: DeliveryHandle,
    fence: u64,
    floor: Option<(Arc<str>, u64)>,
    shard_count: u32,
    bot: String,
    drain_timeout: Duration,
    checkpoint_ttl: Duration,
}

impl Handover {
    /// Stops the shard reading, waits until what it read is safe, and gives the lease up with
    /// the final checkpoint. Whatever happens, the shard is in standby when this returns.
    async fn run(self) {
        let id = self.shard.id();
        if let Some(tenure) = self.tenures.get(&id) {
            tenure.send_replace(Tenure::Standby);
        }
        let deadline = Instant::now() + self.drain_timeout;
        let mut status = self.shard.status();
        let idle = status.wait_for(|s| {
            matches!(
                s.state,
                ShardState::Standby | ShardState::FatallyClosed { .. }
            )
        });
        if tokio::time::timeout_at(deadline, idle).await.is_err() {
            warn!(
                shard_id = id,
                "the shard did not stop in time; handing it over anyway"
            );
        }
        // Everything read is delivered (or dead-lettered) before the checkpoint is final, so
        // the next owner resumes exactly after it.
        let checkpoint = loop {
            let checkpoint = self.delivery.checkpoint(
                &self.shard,
                self.floor.as_ref(),
                self.shard_count,
                &self.bot,
            );
            let caught_up = checkpoint
                .as_ref()
                .is_none_or(|cp| cp.seq >= self.shard.last_seq());
            if caught_up || Instant::now() >= deadline {
                if !caught_up {
                    warn!(
                        shard_id = id,
                        "delivery did not catch up in time; the next owner resumes from what is safe, and Discord replays the rest"
                    );
                }
                break checkpoint;
            }
            tokio::time::sleep(DRAIN_POLL).await;
        };
        match self
            .store
            .release(id, &self.node, self.fence, checkpoint.as_ref(), self.checkpoint_ttl)
            .await
        {
            Ok(true) => info!(
                shard_id = id,
                seq = checkpoint.as_ref().map_or(0, |c| c.seq),
                "handed the shard over"
            ),
            Ok(false) => warn!(
                shard_id = id,
                "the lease was no longer this router's at handover; the final checkpoint was not written"
            ),
            Err(e) => warn!(
                shard_id = id,
                "could not give the lease up ({e}); it expires on its own"
            ),
        }
    }
}

impl Coordinator {
    /// A coordinator for the router `parts` describe, known to the others as `me`.
    pub(super) fn new(
        store: Store,
        me: NodeInfo,
        settings: ClusterConfig,
        parts: Parts,
        view: Arc<View>,
    ) -> Coordinator {
        let shards = parts.shards.iter().map(|s| (s.id(), s.clone())).collect();
        Coordinator {
            store,
            me,
            settings,
            parts,
            shards,
            view,
            owned: BTreeMap::new(),
            nodes: Vec::new(),
            joined: None,
        }
    }

    /// How long checkpoints are kept in Redis: past `state.checkpoint_max_age` none would be
    /// resumed from.
    fn checkpoint_ttl(&self) -> Duration {
        self.parts.checkpoint_max_age * 2
    }

    /// Runs until `stop` resolves, then hands every shard over and leaves the cluster.
    pub async fn run(mut self, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        let mut balance = tokio::time::interval(BALANCE);
        balance.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let renew_every = self
            .parts
            .checkpoint_interval
            .min(self.settings.lease_ttl / 3);
        let mut renew = tokio::time::interval(renew_every);
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let (done_tx, mut done) = mpsc::unbounded_channel::<u32>();
        let mut leaving: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = &mut stop, if leaving.is_none() => {
                    info!(shards = self.owned.len(), "leaving the cluster: handing every shard over");
                    if let Err(e) = self.store.leave(&self.me.id).await {
                        warn!("could not leave the cluster's membership ({e}); it expires on its own");
                    }
                    leaving = Some(Instant::now() + self.parts.drain_timeout + self.settings.lease_ttl);
                    self.balance(true, &done_tx).await;
                }
                _ = balance.tick() => self.balance(leaving.is_some(), &done_tx).await,
                _ = renew.tick() => self.renew().await,
                Some(shard) = done.recv() => {
                    self.owned.remove(&shard);
                    self.balance(leaving.is_some(), &done_tx).await;
                }
            }
            if let Some(deadline) = leaving {
                if self.owned.is_empty() {
                    info!("every shard handed over");
                    return;
                }
                if Instant::now() >= deadline {
                    warn!(
                        left = self.owned.len(),
                        "handovers did not finish in time; their leases expire on their own"
                    );
                    return;
                }
            }
        }
    }

    /// Renews membership, then takes the shards that rank this router first and hands over
    /// the others.
    async fn balance(&mut self, leaving: bool, done: &mpsc::UnboundedSender<u32>) {
        if !leaving {
            match self
                .store
                .heartbeat(&self.me, self.settings.lease_ttl)
                .await
            {
                Ok(nodes) => {
                    self.joined.get_or_insert_with(Instant::now);
                    self.view.set_nodes(&nodes);
                    self.nodes = nodes;
                }
                Err(e) => warn!("could not renew this router's membership: {e}"),
            }
        }
        self.give_up_expiring();
        let candidates: Vec<&NodeInfo> = self
            .nodes
            .iter()
            .filter(|n| !(leaving && n.id == self.me.id))
            .collect();
        let ring = Ring::new(candidates.iter().map(|n| (n.id.as_str(), n.weight)));
        let home = |shard: u32| ring.home(shard as u64).map(|i| candidates[i].id.as_str());
        let mut wanted = Vec::new();
        let mut releasing = self.owned.values().filter(|o| o.releasing).count();
        let mut release = Vec::new();
        for shard in 0..self.parts.shard_count {
            let here = home(shard) == Some(self.me.id.as_str());
            match self.owned.get(&shard) {
                // Only to a router that is there to take it, or because this one leaves.
                Some(owned)
                    if !here
                        && !owned.releasing
                        && releasing < HANDOVERS_AT_ONCE
                        && (leaving || home(shard).is_some()) =>
                {
                    release.push(shard);
                    releasing += 1;
                }
                None if here && !leaving => wanted.push(shard),
                _ => {}
            }
        }
        for shard in release {
            self.hand_over(shard, done);
        }
        // Routers started together wait out the grace; one joining a running cluster need not.
        let now_ms = super::now_ms();
        let grace_ms = JOIN_GRACE.as_millis() as u64;
        let settled = self.joined.is_some_and(|at| at.elapsed() >= JOIN_GRACE)
            || self
                .nodes
                .iter()
                .any(|n| n.id != self.me.id && now_ms.saturating_sub(n.started_ms) >= grace_ms);
        if !wanted.is_empty() && settled {
            self.take(&wanted).await;
        }
    }

    /// Stops every shard whose lease may have expired unrenewed (Redis unreachable): another
    /// router may hold it by now.
    fn give_up_expiring(&mut self) {
        let margin = self.settings.redis_timeout;
        let limit = self.settings.lease_ttl.saturating_sub(margin);
        let expiring: Vec<u32> = self
            .owned
            .iter()
            .filter(|(_, o)| o.renewed_at.elapsed() >= limit)
            .map(|(id, _)| *id)
            .collect();
        if expiring.is_empty() {
            return;
        }
        error!(
            shards = expiring.len(),
            "leases could not be renewed for {:?} (Redis unreachable?): these shards stop reading until they are taken again; their queued events are still delivered",
            limit
        );
        for id in expiring {
            self.owned.remove(&id);
            self.standby(id);
        }
    }

    fn standby(&self, shard: u32) {
        if let Some(tenure) = self.parts.tenures.get(&shard) {
            tenure.send_replace(Tenure::Standby);
        }
        self.view.set_held(shard, None);
    }

    /// Takes the free leases among `shards` and grants each its tenure from its checkpoint.
    async fn take(&mut self, shards: &[u32]) {
        let taken = match self
            .store
            .acquire_many(shards, &self.me.id, self.settings.lease_ttl)
            .await
        {
            Ok(taken) => taken,
            Err(e) => {
                warn!("could not take leases: {e}");
                return;
            }
        };
        let now = crate::delivery::signer::unix_now();
        for (shard, fence) in shards.iter().zip(taken) {
            let Some(fence) = fence else { continue };
            self.parts
                .delivery
                .stats()
                .cluster_leases_taken
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let acquired = Instant::now();
            let checkpoint = match self.store.checkpoint(*shard).await {
                Ok(cp) => cp,
                // Not one a router of this bot wrote (or not readable at all): never resumed
                // from, whatever it names.
                Err(e @ (StoreError::Refused(_) | StoreError::Unreadable { .. })) => {
                    error!(shard_id = shard, "the shard's checkpoint in Redis was refused ({e}); the shard identifies anew");
                    None
                }
                Err(e) => {
                    // Without the checkpoint the shard would IDENTIFY and lose what Discord
                    // could replay: give the lease back and try again.
                    warn!(
                        shard_id = shard,
                        "could not read the shard's checkpoint ({e}); trying again"
                    );
                    let _ = self
                        .store
                        .release(*shard, &self.me.id, fence, None, self.checkpoint_ttl())
                        .await;
                    continue;
                }
            };
            let wanted = Wanted {
                shard_count: self.parts.shard_count,
                bot: &self.parts.bot,
                max_age: self.parts.checkpoint_max_age,
                now,
            };
            let checkpoint = checkpoint.filter(|cp| match wanted.refuses(cp) {
                Some(why) => {
                    warn!(shard_id = shard, "not resuming from the cluster's checkpoint: {why}; the shard identifies anew");
                    false
                }
                None => true,
            });
            let resume = checkpoint.as_ref().map(Session::from_checkpoint);
            info!(
                shard_id = shard,
                fence,
                resume_seq = resume.as_ref().map(|r| r.seq),
                "took the shard's lease"
            );
            self.owned.insert(
                *shard,
                Owned {
                    fence,
                    floor: resume.as_ref().map(|r| (r.id.clone(), r.seq)),
                    written: checkpoint,
                    written_at: Some(acquired),
                    renewed_at: acquired,
                    releasing: false,
                },
            );
            self.view.set_held(*shard, Some(fence));
            // What the last holder spooled goes first.
            self.parts.delivery.spool_taken_over(*shard);
            if let Some(tenure) = self.parts.tenures.get(shard) {
                tenure.send_replace(Tenure::Held {
                    grant: fence,
                    resume,
                });
            }
        }
    }

    /// Starts handing `shard` over; `done` hears when it is.
    fn hand_over(&mut self, shard: u32, done: &mpsc::UnboundedSender<u32>) {
        let Some(owned) = self.owned.get_mut(&shard) else {
            return;
        };
        let Some(handle) = self.shards.get(&shard) else {
            return;
        };
        owned.releasing = true;
        self.view.set_held(shard, None);
        let handover = Handover {
            store: self.store.clone(),
            node: self.me.id.clone(),
            shard: handle.clone(),
            tenures: self.parts.tenures.clone(),
            delivery: self.parts.delivery.clone(),
            fence: owned.fence,
            floor: owned.floor.clone(),
            shard_count: self.parts.shard_count,
            bot: self.parts.bot.clone(),
            drain_timeout: self.parts.drain_timeout,
            checkpoint_ttl: self.checkpoint_ttl(),
        };
        let done = done.clone();
        tokio::spawn(async move {
            handover.run().await;
            let _ = done.send(shard);
        });
    }

    /// Renews every lease held, writing the checkpoints that moved; a refused renewal means
    /// the shard is another router's now, and it stops here at once.
    async fn renew(&mut self) {
        if self.owned.is_empty() {
            return;
        }
        let mut items = Vec::with_capacity(self.owned.len());
        for (id, owned) in &self.owned {
            let Some(handle) = self.shards.get(id) else {
                continue;
            };
            let current = self
                .parts
                .delivery
                .resume_point(handle, owned.floor.as_ref());
            let moved = match (&current, &owned.written) {
                (Some(now), Some(was)) => {
                    !now.is_recorded_in(was)
                        || owned
                            .written_at
                            .is_none_or(|at| at.elapsed() >= crate::state::checkpoint::REFRESH)
                }
                (Some(_), None) => true,
                (None, _) => false,
            };
            // The record is made only for a checkpoint that moved (or is due again).
            let current = current
                .filter(|_| moved)
                .map(|now| now.checkpoint(self.parts.shard_count, &self.parts.bot));
            items.push((*id, owned.fence, current));
        }
        let leases: Vec<(u32, u64, Option<&Checkpoint>)> = items
            .iter()
            .map(|(id, fence, cp)| (*id, *fence, cp.as_ref()))
            .collect();
        let sent = Instant::now();
        let held = match self
            .store
            .renew(
                &self.me.id,
                self.settings.lease_ttl,
                self.checkpoint_ttl(),
                &leases,
            )
            .await
        {
            Ok(held) => held,
            Err(e) => {
                warn!("could not renew leases: {e}");
                return;
            }
        };
        for ((id, fence, checkpoint), held) in items.into_iter().zip(held) {
            let Some(owned) = self.owned.get_mut(&id) else {
                continue;
            };
            if held {
                owned.renewed_at = sent;
                if checkpoint.is_some() {
                    owned.written = checkpoint;
                    owned.written_at = Some(sent);
                }
            } else if !owned.releasing {
                error!(
                    shard_id = id,
                    fence,
                    "the fencing token refused this router's write: another router holds the shard now; giving it up"
                );
                self.owned.remove(&id);
                self.standby(id);
            }
        }
    }
}
