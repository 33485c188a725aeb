//! The policy: what decides a check, as pure functions and types. No files, locks, sockets or
//! threads; every function is handed `now`. Both stores (`store::local`, `store::redis`) load a
//! key's state, ask this module, and save what it returns.
//!
//! - [`admission`]: the one gate (key presented → revoked → expired → tier → scope → plan).
//! - [`limits`]: the limits phase (every burst bucket and the monthly quota) and its figures.
//! - [`bucket`]: GCRA math; [`month`]: calendar months (UTC); [`clock`]: injected time.
//! - [`catalog`] / [`catalog_doc`]: tiers and scopes, compiled and as stored.
//! - [`decision`]: the answer every transport renders.
//! - [`key_rules`]: what a new or changed key must satisfy, and a rotated secret.

pub mod admission;
pub mod bucket;
pub mod catalog;
pub mod catalog_doc;
pub mod clock;
pub mod decision;
pub mod key_rules;
pub mod limits;
pub mod month;

use self::catalog_doc::CatalogError;

/// The most keys one store holds (key ids carry a 32-bit slot).
pub const MAX_KEYS: u64 = u32::MAX as u64;
/// The largest cost one check may ask for.
pub const MAX_COST: u64 = 1_000_000;

/// A change the policy refuses. Denied checks are not errors: they are [`decision::Decision`]s.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// No tier with that name.
    #[error("unknown tier {0:?}")]
    UnknownTier(String),
    /// No retired prefix with that name.
    #[error("prefix {0:?} is not retired")]
    UnknownPrefix(String),
    /// The tier is used by keys.
    #[error("tier {tier:?} is used by {keys} key(s)")]
    TierInUse {
        /// The tier.
        tier: String,
        /// How many keys use it.
        keys: u64,
    },
    /// A bad argument.
    #[error("{0}")]
    Invalid(String),
    /// What the change would create exists already (an imported key's secret).
    #[error("{0}")]
    Conflict(String),
    /// A bad tier or catalog change.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
}
