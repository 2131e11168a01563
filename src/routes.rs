//! What each path answers: `/`, the telemetry path, `/probe?account=NAME`,
//! `/healthz`, `/readyz`, `POST /-/reload`, 404.
//!
//! Every answer is built from the published snapshot and the exporter's own
//! metrics; nothing here waits on the upstream. Only `GET` and `HEAD` are served
//! (405 otherwise), but `POST` on `/-/reload`; request bodies are never read, and
//! at most `--web.max-requests` requests are handled at once (503 beyond), a
//! reload request apart: it waits for a coalesced reload (see
//! [`crate::reloads`]) holding nothing a scrape needs.
//!
//! With a route prefix (`--web.route-prefix`, or the path of
//! `--web.external-url`), every path above is served under it, `/` redirects to
//! the prefix, and anything else outside it is 404; the landing page's links
//! follow the external URL's path.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;

use hyper::header::{
    HeaderValue, ACCEPT, ACCEPT_ENCODING, ALLOW, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_TYPE,
    VARY,
};
use hyper::{Method, Request, Response, StatusCode};
use tokio::sync::Semaphore;

use crate::account::AccountNames;
use crate::body::Body;
use crate::config_file::Reloaded;
use crate::metrics::writer::Sources;
use crate::metrics::Format;
use crate::refresh::Liveness;
use crate::reloads::{Answer, ReloadQueue};
use crate::state::{State, TargetState};
use crate::telemetry::Telemetry;

/// How long a `/metrics` body is served again while no target publishes: the
/// exporter's own counters and `process_*` values lag by at most this much.
pub const MAX_AGE: Duration = Duration::from_secs(1);

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
        let mut lines = snapshot.lines(None);
        lines.extend(accounts.iter().map(|l| &**l));
        let sources = Sources {
            lines,
            collectors: &snapshot.collectors,
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
        let mut lines = snapshot.lines(Some(account));
        lines.extend(accounts.iter().map(|l| &**l));
        Sources {
            lines,
            collectors: &snapshot.collectors,
            own: &[],
        }
        .body(format, gzip)
    }
}

/// What the landing page says about the process itself: the effective
/// configuration (never a secret) and whether it serves simulated data.
#[derive(Debug, Clone, Default)]
pub struct Overview {
    /// `--demo`: the data comes from the built-in simulator.
    pub demo: bool,
    /// The rows, in the order shown.
    pub settings: Vec<Setting>,
}

/// A row of the overview: a setting's name and effective value.
#[derive(Debug, Clone)]
pub struct Setting {
    pub name: String,
    pub value: String,
    /// The account, when the row is one that logs in: the row ends with when
    /// its token expires, as it is at each request.
    pub logs_in: Option<String>,
}

impl Setting {
    /// A row whose value is all there is to show.
    pub fn new(name: impl Into<String>, value: impl Into<String>) -> Self {
        Setting {
            name: name.into(),
            value: value.into(),
            logs_in: None,
        }
    }
}

/// The landing page's overview, shared with the reloads that replace it.
pub type SharedOverview = Arc<std::sync::RwLock<Overview>>;

/// The request handler and what it reads from.
pub struct Routes {
    state: Arc<State>,
    metrics: MetricsCache,
    liveness: Arc<Liveness>,
    telemetry_path: String,
    limiter: Arc<Semaphore>,
    /// Read for the token expiry of the accounts that log in.
    telemetry: Telemetry,
    overview: SharedOverview,
    accounts: Arc<AccountNames>,
    reloads: Option<ReloadQueue>,
    lifecycle: bool,
    /// Every route is under it: empty, or a path without its trailing slash.
    prefix: String,
    /// The landing page's links start with it (the external URL's path).
    links: String,
}

