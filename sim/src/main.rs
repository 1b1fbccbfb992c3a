//! `coder-sim`: serves the Coder API simulator until interrupted.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use coder_sim::{Seed, SimConfig, Simulator, Timings};
use tracing_subscriber::EnvFilter;

/// A simulator of the Coder REST API used by chatworkspace-operator.
#[derive(Debug, Parser)]
#[command(name = "coder-sim", version)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:3000")]
    listen: SocketAddr,
    /// The session token clients must send in `Coder-Session-Token`.
    #[arg(long, env = "CODER_SIM_TOKEN", hide_env_values = true)]
    token: String,
    /// Seed file (JSON, or YAML when it ends in .yaml/.yml); the built-in
    /// default seed when absent.
    #[arg(long)]
    seed: Option<PathBuf>,
    /// Test timings: builds take half a second and agents time out in seconds.
    #[arg(long)]
    fast: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Logs go to stderr so that stdout carries only the URL, for scripts.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .init();
    let args = Args::parse();
    let seed = match &args.seed {
        Some(path) => Seed::from_file(path)?,
        None => Seed::default(),
    };
    let config =
        SimConfig { token: args.token, seed, timings: if args.fast { Timings::fast() } else { Timings::default() } };
    let simulator = Simulator::bind(config, args.listen).await?;
    println!("{}", simulator.url());
    shutdown_signal().await?;
    simulator.shutdown().await;
    Ok(())
}

/// Ctrl-C, or SIGTERM from a script that started the simulator.
async fn shutdown_signal() -> anyhow::Result<()> {
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).context("listening for SIGTERM")?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result.context("listening for Ctrl-C"),
        _ = terminate.recv() => Ok(()),
    }
}
