//! # quotad — a rate-limit and quota daemon
//!
//! Layout (imports run one way: `cli` → `server` → `store` → `engine` → `keys`, `tiers`):
//!
//! - [`engine`]: the policy, pure: the admission gate, GCRA buckets, calendar months, the limits
//!   phase and the [`Decision`] it produces. No files, locks, sockets or threads.
//! - [`keys`]: raw key format, generation and hashing; the public key record types.
//! - [`tiers`]: plan tiers, the built-ins and TOML tier files.
//! - [`store`]: the [`Store`] trait and its two implementations, [`LocalStore`] (memory-mapped
//!   files, one node) and [`RedisStore`] (several nodes sharing Redis).
//! - [`protocol`]: the binary wire format, a connection over it and a pipelining client.
//! - [`server`]: the transports (HTTP check, admin API, health, metrics, OpenAPI; binary
//!   protocol), each holding a store.
//! - [`metrics`]: counters and histograms in the Prometheus text format.
//! - `cli`: the command line (`quotad serve`, `quotad keys`, `quotad bench`, ...).

#![warn(missing_docs)]
#![recursion_limit = "512"]

#[doc(hidden)] // the binary's command line, not an API
pub mod cli;
pub mod engine;
pub mod keys;
pub mod metrics;
pub mod protocol;
pub mod server;
pub mod store;
pub mod tiers;

pub use engine::clock::{Clock, FakeClock, QuantaClock};
pub use engine::decision::{AuthFailure, Decision, LimitKind, LimitStatus, Verdict};
pub use store::{
    CheckRequest, Identity, LocalOptions, LocalStore, RedisOptions, RedisStore, Store, StoreError,
};
