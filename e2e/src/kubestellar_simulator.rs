//! A KubeStellar simulator: KubeStellar does not run here, so this plays its part for
//! staged-binding's tests, writing what KubeStellar writes, in its published schemas.
//!
//! - Clusters are inventory objects: ConfigMaps in namespace [`INVENTORY_NAMESPACE`] labelled
//!   `kubestellar.io/inventory=cluster`, whose other labels are the cluster's labels.
//! - For each BindingPolicy it resolves `clusterSelectors` against the inventory and `downsync`
//!   against the workload objects (Deployments), and writes the Binding of the same name,
//!   owned by the BindingPolicy, the modulations of the matching clauses combined (booleans by
//!   OR, StatusCollector names by union).
//! - Each bound Deployment is propagated to each destination cluster: its copy goes to the
//!   namespace [`cluster_namespace`]`(cluster, namespace)`, labelled [`CLUSTER_LABEL`]. There
//!   kube-controller-manager runs the copy and a [`PodSimulator`] plays the cluster's kubelet,
//!   so the copy's status is what that cluster reports (`readyReplicas` once its pods run). A
//!   `createOnly` copy is created once and not updated; copies no longer bound are deleted. The
//!   workload's annotation [`PENDING_IN`] names clusters where its pods do not start.
//! - For each (workload object, BindingPolicy) whose clauses name StatusCollectors, it writes
//!   the CombinedStatus KubeStellar does (name `<object uid>.<bindingpolicy uid>`, its labels),
//!   computed as KubeStellar documents: for each named StatusCollector that exists, one input
//!   row per destination cluster with `inventory` (`.name`), `obj` (the workload object without
//!   status), `returned` (`.status`, the cluster's copy's status) and `propagation`; `filter`,
//!   then `select`, or `groupBy` with `combinedFields` (`COUNT`, `SUM`, `AVG`, `MIN`, `MAX`),
//!   then `limit`, every expression in CEL. CombinedStatuses of deleted BindingPolicies go.
//!
//! Only Deployments are workload objects here.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cel_conditions::Expression;
use crd_types::kubestellar::{
    Binding, BindingPolicy, BindingSpec, CombinedStatus, CombinedStatusFields, Destination, DownsyncClause,
    DownsyncObjectClauses, DownsyncPolicyClause, NamedStatusCombination, StatusCollector, StatusCollectorSpec,
    StatusCombinationRow, Value, combined_status_labels as labels, combined_status_name,
};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::{Value as Json, json};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::pod_simulator::{OUTCOME, PodSimulator};

/// Where inventory objects (the clusters) live.
pub const INVENTORY_NAMESPACE: &str = "kubestellar-inventory";
/// The label marking an inventory object.
pub const INVENTORY_LABEL: &str = "kubestellar.io/inventory";
/// The label on a cluster's copy of a workload object (and on the cluster's namespaces): the cluster.
pub const CLUSTER_LABEL: &str = "sim.orrery.dev/cluster";
/// The annotation on a cluster's copy naming the workload object, `namespace/name`.
pub const ORIGIN_ANNOTATION: &str = "sim.orrery.dev/origin";
/// An annotation on a workload object: the clusters (comma-separated, `*` for all) where its
/// pods do not start, so its copy there never reports ready replicas.
pub const PENDING_IN: &str = "sim.orrery.dev/pending-in";
/// The StatusCollector the seed's policy names. [`deployments_aggregator`] defines it.
pub const DEPLOYMENTS_AGGREGATOR: &str = "deployments-aggregator";
const MANAGER: &str = "kubestellar-simulator";
/// What a StatusCollector's expressions may name.
const COLLECTOR_VARIABLES: [&str; 4] = ["inventory", "obj", "returned", "propagation"];

/// The namespace standing for `namespace` in simulated cluster `cluster`.
pub fn cluster_namespace(cluster: &str, namespace: &str) -> String {
    format!("{cluster}--{namespace}")
}

