//! Signals, handled from the first instruction of `main` to the last.
//!
//! SIGHUP's default action ends a process, and systemd counts a death by SIGHUP
//! as a clean exit that it does not restart: a reload asked while the exporter
//! was still loading its accounts file used to stop it for good. So `main`
//! calls [`Signals::install`] before it parses a flag or reads a file. From
//! then on SIGHUP means "reload" (coalesced: see [`crate::reloads`]) and the
//! other signals whose default action would end the process are logged and
//! ignored, except SIGTERM and SIGINT, which stop it: during start-up by their
//! default action, once serving through [`shutdown_signal`].
//!
//! A handler, once installed, is never removed (tokio keeps it for the life of
//! the process), so these signals cannot end the process during shutdown either.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// At most one log line per signal and per this time: a storm of signals would
/// otherwise flood the log. The lines left out are counted in the next one.
const LOG_EVERY: Duration = Duration::from_secs(1);

/// The handlers installed by [`Signals::install`]; SIGHUPs received before
/// anyone waits are kept as one.
pub struct Signals {
    hangups: Arc<Notify>,
}

impl Signals {
    /// Installs the handlers. Call it inside a tokio runtime that has its I/O
    /// driver (`enable_all`); outside one, or where a signal cannot be handled,
    /// that signal keeps its default action (and a line says so at debug level).
    pub fn install() -> Self {
        let hangups = Arc::new(Notify::new());
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let kinds = [
                ("SIGHUP", SignalKind::hangup()),
                ("SIGUSR1", SignalKind::user_defined1()),
                ("SIGUSR2", SignalKind::user_defined2()),
                ("SIGQUIT", SignalKind::quit()),
                ("SIGALRM", SignalKind::alarm()),
                ("SIGPIPE", SignalKind::pipe()),
            ];
            if tokio::runtime::Handle::try_current().is_err() {
                tracing::debug!("no async runtime: signals keep their default actions");
                return Signals { hangups };
            }
            for (name, kind) in kinds {
                let Ok(mut stream) = signal(kind) else {
                    tracing::debug!(signal = name, "cannot handle signal");
                    continue;
                };
                let hangups = Arc::clone(&hangups);
                tokio::spawn(async move {
                    let mut log = RateLimitedLog::new(LOG_EVERY);
                    while stream.recv().await.is_some() {
                        if name == "SIGHUP" {
                            // One stored wake-up at most, however many arrive.
                            hangups.notify_one();
                        }
                        let Some(repeated) = log.admit() else {
                            continue;
                        };
                        if name == "SIGHUP" {
                            tracing::info!(
                                signal = name,
                                repeated,
                                "signal received: reloading --config.file, if there is one (the token file is read at every pass, the web configuration by its watcher)"
                            );
                        } else {
                            tracing::info!(
                                signal = name,
                                repeated,
                                "signal received and ignored (only SIGTERM and SIGINT stop the exporter)"
                            );
                        }
                    }
                });
            }
        }
        Signals { hangups }
    }

    /// Completes at the next SIGHUP, or at once if one arrived since the last
    /// call (any number of them count as one).
    pub async fn hangup(&self) {
        self.hangups.notified().await;
    }
}

/// Admits one log line per period and counts the others, so that what repeats
/// hundreds of times a second (a signal storm, a failing `accept`) cannot flood
/// the log.
pub(crate) struct RateLimitedLog {
    every: Duration,
    last: Option<Instant>,
    left_out: u64,
}

impl RateLimitedLog {
    /// One line per `every` at most.
    pub(crate) fn new(every: Duration) -> Self {
        RateLimitedLog {
            every,
            last: None,
            left_out: 0,
        }
    }

    /// `Some(n)` when a line may be written now, `n` being how many were left
    /// out since the last one; `None` when this one is left out.
    pub(crate) fn admit(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < self.every)
        {
            self.left_out += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.left_out))
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_storm_of_lines_is_cut_to_one_a_second_and_counted() {
        let mut log = RateLimitedLog::new(LOG_EVERY);
        assert_eq!(log.admit(), Some(0));
        for _ in 0..300 {
            assert_eq!(log.admit(), None);
        }
        log.last = Some(Instant::now() - LOG_EVERY);
        assert_eq!(log.admit(), Some(300));
    }
}
