//! End-to-end behaviour of the exporter against the simulator on loopback:
//! exact aggregates, imperfect paging, discovery, authentication failures,
//! series lifecycle, endpoints, token hygiene, promtool, and shutdown.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use common::{get, parse_metrics, scrape, status_label, wait_for, ExporterProcess, LoopbackSim};
use finovy_image_exporter::sim::{self, AuthStyle, Faults, SimImage, SimOptions, Simulator};
use tokio::sync::oneshot;

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;
const DEADLINE: Duration = Duration::from_secs(30);

async fn start_sim(images: Vec<SimImage>, options: SimOptions, faults: Faults) -> LoopbackSim {
    let sim = Simulator::new(images, options);
    sim.set_faults(faults);
    LoopbackSim::start(sim).await
}

/// A unique scratch directory for this test process.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "finovy-exporter-test-{}-{name}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn token_file(name: &str, token: &str) -> PathBuf {
    let path = scratch(name).join("token");
    std::fs::write(&path, format!("{token}\n")).unwrap();
    path
}

/// An in-process exporter on a loopback port, stopped on drop.
struct RunningExporter {
    addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

async fn start_exporter(
    upstream: SocketAddr,
    token: &str,
    name: &str,
    extra: &[&str],
) -> RunningExporter {
    let token_path = token_file(name, token);
    let upstream = format!("http://{upstream}");
    let mut args = vec![
        "--web.listen-address",
        "127.0.0.1:0",
        "--api.url",
        &upstream,
        "--api.token-file",
        token_path.to_str().unwrap(),
        "--refresh.interval",
        "1s",
        // Room for a pass of a debug build on a busy machine; the tests of the
        // pass deadline set their own.
        "--refresh.timeout",
        "30s",
        "--api.timeout",
        "5s",
    ];
    args.extend_from_slice(extra);
    let (addr, stop) = common::spawn_exporter(args).await;
    RunningExporter { addr, _stop: stop }
}

/// The image series the exporter must publish for `images`, computed here
/// independently of the exporter's code.
fn expected_series(images: &[SimImage]) -> BTreeMap<String, f64> {
    let mut groups: BTreeMap<(String, &str, String), (f64, f64, i64)> = BTreeMap::new();
    for im in images {
        let ty = if im.image_type.is_empty() {
            "unknown".to_string()
        } else {
            im.image_type.clone()
        };
        let key = (im.datacenter_key.clone(), status_label(im.status), ty);
        let e = groups.entry(key).or_insert((0.0, 0.0, i64::MAX));
        e.0 += 1.0;
        e.1 += (im.image_size.trim().parse::<f64>().unwrap() * GIB).round();
        e.2 = e.2.min(im.create_time);
    }
    let mut out = BTreeMap::new();
    for ((dc, status, ty), (count, size, oldest)) in groups {
        let ty = ty
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n");
        let labels = format!("{{account=\"default\",datacenter_key=\"{dc}\",status=\"{status}\",image_type=\"{ty}\"}}");
        out.insert(format!("finovy_images{labels}"), count);
        out.insert(format!("finovy_images_size_bytes{labels}"), size);
        out.insert(
            format!("finovy_images_oldest_created_timestamp_seconds{labels}"),
            oldest as f64 / 1000.0,
        );
    }
    out
}

fn image_series(metrics: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    metrics
        .iter()
        .filter(|(k, _)| is_group_series(k))
        .map(|(k, v)| (k.clone(), *v))
        .collect()
}

/// Whether `series` is one of the per-group image gauges (count, size, oldest).
fn is_group_series(series: &str) -> bool {
    [
        "finovy_images{",
        "finovy_images_size_bytes{",
        "finovy_images_oldest_created_timestamp_seconds{",
    ]
    .iter()
    .any(|family| series.starts_with(family))
}

/// Waits until the exporter's image series equal `expected`, showing the
/// difference if they never do.
async fn wait_for_exact(
    addr: SocketAddr,
    expected: &BTreeMap<String, f64>,
) -> BTreeMap<String, f64> {
    let start = std::time::Instant::now();
    loop {
        let metrics = scrape(addr).await;
        let got = image_series(&metrics);
        if &got == expected {
            return metrics;
        }
        if start.elapsed() > DEADLINE {
            let missing: Vec<_> = expected
                .iter()
                .filter(|(k, v)| got.get(*k) != Some(v))
                .take(5)
                .collect();
            let extra: Vec<_> = got
                .iter()
                .filter(|(k, _)| !expected.contains_key(*k))
                .take(5)
                .collect();
            panic!("image series never matched: missing or different {missing:?}, unexpected {extra:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn dataset(images: usize, datacenters: &[&str], seed: u64) -> Vec<SimImage> {
    sim::generate(&sim::GenerateOptions {
        images,
        datacenters: datacenters.iter().map(|s| s.to_string()).collect(),
        image_types: vec!["Windows".into(), "Ubuntu".into(), "CentOS".into()],
        seed,
        now_ms: 1_790_000_000_000,
    })
}

fn odd_image(id: &str, dc: &str, ty: &str, status: u8, size: &str, created: i64) -> SimImage {
    SimImage {
        id: id.into(),
        image_id: 1,
        image_type: ty.into(),
        image_name: id.into(),
        image_size: size.into(),
        datacenter_key: dc.into(),
        status,
        create_time: created,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_counts_sizes_and_oldest_per_group() {
    let mut images = dataset(1234, &["HZ", "SH", "HK"], 7);
    // Odd corners: an unlisted status code, an empty type, a fractional size,
    // a label value that needs escaping.
    images.push(odd_image("odd-1", "HZ", "", 9, "0.50", 1_700_000_000_000));
    images.push(odd_image(
        "odd-2",
        "SH",
        "Win \"11\"",
        0,
        "3.25",
        1_700_000_005_000,
    ));
    let upstream = start_sim(images.clone(), SimOptions::default(), Faults::default()).await;
    let exporter = start_exporter(
        upstream.addr,
        "t0ken",
        "exact",
        &["--datacenters", "HZ,SH,HK", "--api.page-size", "50"],
    )
    .await;
    let expected = expected_series(&images);
    assert!(expected.len() > 60, "the data set covers many groups");
    let metrics = wait_for_exact(exporter.addr, &expected).await;
    for dc in ["HZ", "SH", "HK"] {
        assert_eq!(
            metrics[&format!("finovy_up{{account=\"default\",datacenter_key=\"{dc}\"}}")],
            1.0
        );
        assert!(
            metrics[&format!(
                "finovy_refresh_last_success_timestamp_seconds{{account=\"default\",datacenter_key=\"{dc}\"}}"
            )] > 1.7e9
        );
    }
    let requests = upstream.sim.requests();
    let first = &requests[0];
    assert!(first.query.contains("pageSize=50"), "{}", first.query);
    assert!(first.query.contains("datacenterKey="), "{}", first.query);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capped_pages_repeated_items_and_a_short_last_page_all_yield_exact_totals() {
    let images = dataset(1001, &["HZ", "SH"], 11);
    let expected = expected_series(&images);
    let cases = [
        (
            "capped",
            Faults {
                page_cap: Some(7),
                ..Default::default()
            },
            "100",
        ),
        (
            "overlap",
            Faults {
                overlap: 3,
                ..Default::default()
            },
            "40",
        ),
        (
            "capped-overlap",
            Faults {
                page_cap: Some(30),
                overlap: 1,
                ..Default::default()
            },
            "100",
        ),
        ("short-last-page", Faults::default(), "100"),
    ];
    for (name, faults, page_size) in cases {
        let upstream = start_sim(images.clone(), SimOptions::default(), faults.clone()).await;
        let exporter = start_exporter(
            upstream.addr,
            "t0ken",
            name,
            &["--datacenters", "HZ,SH", "--api.page-size", page_size],
        )
        .await;
        let metrics = wait_for_exact(exporter.addr, &expected).await;
        let duplicates = metrics
            ["finovy_pagination_anomalies_total{account=\"default\",datacenter_key=\"HZ\",kind=\"duplicate_items\"}"];
        assert_eq!(
            duplicates > 0.0,
            faults.overlap > 0,
            "{name}: duplicates are reported when pages overlap"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_finds_every_datacenter() {
    let datacenters = ["HZ", "SH", "HK", "BJ", "GZ"];
    let images = dataset(777, &datacenters, 3);
    let upstream = start_sim(images.clone(), SimOptions::default(), Faults::default()).await;
    let exporter = start_exporter(
        upstream.addr,
        "t0ken",
        "discovery",
        &["--api.page-size", "64"],
    )
    .await;
    let metrics = wait_for_exact(exporter.addr, &expected_series(&images)).await;
    for dc in datacenters {
        assert_eq!(
            metrics[&format!("finovy_up{{account=\"default\",datacenter_key=\"{dc}\"}}")],
            1.0,
            "{dc}"
        );
    }
    assert!(
        upstream
            .sim
            .requests()
            .iter()
            .all(|r| !r.query.contains("datacenterKey")),
        "discovery passes are unfiltered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthorized_in_either_style_counts_auth_failures_and_keeps_serving() {
    for style in [AuthStyle::Http, AuthStyle::Body] {
        let options = SimOptions {
            token: Some("the-right-token".into()),
            auth_style: style,
        };
        let upstream = start_sim(dataset(50, &["HZ"], 1), options, Faults::default()).await;
        let name = format!("auth-{style:?}");
        let exporter = start_exporter(
            upstream.addr,
            "a-wrong-token",
            &name,
            &["--datacenters", "HZ"],
        )
        .await;
        let metrics = wait_for(&format!("auth failures ({style:?})"), DEADLINE, || async {
            let m = scrape(exporter.addr).await;
            let failures = m
                .get("finovy_refresh_failures_total{account=\"default\",datacenter_key=\"HZ\",reason=\"auth\"}")
                .copied()
                .unwrap_or(0.0);
            (failures >= 2.0).then_some(m)
        })
        .await;
        assert_eq!(
            metrics["finovy_up{account=\"default\",datacenter_key=\"HZ\"}"],
            0.0
        );
        assert_eq!(
            metrics["finovy_refresh_failures_total{account=\"default\",datacenter_key=\"HZ\",reason=\"api\"}"], 0.0,
            "{style:?}: a 401 in the body is an auth failure, not an API error"
        );
        assert!(image_series(&metrics).is_empty());
        let (status, _) = get(&format!("http://{}/healthz", exporter.addr)).await;
        assert_eq!(status, 200);
        let (status, body) = get(&format!("http://{}/readyz", exporter.addr)).await;
        assert_eq!(
            status, 200,
            "the first cycle finished, even though it failed"
        );
        assert!(body.contains("datacenter_key=\"HZ\" up=0"), "{body}");
        assert!(body.contains("auth at"), "{body}");
        // Only one try per refresh: authentication failures are not retried.
        let requests = upstream.sim.requests().len() as f64;
        let failures = scrape(exporter.addr).await
            ["finovy_refresh_failures_total{account=\"default\",datacenter_key=\"HZ\",reason=\"auth\"}"];
        assert!(
            requests <= failures + 1.0,
            "{requests} requests for {failures} failed refreshes"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_removed_upstream_disappears_after_the_next_refresh() {
    let mut images = dataset(300, &["HZ", "SH"], 5);
    images.push(odd_image(
        "sol-1",
        "HZ",
        "Solaris",
        1,
        "1.00",
        1_700_000_001_000,
    ));
    images.push(odd_image(
        "sol-2",
        "HZ",
        "Solaris",
        1,
        "2.00",
        1_700_000_002_000,
    ));
    let upstream = start_sim(images.clone(), SimOptions::default(), Faults::default()).await;
    let exporter = start_exporter(
        upstream.addr,
        "t0ken",
        "vanish",
        &["--datacenters", "HZ,SH"],
    )
    .await;
    let before = wait_for_exact(exporter.addr, &expected_series(&images)).await;
    let solaris =
        "finovy_images{account=\"default\",datacenter_key=\"HZ\",status=\"available\",image_type=\"Solaris\"}";
    assert_eq!(before[solaris], 2.0);
    images.retain(|im| im.image_type != "Solaris");
    upstream.sim.set_images(images.clone());
    let after = wait_for_exact(exporter.addr, &expected_series(&images)).await;
    assert!(!after.contains_key(solaris));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_never_wait_on_a_hanging_upstream_and_readiness_waits_for_the_first_cycle() {
    // An upstream that accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = listener.accept().await {
            held.push(conn);
        }
    });
    let exporter = start_exporter(
        upstream,
        "t0ken",
        "hang",
        &[
            "--datacenters",
            "HZ",
            "--api.timeout",
            "60s",
            "--refresh.timeout",
            "60s",
        ],
    )
    .await;
    for _ in 0..5 {
        let started = std::time::Instant::now();
        let (status, body) = get(&format!("http://{}/metrics", exporter.addr)).await;
        assert_eq!(status, 200);
        assert!(body.contains("finovy_exporter_build_info{"));
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "a scrape waited on the upstream"
        );
        let (status, body) = get(&format!("http://{}/readyz", exporter.addr)).await;
        assert_eq!(status, 503, "{body}");
    }
    let (status, _) = get(&format!("http://{}/healthz", exporter.addr)).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_gzip_head_404_and_405() {
    let images = dataset(100, &["HZ"], 2);
    let upstream = start_sim(images.clone(), SimOptions::default(), Faults::default()).await;
    let exporter = start_exporter(
        upstream.addr,
        "t0ken",
        "endpoints",
        &["--web.telemetry-path", "/custom"],
    )
    .await;
    // The first successful pass: ready, with data (a pass that failed on a busy
    // machine would make it ready without).
    wait_for("first successful pass", DEADLINE, || async {
        let (status, _) = get(&format!("http://{}/readyz", exporter.addr)).await;
        let (_, body) = get(&format!("http://{}/custom", exporter.addr)).await;
        (status == 200 && body.contains("finovy_images{")).then_some(())
    })
    .await;
    let client = reqwest::Client::new();
    let base = format!("http://{}", exporter.addr);

    let plain = client.get(format!("{base}/custom")).send().await.unwrap();
    assert_eq!(
        plain.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let plain = plain.text().await.unwrap();
    let zipped = client
        .get(format!("{base}/custom"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(zipped.headers()["content-encoding"], "gzip");
    let bytes = zipped.bytes().await.unwrap();
    let mut unzipped = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&bytes[..]), &mut unzipped)
        .unwrap();
    assert!(bytes.len() < unzipped.len());
    assert_eq!(
        image_series(&parse_metrics(&unzipped)),
        image_series(&parse_metrics(&plain))
    );
    assert_eq!(
        image_series(&parse_metrics(&plain)),
        expected_series(&images)
    );

    assert_eq!(
        client
            .get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        client
            .get(format!("{base}/nope"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    let post = client
        .post(format!("{base}/custom"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 405);
    assert_eq!(post.headers()["allow"], "GET, HEAD");
    let head = client.head(format!("{base}/custom")).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert!(head.bytes().await.unwrap().is_empty());

    let landing = client
        .get(&base)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(landing.contains("href=\"/custom\""), "{landing}");
    assert!(landing.contains(finovy_image_exporter::VERSION));
    assert!(
        landing.contains("<td>default</td><td>HZ</td><td class=\"up\">up</td>"),
        "{landing}"
    );
    assert!(
        landing.contains("<td>100</td>"),
        "the image count is shown: {landing}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_appears_nowhere_in_either_log_format() {
    const TOKEN: &str = "Zq7-very-distinctive-token-4vL4rcNG";
    let dir = scratch("leak");
    let token_path = dir.join("token");
    std::fs::write(&token_path, TOKEN).unwrap();
    for (format, accepted) in [
        ("logfmt", true),
        ("json", true),
        ("logfmt", false),
        ("json", false),
    ] {
        let options = SimOptions {
            token: Some(if accepted {
                TOKEN.to_string()
            } else {
                "other".to_string()
            }),
            auth_style: AuthStyle::Body,
        };
        let upstream = start_sim(dataset(120, &["HZ", "SH"], 4), options, Faults::default()).await;
        let api_url = format!("http://{}", upstream.addr);
        let process = ExporterProcess::spawn(
            &[
                "--api.url",
                &api_url,
                "--api.token-file",
                token_path.to_str().unwrap(),
                "--refresh.interval",
                "1s",
                "--log.level",
                "debug",
                "--log.format",
                format,
                "--api.header",
                "X-Extra=header-value",
            ],
            &[],
        );
        let mut pages = String::new();
        wait_for("two refresh cycles", DEADLINE, || async {
            let (_, m) = get(&process.url("/metrics")).await;
            let requests = parse_metrics(&m)
                .iter()
                .filter(|(k, _)| k.starts_with("finovy_api_requests_total"))
                .map(|(_, v)| v)
                .sum::<f64>();
            (requests >= 4.0).then_some(())
        })
        .await;
        for path in ["/", "/metrics", "/readyz", "/healthz"] {
            pages.push_str(&get(&process.url(path)).await.1);
        }
        let received = upstream.sim.requests();
        assert!(
            received.iter().all(|r| r
                .headers
                .iter()
                .any(|(k, v)| k == "finovy-access-token" && v == TOKEN)),
            "the token was sent upstream"
        );
        assert!(received.iter().all(|r| r
            .headers
            .iter()
            .any(|(k, v)| k == "x-extra" && v == "header-value")));
        let output = process.output().join("\n");
        assert!(!output.is_empty());
        assert!(
            !output.contains(TOKEN),
            "{format}: token in the logs:\n{output}"
        );
        assert!(!pages.contains(TOKEN), "token in a page");
        if !accepted {
            let failure = process
                .output()
                .into_iter()
                .find(|l| l.contains("refresh failed"))
                .unwrap_or_else(|| panic!("no failure line in:\n{output}"));
            for needle in [
                "reason",
                "auth",
                "datacenter_key",
                "trace_id",
                "http_status",
            ] {
                assert!(failure.contains(needle), "{needle} missing from {failure}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_check_metrics() {
    let Some(promtool) = common::require_tool("promtool") else {
        return;
    };
    // Every collector on, image-info (opt-in) too.
    let process = ExporterProcess::spawn(
        &[
            "--demo",
            "--refresh.interval",
            "1s",
            "--collector.image-info",
        ],
        &[],
    );
    let body = wait_for("demo data", DEADLINE, || async {
        let (_, body) = get(&process.url("/metrics")).await;
        body.contains("finovy_images{").then_some(body)
    })
    .await;
    let mut child = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), body.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool failed: {said}");
    assert!(said.trim().is_empty(), "promtool warned: {said}");
    // The login families appear only for accounts that log in (none here).
    for family in finovy_image_exporter::metrics::ALL
        .iter()
        .map(|f| f.name)
        .filter(|name| !name.starts_with("finovy_auth_"))
        .chain(["process_resident_memory_bytes"])
    {
        assert!(
            body.contains(&format!("# TYPE {family} ")),
            "{family} missing"
        );
    }
}

#[test]
fn a_bad_flag_exits_2_with_clap_s_whole_message_once() {
    for (args, flag, hint) in [
        (&["--api.timeout", "soon"][..], "--api.timeout", "duration"),
        (
            &["--datacenters", "HZ,,SH"][..],
            "--datacenters",
            "datacenter key",
        ),
        (&["--no-such-flag"][..], "--no-such-flag", "Usage:"),
        (
            &["--datacenter", "HZ"][..],
            "--datacenter",
            "a similar argument exists: '--datacenters'",
        ),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_finovy-image-exporter"))
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            stderr.matches("error:").count(),
            1,
            "printed once: {stderr}"
        );
        assert!(stderr.contains(flag), "{stderr}");
        assert!(stderr.contains(hint), "{hint} missing from {stderr}");
        assert!(out.stdout.is_empty(), "errors go to stderr");
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_finovy-image-exporter"))
        .env("FINOVY_API_PAGE_SIZE", "-3")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--api.page-size"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_finovy-image-exporter"))
        .args(["--web.listen-address", "127.0.0.1:0"])
        .env_remove("FINOVY_ACCESS_TOKEN")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "no token is a configuration error"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("FINOVY_ACCESS_TOKEN"), "{stderr}");
    assert_eq!(
        stderr.matches("FINOVY_ACCESS_TOKEN").count(),
        1,
        "a start-up error is printed once: {stderr}"
    );
}

#[test]
fn version_and_help_read_as_prometheus_tools_do() {
    let run = |arg: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_finovy-image-exporter"))
            .arg(arg)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{arg}");
        String::from_utf8(out.stdout).unwrap()
    };
    let version = run("--version");
    let first = version.lines().next().unwrap();
    assert!(
        first.starts_with(&format!(
            "finovy-image-exporter {} (branch: ",
            env!("CARGO_PKG_VERSION")
        )),
        "{version}"
    );
    assert!(first.contains(", revision: "), "{version}");
    let field = |key: &str| {
        version
            .lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in {version}"))
            .trim()
            .to_string()
    };
    let date = field("build date:");
    assert!(
        date.len() == 17
            && date.as_bytes()[8] == b'-'
            && date[..8].bytes().all(|b| b.is_ascii_digit()),
        "build date {date}"
    );
    assert!(field("rustc version:").starts_with("rustc "), "{version}");
    assert!(field("platform:").contains('/'), "{version}");
    let help = run("--help");
    for heading in [
        "Web:",
        "API:",
        "API TLS and proxy:",
        "Filters:",
        "Refresh:",
        "Limits:",
        "Logs:",
        "Sharding:",
        "Environment:",
    ] {
        assert!(
            help.lines().any(|l| l == heading),
            "no heading {heading} in --help"
        );
    }
    assert!(help.contains("FINOVY_ACCESS_TOKEN"), "{help}");
    // Each flag sits under its heading.
    let section = |flag: &str| {
        let at = help.find(flag).unwrap();
        help[..at]
            .lines()
            .rev()
            .find(|l| l.ends_with(':') && !l.starts_with(' '))
            .unwrap()
            .to_string()
    };
    assert_eq!(section("--web.listen-address"), "Web:");
    assert_eq!(section("--api.tls.ca-file"), "API TLS and proxy:");
    assert_eq!(section("--log.format"), "Logs:");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_scrape_lets_it_complete_and_exits_zero() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Enough groups for a /metrics answer far larger than the socket buffers,
    // so the server is still writing it when the signal comes.
    let types: Vec<String> = (0..3000)
        .map(|i| format!("type-{i:04}-with-a-rather-long-name"))
        .collect();
    let images = sim::generate(&sim::GenerateOptions {
        images: 15_000,
        datacenters: vec!["HZ".into()],
        image_types: types,
        seed: 9,
        now_ms: 1_790_000_000_000,
    });
    let upstream = start_sim(images, SimOptions::default(), Faults::default()).await;
    let api_url = format!("http://{}", upstream.addr);
    let mut process = ExporterProcess::spawn(
        &[
            "--api.url",
            &api_url,
            "--datacenters",
            "HZ",
            "--api.page-size",
            "1000",
            "--limit.image-types",
            "5000",
            "--refresh.interval",
            "1s",
            // A debug build on a busy machine may take longer than the interval.
            "--refresh.timeout",
            "30s",
        ],
        &[("FINOVY_ACCESS_TOKEN", "t0ken")],
    );
    wait_for("data", DEADLINE, || async {
        get(&process.url("/metrics"))
            .await
            .1
            .contains("finovy_images{")
            .then_some(())
    })
    .await;

    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut conn = socket.connect(process.addr).await.unwrap();
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut received = vec![0u8; 1024];
    let n = conn.read(&mut received).await.unwrap();
    received.truncate(n);
    assert!(received.starts_with(b"HTTP/1.1 200"));

    let kill = std::process::Command::new("kill")
        .args(["-TERM", &process.child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    // The listener closes at once: new connections are refused.
    wait_for("listener closed", DEADLINE, || async {
        tokio::net::TcpStream::connect(process.addr)
            .await
            .is_err()
            .then_some(())
    })
    .await;
    conn.read_to_end(&mut received).await.unwrap();
    let text = String::from_utf8_lossy(&received);
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .expect("content-length")
        .parse()
        .unwrap();
    assert!(length > 1 << 20, "the answer is large: {length}");
    assert_eq!(body.len(), length, "the scrape completed");
    assert!(body.ends_with('\n'));

    let status = wait_for("exit", DEADLINE, || {
        let status = process.child.try_wait().unwrap();
        async move { status }
    })
    .await;
    assert_eq!(status.code(), Some(0));
}

#[test]
fn an_interval_below_one_second_or_a_shard_that_does_not_exist_exits_2_naming_the_flag() {
    for (args, needle) in [
        (&["--refresh.interval", "500ms"][..], "--refresh.interval"),
        (
            &["--shard", "3", "--total-shards", "3"][..],
            "--total-shards 3",
        ),
        (
            &["--shard.from-pod-name", "exporter", "--total-shards", "3"][..],
            "does not end in -N",
        ),
        (
            &["--shard", "1", "--shard.from-pod-name", "exporter-1"][..],
            "--shard",
        ),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_finovy-image-exporter"))
            .args(["--web.listen-address", "127.0.0.1:0", "--demo"])
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hangup_and_user_signals_are_logged_and_never_stop_the_exporter() {
    let mut process = ExporterProcess::spawn(&["--demo", "--refresh.interval", "1s"], &[]);
    for signal in ["HUP", "USR1", "USR2", "QUIT", "ALRM"] {
        let sent = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &process.child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        wait_for(&format!("the SIG{signal} log line"), DEADLINE, || async {
            process
                .output()
                .iter()
                .any(|l| l.contains(&format!("SIG{signal}")) && l.contains("signal received"))
                .then_some(())
        })
        .await;
        assert!(
            process.child.try_wait().unwrap().is_none(),
            "SIG{signal} stopped it"
        );
        let (status, _) = get(&process.url("/healthz")).await;
        assert_eq!(status, 200, "still serving after SIG{signal}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_shards_refresh_every_target_exactly_once_between_them() {
    let datacenters: Vec<String> = (0..12).map(|i| format!("DC{i:02}")).collect();
    let images = sim::generate(&sim::GenerateOptions {
        images: 360,
        datacenters: datacenters.clone(),
        seed: 12,
        now_ms: 1_790_000_000_000,
        ..Default::default()
    });
    let upstream = start_sim(
        images,
        SimOptions {
            token: Some("t0ken".into()),
            ..Default::default()
        },
        Faults::default(),
    )
    .await;
    let token = token_file("shards", "t0ken");
    let mut exporters = Vec::new();
    for shard in 0..3 {
        let args: Vec<String> = [
            "--web.listen-address",
            "127.0.0.1:0",
            "--api.url",
            &format!("http://{}", upstream.addr),
            "--api.token-file",
            token.to_str().unwrap(),
            "--datacenters",
            &datacenters.join(","),
            "--refresh.interval",
            "1s",
            "--total-shards",
            "3",
            "--shard",
            &shard.to_string(),
            // Tells the simulator's request log which replica asked.
            "--api.param",
            &format!("replica={shard}"),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        exporters.push(common::spawn_exporter(args).await);
    }
    // Every datacenter is refreshed (page 1 asked) at least twice...
    let requests = wait_for("every datacenter refreshed twice", DEADLINE, || async {
        let requests = upstream.sim.requests();
        datacenters
            .iter()
            .all(|dc| {
                requests
                    .iter()
                    .filter(|r| r.param("datacenterKey").as_deref() == Some(dc) && r.page() == 1)
                    .count()
                    >= 2
            })
            .then_some(requests)
    })
    .await;
    // ...and always by the same one replica.
    let mut per_shard = [0usize; 3];
    for dc in &datacenters {
        let replicas: std::collections::BTreeSet<String> = requests
            .iter()
            .filter(|r| r.param("datacenterKey").as_deref() == Some(dc))
            .filter_map(|r| r.param("replica"))
            .collect();
        assert_eq!(replicas.len(), 1, "{dc} asked by replicas {replicas:?}");
        per_shard[replicas.first().unwrap().parse::<usize>().unwrap()] += 1;
    }
    assert_eq!(per_shard.iter().sum::<usize>(), 12);
    // Each replica publishes exactly its own targets, and says which shard it is.
    let mut published = std::collections::BTreeSet::new();
    for (shard, (addr, _)) in exporters.iter().enumerate() {
        let (_, body) = get(&format!("http://{addr}/metrics")).await;
        let m = parse_metrics(&body);
        assert_eq!(
            m.get(&format!(
                "finovy_shard_info{{shard=\"{shard}\",total_shards=\"3\"}}"
            )),
            Some(&1.0)
        );
        let ups: Vec<&String> = m.keys().filter(|k| k.starts_with("finovy_up{")).collect();
        assert_eq!(ups.len(), per_shard[shard], "shard {shard}: {ups:?}");
        for up in ups {
            assert!(published.insert(up.clone()), "{up} published twice");
        }
    }
    assert_eq!(published.len(), 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_beyond_the_cap_close_the_oldest_and_scrapes_still_work() {
    use tokio::io::AsyncReadExt;
    let process = ExporterProcess::spawn(
        &[
            "--demo",
            "--refresh.interval",
            "1s",
            "--web.max-connections",
            "16",
        ],
        &[],
    );
    // 40 clients connect and never send a request.
    let mut idle = Vec::new();
    for _ in 0..40 {
        idle.push(tokio::net::TcpStream::connect(process.addr).await.unwrap());
    }
    // A scrape still gets through: the oldest idle connections made room.
    let (status, body) = get(&process.url("/metrics")).await;
    assert_eq!(status, 200);
    assert!(body.contains("finovy_exporter_build_info"));
    // At most 16 are held: the 24 oldest were closed by the exporter.
    let deadline = std::time::Instant::now() + DEADLINE;
    let mut closed = vec![false; idle.len()];
    while closed.iter().filter(|c| **c).count() < 24 {
        assert!(
            std::time::Instant::now() < deadline,
            "only {} of the idle connections were closed",
            closed.iter().filter(|c| **c).count()
        );
        for (conn, closed) in idle.iter_mut().zip(closed.iter_mut()) {
            let mut byte = [0u8; 1];
            if let Ok(Ok(0) | Err(_)) =
                tokio::time::timeout(Duration::from_millis(5), conn.read(&mut byte)).await
            {
                *closed = true;
            }
        }
    }
    // The oldest went first.
    assert!(closed[..8].iter().all(|c| *c), "{closed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cap_of_one_connection_serves_one_client_after_another() {
    // Each request on a connection of its own: at the cap, the previous one is
    // closed for the new one, never the new one itself.
    let process = ExporterProcess::spawn(&["--demo", "--web.max-connections", "1"], &[]);
    for _ in 0..5 {
        let (status, body) = get(&process.url("/healthz")).await;
        assert_eq!(status, 200, "{body}");
    }
    // A client that opens a connection and holds it, idle, sending nothing:
    // the next client is served, and the held connection is the one closed.
    for _ in 0..3 {
        let mut held = std::net::TcpStream::connect(process.addr).unwrap();
        held.set_read_timeout(Some(DEADLINE)).unwrap();
        let (status, body) = get(&process.url("/healthz")).await;
        assert_eq!(status, 200, "{body}");
        let mut byte = [0u8; 1];
        let read = std::io::Read::read(&mut held, &mut byte);
        assert!(
            matches!(read, Ok(0))
                || read
                    .as_ref()
                    .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
            "the held idle connection was not closed: {read:?}"
        );
    }
}

#[test]
fn the_soft_descriptor_limit_is_raised_to_the_hard_limit() {
    let bin = env!("CARGO_BIN_EXE_finovy-image-exporter");
    let mut child = std::process::Command::new("sh")
        .args([
            "-c",
            &format!("ulimit -Sn 256 && exec '{bin}' --demo --web.listen-address 127.0.0.1:0"),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let limits = format!("/proc/{}/limits", child.id());
    let deadline = std::time::Instant::now() + DEADLINE;
    let raised = loop {
        let text = std::fs::read_to_string(&limits).unwrap_or_default();
        let line = text
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .map(|l| l.split_whitespace().collect::<Vec<_>>());
        if let Some(fields) = line {
            // "Max open files <soft> <hard> files"
            let (soft, hard) = (fields[3], fields[4]);
            if soft == hard && soft != "256" {
                break (soft.to_string(), hard.to_string());
            }
        }
        assert!(std::time::Instant::now() < deadline, "still 256: {text}");
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = child.kill();
    let _ = child.wait();
    assert_ne!(raised.0, "256", "the soft limit was raised: {raised:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_probes_are_answered_while_large_scrapes_fill_every_request_slot() {
    let types: Vec<String> = (0..3000)
        .map(|i| format!("type-{i:04}-long-name"))
        .collect();
    let images = sim::generate(&sim::GenerateOptions {
        images: 15_000,
        datacenters: vec!["HZ".into()],
        image_types: types,
        seed: 10,
        now_ms: 1_790_000_000_000,
    });
    let upstream = start_sim(images, SimOptions::default(), Faults::default()).await;
    let process = ExporterProcess::spawn(
        &[
            "--api.url",
            &format!("http://{}", upstream.addr),
            "--datacenters",
            "HZ",
            "--api.page-size",
            "1000",
            "--limit.image-types",
            "5000",
            "--refresh.interval",
            "1s",
            "--refresh.timeout",
            "30s",
            "--web.max-requests",
            "2",
        ],
        &[("FINOVY_ACCESS_TOKEN", "t0ken")],
    );
    wait_for("data", DEADLINE, || async {
        get(&process.url("/metrics"))
            .await
            .1
            .contains("finovy_images{")
            .then_some(())
    })
    .await;
    // Eight scrapers keep both request slots busy (the rest are refused: 503)...
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut scrapers = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let url = process.url("/metrics");
        let stop = std::sync::Arc::clone(&stop);
        scrapers.spawn(async move {
            let client = reqwest::Client::new();
            let mut statuses = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(resp) = client.get(&url).send().await {
                    statuses.push(resp.status().as_u16());
                    let _ = resp.bytes().await;
                }
            }
            statuses
        });
    }
    // ...and every health probe is answered 200 all the same.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut slowest = Duration::ZERO;
    for _ in 0..50 {
        let started = std::time::Instant::now();
        let resp = client.get(process.url("/healthz")).send().await.unwrap();
        assert_eq!(resp.status(), 200, "a health probe was refused");
        slowest = slowest.max(started.elapsed());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut statuses = Vec::new();
    while let Some(done) = scrapers.join_next().await {
        statuses.extend(done.unwrap());
    }
    assert!(statuses.contains(&200), "scrapes were served");
    assert!(statuses.contains(&503), "the request slots were full");
    eprintln!("slowest /healthz among 50 while scraping: {slowest:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_echoed_by_the_upstream_appears_nowhere_in_logs_pages_or_metrics() {
    const SECRET: &str = "s3cret-token-echoed-77";
    let images = dataset(40, &["HZ"], 3);
    let echo = Faults {
        rules: vec![sim::FaultRule::always(sim::FaultAction::ApiError {
            code: 500,
            msg: format!("bad request for token {SECRET} (token={SECRET})"),
        })],
        ..Faults::default()
    };
    let upstream = start_sim(
        images,
        SimOptions {
            token: Some(SECRET.into()),
            ..Default::default()
        },
        echo,
    )
    .await;
    for format in ["logfmt", "json"] {
        let process = ExporterProcess::spawn(
            &[
                "--api.url",
                &format!("http://{}", upstream.addr),
                "--datacenters",
                "HZ",
                "--refresh.interval",
                "1s",
                "--log.format",
                format,
            ],
            &[("FINOVY_ACCESS_TOKEN", SECRET)],
        );
        let readyz = wait_for("the api failure on /readyz", DEADLINE, || async {
            let (_, body) = get(&process.url("/readyz")).await;
            body.contains("api at").then_some(body)
        })
        .await;
        assert!(
            readyz.contains("**hidden**"),
            "the echo is shown redacted: {readyz}"
        );
        let (_, landing) = get(&process.url("/")).await;
        let (_, metrics) = get(&process.url("/metrics")).await;
        wait_for("the refresh failed line", DEADLINE, || async {
            process
                .output()
                .iter()
                .any(|l| l.contains("refresh failed"))
                .then_some(())
        })
        .await;
        let logs = process.output().join("\n");
        for (what, text) in [
            ("/readyz", &readyz),
            ("/", &landing),
            ("/metrics", &metrics),
            ("the log", &logs),
        ] {
            assert!(
                !text.contains(SECRET),
                "{format}: {what} shows the token:\n{text}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_that_would_travel_in_clear_text_is_warned_about_at_start() {
    let upstream = start_sim(
        dataset(5, &["HZ"], 4),
        SimOptions::default(),
        Faults::default(),
    )
    .await;
    let url = format!("http://{}", upstream.addr);
    let process = ExporterProcess::spawn(
        &["--api.url", &url, "--datacenters", "HZ"],
        &[
            ("FINOVY_ACCESS_TOKEN", "t0ken"),
            ("HTTP_PROXY", "http://127.0.0.1:9"),
        ],
    );
    let lines = wait_for("both warnings", DEADLINE, || async {
        let out = process.output();
        let plain = out.iter().any(|l| l.contains("sent unencrypted"));
        let proxy = out
            .iter()
            .any(|l| l.contains("reaches the proxy in clear text"));
        (plain && proxy).then_some(out)
    })
    .await;
    assert!(lines.iter().all(|l| !l.contains("t0ken")));
}
