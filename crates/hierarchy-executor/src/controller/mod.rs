//! The I/O around [`crate::plan`]: one controller per hierarchy kind, one module each
//! ([`project`], [`cluster`], [`virtual_cluster`], [`application`]), every reconcile the same
//! steps: claim → the spec as its policies apply it → its target → align what it makes
//! ([`write::align`]: repair, then prune) → roll its children up → [`status::finish`].
//!
//! Each controller is triggered by its kind, by its children (their readiness rolls up into
//! it), by its parent (a parent's change re-runs its children) and by every object it makes
//! on this cluster (a deletion or an edit brings its owner back to repair it). Parents find
//! their children, and owners their objects, through indexes the watches keep ([`index`]).
//!
//! To add a kind: a plan module in `plan/`, a module here like [`virtual_cluster`], its
//! caches and triggers in [`run_with`], and its made kinds in [`made::Made`].

mod application;
mod applied;
mod cluster;
mod index;
mod made;
mod project;
mod status;
mod targets;
mod virtual_cluster;
mod write;

use orrery_runtime::Lock;
use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use crd_types::common::{CONDITION_READY, find_condition};
use crd_types::hierarchy::{
    Application, ApplicationSpec, ApplicationStatus, Cluster, ClusterStatus, HierarchyStatus, OWNER_LABEL, Project,
    VirtualCluster, VirtualClusterSpec, VirtualClusterStatus,
};
use futures::{Stream, StreamExt};
use gateway_api::httproutes::HttpRoute;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{LimitRange, Namespace, ResourceQuota, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::core::PartialObjectMeta;
use kube::runtime::WatchStreamExt;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Resource, ResourceExt};
/// A request to the API server that failed, as the shared I/O reports it.
use orrery_runtime::Error as Request;
use orrery_runtime::{BoxError, Configured, Context, Failure, log_results, watcher_config};

use crate::plan::tenancy::Protected;
use crate::plan::{Child, Readiness, roll_up};
use crate::registry::Registry;
use applied::Applied;
use index::{Index, indexed, touched_or_gone};
use made::{Made, owner_of, watch_made};
use status::StatusWrites;
use targets::Targets;

/// The controller's name: its field manager, Lease and Event reporter.
pub const NAME: &str = "hierarchy-executor";

/// How often a resource whose objects no watch reports looks again (on another cluster, where
/// no watch reaches, or until the watch of their kind has listed): this is also how soon a
/// deletion or an edit there is repaired.
const UNWATCHED_RECHECK: Duration = Duration::from_secs(15);

/// Held by Clusters, VirtualClusters and Applications this executor runs, until what it
/// created for them is gone: owner references reach neither another namespace (an
/// Application's objects live in its VirtualCluster's) nor another cluster.
pub const CLEANUP_FINALIZER: &str = "hierarchy.orrery.dev/cleanup";

/// The reason of a resource whose parent does not exist.
const PARENT_NOT_FOUND: &str = "ParentNotFound";

/// Why a reconcile failed; the variant is the reason in `orrery_reconcile_failures`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Writing a resource's own status or finalizer.
    #[error(transparent)]
    Status(Request),
    /// Reading, applying or deleting what an executor makes on its target cluster.
    #[error(transparent)]
    Target(Request),
    /// Applying or pruning the children a Project's templates describe.
    #[error(transparent)]
    Templated(Request),
}

/// A failed request to a target cluster, unless said otherwise.
impl From<Request> for Error {
    fn from(request: Request) -> Self {
        Error::Target(request)
    }
}

impl Failure for Error {
    fn reason(&self) -> &'static str {
        match self {
            _ if self.is_conflict() => "Conflict",
            Error::Status(_) => "Status",
            Error::Target(_) => "Target",
            Error::Templated(_) => "Templated",
        }
    }

    fn is_conflict(&self) -> bool {
        let (Error::Status(request) | Error::Target(request) | Error::Templated(request)) = self;
        request.is_conflict()
    }
}

