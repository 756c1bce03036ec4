//! TaskRun reconcile: create the attempt's pod, follow it into the run's status, and once the
//! run finished run its actions and start the Tasks it triggers.

use std::sync::Arc;
use std::time::Duration;

use crd_types::workflow::{Task, TaskRun, TaskRunPhase};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};

use super::task::{cancel, create_run, publish};
use orrery_runtime::{apply_status, delete_if_exists, requeue_at};

use super::{Error, NAME, Read, State};
use crate::actions::ActionContext;
use crate::handoff::{JOIN_CONDITION_ERROR, Successor, successors};
use crate::naming::pod_name;
use crate::run_plan::{RunView, plan_run, rejected};

pub(crate) async fn reconcile(run: Arc<TaskRun>, state: Arc<State>) -> Result<Action, Error> {
    state
        .context
        .reconcile("taskrun", run.as_ref(), reconcile_run(&run, &state))
        .await
}

pub(crate) fn error_policy(run: Arc<TaskRun>, error: &Error, state: Arc<State>) -> Action {
    state.context.error_policy("taskrun", run.as_ref(), error)
}

async fn reconcile_run(run: &TaskRun, state: &State) -> Result<Action, Error> {
    if !state.synced() {
        return Ok(Action::requeue(super::SYNC_RETRY));
    }
    let key = ObjectRef::from_obj(run);
    if awaits_own_write(state, &key, run) {
        return Ok(Action::await_change());
    }
    // A run that has handed off is history: nothing more to do (and it is cached slimmed).
    if run.status.as_ref().is_some_and(|s| s.handed_off) {
        return Ok(Action::await_change());
    }
    let namespace = run.namespace().unwrap_or_default();
    let task = state.task(&namespace, &run.spec.task_ref.name, Read::InUse).await?;
    let attempt = run.status.as_ref().map(|s| s.attempt).unwrap_or(0);
    let pod = state
        .pods
        .get(&ObjectRef::new(&pod_name(&run.name_any(), attempt)).within(&namespace));
    let now = Timestamp::now();
    let plan = plan_run(&RunView {
        now,
        run,
        task: task.as_deref(),
        pod: pod.as_deref(),
    });
    let mut status = plan.status;
    let pods: Api<Pod> = Api::namespaced(state.context.client.clone(), &namespace);

    if let Some(name) = &plan.delete_pod {
        delete_if_exists(&pods, name, &DeleteParams::background())
            .await
            .map_err(Error::Pod)?;
    }
    if let Some(pod) = &plan.create_pod {
        match pods.create(&PostParams::default(), pod).await {
            Ok(_) => {}
            Err(kube::Error::Api(response)) if response.code == 409 => {}
            // Not allowed to create pods: RBAC may grant it later (or an API server just
            // restarted has not loaded it yet), so this is tried again, not the run failed.
            Err(kube::Error::Api(response))
                if response.code == 403 && orrery_runtime::failures::is_rbac_denial(&response.message) =>
            {
                return Err(Error::api(Error::Pod, format!("creating pod {}", pod.name_any()))(
                    kube::Error::Api(response),
                ));
            }
            // The API server refused the pod (invalid, forbidden, over quota): the run fails
            // with its message rather than retrying what cannot work.
            Err(kube::Error::Api(response)) if matches!(response.code, 400 | 403 | 422) => {
                status = rejected(
                    status,
                    run,
                    now,
                    format!("the API server rejected the pod: {}", response.message),
                );
            }
            Err(source) => {
                return Err(Error::api(Error::Pod, format!("creating pod {}", pod.name_any()))(
                    source,
                ));
            }
        }
    }
    // A run that finished hands off in the next reconcile, once its final status is visible
    // to concurrent hand-offs (a join must see every predecessor's result). Without a joining
    // successor nothing needs to see it first, so the hand-off shares this write.
    let hand_off_now =
        plan.hand_off || (plan.finished_now && !state.triggers.joined_after(&namespace, &run.spec.task_ref.name));
    let uid = run.uid().unwrap_or_default();
    if hand_off_now {
        let mut finished = run.clone();
        finished.status = Some(status.clone());
        if let Some(task) = &task {
            let ran = state.action_results.lock().get(&uid).cloned();
            status.action_results = match ran {
                Some(results) => results,
                None => {
                    let results = run_actions(state, &finished, task).await;
                    state.action_results.lock().insert(uid.clone(), results.clone());
                    results
                }
            };
        }
        hand_off(state, &finished, &namespace).await?;
        status.handed_off = true;
    }
    if Some(&status) != run.status.as_ref() {
        apply_status(
            &Api::<TaskRun>::namespaced(state.context.client.clone(), &namespace),
            NAME,
            run,
            &status,
        )
        .await
        .map_err(Error::Status)?;
        if let Some(version) = run.resource_version() {
            state.run_written_over.lock().insert(key, version);
        }
    }
    if hand_off_now {
        state.action_results.lock().remove(&uid);
    }
    Ok(match plan.wake_at {
        Some(at) => requeue_at(at),
        // The Task's arrival triggers this run too; look again now and then all the same.
        None if task.is_none() => Action::requeue(Duration::from_secs(5)),
        None => Action::await_change(),
    })
}

