//! `kubectl cws`: a kubectl plugin for people who look after ChatWorkspaces.
//!
//! ```sh
//! cargo install --path . --bin kubectl-cws   # then, on PATH: kubectl cws ...
//! kubectl cws status NAME                    # what it is doing, and what to do next
//! kubectl cws start NAME                     # desiredState Running (and a start request after Coder stopped it)
//! kubectl cws stop NAME                      # desiredState Stopped
//! kubectl cws restart NAME                   # one stop, then start, of a running workspace (recovery budget)
//! kubectl cws wait NAME --for ready|stopped|chat-current [--timeout 5m]
//! ```
//!
//! It talks to the Kubernetes API only (the kubeconfig's current context, or
//! `KUBECONFIG`), as the person running it; the operator does the rest.

use std::process::ExitCode;
use std::time::Duration;

use chatworkspace_operator::conditions::{self, CHAT_CONTEXT_CURRENT, DEGRADED, READY, Reason, STALLED};
use chatworkspace_operator::crd::{ChatWorkspace, DesiredState, Phase, RESTART_REQUESTED_AT, START_REQUESTED_AT};
use clap::{Parser, Subcommand, ValueEnum};
use k8s_openapi::api::events::v1::Event;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::wait::await_condition;
use kube::{Api, Client, ResourceExt};
use serde_json::json;