impl Routes {
    /// Routes over the given state; `max_requests` concurrent requests at most.
    pub fn new(
        state: Arc<State>,
        telemetry: Telemetry,
        liveness: Arc<Liveness>,
        telemetry_path: String,
        max_requests: usize,
    ) -> Self {
        Routes {
            metrics: MetricsCache::new(Arc::clone(&state), telemetry.clone()),
            telemetry,
            state,
            liveness,
            telemetry_path,
            limiter: Arc::new(Semaphore::new(max_requests)),
            overview: Arc::default(),
            accounts: Arc::default(),
            reloads: None,
            lifecycle: false,
            prefix: String::new(),
            links: String::new(),
        }
    }

    /// Serves every route under `prefix` and starts the landing page's links
    /// with `links` (both empty, or paths without a trailing slash).
    pub fn with_prefixes(mut self, prefix: String, links: String) -> Self {
        self.prefix = prefix;
        self.links = links;
        self
    }

    /// The configured accounts, which `/probe?account=` may name.
    pub fn with_accounts(mut self, accounts: Arc<AccountNames>) -> Self {
        self.accounts = accounts;
        self
    }

    /// Where `POST /-/reload` asks for a reload; it answers 403 unless
    /// `enabled` (`--web.enable-lifecycle`).
    pub fn with_lifecycle(mut self, reloads: ReloadQueue, enabled: bool) -> Self {
        self.reloads = Some(reloads);
        self.lifecycle = enabled;
        self
    }

    /// Shows `overview` on the landing page, as it is at each request (a
    /// reload replaces it).
    pub fn with_overview(mut self, overview: SharedOverview) -> Self {
        self.overview = overview;
        self
    }

