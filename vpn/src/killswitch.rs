//! The client's kill switch and DNS-leak protection: an nftables table of the tunnel's own
//! (`nx1ks_` + the interface) in the output hook of this host.
//!
//! - **DNS-leak protection** (always, while the table is in): DNS (port 53, TCP and UDP) and
//!   DNS over TLS (TCP 853) leave only through the tunnel. Queries that would take another
//!   way — to a resolver the host route of a server points outside, or from a program bound
//!   to the physical interface — are dropped and counted.
//! - **Kill switch** (when asked for): nothing leaves except through the tunnel, over
//!   loopback, or as the tunnel's own datagrams to its servers (the one in use and the
//!   standby nodes). When the tunnel's server stops answering, traffic stops instead of
//!   taking the host's own route.
//!
//! The node's own services (its WireGuard port, relay and mesh ports, HTTP API) keep
//! answering from their ports: their traffic is the node's duty, not the user's.
//!
//! The table is replaced if one was left behind, and removed when the tunnel goes down. If
//! the daemon dies, the table stays: traffic stays blocked (fail closed) until the tunnel is
//! brought up again or `nx1 disconnect` removes what a crashed run left ([`remove_stale`]).
//! Rules are loaded with `nft -f -`, as for the exit (see [`crate::exit`]).

use crate::exit::{ExitError, nft, prefixed_table_name, replace_table};
use std::net::SocketAddr;

/// The table's name for an interface.
pub fn table_name(interface: &str) -> String {
    prefixed_table_name("nx1ks_", interface)
}

/// Source ports whose traffic is the node's own services'.
#[derive(Debug, Default, Clone)]
pub struct OwnPorts {
    /// UDP ports (WireGuard, relay, mesh).
    pub udp: Vec<u16>,
    /// TCP ports (the HTTP API).
    pub tcp: Vec<u16>,
}

/// The rules for `interface`, its servers, and whether everything else is blocked too.
pub fn ruleset(
    interface: &str,
    servers: &[SocketAddr],
    own: &OwnPorts,
    kill_switch: bool,
) -> String {
    let table = table_name(interface);
    let mut allow_servers = String::new();
    for s in servers {
        let family = if s.is_ipv4() { "ip" } else { "ip6" };
        allow_servers.push_str(&format!(
            "        {family} daddr {} udp dport {} accept\n",
            s.ip(),
            s.port()
        ));
    }
    for (proto, ports) in [("udp", &own.udp), ("tcp", &own.tcp)] {
        let ports: Vec<String> = ports
            .iter()
            .filter(|p| **p != 0)
            .map(u16::to_string)
            .collect();
        if !ports.is_empty() {
            allow_servers.push_str(&format!(
                "        {proto} sport {{ {} }} accept\n",
                ports.join(", ")
            ));
        }
    }
    let block_rest = if kill_switch {
        "        counter name outside_tunnel drop\n"
    } else {
        ""
    };
    format!(
        "table inet {table} {{
    counter dns_outside_tunnel {{ }}
    counter outside_tunnel {{ }}
    chain output {{
        type filter hook output priority 0; policy accept;
        oifname \"lo\" accept
        oifname \"{interface}\" accept
{allow_servers}        udp dport 53 counter name dns_outside_tunnel drop
        tcp dport {{ 53, 853 }} counter name dns_outside_tunnel drop
{block_rest}    }}
}}
"
    )
}

/// The installed table; removed when dropped.
#[derive(Debug)]
pub struct KillSwitch {
    table: String,
    /// Whether everything outside the tunnel is blocked (else only DNS).
    pub blocks_all: bool,
}

/// Packets the table stopped: DNS outside the tunnel, and everything else outside it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Blocked {
    /// DNS packets dropped.
    pub dns_packets: u64,
    /// Other packets dropped (kill switch).
    pub other_packets: u64,
}

impl KillSwitch {
    /// Installs the table for `interface` and its `servers`.
    pub fn install(
        interface: &str,
        servers: &[SocketAddr],
        own: &OwnPorts,
        kill_switch: bool,
    ) -> Result<KillSwitch, ExitError> {
        let table = table_name(interface);
        replace_table(&table, &ruleset(interface, servers, own, kill_switch))?;
        Ok(KillSwitch {
            table,
            blocks_all: kill_switch,
        })
    }

