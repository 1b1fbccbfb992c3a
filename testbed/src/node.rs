//! A node for the control plane: kube-scheduler, kube-controller-manager,
//! containerd with runc, kubelet and kube-proxy, so pods really run, for the
//! tests that install the operator as users do (a Helm release, the image
//! the project builds).
//!
//! Network rule: nothing may reach an address outside this machine. The node
//! lives in a network namespace of its own: the node's address
//! ([`NODE_IP`], on the namespace's loopback device; the default route is
//! a blackhole, so whatever is sent anywhere else is dropped), the pods' bridge
//! and addresses, the Service routing kube-proxy writes, and every port the
//! node's components listen on. The only way in or out is a forwarder from
//! [`NODE_IP`]`:6443` to the apiserver on the host's loopback; tests open
//! sockets inside the namespace with [`Node::enter_network`].
//!
//! Teardown (on drop, and when the test process dies in any way) is one
//! shell script, the janitor, that waits for its stdin to close: it kills
//! every process of the node (its cgroups, containerd's shims), unmounts what
//! kubelet and containerd mounted, deletes the namespace (with the iptables
//! chains inside it), removes the cgroups, puts back the kernel settings
//! kubelet changes and deletes the node's directory.
//!
//! Needs root, and from `make tools`: kubelet, kube-scheduler,
//! kube-controller-manager, kube-proxy, containerd, ctr and pause in
//! `.tools/bin`, plus runc, iptables, conntrack and the CNI plugins from
//! Debian packages.

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsRawFd as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::{Node as NodeObject, Pod};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;

use crate::process::Server;
use crate::{ControlPlane, FIELD_MANAGER, on_private_runtime, repo_root, tool};

/// The node's address, inside its network namespace. The apiserver's
/// serving certificate names it.
pub const NODE_IP: &str = "10.200.0.1";
/// The `kubernetes` Service's ClusterIP (the first of the Service range).
pub const KUBERNETES_SERVICE_IP: &str = "10.96.0.1";
/// The node's name.
pub const NODE_NAME: &str = "cws-node";
/// Where the forwarder to the apiserver listens, at [`NODE_IP`].
const APISERVER_PORT: u16 = 6443;
/// The pods' addresses, on the bridge `cws0` (whose address is the first).
const POD_SUBNET: &str = "10.88.0.0/24";
/// The pod sandbox ("pause") image, built locally from `make tools`' pause.
pub const PAUSE_IMAGE: &str = "localhost/cws-pause:1";
/// How long the node gets to register and become Ready once its
/// components run (about 10 s on an idle machine).
const READY_TIMEOUT: Duration = Duration::from_secs(180);
/// The Debian packages the node needs besides what `make tools` builds.
pub const NODE_PACKAGES: &str = "runc iptables conntrack containernetworking-plugins";
const CNI_BIN: &str = "/usr/lib/cni";
/// Kernel settings kubelet changes on the host (they are not per network
/// namespace), restored when the node stops.
const KERNEL_SETTINGS: [&str; 3] = ["kernel/panic", "kernel/panic_on_oops", "vm/overcommit_memory"];

static NODES: AtomicU64 = AtomicU64::new(0);

/// A running node and its own control plane.
///
/// One node per test process at a time: kubelet's kernel settings are the
/// host's.
#[derive(Debug)]
pub struct Node {
    control_plane: ControlPlane,
    dir: PathBuf,
    netns: String,
    /// The node's components, in start order; stopped in reverse.
    servers: Vec<Server>,
    kubelet: Relaunch,
    forwarder: Forwarder,
    janitor: Janitor,
}

impl Node {
    /// Starts a control plane and a node for it, and waits until the node is
    /// Ready and pods can reach the apiserver's `kubernetes` Service.
    pub fn start() -> anyhow::Result<Node> {
        let started = Instant::now();
        check_prerequisites()?;
        let control_plane = ControlPlane::start_for_node()?;
        let n = NODES.fetch_add(1, Ordering::Relaxed);
        let name = format!("cws-node-{}-{n}", std::process::id());
        let dir = tempfile::Builder::new().prefix(&format!("{name}-")).tempdir()?.keep();
        // From here on the janitor undoes whatever was done, however this
        // process ends.
        let janitor = Janitor::spawn(&name, &dir)?;
        let netns = name.clone();
        let result = (|| {
            create_network(&netns)?;
            let forwarder = Forwarder::start(&netns, control_plane.port)?;
            let (servers, kubelet) = start_components(&control_plane, &dir, &netns)?;
            Ok::<_, anyhow::Error>((forwarder, servers, kubelet))
        })();
        let (forwarder, servers, kubelet) = match result {
            Ok(parts) => parts,
            Err(err) => {
                drop(janitor);
                return Err(err);
            }
        };
        let mut node = Node { control_plane, dir, netns, servers, kubelet, forwarder, janitor };
        node.wait_ready().with_context(|| format!("the node's logs are in {}", node.dir.display()))?;
        eprintln!(
            "testbed: node {NODE_NAME} ready in {:.1}s (files in {})",
            started.elapsed().as_secs_f64(),
            node.dir.display()
        );
        Ok(node)
    }

