//! `hierarchy.orrery.dev`: Project → Cluster → VirtualCluster → Application. Every resource
//! has an executor that aligns its real objects and triggers its children, and a pipeline of
//! policies whose output its executor applies. A Project may carry templates for the layers
//! below (create one object, get the whole tree), or each layer may name its parent.

use std::collections::BTreeMap;

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::common::{Condition, PluginRef, SecretKeyRef, Time};

/// Label on every object an executor creates, naming the hierarchy resource it belongs to.
pub const OWNER_LABEL: &str = "hierarchy.orrery.dev/owner";

/// Annotation pausing a resource's policy pipeline while present (and not `"false"`): the
/// output in force stays. `kubectl annotate application shop hierarchy.orrery.dev/pause=true`;
/// remove it to resume.
pub const PAUSE_ANNOTATION: &str = "hierarchy.orrery.dev/pause";
/// Annotation promoting a canary now; its value is any token that differs from the last one
/// honoured (`status.policy.lastPromote`), so each promote counts once.
pub const PROMOTE_ANNOTATION: &str = "hierarchy.orrery.dev/promote";
/// Annotation aborting a canary (all traffic back to the stable version), counted once per
/// token like [`PROMOTE_ANNOTATION`].
pub const ABORT_ANNOTATION: &str = "hierarchy.orrery.dev/abort";

// ---------------------------------------------------------------------------------------------
// Shared pieces

/// The status every hierarchy kind shares.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HierarchyStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` rolls up the children's readiness and names what is not ready.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The executor that claimed this resource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executor: Option<String>,
    /// The policy pipeline's latest result, written by policy-runner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyPipelineStatus>,
    /// The last time the executor found objects it made deleted or changed by someone else,
    /// and put them back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_repair: Option<Repair>,
    /// What an executor of its own reports beyond `Ready`: a `webhook` executor's hook status,
    /// a `template` executor's rendered `status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::free_form_object")]
    pub executor_status: Option<serde_json::Map<String, serde_json::Value>>,
}

/// Objects an executor found deleted or changed, and restored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Repair {
    /// When they were restored.
    pub time: Time,
    /// What was found, e.g. `Service shop-v2 (deleted), ResourceQuota orrery-quota
    /// (spec.hard.pods changed)`.
    pub message: String,
}

/// What the policy pipeline computed. The executor applies `output` only when `complete` is
/// true and `observedGeneration` matches the spec; otherwise what is in force stays.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyPipelineStatus {
    /// The spec generation the pipeline ran on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The controller running this pipeline (e.g. `policy-runner`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runner: Option<String>,
    /// True when every step ran; a stopped pipeline's partial output is never applied.
    #[serde(default)]
    pub complete: bool,
    /// The last step's output: for an Application, a [`TrafficDocument`]; for a Project,
    /// Cluster or VirtualCluster, its spec document (see [`spec_document`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::free_form_value")]
    pub output: Option<serde_json::Value>,
    /// One entry per policy, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<PolicyStepStatus>,
    /// True while the pause annotation holds the pipeline.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,
    /// The promote annotation's token last honoured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_promote: Option<String>,
    /// The abort annotation's token last honoured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_abort: Option<String>,
    /// `Ready`: True when `output` is complete and current (its reason sums the steps up:
    /// `Progressing`, `Holding`, `RolledBack`, `Succeeded`); False says which step stopped the
    /// pipeline and why (`PolicyNotClaimed`, `PolicyNotApplicable`, `InvalidParameters`,
    /// `InvalidExpression`, `InvalidOutput`, `MetricsUnavailable`, `WebhookFailed`,
    /// `PolicyFailed`), or `Paused`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// An Application's policy document: what each policy receives and returns, and what the
/// executor renders into the HTTPRoute.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrafficDocument {
    /// The split of traffic no match claims; sums to 100.
    #[serde(default)]
    pub weights: Vec<VersionWeight>,
    /// Requests sent to one version whatever the weights (experiments), checked in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<RouteMatch>,
    /// The version traffic returns to on a roll back, when a policy (e.g. `canary`) says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable: Option<String>,
    /// The version being released, when a policy says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<String>,
}

