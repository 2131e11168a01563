//! Every target on its own schedule.
//!
//! Each target runs as a task of its own: its first pass at a random offset within
//! the first [`FIRST_PASS_WINDOW`] (or the interval, if shorter), so that targets
//! do not fire together and yet the first numbers come within seconds; then one
//! pass every interval. A target's passes never overlap: the next tick waits for the pass to
//! end (a late pass delays that target's schedule instead of piling up), and a pass
//! has a deadline, `refresh.timeout`. Nothing one target does (a hang, a flood of
//! pages, a lie) delays another: they share only the account's request
//! [`Budget`](crate::upstream::Budget). Every result is published the moment its
//! pass ends, counted, and logged in one line.
//!
//! [`Scheduler::apply`] starts, keeps and stops targets to match a list of
//! accounts, so a reload keeps the schedule and state of every target whose
//! account did not change.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio::time::MissedTickBehavior;

use super::limits::{self, Limits};
use super::paging::{Collected, Pager};
use crate::account::{Account, Shard, TargetKey};
use crate::aggregate::Options;
use crate::lifecycle::{self, Census, Changes};
use crate::state::{Lifecycle, Outcome, State};
use crate::telemetry::{Telemetry, Upstream};
use crate::upstream::{ApiClient, Budget, ClientError, FetchError};

/// The window in which every target's first pass starts, after a start or a
/// reload.
pub const FIRST_PASS_WINDOW: Duration = Duration::from_secs(10);

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

/// What every pass of one account shares.
struct AccountRuntime {
    account: Account,
    pager: Pager,
}

/// Starts and stops target tasks, and holds what they share.
pub struct Scheduler {
    state: Arc<State>,
    telemetry: Telemetry,
    limits: Limits,
    shard: Shard,
    accounts: HashMap<String, Arc<AccountRuntime>>,
    targets: BTreeMap<TargetKey, AbortHandle>,
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        for handle in self.targets.values() {
            handle.abort();
        }
    }
}

impl Scheduler {
    /// A scheduler with no target yet.
    pub fn new(state: Arc<State>, telemetry: Telemetry, limits: Limits, shard: Shard) -> Self {
        Scheduler {
            state,
            telemetry,
            limits,
            shard,
            accounts: HashMap::new(),
            targets: BTreeMap::new(),
        }
    }

    /// Builds what an account's passes share: its client and budget.
    fn runtime(&self, account: Account) -> Result<Arc<AccountRuntime>, ClientError> {
        let named = self.state.collectors().image_info.map(|i| i.statuses);
        let client = ApiClient::new(
            &account.name,
            account.client.clone(),
            &account.auth,
            self.telemetry.clone(),
        )?
        .naming(named.unwrap_or_default());
        let budget = Budget::new(
            account.concurrency,
            account.requests_per_second,
            self.telemetry.upstream(&account.name),
        );
        Ok(Arc::new(AccountRuntime {
            pager: Pager {
                client: Arc::new(client),
                budget: Arc::new(budget),
                window: account.concurrency as usize,
            },
            account,
        }))
    }

