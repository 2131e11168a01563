//! Where the exporter listens, as exporter-toolkit's flags say: several
//! `--web.listen-address`, the sockets systemd passes (`--web.systemd-socket`,
//! driven by `systemd-socket-activate`), and every route under a prefix
//! (`--web.route-prefix`, `--web.external-url`) with the landing page's links
//! following it.

mod common;

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{get, require_tool, wait_for, ExporterProcess};

/// Every address a process logged as `listening`, in logfmt.
fn listening_addresses(process: &ExporterProcess) -> Vec<SocketAddr> {
    process
        .output()
        .iter()
        .filter(|line| line.contains("msg=listening"))
        .filter_map(|line| {
            let rest = &line[line.find("address=")? + "address=".len()..];
            rest.split(' ').next()?.parse().ok()
        })
        .collect()
}

/// GET without following redirects: the status, the `Location` and the body.
async fn get_raw(url: &str) -> (u16, Option<String>, String) {
    finovy_image_exporter::install_crypto_provider();
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let resp = client.get(url).send().await.unwrap();
    let location = resp
        .headers()
        .get("location")
        .map(|v| v.to_str().unwrap().to_string());
    (resp.status().as_u16(), location, resp.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_listen_addresses_both_answer() {
    // The helper gives 127.0.0.1:0 first; this is the second.
    let process = ExporterProcess::spawn(&["--demo", "--web.listen-address", "127.0.0.1:0"], &[]);
    // The helper returns at the first `listening` line; the second follows.
    let addresses = wait_for("two listening lines", Duration::from_secs(30), || async {
        Some(listening_addresses(&process)).filter(|a| a.len() >= 2)
    })
    .await;
    assert_eq!(addresses.len(), 2, "{:?}", process.output());
    assert_ne!(addresses[0], addresses[1]);
    for address in addresses {
        let (status, body) = get(&format!("http://{address}/healthz")).await;
        assert_eq!(status, 200, "{address}");
        assert_eq!(body, "ok\n");
        let (status, body) = get(&format!("http://{address}/metrics")).await;
        assert_eq!(status, 200, "{address}");
        assert!(body.contains("finovy_exporter_build_info"), "{address}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_socket_activation_serves_on_the_passed_socket() {
    let Some(activate) = require_tool("systemd-socket-activate") else {
        return;
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let socket = format!("127.0.0.1:{port}");
    // systemd-socket-activate binds the socket, and execs the exporter with
    // LISTEN_FDS and LISTEN_PID once a first client connects.
    let launched = ExporterProcess::launch(
        &[activate.to_str().unwrap(), "--listen", &socket, "--"],
        &["--demo", "--web.systemd-socket"],
        &[],
    );
    let started = Instant::now();
    let mut first = loop {
        match std::net::TcpStream::connect(&socket) {
            Ok(stream) => break stream,
            Err(err) => {
                assert!(
                    started.elapsed() < Duration::from_secs(30),
                    "systemd-socket-activate never listened on {socket}: {err}; output:\n{}",
                    launched.output().join("\n")
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    };
    first
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: exporter\r\nConnection: close\r\n\r\n")
        .unwrap();
    first
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut answer = String::new();
    first.read_to_string(&mut answer).unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "the connection that activated the exporter is served: {answer}"
    );
    let process = launched.listening();
    assert_eq!(
        listening_addresses(&process),
        [socket.parse::<SocketAddr>().unwrap()],
        "only the socket systemd passed, not --web.listen-address"
    );
    let (status, body) = get(&format!("http://{socket}/metrics")).await;
    assert_eq!(status, 200);
    assert!(body.contains("finovy_exporter_build_info"));
}

#[tokio::test]
async fn systemd_socket_without_a_passed_socket_is_refused_with_the_fix() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_finovy-image-exporter"))
        .args(["--demo", "--web.systemd-socket"])
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--web.systemd-socket: systemd passed no socket")
            && stderr.contains("--web.listen-address"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_route_prefix_every_route_and_link_moves_under_it() {
    let process = ExporterProcess::spawn(
        &[
            "--demo",
            "--web.external-url",
            "http://proxy.example/finovy/",
        ],
        &[],
    );
    let url = |path: &str| process.url(path);
    let (status, body) = get(&url("/finovy/metrics")).await;
    assert_eq!(status, 200);
    assert!(body.contains("finovy_exporter_build_info"));
    assert_eq!(get(&url("/finovy/healthz")).await, (200, "ok\n".into()));
    let (status, body) = get(&url("/finovy/readyz")).await;
    assert!(
        matches!(status, 200 | 503) && body.contains("ready"),
        "readyz is served under the prefix: {status} {body}"
    );
    let (status, _) = get(&url("/finovy/probe?account=prod")).await;
    assert_eq!(status, 200, "probe under the prefix");
    for outside in ["/metrics", "/healthz", "/finovyx/metrics"] {
        assert_eq!(get_raw(&url(outside)).await.0, 404, "{outside}");
    }
    let (status, location, _) = get_raw(&url("/")).await;
    assert_eq!((status, location.as_deref()), (302, Some("/finovy/")));
    for landing in ["/finovy/", "/finovy"] {
        let (status, _, page) = get_raw(&url(landing)).await;
        assert_eq!(status, 200, "{landing}");
        for link in [
            "href=\"/finovy/metrics\"",
            "href=\"/finovy/healthz\"",
            "href=\"/finovy/readyz\"",
            "href=\"/finovy/probe\"",
            "action=\"/finovy/probe\"",
            "name=\"account\"",
        ] {
            assert!(page.contains(link), "{landing} lacks {link}");
        }
    }

    // A proxy that strips the prefix: routes at the root, links under it.
    let stripped = ExporterProcess::spawn(
        &[
            "--demo",
            "--web.external-url",
            "http://proxy.example/finovy/",
            "--web.route-prefix",
            "/",
        ],
        &[],
    );
    assert_eq!(get(&stripped.url("/healthz")).await.0, 200);
    let (status, _, page) = get_raw(&stripped.url("/")).await;
    assert_eq!(status, 200);
    assert!(page.contains("href=\"/finovy/metrics\""), "{page}");
    assert!(page.contains("action=\"/finovy/probe\""), "{page}");
}
