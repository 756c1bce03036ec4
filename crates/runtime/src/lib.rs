//! What every Orrery controller binary shares, so each `main` is a few lines:
//! clap arguments ([`RuntimeArgs`]), structured logs, a client (rate-limited if asked), Prometheus
//! `/metrics`, `/healthz` and `/readyz`, leader election on a Lease, and graceful shutdown on
//! SIGTERM or SIGINT.
//!
//! ```no_run
//! # async fn controllers(_: orrery_runtime::Context) -> Result<(), orrery_runtime::BoxError> { Ok(()) }
//! # async fn main_body(args: orrery_runtime::RuntimeArgs) -> Result<(), orrery_runtime::RuntimeError> {
//! orrery_runtime::run("task-workflow", args, controllers).await
//! # }
//! ```

mod args;
mod client;
pub mod egress;
pub mod events;
pub mod failures;
mod health;
mod lock;
mod metrics;
mod reconcile;
mod shared;
mod telemetry;
mod write;

use std::future::Future;
use std::time::Duration;

use kube::Client;
use kube_lease_manager::{LeaseManagerBuilder, LeaseParams};
use tokio::sync::watch;
use tracing::{info, warn};

pub use args::{LogFormat, RuntimeArgs, WatchNamespace};
pub use client::{RateLimitLayer, build_client, load_config};
pub use egress::Egress;
pub use events::Recorder;
pub use health::{Readiness, router, wait_synced};
pub use lock::Lock;
pub use metrics::{Metrics, ReconcileMetrics};
pub use reconcile::{Failure, Retries, log_results, requeue_at, requeue_at_or_await, until};
pub use shared::{
    SharedCache, once_listed, strip, watch_backoff, watched, watched_and_cached, watched_and_cached_as,
    watched_and_cached_as_shared, watched_and_cached_metadata_shared, watched_and_cached_slim, watcher_config,
};
pub use telemetry::init_tracing;
pub use write::{Error, apply_status, delete_if_exists, has_finalizer, is_not_found, set_finalizer};

/// Errors from controllers, as the runtime sees them.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why the runtime stopped.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// No usable kubeconfig or in-cluster configuration.
    #[error("cannot load the Kubernetes configuration: {0}")]
    Config(#[source] kube::Error),
    /// The HTTP server could not bind its address.
    #[error("cannot serve metrics and health on {addr}: {source}")]
    Http {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Leader election failed.
    #[error("leader election on Lease {lease}: {message}")]
    Lease {
        /// The Lease's name.
        lease: String,
        /// Why.
        message: String,
    },
    /// Another replica took the Lease: exit so this one restarts as a standby.
    #[error("lost the Lease {0}; exiting so a fresh process stands by")]
    LeadershipLost(String),
    /// A controller returned an error.
    #[error("controller failed: {0}")]
    Controller(#[source] BoxError),
}

/// What a controller gets from the runtime.
#[derive(Clone)]
pub struct Context {
    /// A client that counts its requests, behind the client-side rate limit if one is set.
    pub client: Client,
    /// Reconcile metrics to record into.
    pub metrics: ReconcileMetrics,
    /// Mark ready once caches have synced.
    pub readiness: Readiness,
    /// Publishes Events as this controller.
    pub recorder: Recorder,
    /// Watch only this namespace (`--watch-namespace`); all namespaces when `None`.
    pub namespace: Option<String>,
    /// Reconciles run at once by each controller, i.e. each kind reconciled, of this binary
    /// (`--concurrency`): hand [`Context::controller_config`] to every one as it is.
    pub concurrency: u16,
    /// Failures in a row per object, for [`Context::error_policy`]'s backoff.
    pub retries: Retries,
    /// Where requests of the users' choosing may go (`--allowed-egress` and the API server's
    /// addresses): build their HTTP client with [`Egress::client`].
    pub egress: Egress,
    shutdown: watch::Receiver<bool>,
}

/// Stops controllers started with [`Context::standalone`] when told to, or when dropped.
#[derive(Debug)]
pub struct StopHandle(watch::Sender<bool>);

impl StopHandle {
    /// Asks the controllers to finish their reconciles and return.
    pub fn stop(&self) {
        let _ = self.0.send(true);
    }
}

impl Drop for StopHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("readiness", &self.readiness)
            .finish_non_exhaustive()
    }
}

