//! The Finovy API client: one request per call, with retries and typed errors.
//!
//! [`ApiClient::fetch_page`] sends the token header, the extra headers and
//! parameters, the filters and the paging parameters; reads at most a bounded
//! number of bytes; decodes with [`wire`]; and retries timeouts, connection errors,
//! 5xx and 429 (after `Retry-After` when given) with exponential backoff and
//! jitter. Every failure is a [`FetchError`] whose [`crate::labels::Reason`]
//! becomes the `reason` label. How many requests are in flight is not the
//! client's business: paging asks the account's [`Budget`] before each call.

pub mod budget;
pub mod error;
pub mod login;
pub mod wire;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER};
use reqwest::StatusCode;
use url::Url;

use crate::aggregate::StatusSet;
use crate::labels::Status;
use crate::secret::Token;
pub use crate::secret::TOKEN_HEADER;
use crate::settings::{ExtraHeader, SizeUnit};
use crate::telemetry::{Telemetry, Upstream};
pub use budget::Budget;
pub use error::FetchError;
pub use login::{Auth, Credentials};
pub use wire::{Page, WireError};

/// Largest wait between two tries that the client accepts, `Retry-After` included;
/// a server asking for longer fails the refresh, and the next one tries again.
pub(crate) const MAX_RETRY_WAIT: Duration = Duration::from_secs(60);
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

/// What the client needs to know about one account's upstream.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientConfig {
    /// Full URL of the list endpoint, without a query.
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
    /// How the upstream's certificate is checked, and our own client certificate.
    pub tls: UpstreamTls,
    /// A proxy for every request; `None`: `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY`.
    pub proxy_url: Option<Url>,
}

/// TLS settings for the upstream (`--api.tls.*`, `api.tls` in the file), named as
/// Prometheus' own HTTP client configuration names them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpstreamTls {
    /// PEM file of the CA(s) that signed the upstream's certificate (a private CA),
    /// trusted in addition to the system's.
    pub ca_file: Option<std::path::PathBuf>,
    /// PEM client certificate, for an upstream that asks for one.
    pub cert_file: Option<std::path::PathBuf>,
    /// PEM key of the client certificate.
    pub key_file: Option<std::path::PathBuf>,
    /// Accept any certificate (logged as a warning at start): for tests only.
    pub insecure_skip_verify: bool,
}

/// Why a client cannot be built from its settings.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A TLS file cannot be read.
    #[error("{flag}: cannot read {}: {source}", path.display())]
    File {
        /// The flag (or file key) that names it.
        flag: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A setting reqwest refuses (a certificate that is not PEM, a bad proxy).
    #[error("{flag}: {source}")]
    Invalid {
        /// The flag (or file key) at fault.
        flag: &'static str,
        /// What reqwest said.
        source: reqwest::Error,
    },
    /// Only one of the client certificate and its key was given.
    #[error("--api.tls.cert-file and --api.tls.key-file go together: give both or neither")]
    HalfIdentity,
}

impl ClientConfig {
    /// Largest answer body accepted: room for `pageSize` items of 4 KiB each
    /// (a real item is about 250 bytes) plus 1 MiB. A larger answer is cut off.
    pub fn max_body_bytes(&self) -> usize {
        (1 << 20) + self.page_size as usize * 4096
    }
}

/// Client of one account's image list endpoint.
pub struct ApiClient {
    http: reqwest::Client,
    /// Where its requests get their token.
    session: login::Session,
    config: ClientConfig,
    extra_headers: HeaderMap,
    /// Where its requests are counted.
    upstream: Arc<Upstream>,
    /// Statuses whose items keep their names (`finovy_image_info`).
    named: StatusSet,
}

impl ApiClient {
    /// Builds the client for `account`. Its HTTP client (pool and root
    /// certificates) is shared with every account of the same HTTP settings
    /// (see `shared_http`). Redirects are followed only within the same origin,
    /// so the token is never sent to another host.
    pub fn new(
        account: &str,
        config: ClientConfig,
        auth: &Auth,
        telemetry: Telemetry,
    ) -> Result<Self, ClientError> {
        let http = shared_http(&config)?;
        let mut extra_headers = HeaderMap::new();
        for h in &config.headers {
            extra_headers.append(h.name.clone(), h.value.clone());
        }
        // The session counts its logins where the client counts its requests.
        let upstream = telemetry.upstream(account);
        let session = login::Session::new(
            account,
            auth,
            http.clone(),
            &config,
            extra_headers.clone(),
            Arc::clone(&upstream),
        );
        Ok(ApiClient {
            http,
            session,
            config,
            extra_headers,
            upstream,
            named: StatusSet::default(),
        })
    }

