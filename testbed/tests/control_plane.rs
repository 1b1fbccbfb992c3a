//! The shared control plane is a real Kubernetes API: it stores and watches
//! objects (built-in and custom), and kubectl, helm, service-account tokens
//! and RBAC work against it as they do against a cluster.

use std::fs;
use std::process::{Command, Output};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use serde_json::json;
use testbed::ControlPlane;

const TIMEOUT: Duration = Duration::from_secs(30);

/// A small namespaced CRD, so these tests do not depend on what `crds/`
/// holds.
fn widget_crd() -> CustomResourceDefinition {
    serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.testbed.example.com"},
        "spec": {
            "group": "testbed.example.com",
            "names": {"kind": "Widget", "plural": "widgets", "singular": "widget"},
            "scope": "Namespaced",
            "versions": [{
                "name": "v1",
                "served": true,
                "storage": true,
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "properties": {"spec": {
                        "type": "object",
                        "properties": {"color": {"type": "string", "enum": ["red", "blue"]}},
                    }},
                }},
            }],
        },
    }))
    .expect("a valid CRD")
}

fn widgets(client: Client, namespace: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("testbed.example.com", "v1", "Widget");
    Api::namespaced_with(client, namespace, &ApiResource::from_gvk_with_plural(&gvk, "widgets"))
}

fn color(widget: &DynamicObject) -> Option<&str> {
    widget.data["spec"]["color"].as_str()
}

/// Runs a command, failing the test with its output unless it succeeds.
fn run(command: &mut Command) -> String {
    let output = command.output().expect("spawning the command");
    assert!(output.status.success(), "{command:?} failed: {}", describe(&output));
    String::from_utf8(output.stdout).expect("UTF-8 output")
}

fn describe(output: &Output) -> String {
    format!(
        "{}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test]
async fn watches_see_custom_objects_added_and_modified() {
    let control_plane = ControlPlane::shared();
    control_plane.install_crd(widget_crd()).await.unwrap();
    let namespace = control_plane.namespace("watch").await;
    let api = widgets(control_plane.client().await, &namespace);

    // The raw watch shows the apiserver's own event types; kube-runtime's
    // watcher (what controllers use) sees the same changes as applies.
    let mut raw = api.watch(&WatchParams::default(), "0").await.unwrap().boxed();
    let mut applied = watcher(api.clone(), watcher::Config::default()).applied_objects().boxed();

    let widget: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "testbed.example.com/v1",
        "kind": "Widget",
        "metadata": {"name": "w1"},
        "spec": {"color": "red"},
    }))
    .unwrap();
    api.create(&PostParams::default(), &widget).await.unwrap();
    api.patch("w1", &PatchParams::default(), &Patch::Merge(json!({"spec": {"color": "blue"}}))).await.unwrap();

    let mut seen = Vec::new();
    while seen.len() < 2 {
        let event = tokio::time::timeout(TIMEOUT, raw.try_next())
            .await
            .expect("a watch event in time")
            .unwrap()
            .expect("the watch stays open");
        match event {
            WatchEvent::Added(w) => seen.push(("ADDED", color(&w).map(str::to_owned))),
            WatchEvent::Modified(w) => seen.push(("MODIFIED", color(&w).map(str::to_owned))),
            WatchEvent::Bookmark(_) => {}
            other => panic!("unexpected watch event {other:?}"),
        }
    }
    assert_eq!(seen, [("ADDED", Some("red".to_owned())), ("MODIFIED", Some("blue".to_owned()))]);

    let mut colors = Vec::new();
    while colors.last().map(String::as_str) != Some("blue") {
        let widget = tokio::time::timeout(TIMEOUT, applied.try_next())
            .await
            .expect("a watcher event in time")
            .unwrap()
            .expect("the watcher stays open");
        colors.push(color(&widget).unwrap().to_owned());
    }
    // The watcher may start after the create and see only the final state.
    assert!(colors == ["red", "blue"] || colors == ["blue"], "{colors:?}");
}

#[tokio::test]
async fn the_schema_of_a_crd_is_enforced() {
    let control_plane = ControlPlane::shared();
    control_plane.install_crd(widget_crd()).await.unwrap();
    let namespace = control_plane.namespace("schema").await;
    let api = widgets(control_plane.client().await, &namespace);
    let widget: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "testbed.example.com/v1",
        "kind": "Widget",
        "metadata": {"name": "green"},
        "spec": {"color": "green"},
    }))
    .unwrap();
    let err = api.create(&PostParams::default(), &widget).await.unwrap_err();
    assert!(err.to_string().contains("Unsupported value"), "{err}");
}

#[tokio::test]
async fn kubectl_manages_objects() {
    let control_plane = ControlPlane::shared();
    let namespace = control_plane.namespace("kubectl").await;

    // `kubectl version` reports the server's version (and exits non-zero if
    // a version string is not semver, so only stdout is read here).
    let output = control_plane.kubectl().args(["version", "--output=json"]).output().unwrap();
    let version: serde_json::Value =
        serde_json::from_slice(&output.stdout).unwrap_or_else(|err| panic!("{err}: {}", describe(&output)));
    let server = &version["serverVersion"];
    assert_eq!((&server["major"], &server["minor"]), (&json!("1"), &json!("35")), "{version}");

    let manifest = control_plane.dir().join("kubectl-configmap.yaml");
    fs::write(&manifest, "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\ndata: {mode: fast}\n").unwrap();
    run(control_plane.kubectl().args(["apply", "--namespace", &namespace, "--filename"]).arg(&manifest));
    let mode = run(control_plane.kubectl().args([
        "get",
        "configmap",
        "settings",
        "--namespace",
        &namespace,
        "--output=jsonpath={.data.mode}",
    ]));
    assert_eq!(mode, "fast");

    // What kubectl wrote is what the API serves to a client.
    let settings =
        Api::<ConfigMap>::namespaced(control_plane.client().await, &namespace).get("settings").await.unwrap();
    assert_eq!(settings.data.unwrap()["mode"], "fast");
}

