//! The catalog as stored (tiers by index, scope names, scope sets, limit versions) and the edits
//! an operator makes to it. Both stores keep this document (a file, a Redis hash); tier and
//! scope-set *positions* are what key records refer to, so entries are never reordered and a
//! deleted tier leaves `None` in its place.

use serde::{Deserialize, Serialize};

use super::PolicyError;
use crate::tiers::TierSpec;

/// Why a catalog could not be compiled or changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CatalogError {
    /// A tier's description is invalid.
    #[error(transparent)]
    Tier(#[from] crate::tiers::TierError),
    /// Two tiers with one name.
    #[error("tier {0:?} is defined twice")]
    DuplicateTier(String),
    /// Too many scopes, tiers or scope sets.
    #[error("too many {0}")]
    Full(&'static str),
}

/// The catalog as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CatalogDoc {
    /// Random id shared by every file of this data directory.
    pub data_dir_id: u64,
    /// Tiers by index; `None` where a tier was deleted.
    pub tiers: Vec<Option<TierSpec>>,
    /// Scope names by id.
    pub scopes: Vec<String>,
    /// Scope sets by index (sorted scope ids); set 0 is the empty (unrestricted) set.
    pub scope_sets: Vec<Vec<u16>>,
    /// Limit versions per tier index (parallel to `tiers`).
    #[serde(default)]
    pub tier_versions: Vec<TierVersions>,
    /// Key prefixes being retired, each with its sunset.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retired_prefixes: Vec<RetiredPrefix>,
}

/// A key prefix being retired (seed 004's legacy `tb_…`, `ss_live_…`): keys with it work until
/// `sunset_at`, their answers saying so, and are refused from then on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetiredPrefix {
    /// The start of the raw key, e.g. `tb_`.
    pub prefix: String,
    /// From then on (Unix seconds) such keys are refused.
    pub sunset_at: u64,
    /// When it was first retired (Unix seconds): the `Deprecation` date answers carry.
    pub deprecated_at: u64,
}

/// The longest prefix that can be retired.
pub const MAX_RETIRED_PREFIX: usize = 32;
/// The most prefixes retired at once (each is compared on a check of a key it may match).
pub const MAX_RETIRED_PREFIXES: usize = 64;

/// Retires `prefix` at `sunset_at` (or moves its sunset), as of `now` (Unix seconds).
pub fn retire_prefix_in(
    doc: &mut CatalogDoc,
    prefix: &str,
    sunset_at: u64,
    now: u64,
) -> Result<RetiredPrefix, PolicyError> {
    if prefix.is_empty()
        || prefix.len() > MAX_RETIRED_PREFIX
        || !prefix.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(PolicyError::Invalid(format!(
            "a prefix is 1-{MAX_RETIRED_PREFIX} visible ASCII characters"
        )));
    }
    let mut r = RetiredPrefix {
        prefix: prefix.to_string(),
        sunset_at,
        deprecated_at: now,
    };
    let full = doc.retired_prefixes.len() >= MAX_RETIRED_PREFIXES;
    match doc.retired_prefixes.iter_mut().find(|p| p.prefix == prefix) {
        Some(p) => {
            r.deprecated_at = p.deprecated_at;
            *p = r.clone();
        }
        None if full => return Err(CatalogError::Full("retired prefixes").into()),
        None => doc.retired_prefixes.push(r.clone()),
    }
    Ok(r)
}

/// Takes `prefix` off the retired list: its keys work as before.
pub fn restore_prefix_in(doc: &mut CatalogDoc, prefix: &str) -> Result<(), PolicyError> {
    let before = doc.retired_prefixes.len();
    doc.retired_prefixes.retain(|p| p.prefix != prefix);
    if doc.retired_prefixes.len() == before {
        return Err(PolicyError::UnknownPrefix(prefix.to_string()));
    }
    Ok(())
}

/// The versions of one tier's burst limits: counters record the version they were written under,
/// so a change of limits converts them instead of resetting them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TierVersions {
    /// The version of the limits in force.
    pub current: u16,
    /// Earlier versions, oldest first (at most `MAX_LIMIT_HISTORY`).
    pub previous: Vec<PastLimits>,
}

/// The limits a tier had at one version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PastLimits {
    /// The version.
    pub version: u16,
    /// Its limits.
    pub limits: Vec<crate::tiers::LimitSpec>,
}

/// How many earlier limit versions a tier remembers. A counter last written more changes ago than
/// this keeps its buckets' "full again at" instants instead of being converted.
pub const MAX_LIMIT_HISTORY: usize = 32;

impl CatalogDoc {
    /// A new catalog holding `tiers` and no scopes (scope set 0, the unrestricted one, only).
    pub fn new(data_dir_id: u64, tiers: Vec<TierSpec>) -> Self {
        CatalogDoc {
            data_dir_id,
            tiers: tiers.into_iter().map(Some).collect(),
            scopes: Vec::new(),
            scope_sets: vec![Vec::new()],
            tier_versions: Vec::new(),
            retired_prefixes: Vec::new(),
        }
    }