    /// The table's name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// What the table dropped so far (zero when it cannot be read).
    pub fn blocked(&self) -> Blocked {
        let out = std::process::Command::new("nft")
            .args(["list", "counters", "table", "inet", &self.table])
            .output();
        let text = match out {
            Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
            _ => return Blocked::default(),
        };
        Blocked {
            dns_packets: counter_packets(&text, "dns_outside_tunnel"),
            other_packets: counter_packets(&text, "outside_tunnel"),
        }
    }
}

/// Removes the tables a run that did not stop cleanly left (every `nx1ks_` table in this
/// network namespace); returns their names.
pub fn remove_stale() -> Vec<String> {
    let Ok(out) = std::process::Command::new("nft")
        .args(["list", "tables", "inet"])
        .output()
    else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some(name) = line.trim().strip_prefix("table inet ")
            && name.starts_with("nx1ks_")
            && nft(&format!("delete table inet {name}\n")).is_ok()
        {
            removed.push(name.to_owned());
        }
    }
    removed
}

/// The packets of a named counter in `nft list counters` output.
fn counter_packets(listing: &str, name: &str) -> u64 {
    let mut lines = listing.lines();
    while let Some(l) = lines.next() {
        if l.trim() == format!("counter {name} {{") {
            for l in lines.by_ref() {
                let mut words = l.split_whitespace();
                while let Some(w) = words.next() {
                    if w == "packets" {
                        return words.next().and_then(|n| n.parse().ok()).unwrap_or(0);
                    }
                }
                if l.trim() == "}" {
                    break;
                }
            }
        }
    }
    0
}

impl Drop for KillSwitch {
    fn drop(&mut self) {
        if let Err(e) = nft(&format!("delete table inet {}\n", self.table)) {
            tracing::warn!(table = %self.table, error = %e, "removing the kill switch table failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rules_let_the_tunnel_and_its_servers_out_and_stop_dns_elsewhere() {
        let servers: Vec<SocketAddr> = vec![
            "198.51.100.7:51820".parse().unwrap(),
            "[2001:db8::7]:51821".parse().unwrap(),
        ];
        let own = OwnPorts {
            udp: vec![51820, 0],
            tcp: vec![7870],
        };
        let dns_only = ruleset("nx1c", &servers, &own, false);
        assert!(dns_only.contains("udp sport { 51820 } accept"));
        assert!(dns_only.contains("tcp sport { 7870 } accept"));
        assert!(dns_only.contains("table inet nx1ks_nx1c {"));
        assert!(dns_only.contains("oifname \"nx1c\" accept"));
        assert!(dns_only.contains("ip daddr 198.51.100.7 udp dport 51820 accept"));
        assert!(dns_only.contains("ip6 daddr 2001:db8::7 udp dport 51821 accept"));
        assert!(dns_only.contains("udp dport 53 counter name dns_outside_tunnel drop"));
        assert!(!dns_only.contains("counter name outside_tunnel drop"));
        let all = ruleset("nx1c", &servers, &OwnPorts::default(), true);
        assert!(!all.contains("sport"));
        assert!(all.contains("counter name outside_tunnel drop"));
        // The server rules come before the drops.
        assert!(all.find("udp dport 51820").unwrap() < all.find("dport 53 ").unwrap());
    }

    #[test]
    fn counters_are_read_from_nft_output() {
        let listing = "table inet nx1ks_nx1c {\n\tcounter dns_outside_tunnel {\n\t\tpackets 3 bytes 180\n\t}\n\n\tcounter outside_tunnel {\n\t\tpackets 12 bytes 1008\n\t}\n}\n";
        assert_eq!(counter_packets(listing, "dns_outside_tunnel"), 3);
        assert_eq!(counter_packets(listing, "outside_tunnel"), 12);
        assert_eq!(counter_packets(listing, "missing"), 0);
        assert_eq!(counter_packets("garbage {", "outside_tunnel"), 0);
    }
}
