//! The exporter daemon: parse flags, start, serve until SIGTERM or SIGINT.
//!
//! `finovy-image-exporter healthcheck [--url URL]` instead asks a running exporter's
//! `/healthz` and exits 0 when it answers 200, for container health checks in an
//! image without curl.

use finovy_image_exporter::app::{shutdown_signal, Exporter};
use finovy_image_exporter::config::Config;
use finovy_image_exporter::healthcheck;
use finovy_image_exporter::logging;

fn main() {
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == "healthcheck")
    {
        std::process::exit(healthcheck::run(std::env::args_os().skip(1)));
    }
    let config = Config::parse_or_exit();
    if config.config_check {
        std::process::exit(finovy_image_exporter::app::check_config(&config));
    }
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
    runtime.block_on(run(config));
}

async fn run(config: Config) {
    logging::init(config.log_level, config.log_format);
    tracing::info!(
        version = finovy_image_exporter::VERSION,
        revision = finovy_image_exporter::REVISION,
        "starting finovy-image-exporter"
    );
    let exporter = match Exporter::start(config).await {
        Ok(exporter) => exporter,
        Err(err) => {
            // Once, as plain text, like clap's errors: a start-up error is read
            // by whoever just ran the command, and a log line around it (the
            // logger writes to stderr too) would only say it a second time.
            eprintln!("{err}");
            std::process::exit(err.exit_code());
        }
    };
    exporter.run(shutdown_signal()).await;
}
