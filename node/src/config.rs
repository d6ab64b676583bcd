//! The node's configuration: one typed struct, read from TOML, validated at load time so a
//! bad file fails at start with one clear line.
//!
//! `data_dir` is relative to the directory that holds the file; the other paths (key files,
//! control socket, an SQLite file) are relative to `data_dir`. So a data directory made by
//! `nx1 init` can be moved as a whole.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Why a configuration could not be used. Each variant prints as one line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    /// The file is not valid TOML, has an unknown key, or a value of the wrong type.
    #[error("config {path}, line {line}, column {column}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    /// A value parsed but is not acceptable.
    #[error("config {path}: `{key}` {message}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        message: String,
    },
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Readable lines for a terminal or journald.
    Human,
    /// One JSON object per line, for log collectors.
    Json,
}

/// `[node]`: identity and where the state lives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeSection {
    /// Directory for the database, the control socket and other state.
    pub data_dir: PathBuf,
    /// The node's ed25519 identity key (base64, mode 0600).
    pub identity_key: PathBuf,
    /// The node's WireGuard static key (base64 as `wg genkey` writes it, mode 0600).
    pub wireguard_key: PathBuf,
}

impl Default for NodeSection {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("."),
            identity_key: PathBuf::from("identity.key"),
            wireguard_key: PathBuf::from("wireguard.key"),
        }
    }
}

/// `[log]`: what the daemon logs and how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSection {
    /// `human` or `json`.
    pub format: LogFormat,
    /// A tracing filter such as `info` or `info,nx1_node=debug`; `RUST_LOG` overrides it.
    pub level: String,
}

impl Default for LogSection {
    fn default() -> Self {
        Self {
            format: LogFormat::Human,
            level: "info".into(),
        }
    }
}

/// `[store]`: the database.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreSection {
    /// Empty for the embedded SQLite file `nx1.db` in the data directory, or a
    /// `sqlite://` or `postgres://` URL.
    pub database_url: String,
    /// Upper bound of the connection pool.
    pub max_connections: u32,
}

impl Default for StoreSection {
    fn default() -> Self {
        Self {
            database_url: String::new(),
            max_connections: 8,
        }
    }
}

/// `[api]`: how the CLI and other programs reach the daemon.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiSection {
    /// Address of the HTTP API (`/healthz`, `/metrics`, later `/v1/...`). Port 0 picks one.
    pub listen: SocketAddr,
    /// Path of the control socket used by the `nx1` command line (created with mode 0600).
    pub control_socket: PathBuf,
    /// A group whose members may use the control socket too (mode 0660): how a user runs the
    /// desktop app. The socket must then be outside the data directory (mode 0700).
    pub control_group: String,
}

impl Default for ApiSection {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7870)),
            control_socket: PathBuf::from("nx1.sock"),
            control_group: String::new(),
        }
    }
}

/// `[vpn]`: the WireGuard interface and the exit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VpnSection {
    /// Run the WireGuard interface at all.
    pub enabled: bool,
    /// TUN device name (at most 15 bytes; also names the UAPI socket and nftables table).
    pub interface: String,
    /// UDP port clients connect to.
    pub listen_port: u16,
    /// MTU of the TUN device.
    pub mtu: u16,
    /// The node's IPv4 tunnel address; its prefix is the pool clients get addresses from.
    pub address_v4: String,
    /// The node's IPv6 tunnel address; its prefix is the IPv6 pool.
    pub address_v6: String,
    /// Forward clients' traffic to the internet (forwarding + nftables masquerade).
    pub exit: bool,
    /// `host:port` that clients reach this node at, written into their configs.
    pub endpoint: String,
    /// DNS servers written into client configs.
    pub dns: Vec<String>,
    /// PersistentKeepalive written into client configs (0: none).
    pub persistent_keepalive: u16,
}

impl Default for VpnSection {
    fn default() -> Self {
        Self {
            enabled: true,
            interface: "nx1".into(),
            listen_port: 51820,
            mtu: 1420,
            address_v4: "10.87.0.1/16".into(),
            address_v6: "fd00:87::1/64".into(),
            exit: true,
            endpoint: String::new(),
            dns: Vec::new(),
            persistent_keepalive: 25,
        }
    }
}

/// The `[vpn]` section, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vpn {
    /// TUN device name.
    pub interface: String,
    /// UDP port.
    pub listen_port: u16,
    /// MTU.
    pub mtu: u16,
    /// Node address and IPv4 pool prefix.
    pub v4: (std::net::Ipv4Addr, u8),
    /// Node address and IPv6 pool prefix.
    pub v6: (std::net::Ipv6Addr, u8),
    /// Whether to NAT clients out.
    pub exit: bool,
    /// Endpoint for client configs, if set.
    pub endpoint: Option<String>,
    /// DNS for client configs.
    pub dns: Vec<std::net::IpAddr>,
    /// Keepalive for client configs.
    pub persistent_keepalive: Option<u16>,
}

fn parse_cidr<A: std::str::FromStr>(text: &str) -> Option<(A, u8)> {
    let (addr, prefix) = text.split_once('/')?;
    Some((addr.parse().ok()?, prefix.parse().ok()?))
}

/// Whether `text` is `host:port` or `ip:port` (a host of letters, digits, `.` and `-`).
pub fn valid_endpoint(text: &str) -> bool {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return addr.port() > 0;
    }
    match text.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty()
                && port.parse::<u16>().is_ok_and(|p| p > 0)
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
        }
        None => false,
    }
}

impl VpnSection {
    fn validate(
        &self,
        invalid: &impl Fn(&'static str, String) -> ConfigError,
    ) -> Result<Option<Vpn>, ConfigError> {
        if !self.enabled {
            return Ok(None);
        }
        let name_ok = !self.interface.is_empty()
            && self.interface.len() <= 15
            && self
                .interface
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !name_ok {
            return Err(invalid(
                "vpn.interface",
                "must be 1-15 letters, digits, - or _".into(),
            ));
        }
        if !(1280..=9000).contains(&self.mtu) {
            return Err(invalid(
                "vpn.mtu",
                format!("must be 1280..=9000, not {}", self.mtu),
            ));
        }
        let v4 = parse_cidr::<std::net::Ipv4Addr>(&self.address_v4)
            .filter(|(_, p)| (8..=30).contains(p))
            .ok_or_else(|| invalid("vpn.address_v4", format!("must be an IPv4 address with a /8../30 prefix, like 10.87.0.1/16, not {:?}", self.address_v4)))?;
        let v6 = parse_cidr::<std::net::Ipv6Addr>(&self.address_v6)
            .filter(|(_, p)| (48..=124).contains(p))
            .ok_or_else(|| invalid("vpn.address_v6", format!("must be an IPv6 address with a /48../124 prefix, like fd00:87::1/64, not {:?}", self.address_v6)))?;
        let endpoint = match self.endpoint.trim() {
            "" => None,
            e if valid_endpoint(e) => Some(e.to_owned()),
            e => {
                return Err(invalid(
                    "vpn.endpoint",
                    format!("must be host:port, not {e:?}"),
                ));
            }
        };
        let dns = self
            .dns
            .iter()
            .map(|d| {
                d.parse()
                    .map_err(|_| invalid("vpn.dns", format!("{d:?} is not an IP address")))
            })
            .collect::<Result<_, _>>()?;
        Ok(Some(Vpn {
            interface: self.interface.clone(),
            listen_port: self.listen_port,
            mtu: self.mtu,
            v4,
            v6,
            exit: self.exit,
            endpoint,
            dns,
            persistent_keepalive: (self.persistent_keepalive > 0)
                .then_some(self.persistent_keepalive),
        }))
    }
}

/// What a blocked name is answered with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlockResponse {
    /// `0.0.0.0` for A, `::` for AAAA, no records for other types.
    Zero,
    /// NXDOMAIN.
    Nxdomain,
}

