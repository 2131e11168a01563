//! Wiring: from a validated [`Config`] to a running exporter.
//!
//! [`Exporter::start`] does everything that can fail at start (web config, token,
//! bind, demo simulator) and reports it as a [`StartError`]; [`Exporter::run`] then serves
//! until the shutdown future completes. Taking any future as the trigger keeps
//! shutdown testable.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::account::{Account, AccountNames, Shard};
use crate::config::Config;
use crate::config_file::{ConfigFileError, Reloader};
use crate::refresh::{Limits, Liveness, Scheduler};
use crate::reloads::ReloadQueue;
use crate::routes::Routes;
use crate::routes::Setting;
use crate::secret::{Token, TokenSource};
use crate::server::Server;
use crate::settings::{join_path, Origin, DEFAULT_AUTH_PATH};
use crate::signals::Signals;
use crate::sim::{self, SimAccount, SimServer, Simulator};
use crate::state::State;
use crate::telemetry::Telemetry;
use crate::upstream::{Auth, Credentials};
use crate::web_config::{WebConfigError, WebConfigWatcher};

/// The longest time between two passes in `--demo`.
const DEMO_MAX_INTERVAL: Duration = Duration::from_secs(10);

/// How often the `--demo` simulator moves its images through their life.
const DEMO_EVOLVE_EVERY: Duration = Duration::from_secs(5);

/// What can stop the exporter from starting.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The web configuration file cannot be used (exit status 2).
    #[error("--web.config.file: {}: {source}", path.display())]
    WebConfig {
        /// The file given.
        path: std::path::PathBuf,
        /// What is wrong with it.
        source: WebConfigError,
    },
    /// A flag, or the flags together, cannot be used (exit status 2).
    #[error("{0}")]
    Flags(String),
    /// The listen address cannot be bound.
    #[error("--web.listen-address: cannot listen on {address}: {source}")]
    Bind {
        /// What the user asked for.
        address: String,
        /// Why.
        source: std::io::Error,
    },
    /// `--web.systemd-socket` was given but systemd passed no usable socket.
    #[error("--web.systemd-socket: {0}")]
    SystemdSocket(String),
    /// The sharding flags do not name a shard (exit status 2).
    #[error("{0}")]
    Shard(String),
    /// The demo simulator cannot start.
    #[error("cannot start the demo simulator: {0}")]
    Demo(std::io::Error),
    /// `--config.file` has problems (exit status 2); each is on a line of its own.
    #[error("{0}")]
    ConfigFile(ConfigFileError),
}

impl StartError {
    /// Exit status: 2 for configuration errors, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            StartError::WebConfig { .. }
            | StartError::Flags(_)
            | StartError::Shard(_)
            | StartError::ConfigFile(_) => 2,
            _ => 1,
        }
    }
}

/// A started exporter, bound and ready to run.
pub struct Exporter {
    server: Server,
    routes: Arc<Routes>,
    scheduler: Scheduler,
    accounts: Vec<Account>,
    liveness: Arc<Liveness>,
    demo: Option<SimServer>,
    web_config: Option<WebConfigWatcher>,
    reloader: Arc<Reloader>,
    reload_queue: ReloadQueue,
    reloads: mpsc::UnboundedReceiver<Vec<Account>>,
    state: Arc<State>,
}