    /// Answers one request.
    pub async fn handle<B>(&self, req: Request<B>) -> Response<Body> {
        let Some(path) = self.local_path(req.uri().path()) else {
            return self.outside_prefix(req.uri().path());
        };
        if path == "/-/reload" {
            // No request slot: 50 clients asking for reloads in a loop would
            // otherwise take every slot and scrapes would answer 503. Waiting
            // for the coalesced reload holds only this connection.
            return self.reload(req.method()).await;
        }
        let is_head = req.method() == Method::HEAD;
        if req.method() != Method::GET && !is_head {
            let mut resp = text(
                StatusCode::METHOD_NOT_ALLOWED,
                "only GET and HEAD are served\n",
            );
            resp.headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
            return resp;
        }
        // Health probes never queue behind scrapes: probes time out in seconds,
        // and a refused /healthz would restart a healthy exporter.
        // A scrape's slot goes with its body, and is held until the body is sent.
        let permit = if matches!(path, "/healthz" | "/readyz") {
            None
        } else {
            let Ok(permit) = Arc::clone(&self.limiter).try_acquire_owned() else {
                return text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "too many concurrent requests, see --web.max-requests\n",
                );
            };
            Some(permit)
        };
        let mut resp = if path == self.telemetry_path {
            self.metrics(negotiate(&req), accepts_gzip(&req))
        } else {
            match path {
                "/" => self.landing(),
                "/healthz" => self.healthz(),
                "/readyz" => self.readyz(),
                "/probe" => {
                    let query = req.uri().query().unwrap_or("");
                    self.probe(query, negotiate(&req), accepts_gzip(&req))
                }
                _ => text(StatusCode::NOT_FOUND, "not found\n"),
            }
        };
        if is_head {
            *resp.body_mut() = Body::empty();
        }
        if let Some(permit) = permit {
            let body = std::mem::take(resp.body_mut());
            *resp.body_mut() = body.with_slot(permit);
        }
        resp
    }

    fn metrics(&self, negotiated: Negotiated, gzip: bool) -> Response<Body> {
        // Writing a large body takes milliseconds of CPU: on the multi-threaded
        // runtime the worker hands its other tasks (health probes, other
        // connections) to the rest while it writes.
        let body = off_runtime(|| self.metrics.body(negotiated.format, gzip));
        exposition_response(negotiated, body, gzip)
    }

    /// `/probe?account=NAME`: the series of one account only, from the published
    /// snapshot as `/metrics` serves it, for a scrape job per account.
    fn probe(&self, query: &str, negotiated: Negotiated, gzip: bool) -> Response<Body> {
        let asked: Vec<String> = url::form_urlencoded::parse(query.as_bytes())
            .filter(|(k, _)| k == "account")
            .map(|(_, v)| v.into_owned())
            .collect();
        let account = match asked.as_slice() {
            [] => {
                return text(
                    StatusCode::BAD_REQUEST,
                    "missing parameter: /probe?account=NAME\n",
                )
            }
            [one] => one,
            _ => return text(StatusCode::BAD_REQUEST, "give the account parameter once\n"),
        };
        if !self.accounts.contains(account) {
            return text(
                StatusCode::BAD_REQUEST,
                &format!(
                    "unknown account {}: not in the configuration\n",
                    quote(account)
                ),
            );
        }
        // Never cached: written for each probe, as `/metrics` is, off the worker.
        let body = off_runtime(|| self.metrics.probe(account, negotiated.format, gzip));
        exposition_response(negotiated, body, gzip)
    }

    /// The path below the route prefix (`/` for the prefix itself), or `None`
    /// for a path outside it.
    fn local_path<'a>(&self, path: &'a str) -> Option<&'a str> {
        if self.prefix.is_empty() {
            return Some(path);
        }
        match path.strip_prefix(self.prefix.as_str())? {
            "" => Some("/"),
            rest if rest.starts_with('/') => Some(rest),
            _ => None,
        }
    }

    /// Outside the route prefix: `/` redirects to the landing page (as
    /// Prometheus does), anything else is not found.
    fn outside_prefix(&self, path: &str) -> Response<Body> {
        if path != "/" {
            return text(StatusCode::NOT_FOUND, "not found\n");
        }
        let location = format!("{}/", self.links);
        let mut resp = text(StatusCode::FOUND, &format!("see {location}\n"));
        if let Ok(value) = HeaderValue::from_str(&location) {
            resp.headers_mut().insert(hyper::header::LOCATION, value);
        }
        resp
    }

    /// `POST /-/reload`: answers once a reload that started after the request
    /// has checked the configuration, with 200 when it was handed to the
    /// scheduler, 500 and its problems, or 503 when the exporter is stopping.
    /// Requests made while a reload runs share the next one; when too many
    /// already wait, 202 at once (the reload still runs).
    async fn reload(&self, method: &Method) -> Response<Body> {
        if method != Method::POST {
            let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, "only POST reloads\n");
            resp.headers_mut()
                .insert(ALLOW, HeaderValue::from_static("POST"));
            return resp;
        }
        let Some(reloads) = self.reloads.as_ref().filter(|_| self.lifecycle) else {
            return text(
                StatusCode::FORBIDDEN,
                "lifecycle endpoints are disabled: start the exporter with --web.enable-lifecycle\n",
            );
        };
        let outcome = match reloads.request_and_wait().await {
            Answer::Done(outcome) => outcome,
            Answer::ShuttingDown => {
                return text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the exporter is shutting down; nothing was reloaded\n",
                )
            }
            Answer::Queued { waiting } => {
                return text(
                    StatusCode::ACCEPTED,
                    &format!(
                        "a reload will run; {waiting} requests already wait for it, so this one does not: its outcome is finovy_config_last_reload_successful\n"
                    ),
                )
            }
        };
        match &*outcome {
            Ok(Reloaded::Applied { accounts, targets }) => text(
                StatusCode::OK,
                &format!("configuration reloaded: {accounts} accounts, {targets} targets\n"),
            ),
            Ok(Reloaded::NoFile) => text(
                StatusCode::OK,
                "no --config.file to reload; the token file is read at every pass\n",
            ),
            Err(problems) => text(StatusCode::INTERNAL_SERVER_ERROR, &format!("{problems}\n")),
        }
    }

    fn healthz(&self) -> Response<Body> {
        if self.liveness.is_alive() {
            text(StatusCode::OK, "ok\n")
        } else {
            text(
                StatusCode::SERVICE_UNAVAILABLE,
                "the refresh scheduler has stopped\n",
            )
        }
    }

    fn readyz(&self) -> Response<Body> {
        let snap = self.state.snapshot();
        let mut body = String::new();
        let waiting = snap.targets.values().filter(|t| t.passes == 0).count();
        let status = if snap.ready() {
            body.push_str("ready: every target has finished its first pass\n");
            StatusCode::OK
        } else {
            let _ = writeln!(
                body,
                "not ready: {waiting} of {} targets have not finished their first pass",
                snap.targets.len()
            );
            StatusCode::SERVICE_UNAVAILABLE
        };
        // One line per datacenter, as /metrics has them: a discovery target lists
        // what it found (`datacenter_key=""` before it found any). A mistake that
        // looks healthy is named on its line, as on the landing page.
        for (key, t) in &snap.targets {
            for dc in t.datacenters.keys() {
                let _ = write!(
                    body,
                    "account={} datacenter_key={} up={} last_success={} last_error={}",
                    quote(&key.account),
                    quote(dc),
                    u8::from(t.up),
                    t.last_success.map_or_else(|| "never".into(), rfc3339),
                    last_error(t).map_or_else(|| "none".into(), |e| quote(&e)),
                );
                if let Some(warning) = warning(key, t, dc) {
                    let _ = write!(body, " warning={}", quote(&warning));
                }
                body.push('\n');
            }
        }
        text(status, &body)
    }

    fn landing(&self) -> Response<Body> {
        let snap = self.state.snapshot();
        let now = std::time::SystemTime::now();
        let mut rows = String::new();
        let mut rows_count = 0;
        let mut warnings = String::new();
        for (key, t) in &snap.targets {
            let (state, class) = match (t.passes, t.up) {
                (0, _) => ("waiting", "down"),
                (_, true) => ("up", "up"),
                (_, false) => ("down", "down"),
            };
            // One row per datacenter: a discovery target lists what it found.
            for (dc, series) in &t.datacenters {
                if let Some(warning) = warning(key, t, dc) {
                    let _ = writeln!(
                        warnings,
                        "<li><b>{}/{}</b>: {}</li>",
                        html(&key.account),
                        html(if dc.is_empty() { "(discovery)" } else { dc }),
                        html(&warning)
                    );
                }
                let fresh = series.images.as_ref().filter(|im| t.is_fresh(im));
                let (images, size) = fresh.map_or_else(
                    || ("-".to_string(), "-".to_string()),
                    |im| (im.total_images.to_string(), bytes(im.total_bytes)),
                );
                let shown_dc = match (&key.datacenter, dc.as_str(), t.passes) {
                    (None, "", 0) => "(discovery: none found yet)",
                    (None, "", _) => "(discovery: none found)",
                    (_, dc, _) => dc,
                };
                let trace_id = t
                    .last_error
                    .as_ref()
                    .and_then(|e| e.trace_id.as_deref())
                    .unwrap_or("-");
                rows_count += 1;
                let _ = writeln!(
                    rows,
                    "<tr><td>{}</td><td>{}</td><td class=\"{}\">{}</td><td>{}</td><td>{}</td>{}<td>{}</td><td>{}</td><td>{}</td><td class=\"error\">{}</td><td>{}</td></tr>",
                    html(&key.account),
                    html(shown_dc),
                    class,
                    state,
                    t.last_success.map_or_else(|| "never".into(), rfc3339),
                    t.last_success.map_or_else(|| "-".into(), |at| ago(now, at)),
                    // Relative, with the time itself on hover: the column stays narrow.
                    t.next_pass.map_or_else(
                        || "<td>-</td>".into(),
                        |at| format!("<td title=\"{}\">{}</td>", rfc3339(at), ago(now, at))
                    ),
                    images,
                    size,
                    if t.passes == 0 {
                        "-".to_string()
                    } else {
                        format!("{:.2} s", t.last_duration.as_secs_f64())
                    },
                    html(&last_error(t).unwrap_or_else(|| "-".into())),
                    html(trace_id),
                );
            }
        }
        if rows.is_empty() {
            rows.push_str("<tr><td colspan=\"11\">no target is configured</td></tr>\n");
        }
        let warnings = if warnings.is_empty() {
            String::new()
        } else {
            format!("<div class=\"warnings\" id=\"warnings\"><h2>Warnings</h2>\n<ul>\n{warnings}</ul></div>\n")
        };
        let overview = self
            .overview
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let banner = if overview.demo {
            "<div class=\"demo\" id=\"demo\">Demo mode: the data below comes from a built-in simulated upstream, not from a Finovy account.</div>\n"
        } else {
            ""
        };
        let mut settings = String::new();
        for row in &overview.settings {
            let token = match &row.logs_in {
                None => String::new(),
                Some(account) => match self.telemetry.token_expiry(account) {
                    Some(at) if at > now => format!(", token valid until {}", rfc3339(at)),
                    Some(at) => format!(", token expired at {}", rfc3339(at)),
                    // Before the first login, after a refusal, or a login
                    // that did not say how long its token lasts.
                    None => ", token expiry unknown".to_string(),
                },
            };
            let _ = writeln!(
                settings,
                "<tr><th>{}</th><td>{}{}</td></tr>",
                html(&row.name),
                html(&row.value),
                html(&token)
            );
        }
        let finished = snap.targets.values().filter(|t| t.passes > 0).count();
        let page = format!(
            include_str!("landing.html"),
            version = crate::VERSION,
            revision = crate::REVISION,
            metrics = html(&format!("{}{}", self.links, self.telemetry_path)),
            prefix = html(&self.links),
            banner = banner,
            warnings = warnings,
            settings = settings,
            rows = rows,
            finished = finished,
            targets = snap.targets.len(),
            rows_count = rows_count,
            now = rfc3339(now),
        );
        let mut resp = Response::new(Body::from(page));
        resp.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        resp
    }
}

