//! The operator as users run it: the release image `make image` builds,
//! installed by `helm install` by digest onto a real node (the test bed's
//! kubelet, containerd, kube-proxy, scheduler and controller-manager), with
//! the Coder simulator inside the node's network. The pod is Ready through
//! its probe, leads, serves a namespace editor's ChatWorkspace, keeps its
//! token out of its logs, runs with the chart's security context and memory
//! limit, and serves /metrics.
//!
//! Needs root and `make tools image` (it fails, never skips, saying so).

mod support;

use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use chatworkspace_operator::crd::ChatWorkspace;
use coder_sim::{SimConfig, Simulator};
use k8s_openapi::api::authorization::v1::SelfSubjectAccessReview;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::api::{DeleteParams, EvictParams, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use serde_json::json;
use support::process::{CONVERGE, chart_dir, lease_holder, run, unique, wait_for_condition};
use testbed::node::{NODE_IP, Node};

/// How long a pod gets from `helm install` to Ready (2.4 s measured on an
/// idle machine; the bound is for a busy one).
const POD_READY: Duration = Duration::from_secs(120);

/// The chart's memory limit (values.yaml, resources.limits.memory).
const MEMORY_LIMIT_BYTES: u64 = 256 * 1024 * 1024;

/// The tests of this binary take turns: an operator serving every namespace
/// would also serve the other tests' resources.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The node, shared by this binary's tests, with the release image imported.
fn node() -> &'static Node {
    static NODE: OnceLock<Result<Node, String>> = OnceLock::new();
    let started = NODE.get_or_init(|| {
        let archive = image_archive();
        if !archive.is_file() {
            return Err(format!(
                "{} not found: run `make image` (the tests install the release image)",
                archive.display()
            ));
        }
        let node = Node::start().map_err(|err| format!("{err:#}"))?;
        node.import_image(&archive).map_err(|err| format!("{err:#}"))?;
        Ok(node)
    });
    match started {
        Ok(node) => node,
        Err(message) => panic!("the test bed's node did not start: {message}"),
    }
}

/// `make image`'s archive: `<target dir>/image/chatworkspace-operator.oci.tar`,
/// the target directory being the one this test binary was built in.
fn image_archive() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    // <target>/debug/deps/in_cluster-<hash>
    let target = exe.ancestors().nth(3).expect("a test binary inside the target directory");
    target.join("image").join("chatworkspace-operator.oci.tar")
}

/// The image's manifest digest, as `make image` printed it.
fn image_digest() -> String {
    let path = image_archive().with_extension("tar.digest");
    fs::read_to_string(&path)
        .unwrap_or_else(|err| panic!("{}: {err}; run `make image`", path.display()))
        .trim()
        .to_owned()
}

/// Starts the simulator inside the node's network, at the node's address.
async fn simulator_in_node(node: &Node, token: &str) -> Simulator {
    let config = SimConfig { token: token.to_owned(), ..SimConfig::fast() };
    let addr: SocketAddr = format!("{NODE_IP}:0").parse().unwrap();
    // The listener is created before the first yield, so on this thread.
    let inside = node.enter_network().expect("entering the node's network");
    let sim = Simulator::bind(config, addr).await.expect("start the Coder simulator in the node's network");
    drop(inside);
    sim
}

/// `helm <args>` against the node's control plane.
fn helm(node: &Node, args: &[&str], values: Option<&serde_json::Value>) -> String {
    let file = tempfile::Builder::new().suffix(".json").tempfile().unwrap();
    let mut command = node.control_plane().helm();
    command.args(args);
    if let Some(values) = values {
        fs::write(file.path(), values.to_string()).unwrap();
        command.arg(chart_dir()).arg("--values").arg(file.path());
    }
    run(command, &format!("helm {}", args.join(" ")))
}

/// The Secret `coder-token` the chart mounts (`coder.tokenSecret`).
async fn create_token_secret(admin: &Client, namespace: &str, token: &str) {
    let secret: Secret =
        serde_json::from_value(json!({"metadata": {"name": "coder-token"}, "stringData": {"token": token}})).unwrap();
    Api::<Secret>::namespaced(admin.clone(), namespace).create(&PostParams::default(), &secret).await.unwrap();
}

