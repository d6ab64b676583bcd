//! A peer: its static public key, its allowed IPs, its endpoint, its boringtun `Tunn`
//! (handshake state and sessions), and its counters.

use crate::keys::PublicKey;
use boringtun::noise::Tunn;
use ip_network::IpNetwork;
use parking_lot::{Mutex, RwLock};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What a peer is configured with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    /// The peer's static public key; its identity.
    pub public_key: PublicKey,
    /// Inner addresses this peer may use as source, and that route to it.
    pub allowed_ips: Vec<IpNetwork>,
    /// Where to send until the peer is heard from (roaming updates it).
    pub endpoint: Option<SocketAddr>,
    /// Seconds between keepalives when idle, if any.
    pub persistent_keepalive: Option<u16>,
    /// Optional pre-shared symmetric key (whitepaper §5.2).
    pub preshared_key: Option<[u8; 32]>,
}

/// Per-peer traffic counters (outer datagram bytes, as `wg show` reports transfer).
#[derive(Debug, Default)]
pub struct PeerCounters {
    /// Bytes received from the peer.
    pub rx_bytes: AtomicU64,
    /// Bytes sent to the peer.
    pub tx_bytes: AtomicU64,
    /// Datagrams received from the peer.
    pub rx_packets: AtomicU64,
    /// Datagrams sent to the peer.
    pub tx_packets: AtomicU64,
    /// Datagrams or packets of this peer that were dropped.
    pub drops: AtomicU64,
}

/// A snapshot of a peer for status, UAPI and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStats {
    /// The peer's key.
    pub public_key: PublicKey,
    /// Its current endpoint.
    pub endpoint: Option<SocketAddr>,
    /// Its allowed IPs.
    pub allowed_ips: Vec<IpNetwork>,
    /// Unix time of the last completed handshake.
    pub last_handshake: Option<Duration>,
    /// Persistent keepalive interval.
    pub persistent_keepalive: Option<u16>,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Datagrams received.
    pub rx_packets: u64,
    /// Datagrams sent.
    pub tx_packets: u64,
    /// Drops.
    pub drops: u64,
}

/// A peer whose last handshake is this recent is active: WireGuard's REJECT_AFTER_TIME,
/// after which a session's keys are void.
pub const ACTIVE: Duration = Duration::from_secs(180);

impl PeerStats {
    /// Whether the peer had a handshake within [`ACTIVE`].
    pub fn is_active(&self) -> bool {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        self.last_handshake
            .is_some_and(|t| now.saturating_sub(t) < ACTIVE)
    }
}

/// An IPv4-mapped IPv6 address (from the dual-stack socket) as plain IPv4; other addresses,
/// with their IPv6 scope, unchanged.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => addr,
        },
        v4 => v4,
    }
}

/// A live peer.
pub struct Peer {
    pub(crate) config: PeerConfig,
    pub(crate) index: u32,
    pub(crate) tunn: Mutex<Tunn>,
    /// Whether the device's inspector sees this peer's packets (not for mesh links, whose
    /// traffic was inspected where it entered the mesh).
    pub(crate) inspect: bool,
    /// Cut off for unpaid usage: only datagrams to the device's receipt address pass.
    pub(crate) restricted: std::sync::atomic::AtomicBool,
    endpoint: RwLock<Option<SocketAddr>>,
    /// Traffic counters.
    pub counters: PeerCounters,
}

impl Peer {
    pub(crate) fn new(config: PeerConfig, index: u32, tunn: Tunn, inspect: bool) -> Self {
        Self {
            endpoint: RwLock::new(config.endpoint),
            config,
            index,
            tunn: Mutex::new(tunn),
            inspect,
            restricted: std::sync::atomic::AtomicBool::new(false),
            counters: PeerCounters::default(),
        }
    }

    /// The peer's public key.
    pub fn public_key(&self) -> PublicKey {
        self.config.public_key
    }

    /// Where datagrams for this peer go now.
    pub fn endpoint(&self) -> Option<SocketAddr> {
        *self.endpoint.read()
    }

    /// Roaming: the endpoint follows the last authenticated datagram (whitepaper §2.1).
    pub(crate) fn set_endpoint(&self, addr: SocketAddr) {
        let addr = canonical(addr);
        if *self.endpoint.read() != Some(addr) {
            *self.endpoint.write() = Some(addr);
        }
    }

    pub(crate) fn count_rx(&self, bytes: usize) {
        self.counters.rx_bytes.fetch_add(bytes as u64, Relaxed);
        self.counters.rx_packets.fetch_add(1, Relaxed);
    }

    pub(crate) fn count_tx(&self, bytes: usize) {
        self.counters.tx_bytes.fetch_add(bytes as u64, Relaxed);
        self.counters.tx_packets.fetch_add(1, Relaxed);
    }

    pub(crate) fn count_drop(&self) {
        self.counters.drops.fetch_add(1, Relaxed);
    }

    /// A snapshot of the peer.
    pub fn stats(&self) -> PeerStats {
        let since_handshake = self.tunn.lock().stats().0;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        PeerStats {
            public_key: self.config.public_key,
            endpoint: self.endpoint(),
            allowed_ips: self.config.allowed_ips.clone(),
            last_handshake: since_handshake.map(|d| now.saturating_sub(d)),
            persistent_keepalive: self.config.persistent_keepalive,
            rx_bytes: self.counters.rx_bytes.load(Relaxed),
            tx_bytes: self.counters.tx_bytes.load(Relaxed),
            rx_packets: self.counters.rx_packets.load(Relaxed),
            tx_packets: self.counters.tx_packets.load(Relaxed),
            drops: self.counters.drops.load(Relaxed),
        }
    }
}
