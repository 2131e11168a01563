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
            FetchError::Timeout(_) | FetchError::PassTimeout(_) => Reason::Timeout,
            FetchError::Connect(_) => Reason::Connect,
            FetchError::Tls(_) => Reason::Tls,
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
    pub(crate) fn retryable(&self) -> bool {
        match self {
            FetchError::Timeout(_) | FetchError::Connect(_) => true,
            FetchError::Http { status, .. } => *status == 429 || *status >= 500,
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
