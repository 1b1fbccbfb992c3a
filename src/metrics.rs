//! Prometheus metrics: reconciles, Coder requests, builds and recoveries.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus_client::encoding::{EncodeLabelSet, text::encode};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

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
pub struct PhaseLabels {
    pub phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Which credentials sent the request: `operator` (the operator's own
    /// token) or `<namespace>/<Secret name>` (a `credentialsRef`); never
    /// the token or anything made from it.
    pub credentials: String,
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
pub struct ReasonLabels {
    pub reason: String,
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
    /// The label sets of `coder_requests` by credentials, so that a
    /// Secret's series go when no resource names it any more.
    coder_request_series: Mutex<HashMap<String, HashSet<RequestLabels>>>,
    pub coder_request_duration: Histograms<EndpointLabels>,
    pub builds: Family<BuildLabels, Counter>,
    pub recoveries: Family<OutcomeLabels, Counter>,
    /// Resources whose `Stalled` condition turned True, by its reason: each
    /// waits for a person from then on (alerts and dashboards count them).
    pub stalled: Family<ReasonLabels, Counter>,
    /// 1 while this replica reconciles (it holds the leader lease, or leader
    /// election is off); 0 on a standby.
    pub leader: Gauge,
    /// Resources watched, by `status.phase` (`None` before the first).
    pub resources: Family<PhaseLabels, Gauge>,
    /// Reconciles the Coder index asked for because what it holds changed.
    pub index_wakes: Counter,
    /// Reachability probes the index's prober completed.
    pub index_probes: Family<OutcomeLabels, Counter>,
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
    /// Seconds observation requests waited for the rate limit's budget
    /// that actions left them: how much observation yielded to actions.
    pub coder_observation_wait: Counter<f64, AtomicU64>,
    /// The time between the latest two attention polls of a token's
    /// workspaces, at most: the cadence observation actually keeps, which
    /// stretches beyond the configured interval when actions take the
    /// budget.
    pub index_attention_period: Gauge<f64, AtomicU64>,
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
        registry.register(
            "coder_requests",
            "Coder API requests by credentials (operator: the operator's own token; namespace/name: a \
             credentialsRef Secret; one value per credentials in use, never a token), endpoint and status code",
            coder_requests.clone(),
        );
        registry.register(
            "coder_request_duration_seconds",
            "Latency of Coder API requests by endpoint",
            coder_request_duration.clone(),
        );
        registry.register("builds", "Workspace builds requested by transition and reason", builds.clone());
        registry.register(
            "recoveries",
            "Recoveries (automatic, and restarts asked for) by outcome: started, succeeded, failed",
            recoveries.clone(),
        );
        let stalled = Family::<ReasonLabels, Counter>::default();
        registry.register("stalled", "Resources whose Stalled condition turned True, by reason", stalled.clone());
        let resources = Family::<PhaseLabels, Gauge>::default();
        registry.register(
            "resources",
            "ChatWorkspaces this replica watches, by status.phase (None: not written yet)",
            resources.clone(),
        );
        let leader = Gauge::default();
        registry.register("leader", "1 while this replica is the one that reconciles", leader.clone());
        let index_wakes = Counter::default();
        registry.register("index_wakes", "Reconciles asked for by the Coder index", index_wakes.clone());
        let index_probes = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "index_probes",
            "Agent probes completed by the Coder index, by outcome (reachable, refused, timed_out, failed, inconclusive)",
            index_probes.clone(),
        );
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
        let coder_observation_wait = Counter::<f64, AtomicU64>::default();
        registry.register(
            "coder_observation_wait_seconds",
            "Time the index's Coder requests waited for the rate limit's budget that actions left them",
            coder_observation_wait.clone(),
        );
        let index_attention_period = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "index_attention_period_seconds",
            "Time between the latest two attention polls of a token's workspaces (the longest across tokens)",
            index_attention_period.clone(),
        );
        Self {
            registry,
            coder_observation_wait,
            index_attention_period,
            observed_resources,
            relists,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            coder_requests,
            coder_request_series: Mutex::default(),
            coder_request_duration,
            builds,
            recoveries,
            stalled,
            leader,
            index_wakes,
            index_probes,
            resources,
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

    /// A probe of an agent ended.
    pub fn probed(&self, outcome: &crate::coder::ProbeOutcome) {
        use crate::coder::ProbeOutcome;
        let outcome = match outcome {
            ProbeOutcome::Reachable => "reachable",
            ProbeOutcome::Refused { .. } => "refused",
            ProbeOutcome::TimedOut => "timed_out",
            ProbeOutcome::Failed { .. } => "failed",
            ProbeOutcome::Inconclusive { .. } => "inconclusive",
        };
        self.index_probes.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    /// The count of resources in `phase` moved by `delta`.
    pub fn resources_in_phase(&self, phase: Option<crate::crd::Phase>, delta: i64) {
        use crate::crd::Phase;
        let phase = match phase {
            None => "None",
            Some(Phase::Pending) => "Pending",
            Some(Phase::Creating) => "Creating",
            Some(Phase::Starting) => "Starting",
            Some(Phase::Running) => "Running",
            Some(Phase::Stopping) => "Stopping",
            Some(Phase::Stopped) => "Stopped",
            Some(Phase::Recovering) => "Recovering",
            Some(Phase::Deleting) => "Deleting",
            Some(Phase::Failed) => "Failed",
        };
        self.resources.get_or_create(&PhaseLabels { phase }).inc_by(delta);
    }

    pub fn stalled(&self, reason: &str) {
        self.stalled.get_or_create(&ReasonLabels { reason: reason.to_owned() }).inc();
    }
}

impl RequestObserver for Metrics {
    fn observe(&self, credentials: &str, endpoint: &'static str, status: Option<u16>, elapsed: Duration) {
        let code = status.map_or_else(|| "error".to_string(), |s| s.to_string());
        let labels = RequestLabels { credentials: credentials.to_owned(), endpoint, code };
        {
            let mut series = self.coder_request_series.lock().expect("request series");
            match series.get_mut(credentials) {
                Some(known) if known.contains(&labels) => {}
                Some(known) => {
                    known.insert(labels.clone());
                }
                None => {
                    series.insert(credentials.to_owned(), HashSet::from([labels.clone()]));
                }
            }
        }
        self.coder_requests.get_or_create(&labels).inc();
        self.coder_request_duration.get_or_create(&EndpointLabels { endpoint }).observe(elapsed.as_secs_f64());
    }

    fn observation_waited(&self, waited: Duration) {
        self.coder_observation_wait.inc_by(waited.as_secs_f64());
    }

    fn credentials_released(&self, credentials: &str) {
        let released = self.coder_request_series.lock().expect("request series").remove(credentials);
        for labels in released.into_iter().flatten() {
            self.coder_requests.remove(&labels);
        }
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
        metrics.observe("operator", "GET /users/me", Some(200), Duration::from_millis(3));
        drop(metrics.reconcile_timer());
        let text = metrics.render();
        assert!(text.contains("chatworkspace_reconciles_total{result=\"ok\"} 1"), "{text}");
        assert!(text.contains("chatworkspace_builds_total{transition=\"start\",reason=\"DesiredState\"} 1"), "{text}");
        assert!(
            text.contains(
                "chatworkspace_coder_requests_total{credentials=\"operator\",endpoint=\"GET /users/me\",code=\"200\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains("chatworkspace_reconcile_duration_seconds_count 1"), "{text}");
    }

    #[test]
    fn a_released_secrets_request_series_go_and_the_operators_stay() {
        let metrics = Metrics::default();
        let ms = Duration::from_millis(3);
        metrics.observe("operator", "GET /workspaces", Some(429), ms);
        metrics.observe("team-a/coder", "GET /workspaces", Some(429), ms);
        metrics.observe("team-a/coder", "POST /workspaces/{id}/builds", Some(201), ms);
        metrics.observe("team-b/coder", "GET /workspaces", Some(200), ms);
        let text = metrics.render();
        assert!(
            text.contains(
                r#"coder_requests_total{credentials="team-a/coder",endpoint="GET /workspaces",code="429"} 1"#
            ),
            "{text}"
        );
        metrics.credentials_released("team-a/coder");
        let text = metrics.render();
        assert!(!text.contains("team-a/coder"), "{text}");
        assert!(
            text.contains(r#"coder_requests_total{credentials="operator",endpoint="GET /workspaces",code="429"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"credentials="team-b/coder""#), "{text}");
        // Named again later: counted from zero.
        metrics.observe("team-a/coder", "GET /workspaces", Some(200), ms);
        assert!(metrics.render().contains(r#"credentials="team-a/coder",endpoint="GET /workspaces",code="200"} 1"#));
    }
}
