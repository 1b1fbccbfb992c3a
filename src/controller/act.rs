//! Act: every change a reconcile asks of Coder. [`perform`] carries out
//! the one action the decision asked for (the create, the build, the chat
//! requests) and says what Coder made of it ([`Acted`]). What it acts on
//! was read just before, on its own (`gather::fresh_read`).

use tracing::info;

use crate::coder::{
    CoderClient, CoderError, CreateWorkspaceBuildRequest, CreateWorkspaceRequest, ParameterValue,
    TemplateVersionParameter, Workspace, WorkspaceBuild, WorkspaceTransition,
};
use crate::crd::{ChatWorkspace, Parameter};
use crate::decision::{Action, BuildPlan, ChatPlan};
use crate::error::{Error, Result};
use crate::templates::TemplateInfo;

/// What the action is carried out on.
pub(super) struct Target<'a> {
    pub resource: &'a ChatWorkspace,
    pub coder: &'a CoderClient,
    /// The owner's username and the workspace's name.
    pub owner: &'a str,
    pub name: &'a str,
    /// The workspace as read just before (for a build).
    pub workspace: Option<&'a Workspace>,
    /// The template (for a create).
    pub template: Option<&'a TemplateInfo>,
}

/// What carrying out one action produced.
pub(super) enum Acted {
    /// The decision asked for nothing.
    Nothing,
    /// The turns running on the dead agent, interrupted before the
    /// recovery's stop; a failure is carried, not raised, because a chat
    /// that cannot be interrupted must not hold up the recovery.
    ChatsInterrupted { plan: ChatPlan, result: Result<ChatOutcome> },
    /// The chats' context re-pinned to the new agent; once per build, so a
    /// failure is carried too (the chat's next turn re-pins it anyway).
    ChatContextRefreshed { plan: ChatPlan, result: Result<ChatOutcome> },
    /// The workspace, created from `template`.
    Created { workspace: Workspace, template: String },
    /// The workspace with the build just requested as its latest.
    BuildRequested { workspace: Workspace, plan: BuildPlan },
    /// The name was taken meanwhile: Coder made nothing. Adopted on the next
    /// pass (with consent) rather than guessed at now.
    NameTaken,
    /// A build became active between the read and the request: Coder made
    /// nothing, and a second build is never stacked on it.
    BuildUnderWay,
}

impl Acted {
    /// The workspace as the action left it, to be described and indexed.
    pub fn workspace(&self) -> Option<&Workspace> {
        match self {
            Acted::Created { workspace, .. } | Acted::BuildRequested { workspace, .. } => Some(workspace),
            _ => None,
        }
    }
}

/// Carries out `action` on `target`. Errors are Coder's refusals and
/// failures of a create or a build; chat requests never fail the pass.
pub(super) async fn perform(action: &Action, target: &Target<'_>) -> Result<Acted> {
    let coder = target.coder;
    match action {
        Action::None | Action::Refresh => Ok(Acted::Nothing),
        Action::InterruptChats(plan) => {
            Ok(Acted::ChatsInterrupted { plan: plan.clone(), result: interrupt_chats(plan, coder).await })
        }
        Action::RefreshChatContext(plan) => {
            Ok(Acted::ChatContextRefreshed { plan: plan.clone(), result: refresh_chat_context(plan, coder).await })
        }
        Action::CreateWorkspace => {
            let template = target.template.expect("a create is decided with its template resolved");
            match create_workspace(target.resource, target.owner, target.name, template, coder).await {
                Ok(workspace) => Ok(Acted::Created { workspace, template: template.template.name.clone() }),
                Err(Error::Coder(CoderError::Conflict { .. })) => Ok(Acted::NameTaken),
                Err(error) => Err(error),
            }
        }
        Action::Build(plan) => {
            let current = target.workspace.expect("a build is only decided for an observed workspace");
            match issue_build(current, plan, &target.resource.spec.parameters, coder).await {
                Ok(build) => {
                    let mut workspace = current.clone();
                    workspace.latest_build = build;
                    Ok(Acted::BuildRequested { workspace, plan: plan.clone() })
                }
                Err(Error::Coder(CoderError::Conflict { .. })) => Ok(Acted::BuildUnderWay),
                Err(error) => Err(error),
            }
        }
    }
}

