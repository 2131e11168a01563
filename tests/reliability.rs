//! The exporter against a misbehaving upstream, fault by fault.
//!
//! Each test runs the simulator and the exporter in this process on loopback,
//! injects one kind of fault (most of them into one datacenter only) and checks
//! what the exporter promises: it keeps serving `/metrics`, `/healthz` and
//! `/readyz`; only the affected datacenter shows `finovy_up 0`, with the right
//! `reason` counted and one warn line logged; the others keep exact numbers,
//! computed here from the simulator's images; transient faults are retried
//! into exact numbers; what cannot be trusted is flagged. Waits are on
//! conditions with deadlines; the only timing assertions are generous upper
//! bounds that prove a bound.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use common::{parse_metrics, wait_for, LoopbackSim};
use finovy_image_exporter::sim::{
    self, AuthStyle, Corruption, FaultAction, FaultRule, Faults, RecordedRequest, SimImage,
    SimOptions, Simulator,
};
use serde_json::Value;
use tokio::sync::oneshot;

const DEADLINE: Duration = Duration::from_secs(20);
const TOKEN: &str = "rel-token-9f3c1a";
const GIB: f64 = 1024.0 * 1024.0 * 1024.0;
const DCS: [&str; 3] = ["HZ", "SH", "HK"];
/// Images per datacenter in most tests: SH is a whole number of pages of 10.
const COUNTS: [(&str, usize); 3] = [("HZ", 43), ("SH", 50), ("HK", 37)];

// ---------------------------------------------------------------------------
// Data and the numbers the exporter must show for it.

/// Exactly `n` images in each listed datacenter, reproducible from `seed`.
fn dataset(counts: &[(&str, usize)], seed: u64) -> Vec<SimImage> {
    let wanted: usize = counts.iter().map(|(_, n)| n).sum();
    let all = sim::generate(&sim::GenerateOptions {
        images: wanted * 4,
        datacenters: counts.iter().map(|(dc, _)| dc.to_string()).collect(),
        image_types: vec!["Windows".into(), "Ubuntu".into(), "CentOS".into()],
        seed,
        now_ms: 1_790_000_000_000,
    });
    let mut left: HashMap<&str, usize> = counts.iter().copied().collect();
    let images: Vec<SimImage> = all
        .into_iter()
        .filter(|im| match left.get_mut(im.datacenter_key.as_str()) {
            Some(n) if *n > 0 => {
                *n -= 1;
                true
            }
            _ => false,
        })
        .collect();
    assert_eq!(images.len(), wanted, "the generator gave enough images");
    images
}

fn in_dc<'a>(images: &'a [SimImage], dc: &'a str) -> impl Iterator<Item = &'a SimImage> + 'a {
    images.iter().filter(move |im| im.datacenter_key == dc)
}

/// One image as the exporter should read it.
struct Read {
    status: &'static str,
    image_type: String,
    bytes: f64,
    created_ms: Option<i64>,
}

fn read_exactly(im: &SimImage) -> Read {
    Read {
        status: common::status_label(im.status),
        image_type: if im.image_type.is_empty() {
            "unknown".into()
        } else {
            im.image_type.clone()
        },
        bytes: (im.image_size.parse::<f64>().unwrap() * GIB).round(),
        created_ms: Some(im.create_time),
    }
}

/// An item whose fields could not be read: counted, in the `unknown` groups.
fn read_unreadable() -> Read {
    Read {
        status: "unknown",
        image_type: "unknown".into(),
        bytes: 0.0,
        created_ms: None,
    }
}

/// The image series of `dc` for these reads, computed independently of the exporter.
fn series(dc: &str, reads: impl IntoIterator<Item = Read>) -> BTreeMap<String, f64> {
    let mut groups: BTreeMap<(&str, String), (f64, f64, Option<i64>)> = BTreeMap::new();
    for r in reads {
        let g = groups
            .entry((r.status, r.image_type))
            .or_insert((0.0, 0.0, None));
        g.0 += 1.0;
        g.1 += r.bytes;
        if let Some(ms) = r.created_ms {
            g.2 = Some(g.2.map_or(ms, |o: i64| o.min(ms)));
        }
    }
    let mut out = BTreeMap::new();
    for ((status, ty), (count, bytes, oldest)) in groups {
        let labels = format!("{{account=\"default\",datacenter_key=\"{dc}\",status=\"{status}\",image_type=\"{ty}\"}}");
        out.insert(format!("finovy_images{labels}"), count);
        out.insert(format!("finovy_images_size_bytes{labels}"), bytes);
        if let Some(ms) = oldest {
            out.insert(
                format!("finovy_images_oldest_created_timestamp_seconds{labels}"),
                ms as f64 / 1000.0,
            );
        }
    }
    out
}

fn expected(images: &[SimImage], dc: &str) -> BTreeMap<String, f64> {
    series(dc, in_dc(images, dc).map(read_exactly))
}

/// The image series the exporter shows for `dc`.
fn shown(metrics: &BTreeMap<String, f64>, dc: &str) -> BTreeMap<String, f64> {
    let needle = format!("{{account=\"default\",datacenter_key=\"{dc}\",");
    metrics
        .iter()
        .filter(|(k, _)| {
            [
                "finovy_images{",
                "finovy_images_size_bytes{",
                "finovy_images_oldest_created_timestamp_seconds{",
            ]
            .iter()
            .any(|family| k.starts_with(family))
                && k.contains(&needle)
        })
        .map(|(k, v)| (k.clone(), *v))
        .collect()
}

fn images_shown(metrics: &BTreeMap<String, f64>, dc: &str) -> f64 {
    let prefix = format!("finovy_images{{account=\"default\",datacenter_key=\"{dc}\",");
    metrics
        .iter()
        .filter(|(k, _)| k.starts_with(&prefix))
        .map(|(_, v)| v)
        .sum()
}

fn metric(metrics: &BTreeMap<String, f64>, series: &str) -> f64 {
    metrics.get(series).copied().unwrap_or(0.0)
}

fn up(metrics: &BTreeMap<String, f64>, dc: &str) -> Option<f64> {
    metrics
        .get(&format!(
            "finovy_up{{account=\"default\",datacenter_key=\"{dc}\"}}"
        ))
        .copied()
}

fn failures(metrics: &BTreeMap<String, f64>, dc: &str, reason: &str) -> f64 {
    metric(
        metrics,
        &format!("finovy_refresh_failures_total{{account=\"default\",datacenter_key=\"{dc}\",reason=\"{reason}\"}}"),
    )
}

fn all_failures(metrics: &BTreeMap<String, f64>, dc: &str) -> f64 {
    ["auth", "timeout", "connect", "http", "api", "decode"]
        .iter()
        .map(|r| failures(metrics, dc, r))
        .sum()
}

fn anomalies(metrics: &BTreeMap<String, f64>, dc: &str, kind: &str) -> f64 {
    metric(
        metrics,
        &format!("finovy_pagination_anomalies_total{{account=\"default\",datacenter_key=\"{dc}\",kind=\"{kind}\"}}"),
    )
}

fn all_anomalies(metrics: &BTreeMap<String, f64>, dc: &str) -> f64 {
    [
        "duplicate_items",
        "total_changed",
        "foreign_items",
        "total_mismatch",
        "page_limit",
    ]
    .iter()
    .map(|k| anomalies(metrics, dc, k))
    .sum()
}

fn duration(metrics: &BTreeMap<String, f64>, dc: &str) -> f64 {
    metric(
        metrics,
        &format!("finovy_refresh_duration_seconds{{account=\"default\",datacenter_key=\"{dc}\"}}"),
    )
}

fn last_success(metrics: &BTreeMap<String, f64>, dc: &str) -> f64 {
    metric(
        metrics,
        &format!("finovy_refresh_last_success_timestamp_seconds{{account=\"default\",datacenter_key=\"{dc}\"}}"),
    )
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Requests the simulator received for `dc` (and `page`, when given).
fn requests_for(sim: &Simulator, dc: &str, page: Option<u32>) -> Vec<RecordedRequest> {
    sim.requests()
        .into_iter()
        .filter(|r| r.param("datacenterKey").as_deref() == Some(dc))
        .filter(|r| page.is_none_or(|p| r.page() == p))
        .collect()
}

fn faulted(requests: &[RecordedRequest]) -> usize {
    requests.iter().filter(|r| !r.faults.is_empty()).count()
}

fn rules(rules: Vec<FaultRule>) -> Faults {
    Faults {
        rules,
        ..Faults::default()
    }
}

// ---------------------------------------------------------------------------
// Logs: the exporter's tracing events, captured per test.

/// Captures the JSON log lines of everything running on this thread: with the
/// default single-threaded test runtime, that is the exporter and the simulator.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn capture() -> (Logs, tracing::subscriber::DefaultGuard) {
        let logs = Logs::default();
        let buf = Arc::clone(&logs.0);
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_max_level(tracing::Level::DEBUG)
            .with_writer(move || LogWriter(Arc::clone(&buf)))
            .finish();
        (logs, tracing::subscriber::set_default(subscriber))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// Events with this message, as their `fields` objects.
    fn events(&self, message: &str) -> Vec<Value> {
        self.text()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|e| e["fields"]["message"] == message)
            .map(|e| {
                let mut fields = e["fields"].clone();
                fields["level"] = e["level"].clone();
                fields
            })
            .collect()
    }

    /// The `refresh failed` warnings about `dc`, waiting (bounded) for the first.
    async fn failures(&self, dc: &str) -> Vec<Value> {
        self.warnings("refresh failed", dc).await
    }

    /// The `pagination was inconsistent` warnings about `dc`, waiting (bounded)
    /// for the first.
    async fn anomalies(&self, dc: &str) -> Vec<Value> {
        self.warnings("pagination was inconsistent", dc).await
    }

    /// The warnings with this message about `dc`, waiting (bounded) for the
    /// first. Every pass that fails or pages inconsistently warns again.
    ///
    /// Waiting matters when tests run in parallel: `tracing` shares its callsite
    /// caches between threads, and a thread's first event can be evaluated while
    /// another test's subscriber is being installed or dropped, and be lost.
    async fn warnings(&self, message: &str, dc: &str) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let found: Vec<Value> = self
                .events(message)
                .into_iter()
                .filter(|e| e["datacenter_key"] == dc && e["level"] == "WARN")
                .collect();
            if !found.is_empty() {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "no `{message}` warning about {dc} within 15 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

// ---------------------------------------------------------------------------
// The rig: a simulator and an exporter on loopback.

struct Rig {
    sim: Simulator,
    addr: SocketAddr,
    http: reqwest::Client,
    token_path: PathBuf,
    stale_after: Duration,
    _stop: Vec<oneshot::Sender<()>>,
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.token_path);
    }
}

