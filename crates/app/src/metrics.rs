//! A server's metrics, in Prometheus' text format: requests by transport, method and outcome,
//! their latency, entities per lookup, requests in flight and refused for load, pushes and
//! materialized rows by view, each view's online watermark, training-set builds by outcome
//! and the jobs running, the online store's size and whether it answered, and a
//! materialization's progress. Transports count requests; use cases count what they did.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Every metric of one server.
pub struct Metrics {
    registry: Registry,
    /// Requests by transport, method and outcome code (`OK`, `NOT_FOUND`, …).
    pub requests: IntCounterVec,
    /// Seconds from a request's arrival to its response (its first byte, for streams).
    pub latency: HistogramVec,
    /// Entities asked for per lookup.
    pub entities: Histogram,
    /// Requests being answered now.
    pub in_flight: IntGauge,
    /// Rows pushed, by view.
    pub pushed_rows: IntCounterVec,
    /// Entity rows written by materializations through this server, by view.
    pub materialized_rows: IntCounterVec,
    /// Each view's online watermark, seconds since the epoch (read from the store).
    pub watermark: IntGaugeVec,
    /// The online store's size in bytes, where the backend tells (read when scraped): sled's
    /// files, or a Redis server's used memory (every key on it, not only this project's).
    pub store_bytes: IntGauge,
    /// 1 if the online store answered the last scrape's reads in time, else 0 (and the
    /// gauges read from it are dropped rather than left stale).
    pub store_up: IntGauge,
    /// Entities stored per view, where the backend counts them cheaply (read when scraped).
    pub stored_entities: IntGaugeVec,
    /// Materializations through this server running now.
    pub materializing: IntGauge,
    /// Entity rows written so far by the running (or last) materialization of each view.
    pub materialize_progress: IntGaugeVec,
    /// Training-set builds (jobs and Flight streams) ended, by outcome.
    pub builds: IntCounterVec,
    /// Training-set builds running now.
    pub builds_running: IntGauge,
    /// Training-set builds waiting for a slot.
    pub builds_queued: IntGauge,
}

fn must<T>(r: prometheus::Result<T>) -> T {
    // Only a name or label clash fails, and the names are fixed here.
    r.unwrap_or_else(|e| panic!("metric definition: {e}"))
}

impl Metrics {
    /// A fresh set of metrics.
    pub fn new() -> Metrics {
        let registry =
            Registry::new_custom(Some("quiver".into()), None).unwrap_or_else(|_| Registry::new());
        let requests = must(IntCounterVec::new(
            Opts::new("requests_total", "Requests answered, by outcome"),
            &["transport", "method", "code"],
        ));
        let latency = must(HistogramVec::new(
            HistogramOpts::new("request_seconds", "Time to answer a request").buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            &["transport", "method"],
        ));
        let entities = must(Histogram::with_opts(
            HistogramOpts::new("lookup_entities", "Entities asked for per lookup").buckets(vec![
                1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 5000.0,
            ]),
        ));
        let in_flight = must(IntGauge::new(
            "requests_in_flight",
            "Requests being answered",
        ));
        let pushed_rows = must(IntCounterVec::new(
            Opts::new("pushed_rows_total", "Rows pushed"),
            &["view"],
        ));
        let materialized_rows = must(IntCounterVec::new(
            Opts::new("materialized_rows_total", "Entity rows materialized"),
            &["view"],
        ));
        let watermark = must(IntGaugeVec::new(
            Opts::new(
                "online_watermark_seconds",
                "The time a view's online values are materialized to",
            ),
            &["view"],
        ));
        let store_bytes = must(IntGauge::new(
            "online_store_bytes",
            "The online store's size in bytes",
        ));
        let store_up = must(IntGauge::new(
            "online_store_up",
            "Whether the online store answered the last scrape in time",
        ));
        let stored_entities = must(IntGaugeVec::new(
            Opts::new("online_entities", "Entities stored in the online store"),
            &["view"],
        ));
        let materializing = must(IntGauge::new(
            "materializations_running",
            "Materializations running",
        ));
        let materialize_progress = must(IntGaugeVec::new(
            Opts::new(
                "materialize_progress_rows",
                "Entity rows written by the running or last materialization",
            ),
            &["view"],
        ));
        let builds = must(IntCounterVec::new(
            Opts::new("training_builds_total", "Training-set builds ended"),
            &["outcome"],
        ));
        let builds_running = must(IntGauge::new(
            "training_builds_running",
            "Training-set builds running",
        ));
        let builds_queued = must(IntGauge::new(
            "training_builds_queued",
            "Training-set builds waiting for a slot",
        ));
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(latency.clone()),
            Box::new(entities.clone()),
            Box::new(in_flight.clone()),
            Box::new(pushed_rows.clone()),
            Box::new(materialized_rows.clone()),
            Box::new(watermark.clone()),
            Box::new(store_bytes.clone()),
            Box::new(store_up.clone()),
            Box::new(stored_entities.clone()),
            Box::new(materializing.clone()),
            Box::new(materialize_progress.clone()),
            Box::new(builds.clone()),
            Box::new(builds_running.clone()),
            Box::new(builds_queued.clone()),
        ] {
            must(registry.register(c));
        }
        Metrics {
            registry,
            requests,
            latency,
            entities,
            in_flight,
            pushed_rows,
            materialized_rows,
            watermark,
            store_bytes,
            store_up,
            stored_entities,
            materializing,
            materialize_progress,
            builds,
            builds_running,
            builds_queued,
        }
    }

    /// Count one answered request.
    pub fn request(&self, transport: &str, method: &str, code: &str, seconds: f64) {
        self.requests
            .with_label_values(&[transport, method, code])
            .inc();
        self.latency
            .with_label_values(&[transport, method])
            .observe(seconds);
    }

    /// Everything, in Prometheus' text exposition format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec fails only on a malformed metric, which the fixed names rule out.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// A gauge raised while this lives: lowered when dropped, also when the work it counts is
/// cancelled (a client that goes away drops its request's future mid-await).
pub struct Raised(IntGauge);

impl Raised {
    /// Raise `gauge` until the result is dropped.
    pub fn new(gauge: &IntGauge) -> Raised {
        gauge.inc();
        Raised(gauge.clone())
    }
}

impl Drop for Raised {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::new();
        m.request("grpc", "OnlineService/GetOnlineFeatures", "OK", 0.0004);
        m.entities.observe(3.0);
        m.watermark.with_label_values(&["v"]).set(1_700_000_000);
        let text = m.render();
        assert!(
            text.contains(
                r#"quiver_requests_total{code="OK",method="OnlineService/GetOnlineFeatures",transport="grpc"} 1"#
            ),
            "{text}"
        );
        assert!(text.contains("quiver_request_seconds_bucket"), "{text}");
        assert!(text.contains(r#"quiver_online_watermark_seconds{view="v"} 1700000000"#));
    }
}
