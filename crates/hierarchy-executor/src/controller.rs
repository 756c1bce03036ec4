//! The I/O around [`crate::plan`]: one controller per hierarchy kind. Each watches its kind,
//! its children (their readiness rolls up into its own) and its parent (a parent's change
//! re-runs its children), applies what its plan wants with server-side apply, and writes
//! its status.

mod applied;
mod targets;

use std::sync::Arc;
use std::time::Duration;

use crd_types::common::{CONDITION_READY, Time, set_condition};
use crd_types::hierarchy::{
    Application, ApplicationStatus, Cluster, ClusterStatus, HierarchyStatus, OWNER_LABEL, Project, VirtualCluster,
    VirtualClusterStatus,
};
use futures::StreamExt;
use gateway_api::httproutes::HttpRoute;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{LimitRange, Namespace, Pod, ResourceQuota, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::RoleBinding;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
pub use orrery_runtime::Error;
use orrery_runtime::{
    BoxError, Context, apply_status, has_finalizer, is_not_found, set_finalizer, watched, watched_and_cached,
    watched_and_cached_slim, watcher_config,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::gateway::{self, HTTPROUTE_CRD};
use crate::plan::application::{self, APP_LABEL};
use crate::plan::tenancy::{self, Protected};
use crate::plan::{Child, Readiness, as_applied, project, roll_up, virtual_cluster};
use crate::registry::{Claim, INSTALL_GATEWAY_API, Kind, Registry, flag};
use applied::{Applied, fingerprint};
use targets::Targets;

/// The controller's name: its field manager, Lease and Event reporter.
pub const NAME: &str = "hierarchy-executor";

/// How often a resource whose readiness depends on another cluster looks again: no watch
/// reaches there.
const REMOTE_RECHECK: Duration = Duration::from_secs(15);

/// Held by Clusters, VirtualClusters and Applications this executor runs, until what it
/// created for them is gone: owner references reach neither another namespace (an
/// Application's objects live in its VirtualCluster's) nor another cluster.
pub const CLEANUP_FINALIZER: &str = "hierarchy.orrery.dev/cleanup";

/// How often a deleted Cluster looks again for VirtualClusters still cleaning up through it.
const CLEANUP_RECHECK: Duration = Duration::from_secs(2);

/// How soon a refused write to a target cluster is tried again.
const WRITE_RETRY: Duration = Duration::from_secs(10);

/// How often a status whose only change is its `Ready` message is written: while a tree
/// builds, every child's progress rewrites the messages of its parents up to the Project.
/// Changes of readiness or reason are written at once.
const MESSAGE_ONLY_EVERY: Duration = Duration::from_secs(5);

/// How often a resource refused for something outside it (a namespace without its owner's
/// consent, an object of someone else's in the way) looks again.
const REFUSED_RECHECK: Duration = Duration::from_secs(15);

/// The reason of a resource whose parent does not exist.
const PARENT_NOT_FOUND: &str = "ParentNotFound";

struct State {
    context: Context,
    registry: Registry,
    /// Namespaces no VirtualCluster may have.
    protected: Protected,
    targets: Targets,
    clusters: Store<Cluster>,
    virtual_clusters: Store<VirtualCluster>,
    applications: Store<Application>,
    /// Children as their parents' roll-ups read them, each cache fed by the watch that triggers
    /// the parent: a child's change is in the cache before its parent runs.
    project_clusters: Store<Cluster>,
    cluster_virtual_clusters: Store<VirtualCluster>,
    virtual_cluster_applications: Store<Application>,
    applied: Applied,
    /// Resource uid → when its status was last written, for [`MESSAGE_ONLY_EVERY`].
    status_writes: std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
    /// Cluster uid → its target's last inspection.
    inspections: std::sync::Mutex<std::collections::HashMap<String, Inspection>>,
}

/// A target cluster's last inspection, reused for [`REMOTE_RECHECK`]: every change of one of
/// its VirtualClusters runs a Cluster again, and what the cluster answers changes rarely.
struct Inspection {
    at: std::time::Instant,
    install: bool,
    found: ClusterStatus,
    readiness: Readiness,
}

/// What a reconcile concluded, before its status is written.
struct Outcome {
    readiness: Readiness,
    /// Look again after this long even if nothing changes.
    recheck: Option<Duration>,
}

/// Runs the four controllers until the context's shutdown signal, protecting only the system
/// namespaces.
pub async fn run(context: Context) -> Result<(), BoxError> {
    run_with(context, Registry::builtin(), Protected::default()).await
}

/// Runs the controllers claiming the executors of `registry`; no VirtualCluster may have a
/// `protected` namespace.
pub async fn run_with(context: Context, registry: Registry, protected: Protected) -> Result<(), BoxError> {
    let client = context.client.clone();
    let config = watcher_config(&Api::<Project>::all(client.clone())).await;
    // Each controller has its own watches: a cache it reads is fed by a stream it is triggered by.
    let (projects, project_trigger) =
        watched_and_cached(&context.readiness, Api::<Project>::all(client.clone()), config.clone());
    let (clusters, cluster_trigger) =
        watched_and_cached(&context.readiness, Api::<Cluster>::all(client.clone()), config.clone());
    let (virtual_clusters, vc_trigger) = watched_and_cached(
        &context.readiness,
        Api::<VirtualCluster>::all(client.clone()),
        config.clone(),
    );
    let (applications, app_trigger) = watched_and_cached(
        &context.readiness,
        Api::<Application>::all(client.clone()),
        config.clone(),
    );
    // What parents read of their children: names, parent references, finalizers, conditions.
    let (project_clusters, project_clusters_trigger) = watched_and_cached_slim(
        &context.readiness,
        Api::<Cluster>::all(client.clone()),
        config.clone(),
        |c: &mut Cluster| {
            c.metadata.annotations = None;
            c.spec.executor = None;
            c.spec.policies.clear();
            c.status = c.status.take().map(|s| ClusterStatus {
                common: slim_common(s.common),
                ..ClusterStatus::default()
            });
        },
    );
    let (cluster_virtual_clusters, cluster_vcs_trigger) = watched_and_cached_slim(
        &context.readiness,
        Api::<VirtualCluster>::all(client.clone()),
        config.clone(),
        |v: &mut VirtualCluster| {
            v.metadata.annotations = None;
            v.spec = crd_types::hierarchy::VirtualClusterSpec {
                cluster: v.spec.cluster.take(),
                ..Default::default()
            };
            v.status = v.status.take().map(|s| VirtualClusterStatus {
                common: slim_common(s.common),
                ..VirtualClusterStatus::default()
            });
        },
    );
    let (virtual_cluster_applications, vc_apps_trigger) = watched_and_cached_slim(
        &context.readiness,
        Api::<Application>::all(client.clone()),
        config.clone(),
        |a: &mut Application| {
            a.metadata.annotations = None;
            a.spec = crd_types::hierarchy::ApplicationSpec {
                virtual_cluster: a.spec.virtual_cluster.take(),
                ..Default::default()
            };
            a.status = a.status.take().map(|s| ApplicationStatus {
                common: slim_common(s.common),
                ..ApplicationStatus::default()
            });
        },
    );
    let state = Arc::new(State {
        context: context.clone(),
        registry,
        protected,
        targets: Targets::new(client.clone()),
        clusters: clusters.clone(),
        virtual_clusters: virtual_clusters.clone(),
        applications: applications.clone(),
        project_clusters,
        cluster_virtual_clusters,
        virtual_cluster_applications,
        applied: Applied::default(),
        inspections: std::sync::Mutex::default(),
        status_writes: std::sync::Mutex::default(),
    });
    // `--concurrency` is the binary's: its four controllers share it. Each reconcile holds an
    // API connection, and the request limit is shared anyway.
    let config_each = context
        .controller_config()
        .concurrency((context.concurrency / 4).max(1));
    // Project: its Clusters roll up into it; a VirtualCluster it made having its namespace
    // lets that VirtualCluster's Applications be made.
    let project_controller = Controller::for_stream(project_trigger, projects.clone())
        .owns_stream(when_changed(
            watched(Api::<VirtualCluster>::all(client.clone()), config.clone()),
            |v: &VirtualCluster| {
                let status = v.status.as_ref();
                (
                    status.and_then(|s| s.namespace.clone()),
                    status.and_then(|s| ready_of(&s.common)),
                )
            },
        ))
        .watches_stream(project_clusters_trigger, {
            let projects = projects.clone();
            move |c: Cluster| parent_ref(&projects, c.spec.project.as_deref())
        })
        .with_config(config_each.clone())
        .graceful_shutdown_on(context.shutdown_signal())
        .run(reconcile_project, error_policy, state.clone())
        .for_each(|_| async {});

    // Cluster: its Project triggers it; its VirtualClusters roll up into it.
    let cluster_controller = Controller::for_stream(cluster_trigger, clusters.clone())
        .watches_stream(cluster_vcs_trigger, {
            let clusters = clusters.clone();
            move |v: VirtualCluster| parent_ref(&clusters, v.spec.cluster.as_deref())
        })
        .watches_stream(
            when_changed(
                watched(Api::<Project>::all(client.clone()), config.clone()),
                |p: &Project| p.metadata.generation,
            ),
            {
                let clusters = clusters.clone();
                move |p: Project| children_of(&clusters, p.name_any(), |c| c.spec.project.as_deref())
            },
        )
        .with_config(config_each.clone())
        .graceful_shutdown_on(context.shutdown_signal())
        .run(reconcile_cluster, error_policy, state.clone())
        .for_each(|_| async {});

    // VirtualCluster: its Cluster triggers it; its Applications roll up into it.
    let vc_controller = Controller::for_stream(vc_trigger, virtual_clusters.clone())
        .watches_stream(vc_apps_trigger, {
            let virtual_clusters = virtual_clusters.clone();
            move |a: Application| parent_ref(&virtual_clusters, a.spec.virtual_cluster.as_deref())
        })
        .watches_stream(
            when_changed(
                watched(Api::<Cluster>::all(client.clone()), config.clone()),
                |c: &Cluster| {
                    (
                        c.metadata.generation,
                        c.status.as_ref().and_then(|s| ready_of(&s.common)),
                    )
                },
            ),
            {
                let virtual_clusters = virtual_clusters.clone();
                move |c: Cluster| children_of(&virtual_clusters, c.name_any(), |v| v.spec.cluster.as_deref())
            },
        )
        .with_config(config_each.clone())
        .graceful_shutdown_on(context.shutdown_signal())
        .run(reconcile_virtual_cluster, error_policy, state.clone())
        .for_each(|_| async {});

    // Application: its VirtualCluster triggers it, and so do its Deployments on this cluster.
    let deployments = watched(Api::<Deployment>::all(client.clone()), config.clone().labels(APP_LABEL));
    let app_controller = Controller::for_stream(app_trigger, applications.clone())
        .watches_stream(deployments, |d: Deployment| {
            Some(ObjectRef::new(d.labels().get(APP_LABEL)?).within(&d.namespace()?))
        })
        .watches_stream(
            when_changed(
                watched(Api::<VirtualCluster>::all(client.clone()), config.clone()),
                |v: &VirtualCluster| {
                    let status = v.status.as_ref();
                    (
                        v.metadata.generation,
                        status.and_then(|s| s.namespace.clone()),
                        status.and_then(|s| ready_of(&s.common)),
                    )
                },
            ),
            {
                let applications = applications.clone();
                move |v: VirtualCluster| children_of(&applications, v.name_any(), |a| a.spec.virtual_cluster.as_deref())
            },
        )
        .with_config(config_each.clone())
        .graceful_shutdown_on(context.shutdown_signal())
        .run(reconcile_application, error_policy, state)
        .for_each(|_| async {});

    tokio::join!(project_controller, cluster_controller, vc_controller, app_controller);
    Ok(())
}

/// `parents`, passing a parent on only when `read` (what its children read of it) changed,
/// or it is being deleted: not when only its roll-up message did, or a VirtualCluster's
/// thousand Applications would all run again each time one of them changed.
fn when_changed<K, T>(
    parents: impl futures::Stream<Item = Result<K, watcher::Error>> + Send,
    read: impl Fn(&K) -> T + Send + 'static,
) -> impl futures::Stream<Item = Result<K, watcher::Error>> + Send
where
    K: Resource + Send + 'static,
    T: std::hash::Hash,
{
    use kube::runtime::WatchStreamExt;
    use std::hash::{DefaultHasher, Hash, Hasher};
    parents.predicate_filter(
        move |parent: &K| {
            let mut hasher = DefaultHasher::new();
            (read(parent), parent.meta().deletion_timestamp.is_some()).hash(&mut hasher);
            Some(hasher.finish())
        },
        Default::default(),
    )
}

/// The `Ready` condition's status and reason (not its message).
fn ready_of(status: &HierarchyStatus) -> Option<(String, String)> {
    crd_types::common::find_condition(&status.conditions, CONDITION_READY).map(|c| (c.status.clone(), c.reason.clone()))
}

/// The children in `children` whose `parent_of` is `parent`: what a parent's change re-runs.
fn children_of<C>(
    children: &Store<C>,
    parent: String,
    parent_of: fn(&C) -> Option<&str>,
) -> impl Iterator<Item = ObjectRef<C>> + use<C>
where
    C: Resource<DynamicType = ()> + Clone + 'static,
{
    children
        .state()
        .into_iter()
        .filter(move |c| parent_of(c) == Some(parent.as_str()))
        .map(|c| ObjectRef::from_obj(c.as_ref()))
}

/// The part of a child's status its parent reads.
fn slim_common(status: HierarchyStatus) -> HierarchyStatus {
    HierarchyStatus {
        conditions: status.conditions,
        ..HierarchyStatus::default()
    }
}

/// The parent named `name`, if it is in `parents`.
fn parent_ref<P>(parents: &Store<P>, name: Option<&str>) -> Option<ObjectRef<P>>
where
    P: Resource<DynamicType = ()> + Clone,
{
    let reference = ObjectRef::new(name?);
    parents.get(&reference).map(|_| reference)
}

fn error_policy<K>(_: Arc<K>, error: &Error, _: Arc<State>) -> Action {
    error.requeue()
}

/// What to do with a resource, given its executor.
enum Execution {
    /// Another controller claimed it: none of our business.
    LeaveAlone,
    /// Report this and do nothing else (an unclaimed executor, bad parameters).
    Report(Readiness),
    /// Run our executor with these parameters.
    Run(crd_types::common::Parameters),
}

/// Whether this controller runs the resource's executor; `claimed_by` is its `status.executor`.
fn claim(
    state: &State,
    kind: Kind,
    executor: Option<&crd_types::common::PluginRef>,
    claimed_by: Option<&str>,
) -> Execution {
    match state.registry.claim(kind, executor) {
        Claim::Claimed(parameters) => Execution::Run(parameters),
        Claim::InvalidParameters(message) => Execution::Report(Readiness::NotReady {
            reason: "InvalidParameters".into(),
            message,
        }),
        Claim::NotClaimed(_) if claimed_by.is_some_and(|c| c != NAME) => Execution::LeaveAlone,
        Claim::NotClaimed(name) => Execution::Report(Readiness::NotReady {
            reason: "ExecutorNotClaimed".into(),
            message: format!("no controller runs executor {name:?} for this kind"),
        }),
    }
}

/// Server-side apply of `object` as this executor, never taking fields another manager owns.
async fn apply<K>(client: &Client, object: &K) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
    K::Scope: ScopeApi<K>,
{
    let api: Api<K> = K::Scope::api(client.clone(), object.namespace().as_deref());
    let name = object.name_any();
    // Both k8s-openapi's and derived kinds serialize apiVersion and kind, as apply wants.
    match api.patch(&name, &PatchParams::apply(NAME), &Patch::Apply(object)).await {
        Ok(_) => Ok(()),
        // A field another manager owns (409) is not ours to take: like any refused write it is
        // retried after a pause, not at once as a stale read would be.
        Err(source) => Err(Error::api(format!("applying {} {name}", K::kind(&())))(source)),
    }
}

/// Why `object` may not be written for the resource with uid `owner`: it exists on `target`
/// and is not marked as that resource's (someone else's, or made by hand).
async fn foreign<K>(target: &Client, object: &K, owner: &str) -> Result<Option<Readiness>, Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
    K::Scope: ScopeApi<K>,
{
    let api: Api<K> = K::Scope::api(target.clone(), object.namespace().as_deref());
    let name = object.name_any();
    let existing = api
        .get_metadata_opt(&name)
        .await
        .map_err(Error::api(format!("reading {} {name}", K::kind(&()))))?;
    Ok(existing.and_then(|e| tenancy::ownership_refusal(&K::kind(&()), &name, e.labels(), owner)))
}

/// Applies `wanted` if the spec asks for it, else deletes the object `name` in `namespace`;
/// either only when the object is the resource `owner`'s or absent. Someone else's object of
/// that name is left alone: why, as the readiness to report.
async fn apply_or_delete<K>(
    target: &Client,
    namespace: &str,
    wanted: Option<&K>,
    name: &str,
    owner: &str,
) -> Result<Option<Readiness>, Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + Serialize
        + DeserializeOwned
        + std::fmt::Debug,
{
    match wanted {
        Some(object) => {
            if let Some(refusal) = foreign(target, object, owner).await? {
                return Ok(Some(refusal));
            }
            apply(target, object).await?;
        }
        None => delete_if_owned(&Api::<K>::namespaced(target.clone(), namespace), name, owner).await?,
    }
    Ok(None)
}

/// Deletes `name` if it exists and is marked as the resource `owner`'s.
async fn delete_if_owned<K>(api: &Api<K>, name: &str, owner: &str) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    let existing = api
        .get_metadata_opt(name)
        .await
        .map_err(Error::api(format!("reading {} {name}", K::kind(&()))))?;
    if existing.is_some_and(|e| e.labels().get(OWNER_LABEL).map(String::as_str) == Some(owner)) {
        delete(api, name).await?;
    }
    Ok(())
}

/// Deletes `name` if it exists.
async fn delete<K>(api: &Api<K>, name: &str) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(err) if is_not_found(&err) => Ok(()),
        Err(source) => Err(Error::api(format!("deleting {} {name}", K::kind(&())))(source)),
    }
}

