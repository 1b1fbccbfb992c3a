//! The Helm chart. It lints and renders a hardened pod; `helm install`
//! into the real control plane creates everything; its ServiceAccount can do
//! what the operator needs and nothing more; and the operator, run with that
//! ServiceAccount's token and the Deployment's own environment, reconciles.

mod support;

use std::fs;
use std::time::Duration;

use coder_sim::{SimConfig, Simulator};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use serde_json::{Value, json};
use support::process::{
    CONVERGE, OperatorProcess, chart_dir, create_workspace, helm_install, lease_holder, run, unique, wait_for_condition,
};
use testbed::ControlPlane;

/// `helm template` with these values, as parsed documents.
fn render(values: &Value) -> Vec<Value> {
    let file = tempfile::Builder::new().suffix(".json").tempfile().unwrap();
    fs::write(file.path(), values.to_string()).unwrap();
    let helm = testbed::tool("helm").unwrap_or_else(|err| panic!("{err:#}"));
    let mut command = std::process::Command::new(helm);
    command.args(["template", "rel"]).arg(chart_dir()).args(["--namespace", "ops", "--values"]).arg(file.path());
    let text = run(command, "helm template");
    serde_yaml::Deserializer::from_str(&text)
        .map(|document| serde::Deserialize::deserialize(document).expect("helm renders YAML"))
        .filter(|value: &Value| !value.is_null())
        .collect()
}

fn render_fails(values: &Value) -> String {
    let file = tempfile::Builder::new().suffix(".json").tempfile().unwrap();
    fs::write(file.path(), values.to_string()).unwrap();
    let output = std::process::Command::new(testbed::tool("helm").unwrap())
        .args(["template", "rel"])
        .arg(chart_dir())
        .arg("--values")
        .arg(file.path())
        .output()
        .unwrap();
    assert!(!output.status.success(), "helm template accepted {values}");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn kinds(documents: &[Value]) -> Vec<String> {
    let mut kinds: Vec<String> = documents.iter().map(|d| d["kind"].as_str().unwrap().to_owned()).collect();
    kinds.sort();
    kinds
}

fn find<'a>(documents: &'a [Value], kind: &str) -> &'a Value {
    documents.iter().find(|d| d["kind"] == kind).unwrap_or_else(|| panic!("no {kind} rendered"))
}

fn env_of(deployment: &Value) -> Vec<(String, Value)> {
    deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap().to_owned(), e.get("value").cloned().unwrap_or(Value::Null)))
        .collect()
}

fn defaults() -> Value {
    json!({"coder": {"url": "https://coder.example.com", "tokenSecret": {"name": "coder-token"}}})
}

#[test]
fn helm_lint_passes_strict_with_default_and_full_values() {
    let helm = testbed::tool("helm").unwrap_or_else(|err| panic!("{err:#}"));
    let mut lint = std::process::Command::new(&helm);
    lint.args(["lint", "--strict"]).arg(chart_dir());
    let output = run(lint, "helm lint --strict");
    assert!(output.contains("0 chart(s) failed"), "{output}");

    let full = json!({
        "replicaCount": 2,
        "coder": {"url": "https://coder.example.com", "tokenSecret": {"name": "coder-token", "key": "session"}},
        "watchNamespaces": ["team-a", "team-b"],
        "credentialsRef": {"namespaces": ["team-a"], "secretNames": ["coder"]},
        "metrics": {"serviceMonitor": {"enabled": true, "labels": {"release": "prometheus"}}},
        "networkPolicy": {"from": [
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}},
            {"ipBlock": {"cidr": "10.0.0.0/8"}},
        ]},
    });
    let file = tempfile::Builder::new().suffix(".json").tempfile().unwrap();
    fs::write(file.path(), full.to_string()).unwrap();
    let mut lint = std::process::Command::new(&helm);
    lint.args(["lint", "--strict"]).arg(chart_dir()).arg("--values").arg(file.path());
    run(lint, "helm lint --strict with every option");
}

