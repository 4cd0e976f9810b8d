//! `tickwire-loadgen`: load generation against a running tickwire.
//!
//! For now one purpose-built scenario, `fanout`: many WebSocket clients on one
//! symbol, a feed at a fixed delta rate, delivered messages per second and
//! delivery latency (from the feed's scheduled send time, so a stalled feed or
//! engine cannot hide latency: coordinated omission is corrected), the client's
//! own CPU next to the server's.

mod fanout;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "tickwire-loadgen",
    version,
    about = "Load generator for tickwire"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// N clients subscribed to one symbol; a feed at a fixed rate; report
    /// delivered messages/s, latency percentiles, CPU and server memory.
    Fanout(fanout::Args),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Fanout(args) => fanout::run(args),
    }
}
