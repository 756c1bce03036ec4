//! The control plane itself: RBAC is really on, the garbage collector really runs, and the pod
//! simulator completes pods the way a kubelet reports them.

// A test that cannot proceed should stop right there, with the error.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client, ResourceExt};
use orrery_e2e::pod_simulator::{self, PodSimulator};
use orrery_e2e::{Deadline, TestEnv, poll_until};
use serde_json::json;

fn from_json<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> T {
    serde_json::from_value(value).expect("fixture")
}

#[tokio::test]
async fn rbac_is_on_an_unbound_service_account_is_denied_until_granted() {
    let env = TestEnv::new().await;
    let user = format!("system:serviceaccount:{}:nobody", env.namespace);
    let config = env.impersonating(&user, &["system:serviceaccounts", "system:authenticated"]);
    let as_nobody: Api<crd_types::Task> = Api::namespaced(Client::try_from(config.clone()).unwrap(), &env.namespace);

    let denied = as_nobody
        .list(&ListParams::default())
        .await
        .expect_err("no RBAC, no access");
    assert!(matches!(&denied, kube::Error::Api(s) if s.code == 403), "{denied}");

    let role: Role = from_json(json!({
        "metadata": {"name": "task-reader"},
        "rules": [{"apiGroups": ["workflow.orrery.dev"], "resources": ["tasks"], "verbs": ["list"]}]
    }));
    env.namespaced::<Role>()
        .create(&PostParams::default(), &role)
        .await
        .unwrap();
    let binding: RoleBinding = from_json(json!({
        "metadata": {"name": "task-reader"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "task-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "nobody", "namespace": env.namespace}]
    }));
    env.namespaced::<RoleBinding>()
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();

    poll_until("the Role to take effect", Deadline::default(), || async {
        as_nobody
            .list(&ListParams::default())
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
    .await;
    let still_denied = as_nobody
        .delete("anything", &DeleteParams::default())
        .await
        .expect_err("list was granted, delete was not");
    assert!(
        matches!(&still_denied, kube::Error::Api(s) if s.code == 403),
        "{still_denied}"
    );
}

#[tokio::test]
async fn the_garbage_collector_deletes_dependents_of_a_deleted_owner() {
    let env = TestEnv::new().await;
    let configmaps = env.namespaced::<ConfigMap>();
    let owner = configmaps
        .create(
            &PostParams::default(),
            &from_json(json!({"metadata": {"name": "owner"}})),
        )
        .await
        .unwrap();
    let dependent: ConfigMap = from_json(json!({"metadata": {"name": "dependent", "ownerReferences": [{
        "apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.uid().unwrap()
    }]}}));
    configmaps.create(&PostParams::default(), &dependent).await.unwrap();
    configmaps.delete("owner", &DeleteParams::default()).await.unwrap();
    poll_until("the dependent to be garbage-collected", Deadline::default(), || async {
        match configmaps.get_opt("dependent").await {
            Ok(None) => Ok(()),
            Ok(Some(_)) => Err("still there".into()),
            Err(e) => Err(e.to_string()),
        }
    })
    .await;
}

fn run_to_completion_pod(name: &str, annotations: serde_json::Value) -> Pod {
    from_json(json!({
        "metadata": {"name": name, "annotations": annotations},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "main", "image": "busybox", "env": [{"name": "ORCA_DATA", "value": "from-upstream"}]}]
        }
    }))
}

async fn wait_for_phase(pods: &Api<Pod>, name: &str, phase: &str) -> Pod {
    poll_until(&format!("pod {name} to be {phase}"), Deadline::default(), || async {
        let pod = pods.get(name).await.map_err(|e| e.to_string())?;
        let current = pod.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default();
        if current == phase {
            Ok(pod)
        } else {
            Err(format!("phase {current:?}"))
        }
    })
    .await
}

fn terminated(pod: &Pod) -> k8s_openapi::api::core::v1::ContainerStateTerminated {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.terminated.clone())
        .expect("a terminated container state")
}

