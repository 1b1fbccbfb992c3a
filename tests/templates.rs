//! Templates, presets and parameters (chatd's read_template and
//! create_workspace) in the resource, against the real kube-apiserver and
//! the simulator's templates (presets with PascalCase keys on the wire).

mod support;

use std::time::Duration;

use chatworkspace_operator::conditions::{self, DEGRADED, READY};
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use support::{Env, LONG};

const DOCKER_DEV_V1: &str = "2a000000-0000-4000-8000-0000000001a1";
const DOCKER_DEV_V2: &str = "2a000000-0000-4000-8000-0000000002a1";
const LARGE_PRESET: &str = "2a000000-0000-4000-8000-0000000002b3";

fn request_bodies(env: &Env, method: &str, path_suffix: &str) -> Vec<Value> {
    env.sim
        .requests()
        .into_iter()
        .filter(|r| r.method == method && r.path.ends_with(path_suffix) && r.status < 300)
        .filter_map(|r| r.body)
        .collect()
}

#[tokio::test]
async fn presets_of_the_version_a_create_builds_appear_in_status() {
    let env = Env::start("presets").await;
    env.create("chat-1", json!({"template": {"name": "docker-dev"}})).await;
    let ready = env.wait_for_condition("chat-1", READY, "True", None, LONG).await;
    let template = ready.status.unwrap().template.expect("status.template");
    assert_eq!(template.name, "docker-dev");
    assert_eq!(template.active_version_id, DOCKER_DEV_V2);
    assert_eq!(template.version_id.as_deref(), Some(DOCKER_DEV_V2));
    assert!(!template.require_active_version);
    let names: Vec<&str> = template.presets.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["small", "standard", "large"]);
    let large = &template.presets[2];
    assert_eq!(large.id, LARGE_PRESET);
    assert_eq!(large.desired_prebuild_instances, Some(2));
    assert_eq!(large.description.as_deref(), Some("8 cores, 16 GiB"));
    let standard = &template.presets[1];
    assert!(standard.default);
    assert_eq!(standard.icon.as_deref(), Some("/emojis/1f4bb.png"));
    assert_eq!(
        standard.parameters.iter().map(|p| (p.name.as_str(), p.value.as_str())).collect::<Vec<_>>(),
        [("cpu", "4"), ("memory", "8")]
    );

    // kubectl shows them to an agent choosing a preset.
    let out = testbed::ControlPlane::shared()
        .kubectl()
        .args(["get", "cws", "chat-1", "-n", &env.namespace, "-o", "jsonpath={.status.template.presets[*].name}"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "small standard large");
}

#[tokio::test]
async fn creation_sends_the_preset_id_and_parameters_and_start_never_sends_a_preset() {
    let env = Env::start("create").await;
    env.create(
        "chat-1",
        json!({
            "template": {"name": "docker-dev"},
            "preset": {"name": "large"},
            "parameters": [{"name": "region", "value": "eu-west"}],
        }),
    )
    .await;
    env.wait_for_condition("chat-1", READY, "True", Some("Running"), LONG).await;
    let creates = request_bodies(&env, "POST", "/workspaces");
    assert_eq!(creates.len(), 1, "{creates:?}");
    let create = &creates[0];
    assert_eq!(create["template_version_preset_id"], LARGE_PRESET);
    assert_eq!(create["rich_parameter_values"], json!([{"name": "region", "value": "eu-west"}]));
    assert_eq!(create["claim_prebuild_if_available"], true, "the preset has prebuilds");
    let id = env.workspace_id("admin", "chat-1");
    let first = &env.sim.builds(id)[0];
    assert_eq!(first.preset_id.map(|p| p.to_string()).as_deref(), Some(LARGE_PRESET));

    env.set_desired_state("chat-1", "Stopped").await;
    env.wait_for_condition("chat-1", READY, "True", Some("Stopped"), LONG).await;
    env.set_desired_state("chat-1", "Running").await;
    env.wait_for_condition("chat-1", READY, "True", Some("Running"), LONG).await;
    let builds = request_bodies(&env, "POST", "/builds");
    assert_eq!(builds.len(), 2);
    for body in &builds {
        assert!(body.get("template_version_preset_id").is_none(), "a build sent a preset: {body}");
        assert!(body.get("rich_parameter_values").is_none(), "a build sent parameters: {body}");
    }
}

