//! The published state: what the last pass of every target found, and its
//! counters, with their exposition already rendered.
//!
//! Every pass publishes by changing its [`TargetState`] copy-on-write under the
//! lock, so a scrape, which holds an immutable [`Snapshot`], sees each target
//! either before or after a pass, never half of one. A target's series are
//! rendered into lines ([`crate::metrics::lines`]) when it changes, not when
//! scraped; a scrape copies the lines of every datacenter, leaving out image
//! series older than their stale-after. The lock is held only to change one
//! target, never across I/O.
//!
//! A target's counters (failures, anomalies) live here, beside its series, so that
//! they vanish with the target (removed from the configuration, or a datacenter
//! gone from discovery for longer than stale-after) and never outlive it.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use crate::account::TargetKey;
use crate::aggregate::{DatacenterImages, NamedImage};
use crate::labels::{Anomaly, Reason};
use crate::lifecycle::{Changes, LifecycleCounters};
use crate::metrics::lines::{self, Builder, Lines};
use crate::metrics::{self, Collectors};

/// The datacenter key of a discovery target's series before it found any
/// datacenter (or when it found none), so that `finovy_up` always exists.
pub const NO_DATACENTER: &str = "";

/// How a target's pass ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The full list was read.
    Success {
        /// The groups found, per datacenter (one entry for a datacenter target).
        datacenters: BTreeMap<String, DatacenterImages>,
        /// What did not add up (each counted once per datacenter of the pass).
        anomalies: Vec<Anomaly>,
        /// Groups folded into `other`, per datacenter and label name.
        folded: BTreeMap<String, Vec<(&'static str, u64)>>,
        /// What the pass means to the lifecycle counters.
        lifecycle: Lifecycle,
        /// The images `finovy_image_info` names, oldest first (label values cut).
        named: Vec<NamedImage>,
    },
    /// The pass failed.
    Failure {
        /// Why, as the metric label.
        reason: Reason,
        /// What happened, for `/readyz` and the landing page. Never holds the token.
        message: String,
        /// The upstream's `traceId` of the failed answer, when it had one.
        trace_id: Option<String>,
    },
}

/// What a successful pass means to the lifecycle counters.
#[derive(Debug, Clone, Default)]
pub enum Lifecycle {
    /// The collector is off.
    #[default]
    Off,
    /// The first complete pass: it counts nothing, but its groups' series start at 0.
    Baseline,
    /// The pass cannot be compared (a pagination anomaly): it changes no counter
    /// and counts as skipped.
    Skipped,
    /// What changed since the previous complete pass, per datacenter (label
    /// values already cut to `--limit.label-length`).
    Changes(BTreeMap<String, Changes>),
}

/// The last error of a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastError {
    /// When it happened.
    pub at: SystemTime,
    /// Why.
    pub reason: Reason,
    /// What happened.
    pub message: String,
    /// The upstream's `traceId` of the failed answer, for a support request.
    pub trace_id: Option<String>,
}

/// The image series of one datacenter, as of its last successful pass.
#[derive(Debug, Clone)]
pub struct PublishedImages {
    at_instant: Instant,
    /// Images over all groups.
    pub total_images: u64,
    /// Bytes over all groups (128 bits: see [`crate::aggregate::GroupStats`]).
    pub total_bytes: u128,
    /// Its image lines.
    pub lines: Lines,
}

