//! Logging in as a real Finovy account does (SPEC v3, "Logging in"): a uuid and
//! a secret exchanged for tokens that expire, renewed by the exporter itself,
//! against the simulator's `getToken`; the provider's error codes; the first
//! numbers within seconds of start, whatever the interval; and each account's
//! own settings on the landing page and in the start-up log.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{
    expected_image_counts, get, image_counts, parse_metrics, wait_for, ExporterProcess, LoopbackSim,
};
use finovy_image_exporter::sim::{
    self, AuthStyle, FaultAction, FaultRule, Faults, SimAccount, SimImage, Simulator,
};

const DEADLINE: Duration = Duration::from_secs(30);
const DATACENTERS: [&str; 3] = ["HZ", "SH", "HK"];

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("finovy-login-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn images(seed: u64, count: usize) -> Vec<SimImage> {
    sim::generate(&sim::GenerateOptions {
        images: count,
        datacenters: DATACENTERS.iter().map(|d| d.to_string()).collect(),
        seed,
        now_ms: 1_790_000_000_000,
        ..Default::default()
    })
}

/// The accounts `acct0..acctN`, each with its own images, static token (never
/// used here) and credentials `U0..UN` / `secret-N`.
fn accounts(n: usize) -> Vec<(SimAccount, Vec<SimImage>)> {
    (0..n)
        .map(|i| {
            let ims = images(i as u64 + 1, 120 + 40 * i);
            let account = SimAccount::new(&format!("acct{i}"), &format!("static-{i}"), ims.clone())
                .with_login(&format!("U{i}"), &format!("secret-{i}-Zq9"));
            (account, ims)
        })
        .collect()
}

/// A simulator serving `accounts`, answering refusals in `style`.
fn simulator(accounts: &[(SimAccount, Vec<SimImage>)], style: AuthStyle) -> Simulator {
    Simulator::with_accounts(accounts.iter().map(|(a, _)| a.clone()).collect(), style).unwrap()
}

/// A `--config.file` where each account logs in with its uuid and a secret
/// file (`wrong` names the accounts given a wrong secret).
fn config_file(dir: &Path, addr: SocketAddr, n: usize, wrong: &[usize], extra: &str) -> PathBuf {
    let mut text = format!(
        "defaults:\n  api: {{url: http://{addr}, max_retries: 6}}\n  refresh: {{interval: 1s}}\naccounts:\n"
    );
    for i in 0..n {
        let secret = dir.join(format!("acct{i}.secret"));
        let value = if wrong.contains(&i) {
            "not-the-secret".to_string()
        } else {
            format!("secret-{i}-Zq9")
        };
        std::fs::write(&secret, format!("{value}\n")).unwrap();
        set_private(&secret);
        text.push_str(&format!(
            "  - name: acct{i}\n    uuid: U{i}\n    secret_file: {}\n    datacenters: [HZ, SH, HK]\n{extra}",
            secret.display()
        ));
    }
    let path = dir.join("accounts.yml");
    std::fs::write(&path, text).unwrap();
    path
}