struct State {
    context: Context,
    registry: Registry,
    /// Namespaces no VirtualCluster may have.
    protected: Protected,
    targets: Targets,
    primary: Primary,
    children: Children,
    made: Made,
    applied: Applied,
    status_writes: StatusWrites,
    /// Cluster uid → its target's last inspection.
    inspections: Lock<HashMap<String, cluster::Inspection>>,
}

/// Each kind's own cache, whole, with a Project's templated children by the Project's uid.
struct Primary {
    clusters: Store<Cluster>,
    virtual_clusters: Store<VirtualCluster>,
    applications: Store<Application>,
    templated_clusters: Arc<Index<Cluster>>,
    templated_virtual_clusters: Arc<Index<VirtualCluster>>,
    templated_applications: Arc<Index<Application>>,
}

/// Children as their parents' roll-ups read them (names, parent references, finalizers,
/// conditions), by parent name; each cache fed by the watch that triggers the parent, so a
/// child's change is in the cache before its parent runs.
struct Children {
    clusters: Store<Cluster>,
    clusters_by_project: Arc<Index<Cluster>>,
    virtual_clusters: Store<VirtualCluster>,
    virtual_clusters_by_cluster: Arc<Index<VirtualCluster>>,
    applications: Store<Application>,
    applications_by_virtual_cluster: Arc<Index<Application>>,
}

/// Runs the four controllers until the context's shutdown signal, protecting only the system
/// namespaces.
pub async fn run(context: Context) -> Result<(), BoxError> {
    run_with(context, Registry::builtin(), Protected::default()).await
}

/// What a cache that keeps its objects whole does to them.
fn keep_whole<K>(_: &mut K) {}

fn uid_of<K: Resource>(object: &K) -> Option<String> {
    object.meta().uid.clone()
}

