//! What a finished run starts: every Task that names its task in `startOnSuccess` or
//! `startOnFailure` (whichever way it ended), subject to the successor's join and gate.

use std::collections::BTreeMap;

use crd_types::workflow::{
    Initiator, InitiatorKind, JoinMode, PredecessorRun, Task, TaskRun, TaskRunPhase, TaskStatus,
};
use kube::ResourceExt;
use serde_json::json;

use crate::gate::{Gate, gate};
use crate::task_plan::{new_run, summarize};

/// Event reason: a successor's join condition failed to evaluate (a Warning).
pub const JOIN_CONDITION_ERROR: &str = "JoinConditionError";

/// Evaluates a Task's join condition over its predecessors' latest results.
pub trait JoinCondition {
    /// `Ok(true)` to start; `Err` with a message when the condition cannot be evaluated.
    fn holds(&self, task: &Task, predecessors: &serde_json::Value) -> Result<bool, String>;
}

/// What to do for one successor.
#[derive(Debug, Clone)]
pub enum Successor {
    /// Create this run (after cancelling `cancel`, for the Replace policy).
    Start {
        /// The run.
        run: Box<TaskRun>,
        /// Runs to cancel first.
        cancel: Vec<String>,
    },
    /// A join still waits for other predecessors.
    Waiting {
        /// The successor.
        task: String,
        /// Which predecessors it still waits for.
        missing: Vec<String>,
    },
    /// The gate or the join condition said no.
    Skipped {
        /// The successor.
        task: String,
        /// Stable reason.
        reason: &'static str,
        /// Why.
        message: String,
    },
}

fn phase(run: &TaskRun) -> Option<TaskRunPhase> {
    run.status.as_ref().and_then(|s| s.phase)
}

/// How `successor` wants predecessor `task` to end: success, failure, or either.
fn wanted(successor: &Task, task: &str) -> (bool, bool) {
    (
        successor.spec.start_on_success.iter().any(|n| n == task),
        successor.spec.start_on_failure.iter().any(|n| n == task),
    )
}

fn matches_wanted(successor: &Task, task: &str, run: &TaskRun) -> bool {
    let (on_success, on_failure) = wanted(successor, task);
    match phase(run) {
        Some(TaskRunPhase::Succeeded) => on_success,
        Some(TaskRunPhase::Failed) => on_failure,
        _ => false,
    }
}

/// The latest finished run of `task` that ended the way `successor` wants.
fn latest_matching<'a>(successor: &Task, task: &str, runs: &[&'a TaskRun]) -> Option<&'a TaskRun> {
    runs.iter()
        .copied()
        .filter(|r| r.spec.task_ref.name == task && matches_wanted(successor, task, r))
        .max_by_key(|r| {
            (
                r.status.as_ref().and_then(|s| s.completion_time.as_ref()).map(|t| t.0),
                r.name_any(),
            )
        })
}

