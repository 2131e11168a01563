//! End to end with a real Prometheus: the exporter binary runs against the simulator binary,
//! Prometheus (the Debian package's server) scrapes it every second with the shipped alert
//! rules loaded, and the test
//!
//! - runs every PromQL expression of the Grafana dashboard (variables substituted, once with
//!   "All" selected and once with one datacenter and one image type) through the HTTP API and
//!   requires data from each, and checks that each variable query finds values;
//! - requires every alert rule to evaluate with health `ok`, the healthy-exporter alerts to
//!   stay inactive and the expired-images alert to go pending on the simulator's data;
//! - adds an image stuck in `creating` to the simulator and waits for
//!   FinovyImageCreatingTooLong to go pending for exactly that image, while the group alert
//!   FinovyImagesStuckCreating stays quiet (one alert per stuck image);
//! - renders the exporter's landing page and `/readyz` in headless Chromium and checks the
//!   datacenter table.
//!
//! A second test runs two exporters of the same account, as sidecar replicas or an HA pair
//! do, and two Prometheus servers with the shipped rules: one scrapes both exporters, the other
//! one of them. Every dashboard query and every recording rule must give the same numbers in
//! both, and each alert fires once, not once per exporter.
//!
//! Prometheus and Chromium come from `scripts/test`; without them the test is skipped
//! outside CI and fails under `CI=true`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

const TOKEN: &str = "e2e-token";
/// The simulator's account also logs in with these.
const UUID: &str = "E2E00001";
const SECRET: &str = "e2e-secret-Zq9";
const JOB: &str = "finovy-image-exporter";
const DATACENTERS: [&str; 2] = ["HZ", "SH"];
const IMAGE_TYPES: [&str; 2] = ["Windows", "Ubuntu"];
/// Upstream status codes: creating, available, failed, expired and one the exporter does not
/// know (`unknown`).
const STATUSES: [u8; 5] = [0, 1, 2, 3, 7];
/// Alerts that must stay quiet while the exporter and the simulator are healthy.
const QUIET_WHEN_HEALTHY: [&str; 8] = [
    "FinovyExporterDown",
    "FinovyExporterAbsent",
    "FinovyRefreshFailing",
    "FinovyDataStale",
    "FinovyAuthenticationFailing",
    "FinovyLoginFailing",
    "FinovyImagesStuckCreating",
    "FinovyImageCreationFailuresRising",
];
/// Families only an account that logs in (uuid and secret) exports: the first test's
/// exporter logs in, so the dashboard's Login row has data there; the two exporters of the
/// second use a static token.
const LOGIN_FAMILIES: [&str; 2] = [
    "finovy_auth_requests_total",
    "finovy_auth_token_expiry_timestamp_seconds",
];
const RULES: &str = "deploy/prometheus/rules/finovy-alerts.yml";
const DEADLINE: Duration = Duration::from_secs(60);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A child process killed (and reaped) when the test ends, however it ends.
struct Running {
    name: &'static str,
    child: Child,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `command` with its stdout and stderr read line by line into a channel.
fn start(name: &'static str, command: &mut Command) -> (Running, mpsc::Receiver<String>) {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
    let (lines, received) = mpsc::channel();
    let streams: [Box<dyn Read + Send>; 2] = [
        Box::new(child.stdout.take().unwrap()),
        Box::new(child.stderr.take().unwrap()),
    ];
    for stream in streams {
        let lines = lines.clone();
        std::thread::spawn(move || {
            // Keep draining even when nobody listens any more: a closed pipe would kill
            // the child on its next log line.
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                let _ = lines.send(line);
            }
        });
    }
    (Running { name, child }, received)
}