#[derive(Parser)]
#[command(name = "kubectl cws", about = "Look after ChatWorkspaces (chat.coder.com)", version)]
struct Cli {
    /// The namespace; default: the kubeconfig context's.
    #[arg(short, long, global = true)]
    namespace: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// What the workspace is doing, its conditions in words, its chat, its
    /// last build and Events, and the one thing to do next.
    Status { name: String },
    /// Asks for the workspace to run; after Coder stopped it (autostop,
    /// dormancy, a person in Coder), also asks for one start.
    Start { name: String },
    /// Asks for the workspace to stop.
    Stop { name: String },
    /// Asks for one restart (a stop, then a start) of the running
    /// workspace, as a recovery counted against its budget, and waits for
    /// the operator to accept or refuse it.
    Restart {
        name: String,
        /// How long to wait for the operator's answer.
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Waits until the workspace is ready, stopped, or its chat's context is
    /// current; fails at once, with the reason, if a person must act first.
    Wait {
        name: String,
        #[arg(long = "for", value_enum)]
        state: Wanted,
        /// How long to wait, e.g. 90s, 5m.
        #[arg(long, default_value = "5m", value_parser = parse_duration)]
        timeout: Duration,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Wanted {
    Ready,
    Stopped,
    ChatCurrent,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let number: u64 = number.parse().map_err(|_| format!("{text:?} is not a duration such as 90s or 5m"))?;
    match unit {
        "s" | "" => Ok(Duration::from_secs(number)),
        "m" => Ok(Duration::from_secs(number * 60)),
        "h" => Ok(Duration::from_secs(number * 3600)),
        _ => Err(format!("{text:?} is not a duration such as 90s or 5m")),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let client = Client::try_default().await?;
    let namespace = cli.namespace.unwrap_or_else(|| client.default_namespace().to_owned());
    let api: Api<ChatWorkspace> = Api::namespaced(client.clone(), &namespace);
    match cli.command {
        Command::Status { name } => {
            let resource = api.get(&name).await?;
            let events = recent_events(&client, &namespace, &name).await?;
            print!("{}", describe(&resource, &events));
            Ok(ExitCode::SUCCESS)
        }
        Command::Start { name } => {
            let resource = api.get(&name).await?;
            let mut patch = json!({"spec": {"desiredState": "Running"}});
            let stopped_by_coder =
                ready_reason(&resource).as_deref().and_then(Reason::parse).is_some_and(Reason::is_stopped_in_coder);
            if stopped_by_coder {
                let now = jiff::Timestamp::now().round(jiff::Unit::Second)?.to_string();
                patch["metadata"] = json!({"annotations": {START_REQUESTED_AT: now}});
            }
            api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
            if stopped_by_coder {
                println!("chatworkspace {namespace}/{name}: asked for a start of the workspace Coder stopped");
            } else {
                println!("chatworkspace {namespace}/{name}: desiredState Running");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Stop { name } => {
            let patch = json!({"spec": {"desiredState": "Stopped"}});
            api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
            println!("chatworkspace {namespace}/{name}: desiredState Stopped");
            Ok(ExitCode::SUCCESS)
        }
        Command::Restart { name, timeout } => restart(&api, &namespace, &name, timeout).await,
        Command::Wait { name, state, timeout } => {
            let reached = await_condition(api.clone(), &name, move |resource: Option<&ChatWorkspace>| {
                resource.is_some_and(|r| !matches!(judge(r, state), Judged::Waiting))
            });
            match tokio::time::timeout(timeout, reached).await {
                Err(_) => {
                    let last = api.get(&name).await?;
                    eprintln!(
                        "timed out after {}s; {}",
                        timeout.as_secs(),
                        condition_line(&last, READY).unwrap_or_else(|| "no status yet".into())
                    );
                    Ok(ExitCode::FAILURE)
                }
                Ok(found) => {
                    let resource = found?.ok_or_else(|| anyhow::anyhow!("chatworkspace {namespace}/{name} is gone"))?;
                    match judge(&resource, state) {
                        Judged::Reached(message) => {
                            println!("chatworkspace {namespace}/{name}: {message}");
                            Ok(ExitCode::SUCCESS)
                        }
                        Judged::Stuck(message) => {
                            eprintln!("chatworkspace {namespace}/{name} needs a person: {message}");
                            Ok(ExitCode::FAILURE)
                        }
                        Judged::Waiting => unreachable!("await_condition returns once judged"),
                    }
                }
            }
        }
    }
}

/// Writes a new restart request and waits for the operator's answer in
/// `status.restart`.
async fn restart(api: &Api<ChatWorkspace>, namespace: &str, name: &str, timeout: Duration) -> anyhow::Result<ExitCode> {
    // Milliseconds: two restarts asked for within a second are two values.
    let value = jiff::Timestamp::now().round(jiff::Unit::Millisecond)?.to_string();
    let patch = json!({"metadata": {"annotations": {RESTART_REQUESTED_AT: value}}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
    println!("chatworkspace {namespace}/{name}: asked for a restart ({RESTART_REQUESTED_AT}={value})");
    let wanted = value.clone();
    let answered =
        await_condition(api.clone(), name, move |resource: Option<&ChatWorkspace>| answer(resource, &wanted).is_some());
    let resource = match tokio::time::timeout(timeout, answered).await {
        Err(_) => {
            eprintln!(
                "the operator has not answered within {}s; `kubectl cws status {name}` shows what it is doing",
                timeout.as_secs()
            );
            return Ok(ExitCode::FAILURE);
        }
        Ok(found) => found?.ok_or_else(|| anyhow::anyhow!("chatworkspace {namespace}/{name} is gone"))?,
    };
    let Some(restart) = answer(Some(&resource), &value) else { unreachable!("await_condition returns once answered") };
    if restart.accepted {
        println!("{} Wait for it: `kubectl cws wait {name} --for ready`.", restart.message);
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("{}", restart.message);
        Ok(ExitCode::FAILURE)
    }
}

/// The operator's answer to the restart request `value`, once it gave one.
fn answer<'r>(
    resource: Option<&'r ChatWorkspace>,
    value: &str,
) -> Option<&'r chatworkspace_operator::crd::RestartStatus> {
    resource?.status.as_ref()?.restart.as_ref().filter(|r| r.request == value)
}

/// Where a wait stands.
enum Judged {
    Reached(String),
    /// Nothing will change without a person or a spec change.
    Stuck(String),
    Waiting,
}

fn judge(resource: &ChatWorkspace, wanted: Wanted) -> Judged {
    let Some(status) = &resource.status else { return Judged::Waiting };
    let generation = resource.metadata.generation;
    let current = |type_: &str| {
        conditions::find(&status.conditions, type_)
            .filter(|c| c.observed_generation == generation || generation.is_none())
    };
    if let Some(stalled) =
        stalled(resource, status).filter(|c| generation.is_none() || c.observed_generation == generation)
    {
        return Judged::Stuck(format!("{} ({})", stalled.message, stalled.reason));
    }
    let desired = resource.spec.desired_state;
    let ready = current(READY).filter(|c| c.status == "True");
    match wanted {
        Wanted::Ready if desired == DesiredState::Running => match ready {
            Some(c) => Judged::Reached(c.message.clone()),
            None => Judged::Waiting,
        },
        Wanted::Stopped if desired == DesiredState::Stopped => match ready {
            Some(c) => Judged::Reached(c.message.clone()),
            None => Judged::Waiting,
        },
        Wanted::Ready | Wanted::Stopped => Judged::Stuck(format!(
            "spec.desiredState is {desired:?}; use `kubectl cws {}` first",
            if matches!(wanted, Wanted::Ready) { "start" } else { "stop" }
        )),
        Wanted::ChatCurrent => match current(CHAT_CONTEXT_CURRENT).filter(|c| c.status == "True") {
            Some(c) => Judged::Reached(c.message.clone()),
            None => Judged::Waiting,
        },
    }
}

/// The condition saying that nothing will change without a person: `Stalled`
/// (from an operator that writes no `Stalled`, a `Degraded` of a `Failed`
/// phase). A stop in Coder that a start was asked for since is not stalled
/// any more, though the operator may not have written so yet.
fn stalled<'s>(
    resource: &ChatWorkspace,
    status: &'s chatworkspace_operator::crd::ChatWorkspaceStatus,
) -> Option<&'s k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    let find = |type_| conditions::find(&status.conditions, type_).filter(|c| c.status == "True");
    let stalled = match conditions::find(&status.conditions, STALLED) {
        Some(_) => find(STALLED),
        None => find(DEGRADED).filter(|_| status.phase == Some(Phase::Failed)),
    }?;
    let start_pending = resource
        .annotations()
        .get(START_REQUESTED_AT)
        .is_some_and(|asked| conditions::stopped_in_coder(stalled) && status.start_request.as_ref() != Some(asked));
    (!start_pending).then_some(stalled)
}

fn ready_reason(resource: &ChatWorkspace) -> Option<String> {
    let status = resource.status.as_ref()?;
    conditions::find(&status.conditions, READY).map(|c| c.reason.clone())
}

fn condition_line(resource: &ChatWorkspace, type_: &str) -> Option<String> {
    let status = resource.status.as_ref()?;
    conditions::find(&status.conditions, type_).map(|c| format!("{type_}={} ({}): {}", c.status, c.reason, c.message))
}

async fn recent_events(client: &Client, namespace: &str, name: &str) -> anyhow::Result<Vec<Event>> {
    let events: Api<Event> = Api::namespaced(client.clone(), namespace);
    let selector = format!("regarding.name={name},regarding.kind=ChatWorkspace");
    let mut list = events.list(&ListParams::default().fields(&selector)).await?.items;
    list.sort_by_key(|e| e.event_time.as_ref().map(|t| t.0).or(e.deprecated_last_timestamp.as_ref().map(|t| t.0)));
    let keep = list.len().saturating_sub(5);
    Ok(list.split_off(keep))
}

/// The status in words, and the one thing to do next.
fn describe(resource: &ChatWorkspace, events: &[Event]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let name = format!("{}/{}", resource.namespace().unwrap_or_default(), resource.name_any());
    let desired = resource.spec.desired_state;
    // Before the operator's first write, the apiserver's default status
    // (observedGeneration 0) is all there is.
    let Some(status) = resource.status.as_ref().filter(|s| !s.conditions.is_empty()) else {
        let _ = writeln!(out, "ChatWorkspace {name}: not observed yet (desired {desired:?})");
        let _ = writeln!(out, "Next: wait for the operator; is it running and does it serve this namespace?");
        return out;
    };
    let phase = status.phase.map_or_else(|| "Unknown".to_owned(), |p| format!("{p:?}"));
    let _ = writeln!(out, "ChatWorkspace {name}: {phase} (desired {desired:?})");
    if let Some(workspace) = &status.workspace {
        let _ = writeln!(out, "Workspace:  {}/{} (id {})", workspace.owner, workspace.name, workspace.id);
    }
    if let Some(build) = &status.latest_build {
        let who = build.reason.as_ref().map(|r| format!(", reason {r}")).unwrap_or_default();
        let _ = writeln!(out, "Build:      #{} {} {}{who}", build.number, build.transition, build.status);
    }
    if let Some(agent) = &status.agent {
        let _ = writeln!(out, "Agent:      {} {}, lifecycle {}", agent.name, agent.status, agent.lifecycle_state);
    }
    if let Some(chat) = &status.chat {
        let children = match chat.children.len() {
            0 => String::new(),
            n => format!(", {n} sub-agent chat(s)"),
        };
        let _ = writeln!(out, "Chat:       {:?} ({}){children}", chat.title, chat.status);
    }
    if let Some(recovery) = status.recovery.as_ref().filter(|r| r.stage.is_some() || r.attempts > 0) {
        let stage = recovery.stage.map_or_else(|| "none".to_owned(), |s| format!("{s:?}"));
        let _ = writeln!(out, "Recovery:   stage {stage}, {} attempt(s) in the window", recovery.attempts);
    }
    let _ = writeln!(out, "Conditions:");
    for condition in &status.conditions {
        let _ = writeln!(
            out,
            "  {:<19}{:<6}{:<24}{}",
            condition.type_, condition.status, condition.reason, condition.message
        );
    }
    if !events.is_empty() {
        let _ = writeln!(out, "Recent events:");
        for event in events {
            let _ = writeln!(
                out,
                "  {:<8}{:<24}{}",
                event.type_.as_deref().unwrap_or_default(),
                event.reason.as_deref().unwrap_or_default(),
                event.note.as_deref().unwrap_or_default()
            );
        }
    }
    let _ = writeln!(out, "Next: {}", next_step(resource));
    out
}

/// The one thing a person should do now.
fn next_step(resource: &ChatWorkspace) -> String {
    let name = resource.name_any();
    let Some(status) = &resource.status else { return "wait for the operator".into() };
    let find = |type_| conditions::find(&status.conditions, type_);
    let ready = find(READY);
    if ready.is_some_and(|r| r.status == "False" && conditions::stopped_in_coder(r)) {
        return format!("`kubectl cws start {name}` asks for a start of the workspace Coder stopped.");
    }
    if let Some(stalled) = stalled(resource, status) {
        return stalled.message.clone();
    }
    match ready {
        Some(ready) if ready.status == "True" => "nothing: the desired state is reached.".into(),
        Some(_) => {
            let wanted = if resource.spec.desired_state == DesiredState::Running { "ready" } else { "stopped" };
            format!("wait: `kubectl cws wait {name} --for {wanted}`.")
        }
        None => "wait for the operator".into(),
    }
}
