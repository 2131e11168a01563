//! A standalone simulator of the Finovy image list API, for demos, tests and
//! benchmarks. Prints `listening on ADDR` on its first stdout line.

use std::net::SocketAddr;

use clap::Parser;
use finovy_image_exporter::sim::{self, AuthStyle, SimOptions, SimServer, Simulator};

/// Simulated Finovy image list API.
#[derive(Debug, Parser)]
#[command(name = "finovy-api-sim", version)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Number of images.
    #[arg(long, default_value_t = 600)]
    images: usize,
    /// Comma-separated datacenter keys.
    #[arg(long, value_delimiter = ',', default_value = "HZ,SH,HK")]
    datacenters: Vec<String>,
    /// Comma-separated image types.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "Windows,Ubuntu,CentOS,Debian"
    )]
    image_types: Vec<String>,
    /// Seed of the synthetic data.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Token to require (any non-empty token when unset).
    #[arg(long)]
    token: Option<String>,
    /// Answer a wrong token with HTTP 401 (`http`) or `"code":401` in a 200 (`body`).
    #[arg(long, default_value = "http")]
    auth_style: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let auth_style = match args.auth_style.as_str() {
        "http" => AuthStyle::Http,
        "body" => AuthStyle::Body,
        other => anyhow::bail!("--auth-style: '{other}' is not http or body"),
    };
    let images = sim::generate(&sim::GenerateOptions {
        images: args.images,
        datacenters: args.datacenters,
        image_types: args.image_types,
        seed: args.seed,
        ..Default::default()
    });
    let simulator = Simulator::new(
        images,
        SimOptions {
            token: args.token,
            auth_style,
        },
    );
    let server = SimServer::bind(args.listen, simulator).await?;
    println!("listening on {}", server.local_addr());
    server
        .serve(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await;
    Ok(())
}
