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
    if plan.full {
        // Merged page by page: at 10,000 workspaces the whole list, decoded,
        // would be tens of megabytes held at once.
        let started = Instant::now();
        let mut seen = HashSet::new();
        for_each_page(plan, &format!("owner:{owner}"), index.settings.page_size, |page| {
            seen.extend(page.iter().map(|workspace| workspace.name.to_lowercase()));
            index.merge(key, page, started);
        })
        .await?;
        index.listed(key, &seen, started);
        return Ok(());
    }
    if !plan.read_ids.is_empty() {
        read_ids(index, key, plan).await?;
    }
    if !attention_due {
        return Ok(());
    }
    let started = Instant::now();
    let unhealthy = list_all(plan, &format!("owner:{owner} healthy:false"), index.settings.page_size).await?;
    let now_unhealthy: HashSet<String> = unhealthy.iter().map(|w| w.id.clone()).collect();
    index.merge(key, unhealthy, started);
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
    if usize::try_from(running.count).unwrap_or(usize::MAX) != plan.expected_running {
        debug!(
            owner = %key.owner, coder = running.count, index = plan.expected_running,
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
        let found = list_all(plan, &query, index.settings.page_size).await?;
        for id in chunk {
            if !found.iter().any(|w| w.id == *id) {
                index.remove_id(key, id);
            }
        }
        index.merge(key, found, started);
    }
    Ok(())
}

/// Every workspace matching `query`.
async fn list_all(plan: &PollPlan, query: &str, page_size: u32) -> Result<Vec<Workspace>, CoderError> {
    let mut workspaces = Vec::new();
    for_each_page(plan, query, page_size, |page| workspaces.extend(page)).await?;
    Ok(workspaces)
}

/// Hands each page of the workspaces matching `query` to `each`, in order.
async fn for_each_page(
    plan: &PollPlan,
    query: &str,
    page_size: u32,
    mut each: impl FnMut(Vec<Workspace>),
) -> Result<(), CoderError> {
    let mut offset = 0u32;
    loop {
        let page = plan.client.list_workspaces(query, page_size, offset).await?;
        let received = page.workspaces.len() as u32;
        each(page.workspaces);
        offset += received;
        if received == 0 || i64::from(offset) >= page.count {
            return Ok(());
        }
    }
}

/// A search value in double quotes, as coderd's parser takes it.
fn quote(value: &str) -> String {
    format!("\"{}\"", value.replace('"', ""))
}