/// The series of one datacenter of a target.
#[derive(Debug, Clone, Default)]
pub struct DatacenterSeries {
    /// Its image series, until they turn stale.
    pub images: Option<Arc<PublishedImages>>,
    /// When a pass last found it (a discovery target forgets it after stale-after).
    last_seen: Option<Instant>,
    /// Failed passes, per [`Reason::index`].
    pub failures: [u64; Reason::ALL.len()],
    /// Anomalies, per [`Anomaly::index`].
    pub anomalies: [u64; Anomaly::ALL.len()],
    /// Groups folded by the last successful pass, per label name.
    pub folded: Vec<(&'static str, u64)>,
    /// Its lifecycle counters.
    pub lifecycle: LifecycleCounters,
    /// Its health and counter lines, rendered after every change.
    pub lines: Lines,
}

/// Everything known about one target.
#[derive(Debug, Clone)]
pub struct TargetState {
    /// Time between its passes.
    pub interval: Duration,
    /// How long its image series outlive their last success.
    pub stale_after: Duration,
    /// Passes finished (0 until the first has ended).
    pub passes: u64,
    /// Whether its last pass succeeded.
    pub up: bool,
    /// Wall time of its last pass.
    pub last_duration: Duration,
    /// When it last succeeded.
    pub last_success: Option<SystemTime>,
    /// Its last error, if any pass failed.
    pub last_error: Option<LastError>,
    /// When its next pass is due (wall clock), once known.
    pub next_pass: Option<SystemTime>,
    /// A mistake that looks healthy (a datacenter key that matches no image of
    /// the account), for the landing page.
    pub notice: Option<String>,
    /// Its datacenters: one for a datacenter target; those discovered (or
    /// [`NO_DATACENTER`]) for a discovery target.
    /// Boxed: a B-tree node holds room for eleven values, so inline series
    /// would cost 2.7 kB a target that has one datacenter.
    pub datacenters: BTreeMap<String, Box<DatacenterSeries>>,
}

impl TargetState {
    fn new(key: &TargetKey, interval: Duration, stale_after: Duration) -> Self {
        let dc = key.datacenter.clone().unwrap_or_default();
        TargetState {
            interval,
            stale_after,
            passes: 0,
            up: false,
            last_duration: Duration::ZERO,
            last_success: None,
            last_error: None,
            next_pass: None,
            notice: None,
            datacenters: BTreeMap::from([(dc, Box::default())]),
        }
    }

    /// Renders the health and counter lines of every datacenter series
    /// again. Every change of the target that `/metrics` shows ends with it.
    fn render(&mut self, account: &str, collectors: &Collectors) {
        let mut datacenters = std::mem::take(&mut self.datacenters);
        for (dc, series) in &mut datacenters {
            series.lines = render_series(account, dc, self, series, collectors.lifecycle);
        }
        self.datacenters = datacenters;
    }

    /// Whether a datacenter's image series are still served.
    pub fn is_fresh(&self, images: &PublishedImages) -> bool {
        images.at_instant.elapsed() <= self.stale_after
    }
}

/// The health and counter lines of one datacenter series of `target`, with its
/// lifecycle counters when that collector runs.
fn render_series(
    account: &str,
    datacenter: &str,
    target: &TargetState,
    v: &DatacenterSeries,
    lifecycle: bool,
) -> Lines {
    use crate::metrics::{IMAGES_CREATED, IMAGES_DELETED, LIFECYCLE_SKIPPED, STATUS_TRANSITIONS};
    let mut b = Builder::default();
    let labels = [account, datacenter];
    if let Some(c) = Some(&v.lifecycle).filter(|_| lifecycle) {
        for (ty, n) in &c.created {
            b.sample(&IMAGES_CREATED, &[account, datacenter, ty], n);
        }
        for ((status, ty), n) in &c.deleted {
            b.sample(
                &IMAGES_DELETED,
                &[account, datacenter, status.label(), ty],
                n,
            );
        }
        for ((ty, from, to), n) in &c.transitions {
            let labels = [account, datacenter, ty, from.label(), to.label()];
            b.sample(&STATUS_TRANSITIONS, &labels, n);
        }
        b.sample(&LIFECYCLE_SKIPPED, &labels, c.skipped);
    }
    b.sample(&metrics::UP, &labels, u8::from(target.up));
    let duration = target.last_duration.as_secs_f64();
    b.sample(&metrics::REFRESH_DURATION, &labels, duration);
    let last_success = target.last_success.map_or(0.0, crate::unix_seconds);
    b.sample(&metrics::REFRESH_LAST_SUCCESS, &labels, last_success);
    let interval = target.interval.as_secs_f64();
    b.sample(&metrics::REFRESH_INTERVAL, &labels, interval);
    for reason in Reason::ALL {
        let labels = [account, datacenter, reason.label()];
        b.sample(
            &metrics::REFRESH_FAILURES,
            &labels,
            v.failures[reason.index()],
        );
    }
    for anomaly in Anomaly::ALL {
        let labels = [account, datacenter, anomaly.label()];
        b.sample(
            &metrics::PAGINATION_ANOMALIES,
            &labels,
            v.anomalies[anomaly.index()],
        );
    }
    for (label, n) in &v.folded {
        b.sample(&metrics::LIMIT_FOLDED, &[account, datacenter, label], n);
    }
    b.finish()
}

/// One consistent view of every target.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Per target, in key order (account, then datacenter).
    pub targets: BTreeMap<TargetKey, Arc<TargetState>>,
    /// Which collectors' families are served.
    pub collectors: Collectors,
    /// Whether the scheduler has registered its targets: before that, an empty
    /// target list means "not yet", not "nothing to do".
    pub started: bool,
    /// Counts the changes: a body assembled from generation `g` is current while
    /// the snapshot's generation is still `g`.
    pub generation: u64,
}

