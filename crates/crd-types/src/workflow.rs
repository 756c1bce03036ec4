//! `workflow.orrery.dev`: the ORCA model. Ignitors fire; Tasks run a pod to completion when an
//! Ignitor fires or another Task succeeds or fails; each run is a TaskRun.

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};

use crate::common::{Condition, MicroTime, PluginRef, Time};

/// Largest `data` an Ignitor may carry, and the kubelet's limit on a termination message:
/// whatever reaches a pod as `ORCA_DATA` fits in 4096 bytes.
pub const MAX_DATA_BYTES: usize = 4096;

/// `data` cut to its first [`MAX_DATA_BYTES`] bytes, at a character: what a run hands on
/// (a long cancellation reason, say) must still fit in a TaskRun's `spec.data`.
pub fn within_data_limit(mut data: String) -> String {
    if data.len() > MAX_DATA_BYTES {
        let mut end = MAX_DATA_BYTES;
        while !data.is_char_boundary(end) {
            end -= 1;
        }
        data.truncate(end);
    }
    data
}

/// Annotation that fires an Ignitor once from kubectl; its value is any token that differs from
/// the last one honoured (e.g. a timestamp): `kubectl annotate ignitor x workflow.orrery.dev/fire=$(date +%s)`.
pub const FIRE_ANNOTATION: &str = "workflow.orrery.dev/fire";

/// Annotation asking task-workflow to stop a TaskRun (its value says why); used by the
/// `Replace` concurrency policy and available to users.
pub const CANCEL_ANNOTATION: &str = "workflow.orrery.dev/cancel";

/// Label on TaskRuns and their pods naming the Task.
pub const TASK_LABEL: &str = "workflow.orrery.dev/task";

/// Label on pods naming their TaskRun.
pub const TASKRUN_LABEL: &str = "workflow.orrery.dev/taskrun";

/// A Task's pod template, kept as its compact JSON text. Controllers cache Tasks by the
/// thousand, and a parsed JSON tree costs several times its text (a map allocation per
/// object), so the template is parsed only when a pod is made from it. Keys are in sorted
/// order, so equal templates have equal text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodTemplate(Box<str>);

impl PodTemplate {
    /// The template as JSON (an object).
    pub fn to_value(&self) -> serde_json::Value {
        // Always valid JSON: it was written from a parsed map.
        serde_json::from_str(&self.0).unwrap_or_default()
    }

    /// The template parsed as `T` (e.g. a `PodTemplateSpec`).
    pub fn parse<T: serde::de::DeserializeOwned>(&self) -> serde_json::Result<T> {
        serde_json::from_str(&self.0)
    }

    /// The compact JSON text.
    pub fn as_json(&self) -> &str {
        &self.0
    }
}

impl Default for PodTemplate {
    fn default() -> Self {
        PodTemplate("{}".into())
    }
}

impl From<serde_json::Map<String, serde_json::Value>> for PodTemplate {
    fn from(map: serde_json::Map<String, serde_json::Value>) -> Self {
        PodTemplate(serde_json::Value::Object(map).to_string().into_boxed_str())
    }
}

impl Serialize for PodTemplate {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_value().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for PodTemplate {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        serde_json::Map::deserialize(deserializer).map(PodTemplate::from)
    }
}

// ---------------------------------------------------------------------------------------------
// Ignitor

