//! A replica that lost its lease writes nothing: two operator processes
//! with leader election against the real apiserver and the simulator; the
//! leader is frozen (SIGSTOP) while its build request is in flight, or
//! while the fresh read before its build is, the other replica takes over
//! and acts, and the first is resumed (SIGCONT).
//! The simulator's request log (each replica names the simulator by its own
//! host, so their requests are told apart) and every status the apiserver
//! stored show no write of the old leader after its lease expired. The
//! failover and what the old leader did when it resumed are printed.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chatworkspace_operator::crd::ChatWorkspace;
use coder_sim::{Fault, FaultKind, RequestRecord, SimConfig, Simulator};
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use serde_json::json;
use support::process::{
    CONVERGE, LEASE_ENV, OperatorProcess, create_workspace, operator_env, unique, wait_for_condition, wait_for_holder,
};
use testbed::ControlPlane;

/// The renew deadline of `LEASE_ENV`: the leader's fence closes this long
/// after its last renewal started, which was before it was frozen.
const RENEW_DEADLINE: Duration = Duration::from_secs(2);

/// The environment of one replica competing for `lease`, talking to the
/// simulator at `coder_url`.
fn replica_env(sim: &Simulator, coder_url: &str, namespace: &str, lease: &str, pod: &str) -> Vec<(String, String)> {
    let plane = ControlPlane::shared();
    let mut env = operator_env(plane.kubeconfig_path(), coder_url, &sim.token(), namespace);
    env.extend(
        [("LEADER_ELECTION", "true"), ("LEASE_NAME", lease), ("POD_NAMESPACE", namespace), ("POD_NAME", pod)]
            .into_iter()
            .chain(LEASE_ENV)
            .map(|(k, v)| (k.to_owned(), v.to_owned())),
    );
    env
}

async fn set_desired_state(client: &Client, namespace: &str, name: &str, state: &str) {
    Api::<ChatWorkspace>::namespaced(client.clone(), namespace)
        .patch(name, &PatchParams::default(), &Patch::Merge(json!({"spec": {"desiredState": state}})))
        .await
        .expect("patch desiredState");
}

/// One status the apiserver stored, as the watch delivered it.
#[derive(Clone, Debug)]
struct StoredStatus {
    at: jiff::Timestamp,
    observed_generation: Option<i64>,
    phase: Option<String>,
}

/// Records every version of the resource whose status changed.
fn record_statuses(client: &Client, namespace: &str, name: &str) -> Arc<Mutex<Vec<StoredStatus>>> {
    let seen = Arc::new(Mutex::new(Vec::<StoredStatus>::new()));
    let api = Api::<ChatWorkspace>::namespaced(client.clone(), namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let recording = seen.clone();
    tokio::spawn(async move {
        let mut events = Box::pin(watcher(api, config).default_backoff().applied_objects());
        while let Some(event) = events.next().await {
            let Ok(resource) = event else { continue };
            let status = resource.status.clone().unwrap_or_default();
            let stored = StoredStatus {
                at: jiff::Timestamp::now(),
                observed_generation: status.observed_generation,
                phase: status.phase.map(|phase| format!("{phase:?}")),
            };
            let mut seen = recording.lock().expect("statuses");
            let changed = seen.last().is_none_or(|last: &StoredStatus| {
                (last.observed_generation, &last.phase) != (stored.observed_generation, &stored.phase)
            });
            if changed {
                seen.push(stored);
            }
        }
    });
    seen
}

fn writes_of<'a>(requests: &'a [RequestRecord], host: &str) -> impl Iterator<Item = &'a RequestRecord> {
    let host = host.to_owned();
    requests.iter().filter(move |r| r.host == host && r.method != "GET")
}

fn millis(duration: Duration) -> u128 {
    duration.as_millis()
}

/// Two replicas with leader election, each naming the simulator by its own
/// host; the first leads, and a resource it drives is Ready.
struct Replicas {
    client: Client,
    sim: Simulator,
    namespace: String,
    lease: String,
    first: OperatorProcess,
    second: OperatorProcess,
    host_a: String,
    host_b: String,
    statuses: Arc<Mutex<Vec<StoredStatus>>>,
    workspace: uuid::Uuid,
}

