//! The exit's flow table: every connection its peers make (protocol, addresses, ports), with
//! bytes each way and a blocked flag, under a hard memory cap.
//!
//! The table is allocated once, at its full capacity; a packet never allocates. When it is
//! nearly full the table goes into *emergency mode*: idle flows expire after
//! [`EMERGENCY_IDLE`] instead of [`IDLE`], and a peer that already holds more than its fair
//! share of the table gets no new entries — its packets still pass, counted as untracked, so
//! one peer cannot take the table from the others or make it refuse everyone. Emergency mode
//! ends when the table is back below [`EMERGENCY_EXIT`] of its capacity.
//!
//! Pure: packets are byte slices and time is an `Instant` argument.

use std::collections::HashMap;
use std::net::IpAddr;

/// The table's hasher: foldhash, seeded at random per table — several times faster than
/// SipHash on a five-tuple, and a peer cannot predict it to aim collisions.
type Hasher = foldhash::fast::RandomState;
use std::time::{Duration, Instant};

/// A flow with no packet for this long is forgotten.
pub const IDLE: Duration = Duration::from_secs(120);
/// The same in emergency mode.
pub const EMERGENCY_IDLE: Duration = Duration::from_secs(10);
/// Share of the capacity from which emergency mode starts.
pub const EMERGENCY_ENTER: f64 = 0.9;
/// Share of the capacity below which it ends.
pub const EMERGENCY_EXIT: f64 = 0.7;

/// A connection as the peer sees it: its own address and port first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// IP protocol number (6 TCP, 17 UDP, 1/58 ICMP, …).
    pub protocol: u8,
    /// The peer's address.
    pub local: IpAddr,
    /// The far end.
    pub remote: IpAddr,
    /// The peer's port (the echo identifier for ICMP, 0 for other protocols).
    pub local_port: u16,
    /// The far end's port (0 for ICMP and other protocols).
    pub remote_port: u16,
}

/// What an IP packet says about its flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet {
    /// The flow, seen from the sender (`local` is the source).
    pub key: FlowKey,
    /// A TCP segment with SYN and without ACK: a connection attempt.
    pub syn: bool,
    /// Length of the whole IP packet.
    pub len: usize,
}

/// Reads the flow of an IPv4 or IPv6 packet (extension headers are not walked: their flows
/// carry protocol number and no ports).
pub fn parse(packet: &[u8]) -> Option<Packet> {
    let (protocol, src, dst, rest) = match packet.first()? >> 4 {
        4 => {
            let ihl = usize::from(packet[0] & 0x0f) * 4;
            let src: [u8; 4] = packet.get(12..16)?.try_into().ok()?;
            let dst: [u8; 4] = packet.get(16..20)?.try_into().ok()?;
            // Only the first fragment carries ports.
            let fragment_offset = u16::from_be_bytes([*packet.get(6)?, packet[7]]) & 0x1fff;
            let rest = if fragment_offset == 0 {
                packet.get(ihl..)?
            } else {
                &[]
            };
            (packet[9], IpAddr::from(src), IpAddr::from(dst), rest)
        }
        6 => {
            let src: [u8; 16] = packet.get(8..24)?.try_into().ok()?;
            let dst: [u8; 16] = packet.get(24..40)?.try_into().ok()?;
            (
                packet[6],
                IpAddr::from(src),
                IpAddr::from(dst),
                &packet[40..],
            )
        }
        _ => return None,
    };
    let ports = |r: &[u8]| -> Option<(u16, u16)> {
        Some((
            u16::from_be_bytes([*r.first()?, *r.get(1)?]),
            u16::from_be_bytes([*r.get(2)?, *r.get(3)?]),
        ))
    };
    let (local_port, remote_port, syn) = match protocol {
        6 => {
            let (s, d) = ports(rest).unwrap_or((0, 0));
            let flags = rest.get(13).copied().unwrap_or(0);
            (s, d, flags & 0x12 == 0x02)
        }
        17 => {
            let (s, d) = ports(rest).unwrap_or((0, 0));
            (s, d, false)
        }
        // Echo request/reply: the identifier ties them together.
        1 | 58 => {
            let id = rest
                .get(4..6)
                .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]));
            (id, 0, false)
        }
        _ => (0, 0, false),
    };
    Some(Packet {
        key: FlowKey {
            protocol,
            local: src,
            remote: dst,
            local_port,
            remote_port,
        },
        syn,
        len: packet.len(),
    })
}

