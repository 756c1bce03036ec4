//! The VirtualCluster executor's plan: on its Cluster, a Namespace with labels, and in it a
//! ResourceQuota, a LimitRange, an optional default-deny NetworkPolicy and RoleBindings.

use std::collections::BTreeMap;

use crd_types::hierarchy::{AccessRole, OWNER_LABEL, SubjectKind, VirtualCluster};
use k8s_openapi::api::core::v1::{
    LimitRange, LimitRangeItem, LimitRangeSpec, Namespace, ResourceQuota, ResourceQuotaSpec,
};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicySpec};
use k8s_openapi::api::rbac::v1::{RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::ResourceExt;

use super::owned_labels;

/// Names of the guardrail objects in the namespace.
pub const QUOTA_NAME: &str = "orrery-quota";
/// The LimitRange.
pub const LIMITS_NAME: &str = "orrery-limits";
/// The NetworkPolicy.
pub const NETWORK_POLICY_NAME: &str = "orrery-default-deny";

/// What the VirtualCluster executor wants on its Cluster.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct VirtualClusterObjects {
    /// The namespace.
    pub namespace: Namespace,
    /// Quota, if the spec sets one.
    pub quota: Option<ResourceQuota>,
    /// Default container resources, if the spec sets them.
    pub limits: Option<LimitRange>,
    /// Isolation from other namespaces, if asked for.
    pub network_policy: Option<NetworkPolicy>,
    /// One per access entry.
    pub role_bindings: Vec<RoleBinding>,
}

/// The namespace a VirtualCluster stands for.
pub fn namespace_name(vc: &VirtualCluster) -> String {
    vc.spec.namespace.clone().unwrap_or_else(|| vc.name_any())
}

/// On a namespace that existed before its VirtualCluster took it over: deleting the
/// VirtualCluster then removes only what it added, not the namespace and what is in it.
pub const ADOPTED_ANNOTATION: &str = "hierarchy.orrery.dev/adopted";

/// Whether the existing namespace is adopted rather than created: it was there without our
/// label before we first applied it, or was marked so then.
pub fn adopted(existing: Option<&Namespace>) -> bool {
    existing
        .is_some_and(|ns| ns.annotations().contains_key(ADOPTED_ANNOTATION) || !ns.labels().contains_key(OWNER_LABEL))
}

/// Every object of `vc`, labelled as owned by `owner` (its uid); the namespace marked when it
/// is `adopted`.
pub fn objects(vc: &VirtualCluster, owner: &str, adopted: bool) -> VirtualClusterObjects {
    let namespace = namespace_name(vc);
    let meta = |name: &str| ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(namespace.clone()),
        labels: Some(owned_labels(owner)),
        ..ObjectMeta::default()
    };
    let quantities = |m: &BTreeMap<String, String>| {
        (!m.is_empty()).then(|| {
            m.iter()
                .map(|(k, v)| (k.clone(), Quantity(v.clone())))
                .collect::<BTreeMap<_, _>>()
        })
    };
    let mut namespace_labels = vc.spec.labels.clone();
    namespace_labels.extend(owned_labels(owner));
    VirtualClusterObjects {
        namespace: Namespace {
            metadata: ObjectMeta {
                name: Some(namespace.clone()),
                labels: Some(namespace_labels),
                annotations: adopted.then(|| BTreeMap::from([(ADOPTED_ANNOTATION.to_owned(), "true".to_owned())])),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        },
        quota: quantities(&vc.spec.quota).map(|hard| ResourceQuota {
            metadata: meta(QUOTA_NAME),
            spec: Some(ResourceQuotaSpec {
                hard: Some(hard),
                ..ResourceQuotaSpec::default()
            }),
            ..ResourceQuota::default()
        }),
        limits: vc.spec.limits.as_ref().map(|limits| LimitRange {
            metadata: meta(LIMITS_NAME),
            spec: Some(LimitRangeSpec {
                limits: vec![LimitRangeItem {
                    type_: "Container".into(),
                    default: quantities(&limits.default_limit),
                    default_request: quantities(&limits.default_request),
                    ..LimitRangeItem::default()
                }],
            }),
        }),
        network_policy: vc.spec.network_isolation.unwrap_or(false).then(|| NetworkPolicy {
            metadata: meta(NETWORK_POLICY_NAME),
            spec: Some(NetworkPolicySpec {
                // Every pod: ingress only from pods of this namespace.
                pod_selector: Some(LabelSelector::default()),
                policy_types: Some(vec!["Ingress".into()]),
                ingress: Some(vec![NetworkPolicyIngressRule {
                    from: Some(vec![NetworkPolicyPeer {
                        pod_selector: Some(LabelSelector::default()),
                        ..NetworkPolicyPeer::default()
                    }]),
                    ..NetworkPolicyIngressRule::default()
                }]),
                ..NetworkPolicySpec::default()
            }),
        }),
        role_bindings: vc
            .spec
            .access
            .iter()
            .map(|access| {
                let role = match access.role {
                    AccessRole::Admin => "admin",
                    AccessRole::View => "view",
                };
                let kind = match access.kind {
                    SubjectKind::User => "User",
                    SubjectKind::Group => "Group",
                };
                RoleBinding {
                    metadata: meta(&role_binding_name(role, kind, &access.name)),
                    role_ref: RoleRef {
                        api_group: Some("rbac.authorization.k8s.io".into()),
                        kind: "ClusterRole".into(),
                        name: role.into(),
                    },
                    subjects: Some(vec![Subject {
                        api_group: Some("rbac.authorization.k8s.io".into()),
                        kind: kind.into(),
                        name: access.name.clone(),
                        namespace: None,
                    }]),
                }
            })
            .collect(),
    }
}

