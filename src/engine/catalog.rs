//! The compiled catalog: tiers by index and scope names interned to small ids, as one immutable
//! snapshot the hot path reads through an `ArcSwap` (a change builds a new snapshot).

use std::collections::HashMap;

use super::bucket::Limit;
use super::catalog_doc::{CatalogDoc, CatalogError, RetiredPrefix};
use crate::tiers::TierSpec;

/// A tier ready for checks.
#[derive(Debug, Clone)]
pub struct CompiledTier {
    /// The description it came from (normalized).
    pub spec: TierSpec,
    /// Burst limits, shortest period first.
    pub limits: Vec<Limit>,
    /// Scope ids the tier includes, sorted; `None` = every scope.
    pub scopes: Option<Box<[u16]>>,
    /// The version of `limits`.
    pub version: u16,
    /// Earlier versions of the limits (sorted by period each).
    pub history: Vec<(u16, Vec<Limit>)>,
}

impl CompiledTier {
    /// Whether the tier's limits and quota deny (`false`: shadow mode), unless `shadow_all`
    /// puts every tier in shadow mode.
    #[inline]
    pub fn enforces(&self, shadow_all: bool) -> bool {
        self.spec.enforce && !shadow_all
    }

    /// Whether every key of one consumer on this tier spends one set of counters
    /// (`countBy: consumer`).
    #[inline]
    pub fn counts_by_consumer(&self) -> bool {
        self.spec.count_by == crate::tiers::CountBy::Consumer
    }

    /// The limits this tier had at `version`, if remembered.
    pub fn limits_at(&self, version: u16) -> Option<&[Limit]> {
        if version == self.version {
            return Some(&self.limits);
        }
        self.history
            .iter()
            .rev()
            .find(|(v, _)| *v == version)
            .map(|(_, l)| l.as_slice())
    }
}

/// An immutable snapshot of tiers and scopes.
#[derive(Debug, Clone)]
pub struct Catalog {
    doc: CatalogDoc,
    tiers: Vec<Option<CompiledTier>>,
    /// Looked up on every check on the Redis store: foldhash, not SipHash, as below.
    tier_by_name: HashMap<String, u16, foldhash::fast::RandomState>,
    /// Looked up on every check that names a scope: foldhash, not SipHash (the map is built
    /// from operator-defined names, not attacker input).
    scope_ids: HashMap<String, u16, foldhash::fast::RandomState>,
}

impl Catalog {
    /// Compiles `doc`, interning any scope a tier names that is not interned yet.
    pub fn compile(mut doc: CatalogDoc) -> Result<Self, CatalogError> {
        if doc.scope_sets.is_empty() {
            doc.scope_sets.push(Vec::new());
        }
        if doc.tier_versions.len() < doc.tiers.len() {
            doc.tier_versions
                .resize(doc.tiers.len(), Default::default());
        }
        let mut scope_ids: HashMap<String, u16, foldhash::fast::RandomState> =
            HashMap::with_capacity_and_hasher(doc.scopes.len(), Default::default());
        for (i, s) in doc.scopes.iter().enumerate() {
            scope_ids.insert(s.clone(), i as u16);
        }
        let mut tiers = Vec::with_capacity(doc.tiers.len());
        let mut tier_by_name: HashMap<String, u16, foldhash::fast::RandomState> =
            HashMap::with_capacity_and_hasher(doc.tiers.len(), Default::default());
        for (i, t) in doc.tiers.iter().enumerate() {
            let Some(spec) = t else {
                tiers.push(None);
                continue;
            };
            let limits = compile_limits(spec)?;
            let scopes = match &spec.scopes {
                None => None,
                Some(names) => {
                    let mut ids = Vec::with_capacity(names.len());
                    for n in names {
                        let id = match scope_ids.get(n) {
                            Some(&id) => id,
                            None => {
                                let id = u16::try_from(doc.scopes.len())
                                    .map_err(|_| CatalogError::Full("scopes"))?;
                                doc.scopes.push(n.clone());
                                scope_ids.insert(n.clone(), id);
                                id
                            }
                        };
                        ids.push(id);
                    }
                    ids.sort_unstable();
                    ids.dedup();
                    Some(ids.into_boxed_slice())
                }
            };
            if tier_by_name.insert(spec.name.clone(), i as u16).is_some() {
                return Err(CatalogError::DuplicateTier(spec.name.clone()));
            }
            let versions = &doc.tier_versions[i];
            let mut history = Vec::with_capacity(versions.previous.len());
            for past in &versions.previous {
                let old = TierSpec {
                    name: spec.name.clone(),
                    limits: past.limits.clone(),
                    monthly_quota: None,
                    scopes: None,
                    enforce: true,
                    count_by: Default::default(),
                };
                history.push((past.version, compile_limits(&old)?));
            }
            tiers.push(Some(CompiledTier {
                spec: spec.clone(),
                limits,
                scopes,
                version: versions.current,
                history,
            }));
        }
        Ok(Catalog {
            doc,
            tiers,
            tier_by_name,
            scope_ids,
        })
    }

