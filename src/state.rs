//! The published state: what the last pass of every target found, its counters,
//! and their text exposition.
//!
//! Every pass publishes by building a new [`TargetState`] and swapping a new
//! immutable [`Snapshot`] in whole, so a scrape sees each target either before or
//! after a pass, never half of one. The image series are rendered to text when a
//! result is published, not when scraped; a scrape copies the pre-rendered lines
//! of every datacenter whose data is younger than its stale-after. The lock is held
//! only to clone or swap an `Arc`, never across I/O.
//!
//! A target's counters (failures, anomalies) live here, beside its series, so that
//! they vanish with the target (removed from the configuration, or a datacenter
//! gone from discovery for longer than stale-after) and never outlive it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use crate::account::TargetKey;
use crate::aggregate::{AgeHistogram, DatacenterImages, NamedImage, AGE_BUCKETS_SECONDS};
use crate::labels::{Anomaly, Reason, Status};
use crate::lifecycle::Changes;
use crate::metrics::{self, Collectors, Family, Format};

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

/// The lifecycle counters of one datacenter.
#[derive(Debug, Clone, Default)]
pub struct LifecycleCounters {
    /// Passes that changed no counter.
    pub skipped: u64,
    /// `finovy_images_created_total`, per image type.
    pub created: BTreeMap<String, u64>,
    /// `finovy_images_deleted_total`, per (status, image type).
    pub deleted: BTreeMap<(Status, String), u64>,
    /// `finovy_image_status_transitions_total`, per (image type, from, to).
    pub transitions: BTreeMap<(String, Status, Status), u64>,
}

impl LifecycleCounters {
    /// Starts at 0 the series an alert needs before their first increase (an
    /// `increase()` over a series that appears at 1 sees nothing): per image type,
    /// created and the moves out of `creating`; per group, deleted.
    fn start(&mut self, images: &DatacenterImages) {
        for group in images.groups.keys() {
            let ty = &group.image_type;
            self.created.entry(ty.clone()).or_default();
            self.deleted.entry((group.status, ty.clone())).or_default();
            for to in [Status::Available, Status::Failed] {
                self.transitions
                    .entry((ty.clone(), Status::Creating, to))
                    .or_default();
            }
        }
    }

    /// Adds `changes`, keeping at most `type_cap` image types (the rest count
    /// under `other`, as folded groups do).
    fn add(&mut self, changes: Changes, type_cap: usize) {
        let mut types: std::collections::BTreeSet<String> = self
            .created
            .keys()
            .cloned()
            .chain(self.deleted.keys().map(|k| k.1.clone()))
            .chain(self.transitions.keys().map(|k| k.0.clone()))
            .collect();
        let mut label = |ty: String| -> String {
            if types.contains(&ty) || types.len() < type_cap.saturating_sub(1).max(1) {
                types.insert(ty.clone());
                ty
            } else {
                crate::labels::OTHER.to_string()
            }
        };
        for (ty, n) in changes.created {
            *self.created.entry(label(ty)).or_default() += n;
        }
        for ((status, ty), n) in changes.deleted {
            *self.deleted.entry((status, label(ty))).or_default() += n;
        }
        for ((ty, from, to), n) in changes.transitions {
            *self.transitions.entry((label(ty), from, to)).or_default() += n;
        }
    }
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
    /// When that pass succeeded (wall clock).
    pub at: SystemTime,
    at_instant: Instant,
    /// Images over all groups.
    pub total_images: u64,
    /// Bytes over all groups.
    pub total_bytes: u64,
    /// Number of (status, image type) groups.
    pub groups: usize,
    rendered: [String; IMAGE_FAMILIES.len()],
    /// Ages per status (empty when the age collector is off).
    ages: BTreeMap<Status, AgeHistogram>,
    /// `finovy_image_info` samples of this datacenter, rendered.
    info: String,
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
    pub datacenters: BTreeMap<String, DatacenterSeries>,
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
            datacenters: BTreeMap::from([(dc, DatacenterSeries::default())]),
        }
    }

    /// Whether a datacenter's image series are still served.
    pub fn is_fresh(&self, images: &PublishedImages) -> bool {
        images.at_instant.elapsed() <= self.stale_after
    }

    /// Images over the fresh series of all its datacenters, when it has any.
    pub fn fresh_images(&self) -> Option<(u64, u64)> {
        let mut found = None;
        for series in self.datacenters.values() {
            if let Some(images) = series.images.as_ref().filter(|im| self.is_fresh(im)) {
                let (n, bytes) = found.get_or_insert((0, 0));
                *n += images.total_images;
                *bytes += images.total_bytes;
            }
        }
        found
    }
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
}