impl Snapshot {
    /// Whether the targets are known and every one has finished its first pass
    /// (a shard may own none: it is ready at once).
    pub fn ready(&self) -> bool {
        self.started && self.targets.values().all(|t| t.passes > 0)
    }

    /// The lines of every datacenter series (of `account`'s only, for
    /// `/probe`), with its image lines while they are fresh (decided once, so that
    /// a body never has a datacenter's counts without its sizes).
    pub fn lines(&self, account: Option<&str>) -> Vec<&Lines> {
        let mut items = Vec::with_capacity(2 * self.targets.len());
        for (key, t) in &self.targets {
            if account.is_some_and(|a| key.account != a) {
                continue;
            }
            for s in t.datacenters.values() {
                items.push(&s.lines);
                if let Some(images) = s.images.as_ref().filter(|im| t.is_fresh(im)) {
                    items.push(&images.lines);
                }
            }
        }
        items
    }
}

/// The shared, swappable snapshot.
#[derive(Debug, Default)]
pub struct State {
    current: RwLock<Arc<Snapshot>>,
}

impl State {
    /// An empty state: no target known; the default collectors.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty state serving the families of `collectors`.
    pub fn with_collectors(collectors: Collectors) -> Self {
        State {
            current: RwLock::new(Arc::new(Snapshot {
                targets: BTreeMap::new(),
                collectors,
                started: false,
                generation: 0,
            })),
        }
    }

