//! Production operation. Leader election over a real Lease (one leader
//! of several processes, failover after SIGKILL, step-down when renewals
//! fail or the Lease is taken), `/metrics`, `/healthz` and `/readyz`, and a
//! SIGTERM that finishes the reconcile in flight, releases the Lease and
//! exits in seconds. Failover and shutdown times are measured and printed.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chatworkspace_operator::crd::ChatWorkspace;
use chatworkspace_operator::leader::{self, Elector, LeaseError, LeaseSettings, Role};
use coder_sim::{Fault, FaultKind, SimConfig, Simulator};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use serde_json::json;
use support::process::{
    CONVERGE, LEASE_DURATION, LEASE_ENV, OperatorProcess, create_workspace, lease_holder, operator_env, unique,
    wait_for_condition, wait_for_holder,
};
use testbed::ControlPlane;
use tokio::net::{TcpListener, TcpStream};

fn running() -> serde_json::Value {
    json!({"desiredState": "Running", "template": {"name": "docker-dev"}})
}

async fn set_desired_state(client: &Client, namespace: &str, name: &str, state: &str) {
    Api::<ChatWorkspace>::namespaced(client.clone(), namespace)
        .patch(name, &PatchParams::default(), &Patch::Merge(json!({"spec": {"desiredState": state}})))
        .await
        .expect("patch desiredState");
}

/// The environment of one replica in `namespace`, competing for `lease`.
fn replica_env(sim: &Simulator, namespace: &str, lease: &str, pod: &str) -> Vec<(String, String)> {
    let plane = ControlPlane::shared();
    let mut env = operator_env(plane.kubeconfig_path(), &sim.url(), &sim.token(), namespace);
    env.extend(
        [("LEADER_ELECTION", "true"), ("LEASE_NAME", lease), ("POD_NAMESPACE", namespace), ("POD_NAME", pod)]
            .into_iter()
            .chain(LEASE_ENV)
            .map(|(k, v)| (k.to_owned(), v.to_owned())),
    );
    env
}

