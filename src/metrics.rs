//! Prometheus metrics: reconciles, Coder requests, builds and recoveries.

use std::time::{Duration, Instant};

use prometheus_client::encoding::{EncodeLabelSet, text::encode};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::coder::RequestObserver;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub endpoint: &'static str,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub endpoint: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub transition: &'static str,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

pub struct Metrics {
    registry: Registry,
    pub reconciles: Family<ResultLabels, Counter>,
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    pub reconcile_duration: Histogram,
    pub coder_requests: Family<RequestLabels, Counter>,
    pub coder_request_duration: Histograms<EndpointLabels>,
    pub builds: Family<BuildLabels, Counter>,
    pub recoveries: Family<OutcomeLabels, Counter>,
    /// 1 while this replica reconciles (it holds the leader lease, or leader
    /// election is off); 0 on a standby.
    pub leader: Gauge,
    /// Reconciles the Coder index asked for because what it holds changed.
    pub index_wakes: Counter,
    /// Reachability probes the index's prober completed.
    pub index_probes: Counter,
    /// From the moment a resource is woken or becomes due to the start of
    /// its reconcile: how long the queue makes it wait.
    pub queue_wait: Histogram,
    /// Resources this process has decided on with the whole picture of
    /// their workspace (the status written, or found current), at least
    /// once since it started: how soon a restarted operator has looked at
    /// everything, which its writes alone do not tell.
    pub observed_resources: Gauge,
    /// Complete lists of the ChatWorkspaces by the watch, the first one
    /// included: a relist (after the watch fell too far behind) holds the
    /// old cache and the new one at once.
    pub relists: Counter,
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("chatworkspace");
        let reconciles = Family::<ResultLabels, Counter>::default();
        let reconcile_errors = Family::<ErrorLabels, Counter>::default();
        let reconcile_duration = latency_histogram();
        let coder_requests = Family::<RequestLabels, Counter>::default();
        let coder_request_duration: Histograms<EndpointLabels> = Family::new_with_constructor(latency_histogram);
        let builds = Family::<BuildLabels, Counter>::default();
        let recoveries = Family::<OutcomeLabels, Counter>::default();
        registry.register("reconciles", "Reconciles by result", reconciles.clone());
        registry.register("reconcile_errors", "Failed reconciles by error kind", reconcile_errors.clone());
        registry.register("reconcile_duration_seconds", "Duration of one reconcile", reconcile_duration.clone());
        registry.register("coder_requests", "Coder API requests by endpoint and status code", coder_requests.clone());
        registry.register(
            "coder_request_duration_seconds",
            "Latency of Coder API requests by endpoint",
            coder_request_duration.clone(),
        );
        registry.register("builds", "Workspace builds requested by transition and reason", builds.clone());
        registry.register("recoveries", "Automatic recoveries by outcome", recoveries.clone());
        let leader = Gauge::default();
        registry.register("leader", "1 while this replica is the one that reconciles", leader.clone());
        let index_wakes = Counter::default();
        registry.register("index_wakes", "Reconciles asked for by the Coder index", index_wakes.clone());
        let index_probes = Counter::default();
        registry.register("index_probes", "Agent probes completed by the Coder index", index_probes.clone());
        // Finer and longer than the latency buckets: at thousands of due
        // resources a wait of tens of seconds is expected, and p99 is
        // judged against it. Up to 36 minutes: behind 10,000 creates under
        // a 50/s cap, a build's wake waits about ten (docs/performance.md).
        let queue_wait = Histogram::new(exponential_buckets(0.005, 1.5, 33));
        registry.register(
            "queue_wait_seconds",
            "Time from a resource being woken by the Coder index to the start of its reconcile",
            queue_wait.clone(),
        );
        let observed_resources = Gauge::default();
        registry.register(
            "observed_resources",
            "Resources decided on with the whole picture of their workspace since this process started",
            observed_resources.clone(),
        );
        let relists = Counter::default();
        registry.register(
            "relists",
            "Complete lists of the ChatWorkspaces by the watch, the first one included",
            relists.clone(),
        );
        Self {
            registry,
            observed_resources,
            relists,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            coder_requests,
            coder_request_duration,
            builds,
            recoveries,
            leader,
            index_wakes,
            index_probes,
            queue_wait,
        }
    }
}

impl Metrics {
    /// The metrics in Prometheus' text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }

    /// Starts timing one reconcile; the time is recorded when the guard drops.
    pub fn reconcile_timer(&self) -> ReconcileTimer<'_> {
        ReconcileTimer { histogram: &self.reconcile_duration, start: Instant::now() }
    }

    pub fn reconciled(&self, result: &'static str) {
        self.reconciles.get_or_create(&ResultLabels { result }).inc();
    }

    pub fn failed(&self, kind: &'static str) {
        self.reconciles.get_or_create(&ResultLabels { result: "error" }).inc();
        self.reconcile_errors.get_or_create(&ErrorLabels { kind }).inc();
    }

    /// An error the reconcile reported in status and waits out (not retried).
    pub fn error_kind(&self, kind: &'static str) {
        self.reconcile_errors.get_or_create(&ErrorLabels { kind }).inc();
    }

    pub fn build(&self, transition: &'static str, reason: &'static str) {
        self.builds.get_or_create(&BuildLabels { transition, reason }).inc();
    }

    pub fn recovery(&self, outcome: &'static str) {
        self.recoveries.get_or_create(&OutcomeLabels { outcome }).inc();
    }
}

impl RequestObserver for Metrics {
    fn observe(&self, endpoint: &'static str, status: Option<u16>, elapsed: Duration) {
        let code = status.map_or_else(|| "error".to_string(), |s| s.to_string());
        self.coder_requests.get_or_create(&RequestLabels { endpoint, code }).inc();
        self.coder_request_duration.get_or_create(&EndpointLabels { endpoint }).observe(elapsed.as_secs_f64());
    }
}

pub struct ReconcileTimer<'a> {
    histogram: &'a Histogram,
    start: Instant,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.histogram.observe(self.start.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let metrics = Metrics::default();
        metrics.reconciled("ok");
        metrics.build("start", "DesiredState");
        metrics.observe("GET /users/me", Some(200), Duration::from_millis(3));
        drop(metrics.reconcile_timer());
        let text = metrics.render();
        assert!(text.contains("chatworkspace_reconciles_total{result=\"ok\"} 1"), "{text}");
        assert!(text.contains("chatworkspace_builds_total{transition=\"start\",reason=\"DesiredState\"} 1"), "{text}");
        assert!(
            text.contains("chatworkspace_coder_requests_total{endpoint=\"GET /users/me\",code=\"200\"} 1"),
            "{text}"
        );
        assert!(text.contains("chatworkspace_reconcile_duration_seconds_count 1"), "{text}");
    }
}
