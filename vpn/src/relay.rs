//! Relay duty: private two-hop for standard WireGuard clients.
//!
//! A client's config names a relay as its Endpoint and an exit's public key as its peer. The
//! relay forwards the WireGuard datagrams between the two without decrypting them: the exit
//! sees the relay's address, never the client's, and the relay never sees inner traffic.
//!
//! The relay reads only WireGuard's cleartext framing: the message type, the sender and
//! receiver indices, and a handshake initiation's `mac1`, which is keyed by the responder's
//! public key. So one relay port serves every exit: an initiation goes to the known exit
//! whose key its `mac1` verifies under, the exit's response pairs the client's index with the
//! exit's, and from then on the session's datagrams are routed by those indices, both ways.
//! The relay forwards only to exits from the signed directory, only initiations that are
//! meant for one of them, and only data of sessions an exit answered, so it cannot be used to
//! send anything anywhere else.
//!
//! What a relay cannot do: deliver a handshake that an exit starts towards a relayed client
//! (its `mac1` is keyed by the client's key, which the relay does not know). Those are
//! dropped and counted; a client behind a relay rekeys as the initiator (every two minutes,
//! and on its keepalives), so its sessions never depend on the exit starting one.
//!
//! [`RelayTable`] is the routing logic over plain bytes and a clock it is given; [`Relay`]
//! runs it on a UDP socket in a thread of its own, with the batched I/O of [`crate::io`].

use crate::io::{GsoBatch, IoCounters, RecvBatch, bind_udp};
use crate::keys::PublicKey;
use crate::peer::canonical;
use crate::ratelimit::SourceLimiter;
use blake2::digest::consts::U16;
use blake2::digest::{Digest, KeyInit, Mac};
use blake2::{Blake2s256, Blake2sMac};
use parking_lot::Mutex;
use quinn_udp::UdpSocketState;
use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// An initiation whose response has not come within this long is forgotten (WireGuard's
/// REKEY_TIMEOUT: the client has sent a new one by then).
pub const PENDING_TIMEOUT: Duration = Duration::from_secs(5);
/// A session idle this long is forgotten.
pub const SESSION_IDLE: Duration = Duration::from_secs(180);
/// A session this old is forgotten whatever it carries: WireGuard's keys are void 180 s after
/// the handshake (REJECT_AFTER_TIME), and the client has rekeyed long before.
pub const SESSION_MAX_AGE: Duration = Duration::from_secs(185);
/// Sessions one client address may hold at once (a client needs one, two around a rekey), so
/// one source cannot fill the relay's session cap.
pub const SESSIONS_PER_SOURCE: usize = 8;
/// Most initiations waiting for a response at once.
pub const MAX_PENDING: usize = 4096;
/// Once the pending table is half full, one client address may hold at most this many of
/// them, so a few sources cannot fill it for everyone.
pub const PENDING_PER_SOURCE: usize = 16;

const INITIATION: (u8, usize) = (1, 148);
const RESPONSE: (u8, usize) = (2, 92);
const COOKIE: (u8, usize) = (3, 64);
const DATA: u8 = 4;
const DATA_MIN: usize = 32;
const MAC1_LABEL: &[u8] = b"mac1----";

/// An exit the relay forwards to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    /// Its WireGuard public key.
    pub public_key: PublicKey,
    /// Where its WireGuard socket listens.
    pub addr: SocketAddr,
}

/// The caps a relay holds to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayLimits {
    /// Sessions held at once; initiations beyond are dropped. A client holds one session, two
    /// for a while after each rekey (sessions end 185 s after their handshake).
    pub max_sessions: usize,
    /// Bytes of data forwarded per second, both ways together (0: no cap).
    pub bytes_per_second: u64,
}

/// Why a datagram was not forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drop {
    /// Not a WireGuard message, or one of the wrong size.
    Malformed,
    /// A message of a kind that does not come from that side (a response from a client).
    WrongSide,
    /// An initiation whose mac1 verifies under no known exit's key.
    NoExit,
    /// Data or a response for no session the relay holds.
    NoSession,
    /// Initiations from one address above the per-source rate.
    RateLimited,
    /// The session cap is reached.
    SessionsFull,
    /// The bandwidth cap is reached.
    OverBandwidth,
    /// A handshake an exit started towards a client (undeliverable, see the module docs).
    ExitInitiation,
    /// Relay duty is off.
    Disabled,
}

