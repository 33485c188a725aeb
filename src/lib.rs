//! # quotad — a rate-limit and quota daemon
//!
//! Layout (data flows one way: transport parses → engine decides → transport renders):
//!
//! - [`engine`]: the decision — clock, GCRA buckets, calendar months, the sharded key table and
//!   [`engine::Engine::check`]. No sockets, no async.
//! - [`keys`]: raw key format, generation and hashing; the public key record types.
//! - [`tiers`]: plan tiers, the built-ins and TOML tier files.
//! - [`store`]: the memory-mapped data files, their layout and checks, and the catalog file.
//! - [`protocol`]: the binary wire format and its pipelining client.
//! - [`server`]: the transports (HTTP check, admin API, health, metrics, OpenAPI; binary protocol).
//! - [`backend`]: the store a daemon runs on (this node's engine, or Redis shared by several nodes).
//! - [`metrics`]: counters and histograms in the Prometheus text format.
//! - [`cli`]: the command line (`quotad serve`).

#![warn(missing_docs)]
#![recursion_limit = "512"]

pub mod backend;
#[doc(hidden)]
pub mod benchkit;
pub mod cli;
pub mod engine;
#[doc(hidden)]
pub mod fuzzing;
pub mod keys;
pub mod metrics;
pub mod protocol;
pub mod server;
pub mod store;
pub mod tiers;

pub use engine::clock::{Clock, FakeClock, QuantaClock};
pub use engine::decision::{AuthFailure, Decision, LimitKind, LimitStatus, Verdict};
pub use engine::{Engine, EngineError, EngineOptions};
