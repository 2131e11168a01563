//! `--config.file`: the YAML file that describes several accounts.
//!
//! Loading has two steps. [`parse`] reads the text into account drafts: every
//! schema error (an unknown or duplicate key, a bad value, a bad or repeated
//! account name, both or neither token keys) stops it, and names the file, the
//! line and the key path, as `serde_yaml_ng` locates it. [`load`] then resolves
//! each draft into an [`Account`]: it reads the token (file or environment
//! variable) and builds the upstream client once (so that TLS files are loaded),
//! and reports every problem it finds, each with the line of its account.
//!
//! Whatever the file leaves out takes the default of the matching flag, and
//! `defaults:` stands in for any key an account leaves out. Relative paths start
//! at the file's directory.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use url::Url;

use crate::account::{Account, AccountNames};
use crate::aggregate::Status;
use crate::config::{self, Config, ExtraHeader, SizeUnit};
use crate::secret::{Token, TokenSource};
use crate::telemetry::Telemetry;
use crate::upstream::login::secret_problem;
use crate::upstream::{ApiClient, Auth, ClientError, Credentials};

/// One problem with the file, where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file.
    pub file: PathBuf,
    /// Line and column (from 1), when known.
    pub position: Option<(usize, usize)>,
    /// What is wrong, starting with the key path (`accounts[1].api.timeout: …`).
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some((line, column)) => write!(
                f,
                "{}:{line}:{column}: {}",
                self.file.display(),
                self.message
            ),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

/// Every problem found in a configuration file (at least one).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigFileError(pub Vec<Problem>);

impl fmt::Display for ConfigFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "--config.file: {problem}")?;
        }
        Ok(())
    }
}

/// Reads and checks `path` and returns its accounts; `flags` gives the defaults
/// of whatever neither the account nor `defaults:` sets (with `--config.file`
/// no account flag can be given, so those are the flags' own defaults).
pub fn load(path: &Path, flags: &Config) -> Result<Vec<Account>, ConfigFileError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigFileError(vec![Problem {
            file: path.to_path_buf(),
            position: None,
            message: format!("cannot read the file: {e}"),
        }])
    })?;
    let drafts = parse(&text, path, flags)?;
    resolve(drafts, &text, path)
}

/// The number of targets of `accounts` (a discovery account has one).
pub fn target_count(accounts: &[Account]) -> usize {
    accounts.iter().map(|a| a.targets().len()).sum()
}

/// An account as the file describes it, before its token is read.
#[derive(Debug, Clone)]
pub struct Draft {
    /// The account, with a placeholder token.
    pub account: Account,
    /// Where its token comes from.
    pub token: TokenRef,
}

/// Where a drafted account's token comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenRef {
    /// `token_file`, resolved against the file's directory.
    File(PathBuf),
    /// `token_env`: the name of an environment variable.
    Env(String),
    /// `uuid` with `secret_file` or `secret_env`: log in for tokens.
    Login {
        /// The account ID.
        uuid: String,
        /// Where the secret is.
        secret: SecretRef,
        /// The login URL (`api.url` and `api.auth_path`).
        url: Url,
    },
}

/// Where a drafted account's secret comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretRef {
    /// `secret_file`, resolved against the file's directory.
    File(PathBuf),
    /// `secret_env`: the name of an environment variable.
    Env(String),
}

/// Problems a check reports at most: enough for every account's first problem
/// in any file a person wrote, and a bound on the re-reading each costs.
pub const MAX_PROBLEMS: usize = 50;

/// Parses the text of a configuration file (named `path` in errors) into
/// account drafts. A schema error in an account stops the reading of that
/// account only: the file is read again from the next account on, so that one
/// run reports every account's first problem (up to [`MAX_PROBLEMS`]), each
/// with its line and key path. An error outside the accounts stops it.
pub fn parse(text: &str, path: &Path, flags: &Config) -> Result<Vec<Draft>, ConfigFileError> {
    let one = |message: String| {
        ConfigFileError(vec![Problem {
            file: path.to_path_buf(),
            position: None,
            message,
        }])
    };
    crate::yaml_limits::check(text).map_err(|e| {
        ConfigFileError(vec![Problem {
            file: path.to_path_buf(),
            position: e.position(),
            message: e.to_string(),
        }])
    })?;
    // The defaults are read first, so that each account can be completed (and
    // checked) while it is being read, where its position is still known.
    let first: DefaultsOnly =
        serde_yaml_ng::from_str(text).map_err(|e| ConfigFileError(vec![yaml_problem(path, &e)]))?;
    let defaults = first.defaults.unwrap_or_default();
    if defaults.name.is_some() {
        return Err(one(
            "defaults.name: an account's name cannot have a default".into(),
        ));
    }
    let mut problems = Vec::new();
    let mut skip_through = None;
    loop {
        let context = Context {
            defaults: &defaults,
            base: Account::from_flags(flags, placeholder_auth()),
            flags_url: flags.api_url.clone(),
            flags_path: flags.api_path.clone(),
            flags_auth_path: flags.auth_path.clone(),
            dir: path.parent().map(Path::to_path_buf).unwrap_or_default(),
            skip_through,
            reached: std::cell::Cell::new(None),
        };
        match Document(&context).deserialize(serde_yaml_ng::Deserializer::from_str(text)) {
            Ok(drafts) if problems.is_empty() => {
                if drafts.is_empty() {
                    return Err(one(
                        "accounts: the list is empty; describe at least one account".into(),
                    ));
                }
                return Ok(drafts);
            }
            Ok(_) => return Err(ConfigFileError(problems)),
            Err(e) => {
                problems.push(yaml_problem(path, &e));
                // Go on after the account that failed, unless the error was not
                // in a new account (nothing more could be learnt).
                match context.reached.get() {
                    Some(at) if Some(at) != skip_through && problems.len() < MAX_PROBLEMS => {
                        skip_through = Some(at);
                    }
                    _ => return Err(ConfigFileError(problems)),
                }
            }
        }
    }
}

