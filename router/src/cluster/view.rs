//! What the control API shows and routes by in a cluster: which router holds each shard, and
//! where each router's control API answers.
//!
//! Owns the snapshot only; the coordinator fills it, the control API reads it.

use std::collections::{BTreeMap, HashMap};
use std::sync::RwLock;

use super::store::{Lease, NodeInfo};

/// The cluster as this router last saw it.
#[derive(Debug)]
pub struct View {
    /// This router's node id.
    me: String,
    inner: RwLock<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Shards whose tenure is this router's now.
    held: std::collections::BTreeSet<u32>,
    /// Each shard's lease holder and fence, as last read.
    owners: BTreeMap<u32, (String, u64)>,
    /// Each live router's control address.
    controls: HashMap<String, String>,
}

/// Who holds a shard, as the control API tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// The holder's node id.
    pub node: String,
    /// Its control address, if it is live.
    pub control: Option<String>,
}

impl View {
    /// An empty view for the router `me`.
    pub fn new(me: &str) -> View {
        View {
            me: me.to_owned(),
            inner: RwLock::default(),
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

    pub(super) fn set_owners(&self, leases: Vec<Option<Lease>>) {
        self.write().owners = leases
            .into_iter()
            .enumerate()
            .filter_map(|(shard, lease)| lease.map(|l| (shard as u32, (l.node, l.fence))))
            .collect();
    }

    pub(super) fn set_held(&self, shard: u32, held: bool) {
        let mut inner = self.write();
        if held {
            inner.held.insert(shard);
        } else {
            inner.held.remove(&shard);
        }
    }

    /// Whether this router runs `shard` now.
    pub fn holds(&self, shard: u32) -> bool {
        self.read().held.contains(&shard)
    }

    /// Who holds `shard`'s lease, as last read (this router included).
    pub fn owner(&self, shard: u32) -> Option<Owner> {
        let inner = self.read();
        if inner.held.contains(&shard) {
            return Some(Owner {
                node: self.me.clone(),
                control: inner.controls.get(&self.me).cloned(),
            });
        }
        let (node, _) = inner.owners.get(&shard)?;
        Some(Owner {
            node: node.clone(),
            control: inner.controls.get(node).cloned(),
        })
    }
}
