//! Test support on a real control plane: kube-apiserver and etcd (and kube-controller-manager)
//! built from Kubernetes' Go modules by `e2e/control-plane`, no fakes.
//!
//! ```no_run
//! # async fn t() {
//! let env = orrery_e2e::TestEnv::new().await; // one control plane per test binary, a fresh namespace per test
//! let pods: kube::Api<k8s_openapi::api::core::v1::Pod> = env.namespaced();
//! # }
//! ```
//!
//! The kubelet's part is played by [`pod_simulator`] in most tests; [`node`] runs a real one
//! (containerd, runc, the kubelet, kube-proxy, kube-scheduler) where pods must really run.

pub mod access;
pub mod bench;
pub mod chaos;
pub mod control_plane;
pub mod demo;
pub mod fault_proxy;
pub mod helm;
pub mod in_process;
pub mod kubestellar_simulator;
pub mod node;
pub mod pod_simulator;
pub mod process;
pub mod prometheus;
pub mod replicas;
pub mod wait;

use std::sync::OnceLock;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use kube::discovery::{Scope, pinned_kind};
use kube::{Api, Client, Config};
use rand::Rng;

pub use control_plane::ControlPlane;
pub use in_process::InProcess;
pub use wait::{
    Deadline, TimedOut, poll_until, ready_condition, stays, until, wait_gone, wait_not_ready, wait_ready, warnings_for,
};

/// A TCP port free on 127.0.0.1 now, for a server a test starts.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The control plane of this test binary, started on first use and stopped when the binary exits.
pub fn shared_control_plane() -> &'static ControlPlane {
    static SHARED: OnceLock<ControlPlane> = OnceLock::new();
    SHARED.get_or_init(|| {
        let plane = ControlPlane::start().unwrap_or_else(|err| panic!("cannot start the control plane: {err:#}"));
        plane
            .install_crds_blocking()
            .unwrap_or_else(|err| panic!("cannot install the CRDs: {err:#}"));
        plane
    })
}

/// Starts `serve` on the shared control plane once per test process (once per `started`), on a
/// thread and runtime of its own: controllers that every test of a file shares must outlive
/// the test that happened to start them (a test's runtime ends with it).
pub async fn serve_every_test<F, Fut>(started: &'static OnceLock<()>, serve: F)
where
    F: FnOnce(Client) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let start = move || {
        started.get_or_init(|| {
            let (ready, up) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Runtime::new().expect("a runtime for shared controllers");
                runtime.block_on(async move {
                    let client = shared_control_plane().client().await;
                    let _ = ready.send(());
                    serve(client).await;
                });
            });
            up.recv().expect("the shared controllers' thread started");
        });
    };
    tokio::task::spawn_blocking(start)
        .await
        .expect("starting the shared controllers panicked");
}

/// Creates `object` (JSON of a `K`) through `api`, panicking with the API server's answer:
/// for tests and benchmarks that cannot go on without it.
pub async fn create<K>(api: &Api<K>, object: serde_json::Value) -> K
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug + serde::Serialize,
{
    let object: K = serde_json::from_value(object).unwrap_or_else(|err| panic!("not a {}: {err}", K::kind(&())));
    api.create(&PostParams::default(), &object)
        .await
        .unwrap_or_else(|err| panic!("cannot create the {}: {err}", K::kind(&())))
}

/// The objects in a multi-document YAML stream (empty documents skipped).
pub fn yaml_objects(yaml: &str) -> anyhow::Result<Vec<DynamicObject>> {
    let mut objects = Vec::new();
    for document in serde_yaml::Deserializer::from_str(yaml) {
        let value = <serde_yaml::Value as serde::Deserialize>::deserialize(document)?;
        if value.is_null() {
            continue;
        }
        objects.push(serde_yaml::from_value(value)?);
    }
    Ok(objects)
}

/// Server-side applies `object` (any kind the API server serves, found by discovery) as field
/// manager `orrery-e2e`; with `dry_run`, the server validates and admits it without storing it.
pub async fn apply(client: &Client, object: &DynamicObject, dry_run: bool) -> anyhow::Result<DynamicObject> {
    let types = object
        .types
        .clone()
        .ok_or_else(|| anyhow::anyhow!("an object without apiVersion and kind"))?;
    let (group, version) = types.api_version.split_once('/').unwrap_or(("", &types.api_version));
    let (resource, caps) = pinned_kind(client, &GroupVersionKind::gvk(group, version, &types.kind)).await?;
    let api: Api<DynamicObject> = match caps.scope {
        Scope::Namespaced => {
            let namespace = object.metadata.namespace.as_deref().unwrap_or("default");
            Api::namespaced_with(client.clone(), namespace, &resource)
        }
        Scope::Cluster => Api::all_with(client.clone(), &resource),
    };
    let mut params = PatchParams::apply("orrery-e2e").force();
    params.dry_run = dry_run;
    let name = object.metadata.name.clone().unwrap_or_default();
    api.patch(&name, &params, &Patch::Apply(object))
        .await
        .with_context(|| format!("applying {} {name}", types.kind))
}

