//! Every example in `examples/` applied to the real control plane, with every controller
//! running cluster-wide as deployed (this test binary has the control plane to itself), the
//! pod simulator as the kubelet and the KubeStellar simulator as KubeStellar: each does what
//! its comment says, so none can rot.

// A test that cannot proceed should stop right there, with the error.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use crd_types::common::{CONDITION_READY, find_condition};
use crd_types::hierarchy::{Application, Project};
use crd_types::placement::StagedBindingPolicy;
use crd_types::workflow::{TaskRun, TaskRunPhase};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::ListParams;
use orrery_e2e::demo::{apply_examples, example_objects, progress};
use orrery_e2e::kubestellar_simulator::KubeStellarSimulator;
use orrery_e2e::pod_simulator::PodSimulator;
use orrery_e2e::{Deadline, InProcess, TestEnv, poll_until};

#[tokio::test]
async fn every_example_applies_and_does_what_it_says() {
    let env = TestEnv::new().await;
    let client = env.client.clone();
    let _kubelet = PodSimulator::start(client.clone(), None).await.unwrap();
    let _kubestellar = KubeStellarSimulator::start_without_kubelets(client.clone())
        .await
        .unwrap();
    let controllers = [
        InProcess::start_cluster_wide(
            client.clone(),
            ignitor_scheduler::controller::NAME,
            ignitor_scheduler::run,
        ),
        InProcess::start_cluster_wide(client.clone(), task_workflow::controller::NAME, task_workflow::run),
        InProcess::start_cluster_wide(client.clone(), staged_binding::controller::NAME, staged_binding::run),
        InProcess::start_cluster_wide(
            client.clone(),
            hierarchy_executor::controller::NAME,
            hierarchy_executor::run,
        ),
        InProcess::start_cluster_wide(client.clone(), policy_runner::NAME, policy_runner::controller::run),
        InProcess::start_cluster_wide(client.clone(), lambda_executor::NAME, lambda_executor::run),
    ];

    let applied = apply_examples(&client).await.unwrap();
    assert_eq!(applied.len(), example_objects().unwrap().len());
    for kind in [
        "Ignitor/ignitor1",
        "Task/task2",
        "StagedBindingPolicy/",
        "Project/shop",
        "Project/notes",
    ] {
        assert!(applied.iter().any(|a| a.starts_with(kind)), "{kind} in {applied:?}");
    }

    // The workflow: ignitor1's data reaches task1, whose message reaches task2 with its name.
    let runs: Api<TaskRun> = Api::namespaced(client.clone(), "default");
    poll_until("task2 to report what task1 passed on", Deadline::default(), || async {
        let list = runs.list(&ListParams::default()).await.map_err(|e| e.to_string())?;
        let messages: Vec<String> = list
            .items
            .iter()
            .filter(|r| r.spec.task_ref.name == "task2")
            .filter_map(|r| r.status.clone())
            .filter(|s| s.phase == Some(TaskRunPhase::Succeeded))
            .filter_map(|s| s.message)
            .collect();
        if messages
            .iter()
            .any(|m| m == "task2 got [task1 saw: first run] from task1")
        {
            Ok(())
        } else {
            let runs: Vec<String> = list
                .items
                .iter()
                .map(|r| {
                    let phase = r.status.as_ref().and_then(|s| s.phase);
                    format!(
                        "{} of {}: {phase:?}",
                        r.metadata.name.as_deref().unwrap_or(""),
                        r.spec.task_ref.name
                    )
                })
                .collect();
            Err(format!("task2's messages so far: {messages:?}; runs: {runs:?}"))
        }
    })
    .await;

    // The staged placement: dev, then prod once the dev cluster runs its copy of the workload
    // ready and the deployments-aggregator counts it.
    let policies = Api::<StagedBindingPolicy>::all(client.clone());
    poll_until("the nginx rollout to reach prod", Deadline::default(), || async {
        let status = policies
            .get("nginx-staged-bindingpolicy")
            .await
            .map_err(|e| e.to_string())?
            .status
            .unwrap_or_default();
        let history: Vec<(String, String)> = status
            .history
            .iter()
            .map(|h| (h.name.clone(), h.outcome.clone()))
            .collect();
        if status.active_stage.as_deref() == Some("prod") && history.first().is_some_and(|h| h.1 == "Fulfilled") {
            Ok(())
        } else {
            Err(format!("{:?} {history:?}", status.active_stage))
        }
    })
    .await;

    // The Project tree: Ready from top to bottom, and the canary has moved traffic to v2.
    let projects = Api::<Project>::all(client.clone());
    let apps: Api<Application> = Api::namespaced(client.clone(), "shop");
    poll_until(
        "the shop Project to be Ready and its canary to take a step",
        Deadline(Duration::from_secs(120)),
        || async {
            let project = projects.get("shop").await.map_err(|e| e.to_string())?;
            let ready = project
                .status
                .as_ref()
                .and_then(|s| find_condition(&s.conditions, CONDITION_READY))
                .map(|c| (c.status.clone(), c.message.clone()));
            let app = apps.get("storefront").await.map_err(|e| e.to_string())?;
            let weights = app.status.map(|s| s.weights).unwrap_or_default();
            let canary = weights.iter().find(|w| w.version == "v2").map_or(0, |w| w.weight);
            if ready.as_ref().is_some_and(|r| r.0 == "True") && canary >= 20 {
                Ok(())
            } else {
                Err(format!("Ready {ready:?}, weights {weights:?}"))
            }
        },
    )
    .await;

    // The template executor's release notes, and the notes Project Ready through them.
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), "notes");
    let notes_apps: Api<Application> = Api::namespaced(client.clone(), "notes");
    poll_until(
        "the release notes rendered and the notes Project Ready",
        Deadline(Duration::from_secs(120)),
        || async {
            let Some(notes) = config_maps.get_opt("release-notes").await.map_err(|e| e.to_string())? else {
                let app = notes_apps.get_opt("release-notes").await.map_err(|e| e.to_string())?;
                let ready = app
                    .and_then(|a| a.status)
                    .and_then(|s| find_condition(&s.common.conditions, CONDITION_READY).cloned());
                return Err(format!("no release notes yet; the Application's Ready: {ready:?}"));
            };
            let latest = notes.data.unwrap_or_default().get("latest").cloned();
            let project = projects.get("notes").await.map_err(|e| e.to_string())?;
            let ready = project
                .status
                .as_ref()
                .and_then(|s| find_condition(&s.conditions, CONDITION_READY))
                .map(|c| (c.status.clone(), c.message.clone()));
            if latest.as_deref() == Some("v2 runs busybox:1.37") && ready.as_ref().is_some_and(|r| r.0 == "True") {
                Ok(())
            } else {
                Err(format!("latest {latest:?}, Ready {ready:?}"))
            }
        },
    )
    .await;

    // The demo's live view reads all three.
    let view = progress(&client).await.unwrap();
    for expected in [
        "task    task2",
        "nginx-staged-bindingpolicy: active stage prod",
        "Project/shop",
        "application storefront: weights v1",
    ] {
        assert!(view.contains(expected), "{expected:?} in\n{view}");
    }

    for controller in controllers {
        controller.stop().await;
    }
}