/// Requests matching every header given here (and the cookie, if given) go to `version`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteMatch {
    /// The version these requests go to.
    pub version: String,
    /// Exact header matches.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<NameValue>,
    /// A cookie that must be present with this value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<NameValue>,
}

/// A header or cookie name and its exact value.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NameValue {
    /// The name.
    pub name: String,
    /// The value.
    pub value: String,
}

/// One policy step's result and saved state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyStepStatus {
    /// The policy's name.
    pub name: String,
    /// `Progressing`, `Succeeded`, `Holding` or `RolledBack`; `Failed` where the pipeline
    /// stopped, and `Pending` for a step after it that has never run.
    pub phase: String,
    /// What the step did, or why it stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The policy's own state, handed back to it on its next run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::free_form_value")]
    pub state: Option<serde_json::Value>,
    /// When the step last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
}

/// Spec fields of a Project, Cluster or VirtualCluster that stay out of its policy document:
/// where it sits (its parent, a VirtualCluster's namespace), and who runs it.
pub const OUTSIDE_THE_DOCUMENT: [&str; 5] = ["project", "cluster", "namespace", "executor", "policies"];

/// The policy document of a Project, Cluster or VirtualCluster: the rest of its spec, the part
/// its executor applies (a Project's templates, a Cluster's kubeconfig reference, a
/// VirtualCluster's labels, quota, limits, isolation and access). Each policy receives one and
/// returns the next; the executor applies the pipeline's last output.
pub fn spec_document<S: Serialize>(spec: &S) -> Map<String, Value> {
    let mut fields = match serde_json::to_value(spec) {
        Ok(Value::Object(fields)) => fields,
        _ => Map::new(),
    };
    fields.retain(|name, _| !OUTSIDE_THE_DOCUMENT.contains(&name.as_str()));
    fields
}

/// `spec` with `document` in place of its document fields: what the executor applies.
///
/// # Errors
///
/// A field the document may not hold (named, with those it may), or a value of the wrong shape.
pub fn with_document<S>(spec: &S, document: &Map<String, Value>) -> Result<S, String>
where
    S: Serialize + DeserializeOwned + JsonSchema,
{
    let schema = schemars::schema_for!(S);
    let known: Vec<&String> = schema
        .get("properties")
        .and_then(Value::as_object)
        .map(|properties| {
            properties
                .keys()
                .filter(|name| !OUTSIDE_THE_DOCUMENT.contains(&name.as_str()))
                .collect()
        })
        .unwrap_or_default();
    if let Some(unknown) = document.keys().find(|name| !known.contains(name)) {
        let known: Vec<&str> = known.iter().map(|name| name.as_str()).collect();
        return Err(format!(
            "{unknown:?} is not a field of the document (it has {})",
            known.join(", ")
        ));
    }
    let mut fields = match serde_json::to_value(spec) {
        Ok(Value::Object(fields)) => fields,
        _ => Map::new(),
    };
    fields.retain(|name, _| OUTSIDE_THE_DOCUMENT.contains(&name.as_str()));
    fields.extend(document.iter().map(|(name, value)| (name.clone(), value.clone())));
    serde_json::from_value(Value::Object(fields)).map_err(|error| format!("the document does not fit: {error}"))
}

// ---------------------------------------------------------------------------------------------
// Project

/// A Project: the root of a hierarchy. Its templates, if any, create the layers below it.
#[derive(CustomResource, KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "hierarchy.orrery.dev",
    version = "v1alpha1",
    kind = "Project",
    status = "HierarchyStatus",
    shortname = "proj",
    category = "orrery",
    doc = "A Project: the root of a Project → Cluster → VirtualCluster → Application hierarchy.",
    printcolumn(
        name = "READY",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "REASON",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(name = "AGE", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct ProjectSpec {
    /// What the project is, for people reading it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub description: Option<String>,
    /// The executor running this resource; the kind's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executor: Option<PluginRef>,
    /// Policies run in order, each taking the previous one's output: the spec but for its parent,
    /// namespace, executor and policies. `freeze`, `cel` and `webhook` run here; the executor
    /// applies the last output, and nothing before the pipeline has completed once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub policies: Vec<PluginRef>,
    /// Child resources created and owned by this Project (Vitess style).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub templates: Option<ProjectTemplates>,
}

/// Templates of a Project's children. A template's parent field may be left out: the
/// Project, or the template's parent in this tree, is filled in.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProjectTemplates {
    /// Clusters.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub clusters: Vec<ClusterTemplate>,
    /// VirtualClusters.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub virtual_clusters: Vec<VirtualClusterTemplate>,
    /// Applications.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1024), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub applications: Vec<ApplicationTemplate>,
}

/// A Cluster to create.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterTemplate {
    /// Name of the Cluster.
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub name: String,
    /// Its spec.
    pub spec: ClusterSpec,
}

