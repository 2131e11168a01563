//! The `--web.config.file`: TLS, basic authentication and response headers, in the
//! exporter-toolkit format, re-read when it changes.
//!
//! [`WebConfig::load`] reads and validates everything up front (the YAML, the
//! certificate, key and CA files it names, the bcrypt hashes, the headers), so a
//! mistake stops the exporter at start instead of at the first scrape.
//! [`WebConfigWatcher`] then polls the file and the files it names; when any of
//! them changes it builds a new [`WebConfig`] and, if that succeeds, publishes it
//! through the [`WebConfigHandle`] the server reads: new TLS handshakes use the
//! new certificate, new requests the new users and headers. A change that does
//! not load is logged and the last good configuration stays in force.
//!
//! Departures from exporter-toolkit, each refused with a clear error rather than
//! silently ignored: TLS 1.0 and 1.1 (rustls has neither), cipher suites and
//! curves rustls does not implement, `client_allowed_sans` and `rate_limit`.
//! Turning TLS on or off needs a restart (as with exporter-toolkit, which
//! decides it once at start). HTTP/2 is not served, so `http2` is accepted and
//! has no effect.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use hyper::header::{HeaderName, HeaderValue};
use ring::digest;
use rustls::crypto::{ring as ring_provider, CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
    SupportedCipherSuite, SupportedProtocolVersion,
};
use serde::Deserialize;
use subtle::{Choice, ConditionallySelectable, ConstantTimeEq};
use tokio::sync::{watch, Semaphore};

/// How often the file and the files it names are checked for changes.
pub const POLL_INTERVAL: Duration = Duration::from_secs(3);

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

/// Successful verifications remembered at most; past that the cache starts over.
const AUTH_CACHE_CAPACITY: usize = 1024;

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

// ---------------------------------------------------------------------------
// The file format.

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    tls_server_config: Option<RawTls>,
    #[serde(default)]
    http_server_config: Option<RawHttp>,
    #[serde(default)]
    basic_auth_users: Option<UniqueMap>,
    #[serde(default)]
    rate_limit: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: Option<String>,
    key: Option<String>,
    client_ca: Option<String>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    client_ca_file: Option<PathBuf>,
    client_auth_type: Option<String>,
    client_allowed_sans: Option<Vec<String>>,
    min_version: Option<String>,
    max_version: Option<String>,
    cipher_suites: Option<Vec<String>>,
    prefer_server_cipher_suites: Option<bool>,
    curve_preferences: Option<Vec<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    #[allow(dead_code)] // accepted for compatibility; HTTP/2 is not served
    http2: Option<bool>,
    headers: Option<UniqueMap>,
}

/// A string map that refuses a key given twice (as Go's strict YAML decoding
/// does): a user listed twice is a mistake, not a second password.
#[derive(Default)]
struct UniqueMap(BTreeMap<String, String>);

impl<'de> Deserialize<'de> for UniqueMap {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = UniqueMap;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of strings")
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<UniqueMap, E> {
                Ok(UniqueMap::default())
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut access: A,
            ) -> Result<UniqueMap, A::Error> {
                let mut map = BTreeMap::new();
                while let Some((key, value)) = access.next_entry::<String, String>()? {
                    if map.contains_key(&key) {
                        return Err(serde::de::Error::custom(format!("duplicate key '{key}'")));
                    }
                    map.insert(key, value);
                }
                Ok(UniqueMap(map))
            }
        }
        deserializer.deserialize_map(Visitor)
    }
}

fn non_empty<T: AsRef<std::ffi::OsStr>>(v: &Option<T>) -> Option<&T> {
    v.as_ref().filter(|s| !s.as_ref().is_empty())
}

impl RawTls {
    /// Whether TLS is asked for at all (as exporter-toolkit decides it).
    fn is_enabled(&self) -> bool {
        non_empty(&self.cert).is_some()
            || non_empty(&self.key).is_some()
            || non_empty(&self.client_ca).is_some()
            || non_empty(&self.cert_file).is_some()
            || non_empty(&self.key_file).is_some()
            || non_empty(&self.client_ca_file).is_some()
            || non_empty(&self.client_auth_type).is_some()
    }
}

// ---------------------------------------------------------------------------
// Reading: the file and every file it names, fingerprinted together.

/// Everything a configuration is built from, read in one go.
struct Sources {
    raw: RawConfig,
    cert: Option<Vec<u8>>,
    key: Option<Vec<u8>>,
    client_ca: Option<Vec<u8>>,
}

