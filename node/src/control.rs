//! The control socket: how the `nx1` command line (and later the desktop app) talks to the
//! running daemon. A Unix stream socket, mode 0600 inside the 0700 data directory; one JSON
//! request per line, one JSON response per line. The types here are the whole protocol.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{UnixListener, UnixStream};

/// Version of this protocol; bumped on any incompatible change.
pub const PROTOCOL_VERSION: u32 = 1;

/// Longest request line the daemon reads.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// A request from a client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Everything `nx1 status` shows.
    Status,
    /// Register a WireGuard client by its public key and make it live.
    PeerAdd {
        /// Unique name.
        name: String,
        /// Base64 public key (the private key stays with the client).
        public_key: String,
        /// Endpoint to write into the config instead of `[vpn] endpoint`.
        endpoint: Option<String>,
        /// A relay to reach this exit through (private two-hop): a node id from the
        /// directory, or the relay's "host:port".
        #[serde(default)]
        via: Option<String>,
    },
    /// Every registered client with its live state.
    PeerList,
    /// Unregister a client; its sessions end at once.
    PeerRemove {
        /// The client's name.
        name: String,
    },
    /// Client mode: bring up a tunnel from a wg-quick config.
    Connect {
        /// The wg-quick file's text (holds a private key: the socket is owner-only).
        config: String,
        /// The interface name.
        interface: String,
        /// Keep DNS from leaving outside the tunnel (nftables).
        #[serde(default)]
        dns_protection: bool,
        /// Block everything that would leave outside the tunnel (implies DNS protection).
        #[serde(default)]
        kill_switch: bool,
        /// Private two-hop: reach the config's exit through a relay of the mesh, `auto` (the
        /// nearest live relay) or a relay's node id.
        #[serde(default)]
        two_hop: Option<String>,
    },
    /// Client mode: take the tunnel down.
    Disconnect,
    /// Guard's verdict for a domain.
    GuardCheck {
        /// The domain.
        domain: String,
        /// As this peer would get it (its own rules first).
        #[serde(default)]
        peer: Option<String>,
    },
    /// Recent blocked queries, optionally of one peer.
    GuardFindings {
        /// A peer's name.
        peer: Option<String>,
    },
    /// Re-read the block lists and local rules.
    GuardReload,
    /// Round-trip time from this host to each live member of the mesh (a TCP connect to its
    /// HTTP API).
    Latency,
    /// Client mode: ask the node the tunnel goes to that its Guard allow a domain for this
    /// device alone.
    GuardAllowAtNode {
        /// The domain.
        domain: String,
    },
    /// Usage this node carried, as its clients' accounts signed it, and its owner's balance.
    Credits,
    /// An account's ledger entries (this node's owner's by default).
    CreditsHistory {
        /// The account (base64 ed25519 public key).
        #[serde(default)]
        account: Option<String>,
    },
    /// Grant credits to an account, signed by this node as an issuer.
    CreditsGrant {
        /// The account.
        account: String,
        /// Credits.
        amount: u64,
        /// Why, in words.
        memo: String,
    },
    /// Let a device key spend for this node's account, or stop letting it.
    CreditsDevice {
        /// The device's ed25519 public key (base64).
        device: String,
        /// Whether it may spend.
        active: bool,
    },
    /// Contribution: read it, or turn relay duty on/off and set the bandwidth cap, at once.
    Contribute {
        /// Relay duty on (true) or off (false); unchanged if absent.
        #[serde(default)]
        relay: Option<bool>,
        /// The cap on relayed and exited traffic in Mbit/s (0: none); unchanged if absent.
        #[serde(default)]
        bandwidth_mbit: Option<u32>,
    },
    /// Turn a Guard category (a list by name, or dga, phishing, tunnelling, rebinding) off or
    /// back on for one peer.
    GuardCategory {
        /// The category.
        category: String,
        /// The peer.
        peer: String,
        /// On (true) or off.
        enabled: bool,
    },
    /// Allow, deny or clear a domain on this node, or for one peer.
    GuardRule {
        /// The domain.
        domain: String,
        /// What to do.
        action: RuleAction,
        /// Only for this peer.
        #[serde(default)]
        peer: Option<String>,
    },
}

