//! Pods that really run: the control plane with a real node (containerd, runc, the kubelet,
//! kube-proxy, kube-scheduler; see `orrery_e2e::node`). Where the node cannot start here (not
//! root, no cgroups, packages missing) each test says why and passes without running; with
//! `ORRERY_REQUIRE_NODE=1`, as CI sets, that is a failure instead.

// A test that cannot proceed should stop right there, with the error.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use crd_types::workflow::{Ignitor, Task, TaskRef, TaskRun, TaskRunPhase, TaskRunSpec};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{ListParams, PostParams};
use orrery_e2e::node::{BUSYBOX_IMAGE, NODE_NAME};
use orrery_e2e::{Deadline, InProcess, TestEnv, poll_until};
use serde_json::json;

/// What a real pod takes to start, pull-free, and finish.
const POD_DEADLINE: Deadline = Deadline(Duration::from_secs(90));

async fn finished_pod(pods: &Api<Pod>, name: &str) -> Pod {
    poll_until(&format!("pod {name} to finish"), POD_DEADLINE, || async {
        let pod = pods.get(name).await.map_err(|e| e.to_string())?;
        match pod.status.as_ref().and_then(|s| s.phase.as_deref()) {
            Some("Succeeded" | "Failed") => Ok(pod),
            _ => Err(format!("{:?}", pod.status)),
        }
    })
    .await
}

#[tokio::test]
async fn a_pod_runs_on_the_real_node_and_its_exit_code_and_termination_message_come_from_the_kubelet() {
    let Some(env) = TestEnv::with_node().await else { return };
    let pods = env.namespaced::<Pod>();
    // No nodeName: kube-scheduler places it.
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "exit3"},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{
                "name": "main",
                "image": BUSYBOX_IMAGE,
                "command": ["sh", "-c", "echo \"written by $(hostname)\" > /dev/termination-log; exit 3"]
            }]
        }
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let pod = finished_pod(&pods, "exit3").await;
    assert_eq!(pod.spec.as_ref().unwrap().node_name.as_deref(), Some(NODE_NAME));
    let status = pod.status.unwrap();
    assert_eq!(status.phase.as_deref(), Some("Failed"));
    assert!(
        status.pod_ip.as_deref().is_some_and(|ip| ip.starts_with("10.250.")),
        "a pod IP from the node's bridge: {:?}",
        status.pod_ip
    );
    let terminated = status.container_statuses.unwrap()[0]
        .state
        .clone()
        .unwrap()
        .terminated
        .expect("the container terminated");
    assert_eq!(terminated.exit_code, 3);
    assert_eq!(terminated.reason.as_deref(), Some("Error"));
    assert_eq!(terminated.message.as_deref(), Some("written by exit3\n"));
}

#[tokio::test]
async fn a_pod_reaches_the_api_server_through_the_kubernetes_service() {
    let Some(env) = TestEnv::with_node().await else { return };
    let pods = env.namespaced::<Pod>();
    // In-cluster configuration as a controller's: the Service's environment and the projected
    // ServiceAccount token. busybox's TLS shares no cipher suite with the API server, so what
    // answers is checked, not the token: the API server's TLS alert, through kube-proxy's
    // rules, from the Service address to the host's end of the node's link.
    let script = r#"test -s /var/run/secrets/kubernetes.io/serviceaccount/token && echo "token mounted"
wget -q -O /dev/null --no-check-certificate "https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT/version" 2>&1
echo "$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT"
nc -w 3 10.0.0.1 443 </dev/null && echo "service open""#;
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "caller"},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{
                "name": "main",
                "image": BUSYBOX_IMAGE,
                "command": ["sh", "-c", format!("({script}) > /dev/termination-log")]
            }]
        }
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let pod = finished_pod(&pods, "caller").await;
    let (_, message) = termination(&pod);
    assert!(message.contains("token mounted"), "{message}");
    assert!(message.contains("10.0.0.1:443"), "{message}");
    assert!(
        message.contains("TLS error from peer") && message.contains("service open"),
        "a TLS server answered at the kubernetes Service: {message}"
    );
}

/// The first container's exit code and termination message.
fn termination(pod: &Pod) -> (i32, String) {
    let terminated = pod.status.as_ref().unwrap().container_statuses.as_ref().unwrap()[0]
        .state
        .clone()
        .unwrap()
        .terminated
        .expect("the container terminated");
    (terminated.exit_code, terminated.message.unwrap_or_default())
}

fn start_workflow(env: &TestEnv) -> InProcess {
    InProcess::start(
        env.client.clone(),
        &env.namespace,
        task_workflow::controller::NAME,
        task_workflow::run,
    )
}