    /// The client, decoding the names of items whose status is in `named`
    /// (for `finovy_image_info`).
    pub fn naming(mut self, named: StatusSet) -> Self {
        self.named = named;
        self
    }

    /// The configured `pageSize`.
    pub fn page_size(&self) -> u32 {
        self.config.page_size
    }

    /// The list URL, for log lines: it never has a query, so neither the extra
    /// parameters nor the token can be in it.
    pub fn url(&self) -> &Url {
        &self.config.url
    }

    /// Fetches one page of `datacenter` (all datacenters when `None`), retrying
    /// what may pass. A token from a login that the upstream refuses is renewed
    /// once and the request repeated, so an expired or revoked token never fails
    /// a pass; a fresh token refused again does.
    pub async fn fetch_page(
        &self,
        budget: &Arc<Budget>,
        datacenter: Option<&str>,
        page: u32,
    ) -> Result<Page, FetchError> {
        let token = self.session.token().await?;
        let hidden = self.session.hidden();
        let fetch = |token| self.fetch_with(budget, token, &hidden, datacenter, page);
        let (token, result) = match fetch(&token).await {
            Err(FetchError::Auth {
                status,
                api_code: None | Some(401),
                ..
            }) if self.session.logs_in() && (status == 401 || status == 200) => {
                self.session.refused(&token).await;
                let fresh = self.session.token().await?;
                let result = fetch(&fresh).await;
                (fresh, result)
            }
            result => (token, result),
        };
        if result.is_ok() {
            self.session.accepted(&token);
        }
        result
    }

    /// One page with this token; what the answer says is redacted of it and of
    /// the `hidden` ones.
    async fn fetch_with(
        &self,
        budget: &Arc<Budget>,
        token: &Token,
        hidden: &[Token],
        datacenter: Option<&str>,
        page: u32,
    ) -> Result<Page, FetchError> {
        let hidden: Vec<&Token> = std::iter::once(token).chain(hidden).collect();
        let mut attempt = 0;
        loop {
            // One permit per attempt: a retry waiting out its backoff holds none.
            let answer = {
                let _permit = budget.acquire().await;
                self.receive(token, &hidden, datacenter, page).await
            };
            // Decoded before deciding on a retry: the provider's transient codes
            // (1005, 500, 503) come in an HTTP 200 answer.
            let result = answer.and_then(|(status, body)| {
                decode(status, &body, self.config.size_unit, self.named, &hidden)
            });
            let err = match result {
                Ok(page) => return Ok(page),
                Err(err) => err,
            };
            if matches!(err, FetchError::Http { status: 429, .. }) {
                budget.note_throttled();
            }
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
                wait_seconds = wait.as_secs_f64(),
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
        hidden: &[&Token],
        datacenter: Option<&str>,
        page: u32,
    ) -> Result<(StatusCode, BytesMut), FetchError> {
        let started = Instant::now();
        // The status, once one came back: a body that breaks or grows too large
        // afterwards still counts under the status the server sent.
        let mut answered = None;
        let result = self
            .send(token, hidden, datacenter, page, &mut answered)
            .await;
        let code = answered.as_ref().map_or("error", StatusCode::as_str);
        self.upstream.request(code, started.elapsed().as_secs_f64());
        result
    }

    /// Sends the request and reads the body, bounded in size.
    async fn send(
        &self,
        token: &Token,
        hidden: &[&Token],
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
            let retry_after = retry_after(response.headers());
            // A short, bounded look at the answer: what an error page says is
            // often the fix (a proxy's "no route", a framework's 404 page).
            let body = read_prefix(&mut response, error::SNIPPET_BYTES + 256).await;
            return Err(FetchError::Http {
                status: status.as_u16(),
                retry_after,
                body: error::snippet(&body, hidden),
            });
        }
        let limit = self.config.max_body_bytes();
        match read_bounded(&mut response, limit)
            .await
            .map_err(|e| self.transport_error(e))?
        {
            Some(body) => Ok((status, body)),
            None => Err(FetchError::TooLarge { limit }),
        }
    }

    fn transport_error(&self, err: reqwest::Error) -> FetchError {
        transport_error(err, self.config.timeout)
    }
}

