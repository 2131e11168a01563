//! Writes a body: family by family in the order of [`BODY`], the header and then
//! the lines of that family of every datacenter series and every account, then
//! the process-wide families of the registry; gzip-compressed on the way when
//! the scraper takes gzip.
//!
//! [`MetricsCache`] keeps the last body of each format for at most [`MAX_AGE`],
//! and only while no target published since: concurrent scrapers share it, and
//! every response sends the same buffer ([`Bytes`]), never a copy of its own.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use flate2::write::GzEncoder;
use flate2::Compression;
use prometheus::proto::{MetricFamily, MetricType};

use super::lines::{escape_label_value, header_of, Lines};
use super::{Format, Kind, BODY};
use crate::state::{Snapshot, State};
use crate::telemetry::Telemetry;

/// How long a body is served again while no target publishes: the exporter's
/// own counters and `process_*` values lag by at most this much.
pub const MAX_AGE: Duration = Duration::from_secs(1);

/// What a body is written from.
pub struct Sources<'a> {
    /// The published target series.
    pub snapshot: &'a Snapshot,
    /// Only this account's series (`/probe`), or every account's.
    pub account: Option<&'a str>,
    /// The lines of the accounts served, in account order
    /// ([`Telemetry::account_lines`]).
    pub accounts: &'a [Arc<Lines>],
    /// The process-wide families, after every part of [`BODY`].
    pub own: &'a [MetricFamily],
}

impl<'a> Sources<'a> {
    /// Every datacenter series' lines, with its image lines while they are fresh
    /// (decided once, so that a body never has a datacenter's counts without its
    /// sizes), then the accounts'.
    fn items(&self) -> Vec<&'a Lines> {
        let snap = self.snapshot;
        let mut items = Vec::with_capacity(2 * snap.targets.len() + self.accounts.len());
        for (key, t) in &snap.targets {
            if self.account.is_some_and(|a| key.account != a) {
                continue;
            }
            for s in t.datacenters.values() {
                items.push(&s.lines);
                if let Some(images) = s.images.as_ref().filter(|im| t.is_fresh(im)) {
                    items.push(&images.lines);
                }
            }
        }
        items.extend(self.accounts.iter().map(|l| &**l));
        items
    }

    /// Writes the body in `format` to `out`.
    pub fn write(&self, out: &mut impl std::io::Write, format: Format) -> std::io::Result<()> {
        let items = self.items();
        let collectors = &self.snapshot.collectors;
        let mut text = String::new();
        for (slot, part) in BODY.iter().enumerate() {
            if !part.in_body(format, collectors)
                || (part.optional() && items.iter().all(|l| l.part(slot).is_empty()))
            {
                continue;
            }
            text.clear();
            header_of(
                &mut text,
                part.family.name,
                part.family.kind,
                part.family.help,
                format,
            );
            out.write_all(text.as_bytes())?;
            for lines in &items {
                out.write_all(lines.part(slot).as_bytes())?;
            }
        }
        text.clear();
        encode_registry(&mut text, self.own, format);
        if format == Format::OpenMetrics {
            text.push_str("# EOF\n");
        }
        out.write_all(text.as_bytes())
    }

    /// The body in `format`, gzip-compressed when `gzip`.
    pub fn body(&self, format: Format, gzip: bool) -> Bytes {
        // Small writes are gathered before they reach the compressor, which
        // does better with a few large inputs than with thousands of lines.
        let write = |out: Vec<u8>| -> std::io::Result<Vec<u8>> {
            if !gzip {
                let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
                self.write(&mut out, format)?;
                return out.into_inner().map_err(|e| e.into_error());
            }
            let encoder = GzEncoder::new(out, Compression::fast());
            let mut out = std::io::BufWriter::with_capacity(64 * 1024, encoder);
            self.write(&mut out, format)?;
            out.into_inner().map_err(|e| e.into_error())?.finish()
        };
        // One allocation of the right size (near it, gzipped): a buffer grown by
        // doubling leaves the smaller ones behind in the heap.
        let items = self.items();
        let collectors = &self.snapshot.collectors;
        let parts = BODY
            .iter()
            .enumerate()
            .filter(|(_, p)| p.in_body(format, collectors));
        // Headers and the registry's families: a few tens of kilobytes.
        let len = 64 * 1024
            + parts
                .map(|(slot, _)| items.iter().map(|l| l.part(slot).len()).sum::<usize>())
                .sum::<usize>();
        let capacity = if gzip { len / 8 } else { len };
        // Writing into memory does not fail; an empty body would show it.
        Bytes::from(write(Vec::with_capacity(capacity)).unwrap_or_default())
    }
}

