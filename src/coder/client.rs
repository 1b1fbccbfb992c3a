//! HTTP client for the part of Coder's REST API that docs/coder-api.md describes.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderName, RETRY_AFTER};
use reqwest::{Method, Response, StatusCode, Url};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::leader::Fence;

use super::error::{CoderError, ErrorBody, truncate};
use super::rate::RateLimit;
use super::token::SessionToken;
use super::types::{
    CreateWorkspaceBuildRequest, CreateWorkspaceRequest, Organization, Preset, Template, TemplateVersion,
    TemplateVersionParameter, User, UsersResponse, Workspace, WorkspaceAgent, WorkspaceBuild, WorkspacesResponse,
};

const SESSION_TOKEN_HEADER: HeaderName = HeaderName::from_static("coder-session-token");

const USER_AGENT: &str = concat!("chatworkspace-operator/", env!("CARGO_PKG_VERSION"));

/// Largest response body read. The largest answer the operator asks for is a
/// page of 100 workspaces with their builds, resources and agents: 0.53 MB
/// from the simulator (two agents each), a few times that from a coderd
/// whose templates declare many apps and scripts. A body beyond this is a
/// broken or hostile server, refused before it is held in memory.
pub const MAX_RESPONSE_BYTES: usize = 8 << 20;

/// Largest error body read: Coder's are a few hundred bytes, anything longer
/// is a proxy page that yields no message anyway.
const MAX_ERROR_BODY_BYTES: usize = 64 << 10;

/// Told about every request, for metrics.
pub trait RequestObserver: Send + Sync {
    /// Called once per request when it ends. `credentials` names the
    /// credentials that sent it, never their token
    /// ([`CoderClient::with_observer`]); `endpoint` is a route label such as
    /// `GET /workspaces/{id}`; `status` is `None` when no response came
    /// (timeout, transport error).
    fn observe(&self, credentials: &str, endpoint: &'static str, status: Option<u16>, elapsed: Duration);

    /// An observation request waited `waited` for the budget the actions
    /// left it ([`CoderClient::for_observation`]).
    fn observation_waited(&self, _waited: Duration) {}

    /// No client uses the credentials named `credentials` any more: what is
    /// kept for them can go.
    fn credentials_released(&self, _credentials: &str) {}
}

/// A client of one Coder deployment with one token. Cloning is cheap and
/// clones share the connection pool.
#[derive(Clone)]
pub struct CoderClient {
    inner: Arc<Inner>,
    /// The observer, and the name of this client's credentials it is told.
    observer: Option<(Arc<dyn RequestObserver>, Arc<str>)>,
    rate_limit: Option<Arc<RateLimit>>,
    /// Every write (POST, PUT) passes it; reads do not.
    fence: Option<Fence>,
    /// Its requests take only the budget that actions leave.
    observation: bool,
}

struct Inner {
    http: reqwest::Client,
    /// As configured, without a trailing slash.
    base_url: String,
    /// `{base_url}/api/v2`.
    api_url: Url,
    /// `{base_url}/api/experimental`, where v2.36.x serves chats.
    experimental_url: Url,
    /// Where this deployment serves chats, once a request told.
    chat_api: std::sync::Mutex<Option<chats::ChatApi>>,
    token: SessionToken,
    /// This URL and token's share of the rate limit ([`super::rate::share_of`]).
    share: u64,
    request_timeout: Duration,
    /// Set by a 429: no request of this token goes out before then.
    paused_until: std::sync::Mutex<Option<tokio::time::Instant>>,
}

/// How long a 429 without a usable `Retry-After` pauses the token, and the
/// longest pause honoured (a broken header must not stop the operator).
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);
const MAX_RETRY_AFTER: Duration = Duration::from_secs(120);

