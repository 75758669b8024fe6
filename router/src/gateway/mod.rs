//! The gateway side: everything from `GET /gateway/bot` to a `Dispatch` handed to delivery.
//!
//! A shard connects (`shard`), inflates what arrives (`inflater`), reads the envelope without a
//! JSON tree for `d` (`payload`), keeps its session (`session`), identifies through the
//! per-bucket queue (`identify`), paces what it sends (`command_limiter`), reacts to close
//! codes (`close_code`), and passes each event on as a `Dispatch` (`dispatch`). It knows
//! nothing of where events go: that is `delivery`'s.

pub(crate) mod bot_info;
pub(crate) mod close_code;
pub(crate) mod command_limiter;
mod connection;
pub(crate) mod dispatch;
pub(crate) mod handle;
pub(crate) mod identify;
pub(crate) mod inflater;
pub(crate) mod payload;
mod redial;
pub(crate) mod resume_url;
pub(crate) mod session;
pub(crate) mod shard;
pub(crate) mod tenure;
