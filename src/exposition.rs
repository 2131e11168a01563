//! The `/metrics` body: encoded once, served to every scraper that asks soon after.
//!
//! Encoding the exporter's own metrics (the `prometheus` registry and the
//! `process_*` collector, which reads `/proc`) costs about a hundred microseconds;
//! the image series are already text. So a body, and its gzip form when asked
//! for, is kept and served again until a refresh publishes new results or
//! [`MAX_AGE`] passes. Every body is encoded from one snapshot, so a scrape never
//! mixes two refreshes either way.

use std::io::Write as _;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::metrics::Format;
use crate::state::{Snapshot, State};
use crate::telemetry::Telemetry;

/// How long an encoded body is served again while no new result is published:
/// the exporter's own counters and `process_*` values lag by at most this much.
pub const MAX_AGE: Duration = Duration::from_secs(1);

struct Encoded {
    at: Instant,
    snapshot: Arc<Snapshot>,
    plain: Bytes,
    gzip: OnceLock<Bytes>,
}

/// The cached `/metrics` body.
pub struct MetricsCache {
    state: Arc<State>,
    telemetry: Telemetry,
    /// One body per format ([`Format::Text`], [`Format::OpenMetrics`]).
    current: [Mutex<Option<Arc<Encoded>>>; 2],
}

impl MetricsCache {
    /// A cache over the published state and the exporter's own metrics.
    pub fn new(state: Arc<State>, telemetry: Telemetry) -> Self {
        MetricsCache {
            state,
            telemetry,
            current: Default::default(),
        }
    }

    /// The text-format body, gzip-compressed when `gzip`; the flag says whether
    /// it is.
    pub fn body(&self, gzip: bool) -> (Bytes, bool) {
        self.body_in(Format::Text, gzip)
    }

    /// The body in `format`, gzip-compressed when `gzip`; the flag says whether
    /// it is.
    pub fn body_in(&self, format: Format, gzip: bool) -> (Bytes, bool) {
        let encoded = self.encoded(format);
        if !gzip {
            return (encoded.plain.clone(), false);
        }
        let compressed = encoded.gzip.get_or_init(|| compress(&encoded.plain));
        if compressed.is_empty() {
            (encoded.plain.clone(), false)
        } else {
            (compressed.clone(), true)
        }
    }

    fn encoded(&self, format: Format) -> Arc<Encoded> {
        let snapshot = self.state.snapshot();
        let slot = &self.current[usize::from(format == Format::OpenMetrics)];
        let mut current = slot.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(enc) = current.as_ref() {
            if Arc::ptr_eq(&enc.snapshot, &snapshot) && enc.at.elapsed() < MAX_AGE {
                return Arc::clone(enc);
            }
        }
        let mut body =
            Vec::with_capacity(current.as_ref().map_or(16 * 1024, |e| e.plain.len() + 1024));
        State::encode_snapshot(&snapshot, format, &mut body);
        match format {
            Format::Text => self.telemetry.encode(&mut body),
            Format::OpenMetrics => {
                let mut text = Vec::with_capacity(8 * 1024);
                self.telemetry.encode(&mut text);
                to_openmetrics(&String::from_utf8_lossy(&text), &mut body);
                body.extend_from_slice(b"# EOF\n");
            }
        }
        let enc = Arc::new(Encoded {
            at: Instant::now(),
            snapshot,
            plain: Bytes::from(body),
            gzip: OnceLock::new(),
        });
        *current = Some(Arc::clone(&enc));
        enc
    }
}

