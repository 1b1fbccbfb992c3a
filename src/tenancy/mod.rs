//! Who may drive which Coder workspace.
//!
//! The operator's default token is usually an Owner's: left unchecked, the
//! right to create a `ChatWorkspace` in one namespace would become the right
//! to act on every Coder user's workspaces. So the cluster admin grants each
//! namespace the Coder users whose workspaces it may drive with the default
//! credentials, with an annotation on the Namespace (Kubernetes' own idiom
//! for per-namespace policy, as Pod Security Admission's labels are). A
//! resource with its own Secret (`spec.credentialsRef`) acts with that
//! token's rights, and Coder's RBAC decides.
//!
//! This module is the pure part: parsing the grant, naming owners, and the
//! decisions with their messages. [`namespaces`] watches the annotation,
//! [`owners`] resolves owners through Coder, [`urls`] is the allow-list of
//! Coder URLs a Secret may name, [`adoption`] the consent to drive a
//! workspace the operator did not create.

pub mod adoption;
pub mod installs;
pub mod namespaces;
pub mod owners;
pub mod urls;

use std::fmt;
use std::sync::Arc;

use kube::ResourceExt;

use crate::coder;
use crate::crd::ChatWorkspace;
use crate::credentials::Resolved;
use crate::error::{Error, Result};

/// The Namespace annotation that grants Coder owners to a namespace.
pub const OWNERS_ANNOTATION: &str = "chat.coder.com/coder-owners";

/// Which Coder users a namespace may drive with the default credentials.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Grant {
    /// No annotation (or an empty one): the default credentials are not used
    /// for this namespace at all.
    #[default]
    Nothing,
    /// `*`: any Coder user.
    Anyone,
    /// These usernames, lowercased (Coder's usernames are case-insensitive).
    Users(Vec<String>),
}

impl Grant {
    /// Reads the annotation's value: comma-separated usernames, or `*`.
    /// Whitespace around entries and empty entries are ignored; a `*`
    /// anywhere grants anyone.
    pub fn parse(annotation: Option<&str>) -> Grant {
        let Some(value) = annotation else { return Grant::Nothing };
        let mut users: Vec<String> =
            value.split(',').map(str::trim).filter(|entry| !entry.is_empty()).map(str::to_lowercase).collect();
        if users.iter().any(|user| user == "*") {
            return Grant::Anyone;
        }
        if users.is_empty() {
            return Grant::Nothing;
        }
        users.sort();
        users.dedup();
        Grant::Users(users)
    }

    /// Whether the Coder user `username` is granted.
    pub fn allows(&self, username: &str) -> bool {
        match self {
            Grant::Nothing => false,
            Grant::Anyone => true,
            Grant::Users(users) => users.iter().any(|user| user.eq_ignore_ascii_case(username)),
        }
    }
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Grant::Nothing => f.write_str("no annotation"),
            Grant::Anyone => write!(f, "{OWNERS_ANNOTATION}=*"),
            Grant::Users(users) => write!(f, "{OWNERS_ANNOTATION}={}", users.join(",")),
        }
    }
}

/// How `spec.owner` names a Coder user, as coderd's `{user}` path parameter
/// reads it: `me`, a user id, or a username.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum OwnerRef {
    /// No `spec.owner`, or `me`: the token's own user.
    TokenUser,
    /// A user id (a UUID; usernames are at most 32 characters, so never one).
    Id(String),
    /// A username, lowercased.
    Username(String),
}

impl OwnerRef {
    pub fn from_spec(owner: Option<&str>) -> OwnerRef {
        match owner.map(str::trim) {
            None | Some("") => OwnerRef::TokenUser,
            // Coder's own name for the token's user, accepted as it spells it.
            Some(coder::TOKEN_USER) => OwnerRef::TokenUser,
            Some(value) => match canonical_uuid(value) {
                Some(id) => OwnerRef::Id(id),
                None => OwnerRef::Username(value.to_lowercase()),
            },
        }
    }

    /// The `{user}` path parameter that names this owner in Coder.
    pub fn path_param(&self) -> &str {
        match self {
            OwnerRef::TokenUser => coder::TOKEN_USER,
            OwnerRef::Id(id) => id,
            OwnerRef::Username(name) => name,
        }
    }
}