impl Snapshot {
    /// Whether the targets are known and every one has finished its first pass
    /// (a shard may own none: it is ready at once).
    pub fn ready(&self) -> bool {
        self.started && self.targets.values().all(|t| t.passes > 0)
    }
}

/// The shared, swappable snapshot.
#[derive(Debug, Default)]
pub struct State {
    current: RwLock<Arc<Snapshot>>,
}

const IMAGE_FAMILIES: [Family; 3] = [
    metrics::IMAGES,
    metrics::IMAGES_SIZE,
    metrics::IMAGES_OLDEST,
];

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

    fn update(&self, change: impl FnOnce(&mut Snapshot)) {
        let mut guard = self.current.write().unwrap_or_else(|e| e.into_inner());
        let mut next = Snapshot::clone(&guard);
        change(&mut next);
        *guard = Arc::new(next);
    }

    /// Adds a target before its first pass (not ready until that pass ends), or
    /// updates the schedule of a known one, keeping its series and counters.
    pub fn register(&self, key: &TargetKey, interval: Duration, stale_after: Duration) {
        self.update(|snap| match snap.targets.get_mut(key) {
            Some(existing) => {
                let state = Arc::make_mut(existing);
                state.interval = interval;
                state.stale_after = stale_after;
            }
            None => {
                snap.targets.insert(
                    key.clone(),
                    Arc::new(TargetState::new(key, interval, stale_after)),
                );
            }
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
        self.update(|snap| {
            if let Some(t) = snap.targets.get_mut(key) {
                Arc::make_mut(t).next_pass = Some(at);
            }
        });
    }

    /// Sets (or clears) the notice of a target.
    pub fn set_notice(&self, key: &TargetKey, notice: Option<String>) {
        self.update(|snap| {
            if let Some(t) = snap.targets.get_mut(key) {
                Arc::make_mut(t).notice = notice;
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
                        let mut published =
                            render_images(key, dc, images, now, now_instant, &collectors);
                        if collectors.image_info.is_some() {
                            for n in named.iter().filter(|n| n.datacenter == *dc) {
                                let labels = [
                                    key.account.as_str(),
                                    dc,
                                    &n.details.id,
                                    &n.details.image_id,
                                    &n.details.image_name,
                                    &n.image_type,
                                    n.status.label(),
                                ];
                                sample(&mut published.info, &metrics::IMAGE_INFO, &labels, 1);
                            }
                        }
                        (dc.clone(), (Arc::new(published), images))
                    })
                    .map(|(dc, (published, images))| {
                        let mut start = LifecycleCounters::default();
                        if !matches!(lifecycle, Lifecycle::Off) {
                            start.start(images);
                        }
                        (dc, (published, start))
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
                        if collectors.lifecycle {
                            series.lifecycle.skipped += 1;
                        }
                    }
                }
            }
        });
    }

    /// Appends the exposition of `snap` (a snapshot of this state) in `format`
    /// to `out`.
    pub fn encode_snapshot(snap: &Snapshot, format: Format, out: &mut Vec<u8>) {
        let mut text = String::with_capacity(4096);
        let c = &snap.collectors;
        let header = |text: &mut String, family: &Family| header(text, family, format);
        for (i, family) in IMAGE_FAMILIES.iter().enumerate() {
            if (i == 1 && !c.size) || (i == 2 && !c.oldest) {
                continue;
            }
            header(&mut text, family);
            for t in snap.targets.values() {
                for series in t.datacenters.values() {
                    if let Some(images) = series.images.as_ref().filter(|im| t.is_fresh(im)) {
                        text.push_str(&images.rendered[i]);
                    }
                }
            }
        }
        if c.age {
            encode_ages(snap, format, &mut text);
        }
        if c.lifecycle {
            encode_lifecycle(snap, format, &mut text);
        }
        if c.image_info.is_some() {
            header(&mut text, &metrics::IMAGE_INFO);
            for (_, _, images) in fresh(snap) {
                text.push_str(&images.info);
            }
        }
        let per_datacenter =
            |text: &mut String,
             family: &Family,
             value: &dyn Fn(&TargetState, &DatacenterSeries) -> f64| {
                header(text, family);
                for (key, t) in &snap.targets {
                    for (dc, series) in &t.datacenters {
                        sample(text, family, &[&key.account, dc], value(t, series));
                    }
                }
            };
        per_datacenter(&mut text, &metrics::UP, &|t, _| f64::from(u8::from(t.up)));
        per_datacenter(&mut text, &metrics::REFRESH_DURATION, &|t, _| {
            t.last_duration.as_secs_f64()
        });
        per_datacenter(&mut text, &metrics::REFRESH_LAST_SUCCESS, &|t, _| {
            t.last_success.map_or(0.0, unix_seconds)
        });
        per_datacenter(&mut text, &metrics::REFRESH_INTERVAL, &|t, _| {
            t.interval.as_secs_f64()
        });
        header(&mut text, &metrics::REFRESH_FAILURES);
        for (key, t) in &snap.targets {
            for (dc, series) in &t.datacenters {
                for reason in Reason::ALL {
                    let n = series.failures[reason.index()];
                    sample(
                        &mut text,
                        &metrics::REFRESH_FAILURES,
                        &[&key.account, dc, reason.label()],
                        n,
                    );
                }
            }
        }
        header(&mut text, &metrics::PAGINATION_ANOMALIES);
        for (key, t) in &snap.targets {
            for (dc, series) in &t.datacenters {
                for anomaly in Anomaly::ALL {
                    let n = series.anomalies[anomaly.index()];
                    sample(
                        &mut text,
                        &metrics::PAGINATION_ANOMALIES,
                        &[&key.account, dc, anomaly.label()],
                        n,
                    );
                }
            }
        }
        header(&mut text, &metrics::LIMIT_FOLDED);
        for (key, t) in &snap.targets {
            for (dc, series) in &t.datacenters {
                for (label, n) in &series.folded {
                    sample(
                        &mut text,
                        &metrics::LIMIT_FOLDED,
                        &[&key.account, dc, label],
                        n,
                    );
                }
            }
        }
        out.extend_from_slice(text.as_bytes());
    }
}

