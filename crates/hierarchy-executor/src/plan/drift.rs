//! Drift: how the objects an executor finds differ from those it wants. An object is as wanted
//! when every field the executor sets holds the value it sets; fields the API server defaults
//! and fields other managers add are not drift. Comparing what is there with what is wanted
//! (rather than remembering what was applied) is what repairs an object someone deleted or
//! edited: the next reconcile sees the difference and applies it again, and a tree at rest
//! compares equal and writes nothing.

use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde_json::Value;

/// Why an object must be applied again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Drift {
    /// It is not there.
    Missing,
    /// A field the executor sets holds another value (its path, e.g. `spec.hard.pods`).
    Changed(String),
}

/// An object to apply, with why.
#[derive(Debug)]
pub struct Repair<'a, K> {
    /// The object as wanted.
    pub object: &'a K,
    /// What is wrong with the one found.
    pub drift: Drift,
}

impl<K: Resource<DynamicType = ()>> Repair<'_, K> {
    /// `Service shop-v2 (deleted)`, `ResourceQuota orrery-quota (spec.hard.pods changed)`.
    pub fn describe(&self) -> String {
        let what = match &self.drift {
            Drift::Missing => "deleted".to_owned(),
            Drift::Changed(path) => format!("{path} changed"),
        };
        format!("{} {} ({what})", K::kind(&()), self.object.name_any())
    }
}

/// The objects of `wanted` that `found` lacks or holds otherwise, in `wanted`'s order. Objects
/// are matched by namespace and name.
pub fn repairs<'a, K>(wanted: impl IntoIterator<Item = &'a K>, found: &[K]) -> Vec<Repair<'a, K>>
where
    K: Resource + Serialize + 'a,
{
    wanted
        .into_iter()
        .filter_map(|object| {
            let drift = match found.iter().find(|f| same_object(*f, object)) {
                None => Drift::Missing,
                Some(there) => Drift::Changed(changed_field(&to_value(object), &to_value(there))?),
            };
            Some(Repair { object, drift })
        })
        .collect()
}

/// The objects of `found` that `wanted` no longer has: to prune (`found` holds only objects
/// marked as the resource's own).
pub fn unwanted<'a, K: Resource>(wanted: &[K], found: &'a [K]) -> impl Iterator<Item = &'a K> {
    found.iter().filter(move |f| !wanted.iter().any(|w| same_object(w, *f)))
}

fn same_object<K: Resource>(a: &K, b: &K) -> bool {
    a.meta().name == b.meta().name && a.meta().namespace == b.meta().namespace
}

fn to_value(object: &impl Serialize) -> Value {
    serde_json::to_value(object).unwrap_or(Value::Null)
}

/// The path of the first field `wanted` sets that `found` holds otherwise; `None` when `found`
/// holds everything `wanted` says. An empty map or list and a null ask for nothing; lists must
/// match item by item; quantities compare by value (the API server writes `0.5` as `500m`).
pub fn changed_field(wanted: &Value, found: &Value) -> Option<String> {
    differs(wanted, found, &mut Vec::new())
}

fn differs(wanted: &Value, found: &Value, path: &mut Vec<String>) -> Option<String> {
    let here = |path: &[String]| Some(if path.is_empty() { ".".into() } else { path.join(".") });
    match (wanted, found) {
        (Value::Null, _) => None,
        (Value::Object(w), _) if w.is_empty() => None,
        (Value::Array(w), _) if w.is_empty() => None,
        (Value::Object(w), Value::Object(f)) => w.iter().find_map(|(key, value)| {
            path.push(key.clone());
            let changed = match f.get(key) {
                Some(there) => differs(value, there, path),
                None => differs(value, &Value::Null, path),
            };
            path.pop();
            changed
        }),
        (Value::Array(w), Value::Array(f)) if w.len() == f.len() => {
            w.iter().zip(f).enumerate().find_map(|(i, (value, there))| {
                path.push(i.to_string());
                let changed = differs(value, there, path);
                path.pop();
                changed
            })
        }
        (Value::Number(w), Value::Number(f)) if w.as_f64() == f.as_f64() => None,
        (Value::String(w), Value::String(f)) if w == f || same_quantity(w, f) => None,
        (w, f) if w == f => None,
        _ => here(path),
    }
}

