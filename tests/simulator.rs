//! The simulator alone, library and binary, on loopback: its accounts, and for
//! every hostile upstream behaviour it offers, the bytes and status a request
//! gets. The exporter is not involved; what it makes of these answers is
//! tested elsewhere.

mod common;

use std::collections::BTreeSet;
use std::io::BufRead;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::LoopbackSim;
use finovy_image_exporter::sim::{
    self, AuthStyle, BadName, FaultAction, FaultRule, Faults, SimAccount, SimImage, SimOptions,
    Simulator, TimeBend, DEFAULT_ACCOUNT,
};
use serde_json::Value;

const TOKEN: &str = "sim-test-token";

fn images(count: usize, seed: u64, datacenters: &[&str]) -> Vec<SimImage> {
    sim::generate(&sim::GenerateOptions {
        images: count,
        datacenters: datacenters.iter().map(|dc| dc.to_string()).collect(),
        seed,
        now_ms: 1_790_000_000_000,
        ..Default::default()
    })
}

fn one_account(images: Vec<SimImage>, rules: Vec<FaultRule>) -> Simulator {
    let sim = Simulator::new(
        images,
        SimOptions {
            token: Some(TOKEN.into()),
            auth_style: AuthStyle::Http,
        },
    );
    sim.set_faults(Faults {
        rules,
        ..Faults::default()
    });
    sim
}

fn client() -> reqwest::Client {
    finovy_image_exporter::install_crypto_provider();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// The status and body bytes of a list request with `token` and `query`.
async fn get(addr: SocketAddr, token: &str, query: &str) -> (u16, Vec<u8>) {
    let response = client()
        .get(format!(
            "http://{addr}/v1/open/image/personal/getList?{query}"
        ))
        .header("Finovy-Access-Token", token)
        .send()
        .await
        .expect("the simulator answers");
    let status = response.status().as_u16();
    (status, response.bytes().await.unwrap().to_vec())
}

/// A list answer that must be a JSON success envelope.
async fn page(addr: SocketAddr, token: &str, query: &str) -> Value {
    let (status, body) = get(addr, token, query).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let page: Value = serde_json::from_slice(&body).expect("the answer is JSON");
    assert_eq!(page["code"], 0, "{page}");
    page
}

fn items(page: &Value) -> &Vec<Value> {
    page["data"]["data"]
        .as_array()
        .expect("data.data is an array")
}

fn ids(page: &Value) -> Vec<String> {
    items(page)
        .iter()
        .map(|im| im["id"].as_str().unwrap().to_string())
        .collect()
}

fn in_datacenter<'a>(images: &'a [SimImage], dc: &str) -> Vec<&'a SimImage> {
    images.iter().filter(|im| im.datacenter_key == dc).collect()
}

// ---------------------------------------------------------------------------
// Accounts.

#[tokio::test]
async fn one_account_answers_its_token_and_refuses_others_as_before() {
    let set = images(60, 1, &["HZ", "SH"]);
    let upstream = LoopbackSim::start(one_account(set.clone(), Vec::new())).await;
    let hz = page(upstream.addr, TOKEN, "datacenterKey=HZ&pageSize=100").await;
    let expected: Vec<String> = in_datacenter(&set, "HZ")
        .iter()
        .map(|im| im.id.clone())
        .collect();
    assert_eq!(ids(&hz), expected);
    assert_eq!(hz["data"]["totalCounts"], expected.len());
    let (status, body) = get(upstream.addr, "wrong", "pageSize=10").await;
    assert_eq!(status, 401);
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["code"], 401);
    let log = upstream.sim.requests();
    assert_eq!(log[0].account.as_deref(), Some(DEFAULT_ACCOUNT));
    assert_eq!(log[1].account, None);
}

