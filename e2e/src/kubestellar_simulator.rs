//! A KubeStellar simulator: KubeStellar does not run here, so this plays its part for
//! staged-binding's tests, writing what KubeStellar writes.
//!
//! - Clusters are inventory objects: ConfigMaps in namespace [`INVENTORY_NAMESPACE`] labelled
//!   `kubestellar.io/inventory=cluster`, whose other labels are the cluster's labels.
//! - For each BindingPolicy it resolves `clusterSelectors` against the inventory and `downsync`
//!   against the workload objects (Deployments), and writes the Binding of the same name,
//!   owned by the BindingPolicy.
//! - For each (workload object, BindingPolicy) with status collectors it creates the
//!   CombinedStatus KubeStellar would (name `<object uid>.<bindingpolicy uid>`, its labels, one
//!   result per collector), with empty rows; tests fill the rows with [`report`], as the
//!   clusters' status would. CombinedStatuses of deleted BindingPolicies are removed.

use std::collections::BTreeMap;
use std::time::Duration;

use crd_types::kubestellar::{
    Binding, BindingPolicy, BindingSpec, CombinedStatus, Destination, DownsyncClause, DownsyncObjectClauses, Value,
    combined_status_labels as labels, combined_status_name,
};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Where inventory objects (the clusters) live.
pub const INVENTORY_NAMESPACE: &str = "kubestellar-inventory";
/// The label marking an inventory object.
pub const INVENTORY_LABEL: &str = "kubestellar.io/inventory";
const MANAGER: &str = "kubestellar-simulator";

