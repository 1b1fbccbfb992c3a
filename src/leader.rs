//! Leader election over a `coordination.k8s.io/v1` Lease, so that of several
//! replicas exactly one reconciles.
//!
//! The rules are client-go's, which every controller in a cluster follows:
//! - A candidate takes the Lease when nobody holds it, or when its record has
//!   not changed for `leaseDurationSeconds` as measured on the candidate's own
//!   clock: another node's `renewTime` is never compared with ours, so clock
//!   skew cannot shorten a lease.
//! - The holder renews every `retry_period` and steps down when it has not
//!   renewed for `renew_deadline`. That deadline is shorter than the lease
//!   duration, so the old leader stops before anyone may start.
//! - Every write carries the resourceVersion it was computed from: of two
//!   candidates racing for an expired Lease, one gets a conflict.
//! - A holder that shuts down clears `holderIdentity`, so a standby takes over
//!   at its next retry instead of waiting for the lease to expire.
//!
//! - While it leads, a replica writes (to Coder and to Kubernetes) only
//!   through its [`Fence`]: open until the renew deadline counted from the
//!   start of its last successful renewal, by its own monotonic clock. A
//!   replica that was frozen or cut off finds its fence closed when it
//!   resumes, before any other part of it has noticed the lost lease.
//!
//! [`plan`], [`Observation`], [`claimed`], [`released`] and [`write_deadline`]
//! are plain data and functions, tested without a server; [`Elector`] does
//! the I/O of one round and [`spawn`] runs rounds until told to stop.

use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::Api;
use kube::api::{ObjectMeta, PostParams};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

/// How one replica takes part in the election.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseSettings {
    /// The Lease's name and namespace.
    pub name: String,
    pub namespace: String,
    /// This replica's `holderIdentity`; unique among the replicas.
    pub identity: String,
    /// How long a Lease that stopped changing still belongs to its holder.
    pub lease_duration: Duration,
    /// How long the holder keeps acting while its renewals fail.
    pub renew_deadline: Duration,
    /// How often the holder renews and a standby tries to take over.
    pub retry_period: Duration,
}

impl LeaseSettings {
    /// client-go's defaults: a 15 s lease renewed every 2 s, given up after
    /// 10 s of failed renewals.
    pub fn new(name: impl Into<String>, namespace: impl Into<String>, identity: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            namespace: namespace.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }

    /// Checks the orderings the safety argument of this module rests on.
    pub fn validate(&self) -> Result<(), InvalidSettings> {
        let fail = |message: String| Err(InvalidSettings(message));
        if self.name.is_empty() || self.namespace.is_empty() || self.identity.is_empty() {
            return fail("the lease name, namespace and identity must not be empty".into());
        }
        if self.lease_duration < Duration::from_secs(1) {
            return fail(format!("the lease duration ({:?}) must be at least 1s", self.lease_duration));
        }
        if self.renew_deadline >= self.lease_duration {
            return fail(format!(
                "the renew deadline ({:?}) must be shorter than the lease duration ({:?}), so that a leader that \
                 cannot renew stops before another replica may take over",
                self.renew_deadline, self.lease_duration
            ));
        }
        if self.retry_period.is_zero() || self.retry_period >= self.renew_deadline {
            return fail(format!(
                "the retry period ({:?}) must be positive and shorter than the renew deadline ({:?}), so that a \
                 failed renewal is retried before leadership is given up",
                self.retry_period, self.renew_deadline
            ));
        }
        Ok(())
    }

    /// `leaseDurationSeconds`: the duration rounded up to whole seconds, so the
    /// record never promises others less than the configured duration.
    pub fn lease_duration_seconds(&self) -> i32 {
        let seconds = self.lease_duration.as_secs() + u64::from(self.lease_duration.subsec_nanos() > 0);
        i32::try_from(seconds).unwrap_or(i32::MAX)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("invalid leader election settings: {0}")]
pub struct InvalidSettings(String);

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// Another replica wrote the Lease between our read and our write.
    #[error("another replica changed the Lease first")]
    Conflict,
    #[error("Kubernetes API: {0}")]
    Api(#[from] kube::Error),
}

impl LeaseError {
    fn from_write(error: kube::Error) -> Self {
        match &error {
            kube::Error::Api(status) if status.is_conflict() || status.is_already_exists() => LeaseError::Conflict,
            _ => LeaseError::Api(error),
        }
    }
}

/// What this replica knows about its part in the election.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// The Lease has not been read yet.
    Unknown,
    /// This replica holds the Lease and may act.
    Leader,
    /// Another replica holds the Lease (`None`: this replica lost it and does
    /// not know yet who has it now).
    Standby { holder: Option<String> },
}