impl fmt::Display for OwnerRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OwnerRef::TokenUser => f.write_str("the default token's own user"),
            OwnerRef::Id(id) => write!(f, "the Coder user with id {id}"),
            OwnerRef::Username(name) => write!(f, "Coder user {name:?}"),
        }
    }
}

/// The user id `text` names, in the form Coder writes ids (lowercase, with
/// hyphens), if coderd's `{user}` parameter reads it as an id: coderd tries
/// Go's `uuid.Parse` first, which also takes 32 hex digits, braces and a
/// `urn:uuid:` prefix. Such a text is never taken for a username, whatever
/// a grant lists: coderd would look up a user by that id instead.
pub fn canonical_uuid(text: &str) -> Option<String> {
    let hyphenated = |text: &str| {
        text.len() == 36
            && text
                .char_indices()
                .all(|(at, c)| if matches!(at, 8 | 13 | 18 | 23) { c == '-' } else { c.is_ascii_hexdigit() })
    };
    let digits: String = match text.len() {
        36 if hyphenated(text) => text.replace('-', ""),
        38 if text.starts_with('{') && text.ends_with('}') && hyphenated(&text[1..37]) => text[1..37].replace('-', ""),
        45 if text.is_char_boundary(9) && text[..9].eq_ignore_ascii_case("urn:uuid:") && hyphenated(&text[9..]) => {
            text[9..].replace('-', "")
        }
        32 if text.chars().all(|c| c.is_ascii_hexdigit()) => text.to_owned(),
        _ => return None,
    };
    let digits = digits.to_lowercase();
    Some(format!("{}-{}-{}-{}-{}", &digits[..8], &digits[8..12], &digits[12..16], &digits[16..20], &digits[20..]))
}

/// A Coder user as Coder resolved it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedOwner {
    pub id: String,
    pub username: String,
}

/// Whether a resource of a namespace with `grant` may use the default
/// credentials for `owner`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admission {
    Granted,
    /// The grant lists usernames and the owner is named by id or `me`:
    /// resolve it (a user read, cached), then ask again.
    Resolve,
    Refused(Refusal),
}

/// Why a resource may not use the default credentials, in words for the
/// namespace's users and the command for its admin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub namespace: String,
    /// The owner's username when known (as written, or as Coder resolved
    /// it); `None` for the token's own user or an id not resolved (no
    /// request is made just to word a refusal).
    pub username: Option<String>,
    pub owner: OwnerRef,
    pub grant: Grant,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let username = self.username.as_deref().map_or_else(|| "USERNAME".to_owned(), str::to_lowercase);
        let wanted = match &self.grant {
            Grant::Users(users) => {
                let mut all = users.clone();
                all.push(username.clone());
                all.join(",")
            }
            _ => username.clone(),
        };
        let owner = match (&self.username, &self.owner) {
            (Some(name), _) => format!("Coder user {name:?}"),
            (None, owner) => owner.to_string(),
        };
        write!(
            f,
            "namespace {ns} may not use the operator's default Coder credentials for {owner} (namespace annotation \
             {OWNERS_ANNOTATION}: {grant}); nothing was sent to Coder. A cluster admin grants it with \
             `kubectl annotate namespace {ns} {OWNERS_ANNOTATION}={wanted} --overwrite`, or set spec.credentialsRef \
             to a Secret holding this namespace's own Coder token",
            ns = self.namespace,
            grant = match &self.grant {
                Grant::Nothing => "not set".to_owned(),
                Grant::Anyone => "*".to_owned(),
                Grant::Users(users) => format!("{:?}", users.join(",")),
            },
        )
    }
}

/// The grant decision for the default credentials. `resolved` is the owner
/// as Coder resolved it, when already known.
pub fn admit(namespace: &str, grant: &Grant, owner: &OwnerRef, resolved: Option<&ResolvedOwner>) -> Admission {
    let spelled = match owner {
        OwnerRef::Username(name) => Some(name.as_str()),
        _ => None,
    };
    // A refusal names the owner only as the spec spelled it: a user id or
    // `me` is never turned into a username for a namespace that was not
    // granted that user.
    let refuse = || {
        Admission::Refused(Refusal {
            namespace: namespace.to_owned(),
            username: spelled.map(str::to_owned),
            owner: owner.clone(),
            grant: grant.clone(),
        })
    };
    match (grant, resolved.map(|r| r.username.as_str()).or(spelled)) {
        (Grant::Anyone, _) => Admission::Granted,
        // Refused whoever it is: no need to ask Coder.
        (Grant::Nothing, _) => refuse(),
        (Grant::Users(_), Some(name)) if grant.allows(name) => Admission::Granted,
        (Grant::Users(_), Some(_)) => refuse(),
        (Grant::Users(_), None) => Admission::Resolve,
    }
}

