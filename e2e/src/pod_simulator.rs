//! A pod simulator playing the kubelet's part, since no kubelet runs in the test control plane.
//!
//! It binds pending pods to a simulated node and writes their status the way a kubelet does:
//! `Pending` → `Running` (container started, pod Ready) → `Succeeded`/`Failed` with the
//! container's exit code and `terminationMessage`; and it finishes graceful deletions.
//! A pod says what its "container" does through annotations:
//!
//! | annotation | meaning | default |
//! |---|---|---|
//! | `sim.orrery.dev/outcome` | `Succeeded`, `Failed`, `Running` (stay running), `Pending` (never start), `Manual` (run until [`terminate`] is called) | `Running` for `restartPolicy: Always`, else `Succeeded` |
//! | `sim.orrery.dev/exit-code` | exit code | `0`, or `1` for `Failed` |
//! | `sim.orrery.dev/termination-message` | what the container wrote to its termination log; `$(VAR)` expands from the first container's env | none |
//! | `sim.orrery.dev/run-millis` | how long the container runs | `0` |

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Binding, Node, ObjectReference, Pod};
use kube::api::{DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, watcher};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use tokio::task::JoinHandle;

/// The node simulated pods are bound to.
pub const NODE_NAME: &str = "orrery-simulated-node";
/// What the container does.
pub const OUTCOME: &str = "sim.orrery.dev/outcome";
/// The container's exit code.
pub const EXIT_CODE: &str = "sim.orrery.dev/exit-code";
/// The container's termination message.
pub const TERMINATION_MESSAGE: &str = "sim.orrery.dev/termination-message";
/// How long the container runs.
pub const RUN_MILLIS: &str = "sim.orrery.dev/run-millis";

/// The next thing a kubelet would do for a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Finish a graceful deletion (the kubelet's final delete with grace 0).
    FinishDeletion,
    /// Bind the pod to the simulated node (the scheduler's part).
    Bind,
    /// Start the containers: phase Running, pod Ready.
    Start,
    /// The container exits after `after`.
    Terminate {
        /// Exit code.
        exit_code: i32,
        /// Termination message.
        message: Option<String>,
        /// How long it runs first.
        after: Duration,
    },
}

/// What a run-to-completion pod without an outcome annotation does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unannotated {
    /// Exit 0 at once.
    Succeed,
    /// Run until the test calls [`terminate`].
    Manual,
}

/// Decides the next step for a pod, from the pod alone (the simulator's pure core).
pub fn next_step(pod: &Pod) -> Option<Step> {
    next_step_with(pod, Unannotated::Succeed)
}

/// [`next_step`], with `default` for run-to-completion pods that carry no outcome annotation.
pub fn next_step_with(pod: &Pod, default: Unannotated) -> Option<Step> {
    let spec = pod.spec.as_ref()?;
    // A pod bound to a real node is its kubelet's, deletion and all.
    if spec.node_name.as_deref().is_some_and(|node| node != NODE_NAME) {
        return None;
    }
    if pod.metadata.deletion_timestamp.is_some() {
        return Some(Step::FinishDeletion);
    }
    if spec.node_name.is_none() {
        return Some(Step::Bind);
    }
    let annotations = pod.annotations();
    let outcome =
        annotations
            .get(OUTCOME)
            .map(String::as_str)
            .unwrap_or_else(|| match spec.restart_policy.as_deref() {
                Some("Never") | Some("OnFailure") if default == Unannotated::Manual => "Manual",
                Some("Never") | Some("OnFailure") => "Succeeded",
                _ => "Running",
            });
    let phase = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending");
    match (phase, outcome) {
        ("Succeeded" | "Failed", _) => None,
        (_, "Pending") => None,
        ("Pending", _) => Some(Step::Start),
        ("Running", "Succeeded" | "Failed") => {
            let default_code = if outcome == "Failed" { 1 } else { 0 };
            let exit_code = annotations
                .get(EXIT_CODE)
                .and_then(|c| c.parse().ok())
                .unwrap_or(default_code);
            let after = Duration::from_millis(annotations.get(RUN_MILLIS).and_then(|m| m.parse().ok()).unwrap_or(0));
            let message = annotations.get(TERMINATION_MESSAGE).map(|m| expand_env(m, pod));
            Some(Step::Terminate {
                exit_code,
                message,
                after,
            })
        }
        _ => None,
    }
}

