//! One tenant must not exhaust the operator for the others: every spec
//! string and list is bounded by the CRD, so the apiserver refuses what is
//! too long at `kubectl apply`; and what the operator caches for a resource
//! (template reads, a Secret's Coder client) goes when no live resource
//! uses it. Against the real kube-apiserver (and the Coder simulator, with
//! the operator as its own process so its resident memory can be read).

mod support;

use std::time::{Duration, Instant};

use chatworkspace_operator::conditions::{self, READY};
use chatworkspace_operator::crd::ChatWorkspace;
use coder_sim::{SimConfig, Simulator};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};
use support::process::{OperatorProcess, operator_env};
use testbed::ControlPlane;

fn manifest(namespace: &str, name: &str, spec: &Value) -> Value {
    json!({"apiVersion": "chat.coder.com/v1alpha1", "kind": "ChatWorkspace",
           "metadata": {"name": name, "namespace": namespace}, "spec": spec})
}

/// `kubectl apply --server-side` of one ChatWorkspace (a client-side apply
/// copies the object into an annotation, whose 256 KiB cap 64 parameters of
/// 4096 characters would pass): whether it was accepted, and what kubectl
/// said.
fn kubectl_apply(plane: &ControlPlane, manifest: &Value) -> (bool, String) {
    let file = tempfile::Builder::new().suffix(".json").tempfile().unwrap();
    std::fs::write(file.path(), manifest.to_string()).unwrap();
    let output =
        plane.kubectl().args(["apply", "--server-side", "-f"]).arg(file.path()).output().expect("run kubectl apply");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

fn with(mut spec: Value, path: &[&str], value: Value) -> Value {
    let mut at = &mut spec;
    for key in &path[..path.len() - 1] {
        at = at.as_object_mut().unwrap().entry(key.to_string()).or_insert_with(|| json!({}));
    }
    at[path[path.len() - 1]] = value;
    spec
}

fn parameters(count: usize, name_len: usize, value_len: usize) -> Value {
    (0..count)
        .map(|i| json!({"name": format!("{i:0>name_len$}"), "value": "v".repeat(value_len)}))
        .collect::<Vec<_>>()
        .into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_apiserver_refuses_spec_values_longer_than_coder_or_the_crd_allows() {
    let plane = ControlPlane::shared();
    let namespace = plane.namespace("bounds").await;
    let base = json!({"desiredState": "Stopped", "template": {"name": "docker-dev"}});
    let uuid = "0e6cd9a4-46b7-4b5e-8d0f-6a1b2c3d4e02";

    // Everything at its bound is accepted: the bounds fit real values, and
    // the CEL rules stay within the apiserver's cost budget at them.
    let at_bounds = json!({
        "desiredState": "Stopped",
        "owner": format!("urn:uuid:{uuid}"),
        "organization": uuid,
        "workspaceName": "w".repeat(32),
        "template": {"name": format!("t-{}", "x".repeat(30)), "versionId": uuid},
        "preset": {"name": "p".repeat(128)},
        "parameters": parameters(64, 128, 4096),
        "agentName": "a".repeat(64),
        "credentialsRef": {"name": "s".repeat(253)},
        "recovery": {"disconnectedThreshold": "1h1m1s", "probeTimeout": "30s", "window": "1h"},
    });
    let (accepted, said) = kubectl_apply(plane, &manifest(&namespace, "at-bounds", &at_bounds));
    assert!(accepted, "values at their bounds are refused: {said}");
    let (accepted, said) = kubectl_apply(
        plane,
        &manifest(&namespace, "shortest-probe", &with(base.clone(), &["recovery", "probeTimeout"], json!("1s"))),
    );
    assert!(accepted, "a 1s probe timeout is refused: {said}");

    let too_long: Vec<(&str, &[&str], Value)> = vec![
        ("spec.template.name", &["template", "name"], json!("x".repeat(33))),
        ("spec.template.name", &["template", "name"], json!("x".repeat(100_000))),
        ("spec.template.id", &["template"], json!({"id": "i".repeat(37)})),
        ("spec.template.versionId", &["template", "versionId"], json!("v".repeat(37))),
        ("spec.owner", &["owner"], json!("o".repeat(46))),
        ("spec.organization", &["organization"], json!("o".repeat(37))),
        ("spec.workspaceName", &["workspaceName"], json!("w".repeat(33))),
        ("spec.preset.name", &["preset", "name"], json!("p".repeat(129))),
        ("spec.preset.id", &["preset", "id"], json!("p".repeat(37))),
        ("spec.agentName", &["agentName"], json!("a".repeat(65))),
        ("spec.parameters", &["parameters"], parameters(65, 8, 1)),
        ("spec.parameters[0].name", &["parameters"], parameters(1, 129, 1)),
        ("spec.parameters[0].value", &["parameters"], parameters(1, 8, 4097)),
        ("spec.credentialsRef.name", &["credentialsRef", "name"], json!("s".repeat(254))),
        ("spec.recovery.disconnectedThreshold", &["recovery", "disconnectedThreshold"], json!("1s".repeat(17))),
        ("spec.recovery.window", &["recovery", "window"], json!("1h".repeat(17))),
        ("spec.recovery.probeTimeout", &["recovery", "probeTimeout"], json!("31s")),
        ("spec.recovery.probeTimeout", &["recovery", "probeTimeout"], json!("999ms")),
        ("spec.recovery.probeTimeout", &["recovery", "probeTimeout"], json!("0s")),
    ];
    for (i, (field, path, value)) in too_long.into_iter().enumerate() {
        let spec = with(base.clone(), path, value);
        let (accepted, said) = kubectl_apply(plane, &manifest(&namespace, &format!("too-long-{i}"), &spec));
        assert!(!accepted, "{field}: accepted");
        assert!(said.contains(field), "{field}: the refusal names the field: {said:.600}");
    }
}

/// The operator's resident memory, from /proc.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/<pid>/status");
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS in /proc/<pid>/status");
    line.split_whitespace().nth(1).and_then(|kib| kib.parse().ok()).expect("VmRSS in kiB")
}

/// The lowest resident memory once it stops falling (jemalloc hands freed
/// pages back over about ten seconds): no new low by more than 1 % for `quiet`,
/// or `within` has passed.
async fn settled_rss(pid: u32, quiet: Duration, within: Duration) -> u64 {
    let deadline = Instant::now() + within;
    let mut low = rss_kib(pid);
    let mut low_since = Instant::now();
    while Instant::now() < deadline && low_since.elapsed() < quiet {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = rss_kib(pid);
        if now * 100 < low * 99 {
            low_since = Instant::now();
        }
        low = low.min(now);
    }
    low
}

/// Waits until every ChatWorkspace in `namespace` has a Ready condition
/// for its current generation: the operator has looked at each as it is.
async fn all_decided(api: &Api<ChatWorkspace>, count: usize, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let list = api.list(&ListParams::default()).await.expect("list ChatWorkspaces");
        let decided = list
            .items
            .iter()
            .filter(|cws| {
                cws.status
                    .as_ref()
                    .and_then(|s| conditions::find(&s.conditions, READY))
                    .is_some_and(|ready| ready.observed_generation == cws.metadata.generation)
            })
            .count();
        if list.items.len() == count && decided == count {
            return;
        }
        assert!(Instant::now() < deadline, "{decided} of {count} ChatWorkspaces decided after {within:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A tenant's way to grow the operator's caches: 300 Secrets with long
/// names, a Stopped resource on each (one Coder client and one template
/// read per Secret), each resource's template then renamed to a template
/// that does not exist (a Stopped resource with no workspace may change it),
/// and everything deleted again. Returns once the operator forgot them all.
async fn grow_and_go(client: &Client, namespace: &str, sim: &Simulator, operator: &OperatorProcess, round: char) {
    let count = 300;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let resources: Api<ChatWorkspace> = Api::namespaced(client.clone(), namespace);
    let secret_name = |i: usize| format!("{round}{i:0>8}-{}", "s".repeat(200));
    for i in 0..count {
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": secret_name(i)},
            "stringData": {"url": sim.url(), "token": sim.token()},
        }))
        .unwrap();
        secrets.create(&PostParams::default(), &secret).await.expect("create Secret");
        let resource: ChatWorkspace = serde_json::from_value(manifest(
            namespace,
            &format!("tenant-{i}"),
            &json!({"desiredState": "Stopped", "template": {"name": "docker-dev"},
                    "credentialsRef": {"name": secret_name(i)}}),
        ))
        .unwrap();
        resources.create(&PostParams::default(), &resource).await.expect("create ChatWorkspace");
    }
    all_decided(&resources, count, Duration::from_secs(120)).await;
    for i in 0..count {
        let renamed = json!({"spec": {"template": {"name": format!("{round}-gone-{i:0>25}")}}});
        resources
            .patch(&format!("tenant-{i}"), &PatchParams::default(), &Patch::Merge(&renamed))
            .await
            .expect("rename the template");
    }
    all_decided(&resources, count, Duration::from_secs(120)).await;

    for i in 0..count {
        resources.delete(&format!("tenant-{i}"), &DeleteParams::default()).await.expect("delete ChatWorkspace");
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let left = resources.list(&ListParams::default()).await.expect("list").items;
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "{} ChatWorkspaces left, e.g. {}", left.len(), left[0].name_any());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for i in 0..count {
        secrets.delete(&secret_name(i), &DeleteParams::default()).await.expect("delete Secret");
    }
    // The operator forgot every resource it had looked at.
    let deadline = Instant::now() + Duration::from_secs(60);
    while operator.metrics().await.value("chatworkspace_observed_resources", &[]) > 0.0 {
        assert!(Instant::now() < deadline, "the operator still counts observed resources");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_300_secrets_and_300_template_names_cost_goes_with_their_resources() {
    let plane = ControlPlane::shared();
    let client = plane.client().await;
    let namespace = plane.namespace("exhaust").await;
    let sim = Simulator::start(SimConfig::fast()).await.expect("start the Coder simulator");
    let mut env = operator_env(plane.kubeconfig_path(), &sim.url(), &sim.token(), &namespace);
    // Coder's answers are not what is measured: no request cap. Template
    // reads are kept for 2 s, so what a live resource no longer reads goes
    // soon.
    env.extend([("CODER_MAX_RPS".into(), "0".into()), ("TEMPLATE_CACHE_TTL".into(), "2s".into())]);
    env.retain(|(name, _)| name != "RUST_LOG");
    env.push(("RUST_LOG".into(), "warn".into()));
    let mut operator = OperatorProcess::spawn("exhaustion", &env);
    operator.wait_ready(Duration::from_secs(30)).await;
    let pid = operator.pid();

    // The same paths once first (other names), so that what a process
    // makes once and keeps (TLS roots, connection pools to the apiserver,
    // the allocator's arenas at their high-water mark: 3 MiB here) is in
    // the level before: what is measured is what each round leaves behind.
    grow_and_go(&client, &namespace, &sim, &operator, 'a').await;
    let before = settled_rss(pid, Duration::from_secs(10), Duration::from_secs(60)).await;

    let started = Instant::now();
    grow_and_go(&client, &namespace, &sim, &operator, 'b').await;
    let peak = rss_kib(pid);
    let after = settled_rss(pid, Duration::from_secs(40), Duration::from_secs(90)).await;
    eprintln!(
        "exhaustion: RSS {:.1} MiB before, {:.1} MiB once 300 resources were gone ({:.1} s later), {:.1} MiB after it settled",
        before as f64 / 1024.0,
        peak as f64 / 1024.0,
        started.elapsed().as_secs_f64(),
        after as f64 / 1024.0
    );
    assert!(
        after * 10 <= before * 11,
        "RSS {:.1} MiB after the resources went, more than 10 % above {:.1} MiB before",
        after as f64 / 1024.0,
        before as f64 / 1024.0
    );
}
