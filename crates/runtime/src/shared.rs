//! Watches and caches for controllers. A cache a reconcile reads from is filled by the very
//! stream that triggers the reconcile, so a trigger never arrives before its change is cached.
//! A stream is shared only by controllers of one process that read the same cache, whose
//! queues take each trigger at once (one slow consumer would hold up the others). Every cache
//! is tracked by the replica's [`Readiness`]: `/readyz` waits for all of them. `managedFields` and
//! `kubectl apply`'s last-applied-configuration annotation (a second copy of the object) are
//! dropped on the way in: together they are most of an object's metadata and no controller
//! reads them. A list's objects trigger only once the whole list is cached ([`once_listed`]).

use std::time::Duration;

use futures::Stream;
use kube::api::ObjectMeta;
use kube::core::PartialObjectMeta;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, ReflectHandle, Store};
use kube::runtime::utils::ResetTimerBackoff;
use kube::runtime::watcher::{self, ExponentialBackoff, watcher};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;

use crate::health::Readiness;

fn stripped<K>(
    api: Api<K>,
    config: watcher::Config,
) -> impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    watcher(api, config).backoff(watch_backoff()).modify(strip::<K>)
}

/// The longest pause between a failing watch's tries, before jitter (which adds up to as much
/// again): kube's default is 30 s.
const WATCH_BACKOFF_CEILING: Duration = Duration::from_secs(5);

/// How every watch backs off while the API server is away: as kube's default does (from
/// 800 ms, doubling, jittered, starting over once the watch works) but at most 10 s apart
/// instead of 60 s. A controller whose watch is down is blind: one request per watch every
/// few seconds is nothing to an API server, and after a cut-off every watch is back within
/// seconds rather than a minute.
pub fn watch_backoff() -> ResetTimerBackoff<ExponentialBackoff> {
    ResetTimerBackoff::new(
        ExponentialBackoff::from(
            backon::ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(800))
                .with_max_delay(WATCH_BACKOFF_CEILING)
                .with_factor(2.0)
                .with_jitter()
                .without_max_times(),
        ),
        Duration::from_secs(120),
    )
}

/// The annotation `kubectl apply` keeps the last applied object in.
pub const LAST_APPLIED_ANNOTATION: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Drops what no controller reads and every object carries: managedFields and `kubectl
/// apply`'s copy of the object. Every cache does this; so should anything kept a while.
pub fn strip<K: Resource>(object: &mut K) {
    let meta = object.meta_mut();
    meta.managed_fields = None;
    if let Some(annotations) = &mut meta.annotations {
        annotations.remove(LAST_APPLIED_ANNOTATION);
        if annotations.is_empty() {
            meta.annotations = None;
        }
    }
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
pub fn watched_and_cached_slim<K, S>(
    readiness: &Readiness,
    api: Api<K>,
    config: watcher::Config,
    slim: S,
) -> (
    Store<K>,
    impl Stream<Item = Result<K, watcher::Error>> + Send + use<K, S>,
)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    S: FnMut(&mut K) + Send + 'static,
{
    let (store, writer) = reflector::store();
    readiness.track(&store);
    let events = stripped(api, config).modify(slim).reflect(writer);
    (store.clone(), once_listed(store, events).applied_objects())
}

/// One watch of `api`, shared as [`watched_and_cached_as_shared`], whose cache keeps each
/// object's name, namespace and resourceVersion only, for controllers that read the one object
/// they reconcile from the API server: with thousands of objects, their names are all that
/// stays in memory, and the resourceVersion tells whether a copy read earlier is still current.
/// `observe` sees every event whole first, to keep whatever index of the objects' contents the
/// controllers need.
pub fn watched_and_cached_metadata_shared<K, O>(
    readiness: &Readiness,
    api: Api<K>,
    config: watcher::Config,
    observe: O,
    controllers: usize,
) -> SharedCache<PartialObjectMeta<K>, impl Future<Output = ()> + Send + use<K, O>>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    O: FnMut(&watcher::Event<K>) + Send + 'static,
{
    watched_and_cached_as_shared(readiness, api, config, observe, metadata_of, controllers)
}

/// A watch of `api` whose cache keeps each object as `cached(object)`: a lighter type holding
/// the few fields the controller reads, when even a slimmed object is mostly empty space (a
/// `Pod` takes 2.4 KiB before any of its contents). `observe` sees every event whole first.
pub fn watched_and_cached_as<K, C, O, F>(
    readiness: &Readiness,
    api: Api<K>,
    config: watcher::Config,
    observe: O,
    cached: F,
) -> (
    Store<C>,
    impl Stream<Item = Result<C, watcher::Error>> + Send + use<K, C, O, F>,
)
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
    C: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
    O: FnMut(&watcher::Event<K>) + Send + 'static,
    F: FnMut(K) -> C + Send + 'static,
{
    let (store, writer) = reflector::store();
    readiness.track(&store);
    let events = events_as(api, config, observe, cached).reflect(writer);
    (store.clone(), once_listed(store, events).applied_objects())
}

/// A cache the controllers of one process share.
pub struct SharedCache<C, W>
where
    C: Resource<DynamicType = ()> + Clone + 'static,
{
    pub cache: Store<C>,
    /// One per controller: yields each object once it is cached.
    pub triggers: Vec<ReflectHandle<C>>,
    /// The watch filling the cache, to run beside the controllers.
    pub watch: W,
}

impl<C, W> std::fmt::Debug for SharedCache<C, W>
where
    C: Resource<DynamicType = ()> + Clone + 'static,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedCache")
            .field("triggers", &self.triggers.len())
            .finish_non_exhaustive()
    }
}