/// `--concurrency`'s default, also used by [`Context::standalone`].
const DEFAULT_CONCURRENCY: u16 = 16;

/// How every `kube::runtime::Controller` of a binary is set up: `--concurrency`, and no backoff
/// on its triggers taken together ([`WatchesBackOffAlone`]).
pub trait Configured {
    /// The controller with the runtime's settings from `context`.
    #[must_use]
    fn configured(self, context: &Context) -> Self;
}

impl<K> Configured for kube::runtime::Controller<K>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    fn configured(self, context: &Context) -> Self {
        self.with_config(context.controller_config())
            .trigger_backoff(WatchesBackOffAlone)
    }
}

/// The backoff a controller puts on all its triggers together: none, as each watch the runtime
/// makes backs off on its own. kube's default backs off every trigger of the controller when
/// any one watch fails, and keeps its pace for two minutes; as the caches are filled by those
/// same streams, after an API server restart (connections refused, then 403s and 410s from
/// many watches) every cache of a controller froze for up to 30 s at a time, and its writes
/// conflicted with what it could not see.
#[derive(Clone, Copy, Debug, Default)]
pub struct WatchesBackOffAlone;

impl Iterator for WatchesBackOffAlone {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        Some(Duration::ZERO)
    }
}

impl kube::runtime::utils::Backoff for WatchesBackOffAlone {
    fn reset(&mut self) {}
}

impl Context {
    /// The configuration every `kube::runtime::Controller` of this binary runs with, each with
    /// the whole `--concurrency`.
    pub fn controller_config(&self) -> kube::runtime::controller::Config {
        kube::runtime::controller::Config::default().concurrency(self.concurrency)
    }

    /// Runs one reconcile of `object` by `controller`: inside a span carrying the object's
    /// kind, namespace, name and resourceVersion, counted in the reconcile metrics (a failure
    /// under its [`Failure::reason`]), starting its backoff over when it succeeds, and shown on
    /// the object as a `ReconcileFailed` condition and Event when a failure repeats or is
    /// refused ([`failures`]). Every
    /// reconciler's entry point:
    ///
    /// ```ignore
    /// async fn reconcile(object: Arc<K>, state: Arc<State>) -> Result<Action, Error> {
    ///     state.context.reconcile(NAME, object.as_ref(), work(&object, &state)).await
    /// }
    /// fn error_policy(object: Arc<K>, error: &Error, state: Arc<State>) -> Action {
    ///     state.context.error_policy(NAME, object.as_ref(), error)
    /// }
    /// ```
    pub async fn reconcile<K, T, E>(
        &self,
        controller: &str,
        object: &K,
        work: impl Future<Output = Result<T, E>>,
    ) -> Result<T, E>
    where
        K: kube::Resource + serde::Serialize,
        K::DynamicType: Default,
        E: Failure,
    {
        reconcile::reconcile(self, controller, object, work).await
    }

    /// The error policy of every controller: a conflict is read again at once; any other
    /// failure is logged naming the object and tried again after a pause that doubles with each
    /// failure in a row of that object, up to a minute ([`Retries`]).
    pub fn error_policy<K, E>(&self, controller: &str, object: &K, error: &E) -> kube::runtime::controller::Action
    where
        K: kube::Resource,
        K::DynamicType: Default,
        E: Failure,
    {
        self.retries.failed(controller, object, error)
    }

    /// Whether objects in `namespace` are this binary's to watch (`--watch-namespace`).
    pub fn watches_namespace(&self, namespace: &str) -> bool {
        self.namespace.as_deref().is_none_or(|watched| watched == namespace)
    }

