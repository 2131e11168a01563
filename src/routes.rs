//! What each path answers: `/`, the telemetry path, `/healthz`, `/readyz`, 404.
//!
//! Every answer is built from the published snapshot and the exporter's own
//! metrics; nothing here waits on the upstream. Only `GET` and `HEAD` are served
//! (405 otherwise), request bodies are never read, and at most
//! `--web.max-requests` requests are handled at once (503 beyond).

use std::fmt::Write as _;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{
    HeaderValue, ACCEPT, ACCEPT_ENCODING, ALLOW, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_TYPE,
    VARY,
};
use hyper::{Method, Request, Response, StatusCode};
use tokio::sync::Semaphore;

use crate::exposition::MetricsCache;
use crate::metrics::Format;
use crate::state::{unix_seconds, State, TargetState};
use crate::target::Liveness;
use crate::telemetry::Telemetry;

/// Content type of the Prometheus text exposition format.
pub const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The request handler and what it reads from.
pub struct Routes {
    state: Arc<State>,
    metrics: MetricsCache,
    liveness: Arc<Liveness>,
    telemetry_path: String,
    limiter: Semaphore,
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
            metrics: MetricsCache::new(Arc::clone(&state), telemetry),
            state,
            liveness,
            telemetry_path,
            limiter: Semaphore::new(max_requests),
        }
    }

    /// Answers one request.
    pub async fn handle<B>(&self, req: Request<B>) -> Response<Full<Bytes>> {
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
        let Ok(_permit) = self.limiter.try_acquire() else {
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many concurrent requests, see --web.max-requests\n",
            );
        };
        let path = req.uri().path();
        let mut resp = if path == self.telemetry_path {
            self.metrics(negotiate_format(&req), accepts_gzip(&req))
        } else {
            match path {
                "/" => self.landing(),
                "/healthz" => self.healthz(),
                "/readyz" => self.readyz(),
                _ => text(StatusCode::NOT_FOUND, "not found\n"),
            }
        };
        if is_head {
            *resp.body_mut() = Full::new(Bytes::new());
        }
        resp
    }

    fn metrics(&self, format: Format, gzip: bool) -> Response<Full<Bytes>> {
        let (body, gzipped) = self.metrics.body_in(format, gzip);
        let mut builder = Response::builder()
            .header(CONTENT_TYPE, format.content_type())
            .header(VARY, "Accept, Accept-Encoding");
        if gzipped {
            builder = builder.header(CONTENT_ENCODING, "gzip");
        }
        builder
            .body(Full::new(body))
            .expect("static response parts are valid")
    }

    fn healthz(&self) -> Response<Full<Bytes>> {
        if self.liveness.is_alive() {
            text(StatusCode::OK, "ok\n")
        } else {
            text(
                StatusCode::SERVICE_UNAVAILABLE,
                "the refresh scheduler has stopped\n",
            )
        }
    }

    fn readyz(&self) -> Response<Full<Bytes>> {
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
        // what it found (`datacenter_key=""` before it found any).
        for (key, t) in &snap.targets {
            for dc in t.datacenters.keys() {
                let _ = writeln!(
                    body,
                    "account={} datacenter_key={} up={} last_success={} last_error={}",
                    quote(&key.account),
                    quote(dc),
                    u8::from(t.up),
                    t.last_success.map_or_else(|| "never".into(), rfc3339),
                    last_error(t).map_or_else(|| "none".into(), |e| quote(&e)),
                );
            }
        }
        text(status, &body)
    }

    fn landing(&self) -> Response<Full<Bytes>> {
        let snap = self.state.snapshot();
        let mut rows = String::new();
        for (key, t) in &snap.targets {
            let (state, class) = match (t.passes, t.up) {
                (0, _) => ("waiting", "down"),
                (_, true) => ("up", "up"),
                (_, false) => ("down", "down"),
            };
            // One row per datacenter: a discovery target lists what it found.
            for (dc, series) in &t.datacenters {
                let images = series
                    .images
                    .as_ref()
                    .filter(|im| t.is_fresh(im))
                    .map_or_else(|| "-".to_string(), |im| im.total_images.to_string());
                let dc = match (&key.datacenter, dc.as_str()) {
                    (None, "") => "(discovery: none found yet)",
                    (_, dc) => dc,
                };
                let _ = writeln!(
                    rows,
                    "<tr><td>{}</td><td>{}</td><td class=\"{}\">{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    html(&key.account),
                    html(dc),
                    class,
                    state,
                    t.last_success.map_or_else(|| "never".into(), rfc3339),
                    html(&last_error(t).unwrap_or_else(|| "-".into())),
                    images,
                );
            }
        }
        if rows.is_empty() {
            rows.push_str("<tr><td colspan=\"6\">no target is configured</td></tr>\n");
        }
        let finished = snap.targets.values().filter(|t| t.passes > 0).count();
        let page = format!(
            include_str!("landing.html"),
            version = crate::VERSION,
            revision = crate::REVISION,
            metrics = html(&self.telemetry_path),
            rows = rows,
            finished = finished,
            targets = snap.targets.len(),
            now = unix_seconds(std::time::SystemTime::now()) as u64,
        );
        let mut resp = Response::new(Full::new(Bytes::from(page)));
        resp.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        resp
    }
}

