//! Cryptokey routing: the allowed-IPs table maps an inner address to the peer that owns it,
//! by longest prefix (whitepaper §2). Outbound it picks the peer for a destination; inbound it
//! checks that a decrypted packet's source belongs to the peer that sent it.

use ip_network::IpNetwork;
use ip_network_table::IpNetworkTable;
use std::net::IpAddr;

/// A longest-prefix-match table from networks to `T`.
pub struct AllowedIps<T> {
    table: IpNetworkTable<T>,
}

impl<T> Default for AllowedIps<T> {
    fn default() -> Self {
        Self {
            table: IpNetworkTable::new(),
        }
    }
}

impl<T> AllowedIps<T> {
    /// Routes `network` to `value`, replacing an earlier owner of exactly that network.
    pub fn insert(&mut self, network: IpNetwork, value: T) -> Option<T> {
        self.table.insert(network, value)
    }

    /// The owner of the most specific network containing `addr`.
    pub fn lookup(&self, addr: IpAddr) -> Option<&T> {
        self.table.longest_match(addr).map(|(_, v)| v)
    }

    /// Removes every network whose value matches `pred`.
    pub fn remove_where(&mut self, mut pred: impl FnMut(&T) -> bool) {
        self.table.retain(|_, v| !pred(v));
    }

    /// Removes every network that matches `pred`, whoever owns it.
    pub fn remove_where_network(&mut self, mut pred: impl FnMut(IpNetwork) -> bool) {
        self.table.retain(|net, _| !pred(net));
    }

    /// Every (network, value) pair.
    pub fn iter(&self) -> impl Iterator<Item = (IpNetwork, &T)> {
        self.table.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNetwork {
        s.parse().unwrap()
    }

    #[test]
    fn the_longest_prefix_wins_for_v4_and_v6() {
        let mut t = AllowedIps::default();
        t.insert(net("0.0.0.0/0"), "default");
        t.insert(net("10.0.0.0/8"), "ten");
        t.insert(net("10.1.2.3/32"), "host");
        t.insert(net("fd00::/8"), "ula");
        assert_eq!(t.lookup("10.1.2.3".parse().unwrap()), Some(&"host"));
        assert_eq!(t.lookup("10.1.2.4".parse().unwrap()), Some(&"ten"));
        assert_eq!(t.lookup("192.0.2.1".parse().unwrap()), Some(&"default"));
        assert_eq!(t.lookup("fd12::1".parse().unwrap()), Some(&"ula"));
        assert_eq!(t.lookup("2001:db8::1".parse().unwrap()), None);
    }

    #[test]
    fn removing_a_peer_removes_all_its_routes() {
        let mut t = AllowedIps::default();
        t.insert(net("10.0.0.2/32"), 1);
        t.insert(net("fd00::2/128"), 1);
        t.insert(net("10.0.0.3/32"), 2);
        t.remove_where(|v| *v == 1);
        assert_eq!(t.lookup("10.0.0.2".parse().unwrap()), None);
        assert_eq!(t.lookup("fd00::2".parse().unwrap()), None);
        assert_eq!(t.lookup("10.0.0.3".parse().unwrap()), Some(&2));
        assert_eq!(t.iter().count(), 1);
    }
}
