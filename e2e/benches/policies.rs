//! policy-runner with many Applications, each with a three-policy pipeline (canary →
//! health-gate → weight-cap), beside hierarchy-executor rendering the results into
//! HTTPRoutes, on one real control plane. Prints figures; asserts nothing (it is not a test).
//!
//! - pipeline evaluations per second of the pure core (in this process, one thread);
//! - reconciles per second while every pipeline starts at once;
//! - latency from an observed change (a canary Deployment's ready count dropping to 0) to the
//!   new weights in the HTTPRoute (the executor sees it, the health gate rolls back, the
//!   executor renders it), p50/p99, over `ORRERY_BENCH_CHANGES` changes at
//!   `ORRERY_BENCH_CHANGES_PER_SECOND`;
//! - RSS of policy-runner holding the Applications; its API writes once nothing changes.
//!
//! No kube-controller-manager runs: the benchmark writes the Deployments' status itself
//! (`readyReplicas`, `observedGeneration`, as the Deployment controller would once its pods
//! are ready), so the figures are the controllers' and not the pod pipeline's.

// A benchmark that cannot proceed should stop right there, with the error.
#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crd_types::hierarchy::Application;
use futures::StreamExt;
use gateway_api::httproutes::HttpRoute;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use orrery_e2e::ControlPlane;
use orrery_e2e::bench::{Controller, env_usize, invoked_as_benchmark, percentiles, wait_for};
use policy_runner::pipeline::{Outside, plan};
use policy_runner::policy::{Answer, Request};
use policy_runner::registry::Registry;
use serde_json::json;

const NAMESPACE: &str = "bench";

fn pipeline() -> serde_json::Value {
    json!([
        {"name": "canary", "parameters": {"stepWeight": 10, "maxWeight": 50, "interval": "1h"}},
        {"name": "health-gate"},
        {"name": "weight-cap", "parameters": {"maxWeight": 30}},
    ])
}

fn application(i: usize) -> Application {
    serde_json::from_value(
        json!({"metadata": {"name": format!("app{i}"), "namespace": NAMESPACE}, "spec": {
            "virtualCluster": NAMESPACE,
            "versions": [{"name": "v1", "image": "app:1"}, {"name": "v2", "image": "app:2"}],
            "route": {"gateway": "public"},
            "policies": pipeline(),
        }}),
    )
    .unwrap()
}

/// The pure core's speed: `plan` over `count` Applications whose versions are ready, repeated.
fn evaluations_per_second(count: usize) -> f64 {
    struct Nothing;
    impl Outside for Nothing {
        async fn fetch(&self, _: Request) -> Answer {
            Err("nothing outside".into())
        }
    }
    let apps: Vec<Application> = (0..count)
        .map(|i| {
            let mut app = application(i);
            app.metadata.generation = Some(1);
            app.status = serde_json::from_value(json!({"observedGeneration": 1,
                "weights": [{"version": "v1", "weight": 100}],
                "versions": [{"name": "v1", "replicas": 1, "readyReplicas": 1}, {"name": "v2", "replicas": 1, "readyReplicas": 1}]}))
            .unwrap();
            app
        })
        .collect();
    let registry = Registry::builtin();
    let start = Instant::now();
    let mut runs = 0usize;
    while start.elapsed() < Duration::from_secs(3) {
        for app in &apps {
            let planned = futures::executor::block_on(plan(app, &registry, jiff::Timestamp::now(), &Nothing));
            assert!(planned.is_some_and(|p| p.status.complete));
            runs += 1;
        }
    }
    runs as f64 / start.elapsed().as_secs_f64()
}

/// Plays the Deployment controller's status writes: every Deployment reports its replicas
/// ready, except those named in `unready`, which report none.
fn deployment_status(client: Client, unready: Arc<Mutex<HashSet<String>>>) {
    let deployments: Api<Deployment> = Api::namespaced(client, NAMESPACE);
    tokio::spawn(async move {
        let stream = watcher(deployments.clone(), watcher::Config::default())
            .default_backoff()
            .applied_objects();
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            if let Ok(deployment) = event {
                report(&deployments, &deployment, &unready).await;
            }
        }
    });
}

