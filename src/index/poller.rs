//! One credentials' poller: looks at Coder, for every owner those
//! credentials serve at once, with as few requests as the state of the
//! watched workspaces allows. coderd's search without `owner:` answers for
//! every owner the token may read (the same rights decide what `owner:`
//! answers), so a token that sees only its own workspaces is served the
//! same way, and the number of owners does not drive the cost.
//!
//! Each attention tick sends:
//! - `healthy:false`: the workspaces with a disconnected or timed-out agent
//!   (one small page, usually; those no resource names are dropped);
//! - `status:running` with `limit=1`, read for its `count` only, and read
//!   again halfway to the next tick (one request, so that a build made in
//!   Coder that begins and ends between two ticks is seen within the
//!   interval): when it differs from what the index holds, something
//!   started or stopped outside the operator's view. The workspaces with a
//!   build under way (`status:stopping`, then `pending`, `starting`,
//!   `deleting`, until the count is explained) are read first: a stop,
//!   start or delete made in Coder is one of them while its build runs.
//!   Only a count they do not explain is looked for among the named
//!   workspaces by running counts of a page of ids each, and a page whose
//!   count differs is read: never a list of everything, whose pages grow
//!   with the workspaces no resource names;
//! - `id:…` for the workspaces with a build or an agent start under way, and
//!   for those that just left the unhealthy list (only when there are any,
//!   at the faster active interval; a page of ids per request), before the
//!   count, which is not read while more than a page of them is followed.
//!
//! At the active interval too, `id:…` for the workspaces that names given
//! after a list passed over them stand for, of every owner together (a page
//! of ids per request): never a list of their owner, nor a read each.
//!
//! Every `full_interval` the whole list (paged) is read as the backstop,
//! its pages spread over most of the interval; between them the late and
//! followed ids and the due chat lookups are read at the active interval,
//! and the unhealthy list and the running count when attention is due
//! ([`BetweenPages`]), so that a long list holds none of them back. Requests
//! go through the token's rate limit as observation
//! ([`crate::coder::CoderClient::for_observation`]): they take only what the
//! actions leave, and one credentials' poller has at most one in flight, so
//! polling slows down but never crowds out the builds.

use std::collections::HashSet;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tracing::{debug, warn};

use super::{IndexSettings, OwnerKey, PollPlan, Shared, upgrade};
use crate::coder::{CoderError, Workspace, search};

pub(super) fn spawn(shared: Weak<Shared>, credentials: String, wake: Arc<Notify>) {
    tokio::spawn(async move { run(shared, credentials, wake).await });
}

async fn run(shared: Weak<Shared>, credentials: String, wake: Arc<Notify>) {
    let mut cadence = Cadence::default();
    loop {
        let Some(index) = upgrade(&shared) else { return };
        let settings = index.settings;
        let Some(plan) = index.plan(&credentials, cadence.full_due(&settings, Instant::now())) else {
            debug!("no resource uses these credentials any more; their poller stops");
            return;
        };
        let look = cadence.look(&settings, Instant::now());
        let started = Instant::now();
        let outcome = poll(&index, &credentials, &plan, look).await;
        if outcome.is_ok() {
            super::chats::poll(&index, &plan.owners, &plan.client).await;
        }
        if let (Some(previous), Some(metrics)) = (cadence.last_attention, &index.metrics)
            && (plan.full || look == Look::Attention)
        {
            // The cadence kept: longer than the interval when actions
            // took the budget.
            metrics.index_attention_period.set(started.duration_since(previous).as_secs_f64());
        }
        index.poll_ended(&credentials, outcome.as_ref().err());
        let ended = match &outcome {
            Ok(()) => PollEnd::Done,
            Err(error) if error.is_retryable() => PollEnd::Failed,
            Err(_) => PollEnd::Rejected,
        };
        let pause = cadence.polled(&settings, plan.full, look, started, ended);
        if let Err(error) = outcome {
            // Put back what this poll was to read.
            index.requeue_reads(&credentials, plan.read_ids);
            warn!(%error, retry_in = ?pause, "cannot poll Coder");
        }
        drop(index);
        // Woken early when the operator builds (to follow the build) and
        // when a new resource needs a first list.
        let _ = tokio::time::timeout(pause, wake.notified()).await;
    }
}

/// When one credentials' poller last did what: plain data, from which
/// whether the next poll lists everything or looks at what needs
/// attention, and how long the poller rests after a poll, follow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Cadence {
    last_full: Option<Instant>,
    last_attention: Option<Instant>,
    last_count: Option<Instant>,
    /// Polls failed in a row.
    failures: u32,
}

/// What a poll looks at besides the workspaces it follows by id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Look {
    /// Only what it follows.
    Followed,
    /// The running count too, between two attention ticks: one request
    /// (`limit=1`), read twice an attention interval, so that a stop or
    /// start made in Coder whose build begins and ends between two ticks
    /// is still seen within the interval.
    Count,
    /// The unhealthy list and the running count: an attention tick.
    Attention,
}

/// How a poll ended, for the pause after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PollEnd {
    Done,
    /// Failed in a way that asking again may fix (coderd unavailable, a
    /// timeout, a rate limit).
    Failed,
    /// Failed in a way asking again soon does not fix: a refused token, a
    /// request coderd rejects.
    Rejected,
}