/// What a transport error means: a timeout, a TLS failure or a connection
/// failure, with its whole chain of causes (and never the URL, whose query may
/// hold secrets).
fn transport_error(err: reqwest::Error, timeout: Duration) -> FetchError {
    if err.is_timeout() {
        return FetchError::Timeout(timeout);
    }
    // The URL carries the extra parameters, which may be secrets: leave it out.
    let err = err.without_url();
    let mut msg = err.to_string();
    let mut tls = false;
    let mut source = std::error::Error::source(&err);
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        tls |= is_tls_error(s);
        source = s.source();
    }
    if tls {
        FetchError::Tls(msg)
    } else {
        FetchError::Connect(msg)
    }
}

/// An answer's whole body, or `None` as soon as it is known to be larger than
/// `limit` bytes (from `Content-Length`, or while reading): an upstream cannot
/// make the exporter hold more than `limit` bytes of one answer.
async fn read_bounded(
    response: &mut reqwest::Response,
    limit: usize,
) -> Result<Option<BytesMut>, reqwest::Error> {
    if response
        .content_length()
        .is_some_and(|len| len > limit as u64)
    {
        return Ok(None);
    }
    // Sized once from Content-Length (already checked against the limit).
    let expected = response.content_length().unwrap_or(16 * 1024) as usize;
    let mut body = BytesMut::with_capacity(expected.min(limit));
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > limit {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

/// Up to `limit` bytes of an answer's body; whatever breaks while reading just
/// ends the prefix (it is only shown in a log line).
async fn read_prefix(response: &mut reqwest::Response, limit: usize) -> Vec<u8> {
    let mut prefix = Vec::new();
    while prefix.len() < limit {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = limit - prefix.len();
                prefix.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            _ => break,
        }
    }
    prefix
}

/// The HTTP settings that shape a `reqwest::Client`, TLS files by their content
/// (so that a rotated certificate gets a new client).
#[derive(PartialEq)]
struct HttpKey {
    timeout: Duration,
    tls: UpstreamTls,
    /// The CA file, the certificate and the key, as read.
    tls_files: [Option<Vec<u8>>; 3],
    proxy_url: Option<Url>,
}

/// Clients already built, by their settings; at most [`MAX_SHARED`].
static SHARED_HTTP: std::sync::Mutex<Vec<(HttpKey, reqwest::Client)>> =
    std::sync::Mutex::new(Vec::new());
const MAX_SHARED: usize = 64;

/// A `reqwest::Client` for these settings, shared by every account that has
/// them. Each client holds its own root certificate store and connection pool
/// (about 70 KiB): a thousand accounts with one client each would spend most of
/// the exporter's memory on identical copies. Idle connections are not limited
/// by count: at most as many stay open as were in flight at once (over all the
/// accounts that share the client), and reqwest closes them after 90 s idle, so
/// many accounts of one host do not reconnect at every pass.
fn shared_http(config: &ClientConfig) -> Result<reqwest::Client, ClientError> {
    let tls = &config.tls;
    // Read once: the same bytes tell a shared client apart and build a new one.
    let read = |flag: &'static str, path: &Option<std::path::PathBuf>| {
        path.as_ref()
            .map(|path| {
                crate::files::read_regular(path, MAX_PEM_BYTES).map_err(|err| ClientError::File {
                    flag,
                    path: path.to_path_buf(),
                    source: err.into(),
                })
            })
            .transpose()
    };
    let key = HttpKey {
        timeout: config.timeout,
        tls: tls.clone(),
        tls_files: [
            read("--api.tls.ca-file", &tls.ca_file)?,
            read("--api.tls.cert-file", &tls.cert_file)?,
            read("--api.tls.key-file", &tls.key_file)?,
        ],
        proxy_url: config.proxy_url.clone(),
    };
    let mut shared = SHARED_HTTP.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, client)) = shared.iter().find(|(k, _)| *k == key) {
        return Ok(client.clone());
    }
    let client = build_http(config, &key.tls_files)?;
    if shared.len() >= MAX_SHARED {
        shared.clear();
    }
    shared.push((key, client.clone()));
    Ok(client)
}

/// The largest PEM file read (a CA bundle of every public root is about 250 KB).
const MAX_PEM_BYTES: u64 = 4 * 1024 * 1024;