/// Whether `run` is still cached at the version our last status write of it replaced: that
/// copy is stale, and the write's own event reconciles it again. Once the cache has moved on,
/// the write is forgotten.
fn awaits_own_write(state: &State, key: &ObjectRef<TaskRun>, run: &TaskRun) -> bool {
    let mut written_over = state.run_written_over.lock();
    let version = run.resource_version();
    if written_over
        .get(key)
        .is_some_and(|written| version.as_ref() == Some(written))
    {
        return true;
    }
    written_over.remove(key);
    false
}

async fn run_actions(state: &State, run: &TaskRun, task: &Task) -> Vec<crd_types::workflow::ActionResult> {
    let actions = match run.status.as_ref().and_then(|s| s.phase) {
        Some(TaskRunPhase::Succeeded) => &task.spec.success_actions,
        _ => &task.spec.failure_actions,
    };
    if actions.is_empty() {
        return vec![];
    }
    let context = ActionContext {
        client: &state.context.client,
        recorder: &state.context.recorder,
        http: &state.http,
        run,
        task,
    };
    let results = state.actions.run_all(&context, actions).await;
    for result in results.iter().filter(|r| r.outcome != "Succeeded") {
        let note = format!(
            "action {} {}: {}",
            result.name,
            result.outcome.to_lowercase(),
            result.message.clone().unwrap_or_default()
        );
        publish(state, &run.object_ref(&()), true, "ActionFailed", note).await;
    }
    results
}

/// How many times a hand-off reads its Tasks and runs again when runs went meanwhile.
const HAND_OFF_READS: usize = 3;

/// Starts every Task the finished `run` triggers.
async fn hand_off(state: &State, run: &TaskRun, namespace: &str) -> Result<(), Error> {
    let names = state.triggers.started_after(namespace, &run.spec.task_ref.name);
    if names.is_empty() {
        return Ok(());
    }
    // A Task's status counts the runs it pruned. Runs read before the Task hold every run it
    // had not counted yet (the loop guard must not run over); runs read after it hold none it
    // counted and saw deleted (the guard must not stop short). When no run of these Tasks went
    // in between, the runs read after are both; else read again, and in the end keep the
    // first kind of error.
    let runs_in_namespace = || -> Vec<Arc<TaskRun>> {
        state
            .runs
            .state()
            .into_iter()
            .filter(|r| r.namespace().as_deref() == Some(namespace))
            .collect()
    };
    let mut before = runs_in_namespace();
    let mut reads = 0;
    let (runs, tasks) = loop {
        let mut tasks = Vec::new();
        for name in &names {
            tasks.extend(state.task(namespace, name, Read::Fresh).await?);
        }
        let after = runs_in_namespace();
        reads += 1;
        let none_went = before
            .iter()
            .filter(|r| names.contains(&r.spec.task_ref.name))
            .all(|r| after.iter().any(|a| a.metadata.uid == r.metadata.uid));
        if none_went {
            break (after, tasks);
        }
        if reads == HAND_OFF_READS {
            break (before, tasks);
        }
        before = after;
    };
    if tasks.is_empty() {
        return Ok(());
    }
    let mut involved: Vec<&str> = tasks
        .iter()
        .flat_map(|t| {
            t.spec
                .start_on_success
                .iter()
                .chain(&t.spec.start_on_failure)
                .map(String::as_str)
        })
        .collect();
    let names: Vec<String> = tasks.iter().map(|t| t.name_any()).collect();
    involved.extend(names.iter().map(String::as_str));
    let runs: Vec<Arc<TaskRun>> = runs
        .into_iter()
        .filter(|r| involved.contains(&r.spec.task_ref.name.as_str()))
        .collect();
    let run_refs: Vec<&TaskRun> = runs.iter().map(Arc::as_ref).collect();
    let task_refs: Vec<&Task> = tasks.iter().map(Arc::as_ref).collect();
    let api: Api<TaskRun> = Api::namespaced(state.context.client.clone(), namespace);
    for successor in successors(run, &task_refs, &run_refs, &state.joins) {
        match successor {
            Successor::Start {
                run: next,
                cancel: stale,
            } => {
                for name in &stale {
                    cancel(&api, name, "replaced by a newer run (concurrencyPolicy: Replace)").await?;
                }
                create_run(&api, &next).await?;
            }
            Successor::Waiting { .. } => {}
            Successor::Skipped { task, reason, message } => {
                if let Some(successor) = tasks.iter().find(|t| t.name_any() == task) {
                    let note = format!("{} did not start {task}: {message}", run.name_any());
                    publish(
                        state,
                        &successor.object_ref(&()),
                        reason == JOIN_CONDITION_ERROR,
                        reason,
                        note,
                    )
                    .await;
                }
            }
        }
    }
    Ok(())
}