/// Deletes every `K` in `namespace` labelled as created for the resource with uid `owner`.
async fn delete_owned<K>(target: &Client, namespace: &str, owner: &str) -> Result<(), Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let api = Api::<K>::namespaced(target.clone(), namespace);
    let selector = ListParams::default().labels(&format!("{OWNER_LABEL}={owner}"));
    match api.delete_collection(&DeleteParams::background(), &selector).await {
        Ok(_) => Ok(()),
        // No such namespace, or no such kind on that cluster: nothing of ours there.
        Err(err) if is_not_found(&err) => Ok(()),
        Err(source) => Err(Error::api(format!("deleting the {}s of {owner}", K::kind(&())))(source)),
    }
}

/// A write to a target cluster the API server refused (a field another manager owns, a
/// quota, a webhook): the resource's condition says so, and it is tried again after a pause.
/// A conflict is only a stale read: read again at once.
fn write_failed(err: Error, recheck: &mut Option<Duration>) -> Result<Readiness, Error> {
    match err {
        Error::Conflict(_) => Err(err),
        Error::Api { .. } => {
            *recheck = Some(WRITE_RETRY);
            Ok(Readiness::NotReady {
                reason: "WriteFailed".into(),
                message: err.to_string(),
            })
        }
    }
}

/// Puts our finalizer on `object` before anything is created for it; `true` when it had to be
/// added (that change runs the reconcile again).
async fn hold<K>(api: &Api<K>, object: &K) -> Result<bool, Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    if has_finalizer(object, CLEANUP_FINALIZER) {
        return Ok(false);
    }
    set_finalizer(api, object, CLEANUP_FINALIZER, true).await?;
    Ok(true)
}