/// The `deployments-aggregator` StatusCollector as the tests and examples define it: how many
/// clusters report the Deployment fully ready (`readyReplicas` equal to `spec.replicas`).
pub fn deployments_aggregator() -> StatusCollector {
    StatusCollector::new(
        DEPLOYMENTS_AGGREGATOR,
        StatusCollectorSpec {
            filter: Some(
                "has(returned.status.readyReplicas) && returned.status.readyReplicas == obj.spec.replicas".into(),
            ),
            combined_fields: vec![crd_types::kubestellar::NamedAggregator {
                name: "ready".into(),
                type_: "COUNT".into(),
                subject: None,
            }],
            limit: 20,
            ..StatusCollectorSpec::default()
        },
    )
}

/// Creates `collector` unless a StatusCollector of its name exists (tests share them).
pub async fn ensure_status_collector(client: &Client, collector: &StatusCollector) -> anyhow::Result<()> {
    match Api::<StatusCollector>::all(client.clone())
        .create(&PostParams::default(), collector)
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(err) => Err(err.into()),
    }
}

/// The kubelets of the simulated clusters' namespaces, started as the namespaces are.
type Kubelets = Arc<Mutex<HashMap<String, PodSimulator>>>;
/// The results last written to each CombinedStatus (namespace, name), not to write them again.
type Written = HashMap<(String, String), Vec<NamedStatusCombination>>;

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

fn clause_matches(clause: &DownsyncPolicyClause, deployment: &Deployment) -> bool {
    clause.api_group.as_deref().is_none_or(|g| g == "apps")
        && listed(&clause.resources, "deployments")
        && listed(&clause.namespaces, &deployment.namespace().unwrap_or_default())
        && listed(&clause.object_names, &deployment.name_any())
        && (clause.object_selectors.is_empty()
            || clause
                .object_selectors
                .iter()
                .any(|s| selector_matches(s, deployment.labels())))
}

fn is_copy(deployment: &Deployment) -> bool {
    deployment.labels().contains_key(CLUSTER_LABEL)
}

/// The Binding KubeStellar resolves for `bp`, given the inventory and the Deployments (copies
/// in simulated clusters are not workload objects).
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
    for deployment in deployments.iter().filter(|d| !is_copy(d)) {
        let matching: Vec<&DownsyncPolicyClause> = bp
            .spec
            .downsync
            .iter()
            .filter(|c| clause_matches(c, deployment))
            .collect();
        if matching.is_empty() {
            continue;
        }
        let mut collectors: Vec<String> = matching.iter().flat_map(|c| c.status_collectors.clone()).collect();
        collectors.sort();
        collectors.dedup();
        namespace_scope.push(DownsyncClause {
            group: "apps".into(),
            version: "v1".into(),
            resource: "deployments".into(),
            namespace: deployment.namespace(),
            name: deployment.name_any(),
            resource_version: deployment.resource_version().unwrap_or_default(),
            create_only: matching.iter().any(|c| c.create_only),
            status_collectors: collectors,
            want_singleton_reported_state: matching.iter().any(|c| c.want_singleton_reported_state),
            want_multi_wec_reported_state: matching.iter().any(|c| c.want_multi_wec_reported_state),
        });
    }
    BindingSpec {
        workload: DownsyncObjectClauses {
            cluster_scope: vec![],
            namespace_scope,
        },
        destinations,
    }
}

fn pending_in(deployment: &Deployment, cluster: &str) -> bool {
    deployment
        .annotations()
        .get(PENDING_IN)
        .is_some_and(|list| list.split(',').map(str::trim).any(|c| c == "*" || c == cluster))
}

