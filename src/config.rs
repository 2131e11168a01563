//! Command-line flags, their `FINOVY_*` environment twins, and their validation.
//!
//! Everything a user can get wrong is rejected here, before anything starts: each
//! value has a parser that names the flag in its error, and [`Config::parse_or_exit`]
//! prints any error once on stderr (clap's whole message, suggestion included)
//! and exits with status 2.
//!
//! The account flags are not here but in [`crate::settings::Entry`], flattened
//! into [`Config`]: the same struct is an entry of `--config.file`.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use clap::{Parser, ValueEnum};
use url::Url;

use crate::labels::Status;
use crate::settings::{parse_status_filter, Entry};

/// The exporter's configuration, parsed from flags and `FINOVY_*` variables.
#[derive(Debug, Clone, Parser)]
#[command(name = "finovy-image-exporter", version, about, long_about = None, args_override_self = true)]
#[command(long_version = crate::LONG_VERSION, after_help = AFTER_HELP)]
#[command(mut_args = unless_config_file)]
pub struct Config {
    /// Address to serve on: `host:port`, or `:port` for every interface; repeat the flag to serve on several.
    #[arg(help_heading = "Web")]
    #[arg(long = "web.listen-address", env = "FINOVY_WEB_LISTEN_ADDRESS", default_value = ":9929", value_parser = parse_listen_address, action = clap::ArgAction::Append)]
    pub listen_address: Vec<ListenAddress>,

    /// Serve on the listening sockets systemd passes (socket activation) instead of --web.listen-address.
    #[arg(help_heading = "Web")]
    #[arg(long = "web.systemd-socket", env = "FINOVY_WEB_SYSTEMD_SOCKET")]
    pub systemd_socket: bool,

    /// URL the exporter is reached at from outside, e.g. behind a reverse proxy; the landing page's links use its path.
    #[arg(help_heading = "Web")]
    #[arg(long = "web.external-url", env = "FINOVY_WEB_EXTERNAL_URL", value_parser = parse_external_url)]
    pub external_url: Option<Url>,

    /// Path prefix of every route (`/finovy`: `/finovy/metrics`); defaults to the path of --web.external-url.
    #[arg(help_heading = "Web")]
    #[arg(long = "web.route-prefix", env = "FINOVY_WEB_ROUTE_PREFIX", value_parser = parse_route_prefix)]
    pub route_prefix: Option<String>,

    /// Path under which to expose metrics.
    #[arg(help_heading = "Web")]
    #[arg(long = "web.telemetry-path", env = "FINOVY_WEB_TELEMETRY_PATH", default_value = "/metrics", value_parser = parse_telemetry_path)]
    pub telemetry_path: String,

    /// Exporter-toolkit web configuration file (TLS, basic auth, headers); empty means none.
    #[arg(help_heading = "Web")]
    #[arg(long = "web.config.file", env = "FINOVY_WEB_CONFIG_FILE", value_parser = clap::builder::TypedValueParser::map(clap::builder::OsStringValueParser::new(), PathBuf::from))]
    pub web_config_file: Option<PathBuf>,

    /// Concurrent HTTP requests served at most; beyond that the answer is 503.
    #[arg(help_heading = "Web")]
    #[arg(long = "web.max-requests", env = "FINOVY_WEB_MAX_REQUESTS", default_value_t = 40, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_requests: u32,

    /// Connections held at most; beyond, the oldest idle one is closed first.
    #[arg(help_heading = "Web")]
    #[arg(long = "web.max-connections", env = "FINOVY_WEB_MAX_CONNECTIONS", default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections: u32,

    /// The account the flags describe (`--api.*`, `--datacenters`, `--refresh.*`,
    /// `--filter.*`): the same settings as an entry of `--config.file`.
    #[command(flatten)]
    pub account: Entry,

    /// Image types kept per target; the smallest groups beyond fold into image_type="other".
    #[arg(help_heading = "Limits")]
    #[arg(long = "limit.image-types", env = "FINOVY_LIMIT_IMAGE_TYPES", default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub limit_image_types: u32,