/// The fresh datacenter series of `snap`, with their account.
fn fresh(snap: &Snapshot) -> impl Iterator<Item = (&str, &str, &PublishedImages)> {
    snap.targets.iter().flat_map(|(key, t)| {
        t.datacenters.iter().filter_map(move |(dc, series)| {
            let images = series.images.as_deref().filter(|im| t.is_fresh(im))?;
            Some((key.account.as_str(), dc.as_str(), images))
        })
    })
}

/// `finovy_images_age_seconds`: in OpenMetrics one gauge histogram (each
/// series' buckets, `_gcount` and `_gsum` together, as it wants them); in the
/// text format a histogram of the buckets and two gauge families (see
/// [`metrics::Kind::as_str`]).
fn encode_ages(snap: &Snapshot, format: Format, text: &mut String) {
    let family = &metrics::IMAGES_AGE;
    let bound_labels: Vec<String> = AGE_BUCKETS_SECONDS
        .iter()
        .map(|b| format!("{b}.0"))
        .chain(["+Inf".to_string()])
        .collect();
    let buckets = |text: &mut String, account: &str, dc: &str, s: Status, h: &AgeHistogram| {
        let mut cumulative = 0;
        for (n, le) in h.buckets.iter().zip(&bound_labels) {
            cumulative += n;
            let labels = [account, dc, s.label(), le];
            sample_named(text, family, "_bucket", &labels, cumulative);
        }
    };
    let sum = |h: &AgeHistogram| h.sum_ms as f64 / 1000.0;
    header(text, family, format);
    for (account, dc, images) in fresh(snap) {
        for (status, h) in &images.ages {
            buckets(text, account, dc, *status, h);
            if format == Format::OpenMetrics {
                let labels = &[account, dc, status.label()][..];
                let parent = Family {
                    labels: metrics::IMAGES_AGE_GCOUNT.labels,
                    ..*family
                };
                sample_named(text, &parent, "_gcount", labels, h.count());
                sample_named(text, &parent, "_gsum", labels, sum(h));
            }
        }
    }
    if format == Format::Text {
        for (family, value) in [
            (
                &metrics::IMAGES_AGE_GCOUNT,
                &(|h: &AgeHistogram| h.count() as f64) as &dyn Fn(&AgeHistogram) -> f64,
            ),
            (&metrics::IMAGES_AGE_GSUM, &sum),
        ] {
            header(text, family, format);
            for (account, dc, images) in fresh(snap) {
                for (status, h) in &images.ages {
                    sample(text, family, &[account, dc, status.label()], value(h));
                }
            }
        }
    }
}