/// The copy of `deployment` that cluster `cluster` runs.
pub fn copy_for(deployment: &Deployment, cluster: &str) -> Deployment {
    let namespace = deployment.namespace().unwrap_or_default();
    let mut labels = deployment.labels().clone();
    labels.insert(CLUSTER_LABEL.into(), cluster.into());
    let mut spec = deployment.spec.clone();
    if pending_in(deployment, cluster)
        && let Some(spec) = spec.as_mut()
    {
        spec.template
            .metadata
            .get_or_insert_with(Default::default)
            .annotations
            .get_or_insert_with(Default::default)
            .insert(OUTCOME.into(), "Pending".into());
    }
    Deployment {
        metadata: ObjectMeta {
            name: Some(deployment.name_any()),
            namespace: Some(cluster_namespace(cluster, &namespace)),
            labels: Some(labels),
            annotations: Some(
                [(
                    ORIGIN_ANNOTATION.to_string(),
                    format!("{namespace}/{}", deployment.name_any()),
                )]
                .into(),
            ),
            ..ObjectMeta::default()
        },
        spec,
        status: None,
    }
}

impl KubeStellarSimulator {
    /// Starts resolving every BindingPolicy in the cluster, with a kubelet (pod simulator) for
    /// each simulated cluster's namespaces.
    pub async fn start(client: Client) -> anyhow::Result<Self> {
        Self::start_with(client, true).await
    }

    /// As [`start`](Self::start), without kubelets of its own: for when a pod simulator already
    /// covers every namespace.
    pub async fn start_without_kubelets(client: Client) -> anyhow::Result<Self> {
        Self::start_with(client, false).await
    }

    async fn start_with(client: Client, kubelets_of_its_own: bool) -> anyhow::Result<Self> {
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
        trigger_on!(Api::<StatusCollector>::all(client.clone()));
        trigger_on!(Api::<ConfigMap>::namespaced(client.clone(), INVENTORY_NAMESPACE));
        // Workload objects and the clusters' copies (whose status changes are the clusters' reports).
        trigger_on!(Api::<Deployment>::all(client.clone()));
        let resolver = client.clone();
        let kubelets: Kubelets = Arc::default();
        let mut written = Written::new();
        tasks.push(tokio::spawn(async move {
            while rx.recv().await.is_some() {
                // Coalesce a burst of events into one pass.
                tokio::time::sleep(Duration::from_millis(20)).await;
                while rx.try_recv().is_ok() {}
                if let Err(err) = pass(&resolver, kubelets_of_its_own.then_some(&kubelets), &mut written).await {
                    tracing::debug!(error = %err, "KubeStellar simulator pass failed; the next event retries");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    let _ = tx.try_send(());
                }
            }
        }));
        Ok(KubeStellarSimulator { tasks })
    }
}

/// Makes the namespace of a simulated cluster, with its kubelet.
async fn ensure_cluster_namespace(
    client: &Client,
    kubelets: Option<&Kubelets>,
    cluster: &str,
    name: &str,
) -> anyhow::Result<()> {
    let Some(kubelets) = kubelets else {
        return create_namespace(client, cluster, name).await;
    };
    if kubelets.lock().map(|k| k.contains_key(name)).unwrap_or(false) {
        return Ok(());
    }
    create_namespace(client, cluster, name).await?;
    let kubelet = PodSimulator::start(client.clone(), Some(name)).await?;
    if let Ok(mut kubelets) = kubelets.lock() {
        kubelets.insert(name.to_owned(), kubelet);
    }
    Ok(())
}

async fn create_namespace(client: &Client, cluster: &str, name: &str) -> anyhow::Result<()> {
    let namespace: Namespace =
        serde_json::from_value(json!({"metadata": {"name": name, "labels": {CLUSTER_LABEL: cluster}}}))?;
    match Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(err) => return Err(err.into()),
    }
    Ok(())
}

/// Writes `copy` into its cluster: created once when `create_only`, kept in line otherwise.
async fn propagate(client: &Client, copy: &Deployment, create_only: bool) -> anyhow::Result<()> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), copy.metadata.namespace.as_deref().unwrap_or_default());
    if create_only {
        return match api.create(&PostParams::default(), copy).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
            Err(err) => Err(err.into()),
        };
    }
    api.patch(
        &copy.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(copy),
    )
    .await?;
    Ok(())
}