/// Polls until `check` holds for the workspace's build transitions; returns when.
async fn wait_for_builds(
    sim: &Simulator,
    id: uuid::Uuid,
    timeout: Duration,
    check: impl Fn(&[String]) -> bool,
) -> Instant {
    let deadline = Instant::now() + timeout;
    loop {
        let transitions: Vec<String> = sim.builds(id).into_iter().map(|b| b.transition).collect();
        if check(&transitions) {
            return Instant::now();
        }
        assert!(Instant::now() < deadline, "builds still {transitions:?} after {timeout:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn millis(duration: Duration) -> u128 {
    duration.as_millis()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_elect_one_leader_and_the_standby_takes_over_when_it_is_killed() {
    let plane = ControlPlane::shared();
    let client = plane.client().await;
    let sim = Simulator::start(SimConfig::fast()).await.unwrap();
    let namespace = support::granted_namespace(plane, "failover").await;
    let lease = unique("lease");

    let mut first = OperatorProcess::spawn("op-a", &replica_env(&sim, &namespace, &lease, "op-a"));
    wait_for_holder(&client, &namespace, &lease, Duration::from_secs(30), |h| h == Some("op-a")).await;
    first.wait_ready(Duration::from_secs(30)).await;
    let mut second = OperatorProcess::spawn("op-b", &replica_env(&sim, &namespace, &lease, "op-b"));
    second.wait_ready(Duration::from_secs(30)).await;
    assert_eq!(lease_holder(&client, &namespace, &lease).await.as_deref(), Some("op-a"), "the standby took nothing");

    create_workspace(&client, &namespace, "chat-1", running()).await;
    wait_for_condition(&client, &namespace, "chat-1", "Ready", "True", CONVERGE).await;
    let (leader, standby) = (first.metrics().await, second.metrics().await);
    assert_eq!(leader.value("chatworkspace_leader", &[]), 1.0);
    assert_eq!(standby.value("chatworkspace_leader", &[]), 0.0);
    assert!(leader.value("chatworkspace_reconciles_total", &[]) > 0.0);
    assert_eq!(standby.value("chatworkspace_reconciles_total", &[]), 0.0, "the standby reconciled nothing");
    assert_eq!(standby.value("chatworkspace_coder_requests_total", &[]), 0.0, "the standby never called Coder");

    // SIGKILL: no release, so the standby must wait for the Lease to expire.
    let id = sim.workspace_id("admin", "chat-1").unwrap();
    let killed = Instant::now();
    first.kill();
    first.wait_exit(Duration::from_secs(5)).await;
    set_desired_state(&client, &namespace, "chat-1", "Stopped").await;
    let taken_over = wait_for_holder(&client, &namespace, &lease, Duration::from_secs(30), |h| h == Some("op-b")).await;
    let acted = wait_for_builds(&sim, id, Duration::from_secs(30), |t| t.iter().any(|t| t == "stop")).await;
    let failover = taken_over - killed;
    eprintln!(
        "MEASURED failover ({LEASE_ENV:?}): SIGKILL -> new holder {} ms, -> first Coder build by the new leader {} ms",
        millis(failover),
        millis(acted - killed)
    );
    // Never before the killed leader's lease could have expired (its last
    // renewal was at most a retry period before the kill)...
    assert!(failover >= LEASE_DURATION - Duration::from_millis(600), "taken over too early: {failover:?}");
    // ...and soon after it did.
    assert!(failover <= LEASE_DURATION + Duration::from_secs(2), "taken over too late: {failover:?}");
    assert!(
        acted - taken_over < Duration::from_secs(5),
        "the new leader acted {:?} after taking over",
        acted - taken_over
    );

    wait_for_condition(&client, &namespace, "chat-1", "Ready", "True", CONVERGE).await;
    assert_eq!(sim.builds(id).into_iter().map(|b| b.transition).collect::<Vec<_>>(), ["start", "stop"]);
    assert_eq!(second.metrics().await.value("chatworkspace_leader", &[]), 1.0);

    // An idle leader on SIGTERM: out in well under a second, Lease released.
    let signalled = Instant::now();
    second.terminate();
    let status = second.wait_exit(Duration::from_secs(10)).await;
    let exited = signalled.elapsed();
    eprintln!("MEASURED SIGTERM of an idle leader -> exit {} ms", millis(exited));
    assert!(status.success(), "{status}; log:\n{}", second.logs());
    assert!(exited < Duration::from_secs(3), "took {exited:?} to exit");
    assert_eq!(lease_holder(&client, &namespace, &lease).await, None, "the Lease was released");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_the_reconcile_in_flight_releases_the_lease_and_the_standby_takes_over() {
    let plane = ControlPlane::shared();
    let client = plane.client().await;
    let sim = Simulator::start(SimConfig::fast()).await.unwrap();
    let namespace = support::granted_namespace(plane, "sigterm").await;
    let lease = unique("lease");

    let mut first = OperatorProcess::spawn("op-a", &replica_env(&sim, &namespace, &lease, "op-a"));
    wait_for_holder(&client, &namespace, &lease, Duration::from_secs(30), |h| h == Some("op-a")).await;
    let mut second = OperatorProcess::spawn("op-b", &replica_env(&sim, &namespace, &lease, "op-b"));
    second.wait_ready(Duration::from_secs(30)).await;
    create_workspace(&client, &namespace, "chat-1", running()).await;
    wait_for_condition(&client, &namespace, "chat-1", "Ready", "True", CONVERGE).await;
    let id = sim.workspace_id("admin", "chat-1").unwrap();

    // The stop build request takes 3 s to answer: SIGTERM lands while it is
    // in flight.
    let builds = format!("/api/v2/workspaces/{id}/builds");
    sim.inject_fault(Fault::new(&builds, FaultKind::Latency(Duration::from_secs(3))).method("POST").times(1));
    sim.clear_requests();
    set_desired_state(&client, &namespace, "chat-1", "Stopped").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    // The fresh read before the build, by id once the workspace is known.
    let fresh_read = format!("/api/v2/workspaces/{id}");
    while !sim.requests().iter().any(|r| r.method == "GET" && r.path == fresh_read) {
        assert!(Instant::now() < deadline, "the leader never read the workspace after the patch");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let signalled_at = jiff::Timestamp::now();
    let signalled = Instant::now();
    first.terminate();
    let status = first.wait_exit(Duration::from_secs(20)).await;
    let exited = signalled.elapsed();
    let handed_over =
        wait_for_holder(&client, &namespace, &lease, Duration::from_secs(10), |h| h != Some("op-a")).await;
    let taken_over = wait_for_holder(&client, &namespace, &lease, Duration::from_secs(10), |h| h == Some("op-b")).await;
    eprintln!(
        "MEASURED SIGTERM with a 3 s Coder request in flight -> exit {} ms; exit -> standby holds the Lease {} ms",
        millis(exited),
        millis(taken_over.saturating_duration_since(signalled + exited))
    );
    assert!(status.success(), "{status}; log:\n{}", first.logs());
    assert!(exited < Duration::from_secs(10), "took {exited:?} to exit");
    assert!(handed_over - signalled <= exited + Duration::from_millis(500), "released, not expired");
    assert!(taken_over - signalled < exited + Duration::from_secs(2), "the standby took over at its next retry");

    let requests = sim.requests();
    let build = requests.iter().find(|r| r.method == "POST" && r.path == builds).expect("the stop build request");
    assert!(build.at < signalled_at, "the build request was in flight when SIGTERM arrived");
    assert_eq!(build.status, 201, "the request in flight was finished, not abandoned");
    assert!(first.logs().contains("released the leader lease"), "{}", first.logs());

    // The new leader finishes the job without a second stop.
    wait_for_condition(&client, &namespace, "chat-1", "Ready", "True", CONVERGE).await;
    let transitions: Vec<String> = sim.builds(id).into_iter().map(|b| b.transition).collect();
    assert_eq!(transitions, ["start", "stop"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_lease_is_taken_stops_and_exits() {
    let plane = ControlPlane::shared();
    let client = plane.client().await;
    let sim = Simulator::start(SimConfig::fast()).await.unwrap();
    let namespace = support::granted_namespace(plane, "usurped").await;
    let lease = unique("lease");
    let mut operator = OperatorProcess::spawn("op-a", &replica_env(&sim, &namespace, &lease, "op-a"));
    wait_for_holder(&client, &namespace, &lease, Duration::from_secs(30), |h| h == Some("op-a")).await;
    operator.wait_ready(Duration::from_secs(30)).await;

    // Someone else writes the Lease (as an operator of the cluster might, or
    // a replica that judged it expired during a partition).
    let leases = Api::<Lease>::namespaced(client.clone(), &namespace);
    let taken = loop {
        let mut current = leases.get(&lease).await.unwrap();
        let spec = current.spec.get_or_insert_with(Default::default);
        spec.holder_identity = Some("intruder".into());
        spec.renew_time = Some(MicroTime(jiff::Timestamp::now()));
        spec.lease_duration_seconds = Some(60);
        match leases.replace(&lease, &PostParams::default(), &current).await {
            Ok(_) => break Instant::now(),
            Err(kube::Error::Api(status)) if status.is_conflict() => continue,
            Err(error) => panic!("taking the Lease: {error}"),
        }
    };
    let status = operator.wait_exit(Duration::from_secs(10)).await;
    eprintln!("MEASURED Lease taken by another holder -> leader exits {} ms", millis(taken.elapsed()));
    assert!(!status.success(), "losing the Lease is a failure the kubelet restarts");
    assert!(operator.logs().contains("lost the leader lease"), "{}", operator.logs());
    assert_eq!(lease_holder(&client, &namespace, &lease).await.as_deref(), Some("intruder"), "left alone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_health_and_readiness_are_served() {
    let plane = ControlPlane::shared();
    let client = plane.client().await;
    let sim = Simulator::start(SimConfig::fast()).await.unwrap();
    let namespace = support::granted_namespace(plane, "metrics").await;
    // Leader election off: the single process reconciles at once.
    let env = operator_env(plane.kubeconfig_path(), &sim.url(), &sim.token(), &namespace);
    let mut operator = OperatorProcess::spawn("op", &env);
    operator.wait_ready(Duration::from_secs(30)).await;
    create_workspace(&client, &namespace, "chat-1", running()).await;
    wait_for_condition(&client, &namespace, "chat-1", "Ready", "True", CONVERGE).await;

    let (status, _, body) = operator.get("/healthz").await.unwrap();
    assert_eq!((status, body.as_str()), (200, "ok"));
    let (status, _, _) = operator.get("/readyz").await.unwrap();
    assert_eq!(status, 200);
    let (status, content_type, body) = operator.get("/metrics").await.unwrap();
    assert_eq!(status, 200);
    assert!(content_type.starts_with("application/openmetrics-text"), "{content_type}");
    let metrics = support::process::parse_exposition(&body).unwrap_or_else(|err| panic!("{err}\n{body}"));
    // Labelled families appear once they have a sample; errors and
    // recoveries have none in a healthy run.
    for (family, kind, always) in [
        ("chatworkspace_reconciles", "counter", true),
        ("chatworkspace_reconcile_errors", "counter", false),
        ("chatworkspace_reconcile_duration_seconds", "histogram", true),
        ("chatworkspace_coder_requests", "counter", true),
        ("chatworkspace_coder_request_duration_seconds", "histogram", true),
        ("chatworkspace_builds", "counter", true),
        ("chatworkspace_recoveries", "counter", false),
        ("chatworkspace_leader", "gauge", true),
    ] {
        match metrics.types.get(family) {
            Some(declared) => assert_eq!(declared, kind, "{family} in\n{body}"),
            None => assert!(!always, "no {family} in\n{body}"),
        }
    }
    assert!(metrics.value("chatworkspace_reconciles_total", &[("result", "ok")]) >= 1.0, "{body}");
    assert!(metrics.value("chatworkspace_reconcile_duration_seconds_count", &[]) >= 1.0);
    assert_eq!(metrics.value("chatworkspace_builds_total", &[("transition", "start")]), 1.0, "{body}");
    assert!(metrics.value("chatworkspace_coder_requests_total", &[]) >= 2.0);
    assert_eq!(metrics.value("chatworkspace_leader", &[]), 1.0, "without leader election it always acts");
    // Histogram buckets are cumulative and end in +Inf = count.
    let buckets: Vec<f64> = metrics
        .samples
        .iter()
        .filter(|s| s.name == "chatworkspace_reconcile_duration_seconds_bucket")
        .map(|s| s.value)
        .collect();
    assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{buckets:?}");
    assert_eq!(buckets.last().copied(), Some(metrics.value("chatworkspace_reconcile_duration_seconds_count", &[])));

    operator.terminate();
    assert!(operator.wait_exit(Duration::from_secs(10)).await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_is_ready_before_it_leads() {
    let plane = ControlPlane::shared();
    let client = plane.client().await;
    let sim = Simulator::start(SimConfig::fast()).await.unwrap();
    let namespace = support::granted_namespace(plane, "standby").await;
    let lease = unique("lease");
    // Another replica (in this test process) holds the Lease and renews it.
    let holder = leader::spawn(client.clone(), settings(&namespace, &lease, "someone-else"));
    let mut role = holder.role();
    tokio::time::timeout(Duration::from_secs(10), role.wait_for(|r| *r == Role::Leader)).await.unwrap().unwrap();

    let mut operator = OperatorProcess::spawn("op", &replica_env(&sim, &namespace, &lease, "op"));
    operator.wait_ready(Duration::from_secs(30)).await;
    let metrics = operator.metrics().await;
    assert_eq!(metrics.value("chatworkspace_leader", &[]), 0.0);
    create_workspace(&client, &namespace, "chat-1", running()).await;
    // Longer than the Lease duration: the holder's renewals keep it.
    tokio::time::sleep(LEASE_DURATION + Duration::from_secs(1)).await;
    assert_eq!(lease_holder(&client, &namespace, &lease).await.as_deref(), Some("someone-else"));
    let untouched = Api::<ChatWorkspace>::namespaced(client.clone(), &namespace).get("chat-1").await.unwrap();
    assert!(
        !support::written_by_operator(untouched.status.as_ref()) && untouched.metadata.finalizers.is_none(),
        "a standby does not reconcile: {:?}",
        untouched.status
    );
    assert!(sim.requests().is_empty(), "a standby does not call Coder");

    // The holder steps down: the standby leads at its next retry.
    assert!(holder.release().await.unwrap());
    wait_for_holder(&client, &namespace, &lease, Duration::from_secs(5), |h| h == Some("op")).await;
    wait_for_condition(&client, &namespace, "chat-1", "Ready", "True", CONVERGE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_at_once_while_the_apiserver_is_out_of_reach() {
    // Nothing listens there: the watch and the election keep retrying.
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    let server = format!("https://127.0.0.1:{}", support::process::free_port());
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "nowhere", "cluster": {"server": server}}],
        "users": [{"name": "nobody", "user": {"token": "unused"}}],
        "contexts": [{"name": "nowhere", "context": {"cluster": "nowhere", "user": "nobody", "namespace": "ops"}}],
        "current-context": "nowhere",
    });
    std::fs::write(&kubeconfig, config.to_string()).unwrap();
    for leader_election in ["false", "true"] {
        let env: Vec<(String, String)> = [
            ("KUBECONFIG", kubeconfig.to_string_lossy().as_ref()),
            ("LEADER_ELECTION", leader_election),
            ("WATCH_NAMESPACES", "ops"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let mut operator = OperatorProcess::spawn(&format!("unreachable-le-{leader_election}"), &env);
        operator.wait_live(Duration::from_secs(30)).await;
        let (status, _, _) = operator.get("/readyz").await.unwrap();
        assert_eq!(status, 503, "not ready without caches or a known leader");
        tokio::time::sleep(Duration::from_millis(500)).await;

        let signalled = Instant::now();
        operator.terminate();
        let status = operator.wait_exit(Duration::from_secs(10)).await;
        eprintln!(
            "MEASURED SIGTERM with the apiserver out of reach (leader election {leader_election}) -> exit {} ms",
            millis(signalled.elapsed())
        );
        assert!(status.success(), "{status}; log:\n{}", operator.logs());
        assert!(signalled.elapsed() < Duration::from_secs(2), "took {:?}", signalled.elapsed());
    }
}

// The election module on its own, against the real apiserver.

fn settings(namespace: &str, lease: &str, identity: &str) -> LeaseSettings {
    LeaseSettings {
        lease_duration: Duration::from_secs(3),
        renew_deadline: Duration::from_secs(2),
        retry_period: Duration::from_millis(500),
        ..LeaseSettings::new(lease, namespace, identity)
    }
}

#[tokio::test]
async fn of_candidates_racing_for_a_new_lease_exactly_one_wins() {
    let plane = ControlPlane::shared();
    let client = plane.client().await;
    let namespace = support::granted_namespace(plane, "race").await;
    let lease = unique("lease");
    let mut electors: Vec<Elector> =
        (0..5).map(|i| Elector::new(client.clone(), settings(&namespace, &lease, &format!("candidate-{i}")))).collect();

    let rounds = futures::future::join_all(electors.iter_mut().map(|e| e.try_acquire_or_renew())).await;
    let winners = rounds.iter().filter(|r| matches!(r, Ok(Role::Leader))).count();
    assert_eq!(winners, 1, "{rounds:?}");
    assert!(
        rounds.iter().all(|r| matches!(r, Ok(_) | Err(LeaseError::Conflict))),
        "losers see a conflict or a holder: {rounds:?}"
    );
    let holder = lease_holder(&client, &namespace, &lease).await.unwrap();

    // The next round: the winner renews, the others stand by behind it.
    for elector in &mut electors {
        let role = elector.try_acquire_or_renew().await.unwrap();
        if elector.settings().identity == holder {
            assert_eq!(role, Role::Leader);
        } else {
            assert_eq!(role, Role::Standby { holder: Some(holder.clone()) });
        }
    }
}

#[tokio::test]
async fn expiry_is_judged_on_the_candidates_clock_not_the_holders_timestamps() {
    let plane = ControlPlane::shared();
    let client = plane.client().await;
    let namespace = support::granted_namespace(plane, "skew").await;
    let lease = unique("lease");
    // A holder whose clock is decades behind: renewTime in 1970.
    let ghost = Lease {
        metadata: kube::api::ObjectMeta { name: Some(lease.clone()), ..Default::default() },
        spec: Some(k8s_openapi::api::coordination::v1::LeaseSpec {
            holder_identity: Some("ghost".into()),
            renew_time: Some(MicroTime(jiff::Timestamp::UNIX_EPOCH)),
            lease_duration_seconds: Some(2),
            ..Default::default()
        }),
    };
    Api::<Lease>::namespaced(client.clone(), &namespace).create(&PostParams::default(), &ghost).await.unwrap();

    let mut candidate = Elector::new(client.clone(), settings(&namespace, &lease, "me"));
    let first_seen = Instant::now();
    let mut role = candidate.try_acquire_or_renew().await.unwrap();
    assert_eq!(role, Role::Standby { holder: Some("ghost".into()) }, "an old renewTime alone is not expiry");
    while role != Role::Leader {
        tokio::time::sleep(Duration::from_millis(100)).await;
        role = candidate.try_acquire_or_renew().await.unwrap();
    }
    let waited = first_seen.elapsed();
    assert!(waited >= Duration::from_secs(2), "took over after {waited:?}, before the record's 2s had passed");
    assert!(waited < Duration::from_secs(4), "{waited:?}");
    let spec = Api::<Lease>::namespaced(client, &namespace).get(&lease).await.unwrap().spec.unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("me"));
    assert_eq!(spec.lease_transitions, Some(1));
}

#[tokio::test]
async fn only_the_holder_releases_and_a_released_lease_is_taken_at_once() {
    let plane = ControlPlane::shared();
    let client = plane.client().await;
    let namespace = support::granted_namespace(plane, "release").await;
    let lease = unique("lease");
    let mut holder = Elector::new(client.clone(), settings(&namespace, &lease, "holder"));
    let mut other = Elector::new(client.clone(), settings(&namespace, &lease, "other"));
    assert_eq!(holder.try_acquire_or_renew().await.unwrap(), Role::Leader);
    assert!(!other.release().await.unwrap(), "a non-holder releases nothing");
    assert_eq!(lease_holder(&client, &namespace, &lease).await.as_deref(), Some("holder"));
    assert_eq!(other.try_acquire_or_renew().await.unwrap(), Role::Standby { holder: Some("holder".into()) });

    assert!(holder.release().await.unwrap());
    assert_eq!(lease_holder(&client, &namespace, &lease).await, None);
    assert_eq!(other.try_acquire_or_renew().await.unwrap(), Role::Leader, "no waiting for expiry");
    assert!(!holder.release().await.unwrap(), "released once, then it is someone else's");
}

/// A TCP proxy to the apiserver that can cut every connection and refuse
/// new ones: a network partition between one replica and the apiserver.
struct Partition {
    addr: std::net::SocketAddr,
    cut: Arc<AtomicBool>,
}

impl Partition {
    async fn start(upstream: String) -> Partition {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let flag = cut.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if flag.load(Ordering::SeqCst) {
                    continue; // dropped: the connection is refused
                }
                let upstream = upstream.clone();
                let flag = flag.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(upstream).await else { return };
                    let copy = tokio::io::copy_bidirectional(&mut inbound, &mut outbound);
                    let partitioned = async {
                        while !flag.load(Ordering::SeqCst) {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    };
                    tokio::select! {
                        _ = copy => {}
                        () = partitioned => {}
                    }
                });
            }
        });
        Partition { addr, cut }
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_cannot_renew_steps_down_before_its_lease_expires() {
    let plane = ControlPlane::shared();
    let namespace = support::granted_namespace(plane, "partition").await;
    let lease = unique("lease");
    let upstream = plane.server_url().trim_start_matches("https://").to_owned();
    let partition = Partition::start(upstream).await;
    let mut kubeconfig: Kubeconfig = plane.kubeconfig();
    for cluster in &mut kubeconfig.clusters {
        if let Some(cluster) = cluster.cluster.as_mut() {
            cluster.server = Some(format!("https://{}", partition.addr));
        }
    }
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await.unwrap();
    let settings = settings(&namespace, &lease, "partitioned");
    let (deadline, duration) = (settings.renew_deadline, settings.lease_duration);
    let leadership = leader::spawn(Client::try_from(config).unwrap(), settings);
    let mut role = leadership.role();
    tokio::time::timeout(Duration::from_secs(10), role.wait_for(|r| *r == Role::Leader)).await.unwrap().unwrap();

    let cut = Instant::now();
    partition.cut();
    tokio::time::timeout(Duration::from_secs(10), role.wait_for(|r| *r != Role::Leader)).await.unwrap().unwrap();
    let stepped_down = cut.elapsed();
    eprintln!("MEASURED partition -> leader steps down {} ms (renew deadline {deadline:?})", millis(stepped_down));
    assert_eq!(*role.borrow(), Role::Standby { holder: None });
    assert!(stepped_down <= deadline + Duration::from_millis(300), "stepped down after {stepped_down:?}");
    assert!(stepped_down < duration, "it stopped before anyone else could take the Lease");
    // Not released: the apiserver is out of reach. Dropping ends the task.
    drop(leadership);
}