    /// Makes the running targets those of `accounts` (only the ones this shard
    /// owns): new ones start and are registered (not ready until their first pass);
    /// removed ones stop, and their series vanish at once; those whose account did
    /// not change keep running untouched. Must be called within a Tokio runtime.
    pub fn apply(&mut self, accounts: Vec<Account>) -> Result<(), ClientError> {
        // Build every new client first, so a failure changes nothing.
        let mut next: HashMap<String, Arc<AccountRuntime>> = HashMap::new();
        for account in accounts {
            let runtime = match self.accounts.get(&account.name) {
                Some(old) if old.account.same_settings(&account) => {
                    if old.account.datacenters == account.datacenters {
                        Arc::clone(old)
                    } else {
                        // Same client and budget, another datacenter list.
                        Arc::new(AccountRuntime {
                            pager: old.pager.clone(),
                            account,
                        })
                    }
                }
                _ => self.runtime(account)?,
            };
            next.insert(runtime.account.name.clone(), runtime);
        }
        let wanted: BTreeMap<TargetKey, Arc<AccountRuntime>> = next
            .values()
            .flat_map(|rt| {
                rt.account
                    .targets()
                    .into_iter()
                    .map(move |k| (k, Arc::clone(rt)))
            })
            .filter(|(key, _)| self.shard.owns(key))
            .collect();
        // Stop targets that are gone, or whose account's settings changed.
        let stop: Vec<TargetKey> = self
            .targets
            .keys()
            .filter(
                |key| match (wanted.get(key), self.accounts.get(&key.account)) {
                    (Some(new), Some(old)) => !Arc::ptr_eq(&new.pager.budget, &old.pager.budget),
                    _ => true,
                },
            )
            .cloned()
            .collect();
        for key in stop {
            if let Some(handle) = self.targets.remove(&key) {
                handle.abort();
            }
            if !wanted.contains_key(&key) {
                self.state.remove(&key);
            }
        }
        for name in self.accounts.keys() {
            if !next.contains_key(name) {
                self.telemetry.remove_account(name);
            }
        }
        for (key, rt) in wanted {
            if self.targets.contains_key(&key) {
                continue;
            }
            let refresh = rt.account.refresh;
            self.state
                .register(&key, refresh.interval, refresh.stale_after);
            let target = TargetTask {
                key: key.clone(),
                runtime: rt,
                state: Arc::clone(&self.state),
                upstream: self.telemetry.upstream(&key.account),
                limits: self.limits,
                probed: AtomicBool::new(false),
                census: std::sync::Mutex::new(None),
            };
            let handle = tokio::spawn(target.run()).abort_handle();
            self.targets.insert(key, handle);
        }
        self.accounts = next;
        Ok(())
    }

    /// Starts the targets of `accounts` and runs them until `shutdown` completes,
    /// applying every list of accounts that arrives on `reloads`. `liveness` is
    /// cleared when the returned future ends or is dropped, even unpolled.
    pub fn run(
        mut self,
        accounts: Vec<Account>,
        liveness: Arc<Liveness>,
        mut reloads: mpsc::UnboundedReceiver<Vec<Account>>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> impl Future<Output = ()> + Send + 'static {
        let guard = AliveGuard(liveness);
        async move {
            let _guard = guard;
            if let Err(err) = self.apply(accounts) {
                // The clients were built once at start, so this does not happen;
                // should it, /healthz fails rather than serving nothing silently.
                tracing::error!(error = %err, "cannot start the targets");
                return;
            }
            self.state.mark_started();
            tokio::pin!(shutdown);
            loop {
                tokio::select! {
                    _ = &mut shutdown => return,
                    accounts = reloads.recv() => match accounts {
                        Some(accounts) => {
                            if let Err(err) = self.apply(accounts) {
                                tracing::error!(error = %err, "cannot build an upstream client; keeping the running targets");
                            }
                        }
                        // No more reloads can come: run until shutdown.
                        None => {
                            (&mut shutdown).await;
                            return;
                        }
                    },
                }
            }
        }
    }
}

/// One target's loop.
struct TargetTask {
    key: TargetKey,
    runtime: Arc<AccountRuntime>,
    state: Arc<State>,
    /// Where the account's unreadable fields are counted.
    upstream: Arc<Upstream>,
    limits: Limits,
    /// Whether this target already looked for the account's datacenter keys
    /// after a pass found nothing (done once per target and process).
    probed: AtomicBool,
    /// The census of the last complete pass (lifecycle collector): the baseline
    /// the next complete pass is compared with. It lives as long as the task, so
    /// a restarted target starts from a new baseline.
    census: std::sync::Mutex<Option<Census>>,
}