    /// A context for running controllers in-process without the binary's plumbing (no Lease,
    /// no HTTP server): for end-to-end tests, benchmarks and the demo. Its egress rule is the
    /// default one (loopback, link-local and the like refused): a test serving on loopback
    /// opts in with [`Context::allowing_egress`].
    pub fn standalone(client: Client, controller: &str) -> (Self, StopHandle) {
        let (stop_tx, stop_rx) = watch::channel(false);
        let context = Context {
            recorder: Recorder::new(client.clone(), controller, controller.to_owned()),
            client,
            metrics: ReconcileMetrics::default(),
            readiness: Readiness::default(),
            namespace: None,
            concurrency: DEFAULT_CONCURRENCY,
            retries: Retries::default(),
            egress: Egress::default(),
            shutdown: stop_rx,
        };
        (context, StopHandle(stop_tx))
    }

    /// The same context, watching only `namespace`.
    pub fn in_namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    /// The same context, also allowing egress to `cidrs` (as if listed in `--allowed-egress`),
    /// e.g. [`egress::LOCALHOST`] for a test's own server.
    #[must_use]
    pub fn allowing_egress(mut self, cidrs: impl IntoIterator<Item = egress::IpNet>) -> Self {
        self.egress = self.egress.allowing(cidrs);
        self
    }

    /// The same context, knowing the API server at `addresses` (refused as egress targets
    /// unless listed exactly); a deployed controller finds them itself.
    #[must_use]
    pub fn with_api_server(mut self, addresses: impl IntoIterator<Item = std::net::IpAddr>) -> Self {
        self.egress = self.egress.with_api_server(addresses);
        self
    }

    /// An API for kind `K` over the namespace this controller watches (or all of them).
    pub fn api<K>(&self) -> kube::Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        match &self.namespace {
            Some(namespace) => kube::Api::namespaced(self.client.clone(), namespace),
            None => kube::Api::all(self.client.clone()),
        }
    }

    /// Resolves when the process is asked to stop; hand it to
    /// `Controller::graceful_shutdown_on` so reconciles in flight finish.
    pub fn shutdown_signal(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut shutdown = self.shutdown.clone();
        async move {
            // An error means the sender is gone, which also means stop.
            let _ = shutdown.wait_for(|stop| *stop).await;
        }
    }
}

/// The first wait before reading the Lease again, doubling up to [`LEASE_RETRY_MAX`].
const LEASE_RETRY_FIRST: Duration = Duration::from_secs(1);
const LEASE_RETRY_MAX: Duration = Duration::from_secs(16);
/// How long a starting replica goes on trying to read its Lease: an API server upgrade takes
/// a minute or two; past that, more likely a setting (RBAC, the namespace) is wrong, and the
/// exit says so.
const LEASE_PATIENCE: Duration = Duration::from_secs(300);

