//! Workspace agents and the reachability probe.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use jiff::Timestamp;
use tokio::time::Instant;
use uuid::Uuid;

use super::uuid_param;
use crate::error::ApiError;
use crate::model::agent::AgentStatus;
use crate::server::Shared;
use crate::wire;

/// How often a hanging dial checks whether the agent became reachable.
const DIAL_RETRY: Duration = Duration::from_millis(25);

pub async fn by_id(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> Result<Json<wire::WorkspaceAgent>, ApiError> {
    let id = uuid_param(&id)?;
    let now = Timestamp::now();
    let deployment = shared.lock();
    let agent = deployment.agent(id, now).ok_or_else(ApiError::not_found)?;
    Ok(Json(wire::WorkspaceAgent::render(&deployment, agent, now)))
}

/// The probe behaves as coderd's handler does: it refuses at once unless
/// coderd sees the agent `connected`; then it dials, which answers quickly
/// from a live agent and hangs until the dial limit on a dead or cut-off one.
pub async fn listening_ports(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> Result<Json<wire::ListeningPorts>, ApiError> {
    let id = uuid_param(&id)?;
    let dial_limit = {
        let now = Timestamp::now();
        let deployment = shared.lock();
        let agent = deployment.agent(id, now).ok_or_else(ApiError::not_found)?;
        let status = deployment.agent_view(agent, now).status;
        if status != AgentStatus::Connected {
            return Err(ApiError::bad_request(format!(
                "Agent state is {:?}, it must be in the {:?} state.",
                status.as_str(),
                AgentStatus::Connected.as_str()
            )));
        }
        deployment.timings.dial_limit
    };
    let deadline = Instant::now() + dial_limit;
    loop {
        if reachable(&shared, id) {
            return Ok(Json(wire::ListeningPorts { err: String::new(), ports: Vec::new() }));
        }
        if Instant::now() >= deadline {
            return Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "Internal error dialing workspace agent.")
                .detail("dial agent: context deadline exceeded"));
        }
        tokio::select! {
            () = tokio::time::sleep_until(deadline.min(Instant::now() + DIAL_RETRY)) => {}
            () = shared.stopped() => {
                return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "The simulator is shutting down."));
            }
        }
    }
}

fn reachable(shared: &Shared, agent_id: Uuid) -> bool {
    let now = Timestamp::now();
    let deployment = shared.lock();
    deployment.agent(agent_id, now).is_some_and(|agent| deployment.agent_reachable(agent, now))
}
