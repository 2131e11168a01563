//! The exporter's own metrics: its upstream calls, per account, and its process,
//! build and configuration.
//!
//! Kept apart from the per-target series (see [`crate::state`]). Every family
//! comes from the table in [`crate::metrics`]. The per-account upstream families
//! are kept per account ([`Upstream`]) and rendered into pieces like the target
//! series; the few process-wide ones are in a registry of the `prometheus` crate,
//! with the standard `process_*` collector. Counters with a bounded label set
//! are created at zero when their account is, so that `rate()` and `increase()`
//! work from the first scrape, and removed with it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use prometheus::{Encoder, Gauge, IntGauge, IntGaugeVec, Registry, TextEncoder};

use crate::labels::Field;
use crate::metrics;
use crate::render::{self, Pieces, UpstreamValues};

/// Upper bounds of the buckets of `finovy_api_request_duration_seconds`, in
/// seconds.
pub const API_DURATION_BUCKETS: [f64; 11] =
    [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// One account's upstream calls, as the `finovy_api_*{account}` families show
/// them.
///
/// They are not in the registry: at a thousand accounts, their seventeen series
/// an account made encoding the registry a third of every scrape, and `/probe`
/// encoded all of it to keep one account's. Here an account's lines are rendered
/// when a scrape finds they changed, and kept until they change again
/// ([`Upstream::pieces`]), so a scrape copies the lines of every account that
/// sent no request since the one before.
#[derive(Debug)]
pub struct Upstream {
    account: String,
    counts: Mutex<Counts>,
    /// The lines of the counts at a version.
    rendered: Mutex<Option<(u64, Arc<Pieces>)>>,
}

#[derive(Debug, Default)]
struct Counts {
    /// Bumped by every change, so that a rendering knows whether it is current.
    version: u64,
    /// Requests by `code` label.
    requests: BTreeMap<String, u64>,
    /// Requests per bucket of [`API_DURATION_BUCKETS`] (not cumulative; slower
    /// ones only count in the total).
    duration_buckets: [u64; API_DURATION_BUCKETS.len()],
    duration_sum: f64,
    duration_count: u64,
    invalid: [u64; Field::ALL.len()],
    concurrency_limit: Option<u32>,
}

impl Upstream {
    fn new(account: &str) -> Self {
        Upstream {
            account: account.to_string(),
            counts: Mutex::default(),
            rendered: Mutex::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts one request that took `seconds`, answered with the status `code`
    /// (`error` when no answer came back).
    pub fn request(&self, code: &str, seconds: f64) {
        let mut c = self.lock();
        match c.requests.get_mut(code) {
            Some(n) => *n += 1,
            None => {
                c.requests.insert(code.to_string(), 1);
            }
        }
        // A bucket holds what took at most its bound; NaN or slower than the
        // last bound counts only in the total (the `+Inf` bucket).
        if let Some(i) = API_DURATION_BUCKETS.iter().position(|b| seconds <= *b) {
            c.duration_buckets[i] += 1;
        }
        c.duration_sum += seconds;
        c.duration_count += 1;
        c.version += 1;
    }

    /// Counts `n` items whose `field` could not be read.
    pub fn invalid_items(&self, field: Field, n: u64) {
        if n > 0 {
            let mut c = self.lock();
            c.invalid[field.index()] += n;
            c.version += 1;
        }
    }

    /// Sets the concurrency limit the account's budget allows now.
    pub fn set_concurrency_limit(&self, limit: u32) {
        let mut c = self.lock();
        if c.concurrency_limit != Some(limit) {
            c.concurrency_limit = Some(limit);
            c.version += 1;
        }
    }

    /// The concurrency limit last set.
    pub fn concurrency_limit(&self) -> Option<u32> {
        self.lock().concurrency_limit
    }

    /// The account's lines, rendered again only if they changed since the last
    /// call.
    pub fn pieces(&self) -> Arc<Pieces> {
        let mut rendered = self.rendered.lock().unwrap_or_else(|e| e.into_inner());
        let c = self.lock();
        if let Some((version, pieces)) = rendered.as_ref() {
            if *version == c.version {
                return Arc::clone(pieces);
            }
        }
        let buckets: Vec<(f64, u64)> = API_DURATION_BUCKETS
            .iter()
            .copied()
            .zip(c.duration_buckets)
            .collect();
        let pieces = Arc::new(render::upstream(
            &self.account,
            &UpstreamValues {
                requests: &c.requests,
                duration_buckets: &buckets,
                duration_sum: c.duration_sum,
                duration_count: c.duration_count,
                invalid: &c.invalid,
                concurrency_limit: c.concurrency_limit,
            },
        ));
        *rendered = Some((c.version, Arc::clone(&pieces)));
        pieces
    }
}

/// The exporter's own metrics. Cloning shares them.
#[derive(Clone)]
pub struct Telemetry {
    registry: Registry,
    /// The upstream calls of every account, by name.
    accounts: Arc<Mutex<BTreeMap<String, Arc<Upstream>>>>,
    shard_info: IntGaugeVec,
    /// `finovy_auth_requests_total{account,code}`.
    auth_requests: prometheus::IntCounterVec,
    /// `finovy_auth_token_expiry_timestamp_seconds{account}`.
    auth_token_expiry: prometheus::GaugeVec,
    /// `finovy_web_config_last_reload_successful`: 0 while the last change of
    /// `--web.config.file` could not be loaded, else 1.
    pub web_config_last_reload_successful: IntGauge,
    /// `finovy_demo_mode`: 1 with `--demo`.
    pub demo_mode: IntGauge,
    /// `finovy_config_last_reload_successful`.
    pub config_last_reload_successful: IntGauge,
    /// `finovy_config_last_reload_success_timestamp_seconds`.
    pub config_last_reload_success_timestamp: Gauge,
}

impl Telemetry {
    /// Creates the metrics and registers them with a new registry.
    pub fn new() -> Self {
        let registry = Registry::new();
        let build_info = IntGaugeVec::new(metrics::BUILD_INFO.opts(), metrics::BUILD_INFO.labels)
            .expect("valid metric");
        build_info
            .with_label_values(&[crate::VERSION, crate::REVISION])
            .set(1);
        let shard_info = IntGaugeVec::new(metrics::SHARD_INFO.opts(), metrics::SHARD_INFO.labels)
            .expect("valid metric");
        shard_info.with_label_values(&["0", "1"]).set(1);
        let web_config_last_reload_successful =
            IntGauge::with_opts(metrics::WEB_CONFIG_RELOAD.opts()).expect("valid metric");
        web_config_last_reload_successful.set(1);
        let demo_mode = IntGauge::with_opts(metrics::DEMO_MODE.opts()).expect("valid metric");
        let config_last_reload_successful =
            IntGauge::with_opts(metrics::CONFIG_RELOAD.opts()).expect("valid metric");
        config_last_reload_successful.set(1);
        let config_last_reload_success_timestamp =
            Gauge::with_opts(metrics::CONFIG_RELOAD_TIMESTAMP.opts()).expect("valid metric");

        let auth_requests = prometheus::IntCounterVec::new(
            metrics::AUTH_REQUESTS.opts(),
            metrics::AUTH_REQUESTS.labels,
        )
        .expect("valid metric");
        let auth_token_expiry = prometheus::GaugeVec::new(
            metrics::AUTH_TOKEN_EXPIRY.opts(),
            metrics::AUTH_TOKEN_EXPIRY.labels,
        )
        .expect("valid metric");
        for collector in [
            Box::new(shard_info.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(auth_requests.clone()),
            Box::new(auth_token_expiry.clone()),
            Box::new(build_info),
            Box::new(web_config_last_reload_successful.clone()),
            Box::new(demo_mode.clone()),
            Box::new(config_last_reload_successful.clone()),
            Box::new(config_last_reload_success_timestamp.clone()),
        ] {
            registry
                .register(collector)
                .expect("metric names are unique");
        }
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("process collector registers once");
        Telemetry {
            registry,
            accounts: Arc::default(),
            shard_info,
            auth_requests,
            auth_token_expiry,
            web_config_last_reload_successful,
            demo_mode,
            config_last_reload_successful,
            config_last_reload_success_timestamp,
        }
    }

    /// Records the outcome of a load of the configuration.
    pub fn config_loaded(&self, success: bool) {
        self.config_last_reload_successful.set(i64::from(success));
        if success {
            self.config_last_reload_success_timestamp
                .set(crate::unix_seconds(std::time::SystemTime::now()));
        }
    }

    /// Shows which shard (`index` out of `total`) this replica is.
    pub fn set_shard(&self, index: u32, total: u32) {
        self.shard_info.reset();
        self.shard_info
            .with_label_values(&[&index.to_string(), &total.to_string()])
            .set(1);
    }

    /// The upstream calls of `account`, created at zero if it has none yet.
    pub fn upstream(&self, account: &str) -> Arc<Upstream> {
        let mut accounts = self.accounts.lock().unwrap_or_else(|e| e.into_inner());
        let upstream = accounts
            .entry(account.to_string())
            .or_insert_with(|| Arc::new(Upstream::new(account)));
        Arc::clone(upstream)
    }

    /// Removes every series of an account that is no longer configured.
    pub fn remove_account(&self, account: &str) {
        let mut accounts = self.accounts.lock().unwrap_or_else(|e| e.into_inner());
        accounts.remove(account);
        let _ = self.auth_token_expiry.remove_label_values(&[account]);
        for m in prometheus::core::Collector::collect(&self.auth_requests) {
            for metric in m.get_metric() {
                let labels = metric.get_label();
                if labels
                    .iter()
                    .any(|l| l.name() == "account" && l.value() == account)
                {
                    if let Some(code) = labels.iter().find(|l| l.name() == "code") {
                        let _ = self
                            .auth_requests
                            .remove_label_values(&[account, code.value()]);
                    }
                }
            }
        }
    }

    /// Counts one login of `account`, answered with `code` (the envelope's
    /// code, else the HTTP status, else `error`).
    pub fn record_auth_request(&self, account: &str, code: &str) {
        self.auth_requests.with_label_values(&[account, code]).inc();
    }

    /// Sets when the token of `account`'s last login expires; `None` removes
    /// the series (no token, or its lifetime is unknown).
    pub fn set_auth_token_expiry(&self, account: &str, expiry: Option<std::time::SystemTime>) {
        match expiry {
            Some(at) => self
                .auth_token_expiry
                .with_label_values(&[account])
                .set(crate::unix_seconds(at)),
            None => {
                let _ = self.auth_token_expiry.remove_label_values(&[account]);
            }
        }
    }

    /// The upstream lines of every account, or of `only`, in account order.
    pub fn upstream_pieces(&self, only: Option<&str>) -> Vec<Arc<Pieces>> {
        let accounts: Vec<Arc<Upstream>> = {
            let accounts = self.accounts.lock().unwrap_or_else(|e| e.into_inner());
            match only {
                Some(name) => accounts.get(name).into_iter().cloned().collect(),
                None => accounts.values().cloned().collect(),
            }
        };
        // Rendered outside the map's lock: a new client does not wait for it.
        accounts.iter().map(|a| a.pieces()).collect()
    }

    /// Appends the text exposition of these metrics to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let families = self.registry.gather();
        // Encoding into a Vec cannot fail for well-formed families.
        let _ = TextEncoder::new().encode(&families, out);
    }
}

impl Default for Telemetry {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Format;
    use crate::state::State;
    use prometheus::{HistogramOpts, HistogramVec, IntCounterVec};

    /// The text of every account's upstream sections, as `/metrics` has them.
    fn upstream_text(telemetry: &Telemetry, only: Option<&str>) -> String {
        let snap = State::new().snapshot();
        let upstream = telemetry.upstream_pieces(only);
        let parts = crate::exposition::Parts {
            snapshot: &snap,
            account: only,
            upstream: &upstream,
            tail: None,
        };
        let body = crate::exposition::assemble(&parts, Format::Text);
        let text = String::from_utf8(body.inflate().unwrap().to_vec()).unwrap();
        let at = text.find("# HELP finovy_api_").expect("upstream sections");
        text[at..].to_string()
    }

    /// These families were the `prometheus` crate's until they moved into pieces;
    /// the crate's registry, fed the same calls, stays the reference for their
    /// lines: names, label order, bucket bounds, cumulative counts, float format.
    #[test]
    fn upstream_lines_are_the_ones_the_prometheus_registry_writes() {
        let registry = Registry::new();
        let family = |f: &metrics::Family| f.opts();
        let requests =
            IntCounterVec::new(family(&metrics::API_REQUESTS), metrics::API_REQUESTS.labels)
                .unwrap();
        let durations = HistogramVec::new(
            HistogramOpts::from(family(&metrics::API_DURATION))
                .buckets(API_DURATION_BUCKETS.to_vec()),
            metrics::API_DURATION.labels,
        )
        .unwrap();
        let invalid = IntCounterVec::new(
            family(&metrics::API_INVALID_ITEMS),
            metrics::API_INVALID_ITEMS.labels,
        )
        .unwrap();
        let limit = IntGaugeVec::new(
            family(&metrics::API_CONCURRENCY_LIMIT),
            metrics::API_CONCURRENCY_LIMIT.labels,
        )
        .unwrap();
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(durations.clone()),
            Box::new(invalid.clone()),
            Box::new(limit.clone()),
        ] {
            registry.register(c).unwrap();
        }

        let telemetry = Telemetry::new();
        // Accounts created out of name order, one with a quote in its name.
        for account in ["zeta", "a\"b", "alpha"] {
            telemetry.upstream(account);
            durations.with_label_values(&[account]);
            for field in Field::ALL {
                invalid.with_label_values(&[account, field.label()]);
            }
        }
        let calls: &[(&str, &str, f64)] = &[
            ("zeta", "200", 0.003),
            ("alpha", "429", 0.04),
            ("alpha", "200", 31.0),
            ("zeta", "error", 0.01),
            ("alpha", "200", 1.0),
            ("alpha", "503", 0.1 + 0.2),
        ];
        for (account, code, seconds) in calls {
            telemetry.upstream(account).request(code, *seconds);
            requests.with_label_values(&[account, code]).inc();
            durations.with_label_values(&[account]).observe(*seconds);
        }
        for (account, field, n) in [
            ("alpha", Field::CreateTime, 3),
            ("zeta", Field::Status, 1),
            ("alpha", Field::Id, 2),
        ] {
            telemetry.upstream(account).invalid_items(field, n);
            invalid
                .with_label_values(&[account, field.label()])
                .inc_by(n);
        }
        for (account, n) in [("alpha", 4), ("zeta", 1), ("a\"b", 8)] {
            telemetry.upstream(account).set_concurrency_limit(n);
            limit.with_label_values(&[account]).set(i64::from(n));
        }

        let mut want = Vec::new();
        TextEncoder::new()
            .encode(&registry.gather(), &mut want)
            .unwrap();
        assert_eq!(
            upstream_text(&telemetry, None),
            String::from_utf8(want).unwrap()
        );
    }

    #[test]
    fn an_account_is_rendered_again_only_after_it_changed_and_removed_at_once() {
        let telemetry = Telemetry::new();
        let a = telemetry.upstream("a");
        telemetry.upstream("b").request("200", 0.5);
        let first = a.pieces();
        assert!(Arc::ptr_eq(&first, &a.pieces()), "unchanged: kept");
        a.set_concurrency_limit(3);
        let second = a.pieces();
        assert!(!Arc::ptr_eq(&first, &second), "changed: rendered again");
        a.set_concurrency_limit(3);
        a.invalid_items(Field::Id, 0);
        assert!(Arc::ptr_eq(&second, &a.pieces()), "no change, no rendering");
        assert!(Arc::ptr_eq(&a, &telemetry.upstream("a")), "one per account");

        let probe = upstream_text(&telemetry, Some("a"));
        assert!(probe.contains("finovy_api_concurrency_limit{account=\"a\"} 3\n"));
        assert!(!probe.contains("account=\"b\""), "{probe}");
        telemetry.remove_account("b");
        let all = upstream_text(&telemetry, None);
        assert!(!all.contains("account=\"b\""), "{all}");
        assert!(all.contains("account=\"a\""), "{all}");
    }
}