    /// The stored form.
    pub fn doc(&self) -> &CatalogDoc {
        &self.doc
    }

    /// The limits tier `index` had at `version`, if the tier exists and remembers it.
    pub fn limits_at(&self, index: u16, version: u16) -> Option<&[Limit]> {
        self.tier(index)?.limits_at(version)
    }

    /// The tier at `index`.
    #[inline]
    pub fn tier(&self, index: u16) -> Option<&CompiledTier> {
        self.tiers.get(usize::from(index))?.as_ref()
    }

    /// The retired prefix `raw` starts with (the longest, if several).
    #[inline]
    pub fn retired_prefix(&self, raw: &str) -> Option<&RetiredPrefix> {
        if self.doc.retired_prefixes.is_empty() {
            return None;
        }
        self.doc
            .retired_prefixes
            .iter()
            .filter(|p| raw.starts_with(p.prefix.as_str()))
            .max_by_key(|p| p.prefix.len())
    }

    /// The index of the tier called `name`.
    pub fn tier_index(&self, name: &str) -> Option<u16> {
        self.tier_by_name.get(name).copied()
    }

    /// The description of every tier in force.
    pub fn specs(&self) -> Vec<TierSpec> {
        self.tiers().map(|(_, t)| t.spec.clone()).collect()
    }

    /// Every live tier with its index.
    pub fn tiers(&self) -> impl Iterator<Item = (u16, &CompiledTier)> {
        self.tiers
            .iter()
            .enumerate()
            .filter_map(|(i, t)| t.as_ref().map(|t| (i as u16, t)))
    }

    /// The id of scope `name`, if any key or tier has ever named it.
    #[inline]
    pub fn scope_id(&self, name: &str) -> Option<u16> {
        self.scope_ids.get(name).copied()
    }

    /// The scope ids of scope set `set` (empty = unrestricted).
    #[inline]
    pub fn scope_set(&self, set: u32) -> &[u16] {
        self.doc
            .scope_sets
            .get(set as usize)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// The names of scope set `set`.
    pub fn scope_names(&self, set: u32) -> Vec<String> {
        self.scope_set(set)
            .iter()
            .filter_map(|&id| self.doc.scopes.get(usize::from(id)).cloned())
            .collect()
    }

    /// Number of scope sets.
    pub fn scope_set_count(&self) -> usize {
        self.doc.scope_sets.len()
    }
}

/// The checked limits of `spec` as buckets, shortest period first.
fn compile_limits(spec: &TierSpec) -> Result<Vec<Limit>, CatalogError> {
    spec.validate()?
        .iter()
        .map(|l| {
            Limit::new(l.requests, l.period_seconds).map_err(|source| {
                CatalogError::Tier(crate::tiers::TierError::Limit {
                    tier: spec.name.clone(),
                    source,
                })
            })
        })
        .collect()
}