    /// Datacenters kept per discovery pass; the smallest beyond fold into datacenter_key="other".
    #[arg(help_heading = "Limits")]
    #[arg(long = "limit.datacenters", env = "FINOVY_LIMIT_DATACENTERS", default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub limit_datacenters: u32,

    /// Longest label value, in bytes; longer upstream values are cut.
    #[arg(help_heading = "Limits")]
    #[arg(long = "limit.label-length", env = "FINOVY_LIMIT_LABEL_LENGTH", default_value_t = 128, value_parser = clap::value_parser!(u32).range(8..=4096))]
    pub limit_label_length: u32,

    /// Log level: error, warn, info, debug or trace.
    #[arg(help_heading = "Logs")]
    #[arg(
        long = "log.level",
        env = "FINOVY_LOG_LEVEL",
        default_value = "info",
        value_enum,
        ignore_case = true
    )]
    pub log_level: LogLevel,

    /// Log format.
    #[arg(help_heading = "Logs")]
    #[arg(
        long = "log.format",
        env = "FINOVY_LOG_FORMAT",
        default_value = "logfmt",
        value_enum,
        ignore_case = true
    )]
    pub log_format: LogFormat,

    /// This replica's shard, 0 to --total-shards - 1 (kube-state-metrics' sharding).
    #[arg(help_heading = "Sharding")]
    #[arg(long = "shard", env = "FINOVY_SHARD", default_value_t = 0)]
    pub shard: u32,

    /// Replicas sharing the targets; each refreshes those whose hash falls to its shard.
    #[arg(help_heading = "Sharding")]
    #[arg(long = "total-shards", env = "FINOVY_TOTAL_SHARDS", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub total_shards: u32,

    /// Take the shard from a StatefulSet pod name ending in -N (instead of --shard).
    #[arg(help_heading = "Sharding")]
    #[arg(
        long = "shard.from-pod-name",
        env = "FINOVY_SHARD_FROM_POD_NAME",
        conflicts_with = "shard"
    )]
    pub shard_from_pod_name: Option<String>,

    /// Serve data from a built-in simulated upstream: no token or network needed.
    #[arg(help_heading = "Demo")]
    #[arg(long = "demo", env = "FINOVY_DEMO")]
    pub demo: bool,

    /// YAML file describing the accounts (see the README); the account flags then stay unset.
    #[arg(help_heading = "Configuration file")]
    #[arg(
        long = "config.file",
        env = "FINOVY_CONFIG_FILE",
        conflicts_with = "demo"
    )]
    pub config_file: Option<PathBuf>,

    /// Check --config.file offline (keys, values, token and secret files, TLS files), print every problem, exit 0 or 2; `check` also asks the API.
    #[arg(help_heading = "Configuration file")]
    #[arg(
        long = "config.check",
        env = "FINOVY_CONFIG_CHECK",
        requires = "config_file"
    )]
    pub config_check: bool,

    /// Serve POST /-/reload, which reloads --config.file (403 without this flag).
    #[arg(help_heading = "Web")]
    #[arg(long = "web.enable-lifecycle", env = "FINOVY_WEB_ENABLE_LIFECYCLE")]
    pub enable_lifecycle: bool,

    /// Which optional metric families are served (`--[no-]collector.NAME`).
    #[command(flatten, next_help_heading = "Collectors")]
    pub collectors: CollectorFlags,
}