/// [`watched_and_cached_as`] for several controllers of one process: one watch and one copy of
/// each object rather than one per controller, with one trigger per controller (`controllers`
/// of them).
pub fn watched_and_cached_as_shared<K, C, O, F>(
    readiness: &Readiness,
    api: Api<K>,
    config: watcher::Config,
    observe: O,
    cached: F,
    controllers: usize,
) -> SharedCache<C, impl Future<Output = ()> + Send + use<K, C, O, F>>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
    C: Resource<DynamicType = ()> + Clone + std::fmt::Debug + Send + Sync + 'static,
    O: FnMut(&watcher::Event<K>) + Send + 'static,
    F: FnMut(K) -> C + Send + 'static,
{
    use futures::StreamExt;

    // Room for a burst of changes while a controller's queue takes them in.
    const BUFFERED: usize = 1024;
    let (store, writer) = reflector::store_shared(BUFFERED);
    readiness.track(&store);
    let triggers = (0..controllers).filter_map(|_| writer.subscribe()).collect();
    let watch = events_as(api, config, observe, cached)
        .reflect_shared(writer)
        .for_each(|event| async move {
            if let Err(error) = event {
                tracing::warn!(%error, kind = C::kind(&()).as_ref(), "watch failed; retrying");
            }
        });
    SharedCache {
        cache: store,
        triggers,
        watch,
    }
}

/// The events of a watch of `api`, each seen whole by `observe`, then turned into `cached`.
fn events_as<K, C>(
    api: Api<K>,
    config: watcher::Config,
    mut observe: impl FnMut(&watcher::Event<K>) + Send + 'static,
    mut cached: impl FnMut(K) -> C + Send + 'static,
) -> impl Stream<Item = Result<watcher::Event<C>, watcher::Error>> + Send
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    use futures::StreamExt;
    use watcher::Event;

    watcher(api, config).backoff(watch_backoff()).map(move |event| {
        event.map(|event| {
            observe(&event);
            match event {
                Event::Apply(object) => Event::Apply(cached(object)),
                Event::Delete(object) => Event::Delete(cached(object)),
                Event::Init => Event::Init,
                Event::InitApply(object) => Event::InitApply(cached(object)),
                Event::InitDone => Event::InitDone,
            }
        })
    })
}

