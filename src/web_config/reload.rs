//! Reloading: the configuration in force, published to the server, and the task
//! that rebuilds it when the file or a file it names changes.
//!
//! Changes are noticed at once through file notifications on the directories
//! holding the files (a directory, because deployments replace a file by
//! renaming a new one over it, and Kubernetes swaps a symbolic link), and by a
//! poll every [`POLL_INTERVAL`] where notifications do not arrive (network file
//! systems, a notification limit reached). Either way the files are read again
//! and compared by fingerprint, so a notification about some other file costs a
//! read and nothing else.

use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher as _};
use prometheus::IntGauge;
use tokio::sync::{watch, Notify};

use super::schema::{read_sources, Fingerprint};
use super::{build, invalid, WebConfig, WebConfigError};

/// How often the files are read again when no notification came.
pub const POLL_INTERVAL: Duration = Duration::from_secs(3);

/// Quiet time awaited after a notification before reading: a write comes as a
/// burst of events (truncate, write, close, rename), and the file is read once
/// it is over rather than half-written.
const SETTLE: Duration = Duration::from_millis(30);

/// Most quiet times awaited in a row: in a directory where some other file
/// changes all the time, the files are still read this often (about 0.3 s).
const SETTLE_ROUNDS: usize = 10;

/// Read access to the configuration in force; cheap to clone.
#[derive(Clone)]
pub struct WebConfigHandle {
    current: watch::Receiver<Arc<WebConfig>>,
}

impl fmt::Debug for WebConfigHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebConfigHandle")
            .field("current", &*self.current.borrow())
            .finish()
    }
}

impl WebConfigHandle {
    /// The configuration in force now.
    pub fn current(&self) -> Arc<WebConfig> {
        Arc::clone(&self.current.borrow())
    }
}

/// Watches the web config file and the files it names, and reloads on change.
///
/// It owns the fingerprint of what was last read, good or bad, so that a broken
/// file is reported once rather than at every poll, and is tried again as soon
/// as anything changes. Whether TLS is on is fixed at start.
pub struct WebConfigWatcher {
    path: PathBuf,
    tls: bool,
    fingerprint: Fingerprint,
    dirs: Vec<PathBuf>,
    poll_interval: Duration,
    publish: watch::Sender<Arc<WebConfig>>,
    last_reload_successful: Option<IntGauge>,
    /// Woken by file notifications and by [`WebConfigWatcher::reloader`] (SIGHUP).
    changed: Arc<Notify>,
}

impl WebConfigWatcher {
    /// Loads the file a first time; an error here should stop the exporter.
    pub fn load(path: impl Into<PathBuf>) -> Result<Self, WebConfigError> {
        let path = path.into();
        let (fingerprint, sources) = read_sources(&path);
        let sources = sources?;
        let dirs = sources.dirs.clone();
        let config = build(sources, None)?;
        log_warnings(&path, &config);
        let tls = config.is_tls();
        let (publish, _) = watch::channel(Arc::new(config));
        Ok(WebConfigWatcher {
            path,
            tls,
            fingerprint,
            dirs,
            poll_interval: POLL_INTERVAL,
            publish,
            last_reload_successful: None,
            changed: Arc::new(Notify::new()),
        })
    }

    /// Reads the files this often when no notification came, instead of
    /// [`POLL_INTERVAL`].
    pub fn with_poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// Sets `gauge` (`finovy_web_config_last_reload_successful`) to 1 now, and
    /// after every reload to whether it succeeded.
    pub fn with_reload_gauge(mut self, gauge: IntGauge) -> Self {
        gauge.set(1);
        self.last_reload_successful = Some(gauge);
        self
    }

    /// Wakes the watcher to read the file now (SIGHUP does), as a notification
    /// would; an unchanged file is left as it is.
    pub fn reloader(&self) -> Arc<Notify> {
        Arc::clone(&self.changed)
    }

    /// A handle on the configuration in force, for the server.
    pub fn handle(&self) -> WebConfigHandle {
        WebConfigHandle {
            current: self.publish.subscribe(),
        }
    }