/// `--[no-]collector.NAME`, node_exporter's convention: `--collector.NAME` turns
/// a collector on, `--no-collector.NAME` off, the last one given wins.
#[derive(Debug, Clone, clap::Args)]
pub struct CollectorFlags {
    /// Serve finovy_images_size_bytes (--no-collector.size: off).
    #[arg(long = "collector.size", env = "FINOVY_COLLECTOR_SIZE", default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true", overrides_with = "no_collector_size")]
    pub collector_size: bool,
    /// Do not serve finovy_images_size_bytes.
    #[arg(long = "no-collector.size", overrides_with = "collector_size")]
    pub no_collector_size: bool,
    /// Serve finovy_images_oldest_created_timestamp_seconds (--no-collector.oldest: off).
    #[arg(long = "collector.oldest", env = "FINOVY_COLLECTOR_OLDEST", default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true", overrides_with = "no_collector_oldest")]
    pub collector_oldest: bool,
    /// Do not serve finovy_images_oldest_created_timestamp_seconds.
    #[arg(long = "no-collector.oldest", overrides_with = "collector_oldest")]
    pub no_collector_oldest: bool,
    /// Count creations, deletions and status transitions between passes (--no-collector.lifecycle: off).
    #[arg(long = "collector.lifecycle", env = "FINOVY_COLLECTOR_LIFECYCLE", default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true", overrides_with = "no_collector_lifecycle")]
    pub collector_lifecycle: bool,
    /// Do not keep image ids between passes, nor serve the lifecycle counters.
    #[arg(
        long = "no-collector.lifecycle",
        overrides_with = "collector_lifecycle"
    )]
    pub no_collector_lifecycle: bool,
    /// Serve the age distribution finovy_images_age_seconds (--no-collector.age: off).
    #[arg(long = "collector.age", env = "FINOVY_COLLECTOR_AGE", default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true", overrides_with = "no_collector_age")]
    pub collector_age: bool,
    /// Do not serve finovy_images_age_seconds.
    #[arg(long = "no-collector.age", overrides_with = "collector_age")]
    pub no_collector_age: bool,
    /// Serve finovy_image_info, naming the oldest images in some statuses (off by default).
    #[arg(long = "collector.image-info", env = "FINOVY_COLLECTOR_IMAGE_INFO", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true", overrides_with = "no_collector_image_info")]
    pub collector_image_info: bool,
    /// Do not serve finovy_image_info.
    #[arg(
        long = "no-collector.image-info",
        overrides_with = "collector_image_info"
    )]
    pub no_collector_image_info: bool,
    /// Comma-separated statuses whose images finovy_image_info names.
    #[arg(long = "collector.image-info.statuses", env = "FINOVY_COLLECTOR_IMAGE_INFO_STATUSES", value_delimiter = ',', default_value = "creating,failed", value_parser = parse_status_filter)]
    pub image_info_statuses: Vec<Status>,
    /// Images per target finovy_image_info names at most, oldest first.
    #[arg(long = "collector.image-info.limit", env = "FINOVY_COLLECTOR_IMAGE_INFO_LIMIT", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub image_info_limit: u32,
}

impl Config {
    /// The collectors the flags turn on.
    pub fn collectors(&self) -> crate::metrics::Collectors {
        let c = &self.collectors;
        crate::metrics::Collectors {
            size: c.collector_size && !c.no_collector_size,
            oldest: c.collector_oldest && !c.no_collector_oldest,
            lifecycle: c.collector_lifecycle && !c.no_collector_lifecycle,
            age: c.collector_age && !c.no_collector_age,
            image_info: (c.collector_image_info && !c.no_collector_image_info).then(|| {
                crate::metrics::ImageInfo {
                    statuses: crate::aggregate::StatusSet::of(&c.image_info_statuses),
                    limit: c.image_info_limit as usize,
                }
            }),
            image_types: self.limit_image_types as usize,
        }
    }
}

/// Makes an account flag conflict with `--config.file`: the file describes
/// every account, so giving one of them too (on the command line or through its
/// environment twin) is an error naming it. Every flag of
/// [`crate::settings::Entry`] is one, and no other.
fn unless_config_file(arg: clap::Arg) -> clap::Arg {
    static ACCOUNT_FLAGS: std::sync::LazyLock<Vec<clap::Id>> = std::sync::LazyLock::new(|| {
        let flags = <Entry as clap::Args>::augment_args(clap::Command::new("account"));
        flags.get_arguments().map(|a| a.get_id().clone()).collect()
    });
    if ACCOUNT_FLAGS.contains(arg.get_id()) {
        arg.conflicts_with("config_file")
    } else {
        arg
    }
}

impl Config {
    /// Parses the process arguments and environment; on error prints clap's message
    /// (naming the flag, with its suggestion) once and exits with status 2
    /// (`--help` and `--version` exit 0).
    pub fn parse_or_exit() -> Self {
        Self::parse_from_or_exit(std::env::args_os())
    }

