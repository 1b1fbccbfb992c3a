//! The simulator's own controls, shared by the [`crate::Simulator`] handle
//! and the `/sim` HTTP endpoints (used by `make demo` and the binary). The
//! endpoints need no token and are not in the request log.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use jiff::Timestamp;
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use crate::api::CoderJson;
use crate::error::ApiError;
use crate::faults::Fault;
use crate::model::{BuildRecord, JobFailure, NewWorkspace, Transition};
use crate::requests::RequestRecord;
use crate::server::Shared;

/// The error a failed build reports unless told otherwise.
const DEFAULT_BUILD_ERROR: &str = "terraform apply: exit status 1 (failure injected by the simulator)";

impl Shared {
    pub fn workspace_id(&self, owner: &str, name: &str) -> Option<Uuid> {
        let deployment = self.lock();
        let owner = deployment.user(owner)?.id;
        deployment.workspace_by_name(owner, name, Timestamp::now()).map(|ws| ws.id)
    }

    pub fn kill_agent(&self, workspace: Uuid) -> usize {
        let killed = self.lock().kill_agents(workspace, Timestamp::now());
        tracing::info!(%workspace, killed, "agents killed");
        killed
    }

    pub fn revive_agent(&self, workspace: Uuid) -> usize {
        let revived = self.lock().revive_agents(workspace, Timestamp::now());
        tracing::info!(%workspace, revived, "agents revived");
        revived
    }

    pub fn partition_probe(&self, workspace: Uuid, partitioned: bool) -> bool {
        tracing::info!(%workspace, partitioned, "probe partition");
        self.lock().partition_probe(workspace, partitioned)
    }

    pub fn fail_next_build(
        &self,
        workspace: Option<Uuid>,
        transition: Option<Transition>,
        error: Option<String>,
        error_code: Option<String>,
    ) {
        let failure = JobFailure { error: error.unwrap_or_else(|| DEFAULT_BUILD_ERROR.to_owned()), error_code };
        self.lock().fail_next_build(workspace, transition, failure);
    }

    /// Changes a template setting, as a template admin would.
    pub fn set_require_active_version(&self, template: &str, required: bool) -> Result<(), String> {
        let mut deployment = self.lock();
        let template = deployment.template_named_mut(template).ok_or_else(|| format!("no template {template:?}"))?;
        template.require_active_version = required;
        Ok(())
    }

    /// Promotes one of a template's versions (by name) to active.
    pub fn set_active_version(&self, template: &str, version: &str) -> Result<(), String> {
        let mut deployment = self.lock();
        let template_id =
            deployment.template_named_mut(template).ok_or_else(|| format!("no template {template:?}"))?.id;
        let version_id = deployment
            .versions
            .values()
            .find(|v| v.template_id == template_id && v.name == version)
            .ok_or_else(|| format!("template {template:?} has no version {version:?}"))?
            .id;
        if let Some(template) = deployment.template_named_mut(template) {
            template.active_version_id = version_id;
        }
        Ok(())
    }

    pub fn create_workspace(&self, owner: &str, name: &str, template: &str) -> Result<Uuid, String> {
        let mut deployment = self.lock();
        let owner_id = deployment.user(owner).ok_or_else(|| format!("no user {owner:?}"))?.id;
        let template_id = deployment
            .templates
            .iter()
            .find(|t| t.name == template)
            .ok_or_else(|| format!("no template {template:?}"))?
            .id;
        let request = NewWorkspace { name: name.to_owned(), template_id: Some(template_id), ..NewWorkspace::default() };
        deployment
            .create_workspace(owner_id, None, &request, Timestamp::now())
            .map_err(|err| format!("{} {}", err.message, err.detail))
    }
}

pub fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/workspaces", post(create_workspace))
        .route("/lookup/{owner}/{name}", get(lookup_workspace))
        .route("/workspaces/{id}/kill-agent", post(kill_agent))
        .route("/workspaces/{id}/revive-agent", post(revive_agent))
        .route("/workspaces/{id}/partition-probe", post(partition_probe))
        .route("/workspaces/{id}/never-connect", post(never_connect))
        .route("/workspaces/{id}/fail-startup", post(fail_startup))
        .route("/workspaces/{id}/builds", get(builds))
        .route("/templates/{name}/require-active-version", post(set_require_active_version))
        .route("/templates/{name}/active-version", post(set_active_version))
        .route("/never-connect", post(never_connect_any))
        .route("/fail-startup", post(fail_startup_any))
        .route("/fail-next-build", post(fail_next_build))
        .route("/faults", post(add_fault).delete(clear_faults))
        .route("/requests", get(requests).delete(clear_requests))
        .route("/token", post(set_token))
        .fallback(crate::server::route_not_found)
}

fn workspace_param(shared: &Shared, id: &str) -> Result<Uuid, ApiError> {
    let id = crate::api::uuid_param(id)?;
    if shared.lock().workspaces.contains_key(&id) { Ok(id) } else { Err(ApiError::not_found()) }
}

/// A JSON body that may be left out entirely.
fn optional_json<T: Default + serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body)
        .map_err(|err| ApiError::bad_request("Request body must be valid JSON.").detail(err.to_string()))
}

