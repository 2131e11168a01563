//! The exporter's own metrics: how its upstream calls and refreshes went.
//!
//! Kept apart from the image series (see [`crate::snapshot`]), in a registry of the
//! `prometheus` crate, with the standard `process_*` collector. Counters with a
//! bounded label set are created at zero, so that `rate()` and `increase()` work
//! from the first scrape.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::aggregate::Field;
use crate::refresh::{Anomaly, Reason};

/// The exporter's own metrics.
#[derive(Clone)]
pub struct Telemetry {
    registry: Registry,
    /// `finovy_api_requests_total{code}`.
    pub api_requests: IntCounterVec,
    /// `finovy_api_request_duration_seconds`.
    pub api_duration: Histogram,
    /// `finovy_api_invalid_items_total{field}`.
    pub invalid_items: IntCounterVec,
    /// `finovy_refresh_failures_total{datacenter_key,reason}`.
    pub refresh_failures: IntCounterVec,
    /// `finovy_pagination_anomalies_total{datacenter_key,kind}`.
    pub pagination_anomalies: IntCounterVec,
    /// `finovy_web_config_last_reload_successful`: 0 while the last change of
    /// `--web.config.file` could not be loaded, else 1.
    pub web_config_last_reload_successful: IntGauge,
}

impl Telemetry {
    /// Creates the metrics and registers them with a new registry.
    pub fn new() -> Self {
        let registry = Registry::new();
        let api_requests = IntCounterVec::new(
            Opts::new(
                "finovy_api_requests_total",
                "Requests sent to the Finovy API, by HTTP status code (error when no answer came back).",
            ),
            &["code"],
        )
        .expect("valid metric");
        let api_duration = Histogram::with_opts(
            HistogramOpts::new(
                "finovy_api_request_duration_seconds",
                "Latency of requests to the Finovy API, answer body included.",
            )
            .buckets(vec![
                0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
        )
        .expect("valid metric");
        let invalid_items = IntCounterVec::new(
            Opts::new(
                "finovy_api_invalid_items_total",
                "Images counted although one of their fields could not be read, by field.",
            ),
            &["field"],
        )
        .expect("valid metric");
        let refresh_failures = IntCounterVec::new(
            Opts::new(
                "finovy_refresh_failures_total",
                "Failed refreshes of a datacenter, by reason (auth, timeout, connect, http, api, decode).",
            ),
            &["datacenter_key", "reason"],
        )
        .expect("valid metric");
        let pagination_anomalies = IntCounterVec::new(
            Opts::new(
                "finovy_pagination_anomalies_total",
                "Refreshes whose paging was inconsistent, by kind: duplicate_items, total_changed, total_mismatch, page_limit.",
            ),
            &["datacenter_key", "kind"],
        )
        .expect("valid metric");
        let build_info = IntGaugeVec::new(
            Opts::new(
                "finovy_exporter_build_info",
                "Version and revision of the exporter; always 1.",
            ),
            &["version", "revision"],
        )
        .expect("valid metric");
        build_info
            .with_label_values(&[crate::VERSION, crate::REVISION])
            .set(1);
        let web_config_last_reload_successful = IntGauge::new(
            "finovy_web_config_last_reload_successful",
            "Whether the last change of --web.config.file was loaded (0: the previous configuration is still in force).",
        )
        .expect("valid metric");
        web_config_last_reload_successful.set(1);
        for field in Field::ALL {
            invalid_items.with_label_values(&[field.label()]);
        }

        for collector in [
            Box::new(api_requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(api_duration.clone()),
            Box::new(invalid_items.clone()),
            Box::new(refresh_failures.clone()),
            Box::new(pagination_anomalies.clone()),
            Box::new(build_info),
            Box::new(web_config_last_reload_successful.clone()),
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
            refresh_failures,
            pagination_anomalies,
            web_config_last_reload_successful,
        }
    }

    /// Creates the per-datacenter counters at zero, once the datacenter is known.
    pub fn init_datacenter(&self, datacenter: &str) {
        for reason in Reason::ALL {
            self.refresh_failures
                .with_label_values(&[datacenter, reason.label()]);
        }
        for kind in Anomaly::ALL {
            self.pagination_anomalies
                .with_label_values(&[datacenter, kind.label()]);
        }
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
