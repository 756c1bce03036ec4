//! /metrics, /healthz and /readyz.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;

use futures::FutureExt;
use kube::runtime::reflector::Store;

use crate::lock::Lock;
use crate::metrics::Metrics;

// Starting is the state a new Readiness is in (0).
const STANDBY: u8 = 1;
const LEADING: u8 = 2;
const STOPPING: u8 = 3;

/// Whether one cache has had its first full list.
type SyncCheck = Box<dyn Fn() -> bool + Send + Sync>;

/// Readiness of this replica, shared between the controllers and the HTTP server.
///
/// `/readyz` answers 200 for the leader once every cache its controllers made through this
/// runtime ([`crate::watched_and_cached`] and its siblings register each one) has had its
/// first full list, and for a standby replica (healthy, ready to take over); 503 while
/// starting or stopping. No controller has to remember to say it is ready.
#[derive(Clone, Default)]
pub struct Readiness {
    state: Arc<AtomicU8>,
    caches: Arc<Lock<Vec<SyncCheck>>>,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readiness")
            .field("state", &self.state.load(Ordering::Acquire))
            .field("caches", &self.lock().len())
            .finish()
    }
}

impl Readiness {
    /// Counts `store` among the caches that must have listed before the leader is ready.
    pub fn track<K>(&self, store: &Store<K>)
    where
        K: kube::Resource + Clone + Send + Sync + 'static,
        K::DynamicType: Eq + std::hash::Hash + Clone + Send + Sync,
    {
        let store = store.clone();
        // A store that has listed answers at once; one that has not is pending (not waited on).
        let synced = move || matches!(store.wait_until_ready().now_or_never(), Some(Ok(())));
        self.lock().push(Box::new(synced));
    }

    /// Whether at least one cache is tracked and every tracked cache has listed.
    pub fn caches_synced(&self) -> bool {
        let caches = self.lock();
        !caches.is_empty() && caches.iter().all(|synced| synced())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<SyncCheck>> {
        self.caches.lock()
    }

    pub(crate) fn set_standby(&self) {
        self.state.store(STANDBY, Ordering::Release);
    }

    pub(crate) fn set_leading(&self) {
        self.state.store(LEADING, Ordering::Release);
    }

    pub(crate) fn set_stopping(&self) {
        self.state.store(STOPPING, Ordering::Release);
    }

    fn describe(&self) -> (StatusCode, &'static str) {
        match self.state.load(Ordering::Acquire) {
            LEADING if self.caches_synced() => (StatusCode::OK, "ok: leading, caches synced\n"),
            STANDBY => (StatusCode::OK, "ok: standing by for the lease\n"),
            STOPPING => (StatusCode::SERVICE_UNAVAILABLE, "stopping\n"),
            _ => (StatusCode::SERVICE_UNAVAILABLE, "starting: caches not synced\n"),
        }
    }
}

/// Resolves once `store` has had its first full list: `true`, or `false` if it never will
/// (its writer is gone). Re-polls on a short tick: kube's `Store::wait_until_ready` wakes only
/// its most recent waiter, and a `Controller` waits on its own store too.
pub async fn wait_synced<K>(store: &kube::runtime::reflector::Store<K>) -> bool
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    loop {
        match tokio::time::timeout(std::time::Duration::from_millis(100), store.wait_until_ready()).await {
            Ok(Ok(())) => return true,
            Ok(Err(_)) => return false,
            Err(_elapsed) => continue,
        }
    }
}

#[derive(Clone)]
struct AppState {
    metrics: Metrics,
    readiness: Readiness,
}

/// The HTTP routes.
pub fn router(metrics: Metrics, readiness: Readiness) -> Router {
    Router::new()
        .route("/metrics", get(serve_metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(serve_readiness))
        .with_state(AppState { metrics, readiness })
}

async fn serve_metrics(State(state): State<AppState>) -> ([(&'static str, &'static str); 1], String) {
    (
        [(
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}

async fn serve_readiness(State(state): State<AppState>) -> (StatusCode, &'static str) {
    state.readiness.describe()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::runtime::reflector;
    use kube::runtime::watcher::Event;

    #[test]
    fn the_leader_is_ready_only_once_every_tracked_cache_has_listed() {
        let readiness = Readiness::default();
        readiness.set_leading();
        assert_eq!(readiness.describe().0, StatusCode::SERVICE_UNAVAILABLE, "no cache yet");
        let (first, mut first_writer) = reflector::store::<ConfigMap>();
        let (second, mut second_writer) = reflector::store::<ConfigMap>();
        readiness.track(&first);
        readiness.track(&second);
        first_writer.apply_watcher_event(&Event::Init);
        first_writer.apply_watcher_event(&Event::InitDone);
        assert_eq!(
            readiness.describe().0,
            StatusCode::SERVICE_UNAVAILABLE,
            "one still listing"
        );
        second_writer.apply_watcher_event(&Event::Init);
        second_writer.apply_watcher_event(&Event::InitDone);
        assert_eq!(readiness.describe(), (StatusCode::OK, "ok: leading, caches synced\n"));
        readiness.set_stopping();
        assert_eq!(readiness.describe().0, StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn a_standby_is_ready_whatever_its_caches() {
        let readiness = Readiness::default();
        readiness.track(&reflector::store::<ConfigMap>().0);
        assert_eq!(readiness.describe().0, StatusCode::SERVICE_UNAVAILABLE, "starting");
        readiness.set_standby();
        assert_eq!(readiness.describe().0, StatusCode::OK);
    }
}