/// What the reconciler asks before it sends anything to Coder for a
/// resource: the namespace grants (watched) and the owners (resolved once).
pub struct Tenancy {
    pub namespaces: Arc<namespaces::NamespaceGrants>,
    pub owners: owners::Owners,
}

impl Tenancy {
    pub fn new(kube: kube::Client) -> Self {
        Self { namespaces: Arc::new(namespaces::NamespaceGrants::new(kube)), owners: owners::Owners::default() }
    }

    /// The owner `resource` drives, as Coder resolved it, once the resource
    /// may drive it: a resource on the default credentials needs its
    /// namespace's grant, and nothing is sent to Coder for it without one
    /// (but resolving an owner named by id or `me` against a list of
    /// usernames, a user read shared by every resource).
    pub async fn admit(&self, resource: &ChatWorkspace, credentials: &Resolved) -> Result<ResolvedOwner> {
        let owner = OwnerRef::from_spec(resource.spec.owner.as_deref());
        let Some(namespace) = resource.namespace().filter(|_| resource.spec.credentials_ref.is_none()) else {
            return self.owners.resolve(credentials, &owner).await;
        };
        let grant = self.namespaces.grant(&namespace).await?;
        // What the spelling alone refuses is refused without a request.
        if let Admission::Refused(refusal) =
            admit(&namespace, &grant, &owner, self.owners.cached(credentials, &owner).as_ref())
        {
            return Err(Error::OwnerNotGranted(refusal));
        }
        // The grant counts for the user Coder resolves, whatever the
        // spelling: a username that coderd reads as an id is another user.
        let resolved = self.owners.resolve(credentials, &owner).await?;
        match admit(&namespace, &grant, &owner, Some(&resolved)) {
            Admission::Granted => Ok(resolved),
            Admission::Refused(refusal) => Err(Error::OwnerNotGranted(refusal)),
            Admission::Resolve => unreachable!("a resolved owner has a username"),
        }
    }
}

