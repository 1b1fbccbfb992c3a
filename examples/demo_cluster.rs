//! `make demo-cluster`: the same story as `make demo`, with the operator as
//! users run it: the image `make image` built, installed by `helm install`
//! by digest onto the test bed's node, a ChatWorkspace driven through its
//! lifecycle against the Coder simulator inside the node's network.
//! Everything is torn down on exit. Needs root (the node).

use std::fs;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use coder_sim::{SimConfig, Simulator};
use testbed::node::{NODE_IP, Node};

const NAME: &str = "fix-login-bug";
const NAMESPACE: &str = "coder-operators";

struct Timeline(Instant);

impl Timeline {
    fn say(&self, what: impl AsRef<str>) {
        println!("[{:>6.1}s] {}", self.0.elapsed().as_secs_f64(), what.as_ref());
    }
}

fn run(mut command: Command, what: &str) -> anyhow::Result<String> {
    let output = command.output().with_context(|| format!("running {what}"))?;
    if !output.status.success() {
        bail!("{what} failed: {}", String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn kubectl(node: &Node, args: &[&str]) -> anyhow::Result<String> {
    let mut command = node.control_plane().kubectl();
    command.args(args);
    run(command, &format!("kubectl {}", args.join(" ")))
}

/// `<target>/image/chatworkspace-operator.oci.tar`, beside this example's
/// own target directory.
fn image_archive() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let target = exe.ancestors().nth(3).context("the example runs from inside a target directory")?;
    Ok(target.join("image").join("chatworkspace-operator.oci.tar"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let t = Timeline(Instant::now());
    let archive = image_archive()?;
    let digest_file = archive.with_extension("tar.digest");
    let digest = fs::read_to_string(&digest_file)
        .with_context(|| format!("{}: run `make image` (make demo-cluster does)", digest_file.display()))?;
    let digest = digest.trim();

    t.say("starting a control plane and a node (kubelet, containerd, kube-proxy, scheduler, controller-manager)");
    let node = tokio::task::spawn_blocking(Node::start).await??;
    t.say(format!("node ready; kubeconfig {}", node.control_plane().kubeconfig_path().display()));
    node.import_image(&archive)?;
    t.say(format!("imported chatworkspace-operator@{digest} into the node's image store (as a registry pull would)"));

    let mut config = SimConfig::fast();
    config.timings.job_running = Duration::from_secs(2);
    config.timings.agent_connect_delay = Duration::from_secs(1);
    let addr: SocketAddr = format!("{NODE_IP}:0").parse()?;
    let inside = node.enter_network()?;
    let sim = Simulator::bind(config, addr).await?;
    drop(inside);
    t.say(format!("Coder simulator at {} inside the node's network", sim.url()));

    kubectl(&node, &["create", "namespace", NAMESPACE])?;
    kubectl(
        &node,
        &[
            "-n",
            NAMESPACE,
            "create",
            "secret",
            "generic",
            "coder-token",
            &format!("--from-literal=token={}", sim.token()),
        ],
    )?;
    let mut helm = node.control_plane().helm();
    helm.args(["install", "chatworkspace-operator"])
        .arg(testbed::repo_root().join("charts").join("chatworkspace-operator"))
        .args(["--namespace", NAMESPACE, "--wait", "--timeout", "2m"])
        .args(["--set", "image.repository=chatworkspace-operator", "--set", &format!("image.digest={digest}")])
        .args(["--set", &format!("coder.url={}", sim.url()), "--set", "coder.tokenSecret.name=coder-token"])
        .args(["--set", "activeInterval=500ms"]);
    run(helm, "helm install")?;
    t.say("helm install --wait: done");
    println!("{}", kubectl(&node, &["-n", NAMESPACE, "get", "pods", "-o", "wide"])?);
    let holder = kubectl(
        &node,
        &["-n", NAMESPACE, "get", "lease", "chatworkspace-operator", "-o", "jsonpath={.spec.holderIdentity}"],
    )?;
    t.say(format!("leader: {holder}"));

    kubectl(&node, &["annotate", "namespace", "default", "chat.coder.com/coder-owners=admin", "--overwrite"])?;
    // The admission policy sees a fresh grant a moment later.
    let deadline = Instant::now() + Duration::from_secs(30);
    let manifest = testbed::repo_root().join("examples").join("chatworkspace.yaml");
    loop {
        match kubectl(&node, &["apply", "-f", &manifest.to_string_lossy()]) {
            Ok(_) => break,
            Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(500)).await,
            Err(err) => return Err(err),
        }
    }
    t.say(format!("applied examples/chatworkspace.yaml ({NAME})"));
    kubectl(&node, &["wait", &format!("cws/{NAME}"), "--for=condition=Ready", "--timeout=120s"])?;
    t.say("Ready: the workspace runs and its agent is connected");
    kubectl(&node, &["patch", "cws", NAME, "--type", "merge", "-p", r#"{"spec":{"desiredState":"Stopped"}}"#])?;
    kubectl(&node, &["wait", &format!("cws/{NAME}"), "--for=jsonpath={.status.phase}=Stopped", "--timeout=120s"])?;
    t.say("stopped on request");
    println!("{}", kubectl(&node, &["get", "cws", "-o", "wide"])?);

    let pod = holder.trim();
    let logs = node.pod_logs(NAMESPACE, pod);
    t.say(format!("the leader's log has {} lines, and the token in none of them", logs.lines().count()));
    if logs.contains(&sim.token()) {
        bail!("the token appears in the operator's log");
    }
    t.say("tearing down");
    drop(node);
    Ok(())
}