/// Expands `$(VAR)` from the first container's literal env, as the kubelet expands commands.
fn expand_env(template: &str, pod: &Pod) -> String {
    let env: BTreeMap<String, String> = pod
        .spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.env.clone())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|e| e.value.map(|v| (e.name, v)))
        .collect();
    let mut out = template.to_owned();
    for (name, value) in &env {
        out = out.replace(&format!("$({name})"), value);
    }
    out
}

/// A running pod simulator; stops when dropped.
#[derive(Debug)]
pub struct PodSimulator {
    task: JoinHandle<()>,
}

impl Drop for PodSimulator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl PodSimulator {
    /// Simulates the kubelet for pods in `namespace` (all namespaces when `None`).
    pub async fn start(client: Client, namespace: Option<&str>) -> anyhow::Result<Self> {
        Self::start_with(client, namespace, Unannotated::Succeed).await
    }

    /// As [`start`](Self::start), with `default` for run-to-completion pods without an outcome
    /// annotation: [`Unannotated::Manual`] lets a test decide how each one ends.
    pub async fn start_with(client: Client, namespace: Option<&str>, default: Unannotated) -> anyhow::Result<Self> {
        ensure_node(&client).await?;
        let pods: Api<Pod> = match namespace {
            Some(ns) => Api::namespaced(client, ns),
            None => Api::all(client),
        };
        let in_flight = Arc::new(Mutex::new(HashSet::new()));
        let task = tokio::spawn(async move {
            let stream = watcher(pods.clone(), watcher::Config::default())
                .default_backoff()
                .applied_objects();
            // A watch error (the API server away) is retried with backoff by the watcher; the
            // simulator goes on, as a kubelet does.
            stream
                .for_each(|pod| {
                    if let Ok(pod) = pod
                        && let Some(step) = next_step_with(&pod, default)
                    {
                        act(pods.clone(), pod, step, in_flight.clone(), default);
                    }
                    std::future::ready(())
                })
                .await;
        });
        Ok(Self { task })
    }
}

/// How long a step that failed (the API server away or refusing) waits before it is tried again.
const RETRY_PAUSE: Duration = Duration::from_millis(500);

