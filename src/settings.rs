//! An account's settings, described once.
//!
//! The same structs are the account flags (`--api.url`, `--datacenters`, …)
//! and an entry of `--config.file` (`api: {url: …}`, `datacenters: […]`): a
//! field carries its flag (clap's `#[arg]`: the name, the environment twin, the
//! default) and its file key (serde, checked by the same parser, so that a value
//! the flag refuses is refused in the file with the same words). The flags'
//! account is then an [`Entry`] like any of the file's, and
//! [`crate::account::complete`] turns either into an account. A new account
//! setting is a field here and a line there.
//!
//! A flag's default is clap's `default_value`, so the entry the flags give
//! always holds one; a file entry holds only what the file says, and whatever
//! it leaves out comes from `defaults:`, then from the flags' entry.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use clap::ValueEnum;
use reqwest::header::{HeaderName, HeaderValue};
use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use url::Url;

use crate::labels::Status;

/// The name of the one account the flags describe.
pub const DEFAULT_ACCOUNT: &str = "default";

/// The login path the provider documents, appended to the account's base URL.
pub const DEFAULT_AUTH_PATH: &str = "/v1/auth/getToken";

/// What an account sets, as flags or as an entry of the file (an account, or
/// `defaults:`). Every value is checked while it is read, so that a file's
/// error has its line; a field left out is `None`.
#[derive(Debug, Clone, Default, clap::Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// The account's name, the `account` label (the flags' account is `default`).
    #[arg(skip)]
    #[serde(default, deserialize_with = "name")]
    pub name: Option<String>,

    /// Upstream settings.
    #[command(flatten)]
    #[serde(default)]
    pub api: Api,

    /// File holding the access token, re-read at every refresh; else env FINOVY_ACCESS_TOKEN.
    #[arg(
        help_heading = "API",
        id = "token_file",
        value_name = "FILE",
        long = "api.token-file",
        env = "FINOVY_API_TOKEN_FILE"
    )]
    #[serde(default)]
    pub token_file: Option<PathBuf>,

    /// An environment variable holding the token (the flags' is FINOVY_ACCESS_TOKEN).
    #[arg(skip)]
    #[serde(default, deserialize_with = "env_name")]
    pub token_env: Option<String>,

    /// Account ID to log in as, with its secret: the exporter then gets its own tokens and renews them.
    #[arg(help_heading = "API", id = "uuid", value_name = "UUID", long = "api.uuid", env = "FINOVY_API_UUID", conflicts_with = "token_file", value_parser = parse_uuid)]
    #[serde(default, deserialize_with = "uuid")]
    pub uuid: Option<String>,

    /// File holding the secret of --api.uuid, read again at each login; else env FINOVY_API_SECRET.
    #[arg(
        help_heading = "API",
        id = "secret_file",
        value_name = "FILE",
        long = "api.secret-file",
        env = "FINOVY_API_SECRET_FILE",
        requires = "uuid"
    )]
    #[serde(default)]
    pub secret_file: Option<PathBuf>,

    /// An environment variable holding the secret (the flags' is FINOVY_API_SECRET).
    #[arg(skip)]
    #[serde(default, deserialize_with = "env_name")]
    pub secret_env: Option<String>,

    /// Comma-separated datacenter keys; when empty they are discovered.
    #[arg(help_heading = "Targets", id = "datacenters", value_name = "KEYS", long = "datacenters", env = "FINOVY_DATACENTERS", value_delimiter = ',', value_parser = parse_datacenter)]
    #[serde(default, deserialize_with = "datacenters")]
    pub datacenters: Option<Vec<String>>,

    /// Schedule.
    #[command(flatten)]
    #[serde(default)]
    pub refresh: Refresh,

    /// Which images count.
    #[command(flatten)]
    #[serde(default)]
    pub filters: Filters,
}

