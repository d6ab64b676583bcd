//! Mesh egress: node-to-node WireGuard links on the node's own interface, so a node that
//! holds clients' tunnels can send their traffic out through another node's exit, and move it
//! to another exit within a fraction of a second when that one dies or loses its uplink.
//!
//! Every node has a transit address per family, taken from its WireGuard public key
//! ([`transit_v4`], [`transit_v6`]), so any node can compute any other's. An exit in a mesh
//! ([`MeshExit`]) takes every member of the directory as a mesh peer whose allowed IPs are
//! its transit addresses, masquerades the transit networks like its own pool, and answers
//! egress probes on its transit address while its uplink has a route. A node with
//! `[mesh] egress` ([`Egress`]) keeps a link to each of a few candidate exits (their
//! sessions kept warm by the probes), routes its clients' traffic into its interface by a
//! policy rule, SNATs it to its transit address, and points the device's default route at
//! the exit in use. It probes every candidate through its tunnel; when the one in use has
//! not answered for `egress_timeout_ms`, the default route moves to the next healthy one —
//! one table write, no handshake, since that link is already up. A standard client notices a
//! pause, and new connections leave from another exit's address.

use crate::client::ip;
use crate::mesh::{Directory, Role};
use anyhow::Context as _;
use nx1_vpn::IpNetwork;
use nx1_vpn::device::Device;
use nx1_vpn::exit::ExitNat;
use nx1_vpn::keys::PublicKey;
use nx1_vpn::peer::PeerConfig;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Transit addresses are in 100.64.0.0/10 (shared address space, RFC 6598).
pub const TRANSIT_V4: &str = "100.64.0.0/10";
/// And in this unique-local /64.
pub const TRANSIT_V6: &str = "fd87:7e::/64";
/// UDP port exits answer egress probes on, at their transit IPv4 address.
pub const PROBE_PORT: u16 = 7872;
/// What every probe starts with.
pub const PROBE_MAGIC: &[u8; 8] = b"nx1probe";
/// The routing table and rule priority that send clients' traffic into the interface.
const TABLE: &str = "51871";
const RULE_PRIORITY: &str = "5187";
/// Exits a node keeps links to at once.
pub const CANDIDATES: usize = 4;

/// A node's transit IPv4 address: 100.64.0.0/10 plus 22 bits of its WireGuard key.
pub fn transit_v4(key: &PublicKey) -> Ipv4Addr {
    let bits = u32::from_be_bytes([key.0[0], key.0[1], key.0[2], key.0[3]]) & 0x003f_ffff;
    // Neither the network's first nor its last address.
    let bits = if bits == 0 || bits == 0x003f_ffff {
        1
    } else {
        bits
    };
    Ipv4Addr::from(0x6440_0000 | bits)
}

/// A node's transit IPv6 address: fd87:7e::/64 plus 64 bits of its WireGuard key.
pub fn transit_v6(key: &PublicKey) -> Ipv6Addr {
    let mut o = [0u8; 16];
    o[..4].copy_from_slice(&[0xfd, 0x87, 0x00, 0x7e]);
    o[8..].copy_from_slice(&key.0[..8]);
    Ipv6Addr::from(o)
}

fn transit_nets(key: &PublicKey) -> Vec<IpNetwork> {
    vec![
        IpNetwork::new(transit_v4(key), 32).expect("a /32"),
        IpNetwork::new(transit_v6(key), 128).expect("a /128"),
    ]
}

/// The transit networks, to masquerade at exits.
pub fn transit_networks() -> Vec<IpNetwork> {
    vec![
        TRANSIT_V4.parse().expect("v4 transit"),
        TRANSIT_V6.parse().expect("v6 transit"),
    ]
}

/// Gives the interface this node's transit addresses and routes the transit networks into it.
fn add_transit(interface: &str, key: &PublicKey) -> anyhow::Result<()> {
    let v4 = format!("{}/32", transit_v4(key));
    let v6 = format!("{}/128", transit_v6(key));
    ip(&["addr", "replace", &v4, "dev", interface])?;
    ip(&["-6", "addr", "replace", &v6, "dev", interface, "nodad"])?;
    ip(&["route", "replace", TRANSIT_V4, "dev", interface])?;
    ip(&["-6", "route", "replace", TRANSIT_V6, "dev", interface])?;
    Ok(())
}