/// A VirtualCluster to create.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualClusterTemplate {
    /// Name of the VirtualCluster.
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub name: String,
    /// Its spec.
    pub spec: VirtualClusterSpec,
}

/// An Application to create.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApplicationTemplate {
    /// Name of the Application.
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub name: String,
    /// Namespace of the Application object; the VirtualCluster's namespace when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub namespace: Option<String>,
    /// Its spec.
    pub spec: ApplicationSpec,
}

// ---------------------------------------------------------------------------------------------
// Cluster

/// A target cluster: the local one, or a remote one reached through a kubeconfig Secret.
#[derive(CustomResource, KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "hierarchy.orrery.dev",
    version = "v1alpha1",
    kind = "Cluster",
    status = "ClusterStatus",
    shortname = "ocl",
    category = "orrery",
    doc = "A target cluster of a Project: the local cluster, or a remote one through a kubeconfig Secret.",
    printcolumn(name = "PROJECT", type_ = "string", json_path = ".spec.project"),
    printcolumn(name = "VERSION", type_ = "string", json_path = ".status.version"),
    printcolumn(
        name = "READY",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "REASON",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(name = "AGE", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct ClusterSpec {
    /// The parent Project. Filled in when created from a Project template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub project: Option<String>,
    /// The kubeconfig of a remote cluster; the local cluster when absent. Only inline
    /// credentials are used: a kubeconfig with `exec`, an auth provider, a token or certificate
    /// file, or `insecure-skip-tls-verify` is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubeconfig_secret_ref: Option<SecretKeyRef>,
    /// The executor running this resource; the kind's default when absent. The default
    /// executor takes `installGatewayAPI: true` to install missing Gateway API CRDs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executor: Option<PluginRef>,
    /// Policies run in order, each taking the previous one's output: the spec but for its parent,
    /// namespace, executor and policies. `freeze`, `cel` and `webhook` run here; the executor
    /// applies the last output, and nothing before the pipeline has completed once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub policies: Vec<PluginRef>,
}

/// What the Cluster executor found on the target cluster.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterStatus {
    /// Conditions, executor and policy results shared by every hierarchy kind.
    #[serde(flatten)]
    pub common: HierarchyStatus,
    /// The cluster's Kubernetes version, e.g. `v1.36.3`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Gateway API CRDs found on the cluster.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateway_api_crds: Vec<String>,
    /// Gateway API CRDs the cluster's Applications need and it lacks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing_crds: Vec<String>,
}

// ---------------------------------------------------------------------------------------------
// VirtualCluster

/// A namespace on a Cluster with guardrails: quota, limits, network isolation, access.
#[derive(CustomResource, KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "hierarchy.orrery.dev",
    version = "v1alpha1",
    kind = "VirtualCluster",
    status = "VirtualClusterStatus",
    shortname = "vc",
    category = "orrery",
    doc = "A namespace on a Cluster with quota, limits, network isolation and access bindings.",
    printcolumn(name = "CLUSTER", type_ = "string", json_path = ".spec.cluster"),
    printcolumn(name = "NAMESPACE", type_ = "string", json_path = ".status.namespace"),
    printcolumn(
        name = "READY",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "REASON",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(name = "AGE", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct VirtualClusterSpec {
    /// The parent Cluster. Required unless created from a Project template naming it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub cluster: Option<String>,
    /// The namespace on the Cluster; the VirtualCluster's name when absent. One that exists
    /// already is adopted only when its owner annotated it
    /// `hierarchy.orrery.dev/adoptable-by: <this VirtualCluster's name>`; `default`, `kube-*`
    /// and the controllers' own namespace never are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub namespace: Option<String>,
    /// Labels put on the namespace.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 32))]
    pub labels: BTreeMap<String, String>,
    /// ResourceQuota `hard` limits, e.g. `{cpu: "4", memory: 8Gi, pods: "20"}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 32))]
    pub quota: BTreeMap<String, String>,
    /// Default container requests and limits (a LimitRange).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<ContainerLimits>,
    /// Deny traffic from other namespaces (a default-deny NetworkPolicy allowing the namespace itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_isolation: Option<bool>,
    /// Who may use the namespace, and how. A policy's output may drop entries, never add one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub access: Vec<AccessBinding>,
    /// Namespaces (of this control plane, where Applications live) whose Applications this
    /// VirtualCluster runs besides those of its own namespace: its owner's opt-in, as a
    /// Gateway's `allowedRoutes`. A VirtualCluster on a remote Cluster names here the local
    /// namespaces of its Applications. A policy's output may drop entries, never add one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 63)))]
    pub application_namespaces: Vec<String>,
    /// The executor running this resource; the kind's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executor: Option<PluginRef>,
    /// Policies run in order, each taking the previous one's output: the spec but for its parent,
    /// namespace, executor and policies. `freeze`, `cel` and `webhook` run here; the executor
    /// applies the last output, and nothing before the pipeline has completed once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub policies: Vec<PluginRef>,
}

/// Default container resources in a VirtualCluster.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContainerLimits {
    /// Default requests, e.g. `{cpu: 100m, memory: 128Mi}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub default_request: BTreeMap<String, String>,
    /// Default limits.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub default_limit: BTreeMap<String, String>,
}

/// Access to a VirtualCluster's namespace.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccessBinding {
    /// `User` or `Group`.
    pub kind: SubjectKind,
    /// The user or group name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// `admin` or `view` (the built-in ClusterRoles).
    pub role: AccessRole,
}

/// Who is given access.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum SubjectKind {
    /// A user.
    #[default]
    User,
    /// A group.
    Group,
}

