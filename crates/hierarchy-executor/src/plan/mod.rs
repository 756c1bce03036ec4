//! The pure core: from a hierarchy resource and what was observed, the objects its executor
//! wants and its readiness. No I/O here.

pub mod application;
pub mod drift;
pub mod project;
pub mod status;
pub mod tenancy;
pub mod virtual_cluster;

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use crd_types::common::{CONDITION_READY, Condition, PluginRef, find_condition};
use crd_types::hierarchy::{
    Cluster, ClusterSpec, OWNER_LABEL, PolicyPipelineStatus, Project, ProjectSpec, VirtualCluster, VirtualClusterSpec,
    with_document,
};
use schemars::JsonSchema;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// A resource's readiness, rolled up from its own objects and its children.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Readiness {
    /// Everything is as the spec asks.
    Ready,
    /// Something is not: why, naming it.
    NotReady {
        /// A CamelCase reason.
        reason: String,
        /// What is not ready.
        message: String,
    },
}

/// The labels on every object an executor creates for the resource with uid `owner`: how it
/// finds them again to prune, on any cluster (owner references do not cross clusters).
pub fn owned_labels(owner: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (OWNER_LABEL.to_owned(), owner.to_owned()),
        ("app.kubernetes.io/managed-by".to_owned(), "orrery".to_owned()),
    ])
}

/// A Project, Cluster or VirtualCluster: its spec document is what its policies compute.
pub trait Governed: Clone + kube::Resource<DynamicType = ()> {
    /// Its spec.
    type Spec: Serialize + DeserializeOwned + JsonSchema;
    /// Its spec.
    fn spec_mut(&mut self) -> &mut Self::Spec;
    /// Its spec.
    fn spec(&self) -> &Self::Spec;
    /// Its policies.
    fn policies(&self) -> &[PluginRef];
    /// What its policy pipeline last computed.
    fn pipeline(&self) -> Option<&PolicyPipelineStatus>;
    /// What `spec` asks its executor to grant, read or make beyond the resource itself: what
    /// admission checks of its creator, and so what a policy's output may not add.
    fn references(spec: &Self::Spec) -> BTreeSet<String>;
}

macro_rules! governed {
    ($kind:ty, $spec:ty, $references:path, |$resource:ident| $pipeline:expr) => {
        impl Governed for $kind {
            type Spec = $spec;
            fn spec_mut(&mut self) -> &mut $spec {
                &mut self.spec
            }
            fn spec(&self) -> &$spec {
                &self.spec
            }
            fn policies(&self) -> &[PluginRef] {
                &self.spec.policies
            }
            fn pipeline(&self) -> Option<&PolicyPipelineStatus> {
                let $resource = self;
                $pipeline
            }
            fn references(spec: &$spec) -> BTreeSet<String> {
                $references(spec)
            }
        }
    };
}

governed!(Project, ProjectSpec, tenancy::project_references, |p| p
    .status
    .as_ref()?
    .policy
    .as_ref());
governed!(Cluster, ClusterSpec, tenancy::cluster_references, |c| c
    .status
    .as_ref()?
    .common
    .policy
    .as_ref());
governed!(
    VirtualCluster,
    VirtualClusterSpec,
    tenancy::virtual_cluster_references,
    |v| v.status.as_ref()?.common.policy.as_ref()
);

/// `resource` as its executor applies it. Without policies, as it is; with them, its spec with
/// the pipeline's last output in place of its document (the output of a stopped or stale
/// pipeline stays in force until the next complete one). Before the pipeline has completed
/// once there is nothing to apply: why, as the readiness to report.
pub fn as_applied<K: Governed>(resource: &K) -> Result<Cow<'_, K>, Readiness> {
    if resource.policies().is_empty() {
        return Ok(Cow::Borrowed(resource));
    }
    let pipeline = resource.pipeline();
    let Some(output) = pipeline.and_then(|p| p.output.as_ref()) else {
        let why = pipeline
            .and_then(|p| find_condition(&p.conditions, CONDITION_READY))
            .map(|c| format!(": {}", c.message))
            .unwrap_or_default();
        return Err(Readiness::NotReady {
            reason: "WaitingForPolicies".into(),
            message: format!(
                "the policies of {} {} have not computed a spec to apply yet{why}",
                K::kind(&()),
                resource.meta().name.as_deref().unwrap_or_default()
            ),
        });
    };
    let invalid = |message: String| Readiness::NotReady {
        reason: "InvalidPolicyOutput".into(),
        message: format!(
            "status.policy.output of {} {}: {message}",
            K::kind(&()),
            resource.meta().name.as_deref().unwrap_or_default()
        ),
    };
    let document = output.as_object().ok_or_else(|| invalid("not an object".into()))?;
    let spec = with_document(resource.spec(), document).map_err(invalid)?;
    let added = tenancy::added_references(&K::references(resource.spec()), &K::references(&spec));
    if !added.is_empty() {
        return Err(Readiness::NotReady {
            reason: "PolicyOutputRefused".into(),
            message: format!(
                "status.policy.output of {} {} asks for what its spec does not, which admission has not checked: {}",
                K::kind(&()),
                resource.meta().name.as_deref().unwrap_or_default(),
                added.join(", ")
            ),
        });
    }
    let mut applied = resource.clone();
    *applied.spec_mut() = spec;
    Ok(Cow::Owned(applied))
}

/// A child as its parent sees it: kind, name, and its `Ready` condition.
#[derive(Clone, Copy, Debug)]
pub struct Child<'a> {
    /// `Cluster`, `VirtualCluster` or `Application`.
    pub kind: &'a str,
    /// Its name (`namespace/name` for an Application).
    pub name: &'a str,
    /// Its conditions.
    pub conditions: &'a [Condition],
}

