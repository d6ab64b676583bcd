//! `nx1`: the NX1 node and its command line. This file is argument handling and wiring; the
//! work lives in the modules and in the `vpn` crate.
#![forbid(unsafe_code)]

mod busy;
mod client;
mod config;
mod control;
mod credits;
mod credits_api;
mod daemon;
mod egress;
mod guard;
mod http;
mod identity;
mod init;
mod ledger;
mod mesh;
mod metrics;
mod peers;
mod relay;
mod signed;
mod standby;
mod store;
mod uapi;
mod vault;
mod vault_cli;
mod vpn;

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
        /// Replace an existing identity: new keys, nx1.toml back to its defaults, the old
        /// database kept aside under a new name.
        #[arg(long)]
        force: bool,
    },
    /// Run the node until SIGINT/SIGTERM. With no --config and no ./nx1-data/nx1.toml, runs
    /// `init` in ./nx1-data first.
    Up,
    /// Show what the running node is doing.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Register, list and remove WireGuard clients of the running node (no restart needed).
    #[command(subcommand)]
    Peer(PeerCommand),
    /// Client mode: bring up a tunnel from a standard wg-quick config, through the running node.
    Connect {
        /// The wg-quick file.
        file: PathBuf,
        /// Name of the tunnel interface.
        #[arg(long, default_value = "nx1c", value_name = "NAME")]
        interface: String,
        /// Drop DNS that would leave outside the tunnel (nftables).
        #[arg(long)]
        dns_protection: bool,
        /// Drop everything that would leave outside the tunnel, DNS included: when the
        /// tunnel's node stops answering, traffic stops instead of leaking.
        #[arg(long)]
        kill_switch: bool,
        /// Private two-hop: reach the exit through a relay of this node's mesh, so the exit
        /// never sees this host's address: `auto` (the nearest live relay) or a relay's node
        /// id.
        #[arg(long, value_name = "RELAY")]
        two_hop: Option<String>,
    },
    /// Client mode: take the tunnel down.
    Disconnect,
    /// Credits: this node's owner's balance, the usage it carried as its clients' accounts
    /// signed it, an account's signed history, grants and device keys.
    Credits {
        /// Print JSON instead of text.
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        action: Option<CreditsAction>,
    },
    /// What this node gives the mesh: relay duty on or off, and the cap on what it carries
    /// for others. Changes take effect at once and last across restarts.
    Contribute {
        /// `status`, `on` (relay for others) or `off` (stop relaying now).
        #[arg(value_parser = ["status", "on", "off"], default_value = "status")]
        action: String,
        /// Cap in Mbit/s on relayed traffic and on traffic through the exit, each (0: none).
        #[arg(long, value_name = "MBIT")]
        bandwidth: Option<u32>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Guard, the threat filter: DNS verdicts, rules, and what it found.
    #[command(subcommand)]
    Guard(GuardCommand),
    /// The password vault: end-to-end encrypted, synced through nodes that see only ciphertext.
    Vault {
        #[command(flatten)]
        opts: vault_cli::VaultOpts,
        #[command(subcommand)]
        command: Box<vault_cli::VaultCommand>,
    },
}

/// `nx1 credits` subcommands.
#[derive(Subcommand)]
enum CreditsAction {
    /// Every signed entry of an account, oldest first, from one of its replicas.
    History {
        /// The account [default: this node's owner].
        #[arg(long, value_name = "ACCOUNT")]
        account: Option<String>,
    },
    /// Top an account up, signed by this node (honoured by the nodes that list it in
    /// `[credits] issuers`).
    Grant {
        /// The account (a base64 ed25519 public key).
        account: String,
        /// Credits.
        amount: u64,
        /// Why, in words.
        #[arg(long, default_value = "")]
        memo: String,
    },
    /// Let another device's key spend for this node's account (`add`), or stop it (`remove`).
    Device {
        /// `add` or `remove`.
        #[arg(value_parser = ["add", "remove"])]
        action: String,
        /// The device's key: its `nx1 status` node id.
        key: String,
    },
}