/// A local Guard rule change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleAction {
    /// Never block it (wins over every list).
    Allow,
    /// Block it (and everything below it).
    Deny,
    /// Remove the local rule.
    Clear,
}

impl Request {
    /// A short name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Request::Status => "status",
            Request::PeerAdd { .. } => "peer_add",
            Request::PeerList => "peer_list",
            Request::PeerRemove { .. } => "peer_remove",
            Request::Connect { .. } => "connect",
            Request::Disconnect => "disconnect",
            Request::GuardCheck { .. } => "guard_check",
            Request::GuardFindings { .. } => "guard_findings",
            Request::GuardReload => "guard_reload",
            Request::Credits => "credits",
            Request::CreditsHistory { .. } => "credits_history",
            Request::CreditsGrant { .. } => "credits_grant",
            Request::CreditsDevice { .. } => "credits_device",
            Request::Contribute { .. } => "contribute",
            Request::Latency => "latency",
            Request::GuardAllowAtNode { .. } => "guard_allow_at_node",
            Request::GuardRule { .. } => "guard_rule",
            Request::GuardCategory { .. } => "guard_category",
        }
    }
}

/// The daemon's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    /// Answer to [`Request::Status`].
    Status(Box<StatusReport>),
    /// Answer to [`Request::PeerAdd`]: what the client's config needs.
    PeerAdded(PeerAdded),
    /// Answer to [`Request::PeerList`].
    Peers {
        /// Sorted by name.
        peers: Vec<PeerInfo>,
    },
    /// Answer to [`Request::Connect`].
    Connected(ClientStatus),
    /// Answer to [`Request::Disconnect`].
    Disconnected {
        /// The interface that was taken down.
        interface: String,
    },
    /// Answer to [`Request::Credits`].
    Credits(CreditsStatus),
    /// Answer to [`Request::CreditsHistory`].
    CreditsHistory(crate::ledger::AccountView),
    /// Answer to [`Request::CreditsGrant`] and [`Request::CreditsDevice`].
    CreditsPublished {
        /// The signed entry.
        entry: crate::ledger::SignedEntry,
        /// Replicas of the account that took it (the others get it later).
        replicas: usize,
    },
    /// Answer to [`Request::Contribute`].
    Contribution(ContributionStatus),
    /// Answer to [`Request::GuardAllowAtNode`]: the domain as the node allowed it.
    AllowedAtNode {
        /// The domain.
        domain: String,
    },
    /// Answer to [`Request::Latency`]: milliseconds by node id (`null`: no answer within a
    /// second, or no API published).
    Latency {
        /// Node id → round-trip time in milliseconds.
        nodes: std::collections::BTreeMap<String, Option<f64>>,
    },
    /// Answer to [`Request::GuardReload`].
    GuardReloaded {
        /// Lists in use.
        lists: Vec<String>,
        /// Names on them.
        blocked_names: usize,
    },
    /// Answer to [`Request::GuardCheck`] and [`Request::GuardRule`].
    GuardVerdict(GuardVerdict),
    /// Answer to [`Request::GuardCategory`].
    GuardCategories {
        /// The peer.
        peer: String,
        /// The categories it has turned off, sorted.
        disabled: Vec<String>,
    },
    /// Answer to [`Request::GuardFindings`].
    GuardFindings {
        /// Oldest first.
        findings: Vec<GuardFinding>,
    },
    /// Answer to [`Request::PeerRemove`].
    PeerRemoved {
        /// The removed client's name.
        name: String,
    },
    /// The request could not be carried out.
    Error {
        /// One line for the user.
        message: String,
    },
}

/// The database part of a status report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoreStatus {
    /// `sqlite` or `postgres`.
    pub backend: crate::store::Backend,
    /// Newest migration applied.
    pub schema_version: i64,
}

