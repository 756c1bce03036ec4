//! task-workflow on the real control plane, the pod simulator playing the kubelet: ORCA's
//! README end to end, a diamond with a join, a restart in the middle of a 50-task chain,
//! actions, retries, deadlines, concurrency, history limits, and bad input.

// A test that cannot proceed should stop right there, with the error.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};

use crd_types::workflow::{Ignitor, TASK_LABEL, TASKRUN_LABEL, Task, TaskRef, TaskRun, TaskRunPhase, TaskRunSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use k8s_openapi::api::events::v1::Event;
use kube::api::{DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use orrery_e2e::pod_simulator::{self, PodSimulator, Unannotated};
use orrery_e2e::{Deadline, InProcess, TestEnv, access, poll_until};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn start_workflow(env: &TestEnv) -> InProcess {
    InProcess::start(
        env.client.clone(),
        &env.namespace,
        task_workflow::controller::NAME,
        task_workflow::run,
    )
}

fn start_scheduler(env: &TestEnv) -> InProcess {
    InProcess::start(
        env.client.clone(),
        &env.namespace,
        ignitor_scheduler::controller::NAME,
        ignitor_scheduler::run,
    )
}

async fn apply_yaml(env: &TestEnv, yaml: &str) {
    for document in yaml.split("\n---\n") {
        let object: DynamicObject = serde_yaml::from_str(document).expect("manifest parses");
        let kind = object.types.as_ref().map(|t| t.kind.clone()).unwrap_or_default();
        let api: Api<DynamicObject> = match kind.as_str() {
            "Task" => Api::namespaced_with(
                env.client.clone(),
                &env.namespace,
                &kube::api::ApiResource::erase::<Task>(&()),
            ),
            "Ignitor" => Api::namespaced_with(
                env.client.clone(),
                &env.namespace,
                &kube::api::ApiResource::erase::<Ignitor>(&()),
            ),
            other => panic!("unexpected kind {other}"),
        };
        api.create(&PostParams::default(), &object)
            .await
            .expect("manifest accepted");
    }
}

fn task(name: &str, spec: serde_json::Value) -> Task {
    let mut spec = spec;
    if spec.get("template").is_none() {
        spec["template"] = json!({"spec": {"containers": [{"name": "main", "image": "busybox"}]}});
    }
    Task::new(name, serde_json::from_value(spec).expect("task spec"))
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

async fn runs_of(env: &TestEnv, task: &str) -> Vec<TaskRun> {
    let all = env
        .namespaced::<TaskRun>()
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    all.into_iter().filter(|r| r.spec.task_ref.name == task).collect()
}

fn phase(run: &TaskRun) -> Option<TaskRunPhase> {
    run.status.as_ref().and_then(|s| s.phase)
}

fn handed_off(run: &TaskRun) -> bool {
    run.status.as_ref().is_some_and(|s| s.handed_off)
}

async fn wait_run(env: &TestEnv, name: &str, wanted: TaskRunPhase) -> TaskRun {
    let api = env.namespaced::<TaskRun>();
    poll_until(
        &format!("TaskRun {name} to be {wanted:?} and handed off"),
        Deadline::default(),
        || async {
            let run = api.get(name).await.map_err(|e| e.to_string())?;
            if phase(&run) == Some(wanted) && handed_off(&run) {
                Ok(run)
            } else {
                Err(format!("{:?}", run.status))
            }
        },
    )
    .await
}

async fn task_status(env: &TestEnv, name: &str) -> crd_types::workflow::TaskStatus {
    env.namespaced::<Task>()
        .get(name)
        .await
        .unwrap()
        .status
        .unwrap_or_default()
}

fn condition(status: &crd_types::workflow::TaskStatus, type_: &str) -> (String, String, String) {
    let c = crd_types::common::find_condition(&status.conditions, type_).expect("condition present");
    (c.status.clone(), c.reason.clone(), c.message.clone())
}

/// The next running pod of `task` not handled yet.
async fn next_running_pod(env: &TestEnv, task: &str, handled: &mut BTreeSet<String>) -> Pod {
    let pods = env.namespaced::<Pod>();
    let pod = poll_until(&format!("a new running pod of {task}"), Deadline::default(), || async {
        let list = pods
            .list(&ListParams::default().labels(&format!("{TASK_LABEL}={task}")))
            .await
            .map_err(|e| e.to_string())?;
        list.items
            .into_iter()
            .find(|p| {
                !handled.contains(&p.name_any())
                    && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
            })
            .ok_or_else(|| "none yet".to_string())
    })
    .await;
    handled.insert(pod.name_any());
    pod
}

fn env_of(pod: &Pod) -> BTreeMap<String, String> {
    pod.spec.as_ref().unwrap().containers[0]
        .env
        .iter()
        .flatten()
        .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
        .collect()
}

async fn events_for(env: &TestEnv, name: &str, reason: &str) -> Vec<Event> {
    let list = env.namespaced::<Event>().list(&ListParams::default()).await.unwrap();
    list.items
        .into_iter()
        .filter(|e| {
            e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name) && e.reason.as_deref() == Some(reason)
        })
        .collect()
}

/// ORCA's README example, verbatim but for `apiVersion`.
const ORCA: &str = include_str!("../testdata/orca-example.yaml");

#[tokio::test]
async fn the_orca_readme_example_end_to_end() {
    let env = TestEnv::new().await;
    let _kubelet = PodSimulator::start_with(env.client.clone(), Some(&env.namespace), Unannotated::Manual)
        .await
        .unwrap();
    let workflow = start_workflow(&env);
    let scheduler = start_scheduler(&env);
    apply_yaml(&env, ORCA).await;
    let pods = env.namespaced::<Pod>();
    let runs = env.namespaced::<TaskRun>();

    // As written, ORCA's example names its containers `continerName1`/`continerName2`, which
    // Kubernetes refuses (container names are lowercase DNS labels). ignitor1 fires NOW,
    // task1's pod is rejected, the run fails with the API server's message, the failure
    // restarts task1 (startOnFailure: task1), and the loop guard stops it after 10.
    poll_until(
        "the loop guard to stop task1's failure loop",
        Deadline::default(),
        || async {
            let refused = events_for(&env, "task1", "LoopGuard").await;
            let status = task_status(&env, "task1").await;
            if !refused.is_empty() && status.failures_count == 10 {
                Ok(())
            } else {
                let runs = runs.list(&ListParams::default()).await.map_err(|e| e.to_string())?;
                let runs: Vec<String> = runs
                    .items
                    .iter()
                    .map(|r| format!("{} from {:?}: {:?}", r.name_any(), r.spec.initiator, phase(r)))
                    .collect();
                Err(format!("{status:?}; runs kept: {runs:?}"))
            }
        },
    )
    .await;
    let status = task_status(&env, "task1").await;
    assert_eq!(condition(&status, "Ready").1, "LoopGuard");
    assert_eq!(
        (status.failures_count, status.consecutive_failures, status.success_count),
        (10, 10, 0)
    );
    let (valid, reason, message) = condition(&status, "ActionsValid");
    assert_eq!((valid.as_str(), reason.as_str()), ("False", "UnknownAction"));
    assert!(message.contains("YOUR-PLUGIN-NAME"));
    let kept = poll_until(
        "the history to keep 3 failed runs (the default)",
        Deadline::default(),
        || async {
            let kept = runs_of(&env, "task1").await;
            if kept.len() == 3 {
                Ok(kept)
            } else {
                Err(format!("{} runs", kept.len()))
            }
        },
    )
    .await;
    let first_kept = kept[0].status.clone().unwrap();
    assert!(
        first_kept.message.unwrap().contains("continerName1"),
        "the server's reason is on the run"
    );
    let results = &first_kept.action_results;
    assert_eq!(
        (results[0].name.as_str(), results[0].outcome.as_str()),
        ("YOUR-PLUGIN-NAME", "Unknown")
    );
    assert_eq!(
        kept.iter()
            .filter_map(|r| r.spec.initiator.as_ref())
            .filter(|i| i.name == "task1")
            .count(),
        3,
        "later runs were started by task1's own failure"
    );

    // Lowercase container names (the one change beyond apiVersion), and the spec change
    // lifts the loop guard. A manual fire of ignitor1 runs the workflow again.
    let tasks = env.namespaced::<Task>();
    for (name, container) in [("task1", "continername1"), ("task2", "continername2")] {
        let mut template = tasks.get(name).await.unwrap().spec.template.to_value();
        template["spec"]["containers"][0]["name"] = json!(container);
        let patch = json!({"spec": {"template": template}});
        tasks
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
    }
    poll_until(
        "task1 to be Ready after its spec changed",
        Deadline::default(),
        || async {
            let status = task_status(&env, "task1").await;
            if condition(&status, "Ready").0 == "True" {
                Ok(())
            } else {
                Err(format!("{:?}", condition(&status, "Ready")))
            }
        },
    )
    .await;
    let fire = json!({"metadata": {"annotations": {crd_types::workflow::FIRE_ANNOTATION: "again"}}});
    env.namespaced::<Ignitor>()
        .patch("ignitor1", &PatchParams::default(), &Patch::Merge(&fire))
        .await
        .unwrap();

    // task1 fails once (and restarts itself), then succeeds; task2 gets its message and name.
    let mut handled = BTreeSet::new();
    let pod = next_running_pod(&env, "task1", &mut handled).await;
    assert_eq!(env_of(&pod)["ORCA_INITIATOR"], "ignitor1");
    pod_simulator::terminate(&pods, &pod.name_any(), 1, Some("not yet"))
        .await
        .unwrap();
    let pod = next_running_pod(&env, "task1", &mut handled).await;
    assert_eq!(env_of(&pod)["ORCA_INITIATOR"], "task1");
    assert_eq!(
        env_of(&pod)["ORCA_DATA"],
        "not yet",
        "a failure passes its message on too"
    );
    pod_simulator::terminate(&pods, &pod.name_any(), 0, Some("hello from task1"))
        .await
        .unwrap();
    let pod2 = next_running_pod(&env, "task2", &mut handled).await;
    let env2 = env_of(&pod2);
    assert_eq!(env2["ORCA_DATA"], "hello from task1");
    assert_eq!(env2["ORCA_INITIATOR"], "task1");
    pod_simulator::terminate(&pods, &pod2.name_any(), 0, None)
        .await
        .unwrap();
    let task2_run = runs_of(&env, "task2").await.remove(0);
    wait_run(&env, &task2_run.name_any(), TaskRunPhase::Succeeded).await;
    let _ = runs;

    // `kubectl get tasks`: the server prints ORCA's columns from the CRD.
    let status1 = poll_until("task1 to count its success", Deadline::default(), || async {
        let s = task_status(&env, "task1").await;
        if s.success_count == 1 {
            Ok(s)
        } else {
            Err(format!("{s:?}"))
        }
    })
    .await;
    assert_eq!((status1.failures_count, status1.consecutive_failures), (11, 0));
    assert!(status1.last_success.is_some() && status1.last_failure.is_some());
    let table = get_table(&env, "tasks").await;
    let columns: Vec<&str> = table["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        &columns[..8],
        [
            "Name",
            "STATE",
            "LASTSUCCESS",
            "LASTFAILURE",
            "FAILURESCOUNT",
            "IGNITORS",
            "ONSUCCESSTASK",
            "ONFAILURETASK"
        ]
    );
    let row = table["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["cells"][0] == "task1")
        .unwrap();
    // As in ORCA's README: waiting for its next trigger.
    assert_eq!(row["cells"][1], "Pending");
    assert_eq!(row["cells"][4], 11);
    assert_eq!(row["cells"][5], json!(["ignitor1"]).to_string());
    assert_eq!(row["cells"][7], json!(["task1"]).to_string());
    scheduler.stop().await;
    workflow.stop().await;
}

/// The server-side table `kubectl get` prints.
async fn get_table(env: &TestEnv, plural: &str) -> serde_json::Value {
    let request = http::Request::get(format!(
        "/apis/workflow.orrery.dev/v1alpha1/namespaces/{}/{plural}",
        env.namespace
    ))
    .header("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io")
    .body(Vec::new())
    .unwrap();
    let text = env.client.request_text(request).await.unwrap();
    serde_json::from_str(&text).unwrap()
}

#[tokio::test]
async fn a_diamond_with_an_all_of_join_runs_the_join_once_per_start() {
    let env = TestEnv::new().await;
    let _kubelet = PodSimulator::start(env.client.clone(), Some(&env.namespace))
        .await
        .unwrap();
    let workflow = start_workflow(&env);
    let tasks = env.namespaced::<Task>();
    for (name, spec) in [
        ("a", json!({})),
        ("b", json!({"startOnSuccess": ["a"]})),
        ("c", json!({"startOnSuccess": ["a"]})),
        ("d", json!({"startOnSuccess": ["b", "c"], "join": {"mode": "AllOf"}})),
    ] {
        tasks.create(&PostParams::default(), &task(name, spec)).await.unwrap();
    }
    let runs = env.namespaced::<TaskRun>();
    for round in 1..=2 {
        runs.create(&PostParams::default(), &manual_run("a", &format!("a-start-{round}")))
            .await
            .unwrap();
        poll_until(
            &format!("round {round}: d to run and every run to hand off"),
            Deadline::default(),
            || async {
                let all = runs
                    .list(&ListParams::default())
                    .await
                    .map_err(|e| e.to_string())?
                    .items;
                let d_done = all
                    .iter()
                    .filter(|r| r.spec.task_ref.name == "d" && handed_off(r))
                    .count();
                let b_c_done = all
                    .iter()
                    .filter(|r| ["b", "c"].contains(&r.spec.task_ref.name.as_str()) && handed_off(r))
                    .count();
                if d_done == round && b_c_done == 2 * round && all.iter().all(handed_off) {
                    Ok(())
                } else {
                    Err(format!("{} runs, d handed off {d_done}, b+c {b_c_done}", all.len()))
                }
            },
        )
        .await;
        let d_runs = runs_of(&env, "d").await;
        assert_eq!(d_runs.len(), round, "d runs exactly once per start of a");
        let newest = d_runs.iter().max_by_key(|r| r.creation_timestamp()).unwrap();
        let joined: Vec<&str> = newest.spec.joined.iter().map(|j| j.task.as_str()).collect();
        assert_eq!(joined, ["b", "c"]);
    }
    workflow.stop().await;
}

#[tokio::test]
async fn a_restart_in_the_middle_of_a_50_task_chain_runs_each_task_once() {
    let env = TestEnv::new().await;
    let _kubelet = PodSimulator::start(env.client.clone(), Some(&env.namespace))
        .await
        .unwrap();
    let tasks = env.namespaced::<Task>();
    for i in 0..50 {
        let spec = if i == 0 {
            json!({})
        } else {
            json!({"startOnSuccess": [format!("t{}", i - 1)]})
        };
        tasks
            .create(&PostParams::default(), &task(&format!("t{i}"), spec))
            .await
            .unwrap();
    }
    let workflow = start_workflow(&env);
    let runs = env.namespaced::<TaskRun>();
    runs.create(&PostParams::default(), &manual_run("t0", "t0-start"))
        .await
        .unwrap();
    poll_until("the chain to reach t20", Deadline::default(), || async {
        let n = runs
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?
            .items
            .len();
        if n > 20 { Ok(()) } else { Err(format!("{n} runs")) }
    })
    .await;
    workflow.stop().await;
    let workflow = start_workflow(&env);
    let deadline = Deadline(std::time::Duration::from_secs(90));
    poll_until("t49 to finish", deadline, || async {
        let last = runs_of(&env, "t49").await;
        if last
            .iter()
            .any(|r| phase(r) == Some(TaskRunPhase::Succeeded) && handed_off(r))
        {
            Ok(())
        } else {
            // How far the chain got, for a failure to say where it stopped.
            let all = runs
                .list(&ListParams::default())
                .await
                .map_err(|e| e.to_string())?
                .items;
            let unfinished: Vec<String> = all
                .iter()
                .filter(|r| phase(r) != Some(TaskRunPhase::Succeeded) || !handed_off(r))
                .map(|r| format!("{} {:?}", r.name_any(), phase(r)))
                .collect();
            Err(format!(
                "{} runs; not finished or handed off: {unfinished:?}",
                all.len()
            ))
        }
    })
    .await;
    let all_runs = runs.list(&ListParams::default()).await.unwrap().items;
    let all_pods = env
        .namespaced::<Pod>()
        .list(&ListParams::default().labels(TASKRUN_LABEL))
        .await
        .unwrap()
        .items;
    for i in 0..50 {
        let name = format!("t{i}");
        let runs_of_task = all_runs.iter().filter(|r| r.spec.task_ref.name == name).count();
        let pods_of_task = all_pods
            .iter()
            .filter(|p| p.labels().get(TASK_LABEL) == Some(&name))
            .count();
        assert_eq!(
            (runs_of_task, pods_of_task),
            (1, 1),
            "{name} ran {runs_of_task} time(s) with {pods_of_task} pod(s)"
        );
    }
    workflow.stop().await;
}

/// Accepts one HTTP request on 127.0.0.1 and hands its body over.
async fn one_post() -> (String, tokio::sync::oneshot::Receiver<serde_json::Value>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut buffer = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = socket.read(&mut chunk).await.unwrap();
            buffer.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buffer).to_string();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>().unwrap())
                    })
                    .unwrap_or(0);
                if body.len() >= length {
                    socket
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                        .await
                        .unwrap();
                    let _ = tx.send(serde_json::from_str(&body[..length]).unwrap());
                    return;
                }
            }
        }
    });
    (url, rx)
}

