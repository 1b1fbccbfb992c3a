//! Gather: everything the decision core needs, and every read of Coder a
//! reconcile makes itself: the credentials and the owner as tenancy admits
//! them, the template (cached), what the index holds for the workspace and
//! its agent's latest probe, whether another resource claims the workspace,
//! and, before an action, a fresh read of the one workspace and its chat
//! ([`Gathered::refresh`], [`fresh_read`]).
//!
//! [`admit`] is shared with the deletion path: the one-actor rule is the
//! same for a reconcile and a cleanup.

use std::sync::Arc;

use jiff::Timestamp;

use super::Context;
use crate::claims::{Standing, Verdict, WorkspaceKey};
use crate::coder::{AgentStatus, Chat, CoderError, Workspace, chat_agent};
use crate::crd::{ChatWorkspace, ChatWorkspaceStatus, OwnershipStatus, RecoveryPolicy};
use crate::credentials::Resolved;
use crate::decision::{self, Decision, Inputs, Observed, ObservedChat, Probe};
use crate::error::{Error, Result};
use crate::index::{ChatLookup, CoderIndex, Lookup};
use crate::templates::TemplateInfo;
use crate::tenancy::{self, ResolvedOwner};

/// One resource's inputs to the decision core.
pub(super) struct Gathered<'a> {
    pub resource: &'a ChatWorkspace,
    pub previous: &'a ChatWorkspaceStatus,
    pub context: &'a Context,
    pub policy: RecoveryPolicy,
    pub generation: i64,
    pub credentials: Resolved,
    /// The owner's username, which the index searches.
    pub owner: String,
    pub owner_id: String,
    pub name: String,
    /// The workspace this resource was admitted to drive, for the claims.
    pub key: WorkspaceKey,
    /// Taken by the act step.
    pub template: Option<Result<Arc<TemplateInfo>>>,
    pub workspace: Option<Workspace>,
    /// `workspace` was read just now, on its own (not from the index).
    pub fresh: bool,
    pub probe: Option<Probe>,
    pub conflict: Option<String>,
    /// An older resource that may drive the same workspace is not settled
    /// yet: nothing is decided until it is.
    pub claim_waits: bool,
    /// What to record in `status.ownership` (`None`: nothing new).
    pub ownership: Option<OwnershipStatus>,
    /// The chat bound to the workspace, as the index holds it.
    pub chat: ChatLookup,
    /// `chat` was read just now, on its own.
    pub chat_fresh: bool,
}

/// Reads the workspace on its own, now, and tells the index: by `id` once
/// it is known (a rename is followed; 404 or 410 means it was deleted),
/// else by `owner/name`.
pub(super) async fn fresh_read(
    index: &CoderIndex,
    credentials: &Resolved,
    owner: &str,
    name: &str,
    id: Option<&str>,
) -> Result<Option<Workspace>> {
    let workspace = match id {
        Some(id) => match credentials.client.workspace(id).await {
            Ok(workspace) => Some(workspace),
            Err(CoderError::NotFound { .. }) => None,
            Err(error) => return Err(error.into()),
        },
        None => credentials.client.workspace_by_owner_and_name(owner, name).await?,
    };
    match &workspace {
        Some(found) => index.record(credentials, owner, &found.name, Some(found.clone())),
        None => index.record(credentials, owner, name, None),
    }
    Ok(workspace)
}

/// What a resource's tenancy admitted it to drive.
pub(super) struct Admitted {
    pub credentials: Resolved,
    pub owner: ResolvedOwner,
    pub key: WorkspaceKey,
}

/// The credentials and the owner `resource` drives, once tenancy admits it,
/// recorded as its standing in the claims index. A resource refused for
/// good (tenancy, an unusable Secret or spec) claims nothing and so blocks
/// nobody; one that failed for a moment keeps the standing it had.
pub(super) async fn admit(resource: &ChatWorkspace, context: &Context) -> Result<Admitted> {
    let admitted = async {
        let credentials = context.credentials.for_resource(&context.kube, resource).await?;
        // Before anything is sent to Coder for this resource.
        let owner = context.tenancy.admit(resource, &credentials).await?;
        Ok::<_, Error>((credentials, owner))
    }
    .await;
    match admitted {
        Ok((credentials, owner)) => {
            let key = WorkspaceKey::new(credentials.client.base_url(), &owner.id, &resource.workspace_name());
            context.claims.settle(resource, Standing::Admitted(key));
            Ok(Admitted { credentials, owner, key })
        }
        Err(error) => {
            if !error.is_transient() {
                context.claims.settle(resource, Standing::Idle);
            }
            Err(error)
        }
    }
}

