//! KubeStellar's `control.kubestellar.io/v1alpha1` types that staged-binding drives and reads:
//! BindingPolicy (written), Binding, StatusCollector and CombinedStatus (read). Field names and
//! layout follow KubeStellar's current API (`api/control/v1alpha1/types.go`): a downsync clause
//! is an object test with its downsync modulation inline (`createOnly`, `statusCollectors`,
//! `wantSingletonReportedState`, `wantMultiWECReportedState`).
//!
//! KubeStellar installs these CRDs; Orrery generates none from these types (their schema is
//! disabled). The tests install CRDs written from KubeStellar's published ones
//! (`e2e/testdata/kubestellar-crds/`), so a field KubeStellar would prune is pruned there too.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{Condition, LabelSelector};

/// Labels KubeStellar puts on a CombinedStatus, naming its workload object and BindingPolicy.
pub mod combined_status_labels {
    /// API group (not version) of the workload object.
    pub const API_GROUP: &str = "status.kubestellar.io/api-group";
    /// Resource (lowercase plural) of the workload object.
    pub const RESOURCE: &str = "status.kubestellar.io/resource";
    /// Namespace of the workload object.
    pub const NAMESPACE: &str = "status.kubestellar.io/namespace";
    /// Name of the workload object.
    pub const NAME: &str = "status.kubestellar.io/name";
    /// Name of the BindingPolicy.
    pub const BINDING_POLICY: &str = "status.kubestellar.io/binding-policy";
}

/// Where a CombinedStatus lives for a cluster-scoped workload object.
pub const REPORT_NAMESPACE: &str = "kubestellar-report";

/// Name of the CombinedStatus for a (workload object, BindingPolicy) pair, as KubeStellar
/// names it: the two UIDs joined by a dot.
pub fn combined_status_name(workload_uid: &str, binding_policy_uid: &str) -> String {
    format!("{workload_uid}.{binding_policy_uid}")
}

/// BindingPolicy says which workload objects (`downsync`) go to which clusters (`clusterSelectors`).
#[derive(CustomResource, JsonSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "control.kubestellar.io",
    version = "v1alpha1",
    kind = "BindingPolicy",
    status = "BindingPolicyStatus",
    shortname = "bp",
    schema = "disabled",
    doc = "KubeStellar's BindingPolicy: which workload objects go to which clusters."
)]
#[serde(rename_all = "camelCase")]
pub struct BindingPolicySpec {
    /// Clusters (inventory objects) matching any selector are destinations.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cluster_selectors: Vec<LabelSelector>,
    /// Objects matching any clause are bound; the modulations of every clause matching an
    /// object combine (booleans by OR, StatusCollector names by union).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub downsync: Vec<DownsyncPolicyClause>,
}

/// A test selecting workload objects (`DownsyncObjectTest`), and how to downsync the selected
/// ones (`DownsyncModulation`), both inline as in KubeStellar's `DownsyncPolicyClause`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DownsyncPolicyClause {
    /// API group of the objects; absent matches every group, `""` the core group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_group: Option<String>,
    /// Lowercase plural resource names; `*` or empty matches all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<String>,
    /// Namespaces; `*` or empty matches all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// Selectors over the labels of the object's Namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespace_selectors: Vec<LabelSelector>,
    /// Selectors over the object's labels; any one must match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub object_selectors: Vec<LabelSelector>,
    /// Object names; `*` or empty matches all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub object_names: Vec<String>,
    /// Create the object in the cluster but do not update it afterwards.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub create_only: bool,
    /// StatusCollectors applied to the selected objects; their results make the CombinedStatus.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub status_collectors: Vec<String>,
    /// Return an object's status from its one cluster into the object.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub want_singleton_reported_state: bool,
    /// Return an object's status aggregated over its clusters into the object.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub want_multi_wec_reported_state: bool,
}

/// What KubeStellar observed of a BindingPolicy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BindingPolicyStatus {
    /// Conditions KubeStellar sets.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The generation of the spec this status describes.
    #[serde(default)]
    pub observed_generation: i64,
    /// Problems KubeStellar found.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

/// Binding is KubeStellar's resolution of one BindingPolicy (same name): which objects go to
/// which clusters.
#[derive(CustomResource, JsonSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "control.kubestellar.io",
    version = "v1alpha1",
    kind = "Binding",
    status = "BindingStatus",
    shortname = "bdg",
    schema = "disabled",
    doc = "KubeStellar's Binding: the resolution of a BindingPolicy's selectors."
)]
#[serde(rename_all = "camelCase")]
pub struct BindingSpec {
    /// The workload objects to propagate.
    #[serde(default)]
    pub workload: DownsyncObjectClauses,
    /// The clusters to propagate them to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub destinations: Vec<Destination>,
}

/// The bound workload objects, by scope.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DownsyncObjectClauses {
    /// Cluster-scoped objects.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cluster_scope: Vec<DownsyncClause>,
    /// Namespaced objects.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespace_scope: Vec<DownsyncClause>,
}