    /// The node's control plane (its apiserver is on the host's loopback).
    pub fn control_plane(&self) -> &ControlPlane {
        &self.control_plane
    }

    /// The name of the node's network namespace (`ip netns list`).
    pub fn network_namespace(&self) -> &str {
        &self.netns
    }

    /// The node's directory: the components' logs (`*.log`), kubelet's and
    /// containerd's state, the pods' logs (`pod-logs/`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Imports an image archive (OCI or `docker save`) into the node's
    /// image store, as a registry pull would have put it there: by its name
    /// and by its digest (`repository@sha256:…`), so a pod may name either.
    pub fn import_image(&self, archive: &Path) -> anyhow::Result<()> {
        let output =
            self.ctr()?.args(["images", "import"]).arg(archive).output().context("running ctr images import")?;
        if !output.status.success() {
            bail!("ctr images import {} failed: {}", archive.display(), String::from_utf8_lossy(&output.stderr).trim());
        }
        // A pull by digest records the image under `repository@digest`; an
        // import only under its tag, and kubelet would then try a registry.
        for (name, digest) in archive_images(archive)? {
            let Some((repository, _tag)) = name.rsplit_once(':').filter(|(repository, _)| !repository.contains('@'))
            else {
                continue;
            };
            let mut tag = self.ctr()?;
            tag.args(["images", "tag", "--force", &name, &format!("{repository}@{digest}")]);
            run(&mut tag)?;
        }
        Ok(())
    }

    /// Enters the node's network namespace on the calling thread until the
    /// guard is dropped: sockets created meanwhile (a listener, a
    /// connection) belong to the node's network, and keep belonging to it
    /// after. Use it around one synchronous socket call, or an `await` that
    /// creates its socket before it first yields.
    pub fn enter_network(&self) -> io::Result<NetworkGuard> {
        NetworkGuard::enter(&netns_path(&self.netns))
    }

    /// Connects to `addr` (a pod's address, or [`NODE_IP`]) from inside the
    /// node's network.
    pub fn connect(&self, addr: SocketAddr) -> io::Result<TcpStream> {
        let _inside = self.enter_network()?;
        TcpStream::connect_timeout(&addr, Duration::from_secs(5))
    }

    /// One plain HTTP/1.0 GET from inside the node's network: the status
    /// code and body.
    pub fn http_get(&self, addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
        let mut stream = self.connect(addr).with_context(|| format!("connecting to {addr}"))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        let status = response
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .with_context(|| format!("no HTTP status line from {addr}{path}"))?;
        let body = response.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default();
        Ok((status, body))
    }

    /// Everything the containers of a pod wrote, from kubelet's log files
    /// (`kubectl logs` would need the apiserver to reach the node, which the
    /// network rule forbids).
    pub fn pod_logs(&self, namespace: &str, pod: &str) -> String {
        let mut text = String::new();
        let prefix = format!("{namespace}_{pod}_");
        let Ok(pods) = fs::read_dir(self.dir.join("pod-logs")) else { return text };
        for entry in pods.flatten() {
            if !entry.file_name().to_string_lossy().starts_with(&prefix) {
                continue;
            }
            for file in walk(&entry.path()) {
                if let Ok(content) = fs::read_to_string(&file) {
                    text.push_str(&content);
                }
            }
        }
        text
    }

    /// `ctr` pointed at the node's containerd, in its `k8s.io` namespace.
    pub fn ctr(&self) -> anyhow::Result<Command> {
        let mut command = Command::new(tool("ctr")?);
        command.arg("--address").arg(self.dir.join("containerd.sock")).args(["--namespace", "k8s.io"]);
        Ok(command)
    }