/// Whether the kernel has a route to `addr` (a UDP connect looks the route up and sends
/// nothing).
fn has_route(addr: IpAddr) -> bool {
    let bind: SocketAddr = match addr {
        IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    std::net::UdpSocket::bind(bind).is_ok_and(|s| s.connect((addr, 9)).is_ok())
}

/// The exit side: every member is a mesh peer, probes are answered while the uplink works.
pub struct MeshExit {
    device: Arc<Device>,
    own: PublicKey,
    peers: Mutex<BTreeSet<PublicKey>>,
    /// Whether the uplink had a route at the last look.
    pub uplink: Arc<AtomicBool>,
    /// Probes answered.
    pub probes_answered: Arc<AtomicU64>,
}

impl MeshExit {
    /// Adds the transit addresses and starts answering probes.
    pub async fn start(
        interface: &str,
        device: Arc<Device>,
        uplink_check: Option<IpAddr>,
        mut stop: watch::Receiver<bool>,
    ) -> anyhow::Result<Arc<MeshExit>> {
        let own = device.public_key();
        add_transit(interface, &own)?;
        let socket = tokio::net::UdpSocket::bind((transit_v4(&own), PROBE_PORT))
            .await
            .context("binding the egress probe responder")?;
        let exit = Arc::new(MeshExit {
            device,
            own,
            peers: Mutex::new(BTreeSet::new()),
            uplink: Arc::new(AtomicBool::new(uplink_check.is_none_or(has_route))),
            probes_answered: Arc::new(AtomicU64::new(0)),
        });
        let (uplink, answered) = (exit.uplink.clone(), exit.probes_answered.clone());
        tokio::spawn(async move {
            let transit: IpNetwork = TRANSIT_V4.parse().expect("v4 transit");
            let mut check = tokio::time::interval(Duration::from_millis(250));
            let mut buf = [0u8; 64];
            loop {
                tokio::select! {
                    () = crate::daemon::stopped(&mut stop) => return,
                    _ = check.tick() => {
                        if let Some(addr) = uplink_check {
                            let ok = tokio::task::spawn_blocking(move || has_route(addr)).await.unwrap_or(false);
                            if uplink.swap(ok, Relaxed) != ok {
                                tracing::warn!(uplink = ok, check = %addr, "uplink changed; egress probes are {}", if ok { "answered" } else { "ignored" });
                            }
                        }
                    }
                    got = socket.recv_from(&mut buf) => {
                        let Ok((n, from)) = got else { continue };
                        if n == 16 && buf.starts_with(PROBE_MAGIC) && transit.contains(from.ip()) && uplink.load(Relaxed) {
                            answered.fetch_add(1, Relaxed);
                            let _ = socket.send_to(&buf[..n], from).await;
                        }
                    }
                }
            }
        });
        Ok(exit)
    }

    /// Takes every member of `dir` with a WireGuard key (this node aside) as a mesh peer.
    pub fn follow(&self, dir: &Directory) {
        let want: BTreeSet<PublicKey> = dir
            .members
            .values()
            .filter_map(|m| m.record.wireguard_key.as_deref())
            .filter_map(|k| PublicKey::from_base64(k).ok())
            .filter(|k| *k != self.own)
            .collect();
        // Relays' addresses (where they publish their relay and where they gossip from) are
        // exempt from the per-source handshake limit.
        let relays: Vec<IpAddr> = dir
            .members
            .values()
            .filter(|m| m.record.roles.contains(&Role::Relay))
            .flat_map(|m| {
                let published = m
                    .record
                    .relay
                    .as_deref()
                    .and_then(|e| e.parse::<SocketAddr>().ok())
                    .map(|a| a.ip());
                published.into_iter().chain([m.gossip.ip()])
            })
            .collect();
        self.device.set_relays(relays);
        let mut peers = self.peers.lock();
        peers.retain(|key| {
            let keep = want.contains(key);
            if !keep {
                self.device.remove_peer(key);
            }
            keep
        });
        for key in want {
            // A client of this node with the same key stays a client.
            if peers.contains(&key) || self.device.peer(&key).is_some() {
                continue;
            }
            let config = PeerConfig {
                public_key: key,
                allowed_ips: transit_nets(&key),
                endpoint: None,
                persistent_keepalive: None,
                preshared_key: None,
            };
            match self.device.upsert_mesh_peer(config) {
                Ok(()) => {
                    peers.insert(key);
                }
                Err(e) => tracing::warn!(peer = %key, error = %e, "cannot add a mesh peer"),
            }
        }
    }

    /// What `nx1 status` shows.
    pub fn status(&self) -> MeshExitStatus {
        MeshExitStatus {
            mesh_peers: self.peers.lock().len(),
            uplink: self.uplink.load(Relaxed),
            probes_answered: self.probes_answered.load(Relaxed),
        }
    }
}

/// An exit's side of mesh egress, as `nx1 status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MeshExitStatus {
    /// Members linked as mesh peers.
    pub mesh_peers: usize,
    /// Whether the uplink had a route at the last look.
    pub uplink: bool,
    /// Egress probes answered.
    pub probes_answered: u64,
}