/// Everything a client config needs, from the node's side.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerAdded {
    /// The client's name.
    pub name: String,
    /// Its IPv4 tunnel address (/32).
    pub ipv4: std::net::Ipv4Addr,
    /// Its IPv6 tunnel address (/128).
    pub ipv6: std::net::Ipv6Addr,
    /// The node's WireGuard public key.
    pub server_public_key: String,
    /// Where the client sends to.
    pub endpoint: String,
    /// DNS servers for the client.
    pub dns: Vec<std::net::IpAddr>,
    /// Keepalive for the client.
    pub persistent_keepalive: Option<u16>,
    /// Other nodes that stand by for this client, (WireGuard key, endpoint, node id):
    /// `nx1 connect` moves to one of them when this node stops answering.
    #[serde(default)]
    pub fallbacks: Vec<(String, String, String)>,
    /// This node's id (usage receipts name it).
    #[serde(default)]
    pub node_id: String,
    /// The relay's node id, when the config goes through one (`--via`).
    #[serde(default)]
    pub relay_id: Option<String>,
    /// Where `nx1 connect` sends its usage receipts through the tunnel ("ip:port").
    #[serde(default)]
    pub receipts: Option<String>,
    /// Where `nx1 connect` probes the node through the tunnel ("ip:port").
    #[serde(default)]
    pub probe: Option<String>,
}

/// A registered client and its live state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerInfo {
    /// Name.
    pub name: String,
    /// Base64 public key.
    pub public_key: String,
    /// IPv4 tunnel address.
    pub ipv4: std::net::Ipv4Addr,
    /// IPv6 tunnel address.
    pub ipv6: std::net::Ipv6Addr,
    /// Current endpoint, once heard from.
    pub endpoint: Option<String>,
    /// Unix time of the latest handshake.
    pub latest_handshake: Option<u64>,
    /// Bytes received from it.
    pub rx_bytes: u64,
    /// Bytes sent to it.
    pub tx_bytes: u64,
    /// Datagrams received.
    pub rx_packets: u64,
    /// Datagrams sent.
    pub tx_packets: u64,
    /// Dropped datagrams and packets.
    pub drops: u64,
}

/// Guard's verdict for one domain and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GuardVerdict {
    /// The domain, normalised.
    pub domain: String,
    /// `blocked`, `allowed` (an exception) or `unlisted`.
    pub verdict: String,
    /// The list that decided, if any.
    pub list: Option<String>,
    /// The listed domain that matched, or the detector's or model's reason, if any.
    pub rule: Option<String>,
    /// The learned models' scores (when no list decided).
    #[serde(default)]
    pub scores: Vec<ModelScore>,
}

/// One learned model's score for a name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelScore {
    /// `dga` or `phishing`.
    pub model: String,
    /// 0..=1.
    pub score: f32,
    /// Whether it reaches the model's threshold.
    pub flagged: bool,
}

/// One blocked query.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GuardFinding {
    /// Unix time.
    pub at: u64,
    /// The peer that asked, when its address is registered.
    pub peer: Option<String>,
    /// The tunnel address that asked.
    pub client: String,
    /// The name asked for.
    pub name: String,
    /// Query type.
    pub query_type: String,
    /// The list that blocked it.
    pub list: String,
    /// The listed domain that matched.
    pub rule: String,
}