impl Cadence {
    /// Whether the next poll lists everything: the first one, and every
    /// `full_interval` since the latest whole list that succeeded.
    fn full_due(&self, settings: &IndexSettings, now: Instant) -> bool {
        self.last_full.is_none_or(|at| now.saturating_duration_since(at) >= settings.full_interval)
    }

    /// What the next poll looks at: what needs attention (unhealthy
    /// agents, the count of running workspaces) every attention interval,
    /// and the count alone halfway between.
    fn look(&self, settings: &IndexSettings, now: Instant) -> Look {
        let since = |at: Option<Instant>| at.map(|at| now.saturating_duration_since(at));
        if since(self.last_attention).is_none_or(|since| since >= settings.attention_interval) {
            Look::Attention
        } else if since(self.last_count).is_none_or(|since| since >= settings.attention_interval / 2) {
            Look::Count
        } else {
            Look::Followed
        }
    }

    /// Records a poll that began at `started`, and gives the pause before
    /// the next one.
    fn polled(
        &mut self,
        settings: &IndexSettings,
        full: bool,
        look: Look,
        started: Instant,
        ended: PollEnd,
    ) -> Duration {
        // A whole list covers what attention would look at.
        if full || look == Look::Attention {
            self.last_attention = Some(started);
        }
        if full || look != Look::Followed {
            self.last_count = Some(started);
        }
        if full {
            // A whole list that failed is asked for again at once.
            self.last_full = (ended == PollEnd::Done).then_some(started);
        }
        self.failures = match ended {
            PollEnd::Done => 0,
            PollEnd::Failed | PollEnd::Rejected => self.failures.saturating_add(1),
        };
        match ended {
            PollEnd::Done => settings.active_interval.min(settings.attention_interval),
            PollEnd::Failed => settings.attention_interval * self.failures.min(6),
            // A new token (a resource resolving rotated credentials) wakes
            // the poller early.
            PollEnd::Rejected => (settings.attention_interval * 6).max(Duration::from_secs(60)),
        }
    }
}

/// One request (or paged list) of a poll.
#[derive(Debug, PartialEq, Eq)]
enum Query {
    /// Every workspace the credentials see, paged: the backstop.
    ListEverything,
    /// Every workspace of an owner of a tenant's coderd registered after
    /// its list began.
    ListOwner(Arc<OwnerKey>),
    /// The workspaces names given late stand for, by id: a page of ids.
    ReadLate(Vec<String>),
    /// Workspaces with a build or an agent start under way, or just off the
    /// unhealthy list, by id: a page of ids.
    ReadIds(Vec<String>),
    /// The workspaces with a disconnected or timed-out agent.
    Unhealthy,
    /// The count of running workspaces, to compare with the index's.
    RunningCount,
}

/// What a poll sends, in order: a whole list alone when one is due; else
/// the new owners' lists, the late names' and the followed ids (a page of
/// ids a request), then, when attention is due, the unhealthy list, and the
/// count of running workspaces when it or the count is due, after the
/// followed ids (so that the count is compared with their state of a
/// moment before). Some build is under way nearly all the time in a large
/// deployment, and a stop made in Coder must not wait for all of them to
/// end; only while more builds are followed than a page of ids holds (a
/// burst of creates, whose ends the count would race) is the count left
/// for a quieter tick.
fn queries(plan: &PollPlan, look: Look, page_size: u32) -> Vec<Query> {
    if plan.full {
        return vec![Query::ListEverything];
    }
    // One page of ids per query: as many as a page holds, so each query is
    // one request (100 ids make a URL of under 4 KB).
    let per_query = usize::try_from(page_size).unwrap_or(100).max(1);
    let mut queries: Vec<Query> = plan.unlisted.iter().cloned().map(Query::ListOwner).collect();
    queries.extend(plan.late_ids.chunks(per_query).map(|chunk| Query::ReadLate(chunk.to_vec())));
    queries.extend(plan.read_ids.chunks(per_query).map(|chunk| Query::ReadIds(chunk.to_vec())));
    if look == Look::Attention {
        queries.push(Query::Unhealthy);
    }
    if look != Look::Followed && plan.read_ids.len() <= per_query {
        queries.push(Query::RunningCount);
    }
    queries
}

