//! The one gate a check passes before its limits are looked at. Its order is the contract every
//! transport documents: a key is presented and well formed (else 401 `missing` / `malformed`),
//! authenticated (the store compares digests: 401 `unknown`), not revoked, not expired (401),
//! not of a retired prefix past its sunset (401 `key_format_deprecated`), on a tier that exists
//! (401 `unknown`), granted the route's scope (403 `forbidden`) and on a
//! plan that includes it (403 `plan_required`). Only then does [`super::limits::decide`] run.

use super::catalog::{Catalog, CompiledTier};
use super::clock::NANOS_PER_SEC;
use super::decision::{AuthFailure, Sunset, Verdict};
use crate::keys::format as keyfmt;
use crate::keys::KeyId;

/// The presented key and the id it names, or why it names none (missing, malformed).
#[inline]
pub fn presented(raw_key: Option<&str>) -> Result<(&str, KeyId), AuthFailure> {
    match raw_key {
        None | Some("") => Err(AuthFailure::Missing),
        Some(raw) => keyfmt::parse(raw)
            .map(|id| (raw, id))
            .map_err(|_| AuthFailure::Malformed),
    }
}

/// The scopes a key was granted, as its store keeps them. Empty means every scope.
#[derive(Debug, Clone, Copy)]
pub enum Grants<'a> {
    /// Scope ids of the catalog the check runs under (the memory-mapped store interns them).
    Ids(&'a [u16]),
    /// Scope names (the Redis store keeps them in the key's record).
    Names(&'a [String]),
}

/// What the gate reads of an authenticated key; each store fills one from its own record.
#[derive(Debug, Clone, Copy)]
pub struct KeyView<'a> {
    /// The raw key as presented (a retired prefix is a property of its form).
    pub presented: &'a str,
    /// Revoked by an operator.
    pub revoked: bool,
    /// The instant the key stops working, ns since the epoch (`u64::MAX`: never).
    pub expires_at_ns: u64,
    /// Its scopes.
    pub grants: Grants<'a>,
}

/// The instant a key stored with expiry `expires_at_s` (Unix seconds, 0 = never) stops working,
/// as [`KeyView::expires_at_ns`] holds it.
#[inline]
pub fn expiry_ns(expires_at_s: u64) -> u64 {
    if expires_at_s == 0 {
        u64::MAX
    } else {
        expires_at_s.saturating_mul(super::clock::NANOS_PER_SEC)
    }
}

/// What the gate admits: the tier whose limits apply, and the sunset of the key's prefix if it
/// is being retired.
#[derive(Debug, Clone, Copy)]
pub struct Admitted<'c> {
    /// The key's tier.
    pub tier: &'c CompiledTier,
    /// Its prefix works until then.
    pub sunset: Option<Sunset>,
}

/// Runs the gate for an authenticated key on `tier` (as the catalog resolves it; `None` when the
/// catalog has no such tier) asking for `scope` at `now_ns`. Returns what it admits, or the
/// verdict that refuses the check.
#[inline]
pub fn admit<'c>(
    key: &KeyView<'_>,
    tier: Option<&'c CompiledTier>,
    catalog: &Catalog,
    scope: Option<&str>,
    now_ns: u64,
) -> Result<Admitted<'c>, Verdict> {
    if key.revoked {
        return Err(Verdict::Unauthorized(AuthFailure::Revoked));
    }
    if now_ns >= key.expires_at_ns {
        return Err(Verdict::Unauthorized(AuthFailure::Expired));
    }
    // A retired prefix: refused from its sunset on, announced until then.
    let sunset = match catalog.retired_prefix(key.presented) {
        None => None,
        Some(p) if now_ns / NANOS_PER_SEC >= p.sunset_at => {
            return Err(Verdict::Unauthorized(AuthFailure::Deprecated))
        }
        Some(p) => Some(Sunset {
            at: p.sunset_at,
            deprecated_at: p.deprecated_at,
        }),
    };
    // Unreachable while tiers in use cannot be deleted; deny rather than admit.
    let tier = tier.ok_or(Verdict::Unauthorized(AuthFailure::Unknown))?;
    if let Some(scope) = scope {
        let sid = catalog.scope_id(scope);
        let granted = match key.grants {
            Grants::Ids(ids) => ids.is_empty() || sid.is_some_and(|s| ids.contains(&s)),
            Grants::Names(names) => names.is_empty() || names.iter().any(|g| g == scope),
        };
        if !granted {
            return Err(Verdict::Forbidden);
        }
        if let Some(plan) = &tier.scopes {
            if !sid.is_some_and(|s| plan.contains(&s)) {
                return Err(Verdict::PlanRequired);
            }
        }
    }
    Ok(Admitted { tier, sunset })
}

/// The tier a refusal reports: the key's, unless the key is treated as unknown.
#[inline]
pub fn reported_tier(refusal: Verdict, tier: u16) -> Option<u16> {
    match refusal {
        Verdict::Unauthorized(AuthFailure::Unknown) => None,
        _ => Some(tier),
    }
}