#[derive(Subcommand)]
enum GuardCommand {
    /// Guard's verdict for a domain, and which list decided it.
    Check {
        /// The domain.
        domain: String,
        /// As this peer gets it (its own rules first).
        #[arg(long, value_name = "NAME")]
        peer: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Re-read the block-list files (and local rules) without a restart.
    Reload,
    /// Never block a domain on this node (wins over every list).
    Allow {
        /// The domain.
        domain: String,
        /// Only for this peer (its rules come before everyone's).
        #[arg(long, value_name = "NAME")]
        peer: Option<String>,
        /// Not on this node: ask the node this node's client tunnel goes to, through the
        /// tunnel, to allow it for this device alone.
        #[arg(long, conflicts_with = "peer")]
        at_node: bool,
    },
    /// Block a domain (and the names below it) on this node.
    Deny {
        /// The domain.
        domain: String,
        /// Only for this peer (its rules come before everyone's).
        #[arg(long, value_name = "NAME")]
        peer: Option<String>,
    },
    /// Turn a Guard category off for one peer: a block list (by the name `nx1 guard reload`
    /// shows) or a detector — dga, phishing, tunnelling, rebinding.
    Disable {
        /// The category.
        category: String,
        /// The peer.
        #[arg(long, value_name = "NAME")]
        peer: String,
    },
    /// Turn a Guard category back on for one peer.
    Enable {
        /// The category.
        category: String,
        /// The peer.
        #[arg(long, value_name = "NAME")]
        peer: String,
    },
    /// Remove this node's allow/deny rule for a domain.
    Clear {
        /// The domain.
        domain: String,
        /// Only for this peer (its rules come before everyone's).
        #[arg(long, value_name = "NAME")]
        peer: Option<String>,
    },
    /// Recent findings: blocked DNS queries, scans, floods (oldest first).
    Findings {
        /// Only this peer's.
        #[arg(long, value_name = "NAME")]
        peer: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum PeerCommand {
    /// Register a client and print a standard wg-quick config for it on stdout.
    Add {
        /// A unique name (letters, digits, '.', '_', '-').
        name: String,
        /// Register this public key instead of generating a key pair; the private key then
        /// never exists on the node.
        #[arg(long, value_name = "KEY")]
        public_key: Option<String>,
        /// The Endpoint written into the config [default: [vpn] endpoint].
        #[arg(long, value_name = "HOST:PORT", conflicts_with = "via")]
        endpoint: Option<String>,
        /// Reach this exit through a relay (private two-hop: the exit never sees the client's
        /// address): a relay's node id from the directory, or its "host:port".
        #[arg(long, value_name = "RELAY")]
        via: Option<String>,
        /// Also print the config as a QR code for the mobile apps.
        #[arg(long)]
        qr: bool,
    },
    /// List clients: addresses, endpoint, latest handshake, transfer.
    List {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Remove a client; its sessions end at once.
    Remove {
        /// The client's name.
        name: String,
    },
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
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
            let config = Config::load(&config_path(cli.config))?;
            match ask(&config, control::Request::Status).await? {
                control::Response::Status(report) if json => {
                    println!("{}", serde_json::to_string_pretty(&report)?);
                }
                control::Response::Status(report) => print_status(&report),
                other => unexpected(other)?,
            }
            Ok(())
        }
        Command::Connect {
            file,
            interface,
            dns_protection,
            kill_switch,
            two_hop,
        } => {
            let config = Config::load(&config_path(cli.config))?;
            let text = zeroize::Zeroizing::new(
                std::fs::read_to_string(&file)
                    .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?,
            );
            let request = control::Request::Connect {
                config: text.to_string(),
                interface,
                dns_protection,
                kill_switch,
                two_hop,
            };
            let control::Response::Connected(c) = ask(&config, request).await? else {
                anyhow::bail!("unexpected answer from the daemon");
            };
            println!(
                "connected on {} to {} as {}{}",
                c.interface,
                c.endpoints.join(", "),
                c.addresses.join(", "),
                c.via
                    .as_deref()
                    .map(|v| format!(" (private two-hop through relay {v})"))
                    .unwrap_or_default()
            );
            Ok(())
        }
        Command::Disconnect => {
            let config = Config::load(&config_path(cli.config))?;
            let control::Response::Disconnected { interface } =
                ask(&config, control::Request::Disconnect).await?
            else {
                anyhow::bail!("unexpected answer from the daemon");
            };
            println!("disconnected {interface}");
            Ok(())
        }
        Command::Credits {
            json,
            action: Some(action),
        } => {
            let config = Config::load(&config_path(cli.config))?;
            let request = match action {
                CreditsAction::History { account } => control::Request::CreditsHistory { account },
                CreditsAction::Grant {
                    account,
                    amount,
                    memo,
                } => control::Request::CreditsGrant {
                    account,
                    amount,
                    memo,
                },
                CreditsAction::Device { action, key } => control::Request::CreditsDevice {
                    device: key,
                    active: action == "add",
                },
            };
            match ask(&config, request).await? {
                control::Response::CreditsHistory(view) if json => {
                    println!("{}", serde_json::to_string_pretty(&view)?)
                }
                control::Response::CreditsHistory(view) => {
                    print_balance(&view.balance);
                    println!("(as replica {} holds it)", view.replica);
                    for h in &view.history {
                        println!(
                            "{}  {:<6} {:<10} {:>+12}  {}",
                            h.at, h.kind, h.service, h.amount, h.id
                        );
                    }
                }
                control::Response::CreditsPublished { entry, replicas } => {
                    if json {
                        println!("{}", serde_json::to_string_pretty(&entry)?);
                    } else {
                        println!("signed and taken by {replicas} replica(s): {}", entry.entry);
                    }
                }
                _ => anyhow::bail!("unexpected answer from the daemon"),
            }
            Ok(())
        }
        Command::Credits { json, action: None } => {
            let config = Config::load(&config_path(cli.config))?;
            let control::Response::Credits(c) = ask(&config, control::Request::Credits).await?
            else {
                anyhow::bail!("unexpected answer from the daemon");
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&c)?);
            } else {
                println!("account     {}", c.owner);
                match (&c.balance, &c.balance_error) {
                    (Some(b), _) => print_balance(b),
                    (None, Some(e)) => println!("balance     unknown: {e}"),
                    (None, None) => {}
                }
                println!(
                    "{} receipts taken, {} refused",
                    c.receipts_taken,
                    c.receipts_refused.iter().map(|(_, n)| n).sum::<u64>()
                );
                for (why, n) in &c.receipts_refused {
                    println!("  refused {n} ({why})");
                }
                if c.require_receipts {
                    println!(
                        "clients must sign receipts; cut off now: {}",
                        if c.cut_off.is_empty() {
                            "none".to_owned()
                        } else {
                            c.cut_off.join(", ")
                        }
                    );
                }
                for a in &c.accounts {
                    println!(
                        "{}  {} sessions, {} bytes up, {} bytes down, {} s (signed)",
                        a.account, a.sessions, a.bytes_up, a.bytes_down, a.seconds
                    );
                }
            }
            Ok(())
        }
        Command::Contribute {
            action,
            bandwidth,
            json,
        } => {
            let config = Config::load(&config_path(cli.config))?;
            let request = control::Request::Contribute {
                relay: match action.as_str() {
                    "on" => Some(true),
                    "off" => Some(false),
                    _ => None,
                },
                bandwidth_mbit: bandwidth,
            };
            let control::Response::Contribution(c) = ask(&config, request).await? else {
                anyhow::bail!("unexpected answer from the daemon");
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&c)?);
            } else {
                println!(
                    "relay duty  {}",
                    match (c.relay_configured, c.relay_on) {
                        (false, _) => "not set up ([relay] enabled = false)",
                        (true, true) => "on",
                        (true, false) => "off",
                    }
                );
                if let Some(why) = &c.paused {
                    println!("            paused: {why}");
                }
                println!("exit        {}", if c.exit { "yes" } else { "no" });
                let l = &c.limits;
                let mut limits = Vec::new();
                if l.cpu_percent > 0 {
                    limits.push(format!("pause above {}% CPU in use", l.cpu_percent));
                }
                if l.only_when_idle {
                    limits.push("only while the machine is idle".to_owned());
                }
                if l.memory_mb > 0 {
                    limits.push(format!("at most {} MiB of memory", l.memory_mb));
                }
                if l.storage_mb > 0 {
                    limits.push(format!("{} MiB of vault storage", l.storage_mb));
                }
                if !limits.is_empty() {
                    println!("limits      {}", limits.join("; "));
                }
                println!(
                    "cap         {}",
                    if c.bandwidth_mbit == 0 {
                        "none".to_owned()
                    } else {
                        format!(
                            "{} Mbit/s each for relayed and exited traffic",
                            c.bandwidth_mbit
                        )
                    }
                );
                println!(
                    "carried     {} bytes relayed, {} bytes through the exit; {} packets over the cap dropped",
                    c.relayed_bytes, c.exited_bytes, c.over_cap_drops
                );
            }
            Ok(())
        }
        Command::Guard(command) => {
            let config = Config::load(&config_path(cli.config))?;
            guard_command(&config, command).await
        }
        Command::Vault { opts, command } => {
            tokio::task::spawn_blocking(move || vault_cli::run(&opts, *command)).await?
        }
        Command::Peer(command) => {
            let config = Config::load(&config_path(cli.config))?;
            peer_command(&config, command).await
        }
    }
}

