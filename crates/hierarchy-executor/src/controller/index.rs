//! Caches with an index: a cache's objects by a key of theirs (a parent's name, an owner's
//! uid), kept by the watch that fills the cache, so a parent reads its children and a
//! resource its objects without scanning the whole cache.

use orrery_runtime::Lock;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures::{Stream, StreamExt};
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Api, Resource};
use orrery_runtime::Readiness;
use serde::de::DeserializeOwned;

/// Objects of kind `K` by one key of theirs.
pub(super) struct Index<K: Resource<DynamicType = ()>> {
    key: fn(&K) -> Option<String>,
    inner: Lock<Inner<K>>,
}

struct Inner<K: Resource<DynamicType = ()>> {
    by_key: HashMap<String, HashSet<ObjectRef<K>>>,
    key_of: HashMap<ObjectRef<K>, String>,
    /// While a watch lists again (after it expired): the objects listed so far. The index
    /// keeps answering from the last complete list until this one is done.
    relisting: Option<Vec<(ObjectRef<K>, String)>>,
}

impl<K: Resource<DynamicType = ()>> Index<K> {
    /// An index by `key` (objects for which it is `None` are left out).
    pub(super) fn by(key: fn(&K) -> Option<String>) -> Arc<Self> {
        Arc::new(Index {
            key,
            inner: Lock::new(Inner {
                by_key: HashMap::new(),
                key_of: HashMap::new(),
                relisting: None,
            }),
        })
    }

    /// The objects whose key is `key`, by namespace and name.
    pub(super) fn get(&self, key: &str) -> Vec<ObjectRef<K>> {
        let inner = self.inner.lock();
        let mut refs: Vec<ObjectRef<K>> = inner
            .by_key
            .get(key)
            .map(|refs| refs.iter().cloned().collect())
            .unwrap_or_default();
        refs.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        refs
    }

    /// Takes in one event of the watch filling the cache.
    fn observe(&self, event: &Event<K>) {
        let mut inner = self.inner.lock();
        let keyed = |object: &K| Some((ObjectRef::from_obj(object), (self.key)(object)?));
        match event {
            Event::Init => inner.relisting = Some(Vec::new()),
            Event::InitApply(object) => {
                if let (Some(listed), Some(entry)) = (inner.relisting.as_mut(), keyed(object)) {
                    listed.push(entry);
                }
            }
            Event::InitDone => {
                let listed = inner.relisting.take().unwrap_or_default();
                inner.by_key.clear();
                inner.key_of.clear();
                for (reference, key) in listed {
                    inner.insert(reference, key);
                }
            }
            Event::Apply(object) => {
                let reference = ObjectRef::from_obj(object);
                inner.remove(&reference);
                if let Some(key) = (self.key)(object) {
                    inner.insert(reference, key);
                }
            }
            Event::Delete(object) => inner.remove(&ObjectRef::from_obj(object)),
        }
    }
}

impl<K: Resource<DynamicType = ()>> Inner<K> {
    fn insert(&mut self, reference: ObjectRef<K>, key: String) {
        self.by_key.entry(key.clone()).or_default().insert(reference.clone());
        self.key_of.insert(reference, key);
    }

    fn remove(&mut self, reference: &ObjectRef<K>) {
        let Some(key) = self.key_of.remove(reference) else {
            return;
        };
        if let Some(refs) = self.by_key.get_mut(&key) {
            refs.remove(reference);
            if refs.is_empty() {
                self.by_key.remove(&key);
            }
        }
    }
}

/// The objects of `store` whose `index` key is `key`.
pub(super) fn lookup<K>(store: &Store<K>, index: &Index<K>, key: &str) -> Vec<Arc<K>>
where
    K: Resource<DynamicType = ()> + Clone,
{
    index.get(key).iter().filter_map(|r| store.get(r)).collect()
}

/// A watch of `api` filling a cache (tracked by `readiness` when given: a cache whose kind may
/// not be installed is not) and `indexes`, each object trimmed by `slim` once indexed. Its
/// events are yielded once cached and indexed, a list's objects once the whole list is
/// ([`orrery_runtime::once_listed`]); take `applied_objects()` or, for a trigger that must
/// also see deletions, [`touched_or_gone`].
pub(super) fn indexed<K, S>(
    readiness: Option<&Readiness>,
    api: Api<K>,
    config: watcher::Config,
    indexes: Vec<Arc<Index<K>>>,
    slim: S,
) -> (
    Store<K>,
    impl Stream<Item = Result<Event<K>, watcher::Error>> + Send + use<K, S>,
)
where
    S: FnMut(&mut K) + Send + 'static,
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let (store, writer) = reflector::store();
    if let Some(readiness) = readiness {
        readiness.track(&store);
    }
    let events = watcher(api, config)
        .backoff(orrery_runtime::watch_backoff())
        .modify(orrery_runtime::strip::<K>)
        .map(move |event| {
            if let Ok(event) = &event {
                for index in &indexes {
                    index.observe(event);
                }
            }
            event
        })
        .modify(slim)
        .reflect(writer);
    (store.clone(), orrery_runtime::once_listed(store, events))
}