/// Cuts text that came from Coder (a job error) to at most `max` characters,
/// marking the cut, so a huge error never fills a status or an Event.
pub fn cut(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

/// The longest Event note the apiserver accepts, in bytes.
pub const MAX_EVENT_NOTE_BYTES: usize = 1024;

/// An Event note cut to what the apiserver accepts (a longer one is
/// refused, and the Event lost), marking the cut.
pub fn event_note(text: &str) -> String {
    if text.len() <= MAX_EVENT_NOTE_BYTES {
        return text.to_owned();
    }
    let mark = "…";
    let mut end = MAX_EVENT_NOTE_BYTES - mark.len();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{mark}", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolved(id: &str, username: &str) -> ResolvedOwner {
        ResolvedOwner { id: id.into(), username: username.into() }
    }

    #[test]
    fn parses_the_annotation() {
        assert_eq!(Grant::parse(None), Grant::Nothing);
        assert_eq!(Grant::parse(Some("")), Grant::Nothing);
        assert_eq!(Grant::parse(Some(" , ")), Grant::Nothing);
        assert_eq!(Grant::parse(Some("*")), Grant::Anyone);
        assert_eq!(Grant::parse(Some("alice, *")), Grant::Anyone);
        assert_eq!(Grant::parse(Some(" Bob,alice,,bob ")), Grant::Users(vec!["alice".into(), "bob".into()]));
    }

    #[test]
    fn usernames_compare_case_insensitively() {
        let grant = Grant::parse(Some("Alice"));
        assert!(grant.allows("alice"));
        assert!(grant.allows("ALICE"));
        assert!(!grant.allows("alice2"));
        assert!(!Grant::Nothing.allows("alice"));
        assert!(Grant::Anyone.allows("anyone"));
    }

    #[test]
    fn names_owners_as_coder_reads_them() {
        assert_eq!(OwnerRef::from_spec(None), OwnerRef::TokenUser);
        assert_eq!(OwnerRef::from_spec(Some("me")), OwnerRef::TokenUser);
        assert_eq!(OwnerRef::from_spec(Some("Alice")), OwnerRef::Username("alice".into()));
        let id = "0E6CD9A4-46B7-4B5E-8D0F-6A1B2C3D4E02";
        assert_eq!(OwnerRef::from_spec(Some(id)), OwnerRef::Id(id.to_lowercase()));
        assert_eq!(OwnerRef::from_spec(Some(id)).path_param(), id.to_lowercase());
        assert_eq!(OwnerRef::TokenUser.path_param(), "me");
        assert_eq!(
            OwnerRef::from_spec(Some("0e6cd9a4-46b7-4b5e-8d0f")),
            OwnerRef::Username("0e6cd9a4-46b7-4b5e-8d0f".into())
        );
    }

    #[test]
    fn every_form_coderd_reads_as_a_user_id_is_an_id() {
        let id = OwnerRef::Id("0e6cd9a4-46b7-4b5e-8d0f-6a1b2c3d4e02".into());
        for spelled in [
            "0e6cd9a4-46b7-4b5e-8d0f-6a1b2c3d4e02",
            "0E6CD9A4-46B7-4B5E-8D0F-6A1B2C3D4E02",
            "0e6cd9a446b74b5e8d0f6a1b2c3d4e02",
            "{0e6cd9a4-46b7-4b5e-8d0f-6a1b2c3d4e02}",
            "urn:uuid:0e6cd9a4-46b7-4b5e-8d0f-6a1b2c3d4e02",
            "URN:UUID:0E6CD9A4-46B7-4B5E-8D0F-6A1B2C3D4E02",
        ] {
            assert_eq!(OwnerRef::from_spec(Some(spelled)), id, "{spelled}");
        }
        for username in
            ["0e6cd9a446b74b5e8d0f6a1b2c3d4e0", "0e6cd9a4-46b7-4b5e-8d0f-6a1b2c3d4e0z", "{0e6cd9a4}", "urn:uuid:x"]
        {
            assert!(matches!(OwnerRef::from_spec(Some(username)), OwnerRef::Username(_)), "{username}");
        }
    }

    #[test]
    fn a_username_that_coderd_reads_as_an_id_is_granted_only_as_the_user_it_resolves_to() {
        // A grant of the "username" 32 hex digits long does not grant the
        // user whose id those digits are.
        let digits = "0e6cd9a446b74b5e8d0f6a1b2c3d4e02";
        let grant = Grant::parse(Some(digits));
        let owner = OwnerRef::from_spec(Some(digits));
        assert_eq!(admit("a", &grant, &owner, None), Admission::Resolve);
        let alice = resolved("0e6cd9a4-46b7-4b5e-8d0f-6a1b2c3d4e02", "alice");
        assert!(matches!(admit("a", &grant, &owner, Some(&alice)), Admission::Refused(_)));
    }

    #[test]
    fn a_refusal_never_turns_a_user_id_into_a_username() {
        let grant = Grant::parse(Some("bob"));
        let alice = resolved("u-2", "alice");
        for owner in [OwnerRef::Id("u-2".into()), OwnerRef::TokenUser] {
            let Admission::Refused(refusal) = admit("team-a", &grant, &owner, Some(&alice)) else {
                panic!("alice is not granted")
            };
            let message = refusal.to_string();
            assert!(!message.contains("alice"), "{message}");
            assert!(message.contains("coder-owners=bob,USERNAME"), "{message}");
        }
    }

    #[test]
    fn no_annotation_refuses_everyone_without_asking_coder() {
        for owner in [OwnerRef::TokenUser, OwnerRef::Username("alice".into()), OwnerRef::Id("x".into())] {
            assert!(matches!(admit("team-a", &Grant::Nothing, &owner, None), Admission::Refused(_)), "{owner:?}");
        }
    }

    #[test]
    fn a_star_grants_anyone_without_resolving() {
        assert_eq!(admit("a", &Grant::Anyone, &OwnerRef::TokenUser, None), Admission::Granted);
        assert_eq!(admit("a", &Grant::Anyone, &OwnerRef::Id("x".into()), None), Admission::Granted);
    }

    #[test]
    fn a_list_grants_its_usernames_and_resolves_ids_and_me_first() {
        let grant = Grant::parse(Some("alice"));
        assert_eq!(admit("a", &grant, &OwnerRef::Username("alice".into()), None), Admission::Granted);
        assert!(matches!(admit("a", &grant, &OwnerRef::Username("bob".into()), None), Admission::Refused(_)));
        assert_eq!(admit("a", &grant, &OwnerRef::TokenUser, None), Admission::Resolve);
        assert_eq!(admit("a", &grant, &OwnerRef::Id("u-2".into()), None), Admission::Resolve);
        // The id and `me` of alice are alice.
        let alice = resolved("u-2", "Alice");
        assert_eq!(admit("a", &grant, &OwnerRef::Id("u-2".into()), Some(&alice)), Admission::Granted);
        assert_eq!(admit("a", &grant, &OwnerRef::TokenUser, Some(&alice)), Admission::Granted);
        let admin = resolved("u-1", "admin");
        assert!(matches!(admit("a", &grant, &OwnerRef::TokenUser, Some(&admin)), Admission::Refused(_)));
    }

    #[test]
    fn the_resolved_username_wins_over_the_spelling() {
        // A username in the spec that Coder resolves to another user (it
        // cannot, but the resolved name is the one that counts).
        let grant = Grant::parse(Some("alice"));
        let bob = resolved("u-3", "bob");
        assert!(matches!(admit("a", &grant, &OwnerRef::Username("alice".into()), Some(&bob)), Admission::Refused(_)));
    }

    #[test]
    fn the_refusal_names_the_annotation_and_the_command() {
        let Admission::Refused(refusal) =
            admit("team-a", &Grant::parse(Some("alice")), &OwnerRef::Username("bob".into()), None)
        else {
            panic!("bob is not granted")
        };
        let message = refusal.to_string();
        assert!(message.contains(OWNERS_ANNOTATION), "{message}");
        assert!(
            message.contains("kubectl annotate namespace team-a chat.coder.com/coder-owners=alice,bob --overwrite"),
            "{message}"
        );
        assert!(message.contains("spec.credentialsRef"), "{message}");
        let Admission::Refused(refusal) = admit("team-b", &Grant::Nothing, &OwnerRef::TokenUser, None) else {
            panic!("nothing is granted")
        };
        assert!(refusal.to_string().contains("coder-owners=USERNAME --overwrite"), "{refusal}");
        assert!(refusal.to_string().contains("the default token's own user"), "{refusal}");
    }

    #[test]
    fn event_notes_fit_the_apiservers_limit() {
        assert_eq!(event_note("short"), "short");
        for text in ["x".repeat(5000), "é".repeat(3000), "x".repeat(1024)] {
            let note = event_note(&text);
            assert!(note.len() <= MAX_EVENT_NOTE_BYTES, "{} bytes", note.len());
        }
        assert_eq!(event_note(&"x".repeat(1024)), "x".repeat(1024), "exactly the limit is kept whole");
    }

    proptest::proptest! {
        /// Whatever the spelling in the annotation or the spec, a granted
        /// username is granted and no other is: the grant never depends on
        /// case, whitespace, order or repeats.
        #[test]
        fn the_grant_depends_on_usernames_only(
            users in proptest::collection::vec("[a-z0-9]{1,8}(-[a-z0-9]{1,4})?", 1..5),
            other in "[a-z0-9]{1,8}",
            upper in proptest::bool::ANY,
        ) {
            let spelled: Vec<String> =
                users.iter().map(|u| if upper { format!(" {} ", u.to_uppercase()) } else { u.clone() }).collect();
            let grant = Grant::parse(Some(&spelled.join(",")));
            for user in &users {
                proptest::prop_assert!(grant.allows(user));
                proptest::prop_assert!(grant.allows(&user.to_uppercase()));
                let owner = OwnerRef::from_spec(Some(&user.to_uppercase()));
                proptest::prop_assert_eq!(admit("ns", &grant, &owner, None), Admission::Granted);
            }
            if !users.contains(&other) && other != coder::TOKEN_USER {
                proptest::prop_assert!(!grant.allows(&other));
                let owner = OwnerRef::from_spec(Some(&other));
                let refused = matches!(admit("ns", &grant, &owner, None), Admission::Refused(_));
                proptest::prop_assert!(refused);
            }
        }
    }

    #[test]
    fn cuts_long_text_on_a_character_boundary() {
        assert_eq!(cut("short", 10), "short");
        assert_eq!(cut("ééééé", 3), "ééé…");
        assert_eq!(cut(&"x".repeat(5000), 1000).chars().count(), 1001);
    }
}
