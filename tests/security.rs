//! Who gets in and what leaks out: TLS and basic auth from `--web.config.file`
//! with real handshakes against certificates generated here, reloading and
//! certificate rotation, slowloris, the upstream redirect guard, and the token
//! staying out of every output of the real binary.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{parse_metrics, require_tool, wait_for, ExporterProcess, LoopbackSim};
use finovy_image_exporter::config::ListenAddress;
use finovy_image_exporter::refresh::Liveness;
use finovy_image_exporter::routes::Routes;
use finovy_image_exporter::server::Server;
use finovy_image_exporter::sim::{self, AuthStyle, Faults, SimOptions, Simulator};
use finovy_image_exporter::state::State;
use finovy_image_exporter::telemetry::Telemetry;
use finovy_image_exporter::web_config::{WebConfigHandle, WebConfigWatcher};
use http_body_util::Full;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::SupportedProtocolVersion;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::watch;

const DEADLINE: Duration = Duration::from_secs(20);
const TLS12: &[&SupportedProtocolVersion] = &[&rustls::version::TLS12];
const TLS13: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];
const ANY_TLS: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];
/// The token of every scenario here: distinctive, so a leak cannot hide.
const TOKEN: &str = "tOkEn-Sec-9f3Kq2-do-not-print-Xw7";

// ---------------------------------------------------------------------------
// Scratch files.

/// A fresh directory for one test, removed at the end.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("finovy-security-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Writes `name` atomically (write, then rename), as a deployment would.
    fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.path(name);
        let tmp = self.path(&format!(".{name}.tmp"));
        std::fs::write(&tmp, contents).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------------------
// Certificates.

struct Ca {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: Vec<u8>,
}

