//! How the published results of one datacenter become exposition text, in pieces
//! that a scrape only has to concatenate.
//!
//! A body is a list of [`Section`]s, one per family: its `# HELP` and `# TYPE`
//! lines, then the samples of every datacenter series, in target order. The
//! samples of one datacenter in one section are rendered once, when its target
//! publishes a pass or is registered, into a [`Piece`]; a scrape copies pieces
//! ([`crate::exposition`]). So a scrape costs the same however many targets
//! published since the last one, and a publishing target renders only its own
//! lines. This is how kube-state-metrics keeps large expositions cheap: it stores
//! each object's rendered lines per family, and writes them out at scrape time.
//!
//! A piece is kept deflated (raw deflate, ended by a sync flush so that it ends on
//! a byte boundary and holds no final block), with the CRC-32 and the length of
//! its text. Pieces compressed independently can be concatenated into one valid
//! deflate stream: a gzip body is a header, the pieces, an empty final block and
//! a trailer whose CRC is combined from the pieces' CRCs. A plain body is that
//! stream inflated. Kept deflated, a large exposition costs about a fifth of
//! its size in memory (48.9 MB of text in 9.4 MB at 3,000 targets).
//! A datacenter's pieces share one buffer ([`Pieces`]).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use flate2::{Compress, Compression, FlushCompress};

use crate::aggregate::{AgeHistogram, DatacenterImages, NamedImage, AGE_BUCKETS_SECONDS};
use crate::labels::{Anomaly, Field, Reason};
use crate::lifecycle::LifecycleCounters;
use crate::metrics::{self, Collectors, Family, Format};

/// One family's part of a body. The order of [`Section::ALL`] is the order of
/// the families in `/metrics` (the golden files hold it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    /// `finovy_images`.
    Images,
    /// `finovy_images_size_bytes`.
    Size,
    /// `finovy_images_oldest_created_timestamp_seconds`.
    Oldest,
    /// `finovy_images_age_seconds` in the text format: its `_bucket` samples.
    AgeBuckets,
    /// `finovy_images_age_seconds_gcount` (text format only).
    AgeCount,
    /// `finovy_images_age_seconds_gsum` (text format only).
    AgeSum,
    /// `finovy_images_age_seconds` in OpenMetrics: one gauge histogram with each
    /// series' buckets, `_gcount` and `_gsum` together.
    AgeGaugeHistogram,
    /// `finovy_images_created_total`.
    Created,
    /// `finovy_images_deleted_total`.
    Deleted,
    /// `finovy_image_status_transitions_total`.
    Transitions,
    /// `finovy_lifecycle_skipped_passes_total`.
    Skipped,
    /// `finovy_image_info`.
    Info,
    /// `finovy_up`.
    Up,
    /// `finovy_refresh_duration_seconds`.
    Duration,
    /// `finovy_refresh_last_success_timestamp_seconds`.
    LastSuccess,
    /// `finovy_refresh_interval_seconds`.
    Interval,
    /// `finovy_refresh_failures_total`.
    Failures,
    /// `finovy_pagination_anomalies_total`.
    Anomalies,
    /// `finovy_limit_folded_groups`.
    Folded,
    /// `finovy_api_concurrency_limit`.
    ApiConcurrency,
    /// `finovy_api_invalid_items_total`.
    ApiInvalid,
    /// `finovy_api_request_duration_seconds`.
    ApiDuration,
    /// `finovy_api_requests_total`.
    ApiRequests,
}

impl Section {
    /// Every section, in body order.
    pub const ALL: [Section; 23] = [
        Section::Images,
        Section::Size,
        Section::Oldest,
        Section::AgeBuckets,
        Section::AgeCount,
        Section::AgeSum,
        Section::AgeGaugeHistogram,
        Section::Created,
        Section::Deleted,
        Section::Transitions,
        Section::Skipped,
        Section::Info,
        Section::Up,
        Section::Duration,
        Section::LastSuccess,
        Section::Interval,
        Section::Failures,
        Section::Anomalies,
        Section::Folded,
        // The account sections, in the name order the registry's families had
        // before they were rendered here (the golden files hold it).
        Section::ApiConcurrency,
        Section::ApiInvalid,
        Section::ApiDuration,
        Section::ApiRequests,
    ];