#[tokio::test]
async fn a_start_on_a_template_that_requires_its_active_version_builds_it_and_says_so() {
    let env = Env::start("active").await;
    env.create("chat-1", json!({"template": {"name": "docker-dev", "versionId": DOCKER_DEV_V1}})).await;
    env.wait_for_condition("chat-1", READY, "True", Some("Running"), LONG).await;
    env.set_desired_state("chat-1", "Stopped").await;
    env.wait_for_condition("chat-1", READY, "True", Some("Stopped"), LONG).await;

    env.sim.set_require_active_version("docker-dev", true);
    env.set_desired_state("chat-1", "Running").await;
    env.wait_for_condition("chat-1", READY, "True", Some("Running"), LONG).await;
    let builds = request_bodies(&env, "POST", "/builds");
    assert_eq!(builds.last().unwrap()["template_version_id"], DOCKER_DEV_V2, "{builds:?}");
    assert_eq!(builds[0].get("template_version_id"), None, "a stop is never gated on versions");
    let events = env.wait_for_events("chat-1", &["ActiveVersionRequired"]).await;
    assert!(events.iter().any(|(reason, note)| reason == "ActiveVersionRequired" && note.contains(DOCKER_DEV_V2)));
}

const STRICT_DEV_V2: &str = "2e000000-0000-4000-8000-0000000002a1";

#[tokio::test]
async fn a_new_required_parameter_at_start_is_named_and_its_value_alone_is_sent_once_given() {
    let env = Env::start("newparam").await;
    let region = json!({"name": "region", "value": "eu-west"});
    env.create("chat-1", json!({"template": {"name": "strict-dev"}, "parameters": [region]})).await;
    env.wait_for_condition("chat-1", READY, "True", Some("Running"), LONG).await;
    env.set_desired_state("chat-1", "Stopped").await;
    env.wait_for_condition("chat-1", READY, "True", Some("Stopped"), LONG).await;

    // The template admin activates v2, which adds `zone` (required, no default).
    env.sim.set_active_version("strict-dev", "v2");
    env.set_desired_state("chat-1", "Running").await;
    let degraded = env.wait_for_condition("chat-1", DEGRADED, "True", Some("NewParameterRequired"), LONG).await;
    let message = conditions::find(&degraded.status.unwrap().conditions, DEGRADED).unwrap().message.clone();
    assert!(message.contains("\"zone\"") && message.contains(STRICT_DEV_V2), "names the parameter: {message}");
    assert!(message.contains("Add a value for it to spec.parameters"), "says what to do: {message}");
    let refused = || env.sim.requests().iter().filter(|r| r.path.ends_with("/builds") && r.status == 400).count();
    let before = refused();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(refused(), before, "not retried until the spec changes");

    // The value is added (the CRD allows adding one): the start sends it alone.
    let patch = json!({"spec": {"parameters": [region, {"name": "zone", "value": "z1"}]}});
    env.api.patch("chat-1", &PatchParams::default(), &Patch::Merge(&patch)).await.expect("add the new value");
    env.wait_for_condition("chat-1", READY, "True", Some("Running"), LONG).await;
    let start = request_bodies(&env, "POST", "/builds").pop().unwrap();
    assert_eq!(start["template_version_id"], STRICT_DEV_V2);
    assert_eq!(start["rich_parameter_values"], json!([{"name": "zone", "value": "z1"}]), "never the old ones");
    let id = env.workspace_id("admin", "chat-1");
    let parameters = env.sim.builds(id).pop().unwrap().parameters;
    assert!(
        parameters.contains(&("region".into(), "eu-west".into())),
        "the immutable one carried over: {parameters:?}"
    );
    assert!(parameters.contains(&("zone".into(), "z1".into())), "{parameters:?}");
}

