//! The Cluster executor: reaches the cluster (this one, or a remote one through its kubeconfig
//! Secret), reports its version and Gateway API CRDs (installing them when asked), and rolls
//! its VirtualClusters' readiness up. A deleted Cluster stays until they have cleaned up.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crd_types::hierarchy::{Cluster, ClusterStatus, VirtualCluster};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Api, Client, ResourceExt};
use orrery_runtime::{has_finalizer, set_finalizer};

use super::index::lookup;
use super::status::{Outcome, finish};
use super::write::hold;
use super::{CLEANUP_FINALIZER, Error, NAME, State, UNWATCHED_RECHECK, roll_up_children};
use crate::gateway::{self, HTTPROUTE_CRD};
use crate::plan::Readiness;
use crate::plan::status::{Execution, claim};
use crate::registry::{INSTALL_GATEWAY_API, Kind, flag};

/// How often a deleted Cluster looks again for VirtualClusters still cleaning up through it.
const CLEANUP_RECHECK: Duration = Duration::from_secs(2);

/// A target cluster's last inspection, reused for [`UNWATCHED_RECHECK`]: every change of one of
/// its VirtualClusters runs a Cluster again, and what the cluster answers changes rarely.
pub(super) struct Inspection {
    at: Instant,
    install: bool,
    found: ClusterStatus,
    readiness: Readiness,
}

pub(super) async fn reconcile(cluster: Arc<Cluster>, state: Arc<State>) -> Result<Action, Error> {
    state
        .context
        .reconcile(NAME, cluster.as_ref(), execute(&cluster, &state))
        .await
}

async fn execute(cluster: &Cluster, state: &State) -> Result<Action, Error> {
    let api = Api::<Cluster>::all(state.context.client.clone());
    if cluster.metadata.deletion_timestamp.is_some() {
        let uid = cluster.uid().unwrap_or_default();
        state.inspections.lock().remove(&uid);
        state.applied.forget(&uid);
        return release_cluster(cluster, state, &api).await;
    }
    let previous = cluster.status.clone();
    let mut status = ClusterStatus::default();
    let mut recheck = None;
    let readiness = match claim(
        &state.registry,
        NAME,
        Kind::Cluster,
        cluster.spec.executor.as_ref(),
        previous.as_ref().and_then(|s| s.common.executor.as_deref()),
    ) {
        Execution::LeaveAlone => return Ok(Action::await_change()),
        Execution::Report(readiness) => readiness,
        Execution::Run(parameters) => {
            if hold(&api, cluster).await.map_err(Error::Status)? {
                return Ok(Action::await_change());
            }
            if cluster.spec.kubeconfig_secret_ref.is_some() {
                recheck = Some(UNWATCHED_RECHECK);
            }
            match state.targets.target_for(cluster).await {
                Err(readiness) => readiness,
                Ok(target) => {
                    let install = flag(&parameters, INSTALL_GATEWAY_API);
                    let own = inspect_recently(state, cluster, &target.client, install, &mut status).await;
                    // Nothing watched says when an API server answers again or someone
                    // installs the missing CRDs: a Cluster not Ready on its own account looks
                    // again. (Its failed inspection may also be a reused one, from before the
                    // fault ended.)
                    if own != Readiness::Ready {
                        recheck = Some(UNWATCHED_RECHECK);
                    }
                    let vcs = virtual_clusters_of(state, cluster);
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
    finish(
        state,
        cluster,
        &api,
        previous.as_ref(),
        status,
        Outcome::new(readiness, recheck),
    )
    .await
}

/// A deleted Cluster stays until no VirtualCluster needs it to clean up.
async fn release_cluster(cluster: &Cluster, state: &State, api: &Api<Cluster>) -> Result<Action, Error> {
    let cleaning = virtual_clusters_of(state, cluster)
        .iter()
        .any(|v| has_finalizer(v.as_ref(), CLEANUP_FINALIZER));
    if cleaning {
        return Ok(Action::requeue(CLEANUP_RECHECK));
    }
    set_finalizer(api, cluster, CLEANUP_FINALIZER, false)
        .await
        .map_err(Error::Status)?;
    Ok(Action::await_change())
}

/// [`inspect_cluster`], or its answer if it was asked the same less than [`UNWATCHED_RECHECK`] ago.
async fn inspect_recently(
    state: &State,
    cluster: &Cluster,
    target: &Client,
    install: bool,
    status: &mut ClusterStatus,
) -> Readiness {
    let uid = cluster.uid().unwrap_or_default();
    {
        let inspections = state.inspections.lock();
        if let Some(last) = inspections.get(&uid)
            && last.install == install
            && last.at.elapsed() < UNWATCHED_RECHECK
        {
            *status = last.found.clone();
            return last.readiness.clone();
        }
    }
    let readiness = inspect_cluster(target, install, status).await;
    let inspection = Inspection {
        at: Instant::now(),
        install,
        found: status.clone(),
        readiness: readiness.clone(),
    };
    state.inspections.lock().insert(uid, inspection);
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

/// The VirtualClusters naming `cluster`, as its roll-up reads them.
fn virtual_clusters_of(state: &State, cluster: &Cluster) -> Vec<Arc<VirtualCluster>> {
    let children = &state.children;
    lookup(
        &children.virtual_clusters,
        &children.virtual_clusters_by_cluster,
        &cluster.name_any(),
    )
}
