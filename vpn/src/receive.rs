//! The receive path: a datagram from the UDP socket → the peer it belongs to → boringtun →
//! the TUN device (data), or back to the network (handshake responses, cookie replies, queued
//! packets). Everything that does not authenticate is dropped and counted.

use crate::device::{Device, Outbox};
use crate::keys::PublicKey;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::{Packet, Tunn, TunnResult};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

impl Device {
    /// Handles one datagram from `src`. `buf` is scratch space at least as long as the
    /// datagram and no shorter than 148 bytes.
    pub fn receive_datagram(
        &self,
        src: SocketAddr,
        datagram: &[u8],
        buf: &mut [u8],
        out: &mut impl Outbox,
    ) {
        let src = crate::peer::canonical(src);
        let mut is_cookie_reply = false;
        let peer = match Tunn::parse_incoming_packet(datagram) {
            Err(_) => {
                self.counters.malformed.fetch_add(1, Relaxed);
                return;
            }
            Ok(Packet::HandshakeInit(init)) => {
                // mac1 first (cheap, proves the sender knows our public key), then the
                // device-wide load check that answers with a cookie, then the per-source limit,
                // and only then the Diffie-Hellman that identifies the peer.
                match self
                    .rate_limiter
                    .verify_packet(Some(src.ip()), datagram, buf)
                {
                    Ok(_) => {}
                    Err(TunnResult::WriteToNetwork(cookie)) => {
                        // Cookie replies are limited per source too, so a flood is not
                        // answered datagram for datagram.
                        if self.cookie_limiter.allow(src.ip(), Instant::now()) {
                            self.counters.cookie_replies.fetch_add(1, Relaxed);
                            out.to_network(src, cookie);
                        } else {
                            self.counters.rate_limited.fetch_add(1, Relaxed);
                        }
                        return;
                    }
                    Err(_) => {
                        self.counters.bad_mac.fetch_add(1, Relaxed);
                        return;
                    }
                }
                if !self.relays.read().contains(&src.ip())
                    && !self.source_limiter.allow(src.ip(), Instant::now())
                {
                    self.counters.rate_limited.fetch_add(1, Relaxed);
                    return;
                }
                let Ok(half) = parse_handshake_anon(&self.private, &self.public, &init) else {
                    self.counters.rejected.fetch_add(1, Relaxed);
                    return;
                };
                self.peers
                    .read()
                    .by_key
                    .get(&PublicKey(half.peer_static_public))
                    .cloned()
            }
            Ok(Packet::HandshakeResponse(p)) => self.peer_by_index(p.receiver_idx),
            Ok(Packet::PacketCookieReply(p)) => {
                is_cookie_reply = true;
                self.peer_by_index(p.receiver_idx)
            }
            Ok(Packet::PacketData(p)) => self.peer_by_index(p.receiver_idx),
        };
        let Some(peer) = peer else {
            self.counters.unknown_peer.fetch_add(1, Relaxed);
            return;
        };

        let mut tunn = peer.tunn.lock();
        match tunn.decapsulate(Some(src.ip()), datagram, buf) {
            TunnResult::Done => {
                // A cookie reply is not the peer speaking: it moves no endpoint.
                if !is_cookie_reply {
                    peer.set_endpoint(src);
                }
                peer.count_rx(datagram.len());
            }
            TunnResult::Err(e) => {
                tracing::trace!(peer = %peer.public_key(), error = ?e, "datagram rejected");
                self.counters.rejected.fetch_add(1, Relaxed);
                peer.count_drop();
            }
            TunnResult::WriteToNetwork(reply) => {
                // Anything but a cookie reply (type 3: boringtun under load, sent before the
                // initiation is authenticated) means the message authenticated.
                let authenticated = reply.first() != Some(&3);
                if authenticated {
                    peer.set_endpoint(src);
                }
                peer.count_rx(datagram.len());
                peer.count_tx(reply.len());
                out.to_network(src, reply);
                if authenticated {
                    // A new session may release packets queued while it was being made.
                    let endpoint = peer.endpoint().unwrap_or(src);
                    while let TunnResult::WriteToNetwork(queued) = tunn.decapsulate(None, &[], buf)
                    {
                        peer.count_tx(queued.len());
                        out.to_network(endpoint, queued);
                    }
                }
            }
            TunnResult::WriteToTunnelV4(packet, inner_src) => {
                self.deliver(&peer, src, datagram.len(), packet, inner_src.into(), out);
                Self::release_queued(&peer, &mut tunn, buf, out);
            }
            TunnResult::WriteToTunnelV6(packet, inner_src) => {
                self.deliver(&peer, src, datagram.len(), packet, inner_src.into(), out);
                Self::release_queued(&peer, &mut tunn, buf, out);
            }
        }
    }

    /// The responder's first data packet confirms the session: packets queued before it can
    /// go now (a cheap check when nothing is queued).
    fn release_queued(
        peer: &crate::peer::Peer,
        tunn: &mut boringtun::noise::Tunn,
        buf: &mut [u8],
        out: &mut impl Outbox,
    ) {
        let Some(endpoint) = peer.endpoint() else {
            return;
        };
        while let TunnResult::WriteToNetwork(queued) = tunn.decapsulate(None, &[], buf) {
            peer.count_tx(queued.len());
            out.to_network(endpoint, queued);
        }
    }

    /// Cryptokey routing on the way in: the inner source must be one of the sender's
    /// allowed IPs, or the packet is dropped.
    fn deliver(
        &self,
        peer: &std::sync::Arc<crate::peer::Peer>,
        src: SocketAddr,
        outer_len: usize,
        packet: &[u8],
        inner_src: IpAddr,
        out: &mut impl Outbox,
    ) {
        peer.set_endpoint(src);
        peer.count_rx(outer_len);
        // (The caller holds this peer's tunn lock; the peers lock is taken after it only here
        // for reading, and no path takes them in the other order while blocking.)
        let owner_ok = self
            .peers
            .read()
            .routes
            .lookup(inner_src)
            .is_some_and(|owner| std::sync::Arc::ptr_eq(owner, peer));
        if !owner_ok {
            self.counters.bad_source.fetch_add(1, Relaxed);
            peer.count_drop();
        } else if peer.restricted.load(Relaxed) && !self.receipt_traffic(packet, true) {
            self.counters.unpaid.fetch_add(1, Relaxed);
            peer.count_drop();
        } else if !self.budget.spend(packet.len()) {
            self.counters.over_budget.fetch_add(1, Relaxed);
            peer.count_drop();
        } else if peer.inspect
            && self
                .inspector
                .get()
                .is_some_and(|i| !i.packet_from_peer(&peer.public_key(), packet))
        {
            self.counters.inspected_drops.fetch_add(1, Relaxed);
            peer.count_drop();
        } else {
            out.to_tunnel(packet);
        }
    }
}