/// A client for `config`, its TLS files already read (`pems`: the CA file, the
/// certificate, the key, as [`HttpKey::tls_files`] holds them).
fn build_http(
    config: &ClientConfig,
    pems: &[Option<Vec<u8>>; 3],
) -> Result<reqwest::Client, ClientError> {
    crate::install_crypto_provider();
    // The first URL of the chain is the account's own: the policy needs no
    // account, so that accounts with the same settings can share the client.
    let redirect = reqwest::redirect::Policy::custom(|attempt| {
        let origin = attempt.previous().first().map(Url::origin);
        if attempt.previous().len() >= 5 || origin != Some(attempt.url().origin()) {
            attempt.stop()
        } else {
            attempt.follow()
        }
    });
    let mut builder = reqwest::Client::builder()
        .user_agent(concat!("finovy-image-exporter/", env!("CARGO_PKG_VERSION")))
        .redirect(redirect)
        .connect_timeout(config.timeout);
    builder = with_tls(builder, &config.tls, pems)?;
    if let Some(proxy) = &config.proxy_url {
        let proxy = reqwest::Proxy::all(proxy.as_str()).map_err(|source| ClientError::Invalid {
            flag: "--api.proxy-url",
            source: source.without_url(),
        })?;
        builder = builder.proxy(proxy);
    }
    builder.build().map_err(|source| ClientError::Invalid {
        flag: "--api.url",
        source: source.without_url(),
    })
}

