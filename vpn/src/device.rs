//! The device: the node's static key, its peers (by public key, by receiver index, by allowed
//! IP), the handshake rate limiters and the device-wide drop counters. It does no I/O: the
//! receive, send and timer paths hand their output to an [`Outbox`], so the whole protocol
//! path can be driven with plain byte vectors in tests.

use crate::allowed_ips::AllowedIps;
use crate::keys::{PrivateKey, PublicKey};
use crate::peer::{Peer, PeerConfig, PeerStats};
use crate::ratelimit::SourceLimiter;
use boringtun::noise::Tunn;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::x25519;
use ip_network::IpNetwork;
use parking_lot::RwLock;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};

/// Handshake messages with a valid mac1 per second that the whole device takes before it
/// demands cookies (mac2). Each initiation is counted twice (once before the peer lookup, once
/// inside `Tunn`), so cookies start at about half this many initiations a second.
pub const HANDSHAKES_BEFORE_COOKIES: u64 = 200;

/// Sees every decrypted packet, by reference, after decryption and before the TUN device
/// (and the reverse way), and may drop it. Called on the hot path: it must not block.
pub trait Inspector: Send + Sync {
    /// A packet from `peer`, about to enter the TUN device. `false` drops it.
    fn packet_from_peer(&self, peer: &PublicKey, packet: &[u8]) -> bool;
    /// A packet from the TUN device, about to be encrypted for `peer`. `false` drops it.
    fn packet_to_peer(&self, peer: &PublicKey, packet: &[u8]) -> bool;
}

/// Where the protocol paths put what must be written.
pub trait Outbox {
    /// A datagram for the UDP socket.
    fn to_network(&mut self, dst: SocketAddr, datagram: &[u8]);
    /// A decrypted IP packet for the TUN device.
    fn to_tunnel(&mut self, packet: &[u8]);
}

/// Why a peer could not be added.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PeerError {
    /// The key is the device's own.
    #[error("a peer cannot have the device's own public key")]
    OwnKey,
    /// No receiver index is free.
    #[error("no free receiver index (too many peers)")]
    Full,
}

/// Device-wide counters of what was dropped, by reason.
#[derive(Debug, Default)]
pub struct DeviceCounters {
    /// Not a WireGuard message (bad type or length).
    pub malformed: AtomicU64,
    /// A handshake with a bad mac1 (not meant for this key).
    pub bad_mac: AtomicU64,
    /// Cookie replies sent because the device is under load.
    pub cookie_replies: AtomicU64,
    /// Initiations refused by the per-source limit.
    pub rate_limited: AtomicU64,
    /// A handshake or data message for no known peer or index.
    pub unknown_peer: AtomicU64,
    /// Failed to authenticate or decrypt, or a replayed counter.
    pub rejected: AtomicU64,
    /// A decrypted packet whose source is not in the sender's allowed IPs.
    pub bad_source: AtomicU64,
    /// A packet from the TUN device for an address no peer owns.
    pub no_route: AtomicU64,
    /// A packet for a peer whose endpoint is unknown.
    pub no_endpoint: AtomicU64,
    /// Packets the inspector dropped.
    pub inspected_drops: AtomicU64,
    /// Packets over the device's bandwidth cap.
    pub over_budget: AtomicU64,
    /// Packets of peers cut off for unpaid usage.
    pub unpaid: AtomicU64,
}

#[derive(Default)]
pub(crate) struct PeerTable {
    pub(crate) by_key: HashMap<PublicKey, Arc<Peer>>,
    pub(crate) by_index: HashMap<u32, Arc<Peer>>,
    pub(crate) routes: AllowedIps<Arc<Peer>>,
}

/// The protocol state of one WireGuard interface.
pub struct Device {
    pub(crate) private: x25519::StaticSecret,
    pub(crate) public: x25519::PublicKey,
    pub(crate) public_key: PublicKey,
    pub(crate) rate_limiter: Arc<RateLimiter>,
    pub(crate) source_limiter: SourceLimiter,
    pub(crate) cookie_limiter: SourceLimiter,
    pub(crate) peers: RwLock<PeerTable>,
    next_index: AtomicU32,
    pub(crate) inspector: std::sync::OnceLock<Arc<dyn Inspector>>,
    /// The cap on data through the device, both ways together (none unless set).
    pub budget: crate::budget::ByteBudget,
    /// Addresses exempt from the per-source handshake limit: relays, whose many clients all
    /// arrive from one address (a relay limits each of its clients itself). The device-wide
    /// limit, which answers with cookies under load, still applies.
    pub(crate) relays: RwLock<std::collections::HashSet<std::net::IpAddr>>,
    /// The one destination a cut-off peer may still reach: where usage receipts go.
    pub(crate) receipt_address: RwLock<Option<std::net::SocketAddrV4>>,
    /// Drops by reason.
    pub counters: DeviceCounters,
}

