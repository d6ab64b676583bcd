//! Floods from a peer: new TCP connections (SYN), ICMP echo requests and UDP datagrams, each
//! held to a token bucket per peer. What exceeds a bucket is dropped; a peer that keeps
//! exceeding one is flooding. Pure: time is an argument.

use std::time::Instant;

/// What a packet from a peer is, for flood accounting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A TCP SYN (a new connection).
    Syn,
    /// An ICMP or ICMPv6 echo request.
    Ping,
    /// A UDP datagram.
    Udp,
}

impl Kind {
    /// Sustained packets per second allowed, and the burst.
    pub fn rate(self) -> (f64, f64) {
        match self {
            Kind::Syn => (1_000.0, 2_000.0),
            Kind::Ping => (200.0, 400.0),
            // Generous: QUIC video runs at tens of thousands of datagrams a second.
            Kind::Udp => (100_000.0, 200_000.0),
        }
    }

    /// A name for findings.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Syn => "SYN",
            Kind::Ping => "ICMP echo",
            Kind::Udp => "UDP",
        }
    }
}

/// The flood kind of an IP packet, if it has one.
pub fn kind(packet: &[u8]) -> Option<Kind> {
    let (protocol, rest) = match packet.first()? >> 4 {
        4 => {
            let ihl = usize::from(packet.first()? & 0x0f) * 4;
            (*packet.get(9)?, packet.get(ihl..)?)
        }
        6 => (*packet.get(6)?, packet.get(40..)?),
        _ => return None,
    };
    match protocol {
        6 => (rest.get(13)? & 0x12 == 0x02).then_some(Kind::Syn),
        17 => Some(Kind::Udp),
        1 => (*rest.first()? == 8).then_some(Kind::Ping),
        58 => (*rest.first()? == 128).then_some(Kind::Ping),
        _ => None,
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Option<Instant>,
}

/// One peer's buckets and what they dropped.
#[derive(Debug, Clone)]
pub struct FloodLimiter {
    buckets: [Bucket; 3],
    /// Packets dropped per kind since the last [`FloodLimiter::take_dropped`].
    dropped: [u64; 3],
}

impl Default for FloodLimiter {
    fn default() -> Self {
        Self {
            buckets: [Bucket {
                tokens: 0.0,
                last: None,
            }; 3],
            dropped: [0; 3],
        }
    }
}

fn index(kind: Kind) -> usize {
    match kind {
        Kind::Syn => 0,
        Kind::Ping => 1,
        Kind::Udp => 2,
    }
}

impl FloodLimiter {
    /// Whether a packet of `kind` may pass at `now`.
    pub fn allow(&mut self, kind: Kind, now: Instant) -> bool {
        let (rate, burst) = kind.rate();
        let b = &mut self.buckets[index(kind)];
        b.tokens = match b.last {
            None => burst,
            Some(last) => {
                (b.tokens + now.saturating_duration_since(last).as_secs_f64() * rate).min(burst)
            }
        };
        b.last = Some(now);
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            self.dropped[index(kind)] += 1;
            false
        }
    }

    /// The kind with the most drops since the last call, with its count; resets the counts.
    pub fn take_dropped(&mut self) -> Option<(Kind, u64)> {
        let kinds = [Kind::Syn, Kind::Ping, Kind::Udp];
        let worst = kinds
            .into_iter()
            .map(|k| (k, self.dropped[index(k)]))
            .max_by_key(|(_, n)| *n)
            .filter(|(_, n)| *n > 0);
        self.dropped = [0; 3];
        worst
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ipv4(protocol: u8, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; 20];
        p[0] = 0x45;
        p[9] = protocol;
        p.extend_from_slice(payload);
        p
    }

    #[test]
    fn packets_are_classified() {
        let mut tcp = vec![0u8; 20];
        tcp[13] = 0x02;
        assert_eq!(kind(&ipv4(6, &tcp)), Some(Kind::Syn));
        tcp[13] = 0x12;
        assert_eq!(kind(&ipv4(6, &tcp)), None, "SYN-ACK opens nothing");
        assert_eq!(kind(&ipv4(1, &[8, 0])), Some(Kind::Ping));
        assert_eq!(kind(&ipv4(1, &[0, 0])), None, "echo reply");
        assert_eq!(kind(&ipv4(17, &[0; 8])), Some(Kind::Udp));
        assert_eq!(kind(&[0x45, 0, 0]), None);
        assert_eq!(kind(&[]), None);
    }

    #[test]
    fn a_burst_passes_then_the_rate_holds_and_drops_are_reported() {
        let mut f = FloodLimiter::default();
        let t0 = Instant::now();
        let passed = (0..10_000).filter(|_| f.allow(Kind::Syn, t0)).count();
        assert_eq!(passed, 2_000);
        assert_eq!(f.take_dropped(), Some((Kind::Syn, 8_000)));
        assert_eq!(f.take_dropped(), None);
        // A second later, a second's worth more.
        let t1 = t0 + Duration::from_secs(1);
        let passed = (0..10_000).filter(|_| f.allow(Kind::Syn, t1)).count();
        assert_eq!(passed, 1_000);
    }

    #[test]
    fn ordinary_rates_never_drop() {
        let mut f = FloodLimiter::default();
        let t0 = Instant::now();
        for i in 0..5_000u64 {
            // 50 new connections and 20 pings a second for 100 s.
            let now = t0 + Duration::from_millis(i * 20);
            assert!(f.allow(Kind::Syn, now));
            if i % 3 == 0 {
                assert!(f.allow(Kind::Ping, now));
            }
        }
        assert_eq!(f.take_dropped(), None);
    }
}
