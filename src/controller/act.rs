//! Act: the only Coder I/O of a reconcile. A fresh read of the one
//! workspace before a destructive step, then the create or the build.

use tracing::info;

use crate::coder::{
    CoderClient, CoderError, CreateWorkspaceBuildRequest, CreateWorkspaceRequest, ParameterValue, Workspace,
    WorkspaceBuild,
};
use crate::crd::ChatWorkspace;
use crate::credentials::Resolved;
use crate::decision::BuildPlan;
use crate::error::Result;
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

pub(super) async fn issue_build(
    workspace: &Workspace,
    plan: &BuildPlan,
    coder: &CoderClient,
) -> Result<WorkspaceBuild> {
    // Never a preset or parameters: a build of an existing workspace uses
    // its current values (chatd's start_workspace).
    let request = CreateWorkspaceBuildRequest {
        template_version_id: plan.template_version_id.clone(),
        ..CreateWorkspaceBuildRequest::new(plan.transition)
    };
    info!(
        workspace = %workspace.name, owner = %workspace.owner_name, transition = plan.transition.as_str(),
        reason = plan.reason.as_str(), "requesting build"
    );
    Ok(coder.create_build(&workspace.id, &request).await?)
}
