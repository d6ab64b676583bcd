//! Client mode (`nx1 connect FILE`): a tunnel from a standard wg-quick config, on the same
//! `vpn` data plane as the exit. Routes for `0.0.0.0/0` and `::/0` are installed as two
//! halves (`0.0.0.0/1` + `128.0.0.0/1`), so the host's own default route stays untouched, and
//! the server's endpoint keeps a host route through the old default so the tunnel's own
//! datagrams never enter it. Routes are set with iproute2's `ip`.
//!
//! A config from an NX1 node in a mesh also names, in comments other clients ignore, the
//! nodes that stand by for this client (they have its registration, with the same tunnel
//! addresses) and where to probe the node through the tunnel. The client then probes its node
//! every 100 ms; when it has not answered for a second, the tunnel's peer becomes the next
//! node on the list — same addresses, same routes, one handshake.

use anyhow::{Context as _, bail};
use nx1_vpn::IpNetwork;
use nx1_vpn::device::Device;
use nx1_vpn::io::{Interface, InterfaceConfig};
use nx1_vpn::keys::{PrivateKey, PublicKey};
use nx1_vpn::peer::PeerConfig;
use nx1_vpn::wg_quick;
use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// The comment key naming a standby node: `# nx1-fallback = KEY HOST:PORT NODE-ID`.
pub const FALLBACK_LINE: &str = "nx1-fallback";
/// The comment key naming the node: `# nx1-node = NODE-ID`.
pub const NODE_LINE: &str = "nx1-node";
/// The comment key naming the relay the node is reached through: `# nx1-via = NODE-ID`.
pub const VIA_LINE: &str = "nx1-via";
/// The comment key naming where usage receipts go: `# nx1-receipts = IP:PORT`.
pub const RECEIPTS_LINE: &str = "nx1-receipts";
/// The client signs a receipt for its session at least this often …
pub const RECEIPT_EVERY: Duration = Duration::from_secs(2);
/// … and sooner once this many bytes went through since the last one, so a fast client's
/// receipts keep up with its traffic (and within a node's unpaid allowance).
pub const RECEIPT_BYTES: u64 = 256 << 10;
/// The comment key naming where to probe the node: `# nx1-probe = IP:PORT`.
pub const PROBE_LINE: &str = "nx1-probe";
/// Probes go this often.
pub const PROBE_EVERY: Duration = Duration::from_millis(100);
/// A node silent this long is left for the next.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// After a move, the new node gets this long (a handshake) before it is judged.
const SETTLE: Duration = Duration::from_secs(2);

/// The servers a tunnel can use, and which one it uses.
#[derive(Debug, Default)]
pub struct Failover {
    /// (public key, endpoint) of the config's peer, then the standby nodes.
    pub servers: Vec<(PublicKey, SocketAddr)>,
    /// Index of the server in use.
    pub current: parking_lot::Mutex<usize>,
    /// Moves so far.
    pub moves: AtomicU64,
}

/// A running client tunnel.
pub struct ClientTunnel {
    /// The interface and its device.
    pub interface: Interface,
    /// The server endpoints (resolved).
    pub endpoints: Vec<SocketAddr>,
    /// The tunnel addresses.
    pub addresses: Vec<IpNetwork>,
    /// Standby nodes and the one in use, when the config names any.
    pub failover: Option<Arc<Failover>>,
    /// The last usage receipt signed and the node's answer, when the config says where
    /// receipts go.
    pub receipts: Arc<Receipts>,
    watcher: Option<tokio::task::JoinHandle<()>>,
    signer: Option<tokio::task::JoinHandle<()>>,
    host_routes: Vec<String>,
    /// The relay the tunnel goes through (private two-hop), as the config's `# nx1-via`
    /// names it.
    pub via: Option<String>,
    /// Where the node takes receipts (and rule requests), and the tunnel address to send
    /// from, when the config says.
    node_port: Option<(SocketAddr, std::net::Ipv4Addr)>,
    /// DNS-leak protection and kill switch, when asked for. The last field: it goes after
    /// the interface and its routes, so nothing leaks while the tunnel comes down.
    pub protection: Option<nx1_vpn::killswitch::KillSwitch>,
}

