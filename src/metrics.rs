//! Every metric family the exporter serves, in one table: name, type, help and
//! labels.
//!
//! Two renderers use it. The per-target families (the image series, health,
//! per-target counters) are rendered from the published state by
//! [`crate::state`]; the process-wide ones live in a `prometheus` registry
//! ([`crate::telemetry`]), built from the same entries. A family is defined here
//! and nowhere else, so a reader finds what `/metrics` promises in one place, and
//! the golden file test (`tests/golden.rs`) holds the whole exposition to it.

/// The type of a family, as the exposition's `# TYPE` line names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A value that goes up and down.
    Gauge,
    /// A value that only goes up (reset only when its series vanish).
    Counter,
    /// Buckets, a sum and a count.
    Histogram,
}

impl Kind {
    /// The `# TYPE` word.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
            Kind::Histogram => "histogram",
        }
    }
}

/// One metric family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Family {
    /// The name (a counter's includes its `_total`).
    pub name: &'static str,
    /// Its type.
    pub kind: Kind,
    /// The `# HELP` text.
    pub help: &'static str,
    /// Its label names, in the order samples carry them.
    pub labels: &'static [&'static str],
}

/// The labels of an image group.
const GROUP: &[&str] = &["account", "datacenter_key", "status", "image_type"];
/// The labels of a target's datacenter.
const TARGET: &[&str] = &["account", "datacenter_key"];

/// `finovy_images`.
pub const IMAGES: Family = Family {
    name: "finovy_images",
    kind: Kind::Gauge,
    help: "Number of images per account, datacenter, status and image type, as of the last successful refresh of the datacenter (not fetched at scrape time).",
    labels: GROUP,
};

/// `finovy_images_size_bytes`.
pub const IMAGES_SIZE: Family = Family {
    name: "finovy_images_size_bytes",
    kind: Kind::Gauge,
    help: "Total size in bytes of the images per account, datacenter, status and image type, as of the last successful refresh of the datacenter (not fetched at scrape time).",
    labels: GROUP,
};

/// `finovy_images_oldest_created_timestamp_seconds`.
pub const IMAGES_OLDEST: Family = Family {
    name: "finovy_images_oldest_created_timestamp_seconds",
    kind: Kind::Gauge,
    help: "Creation time of the oldest image per account, datacenter, status and image type, as of the last successful refresh of the datacenter (not fetched at scrape time).",
    labels: GROUP,
};

/// `finovy_up`.
pub const UP: Family = Family {
    name: "finovy_up",
    kind: Kind::Gauge,
    help: "Whether the last refresh of the datacenter succeeded (1) or failed (0).",
    labels: TARGET,
};

/// `finovy_refresh_duration_seconds`.
pub const REFRESH_DURATION: Family = Family {
    name: "finovy_refresh_duration_seconds",
    kind: Kind::Gauge,
    help: "Wall time of the last refresh of the datacenter, in seconds.",
    labels: TARGET,
};

/// `finovy_refresh_last_success_timestamp_seconds`.
pub const REFRESH_LAST_SUCCESS: Family = Family {
    name: "finovy_refresh_last_success_timestamp_seconds",
    kind: Kind::Gauge,
    help: "Unix time of the last successful refresh of the datacenter (0 before the first).",
    labels: TARGET,
};

/// `finovy_refresh_interval_seconds`.
pub const REFRESH_INTERVAL: Family = Family {
    name: "finovy_refresh_interval_seconds",
    kind: Kind::Gauge,
    help: "Configured time between two refreshes of the datacenter, in seconds (for alert rules).",
    labels: TARGET,
};

/// `finovy_refresh_failures_total`.
pub const REFRESH_FAILURES: Family = Family {
    name: "finovy_refresh_failures_total",
    kind: Kind::Counter,
    help: "Failed refreshes of the datacenter, by reason (auth, timeout, connect, tls, http, api, decode).",
    labels: &["account", "datacenter_key", "reason"],
};

/// `finovy_pagination_anomalies_total`.
pub const PAGINATION_ANOMALIES: Family = Family {
    name: "finovy_pagination_anomalies_total",
    kind: Kind::Counter,
    help: "Refreshes whose paging was inconsistent, by kind: duplicate_items, total_changed, total_mismatch, page_limit, foreign_items.",
    labels: &["account", "datacenter_key", "kind"],
};

/// `finovy_limit_folded_groups`.
pub const LIMIT_FOLDED: Family = Family {
    name: "finovy_limit_folded_groups",
    kind: Kind::Gauge,
    help: "Groups folded into \"other\" by the last refresh because of --limit.image-types or --limit.datacenters, by label.",
    labels: &["account", "datacenter_key", "label"],
};