/// What the reachability probe (`GET /workspaceagents/{id}/listening-ports`)
/// found. Only `Reachable` is a passed probe; `Refused`, `TimedOut` and
/// `Failed` are failed probes, kept apart because they mean different
/// things about the agent. `Inconclusive` is no evidence either way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// coderd dialed the agent and it answered.
    Reachable,
    /// coderd answered at once without dialing, because it does not see the
    /// agent connected (400; 412 in older releases).
    Refused { status: u16, message: String },
    /// No answer within the probe timeout: coderd is still dialing an agent
    /// it believes connected, typically a dead or cut-off one.
    TimedOut,
    /// coderd tried to dial the agent and failed (500).
    Failed { message: String },
    /// The probe says nothing about the agent: coderd did not get to dial it
    /// (429, 401, 403, an unknown agent id), a proxy in front of coderd
    /// failed (502, 503, 504), or coderd itself could not be reached. It
    /// neither counts toward a recovery nor toward a dial timeout.
    Inconclusive { message: String },
}

impl ProbeOutcome {
    pub fn is_reachable(&self) -> bool {
        matches!(self, Self::Reachable)
    }

    /// Whether the outcome is evidence about the agent at all.
    pub fn is_conclusive(&self) -> bool {
        !matches!(self, Self::Inconclusive { .. })
    }

    /// A short CamelCase name for condition reasons and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Reachable => "Reachable",
            Self::Refused { .. } => "Refused",
            Self::TimedOut => "TimedOut",
            Self::Failed { .. } => "Failed",
            Self::Inconclusive { .. } => "Inconclusive",
        }
    }
}

impl fmt::Display for ProbeOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Reachable => f.write_str("the agent answered through coderd"),
            Self::Refused { status, message } => {
                write!(f, "coderd refused to dial the agent ({status}): {message}")
            }
            Self::TimedOut => f.write_str("the agent did not answer through coderd in time"),
            Self::Failed { message } => write!(f, "the probe failed: {message}"),
            Self::Inconclusive { message } => write!(f, "the probe was inconclusive: {message}"),
        }
    }
}

