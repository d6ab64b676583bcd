//! The WireGuard cross-platform userspace API (`wg(8)`'s protocol on
//! `/var/run/wireguard/IFNAME.sock`): requests are parsed and answers rendered here, as pure
//! functions over text, so the parser can be fuzzed and the socket lives with the caller.
//!
//! Reference: <https://www.wireguard.com/xplatform/>.

use crate::device::Device;
use crate::keys::PublicKey;
use std::fmt::Write as _;
use std::net::SocketAddr;
use zeroize::Zeroizing;

/// Longest request read from a client.
pub const MAX_REQUEST: usize = 1 << 20;

/// Why a request could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UapiError {
    /// First line is neither `get=1` nor `set=1`.
    #[error("unknown operation {0:?}")]
    UnknownOperation(String),
    /// A line is not `key=value`.
    #[error("line {0}: not key=value")]
    NotKeyValue(usize),
    /// A key this protocol does not have, or one out of place.
    #[error("line {line}: unexpected key {key:?}")]
    UnexpectedKey {
        /// 1-based line.
        line: usize,
        /// The key.
        key: String,
    },
    /// A value that does not parse.
    #[error("line {line}: bad value for {key}")]
    BadValue {
        /// 1-based line.
        line: usize,
        /// The key.
        key: String,
    },
    /// No blank line at the end.
    #[error("request not terminated by an empty line")]
    Unterminated,
}

impl UapiError {
    /// The errno reported to the client (`EINVAL`, `EPROTO`).
    pub fn errno(&self) -> i32 {
        match self {
            UapiError::UnknownOperation(_) => 71,
            _ => 22,
        }
    }
}

/// Changes to one peer in a `set` request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerChange {
    /// The peer.
    pub public_key: [u8; 32],
    /// `remove=true`
    pub remove: bool,
    /// `update_only=true`
    pub update_only: bool,
    /// `preshared_key=`
    pub preshared_key: Option<[u8; 32]>,
    /// `endpoint=`
    pub endpoint: Option<SocketAddr>,
    /// `persistent_keepalive_interval=`
    pub persistent_keepalive: Option<u16>,
    /// `replace_allowed_ips=true`
    pub replace_allowed_ips: bool,
    /// `allowed_ip=` lines.
    pub allowed_ips: Vec<ip_network::IpNetwork>,
}

/// A parsed `set=1` request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SetRequest {
    /// `private_key=` (hex).
    pub private_key: Option<Zeroizing<[u8; 32]>>,
    /// `listen_port=`
    pub listen_port: Option<u16>,
    /// `fwmark=`
    pub fwmark: Option<u32>,
    /// `replace_peers=true`
    pub replace_peers: bool,
    /// Per-peer changes, in order.
    pub peers: Vec<PeerChange>,
}

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `get=1`
    Get,
    /// `set=1`
    Set(SetRequest),
}

