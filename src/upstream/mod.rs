//! The Finovy API client: one page per call, with retries, limits and typed errors.
//!
//! [`ApiClient::fetch_page`] sends the token header, the extra headers and
//! parameters, the filters and the paging parameters; reads at most a bounded
//! number of bytes; decodes with [`wire`]; and retries timeouts, connection errors,
//! 5xx and 429 (after `Retry-After` when given) with exponential backoff and
//! jitter. Every failure is a [`FetchError`] whose [`Reason`] becomes the `reason`
//! label. Requests in flight are bounded by a semaphore shared by all datacenters.

pub mod wire;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use reqwest::StatusCode;
use tokio::sync::Semaphore;
use url::Url;

use crate::aggregate::Status;
use crate::config::{Config, ExtraHeader, SizeUnit};
use crate::refresh::Reason;
use crate::secret::Token;
use crate::telemetry::Telemetry;
pub use wire::{Page, WireError};

/// The header that carries the access token.
pub const TOKEN_HEADER: HeaderName = HeaderName::from_static("finovy-access-token");

/// Largest wait between two tries that the client accepts, `Retry-After` included;
/// a server asking for longer fails the refresh, and the next one tries again.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(60);
const BACKOFF_BASE: Duration = Duration::from_millis(200);
const BACKOFF_CAP: Duration = Duration::from_secs(5);

/// Filters passed upstream with every request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filters {
    /// `imageType`.
    pub image_type: Option<String>,
    /// `imageName`.
    pub image_name: Option<String>,
    /// `status`.
    pub status: Option<Status>,
}

/// What the client needs to know, taken from [`Config`].
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Full URL of the list endpoint.
    pub url: Url,
    /// Per-request timeout, body included.
    pub timeout: Duration,
    /// `pageSize` to ask for.
    pub page_size: u32,
    /// Extra headers.
    pub headers: Vec<ExtraHeader>,
    /// Extra query parameters.
    pub params: Vec<(String, String)>,
    /// Filters.
    pub filters: Filters,
    /// Unit of `imageSize`.
    pub size_unit: SizeUnit,
    /// Retries after a retryable failure.
    pub max_retries: u32,
    /// Requests in flight at most.
    pub concurrency: u32,
}

impl ClientConfig {
    /// Takes the client's part of the configuration.
    pub fn from_config(config: &Config) -> Self {
        ClientConfig {
            url: config.list_url(),
            timeout: config.api_timeout,
            page_size: config.page_size,
            headers: config.api_headers.clone(),
            params: config.api_params.clone(),
            filters: Filters {
                image_type: config.filter_image_type.clone(),
                image_name: config.filter_image_name.clone(),
                status: config.filter_status,
            },
            size_unit: config.image_size_unit,
            max_retries: config.max_retries,
            concurrency: config.api_concurrency,
        }
    }

    /// Largest answer body accepted: room for `pageSize` items of 4 KiB each
    /// (a real item is about 250 bytes) plus 1 MiB. A larger answer is cut off.
    pub fn max_body_bytes(&self) -> usize {
        (1 << 20) + self.page_size as usize * 4096
    }
}

/// Why a request failed. Never contains the token.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The token could not be read.
    #[error(transparent)]
    Token(#[from] crate::secret::TokenError),
    /// HTTP 401/403, or `"code":401` in the body.
    #[error("authentication failed (HTTP {status}{})", api_code.map(|c| format!(", code {c}")).unwrap_or_default())]
    Auth {
        /// HTTP status.
        status: u16,
        /// The envelope's code, when it was in the body.
        api_code: Option<i64>,
        /// Upstream `traceId`.
        trace_id: Option<String>,
    },
    /// No complete answer within the timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The connection could not be made or broke.
    #[error("connection failed: {0}")]
    Connect(String),
    /// An HTTP status other than 200.
    #[error("HTTP status {status}")]
    Http {
        /// The status.
        status: u16,
        /// `Retry-After`, when the server sent one.
        retry_after: Option<Duration>,
    },
    /// The envelope reported a failure other than authentication.
    #[error("API error code {code}: {msg}")]
    Api {
        /// HTTP status.
        status: u16,
        /// The envelope's `code`.
        code: i64,
        /// The envelope's `msg`.
        msg: String,
        /// Upstream `traceId`.
        trace_id: Option<String>,
    },
    /// The answer is not a page.
    #[error("cannot decode the answer: {msg}")]
    Decode {
        /// HTTP status.
        status: u16,
        /// What is wrong.
        msg: String,
    },
    /// The answer was larger than the limit.
    #[error("answer larger than {limit} bytes, cut off")]
    TooLarge {
        /// The limit in bytes.
        limit: usize,
    },
}