/// What Guard does when one of its packet-path detectors fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// Nothing: the detector is off.
    Allow,
    /// Record a finding (and log a warning).
    Alert,
    /// Record a finding and hold the peer to a rate: for floods the kind of packet that
    /// flooded, for bursts its new connections, for uploads its upload bytes.
    RateLimit,
    /// Record a finding and drop the flows it concerns (a beacon's destination, the largest
    /// upload) for `quarantine_secs`.
    BlockFlow,
    /// Record a finding and drop all of the peer's traffic for `quarantine_secs`.
    Quarantine,
}

impl Action {
    /// The name used in the configuration file.
    pub fn name(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Alert => "alert",
            Action::RateLimit => "rate-limit",
            Action::BlockFlow => "block-flow",
            Action::Quarantine => "quarantine",
        }
    }
}

/// The action of each packet-path detector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Actions {
    /// Port scans.
    pub scan: Action,
    /// SYN, UDP and ICMP floods.
    pub flood: Action,
    /// Bursts of new connections.
    pub burst: Action,
    /// Periodic beaconing.
    pub beacon: Action,
    /// Upload far above the peer's baseline.
    pub upload: Action,
    /// The online anomaly score.
    pub anomaly: Action,
}

/// `[guard]`: the DNS threat filter on the node's tunnel addresses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GuardSection {
    /// Serve DNS on the tunnel addresses (port 53) and filter it.
    pub enabled: bool,
    /// Block-list files: hosts files, plain domain lists, AdBlock `||domain^` / `@@||domain^`
    /// (relative to data_dir).
    pub blocklists: Vec<String>,
    /// Upstream resolvers, `ip:port`; empty: the nameservers of /etc/resolv.conf.
    pub upstreams: Vec<String>,
    /// `zero` or `nxdomain`.
    pub block_response: BlockResponse,
    /// What a detected port scan leads to: `allow`, `alert` or `quarantine`.
    pub on_scan: Action,
    /// Floods: `allow`, `alert`, `rate-limit` or `quarantine`.
    pub on_flood: Action,
    /// Connection bursts: `allow`, `alert`, `rate-limit` or `quarantine`.
    pub on_burst: Action,
    /// Beaconing: `allow`, `alert`, `block-flow` or `quarantine`.
    pub on_beacon: Action,
    /// Upload far above the baseline: any action.
    pub on_upload: Action,
    /// The anomaly score: `allow`, `alert` or `quarantine`.
    pub on_anomaly: Action,
    /// How long a peer's traffic is learned before its baseline and anomaly score are used,
    /// in seconds.
    pub learning_secs: u64,
    /// Flows the exit tracks at most (its memory cap).
    pub max_flows: usize,
    /// How long a quarantined peer's traffic is dropped, in seconds.
    pub quarantine_secs: u64,
    /// Learned models that judge names no list knows: `dga`, `phishing`.
    pub models: Vec<String>,
    /// Score from which the DGA model blocks (0: the model's own threshold).
    pub dga_threshold: f32,
    /// Score from which the phishing model blocks (0: the model's own threshold).
    pub phishing_threshold: f32,
}

impl Default for GuardSection {
    fn default() -> Self {
        Self {
            enabled: true,
            blocklists: Vec::new(),
            upstreams: Vec::new(),
            block_response: BlockResponse::Zero,
            on_scan: Action::Alert,
            on_flood: Action::RateLimit,
            on_burst: Action::Alert,
            on_beacon: Action::Alert,
            on_upload: Action::Alert,
            on_anomaly: Action::Alert,
            learning_secs: 600,
            max_flows: 65_536,
            quarantine_secs: 300,
            models: vec!["dga".into(), "phishing".into()],
            dga_threshold: 0.0,
            phishing_threshold: 0.0,
        }
    }
}

/// The `[guard]` section, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Guard {
    /// Block lists: files and URLs.
    pub blocklists: Vec<ListSource>,
    /// Where downloaded lists are kept (so a node starts with them when their server is
    /// down).
    pub list_cache: PathBuf,
    /// Upstream resolvers.
    pub upstreams: Vec<SocketAddr>,
    /// Answer for blocked names.
    pub block_response: BlockResponse,
    /// What each detector's findings lead to.
    pub actions: Actions,
    /// How long a peer's traffic is learned before baselines are used.
    pub learning: std::time::Duration,
    /// Flows tracked at most.
    pub max_flows: usize,
    /// Quarantine length.
    pub quarantine: std::time::Duration,
    /// Learned models in use, each with the threshold configured (`None`: the model's own).
    pub models: Vec<(nx1_guard::model::Kind, Option<f32>)>,
}

/// Where a block list comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListSource {
    /// A file (absolute path).
    File(PathBuf),
    /// An `http://` or `https://` URL, downloaded at start and at every reload.
    Url(String),
}

impl ListSource {
    /// The name the list goes by in verdicts and findings: its path or URL.
    pub fn name(&self) -> String {
        match self {
            ListSource::File(p) => p.display().to_string(),
            ListSource::Url(u) => u.clone(),
        }
    }
}

/// The nameservers of a resolv.conf text, port 53.
pub fn resolv_conf_nameservers(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().split('%').next()?.parse::<std::net::IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// The whole `nx1.toml`, as written in the file (paths not yet resolved).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `[node]`
    pub node: NodeSection,
    /// `[log]`
    pub log: LogSection,
    /// `[store]`
    pub store: StoreSection,
    /// `[api]`
    pub api: ApiSection,
    /// `[vpn]`
    pub vpn: VpnSection,
    /// `[guard]`
    pub guard: GuardSection,
    /// `[vault]`
    pub vault: VaultSection,
    /// `[mesh]`
    pub mesh: MeshSection,
    /// `[relay]`
    pub relay: RelaySection,
    /// `[contribute]`
    pub contribute: ContributeSection,
    /// `[credits]`
    pub credits: CreditsSection,
}