    /// The family whose header opens the section.
    pub fn family(self) -> &'static Family {
        match self {
            Section::Images => &metrics::IMAGES,
            Section::Size => &metrics::IMAGES_SIZE,
            Section::Oldest => &metrics::IMAGES_OLDEST,
            Section::AgeBuckets | Section::AgeGaugeHistogram => &metrics::IMAGES_AGE,
            Section::AgeCount => &metrics::IMAGES_AGE_GCOUNT,
            Section::AgeSum => &metrics::IMAGES_AGE_GSUM,
            Section::Created => &metrics::IMAGES_CREATED,
            Section::Deleted => &metrics::IMAGES_DELETED,
            Section::Transitions => &metrics::STATUS_TRANSITIONS,
            Section::Skipped => &metrics::LIFECYCLE_SKIPPED,
            Section::Info => &metrics::IMAGE_INFO,
            Section::Up => &metrics::UP,
            Section::Duration => &metrics::REFRESH_DURATION,
            Section::LastSuccess => &metrics::REFRESH_LAST_SUCCESS,
            Section::Interval => &metrics::REFRESH_INTERVAL,
            Section::Failures => &metrics::REFRESH_FAILURES,
            Section::Anomalies => &metrics::PAGINATION_ANOMALIES,
            Section::Folded => &metrics::LIMIT_FOLDED,
            Section::ApiConcurrency => &metrics::API_CONCURRENCY_LIMIT,
            Section::ApiInvalid => &metrics::API_INVALID_ITEMS,
            Section::ApiDuration => &metrics::API_DURATION,
            Section::ApiRequests => &metrics::API_REQUESTS,
        }
    }

    /// Whether a body in `format` has this section when `collectors` run.
    pub fn in_body(self, format: Format, collectors: &Collectors) -> bool {
        let text = format == Format::Text;
        match self {
            Section::Size => collectors.size,
            Section::Oldest => collectors.oldest,
            Section::AgeBuckets | Section::AgeCount | Section::AgeSum => collectors.age && text,
            Section::AgeGaugeHistogram => collectors.age && !text,
            Section::Created | Section::Deleted | Section::Transitions | Section::Skipped => {
                collectors.lifecycle
            }
            Section::Info => collectors.image_info.is_some(),
            _ => true,
        }
    }

    /// The section's header in `format`, rendered once.
    pub fn header(self, format: Format) -> Piece<'static> {
        headers(format)
            .get(self)
            .expect("every section has a header")
    }
}

/// The headers of every section in `format`, rendered once, as [`Pieces`] (so
/// that a body can take them as chunks: [`Pieces::chunk`]).
pub fn headers(format: Format) -> &'static Pieces {
    static HEADERS: std::sync::OnceLock<[Pieces; 2]> = std::sync::OnceLock::new();
    let headers = HEADERS.get_or_init(|| {
        [Format::Text, Format::OpenMetrics].map(|format| {
            let mut pieces = Builder::default();
            for section in Section::ALL {
                let mut text = String::new();
                header(&mut text, section.family(), format);
                pieces.add(Some(section), &text);
            }
            pieces.finish()
        })
    });
    &headers[usize::from(format == Format::OpenMetrics)]
}

/// One section's samples (or a header) as a slice of deflate blocks, the last
/// ended by a sync flush, with no final block; see the module's documentation.
#[derive(Debug, Clone, Copy)]
pub struct Piece<'a> {
    /// The deflate blocks.
    pub deflated: &'a [u8],
    /// CRC-32 of the text.
    pub crc: u32,
    /// Length of the text in bytes.
    pub len: usize,
    /// What appending this piece does to the CRC of the text before it
    /// (`x^(8·len)` modulo the CRC polynomial, zlib's `crc32_combine_gen`),
    /// computed once when the piece is made so that assembling costs one
    /// multiplication a piece.
    pub crc_shift: u32,
}

