//! Watches and caches for controllers. A cache a reconcile reads from is filled by the very
//! stream that triggers the reconcile, so a trigger never arrives before its change is cached;
//! streams are never shared, so one slow consumer cannot hold up another. `managedFields` is
//! dropped on the way in: it is about half of an object's metadata and no controller reads it.

use futures::Stream;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, watcher};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;

fn stripped<K>(
    api: Api<K>,
    config: watcher::Config,
) -> impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    watcher(api, config)
        .default_backoff()
        .modify(|object: &mut K| object.meta_mut().managed_fields = None)
}

/// A watch of `api` (with backoff while the API server is away) as a controller trigger.
pub fn watched<K>(api: Api<K>, config: watcher::Config) -> impl Stream<Item = Result<K, watcher::Error>> + Send
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    stripped(api, config).applied_objects()
}

/// [`watched_and_cached`], each object trimmed by `slim` before it is cached: for a cache that
/// needs only a few fields of many objects (a parent rolling up its children's conditions).
pub fn watched_and_cached_slim<K>(
    api: Api<K>,
    config: watcher::Config,
    slim: impl FnMut(&mut K) + Send + 'static,
) -> (Store<K>, impl Stream<Item = Result<K, watcher::Error>> + Send)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let (store, writer) = reflector::store();
    (
        store,
        stripped(api, config).modify(slim).reflect(writer).applied_objects(),
    )
}

/// A watch of `api` that also fills the returned cache: the trigger of the controller whose
/// main kind it is (`Controller::for_stream`).
pub fn watched_and_cached<K>(
    api: Api<K>,
    config: watcher::Config,
) -> (Store<K>, impl Stream<Item = Result<K, watcher::Error>> + Send)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let (store, writer) = reflector::store();
    (store, stripped(api, config).reflect(writer).applied_objects())
}
