//! The public view of a key: what an operator creates, reads and changes. The raw key never
//! appears here except in the one value returned by creation or rotation.

use super::KeyId;

/// The longest consumer name (bytes).
pub const MAX_CONSUMER_LEN: usize = 64;
/// The longest key name (bytes).
pub const MAX_KEY_NAME_LEN: usize = 56;
/// The most scopes one key may list.
pub const MAX_KEY_SCOPES: usize = 64;

/// What is needed to create a key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewKey {
    /// Who the key belongs to.
    pub consumer: String,
    /// The tier's name.
    pub tier: String,
    /// Scopes granted; empty = unrestricted.
    pub scopes: Vec<String>,
    /// Expiry, Unix seconds.
    pub expires_at: Option<u64>,
    /// Monthly quota overriding the tier's.
    pub monthly_quota: Option<u64>,
    /// A label for humans.
    pub name: Option<String>,
    /// Raw-key prefix; default `qd_`.
    pub prefix: Option<String>,
    /// An existing key brought in as it is (no secret is generated).
    pub import: Option<Imported>,
}

/// A key issued elsewhere, brought in by its SHA-256: the raw key, if the importer had it, was
/// hashed and dropped at the door.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imported {
    /// `SHA-256(raw key)`.
    pub hash: [u8; 32],
    /// What listings show of it (at most 16 characters, never the whole key).
    pub display_prefix: String,
}

/// A change to a key; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyUpdate {
    /// New tier.
    pub tier: Option<String>,
    /// New scopes (empty = unrestricted).
    pub scopes: Option<Vec<String>>,
    /// New expiry (`Some(None)` clears it).
    pub expires_at: Option<Option<u64>>,
    /// New quota override (`Some(None)` clears it).
    pub monthly_quota: Option<Option<u64>>,
    /// New name (`Some(None)` clears it).
    pub name: Option<Option<String>>,
}

/// A key record as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    /// Stable id.
    pub id: KeyId,
    /// Display prefix of the current secret (no secret bits).
    pub prefix: String,
    /// Owner.
    pub consumer: String,
    /// Tier name.
    pub tier: String,
    /// Scopes; empty = unrestricted.
    pub scopes: Vec<String>,
    /// Expiry, Unix seconds.
    pub expires_at: Option<u64>,
    /// Quota override.
    pub monthly_quota: Option<u64>,
    /// Label.
    pub name: Option<String>,
    /// Creation, Unix seconds.
    pub created_at: u64,
    /// Whether revoked.
    pub revoked: bool,
    /// The previous secret works until then (Unix seconds), after a rotation with grace.
    pub previous_valid_until: Option<u64>,
}

/// A new key: its record and the raw key, which is never shown again.
#[derive(Debug, Clone)]
pub struct CreatedKey {
    /// The record.
    pub info: KeyInfo,
    /// The raw key.
    pub raw: String,
}

/// Live figures of one limit of one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitUsage {
    /// Requests per period.
    pub requests: u64,
    /// Period in seconds.
    pub period_seconds: u64,
    /// Tokens left now.
    pub remaining: u64,
    /// When the bucket is full again, Unix seconds.
    pub reset: u64,
}

/// Which counters a reset sets back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reset {
    /// Every burst window to full.
    pub burst: bool,
    /// The month's usage to 0.
    pub monthly: bool,
}

/// Live usage of one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Usage {
    /// Each burst limit of the key's tier.
    pub limits: Vec<LimitUsage>,
    /// Requests counted this calendar month.
    pub monthly_used: u64,
    /// The quota in force (override or tier); `None` = unlimited.
    pub monthly_quota: Option<u64>,
    /// Last admitted request, Unix seconds.
    pub last_used_at: Option<u64>,
}