/// Lists every workspace matching `query` (all owners', or one owner's),
/// merged page by page: at 10,000 workspaces the whole list, decoded,
/// would be tens of megabytes held at once. `None` for `owner`: across
/// owners.
async fn list_everything(
    index: &Shared,
    credentials: &str,
    plan: &PollPlan,
    owner: Option<&OwnerKey>,
    query: &str,
) -> Result<(), CoderError> {
    let page_size = index.settings.page_size;
    let started = Instant::now();
    let mut seen = HashSet::new();
    let mut unnamed_running = 0;
    let mut unkept = Vec::new();
    let pages = plan.page_budget(plan.named, page_size);
    let mut between = BetweenPages::new(index, credentials, plan);
    // As `for_each_page`, with what a long list does between its pages.
    let (mut offset, mut read) = (0u32, 0u32);
    let complete = loop {
        let page = plan.client.list_workspaces(query, page_size, offset).await?;
        read += 1;
        let paging = next_page(offset, page.workspaces.len(), page.count, page_size, read, pages);
        seen.extend(page.workspaces.iter().map(|w| (w.owner_name.to_lowercase(), w.name.to_lowercase())));
        let merged = index.merge(credentials, page.workspaces, started);
        unnamed_running += merged.unnamed_running;
        unkept.extend(merged.unkept);
        match paging {
            Paging::Next(next) => offset = next,
            Paging::Done => break true,
            Paging::Cut => break false,
        }
        between.run(page.count).await?;
    };
    if !complete {
        warn!(
            pages,
            named = plan.named,
            "Coder lists more workspaces than the resources name, beyond a page more; reading the named ones on their own"
        );
        // Before the list counts as done: until then a resource sees
        // its workspace as unknown, never as absent.
        let names = index.unread_names(credentials, &seen);
        let names = names.into_iter().filter(|(spelled, _)| owner.is_none_or(|o| o.owner == spelled.to_lowercase()));
        read_names(index, credentials, plan, names.collect()).await?;
    }
    index.listed(credentials, owner, &seen, started, complete.then_some(unnamed_running), unkept);
    Ok(())
}

/// Sends what [`queries`] plans, in order; the first error ends the poll.
async fn poll(index: &Shared, credentials: &str, plan: &PollPlan, look: Look) -> Result<(), CoderError> {
    let page_size = index.settings.page_size;
    for query in queries(plan, look, page_size) {
        match query {
            Query::ListEverything => list_everything(index, credentials, plan, None, search::EVERYTHING).await?,
            Query::ListOwner(owner) => {
                let query_owner = index.owners.lock().expect("index owners").get(&owner).map(|s| s.query_owner.clone());
                if let Some(query_owner) = query_owner {
                    list_everything(index, credentials, plan, Some(&owner), &search::owner(&query_owner)).await?;
                }
            }
            Query::ReadLate(ids) => read_late(index, credentials, plan, &ids).await?,
            Query::ReadIds(ids) => read_ids(index, credentials, plan, &ids).await?,
            Query::Unhealthy => unhealthy(index, credentials, plan).await?,
            Query::RunningCount => running_count(index, credentials, plan).await?,
        }
    }
    Ok(())
}

/// Reads the workspaces with a disconnected or timed-out agent.
async fn unhealthy(index: &Shared, credentials: &str, plan: &PollPlan) -> Result<(), CoderError> {
    let started = Instant::now();
    let unhealthy = list_all(plan, search::UNHEALTHY, index.settings.page_size, plan.named).await?;
    let now_unhealthy: HashSet<String> = index.merge(credentials, unhealthy, started).kept_ids.into_iter().collect();
    index.unhealthy_now(credentials, now_unhealthy);
    Ok(())
}

/// Reads the count of running workspaces and, when it is not the index's,
/// what explains it: the builds under way, then counts by id.
async fn running_count(index: &Shared, credentials: &str, plan: &PollPlan) -> Result<(), CoderError> {
    let running = plan.client.list_workspaces(search::RUNNING, 1, 0).await?;
    if index.running_count_differs(credentials, running.count)
        && !builds_explain(index, credentials, plan, running.count).await?
    {
        debug!(
            coder = running.count,
            "the number of running workspaces changed outside the index; counting them by id"
        );
        counts_explain(index, credentials, plan, running.count).await?;
    }
    Ok(())
}

/// What a list of everything does between two of its pages, so that a long
/// one (two hundred pages take 40 s under a cap of 5 requests a second, and
/// a backstop list is spread over minutes on purpose, [`page_pause`]) holds back
/// neither a recovery, nor the end of a build, nor a stop made in Coder, nor
/// a resource that named its workspace late, nor a chat: the late names'
/// ids, the workspaces followed by id (the operator's builds) and the chat
/// lookups due, at the active interval, and, when attention is due, the
/// unhealthy list and the running count.
struct BetweenPages<'a> {
    index: &'a Shared,
    credentials: &'a str,
    plan: &'a PollPlan,
    active_at: Instant,
    /// When attention and the running count were last looked at.
    looked: Cadence,
    /// How long a page of this list is spread over.
    pause: Duration,
    page_at: Instant,
}

impl<'a> BetweenPages<'a> {
    fn new(index: &'a Shared, credentials: &'a str, plan: &'a PollPlan) -> Self {
        let now = Instant::now();
        let looked = Cadence { last_attention: Some(now), last_count: Some(now), ..Cadence::default() };
        Self { index, credentials, plan, active_at: now, looked, pause: Duration::ZERO, page_at: now }
    }

    /// After a page: `count`, what the server says the list holds.
    async fn run(&mut self, count: i64) -> Result<(), CoderError> {
        let settings = &self.index.settings;
        if self.plan.backstop {
            self.pause = page_pause(settings.full_interval, count, settings.page_size);
        }
        let next_page_at = self.page_at + self.pause;
        loop {
            self.attend().await?;
            let now = Instant::now();
            if now >= next_page_at {
                break;
            }
            let step = settings.active_interval.min(settings.attention_interval).max(Duration::from_millis(100));
            tokio::time::sleep_until((now + step).min(next_page_at).into()).await;
        }
        self.page_at = Instant::now();
        Ok(())
    }

