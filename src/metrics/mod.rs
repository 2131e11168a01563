//! The `/metrics` path: every metric family in one table, the rendered lines of
//! each target ([`lines`]), and the writer that serves them ([`writer`]).
//!
//! It works as kube-state-metrics does. When a target publishes a pass, its
//! samples are rendered once into one buffer of text with a range per family
//! ([`lines::Lines`]); an account's request and login counts are rendered at the
//! first scrape after they changed ([`crate::telemetry`]). A scrape writes, family by
//! family in the order of [`BODY`], the family's `# HELP` and `# TYPE` lines and
//! then the range of that family of every target, through a gzip encoder when the
//! scraper takes gzip. The body is kept for at most a second and shared by every
//! scraper that asks meanwhile ([`crate::routes::MetricsCache`]).
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

/// Defines each family as a constant named as in `/metrics` (in capitals):
/// `CONST: "name", Kind, labels, "help";`.
macro_rules! families {
    ($($id:ident: $name:literal, $kind:ident, $labels:expr, $help:literal;)*) => {
        $(
            #[doc = concat!("`", $name, "`.")]
            pub const $id: Family = Family {
                name: $name,
                kind: Kind::$kind,
                help: $help,
                labels: $labels,
            };
        )*
        /// Every family the exporter itself defines (the `process_*` families of
        /// the `prometheus` crate's collector come on top).
        pub const ALL: &[Family] = &[$($id),*];
    };
}

families! {
    IMAGES: "finovy_images", Gauge, GROUP,
        "Number of images per account, datacenter, status and image type, as of the last successful refresh of the datacenter (not fetched at scrape time).";
    IMAGES_SIZE: "finovy_images_size_bytes", Gauge, GROUP,
        "Total size in bytes of the images per account, datacenter, status and image type, as of the last successful refresh of the datacenter (not fetched at scrape time).";
    IMAGES_OLDEST: "finovy_images_oldest_created_timestamp_seconds", Gauge, GROUP,
        "Creation time of the oldest image per account, datacenter, status and image type, as of the last successful refresh of the datacenter (not fetched at scrape time).";
    IMAGES_AGE: "finovy_images_age_seconds", GaugeHistogram, &["account", "datacenter_key", "status", "le"],
        "Ages (now - createTime) of the images per account, datacenter and status at the last successful refresh, as cumulative bucket gauges (a gauge histogram).";
    IMAGES_AGE_GCOUNT: "finovy_images_age_seconds_gcount", Gauge, &["account", "datacenter_key", "status"],
        "Images with a readable createTime per account, datacenter and status at the last successful refresh (the count of finovy_images_age_seconds).";
    IMAGES_AGE_GSUM: "finovy_images_age_seconds_gsum", Gauge, &["account", "datacenter_key", "status"],
        "Sum of the ages in seconds of the images per account, datacenter and status at the last successful refresh (the sum of finovy_images_age_seconds).";
    IMAGES_CREATED: "finovy_images_created_total", Counter, &["account", "datacenter_key", "image_type"],
        "Images found by a complete refresh that the previous complete refresh of the datacenter did not list, by image type.";
    IMAGES_DELETED: "finovy_images_deleted_total", Counter, &["account", "datacenter_key", "status", "image_type"],
        "Images listed by the previous complete refresh of the datacenter that a complete refresh no longer found, by their last status and image type.";
    STATUS_TRANSITIONS: "finovy_image_status_transitions_total", Counter, &["account", "datacenter_key", "image_type", "from", "to"],
        "Images whose status changed between two complete refreshes of the datacenter, by image type and the status before (from) and after (to).";
    LIFECYCLE_SKIPPED: "finovy_lifecycle_skipped_passes_total", Counter, &["account", "datacenter_key"],
        "Refreshes that changed no lifecycle counter because they failed, were cut off or had a pagination anomaly (a paging glitch must not look like deletions).";
    IMAGE_INFO: "finovy_image_info", Gauge, &["account", "datacenter_key", "id", "image_id", "image_name", "image_type", "status"],
        "The oldest images in the statuses of --collector.image-info.statuses, at most --collector.image-info.limit per target, as of the last successful refresh; always 1.";
    UP: "finovy_up", Gauge, TARGET,
        "Whether the last refresh of the datacenter succeeded (1) or failed (0).";
    REFRESH_DURATION: "finovy_refresh_duration_seconds", Gauge, TARGET,
        "Wall time of the last refresh of the datacenter, in seconds.";
    REFRESH_LAST_SUCCESS: "finovy_refresh_last_success_timestamp_seconds", Gauge, TARGET,
        "Unix time of the last successful refresh of the datacenter (0 before the first).";
    REFRESH_INTERVAL: "finovy_refresh_interval_seconds", Gauge, TARGET,
        "Configured time between two refreshes of the datacenter, in seconds (for alert rules).";
    REFRESH_FAILURES: "finovy_refresh_failures_total", Counter, &["account", "datacenter_key", "reason"],
        "Failed refreshes of the datacenter, by reason (auth, timeout, connect, tls, http, api, decode, limit).";
    PAGINATION_ANOMALIES: "finovy_pagination_anomalies_total", Counter, &["account", "datacenter_key", "kind"],
        "Refreshes whose paging was inconsistent, by kind: duplicate_items, total_changed, total_mismatch, page_limit, foreign_items.";
    LIMIT_FOLDED: "finovy_limit_folded_groups", Gauge, &["account", "datacenter_key", "label"],
        "Groups folded into \"other\" by the last refresh because of --limit.image-types or --limit.datacenters, by label.";
    API_REQUESTS: "finovy_api_requests_total", Counter, &["account", "code"],
        "Requests sent to the Finovy API, by account and HTTP status code (error when no answer came back).";
    API_DURATION: "finovy_api_request_duration_seconds", Histogram, &["account"],
        "Latency of requests to the Finovy API, answer body included, by account.";
    API_INVALID_ITEMS: "finovy_api_invalid_items_total", Counter, &["account", "field"],
        "Images counted although one of their fields could not be read, by account and field.";
    API_CONCURRENCY_LIMIT: "finovy_api_concurrency_limit", Gauge, &["account"],
        "Upstream requests the account may have in flight now (halved on HTTP 429, grown back after quiet passes).";
    AUTH_REQUESTS: "finovy_auth_requests_total", Counter, &["account", "code"],
        "Logins sent to the Finovy API for an account that logs in, by the answer's code (the upstream code, else the HTTP status, error when no answer came back).";
    AUTH_TOKEN_EXPIRY: "finovy_auth_token_expiry_timestamp_seconds", Gauge, &["account"],
        "Unix time at which the token of an account that logs in expires (no series while the account holds no token).";
    SHARD_INFO: "finovy_shard_info", Gauge, &["shard", "total_shards"],
        "The shard of the targets this replica refreshes, out of total_shards; always 1.";
    WEB_CONFIG_RELOAD: "finovy_web_config_last_reload_successful", Gauge, &[],
        "Whether the last change of --web.config.file was loaded (0: the previous configuration is still in force).";
    CONFIG_RELOAD: "finovy_config_last_reload_successful", Gauge, &[],
        "Whether the last reload of --config.file succeeded (0: the previous configuration is still in force).";
    CONFIG_RELOAD_TIMESTAMP: "finovy_config_last_reload_success_timestamp_seconds", Gauge, &[],
        "Unix time of the last successful load of the configuration (the start, without --config.file).";
    BUILD_INFO: "finovy_exporter_build_info", Gauge, &["version", "revision"],
        "Version and revision of the exporter; always 1.";
    DEMO_MODE: "finovy_demo_mode", Gauge, &[],
        "1 when the exporter serves data from its built-in simulated upstream (--demo), else 0.";
}