fn task(name: &str, spec: serde_json::Value) -> Task {
    Task::new(name, serde_json::from_value(spec).expect("task spec"))
}

/// A busybox container running `script`, once.
fn busybox(script: &str) -> serde_json::Value {
    json!({"spec": {"restartPolicy": "Never", "containers": [{
        "name": "main", "image": BUSYBOX_IMAGE, "command": ["sh", "-c", script]}]}})
}

fn manual_run(task: &str, name: &str) -> TaskRun {
    TaskRun::new(
        name,
        TaskRunSpec {
            task_ref: TaskRef { name: task.into() },
            initiator: None,
            data: None,
            joined: vec![],
        },
    )
}

/// The first run of `task` once it has ended and handed off.
async fn finished_run_of(env: &TestEnv, task: &str) -> TaskRun {
    let runs = env.namespaced::<TaskRun>();
    poll_until(&format!("a finished run of {task}"), POD_DEADLINE, || async {
        let list = runs.list(&ListParams::default()).await.map_err(|e| e.to_string())?;
        let run = list.items.into_iter().find(|r| r.spec.task_ref.name == task);
        match run {
            Some(run) if run.status.as_ref().is_some_and(|s| s.handed_off) => Ok(run),
            other => Err(format!("{:?}", other.map(|r| r.status))),
        }
    })
    .await
}

#[tokio::test]
async fn orca_on_real_containers_task2_receives_what_task1_wrote_to_its_termination_log() {
    let Some(env) = TestEnv::with_node().await else { return };
    let workflow = start_workflow(&env);
    let scheduler = InProcess::start(
        env.client.clone(),
        &env.namespace,
        ignitor_scheduler::controller::NAME,
        ignitor_scheduler::run,
    );
    let tasks = env.namespaced::<Task>();
    tasks
        .create(
            &PostParams::default(),
            &task(
                "task1",
                json!({"startOnIgnition": ["ignitor1"],
                    "template": busybox("printf 'hello from task1' > /dev/termination-log")}),
            ),
        )
        .await
        .unwrap();
    tasks
        .create(
            &PostParams::default(),
            &task(
                "task2",
                json!({"startOnSuccess": ["task1"],
                    "template": busybox("printf '%s|%s' \"$ORCA_DATA\" \"$ORCA_INITIATOR\" > /dev/termination-log")}),
            ),
        )
        .await
        .unwrap();
    let ignitor: Ignitor = serde_json::from_value(json!({
        "apiVersion": "workflow.orrery.dev/v1alpha1", "kind": "Ignitor",
        "metadata": {"name": "ignitor1"}, "spec": {"scheduled": "NOW"}
    }))
    .unwrap();
    env.namespaced::<Ignitor>()
        .create(&PostParams::default(), &ignitor)
        .await
        .unwrap();

    let first = finished_run_of(&env, "task1").await;
    let status = first.status.unwrap();
    assert_eq!(status.phase, Some(TaskRunPhase::Succeeded));
    assert_eq!(
        (status.exit_code, status.message.as_deref()),
        (Some(0), Some("hello from task1"))
    );
    let second = finished_run_of(&env, "task2").await;
    let status = second.status.unwrap();
    assert_eq!(status.phase, Some(TaskRunPhase::Succeeded), "{status:?}");
    assert_eq!(
        status.message.as_deref(),
        Some("hello from task1|task1"),
        "task2's container got ORCA_DATA and ORCA_INITIATOR"
    );
    scheduler.stop().await;
    workflow.stop().await;
}

#[tokio::test]
async fn a_real_container_that_fails_gives_a_failed_run_with_its_exit_code_and_message() {
    let Some(env) = TestEnv::with_node().await else { return };
    let workflow = start_workflow(&env);
    env.namespaced::<Task>()
        .create(
            &PostParams::default(),
            &task(
                "fails",
                json!({"template": busybox("echo 'no luck' > /dev/termination-log; exit 7")}),
            ),
        )
        .await
        .unwrap();
    env.namespaced::<TaskRun>()
        .create(&PostParams::default(), &manual_run("fails", "fails-1"))
        .await
        .unwrap();
    let run = finished_run_of(&env, "fails").await;
    let status = run.status.unwrap();
    assert_eq!(status.phase, Some(TaskRunPhase::Failed));
    assert_eq!(
        (status.exit_code, status.message.as_deref()),
        (Some(7), Some("no luck\n"))
    );
    workflow.stop().await;
}

