//! /metrics, /healthz and /readyz.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;

use crate::metrics::Metrics;

const STARTING: u8 = 0;
const STANDBY: u8 = 1;
const SYNCED: u8 = 2;
const STOPPING: u8 = 3;

/// Readiness of this replica, shared between the controllers and the HTTP server.
///
/// `/readyz` answers 200 once the leader's controllers have synced their caches, and for a
/// standby replica (it is healthy and ready to take over); 503 while starting or stopping.
#[derive(Clone, Debug, Default)]
pub struct Readiness(Arc<AtomicU8>);

impl Readiness {
    /// The controllers have synced their caches and are reconciling.
    pub fn set_synced(&self) {
        self.0.store(SYNCED, Ordering::Release);
    }

    /// Marks the replica synced once every `store` has had its first full list.
    ///
    /// kube's `Store::wait_until_ready` wakes only its most recent waiter, and a `Controller`
    /// waits on its own store too, so each store is re-polled on a short tick instead.
    pub async fn set_synced_when_ready<K>(&self, stores: &[kube::runtime::reflector::Store<K>])
    where
        K: kube::Resource + Clone + 'static,
        K::DynamicType: Eq + std::hash::Hash + Clone,
    {
        for store in stores {
            if !wait_synced(store).await {
                return;
            }
        }
        self.set_synced();
    }

    pub(crate) fn set_standby(&self) {
        self.0.store(STANDBY, Ordering::Release);
    }

    pub(crate) fn set_starting(&self) {
        self.0.store(STARTING, Ordering::Release);
    }

    pub(crate) fn set_stopping(&self) {
        self.0.store(STOPPING, Ordering::Release);
    }

    fn describe(&self) -> (StatusCode, &'static str) {
        match self.0.load(Ordering::Acquire) {
            SYNCED => (StatusCode::OK, "ok: leading, caches synced\n"),
            STANDBY => (StatusCode::OK, "ok: standing by for the lease\n"),
            STOPPING => (StatusCode::SERVICE_UNAVAILABLE, "stopping\n"),
            _ => (StatusCode::SERVICE_UNAVAILABLE, "starting: caches not synced\n"),
        }
    }
}

/// Resolves once `store` has had its first full list: `true`, or `false` if it never will
/// (its writer is gone). Re-polls on a short tick; see [`Readiness::set_synced_when_ready`].
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
