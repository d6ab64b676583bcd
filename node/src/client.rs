//! Client mode (`nx1 connect FILE`): a tunnel from a standard wg-quick config, on the same
//! `vpn` data plane as the exit. Routes for `0.0.0.0/0` and `::/0` are installed as two
//! halves (`0.0.0.0/1` + `128.0.0.0/1`), so the host's own default route stays untouched, and
//! the server's endpoint keeps a host route through the old default so the tunnel's own
//! datagrams never enter it. Routes are set with iproute2's `ip`.

use anyhow::{Context as _, bail};
use nx1_vpn::IpNetwork;
use nx1_vpn::device::Device;
use nx1_vpn::io::{Interface, InterfaceConfig};
use nx1_vpn::keys::PrivateKey;
use nx1_vpn::peer::PeerConfig;
use nx1_vpn::wg_quick;
use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::sync::Arc;

/// A running client tunnel.
pub struct ClientTunnel {
    /// The interface and its device.
    pub interface: Interface,
    /// The server endpoints (resolved).
    pub endpoints: Vec<SocketAddr>,
    /// The tunnel addresses.
    pub addresses: Vec<IpNetwork>,
    host_routes: Vec<String>,
}

fn ip(args: &[&str]) -> anyhow::Result<String> {
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
    pub async fn start(config_text: &str, name: &str) -> anyhow::Result<Self> {
        let config = wg_quick::parse(config_text).context("wg-quick config")?;
        let key = PrivateKey::from_base64(config.interface.private_key.as_deref().unwrap_or(""))
            .map_err(|e| anyhow::anyhow!("PrivateKey: {e}"))?;
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
        let mut tunnel = Self {
            interface,
            endpoints: endpoints.clone(),
            addresses,
            host_routes: Vec::new(),
        };
        // The endpoint's own route first, then the tunnel's routes; on failure `Drop` undoes.
        // Any route that covers an endpoint would carry the tunnel's own datagrams into it.
        for e in &endpoints {
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
        Ok(tunnel)
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        self.interface.name()
    }

    /// Takes the tunnel down and removes the endpoint's host route.
    pub fn stop(self) {}
}

impl Drop for ClientTunnel {
    fn drop(&mut self) {
        // Routes through the TUN device vanish with it; the pinned endpoint routes do not.
        for dst in self.host_routes.drain(..) {
            let family = if dst.contains(':') { "-6" } else { "-4" };
            let _ = ip(&[family, "route", "del", &dst]);
        }
    }
}