/// The workload object as a StatusCollector's `obj` sees it: without status.
fn obj_json(deployment: &Deployment) -> Json {
    let mut obj = serde_json::to_value(deployment).unwrap_or_default();
    if let Some(map) = obj.as_object_mut() {
        map.remove("status");
    }
    if let Some(meta) = obj.get_mut("metadata").and_then(Json::as_object_mut) {
        meta.remove("managedFields");
    }
    obj
}

/// One input row: what a StatusCollector's expressions see for one cluster.
fn row(cluster: &str, obj: &Json, copy: Option<&Deployment>) -> Json {
    let status = copy
        .and_then(|c| c.status.as_ref())
        .map(|s| serde_json::to_value(s).unwrap_or_default())
        .unwrap_or_else(|| json!({}));
    let generation = obj["metadata"]["generation"].as_i64().unwrap_or(0);
    json!({
        "inventory": {"name": cluster},
        "obj": obj,
        "returned": {"status": status},
        "propagation": {
            "lastGeneration": if copy.is_some() { generation } else { 0 },
            "lastGenerationIsApplied": copy.is_some_and(|c| c.status.as_ref().and_then(|s| s.observed_generation).is_some()),
        },
    })
}

fn bindings(row: &Json) -> Vec<(&'static str, &Json)> {
    COLLECTOR_VARIABLES.iter().map(|v| (*v, &row[*v])).collect()
}

/// A JSON value as a CombinedStatus column holds it.
pub fn to_value(json: &Json) -> Value {
    let mut value = Value::default();
    match json {
        Json::Null => value.type_ = "Null".into(),
        Json::Bool(b) => {
            value.type_ = "Bool".into();
            value.bool = Some(*b);
        }
        Json::Number(n) => return Value::number(n),
        Json::String(s) => return Value::string(s.clone()),
        Json::Object(map) => {
            value.type_ = "Object".into();
            value.object = Some(map.iter().map(|(k, v)| (k.clone(), v.clone())).collect());
        }
        Json::Array(items) => {
            value.type_ = "Array".into();
            value.array = Some(items.clone());
        }
    }
    value
}

