//! One owner's poller: looks at Coder with as few requests as the state of
//! that owner's workspaces allows.
//!
//! Each attention tick sends, for the owner:
//! - `owner:"…" healthy:false`: the workspaces with a disconnected or
//!   timed-out agent (one small page, usually empty);
//! - `owner:"…" status:running` with `limit=1`, read for its `count` only:
//!   when it differs from what the index holds, something started or
//!   stopped outside the operator's view, and everything is listed;
//! - `id:…` for the workspaces with a build or an agent start under way, and
//!   for those that just left the unhealthy list (only when there are any,
//!   at the faster active interval; a page of ids per request).
//!
//! Every `full_interval`, and whenever the counts disagree, the whole list
//! (paged) is read as the backstop. Requests go through the token's rate
//! limit like every other, and one owner has at most one in flight, so
//! polling can slow down but never crowd out the builds.

use std::collections::HashSet;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tracing::{debug, warn};

use super::{OwnerKey, PollPlan, Shared, upgrade};
use crate::coder::{CoderError, Workspace};

pub(super) fn spawn(shared: Weak<Shared>, key: OwnerKey, wake: Arc<Notify>) {
    tokio::spawn(async move { run(shared, key, wake).await });
}

async fn run(shared: Weak<Shared>, key: OwnerKey, wake: Arc<Notify>) {
    let mut last_full: Option<Instant> = None;
    let mut last_attention: Option<Instant> = None;
    let mut failures = 0u32;
    loop {
        let Some(index) = upgrade(&shared) else { return };
        let settings = index.settings;
        let full_due = last_full.is_none_or(|at| at.elapsed() >= settings.full_interval);
        let Some(plan) = index.plan(&key, full_due) else {
            debug!(owner = %key.owner, "no resource names this owner any more; its poller stops");
            return;
        };
        let attention_due = last_attention.is_none_or(|at| at.elapsed() >= settings.attention_interval);
        let outcome = poll(&index, &key, &plan, attention_due).await;
        if outcome.is_ok() {
            super::chats::poll(&index, &key, &plan.client).await;
        }
        if plan.full {
            last_full = Some(Instant::now());
            last_attention = last_full;
        } else if attention_due {
            last_attention = Some(Instant::now());
        }
        index.poll_ended(&key, outcome.as_ref().err());
        let pause = match outcome {
            Ok(()) => {
                failures = 0;
                settings.active_interval.min(settings.attention_interval)
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                // Put back what this poll was to read.
                requeue_reads(&index, &key, plan.read_ids);
                if plan.full {
                    last_full = None;
                }
                // A rejected token is not fixed by asking again soon; a new
                // one (a resource resolving rotated credentials) wakes the
                // poller early.
                let pause = if error.is_retryable() {
                    settings.attention_interval * failures.min(6)
                } else {
                    (settings.attention_interval * 6).max(Duration::from_secs(60))
                };
                warn!(owner = %key.owner, %error, retry_in = ?pause, "cannot poll Coder");
                pause
            }
        };
        drop(index);
        // Woken early when the operator builds (to follow the build) and
        // when a new resource needs a first list.
        let _ = tokio::time::timeout(pause, wake.notified()).await;
    }
}

fn requeue_reads(index: &Shared, key: &OwnerKey, ids: Vec<String>) {
    if let Some(state) = index.owners.lock().expect("index owners").get_mut(key) {
        state.read_soon.extend(ids);
    }
}