    /// The host pids of a pod's containers' processes (their cgroups' member
    /// lists), e.g. to SIGKILL one as a crash would.
    pub fn pod_pids(&self, pod_uid: &str) -> Vec<u32> {
        let uid = pod_uid.replace('-', "_");
        let mut pids = Vec::new();
        for file in walk(&Path::new("/sys/fs/cgroup/pids").join(cgroup_root(&self.netns))) {
            let path = file.to_string_lossy();
            if path.ends_with("cgroup.procs")
                && (path.contains(pod_uid) || path.contains(&uid))
                && let Ok(text) = fs::read_to_string(&file)
            {
                pids.extend(text.lines().filter_map(|line| line.trim().parse::<u32>().ok()));
            }
        }
        pids
    }

    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let kubeconfig = self.control_plane.kubeconfig();
        let servers = &mut self.servers;
        let kubelet = &mut self.kubelet;
        // The readiness wait also watches the components, so one that
        // exits fails the start at once with its log; kubelet is started
        // again, as a node's service manager does (kubeadm's systemd unit
        // has `Restart=always`), a few times at most.
        let mut check_servers = |servers: &mut Vec<Server>| -> anyhow::Result<()> {
            for (index, server) in servers.iter_mut().enumerate() {
                if let Some(status) = server.exited() {
                    if index == kubelet.index && kubelet.restarts < KUBELET_RESTARTS {
                        kubelet.restarts += 1;
                        eprintln!(
                            "testbed: kubelet exited during the node's start ({status}), started again ({} of {KUBELET_RESTARTS}); its log is {}",
                            kubelet.restarts,
                            kubelet.log.display()
                        );
                        *server = kubelet.spawn()?;
                        continue;
                    }
                    return Err(server.failure(format!("a node component exited during startup ({status})")));
                }
            }
            Ok(())
        };
        on_private_runtime(async {
            let client = crate::client_for(&kubeconfig).await?;
            publish_apiserver_endpoint(&client).await?;
            loop {
                check_servers(servers)?;
                let node = Api::<NodeObject>::all(client.clone()).get_opt(NODE_NAME).await?;
                let ready = node
                    .as_ref()
                    .and_then(|node| node.status.as_ref())
                    .and_then(|status| status.conditions.as_ref())
                    .is_some_and(|conditions| conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
                let tainted = node
                    .as_ref()
                    .and_then(|node| node.spec.as_ref())
                    .and_then(|spec| spec.taints.as_ref())
                    .is_some_and(|taints| !taints.is_empty());
                if ready && !tainted {
                    return Ok(());
                }
                if Instant::now() > deadline {
                    bail!("node {NODE_NAME} not Ready (and untainted) after {READY_TIMEOUT:?}");
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    }

    /// Waits until `namespace/name`'s pod has the condition `Ready=True`.
    pub async fn wait_pod_ready(
        &self,
        client: &Client,
        namespace: &str,
        name: &str,
        timeout: Duration,
    ) -> anyhow::Result<Pod> {
        let api = Api::<Pod>::namespaced(client.clone(), namespace);
        let deadline = Instant::now() + timeout;
        loop {
            let pod = api.get_opt(name).await?;
            if let Some(pod) = &pod
                && pod
                    .status
                    .as_ref()
                    .and_then(|status| status.conditions.as_ref())
                    .is_some_and(|conditions| conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            {
                return Ok(pod.clone());
            }
            if Instant::now() > deadline {
                bail!("pod {namespace}/{name} not Ready after {timeout:?}: {:?}", pod.and_then(|pod| pod.status));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // Components first (kubelet before containerd), then the janitor
        // cleans up what they leave: containers, mounts, the namespace.
        while let Some(mut server) = self.servers.pop() {
            server.stop();
        }
        self.forwarder.stop();
        self.janitor.finish();
    }
}

/// Fails with the command that provides what is missing.
fn check_prerequisites() -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the test bed's node needs root (network namespaces, cgroups, mounts): run the in-cluster tests as root");
    }
    for name in [
        "kubelet",
        "kube-scheduler",
        "kube-controller-manager",
        "kube-proxy",
        "containerd",
        "containerd-shim-runc-v2",
        "ctr",
        "pause",
    ] {
        tool(name)?;
    }
    let runc = ["/usr/sbin/runc", "/usr/bin/runc"].into_iter().find(|path| Path::new(path).is_file());
    let missing = runc.is_none()
        || !["/usr/sbin/iptables", "/usr/sbin/conntrack"].iter().all(|path| Path::new(path).exists())
        || !["bridge", "host-local", "loopback"].iter().all(|plugin| Path::new(CNI_BIN).join(plugin).is_file());
    if missing {
        bail!(
            "the test bed's node needs Debian packages: run `apt-get install -y --no-install-recommends {NODE_PACKAGES}` (or `make tools` as root)"
        );
    }
    for command in ["ip", "nsenter", "tar", "gzip"] {
        if !Command::new("sh")
            .args(["-c", &format!("command -v {command}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
        {
            bail!("the test bed's node needs `{command}` (Debian: iproute2, util-linux, tar, gzip)");
        }
    }
    Ok(())
}

fn netns_path(netns: &str) -> PathBuf {
    Path::new("/run/netns").join(netns)
}

/// The cgroup (in every hierarchy) under which kubelet puts the pods.
fn cgroup_root(netns: &str) -> String {
    netns.to_owned()
}

fn run(command: &mut Command) -> anyhow::Result<()> {
    let output = command.output().with_context(|| format!("running {command:?}"))?;
    if !output.status.success() {
        bail!("{command:?} failed: {}", String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(())
}

/// The namespace, with the node's address on its loopback device and a
/// blackhole as its default route: a packet for any address outside the
/// node (a pod resolving a name, a Coder URL on the internet) is dropped.
fn create_network(netns: &str) -> anyhow::Result<()> {
    run(Command::new("ip").args(["netns", "add", netns]))?;
    let ip = |args: &[&str]| run(Command::new("ip").args(["-n", netns]).args(args));
    ip(&["link", "set", "lo", "up"])?;
    ip(&["addr", "add", &format!("{NODE_IP}/32"), "dev", "lo"])?;
    ip(&["route", "add", "blackhole", "default"])?;
    Ok(())
}

/// The commands that start each component inside the node's network
/// namespace (and only that: the mounts kubelet makes must be seen by
/// containerd, so all share the host's mount namespace).
fn in_netns(netns: &str, program: &Path) -> (PathBuf, Vec<OsString>) {
    (
        PathBuf::from("nsenter"),
        vec![OsString::from(format!("--net={}", netns_path(netns).display())), OsString::from("--"), program.into()],
    )
}

/// How often kubelet is started again while the node starts.
const KUBELET_RESTARTS: u32 = 2;

/// What starts kubelet again.
#[derive(Debug)]
struct Relaunch {
    /// Its place among the node's servers.
    index: usize,
    program: PathBuf,
    args: Vec<OsString>,
    log: PathBuf,
    restarts: u32,
}

impl Relaunch {
    fn spawn(&self) -> anyhow::Result<Server> {
        Server::spawn("kubelet", &self.program, &self.args, &self.log, None)
    }
}

fn start_components(control_plane: &ControlPlane, dir: &Path, netns: &str) -> anyhow::Result<(Vec<Server>, Relaunch)> {
    let pki = control_plane.dir().join("pki");
    // The components reach the apiserver through the forwarder, as pods do.
    let kubeconfig = dir.join("kubeconfig");
    let admin = fs::read_to_string(control_plane.kubeconfig_path())?;
    fs::write(&kubeconfig, admin.replace(&control_plane.server_url(), &format!("https://{NODE_IP}:{APISERVER_PORT}")))?;

    let mut servers = Vec::new();
    let spawn = |servers: &mut Vec<Server>, name: &'static str, args: Vec<String>| -> anyhow::Result<()> {
        let (program, mut all) = in_netns(netns, &tool(name)?);
        all.extend(args.into_iter().map(OsString::from));
        servers.push(Server::spawn(name, &program, &all, &dir.join(format!("{name}.log")), None)?);
        Ok(())
    };
    let kubeconfig_arg = format!("--kubeconfig={}", kubeconfig.display());

    spawn(
        &mut servers,
        "kube-scheduler",
        vec![
            kubeconfig_arg.clone(),
            "--leader-elect=false".into(),
            "--bind-address=127.0.0.1".into(),
            format!("--cert-dir={}", dir.join("kube-scheduler-pki").display()),
        ],
    )?;
    spawn(
        &mut servers,
        "kube-controller-manager",
        vec![
            kubeconfig_arg.clone(),
            "--leader-elect=false".into(),
            "--bind-address=127.0.0.1".into(),
            format!("--cert-dir={}", dir.join("kube-controller-manager-pki").display()),
            // Published as each namespace's kube-root-ca.crt, which pods
            // trust the apiserver with.
            format!("--root-ca-file={}", pki.join("ca.crt").display()),
            "--use-service-account-credentials=false".into(),
            // Pods get their addresses from the CNI plugin's own range.
            "--allocate-node-cidrs=false".into(),
        ],
    )?;

    // containerd, then the pause image its pods need.
    let containerd_config = write_containerd_config(dir)?;
    spawn(&mut servers, "containerd", vec![format!("--config={}", containerd_config.display())])?;
    wait_for_socket(&dir.join("containerd.sock"), &mut servers)?;
    let pause_archive = dir.join("pause.tar");
    build_image(&tool("pause")?, "/pause", PAUSE_IMAGE, &pause_archive, None)?;
    let mut import = Command::new(tool("ctr")?);
    import
        .arg("--address")
        .arg(dir.join("containerd.sock"))
        .args(["--namespace", "k8s.io", "images", "import", "--label", "io.cri-containerd.pinned=pinned"])
        .arg(&pause_archive);
    run(&mut import).context("importing the pause image")?;

    write_cni_config(dir)?;
    create_cgroup_root(&cgroup_root(netns))?;
    let kubelet_config = write_kubelet_config(dir, netns)?;
    let (program, mut args) = in_netns(netns, &tool("kubelet")?);
    args.extend(
        [
            format!("--config={}", kubelet_config.display()),
            kubeconfig_arg,
            format!("--hostname-override={NODE_NAME}"),
            format!("--node-ip={NODE_IP}"),
            format!("--root-dir={}", dir.join("kubelet").display()),
            format!("--cert-dir={}", dir.join("kubelet-pki").display()),
        ]
        .map(OsString::from),
    );
    let kubelet = Relaunch { index: servers.len(), program, args, log: dir.join("kubelet.log"), restarts: 0 };
    servers.push(kubelet.spawn()?);
    let proxy_config = write_kube_proxy_config(dir, &kubeconfig)?;
    spawn(&mut servers, "kube-proxy", vec![format!("--config={}", proxy_config.display())])?;
    Ok((servers, kubelet))
}

/// kubelet wants its cgroup root to exist in every v1 hierarchy; a new
/// cpuset starts with no CPUs or memory nodes, so it gets its parent's.
fn create_cgroup_root(name: &str) -> anyhow::Result<()> {
    for hierarchy in fs::read_dir("/sys/fs/cgroup")?.flatten() {
        let hierarchy = hierarchy.path();
        if hierarchy.file_name().is_some_and(|name| name == "unified") || !hierarchy.join("cgroup.procs").exists() {
            continue;
        }
        let root = hierarchy.join(name);
        fs::create_dir_all(&root).with_context(|| format!("creating the cgroup {}", root.display()))?;
        for setting in ["cpuset.cpus", "cpuset.mems"] {
            if let Ok(parent) = fs::read_to_string(hierarchy.join(setting)) {
                fs::write(root.join(setting), parent.trim())
                    .with_context(|| format!("writing {}", root.join(setting).display()))?;
            }
        }
    }
    Ok(())
}

fn wait_for_socket(socket: &Path, servers: &mut [Server]) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !socket.exists() {
        for server in servers.iter_mut() {
            if let Some(status) = server.exited() {
                return Err(server.failure(format!("exited during startup ({status})")));
            }
        }
        if Instant::now() > deadline {
            bail!("{} did not appear within a minute", socket.display());
        }
        thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// A single-layer image of one static binary, by the script `make image`
/// uses for the operator (tools/image.sh).
pub fn build_image(
    binary: &Path,
    path: &str,
    name: &str,
    out: &Path,
    ca_bundle: Option<&Path>,
) -> anyhow::Result<String> {
    let mut command = Command::new("bash");
    command
        .arg(repo_root().join("tools").join("image.sh"))
        .arg("--binary")
        .arg(binary)
        .args(["--path", path, "--name", name, "--out"])
        .arg(out);
    if let Some(bundle) = ca_bundle {
        command.arg("--ca-bundle").arg(bundle);
    }
    let output = command.output().context("running tools/image.sh")?;
    if !output.status.success() {
        bail!("tools/image.sh failed: {}", String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

fn write_containerd_config(dir: &Path) -> anyhow::Result<PathBuf> {
    let shim = tool("containerd-shim-runc-v2")?;
    let shim = shim.display();
    let runc = if Path::new("/usr/sbin/runc").is_file() { "/usr/sbin/runc" } else { "/usr/bin/runc" };
    let d = dir.display();
    let config = format!(
        r#"version = 3
root = "{d}/containerd/root"
state = "{d}/containerd/state"
disabled_plugins = ["io.containerd.nri.v1.nri", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.erofs"]

[grpc]
  address = "{d}/containerd.sock"

[ttrpc]
  address = "{d}/containerd.sock.ttrpc"

[plugins.'io.containerd.internal.v1.opt']
  path = "{d}/containerd/opt"

[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "{PAUSE_IMAGE}"

[plugins.'io.containerd.cri.v1.runtime']
  enable_selinux = false
  # The host's root lacks CAP_SYS_RESOURCE: runc cannot lower a
  # container's OOM score below containerd's own.
  restrict_oom_score_adj = true
  # The pods' network namespaces under the node's directory, not /run/netns.
  netns_mounts_under_state_dir = true
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      runtime_path = "{shim}"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = "{runc}"
        SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["{CNI_BIN}"]
    conf_dir = "{d}/cni/net.d"
"#
    );
    let path = dir.join("containerd.toml");
    fs::write(&path, config)?;
    Ok(path)
}

fn write_cni_config(dir: &Path) -> anyhow::Result<()> {
    let conf_dir = dir.join("cni").join("net.d");
    fs::create_dir_all(&conf_dir)?;
    let config = json!({
        "cniVersion": "0.4.0",
        "name": "cws",
        "plugins": [{
            "type": "bridge",
            "bridge": "cws0",
            "isGateway": true,
            "ipMasq": false,
            "hairpinMode": true,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": POD_SUBNET}]],
                "routes": [{"dst": "0.0.0.0/0"}],
                "dataDir": dir.join("cni").join("ipam"),
            }
        }, {
            "type": "portmap",
            "capabilities": {"portMappings": true}
        }]
    });
    fs::write(conf_dir.join("10-cws.conflist"), serde_json::to_string_pretty(&config)?)?;
    Ok(())
}

fn write_kubelet_config(dir: &Path, netns: &str) -> anyhow::Result<PathBuf> {
    let config = json!({
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        // This machine's cgroups are v1, which kubelet otherwise refuses.
        "failCgroupV1": false,
        "cgroupDriver": "cgroupfs",
        // The pods' cgroups live under one root per node: the janitor kills
        // what is left in them.
        "cgroupRoot": format!("/{}", cgroup_root(netns)),
        "containerRuntimeEndpoint": format!("unix://{}", dir.join("containerd.sock").display()),
        "podLogsDir": dir.join("pod-logs"),
        "authentication": {"anonymous": {"enabled": true}, "webhook": {"enabled": false}},
        "authorization": {"mode": "AlwaysAllow"},
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        // No cluster DNS and none of the host's resolvers: a pod resolves
        // names only from /etc/hosts.
        "resolvConf": "",
        "failSwapOn": false,
        // kubelet 1.35 writes the node's ephemeral-storage capacity from
        // its container manager's start while the DRA manager's start-up
        // reads the same map to build the first Node (a Go fatal "concurrent
        // map read and map write" that kills kubelet now and then). Without
        // local-storage isolation nothing writes that map: no pod here asks
        // for ephemeral storage.
        "localStorageCapacityIsolation": false,
        // A shared disk that is 90 % full is not this node's pressure.
        "evictionHard": {"memory.available": "1Mi", "nodefs.available": "1%", "imagefs.available": "1%", "nodefs.inodesFree": "1%"},
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "serializeImagePulls": false,
        "syncFrequency": "5s",
        "fileCheckFrequency": "5s",
        "nodeStatusUpdateFrequency": "2s",
    });
    let path = dir.join("kubelet.json");
    fs::write(&path, serde_json::to_string_pretty(&config)?)?;
    Ok(path)
}

fn write_kube_proxy_config(dir: &Path, kubeconfig: &Path) -> anyhow::Result<PathBuf> {
    let config = json!({
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "mode": "iptables",
        "clientConnection": {"kubeconfig": kubeconfig},
        "hostnameOverride": NODE_NAME,
        "clusterCIDR": POD_SUBNET,
        "bindAddress": NODE_IP,
        "metricsBindAddress": "127.0.0.1:10249",
        "healthzBindAddress": "127.0.0.1:10256",
        // The connection-tracking limits are the host's: leave them alone.
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
    });
    let path = dir.join("kube-proxy.json");
    fs::write(&path, serde_json::to_string_pretty(&config)?)?;
    Ok(path)
}

/// The apiserver does not publish its own endpoint here (its reconciler is
/// off): the `kubernetes` Service leads to the forwarder at the node's
/// address, which pods reach through kube-proxy's rules.
async fn publish_apiserver_endpoint(client: &Client) -> anyhow::Result<()> {
    let slice: EndpointSlice = serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": "kubernetes",
            "namespace": "default",
            "labels": {
                "kubernetes.io/service-name": "kubernetes",
                "endpointslice.kubernetes.io/managed-by": "testbed",
            },
        },
        "addressType": "IPv4",
        "endpoints": [{"addresses": [NODE_IP], "conditions": {"ready": true}}],
        "ports": [{"name": "https", "port": APISERVER_PORT, "protocol": "TCP"}],
    }))?;
    Api::<EndpointSlice>::namespaced(client.clone(), "default")
        .patch("kubernetes", &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&slice))
        .await
        .context("publishing the apiserver's endpoint for the `kubernetes` Service")?;
    Ok(())
}

/// The images an OCI archive names (`io.containerd.image.name`) and their
/// manifest digests, from its index.json.
fn archive_images(archive: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let output = Command::new("tar").arg("-xOf").arg(archive).arg("index.json").output()?;
    if !output.status.success() {
        // A `docker save` archive has no index: nothing to name by digest.
        return Ok(Vec::new());
    }
    let index: serde_json::Value =
        serde_json::from_slice(&output.stdout).context("reading the archive's index.json")?;
    Ok(index["manifests"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|manifest| {
            let name = manifest["annotations"]["io.containerd.image.name"].as_str()?;
            let digest = manifest["digest"].as_str()?;
            Some((name.to_owned(), digest.to_owned()))
        })
        .collect())
}

/// Every file below `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            match entry.file_type() {
                Ok(kind) if kind.is_dir() => pending.push(entry.path()),
                Ok(_) => files.push(entry.path()),
                Err(_) => {}
            }
        }
    }
    files
}

/// The calling thread, inside a network namespace until dropped.
#[derive(Debug)]
pub struct NetworkGuard {
    previous: File,
}

impl NetworkGuard {
    fn enter(netns: &Path) -> io::Result<NetworkGuard> {
        let previous = File::open("/proc/thread-self/ns/net")?;
        setns(&File::open(netns)?)?;
        Ok(NetworkGuard { previous })
    }
}

impl Drop for NetworkGuard {
    fn drop(&mut self) {
        // Staying in the node's network would send this thread's later
        // connections (a test runtime's) into it; nothing else can be done.
        setns(&self.previous).expect("returning to the host's network namespace");
    }
}

fn setns(namespace: &File) -> io::Result<()> {
    // SAFETY: setns only reads the descriptor, which `namespace` keeps open.
    if unsafe { libc::setns(namespace.as_raw_fd(), libc::CLONE_NEWNET) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Forwards connections to [`NODE_IP`]`:6443` inside the node's network to
/// the apiserver on the host's loopback.
#[derive(Debug)]
struct Forwarder {
    stopping: Arc<AtomicBool>,
    accept: Option<thread::JoinHandle<()>>,
}

impl Forwarder {
    fn start(netns: &str, apiserver_port: u16) -> anyhow::Result<Forwarder> {
        let listener = {
            let _inside = NetworkGuard::enter(&netns_path(netns))?;
            TcpListener::bind(SocketAddrV4::new(NODE_IP.parse()?, APISERVER_PORT))
                .context("listening at the node's address for the apiserver")?
        };
        // Polled, so that `stop` ends the thread (and closes the socket that
        // keeps the namespace alive).
        listener.set_nonblocking(true)?;
        let stopping = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stopping);
        let accept = thread::Builder::new().name("node-forwarder".into()).spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((inside, _)) => {
                        let _ = inside.set_nonblocking(false);
                        match TcpStream::connect((Ipv4Addr::LOCALHOST, apiserver_port)) {
                            Ok(outside) => splice(inside, outside),
                            Err(_) => drop(inside),
                        }
                    }
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => thread::sleep(Duration::from_millis(20)),
                    Err(_) => thread::sleep(Duration::from_millis(20)),
                }
            }
        })?;
        Ok(Forwarder { stopping, accept: Some(accept) })
    }

    fn stop(&mut self) {
        self.stopping.store(true, Ordering::Relaxed);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

/// Copies both ways until either side closes.
fn splice(a: TcpStream, b: TcpStream) {
    let pipe = |mut from: TcpStream, mut to: TcpStream| {
        let _ = thread::Builder::new().name("node-forwarder-copy".into()).spawn(move || {
            let _ = io::copy(&mut from, &mut to);
            let _ = to.shutdown(std::net::Shutdown::Both);
            let _ = from.shutdown(std::net::Shutdown::Both);
        });
    };
    if let (Ok(a2), Ok(b2)) = (a.try_clone(), b.try_clone()) {
        pipe(a, b2);
        pipe(b, a2);
    }
}

/// The shell script that tears the node down once its stdin closes: at
/// [`Node`]'s drop, or when the test process dies, however it dies.
///
/// kubelet's kernel settings are the host's, and nodes of several test
/// processes may overlap: the first node records the settings as they were
/// (under a lock, in /run/cws-testbed-node), each registers itself, and the
/// last one to go puts them back. The janitor prints `registered` once that
/// is done, before kubelet may start.
const JANITOR: &str = r#"
netns=$1 dir=$2 cgroup=$3 keep=$4 settings=$5
state=/run/cws-testbed-node
trap '' TERM HUP INT
mkdir -p "$state/nodes"
(
	flock 9
	if [ ! -f "$state/kernel-settings" ]; then
		for key in $settings; do printf '%s %s\n' "$key" "$(cat "/proc/sys/$key")"; done >"$state/kernel-settings.tmp"
		mv "$state/kernel-settings.tmp" "$state/kernel-settings"
	fi
	: >"$state/nodes/$$"
) 9>"$state/lock"
echo registered
while read -r _; do :; done
kill_all() {
	# The pods' processes, by their cgroups.
	for procs in $(find /sys/fs/cgroup/pids/"$cgroup" -name cgroup.procs 2>/dev/null); do
		for pid in $(cat "$procs" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null; done
	done
	# The node's components and containerd's shims: their command lines
	# name the node's directory.
	for cmdline in /proc/[0-9]*/cmdline; do
		pid=${cmdline#/proc/}; pid=${pid%/cmdline}
		[ "$pid" = $$ ] && continue
		if tr '\0' ' ' <"$cmdline" 2>/dev/null | grep -qF -- "$dir"; then kill -KILL "$pid" 2>/dev/null; fi
	done
}
for _ in 1 2 3 4 5; do kill_all; sleep 0.2; done
# Mounts below the node's directory (volumes, container root filesystems,
# the pods' network namespaces), deepest first.
awk -v dir="$dir" '$5 == dir || index($5, dir "/") == 1 { print $5 }' /proc/self/mountinfo | sort -r | while read -r mount; do
	umount -l "$mount" 2>/dev/null
done
ip netns delete "$netns" 2>/dev/null
for root in /sys/fs/cgroup/*/"$cgroup"; do
	[ -d "$root" ] || continue
	find "$root" -depth -type d -exec rmdir {} \; 2>/dev/null
done
# Kernel settings kubelet changed, once no other node runs.
(
	flock 9
	rm -f "$state/nodes/$$"
	for node in "$state"/nodes/*; do
		[ -e "$node" ] || continue
		kill -0 "${node##*/}" 2>/dev/null || rm -f "$node"
	done
	if [ -z "$(ls "$state/nodes")" ] && [ -f "$state/kernel-settings" ]; then
		while read -r key value; do
			[ -n "$key" ] && printf '%s\n' "$value" >"/proc/sys/$key" 2>/dev/null
		done <"$state/kernel-settings"
		rm -f "$state/kernel-settings"
	fi
) 9>"$state/lock"
if [ -z "$keep" ]; then rm -rf -- "$dir"; fi
"#;

/// The running janitor.
#[derive(Debug)]
struct Janitor {
    child: Child,
    lifeline: Option<ChildStdin>,
}

impl Janitor {
    fn spawn(netns: &str, dir: &Path) -> anyhow::Result<Janitor> {
        let log = File::create(dir.join("janitor.log"))?;
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(JANITOR)
            .arg("cws-node-janitor")
            .args([netns, &dir.to_string_lossy(), &cgroup_root(netns)])
            // CWS_TESTBED_KEEP=1 keeps the node's directory (logs, state).
            .arg(if crate::keep_dirs() { "keep" } else { "" })
            .arg(KERNEL_SETTINGS.join(" "))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            // Its own process group: a ^C to the tests' group must not stop
            // it before it has cleaned up.
            .process_group(0)
            .spawn()
            .context("starting the node's janitor")?;
        let lifeline = child.stdin.take();
        let mut janitor = Janitor { child, lifeline };
        // The kernel settings are recorded before kubelet can change them.
        let mut registered = String::new();
        if let Some(stdout) = janitor.child.stdout.take() {
            io::BufRead::read_line(&mut io::BufReader::new(stdout), &mut registered)?;
        }
        if registered.trim() != "registered" {
            janitor.finish();
            bail!("the node's janitor did not start; see {}", dir.join("janitor.log").display());
        }
        Ok(janitor)
    }

    /// Runs the teardown and waits for it.
    fn finish(&mut self) {
        drop(self.lifeline.take());
        let _ = self.child.wait();
    }
}

impl Drop for Janitor {
    fn drop(&mut self) {
        self.finish();
    }
}
