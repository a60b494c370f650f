//! The `ringcast` command.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use ringcast_engine::config::{Config, LogFormat, Overrides};
use ringcast_engine::reload::ConfigSource;
use ringcast_engine::tenant::TenantTable;
use ringcast_engine::token::{self, MintRequest, Permission};

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
    /// a flag beats the file, the file beats the default. SIGHUP reloads the file.
    Serve(ServeArgs),
    /// Print a channel token (HS256 JWT) signed with a tenant's key from the config file.
    Token(TokenArgs),
    /// Validate a config file and print what the server would run with it.
    CheckConfig {
        /// The TOML file.
        file: PathBuf,
    },
    /// Check this host for running Ringcast at scale: open-file limits, accept and SYN
    /// backlogs, io_uring and memlock, vm.max_map_count, CPUs vs shards, ephemeral
    /// ports, transparent huge pages, time sync. Prints what to change and the command
    /// for each finding; exits 0 when nothing is wrong, 1 otherwise.
    Doctor {
        /// The server's TOML file, for max_connections and shards (defaults otherwise)
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
struct TokenArgs {
    /// The TOML file holding the tenant's [[tenants.token_keys]]
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// Tenant id
    #[arg(long, value_name = "T")]
    tenant: String,
    /// Channel the token is for (repeat for several)
    #[arg(long, value_name = "C", required = true)]
    channel: Vec<String>,
    /// userId (the token's `sub`)
    #[arg(long, value_name = "U")]
    user: Option<String>,
    /// Comma-separated: subscribe, publish
    #[arg(long, value_name = "LIST", default_value = "subscribe")]
    permissions: String,
    /// Lifetime in seconds
    #[arg(long, value_name = "SECS", default_value_t = 3600)]
    expires_in: u64,
    /// Key id to sign with [default: the tenant's newest, its last token_keys entry]
    #[arg(long, value_name = "K")]
    kid: Option<String>,
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
    /// After SIGTERM, keep serving this long with /readyz answering 503 before closing connections with 1001 [config: drain_ms; default 0]
    #[arg(long, value_name = "MS")]
    drain_ms: Option<u64>,
    /// Log lines on stderr as text or json; RUST_LOG (else log_level in the file) sets the level [config: log_format; default text]
    #[arg(long, value_name = "FORMAT")]
    log_format: Option<LogFormat>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve(_)) {
        // The server sets its logs up from its configuration; the other commands log
        // little, as text.
        let _ = ringcast_engine::logging::init(LogFormat::Text, "info");
    }
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Token(args) => print_token(args),
        Command::CheckConfig { file } => check_config(file),
        Command::Doctor { config } => doctor(config),
    }
}

fn doctor(file: Option<PathBuf>) -> ExitCode {
    let config = match Config::load(file.as_deref(), &Overrides::default()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("ringcast: {e}");
            return ExitCode::from(2);
        }
    };
    let needs = ringcast_engine::doctor::Needs::of(&config);
    let report = ringcast_engine::doctor::run(&ringcast_engine::doctor::ThisHost, &needs);
    print!("{}", report.render());
    if report.has_findings() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn print_token(args: TokenArgs) -> ExitCode {
    let config = match Config::load(Some(&args.config), &Overrides::default()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("ringcast: {e}");
            return ExitCode::from(2);
        }
    };
    let tenants = TenantTable::new(&config.tenants, config.default_tenant.as_deref());
    let Some(tenant) = tenants.get(&args.tenant) else {
        eprintln!(
            "ringcast: no tenant `{}` in {}",
            args.tenant,
            args.config.display()
        );
        return ExitCode::from(2);
    };
    let mut permissions = Vec::new();
    for name in args
        .permissions
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        match Permission::parse(name) {
            Some(p) => permissions.push(p),
            None => {
                eprintln!("ringcast: unknown permission `{name}` (subscribe, publish)");
                return ExitCode::from(2);
            }
        }
    }
    let request = MintRequest {
        channels: args.channel,
        user: args.user,
        permissions,
        expires_in_secs: args.expires_in,
        kid: args.kid,
    };
    match token::mint(&tenant, &request, ringcast_engine::clock::wall_ms()) {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ringcast: {e}");
            ExitCode::from(2)
        }
    }
}

fn check_config(file: PathBuf) -> ExitCode {
    match Config::load(Some(&file), &Overrides::default()) {
        Ok(config) => {
            print!("{}", config.describe());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ringcast: {e}");
            ExitCode::from(2)
        }
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
        drain_ms: args.drain_ms,
        log_format: args.log_format,
    };
    let source = ConfigSource {
        path: args.config.clone(),
        flags: overrides.clone(),
    };
    let config = match source.load() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("ringcast: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = ringcast_engine::logging::init(config.log_format, &config.log_level) {
        eprintln!("ringcast: {e}");
        return ExitCode::from(2);
    }
    match ringcast_engine::server::run(config, source) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ringcast: {e:#}");
            ExitCode::FAILURE
        }
    }
}