/// `[credits]`: metering clients by the usage receipts their accounts sign.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CreditsSection {
    /// Cut off a client whose traffic runs ahead of its signed receipts by more than the
    /// allowance (standard clients sign none; `nx1 connect` signs every 2 s).
    pub require_receipts: bool,
    /// Unpaid traffic (KiB of WireGuard datagrams, both ways) a client may run ahead.
    pub unpaid_allowance_kb: u64,
    /// The account (base64 ed25519 public key) this node's earnings go to; empty: the node's
    /// own identity.
    pub owner: String,
    /// Accounts whose grants (top-ups) this node honours.
    pub issuers: Vec<String>,
    /// Credits earned per MiB carried through an exit (up and down).
    pub exit_per_mib: u64,
    /// Credits earned per MiB relayed.
    pub relay_per_mib: u64,
    /// Credits earned per MiB of vault replica held for a day (confirmed by the client).
    pub storage_per_mib_day: u64,
    /// Vault sync free per vault account and 30 days, in KiB.
    pub vault_free_kib: u64,
    /// Credits per MiB of vault sync beyond the free tier.
    pub vault_sync_per_mib: u64,
    /// Tunnel traffic free per account every 30 days on this node, MiB (receipts signed).
    pub vpn_free_mib: u64,
    /// Credits per MiB of tunnel traffic beyond the free tier.
    pub vpn_per_mib: u64,
    /// How often earnings are claimed and replicas compared, in ms.
    pub sync_interval_ms: u64,
    /// How long a spend holds its credits on a replica while it is not known whether a
    /// majority took it, in seconds; one that never gets its majority gives them back then.
    pub spend_hold_secs: i64,
}

impl Default for CreditsSection {
    fn default() -> Self {
        Self {
            require_receipts: false,
            unpaid_allowance_kb: 4096,
            owner: String::new(),
            issuers: Vec::new(),
            exit_per_mib: 10,
            relay_per_mib: 5,
            storage_per_mib_day: 2,
            vault_free_kib: 65_536,
            vault_sync_per_mib: 20,
            vpn_free_mib: 10_240,
            vpn_per_mib: 1,
            sync_interval_ms: 2000,
            spend_hold_secs: crate::ledger::SPEND_HOLD_SECS,
        }
    }
}

impl CreditsSection {
    /// The rates and free tiers as the app and `nx1 credits` show them.
    pub fn pricing_info(&self) -> crate::control::PricingInfo {
        crate::control::PricingInfo {
            exit_per_mib: self.exit_per_mib,
            relay_per_mib: self.relay_per_mib,
            storage_per_mib_day: self.storage_per_mib_day,
            vault_free_kib: self.vault_free_kib,
            vault_sync_per_mib: self.vault_sync_per_mib,
            vpn_free_mib: self.vpn_free_mib,
            vpn_per_mib: self.vpn_per_mib,
        }
    }

    /// The rates and free tiers.
    pub fn pricing(&self) -> crate::ledger::Pricing {
        crate::ledger::Pricing {
            exit_per_mib: self.exit_per_mib,
            relay_per_mib: self.relay_per_mib,
            storage_per_mib_day: self.storage_per_mib_day,
            vault_free_bytes: self.vault_free_kib.saturating_mul(1024),
            vault_sync_per_mib: self.vault_sync_per_mib,
            vpn_free_bytes: self.vpn_free_mib.saturating_mul(1 << 20),
            vpn_per_mib: self.vpn_per_mib,
        }
    }
}

/// `[contribute]`: what the node gives others, and its limits. `nx1 contribute` changes the
/// same at run time (kept in the store, over these values).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ContributeSection {
    /// Cap in Mbit/s on relayed traffic and on traffic through the exit, each (0: none).
    pub bandwidth_mbit: u32,
    /// Pause relay duty while other programs use more than this % of all CPU (0: no limit).
    pub cpu_percent: u32,
    /// Relay only while the machine is idle (other programs below 15% of its CPU).
    pub only_when_idle: bool,
    /// Pause relay duty while this node uses more than this much memory, MiB (0: no cap).
    pub memory_mb: u32,
    /// Storage for vaults, MiB, across every account this node holds (0: no cap).
    pub storage_mb: u64,
}

impl ContributeSection {
    /// When contributed work pauses.
    pub fn busy_policy(&self) -> crate::busy::Policy {
        crate::busy::Policy {
            cpu_percent: self.cpu_percent,
            only_when_idle: self.only_when_idle,
            memory_mb: self.memory_mb,
        }
    }
}

/// `[relay]`: relay duty, forwarding other people's WireGuard datagrams to exits without
/// decrypting them (private two-hop).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelaySection {
    /// Relay for the mesh's exits (needs `[mesh] enabled`: the exits come from the directory).
    pub enabled: bool,
    /// UDP port clients send to; one port serves every exit.
    pub listen_port: u16,
    /// "host:port" clients reach the relay at, published in this node's record; empty: not
    /// published (configs then name the relay by address).
    pub endpoint: String,
    /// Sessions relayed at once (a client holds one, two for a while after each rekey).
    pub max_sessions: u32,
    /// Data relayed, both ways together, in Mbit/s; 0: no cap.
    pub bandwidth_mbit: u32,
    /// Also relay to exits at private addresses (RFC 1918, 100.64/10, unique-local): for a
    /// mesh on one private network. Loopback, link-local and multicast never.
    pub allow_private_exits: bool,
}

impl Default for RelaySection {
    fn default() -> Self {
        Self {
            enabled: false,
            listen_port: 51821,
            endpoint: String::new(),
            max_sessions: 1024,
            bandwidth_mbit: 0,
            allow_private_exits: false,
        }
    }
}

/// `[mesh]`: membership in the NX1 mesh (gossip) and the signed directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MeshSection {
    /// Join the mesh.
    pub enabled: bool,
    /// UDP address the gossip listens on.
    pub listen: SocketAddr,
    /// "ip:port" other nodes gossip to; empty: `listen` (which must then name an address).
    pub advertise: String,
    /// Nodes to join through, "host:port" (their `[mesh] advertise`).
    pub bootstrap: Vec<String>,
    /// A region label published in this node's record.
    pub region: String,
    /// Milliseconds between gossip rounds; a node silent for about ten rounds is dead.
    pub gossip_interval_ms: u64,
    /// The URL devices and other nodes reach this node's HTTP API at, published in its
    /// record; empty: `http://` + `[api] listen` when that is not a loopback or wildcard
    /// address, else none.
    pub api_url: String,
    /// Send this node's clients out through the mesh's exits (for a node that is not an exit
    /// itself): the healthiest exit carries them, and another takes over when it fails.
    pub egress: bool,
    /// Milliseconds between health probes to each candidate exit, through its tunnel.
    pub egress_probe_ms: u64,
    /// An exit that has not answered for this many milliseconds is failed over from.
    pub egress_timeout_ms: u64,
    /// As an exit: an address the uplink must have a route to for this node to answer
    /// egress probes (so others move away when its uplink goes); empty: no check.
    pub uplink_check: String,
}

