//! What a key must satisfy to be created or changed, and the new secret of a rotation: the
//! rules both stores apply before they write anything.

use super::clock::NANOS_PER_SEC;
use super::PolicyError;
use crate::keys::format as keyfmt;
use crate::keys::record::{KeyUpdate, NewKey, MAX_CONSUMER_LEN, MAX_KEY_NAME_LEN, MAX_KEY_SCOPES};
use crate::keys::KeyId;
use crate::tiers;

/// 64 random bits from the OS.
pub fn random_u64() -> Result<u64, PolicyError> {
    let mut b = [0u8; 8];
    getrandom::getrandom(&mut b)
        .map_err(|e| PolicyError::Invalid(format!("OS random source failed: {e}")))?;
    Ok(u64::from_le_bytes(b))
}

/// Checks a new key's consumer, name, scopes and prefix.
pub fn validate_new(k: &NewKey) -> Result<(), PolicyError> {
    if k.consumer.is_empty() || k.consumer.len() > MAX_CONSUMER_LEN || k.consumer.contains('\0') {
        return Err(PolicyError::Invalid(format!(
            "consumer must be 1-{MAX_CONSUMER_LEN} bytes without NUL"
        )));
    }
    validate_name(k.name.as_deref())?;
    validate_scopes(&k.scopes)?;
    validate_quota(k.monthly_quota)?;
    if let Some(i) = &k.import {
        let d = &i.display_prefix;
        if d.is_empty() || d.len() > 16 || !d.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(PolicyError::Invalid(
                "prefix of an imported key must be 1-16 visible ASCII characters".into(),
            ));
        }
        if k.prefix.is_some() {
            return Err(PolicyError::Invalid(
                "an imported key keeps its own form: no prefix to generate with".into(),
            ));
        }
    }
    if let Some(p) = &k.prefix {
        if !keyfmt::valid_prefix(p) {
            return Err(PolicyError::Invalid(format!(
                "prefix must be at most {} characters of A-Z a-z 0-9 _ -",
                keyfmt::MAX_PREFIX_LEN
            )));
        }
    }
    Ok(())
}

/// Refuses a key-level monthly quota on a tier counting by consumer: its keys spend one shared
/// quota, so a key's own figure would either be ignored or let one key spend the others'.
pub fn fits_tier(tier: &tiers::TierSpec, monthly_quota: Option<u64>) -> Result<(), PolicyError> {
    if tier.count_by == tiers::CountBy::Consumer && monthly_quota.is_some() {
        return Err(PolicyError::Invalid(format!(
            "tier {:?} counts by consumer: its keys share the tier's monthly quota, so a key \
             cannot have a monthlyQuota of its own (set it on the tier, or use a tier counting \
             by key)",
            tier.name
        )));
    }
    Ok(())
}

/// Checks what a key update changes (the tier is checked against the catalog by the store).
pub fn validate_update(u: &KeyUpdate) -> Result<(), PolicyError> {
    if let Some(s) = &u.scopes {
        validate_scopes(s)?;
    }
    if let Some(n) = &u.name {
        validate_name(n.as_deref())?;
    }
    validate_quota(u.monthly_quota.flatten())
}

/// Checks a key's monthly quota override: at most [`tiers::MAX_QUOTA`] (a larger one could not
/// be told from "no override" by one store, nor counted exactly by the other).
pub fn validate_quota(quota: Option<u64>) -> Result<(), PolicyError> {
    match quota {
        Some(q) if q > tiers::MAX_QUOTA => Err(PolicyError::Invalid(format!(
            "monthlyQuota {q} is above the maximum, {}",
            tiers::MAX_QUOTA
        ))),
        _ => Ok(()),
    }
}

/// Checks a key's scope list.
pub fn validate_scopes(scopes: &[String]) -> Result<(), PolicyError> {
    if scopes.len() > MAX_KEY_SCOPES {
        return Err(PolicyError::Invalid(format!(
            "at most {MAX_KEY_SCOPES} scopes per key"
        )));
    }
    if let Some(bad) = scopes.iter().find(|s| !tiers::valid_scope(s)) {
        return Err(PolicyError::Invalid(format!(
            "invalid scope {bad:?}: use 1-64 characters of A-Z a-z 0-9 _ - . : /"
        )));
    }
    Ok(())
}

/// Checks a key's optional display name.
pub fn validate_name(name: Option<&str>) -> Result<(), PolicyError> {
    match name {
        Some(n) if n.len() > MAX_KEY_NAME_LEN || n.contains('\0') => Err(PolicyError::Invalid(
            format!("name must be at most {MAX_KEY_NAME_LEN} bytes without NUL"),
        )),
        _ => Ok(()),
    }
}

/// A new key's raw secret (returned once) and what its record keeps of it.
#[derive(Debug)]
pub struct NewSecret {
    /// The raw key: handed to the caller, never stored.
    pub raw: String,
    /// Its SHA-256.
    pub hash: [u8; 32],
    /// The prefix shown in listings.
    pub display_prefix: String,
    /// Until when the previous secret still works (0 = not at all).
    pub previous_valid_until_ns: u64,
}

/// The longest a rotated-out secret may keep working: a year.
pub const MAX_GRACE_SECS: u64 = 365 * 24 * 3600;

impl NewSecret {
    /// A fresh secret for key `id` with `prefix`.
    pub fn generate(prefix: &str, id: KeyId) -> Result<Self, PolicyError> {
        let raw = keyfmt::generate(prefix, id)
            .map_err(|e| PolicyError::Invalid(format!("OS random source failed: {e}")))?;
        Ok(NewSecret {
            hash: keyfmt::hash(&raw),
            display_prefix: keyfmt::display_prefix(&raw),
            previous_valid_until_ns: 0,
            raw,
        })
    }

    /// A new secret for key `id` with `prefix` (the one its current secret has, whole), the old
    /// one honoured `grace_secs` (at most [`MAX_GRACE_SECS`]) from `now`.
    pub fn for_rotation(
        prefix: &str,
        id: KeyId,
        grace_secs: u64,
        now: u64,
    ) -> Result<Self, PolicyError> {
        if grace_secs > MAX_GRACE_SECS {
            return Err(PolicyError::Invalid(format!(
                "graceSeconds must be at most {MAX_GRACE_SECS} (a year), got {grace_secs}"
            )));
        }
        let mut s = Self::generate(prefix, id)?;
        if grace_secs != 0 {
            s.previous_valid_until_ns =
                now.saturating_add(grace_secs.saturating_mul(NANOS_PER_SEC));
        }
        Ok(s)
    }
}
