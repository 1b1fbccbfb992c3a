//! A real coderd for the end-to-end tests: the `coder` binary of the pinned
//! release (built by `make tools`) on a throw-away PostgreSQL cluster, with
//! the echo provisioner, an admin and a member user, echo templates made by
//! the `cws-echo-template` fixture, and real `coder agent` processes that
//! tests kill and freeze.
//!
//! One coderd serves every test of a test binary ([`Coderd::shared`]); tests
//! keep apart by naming their templates and workspaces uniquely. PostgreSQL,
//! coderd and every agent run under testbed's watchdog, so they stop and
//! their directory is deleted however the test binary ends (a panic, an
//! abort, SIGKILL).
//!
//! The harness's own requests go with the admin token and
//! `X-Coder-Bypass-Ratelimit`, so they never use up the rate limit the
//! operator's requests are measured against (coderd keys its limit by user
//! and path).
//!
//! Environment:
//! - `CWS_TOOLS_BIN`: where `coder` and `cws-echo-template` are (default
//!   `<repo>/.tools/bin`, see testbed).
//! - `CWS_POSTGRES_BIN`: the directory of PostgreSQL's `initdb` and
//!   `postgres` (default: the newest `/usr/lib/postgresql/*/bin`, else the
//!   directory of `initdb` on `PATH`).
//! - `CWS_POSTGRES_USER`: the account PostgreSQL runs as when the tests run
//!   as root, which PostgreSQL refuses (default `postgres`, else `nobody`).
//! - `CWS_CODERD_KEEP=1`: keep the directory (logs of PostgreSQL, coderd and
//!   the agents) after the run.

use std::collections::BTreeMap;
use std::env;
use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::io::Write as _;
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use testbed::Server;
use tokio::task::JoinHandle;

/// How long PostgreSQL and coderd get to become ready; both normally take a
/// few seconds, this only matters when something hangs.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a template version's import job gets.
const IMPORT_TIMEOUT: Duration = Duration::from_secs(60);
/// The default organization of a fresh deployment.
pub const ORGANIZATION: &str = "coder";
/// coderd's header that lets an Owner skip the rate limit.
const BYPASS_RATE_LIMIT: &str = "X-Coder-Bypass-Ratelimit";

/// A user of the test coderd and an API token of theirs.
#[derive(Clone, Debug)]
pub struct User {
    pub id: String,
    pub username: String,
    pub email: String,
    password: String,
    pub token: String,
}

/// The running coderd and what the harness made in it at start.
pub struct Coderd {
    url: String,
    dir: PathBuf,
    coder_bin: PathBuf,
    template_bin: PathBuf,
    /// The first user: Owner role.
    pub admin: User,
    /// A second user with the member role only.
    pub member: User,
    pub organization_id: String,
    agents_started: AtomicU64,
    // Dropped in this order: coderd before its database.
    coderd: Mutex<Server>,
    postgres: Mutex<Server>,
}