#[tokio::test]
async fn actions_post_a_notification_emit_an_event_and_annotate_an_object() {
    let env = TestEnv::new().await;
    let _kubelet = PodSimulator::start(env.client.clone(), Some(&env.namespace))
        .await
        .unwrap();
    // The notification goes to the test's own server on 127.0.0.1, which needs an opt-in.
    let (context, stop) = orrery_runtime::Context::standalone(env.client.clone(), task_workflow::controller::NAME);
    let context = context
        .in_namespace(&env.namespace)
        .allowing_egress([orrery_runtime::egress::LOCALHOST]);
    let workflow = InProcess::start_with(context, stop, task_workflow::run);
    let (url, posted) = one_post().await;
    let secret: Secret =
        serde_json::from_value(json!({"metadata": {"name": "hook"}, "stringData": {"url": url}})).unwrap();
    env.namespaced::<Secret>()
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let marker: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "marker"}})).unwrap();
    env.namespaced::<ConfigMap>()
        .create(&PostParams::default(), &marker)
        .await
        .unwrap();
    let spec = json!({
        "template": {"metadata": {"annotations": {pod_simulator::TERMINATION_MESSAGE: "built it"}},
                     "spec": {"containers": [{"name": "main", "image": "busybox"}]}},
        "successActions": [
            {"name": "http-post", "parameters": {"urlFrom": {"secretKeyRef": {"name": "hook", "key": "url"}}, "timeoutSeconds": 5}},
            {"name": "event", "parameters": {"reason": "Built", "message": "$(TASK) said $(MESSAGE)"}},
            {"name": "annotate", "parameters": {"apiVersion": "v1", "kind": "ConfigMap", "name": "marker", "annotations": {"example.com/last-build": "$(TASKRUN)"}}}
        ]
    });
    env.namespaced::<Task>()
        .create(&PostParams::default(), &task("build", spec))
        .await
        .unwrap();
    env.namespaced::<TaskRun>()
        .create(&PostParams::default(), &manual_run("build", "build-1"))
        .await
        .unwrap();
    let run = wait_run(&env, "build-1", TaskRunPhase::Succeeded).await;
    let results = run.status.unwrap().action_results;
    let outcomes: Vec<(&str, &str)> = results.iter().map(|r| (r.name.as_str(), r.outcome.as_str())).collect();
    assert_eq!(
        outcomes,
        [
            ("http-post", "Succeeded"),
            ("event", "Succeeded"),
            ("annotate", "Succeeded")
        ],
        "{results:?}"
    );
    let body = posted.await.unwrap();
    assert_eq!(
        (body["task"].as_str(), body["taskRun"].as_str(), body["phase"].as_str()),
        (Some("build"), Some("build-1"), Some("Succeeded"))
    );
    assert_eq!(body["message"], "built it");
    let events = events_for(&env, "build-1", "Built").await;
    assert_eq!(events[0].note.as_deref(), Some("build said built it"));
    let marker = env.namespaced::<ConfigMap>().get("marker").await.unwrap();
    assert_eq!(
        marker.annotations().get("example.com/last-build").map(String::as_str),
        Some("build-1")
    );
    workflow.stop().await;
}

