//! The `--web.config.file`: TLS, basic authentication, response headers and a
//! rate limit, in the exporter-toolkit format, re-read when it changes.
//!
//! [`WebConfig`] is one validated configuration: everything the file names (the
//! certificate, key and CA files, the bcrypt hashes, the headers) is read and
//! checked up front, so a mistake stops the exporter at start instead of at the
//! first scrape. [`WebConfigWatcher`] rebuilds it when any of those files
//! changes and publishes it through the [`WebConfigHandle`] the server reads:
//! new TLS handshakes use the new certificate, new requests the new users,
//! headers and limit. A change that does not load is logged, sets
//! `finovy_web_config_last_reload_successful` to 0, and the last good
//! configuration stays in force.
//!
//! The rule throughout is exporter-toolkit's behaviour, case by case (its own
//! tests are reproduced in `tests/toolkit.rs`); `docs/security.md` lists what
//! differs and why. The parts:
//!
//! - `schema`: the YAML as Go's strict decoding reads it, and reading the files it names;
//! - `tls`: versions, suites, curves, client certificates and `client_allowed_sans`;
//! - `auth`: `basic_auth_users` and the cache of verified credentials;
//! - `rate_limit`: the token bucket behind `rate_limit`;
//! - `reload`: watching the files and publishing the configuration in force.

mod auth;
mod rate_limit;
mod reload;
mod schema;
mod tls;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hyper::header::{HeaderName, HeaderValue};
use rustls::ServerConfig;

pub use auth::BasicAuth;
pub use rate_limit::RateLimit;
pub use reload::{WebConfigHandle, WebConfigWatcher, POLL_INTERVAL};

use schema::{read_sources, Sources, UniqueMap};
use tls::TlsServing;

/// Realm announced in `WWW-Authenticate`.
pub const REALM: &str = "finovy-image-exporter";

/// Headers the file may add to responses, with the values allowed when the set
/// is closed (the same list as exporter-toolkit, to stay consistent with every
/// other Prometheus exporter).
const ALLOWED_HEADERS: &[(&str, &[&str])] = &[
    ("Strict-Transport-Security", &[]),
    ("X-Content-Type-Options", &["nosniff"]),
    ("X-Frame-Options", &["deny", "sameorigin"]),
    ("X-XSS-Protection", &[]),
    ("Content-Security-Policy", &[]),
];