/// An Ignitor fires on a schedule: once now, once at a time, or on a cron schedule. Tasks name
/// it in `startOnIgnition`; each firing starts them once.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "workflow.orrery.dev",
    version = "v1alpha1",
    kind = "Ignitor",
    namespaced,
    status = "IgnitorStatus",
    shortname = "ign",
    category = "orrery",
    doc = "An Ignitor fires once now, once at a time, or on a cron schedule, and starts the Tasks that name it.",
    printcolumn(name = "SCHEDULED", type_ = "string", json_path = ".spec.scheduled"),
    printcolumn(name = "SUSPENDED", type_ = "boolean", json_path = ".spec.suspend"),
    printcolumn(name = "LASTIGNITION", type_ = "date", json_path = ".status.lastIgnition.time"),
    printcolumn(name = "NEXTIGNITION", type_ = "string", json_path = ".status.nextIgnition"),
    printcolumn(name = "IGNITIONS", type_ = "integer", json_path = ".status.ignitionsCount"),
    printcolumn(
        name = "READY",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "AGE", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct IgnitorSpec {
    /// What this Ignitor starts, for people reading it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub description: Option<String>,

    /// When to fire: `NOW` (once, when created), an RFC 3339 time (once, at that time, e.g.
    /// `2026-02-03T19:34:05Z`), or a cron schedule: 5 fields (minute hour day-of-month month
    /// day-of-week), an optional leading seconds field, or a macro (`@yearly`, `@monthly`,
    /// `@weekly`, `@daily`, `@hourly`).
    #[schemars(length(min = 1, max = 128))]
    #[x_kube(validation = Rule::new(
        "self == 'NOW' || self.matches('^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\\\\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})$') || self.matches('^@(yearly|annually|monthly|weekly|daily|midnight|hourly)$') || self.matches('^[0-9A-Za-z*?/,#-]+( +[0-9A-Za-z*?/,#-]+){4,5}$')"
    ).message("scheduled must be NOW, an RFC 3339 time, a cron schedule of 5 or 6 fields, or a macro such as @hourly"))]
    pub scheduled: String,

    /// IANA time zone for a cron schedule, e.g. `Europe/Amsterdam`. Defaults to UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 64),
        regex(pattern = r"^[A-Za-z0-9_+\-]+(/[A-Za-z0-9_+\-]+)*$")
    )]
    pub time_zone: Option<String>,

    /// Passed to each started task's pod as `ORCA_DATA` (at most 4096 bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub data: Option<String>,

    /// While true, scheduled firings are skipped (a manual fire still works).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspend: Option<bool>,

    /// A firing more than this many seconds late is missed and handled by `missedFiringPolicy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 31_536_000))]
    pub starting_deadline_seconds: Option<i64>,

    /// What to do with firings missed while the controller was away: `FireOnce` (default)
    /// fires once to catch up; `Skip` waits for the next firing. Either way the miss is counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missed_firing_policy: Option<MissedFiringPolicy>,
}

/// What to do with firings missed while the controller was away.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum MissedFiringPolicy {
    /// Fire once to catch up, however many firings were missed.
    #[default]
    FireOnce,
    /// Do not catch up; wait for the next firing.
    Skip,
}

/// What ignitor-scheduler observed and did.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IgnitorStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`: the schedule is valid and armed (or spent, for one-shot schedules).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The latest firing. Written before anything acts on it, so a firing is never lost or doubled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_ignition: Option<Ignition>,
    /// The firings before the latest, newest first, at most [`EARLIER_IGNITIONS`]: a Task that
    /// did not see them in time (its controller down, or two firings close together) still
    /// starts a run for each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub earlier_ignitions: Vec<Ignition>,
    /// When the next firing is due, if any (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_ignition: Option<Time>,
    /// The latest scheduled time handled, fired or missed: the schedule resumes after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_schedule_time: Option<Time>,
    /// The one-shot schedule (`NOW` or a time) that already fired; it does not fire again
    /// until `scheduled` changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fired_schedule: Option<String>,
    /// How many times this Ignitor fired.
    #[serde(default)]
    pub ignitions_count: i64,
    /// How many scheduled firings were missed (late past `startingDeadlineSeconds`, or skipped).
    #[serde(default)]
    pub missed_count: i64,
    /// The value of the fire annotation last honoured, so each manual fire counts once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_manual_fire: Option<String>,
}

/// How many firings before the latest an Ignitor's status keeps.
pub const EARLIER_IGNITIONS: usize = 4;

