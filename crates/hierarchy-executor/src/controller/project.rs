//! The Project executor: applies the children its templates describe (repairing one deleted
//! or edited, pruning one no longer described) and rolls its Clusters' readiness up.

use std::sync::Arc;
use std::time::Duration;

use crd_types::hierarchy::{HierarchyStatus, Project};
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Resource, ResourceExt};
use orrery_runtime::is_not_found;

use super::index::lookup;
use super::status::{Outcome, finish};
use super::write::{align, prune};
use super::{Error, NAME, Request, State, roll_up_children};
use crate::plan::status::{Execution, claim};
use crate::plan::{Readiness, as_applied, project, tenancy};
use crate::registry::Kind;

/// A Project whose Applications wait for their VirtualCluster's namespace.
const WAITING_FOR_NAMESPACES: &str = "WaitingForNamespaces";
/// How soon a Project waiting for a namespace looks again.
const NAMESPACE_RECHECK: Duration = Duration::from_secs(5);

pub(super) async fn reconcile(project: Arc<Project>, state: Arc<State>) -> Result<Action, Error> {
    state
        .context
        .reconcile(NAME, project.as_ref(), execute(&project, &state))
        .await
}

async fn execute(project: &Project, state: &State) -> Result<Action, Error> {
    if project.metadata.deletion_timestamp.is_some() {
        // The garbage collector is removing its children: making them again would fight it.
        state.applied.forget_all(&project.uid().unwrap_or_default());
        return Ok(Action::await_change());
    }
    let previous = project.status.clone();
    let claimed_by = previous.as_ref().and_then(|s| s.executor.as_deref());
    let mut outcome = Outcome::new(Readiness::Ready, None);
    outcome.readiness = match claim(
        &state.registry,
        NAME,
        Kind::Project,
        project.spec.executor.as_ref(),
        claimed_by,
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
                None => run_templates(state, project, &children, &mut outcome.repaired).await?,
            },
        },
    };
    // The Project hears of its VirtualClusters, not of the namespaces they make: while an
    // Application waits for one, look again rather than count on an event.
    if matches!(&outcome.readiness, Readiness::NotReady { reason, .. } if reason == WAITING_FOR_NAMESPACES) {
        outcome.recheck = Some(NAMESPACE_RECHECK);
    }
    let api = Api::all(state.context.client.clone());
    finish(
        state,
        project,
        &api,
        previous.as_ref(),
        HierarchyStatus::default(),
        outcome,
    )
    .await
}

/// Makes the Project's templated children what its templates say, and rolls its Clusters'
/// readiness up into its own.
async fn run_templates(
    state: &State,
    project: &Project,
    children: &project::ProjectChildren,
    repaired: &mut Vec<String>,
) -> Result<Readiness, Error> {
    let waiting = match align_children(state, project, children, repaired).await? {
        Ok(waiting) => waiting,
        Err(refusal) => return Ok(refusal),
    };
    let own = if waiting.is_empty() {
        Readiness::Ready
    } else {
        Readiness::NotReady {
            reason: WAITING_FOR_NAMESPACES.into(),
            message: format!(
                "Applications wait for their VirtualCluster's namespace: {}",
                waiting.join(", ")
            ),
        }
    };
    let clusters = lookup(
        &state.children.clusters,
        &state.children.clusters_by_project,
        &project.name_any(),
    );
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
    let primary = &state.primary;
    (children.clusters.iter())
        .find_map(|c| check(&primary.clusters, c, owner))
        .or_else(|| (children.virtual_clusters.iter()).find_map(|v| check(&primary.virtual_clusters, v, owner)))
        .or_else(|| (children.applications.iter()).find_map(|a| check(&primary.applications, a, owner)))
}

/// Applies the templates' children that are missing or changed, and prunes those no longer
/// described. Applications whose namespace does not exist yet (their VirtualCluster makes it)
/// wait: their `namespace/name`s. A child of the same name that is someone else's stops it:
/// why, as the readiness to report.
async fn align_children(
    state: &State,
    project: &Project,
    children: &project::ProjectChildren,
    repaired: &mut Vec<String>,
) -> Result<Result<Vec<String>, Readiness>, Error> {
    let uid = project.uid().unwrap_or_default();
    let (client, applied, primary) = (&state.context.client, &state.applied, &state.primary);
    let clusters = owned_copies(&primary.clusters, &primary.templated_clusters, &uid);
    let virtual_clusters = owned_copies(&primary.virtual_clusters, &primary.templated_virtual_clusters, &uid);
    let applications = owned_copies(&primary.applications, &primary.templated_applications, &uid);
    let templated = |result: Result<_, Request>| result.map_err(Error::Templated);
    if let Some(refusal) = templated(align(client, applied, &uid, &children.clusters, &clusters, repaired).await)? {
        return Ok(Err(refusal));
    }
    let wanted = &children.virtual_clusters;
    if let Some(refusal) = templated(align(client, applied, &uid, wanted, &virtual_clusters, repaired).await)? {
        return Ok(Err(refusal));
    }
    let mut waiting = Vec::new();
    for app in &children.applications {
        match align(
            client,
            applied,
            &uid,
            std::slice::from_ref(app),
            &applications,
            repaired,
        )
        .await
        {
            Ok(None) => {}
            Ok(Some(refusal)) => return Ok(Err(refusal)),
            Err(Request::Api { source, .. }) if is_not_found(&source) => {
                waiting.push(format!("{}/{}", app.namespace().unwrap_or_default(), app.name_any()));
            }
            Err(err) => return Err(Error::Templated(err)),
        }
    }
    prune(client, &children.clusters, &clusters)
        .await
        .map_err(Error::Templated)?;
    let wanted = &children.virtual_clusters;
    prune(client, wanted, &virtual_clusters)
        .await
        .map_err(Error::Templated)?;
    let wanted = &children.applications;
    prune(client, wanted, &applications).await.map_err(Error::Templated)?;
    Ok(Ok(waiting))
}

/// Copies of the objects of `store` that `index` files under `owner`.
fn owned_copies<K>(store: &Store<K>, index: &super::index::Index<K>, owner: &str) -> Vec<K>
where
    K: Resource<DynamicType = ()> + Clone,
{
    lookup(store, index, owner).iter().map(|o| o.as_ref().clone()).collect()
}