    /// [`Config::parse_or_exit`] from these arguments (the first is the program).
    pub fn parse_from_or_exit<I, T>(args: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let args: Vec<std::ffi::OsString> = args.into_iter().map(Into::into).collect();
        match Self::try_parse_from(&args) {
            Ok(config) => config,
            Err(err) => {
                if let Some(message) = env_conflict(&err, &args) {
                    eprintln!("error: {message}");
                    std::process::exit(2);
                }
                exit_with(err)
            }
        }
    }
}

/// Printed after `--help`: what is read from the environment without a flag.
const AFTER_HELP: &str = "Commands:\n  check [FLAGS]  Log in and ask page 1 of every target once; one line per target; exit 0 (all answered), 1 (some failed) or 2 (bad configuration)\n  healthcheck [--url URL]  Exit 0 when a running exporter's /healthz answers 200 (for container health checks)\n\nEnvironment:\n  FINOVY_ACCESS_TOKEN  The access token, when --api.token-file is not given (never logged)\n  FINOVY_API_SECRET  The secret of --api.uuid, when --api.secret-file is not given (never logged)\n  HTTPS_PROXY, HTTP_PROXY, NO_PROXY  Proxy for upstream requests, unless --api.proxy-url is given\n\nEvery flag can also be set from the environment variable shown beside it.";

/// For a conflict between two flags of which one was not typed but set
/// through its environment twin, the message that names the variable: clap's
/// own ("'--config.file' cannot be used with '--api.url'") names a flag the user
/// never wrote.
pub fn env_conflict(err: &clap::Error, args: &[std::ffi::OsString]) -> Option<String> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    use clap::CommandFactory;
    if err.kind() != ErrorKind::ArgumentConflict {
        return None;
    }
    let flag_of = |value: Option<&ContextValue>| -> Option<String> {
        let text = match value? {
            ContextValue::String(s) => s.clone(),
            ContextValue::Strings(v) => v.first()?.clone(),
            _ => return None,
        };
        Some(text.split([' ', '=']).next()?.to_string())
    };
    let first = flag_of(err.get(ContextKind::InvalidArg))?;
    let second = flag_of(err.get(ContextKind::PriorArg))?;
    let typed = |flag: &str| {
        args.iter().skip(1).any(|a| {
            let a = a.to_string_lossy();
            a == flag || a.starts_with(&format!("{flag}="))
        })
    };
    let command = Config::command();
    let env_of = |flag: &str| -> Option<String> {
        let long = flag.strip_prefix("--")?;
        let arg = command
            .get_arguments()
            .find(|a| a.get_long() == Some(long))?;
        let var = arg.get_env()?.to_string_lossy().into_owned();
        std::env::var_os(&var).is_some().then_some(var)
    };
    let named = |flag: &str| match (typed(flag), env_of(flag)) {
        (false, Some(var)) => Some(format!("{var} (the environment twin of {flag})")),
        _ => None,
    };
    let why = if first == "--config.file" || second == "--config.file" {
        "with --config.file the file describes every account; unset the variable or move its value into the file"
    } else {
        "unset the variable, or leave out the other flag"
    };
    match (named(&first), named(&second)) {
        (None, None) => None,
        (a, b) => Some(format!(
            "{} cannot be used with {}: {why}",
            a.unwrap_or_else(|| format!("'{first}'")),
            b.unwrap_or_else(|| format!("'{second}'"))
        )),
    }
}

fn exit_with(err: clap::Error) -> ! {
    use clap::error::ErrorKind;
    if matches!(
        err.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        err.exit();
    }
    // clap repeats the rejected value in its message, and a value can hold a
    // secret (a URL with `user:password@`, a header or parameter value). The
    // parsers' own messages never do, so only they are printed, after the flag.
    if err.kind() == ErrorKind::ValueValidation {
        use clap::error::{ContextKind, ContextValue};
        if let (Some(ContextValue::String(arg)), Some(reason)) = (
            err.get(ContextKind::InvalidArg),
            std::error::Error::source(&err),
        ) {
            eprintln!("error: invalid value for '{arg}': {reason}");
            std::process::exit(2);
        }
    }
    // Anything else is clap's whole message, printed once: its suggestion
    // ("a similar argument exists") and usage are what tell the user the fix.
    err.exit();
}

