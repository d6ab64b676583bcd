//! `nx1 up`: the daemon. Opens the store, serves the control socket and the HTTP API, and on
//! SIGINT/SIGTERM stops serving and removes what it set up.

use crate::config::Resolved;
use crate::control::{
    self, PeerAdded, PeerInfo, Request, Response, StatusReport, StoreStatus, VpnStatus,
};
use crate::identity::{NodeIdentity, load_wireguard_key};
use crate::metrics::{CommandLabel, Metrics};
use crate::peers;
use crate::store::Store;
use crate::vpn::VpnService;
use anyhow::Context as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};
use tokio::io::BufReader;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;

/// The running node: what every handler can reach.
pub struct Node {
    /// The validated configuration.
    pub config: Resolved,
    /// Base64 ed25519 public key.
    pub node_id: String,
    /// Base64 WireGuard public key.
    pub wireguard_public_key: String,
    /// The database.
    pub store: Store,
    /// Metrics for `/metrics`.
    pub metrics: Metrics,
    /// When the daemon started.
    pub started: Instant,
    /// Where the HTTP API actually listens (port 0 resolved).
    pub http_listen: SocketAddr,
    /// The WireGuard service, when enabled.
    pub vpn: Option<Arc<VpnService>>,
    /// The client-mode tunnel, when connected.
    pub client: tokio::sync::Mutex<Option<crate::client::ClientTunnel>>,
    /// Guard's DNS filter, when enabled.
    pub guard: Option<Arc<crate::guard::GuardService>>,
    /// Guard in the packet path, when enabled.
    pub flows: Option<Arc<crate::guard::FlowGuard>>,
    /// The vault's server side, when enabled.
    pub vault: Option<Arc<crate::vault::VaultService>>,
    /// Mesh membership and the directory, when enabled.
    pub mesh: Option<Arc<crate::mesh::Mesh>>,
    /// Relay duty, when on.
    pub relay: Option<Arc<crate::relay::RelayService>>,
    /// An exit's side of mesh egress (mesh peers, probe answers), when both are on.
    pub mesh_exit: Option<Arc<crate::egress::MeshExit>>,
    /// Egress through the mesh's exits, when on.
    pub egress: Option<Arc<crate::egress::Egress>>,
    /// Standing by for other nodes' clients, when in a mesh with WireGuard.
    pub standby: Option<Arc<crate::standby::Standby>>,
    /// Usage receipts taken from clients.
    pub receipts: Arc<crate::credits::ReceiptCounters>,
    /// The credit ledger (this node's replicas of accounts, and reaching the others).
    pub ledger: Arc<crate::ledger::Ledger>,
    /// The node's identity, which in client mode is also the account that signs receipts.
    pub account: zeroize::Zeroizing<[u8; 32]>,
    /// Serialises peer changes, so the store and the live device never disagree.
    pub peer_changes: tokio::sync::Mutex<()>,
}

impl Node {
    /// Carries out one control request.
    pub async fn handle(&self, request: Request) -> Response {
        self.metrics
            .control_requests
            .get_or_create(&CommandLabel {
                command: request.name(),
            })
            .inc();
        let result = match request {
            Request::Status => self.status().await.map(|r| Response::Status(Box::new(r))),
            Request::PeerAdd {
                name,
                public_key,
                endpoint,
                via,
            } => self.peer_add(&name, &public_key, endpoint, via).await,
            Request::PeerList => self.peer_list().await,
            Request::PeerRemove { name } => self.peer_remove(&name).await,
            Request::Connect {
                config,
                interface,
                dns_protection,
                kill_switch,
                two_hop,
            } => {
                let config = zeroize::Zeroizing::new(config);
                let protect = (dns_protection || kill_switch).then_some(kill_switch);
                self.connect(&config, &interface, protect, two_hop.as_deref())
                    .await
            }
            Request::Disconnect => self.disconnect().await,
            Request::GuardCheck { domain, peer } => {
                self.guard_check(&domain, peer.as_deref()).await
            }
            Request::GuardFindings { peer } => self.guard_findings(peer.as_deref()).await,
            Request::GuardReload => self.guard_reload().await,
            Request::Latency => self.latency().await,
            Request::GuardAllowAtNode { domain } => match self.client.lock().await.as_ref() {
                Some(tunnel) => tunnel
                    .allow_at_node(&domain)
                    .await
                    .map(|domain| Response::AllowedAtNode { domain }),
                None => Err(anyhow::anyhow!("not connected")),
            },
            Request::Credits => self.credits().await,
            Request::CreditsHistory { account } => {
                let account = account.unwrap_or_else(|| self.ledger.owner.clone());
                self.ledger
                    .account(&account)
                    .await
                    .map(Response::CreditsHistory)
                    .map_err(Into::into)
            }
            Request::CreditsGrant {
                account,
                amount,
                memo,
            } => self.credits_grant(account, amount, memo).await,
            Request::CreditsDevice { device, active } => self.credits_device(device, active).await,
            Request::Contribute {
                relay,
                bandwidth_mbit,
            } => self.contribute(relay, bandwidth_mbit).await,
            Request::GuardCategory {
                category,
                peer,
                enabled,
            } => self.guard_category(&category, &peer, enabled).await,
            Request::GuardRule {
                domain,
                action,
                peer,
            } => self.guard_rule(&domain, action, peer.as_deref()).await,
        };
        result.unwrap_or_else(|e| Response::Error {
            message: format!("{e:#}"),
        })
    }

    fn vpn(&self) -> anyhow::Result<&Arc<VpnService>> {
        self.vpn.as_ref().ok_or_else(|| {
            anyhow::anyhow!("this node runs no WireGuard interface ([vpn] enabled = false)")
        })
    }