/// Applies the upstream TLS settings to a client builder, with the contents of
/// its files (`pems`, in [`HttpKey::tls_files`] order).
fn with_tls(
    mut builder: reqwest::ClientBuilder,
    tls: &UpstreamTls,
    pems: &[Option<Vec<u8>>; 3],
) -> Result<reqwest::ClientBuilder, ClientError> {
    let [ca, cert, key] = pems;
    if let Some(pem) = ca {
        let certs =
            reqwest::Certificate::from_pem_bundle(pem).map_err(|source| ClientError::Invalid {
                flag: "--api.tls.ca-file",
                source,
            })?;
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    match (cert, key) {
        (Some(cert), Some(key)) => {
            let mut pem = cert.clone();
            pem.push(b'\n');
            pem.extend(key);
            let identity =
                reqwest::Identity::from_pem(&pem).map_err(|source| ClientError::Invalid {
                    flag: "--api.tls.cert-file",
                    source,
                })?;
            builder = builder.identity(identity);
        }
        (None, None) => {}
        _ => return Err(ClientError::HalfIdentity),
    }
    if tls.insecure_skip_verify {
        builder = builder.danger_accept_invalid_certs(true);
    }
    Ok(builder)
}

/// Whether an error in a transport error's chain comes from rustls: a refused
/// certificate or a failed handshake, which trying again cannot fix.
///
/// rustls errors reach us wrapped in an `io::Error`, whose `source()` skips the
/// error it wraps, so the wrapped one is looked at directly.
fn is_tls_error(err: &(dyn std::error::Error + 'static)) -> bool {
    if err.downcast_ref::<rustls::Error>().is_some() {
        return true;
    }
    // An io::Error may wrap another io::Error, or an error whose own chain
    // leads to rustls: follow both ways down.
    if let Some(inner) = err
        .downcast_ref::<std::io::Error>()
        .and_then(|io| io.get_ref())
    {
        if is_tls_error(inner) {
            return true;
        }
    }
    err.source().is_some_and(is_tls_error)
}

/// Error answers up to this size are read again with every hidden token
/// replaced. Redaction holds several copies of its text while it looks for
/// escaped spellings, so a larger answer (a page the decoder could not read)
/// has only its kept texts redacted.
const REREAD_REDACTED_BYTES: usize = 64 * 1024;

/// Decodes an answer body into a page, or into the error it reports.
///
/// An error's text (the envelope's `msg` and `traceId`, a decoder message that
/// quotes a value) comes from the body and is cut short for the logs, then
/// redacted of the `hidden` tokens; redaction finds a token cut after at least
/// 8 bytes. So that no cut can leave a shorter part of one behind, an answer of
/// a usual size is first read again with every hidden token replaced.
fn decode(
    status: StatusCode,
    body: &[u8],
    unit: SizeUnit,
    named: StatusSet,
    hidden: &[&Token],
) -> Result<Page, FetchError> {
    let err = match wire::decode_page_naming(body, unit, named) {
        Ok(page) => return Ok(page),
        Err(err) => err,
    };
    let exposed: Vec<&str> = hidden.iter().map(|t| t.expose()).collect();
    let redact = |text: &str| crate::secret::redact_all(text, &exposed);
    let err = match body.len() <= REREAD_REDACTED_BYTES {
        false => err,
        true => {
            let text = String::from_utf8_lossy(body);
            let redacted = redact(&text);
            match redacted == text {
                true => err,
                false => match wire::decode_page_naming(redacted.as_bytes(), unit, named) {
                    Err(err) => err,
                    // Only the token's own text made the answer unreadable.
                    Ok(_) => WireError::Decode(
                        "the answer cannot be read where it holds the token".into(),
                    ),
                },
            }
        }
    };
    Err(match err {
        // 401: not authenticated; 1001: authenticated, but not allowed this API.
        WireError::Api {
            code: code @ (401 | 1001),
            trace_id,
            ..
        } => FetchError::Auth {
            status: status.as_u16(),
            api_code: Some(code),
            trace_id: trace_id.map(|t| redact(&t)),
        },
        WireError::Api {
            code,
            msg,
            trace_id,
        } => FetchError::Api {
            status: status.as_u16(),
            code,
            msg: redact(&msg),
            trace_id: trace_id.map(|t| redact(&t)),
        },
        WireError::Decode(msg) => FetchError::Decode {
            status: status.as_u16(),
            msg: redact(&msg),
            body: (!looks_like_json(body))
                .then(|| error::snippet(body, hidden))
                .flatten(),
        },
    })
}

/// Whether a body starts like a JSON value: a page that merely lacks a field
/// is described by the decoder; anything else (an HTML page, plain text) is
/// shown in part, since what it says is often the cause.
fn looks_like_json(body: &[u8]) -> bool {
    body.iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| matches!(b, b'{' | b'['))
}

pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
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
pub(crate) fn backoff(attempt: u32) -> Duration {
    let full = BACKOFF_BASE
        .saturating_mul(1 << attempt.min(16))
        .min(BACKOFF_CAP);
    full.mul_f64(0.5 + crate::random_fraction() / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::labels::Reason;

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

    /// A hostile upstream echoes the token a request carried, an earlier one
    /// and the secret, each long, where the kept text is cut: in `msg` across
    /// its 200th character, in `traceId`, and as a value a decoder message
    /// quotes. No part of any of them is kept.
    #[test]
    fn no_part_of_a_hidden_token_is_kept_from_an_answer_wherever_it_is_cut() {
        let long = |tag: &str| Token::new(&format!("{tag}-{}", "k7Qz".repeat(30))).unwrap();
        let (carried, earlier, secret) = (long("now"), long("old"), long("sec"));
        let hidden = [&carried, &secret, &earlier];
        let answers = [
            format!(
                r#"{{"code":1003,"msg":"{}{} and {}","traceId":"{}"}}"#,
                "x".repeat(190),
                carried.expose(),
                secret.expose(),
                earlier.expose()
            ),
            format!(
                r#"{{"code":401,"msg":"{}","traceId":"{}{}"}}"#,
                carried.expose(),
                "t".repeat(100),
                earlier.expose()
            ),
            format!(
                r#"{{"code":0,"data":{{"data":[],"totalCounts":"{}"}}}}"#,
                secret.expose()
            ),
            format!(
                r#"{{"code":0,"data":{{"data":"{}","totalCounts":1}}}}"#,
                earlier.expose()
            ),
            // Too large to be read again: its kept texts are redacted as cut.
            format!(
                r#"{{"code":0,"data":{{"data":[],"totalCounts":"{}"}},"pad":"{}"}}"#,
                carried.expose(),
                "p".repeat(REREAD_REDACTED_BYTES)
            ),
        ];
        for answer in &answers {
            let err = decode(
                StatusCode::OK,
                answer.as_bytes(),
                SizeUnit::Gib,
                StatusSet::default(),
                &hidden,
            )
            .unwrap_err();
            let kept = format!("{err} {err:?} {:?}", err.trace_id());
            for token in hidden {
                // Any 8 characters in a row of the token, its tag included.
                let text = token.expose();
                for start in 0..=text.len() - 8 {
                    assert!(
                        !kept.contains(&text[start..start + 8]),
                        "part of a token is kept from {answer}: {kept}"
                    );
                }
            }
        }
    }

    #[test]
    fn reasons_follow_the_error_type() {
        let cases = [
            (
                FetchError::Http {
                    status: 503,
                    retry_after: None,
                    body: None,
                },
                Reason::Http,
                true,
            ),
            (
                FetchError::Http {
                    status: 429,
                    retry_after: None,
                    body: None,
                },
                Reason::Http,
                true,
            ),
            (
                FetchError::Http {
                    status: 404,
                    retry_after: None,
                    body: None,
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
            (FetchError::Tls("UnknownIssuer".into()), Reason::Tls, false),
        ];
        for (err, reason, retry) in cases {
            assert_eq!(err.reason(), reason, "{err}");
            assert_eq!(err.retryable(), retry, "{err}");
        }
    }
}
