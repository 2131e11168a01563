//! An account: how it authenticates, its upstream settings, and the targets it yields.
//!
//! An account is made one way, whoever describes it: [`complete`] takes its
//! [`Entry`] (the flags' account, or one of the file), the file's `defaults:`
//! and the flags' defaults, and [`finish`] reads its token or secret and builds
//! its client once. The flags' account goes through both as the file's do; only
//! the names in its error messages differ ([`Origin`]).
//!
//! Everything below an account is fixed once it is built: the scheduler compares
//! accounts of two configurations by value to tell which targets changed, so a
//! target whose account did not change keeps its schedule, state and series.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use url::Url;

use crate::config::Config;
use crate::secret::{Token, TokenSource, SECRET_ENV, TOKEN_ENV};
pub use crate::settings::DEFAULT_ACCOUNT;
use crate::settings::{join_path, Entry, Origin};
use crate::telemetry::Telemetry;
use crate::upstream::login::secret_problem;
use crate::upstream::{
    ApiClient, Auth, ClientConfig, ClientError, Credentials, Filters, UpstreamTls,
};

/// How often a target refreshes and how long its data lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefreshSettings {
    /// Time between the starts of two passes.
    pub interval: Duration,
    /// A datacenter's image series are dropped after this long without success.
    pub stale_after: Duration,
    /// A pass that takes longer fails with reason `timeout`: the backstop
    /// against a pass that never ends ([`RefreshSettings::default_timeout`]).
    pub timeout: Duration,
}

impl RefreshSettings {
    /// `refresh.timeout` when none is given: ten intervals, and at least five
    /// minutes. A pass that outlives its interval is not a failure (the next one
    /// waits for it, and an upstream asking to wait with `Retry-After` must be
    /// obeyed, not raced), so the timeout only ends a pass that never would.
    pub fn default_timeout(interval: Duration) -> Duration {
        interval.saturating_mul(10).max(Duration::from_secs(300))
    }
}

/// One account, ready to refresh.
#[derive(Debug, Clone)]
pub struct Account {
    /// The `account` label.
    pub name: String,
    /// How it authenticates: a static token, or credentials to log in with.
    pub auth: Auth,
    /// Its upstream client settings.
    pub client: ClientConfig,
    /// Requests in flight at most, over all its datacenters.
    pub concurrency: u32,
    /// Request attempts per second at most (0: no limit).
    pub requests_per_second: f64,
    /// Datacenters to refresh; empty: discover them.
    pub datacenters: Vec<String>,
    /// Its schedule.
    pub refresh: RefreshSettings,
}

impl Account {
    /// Its targets: one per datacenter, or one discovery target.
    pub fn targets(&self) -> Vec<TargetKey> {
        if self.datacenters.is_empty() {
            vec![TargetKey::discovery(&self.name)]
        } else {
            self.datacenters
                .iter()
                .map(|dc| TargetKey::datacenter(&self.name, dc))
                .collect()
        }
    }

    /// Whether `other` would refresh exactly as this one does (how it
    /// authenticates included), so that its running targets can be kept as they are.
    pub fn same_settings(&self, other: &Account) -> bool {
        self.name == other.name
            && self.auth == other.auth
            && self.client == other.client
            && self.concurrency == other.concurrency
            && self.requests_per_second == other.requests_per_second
            && self.refresh == other.refresh
    }
}

/// Where an account's settings come from, the first that has one winning: its
/// own entry, the file's `defaults:`, the flags' defaults.
#[derive(Debug, Clone, Copy)]
pub struct Layers<'a> {
    /// The account's own entry.
    pub own: &'a Entry,
    /// The file's `defaults:` (empty for the flags' account).
    pub defaults: &'a Entry,
    /// The flags' entry, which holds every flag default (empty for the flags'
    /// own account, whose entry is `own`).
    pub base: &'a Entry,
    /// Relative file paths of `own` and `defaults` start here (the file's
    /// directory; empty for the flags).
    pub dir: &'a Path,
}

/// Nothing set: the `defaults:` and `base` of the flags' own account.
static EMPTY: std::sync::LazyLock<Entry> = std::sync::LazyLock::new(Entry::default);

