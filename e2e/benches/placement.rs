//! staged-binding with many StagedBindingPolicies on one real control plane, the KubeStellar
//! simulator playing KubeStellar. Prints figures; asserts nothing (it is not a test).
//!
//! - stage-advance latency: from just before the CombinedStatus write that makes a stage's
//!   condition true to the next stage's BindingPolicy seen by a watch, for every policy and
//!   both advances of its three stages (writes paced at a steady rate, once the controller has
//!   caught up with the stage's Bindings and CombinedStatuses);
//! - RSS of the controller holding every policy, BindingPolicy, Binding and CombinedStatus;
//! - API writes per minute while nothing happens.
//!
//! The controller runs as its release binary (`just bench` builds it) with default settings.

// A benchmark that cannot proceed should stop right there, with the error.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crd_types::kubestellar::{BindingPolicy, CombinedStatus, combined_status_labels};
use crd_types::placement::StagedBindingPolicy;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, watcher};
use kube::{Api, Client, ResourceExt};
use orrery_e2e::bench::{Controller, control_plane, env_usize, invoked_as_benchmark, percentiles, wait_for};
use orrery_e2e::kubestellar_simulator::{INVENTORY_LABEL, INVENTORY_NAMESPACE, KubeStellarSimulator};
use serde_json::json;

const NAMESPACE: &str = "bench";
const STAGES: [&str; 3] = ["dev", "test", "prod"];
/// The seed's condition: the deployments-aggregator reports 1.
const CONDITION: &str = "combinedStatus.results.exists(r, r.name == 'deployments-aggregator' && r.rows.exists(row, row.columns.exists(col, col.type == 'Number' && col.float == '1')))";

/// When this process first saw things happen, from one watch per kind.
#[derive(Default)]
struct Seen {
    /// BindingPolicy name → first seen.
    binding_policies: HashMap<String, Instant>,
    /// BindingPolicy name → its CombinedStatus (namespace, name).
    combined_statuses: HashMap<String, String>,
}

fn observe(client: Client, seen: Arc<Mutex<Seen>>) {
    let bps: Api<BindingPolicy> = Api::all(client.clone());
    let seen_bps = seen.clone();
    tokio::spawn(async move {
        let mut stream = watcher(bps, watcher::Config::default())
            .default_backoff()
            .applied_objects()
            .boxed();
        while let Some(Ok(bp)) = stream.next().await {
            let now = Instant::now();
            seen_bps
                .lock()
                .unwrap()
                .binding_policies
                .entry(bp.name_any())
                .or_insert(now);
        }
    });
    let statuses: Api<CombinedStatus> = Api::namespaced(client, NAMESPACE);
    tokio::spawn(async move {
        let mut stream = watcher(statuses, watcher::Config::default())
            .default_backoff()
            .applied_objects()
            .boxed();
        while let Some(Ok(status)) = stream.next().await {
            if let Some(bp) = status.labels().get(combined_status_labels::BINDING_POLICY) {
                seen.lock()
                    .unwrap()
                    .combined_statuses
                    .insert(bp.clone(), status.name_any());
            }
        }
    });
}

fn policy(name: &str) -> StagedBindingPolicy {
    let stages: Vec<_> = STAGES
        .iter()
        .enumerate()
        .map(|(i, stage)| {
            let mut stage = json!({"name": stage, "clusterSelectors": [{"matchLabels": {"env": stage}}]});
            if i + 1 < STAGES.len() {
                stage["filter"] = json!("downsyncClause.resource == \"deployments\"");
                stage["condition"] = json!(CONDITION);
            }
            stage
        })
        .collect();
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "downsync": [{"statusCollectors": ["deployments-aggregator"], "objectSelectors": [{"matchLabels": {"app.kubernetes.io/name": "bench-nginx"}}]}],
            "stages": stages,
        }
    }))
    .unwrap()
}

/// The world KubeStellar would see: a cluster per stage and one workload Deployment that
/// every policy places.
async fn world(client: &Client) -> anyhow::Result<()> {
    for namespace in [NAMESPACE, INVENTORY_NAMESPACE] {
        let namespace: Namespace = serde_json::from_value(json!({"metadata": {"name": namespace}}))?;
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &namespace)
            .await?;
    }
    for stage in STAGES {
        let cluster: ConfigMap = serde_json::from_value(
            json!({"metadata": {"name": format!("{stage}1"), "labels": {INVENTORY_LABEL: "cluster", "env": stage}}}),
        )?;
        Api::<ConfigMap>::namespaced(client.clone(), INVENTORY_NAMESPACE)
            .create(&PostParams::default(), &cluster)
            .await?;
    }
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "nginx", "labels": {"app.kubernetes.io/name": "bench-nginx"}},
        "spec": {"selector": {"matchLabels": {"app": "nginx"}}, "template": {"metadata": {"labels": {"app": "nginx"}}, "spec": {"containers": [{"name": "nginx", "image": "nginx"}]}}}
    }))?;
    Api::<Deployment>::namespaced(client.clone(), NAMESPACE)
        .create(&PostParams::default(), &deployment)
        .await?;
    Ok(())
}

