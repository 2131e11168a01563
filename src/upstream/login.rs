//! Logging in: the token an account with credentials gets from `getToken`, and
//! its renewal before it expires.
//!
//! The provider gives a user an account ID (`uuid`) and a secret, not a lasting
//! token: `POST {base}/v1/auth/getToken` with both answers a token valid for
//! `effectiveTime` milliseconds. A [`Session`] is what every request of one
//! account asks for its token, whichever way the account authenticates:
//!
//! - with a static token, the token file is read again at each request (so a
//!   rotated Kubernetes Secret takes effect at once), or the fixed token is used;
//! - with credentials, the session logs in when a token is first needed and
//!   again once 80 % of `effectiveTime` has passed. One login runs at a time per
//!   account: every target of the account waits on the same lock, and those that
//!   waited while a login ran take its outcome instead of logging in again, so a
//!   thousand targets make one login per renewal.
//!
//! A list request refused as unauthenticated with a token from a login makes
//! the session forget that token, once ([`Session::refused`]); the request is
//! repeated with the next one. A login that fails for good (refused, or not
//! answered after the retries) is remembered for [`HOLD_OFF`]: the passes that
//! ask meanwhile fail with the same error instead of trying again, unless the
//! secret changed (a fixed secret file is tried at once). While an older token
//! is still valid, a failed renewal keeps using it, with a warning.
//!
//! Neither the secret nor any issued token is ever printed: both are
//! [`Token`]s, and whatever the login endpoint answers is redacted of them
//! before it is kept.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use reqwest::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use reqwest::StatusCode;
use serde::Deserialize;
use url::Url;

use super::error::{snippet, FetchError, LoginError};
use super::wire::{shorten, MSG_CHARS, TRACE_ID_CHARS};
use crate::labels::Reason;
use crate::secret::{Token, TokenError, TokenSource};
use crate::telemetry::Upstream;

/// How long a failed login is not tried again (unless the secret changes): a
/// wrong secret must not become a login per target and pass.
pub const HOLD_OFF: Duration = Duration::from_secs(30);

/// The part of `effectiveTime` after which a token is renewed: early enough that
/// a renewal which needs its retries still ends before the token does.
const RENEW_AFTER: f64 = 0.8;

/// The soonest a token is renewed after its login, whatever `effectiveTime` says:
/// an upstream that claims a lifetime of a millisecond would otherwise get a login
/// before every request; with this floor it gets one a second at most per account.
/// A token that really expires sooner is refused, and the refusal renews it once
/// ([`Session::refused`]).
const MIN_RENEWAL: Duration = Duration::from_secs(1);

/// Issued tokens remembered for redaction, newest last: an upstream may echo an
/// older one than the one a request carried.
const REMEMBERED_TOKENS: usize = 4;

/// The longest token lifetime believed (the provider's is 30 minutes).
const LONGEST_LIFETIME: Duration = Duration::from_secs(366 * 24 * 3600);

/// The longest token a login may issue (tokens seen are a few dozen bytes).
const MAX_ISSUED_TOKEN_BYTES: usize = 4096;

/// The largest login answer read: the provider's is a few hundred bytes, and an
/// upstream must not make the exporter hold more.
const LOGIN_ANSWER_BYTES: usize = 64 * 1024;

/// An account's credentials: who it logs in as, with which secret, where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The account ID, shown in logs and on the landing page (it is not secret).
    pub uuid: String,
    /// Where the secret comes from: a file read at each login, or fixed.
    pub secret: TokenSource,
    /// Where the secret comes from, for people: `file PATH` or `$VAR`.
    pub secret_from: String,
    /// The full login URL (base URL and auth path).
    pub url: Url,
}

/// How an account proves who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    /// A lasting token.
    Token {
        /// Where it comes from.
        source: TokenSource,
        /// Where it comes from, for people: `file PATH` or `$VAR`.
        from: String,
    },
    /// Credentials, exchanged for tokens that expire.
    Login(Credentials),
}