/// `own` combined with the children's readiness: Ready only when it and every child is. The
/// message names each child that is not, with the child's own message, so a Project's
/// message leads down to the Application at fault.
pub fn roll_up(own: Readiness, children: &[Child<'_>]) -> Readiness {
    if let Readiness::NotReady { .. } = own {
        return own;
    }
    let waiting: Vec<String> = children
        .iter()
        .filter_map(|child| match find_condition(child.conditions, CONDITION_READY) {
            Some(c) if c.status == "True" => None,
            Some(c) if !c.message.is_empty() => Some(format!("{} {}: {}", child.kind, child.name, c.message)),
            _ => Some(format!("{} {}: not ready yet", child.kind, child.name)),
        })
        .collect();
    if waiting.is_empty() {
        Readiness::Ready
    } else {
        Readiness::NotReady {
            reason: "ChildrenNotReady".into(),
            message: waiting.join("; "),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crd_types::common::Time;
    use k8s_openapi::jiff::Timestamp;

    fn ready(status: bool, message: &str) -> Vec<Condition> {
        vec![Condition {
            type_: CONDITION_READY.into(),
            status: if status { "True" } else { "False" }.into(),
            reason: "Test".into(),
            message: message.into(),
            observed_generation: None,
            last_transition_time: Time(Timestamp::UNIX_EPOCH),
        }]
    }

    #[test]
    fn ready_when_itself_and_every_child_is() {
        let (a, b) = (ready(true, ""), ready(true, ""));
        let children = [
            Child {
                kind: "VirtualCluster",
                name: "a",
                conditions: &a,
            },
            Child {
                kind: "VirtualCluster",
                name: "b",
                conditions: &b,
            },
        ];
        assert_eq!(roll_up(Readiness::Ready, &children), Readiness::Ready);
    }

    #[test]
    fn the_message_leads_to_the_child_at_fault() {
        let (a, b, none) = (
            ready(true, ""),
            ready(false, "Application team-a/shop: version v2 has 0/2 replicas ready"),
            vec![],
        );
        let children = [
            Child {
                kind: "VirtualCluster",
                name: "a",
                conditions: &a,
            },
            Child {
                kind: "VirtualCluster",
                name: "b",
                conditions: &b,
            },
            Child {
                kind: "VirtualCluster",
                name: "c",
                conditions: &none,
            },
        ];
        assert_eq!(
            roll_up(Readiness::Ready, &children),
            Readiness::NotReady {
                reason: "ChildrenNotReady".into(),
                message: "VirtualCluster b: Application team-a/shop: version v2 has 0/2 replicas ready; VirtualCluster c: not ready yet".into()
            }
        );
    }

    #[test]
    fn its_own_trouble_comes_first() {
        let own = Readiness::NotReady {
            reason: "Unreachable".into(),
            message: "connection refused".into(),
        };
        assert_eq!(roll_up(own.clone(), &[]), own);
    }

    fn virtual_cluster(policies: serde_json::Value, policy: serde_json::Value) -> VirtualCluster {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "team-a"},
            "spec": {"cluster": "local", "quota": {"pods": "10"}, "policies": policies},
            "status": {"policy": policy},
        }))
        .unwrap()
    }

    #[test]
    fn without_policies_the_spec_is_applied_as_it_is() {
        let vc = virtual_cluster(
            serde_json::json!([]),
            serde_json::json!({"output": {"quota": {"pods": "1"}}}),
        );
        assert!(matches!(as_applied(&vc), Ok(Cow::Borrowed(_))));
    }

    #[test]
    fn with_policies_their_last_output_is_applied() {
        let policies = serde_json::json!([{"name": "freeze"}]);
        let stale = serde_json::json!({"complete": false, "observedGeneration": 1, "output": {"quota": {"pods": "5"}}});
        let vc = virtual_cluster(policies.clone(), stale);
        let applied = as_applied(&vc).unwrap();
        assert_eq!(applied.spec.quota["pods"], "5");
        assert_eq!(applied.spec.cluster.as_deref(), Some("local"));

        let stopped = serde_json::json!({"conditions": [{"type": "Ready", "status": "False", "reason": "PolicyNotClaimed",
            "message": "step 1 (freeze): bad", "lastTransitionTime": "2026-01-01T00:00:00Z"}]});
        let Err(Readiness::NotReady { reason, message }) = as_applied(&virtual_cluster(policies.clone(), stopped))
        else {
            panic!("nothing to apply yet");
        };
        assert_eq!(reason, "WaitingForPolicies");
        assert_eq!(
            message,
            "the policies of VirtualCluster team-a have not computed a spec to apply yet: step 1 (freeze): bad"
        );

        let misfit = serde_json::json!({"output": {"templates": {}}});
        let Err(Readiness::NotReady { reason, .. }) = as_applied(&virtual_cluster(policies, misfit)) else {
            panic!("an output that does not fit is not applied");
        };
        assert_eq!(reason, "InvalidPolicyOutput");
    }

    #[test]
    fn an_output_granting_access_its_spec_does_not_is_refused() {
        let policies = serde_json::json!([{"name": "cel"}]);
        let wider = serde_json::json!({"output": {"quota": {"pods": "10"},
            "access": [{"kind": "User", "name": "mallory", "role": "admin"}]}});
        let Err(Readiness::NotReady { reason, message }) = as_applied(&virtual_cluster(policies.clone(), wider)) else {
            panic!("an output granting more than the spec is not applied");
        };
        assert_eq!(reason, "PolicyOutputRefused");
        assert!(message.ends_with("access User mallory as Admin"), "{message}");
        let narrower = serde_json::json!({"output": {"quota": {"pods": "10"}, "access": []}});
        assert!(as_applied(&virtual_cluster(policies, narrower)).is_ok());
    }
}
