//! The Task reconciler's pure core: from a Task, its runs and the Ignitors it names, the runs
//! to start for new firings, the runs to stop (Replace), the old runs to delete (history
//! limits), and the status ORCA's columns show.

use std::collections::{BTreeMap, BTreeSet};

use crd_types::common::{CONDITION_READY, seconds, set_condition};
use crd_types::workflow::{
    ActionRef, CANCEL_ANNOTATION, EARLIER_IGNITIONS, Ignition, IgnitionCursor, Ignitor, IgnitorStatus, Initiator,
    InitiatorKind, PrunedRuns, Task, TaskRef, TaskRun, TaskRunPhase, TaskRunSpec, TaskStatus,
};
use jiff::Timestamp;
use kube::{Resource, ResourceExt};

use crate::gate::{Gate, gate, is_active, loop_guard_tripped};
use crate::naming::run_name;

/// Condition saying whether every action the Task names is known and well-formed.
pub const CONDITION_ACTIONS_VALID: &str = "ActionsValid";
/// Ready=False reason: a Task or Ignitor that starts this Task does not exist (yet).
pub const MISSING_TRIGGERS: &str = "MissingTriggers";

/// Default number of successful and of failed runs kept.
pub const DEFAULT_HISTORY: i32 = 3;

/// How long before a Task's creation an Ignitor's firing may be and still start it: a `NOW`
/// Ignitor applied in the same `kubectl apply` as its Task fires before the Task exists.
pub const APPLIED_TOGETHER: jiff::SignedDuration = jiff::SignedDuration::from_secs(10);

/// What the Task reconciler sees.
#[derive(Debug)]
pub struct TaskView<'a> {
    /// Now.
    pub now: Timestamp,
    /// The Task.
    pub task: &'a Task,
    /// Its runs.
    pub runs: Vec<&'a TaskRun>,
    /// Each Ignitor in `startOnIgnition`, if it exists.
    pub ignitors: BTreeMap<String, Option<&'a Ignitor>>,
    /// Each task in `startOnSuccess`/`startOnFailure`, and whether it exists.
    pub predecessors: BTreeMap<String, bool>,
    /// The action names this controller knows.
    pub known_actions: &'a [&'static str],
    /// The join condition's compile error, if it has one.
    pub join_error: Option<String>,
}

/// An Event to emit on the Task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskEvent {
    /// Warning or Normal.
    pub warning: bool,
    /// Stable reason.
    pub reason: &'static str,
    /// What happened.
    pub note: String,
}

/// What to do.
#[derive(Debug, Default)]
pub struct TaskPlan {
    /// The status to write.
    pub status: TaskStatus,
    /// Runs to create.
    pub create: Vec<TaskRun>,
    /// Runs to stop (annotated for cancellation).
    pub cancel: Vec<String>,
    /// Runs to delete, once `status` (which counts them) is written.
    pub delete: Vec<String>,
    /// When the next finished run's time to live ends: look again then.
    pub next_expiry: Option<Timestamp>,
    /// Events.
    pub events: Vec<TaskEvent>,
}

fn phase(run: &TaskRun) -> Option<TaskRunPhase> {
    run.status.as_ref().and_then(|s| s.phase)
}

fn completed_at(run: &TaskRun) -> Option<Timestamp> {
    run.status
        .as_ref()
        .and_then(|s| s.completion_time.as_ref())
        .map(|t| t.0)
}

/// Orders runs by creation. Creation times have whole seconds, and a fast loop makes several
/// runs a second: of those, one not started yet is the newest, else the one started last
/// (a loop starts each run after the one before it). Names, hashed, only break what is left.
fn creation_order(run: &TaskRun) -> (Option<Timestamp>, bool, Option<Timestamp>, String) {
    let started = run.status.as_ref().and_then(|s| s.start_time.as_ref()).map(|t| t.0);
    (
        run.creation_timestamp().map(|t| t.0),
        started.is_none(),
        started,
        run.name_any(),
    )
}

fn is_finished(run: &TaskRun) -> bool {
    matches!(phase(run), Some(TaskRunPhase::Succeeded | TaskRunPhase::Failed))
}

/// A TaskRun for `task`, started by `initiator`, with a name derived from the trigger.
pub fn new_run(task: &Task, initiator: Initiator, data: Option<String>, trigger: &[&str]) -> TaskRun {
    let name = run_name(&task.name_any(), trigger);
    let mut run = TaskRun::new(
        &name,
        TaskRunSpec {
            task_ref: TaskRef { name: task.name_any() },
            initiator: Some(initiator),
            data: data.map(crd_types::workflow::within_data_limit),
            joined: vec![],
        },
    );
    run.metadata.namespace = task.namespace();
    run.metadata.labels = Some([(crd_types::workflow::TASK_LABEL.to_string(), task.name_any())].into());
    // Owned by its Task, as Jobs are by their CronJob: deleting the Task deletes its history.
    run.metadata.owner_references = task.controller_owner_ref(&()).map(|owner| vec![owner]);
    run
}

