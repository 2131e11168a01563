//! Reload requests, coalesced: one reload running and at most one pending,
//! whatever asks for them (SIGHUP, `POST /-/reload`) and however often.
//!
//! A reload reads `--config.file` and every file it names, and builds a client
//! per account: with thousands of accounts it takes seconds. Run once per
//! request, a storm of signals or HTTP requests queued hundreds of reloads, each
//! on a blocking thread of its own. Here a request only raises a flag: the one
//! worker ([`ReloadQueue::run`]) takes every request that arrived before a reload
//! starts into that reload, so any number of requests made while one runs are
//! answered by the next one, and the worker never holds more than one blocking
//! thread.
//!
//! What must stay true: a request is answered by a reload that *started after*
//! it was made (so it sees the file as it was when asked), and a waiter never
//! waits past shutdown.

use std::sync::{Arc, Mutex};

use tokio::sync::{watch, Notify};

use crate::config_file::{Reloaded, Reloader};

/// What one reload did, shared by every request it answers: the error is the
/// file's problems, one per line.
pub type Outcome = Arc<Result<Reloaded, String>>;

/// The handle on the queue: cheap to clone, shared by the signal handler, the
/// HTTP handler and the worker.
#[derive(Clone, Default)]
pub struct ReloadQueue {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    counters: Mutex<Counters>,
    /// Holds at most one wake-up: requests made while the worker is busy fold
    /// into it.
    wake: Notify,
    done: watch::Sender<Done>,
}

/// Reloads are numbered from 1 in the order they start.
#[derive(Default)]
struct Counters {
    /// The number of the last reload that started (0: none yet).
    started: u64,
    /// The number of the reload the latest request waits for.
    wanted: u64,
    closed: bool,
}

#[derive(Clone, Default)]
struct Done {
    /// The number of the last reload that finished, and what it did.
    finished: u64,
    outcome: Option<Outcome>,
    /// The exporter is stopping: no reload will run any more.
    closed: bool,
}

/// The answer to one request.
#[derive(Debug)]
pub enum Answer {
    /// The outcome of a reload that started after the request.
    Done(Outcome),
    /// The exporter stopped before such a reload finished.
    ShuttingDown,
}

impl ReloadQueue {
    /// An empty queue; reloads run once [`ReloadQueue::run`] runs.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks for a reload and returns at once with the number of the reload that
    /// will answer: the next one to start.
    pub fn request(&self) -> u64 {
        let ticket = {
            let mut counters = self.lock();
            let ticket = counters.started + 1;
            counters.wanted = ticket;
            ticket
        };
        self.inner.wake.notify_one();
        ticket
    }

    /// Asks for a reload and waits for its outcome (or for shutdown). Waiting
    /// holds nothing but this future.
    pub async fn request_and_wait(&self) -> Answer {
        let mut done = self.inner.done.subscribe();
        let ticket = self.request();
        // A later reload than the one asked for also started after the request,
        // so its outcome answers it as well.
        let Ok(done) = done.wait_for(|d| d.finished >= ticket || d.closed).await else {
            return Answer::ShuttingDown;
        };
        match (&done.outcome, done.finished >= ticket) {
            (Some(outcome), true) => Answer::Done(Arc::clone(outcome)),
            _ => Answer::ShuttingDown,
        }
    }

    /// Runs the reloads asked for, one at a time, until `stopped` completes; then
    /// answers every waiter that the exporter is shutting down. A reload running
    /// then is left to finish on its blocking thread, which the process does not
    /// wait for: nothing is applied after shutdown that anyone would serve.
    pub async fn run(
        self,
        reloader: Arc<Reloader>,
        stopped: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(stopped);
        loop {
            tokio::select! {
                _ = &mut stopped => break,
                _ = self.inner.wake.notified() => {}
            }
            let number = {
                let mut counters = self.lock();
                if counters.wanted <= counters.started {
                    continue;
                }
                if counters.closed {
                    break;
                }
                counters.started = counters.wanted;
                counters.started
            };
            tracing::info!(
                reload = number,
                "reload started: requests made from now on wait for the next one"
            );
            let reloader = Arc::clone(&reloader);
            // Loading reads files and builds clients: off the async workers.
            let reload = tokio::task::spawn_blocking(move || reloader.reload());
            let outcome = tokio::select! {
                _ = &mut stopped => break,
                joined = reload => match joined {
                    Ok(result) => Arc::new(result.map_err(|err| err.to_string())),
                    Err(_) => Arc::new(Err(
                        "the reload stopped unexpectedly; the running configuration stays".into(),
                    )),
                },
            };
            self.inner.done.send_modify(|done| {
                done.finished = number;
                done.outcome = Some(outcome);
            });
        }
        self.close();
    }

    /// Stops taking requests and answers every waiter at once.
    pub fn close(&self) {
        self.lock().closed = true;
        self.inner.done.send_modify(|done| done.closed = true);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counters> {
        self.inner
            .counters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }
}
