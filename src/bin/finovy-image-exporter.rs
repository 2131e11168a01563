//! The exporter daemon: parse flags, start, serve until SIGTERM or SIGINT.
//!
//! `finovy-image-exporter healthcheck [--url URL]` instead asks a running exporter's
//! `/healthz` and exits 0 when it answers 200, for container health checks in an
//! image without curl; `finovy-image-exporter check [FLAGS]` logs in and asks
//! page 1 of every target once, and says which work.

use std::time::Duration;

use finovy_image_exporter::app::Exporter;
use finovy_image_exporter::config::Config;
use finovy_image_exporter::healthcheck;
use finovy_image_exporter::logging;
use finovy_image_exporter::signals::{shutdown_signal, Signals};

/// How long the end of `main` waits for blocking work still running (a reload
/// reading thousands of files): the process is exiting, and nothing that work
/// could still do would be served.
const BLOCKING_WORK_GRACE: Duration = Duration::from_millis(500);

fn main() {
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == "healthcheck")
    {
        std::process::exit(healthcheck::run(std::env::args_os().skip(1)));
    }
    if std::env::args_os().nth(1).is_some_and(|a| a == "check") {
        // The daemon's own flags, without the subcommand's name.
        let args = std::env::args_os()
            .take(1)
            .chain(std::env::args_os().skip(2));
        let config = Config::parse_from_or_exit(args);
        std::process::exit(finovy_image_exporter::check::run(&config));
    }
    // The runtime comes first, for the signal handlers: from here on SIGHUP and
    // the signals to ignore cannot end the process, however long the flags and
    // the accounts file take (see `signals`).
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("cannot start the async runtime: {err}");
            std::process::exit(1);
        }
    };
    let signals = {
        let _in_runtime = runtime.enter();
        Signals::install()
    };
    let config = Config::parse_or_exit();
    if config.config_check {
        std::process::exit(finovy_image_exporter::app::check_config(&config));
    }
    runtime.block_on(run(config, signals));
    // Dropping the runtime would wait for every blocking task, a reload of
    // thousands of accounts included: SIGTERM must end the process in seconds.
    runtime.shutdown_timeout(BLOCKING_WORK_GRACE);
}

async fn run(config: Config, signals: Signals) {
    logging::init(config.log_level, config.log_format);
    tracing::info!(
        version = finovy_image_exporter::VERSION,
        revision = finovy_image_exporter::REVISION,
        "starting finovy-image-exporter"
    );
    let exporter = match Exporter::start(config).await {
        Ok(exporter) => exporter,
        Err(err) => {
            // In the log's own format, like every other line on stderr, so that
            // a collector that parses logfmt or JSON reads it too; a file with
            // several problems gives one line each.
            for line in err.to_string().lines() {
                tracing::error!(error = %line, "cannot start");
            }
            std::process::exit(err.exit_code());
        }
    };
    exporter.run_with_signals(signals, shutdown_signal()).await;
}
