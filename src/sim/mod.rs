//! A simulator of the Finovy "my image list" API, for `--demo`, the tests and the
//! `finovy-api-sim` binary.
//!
//! It implements the contract of the API document: `GET` with the
//! `Finovy-Access-Token` header, the `imageName`, `imageType`, `datacenterKey` and
//! `status` filters, `page`/`pageSize` paging, the success envelope, and
//! authentication failures either as HTTP 401 or as HTTP 200 with `"code":401`.
//!
//! [`Faults`] make it misbehave the way real servers do: each [`FaultRule`] is
//! scoped to some datacenters, a page, the next N requests or a share of them, and
//! its [`FaultAction`] delays, replaces or bends the answer. [`Simulator::evolve`]
//! moves the images through their life (created, available or failed, expired,
//! deleted), and [`Simulator::set_alternates`] makes every refresh see another
//! data set. A control API under `/_sim/` reads and replaces the images, the
//! alternates and the faults, steps the evolution and lists the requests
//! received, so tests can drive it from outside the process.

mod data;
mod evolve;
mod server;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

pub use data::{generate, GenerateOptions, SimImage, SplitMix};
pub use evolve::Evolution;
pub use server::SimServer;

/// How an authentication failure is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthStyle {
    /// HTTP 401 with the error envelope.
    #[default]
    Http,
    /// HTTP 200 with `"code":401` in the envelope.
    Body,
}

/// Ways the simulator misbehaves; all off by default.
///
/// As JSON (the `/_sim/faults` body and the `--faults` flag), every field is
/// optional: `{"rules":[{"datacenters":["SH"],"times":1,"action":{"kind":"status","status":503}}]}`.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Serve at most this many items per page, whatever `pageSize` asks.
    pub page_cap: Option<usize>,
    /// Repeat the last `overlap` items of the previous page at the start of each
    /// page after the first (as when items shift while a client pages).
    pub overlap: usize,
    /// Refuse every token, in this style.
    pub reject_token: Option<AuthStyle>,
    /// Added to every answer of the list endpoint, milliseconds.
    pub latency_ms: u64,
    /// Scoped misbehaviours, tried in order for every list request.
    pub rules: Vec<FaultRule>,
}

/// One misbehaviour and the requests it applies to.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultRule {
    /// Only requests for these `datacenterKey`s; empty: every request, the
    /// unfiltered ones (discovery) included.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub datacenters: Vec<String>,
    /// Only requests for this page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page: Option<u32>,
    /// Only the next this many matching requests; counts down to 0 (spent).
    /// `None`: for ever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub times: Option<u64>,
    /// Only this share (0 to 1) of matching requests, drawn from the seeded
    /// generator. `None`: all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<f64>,
    /// What happens.
    pub action: FaultAction,
}

impl FaultRule {
    /// A rule that applies `action` to every request.
    pub fn always(action: FaultAction) -> Self {
        FaultRule {
            datacenters: Vec::new(),
            page: None,
            times: None,
            rate: None,
            action,
        }
    }

    /// Limits the rule to one datacenter.
    pub fn datacenter(mut self, dc: &str) -> Self {
        self.datacenters = vec![dc.to_string()];
        self
    }

    /// Limits the rule to one page.
    pub fn page(mut self, page: u32) -> Self {
        self.page = Some(page);
        self
    }

    /// Limits the rule to the next `n` matching requests.
    pub fn times(mut self, n: u64) -> Self {
        self.times = Some(n);
        self
    }

    /// Limits the rule to a share of the matching requests.
    pub fn rate(mut self, rate: f64) -> Self {
        self.rate = Some(rate);
        self
    }
}

