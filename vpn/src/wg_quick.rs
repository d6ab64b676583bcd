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

/// Why a wg-quick file could not be read. Never contains a key.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    /// A line outside any section, or an unknown section.
    #[error("line {0}: expected [Interface] or [Peer]")]
    Section(usize),
    /// A line that is not `Key = value`.
    #[error("line {0}: not `Key = value`")]
    NotKeyValue(usize),
    /// A key wg-quick does not have in that section.
    #[error("line {line}: unknown key {key}")]
    UnknownKey {
        /// 1-based line.
        line: usize,
        /// The key.
        key: String,
    },
    /// A value that does not parse.
    #[error("line {line}: bad {key}")]
    BadValue {
        /// 1-based line.
        line: usize,
        /// The key.
        key: String,
    },
    /// `[Interface]` or its `PrivateKey` is missing, or a peer has no `PublicKey`.
    #[error("missing {0}")]
    Missing(&'static str),
}

/// Keys wg-quick itself acts on (scripts, routing table, SaveConfig); accepted and ignored
/// here, as they configure the host around the tunnel rather than the tunnel.
const WG_QUICK_ONLY: &[&str] = &[
    "Table",
    "PreUp",
    "PostUp",
    "PreDown",
    "PostDown",
    "SaveConfig",
    "FwMark",
];

fn list(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|v| !v.is_empty())
}

/// Parses a wg-quick file. The private key must be present (`Interface.private_key` is
/// `Some`); a `PresharedKey` is not supported yet and is refused rather than ignored.
pub fn parse(text: &str) -> Result<Config, ParseError> {
    #[derive(PartialEq)]
    enum In {
        Nothing,
        Interface,
        Peer,
    }
    let mut section = In::Nothing;
    let mut config = Config::default();
    let mut seen_interface = false;
    let mut pending_peer: Option<(Option<PublicKey>, Peer)> = None;
    let finish =
        |p: Option<(Option<PublicKey>, Peer)>, peers: &mut Vec<Peer>| -> Result<(), ParseError> {
            if let Some((key, mut peer)) = p {
                peer.public_key = key.ok_or(ParseError::Missing("PublicKey in a [Peer]"))?;
                peers.push(peer);
            }
            Ok(())
        };
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        if line.starts_with('[') {
            finish(pending_peer.take(), &mut config.peers)?;
            section = match line.to_ascii_lowercase().as_str() {
                "[interface]" => {
                    seen_interface = true;
                    In::Interface
                }
                "[peer]" => {
                    pending_peer = Some((
                        None,
                        Peer {
                            public_key: PublicKey([0; 32]),
                            endpoint: None,
                            allowed_ips: Vec::new(),
                            persistent_keepalive: None,
                        },
                    ));
                    In::Peer
                }
                _ => return Err(ParseError::Section(line_no)),
            };
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .ok_or(ParseError::NotKeyValue(line_no))?;
        let (key, value) = (key.trim(), value.trim());
        let bad = || ParseError::BadValue {
            line: line_no,
            key: key.to_owned(),
        };
        let lower = key.to_ascii_lowercase();
        match (&section, lower.as_str()) {
            (In::Nothing, _) => return Err(ParseError::Section(line_no)),
            (In::Interface, "privatekey") => {
                crate::keys::PrivateKey::from_base64(value).map_err(|_| bad())?;
                config.interface.private_key = Some(value.to_owned());
            }
            (In::Interface, "address") => {
                for a in list(value) {
                    config
                        .interface
                        .addresses
                        .push(parse_address(a).ok_or_else(bad)?);
                }
            }
            (In::Interface, "dns") => {
                for d in list(value) {
                    // wg-quick also takes search domains here; only addresses matter to us.
                    if let Ok(ip) = d.parse() {
                        config.interface.dns.push(ip);
                    }
                }
            }
            (In::Interface, "listenport") => {
                config.interface.listen_port = Some(value.parse().map_err(|_| bad())?)
            }
            (In::Interface, "mtu") => {
                config.interface.mtu = Some(value.parse().map_err(|_| bad())?)
            }
            (In::Interface, _) if WG_QUICK_ONLY.iter().any(|k| k.eq_ignore_ascii_case(key)) => {}
            (In::Peer, "publickey") => {
                let k = PublicKey::from_base64(value).map_err(|_| bad())?;
                pending_peer.as_mut().expect("in a peer").0 = Some(k);
            }
            (In::Peer, "endpoint") => {
                let ok = value
                    .rsplit_once(':')
                    .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
                if !ok {
                    return Err(bad());
                }
                pending_peer.as_mut().expect("in a peer").1.endpoint = Some(value.to_owned());
            }
            (In::Peer, "allowedips") => {
                for a in list(value) {
                    let net = IpNetwork::from_str_truncate(a).map_err(|_| bad())?;
                    pending_peer
                        .as_mut()
                        .expect("in a peer")
                        .1
                        .allowed_ips
                        .push(net);
                }
            }
            (In::Peer, "persistentkeepalive") => {
                let k = if value == "off" {
                    0
                } else {
                    value.parse().map_err(|_| bad())?
                };
                pending_peer
                    .as_mut()
                    .expect("in a peer")
                    .1
                    .persistent_keepalive = (k > 0).then_some(k);
            }
            _ => {
                return Err(ParseError::UnknownKey {
                    line: line_no,
                    key: key.chars().take(40).collect(),
                });
            }
        }
    }
    finish(pending_peer.take(), &mut config.peers)?;
    if !seen_interface {
        return Err(ParseError::Missing("[Interface]"));
    }
    if config.interface.private_key.is_none() {
        return Err(ParseError::Missing("PrivateKey in [Interface]"));
    }
    Ok(config)
}