/// What the cache keeps of a TaskRun that handed off: nothing writes it again, so all but
/// its data (the run's copy of what it was handed, up to 4 KiB), its conditions, action
/// results and annotations other than a cancellation, which nothing reads once it is done. A
/// run still going is kept whole: its status is written from it.
pub fn slim_handed_off(run: &mut TaskRun) {
    if run.status.as_ref().is_some_and(|s| s.handed_off) {
        slim_run(run);
    }
}

/// Drops what only a run's own reconcile reads.
pub fn slim_run(run: &mut TaskRun) {
    run.spec.data = None;
    if let Some(annotations) = run.metadata.annotations.as_mut() {
        annotations.retain(|key, _| key == CANCEL_ANNOTATION);
    }
    if let Some(status) = run.status.as_mut() {
        status.conditions = Vec::new();
        status.action_results = Vec::new();
    }
}

/// Counts, times and state from the live runs and what was pruned.
pub fn summarize(stored: &TaskStatus, runs: &[&TaskRun]) -> TaskStatus {
    let mut status = stored.clone();
    let pruned = stored.pruned.clone().unwrap_or_default();
    let deleting: BTreeSet<&str> = pruned.deleting.iter().map(String::as_str).collect();
    let mut live: Vec<&TaskRun> = runs
        .iter()
        .copied()
        .filter(|r| !deleting.contains(r.name_any().as_str()))
        .collect();
    live.sort_by_key(|r| (completed_at(r), r.name_any()));

    let succeeded: Vec<&TaskRun> = live
        .iter()
        .copied()
        .filter(|r| phase(r) == Some(TaskRunPhase::Succeeded))
        .collect();
    let failed: Vec<&TaskRun> = live
        .iter()
        .copied()
        .filter(|r| phase(r) == Some(TaskRunPhase::Failed))
        .collect();
    status.success_count = pruned.succeeded + succeeded.len() as i64;
    status.failures_count = pruned.failed + failed.len() as i64;
    if let Some(at) = succeeded.last().and_then(|r| completed_at(r)) {
        status.last_success = Some(seconds(at)).max(stored.last_success.clone());
    }
    if let Some(at) = failed.last().and_then(|r| completed_at(r)) {
        status.last_failure = Some(seconds(at)).max(stored.last_failure.clone());
    }
    // Failures in a row, newest first, until a success; pruned ones count when no live
    // success is newer than them.
    let finished: Vec<&TaskRun> = live.iter().copied().filter(|r| is_finished(r)).collect();
    let trailing = finished
        .iter()
        .rev()
        .take_while(|r| phase(r) == Some(TaskRunPhase::Failed))
        .count() as i64;
    status.consecutive_failures = if trailing == finished.len() as i64 {
        trailing + pruned.failures_since_success
    } else {
        trailing
    };
    if status.consecutive_failures == 0 {
        status.loop_guard_offset = 0;
    }
    let newest = runs.iter().max_by_key(|r| creation_order(r));
    status.last_run = newest.map(|r| r.name_any()).or(stored.last_run.clone());
    // As ORCA shows it: waiting for its next trigger or running; how the last run ended has
    // its own columns (LASTSUCCESS, LASTFAILURE).
    let running = runs.iter().any(|r| is_active(r));
    status.state = Some(if running { "Running" } else { "Pending" }.into());
    status
}

/// The firings of Ignitor `name` (its `status`, `latest` firing among them) this task has not
/// acted on, oldest first: those after `cursor`, the last firing it saw. A task that has seen
/// none acts only on a latest firing from `acts_from` on. Firings that went by unseen and are
/// no longer in the Ignitor's status (its controller down or cut off for longer than a few of
/// the schedule's periods) start no run, and an Event says so.
fn fresh_ignitions<'a>(
    name: &str,
    ignitor_status: &'a IgnitorStatus,
    latest: &'a Ignition,
    cursor: Option<i64>,
    acts_from: Timestamp,
    events: &mut Vec<TaskEvent>,
) -> Vec<&'a Ignition> {
    let Some(seen) = cursor else {
        // Firings from before this task existed are not its to act on, unless it was
        // applied together with the Ignitor.
        return if latest.time.0 >= acts_from {
            vec![latest]
        } else {
            vec![]
        };
    };
    // The status is anyone's to write who may write it: take no more than the scheduler keeps.
    let mut fresh: Vec<&Ignition> = (ignitor_status.earlier_ignitions.iter().take(EARLIER_IGNITIONS))
        .chain(std::iter::once(latest))
        .filter(|i| i.sequence > seen && i.sequence <= latest.sequence)
        .collect();
    fresh.sort_by_key(|i| i.sequence);
    fresh.dedup_by_key(|i| i.sequence);
    if let Some(oldest) = fresh.first()
        && oldest.sequence > seen.saturating_add(1)
    {
        events.push(TaskEvent {
            warning: true,
            reason: "IgnitionsLost",
            note: format!(
                "{name} fired {} time(s) after ignition {seen} that this task never saw in time; they start no run",
                oldest.sequence - seen - 1
            ),
        });
    }
    fresh
}