/// A deleted resource whose target cannot be reached. Its parent gone, nothing it created can
/// be found any more (a VirtualCluster's namespace took its Applications' objects with it):
/// `None`, release it. Otherwise (a Secret missing, say) say so and look again later.
async fn cleanup_blocked<K>(state: &State, object: &K, why: Readiness) -> Option<Action>
where
    K: Resource<DynamicType = ()>,
{
    let Readiness::NotReady { reason, message } = why else {
        return None;
    };
    if reason == PARENT_NOT_FOUND {
        tracing::info!(object = %object.meta().name.as_deref().unwrap_or_default(), "{message}: released without cleanup");
        return None;
    }
    state
        .context
        .recorder
        .publish_or_log(
            &object.object_ref(&()),
            true,
            "CleanupBlocked",
            format!("cannot remove what was created for it yet: {message}"),
            "Cleanup",
        )
        .await;
    Some(Action::requeue(REMOTE_RECHECK))
}

/// An `Api` for a namespaced or cluster-scoped kind.
trait ScopeApi<K> {
    fn api(client: Client, namespace: Option<&str>) -> Api<K>;
}

impl<K> ScopeApi<K> for k8s_openapi::NamespaceResourceScope
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    fn api(client: Client, namespace: Option<&str>) -> Api<K> {
        Api::namespaced(client, namespace.unwrap_or("default"))
    }
}

impl<K> ScopeApi<K> for k8s_openapi::ClusterResourceScope
where
    K: Resource<Scope = k8s_openapi::ClusterResourceScope, DynamicType = ()>,
{
    fn api(client: Client, _: Option<&str>) -> Api<K> {
        Api::all(client)
    }
}

/// A hierarchy kind's status: the shared part, and the kind's own fields.
trait Status: Serialize + PartialEq + Clone + Default {
    fn common(&self) -> &HierarchyStatus;
    fn common_mut(&mut self) -> &mut HierarchyStatus;
}

impl Status for HierarchyStatus {
    fn common(&self) -> &HierarchyStatus {
        self
    }
    fn common_mut(&mut self) -> &mut HierarchyStatus {
        self
    }
}