/// Reads lines until `parse` finds what it wants; fails after `DEADLINE` with what was read.
fn wait_for_line<T>(
    process: &mut Running,
    lines: &mpsc::Receiver<String>,
    parse: impl Fn(&str) -> Option<T>,
) -> T {
    let start = Instant::now();
    let mut seen = Vec::new();
    while start.elapsed() < DEADLINE {
        match lines.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => {
                if let Some(found) = parse(&line) {
                    return found;
                }
                seen.push(line);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if let Ok(Some(status)) = process.child.try_wait() {
                    panic!(
                        "{} exited with {status}:\n{}",
                        process.name,
                        seen.join("\n")
                    );
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    panic!(
        "{} did not say what the test waits for:\n{}",
        process.name,
        seen.join("\n")
    );
}

/// A directory for the test's files, removed at the end.
struct TempDir(PathBuf);

impl TempDir {
    /// A directory of its own for each test (`name`), as tests run side by side.
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("finovy-e2e-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn image(id: usize, datacenter: &str, image_type: &str, status: u8, created_ms: i64) -> Value {
    json!({
        "id": format!("e2e-{id}"),
        "imageId": id,
        "imageType": image_type,
        "imageName": format!("{image_type}-{id}"),
        "imageSize": "20.00",
        "datacenterKey": datacenter,
        "status": status,
        "createTime": created_ms,
    })
}

/// Every status in every datacenter and image type, two images each. Images still creating
/// were created ten minutes ago, well within FinovyImagesStuckCreating's hour.
fn inventory() -> Vec<Value> {
    let now = now_ms();
    let mut images = Vec::new();
    for datacenter in DATACENTERS {
        for image_type in IMAGE_TYPES {
            for status in STATUSES {
                for _ in 0..2 {
                    let created = if status == 0 {
                        now - 10 * 60 * 1000
                    } else {
                        now - 10 * 24 * 3600 * 1000
                    };
                    images.push(image(images.len(), datacenter, image_type, status, created));
                }
            }
        }
    }
    images
}

/// The parsed JSON body of a successful GET, or None.
async fn get_json(client: &reqwest::Client, url: &str, query: &[(&str, &str)]) -> Option<Value> {
    let response = client.get(url).query(query).send().await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    serde_json::from_str(&response.text().await.ok()?).ok()
}

async fn send_images(
    client: &reqwest::Client,
    method: reqwest::Method,
    sim: &str,
    images: &[Value],
) {
    let response = client
        .request(method.clone(), format!("{sim}/_sim/images"))
        .header("content-type", "application/json")
        .body(serde_json::to_string(images).unwrap())
        .send()
        .await
        .expect("simulator control API answers");
    assert!(
        response.status().is_success(),
        "{method} /_sim/images: {}",
        response.status()
    );
}

/// The expressions of every panel, and the variable queries.
fn dashboard_queries() -> (Vec<(String, String)>, Vec<String>) {
    let path = repo().join("grafana/dashboards/finovy-images.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut panels: Vec<&Value> = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        panels.push(panel);
        panels.extend(panel["panels"].as_array().into_iter().flatten());
    }
    let exprs = panels
        .iter()
        .flat_map(|panel| {
            panel["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|target| {
                    (
                        format!("{} ({})", panel["title"].as_str().unwrap(), target["refId"]),
                        target["expr"].as_str().unwrap().to_owned(),
                    )
                })
        })
        .collect();
    let variables = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|variable| variable["query"]["query"].as_str().map(str::to_owned))
        .collect();
    (exprs, variables)
}

/// Substitutes the dashboard's variables as Grafana would for one selection.
/// The PromQL of the dashboard's annotations (Grafana's built-in one has none).
fn annotation_queries() -> Vec<String> {
    let path = repo().join("grafana/dashboards/finovy-images.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    dashboard["annotations"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["expr"].as_str().map(str::to_owned))
        .collect()
}

fn substitute(text: &str, selection: &[(&str, &str)]) -> String {
    let mut out = text.to_owned();
    for (name, value) in selection {
        out = out
            .replace(&format!("${{{name}}}"), value)
            .replace(&format!("${name}"), value);
    }
    assert!(!out.contains('$'), "unsubstituted variable in {out}");
    out
}

/// "All" selected: the datacenter and image type variables' allValue; the job variable has
/// none, so Grafana lists its values.
const ALL: &[(&str, &str)] = &[
    ("__rate_interval", "1m"),
    ("datacenter_key", ".*"),
    ("image_type", ".*"),
    ("status", ".*"),
    ("account", ".*"),
    ("instance", ".*"),
    ("job", JOB),
];
/// One datacenter and one image type selected.
const ONE: &[(&str, &str)] = &[
    ("__rate_interval", "1m"),
    ("datacenter_key", "SH"),
    ("image_type", "Windows"),
    ("status", "expired"),
    ("account", "default"),
    ("instance", "127.0.0.1:.*"),
    ("job", JOB),
];

/// An instant query's result vector when it holds at least one finite value. A query that
/// Prometheus rejects fails the test at once: waiting would not fix it.
async fn query_with_data(
    client: &reqwest::Client,
    prometheus: &str,
    expr: &str,
) -> Option<Vec<Value>> {
    let response = client
        .get(format!("{prometheus}/api/v1/query"))
        .query(&[("query", expr)])
        .send()
        .await
        .ok()?;
    let status = response.status();
    let body: Value = serde_json::from_str(&response.text().await.ok()?).ok()?;
    assert!(
        !status.is_client_error(),
        "Prometheus rejects {expr}: {}",
        body["error"]
    );
    if body["status"] != "success" {
        return None;
    }
    let result = body["data"]["result"].as_array()?.clone();
    let finite = result.iter().any(|sample| {
        sample["value"][1]
            .as_str()
            .and_then(|v| v.parse::<f64>().ok())
            .is_some_and(f64::is_finite)
    });
    finite.then_some(result)
}

/// An instant query's result vector at `time` (else now), empty or not, or None when
/// Prometheus does not answer. A query that Prometheus rejects fails the test.
async fn query(
    client: &reqwest::Client,
    prometheus: &str,
    expr: &str,
    time: Option<f64>,
) -> Option<Vec<Value>> {
    let mut params = vec![("query", expr.to_owned())];
    if let Some(time) = time {
        params.push(("time", format!("{time:.3}")));
    }
    let response = client
        .get(format!("{prometheus}/api/v1/query"))
        .query(&params)
        .send()
        .await
        .ok()?;
    let status = response.status();
    let body: Value = serde_json::from_str(&response.text().await.ok()?).ok()?;
    assert!(
        !status.is_client_error(),
        "Prometheus rejects {expr}: {}",
        body["error"]
    );
    (body["status"] == "success").then(|| body["data"]["result"].as_array().cloned())?
}

/// The number of rules, alerting and recording, of the shipped rules file.
fn rule_count() -> usize {
    let rules = std::fs::read_to_string(repo().join(RULES)).unwrap();
    rules.matches("- alert:").count() + rules.matches("- record:").count()
}

/// Rules of every group from /api/v1/rules.
async fn rules(client: &reqwest::Client, prometheus: &str) -> Option<Vec<Value>> {
    let body = get_json(client, &format!("{prometheus}/api/v1/rules"), &[]).await?;
    let groups = body["data"]["groups"].as_array()?;
    Some(
        groups
            .iter()
            .flat_map(|group| group["rules"].as_array().cloned().unwrap_or_default())
            .collect(),
    )
}

fn rule<'a>(rules: &'a [Value], name: &str) -> &'a Value {
    rules
        .iter()
        .find(|rule| rule["name"] == name)
        .unwrap_or_else(|| panic!("Prometheus has no rule {name}"))
}

/// Runs Chromium headless on `url` with `output_args` (e.g. `--dump-dom`), bounded in time.
fn chromium(chromium: &Path, profile: &Path, output_args: &[&str], url: &str) -> String {
    let mut child = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(output_args)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromium starts");
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "chromium {output_args:?} {url}: {status}");
            return reader.join().unwrap();
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish {output_args:?} {url} within {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The datacenter cell (the second, after the account) of every body row of the
/// landing page's target table.
fn datacenter_rows(dom: &str) -> Vec<String> {
    let table = dom
        .split("<table id=\"datacenters\">")
        .nth(1)
        .and_then(|rest| rest.split("</table>").next())
        .unwrap_or_else(|| panic!("no datacenter table in the landing page:\n{dom}"));
    let body = table.split("<tbody>").nth(1).expect("the table has a body");
    body.split("<tr>")
        .skip(1)
        .map(|row| {
            row.split("<td>")
                .nth(2)
                .and_then(|cell| cell.split("</td>").next())
                .expect("a row starts with its datacenter")
                .trim()
                .to_owned()
        })
        .collect()
}

/// The exporter binary with `args` (plus a loopback port and JSON logs), once it
/// listens: the process (killed on drop) and its address.
fn start_exporter(args: &[&str], token: Option<&str>) -> (Running, SocketAddr) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_finovy-image-exporter"));
    command
        .args([
            "--web.listen-address",
            "127.0.0.1:0",
            "--log.format",
            "json",
        ])
        .args(args);
    if let Some(token) = token {
        command.env("FINOVY_ACCESS_TOKEN", token);
    }
    let (mut process, lines) = start("finovy-image-exporter", &mut command);
    let addr = wait_for_line(&mut process, &lines, |line| {
        let entry: Value = serde_json::from_str(line).ok()?;
        if entry["msg"] != "listening" {
            return None;
        }
        entry["address"].as_str()?.parse().ok()
    });
    (process, addr)
}

/// The simulator binary holding the test's inventory: the process (killed on drop) and its
/// URL.
async fn start_simulator(client: &reqwest::Client) -> (Running, String) {
    let (mut sim_process, sim_lines) = start(
        "finovy-api-sim",
        Command::new(env!("CARGO_BIN_EXE_finovy-api-sim")).args([
            "--listen",
            "127.0.0.1:0",
            "--account",
            &format!("e2e:{TOKEN}:1:0"),
            "--login",
            &format!("e2e:{UUID}:{SECRET}"),
        ]),
    );
    let sim_addr: SocketAddr = wait_for_line(&mut sim_process, &sim_lines, |line| {
        line.strip_prefix("listening on ")?.trim().parse().ok()
    });
    let sim = format!("http://{sim_addr}");
    send_images(client, reqwest::Method::PUT, &sim, &inventory()).await;
    (sim_process, sim)
}

/// Prometheus with `config` (YAML), its data under `dir`, once it is ready: the
/// process (killed on drop) and its base URL.
async fn start_prometheus(
    client: &reqwest::Client,
    prometheus_bin: &Path,
    config: &str,
    dir: &Path,
) -> (Running, String) {
    let config_file = dir.join("prometheus.yml");
    std::fs::write(&config_file, config).unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let (process, _lines) = start(
        "prometheus",
        Command::new(prometheus_bin)
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn"),
    );
    let prometheus = format!("http://{addr}");
    common::wait_for("Prometheus to be ready", DEADLINE, || async {
        let response = client
            .get(format!("{prometheus}/-/ready"))
            .send()
            .await
            .ok()?;
        response.status().is_success().then_some(())
    })
    .await;
    (process, prometheus)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_exporter_and_answers_every_dashboard_query_and_alert() {
    let (Some(prometheus_bin), Some(chromium_bin)) = (
        common::require_tool("prometheus"),
        common::require_tool("chromium"),
    ) else {
        return;
    };
    finovy_image_exporter::install_crypto_provider();
    let client = reqwest::Client::new();
    let temp = TempDir::new("dashboard");
    let (_sim_process, sim) = start_simulator(&client).await;

    // The exporter, refreshing every second, logging in as a real account does.
    let secret = temp.0.join("e2e.secret");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let (_exporter_process, exporter_addr) = start_exporter(
        &[
            "--api.url",
            &sim,
            "--api.uuid",
            UUID,
            "--api.secret-file",
            secret.to_str().unwrap(),
            "--refresh.interval",
            "1s",
            "--collector.image-info",
        ],
        None,
    );
    let exporter = format!("http://{exporter_addr}");

    // Prometheus, scraping it every second with the shipped rules.
    let rules_file = repo().join("deploy/prometheus/rules/finovy-alerts.yml");
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
         rule_files:\n  - {}\n\
         scrape_configs:\n  - job_name: {JOB}\n    static_configs:\n      - targets: [\"{exporter_addr}\"]\n",
        rules_file.display()
    );
    let (_prometheus_process, prometheus) =
        start_prometheus(&client, &prometheus_bin, &config, &temp.0).await;

    // Samples of every datacenter, scraped from the exporter.
    let up_query = format!("finovy_up{{job=\"{JOB}\"}} == 1");
    common::wait_for(
        "finovy_up of every datacenter in Prometheus",
        DEADLINE,
        || async {
            let result = query_with_data(&client, &prometheus, &up_query).await?;
            (result.len() == DATACENTERS.len()).then_some(())
        },
    )
    .await;

    // The families of the lifecycle, age and image-info collectors are ingested. Prometheus
    // 2.42 (Debian 12) has no `scrape_protocols` (2.49 added it), so one job cannot be made
    // to ask for each format; it sends `Accept: application/openmetrics-text;version=1.0.0,
    // ...;text/plain;version=0.0.4;q=0.5`, so this scrape is OpenMetrics, and the text format
    // is checked with promtool in tests/lifecycle.rs. The gauge histogram's `_gcount` and
    // `_gsum` are series of the same names in both formats.
    for family in [
        "finovy_images_age_seconds_bucket",
        "finovy_images_age_seconds_gcount",
        "finovy_images_age_seconds_gsum",
        "finovy_images_created_total",
        "finovy_images_deleted_total",
        "finovy_image_status_transitions_total",
        "finovy_lifecycle_skipped_passes_total",
        "finovy_image_info",
    ] {
        let query = format!("{family}{{job=\"{JOB}\"}}");
        common::wait_for(&format!("{family} in Prometheus"), DEADLINE, || {
            query_with_data(&client, &prometheus, &query)
        })
        .await;
    }

    // Every dashboard expression, for both selections, returns data, the Login row's included.
    let (exprs, variable_queries) = dashboard_queries();
    assert!(
        exprs.len() >= 20,
        "only {} dashboard expressions",
        exprs.len()
    );
    for selection in [ALL, ONE] {
        for (panel, expr) in &exprs {
            let expr = substitute(expr, selection);
            common::wait_for(&format!("data for {panel}: {expr}"), DEADLINE, || {
                query_with_data(&client, &prometheus, &expr)
            })
            .await;
        }
    }
    // Annotation queries (failures) have no data while all is well, but
    // Prometheus must accept them.
    for expr in annotation_queries() {
        for selection in [ALL, ONE] {
            let expr = substitute(&expr, selection);
            let response = client
                .get(format!("{prometheus}/api/v1/query"))
                .query(&[("query", expr.as_str())])
                .send()
                .await
                .unwrap();
            assert!(
                response.status().is_success(),
                "Prometheus rejects the annotation {expr}: {}",
                response.text().await.unwrap_or_default()
            );
        }
    }
    // Variable queries: label_values(SELECTOR, LABEL) finds values of LABEL.
    for query in &variable_queries {
        let query = substitute(query, ALL);
        let inner = query
            .strip_prefix("label_values(")
            .and_then(|rest| rest.strip_suffix(')'))
            .unwrap_or_else(|| panic!("unexpected variable query {query}"));
        let (selector, label) = inner.rsplit_once(',').unwrap();
        let body = get_json(
            &client,
            &format!("{prometheus}/api/v1/series"),
            &[("match[]", selector.trim())],
        )
        .await
        .expect("series API answers");
        let values: BTreeSet<&str> = body["data"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|series| series[label.trim()].as_str())
            .collect();
        assert!(!values.is_empty(), "{query} finds no value");
        if label.trim() == "datacenter_key" {
            assert_eq!(values, DATACENTERS.into_iter().collect());
        }
        if label.trim() == "image_type" {
            assert_eq!(values, IMAGE_TYPES.into_iter().collect());
        }
    }

    // Every rule evaluates cleanly; with the inventory's expired images that alert is pending,
    // and none of the alerts about an unhealthy exporter or stuck images is active.
    let rule_count = rule_count();
    let evaluated = common::wait_for("every rule evaluated with health ok", DEADLINE, || async {
        let rules = rules(&client, &prometheus).await?;
        let all_ok = rules.len() == rule_count && rules.iter().all(|rule| rule["health"] == "ok");
        let expired = rules
            .iter()
            .find(|r| r["name"] == "FinovyExpiredImagesPresent")?;
        (all_ok && expired["state"] == "pending").then_some(rules)
    })
    .await;
    for name in QUIET_WHEN_HEALTHY {
        let rule = rule(&evaluated, name);
        assert_eq!(rule["state"], "inactive", "{name} is active: {rule}");
    }
    let expired_alerts = rule(&evaluated, "FinovyExpiredImagesPresent")["alerts"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(expired_alerts, DATACENTERS.len() * IMAGE_TYPES.len());

    // An image that has been creating for two hours: finovy_image_info names it (the oldest
    // creating image), and the named alert pends (its `for:` keeps it from firing within the
    // test) for that image alone.
    let stuck = image(10_000, "SH", "Ubuntu", 0, now_ms() - 2 * 3600 * 1000);
    send_images(&client, reqwest::Method::POST, &sim, &[stuck]).await;
    let alerts = common::wait_for(
        "FinovyImageCreatingTooLong pending for e2e-10000",
        DEADLINE,
        || async {
            let rules = rules(&client, &prometheus).await?;
            let alerts = rule(&rules, "FinovyImageCreatingTooLong")["alerts"]
                .as_array()?
                .clone();
            alerts
                .iter()
                .any(|alert| alert["labels"]["id"] == "e2e-10000")
                .then_some(alerts)
        },
    )
    .await;
    let stuck: Vec<&Value> = alerts
        .iter()
        .filter(|alert| alert["labels"]["id"] == "e2e-10000")
        .collect();
    assert_eq!(stuck.len(), 1, "one alert for the stuck image: {alerts:?}");
    let labels = &stuck[0]["labels"];
    assert_eq!(labels["datacenter_key"], "SH");
    assert_eq!(labels["image_type"], "Ubuntu");
    assert_eq!(labels["status"], "creating");
    // The group is stuck too, but with the image named, the group alert stays quiet: one
    // stuck image, one alert.
    let group_stuck = "time() - finovy_images_oldest_created_timestamp_seconds\
        {status=\"creating\", datacenter_key=\"SH\", image_type=\"Ubuntu\"} > 3600";
    common::wait_for("the SH/Ubuntu group older than an hour", DEADLINE, || {
        query_with_data(&client, &prometheus, group_stuck)
    })
    .await;
    let rules_now = rules(&client, &prometheus).await.expect("rules");
    let group = rule(&rules_now, "FinovyImagesStuckCreating");
    assert_eq!(
        group["state"], "inactive",
        "a second alert for one image: {group}"
    );

    // The landing page and /readyz, as a browser renders them.
    let profile = temp.0.join("chromium-profile");
    let landing = chromium(
        &chromium_bin,
        &profile,
        &["--dump-dom"],
        &format!("{exporter}/"),
    );
    let rows = datacenter_rows(&landing);
    assert_eq!(
        rows,
        DATACENTERS.map(String::from).to_vec(),
        "one row per datacenter"
    );
    for column in ["Age", "Next pass", "Size", "Last duration", "Last trace id"] {
        assert!(
            landing.contains(&format!("<th>{column}</th>")),
            "no {column} column"
        );
    }
    assert!(landing.contains(" ago</td>"), "the age of the last success");
    assert!(
        landing.contains("id=\"configuration\""),
        "the effective configuration"
    );
    assert!(
        !landing.contains(TOKEN) && !landing.contains(SECRET),
        "the token or the secret on the landing page"
    );
    let readyz = chromium(
        &chromium_bin,
        &profile,
        &["--dump-dom"],
        &format!("{exporter}/readyz"),
    );
    assert!(readyz.contains("ready"), "{readyz}");
    for datacenter in DATACENTERS {
        assert!(
            readyz.contains(&format!("datacenter_key=\"{datacenter}\"")),
            "/readyz does not list {datacenter}:\n{readyz}"
        );
    }
    let screenshot = temp.0.join("landing.png");
    chromium(
        &chromium_bin,
        &profile,
        &[
            "--window-size=900,560",
            &format!("--screenshot={}", screenshot.display()),
        ],
        &format!("{exporter}/"),
    );
    let png = std::fs::read(&screenshot).expect("chromium wrote the screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 1000,
        "not a PNG screenshot"
    );
}

/// `/probe` negotiates its format as `/metrics` does (client_golang's rule): the
/// text format for a scraper that prefers it, OpenMetrics for Prometheus, which
/// asks for it first; a real Prometheus ingests one account's series from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_ingests_one_account_from_probe_in_the_negotiated_format() {
    let Some(prometheus_bin) = common::require_tool("prometheus") else {
        return;
    };
    finovy_image_exporter::install_crypto_provider();
    let client = reqwest::Client::new();
    let temp = TempDir::new("probe");
    let (_exporter_process, exporter_addr) = start_exporter(&["--demo"], None);
    for (accept, wanted) in [
        ("text/plain;version=0.0.4", "text/plain; version=0.0.4"),
        (
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
            "application/openmetrics-text; version=1.0.0",
        ),
    ] {
        let probe = client
            .get(format!("http://{exporter_addr}/probe?account=prod"))
            .header("accept", accept)
            .send()
            .await
            .unwrap();
        let content_type = probe.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(
            content_type.starts_with(wanted),
            "/probe with Accept {accept} answered {content_type}"
        );
    }
    let config = format!(
        "global:\n  scrape_interval: 1s\n\
         scrape_configs:\n  - job_name: finovy-probe\n    metrics_path: /probe\n    params:\n      account: [prod]\n    static_configs:\n      - targets: [\"{exporter_addr}\"]\n"
    );
    let (_prometheus_process, prometheus) =
        start_prometheus(&client, &prometheus_bin, &config, &temp.0).await;
    let result = common::wait_for("Prometheus to ingest /probe", DEADLINE, || async {
        let body = get_json(
            &client,
            &format!("{prometheus}/api/v1/query"),
            &[("query", "finovy_up{job=\"finovy-probe\",account=\"prod\"}")],
        )
        .await?;
        let result = body["data"]["result"].as_array()?.clone();
        (!result.is_empty()).then_some(result)
    })
    .await;
    assert!(result
        .iter()
        .all(|series| series["metric"]["account"] == "prod"));
    let other = get_json(
        &client,
        &format!("{prometheus}/api/v1/query"),
        &[("query", "finovy_up{account=\"staging\"}")],
    )
    .await
    .unwrap();
    assert_eq!(
        other["data"]["result"].as_array().map(Vec::len),
        Some(0),
        "/probe?account=prod carries no other account"
    );
}

/// A query result as label set (without `__name__`) -> value.
fn samples(result: &[Value]) -> BTreeMap<BTreeMap<String, String>, f64> {
    result
        .iter()
        .map(|sample| {
            let labels = sample["metric"]
                .as_object()
                .expect("metric labels")
                .iter()
                .filter(|(name, _)| *name != "__name__")
                .map(|(name, value)| (name.clone(), value.as_str().unwrap().to_owned()))
                .collect();
            let value = sample["value"][1]
                .as_str()
                .and_then(|v| v.parse().ok())
                .expect("a sample value");
            (labels, value)
        })
        .collect()
}

/// How closely a dashboard expression over two replicas must match the same over one.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Match {
    /// Gauges of the same upstream data: the same number.
    Exact,
    /// `time()` minus a pass's timestamp: the replicas refresh a second or two apart.
    Seconds(f64),
    /// Rates of the replicas' own requests and passes: close, never double (a doubled count
    /// would be 100 % off).
    Within(f64),
    /// Latencies and durations: each exporter's own; the same series, any values.
    SeriesOnly,
}

fn match_for(expr: &str) -> Match {
    if expr.contains("histogram_quantile(") || expr.contains("finovy_refresh_duration_seconds") {
        Match::SeriesOnly
    } else if expr.contains("time()") {
        Match::Seconds(5.0)
    } else if expr.contains("rate(") || expr.contains("increase(") {
        Match::Within(0.3)
    } else {
        Match::Exact
    }
}

/// Two exporters of the same account (sidecar replicas, an HA pair) scraped by one Prometheus,
/// and one of them by another, both with the shipped rules: every dashboard query and every
/// recording rule gives the single exporter's numbers, and an alert fires once, not once per
/// exporter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_exporters_of_one_account_give_the_single_exporter_numbers() {
    let Some(prometheus_bin) = common::require_tool("prometheus") else {
        return;
    };
    finovy_image_exporter::install_crypto_provider();
    let client = reqwest::Client::new();
    let temp = TempDir::new("replicas");
    let (_sim_process, sim) = start_simulator(&client).await;
    // With --collector.image-info, so that the dashboard's stuck-image table has rows.
    let args = [
        "--api.url",
        &sim,
        "--refresh.interval",
        "1s",
        "--collector.image-info",
    ];
    let (_exporter_a, a) = start_exporter(&args, Some(TOKEN));
    let (_exporter_b, b) = start_exporter(&args, Some(TOKEN));

    let rules_file = repo().join(RULES);
    let config = |targets: &[SocketAddr]| {
        let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: {JOB}\n    static_configs:\n      - targets: [{}]\n",
            rules_file.display(),
            targets.join(", ")
        )
    };
    let (both_dir, one_dir) = (temp.0.join("both"), temp.0.join("one"));
    std::fs::create_dir_all(&both_dir).unwrap();
    std::fs::create_dir_all(&one_dir).unwrap();
    let (_both_process, both) =
        start_prometheus(&client, &prometheus_bin, &config(&[a, b]), &both_dir).await;
    let (_one_process, one) =
        start_prometheus(&client, &prometheus_bin, &config(&[a]), &one_dir).await;

    // Every datacenter up on every exporter each Prometheus scrapes.
    for (prometheus, exporters) in [(&both, 2), (&one, 1)] {
        let expected = (exporters * DATACENTERS.len()).to_string();
        common::wait_for("finovy_up of every exporter", DEADLINE, || async {
            let result = query(&client, prometheus, "count(finovy_up == 1)", None).await?;
            (result.first()?["value"][1] == expected.as_str()).then_some(())
        })
        .await;
    }
    // Every dashboard expression has data in both (but the login's: a static token), so that
    // the comparison below compares numbers, not two empty answers.
    let (exprs, _) = dashboard_queries();
    let exprs: Vec<(String, String)> = exprs
        .into_iter()
        .map(|(panel, expr)| (panel, substitute(&expr, ALL)))
        .collect();
    for (panel, expr) in &exprs {
        if LOGIN_FAMILIES.iter().any(|family| expr.contains(family)) {
            continue;
        }
        for prometheus in [&both, &one] {
            common::wait_for(&format!("data for {panel}: {expr}"), DEADLINE, || {
                query_with_data(&client, prometheus, expr)
            })
            .await;
        }
    }

    // Ten scrapes of every exporter in both, so that the rates have a window to go by. Every
    // query below is then asked at one moment, after all of that: what had data has it then.
    for prometheus in [&both, &one] {
        common::wait_for("ten scrapes of every exporter", DEADLINE, || async {
            let expr = format!("min(count_over_time(up{{job=\"{JOB}\"}}[1m])) >= 10");
            query_with_data(&client, prometheus, &expr).await
        })
        .await;
    }
    let at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();

    // The setup has the problem to solve: Prometheus holds each series twice.
    let naive = "sum(finovy_images)";
    let value = |result: Option<Vec<Value>>| -> f64 {
        let result = result.expect("Prometheus answers");
        result[0]["value"][1].as_str().unwrap().parse().unwrap()
    };
    let doubled = value(query(&client, &both, naive, Some(at)).await);
    let single = value(query(&client, &one, naive, Some(at)).await);
    assert_eq!(doubled, 2.0 * single, "two exporters, each series twice");
    assert!(single > 0.0);

    // Every dashboard expression: the same series, and the single exporter's numbers. Series
    // with an `instance` label are the exporters' own (memory, CPU, up): one per exporter.
    for (panel, expr) in &exprs {
        let over_both = query(&client, &both, expr, Some(at)).await.expect("answer");
        let over_one = query(&client, &one, expr, Some(at)).await.expect("answer");
        let per_account = |result: &[Value]| {
            let mut all = samples(result);
            all.retain(|labels, _| !labels.contains_key("instance"));
            all
        };
        let login = LOGIN_FAMILIES.iter().any(|family| expr.contains(family));
        assert!(login || !over_one.is_empty(), "{panel} has no data: {expr}");
        let (over_both, over_one) = (per_account(&over_both), per_account(&over_one));
        assert_eq!(
            over_both.keys().collect::<Vec<_>>(),
            over_one.keys().collect::<Vec<_>>(),
            "{panel}: other series over two exporters than over one: {expr}"
        );
        let rule = match_for(expr);
        for (labels, &two) in &over_both {
            let single = over_one[labels];
            let close = match rule {
                Match::Exact => (two - single).abs() <= 1e-9 * single.abs().max(1.0),
                Match::Seconds(slack) => (two - single).abs() <= slack,
                Match::Within(ratio) => (two - single).abs() <= ratio * single.abs().max(1e-9),
                Match::SeriesOnly => true,
            };
            assert!(
                close,
                "{panel} {labels:?}: {two} over two exporters, {single} over one ({rule:?}): {expr}"
            );
        }
    }

    // Every recording rule: the single exporter's numbers, exactly.
    let rules_text = std::fs::read_to_string(&rules_file).unwrap();
    let records: Vec<&str> = rules_text
        .lines()
        .filter_map(|line| line.trim().strip_prefix("- record:"))
        .map(str::trim)
        .collect();
    assert!(records.len() >= 5, "{records:?}");
    for record in records {
        let over_both = query(&client, &both, record, Some(at))
            .await
            .expect("answer");
        let over_one = query(&client, &one, record, Some(at))
            .await
            .expect("answer");
        assert!(!over_one.is_empty(), "{record} has no data");
        assert_eq!(samples(&over_both), samples(&over_one), "{record}");
    }

    // Alerts: once per group or image, not once per exporter. The inventory's expired images
    // pend one alert per datacenter and image type; an image stuck in creating for two hours,
    // which both exporters name, one alert.
    let stuck = image(10_000, "SH", "Ubuntu", 0, now_ms() - 2 * 3600 * 1000);
    send_images(&client, reqwest::Method::POST, &sim, &[stuck]).await;
    let alerts_of = |name: &'static str| {
        let client = &client;
        let both = &both;
        async move {
            let rules = rules(client, both).await?;
            let alerts = rule(&rules, name)["alerts"].as_array()?.clone();
            (!alerts.is_empty()).then_some(alerts)
        }
    };
    let expired = common::wait_for("FinovyExpiredImagesPresent pending", DEADLINE, || {
        alerts_of("FinovyExpiredImagesPresent")
    })
    .await;
    assert_eq!(
        expired.len(),
        DATACENTERS.len() * IMAGE_TYPES.len(),
        "{expired:#?}"
    );
    let stuck = common::wait_for("FinovyImageCreatingTooLong pending", DEADLINE, || async {
        let alerts = alerts_of("FinovyImageCreatingTooLong").await?;
        let named: Vec<Value> = alerts
            .into_iter()
            .filter(|alert| alert["labels"]["id"] == "e2e-10000")
            .collect();
        (!named.is_empty()).then_some(named)
    })
    .await;
    assert_eq!(stuck.len(), 1, "one alert for the stuck image: {stuck:#?}");
    let labels = &stuck[0]["labels"];
    assert_eq!(labels["datacenter_key"], "SH");
    assert_eq!(labels["image_type"], "Ubuntu");
    assert!(labels.get("instance").is_none(), "{labels}");
}