impl Replicas {
    async fn start(prefix: &str) -> Replicas {
        let plane = ControlPlane::shared();
        let client = plane.client().await;
        let sim = Simulator::start(SimConfig::fast()).await.unwrap();
        let namespace = support::granted_namespace(plane, prefix).await;
        let lease = unique("lease");
        // The same simulator under two names: each replica's requests carry its own.
        let url_a = sim.url();
        let url_b = url_a.replace("127.0.0.1", "localhost");
        let host = |url: &str| url.trim_start_matches("http://").to_owned();
        let (host_a, host_b) = (host(&url_a), host(&url_b));

        let first = OperatorProcess::spawn("op-a", &replica_env(&sim, &url_a, &namespace, &lease, "op-a"));
        wait_for_holder(&client, &namespace, &lease, Duration::from_secs(30), |h| h == Some("op-a")).await;
        let mut second = OperatorProcess::spawn("op-b", &replica_env(&sim, &url_b, &namespace, &lease, "op-b"));
        second.wait_ready(Duration::from_secs(30)).await;
        let statuses = record_statuses(&client, &namespace, "chat-1");
        let spec = json!({"desiredState": "Running", "template": {"name": "docker-dev"}});
        create_workspace(&client, &namespace, "chat-1", spec).await;
        wait_for_condition(&client, &namespace, "chat-1", "Ready", "True", CONVERGE).await;
        let workspace = sim.workspace_id("admin", "chat-1").expect("the workspace");
        Replicas { client, sim, namespace, lease, first, second, host_a, host_b, statuses, workspace }
    }

    fn builds_path(&self) -> String {
        format!("/api/v2/workspaces/{}/builds", self.workspace)
    }

    fn transitions(&self) -> Vec<String> {
        self.sim.builds(self.workspace).into_iter().map(|b| b.transition).collect()
    }

    /// Freezes the first replica; returns the moment its lease expired by
    /// its own clock at the latest (the renew deadline after the start of
    /// its last renewal, which came before the `renewTime` it wrote), and
    /// when it was frozen (by the wall clock and ours).
    async fn freeze_first(&self) -> (jiff::Timestamp, jiff::Timestamp, Instant) {
        let frozen_at = jiff::Timestamp::now();
        let frozen = Instant::now();
        signal(&self.first, "STOP");
        let lease = Api::<Lease>::namespaced(self.client.clone(), &self.namespace).get(&self.lease).await.unwrap();
        let spec = lease.spec.expect("a Lease spec");
        assert_eq!(spec.holder_identity.as_deref(), Some("op-a"), "frozen while it led");
        let renewed = spec.renew_time.expect("a renewTime").0;
        assert!(renewed <= frozen_at, "no renewal once frozen");
        (renewed + RENEW_DEADLINE, frozen_at, frozen)
    }

    /// Resumes the first replica and waits for it to exit; returns when it
    /// was resumed, how long it took to exit, and its log.
    async fn resume_first(&mut self) -> (jiff::Timestamp, Instant, Duration, String) {
        let resumed_at = jiff::Timestamp::now();
        let resumed = Instant::now();
        signal(&self.first, "CONT");
        let exit = self.first.wait_exit(Duration::from_secs(20)).await;
        let exited = resumed.elapsed();
        let logs = self.first.logs();
        assert!(!exit.success(), "losing the lease is an error the kubelet restarts: {exit}");
        assert!(logs.contains("lost the leader lease"), "{logs}");
        (resumed_at, resumed, exited, logs)
    }

    /// The simulator's log: no write of the first replica arrived after its
    /// lease expired by its clock (`expired`, see [`Replicas::freeze_first`]);
    /// the second replica's first request came after that. Returns the
    /// second replica's first request.
    fn assert_no_late_coder_write(&self, expired: jiff::Timestamp) -> jiff::Timestamp {
        let requests = self.sim.requests();
        let late: Vec<_> = writes_of(&requests, &self.host_a).filter(|r| r.at >= expired).collect();
        assert!(late.is_empty(), "writes of the old leader after its lease expired at {expired}: {late:#?}");
        let first_of_b =
            requests.iter().filter(|r| r.host == self.host_b).map(|r| r.at).min().expect("the new leader's requests");
        assert!(first_of_b > expired, "the new leader acted only after the old one's lease expired");
        first_of_b
    }