/// Guard's part of a status report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GuardStatus {
    /// Loaded block lists.
    pub lists: Vec<String>,
    /// Names on them.
    pub blocked_names: usize,
    /// Where the DNS server listens.
    pub dns_listen: Vec<String>,
    /// Queries answered as blocked.
    pub queries_blocked: u64,
    /// Queries forwarded upstream.
    pub queries_forwarded: u64,
    /// Queries answered from the cache.
    pub queries_cached: u64,
    /// Findings kept.
    pub findings: usize,
    /// Peers whose traffic is dropped for now after a scan.
    pub quarantined_peers: usize,
    /// Findings since the start, by list or detector ("port scan detection", "dga model", …).
    #[serde(default)]
    pub findings_by_list: std::collections::BTreeMap<String, u64>,
    /// Flows the exit tracks now.
    #[serde(default)]
    pub flows: usize,
    /// The most it tracks.
    #[serde(default)]
    pub flow_capacity: usize,
    /// Whether the flow table is in emergency mode (nearly full).
    #[serde(default)]
    pub flow_emergency: bool,
    /// Packets of flows not tracked for lack of room, since the start.
    #[serde(default)]
    pub flows_untracked: u64,
}

/// A client tunnel's leak protection (an nftables table of its own).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Protection {
    /// The nftables table.
    pub table: String,
    /// Everything outside the tunnel is blocked (else DNS only).
    pub kill_switch: bool,
    /// DNS packets stopped outside the tunnel.
    pub dns_blocked: u64,
    /// Other packets stopped outside the tunnel.
    pub other_blocked: u64,
}

/// The client-mode tunnel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientStatus {
    /// Interface name.
    pub interface: String,
    /// The leak protection in force, when any.
    #[serde(default)]
    pub protection: Option<Protection>,
    /// The relay the tunnel goes through (private two-hop), when it does.
    #[serde(default)]
    pub via: Option<String>,
    /// Server endpoints.
    pub endpoints: Vec<String>,
    /// Tunnel addresses.
    pub addresses: Vec<String>,
    /// Unix time of the latest handshake with the first server.
    pub latest_handshake: Option<u64>,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// The WireGuard key of the server in use.
    #[serde(default)]
    pub server: Option<String>,
    /// Standby nodes the tunnel can move to.
    #[serde(default)]
    pub standby_servers: usize,
    /// Times the tunnel moved to a standby node.
    #[serde(default)]
    pub moves: u64,
    /// The last usage receipt signed for the session.
    #[serde(default)]
    pub last_receipt: Option<crate::credits::Receipt>,
    /// The node's answer to it (refused, or the tunnel cut off for unpaid usage).
    #[serde(default)]
    pub node_answer: Option<crate::credits::ReceiptAnswer>,
}

/// The WireGuard part of a status report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VpnStatus {
    /// TUN device name.
    pub interface: String,
    /// UDP port.
    pub listen_port: u16,
    /// nftables table when this node is an exit.
    pub exit_table: Option<String>,
    /// Registered peers.
    pub peers: usize,
    /// Peers with a handshake in the last 3 minutes.
    pub active_peers: usize,
    /// Device-wide drops by reason.
    pub drops: std::collections::BTreeMap<String, u64>,
}

/// What `nx1 status` shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// Protocol version the daemon speaks.
    pub protocol: u32,
    /// Software version.
    pub version: String,
    /// The node id (base64 ed25519 public key).
    pub node_id: String,
    /// The node's WireGuard public key.
    pub wireguard_public_key: String,
    /// The daemon's process id.
    pub pid: u32,
    /// Seconds since the daemon started.
    pub uptime_secs: u64,
    /// The configuration file in use.
    pub config_file: PathBuf,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Where the HTTP API listens.
    pub http_listen: String,
    /// The control socket.
    pub control_socket: PathBuf,
    /// The database.
    pub store: StoreStatus,
    /// The WireGuard interface, when enabled.
    pub vpn: Option<VpnStatus>,
    /// The client-mode tunnel, when connected.
    pub client: Option<ClientStatus>,
    /// Guard's DNS filter, when on.
    pub guard: Option<GuardStatus>,
    /// The mesh, when joined.
    #[serde(default)]
    pub mesh: Option<MeshStatus>,
    /// The vault's server side, when enabled.
    #[serde(default)]
    pub vault: Option<VaultStatus>,
    /// Relay duty, when on.
    #[serde(default)]
    pub relay: Option<RelayStatus>,
    /// Egress through the mesh's exits, when on.
    #[serde(default)]
    pub egress: Option<crate::egress::EgressStatus>,
    /// As an exit in a mesh: the links other nodes' clients come through.
    #[serde(default)]
    pub mesh_exit: Option<crate::egress::MeshExitStatus>,
    /// Clients of other nodes this node stands by for.
    #[serde(default)]
    pub standby_clients: Option<usize>,
}