impl Default for MeshSection {
    fn default() -> Self {
        Self {
            enabled: false,
            listen: SocketAddr::from(([0, 0, 0, 0], 7871)),
            advertise: String::new(),
            bootstrap: Vec::new(),
            region: String::new(),
            gossip_interval_ms: 250,
            api_url: String::new(),
            egress: false,
            egress_probe_ms: 100,
            egress_timeout_ms: 500,
            uplink_check: "1.1.1.1".into(),
        }
    }
}

/// `[vault]`: the password vault's server side (`/v1/vault/` on the HTTP API).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VaultSection {
    /// Serve `/v1/vault/`.
    pub enabled: bool,
    /// Items (not counting deleted ones) one account may hold.
    pub max_items: u64,
    /// Bytes of ciphertext one account may hold.
    pub max_bytes: u64,
    /// How long a login lasts, in seconds.
    pub session_secs: u64,
    /// Failed logins per account per minute (and three times as many per source address);
    /// successful logins are not counted.
    pub logins_per_minute: u32,
    /// New accounts per source address per hour.
    pub registrations_per_hour: u32,
}

impl Default for VaultSection {
    fn default() -> Self {
        Self {
            enabled: true,
            max_items: 50_000,
            max_bytes: 256 << 20,
            session_secs: 3600,
            logins_per_minute: 10,
            registrations_per_hour: 10,
        }
    }
}

/// Which database a resolved configuration points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    /// An SQLite file (created if missing).
    Sqlite(PathBuf),
    /// A PostgreSQL URL.
    Postgres(String),
}

/// A validated configuration with every path made absolute.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The file it came from.
    pub path: PathBuf,
    /// The values as written.
    pub raw: Config,
    /// Absolute data directory.
    pub data_dir: PathBuf,
    /// Absolute identity key path.
    pub identity_key: PathBuf,
    /// Absolute WireGuard key path.
    pub wireguard_key: PathBuf,
    /// Absolute control socket path.
    pub control_socket: PathBuf,
    /// The group (gid) whose members may use the control socket, if one is set.
    pub control_group: Option<u32>,
    /// The database to open.
    pub database: Database,
    /// The WireGuard interface, unless disabled.
    pub vpn: Option<Vpn>,
    /// The DNS filter, when enabled (it serves on the WireGuard interface's addresses).
    pub guard: Option<Guard>,
    /// The mesh, when enabled.
    pub mesh: Option<crate::mesh::MeshSettings>,
}

/// Turns a byte offset into a 1-based line and column.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