/// `orrery-<role>-<kind>-<hash>`: stable for the same entry, whatever the subject's name holds.
pub fn role_binding_name(role: &str, kind: &str, subject: &str) -> String {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in subject.bytes() {
        hash = (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193);
    }
    format!("orrery-{role}-{}-{hash:08x}", kind.to_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vc(spec: serde_json::Value) -> VirtualCluster {
        let mut vc: VirtualCluster =
            serde_json::from_value(json!({"metadata": {"name": "team-a"}, "spec": spec})).unwrap();
        vc.metadata.uid = Some("uid-a".into());
        vc
    }

    #[test]
    fn a_bare_virtual_cluster_is_a_labelled_namespace() {
        let objects = objects(
            &vc(json!({"cluster": "local", "labels": {"team": "a"}})),
            "uid-a",
            false,
        );
        assert_eq!(objects.namespace.name_any(), "team-a");
        assert_eq!(objects.namespace.labels()["team"], "a");
        assert_eq!(objects.namespace.labels()[OWNER_LABEL], "uid-a");
        assert!(objects.quota.is_none() && objects.limits.is_none() && objects.network_policy.is_none());
        assert!(objects.role_bindings.is_empty());
    }

    #[test]
    fn guardrails_follow_the_spec() {
        let objects = objects(
            &vc(json!({
                "namespace": "shop", "quota": {"pods": "20", "cpu": "4"},
                "limits": {"defaultRequest": {"cpu": "100m"}, "defaultLimit": {"memory": "256Mi"}},
                "networkIsolation": true,
                "access": [{"kind": "Group", "name": "shop-devs", "role": "admin"}, {"kind": "User", "name": "alice@example.com", "role": "view"}],
            })),
            "uid-a",
            false,
        );
        assert_eq!(objects.namespace.name_any(), "shop");
        assert!(
            objects.namespace.annotations().is_empty(),
            "a created namespace is not marked adopted"
        );
        let quota = serde_json::to_value(objects.quota.unwrap()).unwrap();
        assert_eq!(quota["spec"]["hard"], json!({"cpu": "4", "pods": "20"}));
        assert_eq!(quota["metadata"]["namespace"], "shop");
        let limits = serde_json::to_value(objects.limits.unwrap()).unwrap();
        assert_eq!(limits["spec"]["limits"][0]["defaultRequest"], json!({"cpu": "100m"}));
        assert!(objects.network_policy.is_some());
        let bindings: Vec<(String, String, String)> = objects
            .role_bindings
            .iter()
            .map(|b| {
                let subject = &b.subjects.as_ref().unwrap()[0];
                (b.role_ref.name.clone(), subject.kind.clone(), subject.name.clone())
            })
            .collect();
        assert_eq!(
            bindings,
            [
                ("admin".into(), "Group".into(), "shop-devs".into()),
                ("view".into(), "User".into(), "alice@example.com".into())
            ]
        );
        assert!(objects.role_bindings[1].name_any().starts_with("orrery-view-user-"));
    }

    #[test]
    fn a_namespace_found_without_our_label_is_adopted_and_stays_so() {
        assert!(!adopted(None), "one we create is ours to delete");
        let found = Namespace {
            metadata: ObjectMeta {
                name: Some("team-a".into()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        assert!(adopted(Some(&found)));
        let applied = objects(&vc(json!({"namespace": "team-a"})), "uid-a", adopted(Some(&found))).namespace;
        assert!(adopted(Some(&applied)), "our label on it does not make it ours");
        let created = objects(&vc(json!({"namespace": "team-a"})), "uid-a", adopted(None)).namespace;
        assert!(!adopted(Some(&created)));
    }
}