/// One firing of an Ignitor.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Ignition {
    /// 1 for the first firing, then +1 each time. Tasks key their runs on it.
    pub sequence: i64,
    /// When the firing happened (microseconds, for measuring delays).
    pub time: MicroTime,
    /// The scheduled time this firing was for (absent for manual fires).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_time: Option<Time>,
    /// The Ignitor's `data` at the time of the firing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    /// Why it fired: `Now`, `Time`, `Schedule`, `CatchUp` or `Manual`.
    pub reason: String,
}

// ---------------------------------------------------------------------------------------------
// Task

/// A Task runs its pod template to completion whenever one of its triggers happens: an Ignitor
/// in `startOnIgnition` fires, or a Task in `startOnSuccess`/`startOnFailure` finishes that way.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "workflow.orrery.dev",
    version = "v1alpha1",
    kind = "Task",
    namespaced,
    status = "TaskStatus",
    shortname = "tsk",
    category = "orrery",
    doc = "A Task runs a pod to completion when an Ignitor fires or another Task succeeds or fails.",
    validation = Rule::new("self.metadata.name.size() <= 63").message("a Task's name is at most 63 characters: it is a label value on its runs and their pods"),
    printcolumn(name = "STATE", type_ = "string", json_path = ".status.state"),
    printcolumn(name = "LASTSUCCESS", type_ = "string", json_path = ".status.lastSuccess"),
    printcolumn(name = "LASTFAILURE", type_ = "string", json_path = ".status.lastFailure"),
    printcolumn(name = "FAILURESCOUNT", type_ = "integer", json_path = ".status.failuresCount"),
    printcolumn(name = "IGNITORS", type_ = "string", json_path = ".spec.startOnIgnition"),
    printcolumn(name = "ONSUCCESSTASK", type_ = "string", json_path = ".spec.startOnSuccess"),
    printcolumn(name = "ONFAILURETASK", type_ = "string", json_path = ".spec.startOnFailure"),
    printcolumn(
        name = "SUCCESSCOUNT",
        type_ = "integer",
        json_path = ".status.successCount",
        priority = 1
    ),
    printcolumn(name = "LASTRUN", type_ = "string", json_path = ".status.lastRun", priority = 1)
)]
#[serde(rename_all = "camelCase")]
pub struct TaskSpec {
    /// What the task does, for people reading it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub description: Option<String>,

    /// The pod to run, as in a Job: a PodTemplateSpec (`metadata`, `spec`). Its restart policy
    /// is forced to `Never`. The API server validates it when the pod is created; a pod it
    /// rejects becomes a Failed TaskRun carrying the server's message.
    #[schemars(schema_with = "crate::schema::pod_template")]
    pub template: PodTemplate,

    /// Ignitors whose firing starts this task.
    #[serde(default, deserialize_with = "null_as_default", skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 253)), extend("x-kubernetes-list-type" = "set", "nullable" = true))]
    pub start_on_ignition: Vec<String>,

    /// Tasks whose success starts this task.
    #[serde(default, deserialize_with = "null_as_default", skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 253)), extend("x-kubernetes-list-type" = "set", "nullable" = true))]
    pub start_on_success: Vec<String>,

    /// Tasks whose failure starts this task. Naming the task itself retries it forever in
    /// ORCA; here `maxConsecutiveFailures` bounds such loops.
    #[serde(default, deserialize_with = "null_as_default", skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 253)), extend("x-kubernetes-list-type" = "set", "nullable" = true))]
    pub start_on_failure: Vec<String>,

    /// How the triggers combine. Without it any one trigger starts the task (ORCA's rule).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join: Option<Join>,

    /// Actions run when a run succeeds: a name, or `{name, parameters}`.
    #[serde(default, deserialize_with = "null_as_default", skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), extend("nullable" = true))]
    pub success_actions: Vec<ActionRef>,

    /// Actions run when a run fails: a name, or `{name, parameters}`.
    #[serde(default, deserialize_with = "null_as_default", skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), extend("nullable" = true))]
    pub failure_actions: Vec<ActionRef>,

    /// Retries of a failed run, with exponential backoff, before the run counts as failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,

