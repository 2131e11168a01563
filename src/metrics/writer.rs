//! Writes a body: family by family in the order of [`BODY`], the header and then
//! the lines of that family of every datacenter series and every account, then
//! the process-wide families of the registry; gzip-compressed on the way when
//! the scraper takes gzip.
//!
//! [`crate::routes::MetricsCache`] keeps the last body of each format and
//! encoding for at most [`crate::routes::MAX_AGE`], and only while no target
//! published since: concurrent scrapers share it, and every response sends the
//! same buffer ([`Bytes`]), never a copy of its own.

use bytes::Bytes;
use flate2::write::GzEncoder;
use flate2::Compression;
use prometheus::proto::{MetricFamily, MetricType};

use super::lines::{escape_label_value, header_of, Lines};
use super::{Collectors, Format, Kind, BODY};

/// What a body is written from.
pub struct Sources<'a> {
    /// The lines of every datacenter series and account served, in body order
    /// within each family ([`crate::state::Snapshot::lines`], then
    /// [`crate::telemetry::Telemetry::account_lines`]).
    pub lines: Vec<&'a Lines>,
    /// Which collectors' families are served.
    pub collectors: &'a Collectors,
    /// The process-wide families, after every part of [`BODY`].
    pub own: &'a [MetricFamily],
}

impl Sources<'_> {
    /// Writes the body in `format` to `out`.
    pub fn write(&self, out: &mut impl std::io::Write, format: Format) -> std::io::Result<()> {
        let (items, collectors) = (&self.lines, self.collectors);
        let mut text = String::new();
        for (slot, part) in BODY.iter().enumerate() {
            if !part.in_body(format, collectors)
                || (part.optional && items.iter().all(|l| l.part(slot).is_empty()))
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
            for lines in items {
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
        let (items, collectors) = (&self.lines, self.collectors);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_families_are_written_as_the_prometheus_encoder_writes_them() {
        let registry = prometheus::Registry::new();
        let info = prometheus::IntGaugeVec::new(
            prometheus::Opts::new("x_info", "Which x; always 1."),
            &["shard", "total"],
        )
        .unwrap();
        info.with_label_values(&["2", "3"]).set(1);
        let plain = prometheus::Gauge::new("x_seconds", "Seconds of x.").unwrap();
        plain.set(0.25);
        registry.register(Box::new(info)).unwrap();
        registry.register(Box::new(plain)).unwrap();
        let families = registry.gather();
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