/// What a fault does to an answer of the list endpoint.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum FaultAction {
    /// Answer `ms` milliseconds later (then normally, unless another rule says otherwise).
    Delay {
        /// Milliseconds.
        ms: u64,
    },
    /// Never answer: no status line, no headers (for an hour, then the connection closes).
    Hang,
    /// Answer this HTTP status with a short error body, and `Retry-After` when given.
    Status {
        /// The status, e.g. 500, 502, 503 or 429.
        status: u16,
        /// `Retry-After` in seconds.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_secs: Option<u64>,
    },
    /// Send the headers and half of the body (its `Content-Length` promising all
    /// of it), then close the connection.
    CloseMidBody,
    /// Send the headers and half of the body, then nothing more (for an hour).
    StallMidBody,
    /// HTTP 200 with a body that is not JSON (a proxy's HTML error page).
    Malformed,
    /// HTTP 200 with the first half of the JSON, correctly framed.
    Truncated,
    /// HTTP 200 with `"success":false` and this `code`.
    ApiError {
        /// The envelope's `code` (0 gives `success:false` alone).
        code: i64,
        /// The envelope's `msg`.
        #[serde(default)]
        msg: String,
    },
    /// An authentication failure in this style.
    Unauthorized {
        /// HTTP 401, or `"code":401` in a 200.
        #[serde(default)]
        style: AuthStyle,
    },
    /// `totalCounts` off by `offset` (never below 0); the items are right.
    TotalCounts {
        /// Added to the true count.
        offset: i64,
    },
    /// Pages after the first start `items` later: those items are never served
    /// (as when images before the cursor are deleted while a client pages).
    Skip {
        /// Items skipped.
        items: usize,
    },
    /// Pages after the first begin with the last `items` of the previous page.
    Repeat {
        /// Items repeated.
        items: usize,
    },
    /// Items whose `imageId` is a multiple of `every` have their fields bent.
    Corrupt {
        /// Which items: `imageId % every == 0`.
        every: i64,
        /// How.
        how: Corruption,
    },
    /// A well-formed page padded with made-up items to `bytes` bytes, with its
    /// `Content-Length`.
    Oversized {
        /// Body size, bytes.
        bytes: usize,
    },
    /// A page whose item list never ends (chunked, no `Content-Length`).
    Endless,
    /// Pages past the end answer the last page again (as MyBatis PageHelper's
    /// "reasonable" mode does) instead of an empty one.
    ClampPage,
}

impl FaultAction {
    /// A short name, recorded with each request it applied to.
    pub fn label(&self) -> String {
        match self {
            FaultAction::Delay { ms } => format!("delay {ms}ms"),
            FaultAction::Hang => "hang".into(),
            FaultAction::Status { status, .. } => format!("status {status}"),
            FaultAction::CloseMidBody => "close_mid_body".into(),
            FaultAction::StallMidBody => "stall_mid_body".into(),
            FaultAction::Malformed => "malformed".into(),
            FaultAction::Truncated => "truncated".into(),
            FaultAction::ApiError { code, .. } => format!("api_error {code}"),
            FaultAction::Unauthorized { style } => format!("unauthorized {style:?}"),
            FaultAction::TotalCounts { offset } => format!("total_counts {offset:+}"),
            FaultAction::Skip { items } => format!("skip {items}"),
            FaultAction::Repeat { items } => format!("repeat {items}"),
            FaultAction::Corrupt { every, how } => format!("corrupt {how:?} every {every}"),
            FaultAction::Oversized { bytes } => format!("oversized {bytes}"),
            FaultAction::Endless => "endless".into(),
            FaultAction::ClampPage => "clamp_page".into(),
        }
    }

    /// Whether the action replaces the whole answer (only one such rule applies
    /// to a request) rather than delaying or bending the page.
    fn replaces_answer(&self) -> bool {
        !matches!(
            self,
            FaultAction::Delay { .. }
                | FaultAction::TotalCounts { .. }
                | FaultAction::Skip { .. }
                | FaultAction::Repeat { .. }
                | FaultAction::Corrupt { .. }
                | FaultAction::ClampPage
        )
    }
}

/// How [`FaultAction::Corrupt`] bends an item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Corruption {
    /// Every field the exporter reads has a type it cannot read (`"imageSize":true`,
    /// `"status":"x"`, an object for `id`…).
    WrongType,
    /// Only `imageName` and `imageId` are left.
    Missing,
    /// Readable, but not as documented: numbers as strings and strings as numbers.
    Loose,
}

/// One request the simulator received.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RecordedRequest {
    /// Method.
    pub method: String,
    /// Path.
    pub path: String,
    /// Query string, undecoded.
    pub query: String,
    /// Headers, names lower-case.
    pub headers: Vec<(String, String)>,
    /// When it arrived, Unix microseconds.
    #[serde(default)]
    pub received_us: u64,
    /// The fault actions applied to it, by [`FaultAction::label`].
    #[serde(default)]
    pub faults: Vec<String>,
}

