//! `finovy-image-exporter healthcheck [--url URL]`: asks a running exporter's
//! `/healthz` and exits 0 when it answers 200, 1 otherwise (2 for a bad flag).
//!
//! Container images without curl or wget can then still have a `HEALTHCHECK`.
//! The check has its own short timeout, so a hung exporter fails it instead of
//! hanging the container runtime's probe.

use std::ffi::OsString;
use std::time::Duration;

use clap::Parser;

/// Flags of the `healthcheck` subcommand.
#[derive(Debug, Parser)]
#[command(
    name = "finovy-image-exporter healthcheck",
    about = "Exit 0 when the exporter's /healthz answers 200"
)]
struct Args {
    /// The URL to ask.
    #[arg(long, default_value = "http://127.0.0.1:9929/healthz")]
    url: url::Url,
    /// How long to wait for the answer.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

/// Runs the check with `args` (the first being the subcommand's name) and returns
/// the exit status.
pub fn run(args: impl IntoIterator<Item = OsString>) -> i32 {
    let args = match Args::try_parse_from(args) {
        Ok(args) => args,
        Err(err) => {
            let code = if err.use_stderr() { 2 } else { 0 };
            let _ = err.print();
            return code;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("healthcheck: cannot start the async runtime: {err}");
            return 1;
        }
    };
    runtime.block_on(check(&args))
}

async fn check(args: &Args) -> i32 {
    crate::install_crypto_provider();
    let client = match reqwest::Client::builder().timeout(args.timeout).build() {
        Ok(client) => client,
        Err(err) => {
            eprintln!("healthcheck: {err}");
            return 1;
        }
    };
    match client.get(args.url.clone()).send().await {
        Ok(resp) if resp.status() == reqwest::StatusCode::OK => 0,
        Ok(resp) => {
            eprintln!("healthcheck: {} answered {}", args.url, resp.status());
            1
        }
        Err(err) => {
            eprintln!(
                "healthcheck: {} did not answer: {}",
                args.url,
                err.without_url()
            );
            1
        }
    }
}
