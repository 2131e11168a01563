//! Why an upstream request, or a whole pass, failed.
//!
//! Each variant maps to exactly one [`Reason`], the `reason` label of
//! `finovy_refresh_failures_total`, so a metric never depends on the wording of an
//! error. No variant ever holds the token: upstream text (`msg`, `traceId`) is
//! redacted of it before it is stored here.

use std::time::Duration;

use crate::labels::Reason;

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
    /// The whole pass did not finish within `refresh.timeout`.
    #[error("the pass did not finish within {0:?} (refresh timeout)")]
    PassTimeout(Duration),
    /// The connection could not be made or broke.
    #[error("connection failed: {0}")]
    Connect(String),
    /// The upstream's certificate was refused or the TLS handshake failed.
    #[error("TLS failed: {0}")]
    Tls(String),
    /// An HTTP status other than 200.
    #[error("HTTP status {status}")]
    Http {
        /// The status.
        status: u16,
        /// `Retry-After`, when the server sent one.
        retry_after: Option<Duration>,
        /// The start of the answer ([`snippet`]), for the log line.
        body: Option<String>,
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
        /// The start of the answer ([`snippet`]), when it was not a page at all.
        body: Option<String>,
    },
    /// The answer was larger than the limit.
    #[error("answer larger than {limit} bytes, cut off")]
    TooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The account could not log in (credentials), so no token could be had.
    #[error(transparent)]
    Login(LoginError),
    /// A pass went past a bound on what one pass may read (docs/bounds.md):
    /// an upstream whose list never ends, or an inventory no account has.
    #[error("the pass read more than {limit} {what} (totalCounts {total}) and was stopped: the upstream's list does not end, or is larger than one pass may read")]
    Unbounded {
        /// What was counted: `images` or `pages`.
        what: &'static str,
        /// The bound.
        limit: u64,
        /// The largest `totalCounts` the pages claimed.
        total: u64,
    },
}

/// Why a login failed. Cloned to every pass that waited for it; it never holds
/// the secret or a token (the upstream's text is redacted of both).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("login as {uuid} failed{}: {message}", describe_answer(*status, *api_code))]
pub struct LoginError {
    /// The account ID that tried.
    pub uuid: String,
    /// The login URL.
    pub url: String,
    /// The HTTP status, if an answer came.
    pub status: Option<u16>,
    /// The envelope's `code`, if the answer had one.
    pub api_code: Option<i64>,
    /// The `reason` label of the passes it fails.
    pub reason: Reason,
    /// What went wrong (the upstream's `msg`, redacted, or the transport error).
    pub message: String,
    /// Upstream `traceId`.
    pub trace_id: Option<String>,
    /// Whether trying again may help (timeouts, 5xx, 429, codes 500, 503, 1005).
    pub transient: bool,
    /// Whether the upstream refused the credentials (HTTP 401/403, code 401/1001).
    pub refused: bool,
}

fn describe_answer(status: Option<u16>, code: Option<i64>) -> String {
    match (status, code) {
        (Some(s), Some(c)) => format!(" (HTTP {s}, code {c})"),
        (Some(s), None) => format!(" (HTTP {s})"),
        _ => String::new(),
    }
}

impl LoginError {
    /// What to do about it.
    pub fn hint(&self) -> Option<&'static str> {
        match (self.refused, self.api_code, self.status) {
            (true, Some(1001), _) => Some(
                "code 1001: the account has no permission for this API; ask the provider to grant it",
            ),
            (true, _, _) => Some(
                "the login was refused: check the uuid (--api.uuid, uuid:) and the secret (--api.secret-file / FINOVY_API_SECRET, secret_file: / secret_env:), and that they belong to this environment (sandbox or production)",
            ),
            (false, _, Some(404)) => Some(
                "no login endpoint at this URL: --api.url should be the base URL and --api.auth-path the login path (default /v1/auth/getToken)",
            ),
            (false, Some(1007), _) => Some(
                "code 1007: a required parameter is missing; the provider's common parameters go in --api.param",
            ),
            _ if self.status.is_none() && self.message.contains("dns error") => {
                Some("the host of --api.url does not resolve")
            }
            _ if self.status.is_none() && self.message.contains("refused") => {
                Some("nothing listens at the host and port of --api.url (or of the proxy)")
            }
            _ => None,
        }
    }
}

impl FetchError {
    /// The `reason` label of `finovy_refresh_failures_total`.
    pub fn reason(&self) -> Reason {
        match self {
            FetchError::Token(_) | FetchError::Auth { .. } => Reason::Auth,
            FetchError::Timeout(_) | FetchError::PassTimeout(_) => Reason::Timeout,
            FetchError::Connect(_) => Reason::Connect,
            FetchError::Tls(_) => Reason::Tls,
            FetchError::Http { .. } => Reason::Http,
            FetchError::Api { .. } => Reason::Api,
            FetchError::Decode { .. } | FetchError::TooLarge { .. } => Reason::Decode,
            FetchError::Login(e) => e.reason,
            FetchError::Unbounded { .. } => Reason::Limit,
        }
    }