/// Reads every draft's token and builds its client once, collecting every problem.
fn resolve(drafts: Vec<Draft>, text: &str, path: &Path) -> Result<Vec<Account>, ConfigFileError> {
    // Clients built only to be checked count into a registry nobody serves.
    let scratch = Telemetry::new();
    let mut accounts = Vec::with_capacity(drafts.len());
    let mut problems = Vec::new();
    let mut positions = None;
    for (index, draft) in drafts.into_iter().enumerate() {
        let mut account = draft.account;
        let mut trouble = Vec::new();
        match &draft.token {
            TokenRef::File(file) => {
                let source = TokenSource::File(file.clone());
                match source.current() {
                    Ok(_) => {
                        account.auth = Auth::Token {
                            source,
                            from: format!("file {}", file.display()),
                        }
                    }
                    Err(e) => trouble.push(format!("token_file: {e}")),
                }
            }
            TokenRef::Env(name) => match std::env::var(name) {
                Ok(raw) => match Token::new(&raw) {
                    Ok(token) => {
                        account.auth = Auth::Token {
                            source: TokenSource::Fixed(token),
                            from: format!("${name}"),
                        }
                    }
                    Err(e) => trouble.push(format!("token_env: ${name}: {e}")),
                },
                Err(_) => trouble.push(format!(
                    "token_env: the environment variable {name} is not set"
                )),
            },
            TokenRef::Login { uuid, secret, url } => {
                let (secret, secret_from) = match secret {
                    SecretRef::File(file) => {
                        let source = TokenSource::File(file.clone());
                        let from = format!("file {}", file.display());
                        match source.current() {
                            Ok(_) => (Some(source), from),
                            Err(e) => {
                                trouble.push(format!("secret_file: {}", secret_problem(e, &from)));
                                (None, String::new())
                            }
                        }
                    }
                    SecretRef::Env(name) => match std::env::var(name).map(|raw| Token::new(&raw)) {
                        Ok(Ok(secret)) => (Some(TokenSource::Fixed(secret)), format!("${name}")),
                        Ok(Err(e)) => {
                            let problem = secret_problem(e, &format!("${name}"));
                            trouble.push(format!("secret_env: {problem}"));
                            (None, String::new())
                        }
                        Err(_) => {
                            trouble.push(format!(
                                "secret_env: the environment variable {name} is not set"
                            ));
                            (None, String::new())
                        }
                    },
                };
                if let Some(secret) = secret {
                    account.auth = Auth::Login(Credentials {
                        uuid: uuid.clone(),
                        secret,
                        secret_from,
                        url: url.clone(),
                    });
                }
            }
        }
        if let Err(e) = ApiClient::new(
            &account.name,
            account.client.clone(),
            &account.auth,
            scratch.clone(),
        ) {
            trouble.push(client_problem(&e));
        }
        if trouble.is_empty() {
            accounts.push(account);
            continue;
        }
        let position = account_position(&mut positions, text, index);
        for message in trouble {
            problems.push(Problem {
                file: path.to_path_buf(),
                position,
                message: format!("accounts[{index}] ({}): {message}", account.name),
            });
        }
    }
    if problems.is_empty() {
        Ok(accounts)
    } else {
        Err(ConfigFileError(problems))
    }
}