impl Device {
    /// A device with `key` and no peers.
    pub fn new(key: &PrivateKey) -> Self {
        let private = x25519::StaticSecret::from(*key.to_bytes());
        let public = x25519::PublicKey::from(&private);
        let mut seed = [0u8; 4];
        getrandom::fill(&mut seed).expect("the operating system has no random numbers");
        Self {
            rate_limiter: Arc::new(RateLimiter::new(&public, HANDSHAKES_BEFORE_COOKIES)),
            public_key: PublicKey(public.to_bytes()),
            private,
            public,
            source_limiter: SourceLimiter::default(),
            cookie_limiter: SourceLimiter::fail_open(),
            peers: RwLock::new(PeerTable::default()),
            next_index: AtomicU32::new(u32::from_le_bytes(seed)),
            inspector: std::sync::OnceLock::new(),
            budget: crate::budget::ByteBudget::default(),
            relays: RwLock::new(std::collections::HashSet::new()),
            receipt_address: RwLock::new(None),
            counters: DeviceCounters::default(),
        }
    }

    /// Installs the packet inspector (once; later calls are ignored and return false).
    pub fn set_inspector(&self, inspector: Arc<dyn Inspector>) -> bool {
        self.inspector.set(inspector).is_ok()
    }

    /// Replaces the addresses exempt from the per-source handshake limit (relays').
    pub fn set_relays(&self, addrs: impl IntoIterator<Item = std::net::IpAddr>) {
        *self.relays.write() = addrs.into_iter().map(|a| a.to_canonical()).collect();
    }

    /// Sets where a cut-off peer may still send (UDP over IPv4): the node's receipt port.
    pub fn set_receipt_address(&self, addr: Option<std::net::SocketAddrV4>) {
        *self.receipt_address.write() = addr;
    }

    /// Cuts a peer off (only its datagrams to the receipt address pass, nothing goes to it)
    /// or lets it through again. Returns false if there is no such peer.
    pub fn set_restricted(&self, key: &PublicKey, restricted: bool) -> bool {
        match self.peers.read().by_key.get(key) {
            Some(p) => {
                p.restricted.store(restricted, Relaxed);
                true
            }
            None => false,
        }
    }

    /// Whether a peer is cut off.
    pub fn is_restricted(&self, key: &PublicKey) -> bool {
        self.peers
            .read()
            .by_key
            .get(key)
            .is_some_and(|p| p.restricted.load(Relaxed))
    }

    /// Whether a cut-off peer's packet may still pass: UDP to the receipt address (its
    /// receipts) or, the other way, from it (the node's answers).
    pub(crate) fn receipt_traffic(&self, packet: &[u8], to_node: bool) -> bool {
        let Some(node) = *self.receipt_address.read() else {
            return false;
        };
        // IPv4, UDP, not a fragment past the first: the node's address and port on the
        // right side.
        let ihl = usize::from(packet.first().map_or(0, |b| b & 0x0f)) * 4;
        let (addr, port) = if to_node { (16, 2) } else { (12, 0) };
        packet.len() >= ihl + 8
            && packet[0] >> 4 == 4
            && ihl >= 20
            && packet[9] == 17
            && u16::from_be_bytes([packet[6], packet[7]]) & 0x1fff == 0
            && packet[addr..addr + 4] == node.ip().octets()
            && u16::from_be_bytes([packet[ihl + port], packet[ihl + port + 1]]) == node.port()
    }

    /// The device's public key.
    pub fn public_key(&self) -> PublicKey {
        self.public_key
    }

    /// Adds a peer, or replaces the peer with the same key (its sessions start over).
    pub fn upsert_peer(&self, config: PeerConfig) -> Result<(), PeerError> {
        self.upsert(config, true)
    }

    /// Adds or replaces a mesh link: a peer like any other, except that the inspector does
    /// not see its packets (they were inspected where they entered the mesh).
    pub fn upsert_mesh_peer(&self, config: PeerConfig) -> Result<(), PeerError> {
        self.upsert(config, false)
    }

