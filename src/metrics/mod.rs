//! The `/metrics` path: every metric family in one table, the rendered lines of
//! each target ([`lines`]), and the writer that serves them ([`writer`]).
//!
//! It works as kube-state-metrics does. When a target publishes a pass (or an
//! account sends a request), its samples are rendered once into one buffer of
//! text with a range per family ([`lines::Lines`]). A scrape writes, family by
//! family in the order of [`BODY`], the family's `# HELP` and `# TYPE` lines and
//! then the range of that family of every target, through a gzip encoder when the
//! scraper takes gzip. The body is kept for at most a second and shared by every
//! scraper that asks meanwhile ([`writer::MetricsCache`]).
//!
//! A family is defined here and nowhere else, so a reader finds what `/metrics`
//! promises in one place, and the golden file test (`tests/golden.rs`) holds the
//! whole exposition to it. The process-wide families (build, shard, reloads)
//! live in a `prometheus` registry ([`crate::telemetry`]) beside its `process_*`
//! collector, and the writer encodes them after the table's families.

pub mod lines;
pub mod writer;

/// The type of a family, as the exposition's `# TYPE` line names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A value that goes up and down.
    Gauge,
    /// A value that only goes up (reset only when its series vanish).
    Counter,
    /// Buckets, a sum and a count.
    Histogram,
    /// Cumulative bucket gauges of a distribution now (not since start), with
    /// `_gcount` and `_gsum`: OpenMetrics' `gaugehistogram`.
    GaugeHistogram,
}

impl Kind {
    /// The `# TYPE` word of the text format 0.0.4. It has no gauge histogram:
    /// there the family is a `histogram` of `_bucket` samples only, and its
    /// `_gcount` and `_gsum` are gauge families of their own, so that both formats
    /// give Prometheus the same series (`promtool check metrics` accepts both;
    /// a gauge named `_bucket` with an `le` label it would warn about).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
            Kind::Histogram | Kind::GaugeHistogram => "histogram",
        }
    }

    /// The `# TYPE` word of OpenMetrics 1.0.0.
    pub fn openmetrics(self) -> &'static str {
        match self {
            Kind::GaugeHistogram => "gaugehistogram",
            other => other.as_str(),
        }
    }
}

/// The exposition format a scrape gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// Prometheus text format 0.0.4.
    Text,
    /// OpenMetrics 1.0.0 text.
    OpenMetrics,
}

impl Format {
    /// The `Content-Type` of a body in this format.
    pub const fn content_type(self) -> &'static str {
        match self {
            Format::Text => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// Which optional collectors run (`--[no-]collector.NAME`). A collector that is
/// off costs nothing: its families are not served and what they need is not
/// gathered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Collectors {
    /// `size`: [`IMAGES_SIZE`].
    pub size: bool,
    /// `oldest`: [`IMAGES_OLDEST`].
    pub oldest: bool,
    /// `lifecycle`: [`IMAGES_CREATED`], [`IMAGES_DELETED`],
    /// [`STATUS_TRANSITIONS`], [`LIFECYCLE_SKIPPED`].
    pub lifecycle: bool,
    /// `age`: [`IMAGES_AGE`] (with its `_gcount` and `_gsum`).
    pub age: bool,
    /// `image-info`: [`IMAGE_INFO`], when on (off by default).
    pub image_info: Option<ImageInfo>,
    /// Cap on distinct `image_type` values in the lifecycle counters of one
    /// datacenter (`--limit.image-types`); beyond, they count under `other`.
    pub image_types: usize,
}

/// What `finovy_image_info` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageInfo {
    /// The statuses whose images it names.
    pub statuses: crate::aggregate::StatusSet,
    /// Images per target at most, oldest first.
    pub limit: usize,
}

