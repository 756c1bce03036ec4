//! Writes to target clusters, shared by every kind: make what a resource's plan wants out of
//! what is found (repairing what someone deleted or changed), prune what it no longer wants,
//! remove all of it on deletion. Only objects marked as the resource's own are written.

use crd_types::hierarchy::OWNER_LABEL;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, Client, Resource, ResourceExt};
use orrery_runtime::{Error, delete_if_exists, has_finalizer, is_not_found, set_finalizer};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::applied::{Applied, fingerprint};
use super::{CLEANUP_FINALIZER, NAME};
use crate::plan::Readiness;
use crate::plan::drift::{self, Drift, Repair};
use crate::plan::tenancy;

/// What an executor's writes need of a kind.
pub(super) trait Written:
    Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static
{
    /// An `Api` for the object's namespace (or for all, for a cluster-scoped kind).
    fn api_for(client: Client, namespace: Option<&str>) -> Api<Self>;
}

impl<K> Written for K
where
    K: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::Scope: ScopeApi<K>,
{
    fn api_for(client: Client, namespace: Option<&str>) -> Api<K> {
        K::Scope::api(client, namespace)
    }
}

/// An `Api` for a namespaced or cluster-scoped kind.
pub(super) trait ScopeApi<K> {
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

fn api_of<K: Written>(client: &Client, object: &K) -> Api<K> {
    K::api_for(client.clone(), object.namespace().as_deref())
}

/// Server-side apply of `object` as this executor. Only objects marked as the resource's own
/// are applied, so a field someone changed by hand on one of them is taken back (`force`).
pub(super) async fn apply<K: Written>(client: &Client, object: &K) -> Result<(), Error> {
    let name = object.name_any();
    // Both k8s-openapi's and derived kinds serialize apiVersion and kind, as apply wants.
    match api_of(client, object)
        .patch(&name, &PatchParams::apply(NAME).force(), &Patch::Apply(object))
        .await
    {
        Ok(_) => Ok(()),
        Err(source) => Err(Error::api(format!("applying {} {name}", K::kind(&())))(source)),
    }
}

/// The object of `object`'s name as it is now on the API server.
async fn read<K: Written>(client: &Client, object: &K) -> Result<Option<K>, Error> {
    let name = object.name_any();
    api_of(client, object)
        .get_opt(&name)
        .await
        .map_err(Error::api(format!("reading {} {name}", K::kind(&()))))
}

/// Makes `found` (the objects marked as the resource `owner`'s, from a cache or a list) into
/// `wanted`: each object missing or changed is read again (a cache a moment behind is not
/// drift), then applied unless it is someone else's. What was put back after it had been
/// applied as it is wanted now is added to `repaired`. Someone else's object in the way: why,
/// as the readiness to report.
pub(super) async fn align<K: Written>(
    target: &Client,
    applied: &Applied,
    owner: &str,
    wanted: &[K],
    found: &[K],
    repaired: &mut Vec<String>,
) -> Result<Option<Readiness>, Error> {
    let to_repair = drift::repairs(wanted, found);
    for object in wanted {
        let key = key_of(owner, object);
        let desired = fingerprint(object);
        if !to_repair.iter().any(|r| std::ptr::eq(r.object, object)) {
            // As wanted: a later deletion or edit of it is a repair to report.
            applied.record(&key, desired);
            continue;
        }
        let drift = match read(target, object).await? {
            None => Drift::Missing,
            Some(there) => {
                let kind = K::kind(&());
                let name = object.name_any();
                if let Some(refusal) = tenancy::ownership_refusal(&kind, &name, there.labels(), owner) {
                    return Ok(Some(refusal));
                }
                let (wanted_value, there_value) = (to_json(object), to_json(&there));
                match drift::changed_field(&wanted_value, &there_value) {
                    Some(path) => Drift::Changed(path),
                    None => {
                        applied.record(&key, desired);
                        continue;
                    }
                }
            }
        };
        apply(target, object).await?;
        if applied.is_current(&key, desired) {
            repaired.push(Repair { object, drift }.describe());
        }
        applied.record(&key, desired);
    }
    Ok(None)
}

fn to_json(object: &impl Serialize) -> serde_json::Value {
    serde_json::to_value(object).unwrap_or(serde_json::Value::Null)
}

/// The key under which what was applied of `object` for `owner` is remembered.
pub(super) fn key_of<K: Resource<DynamicType = ()>>(owner: &str, object: &K) -> String {
    format!(
        "{owner}/{}/{}/{}",
        K::kind(&()),
        object.meta().namespace.as_deref().unwrap_or_default(),
        object.meta().name.as_deref().unwrap_or_default()
    )
}

/// Deletes the objects of `found` (the resource's own) that `wanted` no longer has.
pub(super) async fn prune<K: Written>(target: &Client, wanted: &[K], found: &[K]) -> Result<(), Error> {
    for gone in drift::unwanted(wanted, found) {
        delete(&api_of(target, gone), &gone.name_any()).await?;
    }
    Ok(())
}

/// Deletes `name` if it exists.
pub(super) async fn delete<K: Written>(api: &Api<K>, name: &str) -> Result<(), Error> {
    delete_if_exists(api, name, &DeleteParams::background())
        .await
        .map(|_| ())
}

/// Deletes every `K` in `namespace` labelled as created for the resource with uid `owner`.
pub(super) async fn delete_owned<K>(target: &Client, namespace: &str, owner: &str) -> Result<(), Error>
where
    K: Written + Resource<Scope = k8s_openapi::NamespaceResourceScope>,
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

/// Lists the `K`s in `namespace` (all namespaces when `None`) marked as the resource `owner`'s.
pub(super) async fn list_owned<K: Written>(
    target: &Client,
    namespace: Option<&str>,
    owner: &str,
) -> Result<Vec<K>, Error> {
    let api = K::api_for(target.clone(), namespace);
    let selector = ListParams::default().labels(&format!("{OWNER_LABEL}={owner}"));
    match api.list(&selector).await {
        Ok(list) => Ok(list.items),
        // No such kind on that cluster (Gateway API not installed): nothing of ours there.
        Err(err) if is_not_found(&err) => Ok(Vec::new()),
        Err(source) => Err(Error::api(format!("listing the {}s of {owner}", K::kind(&())))(source)),
    }
}

/// Puts our finalizer on `object` before anything is created for it; `true` when it had to be
/// added (that change runs the reconcile again).
pub(super) async fn hold<K: Written>(api: &Api<K>, object: &K) -> Result<bool, Error> {
    if has_finalizer(object, CLEANUP_FINALIZER) {
        return Ok(false);
    }
    set_finalizer(api, object, CLEANUP_FINALIZER, true).await?;
    Ok(true)
}
