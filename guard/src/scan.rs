//! Port-scan detection in the exit's packet path, in the manner of Zeek's scan policy: count a
//! peer's *failed* connection attempts — a TCP SYN answered by a RST, or by nothing within
//! [`ATTEMPT_TIMEOUT`] — and call it a scan when, within [`WINDOW`], they reach
//! [`THRESHOLD`] distinct ports on one host (vertical) or distinct hosts on one port
//! (horizontal). Pure: packets arrive as byte slices and time as an `Instant` argument.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// A SYN not answered within this long is a failed attempt.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3);
/// Failed attempts are counted over this window.
pub const WINDOW: Duration = Duration::from_secs(10);
/// Distinct ports (or hosts) that make a scan.
pub const THRESHOLD: usize = 20;
/// Pending attempts kept per peer; beyond it new ones are not tracked (and counted).
pub const MAX_PENDING: usize = 4096;

/// A detected scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scan {
    /// Many ports on one host.
    Vertical {
        /// The host.
        host: IpAddr,
        /// Distinct ports that failed.
        ports: usize,
    },
    /// One port on many hosts.
    Horizontal {
        /// The port.
        port: u16,
        /// Distinct hosts that failed.
        hosts: usize,
    },
}

impl std::fmt::Display for Scan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scan::Vertical { host, ports } => write!(
                f,
                "vertical scan: {ports} ports on {host} failed within {}s",
                WINDOW.as_secs()
            ),
            Scan::Horizontal { port, hosts } => write!(
                f,
                "horizontal scan: port {port} on {hosts} hosts failed within {}s",
                WINDOW.as_secs()
            ),
        }
    }
}

/// The TCP facts of an IP packet: (source, destination, source port, destination port, flags).
pub fn tcp_header(packet: &[u8]) -> Option<(IpAddr, IpAddr, u16, u16, u8)> {
    let (src, dst, rest) = match packet.first()? >> 4 {
        4 => {
            let ihl = usize::from(packet[0] & 0x0f) * 4;
            if packet.len() < ihl + 14 || ihl < 20 || packet[9] != 6 {
                return None;
            }
            // Only the first fragment carries the TCP header.
            if u16::from_be_bytes([packet[6], packet[7]]) & 0x1fff != 0 {
                return None;
            }
            let src: [u8; 4] = packet[12..16].try_into().ok()?;
            let dst: [u8; 4] = packet[16..20].try_into().ok()?;
            (IpAddr::from(src), IpAddr::from(dst), &packet[ihl..])
        }
        6 => {
            // Extension headers are not followed: TCP directly after the fixed header only.
            if packet.len() < 40 + 14 || packet[6] != 6 {
                return None;
            }
            let src: [u8; 16] = packet[8..24].try_into().ok()?;
            let dst: [u8; 16] = packet[24..40].try_into().ok()?;
            (IpAddr::from(src), IpAddr::from(dst), &packet[40..])
        }
        _ => return None,
    };
    let sport = u16::from_be_bytes([rest[0], rest[1]]);
    let dport = u16::from_be_bytes([rest[2], rest[3]]);
    Some((src, dst, sport, dport, rest[13]))
}

/// The source address of an IP packet.
pub fn source(packet: &[u8]) -> Option<IpAddr> {
    match packet.first()? >> 4 {
        4 if packet.len() >= 20 => Some(IpAddr::from(<[u8; 4]>::try_from(&packet[12..16]).ok()?)),
        6 if packet.len() >= 40 => Some(IpAddr::from(<[u8; 16]>::try_from(&packet[8..24]).ok()?)),
        _ => None,
    }
}

const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const ACK: u8 = 0x10;

/// One peer's connection attempts.
#[derive(Debug, Default)]
pub struct Attempts {
    pending: HashMap<(IpAddr, u16), Instant>,
    failed: VecDeque<(Instant, IpAddr, u16)>,
    /// Attempts not tracked because `pending` was full.
    pub untracked: u64,
}

impl Attempts {
    /// A packet from the peer (towards the internet).
    pub fn outbound(&mut self, packet: &[u8], now: Instant) {
        let Some((_, dst, _, dport, flags)) = tcp_header(packet) else {
            return;
        };
        if flags & (SYN | ACK) == SYN {
            if self.pending.len() >= MAX_PENDING {
                self.expire(now);
            }
            if self.pending.len() < MAX_PENDING {
                self.pending.insert((dst, dport), now);
            } else {
                self.untracked += 1;
            }
        }
    }

    /// A packet for the peer (from the internet).
    pub fn inbound(&mut self, packet: &[u8], now: Instant) {
        let Some((src, _, sport, _, flags)) = tcp_header(packet) else {
            return;
        };
        if flags & (SYN | ACK) == SYN | ACK {
            self.pending.remove(&(src, sport));
        } else if flags & RST != 0 && self.pending.remove(&(src, sport)).is_some() {
            self.failed.push_back((now, src, sport));
        }
    }