/// Why the web configuration cannot be used. One line, never a password.
#[derive(Debug, thiserror::Error)]
pub enum WebConfigError {
    /// The file itself cannot be read.
    #[error("cannot read it: {0}")]
    Read(std::io::Error),
    /// A file it names cannot be read.
    #[error("{field}: cannot read {}: {source}", path.display())]
    ReadReferenced {
        /// The setting that names the file, e.g. `tls_server_config.cert_file`.
        field: &'static str,
        /// The file, resolved against the directory of the web config file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Not YAML, or not the expected shape (unknown or duplicate keys included).
    #[error("invalid YAML: {0}")]
    Yaml(String),
    /// A value that cannot be used.
    #[error("{field}: {reason}")]
    Invalid {
        /// The setting, e.g. `tls_server_config.min_version`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// rustls refused the resulting TLS configuration.
    #[error("tls_server_config: {0}")]
    Tls(#[from] rustls::Error),
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> WebConfigError {
    WebConfigError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// A validated web configuration, ready to serve with.
pub struct WebConfig {
    tls: Option<TlsServing>,
    auth: Option<BasicAuth>,
    headers: Vec<(HeaderName, HeaderValue)>,
    rate_limit: Option<Arc<RateLimit>>,
    warnings: Vec<String>,
}

impl fmt::Debug for WebConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebConfig")
            .field("tls", &self.is_tls())
            .field("basic_auth", &self.auth.is_some())
            .field("headers", &self.headers.len())
            .field("rate_limit", &self.rate_limit)
            .finish()
    }
}

impl WebConfig {
    /// Reads and validates the file and everything it names.
    pub fn load(path: &Path) -> Result<Self, WebConfigError> {
        read_sources(path)
            .1
            .and_then(|sources| build(sources, None))
    }

    /// Whether connections are TLS connections.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The TLS configuration for new connections. `None` with [`Self::is_tls`]
    /// means that no handshake can succeed (`min_version` above `max_version`):
    /// connections are closed at once.
    pub fn tls(&self) -> Option<&Arc<ServerConfig>> {
        match &self.tls {
            Some(TlsServing::Ready(config)) => Some(config),
            _ => None,
        }
    }

    /// The basic authentication users; `None` lets every request in.
    pub fn basic_auth(&self) -> Option<&BasicAuth> {
        self.auth.as_ref()
    }

    /// Headers added to every response.
    pub fn headers(&self) -> &[(HeaderName, HeaderValue)] {
        &self.headers
    }

    /// The request rate limit; `None` lets every request through.
    pub fn rate_limit(&self) -> Option<&RateLimit> {
        self.rate_limit.as_deref()
    }

    /// What loaded but deserves a line in the log (a setting with no effect,
    /// one that refuses every request); never a secret.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }
}

/// Builds a configuration from what was read. `previous` is the one in force,
/// whose rate limiter is kept when `rate_limit` did not change.
fn build(sources: Sources, previous: Option<&WebConfig>) -> Result<WebConfig, WebConfigError> {
    let Sources {
        raw,
        cert,
        key,
        client_ca,
        dirs: _,
        ignored,
    } = sources;
    let mut warnings: Vec<String> = ignored
        .into_iter()
        .map(|field| format!("{field}: ignored, as {field}_file is set too"))
        .collect();
    let http2 = raw.http_server_config.as_ref().and_then(|h| h.http2);
    let tls = match raw.tls_server_config.as_ref() {
        Some(t) if t.is_enabled() => Some(tls::build_tls(
            t,
            http2,
            cert,
            key,
            client_ca,
            &mut warnings,
        )?),
        _ => None,
    };
    let auth = match raw.basic_auth_users {
        Some(UniqueMap(users)) if !users.is_empty() => Some(BasicAuth::new(users, &mut warnings)?),
        _ => None,
    };
    let headers = build_headers(
        raw.http_server_config
            .and_then(|h| h.headers)
            .unwrap_or_default()
            .0,
    )?;
    let rate_limit = raw.rate_limit.and_then(|settings| {
        let kept = previous
            .and_then(|p| p.rate_limit.as_ref())
            .filter(|limit| limit.is(&settings));
        match kept {
            Some(limit) => Some(Arc::clone(limit)),
            None => RateLimit::new(settings, &mut warnings).map(Arc::new),
        }
    });
    Ok(WebConfig {
        tls,
        auth,
        headers,
        rate_limit,
        warnings,
    })
}

fn build_headers(
    headers: BTreeMap<String, String>,
) -> Result<Vec<(HeaderName, HeaderValue)>, WebConfigError> {
    let mut out = Vec::with_capacity(headers.len());
    for (name, value) in headers {
        let field = format!("http_server_config.headers.{name}");
        let Some((_, allowed)) = ALLOWED_HEADERS.iter().find(|(n, _)| *n == name) else {
            let names: Vec<&str> = ALLOWED_HEADERS.iter().map(|(n, _)| *n).collect();
            return Err(invalid(
                field,
                format!(
                    "HTTP header \"{name}\" can not be configured; allowed: {}",
                    names.join(", ")
                ),
            ));
        };
        // As in exporter-toolkit, a header with a closed set of values must
        // have one of them (an empty value included); the others are sent as
        // written, empty or not.
        if !allowed.is_empty() && !allowed.contains(&value.as_str()) {
            return Err(invalid(
                field,
                format!(
                    "invalid value for {name}: '{value}' is not one of: {}",
                    allowed.join(", ")
                ),
            ));
        }
        let value = HeaderValue::from_str(&value)
            .map_err(|_| invalid(&field, "the value has characters a header cannot carry"))?;
        out.push((
            HeaderName::from_bytes(name.as_bytes()).expect("allowed names are valid"),
            value,
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::digest;

    pub(super) fn parse(yaml: &str) -> Result<WebConfig, WebConfigError> {
        let mut fp = digest::Context::new(&digest::SHA256);
        build(
            schema::sources_from_text(yaml.as_bytes(), Path::new("."), &mut fp)?,
            None,
        )
    }

    fn err(yaml: &str) -> String {
        parse(yaml).expect_err(yaml).to_string()
    }

    // "secret" at cost 4, so the tests stay fast.
    pub(super) const HASH: &str = "$2y$04$ivERzn2bBpLpHOeh2TXvUOaxv/PkDJYYNt9O93Y16oqZXpKYerS2.";

    #[test]
    fn empty_file_is_an_empty_configuration() {
        for yaml in ["", "# nothing\n", "\n  \n"] {
            let c = parse(yaml).unwrap();
            assert!(c.tls.is_none() && c.auth.is_none() && c.headers.is_empty());
            assert!(c.rate_limit.is_none() && c.warnings.is_empty());
        }
    }

    #[test]
    fn unknown_and_duplicate_keys_are_refused() {
        assert!(err("tls_server_config:\n  cert_fil: x\n").contains("unknown field"));
        assert!(err("basic_auth_user:\n  a: b\n").contains("unknown field"));
        assert!(err("rate_limit:\n  every: 1s\n").contains("unknown field"));
        let dup = format!("basic_auth_users:\n  alice: {HASH}\n  alice: {HASH}\n");
        assert!(err(&dup).contains("duplicate"), "{}", err(&dup));
    }

    #[test]
    fn errors_are_one_line() {
        let e = err("basic_auth_users: [\n  - a\n");
        assert!(!e.contains('\n'), "{e}");
    }

    #[test]
    fn yaml_errors_do_not_repeat_the_values_they_reject() {
        for yaml in [
            "basic_auth_users: s3cr3t-value\n",
            "basic_auth_users:\n  alice:\n    s3cr3t-value: 1\n",
            "tls_server_config: \"s3cr3t-value\"\n",
            "rate_limit:\n  burst: s3cr3t-value\n",
        ] {
            let e = err(yaml);
            assert!(e.starts_with("invalid YAML: "), "{e}");
            assert!(!e.contains("s3cr3t"), "{e}");
        }
        // Field names are still named.
        assert!(err("tls_server_config:\n  cert_fil: x\n").contains("`cert_fil`"));
    }

    #[test]
    fn yaml_1_1_booleans_are_read_as_go_reads_them() {
        for (word, value) in [
            ("no", false),
            ("No", false),
            ("OFF", false),
            ("n", false),
            ("yes", true),
            ("On", true),
            ("true", true),
        ] {
            let yaml = format!("http_server_config:\n  http2: {word}\n");
            let raw: schema::RawConfig = serde_yaml_ng::from_str(&yaml).unwrap();
            assert_eq!(raw.http_server_config.unwrap().http2, Some(value), "{word}");
        }
        assert!(err("http_server_config:\n  http2: maybe\n").contains("not a boolean"));
    }

    #[test]
    fn rate_limit_reads_go_durations() {
        let c = parse("rate_limit:\n  interval: 1m30s\n  burst: 2\n").unwrap();
        assert!(c.rate_limit.is_some());
        assert!(parse("rate_limit:\n  interval: 0\n  burst: 0\n")
            .unwrap()
            .rate_limit
            .is_none());
        assert!(err("rate_limit:\n  interval: soon\n").contains("not a duration"));
    }

    #[test]
    fn an_unchanged_rate_limit_keeps_its_bucket_across_a_reload() {
        let yaml = "rate_limit:\n  interval: 1h\n  burst: 1\n";
        let first = parse(yaml).unwrap();
        assert!(first.rate_limit().unwrap().allow());
        let mut fp = digest::Context::new(&digest::SHA256);
        let sources = schema::sources_from_text(yaml.as_bytes(), Path::new("."), &mut fp).unwrap();
        let second = build(sources, Some(&first)).unwrap();
        assert!(
            !second.rate_limit().unwrap().allow(),
            "the bucket was refilled"
        );
    }

    #[test]
    fn headers_follow_exporter_toolkit() {
        let c = parse(
            "http_server_config:\n  headers:\n    X-Frame-Options: deny\n    X-Content-Type-Options: nosniff\n    Content-Security-Policy: \"default-src 'self'\"\n    X-XSS-Protection: 1\n    Strict-Transport-Security: \"\"\n",
        )
        .unwrap();
        assert_eq!(c.headers.len(), 5);
        assert!(c
            .headers
            .iter()
            .any(|(n, v)| n == "x-xss-protection" && v == "1"));
        for (yaml, expected) in [
            ("Content-Type: foo", "can not be configured"),
            ("Set-Cookie: a=b", "can not be configured"),
            ("X-Frame-Options: allow", "deny, sameorigin"),
            ("X-Frame-Options: \"\"", "invalid value for X-Frame-Options"),
            ("X-Content-Type-Options: sniff", "nosniff"),
            ("Strict-Transport-Security: \"a\\nb\"", "cannot carry"),
        ] {
            let e = err(&format!("http_server_config:\n  headers:\n    {yaml}\n"));
            assert!(e.contains(expected), "{yaml}: {e}");
        }
    }

    #[test]
    fn users_need_bcrypt_hashes() {
        assert!(err("basic_auth_users:\n  alice: plaintext\n").contains("not a bcrypt hash"));
        let c = parse(&format!("basic_auth_users:\n  alice: {HASH}\n")).unwrap();
        assert!(c.auth.is_some() && c.warnings.is_empty());
    }

    #[test]
    fn a_user_name_with_a_colon_loads_with_a_warning() {
        let c = parse(&format!("basic_auth_users:\n  \"a:b\": {HASH}\n")).unwrap();
        assert!(c.auth.is_some());
        assert!(
            c.warnings[0].contains("can never log in"),
            "{:?}",
            c.warnings
        );
    }

    #[test]
    fn tls_needs_cert_and_key() {
        assert!(err("tls_server_config:\n  key: k\n").contains("missing one of cert or cert_file"));
        assert!(err("tls_server_config:\n  cert: c\n").contains("missing one of key or key_file"));
        assert!(err("tls_server_config:\n  cert: c\n  key: k\n").contains("no CERTIFICATE block"));
        assert!(err(
            "tls_server_config:\n  cert_file: \"\"\n  key_file: \"\"\n  client_auth_type: x\n"
        )
        .contains("missing one of cert or cert_file"));
    }
}
