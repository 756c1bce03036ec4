//! Pods that really run: the control plane with a real node (containerd, runc, the kubelet,
//! kube-proxy, kube-scheduler; see `orrery_e2e::node`): exit codes and termination messages,
//! the `kubernetes` Service, ORCA workflows, a controller's own image as a pod, Services
//! through kube-proxy, and an Application whose versions serve HTTP and whose canary a health
//! gate rolls back when its container really crash-loops. Where the node cannot start here (not
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

#[tokio::test]
async fn task_workflows_image_runs_as_a_pod_reaches_the_api_server_as_its_service_account_and_runs_a_task() {
    let Some(image) = orrery_e2e::node::controller_image("task-workflow") else {
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

/// A version's container: busybox `httpd` answering `/` with the version's name.
fn serve(version: &str) -> String {
    format!("echo {version} > /var/www/index.html && exec httpd -f -p 8080 -h /var/www")
}

/// A version's container that serves for `seconds`, then says so in its termination message
/// and exits 1: the kubelet restarts it, again and again, backing off (a crash loop).
fn serve_then_crash(version: &str, seconds: u32) -> String {
    format!(
        "echo {version} > /var/www/index.html && httpd -p 8080 -h /var/www && sleep {seconds}; \
         echo '{version} stopped serving' > /dev/termination-log; exit 1"
    )
}

/// The ClusterIP of Service `name`, once it exists.
async fn cluster_ip(env: &TestEnv, name: &str) -> String {
    let services = env.namespaced::<k8s_openapi::api::core::v1::Service>();
    poll_until(&format!("Service {name}"), POD_DEADLINE, || async {
        let service = services.get_opt(name).await.map_err(|e| e.to_string())?;
        service
            .and_then(|s| s.spec?.cluster_ip)
            .ok_or_else(|| "not there yet".to_owned())
    })
    .await
}

/// Polls `GET http://<Service name's ClusterIP>:8080/` from the node until the body is one of
/// `bodies`; returns it.
async fn served_through(env: &TestEnv, service: &str, bodies: &[&str]) -> String {
    let node = env.plane().node().expect("a node");
    let url = format!("http://{}:8080/", cluster_ip(env, service).await);
    poll_until(
        &format!("{url} (Service {service}) to answer {bodies:?}"),
        POD_DEADLINE,
        || async {
            let answer = match node.fetch(&url).await {
                Ok(body) if bodies.contains(&body.trim_end()) => return Ok(body.trim_end().to_owned()),
                Ok(body) => format!("answered {body:?}"),
                Err(err) => format!("{err:#}"),
            };
            Err(format!("{answer}; pods: {}", pod_states(env).await))
        },
    )
    .await
}

/// Each pod of the test's namespace: its IP, phase and containers' states, for a failure's message.
async fn pod_states(env: &TestEnv) -> String {
    let Ok(list) = env.namespaced::<Pod>().list(&ListParams::default()).await else {
        return "(cannot list them)".into();
    };
    let states: Vec<String> = list
        .items
        .iter()
        .map(|p| {
            let status = p.status.clone().unwrap_or_default();
            let containers: Vec<String> = status
                .container_statuses
                .unwrap_or_default()
                .iter()
                .map(|c| format!("ready={} restarts={} {:?}", c.ready, c.restart_count, c.state))
                .collect();
            format!(
                "{} {:?} {:?} {containers:?}",
                p.metadata.name.clone().unwrap_or_default(),
                status.pod_ip,
                status.phase
            )
        })
        .collect();
    states.join("; ")
}

/// v2's weight in the HTTPRoute's weighted rule (the last one), once the route exists.
async fn canary_weight(env: &TestEnv, app: &str) -> Option<i32> {
    let route = env
        .namespaced::<gateway_api::httproutes::HttpRoute>()
        .get_opt(app)
        .await
        .ok()??;
    let weighted = route.spec.rules?.last()?.backend_refs.clone()?;
    Some(
        weighted
            .iter()
            .filter(|b| b.name == format!("{app}-v2"))
            .map(|b| b.weight.unwrap_or(1))
            .sum(),
    )
}

async fn wait_canary_weight(env: &TestEnv, app: &str, want: i32) {
    poll_until(
        &format!("{app}'s route to give v2 {want}%"),
        Deadline(Duration::from_secs(120)),
        || async {
            match canary_weight(env, app).await {
                Some(weight) if weight == want => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
}

#[tokio::test]
async fn an_applications_versions_serve_http_and_a_health_gate_rolls_back_a_real_crash_loop() {
    use crd_types::hierarchy::{Application, Cluster, VirtualCluster};

    let Some(env) = TestEnv::with_node().await else { return };
    // The test's namespace taken over by a VirtualCluster on this control plane as a Cluster;
    // the executor and the runner watch only that namespace. No pod simulator runs here: pods,
    // readiness and restart counts are the kubelet's.
    let name = env.namespace.clone();
    env.let_adopt(&name).await;
    orrery_e2e::create(
        &Api::<Cluster>::all(env.client.clone()),
        json!({"metadata": {"name": name},
               "spec": {"executor": {"name": "default", "parameters": {"installGatewayAPI": true}}}}),
    )
    .await;
    orrery_e2e::create(
        &Api::<VirtualCluster>::all(env.client.clone()),
        json!({"metadata": {"name": name}, "spec": {"cluster": name, "namespace": name}}),
    )
    .await;
    let executor = InProcess::start_cluster_wide(
        env.client.clone(),
        hierarchy_executor::controller::NAME,
        hierarchy_executor::run,
    );
    let runner = InProcess::start(
        env.client.clone(),
        &env.namespace,
        policy_runner::NAME,
        policy_runner::controller::run,
    );

    // v1 serves; v2 serves for 12 s after each start, then crashes. The canary takes its first
    // step (20%) once v2 is ready and then waits an hour; the health gate allows v2 one restart.
    let created = std::time::Instant::now();
    orrery_e2e::create(
        &env.namespaced::<Application>(),
        json!({"metadata": {"name": "shop"}, "spec": {
            "virtualCluster": name,
            "port": 8080,
            "versions": [
                {"name": "v1", "image": BUSYBOX_IMAGE, "args": ["sh", "-c", serve("v1")]},
                {"name": "v2", "image": BUSYBOX_IMAGE, "args": ["sh", "-c", serve_then_crash("v2", 12)]},
            ],
            "route": {"gateway": "public"},
            "policies": [
                {"name": "canary", "parameters": {"stepWeight": 20, "maxWeight": 80, "interval": "1h"}},
                {"name": "health-gate", "parameters": {"minReadyPercent": 0, "maxRestarts": 1}},
            ],
        }}),
    )
    .await;

    // Each version's Service answers with that version, through kube-proxy's rules.
    served_through(&env, "shop-v1", &["v1"]).await;
    eprintln!(
        "v1 served through its Service {:.1}s after the Application was created",
        created.elapsed().as_secs_f64()
    );
    wait_canary_weight(&env, "shop", 20).await;
    eprintln!(
        "the canary's first step (v2 20%) in the route {:.1}s after the Application was created",
        created.elapsed().as_secs_f64()
    );
    served_through(&env, "shop-v2", &["v2"]).await;
    eprintln!(
        "v2 served through its Service {:.1}s after the Application was created",
        created.elapsed().as_secs_f64()
    );
    let stable = served_through(&env, "shop", &["v1", "v2"]).await;
    eprintln!("the stable Service answered: {stable}");

    // v2's container exits 1 and the kubelet restarts it: the crash loop has begun.
    let pods = env.namespaced::<Pod>();
    let v2_pods = ListParams::default().labels("hierarchy.orrery.dev/version=v2");
    let (first_exit, exit_code, message) = poll_until("v2's container to exit and restart", POD_DEADLINE, || async {
        let list = pods.list(&v2_pods).await.map_err(|e| e.to_string())?;
        for pod in &list.items {
            for container in pod
                .status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .into_iter()
                .flatten()
            {
                if container.restart_count >= 1
                    && let Some(terminated) = container.last_state.as_ref().and_then(|s| s.terminated.as_ref())
                {
                    return Ok((
                        terminated.finished_at.clone(),
                        terminated.exit_code,
                        terminated.message.clone().unwrap_or_default(),
                    ));
                }
            }
        }
        Err(format!(
            "{:?}",
            list.items
                .iter()
                .map(|p| p.status.as_ref().map(|s| &s.container_statuses))
                .collect::<Vec<_>>()
        ))
    })
    .await;
    assert_eq!((exit_code, message.as_str()), (1, "v2 stopped serving\n"));

    // The second restart is past the limit: the gate rolls v2 back.
    wait_canary_weight(&env, "shop", 0).await;
    let rolled_back_at = jiff::Timestamp::now();
    if let Some(first_exit) = first_exit {
        eprintln!(
            "v2 rolled back {:.1}s after its container first exited (the kubelet's finishedAt, to the second)",
            rolled_back_at.duration_since(first_exit.0).as_secs_f64()
        );
    }
    // And after the restart past the limit, if the container has not restarted again since.
    for pod in pods.list(&v2_pods).await.unwrap() {
        for container in pod.status.and_then(|s| s.container_statuses).unwrap_or_default() {
            if let (2, Some(started)) = (
                container.restart_count,
                container.state.and_then(|s| s.running).and_then(|r| r.started_at),
            ) {
                eprintln!(
                    "... and {:.1}s after the kubelet started it for the second time (to the second)",
                    rolled_back_at.duration_since(started.0).as_secs_f64()
                );
            }
        }
    }
    let apps = env.namespaced::<Application>();
    let step_message = poll_until("the canary to say why it rolled back", Deadline::default(), || async {
        let app = apps.get("shop").await.map_err(|e| e.to_string())?;
        let pipeline = app.status.and_then(|s| s.common.policy).ok_or("no pipeline status")?;
        let message = pipeline
            .steps
            .first()
            .and_then(|s| s.message.clone())
            .unwrap_or_default();
        if message.contains("step 2 (health-gate) rolled back") {
            Ok(message)
        } else {
            Err(message)
        }
    })
    .await;
    let counted: i32 = step_message
        .rsplit_once("v2 restarted ")
        .and_then(|(_, rest)| rest.strip_suffix(" times (at most 1)"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the gate names v2's restarts: {step_message}"));
    assert!(counted >= 2, "{step_message}");

    // What the executor reports is what the kubelet counts.
    poll_until(
        "the Application's v2 restarts to equal the kubelet's count",
        POD_DEADLINE,
        || async {
            let kubelet: i32 = pods
                .list(&v2_pods)
                .await
                .map_err(|e| e.to_string())?
                .items
                .iter()
                .filter_map(|p| p.status.as_ref()?.container_statuses.as_ref())
                .flatten()
                .map(|c| c.restart_count)
                .sum();
            let app = apps.get("shop").await.map_err(|e| e.to_string())?;
            let reported = app
                .status
                .and_then(|s| s.versions.into_iter().find(|v| v.name == "v2"))
                .map(|v| v.restarts);
            if reported == Some(kubelet) && kubelet >= 2 {
                Ok(())
            } else {
                Err(format!("reported {reported:?}, the kubelet's {kubelet}"))
            }
        },
    )
    .await;
    // v1 still serves behind the stable Service.
    served_through(&env, "shop", &["v1"]).await;
    runner.stop().await;
    executor.stop().await;
}