impl Auth {
    /// What the start-up log and the landing page say about it, never a secret.
    pub fn describe(&self) -> String {
        match self {
            Auth::Token { from, .. } => format!("static token from {from}"),
            Auth::Login(c) => format!("login as {} (secret from {})", c.uuid, c.secret_from),
        }
    }
}

/// The answer envelope of a login. Only what is needed is read; `code` may come
/// as a number or a string.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LoginAnswer {
    #[serde(default)]
    code: Option<serde_json::Value>,
    #[serde(default)]
    msg: Option<String>,
    #[serde(default)]
    data: Option<LoginData>,
    #[serde(default)]
    trace_id: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LoginData {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    effective_time: Option<serde_json::Value>,
}

/// A token from a login and when it should be renewed.
#[derive(Clone)]
struct Issued {
    token: Token,
    /// `None`: no usable `effectiveTime`; kept until refused.
    renew_at: Option<Instant>,
    expires_at: Option<Instant>,
}

/// A login that failed for good, shared with the passes that ask within
/// [`HOLD_OFF`].
struct Failure {
    at: Instant,
    /// The secret that was tried, to try again at once when it changes.
    secret: Option<Token>,
    error: LoginError,
}

#[derive(Default)]
struct LoginState {
    issued: Option<Issued>,
    failure: Option<Failure>,
    /// The last issued tokens, for redaction.
    seen: Vec<Token>,
}

struct Login {
    credentials: Credentials,
    http: reqwest::Client,
    timeout: Duration,
    max_retries: u32,
    headers: HeaderMap,
    /// Held for the length of a login: one at a time per account.
    state: tokio::sync::Mutex<LoginState>,
    /// The last token a list request succeeded with. A refused token that
    /// never was is not renewed at once: its login is held off as if refused.
    accepted: std::sync::Mutex<Option<Token>>,
    /// The secret last sent and the last issued tokens: what a list answer is
    /// redacted of beside the token its request carried. Apart from `state`,
    /// which a login holds while it waits on the network.
    hidden: std::sync::Mutex<Vec<Token>>,
}

enum Kind {
    Static(TokenSource),
    Login(Box<Login>),
}

/// Where every request of one account gets its token.
pub struct Session {
    account: String,
    kind: Kind,
    /// The account's counts, shared with its client: a login that ends after
    /// a reload removed the account counts into them, not into a new entry.
    upstream: Arc<Upstream>,
}

impl Session {
    /// The session of `account`, which authenticates as `auth`; logins use
    /// `http` with the account's timeout, retries and extra `headers`, and are
    /// counted in `upstream`.
    pub(crate) fn new(
        account: &str,
        auth: &Auth,
        http: reqwest::Client,
        config: &super::ClientConfig,
        headers: HeaderMap,
        upstream: Arc<Upstream>,
    ) -> Self {
        let kind = match auth {
            Auth::Token { source, .. } => Kind::Static(source.clone()),
            Auth::Login(credentials) => Kind::Login(Box::new(Login {
                credentials: credentials.clone(),
                http,
                timeout: config.timeout,
                max_retries: config.max_retries,
                headers,
                state: tokio::sync::Mutex::new(LoginState::default()),
                accepted: std::sync::Mutex::new(None),
                hidden: std::sync::Mutex::default(),
            })),
        };
        Session {
            account: account.to_string(),
            kind,
            upstream,
        }
    }

    /// Whether tokens come from logins (and so can be renewed when refused).
    pub fn logs_in(&self) -> bool {
        matches!(self.kind, Kind::Login(_))
    }