/// The position of the `index`-th account. `serde_yaml_ng` tells positions only
/// with errors, so the positions of every account are found in one pass over
/// the file's events, the first time one is needed (once per file, however many
/// accounts fail).
fn account_position(
    positions: &mut Option<Vec<(usize, usize)>>,
    text: &str,
    index: usize,
) -> Option<(usize, usize)> {
    positions
        .get_or_insert_with(|| crate::yaml_limits::sequence_item_positions(text, "accounts"))
        .get(index)
        .copied()
}

fn placeholder_auth() -> Auth {
    Auth::Token {
        source: TokenSource::Fixed(
            Token::new("unresolved").expect("a fixed word is a valid token"),
        ),
        from: "unresolved".into(),
    }
}

/// The message of a client that cannot be built, with the file's key names.
fn client_problem(err: &ClientError) -> String {
    let key = |flag: &str| match flag {
        "--api.tls.ca-file" => "api.tls.ca_file",
        "--api.tls.cert-file" => "api.tls.cert_file",
        "--api.tls.key-file" => "api.tls.key_file",
        "--api.proxy-url" => "api.proxy_url",
        _ => "api.url",
    };
    match err {
        ClientError::File { flag, path, source } => {
            format!("{}: cannot read {}: {source}", key(flag), path.display())
        }
        ClientError::Invalid { flag, source } => format!("{}: {source}", key(flag)),
        ClientError::HalfIdentity => {
            "api.tls: cert_file and key_file go together: give both or neither".into()
        }
    }
}

/// A problem from a `serde_yaml_ng` error: its message already starts with the
/// key path; its position is moved to the front, as compilers write it.
fn yaml_problem(path: &Path, err: &serde_yaml_ng::Error) -> Problem {
    let position = err.location().map(|l| (l.line(), l.column()));
    let mut message = err.to_string();
    if let Some(at) = message.rfind(" at line ") {
        message.truncate(at);
    }
    Problem {
        file: path.to_path_buf(),
        position,
        message,
    }
}

/// The first pass: the defaults, and the top-level keys checked.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DefaultsOnly {
    #[serde(default)]
    defaults: Option<Entry>,
    #[allow(dead_code)]
    accounts: IgnoredAny,
}

/// What an account, or `defaults:`, may set. Every value is checked while it is
/// read (by the parsers of the matching flags), so that its error has its position.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    #[serde(default, deserialize_with = "name")]
    name: Option<String>,
    #[serde(default)]
    token_file: Option<PathBuf>,
    #[serde(default, deserialize_with = "token_env")]
    token_env: Option<String>,
    #[serde(default, deserialize_with = "uuid")]
    uuid: Option<String>,
    #[serde(default)]
    secret_file: Option<PathBuf>,
    #[serde(default, deserialize_with = "token_env")]
    secret_env: Option<String>,
    #[serde(default, deserialize_with = "datacenters")]
    datacenters: Option<Vec<String>>,
    #[serde(default)]
    api: Api,
    #[serde(default)]
    refresh: Refresh,
    #[serde(default)]
    filters: Filters,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Api {
    #[serde(default, deserialize_with = "base_url")]
    url: Option<Url>,
    #[serde(default, deserialize_with = "api_path")]
    path: Option<String>,
    #[serde(default, deserialize_with = "api_path")]
    auth_path: Option<String>,
    #[serde(default, deserialize_with = "positive_duration")]
    timeout: Option<Duration>,
    #[serde(default, deserialize_with = "page_size")]
    page_size: Option<u32>,
    #[serde(default, deserialize_with = "concurrency")]
    concurrency: Option<u32>,
    #[serde(default, deserialize_with = "requests_per_second")]
    requests_per_second: Option<f64>,
    #[serde(default, deserialize_with = "max_retries")]
    max_retries: Option<u32>,
    #[serde(default, deserialize_with = "size_unit")]
    image_size_unit: Option<SizeUnit>,
    #[serde(default, deserialize_with = "headers")]
    headers: Option<BTreeMap<String, ExtraHeader>>,
    #[serde(default, deserialize_with = "params")]
    params: Option<BTreeMap<String, String>>,
    #[serde(default, deserialize_with = "proxy_url")]
    proxy_url: Option<Url>,
    #[serde(default)]
    tls: Tls,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Tls {
    #[serde(default)]
    ca_file: Option<PathBuf>,
    #[serde(default)]
    cert_file: Option<PathBuf>,
    #[serde(default)]
    key_file: Option<PathBuf>,
    #[serde(default)]
    insecure_skip_verify: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Refresh {
    #[serde(default, deserialize_with = "interval")]
    interval: Option<Duration>,
    #[serde(default, deserialize_with = "positive_duration")]
    stale_after: Option<Duration>,
    #[serde(default, deserialize_with = "positive_duration")]
    timeout: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Filters {
    #[serde(default, deserialize_with = "filter")]
    image_type: Option<String>,
    #[serde(default, deserialize_with = "filter")]
    image_name: Option<String>,
    #[serde(default, deserialize_with = "status")]
    status: Option<Status>,
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
        self.visit_str(&v.to_string())
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

fn token_env<'de, D: de::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
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
                let key = config::parse_datacenter(&key).map_err(de::Error::custom)?;
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
    checked(d, "an http or https URL", config::parse_base_url)
}

fn proxy_url<'de, D: de::Deserializer<'de>>(d: D) -> Result<Option<Url>, D::Error> {
    checked(d, "a proxy URL", config::parse_proxy_url)
}

fn uuid<'de, D: de::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    checked(d, "an account ID", config::parse_uuid)
}

fn api_path<'de, D: de::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    checked(d, "a path", config::parse_api_path)
}

fn positive_duration<'de, D: de::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    checked(d, "a duration such as 30s", config::parse_positive_duration)
}