impl<'a> Layers<'a> {
    /// The layers of the flags' own account: its entry alone.
    pub fn flags(entry: &'a Entry) -> Self {
        Layers {
            own: entry,
            defaults: &EMPTY,
            base: &EMPTY,
            dir: Path::new(""),
        }
    }

    /// The first layer's value of a setting.
    fn pick<T: Clone>(&self, get: impl Fn(&Entry) -> Option<&T>) -> Option<T> {
        [self.own, self.defaults, self.base]
            .into_iter()
            .find_map(get)
            .cloned()
    }

    /// The first layer's value of a setting every flag default gives.
    fn required<T: Clone>(
        &self,
        key: &str,
        get: impl Fn(&Entry) -> Option<&T>,
    ) -> Result<T, String> {
        self.pick(get)
            .ok_or_else(|| format!("{key}: no value and no default"))
    }

    /// The first layer's file path, resolved against [`Layers::dir`].
    fn path(&self, get: impl Fn(&Entry) -> Option<&PathBuf>) -> Option<PathBuf> {
        self.pick(get).map(|p| self.dir.join(p))
    }

    /// Every layer's entries of a list that adds up (headers, parameters), the
    /// base's first; an entry replaces an earlier one of the same name.
    fn merged<T: Clone, K: PartialEq>(
        &self,
        get: impl Fn(&Entry) -> Option<&Vec<T>>,
        key: impl Fn(&T) -> K,
    ) -> Vec<T> {
        let mut out: Vec<T> = Vec::new();
        for item in [self.base, self.defaults, self.own]
            .into_iter()
            .filter_map(get)
            .flatten()
        {
            out.retain(|kept| key(kept) != key(item));
            out.push(item.clone());
        }
        out
    }
}

/// An account as its settings describe it, before its token or secret is read.
#[derive(Debug, Clone)]
pub struct Draft {
    /// The account, with a placeholder for how it authenticates.
    pub account: Account,
    /// Where its token, or its secret, comes from.
    pub token: TokenRef,
}

/// Where a drafted account's token comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenRef {
    /// `token_file` (`--api.token-file`).
    File(PathBuf),
    /// `token_env`: the name of an environment variable (`FINOVY_ACCESS_TOKEN`
    /// for the flags).
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
    /// `secret_file` (`--api.secret-file`).
    File(PathBuf),
    /// `secret_env`: the name of an environment variable (`FINOVY_API_SECRET`
    /// for the flags).
    Env(String),
}

impl Entry {
    /// The flags' entry as their own account's: named [`DEFAULT_ACCOUNT`], its
    /// token from `FINOVY_ACCESS_TOKEN` when no token file is named, its secret
    /// from `FINOVY_API_SECRET` when `--api.uuid` is given without a secret
    /// file. A variable that is set counts even where it cannot be used (the
    /// token's with `--api.uuid`), so that the mix is an error, not a surprise.
    pub fn of_flags(&self) -> Entry {
        let set = |var: &str| std::env::var_os(var).is_some();
        let mut entry = self.clone();
        entry.name = Some(DEFAULT_ACCOUNT.to_string());
        if entry.token_file.is_none() && set(TOKEN_ENV) {
            entry.token_env = Some(TOKEN_ENV.to_string());
        }
        if entry.uuid.is_some() && entry.secret_file.is_none() && set(SECRET_ENV) {
            entry.secret_env = Some(SECRET_ENV.to_string());
        }
        entry
    }
}

/// The account named `name` its layers describe, checked as far as can be
/// without reading a file: the error names the setting as `origin` knows it.
pub fn complete(name: &str, layers: &Layers<'_>, origin: Origin) -> Result<Draft, String> {
    let url: Url = layers.required("api.url", |e| e.api.url.as_ref())?;
    let auth_path: String = layers.required("api.auth_path", |e| e.api.auth_path.as_ref())?;
    let login_url = join_path(&url, &auth_path);
    let resolve = |p: &PathBuf| layers.dir.join(p);
    // The account's own keys win; the defaults' only when it names no way at
    // all to authenticate, so a default token never mixes with an account's
    // uuid. The flags' defaults never authenticate a file's account.
    let own = authentication(layers.own, &resolve, &login_url).map_err(|m| m.words(origin))?;
    let token = match own {
        Some(token) => token,
        None => authentication(layers.defaults, &resolve, &login_url)
            .map_err(|m| format!("defaults: {}", m.words(origin)))?
            .ok_or_else(|| Mix::Nothing(name.to_string()).words(origin))?,
    };
    let placeholder = Auth::Token {
        source: TokenSource::Fixed(Token::new("unresolved").expect("a fixed word is a token")),
        from: "unresolved".into(),
    };
    Ok(Draft {
        account: with_settings(name, layers, origin, placeholder)?,
        token,
    })
}