/// A workspace read by id must still be the resolved owner's: a resource
/// whose credentials changed must not drive a workspace its new owner does
/// not own, whatever its status remembers.
pub(super) fn owned_by(workspace: Option<Workspace>, owner: &ResolvedOwner) -> Result<Option<Workspace>> {
    match workspace {
        Some(found) if !found.owner_id.eq_ignore_ascii_case(&owner.id) => {
            Err(Error::WorkspaceOfAnotherOwner { id: found.id, owner: owner.username.clone() })
        }
        workspace => Ok(workspace),
    }
}

/// What gathering found.
pub(super) enum Found<'a> {
    Gathered(Box<Gathered<'a>>),
    /// The index has not listed the owner's workspaces yet.
    NotListed,
    /// An older resource that may drive the same workspace is not settled.
    ClaimWaits,
}

pub(super) async fn gather<'a>(
    resource: &'a ChatWorkspace,
    previous: &'a ChatWorkspaceStatus,
    context: &'a Context,
) -> Result<Found<'a>> {
    let policy = match resource.spec.recovery.policy() {
        Ok(policy) => policy,
        Err(invalid) => {
            context.claims.settle(resource, Standing::Idle);
            return Err(Error::InvalidSpec(invalid));
        }
    };
    let Admitted { credentials, owner, key } = admit(resource, context).await?;
    let name = resource.workspace_name();
    let known_id = previous.workspace.as_ref().map(|w| w.id.clone());
    // The index searches by username: coderd's `owner:` matches no id.
    let by_name = match context.index.observe(resource, &credentials, &owner.username, &name) {
        Lookup::Unknown => return Ok(Found::NotListed),
        Lookup::Failing(error) => return Err(error.into()),
        Lookup::Absent => None,
        Lookup::Present(workspace) => Some(workspace),
    };
    // Once its id is known, the workspace is followed by id: one renamed in
    // Coder is still this resource's, and a new one of the old name is not.
    let workspace = match known_id {
        Some(id) if by_name.as_ref().is_none_or(|w| w.id != id) => {
            context.index.by_id(&credentials, &owner.username, &id)
        }
        _ => by_name,
    };
    let workspace = owned_by(workspace.map(Arc::unwrap_or_clone), &owner)?;
    let conflict = match context.claims.verdict(resource, key, workspace.as_ref().map(|w| w.id.as_str())) {
        Verdict::Drives => None,
        Verdict::Waits => return Ok(Found::ClaimWaits),
        Verdict::Conflict(other) => Some(other),
    };
    let template =
        context.templates.resolve(&credentials, resource.spec.organization.as_deref(), &resource.spec.template).await;
    let mut gathered = Gathered {
        resource,
        previous,
        context,
        policy,
        generation: resource.metadata.generation.unwrap_or_default(),
        credentials,
        owner: owner.username,
        owner_id: owner.id,
        name,
        key,
        template: Some(template),
        workspace,
        fresh: false,
        probe: None,
        conflict,
        claim_waits: false,
        ownership: None,
        chat: ChatLookup::Unknown,
        chat_fresh: false,
    };
    gathered.probe = gathered.latest_probe();
    gathered.chat = gathered.indexed_chat();
    gathered.consent().await?;
    Ok(Found::Gathered(Box::new(gathered)))
}

/// Whether this resource may drive the observed workspace: refused for one
/// it did not create unless `spec.adopt`; what to record in
/// `status.ownership` otherwise (`None`: nothing new).
pub(super) async fn consent(
    resource: &ChatWorkspace,
    previous: &ChatWorkspaceStatus,
    conflict: &Option<String>,
    workspace: Option<&Workspace>,
    (context, credentials): (&Context, &Resolved),
    owner: &str,
) -> Result<Option<OwnershipStatus>> {
    let Some(workspace) = workspace.filter(|_| conflict.is_none()) else { return Ok(None) };
    let ownership = previous.ownership.as_ref();
    let unrecorded = ownership.is_none_or(|o| o.workspace_id != workspace.id);
    let pending = ownership.is_some_and(|o| o.workspace_id.is_empty());
    let made_by_us = if unrecorded && pending {
        let token_user = context.tenancy.owners.resolve(credentials, &tenancy::OwnerRef::TokenUser).await?;
        tenancy::adoption::made_by_us(
            ownership,
            workspace.created_at,
            workspace.latest_build.build_number,
            &workspace.latest_build.initiator_id,
            &token_user.id,
        )
    } else {
        false
    };
    let previously_driven = previous.workspace.as_ref().map(|w| w.id.as_str());
    match tenancy::adoption::consent(resource.spec.adopt, ownership, previously_driven, &workspace.id, made_by_us) {
        tenancy::adoption::Consent::Keep => Ok(None),
        tenancy::adoption::Consent::Record(origin) => Ok(Some(OwnershipStatus {
            workspace_id: workspace.id.clone(),
            origin,
            time: Some(decision::whole_seconds(Timestamp::now())),
        })),
        tenancy::adoption::Consent::Refused => {
            Err(Error::AdoptionNotConsented(tenancy::adoption::refusal(owner, &workspace.name)))
        }
    }
}