/// The process-wide families of the registry, in `format`: the same header and
/// sample layout as the table's families.
fn encode_registry(out: &mut String, families: &[MetricFamily], format: Format) {
    for family in families {
        let (kind, value): (Kind, fn(&prometheus::proto::Metric) -> f64) =
            match family.get_field_type() {
                MetricType::COUNTER => (Kind::Counter, |m| m.get_counter().get_value()),
                MetricType::GAUGE => (Kind::Gauge, |m| m.get_gauge().get_value()),
                // The registry holds counters and gauges only.
                _ => continue,
            };
        header_of(out, family.name(), kind, family.help(), format);
        for metric in family.get_metric() {
            out.push_str(family.name());
            let labels = metric.get_label();
            if !labels.is_empty() {
                out.push('{');
                for (i, pair) in labels.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(pair.name());
                    out.push_str("=\"");
                    escape_label_value(out, pair.value());
                    out.push('"');
                }
                out.push('}');
            }
            out.push(' ');
            out.push_str(&value(metric).to_string());
            out.push('\n');
        }
    }
}

/// One written body. It keeps no source: a snapshot held here would keep every
/// line its targets replaced since.
struct Cached {
    /// The snapshot generation it was written from.
    generation: u64,
    /// When its snapshot was taken.
    at: Instant,
    body: Bytes,
}

/// The cached `/metrics` bodies.
pub struct MetricsCache {
    state: Arc<State>,
    telemetry: Telemetry,
    /// One per format and encoding (text, OpenMetrics; plain, gzip). The lock
    /// is held while a body is written, so concurrent scrapers wait for one
    /// writing instead of each making their own.
    slots: [Mutex<Option<Cached>>; 4],
}

impl MetricsCache {
    /// A cache over the published state and the exporter's own metrics.
    pub fn new(state: Arc<State>, telemetry: Telemetry) -> Self {
        MetricsCache {
            state,
            telemetry,
            slots: Default::default(),
        }
    }

    /// The body in `format`, gzip-compressed when `gzip`.
    pub fn body(&self, format: Format, gzip: bool) -> Bytes {
        let asked = Instant::now();
        let slot = 2 * usize::from(format == Format::OpenMetrics) + usize::from(gzip);
        let mut slot = self.slots[slot].lock().unwrap_or_else(|e| e.into_inner());
        let started = Instant::now();
        let snapshot = self.state.snapshot();
        if let Some(cached) = slot.as_ref() {
            // A body whose writing began after this scrape asked (another
            // scraper's, which this one waited for) is as new as this scrape:
            // under constant publishing, waiting scrapers share one body instead
            // of queueing one each.
            let unchanged =
                cached.generation == snapshot.generation && cached.at.elapsed() < MAX_AGE;
            if unchanged || cached.at >= asked {
                return cached.body.clone();
            }
        }
        // The last body is let go of first: it is freed now (unless a response
        // still sends it) rather than after the next one is written.
        *slot = None;
        let accounts = self.telemetry.account_lines(None);
        let own = self.telemetry.gather();
        let sources = Sources {
            snapshot: &snapshot,
            account: None,
            accounts: &accounts,
            own: &own,
        };
        let body = sources.body(format, gzip);
        *slot = Some(Cached {
            generation: snapshot.generation,
            at: started,
            body: body.clone(),
        });
        body
    }

