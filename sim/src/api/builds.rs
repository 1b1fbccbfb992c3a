//! Workspace builds: list, create, read, cancel.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use jiff::Timestamp;

use super::{CoderJson, Pagination, uuid_param};
use crate::error::ApiError;
use crate::model::{NewBuild, Transition};
use crate::server::Shared;
use crate::wire::{self, CreateWorkspaceBuildRequest};

/// Newest first, as coderd lists them.
pub async fn list(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    Query(page): Query<Pagination>,
) -> Result<Json<Vec<wire::WorkspaceBuild>>, ApiError> {
    let id = uuid_param(&id)?;
    let now = Timestamp::now();
    let deployment = shared.lock();
    let ws = deployment.workspaces.get(&id).ok_or_else(ApiError::not_found)?;
    let builds = ws.builds.iter().rev().filter_map(|id| deployment.builds.get(id));
    let builds =
        page.apply(builds).into_iter().map(|build| wire::WorkspaceBuild::render(&deployment, build, now)).collect();
    Ok(Json(builds))
}

pub async fn create(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    CoderJson(request): CoderJson<CreateWorkspaceBuildRequest>,
) -> Result<(StatusCode, Json<wire::WorkspaceBuild>), ApiError> {
    let id = uuid_param(&id)?;
    let transition = Transition::parse(&request.transition).ok_or_else(|| {
        let tag = if request.transition.is_empty() { "required" } else { "oneof" };
        ApiError::invalid_field("transition", tag, &request.transition)
    })?;
    if let Some(level) = request.log_level.as_deref().filter(|level| !level.is_empty() && *level != "debug") {
        return Err(ApiError::invalid_field("log_level", "oneof", level));
    }
    // The reasons a client may give (codersdk's CreateWorkspaceBuildReason).
    const REASONS: &[&str] =
        &["dashboard", "cli", "ssh_connection", "vscode_connection", "jetbrains_connection", "task_manual_pause"];
    let reason = request.reason.filter(|reason| !reason.is_empty());
    if let Some(reason) = reason.as_deref().filter(|reason| !REASONS.contains(reason)) {
        return Err(ApiError::invalid_field("reason", "oneof", reason));
    }
    let new = NewBuild {
        transition,
        template_version_id: wire::set(request.template_version_id),
        preset_id: wire::set(request.template_version_preset_id),
        parameters: wire::values(request.rich_parameter_values),
        reason,
    };
    let now = Timestamp::now();
    let mut deployment = shared.lock();
    let build_id = deployment.create_build(id, &new, now)?;
    let build = &deployment.builds[&build_id];
    Ok((StatusCode::CREATED, Json(wire::WorkspaceBuild::render(&deployment, build, now))))
}

pub async fn by_id(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> Result<Json<wire::WorkspaceBuild>, ApiError> {
    let id = uuid_param(&id)?;
    let deployment = shared.lock();
    let build = deployment.builds.get(&id).ok_or_else(ApiError::not_found)?;
    Ok(Json(wire::WorkspaceBuild::render(&deployment, build, Timestamp::now())))
}

pub async fn cancel(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> Result<Json<wire::Message>, ApiError> {
    let id = uuid_param(&id)?;
    shared.lock().cancel_build(id, Timestamp::now())?;
    Ok(Json(wire::Message { message: "Job has been marked as canceled...".to_owned() }))
}
