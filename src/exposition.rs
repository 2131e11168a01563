//! The `/metrics` body: assembled from the pieces every target rendered when it
//! published ([`crate::render`]), and served to every scraper that asks soon after.
//!
//! Assembling copies the deflated pieces of every datacenter series and of every
//! account's upstream calls, section by section, under one gzip header and
//! trailer. Consecutive pieces are kept concatenated in groups (`Group`), made
//! again only where a piece changed, so an assembly takes a few thousand runs
//! at 3,000 targets, and copies only the pieces of the groups whose targets
//! published since the last. Once a group is made, the targets' published
//! pieces are replaced by views of it ([`State::share`]), so that the deflated
//! text is held once. A plain body is that gzip stream inflated (which checks its CRC and
//! length). An account whose requests changed since the last assembly renders
//! its upstream lines again first ([`crate::telemetry::Upstream::pieces`]). The
//! few process-wide metrics (the `prometheus` registry and its `process_*`
//! collector, which reads `/proc`) are encoded with each assembly and appended as
//! the last piece. A body is served again while no target publishes, for at most
//! [`MAX_AGE`]. Every body is assembled from one snapshot, so a scrape never
//! mixes two passes of a target.

use std::io::Read as _;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::metrics::Format;
use crate::render::{self, Combined, Piece, Pieces, Section};
use crate::state::{Snapshot, State};
use crate::telemetry::Telemetry;

/// How long an assembled body is served again while no target publishes: the
/// exporter's own counters and `process_*` values lag by at most this much.
pub const MAX_AGE: Duration = Duration::from_secs(1);

/// One assembled body.
struct Encoded {
    /// The snapshot generation it was assembled from.
    generation: u64,
    /// When its snapshot was taken.
    at: Instant,
    gzip: Gzip,
    /// The inflated body, made for the first scraper that does not take gzip.
    plain: OnceLock<Result<Bytes, String>>,
}

/// The cached `/metrics` body.
pub struct MetricsCache {
    state: Arc<State>,
    telemetry: Telemetry,
    /// One per format ([`Format::Text`], [`Format::OpenMetrics`]). The lock is
    /// held while a body is assembled, so concurrent scrapers wait for one
    /// assembly instead of each making their own.
    slots: [Mutex<Option<Arc<Encoded>>>; 2],
    /// The body's pieces in groups, for both formats.
    groups: Mutex<Vec<Group>>,
}

/// Consecutive pieces of a body concatenated section by section
/// ([`Pieces::concat`]), and the ids of the pieces they were made of.
///
/// A body copied from 55,000 pieces of a few hundred bytes each, scattered over
/// the heap, spent most of its assembly on cache misses (3,000 targets and 1,000
/// accounts: 14 ms). Groups are made again only when one of their pieces
/// changed, so an assembly takes a few thousand runs instead, and copies the
/// pieces of the groups whose targets published since the last one.
struct Group {
    ids: Vec<u64>,
    pieces: Arc<Pieces>,
}

/// Pieces per [`Group`] (eight targets): the more, the fewer runs a body has,
/// and the more a group copies again when one of its targets publishes. At
/// 3,000 targets publishing 300 times a second, 16 left 69 MiB resident after
/// scraping against 74–81 with 64 (fewer groups remade between two scrapes,
/// fewer old buffers left as holes in the heap), at the same scrape latency
/// (measured under glibc's malloc, before the targets kept views of their group).
const GROUP_SIZE: usize = 16;

/// The groups of `items`, made again where their pieces changed, and the
/// views of the pieces of the groups made again ([`Pieces::concat`]).
fn regroup(groups: &mut Vec<Group>, items: &[&Pieces]) -> (Vec<Arc<Pieces>>, Vec<Pieces>) {
    let chunks = items.chunks(GROUP_SIZE);
    groups.truncate(chunks.len());
    let mut views = Vec::new();
    for (i, chunk) in chunks.enumerate() {
        let same = groups.get(i).is_some_and(|g| {
            g.ids.len() == chunk.len() && g.ids.iter().zip(chunk).all(|(id, p)| *id == p.id())
        });
        if same {
            continue;
        }
        let (pieces, chunk_views) = Pieces::concat(chunk);
        views.extend(chunk_views);
        let group = Group {
            ids: chunk.iter().map(|p| p.id()).collect(),
            pieces: Arc::new(pieces),
        };
        match groups.get_mut(i) {
            Some(old) => *old = group,
            None => groups.push(group),
        }
    }
    (
        groups.iter().map(|g| Arc::clone(&g.pieces)).collect(),
        views,
    )
}

