//! A standalone simulator of the Finovy image list API, for demos, tests and
//! benchmarks. Prints `listening on ADDR` on its first stdout line.
//!
//! Faults are set at start with `--faults` and changed at run time with
//! `PUT /_sim/faults`; the `sim::faults` module of the library describes their
//! JSON.

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use clap::Parser;
use finovy_image_exporter::sim::{
    self, AuthStyle, Faults, SimAccount, SimOptions, SimServer, Simulator,
};

const AFTER_HELP: &str = "\
Accounts:
  Without --account the simulator serves one account, named `default`, of --images
  images, opened by --token (or by any non-empty token when --token is unset).
  Each --account NAME:TOKEN:SEED:COUNT[:DC,DC...] declares one account instead: its
  name (recorded in /_sim/requests), the token that opens it (no `:` in it), the seed
  and number of its images, and its datacenters (else --datacenters). A request sees
  only the images of the account its token opens; any other token is refused in
  --auth-style.

Logins (POST .../auth/getToken):
  Each --login NAME:UUID:SECRET lets the --account NAME log in with that uuid and
  secret; the tokens it gets last --token-lifetime. POST /_sim/revoke revokes every
  issued token; POST /_sim/fail-logins with a JSON list of codes (e.g. [401, 1005])
  answers the next logins with them, one each; GET /_sim/logins counts them.

Faults (--faults, PUT /_sim/faults):
  {\"latency_ms\": 20, \"page_cap\": 50, \"overlap\": 0, \"reject_token\": \"http\",
   \"rules\": [{\"accounts\": [\"a\"], \"datacenters\": [\"SH\"], \"page\": 2, \"times\": 1,
              \"rate\": 0.5, \"action\": {\"kind\": \"status\", \"status\": 503}}]}
  Every field is optional; a rule's scope fields narrow it, its action is one of
  (with its fields):
    delay {ms}  hang  status {status, retry_after_secs?}  close_mid_body
    stall_mid_body  malformed  truncated  api_error {code, msg?}
    unauthorized {style?}  total_counts {offset}  claim_total {total}
    skip {items}  repeat {items}  clamp_page  ignore_datacenter
    corrupt {every, how: wrong_type|missing|loose}  id_less {every?}
    bad_name {how: latin1|lone_surrogate, every?}
    create_time {how: seconds|far_future, every?}  type_explosion {types}
    key_churn {per_request?}  rename_array {to}  no_array  bom
    oversized {bytes}  endless
  e.g. PageHelper's flood: [{\"action\":{\"kind\":\"claim_total\",\"total\":1000000000000}},
                            {\"action\":{\"kind\":\"clamp_page\"}}]

Control API: GET /_sim/accounts, GET|PUT|POST /_sim/images[?account=NAME],
  GET|PUT /_sim/alternates, GET|PUT /_sim/faults, GET|DELETE /_sim/requests,
  GET /_sim/counts (requests per account and datacenter), POST /_sim/evolve,
  GET /_sim/held, POST /_sim/revoke, POST /_sim/fail-logins, GET /_sim/logins.";

/// Simulated Finovy image list API.
#[derive(Debug, Parser)]
#[command(name = "finovy-api-sim", version, after_help = AFTER_HELP)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Number of images of the one account (without --account).
    #[arg(long, default_value_t = 600, conflicts_with = "account")]
    images: usize,
    /// Comma-separated datacenter keys.
    #[arg(long, value_delimiter = ',', default_value = "HZ,SH,HK")]
    datacenters: Vec<String>,
    /// Comma-separated image types.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "Windows,Ubuntu,CentOS,Debian"
    )]
    image_types: Vec<String>,
    /// Seed of the synthetic data (of the one account), the fault rates and the evolution.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Token to require of the one account (any non-empty token when unset).
    #[arg(long, conflicts_with = "account")]
    token: Option<String>,
    /// An account to serve, NAME:TOKEN:SEED:COUNT[:DC,DC...]; repeatable (see below).
    // Read as text and parsed in `main`: clap's own error would repeat the value,
    // token and all.
    #[arg(long, value_name = "NAME:TOKEN:SEED:COUNT[:DCS]")]
    account: Vec<String>,
    /// Credentials of an --account, NAME:UUID:SECRET; repeatable (see below).
    // Read as text for the same reason as --account: the secret stays unsaid.
    #[arg(long, value_name = "NAME:UUID:SECRET", requires = "account")]
    login: Vec<String>,
    /// How long an issued token lasts (e.g. `30s`).
    #[arg(long, value_parser = humantime::parse_duration)]
    token_lifetime: Option<Duration>,
    /// Answer a wrong token with HTTP 401 (`http`) or `"code":401` in a 200 (`body`).
    #[arg(long, default_value = "http")]
    auth_style: String,
    /// Serve at most this many items per page, whatever `pageSize` asks.
    #[arg(long)]
    page_cap: Option<usize>,
    /// Faults in force from the start, as JSON (or `@FILE` holding it), e.g.
    /// '{"rules":[{"datacenters":["SH"],"action":{"kind":"status","status":503}}]}'.
    #[arg(long, value_parser = parse_faults)]
    faults: Option<Faults>,
    /// Move the images through their life this often (e.g. `5s`); off when unset.
    #[arg(long, value_parser = humantime::parse_duration)]
    evolve_every: Option<Duration>,
}

