//! `dhanman gateway`: the gateway as a process of its own.

use std::future::IntoFuture;
use std::net::SocketAddr;

use serde_json::json;

use crate::{Error, Gateway, Result, Switches, router};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where to listen; port 0 picks a free port (the first stdout line names it).
    #[arg(long, env = "DHANMAN_GATEWAY_ADDR", default_value = "127.0.0.1:8090")]
    pub addr: SocketAddr,
    /// Delay added to every /v1 request, in milliseconds.
    #[arg(long, env = "DHANMAN_GATEWAY_LATENCY_MS", default_value_t = 0)]
    pub latency_ms: u64,
    /// Fraction (0..1) of charges and refunds answered 503 without charging.
    #[arg(long, env = "DHANMAN_GATEWAY_ERROR_RATE", default_value_t = 0.0, value_parser = rate)]
    pub error_rate: f64,
    /// Fraction that charge nothing and hang for --hang-ms, then close the connection.
    #[arg(long, env = "DHANMAN_GATEWAY_TIMEOUT_RATE", default_value_t = 0.0, value_parser = rate)]
    pub timeout_rate: f64,
    /// Fraction that are charged but whose connection is closed without a response.
    #[arg(long, env = "DHANMAN_GATEWAY_LOST_RESPONSE_RATE", default_value_t = 0.0, value_parser = rate)]
    pub lost_response_rate: f64,
    /// How long a hanging request is held open, in milliseconds.
    #[arg(long, env = "DHANMAN_GATEWAY_HANG_MS", default_value_t = 30_000)]
    pub hang_ms: u64,
    /// Start down: every request but /_control answered 503.
    #[arg(long, env = "DHANMAN_GATEWAY_DOWN")]
    pub down: bool,
    /// Seed of the generator behind the rates; random (and printed) when absent.
    #[arg(long, env = "DHANMAN_GATEWAY_SEED")]
    pub seed: Option<u64>,
}

fn rate(raw: &str) -> std::result::Result<f64, String> {
    let rate: f64 = raw.parse().map_err(|e| format!("{e}"))?;
    if (0.0..=1.0).contains(&rate) {
        Ok(rate)
    } else {
        Err("must be between 0 and 1".into())
    }
}

/// Serves until Ctrl-C. The first line on stdout is JSON naming the bound address, so a
/// script can start it on port 0 and read where it went.
pub async fn run(args: Args) -> Result<()> {
    let seed = args.seed.unwrap_or_else(rand::random);
    let gateway = Gateway::new(Switches {
        latency_ms: args.latency_ms,
        error_rate: args.error_rate,
        timeout_rate: args.timeout_rate,
        lost_response_rate: args.lost_response_rate,
        hang_ms: args.hang_ms,
        down: args.down,
        seed,
        ..Switches::default()
    })?;
    let listener = tokio::net::TcpListener::bind(args.addr)
        .await
        .map_err(|source| Error::Bind {
            addr: args.addr,
            source,
        })?;
    let addr = listener.local_addr().map_err(Error::Serve)?;
    // The one line a parent process reads to find the address it chose.
    #[allow(clippy::print_stdout)]
    {
        println!(
            "{}",
            json!({"event": "listening", "service": "dhanman-gateway", "addr": addr, "seed": seed})
        );
    }
    tracing::info!(%addr, seed, "payment gateway listening; its state is in memory only");
    // Not a graceful shutdown: a hanging request would hold it for --hang-ms.
    tokio::select! {
        served = axum::serve(listener, router(gateway)).into_future() => served.map_err(Error::Serve),
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}