fn act(pods: Api<Pod>, pod: Pod, step: Step, in_flight: Arc<Mutex<HashSet<(String, String)>>>, default: Unannotated) {
    let key = (pod.namespace().unwrap_or_default(), pod.name_any());
    let claim = |in_flight: &Mutex<HashSet<(String, String)>>, key: &(String, String)| {
        in_flight.lock().map(|mut set| set.insert(key.clone())).unwrap_or(false)
    };
    // One worker per pod: events that arrive while it works are covered by its re-read below.
    if !claim(&in_flight, &key) {
        return;
    }
    let pods: Api<Pod> = Api::namespaced(pods.into_client(), &key.0);
    tokio::spawn(async move {
        let (mut pod, mut step) = (pod, step);
        loop {
            if let Err(err) = perform(&pods, &pod, step).await {
                tracing::debug!(pod = %key.1, error = %err, "pod simulator step failed; trying again");
                // As a kubelet syncs its pods again later: the API server may be away a while.
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            if let Ok(mut set) = in_flight.lock() {
                set.remove(&key);
            }
            // Release, then look again: an event skipped while we worked is not lost.
            let mut tries = 0;
            let latest = loop {
                match pods.get_opt(&key.1).await {
                    Ok(Some(latest)) => break latest,
                    Ok(None) => return,
                    // Two minutes without an answer: the control plane is gone for good.
                    Err(_) if tries >= 240 => return,
                    Err(_) => tries += 1,
                }
                tokio::time::sleep(RETRY_PAUSE).await;
            };
            match next_step_with(&latest, default) {
                Some(next) if claim(&in_flight, &key) => (pod, step) = (latest, next),
                _ => return,
            }
        }
    });
}

async fn perform(pods: &Api<Pod>, pod: &Pod, step: Step) -> Result<(), kube::Error> {
    let name = pod.name_any();
    match step {
        Step::FinishDeletion => pods
            .delete(&name, &DeleteParams::default().grace_period(0))
            .await
            .map(|_| ()),
        Step::Bind => bind(pods, pod).await,
        Step::Start => start(pods, pod).await,
        Step::Terminate {
            exit_code,
            message,
            after,
        } => {
            tokio::time::sleep(after).await;
            terminate(pods, &name, exit_code, message.as_deref()).await
        }
    }
}

async fn ensure_node(client: &Client) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": NODE_NAME, "labels": {"kubernetes.io/hostname": NODE_NAME, "orrery.dev/simulated": "true"}},
    }))?;
    match nodes.create(&PostParams::default(), &node).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(err) => return Err(err.into()),
    }
    let status = json!({"status": {
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "simulated kubelet is posting ready status"}],
        "nodeInfo": {"kubeletVersion": "simulated"}
    }});
    nodes
        .patch_status(NODE_NAME, &PatchParams::default(), &Patch::Merge(&status))
        .await?;
    Ok(())
}

