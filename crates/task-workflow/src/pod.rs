//! The pod of a TaskRun attempt, from its Task's template: run to completion, owned by the
//! run, labelled with task and run, and told who started it and with what data.

use std::collections::BTreeMap;

use crd_types::workflow::{TASK_LABEL, TASKRUN_LABEL, Task, TaskRun};
use k8s_openapi::api::core::v1::{EnvVar, Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::{Resource, ResourceExt};

use crate::naming::pod_name;

/// The environment every task pod gets (ORCA's two, and the run's identity).
pub const ENV_INITIATOR: &str = "ORCA_INITIATOR";
/// The predecessor's termination message, or the Ignitor's data.
pub const ENV_DATA: &str = "ORCA_DATA";
/// The Task's name.
pub const ENV_TASK: &str = "ORCA_TASK";
/// The TaskRun's name.
pub const ENV_RUN: &str = "ORCA_TASKRUN";
/// The retry attempt (0 first).
pub const ENV_ATTEMPT: &str = "ORCA_ATTEMPT";

/// Why a pod cannot be built.
#[derive(Debug, thiserror::Error)]
#[error("the Task's template is not a pod template: {0}")]
pub struct InvalidTemplate(String);

/// Builds the pod for `run`'s `attempt` from `task`'s template.
pub fn build_pod(task: &Task, run: &TaskRun, attempt: i32) -> Result<Pod, InvalidTemplate> {
    let template: PodTemplateSpec = task
        .spec
        .template
        .parse()
        .map_err(|err| InvalidTemplate(err.to_string()))?;
    let mut spec = template.spec.ok_or_else(|| InvalidTemplate("spec is missing".into()))?;
    let mut metadata = template.metadata.unwrap_or_default();
    let run_name = run.name_any();
    let task_name = task.name_any();

    // Run to completion, once per attempt: retries are new pods, not container restarts.
    spec.restart_policy = Some("Never".into());
    if let Some(deadline) = task.spec.active_deadline_seconds {
        spec.active_deadline_seconds = Some(deadline);
    }
    let initiator = run.spec.initiator.as_ref().map(|i| i.name.clone()).unwrap_or_default();
    let env = [
        (ENV_INITIATOR, initiator),
        (ENV_DATA, run.spec.data.clone().unwrap_or_default()),
        (ENV_TASK, task_name.clone()),
        (ENV_RUN, run_name.clone()),
        (ENV_ATTEMPT, attempt.to_string()),
    ];
    for container in spec
        .containers
        .iter_mut()
        .chain(spec.init_containers.iter_mut().flatten())
    {
        let vars = container.env.get_or_insert_with(Vec::new);
        vars.retain(|v| !env.iter().any(|(name, _)| v.name == *name));
        vars.extend(env.iter().map(|(name, value)| EnvVar {
            name: (*name).into(),
            value: Some(value.clone()),
            value_from: None,
        }));
    }

    let labels = metadata.labels.get_or_insert_with(BTreeMap::new);
    labels.insert(TASK_LABEL.into(), task_name);
    labels.insert(TASKRUN_LABEL.into(), run_name.clone());
    metadata.name = Some(pod_name(&run_name, attempt));
    metadata.generate_name = None;
    metadata.namespace = run.namespace();
    metadata.owner_references = Some(vec![owner_reference(run)]);
    Ok(Pod {
        metadata,
        spec: Some(spec),
        status: None,
    })
}

/// A controller owner reference to `run`: the pod is deleted with it.
pub fn owner_reference(run: &TaskRun) -> OwnerReference {
    OwnerReference {
        api_version: TaskRun::api_version(&()).into(),
        kind: TaskRun::kind(&()).into(),
        name: run.name_any(),
        uid: run.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{run_of, task};
    use serde_json::json;

    fn env_of(pod: &Pod) -> BTreeMap<String, String> {
        pod.spec.as_ref().unwrap().containers[0]
            .env
            .iter()
            .flatten()
            .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
            .collect()
    }

    #[test]
    fn the_pod_carries_orca_env_labels_owner_and_never_restarts() {
        let task = task(
            "task2",
            json!({"spec": {"restartPolicy": "Always", "containers": [{"name": "c", "image": "i", "env": [{"name": "ORCA_DATA", "value": "spoofed"}, {"name": "KEEP", "value": "me"}]}]}}),
        );
        let mut run = run_of("task2", "task2-abc");
        run.spec.data = Some("hello from task1".into());
        run.spec.initiator = Some(crd_types::workflow::Initiator {
            kind: crd_types::workflow::InitiatorKind::Task,
            name: "task1".into(),
            run: Some("task1-xyz".into()),
        });
        let pod = build_pod(&task, &run, 2).unwrap();
        assert_eq!(pod.metadata.name.as_deref(), Some("task2-abc-2"));
        assert_eq!(pod.spec.as_ref().unwrap().restart_policy.as_deref(), Some("Never"));
        let env = env_of(&pod);
        assert_eq!(env["ORCA_DATA"], "hello from task1");
        assert_eq!(env["ORCA_INITIATOR"], "task1");
        assert_eq!(env["ORCA_TASKRUN"], "task2-abc");
        assert_eq!(env["ORCA_ATTEMPT"], "2");
        assert_eq!(env["KEEP"], "me");
        let labels = pod.metadata.labels.unwrap();
        assert_eq!(labels[TASK_LABEL], "task2");
        assert_eq!(labels[TASKRUN_LABEL], "task2-abc");
        let owner = &pod.metadata.owner_references.unwrap()[0];
        assert_eq!((owner.kind.as_str(), owner.controller), ("TaskRun", Some(true)));
    }

    #[test]
    fn a_template_that_is_not_a_pod_template_is_an_error_not_a_panic() {
        let task = task("t", json!({"spec": {"containers": [{"name": 5}]}}));
        let err = build_pod(&task, &run_of("t", "t-1"), 0).unwrap_err();
        assert!(err.to_string().contains("not a pod template"), "{err}");
    }
}