impl CoderClient {
    /// `base_url` is the deployment URL (`https://coder.example.com`, a path
    /// prefix allowed); `request_timeout` bounds every request, connecting
    /// and reading the body included.
    pub fn new(base_url: &str, token: SessionToken, request_timeout: Duration) -> Result<Self, CoderError> {
        if request_timeout.is_zero() {
            return Err(CoderError::InvalidArgument {
                message: "the request timeout must be longer than zero".to_owned(),
            });
        }
        let (base_url, api_url) = parse_base_url(base_url)?;
        let share = super::rate::share_of(&base_url, token.expose());
        let mut experimental_url = api_url.clone();
        experimental_url
            .path_segments_mut()
            .map_err(|()| CoderError::InvalidUrl { message: "the URL cannot have a path".to_owned() })?
            .pop()
            .push("experimental");
        let http = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            // A redirect would carry the token header to wherever it points.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(request_timeout)
            .build()
            .map_err(|error| CoderError::Transport { endpoint: "client setup", message: describe(&error) })?;
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                base_url,
                api_url,
                experimental_url,
                chat_api: std::sync::Mutex::new(None),
                share,
                token,
                request_timeout,
                paused_until: std::sync::Mutex::new(None),
            }),
            observer: None,
            rate_limit: None,
            fence: None,
            observation: false,
        })
    }

    /// `observer` is told about every request of this client (and its
    /// clones), as sent with `credentials`: a name for the credentials that
    /// holds no part of the token (a metric label).
    pub fn with_observer(self, observer: Arc<dyn RequestObserver>, credentials: &str) -> Self {
        Self { observer: Some((observer, credentials.into())), ..self }
    }

    /// Every request of this client (and its clones) waits for `limit`
    /// first, in the share of its URL and token; the wait does not count
    /// against the request's timeout.
    pub fn with_rate_limit(self, limit: Arc<RateLimit>) -> Self {
        Self { rate_limit: Some(limit), ..self }
    }

    /// A clone whose requests observe: under the rate limit they take only
    /// what the actions (creates, builds, the reads that decide them) leave,
    /// so observation slows down rather than delay an action.
    pub fn for_observation(&self) -> Self {
        Self { observation: true, ..self.clone() }
    }

    /// Every write of this client (and its clones) is sent only while
    /// `fence` is open, and dropped in flight when it closes.
    pub fn with_fence(self, fence: Fence) -> Self {
        Self { fence: Some(fence), ..self }
    }

    /// Whether this client sends `token` (compares, never shows it).
    #[cfg(test)]
    pub(crate) fn uses_token(&self, token: &str) -> bool {
        self.inner.token.expose() == token
    }

    pub fn base_url(&self) -> &str {
        &self.inner.base_url
    }

    /// The token's own user.
    pub async fn current_user(&self) -> Result<User, CoderError> {
        self.get(route::CURRENT_USER, &[]).await
    }

    /// `user`: a username, a user id or `me`.
    pub async fn user(&self, user: &str) -> Result<User, CoderError> {
        self.get(route::USER, &[user]).await
    }

    /// A page of the users the token may read (`limit` of them from
    /// `offset`), in coderd's order: by lower-cased username.
    pub async fn list_users(&self, limit: u32, offset: u32) -> Result<UsersResponse, CoderError> {
        let route = route::USERS;
        let mut url = route.url(&self.inner.api_url, &[])?;
        url.query_pairs_mut().append_pair("limit", &limit.to_string()).append_pair("offset", &offset.to_string());
        let mut page: UsersResponse = self.call(route, url, None).await?;
        page.users.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        Ok(page)
    }

    pub async fn organization(&self, name_or_id: &str) -> Result<Organization, CoderError> {
        self.get(route::ORGANIZATION, &[name_or_id]).await
    }

    /// `organization`: its name or id.
    pub async fn template_by_name(&self, organization: &str, name: &str) -> Result<Template, CoderError> {
        self.get(route::TEMPLATE_BY_NAME, &[organization, name]).await
    }

    pub async fn template(&self, id: &str) -> Result<Template, CoderError> {
        self.get(route::TEMPLATE, &[id]).await
    }

    pub async fn template_version(&self, id: &str) -> Result<TemplateVersion, CoderError> {
        self.get(route::TEMPLATE_VERSION, &[id]).await
    }

    pub async fn template_version_presets(&self, version_id: &str) -> Result<Vec<Preset>, CoderError> {
        let presets: Option<Vec<Preset>> = self.get(route::TEMPLATE_VERSION_PRESETS, &[version_id]).await?;
        Ok(presets.unwrap_or_default())
    }

    pub async fn template_version_parameters(
        &self,
        version_id: &str,
    ) -> Result<Vec<TemplateVersionParameter>, CoderError> {
        let parameters: Option<Vec<TemplateVersionParameter>> =
            self.get(route::TEMPLATE_VERSION_PARAMETERS, &[version_id]).await?;
        Ok(parameters.unwrap_or_default())
    }

    /// `None` when the owner has no workspace of that name. `owner`: a
    /// username, a user id or `me`.
    pub async fn workspace_by_owner_and_name(&self, owner: &str, name: &str) -> Result<Option<Workspace>, CoderError> {
        match self.get(route::WORKSPACE_BY_OWNER_AND_NAME, &[owner, name]).await {
            Ok(workspace) => Ok(Some(workspace)),
            Err(CoderError::NotFound { .. }) => Ok(None),
            Err(error) => Err(error),
        }
    }

    pub async fn workspace(&self, id: &str) -> Result<Workspace, CoderError> {
        self.get(route::WORKSPACE, &[id]).await
    }

    /// One page of the workspaces matching `query`, in Coder's search syntax
    /// (`owner:"alice" name:"ws"`). `count` in the answer spans all pages.
    pub async fn list_workspaces(
        &self,
        query: &str,
        limit: u32,
        offset: u32,
    ) -> Result<WorkspacesResponse, CoderError> {
        let route = route::WORKSPACES;
        let mut url = route.url(&self.inner.api_url, &[])?;
        url.query_pairs_mut()
            .append_pair("q", query)
            .append_pair("limit", &limit.to_string())
            .append_pair("offset", &offset.to_string());
        let mut page: WorkspacesResponse = self.call(route, url, None).await?;
        // A server that pads its pages gets no more room than it was asked for.
        page.workspaces.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        Ok(page)
    }

    /// `user`: the owner-to-be, a username, a user id or `me`.
    pub async fn create_workspace(
        &self,
        user: &str,
        request: &CreateWorkspaceRequest,
    ) -> Result<Workspace, CoderError> {
        self.post(route::CREATE_WORKSPACE, &[user], request).await
    }

    /// Fails with `Conflict` while another build of the workspace is active.
    pub async fn create_build(
        &self,
        workspace_id: &str,
        request: &CreateWorkspaceBuildRequest,
    ) -> Result<WorkspaceBuild, CoderError> {
        self.post(route::CREATE_BUILD, &[workspace_id], request).await
    }

    pub async fn workspace_agent(&self, id: &str) -> Result<WorkspaceAgent, CoderError> {
        self.get(route::WORKSPACE_AGENT, &[id]).await
    }

    /// Asks coderd to reach the agent, which an external client cannot do
    /// itself. `timeout` is the probe's own limit, independent of the request
    /// timeout: coderd may hang for up to 30 s dialing a dead agent.
    pub async fn probe_agent(&self, agent_id: &str, timeout: Duration) -> ProbeOutcome {
        let route = route::AGENT_LISTENING_PORTS;
        let answer = match route.url(&self.inner.api_url, &[agent_id]) {
            Ok(url) => self.exchange(route, url, None, timeout).await,
            Err(error) => Err(error),
        };
        match answer {
            Ok(answer) if answer.status.is_success() => ProbeOutcome::Reachable,
            Ok(answer) if is_refusal(answer.status) => {
                ProbeOutcome::Refused { status: answer.status.as_u16(), message: self.error_body(&answer).summary() }
            }
            // coderd's own dial failed: evidence about the agent.
            Ok(answer) if answer.status == StatusCode::INTERNAL_SERVER_ERROR => {
                ProbeOutcome::Failed { message: self.status_error(route, &answer).to_string() }
            }
            Ok(answer) => ProbeOutcome::Inconclusive { message: self.status_error(route, &answer).to_string() },
            Err(CoderError::Timeout { .. }) => ProbeOutcome::TimedOut,
            Err(error) => ProbeOutcome::Inconclusive { message: error.to_string() },
        }
    }

    async fn get<T: DeserializeOwned>(&self, route: Route, args: &[&str]) -> Result<T, CoderError> {
        let url = route.url(&self.inner.api_url, args)?;
        self.call(route, url, None).await
    }

    async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        route: Route,
        args: &[&str],
        body: &B,
    ) -> Result<T, CoderError> {
        let url = route.url(&self.inner.api_url, args)?;
        let body = serde_json::to_vec(body).map_err(|error| CoderError::InvalidArgument {
            message: format!("cannot encode the request for {}: {error}", route.label),
        })?;
        self.call(route, url, Some(body)).await
    }

    async fn call<T: DeserializeOwned>(&self, route: Route, url: Url, body: Option<Vec<u8>>) -> Result<T, CoderError> {
        let answer = self.exchange(route, url, body, self.inner.request_timeout).await?;
        self.decode(route, answer)
    }

    /// Sends one request and reads its answer within `timeout`, whatever the
    /// status; reports it to the log and the observer.
    async fn exchange(
        &self,
        route: Route,
        url: Url,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<Answer, CoderError> {
        self.wait_out_pause().await;
        if let Some(limit) = &self.rate_limit {
            if self.observation {
                let waited = limit.acquire_observation_for(self.inner.share).await;
                if let Some((observer, _)) = &self.observer {
                    observer.observation_waited(waited);
                }
            } else {
                limit.acquire_for(self.inner.share).await;
            }
        }
        let started = Instant::now();
        let sent = async {
            tokio::time::timeout(timeout, self.send(route, url, body))
                .await
                .unwrap_or(Err(CoderError::Timeout { endpoint: route.label }))
        };
        // Checked after the waits above, right before sending.
        let result = match self.fence.as_ref().filter(|_| route.verb.writes()) {
            Some(fence) if !fence.is_open() => {
                tracing::warn!(route = route.label, "Coder write not sent: this replica's leader lease has expired");
                Err(CoderError::LeaseExpired { endpoint: route.label })
            }
            Some(fence) => fence.guard(sent).await.unwrap_or_else(|_| {
                tracing::warn!(
                    route = route.label,
                    "Coder write dropped unanswered: this replica's leader lease expired while it was in flight"
                );
                Err(CoderError::LeaseExpired { endpoint: route.label })
            }),
            None => sent.await,
        };
        self.record(route, &result, started.elapsed());
        if let Ok(answer) = &result
            && answer.status == StatusCode::TOO_MANY_REQUESTS
        {
            self.pause(answer.retry_after.unwrap_or(DEFAULT_RETRY_AFTER).min(MAX_RETRY_AFTER));
        }
        result
    }

    /// coderd's rate limit is per user: after a 429 every request of this
    /// token waits, not only the one that was refused.
    fn pause(&self, delay: Duration) {
        let until = tokio::time::Instant::now() + delay;
        let mut paused = self.inner.paused_until.lock().expect("pause");
        if paused.is_none_or(|current| current < until) {
            tracing::warn!(retry_after = ?delay, "Coder answered 429 (rate limited); pausing this token's requests");
            *paused = Some(until);
        }
    }

    async fn wait_out_pause(&self) {
        loop {
            let until = *self.inner.paused_until.lock().expect("pause");
            match until {
                Some(until) if until > tokio::time::Instant::now() => tokio::time::sleep_until(until).await,
                _ => return,
            }
        }
    }

    async fn send(&self, route: Route, url: Url, body: Option<Vec<u8>>) -> Result<Answer, CoderError> {
        let mut request = self
            .inner
            .http
            .request(route.verb.method(), url)
            .header(SESSION_TOKEN_HEADER, self.inner.token.header_value().clone())
            .header(ACCEPT, "application/json");
        if let Some(body) = body {
            request = request.header(CONTENT_TYPE, "application/json").body(body);
        }
        let mut response = request.send().await.map_err(|error| self.transport_error(route, &error))?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let limit = if status.is_success() { MAX_RESPONSE_BYTES } else { MAX_ERROR_BODY_BYTES };
        if status.is_success() && response.content_length().is_some_and(|length| length > limit as u64) {
            // Announced too large: not one byte of it is read.
            return Ok(Answer { status, body: Vec::new(), complete: false, retry_after });
        }
        let (body, complete) =
            read_body(&mut response, limit).await.map_err(|error| self.transport_error(route, &error))?;
        Ok(Answer { status, body, complete, retry_after })
    }

    fn record(&self, route: Route, result: &Result<Answer, CoderError>, elapsed: Duration) {
        let status = result.as_ref().ok().map(|answer| answer.status.as_u16());
        match result {
            Ok(_) => tracing::debug!(route = route.label, status, ?elapsed, "Coder request"),
            Err(error) => tracing::debug!(
                route = route.label,
                ?elapsed,
                %error,
                "Coder request failed"
            ),
        }
        if let Some((observer, credentials)) = &self.observer {
            observer.observe(credentials, route.label, status, elapsed);
        }
    }

    fn decode<T: DeserializeOwned>(&self, route: Route, answer: Answer) -> Result<T, CoderError> {
        if !answer.status.is_success() {
            return Err(self.status_error(route, &answer));
        }
        if !answer.complete {
            return Err(CoderError::Decode {
                endpoint: route.label,
                message: format!(
                    "the answer is larger than the {} MiB the operator reads from Coder; a broken or hostile server?",
                    MAX_RESPONSE_BYTES >> 20
                ),
            });
        }
        serde_json::from_slice(&answer.body)
            .map_err(|error| CoderError::Decode { endpoint: route.label, message: self.clean(&error.to_string()) })
    }

    fn status_error(&self, route: Route, answer: &Answer) -> CoderError {
        CoderError::from_status(route.label, answer.status, self.error_body(answer))
    }

    fn error_body(&self, answer: &Answer) -> ErrorBody {
        ErrorBody::parse(answer.status, &answer.body, |text| self.inner.token.redact(text).into_owned())
    }

    fn transport_error(&self, route: Route, error: &reqwest::Error) -> CoderError {
        if error.is_timeout() {
            CoderError::Timeout { endpoint: route.label }
        } else {
            CoderError::Transport { endpoint: route.label, message: self.clean(&describe(error)) }
        }
    }

    /// Makes text from elsewhere fit for an error: token redacted, then cut.
    fn clean(&self, text: &str) -> String {
        truncate(&self.inner.token.redact(text))
    }
}