fn config_path(given: Option<PathBuf>) -> PathBuf {
    given.unwrap_or_else(|| Path::new(DEFAULT_DIR).join(init::CONFIG_FILE))
}

/// Sends a request to the daemon; an error answer becomes an error.
async fn ask(
    config: &config::Resolved,
    request: control::Request,
) -> anyhow::Result<control::Response> {
    match control::call(&config.control_socket, &request).await? {
        control::Response::Error { message } => anyhow::bail!("{message}"),
        answer => Ok(answer),
    }
}

fn unexpected(answer: control::Response) -> anyhow::Result<()> {
    anyhow::bail!("unexpected answer from the daemon: {answer:?}")
}

async fn peer_command(config: &config::Resolved, command: PeerCommand) -> anyhow::Result<()> {
    match command {
        PeerCommand::Add {
            name,
            public_key,
            endpoint,
            via,
            qr,
        } => {
            // The key pair is made here, in the command, so the daemon only ever sees the
            // public half.
            let private = match &public_key {
                Some(_) => None,
                None => Some(nx1_vpn::keys::PrivateKey::generate()),
            };
            let public_key = match (&public_key, &private) {
                (Some(k), _) => nx1_vpn::keys::PublicKey::from_base64(k)
                    .map_err(|e| anyhow::anyhow!("--public-key: {e}"))?
                    .to_base64(),
                (None, Some(p)) => p.public_key().to_base64(),
                (None, None) => unreachable!(),
            };
            let request = control::Request::PeerAdd {
                name,
                public_key,
                endpoint,
                via,
            };
            let control::Response::PeerAdded(added) = ask(config, request).await? else {
                anyhow::bail!("unexpected answer from the daemon");
            };
            let text = client_config(&added, private.as_ref())?;
            print!("{}", text.as_str());
            if qr {
                let code = qrcode::QrCode::new(text.as_bytes())
                    .map_err(|e| anyhow::anyhow!("config too large for a QR code: {e}"))?;
                let art = code
                    .render::<qrcode::render::unicode::Dense1x2>()
                    .quiet_zone(true)
                    .build();
                println!("\n{art}");
            }
            Ok(())
        }
        PeerCommand::List { json } => {
            let control::Response::Peers { peers } =
                ask(config, control::Request::PeerList).await?
            else {
                anyhow::bail!("unexpected answer from the daemon");
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&peers)?);
                return Ok(());
            }
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            println!(
                "{:<16} {:<15} {:<22} {:>10} {:>12} {:>12}",
                "NAME", "ADDRESS", "ENDPOINT", "HANDSHAKE", "RX", "TX"
            );
            for p in peers {
                let handshake = p.latest_handshake.map_or("never".to_owned(), |t| {
                    format!("{}s ago", now.saturating_sub(t))
                });
                println!(
                    "{:<16} {:<15} {:<22} {:>10} {:>12} {:>12}",
                    p.name,
                    p.ipv4,
                    p.endpoint.as_deref().unwrap_or("-"),
                    handshake,
                    p.rx_bytes,
                    p.tx_bytes
                );
            }
            Ok(())
        }
        PeerCommand::Remove { name } => {
            let control::Response::PeerRemoved { name } =
                ask(config, control::Request::PeerRemove { name }).await?
            else {
                anyhow::bail!("unexpected answer from the daemon");
            };
            eprintln!("removed peer {name}");
            Ok(())
        }
    }
}

