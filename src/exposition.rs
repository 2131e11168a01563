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
    current: Mutex<Option<Arc<Encoded>>>,
}

impl MetricsCache {
    /// A cache over the published state and the exporter's own metrics.
    pub fn new(state: Arc<State>, telemetry: Telemetry) -> Self {
        MetricsCache {
            state,
            telemetry,
            current: Mutex::new(None),
        }
    }

    /// The body, gzip-compressed when `gzip`; the flag says whether it is.
    pub fn body(&self, gzip: bool) -> (Bytes, bool) {
        let encoded = self.encoded();
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

    fn encoded(&self) -> Arc<Encoded> {
        let snapshot = self.state.snapshot();
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(enc) = current.as_ref() {
            if Arc::ptr_eq(&enc.snapshot, &snapshot) && enc.at.elapsed() < MAX_AGE {
                return Arc::clone(enc);
            }
        }
        let mut body =
            Vec::with_capacity(current.as_ref().map_or(16 * 1024, |e| e.plain.len() + 1024));
        State::encode_snapshot(&snapshot, &mut body);
        self.telemetry.encode(&mut body);
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

/// Gzip of `plain`; empty if compression failed (then plain is served).
fn compress(plain: &[u8]) -> Bytes {
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
    }
}