/// One exit the node keeps a link to.
struct Candidate {
    id: String,
    key: PublicKey,
    endpoint: SocketAddr,
    region: String,
    last_reply: Option<Instant>,
    rtt: Option<Duration>,
}

struct EgressState {
    candidates: Vec<Candidate>,
    active: Option<PublicKey>,
    /// Probe sequence numbers and when they left, by slot.
    sent: [(u64, Option<Instant>); 64],
    seq: u64,
}

/// An exit as `nx1 status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EgressExit {
    /// Node id.
    pub id: String,
    /// Its region.
    pub region: String,
    /// Where its WireGuard listens.
    pub endpoint: String,
    /// Whether it answered within the timeout.
    pub healthy: bool,
    /// Round trip of its last answer, in ms.
    pub rtt_ms: Option<f64>,
}

/// Egress through the mesh, as `nx1 status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EgressStatus {
    /// The exit in use.
    pub active: Option<String>,
    /// Candidate exits, in order of preference.
    pub exits: Vec<EgressExit>,
    /// Times the exit in use changed.
    pub switches: u64,
}

/// A node whose clients leave through the mesh's exits.
pub struct Egress {
    device: Arc<Device>,
    own: PublicKey,
    region: String,
    timeout: Duration,
    state: Mutex<EgressState>,
    /// Times the exit in use changed.
    pub switches: AtomicU64,
    nat: Mutex<Option<ExitNat>>,
    interface: String,
}

