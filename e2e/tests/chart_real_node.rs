//! The Helm chart on the real node, as a user installs it: the controllers' own images (from
//! `images/build.sh`, imported, never pulled), `helm install --wait`, every Deployment 2/2 Ready
//! with the kubelet probing `/readyz` and `/healthz`, one leader per controller, and a leader's
//! pod deleted handing its Lease to the other replica, which then acts. A test binary of its
//! own: the chart's controllers watch every namespace, so no other test shares their node.

// A test that cannot proceed should stop right there, with the error.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use crd_types::workflow::{Task, TaskRef, TaskRun, TaskRunPhase, TaskRunSpec};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, ResourceExt};
use orrery_e2e::helm::{self, CONTROLLERS};
use orrery_e2e::node::BUSYBOX_IMAGE;
use orrery_e2e::{Deadline, TestEnv, poll_until};
use serde_json::json;

#[tokio::test]
async fn the_chart_runs_on_the_real_node_and_a_deleted_leader_hands_over() {
    let Some(images) = helm::controller_images() else {
        return;
    };
    let Some(env) = TestEnv::with_node().await else { return };
    let namespace = helm::NAMESPACE;
    let kubeconfig = env.plane().kubeconfig_path();
    let started = Instant::now();
    helm::install_on_node(env.plane(), &env.client, &images).await.unwrap();
    let deployments = Api::<Deployment>::namespaced(env.client.clone(), namespace);
    let pods = Api::<Pod>::namespaced(env.client.clone(), namespace);
    eprintln!(
        "images imported and helm install --wait finished in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    poll_until(
        "every Deployment 2/2 Ready (the kubelet probing /readyz)",
        Deadline(Duration::from_secs(180)),
        || async {
            let mut waiting = Vec::new();
            for (controller, _) in CONTROLLERS {
                let deployment = deployments.get(controller).await.map_err(|e| e.to_string())?;
                let ready = deployment.status.as_ref().and_then(|s| s.ready_replicas);
                if ready != Some(2) {
                    waiting.push(format!("{controller}: {ready:?} ready"));
                }
            }
            if waiting.is_empty() {
                return Ok(());
            }
            let list = pods.list(&ListParams::default()).await.map_err(|e| e.to_string())?;
            let states: Vec<String> = list
                .items
                .iter()
                .map(|p| {
                    let status = p.status.clone().unwrap_or_default();
                    format!("{}: {:?}", p.name_any(), status.container_statuses)
                })
                .collect();
            Err(format!("{waiting:?}; pods: {states:?}"))
        },
    )
    .await;
    eprintln!(
        "every Deployment 2/2 Ready {:.1}s after the images' import started",
        started.elapsed().as_secs_f64()
    );
    // The kubelet probed them: every container Ready, none restarted by its liveness probe.
    for pod in pods.list(&ListParams::default()).await.unwrap() {
        let statuses = pod.status.unwrap().container_statuses.unwrap();
        assert!(statuses[0].ready, "{}", pod.metadata.name.unwrap_or_default());
        assert_eq!(statuses[0].restart_count, 0);
    }

    // Exactly one replica of each leads: the Lease names one of its two pods.
    let leases = Api::<Lease>::namespaced(env.client.clone(), namespace);
    let holder = |controller: &'static str| {
        let leases = leases.clone();
        async move {
            leases
                .get_opt(controller)
                .await
                .ok()
                .flatten()
                .and_then(|l| l.spec)
                .and_then(|s| s.holder_identity)
        }
    };
    for (controller, _) in CONTROLLERS {
        let replicas: Vec<String> = pods
            .list(&ListParams::default().labels(&format!("app.kubernetes.io/name={controller}")))
            .await
            .unwrap()
            .items
            .iter()
            .map(|p| p.name_any())
            .collect();
        let leader = poll_until(
            &format!("{controller}'s Lease to be held"),
            Deadline::default(),
            || async { holder(controller).await.ok_or_else(|| "no holder".to_owned()) },
        )
        .await;
        assert!(replicas.contains(&leader), "{controller}: {leader} not in {replicas:?}");
    }

    // The leading task-workflow pod goes; the other replica takes the Lease and runs a Task.
    let leader = holder("task-workflow").await.unwrap();
    let deleted = Instant::now();
    pods.delete(&leader, &DeleteParams::default()).await.unwrap();
    let successor = poll_until(
        "another task-workflow replica to hold the Lease",
        Deadline(Duration::from_secs(90)),
        || async {
            match holder("task-workflow").await {
                Some(h) if h != leader => Ok(h),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    let takeover = deleted.elapsed();
    eprintln!(
        "task-workflow's leader {leader} deleted; {successor} took the Lease {:.1}s later",
        takeover.as_secs_f64()
    );
    let tasks = env.namespaced::<Task>();
    let task: Task = serde_json::from_value(json!({
        "apiVersion": "workflow.orrery.dev/v1alpha1", "kind": "Task", "metadata": {"name": "after-takeover"},
        "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "main",
            "image": BUSYBOX_IMAGE, "command": ["sh", "-c", "printf 'new leader' > /dev/termination-log"]}]}}}
    }))
    .unwrap();
    tasks.create(&PostParams::default(), &task).await.unwrap();
    let runs = env.namespaced::<TaskRun>();
    runs.create(
        &PostParams::default(),
        &TaskRun::new(
            "after-takeover-1",
            TaskRunSpec {
                task_ref: TaskRef {
                    name: "after-takeover".into(),
                },
                initiator: None,
                data: None,
                joined: vec![],
            },
        ),
    )
    .await
    .unwrap();
    let run = poll_until(
        "the new leader to run the Task",
        Deadline(Duration::from_secs(90)),
        || async {
            let run = runs.get("after-takeover-1").await.map_err(|e| e.to_string())?;
            match run.status.as_ref().and_then(|s| s.phase) {
                Some(TaskRunPhase::Succeeded | TaskRunPhase::Failed) => Ok(run),
                _ => Err(format!("{:?}", run.status)),
            }
        },
    )
    .await;
    let status = run.status.unwrap();
    assert_eq!(
        (status.phase, status.message.as_deref()),
        (Some(TaskRunPhase::Succeeded), Some("new leader"))
    );

    // Uninstalling leaves the CRDs and users' objects.
    let output = std::process::Command::new(helm::binary().unwrap())
        .args(["uninstall", "orrery", "--namespace", namespace, "--wait"])
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "helm uninstall: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(tasks.get_opt("after-takeover").await.unwrap().is_some());
    assert!(runs.get_opt("after-takeover-1").await.unwrap().is_some());
    let _ = Api::<Namespace>::all(env.client.clone())
        .delete(namespace, &DeleteParams::default())
        .await;
}