impl Exporter {
    /// Loads the web config, reads the token, binds the listener and, with
    /// `--demo`, starts the simulator.
    pub async fn start(mut config: Config) -> Result<Self, StartError> {
        let descriptor_limit = raise_descriptor_limit();
        // An empty path means no web configuration, as in exporter-toolkit.
        let web_config_file = config
            .web_config_file
            .as_ref()
            .filter(|path| !path.as_os_str().is_empty());
        let web_config = match web_config_file {
            Some(path) => {
                let watcher =
                    WebConfigWatcher::load(path).map_err(|source| StartError::WebConfig {
                        path: path.clone(),
                        source,
                    })?;
                let current = watcher.handle().current();
                tracing::info!(
                    file = %path.display(),
                    tls = current.is_tls(),
                    basic_auth = current.basic_auth().is_some(),
                    "loaded --web.config.file"
                );
                Some(watcher)
            }
            None => None,
        };
        let mut demo = None;
        let telemetry = Telemetry::new();
        let accounts = if let Some(path) = &config.config_file {
            let accounts =
                crate::config_file::load(path, &config).map_err(StartError::ConfigFile)?;
            tracing::info!(
                file = %path.display(),
                accounts = accounts.len(),
                targets = crate::config_file::target_count(&accounts),
                "loaded --config.file"
            );
            accounts
        } else if config.demo {
            let (server, accounts) = start_demo(&mut config).await?;
            demo = Some(server);
            accounts
        } else {
            flag_accounts(&config)?
        };
        warn_if_path_twice(&config);
        for account in &accounts {
            let (source, what) = match &account.auth {
                Auth::Token { source, .. } => (source, "token"),
                Auth::Login(c) => (&c.secret, "secret"),
            };
            if let (true, TokenSource::File(path)) = (source.readable_by_others(), source) {
                tracing::warn!(
                    account = %account.name,
                    file = %path.display(),
                    mode = %file_mode(path),
                    "the {what} file can be read by other users; restrict it to mode 0600 or 0640 (chmod 600 FILE)"
                );
            }
            warn_if_cleartext(account, config.demo);
        }
        telemetry.config_loaded(true);
        let web_config = web_config.map(|watcher| {
            watcher.with_reload_gauge(telemetry.web_config_last_reload_successful.clone())
        });
        let state = Arc::new(State::with_collectors(config.collectors()));
        let liveness = Liveness::new();
        let limits = Limits {
            image_types: config.limit_image_types as usize,
            datacenters: config.limit_datacenters as usize,
            label_length: config.limit_label_length as usize,
        };
        let shard = Shard::from_flags(&config).map_err(StartError::Shard)?;
        telemetry.set_shard(shard.index, shard.total);
        telemetry.demo_mode.set(i64::from(config.demo));
        let overview = Arc::new(std::sync::RwLock::new(effective_configuration(
            &config, shard, &accounts,
        )));
        let scheduler = Scheduler::new(Arc::clone(&state), telemetry.clone(), limits, shard);
        let names = Arc::new(AccountNames::new(&accounts));
        let (reload_tx, reloads) = mpsc::unbounded_channel();
        let reloader = Arc::new(
            Reloader::new(
                config.config_file.clone(),
                config.clone(),
                Arc::clone(&names),
                telemetry.clone(),
                reload_tx,
            )
            .on_applied({
                // A reload logs the accounts it applied, as the start does, and the
                // landing page shows them from then on.
                let (config, overview) = (config.clone(), Arc::clone(&overview));
                move |accounts| {
                    let new = effective_configuration(&config, shard, accounts);
                    *overview.write().unwrap_or_else(|e| e.into_inner()) = new;
                }
            }),
        );
        let mut server = if config.systemd_socket {
            Server::from_systemd().map_err(StartError::SystemdSocket)?
        } else {
            Server::bind_all(&config.listen_address)
                .await
                .map_err(|(address, source)| StartError::Bind { address, source })?
        };
        let reserved = DESCRIPTORS_RESERVED
            + server.listener_count()
            + accounts
                .iter()
                .map(|a| a.concurrency as usize)
                .sum::<usize>();
        let cap = connection_cap(config.max_connections as usize, descriptor_limit, reserved);
        server = server.with_max_connections(cap);
        // Reload requests that wait hold connections no one may close to make
        // room: at most half of them, so that probes and scrapes fit (under a
        // cap of one connection, one waiter still may: a reload must be
        // possible at all).
        let reload_queue = ReloadQueue::new((cap / 2).clamp(1, MAX_RELOAD_WAITERS));
        let routes = Arc::new(
            Routes::new(
                Arc::clone(&state),
                telemetry,
                Arc::clone(&liveness),
                config.telemetry_path.clone(),
                config.max_requests as usize,
            )
            .with_overview(overview)
            .with_accounts(names)
            .with_lifecycle(reload_queue.clone(), config.enable_lifecycle)
            .with_prefixes(config.route_prefix(), config.link_prefix()),
        );
        if let Some(watcher) = &web_config {
            server = server.with_web_config(watcher.handle());
        }
        Ok(Exporter {
            server,
            routes,
            scheduler,
            accounts,
            liveness,
            demo,
            web_config,
            reloader,
            reload_queue,
            reloads,
            state,
        })
    }