/// One bound workload object: what a StagedBindingPolicy `filter` sees as `downsyncClause`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DownsyncClause {
    /// API group (`""` for core).
    #[serde(default)]
    pub group: String,
    /// API version.
    pub version: String,
    /// Lowercase plural resource, e.g. `deployments`.
    pub resource: String,
    /// Namespace (absent for cluster-scoped objects).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Object name.
    pub name: String,
    /// Resource version bound.
    #[serde(default)]
    pub resource_version: String,
    /// Create only, do not update.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub create_only: bool,
    /// StatusCollectors applied to the object.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub status_collectors: Vec<String>,
    /// Return the object's status from its one cluster into the object.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub want_singleton_reported_state: bool,
    /// Return the object's status aggregated over its clusters into the object.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub want_multi_wec_reported_state: bool,
}

/// A destination cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Destination {
    /// The cluster's inventory name.
    #[serde(rename = "clusterId")]
    pub cluster_id: String,
}

/// What KubeStellar observed of a Binding.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BindingStatus {
    /// The generation of the spec this status describes.
    #[serde(default)]
    pub observed_generation: i64,
    /// Problems KubeStellar found.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

/// StatusCollector says how to combine the status an object reports from its clusters, after
/// an SQL `SELECT`: one input row per cluster, `filter` (WHERE), then either `select` (plain
/// columns) or `groupBy` with `combinedFields` (aggregation), at most `limit` rows.
/// Expressions are CEL over `inventory` (`.name`, the cluster), `obj` (the workload object
/// without status), `returned` (`.status`, what the cluster reports) and `propagation`.
#[derive(CustomResource, JsonSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "control.kubestellar.io",
    version = "v1alpha1",
    kind = "StatusCollector",
    status = "StatusCollectorStatus",
    shortname = "sc",
    schema = "disabled",
    doc = "KubeStellar's StatusCollector: how to combine an object's status from its clusters."
)]
#[serde(rename_all = "camelCase")]
pub struct StatusCollectorSpec {
    /// Which rows (clusters) count: true keeps a row, false or null drops it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    /// Groups rows for aggregation; each value is also an output column.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub group_by: Vec<NamedExpression>,
    /// Aggregations; empty when `select` is not.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub combined_fields: Vec<NamedAggregator>,
    /// Plain columns, one row per kept cluster; empty when `combinedFields` is not.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub select: Vec<NamedExpression>,
    /// At most this many rows (KubeStellar documents 20 as the usual value).
    pub limit: i64,
}

/// A named CEL expression.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct NamedExpression {
    /// The column's name.
    pub name: String,
    /// The expression.
    pub def: String,
}

/// A named aggregation: `COUNT` (no subject), `SUM`, `AVG`, `MIN` or `MAX` of `subject`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct NamedAggregator {
    /// The column's name.
    pub name: String,
    /// `COUNT`, `SUM`, `AVG`, `MIN` or `MAX`.
    #[serde(rename = "type")]
    pub type_: String,
    /// The value aggregated (all but `COUNT`): a number, or a string that parses as one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
}

/// What KubeStellar observed of a StatusCollector.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatusCollectorStatus {
    /// The generation of the spec this status describes.
    #[serde(default)]
    pub observed_generation: i64,
    /// Problems KubeStellar found (expressions that do not parse).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

/// CombinedStatus holds the combined status from the clusters for one (workload object,
/// BindingPolicy) pair; a StagedBindingPolicy `condition` sees it as `combinedStatus`.
#[derive(CustomResource, JsonSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "control.kubestellar.io",
    version = "v1alpha1",
    kind = "CombinedStatus",
    namespaced,
    no_spec,
    shortname = "cs",
    schema = "disabled",
    doc = "KubeStellar's CombinedStatus: combined status of one workload object under one BindingPolicy."
)]
#[serde(rename_all = "camelCase")]
pub struct CombinedStatusFields {
    /// One entry per applicable StatusCollector.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub results: Vec<NamedStatusCombination>,
}

/// The rows from one StatusCollector.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NamedStatusCombination {
    /// The StatusCollector's name.
    pub name: String,
    /// Names of the columns.
    #[serde(default)]
    pub column_names: Vec<String>,
    /// The rows.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rows: Vec<StatusCombinationRow>,
}

/// One row of a StatusCollector's result.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StatusCombinationRow {
    /// One value per column.
    #[serde(default)]
    pub columns: Vec<Value>,
}

/// A JSON value as KubeStellar writes it: a union tagged by `type`; numbers are strings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Value {
    /// `String`, `Number`, `Bool`, `Null`, `Object` or `Array`.
    #[serde(rename = "type")]
    pub type_: String,
    /// The value when `type` is `String`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub string: Option<String>,
    /// The value when `type` is `Number`, in JSON notation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub float: Option<String>,
    /// The value when `type` is `Bool`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bool: Option<bool>,
    /// The value when `type` is `Object`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::free_form_object")]
    pub object: Option<BTreeMap<String, serde_json::Value>>,
    /// The value when `type` is `Array`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::free_form_value")]
    pub array: Option<Vec<serde_json::Value>>,
}

impl Value {
    /// A `Number` value.
    pub fn number(n: impl ToString) -> Self {
        Self {
            type_: "Number".into(),
            float: Some(n.to_string()),
            ..Self::default()
        }
    }

    /// A `String` value.
    pub fn string(s: impl Into<String>) -> Self {
        Self {
            type_: "String".into(),
            string: Some(s.into()),
            ..Self::default()
        }
    }
}