/// The `# KEY = value` comments of a config.
fn nx1_comments<'a>(text: &'a str, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    text.lines().filter_map(move |l| {
        let (k, v) = l.trim().strip_prefix('#')?.split_once('=')?;
        (k.trim() == key).then(|| v.trim())
    })
}

/// The config with its peer reached through a relay (private two-hop): `Endpoint` becomes
/// the relay's, the relay is named in `# nx1-via` (so the receipts credit it), keepalives are
/// on (a relay cannot deliver a handshake the exit starts, so the client keeps its sessions
/// itself), and standby nodes are dropped (failover goes to other exits directly, which
/// would undo the two hops).
pub fn through_relay(config_text: &str, endpoint: &str, relay_id: &str) -> String {
    let mut out = String::new();
    let mut in_peer = false;
    let (mut endpoint_set, mut keepalive_set) = (false, false);
    let key_of = |line: &str| {
        line.split_once('=')
            .map(|(k, _)| k.trim().to_ascii_lowercase())
    };
    let finish_peer = |out: &mut String, endpoint_set: bool, keepalive_set: bool| {
        if !endpoint_set {
            out.push_str(&format!("Endpoint = {endpoint}\n"));
        }
        if !keepalive_set {
            out.push_str("PersistentKeepalive = 25\n");
        }
    };
    for line in config_text.lines() {
        let t = line.trim();
        if t.starts_with('[') {
            if in_peer {
                finish_peer(&mut out, endpoint_set, keepalive_set);
            }
            in_peer = t.eq_ignore_ascii_case("[peer]");
            (endpoint_set, keepalive_set) = (false, false);
        }
        if let Some(c) = t.strip_prefix('#') {
            let key = c.split_once('=').map(|(k, _)| k.trim());
            if matches!(key, Some(FALLBACK_LINE | PROBE_LINE | VIA_LINE)) {
                continue;
            }
        } else if in_peer {
            match key_of(t).as_deref() {
                Some("endpoint") => {
                    out.push_str(&format!("Endpoint = {endpoint}\n"));
                    endpoint_set = true;
                    continue;
                }
                Some("persistentkeepalive") => {
                    keepalive_set = true;
                    if t.split_once('=')
                        .is_some_and(|(_, v)| matches!(v.trim(), "0" | "off"))
                    {
                        out.push_str("PersistentKeepalive = 25\n");
                        continue;
                    }
                }
                _ => {}
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    if in_peer {
        finish_peer(&mut out, endpoint_set, keepalive_set);
    }
    out.push_str(&format!("# {VIA_LINE} = {relay_id}\n"));
    out
}

/// The last receipt a tunnel signed, and what the node answered.
#[derive(Debug, Default)]
pub struct Receipts {
    /// The last receipt sent.
    pub last: parking_lot::Mutex<Option<crate::credits::Receipt>>,
    /// The node's answer to the last receipt it answered.
    pub answer: parking_lot::Mutex<Option<crate::credits::ReceiptAnswer>>,
}

/// Signs a cumulative receipt for the session with the node in use every
/// [`RECEIPT_EVERY`] and sends it through the tunnel. A session is one tunnel with one node:
/// a move to a standby node starts another (its counters start at zero with the new peer).
async fn sign_receipts(
    device: Arc<Device>,
    nodes: std::collections::HashMap<PublicKey, (String, Option<String>)>,
    to: SocketAddr,
    bind: std::net::Ipv4Addr,
    account: ed25519_dalek::SigningKey,
    client_key: String,
    state: Arc<Receipts>,
) {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let socket = match tokio::net::UdpSocket::bind((bind, 0)).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot send usage receipts");
            return;
        }
    };
    let account_id = b64.encode(account.verifying_key().as_bytes());
    let mut sessions: std::collections::HashMap<PublicKey, (String, Instant)> = Default::default();
    let mut every = tokio::time::interval(Duration::from_millis(100));
    let (mut in_use, mut sent_at, mut sent_bytes) = (None, Instant::now(), 0u64);
    loop {
        every.tick().await;
        let Some(stats) = device.peer_stats().into_iter().next() else {
            continue;
        };
        let Some((node, via)) = nodes.get(&stats.public_key) else {
            continue;
        };
        // A move to another node (or back to one used before) starts a new session: the
        // new peer's counters start at zero.
        if in_use != Some(stats.public_key) {
            sessions.remove(&stats.public_key);
            in_use = Some(stats.public_key);
            sent_bytes = 0;
        }
        let total = stats.tx_bytes + stats.rx_bytes;
        if sent_at.elapsed() < RECEIPT_EVERY && total.saturating_sub(sent_bytes) < RECEIPT_BYTES {
            continue;
        }
        (sent_at, sent_bytes) = (Instant::now(), total);
        let (session, since) = sessions.entry(stats.public_key).or_insert_with(|| {
            let mut id = [0u8; 16];
            getrandom::fill(&mut id).expect("the operating system has no random numbers");
            (b64.encode(id), Instant::now())
        });
        let receipt = crate::credits::Receipt {
            v: 1,
            session: session.clone(),
            account: account_id.clone(),
            client_key: client_key.clone(),
            node: node.clone(),
            via: via.clone(),
            bytes_up: stats.tx_bytes,
            bytes_down: stats.rx_bytes,
            seconds: since.elapsed().as_secs(),
        };
        let signed = crate::credits::SignedReceipt::sign(&receipt, &account);
        let text = serde_json::to_vec(&signed).expect("receipts serialize");
        if socket.send_to(&text, to).await.is_ok() {
            *state.last.lock() = Some(receipt);
        }
        let mut buf = [0u8; 2048];
        if let Ok(Ok((n, from))) =
            tokio::time::timeout(Duration::from_millis(500), socket.recv_from(&mut buf)).await
            && from == to
            && let Ok(a) = serde_json::from_slice::<crate::credits::ReceiptAnswer>(&buf[..n])
        {
            if a.cut_off && !state.answer.lock().as_ref().is_some_and(|old| old.cut_off) {
                tracing::warn!(
                    "the node cut this tunnel off: out of credits — contribute or top up"
                );
            }
            *state.answer.lock() = Some(a);
        }
    }
}

/// Probes `probe` through the tunnel and moves the peer to the next server when the one in
/// use stops answering.
async fn watch(
    device: Arc<Device>,
    template: PeerConfig,
    failover: Arc<Failover>,
    bind: std::net::Ipv4Addr,
    probe: SocketAddr,
) {
    let socket = match tokio::net::UdpSocket::bind((bind, 0)).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot probe the node: no failover");
            return;
        }
    };
    let mut every = tokio::time::interval(PROBE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let (mut last_reply, mut moved_at) = (Instant::now(), Instant::now());
    let mut seq = 0u64;
    let mut buf = [0u8; 64];
    loop {
        tokio::select! {
            _ = every.tick() => {
                seq += 1;
                let mut p = [0u8; 16];
                p[..8].copy_from_slice(crate::egress::PROBE_MAGIC);
                p[8..].copy_from_slice(&seq.to_be_bytes());
                let _ = socket.send_to(&p, probe).await;
                let now = Instant::now();
                if now.duration_since(last_reply) < PROBE_TIMEOUT || now.duration_since(moved_at) < SETTLE {
                    continue;
                }
                let n = failover.servers.len();
                let mut current = failover.current.lock();
                let (old, next) = (*current, (*current + 1) % n);
                let (key, endpoint) = failover.servers[next];
                device.remove_peer(&failover.servers[old].0);
                let config = PeerConfig { public_key: key, endpoint: Some(endpoint), ..template.clone() };
                if let Err(e) = device.upsert_peer(config) {
                    tracing::warn!(error = %e, "cannot move the tunnel");
                    continue;
                }
                *current = next;
                failover.moves.fetch_add(1, Relaxed);
                moved_at = now;
                tracing::warn!(server = %key, %endpoint, "the node stopped answering; the tunnel moved to a standby node");
            }
            got = socket.recv_from(&mut buf) => {
                if let Ok((16, from)) = got && from == probe && buf.starts_with(crate::egress::PROBE_MAGIC) {
                    last_reply = Instant::now();
                }
            }
        }
    }
}