/// What a candidate does with the Lease record it read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// There is no Lease: create it, holding it.
    Create,
    /// It is ours: renew it.
    Renew,
    /// Nobody holds it, or its holder let it expire: take it over.
    Acquire,
    /// Someone else holds it and has renewed recently.
    Wait { holder: String },
}

/// `lease` is the record read (`None`: no Lease); `expired` says whether it
/// has not changed for its duration (see [`Observation::expired`]).
pub fn plan(lease: Option<&LeaseSpec>, identity: &str, expired: bool) -> Plan {
    let Some(lease) = lease else { return Plan::Create };
    match lease.holder_identity.as_deref().filter(|holder| !holder.is_empty()) {
        Some(holder) if holder == identity => Plan::Renew,
        Some(holder) if !expired => Plan::Wait { holder: holder.to_owned() },
        _ => Plan::Acquire,
    }
}

/// The last Lease record this replica read, and when it last saw it change.
#[derive(Clone, Debug, PartialEq)]
pub struct Observation {
    pub record: LeaseSpec,
    pub changed_at: Instant,
}

impl Observation {
    /// Folds a new read into what was seen before: the clock restarts only
    /// when the record changed (a renewal changes `renewTime`).
    pub fn update(previous: Option<Observation>, record: LeaseSpec, now: Instant) -> Observation {
        match previous {
            Some(previous) if previous.record == record => previous,
            _ => Observation { record, changed_at: now },
        }
    }

    /// Whether the record has stayed the same for its `leaseDurationSeconds`
    /// (or `fallback` when it states none).
    pub fn expired(&self, now: Instant, fallback: Duration) -> bool {
        let duration = self
            .record
            .lease_duration_seconds
            .and_then(|seconds| u64::try_from(seconds).ok())
            .filter(|seconds| *seconds > 0)
            .map_or(fallback, Duration::from_secs);
        now.saturating_duration_since(self.changed_at) >= duration
    }
}

/// The record that takes or renews the Lease for `identity`, keeping what
/// other writers put in fields this module does not own.
pub fn claimed(previous: Option<&LeaseSpec>, identity: &str, duration_seconds: i32, now: Timestamp) -> LeaseSpec {
    let now = MicroTime(now);
    let Some(previous) = previous else {
        return LeaseSpec {
            holder_identity: Some(identity.to_owned()),
            lease_duration_seconds: Some(duration_seconds),
            acquire_time: Some(now.clone()),
            renew_time: Some(now),
            lease_transitions: Some(0),
            ..LeaseSpec::default()
        };
    };
    let renewing = previous.holder_identity.as_deref() == Some(identity);
    LeaseSpec {
        holder_identity: Some(identity.to_owned()),
        lease_duration_seconds: Some(duration_seconds),
        acquire_time: if renewing { previous.acquire_time.clone().or(Some(now.clone())) } else { Some(now.clone()) },
        renew_time: Some(now),
        lease_transitions: if renewing {
            previous.lease_transitions
        } else {
            Some(previous.lease_transitions.unwrap_or(0).saturating_add(1))
        },
        ..previous.clone()
    }
}

/// The record a holder writes when it steps down: no holder, and a one-second
/// duration (as client-go writes) for readers that look only at times.
pub fn released(previous: &LeaseSpec, now: Timestamp) -> LeaseSpec {
    LeaseSpec {
        holder_identity: None,
        acquire_time: None,
        renew_time: Some(MicroTime(now)),
        lease_duration_seconds: Some(1),
        ..previous.clone()
    }
}

