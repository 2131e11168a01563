//! The whole `/metrics` exposition of a fixed simulated inventory, compared byte
//! for byte with `tests/golden/metrics.txt` (the node_exporter and json_exporter
//! pattern): any change to a family, a label, a help text or the order of series
//! shows up in review as a diff of that file.
//!
//! Values that depend on time or on how many passes ran (durations, timestamps,
//! request counts and latencies, `process_*`) are replaced by `<volatile>` before
//! the comparison; everything else is exact. To accept a change, run
//! `UPDATE_GOLDEN=1 cargo test --test golden` and review the diff.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{parse_metrics, wait_for, LoopbackSim};
use finovy_image_exporter::sim::{self, SimOptions, Simulator};

const DEADLINE: Duration = Duration::from_secs(30);

/// Families whose values change from scrape to scrape, whatever the inventory.
const VOLATILE: &[&str] = &[
    "finovy_refresh_duration_seconds",
    "finovy_refresh_last_success_timestamp_seconds",
    "finovy_api_requests_total",
    "finovy_api_request_duration_seconds",
    "finovy_config_last_reload_success_timestamp_seconds",
    // Ages are now − createTime: the simulated inventory is fixed, the clock not.
    "finovy_images_age_seconds_bucket",
    "finovy_images_age_seconds_gsum",
];

/// The exposition with volatile values masked, the build's revision masked (it
/// changes with every commit) and `process_*` left out.
fn normalise(body: &str) -> String {
    let mut out = String::new();
    // The revision changes with every commit: the file would never match.
    let body = body.replace(
        &format!("revision=\"{}\"", finovy_image_exporter::REVISION),
        "revision=\"<revision>\"",
    );
    for line in body.lines() {
        let masked;
        let line = match line.find("revision=\"") {
            Some(at) if line.starts_with("finovy_exporter_build_info{") => {
                let start = at + "revision=\"".len();
                let end = start + line[start..].find('"').unwrap_or(0);
                masked = format!("{}<revision>{}", &line[..start], &line[end..]);
                masked.as_str()
            }
            _ => line,
        };
        let name = line
            .trim_start_matches("# HELP ")
            .trim_start_matches("# TYPE ")
            .split(['{', ' '])
            .next()
            .unwrap_or("");
        if name.starts_with("process_") {
            continue;
        }
        let volatile =
            !line.starts_with('#') && VOLATILE.iter().any(|family| name.starts_with(family));
        match line.rsplit_once(' ') {
            Some((series, _)) if volatile => {
                out.push_str(series);
                out.push_str(" <volatile>\n");
            }
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_of_a_fixed_inventory_match_the_golden_file() {
    let images = sim::generate(&sim::GenerateOptions {
        images: 40,
        datacenters: vec!["HZ".into(), "SH".into()],
        image_types: vec!["Windows".into(), "Ubuntu".into()],
        seed: 7,
        now_ms: 1_790_000_000_000,
    });
    let upstream = LoopbackSim::start(Simulator::new(
        images,
        SimOptions {
            token: Some("g0lden".into()),
            ..Default::default()
        },
    ))
    .await;
    let token = std::env::temp_dir().join(format!("finovy-golden-{}.token", std::process::id()));
    std::fs::write(&token, "g0lden\n").unwrap();
    let (addr, _stop) = common::spawn_exporter([
        "--web.listen-address",
        "127.0.0.1:0",
        "--api.url",
        &format!("http://{}", upstream.addr),
        "--api.token-file",
        token.to_str().unwrap(),
        "--datacenters",
        "HZ,SH",
        "--refresh.interval",
        "1s",
    ])
    .await;
    finovy_image_exporter::install_crypto_provider();
    let client = reqwest::Client::new();
    let body = wait_for("both datacenters up", DEADLINE, || async {
        let body = client
            .get(format!("http://{addr}/metrics"))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        let m = parse_metrics(&body);
        ["HZ", "SH"]
            .iter()
            .all(|dc| {
                m.get(&format!(
                    "finovy_up{{account=\"default\",datacenter_key=\"{dc}\"}}"
                )) == Some(&1.0)
            })
            .then_some(body)
    })
    .await;
    compare("metrics.txt", &normalise(&body));
    // The same scrape as Prometheus makes it: OpenMetrics, gzip-compressed.
    let zipped = client
        .get(format!("http://{addr}/metrics"))
        .header("Accept", "application/openmetrics-text;version=1.0.0")
        .header("Accept-Encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(
        zipped.headers().get("content-encoding").unwrap(),
        "gzip",
        "asked for gzip"
    );
    let zipped = zipped.bytes().await.unwrap();
    let mut openmetrics = String::new();
    std::io::Read::read_to_string(
        &mut flate2::read::GzDecoder::new(&zipped[..]),
        &mut openmetrics,
    )
    .expect("a valid gzip stream of UTF-8 text");
    compare("metrics.openmetrics.txt", &normalise(&openmetrics));
    // Only now: the token file is read at every pass, and a pass without it
    // would fail and change what the second scrape shows.
    let _ = std::fs::remove_file(&token);
}

/// Compares `got` with the golden file `name` (or writes it under UPDATE_GOLDEN).
fn compare(name: &str, got: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; run UPDATE_GOLDEN=1 to create it", path.display()));
    if got != want {
        let first = got
            .lines()
            .zip(want.lines())
            .position(|(g, w)| g != w)
            .unwrap_or(got.lines().count().min(want.lines().count()));
        panic!(
            "/metrics differs from {} from line {}:\n  got:  {:?}\n  want: {:?}\n(UPDATE_GOLDEN=1 cargo test --test golden accepts the change; review the diff)",
            path.display(),
            first + 1,
            got.lines().nth(first),
            want.lines().nth(first)
        );
    }
}

#[test]
fn normalising_masks_only_volatile_values() {
    let text = "# HELP finovy_up x\nfinovy_up{a=\"1\"} 1\nfinovy_refresh_duration_seconds{a=\"1\"} 0.25\nprocess_cpu_seconds_total 3\n";
    assert_eq!(
        normalise(text),
        "# HELP finovy_up x\nfinovy_up{a=\"1\"} 1\nfinovy_refresh_duration_seconds{a=\"1\"} <volatile>\n"
    );
}