impl FlowKey {
    /// The same flow seen from the other end.
    pub fn reversed(self) -> Self {
        Self {
            protocol: self.protocol,
            local: self.remote,
            remote: self.local,
            local_port: self.remote_port,
            remote_port: self.local_port,
        }
    }
}

/// One tracked flow.
#[derive(Debug, Clone, Copy)]
pub struct Flow {
    /// The peer it belongs to (the caller's numbering).
    pub peer: u32,
    /// First packet.
    pub first: Instant,
    /// Latest packet.
    pub last: Instant,
    /// Bytes the peer sent.
    pub bytes_up: u64,
    /// Bytes the peer received.
    pub bytes_down: u64,
    /// Bytes the peer sent, at the last [`FlowTable::take_top_uploader`].
    bytes_up_mark: u64,
    /// Guard blocked it: its packets are dropped both ways until then.
    pub blocked_until: Option<Instant>,
}

impl Flow {
    fn seen(&mut self, now: Instant) -> Seen {
        match self.blocked_until {
            Some(until) if now < until => Seen::Blocked,
            Some(_) => {
                self.blocked_until = None;
                Seen::Known
            }
            None => Seen::Known,
        }
    }
}

/// What the table made of a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// The first packet of a new flow (now tracked).
    New,
    /// A packet of a tracked flow.
    Known,
    /// A packet of a flow Guard blocked: drop it.
    Blocked,
    /// A new flow the table had no room for: passed, not tracked.
    Untracked,
}

/// Counters of the table's life.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FlowCounters {
    /// Flows ever tracked.
    pub created: u64,
    /// Flows forgotten after going idle.
    pub expired: u64,
    /// Packets of flows not tracked for lack of room.
    pub untracked: u64,
    /// Times emergency mode was entered.
    pub emergencies: u64,
}

/// The flow table.
pub struct FlowTable {
    flows: HashMap<FlowKey, Flow, Hasher>,
    capacity: usize,
    /// Flows held per peer (indexed by the caller's peer number).
    per_peer: HashMap<u32, usize, Hasher>,
    emergency: bool,
    /// Counters.
    pub counters: FlowCounters,
}