/// Plans the Task reconcile.
pub fn plan_task(view: &TaskView<'_>) -> TaskPlan {
    let task = view.task;
    let generation = task.metadata.generation;
    let stored = task.status.clone().unwrap_or_default();
    let mut status = summarize(&stored, &view.runs);
    // A spec change forgives the failures that tripped the loop guard.
    let spec_changed = stored.observed_generation.is_some_and(|seen| Some(seen) != generation);
    if spec_changed && loop_guard_tripped(task, &status) {
        status.loop_guard_offset = status.consecutive_failures;
    }
    status.observed_generation = generation;
    let mut plan = TaskPlan::default();
    let now = seconds(view.now);

    // New firings of the Ignitors this task starts on.
    let created = task.creation_timestamp().map(|t| t.0).unwrap_or(view.now);
    let acts_from = seconds(created.checked_sub(APPLIED_TOGETHER).unwrap_or(created)).0;
    let mut runs: Vec<&TaskRun> = view.runs.clone();
    let mut new_runs: Vec<TaskRun> = Vec::new();
    for (name, ignitor) in &view.ignitors {
        let Some(ignitor_status) = ignitor.and_then(|i| i.status.as_ref()) else {
            continue;
        };
        let Some(latest) = ignitor_status.last_ignition.as_ref() else {
            continue;
        };
        let cursor = status.ignitions.iter().find(|c| &c.name == name).map(|c| c.sequence);
        let fresh = fresh_ignitions(name, ignitor_status, latest, cursor, acts_from, &mut plan.events);
        set_cursor(&mut status.ignitions, name, latest.sequence);
        for ignition in fresh {
            let sequence = ignition.sequence.to_string();
            let run = new_run(
                task,
                Initiator {
                    kind: InitiatorKind::Ignitor,
                    name: name.clone(),
                    run: Some(sequence.clone()),
                },
                ignition.data.clone(),
                &["Ignitor", name, &sequence],
            );
            // Already started: this firing was seen before (a replay, or a cache older than
            // our own last write). Gating it again could cancel the very run it started.
            if runs.iter().any(|r| r.metadata.name == run.metadata.name) {
                continue;
            }
            let active: Vec<&TaskRun> = runs.iter().copied().chain(new_runs.iter()).collect();
            match gate(task, &status, &active) {
                Gate::Start => new_runs.push(run),
                Gate::Replace(cancel) => {
                    // A run planned in this same pass is simply not created.
                    new_runs.retain(|r| !cancel.contains(&r.name_any()));
                    plan.cancel
                        .extend(cancel.into_iter().filter(|c| runs.iter().any(|r| r.name_any() == *c)));
                    runs.retain(|r| !plan.cancel.contains(&r.name_any()));
                    new_runs.push(run);
                }
                Gate::Skip { reason, message } => plan.events.push(TaskEvent {
                    warning: false,
                    reason,
                    note: format!(
                        "ignition {} of {name} did not start a run: {message}",
                        ignition.sequence
                    ),
                }),
            }
        }
    }
    status.ignitions.retain(|c| view.ignitors.contains_key(&c.name));
    plan.create = new_runs;
    if let Some(newest) = plan.create.last() {
        status.last_run = newest.metadata.name.clone();
        status.state = Some("Running".into());
    }

    (plan.delete, plan.next_expiry) = prune(task, &mut status, &view.runs, view.now);
    // Conditions.
    let missing: Vec<String> = view
        .ignitors
        .iter()
        .filter(|(_, i)| i.is_none())
        .map(|(n, _)| format!("Ignitor {n}"))
        .chain(
            view.predecessors
                .iter()
                .filter(|(_, exists)| !**exists)
                .map(|(n, _)| format!("Task {n}")),
        )
        .collect();
    let (ready, reason, message) = if !missing.is_empty() {
        (
            false,
            MISSING_TRIGGERS,
            format!("waiting for {} to exist", missing.join(", ")),
        )
    } else if let Some(err) = &view.join_error {
        (false, "InvalidJoinCondition", err.clone())
    } else if loop_guard_tripped(task, &status) {
        (
            false,
            "LoopGuard",
            format!(
                "stopped after {} consecutive failures; change the Task or create a TaskRun by hand to resume",
                status.consecutive_failures
            ),
        )
    } else if task.spec.suspend.unwrap_or(false) {
        (true, "Suspended", "suspended: triggers do not start runs".into())
    } else {
        (true, "Ready", "waiting for triggers".into())
    };
    let was = crd_types::common::find_condition(&stored.conditions, CONDITION_READY).map(|c| c.reason.clone());
    if !ready && was.as_deref() != Some(reason) {
        plan.events.push(TaskEvent {
            warning: true,
            reason,
            note: message.clone(),
        });
    }
    set_condition(
        &mut status.conditions,
        CONDITION_READY,
        ready,
        reason,
        message,
        generation,
        now.clone(),
    );

    let problems: Vec<String> = task
        .spec
        .success_actions
        .iter()
        .chain(&task.spec.failure_actions)
        .filter_map(|action| match action {
            ActionRef::Plugin(p) if view.known_actions.contains(&p.name.as_str()) => None,
            ActionRef::Plugin(p) => Some(format!("unknown action {:?}", p.name)),
            ActionRef::Invalid(v) => Some(format!("{v} is neither a name nor {{name, parameters}}")),
        })
        .collect();
    let (valid, reason, message) = if problems.is_empty() {
        (true, "ActionsKnown", "every action is known".to_string())
    } else {
        (false, "UnknownAction", problems.join("; "))
    };
    if !valid
        && crd_types::common::find_condition(&stored.conditions, CONDITION_ACTIONS_VALID).map(|c| c.status.as_str())
            != Some("False")
    {
        plan.events.push(TaskEvent {
            warning: true,
            reason,
            note: message.clone(),
        });
    }
    set_condition(
        &mut status.conditions,
        CONDITION_ACTIONS_VALID,
        valid,
        reason,
        message,
        generation,
        now,
    );

    // Forgetting deletions that completed is not worth a write of its own: it rides along
    // with the next change.
    if let (Some(pruned), Some(before)) = (&status.pruned, &stored.pruned)
        && pruned.deleting.len() < before.deleting.len()
    {
        let mut lazy = status.clone();
        if let Some(p) = lazy.pruned.as_mut() {
            p.deleting = before.deleting.clone();
        }
        if lazy == stored {
            status = lazy;
        }
    }
    plan.status = status;
    plan
}

