//! Users, organizations and build info.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use serde_json::json;

use super::Pagination;
use crate::error::ApiError;
use crate::server::Shared;
use crate::wire;

pub async fn user(State(shared): State<Arc<Shared>>, Path(user): Path<String>) -> Result<Json<wire::User>, ApiError> {
    let deployment = shared.lock();
    let user = deployment.user(&user).ok_or_else(ApiError::not_found)?;
    Ok(Json(wire::User::render(&deployment, user)))
}

/// `GET /users`: like coderd, ordered by lower-cased username, a `limit`
/// of 0 for all of them; an Owner reads every user, a member only
/// themselves.
pub async fn list(State(shared): State<Arc<Shared>>, Query(page): Query<Pagination>) -> Json<wire::UsersResponse> {
    let deployment = shared.lock();
    let reads_all = deployment.token_reads_all_workspaces();
    let mut users: Vec<_> = deployment.users.iter().filter(|user| reads_all || user.id == deployment.me).collect();
    users.sort_by_key(|user| user.username.to_lowercase());
    let count = users.len();
    let users = page.apply(users).into_iter().map(|user| wire::User::render(&deployment, user)).collect();
    Json(wire::UsersResponse { users, count })
}

/// Every seeded user belongs to every organization.
pub async fn organizations(
    State(shared): State<Arc<Shared>>,
    Path(user): Path<String>,
) -> Result<Json<Vec<wire::Organization>>, ApiError> {
    let deployment = shared.lock();
    deployment.user(&user).ok_or_else(ApiError::not_found)?;
    Ok(Json(deployment.organizations.iter().map(wire::Organization::from).collect()))
}

pub async fn organization(
    State(shared): State<Arc<Shared>>,
    Path(org): Path<String>,
) -> Result<Json<wire::Organization>, ApiError> {
    let deployment = shared.lock();
    let org = deployment.organization(&org).ok_or_else(ApiError::not_found)?;
    Ok(Json(wire::Organization::from(org)))
}

/// `GET /buildinfo` needs no token in coderd either.
pub async fn build_info() -> Json<serde_json::Value> {
    Json(json!({
        "external_url": "https://github.com/coder/coder",
        "version": "v2.24.0+sim",
        "dashboard_url": "",
        "workspace_proxy": false,
        "agent_api_version": "2.6",
        "provisioner_api_version": "1.7",
        "upgrade_message": "",
        "deployment_id": "",
        "telemetry": false,
    }))
}