/// `--api.*`, `api:` in the file.
#[derive(Debug, Clone, Default, clap::Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Api {
    /// Base URL of the Finovy API.
    #[arg(help_heading = "API", id = "api.url", value_name = "URL", long = "api.url", env = "FINOVY_API_URL", default_value = "https://client.xuandashi.com", value_parser = parse_base_url)]
    #[serde(default, deserialize_with = "base_url")]
    pub url: Option<Url>,

    /// Path of the "my image list" endpoint, appended to --api.url.
    #[arg(help_heading = "API", id = "api.path", value_name = "PATH", long = "api.path", env = "FINOVY_API_PATH", default_value = "/v1/open/image/personal/getList", value_parser = parse_api_path)]
    #[serde(default, deserialize_with = "api_path")]
    pub path: Option<String>,

    /// Path of the login endpoint, appended to --api.url (used with --api.uuid).
    #[arg(help_heading = "API", id = "api.auth_path", value_name = "PATH", long = "api.auth-path", env = "FINOVY_API_AUTH_PATH", default_value = DEFAULT_AUTH_PATH, value_parser = parse_api_path)]
    #[serde(default, deserialize_with = "api_path")]
    pub auth_path: Option<String>,

    /// Timeout of one upstream request, body included.
    #[arg(help_heading = "API", id = "api.timeout", value_name = "DURATION", long = "api.timeout", env = "FINOVY_API_TIMEOUT", default_value = "10s", value_parser = parse_positive_duration)]
    #[serde(default, deserialize_with = "positive_duration")]
    pub timeout: Option<Duration>,

    /// Page size asked of the upstream.
    #[arg(help_heading = "API", id = "api.page_size", value_name = "N", long = "api.page-size", env = "FINOVY_API_PAGE_SIZE", default_value = "100", value_parser = parse_page_size)]
    #[serde(default, deserialize_with = "page_size")]
    pub page_size: Option<u32>,

    /// Upstream requests in flight at most, over all datacenters.
    #[arg(help_heading = "API", id = "api.concurrency", value_name = "N", long = "api.concurrency", env = "FINOVY_API_CONCURRENCY", default_value = "4", value_parser = parse_concurrency)]
    #[serde(default, deserialize_with = "concurrency")]
    pub concurrency: Option<u32>,

    /// Upstream request attempts per second at most, over all datacenters (0: no limit).
    #[arg(help_heading = "API", id = "api.requests_per_second", value_name = "RATE", long = "api.requests-per-second", env = "FINOVY_API_REQUESTS_PER_SECOND", default_value = "0", value_parser = parse_rate)]
    #[serde(default, deserialize_with = "requests_per_second")]
    pub requests_per_second: Option<f64>,

    /// Retries of a request after a timeout, a connection error, a 5xx or a 429.
    #[arg(help_heading = "API", id = "api.max_retries", value_name = "N", long = "api.max-retries", env = "FINOVY_API_MAX_RETRIES", default_value = "3", value_parser = parse_max_retries)]
    #[serde(default, deserialize_with = "max_retries")]
    pub max_retries: Option<u32>,

    /// Extra header sent with every request, `KEY=VALUE` (repeatable).
    #[arg(help_heading = "API", id = "api.headers", value_name = "KEY=VALUE", long = "api.header", env = "FINOVY_API_HEADER", hide_env_values = true, value_delimiter = ',', value_parser = parse_header)]
    #[serde(default, deserialize_with = "headers")]
    pub headers: Option<Vec<ExtraHeader>>,

    /// Extra query parameter sent with every request, `KEY=VALUE` (repeatable).
    #[arg(help_heading = "API", id = "api.params", value_name = "KEY=VALUE", long = "api.param", env = "FINOVY_API_PARAM", hide_env_values = true, value_delimiter = ',', value_parser = parse_param)]
    #[serde(default, deserialize_with = "params")]
    pub params: Option<Vec<(String, String)>>,

    /// Unit of the upstream `imageSize` field.
    #[arg(
        help_heading = "API",
        id = "api.image_size_unit",
        value_name = "UNIT",
        long = "api.image-size-unit",
        env = "FINOVY_API_IMAGE_SIZE_UNIT",
        default_value = "GiB",
        value_enum,
        ignore_case = true
    )]
    #[serde(default, deserialize_with = "size_unit")]
    pub image_size_unit: Option<SizeUnit>,

    /// Proxy for every upstream request [default: HTTPS_PROXY, HTTP_PROXY, NO_PROXY].
    #[arg(help_heading = "API TLS and proxy", id = "api.proxy_url", value_name = "URL", long = "api.proxy-url", env = "FINOVY_API_PROXY_URL", hide_env_values = true, value_parser = parse_proxy_url)]
    #[serde(default, deserialize_with = "proxy_url")]
    pub proxy_url: Option<Url>,

    /// How the upstream's certificate is checked.
    #[command(flatten)]
    #[serde(default)]
    pub tls: Tls,
}