    /// The published state (for tests that look at a target's schedule).
    pub fn state(&self) -> Arc<State> {
        Arc::clone(&self.state)
    }

    /// The address the exporter serves on.
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// Refreshes and serves until `shutdown` completes; then stops accepting,
    /// lets scrapes in flight finish and stops the scheduler. Installs the
    /// signal handlers first (see [`Exporter::run_with_signals`]).
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        self.run_with_signals(Signals::install(), shutdown).await;
    }

    /// As [`Exporter::run`], with handlers `main` installed before anything else.
    pub async fn run_with_signals(self, signals: Signals, shutdown: impl Future<Output = ()>) {
        let (stop_tx, stop_rx) = watch::channel(());
        let stopped = move || {
            let mut rx = stop_rx.clone();
            async move {
                let _ = rx.changed().await;
            }
        };
        // In the demo, images come and go so that a dashboard shows movement.
        let evolution = self
            .demo
            .as_ref()
            .map(|sim| tokio::spawn(sim.simulator().evolve_every(DEMO_EVOLVE_EVERY)));
        let demo = self.demo.map(|sim| tokio::spawn(sim.serve(stopped())));
        // SIGHUP reads --config.file again (when there is one) and the web
        // configuration; the token file is read again at every pass anyway.
        // Both coalesce: however many signals arrive, one reload runs and at
        // most one waits.
        let queue = self.reload_queue;
        let web_reload = self.web_config.as_ref().map(WebConfigWatcher::reloader);
        let hangups = {
            let (queue, stopped) = (queue.clone(), stopped());
            async move {
                tokio::pin!(stopped);
                loop {
                    tokio::select! {
                        _ = &mut stopped => return,
                        _ = signals.hangup() => {}
                    }
                    if let Some(reload) = &web_reload {
                        reload.notify_one();
                    }
                    queue.request();
                }
            }
        };
        tokio::spawn(hangups);
        tokio::spawn(queue.clone().run(self.reloader, stopped()));
        // Reload requests waiting over HTTP are answered as soon as shutdown
        // starts, rather than holding the drain.
        let shutdown = async move {
            shutdown.await;
            queue.close();
        };
        let scheduler = spawn_refresher(self.scheduler.run(
            self.accounts,
            self.liveness,
            self.reloads,
            stopped(),
        ));
        if let Some(watcher) = self.web_config {
            tokio::spawn(watcher.run(stopped()));
        }
        for address in self.server.local_addrs() {
            tracing::info!(address = %address, tls = self.server.is_tls(), "listening");
        }
        self.server.serve(self.routes, shutdown).await;
        drop(stop_tx);
        let _ = tokio::time::timeout(Duration::from_secs(2), scheduler).await;
        if let Some(evolution) = evolution {
            evolution.abort();
        }
        if let Some(demo) = demo {
            let _ = tokio::time::timeout(Duration::from_secs(2), demo).await;
        }
        tracing::info!("stopped");
    }
}

/// Descriptors kept for everything but client connections and the upstream
/// client's: standard streams, the runtime's and the refresh thread's event
/// loops, the signal pipe, file notifications, token and configuration files
/// being read, DNS. An idle exporter holds about 16.
const DESCRIPTORS_RESERVED: usize = 32;