    /// Routes every address no more specific allowed IP claims (0.0.0.0/0 and ::/0) to the
    /// peer with `key`, or to no one; the peers' sessions are untouched, so the switch is
    /// immediate. Returns false (and changes nothing) if there is no such peer.
    pub fn set_default_route(&self, key: Option<&PublicKey>) -> bool {
        let mut table = self.peers.write();
        let target = match key {
            Some(k) => match table.by_key.get(k) {
                Some(p) => Some(p.clone()),
                None => return false,
            },
            None => None,
        };
        let defaults: [IpNetwork; 2] = [
            "0.0.0.0/0".parse().expect("v4 default"),
            "::/0".parse().expect("v6 default"),
        ];
        table
            .routes
            .remove_where_network(|net| defaults.contains(&net));
        if let Some(peer) = target {
            for net in defaults {
                table.routes.insert(net, peer.clone());
            }
        }
        true
    }

    /// The key of the peer 0.0.0.0/0 is routed to, if any.
    pub fn default_route(&self) -> Option<PublicKey> {
        let default: IpNetwork = "0.0.0.0/0".parse().expect("v4 default");
        self.peers
            .read()
            .routes
            .iter()
            .find(|(net, _)| *net == default)
            .map(|(_, p)| p.public_key())
    }

    fn upsert(&self, config: PeerConfig, inspect: bool) -> Result<(), PeerError> {
        if config.public_key == self.public_key {
            return Err(PeerError::OwnKey);
        }
        let mut table = self.peers.write();
        // boringtun puts the index in the top 24 bits of its receiver indices. Found before
        // the old peer goes, so a full table leaves the old peer in place.
        let index = (0..1 << 24)
            .map(|_| self.next_index.fetch_add(1, Relaxed) & 0x00ff_ffff)
            .find(|i| !table.by_index.contains_key(i))
            .ok_or(PeerError::Full)?;
        if let Some(old) = table.by_key.remove(&config.public_key) {
            table.by_index.remove(&old.index);
            table.routes.remove_where(|p| Arc::ptr_eq(p, &old));
        }
        let tunn = Tunn::new(
            self.private.clone(),
            x25519::PublicKey::from(config.public_key.0),
            config.preshared_key,
            config.persistent_keepalive,
            index,
            Some(self.rate_limiter.clone()),
        );
        let peer = Arc::new(Peer::new(config, index, tunn, inspect));
        for net in &peer.config.allowed_ips {
            // An allowed IP belongs to one peer: the newest claim wins, as in wg(8).
            if let Some(prev) = table.routes.insert(*net, peer.clone())
                && !Arc::ptr_eq(&prev, &peer)
            {
                tracing::debug!(network = %net, from = %prev.public_key(), "allowed IP moved to another peer");
            }
        }
        table.by_index.insert(index, peer.clone());
        table.by_key.insert(peer.public_key(), peer);
        Ok(())
    }

    /// Removes a peer at once: its sessions, routes and index are gone. Returns whether it existed.
    pub fn remove_peer(&self, key: &PublicKey) -> bool {
        let mut table = self.peers.write();
        match table.by_key.remove(key) {
            Some(old) => {
                table.by_index.remove(&old.index);
                table.routes.remove_where(|p| Arc::ptr_eq(p, &old));
                true
            }
            None => false,
        }
    }

    /// Removes every peer.
    pub fn clear_peers(&self) {
        *self.peers.write() = PeerTable::default();
    }

    /// A snapshot of every peer, sorted by key.
    pub fn peer_stats(&self) -> Vec<PeerStats> {
        let peers: Vec<Arc<Peer>> = self.peers.read().by_key.values().cloned().collect();
        let mut stats: Vec<PeerStats> = peers.iter().map(|p| p.stats()).collect();
        stats.sort_by_key(|s| s.public_key);
        stats
    }

    /// One peer's snapshot.
    pub fn peer(&self, key: &PublicKey) -> Option<PeerStats> {
        // Not under the table lock: stats() waits for the peer's tunn lock.
        let peer = self.peers.read().by_key.get(key).cloned();
        peer.map(|p| p.stats())
    }

    /// The key of the peer whose allowed IPs hold `addr` (the tunnel a packet from `addr`
    /// came through).
    pub fn peer_for(&self, addr: std::net::IpAddr) -> Option<PublicKey> {
        self.peers
            .read()
            .routes
            .lookup(addr)
            .map(|p| p.public_key())
    }

    pub(crate) fn peer_by_index(&self, receiver_index: u32) -> Option<Arc<Peer>> {
        self.peers
            .read()
            .by_index
            .get(&(receiver_index >> 8))
            .cloned()
    }
}
