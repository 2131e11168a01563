//! Several accounts in one exporter, from `--config.file`: exact numbers per
//! account, a wrong token failing only its account, reloads (SIGHUP and
//! `POST /-/reload`) that keep unchanged targets, `--config.check`,
//! `/probe?account=`, and a storm of 429 confined to its account.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::{get, parse_metrics, post, scrape, wait_for, ExporterProcess, LoopbackSim};
use finovy_image_exporter::account::TargetKey;
use finovy_image_exporter::sim::{
    self, AuthStyle, FaultAction, FaultRule, Faults, SimAccount, SimImage, Simulator,
};
use finovy_image_exporter::state::State;
use tokio::sync::oneshot;

const DEADLINE: Duration = Duration::from_secs(30);

/// A unique scratch directory for this test process.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "finovy-accounts-test-{}-{name}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn images(seed: u64, count: usize, datacenters: &[&str]) -> Vec<SimImage> {
    sim::generate(&sim::GenerateOptions {
        images: count,
        datacenters: datacenters.iter().map(|d| d.to_string()).collect(),
        seed,
        now_ms: 1_790_000_000_000,
        ..Default::default()
    })
}

async fn start_sim(accounts: Vec<SimAccount>) -> LoopbackSim {
    LoopbackSim::start(Simulator::with_accounts(accounts, AuthStyle::default()).unwrap()).await
}

/// An in-process exporter started from flags; stops on drop.
struct Running {
    addr: SocketAddr,
    state: Arc<State>,
    _stop: oneshot::Sender<()>,
}

async fn start_exporter(args: &[&str]) -> Running {
    use clap::Parser as _;
    let config = finovy_image_exporter::config::Config::try_parse_from(
        [
            "finovy-image-exporter",
            "--web.listen-address",
            "127.0.0.1:0",
        ]
        .iter()
        .chain(args),
    )
    .expect("valid test flags");
    let exporter = finovy_image_exporter::app::Exporter::start(config)
        .await
        .expect("the exporter starts");
    let (addr, state) = (exporter.local_addr(), exporter.state());
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(exporter.run(async move {
        let _ = stopped.await;
    }));
    Running {
        addr,
        state,
        _stop: stop,
    }
}

