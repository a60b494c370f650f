//! The `ringcast` command.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use ringcast_engine::config::{Config, Overrides};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Ringcast: a realtime fan-out server (WebSocket pub/sub channels with history).
#[derive(Debug, Parser)]
#[command(name = "ringcast", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server. Every flag has a twin key in the TOML file given with --config;
    /// a flag beats the file, the file beats the default.
    Serve(ServeArgs),
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Address to listen on, e.g. 127.0.0.1:3001 (port 0 picks a free port) [config: listen; default 127.0.0.1:3001]
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Number of shards, one thread pinned per CPU [config: shards; default: number of CPUs]
    #[arg(long, value_name = "N")]
    shards: Option<usize>,
    /// Directory for channel history logs [config: data_dir; default ./data]
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// TOML configuration file (tenants, limits, history; see README)
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Development mode: tenant `dev` on the enterprise plan, no API key [config: dev]
    #[arg(long)]
    dev: bool,
    /// Refuse connections beyond this many with 503 [config: max_connections; default 100000]
    #[arg(long, value_name = "N")]
    max_connections: Option<usize>,
    /// Largest WebSocket message accepted; larger ones close with 1009 [config: max_message_bytes; default 2097152]
    #[arg(long, value_name = "BYTES")]
    max_message_bytes: Option<usize>,
    /// Outbound buffer per connection; when full the connection closes with 4008 [config: outbound_buffer_bytes; default 4194304]
    #[arg(long, value_name = "BYTES")]
    outbound_buffer_bytes: Option<usize>,
    /// Time allowed for a request head to arrive [config: handshake_timeout_ms; default 10000]
    #[arg(long, value_name = "MS")]
    handshake_timeout_ms: Option<u64>,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(args),
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    let overrides = Overrides {
        listen: args.listen,
        shards: args.shards,
        data_dir: args.data_dir,
        dev: args.dev,
        max_connections: args.max_connections,
        max_message_bytes: args.max_message_bytes,
        outbound_buffer_bytes: args.outbound_buffer_bytes,
        handshake_timeout_ms: args.handshake_timeout_ms,
    };
    let config = match Config::load(args.config.as_deref(), &overrides) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("ringcast: {e}");
            return ExitCode::from(2);
        }
    };
    match ringcast_engine::server::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ringcast: {e:#}");
            ExitCode::FAILURE
        }
    }
}
