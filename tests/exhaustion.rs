//! One tenant must not exhaust the operator for the others: every spec
//! string and list is bounded by the CRD, so the apiserver refuses what is
//! too long at `kubectl apply`; and what the operator caches for a resource
//! (template reads, a Secret's Coder client) goes when no live resource
//! uses it. Against the real kube-apiserver (and the Coder simulator, with
//! the operator as its own process so its resident memory can be read).

mod support;

use serde_json::{Value, json};
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
        "owner": uuid,
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
        ("spec.owner", &["owner"], json!("o".repeat(37))),
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
