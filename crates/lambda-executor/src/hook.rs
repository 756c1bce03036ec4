//! Metacontroller's CompositeController sync-hook contract, so that a hook written for
//! Metacontroller runs unchanged as an executor.
//!
//! The request: `{controller, parent, children, related, finalizing}`, where `controller` is a
//! CompositeController describing this executor (parent resource, child resources, hook),
//! `parent` the hierarchy resource, and `children` the observed children by
//! `<Kind>.<apiVersion>` and then by name (every declared kind present, empty when none).
//! The response: `{status, children, resyncAfterSeconds, finalized}`; other fields are
//! ignored, as Metacontroller ignores them.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::lambda::{ChildResource, Webhook};

/// Children one answer may hold.
pub const MAX_CHILDREN: usize = 256;
/// The longest `resyncAfterSeconds` honoured.
const MAX_RESYNC_AFTER: Duration = Duration::from_secs(86_400);

/// Observed children by `<Kind>.<apiVersion>`, then by name.
pub type ChildMap = BTreeMap<String, BTreeMap<String, Value>>;

/// The key of a kind in [`ChildMap`]: `ConfigMap.v1`, `Deployment.apps/v1`.
pub fn child_map_key(kind: &str, api_version: &str) -> String {
    format!("{kind}.{api_version}")
}

/// What a parent looks like to the hook.
#[derive(Clone, Copy, Debug)]
pub struct ParentResource<'a> {
    /// `hierarchy.orrery.dev/v1alpha1`.
    pub api_version: &'a str,
    /// `applications`.
    pub resource: &'a str,
}

/// The body POSTed to the hook.
pub fn sync_request(
    parent: &Value,
    parent_resource: ParentResource<'_>,
    child_resources: &[ChildResource],
    hook: &Webhook,
    children: &ChildMap,
    finalizing: bool,
) -> Value {
    let name = parent
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let controller = json!({
        "apiVersion": "metacontroller.k8s.io/v1alpha1",
        "kind": "CompositeController",
        "metadata": {"name": format!("{}-{name}", parent_resource.resource)},
        "spec": {
            "parentResource": {"apiVersion": parent_resource.api_version, "resource": parent_resource.resource},
            "childResources": child_resources,
            "hooks": {
                "sync": {"webhook": {"url": hook.url, "timeout": format!("{}s", hook.timeout.as_secs())}},
            },
        },
    });
    json!({
        "controller": controller,
        "parent": parent,
        "children": children,
        "related": {},
        "finalizing": finalizing,
    })
}

/// A hook's answer, checked.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SyncResponse {
    /// Written into `status.executorStatus`.
    pub status: Option<Map<String, Value>>,
    /// The desired children (checked further by the plan).
    pub children: Vec<Value>,
    /// When to sync again, if the hook asks.
    pub resync_after: Option<Duration>,
    /// On deletion: the hook is done.
    pub finalized: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    #[serde(default)]
    status: Option<Value>,
    #[serde(default)]
    children: Option<Vec<Value>>,
    #[serde(default)]
    resync_after_seconds: Option<f64>,
    #[serde(default)]
    finalized: Option<bool>,
}

