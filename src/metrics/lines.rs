//! The rendered lines of one datacenter series or one account: one buffer of
//! text with a range per part of the body ([`super::BODY`]).
//!
//! They are rendered when their target publishes (or their account's counts
//! change), never at scrape time, and replaced whole: a scrape only copies
//! ranges. A datacenter series has two: its health and counter lines, rendered
//! after every pass, and its image lines, dropped once they turn stale.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::{slot, Collectors, Family, Format, Kind, BODY};
use crate::aggregate::{AgeHistogram, DatacenterImages, NamedImage, AGE_BUCKETS_SECONDS};

/// Lines by part of the body.
#[derive(Debug, Clone, Default)]
pub struct Lines {
    text: Box<str>,
    /// Where the lines of each part end in `text` (each starts where the one
    /// before ends); empty when there are no lines at all.
    ends: Box<[u32]>,
}

impl Lines {
    /// The lines of part `slot` of [`BODY`].
    pub fn part(&self, slot: usize) -> &str {
        let Some(&end) = self.ends.get(slot) else {
            return "";
        };
        let start = if slot == 0 { 0 } else { self.ends[slot - 1] };
        &self.text[start as usize..end as usize]
    }
}

/// Builds [`Lines`]: parts are written in body order.
#[derive(Default)]
pub(crate) struct Builder {
    text: String,
    ends: Vec<u32>,
}

impl Builder {
    /// Starts the lines of `family` (of its `only` layout, for the ages): every
    /// part before it ends here.
    pub(crate) fn part(&mut self, family: &Family, only: Option<Format>) -> &mut String {
        let slot = slot(family, only);
        debug_assert!(self.ends.len() <= slot, "{} out of order", family.name);
        while self.ends.len() < slot {
            // A target's text stays far below 4 GiB: a few kilobytes of lines.
            self.ends.push(self.text.len() as u32);
        }
        &mut self.text
    }

    /// Writes one sample of `family` (a family of both formats), after the
    /// samples before it in body order.
    pub(crate) fn sample(
        &mut self,
        family: &Family,
        values: &[&str],
        value: impl std::fmt::Display,
    ) {
        let out = self.part(family, None);
        sample(out, family, values, value);
    }

    pub(crate) fn finish(mut self) -> Lines {
        if self.text.is_empty() {
            return Lines::default();
        }
        while self.ends.len() < BODY.len() {
            self.ends.push(self.text.len() as u32);
        }
        Lines {
            text: self.text.into_boxed_str(),
            ends: self.ends.into_boxed_slice(),
        }
    }
}

/// The image lines of one datacenter's successful pass: groups, sizes, oldest
/// creation times, ages (in both formats' layouts) and the named images.
pub fn images(
    account: &str,
    datacenter: &str,
    images: &DatacenterImages,
    named: &[NamedImage],
    collectors: &Collectors,
) -> Lines {
    let mut b = Builder::default();
    let groups = || {
        images.groups.iter().map(|(group, stats)| {
            let labels = [account, datacenter, group.status.label(), &group.image_type];
            (labels, stats)
        })
    };
    for (labels, stats) in groups() {
        b.sample(&super::IMAGES, &labels, stats.count);
    }
    for (labels, stats) in groups().filter(|_| collectors.size) {
        b.sample(&super::IMAGES_SIZE, &labels, stats.size_bytes);
    }
    if collectors.oldest {
        for (labels, stats) in groups() {
            if let Some(ms) = stats.oldest_created_ms {
                b.sample(&super::IMAGES_OLDEST, &labels, ms as f64 / 1000.0);
            }
        }
    }
    if collectors.age {
        ages(&mut b, account, datacenter, &images.ages);
    }
    if collectors.image_info.is_some() {
        for n in named.iter().filter(|n| n.datacenter == datacenter) {
            let d = &n.details;
            let labels = [account, datacenter, &d.id, &d.image_id, &d.image_name];
            let labels = [&labels[..], &[&n.image_type, n.status.label()]].concat();
            b.sample(&super::IMAGE_INFO, &labels, 1);
        }
    }
    b.finish()
}

