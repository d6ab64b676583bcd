//! `nx1`: the NX1 node and its command line. This file is argument handling and wiring; the
//! work lives in the modules and in the `vpn` crate.
#![forbid(unsafe_code)]

mod config;
mod control;
mod daemon;
mod http;
mod identity;
mod init;
mod metrics;
mod store;

use clap::{Parser, Subcommand};
use config::{Config, LogFormat};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Where `nx1 init` and `nx1 up` put a node when told nothing else.
const DEFAULT_DIR: &str = "nx1-data";

#[derive(Parser)]
#[command(
    name = "nx1",
    version,
    about = "NX1: a decentralized WireGuard VPN, password vault and threat filter"
)]
struct Cli {
    /// The node's configuration file [default: nx1-data/nx1.toml]
    #[arg(
        long,
        short = 'c',
        global = true,
        env = "NX1_CONFIG",
        value_name = "FILE"
    )]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a node: identity and WireGuard keys, a commented nx1.toml, the SQLite database.
    Init {
        /// Directory to create the node in.
        #[arg(long, default_value = DEFAULT_DIR, value_name = "DIR")]
        dir: PathBuf,
        /// Replace an existing identity (the node gets a new id; the old database is kept aside).
        #[arg(long)]
        force: bool,
    },
    /// Run the node until SIGINT/SIGTERM. With no config and no ./nx1-data, runs `init` first.
    Up,
    /// Show what the running node is doing.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("nx1: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nx1: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Init { dir, force } => {
            let made = init::init(&dir, force).await?;
            if let Some(aside) = &made.moved_aside {
                println!("kept the old database as {}", aside.display());
            }
            println!("created node {} in {}", made.node_id, dir.display());
            println!("wireguard public key {}", made.wireguard_public_key);
            println!("run it with: nx1 up --config {}", made.config.display());
            Ok(())
        }
        Command::Up => {
            let path = match cli.config {
                Some(path) => path,
                None => {
                    let path = Path::new(DEFAULT_DIR).join(init::CONFIG_FILE);
                    if !path.exists() {
                        let made = init::init(Path::new(DEFAULT_DIR), false).await?;
                        eprintln!("nx1: created node {} in {DEFAULT_DIR}/", made.node_id);
                    }
                    path
                }
            };
            let config = Config::load(&path)?;
            init_logging(config.raw.log.format, &config.raw.log.level);
            daemon::run(config).await
        }
        Command::Status { json } => {
            let path = cli
                .config
                .unwrap_or_else(|| Path::new(DEFAULT_DIR).join(init::CONFIG_FILE));
            let config = Config::load(&path)?;
            let answer = control::call(&config.control_socket, &control::Request::Status).await?;
            match answer {
                control::Response::Status(report) if json => {
                    println!("{}", serde_json::to_string_pretty(&report)?);
                }
                control::Response::Status(report) => print_status(&report),
                control::Response::Error { message } => anyhow::bail!("{message}"),
            }
            Ok(())
        }
    }
}

fn print_status(r: &control::StatusReport) {
    let uptime = r.uptime_secs;
    println!("nx1 {} — node {}", r.version, r.node_id);
    println!(
        "  uptime     {}h{:02}m{:02}s",
        uptime / 3600,
        uptime / 60 % 60,
        uptime % 60
    );
    println!("  wireguard  {}", r.wireguard_public_key);
    println!(
        "  store      {} (schema {})",
        r.store.backend, r.store.schema_version
    );
    println!("  http api   http://{}", r.http_listen);
    println!("  control    {}", r.control_socket.display());
    println!("  data dir   {}", r.data_dir.display());
    println!("  config     {}", r.config_file.display());
}

fn init_logging(format: LogFormat, level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}