/// The pieces of one datacenter series (or of one text), by section, in one
/// buffer: two allocations however many sections, which at 3,000 targets is
/// 50,000 allocations fewer than one per piece. Sections with no samples have
/// no piece.
#[derive(Debug, Clone, Default)]
pub struct Pieces {
    /// Shared with the bodies that send them ([`Pieces::chunk`]).
    deflated: Bytes,
    entries: Box<[Entry]>,
    /// Unique to what the pieces hold (see [`Pieces::id`]).
    id: u64,
}

/// The last id given to [`Pieces`].
static LAST_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn next_id() -> u64 {
    LAST_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1
}

/// The CRC-32 and the length of pieces' texts taken one after the other.
#[derive(Debug, Clone, Copy, Default)]
pub struct Combined {
    /// CRC-32 of the texts so far.
    pub crc: u32,
    /// Their length in bytes.
    pub len: usize,
}

impl Combined {
    /// Takes `piece`'s text after the ones so far.
    pub fn push(&mut self, piece: Piece<'_>) {
        self.crc = zlib_rs::crc32::crc32_combine_op(self.crc, piece.crc, piece.crc_shift);
        self.len += piece.len;
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    /// `None` for a text that is no section ([`Pieces::text`]).
    section: Option<Section>,
    start: u32,
    end: u32,
    crc: u32,
    len: u32,
    crc_shift: u32,
}

impl Pieces {
    /// The sections of `items` concatenated: each section's piece is the pieces
    /// of that section in `items`, in order. Deflated pieces concatenate as they
    /// are (see the module's documentation), so nothing is compressed again.
    ///
    /// Also returns each item again as a view of the concatenation: the same id
    /// and the same pieces, whose deflate blocks are now those inside the
    /// concatenation's buffer. A view replaces its item wherever the item is
    /// kept (`State::share`), so that the blocks are held once, in the
    /// concatenation, instead of twice. A view has what [`Pieces::get`] finds in
    /// its item, in section order: all a body takes from a target's pieces.
    pub fn concat(items: &[&Pieces]) -> (Pieces, Vec<Pieces>) {
        let size = items.iter().map(|p| p.deflated_len()).sum();
        let mut deflated = Vec::with_capacity(size);
        let mut entries = Vec::with_capacity(Section::ALL.len());
        let mut moved: Vec<Vec<Entry>> = items
            .iter()
            .map(|p| Vec::with_capacity(p.entries.len()))
            .collect();
        for section in Section::ALL {
            let start = deflated.len();
            let mut combined = Combined::default();
            for (item, moved) in items.iter().zip(&mut moved) {
                let Some(entry) = item.entries.iter().find(|e| e.section == Some(section)) else {
                    continue;
                };
                let at = deflated.len();
                deflated.extend_from_slice(item.piece(entry).deflated);
                combined.push(item.piece(entry));
                moved.push(Entry {
                    start: at as u32,
                    end: deflated.len() as u32,
                    ..*entry
                });
            }
            if combined.len > 0 {
                entries.push(Entry {
                    section: Some(section),
                    start: start as u32,
                    end: deflated.len() as u32,
                    crc: combined.crc,
                    len: combined.len as u32,
                    crc_shift: zlib_rs::crc32::crc32_combine_gen(combined.len as u64),
                });
            }
        }
        let deflated = Bytes::from(deflated);
        let views = items
            .iter()
            .zip(moved)
            .map(|(item, entries)| Pieces {
                deflated: deflated.clone(),
                entries: entries.into_boxed_slice(),
                id: item.id,
            })
            .collect();
        let all = Pieces {
            deflated,
            entries: entries.into_boxed_slice(),
            id: next_id(),
        };
        (all, views)
    }

    /// Bytes of deflate blocks over all pieces (a view's buffer holds more).
    fn deflated_len(&self) -> usize {
        self.entries
            .iter()
            .map(|e| (e.end - e.start) as usize)
            .sum()
    }