/// The pods of a release.
async fn release_pods(client: &Client, namespace: &str, release: &str) -> Vec<Pod> {
    Api::<Pod>::namespaced(client.clone(), namespace)
        .list(&ListParams::default().labels(&format!("app.kubernetes.io/instance={release}")))
        .await
        .unwrap()
        .items
}

/// Waits until the release has `count` pods, all Ready; returns them.
async fn wait_release_ready(node: &Node, client: &Client, namespace: &str, release: &str, count: usize) -> Vec<Pod> {
    let deadline = Instant::now() + POD_READY;
    loop {
        let pods: Vec<Pod> = release_pods(client, namespace, release)
            .await
            .into_iter()
            .filter(|pod| pod.metadata.deletion_timestamp.is_none())
            .collect();
        let ready = pods
            .iter()
            .filter(|pod| {
                pod.status
                    .as_ref()
                    .and_then(|status| status.conditions.as_ref())
                    .is_some_and(|conditions| conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            })
            .count();
        if pods.len() == count && ready == count {
            return pods;
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = pods
                .iter()
                .map(|pod| node.pod_logs(namespace, pod.metadata.name.as_deref().unwrap_or_default()))
                .collect();
            panic!(
                "release {namespace}/{release}: {ready} of {count} pods Ready after {POD_READY:?}: {:#?}\nlogs:\n{}\n(node files in {})",
                pods.iter().map(|pod| &pod.status).collect::<Vec<_>>(),
                logs.join("\n---\n"),
                node.dir().display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A client acting as a ServiceAccount of `namespace` bound there to
/// Kubernetes' own ClusterRole `role` (`admin`, `edit`, `view`), which the
/// controller-manager aggregates the chart's roles into: a namespace's
/// people as clusters have them.
async fn namespace_member(node: &Node, admin: &Client, namespace: &str, role: &str) -> Client {
    let plane = node.control_plane();
    let account: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": role}})).unwrap();
    Api::<ServiceAccount>::namespaced(admin.clone(), namespace).create(&PostParams::default(), &account).await.unwrap();
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": role},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"kind": "ServiceAccount", "name": role, "namespace": namespace}],
    }))
    .unwrap();
    Api::<RoleBinding>::namespaced(admin.clone(), namespace).create(&PostParams::default(), &binding).await.unwrap();
    let token = plane.token_for_service_account(namespace, role).unwrap();
    let kubeconfig = Kubeconfig::read_from(plane.kubeconfig_for_token(&token).unwrap()).unwrap();
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await.unwrap();
    Client::try_from(config).unwrap()
}

/// Whether `client` may `verb` ChatWorkspaces in `namespace`, as the
/// apiserver answers it (`kubectl auth can-i`).
async fn may(client: &Client, namespace: &str, verb: &str) -> bool {
    let review: SelfSubjectAccessReview = serde_json::from_value(json!({"spec": {"resourceAttributes": {
        "group": "chat.coder.com", "resource": "chatworkspaces", "verb": verb, "namespace": namespace,
    }}}))
    .unwrap();
    let answer = Api::<SelfSubjectAccessReview>::all(client.clone()).create(&PostParams::default(), &review).await;
    answer.unwrap().status.is_some_and(|status| status.allowed)
}

/// Waits until the aggregation lets `client` `verb` ChatWorkspaces.
async fn wait_until_may(client: &Client, namespace: &str, role: &str, verb: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !may(client, namespace, verb).await {
        assert!(Instant::now() < deadline, "Kubernetes' {role} role does not let {verb} ChatWorkspaces after 30 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Creates a ChatWorkspace as `client`, retrying while it is refused: the
/// aggregation of the chart's role into `edit`, and the admission policy's
/// view of a namespace's fresh grant, each take a moment.
async fn create_as(client: &Client, namespace: &str, name: &str, spec: serde_json::Value) {
    let object: ChatWorkspace = serde_json::from_value(json!({
        "apiVersion": "chat.coder.com/v1alpha1",
        "kind": "ChatWorkspace",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }))
    .unwrap();
    let api = Api::<ChatWorkspace>::namespaced(client.clone(), namespace);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match api.create(&PostParams::default(), &object).await {
            Ok(_) => return,
            Err(kube::Error::Api(status)) if status.code == 403 && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(err) => panic!("the namespace editor cannot create ChatWorkspace {namespace}/{name}: {err}"),
        }
    }
}

/// The host pid of the operator's process in `pod` (not the sandbox's).
fn operator_pid(node: &Node, pod: &Pod) -> u32 {
    let uid = pod.metadata.uid.as_deref().unwrap();
    node.pod_pids(uid)
        .into_iter()
        .find(|pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains("chatworkspace-operator"))
        })
        .unwrap_or_else(|| panic!("no operator process in pod {:?}", pod.metadata.name))
}

fn status_field(pid: u32, field: &str) -> String {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
        .trim()
        .to_owned()
}

/// The memory limit of the cgroup (v1) `pid` is in.
fn memory_limit(pid: u32) -> u64 {
    let cgroups = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let path = cgroups
        .lines()
        .find_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            controllers.split(',').any(|c| c == "memory").then(|| path.to_owned())
        })
        .expect("a memory cgroup");
    let file = Path::new("/sys/fs/cgroup/memory").join(path.trim_start_matches('/')).join("memory.limit_in_bytes");
    fs::read_to_string(&file).unwrap_or_else(|err| panic!("{}: {err}", file.display())).trim().parse().unwrap()
}

