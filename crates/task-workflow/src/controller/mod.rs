//! The I/O around the planners: two controllers sharing one watch per kind.

mod run;
mod task;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cel_conditions::{Expression, SharedExpressions};
use crd_types::workflow::{ActionResult, Ignitor, TASKRUN_LABEL, Task, TaskRun};
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Controller;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, ResourceExt};
pub use orrery_runtime::Error;
use orrery_runtime::{
    BoxError, Context, watched, watched_and_cached, watched_and_cached_as, watched_and_cached_metadata,
    watched_and_cached_slim, watcher_config,
};

use crate::actions::Registry;
use crate::attempt_pod::AttemptPod;
use crate::handoff::JoinCondition;
use crate::task_plan::slim_run;
use crate::triggers::Triggers;

/// The controller's name: its field manager, Lease and Event reporter.
pub const NAME: &str = "task-workflow";

/// How soon a reconcile that found a cache still listing looks again.
const SYNC_RETRY: std::time::Duration = std::time::Duration::from_millis(200);

/// A join condition compiled, or why it does not compile.
type Compiled = Result<Arc<Expression>, String>;

/// Compiled join conditions, one per Task (uid) and generation.
#[derive(Default, Debug)]
pub struct JoinConditions {
    compiled: Mutex<HashMap<(String, i64), Compiled>>,
    /// Tasks with the same condition share its compiled form.
    shared: SharedExpressions,
}

impl JoinConditions {
    /// The Task's join condition, compiled (or why it does not compile).
    pub fn compile(&self, task: &Task) -> Option<Compiled> {
        let source = task.spec.join.as_ref()?.condition.as_ref()?;
        let key = (task.uid().unwrap_or_default(), task.metadata.generation.unwrap_or(0));
        let mut compiled = self.compiled.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        // Older generations of this task are never asked for again.
        compiled.retain(|(uid, generation), _| uid != &key.0 || *generation == key.1);
        Some(
            compiled
                .entry(key)
                .or_insert_with(|| {
                    self.shared
                        .compile(source, &["predecessors"])
                        .map(Arc::new)
                        .map_err(|err| format!("join condition: {err}"))
                })
                .clone(),
        )
    }
}

impl JoinCondition for JoinConditions {
    fn holds(&self, task: &Task, predecessors: &serde_json::Value) -> Result<bool, String> {
        match self.compile(task) {
            None => Ok(true),
            Some(Err(err)) => Err(err),
            Some(Ok(expression)) => expression
                .evaluate_bool(&[("predecessors", predecessors)])
                .map_err(|err| format!("join condition: {err}")),
        }
    }
}

/// Everything both controllers share.
pub(crate) struct State {
    pub context: Context,
    /// Tasks by metadata only: a reconcile reads the Task it needs from the API server.
    pub tasks: Store<PartialObjectMeta<Task>>,
    /// What starts each Task, the one part of their specs looked up across Tasks.
    pub triggers: Arc<Triggers>,
    /// TaskRuns as the Task controller has been told of them.
    pub task_runs: Store<TaskRun>,
    /// TaskRuns as the TaskRun controller has been told of them.
    pub runs: Store<TaskRun>,
    pub ignitors: Store<Ignitor>,
    pub pods: Store<AttemptPod>,
    pub actions: Registry,
    pub http: reqwest::Client,
    pub joins: JoinConditions,
    /// Per TaskRun uid, the results of the actions it ran whose status write has not gone
    /// through yet: a write refused on a stale read is retried without running them again.
    pub action_results: std::sync::Mutex<HashMap<String, Vec<ActionResult>>>,
}

impl State {
    /// Whether every cache has its first full list. Each controller waits for its own cache
    /// but reads the others too, and must not act on a partial view: a run handing off before
    /// the Tasks it starts are known would start none.
    pub fn synced(&self) -> bool {
        is_synced(&self.tasks)
            && is_synced(&self.task_runs)
            && is_synced(&self.runs)
            && is_synced(&self.ignitors)
            && is_synced(&self.pods)
    }

    /// The Task `name` in `namespace`, read whole from the API server.
    pub async fn task(&self, namespace: &str, name: &str) -> Result<Option<Task>, Error> {
        Api::<Task>::namespaced(self.context.client.clone(), namespace)
            .get_opt(name)
            .await
            .map_err(Error::api(format!("reading Task {name}")))
    }

    /// The runs of `task` in `namespace`, from the Task controller's cache.
    pub fn runs_of(&self, namespace: &str, task: &str) -> Vec<Arc<TaskRun>> {
        self.task_runs
            .state()
            .into_iter()
            .filter(|r| r.namespace().as_deref() == Some(namespace) && r.spec.task_ref.name == task)
            .collect()
    }
}