/// Raises the soft limit of open descriptors to the hard limit and returns it:
/// the default soft limit of 1,024 is what a thousand idle clients exhaust, and
/// with it the scrapes and the upstream client. `None` when it cannot be read.
fn raise_descriptor_limit() -> Option<u64> {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => {
            tracing::debug!(limit, "open descriptor limit");
            Some(limit)
        }
        Err(err) => {
            tracing::warn!(error = %err, "cannot raise the open descriptor limit");
            None
        }
    }
}

/// Reload requests waiting at once at most (fewer under a small connection
/// cap): a client or two reload the configuration, and beyond this many, one is
/// answered at once (202) instead of held (see [`crate::reloads`]).
const MAX_RELOAD_WAITERS: usize = 64;

/// The connections held at most: `--web.max-connections`, or fewer when the
/// descriptor limit cannot hold that many beside the `reserved` ones (the
/// upstream client's connections, files, listeners), so that idle clients can
/// never take the descriptors a scrape or a refresh needs. Says so once.
fn connection_cap(max_connections: usize, limit: Option<u64>, reserved: usize) -> usize {
    let Some(limit) = limit else {
        return max_connections;
    };
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    // A limit below the reserve still leaves a few connections: serving
    // nothing would be worse than running short.
    let fits = limit.saturating_sub(reserved).max((limit / 4).max(1));
    if fits >= max_connections {
        return max_connections;
    }
    tracing::warn!(
        descriptor_limit = limit,
        max_connections,
        cap = fits,
        reserved,
        "the open descriptor limit is too low for --web.max-connections: holding at most {fits} client connections; raise the hard limit (LimitNOFILE= in systemd, ulimit -Hn) or lower --web.max-connections"
    );
    fits
}

/// The effective configuration, logged once at start and shown on the landing
/// page: per account, where its data comes from, which datacenters, how often
/// and how it authenticates; then what the process shares. Never a secret (a
/// token's or secret's source is named, not its value; a proxy's credentials
/// are dropped).
fn effective_configuration(
    config: &Config,
    shard: Shard,
    accounts: &[Account],
) -> crate::routes::Overview {
    let mut settings: Vec<Setting> = Vec::new();
    // Every account in the log; the first MAX_ACCOUNTS_SHOWN on the landing page.
    for (i, account) in accounts.iter().enumerate() {
        let a = describe_account(account);
        tracing::info!(
            account = %account.name,
            upstream = %a.upstream,
            datacenters = %a.datacenters,
            filters = %a.filters,
            refresh_interval_seconds = account.refresh.interval.as_secs_f64(),
            page_size = account.client.page_size,
            concurrency = account.concurrency,
            auth = %a.auth,
            "account"
        );
        if i >= MAX_ACCOUNTS_SHOWN {
            continue;
        }
        let filters = if a.filters == "none" {
            String::new()
        } else {
            format!("; filters {}", a.filters)
        };
        settings.push(Setting {
            name: format!("Account {}", account.name),
            value: format!(
                "{}; datacenters {}; every {}; {}{filters}",
                a.upstream,
                a.datacenters,
                humantime::format_duration(account.refresh.interval),
                a.auth,
            ),
            logs_in: matches!(account.auth, Auth::Login(_)).then(|| account.name.clone()),
        });
    }
    if accounts.len() > MAX_ACCOUNTS_SHOWN {
        settings.push(Setting::new(
            "More accounts",
            format!(
                "{} more (the start-up log lists every one)",
                accounts.len() - MAX_ACCOUNTS_SHOWN
            ),
        ));
    }
    let proxy = match &config.account.api.proxy_url {
        Some(url) => format!("{} (--api.proxy-url)", without_credentials(url)),
        None => [
            "HTTPS_PROXY",
            "https_proxy",
            "HTTP_PROXY",
            "http_proxy",
            "ALL_PROXY",
            "all_proxy",
        ]
        .into_iter()
        .find_map(|var| {
            let value = std::env::var(var).ok().filter(|v| !v.is_empty())?;
            let shown = url::Url::parse(&value)
                .map_or_else(|_| "(not a URL)".to_string(), |u| without_credentials(&u));
            Some(format!("{shown} (from {var})"))
        })
        .unwrap_or_else(|| "none".to_string()),
    };
    let shard_text = format!("{} of {}", shard.index, shard.total);
    let source = match &config.config_file {
        Some(path) => format!("--config.file {}", path.display()),
        None if config.demo => "--demo (a built-in simulated upstream)".to_string(),
        None => "flags".to_string(),
    };
    tracing::info!(
        configuration = %source,
        accounts = accounts.len(),
        proxy = %proxy,
        demo = config.demo,
        shard = %shard_text,
        "configuration"
    );
    settings.push(Setting::new("Configuration", source));
    settings.push(Setting::new("Proxy", proxy));
    settings.push(Setting::new(
        "Demo mode",
        if config.demo { "on" } else { "off" },
    ));
    settings.push(Setting::new("Shard", shard_text));
    crate::routes::Overview {
        demo: config.demo,
        settings,
    }
}