/// Converts the `prometheus` crate's text format 0.0.4 (which has no OpenMetrics
/// encoder) into OpenMetrics 1.0.0: a counter's family is named without its
/// `_total` (and a sample of a counter not ending in `_total` gets it), `untyped`
/// becomes `unknown`, and quotes in help texts are escaped. Samples are otherwise
/// the same in both formats.
pub fn to_openmetrics(text: &str, out: &mut Vec<u8>) {
    // The counter family being converted, and whether its samples need `_total`.
    let mut counter: Option<(String, bool)> = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            let kind = type_of(text, name);
            let name = match kind {
                Some("counter") => name.strip_suffix("_total").unwrap_or(name),
                _ => name,
            };
            let help = help.replace('"', "\\\"");
            out.extend_from_slice(format!("# HELP {name} {help}\n").as_bytes());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            counter = None;
            let (name, kind) = match kind {
                "counter" => {
                    let base = name.strip_suffix("_total").unwrap_or(name);
                    counter = Some((name.to_string(), base == name));
                    (base, kind)
                }
                "untyped" => (name, "unknown"),
                _ => (name, kind),
            };
            out.extend_from_slice(format!("# TYPE {name} {kind}\n").as_bytes());
        } else if line.starts_with('#') || line.is_empty() {
            continue;
        } else {
            match &counter {
                Some((name, true)) if line.starts_with(name.as_str()) => {
                    out.extend_from_slice(name.as_bytes());
                    out.extend_from_slice(b"_total");
                    out.extend_from_slice(&line.as_bytes()[name.len()..]);
                }
                _ => out.extend_from_slice(line.as_bytes()),
            }
            out.push(b'\n');
        }
    }
}

/// The `# TYPE` of `name` in `text`, if declared.
fn type_of<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    let prefix = format!("# TYPE {name} ");
    text.lines().find_map(|l| l.strip_prefix(prefix.as_str()))
}

/// Gzip of `plain`; empty if compression failed (then plain is served).
pub fn compress(plain: &[u8]) -> Bytes {
    let mut enc = flate2::write::GzEncoder::new(
        Vec::with_capacity(plain.len() / 4),
        flate2::Compression::fast(),
    );
    match enc.write_all(plain).and_then(|_| enc.finish()) {
        Ok(out) => Bytes::from(out),
        Err(_) => Bytes::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::account::TargetKey;
    use crate::state::Outcome;

    #[test]
    fn a_published_result_invalidates_the_body_at_once() {
        let state = Arc::new(State::new());
        let key = TargetKey::datacenter("default", "HZ");
        state.register(&key, Duration::from_secs(60), Duration::from_secs(300));
        let cache = MetricsCache::new(Arc::clone(&state), Telemetry::new());
        let (first, _) = cache.body(false);
        assert_eq!(cache.body(false).0.as_ptr(), first.as_ptr(), "served again");
        state.publish(
            &key,
            Duration::ZERO,
            Outcome::Success {
                datacenters: [("HZ".to_string(), Default::default())].into(),
                anomalies: Vec::new(),
                folded: Default::default(),
                lifecycle: Default::default(),
                named: Vec::new(),
            },
        );
        let (second, _) = cache.body(false);
        assert!(String::from_utf8_lossy(&second)
            .contains("finovy_up{account=\"default\",datacenter_key=\"HZ\"} 1"));
        let (zipped, is_gzip) = cache.body(true);
        assert!(is_gzip);
        let mut text = String::new();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&zipped[..]), &mut text)
            .unwrap();
        assert_eq!(text.as_bytes(), &second[..]);
        let (om, _) = cache.body_in(Format::OpenMetrics, false);
        let om = String::from_utf8_lossy(&om);
        assert!(om.ends_with("# EOF\n"), "{om}");
        assert!(om.contains("# TYPE finovy_refresh_failures counter\n"));
    }

    #[test]
    fn registry_text_becomes_openmetrics() {
        let text = "# HELP a_total A \"q\" \\\\ x.\n# TYPE a_total counter\na_total{x=\"1\"} 3\n\
                    # HELP b B.\n# TYPE b counter\nb 1\n# HELP c C.\n# TYPE c untyped\nc 2\n";
        let mut out = Vec::new();
        to_openmetrics(text, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "# HELP a A \\\"q\\\" \\\\ x.\n# TYPE a counter\na_total{x=\"1\"} 3\n\
             # HELP b B.\n# TYPE b counter\nb_total 1\n# HELP c C.\n# TYPE c unknown\nc 2\n"
        );
    }
}