/// An interface address: `10.0.0.2/32`, `10.0.0.2` (a host), `fd00::2/128`.
fn parse_address(text: &str) -> Option<IpNetwork> {
    let (addr, prefix) = match text.split_once('/') {
        Some((a, p)) => (a.parse::<IpAddr>().ok()?, Some(p.parse::<u8>().ok()?)),
        None => (text.parse::<IpAddr>().ok()?, None),
    };
    let prefix = prefix.unwrap_or(if addr.is_ipv4() { 32 } else { 128 });
    IpNetwork::new_truncate(addr, prefix).ok().map(|n| {
        // Keep the host address itself: an interface address is a host, not a network.
        IpNetwork::new(addr, if addr.is_ipv4() { 32 } else { 128 }).unwrap_or(n)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::PrivateKey;

    #[test]
    fn rendered_configs_parse_back() {
        let key = PrivateKey::generate();
        let config = Config {
            interface: Interface {
                private_key: Some(key.to_base64().to_string()),
                addresses: vec!["10.87.0.2/32".parse().unwrap()],
                dns: vec!["10.87.0.1".parse().unwrap()],
                listen_port: Some(5000),
                mtu: Some(1380),
            },
            peers: vec![Peer {
                public_key: PrivateKey::generate().public_key(),
                endpoint: Some("vpn.example.org:51820".into()),
                allowed_ips: vec!["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()],
                persistent_keepalive: Some(25),
            }],
        };
        assert_eq!(parse(&config.render()).unwrap(), config);
    }

    #[test]
    fn wg_quick_files_from_elsewhere_parse() {
        let key = PrivateKey::generate();
        let peer = PrivateKey::generate().public_key();
        let text = format!(
            "# a comment\n[Interface]\nPrivateKey = {}\nAddress = 10.0.0.2/24, fd00::2/64\n\
             DNS = 1.1.1.1, example.lan\nPostUp = echo up # wg-quick's business\nTable = off\n\n\
             [Peer]\nPublicKey = {peer}\nAllowedIPs = 10.0.0.0/24,192.168.0.1/24\nEndpoint = [2001:db8::1]:51820\n\
             PersistentKeepalive = off\n",
            key.to_base64().as_str()
        );
        let c = parse(&text).unwrap();
        assert_eq!(
            c.interface.addresses,
            vec![
                "10.0.0.2/32".parse::<IpNetwork>().unwrap(),
                "fd00::2/128".parse::<IpNetwork>().unwrap()
            ]
        );
        assert_eq!(c.interface.dns, vec!["1.1.1.1".parse::<IpAddr>().unwrap()]);
        assert_eq!(
            c.peers[0].allowed_ips[1],
            "192.168.0.0/24".parse::<IpNetwork>().unwrap()
        );
        assert_eq!(c.peers[0].persistent_keepalive, None);
    }

    #[test]
    fn broken_files_say_which_line_and_never_show_a_key() {
        let key = PrivateKey::generate();
        let k = key.to_base64();
        for (text, want) in [
            ("PrivateKey = x\n".to_owned(), "line 1: expected"),
            ("[Interface]\n".to_owned(), "missing PrivateKey"),
            (
                format!("[Interface]\nPrivateKey = {}x\n", k.as_str()),
                "line 2: bad PrivateKey",
            ),
            (
                format!(
                    "[Interface]\nPrivateKey = {}\nAddress = 10.0.0.300\n",
                    k.as_str()
                ),
                "line 3: bad Address",
            ),
            (
                format!(
                    "[Interface]\nPrivateKey = {}\n[Peer]\nAllowedIPs = 0.0.0.0/0\n",
                    k.as_str()
                ),
                "missing PublicKey",
            ),
            (
                format!("[Interface]\nPrivateKey = {}\nColour = blue\n", k.as_str()),
                "unknown key Colour",
            ),
            (
                format!(
                    "[Interface]\nPrivateKey = {}\n[Peer]\nEndpoint = nowhere\n",
                    k.as_str()
                ),
                "bad Endpoint",
            ),
            (
                format!(
                    "[Interface]\nPrivateKey = {}\n[Peer]\nPresharedKey = {}\n",
                    k.as_str(),
                    k.as_str()
                ),
                "unknown key PresharedKey",
            ),
        ] {
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}: {err}");
            assert!(!err.contains(&k[..10]), "{err}");
        }
    }

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