    /// The token to send now: read from its source, or the current login's,
    /// logging in first when there is none or it is due for renewal.
    pub async fn token(&self) -> Result<Token, FetchError> {
        let login = match &self.kind {
            Kind::Static(source) => return source.current().map_err(FetchError::Token),
            Kind::Login(login) => login,
        };
        let asked = Instant::now();
        let mut state = login.state.lock().await;
        let now = Instant::now();
        let current = state.issued.clone();
        if let Some(issued) = &current {
            if issued.renew_at.is_none_or(|at| now < at) {
                return Ok(issued.token.clone());
            }
        }
        // Still valid: an older token that a failed renewal can fall back on.
        let fallback = current.filter(|i| i.expires_at.is_some_and(|at| now < at));
        let held = |failure: &Failure| match &fallback {
            Some(issued) => Ok(issued.token.clone()),
            None => Err(FetchError::Login(failure.error.clone())),
        };
        // A login that failed while this call waited for the lock answers it
        // too; the secret file is not even read.
        if let Some(failure) = state.failure.as_ref().filter(|f| f.at >= asked) {
            return held(failure);
        }
        // Read once, for the hold-off's comparison and for the login.
        let secret = read_secret(&login.credentials);
        if let Some(failure) = &state.failure {
            let same_secret = failure.secret.as_ref() == secret.as_ref().ok();
            if failure.at.elapsed() < HOLD_OFF && same_secret {
                return held(failure);
            }
        }
        let secret = match secret {
            Ok(secret) => secret,
            Err(error) => {
                // No login was tried: the upstream refused nothing, so not its hint.
                let mut error = login.error(None, None, Reason::Auth, error, None);
                error.refused = false;
                state.failure = Some(Failure {
                    at: Instant::now(),
                    secret: None,
                    error: error.clone(),
                });
                return Err(FetchError::Login(error));
            }
        };
        let result = self.log_in(login, &secret, &state.seen).await;
        if let Ok(issued) = &result {
            state.seen.push(issued.token.clone());
            if state.seen.len() > REMEMBERED_TOKENS {
                state.seen.remove(0);
            }
        }
        *login.hidden.lock().unwrap_or_else(|e| e.into_inner()) = std::iter::once(secret.clone())
            .chain(state.seen.iter().cloned())
            .collect();
        match result {
            Ok(issued) => {
                let expiry = issued
                    .expires_at
                    .map(|at| SystemTime::now() + at.saturating_duration_since(Instant::now()));
                self.upstream.set_token_expiry(expiry);
                // One line per login (a renewal every 24 minutes with the
                // provider's 30-minute tokens): when the token runs out is what
                // an operator looking at a login problem asks first.
                let valid_until = match expiry {
                    Some(at) => humantime::format_rfc3339_seconds(at).to_string(),
                    None => "unknown (the answer gave no effectiveTime)".into(),
                };
                tracing::info!(
                    account = %self.account,
                    uuid = %login.credentials.uuid,
                    token_valid_until = %valid_until,
                    "logged in"
                );
                state.failure = None;
                state.issued = Some(issued.clone());
                Ok(issued.token)
            }
            Err(error) => {
                tracing::warn!(
                    account = %self.account,
                    uuid = %login.credentials.uuid,
                    url = %login.credentials.url,
                    reason = error.reason.label(),
                    http_status = error.status,
                    code = error.api_code,
                    trace_id = error.trace_id.as_deref(),
                    error = %error,
                    hint = error.hint(),
                    retry_in_seconds = HOLD_OFF.as_secs(),
                    still_valid_token = fallback.is_some(),
                    "login failed"
                );
                state.failure = Some(Failure {
                    at: Instant::now(),
                    secret: Some(secret),
                    error: error.clone(),
                });
                match fallback {
                    Some(issued) => Ok(issued.token),
                    None => Err(FetchError::Login(error)),
                }
            }
        }
    }