/// What access is given.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AccessRole {
    /// Read and write everything in the namespace.
    Admin,
    /// Read only.
    #[default]
    View,
}

/// What the VirtualCluster executor made.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualClusterStatus {
    /// Conditions, executor and policy results shared by every hierarchy kind.
    #[serde(flatten)]
    pub common: HierarchyStatus,
    /// The namespace on the Cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Application

/// An application: versions (a Deployment and Service each) behind one route whose weights
/// split traffic between them.
#[derive(CustomResource, KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "hierarchy.orrery.dev",
    version = "v1alpha1",
    kind = "Application",
    namespaced,
    status = "ApplicationStatus",
    shortname = "oapp",
    category = "orrery",
    doc = "An application: versions behind one HTTPRoute whose weights split traffic between them.",
    validation = Rule::new("self.metadata.name.size() <= 63").message("an Application's name is at most 63 characters: it is a label value on its pods"),
    validation = Rule::new("self.spec.versions.all(v, self.metadata.name.size() + v.name.size() <= 62)").message("<application>-<version> names each version's Deployment and Service: at most 63 characters"),
    printcolumn(name = "VIRTUALCLUSTER", type_ = "string", json_path = ".spec.virtualCluster"),
    printcolumn(
        name = "POLICY",
        type_ = "string",
        json_path = ".status.policy.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(
        name = "READY",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "REASON",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(name = "AGE", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[x_kube(validation = Rule::new("!has(self.weights) || self.weights.all(w, self.versions.exists(v, v.name == w.version))").message("every weight must name a version in spec.versions"))]
#[x_kube(validation = Rule::new("!has(self.weights) || size(self.weights) == 0 || self.weights.map(w, w.weight).sum() == 100").message("weights must sum to 100"))]
#[serde(rename_all = "camelCase")]
pub struct ApplicationSpec {
    /// The parent VirtualCluster. Required unless created from a Project template naming it.
    /// Its namespace must be this Application's: a VirtualCluster runs only its own namespace's
    /// Applications.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub virtual_cluster: Option<String>,
    /// The versions; names are unique.
    #[schemars(length(min = 1, max = 8), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub versions: Vec<AppVersion>,
    /// The port the stable Service and every version's Service expose.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
    /// The route: hostnames and the Gateway it attaches to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<RouteSpec>,
    /// Traffic split in percent when the Application has no policies; must sum to 100.
    /// All traffic to the first version when absent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["version"]))]
    pub weights: Vec<VersionWeight>,
    /// The executor running this resource; the kind's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executor: Option<PluginRef>,
    /// Policies run in order, each taking the previous one's output (e.g. `canary`, `weight-cap`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub policies: Vec<PluginRef>,
}

/// One version of an Application.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppVersion {
    /// Version name, e.g. `v1`.
    #[schemars(length(min = 1, max = 40), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub name: String,
    /// Container image.
    #[schemars(length(min = 1, max = 512))]
    pub image: String,
    /// Replicas. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: Option<i32>,
    /// Container arguments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub args: Vec<String>,
    /// Environment variables.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64))]
    pub env: BTreeMap<String, String>,
}

/// An Application's route.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteSpec {
    /// Hostnames the HTTPRoute matches.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub hostnames: Vec<String>,
    /// Name of the Gateway the HTTPRoute attaches to.
    #[schemars(length(min = 1, max = 253))]
    pub gateway: String,
    /// Namespace of the Gateway; the Application's namespace when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub gateway_namespace: Option<String>,
}