    /// The HTTP status that came back, if one did.
    pub fn http_status(&self) -> Option<u16> {
        match self {
            FetchError::Auth { status, .. }
            | FetchError::Http { status, .. }
            | FetchError::Api { status, .. }
            | FetchError::Decode { status, .. } => Some(*status),
            FetchError::Login(e) => e.status,
            _ => None,
        }
    }

    /// The upstream `traceId`, if the answer had one.
    pub fn trace_id(&self) -> Option<&str> {
        match self {
            FetchError::Auth { trace_id, .. } | FetchError::Api { trace_id, .. } => {
                trace_id.as_deref()
            }
            FetchError::Login(e) => e.trace_id.as_deref(),
            _ => None,
        }
    }

    /// The start of the answer that was not a page, redacted of the token and
    /// with control characters escaped, when one came back.
    pub fn body(&self) -> Option<&str> {
        match self {
            FetchError::Http { body, .. } | FetchError::Decode { body, .. } => body.as_deref(),
            _ => None,
        }
    }

    /// What to do about the usual causes of this failure, given the URL asked,
    /// for the log line. `None` when nothing specific is known.
    pub fn hint(&self, url: &url::Url) -> Option<&'static str> {
        match self {
            FetchError::Token(_) => None,
            FetchError::Login(e) => e.hint(),
            FetchError::Auth {
                api_code: Some(1001),
                ..
            } => Some("code 1001: the account has no permission for this API; ask the provider to grant it"),
            FetchError::Auth { .. } => {
                Some("the token was refused: check --api.token-file / FINOVY_ACCESS_TOKEN (the token alone, without a `Bearer ` prefix), or log in with --api.uuid and a secret")
            }
            FetchError::Api { code: 1007, .. } => Some(
                "code 1007: a required parameter is missing; the provider's common parameters go in --api.param",
            ),
            FetchError::Http { status: 404, .. } if path_repeats(url.path()) => Some(
                "the path is given twice: --api.url should be the base URL; the path goes in --api.path",
            ),
            FetchError::Http { status: 404, .. } => Some(
                "no such endpoint: --api.url should be the base URL (scheme, host, port) and --api.path the endpoint's path",
            ),
            FetchError::Http { status: 429, .. } => {
                Some("the upstream throttles: lower --api.concurrency or raise --refresh.interval")
            }
            FetchError::Tls(msg) if msg.contains("UnknownIssuer") => Some(
                "UnknownIssuer: the upstream's certificate is signed by a CA this host does not trust; pass the CA with --api.tls.ca-file",
            ),
            FetchError::Tls(msg) if msg.contains("NotValidForName") => Some(
                "the upstream's certificate is not valid for the host in --api.url: use the name it was issued for",
            ),
            FetchError::Tls(msg) if msg.contains("Expired") => {
                Some("the upstream's certificate has expired")
            }
            FetchError::Tls(msg)
                if msg.contains("InvalidContentType")
                    || msg.contains("corrupt message")
                    || msg.contains("CorruptMessage") =>
            {
                Some(
                    "the server answered in plain HTTP: use http:// in --api.url, or the port of its TLS listener",
                )
            }
            FetchError::Connect(msg) if msg.contains("refused") => Some(
                "nothing listens at the host and port of --api.url (or of the proxy)",
            ),
            FetchError::Connect(msg) if msg.contains("dns error") => {
                Some("the host of --api.url does not resolve")
            }
            FetchError::Decode { body: Some(_), .. } => Some(
                "the answer is not a page of the image list: check --api.url and --api.path",
            ),
            FetchError::PassTimeout(_) => Some(
                "raise --refresh.timeout, or --api.page-size so that fewer pages are needed",
            ),
            FetchError::Unbounded { .. } => Some(
                "the upstream kept sending images never seen before: check that --api.url is the image list and that it pages as documented",
            ),
            _ => None,
        }
    }

    /// Whether trying again may help: timeouts, broken connections, 5xx and 429.
    pub(crate) fn retryable(&self) -> bool {
        match self {
            FetchError::Timeout(_) | FetchError::Connect(_) => true,
            FetchError::Http { status, .. } => *status == 429 || *status >= 500,
            // "Still being processed", "system error", "interface error": the
            // provider's transient codes, retried like an HTTP 5xx.
            FetchError::Api { code, .. } => matches!(code, 500 | 503 | 1005),
            _ => false,
        }
    }

    pub(crate) fn retry_after(&self) -> Option<Duration> {
        match self {
            FetchError::Http { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// Bytes of an answer kept for the log line.
pub const SNIPPET_BYTES: usize = 200;

/// The start of an answer body, fit for a log line: at most [`SNIPPET_BYTES`]
/// (on a character boundary, `…` when cut), the token replaced, control
/// characters escaped, so that it can neither leak the token nor forge a line.
/// `None` for an empty body.
pub fn snippet(body: &[u8], tokens: &[&crate::secret::Token]) -> Option<String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return None;
    }
    // Redact before cutting, over a window long enough to hold a token that
    // starts inside the kept part, in its longest spelling: a cut token would
    // not be recognised, by this or by any later redaction.
    let longest = tokens
        .iter()
        .map(|t| t.longest_spelling())
        .max()
        .unwrap_or(0);
    let window = body.len().min(SNIPPET_BYTES + longest);
    let exposed: Vec<&str> = tokens.iter().map(|t| t.expose()).collect();
    let text = crate::secret::redact_all(&String::from_utf8_lossy(&body[..window]), &exposed);
    let text = text.trim();
    let mut out = String::with_capacity(SNIPPET_BYTES + 8);
    let mut kept = 0;
    for c in text.chars() {
        if kept + c.len_utf8() > SNIPPET_BYTES {
            out.push('…');
            return Some(out);
        }
        kept += c.len_utf8();
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    if window < body.len() {
        out.push('…');
    }
    Some(out)
}

/// Whether a URL path ends in the same segments twice (`/a/b/a/b`): the API
/// path given in `--api.url` as well as in `--api.path`.
fn path_repeats(path: &str) -> bool {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let n = segments.len();
    (1..=n / 2).any(|k| segments[n - k..] == segments[n - 2 * k..n - k])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Token;

    #[test]
    fn every_token_is_hidden_from_a_snippet_even_where_it_is_cut() {
        // The login's answer may echo an earlier token: hidden like the secret,
        // before the cut (redacting the cut text missed a token cut in two).
        let secret = Token::new("the-secret").unwrap();
        let earlier = Token::new("tok-000015-SECRETPART-abcdefghijklmnopqrstuvwxyz01").unwrap();
        let body = format!("{}{}", "x".repeat(150), earlier.expose());
        let cut = snippet(body.as_bytes(), &[&secret, &earlier]).unwrap();
        assert!(
            !cut.contains("SECRETPART") && !cut.contains("tok-0000"),
            "{cut}"
        );
        assert!(cut.contains("**hidden**"), "{cut}");
    }

    #[test]
    fn a_snippet_is_short_redacted_and_escaped() {
        let token = Token::new("s3cr3t-token").unwrap();
        let body = format!("<html>\n\u{1b}[31m{}</html>", "x".repeat(195));
        let cut = snippet(
            format!("{}s3cr3t-token", "y".repeat(195)).as_bytes(),
            &[&token],
        )
        .unwrap();
        assert!(!cut.contains("s3cr3t"), "{cut}");
        let s = snippet(body.as_bytes(), &[&token]).unwrap();
        assert!(s.starts_with("<html>\\n\\u{1b}[31m"), "{s}");
        assert!(s.ends_with('…'), "{s}");
        assert!(!s.chars().any(char::is_control));
        assert!(s.len() <= SNIPPET_BYTES + 40);
        let s = snippet(b"token s3cr3t-token refused", &[&token]).unwrap();
        assert_eq!(s, "token **hidden** refused");
        assert_eq!(snippet(b" \n", &[&token]), None);
    }

    #[test]
    fn hints_name_the_fix() {
        let doubled: url::Url =
            "http://h/v1/open/image/personal/getList/v1/open/image/personal/getList"
                .parse()
                .unwrap();
        let plain: url::Url = "http://h/v1/open/image/personal/getList".parse().unwrap();
        let not_found = FetchError::Http {
            status: 404,
            retry_after: None,
            body: None,
        };
        assert!(not_found.hint(&doubled).unwrap().contains("--api.path"));
        assert!(not_found.hint(&doubled).unwrap().contains("twice"));
        assert!(!not_found.hint(&plain).unwrap().contains("twice"));
        let auth = FetchError::Auth {
            status: 401,
            api_code: None,
            trace_id: None,
        };
        assert!(auth.hint(&plain).unwrap().contains("FINOVY_ACCESS_TOKEN"));
        let tls = FetchError::Tls("invalid peer certificate: UnknownIssuer".into());
        assert!(tls.hint(&plain).unwrap().contains("--api.tls.ca-file"));
        let plain_port =
            FetchError::Tls("received corrupt message of type InvalidContentType".into());
        assert!(plain_port.hint(&plain).unwrap().contains("plain HTTP"));
        assert!(path_repeats("/a/b/a/b") && path_repeats("/x/list/list"));
        assert!(!path_repeats("/v1/open/image/personal/getList") && !path_repeats("/"));
    }
}