impl RecordedRequest {
    /// The decoded value of query parameter `name`.
    pub fn param(&self, name: &str) -> Option<String> {
        url::form_urlencoded::parse(self.query.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }

    /// The `page` asked for (1 when absent or unreadable).
    pub fn page(&self) -> u32 {
        self.param("page").and_then(|p| p.parse().ok()).unwrap_or(1)
    }
}

/// Options fixed at start.
#[derive(Debug, Clone, Default)]
pub struct SimOptions {
    /// The token to require; `None` accepts any non-empty token.
    pub token: Option<String>,
    /// How a wrong token is answered.
    pub auth_style: AuthStyle,
}

const MAX_RECORDED: usize = 1000;

#[derive(Debug)]
struct SimState {
    images: Arc<Vec<SimImage>>,
    alternates: Vec<Arc<Vec<SimImage>>>,
    /// Page-1 requests seen per `datacenterKey` ("" for unfiltered), to pick an alternate.
    passes: HashMap<String, usize>,
    faults: Faults,
    requests: VecDeque<RecordedRequest>,
    rng: SplitMix,
}

/// What the faults in force make of one request: computed, and the rules'
/// counters spent, in one step under the lock.
#[derive(Debug, Clone, Default)]
pub(crate) struct Plan {
    pub delay: Duration,
    /// The rule that replaces the answer, if any.
    pub replace: Option<FaultAction>,
    pub total_offset: i64,
    pub skip: usize,
    pub repeat: usize,
    pub corrupt: Option<(i64, Corruption)>,
    pub clamp: bool,
    pub page_cap: Option<usize>,
    pub reject_token: Option<AuthStyle>,
    /// The images this request pages through.
    pub images: Arc<Vec<SimImage>>,
}

/// The simulated upstream: images, faults and options, shared with its server.
#[derive(Debug, Clone)]
pub struct Simulator {
    options: Arc<SimOptions>,
    state: Arc<Mutex<SimState>>,
    matches: Arc<Mutex<MatchCache>>,
    held: Arc<Held>,
}

/// How long list answers were held, from the request's arrival to the answer:
/// the latency the simulator really adds (timers fire late, by up to a couple
/// of milliseconds), which a benchmark's best possible schedule should use.
#[derive(Debug, Default)]
struct Held {
    answers: AtomicU64,
    total_us: AtomicU64,
}

/// The positions of the images that match a filter, remembered per image list,
/// so that paging through a large inventory does not scan it once per page.
#[derive(Debug, Default)]
struct MatchCache {
    entries: VecDeque<MatchEntry>,
}

/// An image list, a filter over it, and the images that match.
type MatchEntry = (Arc<Vec<SimImage>>, Vec<(String, String)>, Arc<Matches>);

/// The images of a list that match a filter: their positions, and once a page
/// of them is asked for, the text of all of them in a row, so that a page is a
/// slice of it rather than a hundred images written out again.
#[derive(Debug)]
pub(crate) struct Matches {
    /// Positions in the image list, in list order.
    pub positions: Vec<u32>,
    written: OnceLock<Written>,
}

/// The matching images as the list answer writes them, comma-separated.
#[derive(Debug)]
struct Written {
    text: String,
    /// Where each image's text starts; one more entry, one past the end.
    starts: Vec<usize>,
}

impl Matches {
    fn new(positions: Vec<u32>) -> Self {
        Matches {
            positions,
            written: OnceLock::new(),
        }
    }

    /// Matching images `from..end` (by their rank among the matches) of
    /// `images`, the list they were matched in, as written in a list answer and
    /// separated by commas.
    pub fn written(&self, images: &[SimImage], from: usize, end: usize) -> &str {
        let written = self.written.get_or_init(|| {
            let mut text = String::new();
            let mut starts = Vec::with_capacity(self.positions.len() + 1);
            for &i in &self.positions {
                starts.push(text.len());
                server::write_plain_item(&mut text, &images[i as usize]);
                text.push(',');
            }
            starts.push(text.len());
            Written { text, starts }
        });
        // Without the comma after the last one.
        &written.text[written.starts[from]..written.starts[end] - 1]
    }
}

const MATCH_CACHE_ENTRIES: usize = 64;

impl Simulator {
    /// A simulator serving `images`.
    pub fn new(images: Vec<SimImage>, options: SimOptions) -> Self {
        Simulator {
            options: Arc::new(options),
            state: Arc::new(Mutex::new(SimState {
                images: Arc::new(images),
                alternates: Vec::new(),
                passes: HashMap::new(),
                faults: Faults::default(),
                requests: VecDeque::new(),
                rng: SplitMix::new(0x5eed),
            })),
            matches: Arc::default(),
            held: Arc::default(),
        }
    }

