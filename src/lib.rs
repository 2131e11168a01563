//! A Prometheus exporter for the images of a Finovy cloud account.
//!
//! A scheduler pages through the "my image list" API for every datacenter on an
//! interval, aggregates image counts, sizes and ages by datacenter, status and
//! image type, and publishes one consistent snapshot; an HTTP server serves the
//! latest snapshot on `/metrics` without ever waiting on the upstream.
//!
//! # Layout
//!
//! - [`config`]: flags, their `FINOVY_*` environment twins, validation.
//! - [`secret`]: the token type that cannot be printed, and its source.
//! - [`upstream`]: the API client and its wire types ([`upstream::wire`]).
//! - [`refresh`]: paging through one datacenter's list, page-parallel.
//! - [`aggregate`]: pure aggregation of items into groups.
//! - [`snapshot`]: the published state and its text exposition.
//! - [`exposition`]: the `/metrics` body, encoded once per refresh or second.
//! - [`scheduler`]: the refresh loop, which [`app`] runs on a thread of its own.
//! - [`telemetry`]: the exporter's own metrics.
//! - [`routes`] and [`server`]: what each path answers, and the listener.
//! - [`web_config`]: `--web.config.file` (TLS, basic auth, headers, rate limit) and its reloading.
//! - [`app`]: wiring a [`config::Config`] into a running exporter.
//! - [`sim`]: a simulator of the upstream API, for `--demo` and tests.
//! - [`logging`]: log set-up.

pub mod aggregate;
pub mod app;
pub mod config;
pub mod exposition;
pub mod logging;
pub mod refresh;
pub mod routes;
pub mod scheduler;
pub mod secret;
pub mod server;
pub mod sim;
pub mod snapshot;
pub mod telemetry;
pub mod upstream;
pub mod web_config;

/// The crate version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The source revision the binary was built from (`unknown` outside git).
pub const REVISION: &str = env!("FINOVY_REVISION");

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

/// Sets up the allocator for a small, steady resident set: one glibc malloc
/// arena instead of one per thread (measured with `benches/refresh.py`: peak RSS
/// at a million images 14.5 → 11.6 MiB, CPU unchanged). Call before any thread
/// starts.
pub fn configure_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; called before other
    // threads exist, as the binary's first step.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Hands memory freed by a refresh back to the operating system.
///
/// glibc keeps freed heap memory for reuse, and raises its mmap threshold after
/// freeing a large block, so the id sets of a large refresh would otherwise stay
/// in the resident set while the exporter idles until the next one.
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists; it has no
    // preconditions and is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// A random number in `[0, 1)`, for jitter.
pub fn random_fraction() -> f64 {
    (random_u64() >> 11) as f64 / (1u64 << 53) as f64
}
