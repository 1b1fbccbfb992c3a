//! The test bed's node: it runs pods, and leaves nothing behind when it
//! stops (processes, network namespace, mounts, cgroups, kernel settings).

use std::fs;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::PostParams;
use serde_json::json;
use testbed::node::{NODE_IP, Node};

fn kernel_settings() -> Vec<String> {
    ["kernel/panic", "kernel/panic_on_oops", "vm/overcommit_memory"]
        .iter()
        .map(|key| fs::read_to_string(Path::new("/proc/sys").join(key)).unwrap())
        .collect()
}

fn netns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

/// The pods' network namespaces (CNI names them `cni-…`) in the host's
/// /run/netns.
fn host_netns() -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir("/run/netns")
        .map(|entries| entries.flatten().map(|entry| entry.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    names.retain(|name| name.starts_with("cni-"));
    names.sort();
    names
}

/// Runs a pod of the locally built pause image (all the node has) and
/// returns the host pids of its processes.
async fn run_a_pod(node: &Node) -> Vec<u32> {
    let client = node.control_plane().client().await;
    let namespace = node.control_plane().namespace("node").await;
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "sleeper"},
        "spec": {
            "containers": [{"name": "pause", "image": testbed::node::PAUSE_IMAGE, "imagePullPolicy": "Never"}],
            "automountServiceAccountToken": false,
        }
    }))
    .unwrap();
    Api::<Pod>::namespaced(client.clone(), &namespace).create(&PostParams::default(), &pod).await.unwrap();
    let running = node.wait_pod_ready(&client, &namespace, "sleeper", Duration::from_secs(40)).await.unwrap();
    let pod_ip = running.status.and_then(|status| status.pod_ip).unwrap();
    assert!(pod_ip.starts_with("10.88.0."), "{pod_ip}");
    assert_ne!(pod_ip, NODE_IP);

    let pids = node.pod_pids(running.metadata.uid.as_deref().unwrap());
    assert!(!pids.is_empty(), "the pod's processes are in the node's cgroups");
    pids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_runs_a_pod_and_leaves_nothing_behind() {
    let before = kernel_settings();
    let netns_before = host_netns();
    let node = tokio::task::spawn_blocking(Node::start).await.unwrap().unwrap_or_else(|err| panic!("{err:#}"));
    let dir = node.dir().to_owned();
    let netns = node.network_namespace().to_owned();
    assert!(netns_exists(&netns));
    let pids = run_a_pod(&node).await;

    tokio::task::spawn_blocking(move || drop(node)).await.unwrap();
    assert!(!netns_exists(&netns), "the network namespace is deleted");
    assert_eq!(host_netns(), netns_before, "no pod's network namespace is left in /run/netns");
    assert!(!dir.exists(), "the node's directory is deleted");
    for pid in pids {
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "the pod's process {pid} is killed");
    }
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&*dir.to_string_lossy()), "nothing stays mounted below {}", dir.display());
    assert!(!Path::new("/sys/fs/cgroup/pids").join(&netns).exists(), "the pods' cgroups are removed");
    assert_eq!(kernel_settings(), before, "kubelet's kernel settings are put back");
}

/// Set in the child process of the test below.
const CHILD: &str = "CWS_TESTBED_NODE_CHILD";

/// The child's side: a node with a pod, then nothing until it is killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by a_killed_test_process_leaves_no_node_behind in a child process"]
async fn child() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    let node = tokio::task::spawn_blocking(Node::start).await.unwrap().unwrap_or_else(|err| panic!("{err:#}"));
    let pids = run_a_pod(&node).await;
    let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
    println!("node {} {} {}", node.network_namespace(), node.dir().display(), pids.join(" "));
    tokio::time::sleep(Duration::from_secs(300)).await;
}

#[test]
fn a_killed_test_process_leaves_no_node_behind() {
    let before = kernel_settings();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child", "--ignored", "--nocapture"])
        .env(CHILD, "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|line| line.strip_prefix("node ").map(str::to_owned))
        .expect("the child started a node");
    std::thread::spawn(move || lines.for_each(drop));
    let mut fields = line.split(' ');
    let netns = fields.next().unwrap().to_owned();
    let dir = PathBuf::from(fields.next().unwrap());
    let pids: Vec<u32> = fields.map(|pid| pid.parse().unwrap()).collect();

    child.kill().unwrap(); // SIGKILL: none of the child's code runs any more
    child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let gone = || {
        !netns_exists(&netns)
            && !dir.exists()
            && pids.iter().all(|pid| !Path::new(&format!("/proc/{pid}")).exists())
            && kernel_settings() == before
    };
    while !gone() {
        assert!(
            Instant::now() < deadline,
            "a minute after the test process was killed: netns {netns} exists: {}, {} exists: {}, pod processes alive: {:?}, kernel settings {:?} (were {before:?})",
            netns_exists(&netns),
            dir.display(),
            dir.exists(),
            pids.iter().filter(|pid| Path::new(&format!("/proc/{pid}")).exists()).collect::<Vec<_>>(),
            kernel_settings()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `make image` promises the same digest for the same inputs: nothing of
/// where or when the binary was built (its path, its file times) gets into
/// the image, and another binary gives another digest.
#[test]
fn the_same_binary_makes_the_same_image_byte_for_byte() {
    let pause = testbed::tool("pause").expect("the pause binary");
    let dir = tempfile::tempdir().unwrap();
    let build = |binary: &Path, out: &str| {
        let out = dir.path().join(out);
        let digest = testbed::node::build_image(binary, "/pause", "pause:reproducible", &out, None).unwrap();
        (digest, fs::read(out).unwrap())
    };
    let copy = dir.path().join("elsewhere").join("pause");
    fs::create_dir_all(copy.parent().unwrap()).unwrap();
    fs::copy(&pause, &copy).unwrap();
    // Another day's build of the same bytes.
    let status = Command::new("touch").args(["-d", "2001-02-03 04:05:06"]).arg(&copy).status().unwrap();
    assert!(status.success());

    let (digest, archive) = build(&pause, "a.tar");
    let (again, archive_again) = build(&copy, "b.tar");
    assert!(digest.starts_with("sha256:"), "a manifest digest: {digest}");
    assert_eq!(digest, again, "the same binary from another path and time");
    assert!(archive == archive_again, "the archives differ byte for byte");

    let mut changed = fs::read(&copy).unwrap();
    changed.extend_from_slice(b"\0");
    fs::write(&copy, changed).unwrap();
    let (other, _) = build(&copy, "c.tar");
    assert_ne!(digest, other, "another binary, another digest");
}