impl MetricsCache {
    /// A cache over the published state and the exporter's own metrics.
    pub fn new(state: Arc<State>, telemetry: Telemetry) -> Self {
        MetricsCache {
            state,
            telemetry,
            slots: Default::default(),
            groups: Mutex::default(),
        }
    }

    /// The text-format body, gzip-compressed when `gzip`; the flag says whether
    /// it is.
    pub fn body(&self, gzip: bool) -> Result<(Vec<Bytes>, bool), String> {
        self.body_in(Format::Text, gzip)
    }

    /// The body in `format`, gzip-compressed when `gzip`; the flag says whether
    /// it is. An error means the exporter assembled a broken stream (a bug),
    /// never anything an upstream or a scraper did.
    pub fn body_in(&self, format: Format, gzip: bool) -> Result<(Vec<Bytes>, bool), String> {
        let encoded = self.encoded(format);
        if gzip {
            return Ok((encoded.gzip.chunks.clone(), true));
        }
        let plain = encoded.plain.get_or_init(|| encoded.gzip.inflate());
        plain.clone().map(|b| (vec![b], false))
    }

    fn encoded(&self, format: Format) -> Arc<Encoded> {
        let asked = Instant::now();
        let mut slot = self.slots[usize::from(format == Format::OpenMetrics)]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let started = Instant::now();
        let snapshot = self.state.snapshot();
        if let Some(body) = slot.as_ref() {
            // A body whose assembly began after this scrape asked (another
            // scraper's, which this one waited for) is as new as this scrape:
            // under constant publishing, waiting scrapers share one assembly
            // instead of queueing one each.
            let unchanged = body.generation == snapshot.generation && body.at.elapsed() < MAX_AGE;
            if unchanged || body.at >= asked {
                return Arc::clone(body);
            }
        }
        let upstream = self.telemetry.upstream_pieces(None);
        let own = Pieces::text(&self.own_metrics(format));
        let parts = Parts {
            snapshot: &snapshot,
            account: None,
            upstream: &upstream,
            tail: Some(&own),
        };
        // The last body shares the groups' buffers: let go of it first, so that
        // a group made again frees the old buffer at once (unless a response still
        // sends it) instead of every old group living until the new body is done
        // (measured at 3,000 targets: 74 MiB resident after scraping, against 81).
        *slot = None;
        let (grouped, views) = {
            let mut groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
            regroup(&mut groups, &parts.items())
        };
        let items: Vec<&Pieces> = grouped.iter().map(|p| &**p).collect();
        let body = Arc::new(Encoded {
            generation: snapshot.generation,
            at: started,
            gzip: write(&items, &parts, format),
            plain: OnceLock::new(),
        });
        // The published pieces now point into the groups made again, and their
        // own buffers are freed: the deflated text is held once, not twice
        // (12 MB at 3,000 targets). The snapshot is let go of first, so that
        // the state can change its targets in place instead of copying them.
        drop(snapshot);
        self.state.share(views);
        *slot = Some(Arc::clone(&body));
        body
    }

    /// The exporter's own metrics in `format` (with the closing `# EOF` of
    /// OpenMetrics, as they end the body).
    fn own_metrics(&self, format: Format) -> String {
        let mut text = Vec::with_capacity(8 * 1024);
        self.telemetry.encode(&mut text);
        let text = String::from_utf8_lossy(&text);
        match format {
            Format::Text => text.into_owned(),
            Format::OpenMetrics => {
                let mut out = Vec::with_capacity(text.len() + 64);
                to_openmetrics(&text, &mut out);
                out.extend_from_slice(b"# EOF\n");
                String::from_utf8_lossy(&out).into_owned()
            }
        }
    }
}

