//! The chart's Grafana dashboard and alert rules
//! (`charts/chatworkspace-operator/files/`): Prometheus's own `promtool`
//! (built by `make tools`) checks the rules and runs their unit tests
//! (`tests/alerts/rules_test.yaml`); every metric the dashboard and the rules
//! name is exported by a running operator process; and a recovery budget
//! spent on the simulator makes the budget alert fire on the metrics scraped
//! from it, evaluated by promtool.

mod support;

use std::collections::BTreeSet;
use std::fmt::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chatworkspace_operator::crd::ChatWorkspace;
use coder_sim::{SimConfig, Simulator};
use kube::Api;
use serde_json::{Value, json};
use support::process::{Exposition, OperatorProcess, create_workspace, operator_env};
use testbed::ControlPlane;

fn chart_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/chatworkspace-operator/files").join(name)
}

fn promtool(args: &[&str], dir: &Path) -> String {
    let tool = testbed::tool("promtool").unwrap_or_else(|err| panic!("{err:#}"));
    let output = std::process::Command::new(tool).args(args).current_dir(dir).output().expect("run promtool");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn the_rules_pass_promtool_check_and_each_alert_fires_in_its_unit_test() {
    let rules = chart_file("prometheus-rules.yaml");
    let checked = promtool(&["check", "rules", rules.to_str().unwrap()], Path::new("."));
    assert!(checked.contains("SUCCESS: 7 rules found"), "{checked}");
    let tests = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/alerts");
    let tested = promtool(&["test", "rules", "rules_test.yaml"], &tests);
    assert!(tested.contains("SUCCESS"), "{tested}");

    // Every alert is proven to fire by a unit test.
    let unit: Value = serde_yaml::from_str(&std::fs::read_to_string(tests.join("rules_test.yaml")).unwrap()).unwrap();
    let fired: BTreeSet<&str> = unit["tests"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|t| t["alert_rule_test"].as_array().unwrap())
        .filter(|case| !case["exp_alerts"].as_array().unwrap().is_empty())
        .map(|case| case["alertname"].as_str().unwrap())
        .collect();
    assert_eq!(fired, alert_names(), "an alert no unit test makes fire");
}

fn rule_groups() -> Value {
    serde_yaml::from_str(&std::fs::read_to_string(chart_file("prometheus-rules.yaml")).unwrap()).unwrap()
}

fn alert_names() -> BTreeSet<&'static str> {
    let groups = rule_groups();
    let names: BTreeSet<String> = groups["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .map(|r| r["alert"].as_str().unwrap().to_owned())
        .collect();
    names.into_iter().map(|n| &*Box::leak(n.into_boxed_str())).collect()
}

/// Every PromQL expression of the rules and the dashboard.
fn expressions() -> Vec<String> {
    let mut exprs: Vec<String> = rule_groups()["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .map(|r| r["expr"].as_str().unwrap().to_owned())
        .collect();
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(chart_file("grafana-dashboard.json")).unwrap()).unwrap();
    for panel in dashboard["panels"].as_array().unwrap() {
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "panel {} shows nothing", panel["title"]);
        exprs.extend(targets.iter().map(|t| t["expr"].as_str().unwrap().to_owned()));
    }
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(query) = variable["query"]["query"].as_str() {
            exprs.push(query.to_owned());
        }
    }
    exprs
}

/// The metric names an expression uses: identifiers of the operator's
/// prefix (PromQL functions and label names never have it).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(at) = rest.find("chatworkspace_") {
        let tail = &rest[at..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':')).unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

/// Labels Prometheus adds to every sample of a target the ServiceMonitor
/// makes (the operator exports none of them).
const TARGET_LABELS: [&str; 6] = ["namespace", "pod", "instance", "job", "service", "container"];