/// Runs iproute2's `ip ARGS…` and returns what it printed, or its error in one line.
pub(crate) fn ip(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip (install iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The host route that keeps `endpoint` on the path it uses now (`via GW dev IF`).
fn pin_endpoint(endpoint: IpAddr) -> anyhow::Result<Option<String>> {
    let family = if endpoint.is_ipv4() { "-4" } else { "-6" };
    let route = ip(&[family, "route", "get", &endpoint.to_string()])?;
    let words: Vec<&str> = route.split_whitespace().collect();
    let after = |key: &str| {
        words
            .iter()
            .position(|w| *w == key)
            .and_then(|i| words.get(i + 1))
            .copied()
    };
    let Some(dev) = after("dev") else {
        return Ok(None);
    };
    let prefix = if endpoint.is_ipv4() { 32 } else { 128 };
    let dst = format!("{endpoint}/{prefix}");
    let mut args = vec![family, "route", "add", &dst];
    if let Some(via) = after("via") {
        args.extend(["via", via]);
    }
    args.extend(["dev", dev]);
    match ip(&args) {
        Ok(_) => Ok(Some(dst)),
        // A host route that is already there is someone else's: use it, leave it.
        Err(e) if e.to_string().contains("File exists") => Ok(None),
        Err(e) => Err(e),
    }
}

impl ClientTunnel {
    /// Brings the tunnel up as `name`.
    /// Brings the tunnel up as `name`; `account` signs its usage receipts.
    pub async fn start(
        config_text: &str,
        name: &str,
        account: ed25519_dalek::SigningKey,
    ) -> anyhow::Result<Self> {
        let config = wg_quick::parse(config_text).context("wg-quick config")?;
        let key = PrivateKey::from_base64(config.interface.private_key.as_deref().unwrap_or(""))
            .map_err(|e| anyhow::anyhow!("PrivateKey: {e}"))?;
        let client_key = key.public_key().to_base64();
        if config.peers.is_empty() {
            bail!("the config has no [Peer]");
        }
        let device = Arc::new(Device::new(&key));
        drop(key);
        let mut endpoints = Vec::new();
        let mut routes: Vec<IpNetwork> = Vec::new();
        for peer in &config.peers {
            let endpoint = match &peer.endpoint {
                Some(e) => Some(
                    tokio::net::lookup_host(e.as_str())
                        .await
                        .with_context(|| format!("resolving Endpoint {e}"))?
                        .next()
                        .with_context(|| format!("Endpoint {e} has no address"))?,
                ),
                None => None,
            };
            endpoints.extend(endpoint);
            device.upsert_peer(PeerConfig {
                public_key: peer.public_key,
                allowed_ips: peer.allowed_ips.clone(),
                endpoint,
                persistent_keepalive: peer.persistent_keepalive,
                preshared_key: None,
            })?;
            routes.extend(peer.allowed_ips.iter().copied());
        }
        let addresses = config.interface.addresses.clone();
        let interface = Interface::start(
            device,
            &InterfaceConfig {
                name: name.to_owned(),
                listen_port: config.interface.listen_port.unwrap_or(0),
                mtu: config.interface.mtu.unwrap_or(1420),
                addresses: addresses
                    .iter()
                    .map(|a| (a.network_address(), a.netmask()))
                    .collect(),
            },
        )
        .with_context(|| format!("starting client interface {name}"))?;
        // Standby nodes, when the config names them (one peer only: the node's).
        let probe =
            nx1_comments(config_text, PROBE_LINE).find_map(|p| p.parse::<SocketAddr>().ok());
        let mut servers = Vec::new();
        let mut node_ids = std::collections::HashMap::new();
        if let (Some(peer), Some(node)) = (
            config.peers.first(),
            nx1_comments(config_text, NODE_LINE).next(),
        ) {
            let via = nx1_comments(config_text, VIA_LINE)
                .next()
                .map(str::to_owned);
            node_ids.insert(peer.public_key, (node.to_owned(), via));
        }
        if let ([peer], Some(endpoint), Some(_)) =
            (config.peers.as_slice(), endpoints.first(), probe)
        {
            servers.push((peer.public_key, *endpoint));
            for line in nx1_comments(config_text, FALLBACK_LINE) {
                let mut words = line.split_whitespace();
                let (Some(key), Some(e)) = (words.next(), words.next()) else {
                    continue;
                };
                let Ok(key) = PublicKey::from_base64(key) else {
                    continue;
                };
                if let Some(node) = words.next() {
                    node_ids.insert(key, (node.to_owned(), None));
                }
                if let Ok(Some(addr)) = tokio::net::lookup_host(e).await.map(|mut a| a.next()) {
                    servers.push((key, addr));
                }
            }
        }
        let failover = (servers.len() > 1).then(|| {
            Arc::new(Failover {
                servers,
                ..Failover::default()
            })
        });
        let mut tunnel = Self {
            interface,
            endpoints: endpoints.clone(),
            addresses,
            failover: failover.clone(),
            receipts: Arc::default(),
            watcher: None,
            signer: None,
            host_routes: Vec::new(),
            via: nx1_comments(config_text, VIA_LINE)
                .next()
                .map(str::to_owned),
            node_port: None,
            protection: None,
        };
        // The endpoints' own routes first (the standby nodes' too), then the tunnel's routes;
        // on failure `Drop` undoes. Any route that covers an endpoint would carry the
        // tunnel's own datagrams into it.
        for e in &tunnel.servers() {
            if routes.iter().any(|r| r.contains(e.ip()))
                && let Some(r) = pin_endpoint(e.ip())?
            {
                tunnel.host_routes.push(r);
            }
        }
        for route in &routes {
            let family = if route.is_ipv4() { "-4" } else { "-6" };
            let halves: Vec<String> = match (route.netmask(), route.is_ipv4()) {
                (0, true) => vec!["0.0.0.0/1".into(), "128.0.0.0/1".into()],
                (0, false) => vec!["::/1".into(), "8000::/1".into()],
                _ => vec![route.to_string()],
            };
            for dst in halves {
                ip(&[family, "route", "replace", &dst, "dev", name])?;
            }
        }
        let bind = tunnel
            .addresses
            .iter()
            .find_map(|a| match a.network_address() {
                IpAddr::V4(v4) => Some(v4),
                IpAddr::V6(_) => None,
            });
        let receipts_to =
            nx1_comments(config_text, RECEIPTS_LINE).find_map(|p| p.parse::<SocketAddr>().ok());
        if let (Some(to), Some(bind)) = (receipts_to, bind) {
            tunnel.node_port = Some((to, bind));
            tunnel.signer = Some(tokio::spawn(sign_receipts(
                tunnel.interface.device().clone(),
                node_ids,
                to,
                bind,
                account,
                client_key,
                tunnel.receipts.clone(),
            )));
        }
        if let (Some(failover), Some(probe), Some(bind), [peer]) =
            (failover, probe, bind, config.peers.as_slice())
        {
            let template = PeerConfig {
                public_key: peer.public_key,
                allowed_ips: peer.allowed_ips.clone(),
                endpoint: None,
                persistent_keepalive: peer.persistent_keepalive,
                preshared_key: None,
            };
            tunnel.watcher = Some(tokio::spawn(watch(
                tunnel.interface.device().clone(),
                template,
                failover,
                bind,
                probe,
            )));
        }
        Ok(tunnel)
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        self.interface.name()
    }

    /// Takes the tunnel down and removes the endpoint's host route.
    pub fn stop(self) {}

    /// Asks the node, through the tunnel, to allow `domain` for this tunnel alone (its Guard
    /// blocked it for this device); returns the domain as allowed.
    pub async fn allow_at_node(&self, domain: &str) -> anyhow::Result<String> {
        let Some((to, bind)) = self.node_port else {
            bail!(
                "this tunnel's config does not say where its node takes requests (# nx1-receipts)"
            );
        };
        let socket = tokio::net::UdpSocket::bind((bind, 0)).await?;
        let request = serde_json::to_vec(&crate::credits::GuardAllow {
            guard_allow: domain.to_owned(),
        })?;
        // The node takes one request a tunnel at a time (receipts included): try a few times.
        let mut last = String::from("the node did not answer");
        for _ in 0..4 {
            socket.send_to(&request, to).await?;
            let mut buf = [0u8; 1024];
            match tokio::time::timeout(Duration::from_millis(1200), socket.recv_from(&mut buf))
                .await
            {
                Ok(Ok((n, from))) if from == to => {
                    let a: crate::credits::GuardAllowAnswer =
                        serde_json::from_slice(&buf[..n]).context("the node's answer")?;
                    match (a.allowed, a.refused) {
                        (Some(d), _) => return Ok(d),
                        (None, Some(why)) if why == crate::credits::RULE_BUSY => last = why,
                        (None, Some(why)) => bail!("the node refused: {why}"),
                        (None, None) => bail!("the node sent an empty answer"),
                    }
                }
                _ => {}
            }
        }
        bail!("{last}")
    }

    /// Every server the tunnel may send to: the endpoints and the standby nodes.
    pub fn servers(&self) -> Vec<SocketAddr> {
        let mut all = self.endpoints.clone();
        if let Some(f) = &self.failover {
            for (_, e) in &f.servers {
                if !all.contains(e) {
                    all.push(*e);
                }
            }
        }
        all
    }

    /// Keeps DNS (and with `kill_switch` everything) from leaving outside the tunnel, but
    /// for the node's own services on `own` ports.
    pub fn protect(
        &mut self,
        own: &nx1_vpn::killswitch::OwnPorts,
        kill_switch: bool,
    ) -> anyhow::Result<()> {
        let ks = nx1_vpn::killswitch::KillSwitch::install(
            self.name(),
            &self.servers(),
            own,
            kill_switch,
        )
        .context("leak protection")?;
        self.protection = Some(ks);
        Ok(())
    }
}

impl Drop for ClientTunnel {
    fn drop(&mut self) {
        for task in [self.watcher.take(), self.signer.take()]
            .into_iter()
            .flatten()
        {
            task.abort();
        }
        // Routes through the TUN device vanish with it; the pinned endpoint routes do not.
        for dst in self.host_routes.drain(..) {
            let family = if dst.contains(':') { "-6" } else { "-4" };
            let _ = ip(&[family, "route", "del", &dst]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = "[Interface]\nPrivateKey = yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=\nAddress = 10.87.0.2/32\n\n\
        [Peer]\nPublicKey = xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=\nEndpoint = 198.51.100.7:51820\nAllowedIPs = 0.0.0.0/0\n\
        PersistentKeepalive = 0\n\
        # nx1-node = EXIT\n# nx1-fallback = KEY 192.0.2.9:51820 OTHER\n# nx1-probe = 10.87.0.1:7872\n\
        # nx1-receipts = 10.87.0.1:7873\n";

    #[test]
    fn two_hop_points_the_peer_at_the_relay_and_names_it() {
        let out = through_relay(CONFIG, "203.0.113.4:51821", "RELAY");
        assert!(out.contains("Endpoint = 203.0.113.4:51821\n"), "{out}");
        assert!(!out.contains("198.51.100.7"), "{out}");
        assert!(out.contains("PersistentKeepalive = 25\n"), "{out}");
        assert!(!out.contains("PersistentKeepalive = 0"), "{out}");
        assert!(
            !out.contains("nx1-fallback") && !out.contains("nx1-probe"),
            "{out}"
        );
        assert!(out.contains("# nx1-receipts = 10.87.0.1:7873"), "{out}");
        assert_eq!(nx1_comments(&out, VIA_LINE).collect::<Vec<_>>(), ["RELAY"]);
        assert_eq!(nx1_comments(&out, NODE_LINE).collect::<Vec<_>>(), ["EXIT"]);
        // Still a config wg-quick reads, with the relay as the endpoint.
        let parsed = wg_quick::parse(&out).unwrap();
        assert_eq!(
            parsed.peers[0].endpoint.as_deref(),
            Some("203.0.113.4:51821")
        );
        assert_eq!(parsed.peers[0].persistent_keepalive, Some(25));
    }

    #[test]
    fn two_hop_never_panics_and_keeps_a_parsable_config_parsable() {
        // Configs built from a vocabulary of real and hostile lines, in random order.
        let lines = [
            "[Interface]",
            "[Peer]",
            "[peer]",
            "PrivateKey = yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=",
            "PublicKey = xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=",
            "Endpoint = 198.51.100.7:51820",
            "endpoint=[2001:db8::1]:1",
            "AllowedIPs = 0.0.0.0/0",
            "PersistentKeepalive = 0",
            "PersistentKeepalive = off",
            "PersistentKeepalive = 7",
            "# nx1-via = X",
            "# nx1-fallback = K 192.0.2.1:1 N",
            "#",
            "=",
            "Endpoint",
            "[",
            "",
            "\u{feff}[Peer]",
            "Endpoint = é:1",
        ];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..2000 {
            let mut text = String::new();
            for _ in 0..(x % 12) {
                x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                text.push_str(lines[(x >> 33) as usize % lines.len()]);
                text.push('\n');
            }
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let out = through_relay(&text, "203.0.113.4:51821", "R");
            assert_eq!(nx1_comments(&out, VIA_LINE).collect::<Vec<_>>(), ["R"]);
            if let Ok(before) = wg_quick::parse(&text)
                && before.peers.len() == 1
            {
                let after = wg_quick::parse(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
                assert_eq!(
                    after.peers[0].endpoint.as_deref(),
                    Some("203.0.113.4:51821"),
                    "{out}"
                );
                assert!(
                    after.peers[0].persistent_keepalive.unwrap_or(0) > 0,
                    "{out}"
                );
            }
        }
    }

    #[test]
    fn two_hop_adds_what_a_config_lacks_and_replaces_an_earlier_relay() {
        let bare = "[Interface]\nPrivateKey = yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=\n[Peer]\nPublicKey = xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=\nAllowedIPs = 0.0.0.0/0\n# nx1-via = OLD\n";
        let out = through_relay(bare, "[2001:db8::4]:51821", "NEW");
        let parsed = wg_quick::parse(&out).unwrap();
        assert_eq!(
            parsed.peers[0].endpoint.as_deref(),
            Some("[2001:db8::4]:51821")
        );
        assert_eq!(parsed.peers[0].persistent_keepalive, Some(25));
        assert_eq!(nx1_comments(&out, VIA_LINE).collect::<Vec<_>>(), ["NEW"]);
    }
}