/// A gzip-compressed body and the length of its text.
pub struct Gzip {
    /// The gzip member, in chunks that share the buffers of the pieces.
    pub chunks: Vec<Bytes>,
    /// Bytes of text it holds.
    pub len: usize,
}

impl Gzip {
    /// The gzip member in one buffer (a copy).
    pub fn to_bytes(&self) -> Bytes {
        Bytes::from(self.chunks.concat())
    }

    /// The text, inflated (the gzip trailer's CRC and length checked).
    pub fn inflate(&self) -> Result<Bytes, String> {
        let mut out = Vec::with_capacity(self.len);
        flate2::read::GzDecoder::new(&self.to_bytes()[..])
            .read_to_end(&mut out)
            .map_err(|e| format!("the assembled body does not inflate: {e}"))?;
        Ok(Bytes::from(out))
    }
}

/// What a body is assembled from.
pub struct Parts<'a> {
    /// The published target series.
    pub snapshot: &'a Snapshot,
    /// Only this account's target series (`/probe`), or every account's.
    pub account: Option<&'a str>,
    /// The upstream pieces of the accounts served, in account order
    /// ([`Telemetry::upstream_pieces`]).
    pub upstream: &'a [Arc<Pieces>],
    /// Pieces after every section (the exporter's own metrics).
    pub tail: Option<&'a Pieces>,
}

impl<'a> Parts<'a> {
    /// Every piece of the body, in body order: each datacenter series, with its
    /// image pieces while they are fresh (decided once, so that a body never has
    /// a datacenter's counts without its sizes), then the accounts'.
    pub fn items(&self) -> Vec<&'a Pieces> {
        let snap = self.snapshot;
        let mut items = Vec::with_capacity(2 * snap.targets.len() + self.upstream.len());
        for (key, t) in &snap.targets {
            if self.account.is_some_and(|a| key.account != a) {
                continue;
            }
            for s in t.datacenters.values() {
                items.push(&s.pieces);
                if let Some(images) = s.images.as_ref().filter(|im| t.is_fresh(im)) {
                    items.push(&images.pieces);
                }
            }
        }
        items.extend(self.upstream.iter().map(|p| &**p));
        items
    }
}

/// The body of `parts` in `format`, as one gzip member.
pub fn assemble(parts: &Parts<'_>, format: Format) -> Gzip {
    write(&parts.items(), parts, format)
}

/// The body of `items` (the pieces of `parts`, grouped or not) in `format`, with
/// the header of each section and the tail of `parts`.
///
/// The deflated pieces are taken in body order, as chunks sharing their buffers;
/// the gzip trailer's CRC-32 is
/// combined from theirs (zlib's `crc32_combine_op`, with the shift each piece
/// computed when it was made), so no text is touched.
fn write(items: &[&Pieces], parts: &Parts<'_>, format: Format) -> Gzip {
    // A gzip header with no name, time or flags; "unknown" operating system.
    let mut chunks = vec![Bytes::from_static(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff])];
    let mut combined = Combined::default();
    let mut push = |pieces: &Pieces, piece: Piece<'_>| {
        chunks.push(pieces.chunk(&piece));
        combined.push(piece);
    };
    let headers = render::headers(format);
    for section in Section::ALL {
        if !section.in_body(format, &parts.snapshot.collectors) {
            continue;
        }
        push(headers, section.header(format));
        for pieces in items {
            if let Some(piece) = pieces.get(section) {
                push(pieces, piece);
            }
        }
    }
    if let Some(tail) = parts.tail {
        for piece in tail.iter() {
            push(tail, piece);
        }
    }
    // The final block: empty, fixed Huffman codes (BFINAL=1, BTYPE=01, code 256),
    // the CRC and ISIZE, the length modulo 2^32 (RFC 1952).
    let mut trailer = vec![0x03, 0x00];
    trailer.extend_from_slice(&combined.crc.to_le_bytes());
    trailer.extend_from_slice(&(combined.len as u32).to_le_bytes());
    chunks.push(Bytes::from(trailer));
    Gzip {
        chunks,
        len: combined.len,
    }
}

