//! `make demo`: a local Kubernetes control plane, the Coder simulator and the
//! operator binary, then the lifecycle of `examples/chatworkspace.yaml` and a
//! recovery, printed as a timeline. Everything is torn down on exit.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use chatworkspace_operator::conditions::{self, READY};
use chatworkspace_operator::crd::ChatWorkspace;
use coder_sim::{NewChat, SimConfig, Simulator};
use futures::StreamExt;
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};
use testbed::ControlPlane;

const NAME: &str = "fix-login-bug";

struct Timeline(Instant);

impl Timeline {
    fn say(&self, what: impl AsRef<str>) {
        println!("[{:>6.1}s] {}", self.0.elapsed().as_secs_f64(), what.as_ref());
    }
}

/// The operator process; killed when the demo ends, however it ends.
struct Operator(Child);

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let t = Timeline(Instant::now());
    t.say("starting etcd and kube-apiserver (built by make tools)");
    let plane = ControlPlane::start().context("starting the control plane")?;
    t.say(format!("control plane ready at {}; kubeconfig {}", plane.server_url(), plane.kubeconfig_path().display()));

    let mut config = SimConfig::fast();
    config.timings.job_running = Duration::from_secs(2);
    config.timings.agent_connect_delay = Duration::from_secs(1);
    let sim = Simulator::start(config).await?;
    t.say(format!("Coder simulator at {} (default seed: user admin, template docker-dev)", sim.url()));

    let binary = std::env::current_exe()?
        .parent()
        .and_then(|examples| examples.parent())
        .map(|dir| dir.join("chatworkspace-operator"))
        .context("locating the operator binary")?;
    if !binary.exists() {
        bail!("{} is missing: run `cargo build --bin chatworkspace-operator` (make demo does)", binary.display());
    }
    let _operator = Operator(
        Command::new(&binary)
            .args(["run", "--admin-addr", "127.0.0.1:0", "--active-interval", "500ms", "--resync-interval", "5s"])
            .args(["--chat-interval", "2s", "--chat-detail-interval", "10s"])
            .env("KUBECONFIG", plane.kubeconfig_path())
            .env("CODER_URL", sim.url())
            .env("CODER_SESSION_TOKEN", sim.token())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .context("starting the operator")?,
    );
    t.say(format!("operator started: {} run", binary.display()));

    let client = plane.client().await;
    let api: Api<ChatWorkspace> = Api::default_namespaced(client);
    let watch_timeline = Timeline(t.0);
    let watch = tokio::spawn(async move {
        let mut last = String::new();
        let mut changes = watcher(api, watcher::Config::default()).applied_objects().boxed();
        while let Some(Ok(cws)) = changes.next().await {
            let line = summary(&cws);
            if line != last {
                watch_timeline.say(format!("  {NAME}: {line}"));
                last = line;
            }
        }
    });

    // The cluster admin grants the namespace the Coder user the default
    // token acts for (the simulator's `admin`).
    kubectl(&t, &plane, &["annotate", "namespace", "default", "chat.coder.com/coder-owners=admin", "--overwrite"])?;
    kubectl(&t, &plane, &["apply", "-f", "examples/chatworkspace.yaml"])?;
    wait_ready(&t, &plane)?;

    kubectl(&t, &plane, &["patch", "cws", NAME, "--type", "merge", "-p", r#"{"spec":{"desiredState":"Stopped"}}"#])?;
    wait_ready(&t, &plane)?;

    kubectl(&t, &plane, &["patch", "cws", NAME, "--type", "merge", "-p", r#"{"spec":{"desiredState":"Running"}}"#])?;
    wait_ready(&t, &plane)?;

    t.say("shortening the recovery threshold for the demo (the default is 90s)");
    kubectl(
        &t,
        &plane,
        &[
            "patch",
            "cws",
            NAME,
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"recovery":{"disconnectedThreshold":"5s","probeTimeout":"2s"}}}"#,
        ],
    )?;
    wait_ready(&t, &plane)?;
    let workspace = sim.workspace_id("admin", NAME).context("the workspace exists in the simulator")?;
    t.say("a chat on the workspace starts a turn and spawns a sub-agent (as chatd's tools would)");
    let chat = sim.create_chat(NewChat {
        title: "fix the login bug".into(),
        workspace_id: Some(workspace),
        status: Some("running".into()),
        ..NewChat::default()
    });
    let sub_agent = sim.create_chat(NewChat {
        title: "run the tests".into(),
        parent_chat_id: Some(chat),
        status: Some("running".into()),
        ..NewChat::default()
    });
    kubectl(&t, &plane, &["wait", &format!("cws/{NAME}"), "--for=condition=ChatContextCurrent", "--timeout=60s"])?;
    show_chat(&t, &plane)?;
    t.say("killing the workspace's agent (an OOM kill, say): heartbeats stop, probes hang");
    sim.kill_agent(workspace);
    kubectl(&t, &plane, &["wait", &format!("cws/{NAME}"), "--for=condition=Recovering", "--timeout=120s"])?;
    wait_ready(&t, &plane)?;

    let builds: Vec<String> = sim.builds(workspace).into_iter().map(|b| b.transition).collect();
    t.say(format!("builds in Coder: {}", builds.join(" → ")));
    t.say("the chat's turn was interrupted before the stop, and its context re-pinned once the new agent was ready");
    t.say("coderd v2.36.1 keeps a chat on its stored agent until the chat's next turn, which moves it to the new one");
    sim.run_chat_turn(chat);
    sim.run_chat_turn(sub_agent);
    kubectl(&t, &plane, &["wait", &format!("cws/{NAME}"), "--for=condition=ChatContextCurrent", "--timeout=60s"])?;
    show_chat(&t, &plane)?;
    kubectl(
        &t,
        &plane,
        &[
            "get",
            "events",
            "--field-selector",
            "reason=ChatInterrupted",
            "-o",
            "custom-columns=REASON:.reason,MESSAGE:.message",
        ],
    )?;
    kubectl(
        &t,
        &plane,
        &[
            "get",
            "events",
            "--field-selector",
            "reason=ChatContextRefreshed",
            "-o",
            "custom-columns=REASON:.reason,MESSAGE:.message",
        ],
    )?;
    kubectl(&t, &plane, &["get", "cws", NAME, "-o", "wide"])?;
    watch.abort();
    t.say("done; stopping the operator, the simulator and the control plane");
    Ok(())
}

fn summary(cws: &ChatWorkspace) -> String {
    let Some(status) = &cws.status else { return "no status yet".into() };
    let ready = conditions::find(&status.conditions, READY);
    format!(
        "desired={:?} phase={} ready={} ({}) agent={}",
        cws.spec.desired_state,
        status.phase.map(|p| format!("{p:?}")).unwrap_or_else(|| "-".into()),
        ready.map_or("-", |c| c.status.as_str()),
        ready.map_or("-", |c| c.reason.as_str()),
        status.agent.as_ref().map_or("-", |a| a.status.as_str()),
    )
}

fn show_chat(t: &Timeline, plane: &ControlPlane) -> anyhow::Result<()> {
    let jsonpath = r#"jsonpath={.status.chat.title}: {.status.chat.status}, agentStale={.status.chat.agentStale}, sub-agents=[{.status.chat.children[*].status}], context={.status.chat.context}{"\n"}"#;
    kubectl(t, plane, &["get", "cws", NAME, "-o", jsonpath])
}

fn kubectl(t: &Timeline, plane: &ControlPlane, args: &[&str]) -> anyhow::Result<()> {
    t.say(format!("$ kubectl {}", args.join(" ")));
    let output = plane.kubectl().args(args).output()?;
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        println!("          {line}");
    }
    if !output.status.success() {
        bail!("kubectl {} failed: {}", args.join(" "), String::from_utf8_lossy(&output.stderr));
    }
    Ok(())
}

fn wait_ready(t: &Timeline, plane: &ControlPlane) -> anyhow::Result<()> {
    kubectl(t, plane, &["wait", &format!("cws/{NAME}"), "--for=condition=Ready", "--timeout=120s"])
}