/// Until when a leader may still write, after a renewal that started at
/// `renewed_at`: the lease duration less a margin (the lease duration minus
/// the renew deadline) for a write still on its way and for clocks that run
/// at slightly different rates. Another replica takes over no sooner than a
/// whole lease duration after it saw our renewal, which reached the server
/// after `renewed_at`.
pub fn write_deadline(renewed_at: Instant, settings: &LeaseSettings) -> Instant {
    let margin = settings.lease_duration.saturating_sub(settings.renew_deadline);
    renewed_at + settings.lease_duration.saturating_sub(margin)
}

/// Whether this replica may still write, by its own monotonic clock; shared
/// by the election, which moves it forward, and every client that writes,
/// which checks it right before sending and drops a write still in flight
/// when it closes. Cloning is cheap; clones share the bound.
#[derive(Clone, Debug)]
pub struct Fence {
    bound: Arc<Mutex<Bound>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Bound {
    /// No leader election: one replica, always allowed.
    Unbounded,
    /// Allowed before this instant (`None`: not allowed).
    Until(Option<Instant>),
}

/// A write refused (or dropped in flight) because the fence closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("not sent: this replica's leader lease has expired by its own clock")]
pub struct LeaseExpired;

impl Fence {
    /// The fence of a replica without leader election: always open.
    pub fn unbounded() -> Self {
        Self { bound: Arc::new(Mutex::new(Bound::Unbounded)) }
    }

    /// The fence of a candidate: closed until it acquires the Lease.
    pub fn closed() -> Self {
        Self { bound: Arc::new(Mutex::new(Bound::Until(None))) }
    }

    fn bound(&self) -> Bound {
        *self.bound.lock().expect("fence")
    }

    /// Opens the fence until `until` (a renewal's [`write_deadline`]); never
    /// moves it back.
    pub fn open_until(&self, until: Instant) {
        let mut bound = self.bound.lock().expect("fence");
        if let Bound::Until(current) = &mut *bound {
            *current = Some(current.map_or(until, |current| current.max(until)));
        }
    }

    /// Closes the fence at once (the lease was lost or released).
    pub fn close(&self) {
        let mut bound = self.bound.lock().expect("fence");
        if let Bound::Until(current) = &mut *bound {
            *current = None;
        }
    }

    /// Whether a write may be sent at `now`.
    pub fn is_open_at(&self, now: Instant) -> bool {
        match self.bound() {
            Bound::Unbounded => true,
            Bound::Until(until) => until.is_some_and(|until| now < until),
        }
    }

    pub fn is_open(&self) -> bool {
        self.is_open_at(Instant::now())
    }

    /// Resolves once the fence is closed (never for an unbounded one).
    pub async fn until_closed(&self) {
        loop {
            let until = match self.bound() {
                Bound::Unbounded => std::future::pending().await,
                Bound::Until(None) => return,
                Bound::Until(Some(until)) => until,
            };
            if Instant::now() >= until {
                return;
            }
            // A renewal meanwhile moves the bound: look again when it passes.
            tokio::time::sleep_until(until).await;
        }
    }

    /// Sends `write` if the fence is open now, and drops it if the fence
    /// closes before it completes.
    pub async fn guard<F: Future>(&self, write: F) -> Result<F::Output, LeaseExpired> {
        if !self.is_open() {
            return Err(LeaseExpired);
        }
        tokio::select! {
            // A write and the fence's end both ready (a frozen process
            // resumed): the fence wins.
            biased;
            () = self.until_closed() => Err(LeaseExpired),
            output = write => Ok(output),
        }
    }
}

/// A layer for the Kubernetes client the controller writes with: every
/// request but a read (`GET`, watches included) passes the fence, so status,
/// finalizers, claims and Events all stop when the lease does. The election
/// itself uses a client without it.
#[derive(Clone, Debug)]
pub struct FenceLayer(Fence);

impl FenceLayer {
    pub fn new(fence: Fence) -> Self {
        Self(fence)
    }
}

impl<S> tower::Layer<S> for FenceLayer {
    type Service = FencedWrites<S>;

