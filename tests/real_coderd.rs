//! The operator against a real coderd (the pinned release, built
//! by `make tools`) on PostgreSQL, with the echo provisioner and real
//! `coder agent` processes that the tests kill and freeze, and the real
//! kube-apiserver. The operator runs with the production defaults of
//! `chatworkspace-operator run` (intervals, Coder request rate); only the
//! recovery thresholds in the specs are short. Builds are counted in coderd
//! (`GET /workspaces/{id}/builds`), never in the operator.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chatworkspace_operator::coder::search;
use chatworkspace_operator::coder::{CoderClient, SessionToken};
use chatworkspace_operator::conditions::{self, AGENT_CONNECTED, AGENT_REACHABLE, DEGRADED, READY, RECOVERING};
use chatworkspace_operator::crd::ChatWorkspace;
use chatworkspace_operator::index::IndexSettings;
use k8s_openapi::api::core::v1::Secret;
use serde_json::{Value, json};
use support::Operated;
use support::coderd::{AgentSpec, Build, Coderd, Provisioner, Template, TemplateSpec, str_field, transitions, unique};
use support::process::parse_exposition;

/// Create-to-ready against coderd: builds take a second or two, agents
/// connect in about as long, the operator looks every 2 s while things move.
const CONVERGE: Duration = Duration::from_secs(90);

/// A namespace and an operator (running) that talks to the shared coderd
/// with the admin's token.
async fn operator(prefix: &str) -> (&'static Coderd, Operated) {
    let coderd = Coderd::shared();
    let mut env = Operated::without_operator(prefix, coderd.url(), &coderd.admin.token).await;
    env.start_operator();
    (coderd, env)
}

fn running_spec(workspace: &str, template: &Template, recovery: Value) -> Value {
    json!({
        "desiredState": "Running",
        "workspaceName": workspace,
        "template": {"name": template.name},
        "recovery": recovery,
    })
}

/// Recovery that acts within seconds once coderd reports the agent
/// disconnected. The probe timeout is not shorter: coderd's first dial of
/// an agent that has just connected can take several seconds (5.3 s seen).
fn fast_recovery() -> Value {
    json!({"mode": "Automatic", "disconnectedThreshold": "5s", "probeTimeout": "10s", "maxAttempts": 3, "window": "1h"})
}

async fn ready(env: &Operated, name: &str) -> ChatWorkspace {
    env.wait_for_condition(name, READY, "True", Some("Running"), CONVERGE).await
}

fn workspace_id(cws: &ChatWorkspace) -> String {
    cws.status.as_ref().and_then(|s| s.workspace.as_ref()).map(|w| w.id.clone()).expect("status.workspace")
}

fn agent_id(cws: &ChatWorkspace) -> String {
    cws.status.as_ref().and_then(|s| s.agent.as_ref()).map(|a| a.id.clone()).expect("status.agent")
}

fn condition_message(cws: &ChatWorkspace, type_: &str) -> String {
    cws.status
        .as_ref()
        .and_then(|s| conditions::find(&s.conditions, type_))
        .map(|c| c.message.clone())
        .unwrap_or_default()
}