async fn guard_command(config: &config::Resolved, command: GuardCommand) -> anyhow::Result<()> {
    let rule = |domain: String, action, peer| control::Request::GuardRule {
        domain,
        action,
        peer,
    };
    let enable = matches!(command, GuardCommand::Enable { .. });
    let command = match command {
        GuardCommand::Allow {
            domain,
            at_node: true,
            ..
        } => {
            let control::Response::AllowedAtNode { domain } =
                ask(config, control::Request::GuardAllowAtNode { domain }).await?
            else {
                anyhow::bail!("unexpected answer from the daemon");
            };
            println!("{domain}: allowed for this device by the node the tunnel goes to");
            return Ok(());
        }
        GuardCommand::Allow { domain, peer, .. } => rule(domain, control::RuleAction::Allow, peer),
        GuardCommand::Deny { domain, peer } => rule(domain, control::RuleAction::Deny, peer),
        GuardCommand::Clear { domain, peer } => rule(domain, control::RuleAction::Clear, peer),
        GuardCommand::Disable { category, peer } | GuardCommand::Enable { category, peer } => {
            let enabled = enable;
            let control::Response::GuardCategories { peer, disabled } = ask(
                config,
                control::Request::GuardCategory {
                    category,
                    peer,
                    enabled,
                },
            )
            .await?
            else {
                anyhow::bail!("unexpected answer from the daemon");
            };
            if disabled.is_empty() {
                println!("{peer}: every Guard category is on");
            } else {
                println!("{peer}: off: {}", disabled.join(", "));
            }
            return Ok(());
        }
        GuardCommand::Reload => {
            let control::Response::GuardReloaded {
                lists,
                blocked_names,
            } = ask(config, control::Request::GuardReload).await?
            else {
                anyhow::bail!("unexpected answer from the daemon");
            };
            println!(
                "reloaded {} lists, {blocked_names} blocked names",
                lists.len()
            );
            return Ok(());
        }
        other => return guard_query(config, other).await,
    };
    let control::Response::GuardVerdict(v) = ask(config, command).await? else {
        anyhow::bail!("unexpected answer from the daemon");
    };
    println!("{}: now {}", v.domain, v.verdict);
    Ok(())
}

