//! Which Coder a resource talks to, and with which token: the operator's
//! default credentials, or a Secret named by `spec.credentialsRef` in the
//! resource's own namespace. Clients are cached per Secret version, so a
//! rotated token takes effect on the next reconcile; a default token read
//! from a file (a mounted Secret) is read again when the file changes.
//! A Secret's URL must be on the operator's allow-list.
//!
//! A Secret's client is kept only while a live resource names the Secret:
//! each client has its own connection pool and TLS setup, and a tenant can
//! make as many Secrets as it likes. The controller says when a resource is
//! gone ([`Credentials::forget`]); a resource that switches to another
//! Secret, or to the default credentials, lets go of the one before.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt};
use tracing::{info, warn};

use crate::coder::{CoderClient, RateLimit, RequestObserver, SessionToken};
use crate::crd::ChatWorkspace;
use crate::error::{Error, Result};
use crate::key::ResourceKey;
use crate::leader::Fence;
use crate::tenancy::urls::AllowedUrls;

/// How the key of the operator's own default credentials begins.
const OPERATORS_OWN: &str = "default@";

/// The name metrics give the operator's own default credentials; a
/// Secret's credentials are named `<namespace>/<Secret name>`, which holds
/// a slash and so never collides with it.
pub const OPERATORS_OWN_NAME: &str = "operator";

/// The name metrics give the credentials of `secret`: which Secret, never
/// anything of the token it holds.
fn secret_name((namespace, name): &SecretKey) -> String {
    format!("{namespace}/{name}")
}

/// Whether `key` names the operator's own default credentials: the Coder
/// its admin configured, trusted to answer truthfully, unlike a URL a
/// tenant's Secret names (see `index`, which bounds what it keeps of the
/// latter only).
pub fn is_operators_own(key: &str) -> bool {
    key.starts_with(OPERATORS_OWN)
}

/// A Coder client and a stable name for the credentials it uses (never the
/// token itself), for caches and for telling workspaces of different Coder
/// deployments apart.
#[derive(Clone)]
pub struct Resolved {
    pub client: CoderClient,
    pub key: String,
}

/// What identifies one version of a token file: a mounted Secret is
/// replaced by a new file (a symlink swap), an edited file changes size or
/// time.
type FileStamp = (Option<SystemTime>, u64, u64);

struct TokenFile {
    path: PathBuf,
    stamp: FileStamp,
}

struct Default {
    url: String,
    resolved: Resolved,
    file: Option<TokenFile>,
}

pub struct Credentials {
    default: Mutex<Option<Default>>,
    request_timeout: Duration,
    observer: Option<Arc<dyn RequestObserver>>,
    rate_limit: Option<Arc<RateLimit>>,
    allowed_urls: AllowedUrls,
    fence: Option<Fence>,
    secrets: Mutex<SecretClients>,
}

/// (namespace, Secret name).
type SecretKey = (String, String);

/// The clients made from Secrets, and which live resource names which
/// Secret: a client goes with the last resource that names its Secret.
#[derive(Default)]
struct SecretClients {
    /// Secret → (its resourceVersion, the client made from it).
    clients: HashMap<SecretKey, (String, Resolved)>,
    /// Resource (with a `credentialsRef`) → the Secret it names.
    named_by: HashMap<ResourceKey, SecretKey>,
    /// Secret → how many resources name it.
    users: HashMap<SecretKey, usize>,
}

impl SecretClients {
    /// `resource` names `secret` now (`None`: no Secret). Returns the
    /// Secret no resource names any more, if this made one.
    #[must_use]
    fn uses(&mut self, resource: &ResourceKey, secret: Option<SecretKey>) -> Option<SecretKey> {
        // The common case: nobody has ever named a Secret.
        if secret.is_none() && self.named_by.is_empty() {
            return None;
        }
        if self.named_by.get(resource) == secret.as_ref() {
            return None;
        }
        if let Some(secret) = &secret {
            *self.users.entry(secret.clone()).or_default() += 1;
        }
        let before = match secret {
            Some(secret) => self.named_by.insert(resource.clone(), secret),
            None => self.named_by.remove(resource),
        };
        before.filter(|before| self.release(before))
    }

    /// One resource fewer names `secret`; its client goes with the last
    /// (then true).
    fn release(&mut self, secret: &SecretKey) -> bool {
        let Some(count) = self.users.get_mut(secret) else { return false };
        *count = count.saturating_sub(1);
        if *count == 0 {
            self.users.remove(secret);
            self.clients.remove(secret);
            return true;
        }
        false
    }
}

