//! The exporter's own metrics: its upstream calls, per account, and its process,
//! build and configuration.
//!
//! Kept apart from the per-target series (see [`crate::state`]). Every family
//! comes from the table in [`crate::metrics`]. The per-account families (upstream
//! requests and logins) are counted per account ([`Upstream`]) and rendered into
//! lines like the target series, and only there; the few process-wide ones are
//! in a registry of the `prometheus` crate, with the standard `process_*`
//! collector. Counters with a bounded label set
//! are created at zero when their account is, so that `rate()` and `increase()`
//! work from the first scrape, and removed with it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use prometheus::{Gauge, IntGauge, IntGaugeVec, Registry};

use crate::labels::Field;
use crate::metrics;
use crate::metrics::lines::{sample_named, Builder, Lines};

/// Upper bounds of the buckets of `finovy_api_request_duration_seconds`, in
/// seconds.
pub const API_DURATION_BUCKETS: [f64; 11] =
    [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// One account's upstream calls, as the `finovy_api_*{account}` families show
/// them.
///
/// They are not in the registry: an account's lines are rendered when a scrape
/// finds they changed, and kept until they change again ([`Upstream::lines`]), so
/// a scrape copies the lines of every account that sent no request since the
/// one before, and `/probe` takes one account's without encoding the others.
#[derive(Debug)]
pub struct Upstream {
    account: String,
    counts: Mutex<Counts>,
    /// The lines of the counts at a version.
    rendered: Mutex<Option<(u64, Arc<Lines>)>>,
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
    /// Logins by `code` label.
    logins: BTreeMap<String, u64>,
    /// When the token an account logged in for expires, while it holds one.
    token_expiry: Option<std::time::SystemTime>,
}

impl Counts {
    /// The account's lines: concurrency limit, unreadable fields, request
    /// durations, requests, logins and token expiry. Samples are ordered by label
    /// value, as the `prometheus` registry ordered them when they were its own.
    fn render(&self, account: &str) -> Lines {
        let mut b = Builder::default();
        if let Some(limit) = self.concurrency_limit {
            b.sample(&metrics::API_CONCURRENCY_LIMIT, &[account], limit);
        }
        let mut fields = Field::ALL.to_vec();
        fields.sort_by_key(|f| f.label());
        for field in fields {
            let labels = [account, field.label()];
            b.sample(
                &metrics::API_INVALID_ITEMS,
                &labels,
                self.invalid[field.index()],
            );
        }
        let family = &metrics::API_DURATION;
        let out = b.part(family, None);
        let buckets = metrics::Family {
            labels: &["account", "le"],
            ..*family
        };
        let mut cumulative = 0;
        for (bound, n) in API_DURATION_BUCKETS.iter().zip(self.duration_buckets) {
            cumulative += n;
            let le = bound.to_string();
            sample_named(out, &buckets, "_bucket", &[account, &le], cumulative);
        }
        let count = self.duration_count;
        sample_named(out, &buckets, "_bucket", &[account, "+Inf"], count);
        sample_named(out, family, "_sum", &[account], self.duration_sum);
        sample_named(out, family, "_count", &[account], count);
        for (code, n) in &self.requests {
            b.sample(&metrics::API_REQUESTS, &[account, code], n);
        }
        for (code, n) in &self.logins {
            b.sample(&metrics::AUTH_REQUESTS, &[account, code], n);
        }
        if let Some(expiry) = self.token_expiry {
            let at = crate::unix_seconds(expiry);
            b.sample(&metrics::AUTH_TOKEN_EXPIRY, &[account], at);
        }
        b.finish()
    }
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

    /// Counts one login answered with `code`: the upstream's `code`, else the
    /// HTTP status, else `error` (`finovy_auth_requests_total`).
    pub(crate) fn login(&self, code: &str) {
        let mut c = self.lock();
        *c.logins.entry(code.to_string()).or_default() += 1;
        c.version += 1;
    }

    /// Sets (or, with `None`, removes) when the account's token expires
    /// (`finovy_auth_token_expiry_timestamp_seconds`).
    pub(crate) fn set_token_expiry(&self, expiry: Option<std::time::SystemTime>) {
        let mut c = self.lock();
        if c.token_expiry != expiry {
            c.token_expiry = expiry;
            c.version += 1;
        }
    }

    /// When the account's token expires, while it holds one from a login.
    pub fn token_expiry(&self) -> Option<std::time::SystemTime> {
        self.lock().token_expiry
    }

    /// The account's lines, rendered again only if they changed since the last
    /// call.
    pub fn lines(&self) -> Arc<Lines> {
        let mut rendered = self.rendered.lock().unwrap_or_else(|e| e.into_inner());
        let c = self.lock();
        if let Some((version, lines)) = rendered.as_ref() {
            if *version == c.version {
                return Arc::clone(lines);
            }
        }
        let lines = Arc::new(c.render(&self.account));
        *rendered = Some((c.version, Arc::clone(&lines)));
        lines
    }
}

/// The exporter's own metrics. Cloning shares them.
#[derive(Clone)]
pub struct Telemetry {
    registry: Registry,
    /// The upstream calls of every account, by name.
    accounts: Arc<Mutex<BTreeMap<String, Arc<Upstream>>>>,
    shard_info: IntGaugeVec,
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
        let register = |c: Box<dyn prometheus::core::Collector>| {
            registry.register(c).expect("metric names are unique");
        };
        let gauge = |f: &metrics::Family, value: i64| {
            let gauge = IntGauge::with_opts(f.opts()).expect("valid metric");
            gauge.set(value);
            register(Box::new(gauge.clone()));
            gauge
        };
        let web_config_last_reload_successful = gauge(&metrics::WEB_CONFIG_RELOAD, 1);
        let demo_mode = gauge(&metrics::DEMO_MODE, 0);
        let config_last_reload_successful = gauge(&metrics::CONFIG_RELOAD, 1);
        let config_last_reload_success_timestamp =
            Gauge::with_opts(metrics::CONFIG_RELOAD_TIMESTAMP.opts()).expect("valid metric");
        register(Box::new(config_last_reload_success_timestamp.clone()));
        let info = |f: &metrics::Family, values: &[&str]| {
            let info = IntGaugeVec::new(f.opts(), f.labels).expect("valid metric");
            info.with_label_values(values).set(1);
            register(Box::new(info.clone()));
            info
        };
        let shard_info = info(&metrics::SHARD_INFO, &["0", "1"]);
        info(&metrics::BUILD_INFO, &[crate::VERSION, crate::REVISION]);
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

    /// When the token of `account`'s last login expires, while it holds one.
    pub fn token_expiry(&self, account: &str) -> Option<std::time::SystemTime> {
        let accounts = self.accounts.lock().unwrap_or_else(|e| e.into_inner());
        accounts.get(account)?.token_expiry()
    }

    /// Removes every series of an account that is no longer configured.
    pub fn remove_account(&self, account: &str) {
        let mut accounts = self.accounts.lock().unwrap_or_else(|e| e.into_inner());
        accounts.remove(account);
    }

    /// The lines of every account, or of `only`, in account order.
    pub fn account_lines(&self, only: Option<&str>) -> Vec<Arc<Lines>> {
        let accounts: Vec<Arc<Upstream>> = {
            let accounts = self.accounts.lock().unwrap_or_else(|e| e.into_inner());
            match only {
                Some(name) => accounts.get(name).into_iter().cloned().collect(),
                None => accounts.values().cloned().collect(),
            }
        };
        // Rendered outside the map's lock: a new client does not wait for it.
        accounts.iter().map(|a| a.lines()).collect()
    }

    /// The process-wide families, for the writer ([`crate::metrics::writer`]).
    pub fn gather(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.registry.gather()
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
    use crate::metrics::{slot, Format};

    /// The text of the account lines, as `/metrics` (or `/probe` with `only`)
    /// has them.
    fn accounts_text(telemetry: &Telemetry, only: Option<&str>) -> String {
        let accounts = telemetry.account_lines(only);
        let sources = crate::metrics::writer::Sources {
            lines: accounts.iter().map(|l| &**l).collect(),
            collectors: &crate::metrics::Collectors::default(),
            own: &[],
        };
        let body = sources.body(Format::Text, false);
        let text = String::from_utf8(body.to_vec()).unwrap();
        let at = text.find("# HELP finovy_api_").expect("account families");
        text[at..].to_string()
    }

    #[test]
    fn account_lines_follow_the_registry_layout() {
        let telemetry = Telemetry::new();
        for (account, code, seconds) in [("b", "200", 0.003), ("a", "503", 31.0)] {
            telemetry.upstream(account).request(code, seconds);
        }
        telemetry.upstream("a").request("200", 0.02);
        telemetry.upstream("a").invalid_items(Field::Status, 2);
        telemetry.upstream("a").set_concurrency_limit(4);
        let text = accounts_text(&telemetry, None);
        for line in [
            "finovy_api_concurrency_limit{account=\"a\"} 4\n",
            "finovy_api_invalid_items_total{account=\"a\",field=\"status\"} 2\n",
            "finovy_api_request_duration_seconds_bucket{account=\"a\",le=\"0.025\"} 1\n",
            "finovy_api_request_duration_seconds_bucket{account=\"a\",le=\"30\"} 1\n",
            "finovy_api_request_duration_seconds_bucket{account=\"a\",le=\"+Inf\"} 2\n",
            "finovy_api_request_duration_seconds_sum{account=\"a\"} 31.02\n",
            "finovy_api_request_duration_seconds_count{account=\"a\"} 2\n",
            "finovy_api_requests_total{account=\"a\",code=\"200\"} 1\n",
            "finovy_api_requests_total{account=\"b\",code=\"200\"} 1\n",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        assert!(
            text.find("account=\"a\",code=\"503\"").unwrap()
                < text.find("account=\"b\",code=\"200\"").unwrap(),
            "accounts in name order"
        );
        assert!(
            !text.contains("finovy_auth_"),
            "no login, no auth family: {text}"
        );
    }

    #[test]
    fn logins_are_counted_and_a_token_expiry_is_removed_with_none_or_its_account() {
        let telemetry = Telemetry::new();
        let expiry = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000);
        let a = telemetry.upstream("a");
        a.login("0");
        a.login("0");
        a.login("401");
        a.set_token_expiry(Some(expiry));
        telemetry.upstream("b").request("200", 0.1);
        let text = accounts_text(&telemetry, None);
        assert!(text.contains("# TYPE finovy_auth_requests_total counter\n"));
        assert!(text.contains("finovy_auth_requests_total{account=\"a\",code=\"0\"} 2\n"));
        assert!(text.contains("finovy_auth_requests_total{account=\"a\",code=\"401\"} 1\n"));
        assert!(
            text.contains("finovy_auth_token_expiry_timestamp_seconds{account=\"a\"} 1800000000\n")
        );
        assert!(!accounts_text(&telemetry, Some("b")).contains("finovy_auth_"));
        a.set_token_expiry(None);
        let text = accounts_text(&telemetry, None);
        assert!(!text.contains("finovy_auth_token_expiry"), "{text}");
        telemetry.remove_account("a");
        let text = accounts_text(&telemetry, None);
        assert!(!text.contains("account=\"a\""), "{text}");
        assert!(!text.contains("finovy_auth_"), "{text}");
        // A login that ends after its account was removed counts where its
        // session counts, not into a new entry of the removed account.
        a.login("0");
        a.set_token_expiry(Some(expiry));
        let text = accounts_text(&telemetry, None);
        assert!(!text.contains("account=\"a\""), "{text}");
    }

    #[test]
    fn an_account_is_rendered_again_only_after_it_changed() {
        let telemetry = Telemetry::new();
        let a = telemetry.upstream("a");
        let first = a.lines();
        assert!(Arc::ptr_eq(&first, &a.lines()), "unchanged: kept");
        a.set_concurrency_limit(3);
        let second = a.lines();
        assert!(!Arc::ptr_eq(&first, &second), "changed: rendered again");
        a.set_concurrency_limit(3);
        a.invalid_items(Field::Id, 0);
        assert!(Arc::ptr_eq(&second, &a.lines()), "no change, no rendering");
        assert!(Arc::ptr_eq(&a, &telemetry.upstream("a")), "one per account");
        let limit = slot(&metrics::API_CONCURRENCY_LIMIT, None);
        assert_eq!(
            second.part(limit),
            "finovy_api_concurrency_limit{account=\"a\"} 3\n"
        );
    }
}