fn metadata_of<K: Resource>(mut object: K) -> PartialObjectMeta<K> {
    let meta = object.meta_mut();
    PartialObjectMeta {
        types: None,
        metadata: ObjectMeta {
            name: meta.name.take(),
            namespace: meta.namespace.take(),
            resource_version: meta.resource_version.take(),
            ..ObjectMeta::default()
        },
        _phantom: std::marker::PhantomData,
    }
}

/// A watch of `api` that also fills the returned cache: the trigger of the controller whose
/// main kind it is (`Controller::for_stream`).
pub fn watched_and_cached<K>(
    readiness: &Readiness,
    api: Api<K>,
    config: watcher::Config,
) -> (Store<K>, impl Stream<Item = Result<K, watcher::Error>> + Send + use<K>)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let (store, writer) = reflector::store();
    readiness.track(&store);
    let events = stripped(api, config).reflect(writer);
    (store.clone(), once_listed(store, events).applied_objects())
}

/// `events`, a watch's events each already applied to `store`, with a list's objects held
/// back until the whole list is in `store`: then every object in it follows `InitDone` as an
/// `Apply`, as kube's shared stores dispatch them.
///
/// A watch that lists again (its resourceVersion expired when the API server restarted, say)
/// fills a new cache while the old one still answers reads, and swaps them once the list is
/// done. A listed object that triggered its reconcile before the swap would be read from the
/// old cache: one created meanwhile is "no longer cached" and dropped, one changed meanwhile
/// is read as it was, and neither is triggered again.
pub fn once_listed<K>(
    store: Store<K>,
    events: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send,
) -> impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    use futures::StreamExt;
    use watcher::Event;

    events.flat_map(move |event| {
        let (passed, listed) = match event {
            Ok(Event::InitApply(_)) => (None, Vec::new()),
            Ok(Event::InitDone) => (Some(Ok(Event::InitDone)), store.state()),
            other => (Some(other), Vec::new()),
        };
        // Cloned one at a time as the controller takes them, not all at once.
        let listed = listed.into_iter().map(|object| Ok(Event::Apply(K::clone(&object))));
        futures::stream::iter(passed.into_iter().chain(listed))
    })
}

/// The watcher configuration for `api`'s kind: streaming lists where the API server offers
/// them, else a list served from its watch cache.
///
/// A streaming list sends a watch's initial objects one by one, where a list sends them in one
/// response that is held whole while it is decoded: with 10,000 Tasks that is about 12 MiB of
/// a controller's resident memory. The WatchList feature that serves them is on by default in
/// Kubernetes 1.32 and from 1.34, off in 1.33 and before, and can be switched off, so this
/// asks the server once (a watch selecting nothing) instead of guessing from its version.
pub async fn watcher_config<K>(api: &Api<K>) -> watcher::Config
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    if streams_initial_events(api).await {
        watcher::Config::default().streaming_lists()
    } else {
        watcher::Config::default().any_semantic()
    }
}