/// The label names an expression groups by (`by (a, b)`) or matches on
/// (`{a="x", b=~"y"}`).
fn label_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(at) = rest.find("by (") {
        let tail = &rest[at + 4..];
        let end = tail.find(')').unwrap_or(tail.len());
        names.extend(tail[..end].split(',').map(|name| name.trim().to_owned()).filter(|name| !name.is_empty()));
        rest = &tail[end..];
    }
    let mut rest = expr;
    while let Some(at) = rest.find('{') {
        let tail = &rest[at + 1..];
        let (mut in_quotes, mut end) = (false, tail.len());
        let mut matcher = String::new();
        for (index, c) in tail.char_indices() {
            match c {
                '"' => in_quotes = !in_quotes,
                '}' if !in_quotes => {
                    end = index;
                    break;
                }
                _ => {}
            }
            matcher.push(c);
        }
        let mut in_quotes = false;
        for part in matcher.split(|c| {
            if c == '"' {
                in_quotes = !in_quotes;
            }
            c == ',' && !in_quotes
        }) {
            let name = part.split(['=', '!', '~']).next().unwrap_or_default().trim();
            if !name.is_empty() {
                names.insert(name.to_owned());
            }
        }
        rest = &tail[end..];
    }
    names
}

#[test]
fn label_names_are_read_from_groupings_and_matchers() {
    let expr = r#"sum by (credentials, endpoint) (rate(x_total{namespace=~"$ns",code!="4,29"}[5m])) / sum by (le) (y)"#;
    let names: Vec<String> = label_names(expr).into_iter().collect();
    assert_eq!(names, ["code", "credentials", "endpoint", "le", "namespace"]);
}

#[test]
fn the_chart_ships_the_dashboard_and_the_rules_only_when_asked() {
    let render = |values: &[&str]| {
        let mut helm = std::process::Command::new(testbed::tool("helm").unwrap_or_else(|err| panic!("{err:#}")));
        helm.args(["template", "t"]).arg(support::process::chart_dir());
        for value in values {
            helm.args(["--set", value]);
        }
        let output = helm.output().expect("run helm");
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let docs: Vec<Value> = String::from_utf8_lossy(&output.stdout)
            .split("\n---")
            .filter_map(|doc| serde_yaml::from_str::<Value>(doc).ok())
            .filter(|doc| doc.is_object())
            .collect();
        docs
    };
    let default = render(&[]);
    assert!(
        !default
            .iter()
            .any(|d| d["kind"] == "PrometheusRule" || d["metadata"]["name"] == "t-chatworkspace-operator-dashboard"),
        "off by default"
    );
    let on = render(&["metrics.prometheusRule.enabled=true", "metrics.grafanaDashboard.enabled=true"]);
    let rule = on.iter().find(|d| d["kind"] == "PrometheusRule").expect("a PrometheusRule");
    assert_eq!(rule["spec"]["groups"], rule_groups()["groups"], "the rules promtool checks are the ones shipped");
    let dashboard = on
        .iter()
        .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == "t-chatworkspace-operator-dashboard")
        .expect("the dashboard's ConfigMap");
    assert_eq!(dashboard["metadata"]["labels"]["grafana_dashboard"], "1", "the sidecar's default label");
    let shipped: Value =
        serde_json::from_str(dashboard["data"]["chatworkspace-operator.json"].as_str().unwrap()).unwrap();
    let file: Value =
        serde_json::from_str(&std::fs::read_to_string(chart_file("grafana-dashboard.json")).unwrap()).unwrap();
    assert_eq!(shipped, file);
}

/// Every sample name of the scrapes.
fn exported(scrapes: &[&Exposition]) -> BTreeSet<String> {
    scrapes.iter().flat_map(|s| s.samples.iter().map(|sample| sample.name.clone())).collect()
}

