//! Owners as Coder resolves them: `me`, a user id and a username in any case
//! are one user. Each is resolved once per credentials and kept for a
//! while, so the grant, the one-actor rule and the workspace search
//! (coderd's `owner:` matches usernames only) all see one name.
//!
//! A user named by id or username is looked up in the credentials' user
//! directory first (`GET /users`, a thousand users a request, read again on
//! a miss at most once a minute), so that a start over the resources of
//! thousands of owners costs a request per thousand users, not one per
//! owner in front of everything else the token has to do. What the
//! directory does not hold (a user made since, more users than its pages,
//! a token that may not list users) and `me` are read one by one
//! (`GET /users/{user}`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tracing::debug;

use super::{OwnerRef, ResolvedOwner};
use crate::coder::CoderClient;
use crate::credentials::Resolved;
use crate::error::Result;
use crate::index::CoderIndex;

/// How long a resolution is reused. Usernames rarely change; a renamed user
/// is seen within this long.
const TTL: Duration = Duration::from_secs(600);

/// Users a directory request asks for.
const DIRECTORY_PAGE: u32 = 1000;
/// Pages a directory read takes at most: the users beyond are read one by
/// one when a resource names them.
const DIRECTORY_PAGES: u32 = 10;
/// A miss reads the directory again at most this often; a user made since
/// is read on its own meanwhile.
const DIRECTORY_INTERVAL: Duration = Duration::from_secs(60);

#[derive(Default)]
pub struct Owners {
    /// (credentials key, owner) → when resolved (or last vouched for), and
    /// as what.
    cache: Mutex<HashMap<(String, OwnerRef), (Instant, ResolvedOwner)>>,
    /// The Coder index, whose reads of the owners' workspaces vouch for a
    /// resolution (the same username with the same id, seen since).
    witness: OnceLock<CoderIndex>,
    /// Credentials key → its user directory. A miss waits for the read
    /// another miss began rather than sending its own.
    directories: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Directory>>>>,
}

/// The users one credentials may read, as of one read of `GET /users`.
#[derive(Default)]
struct Directory {
    read_at: Option<Instant>,
    /// Lower-cased username → the user.
    users: HashMap<Box<str>, ResolvedOwner>,
}

impl Directory {
    /// Reads every page (up to [`DIRECTORY_PAGES`]) again; what a failed
    /// request leaves out is read one by one until the next read.
    async fn read(&mut self, client: &CoderClient) {
        self.read_at = Some(Instant::now());
        self.users.clear();
        let mut offset = 0u32;
        for _ in 0..DIRECTORY_PAGES {
            let page = match client.list_users(DIRECTORY_PAGE, offset).await {
                Ok(page) => page,
                Err(error) => {
                    debug!(%error, "cannot list Coder's users; owners are read one by one");
                    return;
                }
            };
            let received = u32::try_from(page.users.len()).unwrap_or(u32::MAX);
            for user in page.users {
                let resolved = ResolvedOwner { id: user.id.to_lowercase(), username: user.username };
                self.users.insert(resolved.username.to_lowercase().into(), resolved);
            }
            offset = offset.saturating_add(received);
            if received < DIRECTORY_PAGE || i64::from(offset) >= page.count {
                return;
            }
        }
    }

    fn find(&self, owner: &OwnerRef) -> Option<ResolvedOwner> {
        match owner {
            OwnerRef::TokenUser => None,
            OwnerRef::Username(name) => self.users.get(name.as_str()).cloned(),
            OwnerRef::Id(id) => self.users.values().find(|user| user.id.eq_ignore_ascii_case(id)).cloned(),
        }
    }
}

impl Owners {
    /// Lets the index's reads keep resolutions alive.
    pub fn witness(&self, index: CoderIndex) {
        let _ = self.witness.set(index);
    }

    /// Whether the resolution made (or vouched for) at `at` is still good;
    /// one the index saw again since is renewed.
    fn fresh(&self, credentials: &str, at: &mut Instant, resolved: &ResolvedOwner) -> bool {
        if at.elapsed() < TTL {
            return true;
        }
        let seen = self.witness.get().and_then(|index| index.owner_seen(credentials, &resolved.username));
        match seen {
            Some((id, seen_at))
                if id.eq_ignore_ascii_case(&resolved.id) && seen_at > *at && seen_at.elapsed() < TTL =>
            {
                *at = seen_at;
                true
            }
            _ => false,
        }
    }

    /// The owner, if resolved recently with these credentials.
    pub fn cached(&self, credentials: &Resolved, owner: &OwnerRef) -> Option<ResolvedOwner> {
        let mut cache = self.cache.lock().expect("owner cache");
        let (at, resolved) = cache.get_mut(&(credentials.key.clone(), owner.clone()))?;
        self.fresh(&credentials.key, at, resolved).then(|| resolved.clone())
    }

    /// A user named by id or username, from the credentials' directory
    /// (read first if it is older than [`DIRECTORY_INTERVAL`]).
    async fn in_directory(&self, credentials: &Resolved, owner: &OwnerRef) -> Option<ResolvedOwner> {
        if *owner == OwnerRef::TokenUser {
            return None;
        }
        let directory = {
            let mut directories = self.directories.lock().expect("owner directories");
            // Those of credentials no resource has used for a while go.
            directories.retain(|key, directory| {
                *key == credentials.key
                    || directory.try_lock().map_or(true, |d| d.read_at.is_some_and(|at| at.elapsed() < TTL))
            });
            directories.entry(credentials.key.clone()).or_default().clone()
        };
        let mut directory = directory.lock().await;
        if directory.read_at.is_none_or(|at| at.elapsed() >= DIRECTORY_INTERVAL) {
            directory.read(&credentials.client).await;
        }
        directory.find(owner)
    }

    /// The owner as Coder resolves it for these credentials.
    pub async fn resolve(&self, credentials: &Resolved, owner: &OwnerRef) -> Result<ResolvedOwner> {
        if let Some(resolved) = self.cached(credentials, owner) {
            return Ok(resolved);
        }
        let resolved = match self.in_directory(credentials, owner).await {
            Some(resolved) => resolved,
            None => {
                let user = credentials.client.user(owner.path_param()).await?;
                ResolvedOwner { id: user.id.to_lowercase(), username: user.username }
            }
        };
        let now = Instant::now();
        let mut cache = self.cache.lock().expect("owner cache");
        // Every spelling of the user answers the next time.
        for spelling in
            [owner.clone(), OwnerRef::Id(resolved.id.clone()), OwnerRef::Username(resolved.username.to_lowercase())]
        {
            cache.insert((credentials.key.clone(), spelling), (now, resolved.clone()));
        }
        cache.retain(|(key, _), (at, resolved)| self.fresh(key, at, resolved));
        Ok(resolved)
    }
}