async fn poll(index: &Shared, key: &OwnerKey, plan: &PollPlan, attention_due: bool) -> Result<(), CoderError> {
    let owner = quote(&plan.query_owner);
    let page_size = index.settings.page_size;
    if plan.full {
        // Merged page by page: at 10,000 workspaces the whole list, decoded,
        // would be tens of megabytes held at once.
        let started = Instant::now();
        let mut seen = HashSet::new();
        let mut unnamed_running = 0;
        let pages = plan.page_budget(plan.named, page_size);
        let complete = for_each_page(plan, &format!("owner:{owner}"), page_size, pages, |page| {
            seen.extend(page.iter().map(|workspace| workspace.name.to_lowercase()));
            unnamed_running += index.merge(key, page, started).unnamed_running;
        })
        .await?;
        if !complete {
            warn!(
                owner = %key.owner, pages, named = plan.named,
                "Coder lists more workspaces for this owner than its resources name, beyond a page more; \
                 reading the named ones on their own"
            );
            // Before the list counts as done: until then a resource sees
            // its workspace as unknown, never as absent.
            read_names(index, key, plan, index.unread_names(key, &seen)).await?;
        }
        index.listed(key, &seen, started, complete.then_some(unnamed_running));
        return Ok(());
    }
    if !plan.read_ids.is_empty() {
        read_ids(index, key, plan).await?;
    }
    if !attention_due {
        return Ok(());
    }
    let started = Instant::now();
    let unhealthy = list_all(plan, &format!("owner:{owner} healthy:false"), page_size, plan.named).await?;
    let now_unhealthy: HashSet<String> = index.merge(key, unhealthy, started).kept_ids.into_iter().collect();
    {
        let mut owners = index.owners.lock().expect("index owners");
        if let Some(state) = owners.get_mut(key) {
            // Healthy again, or stopped, or gone: read those by id.
            let recovered: Vec<String> = state.unhealthy.difference(&now_unhealthy).cloned().collect();
            state.read_soon.extend(recovered);
            state.unhealthy = now_unhealthy;
        }
    }
    if !plan.read_ids.is_empty() {
        // Builds are under way: the count moves with them, and the index
        // follows those by id already.
        return Ok(());
    }
    let running = plan.client.list_workspaces(&format!("owner:{owner} status:running"), 1, 0).await?;
    if index.running_count_differs(key, running.count) {
        debug!(
            owner = %key.owner, coder = running.count,
            "the number of running workspaces changed outside the index; listing them all"
        );
        if let Some(state) = index.owners.lock().expect("index owners").get_mut(key) {
            state.full_list_due = true;
        }
        plan.wake_poller.notify_one();
    }
    Ok(())
}

/// Reads the workspaces in `plan.read_ids`, a few dozen per request. An id
/// that no longer answers was deleted.
async fn read_ids(index: &Shared, key: &OwnerKey, plan: &PollPlan) -> Result<(), CoderError> {
    // One page of ids per query: as many as a page holds, so each query is
    // one request (100 ids make a URL of under 4 KB).
    let per_query = usize::try_from(index.settings.page_size).unwrap_or(100).max(1);
    for chunk in plan.read_ids.chunks(per_query) {
        let started = Instant::now();
        let query = format!("id:{}", chunk.join(","));
        let mut found = list_all(plan, &query, index.settings.page_size, chunk.len()).await?;
        // Only what was asked for.
        found.retain(|workspace| chunk.contains(&workspace.id));
        for id in chunk {
            if !found.iter().any(|w| w.id == *id) {
                index.remove_id(key, id);
            }
        }
        index.merge(key, found, started);
    }
    Ok(())
}

/// Reads the workspaces resources name that a list cut short did not have,
/// by owner and name: as many requests as names, never more.
async fn read_names(index: &Shared, key: &OwnerKey, plan: &PollPlan, names: Vec<String>) -> Result<(), CoderError> {
    for name in names {
        let started = Instant::now();
        if let Some(workspace) = plan.client.workspace_by_owner_and_name(&plan.query_owner, &name).await? {
            index.merge(key, vec![workspace], started);
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
    /// The pages a list of this owner may take: what [`page_budget`] allows
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

/// A search value in double quotes, as coderd's parser takes it.
fn quote(value: &str) -> String {
    format!("\"{}\"", value.replace('"', ""))
}

#[cfg(test)]
mod tests {
    use super::*;

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
