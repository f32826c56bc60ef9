//! Prometheus metrics, served as text on the admin listener at `GET /metrics`.
//!
//! One [`Metrics`] per process, registered in its own [`Registry`] (not the global default one) so
//! that several gateways started in one test process do not collide. Admin-side metrics are
//! grouped first; the SIP side adds its counters in the marked section below.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Latency buckets (seconds) for admin requests: sub-millisecond reads up to multi-second
/// cohort uploads.
const ADMIN_LATENCY_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 15.0,
];

/// Every metric the gateway exports.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// The standard `process_*` metrics (CPU, memory, file descriptors), kept unprefixed in a
    /// registry of their own so stock dashboards and alerts find them.
    process: Registry,
    // --- admin API ---
    /// Admin requests by method, route pattern (never the raw path: bounded cardinality) and status.
    pub admin_requests: IntCounterVec,
    /// Admin request latency by route pattern.
    pub admin_request_seconds: HistogramVec,
    /// Admin connections open right now (bounded by `[admin] max_connections`).
    pub admin_connections_open: IntGauge,
    /// Admin connections closed at accept because `[admin] max_connections` were already open.
    pub admin_connections_rejected: IntCounter,
    /// Admin connections closed because the request head (or the next one on an idle keep-alive
    /// connection) did not arrive within the header read timeout.
    pub admin_header_timeouts: IntCounter,
    /// Admin requests whose body stalled past `[admin] body_timeout_secs` (answered 408).
    pub admin_body_timeouts: IntCounter,
    // --- routing table ---
    /// Version of the routing snapshot currently served.
    pub routing_table_version: IntGauge,
    /// Phone numbers in the current snapshot.
    pub routing_numbers: IntGauge,
    /// Snapshot swaps (one per applied batch of changes, local or from another gateway).
    pub routing_snapshot_swaps: IntCounter,
    /// Changes from other gateway instances that were applied (PostgreSQL LISTEN/NOTIFY).
    pub remote_changes_applied: IntCounter,
    /// Time from a store write's commit to the routing table swap, seconds.
    pub routing_apply_seconds: Histogram,
    // --- cohorts and probes ---
    /// Cohort rows by outcome (`valid` / `rejected`).
    pub cohort_rows: IntCounterVec,
    /// Agent runtime probes by outcome (`ready` / `error`).
    pub runtime_probes: IntCounterVec,
    // --- SIP (the SIP side adds its counters below this line) ---
}

impl Metrics {
    /// Creates and registers every metric. Fails only on a programming error (duplicate name).
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new_custom(Some("switchboard".to_owned()), None)?;
        let process = Registry::new();
        process.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        let build_info = IntGaugeVec::new(
            Opts::new(
                "build_info",
                "Always 1; the version label says which build runs",
            ),
            &["version"],
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        registry.register(Box::new(build_info))?;
        let admin_requests = IntCounterVec::new(
            Opts::new(
                "admin_requests_total",
                "Admin API requests by method, route and status",
            ),
            &["method", "route", "status"],
        )?;
        let admin_request_seconds = HistogramVec::new(
            HistogramOpts::new(
                "admin_request_duration_seconds",
                "Admin API request latency",
            )
            .buckets(ADMIN_LATENCY_BUCKETS.to_vec()),
            &["route"],
        )?;
        let admin_connections_open = IntGauge::new(
            "admin_connections_open",
            "Admin API connections currently open",
        )?;
        let admin_connections_rejected = IntCounter::new(
            "admin_connections_rejected_total",
            "Admin API connections closed at accept because max_connections were open",
        )?;
        let admin_header_timeouts = IntCounter::new(
            "admin_header_timeouts_total",
            "Admin API connections closed because request headers did not arrive in time",
        )?;
        let admin_body_timeouts = IntCounter::new(
            "admin_body_timeouts_total",
            "Admin API requests answered 408 because the body stalled past body_timeout_secs",
        )?;
        let routing_table_version = IntGauge::new(
            "routing_table_version",
            "Version of the routing snapshot in use",
        )?;
        let routing_numbers =
            IntGauge::new("routing_numbers", "Phone numbers in the routing snapshot")?;
        let routing_snapshot_swaps =
            IntCounter::new("routing_snapshot_swaps_total", "Routing snapshot swaps")?;
        let remote_changes_applied = IntCounter::new(
            "routing_remote_changes_total",
            "Changes committed by other gateway instances and applied here",
        )?;
        let routing_apply_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "routing_apply_duration_seconds",
                "Time to apply a committed change to the routing table",
            )
            .buckets(vec![0.00001, 0.0001, 0.001, 0.01, 0.1, 1.0]),
        )?;
        let cohort_rows = IntCounterVec::new(
            Opts::new("cohort_rows_total", "Cohort rows processed by outcome"),
            &["outcome"],
        )?;
        let runtime_probes = IntCounterVec::new(
            Opts::new(
                "runtime_probes_total",
                "Agent runtime health probes by outcome",
            ),
            &["outcome"],
        )?;
        registry.register(Box::new(admin_requests.clone()))?;
        registry.register(Box::new(admin_request_seconds.clone()))?;
        registry.register(Box::new(admin_connections_open.clone()))?;
        registry.register(Box::new(admin_connections_rejected.clone()))?;
        registry.register(Box::new(admin_header_timeouts.clone()))?;
        registry.register(Box::new(admin_body_timeouts.clone()))?;
        registry.register(Box::new(routing_table_version.clone()))?;
        registry.register(Box::new(routing_numbers.clone()))?;
        registry.register(Box::new(routing_snapshot_swaps.clone()))?;
        registry.register(Box::new(remote_changes_applied.clone()))?;
        registry.register(Box::new(routing_apply_seconds.clone()))?;
        registry.register(Box::new(cohort_rows.clone()))?;
        registry.register(Box::new(runtime_probes.clone()))?;
        Ok(Self {
            registry,
            process,
            admin_requests,
            admin_request_seconds,
            admin_connections_open,
            admin_connections_rejected,
            admin_header_timeouts,
            admin_body_timeouts,
            routing_table_version,
            routing_numbers,
            routing_snapshot_swaps,
            remote_changes_applied,
            routing_apply_seconds,
            cohort_rows,
            runtime_probes,
        })
    }

    /// The registry, for the SIP side to register its own collectors.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Renders every registered metric in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Encoding into a String cannot fail for well-formed families; an error would leave a
        // partial page, which Prometheus reports as a scrape error.
        let mut families = self.registry.gather();
        families.extend(self.process.gather());
        if let Err(e) = TextEncoder::new().encode_utf8(&families, &mut out) {
            tracing::warn!(error = %e, "metrics encoding failed");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_registered_metrics_in_text_format() {
        let m = Metrics::new().unwrap();
        m.admin_requests
            .with_label_values(&["GET", "/healthz", "200"])
            .inc();
        m.routing_table_version.set(7);
        let text = m.render();
        assert!(text.contains("switchboard_admin_requests_total{method=\"GET\",route=\"/healthz\",status=\"200\"} 1"), "{text}");
        assert!(
            text.contains("switchboard_routing_table_version 7"),
            "{text}"
        );
        let version = env!("CARGO_PKG_VERSION");
        assert!(
            text.contains(&format!(
                "switchboard_build_info{{version=\"{version}\"}} 1"
            )),
            "{text}"
        );
        assert!(text.contains("\nprocess_resident_memory_bytes "), "{text}");
    }
}