async fn streams_initial_events<K>(api: &Api<K>) -> bool
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    use futures::StreamExt;
    use kube::api::{WatchEvent, WatchParams};

    let probe = WatchParams::streaming_lists()
        .labels("orrery.dev/streaming-lists-probe=none")
        .timeout(5);
    let answered = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        let stream = api.watch(&probe, "0").await.ok()?;
        let mut stream = std::pin::pin!(stream);
        stream.next().await
    })
    .await;
    // The end of the (empty) initial events is a bookmark; a server without the feature
    // refuses the request or answers with an error event.
    let supported = matches!(answered, Ok(Some(Ok(WatchEvent::Bookmark(_)))));
    tracing::debug!(supported, "streaming lists");
    supported
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::ConfigMap;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;

    use super::*;

    #[test]
    fn managed_fields_and_the_last_applied_copy_are_dropped_and_other_annotations_kept() {
        let mut object = ConfigMap::default();
        object.metadata.managed_fields = Some(vec![ManagedFieldsEntry::default()]);
        object.metadata.annotations = Some(
            [(LAST_APPLIED_ANNOTATION, "{}"), ("workflow.orrery.dev/cancel", "1")]
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .into(),
        );
        strip(&mut object);
        assert_eq!(object.metadata.managed_fields, None);
        let annotations = object.metadata.annotations.clone().unwrap_or_default();
        assert_eq!(annotations.keys().collect::<Vec<_>>(), ["workflow.orrery.dev/cancel"]);

        object.metadata.annotations = Some([(LAST_APPLIED_ANNOTATION.to_string(), "{}".to_string())].into());
        strip(&mut object);
        assert_eq!(object.metadata.annotations, None, "no empty map is kept");
    }

    fn named(name: &str, version: &str) -> ConfigMap {
        let mut object = ConfigMap::default();
        object.metadata.name = Some(name.into());
        object.metadata.namespace = Some("ns".into());
        object.metadata.resource_version = Some(version.into());
        object
    }

    #[tokio::test]
    async fn a_relisted_object_triggers_only_once_the_whole_list_is_cached() {
        use futures::StreamExt;
        use kube::ResourceExt;
        use kube::runtime::reflector::ObjectRef;
        use watcher::Event;

        let (store, writer) = reflector::store();
        // A first list, a change, then a relist (after a 410) that finds `a` changed and `c` new.
        let events = futures::stream::iter(
            [
                Event::Init,
                Event::InitApply(named("a", "1")),
                Event::InitDone,
                Event::Apply(named("b", "2")),
                Event::Init,
                Event::InitApply(named("a", "3")),
                Event::InitApply(named("b", "2")),
                Event::InitApply(named("c", "4")),
                Event::InitDone,
                Event::Apply(named("c", "5")),
            ]
            .map(Ok),
        )
        .reflect(writer);
        let mut triggers = std::pin::pin!(once_listed(store.clone(), events).applied_objects());
        let mut seen = Vec::new();
        while let Some(object) = triggers.next().await {
            let object = object.unwrap();
            let cached = store.get(&ObjectRef::from_obj(&object)).map(|c| c.resource_version());
            assert_eq!(
                cached,
                Some(object.resource_version()),
                "{} triggered before the cache held it",
                object.name_any()
            );
            seen.push(format!(
                "{}@{}",
                object.name_any(),
                object.resource_version().unwrap_or_default()
            ));
        }
        seen[2..5].sort();
        assert_eq!(seen, ["a@1", "b@2", "a@3", "b@2", "c@4", "c@5"].map(String::from));
    }

    #[test]
    fn a_metadata_cache_keeps_name_namespace_and_resource_version_only() {
        let mut object = ConfigMap::default();
        object.metadata.name = Some("a".into());
        object.metadata.namespace = Some("ns".into());
        object.metadata.resource_version = Some("42".into());
        object.metadata.uid = Some("uid-a".into());
        object.metadata.labels = Some([("k".to_string(), "v".to_string())].into());
        object.data = Some([("k".to_string(), "v".to_string())].into());
        let cached = metadata_of(object);
        let expected = ObjectMeta {
            name: Some("a".into()),
            namespace: Some("ns".into()),
            resource_version: Some("42".into()),
            ..ObjectMeta::default()
        };
        assert_eq!(cached.metadata, expected);
        assert!(cached.types.is_none());
    }

    #[test]
    fn a_failing_watch_tries_again_within_ten_seconds_and_starts_over_when_it_works() {
        use kube::runtime::utils::Backoff;

        let mut backoff = watch_backoff();
        let first = backoff.next().unwrap();
        assert!(
            first >= Duration::from_millis(800) && first < Duration::from_millis(1600),
            "{first:?}"
        );
        let later: Vec<Duration> = (0..20).map(|_| backoff.next().unwrap()).collect();
        assert!(later.iter().all(|pause| *pause <= Duration::from_secs(10)), "{later:?}");
        assert!(later.last().unwrap() >= &WATCH_BACKOFF_CEILING, "{later:?}");
        backoff.reset();
        assert!(backoff.next().unwrap() < Duration::from_millis(1600));
    }
}
