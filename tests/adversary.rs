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
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
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
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let mut flood = Vec::new();
    for client in 0..50 {
        let (stop, answered, url) = (stop.clone(), answered.clone(), url.clone());
        flood.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let wrong = basic("victim", &format!("guess-{client}-{n}"));
                if let Ok(resp) = http.get(&url).header("authorization", wrong).send().await {
                    assert_eq!(resp.status(), 401, "a wrong password never gets in");
                    answered.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    // The flood is on once wrong passwords are being answered.
    wait_for("the flood to be answered", DEADLINE, || async {
        (answered.load(Ordering::Relaxed) >= 60).then_some(())
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
    stop.store(true, Ordering::Relaxed);
    for client in flood {
        client.await.unwrap();
    }
    assert_eq!(resp.status(), 200);
    eprintln!(
        "first valid login under a flood of {} wrong passwords: {waited:?}",
        answered.load(Ordering::Relaxed)
    );
    // Prometheus gives up on a scrape after 10 s by default; a login that
    // waited behind the flood took 12.5 s.
    assert!(
        waited < Duration::from_secs(5),
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
    // The time taken, the best of three each, agrees within a generous ratio
    // (2^11 rounds against 2^11; a cost-6 check is 32 times shorter).
    let best = |user: &'static str| {
        let attempt = attempt(user);
        async move {
            let mut best = Duration::MAX;
            for _ in 0..3 {
                let started = std::time::Instant::now();
                assert!(!auth.verify(Some(&attempt)).await);
                best = best.min(started.elapsed());
            }
            best
        }
    };
    let unknown = best("nobody").await;
    let known = best("costly").await;
    let ratio = unknown.as_secs_f64() / known.as_secs_f64();
    eprintln!("wrong password, best of three: unknown name {unknown:?}, costliest user {known:?}");
    assert!(
        (0.33..3.0).contains(&ratio),
        "unknown {unknown:?} against known {known:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
