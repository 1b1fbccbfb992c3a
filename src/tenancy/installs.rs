//! One operator install per resource. Two installs that serve the same
//! namespace would both build its workspaces; each claims a resource when it
//! first adds its finalizer (annotation `chat.coder.com/operator`, the
//! install's name), and an install that finds a resource claimed by another
//! leaves it alone and says so with a Warning Event.

/// The annotation naming the install that drives a ChatWorkspace.
pub const INSTALL_ANNOTATION: &str = "chat.coder.com/operator";

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// This install drives it.
    Mine,
    /// Nobody claimed it yet (a new resource, or one from an operator that
    /// did not claim): claim it with the finalizer.
    Unclaimed,
    /// Another install drives it.
    Other(String),
}

pub fn claim(annotation: Option<&str>, install: &str) -> Claim {
    match annotation.map(str::trim) {
        None | Some("") => Claim::Unclaimed,
        Some(name) if name == install => Claim::Mine,
        Some(name) => Claim::Other(name.to_owned()),
    }
}

/// The Warning Event's note for a resource another install drives.
pub fn elsewhere(other: &str, install: &str) -> String {
    format!(
        "This ChatWorkspace is driven by the operator install {other:?} ({INSTALL_ANNOTATION}); this install \
         ({install:?}) serves the same namespace and leaves it alone. Two installs should watch disjoint \
         namespaces (watchNamespaces). To hand the resource over, set the annotation to the install that \
         should drive it."
    )
}

/// The Warning Event's note when this install lets go of a resource another
/// install claimed, whose deletion that install did not finish in time.
pub fn abandoned(other: &str, install: &str, waited: &str) -> String {
    format!(
        "This ChatWorkspace is claimed by the operator install {other:?} ({INSTALL_ANNOTATION}), and {waited} \
         after its deletion began, with its namespace being deleted, that install has still not let it go \
         (it may be uninstalled). This install ({install:?}) removed the finalizer so that the namespace \
         can go; nothing was sent to Coder, so the workspace is left there as it is: stop or delete it in \
         Coder if it is no longer needed."
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resource_belongs_to_the_install_that_claimed_it() {
        assert_eq!(claim(None, "ops/a"), Claim::Unclaimed);
        assert_eq!(claim(Some(" "), "ops/a"), Claim::Unclaimed);
        assert_eq!(claim(Some("ops/a"), "ops/a"), Claim::Mine);
        assert_eq!(claim(Some("ops/b"), "ops/a"), Claim::Other("ops/b".into()));
        let note = elsewhere("ops/b", "ops/a");
        assert!(note.contains("ops/b") && note.contains(INSTALL_ANNOTATION), "{note}");
        let note = abandoned("ops/b", "ops/a", "5m");
        assert!(note.contains("ops/b") && note.contains("5m") && note.contains("left there"), "{note}");
    }
}
