//! The Project executor's plan: the children its templates describe (Vitess style), with
//! their parents filled in, each owned by the Project so deleting it removes the tree.

use crd_types::hierarchy::{Application, Cluster, Project, VirtualCluster};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Resource, ResourceExt};

use super::owned_labels;

/// The children a Project's templates describe.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ProjectChildren {
    /// Clusters, their `project` set.
    pub clusters: Vec<Cluster>,
    /// VirtualClusters, their `cluster` set.
    pub virtual_clusters: Vec<VirtualCluster>,
    /// Applications, their `virtualCluster` and namespace set.
    pub applications: Vec<Application>,
}

/// The children of `project`'s templates, or why the templates cannot be built.
///
/// A VirtualCluster template may leave `cluster` out when the Project has exactly one Cluster
/// template, and an Application template `virtualCluster` when it has exactly one
/// VirtualCluster template; an Application's namespace defaults to its VirtualCluster's.
pub fn children(project: &Project) -> Result<ProjectChildren, String> {
    let Some(templates) = project.spec.templates.as_ref() else {
        return Ok(ProjectChildren::default());
    };
    let name = project.name_any();
    let owner = project.controller_owner_ref(&()).map(|r| vec![r]);
    let labels = project.metadata.uid.as_deref().map(owned_labels);
    let meta = |child: &str, namespace: Option<String>| ObjectMeta {
        name: Some(child.to_owned()),
        namespace,
        owner_references: owner.clone(),
        labels: labels.clone(),
        ..ObjectMeta::default()
    };
    let only = |names: Vec<&str>, what: &str, child: &str| -> Result<String, String> {
        match names.as_slice() {
            [one] => Ok((*one).to_owned()),
            _ => Err(format!(
                "{child} names no {what}, and the Project has {} {what} templates to choose from",
                names.len()
            )),
        }
    };

    let clusters = templates
        .clusters
        .iter()
        .map(|t| {
            let mut spec = t.spec.clone();
            spec.project = Some(name.clone());
            Cluster {
                metadata: meta(&t.name, None),
                spec,
                status: None,
            }
        })
        .collect();
    let mut virtual_clusters = Vec::new();
    for t in &templates.virtual_clusters {
        let mut spec = t.spec.clone();
        if spec.cluster.is_none() {
            let names = templates.clusters.iter().map(|c| c.name.as_str()).collect();
            spec.cluster = Some(only(names, "Cluster", &format!("VirtualCluster {}", t.name))?);
        }
        virtual_clusters.push(VirtualCluster {
            metadata: meta(&t.name, None),
            spec,
            status: None,
        });
    }
    let mut applications = Vec::new();
    for t in &templates.applications {
        let mut spec = t.spec.clone();
        if spec.virtual_cluster.is_none() {
            let names = templates.virtual_clusters.iter().map(|v| v.name.as_str()).collect();
            spec.virtual_cluster = Some(only(names, "VirtualCluster", &format!("Application {}", t.name))?);
        }
        let parent = spec.virtual_cluster.clone().unwrap_or_default();
        let namespace = t.namespace.clone().or_else(|| {
            templates
                .virtual_clusters
                .iter()
                .find(|v| v.name == parent)
                .map(|v| v.spec.namespace.clone().unwrap_or_else(|| v.name.clone()))
        });
        let Some(namespace) = namespace else {
            return Err(format!(
                "Application {} has no namespace, and its VirtualCluster {parent} is not one of the Project's templates",
                t.name
            ));
        };
        applications.push(Application {
            metadata: meta(&t.name, Some(namespace)),
            spec,
            status: None,
        });
    }
    Ok(ProjectChildren {
        clusters,
        virtual_clusters,
        applications,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crd_types::hierarchy::OWNER_LABEL;
    use serde_json::json;

    fn project(templates: serde_json::Value) -> Project {
        let mut p: Project =
            serde_json::from_value(json!({"metadata": {"name": "shop"}, "spec": {"templates": templates}})).unwrap();
        p.metadata.uid = Some("uid-shop".into());
        p
    }

    #[test]
    fn one_of_each_fills_every_parent_in() {
        let children = children(&project(json!({
            "clusters": [{"name": "local", "spec": {}}],
            "virtualClusters": [{"name": "team-a", "spec": {"namespace": "shop-a"}}],
            "applications": [{"name": "web", "spec": {"versions": [{"name": "v1", "image": "web:1"}]}}],
        })))
        .unwrap();
        assert_eq!(children.clusters[0].spec.project.as_deref(), Some("shop"));
        assert_eq!(children.virtual_clusters[0].spec.cluster.as_deref(), Some("local"));
        let web = &children.applications[0];
        assert_eq!(web.spec.virtual_cluster.as_deref(), Some("team-a"));
        assert_eq!(web.namespace().as_deref(), Some("shop-a"));
        let owner = &web.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.controller),
            ("Project", "shop", Some(true))
        );
        assert_eq!(web.labels()[OWNER_LABEL], "uid-shop");
    }

    #[test]
    fn an_ambiguous_parent_is_an_error_naming_the_child() {
        let err = children(&project(json!({
            "clusters": [{"name": "east", "spec": {}}, {"name": "west", "spec": {}}],
            "virtualClusters": [{"name": "team-a", "spec": {}}],
        })))
        .unwrap_err();
        assert!(err.contains("VirtualCluster team-a names no Cluster"), "{err}");
    }

    #[test]
    fn named_parents_are_kept() {
        let children = children(&project(json!({
            "clusters": [{"name": "east", "spec": {}}, {"name": "west", "spec": {}}],
            "virtualClusters": [{"name": "team-a", "spec": {"cluster": "west"}}, {"name": "team-b", "spec": {"cluster": "east"}}],
            "applications": [{"name": "web", "spec": {"virtualCluster": "team-b", "versions": [{"name": "v1", "image": "web:1"}]}}],
        })))
        .unwrap();
        assert_eq!(children.virtual_clusters[0].spec.cluster.as_deref(), Some("west"));
        assert_eq!(children.applications[0].namespace().as_deref(), Some("team-b"));
    }

    #[test]
    fn no_templates_no_children() {
        let p: Project = serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": {}})).unwrap();
        let children = children(&p).unwrap();
        assert!(
            children.clusters.is_empty() && children.virtual_clusters.is_empty() && children.applications.is_empty()
        );
    }
}
