//! Coder's `/api/v2` endpoints, as listed in docs/coder-api.md.

mod agents;
mod builds;
mod chats;
mod templates;
mod users;
mod workspaces;

use std::sync::Arc;

use axum::Router;
use axum::extract::{FromRequest, Request, State};
use axum::http::StatusCode;
use axum::middleware::{Next, from_fn_with_state};
use axum::response::Response;
use axum::routing::{get, patch, post, put};
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::error::ApiError;
use crate::model::ChatApi;
use crate::server::Shared;

/// The header Coder clients send their token in.
const SESSION_TOKEN_HEADER: &str = "Coder-Session-Token";
const SIGNED_OUT: &str = "You are signed out or your session has expired. Please sign in again to continue.";

pub fn routes(shared: Arc<Shared>) -> Router<Arc<Shared>> {
    let authenticated = Router::new()
        .route("/users", get(users::list))
        .route("/users/{user}", get(users::user))
        .route("/users/{user}/organizations", get(users::organizations))
        .route("/users/{user}/workspace/{name}", get(workspaces::by_owner_and_name))
        .route("/users/{user}/workspaces", post(workspaces::create))
        .route("/organizations/{org}", get(users::organization))
        .route("/organizations/{org}/templates/{name}", get(templates::by_name))
        .route("/organizations/{org}/members/{user}/workspaces", post(workspaces::create_in_organization))
        .route("/templates/{id}", get(templates::by_id))
        .route("/templateversions/{id}", get(templates::version))
        .route("/templateversions/{id}/rich-parameters", get(templates::rich_parameters))
        .route("/templateversions/{id}/presets", get(templates::presets))
        .route("/workspaces", get(workspaces::list))
        .route("/workspaces/{id}", get(workspaces::by_id))
        .route("/workspaces/{id}/builds", get(builds::list).post(builds::create))
        .route("/workspacebuilds/{id}", get(builds::by_id))
        .route("/workspacebuilds/{id}/cancel", patch(builds::cancel))
        .route("/workspaceagents/{id}", get(agents::by_id))
        .route("/workspaceagents/{id}/listening-ports", get(agents::listening_ports))
        .route_layer(from_fn_with_state(shared.clone(), authenticate));
    Router::new()
        .route("/buildinfo", get(users::build_info))
        .merge(authenticated)
        .nest("/chats", chat_routes(shared, ChatApi::V2))
        .fallback(crate::server::route_not_found)
}

/// The chat routes of one mount; they answer only while the deployment
/// serves chats there.
pub fn chat_routes(shared: Arc<Shared>, mount: ChatApi) -> Router<Arc<Shared>> {
    Router::new()
        .route("/by-workspace", get(chats::by_workspace))
        .route("/{id}", get(chats::by_id))
        .route("/{id}/context", put(chats::refresh_context))
        .route("/{id}/interrupt", post(chats::interrupt))
        .route_layer(from_fn_with_state(shared.clone(), authenticate))
        .route_layer(from_fn_with_state((shared, mount), chats::only_on))
        .fallback(crate::server::route_not_found)
}

/// Checks the session token as coderd's API key middleware does.
async fn authenticate(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Result<Response, ApiError> {
    let given = request
        .headers()
        .get(SESSION_TOKEN_HEADER)
        .and_then(|value| value.to_str().ok())
        .filter(|value| !value.is_empty());
    let Some(given) = given else {
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, SIGNED_OUT)
            .detail("Cookie \"coder_session_token\" or query parameter must be provided."));
    };
    if given != shared.lock().token {
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, SIGNED_OUT).detail("API key is invalid."));
    }
    Ok(next.run(request).await)
}

/// A JSON request body, rejected with Coder's error shape when malformed.
pub struct CoderJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for CoderJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = axum::body::Bytes::from_request(request, state)
            .await
            .map_err(|err| ApiError::bad_request("Request body must be valid JSON.").detail(err.to_string()))?;
        serde_json::from_slice(&bytes)
            .map(CoderJson)
            .map_err(|err| ApiError::bad_request("Request body must be valid JSON.").detail(err.to_string()))
    }
}

/// A UUID path parameter, rejected as coderd does.
pub fn uuid_param(value: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(value)
        .map_err(|err| ApiError::bad_request(format!("Invalid UUID {value:?}.")).detail(err.to_string()))
}

/// `limit` and `offset` query parameters; a limit of 0 means no limit.
#[derive(Debug, Default, serde::Deserialize)]
pub struct Pagination {
    #[serde(default)]
    pub limit: usize,
    #[serde(default)]
    pub offset: usize,
}

impl Pagination {
    pub fn apply<T>(&self, items: impl IntoIterator<Item = T>) -> Vec<T> {
        let items = items.into_iter().skip(self.offset);
        if self.limit == 0 { items.collect() } else { items.take(self.limit).collect() }
    }
}