/// A running simulator; stops when dropped.
#[derive(Debug)]
pub struct KubeStellarSimulator {
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for KubeStellarSimulator {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn selector_matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let by_labels = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let by_expressions = selector.match_expressions.iter().flatten().all(|e| {
        let value = labels.get(&e.key);
        let values = e.values.clone().unwrap_or_default();
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    by_labels && by_expressions
}

fn listed(list: &[String], value: &str) -> bool {
    list.is_empty() || list.iter().any(|v| v == "*" || v == value)
}

/// The Binding KubeStellar resolves for `bp`, given the inventory and the Deployments.
pub fn resolve(bp: &BindingPolicy, clusters: &[ConfigMap], deployments: &[Deployment]) -> BindingSpec {
    let mut destinations: Vec<Destination> = clusters
        .iter()
        .filter(|c| {
            bp.spec
                .cluster_selectors
                .iter()
                .any(|s| selector_matches(s, c.labels()))
        })
        .map(|c| Destination {
            cluster_id: c.name_any(),
        })
        .collect();
    destinations.sort();
    let mut namespace_scope = Vec::new();
    for deployment in deployments {
        let namespace = deployment.namespace().unwrap_or_default();
        let collectors: Vec<String> = bp
            .spec
            .downsync
            .iter()
            .filter(|c| c.api_group.as_deref().is_none_or(|g| g == "apps"))
            .filter(|c| listed(&c.resources, "deployments"))
            .filter(|c| listed(&c.namespaces, &namespace))
            .filter(|c| listed(&c.object_names, &deployment.name_any()))
            .filter(|c| {
                c.object_selectors.is_empty()
                    || c.object_selectors
                        .iter()
                        .any(|s| selector_matches(s, deployment.labels()))
            })
            .flat_map(|c| c.status_collectors.clone())
            .collect();
        let selected = bp.spec.downsync.iter().any(|c| {
            c.api_group.as_deref().is_none_or(|g| g == "apps")
                && listed(&c.resources, "deployments")
                && listed(&c.namespaces, &namespace)
                && listed(&c.object_names, &deployment.name_any())
                && (c.object_selectors.is_empty()
                    || c.object_selectors
                        .iter()
                        .any(|s| selector_matches(s, deployment.labels())))
        });
        if selected {
            let mut collectors = collectors;
            collectors.sort();
            collectors.dedup();
            namespace_scope.push(DownsyncClause {
                group: "apps".into(),
                version: "v1".into(),
                resource: "deployments".into(),
                namespace: Some(namespace),
                name: deployment.name_any(),
                resource_version: deployment.resource_version().unwrap_or_default(),
                create_only: false,
                status_collectors: collectors,
            });
        }
    }
    BindingSpec {
        workload: DownsyncObjectClauses {
            cluster_scope: vec![],
            namespace_scope,
        },
        destinations,
    }
}

impl KubeStellarSimulator {
    /// Starts resolving every BindingPolicy in the cluster.
    pub async fn start(client: Client) -> anyhow::Result<Self> {
        let (tx, mut rx) = mpsc::channel::<()>(64);
        let mut tasks = Vec::new();
        macro_rules! trigger_on {
            ($api:expr) => {{
                let tx = tx.clone();
                let api = $api;
                tasks.push(tokio::spawn(async move {
                    let mut stream = watcher(api, watcher::Config::default()).default_backoff().boxed();
                    while stream.next().await.is_some() {
                        let _ = tx.try_send(());
                    }
                }));
            }};
        }
        trigger_on!(Api::<BindingPolicy>::all(client.clone()));
        trigger_on!(Api::<ConfigMap>::namespaced(client.clone(), INVENTORY_NAMESPACE));
        trigger_on!(Api::<Deployment>::all(client.clone()));
        let resolver = client.clone();
        tasks.push(tokio::spawn(async move {
            while rx.recv().await.is_some() {
                // Coalesce a burst of events into one pass.
                tokio::time::sleep(Duration::from_millis(20)).await;
                while rx.try_recv().is_ok() {}
                if let Err(err) = resolve_all(&resolver).await {
                    tracing::debug!(error = %err, "KubeStellar simulator pass failed; the next event retries");
                    let _ = tx.try_send(());
                }
            }
        }));
        Ok(KubeStellarSimulator { tasks })
    }
}

async fn resolve_all(client: &Client) -> anyhow::Result<()> {
    let bps = Api::<BindingPolicy>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items;
    let clusters = Api::<ConfigMap>::namespaced(client.clone(), INVENTORY_NAMESPACE)
        .list(&ListParams::default().labels(&format!("{INVENTORY_LABEL}=cluster")))
        .await?
        .items;
    let deployments = Api::<Deployment>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items;
    let bindings: Api<Binding> = Api::all(client.clone());
    let apply = PatchParams::apply(MANAGER).force();
    let mut wanted_statuses = Vec::new();
    for bp in &bps {
        let spec = resolve(bp, &clusters, &deployments);
        let mut binding = Binding::new(&bp.name_any(), spec.clone());
        binding.metadata.owner_references = bp.controller_owner_ref(&()).map(|mut o| {
            o.controller = Some(false);
            vec![o]
        });
        bindings.patch(&bp.name_any(), &apply, &Patch::Apply(&binding)).await?;
        for clause in &spec.workload.namespace_scope {
            if clause.status_collectors.is_empty() {
                continue;
            }
            let Some(deployment) = deployments
                .iter()
                .find(|d| d.name_any() == clause.name && d.namespace() == clause.namespace)
            else {
                continue;
            };
            let name = combined_status_name(&deployment.uid().unwrap_or_default(), &bp.uid().unwrap_or_default());
            wanted_statuses.push((clause.namespace.clone().unwrap_or_default(), name.clone()));
            let status: CombinedStatus = serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": clause.namespace, "labels": {
                    labels::API_GROUP: clause.group, labels::RESOURCE: clause.resource,
                    labels::NAMESPACE: clause.namespace, labels::NAME: clause.name,
                    labels::BINDING_POLICY: bp.name_any(),
                }},
                "results": clause.status_collectors.iter().map(|c| json!({"name": c, "columnNames": [], "rows": []})).collect::<Vec<_>>(),
            }))?;
            let api: Api<CombinedStatus> =
                Api::namespaced(client.clone(), clause.namespace.as_deref().unwrap_or_default());
            match api.create(&PostParams::default(), &status).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(err) => return Err(err.into()),
            }
        }
    }
    // CombinedStatuses of BindingPolicies that are gone. Checked afresh: a BindingPolicy
    // created since the list above (by a test running alongside) keeps its statuses.
    let all: Api<CombinedStatus> = Api::all(client.clone());
    let bp_api: Api<BindingPolicy> = Api::all(client.clone());
    for status in all.list(&ListParams::default()).await?.items {
        let key = (status.namespace().unwrap_or_default(), status.name_any());
        if wanted_statuses.contains(&key) {
            continue;
        }
        let Some(bp) = status.labels().get(labels::BINDING_POLICY) else {
            continue;
        };
        if bp_api.get_opt(bp).await?.is_none() {
            let api: Api<CombinedStatus> = Api::namespaced(client.clone(), &key.0);
            let _ = api.delete(&key.1, &DeleteParams::default()).await;
        }
    }
    Ok(())
}

/// Writes one row of `collector` into the CombinedStatus of Deployment `namespace/name` under
/// BindingPolicy `binding_policy`, as the clusters' reported status would: one column `value`.
/// Waits (up to 30 s) for the simulator to have created that CombinedStatus.
pub async fn report(
    client: &Client,
    namespace: &str,
    name: &str,
    binding_policy: &str,
    collector: &str,
    value: Value,
) -> anyhow::Result<()> {
    let api: Api<CombinedStatus> = Api::namespaced(client.clone(), namespace);
    let selector = format!("{}={binding_policy},{}={name}", labels::BINDING_POLICY, labels::NAME);
    let status = crate::wait::until(
        &format!("a CombinedStatus for {namespace}/{name} under {binding_policy}"),
        crate::Deadline::default(),
        || async {
            api.list(&ListParams::default().labels(&selector))
                .await
                .map_err(|e| e.to_string())?
                .items
                .into_iter()
                .next()
                .ok_or_else(|| "none yet".to_owned())
        },
    )
    .await?;
    let mut results = status.spec.results.clone();
    for result in results.iter_mut().filter(|r| r.name == collector) {
        result.column_names = vec!["value".into()];
        result.rows = vec![crd_types::kubestellar::StatusCombinationRow {
            columns: vec![value.clone()],
        }];
    }
    let patch = json!({"results": results});
    api.patch(&status.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}