#[tokio::test]
async fn an_image_not_present_and_a_command_that_does_not_exist_give_runs_that_say_why() {
    let Some(env) = TestEnv::with_node().await else { return };
    let workflow = start_workflow(&env);
    let tasks = env.namespaced::<Task>();
    let runs = env.namespaced::<TaskRun>();
    tasks
        .create(
            &PostParams::default(),
            &task(
                "absent",
                json!({"activeDeadlineSeconds": 25, "template": {"spec": {"restartPolicy": "Never", "containers": [{
                    "name": "main", "image": "orrery-test/not-imported:1", "imagePullPolicy": "Never"}]}}}),
            ),
        )
        .await
        .unwrap();
    tasks
        .create(
            &PostParams::default(),
            &task(
                "no-command",
                json!({"activeDeadlineSeconds": 60, "template": {"spec": {"restartPolicy": "Never", "containers": [{
                    "name": "main", "image": BUSYBOX_IMAGE, "command": ["/bin/no-such-command"]}]}}}),
            ),
        )
        .await
        .unwrap();
    runs.create(&PostParams::default(), &manual_run("absent", "absent-1"))
        .await
        .unwrap();
    runs.create(&PostParams::default(), &manual_run("no-command", "no-command-1"))
        .await
        .unwrap();

    // While it waits, the run says why; at its deadline it fails, saying it again.
    let waiting = poll_until("absent-1 to say why its pod cannot start", POD_DEADLINE, || async {
        let run = runs.get("absent-1").await.map_err(|e| e.to_string())?;
        let status = run.status.clone().unwrap_or_default();
        let ready = crd_types::common::find_condition(&status.conditions, "Ready").cloned();
        match ready {
            Some(c) if c.reason == "PodCannotStart" => Ok(c),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert!(waiting.message.contains("ErrImageNeverPull"), "{}", waiting.message);
    let failed = finished_run_of(&env, "absent").await.status.unwrap();
    assert_eq!(failed.phase, Some(TaskRunPhase::Failed));
    let message = failed.message.unwrap();
    assert!(
        message.starts_with("ran past its deadline of 25s; its pod never started: ErrImageNeverPull"),
        "{message}"
    );

    let failed = finished_run_of(&env, "no-command").await.status.unwrap();
    assert_eq!(failed.phase, Some(TaskRunPhase::Failed), "{failed:?}");
    let message = failed.message.clone().unwrap_or_default();
    assert!(
        message.contains("/bin/no-such-command") && message.contains("no such file or directory"),
        "{failed:?}"
    );
    assert_eq!(failed.exit_code, Some(128), "runc's exit code for a start that failed");
    workflow.stop().await;
}

/// `target/images/<controller>.tar`, as `images/build.sh` writes it, or why it is not there.
fn controller_image(controller: &str) -> Option<std::path::PathBuf> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/images")
        .join(format!("{controller}.tar"));
    if path.is_file() {
        return Some(path);
    }
    let reason = format!("{} is missing: run images/build.sh", path.display());
    if std::env::var("ORRERY_REQUIRE_NODE").is_ok_and(|v| v == "1") {
        panic!("ORRERY_REQUIRE_NODE=1 but {reason}");
    }
    eprintln!("skipped: {reason}");
    None
}

#[tokio::test]
async fn task_workflows_image_runs_as_a_pod_reaches_the_api_server_as_its_service_account_and_runs_a_task() {
    let Some(image) = controller_image("task-workflow") else {
        return;
    };
    let Some(env) = TestEnv::with_node().await else { return };
    let node = env.plane().node().expect("a node");
    node.import(&image).unwrap();
    let version = env!("CARGO_PKG_VERSION");
    // Its own ServiceAccount, allowed everything: what is tested is that the pod reaches the
    // API server with it (the chart's narrower roles are the chart's tests').
    orrery_e2e::create(
        &env.namespaced::<k8s_openapi::api::core::v1::ServiceAccount>(),
        json!({"metadata": {"name": "task-workflow"}}),
    )
    .await;
    orrery_e2e::create(
        &Api::<k8s_openapi::api::rbac::v1::ClusterRoleBinding>::all(env.client.clone()),
        json!({
            "metadata": {"name": format!("{}-task-workflow", env.namespace)},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
            "subjects": [{"kind": "ServiceAccount", "name": "task-workflow", "namespace": env.namespace}]
        }),
    )
    .await;
    let pods = env.namespaced::<Pod>();
    orrery_e2e::create(
        &pods,
        json!({
            "metadata": {"name": "task-workflow"},
            "spec": {
                "serviceAccountName": "task-workflow",
                "containers": [{
                    "name": "task-workflow",
                    "image": format!("orrery/task-workflow:{version}"),
                    "imagePullPolicy": "Never",
                    // Its namespace only: other tests run their own task-workflow at once.
                    "args": ["--http-addr=0.0.0.0:8080", format!("--watch-namespace={}", env.namespace)],
                    "env": [
                        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}
                    ],
                    "ports": [{"name": "http", "containerPort": 8080}],
                    "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 2},
                    "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"}},
                    "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                        "capabilities": {"drop": ["ALL"]}}
                }]
            }
        }),
    )
    .await;
    poll_until(
        "the task-workflow pod to be Ready (the kubelet probing /readyz)",
        POD_DEADLINE,
        || async {
            let pod = pods.get("task-workflow").await.map_err(|e| e.to_string())?;
            let status = pod.status.unwrap_or_default();
            let ready = status
                .conditions
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            if ready {
                Ok(())
            } else {
                Err(format!("{:?}", status.container_statuses))
            }
        },
    )
    .await;

    // The controller in the pod runs a Task: its pod, on the same node, runs busybox.
    env.namespaced::<Task>()
        .create(
            &PostParams::default(),
            &task(
                "hello",
                json!({"template": busybox("printf 'from a pod' > /dev/termination-log")}),
            ),
        )
        .await
        .unwrap();
    env.namespaced::<TaskRun>()
        .create(&PostParams::default(), &manual_run("hello", "hello-1"))
        .await
        .unwrap();
    let run = finished_run_of(&env, "hello").await;
    let status = run.status.unwrap();
    assert_eq!(
        (status.phase, status.message.as_deref()),
        (Some(TaskRunPhase::Succeeded), Some("from a pod"))
    );
    let restarts = pods
        .get("task-workflow")
        .await
        .unwrap()
        .status
        .unwrap()
        .container_statuses
        .unwrap()[0]
        .restart_count;
    assert_eq!(restarts, 0, "the kubelet's liveness probe found it healthy");
    let _ = Api::<k8s_openapi::api::rbac::v1::ClusterRoleBinding>::all(env.client.clone())
        .delete(&format!("{}-task-workflow", env.namespace), &Default::default())
        .await;
}

