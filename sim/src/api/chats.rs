//! Chats (docs/coder-api.md, "Chats"), mounted under `/api/experimental/chats`
//! (v2.36.x) or `/api/v2/chats` (v2.37 on): the other mount answers 404 as
//! coderd's router does for a route it does not have.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use jiff::Timestamp;
use serde::Deserialize;
use uuid::Uuid;

use super::uuid_param;
use crate::error::ApiError;
use crate::model::ChatApi;
use crate::server::Shared;
use crate::wire;

/// coderd's limit, coupled to its UI's page size.
const MAX_WORKSPACE_IDS: usize = 25;

/// Lets requests through only on the mount the deployment serves chats on.
pub async fn only_on(State((shared, mount)): State<(Arc<Shared>, ChatApi)>, request: Request, next: Next) -> Response {
    if shared.lock().chat_api != mount {
        return crate::server::route_not_found().await.into_response();
    }
    next.run(request).await
}

#[derive(Deserialize)]
pub struct ByWorkspaceQuery {
    #[serde(default)]
    workspace_ids: String,
}

pub async fn by_workspace(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<ByWorkspaceQuery>,
) -> Result<Json<HashMap<Uuid, Uuid>>, ApiError> {
    if query.workspace_ids.is_empty() {
        return Ok(Json(HashMap::new()));
    }
    let raw: Vec<&str> = query.workspace_ids.split(',').collect();
    if raw.len() > MAX_WORKSPACE_IDS {
        return Err(ApiError::bad_request(format!("Too many workspace IDs, maximum is {MAX_WORKSPACE_IDS}.")));
    }
    let mut ids = Vec::with_capacity(raw.len());
    for value in raw {
        let id = Uuid::parse_str(value.trim())
            .map_err(|err| ApiError::bad_request(format!("Invalid workspace ID {value:?}: {err}")))?;
        ids.push(id);
    }
    Ok(Json(shared.lock().chats_by_workspace(&ids)))
}

pub async fn by_id(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Result<Json<wire::Chat>, ApiError> {
    let id = uuid_param(&id)?;
    let now = Timestamp::now();
    let deployment = shared.lock();
    let chat = deployment.visible_chat(id).ok_or_else(ApiError::not_found)?;
    Ok(Json(wire::Chat::render(&deployment, chat, now)))
}

pub async fn refresh_context(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> Result<Json<wire::Chat>, ApiError> {
    let id = uuid_param(&id)?;
    let now = Timestamp::now();
    let mut deployment = shared.lock();
    deployment.refresh_chat_context(id, now)?;
    let chat = deployment.visible_chat(id).ok_or_else(ApiError::not_found)?;
    Ok(Json(wire::Chat::render_write(&deployment, chat, now, true)))
}

pub async fn interrupt(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> Result<Json<wire::Chat>, ApiError> {
    let id = uuid_param(&id)?;
    let now = Timestamp::now();
    let mut deployment = shared.lock();
    deployment.interrupt_chat(id, now)?;
    let chat = deployment.visible_chat(id).ok_or_else(ApiError::not_found)?;
    Ok(Json(wire::Chat::render_write(&deployment, chat, now, false)))
}