    fn layer(&self, inner: S) -> FencedWrites<S> {
        FencedWrites { inner, fence: self.0.clone() }
    }
}

/// See [`FenceLayer`].
#[derive(Clone, Debug)]
pub struct FencedWrites<S> {
    inner: S,
    fence: Fence,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<S, B> tower::Service<http::Request<B>> for FencedWrites<S>
where
    S: tower::Service<http::Request<B>>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.method() == http::Method::GET {
            let read = self.inner.call(request);
            return Box::pin(async move { read.await.map_err(Into::into) });
        }
        // Checked before the inner service sees the request at all.
        if !self.fence.is_open() {
            warn!(method = %request.method(), path = request.uri().path(), "Kubernetes write not sent: this replica's leader lease has expired");
            return Box::pin(std::future::ready(Err(Box::new(LeaseExpired) as BoxError)));
        }
        let fence = self.fence.clone();
        let write = self.inner.call(request);
        Box::pin(async move {
            match fence.guard(write).await {
                Ok(answer) => answer.map_err(Into::into),
                Err(expired) => {
                    warn!("Kubernetes write dropped in flight: this replica's leader lease has expired");
                    Err(Box::new(expired) as BoxError)
                }
            }
        })
    }
}

/// Reads and writes the Lease for one replica.
pub struct Elector {
    api: Api<Lease>,
    settings: LeaseSettings,
    observed: Option<Observation>,
}

impl Elector {
    pub fn new(client: kube::Client, settings: LeaseSettings) -> Self {
        let api = Api::namespaced(client, &settings.namespace);
        Self { api, settings, observed: None }
    }

    pub fn settings(&self) -> &LeaseSettings {
        &self.settings
    }

    /// One round: read the Lease, then create, renew or take it over when
    /// [`plan`] allows. `Ok(Role::Leader)` means this replica holds it now.
    pub async fn try_acquire_or_renew(&mut self) -> Result<Role, LeaseError> {
        // Taken before the read: expiry is judged from when we asked.
        let now = Instant::now();
        let name = &self.settings.name;
        let identity = &self.settings.identity;
        let duration = self.settings.lease_duration_seconds();
        let current = self.api.get_opt(name).await?;
        let record = current.as_ref().map(|lease| lease.spec.clone().unwrap_or_default());
        if let Some(record) = &record {
            self.observed = Some(Observation::update(self.observed.take(), record.clone(), now));
        }
        let expired = self.observed.as_ref().is_some_and(|o| o.expired(now, self.settings.lease_duration));

        let written = match (plan(record.as_ref(), identity, expired), current) {
            (Plan::Wait { holder }, _) => return Ok(Role::Standby { holder: Some(holder) }),
            (Plan::Create, _) | (_, None) => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(name.clone()),
                        namespace: Some(self.settings.namespace.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(claimed(None, identity, duration, Timestamp::now())),
                };
                self.api.create(&PostParams::default(), &lease).await.map_err(LeaseError::from_write)?
            }
            (Plan::Renew | Plan::Acquire, Some(mut lease)) => {
                // `lease` still carries the resourceVersion we read: the
                // write fails if anyone wrote in between.
                lease.spec = Some(claimed(record.as_ref(), identity, duration, Timestamp::now()));
                self.api.replace(name, &PostParams::default(), &lease).await.map_err(LeaseError::from_write)?
            }
        };
        self.observed = Some(Observation { record: written.spec.unwrap_or_default(), changed_at: now });
        Ok(Role::Leader)
    }

    /// Clears `holderIdentity` if this replica holds the Lease. `Ok(false)`:
    /// it did not (never acquired, or already taken over).
    pub async fn release(&mut self) -> Result<bool, LeaseError> {
        self.observed = None;
        // A conflict means someone wrote since our read; look again.
        for _ in 0..3 {
            let Some(mut lease) = self.api.get_opt(&self.settings.name).await? else {
                return Ok(false);
            };
            let record = lease.spec.clone().unwrap_or_default();
            if record.holder_identity.as_deref() != Some(self.settings.identity.as_str()) {
                return Ok(false);
            }
            lease.spec = Some(released(&record, Timestamp::now()));
            match self.api.replace(&self.settings.name, &PostParams::default(), &lease).await {
                Ok(_) => return Ok(true),
                Err(error) => match LeaseError::from_write(error) {
                    LeaseError::Conflict => continue,
                    error => return Err(error),
                },
            }
        }
        Err(LeaseError::Conflict)
    }
}

