//! `finovy-image-exporter check`: one line per target, against the simulator,
//! and the exit status an operator's script can rely on.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::LoopbackSim;
use finovy_image_exporter::sim::{self, AuthStyle, SimAccount, Simulator};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("finovy-check-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write_secret(path: &std::path::Path, value: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, format!("{value}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

async fn upstream() -> LoopbackSim {
    let images = |seed| {
        sim::generate(&sim::GenerateOptions {
            images: 90,
            datacenters: vec!["HZ".into(), "SH".into()],
            seed,
            ..Default::default()
        })
    };
    let sim = Simulator::with_accounts(
        vec![
            SimAccount::new("good", "static-good", images(1)).with_login("UGOOD", "s3cret-good"),
            SimAccount::new("other", "static-other", images(2))
                .with_login("UOTHER", "s3cret-other"),
        ],
        AuthStyle::Body,
    )
    .unwrap();
    LoopbackSim::start(sim).await
}

fn check(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_finovy-image-exporter"))
        .arg("check")
        .args(args)
        .env_remove("FINOVY_ACCESS_TOKEN")
        .env_remove("FINOVY_API_SECRET")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_names_each_target_s_outcome_and_exits_1_when_some_fail() {
    let upstream = upstream().await;
    let dir = scratch("mixed");
    let (good, wrong, token) = (
        dir.join("good.secret"),
        dir.join("wrong.secret"),
        dir.join("wrong.token"),
    );
    write_secret(&good, "s3cret-good");
    write_secret(&wrong, "not-the-secret");
    write_secret(&token, "not-a-token");
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let file = dir.join("accounts.yml");
    std::fs::write(
        &file,
        format!(
            "defaults:\n  api: {{url: http://{addr}, max_retries: 0}}\n  datacenters: [HZ]\naccounts:\n  - name: good\n    uuid: UGOOD\n    secret_file: {good}\n  - name: refused-token\n    token_file: {token}\n  - name: refused-login\n    uuid: UOTHER\n    secret_file: {wrong}\n  - name: unreachable\n    uuid: UGOOD\n    secret_file: {good}\n    api: {{url: http://{closed}}}\n",
            addr = upstream.addr,
            good = good.display(),
            wrong = wrong.display(),
            token = token.display(),
        ),
    )
    .unwrap();
    let (code, out, err) =
        tokio::task::spawn_blocking(move || check(&["--config.file", file.to_str().unwrap()]))
            .await
            .unwrap();
    assert_eq!(code, 1, "{out}{err}");
    let lines: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("ok") || l.starts_with("failed"))
        .collect();
    assert_eq!(lines.len(), 4, "{out}");
    let images_hz = upstream
        .sim
        .account_images("good")
        .unwrap()
        .iter()
        .filter(|im| im.datacenter_key == "HZ")
        .count();
    assert_eq!(lines[0], format!("ok      good/HZ: {images_hz} images"));
    assert!(
        lines[1].starts_with("failed  refused-token/HZ: auth:"),
        "{}",
        lines[1]
    );
    assert!(
        lines[1].contains("hint: the token was refused"),
        "{}",
        lines[1]
    );
    assert!(
        lines[2].starts_with("failed  refused-login/HZ: auth: login as UOTHER failed"),
        "{}",
        lines[2]
    );
    assert!(
        lines[2].contains("hint: the login was refused"),
        "{}",
        lines[2]
    );
    assert!(
        lines[3].starts_with("failed  unreachable/HZ: connect:"),
        "{}",
        lines[3]
    );
    assert!(lines[3].contains("hint: nothing listens"), "{}", lines[3]);
    for secret in ["s3cret-good", "not-the-secret", "not-a-token"] {
        assert!(
            !out.contains(secret) && !err.contains(secret),
            "{secret} printed"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_exits_0_when_every_target_answers_from_flags_alone() {
    let upstream = upstream().await;
    let dir = scratch("good");
    let secret = dir.join("good.secret");
    write_secret(&secret, "s3cret-good");
    let url = format!("http://{}", upstream.addr);
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        check(&[
            "--api.url",
            &url,
            "--api.uuid",
            "UGOOD",
            "--api.secret-file",
            secret.to_str().unwrap(),
            "--datacenters",
            "HZ,SH",
        ])
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("ok      default/HZ: "), "{out}");
    assert!(out.contains("ok      default/SH: "), "{out}");
    assert_eq!(
        upstream.sim.logins().get("good"),
        Some(&1),
        "one login for both targets"
    );
}

#[test]
fn check_of_a_broken_file_exits_2_and_asks_nothing() {
    let dir = scratch("broken");
    let file = dir.join("accounts.yml");
    std::fs::write(
        &file,
        "accounts:\n  - name: a\n    uuid: U1\n    tokne_file: x\n",
    )
    .unwrap();
    let (code, out, err) = check(&["--config.file", file.to_str().unwrap()]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("accounts.yml:4:"), "{err}");
    assert!(err.contains("tokne_file"), "{err}");
    assert!(!out.contains("ok") && !out.contains("failed"), "{out}");
}

#[test]
fn config_check_reports_three_typos_in_three_accounts_in_one_run() {
    let dir = scratch("typos");
    let file = dir.join("accounts.yml");
    std::fs::write(
        &file,
        "accounts:\n  - name: a\n    token_env: T\n    refresh: {intervall: 1m}\n  - name: b\n    tokne_file: x\n  - name: c\n    token_env: T\n    api: {page_sise: 10}\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_finovy-image-exporter"))
        .args(["--config.file", file.to_str().unwrap(), "--config.check"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("accounts.yml:"))
        .collect();
    assert_eq!(lines.len(), 3, "{err}");
    for (line, (at, key)) in lines.iter().zip([
        (4, "accounts[0].refresh: unknown field `intervall`"),
        (6, "accounts[1]: unknown field `tokne_file`"),
        (9, "accounts[2].api: unknown field `page_sise`"),
    ]) {
        assert!(line.contains(&format!("accounts.yml:{at}:")), "{line}");
        assert!(line.contains(key), "{line}");
    }
}

#[test]
fn a_conflict_with_an_environment_twin_names_the_variable() {
    let dir = scratch("twin");
    let file = dir.join("accounts.yml");
    std::fs::write(&file, "accounts:\n  - name: a\n    token_env: T\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_finovy-image-exporter"))
        .args(["--config.file", file.to_str().unwrap(), "--config.check"])
        .env("FINOVY_API_URL", "https://client.xuandashi.com")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("FINOVY_API_URL (the environment twin of --api.url)"),
        "{err}"
    );
    assert!(!err.contains("cannot be used with '--api.url"), "{err}");
}

#[test]
fn value_mistakes_get_the_fix_in_their_message() {
    for (args, wanted) in [
        (&["--refresh.interval", "1m30"][..], "did you mean '1m30s'?"),
        (&["--web.listen-address", "9929"][..], "write ':9929'"),
        (
            &["--datacenters", "HZ SH"][..],
            "separate keys with commas: 'HZ,SH'",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_finovy-image-exporter"))
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(wanted), "{args:?}: {err}");
    }
    let dir = scratch("bearer");
    let token = dir.join("token");
    write_secret(&token, "Bearer abc.def");
    for (args, wanted) in [
        (
            vec!["--api.token-file", token.to_str().unwrap()],
            "starts with 'Bearer '",
        ),
        (vec!["--datacenters", "HZ,HZ"], "'HZ' is listed twice"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_finovy-image-exporter"))
            .args(&args)
            .args(["--web.listen-address", "127.0.0.1:0"])
            .env("FINOVY_ACCESS_TOKEN", "t0ken")
            .env_remove("FINOVY_API_SECRET")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(wanted), "{args:?}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_landing_page_and_readyz_carry_the_hint_of_a_refused_token_and_an_unknown_host() {
    let upstream = upstream().await;
    let dir = scratch("hints");
    let token = dir.join("wrong.token");
    write_secret(&token, "not-a-token");
    let file = dir.join("accounts.yml");
    std::fs::write(
        &file,
        format!(
            "defaults:\n  token_file: {token}\n  datacenters: [HZ]\n  api: {{max_retries: 0}}\naccounts:\n  - name: refused\n    api: {{url: http://{addr}}}\n  - name: nowhere\n    api: {{url: http://no-such-host.invalid}}\n",
            token = token.display(),
            addr = upstream.addr,
        ),
    )
    .unwrap();
    let exporter = common::ExporterProcess::spawn(&["--config.file", file.to_str().unwrap()], &[]);
    let readyz = common::wait_for("both targets failed", Duration::from_secs(30), || async {
        let (_, body) = common::get(&exporter.url("/readyz")).await;
        (body.matches("last_error=\"").count() == 2).then_some(body)
    })
    .await;
    let (_, landing) = common::get(&exporter.url("/")).await;
    for (what, text) in [("/readyz", &readyz), ("the landing page", &landing)] {
        assert!(
            text.contains("hint: the token was refused"),
            "{what} lacks the refused token's hint:\n{text}"
        );
        assert!(
            text.contains("hint: the host of --api.url does not resolve"),
            "{what} lacks the unknown host's hint:\n{text}"
        );
        assert!(!text.contains("not-a-token"), "{what} shows the token");
    }
}

#[test]
fn a_tls_file_that_is_a_device_is_refused_by_name_before_it_is_read() {
    // /dev/zero read whole fills the memory and a FIFO blocks for good; each is
    // refused by its kind, as the configuration file is. /dev/null stands for
    // them here: refused the same way, harmless if it were read.
    let (code, out, err) = check(&[
        "--api.url",
        "https://127.0.0.1:9",
        "--api.token-file",
        "/dev/null",
        "--api.tls.ca-file",
        "/dev/null",
        "--datacenters",
        "HZ",
    ]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("--api.tls.ca-file") && err.contains("not a regular file"),
        "{err}"
    );
}
