//! How to reach Redis and how to behave on it: exact or lease mode, fail-closed or fail-open,
//! timeouts, and the replica acknowledgements admin changes wait for.

use std::time::Duration;

use crate::tiers::TierSpec;

/// How checks use Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Every check is one script call: never more than the limits, across any number of nodes.
    Exact,
    /// A node takes up to `size` tokens at once and spends them locally for at most `ttl`.
    Lease {
        /// Most tokens one lease takes.
        size: u64,
        /// How long a node may spend a lease before giving back the rest.
        ttl: Duration,
    },
}

/// What a check does when Redis cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailPolicy {
    /// Deny with `unavailable` (HTTP 503).
    Closed,
    /// Admit keys this node has authenticated before (counted in `quotad_store_fail_open_total`).
    Open,
}

/// How to reach Redis and behave on it.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// `redis://HOST:PORT` or `redis-cluster://HOST:PORT,HOST:PORT,…`; `rediss` for TLS
    /// (`rediss://`, `rediss-cluster://`); `USER:PASSWORD@` before the first host for Redis AUTH.
    /// Never printed as given: see [`RedisOptions::shown_url`].
    pub url: String,
    /// PEM certificates that a TLS Redis's certificate must chain to, instead of the system's
    /// roots (`--redis-ca`).
    pub ca_pem: Option<Vec<u8>>,
    /// Key-name prefix, so that several deployments can share one Redis.
    pub namespace: String,
    /// Exact or lease.
    pub mode: Mode,
    /// Fail closed or open.
    pub fail: FailPolicy,
    /// Timeout of one Redis call.
    pub timeout: Duration,
    /// How often the catalog revision is polled (and Redis's reachability probed).
    pub poll: Duration,
    /// Tiers to put in force at start-up (a tiers file), replacing the stored ones.
    pub tiers: Option<Vec<TierSpec>>,
    /// Replicas that must acknowledge an admin change (key or tier) before the call returns
    /// (Redis `WAIT`); 0 = none. Default: 1 on a cluster, 0 on one server.
    pub replica_acks: u32,
    /// How long an admin change waits for those acknowledgements. If they do not come, the
    /// change stands on the master, the call succeeds, and the shortfall is logged and counted
    /// in `quotad_store_unreplicated_changes_total`.
    pub replica_wait: Duration,
    /// Every tier in shadow mode, whatever its `enforce` says (`quotad serve --shadow`).
    pub shadow: bool,
}

impl RedisOptions {
    /// Defaults for `url`: namespace `quotad`, exact, fail-closed, 500 ms timeout, 250 ms poll;
    /// on a cluster, admin changes wait up to 1 s for one replica.
    pub fn new(url: impl Into<String>) -> Self {
        let url: String = url.into();
        let replica_acks = u32::from(scheme(&url).is_some_and(|s| s.cluster));
        RedisOptions {
            url,
            ca_pem: None,
            namespace: "quotad".into(),
            mode: Mode::Exact,
            fail: FailPolicy::Closed,
            timeout: Duration::from_millis(500),
            poll: Duration::from_millis(250),
            tiers: None,
            replica_acks,
            replica_wait: Duration::from_secs(1),
            shadow: false,
        }
    }

    /// The URL with its password replaced by `***`, for logs and error messages.
    pub fn shown_url(&self) -> String {
        redact(&self.url)
    }

    /// How long a call on the admin connection may take: its own timeout, plus the wait for
    /// replicas that it (a `WAIT`) or an admin call queued before it (on the same connection)
    /// may spend.
    pub(super) fn admin_within(&self) -> Duration {
        if self.replica_acks > 0 {
            self.timeout + self.replica_wait
        } else {
            self.timeout
        }
    }
}

/// What a `--store` URL's scheme says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Scheme {
    /// A Redis Cluster (`redis-cluster`, `rediss-cluster`), else one server.
    pub(super) cluster: bool,
    /// TLS (`rediss`, `rediss-cluster`).
    pub(super) tls: bool,
}

/// The scheme of `url`, if it is one of quotad's four.
pub(super) fn scheme(url: &str) -> Option<Scheme> {
    let (cluster, tls) = match url.split_once("://")?.0 {
        "redis" => (false, false),
        "rediss" => (false, true),
        "redis-cluster" => (true, false),
        "rediss-cluster" => (true, true),
        _ => return None,
    };
    Some(Scheme { cluster, tls })
}

/// `url` with the password of its `USER:PASSWORD@` part replaced by `***`.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let Some((userinfo, hosts)) = rest.rsplit_once('@') else {
        return url.to_string();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{hosts}"),
        // `redis://PASSWORD@host` is a password alone.
        None => format!("{scheme}://***@{hosts}"),
    }
}

#[cfg(test)]
mod tests {
    use super::{redact, RedisOptions};

    #[test]
    fn a_cluster_waits_for_a_replica_by_default_with_or_without_tls() {
        for (url, acks) in [
            ("redis://h:1", 0),
            ("rediss://h:1", 0),
            ("redis-cluster://a:1,b:2", 1),
            ("rediss-cluster://u:p@a:1,b:2", 1),
        ] {
            assert_eq!(RedisOptions::new(url).replica_acks, acks, "{url}");
        }
    }

    #[test]
    fn passwords_never_show() {
        assert_eq!(redact("redis://h:1"), "redis://h:1");
        assert_eq!(redact("rediss://u:p@ss@h:1/0"), "rediss://u:***@h:1/0");
        assert_eq!(redact("redis://:secret@h:1"), "redis://:***@h:1");
        assert_eq!(redact("redis://secret@h:1"), "redis://***@h:1");
        assert_eq!(
            redact("rediss-cluster://app:pw@a:1,b:2"),
            "rediss-cluster://app:***@a:1,b:2"
        );
    }
}