    /// A number no other pieces made in this process have: pieces with the same
    /// id hold the same text (a clone keeps it).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// `piece` (one of these pieces) as a chunk of a response body, sharing
    /// these pieces' buffer.
    pub fn chunk(&self, piece: &Piece<'_>) -> Bytes {
        self.deflated.slice_ref(piece.deflated)
    }

    /// A whole text as one piece (the exporter's own metrics, for example).
    pub fn text(text: &str) -> Pieces {
        let mut pieces = Builder::default();
        pieces.add(None, text);
        pieces.finish()
    }

    /// The piece of `section`, if it has samples.
    pub fn get(&self, section: Section) -> Option<Piece<'_>> {
        let entry = self.entries.iter().find(|e| e.section == Some(section))?;
        Some(self.piece(entry))
    }

    /// Every piece, in the order they were added.
    pub fn iter(&self) -> impl Iterator<Item = Piece<'_>> {
        self.entries.iter().map(|e| self.piece(e))
    }

    /// Bytes of text over all pieces.
    pub fn len(&self) -> usize {
        self.entries.iter().map(|e| e.len as usize).sum()
    }

    /// Whether there is no piece.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn piece(&self, e: &Entry) -> Piece<'_> {
        Piece {
            deflated: &self.deflated[e.start as usize..e.end as usize],
            crc: e.crc,
            len: e.len as usize,
            crc_shift: e.crc_shift,
        }
    }
}

/// Builds [`Pieces`], deflating each text as it is added.
struct Builder {
    /// The thread's scratch buffer while building (see [`Builder::finish`]).
    deflated: Vec<u8>,
    entries: Vec<Entry>,
}

