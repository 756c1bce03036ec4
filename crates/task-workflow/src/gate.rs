//! Whether a Task may start a run now: suspension, the loop guard, and the concurrency policy.
//! Shared by every path that starts runs (an Ignitor firing, a predecessor finishing).

use crd_types::workflow::{CANCEL_ANNOTATION, ConcurrencyPolicy, Task, TaskRun, TaskRunPhase, TaskStatus};
use kube::ResourceExt;

/// Consecutive failures after which a task stops starting, unless it says otherwise.
pub const DEFAULT_MAX_CONSECUTIVE_FAILURES: i32 = 10;

/// The answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    /// Start the run.
    Start,
    /// Cancel these running runs, then start.
    Replace(Vec<String>),
    /// Do not start.
    Skip {
        /// Stable reason.
        reason: &'static str,
        /// Why, for people.
        message: String,
    },
}

/// True while the run has not finished and nobody asked it to stop.
pub fn is_active(run: &TaskRun) -> bool {
    let finished = matches!(
        run.status.as_ref().and_then(|s| s.phase),
        Some(TaskRunPhase::Succeeded | TaskRunPhase::Failed)
    );
    !finished && !run.annotations().contains_key(CANCEL_ANNOTATION)
}

/// True when the loop guard stopped the task: too many failures in a row since the last
/// success (or since the spec last changed while stopped).
pub fn loop_guard_tripped(task: &Task, status: &TaskStatus) -> bool {
    let limit = i64::from(
        task.spec
            .max_consecutive_failures
            .unwrap_or(DEFAULT_MAX_CONSECUTIVE_FAILURES),
    );
    status.consecutive_failures - status.loop_guard_offset >= limit
}

/// May `task` (with `status` and its `runs`) start a run now?
pub fn gate(task: &Task, status: &TaskStatus, runs: &[&TaskRun]) -> Gate {
    if task.spec.suspend.unwrap_or(false) {
        return Gate::Skip {
            reason: "Suspended",
            message: "the task is suspended".into(),
        };
    }
    if loop_guard_tripped(task, status) {
        return Gate::Skip {
            reason: "LoopGuard",
            message: format!(
                "stopped after {} consecutive failures; change the Task or create a TaskRun by hand to resume",
                status.consecutive_failures
            ),
        };
    }
    let active: Vec<String> = runs.iter().filter(|r| is_active(r)).map(|r| r.name_any()).collect();
    if active.is_empty() {
        return Gate::Start;
    }
    match task.spec.concurrency_policy.unwrap_or_default() {
        ConcurrencyPolicy::Allow => Gate::Start,
        ConcurrencyPolicy::Forbid => Gate::Skip {
            reason: "ConcurrencyForbidden",
            message: format!(
                "{} is still running and the concurrency policy is Forbid",
                active.join(", ")
            ),
        },
        ConcurrencyPolicy::Replace => Gate::Replace(active),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{finished, run_of, simple_task};

    #[test]
    fn concurrency_policies() {
        let mut task = simple_task("t");
        let running = run_of("t", "t-1");
        let done = finished("t", "t-0", TaskRunPhase::Succeeded, 1, "");
        let status = TaskStatus::default();
        assert_eq!(gate(&task, &status, &[&done]), Gate::Start);
        assert_eq!(gate(&task, &status, &[&running, &done]), Gate::Start);
        task.spec.concurrency_policy = Some(ConcurrencyPolicy::Forbid);
        assert!(matches!(
            gate(&task, &status, &[&running]),
            Gate::Skip {
                reason: "ConcurrencyForbidden",
                ..
            }
        ));
        task.spec.concurrency_policy = Some(ConcurrencyPolicy::Replace);
        assert_eq!(
            gate(&task, &status, &[&running, &done]),
            Gate::Replace(vec!["t-1".into()])
        );
    }

    #[test]
    fn suspension_and_the_loop_guard_stop_starts() {
        let mut task = simple_task("t");
        task.spec.max_consecutive_failures = Some(3);
        let mut status = TaskStatus {
            consecutive_failures: 3,
            ..TaskStatus::default()
        };
        assert!(matches!(
            gate(&task, &status, &[]),
            Gate::Skip {
                reason: "LoopGuard",
                ..
            }
        ));
        status.loop_guard_offset = 3;
        assert_eq!(
            gate(&task, &status, &[]),
            Gate::Start,
            "a spec change forgives the streak so far"
        );
        task.spec.suspend = Some(true);
        assert!(matches!(
            gate(&task, &status, &[]),
            Gate::Skip {
                reason: "Suspended",
                ..
            }
        ));
    }
}
