//! Tenancy in the chart. The admission policy refuses, at `kubectl
//! apply`, an owner the namespace is not granted; the aggregated roles give
//! a namespace's editors and viewers what they need and no more; replicas
//! get a PodDisruptionBudget; every operator flag that matters is a value.
//! Against the real kube-apiserver, acting as a namespace user (RBAC and
//! impersonation), not as the admin.

mod support;

use std::fs;
use std::time::{Duration, Instant};

use k8s_openapi::api::rbac::v1::ClusterRole;
use kube::Api;
use serde_json::{Value, json};
use support::grant;
use support::process::{chart_dir, helm_install, run, unique};
use testbed::ControlPlane;

fn values_file(values: &Value) -> tempfile::NamedTempFile {
    let file = tempfile::Builder::new().suffix(".json").tempfile().unwrap();
    fs::write(file.path(), values.to_string()).unwrap();
    file
}

fn helm_template(values: &Value) -> std::process::Output {
    let file = values_file(values);
    std::process::Command::new(testbed::tool("helm").unwrap())
        .args(["template", "rel"])
        .arg(chart_dir())
        .args(["--namespace", "ops", "--values"])
        .arg(file.path())
        .output()
        .unwrap()
}

fn render(values: &Value) -> Vec<Value> {
    let output = helm_template(values);
    assert!(output.status.success(), "helm template: {}", String::from_utf8_lossy(&output.stderr));
    serde_yaml::Deserializer::from_str(&String::from_utf8_lossy(&output.stdout))
        .map(|document| serde::Deserialize::deserialize(document).expect("helm renders YAML"))
        .filter(|value: &Value| !value.is_null())
        .collect()
}

fn env_value(documents: &[Value], name: &str) -> Option<String> {
    let deployment = documents.iter().find(|d| d["kind"] == "Deployment").unwrap();
    deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .and_then(|e| e["value"].as_str().map(str::to_owned))
}

#[test]
fn replicas_get_a_disruption_budget_and_flags_are_values() {
    let one = render(&json!({}));
    assert!(!one.iter().any(|d| d["kind"] == "PodDisruptionBudget"), "no budget for a single replica");
    for (name, value) in [
        ("CODER_MAX_RPS", "5"),
        ("CODER_BURST", "10"),
        ("ATTENTION_INTERVAL", "10s"),
        ("FULL_LIST_INTERVAL", "5m"),
        ("PROBE_INTERVAL", "5m"),
        ("PROBE_BUDGET_PER_MINUTE", "120"),
    ] {
        assert_eq!(env_value(&one, name).as_deref(), Some(value), "{name}");
    }
    assert_eq!(env_value(&one, "ALLOWED_CODER_URLS"), None, "by default only the default URL's origin");

    let two = render(&json!({
        "replicaCount": 2,
        "coder": {"allowedUrls": ["https://a.example.com", "https://b.example.com"], "maxRequestsPerSecond": 8,
                  "burst": 10, "attentionInterval": "5s", "probeInterval": "1m"},
    }));
    let budget = two.iter().find(|d| d["kind"] == "PodDisruptionBudget").expect("a PodDisruptionBudget");
    assert_eq!(budget["spec"]["minAvailable"], 1);
    assert_eq!(budget["spec"]["selector"]["matchLabels"]["app.kubernetes.io/instance"], "rel");
    assert_eq!(env_value(&two, "ALLOWED_CODER_URLS").as_deref(), Some("https://a.example.com,https://b.example.com"));
    assert_eq!(env_value(&two, "CODER_MAX_RPS").as_deref(), Some("8"));
    assert_eq!(env_value(&two, "ATTENTION_INTERVAL").as_deref(), Some("5s"));
    assert_eq!(env_value(&two, "PROBE_INTERVAL").as_deref(), Some("1m"));

    for (values, mentioned) in [
        (json!({"coder": {"allowedUrl": ["https://a.example.com"]}}), "allowedUrl"),
        (json!({"coder": {"allowedUrls": ["ftp://a.example.com"]}}), "allowedUrls"),
        (json!({"coder": {"probeInterval": "often"}}), "probeInterval"),
        (json!({"admissionPolicy": {"enable": true}}), "enable"),
        (json!({"podDisruptionBudget": {"minAvailable": 0}}), "minAvailable"),
    ] {
        let output = helm_template(&values);
        let error = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "accepted {values}");
        assert!(error.contains(mentioned), "{values}: the error should mention {mentioned}: {error}");
    }
}