/// What looks healthy but is not, for one datacenter row of a target: the
/// target's own notice (a datacenter key with no image while the account has
/// images elsewhere), or a discovery that succeeded and found nothing.
fn warning(key: &crate::account::TargetKey, t: &TargetState, dc: &str) -> Option<String> {
    if key.datacenter.is_none() && dc.is_empty() && t.passes > 0 && t.up {
        return Some(
            "discovery succeeded but found no datacenter: the account has no image matching the filters (check --filter.image-type, --filter.image-name, --filter.status)".into(),
        );
    }
    t.notice.clone()
}

/// How far `at` is from `now`, for people: "2 min ago", "in 40 s".
fn ago(now: std::time::SystemTime, at: std::time::SystemTime) -> String {
    let (secs, past) = match now.duration_since(at) {
        Ok(d) => (d.as_secs(), true),
        Err(e) => (e.duration().as_secs(), false),
    };
    let amount = match secs {
        0..=119 => format!("{secs} s"),
        120..=7199 => format!("{} min", secs / 60),
        7200..=172_799 => format!("{} h", secs / 3600),
        _ => format!("{} days", secs / 86_400),
    };
    if past {
        format!("{amount} ago")
    } else {
        format!("in {amount}")
    }
}

/// Bytes in binary units, three significant digits: "1.50 GiB".
fn bytes(n: u128) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.2} {}", UNITS[unit])
    }
}

