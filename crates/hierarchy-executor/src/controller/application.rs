//! The Application executor: in its VirtualCluster's namespace, a Deployment and a Service per
//! version, a stable Service and an HTTPRoute splitting traffic as its policies say, repaired
//! when anyone deletes or edits them; versions removed from the spec go. Its readiness is its
//! versions'. Deleted, everything it made goes.

use std::sync::Arc;

use crd_types::hierarchy::{Application, ApplicationStatus, VirtualCluster};
use gateway_api::httproutes::HttpRoute;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::ListParams;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};
use orrery_runtime::{has_finalizer, is_not_found, set_finalizer};

use super::made::Target;
use super::status::{Outcome, finish};
use super::virtual_cluster::target_of;
use super::write::{delete_owned, hold};
use super::{CLEANUP_FINALIZER, Error, NAME, PARENT_NOT_FOUND, Request, State, UNWATCHED_RECHECK, cleanup_blocked};
use crate::plan::application::{self, APP_LABEL};
use crate::plan::status::{Execution, claim, write_failed};
use crate::plan::{Readiness, tenancy, virtual_cluster};
use crate::registry::Kind;

pub(super) async fn reconcile(app: Arc<Application>, state: Arc<State>) -> Result<Action, Error> {
    state.context.reconcile(NAME, app.as_ref(), execute(&app, &state)).await
}

async fn execute(app: &Application, state: &State) -> Result<Action, Error> {
    let api = Api::<Application>::namespaced(state.context.client.clone(), &app.namespace().unwrap_or_default());
    if app.metadata.deletion_timestamp.is_some() {
        state.applied.forget_all(&app.uid().unwrap_or_default());
        return release(app, state, &api).await;
    }
    let previous = app.status.clone();
    let mut status = ApplicationStatus::default();
    let mut outcome = Outcome::new(Readiness::Ready, None);
    let claimed_by = previous.as_ref().and_then(|s| s.common.executor.as_deref());
    outcome.readiness = match claim(
        &state.registry,
        NAME,
        Kind::Application,
        app.spec.executor.as_ref(),
        claimed_by,
    ) {
        Execution::LeaveAlone => return Ok(Action::await_change()),
        Execution::Report(readiness) => readiness,
        Execution::Run(_) => match application_target(state, app).await {
            Err(readiness) => readiness,
            Ok((remote, target, namespace)) => {
                if hold(&api, app).await.map_err(Error::Status)? {
                    return Ok(Action::await_change());
                }
                if remote || !state.made.watched_for(Kind::Application) {
                    outcome.recheck = Some(UNWATCHED_RECHECK);
                }
                match align(app, state, &target, &namespace, &mut status, &mut outcome.repaired).await {
                    Ok(readiness) => readiness,
                    Err(err) => {
                        application::keep_traffic_in_force(&mut status, previous.as_ref());
                        write_failed(err, &mut outcome.recheck)?
                    }
                }
            }
        },
    };
    finish(state, app, &api, previous.as_ref(), status, outcome).await
}

/// The VirtualCluster an Application names and its Cluster's target; or why there are none.
async fn parent_of(state: &State, app: &Application) -> Result<(Arc<VirtualCluster>, bool, Target), Readiness> {
    let parent = app
        .spec
        .virtual_cluster
        .as_deref()
        .and_then(|name| state.primary.virtual_clusters.get(&ObjectRef::new(name)));
    let Some(vc) = parent else {
        return Err(Readiness::NotReady {
            reason: PARENT_NOT_FOUND.into(),
            message: format!(
                "VirtualCluster {} does not exist",
                app.spec.virtual_cluster.as_deref().unwrap_or("(none named)")
            ),
        });
    };
    let (remote, target) = target_of(state, vc.spec.cluster.as_deref()).await?;
    Ok((vc, remote, target))
}

/// The target an Application runs on (whether it is remote) and its VirtualCluster's
/// namespace there, when that VirtualCluster runs the Application's namespace; or why not.
async fn application_target(state: &State, app: &Application) -> Result<(bool, Target, String), Readiness> {
    let (vc, remote, target) = parent_of(state, app).await?;
    let app_namespace = app.namespace().unwrap_or_default();
    if let Some(refusal) = tenancy::application_namespace_refusal(&app_namespace, &vc) {
        return Err(refusal);
    }
    Ok((remote, target, virtual_cluster::namespace_name(&vc)))
}

/// A deleted Application: its objects go, then the finalizer.
async fn release(app: &Application, state: &State, api: &Api<Application>) -> Result<Action, Error> {
    if !has_finalizer(app, CLEANUP_FINALIZER) {
        return Ok(Action::await_change());
    }
    // What it made before a VirtualCluster stopped letting its namespace in goes too.
    match parent_of(state, app).await {
        Ok((vc, _, target)) => {
            let namespace = virtual_cluster::namespace_name(&vc);
            let owner = app.metadata.uid.as_deref().unwrap_or_default();
            delete_owned::<HttpRoute>(&target.client, &namespace, owner).await?;
            delete_owned::<Service>(&target.client, &namespace, owner).await?;
            delete_owned::<Deployment>(&target.client, &namespace, owner).await?;
        }
        Err(why) => {
            if let Some(action) = cleanup_blocked(state, app, why).await {
                return Ok(action);
            }
        }
    }
    set_finalizer(api, app, CLEANUP_FINALIZER, false)
        .await
        .map_err(Error::Status)?;
    Ok(Action::await_change())
}

/// Makes the Application's objects in `namespace` what its spec and traffic say (removed
/// versions pruned), and reports its versions.
async fn align(
    app: &Application,
    state: &State,
    target: &Target,
    namespace: &str,
    status: &mut ApplicationStatus,
    repaired: &mut Vec<String>,
) -> Result<Readiness, Error> {
    let owner = app.metadata.uid.clone().unwrap_or_default();
    let objects = application::objects(app, namespace, &owner);
    let within = Some(namespace);
    if let Some(refusal) = target
        .keep(state, within, &owner, &objects.deployments, repaired)
        .await?
    {
        return Ok(refusal);
    }
    if let Some(refusal) = target.keep(state, within, &owner, &objects.services, repaired).await? {
        return Ok(refusal);
    }
    let route = std::slice::from_ref(&objects.route);
    if let Some(refusal) = target
        .keep(state, within, &owner, route, repaired)
        .await
        .map_err(gateway_hint)?
    {
        return Ok(refusal);
    }
    status.weights = objects.traffic.weights.clone();
    status.matches = objects.traffic.matches.clone();
    let deployments: Vec<Deployment> = target.found(&state.made, within, &owner).await?;
    // Restarts as of this reconcile: a crashing container turns its pod unready, which changes
    // the Deployment, which brings the Application back here. Read from the API server's cache.
    let pods = Api::<Pod>::namespaced(target.client.clone(), namespace)
        .list(
            &ListParams::default()
                .labels(&format!("{APP_LABEL}={}", app.name_any()))
                .match_any(),
        )
        .await
        .map_err(Request::api("listing the Application's pods"))?
        .items;
    status.versions = application::version_statuses(app, &deployments, &pods);
    Ok(application::readiness(&status.versions))
}

/// A route that cannot be applied for want of its kind says where to look.
fn gateway_hint(err: Request) -> Request {
    match err {
        Request::Api { action, source } if is_not_found(&source) => Request::Api {
            action: format!("{action} (are the Gateway API CRDs installed on the Cluster?)"),
            source,
        },
        other => other,
    }
}