impl Egress {
    /// Sets up the transit addresses, the policy routing and the SNAT, and starts probing.
    pub async fn start(
        interface: &str,
        device: Arc<Device>,
        pools: &[IpNetwork],
        settings: &crate::mesh::MeshSettings,
        mut stop: watch::Receiver<bool>,
    ) -> anyhow::Result<Arc<Egress>> {
        let own = device.public_key();
        add_transit(interface, &own)?;
        // Clients' traffic (from the pools) goes into the interface whatever the main table
        // says; the node's own traffic keeps the main table.
        for (family, pool) in pools.iter().map(|p| {
            (
                if matches!(p, IpNetwork::V4(_)) {
                    "-4"
                } else {
                    "-6"
                },
                p.to_string(),
            )
        }) {
            while ip(&[family, "rule", "del", "priority", RULE_PRIORITY]).is_ok() {}
            ip(&[
                family,
                "rule",
                "add",
                "from",
                &pool,
                "lookup",
                TABLE,
                "priority",
                RULE_PRIORITY,
            ])?;
            ip(&[
                family, "route", "replace", "default", "dev", interface, "table", TABLE,
            ])?;
        }
        let snat = [IpAddr::V4(transit_v4(&own)), IpAddr::V6(transit_v6(&own))];
        let nat = ExitNat::install_egress(interface, pools, &snat)?;
        let socket = tokio::net::UdpSocket::bind((transit_v4(&own), 0))
            .await
            .context("binding the egress prober")?;
        let egress = Arc::new(Egress {
            device,
            own,
            region: settings.region.clone(),
            timeout: settings.egress_timeout,
            state: Mutex::new(EgressState {
                candidates: Vec::new(),
                active: None,
                sent: [(0, None); 64],
                seq: 0,
            }),
            switches: AtomicU64::new(0),
            nat: Mutex::new(Some(nat)),
            interface: interface.to_owned(),
        });
        let (prober, interval) = (egress.clone(), settings.egress_probe);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(interval);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut buf = [0u8; 64];
            loop {
                tokio::select! {
                    () = crate::daemon::stopped(&mut stop) => return,
                    _ = every.tick() => {
                        for (to, probe) in prober.probes() {
                            let _ = socket.send_to(&probe, to).await;
                        }
                        prober.choose(Instant::now());
                    }
                    got = socket.recv_from(&mut buf) => {
                        if let Ok((n, from)) = got {
                            prober.answer(from, &buf[..n], Instant::now());
                        }
                    }
                }
            }
        });
        Ok(egress)
    }

    /// A probe for each candidate, to its transit address.
    fn probes(&self) -> Vec<(SocketAddr, [u8; 16])> {
        let mut state = self.state.lock();
        let now = Instant::now();
        let targets: Vec<SocketAddr> = state
            .candidates
            .iter()
            .map(|c| SocketAddr::from((transit_v4(&c.key), PROBE_PORT)))
            .collect();
        targets
            .into_iter()
            .map(|to| {
                state.seq += 1;
                let seq = state.seq;
                state.sent[(seq % 64) as usize] = (seq, Some(now));
                let mut probe = [0u8; 16];
                probe[..8].copy_from_slice(PROBE_MAGIC);
                probe[8..].copy_from_slice(&seq.to_be_bytes());
                (to, probe)
            })
            .collect()
    }

    fn answer(&self, from: SocketAddr, reply: &[u8], now: Instant) {
        if reply.len() != 16 || !reply.starts_with(PROBE_MAGIC) {
            return;
        }
        let seq = u64::from_be_bytes(reply[8..16].try_into().expect("8 bytes"));
        let mut state = self.state.lock();
        let sent = match state.sent[(seq % 64) as usize] {
            (s, Some(at)) if s == seq => Some(at),
            _ => None,
        };
        if let Some(c) = state
            .candidates
            .iter_mut()
            .find(|c| IpAddr::V4(transit_v4(&c.key)) == from.ip())
        {
            c.last_reply = Some(now);
            c.rtt = sent.map(|at| now.saturating_duration_since(at));
        }
    }

    fn healthy(&self, c: &Candidate, now: Instant) -> bool {
        c.last_reply
            .is_some_and(|t| now.saturating_duration_since(t) < self.timeout)
    }

    /// Keeps the exit in use while it answers; otherwise moves to the first healthy one.
    fn choose(&self, now: Instant) {
        let mut state = self.state.lock();
        let current_ok = state.active.is_some_and(|a| {
            state
                .candidates
                .iter()
                .any(|c| c.key == a && self.healthy(c, now))
        });
        if current_ok {
            return;
        }
        let next = state
            .candidates
            .iter()
            .find(|c| self.healthy(c, now))
            .map(|c| (c.key, c.id.clone()));
        if let Some((key, id)) = next
            && self.device.set_default_route(Some(&key))
        {
            let from = state.active.replace(key);
            self.switches.fetch_add(1, Relaxed);
            tracing::warn!(exit = %id, from = ?from.map(|k| k.to_base64()), "clients now leave through another exit");
        }
    }

    /// Follows the directory: the best few live exits become candidates (same region first,
    /// then the least loaded), each with a link of its own.
    pub fn follow(&self, dir: &Directory) {
        let mut found = Vec::new();
        for m in dir.members.values() {
            let r = &m.record;
            if m.state != "live" || !r.roles.contains(&Role::Exit) {
                continue;
            }
            let Some(key) = r
                .wireguard_key
                .as_deref()
                .and_then(|k| PublicKey::from_base64(k).ok())
                .filter(|k| *k != self.own)
            else {
                continue;
            };
            let Some(endpoint) = r
                .endpoints
                .iter()
                .find_map(|e| e.parse::<SocketAddr>().ok())
            else {
                continue;
            };
            found.push((
                r.region != self.region,
                r.load.active_peers,
                r.id.clone(),
                key,
                endpoint,
                r.region.clone(),
            ));
        }
        found.sort();
        let mut state = self.state.lock();
        // The exit in use stays a candidate while it is live, whatever its rank.
        let active = state.active;
        let mut chosen: Vec<_> = found.iter().take(CANDIDATES).cloned().collect();
        if let Some(a) = active
            && !chosen.iter().any(|f| f.3 == a)
            && let Some(f) = found.iter().find(|f| f.3 == a)
        {
            chosen.push(f.clone());
        }
        let mut next = Vec::new();
        for (_, _, id, key, endpoint, region) in chosen {
            let old = state
                .candidates
                .iter()
                .position(|c| c.key == key)
                .map(|i| state.candidates.remove(i));
            let link_ok = old.as_ref().is_some_and(|c| c.endpoint == endpoint);
            if !link_ok {
                let config = PeerConfig {
                    public_key: key,
                    allowed_ips: transit_nets(&key),
                    endpoint: Some(endpoint),
                    persistent_keepalive: Some(25),
                    preshared_key: None,
                };
                if let Err(e) = self.device.upsert_mesh_peer(config) {
                    tracing::warn!(exit = %id, error = %e, "cannot link to an exit");
                    continue;
                }
                if active == Some(key) {
                    self.device.set_default_route(Some(&key));
                }
            }
            next.push(Candidate {
                id,
                key,
                endpoint,
                region,
                last_reply: old.as_ref().and_then(|c| c.last_reply),
                rtt: old.and_then(|c| c.rtt),
            });
        }
        let gone = std::mem::replace(&mut state.candidates, next);
        for c in gone {
            self.device.remove_peer(&c.key);
            if active == Some(c.key) {
                state.active = None;
            }
        }
        drop(state);
        self.choose(Instant::now());
    }

    /// What `nx1 status` shows.
    pub fn status(&self) -> EgressStatus {
        let state = self.state.lock();
        let now = Instant::now();
        EgressStatus {
            active: state.active.and_then(|a| {
                state
                    .candidates
                    .iter()
                    .find(|c| c.key == a)
                    .map(|c| c.id.clone())
            }),
            exits: state
                .candidates
                .iter()
                .map(|c| EgressExit {
                    id: c.id.clone(),
                    region: c.region.clone(),
                    endpoint: c.endpoint.to_string(),
                    healthy: self.healthy(c, now),
                    rtt_ms: c.rtt.map(|d| d.as_secs_f64() * 1000.0),
                })
                .collect(),
            switches: self.switches.load(Relaxed),
        }
    }

    /// Removes the policy routing and the SNAT table.
    pub fn stop(&self) {
        for family in ["-4", "-6"] {
            while ip(&[family, "rule", "del", "priority", RULE_PRIORITY]).is_ok() {}
            let _ = ip(&[family, "route", "flush", "table", TABLE]);
        }
        if let Some(nat) = self.nat.lock().take() {
            nat.remove();
        }
        tracing::debug!(interface = %self.interface, "egress routing removed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transit_addresses_come_from_the_key_and_stay_in_their_networks() {
        let v4net: IpNetwork = TRANSIT_V4.parse().unwrap();
        let v6net: IpNetwork = TRANSIT_V6.parse().unwrap();
        for seed in [[0u8; 32], [0xff; 32], [7; 32]] {
            let key = PublicKey(seed);
            assert!(v4net.contains(IpAddr::V4(transit_v4(&key))));
            assert!(v6net.contains(IpAddr::V6(transit_v6(&key))));
        }
        assert_eq!(
            transit_v4(&PublicKey([0; 32])),
            Ipv4Addr::new(100, 64, 0, 1)
        );
        assert_eq!(
            transit_v4(&PublicKey([0xff; 32])),
            Ipv4Addr::new(100, 64, 0, 1)
        );
        let mut k = [0u8; 32];
        k[..4].copy_from_slice(&[0x12, 0x34, 0x56, 0x78]);
        assert_eq!(transit_v4(&PublicKey(k)), Ipv4Addr::new(100, 116, 86, 120));
        assert_eq!(
            transit_v6(&PublicKey(k)),
            "fd87:7e::1234:5678:0:0".parse::<Ipv6Addr>().unwrap()
        );
    }
}