#[tokio::test]
async fn retries_back_off_and_deadlines_stop_runs() {
    let env = TestEnv::new().await;
    let _kubelet = PodSimulator::start_with(env.client.clone(), Some(&env.namespace), Unannotated::Manual)
        .await
        .unwrap();
    let workflow = start_workflow(&env);
    let tasks = env.namespaced::<Task>();
    let runs = env.namespaced::<TaskRun>();
    let pods = env.namespaced::<Pod>();
    tasks
        .create(
            &PostParams::default(),
            &task("flaky", json!({"retry": {"limit": 2, "backoffSeconds": 3}})),
        )
        .await
        .unwrap();
    tasks
        .create(
            &PostParams::default(),
            &task("slow", json!({"activeDeadlineSeconds": 2})),
        )
        .await
        .unwrap();

    runs.create(&PostParams::default(), &manual_run("flaky", "flaky-1"))
        .await
        .unwrap();
    let mut handled = BTreeSet::new();
    let first = next_running_pod(&env, "flaky", &mut handled).await;
    assert_eq!(first.name_any(), "flaky-1-0");
    pod_simulator::terminate(&pods, "flaky-1-0", 7, Some("first try"))
        .await
        .unwrap();
    let retrying = poll_until("the run to wait for its retry", Deadline::default(), || async {
        let run = runs.get("flaky-1").await.map_err(|e| e.to_string())?;
        match run.status.as_ref().and_then(|s| s.next_attempt_time.clone()) {
            Some(at) => Ok((run, at)),
            None => Err(format!("{:?}", run.status)),
        }
    })
    .await;
    assert_eq!(
        phase(&retrying.0),
        Some(TaskRunPhase::Running),
        "a run waiting to retry has not failed"
    );
    let second = next_running_pod(&env, "flaky", &mut handled).await;
    assert_eq!(second.name_any(), "flaky-1-1");
    assert_eq!(env_of(&second)["ORCA_ATTEMPT"], "1");
    assert!(
        second.creation_timestamp().unwrap().0 >= retrying.1.0,
        "the retry waited out its backoff"
    );
    pod_simulator::terminate(&pods, "flaky-1-1", 0, Some("second try"))
        .await
        .unwrap();
    let done = wait_run(&env, "flaky-1", TaskRunPhase::Succeeded).await;
    assert_eq!(done.status.as_ref().map(|s| s.attempt), Some(1));

    runs.create(&PostParams::default(), &manual_run("slow", "slow-1"))
        .await
        .unwrap();
    let failed = wait_run(&env, "slow-1", TaskRunPhase::Failed).await;
    assert!(failed.status.unwrap().message.unwrap().contains("deadline"));
    poll_until("the slow pod to be deleted", Deadline::default(), || async {
        match pods.get_opt("slow-1-0").await.map_err(|e| e.to_string())? {
            None => Ok(()),
            Some(_) => Err("still there".into()),
        }
    })
    .await;
    workflow.stop().await;
}