impl Credentials {
    /// `rate_limit` is shared by every client made here: the operator's
    /// whole Coder traffic stays under it, whatever the credentials.
    /// A Secret may name only the default URL's origin until
    /// [`Credentials::with_allowed_urls`] says otherwise.
    pub fn new(
        default: Option<(String, SessionToken)>,
        request_timeout: Duration,
        observer: Option<Arc<dyn RequestObserver>>,
        rate_limit: Option<Arc<RateLimit>>,
    ) -> Result<Self> {
        let default_url = default.as_ref().map(|(url, _)| url.clone());
        let allowed_urls = AllowedUrls::new(&[], default_url.as_deref()).map_err(Error::Credentials)?;
        let credentials = Self {
            default: Mutex::new(None),
            request_timeout,
            observer,
            rate_limit,
            allowed_urls,
            fence: None,
            secrets: Mutex::default(),
        };
        if let Some((url, token)) = default {
            let client = credentials.client(&url, token, OPERATORS_OWN_NAME)?;
            let resolved = Resolved { key: format!("{OPERATORS_OWN}{url}"), client };
            *credentials.default.lock().expect("default credentials") = Some(Default { url, resolved, file: None });
        }
        Ok(credentials)
    }

    /// The default token comes from `path` and is read again whenever the
    /// file changes (a rotated, mounted Secret), with no restart.
    pub fn with_default_token_file(self, path: &Path) -> Result<Self> {
        {
            let mut default = self.default.lock().expect("default credentials");
            let default = default
                .as_mut()
                .ok_or_else(|| Error::Credentials("a default token file needs a default Coder URL".into()))?;
            default.file = Some(TokenFile { path: path.to_owned(), stamp: stamp(path).unwrap_or_default() });
        }
        Ok(self)
    }

    /// The origins a `spec.credentialsRef` Secret may name.
    pub fn with_allowed_urls(self, allowed_urls: AllowedUrls) -> Self {
        Self { allowed_urls, ..self }
    }

    /// Every client made here writes to Coder only while `fence` is open
    /// (see `leader::Fence`).
    pub fn with_fence(self, fence: Fence) -> Self {
        if let Some(default) = self.default.lock().expect("default credentials").as_mut() {
            default.resolved.client = default.resolved.client.clone().with_fence(fence.clone());
        }
        Self { fence: Some(fence), ..self }
    }

    /// `name`: what metrics call these credentials.
    fn client(&self, url: &str, token: SessionToken, name: &str) -> Result<CoderClient> {
        let mut client = CoderClient::new(url, token, self.request_timeout)?;
        if let Some(observer) = &self.observer {
            client = client.with_observer(observer.clone(), name);
        }
        if let Some(limit) = &self.rate_limit {
            client = client.with_rate_limit(limit.clone());
        }
        if let Some(fence) = &self.fence {
            client = client.with_fence(fence.clone());
        }
        Ok(client)
    }

    /// The default credentials, with the token file read again if it changed.
    fn default_credentials(&self) -> Result<Resolved> {
        let mut guard = self.default.lock().expect("default credentials");
        let default = guard.as_mut().ok_or_else(|| {
            Error::Credentials(
                "the operator has no default Coder credentials and spec.credentialsRef is not set".into(),
            )
        })?;
        if let Some(file) = &mut default.file
            && let Ok(current) = stamp(&file.path)
            && current != file.stamp
        {
            match SessionToken::from_file(&file.path) {
                Ok(token) => {
                    let client = self.client(&default.url, token, OPERATORS_OWN_NAME)?;
                    default.resolved = Resolved { key: default.resolved.key.clone(), client };
                    file.stamp = current;
                    info!(path = %file.path.display(), "the default Coder token file changed; using the new token");
                }
                // Half-written or emptied: keep the old token and look again.
                Err(error) => warn!(%error, "cannot read the changed default token file; keeping the previous token"),
            }
        }
        Ok(default.resolved.clone())
    }

    /// `resource` is gone: a Secret no other resource names loses its client.
    pub fn forget(&self, resource: &ResourceKey) {
        let released = self.secrets.lock().expect("credentials cache").uses(resource, None);
        self.released(released);
    }

    /// Metrics forget a Secret's credentials with its client: a label per
    /// Secret ever used would grow without bound as tenants make Secrets.
    fn released(&self, secret: Option<SecretKey>) {
        if let (Some(secret), Some(observer)) = (secret, &self.observer) {
            observer.credentials_released(&secret_name(&secret));
        }
    }

    /// How many Secrets have a client now.
    pub fn secret_clients(&self) -> usize {
        self.secrets.lock().expect("credentials cache").clients.len()
    }