thread_local! {
    /// One compressor per thread, reset for every piece: its tables are a few
    /// hundred kilobytes, and allocating them for every publish costs time and,
    /// through the allocator's fragmentation, memory (measured: 2.4 GB after
    /// 3,000 publishes, against 0.1).
    static COMPRESS: RefCell<Compress> = RefCell::new(Compress::new(Compression::fast(), false));
    /// The output buffer builders borrow, for the same reason: the pieces keep an
    /// exact copy, and a buffer grown and shrunk for every publish left holes in
    /// the heap (measured: 8 MB more at 3,000 targets).
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

impl Default for Builder {
    fn default() -> Self {
        let mut deflated = SCRATCH.with_borrow_mut(std::mem::take);
        deflated.clear();
        Builder {
            deflated,
            entries: Vec::new(),
        }
    }
}

impl Builder {
    /// Adds `text` under `section`, unless it is empty. Each piece starts a fresh
    /// deflate stream (no back-reference reaches into another piece), which is
    /// what lets pieces be concatenated in any order.
    fn add(&mut self, section: Option<Section>, text: &str) {
        if text.is_empty() {
            return;
        }
        let start = self.deflated.len();
        COMPRESS.with_borrow_mut(|c| deflate(c, text.as_bytes(), &mut self.deflated));
        // Texts and bodies stay far below 4 GiB: a piece is one family's samples
        // of one datacenter.
        self.entries.push(Entry {
            section,
            start: start as u32,
            end: self.deflated.len() as u32,
            crc: zlib_rs::crc32::crc32(0, text.as_bytes()),
            len: text.len() as u32,
            crc_shift: zlib_rs::crc32::crc32_combine_gen(text.len() as u64),
        });
    }

    fn finish(self) -> Pieces {
        let pieces = Pieces {
            deflated: Bytes::copy_from_slice(&self.deflated),
            entries: Box::from(&self.entries[..]),
            id: next_id(),
        };
        SCRATCH.with_borrow_mut(|scratch| {
            if self.deflated.capacity() > scratch.capacity() {
                *scratch = self.deflated;
            }
        });
        pieces
    }
}

/// Appends `input`, deflated as a fresh stream ended by a sync flush, to `out`.
fn deflate(compress: &mut Compress, input: &[u8], out: &mut Vec<u8>) {
    compress.reset();
    out.reserve(input.len() / 2 + 64);
    loop {
        let read = compress.total_in() as usize;
        // Compressing into a Vec only fails on a misuse of the stream, which this
        // loop does not make; an error would show as a short piece and a broken
        // body in every test.
        let _ = compress.compress_vec(&input[read..], out, FlushCompress::Sync);
        // The flush is complete once all input is read and the output did not
        // fill the space it was given.
        if compress.total_in() as usize == input.len() && out.len() < out.capacity() {
            break;
        }
        out.reserve(out.capacity().max(64));
    }
}

/// The image sections of one datacenter's successful pass: groups, sizes, oldest
/// creation times, ages (in both formats' layouts) and the named images.
pub fn images(
    account: &str,
    datacenter: &str,
    images: &DatacenterImages,
    named: &[NamedImage],
    collectors: &Collectors,
) -> Pieces {
    let mut pieces = Builder::default();
    let mut text = [String::new(), String::new(), String::new()];
    for (group, stats) in &images.groups {
        let labels = [account, datacenter, group.status.label(), &group.image_type];
        sample(&mut text[0], &metrics::IMAGES, &labels, stats.count);
        if collectors.size {
            sample(
                &mut text[1],
                &metrics::IMAGES_SIZE,
                &labels,
                stats.size_bytes,
            );
        }
        if let Some(ms) = stats.oldest_created_ms.filter(|_| collectors.oldest) {
            sample(
                &mut text[2],
                &metrics::IMAGES_OLDEST,
                &labels,
                ms as f64 / 1000.0,
            );
        }
    }
    for (section, text) in [Section::Images, Section::Size, Section::Oldest]
        .iter()
        .zip(&text)
    {
        pieces.add(Some(*section), text);
    }
    if collectors.age {
        for (section, text) in ages(account, datacenter, &images.ages) {
            pieces.add(Some(section), &text);
        }
    }
    if collectors.image_info.is_some() {
        let mut text = String::new();
        for n in named.iter().filter(|n| n.datacenter == datacenter) {
            let labels = [
                account,
                datacenter,
                &n.details.id,
                &n.details.image_id,
                &n.details.image_name,
                &n.image_type,
                n.status.label(),
            ];
            sample(&mut text, &metrics::IMAGE_INFO, &labels, 1);
        }
        pieces.add(Some(Section::Info), &text);
    }
    pieces.finish()
}

/// `finovy_images_age_seconds`: in OpenMetrics one gauge histogram (each series'
/// buckets, `_gcount` and `_gsum` together, as it wants them); in the text format
/// a histogram of the buckets and two gauge families (see
/// [`metrics::Kind::as_str`]).
fn ages(
    account: &str,
    datacenter: &str,
    ages: &BTreeMap<crate::labels::Status, AgeHistogram>,
) -> [(Section, String); 4] {
    let family = &metrics::IMAGES_AGE;
    let gauge_histogram = Family {
        labels: metrics::IMAGES_AGE_GCOUNT.labels,
        ..*family
    };
    let bounds: Vec<String> = AGE_BUCKETS_SECONDS
        .iter()
        .map(|b| format!("{b}.0"))
        .chain(["+Inf".to_string()])
        .collect();
    let [mut buckets, mut count, mut sum, mut openmetrics]: [String; 4] = Default::default();
    for (status, h) in ages {
        let mut bucket_lines = String::new();
        let mut cumulative = 0;
        for (n, le) in h.buckets.iter().zip(&bounds) {
            cumulative += n;
            let labels = [account, datacenter, status.label(), le];
            sample_named(&mut bucket_lines, family, "_bucket", &labels, cumulative);
        }
        let labels = [account, datacenter, status.label()];
        let seconds = h.sum_ms as f64 / 1000.0;
        buckets.push_str(&bucket_lines);
        sample(
            &mut count,
            &metrics::IMAGES_AGE_GCOUNT,
            &labels,
            h.count() as f64,
        );
        sample(&mut sum, &metrics::IMAGES_AGE_GSUM, &labels, seconds);
        openmetrics.push_str(&bucket_lines);
        sample_named(
            &mut openmetrics,
            &gauge_histogram,
            "_gcount",
            &labels,
            h.count(),
        );
        sample_named(
            &mut openmetrics,
            &gauge_histogram,
            "_gsum",
            &labels,
            seconds,
        );
    }
    [
        (Section::AgeBuckets, buckets),
        (Section::AgeCount, count),
        (Section::AgeSum, sum),
        (Section::AgeGaugeHistogram, openmetrics),
    ]
}

/// What the health and counter sections of one datacenter series show.
pub struct SeriesValues<'a> {
    /// Whether the target's last pass succeeded.
    pub up: bool,
    /// Wall time of its last pass.
    pub last_duration: Duration,
    /// When it last succeeded.
    pub last_success: Option<SystemTime>,
    /// Time between its passes.
    pub interval: Duration,
    /// Failed passes, per [`Reason::index`].
    pub failures: &'a [u64; Reason::ALL.len()],
    /// Anomalies, per [`Anomaly::index`].
    pub anomalies: &'a [u64; Anomaly::ALL.len()],
    /// Groups folded by the last successful pass, per label name.
    pub folded: &'a [(&'static str, u64)],
    /// The lifecycle counters, when that collector runs.
    pub lifecycle: Option<&'a LifecycleCounters>,
}

