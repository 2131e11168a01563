//! What an operator sees when something is wrong: failure lines that name the
//! URL, show the answer and say what to do; an upstream behind a private CA; the
//! warnings for mistakes that look healthy; the effective configuration at start;
//! both log formats parsed as promslog writes them.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{get, parse_metrics, wait_for, ExporterProcess, LoopbackSim};
use finovy_image_exporter::sim::{self, SimOptions, Simulator};
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(30);
const TOKEN: &str = "operator-Tk9-distinctive-token";

/// A scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "finovy-operator-test-{}-{name}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn metrics(process: &ExporterProcess) -> BTreeMap<String, f64> {
    parse_metrics(&get(&process.url("/metrics")).await.1)
}

fn simulator(datacenters: &[&str]) -> Simulator {
    Simulator::new(
        sim::generate(&sim::GenerateOptions {
            images: 40,
            datacenters: datacenters.iter().map(|d| d.to_string()).collect(),
            image_types: vec!["Ubuntu".into(), "CentOS".into()],
            seed: 3,
            now_ms: 1_790_000_000_000,
        }),
        SimOptions {
            token: Some(TOKEN.into()),
            ..Default::default()
        },
    )
}

/// One log line's fields, from logfmt or JSON, as promslog writes them.
fn parse_line(line: &str) -> Option<BTreeMap<String, String>> {
    if line.starts_with('{') {
        let value: Value = serde_json::from_str(line).ok()?;
        return Some(
            value
                .as_object()?
                .iter()
                .map(|(k, v)| {
                    let text = match v {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    (k.clone(), text)
                })
                .collect(),
        );
    }
    let mut fields = BTreeMap::new();
    let mut rest = line.trim();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    '"' => {
                        end = Some(i);
                        break;
                    }
                    c => value.push(c),
                }
            }
            (value, &quoted[end? + 1..])
        } else {
            let end = after.find(' ').unwrap_or(after.len());
            (after[..end].to_string(), &after[end..])
        };
        fields.insert(key.to_string(), value);
        rest = next.trim_start();
    }
    Some(fields)
}

/// The parsed lines whose `msg` is `msg`.
fn lines_with(process: &ExporterProcess, msg: &str) -> Vec<BTreeMap<String, String>> {
    process
        .output()
        .iter()
        .filter_map(|l| parse_line(l))
        .filter(|f| f.get("msg").is_some_and(|m| m == msg))
        .collect()
}

/// Every line is a promslog line: time, level, source and msg first.
fn assert_promslog_shape(process: &ExporterProcess) {
    for line in process.output() {
        let fields = parse_line(&line).unwrap_or_else(|| panic!("not a log line: {line}"));
        for key in ["time", "level", "source", "msg"] {
            assert!(fields.contains_key(key), "{key} missing: {line}");
        }
        assert!(
            ["DEBUG", "INFO", "WARN", "ERROR"].contains(&fields["level"].as_str()),
            "{line}"
        );
        assert!(
            humantime::parse_rfc3339(&fields["time"]).is_ok(),
            "time is RFC 3339: {line}"
        );
        if line.starts_with('{') {
            let value: Value = serde_json::from_str(&line).unwrap();
            if let Some(d) = value.get("duration_seconds") {
                assert!(d.is_number(), "durations are numbers: {line}");
            }
        } else {
            assert!(line.starts_with("time="), "{line}");
        }
    }
}

// ---------------------------------------------------------------------------
// An upstream over TLS, signed by a private CA: a TLS front for the simulator.

struct Tls {
    ca_pem: String,
    config: Arc<rustls::ServerConfig>,
}

fn private_ca() -> Tls {
    finovy_image_exporter::install_crypto_provider();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "private test CA");
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let ca = params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let leaf = params.signed_by(&key, &ca, &ca_key).unwrap();
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    Tls {
        ca_pem: ca.pem(),
        config: Arc::new(config),
    }
}

/// Terminates TLS on a loopback port and forwards each connection to
/// `upstream`; counts the connections accepted (one per request attempt, since
/// a refused handshake leaves nothing to reuse).
async fn tls_front(tls: &Tls, upstream: SocketAddr) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(&tls.config));
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(stream).await else {
                    return;
                };
                let Ok(mut plain) = tokio::net::TcpStream::connect(upstream).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    (addr, accepted)
}

