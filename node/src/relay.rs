//! Relay duty in the node: the `nx1_vpn::relay` forwarder on `[relay] listen_port`, fed with
//! the live exits of the signed directory.

use crate::config::RelaySection;
use crate::mesh::{Directory, Role};
use nx1_vpn::keys::PublicKey;
use nx1_vpn::relay::{Drop, Exit, Relay, RelayLimits};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Duration;

/// A running relay and what it was told last.
pub struct RelayService {
    /// The forwarder.
    pub relay: Relay,
    /// The "host:port" published for clients, if any.
    pub endpoint: Option<String>,
    /// Whether it relays now (`nx1 contribute on|off`); the node's record follows it.
    pub on: Arc<AtomicBool>,
    section: RelaySection,
    exits: parking_lot::Mutex<Vec<Exit>>,
}

/// How long resolving one exit's endpoint name may take.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);

impl RelayService {
    /// Binds the relay port and starts forwarding (to no exit until the directory names some).
    pub fn start(
        section: &RelaySection,
        on: Arc<AtomicBool>,
        cap_mbit: u32,
    ) -> anyhow::Result<RelayService> {
        let relay = Relay::start(section.listen_port, limits(section, cap_mbit)).map_err(|e| {
            anyhow::anyhow!("binding the relay on UDP {}: {e}", section.listen_port)
        })?;
        relay.set_enabled(on.load(Relaxed));
        Ok(RelayService {
            relay,
            endpoint: (!section.endpoint.is_empty()).then(|| section.endpoint.clone()),
            on,
            section: section.clone(),
            exits: parking_lot::Mutex::new(Vec::new()),
        })
    }

    /// Starts or stops relaying at once (stopping drops every session).
    pub fn set_on(&self, on: bool) {
        self.on.store(on, Relaxed);
        self.relay.set_enabled(on);
    }

    /// Holds relayed traffic to `cap_mbit` (0: only `[relay] bandwidth_mbit`).
    pub fn set_cap(&self, cap_mbit: u32) {
        self.relay.set_limits(limits(&self.section, cap_mbit));
    }

    /// Points the relay at the live exits of `dir` (this node included, if it is one).
    pub async fn follow(&self, dir: &Directory) {
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
            for endpoint in &r.endpoints {
                if let Some(addr) = resolve(endpoint).await {
                    exits.push(Exit {
                        public_key: key,
                        addr,
                    });
                    break;
                }
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

/// An endpoint as an address: literal, or looked up (bounded in time).
async fn resolve(endpoint: &str) -> Option<SocketAddr> {
    if let Ok(addr) = endpoint.parse() {
        return Some(addr);
    }
    tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host(endpoint))
        .await
        .ok()?
        .ok()?
        .next()
}