/// The account named `name` its layers describe, authenticating with `auth`
/// (which [`complete`] leaves for [`finish`] to read, and `--demo` makes up).
pub fn with_settings(
    name: &str,
    layers: &Layers<'_>,
    origin: Origin,
    auth: Auth,
) -> Result<Account, String> {
    let url: Url = layers.required("api.url", |e| e.api.url.as_ref())?;
    let path: String = layers.required("api.path", |e| e.api.path.as_ref())?;
    let datacenters = layers.pick(|e| e.datacenters.as_ref()).unwrap_or_default();
    // The file's reader says so with the line; the flags' comma list is checked here.
    for (i, dc) in datacenters.iter().enumerate() {
        if datacenters[..i].contains(dc) {
            return Err(origin.say("datacenters", format!("'{dc}' is listed twice")));
        }
    }
    let interval = layers.required("refresh.interval", |e| e.refresh.interval.as_ref())?;
    Ok(Account {
        name: name.to_string(),
        auth,
        client: ClientConfig {
            url: join_path(&url, &path),
            timeout: layers.required("api.timeout", |e| e.api.timeout.as_ref())?,
            page_size: layers.required("api.page_size", |e| e.api.page_size.as_ref())?,
            headers: layers.merged(|e| e.api.headers.as_ref(), |h| h.name.clone()),
            params: layers.merged(|e| e.api.params.as_ref(), |(k, _)| k.clone()),
            filters: Filters {
                image_type: layers.pick(|e| e.filters.image_type.as_ref()),
                image_name: layers.pick(|e| e.filters.image_name.as_ref()),
                status: layers.pick(|e| e.filters.status.as_ref()),
            },
            size_unit: layers
                .required("api.image_size_unit", |e| e.api.image_size_unit.as_ref())?,
            max_retries: layers.required("api.max_retries", |e| e.api.max_retries.as_ref())?,
            tls: UpstreamTls {
                ca_file: layers.path(|e| e.api.tls.ca_file.as_ref()),
                cert_file: layers.path(|e| e.api.tls.cert_file.as_ref()),
                key_file: layers.path(|e| e.api.tls.key_file.as_ref()),
                insecure_skip_verify: layers
                    .pick(|e| e.api.tls.insecure_skip_verify.as_ref())
                    .unwrap_or(false),
            },
            proxy_url: layers.pick(|e| e.api.proxy_url.as_ref()),
        },
        concurrency: layers.required("api.concurrency", |e| e.api.concurrency.as_ref())?,
        requests_per_second: layers.required("api.requests_per_second", |e| {
            e.api.requests_per_second.as_ref()
        })?,
        datacenters,
        refresh: RefreshSettings {
            interval,
            stale_after: layers
                .required("refresh.stale_after", |e| e.refresh.stale_after.as_ref())?,
            // A backstop against a pass that never ends, not a bound on a slow one.
            timeout: layers
                .pick(|e| e.refresh.timeout.as_ref())
                .unwrap_or_else(|| RefreshSettings::default_timeout(interval)),
        },
    })
}

/// A way to authenticate that cannot be used: none, or a mix.
enum Mix {
    /// Nothing names a way (the account's name).
    Nothing(String),
    /// `token_file` and `token_env`.
    TwoTokens,
    /// `secret_file` and `secret_env`.
    TwoSecrets,
    /// A uuid and a static token.
    LoginAndToken,
    /// A uuid without a secret.
    NoSecret(String),
    /// A secret without a uuid.
    NoUuid,
}