/// Flags of the exporter under test; `set` replaces a default.
struct Flags(Vec<(String, String)>);

impl Flags {
    fn new() -> Self {
        Flags(
            [
                ("--datacenters", "HZ,SH,HK"),
                ("--refresh.interval", "1s"),
                // Longer than any pass of these tests, retries included, so that
                // only the tests of the pass deadline meet it.
                ("--refresh.timeout", "20s"),
                ("--api.timeout", "1s"),
                ("--api.max-retries", "2"),
                ("--api.page-size", "10"),
                ("--refresh.stale-after", "30s"),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        )
    }

    fn set(mut self, flag: &str, value: &str) -> Self {
        self.0.retain(|(k, _)| k != flag);
        if !value.is_empty() {
            self.0.push((flag.to_string(), value.to_string()));
        }
        self
    }
}

async fn start_sim(
    images: Vec<SimImage>,
    faults: Faults,
) -> (Simulator, SocketAddr, oneshot::Sender<()>) {
    let sim = Simulator::new(
        images,
        SimOptions {
            token: Some(TOKEN.into()),
            auth_style: AuthStyle::Http,
        },
    );
    sim.set_faults(faults);
    LoopbackSim::start(sim).await.into_parts()
}

impl Rig {
    async fn start(name: &str, images: Vec<SimImage>, faults: Faults, flags: Flags) -> Rig {
        let (sim, sim_addr, sim_stop) = start_sim(images, faults).await;
        Rig::start_against(
            name,
            sim,
            &format!("http://{sim_addr}"),
            flags,
            vec![sim_stop],
        )
        .await
    }

    async fn start_against(
        name: &str,
        sim: Simulator,
        url: &str,
        flags: Flags,
        mut stops: Vec<oneshot::Sender<()>>,
    ) -> Rig {
        let token_path = std::env::temp_dir().join(format!(
            "finovy-reliability-{}-{name}.token",
            std::process::id()
        ));
        std::fs::write(&token_path, format!("{TOKEN}\n")).unwrap();
        let mut args: Vec<String> = vec![
            "--web.listen-address".into(),
            "127.0.0.1:0".into(),
            "--api.url".into(),
            url.into(),
            "--api.token-file".into(),
            token_path.to_str().unwrap().into(),
        ];
        let mut stale_after = Duration::from_secs(30);
        for (k, v) in flags.0 {
            if k == "--refresh.stale-after" {
                stale_after = humantime::parse_duration(&v).unwrap();
            }
            args.push(k);
            args.push(v);
        }
        let (addr, stop) = common::spawn_exporter(args).await;
        stops.push(stop);
        Rig {
            sim,
            addr,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap(),
            token_path,
            stale_after,
            _stop: stops,
        }
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let resp = self
            .http
            .get(format!("http://{}{path}", self.addr))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let status = resp.status().as_u16();
        (status, resp.text().await.unwrap())
    }

    async fn scrape(&self) -> BTreeMap<String, f64> {
        let (status, body) = self.get("/metrics").await;
        assert_eq!(status, 200, "{body}");
        parse_metrics(&body)
    }

    /// Waits until `check` holds on a scrape, and returns that scrape.
    async fn until(
        &self,
        what: &str,
        check: impl Fn(&BTreeMap<String, f64>) -> bool,
    ) -> BTreeMap<String, f64> {
        let check = &check;
        wait_for(what, DEADLINE, || async move {
            let m = self.scrape().await;
            check(&m).then_some(m)
        })
        .await
    }