impl Coderd {
    /// The coderd shared by every test of this test binary, started on first
    /// use. It runs until the process exits.
    ///
    /// # Panics
    /// When it cannot start (the `coder` binary or PostgreSQL is missing,
    /// ...); every later call panics with the same message.
    pub fn shared() -> &'static Coderd {
        static SHARED: OnceLock<Result<Coderd, String>> = OnceLock::new();
        match SHARED.get_or_init(|| Coderd::start().map_err(|err| format!("{err:#}"))) {
            Ok(coderd) => coderd,
            Err(message) => panic!("the test coderd did not start: {message}"),
        }
    }

    /// Starts PostgreSQL and coderd and creates the users.
    pub fn start() -> anyhow::Result<Coderd> {
        let started = Instant::now();
        let coder_bin = testbed::tool("coder")?;
        let template_bin = testbed::tool("cws-echo-template")?;
        let postgres = Postgres::find()?;
        let keep = env::var_os("CWS_CODERD_KEEP").is_some_and(|v| !v.is_empty() && v != "0");
        let dir =
            tempfile::Builder::new().prefix("cws-coderd-").tempdir().context("creating coderd's directory")?.keep();
        let result = Self::start_in(&dir, keep, &postgres, coder_bin, template_bin);
        match &result {
            Ok(coderd) => eprintln!(
                "coderd: {} ready in {:.1}s (files in {})",
                coderd.url,
                started.elapsed().as_secs_f64(),
                dir.display()
            ),
            Err(_) if !keep => {
                let _ = fs::remove_dir_all(&dir);
            }
            Err(_) => {}
        }
        result
    }

    fn start_in(
        dir: &Path,
        keep: bool,
        postgres: &Postgres,
        coder_bin: PathBuf,
        template_bin: PathBuf,
    ) -> anyhow::Result<Coderd> {
        // PostgreSQL may run as another user, who must be able to reach its
        // data directory inside this one.
        fs::set_permissions(dir, fs::Permissions::from_mode(0o711))?;
        let [pg_port, http_port] = free_ports()?;
        // PostgreSQL stops last, and its watchdog deletes the directory: the
        // only cleanup left after a killed test binary.
        let pg = postgres.start(dir, pg_port, (!keep).then_some(dir))?;
        let url = format!("http://127.0.0.1:{http_port}");
        let coderd = start_coderd(dir, &coder_bin, pg_port, http_port, &url)?;
        let (pg, coderd) = (Mutex::new(pg), Mutex::new(coderd));
        let (admin, member, organization_id) = on_private_runtime(bootstrap(&url))?;
        Ok(Coderd {
            url,
            dir: dir.to_owned(),
            coder_bin,
            template_bin,
            admin,
            member,
            organization_id,
            agents_started: AtomicU64::new(0),
            coderd,
            postgres: pg,
        })
    }

    /// `http://127.0.0.1:<port>`, coderd's access URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The directory with the logs: `postgres.log`, `coderd.log`, `agents/`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The harness's own client: the admin's token, exempt from the rate limit.
    pub fn admin_api(&self) -> Api {
        Api::new(&self.url, &self.admin.token, true)
    }

    /// A client with `token`, subject to the rate limit like any user's.
    pub fn api_as(&self, token: &str) -> Api {
        Api::new(&self.url, token, false)
    }

    /// Makes a template from `spec` (a template version, its import, the
    /// template) and returns it once the version is imported.
    pub async fn template(&self, name: &str, spec: &TemplateSpec) -> Template {
        let api = self.admin_api();
        let version = self.template_version(&api, None, spec).await;
        let body = json!({
            "name": name,
            "template_version_id": version,
            "require_active_version": spec.require_active_version,
            "template_use_classic_parameter_flow": spec.classic_parameter_flow,
        });
        let created: Value = api
            .post(&format!("/organizations/{}/templates", self.organization_id), &body)
            .await
            .expect("create template");
        Template {
            id: str_field(&created, "id"),
            name: name.to_owned(),
            active_version_id: str_field(&created, "active_version_id"),
            require_active_version: created["require_active_version"].as_bool().unwrap_or(false),
        }
    }

    /// Adds a version made from `spec` to `template`; with `activate`, it
    /// becomes the active version. Returns the version's id.
    pub async fn add_version(&self, template: &Template, spec: &TemplateSpec, activate: bool) -> String {
        let api = self.admin_api();
        let version = self.template_version(&api, Some(&template.id), spec).await;
        if activate {
            let _: Value = api
                .patch(&format!("/templates/{}/versions", template.id), &json!({"id": version}))
                .await
                .expect("promote the template version");
        }
        version
    }

    /// Uploads the archive of `spec`, creates a template version from it and
    /// waits for its import job to succeed.
    async fn template_version(&self, api: &Api, template_id: Option<&str>, spec: &TemplateSpec) -> String {
        let archive = self.archive(spec);
        let upload: Value = api.upload(archive).await.expect("upload the template archive");
        let mut body = json!({
            "storage_method": "file",
            "file_id": str_field(&upload, "hash"),
            "provisioner": "echo",
            "tags": {},
        });
        if let Some(template_id) = template_id {
            body["template_id"] = json!(template_id);
        }
        let version: Value = api
            .post(&format!("/organizations/{}/templateversions", self.organization_id), &body)
            .await
            .expect("create a template version");
        let id = str_field(&version, "id");
        let deadline = Instant::now() + IMPORT_TIMEOUT;
        loop {
            let version: Value = api.get(&format!("/templateversions/{id}")).await.expect("read the template version");
            match version["job"]["status"].as_str() {
                Some("succeeded") => return id,
                Some(status @ ("failed" | "canceled")) => {
                    panic!("template version {id} import {status}: {}", version["job"]["error"])
                }
                _ => {}
            }
            assert!(Instant::now() < deadline, "template version {id} not imported after {IMPORT_TIMEOUT:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The echo archive of `spec`, from the fixture program.
    fn archive(&self, spec: &TemplateSpec) -> Vec<u8> {
        let mut child = Command::new(&self.template_bin)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run cws-echo-template");
        let input = spec.fixture_input().to_string();
        child.stdin.take().expect("stdin").write_all(input.as_bytes()).expect("write the template spec");
        let output = child.wait_with_output().expect("wait for cws-echo-template");
        assert!(
            output.status.success(),
            "cws-echo-template failed on {input}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        output.stdout
    }

    /// Runs a `coder agent` with `token` now. Most tests want a
    /// [`Provisioner`] instead, which starts and stops agents with the builds.
    pub fn start_agent(&self, token: &str) -> Agent {
        let n = self.agents_started.fetch_add(1, Ordering::Relaxed);
        let dir = self.dir.join("agents").join(format!("agent-{n}"));
        fs::create_dir_all(dir.join("home")).expect("create the agent's directory");
        let [pprof, prometheus, debug] = free_ports().expect("free ports for the agent");
        let path = |name: &str| dir.join(name).into_os_string();
        let address = |port: u16| OsString::from(format!("127.0.0.1:{port}"));
        let env: Vec<(OsString, OsString)> = vec![
            ("CODER_AGENT_URL".into(), self.url.clone().into()),
            ("CODER_AGENT_AUTH".into(), "token".into()),
            ("CODER_AGENT_TOKEN".into(), token.into()),
            ("CODER_AGENT_LOG_DIR".into(), dir.clone().into_os_string()),
            ("CODER_AGENT_SCRIPT_DATA_DIR".into(), dir.clone().into_os_string()),
            // Their defaults are fixed ports and paths, shared by every agent
            // of the machine.
            ("CODER_AGENT_PPROF_ADDRESS".into(), address(pprof)),
            ("CODER_AGENT_PROMETHEUS_ADDRESS".into(), address(prometheus)),
            ("CODER_AGENT_DEBUG_ADDRESS".into(), address(debug)),
            ("CODER_AGENT_SOCKET_PATH".into(), path("agent.sock")),
            ("CODER_AGENT_FIREWALL_LOG_PROXY_SOCKET_PATH".into(), path("firewall.sock")),
            ("HOME".into(), path("home")),
        ];
        let args = [OsString::from("agent"), OsString::from("--no-reap")];
        let server = Server::spawn_with_env("coder-agent", &self.coder_bin, &args, &env, &dir.join("agent.log"), None)
            .expect("start coder agent");
        Agent { server, log: dir.join("agent.log") }
    }

    /// Starts a [`Provisioner`] for the workspace `owner/name` (which may not
    /// exist yet): an agent with `token` runs while its latest build is a
    /// succeeded start.
    pub fn provisioner(&'static self, owner: &str, name: &str, token: &str) -> Provisioner {
        Provisioner::start(self, owner, name, token, 0)
    }

    /// A [`Provisioner`] whose first `starts` agents run with a wrong token,
    /// as a broken image would: coderd never sees them connect, and reports
    /// `timeout` once the template's connection timeout has passed.
    pub fn provisioner_with_broken_starts(
        &'static self,
        owner: &str,
        name: &str,
        token: &str,
        starts: usize,
    ) -> Provisioner {
        Provisioner::start(self, owner, name, token, starts)
    }

    /// Every build of a workspace, oldest first.
    pub async fn builds(&self, workspace_id: &str) -> Vec<Build> {
        let mut builds: Vec<Build> = self
            .admin_api()
            .get(&format!("/workspaces/{workspace_id}/builds?limit=100"))
            .await
            .expect("list the workspace's builds");
        builds.sort_by_key(|b| b.build_number);
        builds
    }

    /// The workspace `owner/name`, or `None`.
    pub async fn workspace(&self, owner: &str, name: &str) -> Option<Value> {
        match self.admin_api().get(&format!("/users/{owner}/workspace/{name}")).await {
            Ok(workspace) => Some(workspace),
            Err(ApiError { status: 404, .. }) => None,
            Err(err) => panic!("read workspace {owner}/{name}: {err}"),
        }
    }

    /// The parameter values of a build, by name.
    pub async fn build_parameters(&self, build_id: &str) -> BTreeMap<String, String> {
        let parameters: Vec<Value> = self
            .admin_api()
            .get(&format!("/workspacebuilds/{build_id}/parameters"))
            .await
            .expect("read the build's parameters");
        parameters.iter().map(|p| (str_field(p, "name"), str_field(p, "value"))).collect()
    }

    /// A new API token of `user`, made through a fresh login.
    pub async fn new_token(&self, user: &User, name: &str) -> String {
        token_for(&self.url, &user.email, &user.password, name).await.expect("create a token")
    }

    /// Revokes the API token `token` (`<id>-<secret>`) of `user`.
    pub async fn revoke_token(&self, user: &User, token: &str) {
        let id = token.split('-').next().expect("a token has an id");
        self.admin_api().delete(&format!("/users/{}/keys/{id}", user.id)).await.expect("revoke the token");
    }

    /// The last lines of coderd's log, for failure messages.
    pub fn log_tail(&self) -> String {
        self.coderd.lock().unwrap_or_else(PoisonError::into_inner).failure("coderd's log").to_string()
    }
}

impl Drop for Coderd {
    fn drop(&mut self) {
        self.coderd.get_mut().unwrap_or_else(PoisonError::into_inner).stop();
        self.postgres.get_mut().unwrap_or_else(PoisonError::into_inner).stop();
    }
}

/// A template of the test coderd.
#[derive(Clone, Debug)]
pub struct Template {
    pub id: String,
    pub name: String,
    pub active_version_id: String,
    pub require_active_version: bool,
}

/// What an echo template holds, as the fixture program reads it: the start
/// build's resources and agents, rich parameters and presets (protojson of
/// coder's provisioner protocol), and whether starts fail.
#[derive(Clone, Debug, Default)]
pub struct TemplateSpec {
    pub agents: Vec<AgentSpec>,
    /// `RichParameter` messages, e.g. `{"name": "size", "type": "string", ...}`.
    pub parameters: Vec<Value>,
    /// `Preset` messages, e.g. `{"name": "large", "parameters": [{"name", "value"}]}`.
    pub presets: Vec<Value>,
    /// Every start build fails with this error.
    pub fail_start: Option<String>,
    pub require_active_version: bool,
    /// The template uses coderd's classic parameter flow instead of the
    /// dynamic one (the default of new templates).
    pub classic_parameter_flow: bool,
    /// The Terraform type of the resource that carries the agents (default
    /// `null_resource`); `coder_external_agent` makes them external agents.
    pub resource_type: Option<&'static str>,
}

/// One agent of a template's start build.
#[derive(Clone, Debug)]
pub struct AgentSpec {
    pub name: String,
    /// The agent authenticates with it. coderd finds an agent by its token
    /// among the latest builds of all workspaces and wants exactly one, so
    /// every workspace with a live agent needs a template version of its own.
    pub token: String,
    /// After this long without a first connection coderd reports `timeout`
    /// (0: never).
    pub connection_timeout_seconds: u32,
}

impl AgentSpec {
    /// An agent named `name` with a fresh token.
    pub fn new(name: &str) -> AgentSpec {
        AgentSpec { name: name.to_owned(), token: uuid::Uuid::new_v4().to_string(), connection_timeout_seconds: 0 }
    }
}

impl TemplateSpec {
    /// A template whose workspaces have one agent, `dev`, with a fresh token.
    pub fn one_agent() -> TemplateSpec {
        TemplateSpec { agents: vec![AgentSpec::new("dev")], ..TemplateSpec::default() }
    }

    /// The token of the first agent.
    pub fn token(&self) -> &str {
        &self.agents.first().expect("the template has an agent").token
    }

    fn fixture_input(&self) -> Value {
        let agents: Vec<Value> = self
            .agents
            .iter()
            .map(|agent| {
                json!({
                    "id": uuid::Uuid::new_v4().to_string(),
                    "name": agent.name,
                    "token": agent.token,
                    "connectionTimeoutSeconds": agent.connection_timeout_seconds,
                    "operatingSystem": "linux",
                    "architecture": "amd64",
                })
            })
            .collect();
        let resources = if agents.is_empty() {
            json!([])
        } else {
            let kind = self.resource_type.unwrap_or("null_resource");
            json!([{"name": "dev", "type": kind, "agents": agents}])
        };
        let mut input = json!({
            "start": {"resources": resources, "parameters": self.parameters, "presets": self.presets},
        });
        if let Some(error) = &self.fail_start {
            input["failStart"] = json!(error);
        }
        input
    }
}

/// A workspace build as coderd reports it (the keys the tests read).
#[derive(Clone, Debug, Deserialize)]
pub struct Build {
    pub id: String,
    pub build_number: i64,
    pub transition: String,
    pub status: String,
    pub created_at: jiff::Timestamp,
    pub template_version_id: String,
    pub job: Job,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Job {
    pub status: String,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub completed_at: Option<jiff::Timestamp>,
}

/// A unique Coder name (workspace, template): `prefix` and a short suffix,
/// within coderd's 32 characters.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", &uuid::Uuid::new_v4().simple().to_string()[..6])
}

impl Coderd {
    /// A template with one agent of its own and the workspace name to use it
    /// for: every workspace with a live agent needs its own agent token.
    pub async fn agent_template(&self, prefix: &str) -> (Template, TemplateSpec, String) {
        let spec = TemplateSpec::one_agent();
        let template = self.template(&unique(prefix), &spec).await;
        (template, spec, unique(prefix))
    }
}

/// The transitions of `builds`, in order.
pub fn transitions(builds: &[Build]) -> Vec<&str> {
    builds.iter().map(|b| b.transition.as_str()).collect()
}

/// A running `coder agent`.
pub struct Agent {
    server: Server,
    log: PathBuf,
}

impl Agent {
    pub fn pid(&self) -> u32 {
        self.server.pid()
    }

    /// Sends `signal` (`KILL`, `STOP`, `CONT`, ...) to the agent process.
    pub fn signal(&self, signal: &str) {
        let status =
            Command::new("kill").arg(format!("-{signal}")).arg(self.pid().to_string()).status().expect("run kill");
        assert!(status.success(), "kill -{signal} {} failed", self.pid());
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // As a destroyed container ends it: at once, frozen or not, and
        // without blocking the test's runtime on a graceful shutdown.
        let _ = Command::new("kill").arg("-KILL").arg(self.pid().to_string()).status();
        self.server.stop();
    }
}

/// Plays the part of a real template's infrastructure for one workspace:
/// when the workspace's latest build is a succeeded start it runs an agent
/// process (one per build, as a new container would), and when a stop or
/// delete build succeeds it stops that process. A test kills or freezes the
/// current agent to make the failures the operator must recover from; a
/// killed agent stays dead until the next start build, as a crashed process
/// in a running container does.
pub struct Provisioner {
    state: Arc<Mutex<ProvisionerState>>,
    task: JoinHandle<()>,
}

#[derive(Default)]
struct ProvisionerState {
    /// The start build the current (or last) agent was started for.
    build_id: Option<String>,
    agent: Option<Agent>,
    /// How many agent processes were started.
    started: usize,
    /// The first this many run with a wrong token.
    broken: usize,
}

impl Provisioner {
    fn start(coderd: &'static Coderd, owner: &str, name: &str, token: &str, broken: usize) -> Provisioner {
        let state = Arc::new(Mutex::new(ProvisionerState { broken, ..ProvisionerState::default() }));
        let (owner, name, token) = (owner.to_owned(), name.to_owned(), token.to_owned());
        let task = tokio::spawn({
            let state = state.clone();
            async move {
                let api = coderd.admin_api();
                loop {
                    if let Ok(workspace) = api.get::<Value>(&format!("/users/{owner}/workspace/{name}")).await {
                        Self::follow(coderd, &state, &workspace["latest_build"], &token);
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        });
        Provisioner { state, task }
    }

    fn follow(coderd: &Coderd, state: &Mutex<ProvisionerState>, build: &Value, token: &str) {
        let (Some(id), Some(transition), Some("succeeded")) =
            (build["id"].as_str(), build["transition"].as_str(), build["job"]["status"].as_str())
        else {
            return;
        };
        let mut state = state.lock().unwrap_or_else(PoisonError::into_inner);
        match transition {
            "start" if state.build_id.as_deref() != Some(id) => {
                state.agent = None;
                let wrong = uuid::Uuid::new_v4().to_string();
                let token = if state.started < state.broken { wrong.as_str() } else { token };
                state.agent = Some(coderd.start_agent(token));
                state.build_id = Some(id.to_owned());
                state.started += 1;
            }
            "stop" | "delete" => state.agent = None,
            _ => {}
        }
    }

    /// Sends `signal` to the current agent process; `None` when there is none.
    pub fn signal(&self, signal: &str) -> Option<u32> {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let agent = state.agent.as_ref()?;
        agent.signal(signal);
        Some(agent.pid())
    }

    /// Agent processes started so far.
    pub fn agents_started(&self) -> usize {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).started
    }

    /// Whether an agent process runs now.
    pub fn has_agent(&self) -> bool {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).agent.is_some()
    }

    /// The log of the current agent, for failure messages.
    pub fn agent_log(&self) -> String {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.agent.as_ref().map(Agent::log).unwrap_or_default()
    }
}

impl Drop for Provisioner {
    fn drop(&mut self) {
        self.task.abort();
        if let Ok(mut state) = self.state.lock() {
            state.agent = None;
        }
    }
}

/// A minimal client of coderd's API for the harness, apart from the
/// operator's own client under test.
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
    bypass_rate_limit: bool,
}

/// A non-2xx answer, or no answer.
#[derive(Debug)]
pub struct ApiError {
    pub status: u16,
    pub body: String,
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HTTP {}: {}", self.status, self.body)
    }
}

impl Api {
    fn new(url: &str, token: &str, bypass_rate_limit: bool) -> Api {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("an HTTP client");
        Api { http, base: format!("{url}/api/v2"), token: token.to_owned(), bypass_rate_limit }
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ApiError> {
        self.send(self.http.get(self.url(path))).await
    }

    pub async fn post<T: DeserializeOwned>(&self, path: &str, body: &Value) -> Result<T, ApiError> {
        self.send(self.http.post(self.url(path)).json(body)).await
    }

    pub async fn patch<T: DeserializeOwned>(&self, path: &str, body: &Value) -> Result<T, ApiError> {
        self.send(self.http.patch(self.url(path)).json(body)).await
    }

    pub async fn put<T: DeserializeOwned>(&self, path: &str, body: &Value) -> Result<T, ApiError> {
        self.send(self.http.put(self.url(path)).json(body)).await
    }

    /// A PUT without a body.
    pub async fn put_empty<T: DeserializeOwned>(&self, path: &str) -> Result<T, ApiError> {
        self.send(self.http.put(self.url(path))).await
    }

    pub async fn delete(&self, path: &str) -> Result<(), ApiError> {
        self.send::<Value>(self.http.delete(self.url(path))).await.map(|_| ())
    }

    async fn upload(&self, archive: Vec<u8>) -> Result<Value, ApiError> {
        self.send(self.http.post(self.url("/files")).header("Content-Type", "application/x-tar").body(archive)).await
    }

    /// The same client on `/api/experimental`, where v2.36.1 serves chats.
    pub fn experimental(&self) -> Api {
        Api { base: self.base.replace("/api/v2", "/api/experimental"), ..self.clone() }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn send<T: DeserializeOwned>(&self, mut request: reqwest::RequestBuilder) -> Result<T, ApiError> {
        if !self.token.is_empty() {
            request = request.header("Coder-Session-Token", &self.token);
        }
        if self.bypass_rate_limit {
            request = request.header(BYPASS_RATE_LIMIT, "true");
        }
        let response = request.send().await.map_err(|err| ApiError { status: 0, body: err.to_string() })?;
        let status = response.status().as_u16();
        let body = response.text().await.map_err(|err| ApiError { status, body: err.to_string() })?;
        if !(200..300).contains(&status) {
            return Err(ApiError { status, body });
        }
        // DELETE answers with an empty body or a message.
        let body = if body.trim().is_empty() { "null" } else { &body };
        serde_json::from_str(body).map_err(|err| ApiError { status, body: format!("{err}: {body}") })
    }
}

/// The string at `key` of a JSON object.
pub fn str_field(value: &Value, key: &str) -> String {
    value[key].as_str().unwrap_or_else(|| panic!("no string {key:?} in {value}")).to_owned()
}

/// The first user (Owner) and a member, each with an API token.
async fn bootstrap(url: &str) -> anyhow::Result<(User, User, String)> {
    let api = Api::new(url, "", false);
    let admin_password = password();
    let first: Value = api
        .post(
            "/users/first",
            &json!({
                "email": "admin@example.com",
                "username": "admin",
                "name": "Test Admin",
                "password": admin_password,
                "trial": false,
            }),
        )
        .await
        .map_err(|err| anyhow::anyhow!("creating the first user: {err}"))?;
    let organization_id = str_field(&first, "organization_id");
    let admin_token = token_for(url, "admin@example.com", &admin_password, "harness").await?;
    let admin = User {
        id: str_field(&first, "user_id"),
        username: "admin".into(),
        email: "admin@example.com".into(),
        password: admin_password,
        token: admin_token,
    };

    let member_password = password();
    let created: Value = Api::new(url, &admin.token, true)
        .post(
            "/users",
            &json!({
                "email": "member@example.com",
                "username": "member",
                "name": "Test Member",
                "password": member_password,
                "login_type": "password",
                "user_status": "active",
                "organization_ids": [organization_id],
            }),
        )
        .await
        .map_err(|err| anyhow::anyhow!("creating the member user: {err}"))?;
    let member_token = token_for(url, "member@example.com", &member_password, "harness").await?;
    let member = User {
        id: str_field(&created, "id"),
        username: "member".into(),
        email: "member@example.com".into(),
        password: member_password,
        token: member_token,
    };
    Ok((admin, member, organization_id))
}

/// Logs in and makes a named API token with the session.
async fn token_for(url: &str, email: &str, password: &str, name: &str) -> anyhow::Result<String> {
    let login: Value = Api::new(url, "", false)
        .post("/users/login", &json!({"email": email, "password": password}))
        .await
        .map_err(|err| anyhow::anyhow!("logging in as {email}: {err}"))?;
    let session = Api::new(url, &str_field(&login, "session_token"), false);
    let token: Value = session
        .post("/users/me/keys/tokens", &json!({"token_name": format!("{name}-{}", short_id()), "lifetime": 0}))
        .await
        .map_err(|err| anyhow::anyhow!("creating a token for {email}: {err}"))?;
    Ok(str_field(&token, "key"))
}

/// A password that passes coderd's strength check.
fn password() -> String {
    format!("Cws-e2e-{}!", uuid::Uuid::new_v4().simple())
}

fn short_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_owned()
}

/// `coder server` on `http_port`, using the database on `pg_port`, ready.
fn start_coderd(dir: &Path, coder: &Path, pg_port: u16, http_port: u16, url: &str) -> anyhow::Result<Server> {
    for sub in ["coder-config", "coder-cache", "coder-home"] {
        fs::create_dir_all(dir.join(sub))?;
    }
    let args: Vec<OsString> = [
        "server".to_owned(),
        format!("--postgres-url=postgres://postgres@127.0.0.1:{pg_port}/postgres?sslmode=disable"),
        format!("--http-address=127.0.0.1:{http_port}"),
        // Without an access URL coderd opens a tunnel to the internet.
        format!("--access-url={url}"),
        "--provisioner-types=echo".to_owned(),
        "--provisioner-daemons=4".to_owned(),
        "--derp-server-stun-addresses=disable".to_owned(),
        "--block-direct-connections".to_owned(),
        "--telemetry=false".to_owned(),
        "--update-check=false".to_owned(),
        format!("--cache-dir={}", dir.join("coder-cache").display()),
        format!("--global-config={}", dir.join("coder-config").display()),
    ]
    .into_iter()
    .map(OsString::from)
    .collect();
    let env = [(OsString::from("HOME"), dir.join("coder-home").into_os_string())];
    let mut server = Server::spawn_with_env("coderd", coder, &args, &env, &dir.join("coderd.log"), None)?;
    let deadline = Instant::now() + START_TIMEOUT;
    on_private_runtime(async {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build()?;
        loop {
            if let Some(status) = server.exited() {
                return Err(server.failure(format!("coderd exited during startup ({status})")));
            }
            let last = match http.get(format!("{url}/api/v2/buildinfo")).send().await {
                Ok(response) if response.status().is_success() => return Ok(()),
                Ok(response) => format!("HTTP {}", response.status()),
                Err(err) => err.to_string(),
            };
            if Instant::now() > deadline {
                return Err(
                    server.failure(format!("coderd was not ready after {START_TIMEOUT:?} (last answer: {last})"))
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })?;
    Ok(server)
}

/// The machine's PostgreSQL server binaries, and who runs them.
struct Postgres {
    bin: PathBuf,
    /// `(uid, gid)` to run as: PostgreSQL refuses to run as root.
    run_as: Option<(u32, u32)>,
}

impl Postgres {
    fn find() -> anyhow::Result<Postgres> {
        Self::find_with(env::var_os("CWS_POSTGRES_BIN").map(PathBuf::from))
    }

    /// `dir`: where the binaries must be, instead of the usual places.
    fn find_with(dir: Option<PathBuf>) -> anyhow::Result<Postgres> {
        let bin = postgres_bin(dir).context(
            "PostgreSQL's server binaries (initdb, postgres) were not found: install them \
             (`apt-get install postgresql` on Debian and Ubuntu) or set CWS_POSTGRES_BIN to their directory",
        )?;
        let run_as = if effective_uid()? == 0 { Some(unprivileged_user()?) } else { None };
        Ok(Postgres { bin, run_as })
    }

    /// A command for the PostgreSQL program `name`, as the unprivileged user
    /// when we are root. `setpriv` execs, so the server keeps its pid.
    fn command(&self, name: &str) -> (PathBuf, Vec<OsString>) {
        let program = self.bin.join(name).into_os_string();
        match self.run_as {
            Some((uid, gid)) => (
                PathBuf::from("setpriv"),
                vec![
                    format!("--reuid={uid}").into(),
                    format!("--regid={gid}").into(),
                    "--clear-groups".into(),
                    "--".into(),
                    program,
                ],
            ),
            None => (PathBuf::from(program), Vec::new()),
        }
    }

    /// initdb, then the server on `port`, ready for connections.
    fn start(&self, dir: &Path, port: u16, cleanup: Option<&Path>) -> anyhow::Result<Server> {
        let home = dir.join("postgres");
        let data = home.join("data");
        fs::create_dir_all(&home)?;
        if let Some((uid, gid)) = self.run_as {
            std::os::unix::fs::chown(&home, Some(uid), Some(gid))
                .context("giving the database directory to its user")?;
        }
        let (program, mut args) = self.command("initdb");
        args.extend(
            ["-D", &data.to_string_lossy(), "-U", "postgres", "--auth=trust", "--no-locale", "-E", "UTF8", "--no-sync"]
                .map(OsString::from),
        );
        let output = Command::new(&program)
            .args(&args)
            .current_dir(&home)
            .output()
            .with_context(|| format!("running {}", program.display()))?;
        if !output.status.success() {
            bail!(
                "initdb failed ({}):\n{}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }

        let log = dir.join("postgres.log");
        let (program, mut args) = self.command("postgres");
        args.extend(
            [
                "-D",
                &data.to_string_lossy(),
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                // TCP only: the default socket directory belongs to the
                // machine's own PostgreSQL.
                "-k",
                "",
                // Nothing survives the test run; durability only slows it.
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
            ]
            .map(OsString::from),
        );
        let mut server = Server::spawn("postgres", &program, &args, &log, cleanup)?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = server.exited() {
                return Err(server.failure(format!("postgres exited during startup ({status})")));
            }
            if fs::read_to_string(&log).is_ok_and(|text| text.contains("ready to accept connections")) {
                return Ok(server);
            }
            if Instant::now() > deadline {
                return Err(server.failure(format!("postgres was not ready after {START_TIMEOUT:?}")));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

/// `$CWS_POSTGRES_BIN`, the newest `/usr/lib/postgresql/*/bin`, or the
/// directory `initdb` on `PATH` really lives in (Debian links it).
fn postgres_bin(wanted: Option<PathBuf>) -> Option<PathBuf> {
    let complete = |dir: &Path| dir.join("initdb").is_file() && dir.join("postgres").is_file();
    if let Some(dir) = wanted {
        return Some(dir).filter(|dir| complete(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| Some((entry.file_name().to_str()?.parse().ok()?, entry.path().join("bin"))))
        .filter(|(_, dir)| complete(dir))
        .collect();
    versions.sort();
    if let Some((_, dir)) = versions.pop() {
        return Some(dir);
    }
    env::split_paths(&env::var_os("PATH").unwrap_or_default())
        .filter_map(|dir| fs::canonicalize(dir.join("initdb")).ok())
        .filter_map(|initdb| initdb.parent().map(Path::to_owned))
        .find(|dir| complete(dir))
}

fn effective_uid() -> anyhow::Result<u32> {
    let status = fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .and_then(|id| id.parse().ok())
        .context("no effective uid in /proc/self/status")
}

/// `$CWS_POSTGRES_USER`, else `postgres` (made by Debian's package), else
/// `nobody`: its uid and gid from /etc/passwd.
fn unprivileged_user() -> anyhow::Result<(u32, u32)> {
    let passwd = fs::read_to_string("/etc/passwd").context("reading /etc/passwd")?;
    let lookup = |name: &str| {
        passwd.lines().find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            (fields.len() > 3 && fields[0] == name).then(|| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))?
        })
    };
    let wanted = env::var("CWS_POSTGRES_USER").ok();
    let candidates = match &wanted {
        Some(name) => vec![name.as_str()],
        None => vec!["postgres", "nobody"],
    };
    candidates.iter().find_map(|name| lookup(name)).filter(|(uid, _)| *uid != 0).with_context(|| {
        format!(
            "PostgreSQL refuses to run as root and none of the users {candidates:?} exists: create one \
             (`useradd --system postgres`) or set CWS_POSTGRES_USER to an unprivileged user"
        )
    })
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

/// Runs `future` on a runtime of its own in a scoped thread: the shared
/// coderd starts from inside some test's runtime, and its start must not
/// depend on that runtime, which ends with the test.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_postgres_says_how_to_install_it() {
        let err = Postgres::find_with(Some(PathBuf::from("/nonexistent"))).err().expect("no PostgreSQL there");
        let message = format!("{err:#}");
        assert!(message.contains("apt-get install postgresql"), "{message}");
        assert!(message.contains("CWS_POSTGRES_BIN"), "{message}");
    }
}
