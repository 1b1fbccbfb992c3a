//! Gather: everything the decision core needs, without talking to Coder
//! (except `refresh`, the fresh read before an action): the credentials, the
//! template (cached), what the index holds for the workspace and its agent's
//! latest probe, and whether another resource claims the workspace.

use std::sync::Arc;

use jiff::Timestamp;

use super::{Context, act};
use crate::coder::Workspace;
use crate::crd::{ChatWorkspace, ChatWorkspaceStatus, RecoveryPolicy};
use crate::credentials::Resolved;
use crate::decision::{self, Decision, Inputs, Observed, Probe};
use crate::error::{Error, Result};
use crate::index::Lookup;
use crate::templates::TemplateInfo;

/// One resource's inputs to the decision core.
pub(super) struct Gathered<'a> {
    pub resource: &'a ChatWorkspace,
    pub previous: &'a ChatWorkspaceStatus,
    pub context: &'a Context,
    pub policy: RecoveryPolicy,
    pub generation: i64,
    pub credentials: Resolved,
    pub owner: String,
    pub name: String,
    /// Taken by the act step.
    pub template: Option<Result<Arc<TemplateInfo>>>,
    pub workspace: Option<Workspace>,
    /// `workspace` was read just now, on its own (not from the index).
    pub fresh: bool,
    pub probe: Option<Probe>,
    pub conflict: Option<String>,
}

/// `None` while the index has not listed the owner's workspaces yet.
pub(super) async fn gather<'a>(
    resource: &'a ChatWorkspace,
    previous: &'a ChatWorkspaceStatus,
    context: &'a Context,
) -> Result<Option<Gathered<'a>>> {
    let policy = resource.spec.recovery.policy().map_err(Error::InvalidSpec)?;
    let credentials = context.credentials.for_resource(&context.kube, resource).await?;
    let owner = resource.spec.owner.clone().unwrap_or_else(|| "me".into());
    let name = resource.workspace_name();
    let workspace = match context.index.observe(resource, &credentials, &owner, &name) {
        Lookup::Unknown => return Ok(None),
        Lookup::Failing(error) => return Err(error.into()),
        Lookup::Absent => None,
        Lookup::Present(workspace) => Some(Arc::unwrap_or_clone(workspace)),
    };
    let template =
        context.templates.resolve(&credentials, resource.spec.organization.as_deref(), &resource.spec.template).await;
    let conflict = context.claims.conflicting(resource, workspace.as_ref().map(|w| w.id.as_str()));
    let mut gathered = Gathered {
        resource,
        previous,
        context,
        policy,
        generation: resource.metadata.generation.unwrap_or_default(),
        credentials,
        owner,
        name,
        template: Some(template),
        workspace,
        fresh: false,
        probe: None,
        conflict,
    };
    gathered.probe = gathered.latest_probe();
    Ok(Some(gathered))
}

impl Gathered<'_> {
    pub fn decide(&self) -> Decision {
        let observed = match &self.conflict {
            Some(other) => Observed::Conflict { other: other.clone() },
            None => Observed::Workspace {
                workspace: self.workspace.as_ref(),
                fresh: self.fresh,
                probe: self.probe.as_ref(),
            },
        };
        decision::decide(&Inputs {
            spec: &self.resource.spec,
            policy: self.policy,
            generation: self.generation,
            previous: self.previous,
            observed,
            now: Timestamp::now(),
            requeue: self.context.settings.requeue,
            start_request: super::start_request(self.resource),
        })
    }

    /// Reads the workspace again, on its own, and takes the freshest probe.
    pub async fn refresh(&mut self, context: &Context) -> Result<()> {
        self.workspace = act::fresh_read(&context.index, &self.credentials, &self.owner, &self.name).await?;
        self.fresh = true;
        self.conflict = context.claims.conflicting(self.resource, self.workspace.as_ref().map(|w| w.id.as_str()));
        self.probe = self.latest_probe();
        Ok(())
    }

    /// The id of the chat agent the core would judge, if any.
    pub fn chat_agent_id(&self) -> Option<String> {
        let workspace = self.workspace.as_ref()?;
        decision::needs_probe(workspace, self.resource.spec.agent_name.as_deref()).map(|agent| agent.id.clone())
    }

    /// The index's latest probe of the chat agent; `fresh` when it is recent
    /// enough for a destructive step.
    fn latest_probe(&self) -> Option<Probe> {
        let agent = self.chat_agent_id()?;
        let record = self.context.index.probe(&agent)?;
        Some(Probe {
            fresh: record.at.elapsed() <= self.context.index.settings().probe_fresh,
            failures: record.failures,
            outcome: record.outcome,
        })
    }
}
