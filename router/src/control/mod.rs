//! The control surface: the HTTP API handlers and operators call (`api`), served within bounds
//! by `server`, the command ids it has spent (`replay`), and the Prometheus exposition of the shards' and pipeline's counters
//! (`metrics`).
//!
//! It reads shards and delivery through their handles and sends gateway commands through a
//! shard's handle; it owns neither.

mod api;
pub(crate) mod metrics;
mod server;

#[cfg(feature = "fuzzing")]
pub(crate) use api::{parse_command, MAX_COMMAND_BYTES};
pub use api::{rest_app, ControlState, MAX_BODY_BYTES};
pub use server::{serve, serve_app};