    /// What an answer to a list request is redacted of beside the token the
    /// request carried: with logins, the secret and the tokens issued lately
    /// (an upstream may echo any of them); nothing more for a static token.
    pub fn hidden(&self) -> Vec<Token> {
        match &self.kind {
            Kind::Static(_) => Vec::new(),
            Kind::Login(login) => login
                .hidden
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }

    /// Notes that a list request succeeded with `token`.
    pub fn accepted(&self, token: &Token) {
        if let Kind::Login(login) = &self.kind {
            let mut last = login.accepted.lock().unwrap_or_else(|e| e.into_inner());
            if last.as_ref() != Some(token) {
                *last = Some(token.clone());
            }
        }
    }

    /// Forgets `token` after the upstream refused it, so that the next
    /// [`Session::token`] logs in again. A token already replaced (another
    /// request saw the refusal first) is left alone: one login per refused token.
    /// A token no request ever succeeded with is not worth another login: an
    /// upstream that refuses every list request would get one per pass, so the
    /// logins are held off for [`HOLD_OFF`] as after a refused login.
    pub async fn refused(&self, token: &Token) {
        let Kind::Login(login) = &self.kind else {
            return;
        };
        let mut state = login.state.lock().await;
        if !state.issued.as_ref().is_some_and(|i| &i.token == token) {
            return;
        }
        state.issued = None;
        self.upstream.set_token_expiry(None);
        let was_accepted = login
            .accepted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            == Some(token);
        if was_accepted {
            tracing::info!(account = %self.account, uuid = %login.credentials.uuid, "the upstream refused the token of the last login; logging in again");
            return;
        }
        // Not the credentials' fault (the login succeeded): not their hint.
        let mut error = login.error(
            None,
            None,
            Reason::Auth,
            "the list API refused the token its login had just issued",
            None,
        );
        error.refused = false;
        tracing::warn!(
            account = %self.account,
            uuid = %login.credentials.uuid,
            url = %login.credentials.url,
            retry_in_seconds = HOLD_OFF.as_secs(),
            "the upstream refused a fresh token before any request succeeded with it; not logging in again for a while"
        );
        state.failure = Some(Failure {
            at: Instant::now(),
            secret: read_secret(&login.credentials).ok(),
            error,
        });
    }

    /// One login, with the retries a list request gets.
    async fn log_in(
        &self,
        login: &Login,
        secret: &Token,
        seen: &[Token],
    ) -> Result<Issued, LoginError> {
        let mut attempt = 0;
        loop {
            let (code, result) = login.attempt(secret, seen).await;
            self.upstream.login(&code);
            let (error, retry_after) = match result {
                Ok(issued) => return Ok(issued),
                Err(failed) => failed,
            };
            if !error.transient || attempt >= login.max_retries {
                return Err(*error);
            }
            let wait = retry_after.unwrap_or_else(|| super::backoff(attempt));
            if wait > super::MAX_RETRY_WAIT {
                return Err(*error);
            }
            tracing::debug!(account = %self.account, attempt = attempt + 1, error = %error, "retrying login");
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }
}

/// A failed attempt and the wait the server asked for.
type Attempt = Result<Issued, (Box<LoginError>, Option<Duration>)>;

impl Login {
    /// One login request: the `code` label it counts under, and its outcome.
    async fn attempt(&self, secret: &Token, seen: &[Token]) -> (String, Attempt) {
        let body = serde_json::json!({"uuid": self.credentials.uuid, "secret": secret.expose()});
        let request = self
            .http
            .post(self.credentials.url.clone())
            .headers(self.headers.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .body(body.to_string())
            .timeout(self.timeout);
        // The secret and the tokens issued lately are hidden from whatever
        // of the answer is kept, in one pass (and before a snippet is cut).
        let hidden: Vec<&Token> = std::iter::once(secret).chain(seen).collect();
        let exposed: Vec<&str> = hidden.iter().map(|t| t.expose()).collect();
        let redact = |text: &str| crate::secret::redact_all(text, &exposed);
        let mut response = match request.send().await {
            Ok(response) => response,
            Err(err) => {
                let err = super::transport_error(err, self.timeout);
                let mut error = self.error(None, None, err.reason(), err.to_string(), None);
                error.transient = err.retryable();
                return ("error".into(), Err((Box::new(error), None)));
            }
        };
        let status = response.status();
        let retry_after = super::retry_after(response.headers());
        let (raw, too_large) = match super::read_bounded(&mut response, LOGIN_ANSWER_BYTES).await {
            Ok(Some(body)) => (body, false),
            Ok(None) => (Default::default(), true),
            Err(err) => {
                let err = super::transport_error(err, self.timeout);
                let mut error = self.error(
                    Some(status.as_u16()),
                    None,
                    err.reason(),
                    err.to_string(),
                    None,
                );
                error.transient = err.retryable();
                return (status.as_str().to_string(), Err((Box::new(error), None)));
            }
        };
        let answer: Option<LoginAnswer> = serde_json::from_slice(&raw).ok();
        let api_code = answer
            .as_ref()
            .and_then(|a| a.code.as_ref())
            .and_then(code_of);
        let label = match api_code {
            // The provider's documented codes; any other number an upstream
            // makes up would otherwise be a new series, kept for good.
            Some(code @ (0 | 401 | 500 | 503 | 1001 | 1005 | 1007)) if status.is_success() => {
                code.to_string()
            }
            Some(_) if status.is_success() => crate::labels::OTHER.to_string(),
            _ => status.as_str().to_string(),
        };
        // Kept as short as a list answer's (redacted first: a cut token would
        // not be recognised): the error is logged and copied into every
        // waiting target's last error.
        let msg = answer
            .as_ref()
            .and_then(|a| a.msg.as_deref())
            .map(|m| shorten(&redact(m), MSG_CHARS))
            .unwrap_or_default();
        let trace_id = answer
            .as_ref()
            .and_then(|a| a.trace_id.as_ref())
            .map(|t| match t {
                serde_json::Value::String(s) => redact(s),
                other => redact(&other.to_string()),
            })
            .map(|t| shorten(&t, TRACE_ID_CHARS));
        let fail = |reason: Reason, transient: bool, message: String| {
            let mut error = self.error(
                Some(status.as_u16()),
                api_code,
                reason,
                message,
                trace_id.clone(),
            );
            error.transient = transient;
            Err((Box::new(error), retry_after))
        };
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return (label, fail(Reason::Auth, false, non_empty(msg, "refused")));
        }
        if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
            return (
                label,
                fail(Reason::Http, true, format!("HTTP status {status}")),
            );
        }
        let too_large_text = || format!("answer larger than {LOGIN_ANSWER_BYTES} bytes");
        if !status.is_success() {
            let text = match too_large {
                true => too_large_text(),
                false => snippet(&raw, &hidden).unwrap_or_default(),
            };
            return (
                label,
                fail(Reason::Http, false, non_empty(text, "no answer body")),
            );
        }
        if too_large {
            return (label, fail(Reason::Decode, false, too_large_text()));
        }
        let Some(answer) = answer else {
            let text = snippet(&raw, &hidden).unwrap_or_default();
            return (
                label,
                fail(
                    Reason::Decode,
                    false,
                    format!("the answer is not the login envelope: {text}"),
                ),
            );
        };
        match api_code {
            Some(0) | None => {}
            Some(401 | 1001) => {
                return (label, fail(Reason::Auth, false, non_empty(msg, "refused")));
            }
            Some(1005 | 500 | 503) => {
                return (label, fail(Reason::Api, true, non_empty(msg, "try again")));
            }
            Some(_) => return (label, fail(Reason::Api, false, msg)),
        }
        let (token, effective) = answer
            .data
            .map_or((None, None), |d| (d.token, d.effective_time));
        // The token goes in the header of every list request: one of the
        // answer's whole 64 KiB would cost that much per page, and redacting
        // it (in every error answer) grows with its length.
        let token = match token.as_deref().map(Token::new) {
            None => Err("the answer has no `data.token`".to_string()),
            Some(Err(err)) => Err(format!("the answer's `data.token`: {err}")),
            Some(Ok(t)) if t.expose().len() > MAX_ISSUED_TOKEN_BYTES => Err(format!(
                "the answer's `data.token` is longer than {MAX_ISSUED_TOKEN_BYTES} bytes"
            )),
            Some(Ok(t)) => Ok(t),
        };
        let token = match token {
            Ok(token) => token,
            Err(message) => return (label, fail(Reason::Decode, false, message)),
        };
        let now = Instant::now();
        // A lifetime past a year is taken as a year: an upstream claiming
        // 1e300 ms would otherwise put the expiry beyond the year 9999, which
        // no timestamp format can write.
        let lifetime = effective
            .as_ref()
            .and_then(millis_of)
            .filter(|ms| *ms > 0)
            .map(|ms| Duration::from_millis(ms).min(LONGEST_LIFETIME));
        let issued = Issued {
            token,
            renew_at: lifetime.map(|l| now + l.mul_f64(RENEW_AFTER).max(MIN_RENEWAL)),
            expires_at: lifetime.map(|l| now + l),
        };
        (label, Ok(issued))
    }

    fn error(
        &self,
        status: Option<u16>,
        api_code: Option<i64>,
        reason: Reason,
        message: impl Into<String>,
        trace_id: Option<String>,
    ) -> LoginError {
        LoginError {
            uuid: self.credentials.uuid.clone(),
            url: self.credentials.url.to_string(),
            status,
            api_code,
            reason,
            message: message.into(),
            trace_id,
            transient: false,
            refused: reason == Reason::Auth,
        }
    }
}

/// The secret now: its file read again (a rotated secret takes effect at the
/// next login), or the fixed one. The error never holds the secret.
fn read_secret(credentials: &Credentials) -> Result<Token, String> {
    credentials
        .secret
        .current()
        .map_err(|err| secret_problem(err, &credentials.secret_from))
}

/// What is wrong with a secret read from `from` (`file PATH` or `$VAR`), in a
/// secret's words: the reader is the token's ([`TokenSource`]), whose errors
/// speak of a token. Never holds the secret.
pub fn secret_problem(err: TokenError, from: &str) -> String {
    match err {
        TokenError::Read { path, source } => {
            format!("cannot read the secret file {}: {source}", path.display())
        }
        TokenError::NotRegular { path, what } => format!(
            "the secret file {} is not a regular file of at most 64 KiB ({what})",
            path.display()
        ),
        TokenError::Empty => format!("the secret from {from} is empty"),
        TokenError::Invalid => format!("the secret from {from} contains control characters"),
        TokenError::Bearer => {
            format!("the secret from {from} starts with 'Bearer ': give the secret alone")
        }
    }
}

/// An envelope `code`, as a number or a numeric string.
fn code_of(value: &serde_json::Value) -> Option<i64> {
    match value {
        serde_json::Value::Number(n) => n.as_i64(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// `effectiveTime` in milliseconds, as a number or a numeric string.
fn millis_of(value: &serde_json::Value) -> Option<u64> {
    match value {
        serde_json::Value::Number(n) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| f.is_finite() && *f >= 0.0)
                .map(|f| f as u64)
        }),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn non_empty(text: String, otherwise: &str) -> String {
    if text.trim().is_empty() {
        otherwise.to_string()
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_lifetimes_read_as_numbers_or_strings() {
        assert_eq!(code_of(&serde_json::json!(401)), Some(401));
        assert_eq!(code_of(&serde_json::json!("1001")), Some(1001));
        assert_eq!(code_of(&serde_json::json!(null)), None);
        assert_eq!(millis_of(&serde_json::json!(1_800_000)), Some(1_800_000));
        assert_eq!(millis_of(&serde_json::json!("2000")), Some(2000));
        assert_eq!(millis_of(&serde_json::json!(-5)), None);
        assert_eq!(millis_of(&serde_json::json!("soon")), None);
    }

    #[test]
    fn a_secret_s_problems_speak_of_a_secret() {
        for err in [TokenError::Empty, TokenError::Invalid, TokenError::Bearer] {
            let text = secret_problem(err, "$FINOVY_API_SECRET");
            assert!(text.contains("secret from $FINOVY_API_SECRET"), "{text}");
            assert!(!text.contains("token"), "{text}");
        }
    }

    #[test]
    fn the_description_names_the_uuid_and_never_the_secret() {
        let auth = Auth::Login(Credentials {
            uuid: "A27550582".into(),
            secret: TokenSource::Fixed(Token::new("s3cr3t").unwrap()),
            secret_from: "$FINOVY_API_SECRET".into(),
            url: "https://client.xuandashi.com/v1/auth/getToken"
                .parse()
                .unwrap(),
        });
        let text = format!("{} {auth:?}", auth.describe());
        assert!(text.contains("login as A27550582"), "{text}");
        assert!(!text.contains("s3cr3t"), "{text}");
    }
}