fn interval<'de, D: de::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    checked(d, "a duration of at least 1s", config::parse_interval)
}

fn bounded(s: &str, min: u32, max: u32) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(format!("'{s}' is not a whole number from {min} to {max}")),
    }
}

fn page_size<'de, D: de::Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    checked(d, "a page size", |s| bounded(s, 1, 10_000))
}

fn concurrency<'de, D: de::Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    checked(d, "a number of requests", |s| bounded(s, 1, 256))
}

fn max_retries<'de, D: de::Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    checked(d, "a number of retries", |s| bounded(s, 0, 20))
}

fn requests_per_second<'de, D: de::Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    checked(d, "a rate", |s| match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r >= 0.0 => Ok(r),
        _ => Err(format!(
            "'{s}' is not a rate of requests per second (0: no limit)"
        )),
    })
}

fn size_unit<'de, D: de::Deserializer<'de>>(d: D) -> Result<Option<SizeUnit>, D::Error> {
    checked(d, "a size unit", |s| {
        <SizeUnit as clap::ValueEnum>::from_str(s, true)
            .map_err(|_| format!("'{s}' is not one of B, KB, MB, GB, KiB, MiB, GiB, TiB"))
    })
}

fn filter<'de, D: de::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    checked(d, "a filter value", config::parse_filter)
}

fn status<'de, D: de::Deserializer<'de>>(d: D) -> Result<Option<Status>, D::Error> {
    checked(d, "a status", config::parse_status_filter)
}

/// A mapping of text to text whose every entry `check` accepts; a repeated key
/// is an error (a YAML mapping would otherwise keep the last one silently).
fn text_map<'de, D: de::Deserializer<'de>, T>(
    d: D,
    check: fn(&str, &str) -> Result<T, String>,
) -> Result<Option<BTreeMap<String, T>>, D::Error> {
    struct Entries<T>(fn(&str, &str) -> Result<T, String>);
    impl<'de, T> Visitor<'de> for Entries<T> {
        type Value = Option<BTreeMap<String, T>>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a mapping of names to values")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some(key) = map.next_key::<String>()? {
                let value: String = map.next_value()?;
                let checked = (self.0)(&key, &value).map_err(de::Error::custom)?;
                if out.insert(key.clone(), checked).is_some() {
                    return Err(de::Error::custom(format!("duplicate key '{key}'")));
                }
            }
            Ok(Some(out))
        }
    }
    d.deserialize_map(Entries(check))
}

fn headers<'de, D: de::Deserializer<'de>>(
    d: D,
) -> Result<Option<BTreeMap<String, ExtraHeader>>, D::Error> {
    text_map(d, |k, v| {
        config::parse_header(&format!("{k}={v}")).map_err(|e| format!("header '{k}': {e}"))
    })
}

fn params<'de, D: de::Deserializer<'de>>(
    d: D,
) -> Result<Option<BTreeMap<String, String>>, D::Error> {
    text_map(d, |k, v| {
        config::parse_param(&format!("{k}={v}")).map(|(_, v)| v)
    })
}

/// What every account of one parse shares.
struct Context<'a> {
    defaults: &'a Entry,
    /// The account the flags' defaults describe, which every account starts from.
    base: Account,
    /// `--api.url` and `--api.path` (their defaults), joined with the file's.
    flags_url: Url,
    flags_path: String,
    flags_auth_path: String,
    dir: PathBuf,
    /// Skip the accounts up to this one (already reported by an earlier read).
    skip_through: Option<usize>,
    /// The account being read, to know where an error was.
    reached: std::cell::Cell<Option<usize>>,
}

/// The second pass over the whole document.
struct Document<'a>(&'a Context<'a>);

impl<'de> DeserializeSeed<'de> for Document<'_> {
    type Value = Vec<Draft>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Document<'_> {
    type Value = Vec<Draft>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mapping with defaults and accounts")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        // The first pass has checked the keys; only the accounts matter here.
        let mut drafts = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            if key == "accounts" {
                drafts = map.next_value_seed(Accounts(self.0))?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(drafts)
    }
}

