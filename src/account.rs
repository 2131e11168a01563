//! An account: how it authenticates, its upstream settings, and the targets it yields.
//!
//! Everything below an account is fixed once it is built: the scheduler compares
//! accounts of two configurations by value to tell which targets changed, so a
//! target whose account did not change keeps its schedule, state and series.

use std::fmt;
use std::time::Duration;

use crate::config::Config;
use crate::upstream::{Auth, ClientConfig, Filters, UpstreamTls};

/// The name of the one account the flags describe.
pub const DEFAULT_ACCOUNT: &str = "default";

/// How often a target refreshes and how long its data lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefreshSettings {
    /// Time between the starts of two passes.
    pub interval: Duration,
    /// A datacenter's image series are dropped after this long without success.
    pub stale_after: Duration,
    /// A pass that takes longer fails with reason `timeout`: the backstop
    /// against a pass that never ends ([`RefreshSettings::default_timeout`]).
    pub timeout: Duration,
}

impl RefreshSettings {
    /// `refresh.timeout` when none is given: ten intervals, and at least five
    /// minutes. A pass that outlives its interval is not a failure (the next one
    /// waits for it, and an upstream asking to wait with `Retry-After` must be
    /// obeyed, not raced), so the timeout only ends a pass that never would.
    pub fn default_timeout(interval: Duration) -> Duration {
        interval.saturating_mul(10).max(Duration::from_secs(300))
    }
}

/// One account, ready to refresh.
#[derive(Debug, Clone)]
pub struct Account {
    /// The `account` label.
    pub name: String,
    /// How it authenticates: a static token, or credentials to log in with.
    pub auth: Auth,
    /// Its upstream client settings.
    pub client: ClientConfig,
    /// Requests in flight at most, over all its datacenters.
    pub concurrency: u32,
    /// Request attempts per second at most (0: no limit).
    pub requests_per_second: f64,
    /// Datacenters to refresh; empty: discover them.
    pub datacenters: Vec<String>,
    /// Its schedule.
    pub refresh: RefreshSettings,
}

impl Account {
    /// The account the command-line flags describe, named [`DEFAULT_ACCOUNT`].
    pub fn from_flags(config: &Config, auth: Auth) -> Self {
        Account {
            name: DEFAULT_ACCOUNT.to_string(),
            auth,
            client: ClientConfig {
                url: config.list_url(),
                timeout: config.api_timeout,
                page_size: config.page_size,
                headers: config.api_headers.clone(),
                params: config.api_params.clone(),
                filters: Filters {
                    image_type: config.filter_image_type.clone(),
                    image_name: config.filter_image_name.clone(),
                    status: config.filter_status,
                },
                size_unit: config.image_size_unit,
                max_retries: config.max_retries,
                tls: UpstreamTls {
                    ca_file: config.tls_ca_file.clone(),
                    cert_file: config.tls_cert_file.clone(),
                    key_file: config.tls_key_file.clone(),
                    insecure_skip_verify: config.tls_insecure_skip_verify,
                },
                proxy_url: config.proxy_url.clone(),
            },
            concurrency: config.api_concurrency,
            requests_per_second: 0.0,
            datacenters: config.datacenters.clone(),
            refresh: RefreshSettings {
                interval: config.refresh_interval,
                stale_after: config.stale_after,
                timeout: config
                    .refresh_timeout
                    .unwrap_or_else(|| RefreshSettings::default_timeout(config.refresh_interval)),
            },
        }
    }

    /// Its targets: one per datacenter, or one discovery target.
    pub fn targets(&self) -> Vec<TargetKey> {
        if self.datacenters.is_empty() {
            vec![TargetKey::discovery(&self.name)]
        } else {
            self.datacenters
                .iter()
                .map(|dc| TargetKey::datacenter(&self.name, dc))
                .collect()
        }
    }

    /// Whether `other` would refresh exactly as this one does (how it
    /// authenticates included), so that its running targets can be kept as they are.
    pub fn same_settings(&self, other: &Account) -> bool {
        self.name == other.name
            && self.auth == other.auth
            && self.client == other.client
            && self.concurrency == other.concurrency
            && self.requests_per_second == other.requests_per_second
            && self.refresh == other.refresh
    }
}