/// A target's last error, for `/readyz` and the landing page.
fn last_error(t: &TargetState) -> Option<String> {
    t.last_error
        .as_ref()
        .map(|e| format!("{} at {}: {}", e.reason.label(), rfc3339(e.at), e.message))
}

/// Runs `write` (a body's CPU work) so that on the multi-threaded runtime the
/// worker first hands its other tasks (health probes, other connections) to the
/// rest.
fn off_runtime<T>(write: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(write),
        _ => write(),
    }
}

/// A plain-text answer that no cache keeps.
pub(crate) fn text(status: StatusCode, body: &str) -> Response<Body> {
    let mut resp = Response::new(Body::from(body.to_string()));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// The format a scraper gets, and the name escaping it asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Negotiated {
    format: Format,
    /// The `escaping` parameter of the chosen media range, when it names a
    /// scheme: every name the exporter writes is valid in the legacy character
    /// set, so each scheme leaves them as they are, and the `Content-Type` says
    /// which one the body was written under.
    escaping: Option<&'static str>,
}

impl Negotiated {
    /// What a scraper that names no served format gets.
    const TEXT: Negotiated = Negotiated {
        format: Format::Text,
        escaping: None,
    };
}

/// The escaping schemes of Prometheus 3 (`model.EscapingScheme`).
const ESCAPING: [&str; 4] = ["allow-utf-8", "underscores", "dots", "values"];