#[tokio::test]
async fn a_finished_run_goes_when_its_time_to_live_ends_and_the_task_waits_pending() {
    let env = TestEnv::new().await;
    let _kubelet = PodSimulator::start(env.client.clone(), Some(&env.namespace))
        .await
        .unwrap();
    let workflow = start_workflow(&env);
    let tasks = env.namespaced::<Task>();
    let runs = env.namespaced::<TaskRun>();
    tasks
        .create(
            &PostParams::default(),
            &task("brief", json!({"ttlSecondsAfterFinished": 3})),
        )
        .await
        .unwrap();
    runs.create(&PostParams::default(), &manual_run("brief", "brief-1"))
        .await
        .unwrap();
    let finished = wait_run(&env, "brief-1", TaskRunPhase::Succeeded).await;
    let completed = finished.status.and_then(|s| s.completion_time).unwrap();
    // As ORCA shows it: the task waits for its next trigger; the run's end has its own column.
    poll_until(
        "the task Pending with its success counted",
        Deadline::default(),
        || async {
            let status = tasks
                .get("brief")
                .await
                .map_err(|e| e.to_string())?
                .status
                .unwrap_or_default();
            match (status.state.as_deref(), status.success_count, status.last_success) {
                (Some("Pending"), 1, Some(_)) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    poll_until("the finished run deleted", Deadline::default(), || async {
        match runs.get_opt("brief-1").await.map_err(|e| e.to_string())? {
            None => Ok(()),
            Some(_) => Err("still there".into()),
        }
    })
    .await;
    let gone_after = k8s_openapi::jiff::Timestamp::now().duration_since(completed.0);
    assert!(gone_after.as_secs() >= 3, "deleted {gone_after:?} after it completed");
    let status = task_status(&env, "brief").await;
    assert_eq!((status.success_count, status.state.as_deref()), (1, Some("Pending")));
    workflow.stop().await;
}

#[tokio::test]
async fn concurrency_policies_and_history_limits() {
    let env = TestEnv::new().await;
    let _kubelet = PodSimulator::start_with(env.client.clone(), Some(&env.namespace), Unannotated::Manual)
        .await
        .unwrap();
    let workflow = start_workflow(&env);
    let scheduler = start_scheduler(&env);
    let tasks = env.namespaced::<Task>();
    let runs = env.namespaced::<TaskRun>();
    let pods = env.namespaced::<Pod>();
    let ignitor: Ignitor =
        serde_json::from_value(json!({"metadata": {"name": "go"}, "spec": {"scheduled": "0 0 1 1 *"}})).unwrap();
    env.namespaced::<Ignitor>()
        .create(&PostParams::default(), &ignitor)
        .await
        .unwrap();
    tasks
        .create(
            &PostParams::default(),
            &task(
                "forbid",
                json!({"startOnIgnition": ["go"], "concurrencyPolicy": "Forbid"}),
            ),
        )
        .await
        .unwrap();
    tasks
        .create(
            &PostParams::default(),
            &task(
                "replace",
                json!({"startOnIgnition": ["go"], "concurrencyPolicy": "Replace"}),
            ),
        )
        .await
        .unwrap();
    let fire = |token: &'static str| {
        let api = env.namespaced::<Ignitor>();
        async move {
            let patch = json!({"metadata": {"annotations": {crd_types::workflow::FIRE_ANNOTATION: token}}});
            api.patch("go", &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .unwrap();
        }
    };
    fire("1").await;
    let mut handled = BTreeSet::new();
    next_running_pod(&env, "forbid", &mut handled).await;
    next_running_pod(&env, "replace", &mut handled).await;
    fire("2").await;
    poll_until("forbid to skip and replace to replace", Deadline::default(), || async {
        let skipped = events_for(&env, "forbid", "ConcurrencyForbidden").await;
        let replace_runs = runs_of(&env, "replace").await;
        let cancelled = replace_runs
            .iter()
            .filter(|r| {
                phase(r) == Some(TaskRunPhase::Failed)
                    && r.status
                        .as_ref()
                        .unwrap()
                        .message
                        .as_deref()
                        .unwrap_or("")
                        .contains("replaced")
            })
            .count();
        if !skipped.is_empty() && replace_runs.len() == 2 && cancelled == 1 {
            Ok(())
        } else {
            Err(format!(
                "{} skip events, {} replace runs, {cancelled} cancelled",
                skipped.len(),
                replace_runs.len()
            ))
        }
    })
    .await;
    assert_eq!(runs_of(&env, "forbid").await.len(), 1);

    // History: five runs of a task that keeps two successes; the counts stay whole.
    tasks
        .create(
            &PostParams::default(),
            &task("often", json!({"successfulRunsHistoryLimit": 2})),
        )
        .await
        .unwrap();
    for i in 0..5 {
        runs.create(&PostParams::default(), &manual_run("often", &format!("often-{i}")))
            .await
            .unwrap();
        let pod = next_running_pod(&env, "often", &mut handled).await;
        pod_simulator::terminate(&pods, &pod.name_any(), 0, None).await.unwrap();
        wait_run(&env, &format!("often-{i}"), TaskRunPhase::Succeeded).await;
    }
    poll_until("the history to be pruned to two", Deadline::default(), || async {
        let left = runs_of(&env, "often").await;
        let status = task_status(&env, "often").await;
        if left.len() == 2 && status.success_count == 5 {
            Ok(())
        } else {
            Err(format!("{} runs, {} successes", left.len(), status.success_count))
        }
    })
    .await;
    let mut left: Vec<String> = runs_of(&env, "often").await.iter().map(|r| r.name_any()).collect();
    left.sort();
    assert_eq!(left, ["often-3", "often-4"], "the oldest go first");
    scheduler.stop().await;
    workflow.stop().await;
}

#[tokio::test]
async fn bad_input_is_a_condition_or_a_failed_run_with_the_reason() {
    let env = TestEnv::new().await;
    let _kubelet = PodSimulator::start(env.client.clone(), Some(&env.namespace))
        .await
        .unwrap();
    let workflow = start_workflow(&env);
    let tasks = env.namespaced::<Task>();
    let runs = env.namespaced::<TaskRun>();

    // Triggers that do not exist: the task waits, saying so, until they do.
    tasks
        .create(
            &PostParams::default(),
            &task(
                "waiting",
                json!({"startOnIgnition": ["later"], "startOnSuccess": ["nobody"]}),
            ),
        )
        .await
        .unwrap();
    let message = poll_until("MissingTriggers", Deadline::default(), || async {
        let status = task_status(&env, "waiting").await;
        match crd_types::common::find_condition(&status.conditions, "Ready") {
            Some(c) if c.reason == "MissingTriggers" => Ok(c.message.clone()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert!(
        message.contains("Ignitor later") && message.contains("Task nobody"),
        "{message}"
    );
    tasks
        .create(&PostParams::default(), &task("nobody", json!({})))
        .await
        .unwrap();
    let ignitor: Ignitor =
        serde_json::from_value(json!({"metadata": {"name": "later"}, "spec": {"scheduled": "@yearly"}})).unwrap();
    env.namespaced::<Ignitor>()
        .create(&PostParams::default(), &ignitor)
        .await
        .unwrap();
    poll_until(
        "the task to be Ready once its triggers exist",
        Deadline::default(),
        || async {
            let status = task_status(&env, "waiting").await;
            match crd_types::common::find_condition(&status.conditions, "Ready") {
                Some(c) if c.status == "True" => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;

    // A pod the API server refuses: the run fails with the server's message.
    let bad_pod = json!({"template": {"spec": {"containers": [{"name": "Not_A_DNS_Label", "image": "busybox"}]}}});
    tasks
        .create(&PostParams::default(), &task("bad-pod", bad_pod))
        .await
        .unwrap();
    runs.create(&PostParams::default(), &manual_run("bad-pod", "bad-pod-1"))
        .await
        .unwrap();
    let failed = wait_run(&env, "bad-pod-1", TaskRunPhase::Failed).await;
    let message = failed.status.unwrap().message.unwrap();
    assert!(
        message.contains("the API server rejected the pod") && message.contains("Not_A_DNS_Label"),
        "{message}"
    );

    // A template that is not a pod template at all.
    let not_a_pod = json!({"template": {"spec": {"containers": [{"name": "c", "image": "i"}], "restartPolicy": 5}}});
    tasks
        .create(&PostParams::default(), &task("not-a-pod", not_a_pod))
        .await
        .unwrap();
    runs.create(&PostParams::default(), &manual_run("not-a-pod", "not-a-pod-1"))
        .await
        .unwrap();
    let failed = wait_run(&env, "not-a-pod-1", TaskRunPhase::Failed).await;
    assert!(failed.status.unwrap().message.unwrap().contains("not a pod template"));

    // A run of a task that does not exist waits, and starts once the task appears.
    runs.create(&PostParams::default(), &manual_run("ghost", "ghost-1"))
        .await
        .unwrap();
    poll_until("TaskNotFound", Deadline::default(), || async {
        let run = runs.get("ghost-1").await.map_err(|e| e.to_string())?;
        let status = run.status.clone().unwrap_or_default();
        match crd_types::common::find_condition(&status.conditions, "Ready") {
            Some(c) if c.reason == "TaskNotFound" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    tasks
        .create(&PostParams::default(), &task("ghost", json!({})))
        .await
        .unwrap();
    wait_run(&env, "ghost-1", TaskRunPhase::Succeeded).await;
    workflow.stop().await;
}

#[tokio::test]
async fn a_cel_join_condition_decides_on_the_predecessors_results_and_a_bad_one_is_reported() {
    let env = TestEnv::new().await;
    let _kubelet = PodSimulator::start_with(env.client.clone(), Some(&env.namespace), Unannotated::Manual)
        .await
        .unwrap();
    let workflow = start_workflow(&env);
    let tasks = env.namespaced::<Task>();
    let runs = env.namespaced::<TaskRun>();
    let pods = env.namespaced::<Pod>();
    tasks
        .create(&PostParams::default(), &task("build", json!({})))
        .await
        .unwrap();
    tasks
        .create(&PostParams::default(), &task("test", json!({})))
        .await
        .unwrap();
    let release_when = "predecessors.build.phase == 'Succeeded' && predecessors.test.message == 'all green'";
    let join = json!({"startOnSuccess": ["build", "test"], "join": {"mode": "Condition", "condition": release_when}});
    tasks
        .create(&PostParams::default(), &task("release", join))
        .await
        .unwrap();

    let mut handled = BTreeSet::new();
    for (round, verdict) in [(1, "3 failed"), (2, "all green")] {
        for task in ["build", "test"] {
            runs.create(&PostParams::default(), &manual_run(task, &format!("{task}-{round}")))
                .await
                .unwrap();
            let pod = next_running_pod(&env, task, &mut handled).await;
            let message = if task == "test" { verdict } else { "built" };
            pod_simulator::terminate(&pods, &pod.name_any(), 0, Some(message))
                .await
                .unwrap();
            wait_run(&env, &format!("{task}-{round}"), TaskRunPhase::Succeeded).await;
        }
        let released = runs_of(&env, "release").await;
        assert_eq!(released.len(), round - 1, "round {round}: the condition decides");
    }
    let release = runs_of(&env, "release").await.remove(0);
    assert_eq!(release.spec.data.as_deref(), Some("all green"));

    let bad =
        json!({"startOnSuccess": ["build"], "join": {"mode": "Condition", "condition": "predecessors.build.phase =="}});
    tasks
        .create(&PostParams::default(), &task("broken", bad))
        .await
        .unwrap();
    let (_, reason, message) = poll_until("the bad condition to be reported", Deadline::default(), || async {
        let status = task_status(&env, "broken").await;
        match crd_types::common::find_condition(&status.conditions, "Ready") {
            Some(c) if c.reason == "InvalidJoinCondition" => Ok(condition(&status, "Ready")),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(reason, "InvalidJoinCondition");
    assert!(
        message.contains("predecessors.build.phase ==") && message.contains("1:"),
        "{message}"
    );
    workflow.stop().await;
}

#[tokio::test]
async fn a_tasks_actions_act_only_in_its_own_namespace() {
    let team_a = TestEnv::new().await;
    let team_b = TestEnv::new().await;
    let (a, b) = (team_a.namespace.clone(), team_b.namespace.clone());
    let _kubelet = PodSimulator::start(team_a.client.clone(), Some(&a)).await.unwrap();
    let as_controller = access::as_controller(&team_a, task_workflow::controller::NAME)
        .await
        .unwrap();
    // The operator lets the annotate action patch ConfigMaps, as docs/task-workflow.md says to: with the
    // chart's own rule on TaskRuns, task-workflow may patch both in team B's namespace, so
    // only its own refusal stands between team A's Task and team B's objects.
    let controller_user = access::service_account_user(&a, task_workflow::controller::NAME);
    access::grant(
        &team_a,
        &controller_user,
        None,
        json!([{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["patch"]}]),
    )
    .await
    .unwrap();
    for (group, resource) in [("workflow.orrery.dev", "taskruns"), ("", "configmaps")] {
        assert!(
            access::allowed(&team_a.client, &controller_user, "patch", group, resource, &b)
                .await
                .unwrap(),
            "task-workflow may patch {resource} in {b}"
        );
    }
    let workflow = InProcess::start(as_controller, &a, task_workflow::controller::NAME, task_workflow::run);

    // Team B's objects, and team A's ConfigMap for the legitimate use.
    let settings: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "settings", "labels": {"team": "b"}}})).unwrap();
    team_b
        .namespaced::<ConfigMap>()
        .create(&PostParams::default(), &settings)
        .await
        .unwrap();
    team_b
        .namespaced::<TaskRun>()
        .create(&PostParams::default(), &manual_run("deploy", "deploy-1"))
        .await
        .unwrap();
    let b_before = (
        team_b.namespaced::<ConfigMap>().get("settings").await.unwrap(),
        team_b.namespaced::<TaskRun>().get("deploy-1").await.unwrap(),
    );
    let marker: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "marker"}})).unwrap();
    team_a
        .namespaced::<ConfigMap>()
        .create(&PostParams::default(), &marker)
        .await
        .unwrap();

    // Someone allowed only to create Tasks in team A's namespace.
    let author = format!("{a}-author");
    access::grant(
        &team_a,
        &author,
        Some(&a),
        json!([{"apiGroups": ["workflow.orrery.dev"], "resources": ["tasks"], "verbs": ["create"]}]),
    )
    .await
    .unwrap();
    let as_author = access::client_as(&team_a, &author).unwrap();
    let spec = json!({"successActions": [
        {"name": "annotate", "parameters": {"apiVersion": "workflow.orrery.dev/v1alpha1", "kind": "TaskRun", "name": "deploy-1", "namespace": b,
            "annotations": {crd_types::workflow::CANCEL_ANNOTATION: "taken over"}}},
        {"name": "annotate", "parameters": {"apiVersion": "v1", "kind": "ConfigMap", "name": "settings", "namespace": b, "labels": {"team": "a"}}},
        {"name": "annotate", "parameters": {"apiVersion": "v1", "kind": "Namespace", "name": b, "labels": {"team": "a"}}},
        {"name": "annotate", "parameters": {"apiVersion": "workflow.orrery.dev/v1alpha1", "kind": "TaskRun", "name": "$(TASKRUN)",
            "annotations": {crd_types::workflow::CANCEL_ANNOTATION: "by an action"}}},
        {"name": "annotate", "parameters": {"apiVersion": "v1", "kind": "ConfigMap", "name": "marker", "labels": {"built-by": "$(TASKRUN)"}}}
    ]});
    Api::<Task>::namespaced(as_author, &a)
        .create(&PostParams::default(), &task("reach", spec))
        .await
        .unwrap();
    // A teammate runs it.
    team_a
        .namespaced::<TaskRun>()
        .create(&PostParams::default(), &manual_run("reach", "reach-1"))
        .await
        .unwrap();
    let run = wait_run(&team_a, "reach-1", TaskRunPhase::Succeeded).await;
    let results = run.status.clone().unwrap().action_results;
    let outcomes: Vec<(&str, &str)> = results.iter().map(|r| (r.name.as_str(), r.outcome.as_str())).collect();
    assert_eq!(
        outcomes,
        [
            ("annotate", "Failed"),
            ("annotate", "Failed"),
            ("annotate", "Failed"),
            ("annotate", "Failed"),
            ("annotate", "Succeeded")
        ],
        "{results:?}"
    );
    let message = |i: usize| results[i].message.clone().unwrap_or_default();
    let elsewhere =
        format!("namespace {b:?} is not the run's namespace {a:?}: annotate acts only in the run's namespace");
    assert_eq!(message(0), elsewhere);
    assert_eq!(message(1), elsewhere);
    assert!(message(2).starts_with("Namespace is cluster-scoped"), "{}", message(2));
    assert!(
        message(3).starts_with("annotate does not act on workflow.orrery.dev objects (TaskRun)"),
        "{}",
        message(3)
    );
    assert!(
        !run.annotations().contains_key(crd_types::workflow::CANCEL_ANNOTATION),
        "{:?}",
        run.annotations()
    );

    // Team B's objects are as they were.
    let settings = team_b.namespaced::<ConfigMap>().get("settings").await.unwrap();
    assert_eq!(settings.resource_version(), b_before.0.resource_version());
    assert_eq!(settings.labels().get("team").map(String::as_str), Some("b"));
    let deploy = team_b.namespaced::<TaskRun>().get("deploy-1").await.unwrap();
    assert_eq!(deploy.resource_version(), b_before.1.resource_version());
    assert!(
        !deploy
            .annotations()
            .contains_key(crd_types::workflow::CANCEL_ANNOTATION)
    );
    let namespace = Api::<k8s_openapi::api::core::v1::Namespace>::all(team_a.client.clone())
        .get(&b)
        .await
        .unwrap();
    assert_eq!(namespace.labels().get("team"), None);
    // The legitimate use still works: team A's own ConfigMap.
    let marker = team_a.namespaced::<ConfigMap>().get("marker").await.unwrap();
    assert_eq!(marker.labels().get("built-by").map(String::as_str), Some("reach-1"));
    // The refusals are also a Warning Event on the run: the first one's note, counted four
    // times (one Event series per reason).
    let first_refusal = format!("action annotate failed: {elsewhere}");
    poll_until("the ActionFailed Event", Deadline::default(), || async {
        let events = events_for(&team_a, "reach-1", "ActionFailed").await;
        let seen: Vec<(Option<String>, Option<String>, Option<i32>)> = events
            .iter()
            .map(|e| (e.type_.clone(), e.note.clone(), e.series.as_ref().map(|s| s.count)))
            .collect();
        if seen == [(Some("Warning".into()), Some(first_refusal.clone()), Some(4))] {
            Ok(())
        } else {
            Err(format!("{seen:?}"))
        }
    })
    .await;
    workflow.stop().await;
}

/// A task-workflow that may not create pods (an RBAC rule missing, or an API server just
/// restarted that has not loaded it yet) keeps the run waiting and says why on it; once the
/// rule is there the run goes on. A missing permission is not the run's failure.
#[tokio::test]
async fn a_run_waits_while_pods_may_not_be_created_and_goes_on_once_they_may() {
    let env = TestEnv::new().await;
    let _kubelet = PodSimulator::start(env.client.clone(), Some(&env.namespace))
        .await
        .unwrap();
    let user = format!("{}-workflow-without-pods", env.namespace);
    access::grant(
        &env,
        &user,
        None,
        json!([
            {"apiGroups": ["workflow.orrery.dev"], "resources": ["tasks", "ignitors", "taskruns"], "verbs": ["get", "list", "watch", "create", "patch", "delete"]},
            {"apiGroups": ["workflow.orrery.dev"], "resources": ["tasks/status", "taskruns/status"], "verbs": ["patch"]},
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch", "delete"]},
            {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
        ]),
    )
    .await
    .unwrap();
    let client = access::client_as(&env, &user).unwrap();
    let workflow = InProcess::start(
        client,
        &env.namespace,
        task_workflow::controller::NAME,
        task_workflow::run,
    );
    env.namespaced::<Task>()
        .create(&PostParams::default(), &task("unpermitted", json!({})))
        .await
        .unwrap();
    env.namespaced::<TaskRun>()
        .create(&PostParams::default(), &manual_run("unpermitted", "unpermitted-1"))
        .await
        .unwrap();
    let runs = env.namespaced::<TaskRun>();
    poll_until(
        "the run to say it cannot create its pod",
        Deadline::default(),
        || async {
            let run = runs.get("unpermitted-1").await.map_err(|e| e.to_string())?;
            let status = run.status.clone().unwrap_or_default();
            assert_ne!(
                status.phase,
                Some(TaskRunPhase::Failed),
                "a missing permission failed the run: {status:?}"
            );
            match crd_types::common::find_condition(&status.conditions, orrery_runtime::failures::RECONCILE_FAILED) {
                Some(c) if c.message.contains("cannot create resource \"pods\"") => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;

    access::grant(
        &env,
        &user,
        Some(&env.namespace),
        json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["create"]}]),
    )
    .await
    .unwrap();
    wait_run(&env, "unpermitted-1", TaskRunPhase::Succeeded).await;
    workflow.stop().await;
}