impl FlowTable {
    /// A table for at most `capacity` flows, allocated now.
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            flows: HashMap::with_capacity_and_hasher(capacity, Hasher::default()),
            capacity,
            per_peer: HashMap::with_capacity_and_hasher(1024, Hasher::default()),
            emergency: false,
            counters: FlowCounters::default(),
        }
    }

    /// Flows tracked now.
    pub fn len(&self) -> usize {
        self.flows.len()
    }

    /// Whether no flow is tracked.
    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    /// The most flows the table holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Whether the table is in emergency mode.
    pub fn emergency(&self) -> bool {
        self.emergency
    }

    /// Whether the flow `key` (seen from the peer) is tracked.
    pub fn contains(&self, key: &FlowKey) -> bool {
        self.flows.contains_key(key)
    }

    /// Flows `peer` holds now.
    pub fn flows_of(&self, peer: u32) -> usize {
        self.per_peer.get(&peer).copied().unwrap_or(0)
    }

    /// A packet `peer` sent.
    pub fn outbound(&mut self, peer: u32, packet: &Packet, now: Instant) -> Seen {
        if let Some(flow) = self.flows.get_mut(&packet.key) {
            flow.last = now;
            flow.bytes_up += packet.len as u64;
            return flow.seen(now);
        }
        let held = self.flows_of(peer);
        let fair_share = self.capacity / self.per_peer.len().max(1);
        let full = self.flows.len() >= self.capacity;
        if full || (self.emergency && held >= fair_share) {
            self.counters.untracked += 1;
            return Seen::Untracked;
        }
        self.flows.insert(
            packet.key,
            Flow {
                peer,
                first: now,
                last: now,
                bytes_up: packet.len as u64,
                bytes_down: 0,
                bytes_up_mark: 0,
                blocked_until: None,
            },
        );
        // A peer number is only inserted with its first flow; the map was sized for it.
        *self.per_peer.entry(peer).or_insert(0) += 1;
        self.counters.created += 1;
        if !self.emergency && self.flows.len() as f64 >= self.capacity as f64 * EMERGENCY_ENTER {
            self.emergency = true;
            self.counters.emergencies += 1;
        }
        Seen::New
    }

    /// A packet sent to a peer (its flow is looked up reversed; it never creates one).
    pub fn inbound(&mut self, packet: &Packet, now: Instant) -> Seen {
        match self.flows.get_mut(&packet.key.reversed()) {
            Some(flow) => {
                flow.last = now;
                flow.bytes_down += packet.len as u64;
                flow.seen(now)
            }
            None => Seen::Untracked,
        }
    }

    /// Blocks the flow `key` (seen from the peer) until `until`, if tracked.
    pub fn block(&mut self, key: &FlowKey, until: Instant) -> bool {
        self.flows
            .get_mut(key)
            .map(|f| f.blocked_until = Some(until))
            .is_some()
    }

    /// Blocks every tracked flow of `peer` to `remote` over `protocol` (and to `remote_port`,
    /// unless 0) until `until`.
    pub fn block_remote(
        &mut self,
        peer: u32,
        protocol: u8,
        remote: IpAddr,
        remote_port: u16,
        until: Instant,
    ) -> usize {
        let mut n = 0;
        for (key, flow) in self.flows.iter_mut() {
            if flow.peer == peer
                && key.protocol == protocol
                && key.remote == remote
                && (remote_port == 0 || key.remote_port == remote_port)
            {
                flow.blocked_until = Some(until);
                n += 1;
            }
        }
        n
    }

    /// The flow of `peer` that sent the most bytes since the last call, with that count;
    /// every flow's mark moves on.
    pub fn take_top_uploader(&mut self, peer: u32) -> Option<(FlowKey, u64)> {
        let mut top: Option<(FlowKey, u64)> = None;
        for (key, flow) in self.flows.iter_mut().filter(|(_, f)| f.peer == peer) {
            let sent = flow.bytes_up - flow.bytes_up_mark;
            flow.bytes_up_mark = flow.bytes_up;
            if top.is_none_or(|(_, best)| sent > best) {
                top = Some((*key, sent));
            }
        }
        top
    }

    /// Forgets idle flows; run a few times a second.
    pub fn expire(&mut self, now: Instant) {
        let idle = if self.emergency { EMERGENCY_IDLE } else { IDLE };
        let per_peer = &mut self.per_peer;
        let mut expired = 0;
        self.flows.retain(|_, flow| {
            let keep = now.saturating_duration_since(flow.last) < idle;
            if !keep {
                expired += 1;
                if let Some(n) = per_peer.get_mut(&flow.peer) {
                    *n -= 1;
                }
            }
            keep
        });
        per_peer.retain(|_, n| *n > 0);
        self.counters.expired += expired;
        if self.emergency && (self.flows.len() as f64) < self.capacity as f64 * EMERGENCY_EXIT {
            self.emergency = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IPv4 TCP or UDP packet from `src:sport` to `dst:dport`.
    pub(crate) fn packet(
        protocol: u8,
        src: [u8; 4],
        sport: u16,
        dst: [u8; 4],
        dport: u16,
        flags: u8,
    ) -> Vec<u8> {
        let mut p = vec![0u8; 40];
        p[0] = 0x45;
        p[9] = protocol;
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&dst);
        p[20..22].copy_from_slice(&sport.to_be_bytes());
        p[22..24].copy_from_slice(&dport.to_be_bytes());
        p[33] = flags;
        p
    }

    #[test]
    fn packets_are_parsed_into_flows() {
        let syn = parse(&packet(6, [10, 87, 0, 2], 40000, [198, 18, 2, 2], 80, 0x02)).unwrap();
        assert!(syn.syn);
        assert_eq!(syn.key.local_port, 40000);
        assert_eq!(syn.key.remote_port, 80);
        let ack = parse(&packet(6, [198, 18, 2, 2], 80, [10, 87, 0, 2], 40000, 0x12)).unwrap();
        assert!(!ack.syn);
        assert_eq!(ack.key.reversed(), syn.key);
        let mut v6 = vec![0u8; 48];
        v6[0] = 0x60;
        v6[6] = 17;
        v6[40..42].copy_from_slice(&53u16.to_be_bytes());
        assert_eq!(parse(&v6).unwrap().key.local_port, 53);
        assert_eq!(parse(&[0x45, 0, 0]), None);
        assert_eq!(parse(&[]), None);
        assert_eq!(parse(&[0x10; 40]), None);
    }

    #[test]
    fn flows_are_tracked_both_ways_and_expire() {
        let mut t = FlowTable::new(100);
        let now = Instant::now();
        let out = parse(&packet(6, [10, 87, 0, 2], 40000, [198, 18, 2, 2], 80, 0x02)).unwrap();
        let back = parse(&packet(6, [198, 18, 2, 2], 80, [10, 87, 0, 2], 40000, 0x12)).unwrap();
        assert_eq!(
            t.inbound(&back, now),
            Seen::Untracked,
            "inbound opens nothing"
        );
        assert_eq!(t.outbound(1, &out, now), Seen::New);
        assert_eq!(t.outbound(1, &out, now), Seen::Known);
        assert_eq!(t.inbound(&back, now), Seen::Known);
        assert_eq!(t.flows_of(1), 1);
        let flow = t.flows[&out.key];
        assert_eq!((flow.bytes_up, flow.bytes_down), (80, 40));
        assert!(t.block(&out.key, now + Duration::from_secs(5)));
        assert_eq!(t.outbound(1, &out, now), Seen::Blocked);
        assert_eq!(t.inbound(&back, now), Seen::Blocked);
        // The block ends at its time, whatever traffic the flow keeps sending.
        let later = now + Duration::from_secs(5);
        assert_eq!(t.outbound(1, &out, later), Seen::Known);
        t.expire(later + IDLE);
        assert!(t.is_empty());
        assert_eq!(t.flows_of(1), 0);
        assert_eq!(t.counters.expired, 1);
    }

    #[test]
    fn a_full_table_holds_its_cap_and_one_peer_cannot_take_it_all() {
        let mut t = FlowTable::new(100);
        let now = Instant::now();
        let flow = |peer: u8, port: u16| {
            parse(&packet(17, [10, 87, 0, peer], port, [198, 18, 2, 2], 53, 0)).unwrap()
        };
        // Peer 2 has a few flows; peer 1 floods new ones.
        for port in 0..5 {
            assert_eq!(t.outbound(2, &flow(2, port), now), Seen::New);
        }
        let mut untracked = 0;
        for port in 0..1000 {
            if t.outbound(1, &flow(1, port), now) == Seen::Untracked {
                untracked += 1;
            }
        }
        assert!(t.emergency());
        assert!(t.len() <= t.capacity());
        assert_eq!(t.counters.untracked, untracked);
        assert!(
            t.flows_of(1) <= 90,
            "peer 1 stops at its share: {}",
            t.flows_of(1)
        );
        // Peer 2 still gets room for new flows.
        assert_eq!(t.outbound(2, &flow(2, 999), now), Seen::New);
        // Emergency expiry clears idle flows quickly; then the mode ends.
        t.expire(now + EMERGENCY_IDLE);
        assert!(t.is_empty() && !t.emergency());
    }

    #[test]
    fn the_top_uploader_is_found() {
        let mut t = FlowTable::new(10);
        let now = Instant::now();
        let small = parse(&packet(6, [10, 87, 0, 2], 1, [198, 18, 2, 2], 80, 0x02)).unwrap();
        let big = parse(&packet(6, [10, 87, 0, 2], 2, [198, 18, 2, 3], 443, 0x02)).unwrap();
        t.outbound(1, &small, now);
        for _ in 0..10 {
            t.outbound(1, &big, now);
        }
        assert_eq!(t.take_top_uploader(1), Some((big.key, 400)));
        t.outbound(1, &small, now);
        assert_eq!(t.take_top_uploader(1), Some((small.key, 40)));
        assert_eq!(t.take_top_uploader(7), None);
        let until = now + Duration::from_secs(60);
        assert_eq!(
            t.block_remote(1, 17, big.key.remote, 443, until),
            0,
            "not UDP"
        );
        assert_eq!(t.block_remote(1, 6, big.key.remote, 443, until), 1);
        assert_eq!(t.outbound(1, &big, now), Seen::Blocked);
    }
}