#[tokio::test]
async fn helm_install_runs_the_image_as_a_pod_that_leads_and_reconciles() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let node = tokio::task::spawn_blocking(node).await.unwrap();
    let plane = node.control_plane();
    let admin = plane.client().await;
    let token = format!("in-cluster-{}", uuid::Uuid::new_v4().simple());
    let sim = simulator_in_node(node, &token).await;

    let home = plane.namespace("operator").await;
    create_token_secret(&admin, &home, &token).await;

    // The README's steps: the image by digest, the Coder URL by host name
    // (resolved from the pod's /etc/hosts by the static binary itself).
    let release = unique("op");
    let team = support::granted_namespace(plane, "team").await;
    let coder_url = format!("http://coder-sim.test:{}", sim.addr().port());
    let values = json!({
        "image": {"repository": "chatworkspace-operator", "digest": image_digest()},
        "coder": {"url": coder_url, "tokenSecret": {"name": "coder-token"}},
        "hostAliases": [{"ip": NODE_IP, "hostnames": ["coder-sim.test"]}],
        "watchNamespaces": [team],
        "activeInterval": "200ms",
        // The chart's liveness probe (its path and port), probed every
        // second: one that missed would restart the container in 3 s.
        "livenessProbe": {"periodSeconds": 1},
    });
    let installed = Instant::now();
    helm(node, &["install", &release, "--namespace", &home], Some(&values));
    let pods = wait_release_ready(node, &admin, &home, &release, 1).await;
    let ready_after = installed.elapsed();
    let pod = &pods[0];
    let pod_name = pod.metadata.name.clone().unwrap();

    // It leads: the Lease names the pod (POD_NAME from the downward API).
    let fullname = format!("{release}-chatworkspace-operator");
    let deadline = Instant::now() + Duration::from_secs(30);
    while lease_holder(&admin, &home, &fullname).await.as_deref() != Some(pod_name.as_str()) {
        assert!(Instant::now() < deadline, "the pod {pod_name} did not take the Lease {fullname}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let leading_after = installed.elapsed();

    // A namespace editor's ChatWorkspace, on the default credentials (the
    // namespace is granted any owner), reaches Ready against the simulator.
    let editor = namespace_member(node, &admin, &team, "edit").await;
    create_as(&editor, &team, "chat", json!({"desiredState": "Running", "template": {"name": "docker-dev"}})).await;
    let ready = wait_for_condition(&admin, &team, "chat", "Ready", "True", CONVERGE).await;
    let workspace = ready.status.unwrap().workspace.unwrap();
    assert_eq!(workspace.name, "chat");
    assert!(sim.workspace_id("admin", "chat").is_some(), "the workspace exists in the simulator");
    // The chart's roles reach Kubernetes' admin and view roles too: a
    // namespace admin manages ChatWorkspaces, a viewer only reads them.
    let namespace_admin = namespace_member(node, &admin, &team, "admin").await;
    for verb in ["create", "patch", "delete"] {
        wait_until_may(&namespace_admin, &team, "admin", verb).await;
    }
    let viewer = namespace_member(node, &admin, &team, "view").await;
    for verb in ["get", "list", "watch"] {
        wait_until_may(&viewer, &team, "view", verb).await;
    }
    for verb in ["create", "patch", "delete"] {
        assert!(!may(&viewer, &team, verb).await, "a viewer may not {verb} ChatWorkspaces");
    }
    let listed = Api::<ChatWorkspace>::namespaced(viewer, &team).list(&ListParams::default()).await.unwrap();
    assert_eq!(listed.items.len(), 1, "the viewer reads the namespace's ChatWorkspace");
    eprintln!(
        "in-cluster: pod Ready {:.1}s after helm install, leading after {:.1}s",
        ready_after.as_secs_f64(),
        leading_after.as_secs_f64()
    );

    // The token, read from the chart's Secret mount, is in no log line.
    let logs = node.pod_logs(&home, &pod_name);
    assert!(logs.contains("leader"), "the pod's logs are read: {logs}");
    assert!(!logs.contains(&token), "the Coder token appears in the pod's logs");

    // The chart's security context and memory limit, as the kernel applies
    // them to the running process.
    let pid = operator_pid(node, pod);
    let uid_line = status_field(pid, "Uid");
    assert!(uid_line.split_whitespace().all(|uid| uid == "65532"), "runs as 65532: Uid {uid_line}");
    assert_eq!(status_field(pid, "CapEff"), "0000000000000000", "no capabilities");
    assert_eq!(status_field(pid, "CapBnd"), "0000000000000000", "none to gain either");
    assert_eq!(status_field(pid, "NoNewPrivs"), "1", "no privilege escalation");
    let mounts = fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let root = mounts
        .lines()
        .find(|line| line.split(' ').nth(4) == Some("/"))
        .unwrap_or_else(|| panic!("no root mount in {mounts}"));
    assert!(
        root.split(' ').nth(5).is_some_and(|options| options.split(',').any(|o| o == "ro")),
        "read-only root: {root}"
    );
    assert_eq!(memory_limit(pid), MEMORY_LIMIT_BYTES, "the chart's memory limit");
    let gid_line = status_field(pid, "Gid");
    assert!(gid_line.split_whitespace().all(|gid| gid == "65532"), "runs as group 65532: Gid {gid_line}");
    assert_eq!(status_field(pid, "Seccomp"), "2", "the runtime's default seccomp profile filters its system calls");
    // fsGroup: the mounted token belongs to the pod's group, which may read it.
    let token_file = fs::metadata(format!("/proc/{pid}/root/var/run/secrets/coder/token")).unwrap();
    assert_eq!(token_file.gid(), 65532, "the token file's group is the fsGroup");
    assert_ne!(token_file.mode() & 0o040, 0, "the group may read the token file: {:o}", token_file.mode());

    // logging.format's default, json: every line the container wrote is a
    // JSON object (a CRI log line: time, stream, tag, then the line).
    let lines: Vec<&str> = logs.lines().filter_map(|line| line.splitn(4, ' ').nth(3)).collect();
    assert!(!lines.is_empty(), "{logs}");
    for line in lines {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok_and(|v| v.is_object()),
            "not a JSON log line: {line}"
        );
    }

    // /metrics on the admin port, scraped at the pod's address as
    // Prometheus would.
    let pod_ip = pod.status.as_ref().and_then(|status| status.pod_ip.clone()).unwrap();
    let (status, metrics) = node.http_get(format!("{pod_ip}:8080").parse().unwrap(), "/metrics").unwrap();
    assert_eq!(status, 200, "{metrics}");
    assert!(metrics.contains("chatworkspace_"), "{metrics}");
    // And as a ServiceMonitor finds it: the chart's metrics Service has the
    // pod, ready, as its endpoint on the `metrics` port, which serves it.
    let slices = Api::<EndpointSlice>::namespaced(admin.clone(), &home);
    let selector = format!("kubernetes.io/service-name={fullname}-metrics");
    let deadline = Instant::now() + Duration::from_secs(30);
    let target = loop {
        let found =
            slices.list(&ListParams::default().labels(&selector)).await.unwrap().items.into_iter().find_map(|slice| {
                let port = slice.ports?.into_iter().find(|port| port.name.as_deref() == Some("metrics"))?.port?;
                let endpoint = slice.endpoints.into_iter().find(|endpoint| {
                    endpoint.conditions.as_ref().and_then(|c| c.ready) == Some(true)
                        && endpoint.target_ref.as_ref().and_then(|r| r.name.as_deref()) == Some(pod_name.as_str())
                })?;
                Some(format!("{}:{port}", endpoint.addresses.first()?))
            });
        if let Some(target) = found {
            break target;
        }
        assert!(Instant::now() < deadline, "the metrics Service has no ready endpoint for {pod_name}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (status, metrics) = node.http_get(target.parse().unwrap(), "/metrics").unwrap();
    assert_eq!(status, 200, "{metrics}");
    assert!(metrics.contains("chatworkspace_leader 1"), "{metrics}");

    // Probed live at least twice the failures that restart it: never
    // restarted.
    while installed.elapsed() < ready_after + Duration::from_secs(6) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let running = Api::<Pod>::namespaced(admin.clone(), &home).get(&pod_name).await.unwrap();
    let restarts: Vec<i32> =
        running.status.and_then(|s| s.container_statuses).unwrap_or_default().iter().map(|c| c.restart_count).collect();
    assert_eq!(restarts, [0], "the liveness probe passes: no restart");

    helm(node, &["uninstall", &release, "--namespace", &home, "--wait"], None);
}

/// Waits until the Lease names one of `pods`; returns that pod's name.
async fn wait_for_leader(client: &Client, namespace: &str, lease: &str, pods: &[Pod], timeout: Duration) -> String {
    let names: Vec<String> = pods.iter().filter_map(|pod| pod.metadata.name.clone()).collect();
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(holder) = lease_holder(client, namespace, lease).await
            && names.contains(&holder)
        {
            return holder;
        }
        assert!(
            Instant::now() < deadline,
            "none of {names:?} holds the Lease {namespace}/{lease} after {timeout:?} (holder: {:?})",
            lease_holder(client, namespace, lease).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the release has no pods left.
async fn wait_release_gone(client: &Client, namespace: &str, release: &str) {
    let deadline = Instant::now() + POD_READY;
    while !release_pods(client, namespace, release).await.is_empty() {
        assert!(Instant::now() < deadline, "the pods of {namespace}/{release} are still there after {POD_READY:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `helm uninstall` removes the Role that lets the leader release its
/// Lease at about the time the pod gets SIGTERM; the Lease must not stay
/// held by a pod that is gone, or a reinstall waits out the whole lease
/// duration before it does anything.
#[tokio::test]
async fn after_helm_uninstall_an_immediate_reinstall_leads_at_once() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let node = tokio::task::spawn_blocking(node).await.unwrap();
    let plane = node.control_plane();
    let admin = plane.client().await;
    let home = plane.namespace("reinstall").await;
    let release = unique("re");
    let lease = format!("{release}-chatworkspace-operator");
    create_token_secret(&admin, &home, "unused").await;
    // A lease long enough that waiting it out cannot pass for leading at once.
    let lease_duration = Duration::from_secs(30);
    let values = json!({
        "image": {"repository": "chatworkspace-operator", "digest": image_digest()},
        "coder": {"url": format!("http://{NODE_IP}:9"), "tokenSecret": {"name": "coder-token"}},
        "watchNamespaces": [home],
        "rbac": {"aggregatedRoles": false},
        "leaderElection": {"leaseDuration": "30s", "renewDeadline": "20s", "retryPeriod": "2s"},
    });
    helm(node, &["install", &release, "--namespace", &home], Some(&values));
    let pods = wait_release_ready(node, &admin, &home, &release, 1).await;
    wait_for_leader(&admin, &home, &lease, &pods, Duration::from_secs(30)).await;

    helm(node, &["uninstall", &release, "--namespace", &home, "--wait"], None);
    wait_release_gone(&admin, &home, &release).await;

    let reinstalled = Instant::now();
    helm(node, &["install", &release, "--namespace", &home], Some(&values));
    let pods = wait_release_ready(node, &admin, &home, &release, 1).await;
    wait_for_leader(&admin, &home, &lease, &pods, lease_duration).await;
    let leading_after = reinstalled.elapsed();
    eprintln!("in-cluster: reinstall leading {:.1}s after helm install", leading_after.as_secs_f64());
    assert!(
        leading_after < lease_duration / 3,
        "the reinstalled operator led only after {leading_after:?}: it waited for the uninstalled pod's Lease to expire"
    );
    helm(node, &["uninstall", &release, "--namespace", &home, "--wait"], None);
}

fn sigkill(pid: u32) {
    let status = std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status().unwrap();
    assert!(status.success(), "kill -KILL {pid}");
}

/// Flips the ChatWorkspace's desired state and returns how long until the
/// simulator records the one build that asks for, after `since`; then
/// checks, once the resource is Ready for that generation, that no second
/// build was made (by two leaders, or one leader twice).
async fn next_action_after(
    admin: &Client,
    sim: &Simulator,
    namespace: &str,
    name: &str,
    desired: &str,
    since: Instant,
) -> Duration {
    let id = sim.workspace_id("admin", name).expect("the workspace exists in the simulator");
    let before = sim.builds(id).len();
    Api::<ChatWorkspace>::namespaced(admin.clone(), namespace)
        .patch(name, &PatchParams::default(), &Patch::Merge(json!({"spec": {"desiredState": desired}})))
        .await
        .unwrap();
    let deadline = Instant::now() + CONVERGE;
    while sim.builds(id).len() == before {
        assert!(Instant::now() < deadline, "no build for desiredState {desired} after {CONVERGE:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let acted = since.elapsed();
    wait_for_condition(admin, namespace, name, "Ready", "True", CONVERGE).await;
    let builds = sim.builds(id);
    assert_eq!(builds.len(), before + 1, "one build for desiredState {desired}: {builds:#?}");
    acted
}

/// Two replicas, as the chart runs them with replicaCount 2 and its
/// default lease settings (15 s / 10 s / 2 s): the leader pod deleted, its
/// container SIGKILLed, and its node lost (the pod's processes killed and
/// the pod force-deleted). Each time the next action (a build the spec asks
/// for) follows, once.
#[tokio::test]
async fn two_replicas_hand_over_on_delete_crash_and_node_loss() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let node = tokio::task::spawn_blocking(node).await.unwrap();
    let plane = node.control_plane();
    let admin = plane.client().await;
    let token = format!("failover-{}", uuid::Uuid::new_v4().simple());
    let sim = simulator_in_node(node, &token).await;
    let home = plane.namespace("failover").await;
    create_token_secret(&admin, &home, &token).await;
    let release = unique("ha");
    let lease = format!("{release}-chatworkspace-operator");
    let team = support::granted_namespace(plane, "ha-team").await;
    let values = json!({
        "watchNamespaces": [team],
        "replicaCount": 2,
        "image": {"repository": "chatworkspace-operator", "digest": image_digest()},
        "coder": {"url": sim.url(), "tokenSecret": {"name": "coder-token"}},
        // The aggregated roles are cluster-wide: one release of this binary's
        // concurrent tests creates them.
        "rbac": {"aggregatedRoles": false},
        "activeInterval": "200ms",
    });
    helm(node, &["install", &release, "--namespace", &home], Some(&values));
    let pods = wait_release_ready(node, &admin, &home, &release, 2).await;
    let leader = wait_for_leader(&admin, &home, &lease, &pods, Duration::from_secs(30)).await;
    // The standby is ready and serves /metrics too, saying it does not lead.
    for pod in &pods {
        let pod_ip = pod.status.as_ref().and_then(|status| status.pod_ip.clone()).unwrap();
        let (status, text) = node.http_get(format!("{pod_ip}:8080").parse().unwrap(), "/metrics").unwrap();
        assert_eq!(status, 200, "{text}");
        let leads = support::process::parse_exposition(&text).unwrap().value("chatworkspace_leader", &[]);
        let expected = if pod.metadata.name.as_deref() == Some(leader.as_str()) { 1.0 } else { 0.0 };
        assert_eq!(leads, expected, "{:?}: chatworkspace_leader", pod.metadata.name);
    }

    create_as(&admin, &team, "chat", json!({"desiredState": "Running", "template": {"name": "docker-dev"}})).await;
    wait_for_condition(&admin, &team, "chat", "Ready", "True", CONVERGE).await;
    let pod_api = Api::<Pod>::namespaced(admin.clone(), &home);

    // The leader pod deleted: it releases the Lease on SIGTERM. The spec
    // changes once it no longer leads, so the action is the new leader's.
    let deleted = Instant::now();
    pod_api.delete(&leader, &DeleteParams::default()).await.unwrap();
    let handed_over = support::process::wait_for_holder(&admin, &home, &lease, Duration::from_secs(30), |holder| {
        holder != Some(leader.as_str())
    })
    .await;
    let released_after = handed_over - deleted;
    let after_delete = next_action_after(&admin, &sim, &team, "chat", "Stopped", deleted).await;
    let pods = wait_release_ready(node, &admin, &home, &release, 2).await;
    let leader = wait_for_leader(&admin, &home, &lease, &pods, Duration::from_secs(30)).await;

    // The leader's container SIGKILLed: kubelet restarts it in the same pod,
    // under the same POD_NAME, and it takes its own Lease back.
    let leader_pod = pods.iter().find(|pod| pod.metadata.name.as_deref() == Some(leader.as_str())).unwrap();
    let killed = Instant::now();
    let pid = operator_pid(node, leader_pod);
    sigkill(pid);
    let after_crash = next_action_after(&admin, &sim, &team, "chat", "Running", killed).await;
    let pods = wait_release_ready(node, &admin, &home, &release, 2).await;
    let leader = wait_for_leader(&admin, &home, &lease, &pods, Duration::from_secs(30)).await;

    // The leader's node lost: every process of its pod killed, the pod
    // force-deleted; the standby waits for the Lease to expire.
    let leader_pod = pods.iter().find(|pod| pod.metadata.name.as_deref() == Some(leader.as_str())).unwrap();
    let lost = Instant::now();
    for pid in node.pod_pids(leader_pod.metadata.uid.as_deref().unwrap()) {
        sigkill(pid);
    }
    pod_api.delete(&leader, &DeleteParams { grace_period_seconds: Some(0), ..DeleteParams::default() }).await.unwrap();
    let after_loss = next_action_after(&admin, &sim, &team, "chat", "Stopped", lost).await;

    eprintln!(
        "in-cluster: leader pod deleted -> Lease no longer its {:.2}s; next action after its deletion {:.2}s, \
         its container's SIGKILL {:.2}s, its node's loss {:.2}s",
        released_after.as_secs_f64(),
        after_delete.as_secs_f64(),
        after_crash.as_secs_f64(),
        after_loss.as_secs_f64()
    );
    let lease_duration = Duration::from_secs(15);
    assert!(after_delete < lease_duration / 3, "a deleted leader released its Lease: {after_delete:?}");
    assert!(after_crash < lease_duration / 3, "a restarted leader took its own Lease back: {after_crash:?}");
    assert!(after_loss < lease_duration * 2, "the standby took over within the lease: {after_loss:?}");

    // The PodDisruptionBudget (minAvailable 1 with two replicas) selects
    // both pods, allows one eviction, and none after it.
    let pods = wait_release_ready(node, &admin, &home, &release, 2).await;
    let pdb_api = Api::<PodDisruptionBudget>::namespaced(admin.clone(), &home);
    let budget = |pdb: PodDisruptionBudget| pdb.status.map(|s| (s.current_healthy, s.disruptions_allowed));
    let deadline = Instant::now() + Duration::from_secs(30);
    while budget(pdb_api.get(&lease).await.unwrap()) != Some((2, 1)) {
        assert!(Instant::now() < deadline, "the PodDisruptionBudget does not count both pods");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let first = pods[0].metadata.name.clone().unwrap();
    pod_api.evict(&first, &EvictParams::default()).await.expect("evicting one of two pods is allowed");
    let after = pdb_api.get(&lease).await.unwrap().status.unwrap();
    assert_eq!(after.disruptions_allowed, 0, "no second eviction: {after:?}");

    // A helm upgrade that changes a flag rolls both pods, one at a time:
    // leadership moves to a new pod, which acts once.
    wait_release_ready(node, &admin, &home, &release, 2).await;
    let old: Vec<String> =
        release_pods(&admin, &home, &release).await.into_iter().filter_map(|pod| pod.metadata.name).collect();
    let upgraded = Instant::now();
    let mut changed = values.clone();
    changed["concurrency"] = json!(8);
    helm(node, &["upgrade", &release, "--namespace", &home], Some(&changed));
    let deadline = Instant::now() + POD_READY;
    let pods = loop {
        let pods = wait_release_ready(node, &admin, &home, &release, 2).await;
        if pods.iter().all(|pod| !old.contains(pod.metadata.name.as_ref().unwrap())) {
            break pods;
        }
        assert!(Instant::now() < deadline, "the upgrade did not replace both pods");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    wait_for_leader(&admin, &home, &lease, &pods, Duration::from_secs(30)).await;
    let after_upgrade = next_action_after(&admin, &sim, &team, "chat", "Running", upgraded).await;
    eprintln!(
        "in-cluster: helm upgrade of two replicas -> the new pods' first action {:.1}s",
        after_upgrade.as_secs_f64()
    );
    helm(node, &["uninstall", &release, "--namespace", &home, "--wait"], None);
}

/// A namespace deleted with ChatWorkspaces in it: the controller-manager's
/// namespace controller deletes them, the operator's finalizer applies each
/// one's deletionPolicy in Coder, and the namespace disappears.
#[tokio::test]
async fn a_deleted_namespace_applies_each_workspaces_deletion_policy_and_goes() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let node = tokio::task::spawn_blocking(node).await.unwrap();
    let plane = node.control_plane();
    let admin = plane.client().await;
    let token = format!("namespace-{}", uuid::Uuid::new_v4().simple());
    let sim = simulator_in_node(node, &token).await;
    let home = plane.namespace("ns-operator").await;
    create_token_secret(&admin, &home, &token).await;
    let release = unique("ns");
    let team = support::granted_namespace(plane, "doomed").await;
    // Served cluster-wide, as by default: with watchNamespaces, the
    // operator's Role in the namespace is deleted with it, and the
    // finalizers could not be removed.
    let values = json!({
        "image": {"repository": "chatworkspace-operator", "digest": image_digest()},
        "coder": {"url": sim.url(), "tokenSecret": {"name": "coder-token"}},
        // The aggregated roles are cluster-wide: one release of this binary's
        // concurrent tests creates them.
        "rbac": {"aggregatedRoles": false},
        "activeInterval": "200ms",
    });
    helm(node, &["install", &release, "--namespace", &home], Some(&values));
    wait_release_ready(node, &admin, &home, &release, 1).await;

    for (name, policy) in [("stopped-on-delete", "Stop"), ("deleted-on-delete", "Delete")] {
        let spec = json!({"desiredState": "Running", "template": {"name": "docker-dev"}, "deletionPolicy": policy});
        create_as(&admin, &team, name, spec).await;
    }
    let mut ids = Vec::new();
    for name in ["stopped-on-delete", "deleted-on-delete"] {
        wait_for_condition(&admin, &team, name, "Ready", "True", CONVERGE).await;
        ids.push(sim.workspace_id("admin", name).unwrap());
    }

    let deleted = Instant::now();
    Api::<Namespace>::all(admin.clone()).delete(&team, &DeleteParams::default()).await.unwrap();
    let deadline = Instant::now() + CONVERGE;
    while Api::<Namespace>::all(admin.clone()).get_opt(&team).await.unwrap().is_some() {
        assert!(Instant::now() < deadline, "namespace {team} still there after {CONVERGE:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "in-cluster: namespace with two ChatWorkspaces gone {:.1}s after its deletion",
        deleted.elapsed().as_secs_f64()
    );
    let last = |id| sim.builds(id).last().map(|build| build.transition.clone());
    assert_eq!(last(ids[0]).as_deref(), Some("stop"), "deletionPolicy Stop: the workspace was stopped");
    assert_eq!(last(ids[1]).as_deref(), Some("delete"), "deletionPolicy Delete: the workspace was deleted");
    helm(node, &["uninstall", &release, "--namespace", &home, "--wait"], None);
}