    async fn peer_add(
        &self,
        name: &str,
        public_key: &str,
        endpoint: Option<String>,
        via: Option<String>,
    ) -> anyhow::Result<Response> {
        let vpn = self.vpn()?;
        let key = nx1_vpn::keys::PublicKey::from_base64(public_key)
            .map_err(|e| anyhow::anyhow!("public key: {e}"))?;
        if key == vpn.device.public_key() {
            anyhow::bail!("that is this node's own public key");
        }
        let relayed = via.is_some();
        let mut relay_id = None;
        let endpoint = match via {
            Some(_) if endpoint.is_some() => {
                anyhow::bail!("give either a relay (--via) or an endpoint, not both")
            }
            Some(via) => {
                let (endpoint, id) = self.relay_endpoint(&via).await?;
                relay_id = id;
                Some(endpoint)
            }
            None => endpoint,
        };
        let endpoint = match endpoint.or_else(|| vpn.config.endpoint.clone()) {
            Some(e) if crate::config::valid_endpoint(&e) => e,
            Some(e) => anyhow::bail!("endpoint must be host:port, not {e:?}"),
            None => anyhow::bail!(
                "no endpoint for the client config: set [vpn] endpoint in {} or pass --endpoint HOST:PORT",
                self.config.path.display()
            ),
        };
        let _changing = self.peer_changes.lock().await;
        // In a mesh, addresses are unique across the nodes that may take each other's
        // clients, so a client keeps its addresses wherever it moves.
        let taken: std::collections::HashSet<std::net::IpAddr> = match &self.mesh {
            Some(m) => m
                .clients()
                .await
                .into_iter()
                .filter(|(r, _)| r.node != self.node_id)
                .flat_map(|(r, _)| [r.ipv4.into(), r.ipv6.into()])
                .collect(),
            None => Default::default(),
        };
        let record = peers::add_avoiding(
            &self.store,
            name,
            &key.to_base64(),
            vpn.config.v4,
            vpn.config.v6,
            &taken,
        )
        .await?;
        if let Err(e) = vpn.add_live(&record) {
            // Not live, so not registered either.
            let _ = peers::remove(&self.store, &record.name).await;
            return Err(e);
        }
        tracing::info!(peer = %record.name, ipv4 = %record.ipv4, "peer added");
        // Other nodes of the mesh stand by for it; its config names them.
        let mut fallbacks = Vec::new();
        if let Some(mesh) = &self.mesh
            && !relayed
        {
            mesh.publish_client(&record.public_key, &record.name, record.ipv4, record.ipv6)
                .await;
            for m in mesh.directory().await.members.values() {
                let r = &m.record;
                if r.id == self.node_id || m.state != "live" {
                    continue;
                }
                if let (Some(k), Some(e)) = (&r.wireguard_key, r.endpoints.first()) {
                    fallbacks.push((k.clone(), e.clone(), r.id.clone()));
                }
            }
            fallbacks.truncate(8);
        }
        Ok(Response::PeerAdded(PeerAdded {
            name: record.name,
            ipv4: record.ipv4,
            ipv6: record.ipv6,
            server_public_key: vpn.device.public_key().to_base64(),
            endpoint,
            dns: if vpn.config.dns.is_empty() && self.guard.is_some() {
                vec![vpn.config.v4.0.into(), vpn.config.v6.0.into()]
            } else {
                vpn.config.dns.clone()
            },
            // Behind a relay the client must keep its sessions itself: the relay cannot
            // deliver a handshake the exit starts.
            persistent_keepalive: match vpn.config.persistent_keepalive {
                None if relayed => Some(25),
                k => k,
            },
            probe: (!fallbacks.is_empty())
                .then(|| format!("{}:{}", vpn.config.v4.0, crate::egress::PROBE_PORT)),
            fallbacks,
            node_id: self.node_id.clone(),
            relay_id,
            receipts: Some(format!(
                "{}:{}",
                vpn.config.v4.0,
                crate::credits::RECEIPT_PORT
            )),
        }))
    }

    /// The endpoint of a relay for this exit's clients, and its node id: a relay from the
    /// directory, by node id (or an unambiguous start of one), or a "host:port" given as is.
    async fn relay_endpoint(&self, via: &str) -> anyhow::Result<(String, Option<String>)> {
        if !self.config.vpn.as_ref().is_some_and(|v| v.exit) {
            anyhow::bail!("this node is not an exit: relays forward only to exits");
        }
        let Some(mesh) = &self.mesh else {
            anyhow::bail!(
                "this node is not in a mesh ([mesh] enabled = false): relays learn their exits from the directory"
            );
        };
        let dir = mesh.directory().await;
        let matches: Vec<_> = dir
            .members
            .iter()
            .filter(|(id, _)| *id == via || (via.len() >= 4 && id.starts_with(via)))
            .collect();
        match matches.as_slice() {
            [(id, m)] => {
                if !m.record.roles.contains(&crate::mesh::Role::Relay) {
                    anyhow::bail!("node {id} does not relay");
                }
                if m.state != "live" {
                    anyhow::bail!("relay {id} is {}", m.state);
                }
                let endpoint = m
                    .record
                    .relay
                    .clone()
                    .ok_or_else(|| anyhow::anyhow!("relay {id} publishes no endpoint"))?;
                Ok((endpoint, Some((*id).clone())))
            }
            [] if crate::config::valid_endpoint(via) => Ok((via.to_owned(), None)),
            [] => anyhow::bail!("no relay {via:?} in the directory (give a node id or host:port)"),
            _ => anyhow::bail!("{via:?} is the start of several node ids: give more of it"),
        }
    }

    /// Measures the round-trip time to every live member: the best of three TCP connects to
    /// the HTTP API it publishes (a connect takes one round trip), all members at once.
    async fn latency(&self) -> anyhow::Result<Response> {
        let Some(mesh) = &self.mesh else {
            anyhow::bail!("this node is not in a mesh ([mesh] enabled = false)");
        };
        let members = mesh.directory().await.members;
        let nodes = round_trips(members.into_iter().map(|(id, m)| {
            let api = m.record.api.filter(|_| m.state == "live");
            (id, api)
        }))
        .await;
        Ok(Response::Latency { nodes })
    }

    async fn peer_list(&self) -> anyhow::Result<Response> {
        let vpn = self.vpn()?;
        let mut list = Vec::new();
        for record in peers::list(&self.store).await? {
            let live = nx1_vpn::keys::PublicKey::from_base64(&record.public_key)
                .ok()
                .and_then(|k| vpn.device.peer(&k));
            list.push(PeerInfo {
                endpoint: live
                    .as_ref()
                    .and_then(|l| l.endpoint)
                    .map(|e| e.to_string()),
                latest_handshake: live
                    .as_ref()
                    .and_then(|l| l.last_handshake)
                    .map(|d| d.as_secs()),
                rx_bytes: live.as_ref().map_or(0, |l| l.rx_bytes),
                tx_bytes: live.as_ref().map_or(0, |l| l.tx_bytes),
                rx_packets: live.as_ref().map_or(0, |l| l.rx_packets),
                tx_packets: live.as_ref().map_or(0, |l| l.tx_packets),
                drops: live.as_ref().map_or(0, |l| l.drops),
                name: record.name,
                public_key: record.public_key,
                ipv4: record.ipv4,
                ipv6: record.ipv6,
            });
        }
        Ok(Response::Peers { peers: list })
    }

    async fn peer_remove(&self, name: &str) -> anyhow::Result<Response> {
        let vpn = self.vpn()?;
        let _changing = self.peer_changes.lock().await;
        match peers::remove(&self.store, name).await? {
            Some(record) => {
                vpn.remove_live(&record.public_key);
                if let Some(mesh) = &self.mesh {
                    mesh.withdraw_client(&record.public_key).await;
                }
                // Its own Guard rules went with it (ON DELETE CASCADE).
                if let Some(guard) = &self.guard
                    && let Err(e) = guard.reload_rules(&self.store).await
                {
                    tracing::warn!(error = %e, "reloading Guard after a peer removal failed");
                }
                tracing::info!(peer = %record.name, "peer removed");
                Ok(Response::PeerRemoved { name: record.name })
            }
            None => anyhow::bail!("no peer named {name:?}"),
        }
    }

    fn guard(&self) -> anyhow::Result<&Arc<crate::guard::GuardService>> {
        self.guard.as_ref().ok_or_else(|| {
            anyhow::anyhow!(
                "Guard is off on this node ([guard] enabled = false, or [vpn] disabled)"
            )
        })
    }

