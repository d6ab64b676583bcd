//! Prometheus metrics for `/metrics`, in the OpenMetrics text format.

use crate::vpn::VpnService;
use nx1_vpn::device::Device;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

/// Label set for control-socket requests.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CommandLabel {
    /// The request's name.
    pub command: &'static str,
}

/// Label set for outcomes.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// `ok` or `error`.
    pub result: &'static str,
}

/// Every metric the node exports.
pub struct Metrics {
    registry: Registry,
    /// Seconds since start, refreshed at each scrape.
    pub uptime_seconds: Gauge,
    /// Control-socket requests by command.
    pub control_requests: Family<CommandLabel, Counter>,
    /// Control-socket requests that could not be parsed.
    pub control_bad_requests: Counter,
    /// Health checks by result.
    pub health_checks: Family<ResultLabel, Counter>,
    /// Mesh members by state, at the last look.
    pub mesh_members: Family<StateLabel, Gauge>,
    /// Gossip members whose record was refused, by reason, at the last look.
    pub mesh_refused: Family<ReasonLabel, Gauge>,
}

/// A state label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    /// The state.
    pub state: &'static str,
}

/// A reason label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// The reason.
    pub reason: &'static str,
}

impl Metrics {
    /// Registers everything under the `nx1_` prefix.
    pub fn new(
        node_id: &str,
        vpn: Option<Arc<VpnService>>,
        guard: Option<Arc<crate::guard::GuardService>>,
        flows: Option<Arc<crate::guard::FlowGuard>>,
        vault: Option<&crate::vault::VaultService>,
        relay: Option<Arc<crate::relay::RelayService>>,
        receipts: Arc<crate::credits::ReceiptCounters>,
    ) -> Self {
        let mut registry = Registry::with_prefix("nx1");
        registry.register(
            "build",
            "Software version and node id",
            Info::new(vec![
                ("version", env!("CARGO_PKG_VERSION").to_owned()),
                ("node_id", node_id.to_owned()),
            ]),
        );
        let uptime_seconds = Gauge::default();
        registry.register(
            "uptime_seconds",
            "Seconds since the daemon started",
            uptime_seconds.clone(),
        );
        let control_requests = Family::<CommandLabel, Counter>::default();
        registry.register(
            "control_requests",
            "Control-socket requests by command",
            control_requests.clone(),
        );
        let control_bad_requests = Counter::default();
        registry.register(
            "control_bad_requests",
            "Control-socket requests that could not be parsed",
            control_bad_requests.clone(),
        );
        let health_checks = Family::<ResultLabel, Counter>::default();
        registry.register(
            "health_checks",
            "Health checks by result",
            health_checks.clone(),
        );
        let mesh_members = Family::<StateLabel, Gauge>::default();
        registry.register(
            "mesh_members",
            "Mesh members with a verified record, by state (live, dead)",
            mesh_members.clone(),
        );
        let mesh_refused = Family::<ReasonLabel, Gauge>::default();
        registry.register(
            "mesh_records_refused",
            "Gossip members whose record was refused, by reason",
            mesh_refused.clone(),
        );
        if let Some(vault) = vault {
            registry.register(
                "vault_requests",
                "Vault API requests by call and answer status",
                vault.requests.clone(),
            );
        }
        if let Some(vpn) = vpn {
            registry.register_collector(Box::new(VpnCollector(vpn)));
        }
        if let Some(guard) = guard {
            registry.register_collector(Box::new(GuardCollector(guard, flows)));
        }
        if let Some(relay) = relay {
            registry.register_collector(Box::new(RelayCollector(relay)));
        }
        registry.register_collector(Box::new(ReceiptCollector(receipts)));
        Self {
            registry,
            uptime_seconds,
            control_requests,
            control_bad_requests,
            health_checks,
            mesh_members,
            mesh_refused,
        }
    }