impl Drop {
    /// Every reason, in [`Drop::index`] order.
    pub const ALL: [Drop; 9] = [
        Drop::Malformed,
        Drop::WrongSide,
        Drop::NoExit,
        Drop::NoSession,
        Drop::RateLimited,
        Drop::SessionsFull,
        Drop::OverBandwidth,
        Drop::ExitInitiation,
        Drop::Disabled,
    ];

    /// Its position in [`Drop::ALL`] and in [`RelayCounters::drops`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// A short label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            Drop::Malformed => "malformed",
            Drop::WrongSide => "wrong_side",
            Drop::NoExit => "no_exit",
            Drop::NoSession => "no_session",
            Drop::RateLimited => "rate_limited",
            Drop::SessionsFull => "sessions_full",
            Drop::OverBandwidth => "over_bandwidth",
            Drop::ExitInitiation => "exit_initiation",
            Drop::Disabled => "disabled",
        }
    }
}

/// Which way a forwarded datagram went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From a client to an exit.
    ToExit,
    /// From an exit to a client.
    ToClient,
}

/// What the relay forwarded and dropped.
#[derive(Debug, Default)]
pub struct RelayCounters {
    /// Datagrams forwarded to exits.
    pub to_exit_packets: AtomicU64,
    /// Bytes forwarded to exits.
    pub to_exit_bytes: AtomicU64,
    /// Datagrams forwarded to clients.
    pub to_client_packets: AtomicU64,
    /// Bytes forwarded to clients.
    pub to_client_bytes: AtomicU64,
    /// Drops, indexed by [`Drop::index`].
    pub drops: [AtomicU64; Drop::ALL.len()],
    /// Sessions held now.
    pub sessions: AtomicU64,
    /// Exits known now.
    pub exits: AtomicU64,
}

impl RelayCounters {
    fn count(&self, verdict: &Result<(SocketAddr, Direction), Drop>, bytes: usize) {
        let (packets, total) = match verdict {
            Ok((_, Direction::ToExit)) => (&self.to_exit_packets, &self.to_exit_bytes),
            Ok((_, Direction::ToClient)) => (&self.to_client_packets, &self.to_client_bytes),
            Err(d) => {
                self.drops[d.index()].fetch_add(1, Relaxed);
                return;
            }
        };
        packets.fetch_add(1, Relaxed);
        total.fetch_add(bytes as u64, Relaxed);
    }
}

struct KnownExit {
    mac1_key: [u8; 32],
    addr: SocketAddr,
}

struct Pending {
    client: SocketAddr,
    at: Instant,
}

struct Session {
    exit: SocketAddr,
    client: SocketAddr,
    client_index: u32,
    created: Instant,
    last: Instant,
}

/// A byte budget refilled at a fixed rate; up to a tenth of a second's worth (and at least
/// one GRO batch) can be spent at once. Small, owned by the single relay thread and driven by
/// the clock it is given, so it is written here.
struct ByteBucket {
    rate: u64,
    tokens: u64,
    last: Instant,
}

impl ByteBucket {
    fn burst(rate: u64) -> u64 {
        (rate / 10).max(256 << 10)
    }

    fn take(&mut self, bytes: usize, now: Instant) -> bool {
        if self.rate == 0 {
            return true;
        }
        let elapsed = now.saturating_duration_since(self.last);
        self.last = now;
        // A longer pause refills no more than the burst anyway.
        let elapsed = elapsed.min(Duration::from_secs(10));
        let refill = (elapsed.as_nanos() * u128::from(self.rate) / 1_000_000_000) as u64;
        self.tokens = self
            .tokens
            .saturating_add(refill)
            .min(Self::burst(self.rate));
        match self.tokens.checked_sub(bytes as u64) {
            Some(left) => {
                self.tokens = left;
                true
            }
            None => false,
        }
    }
}

/// The relay's routing state: known exits, handshakes in flight and sessions.
pub struct RelayTable {
    exits: Vec<KnownExit>,
    limits: RelayLimits,
    enabled: bool,
    limiter: SourceLimiter,
    bucket: ByteBucket,
    /// (exit, client's sender index) → the client, until the exit answers.
    pending: HashMap<(SocketAddr, u32), Pending>,
    /// The exit's index (what the client's data names) → the session.
    sessions: HashMap<u32, Session>,
    /// (exit, client's index) (what the exit's data names) → the exit's index.
    to_client: HashMap<(SocketAddr, u32), u32>,
}

