//! The hierarchy kinds a pipeline runs on, and what each gives it: its policies, its first
//! document and what its steps observe.

use std::fmt::Debug;

use crd_types::common::PluginRef;
use crd_types::hierarchy::{
    Application, Cluster, ClusterSpec, HierarchyStatus, Project, ProjectSpec, TrafficDocument, VirtualCluster,
    VirtualClusterSpec, spec_document, with_document,
};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::document::{SpecDocument, SpecObserved};
use crate::observed::{Observed, initial_document};
use crate::policy::Document;

/// A hierarchy resource whose `spec.policies` a pipeline runs.
pub trait Subject:
    Resource<DynamicType = ()> + Clone + Debug + Serialize + DeserializeOwned + Send + Sync + 'static
{
    /// The document its steps pass on.
    type Document: Document;
    /// Its policies, in order.
    fn policies(&self) -> &[PluginRef];
    /// The status every hierarchy kind shares.
    fn common(&self) -> Option<&HierarchyStatus>;
    /// The first step's input.
    fn initial_document(&self) -> Self::Document;
    /// What its steps see.
    fn observed(&self) -> <Self::Document as Document>::Observed;
    /// The API to write its status through.
    fn api(&self, client: Client) -> Api<Self>;
}

impl Subject for Application {
    type Document = TrafficDocument;

    fn policies(&self) -> &[PluginRef] {
        &self.spec.policies
    }

    fn common(&self) -> Option<&HierarchyStatus> {
        self.status.as_ref().map(|s| &s.common)
    }

    fn initial_document(&self) -> TrafficDocument {
        initial_document(self)
    }

    fn observed(&self) -> Observed {
        Observed::of(self)
    }

    fn api(&self, client: Client) -> Api<Self> {
        Api::namespaced(client, &self.namespace().unwrap_or_default())
    }
}

/// What a Project, Cluster or VirtualCluster shows its steps.
fn spec_observed<K: Subject>(resource: &K, fits: fn(&Map<String, Value>) -> Result<(), String>) -> SpecObserved {
    SpecObserved {
        kind: match K::kind(&()) {
            std::borrow::Cow::Borrowed(kind) => kind,
            std::borrow::Cow::Owned(_) => "resource",
        },
        name: resource.name_any(),
        generation: resource.meta().generation.unwrap_or_default(),
        in_force: resource
            .common()
            .and_then(|s| s.policy.as_ref())
            .and_then(|p| p.output.clone())
            .and_then(|output| serde_json::from_value(output).ok()),
        conditions: resource.common().map(|s| s.conditions.clone()).unwrap_or_default(),
        fits,
    }
}

macro_rules! spec_subject {
    ($kind:ty, $spec:ty, |$resource:ident| $common:expr) => {
        impl Subject for $kind {
            type Document = SpecDocument;

            fn policies(&self) -> &[PluginRef] {
                &self.spec.policies
            }

            fn common(&self) -> Option<&HierarchyStatus> {
                let $resource = self;
                $common
            }

            fn initial_document(&self) -> SpecDocument {
                SpecDocument(spec_document(&self.spec))
            }

            fn observed(&self) -> SpecObserved {
                // The kind's fields and their shapes decide whether a document fits, not where
                // the resource sits: any spec of the kind will do to try it on.
                spec_observed(self, |document| {
                    with_document(&<$spec>::default(), document).map(drop)
                })
            }

            fn api(&self, client: Client) -> Api<Self> {
                Api::all(client)
            }
        }
    };
}

spec_subject!(Project, ProjectSpec, |project| project.status.as_ref());
spec_subject!(Cluster, ClusterSpec, |cluster| cluster
    .status
    .as_ref()
    .map(|s| &s.common));
spec_subject!(VirtualCluster, VirtualClusterSpec, |vc| vc
    .status
    .as_ref()
    .map(|s| &s.common));

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn virtual_cluster(status: Value) -> VirtualCluster {
        serde_json::from_value(json!({
            "metadata": {"name": "team-a", "generation": 3},
            "spec": {"cluster": "local", "quota": {"pods": "10"}, "policies": [{"name": "freeze"}]},
            "status": status,
        }))
        .unwrap()
    }

    #[test]
    fn a_virtual_clusters_document_is_its_applied_spec_and_what_is_in_force_its_last_output() {
        let vc = virtual_cluster(json!({"policy": {"complete": true, "output": {"quota": {"pods": "5"}}}}));
        assert_eq!(Value::Object(vc.initial_document().0), json!({"quota": {"pods": "10"}}));
        let observed = vc.observed();
        assert_eq!(
            (observed.kind, observed.name.as_str(), observed.generation),
            ("VirtualCluster", "team-a", 3)
        );
        assert_eq!(
            observed.in_force.map(|d| Value::Object(d.0)),
            Some(json!({"quota": {"pods": "5"}}))
        );
        assert_eq!(virtual_cluster(json!({})).observed().in_force, None);
    }

    #[test]
    fn an_output_must_fit_the_kinds_spec() {
        let observed = virtual_cluster(json!({})).observed();
        let document = |v: Value| SpecDocument(v.as_object().unwrap().clone());
        assert!(document(json!({"quota": {"pods": "1"}})).check(&observed).is_ok());
        let failure = document(json!({"templates": {}})).check(&observed).unwrap_err();
        assert_eq!(failure.reason, "InvalidOutput");
        assert!(
            failure.message.starts_with("VirtualCluster: \"templates\""),
            "{}",
            failure.message
        );
        let project = Project::new("shop", ProjectSpec::default()).observed();
        assert!((project.fits)(json!({"templates": {}}).as_object().unwrap()).is_ok());
    }
}
