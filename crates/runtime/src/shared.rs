//! One watch and one cache per kind, shared by every controller of a binary that needs it
//! (a trigger for one, a lookup table for another). `managedFields` is dropped on the way in:
//! it is about half of an object's metadata and no controller reads it.

use futures::StreamExt;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, ReflectHandle, Store};
use kube::runtime::watcher::{self, watcher};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;

/// How many events a slow subscriber may fall behind before the watch waits for it.
const BUFFER: usize = 1024;

/// Starts one watch of `api` (with backoff while the API server is away), caching what it sees
/// until `shutdown` resolves. Returns the cache and `subscriptions` streams of changed objects,
/// one per controller trigger. Each stream must be consumed, or the watch waits for it.
pub fn watch_shared<K>(
    api: Api<K>,
    config: watcher::Config,
    subscriptions: usize,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> (Store<K>, Vec<ReflectHandle<K>>)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let (store, writer) = reflector::store_shared(BUFFER);
    let handles = (0..subscriptions)
        .map(|_| writer.subscribe().expect("a shared store always has a dispatcher"))
        .collect();
    let stream = watcher(api, config)
        .default_backoff()
        .modify(|object: &mut K| object.meta_mut().managed_fields = None)
        .reflect_shared(writer)
        .for_each(|event| async move {
            if let Err(err) = event {
                tracing::warn!(error = %err, kind = %K::kind(&()), "watch failed; retrying with backoff");
            }
        });
    tokio::spawn(async move {
        tokio::select! {
            _ = stream => {}
            _ = shutdown => {}
        }
    });
    (store, handles)
}