/// Which scrapes have a part of the body.
type When = fn(&Collectors) -> bool;

/// One part of a body: a family's header and the lines of every target for it.
#[derive(Debug, Clone, Copy)]
pub struct Part {
    /// The family.
    pub family: &'static Family,
    /// The one format whose bodies have it, or `None` for both.
    pub only: Option<Format>,
    /// Whether the collectors that run give it lines.
    pub when: When,
    /// Whether its header is left out when no target has a line of it.
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

/// `part`, its header left out when no target has a line of it: the families
/// of logins, which only accounts that log in have.
const fn optional(part: Part) -> Part {
    Part {
        optional: true,
        ..part
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
    part(&IMAGES, None, |_| true),
    part(&IMAGES_SIZE, None, |c| c.size),
    part(&IMAGES_OLDEST, None, |c| c.oldest),
    part(&IMAGES_AGE, TEXT, |c| c.age),
    part(&IMAGES_AGE_GCOUNT, TEXT, |c| c.age),
    part(&IMAGES_AGE_GSUM, TEXT, |c| c.age),
    part(&IMAGES_AGE, Some(Format::OpenMetrics), |c| c.age),
    part(&IMAGES_CREATED, None, |c| c.lifecycle),
    part(&IMAGES_DELETED, None, |c| c.lifecycle),
    part(&STATUS_TRANSITIONS, None, |c| c.lifecycle),
    part(&LIFECYCLE_SKIPPED, None, |c| c.lifecycle),
    part(&IMAGE_INFO, None, |c| c.image_info.is_some()),
    part(&UP, None, |_| true),
    part(&REFRESH_DURATION, None, |_| true),
    part(&REFRESH_LAST_SUCCESS, None, |_| true),
    part(&REFRESH_INTERVAL, None, |_| true),
    part(&REFRESH_FAILURES, None, |_| true),
    part(&PAGINATION_ANOMALIES, None, |_| true),
    part(&LIMIT_FOLDED, None, |_| true),
    // The account families, in the name order the `prometheus` registry gave
    // them when they were its own.
    part(&API_CONCURRENCY_LIMIT, None, |_| true),
    part(&API_INVALID_ITEMS, None, |_| true),
    part(&API_DURATION, None, |_| true),
    part(&API_REQUESTS, None, |_| true),
    optional(part(&AUTH_REQUESTS, None, |_| true)),
    optional(part(&AUTH_TOKEN_EXPIRY, None, |_| true)),
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
