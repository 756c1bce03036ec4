//! Watch expiry: the controllers cut off from the API server (by the fault proxy) while work
//! arrives, etcd compacted meanwhile, then let back. Served from etcd (no watch cache), every
//! watch they resume answers 410 Gone: they must list again and still do everything exactly
//! once. A control plane of its own.

// A test that cannot proceed should stop right there, with the error.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crd_types::workflow::{Ignitor, Task, TaskRun, TaskRunPhase};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{ListParams, PostParams};
use kube::{Api, ResourceExt};
use orrery_e2e::fault_proxy::FaultProxy;
use orrery_e2e::pod_simulator::PodSimulator;
use orrery_e2e::{ControlPlane, Deadline, InProcess, poll_until};
use serde_json::{Value, json};

const NAMESPACE: &str = "expiry";

fn task(name: &str, ignitor: &str) -> Task {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "startOnIgnition": [ignitor],
            "template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "main", "image": "busybox"}]}}
        }
    }))
    .unwrap()
}

fn object<K: serde::de::DeserializeOwned>(value: Value) -> K {
    serde_json::from_value(value).unwrap()
}

/// The runs of `task`, with their phases.
async fn runs_of(runs: &Api<TaskRun>, task: &str) -> Vec<Option<TaskRunPhase>> {
    runs.list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|r| r.spec.task_ref.name == task)
        .map(|r| r.status.and_then(|s| s.phase))
        .collect()
}

async fn wait_one_succeeded(runs: &Api<TaskRun>, task: &str) {
    poll_until(
        &format!("one Succeeded run of {task}"),
        Deadline(Duration::from_secs(90)),
        || async {
            let phases = runs_of(runs, task).await;
            if phases == [Some(TaskRunPhase::Succeeded)] {
                Ok(())
            } else {
                Err(format!("runs {phases:?}"))
            }
        },
    )
    .await;
}

/// Work named `name` arrives: Task `name` starting on Ignitor `now-name`, which fires NOW, and
/// a ConfigMap `name`.
async fn work_arrives(admin: &kube::Client, name: &str) {
    let ignitor = format!("now-{name}");
    Api::<Task>::namespaced(admin.clone(), NAMESPACE)
        .create(&PostParams::default(), &task(name, &ignitor))
        .await
        .unwrap();
    Api::<Ignitor>::namespaced(admin.clone(), NAMESPACE)
        .create(
            &PostParams::default(),
            &object(json!({"metadata": {"name": ignitor}, "spec": {"scheduled": "NOW"}})),
        )
        .await
        .unwrap();
    Api::<ConfigMap>::namespaced(admin.clone(), NAMESPACE)
        .create(&PostParams::default(), &object(json!({"metadata": {"name": name}})))
        .await
        .unwrap();
}

async fn wait_cached(cache: &kube::runtime::reflector::Store<ConfigMap>, name: &str) {
    poll_until(
        &format!("the watch to have ConfigMap {name}"),
        Deadline(Duration::from_secs(60)),
        || async {
            cache
                .state()
                .iter()
                .any(|c| c.name_any() == name)
                .then_some(())
                .ok_or_else(|| "not yet".to_owned())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_etcd_compaction_resumed_watches_list_again_and_nothing_is_lost_or_doubled() {
    let plane = Arc::new(
        tokio::task::spawn_blocking(ControlPlane::start_without_watch_cache)
            .await
            .unwrap()
            .unwrap(),
    );
    plane.install_crds_blocking().unwrap();
    let admin = plane.client().await;
    let _kubelet = PodSimulator::start(admin.clone(), None).await.unwrap();
    Api::<Namespace>::all(admin.clone())
        .create(
            &PostParams::default(),
            &object(json!({"metadata": {"name": NAMESPACE}})),
        )
        .await
        .unwrap();

    // The controllers, and a watch of ConfigMaps that shows what they go through, reach the
    // API server through the proxy.
    let proxy = FaultProxy::start(plane.config(), &plane.dir().join("toxiproxy.log"))
        .await
        .unwrap();
    let through_proxy = kube::Client::try_from(proxy.config_for(plane.config()).unwrap()).unwrap();
    let scheduler = InProcess::start_cluster_wide(through_proxy.clone(), "ignitor-scheduler", ignitor_scheduler::run);
    let workflow = InProcess::start_cluster_wide(through_proxy.clone(), "task-workflow", task_workflow::run);
    let configmaps: Api<ConfigMap> = Api::namespaced(through_proxy.clone(), NAMESPACE);
    let config = orrery_runtime::watcher_config(&configmaps).await;
    let (cache, watched) =
        orrery_runtime::watched_and_cached(&orrery_runtime::Readiness::default(), configmaps, config);
    let expired = Arc::new(Mutex::new(0_usize));
    let watching = tokio::spawn({
        let expired = expired.clone();
        async move {
            let mut watched = std::pin::pin!(watched);
            while let Some(event) = watched.next().await {
                if let Err(error) = event
                    && error.to_string().contains("too old")
                {
                    *expired.lock().unwrap() += 1;
                }
            }
        }
    });

    let runs: Api<TaskRun> = Api::namespaced(admin.clone(), NAMESPACE);
    work_arrives(&admin, "before").await;
    wait_one_succeeded(&runs, "before").await;
    wait_cached(&cache, "before").await;

    // Cut off: work arrives, and the revisions they last saw are compacted away.
    proxy.set_enabled(false).await.unwrap();
    work_arrives(&admin, "during").await;
    let revision = plane.compact_etcd().await.unwrap();
    eprintln!("etcd compacted at revision {revision} while the controllers were cut off");
    proxy.set_enabled(true).await.unwrap();

    wait_one_succeeded(&runs, "during").await;
    wait_cached(&cache, "during").await;
    let expired = *expired.lock().unwrap();
    assert!(
        expired > 0,
        "no resumed watch was answered 410: nothing here was tested"
    );
    assert_eq!(
        runs_of(&runs, "before").await,
        [Some(TaskRunPhase::Succeeded)],
        "the run from before the cut ran once"
    );
    eprintln!("410s seen by the ConfigMap watch: {expired}");
    watching.abort();
    scheduler.stop().await;
    workflow.stop().await;
}