/// `--api.tls.*`, `api: {tls: …}` in the file.
#[derive(Debug, Clone, Default, clap::Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// PEM file of the CA that signed the upstream's certificate (a private CA).
    #[arg(
        help_heading = "API TLS and proxy",
        id = "api.tls.ca_file",
        value_name = "FILE",
        long = "api.tls.ca-file",
        env = "FINOVY_API_TLS_CA_FILE"
    )]
    #[serde(default)]
    pub ca_file: Option<PathBuf>,

    /// PEM client certificate for an upstream that asks for one (with --api.tls.key-file).
    #[arg(
        help_heading = "API TLS and proxy",
        id = "api.tls.cert_file",
        value_name = "FILE",
        long = "api.tls.cert-file",
        env = "FINOVY_API_TLS_CERT_FILE"
    )]
    #[serde(default)]
    pub cert_file: Option<PathBuf>,

    /// PEM key of --api.tls.cert-file.
    #[arg(
        help_heading = "API TLS and proxy",
        id = "api.tls.key_file",
        value_name = "FILE",
        long = "api.tls.key-file",
        env = "FINOVY_API_TLS_KEY_FILE"
    )]
    #[serde(default)]
    pub key_file: Option<PathBuf>,

    /// Accept any upstream certificate (insecure; for tests only; logged at start).
    #[arg(help_heading = "API TLS and proxy", id = "api.tls.insecure_skip_verify", long = "api.tls.insecure-skip-verify", env = "FINOVY_API_TLS_INSECURE_SKIP_VERIFY", action = clap::ArgAction::SetTrue)]
    #[serde(default)]
    pub insecure_skip_verify: Option<bool>,
}

/// `--refresh.*`, `refresh:` in the file.
#[derive(Debug, Clone, Default, clap::Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Refresh {
    /// Time between the starts of two passes of a target (at least 1s).
    #[arg(help_heading = "Refresh", id = "refresh.interval", value_name = "DURATION", long = "refresh.interval", env = "FINOVY_REFRESH_INTERVAL", default_value = "60s", value_parser = parse_interval)]
    #[serde(default, deserialize_with = "interval")]
    pub interval: Option<Duration>,

    /// Drop a datacenter's image series after this long without a successful refresh.
    #[arg(help_heading = "Refresh", id = "refresh.stale_after", value_name = "DURATION", long = "refresh.stale-after", env = "FINOVY_REFRESH_STALE_AFTER", default_value = "5m", value_parser = parse_positive_duration)]
    #[serde(default, deserialize_with = "positive_duration")]
    pub stale_after: Option<Duration>,

    /// Longest a pass may take before it fails with reason timeout, a backstop [default: ten intervals, at least 5m].
    #[arg(help_heading = "Refresh", id = "refresh.timeout", value_name = "DURATION", long = "refresh.timeout", env = "FINOVY_REFRESH_TIMEOUT", value_parser = parse_positive_duration)]
    #[serde(default, deserialize_with = "positive_duration")]
    pub timeout: Option<Duration>,
}