/// Advances every policy from `stage` to the next: once every policy's CombinedStatus for
/// `stage` exists, writes the row that fulfils it, paced at `rate`/s, and returns each
/// policy's latency to the next BindingPolicy, in milliseconds.
async fn advance(
    client: &Client,
    controller: &Controller,
    seen: &Arc<Mutex<Seen>>,
    policies: usize,
    stage: usize,
    rate: f64,
) -> anyhow::Result<Vec<f64>> {
    let bp = |i: usize, stage: usize| staged_binding::plan::binding_policy_name(&format!("p-{i}"), STAGES[stage]);
    let waited = wait_for(
        &format!("every CombinedStatus of stage {}", STAGES[stage]),
        Duration::from_secs(900),
        || {
            let seen = seen.lock().unwrap();
            (0..policies).all(|i| seen.combined_statuses.contains_key(&bp(i, stage)))
        },
    )
    .await?;
    let settled = controller
        .settle(Duration::from_secs(2), Duration::from_secs(300))
        .await?;
    println!(
        "  stage {}: the simulator resolved every Binding and CombinedStatus in {:.1}s, the controller settled {:.1}s later",
        STAGES[stage],
        waited.as_secs_f64(),
        settled.as_secs_f64()
    );
    let statuses: Api<CombinedStatus> = Api::namespaced(client.clone(), NAMESPACE);
    let fulfilled = json!({"results": [{"name": "deployments-aggregator", "columnNames": ["value"], "rows": [{"columns": [{"type": "Number", "float": "1"}]}]}]});
    let interval = Duration::from_secs_f64(1.0 / rate);
    let started = tokio::time::Instant::now();
    let mut written = HashMap::new();
    for i in 0..policies {
        tokio::time::sleep_until(started + interval * i as u32).await;
        let name = seen.lock().unwrap().combined_statuses[&bp(i, stage)].clone();
        written.insert(bp(i, stage + 1), Instant::now());
        statuses
            .patch(&name, &PatchParams::default(), &Patch::Merge(&fulfilled))
            .await?;
    }
    wait_for(
        &format!("every stage {} BindingPolicy", STAGES[stage + 1]),
        Duration::from_secs(600),
        || {
            let seen = seen.lock().unwrap();
            written.keys().all(|bp| seen.binding_policies.contains_key(bp))
        },
    )
    .await?;
    let seen = seen.lock().unwrap();
    Ok(written
        .iter()
        .map(|(bp, at)| seen.binding_policies[bp].duration_since(*at).as_secs_f64() * 1000.0)
        .collect())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if !invoked_as_benchmark() {
        println!("placement benchmark: run it with `just bench`");
        return Ok(());
    }
    let policies = env_usize("ORRERY_BENCH_POLICIES", 1000);
    let rate = env_usize("ORRERY_BENCH_RATE", 20) as f64;
    let at_rest = Duration::from_secs(env_usize("ORRERY_BENCH_REST_SECONDS", 60) as u64);

    let (plane, client) = control_plane().await?;
    world(&client).await?;
    let _kubestellar = KubeStellarSimulator::start(client.clone()).await?;
    let seen = Arc::new(Mutex::new(Seen::default()));
    observe(client.clone(), seen.clone());
    let controller = Controller::start("staged-binding", &plane, None)?;

    let sbps: Api<StagedBindingPolicy> = Api::all(client.clone());
    for i in 0..policies {
        sbps.create(&PostParams::default(), &policy(&format!("p-{i}"))).await?;
    }
    println!(
        "\n{policies} StagedBindingPolicies of {} stages, advances written at {rate}/s",
        STAGES.len()
    );
    let mut latency = Vec::new();
    for stage in 0..STAGES.len() - 1 {
        latency.extend(advance(&client, &controller, &seen, policies, stage, rate).await?);
    }
    println!(
        "  stage advance, CombinedStatus write → next BindingPolicy seen: {}",
        percentiles(latency)
    );

    // Every policy is complete; let the simulator's last passes settle, then count.
    tokio::time::sleep(Duration::from_secs(10)).await;
    controller
        .report_at_rest("staged-binding", "every object", at_rest)
        .await;
    Ok(())
}