/// `finovy_images` of `account` as the images of `datacenters` give them.
fn expected_counts(
    account: &str,
    images: &[SimImage],
    datacenters: &[&str],
) -> BTreeMap<String, f64> {
    let kept = images
        .iter()
        .filter(|im| datacenters.contains(&im.datacenter_key.as_str()));
    common::expected_image_counts(account, kept)
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

fn up(metrics: &BTreeMap<String, f64>, account: &str, dc: &str) -> Option<f64> {
    metrics
        .get(&format!(
            "finovy_up{{account=\"{account}\",datacenter_key=\"{dc}\"}}"
        ))
        .copied()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_accounts_get_exact_numbers_a_wrong_token_fails_only_its_own_and_probe_serves_one() {
    let (a, b, c) = (
        images(1, 300, &["HZ", "SH", "HK"]),
        images(2, 200, &["HZ", "SG"]),
        images(3, 150, &["BJ", "GZ"]),
    );
    let upstream = start_sim(vec![
        SimAccount::new("alpha", "token-a", a.clone()),
        SimAccount::new("beta", "token-b", b.clone()),
        SimAccount::new("gamma", "token-c", c.clone()),
    ])
    .await;
    let dir = scratch("three");
    write(&dir.join("alpha.token"), "token-a\n");
    write(&dir.join("wrong.token"), "not-a-token\n");
    std::env::set_var("FINOVY_TEST_THREE_BETA", "token-b");
    let config = dir.join("config.yaml");
    write(
        &config,
        &format!(
            "defaults:\n  api: {{url: 'http://{}', timeout: 5s}}\n  refresh: {{interval: 1s}}\n\
             accounts:\n\
             \x20 - name: alpha\n    token_file: alpha.token\n    datacenters: [HZ, SH]\n\
             \x20 - name: beta\n    token_env: FINOVY_TEST_THREE_BETA\n    datacenters: [HZ, SG]\n    api: {{concurrency: 2}}\n\
             \x20 - name: gamma\n    token_file: {}\n\
             \x20 - name: delta\n    token_file: wrong.token\n    datacenters: [HZ]\n",
            upstream.addr,
            // An absolute path stays as it is; gamma discovers its datacenters.
            dir.join("gamma.token").display(),
        ),
    );
    write(&dir.join("gamma.token"), "token-c\n");
    let exporter = start_exporter(&["--config.file", config.to_str().unwrap()]).await;

    let want_a = expected_counts("alpha", &a, &["HZ", "SH"]);
    let want_b = expected_counts("beta", &b, &["HZ", "SG"]);
    let want_c = expected_counts("gamma", &c, &["BJ", "GZ"]);
    let m = wait_for("every account's exact numbers", DEADLINE, || async {
        let m = scrape(exporter.addr).await;
        (common::image_counts(&m, "alpha") == want_a
            && common::image_counts(&m, "beta") == want_b
            && common::image_counts(&m, "gamma") == want_c
            && m.get("finovy_refresh_failures_total{account=\"delta\",datacenter_key=\"HZ\",reason=\"auth\"}")
                .is_some_and(|n| *n >= 1.0))
        .then_some(m)
    })
    .await;
    // Only alpha's two datacenters, not HK which its account also holds.
    assert!(!m.keys().any(|k| k.contains("datacenter_key=\"HK\"")));
    for (account, dc) in [
        ("alpha", "HZ"),
        ("alpha", "SH"),
        ("beta", "SG"),
        ("gamma", "BJ"),
    ] {
        assert_eq!(up(&m, account, dc), Some(1.0), "{account}/{dc}");
    }
    assert_eq!(up(&m, "delta", "HZ"), Some(0.0));
    for account in ["alpha", "beta", "gamma"] {
        let failures: f64 = m
            .iter()
            .filter(|(k, _)| {
                k.starts_with("finovy_refresh_failures_total{")
                    && k.contains(&format!("account=\"{account}\""))
            })
            .map(|(_, v)| v)
            .sum();
        assert_eq!(failures, 0.0, "{account} never failed");
    }
    assert_eq!(
        m["finovy_api_concurrency_limit{account=\"beta\"}"], 2.0,
        "beta's own concurrency"
    );

    // /probe?account= has exactly that account's series: those of /metrics that
    // carry account="beta", and nothing else.
    let probe_matches = wait_for("probe = metrics for beta", DEADLINE, || async {
        let (status, body) = get(&format!("http://{}/probe?account=beta", exporter.addr)).await;
        assert_eq!(status, 200);
        let probe = parse_metrics(&body);
        let metrics = scrape(exporter.addr).await;
        let of_beta: BTreeSet<&String> = metrics
            .keys()
            .filter(|k| k.contains("account=\"beta\""))
            .collect();
        let probed: BTreeSet<&String> = probe.keys().collect();
        let same_images = common::image_counts(&probe, "beta") == want_b;
        (of_beta == probed && same_images).then_some(probe)
    })
    .await;
    assert!(probe_matches.keys().all(|k| k.contains("account=\"beta\"")));
    assert!(probe_matches.contains_key("finovy_api_requests_total{account=\"beta\",code=\"200\"}"));
    // As Prometheus asks for it: one valid gzip stream (its CRC and length checked
    // by the decoder) of the same series.
    let zipped = reqwest::Client::new()
        .get(format!("http://{}/probe?account=beta", exporter.addr))
        .header("Accept-Encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(zipped.headers()["content-encoding"], "gzip");
    let mut text = String::new();
    std::io::Read::read_to_string(
        &mut flate2::read::GzDecoder::new(&zipped.bytes().await.unwrap()[..]),
        &mut text,
    )
    .expect("the gzip body inflates");
    let unzipped = parse_metrics(&text);
    assert_eq!(
        unzipped.keys().collect::<BTreeSet<_>>(),
        probe_matches.keys().collect::<BTreeSet<_>>()
    );
    assert_eq!(common::image_counts(&unzipped, "beta"), want_b);
    for query in ["account=nobody", "", "account=beta&account=alpha"] {
        let (status, body) = get(&format!("http://{}/probe?{query}", exporter.addr)).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert!(!body.is_empty());
    }
}

/// A target's last success and its next pass, from the published state.
fn schedule(state: &State, key: &TargetKey) -> Option<(f64, std::time::SystemTime)> {
    let snap = state.snapshot();
    let t = snap.targets.get(key)?;
    Some((
        t.last_success.map(finovy_image_exporter::unix_seconds)?,
        t.next_pass?,
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_adds_removes_and_changes_accounts_and_keeps_unchanged_targets_on_schedule() {
    let upstream = start_sim(vec![
        SimAccount::new("keep", "token-k", images(4, 120, &["HZ", "SH"])),
        SimAccount::new("gone", "token-g", images(5, 80, &["HZ"])),
        SimAccount::new("change", "token-c", images(6, 90, &["HZ", "SG"])),
        SimAccount::new("new", "token-n", images(7, 60, &["SH"])),
    ])
    .await;
    let dir = scratch("reload");
    for (name, token) in [
        ("k", "token-k"),
        ("g", "token-g"),
        ("c", "token-c"),
        ("n", "token-n"),
    ] {
        write(&dir.join(format!("{name}.token")), token);
    }
    // An interval long enough for the reload below (building the changed and
    // new accounts' clients, on a busy machine) to end before keep/HZ's next pass.
    let head = format!(
        "defaults:\n  api: {{url: 'http://{}'}}\n  refresh: {{interval: 8s}}\naccounts:\n  - {{name: keep, token_file: k.token, datacenters: [HZ, SH]}}\n",
        upstream.addr
    );
    let config = dir.join("config.yaml");
    write(
        &config,
        &format!("{head}  - {{name: gone, token_file: g.token, datacenters: [HZ]}}\n  - {{name: change, token_file: c.token, datacenters: [HZ]}}\n"),
    );
    let exporter = start_exporter(&[
        "--config.file",
        config.to_str().unwrap(),
        "--web.enable-lifecycle",
    ])
    .await;
    let url = |path: &str| format!("http://{}{path}", exporter.addr);
    wait_for("every account up", DEADLINE, || async {
        let m = scrape(exporter.addr).await;
        (up(&m, "keep", "HZ") == Some(1.0)
            && up(&m, "keep", "SH") == Some(1.0)
            && up(&m, "gone", "HZ") == Some(1.0)
            && up(&m, "change", "HZ") == Some(1.0))
        .then_some(())
    })
    .await;
    assert_eq!(
        scrape(exporter.addr).await["finovy_config_last_reload_successful"],
        1.0
    );

    // Wait for a pass of keep/HZ to have just finished, so that the reload
    // lands well inside its interval, then reload.
    let key = TargetKey::datacenter("keep", "HZ");
    let first = schedule(&exporter.state, &key).unwrap();
    // The next pass is set just after a pass publishes: wait for both.
    let before = wait_for("a fresh pass of keep/HZ", DEADLINE, || async {
        schedule(&exporter.state, &key).filter(|s| {
            s.0 != first.0 && s.1 > std::time::UNIX_EPOCH + std::time::Duration::from_secs_f64(s.0)
        })
    })
    .await;
    write(
        &config,
        &format!("{head}  - {{name: change, token_file: c.token, datacenters: [HZ, SG], api: {{page_size: 7}}}}\n  - {{name: new, token_file: n.token}}\n"),
    );
    let (status, body) = post(&url("/-/reload")).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("3 accounts"), "{body}");
    // The removed account's series vanish at once; the new ones come.
    let m = wait_for("the reload applied", DEADLINE, || async {
        let m = scrape(exporter.addr).await;
        (!m.keys().any(|k| k.contains("account=\"gone\""))).then_some(m)
    })
    .await;
    assert_eq!(
        schedule(&exporter.state, &key),
        Some(before),
        "keep/HZ kept its last success and its next pass"
    );
    assert_eq!(m["finovy_config_last_reload_successful"], 1.0);
    wait_for("new and changed accounts refreshed", DEADLINE, || async {
        let m = scrape(exporter.addr).await;
        (up(&m, "new", "SH") == Some(1.0) && up(&m, "change", "SG") == Some(1.0)).then_some(())
    })
    .await;
    // The landing page shows the accounts of the reload, not those of the start.
    let (_, landing) = get(&url("/")).await;
    assert!(landing.contains("Account new"), "{landing}");
    assert!(!landing.contains("Account gone"), "{landing}");
    assert!(landing.contains("datacenters HZ,SG"), "{landing}");
    // The changed account asks with its new page size.
    let asked = upstream.sim.requests();
    assert!(asked
        .iter()
        .any(|r| r.param("pageSize").as_deref() == Some("7")));

    // An invalid file changes nothing and says so.
    let stamp = scrape(exporter.addr).await["finovy_config_last_reload_success_timestamp_seconds"];
    write(
        &config,
        &format!("{head}  - {{name: keep, token_file: k.token}}\n"),
    );
    let (status, body) = post(&url("/-/reload")).await;
    assert_eq!(status, 500);
    assert!(
        body.contains("config.yaml:6:") && body.contains("already used by accounts[0]"),
        "{body}"
    );
    // The /metrics body may be up to a second old.
    let m = wait_for("the failed reload shown", DEADLINE, || async {
        let m = scrape(exporter.addr).await;
        (m["finovy_config_last_reload_successful"] == 0.0).then_some(m)
    })
    .await;
    assert_eq!(
        m["finovy_config_last_reload_success_timestamp_seconds"],
        stamp
    );
    for (account, dc) in [("keep", "HZ"), ("new", "SH"), ("change", "SG")] {
        assert_eq!(
            up(&m, account, dc),
            Some(1.0),
            "{account}/{dc} still served"
        );
    }
    let (_, landing) = get(&url("/")).await;
    assert!(
        landing.contains("Account new") && landing.contains("Account change"),
        "a failed reload leaves the page as the running configuration: {landing}"
    );
    let (status, _) = get(&url("/-/reload")).await;
    assert_eq!(status, 405);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_file_and_reload_is_forbidden_without_the_lifecycle_flag() {
    let upstream = start_sim(vec![
        SimAccount::new("one", "token-1", images(8, 50, &["HZ"])),
        SimAccount::new("two", "token-2", images(9, 50, &["SH"])),
    ])
    .await;
    let dir = scratch("sighup");
    write(&dir.join("one.token"), "token-1");
    let head = format!(
        "defaults:\n  api: {{url: 'http://{}'}}\n  refresh: {{interval: 1s}}\naccounts:\n  - {{name: one, token_file: one.token, datacenters: [HZ]}}\n",
        upstream.addr
    );
    let config = dir.join("config.yaml");
    write(&config, &head);
    let process = ExporterProcess::spawn(
        &["--config.file", config.to_str().unwrap()],
        &[("FINOVY_TEST_SIGHUP_TWO", "token-2")],
    );
    let metrics = || async {
        let (_, body) = get(&process.url("/metrics")).await;
        parse_metrics(&body)
    };
    wait_for("one up", DEADLINE, || async {
        (up(&metrics().await, "one", "HZ") == Some(1.0)).then_some(())
    })
    .await;
    let (status, body) = post(&process.url("/-/reload")).await;
    assert_eq!(status, 403);
    assert!(body.contains("--web.enable-lifecycle"), "{body}");

    let hangup = || {
        let ok = std::process::Command::new("kill")
            .args(["-HUP", &process.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    };
    write(
        &config,
        &format!("{head}  - {{name: two, token_env: FINOVY_TEST_SIGHUP_TWO}}\n"),
    );
    hangup();
    wait_for("two added by SIGHUP", DEADLINE, || async {
        (up(&metrics().await, "two", "SH") == Some(1.0)).then_some(())
    })
    .await;
    write(&config, &format!("{head}  - {{name: two}}\n"));
    hangup();
    wait_for("the failed reload counted", DEADLINE, || async {
        (metrics().await.get("finovy_config_last_reload_successful") == Some(&0.0)).then_some(())
    })
    .await;
    let m = metrics().await;
    assert_eq!(
        up(&m, "two", "SH"),
        Some(1.0),
        "the running configuration stays"
    );
    // The gauge is set just before the line is logged: wait for the line too.
    wait_for("the failed reload logged", DEADLINE, || async {
        process
            .output()
            .iter()
            .any(|l| l.contains("cannot reload --config.file") && l.contains("config.yaml:6:"))
            .then_some(())
    })
    .await;
    assert!(process.child.id() > 0, "still running");
}

fn exporter_command() -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_finovy-image-exporter"));
    cmd.env_remove("FINOVY_ACCESS_TOKEN");
    cmd
}

#[test]
fn config_check_prints_each_problem_with_its_line_and_exits_2() {
    let dir = scratch("check");
    write(&dir.join("ok.token"), "t0ken");
    let bad = dir.join("bad.yaml");
    write(
        &bad,
        "accounts:\n  - name: fine\n    token_file: ok.token\n  - name: lost\n    token_file: missing.token\n  - name: unset\n    token_env: FINOVY_TEST_CHECK_SURELY_UNSET\n    datacenters: [HZ, SH]\n",
    );
    let out = exporter_command()
        .args(["--config.file", bad.to_str().unwrap(), "--config.check"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{stderr}");
    assert!(
        lines[0].contains("bad.yaml:4:") && lines[0].contains("accounts[1] (lost): token_file")
    );
    assert!(
        lines[1].contains("bad.yaml:6:") && lines[1].contains("FINOVY_TEST_CHECK_SURELY_UNSET")
    );

    let schema = dir.join("schema.yaml");
    write(
        &schema,
        "accounts:\n  - name: fine\n    token_file: ok.token\n    refresh:\n      interval: 100ms\n",
    );
    let out = exporter_command()
        .args(["--config.file", schema.to_str().unwrap(), "--config.check"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr.contains("schema.yaml:5:") && stderr.contains("accounts[0].refresh.interval"),
        "{stderr}"
    );

    let good = dir.join("good.yaml");
    write(
        &good,
        "accounts:\n  - {name: a, token_file: ok.token, datacenters: [HZ, SH]}\n  - {name: b, token_file: ok.token}\n",
    );
    let out = exporter_command()
        .args(["--config.file", good.to_str().unwrap(), "--config.check"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "config OK: 2 accounts, 3 targets"
    );

    // An account flag, even through its environment twin, conflicts with the file.
    let out = exporter_command()
        .args(["--config.file", good.to_str().unwrap()])
        .env("FINOVY_DATACENTERS", "HZ")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--datacenters"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_429_halves_only_its_accounts_concurrency_which_grows_back() {
    let upstream = start_sim(vec![
        SimAccount::new("storm", "token-s", images(10, 100, &["HZ", "SH"])),
        SimAccount::new("calm", "token-c", images(11, 100, &["HZ", "SH"])),
    ])
    .await;
    let dir = scratch("storm");
    write(&dir.join("s.token"), "token-s");
    write(&dir.join("c.token"), "token-c");
    let config = dir.join("config.yaml");
    write(
        &config,
        &format!(
            "defaults:\n  api: {{url: 'http://{}', page_size: 10, max_retries: 0}}\n  refresh: {{interval: 1s}}\n\
             accounts:\n  - {{name: storm, token_file: s.token, datacenters: [HZ, SH], api: {{concurrency: 8}}}}\n\
             \x20 - {{name: calm, token_file: c.token, datacenters: [HZ, SH], api: {{concurrency: 8}}}}\n",
            upstream.addr
        ),
    );
    let exporter = start_exporter(&["--config.file", config.to_str().unwrap()]).await;
    let limit = |m: &BTreeMap<String, f64>, account: &str| {
        m.get(&format!(
            "finovy_api_concurrency_limit{{account=\"{account}\"}}"
        ))
        .copied()
    };
    wait_for("both up", DEADLINE, || async {
        let m = scrape(exporter.addr).await;
        (up(&m, "storm", "HZ") == Some(1.0) && up(&m, "calm", "SH") == Some(1.0)).then_some(())
    })
    .await;
    upstream.sim.set_faults(Faults {
        rules: vec![FaultRule::always(FaultAction::Status {
            status: 429,
            retry_after_secs: None,
        })
        .account("storm")],
        ..Default::default()
    });
    let m = wait_for("storm's limit halved down", DEADLINE, || async {
        let m = scrape(exporter.addr).await;
        (limit(&m, "storm").is_some_and(|l| l <= 2.0)).then_some(m)
    })
    .await;
    assert_eq!(limit(&m, "calm"), Some(8.0), "calm keeps its budget");
    // Meanwhile calm's passes keep their pace: its last success stays recent.
    let stamp = |m: &BTreeMap<String, f64>, dc: &str| {
        m[&format!(
            "finovy_refresh_last_success_timestamp_seconds{{account=\"calm\",datacenter_key=\"{dc}\"}}"
        )]
    };
    let before = stamp(&m, "HZ");
    wait_for("calm refreshed during the storm", DEADLINE, || async {
        let m = scrape(exporter.addr).await;
        assert_eq!(up(&m, "calm", "HZ"), Some(1.0));
        (stamp(&m, "HZ") > before).then_some(())
    })
    .await;
    let m = scrape(exporter.addr).await;
    let now = finovy_image_exporter::unix_seconds(std::time::SystemTime::now());
    for dc in ["HZ", "SH"] {
        assert!(
            now - stamp(&m, dc) < 5.0,
            "calm/{dc} within a few intervals"
        );
    }
    assert_eq!(up(&m, "storm", "HZ"), Some(0.0));

    upstream.sim.set_faults(Faults::default());
    wait_for("storm's limit grown back", DEADLINE, || async {
        (limit(&scrape(exporter.addr).await, "storm") == Some(8.0)).then_some(())
    })
    .await;
}

/// Kills (and reaps) a child process when the test ends, however it ends.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `sum by (account) (EXPR)` from Prometheus, per account.
async fn sum_by_account(prometheus: &str, expr: &str) -> Option<BTreeMap<String, f64>> {
    let resp = reqwest::Client::new()
        .get(format!("{prometheus}/api/v1/query"))
        .query(&[("query", format!("sum by (account) ({expr})"))])
        .send()
        .await
        .ok()?;
    let body: serde_json::Value = serde_json::from_str(&resp.text().await.ok()?).ok()?;
    body["data"]["result"]
        .as_array()?
        .iter()
        .map(|r| {
            Some((
                r["metric"]["account"].as_str()?.to_string(),
                r["value"][1].as_str()?.parse().ok()?,
            ))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_sees_the_same_totals_per_account_from_three_shards_as_from_one_exporter() {
    let Some(prometheus) = common::require_tool("prometheus") else {
        return;
    };
    let dir = scratch("prometheus-shards");
    let mut sim_accounts = Vec::new();
    let mut entries = String::new();
    let mut expected = BTreeMap::new();
    for i in 0..12u64 {
        let (name, token) = (format!("acct{i:02}"), format!("token-{i}"));
        let set = images(100 + i, 40 + 10 * i as usize, &["HZ", "SH", "SG"]);
        // A third of the accounts discover their datacenters; the others list two.
        let listed: &[&str] = if i % 3 == 0 {
            &["HZ", "SH", "SG"]
        } else {
            &["HZ", "SH"]
        };
        let count = set
            .iter()
            .filter(|im| listed.contains(&im.datacenter_key.as_str()))
            .count();
        expected.insert(name.clone(), count as f64);
        write(&dir.join(format!("{name}.token")), &token);
        entries.push_str(&format!("  - {{name: {name}, token_file: {name}.token"));
        if i % 3 != 0 {
            entries.push_str(", datacenters: [HZ, SH]");
        }
        entries.push_str("}\n");
        sim_accounts.push(SimAccount::new(&name, &token, set));
    }
    let upstream = start_sim(sim_accounts).await;
    let config = dir.join("config.yaml");
    write(
        &config,
        &format!(
            "defaults:\n  api: {{url: 'http://{}'}}\n  refresh: {{interval: 1s}}\naccounts:\n{entries}",
            upstream.addr
        ),
    );
    let config = config.to_str().unwrap();
    let single = start_exporter(&["--config.file", config]).await;
    let mut shards = Vec::new();
    for shard in ["0", "1", "2"] {
        shards.push(
            start_exporter(&[
                "--config.file",
                config,
                "--total-shards",
                "3",
                "--shard",
                shard,
            ])
            .await,
        );
    }
    let targets = |exporters: &[&Running]| {
        exporters
            .iter()
            .map(|e| format!("'{}'", e.addr))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let prometheus_config = dir.join("prometheus.yml");
    write(
        &prometheus_config,
        &format!(
            "global: {{scrape_interval: 1s}}\nscrape_configs:\n\
             \x20 - job_name: single\n    static_configs: [{{targets: [{}]}}]\n\
             \x20 - job_name: sharded\n    static_configs: [{{targets: [{}]}}]\n",
            targets(&[&single]),
            targets(&shards.iter().collect::<Vec<_>>()),
        ),
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _prometheus = Child(
        std::process::Command::new(prometheus)
            .arg(format!("--config.file={}", prometheus_config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("prometheus starts"),
    );
    let api = format!("http://127.0.0.1:{port}");
    let sharded = wait_for(
        "Prometheus to hold every account's totals from both jobs",
        Duration::from_secs(60),
        || async {
            let single = sum_by_account(&api, "finovy_images{job=\"single\"}").await?;
            let sharded = sum_by_account(&api, "finovy_images{job=\"sharded\"}").await?;
            (single == expected && sharded == expected).then_some(sharded)
        },
    )
    .await;
    assert_eq!(sharded.len(), 12);
    // Each target is up in exactly one shard.
    let ups = sum_by_account(
        &api,
        "count by (account, datacenter_key) (finovy_up{job=\"sharded\"})",
    )
    .await
    .unwrap();
    let single_ups = sum_by_account(
        &api,
        "count by (account, datacenter_key) (finovy_up{job=\"single\"})",
    )
    .await
    .unwrap();
    assert_eq!(ups, single_ups, "the same targets, each once");
}
