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
