//! `fake-model`: serves the fake OpenAI-compatible model until interrupted,
//! for trying a coderd's chats by hand. The tests start it in-process.

use std::net::SocketAddr;

use clap::Parser;
use coder_sim::fake_model::FakeModel;

/// A fake OpenAI-compatible model: plain text answers, turns held on request.
#[derive(Debug, Parser)]
#[command(name = "fake-model", version)]
struct Args {
    /// Address to listen on (loopback only by default).
    #[arg(long, default_value = "127.0.0.1:3100")]
    listen: SocketAddr,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let model = FakeModel::bind(args.listen).await?;
    // stdout carries only the URL, for scripts.
    println!("{}/v1", model.url());
    tokio::signal::ctrl_c().await?;
    Ok(())
}