async fn create_workspace(
    resource: &ChatWorkspace,
    owner: &str,
    name: &str,
    template: &TemplateInfo,
    coder: &CoderClient,
) -> Result<Workspace> {
    let preset = resource.spec.preset.as_ref().map(|wanted| template.preset(wanted)).transpose()?;
    let request = CreateWorkspaceRequest {
        name: name.to_string(),
        template_id: resource.spec.template.version_id.is_none().then(|| template.template.id.clone()),
        template_version_id: resource.spec.template.version_id.clone(),
        template_version_preset_id: preset.map(|p| p.id.clone()),
        rich_parameter_values: resource
            .spec
            .parameters
            .iter()
            .map(|p| ParameterValue { name: p.name.clone(), value: p.value.clone() })
            .collect(),
        claim_prebuild_if_available: preset.and_then(|p| p.desired_prebuild_instances).filter(|n| *n > 0).map(|_| true),
        ..CreateWorkspaceRequest::default()
    };
    info!(workspace = name, owner, template = %template.template.name, "creating workspace");
    Ok(coder.create_workspace(owner, &request).await?)
}

/// Requests the build of `plan`. A build of an existing workspace uses its
/// current values, never a preset (chatd's start_workspace); the one
/// exception is a start onto a new template version (the template requires
/// its active version), which sends the values in `supplied` of parameters
/// that version adds, and only those: the others, immutable ones included,
/// carry over in Coder.
pub(super) async fn issue_build(
    workspace: &Workspace,
    plan: &BuildPlan,
    supplied: &[Parameter],
    coder: &CoderClient,
) -> Result<WorkspaceBuild> {
    let new_version = plan
        .template_version_id
        .as_deref()
        .filter(|v| plan.transition == WorkspaceTransition::Start && *v != workspace.latest_build.template_version_id);
    let added = match new_version {
        Some(version) => added_parameters(coder, &workspace.latest_build.template_version_id, version).await,
        None => Vec::new(),
    };
    let request = CreateWorkspaceBuildRequest {
        template_version_id: plan.template_version_id.clone(),
        rich_parameter_values: supplied
            .iter()
            .filter(|p| added.iter().any(|a| a.name == p.name))
            .map(|p| ParameterValue { name: p.name.clone(), value: p.value.clone() })
            .collect(),
        ..CreateWorkspaceBuildRequest::new(plan.transition)
    };
    info!(
        workspace = %workspace.name, owner = %workspace.owner_name, transition = plan.transition.as_str(),
        reason = plan.reason.as_str(), new_values = request.rich_parameter_values.len(), "requesting build"
    );
    match coder.create_build(&workspace.id, &request).await {
        Ok(build) => Ok(build),
        Err(error) => {
            let Some(version) = new_version else { return Err(error.into()) };
            let missing = missing_required(&error, &added, supplied);
            if missing.is_empty() {
                return Err(error.into());
            }
            Err(Error::NewParameterRequired {
                template: workspace.template_name.clone(),
                version: version.to_string(),
                parameters: missing,
                source: Box::new(error),
            })
        }
    }
}

/// Parameters of `version` that `current` does not have. Empty when either
/// cannot be read: the start then sends no values, and Coder says what it
/// misses.
async fn added_parameters(coder: &CoderClient, current: &str, version: &str) -> Vec<TemplateVersionParameter> {
    let (Ok(old), Ok(new)) =
        (coder.template_version_parameters(current).await, coder.template_version_parameters(version).await)
    else {
        return Vec::new();
    };
    new.into_iter().filter(|p| !old.iter().any(|o| o.name == p.name)).collect()
}

