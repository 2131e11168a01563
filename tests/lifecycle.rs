//! The lifecycle counters against the simulator: known changes between passes
//! (creations, deletions, status moves, churn that leaves every group's count
//! as it was) must show up exactly as this test computes them itself, and a pass
//! with a paging anomaly, or a failed one, must change no counter.
//!
//! Passes of the change tests are one page each (fewer images than a page), so
//! every pass sees the inventory either before or after `set_images`, never half
//! of each. A step waits for two page-1 requests after the change: the pass of the
//! first has then been published, and it read the new inventory.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use common::{parse_metrics, wait_for, LoopbackSim};
use finovy_image_exporter::sim::{
    AuthStyle, FaultAction, FaultRule, Faults, SimImage, SimOptions, Simulator,
};
use tokio::sync::oneshot;

const TOKEN: &str = "lifecycle-token-5d1e";
const DEADLINE: Duration = Duration::from_secs(30);
const STATUS: [&str; 4] = ["creating", "available", "failed", "expired"];

struct Rig {
    sim: Simulator,
    addr: SocketAddr,
    http: reqwest::Client,
    _stops: Vec<oneshot::Sender<()>>,
    token_path: std::path::PathBuf,
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.token_path);
    }
}

impl Rig {
    async fn start(name: &str, images: Vec<SimImage>, extra: &[&str]) -> Rig {
        let sim = Simulator::new(
            images,
            SimOptions {
                token: Some(TOKEN.into()),
                auth_style: AuthStyle::Http,
            },
        );
        let (sim, sim_addr, sim_stop) = LoopbackSim::start(sim).await.into_parts();
        let token_path = std::env::temp_dir().join(format!(
            "finovy-lifecycle-{}-{name}.token",
            std::process::id()
        ));
        std::fs::write(&token_path, TOKEN).unwrap();
        let mut args: Vec<String> = [
            "--web.listen-address",
            "127.0.0.1:0",
            "--api.url",
            &format!("http://{sim_addr}"),
            "--api.token-file",
            token_path.to_str().unwrap(),
            "--datacenters",
            "HZ",
            "--refresh.interval",
            "1s",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let (addr, stop) = common::spawn_exporter(args).await;
        Rig {
            sim,
            addr,
            http: reqwest::Client::new(),
            _stops: vec![sim_stop, stop],
            token_path,
        }
    }

    async fn scrape(&self) -> BTreeMap<String, f64> {
        let body = self
            .http
            .get(format!("http://{}/metrics", self.addr))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        parse_metrics(&body)
    }

    /// Waits until two passes have begun since now: the first of them has then
    /// been published.
    async fn next_pass(&self) {
        self.sim.clear_requests();
        wait_for("two passes", DEADLINE, || async {
            let starts = self.sim.requests().iter().filter(|r| r.page() == 1).count();
            (starts >= 2).then_some(())
        })
        .await;
    }

    /// Waits until `family` on a scrape satisfies `check`.
    async fn until(&self, what: &str, check: impl Fn(&BTreeMap<String, f64>) -> bool) {
        let check = &check;
        wait_for(what, DEADLINE, || async move {
            let m = self.scrape().await;
            check(&m).then_some(())
        })
        .await;
    }
}

fn image(n: u32, status: u8, image_type: &str) -> SimImage {
    SimImage {
        id: format!("img-{n}"),
        image_id: i64::from(n),
        image_type: image_type.into(),
        image_name: format!("image {n}"),
        image_size: "10.00".into(),
        datacenter_key: "HZ".into(),
        status,
        create_time: 1_750_000_000_000 + i64::from(n) * 60_000,
    }
}

/// The lifecycle counters of a scrape that are not 0, by series.
fn counters(m: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    m.iter()
        .filter(|(k, v)| {
            **v > 0.0
                && (k.starts_with("finovy_images_created_total{")
                    || k.starts_with("finovy_images_deleted_total{")
                    || k.starts_with("finovy_image_status_transitions_total{"))
        })
        .map(|(k, v)| (k.clone(), *v))
        .collect()
}

/// The changes from `before` to `after` as counter series, computed here from
/// the inventories themselves.
fn expected(before: &[SimImage], after: &[SimImage], into: &mut BTreeMap<String, f64>) {
    let by_id = |images: &[SimImage]| -> HashMap<String, (u8, String)> {
        images
            .iter()
            .map(|i| (i.id.clone(), (i.status, i.image_type.clone())))
            .collect()
    };
    let (old, new) = (by_id(before), by_id(after));
    let base = r#"account="default",datacenter_key="HZ""#;
    for (id, (status, ty)) in &new {
        match old.get(id) {
            None => {
                *into
                    .entry(format!(
                        "finovy_images_created_total{{{base},image_type=\"{ty}\"}}"
                    ))
                    .or_default() += 1.0;
            }
            Some((was, _)) if was != status => {
                let (from, to) = (STATUS[*was as usize], STATUS[*status as usize]);
                *into
                    .entry(format!(
                        "finovy_image_status_transitions_total{{{base},image_type=\"{ty}\",from=\"{from}\",to=\"{to}\"}}"
                    ))
                    .or_default() += 1.0;
            }
            Some(_) => {}
        }
    }
    for (id, (status, ty)) in &old {
        if !new.contains_key(id) {
            let status = STATUS[*status as usize];
            *into
                .entry(format!(
                    "finovy_images_deleted_total{{{base},status=\"{status}\",image_type=\"{ty}\"}}"
                ))
                .or_default() += 1.0;
        }
    }
}

/// 40 images of two types in every status.
fn baseline() -> Vec<SimImage> {
    (0..40)
        .map(|n| {
            let ty = if n % 2 == 0 { "Windows" } else { "Ubuntu" };
            image(n, (n % 4) as u8, ty)
        })
        .collect()
}

fn group_counts(images: &[SimImage]) -> BTreeMap<(u8, String), usize> {
    let mut out = BTreeMap::new();
    for i in images {
        *out.entry((i.status, i.image_type.clone())).or_default() += 1;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_follow_creations_deletions_moves_and_churn() {
    let v0 = baseline();
    let rig = Rig::start("changes", v0.clone(), &[]).await;
    rig.next_pass().await;
    assert!(
        counters(&rig.scrape().await).is_empty(),
        "the first pass is a baseline"
    );
    let mut want = BTreeMap::new();

    // Creations, deletions and moves through statuses.
    let mut v1: Vec<SimImage> = v0
        .iter()
        .filter(|i| !["img-3", "img-6", "img-11", "img-20", "img-33"].contains(&i.id.as_str()))
        .cloned()
        .collect();
    for i in v1.iter_mut() {
        match i.id.as_str() {
            "img-0" | "img-4" | "img-9" => i.status = 1, // creating -> available
            "img-8" | "img-13" => i.status = 2,          // creating -> failed
            "img-1" => i.status = 3,                     // available -> expired
            _ => {}
        }
    }
    v1.extend((100..107).map(|n| image(n, 0, if n % 3 == 0 { "Debian" } else { "Windows" })));
    expected(&v0, &v1, &mut want);
    rig.sim.set_images(v1.clone());
    rig.next_pass().await;
    assert_eq!(
        counters(&rig.scrape().await),
        want,
        "after creations, deletions and moves"
    );

    // Churn: images replaced by others of the same status and type, so that
    // every group keeps its count.
    let mut v2 = v1.clone();
    let replaced = ["img-5", "img-10", "img-100"];
    for (k, i) in v2.iter_mut().enumerate() {
        if replaced.contains(&i.id.as_str()) {
            let (status, ty) = (i.status, i.image_type.clone());
            *i = image(200 + k as u32, status, &ty);
        }
    }
    assert_eq!(
        group_counts(&v1),
        group_counts(&v2),
        "churn keeps the groups"
    );
    expected(&v1, &v2, &mut want);
    rig.sim.set_images(v2.clone());
    rig.next_pass().await;
    let got = counters(&rig.scrape().await);
    assert_eq!(got, want, "after churn");
    let created: f64 = got
        .iter()
        .filter(|(k, _)| k.starts_with("finovy_images_created_total"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(
        created,
        7.0 + 3.0,
        "churn is counted although no gauge moved"
    );

    // Nothing changes: nothing more is counted.
    rig.next_pass().await;
    assert_eq!(counters(&rig.scrape().await), want, "an unchanged pass");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_with_a_paging_anomaly_or_a_failure_changes_no_counter() {
    let skipped = r#"finovy_lifecycle_skipped_passes_total{account="default",datacenter_key="HZ"}"#;
    // 35 images on pages of 10: four pages, so that repeats and totals can lie.
    let v0: Vec<SimImage> = (0..35)
        .map(|n| image(n, (n % 4) as u8, "Windows"))
        .collect();
    let rig = Rig::start("anomaly", v0.clone(), &["--api.page-size", "10"]).await;
    rig.next_pass().await;
    assert!(counters(&rig.scrape().await).is_empty());

    for (what, action) in [
        ("repeated items", FaultAction::Repeat { items: 2 }),
        ("a wrong total", FaultAction::TotalCounts { offset: 5 }),
        ("a failed page", FaultAction::Malformed),
    ] {
        let before = rig.scrape().await[skipped];
        rig.sim.set_faults(Faults {
            rules: vec![FaultRule::always(action)],
            ..Faults::default()
        });
        // Once a pass under the fault has ended, every pass that follows has it.
        rig.until(what, |m| m[skipped] >= before + 1.0).await;
        // The inventory changes while every pass is skipped: half of it is gone.
        rig.sim.set_images(v0[..17].to_vec());
        let at_change = rig.scrape().await[skipped];
        rig.until(what, |m| m[skipped] >= at_change + 2.0).await;
        assert!(
            counters(&rig.scrape().await).is_empty(),
            "{what}: a skipped pass must not look like deletions"
        );
        rig.sim.set_images(v0.clone());
        rig.sim.set_faults(Faults::default());
        let at_heal = rig.scrape().await[skipped];
        rig.next_pass().await;
        let m = rig.scrape().await;
        assert!(
            counters(&m).is_empty(),
            "{what}: healed with the same inventory"
        );
        // Passes may have been skipped until the fault was lifted, not after.
        assert!(m[skipped] >= at_heal, "{what}");
    }

    // After the skipped passes, a complete one counts against the last complete one.
    let v1 = v0[5..].to_vec();
    let mut want = BTreeMap::new();
    expected(&v0, &v1, &mut want);
    rig.sim.set_images(v1);
    rig.next_pass().await;
    assert_eq!(counters(&rig.scrape().await), want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switched_off_collectors_serve_none_of_their_families() {
    let rig = Rig::start(
        "off",
        baseline(),
        &[
            "--no-collector.lifecycle",
            "--no-collector.age",
            "--no-collector.size",
            "--no-collector.oldest",
        ],
    )
    .await;
    rig.next_pass().await;
    let m = rig.scrape().await;
    assert!(m.keys().any(|k| k.starts_with("finovy_images{")));
    for family in [
        "finovy_images_created_total",
        "finovy_images_deleted_total",
        "finovy_image_status_transitions_total",
        "finovy_lifecycle_skipped_passes_total",
        "finovy_images_age_seconds",
        "finovy_images_size_bytes",
        "finovy_images_oldest_created_timestamp_seconds",
    ] {
        assert!(
            !m.keys().any(|k| k.starts_with(family)),
            "{family} is served although its collector is off"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ages_are_cumulative_bucket_gauges_per_status() {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let hour = 3_600_000;
    // Ages of 30 minutes, 2 hours, 2 days and 400 days, all creating.
    let images: Vec<SimImage> = [hour / 2, 2 * hour, 48 * hour, 400 * 24 * hour]
        .iter()
        .enumerate()
        .map(|(n, age)| SimImage {
            create_time: now_ms - age,
            ..image(n as u32, 0, "Windows")
        })
        .collect();
    let rig = Rig::start("ages", images, &[]).await;
    rig.next_pass().await;
    let m = rig.scrape().await;
    let bucket = |le: &str| {
        m[&format!(
            r#"finovy_images_age_seconds_bucket{{account="default",datacenter_key="HZ",status="creating",le="{le}"}}"#
        )]
    };
    let got: Vec<f64> = [
        "3600.0",
        "21600.0",
        "86400.0",
        "604800.0",
        "2592000.0",
        "7776000.0",
        "15552000.0",
        "31536000.0",
        "+Inf",
    ]
    .iter()
    .map(|le| bucket(le))
    .collect();
    assert_eq!(got, [1.0, 2.0, 2.0, 3.0, 3.0, 3.0, 3.0, 3.0, 4.0]);
    let count = r#"finovy_images_age_seconds_gcount{account="default",datacenter_key="HZ",status="creating"}"#;
    assert_eq!(m[count], 4.0);
}

/// Python with `prometheus_client`'s OpenMetrics parser (from `.venv`, which
/// `scripts/test` puts first on PATH), or `None` (skipped outside CI).
fn openmetrics_python() -> Option<std::path::PathBuf> {
    let python = common::require_tool("python3")?;
    let ok = std::process::Command::new(&python)
        .args(["-c", "import prometheus_client.openmetrics.parser"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "prometheus_client is required under CI=true (scripts/requirements-test.txt)"
        );
        eprintln!("SKIPPED: {python:?} has no prometheus_client; run scripts/test");
        return None;
    }
    Some(python)
}

/// Parses an OpenMetrics body with the reference parser; returns each family's
/// name and type, or the parser's error.
fn parse_openmetrics(
    python: &std::path::Path,
    body: &str,
) -> Result<Vec<(String, String)>, String> {
    use std::io::Write as _;
    let script = "import sys, json\n\
from prometheus_client.openmetrics.parser import text_string_to_metric_families\n\
print(json.dumps([[f.name, f.type] for f in text_string_to_metric_families(sys.stdin.read())]))\n";
    let mut child = std::process::Command::new(python)
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(serde_json::from_slice(&out.stdout).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openmetrics_when_asked_parses_and_the_text_format_passes_promtool() {
    let v0 = baseline();
    let rig = Rig::start("formats", v0.clone(), &[]).await;
    rig.next_pass().await;
    // Some counters above 0, so that their samples are more than the start.
    rig.sim.set_images(v0[3..].to_vec());
    rig.next_pass().await;
    let get = |accept: &'static str| {
        let req = rig
            .http
            .get(format!("http://{}/metrics", rig.addr))
            .header("Accept", accept);
        async move {
            let resp = req.send().await.unwrap();
            let kind = resp.headers()["content-type"].to_str().unwrap().to_string();
            (kind, resp.text().await.unwrap())
        }
    };
    let (kind, om) = get("application/openmetrics-text; version=1.0.0").await;
    assert_eq!(
        kind,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert!(om.ends_with("# EOF\n"));
    let (kind, text) = get("text/plain").await;
    assert_eq!(kind, "text/plain; version=0.0.4; charset=utf-8");
    assert!(!text.contains("# EOF"));

    if let Some(python) = openmetrics_python() {
        let families = parse_openmetrics(&python, &om).unwrap_or_else(|e| panic!("{e}\n{om}"));
        let types: BTreeMap<String, String> = families.into_iter().collect();
        assert_eq!(types["finovy_images_age_seconds"], "gaugehistogram");
        assert_eq!(types["finovy_images_deleted"], "counter");
        assert_eq!(types["finovy_api_requests"], "counter");
        assert_eq!(types["finovy_api_request_duration_seconds"], "histogram");
        assert_eq!(
            types.len(),
            om.matches("# TYPE ").count(),
            "every family parsed"
        );
        // A broken body is refused, so the parser really checks.
        assert!(parse_openmetrics(&python, om.trim_end_matches("# EOF\n")).is_err());
    }
    if let Some(promtool) = common::require_tool("promtool") {
        use std::io::Write as _;
        let mut child = std::process::Command::new(promtool)
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && said.trim().is_empty(),
            "promtool: {said}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_info_names_the_oldest_images_in_its_statuses_up_to_the_limit() {
    // Newest first, so that the oldest are not simply the first served.
    let mut images = baseline();
    images.reverse();
    let rig = Rig::start(
        "info",
        images.clone(),
        &["--collector.image-info", "--collector.image-info.limit=3"],
    )
    .await;
    rig.next_pass().await;
    let mut want: Vec<&SimImage> = images
        .iter()
        .filter(|i| [0, 2].contains(&i.status))
        .collect();
    want.sort_by_key(|i| i.create_time);
    let want: Vec<String> = want[..3]
        .iter()
        .map(|i| {
            format!(
                r#"finovy_image_info{{account="default",datacenter_key="HZ",id="{}",image_id="{}",image_name="{}",image_type="{}",status="{}"}}"#,
                i.id, i.image_id, i.image_name, i.image_type, STATUS[i.status as usize]
            )
        })
        .collect();
    let m = rig.scrape().await;
    let got: Vec<String> = m
        .iter()
        .filter(|(k, v)| k.starts_with("finovy_image_info{") && **v == 1.0)
        .map(|(k, _)| k.clone())
        .collect();
    let mut want_sorted = want.clone();
    want_sorted.sort();
    assert_eq!(got, want_sorted);
}