struct Accounts<'a>(&'a Context<'a>);

impl<'de> DeserializeSeed<'de> for Accounts<'_> {
    type Value = Vec<Draft>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Accounts<'_> {
    type Value = Vec<Draft>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of accounts")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut drafts: Vec<Draft> = Vec::new();
        for index in 0.. {
            let seed = AccountSeed {
                context: self.0,
                index,
                before: &drafts,
            };
            match seq.next_element_seed(seed)? {
                Some(Some(draft)) => drafts.push(draft),
                Some(None) => {}
                None => break,
            }
        }
        Ok(drafts)
    }
}

struct AccountSeed<'a> {
    context: &'a Context<'a>,
    index: usize,
    before: &'a [Draft],
}

impl<'de> DeserializeSeed<'de> for AccountSeed<'_> {
    /// `None` for an account skipped (see [`Context::skip_through`]).
    type Value = Option<Draft>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        if self
            .context
            .skip_through
            .is_some_and(|last| self.index <= last)
        {
            IgnoredAny::deserialize(d)?;
            return Ok(None);
        }
        self.context.reached.set(Some(self.index));
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for AccountSeed<'_> {
    type Value = Option<Draft>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an account")
    }

    // Checked here, inside the account's mapping, so that an error has its position.
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        let entry = Entry::deserialize(de::value::MapAccessDeserializer::new(map))?;
        let name = entry
            .name
            .clone()
            .ok_or_else(|| de::Error::custom("missing field `name`"))?;
        if let Some(i) = self.before.iter().position(|d| d.account.name == name) {
            return Err(de::Error::custom(format!(
                "account name '{name}' is already used by accounts[{i}]"
            )));
        }
        complete(&name, &entry, self.context)
            .map(Some)
            .map_err(de::Error::custom)
    }
}

/// An account from its entry, the defaults and the flags' defaults, in that order.
fn complete(name: &str, entry: &Entry, context: &Context<'_>) -> Result<Draft, String> {
    let defaults = context.defaults;
    let resolve = |p: &PathBuf| context.dir.join(p);
    let (a, d) = (&entry.api, &defaults.api);
    let url = a
        .url
        .as_ref()
        .or(d.url.as_ref())
        .unwrap_or(&context.flags_url);
    let auth_path = a
        .auth_path
        .as_ref()
        .or(d.auth_path.as_ref())
        .unwrap_or(&context.flags_auth_path);
    // The account's own keys win; the defaults' only when it names no way at all
    // to authenticate, so a default token never mixes with an account's uuid.
    let token = match authentication(entry, &resolve, url, auth_path)? {
        Some(token) => token,
        None => match authentication(defaults, &resolve, url, auth_path)
            .map_err(|e| format!("defaults: {e}"))?
        {
            Some(token) => token,
            None => {
                return Err(format!(
                    "account '{name}' has no way to authenticate: give uuid with secret_file or secret_env (credentials), or token_file or token_env (a static token)"
                ))
            }
        },
    };
    let mut account = context.base.clone();
    account.name = name.to_string();
    let client = &mut account.client;
    let path = a
        .path
        .as_ref()
        .or(d.path.as_ref())
        .unwrap_or(&context.flags_path);
    client.url = join(url, path);
    pick(&mut client.timeout, a.timeout, d.timeout);
    pick(&mut client.page_size, a.page_size, d.page_size);
    pick(&mut client.max_retries, a.max_retries, d.max_retries);
    pick(&mut client.size_unit, a.image_size_unit, d.image_size_unit);
    pick(&mut account.concurrency, a.concurrency, d.concurrency);
    pick(
        &mut account.requests_per_second,
        a.requests_per_second,
        d.requests_per_second,
    );
    if let Some(proxy) = a.proxy_url.as_ref().or(d.proxy_url.as_ref()) {
        client.proxy_url = Some(proxy.clone());
    }
    // Extra headers and parameters add up, the account's winning over the defaults'.
    let mut headers = d.headers.clone().unwrap_or_default();
    headers.extend(a.headers.clone().unwrap_or_default());
    client.headers = headers.into_values().collect();
    let mut params = d.params.clone().unwrap_or_default();
    params.extend(a.params.clone().unwrap_or_default());
    client.params = params.into_iter().collect();
    let (t, dt) = (&a.tls, &d.tls);
    let file = |own: &Option<PathBuf>, default: &Option<PathBuf>| {
        own.as_ref().or(default.as_ref()).map(resolve)
    };
    client.tls.ca_file = file(&t.ca_file, &dt.ca_file);
    client.tls.cert_file = file(&t.cert_file, &dt.cert_file);
    client.tls.key_file = file(&t.key_file, &dt.key_file);
    pick(
        &mut client.tls.insecure_skip_verify,
        t.insecure_skip_verify,
        dt.insecure_skip_verify,
    );
    let (f, df) = (&entry.filters, &defaults.filters);
    client.filters.image_type = f.image_type.clone().or(df.image_type.clone());
    client.filters.image_name = f.image_name.clone().or(df.image_name.clone());
    client.filters.status = f.status.or(df.status);
    if let Some(dcs) = entry.datacenters.as_ref().or(defaults.datacenters.as_ref()) {
        account.datacenters = dcs.clone();
    }
    let (r, dr) = (&entry.refresh, &defaults.refresh);
    let refresh = &mut account.refresh;
    pick(&mut refresh.interval, r.interval, dr.interval);
    pick(&mut refresh.stale_after, r.stale_after, dr.stale_after);
    // A backstop against a pass that never ends, not a bound on a slow one.
    refresh.timeout = r
        .timeout
        .or(dr.timeout)
        .unwrap_or_else(|| crate::account::RefreshSettings::default_timeout(refresh.interval));
    Ok(Draft { account, token })
}