    /// Every status the apiserver stored, in order: none decided from an
    /// older generation than one before it (a stale status of the old
    /// leader overwriting the new one's), and none stored after `resumed_at`.
    fn assert_no_stale_status(&self, resumed_at: jiff::Timestamp, last: (i64, &str)) -> Vec<StoredStatus> {
        let stored = self.statuses.lock().expect("statuses").clone();
        for pair in stored.windows(2) {
            assert!(
                pair[1].observed_generation >= pair[0].observed_generation,
                "a stale status overwrote a newer one: {pair:#?}\nall: {stored:#?}"
            );
        }
        let after_resume: Vec<_> = stored.iter().filter(|s| s.at > resumed_at).collect();
        assert!(after_resume.is_empty(), "status changed after the old leader resumed: {after_resume:#?}");
        let stored_last = stored.last().expect("statuses");
        assert_eq!(
            (stored_last.observed_generation, stored_last.phase.as_deref()),
            (Some(last.0), Some(last.1)),
            "{stored:#?}"
        );
        stored
    }
}

async fn print_stale(replica: &OperatorProcess) {
    let metrics = replica.metrics().await;
    eprintln!(
        "MEASURED the new leader's reconciles: {} ok, {} decided on a stale view (409), {} failed",
        metrics.value("chatworkspace_reconciles_total", &[("result", "ok")]) + 0.0,
        metrics.value("chatworkspace_reconciles_total", &[("result", "stale")]) + 0.0,
        metrics.value("chatworkspace_reconciles_total", &[("result", "error")]) + 0.0,
    );
}