#[derive(Deserialize)]
struct NewWorkspaceBody {
    owner: String,
    name: String,
    template: String,
}

async fn create_workspace(
    State(shared): State<Arc<Shared>>,
    CoderJson(body): CoderJson<NewWorkspaceBody>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let id = shared.create_workspace(&body.owner, &body.name, &body.template).map_err(ApiError::bad_request)?;
    Ok((StatusCode::CREATED, Json(json!({ "id": id }))))
}

async fn lookup_workspace(
    State(shared): State<Arc<Shared>>,
    Path((owner, name)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = shared.workspace_id(&owner, &name).ok_or_else(ApiError::not_found)?;
    Ok(Json(json!({ "id": id })))
}

/// Answers how many agents were hit, so a demo can tell a no-op.
async fn kill_agent(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = workspace_param(&shared, &id)?;
    Ok(Json(json!({ "agents": shared.kill_agent(id) })))
}

async fn revive_agent(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = workspace_param(&shared, &id)?;
    Ok(Json(json!({ "agents": shared.revive_agent(id) })))
}

#[derive(Deserialize)]
struct PartitionBody {
    partitioned: bool,
}

async fn partition_probe(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    CoderJson(body): CoderJson<PartitionBody>,
) -> Result<StatusCode, ApiError> {
    let id = workspace_param(&shared, &id)?;
    shared.partition_probe(id, body.partitioned);
    Ok(StatusCode::NO_CONTENT)
}

async fn never_connect(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    let id = workspace_param(&shared, &id)?;
    shared.lock().never_connect_next_start(Some(id));
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, Default)]
struct AnyWorkspaceBody {
    #[serde(default)]
    workspace_id: Option<Uuid>,
}

async fn never_connect_any(State(shared): State<Arc<Shared>>, body: Bytes) -> Result<StatusCode, ApiError> {
    let body: AnyWorkspaceBody = optional_json(&body)?;
    shared.lock().never_connect_next_start(body.workspace_id);
    Ok(StatusCode::NO_CONTENT)
}

async fn fail_startup(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    let id = workspace_param(&shared, &id)?;
    shared.lock().fail_startup_next_start(Some(id));
    Ok(StatusCode::NO_CONTENT)
}

async fn fail_startup_any(State(shared): State<Arc<Shared>>, body: Bytes) -> Result<StatusCode, ApiError> {
    let body: AnyWorkspaceBody = optional_json(&body)?;
    shared.lock().fail_startup_next_start(body.workspace_id);
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, Default)]
struct FailBody {
    #[serde(default)]
    workspace_id: Option<Uuid>,
    #[serde(default)]
    transition: Option<String>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    error_code: Option<String>,
}

async fn fail_next_build(State(shared): State<Arc<Shared>>, body: Bytes) -> Result<StatusCode, ApiError> {
    let body: FailBody = optional_json(&body)?;
    let transition = match body.transition.as_deref() {
        None => None,
        Some(t) => Some(Transition::parse(t).ok_or_else(|| ApiError::invalid_field("transition", "oneof", t))?),
    };
    shared.fail_next_build(body.workspace_id, transition, body.error, body.error_code);
    Ok(StatusCode::NO_CONTENT)
}

async fn add_fault(
    State(shared): State<Arc<Shared>>,
    CoderJson(fault): CoderJson<Fault>,
) -> (StatusCode, Json<serde_json::Value>) {
    let id = shared.lock().faults.add(fault);
    (StatusCode::CREATED, Json(json!({ "id": id })))
}

async fn clear_faults(State(shared): State<Arc<Shared>>) -> StatusCode {
    shared.clear_faults();
    StatusCode::NO_CONTENT
}

async fn requests(State(shared): State<Arc<Shared>>) -> Json<Vec<RequestRecord>> {
    Json(shared.lock().requests.snapshot())
}

async fn clear_requests(State(shared): State<Arc<Shared>>) -> StatusCode {
    shared.lock().requests.clear();
    StatusCode::NO_CONTENT
}

async fn builds(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Result<Json<Vec<BuildRecord>>, ApiError> {
    let id = workspace_param(&shared, &id)?;
    Ok(Json(shared.lock().build_records(id)))
}

#[derive(Deserialize)]
struct RequireActiveVersionBody {
    required: bool,
}

async fn set_require_active_version(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    CoderJson(body): CoderJson<RequireActiveVersionBody>,
) -> Result<StatusCode, ApiError> {
    shared.set_require_active_version(&name, body.required).map_err(|_| ApiError::not_found())?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct ActiveVersionBody {
    version: String,
}

async fn set_active_version(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    CoderJson(body): CoderJson<ActiveVersionBody>,
) -> Result<StatusCode, ApiError> {
    shared.set_active_version(&name, &body.version).map_err(ApiError::bad_request)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct TokenBody {
    token: String,
}

async fn set_token(State(shared): State<Arc<Shared>>, CoderJson(body): CoderJson<TokenBody>) -> StatusCode {
    shared.lock().token = body.token;
    StatusCode::NO_CONTENT
}