impl fmt::Debug for CoderClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CoderClient")
            .field("base_url", &self.inner.base_url)
            .field("token", &self.inner.token)
            .field("request_timeout", &self.inner.request_timeout)
            .field("observer", &self.observer.is_some())
            .finish()
    }
}

/// A response whose body has been read.
struct Answer {
    status: StatusCode,
    body: Vec<u8>,
    /// False when the body was cut at the size limit.
    complete: bool,
    /// A 429's `Retry-After`, in seconds as coderd sends it.
    retry_after: Option<Duration>,
}

/// Reads at most `limit` bytes of the body, saying whether that was all of it.
async fn read_body(response: &mut Response, limit: usize) -> Result<(Vec<u8>, bool), reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = limit - body.len();
        if chunk.len() > room {
            body.extend_from_slice(&chunk[..room]);
            return Ok((body, false));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body, true))
}

/// coderd's answer when it does not see the agent connected: 400, or 412 in
/// older releases.
fn is_refusal(status: StatusCode) -> bool {
    matches!(status, StatusCode::BAD_REQUEST | StatusCode::PRECONDITION_FAILED)
}

/// An error and its causes on one line; reqwest's own message alone ("error
/// sending request") does not say what went wrong.
fn describe(error: &dyn StdError) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Checks the configured deployment URL and derives the API root from it.
/// Messages never repeat the URL: a mistyped one may hold a secret.
fn parse_base_url(base_url: &str) -> Result<(String, Url), CoderError> {
    let invalid = |message: &str| CoderError::InvalidUrl { message: message.to_owned() };
    let base_url = base_url.trim().trim_end_matches('/');
    let mut api_url = Url::parse(base_url).map_err(|error| invalid(&format!("not an absolute URL ({error})")))?;
    if !matches!(api_url.scheme(), "http" | "https") {
        return Err(invalid("the scheme must be http or https"));
    }
    if !api_url.username().is_empty() || api_url.password().is_some() {
        return Err(invalid("credentials in the URL are not supported; provide a session token instead"));
    }
    if api_url.query().is_some() || api_url.fragment().is_some() {
        return Err(invalid("the URL must not have a query or a fragment"));
    }
    api_url
        .path_segments_mut()
        .map_err(|()| invalid("the URL cannot have a path"))?
        .pop_if_empty()
        .extend(["api", "v2"]);
    Ok((base_url.to_owned(), api_url))
}

