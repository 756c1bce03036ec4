//! The I/O around the planners: two controllers sharing one watch per kind.

mod run;
mod task;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cel_conditions::{Expression, SharedExpressions};
use crd_types::workflow::{ActionResult, Ignitor, TASKRUN_LABEL, Task, TaskRun};
use futures::FutureExt;
use k8s_openapi::api::core::v1::Pod;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Controller;
use kube::runtime::reflector::{ObjectRef, ReflectHandle, Store};
use kube::{Api, ResourceExt};
use orrery_runtime::egress::HttpClient;
use orrery_runtime::{
    BoxError, Configured, Context, Failure, Lock, SharedCache, log_results, strip, watched_and_cached,
    watched_and_cached_as, watched_and_cached_as_shared, watched_and_cached_metadata_shared, watcher_config,
};

use crate::actions::Registry;
use crate::attempt_pod::AttemptPod;
use crate::handoff::JoinCondition;
use crate::recent::RecentTasks;
use crate::task_plan::slim_handed_off;
use crate::triggers::Triggers;

/// The controller's name: its field manager, Lease and Event reporter.
pub const NAME: &str = "task-workflow";

/// Why a reconcile failed, by what the failed request was about; the variant is the reason in
/// `orrery_reconcile_failures`, a conflict on any of them is `Conflict`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading a Task.
    #[error(transparent)]
    Task(orrery_runtime::Error),
    /// Creating, cancelling or deleting a TaskRun.
    #[error(transparent)]
    TaskRun(orrery_runtime::Error),
    /// Creating or deleting an attempt's pod.
    #[error(transparent)]
    Pod(orrery_runtime::Error),
    /// Writing a Task's or a TaskRun's status.
    #[error(transparent)]
    Status(orrery_runtime::Error),
}

impl Error {
    fn request(&self) -> &orrery_runtime::Error {
        match self {
            Error::Task(e) | Error::TaskRun(e) | Error::Pod(e) | Error::Status(e) => e,
        }
    }

    /// Wraps a failed request about a `wrap`ped object, saying what was being done.
    pub(crate) fn api(
        wrap: fn(orrery_runtime::Error) -> Error,
        action: impl Into<String>,
    ) -> impl FnOnce(kube::Error) -> Error {
        let failed = orrery_runtime::Error::api(action);
        move |source| wrap(failed(source))
    }
}

impl Failure for Error {
    fn reason(&self) -> &'static str {
        match self {
            _ if self.is_conflict() => "Conflict",
            Error::Task(_) => "Task",
            Error::TaskRun(_) => "TaskRun",
            Error::Pod(_) => "Pod",
            Error::Status(_) => "Status",
        }
    }

    fn is_conflict(&self) -> bool {
        self.request().is_conflict()
    }
}

/// How soon a reconcile that found a cache still listing looks again.
const SYNC_RETRY: Duration = Duration::from_millis(200);

/// A join condition compiled, or why it does not compile.
type Compiled = Result<Arc<Expression>, String>;

/// Compiled join conditions, one per Task (uid) and generation.
#[derive(Default, Debug)]
pub struct JoinConditions {
    compiled: Lock<HashMap<(String, i64), Compiled>>,
    /// Tasks with the same condition share its compiled form.
    shared: SharedExpressions,
}

impl JoinConditions {
    /// The Task's join condition, compiled (or why it does not compile).
    pub fn compile(&self, task: &Task) -> Option<Compiled> {
        let source = task.spec.join.as_ref()?.condition.as_ref()?;
        let key = (task.uid().unwrap_or_default(), task.metadata.generation.unwrap_or(0));
        let mut compiled = self.compiled.lock();
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
    /// Tasks in use, as last read: read again only once the cache shows they changed.
    pub recent: RecentTasks,
    /// TaskRuns, one cache for both controllers; a run that handed off is kept slimmed.
    pub runs: Store<TaskRun>,
    pub ignitors: Store<Ignitor>,
    pub pods: Store<AttemptPod>,
    pub actions: Registry,
    /// Sends http-post notifications only where `--allowed-egress` allows.
    pub http: HttpClient,
    pub joins: JoinConditions,
    /// Per TaskRun uid, the results of the actions it ran whose status write has not gone
    /// through yet: a write refused on a stale read is retried without running them again.
    pub action_results: Lock<HashMap<String, Vec<ActionResult>>>,
    /// Per TaskRun, the resourceVersion our last status write replaced, until the cache moves
    /// past it: a run cached at that version is older than what we wrote, and a write from it
    /// could only conflict. The watch brings our write, and with it the next reconcile.
    pub run_written_over: Lock<HashMap<ObjectRef<TaskRun>, String>>,
}

impl State {
    /// Whether every cache has its first full list. Each controller waits for its own cache
    /// but reads the others too, and must not act on a partial view: a run handing off before
    /// the Tasks it starts are known would start none.
    pub fn synced(&self) -> bool {
        is_synced(&self.tasks) && is_synced(&self.runs) && is_synced(&self.ignitors) && is_synced(&self.pods)
    }

