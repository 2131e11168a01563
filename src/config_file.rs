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
//! An entry is a [`crate::settings::Entry`], the struct the account flags are
//! made of, and both steps are [`crate::account`]'s, which the flags' account
//! goes through too: this module only reads the file and says where. Whatever
//! the file leaves out takes the default of the matching flag, and `defaults:`
//! stands in for any key an account leaves out. Relative paths start at the
//! file's directory.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use crate::account::{self, Account, AccountNames, Draft, Layers};
use crate::config::Config;
use crate::settings::{Entry, Origin};
use crate::telemetry::Telemetry;

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
    let text = crate::yaml_limits::read_file(path)
        .and_then(|bytes| {
            String::from_utf8(bytes).map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::InvalidData, "the file is not UTF-8")
            })
        })
        .map_err(|e| {
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

/// Problems a check reports at most: enough for every account's first problem
/// in any file a person wrote, and a bound on the re-reading each costs.
pub const MAX_PROBLEMS: usize = 50;

/// Bytes a check reads again at most to find further problems: fifty re-reads
/// of a 300 KB file (3,000 accounts), four of a file at the 4 MiB bound. Each
/// re-read parses the whole file; counted in problems alone, a hostile file of
/// 4 MiB with a typo in every account cost eleven seconds of a core per reload.
pub const MAX_REREAD_BYTES: usize = 16 << 20;

/// Parses the text of a configuration file (named `path` in errors) into
/// account drafts. A schema error in an account stops the reading of that
/// account only: the file is read again from the next account on, so that one
/// run reports every account's first problem (up to [`MAX_PROBLEMS`], and
/// [`MAX_REREAD_BYTES`] read again), each with its line and key path. An error
/// outside the accounts stops it.
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
            base: &flags.account,
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
                let within =
                    problems.len() < MAX_PROBLEMS && problems.len() * text.len() < MAX_REREAD_BYTES;
                match context.reached.get() {
                    Some(at) if Some(at) != skip_through && within => {
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
        let name = draft.account.name.clone();
        let trouble = match account::finish(draft, Origin::File, &scratch) {
            Ok(account) => {
                accounts.push(account);
                continue;
            }
            Err(trouble) => trouble,
        };
        let position = account_position(&mut positions, text, index);
        for message in trouble {
            problems.push(Problem {
                file: path.to_path_buf(),
                position,
                message: format!("accounts[{index}] ({name}): {message}"),
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

/// What every account of one parse shares.
struct Context<'a> {
    defaults: &'a Entry,
    /// The flags' entry: every flag default, under whatever `defaults:` leaves out.
    base: &'a Entry,
    /// The file's directory, where relative paths start.
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
        let context = self.context;
        let layers = Layers {
            own: &entry,
            defaults: context.defaults,
            base: context.base,
            dir: &context.dir,
        };
        account::complete(&name, &layers, Origin::File)
            .map(Some)
            .map_err(de::Error::custom)
    }
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
    applied: Option<Applied>,
}

/// Told the accounts of every reload applied (the landing page's overview).
type Applied = Box<dyn Fn(&[Account]) + Send + Sync>;

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
            applied: None,
        }
    }

    /// Calls `applied` with the accounts of every reload applied, before the
    /// scheduler has them.
    pub fn on_applied(mut self, applied: impl Fn(&[Account]) + Send + Sync + 'static) -> Self {
        self.applied = Some(Box::new(applied));
        self
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
                if let Some(applied) = &self.applied {
                    applied(&accounts);
                }
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
    use crate::account::{SecretRef, TokenRef};
    use crate::labels::Status;
    use clap::Parser as _;
    use std::time::Duration;

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
    fn a_device_or_a_fifo_is_refused_before_it_is_read() {
        // /dev/zero read whole filled 3 GB in six seconds; a FIFO blocked.
        let err = load(Path::new("/dev/zero"), &flags()).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
    }

    #[test]
    fn a_large_file_with_a_typo_in_every_account_is_read_again_a_bounded_number_of_times() {
        let account = "  - name: a{i}\n    token_env: T\n    refresh: {intervall: 1m}\n";
        let mut text = "accounts:\n".to_string();
        for i in 0.. {
            if text.len() > 1 << 20 {
                break;
            }
            text.push_str(&account.replace("{i}", &i.to_string()));
        }
        let err = parse(&text, Path::new("/etc/finovy/config.yaml"), &flags()).unwrap_err();
        // One read, then one again per problem until 16 MiB were read: 16 of a
        // 1 MiB file, where problems alone would allow 50.
        let reads = MAX_REREAD_BYTES.div_ceil(text.len());
        assert_eq!(err.0.len(), reads, "{} problems", err.0.len());
        assert!(err.0.len() < MAX_PROBLEMS);
        assert!(err.0.iter().all(|p| p.message.contains("intervall")));
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
                "accounts:\n  - name: a\n    token_env: T\n    api: {requests_per_second: 1e-300}\n",
                4,
                "accounts[0].api.requests_per_second: '1e-300' is below the smallest rate",
            ),
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
