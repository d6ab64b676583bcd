//! Exit NAT: kernel forwarding plus an nftables table of the node's own that masquerades the
//! tunnel pools, clamps TCP MSS to the route MTU, lets into the tunnel only answers to
//! connections clients opened, and keeps clients from reaching each other. The table is replaced if a crashed run
//! left one behind, and removed — with forwarding restored — when the exit stops.
//!
//! Rules are loaded with `nft -f -` (the nftables tool is the supported interface to the
//! kernel's rule set; there is no maintained Rust netlink crate for it).

use ip_network::IpNetwork;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// Why the exit could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ExitError {
    /// `nft` is missing or failed.
    #[error("nftables: {0}")]
    Nft(String),
    /// A forwarding sysctl could not be written.
    #[error("cannot enable forwarding ({path}): {reason}")]
    Forwarding {
        /// The sysctl file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

/// The installed exit; [`ExitNat::remove`] undoes it.
#[derive(Debug)]
pub struct ExitNat {
    table: String,
    restore: Vec<(PathBuf, String)>,
    /// Whether a table left by an earlier run was found and replaced.
    pub replaced_stale: bool,
}

/// The nftables table name for an interface (`nx1_` + the name, `-` and `.` as `_`).
pub fn table_name(interface: &str) -> String {
    prefixed_table_name("nx1_", interface)
}

/// `prefix` + the interface's name with every character but ASCII letters and digits as `_`
/// (what an nftables table name may hold).
pub(crate) fn prefixed_table_name(prefix: &str, interface: &str) -> String {
    let clean: String = interface
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("{prefix}{clean}")
}

/// Loads `rules` (which create `table`), replacing a `table` an earlier run left behind;
/// returns whether there was one.
pub(crate) fn replace_table(table: &str, rules: &str) -> Result<bool, ExitError> {
    let stale = table_exists(table);
    let mut script = String::new();
    if stale {
        script.push_str(&format!("delete table inet {table}\n"));
    }
    script.push_str(rules);
    nft(&script)?;
    Ok(stale)
}

pub(crate) fn nft(script: &str) -> Result<(), ExitError> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| ExitError::Nft(format!("cannot run nft (install nftables): {e}")))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(script.as_bytes())
        .map_err(|e| ExitError::Nft(e.to_string()))?;
    let out = child
        .wait_with_output()
        .map_err(|e| ExitError::Nft(e.to_string()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(ExitError::Nft(
            String::from_utf8_lossy(&out.stderr)
                .trim()
                .replace('\n', " "),
        ))
    }
}

/// Whether the table exists in this network namespace.
pub fn table_exists(table: &str) -> bool {
    Command::new("nft")
        .args(["list", "table", "inet", table])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The nftables script for `interface` and its pools.
pub fn ruleset(interface: &str, pools: &[IpNetwork]) -> String {
    let table = table_name(interface);
    let mut masquerade = String::new();
    for pool in pools {
        let family = if matches!(pool, IpNetwork::V4(_)) {
            "ip"
        } else {
            "ip6"
        };
        masquerade.push_str(&format!(
            "    {family} saddr {pool} oifname != \"{interface}\" masquerade\n"
        ));
    }
    let forward = format!(
        "    iifname \"{interface}\" tcp flags syn / syn,rst tcp option maxseg size set rt mtu\n\
         \x20   oifname \"{interface}\" tcp flags syn / syn,rst tcp option maxseg size set rt mtu\n\
         \x20   iifname \"{interface}\" oifname \"{interface}\" drop\n\
         \x20   oifname \"{interface}\" ct state established,related accept\n\
         \x20   oifname \"{interface}\" drop\n"
    );
    table_script(&table, &masquerade, &forward)
}

/// A table with a NAT chain (after routing) and a filter chain (forwarded packets).
fn table_script(table: &str, nat: &str, forward: &str) -> String {
    format!(
        "table inet {table} {{\n\
         \x20 chain postrouting {{\n\
         \x20   type nat hook postrouting priority srcnat; policy accept;\n\
         {nat}\
         \x20 }}\n\
         \x20 chain forward {{\n\
         \x20   type filter hook forward priority mangle; policy accept;\n\
         {forward}\
         \x20 }}\n\
         }}\n"
    )
}

/// The nftables script for a node that sends its clients out through another node's exit,
/// over its own interface: the pools are SNATed to the node's transit addresses (`snat`, one
/// per family) as they leave into the tunnel, clients cannot reach each other, and only
/// answers to connections clients opened come back to them.
pub fn egress_ruleset(interface: &str, pools: &[IpNetwork], snat: &[std::net::IpAddr]) -> String {
    let table = table_name(interface);
    let (mut nat, mut filter) = (String::new(), String::new());
    for pool in pools {
        let v4 = matches!(pool, IpNetwork::V4(_));
        let family = if v4 { "ip" } else { "ip6" };
        if let Some(to) = snat.iter().find(|a| a.is_ipv4() == v4) {
            nat.push_str(&format!(
                "    oifname \"{interface}\" {family} saddr {pool} {family} daddr != {pool} snat {family} to {to}\n"
            ));
        }
        filter.push_str(&format!(
            "    iifname \"{interface}\" oifname \"{interface}\" {family} saddr {pool} {family} daddr {pool} drop\n\
             \x20   oifname \"{interface}\" {family} daddr {pool} ct state established,related accept\n\
             \x20   oifname \"{interface}\" {family} daddr {pool} drop\n"
        ));
    }
    let forward = format!(
        "    oifname \"{interface}\" tcp flags syn / syn,rst tcp option maxseg size set rt mtu\n{filter}"
    );
    table_script(&table, &nat, &forward)
}

fn enable_forwarding(path: &str, restore: &mut Vec<(PathBuf, String)>) -> Result<(), ExitError> {
    let path = PathBuf::from(path);
    let fail = |e: std::io::Error| ExitError::Forwarding {
        path: path.clone(),
        reason: e.to_string(),
    };
    let before = std::fs::read_to_string(&path).map_err(fail)?;
    if before.trim() != "1" {
        std::fs::write(&path, "1\n").map_err(fail)?;
        restore.push((path.clone(), before));
    }
    Ok(())
}

/// With IPv6 forwarding on, the kernel ignores router advertisements on interfaces with
/// `accept_ra = 1`, and a host configured by SLAAC would lose its IPv6 default route. `2`
/// keeps accepting them while forwarding.
fn keep_router_advertisements(restore: &mut Vec<(PathBuf, String)>) {
    let Ok(entries) = std::fs::read_dir("/proc/sys/net/ipv6/conf") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if name == "all" || name == "default" || name == "lo" {
            continue;
        }
        let path = entry.path().join("accept_ra");
        if let Ok(value) = std::fs::read_to_string(&path)
            && value.trim() == "1"
            && std::fs::write(&path, "2\n").is_ok()
        {
            restore.push((path, value));
        }
    }
}