async fn guard_query(config: &config::Resolved, command: GuardCommand) -> anyhow::Result<()> {
    match command {
        GuardCommand::Check { domain, peer, json } => {
            let control::Response::GuardVerdict(v) =
                ask(config, control::Request::GuardCheck { domain, peer }).await?
            else {
                anyhow::bail!("unexpected answer from the daemon");
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                match (&v.list, &v.rule) {
                    (Some(list), Some(rule)) => {
                        println!("{}: {} by {rule} in {list}", v.domain, v.verdict)
                    }
                    _ => println!("{}: {}", v.domain, v.verdict),
                }
                for s in &v.scores {
                    println!(
                        "  {} model: score {:.3}{}",
                        s.model,
                        s.score,
                        if s.flagged { " (flagged)" } else { "" }
                    );
                }
            }
            Ok(())
        }
        GuardCommand::Findings { peer, json } => {
            let control::Response::GuardFindings { findings } =
                ask(config, control::Request::GuardFindings { peer }).await?
            else {
                anyhow::bail!("unexpected answer from the daemon");
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&findings)?);
            } else {
                for f in findings {
                    let who = f.peer.as_deref().unwrap_or(&f.client);
                    if f.name.is_empty() {
                        // A packet-path finding: no name, the rule says what was seen.
                        println!(
                            "{} {who:<12} {:<5} {} ({})",
                            f.at, f.query_type, f.rule, f.list
                        );
                    } else {
                        println!(
                            "{} {who:<12} {:<5} {} blocked by {} in {}",
                            f.at, f.query_type, f.name, f.rule, f.list
                        );
                    }
                }
            }
            Ok(())
        }
        _ => anyhow::bail!("rule changes are handled by guard_command"),
    }
}

