//! A Prometheus exporter for the images of a Finovy cloud account.
//!
//! A scheduler pages through the "my image list" API for every datacenter on an
//! interval, aggregates image counts, sizes and ages by datacenter, status and
//! image type, and publishes one consistent snapshot; an HTTP server serves the
//! latest snapshot on `/metrics` without ever waiting on the upstream.
//!
//! # Layout
//!
//! Data flows one way: configuration → targets → upstream → state → HTTP.
//!
//! - [`config`]: flags, their `FINOVY_*` environment twins, validation.
//! - [`settings`]: an account's settings, described once: the account flags
//!   and an entry of the file are the same structs.
//! - [`config_file`]: `--config.file`, the YAML file of several accounts.
//! - [`yaml_limits`]: bounds on a YAML file's size, nesting and alias expansion.
//! - [`account`]: an account, made from its settings by the one path the
//!   flags and the file share, and the targets it yields.
//! - [`secret`]: the token type that cannot be printed, and its source.
//! - [`labels`]: every closed set of label values (statuses, fields, reasons, anomalies).
//! - [`refresh`]: one target's schedule ([`refresh::schedule`]), paging
//!   ([`refresh::paging`]) and cardinality bounds ([`refresh::limits`]).
//! - [`upstream`]: the API client (one request, retries), the request budget,
//!   the error type, the login and token renewal ([`upstream::login`]) and the
//!   wire types ([`upstream::wire`]).
//! - [`aggregate`]: pure aggregation of items into groups.
//! - [`lifecycle`]: the census of a pass's ids and the pure diff of two (creations,
//!   deletions, status transitions).
//! - [`state`]: the published state, per target, and its counters.
//! - [`metrics`]: the `/metrics` path: the table of every metric family, the
//!   lines each target renders when it changes ([`metrics::lines`]) and the
//!   writer of the body ([`metrics::writer`]), which [`routes::MetricsCache`]
//!   keeps for the scrapes of a second.
//! - [`telemetry`]: the exporter's own metrics (per-account upstream calls and
//!   logins, and a `prometheus` registry of the process-wide ones).
//! - [`body`]: the body of every HTTP response, one shared buffer.
//! - [`routes`] and [`server`]: what each path answers, and the listener(s).
//! - [`signals`]: the signals handled from the first instruction, and
//!   [`reloads`]: reloads coalesced (one running, at most one pending).
//! - [`web_config`]: `--web.config.file` (TLS, basic auth, headers, rate limit) and its reloading.
//! - [`healthcheck`]: the `healthcheck` subcommand, for container health checks.
//! - [`check`]: the `check` subcommand: log in and ask page 1 of every target once.
//! - [`app`]: wiring a [`config::Config`] into a running exporter.
//! - [`sim`]: a simulator of the upstream API, for `--demo` and tests.
//! - [`logging`]: log set-up.

#![forbid(unsafe_code)]

pub mod account;
pub mod aggregate;
pub mod app;
pub mod body;
pub mod check;
pub mod config;
pub mod config_file;
pub mod files;
pub mod healthcheck;
pub mod labels;
pub mod lifecycle;
pub mod logging;
pub mod metrics;
pub mod refresh;
pub mod reloads;
pub mod routes;
pub mod secret;
pub mod server;
pub mod settings;
pub mod signals;
pub mod sim;
pub mod state;
pub mod telemetry;
pub mod upstream;
pub mod web_config;
pub mod yaml_limits;

/// The crate version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The source revision the binary was built from (`unknown` outside git).
pub const REVISION: &str = env!("FINOVY_REVISION");

/// What `--version` prints, in the layout of Prometheus' own tools.
pub const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (branch: ",
    env!("FINOVY_BRANCH"),
    ", revision: ",
    env!("FINOVY_REVISION"),
    ")\n  build date:       ",
    env!("FINOVY_BUILD_DATE"),
    "\n  rustc version:    ",
    env!("FINOVY_RUSTC_VERSION"),
    "\n  platform:         ",
    env!("FINOVY_PLATFORM"),
);

/// Makes ring the process-wide TLS crypto provider (idempotent).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// 64 random bits from the standard library's per-process random keys.
pub fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    );
    h.finish()
}

/// Seconds since the Unix epoch (0 for a time before it).
pub fn unix_seconds(t: std::time::SystemTime) -> f64 {
    t.duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// A random number in `[0, 1)`, for jitter.
pub fn random_fraction() -> f64 {
    (random_u64() >> 11) as f64 / (1u64 << 53) as f64
}
