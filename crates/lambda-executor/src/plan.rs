//! The pure core: from the desired children (a hook's answer or rendered templates) and the
//! children observed, what to apply and what to prune; or why none of it is done.
//!
//! A desired child must be of a declared kind, namespaced, named, in the resource's target
//! namespace, and named once. One child that is not refuses the whole answer: nothing is
//! applied or pruned, so a broken hook never deletes what is there.

use std::collections::BTreeSet;

use hierarchy_executor::plan::drift::changed_field;
use hierarchy_executor::plan::owned_labels;
use serde_json::{Map, Value, json};

use crate::lambda::ChildResource;

/// A declared kind, as the API server's discovery knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChildKind {
    /// As declared.
    pub declared: ChildResource,
    /// `ConfigMap`.
    pub kind: String,
    /// Whether its objects live in a namespace.
    pub namespaced: bool,
}

/// A child found on the API server, marked as the resource's own.
#[derive(Clone, Debug, PartialEq)]
pub struct Observed {
    /// Index into the declared kinds.
    pub kind: usize,
    /// As the API server returned it.
    pub object: Value,
}

impl Observed {
    /// Its name.
    pub fn name(&self) -> &str {
        self.object
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
    }

    /// Its uid.
    pub fn uid(&self) -> &str {
        self.object
            .pointer("/metadata/uid")
            .and_then(Value::as_str)
            .unwrap_or_default()
    }
}

/// A child to apply.
#[derive(Clone, Debug, PartialEq)]
pub struct Apply {
    /// Index into the declared kinds.
    pub kind: usize,
    /// Its name.
    pub name: String,
    /// The object to apply, with the owner's label and reference.
    pub object: Value,
    /// Whether it is there already (else the name must be checked as free first).
    pub exists: bool,
}

/// A child to delete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prune {
    /// Index into the declared kinds.
    pub kind: usize,
    /// Its name.
    pub name: String,
    /// Its uid: only this object is deleted, not one recreated under its name.
    pub uid: String,
}

/// What to do.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// Children missing or changed.
    pub apply: Vec<Apply>,
    /// Children no longer wanted.
    pub prune: Vec<Prune>,
    /// Every desired child by kind and name, as applied (for the template's readiness).
    pub desired: Vec<Apply>,
}

/// Why an answer is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// A CamelCase reason.
    pub reason: &'static str,
    /// What is wrong.
    pub message: String,
}

fn refuse(reason: &'static str, message: String) -> Refusal {
    Refusal { reason, message }
}

/// A child naming a kind not declared in `childResources`.
pub const CHILD_NOT_DECLARED: &str = "ChildNotDeclared";
/// A child in another namespace than the resource's target.
pub const CHILD_IN_OTHER_NAMESPACE: &str = "ChildInOtherNamespace";
/// A child without a kind, name, or with a name twice.
pub const INVALID_CHILD: &str = "InvalidChild";

/// Plans `desired` against `observed` for the resource whose uid is `owner_uid` (its owner
/// reference `owner`), every child in `namespace`.
///
/// # Errors
///
/// The first child that may not be made, and why.
pub fn plan(
    desired: &[Value],
    kinds: &[ChildKind],
    observed: &[Observed],
    namespace: &str,
    owner_uid: &str,
    owner: &Value,
) -> Result<Plan, Refusal> {
    let mut seen = BTreeSet::new();
    let mut wanted = Vec::with_capacity(desired.len());
    for (i, child) in desired.iter().enumerate() {
        let (kind, name, object) = checked(i, child, kinds, namespace, owner_uid, owner)?;
        if !seen.insert((kind, name.clone())) {
            return Err(refuse(
                INVALID_CHILD,
                format!("children[{i}]: {} {name} appears twice", kinds[kind].kind),
            ));
        }
        let there = observed.iter().find(|o| o.kind == kind && o.name() == name);
        wanted.push((
            Apply {
                kind,
                name,
                object,
                exists: there.is_some(),
            },
            there,
        ));
    }
    let prune = observed
        .iter()
        .filter(|o| !seen.contains(&(o.kind, o.name().to_owned())))
        .map(|o| Prune {
            kind: o.kind,
            name: o.name().to_owned(),
            uid: o.uid().to_owned(),
        })
        .collect();
    let apply = wanted
        .iter()
        .filter(|(child, there)| there.is_none_or(|o| changed_field(&child.object, &o.object).is_some()))
        .map(|(child, _)| child.clone())
        .collect();
    Ok(Plan {
        apply,
        prune,
        desired: wanted.into_iter().map(|(child, _)| child).collect(),
    })
}

