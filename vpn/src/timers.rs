//! WireGuard's timers (whitepaper §6): rekey, retransmitted handshakes, keepalives and
//! session expiry live in boringtun's `Tunn::update_timers`; this drives them for every peer,
//! and resets the handshake rate limiters.

use crate::device::{Device, Outbox};
use boringtun::noise::TunnResult;
use std::time::Instant;

/// How often [`Device::tick`] should run: boringtun's timers have 250 ms granularity.
pub const TICK: std::time::Duration = std::time::Duration::from_millis(250);

impl Device {
    /// Runs every peer's timers; called every [`TICK`].
    pub fn tick(&self, buf: &mut [u8], out: &mut impl Outbox) {
        self.rate_limiter.reset_count();
        self.source_limiter.collect_garbage(Instant::now());
        self.cookie_limiter.collect_garbage(Instant::now());
        let peers: Vec<_> = self.peers.read().by_key.values().cloned().collect();
        for peer in peers {
            let mut tunn = peer.tunn.lock();
            match tunn.update_timers(buf) {
                TunnResult::WriteToNetwork(datagram) => {
                    if let Some(endpoint) = peer.endpoint() {
                        peer.count_tx(datagram.len());
                        out.to_network(endpoint, datagram);
                    }
                }
                TunnResult::Err(e) => {
                    tracing::trace!(peer = %peer.public_key(), error = ?e, "timer")
                }
                _ => {}
            }
        }
    }
}