#[tokio::test]
async fn each_token_sees_only_its_accounts_images_and_is_counted_under_it() {
    let a = images(50, 1, &["HZ", "SH"]);
    let b = images(70, 2, &["HZ", "GZ"]);
    let sim = Simulator::with_accounts(
        vec![
            SimAccount::new("team-a", "token-a", a.clone()),
            SimAccount::new("team-b", "token-b", b.clone()),
        ],
        AuthStyle::Body,
    )
    .unwrap();
    let upstream = LoopbackSim::start(sim).await;
    for (token, set) in [("token-a", &a), ("token-b", &b)] {
        let all = page(upstream.addr, token, "pageSize=1000").await;
        let expected: Vec<String> = set.iter().map(|im| im.id.clone()).collect();
        assert_eq!(ids(&all), expected, "{token}");
    }
    let gz = page(upstream.addr, "token-a", "datacenterKey=GZ").await;
    assert_eq!(gz["data"]["totalCounts"], 0, "GZ is team-b's only");
    page(upstream.addr, "token-b", "datacenterKey=GZ&page=2").await;
    // A token of no account: refused in the configured style, a 200 here.
    let (status, body) = get(upstream.addr, "token-c", "datacenterKey=HZ").await;
    assert_eq!(status, 200);
    let refused: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (refused["code"].clone(), refused["success"].clone()),
        (401.into(), false.into())
    );

    let counts = upstream.sim.request_counts();
    let count = |account: &str, dc: &str| counts.get(&(account.into(), dc.into())).copied();
    assert_eq!(count("team-a", ""), Some(1));
    assert_eq!(count("team-a", "GZ"), Some(1));
    assert_eq!(count("team-b", ""), Some(1));
    assert_eq!(count("team-b", "GZ"), Some(1));
    assert_eq!(count("", "HZ"), Some(1));
    let by_account: Vec<(Option<String>, Option<String>)> = upstream
        .sim
        .requests()
        .into_iter()
        .map(|r| (r.account.clone(), r.datacenter()))
        .collect();
    assert_eq!(by_account[4], (None, Some("HZ".into())));
    assert_eq!(by_account[3], (Some("team-b".into()), Some("GZ".into())));
}

#[tokio::test]
async fn a_fault_scoped_to_an_account_leaves_the_others_alone() {
    let sim = Simulator::with_accounts(
        vec![
            SimAccount::new("a", "token-a", images(10, 1, &["HZ"])),
            SimAccount::new("b", "token-b", images(10, 2, &["HZ"])),
        ],
        AuthStyle::Http,
    )
    .unwrap();
    sim.set_faults(Faults {
        rules: vec![FaultRule::always(FaultAction::Unauthorized {
            style: AuthStyle::Http,
        })
        .account("b")],
        ..Faults::default()
    });
    let upstream = LoopbackSim::start(sim).await;
    page(upstream.addr, "token-a", "datacenterKey=HZ").await;
    let (status, _) = get(upstream.addr, "token-b", "datacenterKey=HZ").await;
    assert_eq!(status, 401);
}

// ---------------------------------------------------------------------------
// Hostile upstream behaviours, one by one.

#[tokio::test]
async fn reasonable_paging_repeats_the_last_page_under_a_lying_total() {
    let set = images(45, 3, &["HZ"]);
    let rules = vec![
        FaultRule::always(FaultAction::ClaimTotal {
            total: 1_000_000_000_000,
        }),
        FaultRule::always(FaultAction::ClampPage),
    ];
    let upstream = LoopbackSim::start(one_account(set.clone(), rules)).await;
    let last = page(upstream.addr, TOKEN, "datacenterKey=HZ&page=5&pageSize=10").await;
    let expected: Vec<String> = set[40..].iter().map(|im| im.id.clone()).collect();
    assert_eq!(ids(&last), expected);
    for past in [6, 7, 1000, 99_999] {
        let again = page(
            upstream.addr,
            TOKEN,
            &format!("datacenterKey=HZ&page={past}&pageSize=10"),
        )
        .await;
        assert_eq!(ids(&again), expected, "page {past}");
        assert_eq!(again["data"]["totalCounts"], 1_000_000_000_000i64);
    }
}

#[tokio::test]
async fn an_ignored_datacenter_key_answers_the_whole_account() {
    let set = images(40, 4, &["HZ", "SH"]);
    let rules = vec![FaultRule::always(FaultAction::IgnoreDatacenter).datacenter("NOWHERE")];
    let upstream = LoopbackSim::start(one_account(set.clone(), rules)).await;
    let nowhere = page(upstream.addr, TOKEN, "datacenterKey=NOWHERE&pageSize=100").await;
    assert_eq!(nowhere["data"]["totalCounts"], 40);
    let keys: BTreeSet<&str> = items(&nowhere)
        .iter()
        .map(|im| im["datacenterKey"].as_str().unwrap())
        .collect();
    assert_eq!(keys, BTreeSet::from(["HZ", "SH"]));
    // Scoped by datacenter: a key outside the rule is still filtered.
    let hz = page(upstream.addr, TOKEN, "datacenterKey=HZ&pageSize=100").await;
    assert_eq!(items(&hz).len(), in_datacenter(&set, "HZ").len());
}