/// How `entry` says to authenticate: `None` when it names no way at all; an
/// error naming the keys when it names two, or half of the credentials.
fn authentication(
    entry: &Entry,
    resolve: &dyn Fn(&PathBuf) -> PathBuf,
    url: &Url,
    auth_path: &str,
) -> Result<Option<TokenRef>, String> {
    let secret = match (&entry.secret_file, &entry.secret_env) {
        (Some(_), Some(_)) => return Err("give secret_file or secret_env, not both".into()),
        (Some(file), None) => Some(SecretRef::File(resolve(file))),
        (None, Some(env)) => Some(SecretRef::Env(env.clone())),
        (None, None) => None,
    };
    let token = match (&entry.token_file, &entry.token_env) {
        (Some(_), Some(_)) => return Err("give token_file or token_env, not both".into()),
        (Some(file), None) => Some(TokenRef::File(resolve(file))),
        (None, Some(env)) => Some(TokenRef::Env(env.clone())),
        (None, None) => None,
    };
    match (&entry.uuid, secret, token) {
        (Some(_), _, Some(_)) => {
            Err("give uuid (credentials) or token_file/token_env (a static token), not both".into())
        }
        (Some(uuid), Some(secret), None) => Ok(Some(TokenRef::Login {
            uuid: uuid.clone(),
            secret,
            url: join(url, auth_path),
        })),
        (Some(_), None, None) => {
            Err("uuid needs its secret: give secret_file or secret_env".into())
        }
        (None, Some(_), _) => Err("secret_file/secret_env need the account's uuid".into()),
        (None, None, token) => Ok(token),
    }
}

fn pick<T: Copy>(slot: &mut T, own: Option<T>, default: Option<T>) {
    if let Some(value) = own.or(default) {
        *slot = value;
    }
}

fn join(base: &Url, path: &str) -> Url {
    config::join_path(base, path)
}

/// Reloads `--config.file` on SIGHUP and `POST /-/reload`: the new file is
/// checked whole first; only then are its accounts handed to the scheduler
/// (which keeps every target whose account did not change). A file with any
/// problem changes nothing: the running configuration stays, and the reload
/// gauge goes to 0 until a reload succeeds.
pub struct Reloader {
    path: Option<PathBuf>,
    flags: Config,
    names: std::sync::Arc<AccountNames>,
    telemetry: Telemetry,
    scheduler: tokio::sync::mpsc::UnboundedSender<Vec<Account>>,
}

/// What a reload did.
#[derive(Debug)]
pub enum Reloaded {
    /// The new accounts were handed to the scheduler.
    Applied {
        /// Accounts in the file.
        accounts: usize,
        /// Their targets (over every shard).
        targets: usize,
    },
    /// No `--config.file`: nothing to reload.
    NoFile,
}

impl Reloader {
    /// A reloader of `path` (none without `--config.file`) that hands new
    /// accounts to `scheduler`.
    pub fn new(
        path: Option<PathBuf>,
        flags: Config,
        names: std::sync::Arc<AccountNames>,
        telemetry: Telemetry,
        scheduler: tokio::sync::mpsc::UnboundedSender<Vec<Account>>,
    ) -> Self {
        Reloader {
            path,
            flags,
            names,
            telemetry,
            scheduler,
        }
    }

