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
const KUSTOMIZE_BASE: &str = "deploy/kubernetes/base";
const KUSTOMIZE_SIDECAR: &str = "deploy/kubernetes/overlays/sidecar";
const PROMETHEUS_RULE: &str = "deploy/kubernetes/base/prometheusrule.yaml";
const RULE_GENERATOR: &str = "deploy/kubernetes/base/generate-prometheusrule.sh";
const DOCKERFILE: &str = "deploy/docker/Dockerfile";
const COMPOSE: &str = "deploy/docker/compose.yaml";
const SYSTEMD_UNIT: &str = "deploy/systemd/finovy-image-exporter.service";
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
        read(RULES).matches("- alert:").count(),
        "promtool found another number of rules than the file defines:\n{text}"
    );
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

#[test]
fn alerts_have_runbook_annotations() {
    let Some(python) = require_python_yaml() else {
        return;
    };
    let rules = yaml_file(&python, RULES);
    for group in rules["groups"].as_array().expect("groups") {
        for rule in group["rules"].as_array().expect("rules") {
            let name = rule["alert"].as_str().expect("only alerting rules");
            for key in ["summary", "description", "runbook"] {
                let text = rule["annotations"][key].as_str().unwrap_or_default();
                assert!(text.len() > 20, "{name} lacks a real {key} annotation");
            }
            let severity = rule["labels"]["severity"].as_str().unwrap_or_default();
            assert!(
                ["critical", "warning", "info"].contains(&severity),
                "{name} has severity {severity:?}"
            );
        }
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
    assert_eq!(rules_found(&text), read(RULES).matches("- alert:").count());
}

/// `kubectl kustomize DIR`, written to a file in `scratch`, parsed.
fn kustomize(kubectl: &Path, python: &Path, dir: &str, scratch: &Scratch) -> (PathBuf, Vec<Value>) {
    let output = run_ok(Command::new(kubectl).args(["kustomize", dir]));
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

/// Checks the exporter container: hardened, token read from the mounted Secret, probes on
/// the exporter's port. Returns its port name.
fn check_exporter_container(pod: &Value, container: &Value, secret_name: &str) -> String {
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

    // The token: a Secret volume mounted read-only, its file passed as --api.token-file.
    let volume = pod["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|volume| volume["secret"]["secretName"] == secret_name)
        .expect("a volume of the token Secret");
    let mount = container["volumeMounts"]
        .as_array()
        .expect("volumeMounts")
        .iter()
        .find(|mount| mount["name"] == volume["name"])
        .expect("the token volume is mounted");
    assert_eq!(mount["readOnly"], true);
    assert!(
        mount.get("subPath").is_none(),
        "subPath mounts never see a new token"
    );
    let expected_arg = format!(
        "--api.token-file={}/token",
        mount["mountPath"].as_str().expect("mountPath")
    );
    let args: Vec<&str> = container["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .collect();
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

fn token_secret(docs: &[Value]) -> String {
    let secrets = of_kind(docs, "Secret");
    assert_eq!(secrets.len(), 1);
    assert!(
        secrets[0]["data"]["token"].is_string(),
        "the Secret holds `token`"
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
    assert_eq!(of_kind(&docs, "PrometheusRule").len(), 1);
}

/// The alert rules select job="finovy-image-exporter": the monitor must set it.
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
    let app = containers
        .iter()
        .find(|c| c["name"] == "web")
        .expect("app container");
    assert_eq!(http_probe_path(app, "readinessProbe").as_deref(), Some("/"));
    assert!(
        app.get("volumeMounts").is_none(),
        "the token is mounted into the exporter only"
    );
    let exporter = containers
        .iter()
        .find(|c| c["name"] == "finovy-image-exporter")
        .expect("exporter container");
    assert!(
        exporter["image"]
            .as_str()
            .is_some_and(|image| image.contains('/') && image.contains(':')),
        "the sidecar's image is set by the overlay: {}",
        exporter["image"]
    );
    let port = check_exporter_container(pod, exporter, &secret);
    // The pod is the app's: the exporter's readiness must not take it out of service.
    let readiness = http_probe_path(exporter, "readinessProbe");
    assert!(
        readiness.is_none() || readiness.as_deref() == Some("/healthz"),
        "sidecar readiness on {readiness:?}: see deploy/kubernetes/README.md"
    );
    let default_container = &deployment["spec"]["template"]["metadata"]["annotations"]
        ["kubectl.kubernetes.io/default-container"];
    assert_eq!(default_container, "web");

    let monitors = of_kind(&docs, "PodMonitor");
    assert_eq!(monitors.len(), 1);
    let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];
    assert!(selects(
        &monitors[0]["spec"]["selector"]["matchLabels"],
        pod_labels
    ));
    let endpoint = &monitors[0]["spec"]["podMetricsEndpoints"][0];
    assert_eq!(endpoint["port"], port.as_str());
    assert_job_relabeling(endpoint);
    assert_eq!(of_kind(&docs, "PrometheusRule").len(), 1);
}

#[test]
fn prometheusrule_is_generated_from_the_rules_file() {
    let (Some(kubectl), Some(promtool), Some(python)) = (
        common::require_tool("kubectl"),
        common::require_tool("promtool"),
        require_python_yaml(),
    ) else {
        return;
    };
    // The committed resource is exactly what the generator makes of the rules file today.
    let generated = run_ok(Command::new("sh").args([RULE_GENERATOR, "-"]));
    assert!(
        generated.stdout == read(PROMETHEUS_RULE).into_bytes(),
        "{PROMETHEUS_RULE} is out of date: run {RULE_GENERATOR}"
    );

    let rules = yaml_file(&python, RULES);
    let rule_count = alert_names(&rules).len();
    for dir in [KUSTOMIZE_BASE, KUSTOMIZE_SIDECAR] {
        let scratch = Scratch::new(&format!("rule-{}", dir.replace('/', "-")));
        let (_, docs) = kustomize(&kubectl, &python, dir, &scratch);
        let resources = of_kind(&docs, "PrometheusRule");
        assert_eq!(resources.len(), 1, "{dir}: one PrometheusRule");
        let spec = &resources[0]["spec"];
        assert_eq!(
            *spec, rules,
            "{dir}: the PrometheusRule's rules differ from {RULES}"
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
        assert_eq!(rules_found(&stdout(&output)), rule_count);
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

/// Metric names in a PromQL expression: identifiers starting with `finovy_`.
fn finovy_metrics(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("finovy_") {
        let preceded = expr.len() - rest.len() + at;
        let boundary = preceded == 0
            || !expr[..preceded]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        rest = &rest[at + name.len()..];
        if boundary {
            names.push(name);
        }
    }
    names
}

#[test]
fn dashboard_and_alerts_use_only_documented_metrics() {
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
    let mut seen = BTreeSet::new();
    for expr in &exprs {
        for metric in finovy_metrics(expr) {
            assert!(
                common::is_exporter_series(&metric),
                "{metric} is not a metric of SPEC.md (in {expr:?})"
            );
            seen.insert(metric);
        }
    }
    assert!(seen.len() >= 10, "found only {seen:?}");
}