    /// Moves unanswered attempts to the failed ones and forgets what left the window.
    pub fn expire(&mut self, now: Instant) {
        let failed = &mut self.failed;
        self.pending.retain(|&(host, port), &mut at| {
            let waiting = now.saturating_duration_since(at) < ATTEMPT_TIMEOUT;
            if !waiting {
                failed.push_back((now, host, port));
            }
            waiting
        });
        while self
            .failed
            .front()
            .is_some_and(|(at, _, _)| now.saturating_duration_since(*at) > WINDOW)
        {
            self.failed.pop_front();
        }
    }

    /// The scan the failed attempts in the window show, if any.
    pub fn scan(&self) -> Option<Scan> {
        let mut ports_by_host: HashMap<IpAddr, std::collections::HashSet<u16>> = HashMap::new();
        let mut hosts_by_port: HashMap<u16, std::collections::HashSet<IpAddr>> = HashMap::new();
        for &(_, host, port) in &self.failed {
            ports_by_host.entry(host).or_default().insert(port);
            hosts_by_port.entry(port).or_default().insert(host);
        }
        if let Some((host, ports)) = ports_by_host.iter().max_by_key(|(_, p)| p.len())
            && ports.len() >= THRESHOLD
        {
            return Some(Scan::Vertical {
                host: *host,
                ports: ports.len(),
            });
        }
        if let Some((port, hosts)) = hosts_by_port.iter().max_by_key(|(_, h)| h.len())
            && hosts.len() >= THRESHOLD
        {
            return Some(Scan::Horizontal {
                port: *port,
                hosts: hosts.len(),
            });
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, flags: u8) -> Vec<u8> {
        let mut p = vec![0u8; 40];
        p[0] = 0x45;
        p[3] = 40;
        p[9] = 6;
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&dst);
        p[20..22].copy_from_slice(&sport.to_be_bytes());
        p[22..24].copy_from_slice(&dport.to_be_bytes());
        p[33] = flags;
        p
    }

    const CLIENT: [u8; 4] = [10, 87, 0, 2];
    const WEB: [u8; 4] = [198, 18, 2, 2];

    #[test]
    fn refused_ports_on_one_host_are_a_vertical_scan() {
        let mut a = Attempts::default();
        let t0 = Instant::now();
        for port in 1..=25u16 {
            a.outbound(&tcp(CLIENT, WEB, 40000, port, SYN), t0);
            a.inbound(&tcp(WEB, CLIENT, port, 40000, RST | ACK), t0);
        }
        assert_eq!(
            a.scan(),
            Some(Scan::Vertical {
                host: IpAddr::from(WEB),
                ports: 25
            })
        );
    }

    #[test]
    fn unanswered_attempts_to_many_hosts_are_a_horizontal_scan_once_they_time_out() {
        let mut a = Attempts::default();
        let t0 = Instant::now();
        for host in 1..=30u8 {
            a.outbound(&tcp(CLIENT, [198, 18, 3, host], 40000, 22, SYN), t0);
        }
        a.expire(t0 + Duration::from_secs(1));
        assert_eq!(a.scan(), None, "still waiting for answers");
        a.expire(t0 + ATTEMPT_TIMEOUT);
        assert_eq!(
            a.scan(),
            Some(Scan::Horizontal {
                port: 22,
                hosts: 30
            })
        );
        // Out of the window, forgotten.
        a.expire(t0 + ATTEMPT_TIMEOUT + WINDOW + Duration::from_secs(1));
        assert_eq!(a.scan(), None);
    }

    #[test]
    fn answered_connections_are_no_scan() {
        let mut a = Attempts::default();
        let t0 = Instant::now();
        for port in 1..=100u16 {
            a.outbound(&tcp(CLIENT, WEB, 40000 + port, 443, SYN), t0);
            a.inbound(&tcp(WEB, CLIENT, 443, 40000 + port, SYN | ACK), t0);
        }
        a.expire(t0 + ATTEMPT_TIMEOUT * 2);
        assert_eq!(a.scan(), None);
    }

    #[test]
    fn garbage_and_other_protocols_are_ignored() {
        let mut a = Attempts::default();
        let t0 = Instant::now();
        for junk in [&[][..], &[0x45][..], &[0x60; 30][..], &[0xff; 60][..]] {
            a.outbound(junk, t0);
            a.inbound(junk, t0);
        }
        let mut udp = tcp(CLIENT, WEB, 1, 2, SYN);
        udp[9] = 17;
        a.outbound(&udp, t0);
        assert!(a.pending.is_empty());
    }

    #[test]
    fn pending_attempts_are_capped() {
        let mut a = Attempts::default();
        let t0 = Instant::now();
        for i in 0..(MAX_PENDING as u32 + 10) {
            let host = i.to_be_bytes();
            a.outbound(
                &tcp(CLIENT, [198, host[1], host[2], host[3]], 40000, 80, SYN),
                t0,
            );
        }
        assert_eq!(a.pending.len(), MAX_PENDING);
        assert_eq!(a.untracked, 10);
    }
}