macro_rules! status_with_common {
    ($($status:ty),*) => {$(
        impl Status for $status {
            fn common(&self) -> &HierarchyStatus {
                &self.common
            }
            fn common_mut(&mut self) -> &mut HierarchyStatus {
                &mut self.common
            }
        }
    )*};
}
status_with_common!(ClusterStatus, VirtualClusterStatus, ApplicationStatus);

/// The shared part of every kind's status, from the outcome.
fn common_status(
    previous: Option<&HierarchyStatus>,
    generation: Option<i64>,
    readiness: &Readiness,
) -> HierarchyStatus {
    let mut conditions = previous.map(|p| p.conditions.clone()).unwrap_or_default();
    let now = Time(Timestamp::now());
    match readiness {
        Readiness::Ready => set_condition(&mut conditions, CONDITION_READY, true, "Ready", "", generation, now),
        Readiness::NotReady { reason, message } => set_condition(
            &mut conditions,
            CONDITION_READY,
            false,
            reason,
            message.clone(),
            generation,
            now,
        ),
    }
    HierarchyStatus {
        observed_generation: generation,
        conditions,
        executor: Some(NAME.into()),
        // policy-runner's field: never written here.
        policy: None,
    }
}

/// Completes `status` with the outcome, writes it unless it says what is already there
/// (ignoring the policy field, which is policy-runner's), and publishes an Event when the
/// readiness changed.
async fn finish<K, S>(
    state: &State,
    object: &K,
    api: &Api<K>,
    previous: Option<&S>,
    mut status: S,
    outcome: Outcome,
) -> Result<Action, Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
    S: Status,
{
    *status.common_mut() = common_status(
        previous.map(Status::common),
        object.meta().generation,
        &outcome.readiness,
    );
    let outcome = Outcome {
        recheck: outcome
            .recheck
            .or_else(|| tenancy::cleared_by_others(&outcome.readiness).then_some(REFUSED_RECHECK)),
        ..outcome
    };
    let comparable = previous.cloned().map(|mut p| {
        p.common_mut().policy = None;
        p
    });
    if comparable.as_ref() != Some(&status) {
        let uid = object.meta().uid.clone().unwrap_or_default();
        if let Some(previous) = &comparable
            && only_the_message_differs(previous, &status)
            && let Some(wait) = state.too_soon_to_write(&uid)
        {
            return Ok(Action::requeue(outcome.recheck.map_or(wait, |r| r.min(wait))));
        }
        apply_status(api, NAME, object, &status).await?;
        state.wrote_status(uid);
    }
    let ready = matches!(outcome.readiness, Readiness::Ready);
    if was_ready(previous.map(Status::common)) != Some(ready) {
        let (warning, reason, note) = match &outcome.readiness {
            Readiness::Ready => (false, "Ready", "every part is ready".to_owned()),
            Readiness::NotReady { reason, message } => (true, reason.as_str(), message.clone()),
        };
        state
            .context
            .recorder
            .publish_or_log(&object.object_ref(&()), warning, reason, note, "Execute")
            .await;
    }
    Ok(match outcome.recheck {
        Some(after) => Action::requeue(after),
        None => Action::await_change(),
    })
}

/// Whether `next` differs from `previous` only in its `Ready` condition's message.
fn only_the_message_differs<S: Status>(previous: &S, next: &S) -> bool {
    let Some(before) = crd_types::common::find_condition(&previous.common().conditions, CONDITION_READY) else {
        return false;
    };
    let mut masked = next.clone();
    if let Some(ready) = masked
        .common_mut()
        .conditions
        .iter_mut()
        .find(|c| c.type_ == CONDITION_READY)
    {
        ready.message.clone_from(&before.message);
    }
    masked == *previous
}

impl State {
    /// How long to wait before writing `uid`'s status again, if it was written too recently.
    fn too_soon_to_write(&self, uid: &str) -> Option<Duration> {
        let writes = self.status_writes.lock().unwrap_or_else(|p| p.into_inner());
        let since = writes.get(uid)?.elapsed();
        MESSAGE_ONLY_EVERY.checked_sub(since).filter(|wait| !wait.is_zero())
    }

    fn wrote_status(&self, uid: String) {
        let mut writes = self.status_writes.lock().unwrap_or_else(|p| p.into_inner());
        // Only recent writes matter: older entries go, so the map stays small.
        if writes.len() > 1024 {
            writes.retain(|_, at| at.elapsed() < MESSAGE_ONLY_EVERY);
        }
        writes.insert(uid, std::time::Instant::now());
    }
}

/// `own` rolled up with `children`'s readiness, each named by `name`.
fn roll_up_children<T>(
    own: Readiness,
    kind: &str,
    children: &[Arc<T>],
    name: impl Fn(&T) -> String,
    status: impl Fn(&T) -> Option<&HierarchyStatus>,
) -> Readiness {
    let names: Vec<String> = children.iter().map(|c| name(c)).collect();
    let rolled: Vec<Child<'_>> = children
        .iter()
        .zip(&names)
        .map(|(c, n)| Child {
            kind,
            name: n,
            conditions: status(c).map_or(&[], |s| s.conditions.as_slice()),
        })
        .collect();
    roll_up(own, &rolled)
}

fn was_ready(status: Option<&HierarchyStatus>) -> Option<bool> {
    crd_types::common::find_condition(&status?.conditions, CONDITION_READY).map(|c| c.status == "True")
}

// ---------------------------------------------------------------------------------------------

async fn reconcile_project(project: Arc<Project>, state: Arc<State>) -> Result<Action, Error> {
    state
        .context
        .metrics
        .measure(NAME, execute_project(&project, &state))
        .await
}

async fn execute_project(project: &Project, state: &State) -> Result<Action, Error> {
    if project.metadata.deletion_timestamp.is_some() {
        // The garbage collector is removing its children: making them again would fight it.
        state.applied.forget_all(&project.uid().unwrap_or_default());
        return Ok(Action::await_change());
    }
    let previous = project.status.clone();
    let status = HierarchyStatus::default();
    let readiness = match claim(
        state,
        Kind::Project,
        project.spec.executor.as_ref(),
        previous.as_ref().and_then(|s| s.executor.as_deref()),
    ) {
        Execution::LeaveAlone => return Ok(Action::await_change()),
        Execution::Report(readiness) => readiness,
        Execution::Run(_) => match as_applied(project).map(|applied| project::children(&applied)) {
            Err(waiting) => waiting,
            Ok(Err(message)) => Readiness::NotReady {
                reason: "InvalidTemplates".into(),
                message,
            },
            Ok(Ok(children)) => match foreign_child(state, &project.uid().unwrap_or_default(), &children) {
                Some(refusal) => refusal,
                None => run_templates(state, project, &children).await?,
            },
        },
    };
    let outcome = Outcome {
        readiness,
        recheck: None,
    };
    finish(
        state,
        project,
        &Api::all(state.context.client.clone()),
        previous.as_ref(),
        status,
        outcome,
    )
    .await
}