impl Gathered<'_> {
    pub fn decide(&self) -> Decision {
        self.decide_after(self.previous)
    }

    /// Decides on this pass's observation from `previous`, e.g. the status
    /// a first decision of this pass produced.
    pub fn decide_after(&self, previous: &ChatWorkspaceStatus) -> Decision {
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
            previous,
            observed,
            chat: match &self.chat {
                ChatLookup::Unknown => ObservedChat::Unknown,
                ChatLookup::None => ObservedChat::None,
                ChatLookup::Bound(chat) => ObservedChat::Bound { chat, fresh: self.chat_fresh },
            },
            now: Timestamp::now(),
            requeue: self.context.settings.requeue,
            start_request: super::start_request(self.resource),
            restart_request: super::restart_request(self.resource),
        })
    }

    /// Reads the workspace again, on its own, and takes the freshest probe.
    pub async fn refresh(&mut self, context: &Context) -> Result<()> {
        let known_id = self.previous.workspace.as_ref().map(|w| w.id.as_str());
        let workspace = fresh_read(&context.index, &self.credentials, &self.owner, &self.name, known_id).await?;
        let owner = ResolvedOwner { id: self.owner_id.clone(), username: self.owner.clone() };
        self.workspace = owned_by(workspace, &owner)?;
        self.fresh = true;
        (self.conflict, self.claim_waits) =
            match context.claims.verdict(self.resource, self.key, self.workspace.as_ref().map(|w| w.id.as_str())) {
                Verdict::Drives => (None, false),
                Verdict::Waits => (None, true),
                Verdict::Conflict(other) => (Some(other), false),
            };
        self.probe = self.latest_probe();
        self.chat = self.indexed_chat();
        if self.resource.spec.chat.interrupt_on_recovery && self.agent_disconnected() {
            // A recovery's stop may come next: whether the chat runs a turn
            // on the dead agent must be known now, not from the index.
            if let (ChatLookup::Bound(chat), Some(workspace)) = (&self.chat, &self.workspace) {
                let fresh = self.credentials.client.chat(&chat.id).await?;
                let workspace_id = workspace.id.clone();
                context.index.record_chat(&self.credentials, &self.owner, &workspace_id, fresh.clone(), true);
                self.chat = ChatLookup::Bound(Arc::new(fresh));
                self.chat_fresh = true;
            }
        }
        self.consent().await
    }

    /// Adoption consent for the workspace observed now (see [`consent`]).
    async fn consent(&mut self) -> Result<()> {
        let context = self.context;
        self.ownership = consent(
            self.resource,
            self.previous,
            &self.conflict,
            self.workspace.as_ref(),
            (context, &self.credentials),
            &self.owner,
        )
        .await?;
        Ok(())
    }

    /// Records what a chat request answered, so this pass and the index
    /// see it.
    pub fn chat_changed(&mut self, context: &Context, chat: Chat) {
        let Some(workspace_id) = self.workspace.as_ref().map(|w| w.id.clone()) else { return };
        context.index.record_chat(&self.credentials, &self.owner, &workspace_id, chat, false);
        self.chat = self.indexed_chat();
    }

    fn indexed_chat(&self) -> ChatLookup {
        match &self.workspace {
            Some(workspace) => self.context.index.chat(&self.credentials, &self.owner, &workspace.id),
            None => ChatLookup::None,
        }
    }

    /// The chat agent is disconnected or never connected: either may be
    /// recovered next.
    fn agent_disconnected(&self) -> bool {
        self.workspace.as_ref().is_some_and(|workspace| {
            chat_agent(&workspace.latest_build, self.resource.spec.agent_name.as_deref())
                .is_some_and(|agent| matches!(agent.status, AgentStatus::Disconnected | AgentStatus::Timeout))
        })
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
        let record = self.context.index.probe(&self.credentials, &agent)?;
        Some(Probe {
            fresh: record.at.elapsed() <= self.context.index.settings().probe_fresh,
            failures: record.failures,
            outcome: record.outcome,
        })
    }
}