/// `finovy_images_age_seconds` in both layouts (see [`BODY`]).
fn ages(
    b: &mut Builder,
    account: &str,
    datacenter: &str,
    ages: &BTreeMap<crate::labels::Status, AgeHistogram>,
) {
    let family = &super::IMAGES_AGE;
    let bounds: Vec<String> = AGE_BUCKETS_SECONDS
        .iter()
        .map(|b| format!("{b}.0"))
        .chain(["+Inf".to_string()])
        .collect();
    let buckets = |out: &mut String, status: crate::labels::Status, h: &AgeHistogram| {
        let mut cumulative = 0;
        for (n, le) in h.buckets.iter().zip(&bounds) {
            cumulative += n;
            let labels = [account, datacenter, status.label(), le];
            sample_named(out, family, "_bucket", &labels, cumulative);
        }
    };
    let seconds = |h: &AgeHistogram| h.sum_ms as f64 / 1000.0;
    let text = Some(Format::Text);
    let out = b.part(family, text);
    for (status, h) in ages {
        buckets(out, *status, h);
    }
    let out = b.part(&super::IMAGES_AGE_GCOUNT, text);
    for (status, h) in ages {
        let labels = [account, datacenter, status.label()];
        sample(out, &super::IMAGES_AGE_GCOUNT, &labels, h.count() as f64);
    }
    let out = b.part(&super::IMAGES_AGE_GSUM, text);
    for (status, h) in ages {
        let labels = [account, datacenter, status.label()];
        sample(out, &super::IMAGES_AGE_GSUM, &labels, seconds(h));
    }
    let gauge_histogram = Family {
        labels: super::IMAGES_AGE_GCOUNT.labels,
        ..*family
    };
    let out = b.part(family, Some(Format::OpenMetrics));
    for (status, h) in ages {
        buckets(out, *status, h);
        let labels = [account, datacenter, status.label()];
        sample_named(out, &gauge_histogram, "_gcount", &labels, h.count());
        sample_named(out, &gauge_histogram, "_gsum", &labels, seconds(h));
    }
}

/// The `# HELP` and `# TYPE` lines of a family. In OpenMetrics a counter's
/// family is named without its samples' `_total`, and the help escapes quotes.
pub fn header_of(out: &mut String, name: &str, kind: Kind, help: &str, format: Format) {
    let (name, kind) = match format {
        Format::Text => (name, kind.as_str()),
        Format::OpenMetrics => (
            match kind {
                Kind::Counter => name.strip_suffix("_total").unwrap_or(name),
                _ => name,
            },
            kind.openmetrics(),
        ),
    };
    let help = match format {
        Format::Text => std::borrow::Cow::Borrowed(help),
        Format::OpenMetrics => std::borrow::Cow::Owned(help.replace('"', "\\\"")),
    };
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Writes one sample of `family`; `values` follow its label names.
pub fn sample(out: &mut String, family: &Family, values: &[&str], value: impl std::fmt::Display) {
    sample_named(out, family, "", values, value);
}

/// Writes one sample of `family` named with `suffix` (`_bucket`, ...).
pub fn sample_named(
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
pub fn escape_label_value(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_part_has_a_header_in_both_formats_and_a_slot() {
        for (i, part) in BODY.iter().enumerate() {
            assert_eq!(slot(part.family, part.only), i, "{}", part.family.name);
            let mut text = String::new();
            let f = part.family;
            header_of(&mut text, f.name, f.kind, f.help, Format::OpenMetrics);
            assert!(text.starts_with("# HELP finovy_"), "{text}");
        }
        let mut text = String::new();
        let f = &super::super::IMAGES_AGE;
        header_of(&mut text, f.name, f.kind, f.help, Format::OpenMetrics);
        assert!(text.ends_with("gaugehistogram\n"), "{text}");
    }
}
