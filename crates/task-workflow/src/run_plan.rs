//! The TaskRun reconciler's pure core: from a run, its Task and its current pod, what to do
//! next: create the attempt's pod, follow the pod into the run's status, retry with backoff,
//! stop at the deadline or on request, and hand off once finished.

use crd_types::common::{CONDITION_READY, micros, seconds, set_condition};
use crd_types::workflow::{CANCEL_ANNOTATION, Task, TaskRun, TaskRunPhase, TaskRunStatus};
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

use crate::attempt_pod::AttemptPod;
use crate::naming::pod_name;
use crate::pod::build_pod;

/// Default delay before the first retry, doubled for each further one.
pub const DEFAULT_BACKOFF_SECONDS: i32 = 10;
/// Default cap on the retry delay.
pub const DEFAULT_MAX_BACKOFF_SECONDS: i32 = 600;

/// What the TaskRun reconciler sees.
#[derive(Debug)]
pub struct RunView<'a> {
    /// Now.
    pub now: Timestamp,
    /// The run.
    pub run: &'a TaskRun,
    /// Its Task, if it exists.
    pub task: Option<&'a Task>,
    /// The pod of its current attempt, if it exists.
    pub pod: Option<&'a AttemptPod>,
}

/// What to do.
#[derive(Debug, Default)]
pub struct RunPlan {
    /// The status to write (unchanged when there is nothing to say).
    pub status: TaskRunStatus,
    /// A pod to create (then `status` is written).
    pub create_pod: Option<Pod>,
    /// A pod to delete (deadline, cancellation).
    pub delete_pod: Option<String>,
    /// The run finished: run its actions and start what it triggers, then write `status`
    /// with `handedOff`.
    pub hand_off: bool,
    /// The run finished in this plan (`status` is terminal, the stored one was not). The
    /// hand-off may then happen right away, in the same write, when no successor joins.
    pub finished_now: bool,
    /// When to look again.
    pub wake_at: Option<Timestamp>,
}

fn ready(status: &mut TaskRunStatus, view: &RunView<'_>, ok: bool, reason: &str, message: impl Into<String>) {
    set_condition(
        &mut status.conditions,
        CONDITION_READY,
        ok,
        reason,
        message,
        view.run.metadata.generation,
        seconds(view.now),
    );
}

fn finish(status: &mut TaskRunStatus, view: &RunView<'_>, phase: TaskRunPhase, reason: &str, message: Option<String>) {
    status.phase = Some(phase);
    status.completion_time = Some(micros(view.now));
    status.next_attempt_time = None;
    if message.is_some() {
        status.message = message;
    }
    let text = match phase {
        TaskRunPhase::Succeeded => "the run succeeded".to_string(),
        _ => status.message.clone().unwrap_or_else(|| "the run failed".into()),
    };
    ready(status, view, phase == TaskRunPhase::Succeeded, reason, text);
}

/// The delay before retry number `attempt + 1`.
pub fn backoff(task: &Task, attempt: i32) -> SignedDuration {
    let retry = task.spec.retry.clone().unwrap_or_default();
    let base = i64::from(retry.backoff_seconds.unwrap_or(DEFAULT_BACKOFF_SECONDS));
    let cap = i64::from(retry.max_backoff_seconds.unwrap_or(DEFAULT_MAX_BACKOFF_SECONDS));
    let factor = 1_i64.checked_shl(attempt.clamp(0, 30) as u32).unwrap_or(i64::MAX);
    SignedDuration::from_secs(base.saturating_mul(factor).min(cap))
}

