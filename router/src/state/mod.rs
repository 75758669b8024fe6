//! What the router keeps on disk so that nothing is lost: resume checkpoints, the spool of
//! batches no endpoint could take, dead letters, the durable progress checkpoints are made
//! from, and the signed requests' spent ids (`request_ids`, the interface a cluster's Redis
//! implements too), with the REST limits and the sliding-window log they and the gateway's
//! command limiter count with (`sliding_log`).
//!
//! Owns file formats and atomic writes only; it imports nothing above it. When to write is
//! decided by delivery (spool, dead letters) and the composition root (checkpoints).

pub(crate) mod checkpoint;
pub(crate) mod dead_letter;
pub(crate) mod files;
pub(crate) mod progress;
pub(crate) mod request_ids;
pub(crate) mod rest_limits;
pub(crate) mod sliding_log;
pub(crate) mod spent_ids;
pub(crate) mod spool;