/// A target's last error, for `/readyz` and the landing page.
fn last_error(t: &TargetState) -> Option<String> {
    t.last_error
        .as_ref()
        .map(|e| format!("{} at {}: {}", e.reason.label(), rfc3339(e.at), e.message))
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// OpenMetrics 1.0.0 when `Accept` lists `application/openmetrics-text` with
/// a weight above 0 and no other version than 1.0.0 (Prometheus sends
/// `application/openmetrics-text;version=1.0.0;q=0.5,...;text/plain;version=0.0.4;q=0.3`);
/// otherwise the text format. Weights are not compared beyond that: a scraper
/// that names OpenMetrics at all prefers it (as client_golang decides).
fn negotiate_format<B>(req: &Request<B>) -> Format {
    let accepts_openmetrics = req
        .headers()
        .get_all(ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|range| {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or_default();
            if !media.eq_ignore_ascii_case("application/openmetrics-text") {
                return false;
            }
            let mut ok = true;
            for param in parts {
                let (k, v) = param.split_once('=').unwrap_or((param, ""));
                let v = v.trim().trim_matches('"');
                match k.trim().to_ascii_lowercase().as_str() {
                    "version" => ok &= v == "1.0.0",
                    "q" => ok &= v.parse::<f32>().is_ok_and(|q| q > 0.0),
                    _ => {}
                }
            }
            ok
        });
    if accepts_openmetrics {
        Format::OpenMetrics
    } else {
        Format::Text
    }
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

    fn req(accept: &str) -> Request<()> {
        Request::builder()
            .header(ACCEPT_ENCODING, accept)
            .body(())
            .unwrap()
    }

    #[test]
    fn format_negotiation() {
        let with = |accept: &str| {
            let req = Request::builder().header(ACCEPT, accept).body(()).unwrap();
            negotiate_format(&req)
        };
        let prometheus = "application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2";
        assert_eq!(with(prometheus), Format::OpenMetrics);
        assert_eq!(
            with("application/openmetrics-text; version=1.0.0"),
            Format::OpenMetrics
        );
        assert_eq!(with("application/openmetrics-text"), Format::OpenMetrics);
        assert_eq!(
            with("application/openmetrics-text; version=0.0.1"),
            Format::Text
        );
        assert_eq!(with("application/openmetrics-text; q=0"), Format::Text);
        assert_eq!(with("text/plain;version=0.0.4"), Format::Text);
        assert_eq!(with("*/*"), Format::Text);
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
    fn html_is_escaped() {
        assert_eq!(
            html("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