/// `finovy_api_requests_total`.
pub const API_REQUESTS: Family = Family {
    name: "finovy_api_requests_total",
    kind: Kind::Counter,
    help: "Requests sent to the Finovy API, by account and HTTP status code (error when no answer came back).",
    labels: &["account", "code"],
};

/// `finovy_api_request_duration_seconds`.
pub const API_DURATION: Family = Family {
    name: "finovy_api_request_duration_seconds",
    kind: Kind::Histogram,
    help: "Latency of requests to the Finovy API, answer body included, by account.",
    labels: &["account"],
};

/// `finovy_api_invalid_items_total`.
pub const API_INVALID_ITEMS: Family = Family {
    name: "finovy_api_invalid_items_total",
    kind: Kind::Counter,
    help: "Images counted although one of their fields could not be read, by account and field.",
    labels: &["account", "field"],
};

/// `finovy_api_concurrency_limit`.
pub const API_CONCURRENCY_LIMIT: Family = Family {
    name: "finovy_api_concurrency_limit",
    kind: Kind::Gauge,
    help: "Upstream requests the account may have in flight now (halved on HTTP 429, grown back after quiet passes).",
    labels: &["account"],
};

/// `finovy_shard_info`.
pub const SHARD_INFO: Family = Family {
    name: "finovy_shard_info",
    kind: Kind::Gauge,
    help: "The shard of the targets this replica refreshes, out of total_shards; always 1.",
    labels: &["shard", "total_shards"],
};

/// `finovy_web_config_last_reload_successful`.
pub const WEB_CONFIG_RELOAD: Family = Family {
    name: "finovy_web_config_last_reload_successful",
    kind: Kind::Gauge,
    help: "Whether the last change of --web.config.file was loaded (0: the previous configuration is still in force).",
    labels: &[],
};

/// `finovy_config_last_reload_successful`.
pub const CONFIG_RELOAD: Family = Family {
    name: "finovy_config_last_reload_successful",
    kind: Kind::Gauge,
    help: "Whether the last reload of --config.file succeeded (0: the previous configuration is still in force).",
    labels: &[],
};

/// `finovy_config_last_reload_success_timestamp_seconds`.
pub const CONFIG_RELOAD_TIMESTAMP: Family = Family {
    name: "finovy_config_last_reload_success_timestamp_seconds",
    kind: Kind::Gauge,
    help: "Unix time of the last successful load of the configuration (the start, without --config.file).",
    labels: &[],
};

/// `finovy_exporter_build_info`.
pub const BUILD_INFO: Family = Family {
    name: "finovy_exporter_build_info",
    kind: Kind::Gauge,
    help: "Version and revision of the exporter; always 1.",
    labels: &["version", "revision"],
};

/// `finovy_demo_mode`.
pub const DEMO_MODE: Family = Family {
    name: "finovy_demo_mode",
    kind: Kind::Gauge,
    help: "1 when the exporter serves data from its built-in simulated upstream (--demo), else 0.",
    labels: &[],
};

/// Every family the exporter itself defines (the `process_*` families of the
/// `prometheus` crate's collector come on top), in the order `/metrics` lists them.
pub const ALL: &[Family] = &[
    IMAGES,
    IMAGES_SIZE,
    IMAGES_OLDEST,
    UP,
    REFRESH_DURATION,
    REFRESH_LAST_SUCCESS,
    REFRESH_INTERVAL,
    REFRESH_FAILURES,
    PAGINATION_ANOMALIES,
    LIMIT_FOLDED,
    API_REQUESTS,
    API_DURATION,
    API_INVALID_ITEMS,
    API_CONCURRENCY_LIMIT,
    SHARD_INFO,
    WEB_CONFIG_RELOAD,
    CONFIG_RELOAD,
    CONFIG_RELOAD_TIMESTAMP,
    BUILD_INFO,
    DEMO_MODE,
];

impl Family {
    /// `prometheus` crate options for this family (for the registry's families).
    pub fn opts(&self) -> prometheus::Opts {
        prometheus::Opts::new(self.name, self.help)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_counters_end_in_total() {
        for (i, f) in ALL.iter().enumerate() {
            assert!(
                ALL[i + 1..].iter().all(|g| g.name != f.name),
                "{} twice",
                f.name
            );
            assert_eq!(
                f.kind == Kind::Counter,
                f.name.ends_with("_total"),
                "{}",
                f.name
            );
            assert!(f.name.starts_with("finovy_"), "{}", f.name);
        }
    }
}