/// A promtool unit test whose input is the scrapes as Prometheus would hold
/// them (with the target's labels): `before` for three minutes, then
/// `after`, one sample a minute.
fn unit_test_from_scrapes(
    before: &Exposition,
    after: &Exposition,
    alert: &str,
    eval_time: &str,
    fires: bool,
) -> String {
    let mut series = String::new();
    let key = |s: &support::process::Sample| {
        let mut labels: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
        labels.push(r#"namespace="ops""#.into());
        labels.push(r#"pod="operator-0""#.into());
        format!("{}{{{}}}", s.name, labels.join(","))
    };
    for sample in &after.samples {
        let old =
            before.samples.iter().find(|s| s.name == sample.name && s.labels == sample.labels).map_or(0.0, |s| s.value);
        let values: Vec<String> =
            (0..20).map(|minute| if minute < 3 { old } else { sample.value }).map(|v| format!("{v}")).collect();
        let _ = writeln!(series, "      - series: '{}'\n        values: '{}'", key(sample), values.join(" "));
    }
    let expected = if fires {
        "\n          - exp_labels: {namespace: ops, severity: warning}\n            exp_annotations: ANNOTATIONS"
    } else {
        " []"
    };
    format!(
        "rule_files:\n  - {}\nevaluation_interval: 1m\ntests:\n  - interval: 1m\n    input_series:\n{series}    alert_rule_test:\n      - eval_time: {eval_time}\n        alertname: {alert}\n        exp_alerts:{expected}\n",
        chart_file("prometheus-rules.yaml").display()
    )
}

#[tokio::test]
async fn every_metric_named_is_exported_and_a_spent_recovery_budget_fires_its_alert() {
    let plane = ControlPlane::shared();
    let client = plane.client().await;
    let sim = Simulator::start(SimConfig::fast()).await.unwrap();
    let namespace = support::granted_namespace(plane, "alerts").await;
    // Only admin's workspaces: bob's is refused (a Stalled, a reconcile error).
    support::grant(&client, &namespace, Some("admin")).await;
    let mut env = operator_env(plane.kubeconfig_path(), &sim.url(), &sim.token(), &namespace);
    env.push(("ATTENTION_INTERVAL".into(), "300ms".into()));
    let mut operator = OperatorProcess::spawn("op", &env);
    operator.wait_ready(Duration::from_secs(30)).await;
    let recovery = json!({"disconnectedThreshold": "2s", "probeTimeout": "1s", "maxAttempts": 1, "window": "1h"});
    create_workspace(&client, &namespace, "chat", json!({"template": {"name": "docker-dev"}, "recovery": recovery}))
        .await;
    create_workspace(&client, &namespace, "bobs", json!({"owner": "bob", "template": {"name": "docker-dev"}})).await;
    let api = Api::<ChatWorkspace>::namespaced(client.clone(), &namespace);
    let condition = |name: &'static str, type_: &'static str, reason: Option<&'static str>| {
        let api = api.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let cws = api.get(name).await.unwrap();
                let found = cws.status.as_ref().and_then(|s| {
                    chatworkspace_operator::conditions::find(&s.conditions, type_)
                        .filter(|c| c.status == "True" && reason.is_none_or(|r| c.reason == r))
                        .cloned()
                });
                if found.is_some() {
                    return cws;
                }
                assert!(Instant::now() < deadline, "{name}: no {type_}={reason:?}: {:?}", cws.status);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    condition("chat", "Ready", Some("Running")).await;
    condition("bobs", "Stalled", Some("OwnerNotGranted")).await;
    let before = operator.metrics().await;

    // The agent dies: one recovery; it dies again: the budget (1) is spent.
    let workspace = sim.workspace_id("admin", "chat").unwrap();
    sim.kill_agent(workspace);
    condition("chat", "Recovering", None).await;
    condition("chat", "Ready", Some("Running")).await;
    sim.kill_agent(workspace);
    condition("chat", "Stalled", Some("RecoveryBudgetExhausted")).await;
    let after = operator.metrics().await;

    // Every metric the dashboard and the rules name is exported.
    let exported = exported(&[&before, &after]);
    let mut named = BTreeSet::new();
    for expr in expressions() {
        named.extend(metric_names(&expr));
    }
    assert!(named.len() >= 10, "{named:?}");
    let missing: Vec<&String> = named.iter().filter(|name| !exported.contains(*name)).collect();
    assert!(missing.is_empty(), "named but not exported: {missing:?}\nexported: {exported:?}");
    // And every label they group or match by is one of those metrics' own,
    // or one Prometheus adds to the target: a panel by a label nobody
    // exports shows one series with the label empty.
    for expr in expressions() {
        let metrics = metric_names(&expr);
        for label in label_names(&expr) {
            let carried = [&before, &after]
                .iter()
                .flat_map(|s| &s.samples)
                .any(|sample| metrics.contains(&sample.name) && sample.labels.contains_key(&label));
            assert!(
                carried || TARGET_LABELS.contains(&label.as_str()),
                "label {label} of {expr} is on none of {metrics:?}"
            );
        }
    }

    // The budget alert, on these scrapes: quiet before, firing after.
    let annotations = {
        let groups = rule_groups();
        let rule = groups["groups"][0]["rules"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["alert"] == "ChatWorkspaceRecoveryBudgetExhausted")
            .unwrap()
            .clone();
        serde_json::to_string(&rule["annotations"]).unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    for (eval_time, fires) in [("2m", false), ("5m", true)] {
        let test = unit_test_from_scrapes(&before, &after, "ChatWorkspaceRecoveryBudgetExhausted", eval_time, fires)
            .replace("ANNOTATIONS", &annotations);
        let file = dir.path().join(format!("scraped_{eval_time}.yaml"));
        std::fs::write(&file, &test).unwrap();
        let tool = testbed::tool("promtool").unwrap_or_else(|err| panic!("{err:#}"));
        let output = std::process::Command::new(tool).args(["test", "rules"]).arg(&file).output().unwrap();
        assert!(
            output.status.success(),
            "at {eval_time} the alert should {}fire:\n{}{}\n{test}",
            if fires { "" } else { "not " },
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// The annotations of `alert` as Prometheus renders them for `labels`.
fn rendered_annotations(alert: &str, labels: &[(&str, &str)]) -> Value {
    let groups = rule_groups();
    let rule = groups["groups"][0]["rules"].as_array().unwrap().iter().find(|r| r["alert"] == alert).unwrap().clone();
    let mut annotations = rule["annotations"].clone();
    for text in annotations.as_object_mut().unwrap().values_mut() {
        let mut rendered = text.as_str().unwrap().to_owned();
        for (name, value) in labels {
            rendered = rendered.replace(&format!("{{{{ $labels.{name} }}}}"), value);
        }
        *text = Value::String(rendered);
    }
    annotations
}

#[tokio::test]
async fn a_429_is_counted_under_the_credentials_that_got_it_and_fires_the_rate_limit_alert_for_them() {
    let plane = ControlPlane::shared();
    let client = plane.client().await;
    let sim = Simulator::start(SimConfig::fast()).await.unwrap();
    let namespace = support::granted_namespace(plane, "ratelimit").await;
    let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(json!({
        "metadata": {"name": "tenant-coder", "namespace": namespace},
        "stringData": {"url": sim.url(), "token": sim.token()},
    }))
    .unwrap();
    Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), &namespace)
        .create(&Default::default(), &secret)
        .await
        .unwrap();
    let env = operator_env(plane.kubeconfig_path(), &sim.url(), &sim.token(), &namespace);
    let mut operator = OperatorProcess::spawn("op", &env);
    operator.wait_ready(Duration::from_secs(30)).await;
    // The same Coder user behind both: only the credentials differ.
    create_workspace(&client, &namespace, "own", json!({"template": {"name": "docker-dev"}})).await;
    create_workspace(
        &client,
        &namespace,
        "tenants",
        json!({"template": {"name": "docker-dev"}, "credentialsRef": {"name": "tenant-coder"}}),
    )
    .await;
    for name in ["own", "tenants"] {
        support::process::wait_for_condition(&client, &namespace, name, "Ready", "True", support::process::CONVERGE)
            .await;
    }

    // Coder's limiter answers each one's stop build once with 429.
    let builds = "POST /workspaces/{id}/builds";
    let tenants = format!("{namespace}/tenant-coder");
    let before = operator.metrics().await;
    for name in ["own", "tenants"] {
        let id = sim.workspace_id("admin", name).unwrap();
        sim.inject_fault(
            coder_sim::Fault::new(format!("/api/v2/workspaces/{id}/builds"), coder_sim::FaultKind::RateLimited(1))
                .method("POST")
                .times(1),
        );
    }
    let api = Api::<ChatWorkspace>::namespaced(client.clone(), &namespace);
    for name in ["own", "tenants"] {
        let patch = json!({"spec": {"desiredState": "Stopped"}});
        api.patch(name, &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch)).await.unwrap();
    }
    for name in ["own", "tenants"] {
        let stopped = support::process::wait_for_condition(
            &client,
            &namespace,
            name,
            "Ready",
            "True",
            support::process::CONVERGE,
        )
        .await;
        assert_eq!(stopped.status.unwrap().phase, Some(chatworkspace_operator::crd::Phase::Stopped));
    }
    let after = operator.metrics().await;
    let count = |scrape: &Exposition, credentials: &str, code: &str| {
        scrape.value(
            "chatworkspace_coder_requests_total",
            &[("credentials", credentials), ("endpoint", builds), ("code", code)],
        )
    };
    for credentials in ["operator", tenants.as_str()] {
        assert_eq!(count(&after, credentials, "429"), 1.0, "{credentials}: one 429 counted");
        assert_eq!(count(&after, credentials, "201") - count(&before, credentials, "201"), 1.0, "then one build");
    }
    let named: BTreeSet<&str> = after
        .samples
        .iter()
        .filter(|s| s.name == "chatworkspace_coder_requests_total")
        .map(|s| s.labels["credentials"].as_str())
        .collect();
    assert_eq!(named, BTreeSet::from(["operator", tenants.as_str()]), "one value per credentials in use");
    let text = operator.get("/metrics").await.unwrap().2;
    assert!(!text.contains(&sim.token()), "the token is in the metrics");

    // Those 429s, repeated every minute as the scrapes saw them, make the
    // rate-limit alert fire once per credentials, naming them.
    let mut series = Vec::new();
    for sample in after.samples.iter().filter(|s| s.name == "chatworkspace_coder_requests_total") {
        let old =
            before.samples.iter().find(|s| s.name == sample.name && s.labels == sample.labels).map_or(0.0, |s| s.value);
        let mut labels: Vec<String> = sample.labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
        labels.push(r#"namespace="ops""#.into());
        series.push(json!({
            "series": format!("{}{{{}}}", sample.name, labels.join(",")),
            "values": format!("{old}+{}x30", sample.value - old),
        }));
    }
    let expected: Vec<Value> = ["operator", tenants.as_str()]
        .into_iter()
        .map(|credentials| {
            let labels = [("credentials", credentials), ("endpoint", builds)];
            json!({
                "exp_labels": {"namespace": "ops", "severity": "warning", "credentials": credentials, "endpoint": builds},
                "exp_annotations": rendered_annotations("ChatWorkspaceCoderRateLimited", &labels),
            })
        })
        .collect();
    let unit = json!({
        "rule_files": [chart_file("prometheus-rules.yaml")],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": series,
            "alert_rule_test": [
                {"eval_time": "5m", "alertname": "ChatWorkspaceCoderRateLimited", "exp_alerts": []},
                {"eval_time": "20m", "alertname": "ChatWorkspaceCoderRateLimited", "exp_alerts": expected},
            ],
        }],
    });
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("scraped_429s.yaml");
    std::fs::write(&file, serde_yaml::to_string(&unit).unwrap()).unwrap();
    let tool = testbed::tool("promtool").unwrap_or_else(|err| panic!("{err:#}"));
    let output = std::process::Command::new(tool).args(["test", "rules"]).arg(&file).output().unwrap();
    assert!(
        output.status.success(),
        "the alert should fire for each credentials:\n{}{}\n{unit:#}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );

    // The last resource naming the Secret goes: so do its series.
    api.delete("tenants", &Default::default()).await.unwrap();
    let deadline = Instant::now() + support::process::CONVERGE;
    loop {
        let text = operator.get("/metrics").await.unwrap().2;
        if api.get_opt("tenants").await.unwrap().is_none() && !text.contains(&tenants) {
            assert!(text.contains(r#"credentials="operator""#), "{text}");
            break;
        }
        assert!(Instant::now() < deadline, "a Secret no resource names keeps its series:\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
