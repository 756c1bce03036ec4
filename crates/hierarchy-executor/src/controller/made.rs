//! What the executors made, as found: on this cluster from caches of every kind they make
//! (whose watches bring a deleted or edited object back to its owner), on a remote cluster
//! by listing (no watch reaches there; those resources look again every 15 s). A kind whose
//! watch has not listed yet is listed too, and looked at again in the same way.

use std::sync::Arc;

use crd_types::hierarchy::OWNER_LABEL;
use futures::Stream;
use gateway_api::httproutes::HttpRoute;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{LimitRange, Namespace, ResourceQuota, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use orrery_runtime::Error;

use super::State;
use super::index::{Index, indexed, lookup, synced, touched_or_gone};
use super::write::{Written, align, list_owned, prune};
use crate::plan::Readiness;
use crate::registry::Kind;

/// The objects of one kind made on this cluster, by their owner's uid.
pub(super) struct Owned<K: Written> {
    store: Store<K>,
    by_owner: Arc<Index<K>>,
}

/// Every kind an executor makes on this cluster.
pub(super) struct Made {
    pub(super) namespaces: Owned<Namespace>,
    pub(super) quotas: Owned<ResourceQuota>,
    pub(super) limits: Owned<LimitRange>,
    pub(super) network_policies: Owned<NetworkPolicy>,
    pub(super) role_bindings: Owned<RoleBinding>,
    pub(super) deployments: Owned<Deployment>,
    pub(super) services: Owned<Service>,
    pub(super) routes: Owned<HttpRoute>,
}

impl Made {
    /// Whether every kind a `kind`'s executor makes on this cluster is watched: until then
    /// (the Gateway API installed after this executor started, say) its resources look again
    /// every so often, as they do on a remote cluster.
    pub(super) fn watched_for(&self, kind: Kind) -> bool {
        match kind {
            Kind::VirtualCluster => {
                self.namespaces.watched()
                    && self.quotas.watched()
                    && self.limits.watched()
                    && self.network_policies.watched()
                    && self.role_bindings.watched()
            }
            Kind::Application => self.deployments.watched() && self.services.watched() && self.routes.watched(),
            Kind::Project | Kind::Cluster => true,
        }
    }
}

/// A kind an executor makes, and where [`Made`] keeps it.
pub(super) trait MadeKind: Written {
    fn owned(made: &Made) -> &Owned<Self>;
}

macro_rules! made_kinds {
    ($($kind:ty => $field:ident),* $(,)?) => {$(
        impl MadeKind for $kind {
            fn owned(made: &Made) -> &Owned<Self> {
                &made.$field
            }
        }
    )*};
}
made_kinds!(
    Namespace => namespaces,
    ResourceQuota => quotas,
    LimitRange => limits,
    NetworkPolicy => network_policies,
    RoleBinding => role_bindings,
    Deployment => deployments,
    Service => services,
    HttpRoute => routes,
);

/// The owner uid an object is marked with.
pub(super) fn owner_of<K: ResourceExt>(object: &K) -> Option<String> {
    object.labels().get(OWNER_LABEL).cloned()
}

/// A watch of the `K`s marked with an owner on this cluster: the cache of [`Owned`], and each
/// change or deletion as a trigger.
pub(super) fn watch_made<K: Written>(
    readiness: Option<&orrery_runtime::Readiness>,
    client: &Client,
    config: &watcher::Config,
) -> (Owned<K>, impl Stream<Item = Result<K, watcher::Error>> + Send + use<K>) {
    let by_owner = Index::by(owner_of::<K>);
    let (store, events) = indexed(
        readiness,
        Api::<K>::all(client.clone()),
        config.clone().labels(OWNER_LABEL),
        vec![by_owner.clone()],
        |_: &mut K| {},
    );
    let touched = touched_or_gone(store.clone(), events);
    (Owned { store, by_owner }, touched)
}

impl<K: Written> Owned<K> {
    /// Whether this cache has listed, so that its watch reports every deletion and edit.
    pub(super) fn watched(&self) -> bool {
        synced(&self.store)
    }
}

/// The cluster a resource's objects live on.
pub(super) struct Target {
    pub(super) client: Client,
    /// This cluster (watched and cached), not a remote one.
    pub(super) local: bool,
}

impl Target {
    /// The `K`s in `namespace` (for a cluster-scoped kind, `None`) marked as `owner`'s.
    pub(super) async fn found<K: MadeKind>(
        &self,
        made: &Made,
        namespace: Option<&str>,
        owner: &str,
    ) -> Result<Vec<K>, Error> {
        let owned = K::owned(made);
        if !self.local || !owned.watched() {
            return list_owned(&self.client, namespace, owner).await;
        }
        Ok(lookup(&owned.store, &owned.by_owner, owner)
            .into_iter()
            .filter(|o| o.namespace().as_deref() == namespace)
            .map(|o| o.as_ref().clone())
            .collect())
    }

    /// Makes the `K`s of `owner` in `namespace` the `wanted` ones: [`align`], then [`prune`].
    /// Someone else's object in the way: why, as the readiness to report.
    pub(super) async fn keep<K: MadeKind>(
        &self,
        state: &State,
        namespace: Option<&str>,
        owner: &str,
        wanted: &[K],
        repaired: &mut Vec<String>,
    ) -> Result<Option<Readiness>, Error> {
        let found = self.found(&state.made, namespace, owner).await?;
        if let Some(refusal) = align(&self.client, &state.applied, owner, wanted, &found, repaired).await? {
            return Ok(Some(refusal));
        }
        prune(&self.client, wanted, &found).await?;
        Ok(None)
    }
}
