//! Types shared by several kinds.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};

/// The condition every Orrery kind carries: is the object doing what its spec asks?
pub const CONDITION_READY: &str = "Ready";

/// The category every Orrery kind belongs to: `kubectl get orrery` lists them all.
pub const CATEGORY: &str = "orrery";

/// Free-form plugin parameters: each plugin declares and validates its own.
pub type Parameters = BTreeMap<String, serde_json::Value>;

/// A named plugin with its parameters: an executor, a policy, or a task action.
///
/// The name selects the implementation from the registry of the controller that claims it;
/// the parameters are checked against what that implementation declares.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PluginRef {
    /// Name of the plugin, e.g. `canary` or `http-post`.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-zA-Z0-9]([-a-zA-Z0-9_.]*[a-zA-Z0-9])?$")
    )]
    pub name: String,
    /// Plugin-specific parameters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::free_form_object")]
    pub parameters: Option<Parameters>,
}

impl PluginRef {
    /// A plugin reference with no parameters.
    pub fn named(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            parameters: None,
        }
    }
}

/// A reference to one key of a Secret.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Namespace of the Secret; defaults to the referring object's namespace where it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub namespace: Option<String>,
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key within the Secret's data.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}