    /// The Task `name` in `namespace`, whole: a copy as new as the cache when `read` allows,
    /// otherwise read from the API server.
    pub async fn task(&self, namespace: &str, name: &str, read: Read) -> Result<Option<Arc<Task>>, Error> {
        let now = Instant::now();
        if read != Read::Fresh {
            let cached = self.tasks.get(&ObjectRef::new(name).within(namespace));
            let version = cached.as_ref().and_then(|t| t.metadata.resource_version.as_deref());
            if let Some(copy) = version.and_then(|v| self.recent.get(namespace, name, v, now)) {
                return Ok(Some(copy));
            }
        }
        let read_now = Api::<Task>::namespaced(self.context.client.clone(), namespace)
            .get_opt(name)
            .await
            .map_err(Error::api(Error::Task, format!("reading Task {name}")))?;
        Ok(match read_now {
            Some(task) if read == Read::Idle => Some(Arc::new(task)),
            Some(task) => Some(self.recent.keep(task, None, now)),
            None => {
                self.recent.forget(namespace, name);
                None
            }
        })
    }

    /// The runs of `task` in `namespace`.
    pub fn runs_of(&self, namespace: &str, task: &str) -> Vec<Arc<TaskRun>> {
        self.runs
            .state()
            .into_iter()
            .filter(|r| r.namespace().as_deref() == Some(namespace) && r.spec.task_ref.name == task)
            .collect()
    }
}

/// How fresh a reconcile needs its Task, and whether to keep the copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Read {
    /// As new as the cache will do; a Task with no runs is not worth keeping.
    Idle,
    /// As new as the cache will do; keep it, it will be asked for again soon.
    InUse,
    /// From the API server now: newer than anything the caches had when this was asked.
    Fresh,
}

