//! Workspaces: read, search and create.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use jiff::Timestamp;
use serde::Deserialize;

use super::{CoderJson, Pagination, uuid_param};
use crate::error::ApiError;
use crate::model::{NewWorkspace, deleted_workspace, search};
use crate::server::Shared;
use crate::wire::{self, CreateWorkspaceRequest};

pub async fn by_owner_and_name(
    State(shared): State<Arc<Shared>>,
    Path((user, name)): Path<(String, String)>,
) -> Result<Json<wire::Workspace>, ApiError> {
    let now = Timestamp::now();
    let deployment = shared.lock();
    let owner = deployment.user(&user).ok_or_else(ApiError::not_found)?;
    let ws = deployment.workspace_by_name(owner.id, &name, now).ok_or_else(ApiError::not_found)?;
    Ok(Json(wire::Workspace::render(&deployment, ws, now)))
}

#[derive(Deserialize)]
pub struct ByIdQuery {
    #[serde(default)]
    include_deleted: Option<String>,
}

pub async fn by_id(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    Query(query): Query<ByIdQuery>,
) -> Result<Json<wire::Workspace>, ApiError> {
    let id = uuid_param(&id)?;
    let include_deleted = match query.include_deleted.as_deref() {
        None | Some("") => false,
        Some(value) => value.parse().map_err(|_| {
            ApiError::bad_request(format!("Invalid boolean value {value:?} for \"include_deleted\" query param."))
                .validation("deleted", "Must be a valid boolean")
        })?,
    };
    let now = Timestamp::now();
    let deployment = shared.lock();
    let ws = deployment.workspaces.get(&id).ok_or_else(ApiError::not_found)?;
    if deployment.is_deleted(ws, now) && !include_deleted {
        return Err(deleted_workspace(id));
    }
    Ok(Json(wire::Workspace::render(&deployment, ws, now)))
}

#[derive(Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    q: String,
    #[serde(default)]
    limit: Option<String>,
    #[serde(default)]
    offset: Option<String>,
}

pub async fn list(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<ListQuery>,
) -> Result<Json<wire::WorkspacesResponse>, ApiError> {
    let page = Pagination {
        limit: count_param("limit", query.limit.as_deref())?,
        offset: count_param("offset", query.offset.as_deref())?,
    };
    let filter = search::parse(&query.q).map_err(|errors| {
        errors.into_iter().fold(ApiError::bad_request("Invalid workspace search query."), |err, (field, detail)| {
            err.validation(field, detail)
        })
    })?;
    let now = Timestamp::now();
    let deployment = shared.lock();
    let found = deployment.search_workspaces(&filter, now);
    let count = found.len();
    let workspaces = page.apply(found).into_iter().map(|ws| wire::Workspace::render(&deployment, ws, now)).collect();
    Ok(Json(wire::WorkspacesResponse { workspaces, count }))
}

fn count_param(name: &str, value: Option<&str>) -> Result<usize, ApiError> {
    match value {
        None | Some("") => Ok(0),
        Some(value) => value.parse().map_err(|_| {
            ApiError::bad_request("Query parameters have invalid values.")
                .validation(name, format!("Query param {name:?} must be a valid positive integer"))
        }),
    }
}

pub async fn create(
    State(shared): State<Arc<Shared>>,
    Path(user): Path<String>,
    CoderJson(request): CoderJson<CreateWorkspaceRequest>,
) -> Result<(StatusCode, Json<wire::Workspace>), ApiError> {
    create_workspace(&shared, &user, None, request)
}

/// The older, deprecated route, which also pins the organization.
pub async fn create_in_organization(
    State(shared): State<Arc<Shared>>,
    Path((org, user)): Path<(String, String)>,
    CoderJson(request): CoderJson<CreateWorkspaceRequest>,
) -> Result<(StatusCode, Json<wire::Workspace>), ApiError> {
    create_workspace(&shared, &user, Some(&org), request)
}

fn create_workspace(
    shared: &Shared,
    user: &str,
    organization: Option<&str>,
    request: CreateWorkspaceRequest,
) -> Result<(StatusCode, Json<wire::Workspace>), ApiError> {
    let now = Timestamp::now();
    let mut deployment = shared.lock();
    let owner_id = deployment.user(user).ok_or_else(ApiError::not_found)?.id;
    let organization_id = match organization {
        None => None,
        Some(org) => Some(deployment.organization(org).ok_or_else(ApiError::not_found)?.id),
    };
    let new = NewWorkspace {
        name: request.name,
        template_id: wire::set(request.template_id),
        template_version_id: wire::set(request.template_version_id),
        preset_id: wire::set(request.template_version_preset_id),
        parameters: wire::values(request.rich_parameter_values),
        ttl_ms: request.ttl_ms,
        autostart_schedule: request.autostart_schedule,
        automatic_updates: request.automatic_updates,
    };
    let id = deployment.create_workspace(owner_id, organization_id, &new, now)?;
    let ws = &deployment.workspaces[&id];
    Ok((StatusCode::CREATED, Json(wire::Workspace::render(&deployment, ws, now))))
}
