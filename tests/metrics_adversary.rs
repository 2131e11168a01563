//! Attacks on the `/metrics` path, each kept fixed by a test of the same attack:
//! clients that ask for a large body and never read it (issue 24), a discovery
//! that finds far more datacenters than `--limit.datacenters` while images come
//! and go (issue 25, item 10), and image sizes whose sum passes 2^64 (item 12).

mod common;

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::{parse_metrics, wait_for, ExporterProcess, LoopbackSim};
use finovy_image_exporter::server::SEND_TIMEOUT;
use finovy_image_exporter::sim::{AuthStyle, SimImage, SimOptions, Simulator};

const TOKEN: &str = "adversary-token-77e1";
const DEADLINE: Duration = Duration::from_secs(60);

fn image(n: u32, dc: &str, status: u8, size_gib: &str) -> SimImage {
    SimImage {
        id: format!("img-{n}"),
        image_id: i64::from(n),
        image_type: "linux".into(),
        image_name: format!("image {n}"),
        image_size: size_gib.into(),
        datacenter_key: dc.into(),
        status,
        create_time: 1_750_000_000_000 + i64::from(n) * 60_000,
    }
}

async fn sim(images: Vec<SimImage>) -> LoopbackSim {
    LoopbackSim::start(Simulator::new(
        images,
        SimOptions {
            token: Some(TOKEN.into()),
            auth_style: AuthStyle::Http,
        },
    ))
    .await
}

/// An in-process exporter against `sim` with `extra` flags.
async fn exporter(
    sim: SocketAddr,
    extra: &[&str],
) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let url = format!("http://{sim}");
    let mut args = vec!["--web.listen-address", "127.0.0.1:0", "--api.url", &url];
    args.extend(extra);
    std::env::set_var("FINOVY_ACCESS_TOKEN", TOKEN);
    common::spawn_exporter(args).await
}

async fn body(addr: SocketAddr) -> String {
    let (status, body) = common::get(&format!("http://{addr}/metrics")).await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Item 12: five images of 8×10^9 GiB each. Their sum, 4.29×10^19 bytes, is past
/// the largest 64-bit value (1.84×10^19): it must be shown whole, not saturated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sizes_whose_sum_passes_2_64_are_summed_exactly() {
    let images = (0..5).map(|n| image(n, "HZ", 1, "8000000000")).collect();
    let sim = sim(images).await;
    let (addr, _stop) = exporter(sim.addr, &["--datacenters", "HZ"]).await;
    let line = wait_for("the first pass", DEADLINE, || async {
        let text = body(addr).await;
        text.lines()
            .find(|l| l.starts_with("finovy_images_size_bytes{"))
            .map(str::to_string)
    })
    .await;
    let want = 5 * 8_000_000_000u128 * (1 << 30);
    assert_eq!(want, 42_949_672_960_000_000_000);
    assert_eq!(
        line,
        format!(
            "finovy_images_size_bytes{{account=\"default\",datacenter_key=\"HZ\",status=\"available\",image_type=\"linux\"}} {want}"
        )
    );
    let m = parse_metrics(&body(addr).await);
    assert_eq!(
        m["finovy_up{account=\"default\",datacenter_key=\"HZ\"}"],
        1.0
    );
    // Prometheus reads it as the nearest float64.
    assert_eq!(
        line.rsplit_once(' ').unwrap().1.parse::<f64>().unwrap(),
        4.294967296e19
    );
}

/// The `datacenter_key` values of every sample.
fn datacenter_keys(m: &BTreeMap<String, f64>) -> std::collections::BTreeSet<String> {
    m.keys()
        .filter_map(|k| {
            let at = k.find("datacenter_key=\"")? + "datacenter_key=\"".len();
            Some(k[at..at + k[at..].find('"')?].to_string())
        })
        .collect()
}

fn created(m: &BTreeMap<String, f64>) -> f64 {
    m.iter()
        .filter(|(k, _)| k.starts_with("finovy_images_created_total{"))
        .map(|(_, v)| v)
        .sum()
}

/// Item 10: a discovery finds 41 datacenters with `--limit.datacenters 5`, and
/// images are created in the folded ones, pass after pass. The lifecycle and
/// failure counters fold into `datacenter_key="other"` like the gauges (at most
/// five keys in any family), and they count every creation: none is lost to a
/// counter that starts again at the next pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_beyond_the_datacenter_limit_folds_counters_and_never_resets_them() {
    // Four large datacenters stay under their own keys; 36 small ones fold.
    let mut images = Vec::new();
    let mut n = 0;
    for dc in 0..41 {
        for _ in 0..if dc < 4 { 10 } else { 1 } {
            images.push(image(n, &format!("DC{dc:02}"), 1, "1.0"));
            n += 1;
        }
    }
    let sim = sim(images.clone()).await;
    let (addr, _stop) = exporter(
        sim.addr,
        &["--limit.datacenters", "5", "--refresh.interval", "1s"],
    )
    .await;
    let scrape = || async { parse_metrics(&body(addr).await) };
    wait_for("the baseline pass", DEADLINE, || async {
        let m = scrape().await;
        m.contains_key("finovy_images_created_total{account=\"default\",datacenter_key=\"other\",image_type=\"linux\"}")
            .then_some(())
    })
    .await;
    // Three rounds of ten creations, each in ten folded datacenters (which stay
    // smaller than the four large ones).
    let mut want = 0.0;
    let last = std::cell::Cell::new(0.0);
    for round in 0..3 {
        for k in 0..10 {
            images.push(image(n, &format!("DC{:02}", 4 + round * 10 + k), 0, "1.0"));
            n += 1;
        }
        sim.sim.set_images(images.clone());
        want += 10.0;
        let m = wait_for("the creations counted", DEADLINE, || async {
            let m = scrape().await;
            let got = created(&m);
            let before = last.replace(got);
            assert!(
                got >= before,
                "created_total went back from {before} to {got}"
            );
            (got == want).then_some(m)
        })
        .await;
        let keys = datacenter_keys(&m);
        assert!(keys.len() <= 5, "{} keys: {keys:?}", keys.len());
        assert!(keys.contains("other"), "{keys:?}");
    }
    // Later passes (nothing changes) keep the count.
    sim.sim.clear_requests();
    wait_for("two more passes", DEADLINE, || async {
        (sim.sim.requests().len() >= 2).then_some(())
    })
    .await;
    let m = scrape().await;
    assert_eq!(created(&m), want);
    let keys = datacenter_keys(&m);
    assert!(keys.len() <= 5, "{keys:?}");
}

