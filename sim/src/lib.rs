//! A simulator of the parts of Coder's REST API that chatworkspace-operator
//! uses (see `docs/coder-api.md`): same paths, same JSON keys, builds that
//! progress over time, agents that heartbeat, die, respawn or never connect,
//! a reachability probe that refuses or hangs like coderd's, and injected
//! faults. It runs in-process for tests ([`Simulator::start`]) or as the
//! `coder-sim` binary for demos.
//!
//! Time-dependent state is computed from timestamps at read time, as coderd
//! does, so there are no background tasks and reads are cheap.

mod api;
mod control;
mod error;
pub mod fake_model;
mod faults;
mod model;
mod requests;
pub mod seed;
mod server;
mod wire;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use jiff::Timestamp;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use uuid::Uuid;

pub use faults::{Fault, FaultKind};
pub use model::{BuildRecord, ChatApi, ContextRefresh, NewChat};
pub use requests::RequestRecord;
pub use seed::Seed;

use crate::model::Deployment;
use crate::server::Shared;

/// How fast simulated things happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timings {
    /// A job waits this long for a provisioner.
    pub job_pending: Duration,
    /// A job runs this long before it succeeds or fails.
    pub job_running: Duration,
    /// After a start build succeeds, its agents connect after this delay.
    pub agent_connect_delay: Duration,
    /// An agent's lifecycle goes from `starting` to `ready` after this long.
    pub agent_startup: Duration,
    /// A live agent heartbeats this often.
    pub heartbeat_interval: Duration,
    /// coderd marks an agent disconnected after this long without a heartbeat.
    pub inactive_timeout: Duration,
    /// An agent that has not connected this long after creation is `timeout`.
    pub connection_timeout_seconds: i32,
    /// How long `listening-ports` dials a dead or cut-off agent before 500.
    pub dial_limit: Duration,
}

impl Default for Timings {
    /// coderd's own values, and build times of a small template.
    fn default() -> Self {
        Self {
            job_pending: Duration::from_secs(1),
            job_running: Duration::from_secs(5),
            agent_connect_delay: Duration::from_secs(2),
            agent_startup: Duration::from_secs(2),
            heartbeat_interval: Duration::from_secs(15),
            inactive_timeout: Duration::from_secs(30),
            connection_timeout_seconds: 120,
            dial_limit: Duration::from_secs(30),
        }
    }
}

impl Timings {
    /// The same sequence of events, compressed for tests.
    pub fn fast() -> Self {
        Self {
            job_pending: Duration::from_millis(100),
            job_running: Duration::from_millis(400),
            agent_connect_delay: Duration::from_millis(200),
            agent_startup: Duration::from_millis(200),
            heartbeat_interval: Duration::from_millis(250),
            inactive_timeout: Duration::from_secs(1),
            connection_timeout_seconds: 3,
            dial_limit: Duration::from_secs(3),
        }
    }
}

#[derive(Debug, Clone)]
pub struct SimConfig {
    /// The one valid session token.
    pub token: String,
    pub seed: Seed,
    pub timings: Timings,
}

impl SimConfig {
    /// The default seed and real-world timings.
    pub fn new(token: impl Into<String>) -> Self {
        Self { token: token.into(), seed: Seed::default(), timings: Timings::default() }
    }

    /// The default seed, fast timings and the token `sim-token`.
    pub fn fast() -> Self {
        Self { token: "sim-token".to_owned(), seed: Seed::default(), timings: Timings::fast() }
    }
}

/// A running simulator. Clones share it; dropping the last clone (or calling
/// [`Simulator::shutdown`]) stops the server.
#[derive(Clone)]
pub struct Simulator {
    handle: Arc<Handle>,
}

impl std::fmt::Debug for Simulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token.
        f.debug_struct("Simulator").field("url", &self.url()).finish_non_exhaustive()
    }
}

