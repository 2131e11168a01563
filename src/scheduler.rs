//! The refresh loop: first refresh at once, then one every `--refresh.interval`.
//!
//! A cycle refreshes every datacenter concurrently (or runs one discovery pass)
//! and publishes each result as it completes. Cycles never overlap: the next tick
//! waits for the cycle to end (a late cycle delays the schedule instead of piling
//! up). A failure never ends the loop; it is published, counted and logged once
//! with the datacenter, the reason, the HTTP status and the upstream `traceId`.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;

use crate::refresh::{collect, Collected, Reason, Scope};
use crate::secret::TokenSource;
use crate::snapshot::{Outcome, State};
use crate::telemetry::Telemetry;
use crate::upstream::{ApiClient, FetchError};

/// Runs refresh cycles and publishes their results.
#[derive(Clone)]
pub struct Scheduler {
    client: Arc<ApiClient>,
    token: TokenSource,
    state: Arc<State>,
    telemetry: Telemetry,
    interval: Duration,
    datacenters: Vec<String>,
}

/// Cleared when the scheduler's loop ends for any reason (a panic included), so
/// `/healthz` can tell.
#[derive(Debug)]
pub struct Liveness(AtomicBool);

impl Liveness {
    /// Alive until the guard of [`Scheduler::run`] drops.
    pub fn new() -> Arc<Self> {
        Arc::new(Liveness(AtomicBool::new(true)))
    }

    /// Whether the scheduler is still running.
    pub fn is_alive(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

struct AliveGuard(Arc<Liveness>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0 .0.store(false, Ordering::Relaxed);
    }
}

impl Scheduler {
    /// A scheduler for the given datacenters (none: discover them).
    pub fn new(
        client: Arc<ApiClient>,
        token: TokenSource,
        state: Arc<State>,
        telemetry: Telemetry,
        interval: Duration,
        datacenters: Vec<String>,
    ) -> Self {
        for dc in &datacenters {
            telemetry.init_datacenter(dc);
        }
        Scheduler {
            client,
            token,
            state,
            telemetry,
            interval,
            datacenters,
        }
    }

    /// Refreshes on schedule until `shutdown` completes. `liveness` is cleared
    /// when the returned future ends or is dropped, even unpolled.
    pub fn run(
        self,
        liveness: Arc<Liveness>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> impl Future<Output = ()> + Send + 'static {
        let guard = AliveGuard(liveness);
        async move {
            let _guard = guard;
            let mut ticker = tokio::time::interval(self.interval);
            ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
            tokio::pin!(shutdown);
            loop {
                tokio::select! {
                    _ = &mut shutdown => return,
                    _ = ticker.tick() => {}
                }
                tokio::select! {
                    _ = &mut shutdown => return,
                    _ = self.refresh_all() => {}
                }
            }
        }
    }

    /// Runs one cycle: every datacenter, or one discovery pass.
    pub async fn refresh_all(&self) {
        let started = Instant::now();
        if self.datacenters.is_empty() {
            self.discover().await;
        } else {
            let mut tasks = JoinSet::new();
            for dc in &self.datacenters {
                let this = self.clone();
                let dc = dc.clone();
                tasks.spawn(async move { this.refresh_datacenter(dc).await });
            }
            while let Some(joined) = tasks.join_next().await {
                if let Err(err) = joined {
                    tracing::error!(error = %err, "refresh task ended abnormally");
                }
            }
        }
        self.state.finish_cycle();
        crate::release_freed_memory();
        let snapshot = self.state.snapshot();
        let failed = snapshot.datacenters.values().filter(|dc| !dc.up).count();
        tracing::info!(
            datacenters = snapshot.datacenters.len(),
            failed,
            duration = ?started.elapsed(),
            "refresh cycle finished"
        );
    }

    async fn refresh_datacenter(&self, dc: String) {
        let started = Instant::now();
        let result = self.pass(Scope::Datacenter(dc.clone())).await;
        let duration = started.elapsed();
        // The result is published before it is counted, so that a scrape that
        // sees a counter move also sees the numbers it is about.
        match result {
            Ok(mut collected) => {
                let images = collected.datacenters.remove(&dc).unwrap_or_default();
                self.state
                    .publish(&dc, duration, Outcome::Success { images });
                self.record_success(&dc, std::slice::from_ref(&dc), &collected, duration);
            }
            Err(err) => {
                let outcome = Outcome::Failure {
                    reason: err.reason(),
                    message: err.to_string(),
                };
                self.state.publish(&dc, duration, outcome);
                self.record_failure(&dc, &err, duration);
            }
        }
    }

    async fn discover(&self) {
        let started = Instant::now();
        let result = self.pass(Scope::Discover).await;
        let duration = started.elapsed();
        match result {
            Ok(mut collected) => {
                let keys: Vec<String> = collected.datacenters.keys().cloned().collect();
                for dc in &keys {
                    self.telemetry.init_datacenter(dc);
                }
                let images = std::mem::take(&mut collected.datacenters);
                self.state.publish_discovery(duration, Ok(images));
                self.record_success("", &keys, &collected, duration);
            }
            Err(err) => {
                let known: Vec<String> =
                    self.state.snapshot().datacenters.keys().cloned().collect();
                let keys = if known.is_empty() {
                    vec![String::new()]
                } else {
                    known
                };
                for dc in &keys {
                    self.telemetry.init_datacenter(dc);
                }
                self.state
                    .publish_discovery(duration, Err((err.reason(), err.to_string())));
                for dc in &keys {
                    self.record_failure(dc, &err, duration);
                }
            }
        }
    }

    async fn pass(&self, scope: Scope) -> Result<Collected, FetchError> {
        let token = self.token.current()?;
        collect(&self.client, &token, scope).await
    }

    /// `scope` names the datacenter in logs, empty for a discovery pass;
    /// `datacenters` are those the pass covered, which its anomalies count against.
    fn record_success(
        &self,
        scope: &str,
        datacenters: &[String],
        collected: &Collected,
        duration: Duration,
    ) {
        for (field, n) in &collected.invalid {
            self.telemetry
                .invalid_items
                .with_label_values(&[field.label()])
                .inc_by(*n);
        }
        for anomaly in &collected.anomalies {
            for dc in datacenters {
                self.telemetry
                    .pagination_anomalies
                    .with_label_values(&[dc.as_str(), anomaly.label()])
                    .inc();
            }
        }
        if !collected.anomalies.is_empty() {
            let kinds: Vec<&str> = collected.anomalies.iter().map(|a| a.label()).collect();
            tracing::warn!(
                datacenter_key = %scope,
                anomalies = %kinds.join(","),
                total_counts = collected.total,
                items = collected.items,
                duplicates = collected.duplicates,
                pages = collected.pages,
                "pagination was inconsistent"
            );
        }
        tracing::debug!(
            datacenter_key = %scope,
            datacenters = datacenters.len(),
            items = collected.items,
            pages = collected.pages,
            duration = ?duration,
            "refresh succeeded"
        );
    }

    fn record_failure(&self, dc: &str, err: &FetchError, duration: Duration) {
        let reason: Reason = err.reason();
        self.telemetry
            .refresh_failures
            .with_label_values(&[dc, reason.label()])
            .inc();
        tracing::warn!(
            datacenter_key = %dc,
            reason = reason.label(),
            http_status = err.http_status().map(i64::from).unwrap_or(-1),
            trace_id = err.trace_id().unwrap_or(""),
            duration = ?duration,
            error = %err,
            "refresh failed"
        );
    }
}
