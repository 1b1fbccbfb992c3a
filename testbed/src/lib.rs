//! A real, local Kubernetes control plane for chatworkspace-operator's tests
//! and `make demo`: the upstream etcd and kube-apiserver built by
//! `make tools`, started on free loopback ports with per-run credentials,
//! RBAC authorization and the project's CRDs installed.
//!
//! A [`ControlPlane`] has no controller-manager, scheduler or kubelet (a
//! [`node::Node`] adds them, for the tests that run pods): pods never run,
//! deleted namespaces never finish terminating (so tests use fresh unique
//! namespaces, see [`ControlPlane::namespace`]) and no `default`
//! ServiceAccount appears in new namespaces.
//!
//! Environment:
//! - `CWS_TOOLS_BIN`: where the binaries are (default `<repo>/.tools/bin`).
//! - `CWS_TESTBED_KEEP=1`: keep each control plane's directory (data, logs,
//!   kubeconfigs) after it stops, for post-mortems.

pub mod node;
mod pki;
mod process;

use std::env;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs;
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

pub use crate::process::Server;

/// How long etcd and kube-apiserver get to become ready. A cold start on a
/// busy 2-core machine takes a few seconds; this bound only matters when
/// something hangs, since a server that exits fails the start at once.
const START_TIMEOUT: Duration = Duration::from_secs(180);
/// How long a CRD gets to become Established.
const CRD_TIMEOUT: Duration = Duration::from_secs(60);
/// Field manager for the objects the test bed itself applies.
const FIELD_MANAGER: &str = "testbed";
/// Free ports are found by binding and releasing them, so another process can
/// take one before our server binds it; a start that fails that way is
/// retried on fresh ports.
const START_ATTEMPTS: usize = 3;

/// The repository root (the Cargo workspace that contains this crate).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testbed lives one level below the repository root")
        .to_owned()
}

/// Where `make tools` puts kube-apiserver, kubectl, etcd and helm:
/// `<repo>/.tools/bin`, or `$CWS_TOOLS_BIN` when set.
pub fn tools_bin() -> PathBuf {
    env::var_os("CWS_TOOLS_BIN").map(PathBuf::from).unwrap_or_else(|| repo_root().join(".tools").join("bin"))
}

/// The path of one of the test bed's binaries, or an error saying how to
/// build it.
pub fn tool(name: &str) -> anyhow::Result<PathBuf> {
    let path = tools_bin().join(name);
    if path.is_file() { Ok(path) } else { bail!("{name} not found in {}: run `make tools`", tools_bin().display()) }
}

/// A running etcd + kube-apiserver pair and the files to talk to it.
///
/// Everything lives in one temporary directory: etcd's data, the generated
/// keys and certificates, the kubeconfigs and the servers' logs
/// (`etcd.log`, `kube-apiserver.log`). Both servers stop, and the directory
/// is deleted, when the control plane is dropped or when the process that
/// started it exits in any way (see the `process` module).
#[derive(Debug)]
pub struct ControlPlane {
    dir: PathBuf,
    keep_dir: bool,
    port: u16,
    kubeconfig_path: PathBuf,
    kubeconfig: Kubeconfig,
    ca_cert: PathBuf,
    apiserver_bin: PathBuf,
    apiserver_args: Vec<OsString>,
    apiserver: Mutex<Server>,
    etcd: Server,
    token_kubeconfigs: AtomicU64,
}

