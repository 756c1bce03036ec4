//! The VirtualCluster executor: on its Cluster, creates or adopts its namespace and keeps the
//! guardrails in it (quota, limits, network policy, access RoleBindings) as its spec says,
//! repairing what anyone deletes or edits; rolls its Applications' readiness up. Deleted, it
//! removes the namespace, or only what it added to an adopted one.

use std::sync::Arc;

use crd_types::hierarchy::{OWNER_LABEL, VirtualCluster, VirtualClusterStatus};
use k8s_openapi::api::core::v1::{LimitRange, Namespace, ResourceQuota};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::RoleBinding;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Client, ResourceExt};
use orrery_runtime::{has_finalizer, set_finalizer};

use super::index::lookup;
use super::made::Target;
use super::status::{Outcome, finish};
use super::write::{apply, delete, delete_owned, hold, key_of};
use super::{
    CLEANUP_FINALIZER, Error, NAME, PARENT_NOT_FOUND, Request, State, UNWATCHED_RECHECK, cleanup_blocked,
    roll_up_children,
};
use crate::plan::drift::{self, Drift, Repair};
use crate::plan::status::{Execution, claim, write_failed};
use crate::plan::{Readiness, as_applied, tenancy, virtual_cluster};
use crate::registry::Kind;

pub(super) async fn reconcile(vc: Arc<VirtualCluster>, state: Arc<State>) -> Result<Action, Error> {
    state.context.reconcile(NAME, vc.as_ref(), execute(&vc, &state)).await
}

/// The Cluster a child names and its target; or why there is none.
pub(super) async fn target_of(state: &State, cluster: Option<&str>) -> Result<(bool, Target), Readiness> {
    let Some(name) = cluster else {
        return Err(Readiness::NotReady {
            reason: PARENT_NOT_FOUND.into(),
            message: "spec.cluster names no Cluster".into(),
        });
    };
    let Some(cluster) = state.primary.clusters.get(&ObjectRef::new(name)) else {
        return Err(Readiness::NotReady {
            reason: PARENT_NOT_FOUND.into(),
            message: format!("Cluster {name} does not exist"),
        });
    };
    let target = state.targets.target_for(&cluster).await?;
    Ok((cluster.spec.kubeconfig_secret_ref.is_some(), target))
}

async fn execute(vc: &VirtualCluster, state: &State) -> Result<Action, Error> {
    let api = Api::<VirtualCluster>::all(state.context.client.clone());
    if vc.metadata.deletion_timestamp.is_some() {
        state.applied.forget_all(&vc.uid().unwrap_or_default());
        return release(vc, state, &api).await;
    }
    let previous = vc.status.clone();
    let mut status = VirtualClusterStatus::default();
    let mut outcome = Outcome::new(Readiness::Ready, None);
    let claimed_by = previous.as_ref().and_then(|s| s.common.executor.as_deref());
    outcome.readiness = match claim(
        &state.registry,
        NAME,
        Kind::VirtualCluster,
        vc.spec.executor.as_ref(),
        claimed_by,
    ) {
        Execution::LeaveAlone => return Ok(Action::await_change()),
        Execution::Report(readiness) => readiness,
        // Waiting for its policies, it reads nothing of its Cluster.
        Execution::Run(_) => {
            match async { Ok((as_applied(vc)?, target_of(state, vc.spec.cluster.as_deref()).await?)) }.await {
                Err(readiness) => readiness,
                Ok((applied, (remote, target))) => {
                    if hold(&api, vc).await.map_err(Error::Status)? {
                        return Ok(Action::await_change());
                    }
                    if remote || !state.made.watched_for(Kind::VirtualCluster) {
                        outcome.recheck = Some(UNWATCHED_RECHECK);
                    }
                    let aligned = align_on(vc, &applied, &target, state, &mut status, &mut outcome.repaired).await;
                    match aligned {
                        Ok(readiness) => readiness,
                        Err(err) => write_failed(err, &mut outcome.recheck)?,
                    }
                }
            }
        }
    };
    finish(state, vc, &api, previous.as_ref(), status, outcome).await
}