/// A float64 as Go's `strconv.FormatFloat(v, 'g', -1, 64)` writes it, which is how KubeStellar
/// writes an aggregate: `2`, `0.5`, `1e+06`, `+Inf`, `NaN`.
pub fn format_float(v: f64) -> String {
    if v.is_nan() {
        return "NaN".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "+Inf" } else { "-Inf" }.into();
    }
    let sign = if v.is_sign_negative() { "-" } else { "" };
    if v == 0.0 {
        return format!("{sign}0");
    }
    // Rust's `{:e}` gives the shortest digits that round-trip, as Go's -1 precision does.
    let scientific = format!("{:e}", v.abs());
    let (mantissa, exponent) = scientific.split_once('e').unwrap_or((&scientific, "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    let digits = mantissa.replace('.', "");
    if !(-4..6).contains(&exponent) {
        let mantissa = if digits.len() > 1 {
            format!("{}.{}", &digits[..1], &digits[1..])
        } else {
            digits
        };
        let exponent_sign = if exponent < 0 { '-' } else { '+' };
        return format!("{sign}{mantissa}e{exponent_sign}{:02}", exponent.abs());
    }
    let point = exponent + 1;
    let fixed = if point <= 0 {
        format!("0.{}{digits}", "0".repeat(point.unsigned_abs() as usize))
    } else if point as usize >= digits.len() {
        format!("{digits}{}", "0".repeat(point as usize - digits.len()))
    } else {
        format!("{}.{}", &digits[..point as usize], &digits[point as usize..])
    };
    format!("{sign}{fixed}")
}

/// A subject's value as a number: numbers as they are, strings that parse as one; `None` for
/// anything else (an error KubeStellar reports, the row skipped).
fn as_number(json: &Json) -> Option<f64> {
    match json {
        Json::Number(n) => n.as_f64(),
        Json::String(s) => s.trim().parse().ok().or(Some(0.0)),
        _ => None,
    }
}

fn aggregate(kind: &str, subject: Option<&Expression>, rows: &[&Json]) -> Value {
    if kind == "COUNT" {
        return Value::number(format_float(rows.len() as f64));
    }
    let Some(subject) = subject else {
        return to_value(&Json::Null);
    };
    let values: Vec<f64> = rows
        .iter()
        .filter_map(|r| subject.evaluate(&bindings(r)).ok())
        .filter_map(|v| as_number(&v))
        .collect();
    let result = match kind {
        // Folded from +0 as Go sums: an empty sum is 0, not Rust's -0.
        "SUM" => values.iter().fold(0.0, |a, b| a + b),
        "AVG" if values.is_empty() => f64::NAN,
        "AVG" => values.iter().fold(0.0, |a, b| a + b) / values.len() as f64,
        "MIN" => values.iter().copied().fold(f64::INFINITY, f64::min),
        "MAX" => values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        _ => return to_value(&Json::Null),
    };
    Value::number(format_float(result))
}

/// What StatusCollector `name` makes of `rows`, as KubeStellar's SELECT: filter, then plain
/// selection or grouped aggregation, then the limit. An expression that does not compile
/// leaves the result without rows.
pub fn combine(name: &str, collector: &StatusCollectorSpec, rows: &[Json]) -> NamedStatusCombination {
    let compile = |source: &str| Expression::compile(source, &COLLECTOR_VARIABLES).ok();
    let aggregating = !collector.combined_fields.is_empty();
    let column_names: Vec<String> = if aggregating {
        collector
            .group_by
            .iter()
            .map(|g| g.name.clone())
            .chain(collector.combined_fields.iter().map(|f| f.name.clone()))
            .collect()
    } else {
        collector.select.iter().map(|s| s.name.clone()).collect()
    };
    let mut result = NamedStatusCombination {
        name: name.to_owned(),
        column_names,
        rows: vec![],
    };
    let filter = match collector.filter.as_deref().map(compile) {
        Some(None) => return result,
        Some(Some(filter)) => Some(filter),
        None => None,
    };
    let kept: Vec<&Json> = rows
        .iter()
        .filter(|r| {
            filter
                .as_ref()
                .is_none_or(|f| matches!(f.evaluate(&bindings(r)), Ok(Json::Bool(true))))
        })
        .collect();
    let limit = usize::try_from(collector.limit).unwrap_or(0);
    if !aggregating {
        let Some(select) = collector
            .select
            .iter()
            .map(|s| compile(&s.def))
            .collect::<Option<Vec<_>>>()
        else {
            return result;
        };
        if select.is_empty() {
            return result;
        }
        result.rows = kept
            .iter()
            .take(limit)
            .map(|r| StatusCombinationRow {
                columns: select
                    .iter()
                    .map(|e| to_value(&e.evaluate(&bindings(r)).unwrap_or(Json::Null)))
                    .collect(),
            })
            .collect();
        return result;
    }
    let Some(group_by) = collector
        .group_by
        .iter()
        .map(|g| compile(&g.def))
        .collect::<Option<Vec<_>>>()
    else {
        return result;
    };
    let Some(subjects) = collector
        .combined_fields
        .iter()
        .map(|f| f.subject.as_deref().map(compile).map_or(Some(None), |c| c.map(Some)))
        .collect::<Option<Vec<Option<Expression>>>>()
    else {
        return result;
    };
    // Groups in the order their first row comes; without groupBy, one group of every row.
    let mut groups: Vec<(Vec<Json>, Vec<&Json>)> = Vec::new();
    if group_by.is_empty() {
        groups.push((vec![], kept.clone()));
    } else {
        for r in &kept {
            let Ok(key) = group_by
                .iter()
                .map(|g| g.evaluate(&bindings(r)))
                .collect::<Result<Vec<_>, _>>()
            else {
                continue;
            };
            match groups.iter_mut().find(|(k, _)| *k == key) {
                Some((_, members)) => members.push(r),
                None => groups.push((key, vec![r])),
            }
        }
    }
    result.rows = groups
        .iter()
        .take(limit)
        .map(|(key, members)| StatusCombinationRow {
            columns: key
                .iter()
                .map(to_value)
                .chain(
                    collector
                        .combined_fields
                        .iter()
                        .zip(&subjects)
                        .map(|(f, s)| aggregate(&f.type_, s.as_ref(), members)),
                )
                .collect(),
        })
        .collect();
    result
}

/// The BindingPolicies in force: one being deleted binds nothing any more.
async fn binding_policies(client: &Client) -> anyhow::Result<Vec<BindingPolicy>> {
    let mut bps = Api::<BindingPolicy>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items;
    bps.retain(|bp| bp.metadata.deletion_timestamp.is_none());
    Ok(bps)
}

/// The inventory's clusters and every Deployment (workloads and clusters' copies).
async fn clusters_and_deployments(client: &Client) -> anyhow::Result<(Vec<ConfigMap>, Vec<Deployment>)> {
    let clusters = Api::<ConfigMap>::namespaced(client.clone(), INVENTORY_NAMESPACE)
        .list(&ListParams::default().labels(&format!("{INVENTORY_LABEL}=cluster")))
        .await?
        .items;
    let deployments = Api::<Deployment>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items;
    Ok((clusters, deployments))
}

async fn pass(client: &Client, kubelets: Option<&Kubelets>, written: &mut Written) -> anyhow::Result<()> {
    let bps = binding_policies(client).await?;
    let (clusters, deployments) = clusters_and_deployments(client).await?;
    let collectors: HashMap<String, StatusCollectorSpec> = Api::<StatusCollector>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .map(|c| (c.name_any(), c.spec))
        .collect();
    let existing: HashMap<(String, String), CombinedStatus> = Api::<CombinedStatus>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .map(|cs| ((cs.namespace().unwrap_or_default(), cs.name_any()), cs))
        .collect();
    let copies: HashMap<(String, String), &Deployment> = deployments
        .iter()
        .filter(|d| is_copy(d))
        .map(|d| ((d.namespace().unwrap_or_default(), d.name_any()), d))
        .collect();
    let bindings_api: Api<Binding> = Api::all(client.clone());
    let apply = PatchParams::apply(MANAGER).force();
    let mut wanted_statuses = HashSet::new();
    let mut wanted_copies = HashSet::new();
    // One object's failure (its namespace being deleted, say) does not hold up the others, nor
    // the collection of what is no longer wanted; the first is returned for a retry.
    let mut failed: Option<anyhow::Error> = None;
    macro_rules! attempt {
        ($what:expr) => {
            if let Err(err) = $what.await {
                let err = anyhow::Error::from(err);
                tracing::debug!(error = %err, "KubeStellar simulator step failed");
                failed.get_or_insert(err);
                continue;
            }
        };
    }
    for bp in &bps {
        let spec = resolve(bp, &clusters, &deployments);
        let mut binding = Binding::new(&bp.name_any(), spec.clone());
        binding.metadata.owner_references = bp.controller_owner_ref(&()).map(|mut o| {
            o.controller = Some(false);
            vec![o]
        });
        attempt!(bindings_api.patch(&bp.name_any(), &apply, &Patch::Apply(&binding)));
        for clause in &spec.workload.namespace_scope {
            let namespace = clause.namespace.clone().unwrap_or_default();
            let Some(deployment) = deployments
                .iter()
                .find(|d| !is_copy(d) && d.name_any() == clause.name && d.namespace().as_deref() == Some(&namespace))
            else {
                continue;
            };
            let obj = obj_json(deployment);
            let mut rows = Vec::new();
            for destination in &spec.destinations {
                let cluster = &destination.cluster_id;
                let copy_namespace = cluster_namespace(cluster, &namespace);
                wanted_copies.insert((copy_namespace.clone(), clause.name.clone()));
                attempt!(ensure_cluster_namespace(client, kubelets, cluster, &copy_namespace));
                attempt!(propagate(client, &copy_for(deployment, cluster), clause.create_only));
                rows.push(row(
                    cluster,
                    &obj,
                    copies.get(&(copy_namespace, clause.name.clone())).copied(),
                ));
            }
            if clause.status_collectors.is_empty() {
                continue;
            }
            let name = combined_status_name(&deployment.uid().unwrap_or_default(), &bp.uid().unwrap_or_default());
            wanted_statuses.insert((namespace.clone(), name.clone()));
            let results: Vec<NamedStatusCombination> = clause
                .status_collectors
                .iter()
                .filter_map(|c| collectors.get(c).map(|spec| combine(c, spec, &rows)))
                .collect();
            let key = (namespace.clone(), name.clone());
            if existing
                .get(&key)
                .is_some_and(|cs| cs.spec.results == results || written.get(&key) == Some(&results))
            {
                continue;
            }
            let mut status = CombinedStatus::new(&name, CombinedStatusFields { results });
            status.metadata.namespace = Some(namespace.clone());
            status.metadata.labels = Some(
                [
                    (labels::API_GROUP, clause.group.as_str()),
                    (labels::RESOURCE, clause.resource.as_str()),
                    (labels::NAMESPACE, namespace.as_str()),
                    (labels::NAME, clause.name.as_str()),
                    (labels::BINDING_POLICY, bp.name_any().as_str()),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            );
            attempt!(Api::<CombinedStatus>::namespaced(client.clone(), &namespace).patch(
                &name,
                &apply,
                &Patch::Apply(&status)
            ));
            written.insert(key, status.spec.results);
        }
    }
    collect_copies(client, &copies, &wanted_copies).await?;
    collect_statuses(client, existing, &wanted_statuses).await?;
    failed.map_or(Ok(()), Err)
}

/// Deletes copies no BindingPolicy binds any more. Checked afresh first: a BindingPolicy
/// created since this pass listed (by a test running alongside) keeps its copies.
async fn collect_copies(
    client: &Client,
    copies: &HashMap<(String, String), &Deployment>,
    wanted: &HashSet<(String, String)>,
) -> anyhow::Result<()> {
    let stale: Vec<&(String, String)> = copies.keys().filter(|k| !wanted.contains(*k)).collect();
    if stale.is_empty() {
        return Ok(());
    }
    let bps = binding_policies(client).await?;
    let (clusters, deployments) = clusters_and_deployments(client).await?;
    let mut still_wanted = HashSet::new();
    for bp in &bps {
        let spec = resolve(bp, &clusters, &deployments);
        for clause in &spec.workload.namespace_scope {
            for destination in &spec.destinations {
                let namespace =
                    cluster_namespace(&destination.cluster_id, clause.namespace.as_deref().unwrap_or_default());
                still_wanted.insert((namespace, clause.name.clone()));
            }
        }
    }
    for (namespace, name) in stale {
        if still_wanted.contains(&(namespace.clone(), name.clone())) {
            continue;
        }
        let api: Api<Deployment> = Api::namespaced(client.clone(), namespace);
        let _ = api.delete(name, &DeleteParams::background()).await;
    }
    Ok(())
}

/// Deletes the CombinedStatuses of BindingPolicies that are gone. Checked afresh: a
/// BindingPolicy created since this pass listed keeps its statuses.
async fn collect_statuses(
    client: &Client,
    existing: HashMap<(String, String), CombinedStatus>,
    wanted: &HashSet<(String, String)>,
) -> anyhow::Result<()> {
    let bp_api: Api<BindingPolicy> = Api::all(client.clone());
    for (key, status) in existing {
        if wanted.contains(&key) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_are_written_as_go_writes_them() {
        for (v, text) in [
            (2.0, "2"),
            (0.5, "0.5"),
            (-1.25, "-1.25"),
            (123_456.0, "123456"),
            (1e6, "1e+06"),
            (1_234_567.0, "1.234567e+06"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (f64::INFINITY, "+Inf"),
            (f64::NEG_INFINITY, "-Inf"),
            (f64::NAN, "NaN"),
            (0.0, "0"),
        ] {
            assert_eq!(format_float(v), text, "{v}");
        }
    }

    fn rows() -> Vec<Json> {
        let obj = json!({"metadata": {"name": "nginx", "generation": 1}, "spec": {"replicas": 2}});
        [("a", json!({"readyReplicas": 2, "phase": "x"})), ("b", json!({"readyReplicas": 1, "phase": "x"})), ("c", json!({"phase": "y"}))]
            .iter()
            .map(|(cluster, status)| {
                json!({"inventory": {"name": cluster}, "obj": obj, "returned": {"status": status}, "propagation": {}})
            })
            .collect()
    }

    fn collector(spec: Json) -> StatusCollectorSpec {
        serde_json::from_value(spec).unwrap()
    }

    fn cells(result: &NamedStatusCombination) -> Vec<Vec<String>> {
        result
            .rows
            .iter()
            .map(|r| {
                r.columns
                    .iter()
                    .map(|c| c.float.clone().or(c.string.clone()).unwrap_or(c.type_.clone()))
                    .collect()
            })
            .collect()
    }

    #[test]
    fn the_deployments_aggregator_counts_the_clusters_where_the_deployment_is_ready() {
        let result = combine(DEPLOYMENTS_AGGREGATOR, &deployments_aggregator().spec, &rows());
        assert_eq!(result.column_names, ["ready"]);
        assert_eq!(cells(&result), [["1"]]);
        assert_eq!(cells(&combine("x", &deployments_aggregator().spec, &[])), [["0"]]);
    }

    #[test]
    fn select_filter_group_by_aggregates_and_limit() {
        let select = collector(
            json!({"filter": "has(returned.status.readyReplicas)", "select": [{"name": "wec", "def": "inventory.name"}, {"name": "ready", "def": "returned.status.readyReplicas"}], "limit": 1}),
        );
        assert_eq!(cells(&combine("s", &select, &rows())), [["a", "2"]]);
        let grouped = collector(
            json!({"groupBy": [{"name": "phase", "def": "returned.status.phase"}], "combinedFields": [
            {"name": "n", "type": "COUNT"},
            {"name": "sum", "type": "SUM", "subject": "has(returned.status.readyReplicas) ? returned.status.readyReplicas : 0"},
            {"name": "avg", "type": "AVG", "subject": "has(returned.status.readyReplicas) ? returned.status.readyReplicas : 0"},
            {"name": "min", "type": "MIN", "subject": "obj.spec.replicas"},
            {"name": "max", "type": "MAX", "subject": "'7'"}], "limit": 20}),
        );
        let result = combine("g", &grouped, &rows());
        assert_eq!(result.column_names, ["phase", "n", "sum", "avg", "min", "max"]);
        assert_eq!(
            cells(&result),
            [["x", "2", "3", "1.5", "2", "7"], ["y", "1", "0", "0", "2", "7"]]
        );
        // Over no rows, KubeStellar's identities: 0, 0, NaN, +Inf, -Inf.
        let empty = collector(json!({"filter": "false", "combinedFields": [
            {"name": "n", "type": "COUNT"}, {"name": "sum", "type": "SUM", "subject": "2"}, {"name": "avg", "type": "AVG", "subject": "2"},
            {"name": "min", "type": "MIN", "subject": "2"}, {"name": "max", "type": "MAX", "subject": "2"}], "limit": 20}));
        assert_eq!(
            cells(&combine("e", &empty, &rows())),
            [["0", "0", "NaN", "+Inf", "-Inf"]]
        );
        let broken = collector(
            json!({"filter": "returned.status.(", "select": [{"name": "wec", "def": "inventory.name"}], "limit": 20}),
        );
        assert!(combine("b", &broken, &rows()).rows.is_empty());
    }
}
