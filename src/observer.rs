//! How the operator reads Coder without one request per workspace per
//! reconcile.
//!
//! Workspaces are observed through shared lists: one `GET /workspaces?q=
//! owner:"…"` (paged) answers for every workspace of that owner, and is
//! reused by every reconcile for `max_age`. Concurrent reconciles of one
//! owner wait for the same list instead of each sending their own. Such an
//! observation is marked not fresh: before any build or create, and before
//! a recovery, the reconciler reads the one workspace again (the decision
//! core insists on it), so a stale list can delay an action but never cause
//! a wrong one. Fresh reads and the operator's own builds are written back
//! into the list, so the next reconcile starts from them.
//!
//! Probes are cached too: an agent that answered recently and that coderd
//! still sees connected is not probed again until `probe_interval` passes.
//! A disconnected agent, or one that failed its last probe, is probed every
//! time: those are the cases that lead to decisions.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::coder::{AgentStatus, CoderClient, ProbeOutcome, Workspace, WorkspaceAgent};
use crate::credentials::Resolved;
use crate::error::Result;

#[derive(Clone, Copy, Debug)]
pub struct ObserverSettings {
    /// How long one owner's workspace list serves reconciles.
    pub max_age: Duration,
    /// Workspaces per list page.
    pub page_size: u32,
    /// How long a successful probe of a connected agent is trusted.
    pub probe_interval: Duration,
}

impl Default for ObserverSettings {
    fn default() -> Self {
        Self { max_age: Duration::from_secs(5), page_size: 100, probe_interval: Duration::from_secs(300) }
    }
}

/// A workspace (or its absence) as observed, and whether it was read just
/// now on its own.
#[derive(Clone, Debug)]
pub struct Observation {
    pub workspace: Option<Workspace>,
    pub fresh: bool,
}

#[derive(Default)]
struct Snapshot {
    at: Option<Instant>,
    /// Workspace name (lowercase: Coder's names are case-insensitive) →
    /// workspace.
    workspaces: HashMap<String, Workspace>,
}

type Shared = Arc<tokio::sync::Mutex<Snapshot>>;

pub struct Observer {
    settings: ObserverSettings,
    lists: Mutex<HashMap<String, Shared>>,
    /// Agent id → when it last answered a probe.
    reachable: Mutex<HashMap<String, Instant>>,
}

impl Observer {
    pub fn new(settings: ObserverSettings) -> Self {
        Self { settings, lists: Mutex::default(), reachable: Mutex::default() }
    }

    fn list(&self, credentials: &Resolved, owner: &str) -> Shared {
        let key = format!("{}|{}", credentials.key, owner.to_lowercase());
        self.lists.lock().expect("observer lists").entry(key).or_default().clone()
    }

    /// The workspace `owner/name`, from the owner's shared list when it is
    /// young enough (refreshing it otherwise). A workspace missing from the
    /// list is read on its own, since it may have been created after it.
    pub async fn workspace(&self, credentials: &Resolved, owner: &str, name: &str) -> Result<Observation> {
        let shared = self.list(credentials, owner);
        let mut snapshot = shared.lock().await;
        let young = snapshot.at.is_some_and(|at| at.elapsed() < self.settings.max_age);
        if !young {
            snapshot.workspaces = list_all(&credentials.client, owner, self.settings.page_size).await?;
            snapshot.at = Some(Instant::now());
        }
        if let Some(workspace) = snapshot.workspaces.get(&name.to_lowercase()) {
            return Ok(Observation { workspace: Some(workspace.clone()), fresh: false });
        }
        drop(snapshot);
        let workspace = self.fresh(credentials, owner, name).await?;
        Ok(Observation { workspace, fresh: true })
    }

    /// Reads `owner/name` on its own, now, and remembers the answer.
    pub async fn fresh(&self, credentials: &Resolved, owner: &str, name: &str) -> Result<Option<Workspace>> {
        let workspace = credentials.client.workspace_by_owner_and_name(owner, name).await?;
        self.remember(credentials, owner, name, workspace.clone()).await;
        Ok(workspace)
    }

    /// Records what the operator knows to be newer than the list (a fresh
    /// read, or the workspace after its own build).
    pub async fn remember(&self, credentials: &Resolved, owner: &str, name: &str, workspace: Option<Workspace>) {
        let shared = self.list(credentials, owner);
        let mut snapshot = shared.lock().await;
        match workspace {
            Some(workspace) => snapshot.workspaces.insert(name.to_lowercase(), workspace),
            None => snapshot.workspaces.remove(&name.to_lowercase()),
        };
    }

    /// Probes `agent` through coderd unless a recent probe of a still
    /// connected agent makes it unnecessary.
    pub async fn probe(&self, coder: &CoderClient, agent: &WorkspaceAgent, timeout: Duration) -> ProbeOutcome {
        if agent.status == AgentStatus::Connected {
            let recent = self.reachable.lock().expect("probe cache").get(&agent.id).copied();
            if recent.is_some_and(|at| at.elapsed() < self.settings.probe_interval) {
                return ProbeOutcome::Reachable;
            }
        }
        let outcome = coder.probe_agent(&agent.id, timeout).await;
        let mut reachable = self.reachable.lock().expect("probe cache");
        if outcome.is_reachable() {
            reachable.insert(agent.id.clone(), Instant::now());
        } else {
            reachable.remove(&agent.id);
        }
        // Agents of old builds are never asked about again.
        let horizon = self.settings.probe_interval;
        reachable.retain(|_, at| at.elapsed() < horizon);
        outcome
    }
}

/// Every workspace of `owner`, page by page.
async fn list_all(coder: &CoderClient, owner: &str, page_size: u32) -> Result<HashMap<String, Workspace>> {
    let query = format!("owner:\"{owner}\"");
    let mut workspaces = HashMap::new();
    let mut offset = 0u32;
    loop {
        let page = coder.list_workspaces(&query, page_size, offset).await?;
        let received = page.workspaces.len() as u32;
        for workspace in page.workspaces {
            workspaces.insert(workspace.name.to_lowercase(), workspace);
        }
        offset += received;
        if received == 0 || i64::from(offset) >= page.count {
            return Ok(workspaces);
        }
    }
}
