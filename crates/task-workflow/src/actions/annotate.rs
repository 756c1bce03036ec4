//! `annotate`: set annotations and labels on any object.
//! Parameters: `apiVersion`, `kind`, `name`, `namespace` (default the run's), `annotations`,
//! `labels` (maps of strings; `$(PHASE)`-style fields in values expand).

use crd_types::common::Parameters;
use futures::future::BoxFuture;
use kube::ResourceExt;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::{Scope, pinned_kind};
use serde_json::json;

use super::{Action, ActionContext, only_known, string_map_param, string_param};

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
            let (resource, capabilities) = pinned_kind(context.client, &GroupVersionKind::gvk(group, version, kind))
                .await
                .map_err(|err| format!("{api_version} {kind} is not served: {err}"))?;
            let api: Api<DynamicObject> = match capabilities.scope {
                Scope::Namespaced => {
                    let namespace = string_param(parameters, "namespace")?
                        .map(str::to_owned)
                        .or_else(|| context.run.namespace())
                        .unwrap_or_default();
                    Api::namespaced_with(context.client.clone(), &namespace, &resource)
                }
                Scope::Cluster => Api::all_with(context.client.clone(), &resource),
            };
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