/// Accounts the landing page lists one by one; the log lists every one.
const MAX_ACCOUNTS_SHOWN: usize = 20;

/// One account's settings as people read them.
struct AccountText {
    upstream: String,
    datacenters: String,
    filters: String,
    auth: String,
}

fn describe_account(account: &Account) -> AccountText {
    let datacenters = if account.datacenters.is_empty() {
        "discovered (every datacenter the account has images in)".to_string()
    } else {
        account.datacenters.join(",")
    };
    let f = &account.client.filters;
    let filters: Vec<String> = [
        f.image_type.as_ref().map(|t| format!("imageType={t}")),
        f.image_name.as_ref().map(|n| format!("imageName={n}")),
        f.status.map(|s| format!("status={}", s.label())),
    ]
    .into_iter()
    .flatten()
    .collect();
    AccountText {
        upstream: without_credentials(&account.client.url),
        datacenters,
        filters: if filters.is_empty() {
            "none".to_string()
        } else {
            filters.join(",")
        },
        auth: account.auth.describe(),
    }
}

/// The one account the flags describe, made as the file's accounts are
/// ([`crate::account::complete`] and [`crate::account::finish`]): its client is
/// built once, so that a setting reqwest refuses stops the start instead of a
/// target, and every problem is printed, each naming its flag.
pub fn flag_accounts(config: &Config) -> Result<Vec<Account>, StartError> {
    let entry = config.account.of_flags();
    let draft = crate::account::complete(
        crate::account::DEFAULT_ACCOUNT,
        &crate::account::Layers::flags(&entry),
        Origin::Flags,
    )
    .map_err(StartError::Flags)?;
    let account = crate::account::finish(draft, Origin::Flags, &Telemetry::new())
        .map_err(|problems| StartError::Flags(problems.join("\n")))?;
    Ok(vec![account])
}

/// A URL without its user and password, for logs and pages.
fn without_credentials(url: &url::Url) -> String {
    let mut url = url.clone();
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url.to_string()
}

/// A file's permission bits in octal (`0644`), or `unknown`.
fn file_mode(path: &std::path::Path) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path) {
            return format!("{:04o}", meta.permissions().mode() & 0o7777);
        }
    }
    let _ = path;
    "unknown".to_string()
}

/// Warns when `--api.url` already ends in `--api.path`, the most common
/// mistake: every request would then ask for the path twice and get a 404.
fn warn_if_path_twice(config: &Config) {
    let api = &config.account.api;
    let (Some(url), Some(path)) = (&api.url, &api.path) else {
        return;
    };
    let base = url.path().trim_end_matches('/');
    let path = path.trim_end_matches('/');
    if !path.is_empty() && base.ends_with(path) {
        tracing::warn!(
            url = %join_path(url, path),
            "--api.url already ends in --api.path, so the path is asked twice: --api.url should be the base URL; the path goes in --api.path"
        );
    }
}

