//! Small builders for the planners' unit tests.

use crd_types::workflow::{
    Initiator, InitiatorKind, Task, TaskRef, TaskRun, TaskRunPhase, TaskRunSpec, TaskRunStatus, TaskSpec,
};
use jiff::Timestamp;
use serde_json::{Value, json};

pub fn t(s: &str) -> Timestamp {
    s.parse().expect("timestamp literal")
}

pub fn task(name: &str, template: Value) -> Task {
    let spec: TaskSpec = serde_json::from_value(json!({"template": template})).expect("task spec");
    let mut task = Task::new(name, spec);
    task.metadata.namespace = Some("ns".into());
    task.metadata.uid = Some(format!("uid-{name}"));
    task.metadata.generation = Some(1);
    task.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(t(
        "2026-01-01T00:00:00Z",
    )));
    task
}

pub fn simple_task(name: &str) -> Task {
    task(
        name,
        json!({"spec": {"containers": [{"name": "main", "image": "busybox"}]}}),
    )
}

pub fn run_of(task: &str, name: &str) -> TaskRun {
    let mut run = TaskRun::new(
        name,
        TaskRunSpec {
            task_ref: TaskRef { name: task.into() },
            initiator: None,
            data: None,
            joined: vec![],
        },
    );
    run.metadata.namespace = Some("ns".into());
    run.metadata.uid = Some(format!("uid-{name}"));
    run.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(t(
        "2026-01-01T00:00:00Z",
    )));
    run.metadata.labels = Some([(crd_types::workflow::TASK_LABEL.to_string(), task.to_string())].into());
    run
}

/// A run of `task` that finished with `phase` at second `at` (and was handed off).
pub fn finished(task: &str, name: &str, phase: TaskRunPhase, at: i64, message: &str) -> TaskRun {
    let mut run = run_of(task, name);
    let time = crd_types::common::micros(Timestamp::from_second(1_767_225_600 + at).expect("in range"));
    run.metadata.creation_timestamp = Some(crd_types::common::seconds(time.0));
    run.status = Some(TaskRunStatus {
        phase: Some(phase),
        completion_time: Some(time),
        message: Some(message.into()),
        exit_code: Some(if phase == TaskRunPhase::Succeeded { 0 } else { 1 }),
        handed_off: true,
        ..TaskRunStatus::default()
    });
    run
}

pub fn initiated_by_ignitor(run: &mut TaskRun, ignitor: &str, sequence: i64) {
    run.spec.initiator = Some(Initiator {
        kind: InitiatorKind::Ignitor,
        name: ignitor.into(),
        run: Some(sequence.to_string()),
    });
}
