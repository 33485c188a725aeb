//! A check on Redis: the node's cached record authenticates the key and runs the policy's gate;
//! one script call (or a lease) takes the cost; the policy's limits phase renders the figures
//! from the state the script returns, and checks that the script decided the same.

use std::sync::atomic::Ordering;

use redis::Value;

use super::cache::Cached;
use super::conn::{int, RedisError};
use super::layout;
use super::lease::Lease;
use super::options::{FailPolicy, Mode};
use super::record::Rec;
use super::{RedisStore, RECORD_RECHECK};
use crate::engine::admission::{self, Admitted, Grants, KeyView};
use crate::engine::bucket::Limit;
use crate::engine::catalog::Catalog;
use crate::engine::clock::NANOS_PER_SEC;
use crate::engine::decision::{AuthFailure, Decision, Verdict};
use crate::engine::limits::{self, Terms};
use crate::engine::month::MonthWindow;
use crate::engine::MAX_COST;
use crate::keys::KeyId;
use crate::tiers::MAX_LIMITS;

/// What the gate made of a check on this node's copy of the key's record.
struct Gate<'c> {
    /// The key's tier, if the catalog has it.
    tier_ix: Option<u16>,
    /// Whether the presented secret is the key's.
    authenticated: bool,
    /// What the gate admits (the tier the check runs under), or the verdict that refuses it
    /// before its limits.
    admitted: Result<Admitted<'c>, Verdict>,
}

pub(super) enum Outcome {
    Missing,
    Stale,
    State {
        granted: u64,
        used: u64,
        tat: [u64; MAX_LIMITS],
    },
}

/// The record, and the key as presented, as the policy's gate reads them.
fn key_view<'a>(rec: &'a Rec, presented: &'a str) -> KeyView<'a> {
    KeyView {
        presented,
        revoked: rec.revoked,
        expires_at_ns: admission::expiry_ns(rec.expires_at_s),
        grants: Grants::Names(&rec.scopes),
    }
}

impl RedisStore {
    pub(super) fn on_error(
        &self,
        e: &RedisError,
        id: KeyId,
        tier: Option<u16>,
        now_s: u64,
        known: bool,
    ) -> Decision {
        tracing::debug!(error = %e, key_id = %id, "check could not reach redis");
        if self.opts.fail == FailPolicy::Open && known {
            self.stats.fail_open.fetch_add(1, Ordering::Relaxed);
            return Decision::bare(Verdict::Allowed, Some(id), tier, now_s);
        }
        let mut d = Decision::bare(Verdict::Unavailable, Some(id), tier, now_s);
        d.retry_after = Some(1);
        d
    }

