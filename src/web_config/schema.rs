//! The file format: what exporter-toolkit's YAML may hold, read as Go's strict
//! YAML decoding reads it, and the files it names, read and fingerprinted together.
//!
//! exporter-toolkit decodes the file with `yaml.v2`'s `UnmarshalStrict`: unknown
//! and repeated keys are errors, booleans may be spelled the YAML 1.1 way
//! (`yes`, `no`, `on`, `off`), a string field takes any scalar (`X-XSS-Protection: 1`,
//! which serde_yaml_ng also reads as text), and a duration is a Go duration
//! string or a number of nanoseconds. The types here follow those rules, so that
//! a file written for any other exporter means the same here.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ring::digest;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use super::WebConfigError;

/// The whole file.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub tls_server_config: Option<RawTls>,
    #[serde(default)]
    pub http_server_config: Option<RawHttp>,
    #[serde(default)]
    pub basic_auth_users: Option<UniqueMap>,
    #[serde(default)]
    pub rate_limit: Option<RawRateLimit>,
}

/// `tls_server_config`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub cert: Option<String>,
    pub key: Option<String>,
    pub client_ca: Option<String>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub client_ca_file: Option<PathBuf>,
    pub client_auth_type: Option<String>,
    pub client_allowed_sans: Option<Vec<String>>,
    pub min_version: Option<String>,
    pub max_version: Option<String>,
    pub cipher_suites: Option<Vec<String>>,
    #[serde(default, deserialize_with = "yaml11_bool")]
    pub prefer_server_cipher_suites: Option<bool>,
    pub curve_preferences: Option<Vec<String>>,
}

/// `http_server_config`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHttp {
    #[serde(default, deserialize_with = "yaml11_bool")]
    pub http2: Option<bool>,
    pub headers: Option<UniqueMap>,
}

/// `rate_limit`: one request per `interval` on average, `burst` at once.
#[derive(Deserialize, Default, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRateLimit {
    #[serde(default)]
    pub burst: u32,
    #[serde(default, deserialize_with = "go_duration")]
    pub interval: Duration,
}

pub(super) fn non_empty<T: AsRef<std::ffi::OsStr>>(v: &Option<T>) -> Option<&T> {
    v.as_ref().filter(|s| !s.as_ref().is_empty())
}

impl RawTls {
    /// Whether TLS is asked for at all, decided as exporter-toolkit's
    /// `IsEnabled` decides it: any certificate, key, CA or client auth policy.
    pub fn is_enabled(&self) -> bool {
        non_empty(&self.cert).is_some()
            || non_empty(&self.key).is_some()
            || non_empty(&self.client_ca).is_some()
            || non_empty(&self.cert_file).is_some()
            || non_empty(&self.key_file).is_some()
            || non_empty(&self.client_ca_file).is_some()
            || non_empty(&self.client_auth_type).is_some()
    }
}

/// A string map that refuses a key given twice (as Go's strict YAML decoding
/// does): a user listed twice is a mistake, not a second password.
#[derive(Default)]
pub(super) struct UniqueMap(pub BTreeMap<String, String>);

impl<'de> Deserialize<'de> for UniqueMap {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MapVisitor;
        impl<'de> Visitor<'de> for MapVisitor {
            type Value = UniqueMap;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of strings")
            }
            fn visit_unit<E: de::Error>(self) -> Result<UniqueMap, E> {
                Ok(UniqueMap::default())
            }
            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<UniqueMap, A::Error> {
                let mut map = BTreeMap::new();
                while let Some((key, value)) = access.next_entry::<String, String>()? {
                    if map.contains_key(&key) {
                        return Err(de::Error::custom(format!("duplicate key '{key}'")));
                    }
                    map.insert(key, value);
                }
                Ok(UniqueMap(map))
            }
        }
        deserializer.deserialize_map(MapVisitor)
    }
}

/// A boolean as YAML 1.1 (and so `yaml.v2`) spells it: `true`/`false`, and also
/// `yes`/`no`, `on`/`off`, `y`/`n`, in lower, title or upper case.
fn yaml11_bool<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    let Some(text) = Option::<String>::deserialize(d)? else {
        return Ok(None);
    };
    let spelled = |words: &[&str]| {
        words
            .iter()
            .any(|w| text == *w || text == w.to_uppercase() || text == title_case(w))
    };
    if spelled(&["true", "yes", "y", "on"]) {
        Ok(Some(true))
    } else if spelled(&["false", "no", "n", "off"]) {
        Ok(Some(false))
    } else {
        Err(de::Error::custom(format!(
            "'{text}' is not a boolean (true, false, yes, no, on, off)"
        )))
    }
}

fn title_case(word: &str) -> String {
    let mut chars = word.chars();
    chars.next().map_or_else(String::new, |first| {
        first.to_uppercase().chain(chars).collect()
    })
}