    /// The credentials `workspace` uses.
    pub async fn for_resource(&self, kube: &kube::Client, workspace: &ChatWorkspace) -> Result<Resolved> {
        let namespace = workspace.namespace().unwrap_or_default();
        let user = |secret| {
            let resource = ResourceKey::new(&namespace, &workspace.name_any());
            let released = self.secrets.lock().expect("credentials cache").uses(&resource, secret);
            self.released(released);
        };
        let Some(reference) = &workspace.spec.credentials_ref else {
            if !self.secrets.lock().expect("credentials cache").named_by.is_empty() {
                user(None);
            }
            return self.default_credentials();
        };
        user(Some((namespace.clone(), reference.name.clone())));
        let secrets: Api<Secret> = Api::namespaced(kube.clone(), &namespace);
        let secret = secrets.get_opt(&reference.name).await?.ok_or_else(|| Error::CredentialsSecretMissing {
            namespace: namespace.clone(),
            secret: reference.name.clone(),
        })?;
        let version = secret.resource_version().unwrap_or_default();
        let cache_key = (namespace.clone(), reference.name.clone());
        if let Some((cached_version, resolved)) =
            self.secrets.lock().expect("credentials cache").clients.get(&cache_key)
            && *cached_version == version
        {
            return Ok(resolved.clone());
        }
        let field = |key: &str| -> Result<String> {
            let bytes = secret
                .data
                .as_ref()
                .and_then(|data| data.get(key))
                .map(|value| value.0.clone())
                .or_else(|| secret.string_data.as_ref().and_then(|d| d.get(key)).map(|s| s.clone().into_bytes()))
                .ok_or_else(|| {
                    Error::Credentials(format!("Secret {namespace}/{} has no key {key:?}", reference.name))
                })?;
            String::from_utf8(bytes).map(|s| s.trim().to_string()).map_err(|_| {
                Error::Credentials(format!("Secret {namespace}/{} key {key:?} is not UTF-8", reference.name))
            })
        };
        let url = field("url")?;
        if !self.allowed_urls.allows(&url) {
            return Err(Error::CoderUrlNotAllowed {
                namespace,
                secret: reference.name.clone(),
                allowed: self.allowed_urls.to_string(),
            });
        }
        let token = SessionToken::new(field("token")?)
            .map_err(|_| Error::Credentials(format!("Secret {namespace}/{} has an empty token", reference.name)))?;
        let client = self.client(&url, token, &secret_name(&cache_key))?;
        let resolved = Resolved { client, key: format!("secret:{namespace}/{}@{url}", reference.name) };
        let mut secrets = self.secrets.lock().expect("credentials cache");
        // Kept only while a resource names the Secret (it may have gone
        // while the Secret was read).
        if secrets.users.contains_key(&cache_key) {
            secrets.clients.insert(cache_key, (version, resolved.clone()));
        }
        Ok(resolved)
    }
}

fn stamp(path: &Path) -> std::io::Result<FileStamp> {
    let metadata = std::fs::metadata(path)?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&metadata);
    #[cfg(not(unix))]
    let inode = 0;
    Ok((metadata.modified().ok(), metadata.len(), inode))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(name: &str) -> SecretKey {
        ("team".into(), name.into())
    }

    fn client_for(clients: &mut SecretClients, name: &str) {
        let client = CoderClient::new("http://127.0.0.1:9", SessionToken::new("t").unwrap(), Duration::from_secs(1));
        let resolved = Resolved { client: client.unwrap(), key: name.into() };
        clients.clients.insert(secret(name), ("1".into(), resolved));
    }

    #[test]
    fn a_secrets_client_goes_with_the_last_resource_that_names_it() {
        let mut clients = SecretClients::default();
        let (a, b) = (ResourceKey::new("team", "a"), ResourceKey::new("team", "b"));
        assert_eq!(clients.uses(&a, Some(secret("shared"))), None);
        assert_eq!(clients.uses(&a, Some(secret("shared"))), None);
        assert_eq!(clients.uses(&b, Some(secret("shared"))), None);
        client_for(&mut clients, "shared");
        assert_eq!(clients.uses(&a, None), None);
        assert!(clients.clients.contains_key(&secret("shared")), "b still names it");
        assert_eq!(clients.uses(&b, Some(secret("own"))), Some(secret("shared")), "released");
        client_for(&mut clients, "own");
        assert!(!clients.clients.contains_key(&secret("shared")), "nobody names it any more");
        assert_eq!(clients.uses(&b, None), Some(secret("own")));
        assert!(clients.clients.is_empty() && clients.users.is_empty() && clients.named_by.is_empty());
    }

    #[test]
    fn a_changed_token_file_is_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "first-token\n").unwrap();
        let credentials = Credentials::new(
            Some(("http://127.0.0.1:9".into(), SessionToken::from_file(&path).unwrap())),
            Duration::from_secs(1),
            None,
            None,
        )
        .unwrap()
        .with_default_token_file(&path)
        .unwrap();
        let first = credentials.default_credentials().unwrap();
        // A mounted Secret is replaced by a new file.
        let next = dir.path().join("token.new");
        std::fs::write(&next, "second-token-longer\n").unwrap();
        std::fs::rename(&next, &path).unwrap();
        let second = credentials.default_credentials().unwrap();
        assert_eq!(first.key, second.key, "caches keyed by the credentials stay valid");
        assert!(first.client.uses_token("first-token"));
        assert!(second.client.uses_token("second-token-longer"), "the new token is used");
        // An emptied file keeps the last good token.
        std::fs::write(&path, "").unwrap();
        let third = credentials.default_credentials().unwrap();
        assert!(third.client.uses_token("second-token-longer"));
    }
}