    /// Waits until `dc` shows exactly `want`, with `finovy_up` 1.
    async fn until_exact(&self, dc: &str, want: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
        let start = Instant::now();
        loop {
            let m = self.scrape().await;
            if shown(&m, dc) == *want && up(&m, dc) == Some(1.0) {
                return m;
            }
            if start.elapsed() > DEADLINE {
                let got = shown(&m, dc);
                let diff: Vec<_> = want
                    .iter()
                    .filter(|(k, v)| got.get(*k) != Some(v))
                    .chain(got.iter().filter(|(k, _)| !want.contains_key(*k)))
                    .take(6)
                    .collect();
                panic!(
                    "{dc} never showed the exact numbers (up={:?}); first differences: {diff:?}",
                    up(&m, dc)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until every datacenter shows the exact numbers of `images`.
    async fn until_all_exact(&self, images: &[SimImage]) -> BTreeMap<String, f64> {
        for dc in DCS {
            self.until_exact(dc, &expected(images, dc)).await;
        }
        self.scrape().await
    }

    /// Waits until `dc` has failed `n` times for `reason`.
    async fn until_failed(&self, dc: &str, reason: &str, n: f64) -> BTreeMap<String, f64> {
        self.until(&format!("{n} {reason} failures of {dc}"), |m| {
            failures(m, dc, reason) >= n && up(m, dc) == Some(0.0)
        })
        .await
    }

    /// The promise that holds whatever the upstream does: every endpoint answers,
    /// and the exporter is ready once every target has ended its first pass. A
    /// target that is not faulted may still be in that pass (each starts at a
    /// random point of its first interval), so readiness is waited for, with a
    /// deadline, rather than expected at once.
    async fn assert_serving(&self) {
        let (status, body) = self.get("/healthz").await;
        assert_eq!(status, 200, "healthz: {body}");
        let start = Instant::now();
        loop {
            let (status, body) = self.get("/readyz").await;
            if status == 200 {
                break;
            }
            assert!(
                body.contains("have not finished their first pass") && start.elapsed() < DEADLINE,
                "readyz: {status} {body}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (status, _) = self.get("/metrics").await;
        assert_eq!(status, 200);
        let (status, _) = self.get("/").await;
        assert_eq!(status, 200);
    }
}

/// Asserts that the datacenters other than `faulty` show exact numbers, are up
/// and never failed.
fn assert_others_exact(m: &BTreeMap<String, f64>, images: &[SimImage], faulty: &[&str]) {
    for dc in DCS.iter().filter(|dc| !faulty.contains(dc)) {
        assert_eq!(
            shown(m, dc),
            expected(images, dc),
            "{dc} keeps exact numbers"
        );
        assert_eq!(up(m, dc), Some(1.0), "{dc} is up");
        assert_eq!(all_failures(m, dc), 0.0, "{dc} never failed");
        assert_eq!(all_anomalies(m, dc), 0.0, "{dc} paged cleanly");
    }
}

impl Rig {
    /// Waits until the datacenters other than `faulty` show exact numbers, then
    /// asserts that they are up and never failed nor paged inconsistently.
    async fn others_exact(&self, images: &[SimImage], faulty: &[&str]) -> BTreeMap<String, f64> {
        for dc in DCS.iter().filter(|dc| !faulty.contains(dc)) {
            self.until_exact(dc, &expected(images, dc)).await;
        }
        let m = self.scrape().await;
        assert_others_exact(&m, images, faulty);
        m
    }
}

/// Removes a few images of `dc` and adds one, so that new numbers differ from old.
fn change_datacenter(images: &[SimImage], dc: &str) -> Vec<SimImage> {
    let mut dropped = 0;
    let mut out: Vec<SimImage> = images
        .iter()
        .filter(|im| {
            let drop = im.datacenter_key == dc && dropped < 4;
            dropped += usize::from(drop);
            !drop
        })
        .cloned()
        .collect();
    out.push(SimImage {
        id: format!("new-{dc}"),
        image_id: 999_999_999,
        image_type: "Debian".into(),
        image_name: "fresh".into(),
        image_size: "12.25".into(),
        datacenter_key: dc.into(),
        status: 0,
        create_time: 1_790_000_123_000,
    });
    out
}

// ---------------------------------------------------------------------------
// Latency, 5xx, 429, hangs.

#[tokio::test]
async fn added_latency_below_the_timeout_changes_only_the_duration() {
    let images = dataset(&COUNTS, 1);
    let faults = Faults {
        latency_ms: 120,
        ..Faults::default()
    };
    let rig = Rig::start("latency", images.clone(), faults, Flags::new()).await;
    let m = rig.until_all_exact(&images).await;
    rig.others_exact(&images, &[]).await;
    for dc in DCS {
        // Page 1, then the other pages in parallel: at least two latencies.
        assert!(duration(&m, dc) >= 0.24, "{dc}: {}", duration(&m, dc));
    }
    // The simulator accounts for the latency it really added to each answer.
    let (answers, total_us) = rig.sim.held();
    assert!(answers >= 2 * DCS.len() as u64, "{answers} answers held");
    let mean_us = total_us / answers;
    assert!(
        mean_us >= 120_000,
        "mean latency {mean_us} µs for 120 ms asked"
    );
    rig.assert_serving().await;
}

#[tokio::test]
async fn a_permanent_5xx_fails_only_its_datacenter_keeps_then_drops_its_numbers_and_recovers() {
    let (logs, _guard) = Logs::capture();
    let images = dataset(&COUNTS, 2);
    // Stale after 5 s: the first failure is seen about a second after the last
    // success, and a busy machine gets three more seconds before the numbers
    // could be dropped under the test.
    let flags = Flags::new()
        .set("--refresh.stale-after", "5s")
        .set("--api.max-retries", "1");
    let rig = Rig::start("permanent-503", images.clone(), Faults::default(), flags).await;
    let before = rig.until_exact("SH", &expected(&images, "SH")).await;
    assert_eq!(all_failures(&before, "SH"), 0.0);

    // The fault first, then new data: no refresh of SH can see the new data.
    rig.sim
        .set_faults(rules(vec![FaultRule::always(FaultAction::Status {
            status: 503,
            retry_after_secs: None,
        })
        .datacenter("SH")]));
    let changed = change_datacenter(&images, "SH");
    rig.sim.set_images(changed.clone());

    let m = rig.until_failed("SH", "http", 1.0).await;
    let age = now_secs() - last_success(&m, "SH");
    assert!(
        age < rig.stale_after.as_secs_f64() - 1.0,
        "the test itself was too slow: {age}s"
    );
    assert_eq!(
        shown(&m, "SH"),
        expected(&images, "SH"),
        "a failed refresh keeps the last good numbers"
    );
    rig.others_exact(&changed, &["SH"]).await;
    assert!(
        metric(
            &m,
            "finovy_api_requests_total{account=\"default\",code=\"503\"}"
        ) >= 2.0,
        "tried, retried"
    );
    let warned = logs.failures("SH").await;
    assert!(!warned.is_empty(), "one warn line per failed refresh");
    assert_eq!(warned[0]["reason"], "http");
    assert_eq!(warned[0]["http_status"], 503);
    let (status, readyz) = rig.get("/readyz").await;
    assert_eq!(status, 200);
    assert!(readyz.contains("datacenter_key=\"SH\" up=0"), "{readyz}");
    assert!(readyz.contains("http at"), "{readyz}");
    assert!(readyz.contains("datacenter_key=\"HZ\" up=1"), "{readyz}");

    // Stale: the numbers go, finovy_up and the counters stay.
    let m = rig
        .until("SH's numbers to go stale", |m| shown(m, "SH").is_empty())
        .await;
    let age = now_secs() - last_success(&m, "SH");
    assert!(
        age >= rig.stale_after.as_secs_f64() - 0.25,
        "dropped after {age}s, before --refresh.stale-after"
    );
    assert_eq!(up(&m, "SH"), Some(0.0));
    rig.others_exact(&changed, &["SH"]).await;
    rig.assert_serving().await;

    // Recovery: the new numbers, exactly.
    rig.sim.set_faults(Faults::default());
    rig.until_exact("SH", &expected(&changed, "SH")).await;
    rig.others_exact(&changed, &["SH"]).await;
}

#[tokio::test]
async fn each_5xx_status_fails_only_its_datacenter_with_reason_http() {
    let images = dataset(&COUNTS, 3);
    for status in [500u16, 502, 503] {
        let faults = rules(vec![FaultRule::always(FaultAction::Status {
            status,
            retry_after_secs: None,
        })
        .datacenter("SH")]);
        let flags = Flags::new().set("--api.max-retries", "1");
        let rig = Rig::start(&format!("5xx-{status}"), images.clone(), faults, flags).await;
        rig.until_failed("SH", "http", 2.0).await;
        let m = rig.until_all_others(&images, "SH").await;
        assert!(shown(&m, "SH").is_empty(), "{status}: nothing good to keep");
        assert_eq!(all_failures(&m, "SH"), failures(&m, "SH", "http"));
        assert!(
            metric(
                &m,
                &format!("finovy_api_requests_total{{account=\"default\",code=\"{status}\"}}")
            ) >= 4.0
        );
        rig.assert_serving().await;
    }
}

#[tokio::test]
async fn another_http_status_fails_with_reason_http_and_is_not_retried() {
    let images = dataset(&COUNTS, 32);
    let faults = rules(vec![FaultRule::always(FaultAction::Status {
        status: 404,
        retry_after_secs: None,
    })
    .datacenter("SH")]);
    let rig = Rig::start("404", images.clone(), faults, Flags::new()).await;
    rig.until_failed("SH", "http", 2.0).await;
    let m = rig.until_all_others(&images, "SH").await;
    let tries = requests_for(&rig.sim, "SH", None).len() as f64;
    assert!(tries <= failures(&m, "SH", "http") + 1.0, "{tries} tries");
}

impl Rig {
    /// Waits until every datacenter but `faulty` shows exact numbers.
    async fn until_all_others(&self, images: &[SimImage], faulty: &str) -> BTreeMap<String, f64> {
        self.others_exact(images, &[faulty]).await
    }
}

#[tokio::test]
async fn a_5xx_on_one_page_fails_the_whole_refresh_and_publishes_nothing_partial() {
    let images = dataset(&COUNTS, 4);
    let rig = Rig::start("page-3", images.clone(), Faults::default(), Flags::new()).await;
    rig.until_exact("SH", &expected(&images, "SH")).await;
    rig.sim
        .set_faults(rules(vec![FaultRule::always(FaultAction::Status {
            status: 500,
            retry_after_secs: None,
        })
        .datacenter("SH")
        .page(3)]));
    // Pages 1 and 2 of the new data would show if anything partial were published.
    let changed: Vec<SimImage> = images
        .iter()
        .filter(|im| im.datacenter_key != "SH")
        .cloned()
        .chain(dataset(&[("SH", 50)], 99))
        .collect();
    rig.sim.set_images(changed.clone());
    let m = rig.until_failed("SH", "http", 2.0).await;
    assert_eq!(
        shown(&m, "SH"),
        expected(&images, "SH"),
        "the old numbers, whole"
    );
    rig.others_exact(&changed, &["SH"]).await;
    let sh = requests_for(&rig.sim, "SH", None);
    assert!(sh
        .iter()
        .any(|r| r.page() == 3 && r.faults == ["status 500"]));
    assert!(
        sh.iter().any(|r| r.page() == 2 && r.faults.is_empty()),
        "the other pages were served"
    );
    rig.assert_serving().await;
}

#[tokio::test]
async fn a_transient_5xx_is_retried_and_the_refresh_succeeds_with_exact_numbers() {
    let images = dataset(&COUNTS, 5);
    let once = |dc: &str, page: u32, status: u16| {
        FaultRule::always(FaultAction::Status {
            status,
            retry_after_secs: None,
        })
        .datacenter(dc)
        .page(page)
        .times(1)
    };
    let faults = rules(vec![
        once("SH", 1, 500),
        once("HZ", 2, 502),
        once("HK", 4, 503),
    ]);
    let rig = Rig::start("transient-5xx", images.clone(), faults, Flags::new()).await;
    let m = rig.until_all_exact(&images).await;
    rig.others_exact(&images, &[]).await;
    for (dc, page, code) in [("SH", 1, "500"), ("HZ", 2, "502"), ("HK", 4, "503")] {
        let tries = requests_for(&rig.sim, dc, Some(page));
        assert_eq!(faulted(&tries), 1, "{dc}");
        assert!(tries.len() >= 2, "{dc} page {page} was tried again");
        assert_eq!(
            metric(
                &m,
                &format!("finovy_api_requests_total{{account=\"default\",code=\"{code}\"}}")
            ),
            1.0
        );
    }
    assert!(rig.sim.faults().rules.iter().all(|r| r.times == Some(0)));
}

#[tokio::test]
async fn a_5xx_at_a_rate_never_shows_wrong_numbers() {
    let images = dataset(&COUNTS, 6);
    let faults = rules(vec![FaultRule::always(FaultAction::Status {
        status: 502,
        retry_after_secs: None,
    })
    .datacenter("SH")
    .rate(0.3)]);
    let flags = Flags::new().set("--api.max-retries", "3");
    let rig = Rig::start("rate", images.clone(), faults, flags).await;
    let want = expected(&images, "SH");
    let mut scrapes = 0;
    let mut successes = std::collections::BTreeSet::new();
    let start = Instant::now();
    // Every scrape: SH shows exactly its numbers or (before its first success)
    // none; the others are exact once they are up.
    while faulted(&requests_for(&rig.sim, "SH", None)) < 10 || successes.len() < 3 {
        assert!(start.elapsed() < DEADLINE, "not enough faults or successes");
        let m = rig.scrape().await;
        scrapes += 1;
        let sh = shown(&m, "SH");
        assert!(
            sh.is_empty() || sh == want,
            "SH shows wrong numbers: {sh:?}"
        );
        assert_eq!(
            all_failures(&m, "SH"),
            failures(&m, "SH", "http"),
            "the only failure reason is http"
        );
        if last_success(&m, "SH") > 0.0 {
            successes.insert(last_success(&m, "SH").to_bits());
        }
        for dc in ["HZ", "HK"] {
            if up(&m, dc) == Some(1.0) {
                assert_eq!(shown(&m, dc), expected(&images, dc));
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(scrapes > 10);
    rig.assert_serving().await;
}

#[tokio::test]
async fn a_429_with_retry_after_is_honoured_then_the_refresh_succeeds() {
    let images = dataset(&COUNTS, 7);
    let faults = rules(vec![FaultRule::always(FaultAction::Status {
        status: 429,
        retry_after_secs: Some(1),
    })
    .datacenter("SH")
    .page(1)
    .times(1)]);
    let rig = Rig::start("429", images.clone(), faults, Flags::new()).await;
    let m = rig.until_all_exact(&images).await;
    rig.others_exact(&images, &[]).await;
    assert_eq!(
        metric(
            &m,
            "finovy_api_requests_total{account=\"default\",code=\"429\"}"
        ),
        1.0
    );
    let tries = requests_for(&rig.sim, "SH", Some(1));
    assert_eq!(tries[0].faults, ["status 429"]);
    let gap = tries[1].received_us - tries[0].received_us;
    assert!(
        gap >= 1_000_000,
        "retried {gap}µs after a Retry-After of 1s"
    );
    assert!(gap < 5_000_000, "retried {gap}µs after a Retry-After of 1s");
}

#[tokio::test]
async fn a_retry_after_beyond_the_longest_wait_fails_at_once() {
    let images = dataset(&COUNTS, 8);
    let faults = rules(vec![FaultRule::always(FaultAction::Status {
        status: 429,
        retry_after_secs: Some(3600),
    })
    .datacenter("SH")]);
    let rig = Rig::start("429-long", images.clone(), faults, Flags::new()).await;
    let m = rig.until_failed("SH", "http", 2.0).await;
    assert!(
        duration(&m, "SH") < 5.0,
        "did not wait an hour: {}",
        duration(&m, "SH")
    );
    let m = rig.until_all_others(&images, "SH").await;
    // One try per refresh: waiting an hour is not an option, retrying at once is rude.
    let tries = requests_for(&rig.sim, "SH", None).len() as f64;
    assert!(tries <= failures(&m, "SH", "http") + 1.0, "{tries} tries");
}

#[tokio::test]
async fn a_hang_costs_at_most_the_timeout_per_try() {
    let (logs, _guard) = Logs::capture();
    let images = dataset(&COUNTS, 9);
    let faults = rules(vec![FaultRule::always(FaultAction::Hang).datacenter("SH")]);
    let flags = Flags::new()
        .set("--api.timeout", "400ms")
        .set("--api.max-retries", "1");
    let rig = Rig::start("hang", images.clone(), faults, flags).await;
    let m = rig.until_failed("SH", "timeout", 1.0).await;
    // Two tries of 400 ms and one backoff of at most 200 ms, with slack for a
    // busy machine: far below the 20 s pass deadline a hang would otherwise meet.
    let took = duration(&m, "SH");
    assert!((0.8..5.0).contains(&took), "a hung refresh took {took}s");
    // While a request hangs (SH hangs at every pass, for good), the exporter
    // answers; the others are waited for first, so that readiness is not.
    rig.until_all_others(&images, "SH").await;
    let started = Instant::now();
    rig.assert_serving().await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(logs.failures("SH").await[0]["reason"], "timeout");
}

#[tokio::test]
async fn one_slow_page_is_retried_and_the_refresh_succeeds() {
    let images = dataset(&COUNTS, 10);
    let faults = rules(vec![FaultRule::always(FaultAction::Delay { ms: 1500 })
        .datacenter("SH")
        .page(2)
        .times(1)]);
    let flags = Flags::new().set("--api.timeout", "400ms");
    let rig = Rig::start("slow-page", images.clone(), faults, flags).await;
    rig.until_all_exact(&images).await;
    rig.others_exact(&images, &[]).await;
    let tries = requests_for(&rig.sim, "SH", Some(2));
    assert_eq!(tries[0].faults, ["delay 1500ms"]);
    assert!(tries.len() >= 2);
}

// ---------------------------------------------------------------------------
// Broken bodies.

#[tokio::test]
async fn a_connection_closed_mid_body_is_retried_and_when_permanent_is_a_connect_failure() {
    let images = dataset(&COUNTS, 11);
    let faults = rules(vec![FaultRule::always(FaultAction::CloseMidBody)
        .datacenter("SH")
        .page(1)
        .times(1)]);
    let rig = Rig::start("close", images.clone(), faults, Flags::new()).await;
    rig.until_all_exact(&images).await;
    rig.others_exact(&images, &[]).await;
    assert_eq!(faulted(&requests_for(&rig.sim, "SH", Some(1))), 1);

    rig.sim
        .set_faults(rules(vec![FaultRule::always(FaultAction::CloseMidBody)
            .datacenter("SH")
            .page(2)]));
    let m = rig.until_failed("SH", "connect", 1.0).await;
    assert_eq!(shown(&m, "SH"), expected(&images, "SH"), "kept while fresh");
    rig.assert_serving().await;
}

#[tokio::test]
async fn a_body_that_stalls_halfway_is_a_timeout() {
    let images = dataset(&COUNTS, 12);
    let faults = rules(vec![
        FaultRule::always(FaultAction::StallMidBody).datacenter("SH")
    ]);
    let flags = Flags::new()
        .set("--api.timeout", "400ms")
        .set("--api.max-retries", "1");
    let rig = Rig::start("stall", images.clone(), faults, flags).await;
    let m = rig.until_failed("SH", "timeout", 1.0).await;
    assert!(duration(&m, "SH") < 3.0, "{}", duration(&m, "SH"));
    rig.until_all_others(&images, "SH").await;
    rig.assert_serving().await;
}

#[tokio::test]
async fn malformed_or_truncated_json_is_a_decode_failure_and_is_not_retried() {
    let (logs, _guard) = Logs::capture();
    let images = dataset(&COUNTS, 13);
    let faults = rules(vec![
        FaultRule::always(FaultAction::Malformed).datacenter("SH"),
        FaultRule::always(FaultAction::Truncated)
            .datacenter("HZ")
            .page(2),
    ]);
    let rig = Rig::start("decode", images.clone(), faults, Flags::new()).await;
    rig.until_failed("SH", "decode", 2.0).await;
    rig.until_failed("HZ", "decode", 2.0).await;
    rig.others_exact(&images, &["SH", "HZ"]).await;
    for (dc, page) in [("SH", 1), ("HZ", 2)] {
        let tries = requests_for(&rig.sim, dc, Some(page)).len() as f64;
        let failed = failures(&rig.scrape().await, dc, "decode");
        assert!(
            tries <= failed + 1.0,
            "{dc}: {tries} tries for {failed} failures"
        );
    }
    assert!(logs.failures("HZ").await[0]["error"]
        .as_str()
        .unwrap()
        .contains("cannot decode"));
    rig.assert_serving().await;
}

// ---------------------------------------------------------------------------
// The envelope says no.

#[tokio::test]
async fn a_failed_envelope_is_an_api_failure_with_its_trace_id_logged() {
    let (logs, _guard) = Logs::capture();
    let images = dataset(&COUNTS, 14);
    let faults = rules(vec![
        FaultRule::always(FaultAction::ApiError {
            code: 500,
            msg: "系统繁忙".into(),
        })
        .datacenter("SH"),
        // success:false with code 0 is a failure as well.
        FaultRule::always(FaultAction::ApiError {
            code: 0,
            msg: String::new(),
        })
        .datacenter("HZ"),
    ]);
    let rig = Rig::start("api", images.clone(), faults, Flags::new()).await;
    rig.until_failed("SH", "api", 1.0).await;
    rig.until_failed("HZ", "api", 1.0).await;
    rig.others_exact(&images, &["SH", "HZ"]).await;
    let warned = &logs.failures("SH").await[0];
    assert_eq!(warned["reason"], "api");
    assert_eq!(warned["trace_id"].as_str().unwrap().len(), 32, "{warned}");
    assert!(warned["error"].as_str().unwrap().contains("系统繁忙"));
    rig.assert_serving().await;
}

#[tokio::test]
async fn unauthorized_in_either_style_fails_only_its_datacenter_and_never_leaks_the_token() {
    let (logs, _guard) = Logs::capture();
    let images = dataset(&COUNTS, 15);
    let faults = rules(vec![
        FaultRule::always(FaultAction::Unauthorized {
            style: AuthStyle::Http,
        })
        .datacenter("SH"),
        FaultRule::always(FaultAction::Unauthorized {
            style: AuthStyle::Body,
        })
        .datacenter("HZ"),
    ]);
    let rig = Rig::start("auth", images.clone(), faults, Flags::new()).await;
    rig.until_failed("SH", "auth", 2.0).await;
    let m = rig.until_failed("HZ", "auth", 2.0).await;
    rig.others_exact(&images, &["SH", "HZ"]).await;
    assert_eq!(
        failures(&m, "HZ", "api"),
        0.0,
        "a 401 in the body is auth, not api"
    );
    assert!(
        metric(
            &m,
            "finovy_api_requests_total{account=\"default\",code=\"401\"}"
        ) >= 2.0
    );
    for dc in ["SH", "HZ"] {
        // The tries first, then the failures: a pass in between adds one of each.
        let tries = requests_for(&rig.sim, dc, None).len() as f64;
        let failed = failures(&rig.scrape().await, dc, "auth");
        assert!(
            tries <= failed + 1.0,
            "{dc}: {tries} tries for {failed} failures: retried"
        );
    }
    let (_, metrics) = rig.get("/metrics").await;
    let (_, readyz) = rig.get("/readyz").await;
    let (_, landing) = rig.get("/").await;
    for (what, text) in [
        ("logs", logs.text()),
        ("metrics", metrics),
        ("readyz", readyz),
        ("landing page", landing),
    ] {
        assert!(!text.contains(TOKEN), "the token is in the {what}");
    }
    rig.assert_serving().await;
}

// ---------------------------------------------------------------------------
// Pagination that does not add up.

#[tokio::test]
async fn a_total_that_lies_high_is_flagged_and_the_numbers_stay_exact() {
    let (logs, _guard) = Logs::capture();
    let images = dataset(&COUNTS, 16);
    let faults = rules(vec![FaultRule::always(FaultAction::TotalCounts {
        offset: 7,
    })
    .datacenter("SH")]);
    let rig = Rig::start("total-high", images.clone(), faults, Flags::new()).await;
    rig.until_exact("SH", &expected(&images, "SH")).await;
    let m = rig
        .until("an anomaly on SH", |m| {
            anomalies(m, "SH", "total_mismatch") >= 1.0
        })
        .await;
    rig.others_exact(&images, &["SH"]).await;
    assert_eq!(up(&m, "SH"), Some(1.0));
    let warned = &logs.anomalies("SH").await[0];
    assert!(warned["anomalies"]
        .as_str()
        .unwrap()
        .contains("total_mismatch"));
    assert_eq!(warned["total_counts"], 57);
    assert_eq!(warned["items"], 50);
}

#[tokio::test]
async fn a_total_that_lies_low_is_flagged_and_the_numbers_stay_exact() {
    let (logs, _guard) = Logs::capture();
    let images = dataset(&COUNTS, 17);
    // 43 images in HZ; a total of 36 plans 4 pages of 10, and the 4th is full.
    let faults = rules(vec![FaultRule::always(FaultAction::TotalCounts {
        offset: -7,
    })
    .datacenter("HZ")]);
    let rig = Rig::start("total-low", images.clone(), faults, Flags::new()).await;
    let m = rig
        .until("an anomaly on HZ", |m| {
            anomalies(m, "HZ", "total_mismatch") >= 1.0
        })
        .await;
    assert_eq!(shown(&m, "HZ"), expected(&images, "HZ"));
    rig.others_exact(&images, &["HZ"]).await;
    assert!(!logs.anomalies("HZ").await.is_empty());
}

/// Regression: a `totalCounts` short of the truth by whole pages planned exactly
/// as many full pages as it claimed, so the count of items read matched the
/// claim and the missing pages went unnoticed: wrong numbers, no signal.
#[tokio::test]
async fn a_total_lying_low_by_whole_pages_is_detected() {
    let (logs, _guard) = Logs::capture();
    let images = dataset(&COUNTS, 18);
    // SH has 50 images, 5 full pages; it claims 30.
    let faults = rules(vec![FaultRule::always(FaultAction::TotalCounts {
        offset: -20,
    })
    .datacenter("SH")]);
    let rig = Rig::start("total-low-pages", images.clone(), faults, Flags::new()).await;
    let m = rig
        .until("an anomaly on SH", |m| {
            anomalies(m, "SH", "total_mismatch") >= 1.0
        })
        .await;
    assert_eq!(
        shown(&m, "SH"),
        expected(&images, "SH"),
        "the pages past the claim are read"
    );
    rig.others_exact(&images, &["SH"]).await;
    assert_eq!(logs.anomalies("SH").await[0]["items"], 50);
}

#[tokio::test]
async fn paging_that_does_not_end_is_cut_off_and_flagged() {
    let (logs, _guard) = Logs::capture();
    let images = dataset(&COUNTS, 33);
    // SH claims 10 images, one page, and every page comes back full: the
    // exporter reads on, up to 2 × 1 + 1 pages, then stops and says so.
    let faults = rules(vec![FaultRule::always(FaultAction::TotalCounts {
        offset: -40,
    })
    .datacenter("SH")]);
    let rig = Rig::start("page-limit", images.clone(), faults, Flags::new()).await;
    let m = rig
        .until("a page limit on SH", |m| {
            anomalies(m, "SH", "page_limit") >= 1.0
        })
        .await;
    assert_eq!(images_shown(&m, "SH"), 30.0);
    assert!(anomalies(&m, "SH", "total_mismatch") >= 1.0);
    rig.others_exact(&images, &["SH"]).await;
    let pages = requests_for(&rig.sim, "SH", None)
        .iter()
        .map(RecordedRequest::page)
        .max();
    assert_eq!(pages, Some(3));
    let warned = &logs.anomalies("SH").await[0];
    assert!(warned["anomalies"].as_str().unwrap().contains("page_limit"));
}

#[tokio::test]
async fn pages_past_the_end_repeating_the_last_page_raise_no_false_alarm() {
    let images = dataset(&COUNTS, 19);
    // SH's last page is full, so the exporter looks one page further; this
    // server answers that with the last page again (PageHelper's reasonable mode).
    let faults = rules(vec![FaultRule::always(FaultAction::ClampPage)]);
    let rig = Rig::start("clamp", images.clone(), faults, Flags::new()).await;
    let m = rig.until_all_exact(&images).await;
    // A few more cycles: no anomaly on any of them.
    let cycles = requests_for(&rig.sim, "SH", Some(1)).len();
    rig.until("three more cycles", |_| {
        requests_for(&rig.sim, "SH", Some(1)).len() >= cycles + 3
    })
    .await;

    rig.others_exact(&images, &[]).await;
    assert_eq!(shown(&m, "SH"), expected(&images, "SH"));
    let past_the_end = requests_for(&rig.sim, "SH", Some(6));
    assert!(
        past_the_end.iter().any(|r| r.faults == ["clamp_page"]),
        "SH's 5 full pages were followed by a look at page 6"
    );
}

#[tokio::test]
async fn items_repeated_across_pages_count_once_and_are_flagged() {
    let (logs, _guard) = Logs::capture();
    let images = dataset(&COUNTS, 20);
    let faults = rules(vec![
        FaultRule::always(FaultAction::Repeat { items: 3 }).datacenter("SH")
    ]);
    let rig = Rig::start("repeat", images.clone(), faults, Flags::new()).await;
    let m = rig
        .until("duplicates on SH", |m| {
            anomalies(m, "SH", "duplicate_items") >= 1.0
        })
        .await;
    assert_eq!(shown(&m, "SH"), expected(&images, "SH"));
    rig.others_exact(&images, &["SH"]).await;
    assert!(
        logs.anomalies("SH").await[0]["duplicates"]
            .as_u64()
            .unwrap()
            >= 3
    );
}

#[tokio::test]
async fn items_skipped_across_pages_are_never_a_silent_wrong_total() {
    let (logs, _guard) = Logs::capture();
    let images = dataset(&COUNTS, 21);
    let faults = rules(vec![
        FaultRule::always(FaultAction::Skip { items: 3 }).datacenter("SH")
    ]);
    let rig = Rig::start("skip", images.clone(), faults, Flags::new()).await;
    let m = rig
        .until("an anomaly on SH", |m| {
            anomalies(m, "SH", "total_mismatch") >= 1.0
        })
        .await;
    // Three images were never served: the total is short, and it says so.
    assert_eq!(images_shown(&m, "SH"), 47.0);
    assert_eq!(up(&m, "SH"), Some(1.0));
    rig.others_exact(&images, &["SH"]).await;
    let warned = &logs.anomalies("SH").await[0];
    assert_eq!(warned["total_counts"], 50);
    assert_eq!(warned["items"], 47);
}

#[tokio::test]
async fn a_server_capping_the_page_size_is_followed_exactly() {
    let images = dataset(&COUNTS, 22);
    let faults = Faults {
        page_cap: Some(7),
        ..Faults::default()
    };
    let rig = Rig::start("cap", images.clone(), faults, Flags::new()).await;
    rig.until_all_exact(&images).await;
    rig.others_exact(&images, &[]).await;
    let pages = requests_for(&rig.sim, "SH", None)
        .iter()
        .map(RecordedRequest::page)
        .max();
    assert_eq!(pages, Some(8), "50 images in pages of 7");
}

// ---------------------------------------------------------------------------
// Items the decoder cannot read.

#[tokio::test]
async fn fields_of_the_wrong_type_or_missing_count_the_item_and_are_reported() {
    let images = dataset(&COUNTS, 23);
    let faults = rules(vec![
        FaultRule::always(FaultAction::Corrupt {
            every: 3,
            how: Corruption::WrongType,
        })
        .datacenter("SH"),
        FaultRule::always(FaultAction::Corrupt {
            every: 4,
            how: Corruption::Missing,
        })
        .datacenter("HZ"),
    ]);
    let rig = Rig::start("corrupt", images.clone(), faults, Flags::new()).await;
    let want = |dc: &str, every: i64| {
        series(
            dc,
            in_dc(&images, dc).map(|im| {
                if im.image_id % every == 0 {
                    read_unreadable()
                } else {
                    read_exactly(im)
                }
            }),
        )
    };
    let (sh, hz) = (want("SH", 3), want("HZ", 4));
    assert_ne!(sh, expected(&images, "SH"), "the fault hits some SH images");
    assert_ne!(hz, expected(&images, "HZ"), "the fault hits some HZ images");
    rig.until_exact("SH", &sh).await;
    let m = rig.until_exact("HZ", &hz).await;
    rig.others_exact(&images, &["SH", "HZ"]).await;
    for field in [
        "id",
        "imageType",
        "imageSize",
        "datacenterKey",
        "status",
        "createTime",
    ] {
        assert!(
            metric(
                &m,
                &format!("finovy_api_invalid_items_total{{account=\"default\",field=\"{field}\"}}")
            ) > 0.0,
            "{field}"
        );
    }
    for dc in ["SH", "HZ"] {
        assert_eq!(
            all_failures(&m, dc),
            0.0,
            "{dc}: unreadable items never fail a refresh"
        );
    }
}

#[tokio::test]
async fn loosely_typed_fields_are_read_exactly() {
    let images = dataset(&COUNTS, 24);
    let faults = rules(vec![FaultRule::always(FaultAction::Corrupt {
        every: 1,
        how: Corruption::Loose,
    })]);
    let rig = Rig::start("loose", images.clone(), faults, Flags::new()).await;
    let m = rig.until_all_exact(&images).await;
    rig.others_exact(&images, &[]).await;
    let invalid: f64 = m
        .iter()
        .filter(|(k, _)| k.starts_with("finovy_api_invalid_items_total"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(invalid, 0.0);
    assert!(rig.sim.requests().iter().all(|r| r.faults.len() == 1));
}

// ---------------------------------------------------------------------------
// Answers larger than any page.

/// `ClientConfig::max_body_bytes` at `--api.page-size 10`: 1 MiB + 10 × 4 KiB.
const LIMIT_AT_PAGE_SIZE_10: usize = (1 << 20) + 10 * 4096;

#[tokio::test]
async fn an_answer_larger_than_the_limit_is_cut_off_and_one_below_is_read() {
    let images = dataset(&COUNTS, 25);
    let oversized = |bytes: usize| {
        rules(vec![FaultRule::always(FaultAction::Oversized { bytes })
            .datacenter("SH")
            .page(1)])
    };
    // Just under the limit (the padding items are up to 200 bytes each): read.
    let rig = Rig::start(
        "oversized",
        images.clone(),
        oversized(LIMIT_AT_PAGE_SIZE_10 - 400),
        Flags::new(),
    )
    .await;
    // The padding items name another datacenter, so they are read but not
    // counted under SH: the pass succeeds and says so.
    let m = rig
        .until("the padded page read", |m| {
            anomalies(m, "SH", "foreign_items") >= 1.0
        })
        .await;
    assert_eq!(up(&m, "SH"), Some(1.0));
    let padded = shown(&m, "SH");
    assert!(!padded.is_empty());
    // Just over: cut off, reason decode; checked against Content-Length, so not read.
    rig.sim.set_faults(oversized(LIMIT_AT_PAGE_SIZE_10 + 1));
    let m = rig.until_failed("SH", "decode", 1.0).await;
    assert!(duration(&m, "SH") < 2.0);
    // 8 MiB: the same.
    rig.sim.set_faults(oversized(8 << 20));
    rig.until_failed("SH", "decode", 3.0).await;
    let m = rig.until_all_others(&images, "SH").await;
    assert_eq!(
        shown(&m, "SH"),
        padded,
        "the last good numbers are kept while fresh"
    );
    rig.assert_serving().await;
}

#[tokio::test]
async fn an_endless_answer_is_cut_off_at_the_limit() {
    let (logs, _guard) = Logs::capture();
    let images = dataset(&COUNTS, 26);
    let faults = rules(vec![
        FaultRule::always(FaultAction::Endless).datacenter("SH")
    ]);
    let flags = Flags::new().set("--api.timeout", "10s");
    let rig = Rig::start("endless", images.clone(), faults, flags).await;
    let m = rig.until_failed("SH", "decode", 2.0).await;
    // Far less than the 10 s timeout: cut off by size, not by time.
    assert!(duration(&m, "SH") < 5.0, "{}", duration(&m, "SH"));
    rig.until_all_others(&images, "SH").await;
    let error = logs.failures("SH").await[0]["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        error.contains(&format!("larger than {LIMIT_AT_PAGE_SIZE_10} bytes")),
        "{error}"
    );
    rig.assert_serving().await;
}

/// The endless answer against the real binary: its peak memory stays bounded.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_answer_keeps_the_exporters_memory_bounded() {
    let images = dataset(&COUNTS, 27);
    let faults = rules(vec![FaultRule::always(FaultAction::Endless)]);
    let (sim, sim_addr, _stop) = start_sim(images, faults).await;
    let token_path = std::env::temp_dir().join(format!(
        "finovy-reliability-{}-memory.token",
        std::process::id()
    ));
    std::fs::write(&token_path, TOKEN).unwrap();
    let url = format!("http://{sim_addr}");
    // Defaults otherwise: page size 100 (a limit of 1.4 MiB), 4 requests at a time.
    let exporter = common::ExporterProcess::spawn(
        &[
            "--api.url",
            &url,
            "--api.token-file",
            token_path.to_str().unwrap(),
            "--datacenters",
            "HZ,SH,HK,BJ,GZ,SZ",
            "--refresh.interval",
            "1s",
            "--api.max-retries",
            "0",
        ],
        &[],
    );
    finovy_image_exporter::install_crypto_provider();
    let http = reqwest::Client::new();
    let url = exporter.url("/metrics");
    let m = wait_for("20 cut-off answers", DEADLINE, || async {
        let body = http.get(&url).send().await.ok()?.text().await.ok()?;
        let m = parse_metrics(&body);
        let cut: f64 = ["HZ", "SH", "HK", "BJ", "GZ", "SZ"]
            .iter()
            .map(|dc| failures(&m, dc, "decode"))
            .sum();
        (cut >= 20.0).then_some(m)
    })
    .await;
    assert!(sim.requests().len() >= 20);
    let status = std::fs::read_to_string(format!("/proc/{}/status", exporter.child.id())).unwrap();
    let peak_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    // 20 endless answers at loopback speed would be gigabytes; the limit keeps
    // 4 × 1.4 MiB in flight at most, on top of the process itself.
    eprintln!("peak RSS after 20 endless answers: {peak_kib} KiB");
    assert!(peak_kib < 64 * 1024, "peak RSS {peak_kib} KiB");
    assert_eq!(
        metric(&m, "finovy_up{account=\"default\",datacenter_key=\"SH\"}"),
        0.0
    );
    let _ = std::fs::remove_file(&token_path);
}

// ---------------------------------------------------------------------------
// Whole-upstream failures.

#[tokio::test]
async fn an_upstream_that_is_gone_is_a_connect_failure_everywhere() {
    let (logs, _guard) = Logs::capture();
    // A port that was just free: nothing listens there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let sim = Simulator::new(Vec::new(), SimOptions::default());
    let flags = Flags::new().set("--api.max-retries", "1");
    let rig = Rig::start_against("gone", sim, &format!("http://{closed}"), flags, Vec::new()).await;
    for dc in DCS {
        rig.until_failed(dc, "connect", 1.0).await;
    }
    let (status, readyz) = rig.get("/readyz").await;
    assert_eq!(
        status, 200,
        "a finished cycle is ready, even when it failed"
    );
    for dc in DCS {
        assert!(
            readyz.contains(&format!(
                "datacenter_key=\"{dc}\" up=0 last_success=never last_error=\"connect at"
            )),
            "{readyz}"
        );
        assert!(!logs.failures(dc).await.is_empty());
    }
    rig.assert_serving().await;
}

#[tokio::test]
async fn a_failed_discovery_pass_keeps_every_known_datacenter_until_it_recovers() {
    let images = dataset(&COUNTS, 28);
    let flags = Flags::new()
        .set("--datacenters", "")
        .set("--api.max-retries", "0");
    let rig = Rig::start("discovery", images.clone(), Faults::default(), flags).await;
    rig.until_all_exact(&images).await;
    rig.sim
        .set_faults(rules(vec![FaultRule::always(FaultAction::Status {
            status: 503,
            retry_after_secs: None,
        })
        .page(2)]));
    let m = rig
        .until("every datacenter down", |m| {
            DCS.iter().all(|dc| failures(m, dc, "http") >= 1.0)
        })
        .await;
    for dc in DCS {
        assert_eq!(up(&m, dc), Some(0.0));
        assert_eq!(
            shown(&m, dc),
            expected(&images, dc),
            "{dc}: kept while fresh"
        );
    }
    rig.sim.set_faults(Faults::default());
    let changed = change_datacenter(&images, "HK");
    rig.sim.set_images(changed.clone());
    rig.until_all_exact(&changed).await;
}

#[tokio::test]
async fn an_evolving_upstream_is_followed_exactly() {
    let images = dataset(&COUNTS, 29);
    let rig = Rig::start("evolve", images.clone(), Faults::default(), Flags::new()).await;
    rig.until_all_exact(&images).await;
    rig.sim.reseed(29);
    for step in 0..3 {
        let change = rig.sim.evolve(1_790_000_000_000 + step * 5_000);
        assert!(change.created > 0);
    }
    let now = rig.sim.images();
    assert_ne!(*now, images);
    rig.until_all_exact(&now).await;
}

// ---------------------------------------------------------------------------
// Atomicity under load.

/// Many scrapers while every refresh sees the other data set: each scrape shows,
/// per datacenter, the numbers of exactly one set, never a mix; no scrape fails
/// but with the documented 503 beyond `--web.max-requests`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scrape_shows_one_whole_data_set_per_datacenter_under_load() {
    const SCRAPERS: usize = 8;
    const MAX_REQUESTS: usize = 3;
    let a = dataset(&COUNTS, 30);
    let b = dataset(&[("HZ", 61), ("SH", 28), ("HK", 44)], 31);
    let flags = Flags::new()
        .set("--refresh.interval", "1s")
        .set("--web.max-requests", &MAX_REQUESTS.to_string());
    let rig = Arc::new(Rig::start("atomic", a.clone(), Faults::default(), flags).await);
    rig.sim.set_alternates(vec![a.clone(), b.clone()]);
    let sets: Arc<Vec<BTreeMap<&str, BTreeMap<String, f64>>>> = Arc::new(
        [&a, &b]
            .iter()
            .map(|set| DCS.iter().map(|dc| (*dc, expected(set, dc))).collect())
            .collect(),
    );
    // Long enough for several passes at the 1 s interval floor.
    let until = Instant::now() + Duration::from_secs(6);
    let mut scrapers = tokio::task::JoinSet::new();
    for _ in 0..SCRAPERS {
        let rig = Arc::clone(&rig);
        let sets = Arc::clone(&sets);
        scrapers.spawn(async move {
            // Per datacenter: scrapes that showed set A, set B; then refused ones.
            let mut seen = [[0usize; 2]; 3];
            let mut refused = 0usize;
            while Instant::now() < until {
                let resp = rig
                    .http
                    .get(format!("http://{}/metrics", rig.addr))
                    .send()
                    .await
                    .expect("every scrape gets an answer");
                let status = resp.status().as_u16();
                let body = resp.text().await.expect("every answer is whole");
                if status == 503 {
                    assert!(body.contains("--web.max-requests"), "{body}");
                    refused += 1;
                    continue;
                }
                assert_eq!(status, 200, "{body}");
                let m = parse_metrics(&body);
                for (i, dc) in DCS.iter().enumerate() {
                    let got = shown(&m, dc);
                    if got.is_empty() {
                        continue; // before the first refresh
                    }
                    let set = sets
                        .iter()
                        .position(|s| s[dc] == got)
                        .unwrap_or_else(|| panic!("{dc} shows a mix: {got:?}"));
                    seen[i][set] += 1;
                }
            }
            (seen, refused)
        });
    }
    let mut total = [[0usize; 2]; 3];
    let mut refused = 0;
    while let Some(result) = scrapers.join_next().await {
        let (seen, r) = result.unwrap();
        refused += r;
        for (t, s) in total.iter_mut().zip(seen) {
            t[0] += s[0];
            t[1] += s[1];
        }
    }
    eprintln!("scrapes per datacenter showing set A / set B: {total:?}; refused: {refused}");
    for (i, dc) in DCS.iter().enumerate() {
        assert!(
            total[i][0] > 0 && total[i][1] > 0,
            "{dc} never flipped: {total:?}"
        );
    }
    let passes = requests_for(&rig.sim, "SH", Some(1)).len();
    assert!(passes >= 4, "only {passes} refreshes of SH");
    rig.assert_serving().await;
}

// ---------------------------------------------------------------------------
// The simulator binary.

fn from_json<T: serde::de::DeserializeOwned>(text: String) -> T {
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// `finovy-api-sim` takes faults at start (`--faults`, `--page-cap`) and at run
/// time (`PUT /_sim/faults`), and steps its evolution on `POST /_sim/evolve`.
#[tokio::test]
async fn the_simulator_binary_takes_faults_at_start_and_at_run_time() {
    use std::io::BufRead as _;
    let faults_file = std::env::temp_dir().join(format!(
        "finovy-reliability-{}-faults.json",
        std::process::id()
    ));
    std::fs::write(
        &faults_file,
        r#"{"rules":[{"datacenters":["SH"],"action":{"kind":"status","status":503}}]}"#,
    )
    .unwrap();
    /// Kills the simulator even when an assertion fails.
    struct Child(std::process::Child);
    impl Drop for Child {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_finovy-api-sim"))
        .args(["--listen", "127.0.0.1:0", "--images", "60", "--seed", "4"])
        .args(["--page-cap", "5", "--datacenters", "HZ,SH"])
        .arg(format!("--faults=@{}", faults_file.display()))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map(Child)
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(child.0.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let addr = first
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .to_string();
    finovy_image_exporter::install_crypto_provider();
    let http = reqwest::Client::new();
    let list = |dc: &str| {
        http.get(format!(
            "http://{addr}/v1/open/image/personal/getList?datacenterKey={dc}&pageSize=20"
        ))
        .header("Finovy-Access-Token", "anything")
        .send()
    };
    assert_eq!(list("SH").await.unwrap().status().as_u16(), 503);
    let page: Value = list("HZ")
        .await
        .unwrap()
        .text()
        .await
        .map(from_json)
        .unwrap();
    assert_eq!(page["data"]["data"].as_array().unwrap().len(), 5, "capped");

    let control = format!("http://{addr}/_sim/faults");
    let put = http
        .put(&control)
        .body(r#"{"rules":[{"datacenters":["HZ"],"times":1,"action":{"kind":"api_error","code":500}}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(put.status().as_u16(), 200);
    assert_eq!(list("SH").await.unwrap().status().as_u16(), 200);
    let page: Value = list("HZ")
        .await
        .unwrap()
        .text()
        .await
        .map(from_json)
        .unwrap();
    assert_eq!(page["success"], false);
    let page: Value = list("HZ")
        .await
        .unwrap()
        .text()
        .await
        .map(from_json)
        .unwrap();
    assert_eq!(page["success"], true, "only the next request");
    let faults: Value = http
        .get(&control)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .map(from_json)
        .unwrap();
    assert_eq!(faults["rules"][0]["times"], 0);
    let bad = http
        .put(&control)
        .body(r#"{"nope":1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status().as_u16(), 400);

    let change: Value = http
        .post(format!("http://{addr}/_sim/evolve"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .map(from_json)
        .unwrap();
    assert!(change["created"].as_u64().unwrap() > 0);
    let requests: Vec<RecordedRequest> = http
        .get(format!("http://{addr}/_sim/requests"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .map(from_json)
        .unwrap();
    assert_eq!(requests.len(), 5);
    assert_eq!(requests[0].faults, ["status 503"]);
    assert!(requests
        .windows(2)
        .all(|w| w[0].received_us <= w[1].received_us));

    drop(child);
    let _ = std::fs::remove_file(&faults_file);
}

// ---------------------------------------------------------------------------
// Bounds on what a hostile upstream can make the exporter do (SPEC "Targets",
// "Bounds on what the upstream can make us do").

/// Four datacenters: two to break, two that must stay healthy beside them.
const FOUR: [(&str, usize); 4] = [("HZ", 43), ("SH", 50), ("HK", 37), ("BJ", 21)];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_and_a_flooding_datacenter_never_hold_back_the_healthy_ones() {
    let images = dataset(&FOUR, 40);
    let faults = rules(vec![
        FaultRule::always(FaultAction::Hang).datacenter("SH"),
        FaultRule::always(FaultAction::ClaimTotal {
            total: 1_000_000_000_000,
        })
        .datacenter("HK"),
        FaultRule::always(FaultAction::ClampPage).datacenter("HK"),
    ]);
    let flags = Flags::new()
        .set("--datacenters", "HZ,SH,HK,BJ")
        // A hung request waits this long; the old shared cycle waited with it.
        .set("--api.timeout", "10s")
        .set("--refresh.timeout", "12s");
    let rig = Rig::start("hung-flood", images.clone(), faults, flags).await;
    let interval = 1.0;
    rig.until_exact("HZ", &expected(&images, "HZ")).await;
    rig.until_exact("BJ", &expected(&images, "BJ")).await;
    // For several intervals, HZ and BJ are never more than one interval (plus
    // the time a pass and a scrape take) behind, while SH hangs for 10 s.
    let watch_until = Instant::now() + Duration::from_secs(6);
    let mut scrapes = 0;
    while Instant::now() < watch_until {
        let m = rig.scrape().await;
        let now = now_secs();
        for dc in ["HZ", "BJ"] {
            let age = now - last_success(&m, dc);
            assert!(
                age < 3.0 * interval,
                "{dc} fell behind: {age:.2}s since its last success"
            );
            assert_eq!(shown(&m, dc), expected(&images, dc), "{dc} stays exact");
        }
        scrapes += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(scrapes >= 10);
    // The flood: every HK pass costs the real pages, the repeat that ends it,
    // and at most a window of requests in flight, never 10^11 pages.
    let m = rig.until_exact("HK", &expected(&images, "HK")).await;
    assert_eq!(up(&m, "HK"), Some(1.0));
    assert!(anomalies(&m, "HK", "total_mismatch") >= 1.0);
    let hk = requests_for(&rig.sim, "HK", None);
    let passes = requests_for(&rig.sim, "HK", Some(1)).len();
    let real_pages = 37usize.div_ceil(10);
    let per_pass_bound = real_pages + 1 + 4; // + the page that ends it + the window (concurrency 4)
    assert!(passes >= 2, "{passes} passes of HK");
    assert!(
        hk.len() <= passes * per_pass_bound,
        "{} requests for {passes} passes of HK (bound {per_pass_bound} a pass)",
        hk.len()
    );
    // SH hangs: no success until its pass deadline fails it; then every target
    // has finished a pass and the exporter is ready.
    assert_eq!(images_shown(&m, "SH"), 0.0);
    rig.until_failed("SH", "timeout", 1.0).await;
    rig.assert_serving().await;
}

#[tokio::test]
async fn an_upstream_that_ignores_the_datacenter_key_never_counts_another_datacenter() {
    let (logs, _guard) = Logs::capture();
    let images = dataset(&COUNTS, 41);
    let faults = rules(vec![FaultRule::always(FaultAction::IgnoreDatacenter)]);
    // XX does not exist: it must show no image, not the whole account.
    let flags = Flags::new().set("--datacenters", "HZ,SH,XX");
    let rig = Rig::start("ignore-dc", images.clone(), faults, flags).await;
    let m = rig
        .until("every datacenter flagged foreign items", |m| {
            ["HZ", "SH", "XX"]
                .iter()
                .all(|dc| anomalies(m, dc, "foreign_items") >= 1.0)
        })
        .await;
    assert_eq!(shown(&m, "HZ"), expected(&images, "HZ"));
    assert_eq!(shown(&m, "SH"), expected(&images, "SH"));
    assert_eq!(
        images_shown(&m, "XX"),
        0.0,
        "a missing datacenter shows nothing"
    );
    assert_eq!(up(&m, "XX"), Some(1.0));
    let warned = wait_for("the ignore-datacenterKey warning", DEADLINE, || async {
        let text = logs.text();
        text.contains("ignore datacenterKey").then_some(text)
    })
    .await;
    assert!(
        warned.contains("discovery mode"),
        "the warning names the remedy"
    );
}

#[tokio::test]
async fn repeated_pages_of_items_without_id_fail_instead_of_counting_twice() {
    let images = dataset(&COUNTS, 42);
    let rig = Rig::start("id-less", images.clone(), Faults::default(), Flags::new()).await;
    let good = rig.until_exact("SH", &expected(&images, "SH")).await;
    let good_sh = shown(&good, "SH");
    // SH's items lose their ids and its pages repeat past a lying total: the
    // exporter cannot tell repeated pages from new ones.
    rig.sim.set_faults(rules(vec![
        FaultRule::always(FaultAction::IdLess { every: 1 }).datacenter("SH"),
        FaultRule::always(FaultAction::ClampPage).datacenter("SH"),
        FaultRule::always(FaultAction::ClaimTotal { total: 500 }).datacenter("SH"),
    ]));
    let m = rig.until_failed("SH", "decode", 1.0).await;
    assert_eq!(shown(&m, "SH"), good_sh, "the last good numbers stay");
    assert_eq!(up(&m, "SH"), Some(0.0));
    rig.others_exact(&images, &["SH"]).await;
}

#[tokio::test]
async fn discovery_keeps_both_datacenters_whose_ids_overlap() {
    let mut images = dataset(&COUNTS, 43);
    // SH reuses HZ's ids: ids are unique per datacenter only.
    let hz_ids: Vec<String> = in_dc(&images, "HZ").map(|im| im.id.clone()).collect();
    let sh = images.iter_mut().filter(|im| im.datacenter_key == "SH");
    for (im, id) in sh.zip(&hz_ids) {
        im.id = id.clone();
    }
    let flags = Flags::new().set("--datacenters", "");
    let rig = Rig::start("overlap", images.clone(), Faults::default(), flags).await;
    let m = rig.until_exact("SH", &expected(&images, "SH")).await;
    assert_eq!(shown(&m, "HZ"), expected(&images, "HZ"));
    assert_eq!(shown(&m, "HK"), expected(&images, "HK"));
}

#[tokio::test]
async fn key_churn_and_type_explosion_keep_series_bounded_and_totals_exact() {
    let images = dataset(&COUNTS, 44);
    let faults = rules(vec![
        FaultRule::always(FaultAction::KeyChurn { per_request: false }),
        FaultRule::always(FaultAction::TypeExplosion { types: 5_000 }),
    ]);
    let flags = Flags::new()
        .set("--datacenters", "")
        .set("--refresh.stale-after", "2s")
        .set("--limit.datacenters", "2")
        .set("--limit.image-types", "5");
    let rig = Rig::start("churn", images.clone(), faults, flags).await;
    let total = images.len() as f64;
    let mut passes_seen = 0;
    let watch_until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < watch_until {
        let m = rig.scrape().await;
        let up_series = m.keys().filter(|k| k.starts_with("finovy_up{")).count();
        // Two kept per pass; those of older passes live for stale-after (2 s at a
        // 1 s interval: at most three passes' worth), then vanish.
        assert!(up_series <= 2 * 4, "{up_series} datacenters published");
        let image_series = m.keys().filter(|k| k.starts_with("finovy_images{")).count();
        assert!(image_series <= 2 * 5 * 5, "{image_series} image series");
        let counted: f64 = m
            .iter()
            .filter(|(k, _)| k.starts_with("finovy_images{"))
            .map(|(_, v)| v)
            .sum();
        if counted > 0.0 {
            assert_eq!(counted, total, "folding keeps the totals exact");
            passes_seen += 1;
        }
        let folded = m
            .keys()
            .any(|k| k.starts_with("finovy_limit_folded_groups{"));
        assert!(counted == 0.0 || folded, "what was folded is visible");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(passes_seen > 5, "{passes_seen} scrapes with data");
}

#[tokio::test]
async fn a_token_file_replaced_by_a_fifo_is_an_auth_failure_not_a_hang() {
    let images = dataset(&COUNTS, 45);
    let rig = Rig::start("fifo", images.clone(), Faults::default(), Flags::new()).await;
    rig.until_all_exact(&images).await;
    std::fs::remove_file(&rig.token_path).unwrap();
    let made = std::process::Command::new("mkfifo")
        .arg(&rig.token_path)
        .status()
        .unwrap();
    assert!(made.success());
    let m = rig.until_failed("HZ", "auth", 1.0).await;
    assert_eq!(up(&m, "HZ"), Some(0.0));
    let (_, readyz) = rig.get("/readyz").await;
    assert!(readyz.contains("a FIFO"), "{readyz}");
    rig.assert_serving().await;
}

#[tokio::test]
async fn bad_bytes_in_an_unused_name_a_lone_surrogate_and_a_bom_never_fail_a_datacenter() {
    let images = dataset(&COUNTS, 46);
    let faults = rules(vec![
        FaultRule::always(FaultAction::BadName {
            how: sim::BadName::Latin1,
            every: 1,
        })
        .datacenter("HZ"),
        FaultRule::always(FaultAction::BadName {
            how: sim::BadName::LoneSurrogate,
            every: 1,
        })
        .datacenter("SH"),
        FaultRule::always(FaultAction::Bom).datacenter("HK"),
    ]);
    let rig = Rig::start("bad-bytes", images.clone(), faults, Flags::new()).await;
    // imageName is not used by any aggregate: every number stays exact.
    let m = rig.until_all_exact(&images).await;
    for dc in DCS {
        assert_eq!(up(&m, dc), Some(1.0), "{dc}");
        assert_eq!(all_failures(&m, dc), 0.0, "{dc}");
    }
}

#[tokio::test]
async fn create_times_in_seconds_or_in_the_far_future_are_invalid_and_never_the_oldest() {
    let images = dataset(&COUNTS, 47);
    let faults = rules(vec![
        FaultRule::always(FaultAction::CreateTime {
            how: sim::TimeBend::Seconds,
            every: 1,
        })
        .datacenter("HZ"),
        FaultRule::always(FaultAction::CreateTime {
            how: sim::TimeBend::FarFuture,
            every: 1,
        })
        .datacenter("SH"),
    ]);
    let rig = Rig::start("create-time", images.clone(), faults, Flags::new()).await;
    let m = rig
        .until("both datacenters up", |m| {
            up(m, "HZ") == Some(1.0) && up(m, "SH") == Some(1.0)
        })
        .await;
    for dc in ["HZ", "SH"] {
        // Counts and sizes are exact; no oldest timestamp comes from a bad time.
        let oldest: Vec<f64> = shown(&m, dc)
            .into_iter()
            .filter(|(k, _)| k.starts_with("finovy_images_oldest_created_timestamp_seconds"))
            .map(|(_, v)| v)
            .collect();
        assert!(oldest.is_empty(), "{dc}: {oldest:?}");
        assert_eq!(images_shown(&m, dc), in_dc(&images, dc).count() as f64);
    }
    let invalid = metric(
        &m,
        "finovy_api_invalid_items_total{account=\"default\",field=\"createTime\"}",
    );
    assert!(
        invalid >= (in_dc(&images, "HZ").count() + in_dc(&images, "SH").count()) as f64,
        "{invalid}"
    );
    rig.others_exact(&images, &["HZ", "SH"]).await;
}

#[tokio::test]
async fn a_renamed_or_missing_item_array_fails_the_pass_and_keeps_the_last_good_numbers() {
    let images = dataset(&COUNTS, 48);
    let rig = Rig::start("no-array", images.clone(), Faults::default(), Flags::new()).await;
    let good = rig.until_all_exact(&images).await;
    rig.sim.set_faults(rules(vec![
        FaultRule::always(FaultAction::RenameArray { to: "items".into() }).datacenter("SH"),
        FaultRule::always(FaultAction::NoArray).datacenter("HK"),
    ]));
    let m = rig.until_failed("SH", "decode", 1.0).await;
    let m2 = rig.until_failed("HK", "decode", 1.0).await;
    assert_eq!(
        shown(&m, "SH"),
        shown(&good, "SH"),
        "SH keeps its last good numbers"
    );
    assert_eq!(
        shown(&m2, "HK"),
        shown(&good, "HK"),
        "HK keeps its last good numbers"
    );
    assert_eq!(up(&m2, "SH"), Some(0.0), "never 0 images with up 1");
    rig.others_exact(&images, &["SH", "HK"]).await;
}