/// Checks a hook's answer. Nothing of an answer that is not a sync response reaches a status
/// or a message: the error says what is wrong with its shape, never what it holds.
///
/// # Errors
///
/// The answer is not an object of the contract's shape.
pub fn parse_response(answer: Value) -> Result<SyncResponse, String> {
    if !answer.is_object() {
        return Err("the answer is not a JSON object".into());
    }
    let raw: Raw = serde_json::from_value(answer).map_err(|_| {
        "the answer is not a sync response ({status, children, resyncAfterSeconds, finalized})".to_owned()
    })?;
    let status = match raw.status {
        None | Some(Value::Null) => None,
        Some(Value::Object(map)) => Some(map),
        Some(_) => return Err("status in the answer is not an object".into()),
    };
    let children = raw.children.unwrap_or_default();
    if children.len() > MAX_CHILDREN {
        return Err(format!(
            "the answer holds {} children, more than {MAX_CHILDREN}",
            children.len()
        ));
    }
    let resync_after = match raw.resync_after_seconds {
        None => None,
        Some(seconds) if seconds.is_finite() && seconds > 0.0 => {
            Some(Duration::from_secs_f64(seconds.min(MAX_RESYNC_AFTER.as_secs_f64())))
        }
        Some(0.0) => None,
        Some(_) => return Err("resyncAfterSeconds in the answer is negative or not a number".into()),
    };
    Ok(SyncResponse {
        status,
        children,
        resync_after,
        finalized: raw.finalized.unwrap_or(false),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook() -> Webhook {
        Webhook {
            url: "http://hooks:8080/sync".into(),
            timeout: Duration::from_secs(10),
            finalize: false,
        }
    }

    #[test]
    fn the_request_has_metacontrollers_shape() {
        let parent =
            json!({"apiVersion": "hierarchy.orrery.dev/v1alpha1", "kind": "Application", "metadata": {"name": "shop"}});
        let children = ChildMap::from([(
            child_map_key("ConfigMap", "v1"),
            BTreeMap::from([("shop-config".to_owned(), json!({"metadata": {"name": "shop-config"}}))]),
        )]);
        let kinds = [ChildResource {
            api_version: "v1".into(),
            resource: "configmaps".into(),
        }];
        let request = sync_request(
            &parent,
            ParentResource {
                api_version: "hierarchy.orrery.dev/v1alpha1",
                resource: "applications",
            },
            &kinds,
            &hook(),
            &children,
            false,
        );
        assert_eq!(request["parent"], parent);
        assert_eq!(
            request["children"]["ConfigMap.v1"]["shop-config"]["metadata"]["name"],
            "shop-config"
        );
        assert_eq!(request["finalizing"], false);
        assert_eq!(request["related"], json!({}));
        assert_eq!(request["controller"]["kind"], "CompositeController");
        assert_eq!(
            request["controller"]["spec"]["childResources"],
            json!([{"apiVersion": "v1", "resource": "configmaps"}])
        );
        assert_eq!(child_map_key("Deployment", "apps/v1"), "Deployment.apps/v1");
    }

    #[test]
    fn a_response_is_read_as_metacontroller_reads_it() {
        let response = parse_response(json!({
            "status": {"replicas": 2},
            "children": [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}}],
            "resyncAfterSeconds": 2.5,
            "somethingElse": true,
        }))
        .unwrap();
        assert_eq!(response.status.unwrap()["replicas"], 2);
        assert_eq!(response.children.len(), 1);
        assert_eq!(response.resync_after, Some(Duration::from_millis(2500)));
        assert!(!response.finalized);
        let empty = parse_response(json!({"status": null, "children": null})).unwrap();
        assert_eq!(empty, SyncResponse::default());
        assert!(parse_response(json!({"finalized": true})).unwrap().finalized);
    }

    #[test]
    fn a_bad_response_says_what_is_wrong_without_echoing_it() {
        let cases = [
            (json!("secret text"), "not a JSON object"),
            (json!({"children": "secret text"}), "not a sync response"),
            (
                json!({"status": "secret text"}),
                "status in the answer is not an object",
            ),
            (json!({"resyncAfterSeconds": -1}), "negative"),
        ];
        for (answer, expected) in cases {
            let error = parse_response(answer.clone()).unwrap_err();
            assert!(error.contains(expected), "{answer}: {error}");
            assert!(!error.contains("secret"), "{error}");
        }
        let many: Vec<Value> = (0..=MAX_CHILDREN).map(|_| json!({})).collect();
        assert!(
            parse_response(json!({"children": many}))
                .unwrap_err()
                .contains("more than 256")
        );
    }
}
