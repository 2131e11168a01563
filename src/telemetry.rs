//! The exporter's process-wide metrics: its upstream calls, per account, and its
//! build.
//!
//! Kept apart from the per-target series (see [`crate::state`]), in a registry of
//! the `prometheus` crate, with the standard `process_*` collector. Every family
//! comes from the table in [`crate::metrics`]. Counters with a bounded label set
//! are created at zero when their account is, so that `rate()` and `increase()`
//! work from the first scrape, and removed with it.

use prometheus::core::Collector as _;
use prometheus::{
    Encoder, Gauge, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Registry,
    TextEncoder,
};

use crate::labels::Field;
use crate::metrics;

/// The exporter's own metrics. Cloning shares them.
#[derive(Clone)]
pub struct Telemetry {
    registry: Registry,
    /// `finovy_api_requests_total{account,code}`.
    pub api_requests: IntCounterVec,
    /// `finovy_api_request_duration_seconds{account}`.
    pub api_duration: HistogramVec,
    /// `finovy_api_invalid_items_total{account,field}`.
    pub invalid_items: IntCounterVec,
    /// `finovy_api_concurrency_limit{account}`.
    pub concurrency_limit: IntGaugeVec,
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
        let counter = |family: &metrics::Family| {
            IntCounterVec::new(family.opts(), family.labels).expect("valid metric")
        };
        let api_requests = counter(&metrics::API_REQUESTS);
        let invalid_items = counter(&metrics::API_INVALID_ITEMS);
        let api_duration = HistogramVec::new(
            HistogramOpts::from(metrics::API_DURATION.opts()).buckets(vec![
                0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            metrics::API_DURATION.labels,
        )
        .expect("valid metric");
        let concurrency_limit = IntGaugeVec::new(
            metrics::API_CONCURRENCY_LIMIT.opts(),
            metrics::API_CONCURRENCY_LIMIT.labels,
        )
        .expect("valid metric");
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

        for collector in [
            Box::new(api_requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(api_duration.clone()),
            Box::new(invalid_items.clone()),
            Box::new(concurrency_limit.clone()),
            Box::new(shard_info.clone()),
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
            api_requests,
            api_duration,
            invalid_items,
            concurrency_limit,
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

    /// Creates an account's counters at zero.
    pub fn init_account(&self, account: &str) {
        for field in Field::ALL {
            self.invalid_items
                .with_label_values(&[account, field.label()]);
        }
        self.api_duration.with_label_values(&[account]);
    }

    /// The gauge of an account's current concurrency limit.
    pub fn concurrency_gauge(&self, account: &str) -> IntGauge {
        self.concurrency_limit.with_label_values(&[account])
    }

    /// Removes every series of an account that is no longer configured.
    pub fn remove_account(&self, account: &str) {
        for field in Field::ALL {
            let _ = self
                .invalid_items
                .remove_label_values(&[account, field.label()]);
        }
        let _ = self.api_duration.remove_label_values(&[account]);
        let _ = self.concurrency_limit.remove_label_values(&[account]);
        // The status codes seen are not known here: gather them from the family.
        for family in self.api_requests.collect() {
            for metric in family.get_metric() {
                let labels = metric.get_label();
                let value = |name: &str| {
                    labels
                        .iter()
                        .find(|l| l.name() == name)
                        .map(|l| l.value().to_string())
                };
                if value("account").as_deref() == Some(account) {
                    if let Some(code) = value("code") {
                        let _ = self.api_requests.remove_label_values(&[account, &code]);
                    }
                }
            }
        }
    }

    /// Appends the text exposition of the series of `account` only (the families
    /// with an `account` label), for `/probe`.
    pub fn encode_account(&self, account: &str, out: &mut Vec<u8>) {
        let mut families = self.registry.gather();
        families.retain_mut(|family| {
            let metrics: Vec<_> = family
                .take_metric()
                .into_iter()
                .filter(|m| {
                    m.get_label()
                        .iter()
                        .any(|l| l.name() == "account" && l.value() == account)
                })
                .collect();
            family.set_metric(metrics);
            !family.get_metric().is_empty()
        });
        let _ = TextEncoder::new().encode(&families, out);
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