/// `--filter.*`, `filters:` in the file.
#[derive(Debug, Clone, Default, clap::Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filters {
    /// Only count images of this type (upstream `imageType`).
    #[arg(help_heading = "Filters", id = "filters.image_type", value_name = "TYPE", long = "filter.image-type", env = "FINOVY_FILTER_IMAGE_TYPE", value_parser = parse_filter)]
    #[serde(default, deserialize_with = "filter")]
    pub image_type: Option<String>,

    /// Only count images with this name (upstream `imageName`).
    #[arg(help_heading = "Filters", id = "filters.image_name", value_name = "NAME", long = "filter.image-name", env = "FINOVY_FILTER_IMAGE_NAME", value_parser = parse_filter)]
    #[serde(default, deserialize_with = "filter")]
    pub image_name: Option<String>,

    /// Only count images in this status: 0-3 or creating, available, failed, expired.
    #[arg(help_heading = "Filters", id = "filters.status", value_name = "STATUS", long = "filter.status", env = "FINOVY_FILTER_STATUS", value_parser = parse_status_filter)]
    #[serde(default, deserialize_with = "status")]
    pub status: Option<Status>,
}

/// Who wrote an account's settings: its problems name each setting as that
/// writer knows it (`api.tls.ca_file` in the file, `--api.tls.ca-file` on the
/// command line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The command-line flags and their environment twins.
    Flags,
    /// `--config.file`.
    File,
}

impl Origin {
    /// How the writer names the setting of file key `key` (which is also its
    /// flag's id); `None` for a flags' setting with no flag of its own (the
    /// flags' `token_env` and `secret_env`, fixed environment variables).
    pub fn name(self, key: &str) -> Option<String> {
        match self {
            Origin::File => Some(key.to_string()),
            Origin::Flags => {
                let flags = <Entry as clap::Args>::augment_args(clap::Command::new("flags"));
                let arg = flags.get_arguments().find(|a| a.get_id() == key)?;
                arg.get_long().map(|long| format!("--{long}"))
            }
        }
    }

    /// `detail`, after the name of the setting it is about when it has one.
    pub fn say(self, key: &str, detail: impl fmt::Display) -> String {
        match self.name(key) {
            Some(name) => format!("{name}: {detail}"),
            None => detail.to_string(),
        }
    }
}

/// `base` with `path` appended to its own path (a base URL may have a prefix).
pub fn join_path(base: &Url, path: &str) -> Url {
    let mut url = base.clone();
    let prefix = url.path().trim_end_matches('/').to_string();
    url.set_path(&format!("{prefix}{path}"));
    url
}

/// An account ID: printable, without spaces, at most 128 bytes. It is shown in
/// logs and on the landing page, so it may not be a secret pasted by mistake
/// into the wrong flag (a secret would be caught by nothing here, but a value
/// with spaces or control characters is no account ID).
pub fn parse_uuid(s: &str) -> Result<String, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("the account ID is empty; it is on the account page of the console".into());
    }
    if t.len() > 128 || t.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(
            "an account ID has no spaces or control characters and at most 128 characters".into(),
        );
    }
    Ok(t.to_string())
}

fn bounded(s: &str, min: u32, max: u32) -> Result<u32, String> {
    match s.trim().parse::<u32>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(format!("'{s}' is not a whole number from {min} to {max}")),
    }
}

fn parse_page_size(s: &str) -> Result<u32, String> {
    bounded(s, 1, 10_000)
}

fn parse_concurrency(s: &str) -> Result<u32, String> {
    bounded(s, 1, 256)
}

fn parse_max_retries(s: &str) -> Result<u32, String> {
    bounded(s, 0, 20)
}

/// The smallest request rate other than 0 (no limit): one request every 1,000 s.
/// A smaller one would starve every pass, and its period would not fit a
/// `Duration` long before the rate reaches zero.
pub const MIN_RATE: f64 = 0.001;

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(r) if r == 0.0 || (r.is_finite() && r >= MIN_RATE) => Ok(r.abs()),
        Ok(r) if r > 0.0 && r < MIN_RATE => Err(format!(
            "'{s}' is below the smallest rate, {MIN_RATE} (one request every 1000s); 0 is no limit"
        )),
        _ => Err(format!(
            "'{s}' is not a rate of requests per second (0: no limit)"
        )),
    }
}

