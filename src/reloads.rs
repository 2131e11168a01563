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
//! A waiting request holds its connection, and a connection that has a request
//! in flight is never the one closed to make room for a new one: hundreds of
//! clients looping on `POST /-/reload` would hold every connection the server
//! allows, and a `/healthz` probe would be closed unanswered. So at most a
//! bounded number of requests wait (see [`ReloadQueue::new`]); beyond, a
//! request still asks for the reload but is answered at once ([`Answer::Queued`]).
//!
//! What must stay true: a request is answered by a reload that *started after*
//! it was made (so it sees the file as it was when asked), or told at once that
//! such a reload will run; and a waiter never waits past shutdown.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{watch, Notify};

use crate::config_file::{Reloaded, Reloader};

/// What one reload did, shared by every request it answers: the error is the
/// file's problems, one per line.
pub type Outcome = Arc<Result<Reloaded, String>>;

/// The handle on the queue: cheap to clone, shared by the signal handler, the
/// HTTP handler and the worker.
#[derive(Clone)]
pub struct ReloadQueue {
    inner: Arc<Inner>,
}

struct Inner {
    counters: Mutex<Counters>,
    /// The requests waiting for an outcome now, and how many may.
    waiting: AtomicUsize,
    max_waiting: usize,
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
    /// The reload is asked for, but `waiting` requests already wait for it:
    /// this one is not held.
    Queued { waiting: usize },
}

/// Releases a waiter's place however its wait ends (an answer, shutdown, or the
/// client going away, which drops the future).
struct Place<'a>(&'a AtomicUsize);

impl Drop for Place<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl ReloadQueue {
    /// An empty queue on which at most `max_waiting` requests wait at once;
    /// reloads run once [`ReloadQueue::run`] runs.
    pub fn new(max_waiting: usize) -> Self {
        ReloadQueue {
            inner: Arc::new(Inner {
                counters: Mutex::default(),
                waiting: AtomicUsize::new(0),
                max_waiting,
                wake: Notify::new(),
                done: watch::Sender::default(),
            }),
        }
    }

    /// Asks for a reload and returns at once with the number of the reload that
    /// will answer: the next one to start.
    /// `None` once the queue is closed: no reload will run.
    pub fn request(&self) -> Option<u64> {
        let ticket = {
            let mut counters = self.lock();
            if counters.closed {
                return None;
            }
            let ticket = counters.started + 1;
            counters.wanted = ticket;
            ticket
        };
        self.inner.wake.notify_one();
        Some(ticket)
    }

    /// Asks for a reload and waits for its outcome (or for shutdown), unless
    /// the most requests that may wait already do. Waiting holds nothing but
    /// this future (and the caller's connection).
    pub async fn request_and_wait(&self) -> Answer {
        let waiting = self.inner.waiting.fetch_add(1, Ordering::Relaxed);
        let _place = Place(&self.inner.waiting);
        // Subscribed before asking, so that the reload asked for cannot end
        // unseen in between.
        let mut done = self.inner.done.subscribe();
        // Once the queue is closed no reload runs: say so, not "queued".
        let Some(ticket) = self.request() else {
            return Answer::ShuttingDown;
        };
        if waiting >= self.inner.max_waiting {
            return Answer::Queued { waiting };
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Requests made while no reload can run (no worker) wait, up to the bound;
    /// the next one is answered at once, still asks for the reload, and its
    /// place is not taken; a waiter that goes away gives its place back.
    #[tokio::test]
    async fn beyond_the_bound_a_request_is_answered_at_once_and_still_asks_for_the_reload() {
        let queue = ReloadQueue::new(3);
        let mut waiters = Vec::new();
        for _ in 0..3 {
            let queue = queue.clone();
            waiters.push(tokio::spawn(async move { queue.request_and_wait().await }));
        }
        // Every waiter has taken its place once the fourth request is turned away.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while queue.inner.waiting.load(Ordering::Relaxed) < 3 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the waiters never waited"
            );
            tokio::task::yield_now().await;
        }
        // As the worker does when the reload they asked for starts: a request
        // from now on asks for the next one.
        queue.lock().started = 1;
        match queue.request_and_wait().await {
            Answer::Queued { waiting } => assert_eq!(waiting, 3),
            other => panic!("the fourth request waited: {other:?}"),
        }
        assert_eq!(queue.lock().wanted, 2, "the next reload is asked for");
        assert_eq!(queue.inner.waiting.load(Ordering::Relaxed), 3);
        assert!(
            waiters.iter().all(|w| !w.is_finished()),
            "the three still wait"
        );

        // One waiter goes away: a new request waits in its place.
        waiters.pop().unwrap().abort();
        while queue.inner.waiting.load(Ordering::Relaxed) > 2 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the place was not given back"
            );
            tokio::task::yield_now().await;
        }
        let late = tokio::spawn({
            let queue = queue.clone();
            async move { queue.request_and_wait().await }
        });
        // Shutdown answers every waiter, the late one included.
        while queue.inner.waiting.load(Ordering::Relaxed) < 3 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the late request never waited"
            );
            tokio::task::yield_now().await;
        }
        queue.close();
        for waiter in waiters.into_iter().chain([late]) {
            assert!(matches!(waiter.await.unwrap(), Answer::ShuttingDown));
        }
        assert_eq!(queue.inner.waiting.load(Ordering::Relaxed), 0);
    }
}