/// Chooses the format as client_golang's `NegotiateIncludingOpenMetrics` does:
/// of the media ranges served, the one of the highest weight (`q`, 1 when
/// absent; the first one given at equal weight; weight 0 refuses):
/// `application/openmetrics-text` with version 1.0.0 or none gets OpenMetrics
/// 1.0.0, `text/plain` with version 0.0.4 or none the text format. Nothing served
/// (OpenMetrics 0.0.1, text 1.0.0, `*/*`, no `Accept`): the text format.
///
/// Prometheus 3 sends `application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,
/// application/openmetrics-text;version=0.0.1;q=0.5,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,
/// text/plain;version=0.0.4;q=0.3,*/*;q=0.2` and gets OpenMetrics 1.0.0.
fn negotiate<B>(req: &Request<B>) -> Negotiated {
    let mut best: Option<(f32, Negotiated)> = None;
    let ranges = req.headers().get_all(ACCEPT).iter();
    for range in ranges
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
    {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or_default().to_ascii_lowercase();
        let (mut version, mut escaping, mut q) = (None, None, Some(1.0));
        for param in parts {
            let (k, v) = param.split_once('=').unwrap_or((param, ""));
            let v = v.trim().trim_matches('"');
            match k.trim().to_ascii_lowercase().as_str() {
                "version" => version = Some(v),
                "escaping" => escaping = ESCAPING.into_iter().find(|s| s.eq_ignore_ascii_case(v)),
                "q" => q = v.parse::<f32>().ok().filter(|q| q.is_finite()),
                _ => {}
            }
        }
        let format = match media.as_str() {
            "application/openmetrics-text" if version.is_none_or(|v| v == "1.0.0") => {
                Format::OpenMetrics
            }
            "text/plain" if version.is_none_or(|v| v == "0.0.4") => Format::Text,
            _ => continue,
        };
        match q {
            Some(q) if q > 0.0 && best.is_none_or(|(b, _)| q > b) => {
                best = Some((q, Negotiated { format, escaping }));
            }
            _ => {}
        }
    }
    best.map_or(Negotiated::TEXT, |(_, n)| n)
}

/// Whether the client accepts gzip, as RFC 9110 reads `Accept-Encoding`: the
/// weight given to `gzip` if it is listed, else the weight of `*`; a weight of 0
/// refuses (`gzip;q=0, *` does not get gzip).
fn accepts_gzip<B>(req: &Request<B>) -> bool {
    let mut gzip = None;
    let mut any = None;
    for part in req
        .headers()
        .get_all(ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
    {
        let mut pieces = part.split(';').map(str::trim);
        let coding = pieces.next().unwrap_or("");
        let weight = pieces
            .find_map(|p| {
                p.strip_prefix("q=")
                    .or_else(|| p.strip_prefix("Q="))
                    .map(|q| q.trim().parse::<f32>().unwrap_or(0.0))
            })
            .unwrap_or(1.0);
        if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
            gzip = Some(gzip.map_or(weight, |w: f32| w.min(weight)));
        } else if coding == "*" {
            any = Some(weight);
        }
    }
    gzip.or(any).is_some_and(|w| w > 0.0)
}