fn parse_size_unit(s: &str) -> Result<SizeUnit, String> {
    SizeUnit::from_str(s, true)
        .map_err(|_| format!("'{s}' is not one of B, KB, MB, GB, KiB, MiB, GiB, TiB"))
}

pub fn parse_base_url(s: &str) -> Result<Url, String> {
    // The URL is never repeated: a mistyped one may still carry a password.
    let url = Url::parse(s).map_err(|e| format!("not a URL ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("must be an http or https URL".to_string());
    }
    if url.host_str().is_none() {
        return Err("the URL has no host".to_string());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(
            "must not carry credentials (user:password@); send them with --api.header".into(),
        );
    }
    if url.query().is_some() {
        return Err("must not carry a query; use --api.param".to_string());
    }
    Ok(url)
}

pub fn parse_proxy_url(s: &str) -> Result<Url, String> {
    // The value may carry proxy credentials: never echo it.
    let url = Url::parse(s).map_err(|e| format!("not a URL ({e})"))?;
    if !matches!(url.scheme(), "http" | "https" | "socks5" | "socks5h") {
        return Err("must be an http, https or socks5 URL".into());
    }
    if url.host_str().is_none() {
        return Err("has no host".into());
    }
    Ok(url)
}

pub fn parse_api_path(s: &str) -> Result<String, String> {
    if !s.starts_with('/') || s.contains(['?', '#']) {
        return Err(format!(
            "'{s}' must be a path starting with /, without a query"
        ));
    }
    Ok(s.to_string())
}

/// A duration greater than zero (`30s`, `5m`, `1m30s`).
pub fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| {
        // `1m30` is a unit short, which humantime's own suggestion misses.
        let hint = if s.trim().ends_with(|c: char| c.is_ascii_digit())
            && s.trim().contains(|c: char| c.is_ascii_alphabetic())
        {
            format!("; did you mean '{}s'?", s.trim())
        } else {
            String::new()
        };
        format!("'{s}' is not a duration such as 30s, 5m or 1m30s ({e}){hint}")
    })?;
    if d.is_zero() {
        return Err("must be greater than zero".to_string());
    }
    Ok(d)
}

/// The smallest `--refresh.interval`: below it the exporter would send the
/// upstream more requests than any inventory justifies.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);

pub fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = parse_positive_duration(s)?;
    if d < MIN_INTERVAL {
        return Err(format!(
            "'{s}' is below the 1s minimum; an inventory changes far more slowly than that"
        ));
    }
    Ok(d)
}

fn split_key_value(s: &str) -> Result<(&str, &str), String> {
    s.split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| "expected KEY=VALUE".to_string())
}

/// An extra header sent upstream; its value is never logged, it may be a secret.
#[derive(Clone, PartialEq, Eq)]
pub struct ExtraHeader {
    /// Header name.
    pub name: HeaderName,
    /// Header value, marked sensitive so that it is never printed.
    pub value: HeaderValue,
}

impl fmt::Debug for ExtraHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}=**hidden**", self.name)
    }
}

pub fn parse_header(s: &str) -> Result<ExtraHeader, String> {
    let (k, v) = split_key_value(s)?;
    // An invalid name is not repeated: it may be a whole `Name: secret` line.
    let name = HeaderName::from_bytes(k.trim().as_bytes())
        .map_err(|_| "the part before '=' is not a valid header name".to_string())?;
    if name == crate::secret::TOKEN_HEADER {
        return Err("the token header is set from the token, not from --api.header".into());
    }
    let mut value = HeaderValue::from_str(v.trim()).map_err(|_| {
        format!("the value of header '{name}' has characters a header cannot carry")
    })?;
    value.set_sensitive(true);
    Ok(ExtraHeader { name, value })
}

pub fn parse_param(s: &str) -> Result<(String, String), String> {
    let (k, v) = split_key_value(s)?;
    let reserved = [
        "page",
        "pageSize",
        "datacenterKey",
        "imageType",
        "imageName",
        "status",
    ];
    if reserved.contains(&k) {
        return Err(format!("'{k}' is set by the exporter itself"));
    }
    if k.chars().any(char::is_control) {
        return Err("a parameter name contains control characters".into());
    }
    if v.chars().any(char::is_control) {
        return Err(format!(
            "the value of parameter '{k}' contains control characters"
        ));
    }
    Ok((k.to_string(), v.to_string()))
}