/// Child `i` of an answer as it is to be applied: its kind's index, its name, the object.
fn checked(
    i: usize,
    child: &Value,
    kinds: &[ChildKind],
    namespace: &str,
    owner_uid: &str,
    owner: &Value,
) -> Result<(usize, String, Value), Refusal> {
    let text = |pointer: &str| child.pointer(pointer).and_then(Value::as_str);
    let (Some(api_version), Some(kind_name)) = (text("/apiVersion"), text("/kind")) else {
        return Err(refuse(
            INVALID_CHILD,
            format!("children[{i}] has no apiVersion or kind"),
        ));
    };
    let Some(kind) = kinds
        .iter()
        .position(|k| k.declared.api_version == api_version && k.kind == kind_name)
    else {
        let declared: Vec<String> = kinds
            .iter()
            .map(|k| format!("{} ({})", k.kind, k.declared.api_version))
            .collect();
        return Err(refuse(
            CHILD_NOT_DECLARED,
            format!(
                "children[{i}] is a {kind_name} ({api_version}), not one of childResources: {}",
                declared.join(", ")
            ),
        ));
    };
    let name = text("/metadata/name").unwrap_or_default();
    if !is_object_name(name) {
        return Err(refuse(
            INVALID_CHILD,
            format!("children[{i}]: {kind_name} name {name:?} is not a valid object name"),
        ));
    }
    if let Some(other) = text("/metadata/namespace").filter(|n| *n != namespace) {
        return Err(refuse(
            CHILD_IN_OTHER_NAMESPACE,
            format!(
                "children[{i}]: {kind_name} {name} is in namespace {other}; this resource's children go into {namespace}"
            ),
        ));
    }
    let mut object = child.clone();
    let Some(fields) = object.as_object_mut() else {
        return Err(refuse(INVALID_CHILD, format!("children[{i}] is not an object")));
    };
    // Status is the child's own controller's to write; the rest is what the API server sets.
    fields.remove("status");
    let metadata = fields
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()))
        .as_object_mut()
        .ok_or_else(|| refuse(INVALID_CHILD, format!("children[{i}]: metadata is not an object")))?;
    for set_by_the_server in [
        "uid",
        "resourceVersion",
        "generation",
        "creationTimestamp",
        "deletionTimestamp",
        "managedFields",
        "selfLink",
        "generateName",
    ] {
        metadata.remove(set_by_the_server);
    }
    metadata.insert("namespace".into(), json!(namespace));
    metadata.insert("ownerReferences".into(), json!([owner]));
    let labels = metadata
        .entry("labels")
        .or_insert_with(|| Value::Object(Map::new()))
        .as_object_mut()
        .ok_or_else(|| {
            refuse(
                INVALID_CHILD,
                format!("children[{i}]: metadata.labels is not an object"),
            )
        })?;
    for (key, value) in owned_labels(owner_uid) {
        labels.insert(key, Value::String(value));
    }
    if !kinds[kind].namespaced {
        return Err(refuse(
            CHILD_NOT_DECLARED,
            format!("children[{i}]: {kind_name} is cluster-scoped; only namespaced children are made"),
        ));
    }
    Ok((kind, name.to_owned(), object))
}

/// A DNS subdomain: what most kinds' names must be.
fn is_object_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// The hook's own word on readiness: a `Ready` condition in the status it returned, if any.
/// `None`: it says nothing, so applied is ready.
pub fn reported_readiness(status: Option<&Map<String, Value>>) -> Option<(bool, String, String)> {
    let conditions = status?.get("conditions")?.as_array()?;
    let ready = conditions
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some("Ready"))?;
    let text = |field: &str| ready.get(field).and_then(Value::as_str).unwrap_or_default().to_owned();
    let is_true = text("status") == "True";
    let reason = Some(text("reason"))
        .filter(|r| is_reason(r))
        .unwrap_or_else(|| (if is_true { "Ready" } else { "NotReady" }).to_owned());
    Some((is_true, reason, text("message")))
}