fn hex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn flag(v: &str) -> Option<bool> {
    match v {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

/// Parses one request (everything up to and including the terminating empty line).
pub fn parse_request(text: &str) -> Result<Request, UapiError> {
    if !text.ends_with("\n\n") {
        return Err(UapiError::Unterminated);
    }
    let mut lines = text[..text.len() - 2].split('\n').enumerate();
    let (_, first) = lines.next().ok_or(UapiError::Unterminated)?;
    match first {
        "get=1" => {
            return match lines.next() {
                None => Ok(Request::Get),
                Some((i, l)) => Err(UapiError::UnexpectedKey {
                    line: i + 1,
                    key: l.to_owned(),
                }),
            };
        }
        "set=1" => {}
        other => {
            return Err(UapiError::UnknownOperation(
                other.chars().take(32).collect(),
            ));
        }
    }
    let mut set = SetRequest::default();
    for (i, line) in lines {
        let line_no = i + 1;
        let (key, value) = line
            .split_once('=')
            .ok_or(UapiError::NotKeyValue(line_no))?;
        let bad = || UapiError::BadValue {
            line: line_no,
            key: key.to_owned(),
        };
        let peer = set.peers.last_mut();
        match (key, peer) {
            ("private_key", None) => {
                set.private_key = Some(Zeroizing::new(hex32(value).ok_or_else(bad)?))
            }
            ("listen_port", None) => set.listen_port = Some(value.parse().map_err(|_| bad())?),
            ("fwmark", None) => set.fwmark = Some(value.parse().map_err(|_| bad())?),
            ("replace_peers", None) => set.replace_peers = flag(value).ok_or_else(bad)?,
            ("public_key", _) => set.peers.push(PeerChange {
                public_key: hex32(value).ok_or_else(bad)?,
                ..Default::default()
            }),
            ("remove", Some(p)) => p.remove = flag(value).ok_or_else(bad)?,
            ("update_only", Some(p)) => p.update_only = flag(value).ok_or_else(bad)?,
            ("preshared_key", Some(p)) => p.preshared_key = Some(hex32(value).ok_or_else(bad)?),
            ("endpoint", Some(p)) => p.endpoint = Some(value.parse().map_err(|_| bad())?),
            ("persistent_keepalive_interval", Some(p)) => {
                p.persistent_keepalive = Some(value.parse().map_err(|_| bad())?)
            }
            ("replace_allowed_ips", Some(p)) => {
                p.replace_allowed_ips = flag(value).ok_or_else(bad)?
            }
            ("allowed_ip", Some(p)) => p
                .allowed_ips
                .push(ip_network::IpNetwork::from_str_truncate(value).map_err(|_| bad())?),
            ("protocol_version", Some(_)) if value == "1" => {}
            ("protocol_version", Some(_)) => return Err(bad()),
            _ => {
                return Err(UapiError::UnexpectedKey {
                    line: line_no,
                    key: key.chars().take(64).collect(),
                });
            }
        }
    }
    Ok(Request::Set(set))
}

/// The answer to `get=1`: the interface and every peer, then `errno=0` and an empty line.
/// It holds the private key (as wireguard-go's does; the socket is mode 0600, for the
/// daemon's own user), so it is wiped on drop.
pub fn render_get(device: &Device, listen_port: u16) -> Zeroizing<String> {
    let mut s = Zeroizing::new(String::with_capacity(512));
    let private = Zeroizing::new(hex(device.private.as_bytes()));
    let _ = writeln!(s, "private_key={}", private.as_str());
    let _ = writeln!(s, "listen_port={listen_port}");
    for peer in device.peer_stats() {
        let _ = writeln!(s, "public_key={}", peer.public_key.to_hex());
        let _ = writeln!(s, "protocol_version=1");
        if let Some(e) = peer.endpoint {
            let _ = writeln!(s, "endpoint={e}");
        }
        let (sec, nsec) = peer
            .last_handshake
            .map_or((0, 0), |d| (d.as_secs(), d.subsec_nanos()));
        let _ = writeln!(s, "last_handshake_time_sec={sec}");
        let _ = writeln!(s, "last_handshake_time_nsec={nsec}");
        let _ = writeln!(s, "tx_bytes={}", peer.tx_bytes);
        let _ = writeln!(s, "rx_bytes={}", peer.rx_bytes);
        let _ = writeln!(
            s,
            "persistent_keepalive_interval={}",
            peer.persistent_keepalive.unwrap_or(0)
        );
        for ip in &peer.allowed_ips {
            let _ = writeln!(s, "allowed_ip={ip}");
        }
    }
    s.push_str("errno=0\n\n");
    s
}

/// The answer to a `set` that was carried out (0) or refused with a (positive) errno value,
/// written negated as wireguard-go does and as `wg(8)` expects.
pub fn render_errno(errno: i32) -> String {
    format!("errno={}\n\n", -errno.abs())
}

/// The peers a `set` request removes, if removal is all it does.
pub fn only_removals(set: &SetRequest) -> Option<Vec<PublicKey>> {
    let plain = set.private_key.is_none()
        && set.listen_port.is_none()
        && set.fwmark.is_none()
        && !set.replace_peers
        && !set.peers.is_empty();
    let removals = set.peers.iter().all(|p| {
        p.remove
            && p.preshared_key.is_none()
            && p.endpoint.is_none()
            && p.persistent_keepalive.is_none()
            && !p.replace_allowed_ips
            && p.allowed_ips.is_empty()
    });
    (plain && removals).then(|| set.peers.iter().map(|p| PublicKey(p.public_key)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::PrivateKey;
    use crate::peer::PeerConfig;

    #[test]
    fn get_is_parsed_and_nothing_may_follow_it() {
        assert_eq!(parse_request("get=1\n\n"), Ok(Request::Get));
        assert!(parse_request("get=1\nx=1\n\n").is_err());
        assert_eq!(parse_request("get=1\n"), Err(UapiError::Unterminated));
        assert!(matches!(
            parse_request("rm=1\n\n"),
            Err(UapiError::UnknownOperation(_))
        ));
    }

    #[test]
    fn a_peer_removal_is_recognised() {
        let key = PrivateKey::generate().public_key();
        let req = parse_request(&format!(
            "set=1\npublic_key={}\nremove=true\n\n",
            key.to_hex()
        ))
        .unwrap();
        let Request::Set(set) = req else { panic!() };
        assert_eq!(only_removals(&set), Some(vec![key]));
    }

    #[test]
    fn other_changes_are_parsed_but_are_not_removals() {
        let key = PrivateKey::generate().public_key().to_hex();
        let text = format!(
            "set=1\nlisten_port=1234\nreplace_peers=true\npublic_key={key}\nendpoint=[::1]:5\n\
             allowed_ip=10.0.0.0/8\nallowed_ip=fd00::/8\npersistent_keepalive_interval=25\nprotocol_version=1\n\n"
        );
        let Request::Set(set) = parse_request(&text).unwrap() else {
            panic!()
        };
        assert_eq!(set.listen_port, Some(1234));
        assert_eq!(set.peers[0].allowed_ips.len(), 2);
        assert_eq!(set.peers[0].endpoint, Some("[::1]:5".parse().unwrap()));
        assert_eq!(only_removals(&set), None);
    }

    #[test]
    fn hostile_requests_are_errors_with_a_line() {
        for (text, want) in [
            ("set=1\nremove=true\n\n", "unexpected key"),
            ("set=1\nlisten_port=99999\n\n", "bad value"),
            ("set=1\npublic_key=zz\n\n", "bad value"),
            ("set=1\nnonsense\n\n", "not key=value"),
            (
                "set=1\npublic_key=0000000000000000000000000000000000000000000000000000000000000000\nprotocol_version=2\n\n",
                "bad value",
            ),
            (
                "set=1\npublic_key=000000000000000000000000000000000000000000000000000000000000000é\n\n",
                "bad value",
            ),
        ] {
            let err = parse_request(text).unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }

    #[test]
    fn errors_are_reported_negated_like_wireguard_go() {
        assert_eq!(render_errno(0), "errno=0\n\n");
        assert_eq!(render_errno(1), "errno=-1\n\n");
    }

    #[test]
    fn get_renders_what_wg_show_reads() {
        let key = PrivateKey::generate();
        let device = Device::new(&key);
        let peer = PrivateKey::generate().public_key();
        device
            .upsert_peer(PeerConfig {
                public_key: peer,
                allowed_ips: vec!["10.87.0.2/32".parse().unwrap()],
                endpoint: Some("198.18.1.2:4000".parse().unwrap()),
                persistent_keepalive: Some(25),
                preshared_key: None,
            })
            .unwrap();
        let text = render_get(&device, 51820);
        assert!(text.starts_with(&format!(
            "private_key={}\nlisten_port=51820\n",
            hex(&*key.to_bytes())
        )));
        assert!(text.contains(&format!("public_key={}\n", peer.to_hex())));
        assert!(text.contains("endpoint=198.18.1.2:4000\n"));
        assert!(text.contains("last_handshake_time_sec=0\n"));
        assert!(text.contains("allowed_ip=10.87.0.2/32\n"));
        assert!(text.ends_with("errno=0\n\n"));
    }
}
