//! Act: the only Coder I/O of a reconcile. A fresh read of the one
//! workspace before a destructive step, then the create or the build.

use tracing::info;

use crate::coder::{
    CoderClient, CoderError, CreateWorkspaceBuildRequest, CreateWorkspaceRequest, ParameterValue,
    TemplateVersionParameter, Workspace, WorkspaceBuild, WorkspaceTransition,
};
use crate::crd::{ChatWorkspace, Parameter};
use crate::credentials::Resolved;
use crate::decision::{BuildPlan, ChatPlan};
use crate::error::{Error, Result};
use crate::index::CoderIndex;
use crate::templates::TemplateInfo;

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

pub(super) async fn create_workspace(
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

/// The required parameters a refused start lacks: those coderd names (its
/// dynamic flow lists them as validations, its classic flow in the message),
/// else the added ones that are required, have no default and no value.
fn missing_required(error: &CoderError, added: &[TemplateVersionParameter], supplied: &[Parameter]) -> Vec<String> {
    let required = |text: &str| {
        let text = text.to_ascii_lowercase();
        text.contains("required parameter not provided") || text.contains("is required but not provided")
    };
    let named: Vec<String> = match error {
        CoderError::Validation { validations, .. } => {
            validations.iter().filter(|v| required(&v.detail)).map(|v| v.field.clone()).collect()
        }
        // e.g. `Unable to validate parameter "zone"` with the reason in detail.
        CoderError::BadRequest { message, detail, .. } if required(detail) => {
            message.split('"').nth(1).map(str::to_string).into_iter().collect()
        }
        _ => return Vec::new(),
    };
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
pub(super) async fn interrupt_chats(plan: &ChatPlan, coder: &CoderClient) -> Result<ChatOutcome> {
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

/// Re-pins the chats' context to the new, ready chat agent.
pub(super) async fn refresh_chat_context(plan: &ChatPlan, coder: &CoderClient) -> Result<ChatOutcome> {
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
