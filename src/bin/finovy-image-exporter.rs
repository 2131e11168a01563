//! The exporter daemon: parse flags, start, serve until SIGTERM or SIGINT.

use finovy_image_exporter::app::{shutdown_signal, Exporter};
use finovy_image_exporter::config::Config;
use finovy_image_exporter::logging;

#[tokio::main]
async fn main() {
    let config = Config::parse_or_exit();
    logging::init(config.log_level, config.log_format);
    tracing::info!(
        version = finovy_image_exporter::VERSION,
        revision = finovy_image_exporter::REVISION,
        "starting finovy-image-exporter"
    );
    let exporter = match Exporter::start(config).await {
        Ok(exporter) => exporter,
        Err(err) => {
            tracing::error!(error = %err, "cannot start");
            eprintln!("{err}");
            std::process::exit(err.exit_code());
        }
    };
    exporter.run(shutdown_signal()).await;
}