    /// Puts `spec` at tier index `ix` (which may be one past the end), bumping the limits version
    /// when the limits change.
    pub fn set_tier(&mut self, ix: usize, spec: TierSpec) {
        if self.tier_versions.len() < self.tiers.len() {
            self.tier_versions
                .resize(self.tiers.len(), TierVersions::default());
        }
        if ix >= self.tiers.len() {
            self.tiers.push(Some(spec));
            self.tier_versions.push(TierVersions::default());
            return;
        }
        let versions = &mut self.tier_versions[ix];
        if let Some(old) = &self.tiers[ix] {
            if old.limits != spec.limits {
                versions.previous.push(PastLimits {
                    version: versions.current,
                    limits: old.limits.clone(),
                });
                if versions.previous.len() > MAX_LIMIT_HISTORY {
                    versions.previous.remove(0);
                }
                versions.current = versions.current.wrapping_add(1);
            }
        }
        self.tiers[ix] = Some(spec);
    }
}

/// Returns the scope-set index for `names` in `doc`, adding scopes and the set as needed.
pub fn intern_scope_set(doc: &mut CatalogDoc, names: &[String]) -> Result<u32, CatalogError> {
    if doc.scope_sets.is_empty() {
        doc.scope_sets.push(Vec::new());
    }
    let mut ids = Vec::with_capacity(names.len());
    for n in names {
        let id = match doc.scopes.iter().position(|s| s == n) {
            Some(i) => i as u16,
            None => {
                let id =
                    u16::try_from(doc.scopes.len()).map_err(|_| CatalogError::Full("scopes"))?;
                doc.scopes.push(n.clone());
                id
            }
        };
        ids.push(id);
    }
    ids.sort_unstable();
    ids.dedup();
    if let Some(i) = doc.scope_sets.iter().position(|s| *s == ids) {
        return Ok(i as u32);
    }
    let i = u32::try_from(doc.scope_sets.len()).map_err(|_| CatalogError::Full("scope sets"))?;
    doc.scope_sets.push(ids);
    Ok(i)
}

/// Creates or replaces the tier `spec` in `doc` (an existing tier keeps its index); `use_`:
/// keys per tier index.
pub fn put_tier_in(doc: &mut CatalogDoc, use_: &[u64], spec: &TierSpec) -> Result<(), PolicyError> {
    let ix = doc
        .tiers
        .iter()
        .position(|t| t.as_ref().is_some_and(|t| t.name == spec.name))
        .unwrap_or(doc.tiers.len());
    if ix >= usize::from(u16::MAX) {
        return Err(CatalogError::Full("tiers").into());
    }
    count_by_unchanged_in_use(doc, use_, ix, spec)?;
    doc.set_tier(ix, spec.clone());
    Ok(())
}

/// Refuses to change the `countBy` of tier `ix` while keys use it: their counters would have
/// to be merged (to consumer) or split (to key), and neither has one right answer. An operator
/// moves the keys to a new tier instead, or empties the tier first.
fn count_by_unchanged_in_use(
    doc: &CatalogDoc,
    use_: &[u64],
    ix: usize,
    spec: &TierSpec,
) -> Result<(), PolicyError> {
    let Some(Some(old)) = doc.tiers.get(ix) else {
        return Ok(());
    };
    let keys = use_.get(ix).copied().unwrap_or(0);
    if old.count_by != spec.count_by && keys > 0 {
        return Err(PolicyError::Conflict(format!(
            "tier {:?} counts by {} and {keys} key(s) use it: countBy can change only on a tier \
             no key uses (move its keys to a tier counting by {} instead)",
            spec.name,
            old.count_by.as_str(),
            spec.count_by.as_str()
        )));
    }
    Ok(())
}

/// Deletes tier `name` from `doc`, refused while `use_` (keys per tier index) says keys use it.
pub fn delete_tier_in(doc: &mut CatalogDoc, use_: &[u64], name: &str) -> Result<(), PolicyError> {
    let ix = doc
        .tiers
        .iter()
        .position(|t| t.as_ref().is_some_and(|t| t.name == name))
        .ok_or_else(|| PolicyError::UnknownTier(name.to_string()))?;
    let keys = use_.get(ix).copied().unwrap_or(0);
    if keys > 0 {
        return Err(PolicyError::TierInUse {
            tier: name.to_string(),
            keys,
        });
    }
    doc.tiers[ix] = None;
    Ok(())
}

/// Replaces the tiers of `doc` by `specs`, keeping the index of every tier that stays.
pub fn replace_tiers(
    doc: &mut CatalogDoc,
    use_: &[u64],
    specs: Vec<TierSpec>,
) -> Result<(), PolicyError> {
    let mut specs: Vec<TierSpec> = specs.into_iter().map(TierSpec::normalized).collect();
    for s in &specs {
        s.validate().map_err(CatalogError::from)?;
    }
    for ix in 0..doc.tiers.len() {
        let Some(old_name) = doc.tiers[ix].as_ref().map(|t| t.name.clone()) else {
            continue;
        };
        match specs.iter().position(|s| s.name == old_name) {
            Some(p) => {
                let spec = specs.remove(p);
                count_by_unchanged_in_use(doc, use_, ix, &spec)?;
                doc.set_tier(ix, spec);
            }
            None => {
                let keys = use_.get(ix).copied().unwrap_or(0);
                if keys > 0 {
                    return Err(PolicyError::TierInUse {
                        tier: old_name,
                        keys,
                    });
                }
                doc.tiers[ix] = None;
            }
        }
    }
    for s in specs {
        if doc.tiers.iter().flatten().any(|t| t.name == s.name) {
            return Err(CatalogError::DuplicateTier(s.name).into());
        }
        if doc.tiers.len() >= usize::from(u16::MAX) {
            return Err(CatalogError::Full("tiers").into());
        }
        let ix = doc.tiers.len();
        doc.set_tier(ix, s);
    }
    Ok(())
}