/// Whether two strings are the same Kubernetes quantity written two ways (`1024Mi`, `1Gi`).
fn same_quantity(a: &str, b: &str) -> bool {
    match (quantity(a), quantity(b)) {
        (Some(a), Some(b)) => (a - b).abs() <= f64::EPSILON * a.abs().max(b.abs()).max(1.0),
        _ => false,
    }
}

/// A quantity's value: a decimal number and an optional binary, decimal or exponent suffix.
fn quantity(text: &str) -> Option<f64> {
    const SUFFIXES: [(&str, f64); 15] = [
        ("Ki", 1024.0),
        ("Mi", 1_048_576.0),
        ("Gi", 1_073_741_824.0),
        ("Ti", 1_099_511_627_776.0),
        ("Pi", 1_125_899_906_842_624.0),
        ("Ei", 1_152_921_504_606_846_976.0),
        ("n", 1e-9),
        ("u", 1e-6),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
    ];
    let number_end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(number_end);
    let value: f64 = number.parse().ok()?;
    if suffix.is_empty() {
        return Some(value);
    }
    if let Some(exponent) = suffix.strip_prefix(['e', 'E']) {
        return Some(value * 10f64.powi(exponent.parse().ok()?));
    }
    SUFFIXES
        .iter()
        .find(|(s, _)| *s == suffix)
        .map(|(_, factor)| value * factor)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ResourceQuota;
    use serde_json::json;

    #[test]
    fn defaults_and_fields_of_others_are_not_drift() {
        let wanted = json!({"metadata": {"name": "q", "labels": {"owner": "a"}}, "spec": {"ports": [{"port": 80}]}});
        let found = json!({"metadata": {"name": "q", "labels": {"owner": "a", "team": "x"}, "uid": "1"},
            "spec": {"ports": [{"port": 80, "protocol": "TCP"}], "clusterIP": "10.0.0.1"}, "status": {}});
        assert_eq!(changed_field(&wanted, &found), None);
    }

    #[test]
    fn a_changed_or_removed_field_is_named_by_its_path() {
        let wanted = json!({"spec": {"hard": {"pods": "10"}, "ports": [{"port": 80}]}});
        let edited = json!({"spec": {"hard": {"pods": "100"}, "ports": [{"port": 80}]}});
        assert_eq!(changed_field(&wanted, &edited).as_deref(), Some("spec.hard.pods"));
        let removed = json!({"spec": {"hard": {}, "ports": [{"port": 80}]}});
        assert_eq!(changed_field(&wanted, &removed).as_deref(), Some("spec.hard.pods"));
        let more_ports = json!({"spec": {"hard": {"pods": "10"}, "ports": [{"port": 80}, {"port": 81}]}});
        assert_eq!(changed_field(&wanted, &more_ports).as_deref(), Some("spec.ports"));
        let other_port = json!({"spec": {"hard": {"pods": "10"}, "ports": [{"port": 8080}]}});
        assert_eq!(
            changed_field(&wanted, &other_port).as_deref(),
            Some("spec.ports.0.port")
        );
    }

    #[test]
    fn quantities_compare_by_value() {
        assert!(same_quantity("1024Mi", "1Gi"));
        assert!(same_quantity("0.5", "500m"));
        assert!(same_quantity("1e3", "1k"));
        assert!(!same_quantity("1Gi", "1G"));
        assert!(!same_quantity("10", "100"));
        assert!(!same_quantity("abc", "abc "));
        let wanted = json!({"spec": {"hard": {"memory": "1024Mi"}}});
        assert_eq!(
            changed_field(&wanted, &json!({"spec": {"hard": {"memory": "1Gi"}}})),
            None
        );
    }

    fn quota(name: &str, pods: &str) -> ResourceQuota {
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": "team"},
            "spec": {"hard": {"pods": pods}}}))
        .unwrap_or_default()
    }

    #[test]
    fn missing_and_changed_objects_are_repaired_and_the_rest_pruned() {
        let wanted = [quota("a", "1"), quota("b", "2"), quota("c", "3")];
        let found = [quota("b", "2"), quota("c", "30"), quota("old", "1")];
        let repairs: Vec<String> = repairs(&wanted, &found).iter().map(Repair::describe).collect();
        assert_eq!(
            repairs,
            ["ResourceQuota a (deleted)", "ResourceQuota c (spec.hard.pods changed)"]
        );
        let pruned: Vec<String> = unwanted(&wanted, &found).map(|q| q.name_any()).collect();
        assert_eq!(pruned, ["old"]);
    }
}