/// The objects `events` (a stream [`indexed`] returned, with its `store`) touched, as
/// `touched_objects()` yields them, and also those a relist found gone. A watch that was down
/// (expired, cut, refused) lists again; an object deleted meanwhile just drops out of that
/// list, with no deletion event, and its owner would never hear of it.
pub(super) fn touched_or_gone<K>(
    store: Store<K>,
    events: impl Stream<Item = Result<Event<K>, watcher::Error>> + Send,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    // The cache as it was when a relist began: it is swapped for the new list at its end.
    let mut before: Vec<Arc<K>> = Vec::new();
    events.flat_map(move |event| {
        let touched: Vec<Result<K, watcher::Error>> = match event {
            Err(err) => vec![Err(err)],
            Ok(Event::Apply(object) | Event::Delete(object) | Event::InitApply(object)) => vec![Ok(object)],
            Ok(Event::Init) => {
                before = store.state();
                Vec::new()
            }
            Ok(Event::InitDone) => std::mem::take(&mut before)
                .into_iter()
                .filter(|object| store.get(&ObjectRef::from_obj(object.as_ref())).is_none())
                .map(|object| Ok(object.as_ref().clone()))
                .collect(),
        };
        futures::stream::iter(touched)
    })
}

/// Whether `store` has listed at least once (its watch may not have started: its kind not
/// installed, say).
pub(super) fn synced<K>(store: &Store<K>) -> bool
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    matches!(futures::FutureExt::now_or_never(store.wait_until_ready()), Some(Ok(())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::ResourceExt;

    fn object(name: &str, owner: &str) -> ConfigMap {
        let mut map = ConfigMap::default();
        map.metadata.name = Some(name.into());
        map.metadata.namespace = Some("ns".into());
        map.labels_mut().insert("owner".into(), owner.into());
        map
    }

    fn names(index: &Index<ConfigMap>, key: &str) -> Vec<String> {
        index.get(key).into_iter().map(|r| r.name).collect()
    }

    #[test]
    fn objects_move_between_keys_and_a_relist_replaces_the_index_when_done() {
        let index = Index::by(|m: &ConfigMap| m.labels().get("owner").cloned());
        index.observe(&Event::Apply(object("a", "x")));
        index.observe(&Event::Apply(object("b", "x")));
        assert_eq!(names(&index, "x"), ["a", "b"]);
        index.observe(&Event::Apply(object("b", "y")));
        assert_eq!(
            (names(&index, "x"), names(&index, "y")),
            (vec!["a".into()], vec!["b".into()])
        );
        index.observe(&Event::Delete(object("a", "x")));
        assert!(names(&index, "x").is_empty());

        index.observe(&Event::Init);
        index.observe(&Event::InitApply(object("c", "x")));
        assert_eq!(
            names(&index, "y"),
            ["b"],
            "answers from the last list until the new one is done"
        );
        index.observe(&Event::InitDone);
        assert_eq!((names(&index, "x"), names(&index, "y")), (vec!["c".into()], vec![]));
    }

    #[tokio::test]
    async fn an_object_gone_from_a_relist_is_touched_as_a_deletion_would_be() {
        let (store, writer) = reflector::store();
        let events = futures::stream::iter([
            Event::Init,
            Event::InitApply(object("a", "x")),
            Event::InitApply(object("b", "y")),
            Event::InitDone,
            // The watch was down: "b" was deleted meanwhile, and "c" made.
            Event::Init,
            Event::InitApply(object("a", "x")),
            Event::InitApply(object("c", "z")),
            Event::InitDone,
        ])
        .map(Ok)
        .reflect(writer);
        let touched: Vec<String> = touched_or_gone(store.clone(), events)
            .map(|object| object.unwrap().name_any())
            .collect()
            .await;
        assert_eq!(touched, ["a", "b", "a", "c", "b"]);
        assert!(synced(&store));
        assert!(store.get(&ObjectRef::new("b").within("ns")).is_none());
    }

    #[test]
    fn a_store_that_never_listed_is_not_synced() {
        let (store, _writer) = reflector::store::<ConfigMap>();
        assert!(!synced(&store));
    }
}