    async fn attend(&mut self) -> Result<(), CoderError> {
        let settings = &self.index.settings;
        let now = Instant::now();
        if now.saturating_duration_since(self.active_at) < settings.active_interval.min(settings.attention_interval) {
            return Ok(());
        }
        self.active_at = now;
        // What a poll between attention ticks would read: the late names'
        // ids and the followed ones (a tenant's new owners wait for the
        // list's end).
        let Some(between) = self.index.plan(self.credentials, false) else { return Ok(()) };
        let per_query = usize::try_from(settings.page_size).unwrap_or(100).max(1);
        for page in between.late_ids.chunks(per_query) {
            read_late(self.index, self.credentials, self.plan, page).await?;
        }
        let ids = between.read_ids;
        for (n, page) in ids.chunks(per_query).enumerate() {
            if let Err(error) = read_ids(self.index, self.credentials, self.plan, page).await {
                // Read at the next chance, as a failed poll's are.
                self.index.requeue_reads(self.credentials, ids[n * per_query..].to_vec());
                return Err(error);
            }
        }
        let look = self.looked.look(settings, now);
        self.looked.polled(settings, false, look, now, PollEnd::Done);
        if look == Look::Attention {
            unhealthy(self.index, self.credentials, self.plan).await?;
        }
        if look != Look::Followed {
            running_count(self.index, self.credentials, self.plan).await?;
        }
        // The chat rounds keep their pace too, rather than all those that
        // fell due meanwhile coming at the list's end.
        super::chats::poll(self.index, &between.owners, &self.plan.client).await;
        Ok(())
    }
}

/// How long each page of a backstop list of `count` workspaces is spread
/// over: the list takes nine tenths of the interval between two of them.
/// The first list, which resources wait for, is never spread; a backstop
/// list has no hurry (what it would find, the attention ticks between its
/// pages find first), and two hundred pages sent at once would take, with
/// what else a minute holds, more than coderd's 512 requests a minute for
/// one user.
fn page_pause(full_interval: Duration, count: i64, page_size: u32) -> Duration {
    let pages = u64::try_from(count).unwrap_or(0).div_ceil(u64::from(page_size.max(1))).max(1);
    full_interval * 9 / 10 / u32::try_from(pages).unwrap_or(u32::MAX)
}

