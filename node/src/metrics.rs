//! Prometheus metrics for `/metrics`, in the OpenMetrics text format.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

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
}

impl Metrics {
    /// Registers everything under the `nx1_` prefix.
    pub fn new(node_id: &str) -> Self {
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
        Self {
            registry,
            uptime_seconds,
            control_requests,
            control_bad_requests,
            health_checks,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_carries_counters_and_build_info() {
        let m = Metrics::new("abc=");
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