#[derive(Debug, Clone, Copy)]
enum Verb {
    Get,
    Post,
    Put,
}

impl Verb {
    fn writes(self) -> bool {
        !matches!(self, Self::Get)
    }

    fn method(self) -> Method {
        match self {
            Self::Get => Method::GET,
            Self::Post => Method::POST,
            Self::Put => Method::PUT,
        }
    }
}

/// An API route. Its label (`GET /workspaces/{id}`) names it in logs and
/// metrics and is also the template its path is built from, so the two
/// cannot drift apart.
#[derive(Debug, Clone, Copy)]
struct Route {
    verb: Verb,
    label: &'static str,
}

impl Route {
    const fn get(label: &'static str) -> Self {
        Self { verb: Verb::Get, label }
    }

    const fn post(label: &'static str) -> Self {
        Self { verb: Verb::Post, label }
    }

    const fn put(label: &'static str) -> Self {
        Self { verb: Verb::Put, label }
    }

    /// The route's path under `api_url`, each `{placeholder}` replaced by the
    /// next of `args`, percent-encoded as one path segment.
    fn url(&self, api_url: &Url, args: &[&str]) -> Result<Url, CoderError> {
        let template = self.label.split_once(' ').map_or(self.label, |(_, path)| path);
        let mut args = args.iter();
        let mut segments = Vec::new();
        for part in template.split('/').filter(|part| !part.is_empty()) {
            if !part.starts_with('{') {
                segments.push(part);
                continue;
            }
            let arg = args.next().copied().unwrap_or_default();
            // The url crate drops "." and ".." segments, which would silently
            // send the request to another route.
            if matches!(arg, "" | "." | "..") {
                return Err(CoderError::InvalidArgument {
                    message: format!("{part} must be a name or an id, not {arg:?}"),
                });
            }
            segments.push(arg);
        }
        debug_assert!(args.next().is_none(), "too many arguments for {}", self.label);
        let mut url = api_url.clone();
        url.path_segments_mut()
            .map_err(|()| CoderError::InvalidUrl { message: "the URL cannot have a path".to_owned() })?
            .extend(segments);
        Ok(url)
    }
}