impl Ca {
    fn new(name: &str) -> Self {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    fn pem(&self) -> String {
        self.cert.pem()
    }

    fn server(&self, name: &str) -> Leaf {
        self.issue(name, rcgen::ExtendedKeyUsagePurpose::ServerAuth)
    }

    fn client(&self, name: &str) -> Leaf {
        self.issue(name, rcgen::ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn issue(&self, name: &str, usage: rcgen::ExtendedKeyUsagePurpose) -> Leaf {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }
}

/// An HTTPS client trusting `ca_pem`, limited to `versions`, presenting
/// `identity` when given. Each call makes new connections, hence new handshakes.
fn https_client(
    ca_pem: &str,
    versions: &[&'static SupportedProtocolVersion],
    identity: Option<&Leaf>,
) -> reqwest::Client {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(versions)
    .unwrap()
    .with_root_certificates(roots);
    let config = match identity {
        Some(leaf) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(leaf.cert_pem.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .unwrap(),
                PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    reqwest::Client::builder()
        .tls_backend_preconfigured(config)
        .tls_info(true)
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// The certificate the server presented for this response.
fn peer_certificate(resp: &reqwest::Response) -> Vec<u8> {
    resp.extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|info| info.peer_certificate())
        .expect("a TLS response carries the peer certificate")
        .to_vec()
}

fn tls_yaml(extra: &str) -> String {
    format!("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n{extra}")
}

/// Writes the server certificate and key where [`tls_yaml`] points.
fn install_server_cert(dir: &Scratch, leaf: &Leaf) {
    dir.write("server.key", &leaf.key_pem);
    dir.write("server.crt", &leaf.cert_pem);
}

// ---------------------------------------------------------------------------
// An in-process server with a web config.

/// A listener serving empty routes with a web config; stopped on drop.
struct Served {
    addr: SocketAddr,
    web: Option<WebConfigHandle>,
    /// `finovy_web_config_last_reload_successful` of this server.
    last_reload_successful: prometheus::IntGauge,
    _stop: watch::Sender<()>,
}

impl Served {
    fn url(&self, scheme: &str, path: &str) -> String {
        format!("{scheme}://{}{path}", self.addr)
    }

    fn web(&self) -> &WebConfigHandle {
        self.web.as_ref().expect("served with a web config")
    }

    /// Waits until the last reload's outcome is `ok`.
    async fn wait_reload(&self, what: &str, ok: bool) {
        wait_for(what, DEADLINE, || async {
            (self.last_reload_successful.get() == i64::from(ok)).then_some(())
        })
        .await;
    }
}

async fn serve(config: Option<&Path>, header_read_timeout: Duration) -> Served {
    finovy_image_exporter::install_crypto_provider();
    let address = ListenAddress {
        text: "127.0.0.1:0".into(),
        candidates: vec![SocketAddr::from(([127, 0, 0, 1], 0))],
    };
    let mut server = Server::bind(&address)
        .await
        .unwrap()
        .with_header_read_timeout(header_read_timeout);
    let (stop, _) = watch::channel(());
    let stopped = |stop: &watch::Sender<()>| {
        let mut rx = stop.subscribe();
        async move {
            let _ = rx.changed().await;
        }
    };
    let mut web = None;
    let telemetry = Telemetry::new();
    let last_reload_successful = telemetry.web_config_last_reload_successful.clone();
    if let Some(path) = config {
        let watcher = WebConfigWatcher::load(path)
            .unwrap()
            .with_poll_interval(Duration::from_millis(50))
            .with_reload_gauge(last_reload_successful.clone());
        web = Some(watcher.handle());
        server = server.with_web_config(watcher.handle());
        tokio::spawn(watcher.run(stopped(&stop)));
    }
    let addr = server.local_addr();
    let routes = Arc::new(Routes::new(
        Arc::new(State::new()),
        telemetry,
        Liveness::new(),
        "/metrics".into(),
        40,
    ));
    tokio::spawn(server.serve(routes, stopped(&stop)));
    Served {
        addr,
        web,
        last_reload_successful,
        _stop: stop,
    }
}

fn plain_client() -> reqwest::Client {
    finovy_image_exporter::install_crypto_provider();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

// ---------------------------------------------------------------------------
// TLS.

#[tokio::test]
async fn https_works_with_a_generated_certificate_and_plain_http_fails() {
    let dir = Scratch::new("https");
    let ca = Ca::new("test CA");
    let leaf = ca.server("exporter");
    install_server_cert(&dir, &leaf);
    let config = dir.write("web.yml", tls_yaml(""));
    let served = serve(Some(&config), Duration::from_secs(10)).await;

    let client = https_client(&ca.pem(), ANY_TLS, None);
    for path in ["/metrics", "/healthz", "/"] {
        let resp = client.get(served.url("https", path)).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        assert_eq!(peer_certificate(&resp), leaf.der);
    }
    // TLS 1.2 is on by default (exporter-toolkit's min_version is TLS12).
    let resp = https_client(&ca.pem(), TLS12, None)
        .get(served.url("https", "/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    let plain = plain_client()
        .get(served.url("http", "/metrics"))
        .send()
        .await;
    assert!(plain.is_err(), "plain HTTP to the TLS port: {plain:?}");
    // A client that does not trust the CA is refused by its own verifier.
    let other = https_client(&Ca::new("other CA").pem(), ANY_TLS, None)
        .get(served.url("https", "/metrics"))
        .send()
        .await;
    assert!(other.is_err());
}

#[tokio::test]
async fn tls12_is_refused_when_min_version_is_tls13() {
    let dir = Scratch::new("tls13");
    let ca = Ca::new("test CA");
    install_server_cert(&dir, &ca.server("exporter"));
    let config = dir.write("web.yml", tls_yaml("  min_version: TLS13\n"));
    let served = serve(Some(&config), Duration::from_secs(10)).await;

    let old = https_client(&ca.pem(), TLS12, None)
        .get(served.url("https", "/metrics"))
        .send()
        .await;
    assert!(old.is_err(), "a TLS 1.2-only client got in: {old:?}");
    let new = https_client(&ca.pem(), TLS13, None)
        .get(served.url("https", "/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(new.status(), 200);
}

#[tokio::test]
async fn client_certificates_are_required_and_verified() {
    let dir = Scratch::new("mtls");
    let ca = Ca::new("server CA");
    let client_ca = Ca::new("client CA");
    install_server_cert(&dir, &ca.server("exporter"));
    dir.write("clients.crt", client_ca.pem());
    let config = dir.write(
        "web.yml",
        tls_yaml("  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: clients.crt\n"),
    );
    let served = serve(Some(&config), Duration::from_secs(10)).await;
    let get = |identity: Option<&Leaf>| {
        https_client(&ca.pem(), ANY_TLS, identity)
            .get(served.url("https", "/metrics"))
            .send()
    };

    let anonymous = get(None).await;
    assert!(anonymous.is_err(), "no client certificate: {anonymous:?}");
    let stranger = Ca::new("someone else").client("prometheus");
    let stranger = get(Some(&stranger)).await;
    assert!(stranger.is_err(), "certificate of another CA: {stranger:?}");
    let prometheus = client_ca.client("prometheus");
    assert_eq!(get(Some(&prometheus)).await.unwrap().status(), 200);
}

#[tokio::test]
async fn client_certificate_optional_when_verify_if_given() {
    let dir = Scratch::new("mtls-optional");
    let ca = Ca::new("server CA");
    let client_ca = Ca::new("client CA");
    install_server_cert(&dir, &ca.server("exporter"));
    dir.write("clients.crt", client_ca.pem());
    let config = dir.write(
        "web.yml",
        tls_yaml("  client_auth_type: VerifyClientCertIfGiven\n  client_ca_file: clients.crt\n"),
    );
    let served = serve(Some(&config), Duration::from_secs(10)).await;
    let get = |identity: Option<&Leaf>| {
        https_client(&ca.pem(), ANY_TLS, identity)
            .get(served.url("https", "/metrics"))
            .send()
    };
    assert_eq!(get(None).await.unwrap().status(), 200);
    assert_eq!(
        get(Some(&client_ca.client("prometheus")))
            .await
            .unwrap()
            .status(),
        200
    );
    let stranger = Ca::new("someone else").client("prometheus");
    assert!(get(Some(&stranger)).await.is_err());
}

#[tokio::test]
async fn rotated_certificates_are_used_by_new_handshakes() {
    let dir = Scratch::new("rotation");
    let ca = Ca::new("test CA");
    let first = ca.server("first");
    install_server_cert(&dir, &first);
    let config = dir.write("web.yml", tls_yaml(""));
    let served = serve(Some(&config), Duration::from_secs(10)).await;
    let presented = || async {
        let resp = https_client(&ca.pem(), ANY_TLS, None)
            .get(served.url("https", "/metrics"))
            .send()
            .await
            .ok()?;
        Some(peer_certificate(&resp))
    };
    assert_eq!(presented().await.unwrap(), first.der);

    let second = ca.server("second");
    install_server_cert(&dir, &second);
    wait_for(
        "the new certificate on a new handshake",
        DEADLINE,
        || async { (presented().await? == second.der).then_some(()) },
    )
    .await;
    assert_eq!(served.last_reload_successful.get(), 1);

    // A broken rotation (key missing) is refused; the last good pair stays.
    std::fs::remove_file(dir.path("server.key")).unwrap();
    served
        .wait_reload("the broken rotation to be noticed", false)
        .await;
    assert_eq!(presented().await.unwrap(), second.der);
    install_server_cert(&dir, &second);
    served.wait_reload("the repaired rotation", true).await;

    // Turning TLS off needs a restart: a reload cannot downgrade to plain text.
    dir.write("web.yml", "basic_auth_users: {}\n");
    served
        .wait_reload("the TLS downgrade to be refused", false)
        .await;
    assert_eq!(presented().await.unwrap(), second.der);
}

// ---------------------------------------------------------------------------
// Basic auth.

fn basic_yaml(user: &str, hash: &str) -> String {
    format!(
        "basic_auth_users:\n  {user}: {hash}\nhttp_server_config:\n  headers:\n    X-Frame-Options: deny\n    X-Content-Type-Options: nosniff\n"
    )
}

#[tokio::test]
async fn basic_auth_guards_every_path() {
    let dir = Scratch::new("basic");
    let hash = bcrypt::hash("right-password", 10).unwrap();
    let config = dir.write("web.yml", basic_yaml("prometheus", &hash));
    let served = serve(Some(&config), Duration::from_secs(10)).await;
    let client = plain_client();

    for path in ["/metrics", "/healthz", "/readyz", "/", "/nowhere"] {
        let resp = client.get(served.url("http", path)).send().await.unwrap();
        assert_eq!(resp.status(), 401, "{path} without credentials");
        assert_eq!(
            resp.headers()["www-authenticate"],
            "Basic realm=\"finovy-image-exporter\""
        );
        assert_eq!(resp.headers()["x-frame-options"], "deny");
    }
    for (user, password) in [
        ("prometheus", "wrong-password"),
        ("prometheus", ""),
        ("mallory", "right-password"),
        ("", "right-password"),
    ] {
        let resp = client
            .get(served.url("http", "/metrics"))
            .basic_auth(user, Some(password))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401, "{user}:{password}");
        assert!(resp.headers().contains_key("www-authenticate"));
    }
    let resp = client
        .get(served.url("http", "/metrics"))
        .header("Authorization", "Bearer right-password")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);

    // Right credentials: 200, and bcrypt runs once; later scrapes hit the cache.
    let auth = served.web().current();
    let auth = auth.basic_auth().unwrap();
    let runs = auth.bcrypt_runs();
    let scrape = || {
        client
            .get(served.url("http", "/metrics"))
            .basic_auth("prometheus", Some("right-password"))
            .send()
    };
    let started = Instant::now();
    let resp = scrape().await.unwrap();
    let first = started.elapsed();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-content-type-options"], "nosniff");
    let started = Instant::now();
    for _ in 0..20 {
        assert_eq!(scrape().await.unwrap().status(), 200);
    }
    let cached = started.elapsed() / 20;
    assert_eq!(
        auth.bcrypt_runs() - runs,
        1,
        "one bcrypt verification for 21 scrapes"
    );
    eprintln!(
        "basic auth at bcrypt cost 10: first scrape {first:?}, cached scrapes {cached:?} each"
    );

    // Methods other than GET and HEAD: 405 once authenticated, 401 before.
    let post = client
        .post(served.url("http", "/metrics"))
        .basic_auth("prometheus", Some("right-password"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 405);
    let post = client
        .post(served.url("http", "/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 401);
    let head = client
        .head(served.url("http", "/metrics"))
        .basic_auth("prometheus", Some("right-password"))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200);
}

#[tokio::test]
async fn a_hash_made_by_htpasswd_works() {
    let Some(htpasswd) = require_tool("htpasswd") else {
        return;
    };
    let out = Command::new(htpasswd)
        .args(["-nbBC", "10", "scraper", "s3cret pass"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let line = String::from_utf8(out.stdout).unwrap();
    let (user, hash) = line.trim().split_once(':').unwrap();
    assert_eq!(user, "scraper");
    assert!(hash.starts_with("$2y$10$"), "{hash}");

    let dir = Scratch::new("htpasswd");
    let config = dir.write("web.yml", basic_yaml(user, hash));
    let served = serve(Some(&config), Duration::from_secs(10)).await;
    let client = plain_client();
    let get = |password: &'static str| {
        client
            .get(served.url("http", "/metrics"))
            .basic_auth("scraper", Some(password))
            .send()
    };
    assert_eq!(get("s3cret pass").await.unwrap().status(), 200);
    assert_eq!(get("s3cret").await.unwrap().status(), 401);
}

#[tokio::test]
async fn an_invalid_file_later_keeps_the_last_good_configuration() {
    let dir = Scratch::new("reload");
    let old = bcrypt::hash("old-password", 4).unwrap();
    let config = dir.write("web.yml", basic_yaml("prometheus", &old));
    let served = serve(Some(&config), Duration::from_secs(10)).await;
    let client = plain_client();
    let status = |password: Option<&'static str>| {
        let mut req = client.get(served.url("http", "/metrics"));
        if let Some(password) = password {
            req = req.basic_auth("prometheus", Some(password));
        }
        async move { req.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(status(Some("old-password")).await, 200);

    for broken in [
        "basic_auth_users: [\n".to_string(),
        "basic_auth_users:\n  prometheus: not-a-bcrypt-hash\n".to_string(),
        format!("basic_auth_users:\n  prometheus: {old}\nhttp_server_config:\n  headers:\n    Set-Cookie: a=b\n"),
        format!("basic_auth_users:\n  prometheus: {old}\nsurprise: 1\n"),
    ] {
        dir.write("web.yml", &broken);
        served
            .wait_reload("the invalid file to be noticed", false)
            .await;
        assert_eq!(status(Some("old-password")).await, 200, "{broken}");
        assert_eq!(status(None).await, 401, "{broken}");
        // Back to the good file (with a harmless difference), so that the next
        // broken one is noticed as a new failure.
        dir.write(
            "web.yml",
            format!("{}# {broken:?}\n", basic_yaml("prometheus", &old)),
        );
        served.wait_reload("the good file again", true).await;
    }

    // A valid change is picked up without a restart.
    let new = bcrypt::hash("new-password", 4).unwrap();
    dir.write("web.yml", basic_yaml("prometheus", &new));
    wait_for("the new password", DEADLINE, || async {
        (status(Some("new-password")).await == 200).then_some(())
    })
    .await;
    assert_eq!(status(Some("old-password")).await, 401);
    assert_eq!(served.last_reload_successful.get(), 1);
}

// ---------------------------------------------------------------------------
// Listener hardening.

/// Reads until the server closes the connection; returns what it sent.
async fn read_until_closed(stream: &mut tokio::net::TcpStream) -> Vec<u8> {
    let mut buf = Vec::new();
    match tokio::time::timeout(DEADLINE, stream.read_to_end(&mut buf)).await {
        Ok(_) => buf, // EOF or reset: closed either way
        Err(_) => panic!("the slow client was never cut off"),
    }
}

#[tokio::test]
async fn a_slowloris_client_is_cut_off_while_scrapes_go_on() {
    let timeout = Duration::from_millis(600);
    let served = serve(None, timeout).await;
    let client = plain_client();

    let mut slow = tokio::net::TcpStream::connect(served.addr).await.unwrap();
    let started = Instant::now();
    slow.write_all(b"GET /metrics HTTP/1.1\r\nHost: exporter\r\nAccept: */*\r\n")
        .await
        .unwrap();
    // Scrapes are served while the slow head is pending.
    for _ in 0..5 {
        let resp = client
            .get(served.url("http", "/metrics"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    let answer = read_until_closed(&mut slow).await;
    let elapsed = started.elapsed();
    assert!(
        elapsed >= timeout.mul_f32(0.8),
        "cut off after {elapsed:?}, before the {timeout:?} timeout"
    );
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "a half-sent request got an answer: {answer}"
    );
    eprintln!("slowloris cut off after {elapsed:?} (timeout {timeout:?})");

    // A fresh client: the pooled connection sat idle for the whole timeout while
    // the slow client was waited for, and the server rightly closes an idle
    // connection after it, so reusing it races with that close.
    let post = plain_client()
        .post(served.url("http", "/metrics"))
        .body("ignored")
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 405);
    assert_eq!(post.headers()["allow"], "GET, HEAD");
}

#[tokio::test]
async fn a_stalled_tls_handshake_is_cut_off_while_scrapes_go_on() {
    let dir = Scratch::new("tls-slowloris");
    let ca = Ca::new("test CA");
    install_server_cert(&dir, &ca.server("exporter"));
    let config = dir.write("web.yml", tls_yaml(""));
    let timeout = Duration::from_millis(600);
    let served = serve(Some(&config), timeout).await;

    let mut silent = tokio::net::TcpStream::connect(served.addr).await.unwrap();
    let started = Instant::now();
    let client = https_client(&ca.pem(), ANY_TLS, None);
    for _ in 0..3 {
        let resp = client
            .get(served.url("https", "/metrics"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    read_until_closed(&mut silent).await;
    let elapsed = started.elapsed();
    assert!(elapsed >= timeout.mul_f32(0.8), "cut off after {elapsed:?}");
}

// ---------------------------------------------------------------------------
// The token and the upstream.

/// Request headers, names lower-case.
type Headers = Vec<(String, String)>;

/// An upstream that answers every request with a redirect to `target` (another
/// origin), recording the headers it received.
struct Redirector {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Headers>>>,
}

async fn start_redirector(target: SocketAddr) -> Redirector {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&received);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let record = Arc::clone(&record);
            let service =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    record.lock().unwrap().push(
                        req.headers()
                            .iter()
                            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
                            .collect(),
                    );
                    let location = format!(
                        "http://{target}{}",
                        req.uri().path_and_query().map_or("/", |pq| pq.as_str())
                    );
                    async move {
                        Ok::<_, Infallible>(
                            hyper::Response::builder()
                                .status(302)
                                .header("location", location)
                                .body(Full::new(Bytes::new()))
                                .unwrap(),
                        )
                    }
                });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
            );
        }
    });
    Redirector { addr, received }
}

/// A simulator on loopback; stopped on drop.
async fn start_sim(accept_token: bool, faults: Faults) -> LoopbackSim {
    let sim = Simulator::new(
        sim::generate(&sim::GenerateOptions::default()),
        SimOptions {
            token: Some(if accept_token { TOKEN } else { "another-token" }.to_string()),
            auth_style: AuthStyle::Http,
        },
    );
    sim.set_faults(faults);
    LoopbackSim::start(sim).await
}

fn sent_the_token(headers: &[(String, String)]) -> bool {
    headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("finovy-access-token") && v == TOKEN)
}

fn failures(metrics: &str, reason: &str) -> f64 {
    parse_metrics(metrics)
        .iter()
        .filter(|(k, _)| {
            k.starts_with("finovy_refresh_failures_total{")
                && k.contains(&format!("reason=\"{reason}\""))
        })
        .map(|(_, v)| v)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_to_another_origin_does_not_get_the_token() {
    finovy_image_exporter::install_crypto_provider();
    let sim = start_sim(true, Faults::default()).await;
    let redirector = start_redirector(sim.addr).await;
    let dir = Scratch::new("redirect");
    let token = dir.write("token", TOKEN);
    let api_url = format!("http://{}", redirector.addr);
    let (addr, stop) = common::spawn_exporter([
        "--web.listen-address",
        "127.0.0.1:0",
        "--api.url",
        &api_url,
        "--api.token-file",
        token.to_str().unwrap(),
        "--datacenters",
        "HZ",
        "--refresh.interval",
        "1s",
    ])
    .await;
    let metrics_url = format!("http://{addr}/metrics");

    let client = plain_client();
    let metrics = wait_for("a refresh failing with reason http", DEADLINE, || async {
        let body = client
            .get(&metrics_url)
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        (failures(&body, "http") >= 1.0).then_some(body)
    })
    .await;
    assert!(
        metrics.contains("finovy_api_requests_total{account=\"default\",code=\"302\"}"),
        "{metrics}"
    );
    let at_origin = redirector.received.lock().unwrap().clone();
    assert!(!at_origin.is_empty() && at_origin.iter().all(|h| sent_the_token(h)));
    let elsewhere = sim.sim.requests();
    assert!(
        elsewhere.iter().all(|r| !r
            .headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("finovy-access-token"))),
        "the other origin received the token header: {elsewhere:?}"
    );
    assert!(elsewhere.is_empty(), "the redirect was followed at all");
    drop(stop);
}

/// Runs the real binary until it exits on its own; returns (status, stdout, stderr).
fn run_to_exit(args: &[&str]) -> (i32, String, String) {
    run_to_exit_with_env(args, &[])
}

/// [`run_to_exit`] with extra environment variables.
fn run_to_exit_with_env(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_finovy-image-exporter"))
        .args(["--web.listen-address", "127.0.0.1:0"])
        .args(args)
        .env("FINOVY_ACCESS_TOKEN", TOKEN)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            panic!("the exporter did not exit with {args:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = child.wait_with_output().unwrap();
    (
        status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn an_invalid_file_at_start_exits_2_with_one_line_naming_the_flag() {
    let dir = Scratch::new("invalid-start");
    let ca = Ca::new("test CA");
    install_server_cert(&dir, &ca.server("exporter"));
    dir.write("other.key", ca.server("other").key_pem);
    let cases: &[(&str, String, &str)] = &[
        ("missing file", String::new(), "cannot read it"),
        ("not YAML", "tls_server_config: [\n".into(), "invalid YAML"),
        (
            "unknown key",
            "tls_server_config:\n  certfile: x\n".into(),
            "unknown field",
        ),
        (
            "TLS 1.0",
            tls_yaml("  min_version: TLS10\n"),
            "TLS10 is not supported",
        ),
        (
            "cipher",
            tls_yaml("  cipher_suites: [TLS_RSA_WITH_RC4_128_SHA]\n"),
            "TLS_RSA_WITH_RC4_128_SHA",
        ),
        (
            "client auth",
            tls_yaml("  client_auth_type: Sometimes\n"),
            "invalid ClientAuth",
        ),
        (
            "missing cert",
            "tls_server_config:\n  cert_file: nowhere.crt\n  key_file: server.key\n".into(),
            "tls_server_config.cert_file: cannot read",
        ),
        (
            "key of another cert",
            "tls_server_config:\n  cert_file: server.crt\n  key_file: other.key\n".into(),
            "tls_server_config",
        ),
        (
            "password",
            "basic_auth_users:\n  alice: hunter2\n".into(),
            "not a bcrypt hash",
        ),
        (
            "header",
            "http_server_config:\n  headers:\n    Server: x\n".into(),
            "can not be configured",
        ),
    ];
    for (what, yaml, expected) in cases {
        let path = if yaml.is_empty() {
            dir.path("absent.yml")
        } else {
            dir.write("web.yml", yaml)
        };
        let (code, stdout, stderr) = run_to_exit(&["--web.config.file", path.to_str().unwrap()]);
        assert_eq!(code, 2, "{what}: exit status; stderr:\n{stderr}");
        // One log line, in the log's format, whose error names the flag.
        let named: Vec<&str> = stderr
            .lines()
            .filter(|l| l.contains("msg=\"cannot start\" error=\"--web.config.file: "))
            .collect();
        assert_eq!(
            named.len(),
            1,
            "{what}: one line naming the flag:\n{stderr}"
        );
        assert!(named[0].contains(expected), "{what}: {}", named[0]);
        assert!(!stdout.contains(TOKEN) && !stderr.contains(TOKEN), "{what}");
    }
}

/// Sends SIGTERM and waits for the process to log its last line and exit.
async fn stop_gracefully(process: &mut ExporterProcess) {
    let pid = process.child.id().to_string();
    let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(sent.success());
    wait_for("the exporter to exit", DEADLINE, || {
        let exited = process.child.try_wait().unwrap().is_some();
        async move { exited.then_some(()) }
    })
    .await;
    wait_for("its last log line", DEADLINE, || {
        let stopped = process.output().iter().any(|l| l.contains("stopped"));
        async move { stopped.then_some(()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_appears_in_no_output_in_any_security_scenario() {
    let dir = Scratch::new("hygiene");
    let ca = Ca::new("test CA");
    install_server_cert(&dir, &ca.server("exporter"));
    let hash = bcrypt::hash("scrape-password", 4).unwrap();
    let web = dir.write(
        "web.yml",
        format!("{}basic_auth_users:\n  prometheus: {hash}\n", tls_yaml("")),
    );
    let token_file = dir.write("token", format!("{TOKEN}\n"));

    for format in ["logfmt", "json"] {
        for scenario in ["tls-and-auth", "redirect", "env-token-rejected"] {
            let sim = start_sim(scenario != "env-token-rejected", Faults::default()).await;
            let redirector = start_redirector(sim.addr).await;
            let upstream = if scenario == "redirect" {
                redirector.addr
            } else {
                sim.addr
            };
            let api_url = format!("http://{upstream}");
            let mut args = vec![
                "--api.url",
                &api_url,
                "--refresh.interval",
                "1s",
                "--log.level",
                "debug",
                "--log.format",
                format,
            ];
            let mut env = vec![];
            match scenario {
                "tls-and-auth" => {
                    args.extend(["--web.config.file", web.to_str().unwrap()]);
                    args.extend(["--api.token-file", token_file.to_str().unwrap()]);
                }
                "redirect" => args.extend(["--api.token-file", token_file.to_str().unwrap()]),
                _ => env.push(("FINOVY_ACCESS_TOKEN", TOKEN)),
            }
            let mut process = ExporterProcess::spawn(&args, &env);
            let tls = scenario == "tls-and-auth";
            let client = if tls {
                https_client(&ca.pem(), ANY_TLS, None)
            } else {
                plain_client()
            };
            let scheme = if tls { "https" } else { "http" };
            let get = |path: &str| {
                let mut req = client.get(format!("{scheme}://{}{path}", process.addr));
                if tls {
                    req = req.basic_auth("prometheus", Some("scrape-password"));
                }
                async move {
                    let resp = req.send().await.ok()?;
                    let status = resp.status().as_u16();
                    Some((status, resp.text().await.ok()?))
                }
            };
            let expected_reason = match scenario {
                "redirect" => Some("http"),
                "env-token-rejected" => Some("auth"),
                _ => None,
            };
            wait_for("two refresh cycles", DEADLINE, || async {
                let (_, metrics) = get("/metrics").await?;
                let requests: f64 = parse_metrics(&metrics)
                    .iter()
                    .filter(|(k, _)| k.starts_with("finovy_api_requests_total"))
                    .map(|(_, v)| v)
                    .sum();
                let failed = expected_reason.is_none_or(|r| failures(&metrics, r) >= 1.0);
                (requests >= 2.0 && failed).then_some(())
            })
            .await;
            let mut pages = String::new();
            for path in ["/", "/metrics", "/readyz", "/healthz"] {
                let (status, body) = get(path).await.unwrap();
                assert!(status == 200 || status == 503, "{path}: {status}");
                pages.push_str(&body);
            }
            if tls {
                let unauthenticated = client
                    .get(format!("https://{}/metrics", process.addr))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(unauthenticated.status(), 401);
                pages.push_str(&unauthenticated.text().await.unwrap());
            }
            // The token did flow where it belongs, so its absence below means something.
            let at_sim = sim.sim.requests();
            let at_redirector = redirector.received.lock().unwrap().clone();
            match scenario {
                "redirect" => {
                    assert!(at_redirector.iter().any(|h| sent_the_token(h)));
                    assert!(at_sim.iter().all(|r| !sent_the_token(&r.headers)));
                }
                _ => assert!(at_sim.iter().any(|r| sent_the_token(&r.headers))),
            }
            stop_gracefully(&mut process).await;
            let output = process.output().join("\n");
            assert!(
                output.lines().count() >= 3,
                "{format}/{scenario}: too little output to mean anything:\n{output}"
            );
            assert!(
                !output.contains(TOKEN),
                "{format}/{scenario}: the token is in the output:\n{output}"
            );
            assert!(
                !pages.contains(TOKEN),
                "{format}/{scenario}: the token is in a page"
            );
        }
    }
}

/// The secret of the flag cases below: distinctive, so that a leak cannot hide.
const FLAG_SECRET: &str = "fLaG-Sec-7Hq2-never-echo";

#[test]
fn a_rejected_api_url_header_or_param_is_not_echoed_on_stderr() {
    let s = FLAG_SECRET;
    let url_cases = [
        format!("http://scraper:{s}@api.example"),
        format!("https://{s}@api.example/"),
        format!("http://api.example/?token={s}"),
        format!("ftp://user:{s}@api.example"),
        format!("http://user:{s}@[::1"),
        format!("no url at all {s}"),
    ];
    /// Arguments, environment, and the flag the error must name.
    type Case = (Vec<String>, Vec<(&'static str, String)>, &'static str);
    let mut cases: Vec<Case> = Vec::new();
    for url in &url_cases {
        cases.push((vec!["--api.url".into(), url.clone()], vec![], "--api.url"));
        cases.push((vec![], vec![("FINOVY_API_URL", url.clone())], "--api.url"));
    }
    for header in [
        format!("X-Api-Key={s}\u{7}"),
        format!("Authorization: Bearer {s}=x"),
        s.to_string(),
    ] {
        cases.push((
            vec!["--api.header".into(), header.clone()],
            vec![],
            "--api.header",
        ));
        cases.push((vec![], vec![("FINOVY_API_HEADER", header)], "--api.header"));
    }
    for param in [
        format!("page={s}"),
        format!("key={s}\u{1}"),
        format!("{s}\u{1}=x"),
        s.to_string(),
    ] {
        cases.push((
            vec!["--api.param".into(), param.clone()],
            vec![],
            "--api.param",
        ));
        cases.push((vec![], vec![("FINOVY_API_PARAM", param)], "--api.param"));
    }
    for (args, env, flag) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (code, stdout, stderr) = run_to_exit_with_env(&args, &env);
        let what = format!(
            "{args:?} {:?}",
            env.iter().map(|(k, _)| k).collect::<Vec<_>>()
        );
        assert_eq!(code, 2, "{what}: exit status; stderr:\n{stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{what}: {stderr}");
        assert!(stderr.contains(flag), "{what}: the flag is named: {stderr}");
        assert!(
            !stderr.contains(s) && !stdout.contains(s),
            "{what}: the secret is echoed: {stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_reload_shows_in_finovy_web_config_last_reload_successful() {
    let dir = Scratch::new("reload-metric");
    let headers = "http_server_config:\n  headers:\n    X-Frame-Options: deny\n";
    let web = dir.write("web.yml", headers);
    let process =
        ExporterProcess::spawn(&["--demo", "--web.config.file", web.to_str().unwrap()], &[]);
    let client = plain_client();
    let gauge = || async {
        let body = client
            .get(process.url("/metrics"))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        parse_metrics(&body)
            .get("finovy_web_config_last_reload_successful")
            .copied()
    };
    assert_eq!(gauge().await, Some(1.0));

    dir.write(
        "web.yml",
        "http_server_config:\n  headers:\n    X-Frame-Options: \"\"\n",
    );
    wait_for("the failed reload in the metric", DEADLINE, || async {
        (gauge().await? == 0.0).then_some(())
    })
    .await;
    wait_for("the failed reload logged", DEADLINE, || async {
        process
            .output()
            .iter()
            .any(|l| l.contains("cannot reload --web.config.file") && l.contains("X-Frame-Options"))
            .then_some(())
    })
    .await;
    let resp = client.get(process.url("/metrics")).send().await.unwrap();
    assert_eq!(
        resp.headers()["x-frame-options"],
        "deny",
        "the last good file"
    );

    dir.write("web.yml", format!("{headers}# fixed\n"));
    wait_for("the good reload in the metric", DEADLINE, || async {
        (gauge().await? == 1.0).then_some(())
    })
    .await;
}