impl Mix {
    /// What to tell the writer. The flags' account takes its token and secret
    /// from fixed variables, so its words name those; the last two mixes and
    /// `TwoTokens` cannot happen there (clap refuses them first, or the
    /// variable is ignored).
    fn words(&self, origin: Origin) -> String {
        match (self, origin) {
            (Mix::Nothing(_), Origin::Flags) => format!(
                "no token and no credentials: log in with --api.uuid and its secret (--api.secret-file or {SECRET_ENV}), or give a token with --api.token-file or {TOKEN_ENV}"
            ),
            (Mix::Nothing(name), Origin::File) => format!(
                "account '{name}' has no way to authenticate: give uuid with secret_file or secret_env (credentials), or token_file or token_env (a static token)"
            ),
            (Mix::LoginAndToken, Origin::Flags) => format!(
                "--api.uuid and {TOKEN_ENV}: an account logs in with credentials or uses a static token, not both; unset {TOKEN_ENV} or leave out --api.uuid"
            ),
            (Mix::LoginAndToken, Origin::File) => {
                "give uuid (credentials) or token_file/token_env (a static token), not both".into()
            }
            (Mix::NoSecret(uuid), Origin::Flags) => format!(
                "--api.uuid {uuid} needs its secret: give --api.secret-file or set {SECRET_ENV}"
            ),
            (Mix::NoSecret(_), Origin::File) => {
                "uuid needs its secret: give secret_file or secret_env".into()
            }
            (Mix::TwoTokens, _) => "give token_file or token_env, not both".into(),
            (Mix::TwoSecrets, _) => "give secret_file or secret_env, not both".into(),
            (Mix::NoUuid, _) => "secret_file/secret_env need the account's uuid".into(),
        }
    }
}

/// How `entry` says to authenticate: `None` when it names no way at all.
fn authentication(
    entry: &Entry,
    resolve: &dyn Fn(&PathBuf) -> PathBuf,
    login_url: &Url,
) -> Result<Option<TokenRef>, Mix> {
    let secret = match (&entry.secret_file, &entry.secret_env) {
        (Some(_), Some(_)) => return Err(Mix::TwoSecrets),
        (Some(file), None) => Some(SecretRef::File(resolve(file))),
        (None, Some(env)) => Some(SecretRef::Env(env.clone())),
        (None, None) => None,
    };
    let token = match (&entry.token_file, &entry.token_env) {
        (Some(_), Some(_)) => return Err(Mix::TwoTokens),
        (Some(file), None) => Some(TokenRef::File(resolve(file))),
        (None, Some(env)) => Some(TokenRef::Env(env.clone())),
        (None, None) => None,
    };
    match (&entry.uuid, secret, token) {
        (Some(_), _, Some(_)) => Err(Mix::LoginAndToken),
        (Some(uuid), Some(secret), None) => Ok(Some(TokenRef::Login {
            uuid: uuid.clone(),
            secret,
            url: login_url.clone(),
        })),
        (Some(uuid), None, None) => Err(Mix::NoSecret(uuid.clone())),
        (None, Some(_), _) => Err(Mix::NoUuid),
        (None, None, token) => Ok(token),
    }
}

/// The account of `draft`, its token or secret read once (the file is read
/// again when used) and its client built once, so that a setting reqwest
/// refuses (a TLS file, a proxy) stops the start or the reload instead of a
/// target. Every problem is returned, each naming the setting as `origin` does.
pub fn finish(draft: Draft, origin: Origin, telemetry: &Telemetry) -> Result<Account, Vec<String>> {
    let mut account = draft.account;
    let mut trouble = Vec::new();
    let unset = |name: &str| format!("the environment variable {name} is not set");
    match draft.token {
        TokenRef::File(file) => {
            let source = TokenSource::File(file.clone());
            match source.current() {
                Ok(_) => {
                    account.auth = Auth::Token {
                        source,
                        from: format!("file {}", file.display()),
                    }
                }
                Err(e) => trouble.push(origin.say("token_file", e)),
            }
        }
        TokenRef::Env(name) => match std::env::var(&name).map(|raw| Token::new(&raw)) {
            Ok(Ok(token)) => {
                account.auth = Auth::Token {
                    source: TokenSource::Fixed(token),
                    from: format!("${name}"),
                }
            }
            Ok(Err(e)) => trouble.push(origin.say("token_env", format!("${name}: {e}"))),
            Err(_) => trouble.push(origin.say("token_env", unset(&name))),
        },
        TokenRef::Login { uuid, secret, url } => {
            let (secret, secret_from) = match secret {
                SecretRef::File(file) => {
                    let from = format!("file {}", file.display());
                    let source = TokenSource::File(file);
                    match source.current() {
                        Ok(_) => (Some(source), from),
                        Err(e) => {
                            trouble.push(origin.say("secret_file", secret_problem(e, &from)));
                            (None, from)
                        }
                    }
                }
                SecretRef::Env(name) => {
                    let from = format!("${name}");
                    match std::env::var(&name).map(|raw| Token::new(&raw)) {
                        Ok(Ok(secret)) => (Some(TokenSource::Fixed(secret)), from),
                        Ok(Err(e)) => {
                            trouble.push(origin.say("secret_env", secret_problem(e, &from)));
                            (None, from)
                        }
                        Err(_) => {
                            trouble.push(origin.say("secret_env", unset(&name)));
                            (None, from)
                        }
                    }
                }
            };
            if let Some(secret) = secret {
                account.auth = Auth::Login(Credentials {
                    uuid,
                    secret,
                    secret_from,
                    url,
                });
            }
        }
    }
    if let Err(e) = ApiClient::new(
        &account.name,
        account.client.clone(),
        &account.auth,
        telemetry.clone(),
    ) {
        trouble.push(match origin {
            Origin::Flags => e.to_string(),
            Origin::File => client_problem(&e),
        });
    }
    if trouble.is_empty() {
        Ok(account)
    } else {
        Err(trouble)
    }
}