type Fingerprint = [u8; 32];

/// Reads the file and the files it names. The fingerprint covers every byte
/// read (and every read error), so any change to any of them changes it.
fn read_sources(path: &Path) -> (Fingerprint, Result<Sources, WebConfigError>) {
    let mut fp = digest::Context::new(&digest::SHA256);
    let result = read_sources_into(path, &mut fp);
    let mut out = [0u8; 32];
    out.copy_from_slice(fp.finish().as_ref());
    (out, result)
}

fn feed(fp: &mut digest::Context, part: &[u8]) {
    fp.update(&(part.len() as u64).to_be_bytes());
    fp.update(part);
}

fn read_sources_into(path: &Path, fp: &mut digest::Context) -> Result<Sources, WebConfigError> {
    let text = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(err) => {
            feed(fp, format!("error {:?}", err.kind()).as_bytes());
            return Err(WebConfigError::Read(err));
        }
    };
    feed(fp, &text);
    sources_from_text(&text, path.parent().unwrap_or(Path::new(".")), fp)
}

/// Parses the file's text and reads the files it names, relative to `dir`.
fn sources_from_text(
    text: &[u8],
    dir: &Path,
    fp: &mut digest::Context,
) -> Result<Sources, WebConfigError> {
    let raw = parse_yaml(text)?;
    let tls = raw.tls_server_config.as_ref();
    let mut read = |field: &'static str, file: Option<&PathBuf>, inline: Option<&String>| {
        read_referenced(fp, dir, field, file, inline)
    };
    let cert = read(
        "tls_server_config.cert_file",
        tls.and_then(|t| non_empty(&t.cert_file)),
        tls.and_then(|t| non_empty(&t.cert)),
    )?;
    let key = read(
        "tls_server_config.key_file",
        tls.and_then(|t| non_empty(&t.key_file)),
        tls.and_then(|t| non_empty(&t.key)),
    )?;
    let client_ca = read(
        "tls_server_config.client_ca_file",
        tls.and_then(|t| non_empty(&t.client_ca_file)),
        tls.and_then(|t| non_empty(&t.client_ca)),
    )?;
    Ok(Sources {
        raw,
        cert,
        key,
        client_ca,
    })
}

/// Reads one file named in the configuration (relative paths are taken from the
/// directory of the web config file, as exporter-toolkit does), or takes the
/// inline PEM given instead.
fn read_referenced(
    fp: &mut digest::Context,
    dir: &Path,
    field: &'static str,
    file: Option<&PathBuf>,
    inline: Option<&String>,
) -> Result<Option<Vec<u8>>, WebConfigError> {
    let inline_field = field.trim_end_matches("_file");
    match (file, inline) {
        (Some(_), Some(_)) => Err(invalid(
            field,
            format!("set either {field} or {inline_field}, not both"),
        )),
        (None, Some(pem)) => Ok(Some(pem.as_bytes().to_vec())),
        (None, None) => Ok(None),
        (Some(file), None) => {
            let path = dir.join(file);
            match std::fs::read(&path) {
                Ok(bytes) => {
                    feed(fp, &bytes);
                    Ok(Some(bytes))
                }
                Err(source) => {
                    feed(fp, format!("error {:?}", source.kind()).as_bytes());
                    Err(WebConfigError::ReadReferenced {
                        field,
                        path,
                        source,
                    })
                }
            }
        }
    }
}

fn parse_yaml(text: &[u8]) -> Result<RawConfig, WebConfigError> {
    let text = std::str::from_utf8(text)
        .map_err(|_| WebConfigError::Yaml("the file is not UTF-8".into()))?;
    // An empty file (or one with only comments) is an empty configuration.
    if text
        .lines()
        .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
    {
        return Ok(RawConfig::default());
    }
    serde_yaml_ng::from_str(text).map_err(|e| WebConfigError::Yaml(one_line(&e.to_string())))
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

// ---------------------------------------------------------------------------
// The loaded configuration.

/// A validated web configuration, ready to serve with.
pub struct WebConfig {
    tls: Option<Arc<ServerConfig>>,
    auth: Option<BasicAuth>,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl fmt::Debug for WebConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebConfig")
            .field("tls", &self.tls.is_some())
            .field(
                "basic_auth_users",
                &self.auth.as_ref().map_or(0, |a| a.users.len()),
            )
            .field("headers", &self.headers.len())
            .finish()
    }
}

impl WebConfig {
    /// Reads and validates the file and everything it names.
    pub fn load(path: &Path) -> Result<Self, WebConfigError> {
        read_sources(path).1.and_then(build)
    }

