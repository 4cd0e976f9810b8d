//! The `tickwire` command line: parse flags, build the config, start the
//! threads, wait for a signal.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "tickwire", version, about = "Market-data fan-out engine")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// WebSocket echo server for the Autobahn conformance suite (a test aid,
    /// never part of the demo or production defaults).
    Echo {
        /// Address to listen on; port 0 picks a free port (printed on stdout).
        #[arg(long, default_value = "127.0.0.1:9001")]
        listen: SocketAddr,
        /// Path that upgrades to the echo endpoint.
        #[arg(long, default_value = "/echo")]
        echo_path: String,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Echo { listen, echo_path } => {
            let listener = TcpListener::bind(listen).with_context(|| format!("bind {listen}"))?;
            println!("listening on {}", listener.local_addr()?);
            let stop = Arc::new(AtomicBool::new(false));
            signal_hook::flag::register(signal_hook::consts::SIGTERM, stop.clone())?;
            signal_hook::flag::register(signal_hook::consts::SIGINT, stop.clone())?;
            tickwire::net::echo::run(listener, &echo_path, stop)?;
        }
    }
    Ok(())
}