impl Config {
    /// Parses TOML text; `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| {
            let (line, column) = e.span().map_or((1, 1), |s| line_column(text, s.start));
            ConfigError::Parse {
                path: path.to_owned(),
                line,
                column,
                message: e.message().trim().replace('\n', " "),
            }
        })
    }

    /// Reads, parses, validates and resolves the file at `path`.
    pub fn load(path: &Path) -> Result<Resolved, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        Self::parse(&text, path)?.resolve(path)
    }

    /// Checks every value and makes paths absolute against the file's directory.
    pub fn resolve(self, path: &Path) -> Result<Resolved, ConfigError> {
        let invalid = |key: &'static str, message: String| ConfigError::Invalid {
            path: path.to_owned(),
            key,
            message,
        };
        let base = path
            .parent()
            .map(Path::to_path_buf)
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| PathBuf::from("."));
        let base = std::path::absolute(&base).map_err(|e| ConfigError::Read {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        let data_dir = base.join(&self.node.data_dir);
        let in_data = |p: &Path| data_dir.join(p);

        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return Err(invalid("log.level", format!("is not a valid filter: {e}")));
        }
        if self.store.max_connections == 0 || self.store.max_connections > 1024 {
            return Err(invalid(
                "store.max_connections",
                format!("must be 1..=1024, not {}", self.store.max_connections),
            ));
        }
        let url = self.store.database_url.trim();
        let database = if url.is_empty() {
            Database::Sqlite(data_dir.join("nx1.db"))
        } else if let Some(file) = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
        {
            if file.is_empty() {
                return Err(invalid("store.database_url", "names no SQLite file".into()));
            }
            Database::Sqlite(in_data(Path::new(file)))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Database::Postgres(url.to_owned())
        } else {
            return Err(invalid(
                "store.database_url",
                "must be empty (embedded SQLite), sqlite://FILE or postgres://...".into(),
            ));
        };
        let socket = in_data(&self.api.control_socket);
        // sun_path holds 108 bytes including the terminating NUL.
        if socket.as_os_str().len() > 107 {
            return Err(invalid(
                "api.control_socket",
                format!(
                    "resolves to a path longer than 107 bytes: {}",
                    socket.display()
                ),
            ));
        }
        let control_group = match self.api.control_group.trim() {
            "" => None,
            name => {
                let group = nix::unistd::Group::from_name(name)
                    .map_err(|e| invalid("api.control_group", format!("looking up {name:?}: {e}")))?
                    .ok_or_else(|| {
                        invalid(
                            "api.control_group",
                            format!("no group {name:?} on this machine"),
                        )
                    })?;
                if socket.starts_with(&data_dir) {
                    return Err(invalid(
                        "api.control_group",
                        format!(
                            "needs the control socket outside the data directory, which only the node's user may enter: set api.control_socket to e.g. /run/nx1/nx1.sock, not {}",
                            socket.display()
                        ),
                    ));
                }
                Some(group.gid.as_raw())
            }
        };
        let vpn = self.vpn.validate(&invalid)?;
        let mesh = if self.mesh.enabled {
            let m = &self.mesh;
            let advertise = if m.advertise.trim().is_empty() {
                if m.listen.ip().is_unspecified() {
                    return Err(invalid(
                        "mesh.advertise",
                        "must be set when mesh.listen is a wildcard address: the ip:port other nodes reach this one at".into(),
                    ));
                }
                m.listen
            } else {
                m.advertise.trim().parse::<SocketAddr>().map_err(|_| {
                    invalid(
                        "mesh.advertise",
                        format!("{:?} is not ip:port", m.advertise),
                    )
                })?
            };
            if !(20..=10_000).contains(&m.gossip_interval_ms) {
                return Err(invalid(
                    "mesh.gossip_interval_ms",
                    format!("must be 20..=10000, not {}", m.gossip_interval_ms),
                ));
            }
            for b in &m.bootstrap {
                if b.rsplit_once(':')
                    .and_then(|(_, p)| p.parse::<u16>().ok())
                    .is_none()
                {
                    return Err(invalid("mesh.bootstrap", format!("{b:?} is not host:port")));
                }
            }
            if m.region.len() > 64 {
                return Err(invalid("mesh.region", "is longer than 64 bytes".into()));
            }
            let api_url = m.api_url.trim();
            if api_url.len() > 256 {
                return Err(invalid("mesh.api_url", "is longer than 256 bytes".into()));
            }
            if !(api_url.is_empty()
                || api_url.starts_with("http://")
                || api_url.starts_with("https://"))
            {
                return Err(invalid(
                    "mesh.api_url",
                    format!("{api_url:?} is not an http:// or https:// URL"),
                ));
            }
            if m.egress && vpn.as_ref().is_none_or(|v| v.exit) {
                return Err(invalid(
                    "mesh.egress",
                    "is for a node with a WireGuard interface that is not an exit itself ([vpn] enabled = true, exit = false)".into(),
                ));
            }
            if !(20..=10_000).contains(&m.egress_probe_ms)
                || m.egress_timeout_ms < 2 * m.egress_probe_ms
                || m.egress_timeout_ms > 60_000
            {
                return Err(invalid(
                    "mesh.egress_timeout_ms",
                    format!(
                        "probes every 20..=10000 ms and a timeout of at least two probes (at most 60000 ms), not {} and {}",
                        m.egress_probe_ms, m.egress_timeout_ms
                    ),
                ));
            }
            let uplink_check = match m.uplink_check.trim() {
                "" => None,
                a => Some(a.parse::<std::net::IpAddr>().map_err(|_| {
                    invalid("mesh.uplink_check", format!("{a:?} is not an IP address"))
                })?),
            };
            Some(crate::mesh::MeshSettings {
                egress: m.egress,
                egress_probe: std::time::Duration::from_millis(m.egress_probe_ms),
                egress_timeout: std::time::Duration::from_millis(m.egress_timeout_ms),
                uplink_check,
                api_url: (!api_url.is_empty()).then(|| api_url.trim_end_matches('/').to_owned()),
                listen: m.listen,
                advertise,
                bootstrap: m.bootstrap.clone(),
                gossip_interval: std::time::Duration::from_millis(m.gossip_interval_ms),
                region: m.region.clone(),
            })
        } else {
            None
        };
        let r = &self.relay;
        if r.enabled {
            if mesh.is_none() {
                return Err(invalid(
                    "relay.enabled",
                    "needs [mesh] enabled = true: a relay learns its exits from the directory"
                        .into(),
                ));
            }
            if !(r.endpoint.is_empty() || valid_endpoint(&r.endpoint)) {
                return Err(invalid(
                    "relay.endpoint",
                    format!("{:?} is not host:port", r.endpoint),
                ));
            }
            if !(1..=1_000_000).contains(&r.max_sessions) {
                return Err(invalid(
                    "relay.max_sessions",
                    format!("must be 1..=1000000, not {}", r.max_sessions),
                ));
            }
        }
        if self.contribute.cpu_percent > 100 {
            return Err(invalid(
                "contribute.cpu_percent",
                format!("must be 0..=100, not {}", self.contribute.cpu_percent),
            ));
        }
        let c = &self.credits;
        for (key, account) in std::iter::once(("credits.owner", &c.owner))
            .filter(|(_, o)| !o.is_empty())
            .chain(c.issuers.iter().map(|i| ("credits.issuers", i)))
        {
            if crate::signed::public_key(account).is_none() {
                return Err(invalid(
                    key,
                    format!("{account:?} is not a base64 ed25519 public key (a node id)"),
                ));
            }
        }
        if !(1..=3600).contains(&c.spend_hold_secs) {
            return Err(invalid(
                "credits.spend_hold_secs",
                format!("must be 1..=3600, not {}", c.spend_hold_secs),
            ));
        }
        if !(100..=600_000).contains(&c.sync_interval_ms) {
            return Err(invalid(
                "credits.sync_interval_ms",
                format!("must be 100..=600000, not {}", c.sync_interval_ms),
            ));
        }
        let v = &self.vault;
        if v.session_secs == 0 || v.session_secs > 30 * 24 * 3600 {
            return Err(invalid(
                "vault.session_secs",
                format!("must be 1..=2592000 (30 days), not {}", v.session_secs),
            ));
        }
        if v.logins_per_minute == 0 {
            return Err(invalid(
                "vault.logins_per_minute",
                "must be at least 1".into(),
            ));
        }
        if v.registrations_per_hour == 0 {
            return Err(invalid(
                "vault.registrations_per_hour",
                "must be at least 1".into(),
            ));
        }
        if self.guard.quarantine_secs == 0 || self.guard.quarantine_secs > 7 * 24 * 3600 {
            return Err(invalid(
                "guard.quarantine_secs",
                format!(
                    "must be 1..=604800 (a week), not {}",
                    self.guard.quarantine_secs
                ),
            ));
        }
        let guard = if self.guard.enabled && vpn.is_some() {
            let mut upstreams = Vec::new();
            for u in &self.guard.upstreams {
                upstreams
                    .push(u.parse::<SocketAddr>().map_err(|_| {
                        invalid("guard.upstreams", format!("{u:?} is not ip:port"))
                    })?);
            }
            use Action::*;
            let g = &self.guard;
            for (key, action, allowed) in [
                ("guard.on_scan", g.on_scan, &[Allow, Alert, Quarantine][..]),
                (
                    "guard.on_flood",
                    g.on_flood,
                    &[Allow, Alert, RateLimit, Quarantine],
                ),
                (
                    "guard.on_burst",
                    g.on_burst,
                    &[Allow, Alert, RateLimit, Quarantine],
                ),
                (
                    "guard.on_beacon",
                    g.on_beacon,
                    &[Allow, Alert, BlockFlow, Quarantine],
                ),
                (
                    "guard.on_upload",
                    g.on_upload,
                    &[Allow, Alert, RateLimit, BlockFlow, Quarantine],
                ),
                (
                    "guard.on_anomaly",
                    g.on_anomaly,
                    &[Allow, Alert, Quarantine],
                ),
            ] {
                if !allowed.contains(&action) {
                    let names: Vec<String> = allowed
                        .iter()
                        .map(|a| format!("\"{}\"", a.name()))
                        .collect();
                    return Err(invalid(
                        key,
                        format!(
                            "\"{}\" does not apply here; use one of {}",
                            action.name(),
                            names.join(", ")
                        ),
                    ));
                }
            }
            if !(1_000..=16_000_000).contains(&g.max_flows) {
                return Err(invalid(
                    "guard.max_flows",
                    format!("must be 1000..=16000000, not {}", g.max_flows),
                ));
            }
            if g.learning_secs > 30 * 24 * 3600 {
                return Err(invalid(
                    "guard.learning_secs",
                    format!("must be at most 2592000 (30 days), not {}", g.learning_secs),
                ));
            }
            let mut blocklists = Vec::new();
            for entry in &g.blocklists {
                let lower = entry.to_ascii_lowercase();
                if lower.starts_with("http://") || lower.starts_with("https://") {
                    let host = entry.split_once("://").map_or("", |(_, rest)| rest);
                    if host.is_empty()
                        || host.starts_with('/')
                        || entry.contains(char::is_whitespace)
                    {
                        return Err(invalid(
                            "guard.blocklists",
                            format!("{entry:?} is not a URL with a host"),
                        ));
                    }
                    blocklists.push(ListSource::Url(entry.clone()));
                } else if entry.contains("://") {
                    return Err(invalid(
                        "guard.blocklists",
                        format!("{entry:?}: only http:// and https:// URLs are fetched"),
                    ));
                } else {
                    blocklists.push(ListSource::File(in_data(Path::new(entry))));
                }
            }
            let actions = Actions {
                scan: g.on_scan,
                flood: g.on_flood,
                burst: g.on_burst,
                beacon: g.on_beacon,
                upload: g.on_upload,
                anomaly: g.on_anomaly,
            };
            let mut models = Vec::new();
            for name in &self.guard.models {
                let (kind, threshold, key) = match name.as_str() {
                    "dga" => (
                        nx1_guard::model::Kind::Dga,
                        self.guard.dga_threshold,
                        "guard.dga_threshold",
                    ),
                    "phishing" => (
                        nx1_guard::model::Kind::Phishing,
                        self.guard.phishing_threshold,
                        "guard.phishing_threshold",
                    ),
                    other => {
                        return Err(invalid(
                            "guard.models",
                            format!("unknown model {other:?} (known: \"dga\", \"phishing\")"),
                        ));
                    }
                };
                if !(0.0..1.0).contains(&threshold) {
                    return Err(invalid(
                        key,
                        format!("must be in 0..1 (0: the model's own), not {threshold}"),
                    ));
                }
                if !models.iter().any(|(k, _)| *k == kind) {
                    models.push((kind, (threshold > 0.0).then_some(threshold)));
                }
            }
            Some(Guard {
                models,
                blocklists,
                list_cache: data_dir.join("lists-cache"),
                upstreams,
                block_response: self.guard.block_response,
                actions,
                learning: std::time::Duration::from_secs(self.guard.learning_secs),
                max_flows: self.guard.max_flows,
                quarantine: std::time::Duration::from_secs(self.guard.quarantine_secs),
            })
        } else {
            None
        };
        Ok(Resolved {
            vpn,
            guard,
            mesh,
            path: path.to_owned(),
            identity_key: in_data(&self.node.identity_key),
            wireguard_key: in_data(&self.node.wireguard_key),
            control_socket: socket,
            control_group,
            data_dir,
            database,
            raw: self,
        })
    }
}