/// The message of a client that cannot be built, with the file's key names
/// (the client's own error names the flags).
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

/// Which targets this replica refreshes: those whose stable hash of
/// `account/datacenter_key` modulo `total` is `index` (kube-state-metrics' rule).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// This replica's shard, `0..total`.
    pub index: u32,
    /// The number of shards.
    pub total: u32,
}

impl Default for Shard {
    fn default() -> Self {
        Shard { index: 0, total: 1 }
    }
}

impl Shard {
    /// The shard the flags name: `--shard` or `--shard.from-pod-name`, out of
    /// `--total-shards`; the error names the flag and the fix.
    pub fn from_flags(config: &Config) -> Result<Self, String> {
        let index = match &config.shard_from_pod_name {
            Some(name) => name
                .rsplit_once('-')
                .and_then(|(_, n)| n.parse::<u32>().ok())
                .ok_or_else(|| {
                    format!(
                        "--shard.from-pod-name: '{name}' does not end in -N, as a StatefulSet pod name does (e.g. finovy-image-exporter-2)"
                    )
                })?,
            None => config.shard,
        };
        if index >= config.total_shards {
            return Err(format!(
                "--shard: shard {index} does not exist with --total-shards {}; shards count from 0 to {}",
                config.total_shards,
                config.total_shards - 1
            ));
        }
        Ok(Shard {
            index,
            total: config.total_shards,
        })
    }

    /// Whether this replica refreshes `key`.
    pub fn owns(&self, key: &TargetKey) -> bool {
        self.total <= 1
            || stable_hash(&key.to_string()) % u64::from(self.total) == u64::from(self.index)
    }
}

/// FNV-1a, 64 bits: the same on every replica, version and platform (std's
/// hasher is randomly keyed per process, so it cannot be used for sharding).
fn stable_hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// What one target refreshes: a datacenter of an account, or (without a
/// datacenter) one discovery pass over all of the account's datacenters.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TargetKey {
    /// The account's name.
    pub account: String,
    /// The datacenter key; `None` for a discovery target.
    pub datacenter: Option<String>,
}

impl TargetKey {
    /// The target of one datacenter.
    pub fn datacenter(account: &str, datacenter: &str) -> Self {
        TargetKey {
            account: account.to_string(),
            datacenter: Some(datacenter.to_string()),
        }
    }

    /// The discovery target of an account.
    pub fn discovery(account: &str) -> Self {
        TargetKey {
            account: account.to_string(),
            datacenter: None,
        }
    }
}

/// `account/datacenter_key`, and `account/` for a discovery target: the string
/// the shard of a target is computed from.
impl fmt::Display for TargetKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}",
            self.account,
            self.datacenter.as_deref().unwrap_or("")
        )
    }
}

/// The names of the configured accounts, shared between the reloads that change
/// them and the `/probe` endpoint that checks the account asked for.
#[derive(Debug, Default)]
pub struct AccountNames(std::sync::RwLock<std::collections::BTreeSet<String>>);

