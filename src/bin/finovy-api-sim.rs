//! A standalone simulator of the Finovy image list API, for demos, tests and
//! benchmarks. Prints `listening on ADDR` on its first stdout line.
//!
//! Faults are set at start with `--faults` and changed at run time with
//! `PUT /_sim/faults`; see the `sim` module of the library for their JSON.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use finovy_image_exporter::sim::{self, AuthStyle, Faults, SimOptions, SimServer, Simulator};

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
    /// Seed of the synthetic data, the fault rates and the evolution.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Token to require (any non-empty token when unset).
    #[arg(long)]
    token: Option<String>,
    /// Answer a wrong token with HTTP 401 (`http`) or `"code":401` in a 200 (`body`).
    #[arg(long, default_value = "http")]
    auth_style: String,
    /// Serve at most this many items per page, whatever `pageSize` asks.
    #[arg(long)]
    page_cap: Option<usize>,
    /// Faults in force from the start, as JSON (or `@FILE` holding it), e.g.
    /// '{"rules":[{"datacenters":["SH"],"action":{"kind":"status","status":503}}]}'.
    #[arg(long, value_parser = parse_faults)]
    faults: Option<Faults>,
    /// Move the images through their life this often (e.g. `5s`); off when unset.
    #[arg(long, value_parser = humantime::parse_duration)]
    evolve_every: Option<Duration>,
}

fn parse_faults(s: &str) -> Result<Faults, String> {
    let text = match s.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?,
        None => s.to_string(),
    };
    serde_json::from_str(&text).map_err(|e| format!("not a faults document: {e}"))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let auth_style = match args.auth_style.as_str() {
        "http" => AuthStyle::Http,
        "body" => AuthStyle::Body,
        other => anyhow::bail!("--auth-style: '{other}' is not http or body"),
    };
    if args.evolve_every.is_some_and(|d| d.is_zero()) {
        anyhow::bail!("--evolve-every: must be greater than zero");
    }
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
    simulator.reseed(args.seed);
    let mut faults = args.faults.unwrap_or_default();
    if args.page_cap.is_some() {
        faults.page_cap = args.page_cap;
    }
    simulator.set_faults(faults);
    let server = SimServer::bind(args.listen, simulator.clone()).await?;
    println!("listening on {}", server.local_addr());
    if let Some(every) = args.evolve_every {
        tokio::spawn(simulator.evolve_every(every));
    }
    server
        .serve(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await;
    Ok(())
}
