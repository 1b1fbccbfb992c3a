//! Templates, template versions, rich parameters and presets.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use jiff::Timestamp;

use super::uuid_param;
use crate::error::ApiError;
use crate::server::Shared;
use crate::wire;

pub async fn by_name(
    State(shared): State<Arc<Shared>>,
    Path((org, name)): Path<(String, String)>,
) -> Result<Json<wire::Template>, ApiError> {
    let deployment = shared.lock();
    let org = deployment.organization(&org).ok_or_else(ApiError::not_found)?;
    let template = deployment.template_by_name(org.id, &name).ok_or_else(ApiError::not_found)?;
    Ok(Json(wire::Template::render(&deployment, template)))
}

pub async fn by_id(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> Result<Json<wire::Template>, ApiError> {
    let id = uuid_param(&id)?;
    let deployment = shared.lock();
    let template = deployment.template(id).ok_or_else(ApiError::not_found)?;
    Ok(Json(wire::Template::render(&deployment, template)))
}

pub async fn version(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> Result<Json<wire::TemplateVersion>, ApiError> {
    let id = uuid_param(&id)?;
    let deployment = shared.lock();
    let version = deployment.versions.get(&id).ok_or_else(ApiError::not_found)?;
    Ok(Json(wire::TemplateVersion::render(&deployment, version, Timestamp::now())))
}

pub async fn rich_parameters(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> Result<Json<Vec<wire::TemplateVersionParameter>>, ApiError> {
    let id = uuid_param(&id)?;
    let deployment = shared.lock();
    let version = deployment.versions.get(&id).ok_or_else(ApiError::not_found)?;
    Ok(Json(version.parameters.iter().map(Into::into).collect()))
}

pub async fn presets(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> Result<Json<Vec<wire::Preset>>, ApiError> {
    let id = uuid_param(&id)?;
    let deployment = shared.lock();
    let version = deployment.versions.get(&id).ok_or_else(ApiError::not_found)?;
    Ok(Json(version.presets.iter().map(Into::into).collect()))
}