/// What the API server accepts as a condition reason.
fn is_reason(reason: &str) -> bool {
    !reason.is_empty()
        && reason.len() <= 1024
        && reason.starts_with(|c: char| c.is_ascii_alphabetic())
        && reason
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b',' || b == b':')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds() -> Vec<ChildKind> {
        vec![
            ChildKind {
                declared: ChildResource {
                    api_version: "v1".into(),
                    resource: "configmaps".into(),
                },
                kind: "ConfigMap".into(),
                namespaced: true,
            },
            ChildKind {
                declared: ChildResource {
                    api_version: "rbac.authorization.k8s.io/v1".into(),
                    resource: "clusterroles".into(),
                },
                kind: "ClusterRole".into(),
                namespaced: false,
            },
        ]
    }

    fn owner() -> Value {
        json!({"apiVersion": "hierarchy.orrery.dev/v1alpha1", "kind": "Application", "name": "shop", "uid": "u-1", "controller": true})
    }

    fn config_map(name: &str, data: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data})
    }

    fn planned(desired: &[Value], observed: &[Observed]) -> Result<Plan, Refusal> {
        plan(desired, &kinds(), observed, "team-a", "u-1", &owner())
    }

    fn as_observed(plan: &Plan) -> Vec<Observed> {
        plan.desired
            .iter()
            .map(|a| {
                let mut object = a.object.clone();
                object["metadata"]["uid"] = json!(format!("uid-{}", a.name));
                object["metadata"]["resourceVersion"] = json!("7");
                object["metadata"]["labels"]["added-by-someone"] = json!("x");
                Observed { kind: a.kind, object }
            })
            .collect()
    }

    #[test]
    fn new_children_are_applied_marked_as_the_resources_own() {
        let plan = planned(&[config_map("a", json!({"k": "v"}))], &[]).unwrap();
        assert_eq!(plan.apply.len(), 1);
        let child = &plan.apply[0];
        assert!(!child.exists);
        assert_eq!(child.object["metadata"]["namespace"], "team-a");
        assert_eq!(child.object["metadata"]["labels"]["hierarchy.orrery.dev/owner"], "u-1");
        assert_eq!(child.object["metadata"]["ownerReferences"], json!([owner()]));
        assert!(plan.prune.is_empty());
    }

    #[test]
    fn at_rest_nothing_is_done_and_what_is_no_longer_wanted_is_pruned() {
        let first = planned(&[config_map("a", json!({"k": "v"})), config_map("b", json!({}))], &[]).unwrap();
        let observed = as_observed(&first);
        let again = planned(
            &[config_map("a", json!({"k": "v"})), config_map("b", json!({}))],
            &observed,
        )
        .unwrap();
        assert!(again.apply.is_empty() && again.prune.is_empty(), "{again:?}");

        let changed = planned(&[config_map("a", json!({"k": "w"}))], &observed).unwrap();
        assert_eq!(changed.apply.len(), 1);
        assert!(changed.apply[0].exists);
        assert_eq!(
            changed.prune,
            vec![Prune {
                kind: 0,
                name: "b".into(),
                uid: "uid-b".into()
            }]
        );
    }

    #[test]
    fn what_the_server_sets_and_status_are_not_applied() {
        let mut echoed = config_map("a", json!({}));
        echoed["metadata"]["resourceVersion"] = json!("12");
        echoed["metadata"]["uid"] = json!("x");
        echoed["status"] = json!({"phase": "whatever"});
        let plan = planned(&[echoed], &[]).unwrap();
        let object = &plan.apply[0].object;
        assert!(object.get("status").is_none());
        assert!(object["metadata"].get("resourceVersion").is_none() && object["metadata"].get("uid").is_none());
    }

    #[test]
    fn one_bad_child_refuses_the_whole_answer() {
        let cases = [
            (json!({"kind": "ConfigMap"}), INVALID_CHILD, "no apiVersion or kind"),
            (
                json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}}),
                CHILD_NOT_DECLARED,
                "not one of childResources: ConfigMap (v1)",
            ),
            (
                json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "r"}}),
                CHILD_NOT_DECLARED,
                "cluster-scoped",
            ),
            (
                config_map("Bad_Name", json!({})),
                INVALID_CHILD,
                "not a valid object name",
            ),
            (
                json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "namespace": "kube-system"}}),
                CHILD_IN_OTHER_NAMESPACE,
                "is in namespace kube-system",
            ),
            (config_map("a", json!({})), INVALID_CHILD, "appears twice"),
        ];
        for (bad, reason, message) in cases {
            let refusal = planned(&[config_map("a", json!({})), bad.clone()], &[]).unwrap_err();
            assert_eq!(refusal.reason, reason, "{bad}");
            assert!(refusal.message.contains(message), "{bad}: {}", refusal.message);
        }
    }

    #[test]
    fn the_hooks_ready_condition_is_its_word() {
        assert_eq!(reported_readiness(None), None);
        let status =
            json!({"conditions": [{"type": "Ready", "status": "False", "reason": "Warming", "message": "2 of 3"}]});
        assert_eq!(
            reported_readiness(status.as_object()),
            Some((false, "Warming".into(), "2 of 3".into()))
        );
        let bad_reason = json!({"conditions": [{"type": "Ready", "status": "True", "reason": "not a reason!"}]});
        assert_eq!(
            reported_readiness(bad_reason.as_object()),
            Some((true, "Ready".into(), String::new()))
        );
    }
}
