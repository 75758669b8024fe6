//! What the control API shows and routes by in a cluster: which router holds each shard, and
//! where each router's control API answers.
//!
//! Owns the snapshot of this router's shards and the live routers' addresses (the coordinator
//! fills it at each heartbeat), and reads other shards' holders from Redis when the control
//! API asks (a 421, `/v1/shards`), not at every lease renewal: at 1,000 shards that read was
//! half of Redis' load.

use std::collections::{BTreeMap, HashMap};
use std::sync::RwLock;

use super::store::{Lease, NodeInfo, Store};
use crate::store::{Later, Owner, Owners};

/// The cluster as this router last saw it.
#[derive(Debug)]
pub struct View {
    /// This router's node id.
    me: String,
    inner: RwLock<Inner>,
    /// Where other shards' holders are read.
    store: Store,
}

#[derive(Debug, Default)]
struct Inner {
    /// Shards whose tenure is this router's now, with its fencing token.
    held: BTreeMap<u32, u64>,
    /// Each live router's control address.
    controls: HashMap<String, String>,
}

impl View {
    /// An empty view for the router `me`, reading holders from `store`.
    pub(super) fn new(me: &str, store: Store) -> View {
        View {
            me: me.to_owned(),
            inner: RwLock::default(),
            store,
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn set_nodes(&self, nodes: &[NodeInfo]) {
        self.write().controls = nodes
            .iter()
            .map(|n| (n.id.clone(), n.control.clone()))
            .collect();
    }

    /// Records `shard`'s tenure here under `fence`, or (`None`) its end.
    pub(super) fn set_held(&self, shard: u32, fence: Option<u64>) {
        let mut inner = self.write();
        match fence {
            Some(fence) => inner.held.insert(shard, fence),
            None => inner.held.remove(&shard),
        };
    }

    /// The fencing token of this router's tenure of `shard`, if it holds it.
    pub(super) fn fence(&self, shard: u32) -> Option<u64> {
        self.read().held.get(&shard).copied()
    }

    /// Whether this router runs `shard` now.
    pub fn holds(&self, shard: u32) -> bool {
        self.read().held.contains_key(&shard)
    }

    /// Who holds each of `shards`' leases, read now (this router's own from its tenure):
    /// `None` for a shard nobody holds, or when Redis cannot answer.
    pub async fn owners(&self, shards: &[u32]) -> BTreeMap<u32, Option<Owner>> {
        let others: Vec<u32> = shards.iter().copied().filter(|s| !self.holds(*s)).collect();
        let leases = match self.store.leases_of(&others).await {
            Ok(leases) => leases,
            Err(e) => {
                tracing::warn!("could not read the shards' holders from Redis: {e}");
                vec![None; others.len()]
            }
        };
        let read: HashMap<u32, Option<Lease>> = others.into_iter().zip(leases).collect();
        let inner = self.read();
        let owner = |node: &str| Owner {
            node: node.to_owned(),
            control: inner.controls.get(node).cloned(),
        };
        shards
            .iter()
            .map(|shard| {
                let found = match read.get(shard) {
                    None => Some(owner(&self.me)),
                    Some(lease) => lease.as_ref().map(|l| owner(&l.node)),
                };
                (*shard, found)
            })
            .collect()
    }
}

impl Owners for View {
    fn holds(&self, shard: u32) -> bool {
        View::holds(self, shard)
    }

    fn owners<'a>(&'a self, shards: &'a [u32]) -> Later<'a, BTreeMap<u32, Option<Owner>>> {
        Box::pin(View::owners(self, shards))
    }
}
