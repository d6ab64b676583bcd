//! wg-quick configuration files: the `[Interface]` / `[Peer]` INI dialect read by `wg-quick`,
//! the official apps and NetworkManager.

use crate::keys::PublicKey;
use ip_network::IpNetwork;
use std::fmt::Write as _;
use std::net::IpAddr;

/// The `[Interface]` section.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Interface {
    /// Base64 private key; `None` writes a commented placeholder for a key held elsewhere.
    pub private_key: Option<String>,
    /// `Address =`
    pub addresses: Vec<IpNetwork>,
    /// `DNS =`
    pub dns: Vec<IpAddr>,
    /// `ListenPort =`
    pub listen_port: Option<u16>,
    /// `MTU =`
    pub mtu: Option<u16>,
}

/// One `[Peer]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// `PublicKey =`
    pub public_key: PublicKey,
    /// `Endpoint =` (host:port; a host name is allowed)
    pub endpoint: Option<String>,
    /// `AllowedIPs =`
    pub allowed_ips: Vec<IpNetwork>,
    /// `PersistentKeepalive =`
    pub persistent_keepalive: Option<u16>,
}

/// A whole wg-quick file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Config {
    /// `[Interface]`
    pub interface: Interface,
    /// `[Peer]` sections.
    pub peers: Vec<Peer>,
}

fn join<T: std::fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

impl Config {
    /// The file's text.
    pub fn render(&self) -> String {
        let mut s = String::from("[Interface]\n");
        match &self.interface.private_key {
            Some(k) => writeln!(s, "PrivateKey = {k}").unwrap(),
            None => s.push_str(
                "# PrivateKey = (the private key you generated; it never left your device)\n",
            ),
        }
        if !self.interface.addresses.is_empty() {
            writeln!(s, "Address = {}", join(&self.interface.addresses)).unwrap();
        }
        if !self.interface.dns.is_empty() {
            writeln!(s, "DNS = {}", join(&self.interface.dns)).unwrap();
        }
        if let Some(p) = self.interface.listen_port {
            writeln!(s, "ListenPort = {p}").unwrap();
        }
        if let Some(m) = self.interface.mtu {
            writeln!(s, "MTU = {m}").unwrap();
        }
        for peer in &self.peers {
            s.push_str("\n[Peer]\n");
            writeln!(s, "PublicKey = {}", peer.public_key).unwrap();
            if let Some(e) = &peer.endpoint {
                writeln!(s, "Endpoint = {e}").unwrap();
            }
            writeln!(s, "AllowedIPs = {}", join(&peer.allowed_ips)).unwrap();
            if let Some(k) = peer.persistent_keepalive {
                writeln!(s, "PersistentKeepalive = {k}").unwrap();
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::PrivateKey;

    #[test]
    fn a_client_config_renders_every_standard_key() {
        let server = PrivateKey::generate().public_key();
        let text = Config {
            interface: Interface {
                private_key: Some("cGxhY2Vob2xkZXI=".into()),
                addresses: vec![
                    "10.87.0.2/32".parse().unwrap(),
                    "fd00:87::2/128".parse().unwrap(),
                ],
                dns: vec!["10.87.0.1".parse().unwrap()],
                ..Default::default()
            },
            peers: vec![Peer {
                public_key: server,
                endpoint: Some("198.18.1.1:51820".into()),
                allowed_ips: vec!["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()],
                persistent_keepalive: Some(25),
            }],
        }
        .render();
        assert_eq!(
            text,
            format!(
                "[Interface]\nPrivateKey = cGxhY2Vob2xkZXI=\nAddress = 10.87.0.2/32, fd00:87::2/128\n\
                 DNS = 10.87.0.1\n\n[Peer]\nPublicKey = {server}\nEndpoint = 198.18.1.1:51820\n\
                 AllowedIPs = 0.0.0.0/0, ::/0\nPersistentKeepalive = 25\n"
            )
        );
    }
}
