//! What the TaskRun controller keeps of each attempt's pod: its name, owner and outcome. A
//! `Pod` takes 2.4 KiB before any of its contents, and a busy namespace keeps thousands of
//! finished pods for their runs' history.

use std::borrow::Cow;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use kube::core::NamespaceResourceScope;

/// An attempt's pod as the kubelet last reported it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AttemptPod {
    /// Name, namespace and owner references (the TaskRun it belongs to).
    pub metadata: ObjectMeta,
    /// `status.phase`.
    pub phase: Option<String>,
    /// The exit code of the first failing container, else of the first that terminated.
    pub exit_code: Option<i32>,
    /// That container's termination message, else the pod's status message.
    pub message: Option<String>,
    /// Why a container of a pod not yet running cannot start, as the kubelet says it
    /// (`ErrImageNeverPull: ...`); not the kubelet's own passing states (`ContainerCreating`).
    pub waiting: Option<String>,
}

/// Waiting reasons that are the kubelet at work, not a container stuck.
const PASSING: [&str; 2] = ["ContainerCreating", "PodInitializing"];

impl From<Pod> for AttemptPod {
    fn from(pod: Pod) -> Self {
        let status = pod.status.unwrap_or_default();
        let containers = status.container_statuses.unwrap_or_default();
        let waiting = containers
            .iter()
            .filter_map(|c| c.state.as_ref().and_then(|s| s.waiting.as_ref()))
            .find_map(|w| {
                let reason = w.reason.as_deref().filter(|r| !PASSING.contains(r))?;
                Some(match w.message.as_deref() {
                    Some(message) if !message.is_empty() => format!("{reason}: {message}"),
                    _ => reason.to_owned(),
                })
            });
        let terminated: Vec<_> = containers
            .into_iter()
            .filter_map(|c| c.state.and_then(|s| s.terminated))
            .collect();
        let chosen = terminated.iter().find(|t| t.exit_code != 0).or(terminated.first());
        let meta = pod.metadata;
        AttemptPod {
            metadata: ObjectMeta {
                name: meta.name,
                namespace: meta.namespace,
                owner_references: meta.owner_references,
                ..ObjectMeta::default()
            },
            phase: status.phase,
            exit_code: chosen.map(|t| t.exit_code),
            message: chosen.and_then(|t| t.message.clone()).or(status.message),
            waiting,
        }
    }
}

impl Resource for AttemptPod {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        Pod::kind(&())
    }
    fn group(_: &()) -> Cow<'_, str> {
        Pod::group(&())
    }
    fn version(_: &()) -> Cow<'_, str> {
        Pod::version(&())
    }
    fn plural(_: &()) -> Cow<'_, str> {
        Pod::plural(&())
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod(status: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "r-0", "namespace": "ns", "annotations": {"big": "x".repeat(1000)},
                "ownerReferences": [{"apiVersion": "workflow.orrery.dev/v1alpha1", "kind": "TaskRun", "name": "r", "uid": "u"}]},
            "spec": {"containers": [{"name": "main", "image": "busybox"}]},
            "status": status,
        }))
        .unwrap()
    }

    fn terminated(name: &str, code: i32, message: Option<&str>) -> serde_json::Value {
        json!({"name": name, "image": "i", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": code, "message": message}}})
    }

    #[test]
    fn the_first_failing_container_tells_the_outcome_and_the_owner_is_kept() {
        let failed = AttemptPod::from(pod(
            json!({"phase": "Failed", "message": "evicted", "containerStatuses": [
            terminated("a", 0, Some("fine")), terminated("b", 3, Some("no luck"))]}),
        ));
        assert_eq!(failed.phase.as_deref(), Some("Failed"));
        assert_eq!(
            (failed.exit_code, failed.message.as_deref()),
            (Some(3), Some("no luck"))
        );
        assert_eq!(
            failed.metadata.owner_references.map(|o| o[0].name.clone()).as_deref(),
            Some("r")
        );
        assert_eq!(failed.metadata.annotations, None);

        let succeeded = AttemptPod::from(pod(json!({"phase": "Succeeded", "containerStatuses": [
            terminated("a", 0, Some("42"))]})));
        assert_eq!(
            (succeeded.exit_code, succeeded.message.as_deref()),
            (Some(0), Some("42"))
        );

        let evicted = AttemptPod::from(pod(json!({"phase": "Failed", "message": "evicted"})));
        assert_eq!((evicted.exit_code, evicted.message.as_deref()), (None, Some("evicted")));
    }

    #[test]
    fn a_container_that_cannot_start_says_why_and_one_being_created_does_not() {
        let waiting = |reason: &str, message: &str| {
            json!({"phase": "Pending", "containerStatuses": [{"name": "a", "image": "i", "imageID": "",
                "ready": false, "restartCount": 0, "state": {"waiting": {"reason": reason, "message": message}}}]})
        };
        let stuck = AttemptPod::from(pod(waiting("ErrImageNeverPull", "image \"x\" is not present")));
        assert_eq!(
            stuck.waiting.as_deref(),
            Some("ErrImageNeverPull: image \"x\" is not present")
        );
        let creating = AttemptPod::from(pod(waiting("ContainerCreating", "")));
        assert_eq!(creating.waiting, None);
    }
}