/// The wg-quick config for a newly added client.
fn client_config(
    added: &control::PeerAdded,
    private: Option<&nx1_vpn::keys::PrivateKey>,
) -> anyhow::Result<zeroize::Zeroizing<String>> {
    use nx1_vpn::wg_quick;
    let server = nx1_vpn::keys::PublicKey::from_base64(&added.server_public_key)
        .map_err(|e| anyhow::anyhow!("the daemon sent a bad key: {e}"))?;
    let config = wg_quick::Config {
        interface: wg_quick::Interface {
            private_key: private.map(|p| p.to_base64().to_string()),
            addresses: vec![
                nx1_vpn::IpNetwork::new(added.ipv4, 32)?,
                nx1_vpn::IpNetwork::new(added.ipv6, 128)?,
            ],
            dns: added.dns.clone(),
            ..Default::default()
        },
        peers: vec![wg_quick::Peer {
            public_key: server,
            endpoint: Some(added.endpoint.clone()),
            allowed_ips: vec!["0.0.0.0/0".parse()?, "::/0".parse()?],
            persistent_keepalive: added.persistent_keepalive,
        }],
    };
    let mut text = config.render();
    // For `nx1 connect` (other clients ignore comments): the node, where usage receipts go,
    // the nodes that stand by for this client, and where to probe the node.
    text.push_str(&format!(
        "# {} = {}\n",
        crate::client::NODE_LINE,
        added.node_id
    ));
    if let Some(relay) = &added.relay_id {
        text.push_str(&format!("# {} = {relay}\n", crate::client::VIA_LINE));
    }
    if let Some(receipts) = &added.receipts {
        text.push_str(&format!(
            "# {} = {receipts}\n",
            crate::client::RECEIPTS_LINE
        ));
    }
    if let Some(probe) = &added.probe {
        text.push_str(&format!("# {} = {probe}\n", crate::client::PROBE_LINE));
    }
    for (key, endpoint, node) in &added.fallbacks {
        text.push_str(&format!(
            "# {} = {key} {endpoint} {node}\n",
            crate::client::FALLBACK_LINE
        ));
    }
    Ok(zeroize::Zeroizing::new(text))
}