/// Plans the TaskRun reconcile.
pub fn plan_run(view: &RunView<'_>) -> RunPlan {
    let run = view.run;
    let stored = run.status.clone().unwrap_or_default();
    let mut status = stored.clone();
    status.observed_generation = run.metadata.generation;
    let mut plan = RunPlan::default();
    if status.handed_off {
        plan.status = status;
        return plan;
    }
    if matches!(status.phase, Some(TaskRunPhase::Succeeded | TaskRunPhase::Failed)) {
        plan.hand_off = true;
        plan.status = status;
        return plan;
    }
    let current_pod = pod_name(&run.name_any(), status.attempt);

    if let Some(reason) = run.annotations().get(CANCEL_ANNOTATION) {
        plan.delete_pod = view.pod.map(|_| current_pod.clone());
        let message = if reason.is_empty() {
            "cancelled".to_string()
        } else {
            format!("cancelled: {reason}")
        };
        finish(&mut status, view, TaskRunPhase::Failed, "Cancelled", Some(message));
        plan.status = status;
        return plan;
    }
    let Some(task) = view.task else {
        status.phase = Some(TaskRunPhase::Pending);
        ready(
            &mut status,
            view,
            false,
            "TaskNotFound",
            format!(
                "Task {} does not exist; the run starts when it does",
                run.spec.task_ref.name
            ),
        );
        plan.status = status;
        return plan;
    };

    // The deadline covers every attempt, from the run's creation.
    if let Some(seconds_allowed) = task.spec.active_deadline_seconds {
        let started = run.creation_timestamp().map(|t| t.0).unwrap_or(view.now);
        let deadline = started
            .checked_add(SignedDuration::from_secs(seconds_allowed))
            .unwrap_or(started);
        if view.now >= deadline {
            plan.delete_pod = view.pod.map(|_| current_pod.clone());
            let message = match view.pod.and_then(|p| p.waiting.as_deref()) {
                Some(why) => format!("ran past its deadline of {seconds_allowed}s; its pod never started: {why}"),
                None => format!("ran past its deadline of {seconds_allowed}s"),
            };
            finish(
                &mut status,
                view,
                TaskRunPhase::Failed,
                "DeadlineExceeded",
                Some(message),
            );
            plan.status = status;
            return plan;
        }
        plan.wake_at = Some(deadline);
    }

    if let Some(next) = status.next_attempt_time.clone() {
        if view.now < next.0 {
            plan.wake_at = Some(plan.wake_at.map_or(next.0, |w| w.min(next.0)));
            plan.status = status;
            return plan;
        }
        status.attempt += 1;
        status.next_attempt_time = None;
        return create_attempt(view, task, status, plan);
    }

    let Some(pod) = view.pod else {
        if status.pod_name.as_deref() == Some(current_pod.as_str()) && status.phase == Some(TaskRunPhase::Running) {
            // The pod we started is gone (deleted by someone): the attempt failed.
            return attempt_failed(
                view,
                task,
                status,
                plan,
                None,
                Some(format!("pod {current_pod} was deleted")),
            );
        }
        return create_attempt(view, task, status, plan);
    };
    match pod.phase.as_deref().unwrap_or("Pending") {
        "Running" => {
            status.phase = Some(TaskRunPhase::Running);
            if status.start_time.is_none() {
                status.start_time = Some(micros(view.now));
            }
            ready(
                &mut status,
                view,
                true,
                "Running",
                format!("pod {current_pod} is running"),
            );
        }
        "Succeeded" => {
            status.exit_code = pod.exit_code.or(Some(0));
            status.start_time = status.start_time.or(Some(micros(view.now)));
            finish(
                &mut status,
                view,
                TaskRunPhase::Succeeded,
                "Succeeded",
                pod.message.clone(),
            );
        }
        "Failed" => {
            status.start_time = status.start_time.or(Some(micros(view.now)));
            return attempt_failed(view, task, status, plan, pod.exit_code, pod.message.clone());
        }
        _ => {
            status.phase = Some(TaskRunPhase::Pending);
            match pod.waiting.as_deref() {
                // The kubelet cannot start it (an image not present, a bad configuration):
                // said on the run while it waits, and in its failure at the deadline.
                Some(why) => ready(
                    &mut status,
                    view,
                    false,
                    "PodCannotStart",
                    format!("pod {current_pod} cannot start: {why}"),
                ),
                None => ready(
                    &mut status,
                    view,
                    true,
                    "Pending",
                    format!("pod {current_pod} is pending"),
                ),
            }
        }
    }
    plan.finished_now = matches!(status.phase, Some(TaskRunPhase::Succeeded | TaskRunPhase::Failed));
    plan.status = status;
    plan
}

fn create_attempt(view: &RunView<'_>, task: &Task, mut status: TaskRunStatus, mut plan: RunPlan) -> RunPlan {
    match build_pod(task, view.run, status.attempt) {
        Ok(pod) => {
            let name = pod.metadata.name.clone().unwrap_or_default();
            status.pod_name = Some(name.clone());
            status.phase = Some(TaskRunPhase::Pending);
            // The same words as when the pod is seen pending, so seeing it is no new write.
            ready(&mut status, view, true, "Pending", format!("pod {name} is pending"));
            plan.create_pod = Some(pod);
        }
        Err(err) => finish(
            &mut status,
            view,
            TaskRunPhase::Failed,
            "InvalidTemplate",
            Some(err.to_string()),
        ),
    }
    plan.status = status;
    plan
}