/// The lifecycle counters of every datacenter series.
fn encode_lifecycle(snap: &Snapshot, format: Format, text: &mut String) {
    let each = |f: &mut dyn FnMut(&str, &str, &LifecycleCounters)| {
        for (key, t) in &snap.targets {
            for (dc, series) in &t.datacenters {
                f(&key.account, dc, &series.lifecycle);
            }
        }
    };
    header(text, &metrics::IMAGES_CREATED, format);
    each(&mut |account, dc, c| {
        for (ty, n) in &c.created {
            sample(text, &metrics::IMAGES_CREATED, &[account, dc, ty], n);
        }
    });
    header(text, &metrics::IMAGES_DELETED, format);
    each(&mut |account, dc, c| {
        for ((status, ty), n) in &c.deleted {
            let labels = [account, dc, status.label(), ty.as_str()];
            sample(text, &metrics::IMAGES_DELETED, &labels, n);
        }
    });
    header(text, &metrics::STATUS_TRANSITIONS, format);
    each(&mut |account, dc, c| {
        for ((ty, from, to), n) in &c.transitions {
            let labels = [account, dc, ty.as_str(), from.label(), to.label()];
            sample(text, &metrics::STATUS_TRANSITIONS, &labels, n);
        }
    });
    header(text, &metrics::LIFECYCLE_SKIPPED, format);
    each(&mut |account, dc, c| {
        sample(text, &metrics::LIFECYCLE_SKIPPED, &[account, dc], c.skipped);
    });
}

fn render_images(
    key: &TargetKey,
    datacenter: &str,
    images: &DatacenterImages,
    now: SystemTime,
    now_instant: Instant,
    collectors: &Collectors,
) -> PublishedImages {
    let mut rendered: [String; 3] = Default::default();
    let mut total_bytes = 0u64;
    for (group, stats) in &images.groups {
        let labels = [
            key.account.as_str(),
            datacenter,
            group.status.label(),
            group.image_type.as_str(),
        ];
        total_bytes = total_bytes.saturating_add(stats.size_bytes);
        sample(&mut rendered[0], &IMAGE_FAMILIES[0], &labels, stats.count);
        if collectors.size {
            sample(
                &mut rendered[1],
                &IMAGE_FAMILIES[1],
                &labels,
                stats.size_bytes,
            );
        }
        if let Some(ms) = stats.oldest_created_ms.filter(|_| collectors.oldest) {
            sample(
                &mut rendered[2],
                &IMAGE_FAMILIES[2],
                &labels,
                ms as f64 / 1000.0,
            );
        }
    }
    PublishedImages {
        at: now,
        at_instant: now_instant,
        total_images: images.total_images(),
        total_bytes,
        groups: images.groups.len(),
        rendered,
        ages: if collectors.age {
            images.ages.clone()
        } else {
            BTreeMap::new()
        },
        info: String::new(),
    }
}

/// The `# HELP` and `# TYPE` lines of `family`. In OpenMetrics a counter's
/// family is named without its samples' `_total`, and the help escapes quotes.
fn header(out: &mut String, family: &Family, format: Format) {
    let (name, kind) = match format {
        Format::Text => (family.name, family.kind.as_str()),
        Format::OpenMetrics => (
            family.name.strip_suffix("_total").unwrap_or(family.name),
            family.kind.openmetrics(),
        ),
    };
    let help = match format {
        Format::Text => std::borrow::Cow::Borrowed(family.help),
        Format::OpenMetrics => std::borrow::Cow::Owned(family.help.replace('"', "\\\"")),
    };
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Writes one sample of `family`; `values` follow its label names.
fn sample(out: &mut String, family: &Family, values: &[&str], value: impl std::fmt::Display) {
    sample_named(out, family, "", values, value);
}

/// Writes one sample of `family` named with `suffix` (`_bucket`, ...).
fn sample_named(
    out: &mut String,
    family: &Family,
    suffix: &str,
    values: &[&str],
    value: impl std::fmt::Display,
) {
    debug_assert_eq!(family.labels.len(), values.len(), "{}", family.name);
    out.push_str(family.name);
    out.push_str(suffix);
    out.push('{');
    for (i, (k, v)) in family.labels.iter().zip(values).enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(k);
        out.push_str("=\"");
        escape_label_value(out, v);
        out.push('"');
    }
    let _ = writeln!(out, "}} {value}");
}

/// Escapes a label value for the text format: backslash, double quote, newline.
fn escape_label_value(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Seconds since the Unix epoch (kept here too for the renderers that use it).
pub use crate::unix_seconds;

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
                size_bytes: n * 10,
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
        let mut out = Vec::new();
        State::encode_snapshot(&state.snapshot(), Format::Text, &mut out);
        String::from_utf8(out).unwrap()
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
}