/// Creates or adopts a VirtualCluster's namespace on its target, makes what it holds what
/// `applied` (the spec as its policies left it) says, and rolls up its Applications.
async fn align_on(
    vc: &VirtualCluster,
    applied: &VirtualCluster,
    target: &Target,
    state: &State,
    status: &mut VirtualClusterStatus,
    repaired: &mut Vec<String>,
) -> Result<Readiness, Error> {
    let namespace = virtual_cluster::namespace_name(vc);
    let existing = Api::<Namespace>::all(target.client.clone())
        .get_opt(&namespace)
        .await
        .map_err(Request::api(format!("reading namespace {namespace}")))?;
    if let Some(refusal) = tenancy::namespace_refusal(vc, existing.as_ref(), &state.protected) {
        return Ok(refusal);
    }
    let uid = vc.uid().unwrap_or_default();
    let objects = virtual_cluster::objects(applied, &uid, virtual_cluster::adopted(existing.as_ref()));
    align_namespace(
        state,
        &target.client,
        &uid,
        &objects.namespace,
        existing.as_ref(),
        repaired,
    )
    .await?;
    if let Some(refusal) = align_guardrails(state, target, &namespace, &uid, &objects, repaired).await? {
        return Ok(refusal);
    }
    status.namespace = Some(namespace);
    let children = &state.children;
    let apps = lookup(
        &children.applications,
        &children.applications_by_virtual_cluster,
        &vc.name_any(),
    );
    Ok(roll_up_children(
        Readiness::Ready,
        "Application",
        &apps,
        |a| format!("{}/{}", a.namespace().unwrap_or_default(), a.name_any()),
        |a| a.status.as_ref().map(|s| &s.common),
    ))
}

/// Applies the namespace when it is missing or lacks what it should carry. Its consent to
/// adoption was checked already: it need not be marked as ours yet.
async fn align_namespace(
    state: &State,
    target: &Client,
    owner: &str,
    wanted: &Namespace,
    existing: Option<&Namespace>,
    repaired: &mut Vec<String>,
) -> Result<(), Error> {
    let drift = match existing {
        None => Drift::Missing,
        Some(there) => {
            let (wanted_value, there_value) = (serde_json::to_value(wanted), serde_json::to_value(there));
            match (wanted_value, there_value) {
                (Ok(w), Ok(t)) => match drift::changed_field(&w, &t) {
                    Some(path) => Drift::Changed(path),
                    None => return Ok(()),
                },
                _ => Drift::Changed(".".into()),
            }
        }
    };
    let (key, desired) = (key_of(owner, wanted), super::applied::fingerprint(wanted));
    apply(target, wanted).await?;
    if state.applied.is_current(&key, desired) {
        repaired.push(Repair { object: wanted, drift }.describe());
    }
    state.applied.record(&key, desired);
    Ok(())
}

/// Makes the guardrails in the namespace what `objects` says: each missing or changed one
/// applied, each the spec dropped deleted. One of their names taken by someone else's object
/// (in an adopted namespace) stops it: why, as the readiness to report.
async fn align_guardrails(
    state: &State,
    target: &Target,
    namespace: &str,
    owner: &str,
    objects: &virtual_cluster::VirtualClusterObjects,
    repaired: &mut Vec<String>,
) -> Result<Option<Readiness>, Error> {
    let within = Some(namespace);
    let quota: Vec<ResourceQuota> = objects.quota.iter().cloned().collect();
    let limits: Vec<LimitRange> = objects.limits.iter().cloned().collect();
    let policy: Vec<NetworkPolicy> = objects.network_policy.iter().cloned().collect();
    if let Some(refusal) = target.keep(state, within, owner, &quota, repaired).await? {
        return Ok(Some(refusal));
    }
    if let Some(refusal) = target.keep(state, within, owner, &limits, repaired).await? {
        return Ok(Some(refusal));
    }
    if let Some(refusal) = target.keep(state, within, owner, &policy, repaired).await? {
        return Ok(Some(refusal));
    }
    Ok(target
        .keep(state, within, owner, &objects.role_bindings, repaired)
        .await?)
}

/// A deleted VirtualCluster: its namespace goes with everything in it or, when it was adopted,
/// only the guardrails and our labels; then the finalizer.
async fn release(vc: &VirtualCluster, state: &State, api: &Api<VirtualCluster>) -> Result<Action, Error> {
    if !has_finalizer(vc, CLEANUP_FINALIZER) {
        return Ok(Action::await_change());
    }
    match target_of(state, vc.spec.cluster.as_deref()).await {
        Ok((_, Target { client: target, .. })) => {
            let name = virtual_cluster::namespace_name(vc);
            let namespaces = Api::<Namespace>::all(target.clone());
            let existing = namespaces
                .get_opt(&name)
                .await
                .map_err(Request::api(format!("reading namespace {name}")))?;
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
    set_finalizer(api, vc, CLEANUP_FINALIZER, false)
        .await
        .map_err(Error::Status)?;
    Ok(Action::await_change())
}