fn mac1_key(key: &PublicKey) -> [u8; 32] {
    let mut h = Blake2s256::new();
    h.update(MAC1_LABEL);
    h.update(key.0);
    h.finalize().into()
}

fn index_at(datagram: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(datagram[at..at + 4].try_into().expect("4 bytes"))
}

impl RelayTable {
    /// An empty table, relaying within `limits`.
    pub fn new(limits: RelayLimits, now: Instant) -> Self {
        Self {
            exits: Vec::new(),
            limits,
            enabled: true,
            limiter: SourceLimiter::default(),
            bucket: ByteBucket {
                rate: limits.bytes_per_second,
                tokens: ByteBucket::burst(limits.bytes_per_second),
                last: now,
            },
            pending: HashMap::new(),
            sessions: HashMap::new(),
            to_client: HashMap::new(),
        }
    }

    /// Replaces the known exits; sessions and handshakes with exits no longer known end.
    pub fn set_exits(&mut self, exits: &[Exit]) {
        self.exits = exits
            .iter()
            .map(|e| KnownExit {
                mac1_key: mac1_key(&e.public_key),
                addr: canonical(e.addr),
            })
            .collect();
        let known: Vec<SocketAddr> = self.exits.iter().map(|e| e.addr).collect();
        self.pending.retain(|(exit, _), _| known.contains(exit));
        self.sessions.retain(|_, s| known.contains(&s.exit));
        self.to_client.retain(|(exit, _), _| known.contains(exit));
    }

    /// Changes the caps; the bandwidth budget starts full.
    pub fn set_limits(&mut self, limits: RelayLimits, now: Instant) {
        self.limits = limits;
        self.bucket = ByteBucket {
            rate: limits.bytes_per_second,
            tokens: ByteBucket::burst(limits.bytes_per_second),
            last: now,
        };
    }

    /// Turns relay duty on or off. Off drops every session at once.
    pub fn set_enabled(&mut self, enabled: bool) {
        self.enabled = enabled;
        if !enabled {
            self.pending.clear();
            self.sessions.clear();
            self.to_client.clear();
        }
    }