#[tokio::test]
async fn parameter_validation_errors_name_each_field_and_are_not_retried() {
    let env = Env::start("validation").await;
    env.create("chat-1", json!({"template": {"name": "docker-dev"}, "parameters": [{"name": "cpu", "value": "99"}]}))
        .await;
    let degraded = env.wait_for_condition("chat-1", DEGRADED, "True", Some("ValidationFailed"), LONG).await;
    let message = conditions::find(&degraded.status.unwrap().conditions, DEGRADED).unwrap().message.clone();
    assert!(message.contains("cpu"), "names the field: {message}");
    let attempts = || request_bodies(&env, "POST", "/workspaces").len() + failed_creates(&env);
    let before = attempts();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(attempts(), before, "no retry until the spec changes");
}

fn failed_creates(env: &Env) -> usize {
    env.sim
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/workspaces") && r.status >= 400)
        .count()
}

#[tokio::test]
async fn an_unknown_preset_lists_the_available_ones() {
    let env = Env::start("nopreset").await;
    env.create("chat-1", json!({"template": {"name": "docker-dev"}, "preset": {"name": "huge"}})).await;
    let degraded = env.wait_for_condition("chat-1", DEGRADED, "True", Some("PresetNotFound"), LONG).await;
    let message = conditions::find(&degraded.status.unwrap().conditions, DEGRADED).unwrap().message.clone();
    for name in ["huge", "small", "standard", "large"] {
        assert!(message.contains(name), "{name} missing from: {message}");
    }
    assert_eq!(failed_creates(&env) + request_bodies(&env, "POST", "/workspaces").len(), 0);
}

#[tokio::test]
async fn template_reads_are_cached() {
    let env = Env::start("cache").await;
    env.create("chat-1", json!({"template": {"name": "docker-dev"}})).await;
    env.create("chat-2", json!({"template": {"name": "docker-dev"}})).await;
    env.wait_for_condition("chat-1", READY, "True", Some("Running"), LONG).await;
    env.wait_for_condition("chat-2", READY, "True", Some("Running"), LONG).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let template_reads =
        env.sim.requests().iter().filter(|r| r.path.contains("/templates/") || r.path.ends_with("/presets")).count();
    // One template read and one presets read serve both resources and every
    // reconcile since (within the cache's lifetime); two resources resolving
    // at the very same moment may each read once.
    assert!(template_reads <= 4, "{template_reads} template/preset reads");
    let observations = env.sim.requests().iter().filter(|r| r.method == "GET" && r.path.contains("/workspace")).count();
    assert!(observations > template_reads, "more workspace reads ({observations}) than template reads");
}