impl FetchError {
    /// The `reason` label of `finovy_refresh_failures_total`.
    pub fn reason(&self) -> Reason {
        match self {
            FetchError::Token(_) | FetchError::Auth { .. } => Reason::Auth,
            FetchError::Timeout(_) => Reason::Timeout,
            FetchError::Connect(_) => Reason::Connect,
            FetchError::Http { .. } => Reason::Http,
            FetchError::Api { .. } => Reason::Api,
            FetchError::Decode { .. } | FetchError::TooLarge { .. } => Reason::Decode,
        }
    }

    /// The HTTP status that came back, if one did.
    pub fn http_status(&self) -> Option<u16> {
        match self {
            FetchError::Auth { status, .. }
            | FetchError::Http { status, .. }
            | FetchError::Api { status, .. }
            | FetchError::Decode { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The upstream `traceId`, if the answer had one.
    pub fn trace_id(&self) -> Option<&str> {
        match self {
            FetchError::Auth { trace_id, .. } | FetchError::Api { trace_id, .. } => {
                trace_id.as_deref()
            }
            _ => None,
        }
    }

    /// Whether trying again may help: timeouts, broken connections, 5xx and 429.
    fn retryable(&self) -> bool {
        match self {
            FetchError::Timeout(_) | FetchError::Connect(_) => true,
            FetchError::Http { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            FetchError::Http { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// Client of the image list endpoint.
pub struct ApiClient {
    http: reqwest::Client,
    config: ClientConfig,
    extra_headers: HeaderMap,
    limiter: Arc<Semaphore>,
    turns: Semaphore,
    telemetry: Telemetry,
}

/// Windows of page requests open at once, in units of `--api.concurrency`: two,
/// so that one datacenter's last pages overlap the next one's first and no
/// request slot stays idle.
const PAGING_WINDOWS: usize = 2;

impl ApiClient {
    /// Builds the client. Redirects are followed only within the same origin, so
    /// the token is never sent to another host.
    pub fn new(config: ClientConfig, telemetry: Telemetry) -> Result<Self, reqwest::Error> {
        crate::install_crypto_provider();
        let origin = config.url.origin();
        let redirect = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= 5 || attempt.url().origin() != origin {
                attempt.stop()
            } else {
                attempt.follow()
            }
        });
        let http = reqwest::Client::builder()
            .user_agent(concat!("finovy-image-exporter/", env!("CARGO_PKG_VERSION")))
            .redirect(redirect)
            .connect_timeout(config.timeout)
            .pool_max_idle_per_host(config.concurrency as usize)
            .build()?;
        let mut extra_headers = HeaderMap::new();
        for h in &config.headers {
            extra_headers.append(h.name.clone(), h.value.clone());
        }
        let limiter = Arc::new(Semaphore::new(config.concurrency as usize));
        let turns = Semaphore::new(PAGING_WINDOWS * config.concurrency as usize);
        Ok(ApiClient {
            http,
            config,
            extra_headers,
            limiter,
            turns,
            telemetry,
        })
    }

    /// Waits for a turn to read a list past its first page, `pages` pages long
    /// (see [`crate::refresh`]): a list takes a share of the windows as large as
    /// the requests it can have in flight, so short lists read side by side.
    pub async fn paging_turn(&self, pages: u32) -> tokio::sync::SemaphorePermit<'_> {
        let share = pages.clamp(1, self.config.concurrency);
        // Closed only on drop of the client, which outlives every call.
        self.turns
            .acquire_many(share)
            .await
            .expect("turns are never closed")
    }

    /// Requests in flight at most.
    pub fn concurrency(&self) -> u32 {
        self.config.concurrency
    }

    /// The configured `pageSize`.
    pub fn page_size(&self) -> u32 {
        self.config.page_size
    }

    /// Fetches one page of `datacenter` (all datacenters when `None`), retrying
    /// what may pass.
    pub async fn fetch_page(
        &self,
        token: &Token,
        datacenter: Option<&str>,
        page: u32,
    ) -> Result<Page, FetchError> {
        // The request slot is given back once the body is in, not after decoding
        // it, and the task yields before decoding, so that a request waiting for
        // the slot goes out first, while this page is decoded.
        let (status, body) = self.fetch_body(token, datacenter, page).await?;
        tokio::task::yield_now().await;
        decode(status, &body, self.config.size_unit)
    }

    /// One page's answer body, retrying what may pass.
    async fn fetch_body(
        &self,
        token: &Token,
        datacenter: Option<&str>,
        page: u32,
    ) -> Result<(StatusCode, BytesMut), FetchError> {
        let mut attempt = 0;
        loop {
            let result = {
                // Closed only on drop of the client, which outlives every call.
                let _permit = self
                    .limiter
                    .acquire()
                    .await
                    .expect("limiter is never closed");
                self.receive(token, datacenter, page).await
            };
            let err = match result {
                Ok(answer) => return Ok(answer),
                Err(err) => err,
            };
            if !err.retryable() || attempt >= self.config.max_retries {
                return Err(err);
            }
            let wait = err.retry_after().unwrap_or_else(|| backoff(attempt));
            if wait > MAX_RETRY_WAIT {
                return Err(err);
            }
            tracing::debug!(
                datacenter_key = datacenter.unwrap_or(""),
                page,
                attempt = attempt + 1,
                wait = ?wait,
                error = %err,
                "retrying upstream request"
            );
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }

    /// Sends one request and reads its body, counting it in the telemetry.
    async fn receive(
        &self,
        token: &Token,
        datacenter: Option<&str>,
        page: u32,
    ) -> Result<(StatusCode, BytesMut), FetchError> {
        let started = Instant::now();
        // The status, once one came back: a body that breaks or grows too large
        // afterwards still counts under the status the server sent.
        let mut answered = None;
        let result = self.send(token, datacenter, page, &mut answered).await;
        self.telemetry
            .api_duration
            .observe(started.elapsed().as_secs_f64());
        let code = answered.as_ref().map_or("error", StatusCode::as_str);
        self.telemetry.api_requests.with_label_values(&[code]).inc();
        result
    }

    /// Sends the request and reads the body, bounded in size.
    async fn send(
        &self,
        token: &Token,
        datacenter: Option<&str>,
        page: u32,
        answered: &mut Option<StatusCode>,
    ) -> Result<(StatusCode, BytesMut), FetchError> {
        let mut token_value = HeaderValue::from_str(token.expose())
            .map_err(|_| crate::secret::TokenError::Invalid)?;
        token_value.set_sensitive(true);
        let mut url = self.config.url.clone();
        {
            // The configured URL has no query of its own (checked at start-up).
            let mut query = url.query_pairs_mut();
            query
                .append_pair("page", &page.to_string())
                .append_pair("pageSize", &self.config.page_size.to_string());
            if let Some(dc) = datacenter {
                query.append_pair("datacenterKey", dc);
            }
            let f = &self.config.filters;
            if let Some(t) = &f.image_type {
                query.append_pair("imageType", t);
            }
            if let Some(n) = &f.image_name {
                query.append_pair("imageName", n);
            }
            if let Some(code) = f.status.and_then(Status::code) {
                query.append_pair("status", &code.to_string());
            }
            for (k, v) in &self.config.params {
                query.append_pair(k, v);
            }
        }
        let mut request = self.http.get(url);
        if !self.extra_headers.is_empty() {
            request = request.headers(self.extra_headers.clone());
        }
        let request = request
            .header(TOKEN_HEADER, token_value)
            .timeout(self.config.timeout);
        let mut response = request.send().await.map_err(|e| self.transport_error(e))?;
        let status = response.status();
        *answered = Some(status);
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(FetchError::Auth {
                status: status.as_u16(),
                api_code: None,
                trace_id: None,
            });
        }
        if !status.is_success() {
            return Err(FetchError::Http {
                status: status.as_u16(),
                retry_after: retry_after(response.headers()),
            });
        }
        let limit = self.config.max_body_bytes();
        if response
            .content_length()
            .is_some_and(|len| len > limit as u64)
        {
            return Err(FetchError::TooLarge { limit });
        }
        // Sized once from Content-Length (already checked against the limit).
        let expected = response.content_length().unwrap_or(16 * 1024) as usize;
        let mut body = BytesMut::with_capacity(expected);
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| self.transport_error(e))?
        {
            if body.len() + chunk.len() > limit {
                return Err(FetchError::TooLarge { limit });
            }
            body.extend_from_slice(&chunk);
        }
        Ok((status, body))
    }

    fn transport_error(&self, err: reqwest::Error) -> FetchError {
        if err.is_timeout() {
            return FetchError::Timeout(self.config.timeout);
        }
        // The URL carries the extra parameters, which may be secrets: leave it out.
        let err = err.without_url();
        let mut msg = err.to_string();
        let mut source = std::error::Error::source(&err);
        while let Some(s) = source {
            msg.push_str(": ");
            msg.push_str(&s.to_string());
            source = s.source();
        }
        FetchError::Connect(msg)
    }
}

/// Decodes an answer body into a page, or into the error it reports.
fn decode(status: StatusCode, body: &[u8], unit: SizeUnit) -> Result<Page, FetchError> {
    wire::decode_page(body, unit).map_err(|err| match err {
        WireError::Api {
            code: 401,
            trace_id,
            ..
        } => FetchError::Auth {
            status: status.as_u16(),
            api_code: Some(401),
            trace_id,
        },
        WireError::Api {
            code,
            msg,
            trace_id,
        } => FetchError::Api {
            status: status.as_u16(),
            code,
            msg,
            trace_id,
        },
        WireError::Decode(msg) => FetchError::Decode {
            status: status.as_u16(),
            msg,
        },
    })
}

fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
}

/// Exponential backoff with jitter: half to all of `base * 2^attempt`, capped.
fn backoff(attempt: u32) -> Duration {
    let full = BACKOFF_BASE
        .saturating_mul(1 << attempt.min(16))
        .min(BACKOFF_CAP);
    full.mul_f64(0.5 + crate::random_fraction() / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        for attempt in 0..20 {
            let d = backoff(attempt);
            let full = BACKOFF_BASE
                .saturating_mul(1 << attempt.min(16))
                .min(BACKOFF_CAP);
            assert!(d >= full / 2 && d <= full, "{attempt}: {d:?}");
        }
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_static("3"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
        let later = std::time::SystemTime::now() + Duration::from_secs(30);
        h.insert(
            RETRY_AFTER,
            HeaderValue::from_str(&httpdate::fmt_http_date(later)).unwrap(),
        );
        let d = retry_after(&h).unwrap();
        assert!(
            d > Duration::from_secs(25) && d <= Duration::from_secs(30),
            "{d:?}"
        );
        h.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn reasons_follow_the_error_type() {
        let cases = [
            (
                FetchError::Http {
                    status: 503,
                    retry_after: None,
                },
                Reason::Http,
                true,
            ),
            (
                FetchError::Http {
                    status: 429,
                    retry_after: None,
                },
                Reason::Http,
                true,
            ),
            (
                FetchError::Http {
                    status: 404,
                    retry_after: None,
                },
                Reason::Http,
                false,
            ),
            (
                FetchError::Timeout(Duration::from_secs(1)),
                Reason::Timeout,
                true,
            ),
            (FetchError::Connect("reset".into()), Reason::Connect, true),
            (
                FetchError::Auth {
                    status: 200,
                    api_code: Some(401),
                    trace_id: None,
                },
                Reason::Auth,
                false,
            ),
            (FetchError::TooLarge { limit: 1 }, Reason::Decode, false),
        ];
        for (err, reason, retry) in cases {
            assert_eq!(err.reason(), reason, "{err}");
            assert_eq!(err.retryable(), retry, "{err}");
        }
    }
}
