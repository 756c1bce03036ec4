//! Task reconcile: start runs for new Ignitor firings, stop runs the Replace policy displaces,
//! write the status ORCA's columns show, and delete runs past the history limits.

use std::collections::BTreeMap;
use std::sync::Arc;

use crd_types::workflow::{CANCEL_ANNOTATION, Task, TaskRun};
use jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde_json::json;

use orrery_runtime::{apply_status, delete_if_exists, is_not_found};

use super::{Error, NAME, Read, State};
use crate::task_plan::{MISSING_TRIGGERS, TaskView, plan_task};

pub(crate) async fn reconcile(task: Arc<PartialObjectMeta<Task>>, state: Arc<State>) -> Result<Action, Error> {
    state
        .context
        .reconcile("task", task.as_ref(), reconcile_task(&task, &state))
        .await
}

pub(crate) fn error_policy(task: Arc<PartialObjectMeta<Task>>, error: &Error, state: Arc<State>) -> Action {
    state.context.error_policy("task", task.as_ref(), error)
}

async fn reconcile_task(cached: &PartialObjectMeta<Task>, state: &State) -> Result<Action, Error> {
    if !state.synced() {
        return Ok(Action::requeue(super::SYNC_RETRY));
    }
    let namespace = cached.namespace().unwrap_or_default();
    let runs = state.runs_of(&namespace, &cached.name_any());
    let read = if runs.is_empty() { Read::Idle } else { Read::InUse };
    let Some(task) = state.task(&namespace, &cached.name_any(), read).await? else {
        // Deleted since: its runs go with it (owner references).
        return Ok(Action::await_change());
    };
    let task = task.as_ref();
    let ignitors: Vec<_> = task
        .spec
        .start_on_ignition
        .iter()
        .map(|name| {
            (
                name.clone(),
                state.ignitors.get(&ObjectRef::new(name).within(&namespace)),
            )
        })
        .collect();
    let predecessors: BTreeMap<String, bool> = task
        .spec
        .start_on_success
        .iter()
        .chain(&task.spec.start_on_failure)
        .map(|name| {
            (
                name.clone(),
                state.tasks.get(&ObjectRef::new(name).within(&namespace)).is_some(),
            )
        })
        .collect();
    let known = state.actions.names();
    let plan = plan_task(&TaskView {
        now: Timestamp::now(),
        task,
        runs: runs.iter().map(Arc::as_ref).collect(),
        ignitors: ignitors.iter().map(|(name, i)| (name.clone(), i.as_deref())).collect(),
        predecessors,
        known_actions: &known,
        join_error: state.joins.compile(task).and_then(Result::err),
    });

    let run_api: Api<TaskRun> = Api::namespaced(state.context.client.clone(), &namespace);
    for name in &plan.cancel {
        cancel(&run_api, name, "replaced by a newer run (concurrencyPolicy: Replace)").await?;
    }
    for run in &plan.create {
        create_run(&run_api, run).await?;
    }
    if Some(&plan.status) != task.status.as_ref() {
        let written = apply_status(
            &Api::<Task>::namespaced(state.context.client.clone(), &namespace),
            NAME,
            task,
            &plan.status,
        )
        .await
        .map_err(Error::Status)?;
        // The next reconcile may come before the watch shows this write: it starts from here.
        if read == Read::InUse {
            state
                .recent
                .keep(written, task.resource_version(), std::time::Instant::now());
        }
    }
    // Only now that the status counts them may the pruned runs go.
    for name in &plan.delete {
        delete_if_exists(&run_api, name, &DeleteParams::background())
            .await
            .map_err(Error::TaskRun)?;
    }
    for planned in plan.events {
        publish(
            state,
            &task.object_ref(&()),
            planned.warning,
            planned.reason,
            planned.note,
        )
        .await;
    }
    // Triggers that do not exist yet are announced to the other controller's cache; look
    // again now and then rather than rely on that.
    let waiting = crd_types::common::find_condition(&plan.status.conditions, crd_types::CONDITION_READY)
        .is_some_and(|c| c.reason == MISSING_TRIGGERS);
    Ok(if waiting {
        Action::requeue(std::time::Duration::from_secs(5))
    } else {
        // A finished run whose time to live ends goes then, whether or not anything changes
        // (a second later: the run must be past it).
        orrery_runtime::requeue_at_or_await(
            plan.next_expiry
                .map(|at| at + k8s_openapi::jiff::SignedDuration::from_secs(1)),
        )
    })
}

/// Creates `run`; one that already exists is the same trigger seen again, which is fine.
pub(crate) async fn create_run(api: &Api<TaskRun>, run: &TaskRun) -> Result<(), Error> {
    match api.create(&PostParams::default(), run).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
        Err(source) => Err(Error::api(
            Error::TaskRun,
            format!("creating TaskRun {}", run.name_any()),
        )(source)),
    }
}

/// Asks a run to stop.
pub(crate) async fn cancel(api: &Api<TaskRun>, name: &str, why: &str) -> Result<(), Error> {
    let patch = json!({"metadata": {"annotations": {CANCEL_ANNOTATION: why}}});
    match api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await {
        Ok(_) => Ok(()),
        Err(err) if is_not_found(&err) => Ok(()),
        Err(source) => Err(Error::api(Error::TaskRun, format!("cancelling TaskRun {name}"))(source)),
    }
}

pub(crate) async fn publish(
    state: &State,
    reference: &k8s_openapi::api::core::v1::ObjectReference,
    warning: bool,
    reason: &str,
    note: String,
) {
    state
        .context
        .recorder
        .publish_or_log(reference, warning, reason, note, "Reconcile")
        .await;
}
