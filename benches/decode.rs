//! Micro-benchmarks of the refresh's CPU path: decoding one page of the upstream
//! answer, and folding its items into the aggregator.
//!
//! Run with `cargo bench --bench decode`. Prints nanoseconds per image.

use std::hint::black_box;
use std::time::{Duration, Instant};

use finovy_image_exporter::aggregate::Aggregator;
use finovy_image_exporter::settings::SizeUnit;
use finovy_image_exporter::sim::{generate, GenerateOptions};
use finovy_image_exporter::upstream::wire::decode_page;

fn page_body(items: usize, seed: u64) -> Vec<u8> {
    let images = generate(&GenerateOptions {
        images: items,
        seed,
        ..Default::default()
    });
    serde_json::to_vec(&serde_json::json!({
        "code": 0, "success": true, "msg": "success", "traceId": "bench",
        "data": {"data": images, "totalCounts": 1_000_000},
    }))
    .unwrap()
}

/// Runs `f` repeatedly for about a second and returns the time per call.
fn time_per_call(mut f: impl FnMut()) -> Duration {
    let mut calls = 0u32;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(1) {
        f();
        calls += 1;
    }
    start.elapsed() / calls
}

fn main() {
    let body = page_body(100, 1);
    let decode = time_per_call(|| {
        black_box(decode_page(black_box(&body), SizeUnit::Gib).unwrap());
    });
    println!(
        "decode_page, 100 items ({} bytes): {:>8.0} ns/image",
        body.len(),
        decode.as_nanos() as f64 / 100.0
    );

    let pages: Vec<_> = (0..50)
        .map(|seed| decode_page(&page_body(100, seed), SizeUnit::Gib).unwrap())
        .collect();
    let aggregate = time_per_call(|| {
        let mut agg = Aggregator::new();
        for page in &pages {
            for item in &page.items {
                agg.add("HZ", item);
            }
        }
        black_box(agg.finish());
    });
    println!(
        "aggregate, 5000 items:               {:>8.0} ns/image",
        aggregate.as_nanos() as f64 / 5000.0
    );
}
