//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Whether `name` is a series the exporter exposes: a family of the library's
/// one table ([`finovy_image_exporter::metrics::ALL`]), or for a histogram its
/// `_bucket`, `_sum` or `_count` (the family name alone is no series).
pub fn is_exporter_series(name: &str) -> bool {
    use finovy_image_exporter::metrics::{Kind, ALL};
    ALL.iter().any(|family| match family.kind {
        Kind::Histogram | Kind::GaugeHistogram => {
            name.strip_prefix(family.name).is_some_and(|suffix| {
                ["_bucket", "_sum", "_count", "_gsum", "_gcount"].contains(&suffix)
            })
        }
        _ => name == family.name,
    })
}

/// Finds an external tool the test drives for real (promtool, prometheus, kubectl…).
///
/// `scripts/test` installs them. Outside CI a missing tool skips the test with a
/// message; under `CI=true` it fails the test, so CI can never pass by skipping.
pub fn require_tool(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    });
    if found.is_none() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{name} is required under CI=true but is not on PATH (run scripts/test)");
        }
        eprintln!("SKIPPED: {name} not found on PATH; run scripts/test to install it");
    }
    found
}

/// Polls `check` until it returns `Some`, failing the test after `deadline`.
pub async fn wait_for<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Samples of a text exposition, keyed by `name{labels}` exactly as written.
pub fn parse_metrics(text: &str) -> std::collections::BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').expect("sample line has a value");
            let value = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v.parse().expect("sample value is a number"),
            };
            (series.to_string(), value)
        })
        .collect()
}

/// The real exporter binary, running with captured output; killed on drop.
pub struct ExporterProcess {
    pub child: std::process::Child,
    pub addr: std::net::SocketAddr,
    output: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl ExporterProcess {
    /// Starts the binary with `args` (plus `--web.listen-address 127.0.0.1:0`) and
    /// extra environment, and waits until it logs the address it listens on.
    pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::launch(&[], args, env).listening()
    }

    /// As [`ExporterProcess::spawn`], run by `wrapper` (a command that execs the
    /// rest of its line: `prlimit --nofile=64:64 --`), without waiting: the test
    /// can act on the process while it starts.
    pub fn launch(wrapper: &[&str], args: &[&str], env: &[(&str, &str)]) -> Launched {
        use std::io::BufRead;
        use std::process::{Command, Stdio};
        let exe = env!("CARGO_BIN_EXE_finovy-image-exporter");
        let mut cmd = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut cmd = Command::new(program);
                cmd.args(rest).arg(exe);
                cmd
            }
            None => Command::new(exe),
        };
        cmd.args(["--web.listen-address", "127.0.0.1:0"])
            .args(args)
            .env_remove("FINOVY_ACCESS_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("exporter binary starts");
        let output = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let output = output.clone();
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(stream)
                    .lines()
                    .map_while(Result::ok)
                {
                    // The line is kept before its address is handed over, so
                    // that the output holds it once the process is listening.
                    let addr = listening_address(&line);
                    output.lock().unwrap().push(line);
                    if let Some(addr) = addr {
                        let _ = tx.send(addr);
                    }
                }
            });
        }
        Launched {
            child: Some(child),
            output,
            addresses: rx,
        }
    }

    /// Everything the process wrote so far, stdout and stderr, line by line.
    pub fn output(&self) -> Vec<String> {
        self.output.lock().unwrap().clone()
    }

    /// `http://ADDR` + path.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

impl Drop for ExporterProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An exporter process started by [`ExporterProcess::launch`], not yet known to
/// listen; killed on drop.
pub struct Launched {
    child: Option<std::process::Child>,
    output: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    addresses: std::sync::mpsc::Receiver<std::net::SocketAddr>,
}

impl Launched {
    /// The process id (the wrapper's, which execs the exporter).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("not yet handed over").id()
    }

    /// Everything the process wrote so far, stdout and stderr, line by line.
    pub fn output(&self) -> Vec<String> {
        self.output.lock().unwrap().clone()
    }

    /// Waits (30 s at most) until the process logs the address it listens on.
    pub fn listening(mut self) -> ExporterProcess {
        let mut child = self.child.take().expect("not yet handed over");
        match self.addresses.recv_timeout(Duration::from_secs(30)) {
            Ok(addr) => ExporterProcess {
                child,
                addr,
                output: std::sync::Arc::clone(&self.output),
            },
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "exporter did not log its address; output:\n{}",
                    self.output.lock().unwrap().join("\n")
                );
            }
        }
    }
}

impl Drop for Launched {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The address of a `listening` log line, in logfmt or JSON.
fn listening_address(line: &str) -> Option<std::net::SocketAddr> {
    if !line.contains("listening") {
        return None;
    }
    let start = line.find("address")? + "address".len();
    line[start..]
        .trim_start_matches(['=', '"', ':', ' '])
        .split(['"', ' ', ','])
        .next()?
        .parse()
        .ok()
}

/// A simulator served on a loopback port until dropped.
pub struct LoopbackSim {
    pub sim: finovy_image_exporter::sim::Simulator,
    pub addr: std::net::SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
}

impl LoopbackSim {
    /// Serves `sim` on `127.0.0.1`, on a free port.
    pub async fn start(sim: finovy_image_exporter::sim::Simulator) -> Self {
        let server = finovy_image_exporter::sim::SimServer::bind(
            std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            sim.clone(),
        )
        .await
        .expect("a loopback port is free");
        let addr = server.local_addr();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(server.serve(async move {
            let _ = stopped.await;
        }));
        LoopbackSim { sim, addr, stop }
    }