pub fn parse_filter(s: &str) -> Result<String, String> {
    if s.is_empty() || s.chars().any(char::is_control) {
        return Err("must be non-empty text without control characters".into());
    }
    Ok(s.to_string())
}

pub fn parse_status_filter(s: &str) -> Result<Status, String> {
    let status = match s.to_ascii_lowercase().as_str() {
        "0" | "creating" => Status::Creating,
        "1" | "available" => Status::Available,
        "2" | "failed" => Status::Failed,
        "3" | "expired" => Status::Expired,
        _ => {
            return Err(format!(
                "'{s}' is not 0-3, creating, available, failed or expired"
            ))
        }
    };
    Ok(status)
}

pub fn parse_datacenter(s: &str) -> Result<String, String> {
    let s = s.trim();
    if !s.is_empty() && s.split_whitespace().count() > 1 && !s.chars().any(char::is_control) {
        return Err(format!(
            "'{s}' is not a datacenter key; separate keys with commas: '{}'",
            s.split_whitespace().collect::<Vec<_>>().join(",")
        ));
    }
    if s.is_empty() || s.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(format!("'{s}' is not a datacenter key"));
    }
    Ok(s.to_string())
}

/// Unit in which the upstream states `imageSize`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SizeUnit {
    /// Bytes.
    #[value(name = "B")]
    B,
    /// 10^3 bytes.
    #[value(name = "KB")]
    Kb,
    /// 10^6 bytes.
    #[value(name = "MB")]
    Mb,
    /// 10^9 bytes.
    #[value(name = "GB")]
    Gb,
    /// 2^10 bytes.
    #[value(name = "KiB")]
    Kib,
    /// 2^20 bytes.
    #[value(name = "MiB")]
    Mib,
    /// 2^30 bytes.
    #[value(name = "GiB")]
    Gib,
    /// 2^40 bytes.
    #[value(name = "TiB")]
    Tib,
}

impl SizeUnit {
    /// Bytes in one unit.
    pub fn bytes(self) -> f64 {
        match self {
            SizeUnit::B => 1.0,
            SizeUnit::Kb => 1e3,
            SizeUnit::Mb => 1e6,
            SizeUnit::Gb => 1e9,
            SizeUnit::Kib => 1024.0,
            SizeUnit::Mib => 1024.0 * 1024.0,
            SizeUnit::Gib => 1024.0 * 1024.0 * 1024.0,
            SizeUnit::Tib => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        }
    }
}

/// A scalar read as text and checked by `parse`, inside the deserializer, so
/// that an error carries the value's position and key path.
struct Checked<F>(F, &'static str);

impl<'de, T, F: FnOnce(&str) -> Result<T, String>> Visitor<'de> for Checked<F> {
    type Value = Option<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.1)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        (self.0)(v).map(Some).map_err(E::custom)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        self.visit_str(&v.to_string())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        self.visit_str(&v.to_string())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        // Display writes every digit (1e-300 is 300 characters), which an
        // error would repeat: very small or large numbers keep their exponent.
        if v == 0.0 || (1e-6..1e15).contains(&v.abs()) {
            self.visit_str(&v.to_string())
        } else {
            self.visit_str(&format!("{v:?}"))
        }
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Err(E::invalid_type(de::Unexpected::Bool(v), &self))
    }
}

fn checked<'de, D: de::Deserializer<'de>, T>(
    d: D,
    expecting: &'static str,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Result<Option<T>, D::Error> {
    d.deserialize_any(Checked(parse, expecting))
}

fn name<'de, D: de::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    checked(d, "an account name", |s| {
        let valid = (1..=64).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if valid {
            Ok(s.to_string())
        } else {
            Err(format!(
                "'{}' is not an account name: 1 to 64 of A-Z a-z 0-9 _ . -",
                s.escape_debug()
            ))
        }
    })
}