fn is_synced<K>(store: &Store<K>) -> bool
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    store
        .wait_until_ready()
        .now_or_never()
        .is_some_and(|ready| ready.is_ok())
}

/// Runs the Task and TaskRun controllers until the context's shutdown signal.
///
/// Every cache a reconcile reads from is filled by the same stream that triggers it, so a
/// trigger never arrives before the change it announces is in the cache. Where a controller
/// only learns of a change through another's cache (a Task appearing), the waiting reconcile
/// also looks again on a timer.
///
/// Tasks are many and mostly idle, so only their metadata and what starts them are cached
/// (about a third of a whole Task's memory); each reconcile reads its Task from the API server.
pub async fn run(context: Context) -> Result<(), BoxError> {
    let config = watcher_config(&context.api::<Task>()).await;
    let triggers = Arc::new(Triggers::default());
    let index = triggers.clone();
    let (tasks, task_trigger) =
        watched_and_cached_metadata(context.api::<Task>(), config.clone(), move |event| index.apply(event));
    let (task_runs, task_run_trigger) = watched_and_cached_slim(context.api::<TaskRun>(), config.clone(), slim_run);
    let (ignitors, ignitor_trigger) = watched_and_cached(context.api::<Ignitor>(), config.clone());
    let (runs, run_trigger) = watched_and_cached(context.api::<TaskRun>(), config.clone());
    let (pods, pod_trigger) = watched_and_cached_as(
        context.api::<Pod>(),
        config.clone().labels(TASKRUN_LABEL),
        |_| {},
        AttemptPod::from,
    );

    let state = Arc::new(State {
        context: context.clone(),
        tasks: tasks.clone(),
        triggers: triggers.clone(),
        task_runs,
        runs: runs.clone(),
        ignitors,
        pods,
        actions: Registry::builtin(),
        http: reqwest::Client::new(),
        joins: JoinConditions::default(),
        action_results: std::sync::Mutex::default(),
    });

    // Ready once every cache has its first full list.
    let readiness = context.readiness.clone();
    let caches = state.clone();
    tokio::spawn(async move {
        while !caches.synced() {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        readiness.set_synced();
    });

    let tasks_for_ignitor = triggers.clone();
    let tasks_for_task = triggers;
    let task_controller = Controller::for_stream(task_trigger, tasks.clone())
        .watches_stream(task_run_trigger, |run: TaskRun| {
            Some(ObjectRef::new(&run.spec.task_ref.name).within(&run.namespace().unwrap_or_default()))
        })
        .watches_stream(ignitor_trigger, move |ignitor: Ignitor| {
            let namespace = ignitor.namespace().unwrap_or_default();
            tasks_for_ignitor
                .started_by_ignitor(&namespace, &ignitor.name_any())
                .into_iter()
                .map(move |task| ObjectRef::new(&task).within(&namespace))
        })
        // A Task appearing may complete another's triggers. Which Task is all this needs: its
        // metadata only, so thousands of Tasks at start are not decoded three times over.
        .watches_stream(
            watched(context.api::<PartialObjectMeta<Task>>(), config.clone()),
            move |changed| {
                let namespace = changed.namespace().unwrap_or_default();
                tasks_for_task
                    .started_after(&namespace, &changed.name_any())
                    .into_iter()
                    .map(move |task| ObjectRef::new(&task).within(&namespace))
            },
        )
        .with_config(context.controller_config())
        .graceful_shutdown_on(context.shutdown_signal())
        .run(task::reconcile, task::error_policy, state.clone())
        .for_each(|_| async {});

    let runs_for_task = runs.clone();
    let run_controller = Controller::for_stream(run_trigger, runs)
        .owns_stream(pod_trigger)
        // A Task appearing starts the runs that waited for it.
        .watches_stream(watched(context.api::<PartialObjectMeta<Task>>(), config), move |task| {
            let name = task.name_any();
            let namespace = task.namespace();
            runs_for_task
                .state()
                .into_iter()
                .filter(move |r| {
                    let waiting = r.status.as_ref().is_none_or(|s| s.pod_name.is_none() && !s.handed_off);
                    r.namespace() == namespace && r.spec.task_ref.name == name && waiting
                })
                .map(|r| ObjectRef::from_obj(r.as_ref()))
        })
        .with_config(context.controller_config())
        .graceful_shutdown_on(context.shutdown_signal())
        .run(run::reconcile, run::error_policy, state)
        .for_each(|_| async {});

    tokio::join!(task_controller, run_controller);
    Ok(())
}