/// The file `nx1 init` writes: every key at its default, each with a comment.
pub fn default_file() -> String {
    let d = Config::default();
    format!(
        r#"# nx1.toml — configuration of an NX1 node.
# Every key is shown at its default. data_dir is relative to this file's directory; the other
# paths are relative to data_dir.
# Reference: docs/configuration.md

[node]
# Directory for the database, the control socket and other state.
data_dir = "{data_dir}"
# The node's ed25519 identity (base64, mode 0600). It signs what the node publishes.
identity_key = "{identity_key}"
# The node's WireGuard static key (base64, as `wg genkey` writes it; mode 0600).
wireguard_key = "{wireguard_key}"

[log]
# "human" or "json" (one object per line).
format = "human"
# A tracing filter, e.g. "info" or "info,nx1_node=debug". RUST_LOG overrides it.
level = "{level}"

[store]
# Empty: the embedded SQLite file nx1.db in data_dir.
# Or a URL: "sqlite://other.db", "postgres://user@host:5432/dbname".
database_url = ""
# Upper bound of the database connection pool.
max_connections = {max_connections}

[api]
# HTTP API: /healthz, /metrics (Prometheus). Keep it on loopback unless it is firewalled.
listen = "{listen}"
# Control socket for the nx1 command line (mode 0600, relative to data_dir).
control_socket = "{control_socket}"
# A group whose members may use the control socket too (mode 0660), e.g. to run the desktop
# app as a user in it; the socket must then be outside data_dir (e.g. /run/nx1/nx1.sock).
control_group = "{control_group}"

[vpn]
# Run the WireGuard interface (needs root or CAP_NET_ADMIN).
enabled = true
# TUN device name; also names the UAPI socket (/var/run/wireguard/NAME.sock).
interface = "{interface}"
# UDP port WireGuard clients connect to.
listen_port = {listen_port}
mtu = {mtu}
# The node's tunnel addresses; their prefixes are the pools clients get addresses from.
address_v4 = "{address_v4}"
address_v6 = "{address_v6}"
# Forward clients' traffic to the internet: kernel forwarding + an nftables masquerade table.
exit = true
# "host:port" clients reach this node at, written into the configs `nx1 peer add` prints.
endpoint = ""
# DNS servers written into client configs.
dns = []
# PersistentKeepalive written into client configs, in seconds (0: none).
persistent_keepalive = {keepalive}

[guard]
# Serve DNS on the tunnel addresses (port 53), filtered by the block lists below. Client
# configs then use it as their DNS (unless [vpn] dns is set). Needs [vpn] enabled.
enabled = true
# Block lists: files (relative to data_dir) or http(s) URLs (downloaded at start and at every
# `nx1 guard reload`; the last good copy is kept in data_dir/lists-cache). Formats: hosts
# files, plain domain lists, AdBlock-style ||domain^ rules with @@||domain^ exceptions.
blocklists = []
# Upstream resolvers, "ip:port". Empty: the nameservers in /etc/resolv.conf.
upstreams = []
# What a blocked name gets: "zero" (0.0.0.0 / ::) or "nxdomain".
block_response = "zero"
# What each detector in the exit's packet path does when it fires: "allow" (nothing: the
# detector is off), "alert" (a finding and a log warning), "rate-limit" (holds the peer to a
# rate), "block-flow" (drops the flows concerned for quarantine_secs) or "quarantine" (drops all
# of the peer's traffic for quarantine_secs). on_scan: failed connection attempts to many ports
# or hosts (allow, alert, quarantine). on_flood: SYN, UDP or ICMP echo above fixed rates (allow,
# alert, rate-limit, quarantine). on_burst: many new connections at once (allow, alert,
# rate-limit, quarantine). on_beacon: connections to one destination at a regular period (allow,
# alert, block-flow, quarantine). on_upload: upload far above the peer's baseline (any).
# on_anomaly: traffic unlike the peer's own, by the online anomaly score (allow, alert,
# quarantine).
on_scan = "alert"
on_flood = "rate-limit"
on_burst = "alert"
on_beacon = "alert"
on_upload = "alert"
on_anomaly = "alert"
quarantine_secs = 300
# Seconds of a peer's traffic learned before its upload baseline and anomaly score are used.
learning_secs = 600
# Flows (connections) the exit tracks at most: the flow table's memory cap (about 14 MB for
# the default, allocated at start). When nearly full, idle flows expire sooner and a peer beyond its fair share gets no
# new entries (its packets pass untracked).
max_flows = 65536
# Learned models that judge names no list knows: "dga" (algorithmically generated domains),
# "phishing" (look-alikes of popular brands). A score at or above the threshold blocks the name;
# 0 uses the model's own threshold, chosen for 0.1% false positives on held-out benign names.
models = ["dga", "phishing"]
dga_threshold = 0.0
phishing_threshold = 0.0

[vault]
# Serve the password vault's sync API under /v1/vault/ on the HTTP API. Devices encrypt
# everything before it arrives: the node stores ciphertext, public keys and signed manifests.
enabled = true
# Per account: items (deleted ones not counted) and bytes of ciphertext.
max_items = 50000
max_bytes = 268435456
# How long a login lasts, in seconds.
session_secs = 3600
# Failed logins per account per minute (three times as many per source address), and new
# accounts per source address per hour.
logins_per_minute = 10
registrations_per_hour = 10

[mesh]
# Join the NX1 mesh: gossip membership with other nodes, and a directory of their signed
# records (keys, endpoints, roles, region, load) at /v1/directory.
enabled = false
# UDP address the gossip listens on, and the ip:port other nodes reach it at (needed when
# listen is a wildcard address).
listen = "0.0.0.0:7871"
advertise = ""
# Nodes to join through: "host:port" of their [mesh] advertise.
bootstrap = []
# A region label published in this node's record.
region = ""
# Milliseconds between gossip rounds; a node silent for about ten rounds is dead.
gossip_interval_ms = 250
# The URL devices and other nodes reach this node's HTTP API at (vault sync), published in
# its record. Empty: http:// + [api] listen, unless that is a loopback or wildcard address.
api_url = ""
# For a node that is not an exit itself ([vpn] exit = false): send its clients' traffic out
# through the mesh's exits, probing each candidate through its tunnel every egress_probe_ms
# and moving to another when the one in use has not answered for egress_timeout_ms.
egress = false
egress_probe_ms = 100
egress_timeout_ms = 500
# As an exit: answer egress probes only while the uplink has a route to this address (so
# the others move away when it goes). Empty: no check.
uplink_check = "1.1.1.1"

[relay]
# Relay duty: forward other people's WireGuard datagrams to the mesh's exits without
# decrypting them (private two-hop: the exit never sees the client's address, the relay never
# sees its traffic). Needs [mesh] enabled.
enabled = false
# UDP port clients send to (one port serves every exit), and the "host:port" they reach it
# at, published in this node's record.
listen_port = 51821
endpoint = ""
# Caps: sessions at once, and Mbit/s relayed both ways together (0: no cap).
max_sessions = 1024
bandwidth_mbit = 0
# Also relay to exits at private addresses (RFC 1918, 100.64.0.0/10, fc00::/7), for a mesh
# on one private network. Loopback, link-local and multicast addresses never.
allow_private_exits = false

[contribute]
# Cap in Mbit/s on the traffic this node carries for others: what it relays and what leaves
# through its exit, each held to it (0: no cap). `nx1 contribute --bandwidth N` changes it
# at run time.
bandwidth_mbit = 0
# Pause relay duty while other programs use more than this % of the machine's CPU for 3 s,
# resume after 10 s below (0: no limit); only_when_idle pauses it above 15%.
cpu_percent = 0
only_when_idle = false
# Pause relay duty while this node uses more than this much memory, MiB (0: no cap).
memory_mb = 0
# Storage for vaults, MiB, across every account this node holds (0: no cap).
storage_mb = 0

[credits]
# Meter clients by the usage receipts their accounts sign (`nx1 connect` signs every 2 s;
# standard WireGuard clients sign none): a client whose traffic runs ahead of what it signed
# by more than the allowance (KiB) is cut off until its receipts catch up.
require_receipts = false
unpaid_allowance_kb = 4096
# The account this node's earnings go to (a base64 ed25519 public key, e.g. the node id
# `nx1 status` shows on your own device); empty: this node's own identity.
owner = ""
# Accounts whose grants (top-ups, `nx1 credits grant`) this node honours.
issuers = []
# Credits earned per MiB carried for others: through the exit, and relayed.
exit_per_mib = 10
relay_per_mib = 5
# Credits earned per MiB of others' vaults held for a day (their devices confirm it).
storage_per_mib_day = 2
# Vault sync: free per vault account every 30 days (KiB), then credits per MiB.
vault_free_kib = 65536
vault_sync_per_mib = 20
# Tunnels of clients that sign receipts (`nx1 connect`): free per account every 30 days on
# this node (MiB), then credits per MiB; a client whose account cannot pay is cut off until
# it can.
vpn_free_mib = 10240
vpn_per_mib = 1
# How often (ms) earnings are claimed and each account's replicas compared.
sync_interval_ms = 2000
# How long (s) a spend holds its credits on a replica until a majority is known to have it;
# one that never gets its majority gives them back then.
spend_hold_secs = 30
"#,
        data_dir = d.node.data_dir.display(),
        identity_key = d.node.identity_key.display(),
        wireguard_key = d.node.wireguard_key.display(),
        level = d.log.level,
        max_connections = d.store.max_connections,
        listen = d.api.listen,
        control_group = d.api.control_group,
        control_socket = d.api.control_socket.display(),
        interface = d.vpn.interface,
        listen_port = d.vpn.listen_port,
        mtu = d.vpn.mtu,
        address_v4 = d.vpn.address_v4,
        address_v6 = d.vpn.address_v6,
        keepalive = d.vpn.persistent_keepalive,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Resolved, ConfigError> {
        Config::parse(text, Path::new("/etc/nx1/nx1.toml"))?.resolve(Path::new("/etc/nx1/nx1.toml"))
    }

    #[test]
    fn the_default_file_parses_to_the_defaults() {
        let parsed = Config::parse(&default_file(), Path::new("x.toml")).unwrap();
        assert_eq!(parsed, Config::default());
    }

    #[test]
    fn defaults_round_trip_through_toml() {
        let text = toml::to_string(&Config::default()).unwrap();
        assert_eq!(
            Config::parse(&text, Path::new("x")).unwrap(),
            Config::default()
        );
    }

    #[test]
    fn an_empty_file_is_all_defaults() {
        let r = parse("").unwrap();
        assert_eq!(r.raw, Config::default());
        assert_eq!(r.data_dir, Path::new("/etc/nx1/."));
        assert_eq!(
            r.database,
            Database::Sqlite(PathBuf::from("/etc/nx1/./nx1.db"))
        );
        assert_eq!(r.control_socket, Path::new("/etc/nx1/./nx1.sock"));
    }

    #[test]
    fn an_unknown_key_names_the_key_and_its_line() {
        let err = parse("[api]\nlisten = \"127.0.0.1:1\"\nlisen = 3\n").unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, ConfigError::Parse { line: 3, .. }), "{msg}");
        assert!(msg.contains("lisen"), "{msg}");
        assert!(!msg.contains('\n'), "one line: {msg}");
    }

    #[test]
    fn an_unknown_section_is_refused() {
        let msg = parse("[vpnn]\nexit = true\n").unwrap_err().to_string();
        assert!(msg.contains("vpnn"), "{msg}");
    }

    #[test]
    fn a_bad_address_is_refused_with_its_line() {
        let err = parse("[api]\nlisten = \"localhost:http\"\n").unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, ConfigError::Parse { line: 2, .. }), "{msg}");
        assert!(msg.contains("socket address"), "{msg}");
    }

    #[test]
    fn a_wrong_type_is_refused() {
        let msg = parse("[store]\nmax_connections = \"eight\"\n")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("line 2"), "{msg}");
    }

    #[test]
    fn broken_toml_is_refused() {
        let msg = parse("[api\nlisten=").unwrap_err().to_string();
        assert!(msg.starts_with("config /etc/nx1/nx1.toml, line 1"), "{msg}");
    }

    #[test]
    fn a_bad_log_format_or_filter_is_refused() {
        assert!(
            parse("[log]\nformat = \"xml\"\n")
                .unwrap_err()
                .to_string()
                .contains("xml")
        );
        let msg = parse("[log]\nlevel = \"info,=[\"\n")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("log.level"), "{msg}");
    }

    #[test]
    fn database_urls_are_checked() {
        let pg = parse("[store]\ndatabase_url = \"postgres://postgres@127.0.0.1/test\"\n").unwrap();
        assert_eq!(
            pg.database,
            Database::Postgres("postgres://postgres@127.0.0.1/test".into())
        );
        let lite = parse("[store]\ndatabase_url = \"sqlite://other.db\"\n").unwrap();
        assert_eq!(
            lite.database,
            Database::Sqlite(PathBuf::from("/etc/nx1/./other.db"))
        );
        let msg = parse("[store]\ndatabase_url = \"mysql://x\"\n")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("store.database_url"), "{msg}");
    }

    #[test]
    fn pool_size_is_bounded() {
        let msg = parse("[store]\nmax_connections = 0\n")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("store.max_connections"), "{msg}");
    }

    #[test]
    fn an_overlong_socket_path_is_refused() {
        let long = "s".repeat(120);
        let msg = parse(&format!("[api]\ncontrol_socket = \"{long}\"\n"))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("api.control_socket"), "{msg}");
    }

    #[test]
    fn a_control_group_must_exist_and_needs_the_socket_outside_the_data_dir() {
        let msg = parse("[api]\ncontrol_group = \"no-such-group-nx1\"\n")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("no group"), "{msg}");
        let msg = parse("[api]\ncontrol_group = \"root\"\n")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("outside the data directory"), "{msg}");
        let ok = parse("[api]\ncontrol_group = \"root\"\ncontrol_socket = \"/run/nx1/nx1.sock\"\n")
            .unwrap();
        assert_eq!(ok.control_group, Some(0));
        assert_eq!(parse("").unwrap().control_group, None);
    }

    #[test]
    fn vpn_values_are_checked() {
        let ok =
            parse("[vpn]\nendpoint = \"vpn.example.org:51820\"\ndns = [\"10.87.0.1\"]\n").unwrap();
        let vpn = ok.vpn.unwrap();
        assert_eq!(vpn.v4, ("10.87.0.1".parse().unwrap(), 16));
        assert_eq!(vpn.endpoint.as_deref(), Some("vpn.example.org:51820"));
        assert_eq!(vpn.persistent_keepalive, Some(25));
        for (bad, key) in [
            ("interface = \"much-too-long-name\"", "vpn.interface"),
            ("mtu = 500", "vpn.mtu"),
            ("address_v4 = \"10.87.0.1\"", "vpn.address_v4"),
            ("address_v6 = \"fd00::1/8\"", "vpn.address_v6"),
            ("endpoint = \"no port\"", "vpn.endpoint"),
            ("dns = [\"resolver\"]", "vpn.dns"),
        ] {
            let msg = parse(&format!("[vpn]\n{bad}\n")).unwrap_err().to_string();
            assert!(msg.contains(key), "{bad}: {msg}");
        }
        assert!(
            parse("[vpn]\nenabled = false\nmtu = 1\n")
                .unwrap()
                .vpn
                .is_none()
        );
    }

    #[test]
    fn guard_values_are_checked() {
        let msg = parse("[guard]\nquarantine_secs = 0\n")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("guard.quarantine_secs"), "{msg}");
        let msg = parse("[guard]\nupstreams = [\"dns.example\"]\n")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("guard.upstreams"), "{msg}");
        let msg = parse("[guard]\nmodels = [\"astrology\"]\n")
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("guard.models") && msg.contains("astrology"),
            "{msg}"
        );
        let msg = parse("[guard]\ndga_threshold = 1.5\n")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("guard.dga_threshold"), "{msg}");
        let msg = parse("[guard]\non_anomaly = \"rate-limit\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("guard.on_anomaly") && msg.contains("\"quarantine\""),
            "{msg}"
        );
        let ok =
            parse("[guard]\nblocklists = [\"lists/a.txt\", \"https://lists.example/hosts\"]\n")
                .unwrap();
        let lists = ok.guard.unwrap().blocklists;
        assert!(matches!(&lists[0], ListSource::File(p) if p.is_absolute()));
        assert_eq!(
            lists[1],
            ListSource::Url("https://lists.example/hosts".into())
        );
        for bad in ["ftp://lists.example/a", "https:///nohost"] {
            let msg = parse(&format!("[guard]\nblocklists = [\"{bad}\"]\n"))
                .unwrap_err()
                .to_string();
            assert!(msg.contains("guard.blocklists"), "{msg}");
        }
        let msg = parse("[guard]\nmax_flows = 5\n").unwrap_err().to_string();
        assert!(msg.contains("guard.max_flows"), "{msg}");
        let msg = parse("[guard]\non_scan = \"shout\"\n")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("shout"), "{msg}");
        let ok =
            parse("[guard]\nupstreams = [\"198.18.2.2:53\"]\non_scan = \"quarantine\"\n").unwrap();
        assert_eq!(ok.guard.unwrap().actions.scan, Action::Quarantine);
        assert!(
            parse("[vpn]\nenabled = false\n").unwrap().guard.is_none(),
            "Guard needs the VPN"
        );
    }

    #[test]
    fn paths_resolve_against_the_file() {
        let r = parse("[node]\ndata_dir = \"/var/lib/nx1\"\nidentity_key = \"/k/id\"\n").unwrap();
        assert_eq!(r.data_dir, Path::new("/var/lib/nx1"));
        assert_eq!(r.identity_key, Path::new("/k/id"));
        assert_eq!(r.wireguard_key, Path::new("/var/lib/nx1/wireguard.key"));
    }
}