/// Runs `controllers` as the controller `name`: loads config, serves metrics and health,
/// waits for the Lease (unless `--leader-elect=false`), and stops them gracefully on SIGTERM.
pub async fn run<F, Fut>(name: &'static str, args: RuntimeArgs, controllers: F) -> Result<(), RuntimeError>
where
    F: FnOnce(Context) -> Fut,
    Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
{
    init_tracing(args.log_format);
    let metrics = Metrics::new();
    let readiness = Readiness::default();

    let config = load_config(&args).await.map_err(RuntimeError::Config)?;
    let lease_namespace = args
        .lease_namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    let egress = Egress::new(
        args.allowed_egress.0.clone(),
        egress::api_server_addresses(&config).await,
    );
    info!(controller = name, allowed = ?egress.allowed(), api_server = ?egress.api_server(), "egress rule");
    let client = build_client(config, args.qps, args.burst, metrics.requests.clone()).map_err(RuntimeError::Config)?;

    let listener = tokio::net::TcpListener::bind(args.http_addr)
        .await
        .map_err(|source| RuntimeError::Http {
            addr: args.http_addr,
            source,
        })?;
    info!(controller = name, addr = %args.http_addr, "serving /metrics, /healthz and /readyz");
    let app = router(metrics.clone(), readiness.clone());
    tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, app).await {
            warn!(error = %err, "HTTP server stopped");
        }
    });

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut terminate = std::pin::pin!(termination_signal());

    // Leadership: hold the Lease for as long as the controllers run.
    let identity = args.identity.clone().unwrap_or_else(default_identity);
    let mut leadership = None;
    if args.leader_elect {
        readiness.set_standby();
        // The manager reads (or creates) the Lease as it is built. An API server restarting
        // or out of reach must not end the process: a Deployment would restart it with ever
        // longer delays. Only one out of reach for longer than that is an error.
        let mut retry = LEASE_RETRY_FIRST;
        let unreachable_since = std::time::Instant::now();
        let manager = loop {
            let built = LeaseManagerBuilder::new(client.clone(), name)
                .with_namespace(lease_namespace.as_str())
                .with_parameters(LeaseParams::new(
                    identity.as_str(),
                    args.lease_duration_seconds,
                    (args.lease_duration_seconds / 3).max(1),
                ))
                .with_field_manager(name)
                .build()
                .await;
            let err = match built {
                Ok(manager) => break manager,
                Err(err) if unreachable_since.elapsed() >= LEASE_PATIENCE => {
                    return Err(RuntimeError::Lease {
                        lease: name.into(),
                        message: format!("{err} (for {LEASE_PATIENCE:?})"),
                    });
                }
                Err(err) => err,
            };
            warn!(controller = name, error = %err, ?retry, "cannot read the Lease yet; trying again");
            tokio::select! {
                () = tokio::time::sleep(retry) => retry = (retry * 2).min(LEASE_RETRY_MAX),
                _ = &mut terminate => {
                    info!("stopping before becoming leader");
                    return Ok(());
                }
            }
        };
        let (mut leader_rx, task) = manager.watch().await;
        info!(
            controller = name,
            identity,
            namespace = lease_namespace,
            "waiting for the Lease"
        );
        loop {
            if *leader_rx.borrow_and_update() {
                break;
            }
            tokio::select! {
                changed = leader_rx.changed() => if changed.is_err() {
                    return Err(RuntimeError::Lease { lease: name.into(), message: "lease manager stopped".into() });
                },
                _ = &mut terminate => {
                    info!("stopping before becoming leader");
                    drop(leader_rx);
                    let _ = task.await;
                    return Ok(());
                }
            }
        }
        info!(controller = name, "acquired the Lease; starting");
        metrics.leader.set(1);
        leadership = Some((leader_rx, task));
    }
    readiness.set_leading();

    let context = Context {
        recorder: Recorder::new(client.clone(), name, identity),
        client,
        metrics: metrics.reconcile.clone(),
        readiness: readiness.clone(),
        namespace: args.namespace(),
        concurrency: args.concurrency,
        retries: Retries::default(),
        egress,
        shutdown: stop_rx,
    };
    let mut running = tokio::spawn(controllers(context));
    let lost = async {
        match leadership.as_mut() {
            Some((rx, _)) => {
                // Resolves when the Lease is no longer ours (or the manager stopped).
                let _ = rx.wait_for(|leading| !*leading).await;
            }
            None => std::future::pending::<()>().await,
        }
    };

    let outcome = tokio::select! {
        finished = &mut running => finished_result(finished),
        _ = &mut terminate => {
            info!(controller = name, "signal received; letting reconciles finish");
            Ok(())
        }
        _ = lost => Err(RuntimeError::LeadershipLost(name.into())),
    };
    readiness.set_stopping();
    let _ = stop_tx.send(true);
    if !running.is_finished() {
        match tokio::time::timeout(args.shutdown_timeout(), &mut running).await {
            Ok(finished) => {
                if let Err(err) = finished_result(finished) {
                    warn!(error = %err, "controller failed while stopping");
                }
            }
            Err(_) => {
                warn!(timeout = ?args.shutdown_timeout(), "controllers did not stop in time");
                running.abort();
            }
        }
    }
    if let Some((leader_rx, task)) = leadership {
        // Dropping the receiver makes the manager release the Lease, so a standby takes over
        // at once instead of waiting for it to expire.
        drop(leader_rx);
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        metrics.leader.set(0);
        info!(controller = name, "released the Lease");
    }
    outcome
}

fn finished_result(finished: Result<Result<(), BoxError>, tokio::task::JoinError>) -> Result<(), RuntimeError> {
    match finished {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) => Err(RuntimeError::Controller(err)),
        Err(join) => Err(RuntimeError::Controller(Box::new(join))),
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn termination_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = ctrl_c => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "orrery".into());
    format!("{host}-{}", std::process::id())
}