/// Usage this node carried, from the receipts its clients signed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreditsStatus {
    /// This node's id (what holdings and receipts name).
    #[serde(default)]
    pub node_id: String,
    /// Signed usage by account.
    pub accounts: Vec<crate::credits::AccountUsage>,
    /// Receipts taken (new sessions and raised totals) since start.
    pub receipts_taken: u64,
    /// Receipts refused since start, by reason.
    pub receipts_refused: Vec<(String, u64)>,
    /// Whether clients must sign receipts (`[credits] require_receipts`).
    pub require_receipts: bool,
    /// Clients cut off now for unpaid usage, by name.
    pub cut_off: Vec<String>,
    /// The account this node's earnings go to (`[credits] owner`, else the node id).
    #[serde(default)]
    pub owner: String,
    /// That account's balance, from one of its replicas.
    #[serde(default)]
    pub balance: Option<crate::ledger::Balance>,
    /// Why the balance could not be read, if it could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balance_error: Option<String>,
    /// What the services cost and earn.
    #[serde(default)]
    pub pricing: Option<PricingInfo>,
}

/// `[credits]` rates, as the app shows them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PricingInfo {
    /// Earned per MiB carried through an exit.
    pub exit_per_mib: u64,
    /// Earned per MiB relayed.
    pub relay_per_mib: u64,
    /// Earned per MiB of vault replica held for a day.
    #[serde(default)]
    pub storage_per_mib_day: u64,
    /// Vault sync free per vault account and 30 days, in KiB.
    pub vault_free_kib: u64,
    /// Spent per MiB of vault sync beyond it.
    pub vault_sync_per_mib: u64,
    /// Tunnel traffic free per account every 30 days on this node, MiB.
    #[serde(default)]
    pub vpn_free_mib: u64,
    /// Spent per MiB of tunnel traffic beyond it.
    #[serde(default)]
    pub vpn_per_mib: u64,
}

/// What this node contributes to the mesh.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContributionStatus {
    /// Whether relay duty is set up (`[relay] enabled`).
    pub relay_configured: bool,
    /// Whether the owner has relay duty on.
    pub relay_on: bool,
    /// Why relay duty is paused now (the machine is busy), if it is.
    #[serde(default)]
    pub paused: Option<String>,
    /// The limits on contributed work.
    #[serde(default)]
    pub limits: ContributionLimits,
    /// Whether this node is an exit.
    pub exit: bool,
    /// The cap on relayed and exited traffic, each, in Mbit/s (0: none).
    pub bandwidth_mbit: u32,
    /// Bytes relayed so far (both ways).
    pub relayed_bytes: u64,
    /// Bytes through the exit's interface so far (both ways, all peers).
    pub exited_bytes: u64,
    /// Packets dropped for being over the cap (relay and exit).
    pub over_cap_drops: u64,
}

/// `[contribute]` limits on contributed work.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ContributionLimits {
    /// Pause while other programs use more than this % of the CPU (0: no limit).
    pub cpu_percent: u32,
    /// Work only while the machine is idle.
    pub only_when_idle: bool,
    /// Pause while this node uses more than this much memory, MiB (0: no cap).
    pub memory_mb: u32,
    /// Storage for others' vaults, MiB (0: no cap).
    pub storage_mb: u64,
}