struct Handle {
    shared: Arc<Shared>,
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    server: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

impl Simulator {
    /// Starts a simulator on a free loopback port.
    pub async fn start(config: SimConfig) -> anyhow::Result<Simulator> {
        Self::bind(config, SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    pub async fn bind(config: SimConfig, addr: SocketAddr) -> anyhow::Result<Simulator> {
        let deployment = Deployment::from_seed(&config.seed, config.token, config.timings, Timestamp::now())
            .context("loading the seed")?;
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
        let addr = listener.local_addr()?;
        let (stop, stopping) = watch::channel(false);
        let shared = Arc::new(Shared::new(deployment, stopping.clone()));
        let server = tokio::spawn(server::serve(listener, Arc::clone(&shared), stopping));
        tracing::info!(url = %format!("http://{addr}"), "coder-sim listening");
        Ok(Simulator { handle: Arc::new(Handle { shared, addr, stop, server: Mutex::new(Some(server)) }) })
    }

    /// Stops the server and waits for it; requests still hanging end at once.
    pub async fn shutdown(&self) {
        self.handle.stop.send_replace(true);
        let server = self.handle.server.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(server) = server {
            let _ = server.await;
        }
    }

    /// The base URL, e.g. `http://127.0.0.1:41234` (no trailing slash).
    pub fn url(&self) -> String {
        format!("http://{}", self.handle.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.handle.addr
    }

    /// The currently valid session token.
    pub fn token(&self) -> String {
        self.handle.shared.lock().token.clone()
    }

    /// Rotates the valid token: the old one gets 401 from now on.
    pub fn set_token(&self, token: &str) {
        self.handle.shared.lock().token = token.to_owned();
    }

    /// The id of a (not deleted) workspace by owner username and name.
    pub fn workspace_id(&self, owner: &str, name: &str) -> Option<Uuid> {
        self.handle.shared.workspace_id(owner, name)
    }

    /// The agent processes of the workspace's latest start build die:
    /// heartbeats stop; coderd still says `connected` (and the probe hangs)
    /// until the inactive timeout, then `disconnected` (and the probe is refused).
    pub fn kill_agent(&self, workspace: Uuid) {
        self.handle.shared.kill_agent(workspace);
    }

    /// The killed agent processes respawn with the same ids and reconnect.
    pub fn revive_agent(&self, workspace: Uuid) {
        self.handle.shared.revive_agent(workspace);
    }

    /// Heartbeats keep arriving but dials to the workspace's agents fail, so
    /// the probe hangs until the dial limit, then answers 500.
    pub fn partition_probe(&self, workspace: Uuid, partitioned: bool) {
        self.handle.shared.partition_probe(workspace, partitioned);
    }

    /// Coder stops the workspace on its own, as its autostop (`autostop`),
    /// dormancy (`dormancy`, which also makes it dormant) or task pause
    /// (`task_auto_pause`) do.
    ///
    /// # Panics
    /// If the workspace does not exist or a build is under way.
    pub fn stop_by_coder(&self, workspace: Uuid, reason: &str) -> Uuid {
        self.handle
            .shared
            .lock()
            .stop_by_coder(workspace, reason, Timestamp::now())
            .unwrap_or_else(|err| panic!("stopping {workspace}: {}", err.message))
    }

    /// Renames the workspace, as `PATCH /workspaces/{id}` with a new name does.
    pub fn rename(&self, workspace: Uuid, name: &str) {
        if let Some(ws) = self.handle.shared.lock().workspaces.get_mut(&workspace) {
            ws.name = name.to_owned();
        }
    }

    /// Makes a dormant workspace active again, as Coder's dashboard does.
    pub fn activate(&self, workspace: Uuid) {
        if let Some(ws) = self.handle.shared.lock().workspaces.get_mut(&workspace) {
            ws.dormant_at = None;
        }
    }

    /// The agents of the next start build (of this workspace, or of any when
    /// `None`) never connect: `connecting`, then `timeout`.
    pub fn never_connect_next_start(&self, workspace: Option<Uuid>) {
        self.handle.shared.lock().never_connect_next_start(workspace);
    }

    /// The startup scripts of the agents of the next start build (of this
    /// workspace, or of any when `None`) exit with an error: the agents
    /// connect, then go `starting` to `start_error`.
    pub fn fail_startup_next_start(&self, workspace: Option<Uuid>) {
        self.handle.shared.lock().fail_startup_next_start(workspace);
    }

    /// The next build (of this workspace or any; of this transition or any)
    /// fails when its job completes.
    ///
    /// # Panics
    /// If `transition` is not `start`, `stop` or `delete`.
    pub fn fail_next_build(&self, workspace: Option<Uuid>, transition: Option<&str>) {
        let transition =
            transition.map(|t| model::Transition::parse(t).unwrap_or_else(|| panic!("unknown transition {t:?}")));
        self.handle.shared.fail_next_build(workspace, transition, None, None);
    }

    /// Like [`Simulator::fail_next_build`], with the job's `error` and
    /// `error_code` chosen by the caller.
    pub fn fail_next_build_with(
        &self,
        workspace: Option<Uuid>,
        transition: Option<&str>,
        error: &str,
        error_code: Option<&str>,
    ) {
        let transition =
            transition.map(|t| model::Transition::parse(t).unwrap_or_else(|| panic!("unknown transition {t:?}")));
        self.handle.shared.fail_next_build(
            workspace,
            transition,
            Some(error.to_owned()),
            error_code.map(str::to_owned),
        );
    }

    /// Turns the template's `require_active_version` setting on or off.
    ///
    /// # Panics
    /// If there is no template of that name.
    pub fn set_require_active_version(&self, template: &str, required: bool) {
        self.handle.shared.set_require_active_version(template, required).unwrap_or_else(|err| panic!("{err}"));
    }

    /// Promotes the template's version named `version` to active, which makes
    /// workspaces on other versions `outdated`.
    ///
    /// # Panics
    /// If there is no such template or version.
    pub fn set_active_version(&self, template: &str, version: &str) {
        self.handle.shared.set_active_version(template, version).unwrap_or_else(|err| panic!("{err}"));
    }

    /// Adds a fault; returns its id.
    pub fn inject_fault(&self, fault: Fault) -> u64 {
        self.handle.shared.lock().faults.add(fault)
    }

    /// Removes every fault and releases requests hanging on one.
    pub fn clear_faults(&self) {
        self.handle.shared.clear_faults();
    }

    /// How many `/api` requests whose path starts with `prefix` are not
    /// answered yet (hanging on a fault or a partitioned probe, say).
    pub fn in_flight_under(&self, prefix: &str) -> usize {
        self.handle.shared.in_flight().iter().filter(|request| request.path.starts_with(prefix)).count()
    }

    /// Every `/api` request so far, oldest first.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.handle.shared.lock().requests.snapshot()
    }

    /// The `/api` requests that arrived and are not answered yet (held by
    /// a latency or a hang, say), oldest first; their status is not known.
    pub fn in_flight(&self) -> Vec<RequestRecord> {
        self.handle.shared.in_flight()
    }

    pub fn clear_requests(&self) {
        self.handle.shared.lock().requests.clear();
    }

    /// Every build ever requested of the workspace, oldest first.
    pub fn builds(&self, workspace: Uuid) -> Vec<BuildRecord> {
        self.handle.shared.lock().build_records(workspace)
    }

    /// Creates a workspace from the template's active version, as if someone
    /// else had (for adoption tests); it gets a start build like any create.
    ///
    /// # Panics
    /// If the owner or template does not exist, or the name is taken.
    pub fn create_workspace(&self, owner: &str, name: &str, template: &str) -> Uuid {
        self.handle
            .shared
            .create_workspace(owner, name, template)
            .unwrap_or_else(|err| panic!("creating workspace {owner}/{name}: {err}"))
    }

    /// Serves the chat routes under `/api/v2/chats` (v2.37 on) or
    /// `/api/experimental/chats` (v2.36.x, the default); the other answers 404.
    pub fn set_chat_api(&self, api: ChatApi) {
        self.handle.shared.lock().chat_api = api;
    }

    /// Which agent `PUT /chats/{id}/context` re-pins to: the one the chat
    /// has stored, as v2.36.1 does (the default), or the latest build's.
    pub fn set_context_refresh(&self, rule: ContextRefresh) {
        self.handle.shared.lock().context_refresh = rule;
    }

    /// Makes a chat as chatd's tools would: bound to the workspace, its
    /// latest build and chat agent (unless told otherwise), with its context
    /// pinned to that agent's snapshot.
    ///
    /// # Panics
    /// If the owner, workspace or parent does not exist.
    pub fn create_chat(&self, chat: NewChat) -> Uuid {
        self.handle
            .shared
            .lock()
            .create_chat(&chat, Timestamp::now())
            .unwrap_or_else(|err| panic!("creating chat {:?}: {err}", chat.title))
    }

    /// The chat's next turn, as chatd runs it: it moves the chat to the
    /// latest build's chat agent and pins the context there (coderd
    /// v2.36.1 rebinds a chat only this way).
    ///
    /// # Panics
    /// If there is no such chat.
    pub fn run_chat_turn(&self, chat: Uuid) {
        self.handle.shared.lock().run_chat_turn(chat, Timestamp::now()).unwrap_or_else(|err| panic!("{err}"));
    }

    /// Sets a chat's status, as a turn starting (`running`) or ending would.
    ///
    /// # Panics
    /// If there is no such chat.
    pub fn set_chat_status(&self, chat: Uuid, status: &str) {
        self.handle.shared.lock().set_chat_status(chat, status, Timestamp::now()).unwrap_or_else(|err| panic!("{err}"));
    }

    /// The workspace's agent pushes changed context files: chats pinned to
    /// its current agent turn dirty.
    pub fn change_context_files(&self, workspace: Uuid) {
        self.handle.shared.lock().change_context_files(workspace, Timestamp::now());
    }

    /// The agent a chat is bound to, as stored (not as a read repairs it).
    pub fn chat_agent(&self, chat: Uuid) -> Option<Uuid> {
        self.handle.shared.lock().chats.get(&chat).and_then(|chat| chat.agent_id)
    }

    /// The chat's status now.
    pub fn chat_status(&self, chat: Uuid) -> Option<String> {
        let deployment = self.handle.shared.lock();
        deployment.chats.get(&chat).map(|chat| model::Deployment::chat_status(chat, Timestamp::now()).to_owned())
    }
}