async fn report(deployments: &Api<Deployment>, deployment: &Deployment, unready: &Mutex<HashSet<String>>) {
    let name = deployment.name_any();
    let replicas = deployment.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let ready = if unready.lock().unwrap().contains(&name) {
        0
    } else {
        replicas
    };
    let status = deployment.status.clone().unwrap_or_default();
    if status.observed_generation == deployment.metadata.generation && status.ready_replicas.unwrap_or(0) == ready {
        return;
    }
    let patch = json!({"status": {"observedGeneration": deployment.metadata.generation, "replicas": replicas,
        "updatedReplicas": replicas, "readyReplicas": ready, "availableReplicas": ready}});
    let _ = deployments
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await;
}

/// The canary's weight in each Application's HTTPRoute, kept current by a watch.
fn canary_weights(client: Client) -> Arc<Mutex<HashMap<String, (i32, Instant)>>> {
    let weights = Arc::new(Mutex::new(HashMap::new()));
    let routes: Api<HttpRoute> = Api::namespaced(client, NAMESPACE);
    let shared = weights.clone();
    tokio::spawn(async move {
        // The HTTPRoute CRD appears once the Cluster executor installs it: until then the
        // watch fails and backs off.
        let stream = watcher(routes, watcher::Config::default())
            .default_backoff()
            .applied_objects();
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            let Ok(route) = event else { continue };
            let app = route.name_any();
            let canary = format!("{app}-v2");
            let weight: i32 = route
                .spec
                .rules
                .iter()
                .flatten()
                .flat_map(|r| r.backend_refs.iter().flatten())
                .filter(|b| b.name == canary)
                .map(|b| b.weight.unwrap_or(1))
                .sum();
            let mut weights = shared.lock().unwrap();
            if weights.get(&app).map(|(w, _)| *w) != Some(weight) {
                weights.insert(app, (weight, Instant::now()));
            }
        }
    });
    weights
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if !invoked_as_benchmark() {
        println!("policies benchmark: run it with `just bench`");
        return Ok(());
    }
    let count = env_usize("ORRERY_BENCH_APPLICATIONS", 1000);
    let changes = env_usize("ORRERY_BENCH_CHANGES", 200).min(count);
    let pace = env_usize("ORRERY_BENCH_CHANGES_PER_SECOND", 5);
    let at_rest = Duration::from_secs(env_usize("ORRERY_BENCH_REST_SECONDS", 60) as u64);

    println!(
        "pure core: {:.0} pipeline evaluations/s (canary → health-gate → weight-cap, one thread)",
        evaluations_per_second(count)
    );

    let plane = tokio::task::spawn_blocking(|| ControlPlane::start_with(false)).await??;
    plane.install_crds_blocking()?;
    let client = plane.client().await;
    println!(
        "control plane up in {:.1}s (kube-apiserver + etcd; Deployment status written by the benchmark)",
        plane.startup.as_secs_f64()
    );
    let unready = Arc::new(Mutex::new(HashSet::new()));
    deployment_status(client.clone(), unready.clone());
    let weights = canary_weights(client.clone());
    let executor = Controller::start("hierarchy-executor", &plane, None)?;
    let runner = Controller::start("policy-runner", &plane, None)?;

    let cluster = json!({"apiVersion": "hierarchy.orrery.dev/v1alpha1", "kind": "Cluster", "metadata": {"name": "local"},
        "spec": {"executor": {"name": "default", "parameters": {"installGatewayAPI": true}}}});
    Api::<crd_types::hierarchy::Cluster>::all(client.clone())
        .create(&PostParams::default(), &serde_json::from_value(cluster)?)
        .await?;
    let vc = json!({"metadata": {"name": NAMESPACE}, "spec": {"cluster": "local", "namespace": NAMESPACE}});
    Api::<crd_types::hierarchy::VirtualCluster>::all(client.clone())
        .create(&PostParams::default(), &serde_json::from_value(vc)?)
        .await?;
    let namespaces = Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone());
    let waiting = Instant::now();
    while namespaces.get_opt(NAMESPACE).await?.is_none() {
        anyhow::ensure!(waiting.elapsed() < Duration::from_secs(120), "no namespace {NAMESPACE}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    println!("\n{count} Applications, each v1 → v2 through canary → health-gate → weight-cap");
    let apps: Api<Application> = Api::namespaced(client.clone(), NAMESPACE);
    let start = Instant::now();
    let reconciles_before = runner.reconciles();
    for i in 0..count {
        apps.create(&PostParams::default(), &application(i)).await?;
    }
    wait_for(
        "every route at the canary's first step",
        Duration::from_secs(1200),
        || {
            let weights = weights.lock().unwrap();
            weights.len() == count && weights.values().all(|(w, _)| *w == 10)
        },
    )
    .await?;
    let stepped = start.elapsed();
    let reconciles = runner.reconciles() - reconciles_before;
    println!(
        "  every HTTPRoute at v2 10% {:.1}s after the first Application was created; policy-runner ran {reconciles} \
         reconciles ({:.0}/s) and sent {} writes",
        stepped.as_secs_f64(),
        reconciles / stepped.as_secs_f64(),
        runner.writes()
    );
    runner.settle(Duration::from_secs(5), Duration::from_secs(300)).await?;
    executor
        .settle(Duration::from_secs(5), Duration::from_secs(300))
        .await?;

    // Observed change → new weights: one canary Deployment after another loses its ready
    // replicas, at a steady pace; the health gate rolls each back.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NAMESPACE);
    let mut changed_at = HashMap::new();
    let storm = Instant::now();
    let reconciles_before = runner.reconciles();
    let executor_before = (executor.requests(), executor.throttled());
    for i in 0..changes {
        let name = format!("app{i}-v2");
        unready.lock().unwrap().insert(name.clone());
        let deployment = deployments.get(&name).await?;
        changed_at.insert(format!("app{i}"), Instant::now());
        report(&deployments, &deployment, &unready).await;
        let due = storm + Duration::from_secs_f64((i + 1) as f64 / pace as f64);
        tokio::time::sleep_until(due.into()).await;
    }
    wait_for("every changed route rolled back", Duration::from_secs(600), || {
        let weights = weights.lock().unwrap();
        changed_at.keys().all(|app| weights[app].0 == 0)
    })
    .await?;
    let storm_time = storm.elapsed();
    let latencies: Vec<f64> = {
        let weights = weights.lock().unwrap();
        changed_at
            .iter()
            .map(|(app, at)| weights[app].1.duration_since(*at).as_secs_f64() * 1000.0)
            .collect()
    };
    println!(
        "  Deployment unready → HTTPRoute rolled back ({changes} changes at {pace}/s): {}",
        percentiles(latencies)
    );
    println!(
        "  policy-runner: {:.0} reconciles/s over the {:.1}s of changes",
        (runner.reconciles() - reconciles_before) / storm_time.as_secs_f64(),
        storm_time.as_secs_f64()
    );
    let mut sent: Vec<(String, f64)> = executor
        .requests()
        .into_iter()
        .map(|(method, n)| {
            let before = executor_before.0.get(&method).copied().unwrap_or(0.0);
            (method, n - before)
        })
        .collect();
    sent.sort_by(|a, b| a.0.cmp(&b.0));
    println!(
        "  hierarchy-executor meanwhile: requests {sent:?}, {} delayed by its client-side rate limit",
        executor.throttled() - executor_before.1
    );

    runner.settle(Duration::from_secs(5), Duration::from_secs(300)).await?;
    executor
        .settle(Duration::from_secs(5), Duration::from_secs(300))
        .await?;
    runner
        .report_at_rest("policy-runner", &format!("{count} Applications' pipelines"), at_rest)
        .await;
    println!(
        "memory (VmRSS) of hierarchy-executor beside it: {:.1} MiB",
        executor.rss_mib()
    );
    Ok(())
}