/// What the relay forwarded and dropped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RelayStatus {
    /// UDP port it listens on.
    pub listen_port: u16,
    /// "host:port" published for clients.
    pub endpoint: Option<String>,
    /// Exits it forwards to.
    pub exits: u64,
    /// Sessions it holds.
    pub sessions: u64,
    /// Datagrams forwarded to exits.
    pub to_exit_packets: u64,
    /// Bytes forwarded to exits.
    pub to_exit_bytes: u64,
    /// Datagrams forwarded to clients.
    pub to_client_packets: u64,
    /// Bytes forwarded to clients.
    pub to_client_bytes: u64,
    /// Drops by reason (only reasons that happened).
    pub dropped: Vec<(String, u64)>,
}

/// What the node holds for the vault (all of it ciphertext).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VaultStatus {
    /// Accounts on this node.
    pub accounts: u64,
    /// Items they hold (deleted ones not counted).
    pub items: u64,
    /// Bytes of ciphertext.
    pub bytes: u64,
}

/// The mesh as this node sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MeshStatus {
    /// Members whose signed record verifies (this node included).
    pub members: Vec<MeshMember>,
    /// Members whose record was refused, with the reason.
    pub refused: Vec<(String, String)>,
}

/// One member of the mesh.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MeshMember {
    /// Node id.
    pub id: String,
    /// `live` or `dead`.
    pub state: String,
    /// Region label.
    pub region: String,
    /// Roles it offers.
    pub roles: Vec<String>,
    /// WireGuard endpoints.
    pub endpoints: Vec<String>,
    /// Where it gossips.
    pub gossip: String,
    /// Its clients now, as its signed record says.
    #[serde(default)]
    pub load: crate::mesh::Load,
    /// What it offers.
    #[serde(default)]
    pub capacity: crate::mesh::Capacity,
}

/// Why the command line could not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens on the socket.
    #[error("no nx1 daemon is running (nothing at {0}); start one with `nx1 up`")]
    NotRunning(PathBuf),
    /// The socket exists but may not be used by this user.
    #[error("cannot reach the daemon at {0}: permission denied (run as the node's user)")]
    Denied(PathBuf),
    /// Anything else on the way.
    #[error("talking to the daemon at {path}: {reason}")]
    Io { path: PathBuf, reason: String },
}

/// Sends one request and waits (bounded) for the answer.
pub async fn call(socket: &Path, request: &Request) -> Result<Response, ClientError> {
    let io = |reason: String| ClientError::Io {
        path: socket.to_owned(),
        reason,
    };
    let stream = match UnixStream::connect(socket).await {
        Ok(s) => s,
        Err(e) => {
            return Err(match e.kind() {
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                    ClientError::NotRunning(socket.to_owned())
                }
                std::io::ErrorKind::PermissionDenied => ClientError::Denied(socket.to_owned()),
                _ => io(e.to_string()),
            });
        }
    };
    let exchange = async {
        let (read, mut write) = stream.into_split();
        let mut line = serde_json::to_string(request).map_err(|e| io(e.to_string()))?;
        line.push('\n');
        write
            .write_all(line.as_bytes())
            .await
            .map_err(|e| io(e.to_string()))?;
        let mut answer = String::new();
        BufReader::new(read)
            .read_line(&mut answer)
            .await
            .map_err(|e| io(e.to_string()))?;
        if answer.is_empty() {
            return Err(io(
                "the daemon closed the connection without answering".into()
            ));
        }
        serde_json::from_str(&answer).map_err(|e| io(format!("unreadable answer: {e}")))
    };
    tokio::time::timeout(Duration::from_secs(30), exchange)
        .await
        .map_err(|_| io("no answer within 30 s".into()))?
}