fn set_private(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn ups(metrics: &BTreeMap<String, f64>) -> Vec<(String, f64)> {
    metrics
        .iter()
        .filter(|(k, _)| k.starts_with("finovy_up{"))
        .map(|(k, v)| (k.clone(), *v))
        .collect()
}

fn failures(metrics: &BTreeMap<String, f64>, reason: &str) -> f64 {
    metrics
        .iter()
        .filter(|(k, _)| {
            k.starts_with("finovy_refresh_failures_total{")
                && k.contains(&format!("reason=\"{reason}\""))
        })
        .map(|(_, v)| v)
        .sum()
}

async fn scrape(exporter: &ExporterProcess) -> BTreeMap<String, f64> {
    let (status, body) = get(&exporter.url("/metrics")).await;
    assert_eq!(status, 200);
    parse_metrics(&body)
}

/// Waits until every target of `n` accounts × 3 datacenters is up.
async fn all_up(exporter: &ExporterProcess, n: usize) -> BTreeMap<String, f64> {
    wait_for("every target up", DEADLINE, || async {
        let m = scrape(exporter).await;
        let ups = ups(&m);
        (ups.len() == n * DATACENTERS.len() && ups.iter().all(|(_, v)| *v == 1.0)).then_some(m)
    })
    .await
}

/// Every token the simulator saw, and the secrets: none may appear anywhere.
fn assert_no_secret(sim: &Simulator, n: usize, texts: &[(&str, String)]) {
    let mut secrets: Vec<String> = (0..n).map(|i| format!("secret-{i}-Zq9")).collect();
    for r in sim.requests() {
        if let Some((_, token)) = r.headers.iter().find(|(k, _)| k == "finovy-access-token") {
            secrets.push(token.clone());
        }
    }
    assert!(
        secrets.iter().any(|s| s.starts_with("sim-")),
        "no issued token was seen"
    );
    for (what, text) in texts {
        for secret in &secrets {
            assert!(
                !text.contains(secret.as_str()),
                "{what} holds a secret or token"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_second_tokens_over_twenty_seconds_never_fail_a_pass_and_cost_one_or_two_logins_per_lifetime(
) {
    let n = 3;
    let accounts = accounts(n);
    let sim = simulator(&accounts, AuthStyle::Body);
    let lifetime = Duration::from_secs(2);
    sim.set_token_lifetime(lifetime);
    let upstream = LoopbackSim::start(sim).await;
    let dir = scratch("renewal");
    let file = config_file(&dir, upstream.addr, n, &[], "");
    let exporter = ExporterProcess::spawn(&["--config.file", file.to_str().unwrap()], &[]);
    all_up(&exporter, n).await;
    let before = upstream.sim.logins();
    let started = Instant::now();
    let started_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;
    let window = Duration::from_secs(20);
    let mut last = BTreeMap::new();
    while started.elapsed() < window {
        let m = scrape(&exporter).await;
        for (key, up) in ups(&m) {
            assert_eq!(up, 1.0, "{key} went down");
        }
        assert_eq!(failures(&m, "auth"), 0.0, "a pass failed with auth");
        assert_eq!(failures(&m, "http") + failures(&m, "api"), 0.0);
        last = m;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let observed = started.elapsed().as_secs_f64();
    let after = upstream.sim.logins();
    let lifetimes = observed / lifetime.as_secs_f64();
    // Renewed before expiry, not after a refusal: a list request the simulator
    // refused in the window (its token expired) is rare, however slow the
    // machine (a token is renewed 0.4 s before it expires); renewing only when
    // refused would make one per login.
    let requests: Vec<_> = upstream
        .sim
        .requests()
        .into_iter()
        .filter(|r| r.received_us >= started_us)
        .collect();
    let refused = requests.iter().filter(|r| r.account.is_none()).count();
    let logins: u64 = after.values().sum::<u64>() - before.values().sum::<u64>();
    eprintln!(
        "{refused} of {} list requests refused; {logins} logins",
        requests.len()
    );
    assert!(
        refused * 2 < logins as usize,
        "{refused} list requests refused for {logins} logins: renewed only when refused"
    );
    for (i, (_, images)) in accounts.iter().enumerate() {
        let name = format!("acct{i}");
        let logins = (after[&name] - before[&name]) as f64;
        eprintln!("{name}: {logins} logins in {observed:.1} s of {lifetime:?} tokens");
        // One login per lifetime at the least (a renewal at 80 % of it), two at
        // the most; a unit either way for the edges of the window.
        assert!(
            logins >= lifetimes - 1.0 && logins <= 2.0 * lifetimes + 1.0,
            "{name}: {logins} logins in {observed:.1} s of {lifetime:?} tokens"
        );
        assert_eq!(
            image_counts(&last, &name),
            expected_image_counts(&name, images)
        );
        let ok = last
            .get(&format!(
                "finovy_auth_requests_total{{account=\"{name}\",code=\"0\"}}"
            ))
            .copied()
            .unwrap_or(0.0);
        assert!(
            ok >= logins,
            "{name}: finovy_auth_requests_total code 0 is {ok}"
        );
        assert!(
            last.contains_key(&format!(
                "finovy_auth_token_expiry_timestamp_seconds{{account=\"{name}\"}}"
            )),
            "no token expiry for {name}"
        );
    }
    let (_, landing) = get(&exporter.url("/")).await;
    let (_, readyz) = get(&exporter.url("/readyz")).await;
    let (_, metrics) = get(&exporter.url("/metrics")).await;
    assert_no_secret(
        &upstream.sim,
        n,
        &[
            ("the log", exporter.output().join("\n")),
            ("the landing page", landing),
            ("/readyz", readyz),
            ("/metrics", metrics),
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_revocation_costs_one_login_per_account_and_no_failed_pass() {
    let n = 3;
    let accounts = accounts(n);
    let sim = simulator(&accounts, AuthStyle::Http);
    let upstream = LoopbackSim::start(sim).await;
    let dir = scratch("revocation");
    let file = config_file(&dir, upstream.addr, n, &[], "");
    let exporter = ExporterProcess::spawn(&["--config.file", file.to_str().unwrap()], &[]);
    all_up(&exporter, n).await;
    let before = upstream.sim.logins();
    assert!(
        before.values().all(|&v| v == 1),
        "one login each: {before:?}"
    );
    let first = scrape(&exporter).await;
    upstream.sim.revoke_tokens();
    let revoked = finovy_image_exporter::unix_seconds(std::time::SystemTime::now());
    // Every target passes again after the revocation.
    let m = wait_for(
        "every target passed after the revocation",
        DEADLINE,
        || async {
            let m = scrape(&exporter).await;
            let passed = m
                .iter()
                .filter(|(k, v)| {
                    k.starts_with("finovy_refresh_last_success_timestamp_seconds{")
                        && **v > revoked + 0.5
                })
                .count();
            (passed == n * DATACENTERS.len()).then_some(m)
        },
    )
    .await;
    let after = upstream.sim.logins();
    for i in 0..n {
        let name = format!("acct{i}");
        assert_eq!(after[&name], before[&name] + 1, "{name}: one new login");
    }
    let all_failures = |m: &BTreeMap<String, f64>| -> f64 {
        m.iter()
            .filter(|(k, _)| k.starts_with("finovy_refresh_failures_total{"))
            .map(|(_, v)| v)
            .sum()
    };
    assert_eq!(all_failures(&m), all_failures(&first), "a pass failed");
    for (key, up) in ups(&m) {
        assert_eq!(up, 1.0, "{key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_secret_fails_only_its_account_with_auth_names_the_uuid_and_waits_30s_between_logins(
) {
    let n = 2;
    let accounts = accounts(n);
    let sim = simulator(&accounts, AuthStyle::Body);
    let upstream = LoopbackSim::start(sim).await;
    let dir = scratch("wrong");
    let file = config_file(&dir, upstream.addr, n, &[1], "");
    let exporter = ExporterProcess::spawn(&["--config.file", file.to_str().unwrap()], &[]);
    // The wrong account fails every pass (one a second) for a while.
    let m = wait_for("acct1 failed six times", DEADLINE, || async {
        let m = scrape(&exporter).await;
        let failed: f64 = m
            .iter()
            .filter(|(k, _)| {
                k.starts_with("finovy_refresh_failures_total{account=\"acct1\"")
                    && k.contains("reason=\"auth\"")
            })
            .map(|(_, v)| v)
            .sum();
        (failed >= 6.0 * DATACENTERS.len() as f64).then_some(m)
    })
    .await;
    for dc in DATACENTERS {
        assert_eq!(
            m.get(&format!(
                "finovy_up{{account=\"acct0\",datacenter_key=\"{dc}\"}}"
            )),
            Some(&1.0)
        );
        assert_eq!(
            m.get(&format!(
                "finovy_up{{account=\"acct1\",datacenter_key=\"{dc}\"}}"
            )),
            Some(&0.0)
        );
    }
    assert_eq!(
        image_counts(&m, "acct0"),
        expected_image_counts("acct0", &accounts[0].1)
    );
    // Six seconds and eighteen failed passes: one login of the good account,
    // one of the wrong one.
    assert_eq!(upstream.sim.login_attempts(), 2, "logins were not held off");
    assert_eq!(
        m.get("finovy_auth_requests_total{account=\"acct1\",code=\"401\"}"),
        Some(&1.0)
    );
    let log = exporter.output();
    let warnings: Vec<&String> = log.iter().filter(|l| l.contains("login failed")).collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("uuid=U1"), "{}", warnings[0]);
    assert!(warnings[0].contains("account=acct1"), "{}", warnings[0]);
    assert!(warnings[0].contains("/v1/auth/getToken"), "{}", warnings[0]);
    // A fixed secret is tried at once, not after the 30 s.
    std::fs::write(dir.join("acct1.secret"), "secret-1-Zq9\n").unwrap();
    wait_for(
        "acct1 up after its secret was fixed",
        Duration::from_secs(10),
        || async {
            let m = scrape(&exporter).await;
            DATACENTERS
                .iter()
                .all(|dc| {
                    m.get(&format!(
                        "finovy_up{{account=\"acct1\",datacenter_key=\"{dc}\"}}"
                    )) == Some(&1.0)
                })
                .then_some(())
        },
    )
    .await;
    let (_, landing) = get(&exporter.url("/")).await;
    let (_, readyz) = get(&exporter.url("/readyz")).await;
    assert_no_secret(
        &upstream.sim,
        n,
        &[
            ("the log", exporter.output().join("\n")),
            ("the landing page", landing),
            ("/readyz", readyz),
        ],
    );
    assert!(
        !exporter.output().join("\n").contains("not-the-secret"),
        "the wrong secret was printed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_login_is_tried_again_after_thirty_seconds_not_sooner() {
    // Passes every second need a token all the while; the second refused
    // login comes 30 s after the first (by the exporter's own log times),
    // neither sooner nor much later.
    let accounts = accounts(1);
    let sim = simulator(&accounts, AuthStyle::Body);
    let upstream = LoopbackSim::start(sim).await;
    let dir = scratch("hold-off");
    let file = config_file(&dir, upstream.addr, 1, &[0], "");
    let exporter = ExporterProcess::spawn(&["--config.file", file.to_str().unwrap()], &[]);
    let failed: Vec<String> = wait_for("two refused logins", Duration::from_secs(60), || async {
        let lines: Vec<String> = exporter
            .output()
            .into_iter()
            .filter(|l| l.contains("login failed"))
            .collect();
        (lines.len() >= 2).then_some(lines)
    })
    .await;
    let at = |line: &str| {
        let time = line
            .split_whitespace()
            .find_map(|field| field.strip_prefix("time="))
            .unwrap_or_else(|| panic!("no time in {line}"));
        humantime::parse_rfc3339(time).unwrap()
    };
    let gap = at(&failed[1]).duration_since(at(&failed[0])).unwrap();
    eprintln!("the second login came {gap:?} after the first");
    assert!(
        gap >= Duration::from_secs(30) && gap < Duration::from_secs(45),
        "the second login came {gap:?} after the first"
    );
    assert_eq!(
        upstream.sim.login_attempts(),
        2,
        "one login per hold-off, not one per pass or per target"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_codes_on_one_page_in_four_and_at_login_are_retried_to_exact_numbers() {
    let n = 1;
    let accounts = accounts(n);
    let sim = simulator(&accounts, AuthStyle::Body);
    // The first logins answer "still processing" and "interface error".
    sim.fail_next_logins(&[1005, 503, 500]);
    let mut rules = Vec::new();
    for code in [1005, 503] {
        rules.push(
            FaultRule::always(FaultAction::ApiError {
                code,
                msg: String::new(),
            })
            .rate(0.125),
        );
    }
    sim.set_faults(Faults {
        rules,
        ..Faults::default()
    });
    let upstream = LoopbackSim::start(sim).await;
    let dir = scratch("transient");
    let file = config_file(&dir, upstream.addr, n, &[], "    api: {page_size: 10}\n");
    let exporter = ExporterProcess::spawn(&["--config.file", file.to_str().unwrap()], &[]);
    let m = all_up(&exporter, n).await;
    assert_eq!(
        image_counts(&m, "acct0"),
        expected_image_counts("acct0", &accounts[0].1)
    );
    assert_eq!(failures(&m, "api"), 0.0);
    assert_eq!(
        upstream.sim.login_attempts(),
        4,
        "three transient answers, then a token"
    );
    for code in ["1005", "503", "500", "0"] {
        assert_eq!(
            m.get(&format!(
                "finovy_auth_requests_total{{account=\"acct0\",code=\"{code}\"}}"
            )),
            Some(&1.0),
            "code {code}"
        );
    }
    let retried = upstream
        .sim
        .requests()
        .iter()
        .filter(|r| r.faults.iter().any(|f| f.starts_with("api_error")))
        .count();
    assert!(retried > 0, "no page was answered with a transient code");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_refusing_every_list_request_gets_one_login_per_hold_off_not_per_pass() {
    // Logins succeed, but every page is refused with code 401: a fresh token
    // refused before any request succeeded with it is not worth another login.
    let accounts = accounts(1);
    let sim = simulator(&accounts, AuthStyle::Body);
    sim.set_faults(Faults {
        rules: vec![FaultRule::always(FaultAction::ApiError {
            code: 401,
            msg: "token invalid".into(),
        })],
        ..Faults::default()
    });
    let upstream = LoopbackSim::start(sim).await;
    let dir = scratch("refuse-all");
    let file = config_file(&dir, upstream.addr, 1, &[], "");
    let exporter = ExporterProcess::spawn(&["--config.file", file.to_str().unwrap()], &[]);
    // Four passes of each of the three targets, every one failed.
    let m = wait_for("twelve failed passes", DEADLINE, || async {
        let m = scrape(&exporter).await;
        (failures(&m, "auth") >= 12.0).then_some(m)
    })
    .await;
    let all: f64 = m
        .iter()
        .filter(|(k, _)| k.starts_with("finovy_refresh_failures_total{"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(failures(&m, "auth"), all, "only auth failures");
    assert_eq!(
        upstream.sim.login_attempts(),
        1,
        "one login, held off for 30 s after its token was refused"
    );
    let warned = exporter
        .output()
        .iter()
        .filter(|l| l.contains("refused a fresh token"))
        .count();
    assert_eq!(warned, 1);
}

/// Starts an exporter whose one account logs in at `addr` and returns its
/// first `login failed` log line.
async fn first_login_failure(name: &str, addr: SocketAddr) -> String {
    let dir = scratch(name);
    let file = config_file(&dir, addr, 1, &[], "");
    let exporter = ExporterProcess::spawn(&["--config.file", file.to_str().unwrap()], &[]);
    wait_for("the login failed", DEADLINE, || async {
        exporter
            .output()
            .into_iter()
            .find(|l| l.contains("login failed"))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_answer_with_a_huge_msg_is_kept_as_short_as_a_list_answer_s() {
    // A login endpoint that refuses with a 60 KB `msg`: the error is logged and
    // copied into every waiting target's last error, so it is cut as a list
    // answer's is (200 characters).
    let body = format!(
        "{{\"code\":1001,\"success\":false,\"msg\":\"{}\"}}",
        "x".repeat(60_000)
    );
    let addr = common::fixed_upstream("200 OK", body, true).await;
    let line = first_login_failure("huge-msg", addr).await;
    assert!(line.contains(&"x".repeat(200)), "{line}");
    assert!(
        !line.contains(&"x".repeat(201)),
        "{} bytes: the msg was not cut",
        line.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_answer_over_64_kib_is_refused_by_its_size_announced_or_not() {
    // The provider's answer is a few hundred bytes; 100 KB is not read whole,
    // whether the size is announced (Content-Length) or only found by reading
    // (chunked), nor kept as the text of an error page.
    let envelope = format!(
        "{{\"code\":0,\"success\":true,\"msg\":\"{}\",\"data\":{{\"token\":\"t\",\"effectiveTime\":1800000}}}}",
        "y".repeat(100_000)
    );
    for (case, status, body, sized) in [
        ("sized", "200 OK", envelope.clone(), true),
        ("chunked", "200 OK", envelope.clone(), false),
        ("error page", "404 Not Found", "z".repeat(100_000), false),
    ] {
        let addr = common::fixed_upstream(status, body, sized).await;
        let line =
            first_login_failure(&format!("huge-login-{}", case.replace(' ', "-")), addr).await;
        assert!(
            line.contains("answer larger than 65536 bytes"),
            "{case}: {line}"
        );
        assert!(
            !line.contains(&"y".repeat(201)) && !line.contains(&"z".repeat(201)),
            "{case}: {line}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_claimed_to_last_1e300_ms_is_taken_to_last_a_year_without_a_panic() {
    // Past the year 9999 no timestamp can be written; the log line and the
    // landing page write this one.
    let body = r#"{"code":0,"success":true,"data":{"token":"t-forever","effectiveTime":1e300}}"#;
    let addr = common::fixed_upstream("200 OK", body.to_string(), true).await;
    let dir = scratch("forever");
    let file = config_file(&dir, addr, 1, &[], "");
    let exporter = ExporterProcess::spawn(&["--config.file", file.to_str().unwrap()], &[]);
    let line = wait_for("the login logged", DEADLINE, || async {
        exporter
            .output()
            .into_iter()
            .find(|l| l.contains("logged in"))
    })
    .await;
    let year = |offset: u64| {
        humantime::format_rfc3339_seconds(
            std::time::SystemTime::now() + Duration::from_secs(offset * 366 * 24 * 3600),
        )
        .to_string()[..4]
            .to_string()
    };
    assert!(
        line.contains(&format!("token_valid_until={}", year(1)))
            || line.contains(&format!("token_valid_until={}", year(0))),
        "{line}"
    );
    let (status, landing) = get(&exporter.url("/")).await;
    assert_eq!(status, 200);
    assert!(landing.contains("token valid until"), "{landing}");
    let (status, _) = get(&exporter.url("/healthz")).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_too_long_or_unusable_fails_the_login_saying_why() {
    // A token goes in the header of every list request: 5,000 bytes of it
    // are refused at login, and one that is not a token says what is wrong
    // with it, not that there is none.
    for (case, token, expected) in [
        ("long", "t".repeat(5_000), "longer than 4096 bytes"),
        ("bearer", "Bearer abc".to_string(), "starts with 'Bearer '"),
        ("missing", String::new(), "has no `data.token`"),
    ] {
        let data = match token.is_empty() {
            true => r#"{"effectiveTime":1800000}"#.to_string(),
            false => format!(r#"{{"token":"{token}","effectiveTime":1800000}}"#),
        };
        let body = format!(r#"{{"code":0,"success":true,"data":{data}}}"#);
        let addr = common::fixed_upstream("200 OK", body, true).await;
        let line = first_login_failure(&format!("token-{case}"), addr).await;
        assert!(line.contains(expected), "{case}: {line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_code_the_provider_does_not_document_is_counted_as_other() {
    // An upstream inventing a code per answer would otherwise add a series each.
    let accounts = accounts(1);
    let sim = simulator(&accounts, AuthStyle::Body);
    sim.fail_next_logins(&[4242]);
    let upstream = LoopbackSim::start(sim).await;
    let dir = scratch("other-code");
    let file = config_file(&dir, upstream.addr, 1, &[], "");
    let exporter = ExporterProcess::spawn(&["--config.file", file.to_str().unwrap()], &[]);
    let m = wait_for("the refused login counted", DEADLINE, || async {
        let m = scrape(&exporter).await;
        m.contains_key("finovy_auth_requests_total{account=\"acct0\",code=\"other\"}")
            .then_some(m)
    })
    .await;
    assert_eq!(
        m["finovy_auth_requests_total{account=\"acct0\",code=\"other\"}"],
        1.0
    );
    assert!(!m.keys().any(|k| k.contains("4242")), "{m:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn code_1001_on_a_page_or_at_login_fails_with_auth() {
    let n = 2;
    let accounts = accounts(n);
    let sim = simulator(&accounts, AuthStyle::Body);
    // acct0 (a static token) is refused every page with 1001; acct1's login is.
    sim.set_faults(Faults {
        rules: vec![FaultRule::always(FaultAction::ApiError {
            code: 1001,
            msg: "无权限".into(),
        })
        .account("acct0")],
        ..Faults::default()
    });
    sim.fail_next_logins(&[1001]);
    let upstream = LoopbackSim::start(sim).await;
    let dir = scratch("1001");
    let token = dir.join("acct0.token");
    std::fs::write(&token, "static-0\n").unwrap();
    set_private(&token);
    let secret = dir.join("acct1.secret");
    std::fs::write(&secret, "secret-1-Zq9\n").unwrap();
    set_private(&secret);
    let file = dir.join("accounts.yml");
    std::fs::write(
        &file,
        format!(
            "defaults:\n  api: {{url: http://{}}}\n  refresh: {{interval: 1s}}\n  datacenters: [HZ, SH, HK]\naccounts:\n  - name: acct0\n    token_file: {}\n  - name: acct1\n    uuid: U1\n    secret_file: {}\n",
            upstream.addr,
            token.display(),
            secret.display()
        ),
    )
    .unwrap();
    let exporter = ExporterProcess::spawn(&["--config.file", file.to_str().unwrap()], &[]);
    let m = wait_for("both accounts failed with auth", DEADLINE, || async {
        let m = scrape(&exporter).await;
        let failed = |account: &str| {
            m.iter()
                .filter(|(k, _)| {
                    k.starts_with(&format!(
                        "finovy_refresh_failures_total{{account=\"{account}\""
                    )) && k.contains("reason=\"auth\"")
                })
                .map(|(_, v)| *v)
                .sum::<f64>()
        };
        (failed("acct0") > 0.0 && failed("acct1") > 0.0).then_some(m)
    })
    .await;
    assert_eq!(failures(&m, "api"), 0.0, "1001 is not an api failure");
    assert_eq!(
        m.get("finovy_auth_requests_total{account=\"acct1\",code=\"1001\"}"),
        Some(&1.0)
    );
    wait_for("the hint of 1001 in the log", DEADLINE, || async {
        let log = exporter.output().join("\n");
        log.contains("no permission for this API").then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn code_1007_and_an_undocumented_code_fail_with_api_at_once_and_1007_points_at_api_param() {
    // Neither is worth a retry (the request itself is wrong, or the code is
    // unknown), though the account allows six.
    let n = 1;
    let accounts = accounts(n);
    let sim = simulator(&accounts, AuthStyle::Body);
    sim.set_faults(Faults {
        rules: vec![
            FaultRule::always(FaultAction::ApiError {
                code: 1007,
                msg: "参数错误".into(),
            })
            .datacenter("HZ"),
            FaultRule::always(FaultAction::ApiError {
                code: 1003,
                msg: "unknown".into(),
            })
            .datacenter("SH"),
        ],
        ..Faults::default()
    });
    let upstream = LoopbackSim::start(sim).await;
    let dir = scratch("1007");
    let file = config_file(&dir, upstream.addr, n, &[], "");
    let exporter = ExporterProcess::spawn(&["--config.file", file.to_str().unwrap()], &[]);
    let failed = |m: &BTreeMap<String, f64>, dc: &str| {
        m.get(&format!(
            "finovy_refresh_failures_total{{account=\"acct0\",datacenter_key=\"{dc}\",reason=\"api\"}}"
        ))
        .copied()
        .unwrap_or(0.0)
    };
    wait_for(
        "HZ and SH failed with api three times",
        DEADLINE,
        || async {
            let m = scrape(&exporter).await;
            (failed(&m, "HZ") >= 3.0 && failed(&m, "SH") >= 3.0).then_some(())
        },
    )
    .await;
    // The tries first, then the failures: a pass in between adds one of each.
    let tries = |dc: &str| {
        upstream
            .sim
            .requests()
            .iter()
            .filter(|r| r.datacenter().as_deref() == Some(dc))
            .count() as f64
    };
    let (hz, sh) = (tries("HZ"), tries("SH"));
    let m = scrape(&exporter).await;
    assert!(
        hz <= failed(&m, "HZ") + 1.0,
        "HZ: {hz} tries for {} failures",
        failed(&m, "HZ")
    );
    assert!(
        sh <= failed(&m, "SH") + 1.0,
        "SH: {sh} tries for {} failures",
        failed(&m, "SH")
    );
    assert_eq!(failures(&m, "auth") + failures(&m, "http"), 0.0);
    assert_eq!(
        m.get("finovy_up{account=\"acct0\",datacenter_key=\"HK\"}"),
        Some(&1.0),
        "HK is answered"
    );
    let line = wait_for("the 1007 failure logged", DEADLINE, || async {
        exporter
            .output()
            .into_iter()
            .find(|l| l.contains("refresh failed") && l.contains("1007"))
    })
    .await;
    assert!(
        line.contains("--api.param"),
        "the hint of 1007 is missing: {line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_answer_echoing_the_secret_where_its_msg_is_cut_shows_no_part_of_it() {
    // The list API of a hostile upstream puts the account's secret across the
    // 200th character of `msg`, where the kept text is cut: the cut must not
    // leave its first characters ("secret-0-Z") behind.
    let accounts = accounts(1);
    let sim = simulator(&accounts, AuthStyle::Body);
    sim.set_faults(Faults {
        rules: vec![FaultRule::always(FaultAction::ApiError {
            code: 1003,
            msg: format!("{}secret-0-Zq9 was wrong", "x".repeat(190)),
        })
        .datacenter("HZ")],
        ..Faults::default()
    });
    let upstream = LoopbackSim::start(sim).await;
    let dir = scratch("echo-secret");
    let file = config_file(&dir, upstream.addr, 1, &[], "");
    let exporter = ExporterProcess::spawn(&["--config.file", file.to_str().unwrap()], &[]);
    let line = wait_for("the failure logged", DEADLINE, || async {
        exporter
            .output()
            .into_iter()
            .find(|l| l.contains("refresh failed") && l.contains("1003"))
    })
    .await;
    assert!(line.contains("xxxxxxxxxx**hidden**"), "{line}");
    let (_, readyz) = get(&exporter.url("/readyz")).await;
    let (_, landing) = get(&exporter.url("/")).await;
    for (what, text) in [
        ("the log", exporter.output().join("\n")),
        ("/readyz", readyz),
        ("the landing page", landing),
    ] {
        assert!(
            !text.contains("-0-Z"),
            "{what} shows part of the secret:\n{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_flags_log_in_with_the_secret_from_finovy_api_secret() {
    // No accounts file: --api.uuid, and the secret from the variable.
    let accounts = accounts(1);
    let sim = simulator(&accounts, AuthStyle::Body);
    let upstream = LoopbackSim::start(sim).await;
    let url = format!("http://{}", upstream.addr);
    let exporter = ExporterProcess::spawn(
        &[
            "--api.url",
            &url,
            "--api.uuid",
            "U0",
            "--datacenters",
            "HZ,SH,HK",
            "--refresh.interval",
            "1s",
        ],
        &[("FINOVY_API_SECRET", "secret-0-Zq9")],
    );
    let m = wait_for("every datacenter up", DEADLINE, || async {
        let m = scrape(&exporter).await;
        let up = ups(&m).iter().filter(|(_, v)| *v == 1.0).count();
        (up == DATACENTERS.len()).then_some(m)
    })
    .await;
    assert_eq!(
        image_counts(&m, "default"),
        expected_image_counts("default", &accounts[0].1)
    );
    assert_eq!(upstream.sim.logins().get("acct0"), Some(&1), "one login");
    let (_, landing) = get(&exporter.url("/")).await;
    assert!(
        landing.contains("login as U0 (secret from $FINOVY_API_SECRET)"),
        "{landing}"
    );
    let log = exporter.output().join("\n");
    assert!(!log.contains("secret-0-Zq9") && !landing.contains("secret-0-Zq9"));
}

#[test]
fn a_uuid_flag_without_its_secret_or_beside_a_token_stops_the_start_naming_both() {
    // Run with a deadline: an exporter that starts after all would serve for good.
    let run = |env: &[(&str, &str)]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_finovy-image-exporter"));
        cmd.args(["--api.uuid", "U0", "--web.listen-address", "127.0.0.1:0"])
            .env_remove("FINOVY_ACCESS_TOKEN")
            .env_remove("FINOVY_API_SECRET")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let deadline = Instant::now() + DEADLINE;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("the exporter started with {env:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
        (status.code(), err)
    };
    let (code, err) = run(&[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("--api.uuid U0 needs its secret") && err.contains("FINOVY_API_SECRET"),
        "{err}"
    );
    let (code, err) = run(&[
        ("FINOVY_API_SECRET", "secret-0-Zq9"),
        ("FINOVY_ACCESS_TOKEN", "static-0"),
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("--api.uuid")
            && err.contains("FINOVY_ACCESS_TOKEN")
            && err.contains("not both"),
        "{err}"
    );
    assert!(
        !err.contains("secret-0-Zq9") && !err.contains("static-0"),
        "{err}"
    );
}

#[test]
fn help_never_shows_the_secret_or_the_token_of_the_environment() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_finovy-image-exporter"))
        .arg("--help")
        .env("FINOVY_API_SECRET", "secret-0-Zq9")
        .env("FINOVY_ACCESS_TOKEN", "static-0")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("--api.uuid"), "{help}");
    assert!(
        !help.contains("secret-0-Zq9") && !help.contains("static-0"),
        "{help}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_hour_s_interval_every_target_publishes_within_twelve_seconds_of_start() {
    let n = 2;
    let accounts = accounts(n);
    let sim = simulator(&accounts, AuthStyle::Body);
    let upstream = LoopbackSim::start(sim).await;
    let dir = scratch("hour");
    let file = config_file(&dir, upstream.addr, n, &[], "    refresh: {interval: 1h}\n");
    let spawned = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let exporter = ExporterProcess::spawn(&["--config.file", file.to_str().unwrap()], &[]);
    wait_for("every target published", DEADLINE, || async {
        let (status, _) = get(&exporter.url("/readyz")).await;
        (status == 200).then_some(())
    })
    .await;
    let m = scrape(&exporter).await;
    // From just before the process was spawned to each target's success as the
    // exporter stamped it: a test thread slowed by a busy machine, polling late,
    // cannot stretch it.
    let published: Vec<(&String, f64)> = m
        .iter()
        .filter(|(k, _)| k.starts_with("finovy_refresh_last_success_timestamp_seconds{"))
        .map(|(k, v)| (k, v - spawned))
        .collect();
    assert_eq!(
        published.len(),
        3 * n,
        "three datacenters each: {published:?}"
    );
    let last = published
        .iter()
        .map(|(_, after)| *after)
        .fold(0.0, f64::max);
    eprintln!(
        "the last of {} targets published {last:.2} s after the spawn",
        published.len()
    );
    for (target, after) in &published {
        assert!(
            (0.0..12.0).contains(after),
            "{target} published {after:.1} s after the start"
        );
    }
    for (i, (_, ims)) in accounts.iter().enumerate() {
        let name = format!("acct{i}");
        assert_eq!(image_counts(&m, &name), expected_image_counts(&name, ims));
        assert_eq!(
            m.get(&format!(
                "finovy_refresh_interval_seconds{{account=\"{name}\",datacenter_key=\"HZ\"}}"
            )),
            Some(&3600.0)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_asking_to_wait_longer_than_the_interval_is_obeyed_not_failed_as_a_timeout() {
    let n = 1;
    let accounts = accounts(n);
    let sim = simulator(&accounts, AuthStyle::Body);
    sim.set_faults(Faults {
        rules: vec![FaultRule::always(FaultAction::Status {
            status: 429,
            retry_after_secs: Some(2),
        })
        .datacenter("HZ")
        .times(2)],
        ..Faults::default()
    });
    let upstream = LoopbackSim::start(sim).await;
    let dir = scratch("429");
    let file = config_file(&dir, upstream.addr, n, &[], "");
    let exporter = ExporterProcess::spawn(&["--config.file", file.to_str().unwrap()], &[]);
    let m = all_up(&exporter, n).await;
    assert_eq!(
        failures(&m, "timeout"),
        0.0,
        "the pass was cut at its 1 s interval"
    );
    assert_eq!(failures(&m, "http"), 0.0);
    assert_eq!(
        image_counts(&m, "acct0"),
        expected_image_counts("acct0", &accounts[0].1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_config_file_the_landing_page_and_log_show_each_account_s_own_settings() {
    let accounts = accounts(1);
    let sim = Simulator::with_accounts(vec![accounts[0].0.clone()], AuthStyle::Body).unwrap();
    let upstream = LoopbackSim::start(sim).await;
    let dir = scratch("overview");
    let secret = dir.join("login.secret");
    std::fs::write(&secret, "secret-0-Zq9\n").unwrap();
    set_private(&secret);
    let token = dir.join("static.token");
    std::fs::write(&token, "static-0\n").unwrap();
    set_private(&token);
    let file = dir.join("accounts.yml");
    std::fs::write(
        &file,
        format!(
            "accounts:\n  - name: logs-in\n    uuid: U0\n    secret_file: {}\n    api: {{url: http://{addr}}}\n    datacenters: [HZ, SH]\n    refresh: {{interval: 45s}}\n  - name: static\n    token_file: {}\n    api: {{url: http://localhost:{port}/prefix}}\n    refresh: {{interval: 2m}}\n",
            secret.display(),
            token.display(),
            addr = upstream.addr,
            port = upstream.addr.port(),
        ),
    )
    .unwrap();
    let exporter = ExporterProcess::spawn(&["--config.file", file.to_str().unwrap()], &[]);
    let (_, landing) = get(&exporter.url("/")).await;
    let log = exporter.output().join("\n");
    for (what, text) in [("landing page", &landing), ("start-up log", &log)] {
        assert!(
            text.contains(&format!(
                "http://{}/v1/open/image/personal/getList",
                upstream.addr
            )),
            "{what} lacks the first account's URL"
        );
        assert!(
            text.contains(&format!(
                "http://localhost:{}/prefix/v1/open/image/personal/getList",
                upstream.addr.port()
            )),
            "{what} lacks the second account's URL"
        );
        assert!(text.contains("login as U0"), "{what}");
        assert!(
            text.contains(&format!("static token from file {}", token.display())),
            "{what}"
        );
        assert!(text.contains("HZ,SH"), "{what}");
        // Nothing from the flags' defaults, which no account uses.
        assert!(
            !text.contains("client.xuandashi.com"),
            "{what} shows the default URL"
        );
        assert!(
            !text.contains("FINOVY_ACCESS_TOKEN"),
            "{what} shows the default token source"
        );
        assert!(
            !text.contains("every 1m"),
            "{what} shows the default interval"
        );
    }
    assert!(
        log.contains("refresh_interval_seconds=45") && log.contains("refresh_interval_seconds=120"),
        "the start-up log shows each account's interval"
    );
    assert!(
        landing.contains("every 45s") && landing.contains("every 2m"),
        "intervals"
    );
    assert!(!landing.contains("secret-0-Zq9") && !log.contains("secret-0-Zq9"));
    assert!(!landing.contains("static-0") && !log.contains("static-0"));

    // Once it has logged in, the account's row and a log line say until when
    // its token is valid: the expiry the metric has, to the second.
    let expiry = wait_for("the first login", DEADLINE, || async {
        scrape(&exporter)
            .await
            .get("finovy_auth_token_expiry_timestamp_seconds{account=\"logs-in\"}")
            .copied()
    })
    .await;
    let until = humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + Duration::from_secs_f64(expiry.floor()),
    )
    .to_string();
    let (_, landing) = get(&exporter.url("/")).await;
    let row = landing
        .lines()
        .find(|l| l.contains("<th>Account logs-in</th>"))
        .unwrap_or_else(|| panic!("no row for the account: {landing}"));
    assert!(
        row.contains(&format!(
            "login as U0 (secret from file {}), token valid until {until}",
            secret.display()
        )),
        "{row}"
    );
    let row = landing
        .lines()
        .find(|l| l.contains("<th>Account static</th>"))
        .unwrap();
    assert!(!row.contains("token valid until"), "{row}");
    wait_for("the login logged", DEADLINE, || async {
        exporter
            .output()
            .iter()
            .any(|l| l.contains("logged in") && l.contains(&format!("token_valid_until={until}")))
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_logs_in_with_credentials_and_renews_its_short_lived_token() {
    let exporter = ExporterProcess::spawn(&["--demo"], &[]);
    let logins = |m: &BTreeMap<String, f64>| {
        m.get("finovy_auth_requests_total{account=\"prod\",code=\"0\"}")
            .copied()
            .unwrap_or(0.0)
    };
    let first = wait_for("the demo's first login", DEADLINE, || async {
        let m = scrape(&exporter).await;
        let expiry = m
            .get("finovy_auth_token_expiry_timestamp_seconds{account=\"prod\"}")
            .copied()?;
        (logins(&m) >= 1.0).then_some(expiry)
    })
    .await;
    // A renewal within the token's short lifetime, and a later expiry with it.
    wait_for(
        "the demo's token renewed",
        Duration::from_secs(60),
        || async {
            let m = scrape(&exporter).await;
            let expiry = m
                .get("finovy_auth_token_expiry_timestamp_seconds{account=\"prod\"}")
                .copied()?;
            (logins(&m) >= 2.0 && expiry > first).then_some(())
        },
    )
    .await;
    let (_, landing) = get(&exporter.url("/")).await;
    assert!(
        landing.contains("login as A10000001") && landing.contains("token valid until"),
        "the landing page names the login and its token's expiry"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_claiming_one_millisecond_tokens_does_not_get_a_login_per_request() {
    let n = 1;
    let accounts = accounts(n);
    let sim = simulator(&accounts, AuthStyle::Body);
    // The tokens last the default 30 minutes; the answers say 1 ms.
    sim.set_claimed_token_lifetime(Some(Duration::from_millis(1)));
    let upstream = LoopbackSim::start(sim).await;
    let dir = scratch("claimed");
    let file = config_file(&dir, upstream.addr, n, &[], "    api: {page_size: 10}\n");
    let exporter = ExporterProcess::spawn(&["--config.file", file.to_str().unwrap()], &[]);
    all_up(&exporter, n).await;
    // More passes, one a second, about 15 pages each.
    let pages_before = upstream.sim.requests().len();
    let logins_before = upstream.sim.login_attempts();
    let started = Instant::now();
    let pages = wait_for("forty more list requests", DEADLINE, || async {
        let pages = upstream.sim.requests().len() - pages_before;
        (pages >= 40).then_some(pages)
    })
    .await;
    let m = scrape(&exporter).await;
    let logins = upstream.sim.login_attempts() - logins_before;
    eprintln!("{logins} logins for {pages} list requests after the first pass");
    // At most one renewal a second (the floor), not one per request. (Counted
    // from the same moment as the time: the logins before it renewed as often.)
    let bound = started.elapsed().as_secs_f64().ceil() as u64 + 1;
    assert!(
        logins <= bound,
        "{logins} logins in {:?} for {pages} requests: the claimed lifetime was believed",
        started.elapsed()
    );
    assert_eq!(
        image_counts(&m, "acct0"),
        expected_image_counts("acct0", &accounts[0].1)
    );
}