impl TargetTask {
    async fn run(self) {
        let interval = self.runtime.account.refresh.interval;
        // The first pass within the first few seconds, whatever the interval, so
        // that `/readyz` and the first numbers never wait for a random part of a
        // long interval; spread over that window so that targets do not fire
        // together. Later passes follow every interval.
        let offset = interval
            .min(FIRST_PASS_WINDOW)
            .mul_f64(crate::random_fraction());
        self.state
            .set_next_pass(&self.key, SystemTime::now() + offset);
        tokio::time::sleep(offset).await;
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let started = SystemTime::now();
            // Boxed: a pass's future is a few kilobytes, and held inline it would
            // stay in every sleeping target's task (7 MB at 3,000 targets).
            Box::pin(self.pass()).await;
            // The next tick is one interval after this pass started, or at once
            // when the pass took longer than that.
            self.state
                .set_next_pass(&self.key, (started + interval).max(SystemTime::now()));
        }
    }

    async fn pass(&self) {
        let account = &self.runtime.account;
        let started = Instant::now();
        let mut elsewhere = None;
        let result = {
            let timeout = account.refresh.timeout;
            let collectors = self.state.collectors();
            let options = Options {
                census: collectors.lifecycle,
                ages_at_ms: collectors
                    .age
                    .then(|| crate::unix_seconds(SystemTime::now()) * 1000.0)
                    .map(|ms| ms as i64),
                named: collectors.image_info.map_or(0, |i| i.limit),
            };
            let pass = self
                .runtime
                .pager
                .collect_with(self.key.datacenter.as_deref(), options);
            let result = match tokio::time::timeout(timeout, pass).await {
                Ok(result) => result,
                Err(_) => Err(FetchError::PassTimeout(timeout)),
            };
            if let Ok(collected) = &result {
                if collected.items == 0 && collected.foreign == 0 {
                    elsewhere = self.keys_elsewhere().await;
                }
            }
            result
        };
        self.runtime.pager.budget.pass_finished();
        let duration = started.elapsed();
        // The result is published before it is logged, so that whoever reads the
        // log line finds the numbers it is about.
        match result {
            Ok(collected) => self.succeeded(collected, duration),
            Err(err) => self.failed(&err, duration),
        }
        if let Some(keys) = elsewhere {
            self.warn_empty(&keys);
        }
    }

    /// For a datacenter target whose pass found no image: the datacenter keys
    /// of the account's images on one unfiltered-by-datacenter first page, once
    /// per target and process (a typo such as `hz` for `HZ` otherwise looks
    /// healthy: up, with no image). `None` when already asked, or on an error.
    async fn keys_elsewhere(&self) -> Option<Vec<String>> {
        self.key.datacenter.as_ref()?;
        if self.probed.swap(true, Ordering::Relaxed) {
            return None;
        }
        let pager = &self.runtime.pager;
        let page = pager.client.fetch_page(&pager.budget, None, 1).await.ok()?;
        let mut keys: Vec<String> = page
            .items
            .iter()
            .filter_map(|item| item.datacenter_key.as_deref())
            .map(str::to_string)
            .collect();
        keys.sort();
        keys.dedup();
        Some(keys)
    }

    /// Warns once that this datacenter has no image while the account has
    /// images under `keys`, and shows it on the landing page.
    fn warn_empty(&self, keys: &[String]) {
        let asked = self.key.datacenter.as_deref().unwrap_or("");
        if keys.is_empty() || keys.iter().any(|k| k == asked) {
            return;
        }
        let shown: Vec<&str> = keys.iter().take(20).map(String::as_str).collect();
        let similar = keys.iter().find(|k| k.eq_ignore_ascii_case(asked.trim()));
        tracing::warn!(
            account = %self.key.account,
            datacenter_key = %asked,
            account_datacenter_keys = %shown.join(","),
            did_you_mean = similar.map(String::as_str),
            "no image in this datacenter, but the account has images in others: check the keys in --datacenters (they are case-sensitive), or leave it out to discover them"
        );
        let notice = match similar {
            Some(similar) => format!(
                "no image under datacenter key {asked:?}; the account has images under {}: did you mean {similar:?}?",
                shown.join(", ")
            ),
            None => format!(
                "no image under datacenter key {asked:?}; the account has images under {}",
                shown.join(", ")
            ),
        };
        self.state.set_notice(&self.key, Some(notice));
    }

    /// What this pass means to the lifecycle counters: a pass with an anomaly
    /// (cut off included) is skipped and keeps the older baseline, so the next
    /// complete pass counts everything that changed since then.
    fn lifecycle(&self, census: Option<Census>, anomalies: bool) -> Lifecycle {
        let Some(census) = census else {
            return Lifecycle::Off;
        };
        if anomalies {
            return Lifecycle::Skipped;
        }
        let mut baseline = self.census.lock().unwrap_or_else(|e| e.into_inner());
        let outcome = match baseline.as_ref() {
            None => Lifecycle::Baseline,
            Some(before) => {
                let max = self.limits.label_length;
                let mut by_dc: BTreeMap<String, Changes> = BTreeMap::new();
                for (dc, changes) in lifecycle::diff(before, &census) {
                    let cut = |s: String| limits::cut(&s, max).to_string();
                    let into = by_dc.entry(cut(dc)).or_default();
                    for (ty, n) in changes.created {
                        *into.created.entry(cut(ty)).or_default() += n;
                    }
                    for ((st, ty), n) in changes.deleted {
                        *into.deleted.entry((st, cut(ty))).or_default() += n;
                    }
                    for ((ty, from, to), n) in changes.transitions {
                        *into.transitions.entry((cut(ty), from, to)).or_default() += n;
                    }
                }
                Lifecycle::Changes(by_dc)
            }
        };
        *baseline = Some(census);
        outcome
    }

    fn succeeded(&self, mut collected: Collected, duration: Duration) {
        let account = &self.key.account;
        let dc_label = self.key.datacenter.as_deref().unwrap_or("");
        let discovery = self.key.datacenter.is_none();
        let lifecycle = self.lifecycle(collected.census.take(), !collected.anomalies.is_empty());
        let max = self.limits.label_length;
        let named = std::mem::take(&mut collected.named)
            .into_iter()
            .map(|mut n| {
                for value in [
                    &mut n.datacenter,
                    &mut n.image_type,
                    &mut n.details.id,
                    &mut n.details.image_id,
                    &mut n.details.image_name,
                ] {
                    let cut = limits::cut(value, max).len();
                    value.truncate(cut);
                }
                n
            })
            .collect();
        let (datacenters, folded) = limits::apply(collected.datacenters, &self.limits, discovery);
        for (field, n) in &collected.invalid {
            self.upstream.invalid_items(*field, *n);
        }
        if !collected.anomalies.is_empty() {
            let kinds: Vec<&str> = collected.anomalies.iter().map(|a| a.label()).collect();
            tracing::warn!(
                account = %account,
                datacenter_key = %dc_label,
                anomalies = %kinds.join(","),
                total_counts = collected.total,
                items = collected.items,
                duplicates = collected.duplicates,
                pages = collected.pages,
                "pagination was inconsistent"
            );
        }
        if collected.foreign > 0 {
            tracing::warn!(
                account = %account,
                datacenter_key = %dc_label,
                foreign_items = collected.foreign,
                foreign_keys = %collected.foreign_keys.join(","),
                "the upstream answered with images of other datacenters: it seems to ignore datacenterKey; they were not counted. Leave out --datacenters (discovery mode) if this upstream cannot filter by datacenter"
            );
        }
        for (dc, labels) in &folded {
            for (label, n) in labels {
                tracing::warn!(
                    account = %account,
                    datacenter_key = %dc,
                    label = %label,
                    folded = n,
                    "too many distinct values: the smallest groups were folded into \"other\" (see --limit.image-types and --limit.datacenters)"
                );
            }
        }
        let images: u64 = datacenters.values().map(|d| d.total_images()).sum();
        self.state.publish(
            &self.key,
            duration,
            Outcome::Success {
                datacenters,
                anomalies: collected.anomalies,
                folded,
                lifecycle,
                named,
            },
        );
        tracing::info!(
            account = %account,
            datacenter_key = %dc_label,
            images,
            pages = collected.pages,
            duration_seconds = duration.as_secs_f64(),
            "refresh finished"
        );
    }

    fn failed(&self, err: &FetchError, duration: Duration) {
        let reason = err.reason();
        let url = self.runtime.pager.client.url();
        // The landing page and `/readyz` show what the log line says, hint
        // included: whoever looks there should not need the log to know the fix.
        let message = match err.hint(url) {
            Some(hint) => format!("{err} (hint: {hint})"),
            None => err.to_string(),
        };
        self.state.publish(
            &self.key,
            duration,
            Outcome::Failure {
                reason,
                message,
                trace_id: err.trace_id().map(str::to_string),
            },
        );
        // One line that says what was asked, what came back and what to do:
        // the URL has no query (so neither the extra parameters nor the token),
        // the answer's start is redacted, and a field that does not apply
        // (no status on a network error, no trace id) is left out, not empty.
        tracing::warn!(
            account = %self.key.account,
            datacenter_key = %self.key.datacenter.as_deref().unwrap_or(""),
            reason = reason.label(),
            http_status = err.http_status(),
            url = %url,
            trace_id = err.trace_id(),
            duration_seconds = duration.as_secs_f64(),
            error = %err,
            body = err.body(),
            hint = err.hint(url),
            "refresh failed"
        );
    }
}
