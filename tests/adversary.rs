//! Attacks of a hostile upstream, client or configuration file, each performed
//! for real and checked against the bound or the number it must meet
//! (docs/bounds.md and docs/security.md say what each bound is).

mod common;

use std::time::Duration;

use common::{get, wait_for, ExporterProcess, LoopbackSim};
use finovy_image_exporter::sim::{
    EchoPlace, FaultAction, FaultRule, Faults, SimOptions, Simulator, Spelling,
};

const DEADLINE: Duration = Duration::from_secs(60);

/// A token with the characters escaping changes: `/`, `+` and `=`.
const ECHOED_TOKEN: &str = "Zq8/vX+k3=Wp/77rT";

const SPELLINGS: [Spelling; 6] = [
    Spelling::Literal,
    Spelling::JsonSolidus,
    Spelling::JsonUnicode,
    Spelling::JsonUnicodeMixedCase,
    Spelling::PercentUpper,
    Spelling::PercentLower,
];

/// Whether `text` holds any four consecutive characters of the token in any
/// spelling, as sent or with its backslashes doubled (as a log format escapes
/// them): a check that does not rely on the redaction it tests.
fn leaks_token(text: &str) -> Option<String> {
    let chars: Vec<char> = ECHOED_TOKEN.chars().collect();
    for window in chars.windows(4) {
        let piece: String = window.iter().collect();
        for spelling in SPELLINGS {
            let spelled = spelling.spell(&piece);
            for form in [spelled.clone(), spelled.replace('\\', "\\\\")] {
                if text.contains(&form) {
                    return Some(form);
                }
            }
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_echoing_the_token_escaped_in_msg_trace_id_or_body_leaks_it_nowhere() {
    // One datacenter per spelling and place, each answered by its own echo.
    let mut rules = Vec::new();
    let mut datacenters = Vec::new();
    for (s, spelling) in SPELLINGS.into_iter().enumerate() {
        for (p, place) in [EchoPlace::Msg, EchoPlace::TraceId, EchoPlace::Body]
            .into_iter()
            .enumerate()
        {
            let dc = format!("E{s}{p}");
            rules.push(
                FaultRule::always(FaultAction::EchoToken { spelling, place }).datacenter(&dc),
            );
            datacenters.push(dc);
        }
    }
    let sim = Simulator::new(
        Vec::new(),
        SimOptions {
            token: Some(ECHOED_TOKEN.into()),
            ..Default::default()
        },
    );
    sim.set_faults(Faults {
        rules,
        ..Faults::default()
    });
    let upstream = LoopbackSim::start(sim).await;
    let dcs = datacenters.join(",");
    for format in ["logfmt", "json"] {
        let process = ExporterProcess::spawn(
            &[
                "--api.url",
                &format!("http://{}", upstream.addr),
                "--datacenters",
                &dcs,
                "--refresh.interval",
                "1s",
                "--api.max-retries",
                "0",
                "--log.format",
                format,
            ],
            &[("FINOVY_ACCESS_TOKEN", ECHOED_TOKEN)],
        );
        // Every datacenter has failed once, and its failure says where the
        // token was: each msg, traceId and body shows the redaction instead.
        let readyz = wait_for("every datacenter's echo on /readyz", DEADLINE, || async {
            let (_, body) = get(&process.url("/readyz")).await;
            let failed = body
                .lines()
                .filter(|l| l.contains("up=0") && !l.contains("last_error=none"))
                .count();
            (failed == datacenters.len()).then_some(body)
        })
        .await;
        let logs = wait_for("a failure line per datacenter", DEADLINE, || async {
            let out = process.output();
            let all = datacenters.iter().all(|dc| {
                out.iter()
                    .any(|l| l.contains("refresh failed") && l.contains(dc.as_str()))
            });
            all.then(|| out.join("\n"))
        })
        .await;
        let (_, landing) = get(&process.url("/")).await;
        for (what, text) in [("/readyz", &readyz), ("/", &landing), ("the log", &logs)] {
            if let Some(piece) = leaks_token(text) {
                panic!("{format}: {what} shows {piece:?} of the token:\n{text}");
            }
        }
        // The API errors' msg and traceId are on /readyz; the bodies of the
        // HTTP 500s are in the log: each of them went through redaction.
        for (s, _) in SPELLINGS.iter().enumerate() {
            for (p, shown) in [(0, &readyz), (1, &logs), (2, &logs)] {
                let dc = format!("E{s}{p}");
                let hidden = shown
                    .lines()
                    .any(|l| l.contains(&dc) && l.contains("**hidden**"));
                assert!(hidden, "{format}: {dc} shows its redacted echo:\n{shown}");
            }
        }
    }
}

/// A scratch directory for this test process.
fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("finovy-adversary-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    let raw = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {raw}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_clients_sending_wrong_passwords_do_not_delay_another_users_first_login() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let dir = scratch("bcrypt-flood");
    let victim = bcrypt::hash("victim-password", 12).unwrap();
    let scraper = bcrypt::hash("scraper-password", 12).unwrap();
    let web = dir.join("web.yml");
    std::fs::write(
        &web,
        format!("basic_auth_users:\n  victim: {victim}\n  prometheus: {scraper}\n"),
    )
    .unwrap();
    finovy_image_exporter::install_crypto_provider();
    let process =
        ExporterProcess::spawn(&["--demo", "--web.config.file", web.to_str().unwrap()], &[]);
    let url = process.url("/healthz");
    let sent = Arc::new(AtomicUsize::new(0));
    let answered = Arc::new(AtomicUsize::new(0));
    let mut flood = Vec::new();
    for client in 0..50 {
        let (sent, answered, url) = (sent.clone(), answered.clone(), url.clone());
        flood.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            for n in 0.. {
                let wrong = basic("victim", &format!("guess-{client}-{n}"));
                sent.fetch_add(1, Ordering::Relaxed);
                if let Ok(resp) = http.get(&url).header("authorization", wrong).send().await {
                    assert_eq!(resp.status(), 401, "a wrong password never gets in");
                    answered.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    // The flood is on once every client has an attempt out and the first
    // ones have been answered: the victim's queue is full of wrong passwords.
    wait_for("the flood to be queued", DEADLINE, || async {
        (sent.load(Ordering::Relaxed) >= 50 && answered.load(Ordering::Relaxed) >= 2).then_some(())
    })
    .await;
    let started = std::time::Instant::now();
    let resp = reqwest::Client::new()
        .get(&url)
        .header("authorization", basic("prometheus", "scraper-password"))
        .send()
        .await
        .unwrap();
    let waited = started.elapsed();
    for client in flood {
        client.abort();
        let ended = client.await;
        assert!(
            ended.is_ok() || ended.is_err_and(|e| e.is_cancelled()),
            "a client failed"
        );
    }
    assert_eq!(resp.status(), 200);
    eprintln!(
        "first valid login with {} wrong passwords sent: {waited:?}",
        sent.load(Ordering::Relaxed)
    );
    // Prometheus gives up on a scrape after 10 s by default; a login that
    // waited behind the flood took 12.5 s. (Idle, it waits well under a second.)
    assert!(
        waited < Duration::from_secs(8),
        "the valid login waited {waited:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timing_a_wrong_password_does_not_tell_an_unknown_name_from_the_costliest_user() {
    use hyper::header::HeaderValue;
    let dir = scratch("bcrypt-timing");
    let cheap = bcrypt::hash("cheap-password", 6).unwrap();
    let costly = bcrypt::hash("costly-password", 11).unwrap();
    let web = dir.join("web.yml");
    std::fs::write(
        &web,
        format!("basic_auth_users:\n  cheap: {cheap}\n  costly: {costly}\n"),
    )
    .unwrap();
    let config = finovy_image_exporter::web_config::WebConfig::load(&web).unwrap();
    let auth = config.basic_auth().unwrap();
    // The work done: an unknown name is verified at the highest cost, not at
    // the cost of whichever user comes first.
    let attempt = |user: &str| HeaderValue::from_str(&basic(user, "wrong")).unwrap();
    assert!(!auth.verify(Some(&attempt("nobody"))).await);
    assert_eq!(auth.last_bcrypt_cost(), 11);
    assert!(!auth.verify(Some(&attempt("cheap"))).await);
    assert_eq!(auth.last_bcrypt_cost(), 6);
    // The time taken, the best of five each, agrees within a generous ratio
    // (2^11 rounds against 2^11; a cost-6 check is 32 times shorter). The two
    // are timed in turn, so that a burst of load on the machine falls on both.
    let time = |attempt: HeaderValue| {
        let auth = &auth;
        async move {
            let started = std::time::Instant::now();
            assert!(!auth.verify(Some(&attempt)).await);
            started.elapsed()
        }
    };
    let (mut unknown, mut known) = (Duration::MAX, Duration::MAX);
    for _ in 0..5 {
        unknown = unknown.min(time(attempt("nobody")).await);
        known = known.min(time(attempt("costly")).await);
    }
    let ratio = unknown.as_secs_f64() / known.as_secs_f64();
    eprintln!("wrong password, best of five: unknown name {unknown:?}, costliest user {known:?}");
    assert!(
        (0.33..3.0).contains(&ratio),
        "unknown {unknown:?} against known {known:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A pager of `page_size` against the upstream at `addr`, four pages at a time.
fn pager(
    addr: std::net::SocketAddr,
    page_size: u32,
) -> finovy_image_exporter::refresh::paging::Pager {
    use finovy_image_exporter::settings::SizeUnit;
    use finovy_image_exporter::telemetry::Telemetry;
    use finovy_image_exporter::upstream::{ApiClient, Budget, ClientConfig, Filters};
    use std::sync::Arc;
    let config = ClientConfig {
        url: format!("http://{addr}/v1/open/image/personal/getList")
            .parse()
            .unwrap(),
        timeout: Duration::from_secs(10),
        page_size,
        headers: Vec::new(),
        params: Vec::new(),
        filters: Filters::default(),
        size_unit: SizeUnit::Gib,
        max_retries: 0,
        tls: Default::default(),
        proxy_url: None,
    };
    let telemetry = Telemetry::new();
    finovy_image_exporter::refresh::paging::Pager {
        client: Arc::new(
            ApiClient::new(
                "default",
                config,
                &finovy_image_exporter::upstream::Auth::Token {
                    source: finovy_image_exporter::secret::TokenSource::Fixed(token()),
                    from: "a test".into(),
                },
                telemetry.clone(),
            )
            .unwrap(),
        ),
        budget: Arc::new(Budget::new(4, 0.0, telemetry.upstream("default"))),
        window: 4,
    }
}

fn token() -> finovy_image_exporter::secret::Token {
    finovy_image_exporter::secret::Token::new("t0ken").unwrap()
}

/// An upstream claiming 10^12 images, with new ones on every page for ever.
async fn endless_upstream() -> LoopbackSim {
    let sim = Simulator::new(
        finovy_image_exporter::sim::generate(&finovy_image_exporter::sim::GenerateOptions {
            images: 30,
            datacenters: vec!["HZ".into()],
            ..Default::default()
        }),
        SimOptions::default(),
    );
    sim.set_faults(Faults {
        rules: vec![
            FaultRule::always(FaultAction::ClaimTotal {
                total: 1_000_000_000_000,
            }),
            FaultRule::always(FaultAction::Invent),
        ],
        ..Faults::default()
    });
    LoopbackSim::start(sim).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_total_of_ten_to_the_twelve_with_new_ids_on_every_page_stops_at_the_image_bound() {
    use finovy_image_exporter::labels::{Anomaly, Reason};
    use finovy_image_exporter::refresh::paging::{Bounds, MAX_IMAGES, MAX_PAGES};
    use finovy_image_exporter::upstream::FetchError;
    let upstream = endless_upstream().await;
    // The default bound, scaled down a hundredfold so that the test reads
    // 10,000 images instead of a million: the rule is the same.
    let bounds = Bounds {
        max_images: MAX_IMAGES / 100,
        max_pages: MAX_PAGES,
    };
    let err = pager(upstream.addr, 100)
        .collect_bounded(Some("HZ"), Default::default(), bounds)
        .await
        .expect_err("a list that does not end fails the pass");
    assert!(
        matches!(
            err,
            FetchError::Unbounded {
                what: "images",
                limit: 10_000,
                total: 1_000_000_000_000
            }
        ),
        "{err}"
    );
    assert_eq!(err.reason(), Reason::Limit);
    assert_eq!(err.reason().anomaly(), Some(Anomaly::PageLimit));
    // 10,000 images are 100 pages of 100; the 101st passes the bound, and at
    // most the window of four more were asked for meanwhile.
    let requests = upstream.sim.requests().len();
    assert!((101..=105).contains(&requests), "{requests} requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_ids_on_every_small_page_stop_at_the_page_bound() {
    use finovy_image_exporter::refresh::paging::{Bounds, MAX_IMAGES};
    use finovy_image_exporter::upstream::FetchError;
    let upstream = endless_upstream().await;
    let bounds = Bounds {
        max_images: MAX_IMAGES,
        max_pages: 40,
    };
    let err = pager(upstream.addr, 5)
        .collect_bounded(Some("HZ"), Default::default(), bounds)
        .await
        .expect_err("a list that does not end fails the pass");
    assert!(
        matches!(
            err,
            FetchError::Unbounded {
                what: "pages",
                limit: 40,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(upstream.sim.requests().len(), 40);
}

#[test]
fn a_pass_stopped_at_its_bound_shows_as_a_failure_and_an_anomaly() {
    use finovy_image_exporter::account::TargetKey;
    use finovy_image_exporter::labels::{Anomaly, Reason};
    use finovy_image_exporter::state::{Outcome, State};
    let state = State::new();
    let key = TargetKey::datacenter("default", "HZ");
    state.register(&key, Duration::from_secs(60), Duration::from_secs(300));
    state.publish(
        &key,
        Duration::from_secs(1),
        Outcome::Failure {
            reason: Reason::Limit,
            message: "the pass read more than 1000000 images".into(),
            trace_id: None,
        },
    );
    let snap = state.snapshot();
    let target = &snap.targets[&key];
    assert!(!target.up);
    let series = &target.datacenters["HZ"];
    assert_eq!(series.failures[Reason::Limit.index()], 1);
    assert_eq!(series.anomalies[Anomaly::PageLimit.index()], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_item_of_fifty_with_status_given_twice_fails_only_that_field() {
    use finovy_image_exporter::labels::Field;
    let item = |n: u32, status: &str| {
        format!(
            r#"{{"id":"i{n}","imageId":{n},"imageType":"Linux","imageName":"n{n}","imageSize":"2.00","datacenterKey":"HZ",{status},"createTime":1708330251000}}"#
        )
    };
    let items: Vec<String> = (0..50)
        .map(|n| match n {
            23 => item(n, r#""status":1,"status":2"#),
            _ => item(n, r#""status":1"#),
        })
        .collect();
    let body = format!(
        r#"{{"code":0,"success":true,"msg":"success","data":{{"totalCounts":50,"data":[{}]}}}}"#,
        items.join(",")
    );
    let addr = common::fixed_upstream("200 OK", body, true).await;
    let collected = pager(addr, 100)
        .collect(Some("HZ"))
        .await
        .expect("the datacenter is read, not failed with decode");
    assert_eq!(collected.items, 50, "every item counts");
    assert_eq!(collected.invalid, vec![(Field::Status, 1)]);
    let hz = &collected.datacenters["HZ"];
    assert_eq!(hz.total_images(), 50);
    let by_status: std::collections::BTreeMap<&str, u64> = hz
        .groups
        .iter()
        .map(|(k, g)| (k.status.label(), g.count))
        .collect();
    assert_eq!(
        by_status,
        [("available", 49), ("unknown", 1)].into_iter().collect()
    );
}

/// Runs `--config.check` on `text` written to a file named `name`: the exit
/// code, stderr and how long it took.
fn config_check(name: &str, text: &str) -> (Option<i32>, String, Duration) {
    let dir = scratch(name);
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, text).unwrap();
    let started = std::time::Instant::now();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_finovy-image-exporter"))
        .args(["--config.file", path.to_str().unwrap(), "--config.check"])
        .env_remove("FINOVY_ACCESS_TOKEN")
        .output()
        .unwrap();
    let took = started.elapsed();
    std::fs::remove_dir_all(&dir).unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        took,
    )
}

#[test]
fn an_accounts_file_whose_aliases_repeat_a_256_kib_string_300_times_is_refused_quickly() {
    let pad = "x".repeat(256 << 10);
    let mut text = format!("defaults:\n  api:\n    headers: {{X-Pad: &pad {pad}}}\naccounts:\n");
    for i in 0..300 {
        text.push_str(&format!(
            "  - {{name: a{i}, token_env: T{i}, api: {{headers: {{X-Pad: *pad}}}}}}\n"
        ));
    }
    assert!(text.len() < 300_000, "a file of {} bytes", text.len());
    let (code, stderr, took) = config_check("alias-bomb", &text);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("alias-bomb.yaml") && stderr.contains("more than 16777216 bytes"),
        "the error names the file and the limit: {stderr}"
    );
    assert!(took < Duration::from_secs(5), "refused in {took:?}");
}

#[test]
fn a_web_config_file_whose_aliases_expand_to_75_mb_is_refused_quickly() {
    let dir = scratch("web-alias-bomb");
    let pad = "x".repeat(256 << 10);
    let aliases = vec!["*pad"; 300].join(", ");
    let web = dir.join("web.yml");
    std::fs::write(
        &web,
        format!("http_server_config:\n  headers: {{X-Frame-Options: &pad {pad}}}\nunused: [{aliases}]\n"),
    )
    .unwrap();
    let started = std::time::Instant::now();
    let Err(err) = finovy_image_exporter::web_config::WebConfig::load(&web) else {
        panic!("an alias bomb is refused");
    };
    let took = started.elapsed();
    assert!(
        err.to_string().contains("more than 16777216 bytes"),
        "{err}"
    );
    assert!(took < Duration::from_secs(5), "refused in {took:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_accounts_file_nested_45000_levels_deep_is_refused_quickly() {
    let flow = format!("accounts: {}{}\n", "[".repeat(45_000), "]".repeat(45_000));
    // 400 KB of block nesting: each "- " opens a sequence inside the last.
    let block = format!("accounts:\n{}x\n", "- ".repeat(200_000));
    for (name, text) in [("deep-flow", flow), ("deep-block", block)] {
        let (code, stderr, took) = config_check(name, &text);
        assert_eq!(code, Some(2), "{stderr}");
        assert!(
            stderr.contains(&format!("{name}.yaml")) && stderr.contains("more than 32 levels"),
            "{name}: the error names the file and the limit: {stderr}"
        );
        assert!(took < Duration::from_secs(5), "{name}: refused in {took:?}");
    }
}

#[test]
fn two_thousand_accounts_whose_token_files_are_missing_are_checked_in_seconds() {
    let mut text = String::from("accounts:\n");
    for i in 0..2000 {
        text.push_str(&format!(
            "  - name: a{i}\n    token_file: missing-{i}.token\n"
        ));
    }
    let (code, stderr, took) = config_check("missing-tokens", &text);
    assert_eq!(code, Some(2), "{stderr}");
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("token_file"))
        .collect();
    assert_eq!(lines.len(), 2000, "one problem per account");
    // Each problem has its own account's line: account i starts on line 2 + 2i.
    for i in [0, 1, 999, 1999] {
        let at = format!("missing-tokens.yaml:{}:5: accounts[{i}] (a{i})", 2 + 2 * i);
        assert!(lines[i].contains(&at), "{} lacks {at}", lines[i]);
    }
    // One parse per failing account made 2,000 take 23 s.
    assert!(took < Duration::from_secs(5), "checked in {took:?}");
    eprintln!("2,000 accounts with missing token files checked in {took:?}");
}