#[tokio::test]
async fn id_less_items_make_repeated_pages_indistinguishable() {
    let rules = vec![
        FaultRule::always(FaultAction::IdLess { every: 1 }),
        FaultRule::always(FaultAction::ClampPage),
    ];
    let upstream = LoopbackSim::start(one_account(images(25, 5, &["HZ"]), rules)).await;
    let third = page(upstream.addr, TOKEN, "datacenterKey=HZ&page=3&pageSize=10").await;
    let fourth = page(upstream.addr, TOKEN, "datacenterKey=HZ&page=4&pageSize=10").await;
    assert_eq!(items(&third).len(), 5);
    assert!(items(&third).iter().all(|im| im.get("id").is_none()));
    assert!(items(&third).iter().all(|im| im.get("imageId").is_some()));
    assert_eq!(third["data"]["data"], fourth["data"]["data"]);
}

#[tokio::test]
async fn the_item_array_can_be_renamed_or_missing() {
    let rules = vec![
        FaultRule::always(FaultAction::RenameArray { to: "items".into() }).datacenter("HZ"),
        FaultRule::always(FaultAction::NoArray).datacenter("SH"),
    ];
    let set = images(30, 6, &["HZ", "SH"]);
    let upstream = LoopbackSim::start(one_account(set.clone(), rules)).await;
    let hz = page(upstream.addr, TOKEN, "datacenterKey=HZ&pageSize=100").await;
    assert!(hz["data"].get("data").is_none(), "{hz}");
    let renamed = hz["data"]["items"].as_array().expect("data.items");
    assert_eq!(renamed.len(), in_datacenter(&set, "HZ").len());
    let sh = page(upstream.addr, TOKEN, "datacenterKey=SH&pageSize=100").await;
    let data = sh["data"].as_object().unwrap();
    assert_eq!(data.keys().collect::<Vec<_>>(), ["totalCounts"]);
    assert_eq!(sh["data"]["totalCounts"], in_datacenter(&set, "SH").len());
}

#[tokio::test]
async fn churned_keys_change_on_every_pass() {
    let rules = vec![FaultRule::always(FaultAction::KeyChurn {
        per_request: false,
    })];
    let upstream = LoopbackSim::start(one_account(images(20, 7, &["HZ", "SH"]), rules)).await;
    let mut seen = BTreeSet::new();
    for pass in 1..=3 {
        let mut keys_of_pass = BTreeSet::new();
        for page_no in 1..=2 {
            let p = page(upstream.addr, TOKEN, &format!("page={page_no}&pageSize=10")).await;
            for im in items(&p) {
                keys_of_pass.insert(im["datacenterKey"].as_str().unwrap().to_string());
            }
        }
        assert_eq!(
            keys_of_pass,
            BTreeSet::from([format!("HZ-{pass}"), format!("SH-{pass}")]),
            "one pass, one set of keys"
        );
        seen.extend(keys_of_pass);
    }
    assert_eq!(seen.len(), 6);
    let per_request = vec![FaultRule::always(FaultAction::KeyChurn {
        per_request: true,
    })];
    upstream.sim.set_faults(Faults {
        rules: per_request,
        ..Faults::default()
    });
    let first = page(upstream.addr, TOKEN, "page=2&pageSize=10").await;
    let second = page(upstream.addr, TOKEN, "page=2&pageSize=10").await;
    assert_ne!(
        items(&first)[0]["datacenterKey"],
        items(&second)[0]["datacenterKey"]
    );
}