#[tokio::test]
async fn helm_installs_a_chart() {
    let control_plane = ControlPlane::shared();
    let namespace = control_plane.namespace("helm").await;

    let version = run(control_plane.helm().args(["version", "--short"]));
    assert!(version.starts_with("v3."), "{version}");

    let chart = tempfile::tempdir().unwrap();
    fs::create_dir(chart.path().join("templates")).unwrap();
    fs::write(chart.path().join("Chart.yaml"), "apiVersion: v2\nname: probe\nversion: 0.1.0\n").unwrap();
    fs::write(
        chart.path().join("templates/configmap.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: '{{ .Release.Name }}-settings'}\n\
         data: {greeting: '{{ .Values.greeting }}'}\n",
    )
    .unwrap();
    run(control_plane
        .helm()
        .args(["install", "probe", "--namespace", &namespace, "--set", "greeting=hello"])
        .arg(chart.path()));

    let settings =
        Api::<ConfigMap>::namespaced(control_plane.client().await, &namespace).get("probe-settings").await.unwrap();
    assert_eq!(settings.data.unwrap()["greeting"], "hello");
    let releases = run(control_plane.helm().args(["list", "--namespace", &namespace, "--short"]));
    assert_eq!(releases.trim(), "probe");
}

#[tokio::test]
async fn service_account_tokens_carry_exactly_their_rbac_permissions() {
    let control_plane = ControlPlane::shared();
    let namespace = control_plane.namespace("identity").await;
    let client = control_plane.client().await;

    let service_account: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": "robot"}})).unwrap();
    Api::<ServiceAccount>::namespaced(client.clone(), &namespace)
        .create(&PostParams::default(), &service_account)
        .await
        .unwrap();
    let role: Role = serde_json::from_value(json!({
        "metadata": {"name": "configmap-reader"},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "watch"]}],
    }))
    .unwrap();
    Api::<Role>::namespaced(client.clone(), &namespace).create(&PostParams::default(), &role).await.unwrap();
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "robot-reads-configmaps"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "configmap-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "robot", "namespace": namespace}],
    }))
    .unwrap();
    Api::<RoleBinding>::namespaced(client, &namespace).create(&PostParams::default(), &binding).await.unwrap();

    let token = control_plane.token_for_service_account(&namespace, "robot").unwrap();
    let kubeconfig = control_plane.kubeconfig_for_token(&token).unwrap();
    let robot = format!("system:serviceaccount:{namespace}:robot");

    // The token really is the ServiceAccount's identity.
    let whoami = run(control_plane.kubectl().arg("--kubeconfig").arg(&kubeconfig).args([
        "auth",
        "whoami",
        "--output=jsonpath={.status.userInfo.username}",
    ]));
    assert_eq!(whoami, robot);

    // RBAC allows what the Role grants and nothing else, both for the token
    // itself and when the admin asks on the ServiceAccount's behalf.
    let can_i = |as_robot: bool, verb: &str, resource: &str, namespace: &str| -> bool {
        let mut kubectl = control_plane.kubectl();
        if as_robot {
            kubectl.arg("--kubeconfig").arg(&kubeconfig);
        } else {
            kubectl.arg(format!("--as={robot}"));
        }
        let output = kubectl.args(["auth", "can-i", verb, resource, "--namespace", namespace]).output().unwrap();
        match String::from_utf8_lossy(&output.stdout).trim() {
            "yes" => true,
            "no" => false,
            _ => panic!("unexpected kubectl auth can-i answer: {}", describe(&output)),
        }
    };
    for as_robot in [true, false] {
        let ns = namespace.as_str();
        assert!(can_i(as_robot, "list", "configmaps", ns), "as_robot={as_robot}");
        assert!(can_i(as_robot, "watch", "configmaps", ns), "as_robot={as_robot}");
        assert!(!can_i(as_robot, "delete", "configmaps", ns), "as_robot={as_robot}");
        assert!(!can_i(as_robot, "list", "secrets", ns), "as_robot={as_robot}");
        assert!(!can_i(as_robot, "list", "configmaps", "default"), "as_robot={as_robot}");
    }

    // A client built from that kubeconfig, as a process running with the
    // ServiceAccount's identity would use it, gets the same answers.
    let options = KubeConfigOptions::default();
    let config =
        kube::Config::from_custom_kubeconfig(Kubeconfig::read_from(&kubeconfig).unwrap(), &options).await.unwrap();
    let robot_client = Client::try_from(config).unwrap();
    Api::<ConfigMap>::namespaced(robot_client.clone(), &namespace).list(&ListParams::default()).await.unwrap();
    let denied = Api::<Secret>::namespaced(robot_client, &namespace).list(&ListParams::default()).await.unwrap_err();
    assert!(matches!(&denied, kube::Error::Api(status) if status.code == 403), "{denied:?}");
}