    /// Sessions held.
    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }

    /// Where a datagram from `from` goes, or why it goes nowhere.
    pub fn route(
        &mut self,
        from: SocketAddr,
        datagram: &[u8],
        now: Instant,
    ) -> Result<(SocketAddr, Direction), Drop> {
        if !self.enabled {
            return Err(Drop::Disabled);
        }
        if datagram.len() < 4 || datagram[1..4] != [0, 0, 0] {
            return Err(Drop::Malformed);
        }
        let from = canonical(from);
        let from_exit = self.exits.iter().any(|e| e.addr == from);
        let kind = (datagram[0], datagram.len());
        match (kind, from_exit) {
            (INITIATION, false) => self.initiation(from, datagram, now),
            (INITIATION, true) => Err(Drop::ExitInitiation),
            (RESPONSE, true) => self.response(from, datagram, now),
            (COOKIE, true) => self.cookie(from, datagram),
            ((DATA, n), _) if n >= DATA_MIN => {
                let route = if from_exit {
                    self.exit_data(from, datagram, now)?
                } else {
                    self.client_data(from, datagram, now)?
                };
                // Only data of a session spends the budget: junk cannot use it up.
                if !self.bucket.take(n, now) {
                    return Err(Drop::OverBandwidth);
                }
                Ok(route)
            }
            (RESPONSE | COOKIE, false) => Err(Drop::WrongSide),
            _ => Err(Drop::Malformed),
        }
    }

    fn initiation(
        &mut self,
        from: SocketAddr,
        datagram: &[u8],
        now: Instant,
    ) -> Result<(SocketAddr, Direction), Drop> {
        if !self.limiter.allow(from.ip(), now) {
            return Err(Drop::RateLimited);
        }
        if self.sessions.len() >= self.limits.max_sessions {
            return Err(Drop::SessionsFull);
        }
        let (covered, mac1) = datagram[..132].split_at(116);
        let exit = self
            .exits
            .iter()
            .find(|e| {
                let mut mac = <Blake2sMac<U16> as KeyInit>::new_from_slice(&e.mac1_key)
                    .expect("a 32-byte key");
                Mac::update(&mut mac, covered);
                // Constant time.
                mac.verify_slice(mac1).is_ok()
            })
            .map(|e| e.addr)
            .ok_or(Drop::NoExit)?;
        if self.pending.len() >= MAX_PENDING / 2 {
            self.pending
                .retain(|_, p| now.saturating_duration_since(p.at) < PENDING_TIMEOUT);
            // Counted only under pressure: a full scan per initiation while it lasts.
            let of_this_source = self
                .pending
                .values()
                .filter(|p| p.client.ip() == from.ip())
                .count();
            if self.pending.len() >= MAX_PENDING || of_this_source >= PENDING_PER_SOURCE {
                return Err(Drop::SessionsFull);
            }
        }
        let sender = index_at(datagram, 4);
        self.pending.insert(
            (exit, sender),
            Pending {
                client: from,
                at: now,
            },
        );
        Ok((exit, Direction::ToExit))
    }

    fn response(
        &mut self,
        exit: SocketAddr,
        datagram: &[u8],
        now: Instant,
    ) -> Result<(SocketAddr, Direction), Drop> {
        let (exit_index, client_index) = (index_at(datagram, 4), index_at(datagram, 8));
        let pending = self
            .pending
            .remove(&(exit, client_index))
            .ok_or(Drop::NoSession)?;
        let client_ip = pending.client.ip();
        let of_this_client = self
            .sessions
            .values()
            .filter(|s| s.client.ip() == client_ip)
            .count();
        if (self.sessions.len() >= self.limits.max_sessions
            || of_this_client >= SESSIONS_PER_SOURCE)
            && !self.sessions.contains_key(&exit_index)
        {
            return Err(Drop::SessionsFull);
        }
        // Two exits may pick the same index: the newer session wins, the older one's client
        // handshakes again.
        if let Some(old) = self.sessions.insert(
            exit_index,
            Session {
                exit,
                client: pending.client,
                client_index,
                created: now,
                last: now,
            },
        ) {
            self.to_client.remove(&(old.exit, old.client_index));
        }
        self.to_client.insert((exit, client_index), exit_index);
        Ok((pending.client, Direction::ToClient))
    }

    fn cookie(
        &mut self,
        exit: SocketAddr,
        datagram: &[u8],
    ) -> Result<(SocketAddr, Direction), Drop> {
        let client_index = index_at(datagram, 4);
        if let Some(p) = self.pending.get(&(exit, client_index)) {
            return Ok((p.client, Direction::ToClient));
        }
        self.to_client
            .get(&(exit, client_index))
            .and_then(|i| self.sessions.get(i))
            .map(|s| (s.client, Direction::ToClient))
            .ok_or(Drop::NoSession)
    }

    fn client_data(
        &mut self,
        from: SocketAddr,
        datagram: &[u8],
        now: Instant,
    ) -> Result<(SocketAddr, Direction), Drop> {
        let session = self
            .sessions
            .get_mut(&index_at(datagram, 4))
            .ok_or(Drop::NoSession)?;
        // A client that moved (roaming) is answered at its new address, as WireGuard itself
        // does. The relay cannot authenticate the datagram: someone who learns a session's
        // index could divert its replies (ciphertext) until the client's next datagram.
        session.client = from;
        session.last = now;
        Ok((session.exit, Direction::ToExit))
    }

    fn exit_data(
        &mut self,
        exit: SocketAddr,
        datagram: &[u8],
        now: Instant,
    ) -> Result<(SocketAddr, Direction), Drop> {
        let exit_index = self
            .to_client
            .get(&(exit, index_at(datagram, 4)))
            .ok_or(Drop::NoSession)?;
        let session = self.sessions.get_mut(exit_index).ok_or(Drop::NoSession)?;
        session.last = now;
        Ok((session.client, Direction::ToClient))
    }

    /// Forgets handshakes that were never answered and sessions gone idle.
    pub fn expire(&mut self, now: Instant) {
        self.pending
            .retain(|_, p| now.saturating_duration_since(p.at) < PENDING_TIMEOUT);
        let to_client = &mut self.to_client;
        self.sessions.retain(|_, s| {
            let keep = now.saturating_duration_since(s.last) < SESSION_IDLE
                && now.saturating_duration_since(s.created) < SESSION_MAX_AGE;
            if !keep {
                to_client.remove(&(s.exit, s.client_index));
            }
            keep
        });
        self.limiter.collect_garbage(now);
    }
}