    /// Notes that a list answer was held `held` after its request arrived.
    pub(crate) fn note_held(&self, held: Duration) {
        self.held.answers.fetch_add(1, Ordering::Relaxed);
        let us = u64::try_from(held.as_micros()).unwrap_or(u64::MAX);
        self.held.total_us.fetch_add(us, Ordering::Relaxed);
    }

    /// List answers so far, and the microseconds they were held in all.
    pub fn held(&self) -> (u64, u64) {
        (
            self.held.answers.load(Ordering::Relaxed),
            self.held.total_us.load(Ordering::Relaxed),
        )
    }

    /// Positions in `images` of the images for which `filter` holds, computed
    /// once per (image list, filter key).
    pub(crate) fn matching(
        &self,
        images: &Arc<Vec<SimImage>>,
        key: &[(String, String)],
        filter: impl Fn(&SimImage) -> bool,
    ) -> Arc<Matches> {
        let mut cache = self.matches.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, _, found)) = cache
            .entries
            .iter()
            .find(|(list, k, _)| Arc::ptr_eq(list, images) && k.as_slice() == key)
        {
            return Arc::clone(found);
        }
        let found = Arc::new(Matches::new(
            images
                .iter()
                .enumerate()
                .filter(|(_, im)| filter(im))
                .map(|(i, _)| i as u32)
                .collect(),
        ));
        // Entries hold their list, so a pointer is never reused while cached.
        cache
            .entries
            .retain(|(list, _, _)| Arc::ptr_eq(list, images));
        if cache.entries.len() == MATCH_CACHE_ENTRIES {
            cache.entries.pop_front();
        }
        cache
            .entries
            .push_back((Arc::clone(images), key.to_vec(), Arc::clone(&found)));
        found
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SimState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Seeds the generator behind fault rates and evolution, for reproducible runs.
    pub fn reseed(&self, seed: u64) {
        self.lock().rng = SplitMix::new(seed);
    }

    /// The images served now (when no alternates are set).
    pub fn images(&self) -> Arc<Vec<SimImage>> {
        Arc::clone(&self.lock().images)
    }

    /// Replaces the images.
    pub fn set_images(&self, images: Vec<SimImage>) {
        self.lock().images = Arc::new(images);
    }

    /// Serves the data sets in turn instead of the images: each request for page 1
    /// of a datacenter (or of the unfiltered list) moves that list on to the next
    /// set, and its other pages come from the same set. An exporter that pages
    /// one pass at a time thus sees every pass whole, each from another set.
    /// An empty list goes back to the images.
    pub fn set_alternates(&self, sets: Vec<Vec<SimImage>>) {
        let mut state = self.lock();
        state.alternates = sets.into_iter().map(Arc::new).collect();
        state.passes.clear();
    }

    /// The alternating data sets (empty when off).
    pub fn alternates(&self) -> Vec<Arc<Vec<SimImage>>> {
        self.lock().alternates.clone()
    }

    /// The faults in force (with the rules' remaining `times`).
    pub fn faults(&self) -> Faults {
        self.lock().faults.clone()
    }

    /// Replaces the faults.
    pub fn set_faults(&self, faults: Faults) {
        self.lock().faults = faults;
    }

