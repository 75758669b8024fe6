//! The control surface: the HTTP API handlers and operators call (`api`), the command ids it
//! has spent (`replay`), and the Prometheus exposition of the shards' and pipeline's counters
//! (`metrics`).
//!
//! It reads shards and delivery through their handles and sends gateway commands through a
//! shard's handle; it owns neither.

mod api;
pub(crate) mod metrics;
mod replay;

pub use api::{app, serve, ControlState};
pub use replay::{Claim, LocalIds, SpentIds};
