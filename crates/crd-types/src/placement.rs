//! `placement.orrery.dev`: KubeStellar's StagedBindingPolicy. A workload moves through stages
//! of clusters; each stage is a BindingPolicy, and the next takes over when a CEL condition
//! over the CombinedStatuses of the stage's objects holds.

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{Condition, LabelSelector, Time};
use crate::kubestellar::DownsyncPolicyClause;

/// Annotation approving a stage's gate from kubectl; its value is the stage name:
/// `kubectl annotate sbp x placement.orrery.dev/approve=prod`.
pub const APPROVE_ANNOTATION: &str = "placement.orrery.dev/approve";

/// A staged placement: stages of clusters, advanced one by one when each stage's condition holds.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "placement.orrery.dev",
    version = "v1alpha1",
    kind = "StagedBindingPolicy",
    status = "StagedBindingPolicyStatus",
    shortname = "sbp",
    category = "orrery",
    doc = "A staged placement: a workload moves through stages of clusters, each advancing when its CEL condition holds.",
    printcolumn(name = "ACTIVESTAGE", type_ = "string", json_path = ".status.activeStage"),
    printcolumn(
        name = "PROGRESSING",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Progressing\")].reason"
    ),
    printcolumn(
        name = "READY",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "AGE", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("self.metadata.name.size() <= 63").message("a StagedBindingPolicy's name is at most 63 characters: it is a label value on the BindingPolicies it places, named <policy>.<stage>")
)]
#[serde(rename_all = "camelCase")]
pub struct StagedBindingPolicySpec {
    /// What to place, as in KubeStellar's BindingPolicy: object selectors and the downsync
    /// modulation (`statusCollectors`, `createOnly`, ...). The same objects are placed in every
    /// stage.
    #[schemars(length(min = 1, max = 16))]
    pub downsync: Vec<StagedDownsyncClause>,

    /// The stages, in order. Names are unique.
    #[schemars(length(min = 1, max = 16), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub stages: Vec<Stage>,

    /// What happens to earlier stages' clusters when a stage advances: `Move` (default) places
    /// the workload on the new stage's clusters only (dev → test → prod); `Keep` adds them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement_mode: Option<PlacementMode>,

    /// A stage whose condition has not held this many seconds after it started fails and
    /// `onFailure` applies. No deadline when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 31_536_000))]
    pub progress_deadline_seconds: Option<i64>,

    /// What to do when a stage misses its deadline: `Pause` (default) stays on the stage;
    /// `Rollback` returns placement to the previous stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_failure: Option<FailurePolicy>,

    /// While true the rollout stays where it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspend: Option<bool>,
}

/// One downsync clause, written into each stage's BindingPolicy in KubeStellar's current layout:
/// the object test and the modulation side by side. The StatusCollectors may also be given as
/// `statusCollection.statusCollectors`, the layout of KubeStellar 0.24; they are written as
/// `statusCollectors`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StagedDownsyncClause {
    /// API group of the objects; absent matches every group, `""` the core group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_group: Option<String>,
    /// Lowercase plural resource names; `*` or empty matches all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub resources: Vec<String>,
    /// Namespaces; `*` or empty matches all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub namespaces: Vec<String>,
    /// Selectors over the labels of the object's Namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub namespace_selectors: Vec<LabelSelector>,
    /// Selectors over the object's labels; any one must match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub object_selectors: Vec<LabelSelector>,
    /// Object names; `*` or empty matches all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub object_names: Vec<String>,
    /// Create the object in a cluster but do not update it there afterwards.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub create_only: bool,
    /// Names of the StatusCollectors that make each selected object's CombinedStatus (the
    /// one a stage's `condition` reads).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub status_collectors: Vec<String>,
    /// The same as `statusCollectors`, in KubeStellar 0.24's layout; the two are joined.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_collection: Option<StatusCollection>,
    /// Return an object's status from its one cluster into the object.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub want_singleton_reported_state: bool,
    /// Return an object's status aggregated over its clusters into the object.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub want_multi_wec_reported_state: bool,
}

/// KubeStellar 0.24's wrapper of the StatusCollector names.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatusCollection {
    /// Names of StatusCollectors.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub status_collectors: Vec<String>,
}

impl StagedDownsyncClause {
    /// The clause as a BindingPolicy carries it today: StatusCollector names from both
    /// layouts, in order, each once.
    pub fn to_binding_policy_clause(&self) -> DownsyncPolicyClause {
        let mut collectors: Vec<String> = Vec::new();
        let nested = self.status_collection.iter().flat_map(|c| &c.status_collectors);
        for name in self.status_collectors.iter().chain(nested) {
            if !collectors.contains(name) {
                collectors.push(name.clone());
            }
        }
        DownsyncPolicyClause {
            api_group: self.api_group.clone(),
            resources: self.resources.clone(),
            namespaces: self.namespaces.clone(),
            namespace_selectors: self.namespace_selectors.clone(),
            object_selectors: self.object_selectors.clone(),
            object_names: self.object_names.clone(),
            create_only: self.create_only,
            status_collectors: collectors,
            want_singleton_reported_state: self.want_singleton_reported_state,
            want_multi_wec_reported_state: self.want_multi_wec_reported_state,
        }
    }
}

/// One stage of a staged placement.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Stage {
    /// The stage's name, e.g. `dev`: a DNS label (no dots), so `<policy>.<stage>`, the name of
    /// the stage's BindingPolicy, cannot be another policy's and stage's.
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub name: String,
    /// The clusters of this stage, as in BindingPolicy's `clusterSelectors`.
    #[schemars(length(min = 1, max = 16))]
    pub cluster_selectors: Vec<LabelSelector>,
    /// CEL over `downsyncClause` (an object of the Binding): which objects the condition checks.
    /// All bound objects when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub filter: Option<String>,
    /// CEL over the CombinedStatus of each filtered object, named `combinedStatus` (as in the
    /// KubeStellar workload stager's example) or `obj` (as its README's text says): the two are
    /// the same value. Must hold for every filtered object for the stage to be fulfilled.
    /// Absent: fulfilled once placed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub condition: Option<String>,
    /// Seconds the condition must keep holding before the stage is fulfilled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 31_536_000))]
    pub soak_seconds: Option<i64>,
    /// The stage starts only after it is approved (the approve annotation names it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_approval: Option<bool>,
}

/// What happens to earlier stages' clusters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum PlacementMode {
    /// Only the active stage's clusters hold the workload.
    #[default]
    Move,
    /// Every stage reached so far keeps the workload.
    Keep,
}

/// What to do when a stage misses its deadline.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum FailurePolicy {
    /// Stay on the failed stage, with `Failed=True`, until the spec changes.
    #[default]
    Pause,
    /// Return placement to the previous stage.
    Rollback,
}

/// Where the rollout is.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StagedBindingPolicyStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Progressing`, `Complete` and `Failed`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Name of the stage whose BindingPolicy is in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_stage: Option<String>,
    /// Every stage started so far, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<StageRecord>,
}

/// One stage's passage.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StageRecord {
    /// The stage's name.
    pub name: String,
    /// When its BindingPolicy was written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<Time>,
    /// When its condition first held (soak time counts from here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition_met: Option<Time>,
    /// When it was fulfilled, failed or rolled back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended: Option<Time>,
    /// `Active`, `Fulfilled`, `Failed` or `RolledBack`.
    pub outcome: String,
    /// Why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}