    /// The parts, for a caller that keeps the stop handle itself (dropping it
    /// stops the server).
    pub fn into_parts(
        self,
    ) -> (
        finovy_image_exporter::sim::Simulator,
        std::net::SocketAddr,
        tokio::sync::oneshot::Sender<()>,
    ) {
        (self.sim, self.addr, self.stop)
    }
}

/// An exporter running in this process, started from command-line `args`
/// (without the program name); it stops when the returned sender drops.
pub async fn spawn_exporter<I, S>(
    args: I,
) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>)
where
    I: IntoIterator<Item = S>,
    S: Into<std::ffi::OsString> + Clone,
{
    use clap::Parser as _;
    let config = finovy_image_exporter::config::Config::try_parse_from(
        std::iter::once(std::ffi::OsString::from("finovy-image-exporter"))
            .chain(args.into_iter().map(Into::into)),
    )
    .expect("valid test flags");
    let exporter = finovy_image_exporter::app::Exporter::start(config)
        .await
        .expect("the exporter starts");
    let addr = exporter.local_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(exporter.run(async move {
        let _ = stopped.await;
    }));
    (addr, stop)
}

/// GET `url`: the status and the body as text.
pub async fn get(url: &str) -> (u16, String) {
    finovy_image_exporter::install_crypto_provider();
    let resp = reqwest::get(url).await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

/// POST to `url` with no body: the status and the body as text.
pub async fn post(url: &str) -> (u16, String) {
    finovy_image_exporter::install_crypto_provider();
    let resp = reqwest::Client::new().post(url).send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

/// The samples of `/metrics` at `addr`, which must answer 200.
pub async fn scrape(addr: std::net::SocketAddr) -> std::collections::BTreeMap<String, f64> {
    let (status, body) = get(&format!("http://{addr}/metrics")).await;
    assert_eq!(status, 200);
    parse_metrics(&body)
}

/// `finovy_images` of `account` as `images` give them (every image counted
/// once, by datacenter, status and type), computed apart from the exporter.
pub fn expected_image_counts<'a>(
    account: &str,
    images: impl IntoIterator<Item = &'a finovy_image_exporter::sim::SimImage>,
) -> std::collections::BTreeMap<String, f64> {
    let mut out = std::collections::BTreeMap::new();
    for im in images {
        *out.entry(format!(
            "finovy_images{{account=\"{account}\",datacenter_key=\"{}\",status=\"{}\",image_type=\"{}\"}}",
            im.datacenter_key,
            status_label(im.status),
            im.image_type
        ))
        .or_insert(0.0) += 1.0;
    }
    out
}

/// The `finovy_images` samples of `account` in `metrics`.
pub fn image_counts(
    metrics: &std::collections::BTreeMap<String, f64>,
    account: &str,
) -> std::collections::BTreeMap<String, f64> {
    let prefix = format!("finovy_images{{account=\"{account}\",");
    metrics
        .iter()
        .filter(|(k, _)| k.starts_with(&prefix))
        .map(|(k, v)| (k.clone(), *v))
        .collect()
}

/// The `status` label of an upstream status code, as the API document lists
/// them: the tests' own reading, kept apart from the library's
/// (`labels::Status::from_code`) so that a mistake there fails a test.
pub fn status_label(code: u8) -> &'static str {
    match code {
        0 => "creating",
        1 => "available",
        2 => "failed",
        3 => "expired",
        _ => "unknown",
    }
}

/// An upstream written by hand that answers every request (one per connection)
/// with `status` and `body`: a body no JSON writer makes (a key given twice), an
/// answer of any size, with a `Content-Length` or, unless `sized`, chunked (so
/// that only reading tells its size). The whole request is read first, head and
/// `Content-Length` body, so that closing never resets an answer the client has
/// not read.
#[allow(dead_code)] // Not every test file that includes this module uses it.
pub async fn fixed_upstream(
    status: &'static str,
    body: String,
    sized: bool,
) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let body = body.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                let complete = |r: &[u8]| {
                    let Some(end) = r.windows(4).position(|w| w == b"\r\n\r\n") else {
                        return false;
                    };
                    let head = String::from_utf8_lossy(&r[..end]).to_ascii_lowercase();
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    r.len() >= end + 4 + length
                };
                while !complete(&request) {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let framing = match sized {
                    true => format!("content-length: {}", body.len()),
                    false => "transfer-encoding: chunked".to_string(),
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\n{framing}\r\nconnection: close\r\n\r\n"
                );
                let _ = stream.write_all(head.as_bytes()).await;
                if sized {
                    let _ = stream.write_all(body.as_bytes()).await;
                } else {
                    for piece in body.as_bytes().chunks(8 * 1024) {
                        let size = format!("{:x}\r\n", piece.len());
                        let _ = stream.write_all(size.as_bytes()).await;
                        let _ = stream.write_all(piece).await;
                        let _ = stream.write_all(b"\r\n").await;
                    }
                    let _ = stream.write_all(b"0\r\n\r\n").await;
                }
            });
        }
    });
    addr
}
