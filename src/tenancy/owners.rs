//! Owners as Coder resolves them: `me`, a user id and a username in any case
//! are one user. Each is resolved once per credentials (`GET /users/{user}`)
//! and kept for a while, so the grant, the one-actor rule and the workspace
//! search (coderd's `owner:` matches usernames only) all see one name.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::{OwnerRef, ResolvedOwner};
use crate::credentials::Resolved;
use crate::error::Result;
use crate::index::CoderIndex;

/// How long a resolution is reused. Usernames rarely change; a renamed user
/// is seen within this long.
const TTL: Duration = Duration::from_secs(600);

#[derive(Default)]
pub struct Owners {
    /// (credentials key, owner) → when resolved (or last vouched for), and
    /// as what.
    cache: Mutex<HashMap<(String, OwnerRef), (Instant, ResolvedOwner)>>,
    /// The Coder index, whose reads of the owners' workspaces vouch for a
    /// resolution (the same username with the same id, seen since).
    witness: OnceLock<CoderIndex>,
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

    /// The owner as Coder resolves it for these credentials.
    pub async fn resolve(&self, credentials: &Resolved, owner: &OwnerRef) -> Result<ResolvedOwner> {
        if let Some(resolved) = self.cached(credentials, owner) {
            return Ok(resolved);
        }
        let user = credentials.client.user(owner.path_param()).await?;
        let resolved = ResolvedOwner { id: user.id.to_lowercase(), username: user.username };
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