fn set_cursor(cursors: &mut Vec<IgnitionCursor>, name: &str, sequence: i64) {
    match cursors.iter_mut().find(|c| c.name == name) {
        Some(cursor) => cursor.sequence = cursor.sequence.max(sequence),
        None => cursors.push(IgnitionCursor {
            name: name.into(),
            sequence,
        }),
    }
}

/// Moves runs past the history limits into the pruned tally and returns them for deletion.
/// Only runs that finished and handed off are pruned; the oldest go first.
/// The runs to delete: past the history limits, or finished longer ago than the time to
/// live; each counted in `status.pruned` so the counts stay whole. Also when the time to live
/// of the next finished run ends.
fn prune(task: &Task, status: &mut TaskStatus, runs: &[&TaskRun], now: Timestamp) -> (Vec<String>, Option<Timestamp>) {
    let mut pruned = status.pruned.clone().unwrap_or_default();
    let present: BTreeSet<String> = runs.iter().map(|r| r.name_any()).collect();
    // Deletions that completed no longer need remembering.
    pruned.deleting.retain(|name| present.contains(name));
    let mut delete: Vec<String> = pruned.deleting.clone();

    let keep = |limit: Option<i32>| limit.unwrap_or(DEFAULT_HISTORY).max(0) as usize;
    let ttl = task
        .spec
        .ttl_seconds_after_finished
        .map(|seconds| k8s_openapi::jiff::SignedDuration::from_secs(i64::from(seconds.max(0))));
    // A finish time so late that its expiry cannot be represented never expires.
    let expires = |run: &TaskRun| completed_at(run)?.checked_add(ttl?).ok();
    let mut next_expiry: Option<Timestamp> = None;
    for (wanted, limit) in [
        (TaskRunPhase::Succeeded, keep(task.spec.successful_runs_history_limit)),
        (TaskRunPhase::Failed, keep(task.spec.failed_runs_history_limit)),
    ] {
        let mut candidates: Vec<&TaskRun> = runs
            .iter()
            .copied()
            .filter(|r| phase(r) == Some(wanted))
            .filter(|r| r.status.as_ref().is_some_and(|s| s.handed_off))
            .filter(|r| !pruned.deleting.contains(&r.name_any()))
            .collect();
        candidates.sort_by_key(|r| (completed_at(r), r.name_any()));
        let excess = candidates.len().saturating_sub(limit);
        let mut expired = Vec::new();
        for (i, run) in candidates.into_iter().enumerate() {
            if i < excess || expires(run).is_some_and(|at| at <= now) {
                expired.push(run);
            } else {
                next_expiry = next_expiry.into_iter().chain(expires(run)).min();
            }
        }
        for run in expired {
            match wanted {
                TaskRunPhase::Succeeded => {
                    pruned.succeeded += 1;
                    // Every failure pruned so far is older than this success.
                    pruned.failures_since_success = 0;
                }
                _ => {
                    pruned.failed += 1;
                    let after_last_success = match (&status.last_success, completed_at(run)) {
                        (Some(success), Some(at)) => seconds(at) >= *success,
                        _ => true,
                    };
                    if after_last_success {
                        pruned.failures_since_success += 1;
                    }
                }
            }
            pruned.deleting.push(run.name_any());
            delete.push(run.name_any());
        }
    }
    status.pruned = (pruned != PrunedRuns::default()).then_some(pruned);
    (delete, next_expiry)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{finished, initiated_by_ignitor, simple_task, t};
    use crd_types::workflow::{Ignition, IgnitorSpec, IgnitorStatus, InitiatorKind, MAX_DATA_BYTES};

    #[test]
    fn the_last_run_of_a_fast_loop_is_the_newest_whatever_its_name() {
        // Three runs of a loop made within one second; their names sort against their order.
        let mut first = finished("loop", "loop-c", TaskRunPhase::Failed, 0, "");
        let mut second = finished("loop", "loop-b", TaskRunPhase::Failed, 0, "");
        for (run, started) in [(&mut first, 100), (&mut second, 400)] {
            let status = run.status.as_mut().expect("finished");
            status.start_time = Some(crd_types::common::micros(
                t("2026-01-01T00:00:00Z") + jiff::SignedDuration::from_millis(started),
            ));
        }
        let mut third = crate::testing::run_of("loop", "loop-a");
        third.metadata.creation_timestamp = first.metadata.creation_timestamp.clone();
        let stored = TaskStatus::default();

        let status = summarize(&stored, &[&third, &second, &first]);
        assert_eq!(
            status.last_run.as_deref(),
            Some("loop-a"),
            "not started yet: the newest"
        );
        let status = summarize(&stored, &[&first, &second]);
        assert_eq!(status.last_run.as_deref(), Some("loop-b"), "started last");
    }

    #[test]
    fn a_run_is_handed_at_most_the_data_a_taskrun_holds() {
        let initiator = Initiator {
            kind: InitiatorKind::Task,
            name: "before".into(),
            run: None,
        };
        let long = format!("cancelled: {}", "why ".repeat(5000));
        let run = new_run(
            &simple_task("next"),
            initiator,
            Some(long.clone()),
            &["Task", "before", "r"],
        );
        let data = run.spec.data.expect("data handed on");
        assert_eq!(data.len(), MAX_DATA_BYTES);
        assert!(long.starts_with(&data));
    }

    fn ignitor(name: &str, sequence: i64, at: &str) -> Ignitor {
        let mut ignitor = Ignitor::new(
            name,
            IgnitorSpec {
                description: None,
                scheduled: "NOW".into(),
                time_zone: None,
                data: None,
                suspend: None,
                starting_deadline_seconds: None,
                missed_firing_policy: None,
            },
        );
        ignitor.status = Some(IgnitorStatus {
            last_ignition: Some(Ignition {
                sequence,
                time: crd_types::common::micros(t(at)),
                scheduled_time: None,
                data: Some(format!("data {sequence}")),
                reason: "Now".into(),
            }),
            ..IgnitorStatus::default()
        });
        ignitor
    }

    #[test]
    fn a_task_plans_the_same_from_slimmed_runs() {
        let mut task = simple_task("t");
        task.spec.successful_runs_history_limit = Some(1);
        let mut full = vec![
            finished("t", "t-1", TaskRunPhase::Failed, 10, "no"),
            finished("t", "t-2", TaskRunPhase::Succeeded, 20, "the answer"),
            finished("t", "t-3", TaskRunPhase::Succeeded, 30, "again"),
        ];
        for run in &mut full {
            run.spec.data = Some("x".repeat(4000));
            run.metadata.annotations = Some([("note".to_owned(), "kept elsewhere".to_owned())].into());
        }
        let mut slimmed = finished("t", "t-4", TaskRunPhase::Running, 40, "");
        assert!(is_active(&slimmed));
        slimmed.metadata.annotations = Some([(CANCEL_ANNOTATION.to_owned(), "replaced".to_owned())].into());
        slim_run(&mut slimmed);
        assert!(!is_active(&slimmed), "a cancellation stays in the cache");
        let mut going = full[0].clone();
        going.status.get_or_insert_default().handed_off = false;
        slim_handed_off(&mut going);
        assert_eq!(
            going.spec.data, full[0].spec.data,
            "a run that has not handed off is kept whole"
        );
        assert_eq!(going.metadata.annotations, full[0].metadata.annotations);
        let mut slim = full.clone();
        for run in &mut slim {
            run.status.get_or_insert_default().handed_off = true;
            slim_handed_off(run);
            assert_eq!(run.spec.data, None);
        }
        let plan = |runs: &[TaskRun]| plan_task(&view(&task, runs.iter().collect(), &[]));
        let (from_full, from_slim) = (plan(&full), plan(&slim));
        assert_eq!(from_slim.status, from_full.status);
        assert_eq!(from_slim.status.success_count, 2);
        assert_eq!(from_slim.delete, from_full.delete);
        assert_eq!(from_slim.delete, vec!["t-2".to_owned()]);
    }

    fn view<'a>(task: &'a Task, runs: Vec<&'a TaskRun>, ignitors: &'a [Ignitor]) -> TaskView<'a> {
        TaskView {
            now: t("2026-01-01T01:00:00Z"),
            task,
            runs,
            ignitors: task
                .spec
                .start_on_ignition
                .iter()
                .map(|n| (n.clone(), ignitors.iter().find(|i| i.name_any() == *n)))
                .collect(),
            predecessors: task.spec.start_on_success.iter().map(|n| (n.clone(), true)).collect(),
            known_actions: &["event"],
            join_error: None,
        }
    }

    #[test]
    fn a_firing_starts_one_run_with_the_ignitors_data_once() {
        let mut task = simple_task("task1");
        task.spec.start_on_ignition = vec!["ignitor1".into()];
        let ignitors = [ignitor("ignitor1", 1, "2026-01-01T00:00:01Z")];
        let plan = plan_task(&view(&task, vec![], &ignitors));
        assert_eq!(plan.create.len(), 1);
        let run = &plan.create[0];
        assert_eq!(run.spec.data.as_deref(), Some("data 1"));
        assert_eq!(run.spec.initiator.as_ref().map(|i| i.name.as_str()), Some("ignitor1"));
        assert_eq!(
            plan.status.ignitions,
            vec![IgnitionCursor {
                name: "ignitor1".into(),
                sequence: 1
            }]
        );

        // The same firing, seen again with the cursor written, starts nothing.
        let mut seen = task.clone();
        seen.status = Some(plan.status.clone());
        let mut existing = run.clone();
        initiated_by_ignitor(&mut existing, "ignitor1", 1);
        let again = plan_task(&view(&seen, vec![&existing], &ignitors));
        assert!(again.create.is_empty());
    }

    #[test]
    fn a_firing_seen_again_through_a_stale_cache_does_not_replace_its_own_run() {
        let mut task = simple_task("task1");
        task.spec.start_on_ignition = vec!["ignitor1".into()];
        task.spec.concurrency_policy = Some(crd_types::workflow::ConcurrencyPolicy::Replace);
        let ignitors = [ignitor("ignitor1", 1, "2026-01-01T00:00:01Z")];
        let first = plan_task(&view(&task, vec![], &ignitors));
        // The run exists and is running, but the Task's status in the cache has no cursor yet.
        let started = first.create[0].clone();
        let again = plan_task(&view(&task, vec![&started], &ignitors));
        assert!(again.create.is_empty());
        assert!(again.cancel.is_empty(), "{:?}", again.cancel);
    }

    /// Ignitor `name` whose latest firing is `latest`, keeping `earlier` (newest first).
    fn ignitor_keeping(name: &str, latest: i64, earlier: std::ops::RangeInclusive<i64>) -> Ignitor {
        let mut fired = ignitor(name, latest, "2026-01-01T00:10:01Z");
        let kept = earlier
            .rev()
            .filter_map(|s| ignitor(name, s, "2026-01-01T00:05:01Z").status?.last_ignition);
        fired.status.as_mut().expect("fired").earlier_ignitions = kept.collect();
        fired
    }

    fn started_sequences(plan: &TaskPlan) -> Vec<String> {
        plan.create
            .iter()
            .filter_map(|r| r.spec.initiator.as_ref()?.run.clone())
            .collect()
    }

    #[test]
    fn firings_the_task_did_not_see_in_time_each_start_a_run_while_the_ignitor_keeps_them() {
        let mut task = simple_task("task1");
        task.spec.start_on_ignition = vec!["ignitor1".into()];
        let first = plan_task(&view(&task, vec![], &[ignitor("ignitor1", 1, "2026-01-01T00:00:01Z")]));
        task.status = Some(first.status);

        // Firings 2 and 3 went by unseen; the Ignitor keeps them (and 1) before its latest, 4.
        let plan = plan_task(&view(&task, vec![], &[ignitor_keeping("ignitor1", 4, 1..=3)]));
        assert_eq!(started_sequences(&plan), ["2", "3", "4"]);
        assert!(plan.events.is_empty(), "{:?}", plan.events);
        assert_eq!(plan.status.ignitions[0].sequence, 4);

        // Past what it keeps: 5 is gone, 6 to 10 start.
        task.status = Some(plan.status);
        let plan = plan_task(&view(&task, vec![], &[ignitor_keeping("ignitor1", 10, 6..=9)]));
        assert_eq!(started_sequences(&plan), ["6", "7", "8", "9", "10"]);
        let lost: Vec<&TaskEvent> = plan.events.iter().filter(|e| e.reason == "IgnitionsLost").collect();
        assert_eq!(lost.len(), 1, "{:?}", plan.events);
        assert!(lost[0].warning);
        assert!(
            lost[0].note.contains("fired 1 time(s) after ignition 4"),
            "{}",
            lost[0].note
        );

        // A status claiming more than the scheduler keeps is read no further than that.
        task.status = Some(plan.status);
        let plan = plan_task(&view(&task, vec![], &[ignitor_keeping("ignitor1", 20, 11..=19)]));
        assert_eq!(started_sequences(&plan), ["16", "17", "18", "19", "20"]);
    }

    #[test]
    fn firings_planned_together_follow_the_concurrency_policy() {
        let mut task = simple_task("task1");
        task.spec.start_on_ignition = vec!["ignitor1".into()];
        let first = plan_task(&view(&task, vec![], &[ignitor("ignitor1", 1, "2026-01-01T00:00:01Z")]));
        task.status = Some(first.status);
        let unseen = [ignitor_keeping("ignitor1", 3, 1..=2)];

        task.spec.concurrency_policy = Some(crd_types::workflow::ConcurrencyPolicy::Forbid);
        let plan = plan_task(&view(&task, vec![], &unseen));
        assert_eq!(
            started_sequences(&plan),
            ["2"],
            "the first runs, the others are refused"
        );
        assert_eq!(
            plan.events
                .iter()
                .filter(|e| e.reason == "ConcurrencyForbidden")
                .count(),
            1
        );

        task.spec.concurrency_policy = Some(crd_types::workflow::ConcurrencyPolicy::Replace);
        let plan = plan_task(&view(&task, vec![], &unseen));
        assert_eq!(started_sequences(&plan), ["3"], "only the latest is created");
        assert!(
            plan.cancel.is_empty(),
            "nothing that exists is cancelled: {:?}",
            plan.cancel
        );
    }

    #[test]
    fn firings_from_before_the_task_existed_are_not_acted_on() {
        let mut task = simple_task("task1");
        task.spec.start_on_ignition = vec!["ignitor1".into()];
        let ignitors = [ignitor("ignitor1", 4, "2025-12-31T23:00:00Z")];
        let plan = plan_task(&view(&task, vec![], &ignitors));
        assert!(plan.create.is_empty());
        assert_eq!(plan.status.ignitions[0].sequence, 4, "the baseline is recorded");
    }

    #[test]
    fn a_firing_just_before_the_task_was_created_starts_it() {
        // One `kubectl apply` of a NOW Ignitor and its Task: the firing comes first.
        let mut task = simple_task("task1");
        task.spec.start_on_ignition = vec!["ignitor1".into()];
        let ignitors = [ignitor("ignitor1", 1, "2025-12-31T23:59:52Z")];
        let plan = plan_task(&view(&task, vec![], &ignitors));
        assert_eq!(plan.create.len(), 1);
        let late = [ignitor("ignitor1", 1, "2025-12-31T23:59:49Z")];
        assert!(plan_task(&view(&task, vec![], &late)).create.is_empty());
    }

    #[test]
    fn orca_columns_count_successes_and_failures() {
        let task = simple_task("task1");
        let runs = [
            finished("task1", "r1", TaskRunPhase::Failed, 10, ""),
            finished("task1", "r2", TaskRunPhase::Failed, 20, ""),
            finished("task1", "r3", TaskRunPhase::Succeeded, 30, ""),
        ];
        let plan = plan_task(&view(&task, runs.iter().collect(), &[]));
        assert_eq!((plan.status.failures_count, plan.status.success_count), (2, 1));
        assert_eq!(plan.status.consecutive_failures, 0);
        assert_eq!(plan.status.state.as_deref(), Some("Pending"));
        assert!(plan.status.last_success > plan.status.last_failure);
    }

    #[test]
    fn a_finished_run_goes_when_its_time_to_live_ends_and_stays_counted() {
        let mut task = simple_task("task1");
        task.spec.ttl_seconds_after_finished = Some(600);
        // Now is 3600 s after the runs' epoch: the first ended 2600 s ago, the second 100 s ago.
        let runs = [
            finished("task1", "old", TaskRunPhase::Failed, 1000, ""),
            finished("task1", "recent", TaskRunPhase::Succeeded, 3500, ""),
        ];
        let plan = plan_task(&view(&task, runs.iter().collect(), &[]));
        assert_eq!(plan.delete, ["old"]);
        assert_eq!((plan.status.failures_count, plan.status.success_count), (1, 1));
        let expiry = Timestamp::from_second(1_767_225_600 + 3500 + 600).unwrap();
        assert_eq!(plan.next_expiry, Some(expiry));

        task.spec.ttl_seconds_after_finished = None;
        let plan = plan_task(&view(&task, runs.iter().collect(), &[]));
        assert!(plan.delete.is_empty() && plan.next_expiry.is_none());
    }

    #[test]
    fn a_finish_time_at_the_end_of_time_never_expires_and_does_not_overflow() {
        let mut task = simple_task("task1");
        task.spec.ttl_seconds_after_finished = Some(i32::MAX);
        let mut run = finished("task1", "late", TaskRunPhase::Succeeded, 0, "");
        let latest = Timestamp::MAX;
        run.status.as_mut().unwrap().completion_time = Some(crd_types::common::micros(latest));
        let plan = plan_task(&view(&task, vec![&run], &[]));
        assert!(plan.delete.is_empty() && plan.next_expiry.is_none());
    }

    #[test]
    fn history_limits_prune_the_oldest_and_the_counts_stay_whole() {
        let mut task = simple_task("task1");
        task.spec.successful_runs_history_limit = Some(1);
        task.spec.failed_runs_history_limit = Some(1);
        let runs = [
            finished("task1", "s1", TaskRunPhase::Succeeded, 10, ""),
            finished("task1", "f1", TaskRunPhase::Failed, 20, ""),
            finished("task1", "f2", TaskRunPhase::Failed, 30, ""),
            finished("task1", "s2", TaskRunPhase::Succeeded, 40, ""),
            finished("task1", "f3", TaskRunPhase::Failed, 50, ""),
        ];
        let plan = plan_task(&view(&task, runs.iter().collect(), &[]));
        let mut deleted = plan.delete.clone();
        deleted.sort();
        assert_eq!(deleted, vec!["f1", "f2", "s1"]);
        assert_eq!((plan.status.success_count, plan.status.failures_count), (2, 3));
        assert_eq!(plan.status.consecutive_failures, 1);

        // After the deletions: the same counts from the tally and the two runs left.
        let mut after = task.clone();
        after.status = Some(plan.status.clone());
        let left = [runs[3].clone(), runs[4].clone()];
        let next = plan_task(&view(&after, left.iter().collect(), &[]));
        assert_eq!((next.status.success_count, next.status.failures_count), (2, 3));
        assert!(next.delete.is_empty());
        // The finished deletions alone are not worth a write; they are forgotten with the next one.
        assert_eq!(Some(&next.status), after.status.as_ref(), "nothing to write");
    }

    #[test]
    fn the_loop_guard_counts_pruned_failures_and_a_spec_change_forgives() {
        let mut task = simple_task("task1");
        task.spec.max_consecutive_failures = Some(3);
        task.spec.failed_runs_history_limit = Some(1);
        let runs: Vec<TaskRun> = (1..=3)
            .map(|i| finished("task1", &format!("f{i}"), TaskRunPhase::Failed, i * 10, ""))
            .collect();
        let plan = plan_task(&view(&task, runs.iter().collect(), &[]));
        assert_eq!(plan.status.consecutive_failures, 3);
        let ready = crd_types::common::find_condition(&plan.status.conditions, CONDITION_READY).unwrap();
        assert_eq!(ready.reason, "LoopGuard");
        // Pruned down to one run, the streak is still 3.
        let mut after = task.clone();
        after.status = Some(plan.status.clone());
        let left = [runs[2].clone()];
        let next = plan_task(&view(&after, left.iter().collect(), &[]));
        assert_eq!(next.status.consecutive_failures, 3);
        // A spec change (new generation) forgives.
        after.metadata.generation = Some(2);
        after.status = Some(next.status.clone());
        let changed = plan_task(&view(&after, left.iter().collect(), &[]));
        let ready = crd_types::common::find_condition(&changed.status.conditions, CONDITION_READY).unwrap();
        assert_eq!(ready.reason, "Ready");
    }

    #[test]
    fn missing_triggers_and_unknown_actions_are_conditions() {
        let mut task = simple_task("task1");
        task.spec.start_on_ignition = vec!["nope".into()];
        task.spec.failure_actions = vec![ActionRef::Plugin(crd_types::PluginRef::named("YOUR-PLUGIN-NAME"))];
        let plan = plan_task(&view(&task, vec![], &[]));
        let ready = crd_types::common::find_condition(&plan.status.conditions, CONDITION_READY).unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "MissingTriggers")
        );
        assert!(ready.message.contains("Ignitor nope"));
        let actions = crd_types::common::find_condition(&plan.status.conditions, CONDITION_ACTIONS_VALID).unwrap();
        assert_eq!(actions.reason, "UnknownAction");
        assert!(actions.message.contains("YOUR-PLUGIN-NAME"));
        assert_eq!(plan.events.len(), 2);
    }
}
