//! Handshake rate limiting per source address.
//!
//! boringtun's `RateLimiter` counts initiations for the whole device and demands cookies
//! (mac2) once over its limit; it does not stop one address from using up that budget. This
//! token bucket per source IP (as wireguard-go's `ratelimiter.go` does) sits in front of it, so
//! a flood from one place cannot starve real peers. It is small and takes time as an input, so
//! it is written here rather than pulled in.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Sustained initiations per second allowed from one address.
pub const PACKETS_PER_SECOND: u64 = 20;
/// Initiations one address may send in a burst.
pub const BURST: u64 = 5;
const TOKEN_NS: u64 = 1_000_000_000 / PACKETS_PER_SECOND;
const MAX_TOKENS: u64 = TOKEN_NS * BURST;
/// Most addresses tracked; beyond it, new addresses are refused until old ones age out.
pub const MAX_ENTRIES: usize = 65_536;

struct Bucket {
    last: Instant,
    tokens: u64,
}

/// Token buckets keyed by source address (IPv6 by its /64, so one host cannot rotate through
/// its own prefix).
#[derive(Default)]
pub struct SourceLimiter {
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
    /// When the table is full: allow new addresses (for cookie replies, which cost less than
    /// the request and must not be starved by spoofed sources) or refuse them.
    open_when_full: bool,
}

fn key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let mut o = v6.octets();
            o[8..].fill(0);
            IpAddr::from(o)
        }
        v4 => v4,
    }
}

impl SourceLimiter {
    /// A limiter that lets new addresses through while its table is full.
    pub fn fail_open() -> Self {
        Self {
            open_when_full: true,
            ..Self::default()
        }
    }

    /// Whether one more initiation from `ip` at time `now` is allowed.
    pub fn allow(&self, ip: IpAddr, now: Instant) -> bool {
        let mut buckets = self.buckets.lock();
        let len = buckets.len();
        match buckets.get_mut(&key(ip)) {
            Some(b) => {
                let elapsed = now.saturating_duration_since(b.last).as_nanos() as u64;
                b.last = now;
                b.tokens = (b.tokens + elapsed).min(MAX_TOKENS);
                if b.tokens >= TOKEN_NS {
                    b.tokens -= TOKEN_NS;
                    true
                } else {
                    false
                }
            }
            None if len >= MAX_ENTRIES => self.open_when_full,
            None => {
                buckets.insert(
                    key(ip),
                    Bucket {
                        last: now,
                        tokens: MAX_TOKENS - TOKEN_NS,
                    },
                );
                true
            }
        }
    }

    /// Forgets addresses idle for a second or more (their buckets are full again anyway).
    pub fn collect_garbage(&self, now: Instant) {
        self.buckets
            .lock()
            .retain(|_, b| now.saturating_duration_since(b.last) < Duration::from_secs(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_the_rate_holds() {
        let l = SourceLimiter::default();
        let ip: IpAddr = "198.18.0.9".parse().unwrap();
        let t0 = Instant::now();
        let passed = (0..100).filter(|_| l.allow(ip, t0)).count();
        assert_eq!(passed as u64, BURST);
        // One token comes back every 50 ms.
        assert!(l.allow(ip, t0 + Duration::from_millis(51)));
        assert!(!l.allow(ip, t0 + Duration::from_millis(52)));
    }

    #[test]
    fn one_flooding_address_does_not_limit_another() {
        let l = SourceLimiter::default();
        let t0 = Instant::now();
        for _ in 0..1000 {
            l.allow("198.18.0.66".parse().unwrap(), t0);
        }
        assert!(l.allow("198.18.0.2".parse().unwrap(), t0));
    }

    #[test]
    fn v6_addresses_share_their_64() {
        let l = SourceLimiter::default();
        let t0 = Instant::now();
        let passed = (0..100u16)
            .filter(|i| l.allow(format!("2001:db8::{i:x}").parse().unwrap(), t0))
            .count();
        assert_eq!(passed as u64, BURST);
        assert!(l.allow("2001:db8:0:1::1".parse().unwrap(), t0));
    }

    #[test]
    fn a_full_table_refuses_or_admits_new_addresses_as_configured() {
        let closed = SourceLimiter::default();
        let open = SourceLimiter::fail_open();
        let t0 = Instant::now();
        for i in 0..MAX_ENTRIES as u32 {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            closed.allow(ip, t0);
            open.allow(ip, t0);
        }
        let newcomer: IpAddr = "198.18.0.77".parse().unwrap();
        assert!(!closed.allow(newcomer, t0));
        assert!(open.allow(newcomer, t0));
    }

    #[test]
    fn idle_addresses_are_forgotten() {
        let l = SourceLimiter::default();
        let t0 = Instant::now();
        l.allow("198.18.0.1".parse().unwrap(), t0);
        l.collect_garbage(t0 + Duration::from_secs(2));
        assert!(l.buckets.lock().is_empty());
    }
}