    /// The body of one account's series (`/probe`), written for this request.
    pub fn probe(&self, account: &str, format: Format, gzip: bool) -> Bytes {
        let snapshot = self.state.snapshot();
        let accounts = self.telemetry.account_lines(Some(account));
        Sources {
            snapshot: &snapshot,
            account: Some(account),
            accounts: &accounts,
            own: &[],
        }
        .body(format, gzip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::account::TargetKey;
    use crate::state::Outcome;
    use std::io::Read as _;

    /// A state with one registered target, its key, and a cache over it.
    fn one_target() -> (Arc<State>, TargetKey, MetricsCache) {
        let state = Arc::new(State::new());
        let key = TargetKey::datacenter("default", "HZ");
        state.register(&key, Duration::from_secs(60), Duration::from_secs(300));
        let cache = MetricsCache::new(Arc::clone(&state), Telemetry::new());
        (state, key, cache)
    }

    fn publish(state: &State, key: &TargetKey, images: u64) {
        let mut dc = crate::aggregate::DatacenterImages::default();
        dc.groups.insert(
            crate::aggregate::GroupKey {
                status: crate::labels::Status::Available,
                image_type: "linux".to_string(),
            },
            crate::aggregate::GroupStats {
                count: images,
                ..Default::default()
            },
        );
        state.publish(
            key,
            Duration::ZERO,
            Outcome::Success {
                datacenters: [(key.datacenter.clone().unwrap_or_default(), dc)].into(),
                anomalies: Vec::new(),
                folded: Default::default(),
                lifecycle: Default::default(),
                named: Vec::new(),
            },
        );
    }

    fn inflate(gzip: &[u8]) -> String {
        let mut text = String::new();
        flate2::read::GzDecoder::new(gzip)
            .read_to_string(&mut text)
            .unwrap();
        text
    }

    #[test]
    fn a_published_result_invalidates_the_body_at_once_and_both_encodings_agree() {
        let (state, key, cache) = one_target();
        let first = cache.body(Format::Text, false);
        assert_eq!(
            cache.body(Format::Text, false).as_ptr(),
            first.as_ptr(),
            "served again, the same buffer"
        );
        publish(&state, &key, 0);
        let second = cache.body(Format::Text, false);
        let second = String::from_utf8(second.to_vec()).unwrap();
        assert!(second.contains("finovy_up{account=\"default\",datacenter_key=\"HZ\"} 1"));
        // The gzip body is written apart, with its own `process_*` values.
        let stable = |text: &str| -> Vec<String> {
            let lines = text.lines().filter(|l| !l.contains("process_"));
            lines.map(str::to_string).collect()
        };
        let zipped = inflate(&cache.body(Format::Text, true));
        assert_eq!(stable(&zipped), stable(&second));
        let om = cache.body(Format::OpenMetrics, false);
        let om = String::from_utf8(om.to_vec()).unwrap();
        assert!(om.ends_with("# EOF\n"), "{om}");
        assert!(om.contains("# TYPE finovy_refresh_failures counter\n"));
        assert!(om.contains("# TYPE finovy_exporter_build_info gauge\n"));
    }

    #[test]
    fn registry_families_are_written_as_the_prometheus_encoder_writes_them() {
        let telemetry = Telemetry::new();
        telemetry.set_shard(2, 3);
        let families: Vec<MetricFamily> = telemetry
            .gather()
            .into_iter()
            .filter(|f| !f.name().starts_with("process_"))
            .collect();
        let mut want = Vec::new();
        prometheus::Encoder::encode(&prometheus::TextEncoder::new(), &families, &mut want).unwrap();
        let mut got = String::new();
        encode_registry(&mut got, &families, Format::Text);
        assert_eq!(got, String::from_utf8(want).unwrap());
        let mut om = String::new();
        let counter = prometheus::IntCounter::new("x_total", "Say \"x\".").unwrap();
        let registry = prometheus::Registry::new();
        registry.register(Box::new(counter.clone())).unwrap();
        counter.inc();
        encode_registry(&mut om, &registry.gather(), Format::OpenMetrics);
        assert_eq!(om, "# HELP x Say \\\"x\\\".\n# TYPE x counter\nx_total 1\n");
    }
}