#[tokio::test]
async fn a_service_reaches_a_busybox_httpd_pod_through_kube_proxy() {
    let Some(env) = TestEnv::with_node().await else { return };
    let pods = env.namespaced::<Pod>();
    orrery_e2e::create(
        &pods,
        json!({
            "metadata": {"name": "web", "labels": {"app": "web"}},
            "spec": {"containers": [{
                "name": "httpd",
                "image": BUSYBOX_IMAGE,
                "command": ["sh", "-c", "echo served by $(hostname) > /var/www/index.html && exec httpd -f -p 8080 -h /var/www"],
                "ports": [{"containerPort": 8080}],
                "readinessProbe": {"httpGet": {"path": "/index.html", "port": 8080}, "periodSeconds": 1}
            }]}
        }),
    )
    .await;
    let service = orrery_e2e::create(
        &env.namespaced::<k8s_openapi::api::core::v1::Service>(),
        json!({
            "metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}
        }),
    )
    .await;
    let cluster_ip = service.spec.unwrap().cluster_ip.unwrap();
    // The client retries until kube-proxy has the endpoint: the pod turns ready on its own time.
    let script = format!(
        "for i in $(seq 60); do timeout 3 wget -q -O /tmp/page http://{cluster_ip}/index.html 2>/tmp/error && break; sleep 1; done; cat /tmp/page /tmp/error > /dev/termination-log"
    );
    orrery_e2e::create(
        &pods,
        json!({
            "metadata": {"name": "client"},
            "spec": {"restartPolicy": "Never", "containers": [{
                "name": "main", "image": BUSYBOX_IMAGE, "command": ["sh", "-c", script]}]}
        }),
    )
    .await;
    let client = finished_pod(&pods, "client").await;
    let page = termination(&client).1;
    if page != "served by web\n" {
        let slices =
            Api::<k8s_openapi::api::discovery::v1::EndpointSlice>::namespaced(env.client.clone(), &env.namespace)
                .list(&ListParams::default())
                .await
                .unwrap();
        let web = pods.get("web").await.unwrap();
        let node = env.plane().node().unwrap();
        panic!(
            "the client got {page:?}; web: {:?}; EndpointSlices: {:?}; kube-proxy's log ends:\n{}",
            web.status.map(|s| (s.pod_ip, s.conditions)),
            slices.items.iter().map(|s| &s.endpoints).collect::<Vec<_>>(),
            node.log_tail("kube-proxy", 15)
        );
    }
}