/// Runs the controllers claiming the executors of `registry`; no VirtualCluster may have a
/// `protected` namespace.
pub async fn run_with(context: Context, registry: Registry, protected: Protected) -> Result<(), BoxError> {
    if let Some(namespace) = &context.namespace {
        // Refused rather than half-honoured: a tree spans namespaces by design.
        return Err(format!(
            "--watch-namespace={namespace}: hierarchy-executor runs cluster-scoped Projects, \
             Clusters and VirtualClusters whose Applications live in their VirtualClusters' \
             namespaces, so it always watches the whole cluster; leave the flag out"
        )
        .into());
    }
    let client = context.client.clone();
    let config = watcher_config(&Api::<Project>::all(client.clone())).await;
    let readiness = Some(&context.readiness);

    // Each kind's own watch: its controller's trigger and cache.
    let projects_by_uid = Index::by(uid_of::<Project>);
    let (projects, project_events) = indexed(
        readiness,
        Api::<Project>::all(client.clone()),
        config.clone(),
        vec![projects_by_uid.clone()],
        keep_whole,
    );
    let templated_clusters = Index::by(owner_of::<Cluster>);
    let (clusters, cluster_events) = indexed(
        readiness,
        Api::<Cluster>::all(client.clone()),
        config.clone(),
        vec![templated_clusters.clone()],
        keep_whole,
    );
    let (virtual_clusters_by_uid, templated_virtual_clusters) = (
        Index::by(uid_of::<VirtualCluster>),
        Index::by(owner_of::<VirtualCluster>),
    );
    let (virtual_clusters, vc_events) = indexed(
        readiness,
        Api::<VirtualCluster>::all(client.clone()),
        config.clone(),
        vec![virtual_clusters_by_uid.clone(), templated_virtual_clusters.clone()],
        keep_whole,
    );
    let (applications_by_uid, templated_applications) =
        (Index::by(uid_of::<Application>), Index::by(owner_of::<Application>));
    let (applications, app_events) = indexed(
        readiness,
        Api::<Application>::all(client.clone()),
        config.clone(),
        vec![applications_by_uid.clone(), templated_applications.clone()],
        keep_whole,
    );

    // Children as their parents read them, slimmed, by parent.
    let clusters_by_project = Index::by(|c: &Cluster| c.spec.project.clone());
    let (project_clusters, project_cluster_events) = indexed(
        readiness,
        Api::<Cluster>::all(client.clone()),
        config.clone(),
        vec![clusters_by_project.clone()],
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
    let virtual_clusters_by_cluster = Index::by(|v: &VirtualCluster| v.spec.cluster.clone());
    let (cluster_virtual_clusters, cluster_vc_events) = indexed(
        readiness,
        Api::<VirtualCluster>::all(client.clone()),
        config.clone(),
        vec![virtual_clusters_by_cluster.clone()],
        |v: &mut VirtualCluster| {
            v.metadata.annotations = None;
            v.spec = VirtualClusterSpec {
                cluster: v.spec.cluster.take(),
                ..Default::default()
            };
            v.status = v.status.take().map(|s| VirtualClusterStatus {
                common: slim_common(s.common),
                ..VirtualClusterStatus::default()
            });
        },
    );
    let applications_by_virtual_cluster = Index::by(|a: &Application| a.spec.virtual_cluster.clone());
    let (vc_applications, vc_app_events) = indexed(
        readiness,
        Api::<Application>::all(client.clone()),
        config.clone(),
        vec![applications_by_virtual_cluster.clone()],
        |a: &mut Application| {
            a.metadata.annotations = None;
            a.spec = ApplicationSpec {
                virtual_cluster: a.spec.virtual_cluster.take(),
                ..Default::default()
            };
            a.status = a.status.take().map(|s| ApplicationStatus {
                common: slim_common(s.common),
                ..ApplicationStatus::default()
            });
        },
    );

    // What the executors make on this cluster. The Gateway API may not be installed here: its
    // cache is not waited for (a route not found in it is read from the API server).
    let (namespaces, namespace_changes) = watch_made::<Namespace>(readiness, &client, &config);
    let (quotas, quota_changes) = watch_made::<ResourceQuota>(readiness, &client, &config);
    let (limits, limit_changes) = watch_made::<LimitRange>(readiness, &client, &config);
    let (network_policies, network_policy_changes) = watch_made::<NetworkPolicy>(readiness, &client, &config);
    let (role_bindings, role_binding_changes) = watch_made::<RoleBinding>(readiness, &client, &config);
    let (deployments, deployment_changes) = watch_made::<Deployment>(readiness, &client, &config);
    let (services, service_changes) = watch_made::<Service>(readiness, &client, &config);
    let (routes, route_changes) = watch_made::<HttpRoute>(None, &client, &config);

    let state = Arc::new(State {
        context: context.clone(),
        registry,
        protected,
        targets: Targets::new(client.clone()),
        primary: Primary {
            clusters: clusters.clone(),
            virtual_clusters: virtual_clusters.clone(),
            applications: applications.clone(),
            templated_clusters,
            templated_virtual_clusters,
            templated_applications,
        },
        children: Children {
            clusters: project_clusters.clone(),
            clusters_by_project: clusters_by_project.clone(),
            virtual_clusters: cluster_virtual_clusters.clone(),
            virtual_clusters_by_cluster: virtual_clusters_by_cluster.clone(),
            applications: vc_applications.clone(),
            applications_by_virtual_cluster: applications_by_virtual_cluster.clone(),
        },
        made: Made {
            namespaces,
            quotas,
            limits,
            network_policies,
            role_bindings,
            deployments,
            services,
            routes,
        },
        applied: Applied::default(),
        status_writes: StatusWrites::default(),
        inspections: Lock::default(),
    });
    // Project: its Clusters roll up into it (and its templated children, changed or deleted,
    // bring it back); a VirtualCluster it made having its namespace lets that VirtualCluster's
    // Applications be made.
    let project_controller = Controller::for_stream(project_events.applied_objects(), projects.clone())
        .watches_stream(touched_or_gone(project_clusters.clone(), project_cluster_events), {
            let (by_uid, projects) = (projects_by_uid.clone(), projects.clone());
            move |c: Cluster| {
                let owner = owner_of(&c).map(|o| by_uid.get(&o)).unwrap_or_default();
                owner
                    .into_iter()
                    .chain(parent_ref(&projects, c.spec.project.as_deref()))
            }
        })
        .watches_stream(
            changes(
                templated::<Application>(&client, &config),
                |a: &PartialObjectMeta<Application>| a.metadata.generation,
            ),
            owned_by(&projects_by_uid),
        )
        .watches_stream(
            changes(watch_all::<VirtualCluster>(&client, &config), |v: &VirtualCluster| {
                let status = v.status.as_ref();
                (
                    v.metadata.generation,
                    status.and_then(|s| s.namespace.clone()),
                    status.and_then(|s| ready_of(&s.common)),
                )
            }),
            owned_by(&projects_by_uid),
        )
        .configured(&context)
        .graceful_shutdown_on(context.shutdown_signal())
        .run(project::reconcile, error_policy, state.clone());

    // Cluster: its Project triggers it; its VirtualClusters roll up into it.
    let cluster_controller = Controller::for_stream(cluster_events.applied_objects(), clusters.clone())
        .watches_stream(touched_or_gone(cluster_virtual_clusters.clone(), cluster_vc_events), {
            let clusters = clusters.clone();
            move |v: VirtualCluster| parent_ref(&clusters, v.spec.cluster.as_deref())
        })
        .watches_stream(
            changes(watch_all::<Project>(&client, &config), |p: &Project| {
                p.metadata.generation
            }),
            children_by(&clusters_by_project),
        )
        .configured(&context)
        .graceful_shutdown_on(context.shutdown_signal())
        .run(cluster::reconcile, error_policy, state.clone());

    // VirtualCluster: its Cluster triggers it; its Applications roll up into it; what it makes
    // on this cluster, changed or deleted, brings it back.
    let vc_controller = Controller::for_stream(vc_events.applied_objects(), virtual_clusters.clone())
        .watches_stream(touched_or_gone(vc_applications.clone(), vc_app_events), {
            let virtual_clusters = virtual_clusters.clone();
            move |a: Application| parent_ref(&virtual_clusters, a.spec.virtual_cluster.as_deref())
        })
        .watches_stream(
            changes(watch_all::<Cluster>(&client, &config), |c: &Cluster| {
                (
                    c.metadata.generation,
                    c.status.as_ref().and_then(|s| ready_of(&s.common)),
                )
            }),
            children_by(&virtual_clusters_by_cluster),
        )
        .watches_stream(namespace_changes, owned_by(&virtual_clusters_by_uid))
        .watches_stream(quota_changes, owned_by(&virtual_clusters_by_uid))
        .watches_stream(limit_changes, owned_by(&virtual_clusters_by_uid))
        .watches_stream(network_policy_changes, owned_by(&virtual_clusters_by_uid))
        .watches_stream(role_binding_changes, owned_by(&virtual_clusters_by_uid))
        .configured(&context)
        .graceful_shutdown_on(context.shutdown_signal())
        .run(virtual_cluster::reconcile, error_policy, state.clone());

    // Application: its VirtualCluster triggers it, and so does everything it makes here.
    let app_controller = Controller::for_stream(app_events.applied_objects(), applications.clone())
        .watches_stream(deployment_changes, owned_by(&applications_by_uid))
        .watches_stream(service_changes, owned_by(&applications_by_uid))
        .watches_stream(route_changes, owned_by(&applications_by_uid))
        .watches_stream(
            changes(watch_all::<VirtualCluster>(&client, &config), |v: &VirtualCluster| {
                let status = v.status.as_ref();
                (
                    v.metadata.generation,
                    status.and_then(|s| s.namespace.clone()),
                    status.and_then(|s| ready_of(&s.common)),
                )
            }),
            children_by(&applications_by_virtual_cluster),
        )
        .configured(&context)
        .graceful_shutdown_on(context.shutdown_signal())
        .run(application::reconcile, error_policy, state);

    tokio::join!(
        log_results(NAME, project_controller),
        log_results(NAME, cluster_controller),
        log_results(NAME, vc_controller),
        log_results(NAME, app_controller),
    );
    Ok(())
}

/// A mapper from an object to the resource its owner label names, among `by_uid`.
fn owned_by<K, P>(by_uid: &Arc<Index<P>>) -> impl Fn(K) -> Vec<ObjectRef<P>> + Send + Sync + 'static
where
    K: Resource,
    P: Resource<DynamicType = ()> + 'static,
{
    let by_uid = by_uid.clone();
    move |object: K| owner_of(&object).map(|uid| by_uid.get(&uid)).unwrap_or_default()
}

/// A mapper from a parent to its children, among `by_parent`.
fn children_by<K, C>(by_parent: &Arc<Index<C>>) -> impl Fn(K) -> Vec<ObjectRef<C>> + Send + Sync + 'static
where
    K: Resource,
    C: Resource<DynamicType = ()> + 'static,
{
    let by_parent = by_parent.clone();
    move |parent: K| by_parent.get(&parent.name_any())
}

/// A watch of every `K` (stripped), as events.
fn watch_all<K>(
    client: &kube::Client,
    config: &watcher::Config,
) -> impl Stream<Item = Result<Event<K>, watcher::Error>> + Send + use<K>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    watcher::watcher(Api::<K>::all(client.clone()), config.clone())
        .backoff(orrery_runtime::watch_backoff())
        .modify(orrery_runtime::strip::<K>)
}