impl ExitNat {
    /// Enables forwarding and installs the table for `interface`, replacing a stale one.
    pub fn install(interface: &str, pools: &[IpNetwork]) -> Result<Self, ExitError> {
        Self::install_script(interface, pools, &ruleset(interface, pools))
    }

    /// Like [`ExitNat::install`], for a node whose clients leave through another node's exit
    /// ([`egress_ruleset`]).
    pub fn install_egress(
        interface: &str,
        pools: &[IpNetwork],
        snat: &[std::net::IpAddr],
    ) -> Result<Self, ExitError> {
        Self::install_script(interface, pools, &egress_ruleset(interface, pools, snat))
    }

    fn install_script(
        interface: &str,
        pools: &[IpNetwork],
        rules: &str,
    ) -> Result<Self, ExitError> {
        let table = table_name(interface);
        let replaced_stale = replace_table(&table, rules)?;
        let mut exit = Self {
            table,
            restore: Vec::new(),
            replaced_stale,
        };
        enable_forwarding("/proc/sys/net/ipv4/ip_forward", &mut exit.restore)?;
        if pools.iter().any(|p| matches!(p, IpNetwork::V6(_))) {
            keep_router_advertisements(&mut exit.restore);
            enable_forwarding("/proc/sys/net/ipv6/conf/all/forwarding", &mut exit.restore)?;
        }
        Ok(exit)
    }

    /// The table's name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The sysctl values this exit changed and will restore, as (file, original value). A
    /// caller that keeps them on disk can hand them to [`ExitNat::adopt_originals`] after a
    /// crash, when the running system only shows the values this exit set.
    pub fn originals(&self) -> &[(PathBuf, String)] {
        &self.restore
    }

    /// Takes originals saved by an earlier run that did not stop cleanly: for every file this
    /// run did not change itself (it already had the exit's value), the saved value is the one
    /// to restore.
    pub fn adopt_originals(&mut self, saved: Vec<(PathBuf, String)>) {
        for (path, value) in saved {
            if !self.restore.iter().any(|(p, _)| *p == path) {
                self.restore.push((path, value));
            }
        }
    }

    /// Removes the table and restores the forwarding settings found at start.
    pub fn remove(mut self) {
        self.undo();
    }

    fn undo(&mut self) {
        if !self.table.is_empty() {
            if let Err(e) = nft(&format!("delete table inet {}\n", self.table)) {
                tracing::warn!(table = %self.table, error = %e, "removing the exit table failed");
            }
            self.table.clear();
        }
        for (path, value) in self.restore.drain(..) {
            let _ = std::fs::write(&path, value);
        }
    }
}

impl Drop for ExitNat {
    fn drop(&mut self) {
        self.undo();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ruleset_masquerades_each_pool_leaving_by_another_interface() {
        let rules = ruleset(
            "nx1-e",
            &[
                "10.87.0.0/16".parse().unwrap(),
                "fd00:87::/64".parse().unwrap(),
            ],
        );
        assert!(rules.starts_with("table inet nx1_nx1_e {"), "{rules}");
        assert!(rules.contains("ip saddr 10.87.0.0/16 oifname != \"nx1-e\" masquerade"));
        assert!(rules.contains("ip6 saddr fd00:87::/64 oifname != \"nx1-e\" masquerade"));
        assert!(rules.contains("maxseg size set rt mtu"));
        assert!(rules.contains("oifname \"nx1-e\" ct state established,related accept"));
        assert!(rules.contains("iifname \"nx1-e\" oifname \"nx1-e\" drop"));
    }

    #[test]
    fn the_egress_ruleset_snats_each_pool_into_the_tunnel() {
        let rules = egress_ruleset(
            "nx1",
            &[
                "10.87.0.0/16".parse().unwrap(),
                "fd00:87::/64".parse().unwrap(),
            ],
            &["100.64.1.2".parse().unwrap(), "fd87:7e::1".parse().unwrap()],
        );
        assert!(rules.contains(
            "oifname \"nx1\" ip saddr 10.87.0.0/16 ip daddr != 10.87.0.0/16 snat ip to 100.64.1.2"
        ), "{rules}");
        assert!(rules.contains(
            "oifname \"nx1\" ip6 saddr fd00:87::/64 ip6 daddr != fd00:87::/64 snat ip6 to fd87:7e::1"
        ));
        assert!(rules.contains("ip saddr 10.87.0.0/16 ip daddr 10.87.0.0/16 drop"));
        assert!(
            rules.contains(
                "oifname \"nx1\" ip daddr 10.87.0.0/16 ct state established,related accept"
            )
        );
    }
}