    /// A peer's IPv4 tunnel address, by name.
    async fn peer_address(&self, name: &str) -> anyhow::Result<IpAddr> {
        peers::list(&self.store)
            .await?
            .into_iter()
            .find(|p| p.name == name)
            .map(|p| IpAddr::V4(p.ipv4))
            .ok_or_else(|| anyhow::anyhow!("no peer named {name:?}"))
    }

    async fn guard_check(&self, domain: &str, peer: Option<&str>) -> anyhow::Result<Response> {
        let guard = self.guard()?;
        if nx1_guard::blocklist::normalise(domain).is_none() {
            anyhow::bail!("{domain:?} is not a domain name");
        }
        let client = match peer {
            Some(name) => Some(self.peer_address(name).await?),
            None => None,
        };
        let judgement = guard.judge(domain, client);
        let scores = judgement
            .scores
            .iter()
            .map(|s| control::ModelScore {
                model: s.kind.name().into(),
                score: s.score,
                flagged: s.flagged,
            })
            .collect();
        let (verdict, list, rule) = match judgement.verdict {
            nx1_guard::blocklist::Verdict::Blocked { list, rule } => {
                ("blocked", Some(list), Some(rule))
            }
            nx1_guard::blocklist::Verdict::Allowed { list, rule } => {
                ("allowed", Some(list), Some(rule))
            }
            nx1_guard::blocklist::Verdict::Unlisted => ("unlisted", None, None),
        };
        Ok(Response::GuardVerdict(control::GuardVerdict {
            domain: domain.trim_end_matches('.').to_ascii_lowercase(),
            verdict: verdict.into(),
            list,
            rule,
            scores,
        }))
    }