    /// Loads the file again and, when it has no problem, applies it. Blocking
    /// (it reads files and builds clients): call it off the async workers. The
    /// one caller is the reload worker of [`crate::reloads`], which runs one
    /// reload at a time, so two can never hand over their lists out of order.
    pub fn reload(&self) -> Result<Reloaded, ConfigFileError> {
        let Some(path) = &self.path else {
            tracing::info!("no --config.file to reload; token and secret files are read when used and the web configuration by its watcher");
            return Ok(Reloaded::NoFile);
        };
        match load(path, &self.flags) {
            Ok(accounts) => {
                let (n, targets) = (accounts.len(), target_count(&accounts));
                self.names.set(&accounts);
                // The scheduler ends only at shutdown, when nothing is served any more.
                let _ = self.scheduler.send(accounts);
                self.telemetry.config_loaded(true);
                tracing::info!(file = %path.display(), accounts = n, targets, "configuration reloaded");
                Ok(Reloaded::Applied {
                    accounts: n,
                    targets,
                })
            }
            Err(err) => {
                self.telemetry.config_loaded(false);
                for problem in &err.0 {
                    tracing::error!(problem = %problem, "cannot reload --config.file; the running configuration stays");
                }
                Err(err)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    fn flags() -> Config {
        Config::try_parse_from(["finovy-image-exporter"]).unwrap()
    }

    /// The drafts, or the first problem.
    fn parse_text(text: &str) -> Result<Vec<Draft>, Problem> {
        parse(text, Path::new("/etc/finovy/config.yaml"), &flags()).map_err(|e| e.0[0].clone())
    }

    #[test]
    fn three_typos_in_three_accounts_are_three_problems_in_one_read() {
        let text = "accounts:\n  - name: a\n    token_env: T\n    refresh: {intervall: 1m}\n  - name: b\n    token_env: T\n  - name: c\n    tokne_env: T\n  - name: d\n    token_env: T\n    datacenters: [HZ, HZ]\n";
        let err = parse(text, Path::new("/etc/finovy/config.yaml"), &flags()).unwrap_err();
        let found: Vec<(Option<usize>, &str)> = err
            .0
            .iter()
            .map(|p| (p.position.map(|p| p.0), p.message.as_str()))
            .collect();
        assert_eq!(found.len(), 3, "{err}");
        assert_eq!(found[0].0, Some(4), "{err}");
        assert!(
            found[0]
                .1
                .starts_with("accounts[0].refresh: unknown field `intervall`"),
            "{err}"
        );
        assert_eq!(found[1].0, Some(8), "{err}");
        assert!(
            found[1]
                .1
                .starts_with("accounts[2]: unknown field `tokne_env`"),
            "{err}"
        );
        assert_eq!(found[2].0, Some(11), "{err}");
        assert!(found[2].1.contains("'HZ' is listed twice"), "{err}");
    }

    #[test]
    fn the_spec_example_parses_with_defaults_and_relative_paths() {
        let text = r#"
defaults:
  api:
    url: https://client.xuandashi.com
    timeout: 10s
    page_size: 50
    concurrency: 4
    requests_per_second: 2.5
    headers: {X-Extra: value}
    params: {lang: en}
    tls: {ca_file: ca.pem}
  refresh: {interval: 60s, stale_after: 5m}
  filters: {image_type: Windows, status: available}
accounts:
  - name: prod
    token_file: secrets/prod-token
    datacenters: [HZ, SH]
  - name: staging
    token_env: FINOVY_STAGING_TOKEN
    api: {url: https://staging.example/base, concurrency: 2, headers: {X-Team: b}}
    refresh: {interval: 2m, timeout: 30s}
  - name: sandbox
    uuid: A27550582
    secret_file: secrets/sandbox-secret
    api: {url: https://client-sandbox.xuandashi.com, auth_path: /v1/auth/getToken}
"#;
        let drafts = parse_text(text).unwrap();
        assert_eq!(drafts.len(), 3);
        assert_eq!(
            drafts[2].token,
            TokenRef::Login {
                uuid: "A27550582".into(),
                secret: SecretRef::File(PathBuf::from("/etc/finovy/secrets/sandbox-secret")),
                url: "https://client-sandbox.xuandashi.com/v1/auth/getToken"
                    .parse()
                    .unwrap(),
            }
        );
        let (prod, staging) = (&drafts[0], &drafts[1]);
        assert_eq!(
            prod.token,
            TokenRef::File(PathBuf::from("/etc/finovy/secrets/prod-token"))
        );
        assert_eq!(prod.account.datacenters, ["HZ", "SH"]);
        assert_eq!(prod.account.client.page_size, 50);
        assert_eq!(prod.account.concurrency, 4);
        assert_eq!(prod.account.requests_per_second, 2.5);
        assert_eq!(
            prod.account.client.tls.ca_file.as_deref(),
            Some(Path::new("/etc/finovy/ca.pem"))
        );
        assert_eq!(prod.account.client.filters.status, Some(Status::Available));
        // Ten intervals, and at least five minutes: a backstop, not a bound.
        assert_eq!(prod.account.refresh.timeout, Duration::from_secs(600));
        assert_eq!(staging.token, TokenRef::Env("FINOVY_STAGING_TOKEN".into()));
        assert_eq!(
            staging.account.client.url.as_str(),
            "https://staging.example/base/v1/open/image/personal/getList"
        );
        assert_eq!(staging.account.concurrency, 2);
        assert_eq!(staging.account.client.headers.len(), 2, "headers add up");
        assert!(staging.account.datacenters.is_empty(), "discovery");
        assert_eq!(staging.account.refresh.interval, Duration::from_secs(120));
        assert_eq!(staging.account.refresh.timeout, Duration::from_secs(30));
    }

    #[test]
    fn every_schema_error_names_its_line_and_key_path() {
        for (text, line, wanted) in [
            (
                "accounts:\n  - name: a\n    token_env: T\n    api: {timeot: 3s}\n",
                4,
                "accounts[0].api: unknown field `timeot`",
            ),
            (
                "accounts:\n  - name: a\n    token_env: T\n  - name: b\n    token_env: T\n    api:\n      timeout: soon\n",
                7,
                "accounts[1].api.timeout: 'soon' is not a duration",
            ),
            (
                "accounts:\n  - name: a\n    token_env: T\n  - name: a\n    token_env: U\n",
                4,
                "accounts[1]: account name 'a' is already used by accounts[0]",
            ),
            (
                "accounts:\n  - name: a b\n    token_env: T\n",
                2,
                "accounts[0].name: 'a b' is not an account name",
            ),
            (
                "accounts:\n  - name: a\n    token_env: T\n    token_file: t\n",
                2,
                "accounts[0]: give token_file or token_env, not both",
            ),
            (
                "accounts:\n  - name: a\n",
                2,
                "accounts[0]: account 'a' has no way to authenticate: give uuid with secret_file or secret_env",
            ),
            (
                "accounts:\n  - name: a\n    token_env: T\n    refresh: {interval: 500ms}\n",
                4,
                "accounts[0].refresh.interval: '500ms' is below the 1s minimum",
            ),
            (
                "accounts:\n  - name: a\n    token_env: T\n    name: b\n",
                2,
                "accounts[0]: duplicate field `name`",
            ),
            (
                "accounts:\n  - name: a\n    token_env: T\n    api:\n      headers:\n        X-A: 1\n        X-A: 2\n",
                6,
                "accounts[0].api.headers: duplicate key 'X-A'",
            ),
            ("acounts: []\n", 1, "unknown field `acounts`"),
            (
                "accounts:\n  - name: a\n    uuid: A1\n    token_env: T\n",
                2,
                "accounts[0]: give uuid (credentials) or token_file/token_env (a static token), not both",
            ),
            (
                "accounts:\n  - name: a\n    uuid: A1\n",
                2,
                "accounts[0]: uuid needs its secret: give secret_file or secret_env",
            ),
            (
                "accounts:\n  - name: a\n    token_env: T\n    secret_env: S\n",
                2,
                "accounts[0]: secret_file/secret_env need the account's uuid",
            ),
            (
                "accounts:\n  - name: a\n    uuid: 'A 1'\n    secret_env: S\n",
                3,
                "accounts[0].uuid: an account ID has no spaces",
            ),
        ] {
            let problem = parse_text(text).expect_err(wanted);
            assert!(problem.message.starts_with(wanted), "{problem}");
            assert_eq!(problem.position.map(|p| p.0), Some(line), "{problem}");
            assert!(problem
                .to_string()
                .starts_with(&format!("/etc/finovy/config.yaml:{line}:")));
        }
    }

    #[test]
    fn token_and_tls_problems_are_all_reported_with_their_account_line() {
        let dir = std::env::temp_dir().join(format!("finovy-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.yaml");
        std::fs::write(dir.join("good-token"), "t0ken\n").unwrap();
        let text = "accounts:\n  - name: ok\n    token_file: good-token\n  - name: missing\n    token_file: nowhere\n  - name: env\n    token_env: FINOVY_TEST_SURELY_UNSET_VARIABLE\n  - name: tls\n    token_file: good-token\n    api: {tls: {ca_file: no-ca.pem}}\n";
        std::fs::write(&path, text).unwrap();
        let err = load(&path, &flags()).unwrap_err();
        let lines: Vec<String> = err.0.iter().map(ToString::to_string).collect();
        assert_eq!(lines.len(), 3, "{lines:#?}");
        assert!(lines[0].contains(":4:") && lines[0].contains("accounts[1] (missing): token_file"));
        assert!(lines[1].contains(":6:") && lines[1].contains("FINOVY_TEST_SURELY_UNSET_VARIABLE"));
        assert!(lines[2].contains(":8:") && lines[2].contains("api.tls.ca_file"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