/// A version's share of traffic.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VersionWeight {
    /// The version.
    #[schemars(length(min = 1, max = 40))]
    pub version: String,
    /// Percent of traffic, 0–100.
    #[schemars(range(min = 0, max = 100))]
    pub weight: i32,
}

/// What the Application executor made and observed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApplicationStatus {
    /// Conditions, executor and policy results shared by every hierarchy kind. policy-runner
    /// writes `policy`; the executor applies `policy.output.weights` when it is complete.
    #[serde(flatten)]
    pub common: HierarchyStatus,
    /// Per-version readiness.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub versions: Vec<VersionStatus>,
    /// The weights in the HTTPRoute now.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub weights: Vec<VersionWeight>,
    /// The header and cookie matches in the HTTPRoute now, ahead of the weights.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<RouteMatch>,
}

/// One version's readiness.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VersionStatus {
    /// The version.
    pub name: String,
    /// Desired replicas.
    #[serde(default)]
    pub replicas: i32,
    /// Ready replicas.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Container restarts across the version's pods.
    #[serde(default)]
    pub restarts: i32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn virtual_cluster() -> VirtualClusterSpec {
        serde_json::from_value(json!({
            "cluster": "local", "quota": {"pods": "10"}, "networkIsolation": true,
            "policies": [{"name": "freeze"}],
        }))
        .unwrap()
    }

    #[test]
    fn the_document_is_the_spec_but_its_place_and_its_runners() {
        let document = spec_document(&virtual_cluster());
        assert_eq!(
            Value::Object(document),
            json!({"quota": {"pods": "10"}, "networkIsolation": true})
        );
    }

    #[test]
    fn a_document_replaces_the_applied_fields_and_keeps_the_rest() {
        let document = json!({"quota": {"pods": "20"}, "labels": {"team": "a"}});
        let applied = with_document(&virtual_cluster(), document.as_object().unwrap()).unwrap();
        assert_eq!(applied.cluster.as_deref(), Some("local"));
        assert_eq!(applied.policies.len(), 1);
        assert_eq!(applied.quota["pods"], "20");
        assert_eq!(applied.labels["team"], "a");
        assert_eq!(
            applied.network_isolation, None,
            "what the document leaves out is not applied"
        );
    }

    #[test]
    fn a_document_cannot_move_the_resource_or_hold_unknown_or_misshapen_fields() {
        let set = |document: Value| with_document(&virtual_cluster(), document.as_object().unwrap()).unwrap_err();
        assert!(set(json!({"cluster": "other"})).contains("\"cluster\" is not a field"));
        let unknown = set(json!({"quotas": {}}));
        assert!(unknown.contains("\"quotas\"") && unknown.contains("quota"), "{unknown}");
        assert!(set(json!({"quota": 3})).contains("does not fit"));
    }
}