fn tls_failures(m: &BTreeMap<String, f64>) -> f64 {
    m.iter()
        .filter(|(k, _)| {
            k.starts_with("finovy_refresh_failures_total{") && k.contains("reason=\"tls\"")
        })
        .map(|(_, v)| v)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_ca_fails_as_tls_once_per_pass_quietly_and_passes_with_the_ca_file() {
    let upstream = LoopbackSim::start(simulator(&["HZ"])).await;
    let tls = private_ca();
    let (front, accepted) = tls_front(&tls, upstream.addr).await;
    let url = format!("https://localhost:{}", front.port());
    let process = ExporterProcess::spawn(
        &[
            "--api.url",
            &url,
            "--datacenters",
            "HZ",
            "--refresh.interval",
            "1s",
            "--refresh.timeout",
            "30s",
            "--api.max-retries",
            "3",
        ],
        &[("FINOVY_ACCESS_TOKEN", TOKEN)],
    );
    wait_for("three tls failures", DEADLINE, || async {
        (tls_failures(&metrics(&process).await) >= 3.0).then_some(())
    })
    .await;
    // Read the failures before and after the connection count: a pass may be
    // under way in between, never a retry.
    let before = tls_failures(&metrics(&process).await);
    let connections = accepted.load(Ordering::SeqCst) as f64;
    let after = tls_failures(&metrics(&process).await);
    assert!(
        before <= connections && connections <= after + 1.0,
        "one attempt per pass: {connections} connections for {before}..{after} failed passes"
    );
    assert!(
        upstream.sim.requests().is_empty(),
        "no request got through the handshake"
    );
    let m = metrics(&process).await;
    assert_eq!(
        m["finovy_up{account=\"default\",datacenter_key=\"HZ\"}"],
        0.0
    );
    let failed = lines_with(&process, "refresh failed");
    assert!(!failed.is_empty());
    for line in &failed {
        assert_eq!(line["level"], "WARN");
        assert_eq!(line["reason"], "tls");
        assert!(line["url"].starts_with(&url), "{line:?}");
        assert!(line["hint"].contains("--api.tls.ca-file"), "{line:?}");
        assert!(line["error"].contains("UnknownIssuer"), "{line:?}");
        assert!(!line.contains_key("http_status"), "{line:?}");
        assert!(!line.contains_key("trace_id"), "{line:?}");
    }
    // The TLS library says nothing at the default level: the only lines about
    // the certificate are the exporter's own.
    for line in process.output() {
        let fields = parse_line(&line).unwrap();
        assert_ne!(fields["level"], "ERROR", "{line}");
        if line.contains("UnknownIssuer") || line.contains("certificate") {
            assert_eq!(fields["msg"], "refresh failed", "{line}");
        }
    }
    assert_promslog_shape(&process);
    drop(process);

    // With the CA, the same upstream is read.
    let dir = Scratch::new("private-ca");
    let ca_file = dir.write("ca.pem", &tls.ca_pem);
    let process = ExporterProcess::spawn(
        &[
            "--api.url",
            &url,
            "--datacenters",
            "HZ",
            "--refresh.interval",
            "1s",
            "--refresh.timeout",
            "30s",
            "--api.tls.ca-file",
            ca_file.to_str().unwrap(),
            "--log.format",
            "json",
        ],
        &[("FINOVY_ACCESS_TOKEN", TOKEN)],
    );
    wait_for("a successful pass over TLS", DEADLINE, || async {
        let m = metrics(&process).await;
        (m.get("finovy_up{account=\"default\",datacenter_key=\"HZ\"}") == Some(&1.0)).then_some(())
    })
    .await;
    assert_eq!(tls_failures(&metrics(&process).await), 0.0);
    assert_promslog_shape(&process);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_to_a_plain_port_says_so() {
    let upstream = LoopbackSim::start(simulator(&["HZ"])).await;
    let url = format!("https://127.0.0.1:{}", upstream.addr.port());
    let process = ExporterProcess::spawn(
        &[
            "--api.url",
            &url,
            "--datacenters",
            "HZ",
            "--refresh.interval",
            "1s",
            "--refresh.timeout",
            "30s",
            "--log.format",
            "json",
        ],
        &[("FINOVY_ACCESS_TOKEN", TOKEN)],
    );
    let line = wait_for("a failure line", DEADLINE, || async {
        lines_with(&process, "refresh failed").into_iter().next()
    })
    .await;
    assert_eq!(line["reason"], "tls", "{line:?}");
    assert!(line["hint"].contains("plain HTTP"), "{line:?}");
}

// ---------------------------------------------------------------------------
// Failure lines that can be acted on.

/// A server answering every request with a 404 HTML page that quotes the
/// request's token (as a careless error page might).
async fn not_found_server() -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let request = String::from_utf8_lossy(&request);
                let token = request
                    .lines()
                    .find_map(|l| l.strip_prefix("finovy-access-token: "))
                    .unwrap_or("");
                let body = format!(
                    "<html>\r\n<body>Cannot GET the page\u{1b}[31m (token {token})</body></html>"
                );
                let answer = format!(
                    "HTTP/1.1 404 Not Found\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(answer.as_bytes()).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_404_for_a_path_given_twice_names_the_url_shows_the_answer_and_the_fix() {
    let server = not_found_server().await;
    for format in ["logfmt", "json"] {
        let url = format!("http://{server}/v1/open/image/personal/getList");
        let process = ExporterProcess::spawn(
            &[
                "--api.url",
                &url,
                "--datacenters",
                "HZ",
                "--refresh.interval",
                "1s",
                "--log.format",
                format,
                "--api.param",
                "secretparam=hush",
            ],
            &[("FINOVY_ACCESS_TOKEN", TOKEN)],
        );
        let line = wait_for("a failure line", DEADLINE, || async {
            lines_with(&process, "refresh failed").into_iter().next()
        })
        .await;
        assert_eq!(line["http_status"], "404", "{format}: {line:?}");
        assert_eq!(
            line["url"],
            format!("{url}/v1/open/image/personal/getList"),
            "the URL asked, without a query: {line:?}"
        );
        assert!(line["hint"].contains("--api.path"), "{line:?}");
        assert!(line["hint"].contains("twice"), "{line:?}");
        let body = &line["body"];
        assert!(body.contains("Cannot GET the page"), "{line:?}");
        assert!(
            body.contains("**hidden**"),
            "the token is redacted: {line:?}"
        );
        assert!(!body.contains('\u{1b}') && !body.contains('\r'), "{line:?}");
        assert!(!line.contains_key("trace_id"), "{line:?}");
        assert!(
            process
                .output()
                .iter()
                .any(|l| l.contains("--api.url already ends in --api.path")),
            "the mistake is named at start too"
        );
        let output = process.output().join("\n");
        assert!(!output.contains(TOKEN), "{format}: token in the logs");
        assert!(
            !output.contains("hush"),
            "{format}: a parameter in the logs"
        );
        assert_promslog_shape(&process);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_and_a_refused_connection_say_what_to_check() {
    let upstream = LoopbackSim::start(simulator(&["HZ"])).await;
    let api_url = format!("http://{}", upstream.addr);
    let process = ExporterProcess::spawn(
        &[
            "--api.url",
            &api_url,
            "--datacenters",
            "HZ",
            "--refresh.interval",
            "1s",
            "--refresh.timeout",
            "30s",
        ],
        &[("FINOVY_ACCESS_TOKEN", "not-the-token")],
    );
    let line = wait_for("an auth failure line", DEADLINE, || async {
        lines_with(&process, "refresh failed").into_iter().next()
    })
    .await;
    assert_eq!(line["reason"], "auth");
    assert!(line["hint"].contains("FINOVY_ACCESS_TOKEN"), "{line:?}");
    assert!(!process.output().join("\n").contains("not-the-token"));
    drop(process);

    // Nothing listens on a port just freed.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    for format in ["logfmt", "json"] {
        let url = format!("http://127.0.0.1:{port}");
        let process = ExporterProcess::spawn(
            &[
                "--api.url",
                &url,
                "--datacenters",
                "HZ",
                "--refresh.interval",
                "1s",
                "--api.max-retries",
                "0",
                "--log.format",
                format,
            ],
            &[("FINOVY_ACCESS_TOKEN", TOKEN)],
        );
        let line = wait_for("a connect failure line", DEADLINE, || async {
            lines_with(&process, "refresh failed").into_iter().next()
        })
        .await;
        assert_eq!(line["reason"], "connect", "{line:?}");
        assert!(
            !line.contains_key("http_status") && !line.contains_key("trace_id"),
            "no status or trace id on a network error: {line:?}"
        );
        assert!(line["hint"].contains("nothing listens"), "{line:?}");
        let raw = process
            .output()
            .into_iter()
            .find(|l| l.contains("refresh failed"))
            .unwrap();
        assert!(
            !raw.contains("http_status") && !raw.contains("trace_id"),
            "{raw}"
        );
    }
}

// ---------------------------------------------------------------------------
// Mistakes that look healthy.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_datacenter_key_with_no_image_warns_once_naming_the_keys_the_account_has() {
    let upstream = LoopbackSim::start(simulator(&["HZ", "SH"])).await;
    let api_url = format!("http://{}", upstream.addr);
    let process = ExporterProcess::spawn(
        &[
            "--api.url",
            &api_url,
            "--datacenters",
            "hz,HZ",
            "--refresh.interval",
            "1s",
            "--refresh.timeout",
            "30s",
            "--log.format",
            "json",
        ],
        &[("FINOVY_ACCESS_TOKEN", TOKEN)],
    );
    let passes = |m: &BTreeMap<String, f64>| {
        m.get("finovy_refresh_last_success_timestamp_seconds{account=\"default\",datacenter_key=\"hz\"}")
            .copied()
            .unwrap_or(0.0)
    };
    let first = wait_for("a pass of hz", DEADLINE, || async {
        let t = passes(&metrics(&process).await);
        (t > 0.0).then_some(t)
    })
    .await;
    wait_for("two more passes of hz", DEADLINE, || async {
        (passes(&metrics(&process).await) >= first + 2.0).then_some(())
    })
    .await;
    let m = metrics(&process).await;
    assert_eq!(
        m["finovy_up{account=\"default\",datacenter_key=\"hz\"}"], 1.0,
        "the pass itself succeeded"
    );
    let warnings = lines_with(
        &process,
        "no image in this datacenter, but the account has images in others: check the keys in --datacenters (they are case-sensitive), or leave it out to discover them",
    );
    assert_eq!(warnings.len(), 1, "warned once: {warnings:?}");
    let warning = &warnings[0];
    assert_eq!(warning["level"], "WARN");
    assert_eq!(warning["datacenter_key"], "hz");
    assert_eq!(warning["account_datacenter_keys"], "HZ,SH");
    assert_eq!(warning["did_you_mean"], "HZ");
    let (_, landing) = get(&process.url("/")).await;
    assert!(landing.contains("id=\"warnings\""), "{landing}");
    assert!(
        landing.contains("did you mean &quot;HZ&quot;?"),
        "the landing page names the fix: {landing}"
    );
    let (_, readyz) = get(&process.url("/readyz")).await;
    let hz = readyz
        .lines()
        .find(|l| l.contains("datacenter_key=\"hz\""))
        .unwrap();
    assert!(hz.contains("warning="), "{readyz}");
    let real = readyz
        .lines()
        .find(|l| l.contains("datacenter_key=\"HZ\""))
        .unwrap();
    assert!(
        !real.contains("warning="),
        "a datacenter with images has no warning: {readyz}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_discovery_is_visible_in_the_metrics_the_landing_page_and_readyz() {
    let upstream = LoopbackSim::start(simulator(&["HZ", "SH"])).await;
    let api_url = format!("http://{}", upstream.addr);
    let process = ExporterProcess::spawn(
        &[
            "--api.url",
            &api_url,
            "--filter.image-type",
            "linux",
            "--refresh.interval",
            "1s",
            "--refresh.timeout",
            "30s",
        ],
        &[("FINOVY_ACCESS_TOKEN", TOKEN)],
    );
    wait_for("ready", DEADLINE, || async {
        (get(&process.url("/readyz")).await.0 == 200).then_some(())
    })
    .await;
    let m = metrics(&process).await;
    assert_eq!(
        m.get("finovy_up{account=\"default\",datacenter_key=\"\"}"),
        Some(&1.0)
    );
    let (_, landing) = get(&process.url("/")).await;
    assert!(
        !landing.contains("none found yet"),
        "the page agrees that a pass finished: {landing}"
    );
    assert!(landing.contains("(discovery: none found)"), "{landing}");
    assert!(landing.contains("--filter.image-type"), "{landing}");
    let (_, readyz) = get(&process.url("/readyz")).await;
    assert!(readyz.starts_with("ready"), "{readyz}");
    assert!(
        readyz.contains("warning=\"discovery succeeded but found no datacenter"),
        "{readyz}"
    );
}

// ---------------------------------------------------------------------------
// Start-up.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_logs_the_effective_configuration_once_and_never_the_token() {
    let upstream = LoopbackSim::start(simulator(&["HZ"])).await;
    let api_url = format!("http://{}", upstream.addr);
    let dir = Scratch::new("startup");
    let token_file = dir.write("token", TOKEN);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let process = ExporterProcess::spawn(
        &[
            "--api.url",
            &api_url,
            "--api.token-file",
            token_file.to_str().unwrap(),
            "--datacenters",
            "HZ,SH",
            "--api.page-size",
            "50",
            "--api.proxy-url",
            "http://user:proxypass@127.0.0.1:9",
            "--log.format",
            "json",
        ],
        &[("NO_PROXY", "127.0.0.1")],
    );
    let config = lines_with(&process, "configuration");
    assert_eq!(config.len(), 1, "{config:?}");
    let c = &config[0];
    assert_eq!(c["demo"], "false");
    assert_eq!(c["shard"], "0 of 1");
    assert_eq!(c["configuration"], "flags");
    assert!(c["proxy"].starts_with("http://127.0.0.1:9"), "{c:?}");
    // One line per account, with the account's own settings.
    let accounts = lines_with(&process, "account");
    assert_eq!(accounts.len(), 1, "{accounts:?}");
    let a = &accounts[0];
    assert_eq!(a["account"], "default");
    assert_eq!(
        a["upstream"],
        format!("{api_url}/v1/open/image/personal/getList")
    );
    assert_eq!(a["datacenters"], "HZ,SH");
    assert_eq!(a["page_size"], "50");
    assert_eq!(a["concurrency"], "4");
    assert_eq!(a["refresh_interval_seconds"], "60.0");
    assert_eq!(
        a["auth"],
        format!("static token from file {}", token_file.display())
    );
    let output = process.output().join("\n");
    assert!(!output.contains(TOKEN) && !output.contains("proxypass"));
    #[cfg(unix)]
    {
        let warning = process
            .output()
            .into_iter()
            .filter_map(|l| parse_line(&l))
            .find(|f| f["msg"].starts_with("the token file can be read by other users"))
            .expect("a permission warning");
        assert_eq!(warning["file"], token_file.display().to_string());
        assert_eq!(warning["mode"], "0644");
    }
    let (_, landing) = get(&process.url("/")).await;
    assert!(landing.contains("id=\"configuration\""), "{landing}");
    assert!(
        landing.contains("<th>Account default</th>") && landing.contains("datacenters HZ,SH"),
        "{landing}"
    );
    assert!(!landing.contains("id=\"demo\""), "{landing}");
    assert!(!landing.contains(TOKEN) && !landing.contains("proxypass"));
    assert_eq!(metrics(&process).await["finovy_demo_mode"], 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_mode_shows_a_banner_and_a_gauge() {
    let process = ExporterProcess::spawn(&["--demo", "--refresh.interval", "1s"], &[]);
    let m = wait_for("demo data", DEADLINE, || async {
        let m = metrics(&process).await;
        m.keys()
            .any(|k| k.starts_with("finovy_images{"))
            .then_some(m)
    })
    .await;
    assert_eq!(m["finovy_demo_mode"], 1.0);
    let (_, landing) = get(&process.url("/")).await;
    assert!(landing.contains("id=\"demo\""), "{landing}");
    assert!(landing.contains("Demo mode"), "{landing}");
    assert!(landing.contains(" ago"), "ages are shown: {landing}");
    let config = lines_with(&process, "configuration");
    assert_eq!(config[0]["demo"], "true");
    let accounts = lines_with(&process, "account");
    assert!(
        accounts
            .iter()
            .any(|a| a["auth"].starts_with("login as A10000001")),
        "{accounts:?}"
    );
    assert_promslog_shape(&process);
}