fn env_name<'de, D: de::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    checked(d, "an environment variable name", |s| {
        if s.is_empty() || s.contains(['=', '\0']) {
            Err("not an environment variable name".into())
        } else {
            Ok(s.to_string())
        }
    })
}

fn datacenters<'de, D: de::Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    struct Keys;
    impl<'de> Visitor<'de> for Keys {
        type Value = Option<Vec<String>>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a list of datacenter keys")
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(Some(Vec::new()))
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut keys: Vec<String> = Vec::new();
            while let Some(key) = seq.next_element::<String>()? {
                let key = parse_datacenter(&key).map_err(de::Error::custom)?;
                if keys.contains(&key) {
                    return Err(de::Error::custom(format!(
                        "datacenter '{key}' is listed twice"
                    )));
                }
                keys.push(key);
            }
            Ok(Some(keys))
        }
    }
    d.deserialize_any(Keys)
}

fn base_url<'de, D: de::Deserializer<'de>>(d: D) -> Result<Option<Url>, D::Error> {
    checked(d, "an http or https URL", parse_base_url)
}

fn proxy_url<'de, D: de::Deserializer<'de>>(d: D) -> Result<Option<Url>, D::Error> {
    checked(d, "a proxy URL", parse_proxy_url)
}

fn uuid<'de, D: de::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    checked(d, "an account ID", parse_uuid)
}

fn api_path<'de, D: de::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    checked(d, "a path", parse_api_path)
}

fn positive_duration<'de, D: de::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    checked(d, "a duration such as 30s", parse_positive_duration)
}

fn interval<'de, D: de::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    checked(d, "a duration of at least 1s", parse_interval)
}

fn page_size<'de, D: de::Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    checked(d, "a page size", parse_page_size)
}

fn concurrency<'de, D: de::Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    checked(d, "a number of requests", parse_concurrency)
}

fn max_retries<'de, D: de::Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    checked(d, "a number of retries", parse_max_retries)
}

fn requests_per_second<'de, D: de::Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    checked(d, "a rate", parse_rate)
}

fn size_unit<'de, D: de::Deserializer<'de>>(d: D) -> Result<Option<SizeUnit>, D::Error> {
    checked(d, "a size unit", parse_size_unit)
}

fn filter<'de, D: de::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    checked(d, "a filter value", parse_filter)
}

fn status<'de, D: de::Deserializer<'de>>(d: D) -> Result<Option<Status>, D::Error> {
    checked(d, "a status", parse_status_filter)
}

/// A mapping of text to text whose every entry `check` accepts, in the file's
/// order; a repeated key is an error (a YAML mapping would otherwise keep the
/// last one silently).
fn text_map<'de, D: de::Deserializer<'de>, T>(
    d: D,
    check: fn(&str, &str) -> Result<T, String>,
) -> Result<Option<Vec<T>>, D::Error> {
    struct Entries<T>(fn(&str, &str) -> Result<T, String>);
    impl<'de, T> Visitor<'de> for Entries<T> {
        type Value = Option<Vec<T>>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a mapping of names to values")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut seen = BTreeMap::new();
            let mut out = Vec::new();
            while let Some(key) = map.next_key::<String>()? {
                let value: String = map.next_value()?;
                if seen.insert(key.clone(), ()).is_some() {
                    return Err(de::Error::custom(format!("duplicate key '{key}'")));
                }
                out.push((self.0)(&key, &value).map_err(de::Error::custom)?);
            }
            Ok(Some(out))
        }
    }
    d.deserialize_map(Entries(check))
}

fn headers<'de, D: de::Deserializer<'de>>(d: D) -> Result<Option<Vec<ExtraHeader>>, D::Error> {
    text_map(d, |k, v| {
        parse_header(&format!("{k}={v}")).map_err(|e| format!("header '{k}': {e}"))
    })
}

fn params<'de, D: de::Deserializer<'de>>(d: D) -> Result<Option<Vec<(String, String)>>, D::Error> {
    text_map(d, |k, v| parse_param(&format!("{k}={v}")))
}