impl ControlPlane {
    /// The control plane shared by every test of this test binary, started on
    /// first use. It runs until the process exits.
    ///
    /// # Panics
    /// When it cannot start (for example when `make tools` has not been
    /// run); every later call panics with the same message.
    pub fn shared() -> &'static ControlPlane {
        // The error is kept so that a failed start is not retried by every
        // test, each waiting for its own timeout.
        static SHARED: OnceLock<Result<ControlPlane, String>> = OnceLock::new();
        match SHARED.get_or_init(|| ControlPlane::start().map_err(|err| format!("{err:#}"))) {
            Ok(control_plane) => control_plane,
            Err(message) => panic!("the test control plane did not start: {message}"),
        }
    }

    /// Starts a private control plane, stopped when dropped: for tests that
    /// restart or break it, and for `make demo`.
    pub fn start() -> anyhow::Result<ControlPlane> {
        Self::start_with(Profile::ControlPlaneOnly)
    }

    /// Starts a private control plane for a [`node::Node`]: the same, but
    /// with the ServiceAccount admission plugin on, so pods get their
    /// ServiceAccount's token (the node's controller-manager creates each
    /// namespace's `default` ServiceAccount).
    pub(crate) fn start_for_node() -> anyhow::Result<ControlPlane> {
        Self::start_with(Profile::Node)
    }

    fn start_with(profile: Profile) -> anyhow::Result<ControlPlane> {
        let mut attempt = 1;
        loop {
            match Self::start_once_with(profile) {
                Err(err) if attempt < START_ATTEMPTS && format!("{err:#}").contains("address already in use") => {
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    fn start_once_with(profile: Profile) -> anyhow::Result<ControlPlane> {
        let started = Instant::now();
        let apiserver_bin = tool("kube-apiserver")?;
        let etcd_bin = tool("etcd")?;
        let keep_dir = keep_dirs();
        let dir = tempfile::Builder::new()
            .prefix("cws-testbed-")
            .tempdir()
            .context("creating the control plane's directory")?
            .keep();

        let result = Self::start_in(&dir, keep_dir, &etcd_bin, apiserver_bin, profile);
        match &result {
            Ok(control_plane) => eprintln!(
                "testbed: control plane ready at {} in {:.1}s (files in {})",
                control_plane.server_url(),
                started.elapsed().as_secs_f64(),
                dir.display()
            ),
            Err(_) if !keep_dir => {
                let _ = fs::remove_dir_all(&dir);
            }
            Err(_) => {}
        }
        result
    }

    fn start_in(
        dir: &Path,
        keep_dir: bool,
        etcd_bin: &Path,
        apiserver_bin: PathBuf,
        profile: Profile,
    ) -> anyhow::Result<ControlPlane> {
        let [etcd_client_port, etcd_peer_port, port] = free_ports()?;
        let pki = pki::generate(&dir.join("pki"))?;

        // The admin authenticates with a static bearer token in
        // system:masters, which RBAC always allows.
        let admin_token = uuid::Uuid::new_v4().simple().to_string();
        let token_file = dir.join("tokens.csv");
        fs::write(&token_file, format!("{admin_token},testbed-admin,testbed-admin,\"system:masters\"\n"))?;
        let kubeconfig_path = dir.join("kubeconfig");
        let server_url = format!("https://127.0.0.1:{port}");
        write_kubeconfig(&kubeconfig_path, &server_url, &pki.ca_cert, "testbed-admin", &admin_token)?;
        let kubeconfig = Kubeconfig::read_from(&kubeconfig_path)?;

        // etcd first: kube-apiserver gives up if its storage is unreachable.
        let etcd_client = format!("http://127.0.0.1:{etcd_client_port}");
        let etcd_peer = format!("http://127.0.0.1:{etcd_peer_port}");
        let etcd_args = os_args([
            "--name=testbed".to_owned(),
            format!("--data-dir={}", dir.join("etcd").display()),
            format!("--listen-client-urls={etcd_client}"),
            format!("--advertise-client-urls={etcd_client}"),
            format!("--listen-peer-urls={etcd_peer}"),
            format!("--initial-advertise-peer-urls={etcd_peer}"),
            format!("--initial-cluster=testbed={etcd_peer}"),
            // Nothing survives an etcd crash here anyway; fsync only slows tests.
            "--unsafe-no-fsync".to_owned(),
        ]);
        // etcd's watchdog also deletes the directory: etcd stops last, and
        // nothing else would clean up after a killed test process.
        let cleanup = (!keep_dir).then_some(dir);
        let mut etcd = Server::spawn("etcd", etcd_bin, &etcd_args, &dir.join("etcd.log"), cleanup)?;
        wait_for_etcd(&mut etcd, etcd_client_port)?;

        let mut apiserver_args = os_args([
            format!("--etcd-servers={etcd_client}"),
            "--bind-address=127.0.0.1".to_owned(),
            "--advertise-address=127.0.0.1".to_owned(),
            format!("--secure-port={port}"),
            format!("--cert-dir={}", dir.join("apiserver-certs").display()),
            format!("--tls-cert-file={}", pki.serving_cert.display()),
            format!("--tls-private-key-file={}", pki.serving_key.display()),
            format!("--token-auth-file={}", token_file.display()),
            "--authorization-mode=RBAC".to_owned(),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".to_owned(),
            format!("--service-account-key-file={}", pki.sa_public_key.display()),
            format!("--service-account-signing-key-file={}", pki.sa_signing_key.display()),
            "--service-cluster-ip-range=10.96.0.0/16".to_owned(),
            // The ServiceAccount plugin rejects pods whose ServiceAccount does
            // not exist, and without a controller-manager no namespace ever
            // gets its `default` one, so no pod could be created at all.
            "--disable-admission-plugins=ServiceAccount".to_owned(),
            // No pods run that could use the `kubernetes` Service's
            // endpoints, so do not keep rewriting them.
            "--endpoint-reconciler-type=none".to_owned(),
            // On TERM, end open watches instead of waiting for their
            // clients to do it: a restart with a controller connected
            // would otherwise take the watchdog's whole grace period.
            "--shutdown-watch-termination-grace-period=2s".to_owned(),
        ]);
        if profile == Profile::Node {
            apiserver_args.retain(|arg| arg != "--disable-admission-plugins=ServiceAccount");
        }
        let mut apiserver =
            Server::spawn("kube-apiserver", &apiserver_bin, &apiserver_args, &dir.join("kube-apiserver.log"), None)?;
        on_private_runtime(async {
            wait_for_apiserver(&mut apiserver, &kubeconfig).await?;
            let client = client_for(&kubeconfig).await?;
            let crds_dir = repo_root().join("crds");
            for crd in read_crds(&crds_dir)? {
                apply_crd(&client, crd)
                    .await
                    .with_context(|| format!("installing the CRDs of {}", crds_dir.display()))?;
            }
            Ok(())
        })?;

        Ok(ControlPlane {
            dir: dir.to_owned(),
            keep_dir,
            port,
            kubeconfig_path,
            kubeconfig,
            ca_cert: pki.ca_cert,
            apiserver_bin,
            apiserver_args,
            apiserver: Mutex::new(apiserver),
            etcd,
            token_kubeconfigs: AtomicU64::new(0),
        })
    }

    /// A new client authenticated as the admin. Each call builds its own,
    /// because a client is bound to the tokio runtime it was created on and
    /// every `#[tokio::test]` has its own runtime.
    ///
    /// # Panics
    /// When the kubeconfig cannot be turned into a client.
    pub async fn client(&self) -> Client {
        client_for(&self.kubeconfig)
            .await
            .unwrap_or_else(|err| panic!("building a client for the test control plane: {err:#}"))
    }

    /// The admin kubeconfig file.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig_path
    }

    /// The admin kubeconfig.
    pub fn kubeconfig(&self) -> Kubeconfig {
        self.kubeconfig.clone()
    }

    /// `https://127.0.0.1:<port>`; the port stays the same across
    /// [`ControlPlane::restart_apiserver`].
    pub fn server_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// The directory holding this control plane's data, keys, kubeconfigs and
    /// logs (`etcd.log`, `kube-apiserver.log`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The process ids of etcd and kube-apiserver, for tests that check that
    /// nothing outlives the process that started them.
    pub fn server_pids(&self) -> Vec<u32> {
        vec![self.etcd.pid(), self.lock_apiserver().pid()]
    }

    /// Creates a namespace named `<prefix>-<random suffix>` and returns its
    /// name. Namespaces are never reused: without a controller-manager a
    /// deleted one stays Terminating forever.
    ///
    /// # Panics
    /// When the namespace cannot be created.
    pub async fn namespace(&self, prefix: &str) -> String {
        let namespace = Namespace {
            metadata: ObjectMeta {
                generate_name: Some(format!("{}-", dns_label_prefix(prefix))),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        let created = Api::<Namespace>::all(self.client().await)
            .create(&PostParams::default(), &namespace)
            .await
            .unwrap_or_else(|err| panic!("creating a namespace for {prefix:?}: {err}"));
        created.metadata.name.expect("the apiserver names created objects")
    }

    /// Applies a CRD (server-side apply) and waits until it is Established,
    /// so its resources can be used right away.
    pub async fn install_crd(&self, crd: CustomResourceDefinition) -> anyhow::Result<()> {
        apply_crd(&self.client().await, crd).await
    }

    /// The real kubectl, already pointed at this control plane as the admin.
    /// A later `--kubeconfig` argument overrides the admin's.
    ///
    /// # Panics
    /// When kubectl has not been built (`make tools`).
    pub fn kubectl(&self) -> Command {
        let mut command = Command::new(tool("kubectl").unwrap_or_else(|err| panic!("{err:#}")));
        command
            .arg("--kubeconfig")
            .arg(&self.kubeconfig_path)
            // Discovery caches are keyed by host:port; keep ours out of ~/.kube.
            .arg("--cache-dir")
            .arg(self.dir.join("kubectl-cache"));
        command
    }

    /// The real helm, pointed at this control plane as the admin, with its
    /// own cache, config and data directories so nothing of the user's helm
    /// setup (repositories, plugins) leaks in or is changed.
    ///
    /// # Panics
    /// When helm has not been built (`make tools`).
    pub fn helm(&self) -> Command {
        let mut command = Command::new(tool("helm").unwrap_or_else(|err| panic!("{err:#}")));
        let home = self.dir.join("helm");
        command
            .env("KUBECONFIG", &self.kubeconfig_path)
            .env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_DATA_HOME", home.join("data"));
        // These would point helm at another cluster, identity or namespace.
        for var in [
            "HELM_KUBEAPISERVER",
            "HELM_KUBECAFILE",
            "HELM_KUBECONTEXT",
            "HELM_KUBETOKEN",
            "HELM_KUBEASUSER",
            "HELM_KUBEASGROUPS",
            "HELM_KUBEINSECURE_SKIP_TLS_VERIFY",
            "HELM_KUBETLS_SERVER_NAME",
            "HELM_NAMESPACE",
        ] {
            command.env_remove(var);
        }
        command
    }

    /// Stops kube-apiserver and starts it again on the same port, then waits
    /// for `/readyz`. etcd keeps running, so every object survives; clients
    /// see their connections drop, as in an apiserver rollout.
    ///
    /// This blocks; from async code call it through
    /// `tokio::task::spawn_blocking` so the runtime keeps serving watchers.
    pub fn restart_apiserver(&self) -> anyhow::Result<()> {
        let started = Instant::now();
        let mut apiserver = self.lock_apiserver();
        apiserver.stop();
        let stopped = started.elapsed();
        *apiserver = Server::spawn(
            "kube-apiserver",
            &self.apiserver_bin,
            &self.apiserver_args,
            &self.dir.join("kube-apiserver.log"),
            None,
        )?;
        on_private_runtime(wait_for_apiserver(&mut apiserver, &self.kubeconfig))?;
        eprintln!(
            "testbed: kube-apiserver restarted in {:.1}s (stopped in {:.1}s)",
            started.elapsed().as_secs_f64(),
            stopped.as_secs_f64()
        );
        Ok(())
    }

    /// A token for the ServiceAccount `namespace/name`, issued by the
    /// TokenRequest API (`kubectl create token`), so a process can act with
    /// exactly that ServiceAccount's RBAC permissions. The ServiceAccount
    /// must exist.
    pub fn token_for_service_account(&self, namespace: &str, name: &str) -> anyhow::Result<String> {
        let output = self
            .kubectl()
            .args(["create", "token", name, "--namespace", namespace, "--duration=24h"])
            .output()
            .context("running kubectl create token")?;
        if !output.status.success() {
            bail!(
                "kubectl create token {name} --namespace {namespace} failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        let token = String::from_utf8(output.stdout)?.trim().to_owned();
        if token.is_empty() {
            bail!("kubectl create token {name} --namespace {namespace} printed no token");
        }
        Ok(token)
    }

    /// Writes a kubeconfig (in this control plane's directory) that
    /// authenticates with `token`, trusting the control plane's CA.
    pub fn kubeconfig_for_token(&self, token: &str) -> anyhow::Result<PathBuf> {
        let n = self.token_kubeconfigs.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.join(format!("kubeconfig-token-{n}"));
        write_kubeconfig(&path, &self.server_url(), &self.ca_cert, "token", token)?;
        Ok(path)
    }

    fn lock_apiserver(&self) -> std::sync::MutexGuard<'_, Server> {
        // A panic while holding the lock leaves a Server that is still
        // accurate enough to stop or inspect.
        self.apiserver.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        // kube-apiserver first, so it never runs without its storage.
        self.apiserver.get_mut().unwrap_or_else(PoisonError::into_inner).stop();
        self.etcd.stop();
        if self.keep_dir {
            eprintln!("testbed: kept {}", self.dir.display());
        } else {
            // etcd's watchdog removes it too; whichever runs second finds
            // less or nothing to do.
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// `CWS_TESTBED_KEEP=1`: keep the test bed's directories for post-mortems.
fn keep_dirs() -> bool {
    env::var_os("CWS_TESTBED_KEEP").is_some_and(|v| !v.is_empty() && v != "0")
}

/// What a control plane is started for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Profile {
    /// etcd and kube-apiserver alone: no pod ever runs.
    ControlPlaneOnly,
    /// The control plane of a [`node::Node`], whose pods run.
    Node,
}

/// `N` distinct free loopback ports: all are held at once, then released.
fn free_ports<const N: usize>() -> anyhow::Result<[u16; N]> {
    let listeners = (0..N)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
        .collect::<std::io::Result<Vec<_>>>()
        .context("finding free loopback ports")?;
    let mut ports = [0; N];
    for (port, listener) in ports.iter_mut().zip(&listeners) {
        *port = listener.local_addr()?.port();
    }
    Ok(ports)
}

fn os_args<const N: usize>(args: [String; N]) -> Vec<OsString> {
    args.into_iter().map(OsString::from).collect()
}

/// Writes a kubeconfig. Strings are written as JSON strings, which YAML
/// reads verbatim whatever characters they hold.
fn write_kubeconfig(path: &Path, server: &str, ca_cert: &Path, user: &str, token: &str) -> anyhow::Result<()> {
    let quote = |s: &str| serde_json::Value::from(s).to_string();
    let mut yaml = String::new();
    writeln!(yaml, "apiVersion: v1")?;
    writeln!(yaml, "kind: Config")?;
    writeln!(yaml, "clusters:")?;
    writeln!(yaml, "- name: testbed")?;
    writeln!(yaml, "  cluster:")?;
    writeln!(yaml, "    server: {}", quote(server))?;
    writeln!(yaml, "    certificate-authority: {}", quote(&ca_cert.to_string_lossy()))?;
    writeln!(yaml, "users:")?;
    writeln!(yaml, "- name: {}", quote(user))?;
    writeln!(yaml, "  user:")?;
    writeln!(yaml, "    token: {}", quote(token))?;
    writeln!(yaml, "contexts:")?;
    writeln!(yaml, "- name: testbed")?;
    writeln!(yaml, "  context:")?;
    writeln!(yaml, "    cluster: testbed")?;
    writeln!(yaml, "    user: {}", quote(user))?;
    writeln!(yaml, "    namespace: default")?;
    writeln!(yaml, "current-context: testbed")?;
    fs::write(path, yaml).with_context(|| format!("writing {}", path.display()))
}

async fn client_for(kubeconfig: &Kubeconfig) -> anyhow::Result<Client> {
    let config = Config::from_custom_kubeconfig(kubeconfig.clone(), &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}

/// Runs `future` on a runtime of its own in a scoped thread. Starting and
/// restarting are synchronous and may be called from inside a test's tokio
/// runtime, where blocking on another runtime directly would panic.
fn on_private_runtime<T: Send>(future: impl Future<Output = anyhow::Result<T>> + Send) -> anyhow::Result<T> {
    thread::scope(|scope| {
        scope
            .spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("building a tokio runtime")?
                    .block_on(future)
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Waits until etcd answers `/health` with `"health":"true"`.
fn wait_for_etcd(etcd: &mut Server, port: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Some(status) = etcd.exited() {
            return Err(etcd.failure(format!("etcd exited during startup ({status})")));
        }
        let last = match etcd_health(port) {
            Ok(body) if body.contains(r#""health":"true""#) => return Ok(()),
            Ok(body) => body,
            Err(err) => err.to_string(),
        };
        if Instant::now() > deadline {
            return Err(etcd.failure(format!("etcd was not healthy after {START_TIMEOUT:?} (last answer: {last})")));
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// One plain HTTP/1.0 `GET /health`; the body is all we need.
fn etcd_health(port: u16) -> std::io::Result<String> {
    let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}

/// Waits until kube-apiserver's `/readyz` says `ok`: storage, RBAC bootstrap
/// and every other post-start hook are done.
async fn wait_for_apiserver(apiserver: &mut Server, kubeconfig: &Kubeconfig) -> anyhow::Result<()> {
    let mut config = Config::from_custom_kubeconfig(kubeconfig.clone(), &KubeConfigOptions::default()).await?;
    config.connect_timeout = Some(Duration::from_secs(2));
    config.read_timeout = Some(Duration::from_secs(5));
    let client = Client::try_from(config)?;
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Some(status) = apiserver.exited() {
            return Err(apiserver.failure(format!("kube-apiserver exited during startup ({status})")));
        }
        let request = http::Request::get("/readyz").body(Vec::new())?;
        let last = match client.request_text(request).await {
            Ok(body) if body.trim() == "ok" => return Ok(()),
            Ok(body) => body,
            Err(err) => err.to_string(),
        };
        if Instant::now() > deadline {
            return Err(apiserver.failure(format!(
                "kube-apiserver was not ready after {START_TIMEOUT:?} (last /readyz answer: {last})"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every CRD in the `*.yaml` / `*.yml` files of `dir` (multi-document files
/// allowed), in file-name order. A missing or empty directory has none.
fn read_crds(dir: &Path) -> anyhow::Result<Vec<CustomResourceDefinition>> {
    let mut files = match fs::read_dir(dir) {
        Ok(entries) => entries.map(|entry| entry.map(|entry| entry.path())).collect::<std::io::Result<Vec<_>>>()?,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(err).with_context(|| format!("reading {}", dir.display())),
    };
    files.retain(|path| path.extension().is_some_and(|ext| ext == "yaml" || ext == "yml"));
    files.sort();

    let mut crds = Vec::new();
    for file in files {
        let text = fs::read_to_string(&file)?;
        for document in serde_yaml::Deserializer::from_str(&text) {
            let value: serde_yaml::Value =
                serde::Deserialize::deserialize(document).with_context(|| format!("parsing {}", file.display()))?;
            if value.is_null() {
                continue; // an empty document, e.g. after a trailing `---`
            }
            let crd = serde_yaml::from_value(value).with_context(|| {
                format!("{} holds something that is not a CustomResourceDefinition", file.display())
            })?;
            crds.push(crd);
        }
    }
    Ok(crds)
}

/// Server-side applies `crd` and waits until it is Established.
async fn apply_crd(client: &Client, crd: CustomResourceDefinition) -> anyhow::Result<()> {
    let api = Api::<CustomResourceDefinition>::all(client.clone());
    let name = crd.metadata.name.clone().context("a CustomResourceDefinition without metadata.name")?;
    api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&crd))
        .await
        .map_err(|err| match err {
            // The status message says everything; the rest of the error
            // repeats it as a Debug dump.
            kube::Error::Api(status) => anyhow::anyhow!("{}", status.message),
            other => other.into(),
        })
        .with_context(|| format!("the apiserver rejected CRD {name}"))?;

    let deadline = Instant::now() + CRD_TIMEOUT;
    loop {
        let conditions = api.get(&name).await?.status.and_then(|status| status.conditions).unwrap_or_default();
        if conditions.iter().any(|c| c.type_ == "Established" && c.status == "True") {
            return Ok(());
        }
        if Instant::now() > deadline {
            let summary: Vec<String> = conditions
                .iter()
                .map(|c| format!("{}={} ({})", c.type_, c.status, c.message.as_deref().unwrap_or("")))
                .collect();
            bail!("CRD {name} not Established after {CRD_TIMEOUT:?}; conditions: {}", summary.join(", "));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `prefix` turned into the start of a DNS label (lowercase letters, digits,
/// dashes), short enough for the apiserver's 5-character suffix.
fn dns_label_prefix(prefix: &str) -> String {
    let label: String = prefix
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9') => c,
            _ => '-',
        })
        .take(50)
        .collect();
    let label = label.trim_matches('-');
    if label.is_empty() { "test".to_owned() } else { label.to_owned() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_prefixes_become_dns_labels() {
        assert_eq!(dns_label_prefix("watch"), "watch");
        assert_eq!(dns_label_prefix("Restart_Test"), "restart-test");
        assert_eq!(dns_label_prefix("--"), "test");
        assert_eq!(dns_label_prefix(&"x".repeat(80)).len(), 50);
    }

    #[test]
    fn missing_tools_say_how_to_build_them() {
        let err = tool("no-such-tool").unwrap_err().to_string();
        assert!(err.contains("no-such-tool not found in"), "{err}");
        assert!(err.ends_with("run `make tools`"), "{err}");
    }

    #[test]
    fn crd_files_are_read_in_order_skipping_empty_documents() {
        let dir = tempfile::tempdir().unwrap();
        let crd = |plural: &str| {
            format!(
                "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\n\
                 metadata: {{name: {plural}.example.com}}\n\
                 spec: {{group: example.com, names: {{kind: K, plural: {plural}}}, scope: Namespaced, versions: []}}\n"
            )
        };
        fs::write(dir.path().join("b.yaml"), format!("---\n{}---\n", crd("bs"))).unwrap();
        fs::write(dir.path().join("a.yml"), format!("{}---\n{}", crd("as"), crd("cs"))).unwrap();
        fs::write(dir.path().join("README.md"), "not yaml").unwrap();
        let names: Vec<_> = read_crds(dir.path()).unwrap().into_iter().map(|crd| crd.metadata.name.unwrap()).collect();
        assert_eq!(names, ["as.example.com", "cs.example.com", "bs.example.com"]);
        assert!(read_crds(&dir.path().join("missing")).unwrap().is_empty());
    }
}