/// Where to listen: the candidates are tried in order until one binds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenAddress {
    /// What the user wrote, for logs.
    pub text: String,
    /// Addresses to try, in order (`:port` yields `[::]` then `0.0.0.0`).
    pub candidates: Vec<SocketAddr>,
}

impl fmt::Display for ListenAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn parse_listen_address(s: &str) -> Result<ListenAddress, String> {
    if s.parse::<u16>().is_ok() {
        return Err(format!(
            "'{s}' is a port alone: write ':{s}' to listen on every interface, or 'HOST:{s}'"
        ));
    }
    let candidates: Vec<SocketAddr> = if let Some(port) = s.strip_prefix(':') {
        let port: u16 = port
            .parse()
            .map_err(|_| format!("'{s}' is not host:port or :port"))?;
        vec![
            SocketAddr::from(([0u16; 8], port)),
            SocketAddr::from(([0u8; 4], port)),
        ]
    } else {
        s.to_socket_addrs()
            .map_err(|e| format!("'{s}' is not host:port or :port ({e})"))?
            .collect()
    };
    if candidates.is_empty() {
        return Err(format!("'{s}' resolves to no address"));
    }
    Ok(ListenAddress {
        text: s.to_string(),
        candidates,
    })
}

/// `--web.route-prefix`: an absolute path, kept without its trailing slash
/// (`/` and `/finovy/` become `` and `/finovy`).
fn parse_route_prefix(s: &str) -> Result<String, String> {
    if !s.starts_with('/') || s.contains(['?', '#', ' ']) {
        return Err(format!(
            "'{s}' must be an absolute path such as /finovy (or / for none)"
        ));
    }
    Ok(s.trim_end_matches('/').to_string())
}