/// The health and counter sections of one datacenter series.
pub fn series(account: &str, datacenter: &str, v: &SeriesValues<'_>) -> Pieces {
    let mut pieces = Builder::default();
    let labels = [account, datacenter];
    let mut text = String::new();
    let mut add = |section: Section, text: &mut String| {
        pieces.add(Some(section), text);
        text.clear();
    };
    if let Some(c) = v.lifecycle {
        for (ty, n) in &c.created {
            sample(
                &mut text,
                &metrics::IMAGES_CREATED,
                &[account, datacenter, ty],
                n,
            );
        }
        add(Section::Created, &mut text);
        for ((status, ty), n) in &c.deleted {
            let labels = [account, datacenter, status.label(), ty.as_str()];
            sample(&mut text, &metrics::IMAGES_DELETED, &labels, n);
        }
        add(Section::Deleted, &mut text);
        for ((ty, from, to), n) in &c.transitions {
            let labels = [account, datacenter, ty.as_str(), from.label(), to.label()];
            sample(&mut text, &metrics::STATUS_TRANSITIONS, &labels, n);
        }
        add(Section::Transitions, &mut text);
        sample(&mut text, &metrics::LIFECYCLE_SKIPPED, &labels, c.skipped);
        add(Section::Skipped, &mut text);
    }
    sample(&mut text, &metrics::UP, &labels, u8::from(v.up));
    add(Section::Up, &mut text);
    let duration = v.last_duration.as_secs_f64();
    sample(&mut text, &metrics::REFRESH_DURATION, &labels, duration);
    add(Section::Duration, &mut text);
    let last_success = v.last_success.map_or(0.0, crate::unix_seconds);
    sample(
        &mut text,
        &metrics::REFRESH_LAST_SUCCESS,
        &labels,
        last_success,
    );
    add(Section::LastSuccess, &mut text);
    let interval = v.interval.as_secs_f64();
    sample(&mut text, &metrics::REFRESH_INTERVAL, &labels, interval);
    add(Section::Interval, &mut text);
    for reason in Reason::ALL {
        let labels = [account, datacenter, reason.label()];
        let n = v.failures[reason.index()];
        sample(&mut text, &metrics::REFRESH_FAILURES, &labels, n);
    }
    add(Section::Failures, &mut text);
    for anomaly in Anomaly::ALL {
        let labels = [account, datacenter, anomaly.label()];
        let n = v.anomalies[anomaly.index()];
        sample(&mut text, &metrics::PAGINATION_ANOMALIES, &labels, n);
    }
    add(Section::Anomalies, &mut text);
    for (label, n) in v.folded {
        sample(
            &mut text,
            &metrics::LIMIT_FOLDED,
            &[account, datacenter, label],
            n,
        );
    }
    add(Section::Folded, &mut text);
    pieces.finish()
}