/// Applies the Project's templated children (unless they are as last applied and all there)
/// and rolls its Clusters' readiness up into its own.
async fn run_templates(
    state: &State,
    project: &Project,
    children: &project::ProjectChildren,
) -> Result<Readiness, Error> {
    let uid = project.uid().unwrap_or_default();
    let desired = fingerprint(children);
    let waiting = if state.applied.is_current(&uid, desired) && all_exist(state, children) {
        Vec::new()
    } else {
        let applied = apply_children(state, project, children).await;
        match &applied {
            Ok(waiting) if waiting.is_empty() => state.applied.record(&uid, desired),
            _ => state.applied.forget(&uid),
        }
        applied?
    };
    let own = if waiting.is_empty() {
        Readiness::Ready
    } else {
        Readiness::NotReady {
            reason: "WaitingForNamespaces".into(),
            message: format!(
                "Applications wait for their VirtualCluster's namespace: {}",
                waiting.join(", ")
            ),
        }
    };
    let name = project.name_any();
    let clusters: Vec<Arc<Cluster>> = state
        .project_clusters
        .state()
        .into_iter()
        .filter(|c| c.spec.project.as_deref() == Some(name.as_str()))
        .collect();
    Ok(roll_up_children(
        own,
        "Cluster",
        &clusters,
        |c| c.name_any(),
        |c| c.status.as_ref().map(|s| &s.common),
    ))
}

/// Why the Project with uid `owner` may not apply its templates: a child they describe exists
/// and is not this Project's. A Project adopts nothing: what it did not make stays out of its
/// reach, or removing a template would delete someone else's object.
fn foreign_child(state: &State, owner: &str, children: &project::ProjectChildren) -> Option<Readiness> {
    fn check<K: Resource<DynamicType = ()> + Clone>(cache: &Store<K>, child: &K, owner: &str) -> Option<Readiness> {
        let existing = cache.get(&ObjectRef::from_obj(child))?;
        let name = match child.meta().namespace.as_deref() {
            Some(namespace) => format!("{namespace}/{}", child.name_any()),
            None => child.name_any(),
        };
        tenancy::ownership_refusal(&K::kind(&()), &name, existing.labels(), owner)
    }
    (children.clusters.iter())
        .find_map(|c| check(&state.clusters, c, owner))
        .or_else(|| (children.virtual_clusters.iter()).find_map(|v| check(&state.virtual_clusters, v, owner)))
        .or_else(|| (children.applications.iter()).find_map(|a| check(&state.applications, a, owner)))
}

/// Whether every child the templates describe is in the caches.
fn all_exist(state: &State, children: &project::ProjectChildren) -> bool {
    children
        .clusters
        .iter()
        .all(|c| state.clusters.get(&ObjectRef::from_obj(c)).is_some())
        && children
            .virtual_clusters
            .iter()
            .all(|v| state.virtual_clusters.get(&ObjectRef::from_obj(v)).is_some())
        && children
            .applications
            .iter()
            .all(|a| state.applications.get(&ObjectRef::from_obj(a)).is_some())
}

/// Applies the templates' children and prunes those no longer described. Applications whose
/// namespace does not exist yet (their VirtualCluster makes it) wait: their `namespace/name`s.
async fn apply_children(
    state: &State,
    project: &Project,
    children: &project::ProjectChildren,
) -> Result<Vec<String>, Error> {
    let uid = project.uid().unwrap_or_default();
    for cluster in &children.clusters {
        let cached = state.clusters.get(&ObjectRef::from_obj(cluster)).is_some();
        apply_child(state, &uid, cluster, cached).await?;
    }
    for vc in &children.virtual_clusters {
        let cached = state.virtual_clusters.get(&ObjectRef::from_obj(vc)).is_some();
        apply_child(state, &uid, vc, cached).await?;
    }
    let mut waiting = Vec::new();
    for app in &children.applications {
        let cached = state.applications.get(&ObjectRef::from_obj(app)).is_some();
        match apply_child(state, &uid, app, cached).await {
            Ok(()) => {}
            Err(Error::Api { source, .. }) if is_not_found(&source) => {
                waiting.push(format!("{}/{}", app.namespace().unwrap_or_default(), app.name_any()));
            }
            Err(err) => return Err(err),
        }
    }
    prune_templated(state, project, children).await?;
    Ok(waiting)
}

/// Applies one templated child unless it is `cached` and what was last applied for it is the
/// same: while some Applications wait for their namespace, the rest are not applied again.
async fn apply_child<K>(state: &State, project: &str, child: &K, cached: bool) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
    K::Scope: ScopeApi<K>,
{
    let key = format!(
        "{project}/{}/{}/{}",
        K::kind(&()),
        child.namespace().unwrap_or_default(),
        child.name_any()
    );
    let desired = fingerprint(child);
    if cached && state.applied.is_current(&key, desired) {
        return Ok(());
    }
    state.applied.forget(&key);
    apply(&state.context.client, child).await?;
    state.applied.record(&key, desired);
    Ok(())
}