    /// Loop guard: after this many failures in a row the task stops starting until its spec
    /// changes or a run is created by hand. Default 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10_000))]
    pub max_consecutive_failures: Option<i32>,

    /// A run still going after this many seconds is stopped and fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 31_536_000))]
    pub active_deadline_seconds: Option<i64>,

    /// What to do when a trigger arrives while a run is still going: `Allow` (default) starts
    /// another, `Forbid` skips the new one, `Replace` stops the running one and starts the new one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency_policy: Option<ConcurrencyPolicy>,

    /// Successful TaskRuns kept (older ones and their pods are deleted). Default 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub successful_runs_history_limit: Option<i32>,

    /// Failed TaskRuns kept (older ones and their pods are deleted). Default 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub failed_runs_history_limit: Option<i32>,

    /// While true, triggers do not start this task (runs created by hand still run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspend: Option<bool>,

    /// Seconds a finished TaskRun (and its pod) is kept after it completed, as a Job's
    /// `ttlSecondsAfterFinished`; unset keeps it until the history limits remove it. Its
    /// result stays counted in the status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 31_536_000))]
    pub ttl_seconds_after_finished: Option<i32>,
}

/// How a task's triggers combine.
#[derive(Clone, Debug, Default, PartialEq, KubeSchema, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.mode) || self.mode != 'Condition' || has(self.condition)").message("join.condition is required when mode is Condition"))]
pub struct Join {
    /// `AnyOf` (default): any trigger starts the task. `AllOf`: every task in `startOnSuccess`
    /// and `startOnFailure` must have finished that way since this task last started.
    /// `Condition`: the CEL `condition` decides.
    #[serde(default)]
    pub mode: JoinMode,
    /// CEL over `predecessors`, a map from task name to its latest finished run
    /// (`{phase, message, exitCode, completionTime, run}`), e.g.
    /// `predecessors.build.phase == 'Succeeded' && predecessors.test.phase == 'Succeeded'`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub condition: Option<String>,
}

/// How a task's triggers combine.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum JoinMode {
    /// Any one trigger starts the task.
    #[default]
    AnyOf,
    /// All predecessor tasks must have finished as listed.
    AllOf,
    /// A CEL condition over the predecessors' latest results decides.
    Condition,
}

/// An action run when a TaskRun ends: a plain name (as in ORCA) or `{name, parameters}`.
///
/// Structural schemas have no one-of and the server cannot run rules on an untyped node, so
/// any value is admitted; one of neither shape deserializes as [`ActionRef::Invalid`] and
/// task-workflow reports it in a condition rather than failing to read the whole Task.
#[derive(Clone, Debug, PartialEq)]
pub enum ActionRef {
    /// A well-formed action.
    Plugin(PluginRef),
    /// Neither a name nor an object with a name, kept as written.
    Invalid(serde_json::Value),
}

impl Serialize for ActionRef {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            ActionRef::Plugin(plugin) => plugin.serialize(serializer),
            ActionRef::Invalid(value) => value.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for ActionRef {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(deserializer)?;
        Ok(match value {
            serde_json::Value::String(name) => ActionRef::Plugin(PluginRef::named(name)),
            other => match PluginRef::deserialize(&other) {
                Ok(plugin) => ActionRef::Plugin(plugin),
                Err(_) => ActionRef::Invalid(other),
            },
        })
    }
}

impl JsonSchema for ActionRef {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ActionRef".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A name, or an object with a `name` and optional `parameters`.",
            "x-kubernetes-preserve-unknown-fields": true,
        })
    }
}

/// Retry of failed runs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetryPolicy {
    /// How many times a failed run is retried.
    #[schemars(range(min = 0, max = 100))]
    pub limit: i32,
    /// Delay before the first retry; doubled for each further one. Default 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86_400))]
    pub backoff_seconds: Option<i32>,
    /// Upper bound of the delay. Default 600.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86_400))]
    pub max_backoff_seconds: Option<i32>,
}