    /// The gate on `rec`, this node's copy of key `id`'s record: authenticates `raw` (whose fast
    /// digest is `fast`) and admits a check needing `scope` under `cat`. Both the lease path and
    /// the full path decide with it.
    fn gate<'c>(
        &self,
        id: KeyId,
        rec: &Rec,
        (raw, fast): (&str, u64),
        cat: &'c Catalog,
        scope: Option<&str>,
        now: u64,
    ) -> Gate<'c> {
        let tier_ix = cat.tier_index(&rec.tier);
        let authenticated = self.authenticate(id, rec, raw, fast, now);
        let admitted = if authenticated {
            admission::admit(
                &key_view(rec, raw),
                tier_ix.and_then(|t| cat.tier(t)),
                cat,
                scope,
                now,
            )
        } else {
            Err(Verdict::Unauthorized(AuthFailure::Unknown))
        };
        Gate {
            tier_ix,
            authenticated,
            admitted,
        }
    }

    /// Lease mode's fast path: a key whose record this node has cached, whose secret it has
    /// verified before, which passes the policy's gate and fits in the node's current lease, is
    /// decided here under one lock of the cache entry, without an await. `None`: the full path
    /// ([`Self::check_one`]) decides, with the same gate.
    pub(super) fn try_lease(
        &self,
        raw_key: Option<&str>,
        scope: Option<&str>,
        cost: u64,
    ) -> Option<Decision> {
        let Mode::Lease { size, .. } = self.opts.mode else {
            return None;
        };
        let now = self.clock.now_ns() / 1_000 * 1_000;
        let (raw, id) = admission::presented(raw_key).ok()?;
        let cost = cost.clamp(1, MAX_COST);
        let fast = self.digest.of(raw);
        let cat = self.catalog.load();
        let mut e = self.cache.get_mut(&id.0)?;
        let Cached {
            rec,
            fast: verified,
            fast_prev,
            lease,
            ..
        } = &mut *e;
        // Only a secret this node verified against this record: a first sight is hashed on the
        // full path.
        let known =
            fast != 0 && (*verified == fast || (*fast_prev == fast && now < rec.prev_until_ns));
        if !known {
            return None;
        }
        let tier_ix = cat.1.tier_index(&rec.tier)?;
        let admitted =
            admission::admit(&key_view(rec, raw), cat.1.tier(tier_ix), &cat.1, scope, now).ok()?;
        let month = MonthWindow::containing(now).id;
        let version = admitted.tier.version;
        let (mut d, renew) = lease
            .as_mut()?
            .spend((tier_ix, version), cost, now, month, size)?;
        if renew {
            drop(e);
            self.ask_renewal(id);
        }
        self.stats.local_spends.fetch_add(1, Ordering::Relaxed);
        d.sunset = admitted.sunset;
        Some(d)
    }

    /// Decides whether `raw_key` may make a call needing `scope` at `cost`: the same order and
    /// figures as the local store, counted in Redis.
    pub(super) async fn check_one(
        &self,
        raw_key: Option<&str>,
        known: Option<KeyId>,
        scope: Option<&str>,
        cost: u64,
    ) -> Decision {
        let now_ns = self.clock.now_ns();
        // Microsecond resolution throughout, so Rust and the script see the same instants.
        let now_us = now_ns / 1_000;
        let now = now_us * 1_000;
        let now_s = now / NANOS_PER_SEC;
        let unauthorized =
            |why, id, tier| Decision::bare(Verdict::Unauthorized(why), id, tier, now_s);
        // `known`: an imported key's id, found by its digest (else the key names it).
        let (raw, id) = match (known, admission::presented(raw_key)) {
            (Some(id), _) => (raw_key.unwrap_or(""), id),
            (None, Ok(p)) => p,
            (None, Err(why)) => return unauthorized(why, None, None),
        };
        let cost = cost.clamp(1, MAX_COST);
        let fast = self.digest.of(raw);
        let mut refreshed = false;
        for _ in 0..4 {
            let cached = self.cache.get(&id.0).map(|e| (e.rec.clone(), e.fetched_ns));
            let (rec, fetched) = match cached {
                Some(c) => c,
                None => match self.fetch_or_answer(id, None, now_s, false).await {
                    Ok(r) => {
                        refreshed = true;
                        (r, now_ns)
                    }
                    Err(d) => return d,
                },
            };
            // A denial decided from a copy older than RECORD_RECHECK re-reads it first.
            let stale =
                !refreshed && now_ns.saturating_sub(fetched) >= RECORD_RECHECK.as_nanos() as u64;
            let mut cat_arc = self.catalog.load_full();
            if cat_arc.1.tier_index(&rec.tier).is_none() {
                // A tier created on another node since our last poll: read the catalog now.
                if let Err(e) = self.poll_catalog().await {
                    return self.on_error(
                        &RedisError::Reply(e.to_string()),
                        id,
                        None,
                        now_s,
                        false,
                    );
                }
                cat_arc = self.catalog.load_full();
            }
            let Gate {
                tier_ix,
                authenticated,
                admitted,
            } = self.gate(id, &rec, (raw, fast), &cat_arc.1, scope, now);
            let (tier, sunset) = match admitted {
                Ok(a) => (a.tier, a.sunset),
                Err(v) => {
                    if stale && !matches!(v, Verdict::Unauthorized(AuthFailure::Revoked)) {
                        if let Err(d) = self.fetch_or_answer(id, tier_ix, now_s, false).await {
                            return d;
                        }
                        refreshed = true;
                        continue;
                    }
                    let tier = tier_ix.and_then(|t| admission::reported_tier(v, t));
                    // A key refused before it is authenticated names no key.
                    let who = authenticated.then_some(id);
                    return Decision::bare(v, who, tier, now_s);
                }
            };
            let Some(tier_ix) = tier_ix else {
                return unauthorized(AuthFailure::Unknown, Some(id), None);
            };
            let quota = limits::quota_of(rec.quota, tier);
            let month = MonthWindow::containing(now);
            // A tier counting by consumer spends the group's hash, exactly: leases per key would
            // strand the group's tokens across its keys and nodes.
            let group = tier
                .counts_by_consumer()
                .then(|| self.k_group(tier_ix, &rec.consumer));
            if let (Mode::Lease { .. }, None) = (self.opts.mode, &group) {
                if let Some(mut d) =
                    self.spend_lease(id, rec.version, (tier_ix, tier), cost, now, month.id)
                {
                    d.sunset = sunset;
                    return d;
                }
            }
            // The tier's limits at the script's resolution: sent to it and used to decide.
            let limits: Vec<Limit> = tier.limits.iter().map(Limit::to_micros).collect();
            let want = match (self.opts.mode, &group) {
                (Mode::Lease { size, .. }, None) => size.max(cost),
                _ => cost,
            };
            let counted = (&limits[..], quota, month.id);
            match self
                .run_check(id, &rec, group.as_deref(), counted, (cost, want), now_us)
                .await
            {
                Err(e) => return self.on_error(&e, id, Some(tier_ix), now_s, true),
                Ok(Outcome::Missing) => {
                    self.cache.remove(&id.0);
                    return unauthorized(AuthFailure::Unknown, None, None);
                }
                Ok(Outcome::Stale) => {
                    self.stats.stale_records.fetch_add(1, Ordering::Relaxed);
                    if let Err(d) = self.fetch_or_answer(id, Some(tier_ix), now_s, true).await {
                        return d;
                    }
                    refreshed = true;
                    continue;
                }
                Ok(Outcome::State { granted, used, tat }) => {
                    let mut tat_ns = [0u64; MAX_LIMITS];
                    for (d, s) in tat_ns.iter_mut().zip(tat) {
                        *d = s.saturating_mul(1_000);
                    }
                    let mut d = Decision::bare(Verdict::Allowed, Some(id), Some(tier_ix), now_s);
                    d.sunset = sunset;
                    let terms = Terms {
                        limits: &limits,
                        quota,
                        month: &month,
                        enforce: tier.enforces(self.opts.shadow),
                    };
                    if granted <= cost {
                        let admitted = limits::decide(&tat_ns, used, now, cost, &terms, &mut d);
                        if admitted.is_some() != (granted > 0) {
                            // The script and `spend::decide` implement one rule; a difference is
                            // a bug, reported rather than hidden.
                            tracing::error!(key_id = %id, granted, "redis script and engine disagree");
                        }
                        return d;
                    }
                    // A lease: the figures count the tokens this node holds as available (to this
                    // node), i.e. as if only this request's cost had left Redis; each local spend
                    // then subtracts its cost from them.
                    limits::decide(&tat_ns, used, now, cost, &terms, &mut d);
                    let left = granted - cost;
                    self.stats.leases_taken.fetch_add(1, Ordering::Relaxed);
                    if let Mode::Lease { ttl, .. } = self.opts.mode {
                        if let Some(mut e) = self.cache.get_mut(&id.0) {
                            let old = e.lease.take();
                            e.lease = Some(Lease {
                                left,
                                month: month.id,
                                until_ns: now.saturating_add(ttl.as_nanos() as u64),
                                tier: tier_ix,
                                version: tier.version,
                                template: d,
                                spent: 0,
                                renewing: false,
                            });
                            drop(e);
                            self.leased.lock().insert(id.0);
                            if let Some(old) = old.filter(|o| o.left > 0) {
                                self.give_back(id, &old).await;
                            }
                        }
                    }
                    return d;
                }
            }
        }
        // The record kept changing between read and check: say so rather than guess.
        self.on_error(
            &RedisError::Reply("key record changed during the check".into()),
            id,
            None,
            now_s,
            false,
        )
    }

    /// Runs the check script on key `id`'s hash, or on `group`'s (a tier counting by consumer):
    /// takes `cost`, or up to `want` tokens as a lease, under `limits`, `quota` and `month`.
    pub(super) async fn run_check(
        &self,
        id: KeyId,
        rec: &Rec,
        group: Option<&str>,
        (limits, quota, month): (&[Limit], Option<u64>, u32),
        (cost, want): (u64, u64),
        now_us: u64,
    ) -> Result<Outcome, RedisError> {
        if let Some(group) = group {
            return self
                .run_group_check(id, rec, group, (limits, quota, month), cost, now_us)
                .await;
        }
        let mut inv = self.check.key(self.k_key(id.slot()));
        layout::check_args(
            &mut inv,
            Some(rec.version),
            (now_us, cost, want),
            (limits, quota, month),
        );
        let mut c = self.conn();
        let v: Vec<Value> = self.call(inv.invoke_async(&mut c)).await?;
        outcome(&v, limits.len())
    }
}

/// What the check script's answer `v` says, for a tier of `n` limits.
pub(super) fn outcome(v: &[Value], n: usize) -> Result<Outcome, RedisError> {
    let bad = || RedisError::Reply(format!("check script returned {v:?}"));
    match v.first().and_then(int) {
        Some(0) => Ok(Outcome::Missing),
        Some(1) => Ok(Outcome::Stale),
        Some(2) => {
            let granted = v.get(1).and_then(int).ok_or_else(bad)?;
            let used = v.get(2).and_then(int).ok_or_else(bad)?;
            let mut tat = [0u64; MAX_LIMITS];
            for (i, t) in tat.iter_mut().enumerate().take(n) {
                *t = v.get(3 + i).and_then(int).ok_or_else(bad)?.max(0) as u64;
            }
            Ok(Outcome::State {
                granted: granted.max(0) as u64,
                used: used.max(0) as u64,
                tat,
            })
        }
        _ => Err(bad()),
    }
}