#[tokio::test]
async fn the_pod_simulator_completes_a_pod_with_its_termination_message() {
    let env = TestEnv::new().await;
    let _simulator = PodSimulator::start(env.client.clone(), Some(&env.namespace))
        .await
        .unwrap();
    let pods = env.namespaced::<Pod>();

    pods.create(
        &PostParams::default(),
        &run_to_completion_pod("ok", json!({pod_simulator::TERMINATION_MESSAGE: "got $(ORCA_DATA)"})),
    )
    .await
    .unwrap();
    let ok = wait_for_phase(&pods, "ok", "Succeeded").await;
    let state = terminated(&ok);
    assert_eq!(state.exit_code, 0);
    assert_eq!(state.reason.as_deref(), Some("Completed"));
    assert_eq!(state.message.as_deref(), Some("got from-upstream"));
    assert_eq!(
        ok.spec.as_ref().and_then(|s| s.node_name.as_deref()),
        Some(pod_simulator::NODE_NAME)
    );

    pods.create(
        &PostParams::default(),
        &run_to_completion_pod(
            "bad",
            json!({pod_simulator::OUTCOME: "Failed", pod_simulator::EXIT_CODE: "3"}),
        ),
    )
    .await
    .unwrap();
    let bad = wait_for_phase(&pods, "bad", "Failed").await;
    assert_eq!(terminated(&bad).exit_code, 3);
    assert_eq!(terminated(&bad).reason.as_deref(), Some("Error"));
}

#[tokio::test]
async fn a_manual_pod_runs_until_the_test_ends_it_and_deletions_complete() {
    let env = TestEnv::new().await;
    let _simulator = PodSimulator::start(env.client.clone(), Some(&env.namespace))
        .await
        .unwrap();
    let pods = env.namespaced::<Pod>();
    pods.create(
        &PostParams::default(),
        &run_to_completion_pod("manual", json!({pod_simulator::OUTCOME: "Manual"})),
    )
    .await
    .unwrap();
    let running = wait_for_phase(&pods, "manual", "Running").await;
    let ready = running
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    assert!(ready, "a running simulated pod is Ready");

    pod_simulator::terminate(&pods, "manual", 0, Some("done by hand"))
        .await
        .unwrap();
    let done = wait_for_phase(&pods, "manual", "Succeeded").await;
    assert_eq!(terminated(&done).message.as_deref(), Some("done by hand"));

    // A bound pod's deletion waits for its kubelet; the simulator finishes it.
    pods.delete("manual", &DeleteParams::default()).await.unwrap();
    poll_until("the pod to be gone", Deadline::default(), || async {
        match pods.get_opt("manual").await {
            Ok(None) => Ok(()),
            Ok(Some(p)) => Err(format!("deletionTimestamp {:?}", p.metadata.deletion_timestamp)),
            Err(e) => Err(e.to_string()),
        }
    })
    .await;
}

#[tokio::test]
async fn a_restarted_control_plane_keeps_its_objects_and_its_clients_reconnect() {
    // A control plane of its own: the restart must not disturb the other tests of this file.
    let plane = tokio::task::spawn_blocking(|| orrery_e2e::ControlPlane::start_with(false))
        .await
        .unwrap()
        .unwrap();
    let client = plane.client().await;
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    configmaps
        .create(
            &PostParams::default(),
            &from_json(json!({"metadata": {"name": "before-restart"}, "data": {"kept": "yes"}})),
        )
        .await
        .unwrap();
    let pid_before = plane.pid();

    let plane = std::sync::Arc::new(plane);
    let restarting = plane.clone();
    let away = tokio::task::spawn_blocking(move || restarting.restart())
        .await
        .unwrap()
        .unwrap();
    assert_ne!(plane.pid(), pid_before, "a new process serves");
    eprintln!("the control plane was away for {away:?}");

    // The client made before the restart: its old connections are gone, it opens new ones to
    // the same address with the same CA.
    let kept = poll_until("the ConfigMap through the old client", Deadline::default(), || async {
        configmaps.get("before-restart").await.map_err(|e| e.to_string())
    })
    .await;
    assert_eq!(kept.data.unwrap()["kept"], "yes");
    configmaps
        .create(
            &PostParams::default(),
            &from_json(json!({"metadata": {"name": "after-restart"}})),
        )
        .await
        .unwrap();
    let names: Vec<String> = configmaps
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|c| c.name_any())
        .collect();
    assert!(
        names.contains(&"before-restart".to_owned()) && names.contains(&"after-restart".to_owned()),
        "{names:?}"
    );
}