/// A `/metrics` or `/probe` answer: its exact content type, and the headers
/// that let a cache tell formats and encodings apart.
fn exposition_response(
    negotiated: Negotiated,
    body: bytes::Bytes,
    gzipped: bool,
) -> Response<Body> {
    let content_type = match negotiated.escaping {
        Some(scheme) => format!("{}; escaping={scheme}", negotiated.format.content_type()),
        None => negotiated.format.content_type().to_string(),
    };
    let mut builder = Response::builder()
        .header(CONTENT_TYPE, content_type)
        .header(VARY, "Accept, Accept-Encoding");
    if gzipped {
        builder = builder.header(CONTENT_ENCODING, "gzip");
    }
    builder
        .body(Body::from(body))
        .expect("static response parts are valid")
}

fn rfc3339(t: std::time::SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

fn quote(s: &str) -> String {
    format!("{s:?}")
}

/// Escapes text for HTML element content and attribute values.
fn html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::account::TargetKey;
    use crate::state::Outcome;
    use std::io::Read as _;
    use std::time::Duration;

    /// A state with one registered target, its key, and a cache over it.
    fn one_target() -> (Arc<State>, TargetKey, MetricsCache) {
        let state = Arc::new(State::new());
        let key = TargetKey::datacenter("default", "HZ");
        state.register(&key, Duration::from_secs(60), Duration::from_secs(300));
        let cache = MetricsCache::new(Arc::clone(&state), Telemetry::new());
        (state, key, cache)
    }

    /// The queue's answers as `POST /-/reload` gives them: 202 beyond the
    /// waiting bound (here none may wait), 503 once the exporter stops.
    #[tokio::test]
    async fn a_reload_request_beyond_the_waiting_bound_is_accepted_and_after_shutdown_refused() {
        let queue = ReloadQueue::new(0);
        let routes = Routes::new(
            Arc::new(State::new()),
            Telemetry::new(),
            Liveness::new(),
            "/metrics".into(),
            4,
        )
        .with_lifecycle(queue.clone(), true);
        let resp = routes.reload(&Method::POST).await;
        assert_eq!(resp.status(), StatusCode::ACCEPTED);
        queue.close();
        let resp = routes.reload(&Method::POST).await;
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
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

    fn req(accept: &str) -> Request<()> {
        Request::builder()
            .header(ACCEPT_ENCODING, accept)
            .body(())
            .unwrap()
    }

    fn with(accept: &str) -> (Format, Option<&'static str>) {
        let req = Request::builder().header(ACCEPT, accept).body(()).unwrap();
        let n = negotiate(&req);
        (n.format, n.escaping)
    }

    /// The `Accept` of a Prometheus 3 scrape (its scrape tests' "default scrape
    /// protocols"), and of Prometheus 2 before and after `scrape_protocols`.
    const PROMETHEUS_3: &str = "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,application/openmetrics-text;version=0.0.1;q=0.5,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2";
    const PROMETHEUS_2: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    const PROMETHEUS_2_PROTOCOLS: &str = "application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2";

    #[test]
    fn prometheus_3_and_2_get_openmetrics_1_0_0() {
        assert_eq!(
            with(PROMETHEUS_3),
            (Format::OpenMetrics, Some("allow-utf-8"))
        );
        assert_eq!(with(PROMETHEUS_2), (Format::OpenMetrics, None));
        assert_eq!(with(PROMETHEUS_2_PROTOCOLS), (Format::OpenMetrics, None));
        let req = Request::builder()
            .header(ACCEPT, PROMETHEUS_3)
            .body(())
            .unwrap();
        let resp = exposition_response(negotiate(&req), bytes::Bytes::new(), true);
        assert_eq!(
            resp.headers()[CONTENT_TYPE],
            "application/openmetrics-text; version=1.0.0; charset=utf-8; escaping=allow-utf-8"
        );
        let resp = exposition_response(negotiate(&req_accepting("")), bytes::Bytes::new(), false);
        assert_eq!(
            resp.headers()[CONTENT_TYPE],
            "text/plain; version=0.0.4; charset=utf-8"
        );
    }

    fn req_accepting(accept: &str) -> Request<()> {
        Request::builder().header(ACCEPT, accept).body(()).unwrap()
    }

    #[test]
    fn weights_decide_not_the_order() {
        // Prometheus 3 configured to prefer the text format.
        let text_first = "text/plain;version=1.0.0;escaping=allow-utf-8;q=0.6,text/plain;version=0.0.4;q=0.5,application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.4,*/*;q=0.3";
        assert_eq!(with(text_first), (Format::Text, None));
        assert_eq!(
            with("application/openmetrics-text;version=1.0.0;q=0.2,text/plain;version=0.0.4;q=0.9"),
            (Format::Text, None)
        );
        assert_eq!(
            with("text/plain;q=0.1, application/openmetrics-text"),
            (Format::OpenMetrics, None),
            "no q is 1"
        );
        assert_eq!(
            with("text/plain;version=0.0.4;escaping=underscores;q=0.9,application/openmetrics-text;q=0.8"),
            (Format::Text, Some("underscores"))
        );
        // Equal weights: the specific range before the wildcard, else the order given.
        assert_eq!(
            with("*/*,application/openmetrics-text"),
            (Format::OpenMetrics, None)
        );
        assert_eq!(
            with("text/plain,application/openmetrics-text"),
            (Format::Text, None)
        );
    }

    #[test]
    fn refused_or_unserved_ranges_fall_back_to_text() {
        assert_eq!(
            with("application/openmetrics-text; q=0"),
            (Format::Text, None)
        );
        assert_eq!(
            with("application/openmetrics-text; version=0.0.1"),
            (Format::Text, None)
        );
        assert_eq!(
            with("application/openmetrics-text; version=1.0.0; escaping=bogus"),
            (Format::OpenMetrics, None),
            "an unknown scheme is not echoed"
        );
        assert_eq!(
            with("application/openmetrics-text;q=x"),
            (Format::Text, None)
        );
        assert_eq!(with("text/plain;version=1.0.0"), (Format::Text, None));
        assert_eq!(with("*/*"), (Format::Text, None));
        assert_eq!(with(""), (Format::Text, None));
    }

    #[test]
    fn gzip_negotiation() {
        assert!(accepts_gzip(&req("gzip")));
        assert!(accepts_gzip(&req("deflate, gzip;q=0.5")));
        assert!(!accepts_gzip(&req("gzip;q=0")));
        assert!(
            !accepts_gzip(&req("gzip;q=0, *")),
            "an explicit refusal beats *"
        );
        assert!(!accepts_gzip(&req("gzip; q=0.000")));
        assert!(accepts_gzip(&req("*")));
        assert!(!accepts_gzip(&req("*;q=0")));
        assert!(!accepts_gzip(&req("identity")));
    }

    #[test]
    fn ages_and_sizes_read_as_people_say_them() {
        let now = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
        let secs = std::time::Duration::from_secs;
        assert_eq!(ago(now, now - secs(125)), "2 min ago");
        assert_eq!(ago(now, now - secs(5)), "5 s ago");
        assert_eq!(ago(now, now + secs(40)), "in 40 s");
        assert_eq!(ago(now, now - secs(3 * 86_400)), "3 days ago");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3 << 29), "1.50 GiB");
    }

    #[test]
    fn html_is_escaped() {
        assert_eq!(
            html("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