/// `kubectl` as `user` (impersonation: the admin may, the user's own RBAC
/// decides), with `manifest` on stdin when given.
fn kubectl_as(plane: &ControlPlane, user: &str, args: &[&str], manifest: Option<&Value>) -> (bool, String) {
    let mut kubectl = plane.kubectl();
    kubectl.args(args).args(["--as", user]);
    let file = manifest.map(values_file);
    if let Some(file) = &file {
        kubectl.arg("-f").arg(file.path());
    }
    let output = kubectl.output().expect("run kubectl");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

fn can(plane: &ControlPlane, user: &str, verb: &str, target: &str, namespace: &str) -> bool {
    let (_, answer) = kubectl_as(plane, user, &["auth", "can-i", verb, target, "--namespace", namespace], None);
    match answer.trim() {
        "yes" => true,
        "no" => false,
        other => panic!("kubectl auth can-i {verb} {target}: {other}"),
    }
}

fn cws(namespace: &str, name: &str, spec: Value) -> Value {
    json!({"apiVersion": "chat.coder.com/v1alpha1", "kind": "ChatWorkspace",
           "metadata": {"name": name, "namespace": namespace}, "spec": spec})
}

fn bind(plane: &ControlPlane, namespace: &str, role: &str, user: &str) {
    let mut kubectl = plane.kubectl();
    kubectl.args(["create", "rolebinding", &format!("{role}-{}", user.replace('@', "-")), "--clusterrole", role]);
    kubectl.args(["--user", user, "--namespace", namespace]);
    run(kubectl, "kubectl create rolebinding");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_editor_applies_only_owners_the_namespace_was_granted() {
    let plane = ControlPlane::shared();
    let admin = plane.client().await;
    let home = plane.namespace("vap-home").await;
    let team = plane.namespace("vap-team").await;
    let bare = plane.namespace("vap-bare").await;
    grant(&admin, &team, Some("alice")).await;
    helm_install(plane, &unique("vap"), &home, &json!({}));

    // The aggregated roles, labelled for Kubernetes' admin, edit and view.
    let roles = Api::<ClusterRole>::all(admin.clone());
    let edit = roles.get("chatworkspace-edit").await.unwrap();
    let labels = edit.metadata.labels.unwrap();
    assert_eq!(labels["rbac.authorization.k8s.io/aggregate-to-edit"], "true");
    assert_eq!(labels["rbac.authorization.k8s.io/aggregate-to-admin"], "true");
    let view = roles.get("chatworkspace-view").await.unwrap();
    assert_eq!(view.metadata.labels.unwrap()["rbac.authorization.k8s.io/aggregate-to-view"], "true");

    // A namespace's editor and viewer, bound to those roles in their namespaces.
    let (dev, viewer) = ("dev@example.com", "viewer@example.com");
    for namespace in [&team, &bare] {
        bind(plane, namespace, "chatworkspace-edit", dev);
    }
    bind(plane, &team, "chatworkspace-view", viewer);
    let cwsr = "chatworkspaces.chat.coder.com";
    for verb in ["get", "list", "watch", "create", "update", "patch", "delete"] {
        assert!(can(plane, dev, verb, cwsr, &team), "an editor may {verb}");
    }
    assert!(!can(plane, dev, "create", cwsr, &home), "only where bound");
    let (_, status) =
        kubectl_as(plane, dev, &["auth", "can-i", "patch", cwsr, "--subresource=status", "--namespace", &team], None);
    assert_eq!(status.trim(), "no", "status is the operator's to write");
    assert!(!can(plane, dev, "get", "secrets", &team), "nothing else");
    for verb in ["get", "list", "watch"] {
        assert!(can(plane, viewer, verb, cwsr, &team), "a viewer may {verb}");
    }
    for verb in ["create", "patch", "delete"] {
        assert!(!can(plane, viewer, verb, cwsr, &team), "a viewer may not {verb}");
    }

    // The policy takes a moment to be enforced after its creation: wait on
    // a server-side dry run until it refuses.
    let bobs = cws(&team, "bobs", json!({"owner": "bob", "template": {"name": "docker-dev"}}));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (created, _) = kubectl_as(plane, dev, &["create", "--dry-run=server"], Some(&bobs));
        if !created {
            break;
        }
        assert!(Instant::now() < deadline, "the admission policy never refused bob");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let (applied, refusal) = kubectl_as(plane, dev, &["apply"], Some(&bobs));
    assert!(!applied, "bob is not granted: {refusal}");
    assert!(refusal.contains("chat.coder.com/coder-owners"), "{refusal}");
    assert!(
        refusal.contains(&format!("kubectl annotate namespace {team} chat.coder.com/coder-owners=alice,bob")),
        "{refusal}"
    );
    let alices = cws(&team, "alices", json!({"owner": "Alice", "template": {"name": "docker-dev"}}));
    let (applied, output) = kubectl_as(plane, dev, &["apply"], Some(&alices));
    assert!(applied, "alice is granted (in any case): {output}");
    // An id or `me` cannot be resolved at admission: the operator decides.
    let by_id = cws(
        &team,
        "by-id",
        json!({"owner": "0e6cd9a4-46b7-4b5e-8d0f-6a1b2c3d4e02", "template": {"name": "docker-dev"}}),
    );
    let (applied, output) = kubectl_as(plane, dev, &["apply"], Some(&by_id));
    assert!(applied, "{output}");

    // A namespace granted nothing: refused whoever the owner is, unless
    // the resource brings its own credentials.
    for spec in
        [json!({"owner": "alice", "template": {"name": "docker-dev"}}), json!({"template": {"name": "docker-dev"}})]
    {
        let (applied, refusal) = kubectl_as(plane, dev, &["apply"], Some(&cws(&bare, "any", spec)));
        assert!(!applied && refusal.contains("not set"), "{refusal}");
    }
    let own = cws(
        &bare,
        "own",
        json!({"owner": "bob", "template": {"name": "docker-dev"}, "credentialsRef": {"name": "coder"}}),
    );
    let (applied, output) = kubectl_as(plane, dev, &["apply"], Some(&own));
    assert!(applied, "a namespace's own Secret needs no grant: {output}");

    // Revoking: spec changes are refused, metadata changes (the operator's
    // finalizers, labels) still pass.
    grant(&admin, &team, Some("carol")).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (patched, output) = kubectl_as(
            plane,
            dev,
            &[
                "patch",
                "cws",
                "alices",
                "--namespace",
                &team,
                "--type",
                "merge",
                "--dry-run=server",
                "-p",
                r#"{"spec":{"desiredState":"Stopped"}}"#,
            ],
            None,
        );
        if !patched {
            assert!(output.contains("coder-owners"), "{output}");
            break;
        }
        assert!(Instant::now() < deadline, "a spec change after the revocation was still admitted");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (labelled, output) =
        kubectl_as(plane, dev, &["label", "cws", "alices", "--namespace", &team, "purpose=test"], None);
    assert!(labelled, "{output}");
}