/// One `--account`.
#[derive(Debug, Clone)]
struct AccountSpec {
    name: String,
    token: String,
    seed: u64,
    images: usize,
    datacenters: Option<Vec<String>>,
}

impl FromStr for AccountSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split(':').collect();
        let (name, token, seed, count, datacenters) = match parts[..] {
            [name, token, seed, count] => (name, token, seed, count, None),
            [name, token, seed, count, dcs] => (name, token, seed, count, Some(dcs)),
            // The token is not repeated: it may be a secret of a real test set-up.
            _ => return Err("expected NAME:TOKEN:SEED:COUNT[:DC,DC...]".into()),
        };
        if name.is_empty() || token.is_empty() {
            return Err(format!(
                "account '{name}': NAME and TOKEN must not be empty"
            ));
        }
        let seed = seed
            .parse()
            .map_err(|_| format!("account '{name}': SEED '{seed}' is not a whole number"))?;
        let images = count
            .parse()
            .map_err(|_| format!("account '{name}': COUNT '{count}' is not a whole number"))?;
        let datacenters = datacenters.map(|dcs| {
            dcs.split(',')
                .filter(|dc| !dc.is_empty())
                .map(str::to_string)
                .collect::<Vec<_>>()
        });
        if datacenters.as_ref().is_some_and(Vec::is_empty) {
            return Err(format!(
                "account '{name}': no datacenter after the last ':'"
            ));
        }
        Ok(AccountSpec {
            name: name.to_string(),
            token: token.to_string(),
            seed,
            images,
            datacenters,
        })
    }
}

fn parse_faults(s: &str) -> Result<Faults, String> {
    let text = match s.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?,
        None => s.to_string(),
    };
    serde_json::from_str(&text).map_err(|e| format!("not a faults document: {e}"))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let auth_style = match args.auth_style.as_str() {
        "http" => AuthStyle::Http,
        "body" => AuthStyle::Body,
        other => anyhow::bail!("--auth-style: '{other}' is not http or body"),
    };
    if args.evolve_every.is_some_and(|d| d.is_zero()) {
        anyhow::bail!("--evolve-every: must be greater than zero");
    }
    let images = |count: usize, seed: u64, datacenters: Option<Vec<String>>| {
        sim::generate(&sim::GenerateOptions {
            images: count,
            datacenters: datacenters.unwrap_or_else(|| args.datacenters.clone()),
            image_types: args.image_types.clone(),
            seed,
            ..Default::default()
        })
    };
    let simulator = if args.account.is_empty() {
        let options = SimOptions {
            token: args.token.clone(),
            auth_style,
        };
        Simulator::new(images(args.images, args.seed, None), options)
    } else {
        let mut logins = Vec::new();
        for (n, spec) in args.login.iter().enumerate() {
            let parts: Vec<&str> = spec.splitn(3, ':').collect();
            let [name, uuid, secret] = parts[..] else {
                anyhow::bail!("--login (number {}): expected NAME:UUID:SECRET", n + 1);
            };
            if [name, uuid, secret].iter().any(|p| p.is_empty()) {
                anyhow::bail!(
                    "--login (number {}): NAME, UUID and SECRET must not be empty",
                    n + 1
                );
            }
            if !args
                .account
                .iter()
                .any(|a| a.split(':').next() == Some(name))
            {
                anyhow::bail!("--login (number {}): no --account named '{name}'", n + 1);
            }
            logins.push((name, uuid, secret));
        }
        let mut accounts = Vec::new();
        for (n, spec) in args.account.iter().enumerate() {
            let a: AccountSpec = spec
                .parse()
                .map_err(|e| anyhow::anyhow!("--account (number {}): {e}", n + 1))?;
            let set = images(a.images, a.seed, a.datacenters);
            let mut account = SimAccount::new(&a.name, &a.token, set);
            if let Some((_, uuid, secret)) = logins.iter().find(|(name, ..)| *name == a.name) {
                account = account.with_login(uuid, secret);
            }
            accounts.push(account);
        }
        Simulator::with_accounts(accounts, auth_style)
            .map_err(|e| anyhow::anyhow!("--account: {e}"))?
    };
    simulator.reseed(args.seed);
    if let Some(lifetime) = args.token_lifetime {
        if lifetime.is_zero() {
            anyhow::bail!("--token-lifetime: must be greater than zero");
        }
        simulator.set_token_lifetime(lifetime);
    }
    let mut faults = args.faults.unwrap_or_default();
    if args.page_cap.is_some() {
        faults.page_cap = args.page_cap;
    }
    simulator.set_faults(faults);
    let server = SimServer::bind(args.listen, simulator.clone()).await?;
    println!("listening on {}", server.local_addr());
    if let Some(every) = args.evolve_every {
        tokio::spawn(simulator.evolve_every(every));
    }
    server
        .serve(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await;
    Ok(())
}