    async fn guard_category(
        &self,
        category: &str,
        peer: &str,
        enabled: bool,
    ) -> anyhow::Result<Response> {
        let guard = self.guard()?;
        self.peer_address(peer).await?;
        let lists = guard.list_names();
        // A list goes by its path, or for short by its file name or stem ("ads.txt", "ads").
        let by_file = |l: &&String| {
            let path = std::path::Path::new(l.as_str());
            l.as_str() == category
                || path.file_name().is_some_and(|n| n == category)
                || path.file_stem().is_some_and(|n| n == category)
        };
        let list = lists
            .iter()
            .filter(|l| *l != crate::guard::LOCAL_RULES)
            .find(by_file);
        let category = match list {
            Some(list) if !crate::guard::DETECTORS.contains(&category) => list.as_str(),
            _ => category,
        };
        if !crate::guard::DETECTORS.contains(&category) && list.is_none() {
            anyhow::bail!(
                "no Guard category {category:?}: the categories are {} and the lists {}",
                crate::guard::DETECTORS.join(", "),
                lists
                    .iter()
                    .filter(|l| *l != crate::guard::LOCAL_RULES)
                    .map(|l| format!("{l:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        crate::guard::set_peer_category(&self.store, peer, category, enabled).await?;
        guard.reload_rules(&self.store).await?;
        Ok(Response::GuardCategories {
            peer: peer.into(),
            disabled: crate::guard::peer_categories(&self.store, peer).await?,
        })
    }

    async fn credits(&self) -> anyhow::Result<Response> {
        use std::sync::atomic::Ordering::Relaxed;
        let mut cut_off = Vec::new();
        if let Some(vpn) = &self.vpn {
            for p in peers::list(&self.store).await? {
                if nx1_vpn::keys::PublicKey::from_base64(&p.public_key)
                    .is_ok_and(|k| vpn.device.is_restricted(&k))
                {
                    cut_off.push(p.name);
                }
            }
        }
        let c = &self.config.raw.credits;
        let (balance, balance_error) = match self.ledger.account(&self.ledger.owner).await {
            Ok(view) => (Some(view.balance), None),
            Err(e) => (None, Some(e.to_string())),
        };
        Ok(Response::Credits(control::CreditsStatus {
            node_id: self.node_id.clone(),
            owner: self.ledger.owner.clone(),
            balance,
            balance_error,
            pricing: Some(c.pricing_info()),
            require_receipts: self.config.raw.credits.require_receipts,
            cut_off,
            accounts: crate::credits::usage(&self.store).await?,
            receipts_taken: self.receipts.taken.load(Relaxed),
            receipts_refused: self
                .receipts
                .refused
                .lock()
                .iter()
                .map(|(k, v)| ((*k).to_owned(), *v))
                .collect(),
        }))
    }

    /// Grants credits to an account, signed by this node (honoured where it is an issuer).
    async fn credits_grant(
        &self,
        account: String,
        amount: u64,
        memo: String,
    ) -> anyhow::Result<Response> {
        if crate::signed::public_key(&account).is_none() {
            anyhow::bail!("{account:?} is not an account (a base64 ed25519 public key)");
        }
        if memo.len() > 256 {
            anyhow::bail!("the memo is longer than 256 bytes");
        }
        let entry = crate::ledger::Entry::Grant(crate::ledger::Grant {
            v: 1,
            id: crate::ledger::random_id(),
            account,
            issuer: self.node_id.clone(),
            amount,
            memo,
            at: crate::now_unix(),
        });
        self.publish_entry(entry).await
    }

    /// Lets a device key spend for this node's identity as an account, or stops letting it.
    async fn credits_device(&self, device: String, active: bool) -> anyhow::Result<Response> {
        if crate::signed::public_key(&device).is_none() {
            anyhow::bail!("{device:?} is not a device key (a base64 ed25519 public key)");
        }
        let entry = crate::ledger::Entry::Device(crate::ledger::DeviceKey {
            v: 1,
            account: self.node_id.clone(),
            device,
            active,
            // Milliseconds: an add and a removal in the same second still come in order.
            at_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64),
        });
        self.publish_entry(entry).await
    }

    async fn publish_entry(&self, entry: crate::ledger::Entry) -> anyhow::Result<Response> {
        let key = ed25519_dalek::SigningKey::from_bytes(&self.account);
        let signed = crate::ledger::SignedEntry::sign(&entry, &key);
        let replicas = self.ledger.publish(vec![signed.clone()]).await?;
        if replicas == 0 {
            anyhow::bail!(
                "no replica of account {} could be reached; try again",
                entry.account()
            );
        }
        Ok(Response::CreditsPublished {
            entry: signed,
            replicas,
        })
    }

    async fn contribute(
        &self,
        relay: Option<bool>,
        bandwidth_mbit: Option<u32>,
    ) -> anyhow::Result<Response> {
        use std::sync::atomic::Ordering::Relaxed;
        if let Some(on) = relay {
            let Some(r) = &self.relay else {
                anyhow::bail!(
                    "relay duty is not set up on this node: set [relay] enabled = true (and its endpoint) in {}",
                    self.config.path.display()
                );
            };
            r.set_on(on);
            self.store
                .set_meta(CONTRIBUTE_RELAY, if on { "on" } else { "off" })
                .await?;
            if let Some(mesh) = &self.mesh {
                // The directory learns it at once, not at the next re-signing.
                mesh.refresh().await;
            }
            tracing::info!(relay = on, "relay duty changed");
        }
        if let Some(mbit) = bandwidth_mbit {
            if let Some(r) = &self.relay {
                r.set_cap(mbit);
            }
            if let Some(v) = self.vpn.as_ref().filter(|v| v.config.exit) {
                v.device.budget.set_rate(u64::from(mbit) * 1_000_000 / 8);
            }
            self.store
                .set_meta(CONTRIBUTE_BANDWIDTH, &mbit.to_string())
                .await?;
            tracing::info!(bandwidth_mbit = mbit, "contribution cap changed");
        }
        let cap = match self.store.meta(CONTRIBUTE_BANDWIDTH).await? {
            Some(v) => v.parse().unwrap_or(0),
            None => self.config.raw.contribute.bandwidth_mbit,
        };
        let exit = self.vpn.as_ref().filter(|v| v.config.exit);
        Ok(Response::Contribution(control::ContributionStatus {
            relay_configured: self.relay.is_some(),
            relay_on: self.relay.as_ref().is_some_and(|r| r.on.load(Relaxed)),
            paused: self
                .relay
                .as_ref()
                .and_then(|r| r.paused_why.lock().clone()),
            limits: control::ContributionLimits {
                cpu_percent: self.config.raw.contribute.cpu_percent,
                only_when_idle: self.config.raw.contribute.only_when_idle,
                memory_mb: self.config.raw.contribute.memory_mb,
                storage_mb: self.config.raw.contribute.storage_mb,
            },
            exit: exit.is_some(),
            bandwidth_mbit: cap,
            relayed_bytes: self.relay.as_ref().map_or(0, |r| {
                r.relay.counters.to_exit_bytes.load(Relaxed)
                    + r.relay.counters.to_client_bytes.load(Relaxed)
            }),
            exited_bytes: exit.map_or(0, |v| {
                v.device
                    .peer_stats()
                    .iter()
                    .map(|s| s.rx_bytes + s.tx_bytes)
                    .sum()
            }),
            over_cap_drops: exit.map_or(0, |v| v.device.counters.over_budget.load(Relaxed))
                + self.relay.as_ref().map_or(0, |r| {
                    r.relay.counters.drops[nx1_vpn::relay::Drop::OverBandwidth.index()]
                        .load(Relaxed)
                }),
        }))
    }

    async fn guard_reload(&self) -> anyhow::Result<Response> {
        let guard = self.guard()?;
        guard.reload(&self.store).await?;
        tracing::info!(
            lists = guard.list_names().len(),
            blocked = guard.blocked_names(),
            "guard lists reloaded"
        );
        Ok(Response::GuardReloaded {
            lists: guard.list_names(),
            blocked_names: guard.blocked_names(),
        })
    }

    async fn guard_rule(
        &self,
        domain: &str,
        action: control::RuleAction,
        peer: Option<&str>,
    ) -> anyhow::Result<Response> {
        let guard = self.guard()?;
        let Some(domain) = nx1_guard::blocklist::normalise(domain) else {
            anyhow::bail!("{domain:?} is not a domain name");
        };
        let action_text = match action {
            control::RuleAction::Allow => Some("allow"),
            control::RuleAction::Deny => Some("deny"),
            control::RuleAction::Clear => None,
        };
        match peer {
            Some(name) => {
                self.peer_address(name).await?;
                crate::guard::set_peer_rule(&self.store, name, &domain, action_text).await?;
            }
            None => crate::guard::set_rule(&self.store, &domain, action_text).await?,
        }
        guard.reload_rules(&self.store).await?;
        self.guard_check(&domain, peer).await
    }

    async fn guard_findings(&self, peer: Option<&str>) -> anyhow::Result<Response> {
        let guard = self.guard()?;
        let records = peers::list(&self.store).await?;
        if let Some(name) = peer
            && !records.iter().any(|p| p.name == name)
        {
            anyhow::bail!("no peer named {name:?}");
        }
        // A finding belongs to the peer whose IPv4 or IPv6 tunnel address it came from.
        let owner = |client: IpAddr| {
            records
                .iter()
                .find(|p| IpAddr::V4(p.ipv4) == client || IpAddr::V6(p.ipv6) == client)
                .map(|p| p.name.clone())
        };
        let findings = guard
            .findings(None)
            .into_iter()
            .map(|f| control::GuardFinding {
                peer: owner(f.client),
                at: f.at,
                client: f.client.to_string(),
                name: f.name,
                query_type: f.query_type,
                list: f.list,
                rule: f.rule,
            })
            .filter(|f| peer.is_none_or(|name| f.peer.as_deref() == Some(name)))
            .collect();
        Ok(Response::GuardFindings { findings })
    }

    /// Brings the client tunnel up; through a relay of the mesh when `two_hop` names one
    /// (or `auto`); `protect` installs leak protection (`Some(true)`: the kill switch too)
    /// before the tunnel counts as up.
    async fn connect(
        &self,
        config: &str,
        interface: &str,
        protect: Option<bool>,
        two_hop: Option<&str>,
    ) -> anyhow::Result<Response> {
        let relayed;
        let config = match two_hop {
            Some(via) => {
                relayed = zeroize::Zeroizing::new(self.two_hop(config, via).await?);
                relayed.as_str()
            }
            None => config,
        };
        let mut client = self.client.lock().await;
        if let Some(c) = client.as_ref() {
            anyhow::bail!(
                "already connected on {}; run `nx1 disconnect` first",
                c.name()
            );
        }
        let account = ed25519_dalek::SigningKey::from_bytes(&self.account);
        let mut tunnel = crate::client::ClientTunnel::start(config, interface, account).await?;
        if let Some(kill_switch) = protect {
            // The node's own services answer from their ports whatever the tunnel does.
            let raw = &self.config.raw;
            let own = nx1_vpn::killswitch::OwnPorts {
                udp: [
                    self.vpn.as_ref().map(|v| v.port),
                    self.relay.as_ref().map(|_| raw.relay.listen_port),
                    self.mesh.as_ref().map(|_| raw.mesh.listen.port()),
                ]
                .into_iter()
                .flatten()
                .collect(),
                tcp: vec![self.http_listen.port()],
            };
            // Without the protection asked for, no tunnel: dropping it takes it down.
            tunnel.protect(&own, kill_switch)?;
        }
        tracing::info!(interface, endpoints = ?tunnel.endpoints, ?protect, "client tunnel up");
        let status = client_status(&tunnel);
        *client = Some(tunnel);
        Ok(Response::Connected(status))
    }

    /// The config with its exit reached through a relay of the mesh: the one named (a node
    /// id or an unambiguous start of one), or with `auto` the nearest live relay that is
    /// neither this node nor the exit.
    async fn two_hop(&self, config: &str, via: &str) -> anyhow::Result<String> {
        let Some(mesh) = &self.mesh else {
            anyhow::bail!(
                "private two-hop needs this node in a mesh ([mesh] enabled = true) to find relays"
            );
        };
        let parsed = nx1_vpn::wg_quick::parse(config).context("wg-quick config")?;
        let [peer] = parsed.peers.as_slice() else {
            anyhow::bail!("private two-hop needs a config with one [Peer] (the exit)");
        };
        let exit_key = peer.public_key.to_base64();
        let dir = mesh.directory().await;
        let relays: Vec<(String, String, Option<String>)> = dir
            .members
            .iter()
            .filter(|(id, m)| {
                m.state == "live"
                    && m.record.roles.contains(&crate::mesh::Role::Relay)
                    && **id != self.node_id
                    && m.record.wireguard_key.as_deref() != Some(exit_key.as_str())
            })
            .filter_map(|(id, m)| Some((id.clone(), m.record.relay.clone()?, m.record.api.clone())))
            .collect();
        let (id, endpoint) = if via == "auto" {
            // The nearest by a round trip to its API; one that does not answer comes last.
            let rtts =
                round_trips(relays.iter().map(|(id, _, api)| (id.clone(), api.clone()))).await;
            let rtt = |id: &String| rtts.get(id).copied().flatten().unwrap_or(f64::MAX);
            let best = relays
                .iter()
                .min_by(|a, b| rtt(&a.0).total_cmp(&rtt(&b.0)))
                .map(|(id, endpoint, _)| (id, endpoint));
            let Some((id, endpoint)) = best else {
                anyhow::bail!(
                    "no live relay in the mesh besides this node and the exit: private two-hop needs one"
                );
            };
            (id.to_owned(), endpoint.to_owned())
        } else {
            let found: Vec<_> = relays
                .iter()
                .filter(|(id, _, _)| id == via || (via.len() >= 4 && id.starts_with(via)))
                .collect();
            match found.as_slice() {
                [(id, endpoint, _)] => (id.clone(), endpoint.clone()),
                [] => anyhow::bail!(
                    "no live relay {via:?} in the mesh (other than this node and the exit)"
                ),
                _ => anyhow::bail!("{via:?} is the start of several node ids: give more of it"),
            }
        };
        tracing::info!(relay = %id, %endpoint, "private two-hop");
        Ok(crate::client::through_relay(config, &endpoint, &id))
    }

    async fn disconnect(&self) -> anyhow::Result<Response> {
        match self.client.lock().await.take() {
            Some(tunnel) => {
                let interface = tunnel.name().to_owned();
                tokio::task::spawn_blocking(move || tunnel.stop()).await?;
                tracing::info!(interface, "client tunnel down");
                Ok(Response::Disconnected { interface })
            }
            None => {
                // A run that died with its kill switch on left the host blocked: this is the
                // way out.
                let stale = nx1_vpn::killswitch::remove_stale();
                if stale.is_empty() {
                    anyhow::bail!("not connected");
                }
                tracing::info!(tables = ?stale, "removed the kill switch a previous run left");
                Ok(Response::Disconnected {
                    interface: format!(
                        "the kill switch a previous run left ({})",
                        stale.join(", ")
                    ),
                })
            }
        }
    }

    fn vpn_status(&self) -> Option<VpnStatus> {
        let vpn = self.vpn.as_ref()?;
        let stats = vpn.device.peer_stats();
        Some(VpnStatus {
            interface: vpn.config.interface.clone(),
            listen_port: vpn.port,
            exit_table: vpn.exit_table.clone(),
            peers: stats.len(),
            active_peers: stats.iter().filter(|s| s.is_active()).count(),
            drops: crate::metrics::device_drops(&vpn.device)
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
        })
    }

    async fn status(&self) -> anyhow::Result<StatusReport> {
        let table = self.flows.as_ref().map(|f| f.table());
        Ok(StatusReport {
            protocol: control::PROTOCOL_VERSION,
            version: env!("CARGO_PKG_VERSION").into(),
            node_id: self.node_id.clone(),
            wireguard_public_key: self.wireguard_public_key.clone(),
            pid: std::process::id(),
            uptime_secs: self.started.elapsed().as_secs(),
            config_file: self.config.path.clone(),
            data_dir: self.config.data_dir.clone(),
            http_listen: self.http_listen.to_string(),
            control_socket: self.config.control_socket.clone(),
            store: StoreStatus {
                backend: self.store.backend(),
                schema_version: self.store.schema_version().await?,
            },
            vpn: self.vpn_status(),
            vault: match &self.vault {
                Some(v) => {
                    let (accounts, items, bytes) = v.totals().await?;
                    Some(control::VaultStatus {
                        accounts,
                        items,
                        bytes,
                    })
                }
                None => None,
            },
            mesh: match &self.mesh {
                Some(m) => Some(mesh_status(m.directory().await)),
                None => None,
            },
            relay: self.relay.as_ref().map(|r| r.status()),
            egress: self.egress.as_ref().map(|e| e.status()),
            mesh_exit: self.mesh_exit.as_ref().map(|e| e.status()),
            standby_clients: self.standby.as_ref().map(|s| s.adopted()),
            client: self.client.lock().await.as_ref().map(client_status),
            guard: self.guard.as_ref().map(|g| control::GuardStatus {
                lists: g.list_names().to_vec(),
                blocked_names: g.blocked_names(),
                dns_listen: g.listen.iter().map(|a| a.to_string()).collect(),
                queries_blocked: g
                    .counters
                    .blocked
                    .load(std::sync::atomic::Ordering::Relaxed),
                queries_cached: g
                    .counters
                    .cache_hits
                    .load(std::sync::atomic::Ordering::Relaxed),
                queries_forwarded: g
                    .counters
                    .forwarded
                    .load(std::sync::atomic::Ordering::Relaxed),
                findings: g.findings(None).len(),
                quarantined_peers: self.flows.as_ref().map_or(0, |f| f.quarantined()),
                findings_by_list: g.finding_counts(),
                flows: table.map_or(0, |t| t.flows),
                flow_capacity: table.map_or(0, |t| t.capacity),
                flow_emergency: table.is_some_and(|t| t.emergency),
                flows_untracked: table.map_or(0, |t| t.counters.untracked),
            }),
        })
    }
}

fn client_status(tunnel: &crate::client::ClientTunnel) -> control::ClientStatus {
    let stats = tunnel.interface.device().peer_stats();
    control::ClientStatus {
        interface: tunnel.name().to_owned(),
        via: tunnel.via.clone(),
        protection: tunnel.protection.as_ref().map(|p| {
            let blocked = p.blocked();
            control::Protection {
                table: p.table().to_owned(),
                kill_switch: p.blocks_all,
                dns_blocked: blocked.dns_packets,
                other_blocked: blocked.other_packets,
            }
        }),
        endpoints: tunnel.endpoints.iter().map(|e| e.to_string()).collect(),
        addresses: tunnel.addresses.iter().map(|a| a.to_string()).collect(),
        latest_handshake: stats
            .first()
            .and_then(|s| s.last_handshake)
            .map(|d| d.as_secs()),
        rx_bytes: stats.iter().map(|s| s.rx_bytes).sum(),
        tx_bytes: stats.iter().map(|s| s.tx_bytes).sum(),
        server: stats.first().map(|s| s.public_key.to_base64()),
        standby_servers: tunnel
            .failover
            .as_ref()
            .map_or(0, |f| f.servers.len().saturating_sub(1)),
        moves: tunnel
            .failover
            .as_ref()
            .map_or(0, |f| f.moves.load(std::sync::atomic::Ordering::Relaxed)),
        last_receipt: tunnel.receipts.last.lock().clone(),
        node_answer: tunnel.receipts.answer.lock().clone(),
    }
}

/// SIGINT, SIGTERM and SIGHUP, caught from the first moment so that a signal during start-up
/// still runs the cleanup.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            term: signal(SignalKind::terminate()).context("installing SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing SIGINT handler")?,
            hup: signal(SignalKind::hangup()).context("installing SIGHUP handler")?,
        })
    }

    /// Resolves when one arrives.
    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
            _ = self.hup.recv() => "SIGHUP",
        }
    }
}