/// What to do when a trigger arrives while a run is still going.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ConcurrencyPolicy {
    /// Start another run alongside.
    #[default]
    Allow,
    /// Skip the new trigger.
    Forbid,
    /// Stop the running run, start the new one.
    Replace,
}

/// What a Task's runs did, as ORCA reports it, and more.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`: every named trigger exists and the task can start.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// `Pending` while waiting for a trigger, `Running` while a run is active (as ORCA shows
    /// it); how the latest run ended is in `lastSuccess`, `lastFailure` and `lastRun`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// When a run last succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success: Option<Time>,
    /// When a run last failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<Time>,
    /// Failed runs, all time.
    #[serde(default)]
    pub failures_count: i64,
    /// Successful runs, all time.
    #[serde(default)]
    pub success_count: i64,
    /// Failed runs since the last success (the loop guard counts these).
    #[serde(default)]
    pub consecutive_failures: i64,
    /// Name of the latest TaskRun.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run: Option<String>,
    /// The latest firing of each Ignitor this task has acted on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ignitions: Vec<IgnitionCursor>,
    /// Results of runs already deleted by the history limits, so the counts above stay whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pruned: Option<PrunedRuns>,
    /// Consecutive failures forgiven by a spec change after the loop guard stopped the task.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub loop_guard_offset: i64,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

/// The latest firing of one Ignitor a Task acted on.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IgnitionCursor {
    /// The Ignitor.
    pub name: String,
    /// Its firing sequence.
    pub sequence: i64,
}

/// Tally of runs removed by the history limits.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PrunedRuns {
    /// Successful runs removed.
    #[serde(default)]
    pub succeeded: i64,
    /// Failed runs removed.
    #[serde(default)]
    pub failed: i64,
    /// Of those failed, how many came after the latest success (for the loop guard).
    #[serde(default)]
    pub failures_since_success: i64,
    /// Runs counted here whose deletion is still under way.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deleting: Vec<String>,
}

// ---------------------------------------------------------------------------------------------
// TaskRun

/// One execution of a Task. task-workflow creates one per trigger, with a name derived from
/// the trigger so it never runs twice; create one by hand to run a task now.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "workflow.orrery.dev",
    version = "v1alpha1",
    kind = "TaskRun",
    namespaced,
    status = "TaskRunStatus",
    shortname = "tr",
    category = "orrery",
    doc = "One execution of a Task: its pod, its result and its actions' results.",
    validation = Rule::new("self.metadata.name.size() <= 63").message("a TaskRun's name is at most 63 characters: it is a label value on its pods"),
    printcolumn(name = "TASK", type_ = "string", json_path = ".spec.taskRef.name"),
    printcolumn(name = "PHASE", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "INITIATOR", type_ = "string", json_path = ".spec.initiator.name"),
    printcolumn(name = "EXITCODE", type_ = "integer", json_path = ".status.exitCode"),
    printcolumn(name = "STARTED", type_ = "date", json_path = ".status.startTime"),
    printcolumn(name = "COMPLETED", type_ = "date", json_path = ".status.completionTime"),
    printcolumn(name = "POD", type_ = "string", json_path = ".status.podName", priority = 1),
    printcolumn(name = "AGE", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[x_kube(validation = Rule::new("self == oldSelf").message("a TaskRun's spec is immutable; create a new TaskRun"))]
#[serde(rename_all = "camelCase")]
pub struct TaskRunSpec {
    /// The Task to run.
    pub task_ref: TaskRef,
    /// What started this run. Absent for runs created by hand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initiator: Option<Initiator>,
    /// Passed to the pod as `ORCA_DATA`: the predecessor's termination message or the
    /// Ignitor's data (at most 4096 bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub data: Option<String>,
    /// For a join: the predecessor runs this run consumed, one per predecessor task.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub joined: Vec<PredecessorRun>,
}

/// A predecessor's run consumed by a join.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PredecessorRun {
    /// The predecessor Task.
    #[schemars(length(min = 1, max = 253))]
    pub task: String,
    /// Its TaskRun.
    #[schemars(length(min = 1, max = 253))]
    pub run: String,
}