    /// The TLS configuration for new connections; `None` serves plain HTTP.
    pub fn tls(&self) -> Option<&Arc<ServerConfig>> {
        self.tls.as_ref()
    }

    /// The basic authentication users; `None` lets every request in.
    pub fn basic_auth(&self) -> Option<&BasicAuth> {
        self.auth.as_ref()
    }

    /// Headers added to every response.
    pub fn headers(&self) -> &[(HeaderName, HeaderValue)] {
        &self.headers
    }
}

fn build(sources: Sources) -> Result<WebConfig, WebConfigError> {
    let Sources {
        raw,
        cert,
        key,
        client_ca,
    } = sources;
    if raw.rate_limit.is_some() {
        return Err(invalid(
            "rate_limit",
            "not supported; --web.max-requests bounds the requests served at once",
        ));
    }
    let tls = match raw.tls_server_config.as_ref() {
        Some(t) if t.is_enabled() => Some(Arc::new(build_tls(t, cert, key, client_ca)?)),
        _ => None,
    };
    let auth = match raw.basic_auth_users {
        Some(UniqueMap(users)) if !users.is_empty() => Some(BasicAuth::new(users)?),
        _ => None,
    };
    let headers = build_headers(
        raw.http_server_config
            .and_then(|h| h.headers)
            .unwrap_or_default()
            .0,
    )?;
    Ok(WebConfig { tls, auth, headers })
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
                    "this header cannot be configured; allowed: {}",
                    names.join(", ")
                ),
            ));
        };
        // As in exporter-toolkit, a blank value leaves the header unset.
        if value.is_empty() {
            continue;
        }
        if !allowed.is_empty() && !allowed.contains(&value.as_str()) {
            return Err(invalid(
                field,
                format!("'{value}' is not one of: {}", allowed.join(", ")),
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

// ---------------------------------------------------------------------------
// TLS.

fn tls_version(
    field: &str,
    value: Option<&String>,
    default: &'static SupportedProtocolVersion,
) -> Result<&'static SupportedProtocolVersion, WebConfigError> {
    match value.map(String::as_str) {
        None | Some("") => Ok(default),
        Some("TLS12") => Ok(&rustls::version::TLS12),
        Some("TLS13") => Ok(&rustls::version::TLS13),
        Some(v @ ("TLS10" | "TLS11")) => Err(invalid(
            field,
            format!("{v} is not supported: rustls speaks only TLS12 and TLS13, older versions are insecure"),
        )),
        Some(v) => Err(invalid(
            field,
            format!("unknown TLS version '{v}'; use TLS12 or TLS13"),
        )),
    }
}

/// Cipher suites by their Go names (as exporter-toolkit spells them).
fn cipher_suite(name: &str) -> Option<SupportedCipherSuite> {
    use ring_provider::cipher_suite as cs;
    Some(match name {
        "TLS_AES_128_GCM_SHA256" => cs::TLS13_AES_128_GCM_SHA256,
        "TLS_AES_256_GCM_SHA384" => cs::TLS13_AES_256_GCM_SHA384,
        "TLS_CHACHA20_POLY1305_SHA256" => cs::TLS13_CHACHA20_POLY1305_SHA256,
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256" => cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384" => cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256"
        | "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305" => {
            cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
        }
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256" => cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384" => cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256" | "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305" => {
            cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
        }
        _ => return None,
    })
}

const SUPPORTED_SUITES: &str = "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, \
    TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256, \
    TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384, \
    TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 (TLS 1.2); TLS_AES_128_GCM_SHA256, \
    TLS_AES_256_GCM_SHA384, TLS_CHACHA20_POLY1305_SHA256 (TLS 1.3)";

/// The provider: ring, narrowed to the configured cipher suites and curves.
///
/// As in Go, `cipher_suites` governs TLS 1.2; the TLS 1.3 suites stay all
/// enabled unless TLS 1.3 names are listed too.
fn provider(raw: &RawTls) -> Result<CryptoProvider, WebConfigError> {
    let mut provider = ring_provider::default_provider();
    if let Some(names) = raw.cipher_suites.as_ref().filter(|n| !n.is_empty()) {
        let mut tls12 = Vec::new();
        let mut tls13 = Vec::new();
        for name in names {
            let suite = cipher_suite(name).ok_or_else(|| {
                invalid(
                    "tls_server_config.cipher_suites",
                    format!(
                        "'{name}' is unknown or not offered by rustls (no CBC, RC4, 3DES or static-RSA suites); supported: {SUPPORTED_SUITES}"
                    ),
                )
            })?;
            match suite {
                SupportedCipherSuite::Tls13(_) => tls13.push(suite),
                _ => tls12.push(suite),
            }
        }
        if tls13.is_empty() {
            tls13 = provider
                .cipher_suites
                .iter()
                .copied()
                .filter(|s| matches!(s, SupportedCipherSuite::Tls13(_)))
                .collect();
        }
        tls13.extend(tls12);
        provider.cipher_suites = tls13;
    }
    if let Some(names) = raw.curve_preferences.as_ref().filter(|n| !n.is_empty()) {
        use ring_provider::kx_group;
        let mut groups = Vec::with_capacity(names.len());
        for name in names {
            groups.push(match name.as_str() {
                "X25519" => kx_group::X25519,
                "CurveP256" => kx_group::SECP256R1,
                "CurveP384" => kx_group::SECP384R1,
                "CurveP521" => {
                    return Err(invalid(
                        "tls_server_config.curve_preferences",
                        "CurveP521 is not offered by rustls; use X25519, CurveP256 or CurveP384",
                    ))
                }
                other => {
                    return Err(invalid(
                        "tls_server_config.curve_preferences",
                        format!("unknown curve '{other}'; use X25519, CurveP256 or CurveP384"),
                    ))
                }
            });
        }
        provider.kx_groups = groups;
    }
    Ok(provider)
}

fn build_tls(
    raw: &RawTls,
    cert: Option<Vec<u8>>,
    key: Option<Vec<u8>>,
    client_ca: Option<Vec<u8>>,
) -> Result<ServerConfig, WebConfigError> {
    if raw.client_allowed_sans.is_some() {
        return Err(invalid(
            "tls_server_config.client_allowed_sans",
            "not supported; sign client certificates with a dedicated CA instead",
        ));
    }
    let cert =
        cert.ok_or_else(|| invalid("tls_server_config", "missing one of cert or cert_file"))?;
    let key = key.ok_or_else(|| invalid("tls_server_config", "missing one of key or key_file"))?;
    let chain = CertificateDer::pem_slice_iter(&cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid("tls_server_config.cert_file", format!("not PEM: {e}")))?;
    if chain.is_empty() {
        return Err(invalid(
            "tls_server_config.cert_file",
            "no CERTIFICATE block found",
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(&key).map_err(|e| {
        invalid(
            "tls_server_config.key_file",
            format!("no usable private key: {e}"),
        )
    })?;

    let min = tls_version(
        "tls_server_config.min_version",
        raw.min_version.as_ref(),
        &rustls::version::TLS12,
    )?;
    let max = tls_version(
        "tls_server_config.max_version",
        raw.max_version.as_ref(),
        &rustls::version::TLS13,
    )?;
    let rank = |v: &SupportedProtocolVersion| u16::from(v.version);
    let versions: Vec<&'static SupportedProtocolVersion> =
        [&rustls::version::TLS12, &rustls::version::TLS13]
            .into_iter()
            .filter(|v| rank(v) >= rank(min) && rank(v) <= rank(max))
            .collect();
    if versions.is_empty() {
        return Err(invalid(
            "tls_server_config.max_version",
            "is lower than min_version",
        ));
    }

    let provider = Arc::new(provider(raw)?);
    let verifier = client_verifier(raw, client_ca, &provider)?;
    let mut config = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&versions)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    config.ignore_client_order = raw.prefer_server_cipher_suites.unwrap_or(true);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

fn client_verifier(
    raw: &RawTls,
    client_ca: Option<Vec<u8>>,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, WebConfigError> {
    const FIELD: &str = "tls_server_config.client_auth_type";
    let roots = match client_ca {
        None => None,
        Some(pem) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| {
                    invalid("tls_server_config.client_ca_file", format!("not PEM: {e}"))
                })?;
                roots.add(cert).map_err(|e| {
                    invalid(
                        "tls_server_config.client_ca_file",
                        format!("unusable CA certificate: {e}"),
                    )
                })?;
            }
            if roots.is_empty() {
                return Err(invalid(
                    "tls_server_config.client_ca_file",
                    "no CERTIFICATE block found",
                ));
            }
            Some(Arc::new(roots))
        }
    };
    let kind = non_empty(&raw.client_auth_type).map_or("NoClientCert", String::as_str);
    let verified = |optional: bool| -> Result<Arc<dyn ClientCertVerifier>, WebConfigError> {
        let roots = roots.clone().ok_or_else(|| {
            invalid(
                FIELD,
                format!("{kind} needs client_ca_file (or client_ca) to verify client certificates against"),
            )
        })?;
        let builder = WebPkiClientVerifier::builder_with_provider(roots, Arc::clone(provider));
        let builder = if optional {
            builder.allow_unauthenticated()
        } else {
            builder
        };
        builder
            .build()
            .map_err(|e| invalid(FIELD, format!("cannot build the verifier: {e}")))
    };
    let any = |mandatory: bool| -> Arc<dyn ClientCertVerifier> {
        Arc::new(AnyClientCert {
            mandatory,
            algorithms: provider.signature_verification_algorithms,
        })
    };
    let verifier = match kind {
        "NoClientCert" => {
            if roots.is_some() {
                return Err(invalid(
                    FIELD,
                    "client CAs are configured but NoClientCert never asks for a certificate; set RequireAndVerifyClientCert",
                ));
            }
            WebPkiClientVerifier::no_client_auth()
        }
        "RequestClientCert" => any(false),
        "RequireAnyClientCert" | "RequireClientCert" => any(true),
        "VerifyClientCertIfGiven" => verified(true)?,
        "RequireAndVerifyClientCert" => verified(false)?,
        other => {
            return Err(invalid(
                FIELD,
                format!("unknown '{other}'; use NoClientCert, RequestClientCert, RequireAnyClientCert, VerifyClientCertIfGiven or RequireAndVerifyClientCert"),
            ))
        }
    };
    Ok(verifier)
}

/// Asks for a client certificate without checking who issued it
/// (`RequestClientCert`, `RequireAnyClientCert`). The handshake signature is
/// still verified, so the client does hold the certificate's key.
#[derive(Debug)]
struct AnyClientCert {
    mandatory: bool,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for AnyClientCert {
    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

// ---------------------------------------------------------------------------
// Basic authentication.

struct User {
    /// SHA-256 of the name: compared in constant time, whatever the lengths.
    name_digest: Fingerprint,
    hash: String,
}

/// The `basic_auth_users`, and a cache of the credentials already verified.
///
/// A bcrypt verification costs tens of milliseconds by design; Prometheus sends
/// the same credentials at every scrape, so a successful verification is
/// remembered under a SHA-256 of (user, hash, password) and later scrapes pay a
/// hash instead (exporter-toolkit does the same). Failures are not cached, so
/// the cache cannot be filled by someone who does not know a password. Every
/// verification that does reach bcrypt runs on the blocking pool, one at a
/// time, so wrong passwords cannot take every core.
pub struct BasicAuth {
    users: Vec<User>,
    cache: Mutex<HashSet<Fingerprint>>,
    bcrypt_gate: Semaphore,
    bcrypt_runs: AtomicU64,
}

impl BasicAuth {
    fn new(users: BTreeMap<String, String>) -> Result<Self, WebConfigError> {
        let mut out = Vec::with_capacity(users.len());
        for (name, hash) in users {
            let field = format!("basic_auth_users.{name}");
            if name.contains(':') {
                return Err(invalid(field, "a user name cannot contain ':'"));
            }
            let parts: bcrypt::HashParts = hash.parse().map_err(|_| {
                invalid(
                    &field,
                    "not a bcrypt hash (make one with: htpasswd -nBC 10 \"\" | tr -d ':\\n')",
                )
            })?;
            if parts.get_cost() < 4 || parts.get_cost() > 31 {
                return Err(invalid(field, "bcrypt cost must be between 4 and 31"));
            }
            out.push(User {
                name_digest: sha256(&[name.as_bytes()]),
                hash,
            });
        }
        Ok(BasicAuth {
            users: out,
            cache: Mutex::new(HashSet::new()),
            bcrypt_gate: Semaphore::new(1),
            bcrypt_runs: AtomicU64::new(0),
        })
    }

    /// How many bcrypt verifications were run (the others were cache hits).
    pub fn bcrypt_runs(&self) -> u64 {
        self.bcrypt_runs.load(Ordering::Relaxed)
    }

    /// Whether the `Authorization` header carries the credentials of a user.
    pub async fn verify(&self, authorization: Option<&HeaderValue>) -> bool {
        let Some((user, password)) = authorization.and_then(parse_basic) else {
            return false;
        };
        // Find the user without a map lookup or an early exit: the time taken
        // does not tell whether, or which, user name matched. An unknown user
        // is checked against the first user's hash, so it costs as much.
        let digest = sha256(&[user.as_bytes()]);
        let mut index = 0u32;
        let mut found = Choice::from(0);
        for (i, candidate) in self.users.iter().enumerate() {
            let same = candidate.name_digest.ct_eq(&digest);
            index.conditional_assign(&(i as u32), same);
            found |= same;
        }
        let found = bool::from(found);
        let hash = &self.users[index as usize].hash;
        let key = sha256(&[user.as_bytes(), hash.as_bytes(), password.as_bytes()]);
        let cached = self.lock_cache().contains(&key);
        if found && cached {
            return true;
        }
        let Ok(_permit) = self.bcrypt_gate.acquire().await else {
            return false;
        };
        self.bcrypt_runs.fetch_add(1, Ordering::Relaxed);
        let hash = hash.clone();
        let matches = tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or(false);
        let ok = found && matches;
        if ok {
            let mut cache = self.lock_cache();
            if cache.len() >= AUTH_CACHE_CAPACITY {
                cache.clear();
            }
            cache.insert(key);
        }
        ok
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, HashSet<Fingerprint>> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// SHA-256 over length-prefixed parts (so part boundaries cannot shift).
fn sha256(parts: &[&[u8]]) -> Fingerprint {
    let mut ctx = digest::Context::new(&digest::SHA256);
    for part in parts {
        feed(&mut ctx, part);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// `Basic base64(user:password)` → (user, password).
fn parse_basic(value: &HeaderValue) -> Option<(String, String)> {
    let value = value.to_str().ok()?;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

// ---------------------------------------------------------------------------
// Reloading.

#[derive(Debug, Default)]
struct ReloadCounts {
    loaded: AtomicU64,
    failed: AtomicU64,
}

/// Read access to the configuration in force; cheap to clone.
#[derive(Clone)]
pub struct WebConfigHandle {
    current: watch::Receiver<Arc<WebConfig>>,
    counts: Arc<ReloadCounts>,
}

impl fmt::Debug for WebConfigHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebConfigHandle")
            .field("current", &*self.current.borrow())
            .finish()
    }
}

impl WebConfigHandle {
    /// The configuration in force now.
    pub fn current(&self) -> Arc<WebConfig> {
        Arc::clone(&self.current.borrow())
    }

    /// Changes of the files that were loaded and put in force.
    pub fn reloads(&self) -> u64 {
        self.counts.loaded.load(Ordering::Relaxed)
    }

    /// Changes of the files that could not be loaded (the last good one stayed).
    pub fn failed_reloads(&self) -> u64 {
        self.counts.failed.load(Ordering::Relaxed)
    }
}

/// Watches the web config file and the files it names, and reloads on change.
pub struct WebConfigWatcher {
    path: PathBuf,
    tls: bool,
    fingerprint: Fingerprint,
    poll_interval: Duration,
    publish: watch::Sender<Arc<WebConfig>>,
    counts: Arc<ReloadCounts>,
}

impl WebConfigWatcher {
    /// Loads the file a first time; an error here should stop the exporter.
    pub fn load(path: impl Into<PathBuf>) -> Result<Self, WebConfigError> {
        let path = path.into();
        let (fingerprint, sources) = read_sources(&path);
        let config = build(sources?)?;
        let tls = config.tls.is_some();
        let (publish, _) = watch::channel(Arc::new(config));
        Ok(WebConfigWatcher {
            path,
            tls,
            fingerprint,
            poll_interval: POLL_INTERVAL,
            publish,
            counts: Arc::default(),
        })
    }

    /// Checks for changes this often instead of [`POLL_INTERVAL`].
    pub fn with_poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// A handle on the configuration in force, for the server.
    pub fn handle(&self) -> WebConfigHandle {
        WebConfigHandle {
            current: self.publish.subscribe(),
            counts: Arc::clone(&self.counts),
        }
    }

    /// Polls until `shutdown` completes.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(self.poll_interval) => {}
            }
            let path = self.path.clone();
            let Ok((fingerprint, sources)) =
                tokio::task::spawn_blocking(move || read_sources(&path)).await
            else {
                continue;
            };
            if fingerprint == self.fingerprint {
                continue;
            }
            // Remembered whatever the outcome: a broken file is reported once,
            // not at every poll, and tried again as soon as anything changes.
            self.fingerprint = fingerprint;
            match sources.and_then(build).and_then(|c| self.check_mode(c)) {
                Ok(config) => {
                    tracing::info!(
                        file = %self.path.display(),
                        tls = config.tls.is_some(),
                        basic_auth_users = config.auth.as_ref().map_or(0, |a| a.users.len()),
                        "reloaded --web.config.file"
                    );
                    self.counts.loaded.fetch_add(1, Ordering::Relaxed);
                    self.publish.send_replace(Arc::new(config));
                }
                Err(err) => {
                    self.counts.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(
                        file = %self.path.display(),
                        error = %err,
                        "cannot reload --web.config.file; keeping the last good configuration"
                    );
                }
            }
        }
    }

    /// TLS on or off is decided at start: a reload cannot silently turn an
    /// HTTPS endpoint into a plain-text one, nor the reverse.
    fn check_mode(&self, config: WebConfig) -> Result<WebConfig, WebConfigError> {
        if config.tls.is_some() == self.tls {
            return Ok(config);
        }
        Err(invalid(
            "tls_server_config",
            if self.tls {
                "TLS was on at start; turning it off needs a restart"
            } else {
                "TLS was off at start; turning it on needs a restart"
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<WebConfig, WebConfigError> {
        let mut fp = digest::Context::new(&digest::SHA256);
        build(sources_from_text(yaml.as_bytes(), Path::new("."), &mut fp)?)
    }

    fn err(yaml: &str) -> String {
        parse(yaml).expect_err(yaml).to_string()
    }

    // "secret" at cost 4, so the tests stay fast.
    const HASH: &str = "$2y$04$ivERzn2bBpLpHOeh2TXvUOaxv/PkDJYYNt9O93Y16oqZXpKYerS2.";

    #[test]
    fn empty_file_is_an_empty_configuration() {
        for yaml in ["", "# nothing\n", "\n  \n"] {
            let c = parse(yaml).unwrap();
            assert!(c.tls.is_none() && c.auth.is_none() && c.headers.is_empty());
        }
    }

    #[test]
    fn unknown_and_duplicate_keys_are_refused() {
        assert!(err("tls_server_config:\n  cert_fil: x\n").contains("unknown field"));
        assert!(err("basic_auth_user:\n  a: b\n").contains("unknown field"));
        let dup = format!("basic_auth_users:\n  alice: {HASH}\n  alice: {HASH}\n");
        assert!(err(&dup).contains("duplicate"), "{}", err(&dup));
    }

    #[test]
    fn errors_are_one_line() {
        let e = err("basic_auth_users: [\n  - a\n");
        assert!(!e.contains('\n'), "{e}");
    }

    #[test]
    fn unsupported_features_are_refused_by_name() {
        assert!(err("rate_limit:\n  interval: 1s\n  burst: 2\n").starts_with("rate_limit:"));
        let e = err("tls_server_config:\n  cert: x\n  key: y\n  client_allowed_sans: [a]\n");
        assert!(e.contains("client_allowed_sans"), "{e}");
    }

    #[test]
    fn tls_versions() {
        let e = tls_version("f", Some(&"TLS10".into()), &rustls::version::TLS12).unwrap_err();
        assert!(e.to_string().contains("TLS10 is not supported"), "{e}");
        assert!(tls_version("f", Some(&"TLS11".into()), &rustls::version::TLS12).is_err());
        assert!(tls_version("f", Some(&"SSL3".into()), &rustls::version::TLS12).is_err());
        let v = tls_version("f", Some(&"TLS13".into()), &rustls::version::TLS12).unwrap();
        assert_eq!(v.version, rustls::ProtocolVersion::TLSv1_3);
        let v = tls_version("f", None, &rustls::version::TLS12).unwrap();
        assert_eq!(v.version, rustls::ProtocolVersion::TLSv1_2);
    }

    #[test]
    fn cipher_suites_map_go_names() {
        let raw = RawTls {
            cipher_suites: Some(vec![
                "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384".into(),
                "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305".into(),
            ]),
            ..Default::default()
        };
        let p = provider(&raw).unwrap();
        let names: Vec<String> = p
            .cipher_suites
            .iter()
            .map(|s| format!("{:?}", s.suite()))
            .collect();
        // The three TLS 1.3 suites stay, then the two TLS 1.2 ones in order.
        assert_eq!(names.len(), 5, "{names:?}");
        assert_eq!(names[3], "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384");
        assert_eq!(names[4], "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256");

        for bad in [
            "TLS_RSA_WITH_AES_128_CBC_SHA",
            "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256",
            "nope",
        ] {
            let raw = RawTls {
                cipher_suites: Some(vec![bad.into()]),
                ..Default::default()
            };
            let e = provider(&raw).expect_err(bad).to_string();
            assert!(
                e.starts_with("tls_server_config.cipher_suites:") && e.contains(bad),
                "{e}"
            );
        }
    }

    #[test]
    fn curves() {
        let raw = RawTls {
            curve_preferences: Some(vec!["CurveP256".into(), "X25519".into()]),
            ..Default::default()
        };
        assert_eq!(provider(&raw).unwrap().kx_groups.len(), 2);
        let raw = RawTls {
            curve_preferences: Some(vec!["CurveP521".into()]),
            ..Default::default()
        };
        assert!(provider(&raw).is_err());
    }

    #[test]
    fn tls_needs_cert_and_key() {
        assert!(err("tls_server_config:\n  key: k\n").contains("missing one of cert or cert_file"));
        assert!(err("tls_server_config:\n  cert: c\n").contains("missing one of key or key_file"));
        assert!(err("tls_server_config:\n  cert: c\n  key: k\n").contains("no CERTIFICATE block"));
    }

    #[test]
    fn headers_follow_exporter_toolkit() {
        let c = parse(
            "http_server_config:\n  headers:\n    X-Frame-Options: deny\n    X-Content-Type-Options: nosniff\n    Content-Security-Policy: \"default-src 'self'\"\n    X-XSS-Protection: \"\"\n",
        )
        .unwrap();
        assert_eq!(c.headers.len(), 3);
        assert!(
            err("http_server_config:\n  headers:\n    Content-Type: foo\n")
                .contains("cannot be configured")
        );
        assert!(
            err("http_server_config:\n  headers:\n    Set-Cookie: a=b\n")
                .contains("cannot be configured")
        );
        assert!(
            err("http_server_config:\n  headers:\n    X-Frame-Options: allow\n")
                .contains("deny, sameorigin")
        );
        assert!(
            err("http_server_config:\n  headers:\n    X-Content-Type-Options: sniff\n")
                .contains("nosniff")
        );
        assert!(
            err("http_server_config:\n  headers:\n    Strict-Transport-Security: \"a\\nb\"\n")
                .contains("cannot carry")
        );
    }

    #[test]
    fn users_need_bcrypt_hashes() {
        assert!(err("basic_auth_users:\n  alice: plaintext\n").contains("not a bcrypt hash"));
        assert!(err(&format!("basic_auth_users:\n  \"a:b\": {HASH}\n")).contains("':'"));
        let c = parse(&format!("basic_auth_users:\n  alice: {HASH}\n")).unwrap();
        assert_eq!(c.auth.unwrap().users.len(), 1);
    }

    fn basic(user: &str, pass: &str) -> HeaderValue {
        let raw = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        HeaderValue::from_str(&format!("Basic {raw}")).unwrap()
    }

    #[test]
    fn authorization_parsing() {
        assert_eq!(
            parse_basic(&basic("al:ice", "p:w")),
            Some(("al".into(), "ice:p:w".into()))
        );
        let lower = HeaderValue::from_static("basic YTpi");
        assert_eq!(parse_basic(&lower), Some(("a".into(), "b".into())));
        assert_eq!(parse_basic(&HeaderValue::from_static("Bearer YTpi")), None);
        assert_eq!(parse_basic(&HeaderValue::from_static("Basic !!!")), None);
        assert_eq!(parse_basic(&HeaderValue::from_static("Basic YWI=")), None);
    }

    #[tokio::test]
    async fn verification_is_cached_only_on_success() {
        let c = parse(&format!(
            "basic_auth_users:\n  alice: {HASH}\n  bob: {HASH}\n"
        ))
        .unwrap();
        let auth = c.auth.unwrap();
        assert!(!auth.verify(None).await);
        assert!(!auth.verify(Some(&basic("alice", "wrong"))).await);
        assert!(!auth.verify(Some(&basic("mallory", "secret"))).await);
        assert_eq!(auth.bcrypt_runs(), 2);
        for _ in 0..5 {
            assert!(auth.verify(Some(&basic("alice", "secret"))).await);
        }
        assert_eq!(auth.bcrypt_runs(), 3, "one bcrypt run, then cache hits");
        assert!(!auth.verify(Some(&basic("alice", "wrong"))).await);
        assert!(auth.verify(Some(&basic("bob", "secret"))).await);
        assert!(!auth.verify(Some(&basic("mallory", "secret"))).await);
        assert_eq!(auth.bcrypt_runs(), 6);
    }
}