fn print_resumed(logs: &str) {
    eprintln!("MEASURED the old leader after SIGCONT:");
    let warnings: Vec<&str> = logs.lines().filter(|line| line.contains("WARN") || line.contains("ERROR")).collect();
    for line in &warnings[warnings.len().saturating_sub(8)..] {
        eprintln!("  {line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_frozen_mid_build_past_its_lease_writes_nothing_when_it_resumes() {
    let mut replicas = Replicas::start("fenced-build").await;
    let (client, namespace) = (replicas.client.clone(), replicas.namespace.clone());
    let builds = replicas.builds_path();

    // The stop build takes effect at once but its answer is held: the leader
    // is frozen while the request is in flight.
    replicas
        .sim
        .inject_fault(Fault::new(&builds, FaultKind::AnswerLate(Duration::from_secs(2))).method("POST").times(1));
    set_desired_state(&client, &namespace, "chat-1", "Stopped").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !replicas.transitions().iter().any(|t| t == "stop") {
        assert!(Instant::now() < deadline, "the leader never requested the stop build");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (expired, frozen_at, frozen) = replicas.freeze_first().await;

    // The other replica takes over and acts: it sees the stop through, then
    // starts the workspace again when asked.
    let lease = replicas.lease.clone();
    let took_over = wait_for_holder(&client, &namespace, &lease, Duration::from_secs(20), |h| h == Some("op-b")).await;
    wait_for_condition(&client, &namespace, "chat-1", "Ready", "True", CONVERGE).await;
    let stopped = Instant::now();
    set_desired_state(&client, &namespace, "chat-1", "Running").await;
    wait_for_condition(&client, &namespace, "chat-1", "Ready", "True", CONVERGE).await;
    assert_eq!(replicas.transitions(), ["start", "stop", "start"], "the old leader's stop, the new one's start");

    // Resume the old leader, long past its lease.
    let (resumed_at, resumed, exited, logs) = replicas.resume_first().await;
    let first_of_b = replicas.assert_no_late_coder_write(expired);
    let requests = replicas.sim.requests();
    let old_stop = writes_of(&requests, &replicas.host_a).find(|r| r.path == builds).expect("the old leader's stop");
    assert!(old_stop.at < frozen_at, "{old_stop:?}");
    let new_start =
        writes_of(&requests, &replicas.host_b).find(|r| r.path == builds).expect("the new leader's start build");
    let stored = replicas.assert_no_stale_status(resumed_at, (3, "Running"));
    assert_eq!(replicas.transitions(), ["start", "stop", "start"], "nothing built after the resume");

    let since = |at: jiff::Timestamp| at.duration_since(frozen_at).as_millis();
    eprintln!(
        "MEASURED the old leader's lease expired by its clock {} ms after the freeze at the latest",
        since(expired)
    );
    eprintln!(
        "MEASURED lease 3 s, renew deadline 2 s, retry 500 ms, stop build answered 2 s late: freeze -> new leader \
         holds the Lease {} ms; -> its first Coder request {} ms; -> the stop seen through (Ready, Stopped) {} ms; \
         -> its start build {} ms; old leader resumed {} ms after the freeze, exited {} ms later",
        millis(took_over - frozen),
        since(first_of_b),
        millis(stopped - frozen),
        since(new_start.at),
        millis(resumed - frozen),
        millis(exited),
    );
    eprintln!("MEASURED statuses stored: {stored:?}");
    print_resumed(&logs);
    print_stale(&replicas.second).await;
    drop(replicas.second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_frozen_before_its_build_sends_none_when_it_resumes() {
    let mut replicas = Replicas::start("fenced-read").await;
    let (client, namespace) = (replicas.client.clone(), replicas.namespace.clone());

    // The fresh read before the stop build is slow: the leader is frozen
    // after deciding, before sending the build. Its answer waits for it.
    let fresh_read = format!("/api/v2/workspaces/{}", replicas.workspace);
    replicas
        .sim
        .inject_fault(Fault::new(&fresh_read, FaultKind::Latency(Duration::from_secs(1))).method("GET").times(1));
    set_desired_state(&client, &namespace, "chat-1", "Stopped").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !replicas.sim.in_flight().iter().any(|r| r.method == "GET" && r.path == fresh_read) {
        assert!(Instant::now() < deadline, "the leader never read the workspace before its build");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (expired, frozen_at, frozen) = replicas.freeze_first().await;

    // The other replica takes over and stops the workspace itself.
    let lease = replicas.lease.clone();
    let took_over = wait_for_holder(&client, &namespace, &lease, Duration::from_secs(20), |h| h == Some("op-b")).await;
    wait_for_condition(&client, &namespace, "chat-1", "Ready", "True", CONVERGE).await;
    let stopped = Instant::now();
    assert_eq!(replicas.transitions(), ["start", "stop"]);

    // Resumed, the old leader has the read's answer and its decision to
    // stop: the build must not go out.
    let (resumed_at, resumed, exited, logs) = replicas.resume_first().await;
    let first_of_b = replicas.assert_no_late_coder_write(expired);
    let requests = replicas.sim.requests();
    let builds = replicas.builds_path();
    assert!(writes_of(&requests, &replicas.host_b).any(|r| r.path == builds), "the new leader's stop build");
    replicas.assert_no_stale_status(resumed_at, (2, "Stopped"));
    assert_eq!(replicas.transitions(), ["start", "stop"], "exactly one stop");

    eprintln!(
        "MEASURED the old leader's lease expired by its clock {} ms after the freeze at the latest",
        expired.duration_since(frozen_at).as_millis()
    );
    eprintln!(
        "MEASURED lease 3 s, renew deadline 2 s, retry 500 ms, fresh read answered 1 s late: freeze -> new leader \
         holds the Lease {} ms; -> its first Coder request {} ms; -> Ready (Stopped) {} ms; old leader resumed {} ms \
         after the freeze, exited {} ms later",
        millis(took_over - frozen),
        first_of_b.duration_since(frozen_at).as_millis(),
        millis(stopped - frozen),
        millis(resumed - frozen),
        millis(exited),
    );
    print_resumed(&logs);
    print_stale(&replicas.second).await;
    drop(replicas.second);
}

fn signal(process: &OperatorProcess, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([format!("-{signal}"), process.pid().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {} failed", process.pid());
}