/// One test's world: a client of the shared control plane and a fresh namespace that is
/// deleted when the test ends, pass or fail.
pub struct TestEnv {
    /// Admin client (system:masters).
    pub client: Client,
    /// The test's own namespace.
    pub namespace: String,
    plane: Plane,
}

/// The control plane a test runs against: the binary's shared one, or one with a real node that
/// the tests using it at the same time share.
enum Plane {
    Shared(&'static ControlPlane),
    WithNode(std::sync::Arc<ControlPlane>),
}

impl std::ops::Deref for Plane {
    type Target = ControlPlane;

    fn deref(&self) -> &ControlPlane {
        match self {
            Plane::Shared(plane) => plane,
            Plane::WithNode(plane) => plane,
        }
    }
}

impl std::fmt::Debug for TestEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestEnv")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl TestEnv {
    /// Starts (or reuses) the control plane and creates a namespace `test-xxxxxx`.
    pub async fn new() -> Self {
        // Logs of in-process controllers, captured per test and shown when one fails.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
            )
            .with_test_writer()
            .try_init();
        let plane = tokio::task::spawn_blocking(shared_control_plane)
            .await
            .expect("control plane start panicked");
        Self::on(Plane::Shared(plane)).await
    }

    /// A test's world on the control plane with a real node ([`node::acquire`]), or `None`
    /// where the node cannot run here: the reason is printed and the test should return.
    pub async fn with_node() -> Option<Self> {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
            )
            .with_test_writer()
            .try_init();
        match tokio::task::spawn_blocking(node::acquire)
            .await
            .expect("starting the node panicked")
        {
            Ok(plane) => Some(Self::on(Plane::WithNode(plane)).await),
            Err(reason) => {
                eprintln!("skipped: the real node cannot run here: {reason}");
                None
            }
        }
    }

    /// A fresh namespace `test-xxxxxx` on `plane`; with a real node, once its default
    /// ServiceAccount exists, as the API server admits no pod there before.
    async fn on(plane: Plane) -> Self {
        let client = plane.client().await;
        let suffix: String = rand::rng()
            .sample_iter(rand::distr::Alphanumeric)
            .take(8)
            .map(|c| char::from(c).to_ascii_lowercase())
            .collect();
        let namespace = format!("test-{suffix}");
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": namespace, "labels": {"orrery.dev/test": "true"}}
        }))
        .expect("namespace literal");
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .unwrap_or_else(|err| panic!("cannot create namespace {namespace}: {err}"));
        if plane.node().is_some() {
            node::wait_default_service_account(&client, &namespace).await;
        }
        Self {
            client,
            namespace,
            plane,
        }
    }

    /// An API of a namespaced kind in the test's namespace.
    pub fn namespaced<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Lets VirtualCluster `virtual_cluster` adopt the test's namespace, as the namespace's
    /// owner consents with `kubectl annotate namespace NS hierarchy.orrery.dev/adoptable-by=VC`.
    pub async fn let_adopt(&self, virtual_cluster: &str) {
        let consent = serde_json::json!({"metadata": {"annotations": {
            hierarchy_executor::plan::tenancy::ADOPTABLE_BY_ANNOTATION: virtual_cluster}}});
        Api::<Namespace>::all(self.client.clone())
            .patch(&self.namespace, &PatchParams::default(), &Patch::Merge(consent))
            .await
            .unwrap_or_else(|err| panic!("cannot annotate namespace {}: {err}", self.namespace));
    }

    /// The control plane.
    pub fn plane(&self) -> &ControlPlane {
        &self.plane
    }

    /// A client configuration acting as `user` (e.g. `system:serviceaccount:ns:name`) with
    /// `groups`, through the API server's impersonation.
    pub fn impersonating(&self, user: &str, groups: &[&str]) -> Config {
        let mut config = self.plane.config().clone();
        config.auth_info.impersonate = Some(user.to_owned());
        config.auth_info.impersonate_groups = Some(groups.iter().map(|g| (*g).to_owned()).collect());
        config
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        // Drop cannot await; delete from a thread with its own runtime so this works whether
        // the test passed or is unwinding from a failed assertion.
        let config = self.plane.config().clone();
        let namespace = self.namespace.clone();
        let deleted = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async move {
                let client = Client::try_from(config).ok()?;
                Api::<Namespace>::all(client)
                    .delete(&namespace, &DeleteParams::background())
                    .await
                    .ok()
            })
        })
        .join();
        if !matches!(deleted, Ok(Some(_))) {
            eprintln!("warning: could not delete namespace {}", self.namespace);
        }
    }
}