/// What the upstream sections of one account show.
pub struct UpstreamValues<'a> {
    /// Requests by their `code` label, in label order.
    pub requests: &'a BTreeMap<String, u64>,
    /// The upper bound of each duration bucket, with the requests that took more
    /// than the bound before it and at most this one (not cumulative).
    pub duration_buckets: &'a [(f64, u64)],
    /// Seconds over all requests.
    pub duration_sum: f64,
    /// Requests timed.
    pub duration_count: u64,
    /// Items counted although a field was unreadable, per [`Field::index`].
    pub invalid: &'a [u64; Field::ALL.len()],
    /// The concurrency limit, once the account's budget has set it.
    pub concurrency_limit: Option<u32>,
}

/// The upstream sections of one account: its concurrency limit, unreadable
/// fields, request durations and requests. Samples are ordered by label value,
/// as the `prometheus` registry ordered them before these families moved here.
pub fn upstream(account: &str, v: &UpstreamValues<'_>) -> Pieces {
    let mut pieces = Builder::default();
    let mut text = String::new();
    let mut add = |section: Section, text: &mut String| {
        pieces.add(Some(section), text);
        text.clear();
    };
    if let Some(limit) = v.concurrency_limit {
        sample(
            &mut text,
            &metrics::API_CONCURRENCY_LIMIT,
            &[account],
            limit,
        );
    }
    add(Section::ApiConcurrency, &mut text);
    let mut fields = Field::ALL.to_vec();
    fields.sort_by_key(|f| f.label());
    for field in fields {
        let labels = [account, field.label()];
        let n = v.invalid[field.index()];
        sample(&mut text, &metrics::API_INVALID_ITEMS, &labels, n);
    }
    add(Section::ApiInvalid, &mut text);
    let buckets = Family {
        labels: &["account", "le"],
        ..metrics::API_DURATION
    };
    let mut cumulative = 0;
    for (bound, n) in v.duration_buckets {
        cumulative += n;
        let le = bound.to_string();
        sample_named(&mut text, &buckets, "_bucket", &[account, &le], cumulative);
    }
    let count = v.duration_count;
    sample_named(&mut text, &buckets, "_bucket", &[account, "+Inf"], count);
    let family = &metrics::API_DURATION;
    sample_named(&mut text, family, "_sum", &[account], v.duration_sum);
    sample_named(&mut text, family, "_count", &[account], count);
    add(Section::ApiDuration, &mut text);
    for (code, n) in v.requests {
        sample(&mut text, &metrics::API_REQUESTS, &[account, code], n);
    }
    add(Section::ApiRequests, &mut text);
    pieces.finish()
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::io::Read as _;

    /// What `crate::exposition::assemble` does, on bare pieces: a gzip header,
    /// the deflated pieces, an empty final block, the combined CRC and the length.
    fn gzip<'a>(pieces: impl IntoIterator<Item = Piece<'a>>) -> Vec<u8> {
        let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
        let (mut crc, mut len) = (0, 0);
        for p in pieces {
            out.extend_from_slice(p.deflated);
            crc = zlib_rs::crc32::crc32_combine_op(crc, p.crc, p.crc_shift);
            len += p.len;
        }
        out.extend_from_slice(&[0x03, 0x00]);
        out.extend_from_slice(&crc.to_le_bytes());
        out.extend_from_slice(&(len as u32).to_le_bytes());
        out
    }

    proptest! {
        /// Pieces made apart and put together in any order are one valid gzip
        /// stream of their texts in that order (the decoder checks the CRC and
        /// the length, so a wrong combination fails here).
        #[test]
        fn concatenated_pieces_inflate_to_the_concatenated_texts(
            texts in proptest::collection::vec(".{0,3000}", 0..12),
            order in any::<proptest::sample::Index>(),
        ) {
            let mut texts = texts;
            let n = texts.len();
            if n > 1 {
                texts.rotate_left(order.index(n));
            }
            let pieces: Vec<Pieces> = texts.iter().map(|t| Pieces::text(t)).collect();
            let mut inflated = String::new();
            flate2::read::GzDecoder::new(&gzip(pieces.iter().flat_map(|p| p.iter()))[..])
                .read_to_string(&mut inflated)
                .unwrap();
            prop_assert_eq!(inflated, texts.concat());
        }
    }

    #[test]
    fn concatenated_pieces_hold_each_section_of_their_items_in_order() {
        let failures = [0; Reason::ALL.len()];
        let anomalies = [0; Anomaly::ALL.len()];
        let items: Vec<Pieces> = ["HZ", "SH", "BJ"]
            .iter()
            .enumerate()
            .map(|(i, dc)| {
                series(
                    "a",
                    dc,
                    &SeriesValues {
                        up: i != 1,
                        last_duration: Duration::from_millis(10 * i as u64),
                        last_success: None,
                        interval: Duration::from_secs(60),
                        failures: &failures,
                        anomalies: &anomalies,
                        folded: if i == 2 { &[("image_type", 3)] } else { &[] },
                        lifecycle: None,
                    },
                )
            })
            .collect();
        let refs: Vec<&Pieces> = items.iter().collect();
        let (all, views) = Pieces::concat(&refs);
        assert_ne!(all.id(), items[0].id());
        // Each view is its item again, with its deflate blocks inside the
        // concatenation's buffer.
        assert_eq!(views.len(), items.len());
        let buffer = all.deflated.as_ptr_range();
        for (item, view) in items.iter().zip(&views) {
            assert_eq!(view.id(), item.id());
            assert_eq!(view.len(), item.len());
            assert!(view.deflated_len() < all.deflated_len());
            for section in Section::ALL {
                match (item.get(section), view.get(section)) {
                    (Some(want), Some(got)) => {
                        assert_eq!(got.deflated, want.deflated, "{section:?}");
                        assert_eq!(
                            (got.crc, got.len, got.crc_shift),
                            (want.crc, want.len, want.crc_shift)
                        );
                        let inside = got.deflated.as_ptr_range();
                        assert!(buffer.start <= inside.start && inside.end <= buffer.end);
                    }
                    (None, None) => {}
                    (want, got) => panic!("{section:?}: {want:?} became {got:?}"),
                }
            }
        }
        let text = |p: Piece<'_>| {
            let mut inflated = String::new();
            flate2::read::GzDecoder::new(&gzip([p])[..])
                .read_to_string(&mut inflated)
                .unwrap();
            inflated
        };
        let mut sections = 0;
        for section in Section::ALL {
            let want: String = items
                .iter()
                .filter_map(|p| p.get(section))
                .map(text)
                .collect();
            match all.get(section) {
                Some(piece) => {
                    sections += 1;
                    assert_eq!(text(piece), want, "{section:?}");
                }
                None => assert_eq!(want, "", "{section:?}"),
            }
        }
        // Up to Folded, which only the third datacenter has.
        assert_eq!(sections, 7);
        assert!(text(all.get(Section::Up).unwrap()).contains("datacenter_key=\"SH\"} 0\n"));
    }

    #[test]
    fn a_large_piece_keeps_every_byte() {
        // More than the first output buffer holds, with little to compress.
        let text: String = (0..200_000u32)
            .map(|i| char::from(b'a' + (i.wrapping_mul(2_654_435_761) >> 27) as u8 % 26))
            .collect();
        let pieces = Pieces::text(&text);
        assert_eq!(pieces.len(), text.len());
        let mut inflated = String::new();
        flate2::read::GzDecoder::new(&gzip(pieces.iter())[..])
            .read_to_string(&mut inflated)
            .unwrap();
        assert_eq!(inflated, text);
    }

    #[test]
    fn every_section_has_a_header_in_both_formats() {
        for section in Section::ALL {
            for format in [Format::Text, Format::OpenMetrics] {
                let header = section.header(format);
                assert!(header.len > 0, "{section:?} {format:?}");
            }
        }
        assert_eq!(
            Section::header(Section::AgeGaugeHistogram, Format::OpenMetrics).len,
            {
                let mut text = String::new();
                header(&mut text, &metrics::IMAGES_AGE, Format::OpenMetrics);
                assert!(text.ends_with("gaugehistogram\n"), "{text}");
                text.len()
            }
        );
    }
}