/// Which targets this replica refreshes: those whose stable hash of
/// `account/datacenter_key` modulo `total` is `index` (kube-state-metrics' rule).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// This replica's shard, `0..total`.
    pub index: u32,
    /// The number of shards.
    pub total: u32,
}

impl Default for Shard {
    fn default() -> Self {
        Shard { index: 0, total: 1 }
    }
}

impl Shard {
    /// The shard the flags name: `--shard` or `--shard.from-pod-name`, out of
    /// `--total-shards`; the error names the flag and the fix.
    pub fn from_flags(config: &Config) -> Result<Self, String> {
        let index = match &config.shard_from_pod_name {
            Some(name) => name
                .rsplit_once('-')
                .and_then(|(_, n)| n.parse::<u32>().ok())
                .ok_or_else(|| {
                    format!(
                        "--shard.from-pod-name: '{name}' does not end in -N, as a StatefulSet pod name does (e.g. finovy-image-exporter-2)"
                    )
                })?,
            None => config.shard,
        };
        if index >= config.total_shards {
            return Err(format!(
                "--shard: shard {index} does not exist with --total-shards {}; shards count from 0 to {}",
                config.total_shards,
                config.total_shards - 1
            ));
        }
        Ok(Shard {
            index,
            total: config.total_shards,
        })
    }

    /// Whether this replica refreshes `key`.
    pub fn owns(&self, key: &TargetKey) -> bool {
        self.total <= 1
            || stable_hash(&key.to_string()) % u64::from(self.total) == u64::from(self.index)
    }
}

/// FNV-1a, 64 bits: the same on every replica, version and platform (std's
/// hasher is randomly keyed per process, so it cannot be used for sharding).
fn stable_hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// What one target refreshes: a datacenter of an account, or (without a
/// datacenter) one discovery pass over all of the account's datacenters.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TargetKey {
    /// The account's name.
    pub account: String,
    /// The datacenter key; `None` for a discovery target.
    pub datacenter: Option<String>,
}

impl TargetKey {
    /// The target of one datacenter.
    pub fn datacenter(account: &str, datacenter: &str) -> Self {
        TargetKey {
            account: account.to_string(),
            datacenter: Some(datacenter.to_string()),
        }
    }

    /// The discovery target of an account.
    pub fn discovery(account: &str) -> Self {
        TargetKey {
            account: account.to_string(),
            datacenter: None,
        }
    }
}

/// `account/datacenter_key`, and `account/` for a discovery target: the string
/// the shard of a target is computed from.
impl fmt::Display for TargetKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}",
            self.account,
            self.datacenter.as_deref().unwrap_or("")
        )
    }
}

/// The names of the configured accounts, shared between the reloads that change
/// them and the `/probe` endpoint that checks the account asked for.
#[derive(Debug, Default)]
pub struct AccountNames(std::sync::RwLock<std::collections::BTreeSet<String>>);

impl AccountNames {
    /// The names of `accounts`.
    pub fn new(accounts: &[Account]) -> Self {
        let names = AccountNames::default();
        names.set(accounts);
        names
    }

    /// Replaces the names with those of `accounts`.
    pub fn set(&self, accounts: &[Account]) {
        let names = accounts.iter().map(|a| a.name.clone()).collect();
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = names;
    }

    /// Whether an account of this name is configured.
    pub fn contains(&self, name: &str) -> bool {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_target_belongs_to_exactly_one_shard() {
        let keys: Vec<TargetKey> = (0..200)
            .map(|i| TargetKey::datacenter(&format!("acct{}", i % 17), &format!("DC{i}")))
            .chain((0..17).map(|i| TargetKey::discovery(&format!("acct{i}"))))
            .collect();
        let total = 3;
        let mut per_shard = [0usize; 3];
        for key in &keys {
            let owners: Vec<u32> = (0..total)
                .filter(|&index| Shard { index, total }.owns(key))
                .collect();
            assert_eq!(owners.len(), 1, "{key} owned by {owners:?}");
            per_shard[owners[0] as usize] += 1;
        }
        assert!(per_shard.iter().all(|&n| n > 30), "{per_shard:?}");
    }

    #[test]
    fn the_shard_hash_is_stable() {
        // FNV-1a's published values: every replica, version and platform agrees.
        assert_eq!(stable_hash(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(stable_hash("a"), 0xaf63_dc4c_8601_ec8c);
    }
}