/// A Go duration: a string such as `1s`, `500ms` or `1m30s`, or a number of
/// nanoseconds (how `yaml.v2` reads a bare integer into a `time.Duration`).
fn go_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    if let Ok(nanos) = text.parse::<u64>() {
        return Ok(Duration::from_nanos(nanos));
    }
    humantime::parse_duration(&text)
        .map_err(|e| de::Error::custom(format!("'{text}' is not a duration such as 1s ({e})")))
}

/// Everything a configuration is built from, read in one go.
pub(super) struct Sources {
    pub raw: RawConfig,
    pub cert: Option<Vec<u8>>,
    pub key: Option<Vec<u8>>,
    pub client_ca: Option<Vec<u8>>,
    /// Directories holding the file and the files it names: where to watch.
    pub dirs: Vec<PathBuf>,
    /// Settings given twice, with the one that was ignored (for a warning).
    pub ignored: Vec<String>,
}

/// SHA-256 of every byte a configuration was built from.
pub(super) type Fingerprint = [u8; 32];

/// Reads the file and the files it names. The fingerprint covers every byte
/// read (and every read error), so any change to any of them changes it.
pub(super) fn read_sources(path: &Path) -> (Fingerprint, Result<Sources, WebConfigError>) {
    let mut fp = digest::Context::new(&digest::SHA256);
    let result = read_sources_into(path, &mut fp);
    let mut out = [0u8; 32];
    out.copy_from_slice(fp.finish().as_ref());
    (out, result)
}

/// Feeds one length-prefixed part, so that part boundaries cannot shift.
pub(super) fn feed(fp: &mut digest::Context, part: &[u8]) {
    fp.update(&(part.len() as u64).to_be_bytes());
    fp.update(part);
}

fn read_sources_into(path: &Path, fp: &mut digest::Context) -> Result<Sources, WebConfigError> {
    let text = match crate::yaml_limits::read_file(path) {
        Ok(bytes) => bytes,
        Err(err) => {
            feed(fp, format!("error {:?}", err.kind()).as_bytes());
            return Err(WebConfigError::Read(err));
        }
    };
    feed(fp, &text);
    // `web.yml` has the parent "", which names no directory to watch.
    let dir = path
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    sources_from_text(&text, dir, fp)
}

/// Parses the file's text and reads the files it names, relative to `dir`.
pub(super) fn sources_from_text(
    text: &[u8],
    dir: &Path,
    fp: &mut digest::Context,
) -> Result<Sources, WebConfigError> {
    let raw = parse_yaml(text)?;
    let tls = raw.tls_server_config.as_ref();
    let mut dirs = vec![dir.to_path_buf()];
    let mut ignored = Vec::new();
    let mut read = |field: &'static str, file: Option<&PathBuf>, inline: Option<&String>| {
        let file = file.map(|f| dir.join(f));
        if let Some(parent) = file.as_deref().and_then(Path::parent) {
            if !dirs.iter().any(|d| d == parent) {
                dirs.push(parent.to_path_buf());
            }
        }
        if file.is_some() && inline.is_some() {
            ignored.push(field.trim_end_matches("_file").to_string());
        }
        read_referenced(fp, field, file, inline)
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
        dirs,
        ignored,
    })
}

/// The largest certificate, key or CA file read (a PEM bundle of every public
/// root is about 250 KB).
const MAX_REFERENCED_BYTES: u64 = 4 * 1024 * 1024;

/// Reads one file named in the configuration (relative paths are taken from the
/// directory of the web config file, as exporter-toolkit does), or takes the
/// inline PEM given instead. When both are given the file wins, as in
/// exporter-toolkit.
fn read_referenced(
    fp: &mut digest::Context,
    field: &'static str,
    file: Option<PathBuf>,
    inline: Option<&String>,
) -> Result<Option<Vec<u8>>, WebConfigError> {
    let Some(path) = file else {
        return Ok(inline.map(|pem| pem.as_bytes().to_vec()));
    };
    // Bounded like every file the configuration names: this one is read again
    // at every change of the web config, by its watcher.
    match crate::files::read_regular(&path, MAX_REFERENCED_BYTES).map_err(std::io::Error::from) {
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
    crate::yaml_limits::check(text).map_err(|e| WebConfigError::Yaml(e.to_string()))?;
    serde_yaml_ng::from_str(text).map_err(|e| WebConfigError::Yaml(one_line(&e.to_string())))
}

/// The YAML error on one line, without the values it quotes: serde quotes a
/// value of the wrong type (`invalid type: string "…", expected a map`), and
/// that value may be a password or a key written in the wrong place. Field
/// names are quoted with backticks and stay.
fn one_line(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for (i, part) in s.split('"').enumerate() {
        out.push_str(if i % 2 == 1 { "\"…\"" } else { part });
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}
