//! The HTTP server: routing, the gate every `/api` request passes (injected
//! faults, then the request log) and shutdown.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use jiff::Timestamp;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::error::ApiError;
use crate::faults::FaultKind;
use crate::model::Deployment;
use crate::requests::{CLIENT_CLOSED, RequestRecord};
use crate::{api, control};

/// Requests bodies are small JSON documents.
const MAX_BODY: usize = 1 << 20;
/// A hanging fault gives up after this long, so nothing hangs forever.
const HANG_LIMIT: Duration = Duration::from_secs(120);

/// State shared by the server's handlers and the [`crate::Simulator`] handle.
pub struct Shared {
    deployment: Mutex<Deployment>,
    stopping: watch::Receiver<bool>,
    /// Bumped when faults are cleared, to release hanging requests.
    fault_clears: watch::Sender<u64>,
    /// Requests arrived and not answered yet, by arrival number.
    in_flight: Mutex<(u64, Vec<(u64, RequestRecord)>)>,
}

/// How a hanging request ended.
pub enum Wait {
    Released,
    TimedOut,
    Stopping,
}

impl Shared {
    pub fn new(deployment: Deployment, stopping: watch::Receiver<bool>) -> Self {
        Self {
            deployment: Mutex::new(deployment),
            stopping,
            fault_clears: watch::Sender::new(0),
            in_flight: Mutex::default(),
        }
    }

    /// The `/api` requests that arrived and are not answered yet (held by
    /// a fault, say), oldest first.
    pub fn in_flight(&self) -> Vec<RequestRecord> {
        let in_flight = self.in_flight.lock().unwrap_or_else(PoisonError::into_inner);
        in_flight.1.iter().map(|(_, record)| record.clone()).collect()
    }

    fn arrived(&self, record: &RequestRecord) -> u64 {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(PoisonError::into_inner);
        in_flight.0 += 1;
        let number = in_flight.0;
        in_flight.1.push((number, record.clone()));
        number
    }

    fn answered(&self, number: u64) {
        self.in_flight.lock().unwrap_or_else(PoisonError::into_inner).1.retain(|(n, _)| *n != number);
    }

    /// The deployment; never hold the guard across an await.
    pub fn lock(&self) -> MutexGuard<'_, Deployment> {
        // A handler that panicked leaves consistent data behind (every
        // mutation is a single step), so a poisoned lock is still usable.
        self.deployment.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn clear_faults(&self) {
        self.lock().faults.clear();
        self.fault_clears.send_modify(|generation| *generation += 1);
    }

    /// Resolves when the simulator shuts down.
    pub async fn stopped(&self) {
        let mut stopping = self.stopping.clone();
        // An error means the handle is gone, which also means stop.
        let _ = stopping.wait_for(|stop| *stop).await;
    }

    /// Waits as a hanging fault does.
    async fn hang(&self) -> Wait {
        let mut clears = self.fault_clears.subscribe();
        tokio::select! {
            _ = clears.changed() => Wait::Released,
            () = self.stopped() => Wait::Stopping,
            () = tokio::time::sleep(HANG_LIMIT) => Wait::TimedOut,
        }
    }
}

pub async fn serve(listener: TcpListener, shared: Arc<Shared>, mut stopping: watch::Receiver<bool>) {
    let app = router(shared);
    let shutdown = async move {
        let _ = stopping.wait_for(|stop| *stop).await;
    };
    if let Err(err) = axum::serve(listener, app).with_graceful_shutdown(shutdown).await {
        tracing::error!(%err, "coder-sim server failed");
    }
}

fn router(shared: Arc<Shared>) -> Router {
    let coder = Router::new()
        .nest("/api/v2", api::routes(Arc::clone(&shared)))
        .nest("/api/experimental/chats", api::chat_routes(Arc::clone(&shared), crate::model::ChatApi::Experimental))
        .route("/api/{*rest}", any(route_not_found))
        .layer(from_fn_with_state(Arc::clone(&shared), gate));
    coder.nest("/sim", control::routes()).with_state(shared)
}

pub async fn route_not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "Route not found.")
}