    /// Watches and reloads until `shutdown` completes.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        let changed = Arc::clone(&self.changed);
        let mut notifications = Notifications::start(&self.path, Arc::clone(&changed));
        notifications.watch(&self.dirs);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = changed.notified() => {
                    for _ in 0..SETTLE_ROUNDS {
                        if tokio::time::timeout(SETTLE, changed.notified()).await.is_err() {
                            break;
                        }
                    }
                }
                _ = tokio::time::sleep(self.poll_interval) => {}
            }
            self.check().await;
            notifications.watch(&self.dirs);
        }
    }

    /// Reads the files; if anything changed, builds and publishes the new
    /// configuration, or keeps the last good one and says why.
    async fn check(&mut self) {
        let path = self.path.clone();
        let Ok((fingerprint, sources)) =
            tokio::task::spawn_blocking(move || read_sources(&path)).await
        else {
            return;
        };
        if fingerprint == self.fingerprint {
            return;
        }
        self.fingerprint = fingerprint;
        let previous = self.publish.borrow().clone();
        let result = sources.and_then(|sources| {
            self.dirs = sources.dirs.clone();
            build(sources, Some(&previous)).and_then(|c| self.check_mode(c))
        });
        let ok = result.is_ok();
        match result {
            Ok(config) => {
                tracing::info!(
                    file = %self.path.display(),
                    tls = config.is_tls(),
                    basic_auth = config.basic_auth().is_some(),
                    "reloaded --web.config.file"
                );
                log_warnings(&self.path, &config);
                self.publish.send_replace(Arc::new(config));
            }
            Err(err) => tracing::error!(
                file = %self.path.display(),
                error = %err,
                "cannot reload --web.config.file; keeping the last good configuration"
            ),
        }
        if let Some(gauge) = &self.last_reload_successful {
            gauge.set(i64::from(ok));
        }
    }

    /// TLS on or off is decided at start: a reload cannot silently turn an
    /// HTTPS endpoint into a plain-text one, nor the reverse.
    fn check_mode(&self, config: WebConfig) -> Result<WebConfig, WebConfigError> {
        if config.is_tls() == self.tls {
            return Ok(config);
        }
        Err(invalid(
            "tls_server_config",
            if self.tls {
                "TLS was on at start; turning it off needs a restart"
            } else {
                "TLS was off at start; turning it on needs a restart"
            },
        ))
    }
}

fn log_warnings(path: &Path, config: &WebConfig) {
    for warning in config.warnings() {
        tracing::warn!(file = %path.display(), "--web.config.file: {warning}");
    }
}

/// File notifications for the directories of the watched files; without them
/// (none available, or a limit reached) the poll alone notices changes.
struct Notifications {
    watcher: Option<notify::RecommendedWatcher>,
    watched: Vec<PathBuf>,
}

impl Notifications {
    fn start(path: &Path, changed: Arc<Notify>) -> Self {
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            // Reading a file is an access event too: reacting to those would
            // make every read of the files trigger another one.
            if event.is_ok_and(|e| !matches!(e.kind, EventKind::Access(_))) {
                changed.notify_one();
            }
        });
        let watcher = match watcher {
            Ok(watcher) => Some(watcher),
            Err(err) => {
                tracing::warn!(
                    file = %path.display(),
                    error = %err,
                    "no file notifications for --web.config.file; changes are noticed by polling"
                );
                None
            }
        };
        Notifications {
            watcher,
            watched: Vec::new(),
        }
    }

    /// Adds watches for directories not watched yet (a watch on a directory
    /// that is no longer needed costs nothing worth removing it for).
    fn watch(&mut self, dirs: &[PathBuf]) {
        let Some(watcher) = self.watcher.as_mut() else {
            return;
        };
        for dir in dirs {
            if self.watched.contains(dir) {
                continue;
            }
            match watcher.watch(dir, RecursiveMode::NonRecursive) {
                Ok(()) => self.watched.push(dir.clone()),
                Err(err) => tracing::debug!(
                    dir = %dir.display(),
                    error = %err,
                    "cannot watch a directory of --web.config.file; polling it"
                ),
            }
        }
    }
}