    /// Which collectors run.
    pub fn collectors(&self) -> Collectors {
        self.snapshot().collectors
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Changes the snapshot in place. A snapshot that a scrape still holds is
    /// copied first (`Arc::make_mut`), so the scrape goes on seeing it whole; a
    /// changed target is copied the same way. Otherwise an update costs the
    /// change alone, not a copy of every target.
    fn update(&self, change: impl FnOnce(&mut Snapshot)) {
        self.update_as(true, change);
    }

    /// [`State::update`], telling whether the change shows in `/metrics`
    /// (`metrics`): a change that does not leaves the generation, and so the
    /// cached body, as they are.
    fn update_as(&self, metrics: bool, change: impl FnOnce(&mut Snapshot)) {
        let mut guard = self.current.write().unwrap_or_else(|e| e.into_inner());
        let next = Arc::make_mut(&mut guard);
        change(next);
        if metrics {
            next.generation += 1;
        }
    }

    /// Adds a target before its first pass (not ready until that pass ends), or
    /// updates the schedule of a known one, keeping its series and counters.
    pub fn register(&self, key: &TargetKey, interval: Duration, stale_after: Duration) {
        self.update(|snap| {
            let collectors = snap.collectors;
            let target = snap
                .targets
                .entry(key.clone())
                .or_insert_with(|| Arc::new(TargetState::new(key, interval, stale_after)));
            let state = Arc::make_mut(target);
            state.interval = interval;
            state.stale_after = stale_after;
            state.render(&key.account, &collectors);
        });
    }

    /// Records that the scheduler has registered its targets.
    pub fn mark_started(&self) {
        self.update(|snap| snap.started = true);
    }

    /// Removes a target with all its series and counters, at once.
    pub fn remove(&self, key: &TargetKey) {
        self.update(|snap| {
            snap.targets.remove(key);
        });
    }

    /// Records when a target's next pass is due.
    pub fn set_next_pass(&self, key: &TargetKey, at: SystemTime) {
        self.change_target(key, |t| t.next_pass = Some(at));
    }

    /// Sets (or clears) the notice of a target.
    pub fn set_notice(&self, key: &TargetKey, notice: Option<String>) {
        self.change_target(key, |t| t.notice = notice);
    }

    /// Changes what the pages say of one target (its next pass, its notice),
    /// if it is registered. Neither is in `/metrics`: the cached body stays.
    fn change_target(&self, key: &TargetKey, change: impl FnOnce(&mut TargetState)) {
        self.update_as(false, |snap| {
            if let Some(t) = snap.targets.get_mut(key) {
                change(Arc::make_mut(t));
            }
        });
    }

    /// Publishes the outcome of one pass of `key`. A target no longer registered
    /// (removed while its pass ran) publishes nothing.
    pub fn publish(&self, key: &TargetKey, duration: Duration, outcome: Outcome) {
        let now = SystemTime::now();
        let now_instant = Instant::now();
        let collectors = self.collectors();
        // Rendering happens outside the lock.
        let prepared = match outcome {
            Outcome::Success {
                datacenters,
                anomalies,
                folded,
                lifecycle,
                named,
            } => Ok((
                datacenters
                    .iter()
                    .map(|(dc, images)| {
                        let published = PublishedImages {
                            at_instant: now_instant,
                            total_images: images.total_images(),
                            total_bytes: images.groups.values().map(|g| g.size_bytes).sum(),
                            lines: lines::images(&key.account, dc, images, &named, &collectors),
                        };
                        let mut start = LifecycleCounters::default();
                        if !matches!(lifecycle, Lifecycle::Off) {
                            start.start(images.groups.keys().map(|g| (g.status, &g.image_type)));
                        }
                        (dc.clone(), (Arc::new(published), start))
                    })
                    .collect::<BTreeMap<_, _>>(),
                anomalies,
                folded,
                lifecycle,
            )),
            Outcome::Failure {
                reason,
                message,
                trace_id,
            } => Err((reason, message, trace_id)),
        };
        self.update(|snap| {
            let Some(target) = snap.targets.get_mut(key) else {
                return;
            };
            let t = Arc::make_mut(target);
            t.passes += 1;
            t.last_duration = duration;
            match prepared {
                Ok((found, anomalies, mut folded, lifecycle)) => {
                    t.up = true;
                    t.last_success = Some(now);
                    let discovery = key.datacenter.is_none();
                    if discovery && !found.is_empty() {
                        t.datacenters.remove(NO_DATACENTER);
                    }
                    // A datacenter gone from discovery loses its images now (its
                    // groups are gone), and its series after stale-after.
                    let stale_after = t.stale_after;
                    t.datacenters.retain(|dc, series| {
                        if found.contains_key(dc) {
                            return true;
                        }
                        series.images = None;
                        series.folded.clear();
                        series
                            .last_seen
                            .is_some_and(|seen| now_instant.duration_since(seen) <= stale_after)
                            || (discovery && found.is_empty() && dc == NO_DATACENTER)
                    });
                    if discovery && found.is_empty() {
                        t.datacenters.entry(NO_DATACENTER.to_string()).or_default();
                    }
                    // With `--limit.datacenters` folding, the lifecycle changes of
                    // a datacenter not published under its own key count under
                    // `other`, as its images do: a series made for a raw key
                    // would hold a pass's changes only until the next pass
                    // dropped it, and the keys would be unbounded.
                    let folding = folded
                        .get(crate::labels::OTHER)
                        .is_some_and(|f| f.iter().any(|(label, _)| *label == "datacenter_key"));
                    let published: Vec<String> = found.keys().cloned().collect();
                    for (dc, (images, start)) in found {
                        let series = t.datacenters.entry(dc.clone()).or_default();
                        series.images = Some(images);
                        series.last_seen = Some(now_instant);
                        series.folded = folded.remove(&dc).unwrap_or_default();
                        for anomaly in &anomalies {
                            series.anomalies[anomaly.index()] += 1;
                        }
                        let counters = &mut series.lifecycle;
                        match &lifecycle {
                            Lifecycle::Skipped => counters.skipped += 1,
                            Lifecycle::Baseline | Lifecycle::Changes(_) => {
                                for (k, v) in start.created {
                                    counters.created.entry(k).or_insert(v);
                                }
                                for (k, v) in start.deleted {
                                    counters.deleted.entry(k).or_insert(v);
                                }
                                for (k, v) in start.transitions {
                                    counters.transitions.entry(k).or_insert(v);
                                }
                            }
                            Lifecycle::Off => {}
                        }
                    }
                    if let Lifecycle::Changes(changes) = lifecycle {
                        // A datacenter gone from discovery has its deletions
                        // counted beside its last series.
                        for (dc, changes) in changes {
                            let dc = if folding && !published.contains(&dc) {
                                crate::labels::OTHER.to_string()
                            } else {
                                dc
                            };
                            let series = t.datacenters.entry(dc).or_default();
                            series.lifecycle.add(changes, collectors.image_types);
                        }
                    }
                }
                Err((reason, message, trace_id)) => {
                    t.up = false;
                    t.last_error = Some(LastError {
                        at: now,
                        reason,
                        message,
                        trace_id,
                    });
                    for series in t.datacenters.values_mut() {
                        series.failures[reason.index()] += 1;
                        if let Some(anomaly) = reason.anomaly() {
                            series.anomalies[anomaly.index()] += 1;
                        }
                        if collectors.lifecycle {
                            series.lifecycle.skipped += 1;
                        }
                    }
                }
            }
            t.render(&key.account, &collectors);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::{GroupKey, GroupStats};
    use crate::labels::Status;

    fn images(n: u64) -> DatacenterImages {
        let mut d = DatacenterImages::default();
        d.groups.insert(
            GroupKey {
                status: Status::Available,
                image_type: "Windows".into(),
            },
            GroupStats {
                count: n,
                size_bytes: u128::from(n) * 10,
                oldest_created_ms: Some(1_700_000_000_000),
            },
        );
        d
    }

    fn success(dcs: &[(&str, u64)]) -> Outcome {
        Outcome::Success {
            datacenters: dcs
                .iter()
                .map(|(dc, n)| (dc.to_string(), images(*n)))
                .collect(),
            anomalies: Vec::new(),
            folded: BTreeMap::new(),
            lifecycle: Lifecycle::Off,
            named: Vec::new(),
        }
    }

    fn failure() -> Outcome {
        Outcome::Failure {
            reason: Reason::Http,
            message: "HTTP status 503".into(),
            trace_id: None,
        }
    }

    fn text(state: &State) -> String {
        let snap = state.snapshot();
        let sources = crate::metrics::writer::Sources {
            lines: snap.lines(None),
            collectors: &snap.collectors,
            own: &[],
        };
        let body = sources.body(crate::metrics::Format::Text, false);
        String::from_utf8(body.to_vec()).unwrap()
    }

    #[test]
    fn a_target_is_ready_after_its_first_pass_whatever_its_outcome() {
        let state = State::new();
        assert!(
            !state.snapshot().ready(),
            "no target registered yet is not ready"
        );
        let hz = TargetKey::datacenter("a", "HZ");
        let sh = TargetKey::datacenter("a", "SH");
        state.register(&hz, Duration::from_secs(60), Duration::from_secs(300));
        state.register(&sh, Duration::from_secs(60), Duration::from_secs(300));
        assert!(!state.snapshot().ready());
        state.mark_started();
        assert!(!state.snapshot().ready());
        state.publish(&hz, Duration::ZERO, success(&[("HZ", 3)]));
        assert!(!state.snapshot().ready(), "SH has not finished a pass");
        state.publish(&sh, Duration::ZERO, failure());
        assert!(state.snapshot().ready());
    }

    #[test]
    fn a_failure_keeps_the_last_good_numbers_and_counts_its_reason() {
        let state = State::new();
        let hz = TargetKey::datacenter("a", "HZ");
        state.register(&hz, Duration::from_secs(60), Duration::from_secs(300));
        state.publish(&hz, Duration::ZERO, success(&[("HZ", 3)]));
        state.publish(&hz, Duration::ZERO, failure());
        let out = text(&state);
        assert!(out.contains("finovy_images{account=\"a\",datacenter_key=\"HZ\",status=\"available\",image_type=\"Windows\"} 3"), "{out}");
        assert!(out.contains("finovy_up{account=\"a\",datacenter_key=\"HZ\"} 0"));
        assert!(out.contains(
            "finovy_refresh_failures_total{account=\"a\",datacenter_key=\"HZ\",reason=\"http\"} 1"
        ));
        assert!(out.contains(
            "finovy_refresh_failures_total{account=\"a\",datacenter_key=\"HZ\",reason=\"auth\"} 0"
        ));
    }

    #[test]
    fn stale_numbers_are_dropped_but_the_target_stays() {
        let state = State::new();
        let hz = TargetKey::datacenter("a", "HZ");
        state.register(&hz, Duration::from_secs(60), Duration::ZERO);
        state.publish(&hz, Duration::ZERO, success(&[("HZ", 3)]));
        std::thread::sleep(Duration::from_millis(5));
        let out = text(&state);
        assert!(!out.contains("finovy_images{"), "{out}");
        assert!(out.contains("finovy_up{account=\"a\",datacenter_key=\"HZ\"} 1"));
    }

    #[test]
    fn a_removed_target_vanishes_with_its_counters() {
        let state = State::new();
        let hz = TargetKey::datacenter("a", "HZ");
        state.register(&hz, Duration::from_secs(60), Duration::from_secs(300));
        state.publish(&hz, Duration::ZERO, failure());
        state.remove(&hz);
        assert!(!text(&state).contains("datacenter_key=\"HZ\""));
        // A pass that ends after its target was removed publishes nothing.
        state.publish(&hz, Duration::ZERO, success(&[("HZ", 1)]));
        assert!(!text(&state).contains("datacenter_key=\"HZ\""));
    }

    #[test]
    fn discovery_drops_a_vanished_datacenter_s_images_at_once_and_its_series_after_stale_after() {
        let state = State::new();
        let all = TargetKey::discovery("a");
        state.register(&all, Duration::from_secs(60), Duration::from_millis(30));
        assert!(text(&state).contains("finovy_up{account=\"a\",datacenter_key=\"\"} 0"));
        state.publish(&all, Duration::ZERO, success(&[("HZ", 1), ("SH", 2)]));
        let out = text(&state);
        assert!(!out.contains("datacenter_key=\"\""), "{out}");
        state.publish(&all, Duration::ZERO, success(&[("HZ", 1)]));
        let out = text(&state);
        assert!(
            !out.contains("finovy_images{account=\"a\",datacenter_key=\"SH\""),
            "{out}"
        );
        assert!(
            out.contains("finovy_up{account=\"a\",datacenter_key=\"SH\"}"),
            "kept while fresh"
        );
        std::thread::sleep(Duration::from_millis(40));
        state.publish(&all, Duration::ZERO, success(&[("HZ", 1)]));
        assert!(
            !text(&state).contains("datacenter_key=\"SH\""),
            "gone after stale-after"
        );
        // A discovery that finds nothing still shows that it ran.
        state.publish(&all, Duration::ZERO, success(&[]));
        std::thread::sleep(Duration::from_millis(40));
        state.publish(&all, Duration::ZERO, success(&[]));
        assert!(text(&state).contains("finovy_up{account=\"a\",datacenter_key=\"\"} 1"));
    }
    #[test]
    fn each_part_holds_its_family_s_lines_only() {
        let state = crate::state::State::new();
        let key = crate::account::TargetKey::datacenter("a", "HZ");
        state.register(
            &key,
            std::time::Duration::from_secs(60),
            std::time::Duration::ZERO,
        );
        let snap = state.snapshot();
        let target = &snap.targets[&key];
        let mut dc = (*target.datacenters["HZ"]).clone();
        dc.anomalies = [2; Anomaly::ALL.len()];
        dc.folded = vec![("image_type", 3)];
        let lines = render_series("a", "HZ", target, &dc, false);
        let mut parts = 0;
        for (i, part) in crate::metrics::BODY.iter().enumerate() {
            for line in lines.part(i).lines() {
                assert!(line.starts_with(part.family.name), "{line} in {i}");
                parts += 1;
            }
        }
        // up, duration, last success, interval, a line per reason and anomaly,
        // one folded label.
        assert_eq!(parts, 4 + Reason::ALL.len() + Anomaly::ALL.len() + 1);
        assert_eq!(
            lines.part(crate::metrics::slot(&crate::metrics::UP, None)),
            "finovy_up{account=\"a\",datacenter_key=\"HZ\"} 0\n"
        );
        assert_eq!(
            lines.part(crate::metrics::BODY.len()),
            "",
            "past the table: nothing"
        );
        assert!(Lines::default().part(0).is_empty());
    }
}