/// Runs the daemon until a shutdown signal.
pub async fn run(config: Resolved) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut signals = Signals::install()?;
    let identity = NodeIdentity::load(&config.identity_key)?;
    let wireguard = load_wireguard_key(&config.wireguard_key)?;
    let node_id = identity.node_id();
    let store = Store::open(&config.database, config.raw.store.max_connections).await?;
    store.claim(&node_id).await?;
    store
        .set_meta("software_version", env!("CARGO_PKG_VERSION"))
        .await?;

    let control_listener = control::bind(&config.control_socket, config.control_group).await?;
    // From here on the socket file exists: remove it on every way out.
    let socket_guard = RemoveOnDrop(config.control_socket.clone());
    let vpn = match &config.vpn {
        Some(v) => Some(Arc::new(
            VpnService::start(
                v.clone(),
                &wireguard,
                &store,
                &config.data_dir,
                // An exit in a mesh carries other nodes' clients too, from their transit
                // addresses.
                &if config.mesh.is_some() {
                    crate::egress::transit_networks()
                } else {
                    Vec::new()
                },
            )
            .await?,
        )),
        None => None,
    };
    // Stops the interface and removes the exit table on every way out.
    let vpn_guard = StopOnDrop(vpn.clone());
    let uapi = match &vpn {
        Some(v) => Some(crate::uapi::bind(&v.config.interface).await?),
        None => None,
    };
    let uapi_guard = uapi.as_ref().map(|(_, path)| RemoveOnDrop(path.clone()));
    let (stop_tx, stop_rx) = watch::channel(false);
    let guard = match (&config.guard, &config.vpn) {
        (Some(g), Some(v)) => Some(
            crate::guard::GuardService::start(
                g,
                &store,
                &[v.v4.0.into(), v.v6.0.into()],
                stop_rx.clone(),
            )
            .await?,
        ),
        _ => None,
    };
    // Guard in the packet path: every decrypted packet, both ways.
    let flows = match (&guard, &vpn, &config.guard) {
        (Some(dns), Some(vpn), Some(g)) => {
            let flows = crate::guard::FlowGuard::new(dns.clone(), g);
            vpn.device.set_inspector(flows.clone());
            let (ticking, mut stop) = (flows.clone(), stop_rx.clone());
            tokio::spawn(async move {
                let mut every = tokio::time::interval(crate::guard::TICK);
                loop {
                    tokio::select! {
                        () = stopped(&mut stop) => return,
                        _ = every.tick() => ticking.tick(),
                    }
                }
            });
            Some(flows)
        }
        _ => None,
    };
    // What the owner last set with `nx1 contribute`, over the configuration.
    let relay_on = Arc::new(AtomicBool::new(
        config.raw.relay.enabled && store.meta(CONTRIBUTE_RELAY).await?.as_deref() != Some("off"),
    ));
    let relay_paused = Arc::new(AtomicBool::new(false));
    let cap_mbit = match store.meta(CONTRIBUTE_BANDWIDTH).await? {
        Some(v) => v.parse().unwrap_or(config.raw.contribute.bandwidth_mbit),
        None => config.raw.contribute.bandwidth_mbit,
    };
    if let Some(v) = vpn.as_ref().filter(|v| v.config.exit) {
        v.device
            .budget
            .set_rate(u64::from(cap_mbit) * 1_000_000 / 8);
    }
    let mesh = match &config.mesh {
        Some(settings) => Some(
            start_mesh(
                settings,
                &config,
                &identity,
                &wireguard,
                vpn.clone(),
                relay_on.clone(),
                relay_paused.clone(),
            )
            .await?,
        ),
        None => None,
    };
    let (mut mesh_exit, mut egress) = (None, None);
    if let (Some(settings), Some(vpn)) = (&config.mesh, &vpn) {
        if vpn.config.exit {
            mesh_exit = Some(
                crate::egress::MeshExit::start(
                    &vpn.config.interface,
                    vpn.device.clone(),
                    settings.uplink_check,
                    stop_rx.clone(),
                )
                .await?,
            );
        } else if settings.egress {
            egress = Some(
                crate::egress::Egress::start(
                    &vpn.config.interface,
                    vpn.device.clone(),
                    &crate::vpn::pools(&vpn.config),
                    settings,
                    stop_rx.clone(),
                )
                .await?,
            );
        }
    }
    // Removes the egress routing on every way out.
    let egress_guard = StopEgressOnDrop(egress.clone());
    let credits = &config.raw.credits;
    let ledger = crate::ledger::Ledger::new(
        store.clone(),
        node_id.clone(),
        identity.signing_key(),
        (!credits.owner.is_empty()).then(|| credits.owner.clone()),
        credits.pricing(),
        credits.issuers.clone(),
        mesh.clone(),
    );
    ledger.set_spend_hold(credits.spend_hold_secs);
    ledger.run(
        Duration::from_millis(credits.sync_interval_ms),
        stop_rx.clone(),
    );
    let vault = if config.raw.vault.enabled {
        Some(Arc::new(
            crate::vault::VaultService::new(
                store.clone(),
                config.raw.vault.clone(),
                ledger.clone(),
                config.raw.contribute.storage_mb.saturating_mul(1 << 20),
            )
            .await?,
        ))
    } else {
        None
    };
    let standby = match (&mesh, &vpn) {
        (Some(mesh), Some(vpn)) => {
            // This node's clients, shared so that other nodes can stand by for them.
            for p in peers::list(&store).await? {
                mesh.publish_client(&p.public_key, &p.name, p.ipv4, p.ipv6)
                    .await;
            }
            Some(crate::standby::Standby::start(node_id.clone(), vpn, stop_rx.clone()).await?)
        }
        _ => None,
    };
    let receipts = Arc::new(crate::credits::ReceiptCounters::default());
    if let Some(vpn) = &vpn {
        let meter = Arc::new(crate::credits::Meter::default());
        crate::credits::serve(
            store.clone(),
            node_id.clone(),
            vpn.device.clone(),
            vpn.config.v4.0,
            receipts.clone(),
            meter.clone(),
            ledger.clone(),
            guard.clone(),
            stop_rx.clone(),
        )
        .await
        .context("binding the receipt port")?;
        let c = &config.raw.credits;
        // A client cut off (unpaid, or out of credits) still reaches the receipt port.
        vpn.device
            .set_receipt_address(Some(std::net::SocketAddrV4::new(
                vpn.config.v4.0,
                crate::credits::RECEIPT_PORT,
            )));
        if c.require_receipts {
            crate::credits::enforce(
                store.clone(),
                vpn.device.clone(),
                meter,
                c.unpaid_allowance_kb.saturating_mul(1024),
                stop_rx.clone(),
            );
        }
    }
    let relay = if config.raw.relay.enabled {
        let relay = Arc::new(crate::relay::RelayService::start(
            &config.raw.relay,
            relay_on.clone(),
            relay_paused,
            cap_mbit,
        )?);
        tracing::info!(port = relay.relay.port(), endpoint = ?relay.endpoint, "relay duty on");
        let policy = config.raw.contribute.busy_policy();
        if policy.any() {
            let (paused, mesh) = (relay.clone(), mesh.clone());
            crate::busy::watch(
                policy,
                move |why| {
                    paused.set_paused(why);
                    if let Some(mesh) = mesh.clone() {
                        // The directory learns it at once.
                        tokio::spawn(async move { mesh.refresh().await });
                    }
                },
                stop_rx.clone(),
            );
        }
        Some(relay)
    } else {
        None
    };
    let http_listener = tokio::net::TcpListener::bind(config.raw.api.listen)
        .await
        .with_context(|| format!("binding the HTTP API on {}", config.raw.api.listen))?;
    let http_listen = http_listener.local_addr()?;

    let node = Arc::new(Node {
        metrics: Metrics::new(
            &node_id,
            vpn.clone(),
            guard.clone(),
            flows.clone(),
            vault.as_deref(),
            relay.clone(),
            receipts.clone(),
        ),
        vpn,
        client: tokio::sync::Mutex::new(None),
        guard,
        flows,
        vault,
        mesh: mesh.clone(),
        relay,
        mesh_exit,
        egress,
        standby,
        receipts,
        ledger,
        account: zeroize::Zeroizing::new(identity.signing_key().to_bytes()),
        peer_changes: tokio::sync::Mutex::new(()),
        wireguard_public_key: wireguard.public_key().to_base64(),
        node_id,
        store,
        started,
        http_listen,
        config,
    });
    drop(wireguard);
    drop(identity);

    let control_task = tokio::spawn(serve_control(
        control_listener,
        node.clone(),
        stop_rx.clone(),
    ));
    let uapi_task = uapi.map(|(listener, _)| {
        tokio::spawn(crate::uapi::serve(listener, node.clone(), stop_rx.clone()))
    });
    let mut http_stop = stop_rx.clone();
    let http_task = tokio::spawn(
        axum::serve(
            http_listener,
            crate::http::router(node.clone())
                .into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .with_graceful_shutdown(async move { stopped(&mut http_stop).await })
        .into_future(),
    );
    tracing::info!(
        node_id = %node.node_id,
        http = %node.http_listen,
        control = %node.config.control_socket.display(),
        store = %node.store.backend(),
        wireguard = ?node.vpn.as_ref().map(|v| (v.config.interface.as_str(), v.port)),
        exit = node.vpn.as_ref().is_some_and(|v| v.exit_table.is_some()),
        "nx1 node up"
    );

    if let Some(mesh) = &mesh {
        let (mesh, node, mut stop) = (mesh.clone(), node.clone(), stop_rx.clone());
        tokio::spawn(async move {
            let mut resign = tokio::time::interval(crate::mesh::RESIGN);
            let mut look = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    () = stopped(&mut stop) => return,
                    _ = resign.tick() => mesh.refresh().await,
                    _ = look.tick() => {
                        let dir = mesh.directory().await;
                        let refused = mesh.refused_now.lock().clone();
                        node.metrics.observe_mesh(&dir, &refused);
                        if let Some(relay) = &node.relay {
                            relay.follow(&dir);
                        }
                        if let Some(exit) = &node.mesh_exit {
                            exit.follow(&dir);
                        }
                        if let Some(egress) = &node.egress {
                            egress.follow(&dir);
                        }
                        if let (Some(standby), Some(vpn)) = (&node.standby, &node.vpn) {
                            let _changing = node.peer_changes.lock().await;
                            if let Err(e) = standby.follow(&mesh, &dir, vpn, &node.store).await {
                                tracing::warn!(error = %e, "following the mesh's clients failed");
                            }
                        }
                    }
                }
            }
        });
    }

    let signal = signals.next().await;
    tracing::info!(signal, "shutting down");
    if let (Some(mesh), Some(settings)) = (mesh, &node.config.mesh) {
        // Others drop this node at once instead of waiting for the failure detector.
        mesh.leave(settings.gossip_interval).await;
    }
    let _ = stop_tx.send(true);
    let _ = control_task.await;
    match tokio::time::timeout(Duration::from_secs(10), http_task).await {
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "HTTP API stopped with an error"),
        Err(_) => tracing::warn!("HTTP API did not stop within 10 s"),
        _ => {}
    }
    if let Some(task) = uapi_task {
        let _ = task.await;
    }
    if let Some(tunnel) = node.client.lock().await.take() {
        tunnel.stop();
    }
    drop(uapi_guard);
    // The interface first, so no client packet leaves by the main table once the egress
    // rules are gone.
    drop(vpn_guard);
    drop(egress_guard);
    drop(socket_guard);
    node.store.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// Store keys of what `nx1 contribute` set.