    /// The last requests received (at most 1000), oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.lock().requests.iter().cloned().collect()
    }

    /// Forgets the requests received so far.
    pub fn clear_requests(&self) {
        self.lock().requests.clear();
    }

    /// Moves the images one step through their life, as of `now_ms` (Unix ms):
    /// some are created (`creating`), some of those become `available` or
    /// `failed`, some available ones expire, some failed or expired ones are
    /// deleted. Reproducible for a given seed (see [`Simulator::reseed`]).
    pub fn evolve(&self, now_ms: i64) -> Evolution {
        let mut state = self.lock();
        let state = &mut *state;
        let mut images = (*state.images).clone();
        let change = evolve::step(&mut images, &mut state.rng, now_ms);
        state.images = Arc::new(images);
        change
    }

    /// Calls [`Simulator::evolve`] every `every`, for ever (spawn it, or select it
    /// against a shutdown signal).
    pub async fn evolve_every(self, every: Duration) {
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let change = self.evolve(data::now_ms());
            tracing::debug!(?change, "simulated images evolved");
        }
    }

    /// Records `request` and works out what the faults make of it.
    pub(crate) fn admit(
        &self,
        mut request: RecordedRequest,
        datacenter: Option<&str>,
        page: u32,
    ) -> Plan {
        let mut state = self.lock();
        let state = &mut *state;
        let mut plan = Plan {
            delay: Duration::from_millis(state.faults.latency_ms),
            page_cap: state.faults.page_cap,
            repeat: state.faults.overlap,
            reject_token: state.faults.reject_token,
            ..Plan::default()
        };
        for rule in &mut state.faults.rules {
            let in_scope = match datacenter {
                Some(dc) => rule.datacenters.is_empty() || rule.datacenters.iter().any(|d| d == dc),
                None => rule.datacenters.is_empty(),
            };
            if !in_scope
                || rule.page.is_some_and(|p| p != page)
                || rule.times == Some(0)
                || (plan.replace.is_some() && rule.action.replaces_answer())
            {
                continue;
            }
            if let Some(rate) = rule.rate {
                let draw = (state.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
                if draw >= rate {
                    continue;
                }
            }
            if let Some(n) = rule.times.as_mut() {
                *n -= 1;
            }
            request.faults.push(rule.action.label());
            match &rule.action {
                FaultAction::Delay { ms } => plan.delay += Duration::from_millis(*ms),
                FaultAction::TotalCounts { offset } => plan.total_offset += offset,
                FaultAction::Skip { items } => plan.skip += items,
                FaultAction::Repeat { items } => plan.repeat += items,
                FaultAction::Corrupt { every, how } => plan.corrupt = Some((*every, *how)),
                FaultAction::ClampPage => plan.clamp = true,
                other => plan.replace = Some(other.clone()),
            }
        }
        plan.images = if state.alternates.is_empty() {
            Arc::clone(&state.images)
        } else {
            let passes = state
                .passes
                .entry(datacenter.unwrap_or("").to_string())
                .or_insert(0);
            if page == 1 {
                *passes += 1;
            }
            let set = passes.saturating_sub(1) % state.alternates.len();
            Arc::clone(&state.alternates[set])
        };
        if state.requests.len() == MAX_RECORDED {
            state.requests.pop_front();
        }
        state.requests.push_back(request);
        plan
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(query: &str) -> RecordedRequest {
        RecordedRequest {
            method: "GET".into(),
            path: "/list".into(),
            query: query.into(),
            headers: Vec::new(),
            received_us: 0,
            faults: Vec::new(),
        }
    }

    fn image(id: &str, dc: &str) -> SimImage {
        SimImage {
            id: id.into(),
            image_id: 1,
            image_type: "Ubuntu".into(),
            image_name: id.into(),
            image_size: "1.00".into(),
            datacenter_key: dc.into(),
            status: 1,
            create_time: 0,
        }
    }

    #[test]
    fn a_page_of_matches_is_a_slice_of_their_text() {
        let images: Vec<SimImage> = (0..7)
            .map(|i| image(&format!("im-{i}"), if i % 3 == 0 { "A" } else { "B" }))
            .collect();
        let images = Arc::new(images);
        let sim = Simulator::new(Vec::new(), SimOptions::default());
        let key = vec![("datacenterKey".to_string(), "B".to_string())];
        let matches = sim.matching(&images, &key, |im| im.datacenter_key == "B");
        assert_eq!(matches.positions, [1, 2, 4, 5]);
        for from in 0..4 {
            for end in from + 1..=4 {
                let expected: Vec<String> = matches.positions[from..end]
                    .iter()
                    .map(|&i| serde_json::to_string(&images[i as usize]).unwrap())
                    .collect();
                assert_eq!(matches.written(&images, from, end), expected.join(","));
            }
        }
        // The same list and filter give the same matches, text and all.
        let again = sim.matching(&images, &key, |_| unreachable!());
        assert!(Arc::ptr_eq(&matches, &again));
    }

    #[test]
    fn faults_read_from_sparse_json_and_refuse_unknown_fields() {
        let faults: Faults = serde_json::from_str("{}").unwrap();
        assert_eq!(faults, Faults::default());
        let faults: Faults = serde_json::from_str(
            r#"{"latency_ms":5,"rules":[{"datacenters":["SH"],"page":2,"times":1,
                "action":{"kind":"status","status":429,"retry_after_secs":3}},
                {"action":{"kind":"corrupt","every":2,"how":"wrong_type"}}]}"#,
        )
        .unwrap();
        assert_eq!(faults.latency_ms, 5);
        assert_eq!(
            faults.rules[0],
            FaultRule::always(FaultAction::Status {
                status: 429,
                retry_after_secs: Some(3)
            })
            .datacenter("SH")
            .page(2)
            .times(1)
        );
        let round_trip: Faults =
            serde_json::from_str(&serde_json::to_string(&faults).unwrap()).unwrap();
        assert_eq!(round_trip, faults);
        for bad in [
            r#"{"latency":5}"#,
            r#"{"rules":[{"action":{"kind":"explode"}}]}"#,
            r#"{"rules":[{"datacenter":"SH","action":{"kind":"hang"}}]}"#,
        ] {
            assert!(serde_json::from_str::<Faults>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rules_apply_by_datacenter_page_and_count() {
        let sim = Simulator::new(Vec::new(), SimOptions::default());
        sim.set_faults(Faults {
            rules: vec![
                FaultRule::always(FaultAction::Hang)
                    .datacenter("SH")
                    .page(2)
                    .times(1),
                FaultRule::always(FaultAction::Delay { ms: 7 }),
                FaultRule::always(FaultAction::Malformed).datacenter("HZ"),
            ],
            ..Faults::default()
        });
        let plan = sim.admit(request(""), Some("SH"), 1);
        assert_eq!(plan.replace, None);
        assert_eq!(plan.delay, Duration::from_millis(7));
        let plan = sim.admit(request(""), Some("SH"), 2);
        assert_eq!(plan.replace, Some(FaultAction::Hang));
        let plan = sim.admit(request(""), Some("SH"), 2);
        assert_eq!(plan.replace, None, "spent after one request");
        // Only one rule replaces the answer; the unfiltered list matches only
        // unscoped rules.
        let plan = sim.admit(request(""), Some("HZ"), 2);
        assert_eq!(plan.replace, Some(FaultAction::Malformed));
        let plan = sim.admit(request(""), None, 2);
        assert_eq!(plan.replace, None);
        let recorded = sim.requests();
        assert_eq!(recorded[1].faults, ["hang", "delay 7ms"]);
        assert_eq!(sim.faults().rules[0].times, Some(0));
    }

    #[test]
    fn a_rate_applies_to_about_that_share_of_requests() {
        let sim = Simulator::new(Vec::new(), SimOptions::default());
        sim.reseed(1);
        sim.set_faults(Faults {
            rules: vec![FaultRule::always(FaultAction::Malformed).rate(0.25)],
            ..Faults::default()
        });
        let hits = (0..4000)
            .filter(|_| sim.admit(request(""), None, 1).replace.is_some())
            .count();
        assert!((800..1200).contains(&hits), "{hits} of 4000");
    }

    #[test]
    fn alternates_change_at_page_one_per_datacenter() {
        let sim = Simulator::new(Vec::new(), SimOptions::default());
        let a = vec![image("a", "HZ")];
        let b = vec![image("b", "HZ"), image("b2", "HZ")];
        sim.set_alternates(vec![a.clone(), b.clone()]);
        let served = |dc: Option<&str>, page| (*sim.admit(request(""), dc, page).images).clone();
        assert_eq!(served(Some("HZ"), 1), a);
        assert_eq!(
            served(Some("HZ"), 2),
            a,
            "the other pages from the same set"
        );
        assert_eq!(served(Some("SH"), 1), a, "each datacenter on its own");
        assert_eq!(served(Some("HZ"), 1), b);
        assert_eq!(served(Some("HZ"), 3), b);
        assert_eq!(served(Some("HZ"), 1), a);
        sim.set_alternates(Vec::new());
        sim.set_images(b.clone());
        assert_eq!(served(Some("HZ"), 1), b);
    }
}