/// A running election: the role it publishes, and the way to end it.
pub struct Leadership {
    role: watch::Receiver<Role>,
    fence: Fence,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Elector>,
}

/// Starts campaigning for the Lease in a background task. Its fence (see
/// [`Leadership::fence`]) is closed until the Lease is acquired and opened
/// by every renewal; `client` must not write through that fence.
pub fn spawn(client: kube::Client, settings: LeaseSettings) -> Leadership {
    let (role_tx, role) = watch::channel(Role::Unknown);
    let (stop, stopped) = oneshot::channel();
    let fence = Fence::closed();
    let task = tokio::spawn(campaign(Elector::new(client, settings), role_tx, fence.clone(), stopped));
    Leadership { role, fence, stop, task }
}

impl Leadership {
    /// The role, updated after every round that changes it.
    pub fn role(&self) -> watch::Receiver<Role> {
        self.role.clone()
    }

    /// The fence the renewals open: every write of the work the Lease
    /// guards passes it.
    pub fn fence(&self) -> Fence {
        self.fence.clone()
    }

    /// Stops campaigning (and renewing), then clears the holder if this
    /// replica holds the Lease. Call it once the work the Lease guards has
    /// stopped. `Ok(true)`: the Lease was released.
    pub async fn release(self) -> Result<bool, LeaseError> {
        self.fence.close();
        let _ = self.stop.send(());
        match self.task.await {
            Ok(mut elector) => elector.release().await,
            // Only a panic ends the task early; nobody renews the Lease any
            // more, so it expires on its own.
            Err(error) => {
                error!(%error, "the leader election task failed");
                Ok(false)
            }
        }
    }
}

/// Runs rounds until `stop` fires; returns the elector so its Lease can be
/// released.
async fn campaign(
    mut elector: Elector,
    role: watch::Sender<Role>,
    fence: Fence,
    mut stop: oneshot::Receiver<()>,
) -> Elector {
    let settings = elector.settings().clone();
    info!(lease = %settings.name, namespace = %settings.namespace, identity = %settings.identity, "joining the leader election");
    // When the last successful renewal started: the deadline counts from
    // before the write reached the server, never from its answer.
    let mut renewed_at: Option<Instant> = None;
    loop {
        let started = Instant::now();
        // A hanging request must not keep a leader acting past its deadline.
        let budget = renewed_at
            .map_or(settings.renew_deadline, |at| (at + settings.renew_deadline).saturating_duration_since(started));
        let round = tokio::select! {
            biased;
            _ = &mut stop => return elector,
            round = tokio::time::timeout(budget, elector.try_acquire_or_renew()) => round,
        };
        let next = match round {
            Ok(Ok(Role::Leader)) => {
                renewed_at = Some(started);
                // Opened before the role says so: the work the role starts
                // may write at once.
                fence.open_until(write_deadline(started, &settings));
                Role::Leader
            }
            Ok(Ok(standby)) => {
                renewed_at = None;
                fence.close();
                standby
            }
            failed => {
                let (reason, lost_race) = match failed {
                    Ok(Err(error)) => (error.to_string(), matches!(error, LeaseError::Conflict)),
                    _ => (format!("no answer within {budget:?}"), false),
                };
                match renewed_at {
                    Some(at) if at.elapsed() < settings.renew_deadline => {
                        warn!(%reason, "cannot renew the leader lease; retrying");
                        Role::Leader
                    }
                    Some(_) => {
                        renewed_at = None;
                        fence.close();
                        error!(%reason, deadline = ?settings.renew_deadline, "could not renew the leader lease in time");
                        Role::Standby { holder: None }
                    }
                    None => {
                        if lost_race {
                            debug!(%reason, "lost a race for the leader lease");
                        } else {
                            warn!(%reason, "cannot read or take the leader lease; retrying");
                        }
                        role.borrow().clone()
                    }
                }
            }
        };
        role.send_if_modified(|current| {
            if *current == next {
                return false;
            }
            match &next {
                Role::Leader => info!(identity = %settings.identity, "became the leader"),
                Role::Standby { holder: Some(holder) } => {
                    info!(%holder, "standing by: another replica holds the leader lease")
                }
                Role::Standby { holder: None } | Role::Unknown => {}
            }
            *current = next.clone();
            true
        });
        // Standbys spread their retries so they do not all write at once.
        let pause = if next == Role::Leader { settings.retry_period } else { jittered(settings.retry_period) };
        tokio::select! {
            biased;
            _ = &mut stop => return elector,
            () = tokio::time::sleep(pause) => {}
        }
    }
}