/// Binds the control socket, refusing to steal it from a daemon that is still running and
/// removing a stale one left by a crash.
/// Binds the control socket, owner-only; with `group`, that group may use it too (0660).
pub async fn bind(path: &Path, group: Option<u32>) -> anyhow::Result<UnixListener> {
    use anyhow::Context as _;
    use std::os::unix::fs::PermissionsExt as _;
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            anyhow::bail!(
                "another nx1 daemon is already running on {}",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing stale control socket {}", path.display()))?;
    }
    if let Some(parent) = path.parent().filter(|_| group.is_some()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("binding control socket {}", path.display()))?;
    // Inside the 0700 data directory the moment between bind and chmod exposes nothing;
    // outside it (with a group) the socket is the group's only after the chown.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting control socket {}", path.display()))?;
    if let Some(gid) = group {
        std::os::unix::fs::chown(path, None, Some(gid))
            .with_context(|| format!("giving control socket {} to group {gid}", path.display()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
            .with_context(|| format!("opening control socket {} to its group", path.display()))?;
    }
    Ok(listener)
}

/// Reads one request line; `Err` carries the message to send back.
pub async fn read_request<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut R,
) -> Result<Option<Request>, String> {
    use tokio::io::AsyncReadExt as _;
    let mut buf = Vec::new();
    let mut limited = reader.take(MAX_REQUEST_BYTES as u64 + 1);
    limited
        .read_until(b'\n', &mut buf)
        .await
        .map_err(|e| format!("reading request: {e}"))?;
    if buf.is_empty() {
        return Ok(None);
    }
    if buf.len() > MAX_REQUEST_BYTES {
        return Err(format!("request longer than {MAX_REQUEST_BYTES} bytes"));
    }
    serde_json::from_slice(&buf)
        .map(Some)
        .map_err(|e| format!("bad request: {e}"))
}

/// Writes one response line.
pub async fn write_response<W: tokio::io::AsyncWrite + Unpin>(
    writer: &mut W,
    response: &Response,
) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(response).map_err(std::io::Error::other)?;
    line.push(b'\n');
    writer.write_all(&line).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_have_a_stable_wire_form() {
        assert_eq!(
            serde_json::to_string(&Request::Status).unwrap(),
            r#"{"cmd":"status"}"#
        );
        let back: Request = serde_json::from_str(r#"{"cmd":"status"}"#).unwrap();
        assert_eq!(back, Request::Status);
    }

    #[tokio::test]
    async fn hostile_request_lines_get_a_clear_error() {
        for (input, expect) in [
            (&b"{\"cmd\":\"format_disk\"}\n"[..], "unknown variant"),
            (b"not json\n", "bad request"),
        ] {
            let mut reader = BufReader::new(input);
            let err = read_request(&mut reader).await.unwrap_err();
            assert!(err.contains(expect), "{err}");
        }
        let huge = vec![b'a'; MAX_REQUEST_BYTES + 10];
        let err = read_request(&mut BufReader::new(&huge[..]))
            .await
            .unwrap_err();
        assert!(err.contains("longer than"), "{err}");
        assert_eq!(read_request(&mut BufReader::new(&b""[..])).await, Ok(None));
    }

    #[tokio::test]
    async fn a_missing_daemon_is_reported_as_not_running() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nx1.sock");
        let err = call(&path, &Request::Status).await.unwrap_err();
        assert!(matches!(err, ClientError::NotRunning(_)), "{err}");
        // A stale socket file with no listener is "not running" too.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let err = call(&path, &Request::Status).await.unwrap_err();
        assert!(matches!(err, ClientError::NotRunning(_)), "{err}");
    }

    #[tokio::test]
    async fn bind_replaces_a_stale_socket_but_not_a_live_one() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nx1.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let live = bind(&path, None).await.unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let err = bind(&path, None).await.unwrap_err().to_string();
        assert!(err.contains("already running"), "{err}");
        drop(live);
    }

    #[tokio::test]
    async fn a_control_group_gets_the_socket_too() {
        use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
        let dir = tempfile::tempdir().unwrap();
        // A socket in a directory of its own, which bind makes.
        let path = dir.path().join("run").join("nx1.sock");
        // A group this process may give files to: its own primary group.
        let gid = nix::unistd::getegid().as_raw();
        let _live = bind(&path, Some(gid)).await.unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o660);
        assert_eq!(meta.gid(), gid);
        assert!(
            call(&path, &Request::Status)
                .await
                .is_err_and(|e| !matches!(e, ClientError::Denied(_)))
        );
    }
}
