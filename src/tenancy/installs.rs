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
    }
}