/// A watch of the names and labels of the `K`s a Project's templates made.
fn templated<K>(
    client: &kube::Client,
    config: &watcher::Config,
) -> impl Stream<Item = Result<Event<PartialObjectMeta<K>>, watcher::Error>> + Send + use<K>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let api = Api::<PartialObjectMeta<K>>::all(client.clone());
    watcher::watcher(api, config.clone().labels(OWNER_LABEL)).backoff(orrery_runtime::watch_backoff())
}

/// The objects of `events` whose `read` (what the controller triggered reads of them)
/// changed, and those deleted: not one whose only change is, say, its roll-up message, or a
/// VirtualCluster's thousand Applications would all run again each time one of them changed.
fn changes<K, T>(
    events: impl Stream<Item = Result<Event<K>, watcher::Error>> + Send,
    read: impl Fn(&K) -> T + Send + 'static,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send
where
    K: Resource<DynamicType = ()> + Send + 'static,
    T: Hash,
{
    let mut seen: HashMap<ObjectRef<K>, u64> = HashMap::new();
    events.filter_map(move |event| {
        let changed = match event {
            Err(error) => Some(Err(error)),
            Ok(Event::Apply(object) | Event::InitApply(object)) => {
                let mut hasher = DefaultHasher::new();
                (read(&object), object.meta().deletion_timestamp.is_some()).hash(&mut hasher);
                let hash = hasher.finish();
                let reference = ObjectRef::from_obj(&object);
                (seen.insert(reference, hash) != Some(hash)).then_some(Ok(object))
            }
            Ok(Event::Delete(object)) => {
                seen.remove(&ObjectRef::from_obj(&object));
                Some(Ok(object))
            }
            Ok(Event::Init | Event::InitDone) => None,
        };
        futures::future::ready(changed)
    })
}

/// The `Ready` condition's status and reason (not its message).
fn ready_of(status: &HierarchyStatus) -> Option<(String, String)> {
    find_condition(&status.conditions, CONDITION_READY).map(|c| (c.status.clone(), c.reason.clone()))
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

fn error_policy<K>(object: Arc<K>, error: &Error, state: Arc<State>) -> Action
where
    K: Resource<DynamicType = ()>,
{
    state.context.error_policy(NAME, object.as_ref(), error)
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
    Some(Action::requeue(UNWATCHED_RECHECK))
}