/// Children this Project's templates created once and no longer describe: deleted.
async fn prune_templated(state: &State, project: &Project, wanted: &project::ProjectChildren) -> Result<(), Error> {
    let Some(uid) = project.metadata.uid.as_deref() else {
        return Ok(());
    };
    let owned =
        |labels: &std::collections::BTreeMap<String, String>| labels.get(OWNER_LABEL).map(String::as_str) == Some(uid);
    let client = state.context.client.clone();
    for cluster in state.clusters.state().iter().filter(|c| owned(c.labels())) {
        if !wanted.clusters.iter().any(|w| w.name_any() == cluster.name_any()) {
            delete(&Api::<Cluster>::all(client.clone()), &cluster.name_any()).await?;
        }
    }
    for vc in state.virtual_clusters.state().iter().filter(|v| owned(v.labels())) {
        if !wanted.virtual_clusters.iter().any(|w| w.name_any() == vc.name_any()) {
            delete(&Api::<VirtualCluster>::all(client.clone()), &vc.name_any()).await?;
        }
    }
    for app in state.applications.state().iter().filter(|a| owned(a.labels())) {
        if !wanted
            .applications
            .iter()
            .any(|w| w.name_any() == app.name_any() && w.namespace() == app.namespace())
        {
            let api = Api::<Application>::namespaced(client.clone(), &app.namespace().unwrap_or_default());
            delete(&api, &app.name_any()).await?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------

async fn reconcile_cluster(cluster: Arc<Cluster>, state: Arc<State>) -> Result<Action, Error> {
    state
        .context
        .metrics
        .measure(NAME, execute_cluster(&cluster, &state))
        .await
}

async fn execute_cluster(cluster: &Cluster, state: &State) -> Result<Action, Error> {
    let api = Api::<Cluster>::all(state.context.client.clone());
    if cluster.metadata.deletion_timestamp.is_some() {
        let uid = cluster.uid().unwrap_or_default();
        state.inspections.lock().unwrap_or_else(|p| p.into_inner()).remove(&uid);
        state.applied.forget(&uid);
        return release_cluster(cluster, state, &api).await;
    }
    let previous = cluster.status.clone();
    let mut status = ClusterStatus::default();
    let mut recheck = None;
    let readiness = match claim(
        state,
        Kind::Cluster,
        cluster.spec.executor.as_ref(),
        previous.as_ref().and_then(|s| s.common.executor.as_deref()),
    ) {
        Execution::LeaveAlone => return Ok(Action::await_change()),
        Execution::Report(readiness) => readiness,
        Execution::Run(parameters) => {
            if hold(&api, cluster).await? {
                return Ok(Action::await_change());
            }
            if cluster.spec.kubeconfig_secret_ref.is_some() {
                recheck = Some(REMOTE_RECHECK);
            }
            match state.targets.client_for(cluster).await {
                Err(readiness) => readiness,
                Ok(target) => {
                    let install = flag(&parameters, INSTALL_GATEWAY_API);
                    let own = inspect_recently(state, cluster, &target, install, &mut status).await;
                    let name = cluster.name_any();
                    let vcs: Vec<Arc<VirtualCluster>> = state
                        .cluster_virtual_clusters
                        .state()
                        .into_iter()
                        .filter(|v| v.spec.cluster.as_deref() == Some(name.as_str()))
                        .collect();
                    roll_up_children(
                        own,
                        "VirtualCluster",
                        &vcs,
                        |v| v.name_any(),
                        |v| v.status.as_ref().map(|s| &s.common),
                    )
                }
            }
        }
    };
    let outcome = Outcome { readiness, recheck };
    finish(state, cluster, &api, previous.as_ref(), status, outcome).await
}

/// A deleted Cluster stays until no VirtualCluster needs it to clean up.
async fn release_cluster(cluster: &Cluster, state: &State, api: &Api<Cluster>) -> Result<Action, Error> {
    let name = cluster.name_any();
    let cleaning = state
        .cluster_virtual_clusters
        .state()
        .iter()
        .any(|v| v.spec.cluster.as_deref() == Some(name.as_str()) && has_finalizer(v.as_ref(), CLEANUP_FINALIZER));
    if cleaning {
        return Ok(Action::requeue(CLEANUP_RECHECK));
    }
    set_finalizer(api, cluster, CLEANUP_FINALIZER, false).await?;
    Ok(Action::await_change())
}

/// [`inspect_cluster`], or its answer if it was asked the same less than [`REMOTE_RECHECK`] ago.
async fn inspect_recently(
    state: &State,
    cluster: &Cluster,
    target: &Client,
    install: bool,
    status: &mut ClusterStatus,
) -> Readiness {
    let uid = cluster.uid().unwrap_or_default();
    {
        let inspections = state.inspections.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(last) = inspections.get(&uid)
            && last.install == install
            && last.at.elapsed() < REMOTE_RECHECK
        {
            *status = last.found.clone();
            return last.readiness.clone();
        }
    }
    let readiness = inspect_cluster(target, install, status).await;
    let inspection = Inspection {
        at: std::time::Instant::now(),
        install,
        found: status.clone(),
        readiness: readiness.clone(),
    };
    state
        .inspections
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(uid, inspection);
    readiness
}

/// What went wrong talking to a target cluster, without echoing what it answered: its address
/// and credentials came from a Secret, and a server of the Cluster creator's choosing may
/// answer anything. An API server's status code and reason are kept.
fn remote_failure(err: &kube::Error) -> String {
    match err {
        kube::Error::Api(status) => format!("it answered {} {}", status.code, status.reason),
        kube::Error::Auth(_) => "its credentials cannot be used".into(),
        kube::Error::HyperError(_) | kube::Error::Service(_) => {
            "no connection (unreachable, refused or timed out)".into()
        }
        kube::Error::SerdeError(_) => "its answer is not a Kubernetes API server's".into(),
        _ => "the request failed".into(),
    }
}

/// Version and Gateway API CRDs of the target cluster, installing the CRDs when asked.
async fn inspect_cluster(target: &Client, install: bool, status: &mut ClusterStatus) -> Readiness {
    match target.apiserver_version().await {
        Ok(info) => status.version = Some(info.git_version),
        Err(err) => {
            return Readiness::NotReady {
                reason: "Unreachable".into(),
                message: format!("the cluster's API server does not answer: {}", remote_failure(&err)),
            };
        }
    }
    let crds: Api<CustomResourceDefinition> = Api::all(target.clone());
    let wanted = gateway::crds();
    let mut found = Vec::new();
    let mut missing = Vec::new();
    for crd in &wanted {
        let name = crd.name_any();
        match crds.get_opt(&name).await {
            Ok(Some(_)) => found.push(name),
            Ok(None) => missing.push(crd),
            Err(err) => {
                return Readiness::NotReady {
                    reason: "Unreachable".into(),
                    message: format!("cannot read CRDs: {}", remote_failure(&err)),
                };
            }
        }
    }
    if install && !missing.is_empty() {
        for crd in missing.drain(..) {
            let name = crd.name_any();
            match crds.patch(&name, &PatchParams::apply(NAME), &Patch::Apply(crd)).await {
                Ok(_) => found.push(name),
                Err(err) => {
                    return Readiness::NotReady {
                        reason: "InstallFailed".into(),
                        message: format!("installing CRD {name}: {}", remote_failure(&err)),
                    };
                }
            }
        }
    }
    found.sort();
    status.gateway_api_crds = found;
    status.missing_crds = missing.iter().map(|c| c.name_any()).collect();
    if status.missing_crds.iter().any(|c| c == HTTPROUTE_CRD) {
        return Readiness::NotReady {
            reason: "GatewayAPIMissing".into(),
            message: format!(
                "the cluster lacks {}; set executor parameter {INSTALL_GATEWAY_API}: true to install them",
                status.missing_crds.join(", ")
            ),
        };
    }
    Readiness::Ready
}

// ---------------------------------------------------------------------------------------------

async fn reconcile_virtual_cluster(vc: Arc<VirtualCluster>, state: Arc<State>) -> Result<Action, Error> {
    state
        .context
        .metrics
        .measure(NAME, execute_virtual_cluster(&vc, &state))
        .await
}

/// The Cluster a child names, and a client for it; or why there is none.
async fn target_of(state: &State, cluster: Option<&str>) -> Result<(Arc<Cluster>, Client), Readiness> {
    let Some(name) = cluster else {
        return Err(Readiness::NotReady {
            reason: PARENT_NOT_FOUND.into(),
            message: "spec.cluster names no Cluster".into(),
        });
    };
    let Some(cluster) = state.clusters.get(&ObjectRef::new(name)) else {
        return Err(Readiness::NotReady {
            reason: PARENT_NOT_FOUND.into(),
            message: format!("Cluster {name} does not exist"),
        });
    };
    let client = state.targets.client_for(&cluster).await?;
    Ok((cluster, client))
}

async fn execute_virtual_cluster(vc: &VirtualCluster, state: &State) -> Result<Action, Error> {
    let api = Api::<VirtualCluster>::all(state.context.client.clone());
    if vc.metadata.deletion_timestamp.is_some() {
        state.applied.forget(&vc.uid().unwrap_or_default());
        return release_virtual_cluster(vc, state, &api).await;
    }
    let previous = vc.status.clone();
    let mut status = VirtualClusterStatus::default();
    let mut recheck = None;
    let readiness = match claim(
        state,
        Kind::VirtualCluster,
        vc.spec.executor.as_ref(),
        previous.as_ref().and_then(|s| s.common.executor.as_deref()),
    ) {
        Execution::LeaveAlone => return Ok(Action::await_change()),
        Execution::Report(readiness) => readiness,
        // Waiting for its policies, it reads nothing of its Cluster.
        Execution::Run(_) => {
            match async { Ok((as_applied(vc)?, target_of(state, vc.spec.cluster.as_deref()).await?)) }.await {
                Err(readiness) => readiness,
                Ok((applied, (cluster, target))) => {
                    if hold(&api, vc).await? {
                        return Ok(Action::await_change());
                    }
                    if cluster.spec.kubeconfig_secret_ref.is_some() {
                        recheck = Some(REMOTE_RECHECK);
                    }
                    align_virtual_cluster_on(vc, &applied, &target, state, &mut status, &mut recheck).await?
                }
            }
        }
    };
    let outcome = Outcome { readiness, recheck };
    finish(state, vc, &api, previous.as_ref(), status, outcome).await
}

/// Creates or adopts a VirtualCluster's namespace on its target, aligns what it holds (from
/// `applied`, the spec as its policies left it) and rolls up its Applications.
async fn align_virtual_cluster_on(
    vc: &VirtualCluster,
    applied: &VirtualCluster,
    target: &Client,
    state: &State,
    status: &mut VirtualClusterStatus,
    recheck: &mut Option<Duration>,
) -> Result<Readiness, Error> {
    let namespace = virtual_cluster::namespace_name(vc);
    let existing = Api::<Namespace>::all(target.clone())
        .get_opt(&namespace)
        .await
        .map_err(Error::api(format!("reading namespace {namespace}")))?;
    if let Some(refusal) = tenancy::namespace_refusal(vc, existing.as_ref(), &state.protected) {
        return Ok(refusal);
    }
    let uid = vc.uid().unwrap_or_default();
    let adopted = virtual_cluster::adopted(existing.as_ref());
    let objects = virtual_cluster::objects(applied, &uid, adopted);
    let desired = fingerprint(&objects);
    if existing.is_none() || !state.applied.is_current(&uid, desired) {
        state.applied.forget(&uid);
        match align_virtual_cluster(&objects, target, &namespace, &uid).await {
            Err(err) => return write_failed(err, recheck),
            Ok(Some(refusal)) => return Ok(refusal),
            Ok(None) => state.applied.record(&uid, desired),
        }
    }
    status.namespace = Some(namespace);
    let name = vc.name_any();
    let apps: Vec<Arc<Application>> = state
        .virtual_cluster_applications
        .state()
        .into_iter()
        .filter(|a| a.spec.virtual_cluster.as_deref() == Some(name.as_str()))
        .collect();
    Ok(roll_up_children(
        Readiness::Ready,
        "Application",
        &apps,
        |a| format!("{}/{}", a.namespace().unwrap_or_default(), a.name_any()),
        |a| a.status.as_ref().map(|s| &s.common),
    ))
}

/// A deleted VirtualCluster: its namespace goes with everything in it or, when it was adopted,
/// only the guardrails and our labels; then the finalizer.
async fn release_virtual_cluster(
    vc: &VirtualCluster,
    state: &State,
    api: &Api<VirtualCluster>,
) -> Result<Action, Error> {
    if !has_finalizer(vc, CLEANUP_FINALIZER) {
        return Ok(Action::await_change());
    }
    match target_of(state, vc.spec.cluster.as_deref()).await {
        Ok((_, target)) => {
            let name = virtual_cluster::namespace_name(vc);
            let namespaces = Api::<Namespace>::all(target.clone());
            let existing = namespaces
                .get_opt(&name)
                .await
                .map_err(Error::api(format!("reading namespace {name}")))?;
            // Only a namespace this VirtualCluster created or adopted carries its label.
            let ours = existing
                .as_ref()
                .is_some_and(|ns| ns.labels().get(OWNER_LABEL) == vc.metadata.uid.as_ref());
            if ours && virtual_cluster::adopted(existing.as_ref()) {
                let owner = vc.metadata.uid.as_deref().unwrap_or_default();
                delete_owned::<ResourceQuota>(&target, &name, owner).await?;
                delete_owned::<LimitRange>(&target, &name, owner).await?;
                delete_owned::<NetworkPolicy>(&target, &name, owner).await?;
                delete_owned::<RoleBinding>(&target, &name, owner).await?;
                // Applying no fields gives up every field we set: our labels and mark go.
                let bare = Namespace {
                    metadata: ObjectMeta {
                        name: Some(name),
                        ..ObjectMeta::default()
                    },
                    ..Namespace::default()
                };
                apply(&target, &bare).await?;
            } else if ours {
                delete(&namespaces, &name).await?;
            }
        }
        Err(why) => {
            if let Some(action) = cleanup_blocked(state, vc, why).await {
                return Ok(action);
            }
        }
    }
    set_finalizer(api, vc, CLEANUP_FINALIZER, false).await?;
    Ok(Action::await_change())
}

/// Applies a VirtualCluster's guardrails in its namespace and prunes its access entries the
/// spec dropped. An object of a guardrail's name that is not this VirtualCluster's (in an
/// adopted namespace) stops it: why, as the readiness to report.
async fn align_virtual_cluster(
    objects: &virtual_cluster::VirtualClusterObjects,
    target: &Client,
    namespace: &str,
    owner: &str,
) -> Result<Option<Readiness>, Error> {
    apply(target, &objects.namespace).await?;
    let guardrails = [
        apply_or_delete(
            target,
            namespace,
            objects.quota.as_ref(),
            virtual_cluster::QUOTA_NAME,
            owner,
        )
        .await?,
        apply_or_delete(
            target,
            namespace,
            objects.limits.as_ref(),
            virtual_cluster::LIMITS_NAME,
            owner,
        )
        .await?,
        apply_or_delete(
            target,
            namespace,
            objects.network_policy.as_ref(),
            virtual_cluster::NETWORK_POLICY_NAME,
            owner,
        )
        .await?,
    ];
    if let Some(refusal) = guardrails.into_iter().flatten().next() {
        return Ok(Some(refusal));
    }
    for binding in &objects.role_bindings {
        if let Some(refusal) = foreign(target, binding, owner).await? {
            return Ok(Some(refusal));
        }
        apply(target, binding).await?;
    }
    // Access entries removed from the spec: their RoleBindings go.
    let bindings: Api<RoleBinding> = Api::namespaced(target.clone(), namespace);
    let existing = bindings
        .list(&ListParams::default().labels(&format!("{OWNER_LABEL}={owner}")))
        .await
        .map_err(Error::api("listing RoleBindings"))?;
    for binding in existing.items {
        if !objects.role_bindings.iter().any(|b| b.name_any() == binding.name_any()) {
            delete(&bindings, &binding.name_any()).await?;
        }
    }
    Ok(None)
}

// ---------------------------------------------------------------------------------------------

async fn reconcile_application(app: Arc<Application>, state: Arc<State>) -> Result<Action, Error> {
    state
        .context
        .metrics
        .measure(NAME, execute_application(&app, &state))
        .await
}

async fn execute_application(app: &Application, state: &State) -> Result<Action, Error> {
    let api = Api::<Application>::namespaced(state.context.client.clone(), &app.namespace().unwrap_or_default());
    if app.metadata.deletion_timestamp.is_some() {
        state.applied.forget_all(&app.uid().unwrap_or_default());
        return release_application(app, state, &api).await;
    }
    let previous = app.status.clone();
    let mut status = ApplicationStatus::default();
    let mut recheck = None;
    let readiness = match claim(
        state,
        Kind::Application,
        app.spec.executor.as_ref(),
        previous.as_ref().and_then(|s| s.common.executor.as_deref()),
    ) {
        Execution::LeaveAlone => return Ok(Action::await_change()),
        Execution::Report(readiness) => readiness,
        Execution::Run(_) => match application_target(state, app).await {
            Err(readiness) => readiness,
            Ok((cluster, target, namespace)) => {
                if hold(&api, app).await? {
                    return Ok(Action::await_change());
                }
                if cluster.spec.kubeconfig_secret_ref.is_some() {
                    recheck = Some(REMOTE_RECHECK);
                }
                match align_application(app, &target, &namespace, &state.applied, &mut status).await {
                    Ok(readiness) => readiness,
                    Err(err) => {
                        // A write refused before the route was applied: the traffic in force
                        // stays in status, or the next reconcile would fall back to the baseline.
                        if status.weights.is_empty()
                            && let Some(previous) = &previous
                        {
                            status.weights.clone_from(&previous.weights);
                            status.matches.clone_from(&previous.matches);
                        }
                        write_failed(err, &mut recheck)?
                    }
                }
            }
        },
    };
    let outcome = Outcome { readiness, recheck };
    finish(state, app, &api, previous.as_ref(), status, outcome).await
}

/// The VirtualCluster an Application names, its Cluster and a client for that; or why there
/// are none.
async fn application_parent(
    state: &State,
    app: &Application,
) -> Result<(Arc<VirtualCluster>, Arc<Cluster>, Client), Readiness> {
    let parent = app
        .spec
        .virtual_cluster
        .as_deref()
        .and_then(|name| state.virtual_clusters.get(&ObjectRef::new(name)));
    let Some(vc) = parent else {
        return Err(Readiness::NotReady {
            reason: PARENT_NOT_FOUND.into(),
            message: format!(
                "VirtualCluster {} does not exist",
                app.spec.virtual_cluster.as_deref().unwrap_or("(none named)")
            ),
        });
    };
    let (cluster, target) = target_of(state, vc.spec.cluster.as_deref()).await?;
    Ok((vc, cluster, target))
}

/// The Cluster an Application runs on, a client for it, and its VirtualCluster's namespace
/// there, when that VirtualCluster runs the Application's namespace; or why there are none.
async fn application_target(state: &State, app: &Application) -> Result<(Arc<Cluster>, Client, String), Readiness> {
    let (vc, cluster, target) = application_parent(state, app).await?;
    let app_namespace = app.namespace().unwrap_or_default();
    if let Some(refusal) = tenancy::application_namespace_refusal(&app_namespace, &vc) {
        return Err(refusal);
    }
    Ok((cluster, target, virtual_cluster::namespace_name(&vc)))
}

/// A deleted Application: its objects go, then the finalizer.
async fn release_application(app: &Application, state: &State, api: &Api<Application>) -> Result<Action, Error> {
    if !has_finalizer(app, CLEANUP_FINALIZER) {
        return Ok(Action::await_change());
    }
    // What it made before a VirtualCluster stopped letting its namespace in goes too.
    match application_parent(state, app).await {
        Ok((vc, _, target)) => {
            let namespace = virtual_cluster::namespace_name(&vc);
            let owner = app.metadata.uid.as_deref().unwrap_or_default();
            delete_owned::<HttpRoute>(&target, &namespace, owner).await?;
            delete_owned::<Service>(&target, &namespace, owner).await?;
            delete_owned::<Deployment>(&target, &namespace, owner).await?;
        }
        Err(why) => {
            if let Some(action) = cleanup_blocked(state, app, why).await {
                return Ok(action);
            }
        }
    }
    set_finalizer(api, app, CLEANUP_FINALIZER, false).await?;
    Ok(Action::await_change())
}

async fn align_application(
    app: &Application,
    target: &Client,
    namespace: &str,
    applied: &Applied,
    status: &mut ApplicationStatus,
) -> Result<Readiness, Error> {
    let owner = app.metadata.uid.clone().unwrap_or_default();
    let objects = application::objects(app, namespace, &owner);
    let deployments: Api<Deployment> = Api::namespaced(target.clone(), namespace);
    // Only its own: a Deployment someone else labelled as this Application's is not counted,
    // re-applied over, or pruned.
    let observed: Vec<Deployment> = deployments
        .list(&ListParams::default().labels(&format!("{APP_LABEL}={},{OWNER_LABEL}={owner}", app.name_any())))
        .await
        .map_err(Error::api("listing the Application's Deployments"))?
        .items;
    // Workloads and the route apart: a pipeline moving traffic re-applies only the route.
    let workloads = fingerprint(&(&objects.deployments, &objects.services));
    let deployments_there = objects
        .deployments
        .iter()
        .all(|d| observed.iter().any(|o| o.name_any() == d.name_any()));
    if !(applied.is_current(&owner, workloads) && deployments_there) {
        applied.forget(&owner);
        if let Some(refusal) = apply_workloads(&objects, target, &owner).await? {
            return Ok(refusal);
        }
        applied.record(&owner, workloads);
    }
    let route_key = format!("{owner}/route");
    let route = fingerprint(&objects.route);
    if !applied.is_current(&route_key, route) {
        applied.forget(&route_key);
        if let Some(refusal) = foreign(target, &objects.route, &owner).await? {
            return Ok(refusal);
        }
        apply_route(&objects.route, target).await?;
        applied.record(&route_key, route);
    }
    status.weights = objects.traffic.weights.clone();
    status.matches = objects.traffic.matches.clone();
    let services: Api<Service> = Api::namespaced(target.clone(), namespace);
    for removed in application::removed_versions(app, &observed) {
        delete(&deployments, &removed).await?;
        delete_if_owned(&services, &removed, &owner).await?;
    }
    // Restarts as of this reconcile: a crashing container turns its pod unready, which changes
    // the Deployment, which brings the Application back here. Read from the API server's cache.
    let pods = Api::<Pod>::namespaced(target.clone(), namespace)
        .list(
            &ListParams::default()
                .labels(&format!("{APP_LABEL}={}", app.name_any()))
                .match_any(),
        )
        .await
        .map_err(Error::api("listing the Application's pods"))?
        .items;
    status.versions = application::version_statuses(app, &observed, &pods);
    Ok(application::readiness(&status.versions))
}

/// Applies the versions' Deployments and Services, stopping at one of their names that is not
/// the Application `owner`'s: why, as the readiness to report.
async fn apply_workloads(
    objects: &application::ApplicationObjects,
    target: &Client,
    owner: &str,
) -> Result<Option<Readiness>, Error> {
    for deployment in &objects.deployments {
        if let Some(refusal) = foreign(target, deployment, owner).await? {
            return Ok(Some(refusal));
        }
        apply(target, deployment).await?;
    }
    for service in &objects.services {
        if let Some(refusal) = foreign(target, service, owner).await? {
            return Ok(Some(refusal));
        }
        apply(target, service).await?;
    }
    Ok(None)
}

async fn apply_route(route: &HttpRoute, target: &Client) -> Result<(), Error> {
    apply(target, route).await.map_err(|err| match err {
        Error::Api { action, source } if is_not_found(&source) => Error::Api {
            action: format!("{action} (are the Gateway API CRDs installed on the Cluster?)"),
            source,
        },
        other => other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(ready: bool, reason: &str, message: &str) -> HierarchyStatus {
        let mut conditions = Vec::new();
        let at = Time(Timestamp::UNIX_EPOCH);
        set_condition(&mut conditions, CONDITION_READY, ready, reason, message, Some(1), at);
        HierarchyStatus {
            observed_generation: Some(1),
            conditions,
            executor: Some(NAME.into()),
            policy: None,
        }
    }

    #[test]
    fn a_new_message_alone_can_wait_but_a_new_reason_or_readiness_cannot() {
        let before = status(
            false,
            "ChildrenNotReady",
            "Application a/x: version v1 has 0/1 replicas ready",
        );
        let progress = status(
            false,
            "ChildrenNotReady",
            "Application a/y: version v1 has 0/1 replicas ready",
        );
        assert!(only_the_message_differs(&before, &progress));
        assert!(!only_the_message_differs(&before, &status(true, "Ready", "")));
        assert!(!only_the_message_differs(
            &before,
            &status(false, "WriteFailed", "refused")
        ));
        let mut newer = progress.clone();
        newer.observed_generation = Some(2);
        assert!(!only_the_message_differs(&before, &newer));
    }
}
