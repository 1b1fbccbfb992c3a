//! Owners as Coder resolves them: `me`, a user id and a username in any case
//! are one user. Each is resolved once per credentials (`GET /users/{user}`)
//! and kept for a while, so the grant, the one-actor rule and the workspace
//! search (coderd's `owner:` matches usernames only) all see one name.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{OwnerRef, ResolvedOwner};
use crate::credentials::Resolved;
use crate::error::Result;

/// How long a resolution is reused. Usernames rarely change; a renamed user
/// is seen within this long.
const TTL: Duration = Duration::from_secs(600);

#[derive(Default)]
pub struct Owners {
    /// (credentials key, owner) → when resolved, and as what.
    cache: Mutex<HashMap<(String, OwnerRef), (Instant, ResolvedOwner)>>,
}

impl Owners {
    /// The owner, if resolved recently with these credentials.
    pub fn cached(&self, credentials: &Resolved, owner: &OwnerRef) -> Option<ResolvedOwner> {
        let cache = self.cache.lock().expect("owner cache");
        cache
            .get(&(credentials.key.clone(), owner.clone()))
            .filter(|(at, _)| at.elapsed() < TTL)
            .map(|(_, resolved)| resolved.clone())
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
        cache.retain(|_, (at, _)| at.elapsed() < TTL);
        Ok(resolved)
    }
}