/// Changes for the running relay, picked up by its thread between batches.
#[derive(Default)]
struct Changes {
    exits: Option<Vec<Exit>>,
    limits: Option<RelayLimits>,
    enabled: Option<bool>,
}

/// A running relay: a UDP socket and the thread that forwards on it. Dropping it stops the
/// thread and closes the socket.
pub struct Relay {
    port: u16,
    stop: Arc<AtomicBool>,
    changed: Arc<AtomicBool>,
    changes: Arc<Mutex<Changes>>,
    thread: Option<JoinHandle<()>>,
    /// What was forwarded and dropped.
    pub counters: Arc<RelayCounters>,
    /// Socket-level counters (failed sends).
    pub io_counters: Arc<IoCounters>,
}

impl Relay {
    /// Binds UDP `port` (0 picks one) on every address and starts forwarding.
    pub fn start(port: u16, limits: RelayLimits) -> io::Result<Relay> {
        let udp = bind_udp(port)?;
        let state = UdpSocketState::new((&udp).into())?;
        crate::io::allow_fragmentation(&udp);
        let port = udp.local_addr()?.port();
        let stop = Arc::new(AtomicBool::new(false));
        let changed = Arc::new(AtomicBool::new(false));
        let changes = Arc::new(Mutex::new(Changes::default()));
        let counters = Arc::new(RelayCounters::default());
        let io_counters = Arc::new(IoCounters::default());
        let thread = {
            let (stop, changed, changes, counters, io_counters) = (
                stop.clone(),
                changed.clone(),
                changes.clone(),
                counters.clone(),
                io_counters.clone(),
            );
            std::thread::Builder::new()
                .name("nx1-relay".into())
                .spawn(move || {
                    let table = RelayTable::new(limits, Instant::now());
                    relay_loop(
                        table,
                        &udp,
                        &state,
                        &counters,
                        &io_counters,
                        &stop,
                        &changed,
                        &changes,
                    )
                })?
        };
        Ok(Relay {
            port,
            stop,
            changed,
            changes,
            thread: Some(thread),
            counters,
            io_counters,
        })
    }

    /// The UDP port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    fn change(&self, f: impl FnOnce(&mut Changes)) {
        f(&mut self.changes.lock());
        self.changed.store(true, Relaxed);
    }

    /// Replaces the exits it forwards to.
    pub fn set_exits(&self, exits: Vec<Exit>) {
        self.change(|c| c.exits = Some(exits));
    }

    /// Changes its caps.
    pub fn set_limits(&self, limits: RelayLimits) {
        self.change(|c| c.limits = Some(limits));
    }

    /// Turns forwarding on or off; off drops every session at once.
    pub fn set_enabled(&self, enabled: bool) {
        self.change(|c| c.enabled = Some(enabled));
    }

    /// False once its thread has ended without being told to.
    pub fn healthy(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }
}