/// The triggers of a shared cache, one per controller.
fn shared<K, const N: usize>(triggers: Vec<ReflectHandle<K>>) -> Result<[ReflectHandle<K>; N], BoxError>
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    triggers
        .try_into()
        .map_err(|_| format!("a shared cache gives {N} triggers").into())
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
/// Every trigger comes from the watch that fills the cache it announces a change in (both
/// controllers share one watch and one cache of Tasks and of TaskRuns), so a trigger never
/// arrives before its change is cached. A reconcile waiting for a Task to appear also looks
/// again on a timer.
///
/// Tasks are many and mostly idle, so only their metadata and what starts them are cached
/// (about a third of a whole Task's memory); a reconcile reads its Task from the API server,
/// and Tasks with runs are kept whole while in use, read again only once they change.
pub async fn run(context: Context) -> Result<(), BoxError> {
    let config = watcher_config(&context.api::<Task>()).await;
    let triggers = Arc::new(Triggers::default());
    let index = triggers.clone();
    // Both controllers read Tasks and TaskRuns: one watch and one cache of each, shared.
    let SharedCache {
        cache: tasks,
        triggers: task_triggers,
        watch: task_watch,
    } = watched_and_cached_metadata_shared(
        &context.readiness,
        context.api::<Task>(),
        config.clone(),
        move |event| index.apply(event),
        3,
    );
    let [task_trigger, task_changed, task_appeared] = shared(task_triggers)?;
    let SharedCache {
        cache: runs,
        triggers: run_triggers,
        watch: run_watch,
    } = watched_and_cached_as_shared(
        &context.readiness,
        context.api::<TaskRun>(),
        config.clone(),
        |_| {},
        |mut run| {
            strip(&mut run);
            slim_handed_off(&mut run);
            run
        },
        2,
    );
    let [task_run_trigger, run_trigger] = shared(run_triggers)?;
    let (ignitors, ignitor_trigger) = watched_and_cached(&context.readiness, context.api::<Ignitor>(), config.clone());
    let (pods, pod_trigger) = watched_and_cached_as(
        &context.readiness,
        context.api::<Pod>(),
        config.clone().labels(TASKRUN_LABEL),
        |_| {},
        AttemptPod::from,
    );

    let state = Arc::new(State {
        context: context.clone(),
        tasks: tasks.clone(),
        triggers: triggers.clone(),
        recent: RecentTasks::default(),
        runs: runs.clone(),
        ignitors,
        pods,
        actions: Registry::builtin(),
        http: context.egress.client()?,
        joins: JoinConditions::default(),
        action_results: Lock::default(),
        run_written_over: Lock::default(),
    });

    let tasks_for_ignitor = triggers.clone();
    let tasks_for_task = triggers;
    let task_controller = Controller::for_shared_stream(task_trigger, tasks.clone())
        .watches_shared_stream(task_run_trigger, |run: Arc<TaskRun>| {
            Some(ObjectRef::new(&run.spec.task_ref.name).within(&run.namespace().unwrap_or_default()))
        })
        .watches_stream(ignitor_trigger, move |ignitor: Ignitor| {
            let namespace = ignitor.namespace().unwrap_or_default();
            tasks_for_ignitor
                .started_by_ignitor(&namespace, &ignitor.name_any())
                .into_iter()
                .map(move |task| ObjectRef::new(&task).within(&namespace))
        })
        // A Task appearing may complete another's triggers.
        .watches_shared_stream(task_changed, move |changed: Arc<PartialObjectMeta<Task>>| {
            let namespace = changed.namespace().unwrap_or_default();
            tasks_for_task
                .started_after(&namespace, &changed.name_any())
                .into_iter()
                .map(move |task| ObjectRef::new(&task).within(&namespace))
        })
        .configured(&context)
        .graceful_shutdown_on(context.shutdown_signal())
        .run(task::reconcile, task::error_policy, state.clone());
    let task_controller = log_results("task", task_controller);

    let runs_for_task = runs.clone();
    let run_controller = Controller::for_shared_stream(run_trigger, runs)
        .owns_stream(pod_trigger)
        // A Task appearing starts the runs that waited for it.
        .watches_shared_stream(task_appeared, move |task: Arc<PartialObjectMeta<Task>>| {
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
        .configured(&context)
        .graceful_shutdown_on(context.shutdown_signal())
        .run(run::reconcile, run::error_policy, state.clone());
    let run_controller = log_results("taskrun", run_controller);

    // Tasks no run has asked for in a while are dropped, and so are the writes of runs deleted
    // before the cache showed them; this ends with the controllers.
    let forget_unused = async move {
        let mut every = tokio::time::interval(crate::recent::KEPT_FOR / 2);
        loop {
            every.tick().await;
            state.recent.forget_unused(Instant::now());
            state
                .run_written_over
                .lock()
                .retain(|run, _| state.runs.get(run).is_some());
        }
    };
    tokio::select! {
        _ = async { tokio::join!(task_controller, run_controller) } => {}
        () = task_watch => {}
        () = run_watch => {}
        () = forget_unused => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_is_counted_under_what_its_request_was_about_and_a_conflict_as_conflict() {
        let refused = || kube::Error::TlsRequired;
        assert_eq!(Error::api(Error::Pod, "creating pod p")(refused()).reason(), "Pod");
        assert_eq!(
            Error::api(Error::TaskRun, "creating TaskRun r")(refused()).reason(),
            "TaskRun"
        );
        assert_eq!(Error::api(Error::Task, "reading Task t")(refused()).reason(), "Task");
        let conflict = Error::Status(orrery_runtime::Error::Conflict("TaskRun r".into()));
        assert_eq!(conflict.reason(), "Conflict");
        assert!(conflict.is_conflict());
        assert!(!Error::api(Error::Status, "writing")(refused()).is_conflict());
    }
}
