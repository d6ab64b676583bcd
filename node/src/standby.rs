//! Standing by for the mesh's clients: every node with a WireGuard interface takes the
//! clients other nodes registered (their signed registrations come by gossip) as live peers
//! with the same tunnel addresses, so a client in `nx1 connect` mode whose node dies can move
//! here and keep its addresses. When such a client has moved here and its node is gone, this
//! node registers it as its own (and shares that), so it stays when the gossip forgets the
//! dead node. It also answers the clients' probes on its tunnel address.

use crate::mesh::{ClientRegistration, Directory, Mesh};
use crate::peers::{self, PeerRecord};
use crate::store::Store;
use crate::vpn::VpnService;
use nx1_vpn::IpNetwork;
use nx1_vpn::keys::PublicKey;
use nx1_vpn::peer::PeerConfig;
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use tokio::sync::watch;

/// Clients this node stands by for.
pub struct Standby {
    own: String,
    adopted: Mutex<BTreeMap<PublicKey, ClientRegistration>>,
}

impl Standby {
    /// Starts answering clients' probes on the node's tunnel IPv4 address.
    pub async fn start(
        own: String,
        vpn: &VpnService,
        mut stop: watch::Receiver<bool>,
    ) -> anyhow::Result<Arc<Standby>> {
        let pool = crate::vpn::pools(&vpn.config)[0];
        let socket =
            tokio::net::UdpSocket::bind((vpn.config.v4.0, crate::egress::PROBE_PORT)).await?;
        tokio::spawn(async move {
            let mut buf = [0u8; 64];
            loop {
                tokio::select! {
                    () = crate::daemon::stopped(&mut stop) => return,
                    got = socket.recv_from(&mut buf) => {
                        if let Ok((16, from)) = got
                            && buf.starts_with(crate::egress::PROBE_MAGIC)
                            && pool.contains(from.ip())
                        {
                            let _ = socket.send_to(&buf[..16], from).await;
                        }
                    }
                }
            }
        });
        Ok(Arc::new(Standby {
            own,
            adopted: Mutex::new(BTreeMap::new()),
        }))
    }

    /// Follows the mesh's registrations: adopts new ones, drops withdrawn ones, and takes
    /// over the clients that moved here from a dead node.
    pub async fn follow(
        &self,
        mesh: &Mesh,
        dir: &Directory,
        vpn: &VpnService,
        store: &Store,
    ) -> anyhow::Result<()> {
        let local = peers::list(store).await?;
        let local_keys: HashSet<&str> = local.iter().map(|p| p.public_key.as_str()).collect();
        // Addresses taken: this node's own, its clients'.
        let mut taken: HashSet<IpAddr> = local
            .iter()
            .flat_map(|p| [IpAddr::V4(p.ipv4), IpAddr::V6(p.ipv6)])
            .collect();
        taken.insert(IpAddr::V4(vpn.config.v4.0));
        taken.insert(IpAddr::V6(vpn.config.v6.0));
        let pools = crate::vpn::pools(&vpn.config);
        // Keys that are not clients to stand by for: members' own WireGuard keys (their mesh
        // links live under them) and every peer of this device that standby did not add.
        let members: HashSet<String> = dir
            .members
            .values()
            .filter_map(|m| m.record.wireguard_key.clone())
            .collect();
        let adopted_now: HashSet<PublicKey> = self.adopted.lock().keys().copied().collect();
        let mut registrations = mesh.clients().await;
        // Live nodes' registrations first: after a take-over, two nodes share a client.
        registrations.sort_by_key(|(_, live)| !live);
        let mut want: BTreeMap<PublicKey, (ClientRegistration, bool)> = BTreeMap::new();
        for (r, node_live) in registrations {
            if r.node == self.own
                || local_keys.contains(r.public_key.as_str())
                || members.contains(&r.public_key)
            {
                continue;
            }
            let Ok(key) = PublicKey::from_base64(&r.public_key) else {
                continue;
            };
            if want.contains_key(&key)
                || key == vpn.device.public_key()
                || (vpn.device.peer(&key).is_some() && !adopted_now.contains(&key))
            {
                continue;
            }
            let addrs = [IpAddr::V4(r.ipv4), IpAddr::V6(r.ipv6)];
            // Only addresses this node can route and nobody here has, each given once.
            if !addrs
                .iter()
                .all(|a| pools.iter().any(|p| p.contains(*a)) && !taken.contains(a))
            {
                continue;
            }
            taken.extend(addrs);
            want.insert(key, (r, node_live));
        }
        let mut takeovers = Vec::new();
        {
            let mut adopted = self.adopted.lock();
            adopted.retain(|key, _| {
                let keep = want.contains_key(key);
                // One that became this node's own client stays in the device.
                if !keep && !local_keys.contains(key.to_base64().as_str()) {
                    vpn.device.remove_peer(key);
                }
                keep
            });
            for (key, (r, node_live)) in &want {
                if !adopted.contains_key(key) {
                    let config = PeerConfig {
                        public_key: *key,
                        allowed_ips: vec![
                            IpNetwork::new(r.ipv4, 32).expect("a /32"),
                            IpNetwork::new(r.ipv6, 128).expect("a /128"),
                        ],
                        endpoint: None,
                        persistent_keepalive: None,
                        preshared_key: None,
                    };
                    if let Err(e) = vpn.device.upsert_peer(config) {
                        tracing::warn!(client = %key, error = %e, "cannot stand by for a client");
                        continue;
                    }
                    adopted.insert(*key, r.clone());
                }
                let in_use = vpn.device.peer(key).is_some_and(|s| s.is_active());
                if !node_live && in_use {
                    takeovers.push(r.clone());
                }
            }
        }
        for r in takeovers {
            let record = PeerRecord {
                name: r.name.clone(),
                public_key: r.public_key.clone(),
                ipv4: r.ipv4,
                ipv6: r.ipv6,
                created_at: crate::now_unix(),
            };
            // One bad registration must not hold up the others.
            let record = match peers::insert(store, &record).await {
                Ok(record) => record,
                Err(e) => {
                    tracing::warn!(client = %r.public_key, error = %e, "cannot take a client over");
                    continue;
                }
            };
            mesh.publish_client(&record.public_key, &record.name, record.ipv4, record.ipv6)
                .await;
            if let Ok(key) = PublicKey::from_base64(&record.public_key) {
                self.adopted.lock().remove(&key);
            }
            tracing::warn!(client = %record.name, from = %r.node, ipv4 = %record.ipv4, "took over a client whose node is gone");
        }
        Ok(())
    }

    /// Clients stood by for.
    pub fn adopted(&self) -> usize {
        self.adopted.lock().len()
    }
}