const CONTRIBUTE_RELAY: &str = "contribute.relay";
const CONTRIBUTE_BANDWIDTH: &str = "contribute.bandwidth_mbit";

/// Resolves once the stop flag is set.
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Accepts control connections until told to stop.
async fn serve_control(listener: UnixListener, node: Arc<Node>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            () = stopped(&mut stop) => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(serve_control_connection(stream, node.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "control socket accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}

/// Answers requests on one connection, each bounded in time.
async fn serve_control_connection(stream: UnixStream, node: Arc<Node>) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    loop {
        let request =
            match tokio::time::timeout(Duration::from_secs(30), control::read_request(&mut reader))
                .await
            {
                Err(_) | Ok(Ok(None)) => return,
                Ok(Ok(Some(request))) => request,
                Ok(Err(message)) => {
                    node.metrics.control_bad_requests.inc();
                    let _ = control::write_response(&mut write, &Response::Error { message }).await;
                    return;
                }
            };
        let response = node.handle(request).await;
        if control::write_response(&mut write, &response)
            .await
            .is_err()
        {
            return;
        }
    }
}

/// Stops the WireGuard service when dropped.
struct StopOnDrop(Option<Arc<VpnService>>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if let Some(vpn) = &self.0 {
            vpn.stop();
        }
    }
}

/// Removes the egress routing when dropped.
struct StopEgressOnDrop(Option<Arc<crate::egress::Egress>>);

impl Drop for StopEgressOnDrop {
    fn drop(&mut self) {
        if let Some(egress) = &self.0 {
            egress.stop();
        }
    }
}

/// Removes a file when dropped (the control socket on shutdown, on any path).
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Joins the mesh with a record built from this node's configuration and live state.
async fn start_mesh(
    settings: &crate::mesh::MeshSettings,
    config: &Resolved,
    identity: &NodeIdentity,
    wireguard: &nx1_vpn::keys::PrivateKey,
    vpn: Option<Arc<VpnService>>,
    relay_on: Arc<AtomicBool>,
    relay_paused: Arc<AtomicBool>,
) -> anyhow::Result<Arc<crate::mesh::Mesh>> {
    use crate::mesh::{Capacity, Load, NodeRecord, Role};
    let mut roles = Vec::new();
    if config.vpn.as_ref().is_some_and(|v| v.exit) {
        roles.push(Role::Exit);
    }
    if config.raw.vault.enabled {
        roles.push(Role::Vault);
    }
    let relay = (config.raw.relay.enabled && !config.raw.relay.endpoint.is_empty())
        .then(|| config.raw.relay.endpoint.clone());
    let endpoints: Vec<String> = config
        .vpn
        .as_ref()
        .and_then(|v| v.endpoint.clone())
        .into_iter()
        .collect();
    let listen = config.raw.api.listen;
    let api = settings.api_url.clone().or_else(|| {
        (!listen.ip().is_loopback() && !listen.ip().is_unspecified())
            .then(|| format!("http://{listen}"))
    });
    let wireguard_key = config
        .vpn
        .as_ref()
        .map(|_| wireguard.public_key().to_base64());
    let region = settings.region.clone();
    // What it offers: as many clients as its IPv4 pool holds, and the relay's bandwidth cap.
    let capacity = Capacity {
        peers: config.vpn.as_ref().map_or(0, |v| {
            let hosts = 1u64 << (32 - u32::from(v.v4.1));
            hosts.saturating_sub(3).min(u64::from(u32::MAX)) as u32
        }),
        bandwidth_mbps: if config.raw.relay.enabled {
            config.raw.relay.bandwidth_mbit
        } else {
            0
        },
    };
    let source: crate::mesh::RecordSource = Box::new(move || {
        let (peers, active_peers) = vpn.as_ref().map_or((0, 0), |v| {
            let stats = v.device.peer_stats();
            let active = stats.iter().filter(|s| s.is_active()).count();
            (stats.len() as u32, active as u32)
        });
        NodeRecord {
            v: 1,
            id: String::new(),
            wireguard_key: wireguard_key.clone(),
            endpoints: endpoints.clone(),
            api: api.clone(),
            relay: relay.clone(),
            // Relay duty as it is now (`nx1 contribute on|off`).
            roles: {
                let mut r = roles.clone();
                if relay_on.load(std::sync::atomic::Ordering::Relaxed)
                    && !relay_paused.load(std::sync::atomic::Ordering::Relaxed)
                {
                    r.push(Role::Relay);
                    r.sort();
                }
                r
            },
            region: region.clone(),
            capacity: capacity.clone(),
            load: Load {
                peers,
                active_peers,
            },
            software: env!("CARGO_PKG_VERSION").to_owned(),
            issued: 0,
            expires: 0,
            leaving: false,
        }
    });
    let mesh = crate::mesh::Mesh::start(settings, identity.signing_key(), source)
        .await
        .with_context(|| format!("joining the mesh on UDP {}", settings.listen))?;
    tracing::info!(gossip = %settings.advertise, bootstrap = ?settings.bootstrap, "joined the mesh");
    Ok(mesh)
}

/// "host:port" of an `http://host:port/…` URL (the port defaults to 80, 443 for https).
fn api_address(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split('/').next()?;
    if authority.is_empty() {
        return None;
    }
    let has_port = authority.rsplit_once(':').is_some_and(|(host, port)| {
        port.parse::<u16>().is_ok()
            && (!host.contains(':') || (host.starts_with('[') && host.ends_with(']')))
    });
    Some(if has_port {
        authority.to_owned()
    } else {
        let port = if scheme == "https" { 443 } else { 80 };
        format!("{authority}:{port}")
    })
}

/// The round trip to each node (id, HTTP API URL), all at once: None for a node without an
/// API or that does not answer.
async fn round_trips(
    nodes: impl IntoIterator<Item = (String, Option<String>)>,
) -> std::collections::BTreeMap<String, Option<f64>> {
    let mut probes = tokio::task::JoinSet::new();
    let mut rtts = std::collections::BTreeMap::new();
    for (id, api) in nodes {
        match api.as_deref().and_then(api_address) {
            Some(addr) => {
                probes.spawn(async move { (id, connect_rtt(&addr).await) });
            }
            None => {
                rtts.insert(id, None);
            }
        }
    }
    while let Some(done) = probes.join_next().await {
        if let Ok((id, rtt)) = done {
            rtts.insert(id, rtt);
        }
    }
    rtts
}

/// The best of three TCP connects to `addr`, in milliseconds; None if none answers within a
/// second.
async fn connect_rtt(addr: &str) -> Option<f64> {
    let mut best: Option<f64> = None;
    for _ in 0..3 {
        let start = Instant::now();
        let ok = tokio::time::timeout(
            std::time::Duration::from_secs(1),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        .is_ok_and(|c| c.is_ok());
        if !ok {
            break;
        }
        let ms = start.elapsed().as_secs_f64() * 1000.0;
        best = Some(best.map_or(ms, |b: f64| b.min(ms)));
    }
    best
}

fn mesh_status(dir: crate::mesh::Directory) -> control::MeshStatus {
    control::MeshStatus {
        members: dir
            .members
            .into_iter()
            .map(|(id, m)| control::MeshMember {
                id,
                state: m.state,
                region: m.record.region,
                roles: m
                    .record
                    .roles
                    .iter()
                    .map(|r| format!("{r:?}").to_lowercase())
                    .collect(),
                endpoints: m.record.endpoints.clone(),
                gossip: m.gossip.to_string(),
                load: m.record.load.clone(),
                capacity: m.record.capacity.clone(),
            })
            .collect(),
        refused: dir.refused.into_iter().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_urls_become_addresses_to_connect_to() {
        assert_eq!(
            api_address("http://10.0.0.1:7870").as_deref(),
            Some("10.0.0.1:7870")
        );
        assert_eq!(
            api_address("http://[fd00::1]:7870/").as_deref(),
            Some("[fd00::1]:7870")
        );
        assert_eq!(
            api_address("https://node.example").as_deref(),
            Some("node.example:443")
        );
        assert_eq!(
            api_address("http://[fd00::1]").as_deref(),
            Some("[fd00::1]:80")
        );
        assert_eq!(api_address("garbage"), None);
        assert_eq!(api_address("http:///x"), None);
    }

    #[tokio::test]
    async fn a_round_trip_is_measured_and_silence_is_none() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let ms = connect_rtt(&addr).await.expect("loopback answers");
        assert!((0.0..1000.0).contains(&ms), "{ms}");
        drop(listener);
        assert_eq!(connect_rtt(&addr).await, None);
    }
}