/// `period` plus up to a fifth more, at random.
fn jittered(period: Duration) -> Duration {
    period + period.mul_f64(random_unit() * 0.2)
}

/// A number in [0, 1) from the standard library's per-process random keys;
/// plenty for spreading retries.
fn random_unit() -> f64 {
    let bits = std::hash::RandomState::new().build_hasher().finish();
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

/// `base` with a random suffix: an identity that stays unique when several
/// processes share a host name (outside a cluster, where no pod name exists).
pub fn unique_identity(base: &str) -> String {
    let bits = std::hash::RandomState::new().build_hasher().finish();
    format!("{base}-{:08x}", bits as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(holder: Option<&str>, duration: Option<i32>) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(str::to_owned),
            lease_duration_seconds: duration,
            lease_transitions: Some(3),
            ..LeaseSpec::default()
        }
    }

    fn settings() -> LeaseSettings {
        LeaseSettings::new("lease", "ops", "me")
    }

    #[test]
    fn a_missing_lease_is_created() {
        assert_eq!(plan(None, "me", false), Plan::Create);
    }

    #[test]
    fn our_own_lease_is_renewed_even_when_it_looks_expired() {
        assert_eq!(plan(Some(&record(Some("me"), Some(15))), "me", false), Plan::Renew);
        assert_eq!(plan(Some(&record(Some("me"), Some(15))), "me", true), Plan::Renew);
    }

    #[test]
    fn a_live_lease_of_another_holder_is_left_alone() {
        let lease = record(Some("other"), Some(15));
        assert_eq!(plan(Some(&lease), "me", false), Plan::Wait { holder: "other".into() });
    }

    #[test]
    fn an_expired_or_released_lease_is_taken_over() {
        assert_eq!(plan(Some(&record(Some("other"), Some(15))), "me", true), Plan::Acquire);
        assert_eq!(plan(Some(&record(None, Some(1))), "me", false), Plan::Acquire);
        assert_eq!(plan(Some(&record(Some(""), None)), "me", false), Plan::Acquire);
        assert_eq!(plan(Some(&LeaseSpec::default()), "me", false), Plan::Acquire);
    }

    #[test]
    fn expiry_is_measured_from_when_this_replica_saw_the_record_change() {
        let start = Instant::now();
        let seen = Observation::update(None, record(Some("other"), Some(15)), start);
        assert!(!seen.expired(start + Duration::from_secs(14), Duration::ZERO));
        assert!(seen.expired(start + Duration::from_secs(15), Duration::ZERO));

        // The same record read again later does not restart the clock...
        let again =
            Observation::update(Some(seen.clone()), record(Some("other"), Some(15)), start + Duration::from_secs(10));
        assert_eq!(again.changed_at, start);
        // ...a renewal (a changed record) does, whatever its timestamps say.
        let mut renewed = record(Some("other"), Some(15));
        renewed.renew_time = Some(MicroTime(Timestamp::UNIX_EPOCH));
        let renewed = Observation::update(Some(again), renewed, start + Duration::from_secs(12));
        assert_eq!(renewed.changed_at, start + Duration::from_secs(12));
        assert!(!renewed.expired(start + Duration::from_secs(20), Duration::ZERO));
    }

    #[test]
    fn a_record_without_a_duration_expires_after_our_own() {
        let start = Instant::now();
        let seen = Observation::update(None, record(Some("other"), None), start);
        assert!(!seen.expired(start + Duration::from_secs(4), Duration::from_secs(5)));
        assert!(seen.expired(start + Duration::from_secs(5), Duration::from_secs(5)));
    }

    #[test]
    fn creating_starts_the_transition_count_at_zero() {
        let now = Timestamp::now();
        let created = claimed(None, "me", 15, now);
        assert_eq!(created.holder_identity.as_deref(), Some("me"));
        assert_eq!(created.lease_transitions, Some(0));
        assert_eq!(created.lease_duration_seconds, Some(15));
        assert_eq!(created.acquire_time, Some(MicroTime(now)));
        assert_eq!(created.renew_time, Some(MicroTime(now)));
    }

    #[test]
    fn renewing_keeps_the_acquire_time_and_the_transition_count() {
        let acquired = Timestamp::UNIX_EPOCH;
        let mut previous = record(Some("me"), Some(15));
        previous.acquire_time = Some(MicroTime(acquired));
        let now = Timestamp::now();
        let renewed = claimed(Some(&previous), "me", 15, now);
        assert_eq!(renewed.acquire_time, Some(MicroTime(acquired)));
        assert_eq!(renewed.renew_time, Some(MicroTime(now)));
        assert_eq!(renewed.lease_transitions, Some(3));
    }

    #[test]
    fn taking_over_counts_a_transition_and_keeps_foreign_fields() {
        let mut previous = record(Some("other"), Some(30));
        previous.strategy = Some("OldestEmulationVersion".into());
        let now = Timestamp::now();
        let taken = claimed(Some(&previous), "me", 15, now);
        assert_eq!(taken.holder_identity.as_deref(), Some("me"));
        assert_eq!(taken.lease_transitions, Some(4));
        assert_eq!(taken.lease_duration_seconds, Some(15));
        assert_eq!(taken.acquire_time, Some(MicroTime(now)));
        assert_eq!(taken.strategy.as_deref(), Some("OldestEmulationVersion"));
    }

    #[test]
    fn releasing_clears_the_holder_and_keeps_the_count() {
        let released = released(&record(Some("me"), Some(15)), Timestamp::now());
        assert_eq!(released.holder_identity, None);
        assert_eq!(released.lease_transitions, Some(3));
        assert_eq!(plan(Some(&released), "other", false), Plan::Acquire);
    }

    #[test]
    fn settings_must_let_a_failing_leader_stop_before_others_start() {
        assert!(settings().validate().is_ok());
        let bad = |change: fn(&mut LeaseSettings)| {
            let mut settings = settings();
            change(&mut settings);
            settings.validate().is_err()
        };
        assert!(bad(|s| s.renew_deadline = s.lease_duration));
        assert!(bad(|s| s.retry_period = s.renew_deadline));
        assert!(bad(|s| s.retry_period = Duration::ZERO));
        assert!(bad(|s| s.lease_duration = Duration::from_millis(500)));
        assert!(bad(|s| s.identity.clear()));
    }

    #[test]
    fn the_lease_duration_is_rounded_up_to_whole_seconds() {
        let mut settings = settings();
        assert_eq!(settings.lease_duration_seconds(), 15);
        settings.lease_duration = Duration::from_millis(2500);
        assert_eq!(settings.lease_duration_seconds(), 3);
    }

    #[test]
    fn writes_stop_at_the_renew_deadline_counted_from_the_renewals_start() {
        let settings = settings();
        let renewed_at = Instant::now();
        let deadline = write_deadline(renewed_at, &settings);
        assert_eq!(deadline, renewed_at + Duration::from_secs(10), "15 s lease less a 5 s margin");
        let fence = Fence::closed();
        assert!(!fence.is_open_at(renewed_at), "closed before the first acquisition");
        fence.open_until(deadline);
        assert!(fence.is_open_at(renewed_at + Duration::from_millis(9_999)));
        assert!(!fence.is_open_at(deadline), "closed at the deadline itself");
        // An older renewal's deadline never moves it back.
        fence.open_until(renewed_at + Duration::from_secs(1));
        assert!(fence.is_open_at(renewed_at + Duration::from_secs(9)));
        fence.close();
        assert!(!fence.is_open_at(renewed_at), "closed at once when the lease is lost");
        let unbounded = Fence::unbounded();
        unbounded.close();
        assert!(unbounded.is_open_at(renewed_at + Duration::from_secs(3600)), "no election: never closed");
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_is_refused_after_the_deadline_and_dropped_when_it_passes_in_flight() {
        let fence = Fence::closed();
        let refused = fence.guard(async { "sent" }).await;
        assert_eq!(refused, Err(LeaseExpired), "nothing is sent before the lease is held");

        let start = Instant::now();
        fence.open_until(start + Duration::from_secs(10));
        assert_eq!(fence.guard(async { "sent" }).await, Ok("sent"));

        // In flight when a renewal moves the deadline: the write completes.
        let renewing = {
            let fence = fence.clone();
            async move {
                tokio::time::sleep(Duration::from_secs(5)).await;
                fence.open_until(start + Duration::from_secs(20));
            }
        };
        let write = fence.guard(tokio::time::sleep(Duration::from_secs(15)));
        let (written, ()) = tokio::join!(write, renewing);
        assert_eq!(written, Ok(()), "the renewal at 5 s kept the fence open past 15 s");

        // In flight when the deadline passes: dropped at the deadline.
        let dropped = fence.guard(tokio::time::sleep(Duration::from_secs(60))).await;
        assert_eq!(dropped, Err(LeaseExpired));
        assert_eq!(start.elapsed(), Duration::from_secs(20), "dropped at the deadline, not when the write ended");
        assert_eq!(fence.guard(async { "sent" }).await, Err(LeaseExpired), "and refused after it");
    }

    /// A Kubernetes API that answers after `delay`, counting the requests
    /// it saw.
    #[derive(Clone)]
    struct SlowApi {
        delay: Duration,
        seen: Arc<Mutex<Vec<http::Method>>>,
    }

    impl tower::Service<http::Request<()>> for SlowApi {
        type Response = &'static str;
        type Error = BoxError;
        type Future = std::pin::Pin<Box<dyn Future<Output = Result<&'static str, BoxError>> + Send>>;

        fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), BoxError>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn call(&mut self, request: http::Request<()>) -> Self::Future {
            self.seen.lock().expect("seen").push(request.method().clone());
            let delay = self.delay;
            Box::pin(async move {
                tokio::time::sleep(delay).await;
                Ok("answered")
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_kubernetes_client_writes_only_through_the_fence_and_reads_always() {
        use tower::{Layer, Service};
        let request = |method: http::Method| http::Request::builder().method(method).body(()).expect("a request");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let fence = Fence::closed();
        let mut api =
            FenceLayer::new(fence.clone()).layer(SlowApi { delay: Duration::from_secs(1), seen: seen.clone() });

        assert_eq!(api.call(request(http::Method::GET)).await.ok(), Some("answered"), "a watch or read");
        let refused = api.call(request(http::Method::PATCH)).await.expect_err("closed");
        assert!(refused.is::<LeaseExpired>(), "{refused}");
        assert_eq!(*seen.lock().expect("seen"), [http::Method::GET], "the write never reached the API");

        let start = Instant::now();
        fence.open_until(start + Duration::from_secs(10));
        assert_eq!(api.call(request(http::Method::PATCH)).await.ok(), Some("answered"));
        let mut slow = FenceLayer::new(fence.clone()).layer(SlowApi { delay: Duration::from_secs(60), seen });
        let dropped = slow.call(request(http::Method::POST)).await.expect_err("the fence closed in flight");
        assert!(dropped.is::<LeaseExpired>(), "{dropped}");
        assert_eq!(start.elapsed(), Duration::from_secs(10), "dropped at the deadline");
    }

    #[test]
    fn jitter_adds_at_most_a_fifth() {
        for _ in 0..100 {
            let pause = jittered(Duration::from_secs(10));
            assert!((Duration::from_secs(10)..Duration::from_secs(12)).contains(&pause), "{pause:?}");
        }
        assert_ne!(unique_identity("host"), unique_identity("host"));
    }
}