mod route {
    use super::Route;

    pub const CURRENT_USER: Route = Route::get("GET /users/me");
    pub const USER: Route = Route::get("GET /users/{user}");
    pub const USERS: Route = Route::get("GET /users");
    pub const ORGANIZATION: Route = Route::get("GET /organizations/{organization}");
    pub const TEMPLATE_BY_NAME: Route = Route::get("GET /organizations/{organization}/templates/{name}");
    pub const TEMPLATE: Route = Route::get("GET /templates/{id}");
    pub const TEMPLATE_VERSION: Route = Route::get("GET /templateversions/{id}");
    pub const TEMPLATE_VERSION_PRESETS: Route = Route::get("GET /templateversions/{id}/presets");
    pub const TEMPLATE_VERSION_PARAMETERS: Route = Route::get("GET /templateversions/{id}/rich-parameters");
    pub const WORKSPACE_BY_OWNER_AND_NAME: Route = Route::get("GET /users/{user}/workspace/{name}");
    pub const WORKSPACE: Route = Route::get("GET /workspaces/{id}");
    pub const WORKSPACES: Route = Route::get("GET /workspaces");
    pub const CREATE_WORKSPACE: Route = Route::post("POST /users/{user}/workspaces");
    pub const CREATE_BUILD: Route = Route::post("POST /workspaces/{id}/builds");
    pub const WORKSPACE_AGENT: Route = Route::get("GET /workspaceagents/{id}");
    pub const AGENT_LISTENING_PORTS: Route = Route::get("GET /workspaceagents/{id}/listening-ports");
    // Relative to the chat mount, /api/v2 or /api/experimental.
    pub const CHATS_BY_WORKSPACE: Route = Route::get("GET /chats/by-workspace");
    pub const CHAT: Route = Route::get("GET /chats/{id}");
    pub const CHAT_CONTEXT: Route = Route::put("PUT /chats/{id}/context");
    pub const CHAT_INTERRUPT: Route = Route::post("POST /chats/{id}/interrupt");
}

mod chats;
pub use chats::{ChatApi, MAX_WORKSPACES_PER_CHAT_LOOKUP};

#[cfg(test)]
mod tests;