/// `--web.external-url`: an absolute `http://` or `https://` URL.
fn parse_external_url(s: &str) -> Result<Url, String> {
    let url = Url::parse(s).map_err(|e| {
        format!("'{s}' is not an absolute URL such as https://proxy.example/finovy/ ({e})")
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.query().is_some() {
        return Err(format!(
            "'{s}' must be an http:// or https:// URL without a query, such as https://proxy.example/finovy/"
        ));
    }
    Ok(url)
}

impl Config {
    /// The prefix every route is served under (`--web.route-prefix`, else the
    /// path of `--web.external-url`): empty for none, else a path without its
    /// trailing slash.
    pub fn route_prefix(&self) -> String {
        match (&self.route_prefix, &self.external_url) {
            (Some(prefix), _) => prefix.clone(),
            (None, Some(url)) => url.path().trim_end_matches('/').to_string(),
            (None, None) => String::new(),
        }
    }

    /// The prefix of the links the landing page gives: the path of
    /// `--web.external-url` (a reverse proxy may strip it before the exporter
    /// sees the request), else the route prefix.
    pub fn link_prefix(&self) -> String {
        match &self.external_url {
            Some(url) => url.path().trim_end_matches('/').to_string(),
            None => self.route_prefix(),
        }
    }
}

fn parse_telemetry_path(s: &str) -> Result<String, String> {
    let reserved = ["/", "/healthz", "/readyz"];
    if !s.starts_with('/') || s.contains(['?', '#', ' ']) {
        return Err(format!("'{s}' must be an absolute path such as /metrics"));
    }
    if reserved.contains(&s) {
        return Err(format!("'{s}' is taken by another endpoint"));
    }
    Ok(s.to_string())
}

/// Log verbosity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[allow(missing_docs)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    /// The matching `tracing` level.
    pub fn as_tracing(self) -> tracing::Level {
        match self {
            LogLevel::Error => tracing::Level::ERROR,
            LogLevel::Warn => tracing::Level::WARN,
            LogLevel::Info => tracing::Level::INFO,
            LogLevel::Debug => tracing::Level::DEBUG,
            LogLevel::Trace => tracing::Level::TRACE,
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// `key=value` pairs, as Prometheus components log.
    Logfmt,
    /// One JSON object per line.
    Json,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::account::{complete, Account, Layers};
    use crate::settings::{Origin, SizeUnit};
    use std::time::Duration;

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        let mut all = vec!["finovy-image-exporter"];
        all.extend_from_slice(args);
        Config::try_parse_from(all)
    }

    /// The flags' account, as the exporter makes it (its token left unread).
    fn account(c: &Config) -> Account {
        complete("default", &Layers::flags(&c.account), Origin::Flags)
            .unwrap()
            .account
    }

    #[test]
    fn defaults_match_the_spec() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.listen_address.len(), 1);
        assert_eq!(c.listen_address[0].text, ":9929");
        assert_eq!(c.telemetry_path, "/metrics");
        assert_eq!(c.max_requests, 40);
        let mut c = c;
        c.account.token_env = Some("T".into());
        let a = account(&c);
        assert_eq!(a.client.timeout, Duration::from_secs(10));
        assert_eq!(a.client.page_size, 100);
        assert_eq!(a.concurrency, 4);
        assert_eq!(a.requests_per_second, 0.0);
        assert_eq!(a.client.size_unit, SizeUnit::Gib);
        assert_eq!(a.client.max_retries, 3);
        assert_eq!(a.refresh.interval, Duration::from_secs(60));
        assert_eq!(a.refresh.stale_after, Duration::from_secs(300));
        assert_eq!(a.refresh.timeout, Duration::from_secs(600));
        assert_eq!(
            a.client.url.as_str(),
            "https://client.xuandashi.com/v1/open/image/personal/getList"
        );
        assert!(a.datacenters.is_empty());
        assert!(!a.client.tls.insecure_skip_verify);
    }

    #[test]
    fn bad_values_name_their_flag() {
        for (args, flag) in [
            (&["--api.timeout", "ten"][..], "--api.timeout"),
            (&["--refresh.interval", "0s"][..], "--refresh.interval"),
            (&["--api.page-size", "0"][..], "--api.page-size"),
            (&["--api.url", "ftp://x"][..], "--api.url"),
            (&["--api.header", "novalue"][..], "--api.header"),
            (&["--api.header", "X-A=a\u{7}b"][..], "--api.header"),
            (&["--api.param", "page=3"][..], "--api.param"),
            (&["--filter.status", "9"][..], "--filter.status"),
            (
                &["--api.requests-per-second", "1e-300"][..],
                "--api.requests-per-second",
            ),
            (
                &["--api.requests-per-second", "NaN"][..],
                "--api.requests-per-second",
            ),
            (
                &["--web.listen-address", "nope"][..],
                "--web.listen-address",
            ),
            (
                &["--api.image-size-unit", "PB"][..],
                "--api.image-size-unit",
            ),
            (&["--log.format", "xml"][..], "--log.format"),
        ] {
            let err = parse(args).expect_err(flag);
            let first = err.render().to_string();
            assert!(
                first.lines().next().unwrap().contains(flag),
                "{flag}: {first}"
            );
        }
    }

    #[test]
    fn lists_and_units_parse() {
        let c = parse(&[
            "--datacenters",
            "HZ,SH",
            "--api.header",
            "X-A=1",
            "--api.header",
            "X-B=2=3",
            "--api.param",
            "lang=zh",
            "--api.image-size-unit",
            "mib",
            "--filter.status",
            "creating",
            "--web.listen-address",
            "127.0.0.1:0",
        ])
        .unwrap();
        assert_eq!(c.listen_address[0].candidates.len(), 1);
        let mut c = c;
        c.account.token_env = Some("T".into());
        let a = account(&c);
        assert_eq!(a.datacenters, ["HZ", "SH"]);
        assert_eq!(a.client.headers.len(), 2);
        assert_eq!(a.client.headers[1].value, "2=3");
        assert!(format!("{:?}", a.client.headers).contains("**hidden**"));
        assert_eq!(a.client.params, [("lang".to_string(), "zh".to_string())]);
        assert_eq!(a.client.size_unit, SizeUnit::Mib);
        assert_eq!(a.client.filters.status, Some(Status::Creating));
    }

    #[test]
    fn every_account_flag_conflicts_with_the_config_file() {
        use clap::CommandFactory as _;
        let account_level = ["--api.", "--filter.", "--datacenters", "--refresh."];
        let mut tried = 0;
        for arg in Config::command().get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            let flag = format!("--{long}");
            if !account_level.iter().any(|p| flag.starts_with(p)) {
                continue;
            }
            let mut args = vec!["--config.file", "a.yaml", &flag];
            if arg.get_action().takes_values() {
                // A valid value, so that the conflict is what fails.
                let names = arg.get_value_names().unwrap_or_default();
                args.push(match names.first().map(|n| n.as_str()) {
                    Some("URL") => "http://h",
                    Some("PATH") => "/x",
                    Some("DURATION") => "5s",
                    Some("KEY=VALUE") => "k=v",
                    Some("UNIT") => "B",
                    _ => "1",
                });
            }
            let err = parse(&args).expect_err(&flag);
            assert_eq!(
                err.kind(),
                clap::error::ErrorKind::ArgumentConflict,
                "{flag}: {err}"
            );
            assert!(err.to_string().contains(&flag), "{flag}: {err}");
            tried += 1;
        }
        assert!(tried >= 25, "only {tried} account flags");
        assert!(parse(&["--config.file", "a.yaml", "--web.enable-lifecycle"]).is_ok());
    }

    #[test]
    fn collectors_switch_on_and_off_and_the_last_flag_wins() {
        let on = parse(&[]).unwrap().collectors();
        assert!(on.size && on.oldest && on.lifecycle && on.age);
        let off = parse(&["--no-collector.lifecycle", "--no-collector.size"])
            .unwrap()
            .collectors();
        assert!(!off.lifecycle && !off.size && off.oldest && off.age);
        let back = parse(&["--no-collector.age", "--collector.age"]).unwrap();
        assert!(back.collectors().age);
        let again = parse(&["--collector.age", "--no-collector.age"]).unwrap();
        assert!(!again.collectors().age);
        assert!(
            !parse(&["--collector.oldest=false"])
                .unwrap()
                .collectors()
                .oldest
        );
    }

    #[test]
    fn listen_addresses_add_up_and_prefixes_follow_the_external_url() {
        let c = parse(&[
            "--web.listen-address",
            "127.0.0.1:1",
            "--web.listen-address",
            "127.0.0.1:2",
        ])
        .unwrap();
        let texts: Vec<&str> = c.listen_address.iter().map(|a| a.text.as_str()).collect();
        assert_eq!(
            texts,
            ["127.0.0.1:1", "127.0.0.1:2"],
            "a repeated flag serves on each"
        );
        let none = parse(&[]).unwrap();
        assert_eq!(
            (none.route_prefix(), none.link_prefix()),
            (String::new(), String::new())
        );
        let external = parse(&["--web.external-url", "https://proxy.example/finovy/"]).unwrap();
        assert_eq!(external.route_prefix(), "/finovy");
        assert_eq!(external.link_prefix(), "/finovy");
        // A proxy that strips the prefix: routes at the root, links under it.
        let stripped = parse(&[
            "--web.external-url",
            "https://proxy.example/finovy",
            "--web.route-prefix",
            "/",
        ])
        .unwrap();
        assert_eq!(stripped.route_prefix(), "");
        assert_eq!(stripped.link_prefix(), "/finovy");
        let prefixed = parse(&["--web.route-prefix", "/a/b/"]).unwrap();
        assert_eq!(
            (prefixed.route_prefix(), prefixed.link_prefix()),
            ("/a/b".into(), "/a/b".into())
        );
        for (args, flag) in [
            (&["--web.route-prefix", "finovy"][..], "--web.route-prefix"),
            (
                &["--web.external-url", "proxy/finovy"][..],
                "--web.external-url",
            ),
            (
                &["--web.external-url", "ftp://proxy/"][..],
                "--web.external-url",
            ),
        ] {
            let err = parse(args).expect_err(flag).render().to_string();
            assert!(err.lines().next().unwrap().contains(flag), "{flag}: {err}");
        }
    }

    #[test]
    fn base_path_is_kept_when_joining() {
        let mut c = parse(&["--api.url", "http://h:1/prefix/", "--api.path", "/v1/x"]).unwrap();
        c.account.token_env = Some("T".into());
        assert_eq!(account(&c).client.url.as_str(), "http://h:1/prefix/v1/x");
    }
}