impl std::ops::Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn relay_loop(
    mut table: RelayTable,
    udp: &UdpSocket,
    state: &UdpSocketState,
    counters: &RelayCounters,
    io_counters: &IoCounters,
    stop: &AtomicBool,
    changed: &AtomicBool,
    changes: &Mutex<Changes>,
) {
    let mut batch = RecvBatch::new();
    let mut out = GsoBatch::new(udp, state, io_counters);
    let mut last_sweep = Instant::now();
    while !stop.load(Relaxed) {
        if changed.swap(false, Relaxed) {
            let c = std::mem::take(&mut *changes.lock());
            let now = Instant::now();
            if let Some(exits) = c.exits {
                counters.exits.store(exits.len() as u64, Relaxed);
                table.set_exits(&exits);
            }
            if let Some(limits) = c.limits {
                table.set_limits(limits, now);
            }
            if let Some(enabled) = c.enabled {
                table.set_enabled(enabled);
            }
            counters.sessions.store(table.sessions() as u64, Relaxed);
        }
        let now = Instant::now();
        // Runs of datagrams to one destination leave again as one GSO send.
        if batch.read(udp, state, Duration::from_millis(100), |from, datagram| {
            let verdict = table.route(from, datagram, now);
            counters.count(&verdict, datagram.len());
            if let Ok((dst, _)) = verdict {
                out.push(dst, datagram);
            }
        }) {
            out.flush();
        }
        if now.saturating_duration_since(last_sweep) >= Duration::from_secs(1) {
            table.expire(now);
            counters.sessions.store(table.sessions() as u64, Relaxed);
            last_sweep = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::PrivateKey;

    const CLIENT: &str = "198.51.100.7:40000";
    const EXIT_A: &str = "203.0.113.1:51820";
    const EXIT_B: &str = "203.0.113.2:51820";

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// A real initiation from boringtun towards `exit`.
    fn initiation_to(exit: &PublicKey) -> Vec<u8> {
        initiation_with(exit, 7)
    }

    /// A real initiation from boringtun towards `exit`, from a peer with index `index`.
    fn initiation_with(exit: &PublicKey, index: u32) -> Vec<u8> {
        use boringtun::noise::{Tunn, TunnResult};
        use boringtun::x25519;
        let client = PrivateKey::generate();
        let mut tunn = Tunn::new(
            x25519::StaticSecret::from(*client.to_bytes()),
            x25519::PublicKey::from(exit.0),
            None,
            None,
            index,
            None,
        );
        let mut buf = vec![0u8; 256];
        match tunn.format_handshake_initiation(&mut buf, false) {
            TunnResult::WriteToNetwork(p) => p.to_vec(),
            _ => panic!("no initiation"),
        }
    }

    fn message(kind: u8, len: usize, a: u32, b: u32) -> Vec<u8> {
        let mut m = vec![0u8; len];
        m[0] = kind;
        m[4..8].copy_from_slice(&a.to_le_bytes());
        if len >= 12 {
            m[8..12].copy_from_slice(&b.to_le_bytes());
        }
        m
    }

    fn table(exits: &[(PublicKey, &str)], limits: RelayLimits) -> (RelayTable, Instant) {
        let now = Instant::now();
        let mut t = RelayTable::new(limits, now);
        let exits: Vec<Exit> = exits
            .iter()
            .map(|(k, a)| Exit {
                public_key: *k,
                addr: addr(a),
            })
            .collect();
        t.set_exits(&exits);
        (t, now)
    }

    const ROOMY: RelayLimits = RelayLimits {
        max_sessions: 100,
        bytes_per_second: 0,
    };

    #[test]
    fn a_session_is_routed_by_mac1_then_by_indices_both_ways() {
        let (a, b) = (PrivateKey::generate(), PrivateKey::generate());
        let (mut t, now) = table(&[(a.public_key(), EXIT_A), (b.public_key(), EXIT_B)], ROOMY);
        // The initiation goes to the exit whose key its mac1 is made with.
        let init = initiation_to(&b.public_key());
        let client_index = index_at(&init, 4);
        assert_eq!(
            t.route(addr(CLIENT), &init, now),
            Ok((addr(EXIT_B), Direction::ToExit))
        );
        // Data for a session the exit has not answered goes nowhere.
        let early = message(4, 48, 0x55, 0);
        assert_eq!(t.route(addr(CLIENT), &early, now), Err(Drop::NoSession));
        // The response (exit index 0x55, client index) goes back to the client.
        let resp = message(2, 92, 0x55, client_index);
        assert_eq!(
            t.route(addr(EXIT_B), &resp, now),
            Ok((addr(CLIENT), Direction::ToClient))
        );
        // The same response again is no longer pending.
        assert_eq!(t.route(addr(EXIT_B), &resp, now), Err(Drop::NoSession));
        // Data both ways, by the indices.
        assert_eq!(
            t.route(addr(CLIENT), &message(4, 1400, 0x55, 0), now),
            Ok((addr(EXIT_B), Direction::ToExit))
        );
        assert_eq!(
            t.route(addr(EXIT_B), &message(4, 1400, client_index, 0), now),
            Ok((addr(CLIENT), Direction::ToClient))
        );
        // The other exit cannot use this session's index to reach the client.
        assert_eq!(
            t.route(addr(EXIT_A), &message(4, 64, client_index, 0), now),
            Err(Drop::NoSession)
        );
        // The client roams: replies follow it.
        let moved = addr("198.51.100.99:1234");
        assert_eq!(
            t.route(moved, &message(4, 32, 0x55, 0), now),
            Ok((addr(EXIT_B), Direction::ToExit))
        );
        assert_eq!(
            t.route(addr(EXIT_B), &message(4, 32, client_index, 0), now),
            Ok((moved, Direction::ToClient))
        );
        assert_eq!(t.sessions(), 1);
        // Sessions end when their keys do, busy or not.
        let mut busy = now;
        while busy < now + SESSION_MAX_AGE {
            busy += Duration::from_secs(60);
            t.route(moved, &message(4, 32, 0x55, 0), busy).unwrap();
            t.expire(busy);
        }
        assert_eq!(t.sessions(), 0);
        // (again, for the idle case)
        let init = initiation_to(&b.public_key());
        t.route(addr(CLIENT), &init, now).unwrap();
        t.route(addr(EXIT_B), &message(2, 92, 0x55, index_at(&init, 4)), now)
            .unwrap();
        assert_eq!(t.sessions(), 1);
        // Idle sessions are forgotten.
        t.expire(now + SESSION_IDLE);
        assert_eq!(t.sessions(), 0);
        assert_eq!(
            t.route(addr(EXIT_B), &message(4, 32, client_index, 0), now),
            Err(Drop::NoSession)
        );
    }

    #[test]
    fn initiations_for_unknown_exits_and_malformed_datagrams_are_dropped() {
        let a = PrivateKey::generate();
        let (mut t, now) = table(&[(a.public_key(), EXIT_A)], ROOMY);
        let stranger = PrivateKey::generate().public_key();
        assert_eq!(
            t.route(addr(CLIENT), &initiation_to(&stranger), now),
            Err(Drop::NoExit)
        );
        // A flipped bit in the covered part breaks mac1.
        let mut init = initiation_to(&a.public_key());
        init[50] ^= 1;
        assert_eq!(t.route(addr(CLIENT), &init, now), Err(Drop::NoExit));
        for junk in [
            vec![],
            vec![1],
            vec![1, 0, 0, 0],
            vec![1, 1, 0, 0, 0, 0, 0, 0],
            vec![9; 148],
            vec![1; 147],
            message(4, 31, 0, 0),
            message(2, 93, 0, 0),
        ] {
            assert!(
                matches!(
                    t.route(addr(CLIENT), &junk, now),
                    Err(Drop::Malformed | Drop::WrongSide)
                ),
                "{junk:?}"
            );
        }
        // Responses and cookies come only from exits; initiations from exits are not ours.
        assert_eq!(
            t.route(addr(CLIENT), &message(2, 92, 1, 2), now),
            Err(Drop::WrongSide)
        );
        assert_eq!(
            t.route(addr(CLIENT), &message(3, 64, 1, 0), now),
            Err(Drop::WrongSide)
        );
        assert_eq!(
            t.route(addr(EXIT_A), &initiation_to(&a.public_key()), now),
            Err(Drop::ExitInitiation)
        );
    }

    #[test]
    fn cookies_reach_the_waiting_client_and_unanswered_handshakes_expire() {
        let a = PrivateKey::generate();
        let (mut t, now) = table(&[(a.public_key(), EXIT_A)], ROOMY);
        let init = initiation_to(&a.public_key());
        let ci = index_at(&init, 4);
        t.route(addr(CLIENT), &init, now).unwrap();
        assert_eq!(
            t.route(addr(EXIT_A), &message(3, 64, ci, 0), now),
            Ok((addr(CLIENT), Direction::ToClient))
        );
        t.expire(now + PENDING_TIMEOUT);
        assert_eq!(
            t.route(addr(EXIT_A), &message(2, 92, 9, ci), now),
            Err(Drop::NoSession)
        );
    }

    #[test]
    fn caps_hold_sessions_and_bandwidth_and_off_means_off() {
        let a = PrivateKey::generate();
        let limits = RelayLimits {
            max_sessions: 1,
            bytes_per_second: 1_000_000,
        };
        let (mut t, now) = table(&[(a.public_key(), EXIT_A)], limits);
        let init = initiation_to(&a.public_key());
        t.route(addr(CLIENT), &init, now).unwrap();
        t.route(addr(EXIT_A), &message(2, 92, 0x77, index_at(&init, 4)), now)
            .unwrap();
        // One session is the cap: a second client is refused.
        assert_eq!(
            t.route(addr("198.51.100.8:1"), &initiation_to(&a.public_key()), now),
            Err(Drop::SessionsFull)
        );
        // 1 MB/s with a 256 KiB burst: 200 full datagrams at once do not all pass …
        let data = message(4, 1400, 0x77, 0);
        let passed = (0..200)
            .filter(|_| t.route(addr(CLIENT), &data, now).is_ok())
            .count();
        assert_eq!(passed, (256 << 10) / 1400);
        // … and a second later a second's worth passes again.
        let later = now + Duration::from_secs(1);
        let passed = (0..1000)
            .filter(|_| t.route(addr(CLIENT), &data, later).is_ok())
            .count();
        assert_eq!(passed, (256 << 10) / 1400);
        t.set_enabled(false);
        assert_eq!(t.sessions(), 0);
        assert_eq!(t.route(addr(CLIENT), &data, later), Err(Drop::Disabled));
    }

    #[test]
    fn one_source_cannot_hold_every_session_and_junk_spends_no_budget() {
        let a = PrivateKey::generate();
        let limits = RelayLimits {
            max_sessions: 100,
            bytes_per_second: 1_000_000,
        };
        let (mut t, now) = table(&[(a.public_key(), EXIT_A)], limits);
        let mut at = now;
        for i in 0..20u32 {
            at += Duration::from_secs(1);
            let init = initiation_to(&a.public_key());
            t.route(addr(CLIENT), &init, at).unwrap();
            let r = t.route(
                addr(EXIT_A),
                &message(2, 92, 1000 + i, index_at(&init, 4)),
                at,
            );
            assert_eq!(r.is_ok(), (i as usize) < SESSIONS_PER_SOURCE, "{i}");
        }
        // Another client still gets one.
        let init = initiation_to(&a.public_key());
        t.route(addr("198.51.100.8:1"), &init, at).unwrap();
        assert!(
            t.route(addr(EXIT_A), &message(2, 92, 7, index_at(&init, 4)), at)
                .is_ok()
        );
        // Data for no session: dropped as such, the budget untouched.
        for _ in 0..1000 {
            assert_eq!(
                t.route(addr(CLIENT), &message(4, 1400, 0xdead, 0), at),
                Err(Drop::NoSession)
            );
        }
        assert!(
            t.route(addr(CLIENT), &message(4, 1400, 1000, 0), at)
                .is_ok()
        );
    }

    #[test]
    fn few_sources_cannot_fill_the_pending_handshakes() {
        let a = PrivateKey::generate();
        let (mut t, now) = table(&[(a.public_key(), EXIT_A)], ROOMY);
        // Many sources fill half the table, within their rates …
        let at = now;
        for i in 0..(MAX_PENDING / 2) as u32 {
            let from = SocketAddr::from((std::net::Ipv4Addr::from(0x0a00_0000 + i), 1));
            t.route(from, &initiation_with(&a.public_key(), i + 100), at)
                .unwrap();
        }
        // … then one source may hold only a few more.
        let flooder = addr("198.51.100.200:9");
        let mut taken = 0;
        for step in 0..60u32 {
            let when = at + Duration::from_millis(60 * u64::from(step));
            let init = initiation_with(&a.public_key(), 10_000 + step);
            if t.route(flooder, &init, when).is_ok() {
                taken += 1;
            }
        }
        assert!(taken <= PENDING_PER_SOURCE, "{taken}");
    }

    #[test]
    fn one_source_cannot_flood_handshakes() {
        let a = PrivateKey::generate();
        let (mut t, now) = table(&[(a.public_key(), EXIT_A)], ROOMY);
        let init = initiation_to(&a.public_key());
        let results: Vec<_> = (0..20).map(|_| t.route(addr(CLIENT), &init, now)).collect();
        assert_eq!(
            results.iter().filter(|r| r.is_ok()).count() as u64,
            crate::ratelimit::BURST
        );
        assert!(results.contains(&Err(Drop::RateLimited)));
    }

    #[test]
    fn an_exit_that_leaves_takes_its_sessions_with_it() {
        let a = PrivateKey::generate();
        let (mut t, now) = table(&[(a.public_key(), EXIT_A)], ROOMY);
        let init = initiation_to(&a.public_key());
        t.route(addr(CLIENT), &init, now).unwrap();
        t.route(addr(EXIT_A), &message(2, 92, 5, index_at(&init, 4)), now)
            .unwrap();
        t.set_exits(&[]);
        assert_eq!(t.sessions(), 0);
        assert_eq!(
            t.route(addr(CLIENT), &message(4, 32, 5, 0), now),
            Err(Drop::NoSession)
        );
    }
}
