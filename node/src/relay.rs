//! Relay duty in the node: the `nx1_vpn::relay` forwarder on `[relay] listen_port`, fed with
//! the live exits of the signed directory.

use crate::config::RelaySection;
use crate::mesh::{Directory, Role};
use nx1_vpn::keys::PublicKey;
use nx1_vpn::relay::{Drop, Exit, Relay, RelayLimits};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

/// A running relay and what it was told last.
pub struct RelayService {
    /// The forwarder.
    pub relay: Relay,
    /// The "host:port" published for clients, if any.
    pub endpoint: Option<String>,
    /// Whether the owner has it on (`nx1 contribute on|off`); the node's record follows it.
    pub on: Arc<AtomicBool>,
    /// Paused while the owner's machine is busy (`[contribute] cpu_percent`, …); the record
    /// follows it too.
    pub paused: Arc<AtomicBool>,
    /// Why it is paused.
    pub paused_why: parking_lot::Mutex<Option<String>>,
    section: RelaySection,
    exits: parking_lot::Mutex<Vec<Exit>>,
}

impl RelayService {
    /// Binds the relay port and starts forwarding (to no exit until the directory names some).
    pub fn start(
        section: &RelaySection,
        on: Arc<AtomicBool>,
        paused: Arc<AtomicBool>,
        cap_mbit: u32,
    ) -> anyhow::Result<RelayService> {
        let relay = Relay::start(section.listen_port, limits(section, cap_mbit)).map_err(|e| {
            anyhow::anyhow!("binding the relay on UDP {}: {e}", section.listen_port)
        })?;
        relay.set_enabled(on.load(Relaxed) && !paused.load(Relaxed));
        Ok(RelayService {
            relay,
            endpoint: (!section.endpoint.is_empty()).then(|| section.endpoint.clone()),
            on,
            paused,
            paused_why: parking_lot::Mutex::new(None),
            section: section.clone(),
            exits: parking_lot::Mutex::new(Vec::new()),
        })
    }

    /// Starts or stops relaying at once (stopping drops every session).
    pub fn set_on(&self, on: bool) {
        self.on.store(on, Relaxed);
        self.relay.set_enabled(on && !self.paused.load(Relaxed));
    }

    /// Pauses relaying (dropping every session) for the reason given, or resumes it.
    pub fn set_paused(&self, why: Option<String>) {
        self.paused.store(why.is_some(), Relaxed);
        self.relay
            .set_enabled(why.is_none() && self.on.load(Relaxed));
        *self.paused_why.lock() = why;
    }

    /// Holds relayed traffic to `cap_mbit` (0: only `[relay] bandwidth_mbit`).
    pub fn set_cap(&self, cap_mbit: u32) {
        self.relay.set_limits(limits(&self.section, cap_mbit));
    }

    /// Points the relay at the live exits of `dir` (this node included, if it is one).
    pub fn follow(&self, dir: &Directory) {
        let mut exits = Vec::new();
        for member in dir.members.values() {
            let r = &member.record;
            if member.state != "live" || !r.roles.contains(&Role::Exit) {
                continue;
            }
            let Some(key) = r
                .wireguard_key
                .as_deref()
                .and_then(|k| PublicKey::from_base64(k).ok())
            else {
                continue;
            };
            // Literal addresses only (a name would make this wait on DNS every second), and
            // only where an exit can be: the directory is self-signed claims, and a relay must
            // not be a way to send datagrams to its own host's or network's services.
            if let Some(addr) = r
                .endpoints
                .iter()
                .filter_map(|e| e.parse::<SocketAddr>().ok())
                .find(|a| forwardable(a, self.section.allow_private_exits))
            {
                exits.push(Exit {
                    public_key: key,
                    addr,
                });
            }
        }
        exits.sort_by_key(|e| (e.public_key, e.addr));
        let mut known = self.exits.lock();
        if *known != exits {
            tracing::info!(exits = exits.len(), "relaying for a new set of exits");
            *known = exits.clone();
            self.relay.set_exits(exits);
        }
    }

    /// What it forwarded and dropped, for `nx1 status`.
    pub fn status(&self) -> crate::control::RelayStatus {
        let c = &self.relay.counters;
        crate::control::RelayStatus {
            listen_port: self.relay.port(),
            endpoint: self.endpoint.clone(),
            exits: c.exits.load(Relaxed),
            sessions: c.sessions.load(Relaxed),
            to_exit_packets: c.to_exit_packets.load(Relaxed),
            to_exit_bytes: c.to_exit_bytes.load(Relaxed),
            to_client_packets: c.to_client_packets.load(Relaxed),
            to_client_bytes: c.to_client_bytes.load(Relaxed),
            dropped: drops(&self.relay)
                .into_iter()
                .filter(|(_, n)| *n > 0)
                .map(|(r, n)| (r.to_owned(), n))
                .collect(),
        }
    }
}

/// Drops by reason.
pub fn drops(relay: &Relay) -> Vec<(&'static str, u64)> {
    Drop::ALL
        .iter()
        .map(|d| (d.label(), relay.counters.drops[d.index()].load(Relaxed)))
        .collect()
}

/// The relay's caps: its own, and the node's contribution cap; the lower one holds.
fn limits(section: &RelaySection, cap_mbit: u32) -> RelayLimits {
    let mbit = match (section.bandwidth_mbit, cap_mbit) {
        (0, c) | (c, 0) => c,
        (a, b) => a.min(b),
    };
    RelayLimits {
        max_sessions: section.max_sessions as usize,
        bytes_per_second: u64::from(mbit) * 1_000_000 / 8,
    }
}

/// Whether the relay may send to `addr`: never loopback, unspecified, multicast, broadcast,
/// link-local or port 0; private networks (RFC 1918, shared 100.64/10, unique-local) only
/// when `[relay] allow_private_exits` says so.
fn forwardable(addr: &SocketAddr, allow_private: bool) -> bool {
    use std::net::IpAddr;
    let ip = match addr.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    let (never, private) = match ip {
        IpAddr::V4(v4) => (
            v4.is_loopback()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_link_local(),
            v4.is_private() || (v4.octets()[0] == 100 && v4.octets()[1] & 0xc0 == 64),
        ),
        IpAddr::V6(v6) => (
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || v6.is_unicast_link_local(),
            v6.is_unique_local(),
        ),
    };
    addr.port() != 0 && !never && (allow_private || !private)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relay_forwards_only_to_addresses_an_exit_can_have() {
        for (addr, private_ok, public_only) in [
            ("198.51.100.7:51820", true, true),
            ("[2001:db8::1]:51820", true, true),
            ("192.168.1.5:51820", true, false),
            ("10.0.0.1:51820", true, false),
            ("100.64.1.1:51820", true, false),
            ("[fd00::1]:51820", true, false),
            ("127.0.0.1:11211", false, false),
            ("[::1]:53", false, false),
            ("[::ffff:127.0.0.1]:53", false, false),
            ("0.0.0.0:51820", false, false),
            ("224.0.0.1:51820", false, false),
            ("255.255.255.255:51820", false, false),
            ("169.254.1.1:51820", false, false),
            ("[fe80::1]:51820", false, false),
            ("198.51.100.7:0", false, false),
        ] {
            let a: SocketAddr = addr.parse().unwrap();
            assert_eq!(forwardable(&a, true), private_ok, "{addr}");
            assert_eq!(forwardable(&a, false), public_only, "{addr}");
        }
    }
}
