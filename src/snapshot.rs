//! The published state: what the last refreshes found, and its text exposition.
//!
//! The scheduler builds a new immutable [`Snapshot`] for every result and swaps it
//! in whole, so a scrape sees each datacenter either before or after a refresh,
//! never half of one. The image series are rendered to text when a result is
//! published, not when scraped; a scrape copies the pre-rendered lines of every
//! datacenter whose data is younger than `--refresh.stale-after`. The lock is
//! held only to clone or swap an `Arc`, never across I/O.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use crate::aggregate::DatacenterImages;
use crate::refresh::Reason;

/// How one refresh of one datacenter ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The full list was read.
    Success {
        /// The groups found.
        images: DatacenterImages,
    },
    /// The refresh failed.
    Failure {
        /// Why, as the metric label.
        reason: Reason,
        /// What happened, for `/readyz` and the landing page. Never holds the token.
        message: String,
    },
}

/// The last error of a datacenter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastError {
    /// When it happened.
    pub at: SystemTime,
    /// Why.
    pub reason: Reason,
    /// What happened.
    pub message: String,
}

/// The image series of one datacenter, as of its last successful refresh.
#[derive(Debug, Clone)]
pub struct PublishedImages {
    /// When that refresh succeeded (wall clock).
    pub at: SystemTime,
    at_instant: Instant,
    /// Images over all groups.
    pub total_images: u64,
    /// Number of (status, image type) groups.
    pub groups: usize,
    rendered: [String; IMAGE_FAMILIES.len()],
}

/// Everything known about one datacenter.
#[derive(Debug, Clone)]
pub struct DatacenterState {
    /// Whether its last refresh succeeded.
    pub up: bool,
    /// Wall time of its last refresh.
    pub last_duration: Duration,
    /// When it last refreshed successfully.
    pub last_success: Option<SystemTime>,
    /// Its last error, if any refresh failed.
    pub last_error: Option<LastError>,
    /// Its image series, until they turn stale.
    pub images: Option<Arc<PublishedImages>>,
}

/// One consistent view of every datacenter.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Per datacenter key.
    pub datacenters: BTreeMap<String, Arc<DatacenterState>>,
    /// Refresh cycles finished so far.
    pub cycles: u64,
}

/// The shared, swappable snapshot, with the staleness rule.
#[derive(Debug)]
pub struct State {
    current: RwLock<Arc<Snapshot>>,
    stale_after: Duration,
}

type Family = (&'static str, &'static str);

const IMAGE_FAMILIES: [Family; 3] = [
    (
        "finovy_images",
        "Number of images per datacenter, status and image type, as of the last successful refresh of the datacenter (not fetched at scrape time).",
    ),
    (
        "finovy_images_size_bytes",
        "Total size in bytes of the images per datacenter, status and image type, as of the last successful refresh of the datacenter (not fetched at scrape time).",
    ),
    (
        "finovy_images_oldest_created_timestamp_seconds",
        "Creation time of the oldest image per datacenter, status and image type, as of the last successful refresh of the datacenter (not fetched at scrape time).",
    ),
];

const HEALTH_FAMILIES: [Family; 3] = [
    (
        "finovy_up",
        "Whether the last refresh of the datacenter succeeded (1) or failed (0).",
    ),
    (
        "finovy_refresh_duration_seconds",
        "Wall time of the last refresh of the datacenter, in seconds.",
    ),
    (
        "finovy_refresh_last_success_timestamp_seconds",
        "Unix time of the last successful refresh of the datacenter (0 before the first).",
    ),
];