fn attempt_failed(
    view: &RunView<'_>,
    task: &Task,
    mut status: TaskRunStatus,
    mut plan: RunPlan,
    exit_code: Option<i32>,
    message: Option<String>,
) -> RunPlan {
    status.exit_code = exit_code;
    if message.is_some() {
        status.message = message;
    }
    let limit = task.spec.retry.as_ref().map(|r| r.limit).unwrap_or(0);
    if status.attempt < limit {
        let next = view.now.checked_add(backoff(task, status.attempt)).unwrap_or(view.now);
        status.next_attempt_time = Some(seconds(next));
        status.phase = Some(TaskRunPhase::Running);
        let text = format!(
            "attempt {} failed (exit code {:?}); retrying at {next}",
            status.attempt, exit_code
        );
        ready(&mut status, view, true, "Retrying", text);
        plan.wake_at = Some(plan.wake_at.map_or(next, |w| w.min(next)));
    } else {
        finish(&mut status, view, TaskRunPhase::Failed, "Failed", None);
    }
    plan.status = status;
    plan
}

/// The status of a run whose pod the API server refused: failed, with the server's message.
pub fn rejected(mut status: TaskRunStatus, run: &TaskRun, now: Timestamp, message: String) -> TaskRunStatus {
    status.phase = Some(TaskRunPhase::Failed);
    status.completion_time = Some(micros(now));
    status.message = Some(message.clone());
    set_condition(
        &mut status.conditions,
        CONDITION_READY,
        false,
        "PodRejected",
        message,
        run.metadata.generation,
        seconds(now),
    );
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{run_of, simple_task, t};
    use serde_json::json;

    fn pod(phase: &str, exit_code: Option<i32>, message: Option<&str>) -> AttemptPod {
        let mut status = json!({"phase": phase});
        if let Some(code) = exit_code {
            status["containerStatuses"] = json!([{"name": "main", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": code, "message": message}}}]);
        }
        let pod: Pod = serde_json::from_value(
            json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "main"}]}, "status": status}),
        )
        .unwrap();
        pod.into()
    }

    fn view<'a>(now: &str, run: &'a TaskRun, task: Option<&'a Task>, pod: Option<&'a AttemptPod>) -> RunView<'a> {
        RunView {
            now: t(now),
            run,
            task,
            pod,
        }
    }

    #[test]
    fn a_new_run_creates_its_pod_then_follows_it_to_success() {
        let task = simple_task("t");
        let mut run = run_of("t", "t-1");
        let plan = plan_run(&view("2026-01-01T00:00:01Z", &run, Some(&task), None));
        assert_eq!(
            plan.create_pod.as_ref().and_then(|p| p.metadata.name.as_deref()),
            Some("t-1-0")
        );
        run.status = Some(plan.status);

        let running = pod("Running", None, None);
        let plan = plan_run(&view("2026-01-01T00:00:02Z", &run, Some(&task), Some(&running)));
        assert_eq!(plan.status.phase, Some(TaskRunPhase::Running));
        assert!(plan.status.start_time.is_some());
        run.status = Some(plan.status);

        let done = pod("Succeeded", Some(0), Some("the answer is 42"));
        let plan = plan_run(&view("2026-01-01T00:00:03Z", &run, Some(&task), Some(&done)));
        assert_eq!(plan.status.phase, Some(TaskRunPhase::Succeeded));
        assert_eq!(plan.status.message.as_deref(), Some("the answer is 42"));
        assert_eq!(plan.status.exit_code, Some(0));
        run.status = Some(plan.status);

        let plan = plan_run(&view("2026-01-01T00:00:04Z", &run, Some(&task), Some(&done)));
        assert!(plan.hand_off, "a finished run hands off next");
    }

    #[test]
    fn failed_attempts_retry_with_exponential_backoff_then_fail() {
        let mut task = simple_task("t");
        task.spec.retry = Some(crd_types::workflow::RetryPolicy {
            limit: 2,
            backoff_seconds: Some(5),
            max_backoff_seconds: Some(60),
        });
        let mut run = run_of("t", "t-1");
        run.status = Some(TaskRunStatus {
            pod_name: Some("t-1-0".into()),
            phase: Some(TaskRunPhase::Running),
            ..Default::default()
        });
        let failed = pod("Failed", Some(3), Some("boom"));
        let plan = plan_run(&view("2026-01-01T00:00:10Z", &run, Some(&task), Some(&failed)));
        assert_eq!(
            plan.status.next_attempt_time.as_ref().map(|t| t.0),
            Some(t("2026-01-01T00:00:15Z"))
        );
        assert_eq!(plan.wake_at, Some(t("2026-01-01T00:00:15Z")));
        assert_eq!(plan.status.phase, Some(TaskRunPhase::Running));
        run.status = Some(plan.status);

        let plan = plan_run(&view("2026-01-01T00:00:15Z", &run, Some(&task), None));
        assert_eq!(plan.status.attempt, 1);
        assert_eq!(plan.create_pod.and_then(|p| p.metadata.name), Some("t-1-1".into()));
        assert_eq!(backoff(&task, 1), SignedDuration::from_secs(10));
        assert_eq!(backoff(&task, 20), SignedDuration::from_secs(60), "capped");

        run.status = Some(TaskRunStatus {
            attempt: 2,
            pod_name: Some("t-1-2".into()),
            phase: Some(TaskRunPhase::Running),
            ..Default::default()
        });
        let plan = plan_run(&view("2026-01-01T00:01:00Z", &run, Some(&task), Some(&failed)));
        assert_eq!(plan.status.phase, Some(TaskRunPhase::Failed));
        assert_eq!(plan.status.exit_code, Some(3));
    }

    #[test]
    fn the_deadline_stops_the_pod_and_fails_the_run() {
        let mut task = simple_task("t");
        task.spec.active_deadline_seconds = Some(30);
        let run = run_of("t", "t-1"); // created 2026-01-01T00:00:00Z
        let running = pod("Running", None, None);
        let before = plan_run(&view("2026-01-01T00:00:10Z", &run, Some(&task), Some(&running)));
        assert_eq!(before.wake_at, Some(t("2026-01-01T00:00:30Z")));
        let after = plan_run(&view("2026-01-01T00:00:30Z", &run, Some(&task), Some(&running)));
        assert_eq!(after.delete_pod.as_deref(), Some("t-1-0"));
        assert_eq!(after.status.phase, Some(TaskRunPhase::Failed));
        assert!(after.status.message.unwrap().contains("deadline"));
    }

    #[test]
    fn a_pod_that_cannot_start_says_why_on_the_run_and_in_its_failure_at_the_deadline() {
        let mut task = simple_task("t");
        task.spec.active_deadline_seconds = Some(30);
        let run = run_of("t", "t-1");
        let mut stuck = pod("Pending", None, None);
        stuck.waiting = Some("ErrImageNeverPull: not present".into());
        let before = plan_run(&view("2026-01-01T00:00:10Z", &run, Some(&task), Some(&stuck)));
        assert_eq!(before.status.phase, Some(TaskRunPhase::Pending));
        let ready = &before.status.conditions[0];
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "PodCannotStart")
        );
        assert!(ready.message.contains("ErrImageNeverPull"));
        let after = plan_run(&view("2026-01-01T00:00:30Z", &run, Some(&task), Some(&stuck)));
        assert_eq!(after.status.phase, Some(TaskRunPhase::Failed));
        assert_eq!(
            after.status.message.as_deref(),
            Some("ran past its deadline of 30s; its pod never started: ErrImageNeverPull: not present")
        );
    }

    #[test]
    fn a_missing_task_waits_and_an_invalid_template_fails() {
        let run = run_of("ghost", "ghost-1");
        let plan = plan_run(&view("2026-01-01T00:00:01Z", &run, None, None));
        assert_eq!(plan.status.phase, Some(TaskRunPhase::Pending));
        assert!(plan.create_pod.is_none());
        let bad = crate::testing::task("t", json!({"spec": {"containers": "not a list"}}));
        let plan = plan_run(&view("2026-01-01T00:00:01Z", &run, Some(&bad), None));
        assert_eq!(plan.status.phase, Some(TaskRunPhase::Failed));
    }

    #[test]
    fn a_cancel_annotation_stops_the_run() {
        let task = simple_task("t");
        let mut run = run_of("t", "t-1");
        run.metadata.annotations = Some([(CANCEL_ANNOTATION.to_string(), "replaced by t-2".to_string())].into());
        let running = pod("Running", None, None);
        let plan = plan_run(&view("2026-01-01T00:00:01Z", &run, Some(&task), Some(&running)));
        assert_eq!(plan.delete_pod.as_deref(), Some("t-1-0"));
        assert_eq!(plan.status.phase, Some(TaskRunPhase::Failed));
        assert_eq!(plan.status.message.as_deref(), Some("cancelled: replaced by t-2"));
    }
}
