//! `annotate`: set annotations and labels on an object in the run's namespace.
//! Parameters: `apiVersion`, `kind`, `name`, `namespace` (only the run's, its default),
//! `annotations`, `labels` (maps of strings; `$(PHASE)`-style fields in values expand).
//!
//! task-workflow holds its rights for everyone's Tasks, so a Task must not steer them beyond
//! its own namespace: another namespace, a cluster-scoped kind, and task-workflow's own kinds
//! (its rights on TaskRuns are for running Tasks: a cancel is `kubectl annotate taskrun`) are
//! refused. What else it may patch is what the operator granted task-workflow for this action.

use crd_types::common::Parameters;
use crd_types::workflow::CANCEL_ANNOTATION;
use futures::future::BoxFuture;
use kube::ResourceExt;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::{Scope, pinned_kind};
use serde_json::json;

use super::{Action, ActionContext, only_known, string_map_param, string_param};

/// The API group of Tasks, TaskRuns and Ignitors.
const WORKFLOW_GROUP: &str = "workflow.orrery.dev";

pub struct Annotate;

impl Action for Annotate {
    fn name(&self) -> &'static str {
        "annotate"
    }

    fn run<'a>(
        &'a self,
        context: &'a ActionContext<'a>,
        parameters: &'a Parameters,
    ) -> BoxFuture<'a, Result<String, String>> {
        Box::pin(async move {
            only_known(
                parameters,
                &["apiVersion", "kind", "name", "namespace", "annotations", "labels"],
            )?;
            let api_version = string_param(parameters, "apiVersion")?.ok_or("apiVersion is required")?;
            let kind = string_param(parameters, "kind")?.ok_or("kind is required")?;
            let name = context.expand(string_param(parameters, "name")?.ok_or("name is required")?);
            let expand = |map: std::collections::BTreeMap<String, String>| {
                map.into_iter()
                    .map(|(k, v)| (k, context.expand(&v)))
                    .collect::<std::collections::BTreeMap<_, _>>()
            };
            let annotations = expand(string_map_param(parameters, "annotations")?);
            let labels = expand(string_map_param(parameters, "labels")?);
            if annotations.is_empty() && labels.is_empty() {
                return Err("give annotations or labels to set".into());
            }
            let (group, version) = match api_version.split_once('/') {
                Some((group, version)) => (group, version),
                None => ("", api_version),
            };
            let run_namespace = context.run.namespace();
            let namespace = namespace_to_act_in(run_namespace.as_deref(), string_param(parameters, "namespace")?)?;
            check_target(group, kind, &name)?;
            let (resource, capabilities) = pinned_kind(context.client, &GroupVersionKind::gvk(group, version, kind))
                .await
                .map_err(|err| format!("{api_version} {kind} is not served: {err}"))?;
            if let Scope::Cluster = capabilities.scope {
                return Err(format!(
                    "{kind} is cluster-scoped: annotate acts only on objects in the run's namespace {namespace:?}"
                ));
            }
            let api: Api<DynamicObject> = Api::namespaced_with(context.client.clone(), namespace, &resource);
            let patch = json!({"metadata": {"annotations": annotations, "labels": labels}});
            api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(|err| format!("patching {kind} {name}: {err}"))?;
            Ok(format!(
                "set {} annotation(s) and {} label(s) on {kind} {name}",
                annotations.len(),
                labels.len()
            ))
        })
    }
}

/// The namespace the action acts in: the run's. A `namespace` parameter may only repeat it.
fn namespace_to_act_in<'a>(run_namespace: Option<&'a str>, requested: Option<&str>) -> Result<&'a str, String> {
    let run_namespace = run_namespace
        .filter(|n| !n.is_empty())
        .ok_or("the run has no namespace")?;
    match requested {
        Some(requested) if requested != run_namespace => Err(format!(
            "namespace {requested:?} is not the run's namespace {run_namespace:?}: annotate acts only in the run's namespace"
        )),
        _ => Ok(run_namespace),
    }
}

/// Refuses task-workflow's own kinds, and a name that is not one path segment (it is put into
/// the request's path as it is).
fn check_target(group: &str, kind: &str, name: &str) -> Result<(), String> {
    if group == WORKFLOW_GROUP {
        return Err(format!(
            "annotate does not act on {WORKFLOW_GROUP} objects ({kind}): task-workflow's rights on them are for running Tasks; cancel a run with kubectl annotate taskrun NAME {CANCEL_ANNOTATION}=why"
        ));
    }
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '%']) {
        return Err(format!("{name:?} is not an object name"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_runs_namespace_is_acted_in() {
        assert_eq!(namespace_to_act_in(Some("team-a"), None), Ok("team-a"));
        assert_eq!(namespace_to_act_in(Some("team-a"), Some("team-a")), Ok("team-a"));
        let refused = namespace_to_act_in(Some("team-a"), Some("team-b")).unwrap_err();
        assert!(
            refused.contains("\"team-b\" is not the run's namespace \"team-a\""),
            "{refused}"
        );
        assert!(namespace_to_act_in(None, None).is_err());
        assert!(namespace_to_act_in(Some(""), Some("")).is_err());
    }

    #[test]
    fn task_workflows_own_kinds_and_names_that_are_not_one_segment_are_refused() {
        assert!(check_target("", "ConfigMap", "marker").is_ok());
        assert!(check_target("apps", "Deployment", "web").is_ok());
        let refused = check_target(WORKFLOW_GROUP, "TaskRun", "build-1").unwrap_err();
        assert!(
            refused.contains("does not act on workflow.orrery.dev objects (TaskRun)"),
            "{refused}"
        );
        for name in ["", ".", "..", "x/status", "../../namespaces/b/configmaps/x", "a%2Fb"] {
            assert!(check_target("", "ConfigMap", name).is_err(), "{name:?}");
        }
    }
}
