//! Every Orrery custom resource type, and KubeStellar's types that Orrery reads and writes.
//!
//! Orrery's kinds are the single source of the CRD YAML in `manifests/crds/`
//! (`cargo run -p crd-types --bin crdgen`). Doc comments become `kubectl explain` text.
//!
//! | group | kinds | controller |
//! |---|---|---|
//! | `workflow.orrery.dev` | [`Ignitor`], [`Task`], [`TaskRun`] | ignitor-scheduler, task-workflow |
//! | `placement.orrery.dev` | [`StagedBindingPolicy`] | staged-binding |
//! | `hierarchy.orrery.dev` | [`Project`], [`Cluster`], [`VirtualCluster`], [`Application`] | hierarchy-executor, policy-runner |
//! | `control.kubestellar.io` | [`BindingPolicy`], [`Binding`], [`StatusCollector`], [`CombinedStatus`] | KubeStellar (its CRDs are KubeStellar's, not generated here) |

// `printcolumn(type_ = ...)` repeated across columns of one `#[kube]` attribute is not a mistake.
#![allow(clippy::duplicated_attributes)]

pub mod common;
pub mod hierarchy;
pub mod kubestellar;
pub mod placement;
pub mod workflow;

mod schema;

pub use common::{CONDITION_READY, Condition, PluginRef};
pub use hierarchy::{Application, Cluster, Project, VirtualCluster};
pub use kubestellar::{Binding, BindingPolicy, CombinedStatus, StatusCollector};
pub use placement::StagedBindingPolicy;
pub use workflow::{Ignitor, Task, TaskRun};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// Every CRD Orrery defines, in a stable order.
pub fn orrery_crds() -> Vec<CustomResourceDefinition> {
    vec![
        Ignitor::crd(),
        Task::crd(),
        TaskRun::crd(),
        StagedBindingPolicy::crd(),
        Project::crd(),
        Cluster::crd(),
        VirtualCluster::crd(),
        Application::crd(),
    ]
}

/// Renders a CRD as the YAML committed under `manifests/crds/`.
pub fn to_yaml(crd: &CustomResourceDefinition) -> Result<String, serde_yaml::Error> {
    serde_yaml::to_string(crd).map(|yaml| format!("---\n{yaml}"))
}