#[tokio::test]
async fn the_crd_rejects_bad_input() {
    let env = Env::start("cel").await;
    // Untyped objects: the point is to send what the Rust types cannot express.
    let resource = kube::api::ApiResource::erase::<chatworkspace_operator::crd::ChatWorkspace>(&());
    let raw: kube::Api<kube::api::DynamicObject> =
        kube::Api::namespaced_with(env.client.clone(), &env.namespace, &resource);
    let create = |spec: Value| {
        let raw = raw.clone();
        async move {
            let object: kube::api::DynamicObject = serde_json::from_value(json!({
                "apiVersion": "chat.coder.com/v1alpha1", "kind": "ChatWorkspace",
                "metadata": {"name": "bad"}, "spec": spec,
            }))
            .unwrap();
            raw.create(&PostParams::default(), &object).await.map(|_| ())
        }
    };
    let rejected = |result: Result<(), kube::Error>, needle: &str| match result {
        Err(kube::Error::Api(status)) => {
            assert!(status.message.contains(needle), "{needle:?} not in {}", status.message)
        }
        other => panic!("expected a rejection mentioning {needle:?}, got {other:?}"),
    };
    rejected(
        create(json!({"template": {"name": "a", "id": "b"}})).await,
        "exactly one of template.name and template.id",
    );
    rejected(create(json!({"template": {}})).await, "exactly one of template.name and template.id");
    rejected(
        create(json!({"template": {"name": "a"}, "preset": {"name": "x", "id": "y"}})).await,
        "exactly one of preset.name and preset.id",
    );
    rejected(
        create(json!({"template": {"name": "a"}, "parameters": [{"name": "cpu", "value": "1"}, {"name": "cpu", "value": "2"}]}))
            .await,
        "Duplicate value",
    );
    rejected(create(json!({"template": {"name": "a"}, "desiredState": "Paused"})).await, "Unsupported value");
    rejected(
        create(json!({"template": {"name": "a"}, "recovery": {"disconnectedThreshold": "soon"}})).await,
        "disconnectedThreshold",
    );

    // metadata.name must be a Coder workspace name unless workspaceName is set.
    let named = |name: &str, spec: serde_json::Value| {
        let object: kube::api::DynamicObject = serde_json::from_value(json!({
            "apiVersion": "chat.coder.com/v1alpha1", "kind": "ChatWorkspace",
            "metadata": {"name": name}, "spec": spec,
        }))
        .unwrap();
        let raw = raw.clone();
        async move { raw.create(&PostParams::default(), &object).await.map(|_| ()) }
    };
    let not_a_workspace_name = "metadata.name cannot be a Coder workspace name";
    rejected(named("new", json!({"template": {"name": "a"}})).await, not_a_workspace_name);
    rejected(named("a.dotted.name", json!({"template": {"name": "a"}})).await, not_a_workspace_name);
    rejected(
        named("x23456789-123456789-123456789-123", json!({"template": {"name": "a"}})).await,
        not_a_workspace_name,
    );
    named("a.dotted.name", json!({"template": {"name": "a"}, "workspaceName": "dotted"}))
        .await
        .expect("workspaceName set");

    // Creation-time fields may be fixed while no workspace exists yet…
    env.create(
        "good",
        json!({"desiredState": "Stopped", "template": {"name": "docker-dev"}, "preset": {"name": "small"}}),
    )
    .await;
    env.wait_for_condition("good", READY, "True", Some("NotCreated"), LONG).await;
    for patch in [
        json!({"spec": {"parameters": [{"name": "cpu", "value": "4"}]}}),
        json!({"spec": {"preset": {"name": "large"}}}),
        json!({"spec": {"workspaceName": "good-renamed"}}),
        json!({"spec": {"workspaceName": null, "preset": null, "parameters": []}}),
    ] {
        raw.patch("good", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap_or_else(|error| panic!("{patch} before the workspace exists: {error}"));
    }
    // …and are fixed once it does.
    env.set_desired_state("good", "Running").await;
    env.wait_for("good", "with a workspace", LONG, |cws| cws.status.as_ref().is_some_and(|s| s.workspace.is_some()))
        .await;
    // A value may still be added, for a parameter a new template version adds…
    let added = json!({"spec": {"parameters": [{"name": "zone", "value": "eu"}]}});
    raw.patch("good", &PatchParams::default(), &Patch::Merge(&added)).await.expect("a value added after creation");
    for (patch, needle) in [
        (json!({"spec": {"template": {"name": "chat-dev"}}}), "spec.template is a creation-time choice"),
        (json!({"spec": {"preset": {"name": "large"}}}), "spec.preset is a creation-time choice"),
        // …but none changes or goes.
        (
            json!({"spec": {"parameters": [{"name": "zone", "value": "us"}]}}),
            "spec.parameters are creation-time values",
        ),
        (json!({"spec": {"parameters": []}}), "spec.parameters are creation-time values"),
        (json!({"spec": {"workspaceName": "other"}}), "spec.workspaceName is immutable"),
    ] {
        let result = raw.patch("good", &PatchParams::default(), &Patch::Merge(&patch)).await.map(|_| ());
        rejected(result, needle);
    }
    // desiredState stays free to change.
    env.api
        .patch("good", &PatchParams::default(), &Patch::Merge(&json!({"spec": {"desiredState": "Stopped"}})))
        .await
        .expect("desiredState is mutable");
}