/// `--config.check`: loads and checks `--config.file` as a start would (token
/// files readable, TLS files loadable), prints `config OK: …` or every problem
/// with its file and line, and returns the exit status: 0, or 2.
pub fn check_config(config: &Config) -> i32 {
    let Some(path) = &config.config_file else {
        eprintln!("--config.check: give --config.file too");
        return 2;
    };
    match crate::config_file::load(path, config) {
        Ok(accounts) => {
            println!(
                "config OK: {} accounts, {} targets",
                accounts.len(),
                crate::config_file::target_count(&accounts)
            );
            0
        }
        Err(err) => {
            for problem in &err.0 {
                eprintln!("{problem}");
            }
            2
        }
    }
}

/// The `--demo` upstream: a simulator serving two accounts, `prod` (the
/// datacenters of `--datacenters`, else discovered) and `staging` (smaller,
/// always discovered), each opened by a token of its own, so that the landing
/// page and the dashboard show the account dimension.
async fn start_demo(config: &mut Config) -> Result<(SimServer, Vec<Account>), StartError> {
    let token = |name: &str| format!("demo-{name}-{:016x}", crate::random_u64());
    let (prod_token, staging_token) = (token("prod"), token("staging"));
    // The prod account logs in as a real one does, with a uuid and a secret;
    // staging keeps a static token, the other way to authenticate.
    let prod_secret = format!("demo-secret-{:016x}", crate::random_u64());
    let simulator = Simulator::with_accounts(
        vec![
            SimAccount::new(
                "prod",
                &prod_token,
                sim::generate(&sim::GenerateOptions::default()),
            )
            .with_login(DEMO_UUID, &prod_secret),
            SimAccount::new(
                "staging",
                &staging_token,
                sim::generate(&sim::GenerateOptions {
                    images: 120,
                    datacenters: vec!["HZ".into(), "SG".into()],
                    seed: 2,
                    ..Default::default()
                }),
            ),
        ],
        sim::AuthStyle::default(),
    )
    .expect("two named accounts with distinct tokens");
    // Short-lived tokens, so that a renewal shows within the first minute.
    simulator.set_token_lifetime(DEMO_TOKEN_LIFETIME);
    let server = SimServer::bind(SocketAddr::from(([127, 0, 0, 1], 0)), simulator)
        .await
        .map_err(StartError::Demo)?;
    let url: url::Url = format!("http://{}", server.local_addr())
        .parse()
        .expect("a socket address makes a valid URL");
    tracing::info!(upstream = %url, accounts = "prod,staging", "demo mode: serving a simulated upstream");
    let auth_path = config.account.api.auth_path.as_deref();
    let auth_url = join_path(&url, auth_path.unwrap_or(DEFAULT_AUTH_PATH));
    config.account.api.url = Some(url);
    let fixed = |raw: &str| Token::new(raw).map_err(|e| StartError::Flags(e.to_string()));
    // The demo's accounts are the flags' account, renamed, with made-up secrets.
    let mut prod = crate::account::with_settings(
        "prod",
        &crate::account::Layers::flags(&config.account),
        Origin::Flags,
        Auth::Login(Credentials {
            uuid: DEMO_UUID.into(),
            secret: TokenSource::Fixed(fixed(&prod_secret)?),
            secret_from: "the demo".into(),
            url: auth_url,
        }),
    )
    .map_err(StartError::Flags)?;
    // The demo's images change every few seconds and a first look should not
    // wait a minute for the first pass: it refreshes every 10 s at most.
    if prod.refresh.interval > DEMO_MAX_INTERVAL {
        prod.refresh.interval = DEMO_MAX_INTERVAL;
    }
    let mut staging = prod.clone();
    staging.name = "staging".into();
    staging.auth = Auth::Token {
        source: TokenSource::Fixed(fixed(&staging_token)?),
        from: "the demo".into(),
    };
    staging.datacenters = Vec::new();
    staging.concurrency = staging.concurrency.min(2);
    Ok((server, vec![prod, staging]))
}