impl AccountNames {
    /// The names of `accounts`.
    pub fn new(accounts: &[Account]) -> Self {
        let names = AccountNames::default();
        names.set(accounts);
        names
    }

    /// Replaces the names with those of `accounts`.
    pub fn set(&self, accounts: &[Account]) {
        let names = accounts.iter().map(|a| a.name.clone()).collect();
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = names;
    }

    /// Whether an account of this name is configured.
    pub fn contains(&self, name: &str) -> bool {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    /// The flags' defaults, as `--config.file` layers them under every account.
    fn flag_defaults() -> Entry {
        Config::try_parse_from(["finovy-image-exporter"])
            .unwrap()
            .account
    }

    #[test]
    fn the_flags_and_a_file_entry_with_the_same_settings_make_the_same_account() {
        let config = Config::try_parse_from([
            "finovy-image-exporter",
            "--api.url=https://h.example/base",
            "--api.path=/v1/list",
            "--api.auth-path=/v1/login",
            "--api.uuid=U1",
            "--api.secret-file=/s/secret",
            "--api.timeout=3s",
            "--api.page-size=50",
            "--api.concurrency=2",
            "--api.requests-per-second=2.5",
            "--api.max-retries=1",
            "--api.header=X-A=1",
            "--api.param=lang=en",
            "--api.image-size-unit=MiB",
            "--api.proxy-url=http://proxy.example:3128",
            "--api.tls.ca-file=/ca.pem",
            "--api.tls.insecure-skip-verify",
            "--datacenters=HZ,SH",
            "--refresh.interval=2m",
            "--refresh.stale-after=10m",
            "--refresh.timeout=30s",
            "--filter.image-type=Linux",
            "--filter.image-name=web",
            "--filter.status=available",
        ])
        .unwrap();
        let flags = complete("acct", &Layers::flags(&config.account), Origin::Flags).unwrap();
        let yaml = "name: acct
api:
  url: https://h.example/base
  path: /v1/list
  auth_path: /v1/login
  timeout: 3s
  page_size: 50
  concurrency: 2
  requests_per_second: 2.5
  max_retries: 1
  headers: {X-A: '1'}
  params: {lang: en}
  image_size_unit: MiB
  proxy_url: http://proxy.example:3128
  tls: {ca_file: /ca.pem, insecure_skip_verify: true}
uuid: U1
secret_file: /s/secret
datacenters: [HZ, SH]
refresh: {interval: 2m, stale_after: 10m, timeout: 30s}
filters: {image_type: Linux, image_name: web, status: available}
";
        let entry: Entry = serde_yaml_ng::from_str(yaml).unwrap();
        let base = flag_defaults();
        let layers = Layers {
            own: &entry,
            defaults: &Entry::default(),
            base: &base,
            dir: Path::new("/etc/finovy"),
        };
        let file = complete("acct", &layers, Origin::File).unwrap();
        assert_eq!(flags.token, file.token);
        assert!(
            flags.account.same_settings(&file.account),
            "{flags:#?}\n{file:#?}"
        );
        assert_eq!(flags.account.datacenters, file.account.datacenters);
        // Both took the values given, not a default.
        let (a, defaults) = (
            &file.account,
            complete("d", &Layers::flags(&base), Origin::Flags),
        );
        assert!(
            defaults.is_err(),
            "the defaults alone name no way to authenticate"
        );
        assert_eq!(a.client.url.as_str(), "https://h.example/base/v1/list");
        assert_eq!(
            (a.client.page_size, a.concurrency, a.client.max_retries),
            (50, 2, 1)
        );
        assert_eq!(a.requests_per_second, 2.5);
        assert_eq!(a.refresh.timeout, Duration::from_secs(30));
        assert!(a.client.tls.insecure_skip_verify);
        assert_eq!(
            file.token,
            TokenRef::Login {
                uuid: "U1".into(),
                secret: SecretRef::File("/s/secret".into()),
                url: "https://h.example/base/v1/login".parse().unwrap(),
            }
        );
    }

    #[test]
    fn every_account_flag_is_a_key_of_the_file_and_every_key_a_flag() {
        let flags = <Entry as clap::Args>::augment_args(clap::Command::new("flags"));
        let ids: Vec<String> = flags
            .get_arguments()
            .map(|a| a.get_id().to_string())
            .collect();
        // The file's keys, level by level, as serde lists them for an unknown one.
        let mut keys = Vec::new();
        for prefix in ["", "api", "api.tls", "refresh", "filters"] {
            let mut yaml = "zzz: 1".to_string();
            for part in prefix.rsplit('.').filter(|p| !p.is_empty()) {
                yaml = format!("{part}: {{{yaml}}}");
            }
            let err = serde_yaml_ng::from_str::<Entry>(&yaml)
                .unwrap_err()
                .to_string();
            let listed = err.split("expected one of").nth(1).expect(&err);
            for name in listed.split('`').skip(1).step_by(2) {
                let key = if prefix.is_empty() {
                    name.to_string()
                } else {
                    format!("{prefix}.{name}")
                };
                if !["api", "api.tls", "refresh", "filters"].contains(&key.as_str()) {
                    keys.push(key);
                }
            }
        }
        // Only the name and the environment-variable keys have no flag: the
        // flags' account is `default` and its variables are fixed.
        let without_flag = ["name", "token_env", "secret_env"];
        for key in &keys {
            assert!(
                ids.contains(key) || without_flag.contains(&key.as_str()),
                "file key {key} has no flag"
            );
        }
        for id in &ids {
            assert!(keys.contains(id), "flag {id} has no file key");
        }
        assert!(ids.len() >= 25, "{ids:?}");
    }

    #[test]
    fn a_problem_names_the_setting_as_its_writer_knows_it() {
        assert_eq!(
            Origin::Flags.name("api.tls.ca_file").as_deref(),
            Some("--api.tls.ca-file")
        );
        assert_eq!(
            Origin::File.name("api.tls.ca_file").as_deref(),
            Some("api.tls.ca_file")
        );
        assert_eq!(Origin::Flags.name("token_env"), None);
        let entry = Entry {
            token_file: Some("/no/such/token".into()),
            datacenters: Some(vec!["HZ".into(), "HZ".into()]),
            ..flag_defaults()
        };
        for (origin, wanted) in [
            (Origin::Flags, "--datacenters: 'HZ' is listed twice"),
            (Origin::File, "datacenters: 'HZ' is listed twice"),
        ] {
            let err = complete("a", &Layers::flags(&entry), origin).unwrap_err();
            assert_eq!(err, wanted);
        }
        let entry = Entry {
            datacenters: None,
            ..entry
        };
        for (origin, wanted) in [
            (Origin::Flags, "--api.token-file: "),
            (Origin::File, "token_file: "),
        ] {
            let draft = complete("a", &Layers::flags(&entry), origin).unwrap();
            let problems = finish(draft, origin, &Telemetry::new()).unwrap_err();
            assert_eq!(problems.len(), 1, "{problems:?}");
            assert!(problems[0].starts_with(wanted), "{problems:?}");
            assert!(problems[0].contains("/no/such/token"), "{problems:?}");
        }
    }

    #[test]
    fn every_target_belongs_to_exactly_one_shard() {
        let keys: Vec<TargetKey> = (0..200)
            .map(|i| TargetKey::datacenter(&format!("acct{}", i % 17), &format!("DC{i}")))
            .chain((0..17).map(|i| TargetKey::discovery(&format!("acct{i}"))))
            .collect();
        let total = 3;
        let mut per_shard = [0usize; 3];
        for key in &keys {
            let owners: Vec<u32> = (0..total)
                .filter(|&index| Shard { index, total }.owns(key))
                .collect();
            assert_eq!(owners.len(), 1, "{key} owned by {owners:?}");
            per_shard[owners[0] as usize] += 1;
        }
        assert!(per_shard.iter().all(|&n| n > 30), "{per_shard:?}");
    }

    #[test]
    fn a_pass_deadline_is_ten_intervals_and_never_below_five_minutes() {
        let default = |secs| RefreshSettings::default_timeout(Duration::from_secs(secs)).as_secs();
        assert_eq!(default(1), 300, "the floor");
        assert_eq!(default(30), 300);
        assert_eq!(default(60), 600, "ten intervals");
        assert_eq!(default(3600), 36_000);
    }

    #[test]
    fn the_shard_hash_is_stable() {
        // FNV-1a's published values: every replica, version and platform agrees.
        assert_eq!(stable_hash(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(stable_hash("a"), 0xaf63_dc4c_8601_ec8c);
    }
}
