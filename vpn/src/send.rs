//! The send path: an IP packet from the TUN device → the peer owning its destination
//! (allowed IPs) → boringtun → the peer's endpoint. Packets sent before a session exists are
//! queued inside `Tunn` and a handshake is started.

use crate::device::{Device, Outbox};
use boringtun::noise::{Tunn, TunnResult};
use std::sync::atomic::Ordering::Relaxed;

impl Device {
    /// Handles one packet read from the TUN device. `buf` must be at least
    /// `packet.len() + 32` and no shorter than 148 bytes.
    pub fn send_packet(&self, packet: &[u8], buf: &mut [u8], out: &mut impl Outbox) {
        let Some(dst) = Tunn::dst_address(packet) else {
            self.counters.malformed.fetch_add(1, Relaxed);
            return;
        };
        let Some(peer) = self.peers.read().routes.lookup(dst).cloned() else {
            self.counters.no_route.fetch_add(1, Relaxed);
            return;
        };
        if peer.restricted.load(Relaxed) && !self.receipt_traffic(packet, false) {
            self.counters.unpaid.fetch_add(1, Relaxed);
            peer.count_drop();
            return;
        }
        if !self.budget.spend(packet.len()) {
            self.counters.over_budget.fetch_add(1, Relaxed);
            peer.count_drop();
            return;
        }
        if peer.inspect
            && self
                .inspector
                .get()
                .is_some_and(|i| !i.packet_to_peer(&peer.public_key(), packet))
        {
            self.counters.inspected_drops.fetch_add(1, Relaxed);
            peer.count_drop();
            return;
        }
        let result = peer.tunn.lock().encapsulate(packet, buf);
        match result {
            TunnResult::WriteToNetwork(datagram) => match peer.endpoint() {
                Some(endpoint) => {
                    peer.count_tx(datagram.len());
                    out.to_network(endpoint, datagram);
                }
                None => {
                    self.counters.no_endpoint.fetch_add(1, Relaxed);
                    peer.count_drop();
                }
            },
            TunnResult::Done => {}
            TunnResult::Err(e) => {
                tracing::trace!(peer = %peer.public_key(), error = ?e, "encapsulation failed");
                peer.count_drop();
            }
            TunnResult::WriteToTunnelV4(..) | TunnResult::WriteToTunnelV6(..) => {}
        }
    }
}