#[test]
fn the_pod_is_hardened_and_probed() {
    let documents = render(&defaults());
    assert_eq!(
        kinds(&documents),
        [
            "ClusterRole",
            "ClusterRole",
            "ClusterRole",
            "ClusterRoleBinding",
            "Deployment",
            "Lease",
            "NetworkPolicy",
            "Role",
            "RoleBinding",
            "Service",
            "ServiceAccount",
            "ValidatingAdmissionPolicy",
            "ValidatingAdmissionPolicyBinding"
        ],
        "by default: cluster-wide workspace RBAC, the Lease and its Role, the aggregated roles, the admission policy, \
         the NetworkPolicy, no Secret access, no ServiceMonitor, no PodDisruptionBudget with one replica"
    );
    let policy = find(&documents, "NetworkPolicy");
    assert_eq!(
        policy["spec"]["podSelector"]["matchLabels"],
        find(&documents, "Deployment")["spec"]["selector"]["matchLabels"]
    );
    assert_eq!(policy["spec"]["policyTypes"], json!(["Ingress"]), "outbound traffic is not limited");
    assert_eq!(
        policy["spec"]["ingress"],
        json!([{"ports": [{"port": 8080, "protocol": "TCP"}]}]),
        "only the admin port, from anywhere by default"
    );
    let deployment = find(&documents, "Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(pod["serviceAccountName"], "rel-chatworkspace-operator");
    let container = &pod["containers"][0];
    assert_eq!(container["args"], json!(["run"]));
    let security = &container["securityContext"];
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["runAsNonRoot"], true);
    assert_eq!(security["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(security["seccompProfile"]["type"], "RuntimeDefault");
    assert!(container["resources"]["requests"]["memory"].is_string());
    assert!(container["resources"]["limits"]["memory"].is_string());
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["ports"][0]["name"], "admin");
    assert_eq!(container["image"], "chatworkspace-operator:0.1.0", "the tag defaults to the appVersion");
    assert_eq!(pod["terminationGracePeriodSeconds"], 30, "time to finish reconciles and release the Lease");

    // The token is a mounted file: no RBAC on Secrets needed for it.
    let env = env_of(deployment);
    let value = |name: &str| env.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
    assert_eq!(value("CODER_URL"), Some(json!("https://coder.example.com")));
    assert_eq!(value("CODER_TOKEN_FILE"), Some(json!("/var/run/secrets/coder/token")));
    assert_eq!(value("LEADER_ELECTION"), Some(json!("true")));
    assert_eq!(value("LEASE_NAME"), Some(json!("rel-chatworkspace-operator")));
    assert_eq!(value("WATCH_NAMESPACES"), None, "all namespaces by default");
    assert!(value("POD_NAME").is_some() && value("POD_NAMESPACE").is_some());
    assert_eq!(pod["volumes"][0]["secret"]["secretName"], "coder-token");
    assert_eq!(container["volumeMounts"][0]["readOnly"], true);
}

#[test]
fn optional_parts_follow_the_values() {
    let documents = render(&json!({
        "watchNamespaces": ["team-a", "team-b"],
        "credentialsRef": {"namespaces": ["team-a"], "secretNames": ["coder"]},
        "leaderElection": {"enabled": false},
        "metrics": {"serviceMonitor": {"enabled": true}},
        "rbac": {"aggregatedRoles": false},
        "admissionPolicy": {"enabled": false},
        "networkPolicy": {"enabled": false},
    }));
    assert_eq!(
        kinds(&documents),
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "Deployment",
            "Role",
            "Role",
            "Role",
            "RoleBinding",
            "RoleBinding",
            "RoleBinding",
            "Service",
            "ServiceAccount",
            "ServiceMonitor"
        ],
        "a Role per served namespace, one for credentials, no lease Role; cluster-wide only the served Namespaces' metadata"
    );
    let secret_role = documents
        .iter()
        .find(|d| d["kind"] == "Role" && d["metadata"]["name"].as_str().unwrap().ends_with("-credentials"))
        .expect("the credentials Role");
    assert_eq!(secret_role["metadata"]["namespace"], "team-a");
    assert_eq!(
        secret_role["rules"],
        json!([{"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["coder"], "verbs": ["get"]}])
    );
    let deployment = find(&documents, "Deployment");
    let env = env_of(deployment);
    assert!(env.contains(&("WATCH_NAMESPACES".into(), json!("team-a,team-b"))));
    assert!(env.contains(&("LEADER_ELECTION".into(), json!("false"))));
    assert!(!env.iter().any(|(name, _)| name == "CODER_URL" || name == "CODER_TOKEN_FILE"));
    assert!(deployment["spec"]["template"]["spec"].get("volumes").is_none());
    let monitor = find(&documents, "ServiceMonitor");
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "metrics");
    assert_eq!(monitor["spec"]["endpoints"][0]["path"], "/metrics");
}

#[test]
fn the_network_policy_and_the_secret_grant_follow_the_values() {
    let monitoring = json!({"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}});
    let documents = render(&json!({
        "adminPort": 9090,
        "networkPolicy": {"from": [monitoring]},
        "watchNamespaces": ["team-a", "team-b"],
        "credentialsRef": {"allNamespaces": true, "namespaces": ["ignored"]},
    }));
    let policy = find(&documents, "NetworkPolicy");
    assert_eq!(
        policy["spec"]["ingress"],
        json!([{"ports": [{"port": 9090, "protocol": "TCP"}], "from": [monitoring]}])
    );

    // allNamespaces with watchNamespaces: a Role in each served namespace only.
    let credentials = |kind: &str| -> Vec<Value> {
        documents
            .iter()
            .filter(|d| d["kind"] == kind && d["metadata"]["name"].as_str().unwrap().ends_with("-credentials"))
            .cloned()
            .collect()
    };
    assert!(credentials("ClusterRole").is_empty() && credentials("ClusterRoleBinding").is_empty());
    let namespaces: Vec<Value> = credentials("Role").iter().map(|role| role["metadata"]["namespace"].clone()).collect();
    assert_eq!(namespaces, [json!("team-a"), json!("team-b")]);
    let bound: Vec<Value> = credentials("RoleBinding").iter().map(|b| b["metadata"]["namespace"].clone()).collect();
    assert_eq!(bound, [json!("team-a"), json!("team-b")]);

    // Without watchNamespaces it is the whole cluster, as the value says.
    let everywhere = render(&json!({"credentialsRef": {"allNamespaces": true}}));
    assert!(
        everywhere.iter().any(|d| d["kind"] == "ClusterRole"
            && d["metadata"]["name"].as_str().unwrap().ends_with("-credentials")
            && d["rules"][0]["resources"] == json!(["secrets"])),
        "a ClusterRole for Secrets"
    );

    // No grant on the finalizers subresource in any mode.
    for documents in [&documents, &everywhere] {
        let rules = documents.iter().filter(|d| d["kind"] == "Role" || d["kind"] == "ClusterRole");
        for rule in rules.flat_map(|role| role["rules"].as_array().cloned().unwrap_or_default()) {
            assert!(!rule["resources"].to_string().contains("finalizers"), "{rule}");
        }
    }
}

#[test]
fn the_schema_rejects_bad_values() {
    let cases = [
        (json!({"coder": {"url": "https://coder.example.com"}}), "tokenSecret"),
        (json!({"coder": {"tokenSecret": {"name": "coder-token"}}}), "tokenSecret"),
        (json!({"coder": {"url": "coder.example.com", "tokenSecret": {"name": "t"}}}), "/coder/url"),
        (json!({"leaderElection": {"leaseDuration": 15}}), "leaseDuration"),
        (json!({"leaderElection": {"retryPeriod": "2 seconds"}}), "retryPeriod"),
        (
            json!({"securityContext": {"allowPrivilegeEscalation": true, "runAsNonRoot": true}}),
            "allowPrivilegeEscalation",
        ),
        (json!({"podSecurityContext": {"runAsNonRoot": false}}), "runAsNonRoot"),
        (json!({"watchNamespaces": ["Team_A"]}), "watchNamespaces"),
        (json!({"logging": {"format": "xml"}}), "format"),
        (json!({"replicas": 2}), "replicas"),
        (json!({"leaderElection": {"enabled": false}, "replicaCount": 2}), "replicaCount"),
        (json!({"networkPolicy": {"enabled": "yes"}}), "networkPolicy"),
        (json!({"networkPolicy": {"from": [{"pods": {}}]}}), "networkPolicy"),
        (json!({"networkPolicy": {"from": [{"ipBlock": {}}]}}), "cidr"),
    ];
    for (values, mentioned) in cases {
        let error = render_fails(&values);
        assert!(error.contains(mentioned), "{values}: the error should mention {mentioned}: {error}");
    }
}

#[test]
fn the_charts_crds_are_the_generated_ones() {
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
    let copy = chart_dir().join("crds");
    let names = |dir: &std::path::Path| {
        let mut names: Vec<String> =
            fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        names
    };
    let fix = "copy them: cp crds/*.yaml charts/chatworkspace-operator/crds/";
    assert_eq!(names(&source), names(&copy), "the chart's CRD files differ from crds/: {fix}");
    for name in names(&source) {
        let generated = fs::read_to_string(source.join(&name)).unwrap();
        let shipped = fs::read_to_string(copy.join(&name)).unwrap();
        assert!(generated == shipped, "charts/chatworkspace-operator/crds/{name} differs from crds/{name}: {fix}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_install_creates_everything() {
    let plane = ControlPlane::shared();
    let namespace = plane.namespace("chart-install").await;
    let team = plane.namespace("chart-team").await;
    let release = unique("cwo");
    let output = helm_install(
        plane,
        &release,
        &namespace,
        &json!({
            "coder": {"url": "https://coder.example.com", "tokenSecret": {"name": "coder-token"}},
            "watchNamespaces": [team],
            "credentialsRef": {"namespaces": [team]},
            "metrics": {"serviceMonitor": {"enabled": false}},
            "rbac": {"aggregatedRoles": false},
        }),
    );
    assert!(output.contains("STATUS: deployed"), "{output}");

    let fullname = format!("{release}-chatworkspace-operator");
    let get = |kind: &str, name: &str, ns: &str| {
        let mut kubectl = plane.kubectl();
        kubectl.args(["get", kind, name, "--namespace", ns, "-o", "name"]);
        run(kubectl, &format!("kubectl get {kind} {name} -n {ns}"))
    };
    for kind in ["deployment", "serviceaccount", "service"] {
        let name = if kind == "service" { format!("{fullname}-metrics") } else { fullname.clone() };
        get(kind, &name, &namespace);
    }
    for kind in ["role", "rolebinding"] {
        get(kind, &format!("{fullname}-leader-election"), &namespace);
        get(kind, &fullname, &team);
        get(kind, &format!("{fullname}-credentials"), &team);
    }
    let mut status = plane.helm();
    status.args(["status", &release, "--namespace", &namespace]);
    assert!(run(status, "helm status").contains("STATUS: deployed"));
}

#[test]
fn helm_install_on_a_cluster_without_the_crd_installs_it() {
    // A private control plane, so that removing the CRD disturbs no other test.
    let plane = ControlPlane::start().unwrap_or_else(|err| panic!("{err:#}"));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let crds = runtime.block_on(async {
        let crds = Api::<CustomResourceDefinition>::all(plane.client().await);
        crds.delete("chatworkspaces.chat.coder.com", &DeleteParams::default()).await.expect("delete the CRD");
        while crds.get_opt("chatworkspaces.chat.coder.com").await.unwrap().is_some() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        crds
    });
    let mut create_ns = plane.kubectl();
    create_ns.args(["create", "namespace", "operators"]);
    run(create_ns, "kubectl create namespace");
    helm_install(&plane, "cwo", "operators", &json!({}));

    let mut wait = plane.kubectl();
    wait.args(["wait", "--for=condition=Established", "crd/chatworkspaces.chat.coder.com", "--timeout=60s"]);
    run(wait, "kubectl wait for the CRD");
    let installed = runtime.block_on(crds.get("chatworkspaces.chat.coder.com")).unwrap();
    let expected: CustomResourceDefinition =
        serde_yaml::from_str(&fs::read_to_string(chart_dir().join("crds/chat.coder.com_chatworkspaces.yaml")).unwrap())
            .unwrap();
    assert_eq!(installed.spec.versions.len(), expected.spec.versions.len());
    assert_eq!(installed.spec.names.short_names, expected.spec.names.short_names);
}

/// `kubectl auth can-i` as the ServiceAccount.
struct Identity<'a> {
    plane: &'a ControlPlane,
    user: String,
}

impl Identity<'_> {
    /// `target` is `resource[/name]`; `namespace` `None` means all namespaces.
    fn can(&self, verb: &str, target: &str, subresource: Option<&str>, namespace: Option<&str>) -> bool {
        let mut kubectl = self.plane.kubectl();
        kubectl.args(["auth", "can-i", verb, target, "--as", &self.user]);
        if let Some(subresource) = subresource {
            kubectl.arg(format!("--subresource={subresource}"));
        }
        match namespace {
            Some(namespace) => kubectl.args(["--namespace", namespace]),
            None => kubectl.arg("--all-namespaces"),
        };
        let output = kubectl.output().expect("run kubectl auth can-i");
        let answer = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        assert!(
            answer == "yes" || answer == "no",
            "kubectl auth can-i: {answer} {}",
            String::from_utf8_lossy(&output.stderr)
        );
        answer == "yes"
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_account_can_do_what_the_operator_needs_and_no_more() {
    let plane = ControlPlane::shared();
    let home = plane.namespace("rbac-home").await;
    let served = plane.namespace("rbac-served").await;
    let other_served = plane.namespace("rbac-served2").await;
    let unserved = plane.namespace("rbac-other").await;
    let release = unique("rbac");
    helm_install(
        plane,
        &release,
        &home,
        &json!({
            "coder": {"url": "https://coder.example.com", "tokenSecret": {"name": "coder-token"}},
            "watchNamespaces": [served, other_served],
            "credentialsRef": {"namespaces": [served], "secretNames": ["coder-creds"]},
            "rbac": {"aggregatedRoles": false},
        }),
    );
    let fullname = format!("{release}-chatworkspace-operator");
    let sa = Identity { plane, user: format!("system:serviceaccount:{home}:{fullname}") };
    let lease = format!("leases.coordination.k8s.io/{fullname}");
    let cws = "chatworkspaces.chat.coder.com";
    let events = "events.events.k8s.io";

    let allowed: &[(&str, &str, Option<&str>, &str)] = &[
        ("get", cws, None, &served),
        ("list", cws, None, &served),
        ("watch", cws, None, &served),
        ("patch", cws, None, &served),
        ("list", cws, None, &other_served),
        ("patch", cws, Some("status"), &served),
        ("create", events, None, &served),
        ("patch", events, None, &other_served),
        ("create", "leases.coordination.k8s.io", None, &home),
        ("get", &lease, None, &home),
        ("update", &lease, None, &home),
        ("get", "secrets/coder-creds", None, &served),
        // The served Namespaces' grants (annotation chat.coder.com/coder-owners).
        ("get", &format!("namespaces/{served}"), None, &served),
        ("watch", &format!("namespaces/{other_served}"), None, &served),
    ];
    for (verb, target, subresource, namespace) in allowed {
        assert!(
            sa.can(verb, target, *subresource, Some(namespace)),
            "the operator needs: {verb} {target} {subresource:?} in {namespace}"
        );
    }

    let denied: &[(&str, &str, Option<&str>, Option<&str>)] = &[
        // ChatWorkspaces: only where served, and never created, replaced or deleted.
        ("list", cws, None, Some(&unserved)),
        ("list", cws, None, None),
        ("create", cws, None, Some(&served)),
        ("update", cws, None, Some(&served)),
        ("delete", cws, None, Some(&served)),
        ("update", cws, Some("status"), Some(&served)),
        // The finalizer is a patch of the resource (see the test below).
        ("update", cws, Some("finalizers"), Some(&served)),
        // Secrets: only the named one, only where credentialsRef is allowed.
        ("get", "secrets/other", None, Some(&served)),
        ("list", "secrets", None, Some(&served)),
        ("watch", "secrets", None, Some(&served)),
        ("get", "secrets/coder-creds", None, Some(&other_served)),
        ("get", "secrets/coder-token", None, Some(&home)),
        ("list", "secrets", None, None),
        // The one Lease, in the release namespace only.
        ("get", "leases.coordination.k8s.io/someone-elses", None, Some(&home)),
        ("update", "leases.coordination.k8s.io/someone-elses", None, Some(&home)),
        ("list", "leases.coordination.k8s.io", None, Some(&home)),
        ("delete", &lease, None, Some(&home)),
        ("create", "leases.coordination.k8s.io", None, Some(&served)),
        // Nothing else.
        ("create", "events", None, Some(&served)),
        ("delete", events, None, Some(&served)),
        ("list", "pods", None, Some(&home)),
        ("get", "configmaps", None, Some(&home)),
        ("create", "deployments.apps", None, Some(&home)),
        ("list", "namespaces", None, None),
        ("watch", &format!("namespaces/{unserved}"), None, None),
        ("patch", &format!("namespaces/{served}"), None, None),
        ("create", "customresourcedefinitions.apiextensions.k8s.io", None, None),
        ("bind", "clusterroles.rbac.authorization.k8s.io", None, None),
        ("impersonate", "serviceaccounts", None, Some(&home)),
    ];
    for (verb, target, subresource, namespace) in denied {
        assert!(
            !sa.can(verb, target, *subresource, *namespace),
            "the operator must not: {verb} {target} {subresource:?} in {namespace:?}"
        );
    }
}

/// The operator adds and removes its finalizer with a patch of the resource
/// (a merge patch carrying the resourceVersion, as `controller/cleanup.rs`
/// sends it), which the chart's RBAC allows without any grant on the
/// `chatworkspaces/finalizers` subresource.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_account_adds_and_removes_the_finalizer_without_the_finalizers_grant() {
    use chatworkspace_operator::crd::{ChatWorkspace, FINALIZER};
    use kube::api::{Patch, PatchParams};

    let plane = ControlPlane::shared();
    let home = plane.namespace("fin-home").await;
    let served = plane.namespace("fin-served").await;
    let release = unique("fin");
    helm_install(
        plane,
        &release,
        &home,
        &json!({"watchNamespaces": [served], "rbac": {"aggregatedRoles": false}, "admissionPolicy": {"enabled": false}}),
    );
    let user = format!("system:serviceaccount:{home}:{release}-chatworkspace-operator");
    let sa = Identity { plane, user: user.clone() };
    assert!(!sa.can("update", "chatworkspaces.chat.coder.com", Some("finalizers"), Some(&served)));
    assert!(!sa.can("update", "chatworkspaces.chat.coder.com", None, Some(&served)));

    let admin = plane.client().await;
    create_workspace(&admin, &served, "chat-1", json!({"desiredState": "Stopped", "template": {"name": "docker-dev"}}))
        .await;
    let mut config = kube::Config::from_custom_kubeconfig(plane.kubeconfig(), &Default::default()).await.unwrap();
    config.auth_info.impersonate = Some(user);
    let as_operator = kube::Client::try_from(config).unwrap();
    let api: Api<ChatWorkspace> = Api::namespaced(as_operator, &served);
    let set = |finalizers: Vec<&str>, version: Option<String>| json!({"metadata": {"finalizers": finalizers, "resourceVersion": version}});
    let current = api.get("chat-1").await.expect("the operator reads its resources");
    let patch = set(vec![FINALIZER], current.metadata.resource_version);
    let added = api.patch("chat-1", &PatchParams::default(), &Patch::Merge(&patch)).await.expect("add the finalizer");
    assert_eq!(added.metadata.finalizers.as_deref(), Some(&[FINALIZER.to_owned()][..]));
    Api::<ChatWorkspace>::namespaced(admin.clone(), &served).delete("chat-1", &DeleteParams::default()).await.unwrap();
    let deleting = api.get("chat-1").await.expect("held by the finalizer");
    assert!(deleting.metadata.deletion_timestamp.is_some());
    let patch = set(vec![], deleting.metadata.resource_version);
    api.patch("chat-1", &PatchParams::default(), &Patch::Merge(&patch)).await.expect("remove the finalizer");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while api.get_opt("chat-1").await.unwrap().is_some() {
        assert!(std::time::Instant::now() < deadline, "the resource outlived its last finalizer");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `credentialsRef.allNamespaces` with `watchNamespaces`: Secrets are
/// readable in the served namespaces only, never cluster-wide.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_namespaces_for_credentials_means_the_served_ones_when_they_are_listed() {
    let plane = ControlPlane::shared();
    let home = plane.namespace("creds-home").await;
    let served = plane.namespace("creds-served").await;
    let unserved = plane.namespace("creds-other").await;
    let release = unique("creds");
    helm_install(
        plane,
        &release,
        &home,
        &json!({"watchNamespaces": [served], "credentialsRef": {"allNamespaces": true},
                "rbac": {"aggregatedRoles": false}, "admissionPolicy": {"enabled": false}}),
    );
    let sa = Identity { plane, user: format!("system:serviceaccount:{home}:{release}-chatworkspace-operator") };
    assert!(sa.can("get", "secrets/coder", None, Some(&served)));
    assert!(!sa.can("get", "secrets/coder", None, Some(&unserved)));
    assert!(!sa.can("get", "secrets/coder", None, Some(&home)));
    assert!(!sa.can("get", "secrets", None, None));
    assert!(!sa.can("list", "secrets", None, Some(&served)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_wide_install_still_reads_no_secrets() {
    let plane = ControlPlane::shared();
    let home = plane.namespace("rbac-cluster").await;
    let elsewhere = plane.namespace("rbac-anywhere").await;
    let release = unique("wide");
    helm_install(
        plane,
        &release,
        &home,
        &json!({"leaderElection": {"enabled": false}, "rbac": {"aggregatedRoles": false}, "admissionPolicy": {"enabled": false}}),
    );
    let sa = Identity { plane, user: format!("system:serviceaccount:{home}:{release}-chatworkspace-operator") };
    assert!(sa.can("watch", "chatworkspaces.chat.coder.com", None, None));
    assert!(sa.can("patch", "chatworkspaces.chat.coder.com", Some("status"), Some(&elsewhere)));
    assert!(sa.can("create", "events.events.k8s.io", None, Some(&elsewhere)));
    assert!(!sa.can("get", "secrets/coder", None, Some(&elsewhere)));
    assert!(!sa.can("list", "secrets", None, None));
    assert!(
        !sa.can("create", "leases.coordination.k8s.io", None, Some(&home)),
        "no lease RBAC without leader election"
    );
}

/// The operator, run outside the cluster with the chart's ServiceAccount
/// token and exactly the environment the chart gives its container, serves
/// ChatWorkspaces, reads the one Secret it was granted, is refused the
/// others, and holds and releases its Lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_reconciles_as_the_charts_service_account() {
    let plane = ControlPlane::shared();
    let admin = plane.client().await;
    let sim = Simulator::start(SimConfig::fast()).await.expect("start the Coder simulator");
    let home = plane.namespace("sa-home").await;
    // The cluster admin grants the served namespace any Coder owner.
    let served = support::granted_namespace(plane, "sa-served").await;
    let no_secrets = plane.namespace("sa-nosecrets").await;
    let release = unique("sa");
    helm_install(
        plane,
        &release,
        &home,
        &json!({
            "coder": {"url": sim.url(), "tokenSecret": {"name": "coder-token"}},
            "watchNamespaces": [served, no_secrets],
            "credentialsRef": {"namespaces": [served], "secretNames": ["coder-creds"]},
            "leaderElection": {"leaseDuration": "3s", "renewDeadline": "2s", "retryPeriod": "500ms"},
            "activeInterval": "200ms",
            "resyncInterval": "2s",
            "logging": {"format": "text", "level": "info,chatworkspace_operator=debug"},
            "rbac": {"aggregatedRoles": false},
        }),
    );
    let fullname = format!("{release}-chatworkspace-operator");

    // The container's environment as the kubelet would build it: field
    // references resolved, the token Secret's volume replaced by a file.
    let deployment = Api::<Deployment>::namespaced(admin.clone(), &home).get(&fullname).await.unwrap();
    let pod_spec = deployment.spec.unwrap().template.spec.unwrap();
    let container = &pod_spec.containers[0];
    assert_eq!(container.args.as_deref(), Some(&["run".to_owned()][..]));
    let token_dir = tempfile::tempdir().unwrap();
    let token_file = token_dir.path().join("token");
    fs::write(&token_file, sim.token()).unwrap();
    let pod_name = format!("{fullname}-7d9f8-abcde");
    let mut env: Vec<(String, String)> = container
        .env
        .iter()
        .flatten()
        .map(|var| {
            let field = var.value_from.as_ref().and_then(|from| from.field_ref.as_ref()).map(|f| f.field_path.as_str());
            let value = match (var.name.as_str(), field) {
                (_, Some("metadata.name")) => pod_name.clone(),
                (_, Some("metadata.namespace")) => home.clone(),
                ("CODER_TOKEN_FILE", _) => token_file.to_string_lossy().into_owned(),
                _ => var.value.clone().unwrap_or_else(|| panic!("unexpected env source for {}", var.name)),
            };
            (var.name.clone(), value)
        })
        .collect();
    let token = plane.token_for_service_account(&home, &fullname).unwrap();
    let kubeconfig = plane.kubeconfig_for_token(&token).unwrap();
    env.push(("KUBECONFIG".into(), kubeconfig.to_string_lossy().into_owned()));

    // A Secret the operator may read, and one in a namespace where it may not.
    let credentials = |namespace: &str| -> Secret {
        serde_json::from_value(json!({
            "metadata": {"name": "coder-creds", "namespace": namespace},
            "stringData": {"url": sim.url(), "token": sim.token()},
        }))
        .unwrap()
    };
    for namespace in [&served, &no_secrets] {
        Api::<Secret>::namespaced(admin.clone(), namespace)
            .create(&PostParams::default(), &credentials(namespace))
            .await
            .unwrap();
    }

    let mut operator = OperatorProcess::spawn("sa-operator", &env);
    operator.wait_ready(Duration::from_secs(30)).await;
    let running = json!({"desiredState": "Running", "template": {"name": "docker-dev"}});
    let with_secret = json!({"desiredState": "Running", "template": {"name": "docker-dev"}, "credentialsRef": {"name": "coder-creds"}});
    create_workspace(&admin, &served, "default-token", running).await;
    create_workspace(&admin, &served, "secret-token", with_secret.clone()).await;
    create_workspace(&admin, &no_secrets, "forbidden-secret", with_secret).await;

    for name in ["default-token", "secret-token"] {
        let ready = wait_for_condition(&admin, &served, name, "Ready", "True", CONVERGE).await;
        assert_eq!(ready.status.unwrap().workspace.unwrap().name, name);
    }
    let refused = wait_for_condition(&admin, &no_secrets, "forbidden-secret", "Degraded", "True", CONVERGE).await;
    let degraded = refused.status.unwrap().conditions.into_iter().find(|c| c.type_ == "Degraded").unwrap();
    assert!(degraded.message.contains("forbidden"), "the Secret read is refused by RBAC: {}", degraded.message);
    assert!(sim.workspace_id("admin", "forbidden-secret").is_none(), "nothing was created without credentials");
    assert_eq!(lease_holder(&admin, &home, &fullname).await.as_deref(), Some(pod_name.as_str()));

    operator.terminate();
    let status = operator.wait_exit(Duration::from_secs(15)).await;
    assert!(status.success(), "exit status {status}; log:\n{}", operator.logs());
    assert_eq!(lease_holder(&admin, &home, &fullname).await, None, "the Lease was released on SIGTERM");
}
