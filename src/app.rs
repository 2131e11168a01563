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

use tokio::sync::watch;

use crate::account::Account;
use crate::config::Config;
use crate::routes::Routes;
use crate::secret::{Token, TokenError, TokenSource};
use crate::server::Server;
use crate::sim::{self, SimServer, Simulator};
use crate::state::State;
use crate::target::{Limits, Liveness, Scheduler};
use crate::telemetry::Telemetry;
use crate::web_config::{WebConfigError, WebConfigWatcher};

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
    /// No usable token (a configuration error: exit status 2).
    #[error("--api.token-file: {0}")]
    TokenFile(TokenError),
    /// No usable token from the environment (exit status 2).
    #[error("{0}")]
    Token(TokenError),
    /// The listen address cannot be bound.
    #[error("--web.listen-address: cannot listen on {address}: {source}")]
    Bind {
        /// What the user asked for.
        address: String,
        /// Why.
        source: std::io::Error,
    },
    /// The upstream client cannot be built from its settings (exit status 2).
    #[error("{0}")]
    Client(#[from] crate::upstream::ClientError),
    /// The sharding flags do not name a shard (exit status 2).
    #[error("{0}")]
    Shard(String),
    /// The demo simulator cannot start.
    #[error("cannot start the demo simulator: {0}")]
    Demo(std::io::Error),
}

impl StartError {
    /// Exit status: 2 for configuration errors, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            StartError::WebConfig { .. }
            | StartError::TokenFile(_)
            | StartError::Token(_)
            | StartError::Shard(_)
            | StartError::Client(_) => 2,
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
}

impl Exporter {
    /// Loads the web config, reads the token, binds the listener and, with
    /// `--demo`, starts the simulator.
    pub async fn start(mut config: Config) -> Result<Self, StartError> {
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
        let token = if config.demo {
            let demo_token = format!("demo-{:016x}", crate::random_u64());
            let simulator = Simulator::new(
                sim::generate(&sim::GenerateOptions::default()),
                sim::SimOptions {
                    token: Some(demo_token.clone()),
                    ..Default::default()
                },
            );
            let server = SimServer::bind(SocketAddr::from(([127, 0, 0, 1], 0)), simulator)
                .await
                .map_err(StartError::Demo)?;
            config.api_url = format!("http://{}", server.local_addr())
                .parse()
                .expect("a socket address makes a valid URL");
            tracing::info!(upstream = %config.api_url, "demo mode: serving a simulated upstream");
            demo = Some(server);
            TokenSource::Fixed(Token::new(&demo_token).map_err(StartError::Token)?)
        } else {
            TokenSource::from_config(config.token_file.as_deref()).map_err(|e| {
                match config.token_file {
                    Some(_) => StartError::TokenFile(e),
                    None => StartError::Token(e),
                }
            })?
        };
        if token.readable_by_others() {
            tracing::warn!(
                "the token file can be read by other users; restrict it to mode 0600 or 0640"
            );
        }

        warn_if_cleartext(&config);

        let telemetry = Telemetry::new();
        let accounts = vec![Account::from_flags(&config, token)];
        // Every client is built once here, so that a setting reqwest refuses stops
        // the start instead of a target.
        for account in &accounts {
            crate::upstream::ApiClient::new(
                &account.name,
                account.client.clone(),
                account.concurrency,
                telemetry.clone(),
            )?;
        }
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
        let shard = config.shard().map_err(StartError::Shard)?;
        telemetry.set_shard(shard);
        let scheduler = Scheduler::new(Arc::clone(&state), telemetry.clone(), limits, shard);
        let routes = Arc::new(Routes::new(
            state,
            telemetry,
            Arc::clone(&liveness),
            config.telemetry_path.clone(),
            config.max_requests as usize,
        ));
        let mut server = Server::bind(&config.listen_address)
            .await
            .map_err(|source| StartError::Bind {
                address: config.listen_address.to_string(),
                source,
            })?;
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
        })
    }

    /// The address the exporter serves on.
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// Refreshes and serves until `shutdown` completes; then stops accepting,
    /// lets scrapes in flight finish and stops the scheduler.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
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
        // SIGHUP: the token file is read again at every pass anyway; the web
        // configuration is re-read by its watcher.
        ignore_other_signals(|| {});
        let (_reload_tx, reloads) = tokio::sync::mpsc::unbounded_channel();
        let scheduler =
            spawn_refresher(
                self.scheduler
                    .run(self.accounts, self.liveness, reloads, stopped()),
            );
        if let Some(watcher) = self.web_config {
            tokio::spawn(watcher.run(stopped()));
        }
        tracing::info!(address = %self.server.local_addr(), tls = self.server.is_tls(), "listening");
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

/// Warns when the token would travel unencrypted: an `http://` API URL, or an
/// `http://` proxy from the environment for an `http://` URL.
fn warn_if_cleartext(config: &Config) {
    if config.tls_insecure_skip_verify {
        tracing::warn!(
            "--api.tls.insecure-skip-verify: the upstream's certificate is not checked; anyone on the path can read the token"
        );
    }
    if let Some(proxy) = &config.proxy_url {
        if proxy.scheme() == "http" && config.api_url.scheme() == "http" {
            tracing::warn!("--api.proxy-url is http:// and so is --api.url: the access token reaches the proxy in clear text");
        }
    }
    if config.demo || config.api_url.scheme() != "http" {
        return;
    }
    tracing::warn!(
        url = %config.api_url,
        "--api.url is http://: the access token is sent unencrypted; use https://"
    );
    for var in ["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"] {
        if std::env::var_os(var).is_some_and(|v| !v.is_empty()) {
            tracing::warn!(
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

/// Logs and otherwise ignores every signal whose default action would end the
/// process, but SIGTERM and SIGINT (which [`shutdown_signal`] handles) and those
/// no program can catch. SIGHUP calls `on_hangup` (re-read what can be re-read).
pub fn ignore_other_signals(on_hangup: impl Fn() + Send + Sync + 'static) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let on_hangup = Arc::new(on_hangup);
        let kinds = [
            ("SIGHUP", SignalKind::hangup()),
            ("SIGUSR1", SignalKind::user_defined1()),
            ("SIGUSR2", SignalKind::user_defined2()),
            ("SIGQUIT", SignalKind::quit()),
            ("SIGALRM", SignalKind::alarm()),
            ("SIGPIPE", SignalKind::pipe()),
        ];
        for (name, kind) in kinds {
            let Ok(mut stream) = signal(kind) else {
                tracing::debug!(signal = name, "cannot handle signal");
                continue;
            };
            let on_hangup = Arc::clone(&on_hangup);
            tokio::spawn(async move {
                while stream.recv().await.is_some() {
                    if name == "SIGHUP" {
                        tracing::info!(
                            signal = name,
                            "signal received: re-reading the token file and the web configuration"
                        );
                        on_hangup();
                    } else {
                        tracing::info!(signal = name, "signal received and ignored (only SIGTERM and SIGINT stop the exporter)");
                    }
                }
            });
        }
    }
    #[cfg(not(unix))]
    let _ = on_hangup;
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown signal received");
}