/// The resident memory of a process, bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status");
    kb * 1024
}

/// Sockets a process holds open.
fn sockets(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().starts_with("socket:"))
        .count()
}

/// Sends a plain `GET /metrics` and reads only the response head (and what came
/// with it): a client that then stops reading. Returns the stream, the body's
/// length and how many of its bytes came with the head.
fn stalled_reader(addr: SocketAddr) -> (TcpStream, usize, usize) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: exporter\r\n\r\n")
        .unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "closed before the head");
        head.extend_from_slice(&buf[..n]);
    }
    let end = head.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let early = head.len() - end;
    let head = String::from_utf8_lossy(&head[..end]).to_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("a content length");
    (stream, length, early)
}

/// Issue 24: twenty clients ask for a large plain body and never read it. They
/// share the one body the cache holds (resident memory stays within the base and
/// two bodies), `/healthz` answers meanwhile, and each stalled connection is
/// closed once it has made no progress for the send timeout, before the body
/// was sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_clients_that_never_read_a_large_body_share_it_and_are_cut_off() {
    // 4,000 images in `creating`, each named by `finovy_image_info` with labels
    // of a kilobyte: a plain body of several megabytes.
    let long = "n".repeat(1000);
    let images: Vec<SimImage> = (0..4_000)
        .map(|n| SimImage {
            image_name: format!("{long}-{n}"),
            id: format!("{long}-id-{n}"),
            ..image(n, "HZ", 0, "1.0")
        })
        .collect();
    let sim = sim(images).await;
    let url = format!("http://{}", sim.addr);
    let process = ExporterProcess::spawn(
        &[
            "--api.url",
            &url,
            "--datacenters",
            "HZ",
            // The first pass comes at a random offset within the interval.
            "--refresh.interval",
            "20s",
            "--collector.image-info",
            "--collector.image-info.limit",
            "100000",
            "--limit.label-length",
            "1024",
            "--web.max-requests",
            "40",
        ],
        &[("FINOVY_ACCESS_TOKEN", TOKEN)],
    );
    let pid = process.child.id();
    let addr = process.addr;
    // The first pass, then one full scrape: the body is made and cached.
    let length = wait_for("a large body", DEADLINE, || async {
        let text = body(addr).await;
        text.contains("finovy_image_info{").then_some(text.len())
    })
    .await;
    assert!(length > 4_000_000, "a body of {length} bytes is not large");
    let base_rss = rss(pid);
    // The scrape's connection closes after its answer; on a busy machine the
    // exporter may still hold it, so the base is taken once the count holds.
    let base_sockets = wait_for("the socket count to settle", DEADLINE, || async {
        let before = sockets(pid);
        tokio::time::sleep(Duration::from_millis(200)).await;
        (sockets(pid) == before).then_some(before)
    })
    .await;

    let readers: Vec<(TcpStream, usize, usize)> = (0..20).map(|_| stalled_reader(addr)).collect();
    for (_, l, _) in &readers {
        // The cached body, or (past the cache's second, on a slow machine) the
        // one made again in its place: the same series, the same size give or
        // take the digits of a few values.
        assert!(
            l.abs_diff(length) < 1024,
            "a reader got a body of {l} bytes, not about {length}"
        );
    }
    assert!(sockets(pid) >= base_sockets + 20);
    let (status, _) = common::get(&format!("http://{addr}/healthz")).await;
    assert_eq!(status, 200, "/healthz answers while twenty readers stall");
    let stalled_rss = rss(pid);
    eprintln!("body {length} B; resident {base_rss} B before, {stalled_rss} B with twenty stalled readers");
    assert!(
        stalled_rss <= base_rss + 2 * length as u64,
        "resident {stalled_rss} bytes with twenty stalled readers, against {base_rss} before and a body of {length}"
    );

    // Cut off after the send timeout: the exporter's sockets go back to what
    // they were, well before the bodies could have been sent.
    wait_for(
        "the stalled connections closed",
        SEND_TIMEOUT + Duration::from_secs(10),
        || async { (sockets(pid) <= base_sockets).then_some(()) },
    )
    .await;
    let (status, _) = common::get(&format!("http://{addr}/healthz")).await;
    assert_eq!(status, 200);
    // What the readers get now is what the kernel buffered, then the end.
    for (mut stream, length, early) in readers {
        let mut rest = Vec::new();
        // The exporter closed the connection: the read ends (or is reset), it
        // does not time out.
        if let Err(err) = stream.read_to_end(&mut rest) {
            assert!(
                !matches!(
                    err.kind(),
                    std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
                ),
                "the connection was left open: {err}"
            );
        }
        assert!(
            early + rest.len() < length,
            "the whole body was sent to a stalled reader: {early} + {} of {length} bytes",
            rest.len()
        );
    }
}
