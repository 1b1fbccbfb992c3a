//! A `ChatWorkspace`'s identity as the operator's own maps hold it: its
//! namespace and name in one shared allocation, so that a copy is a pointer
//! (16 bytes), where kube-runtime's `ObjectRef` is 96 bytes with two strings
//! of its own. At 10,000 resources the index keeps several copies of each.

use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;

use kube::runtime::reflector::ObjectRef;

/// `namespace/name` (neither may contain a `/`).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ResourceKey(Arc<str>);

impl ResourceKey {
    pub fn new(namespace: &str, name: &str) -> Self {
        Self(Arc::from(Self::text(namespace, name)))
    }

    /// The key whose text ([`ResourceKey::text`]) is `text`.
    pub fn from_text(text: String) -> Self {
        Self(Arc::from(text))
    }

    /// The key of `reference` (a namespaced resource's).
    pub fn of<K: kube::Resource>(reference: &ObjectRef<K>) -> Self
    where
        K::DynamicType: Eq + std::hash::Hash + Clone,
    {
        Self::new(reference.namespace.as_deref().unwrap_or_default(), &reference.name)
    }

    /// What a key of `namespace` and `name` is as text: for a lookup
    /// without allocating a key.
    pub fn text(namespace: &str, name: &str) -> String {
        let mut text = String::with_capacity(namespace.len() + 1 + name.len());
        text.push_str(namespace);
        text.push('/');
        text.push_str(name);
        text
    }

    /// The same text for `reference`.
    pub fn text_of<K: kube::Resource>(reference: &ObjectRef<K>) -> String
    where
        K::DynamicType: Eq + std::hash::Hash + Clone,
    {
        Self::text(reference.namespace.as_deref().unwrap_or_default(), &reference.name)
    }

    fn split(&self) -> (&str, &str) {
        self.0.split_once('/').unwrap_or(("", &self.0))
    }

    pub fn namespace(&self) -> &str {
        self.split().0
    }

    pub fn name(&self) -> &str {
        self.split().1
    }

    /// kube-runtime's reference to the resource.
    pub fn reference<K: kube::Resource>(&self) -> ObjectRef<K>
    where
        K::DynamicType: Default + Eq + std::hash::Hash + Clone,
    {
        let (namespace, name) = self.split();
        ObjectRef::new(name).within(namespace)
    }
}

impl Borrow<str> for ResourceKey {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// By namespace, then name (not by the text: `a-b/x` sorts after `a/y`).
impl Ord for ResourceKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.split().cmp(&other.split())
    }
}

impl PartialOrd for ResourceKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Debug for ResourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for ResourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::ChatWorkspace;
    use std::collections::HashMap;

    #[test]
    fn a_key_gives_back_its_namespace_name_and_reference() {
        let key = ResourceKey::new("team-a", "chat-1");
        assert_eq!((key.namespace(), key.name()), ("team-a", "chat-1"));
        let reference: ObjectRef<ChatWorkspace> = key.reference();
        assert_eq!(reference, ObjectRef::new("chat-1").within("team-a"));
        assert_eq!(ResourceKey::of(&reference), key);
        assert_eq!(key.to_string(), "team-a/chat-1");
    }

    #[test]
    fn a_map_of_keys_is_looked_up_by_text() {
        let mut map = HashMap::new();
        map.insert(ResourceKey::new("team-a", "chat-1"), 1);
        let reference: ObjectRef<ChatWorkspace> = ObjectRef::new("chat-1").within("team-a");
        assert_eq!(map.get(ResourceKey::text_of(&reference).as_str()), Some(&1));
        assert_eq!(map.get(ResourceKey::text("team-a", "chat-2").as_str()), None);
    }

    #[test]
    fn keys_sort_by_namespace_then_name() {
        let mut keys = [ResourceKey::new("a-b", "x"), ResourceKey::new("a", "y"), ResourceKey::new("a", "b")];
        keys.sort();
        let sorted: Vec<String> = keys.iter().map(ToString::to_string).collect();
        assert_eq!(sorted, ["a/b", "a/y", "a-b/x"]);
    }
}