/// Applies injected faults, then records the request with the status served.
async fn gate(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    // Faults match a prefix of the path and query, so `/api/v2/workspaces?`
    // can name the list alone.
    let target = request.uri().path_and_query().map_or_else(|| path.clone(), |pq| pq.as_str().to_owned());
    let query = request.uri().query().unwrap_or_default().to_owned();
    let host = request
        .headers()
        .get(axum::http::header::HOST)
        .and_then(|host| host.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let (parts, body) = request.into_parts();
    let arrival = RequestRecord {
        method: method.to_string(),
        path: path.clone(),
        query,
        status: CLIENT_CLOSED,
        at: Timestamp::now(),
        host,
        body: None,
    };
    let mut record = Pending {
        shared: Arc::clone(&shared),
        started: Instant::now(),
        arrival: shared.arrived(&arrival),
        record: Some(arrival),
    };
    let bytes = match to_bytes(body, MAX_BODY).await {
        Ok(bytes) => bytes,
        Err(err) => {
            let response =
                ApiError::bad_request("Request body too large or unreadable.").detail(err.to_string()).into_response();
            record.finish(response.status());
            return response;
        }
    };
    if [Method::POST, Method::PUT, Method::PATCH].contains(&method)
        && let Some(record) = &mut record.record
    {
        record.body = serde_json::from_slice(&bytes).ok();
    }
    let request = Request::from_parts(parts, Body::from(bytes));

    let fault = shared.lock().faults.take(method.as_str(), &target);
    let response = match fault {
        None => next.run(request).await,
        Some(FaultKind::Status(code)) => injected_status(code),
        Some(FaultKind::RateLimited(retry_after)) => {
            let mut response = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "You've been rate limited.")
                .detail("The simulator answers matching requests as coderd's rate limiter does.")
                .into_response();
            response.headers_mut().insert("retry-after", retry_after.into());
            response
        }
        Some(FaultKind::Latency(delay)) => {
            tokio::time::sleep(delay).await;
            next.run(request).await
        }
        Some(FaultKind::AnswerLate(delay)) => {
            let response = next.run(request).await;
            tokio::time::sleep(delay).await;
            response
        }
        Some(FaultKind::HostileList { count, padding }) => {
            hostile_list(next.run(without_offset(request)).await, count, padding).await
        }
        Some(FaultKind::HugeBody(bytes)) => huge_body(bytes),
        Some(FaultKind::Hang) => match shared.hang().await {
            Wait::Released => next.run(request).await,
            Wait::TimedOut => ApiError::new(StatusCode::GATEWAY_TIMEOUT, "Injected hang timed out.").into_response(),
            Wait::Stopping => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "The simulator is shutting down.").into_response()
            }
        },
    };
    record.finish(response.status());
    response
}

/// The request without its `offset`: a broken coderd's list starts over on
/// every page.
fn without_offset(mut request: Request) -> Request {
    let query: Vec<&str> =
        request.uri().query().unwrap_or_default().split('&').filter(|pair| !pair.starts_with("offset=")).collect();
    let target = format!("{}?{}", request.uri().path(), query.join("&"));
    if let Ok(uri) = target.parse() {
        *request.uri_mut() = uri;
    }
    request
}

/// Rewrites a workspace list as a broken or hostile coderd would answer it
/// ([`FaultKind::HostileList`]); any other answer passes unchanged.
async fn hostile_list(response: Response, count: i64, padding: u32) -> Response {
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = to_bytes(body, usize::MAX).await else {
        return ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "Cannot read the answer to rewrite.").into_response();
    };
    let Ok(mut page) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return Response::from_parts(parts, Body::from(bytes));
    };
    if let Some(workspaces) = page.get_mut("workspaces").and_then(serde_json::Value::as_array_mut) {
        if let Some(first) = workspaces.first().cloned() {
            for n in 0..padding {
                let mut made_up = first.clone();
                let id = uuid::Uuid::new_v4().to_string();
                made_up["id"] = id.clone().into();
                made_up["name"] = format!("padding-{n}-{}", &id[..8]).into();
                if let Some(build) = made_up.get_mut("latest_build") {
                    build["workspace_id"] = id.into();
                }
                workspaces.push(made_up);
            }
        }
        page["count"] = count.into();
    }
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(page.to_string()))
}

/// A `200` of `bytes` bytes of JSON (a string of spaces), streamed without a
/// length, produced as it is sent.
fn huge_body(bytes: u64) -> Response {
    const CHUNK: u64 = 64 << 10;
    let inner = bytes.saturating_sub(2);
    let chunks = (0..inner.div_ceil(CHUNK)).map(move |i| {
        let size = usize::try_from(CHUNK.min(inner - i * CHUNK)).unwrap_or(0);
        Ok::<_, std::convert::Infallible>(axum::body::Bytes::from(vec![b' '; size]))
    });
    let parts = std::iter::once(Ok(axum::body::Bytes::from_static(b"\"")))
        .chain(chunks)
        .chain(std::iter::once(Ok(axum::body::Bytes::from_static(b"\""))));
    let mut response = Response::new(Body::from_stream(futures::stream::iter(parts)));
    response.headers_mut().insert(axum::http::header::CONTENT_TYPE, "application/json".parse().expect("a header"));
    response
}

fn injected_status(code: u16) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    ApiError::new(status, format!("Injected fault: HTTP {}.", status.as_u16()))
        .detail("The simulator answers matching requests with this status until the fault is cleared or used up.")
        .into_response()
}

/// A request not yet answered: recorded when answered, or as 499 when the
/// client goes away first (the handler future is dropped).
struct Pending {
    shared: Arc<Shared>,
    started: Instant,
    /// Its number among the requests in flight.
    arrival: u64,
    record: Option<RequestRecord>,
}

impl Pending {
    fn finish(&mut self, status: StatusCode) {
        if let Some(record) = &mut self.record {
            record.status = status.as_u16();
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.shared.answered(self.arrival);
        let Some(record) = self.record.take() else {
            return;
        };
        // Only method, path and status: never headers, which carry the token.
        tracing::info!(
            method = %record.method,
            path = %record.path,
            status = record.status,
            elapsed_ms = self.started.elapsed().as_millis(),
            "request"
        );
        self.shared.lock().requests.push(record);
    }
}