/// A reference to a Task in the same namespace.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TaskRef {
    /// Name of the Task.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// What started a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Initiator {
    /// `Ignitor` or `Task`.
    pub kind: InitiatorKind,
    /// Name of the Ignitor or Task (reaches the pod as `ORCA_INITIATOR`).
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The Ignitor's firing sequence, or the predecessor's TaskRun name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub run: Option<String>,
}

/// Kinds that start runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum InitiatorKind {
    /// An Ignitor fired.
    Ignitor,
    /// A Task finished.
    Task,
}

/// Where a run is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum TaskRunPhase {
    /// Created; its pod is not running yet.
    #[default]
    Pending,
    /// Its pod is running.
    Running,
    /// Its pod exited 0.
    Succeeded,
    /// Its pod failed, was rejected, or ran past its deadline.
    Failed,
}

/// What happened to a run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskRunStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`: the run is progressing or ended as expected; `Succeeded`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// `Pending`, `Running`, `Succeeded` or `Failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<TaskRunPhase>,
    /// The pod this run created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    /// When the pod started running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<MicroTime>,
    /// When the run ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<MicroTime>,
    /// The pod's termination message (what the next task receives as `ORCA_DATA`), or why the
    /// run failed before its pod ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The main container's exit code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Retry attempt of this run (0 for the first).
    #[serde(default)]
    pub attempt: i32,
    /// When the next attempt starts, while a failed attempt waits out its backoff.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_time: Option<Time>,
    /// True once the run's actions ran and the tasks it triggers were started.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub handed_off: bool,
    /// Results of the success or failure actions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub action_results: Vec<ActionResult>,
}

/// The result of one action.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ActionResult {
    /// The action's name.
    pub name: String,
    /// `Succeeded`, `Failed` or `Unknown` (no such action).
    pub outcome: String,
    /// What the action did, or why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When it ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Time>,
}

/// ORCA manifests write `startOnSuccess:` with no value: YAML null means "none".
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn data_is_cut_to_the_limit_at_a_character() {
        assert_eq!(within_data_limit("short".into()), "short");
        let cut = within_data_limit("é".repeat(MAX_DATA_BYTES));
        assert_eq!(cut.len(), MAX_DATA_BYTES);
        let odd = within_data_limit(format!("a{}", "é".repeat(MAX_DATA_BYTES)));
        assert_eq!(odd.len(), MAX_DATA_BYTES - 1, "never half a character");
    }

    #[test]
    fn an_action_is_a_name_or_an_object_and_anything_else_is_kept_as_invalid() {
        let actions: Vec<ActionRef> = serde_json::from_value(json!([
            "notify",
            {"name": "http-post", "parameters": {"url": "http://example.invalid/"}},
            42,
            {"parameters": {}}
        ]))
        .expect("any JSON deserializes");
        assert_eq!(actions[0], ActionRef::Plugin(PluginRef::named("notify")));
        assert!(matches!(&actions[1], ActionRef::Plugin(p) if p.name == "http-post" && p.parameters.is_some()));
        assert_eq!(actions[2], ActionRef::Invalid(json!(42)));
        assert_eq!(actions[3], ActionRef::Invalid(json!({"parameters": {}})));
        // Written back as they came.
        assert_eq!(serde_json::to_value(&actions[0]).unwrap(), json!({"name": "notify"}));
        assert_eq!(serde_json::to_value(&actions[2]).unwrap(), json!(42));
    }

    #[test]
    fn orca_null_lists_read_as_empty() {
        let spec: TaskSpec = serde_json::from_value(json!({
            "template": {"spec": {"containers": [{"name": "c"}]}},
            "startOnSuccess": null,
            "successActions": null
        }))
        .expect("ORCA's bare keys are null");
        assert!(spec.start_on_success.is_empty());
        assert!(spec.success_actions.is_empty());
    }
}