fn print_balance(b: &crate::ledger::Balance) {
    println!(
        "balance     {} credits ({} earned, {} granted, {} spent){}",
        b.balance,
        b.earned,
        b.granted,
        b.spent,
        if b.overdrawn {
            " — OVERDRAWN: it spent the same credits twice"
        } else {
            ""
        }
    );
    for (service, n) in &b.by_service {
        println!("  {service:<10} {n}");
    }
    if !b.devices.is_empty() {
        println!("devices     {}", b.devices.join(", "));
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
    if let Some(v) = &r.vault {
        println!(
            "  vault      {} accounts, {} items, {} bytes of ciphertext",
            v.accounts, v.items, v.bytes
        );
    }
    if let Some(m) = &r.mesh {
        let live = m.members.iter().filter(|m| m.state == "live").count();
        println!("  mesh       {} members ({live} live)", m.members.len());
        for member in &m.members {
            println!(
                "    {} {:<5} {:<10} {:<16} {}",
                member.id,
                member.state,
                if member.region.is_empty() {
                    "-"
                } else {
                    &member.region
                },
                member.roles.join(","),
                member.endpoints.join(" ")
            );
        }
        for (id, why) in &m.refused {
            println!("    {id} refused: {why}");
        }
    }
    if let Some(x) = &r.mesh_exit {
        println!(
            "  mesh exit  {} nodes linked, uplink {}, {} egress probes answered",
            x.mesh_peers,
            if x.uplink { "up" } else { "DOWN" },
            x.probes_answered
        );
    }
    if let Some(e) = &r.egress {
        println!(
            "  egress     through {} ({} switches)",
            e.active.as_deref().unwrap_or("no exit yet"),
            e.switches
        );
        for x in &e.exits {
            println!(
                "    {} {:<9} {:<10} {} {}",
                x.id,
                if x.healthy { "healthy" } else { "silent" },
                if x.region.is_empty() { "-" } else { &x.region },
                x.endpoint,
                x.rtt_ms.map_or(String::new(), |r| format!("{r:.1} ms"))
            );
        }
    }
    if let Some(relay) = &r.relay {
        println!(
            "  relay      UDP {}{}, {} exits, {} sessions; {} datagrams ({} bytes) to exits, {} ({} bytes) to clients",
            relay.listen_port,
            relay
                .endpoint
                .as_deref()
                .map_or(String::new(), |e| format!(" ({e})")),
            relay.exits,
            relay.sessions,
            relay.to_exit_packets,
            relay.to_exit_bytes,
            relay.to_client_packets,
            relay.to_client_bytes
        );
        for (reason, n) in &relay.dropped {
            println!("    dropped {n} ({reason})");
        }
    }
    match &r.vpn {
        Some(v) => {
            println!(
                "  wireguard  {} on UDP {}, {} peers ({} active), exit {}",
                v.interface,
                v.listen_port,
                v.peers,
                v.active_peers,
                v.exit_table
                    .as_deref()
                    .map_or("off".to_owned(), |t| format!("on (nftables {t})"))
            );
            let drops: Vec<String> = v
                .drops
                .iter()
                .filter(|(_, n)| **n > 0)
                .map(|(k, n)| format!("{k} {n}"))
                .collect();
            if !drops.is_empty() {
                println!("  drops      {}", drops.join(", "));
            }
        }
        None => println!("  wireguard  disabled"),
    }
    if let Some(g) = &r.guard {
        println!(
            "  guard      DNS on {}, {} names on {} lists, {} blocked / {} forwarded, {} findings, {} peers quarantined",
            g.dns_listen.join(" "),
            g.blocked_names,
            g.lists.len(),
            g.queries_blocked,
            g.queries_forwarded,
            g.findings,
            g.quarantined_peers
        );
        println!(
            "  flows      {} of {} tracked{}, {} packets untracked",
            g.flows,
            g.flow_capacity,
            if g.flow_emergency {
                " (emergency mode)"
            } else {
                ""
            },
            g.flows_untracked
        );
        if !g.findings_by_list.is_empty() {
            let by: Vec<String> = g
                .findings_by_list
                .iter()
                .map(|(list, n)| format!("{n} {list}"))
                .collect();
            println!("  findings   {}", by.join(", "));
        }
    }
    if let Some(c) = &r.client {
        println!(
            "  client     {} → {} as {} (rx {} B, tx {} B)",
            c.interface,
            c.endpoints.join(", "),
            c.addresses.join(", "),
            c.rx_bytes,
            c.tx_bytes
        );
        if let Some(p) = &c.protection {
            println!(
                "    {} (nftables {}): {} DNS and {} other packets stopped outside the tunnel",
                if p.kill_switch {
                    "kill switch on"
                } else {
                    "DNS-leak protection on"
                },
                p.table,
                p.dns_blocked,
                p.other_blocked
            );
        }
        if c.standby_servers > 0 {
            println!(
                "    {} standby nodes, moved {} times",
                c.standby_servers, c.moves
            );
        }
        if let Some(r) = &c.last_receipt {
            println!(
                "    last receipt signed: {} B up, {} B down, {} s",
                r.bytes_up, r.bytes_down, r.seconds
            );
        }
        match &c.node_answer {
            Some(a) if a.cut_off => {
                println!("    CUT OFF by the node: out of credits — contribute or top up")
            }
            Some(crate::credits::ReceiptAnswer {
                refused: Some(why), ..
            }) => println!("    the node refused the last receipt: {why}"),
            _ => {}
        }
    }
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