impl State {
    /// An empty state: no datacenter known, no cycle finished.
    pub fn new(stale_after: Duration) -> Self {
        State {
            current: RwLock::new(Arc::new(Snapshot::default())),
            stale_after,
        }
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

    /// Publishes the outcome of one datacenter's refresh.
    pub fn publish(&self, datacenter: &str, duration: Duration, outcome: Outcome) {
        let now = SystemTime::now();
        let rendered = self.prepare(datacenter, duration, outcome, now);
        self.update(|snap| {
            let previous = snap.datacenters.get(datacenter).cloned();
            let state = rendered.resolve(previous.as_deref(), self.stale_after);
            snap.datacenters
                .insert(datacenter.to_string(), Arc::new(state));
        });
    }

    /// Publishes a discovery pass: on success its datacenters replace the known
    /// ones (those gone upstream disappear); on failure every known datacenter
    /// fails, or, before any is known, the pseudo-datacenter `""`.
    pub fn publish_discovery(
        &self,
        duration: Duration,
        result: Result<BTreeMap<String, DatacenterImages>, (Reason, String)>,
    ) {
        let now = SystemTime::now();
        match result {
            Ok(found) => {
                let prepared: Vec<_> = found
                    .into_iter()
                    .map(|(dc, images)| {
                        let p = self.prepare(&dc, duration, Outcome::Success { images }, now);
                        (dc, p)
                    })
                    .collect();
                self.update(|snap| {
                    let mut next = BTreeMap::new();
                    for (dc, p) in prepared {
                        let previous = snap.datacenters.get(&dc).cloned();
                        next.insert(
                            dc,
                            Arc::new(p.resolve(previous.as_deref(), self.stale_after)),
                        );
                    }
                    snap.datacenters = next;
                });
            }
            Err((reason, message)) => self.update(|snap| {
                let mut keys: Vec<String> = snap.datacenters.keys().cloned().collect();
                if keys.is_empty() {
                    keys.push(String::new());
                }
                for dc in keys {
                    let previous = snap.datacenters.get(&dc).cloned();
                    let failure = Prepared::Failure {
                        duration,
                        error: LastError {
                            at: now,
                            reason,
                            message: message.clone(),
                        },
                    };
                    snap.datacenters.insert(
                        dc,
                        Arc::new(failure.resolve(previous.as_deref(), self.stale_after)),
                    );
                }
            }),
        }
    }

    /// Records that a refresh cycle has finished (for `/readyz`).
    pub fn finish_cycle(&self) {
        self.update(|snap| snap.cycles += 1);
    }

    fn prepare(
        &self,
        datacenter: &str,
        duration: Duration,
        outcome: Outcome,
        now: SystemTime,
    ) -> Prepared {
        match outcome {
            Outcome::Success { images } => Prepared::Success {
                duration,
                images: Arc::new(render_images(datacenter, &images, now)),
            },
            Outcome::Failure { reason, message } => Prepared::Failure {
                duration,
                error: LastError {
                    at: now,
                    reason,
                    message,
                },
            },
        }
    }

    /// Whether a datacenter's image series are still served.
    pub fn is_fresh(&self, images: &PublishedImages) -> bool {
        images.at_instant.elapsed() <= self.stale_after
    }

    /// Appends the text exposition of `snap` (a snapshot of this state) to `out`.
    pub fn encode_snapshot(&self, snap: &Snapshot, out: &mut Vec<u8>) {
        let mut text = String::with_capacity(4096);
        for (i, (name, help)) in IMAGE_FAMILIES.iter().enumerate() {
            header(&mut text, name, help);
            for state in snap.datacenters.values() {
                if let Some(images) = state.images.as_ref().filter(|im| self.is_fresh(im)) {
                    text.push_str(&images.rendered[i]);
                }
            }
        }
        let [up, duration, last_success] = HEALTH_FAMILIES;
        header(&mut text, up.0, up.1);
        for (dc, state) in &snap.datacenters {
            sample(
                &mut text,
                up.0,
                &[("datacenter_key", dc)],
                u64::from(state.up),
            );
        }
        header(&mut text, duration.0, duration.1);
        for (dc, state) in &snap.datacenters {
            sample(
                &mut text,
                duration.0,
                &[("datacenter_key", dc)],
                state.last_duration.as_secs_f64(),
            );
        }
        header(&mut text, last_success.0, last_success.1);
        for (dc, state) in &snap.datacenters {
            let at = state.last_success.map_or(0.0, unix_seconds);
            sample(&mut text, last_success.0, &[("datacenter_key", dc)], at);
        }
        out.extend_from_slice(text.as_bytes());
    }
}

/// A result ready to be swapped in; the images are rendered outside the lock.
enum Prepared {
    Success {
        duration: Duration,
        images: Arc<PublishedImages>,
    },
    Failure {
        duration: Duration,
        error: LastError,
    },
}

impl Prepared {
    fn resolve(self, previous: Option<&DatacenterState>, stale_after: Duration) -> DatacenterState {
        match self {
            Prepared::Success { duration, images } => DatacenterState {
                up: true,
                last_duration: duration,
                last_success: Some(images.at),
                last_error: previous.and_then(|p| p.last_error.clone()),
                images: Some(images),
            },
            Prepared::Failure { duration, error } => DatacenterState {
                up: false,
                last_duration: duration,
                last_success: previous.and_then(|p| p.last_success),
                last_error: Some(error),
                // The last good numbers stay until they are stale.
                images: previous
                    .and_then(|p| p.images.clone())
                    .filter(|im| im.at_instant.elapsed() <= stale_after),
            },
        }
    }
}

fn render_images(datacenter: &str, images: &DatacenterImages, now: SystemTime) -> PublishedImages {
    let mut rendered: [String; 3] = Default::default();
    for (key, stats) in &images.groups {
        let labels = [
            ("datacenter_key", datacenter),
            ("status", key.status.label()),
            ("image_type", key.image_type.as_str()),
        ];
        sample(&mut rendered[0], IMAGE_FAMILIES[0].0, &labels, stats.count);
        sample(
            &mut rendered[1],
            IMAGE_FAMILIES[1].0,
            &labels,
            stats.size_bytes,
        );
        if let Some(ms) = stats.oldest_created_ms {
            sample(
                &mut rendered[2],
                IMAGE_FAMILIES[2].0,
                &labels,
                ms as f64 / 1000.0,
            );
        }
    }
    PublishedImages {
        at: now,
        at_instant: Instant::now(),
        total_images: images.total_images(),
        groups: images.groups.len(),
        rendered,
    }
}

fn header(out: &mut String, name: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
}

fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
    out.push_str(name);
    out.push('{');
    for (i, (k, v)) in labels.iter().enumerate() {
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

/// Seconds since the Unix epoch.
pub fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::{GroupKey, GroupStats, Status};

    fn images(count: u64) -> DatacenterImages {
        let mut d = DatacenterImages::default();
        d.groups.insert(
            GroupKey {
                status: Status::Creating,
                image_type: "Win \"10\"\n\\".into(),
            },
            GroupStats {
                count,
                size_bytes: 3 * count,
                oldest_created_ms: Some(1_500),
            },
        );
        d
    }

    fn text(state: &State) -> String {
        let mut out = Vec::new();
        state.encode_snapshot(&state.snapshot(), &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn renders_escaped_labels_and_values() {
        let state = State::new(Duration::from_secs(60));
        state.publish(
            "HZ",
            Duration::from_millis(250),
            Outcome::Success { images: images(4) },
        );
        let t = text(&state);
        let labels = r#"{datacenter_key="HZ",status="creating",image_type="Win \"10\"\n\\"}"#;
        assert!(t.contains(&format!("finovy_images{labels} 4\n")), "{t}");
        assert!(t.contains(&format!("finovy_images_size_bytes{labels} 12\n")));
        assert!(t.contains(&format!(
            "finovy_images_oldest_created_timestamp_seconds{labels} 1.5\n"
        )));
        assert!(t.contains("finovy_up{datacenter_key=\"HZ\"} 1\n"));
        assert!(t.contains("finovy_refresh_duration_seconds{datacenter_key=\"HZ\"} 0.25\n"));
        assert_eq!(t.matches("# TYPE finovy_images gauge").count(), 1);
    }

    #[test]
    fn a_failure_keeps_the_numbers_until_stale() {
        let state = State::new(Duration::from_millis(200));
        state.publish("HZ", Duration::ZERO, Outcome::Success { images: images(4) });
        state.publish(
            "HZ",
            Duration::ZERO,
            Outcome::Failure {
                reason: Reason::Timeout,
                message: "slow".into(),
            },
        );
        let t = text(&state);
        assert!(t.contains("finovy_up{datacenter_key=\"HZ\"} 0\n"));
        assert!(t.contains("finovy_images{"), "kept while fresh: {t}");
        let snap = state.snapshot();
        assert_eq!(
            snap.datacenters["HZ"].last_error.as_ref().unwrap().reason,
            Reason::Timeout
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while text(&state).contains("finovy_images{") {
            assert!(Instant::now() < deadline, "series never went stale");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(text(&state).contains("finovy_up{datacenter_key=\"HZ\"} 0\n"));
    }

    #[test]
    fn discovery_replaces_the_set_and_fails_everything_known() {
        let state = State::new(Duration::from_secs(60));
        state.publish_discovery(Duration::ZERO, Err((Reason::Auth, "no".into())));
        assert!(text(&state).contains("finovy_up{datacenter_key=\"\"} 0\n"));
        let found = BTreeMap::from([("A".to_string(), images(1)), ("B".to_string(), images(2))]);
        state.publish_discovery(Duration::ZERO, Ok(found));
        let snap = state.snapshot();
        assert_eq!(snap.datacenters.keys().collect::<Vec<_>>(), ["A", "B"]);
        state.publish_discovery(Duration::ZERO, Err((Reason::Http, "503".into())));
        let snap = state.snapshot();
        assert!(snap
            .datacenters
            .values()
            .all(|d| !d.up && d.images.is_some()));
        let found = BTreeMap::from([("B".to_string(), images(2))]);
        state.publish_discovery(Duration::ZERO, Ok(found));
        assert!(!text(&state).contains("datacenter_key=\"A\""));
    }
}