/// The required parameters a refused start lacks: those coderd names
/// (`CoderError::missing_parameters`), else the added ones that are
/// required, have no default and no value.
fn missing_required(error: &CoderError, added: &[TemplateVersionParameter], supplied: &[Parameter]) -> Vec<String> {
    let Some(named) = error.missing_parameters() else { return Vec::new() };
    if !named.is_empty() {
        return named;
    }
    added
        .iter()
        .filter(|p| p.required && p.default_value.is_empty() && !supplied.iter().any(|s| s.name == p.name))
        .map(|p| p.name.clone())
        .collect()
}

/// What a chat action did, for Events and the index.
pub(super) struct ChatOutcome {
    /// The chats as the requests answered.
    pub chats: Vec<crate::coder::Chat>,
    /// Chats that no longer needed it (an interrupt answered 409: no turn).
    pub skipped: usize,
}

/// Interrupts the turns running on the dead agent, before the recovery's stop.
async fn interrupt_chats(plan: &ChatPlan, coder: &CoderClient) -> Result<ChatOutcome> {
    let mut outcome = ChatOutcome { chats: Vec::new(), skipped: 0 };
    for id in &plan.chat_ids {
        info!(chat = %id, agent = %plan.agent_name, "interrupting the chat's turn before the recovery's stop");
        match coder.interrupt_chat(id).await {
            Ok(chat) => outcome.chats.push(chat),
            // The turn ended meanwhile.
            Err(CoderError::Conflict { .. }) => outcome.skipped += 1,
            Err(error) => return Err(error.into()),
        }
    }
    Ok(outcome)
}

/// Asks coderd to re-pin the chats' context once the new chat agent is
/// ready. coderd v2.36.1 re-pins to the agent stored on the chat, which
/// after a recovery is still the old one; the chat's next turn binds it to
/// the new agent (docs/coder-api.md, "Context re-pin").
async fn refresh_chat_context(plan: &ChatPlan, coder: &CoderClient) -> Result<ChatOutcome> {
    let mut outcome = ChatOutcome { chats: Vec::new(), skipped: 0 };
    for id in &plan.chat_ids {
        info!(chat = %id, agent = %plan.agent_name, "re-pinning the chat's context to the new agent");
        outcome.chats.push(coder.refresh_chat_context(id).await?);
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coder::FieldError;

    fn parameter(name: &str, required: bool, default: &str) -> TemplateVersionParameter {
        serde_json::from_value(serde_json::json!({"name": name, "required": required, "default_value": default}))
            .unwrap()
    }

    #[test]
    fn a_refused_start_names_the_required_parameters_coderd_lists() {
        // coderd v2.36.1's dynamic flow (the default of new templates).
        let dynamic = CoderError::Validation {
            message: "Unable to validate parameters".into(),
            validations: vec![
                FieldError {
                    field: "zone".into(),
                    detail: "Required parameter not provided; parameter value is null".into(),
                },
                FieldError {
                    field: "cpu".into(),
                    detail: "Invalid parameter value according to 'validation' block".into(),
                },
            ],
        };
        assert_eq!(missing_required(&dynamic, &[], &[]), ["zone"]);
        // Its classic flow: one parameter, named in the message.
        let classic = CoderError::BadRequest {
            status: 400,
            message: "Unable to validate parameter \"zone\"".into(),
            detail: "parameter validation failed\nParameter \"zone\" is required but not provided".into(),
        };
        assert_eq!(missing_required(&classic, &[], &[]), ["zone"]);
    }

    #[test]
    fn without_names_from_coderd_the_added_required_ones_without_a_value_count() {
        let added = [parameter("zone", true, ""), parameter("size", true, "m"), parameter("tier", true, "")];
        let supplied = [Parameter { name: "tier".into(), value: "gold".into() }];
        let unnamed = CoderError::Validation { message: "Unable to validate parameters".into(), validations: vec![] };
        assert_eq!(missing_required(&unnamed, &added, &supplied), ["zone"]);
        // Other refusals are not about parameters.
        let dormant = CoderError::Forbidden { message: "Workspace is dormant.".into() };
        assert!(missing_required(&dormant, &added, &[]).is_empty());
    }
}