/// Plans the hand-off of `finished` (which has its final status): one entry per successor.
/// `runs` holds the runs of every Task involved; `finished` overrides its own entry.
pub fn successors(
    finished: &TaskRun,
    successors: &[&Task],
    runs: &[&TaskRun],
    join_condition: &dyn JoinCondition,
) -> Vec<Successor> {
    let predecessor = finished.spec.task_ref.name.as_str();
    let runs: Vec<&TaskRun> = runs
        .iter()
        .copied()
        .filter(|r| r.name_any() != finished.name_any())
        .chain(std::iter::once(finished))
        .collect();
    let mut out = Vec::new();
    for successor in successors {
        if !matches_wanted(successor, predecessor, finished) {
            continue;
        }
        let name = successor.name_any();
        let own_runs: Vec<&TaskRun> = runs.iter().copied().filter(|r| r.spec.task_ref.name == name).collect();
        let initiator = Initiator {
            kind: InitiatorKind::Task,
            name: predecessor.to_owned(),
            run: Some(finished.name_any()),
        };
        let data = finished.status.as_ref().and_then(|s| s.message.clone());
        let join = successor.spec.join.clone().unwrap_or_default();
        let run = if join.mode == JoinMode::AnyOf && join.condition.is_none() {
            new_run(successor, initiator, data, &["Task", predecessor, &finished.name_any()])
        } else {
            // The latest run of each predecessor, and which of them the successor's latest
            // run already consumed: a join starts once per fresh set.
            let consumed: Vec<PredecessorRun> = own_runs
                .iter()
                .max_by_key(|r| (r.creation_timestamp().map(|t| t.0), r.name_any()))
                .map(|r| r.spec.joined.clone())
                .unwrap_or_default();
            let mut predecessors: Vec<&String> = successor
                .spec
                .start_on_success
                .iter()
                .chain(&successor.spec.start_on_failure)
                .collect();
            predecessors.sort();
            predecessors.dedup();
            let mut joined = Vec::new();
            let mut missing = Vec::new();
            let mut results = BTreeMap::new();
            for task in predecessors {
                match latest_matching(successor, task, &runs) {
                    Some(run) => {
                        let input = PredecessorRun {
                            task: task.clone(),
                            run: run.name_any(),
                        };
                        if consumed.contains(&input) {
                            missing.push(task.clone());
                        }
                        let status = run.status.clone().unwrap_or_default();
                        results.insert(
                            task.clone(),
                            json!({
                                "run": run.name_any(),
                                "phase": status.phase,
                                "message": status.message,
                                "exitCode": status.exit_code,
                                "completionTime": status.completion_time,
                                "fresh": !consumed.contains(&input),
                            }),
                        );
                        joined.push(input);
                    }
                    None => missing.push(task.clone()),
                }
            }
            if join.mode == JoinMode::AllOf && !missing.is_empty() {
                out.push(Successor::Waiting { task: name, missing });
                continue;
            }
            if join.condition.is_some() {
                match join_condition.holds(successor, &serde_json::Value::Object(results.into_iter().collect())) {
                    Ok(true) => {}
                    Ok(false) => {
                        out.push(Successor::Waiting { task: name, missing });
                        continue;
                    }
                    Err(message) => {
                        out.push(Successor::Skipped {
                            task: name,
                            reason: JOIN_CONDITION_ERROR,
                            message,
                        });
                        continue;
                    }
                }
            }
            let key: Vec<String> = joined.iter().map(|j| format!("{}/{}", j.task, j.run)).collect();
            let mut parts = vec!["Join"];
            parts.extend(key.iter().map(String::as_str));
            let mut run = new_run(successor, initiator, data, &parts);
            run.spec.joined = joined;
            run
        };
        if own_runs.iter().any(|r| r.metadata.name == run.metadata.name) {
            // Started by an earlier hand-off of this same run.
            continue;
        }
        let status = summarize(&successor.status.clone().unwrap_or_else(TaskStatus::default), &own_runs);
        match gate(successor, &status, &own_runs) {
            Gate::Start => out.push(Successor::Start {
                run: Box::new(run),
                cancel: vec![],
            }),
            Gate::Replace(cancel) => out.push(Successor::Start {
                run: Box::new(run),
                cancel,
            }),
            Gate::Skip { reason, message } => out.push(Successor::Skipped {
                task: name,
                reason,
                message,
            }),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{finished, simple_task};
    use crd_types::workflow::Join;

    struct NoCondition;
    impl JoinCondition for NoCondition {
        fn holds(&self, _: &Task, _: &serde_json::Value) -> Result<bool, String> {
            Err("no condition expected".into())
        }
    }

    fn on_success(name: &str, predecessors: &[&str]) -> Task {
        let mut task = simple_task(name);
        task.spec.start_on_success = predecessors.iter().map(|p| p.to_string()).collect();
        task
    }

    fn started(plan: &[Successor]) -> Vec<&TaskRun> {
        plan.iter()
            .filter_map(|s| match s {
                Successor::Start { run, .. } => Some(run.as_ref()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn success_passes_the_termination_message_and_name_on() {
        let task2 = on_success("task2", &["task1"]);
        let mut on_failure = simple_task("cleanup");
        on_failure.spec.start_on_failure = vec!["task1".into()];
        let done = finished("task1", "task1-aaa", TaskRunPhase::Succeeded, 10, "the answer is 42");
        let plan = successors(&done, &[&task2, &on_failure], &[], &NoCondition);
        let runs = started(&plan);
        assert_eq!(runs.len(), 1, "only the success path starts");
        assert_eq!(runs[0].spec.data.as_deref(), Some("the answer is 42"));
        assert_eq!(runs[0].spec.initiator.as_ref().map(|i| i.name.as_str()), Some("task1"));
        // Deterministic: the same hand-off names the same run.
        let again = successors(&done, &[&task2], &[], &NoCondition);
        assert_eq!(started(&again)[0].metadata.name, runs[0].metadata.name);
    }

    #[test]
    fn an_all_of_join_starts_once_both_are_fresh_and_only_once() {
        let mut d = on_success("d", &["b", "c"]);
        d.spec.join = Some(Join {
            mode: JoinMode::AllOf,
            condition: None,
        });
        let b = finished("b", "b-1", TaskRunPhase::Succeeded, 10, "from b");
        let c = finished("c", "c-1", TaskRunPhase::Succeeded, 20, "from c");

        let after_b = successors(&b, &[&d], &[], &NoCondition);
        assert!(matches!(&after_b[0], Successor::Waiting { missing, .. } if missing == &vec!["c".to_string()]));

        let after_c = successors(&c, &[&d], &[&b], &NoCondition);
        let runs = started(&after_c);
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].spec.joined.len(), 2);
        assert_eq!(runs[0].spec.data.as_deref(), Some("from c"));

        // b's hand-off replayed after d started: the set is consumed, nothing starts.
        let d_run = runs[0].clone();
        let replay = successors(&b, &[&d], &[&c, &d_run], &NoCondition);
        assert!(started(&replay).is_empty());
        // Both finishing together: each hand-off names the same run.
        let from_b = successors(&b, &[&d], &[&c], &NoCondition);
        assert_eq!(started(&from_b)[0].metadata.name, d_run.metadata.name);
    }

    #[test]
    fn a_condition_join_sees_the_predecessors_results() {
        struct OnlyIfBSaid42;
        impl JoinCondition for OnlyIfBSaid42 {
            fn holds(&self, _: &Task, p: &serde_json::Value) -> Result<bool, String> {
                Ok(p["b"]["message"] == "42" && p["b"]["phase"] == "Succeeded")
            }
        }
        let mut d = on_success("d", &["b", "c"]);
        d.spec.join = Some(Join {
            mode: JoinMode::Condition,
            condition: Some("ignored here".into()),
        });
        let said_41 = finished("b", "b-1", TaskRunPhase::Succeeded, 10, "41");
        assert!(started(&successors(&said_41, &[&d], &[], &OnlyIfBSaid42)).is_empty());
        let said_42 = finished("b", "b-2", TaskRunPhase::Succeeded, 20, "42");
        assert_eq!(started(&successors(&said_42, &[&d], &[], &OnlyIfBSaid42)).len(), 1);
    }
}