/// The count of running workspaces (`count`) moved outside the index's
/// view: reads the workspaces with a build under way, one status at a time,
/// until what they show of the named workspaces explains the count. A stop
/// made in Coder is seen this way while its build runs, for a request or
/// two instead of a list of everything; whether the count was explained.
async fn builds_explain(index: &Shared, credentials: &str, plan: &PollPlan, count: i64) -> Result<bool, CoderError> {
    for query in search::BUILDING {
        let started = Instant::now();
        let building = list_all(plan, query, index.settings.page_size, plan.named).await?;
        index.merge(credentials, building, started);
        if !index.running_count_differs(credentials, count) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The count of running workspaces still differs once the builds under way
/// are read: a start or a stop made in Coder ended between two attention
/// ticks. The running workspaces among the ones the index holds are
/// counted a page of ids at a time (`limit=1`: the count alone), and only
/// a page whose count is not the index's is read, until the whole count
/// agrees. When every page agrees, what changed is a workspace no resource
/// names, and the count is taken as theirs. At most a request per page of
/// named workspaces and a read per page that changed: never a list of
/// everything, whose pages grow with the workspaces no resource names.
async fn counts_explain(index: &Shared, credentials: &str, plan: &PollPlan, count: i64) -> Result<(), CoderError> {
    let per_query = usize::try_from(index.settings.page_size).unwrap_or(100).max(1);
    for page in index.held_ids(credentials).chunks(per_query) {
        let running = plan.client.list_workspaces(&search::running_among(page), 1, 0).await?;
        if usize::try_from(running.count).ok() == Some(index.running_among(credentials, page)) {
            continue;
        }
        read_ids(index, credentials, plan, page).await?;
        if !index.running_count_differs(credentials, count) {
            return Ok(());
        }
    }
    index.unnamed_running_is(credentials, count);
    Ok(())
}

/// Reads the workspaces of `ids` (a page of them). An id that no longer
/// answers was deleted.
async fn read_ids(index: &Shared, credentials: &str, plan: &PollPlan, ids: &[String]) -> Result<(), CoderError> {
    let started = Instant::now();
    let mut found = list_all(plan, &search::ids(ids), index.settings.page_size, ids.len()).await?;
    // Only what was asked for.
    found.retain(|workspace| ids.contains(&workspace.id));
    for id in ids {
        if !found.iter().any(|w| w.id == *id) {
            index.remove_id(credentials, id);
        }
    }
    index.merge(credentials, found, started);
    Ok(())
}

/// Reads the workspaces that names given after a list passed over them
/// stand for, by id (`ids`, a page of them, across owners): never a list
/// of their owner, nor a read each. What is not read (an error) stays
/// pending and is asked for again at the next poll.
async fn read_late(index: &Shared, credentials: &str, plan: &PollPlan, ids: &[String]) -> Result<(), CoderError> {
    let started = Instant::now();
    let mut found = list_all(plan, &search::ids(ids), index.settings.page_size, ids.len()).await?;
    found.retain(|workspace| ids.contains(&workspace.id));
    let merged = index.merge(credentials, found, started);
    index.late_read(credentials, ids, merged.unkept);
    Ok(())
}

/// Reads the workspaces resources name that a list cut short did not have,
/// by owner and name: as many requests as names, never more.
async fn read_names(
    index: &Shared,
    credentials: &str,
    plan: &PollPlan,
    names: Vec<(String, String)>,
) -> Result<(), CoderError> {
    for (owner, name) in names {
        let started = Instant::now();
        if let Some(workspace) = plan.client.workspace_by_owner_and_name(&owner, &name).await? {
            index.merge(credentials, vec![workspace], started);
        }
    }
    Ok(())
}

/// Every workspace matching `query`, of which at most `wanted` matter: no
/// more pages than those fill, and one more.
async fn list_all(plan: &PollPlan, query: &str, page_size: u32, wanted: usize) -> Result<Vec<Workspace>, CoderError> {
    let mut workspaces = Vec::new();
    for_each_page(plan, query, page_size, plan.page_budget(wanted, page_size), |page| workspaces.extend(page)).await?;
    Ok(workspaces)
}

/// Hands each page of the workspaces matching `query` to `each`, in order,
/// at most `max_pages` of them: whether that was the whole list.
async fn for_each_page(
    plan: &PollPlan,
    query: &str,
    page_size: u32,
    max_pages: u32,
    mut each: impl FnMut(Vec<Workspace>),
) -> Result<bool, CoderError> {
    let mut offset = 0u32;
    let mut pages = 0u32;
    loop {
        let page = plan.client.list_workspaces(query, page_size, offset).await?;
        pages += 1;
        let received = page.workspaces.len();
        each(page.workspaces);
        match next_page(offset, received, page.count, page_size, pages, max_pages) {
            Paging::Next(next) => offset = next,
            Paging::Done => return Ok(true),
            Paging::Cut => return Ok(false),
        }
    }
}

impl PollPlan {
    /// The pages a list may take: what [`page_budget`] allows
    /// for a coderd a tenant's Secret names, and the whole list (until a
    /// short page or its `count`) for the operator's own coderd.
    fn page_budget(&self, wanted: usize, page_size: u32) -> u32 {
        if self.trusted { u32::MAX } else { page_budget(wanted, page_size) }
    }
}

/// The pages a list may take when `wanted` workspaces matter: as many as
/// those fill, and one more for what else the server lists. A server's
/// `count` does not change it: a broken or hostile one could claim any.
fn page_budget(wanted: usize, page_size: u32) -> u32 {
    let pages = wanted.div_ceil(usize::try_from(page_size.max(1)).unwrap_or(usize::MAX));
    u32::try_from(pages).unwrap_or(u32::MAX).saturating_add(1)
}

#[derive(Debug, PartialEq, Eq)]
enum Paging {
    /// Ask for the page at this offset.
    Next(u32),
    /// The list is over.
    Done,
    /// The server says there is more, but the list has taken its pages.
    Cut,
}

/// After page number `pages` (from 1), which held `received` workspaces
/// from `offset` on, of `count` in all (as the server says).
fn next_page(offset: u32, received: usize, count: i64, page_size: u32, pages: u32, max_pages: u32) -> Paging {
    let received = u32::try_from(received).unwrap_or(u32::MAX);
    let next = offset.saturating_add(received);
    // A short page is the last one, whatever the count claims.
    if received < page_size || i64::from(next) >= count {
        Paging::Done
    } else if pages >= max_pages {
        Paging::Cut
    } else {
        Paging::Next(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coder::{CoderClient, SessionToken};

    fn plan(full: bool, unlisted: &[&str], late_ids: usize, read_ids: usize) -> PollPlan {
        let client = CoderClient::new(
            "https://coder.example.com",
            SessionToken::new("t").expect("a token"),
            Duration::from_secs(1),
        )
        .expect("a client");
        let owner = |name: &str| Arc::new(OwnerKey { credentials: "tenant".to_owned(), owner: name.to_owned() });
        let ids = |prefix: &str, n: usize| (0..n).map(|i| format!("{prefix}-{i}")).collect();
        PollPlan {
            client,
            full,
            backstop: false,
            read_ids: ids("read", read_ids),
            unlisted: unlisted.iter().map(|name| owner(name)).collect(),
            late_ids: ids("late", late_ids),
            owners: vec![owner("alice")],
            named: 1,
            trusted: false,
        }
    }

    /// The queries, spelled short: `list`, `owner:NAME`, `late:N`, `ids:N`
    /// (N ids), `unhealthy`, `running`.
    fn sent(plan: &PollPlan, look: Look, page_size: u32) -> Vec<String> {
        queries(plan, look, page_size)
            .into_iter()
            .map(|query| match query {
                Query::ListEverything => "list".to_owned(),
                Query::ListOwner(owner) => format!("owner:{}", owner.owner),
                Query::ReadLate(ids) => format!("late:{}", ids.len()),
                Query::ReadIds(ids) => format!("ids:{}", ids.len()),
                Query::Unhealthy => "unhealthy".to_owned(),
                Query::RunningCount => "running".to_owned(),
            })
            .collect()
    }

    /// A list of everything of many pages, with a build followed by id and
    /// attention due all along: between its pages it reads the followed
    /// workspace and the unhealthy list, not only after its last page.
    #[tokio::test]
    async fn a_long_list_reads_the_followed_ids_and_the_unhealthy_list_between_its_pages() {
        let (sim, index) = indexed_simulator(IndexSettings {
            page_size: 5,
            active_interval: Duration::ZERO,
            attention_interval: Duration::ZERO,
            ..IndexSettings::default()
        })
        .await;
        let named = sim.create_workspace("admin", "chat-1", "docker-dev");
        let credentials = "default@sim";
        let plan = index.shared.plan(credentials, true).expect("a plan");
        // The operator built it: followed by id from now on.
        index.shared.requeue_reads(credentials, vec![named.to_string()]);

        list_everything(&index.shared, credentials, &plan, None, search::EVERYTHING).await.expect("the list");
        let queries: Vec<String> = sim
            .requests()
            .into_iter()
            .filter(|r| r.path == "/api/v2/workspaces")
            .map(|r| r.query.replace("%3A", ":"))
            .collect();
        assert_eq!(queries.iter().filter(|q| q.starts_with("q=&")).count(), 7, "31 workspaces are 7 pages of 5");
        let last_page = queries.iter().rposition(|q| q.starts_with("q=&")).expect("the list's pages");
        let followed = queries.iter().position(|q| q.contains(&format!("id:{named}"))).expect("the followed id read");
        let unhealthy = queries.iter().position(|q| q.contains("healthy:false")).expect("the unhealthy list");
        let running = queries.iter().position(|q| q.starts_with("q=status:running&")).expect("the running count");
        assert!(
            followed < last_page && unhealthy < last_page && running < last_page,
            "not between the pages: {queries:?}"
        );
        // The chat lookup of the named workspace, never looked up, too.
        let requests = sim.requests();
        let last_page_at =
            requests.iter().rfind(|r| r.path == "/api/v2/workspaces" && r.query.starts_with("q=&")).unwrap().at;
        assert!(
            requests.iter().any(|r| r.path.ends_with("/chats/by-workspace") && r.at < last_page_at),
            "no chat lookup between the pages"
        );
    }

    /// A simulator with 30 workspaces no resource names, and an index of
    /// the operator's own coderd there (`default@sim`, whose lists are read
    /// whole) in which a resource names `admin`'s `chat-1`.
    async fn indexed_simulator(settings: IndexSettings) -> (coder_sim::Simulator, super::super::CoderIndex) {
        let sim = coder_sim::Simulator::start(coder_sim::SimConfig::fast()).await.expect("the simulator");
        for n in 0..30 {
            sim.create_workspace("admin", &format!("ide-{n:02}"), "docker-dev");
        }
        let index = super::super::CoderIndex::new(settings, None);
        let client =
            CoderClient::new(&sim.url(), SessionToken::new(sim.token()).expect("a token"), Duration::from_secs(5))
                .expect("a client");
        let credentials = "default@sim";
        index.shared.sources.lock().unwrap().entry(credentials.to_owned()).or_default().client = Some(client);
        let key = Arc::new(OwnerKey { credentials: credentials.to_owned(), owner: "admin".to_owned() });
        let resource = crate::key::ResourceKey::from_text("ns/chat-1".to_owned());
        index
            .shared
            .owners
            .lock()
            .unwrap()
            .entry(key)
            .or_default()
            .interested
            .insert("chat-1".to_owned(), vec![resource]);
        (sim, index)
    }

    /// Lists everything as planned: from its first page to its last.
    async fn list_span(shared: &Shared, sim: &coder_sim::Simulator, plan: &PollPlan) -> jiff::SignedDuration {
        sim.clear_requests();
        list_everything(shared, "default@sim", plan, None, search::EVERYTHING).await.expect("the list");
        let pages: Vec<jiff::Timestamp> = sim
            .requests()
            .into_iter()
            .filter(|r| r.path == "/api/v2/workspaces" && r.query.starts_with("q=&"))
            .map(|r| r.at)
            .collect();
        assert_eq!(pages.len(), 7, "31 workspaces are 7 pages of 5");
        pages[6].duration_since(pages[0])
    }

    /// The pages of a backstop list are spread out; those of the first list
    /// (which resources wait for) are not.
    #[tokio::test]
    async fn a_backstop_list_is_spread_out_and_the_first_list_is_not() {
        // 31 workspaces (the seed's one and 30): 7 pages of 5; a backstop
        // list spread over nine tenths of 2 s.
        let (sim, index) = indexed_simulator(IndexSettings {
            page_size: 5,
            full_interval: Duration::from_secs(2),
            ..IndexSettings::default()
        })
        .await;
        let credentials = "default@sim";
        let first = index.shared.plan(credentials, true).expect("a plan");
        assert!(!first.backstop, "the first list is no backstop");
        let first = list_span(&index.shared, &sim, &first).await;
        let backstop = index.shared.plan(credentials, true).expect("a plan");
        assert!(backstop.backstop);
        let backstop = list_span(&index.shared, &sim, &backstop).await;
        // Six pauses of a seventh of 1.8 s.
        assert!(backstop >= jiff::SignedDuration::from_millis(1500), "the backstop took {backstop:?}");
        assert!(first < jiff::SignedDuration::from_millis(500), "the first list took {first:?}");
    }

    #[test]
    fn a_backstop_list_is_spread_over_nine_tenths_of_its_interval() {
        let five_minutes = Duration::from_secs(300);
        // 20,000 workspaces: 200 pages over 270 s, 44 a minute.
        assert_eq!(page_pause(five_minutes, 20_000, 100), Duration::from_millis(1350));
        assert_eq!(page_pause(five_minutes, 1_000, 100), Duration::from_secs(27));
        // One page, whatever the count claims.
        assert_eq!(page_pause(five_minutes, 0, 100), Duration::from_secs(270));
        assert_eq!(page_pause(five_minutes, -3, 0), Duration::from_secs(270));
        assert_eq!(page_pause(Duration::from_secs(2), 500, 100), Duration::from_millis(360));
        assert!(page_pause(five_minutes, i64::MAX, 1) < Duration::from_millis(1));
    }

    #[test]
    fn a_whole_list_due_is_the_only_query_of_its_poll() {
        assert_eq!(sent(&plan(true, &["bob"], 3, 3), Look::Attention, 100), ["list"]);
        assert_eq!(sent(&plan(true, &[], 0, 0), Look::Followed, 100), ["list"]);
    }

    #[test]
    fn a_poll_lists_new_owners_then_reads_late_ids_then_followed_ids_then_looks_at_attention() {
        assert_eq!(
            sent(&plan(false, &["bob", "carol"], 1, 2), Look::Attention, 100),
            ["owner:bob", "owner:carol", "late:1", "ids:2", "unhealthy", "running"]
        );
    }

    #[test]
    fn ids_are_read_a_page_of_them_per_request() {
        assert_eq!(
            sent(&plan(false, &[], 250, 101), Look::Followed, 100),
            ["late:100", "late:100", "late:50", "ids:100", "ids:1"]
        );
        // A page size of zero still reads one id a request, never none.
        assert_eq!(sent(&plan(false, &[], 2, 0), Look::Followed, 0), ["late:1", "late:1"]);
    }

    #[test]
    fn the_running_count_is_read_when_attention_or_the_count_is_due_after_the_followed_ids_unless_a_burst_is_followed()
    {
        assert_eq!(sent(&plan(false, &[], 0, 0), Look::Attention, 100), ["unhealthy", "running"]);
        assert_eq!(sent(&plan(false, &[], 1, 0), Look::Attention, 100), ["late:1", "unhealthy", "running"]);
        assert_eq!(sent(&plan(false, &[], 0, 1), Look::Attention, 100), ["ids:1", "unhealthy", "running"]);
        assert_eq!(sent(&plan(false, &[], 0, 100), Look::Attention, 100), ["ids:100", "unhealthy", "running"]);
        // More builds under way than a page of ids: a burst of creates.
        assert_eq!(sent(&plan(false, &[], 0, 101), Look::Attention, 100), ["ids:100", "ids:1", "unhealthy"]);
        // Halfway between attention ticks, the count without the unhealthy list.
        assert_eq!(sent(&plan(false, &[], 0, 1), Look::Count, 100), ["ids:1", "running"]);
        assert_eq!(sent(&plan(false, &[], 0, 101), Look::Count, 100), ["ids:100", "ids:1"]);
        // Else only what is followed by id.
        assert_eq!(sent(&plan(false, &[], 0, 1), Look::Followed, 100), ["ids:1"]);
        assert!(sent(&plan(false, &[], 0, 0), Look::Followed, 100).is_empty());
    }

    fn settings() -> IndexSettings {
        IndexSettings {
            attention_interval: Duration::from_secs(10),
            active_interval: Duration::from_secs(2),
            full_interval: Duration::from_secs(300),
            ..IndexSettings::default()
        }
    }

    #[test]
    fn the_first_poll_lists_everything_and_looks_at_attention_then_each_at_its_interval() {
        let settings = settings();
        let start = Instant::now();
        let mut cadence = Cadence::default();
        assert!(cadence.full_due(&settings, start));
        assert_eq!(Look::Attention, cadence.look(&settings, start));
        cadence.polled(&settings, true, Look::Attention, start, PollEnd::Done);
        let at = |secs| start + Duration::from_secs(secs);
        assert!(!cadence.full_due(&settings, at(9)));
        assert_ne!(Look::Attention, cadence.look(&settings, at(9)));
        assert_eq!(Look::Attention, cadence.look(&settings, at(10)));
        assert!(!cadence.full_due(&settings, at(299)));
        assert!(cadence.full_due(&settings, at(300)));
        // A poll between attention ticks moves neither.
        cadence.polled(&settings, false, Look::Followed, at(5), PollEnd::Done);
        assert_eq!(Look::Attention, cadence.look(&settings, at(10)));
        // A whole list counts as an attention tick.
        cadence.polled(&settings, true, Look::Followed, at(12), PollEnd::Done);
        assert_ne!(Look::Attention, cadence.look(&settings, at(21)));
        assert_eq!(Look::Attention, cadence.look(&settings, at(22)));
        assert!(!cadence.full_due(&settings, at(311)));
    }

    #[test]
    fn the_running_count_is_read_alone_halfway_between_two_attention_ticks() {
        let settings = settings();
        let start = Instant::now();
        let mut cadence = Cadence::default();
        cadence.polled(&settings, false, Look::Attention, start, PollEnd::Done);
        let at = |secs| start + Duration::from_secs(secs);
        assert_eq!(cadence.look(&settings, at(4)), Look::Followed);
        assert_eq!(cadence.look(&settings, at(5)), Look::Count);
        cadence.polled(&settings, false, Look::Count, at(6), PollEnd::Done);
        assert_eq!(cadence.look(&settings, at(8)), Look::Followed, "the count was just read");
        assert_eq!(cadence.look(&settings, at(10)), Look::Attention, "the count leaves attention's pace alone");
        // A whole list stands for the count too.
        cadence.polled(&settings, true, Look::Followed, at(10), PollEnd::Done);
        assert_eq!(cadence.look(&settings, at(14)), Look::Followed);
        assert_eq!(cadence.look(&settings, at(15)), Look::Count);
    }

    #[test]
    fn a_whole_list_that_failed_is_due_again_at_once_and_attention_waits_its_interval() {
        let settings = settings();
        let start = Instant::now();
        let mut cadence = Cadence::default();
        cadence.polled(&settings, true, Look::Attention, start, PollEnd::Done);
        let later = start + Duration::from_secs(20);
        cadence.polled(&settings, false, Look::Attention, later, PollEnd::Failed);
        assert!(!cadence.full_due(&settings, later), "a failed attention tick is not a failed list");
        cadence.polled(&settings, true, Look::Attention, later, PollEnd::Failed);
        assert!(cadence.full_due(&settings, later));
        assert_ne!(Look::Attention, cadence.look(&settings, later + Duration::from_secs(9)));
    }

    #[test]
    fn the_pause_after_a_poll_is_the_active_interval_and_grows_with_failures_in_a_row() {
        let settings = settings();
        let start = Instant::now();
        let mut cadence = Cadence::default();
        let mut pause = |ended| cadence.polled(&settings, false, Look::Followed, start, ended).as_secs();
        assert_eq!(pause(PollEnd::Done), 2);
        let failed: Vec<u64> = (0..8).map(|_| pause(PollEnd::Failed)).collect();
        assert_eq!(failed, [10, 20, 30, 40, 50, 60, 60, 60]);
        assert_eq!(pause(PollEnd::Done), 2, "a success ends the run of failures");
        assert_eq!(pause(PollEnd::Failed), 10);
        // A refused token waits the longest pause, a minute at least.
        assert_eq!(pause(PollEnd::Rejected), 60);
        let slow = IndexSettings { attention_interval: Duration::from_secs(30), ..settings };
        assert_eq!(Cadence::default().polled(&slow, false, Look::Followed, start, PollEnd::Rejected).as_secs(), 180);
        let quick = IndexSettings { attention_interval: Duration::from_secs(2), ..settings };
        assert_eq!(Cadence::default().polled(&quick, false, Look::Followed, start, PollEnd::Rejected).as_secs(), 60);
        // The active interval is never slower than attention.
        let fast = IndexSettings { attention_interval: Duration::from_secs(1), ..settings };
        assert_eq!(Cadence::default().polled(&fast, false, Look::Followed, start, PollEnd::Done).as_secs(), 1);
    }

    #[test]
    fn a_list_takes_the_pages_its_named_workspaces_fill_and_one_more() {
        assert_eq!(page_budget(0, 100), 1);
        assert_eq!(page_budget(1, 100), 2);
        assert_eq!(page_budget(100, 100), 2);
        assert_eq!(page_budget(101, 100), 3);
        assert_eq!(page_budget(10_000, 100), 101);
        assert_eq!(page_budget(usize::MAX, 1), u32::MAX);
    }

    #[test]
    fn a_claimed_count_does_not_make_a_list_go_on() {
        // An honest server: the pages end with the count.
        assert_eq!(next_page(0, 100, 250, 100, 1, 4), Paging::Next(100));
        assert_eq!(next_page(100, 100, 250, 100, 2, 4), Paging::Next(200));
        assert_eq!(next_page(200, 50, 250, 100, 3, 4), Paging::Done);
        assert_eq!(next_page(0, 100, 100, 100, 1, 2), Paging::Done);
        // A server that claims a billion workspaces is cut at the budget...
        assert_eq!(next_page(0, 100, 1_000_000_000, 100, 1, 2), Paging::Next(100));
        assert_eq!(next_page(100, 100, 1_000_000_000, 100, 2, 2), Paging::Cut);
        // ...and one that answers short or empty pages is over at once.
        assert_eq!(next_page(0, 3, i64::MAX, 100, 1, 50), Paging::Done);
        assert_eq!(next_page(0, 0, i64::MAX, 100, 1, 50), Paging::Done);
        assert_eq!(next_page(u32::MAX - 10, 100, i64::MAX, 100, 1, 50), Paging::Next(u32::MAX));
    }
}