async fn bind(pods: &Api<Pod>, pod: &Pod) -> Result<(), kube::Error> {
    let binding = Binding {
        metadata: ObjectMeta {
            name: Some(pod.name_any()),
            namespace: pod.namespace(),
            ..ObjectMeta::default()
        },
        target: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(NODE_NAME.into()),
            ..ObjectReference::default()
        },
    };
    pods.create_subresource::<Binding, serde_json::Value>("binding", &pod.name_any(), &PostParams::default(), &binding)
        .await
        .map(|_| ())
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .round(k8s_openapi::jiff::Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

fn container_id(pod: &str, container: &str) -> String {
    format!("simulated://{pod}/{container}")
}

async fn start(pods: &Api<Pod>, pod: &Pod) -> Result<(), kube::Error> {
    let name = pod.name_any();
    let time = now();
    let containers: Vec<serde_json::Value> = pod
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .map(|c| {
            json!({
                "name": c.name,
                "image": c.image.clone().unwrap_or_default(),
                "imageID": format!("simulated://{}", c.image.clone().unwrap_or_default()),
                "containerID": container_id(&name, &c.name),
                "ready": true,
                "started": true,
                "restartCount": 0,
                "state": {"running": {"startedAt": time}},
            })
        })
        .collect();
    let status = json!({"status": {
        "phase": "Running",
        "hostIP": "127.0.0.1",
        "podIP": "127.0.0.1",
        "startTime": time,
        "conditions": [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": time},
            {"type": "Initialized", "status": "True", "lastTransitionTime": time},
            {"type": "ContainersReady", "status": "True", "lastTransitionTime": time},
            {"type": "Ready", "status": "True", "lastTransitionTime": time},
        ],
        "containerStatuses": containers,
    }});
    pods.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .map(|_| ())
}

/// Makes a running pod's containers crash-loop, as the kubelet reports it: not ready, restarted,
/// waiting in `CrashLoopBackOff` after exiting 1. The simulator leaves such a pod as it is.
pub async fn crash_loop(pods: &Api<Pod>, name: &str) -> Result<(), kube::Error> {
    let pod = pods.get(name).await?;
    let time = now();
    let waiting = json!({"waiting": {"reason": "CrashLoopBackOff", "message": "back-off restarting failed container"}});
    let exited = json!({"terminated": {"exitCode": 1, "reason": "Error", "finishedAt": time}});
    report_running(pods, &pod, &time, false, 3, &waiting, &exited).await
}

/// Restarts a running pod's containers once, as the kubelet reports a container that exited
/// and came back: not ready with the restart counted, then running and ready again.
pub async fn restart(pods: &Api<Pod>, name: &str) -> Result<(), kube::Error> {
    let pod = pods.get(name).await?;
    let time = now();
    let restarts = pod
        .status
        .iter()
        .flat_map(|s| s.container_statuses.iter().flatten())
        .map(|c| c.restart_count)
        .max()
        .unwrap_or(0)
        + 1;
    let killed = json!({"terminated": {"exitCode": 137, "reason": "Error", "finishedAt": time}});
    let creating = json!({"waiting": {"reason": "ContainerCreating"}});
    report_running(pods, &pod, &time, false, restarts, &creating, &killed).await?;
    let running = json!({"running": {"startedAt": time}});
    report_running(pods, &pod, &time, true, restarts, &running, &killed).await
}

/// Writes a running pod's readiness and every container's status with `restarts`, `state` and
/// `last_state`, as the kubelet reports them.
async fn report_running(
    pods: &Api<Pod>,
    pod: &Pod,
    time: &str,
    ready: bool,
    restarts: i32,
    state: &serde_json::Value,
    last_state: &serde_json::Value,
) -> Result<(), kube::Error> {
    let name = pod.name_any();
    let containers: Vec<serde_json::Value> = pod
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .map(|c| {
            json!({
                "name": c.name,
                "image": c.image.clone().unwrap_or_default(),
                "imageID": format!("simulated://{}", c.image.clone().unwrap_or_default()),
                "containerID": container_id(&name, &c.name),
                "ready": ready,
                "started": ready,
                "restartCount": restarts,
                "state": state,
                "lastState": last_state,
            })
        })
        .collect();
    let readiness = if ready {
        json!({"status": "True", "lastTransitionTime": time})
    } else {
        json!({"status": "False", "reason": "ContainersNotReady", "lastTransitionTime": time})
    };
    let condition = |type_: &str| {
        let mut condition = readiness.clone();
        condition["type"] = json!(type_);
        condition
    };
    let status = json!({"status": {
        "conditions": [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": time},
            {"type": "Initialized", "status": "True", "lastTransitionTime": time},
            condition("ContainersReady"),
            condition("Ready"),
        ],
        "containerStatuses": containers,
    }});
    pods.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .map(|_| ())
}

/// Ends a pod's containers as the kubelet reports it: the first container exits with
/// `exit_code` and `message` as its termination message; the pod becomes Succeeded (all
/// exited 0) or Failed. Use it for pods annotated `sim.orrery.dev/outcome: Manual`.
pub async fn terminate(pods: &Api<Pod>, name: &str, exit_code: i32, message: Option<&str>) -> Result<(), kube::Error> {
    let pod = pods.get(name).await?;
    let time = now();
    let started = pod
        .status
        .as_ref()
        .and_then(|s| s.start_time.as_ref())
        .map(|t| t.0.to_string())
        .unwrap_or_else(|| time.clone());
    // The kubelet caps termination messages at 4096 bytes.
    let message = message.map(|m| truncate(m, 4096));
    let containers: Vec<serde_json::Value> = pod
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .enumerate()
        .map(|(i, c)| {
            let code = if i == 0 { exit_code } else { 0 };
            let mut terminated = json!({
                "exitCode": code,
                "reason": if code == 0 { "Completed" } else { "Error" },
                "startedAt": started,
                "finishedAt": time,
                "containerID": container_id(name, &c.name),
            });
            if let (0, Some(message)) = (i, message.as_deref()) {
                terminated["message"] = json!(message);
            }
            json!({
                "name": c.name,
                "image": c.image.clone().unwrap_or_default(),
                "imageID": format!("simulated://{}", c.image.clone().unwrap_or_default()),
                "containerID": container_id(name, &c.name),
                "ready": false,
                "started": false,
                "restartCount": 0,
                "state": {"terminated": terminated},
            })
        })
        .collect();
    let phase = if exit_code == 0 { "Succeeded" } else { "Failed" };
    let status = json!({"status": {
        "phase": phase,
        "conditions": [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": started},
            {"type": "Initialized", "status": "True", "lastTransitionTime": started},
            {"type": "ContainersReady", "status": "False", "reason": "PodCompleted", "lastTransitionTime": time},
            {"type": "Ready", "status": "False", "reason": "PodCompleted", "lastTransitionTime": time},
        ],
        "containerStatuses": containers,
    }});
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .map(|_| ())
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(value: serde_json::Value) -> Pod {
        serde_json::from_value(value).expect("pod fixture")
    }

    #[test]
    fn unbound_pods_are_bound_first() {
        let p = pod(json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c"}]}}));
        assert_eq!(next_step(&p), Some(Step::Bind));
    }

    #[test]
    fn bound_pending_pods_start() {
        let p = pod(json!({"metadata": {"name": "p"}, "spec": {"nodeName": NODE_NAME, "containers": [{"name": "c"}]}}));
        assert_eq!(next_step(&p), Some(Step::Start));
    }

    #[test]
    fn run_to_completion_pods_terminate_with_annotations() {
        let p = pod(json!({
            "metadata": {"name": "p", "annotations": {OUTCOME: "Failed", EXIT_CODE: "3", TERMINATION_MESSAGE: "got $(ORCA_DATA)"}},
            "spec": {"nodeName": NODE_NAME, "restartPolicy": "Never", "containers": [{"name": "c", "env": [{"name": "ORCA_DATA", "value": "42"}]}]},
            "status": {"phase": "Running"}
        }));
        assert_eq!(
            next_step(&p),
            Some(Step::Terminate {
                exit_code: 3,
                message: Some("got 42".into()),
                after: Duration::ZERO
            })
        );
    }

    #[test]
    fn long_running_pods_stay_running_and_finished_pods_rest() {
        let running = pod(
            json!({"metadata": {"name": "p"}, "spec": {"nodeName": NODE_NAME, "containers": [{"name": "c"}]}, "status": {"phase": "Running"}}),
        );
        assert_eq!(next_step(&running), None);
        let done = pod(
            json!({"metadata": {"name": "p"}, "spec": {"nodeName": NODE_NAME, "restartPolicy": "Never", "containers": [{"name": "c"}]}, "status": {"phase": "Succeeded"}}),
        );
        assert_eq!(next_step(&done), None);
    }

    #[test]
    fn deleted_pods_are_finished_off() {
        let p = pod(
            json!({"metadata": {"name": "p", "deletionTimestamp": "2026-01-01T00:00:00Z"}, "spec": {"nodeName": NODE_NAME, "containers": [{"name": "c"}]}}),
        );
        assert_eq!(next_step(&p), Some(Step::FinishDeletion));
    }

    #[test]
    fn pods_of_a_real_node_are_left_alone() {
        let p = pod(
            json!({"metadata": {"name": "p", "deletionTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"nodeName": "orrery-node", "restartPolicy": "Never", "containers": [{"name": "c"}]}}),
        );
        assert_eq!(next_step(&p), None);
        let p =
            pod(json!({"metadata": {"name": "p"}, "spec": {"nodeName": "orrery-node", "containers": [{"name": "c"}]}}));
        assert_eq!(next_step(&p), None);
    }

    #[test]
    fn messages_are_capped_like_the_kubelet_does() {
        assert_eq!(truncate(&"é".repeat(3000), 4096).len(), 4096);
        assert_eq!(truncate("short", 4096), "short");
    }
}