#[tokio::test]
async fn a_type_explosion_gives_that_many_distinct_types() {
    let rules = vec![FaultRule::always(FaultAction::TypeExplosion { types: 700 })];
    let upstream = LoopbackSim::start(one_account(images(2000, 8, &["HZ"]), rules)).await;
    let mut types = BTreeSet::new();
    for page_no in 1..=2 {
        let p = page(
            upstream.addr,
            TOKEN,
            &format!("page={page_no}&pageSize=1000"),
        )
        .await;
        for im in items(&p) {
            types.insert(im["imageType"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(types.len(), 700);
}

#[tokio::test]
async fn bad_bytes_latin1_lone_surrogate_and_bom() {
    let rules = vec![
        FaultRule::always(FaultAction::BadName {
            how: BadName::Latin1,
            every: 1,
        })
        .datacenter("HZ"),
        FaultRule::always(FaultAction::BadName {
            how: BadName::LoneSurrogate,
            every: 1,
        })
        .datacenter("SH"),
        FaultRule::always(FaultAction::Bom).datacenter("HK"),
    ];
    let set = images(30, 9, &["HZ", "SH", "HK"]);
    let upstream = LoopbackSim::start(one_account(set.clone(), rules)).await;

    let (status, latin1) = get(upstream.addr, TOKEN, "datacenterKey=HZ&pageSize=1").await;
    assert_eq!(status, 200);
    assert!(std::str::from_utf8(&latin1).is_err(), "not UTF-8");
    let name = format!("\"{}-caf", in_datacenter(&set, "HZ")[0].image_name);
    let at = latin1
        .windows(name.len())
        .position(|w| w == name.as_bytes())
        .expect("the name is there");
    assert_eq!(&latin1[at + name.len()..at + name.len() + 2], b"\xe9\"");

    let (_, surrogate) = get(upstream.addr, TOKEN, "datacenterKey=SH&pageSize=1").await;
    let text = String::from_utf8(surrogate).expect("an escape is plain ASCII");
    let name = format!(
        r#""imageName":"{}-\ud800""#,
        in_datacenter(&set, "SH")[0].image_name
    );
    assert!(text.contains(&name), "{text}");
    assert!(
        serde_json::from_str::<Value>(&text).is_err(),
        "serde refuses it"
    );

    let (_, bom) = get(upstream.addr, TOKEN, "datacenterKey=HK&pageSize=100").await;
    let body = bom
        .strip_prefix(b"\xef\xbb\xbf".as_slice())
        .expect("a BOM first");
    let page: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(items(&page).len(), in_datacenter(&set, "HK").len());
}

#[tokio::test]
async fn create_times_in_seconds_or_far_in_the_future() {
    let rules = vec![
        FaultRule::always(FaultAction::CreateTime {
            how: TimeBend::Seconds,
            every: 1,
        })
        .datacenter("HZ"),
        FaultRule::always(FaultAction::CreateTime {
            how: TimeBend::FarFuture,
            every: 2,
        })
        .datacenter("SH"),
    ];
    let set = images(40, 10, &["HZ", "SH"]);
    let upstream = LoopbackSim::start(one_account(set.clone(), rules)).await;
    let hz = page(upstream.addr, TOKEN, "datacenterKey=HZ&pageSize=100").await;
    for (item, im) in items(&hz).iter().zip(in_datacenter(&set, "HZ")) {
        assert_eq!(item["createTime"], im.create_time / 1000);
    }
    let sh = page(upstream.addr, TOKEN, "datacenterKey=SH&pageSize=100").await;
    for (item, im) in items(&sh).iter().zip(in_datacenter(&set, "SH")) {
        let expected = match im.image_id % 2 {
            0 => 9_000_000_000_000_000,
            _ => im.create_time,
        };
        assert_eq!(item["createTime"], expected, "{item}");
    }
}

#[tokio::test]
async fn a_hung_datacenter_never_answers_while_the_others_do() {
    let rules = vec![FaultRule::always(FaultAction::Hang).datacenter("SH")];
    let upstream = LoopbackSim::start(one_account(images(20, 11, &["HZ", "SH"]), rules)).await;
    let hung = client()
        .get(format!("http://{}/list?datacenterKey=SH", upstream.addr))
        .header("Finovy-Access-Token", TOKEN)
        .send();
    // The hang lasts an hour; a second without the status line shows it.
    let waited = tokio::time::timeout(Duration::from_secs(1), hung).await;
    assert!(waited.is_err(), "a hung request got an answer");
    page(upstream.addr, TOKEN, "datacenterKey=HZ").await;
}

// ---------------------------------------------------------------------------
// The binary.

/// `finovy-api-sim` with `args`, and the address it listens on.
struct SimProcess {
    child: Child,
    addr: SocketAddr,
}

impl SimProcess {
    fn spawn(args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_finovy-api-sim"))
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("the simulator starts");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("first line: {line:?}"))
            .parse()
            .unwrap();
        SimProcess { child, addr }
    }
}

impl Drop for SimProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn control(addr: SocketAddr, path: &str) -> Value {
    let response = client()
        .get(format!("http://{addr}/_sim/{path}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200, "{path}");
    serde_json::from_slice(&response.bytes().await.unwrap()).unwrap()
}

#[tokio::test]
async fn the_binary_serves_the_accounts_it_is_given() {
    let sim = SimProcess::spawn(&[
        "--account",
        "prod:prod-token:1:30",
        "--account",
        "staging:staging-token:2:12:GZ,SZ",
        "--auth-style",
        "body",
        "--faults",
        r#"{"rules":[{"accounts":["staging"],"action":{"kind":"bom"}}]}"#,
    ]);
    let accounts = control(sim.addr, "accounts").await;
    assert_eq!(
        accounts,
        serde_json::json!([{"name": "prod", "images": 30}, {"name": "staging", "images": 12}])
    );
    let prod = page(sim.addr, "prod-token", "pageSize=100").await;
    assert_eq!(items(&prod).len(), 30);
    let (_, staging) = get(sim.addr, "staging-token", "pageSize=100").await;
    let staging: Value = serde_json::from_slice(&staging[3..]).unwrap();
    let keys: BTreeSet<&str> = items(&staging)
        .iter()
        .map(|im| im["datacenterKey"].as_str().unwrap())
        .collect();
    assert!(keys.is_subset(&BTreeSet::from(["GZ", "SZ"])), "{keys:?}");
    let staging_images = control(sim.addr, "images?account=staging").await;
    assert_eq!(staging["data"]["data"], staging_images);
    let (status, refused) = get(sim.addr, "prod-token-typo", "pageSize=100").await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_slice::<Value>(&refused).unwrap()["code"],
        401
    );
    let counts = control(sim.addr, "counts").await;
    assert_eq!(
        counts,
        serde_json::json!([
            {"account": "", "datacenter": "", "requests": 1},
            {"account": "prod", "datacenter": "", "requests": 1},
            {"account": "staging", "datacenter": "", "requests": 1},
        ])
    );
}

#[test]
fn the_binary_refuses_a_bad_account_without_repeating_its_token() {
    for (args, expected) in [
        (
            vec!["--account", "prod:hunter2-secret:1"],
            "NAME:TOKEN:SEED:COUNT",
        ),
        (vec!["--account", "prod:hunter2-secret:x:3"], "SEED 'x'"),
        (
            vec![
                "--account",
                "a:hunter2-secret:1:3",
                "--account",
                "b:hunter2-secret:1:3",
            ],
            "same token",
        ),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_finovy-api-sim"))
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(!stderr.contains("hunter2"), "{args:?}: {stderr}");
    }
}

/// A login against the binary: the envelope it answers.
async fn log_in(addr: SocketAddr, uuid: &str, secret: &str) -> Value {
    let response = client()
        .post(format!("http://{addr}/v1/auth/getToken"))
        .header("content-type", "application/json")
        .body(serde_json::json!({"uuid": uuid, "secret": secret}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    serde_json::from_slice(&response.bytes().await.unwrap()).unwrap()
}

async fn post(addr: SocketAddr, path: &str, body: &str) -> Value {
    let response = client()
        .post(format!("http://{addr}/_sim/{path}"))
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200, "{path}");
    serde_json::from_slice(&response.bytes().await.unwrap()).unwrap()
}

#[tokio::test]
async fn the_binary_logs_an_account_in_with_its_credentials_and_takes_faults_of_logins() {
    let sim = SimProcess::spawn(&[
        "--account",
        "prod:prod-token:1:30",
        "--login",
        "prod:A10000001:s3cret",
        "--token-lifetime",
        "1h",
        "--auth-style",
        "body",
    ]);
    let answer = log_in(sim.addr, "A10000001", "s3cret").await;
    assert_eq!(answer["code"], 0, "{answer}");
    assert_eq!(answer["data"]["effectiveTime"], 3_600_000, "{answer}");
    let token = answer["data"]["token"].as_str().unwrap().to_string();
    assert_eq!(
        items(&page(sim.addr, &token, "pageSize=100").await).len(),
        30
    );

    assert_eq!(log_in(sim.addr, "A10000001", "wrong").await["code"], 401);
    post(sim.addr, "fail-logins", "[1005]").await;
    assert_eq!(log_in(sim.addr, "A10000001", "s3cret").await["code"], 1005);
    // The next login is the real one again; a revocation refuses every token.
    assert_eq!(log_in(sim.addr, "A10000001", "s3cret").await["code"], 0);
    post(sim.addr, "revoke", "").await;
    let (_, refused) = get(sim.addr, &token, "pageSize=100").await;
    assert_eq!(
        serde_json::from_slice::<Value>(&refused).unwrap()["code"],
        401
    );
    let logins = control(sim.addr, "logins").await;
    assert_eq!(logins["attempts"], 4, "{logins}");
    assert_eq!(logins["successes"]["prod"], 2, "{logins}");
}

#[test]
fn the_binary_refuses_a_login_for_an_unknown_account_without_repeating_its_secret() {
    for (args, expected) in [
        (
            vec![
                "--account",
                "prod:t:1:3",
                "--login",
                "staging:U1:hunter2-secret",
            ],
            "no --account named 'staging'",
        ),
        (
            vec!["--account", "prod:t:1:3", "--login", "prod:hunter2-secret"],
            "NAME:UUID:SECRET",
        ),
        (vec!["--login", "prod:U1:hunter2-secret"], "--account"),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_finovy-api-sim"))
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(!stderr.contains("hunter2"), "{args:?}: {stderr}");
    }
}