impl Default for Collectors {
    fn default() -> Self {
        Collectors {
            size: true,
            oldest: true,
            lifecycle: true,
            age: true,
            image_info: None,
            image_types: 200,
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

/// `finovy_images_age_seconds`.
pub const IMAGES_AGE: Family = Family {
    name: "finovy_images_age_seconds",
    kind: Kind::GaugeHistogram,
    help: "Ages (now - createTime) of the images per account, datacenter and status at the last successful refresh, as cumulative bucket gauges (a gauge histogram).",
    labels: &["account", "datacenter_key", "status", "le"],
};

/// `finovy_images_age_seconds_gcount`: the text format's separate family for the
/// gauge histogram's count.
pub const IMAGES_AGE_GCOUNT: Family = Family {
    name: "finovy_images_age_seconds_gcount",
    kind: Kind::Gauge,
    help: "Images with a readable createTime per account, datacenter and status at the last successful refresh (the count of finovy_images_age_seconds).",
    labels: &["account", "datacenter_key", "status"],
};

/// `finovy_images_age_seconds_gsum`.
pub const IMAGES_AGE_GSUM: Family = Family {
    name: "finovy_images_age_seconds_gsum",
    kind: Kind::Gauge,
    help: "Sum of the ages in seconds of the images per account, datacenter and status at the last successful refresh (the sum of finovy_images_age_seconds).",
    labels: &["account", "datacenter_key", "status"],
};

/// `finovy_images_created_total`.
pub const IMAGES_CREATED: Family = Family {
    name: "finovy_images_created_total",
    kind: Kind::Counter,
    help: "Images found by a complete refresh that the previous complete refresh of the datacenter did not list, by image type.",
    labels: &["account", "datacenter_key", "image_type"],
};

/// `finovy_images_deleted_total`.
pub const IMAGES_DELETED: Family = Family {
    name: "finovy_images_deleted_total",
    kind: Kind::Counter,
    help: "Images listed by the previous complete refresh of the datacenter that a complete refresh no longer found, by their last status and image type.",
    labels: &["account", "datacenter_key", "status", "image_type"],
};

/// `finovy_image_status_transitions_total`.
pub const STATUS_TRANSITIONS: Family = Family {
    name: "finovy_image_status_transitions_total",
    kind: Kind::Counter,
    help: "Images whose status changed between two complete refreshes of the datacenter, by image type and the status before (from) and after (to).",
    labels: &["account", "datacenter_key", "image_type", "from", "to"],
};

/// `finovy_lifecycle_skipped_passes_total`.
pub const LIFECYCLE_SKIPPED: Family = Family {
    name: "finovy_lifecycle_skipped_passes_total",
    kind: Kind::Counter,
    help: "Refreshes that changed no lifecycle counter because they failed, were cut off or had a pagination anomaly (a paging glitch must not look like deletions).",
    labels: &["account", "datacenter_key"],
};

/// `finovy_image_info`.
pub const IMAGE_INFO: Family = Family {
    name: "finovy_image_info",
    kind: Kind::Gauge,
    help: "The oldest images in the statuses of --collector.image-info.statuses, at most --collector.image-info.limit per target, as of the last successful refresh; always 1.",
    labels: &[
        "account",
        "datacenter_key",
        "id",
        "image_id",
        "image_name",
        "image_type",
        "status",
    ],
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

/// `finovy_auth_requests_total`.
pub const AUTH_REQUESTS: Family = Family {
    name: "finovy_auth_requests_total",
    kind: Kind::Counter,
    help: "Logins sent to the Finovy API for an account that logs in, by the answer's code (the upstream code, else the HTTP status, error when no answer came back).",
    labels: &["account", "code"],
};

/// `finovy_auth_token_expiry_timestamp_seconds`.
pub const AUTH_TOKEN_EXPIRY: Family = Family {
    name: "finovy_auth_token_expiry_timestamp_seconds",
    kind: Kind::Gauge,
    help: "Unix time at which the token of an account that logs in expires (no series while the account holds no token).",
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
    IMAGES_AGE,
    IMAGES_AGE_GCOUNT,
    IMAGES_AGE_GSUM,
    IMAGES_CREATED,
    IMAGES_DELETED,
    STATUS_TRANSITIONS,
    LIFECYCLE_SKIPPED,
    IMAGE_INFO,
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
    AUTH_REQUESTS,
    AUTH_TOKEN_EXPIRY,
    SHARD_INFO,
    WEB_CONFIG_RELOAD,
    CONFIG_RELOAD,
    CONFIG_RELOAD_TIMESTAMP,
    BUILD_INFO,
    DEMO_MODE,
];

/// Which scrapes have a part of the body.
type When = fn(&Collectors) -> bool;

fn always(_: &Collectors) -> bool {
    true
}
fn size(c: &Collectors) -> bool {
    c.size
}
fn oldest(c: &Collectors) -> bool {
    c.oldest
}
fn age(c: &Collectors) -> bool {
    c.age
}
fn lifecycle(c: &Collectors) -> bool {
    c.lifecycle
}
fn image_info(c: &Collectors) -> bool {
    c.image_info.is_some()
}

/// One part of a body: a family's header and the lines of every target for it.
#[derive(Debug, Clone, Copy)]
pub struct Part {
    /// The family.
    pub family: &'static Family,
    /// The one format whose bodies have it, or `None` for both.
    pub only: Option<Format>,
    /// Whether the collectors that run give it lines.
    pub when: When,
    /// Whether its header is left out when no target has a line of it (the
    /// families of logins, which only some accounts make).
    pub optional: bool,
}

const fn part(family: &'static Family, only: Option<Format>, when: When) -> Part {
    Part {
        family,
        only,
        when,
        optional: false,
    }
}

const TEXT: Option<Format> = Some(Format::Text);

/// The parts of a body, in body order (the golden files hold it). The ages are
/// laid out twice: the text format has no gauge histogram, so there
/// `finovy_images_age_seconds` is a histogram of its `_bucket` samples with two
/// gauge families beside it (see [`Kind::as_str`]); OpenMetrics wants each
/// series' buckets, `_gcount` and `_gsum` together in one family. The process-wide
/// families of the registry follow the last part.
pub const BODY: [Part; 25] = [
    part(&IMAGES, None, always),
    part(&IMAGES_SIZE, None, size),
    part(&IMAGES_OLDEST, None, oldest),
    part(&IMAGES_AGE, TEXT, age),
    part(&IMAGES_AGE_GCOUNT, TEXT, age),
    part(&IMAGES_AGE_GSUM, TEXT, age),
    part(&IMAGES_AGE, Some(Format::OpenMetrics), age),
    part(&IMAGES_CREATED, None, lifecycle),
    part(&IMAGES_DELETED, None, lifecycle),
    part(&STATUS_TRANSITIONS, None, lifecycle),
    part(&LIFECYCLE_SKIPPED, None, lifecycle),
    part(&IMAGE_INFO, None, image_info),
    part(&UP, None, always),
    part(&REFRESH_DURATION, None, always),
    part(&REFRESH_LAST_SUCCESS, None, always),
    part(&REFRESH_INTERVAL, None, always),
    part(&REFRESH_FAILURES, None, always),
    part(&PAGINATION_ANOMALIES, None, always),
    part(&LIMIT_FOLDED, None, always),
    // The account families, in the name order the `prometheus` registry gave
    // them when they were its own.
    part(&API_CONCURRENCY_LIMIT, None, always),
    part(&API_INVALID_ITEMS, None, always),
    part(&API_DURATION, None, always),
    part(&API_REQUESTS, None, always),
    Part {
        optional: true,
        ..part(&AUTH_REQUESTS, None, always)
    },
    Part {
        optional: true,
        ..part(&AUTH_TOKEN_EXPIRY, None, always)
    },
];

impl Part {
    /// Whether a body in `format` has this part when `collectors` run.
    pub fn in_body(&self, format: Format, collectors: &Collectors) -> bool {
        self.only.is_none_or(|f| f == format) && (self.when)(collectors)
    }
}

/// The index in [`BODY`] of `family`'s part (of its part for `only`, for the
/// ages). Rendering asks it a few dozen times a target.
pub fn slot(family: &Family, only: Option<Format>) -> usize {
    BODY.iter()
        .position(|p| p.family.name == family.name && (p.only.is_none() || p.only == only))
        .unwrap_or_else(|| panic!("{} has a part in BODY", family.name))
}

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
