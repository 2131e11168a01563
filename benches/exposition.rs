//! Micro-benchmark of `/metrics` at fleet size: publishing one target's pass
//! (rendering its lines), rendering an account's upstream lines after a
//! request, writing the plain and the gzip body of every target and account, and
//! a gzip scrape through the cache after one publish.
//!
//! Run with `cargo bench --bench exposition [-- TARGETS]` (default 3,000 targets
//! of 100 images each, as `benches/fleet.py` has them). Prints milliseconds per
//! call and the body sizes.

use std::hint::black_box;
use std::time::{Duration, Instant};

use finovy_image_exporter::account::TargetKey;
use finovy_image_exporter::aggregate::{Aggregator, Options};
use finovy_image_exporter::metrics::writer::Sources;
use finovy_image_exporter::metrics::Format;
use finovy_image_exporter::routes::MetricsCache;
use finovy_image_exporter::settings::SizeUnit;
use finovy_image_exporter::sim::{generate, GenerateOptions};
use finovy_image_exporter::state::{Lifecycle, Outcome, State};
use finovy_image_exporter::telemetry::Telemetry;
use finovy_image_exporter::upstream::wire::decode_page;

const NOW_MS: i64 = 1_790_000_000_000;

/// One pass's outcome for a datacenter of 100 generated images.
fn outcome(dc: &str, seed: u64) -> Outcome {
    let images = generate(&GenerateOptions {
        images: 100,
        datacenters: vec![dc.to_string()],
        seed,
        now_ms: NOW_MS,
        ..Default::default()
    });
    let body = serde_json::to_vec(&serde_json::json!({
        "code": 0, "success": true, "msg": "success", "traceId": "bench",
        "data": {"data": images, "totalCounts": 100},
    }))
    .unwrap();
    let page = decode_page(&body, SizeUnit::Gib).unwrap();
    let mut agg = Aggregator::with_options(Options {
        census: false,
        ages_at_ms: Some(NOW_MS),
        named: 0,
    });
    for item in &page.items {
        agg.add(dc, item);
    }
    Outcome::Success {
        datacenters: agg.finish(),
        anomalies: Vec::new(),
        folded: Default::default(),
        lifecycle: Lifecycle::Baseline,
        named: Vec::new(),
    }
}

/// Runs `f` repeatedly for about two seconds (at least three times) and returns
/// the fastest call.
fn fastest(mut f: impl FnMut()) -> Duration {
    let mut best = Duration::MAX;
    let start = Instant::now();
    let mut calls = 0;
    while calls < 3 || start.elapsed() < Duration::from_secs(2) {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed());
        calls += 1;
    }
    best
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    let targets: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(3000);
    let state = State::new();
    let dcs = ["DC0", "DC1", "DC2"];
    let keys: Vec<TargetKey> = (0..targets)
        .map(|i| TargetKey::datacenter(&format!("acct-{:04}", i / 3), dcs[i % 3]))
        .collect();
    let outcomes: Vec<Outcome> = (0..targets)
        .map(|i| outcome(dcs[i % 3], i as u64))
        .collect();
    for (key, outcome) in keys.iter().zip(&outcomes) {
        state.register(key, Duration::from_secs(10), Duration::from_secs(3600));
        state.publish(key, Duration::from_millis(25), outcome.clone());
    }
    state.mark_started();

    let mut i = 0;
    let publish = fastest(|| {
        let key = &keys[i % targets];
        state.publish(
            key,
            Duration::from_millis(25),
            outcomes[i % targets].clone(),
        );
        i += 1;
    });
    // Every account's upstream lines, as after a few requests each.
    let telemetry = Telemetry::new();
    for key in &keys {
        let upstream = telemetry.upstream(&key.account);
        upstream.set_concurrency_limit(4);
        upstream.request("200", 0.021);
    }
    let mut i = 0;
    let account_render = fastest(|| {
        // One request changes the account's lines; the next call renders them.
        let upstream = telemetry.upstream(&keys[i % targets].account);
        upstream.request("200", 0.02);
        black_box(upstream.lines());
        i += 1;
    });
    let accounts = telemetry.account_lines(None);

    let snap = state.snapshot();
    let mut lines = snap.lines(None);
    lines.extend(accounts.iter().map(|l| &**l));
    let sources = Sources {
        lines,
        collectors: &snap.collectors,
        own: &[],
    };
    let mut plain = None;
    let write_plain = fastest(|| {
        plain = Some(black_box(sources.body(Format::Text, false)));
    });
    let mut gzip = None;
    let write_gzip = fastest(|| {
        gzip = Some(black_box(sources.body(Format::Text, true)));
    });
    let (plain, gzip) = (plain.unwrap(), gzip.unwrap());

    // What a scrape costs the server when one target published since the last:
    // the whole body is written again.
    let state = std::sync::Arc::new(state);
    let cache = MetricsCache::new(std::sync::Arc::clone(&state), telemetry.clone());
    let mut i = 0;
    let scrape = fastest(|| {
        state.publish(
            &keys[i % targets],
            Duration::from_millis(25),
            outcomes[i % targets].clone(),
        );
        black_box(cache.body(Format::Text, true));
        i += 1;
    });

    println!("{targets} targets of 100 images, fastest call:");
    println!(
        "  publish one pass (render):          {:>8.3} ms",
        ms(publish)
    );
    println!(
        "  render an account's upstream lines:  {:>8.3} ms",
        ms(account_render)
    );
    println!(
        "  write the plain body:                {:>8.3} ms",
        ms(write_plain)
    );
    println!(
        "  write the gzip body:                 {:>8.3} ms",
        ms(write_gzip)
    );
    println!(
        "  publish one pass, then a gzip scrape:{:>8.3} ms",
        ms(scrape)
    );
    println!(
        "  body: {} bytes, {} gzip-compressed ({:.1}x)",
        plain.len(),
        gzip.len(),
        plain.len() as f64 / gzip.len() as f64
    );
}
