//! Process-wide counters, rendered as Prometheus text by `prometheus-client`.
//!
//! Hot paths count per batch (one atomic add per publish or per fan-out), never per
//! subscriber.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use ringcast_protocol::ErrorCode;

/// Every metric of the server.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Open connections (HTTP and WebSocket).
    pub connections: Gauge,
    /// Connections accepted since start.
    pub connections_accepted: Counter,
    /// Messages published.
    pub messages_published: Counter,
    /// Messages written to subscribers' queues.
    pub deliveries: Counter,
    /// Connections closed with 4008.
    pub slow_consumer_closes: Counter,
    /// Error events and HTTP errors, by code.
    pub errors: Family<Vec<(String, String)>, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("ringcast");
        let connections = Gauge::default();
        let connections_accepted = Counter::default();
        let messages_published = Counter::default();
        let deliveries = Counter::default();
        let slow_consumer_closes = Counter::default();
        let errors = Family::<Vec<(String, String)>, Counter>::default();
        registry.register("connections", "Open connections", connections.clone());
        registry.register(
            "connections_accepted",
            "Connections accepted",
            connections_accepted.clone(),
        );
        registry.register(
            "messages_published",
            "Messages published",
            messages_published.clone(),
        );
        registry.register(
            "deliveries",
            "Messages queued to subscribers",
            deliveries.clone(),
        );
        registry.register(
            "slow_consumer_closes",
            "Connections closed because their outbound buffer was full",
            slow_consumer_closes.clone(),
        );
        registry.register("errors", "Errors answered, by code", errors.clone());
        for code in ErrorCode::ALL {
            let _ = errors.get_or_create(&vec![("code".to_owned(), code.as_str().to_owned())]);
        }
        Metrics {
            registry,
            connections,
            connections_accepted,
            messages_published,
            deliveries,
            slow_consumer_closes,
            errors,
        }
    }

    /// Counts one error answered with `code`.
    pub fn error(&self, code: &str) {
        self.errors
            .get_or_create(&vec![("code".to_owned(), code.to_owned())])
            .inc();
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_documented_names() {
        let metrics = Metrics::new();
        metrics.slow_consumer_closes.inc();
        metrics.error("bad_request");
        let text = metrics.render();
        for name in [
            "ringcast_connections ",
            "ringcast_connections_accepted_total",
            "ringcast_messages_published_total",
            "ringcast_deliveries_total",
            "ringcast_slow_consumer_closes_total 1",
            "ringcast_errors_total{code=\"bad_request\"} 1",
        ] {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
    }
}