    /// Sets the mesh gauges from a look at the directory.
    pub fn observe_mesh(
        &self,
        dir: &crate::mesh::Directory,
        refused: &std::collections::BTreeMap<&'static str, u64>,
    ) {
        for state in ["live", "dead"] {
            let n = dir.members.values().filter(|m| m.state == state).count();
            self.mesh_members
                .get_or_create(&StateLabel { state })
                .set(n as i64);
        }
        for reason in [
            "malformed",
            "bad_id",
            "signature",
            "wrong_member",
            "expired",
            "version",
        ] {
            self.mesh_refused
                .get_or_create(&ReasonLabel { reason })
                .set(refused.get(reason).copied().unwrap_or(0) as i64);
        }
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// Device-wide drop counters by reason.
pub fn device_drops(device: &Device) -> Vec<(&'static str, u64)> {
    let c = &device.counters;
    vec![
        ("malformed", c.malformed.load(Relaxed)),
        ("bad_mac", c.bad_mac.load(Relaxed)),
        ("cookie_reply", c.cookie_replies.load(Relaxed)),
        ("rate_limited", c.rate_limited.load(Relaxed)),
        ("unknown_peer", c.unknown_peer.load(Relaxed)),
        ("rejected", c.rejected.load(Relaxed)),
        ("bad_source", c.bad_source.load(Relaxed)),
        ("no_route", c.no_route.load(Relaxed)),
        ("no_endpoint", c.no_endpoint.load(Relaxed)),
        ("guard", c.inspected_drops.load(Relaxed)),
        ("over_budget", c.over_budget.load(Relaxed)),
        ("unpaid", c.unpaid.load(Relaxed)),
    ]
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabel {
    peer: String,
}

/// Reads the WireGuard counters at each scrape.
struct VpnCollector(Arc<VpnService>);

impl std::fmt::Debug for VpnCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("VpnCollector")
    }
}

impl Collector for VpnCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let peers = self.0.device.peer_stats();
        type Pick = fn(&nx1_vpn::peer::PeerStats) -> u64;
        let series: [(&str, &str, Pick); 5] = [
            (
                "peer_rx_bytes",
                "Bytes received from a peer (outer datagrams)",
                |s| s.rx_bytes,
            ),
            (
                "peer_tx_bytes",
                "Bytes sent to a peer (outer datagrams)",
                |s| s.tx_bytes,
            ),
            ("peer_rx_packets", "Datagrams received from a peer", |s| {
                s.rx_packets
            }),
            ("peer_tx_packets", "Datagrams sent to a peer", |s| {
                s.tx_packets
            }),
            (
                "peer_drops",
                "Datagrams or packets of a peer that were dropped",
                |s| s.drops,
            ),
        ];
        for (name, help, pick) in series {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for s in &peers {
                let label = PeerLabel {
                    peer: s.public_key.to_base64(),
                };
                ConstCounter::new(pick(s)).encode(family.encode_family(&label)?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "wireguard_drops",
            "Datagrams and packets dropped by the WireGuard device, by reason",
            None,
            MetricType::Counter,
        )?;
        for (reason, value) in device_drops(&self.0.device) {
            ConstCounter::new(value).encode(family.encode_family(&ReasonLabel { reason })?)?;
        }
        Ok(())
    }
}

/// Reads the usage-receipt counters at each scrape.
struct ReceiptCollector(Arc<crate::credits::ReceiptCounters>);

impl std::fmt::Debug for ReceiptCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReceiptCollector")
    }
}

impl Collector for ReceiptCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let taken = encoder.encode_descriptor(
            "receipts_taken",
            "Usage receipts taken (new sessions and raised totals)",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(self.0.taken.load(Relaxed)).encode(taken)?;
        let mut family = encoder.encode_descriptor(
            "receipts_refused",
            "Usage receipts refused, by reason",
            None,
            MetricType::Counter,
        )?;
        for (reason, n) in self.0.refused.lock().iter() {
            ConstCounter::new(*n).encode(family.encode_family(&ReasonLabel { reason })?)?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabel {
    direction: &'static str,
}

/// Reads the relay's counters at each scrape.
struct RelayCollector(Arc<crate::relay::RelayService>);

impl std::fmt::Debug for RelayCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RelayCollector")
    }
}