/// Converts the `prometheus` crate's text format 0.0.4 (which has no OpenMetrics
/// encoder) into OpenMetrics 1.0.0: a counter's family is named without its
/// `_total` (and a sample of a counter not ending in `_total` gets it), `untyped`
/// becomes `unknown`, and quotes in help texts are escaped. Samples are otherwise
/// the same in both formats.
pub fn to_openmetrics(text: &str, out: &mut Vec<u8>) {
    // Each family's type, read once: a `# HELP` line comes before its `# TYPE`.
    let types: std::collections::HashMap<&str, &str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.split_once(' '))
        .collect();
    // The counter family being converted, and whether its samples need `_total`.
    let mut counter: Option<(String, bool)> = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            let name = match types.get(name) {
                Some(&"counter") => name.strip_suffix("_total").unwrap_or(name),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::account::TargetKey;
    use crate::state::Outcome;

    /// A state with one registered target, its key, and a cache over it.
    fn one_target() -> (Arc<State>, TargetKey, MetricsCache) {
        let state = Arc::new(State::new());
        let key = TargetKey::datacenter("default", "HZ");
        state.register(&key, Duration::from_secs(60), Duration::from_secs(300));
        let cache = MetricsCache::new(Arc::clone(&state), Telemetry::new());
        (state, key, cache)
    }

    #[test]
    fn a_published_result_invalidates_the_body_at_once() {
        let (state, key, cache) = one_target();
        let (first, _) = cache.body(false).unwrap();
        assert_eq!(
            cache.body(false).unwrap().0[0].as_ptr(),
            first[0].as_ptr(),
            "served again"
        );
        publish(&state, &key, 0);
        let (second, _) = cache.body(false).unwrap();
        let second = String::from_utf8(joined(&second)).unwrap();
        assert!(second.contains("finovy_up{account=\"default\",datacenter_key=\"HZ\"} 1"));
        let (zipped, is_gzip) = cache.body(true).unwrap();
        assert!(is_gzip);
        assert_eq!(inflate(&zipped), second);
        let (om, _) = cache.body_in(Format::OpenMetrics, false).unwrap();
        let om = String::from_utf8(joined(&om)).unwrap();
        assert!(om.ends_with("# EOF\n"), "{om}");
        assert!(om.contains("# TYPE finovy_refresh_failures counter\n"));
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

    fn joined(chunks: &[Bytes]) -> Vec<u8> {
        chunks.concat()
    }

    fn inflate(gzip: &[Bytes]) -> String {
        let mut text = String::new();
        let gzip = joined(gzip);
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&gzip[..]), &mut text)
            .unwrap();
        text
    }

    #[test]
    fn a_body_a_response_holds_stays_whole_while_the_next_ones_are_made() {
        let (state, key, cache) = one_target();
        publish(&state, &key, 1);
        let (held, _) = cache.body(true).unwrap();
        let held_text = inflate(&held);
        assert!(
            held_text.contains("image_type=\"linux\"} 1\n"),
            "{held_text}"
        );
        // The body shares the buffers of the groups: remaking them must not
        // change a body already handed out.
        for n in 2..5 {
            publish(&state, &key, n);
            let (next, _) = cache.body(true).unwrap();
            assert!(inflate(&next).contains(&format!("image_type=\"linux\"}} {n}\n")));
            assert_eq!(inflate(&held), held_text);
        }
    }

    /// Bodies made from groups are the bodies made from the pieces themselves,
    /// whatever publishes, joins or leaves between two scrapes; and a group no
    /// change touched is not made again.
    #[test]
    fn grouped_bodies_are_the_bodies_of_the_pieces() {
        let state = Arc::new(State::new());
        let telemetry = Telemetry::new();
        let cache = MetricsCache::new(Arc::clone(&state), telemetry.clone());
        let key =
            |i: usize| TargetKey::datacenter(&format!("acct-{:03}", i / 2), ["HZ", "SH"][i % 2]);
        // More targets than three groups hold.
        let targets = 3 * GROUP_SIZE / 2 + 7;
        for i in 0..targets {
            state.register(&key(i), Duration::from_secs(60), Duration::from_secs(300));
            publish(&state, &key(i), i as u64);
            telemetry.upstream(&key(i).account).request("200", 0.01);
        }
        let direct = |format| {
            let snap = state.snapshot();
            let upstream = telemetry.upstream_pieces(None);
            let own = Pieces::text(&cache.own_metrics(format));
            let parts = Parts {
                snapshot: &snap,
                account: None,
                upstream: &upstream,
                tail: Some(&own),
            };
            inflate(&assemble(&parts, format).chunks)
        };
        // Process metrics (CPU seconds, ...) change between two encodings: the
        // comparison leaves them out.
        let stable = |text: String| -> String {
            text.lines()
                .filter(|l| !l.contains("process_"))
                .map(|l| format!("{l}\n"))
                .collect()
        };
        let check = |round: &str| {
            for format in [Format::Text, Format::OpenMetrics] {
                let (grouped, _) = cache.body_in(format, true).unwrap();
                let (got, want) = (stable(inflate(&grouped)), stable(direct(format)));
                let first = got.lines().zip(want.lines()).find(|(g, w)| g != w);
                assert_eq!(first, None, "{round}, {format:?}");
                assert_eq!(got.len(), want.len(), "{round}, {format:?}");
            }
        };
        // After a scrape, the published pieces are views of the groups: their
        // deflate blocks are inside the groups' buffers, not held a second time;
        // and as nothing a scrape sees changed, the body is served again.
        let shared = |round: &str| {
            let generation = state.snapshot().generation;
            let (body, _) = cache.body(true).unwrap();
            let snap = state.snapshot();
            assert_eq!(snap.generation, generation, "{round}");
            // The exporter's own metrics are the last chunk before the trailer,
            // encoded anew by each assembly: the same buffer means the same body.
            let own = |chunks: &[Bytes]| chunks[chunks.len() - 2].as_ptr();
            let (again, _) = cache.body(true).unwrap();
            assert_eq!(own(&again), own(&body), "{round}: served again");
            let groups = cache.groups.lock().unwrap();
            let in_a_group = |pieces: &Pieces| {
                pieces.iter().all(|piece| {
                    let p = piece.deflated.as_ptr_range();
                    groups.iter().any(|g| {
                        g.pieces.iter().any(|run| {
                            let r = run.deflated.as_ptr_range();
                            r.start <= p.start && p.end <= r.end
                        })
                    })
                })
            };
            for (key, t) in &snap.targets {
                for series in t.datacenters.values() {
                    assert!(in_a_group(&series.pieces), "{round}: {key:?}");
                    let images = series.images.as_ref().unwrap();
                    assert!(in_a_group(&images.pieces), "{round}: {key:?} images");
                }
            }
        };
        check("first");
        shared("first");
        let before: Vec<Arc<Pieces>> = {
            let groups = cache.groups.lock().unwrap();
            groups.iter().map(|g| Arc::clone(&g.pieces)).collect()
        };
        assert!(before.len() > 3, "{} groups", before.len());

        // One target of the second group publishes: only that group is made again.
        publish(&state, &key(GROUP_SIZE / 2 + 1), 1000);
        check("one publish");
        {
            let groups = cache.groups.lock().unwrap();
            let remade: Vec<usize> = (0..before.len())
                .filter(|&i| !Arc::ptr_eq(&groups[i].pieces, &before[i]))
                .collect();
            assert_eq!(remade, vec![1], "groups made again");
        }
        shared("one publish");

        // Targets leave and join, an account sends a request: still the same body.
        state.remove(&key(3));
        state.remove(&key(targets - 1));
        let late = TargetKey::datacenter("acct-000a", "SH");
        state.register(&late, Duration::from_secs(60), Duration::from_secs(300));
        publish(&state, &late, 7);
        telemetry.upstream("acct-001").request("503", 0.2);
        check("leave, join, request");
        // An account leaves with its targets, as a reload removes it.
        telemetry.remove_account("acct-002");
        state.remove(&key(4));
        state.remove(&key(5));
        check("account removed");
        shared("account removed");
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