/// No two builds of a workspace were ever active at once: each build was
/// created after the previous one's job had ended, and none is still active.
fn assert_sequential(builds: &[Build]) {
    for pair in builds.windows(2) {
        let ended = pair[0].job.completed_at.unwrap_or_else(|| panic!("build #{} never ended", pair[0].build_number));
        assert!(
            pair[1].created_at >= ended,
            "build #{} was created while build #{} was active: {builds:?}",
            pair[1].build_number,
            pair[0].build_number
        );
    }
    for build in builds {
        assert!(
            !matches!(build.job.status.as_str(), "pending" | "running" | "canceling"),
            "build #{} still {} when the test ended: {builds:?}",
            build.build_number,
            build.job.status
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_start_with_a_live_agent_stop_and_start_again() {
    let (coderd, env) = operator("real-lifecycle").await;
    let (template, spec, workspace) = coderd.agent_template("life").await;
    let provisioner: Provisioner = coderd.provisioner("admin", &workspace, spec.token());
    env.create("chat", running_spec(&workspace, &template, fast_recovery())).await;

    let first = ready(&env, "chat").await;
    let status = first.status.as_ref().unwrap();
    assert_eq!(status.agent.as_ref().unwrap().status, chatworkspace_operator::coder::AgentStatus::Connected);
    assert!(conditions::is_true(&status.conditions, AGENT_CONNECTED));
    let id = workspace_id(&first);
    let workspace_read = coderd.workspace("admin", &workspace).await.expect("the operator created the workspace");
    assert_eq!(workspace_read["id"], json!(id));
    assert_eq!(transitions(&coderd.builds(&id).await), ["start"], "creating starts the workspace once");

    env.set_desired_state("chat", "Stopped").await;
    env.wait_for_condition("chat", READY, "True", Some("Stopped"), CONVERGE).await;
    let builds = coderd.builds(&id).await;
    assert_eq!(transitions(&builds), ["start", "stop"], "exactly one stop build");
    assert_eq!(builds[1].status, "stopped");

    env.set_desired_state("chat", "Running").await;
    let again = ready(&env, "chat").await;
    let builds = coderd.builds(&id).await;
    assert_eq!(transitions(&builds), ["start", "stop", "start"]);
    assert_sequential(&builds);
    assert_ne!(agent_id(&again), agent_id(&first), "a new start build makes a new agent");
    assert_eq!(provisioner.agents_started(), 2, "one agent process per start build");
    env.wait_for_events("chat", &["WorkspaceCreated", "BuildRequested", "Running", "Stopped"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_agent_is_recovered_with_exactly_one_stop_and_one_start() {
    let (coderd, env) = operator("real-kill").await;
    let (template, spec, workspace) = coderd.agent_template("kill").await;
    let provisioner = coderd.provisioner("admin", &workspace, spec.token());
    env.create("chat", running_spec(&workspace, &template, fast_recovery())).await;
    let before = ready(&env, "chat").await;
    let id = workspace_id(&before);

    let killed_at = jiff::Timestamp::now();
    let signalled = Instant::now();
    provisioner.signal("KILL").expect("an agent runs");
    let seen = watch_agent_status(coderd, &workspace, "disconnected");
    env.wait_for_condition("chat", RECOVERING, "True", None, CONVERGE).await;
    let after = env.wait_for_condition("chat", RECOVERING, "False", Some("Recovered"), CONVERGE).await;
    assert!(conditions::is_true(&after.status.as_ref().unwrap().conditions, READY));
    let builds = coderd.builds(&id).await;
    assert_eq!(transitions(&builds), ["start", "stop", "start"], "exactly one stop and one start");
    assert_sequential(&builds);
    assert_ne!(agent_id(&after), agent_id(&before), "the rebuild made a new agent");

    let reaction = builds[1].created_at.duration_since(killed_at);
    let reaction_secs = reaction.as_secs_f64();
    // Not before the threshold, and within the design's bar.
    assert!(reaction_secs >= 5.0, "the recovery stopped the workspace before the threshold: {reaction_secs:.2}s");
    assert!(reaction_secs <= recovery_bar(), "the recovery started late: {reaction_secs:.2}s > {}s", recovery_bar());
    println!(
        "SIGKILL of the agent to the recovery's stop build: {:.2}s (disconnectedThreshold 5s); \
         to Ready again: {:.2}s",
        reaction.as_secs_f64(),
        signalled.elapsed().as_secs_f64()
    );
    println!("coderd reported the agent disconnected {:.2}s after SIGKILL", seen.await.unwrap().0.as_secs_f64());
    env.wait_for_events("chat", &["RecoveryStarted", "Recovered"]).await;
}

/// The design's bar from an agent's death (as coderd reports it) to the
/// recovery's stop build: disconnectedThreshold + probeTimeout + the index's
/// attention interval (its default) + 2 s.
fn recovery_bar() -> f64 {
    let attention = chatworkspace_operator::index::IndexSettings::default().attention_interval;
    5.0 + 10.0 + attention.as_secs_f64() + 2.0
}

/// How long after now coderd first reports the latest build's first agent
/// with `status`, and the agent as it was read then.
fn watch_agent_status(
    coderd: &'static Coderd,
    workspace: &str,
    status: &'static str,
) -> tokio::task::JoinHandle<(Duration, Value)> {
    let workspace = workspace.to_owned();
    let start = Instant::now();
    tokio::spawn(async move {
        loop {
            if let Some(read) = coderd.workspace("admin", &workspace).await {
                let agent = &read["latest_build"]["resources"][0]["agents"][0];
                if agent["status"] == status {
                    return (start.elapsed(), agent.clone());
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_never_connected_report_an_agent_that_never_connects_is_degraded_and_not_rebuilt() {
    let (coderd, env) = operator("real-never-report").await;
    let mut spec = TemplateSpec::one_agent();
    spec.agents[0].connection_timeout_seconds = 3;
    let template = coderd.template(&unique("never"), &spec).await;
    let workspace = unique("never");
    // No provisioner: no agent process ever runs.
    let mut recovery = fast_recovery();
    recovery["neverConnected"] = json!("Report");
    env.create("chat", running_spec(&workspace, &template, recovery)).await;
    let degraded = env.wait_for_condition("chat", DEGRADED, "True", Some("AgentNeverConnected"), CONVERGE).await;
    assert_eq!(
        degraded.status.as_ref().unwrap().agent.as_ref().unwrap().status,
        chatworkspace_operator::coder::AgentStatus::Timeout
    );
    let message = condition_message(&degraded, DEGRADED);
    assert!(message.contains("never connected"), "{message}");
    let id = workspace_id(&degraded);
    // Past the recovery threshold several times over: still the one start.
    assert_builds_stay(coderd, &id, &["start"], Duration::from_secs(15)).await;
}

/// A template whose agent coderd reports `timeout` `seconds` after its
/// start build unless it connects.
async fn timing_out_template(coderd: &Coderd, seconds: u32) -> (Template, TemplateSpec) {
    let mut spec = TemplateSpec::one_agent();
    spec.agents[0].connection_timeout_seconds = seconds;
    (coderd.template(&unique("never"), &spec).await, spec)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_never_connects_is_recovered_with_one_stop_and_one_start() {
    let (coderd, env) = operator("real-never").await;
    let (template, spec) = timing_out_template(coderd, 5).await;
    let workspace = unique("never");
    // The first start's agent runs with a wrong token, so it never
    // connects; the recovery's start runs a good one.
    let provisioner = coderd.provisioner_with_broken_starts("admin", &workspace, spec.token(), 1);
    env.create("chat", running_spec(&workspace, &template, fast_recovery())).await;
    let recovering = env.wait_for_condition("chat", RECOVERING, "True", None, CONVERGE).await;
    let message = condition_message(&recovering, RECOVERING);
    assert!(message.contains("never connected within its connection timeout (5s)"), "says why: {message}");
    let after = env.wait_for_condition("chat", RECOVERING, "False", Some("Recovered"), CONVERGE).await;
    assert!(conditions::is_true(&after.status.as_ref().unwrap().conditions, READY));
    let builds = coderd.builds(&workspace_id(&after)).await;
    assert_eq!(transitions(&builds), ["start", "stop", "start"], "exactly one stop and one start");
    assert_sequential(&builds);
    assert_eq!(provisioner.agents_started(), 2);
    // coderd makes the agent when the start's job completes.
    let timed_out = builds[0].job.completed_at.expect("the first start ended") + Duration::from_secs(5);
    println!(
        "agent timeout (first start's job end + 5 s) to the recovery's stop build: {:.2}s",
        builds[1].created_at.duration_since(timed_out).as_secs_f64()
    );
    assert_eq!(after.status.as_ref().unwrap().recovery.as_ref().unwrap().attempts, 1);
    env.wait_for_events("chat", &["RecoveryStarted", "Recovered"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_never_connects_again_is_recovered_within_the_budget_then_degraded() {
    let (coderd, env) = operator("real-never-again").await;
    let (template, _) = timing_out_template(coderd, 3).await;
    let workspace = unique("never");
    // No provisioner: no start's agent ever runs.
    let mut recovery = fast_recovery();
    recovery["maxAttempts"] = json!(2);
    env.create("chat", running_spec(&workspace, &template, recovery)).await;
    let degraded = env.wait_for_condition("chat", DEGRADED, "True", Some("AgentNeverConnected"), CONVERGE).await;
    assert_eq!(
        degraded.status.as_ref().unwrap().agent.as_ref().unwrap().status,
        chatworkspace_operator::coder::AgentStatus::Timeout
    );
    let message = condition_message(&degraded, DEGRADED);
    assert!(message.contains("after 2 automatic recoveries") && message.contains("template"), "{message}");
    let id = workspace_id(&degraded);
    let expected = ["start", "stop", "start", "stop", "start"];
    assert_sequential(&coderd.builds(&id).await);
    // Several connection timeouts later: no third recovery.
    assert_builds_stay(coderd, &id, &expected, Duration::from_secs(12)).await;
    env.wait_for_events("chat", &["RecoveryStarted", "RecoveryFailed"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_external_agent_that_disconnects_is_reported_and_never_rebuilt() {
    let (coderd, env) = operator("real-external").await;
    let mut spec = TemplateSpec::one_agent();
    spec.resource_type = Some("coder_external_agent");
    let template = coderd.template(&unique("external"), &spec).await;
    let workspace = unique("external");
    let provisioner = coderd.provisioner("admin", &workspace, spec.token());
    env.create("chat", running_spec(&workspace, &template, fast_recovery())).await;
    let before = ready(&env, "chat").await;
    let id = workspace_id(&before);
    let read = coderd.workspace("admin", &workspace).await.expect("the workspace");
    assert_eq!(read["latest_build"]["resources"][0]["type"], "coder_external_agent");

    provisioner.signal("KILL").expect("an agent runs");
    let degraded = env.wait_for_condition("chat", DEGRADED, "True", Some("ExternalAgentDisconnected"), CONVERGE).await;
    let status = degraded.status.as_ref().unwrap();
    let connected = conditions::find(&status.conditions, AGENT_CONNECTED).unwrap();
    assert_eq!((connected.status.as_str(), connected.reason.as_str()), ("False", "ExternalAgentDisconnected"));
    assert!(connected.message.contains("where it runs"), "{}", connected.message);
    // Past disconnectedThreshold and probeTimeout: never stopped and started.
    assert_builds_stay(coderd, &id, &["start"], Duration::from_secs(20)).await;
    let later = env.get("chat").await;
    assert!(!conditions::is_true(&later.status.as_ref().unwrap().conditions, RECOVERING));

    // Restarted where it runs (same token, no build): Ready again.
    let _restarted = coderd.start_agent(spec.token());
    ready(&env, "chat").await;
    assert_eq!(transitions(&coderd.builds(&id).await), ["start"]);
}

/// Fails as soon as the workspace's builds differ from `expected` within
/// `period`: for rules that say something must not happen.
async fn assert_builds_stay(coderd: &Coderd, workspace_id: &str, expected: &[&str], period: Duration) {
    let deadline = Instant::now() + period;
    while Instant::now() < deadline {
        let builds = coderd.builds(workspace_id).await;
        assert_eq!(transitions(&builds), expected, "unexpected builds: {builds:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_agent_hangs_the_probe_then_is_recovered_with_one_stop_and_one_start() {
    let (coderd, env) = operator("real-freeze").await;
    let (template, spec, workspace) = coderd.agent_template("freeze").await;
    let provisioner = coderd.provisioner("admin", &workspace, spec.token());
    env.create("chat", running_spec(&workspace, &template, fast_recovery())).await;
    let before = ready(&env, "chat").await;
    let id = workspace_id(&before);

    let frozen_at = jiff::Timestamp::now();
    provisioner.signal("STOP").expect("an agent runs");
    let seen = watch_agent_status(coderd, &workspace, "disconnected");
    // The connection stays open: coderd still sees the agent connected and
    // dials it, and the dial hangs.
    let probe = Instant::now();
    let hung = tokio::time::timeout(
        Duration::from_secs(5),
        coderd.admin_api().get::<Value>(&format!("/workspaceagents/{}/listening-ports", agent_id(&before))),
    )
    .await;
    assert!(hung.is_err(), "a probe of a frozen agent answered within 5 s: {hung:?}");
    println!("a probe of the frozen agent was still hanging after {:.1}s", probe.elapsed().as_secs_f64());

    let after = env.wait_for_condition("chat", RECOVERING, "False", Some("Recovered"), Duration::from_secs(180)).await;
    assert!(conditions::is_true(&after.status.as_ref().unwrap().conditions, READY));
    let builds = coderd.builds(&id).await;
    assert_eq!(transitions(&builds), ["start", "stop", "start"], "exactly one stop and one start");
    assert_sequential(&builds);
    assert_ne!(agent_id(&after), agent_id(&before));
    let (disconnected, agent) = seen.await.unwrap();
    let disconnected = disconnected.as_secs_f64();
    let stop = builds[1].created_at.duration_since(frozen_at).as_secs_f64();
    // Counted from the disconnect as coderd dates it.
    let disconnected_at: jiff::Timestamp = str_field(&agent, "disconnected_at").parse().expect("an RFC 3339 time");
    let since = builds[1].created_at.duration_since(disconnected_at).as_secs_f64();
    assert!(since >= 4.5, "the recovery stopped {since:.2}s after the disconnect, before the 5 s threshold");
    assert!(since <= recovery_bar(), "the recovery started {since:.2}s after the disconnect, late");
    println!(
        "SIGSTOP of the agent: coderd reported it disconnected after {disconnected:.2}s; the recovery's stop build \
         came {stop:.2}s after the signal, {since:.2}s after the disconnect (disconnectedThreshold 5s)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_frozen_for_less_than_the_threshold_builds_nothing() {
    let (coderd, env) = operator("real-blip").await;
    let (template, spec, workspace) = coderd.agent_template("blip").await;
    let provisioner = coderd.provisioner("admin", &workspace, spec.token());
    // The default threshold: coderd takes 22-25 s to see a frozen agent
    // disconnected, and the operator up to one attention interval more.
    let recovery = json!({"mode": "Automatic", "disconnectedThreshold": "90s", "probeTimeout": "10s"});
    env.create("chat", running_spec(&workspace, &template, recovery)).await;
    let before = ready(&env, "chat").await;
    let id = workspace_id(&before);

    let frozen = Instant::now();
    provisioner.signal("STOP").expect("an agent runs");
    // The operator sees the agent disconnected (and would rebuild now
    // without the threshold)...
    env.wait_for_condition("chat", AGENT_CONNECTED, "False", Some("Disconnected"), Duration::from_secs(120)).await;
    let blip = frozen.elapsed();
    // ...and it comes back before the threshold.
    provisioner.signal("CONT").expect("the agent is still there");
    ready(&env, "chat").await;
    println!("the agent was frozen for {:.1}s and is back", blip.as_secs_f64());
    assert!(blip < Duration::from_secs(90), "the freeze outlasted the threshold: {blip:?}");
    assert_builds_stay(coderd, &id, &["start"], Duration::from_secs(10)).await;
    assert_eq!(provisioner.agents_started(), 1, "the same agent process came back");
}

/// A template (no agent) with two rich parameters and a preset, in coderd's
/// default (dynamic) parameter flow.
async fn parameter_template(coderd: &Coderd) -> Template {
    let spec = TemplateSpec {
        parameters: vec![
            json!({"name": "size", "type": "string", "defaultValue": "small", "mutable": true,
                   "options": [{"name": "Small", "value": "small"}, {"name": "Large", "value": "large"}]}),
            json!({"name": "cpus", "type": "number", "defaultValue": "2", "mutable": true,
                   "validationMin": 1, "validationMax": 8}),
        ],
        presets: vec![json!({"name": "large", "description": "Four CPUs",
                             "parameters": [{"name": "size", "value": "large"}, {"name": "cpus", "value": "4"}]})],
        ..TemplateSpec::default()
    };
    coderd.template(&unique("params"), &spec).await
}

/// The parameters of the first build of the workspace of `cws`, once the
/// operator has created it.
async fn first_build_parameters(
    coderd: &Coderd,
    env: &Operated,
    name: &str,
) -> std::collections::BTreeMap<String, String> {
    let created =
        env.wait_for(name, "created", CONVERGE, |c| c.status.as_ref().is_some_and(|s| s.workspace.is_some())).await;
    let builds = coderd.builds(&workspace_id(&created)).await;
    coderd.build_parameters(&builds[0].id).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presets_and_parameters_reach_the_first_build_and_bad_ones_are_reported() {
    let (coderd, env) = operator("real-params").await;
    let template = parameter_template(coderd).await;
    let spec = |workspace: &str, extra: Value| {
        let mut spec =
            json!({"desiredState": "Running", "workspaceName": workspace, "template": {"name": template.name}});
        spec.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        spec
    };

    // A preset: the build's parameters are the preset's.
    env.create("preset", spec(&unique("preset"), json!({"preset": {"name": "large"}}))).await;
    let parameters = first_build_parameters(coderd, &env, "preset").await;
    assert_eq!(parameters.get("size").map(String::as_str), Some("large"), "{parameters:?}");
    assert_eq!(parameters.get("cpus").map(String::as_str), Some("4"), "{parameters:?}");
    let cws = env.get("preset").await;
    let presets = &cws.status.as_ref().unwrap().template.as_ref().expect("status.template").presets;
    assert_eq!(presets.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["large"]);
    assert_eq!(presets[0].description.as_deref(), Some("Four CPUs"));

    // Explicit parameters, the others at their defaults.
    env.create("explicit", spec(&unique("explicit"), json!({"parameters": [{"name": "cpus", "value": "3"}]}))).await;
    let parameters = first_build_parameters(coderd, &env, "explicit").await;
    assert_eq!(parameters.get("cpus").map(String::as_str), Some("3"), "{parameters:?}");
    assert_eq!(parameters.get("size").map(String::as_str), Some("small"), "{parameters:?}");

    // A value coderd's validation refuses: reported field by field, no workspace.
    let invalid = unique("invalid");
    env.create("invalid", spec(&invalid, json!({"parameters": [{"name": "cpus", "value": "99"}]}))).await;
    let degraded = env.wait_for_condition("invalid", DEGRADED, "True", Some("ValidationFailed"), CONVERGE).await;
    let message = condition_message(&degraded, DEGRADED);
    assert!(message.contains("cpus") && message.contains("maximum 8"), "{message}");
    assert!(coderd.workspace("admin", &invalid).await.is_none(), "no workspace was created");

    // A preset the template does not have: reported with the ones it has.
    let unknown = unique("unknown");
    env.create("unknown", spec(&unknown, json!({"preset": {"name": "huge"}}))).await;
    let degraded = env.wait_for_condition("unknown", DEGRADED, "True", Some("PresetNotFound"), CONVERGE).await;
    let message = condition_message(&degraded, DEGRADED);
    assert!(message.contains("huge") && message.contains("large"), "{message}");
    assert!(coderd.workspace("admin", &unknown).await.is_none(), "no workspace was created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_start_is_reported_with_the_jobs_error_and_not_retried() {
    let (coderd, env) = operator("real-failstart").await;
    let spec = TemplateSpec {
        fail_start: Some("quota exceeded: no room for another workspace".into()),
        ..TemplateSpec::one_agent()
    };
    let template = coderd.template(&unique("fail"), &spec).await;
    env.create("chat", running_spec(&unique("fail"), &template, fast_recovery())).await;
    let degraded = env.wait_for_condition("chat", DEGRADED, "True", Some("StartFailed"), CONVERGE).await;
    let message = condition_message(&degraded, DEGRADED);
    assert!(message.contains("quota exceeded: no room for another workspace"), "{message}");
    let build = degraded.status.as_ref().unwrap().latest_build.as_ref().unwrap();
    assert_eq!((build.status.as_str(), build.job_status.as_str()), ("failed", "failed"));
    assert!(build.error.as_deref().unwrap_or_default().contains("quota exceeded"), "{build:?}");
    assert_builds_stay(coderd, &workspace_id(&degraded), &["start"], Duration::from_secs(10)).await;
}

/// The operator's Coder requests so far that got `code`, from its metrics.
fn requests_with_code(env: &Operated, code: &str) -> f64 {
    let exposition = parse_exposition(&env.metrics.render()).expect("the operator's metrics parse");
    exposition.value("chatworkspace_coder_requests_total", &[("code", code)])
}

/// The status and Events of `name` as one text, to look for secrets in.
async fn everything_shown(env: &Operated, name: &str) -> String {
    let cws = env.get(name).await;
    format!("{}\n{:?}", serde_json::to_string(&cws.status).unwrap(), env.events(name).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_members_token_on_another_users_workspace_is_reported_not_retried_in_a_storm() {
    let (coderd, env) = operator("real-forbidden").await;
    let template = coderd.template(&unique("forbid"), &TemplateSpec::default()).await;
    // The admin's workspace, which the member may neither see nor build.
    let workspace = unique("forbid");
    let _: Value = coderd
        .admin_api()
        .post("/users/admin/workspaces", &json!({"name": workspace, "template_id": template.id}))
        .await
        .expect("create the admin's workspace");
    let member_token = coderd.new_token(&coderd.member, "forbidden").await;
    // coderd hides what a user may not read: the member's reads of the admin
    // and of the admin's workspace are 404s ("not found or you do not have
    // access"), not 403s.
    let member = coderd.api_as(&member_token);
    let read = member.get::<Value>(&format!("/users/admin/workspace/{workspace}")).await;
    assert_eq!(read.err().map(|e| e.status), Some(404));
    let read = member.get::<Value>("/users/admin").await;
    assert_eq!(read.err().map(|e| e.status), Some(404));
    env.credentials_secret("member", coderd.url(), &member_token).await;
    env.create(
        "chat",
        json!({"desiredState": "Running", "owner": "admin", "workspaceName": workspace,
               "template": {"name": template.name}, "credentialsRef": {"name": "member"}}),
    )
    .await;

    let degraded = env.wait_for_condition("chat", DEGRADED, "True", None, CONVERGE).await;
    let condition = conditions::find(&degraded.status.as_ref().unwrap().conditions, DEGRADED).unwrap().clone();
    println!("a member's token on the admin's workspace: {} — {}", condition.reason, condition.message);
    // Coder hides the owner from the member's token (404) or refuses the
    // request (403): either way reported, with the access named.
    assert!(["Forbidden", "NotFound"].contains(&condition.reason.as_str()), "{condition:?}");
    assert!(condition.message.contains("access") || condition.reason == "Forbidden", "{condition:?}");
    let refused_now = || requests_with_code(&env, "403") + requests_with_code(&env, "404");
    let refused = refused_now();
    assert!(refused >= 1.0);
    // The operator waits for a change instead of asking again and again.
    let calm = Instant::now();
    while calm.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(refused_now() <= refused + 1.0, "refused requests repeated in a storm");
    }
    assert_eq!(
        transitions(&coderd.builds(&str_field(&coderd.workspace("admin", &workspace).await.unwrap(), "id")).await),
        ["start"]
    );
    assert!(!everything_shown(&env, "chat").await.contains(&member_token), "the token appears in status or Events");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_or_bad_token_is_reported_without_showing_it() {
    let (coderd, env) = operator("real-revoked").await;
    let template = coderd.template(&unique("revoked"), &TemplateSpec::default()).await;
    let revoked = coderd.new_token(&coderd.member, "revoked").await;
    coderd.revoke_token(&coderd.member, &revoked).await;
    // Well-formed (`<id>-<secret>`) but never issued.
    let bad = format!("{}-{}", &uuid::Uuid::new_v4().simple().to_string()[..10], uuid::Uuid::new_v4().simple());
    for (name, token) in [("revoked", &revoked), ("bad", &bad)] {
        env.credentials_secret(name, coderd.url(), token).await;
        let workspace = unique(name);
        env.create(
            name,
            json!({"desiredState": "Running", "workspaceName": workspace, "template": {"name": template.name},
                   "credentialsRef": {"name": name}}),
        )
        .await;
        let degraded = env.wait_for_condition(name, DEGRADED, "True", Some("Unauthorized"), CONVERGE).await;
        let message = condition_message(&degraded, DEGRADED);
        assert!(message.contains("401"), "{name}: {message}");
        let shown = everything_shown(&env, name).await;
        let secret_part = token.split_once('-').unwrap().1;
        assert!(!shown.contains(secret_part), "the {name} token appears in status or Events: {shown}");
        assert!(coderd.workspace("member", &workspace).await.is_none());
    }
    let refused = requests_with_code(&env, "401");
    let calm = Instant::now();
    while calm.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(requests_with_code(&env, "401") <= refused + 2.0, "refused requests repeated in a storm");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_resources_at_once_never_make_coderd_answer_429() {
    const RESOURCES: usize = 20;
    let (coderd, mut env) = operator("real-twenty").await;
    // The production default (`chatworkspace-operator run`): 5 requests per
    // second, bursts of 10.
    env.stop_operator().await;
    env.rate_limit = Some(std::sync::Arc::new(chatworkspace_operator::coder::RateLimit::new(5.0, 10)));
    env.start_operator();
    let template = coderd.template(&unique("twenty"), &TemplateSpec::default()).await;
    let started = Instant::now();
    let names: Vec<String> = (0..RESOURCES).map(|i| format!("chat-{i}")).collect();
    for name in &names {
        env.create(name, running_spec(&unique("twenty"), &template, fast_recovery())).await;
    }
    for name in &names {
        env.wait_for(name, "running", Duration::from_secs(180), |c| {
            c.status
                .as_ref()
                .and_then(|s| s.latest_build.as_ref())
                .is_some_and(|b| b.status == chatworkspace_operator::coder::WorkspaceStatus::Running)
        })
        .await;
    }
    let running = started.elapsed();
    // Rapid flips of every resource: the last one wins, builds never overlap.
    for state in ["Stopped", "Running", "Stopped"] {
        for name in &names {
            env.set_desired_state(name, state).await;
        }
    }
    let mut ids = Vec::new();
    for name in &names {
        let stopped = env.wait_for_condition(name, READY, "True", Some("Stopped"), Duration::from_secs(180)).await;
        ids.push(workspace_id(&stopped));
    }
    let elapsed = started.elapsed();
    for id in &ids {
        let builds = coderd.builds(id).await;
        assert_sequential(&builds);
        assert_eq!(builds.last().map(|b| b.status.as_str()), Some("stopped"), "{builds:?}");
    }

    let exposition = parse_exposition(&env.metrics.render()).unwrap();
    let total = exposition.value("chatworkspace_coder_requests_total", &[]);
    let busiest = exposition
        .samples
        .iter()
        .filter(|s| s.name == "chatworkspace_coder_requests_total")
        .fold(BTreeMap::<String, f64>::new(), |mut routes, s| {
            *routes.entry(s.labels["endpoint"].clone()).or_default() += s.value;
            routes
        })
        .into_iter()
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap();
    println!(
        "{RESOURCES} resources: all running after {:.1}s, all stopped after three flips at {:.1}s; \
         {total} Coder requests, the most on one route {} ({})",
        running.as_secs_f64(),
        elapsed.as_secs_f64(),
        busiest.1,
        busiest.0
    );
    assert_eq!(requests_with_code(&env, "429"), 0.0, "coderd rate-limited the operator");
    assert_eq!(requests_with_code(&env, "409"), 0.0, "a build was requested while another was active");
    // coderd allows 512 requests per minute per user and path; a route's
    // requests (over all its paths) stay under 60 % of that.
    let per_minute = busiest.1 / elapsed.as_secs_f64().max(60.0) * 60.0;
    assert!(per_minute <= 0.6 * 512.0, "{per_minute:.0} requests per minute to {}", busiest.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agpl_coderd_never_requires_the_active_version_so_a_start_keeps_the_workspaces_version() {
    let (coderd, env) = operator("real-active").await;
    // Asked for, but the AGPL build's access-control store ignores it (a
    // premium feature): the template reports false.
    let spec = TemplateSpec { require_active_version: true, ..TemplateSpec::default() };
    let template = coderd.template(&unique("active"), &spec).await;
    assert!(!template.require_active_version, "AGPL coderd kept require_active_version: {template:?}");
    let first_version = template.active_version_id.clone();

    env.create("chat", running_spec(&unique("active"), &template, fast_recovery())).await;
    let created = env
        .wait_for("chat", "running", CONVERGE, |c| {
            c.status
                .as_ref()
                .and_then(|s| s.latest_build.as_ref())
                .is_some_and(|b| b.status == chatworkspace_operator::coder::WorkspaceStatus::Running)
        })
        .await;
    let id = workspace_id(&created);
    assert_eq!(created.status.as_ref().unwrap().template.as_ref().map(|t| t.require_active_version), Some(false));

    // A newer version, with a parameter the old one lacks, becomes active.
    let newer = TemplateSpec {
        parameters: vec![json!({"name": "region", "type": "string", "defaultValue": "eu", "mutable": true})],
        ..TemplateSpec::default()
    };
    let second_version = coderd.add_version(&template, &newer, true).await;
    env.set_desired_state("chat", "Stopped").await;
    env.wait_for_condition("chat", READY, "True", Some("Stopped"), CONVERGE).await;
    env.set_desired_state("chat", "Running").await;
    env.wait_for("chat", "running again", CONVERGE, |c| {
        c.status
            .as_ref()
            .and_then(|s| s.latest_build.as_ref())
            .is_some_and(|b| b.status == chatworkspace_operator::coder::WorkspaceStatus::Running && b.number == 3)
    })
    .await;
    let builds = coderd.builds(&id).await;
    assert_eq!(transitions(&builds), ["start", "stop", "start"]);
    let versions: Vec<&str> = builds.iter().map(|b| b.template_version_id.as_str()).collect();
    assert_eq!(
        versions,
        [first_version.as_str(); 3],
        "the start stayed on the workspace's version, not {second_version}"
    );
    let workspace = coderd.workspace("admin", &str_field(&created_workspace(&created), "name")).await.unwrap();
    assert_eq!(workspace["outdated"], json!(true), "coderd reports the workspace outdated");
}

fn created_workspace(cws: &ChatWorkspace) -> Value {
    serde_json::to_value(cws.status.as_ref().and_then(|s| s.workspace.as_ref()).expect("status.workspace")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workspace_made_outside_is_adopted_only_with_consent_and_each_deletion_policy_is_applied() {
    let (coderd, env) = operator("real-adopt").await;
    let template = coderd.template(&unique("adopt"), &TemplateSpec::default()).await;
    let api = coderd.admin_api();
    let outside = |name: String| {
        let api = api.clone();
        let template_id = template.id.clone();
        async move {
            let created: Value = api
                .post("/users/admin/workspaces", &json!({"name": name, "template_id": template_id}))
                .await
                .expect("create a workspace outside the operator");
            str_field(&created, "id")
        }
    };

    // Without consent a workspace made outside is not driven.
    let refused = unique("refused");
    let refused_id = outside(refused.clone()).await;
    env.create(
        "chat-refused",
        json!({"desiredState": "Stopped", "workspaceName": refused, "template": {"name": template.name}}),
    )
    .await;
    env.wait_for_condition("chat-refused", DEGRADED, "True", Some("AdoptionNotConsented"), CONVERGE).await;
    assert_builds_stay(coderd, &refused_id, &["start"], Duration::from_secs(5)).await;

    // With it, the existing (running) workspace is driven, not duplicated.
    let mut workspaces = BTreeMap::new();
    for policy in ["Stop", "Delete", "Orphan"] {
        let name = unique(&policy.to_lowercase());
        let id = outside(name.clone()).await;
        let resource = format!("chat-{}", policy.to_lowercase());
        env.create(
            &resource,
            json!({"desiredState": "Running", "workspaceName": name, "template": {"name": template.name},
                   "deletionPolicy": policy, "adopt": true}),
        )
        .await;
        // The template has no agent: running is as far as it gets.
        let adopted = env
            .wait_for(&resource, "running", CONVERGE, |c| {
                c.status
                    .as_ref()
                    .and_then(|s| s.latest_build.as_ref())
                    .is_some_and(|b| b.status == chatworkspace_operator::coder::WorkspaceStatus::Running)
            })
            .await;
        assert_eq!(workspace_id(&adopted), id, "the workspace made outside was adopted");
        assert_eq!(transitions(&coderd.builds(&id).await), ["start"], "and needed no build");
        workspaces.insert(policy, (resource, name, id));
    }

    for (resource, _, _) in workspaces.values() {
        env.delete(resource).await;
    }
    for (policy, (resource, name, id)) in &workspaces {
        env.wait_gone(resource, CONVERGE).await;
        let builds = coderd.builds(id).await;
        assert_sequential(&builds);
        let expected: &[&str] = match *policy {
            "Stop" => &["start", "stop"],
            "Delete" => &["start", "delete"],
            _ => &["start"],
        };
        assert_eq!(transitions(&builds), expected, "deletionPolicy {policy}");
        let last = builds.last().unwrap();
        assert_eq!(last.job.status, "succeeded", "deletionPolicy {policy}: {last:?}");
        assert_eq!(coderd.workspace("admin", name).await.is_none(), *policy == "Delete", "deletionPolicy {policy}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_root_agents_the_coderd_chat_one_counts() {
    let (coderd, env) = operator("real-chatagent").await;
    let spec = TemplateSpec {
        agents: vec![AgentSpec::new("dev"), AgentSpec::new("main-coderd-chat")],
        ..TemplateSpec::default()
    };
    let template = coderd.template(&unique("chatagent"), &spec).await;
    let workspace = unique("chatagent");
    // Only the chat agent runs; `dev` never connects.
    let provisioner = coderd.provisioner("admin", &workspace, &spec.agents[1].token);
    env.create("chat", running_spec(&workspace, &template, fast_recovery())).await;
    let ready = ready(&env, "chat").await;
    let agent = ready.status.as_ref().unwrap().agent.clone().expect("status.agent");
    assert_eq!((agent.name.as_str(), agent.status.as_str()), ("main-coderd-chat", "connected"));

    // Its death is what the recovery acts on.
    provisioner.signal("KILL").expect("the chat agent runs");
    let after = env.wait_for_condition("chat", RECOVERING, "False", Some("Recovered"), CONVERGE).await;
    assert_eq!(after.status.as_ref().unwrap().agent.as_ref().unwrap().name, "main-coderd-chat");
    assert_eq!(transitions(&coderd.builds(&workspace_id(&after)).await), ["start", "stop", "start"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operators_probe_of_a_frozen_agent_times_out_before_coderd_sees_it_disconnected() {
    let coderd = Coderd::shared();
    let mut env = Operated::without_operator("real-probehang", coderd.url(), &coderd.admin.token).await;
    // Probe healthy agents every 2 s instead of every 5 min, so a probe
    // meets the frozen agent while coderd still sees it connected.
    env.tweak = Some(|settings| settings.index.probe_interval = Duration::from_secs(2));
    env.start_operator();
    let (template, spec, workspace) = coderd.agent_template("probehang").await;
    let provisioner = coderd.provisioner("admin", &workspace, spec.token());
    let recovery = json!({"mode": "Automatic", "disconnectedThreshold": "5s", "probeTimeout": "3s"});
    env.create("chat", running_spec(&workspace, &template, recovery)).await;
    let id = workspace_id(&ready(&env, "chat").await);

    provisioner.signal("STOP").expect("an agent runs");
    // The probe hangs and the operator's timeout ends it; coderd still
    // reports the agent connected, so this is a dial timeout, not a death.
    let hung = env
        .wait_for("chat", "probe timed out while connected", Duration::from_secs(60), |c| {
            let conditions = c.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
            conditions::find(conditions, AGENT_REACHABLE).is_some_and(|r| r.reason == "ProbeTimedOut")
                && conditions::is_true(conditions, AGENT_CONNECTED)
        })
        .await;
    println!("while connected: {}", condition_message(&hung, READY));
    // Retried once, then reported for a person: still no build.
    let degraded = env.wait_for_condition("chat", DEGRADED, "True", Some("DialTimeout"), Duration::from_secs(60)).await;
    assert!(conditions::is_true(&degraded.status.as_ref().unwrap().conditions, AGENT_CONNECTED));
    println!("then: {}", condition_message(&degraded, DEGRADED));
    assert_eq!(transitions(&coderd.builds(&id).await), ["start"], "no build while coderd sees the agent connected");

    // Once coderd marks it disconnected, the recovery follows.
    let after = env.wait_for_condition("chat", RECOVERING, "False", Some("Recovered"), Duration::from_secs(180)).await;
    assert!(conditions::is_true(&after.status.as_ref().unwrap().conditions, READY));
    let builds = coderd.builds(&id).await;
    assert_eq!(transitions(&builds), ["start", "stop", "start"]);
    assert_sequential(&builds);
}

/// A resource on an agentless template, once its first build is running.
async fn running_workspace(coderd: &Coderd, env: &Operated, name: &str, extra: Value) -> (ChatWorkspace, String) {
    let template = coderd.template(&unique(name), &TemplateSpec::default()).await;
    let mut spec = running_spec(&unique(name), &template, fast_recovery());
    spec.as_object_mut().unwrap().extend(extra.as_object().cloned().unwrap_or_default());
    env.create(name, spec).await;
    let running = env
        .wait_for(name, "running", CONVERGE, |c| {
            c.status
                .as_ref()
                .and_then(|s| s.latest_build.as_ref())
                .is_some_and(|b| b.status == chatworkspace_operator::coder::WorkspaceStatus::Running)
        })
        .await;
    let id = workspace_id(&running);
    (running, id)
}

/// A stop made through coderd's API (what a person's Stop does)
/// while Running is desired is respected; a new start-request annotation
/// starts it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_made_through_coderds_api_is_respected_until_a_start_is_asked_for() {
    let (coderd, env) = operator("real-outside").await;
    let (_, id) = running_workspace(coderd, &env, "outside", json!({})).await;

    let _: Value = coderd
        .admin_api()
        .post(&format!("/workspaces/{id}/builds"), &json!({"transition": "stop"}))
        .await
        .expect("a stop through coderd's API");
    let stopped = env.wait_for_condition("outside", READY, "False", Some("StoppedOutside"), CONVERGE).await;
    let build = stopped.status.as_ref().and_then(|s| s.latest_build.clone()).unwrap();
    assert_eq!(
        (
            build.reason.as_ref().map(chatworkspace_operator::coder::WorkspaceBuildReason::as_str),
            build.initiator.as_deref()
        ),
        (Some("initiator"), Some("admin")),
        "{build:?}"
    );
    let message = condition_message(&stopped, READY);
    assert!(message.contains("by admin") && message.contains("start-requested-at"), "{message}");
    // The operator's production intervals pass several times: no restart.
    assert_builds_stay(coderd, &id, &["start", "stop"], Duration::from_secs(20)).await;

    let patch = json!({"metadata": {"annotations": {"chat.coder.com/start-requested-at": "2026-12-01T12:00:00Z"}}});
    env.api
        .patch("outside", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch))
        .await
        .expect("ask for a start");
    env.wait_for("outside", "running again", CONVERGE, |c| {
        c.status
            .as_ref()
            .and_then(|s| s.latest_build.as_ref())
            .is_some_and(|b| b.status == chatworkspace_operator::coder::WorkspaceStatus::Running && b.number == 3)
    })
    .await;
    // One start for one new value.
    assert_builds_stay(coderd, &id, &["start", "stop", "start"], Duration::from_secs(10)).await;
    assert_sequential(&coderd.builds(&id).await);
    let events = env.wait_for_events("outside", &["StartRequested"]).await;
    assert!(events.iter().any(|(r, n)| r == "StartRequested" && n.contains("initiator")), "{events:?}");
}

/// A workspace deleted through coderd's API is reported and, by
/// default, created again; with `deletedInCoder: Leave` it stays deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workspace_deleted_through_coderds_api_is_reported_and_created_again_unless_left() {
    let (coderd, env) = operator("real-deleted").await;
    let (first, id) = running_workspace(coderd, &env, "recreate", json!({})).await;
    let (left, left_id) = running_workspace(coderd, &env, "leave", json!({"deletedInCoder": "Leave"})).await;
    for id in [&id, &left_id] {
        let _: Value = coderd
            .admin_api()
            .post(&format!("/workspaces/{id}/builds"), &json!({"transition": "delete"}))
            .await
            .expect("a delete through coderd's API");
    }

    let again = env
        .wait_for("recreate", "on a new workspace", CONVERGE, |c| {
            c.status.as_ref().and_then(|s| s.workspace.as_ref()).is_some_and(|w| w.id != id)
                && c.status
                    .as_ref()
                    .and_then(|s| s.latest_build.as_ref())
                    .is_some_and(|b| b.status == chatworkspace_operator::coder::WorkspaceStatus::Running)
        })
        .await;
    let name = str_field(&created_workspace(&first), "name");
    let now = coderd.workspace("admin", &name).await.expect("a workspace of that name again");
    assert_eq!(str_field(&now, "id"), workspace_id(&again), "the resource follows the new workspace");
    let events = env.wait_for_events("recreate", &["WorkspaceDeletedInCoder"]).await;
    let note = &events.iter().find(|(r, _)| r == "WorkspaceDeletedInCoder").unwrap().1;
    assert!(note.contains(&id) && note.contains("creating it again"), "{note}");

    let reported = env.wait_for_condition("leave", READY, "False", Some("DeletedInCoder"), CONVERGE).await;
    assert!(condition_message(&reported, READY).contains(&left_id), "{}", condition_message(&reported, READY));
    let left_name = str_field(&created_workspace(&left), "name");
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        assert!(coderd.workspace("admin", &left_name).await.is_none(), "Leave created a workspace again");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A deletion whose credentials Secret is gone leaves the
/// workspace in coderd after --cleanup-timeout, instead of holding the
/// namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deletion_whose_credentials_are_gone_leaves_the_workspace_in_coderd_after_the_timeout() {
    let coderd = Coderd::shared();
    let mut env = Operated::without_operator("real-nocreds", coderd.url(), &coderd.admin.token).await;
    env.settings.cleanup_timeout = Duration::from_secs(5);
    env.start_operator();
    env.credentials_secret("team-coder", coderd.url(), &coderd.admin.token).await;
    let (cws, id) = running_workspace(coderd, &env, "nocreds", json!({"credentialsRef": {"name": "team-coder"}})).await;
    assert_eq!(transitions(&coderd.builds(&id).await), ["start"]);

    kube::Api::<Secret>::namespaced(env.client.clone(), &env.namespace)
        .delete("team-coder", &Default::default())
        .await
        .expect("delete the Secret");
    env.delete("nocreds").await;
    env.wait_gone("nocreds", CONVERGE).await;
    let events = env.wait_for_events("nocreds", &["DeletionBlocked", "WorkspaceOrphaned"]).await;
    let note = &events.iter().find(|(r, _)| r == "WorkspaceOrphaned").unwrap().1;
    assert!(note.contains(&id) && note.contains("team-coder"), "{note}");
    assert!(!note.contains(&coderd.admin.token), "never the token");
    let name = str_field(&created_workspace(&cws), "name");
    assert!(coderd.workspace("admin", &name).await.is_some(), "the workspace is left in coderd");
    assert_builds_stay(coderd, &id, &["start"], Duration::from_secs(3)).await;
}

/// What coderd v2.36.1 answers to a start onto a version that adds
/// a required parameter without a default, in both parameter flows: the
/// shapes the operator (and the simulator) rely on. AGPL coderd ignores
/// require_active_version, so the operator itself never moves a workspace
/// to a new version at start here; the request is made directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coderd_refuses_a_start_onto_a_version_with_a_new_required_parameter_naming_it() {
    use chatworkspace_operator::coder::{CoderClient, CoderError, CreateWorkspaceBuildRequest, SessionToken};
    use chatworkspace_operator::coder::{ParameterValue, WorkspaceTransition};
    let coderd = Coderd::shared();
    let client =
        CoderClient::new(coderd.url(), SessionToken::new(&coderd.admin.token).unwrap(), Duration::from_secs(30))
            .unwrap();
    let zone = json!({"name": "zone", "type": "string", "required": true, "mutable": true});
    for classic in [false, true] {
        let plain = TemplateSpec { classic_parameter_flow: classic, ..TemplateSpec::default() };
        let template = coderd.template(&unique("newparam"), &plain).await;
        let newer =
            TemplateSpec { parameters: vec![zone.clone()], classic_parameter_flow: classic, ..TemplateSpec::default() };
        let created: Value = coderd
            .admin_api()
            .post(
                "/users/admin/workspaces",
                &json!({"name": unique("newparam"), "template_version_id": template.active_version_id}),
            )
            .await
            .expect("a workspace on the first version");
        let id = str_field(&created, "id");
        let second = coderd.add_version(&template, &newer, true).await;
        wait_for_job(coderd, &id).await;
        let stop = CreateWorkspaceBuildRequest::new(WorkspaceTransition::Stop);
        client.create_build(&id, &stop).await.expect("a stop");
        wait_for_job(coderd, &id).await;

        let start = CreateWorkspaceBuildRequest {
            template_version_id: Some(second.clone()),
            ..CreateWorkspaceBuildRequest::new(WorkspaceTransition::Start)
        };
        let refused = client.create_build(&id, &start).await.expect_err("coderd refuses the start");
        match (&refused, classic) {
            (CoderError::Validation { validations, .. }, false) => {
                assert_eq!(validations.len(), 1, "{refused}");
                assert_eq!(validations[0].field, "zone", "{refused}");
                assert!(validations[0].detail.contains("Required parameter not provided"), "{refused}");
            }
            (CoderError::BadRequest { status: 400, message, detail }, true) => {
                assert_eq!(message, "Unable to validate parameter \"zone\"", "{refused}");
                assert!(detail.contains("is required but not provided"), "{refused}");
            }
            _ => panic!("classic flow {classic}: unexpected answer {refused:?}"),
        }
        // The new value alone is enough.
        let start = CreateWorkspaceBuildRequest {
            rich_parameter_values: vec![ParameterValue { name: "zone".into(), value: "z1".into() }],
            ..start
        };
        client.create_build(&id, &start).await.expect("the start with the new value");
        wait_for_job(coderd, &id).await;
        let builds = coderd.builds(&id).await;
        assert_eq!(builds.last().unwrap().job.status, "succeeded", "{builds:?}");
        assert_eq!(
            coderd.build_parameters(&builds.last().unwrap().id).await.get("zone").map(String::as_str),
            Some("z1")
        );
    }
}

/// Waits until the latest build of `workspace_id` has ended.
async fn wait_for_job(coderd: &Coderd, workspace_id: &str) {
    let deadline = Instant::now() + CONVERGE;
    loop {
        let builds = coderd.builds(workspace_id).await;
        if builds.last().is_some_and(|b| !matches!(b.job.status.as_str(), "pending" | "running" | "canceling")) {
            return;
        }
        assert!(Instant::now() < deadline, "the build never ended: {builds:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The searches the index sends across owners: with an Owner's token, a
/// search without `owner:` answers for every user, an `id:` list as long as
/// a page (what one request of the poller carries) is accepted and filters,
/// also with `status:running` for a count; and the user directory lists
/// every user with their id, a page at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn searches_across_owners_running_counts_by_id_and_the_user_directory_answer_as_the_index_reads_them() {
    let coderd = Coderd::shared();
    let template = coderd.template(&unique("owners"), &TemplateSpec::default()).await;
    let mut ids = Vec::new();
    for user in [&coderd.admin, &coderd.member] {
        let created: Value = coderd
            .admin_api()
            .post(
                &format!("/users/{}/workspaces", user.username),
                &json!({"name": unique("owners"), "template_id": template.id}),
            )
            .await
            .expect("a workspace");
        ids.push(str_field(&created, "id"));
    }
    let client = CoderClient::new(
        coderd.url(),
        SessionToken::new(coderd.admin.token.clone()).expect("a token"),
        Duration::from_secs(30),
    )
    .expect("a client");
    let page_size = IndexSettings::default().page_size;

    // Without `owner:`, paged as the poller pages it.
    let mut owners = BTreeMap::new();
    let mut offset = 0;
    loop {
        let page = client.list_workspaces("", page_size, offset).await.expect("a search without owner:");
        let received = u32::try_from(page.workspaces.len()).unwrap();
        for workspace in page.workspaces.into_iter().filter(|w| ids.contains(&w.id)) {
            owners.insert(workspace.id, workspace.owner_name);
        }
        if received < page_size {
            break;
        }
        offset += received;
    }
    assert_eq!(
        owners.into_values().collect::<Vec<_>>().iter().collect::<std::collections::BTreeSet<_>>(),
        [&coderd.admin.username, &coderd.member.username].into_iter().collect(),
        "one search answers for both users"
    );

    // An `id:` list of a page's length, the two among ids that match nothing.
    let mut queried: Vec<String> = (2..page_size).map(|_| uuid::Uuid::new_v4().to_string()).collect();
    queried.extend(ids.iter().cloned());
    let found = client.list_workspaces(&search::ids(&queried), page_size, 0).await.expect("an id: list of a page");
    let mut found_ids: Vec<String> = found.workspaces.into_iter().map(|w| w.id).collect();
    found_ids.sort();
    ids.sort();
    assert_eq!(found_ids, ids);
    assert_eq!(found.count, 2);

    // `status:` and an `id:` list together: the running ones among a page
    // of ids, read for the count alone.
    for id in &ids {
        wait_for_job(coderd, id).await;
    }
    let running = client.list_workspaces(&search::running_among(&queried), 1, 0).await.expect("a running count by id");
    assert_eq!(running.count, 2, "both workspaces' first builds were starts that succeeded");
    assert!(running.workspaces.len() <= 1);

    // The user directory: an Owner's token reads every user, a page at a
    // time, with their ids.
    let users = client.list_users(1000, 0).await.expect("the users");
    for user in [&coderd.admin, &coderd.member] {
        assert!(
            users.users.iter().any(|u| u.username == user.username && u.id.eq_ignore_ascii_case(&user.id)),
            "{} is listed with its id: {users:?}",
            user.username
        );
    }
    assert!(users.count >= 2);
    let first = client.list_users(1, 0).await.expect("a page of one user");
    assert_eq!(first.users.len(), 1);
    assert_eq!(first.count, users.count, "the count is of every page");

    for id in &ids {
        let _: Value = coderd
            .admin_api()
            .post(&format!("/workspaces/{id}/builds"), &json!({"transition": "delete"}))
            .await
            .expect("deleting the workspace");
    }
}
