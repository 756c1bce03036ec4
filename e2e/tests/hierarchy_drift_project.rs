//! hierarchy-executor repairs a Project's templated children: a VirtualCluster edited by hand
//! gets its template's value back, an Application deleted by hand is made again, and the
//! Project says so in `status.lastRepair`. Its own test binary (its own control plane): it
//! installs the Gateway API CRDs here, and the drift tests of `hierarchy_drift.rs` start
//! without them.

// A test that cannot proceed should stop right there, with the error.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crd_types::hierarchy::{Application, VirtualCluster};
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams};
use orrery_e2e::pod_simulator::PodSimulator;
use orrery_e2e::{Deadline, InProcess, TestEnv, create, poll_until, wait_gone, wait_ready};
use serde_json::json;

#[tokio::test]
async fn a_projects_templated_children_deleted_or_edited_are_restored() {
    let env = TestEnv::new().await;
    let _kubelet = PodSimulator::start(env.client.clone(), None).await.unwrap();
    let executor = InProcess::start_cluster_wide(
        env.client.clone(),
        hierarchy_executor::controller::NAME,
        hierarchy_executor::run,
    );
    let name = env.namespace.clone();
    let (vc, team) = (format!("{name}-vc"), format!("{name}-team"));
    let projects: Api<crd_types::hierarchy::Project> = Api::all(env.client.clone());
    create(
        &projects,
        json!({"metadata": {"name": name}, "spec": {"templates": {
            "clusters": [{"name": format!("{name}-local"),
                          "spec": {"executor": {"name": "default", "parameters": {"installGatewayAPI": true}}}}],
            "virtualClusters": [{"name": vc, "spec": {"namespace": team, "quota": {"pods": "20"}}}],
            "applications": [{"name": "shop", "namespace": team, "spec": {
                "versions": [{"name": "v1", "image": "shop:1"}], "route": {"gateway": "public"}}}],
        }}}),
    )
    .await;
    wait_ready(&projects, &name).await;
    let last_repair = || async {
        let project = projects.get(&name).await.map_err(|e| e.to_string())?;
        Ok::<_, String>(project.status.and_then(|s| s.last_repair).map(|r| r.message))
    };

    // A templated VirtualCluster's quota edited by hand: the template's value comes back.
    let vcs: Api<VirtualCluster> = Api::all(env.client.clone());
    vcs.patch(
        &vc,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"quota": {"pods": "500"}}})),
    )
    .await
    .unwrap();
    poll_until("the VirtualCluster's quota restored", Deadline::default(), || async {
        let quota = vcs.get(&vc).await.map_err(|e| e.to_string())?.spec.quota;
        let report = last_repair().await?;
        match report {
            Some(message) if quota["pods"] == "20" => Ok(message),
            other => Err(format!("quota {quota:?}, lastRepair {other:?}")),
        }
    })
    .await;
    assert_eq!(
        last_repair().await.unwrap().as_deref(),
        Some(format!("restored VirtualCluster {vc} (spec.quota.pods changed)").as_str())
    );

    // A templated Application deleted: once its finalizer has cleaned up, it is made again.
    let apps: Api<Application> = Api::namespaced(env.client.clone(), &team);
    let first = apps.get("shop").await.unwrap().metadata.uid;
    apps.delete("shop", &DeleteParams::default()).await.unwrap();
    poll_until("the Application made again", Deadline::default(), || async {
        let again = apps.get_opt("shop").await.map_err(|e| e.to_string())?;
        let report = last_repair().await?.unwrap_or_default();
        match again {
            Some(app) if app.metadata.uid != first && report.contains("Application shop (deleted)") => Ok(()),
            other => Err(format!(
                "uid {:?}, lastRepair {report:?}",
                other.map(|a| a.metadata.uid)
            )),
        }
    })
    .await;
    wait_ready(&projects, &name).await;

    projects.delete(&name, &DeleteParams::default()).await.unwrap();
    wait_gone(&projects, &name).await;
    executor.stop().await;
}