/// The account ID the demo's prod account logs in as.
const DEMO_UUID: &str = "A10000001";

/// How long the demo simulator's tokens last.
const DEMO_TOKEN_LIFETIME: Duration = Duration::from_secs(30);

/// Warns when an account's token would travel unencrypted: an `http://` API
/// URL, or an `http://` proxy for an `http://` URL.
fn warn_if_cleartext(account: &Account, demo: bool) {
    let client = &account.client;
    if client.tls.insecure_skip_verify {
        tracing::warn!(
            account = %account.name,
            "--api.tls.insecure-skip-verify: the upstream's certificate is not checked; anyone on the path can read the token"
        );
    }
    if let Some(proxy) = &client.proxy_url {
        if proxy.scheme() == "http" && client.url.scheme() == "http" {
            tracing::warn!(account = %account.name, "--api.proxy-url is http:// and so is --api.url: the access token reaches the proxy in clear text");
        }
    }
    if demo || client.url.scheme() != "http" {
        return;
    }
    tracing::warn!(
        account = %account.name,
        url = %client.url,
        "--api.url is http://: the access token is sent unencrypted; use https://"
    );
    for var in ["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"] {
        if std::env::var_os(var).is_some_and(|v| !v.is_empty()) {
            tracing::warn!(
                account = %account.name,
                variable = var,
                "a proxy is set for http:// URLs: the access token reaches the proxy in clear text"
            );
        }
    }
}

/// Runs the refresh loop on a thread of its own, in a single-threaded runtime,
/// and returns a future that completes when the loop has ended.
///
/// Every upstream request, its connection, the decoding and the aggregation then
/// stay on one thread. On a multi-threaded runtime, each page handed work between
/// workers several times (connection task, request task, paging task), and those
/// wake-ups cost more CPU than decoding the page. Scrapes are served by the
/// caller's runtime and never queue behind a page being decoded. Should the
/// thread not start, the loop runs on the caller's runtime instead.
fn spawn_refresher(task: impl Future<Output = ()> + Send + 'static) -> impl Future<Output = ()> {
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let (task_tx, task_rx) = std::sync::mpsc::sync_channel(1);
    // The thread logs where the caller logs (its subscriber may be the thread's own).
    let dispatch = tracing::dispatcher::get_default(|current| current.clone());
    let thread = std::thread::Builder::new()
        .name("refresh".into())
        .spawn(move || {
            let _done = done_tx;
            let _log = tracing::dispatcher::set_default(&dispatch);
            let Ok(task) = task_rx.recv() else { return };
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime.block_on(task),
                // Dropping the task clears the scheduler's liveness: /healthz fails.
                Err(err) => tracing::error!(error = %err, "cannot start the refresh runtime"),
            }
        });
    let fallback = match thread {
        Ok(_) => {
            // The thread holds the receiver until it has taken the task.
            let _ =
                task_tx.send(Box::pin(task) as std::pin::Pin<Box<dyn Future<Output = ()> + Send>>);
            None
        }
        Err(err) => {
            tracing::warn!(error = %err, "cannot start the refresh thread; refreshing on the main runtime");
            Some(tokio::spawn(task))
        }
    };
    async move {
        match fallback {
            Some(handle) => {
                let _ = handle.await;
            }
            None => {
                let _ = done_rx.await;
            }
        }
    }
}

#[cfg(test)]
mod descriptor_tests {
    use super::connection_cap;

    #[test]
    fn the_connection_cap_fits_the_descriptor_limit() {
        assert_eq!(connection_cap(512, None, 37), 512);
        assert_eq!(connection_cap(512, Some(1_048_576), 37), 512);
        assert_eq!(connection_cap(512, Some(64), 37), 27);
        // Below the reserve, a quarter of the limit still serves.
        assert_eq!(connection_cap(512, Some(40), 37), 10);
        assert_eq!(connection_cap(5, Some(64), 37), 5);
    }
}