impl Collector for RelayCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let relay = &self.0.relay;
        let c = &relay.counters;
        for (name, help, to_exit, to_client) in [
            (
                "relay_packets",
                "Datagrams relayed, by direction",
                &c.to_exit_packets,
                &c.to_client_packets,
            ),
            (
                "relay_bytes",
                "Bytes relayed, by direction",
                &c.to_exit_bytes,
                &c.to_client_bytes,
            ),
        ] {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (direction, value) in [("to_exit", to_exit), ("to_client", to_client)] {
                ConstCounter::new(value.load(Relaxed))
                    .encode(family.encode_family(&DirectionLabel { direction })?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "relay_dropped",
            "Datagrams the relay did not forward, by reason",
            None,
            MetricType::Counter,
        )?;
        for (reason, value) in crate::relay::drops(relay) {
            ConstCounter::new(value).encode(family.encode_family(&ReasonLabel { reason })?)?;
        }
        for (name, help, value) in [
            ("relay_sessions", "Sessions the relay holds", &c.sessions),
            ("relay_exits", "Exits the relay forwards to", &c.exits),
        ] {
            let encoder = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            ConstGauge::new(value.load(Relaxed) as i64).encode(encoder)?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListLabel {
    list: String,
}

/// Reads Guard's DNS counters at each scrape.
struct GuardCollector(
    Arc<crate::guard::GuardService>,
    Option<Arc<crate::guard::FlowGuard>>,
);

impl std::fmt::Debug for GuardCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GuardCollector")
    }
}

impl Collector for GuardCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let c = &self.0.counters;
        let mut family = encoder.encode_descriptor(
            "guard_dns_queries",
            "DNS queries on the tunnel addresses, by outcome",
            None,
            MetricType::Counter,
        )?;
        for (outcome, value) in [
            ("blocked", c.blocked.load(Relaxed)),
            ("forwarded", c.forwarded.load(Relaxed)),
            ("malformed", c.malformed.load(Relaxed)),
            ("upstream_failure", c.upstream_failures.load(Relaxed)),
            ("rebinding", c.rebinding.load(Relaxed)),
            ("cached", c.cache_hits.load(Relaxed)),
            ("tunnelling", c.tunnelling.load(Relaxed)),
            ("model_blocked", c.model_blocks.load(Relaxed)),
        ] {
            ConstCounter::new(value).encode(family.encode_family(&OutcomeLabel { outcome })?)?;
        }
        let mut family = encoder.encode_descriptor(
            "guard_findings",
            "Guard findings since the start, by the list or detector that made them",
            None,
            MetricType::Counter,
        )?;
        for (list, n) in self.0.finding_counts() {
            ConstCounter::new(n).encode(family.encode_family(&ListLabel { list })?)?;
        }
        if let Some(flows) = &self.1 {
            let t = flows.table();
            for (name, help, value) in [
                ("guard_flows", "Flows the exit tracks now", t.flows as i64),
                (
                    "guard_flow_capacity",
                    "Flows the exit tracks at most ([guard] max_flows)",
                    t.capacity as i64,
                ),
                (
                    "guard_flow_emergency",
                    "1 while the flow table is nearly full (idle flows expire sooner, no peer gets more than its share)",
                    i64::from(t.emergency),
                ),
                (
                    "guard_quarantined_peers",
                    "Peers whose traffic Guard drops for now",
                    flows.quarantined() as i64,
                ),
            ] {
                let metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
                ConstGauge::new(value).encode(metric)?;
            }
            let metric = encoder.encode_descriptor(
                "guard_quarantines",
                "Times Guard quarantined a peer",
                None,
                MetricType::Counter,
            )?;
            ConstCounter::new(flows.quarantines.load(Relaxed)).encode(metric)?;
            let metric = encoder.encode_descriptor(
                "guard_flows_untracked",
                "Packets of flows not tracked for lack of room in the flow table",
                None,
                MetricType::Counter,
            )?;
            ConstCounter::new(t.counters.untracked).encode(metric)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_carries_counters_and_build_info() {
        let m = Metrics::new("abc=", None, None, None, None, None, Arc::default());
        m.control_requests
            .get_or_create(&CommandLabel { command: "status" })
            .inc();
        m.uptime_seconds.set(7);
        let text = m.encode();
        assert!(
            text.contains("nx1_control_requests_total{command=\"status\"} 1"),
            "{text}"
        );
        assert!(text.contains("nx1_uptime_seconds 7"), "{text}");
        assert!(text.contains("node_id=\"abc=\""), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
