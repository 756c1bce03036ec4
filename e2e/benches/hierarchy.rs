//! hierarchy-executor building many Project trees from templates on one real control plane
//! (kube-controller-manager runs the Deployments, the pod simulator plays the kubelet).
//! Prints figures; asserts nothing (it is not a test).
//!
//! - time from creating every Project to every Project Ready (each Ready only once its
//!   Applications' pods are);
//! - API writes the executor sent to get there, per hierarchy resource and per object made;
//! - RSS of the executor holding the converged trees;
//! - API writes per minute once converged;
//! - time to repair drift: every VirtualCluster's quota and every version's Service deleted
//!   by hand at once, until all are back.
//!
//! The executor runs as its release binary (`just bench` builds it) with default settings.

// A benchmark that cannot proceed should stop right there, with the error.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crd_types::common::{CONDITION_READY, find_condition};
use crd_types::hierarchy::Project;
use gateway_api::httproutes::HttpRoute;
use k8s_openapi::api::core::v1::{ResourceQuota, Service};
use kube::Api;
use kube::api::{DeleteParams, ListParams, PostParams};
use orrery_e2e::bench::{Controller, control_plane, env_usize, invoked_as_benchmark};
use orrery_e2e::pod_simulator::PodSimulator;
use serde_json::json;

fn project(i: usize, virtual_clusters: usize, applications: usize) -> Project {
    let name = format!("p{i}");
    let vcs: Vec<_> = (0..virtual_clusters)
        .map(|v| json!({"name": format!("{name}-vc{v}"), "spec": {"quota": {"pods": "20"}}}))
        .collect();
    let apps: Vec<_> = (0..virtual_clusters)
        .flat_map(|v| (0..applications).map(move |a| (v, a)))
        .map(|(v, a)| {
            json!({"name": format!("{name}-vc{v}-a{a}"), "namespace": format!("{name}-vc{v}"), "spec": {
                "virtualCluster": format!("{name}-vc{v}"),
                "versions": [{"name": "v1", "image": "app:1"}],
                "route": {"gateway": "public"},
            }})
        })
        .collect();
    serde_json::from_value(json!({"metadata": {"name": name}, "spec": {"templates": {
        "clusters": [{"name": format!("{name}-local"), "spec": {"executor": {"name": "default", "parameters": {"installGatewayAPI": true}}}}],
        "virtualClusters": vcs,
        "applications": apps,
    }}}))
    .unwrap()
}

/// How many Projects are Ready, and the reasons of those that are not (with their counts).
async fn ready_projects(projects: &Api<Project>) -> (usize, BTreeMap<String, usize>) {
    let mut reasons = BTreeMap::new();
    let Ok(list) = projects.list(&Default::default()).await else {
        return (0, reasons);
    };
    let mut ready = 0;
    for project in &list.items {
        match project
            .status
            .as_ref()
            .and_then(|s| find_condition(&s.conditions, CONDITION_READY))
        {
            Some(c) if c.status == "True" => ready += 1,
            Some(c) => *reasons.entry(c.reason.clone()).or_default() += 1,
            None => *reasons.entry("(no status yet)".to_owned()).or_default() += 1,
        }
    }
    (ready, reasons)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if !invoked_as_benchmark() {
        println!("hierarchy benchmark: run it with `just bench`");
        return Ok(());
    }
    let count = env_usize("ORRERY_BENCH_PROJECTS", 100);
    let virtual_clusters = env_usize("ORRERY_BENCH_VIRTUAL_CLUSTERS", 5);
    let applications = env_usize("ORRERY_BENCH_APPLICATIONS", 4);
    let at_rest = Duration::from_secs(env_usize("ORRERY_BENCH_REST_SECONDS", 60) as u64);

    let (plane, client) = control_plane().await?;
    let _kubelet = PodSimulator::start(client.clone(), None).await?;
    let controller = Controller::start("hierarchy-executor", &plane, None)?;

    let resources = count * (2 + virtual_clusters * (1 + applications));
    // Per VirtualCluster a namespace and a quota; per Application a Deployment, its Service,
    // the stable Service and the HTTPRoute.
    let made = count * virtual_clusters * (2 + applications * 4);
    println!(
        "\n{count} Projects × {virtual_clusters} VirtualClusters × {applications} Applications (one version each): \
         {resources} hierarchy resources, {made} objects to make"
    );
    let projects: Api<Project> = Api::all(client.clone());
    let start = Instant::now();
    for i in 0..count {
        projects
            .create(&PostParams::default(), &project(i, virtual_clusters, applications))
            .await?;
    }
    let routes: Api<HttpRoute> = Api::all(client.clone());
    let wanted_routes = count * virtual_clusters * applications;
    let mut all_made = None;
    let mut last_report = Instant::now();
    loop {
        if all_made.is_none() {
            let made = routes
                .list_metadata(&Default::default())
                .await
                .map_or(0, |l| l.items.len());
            if made == wanted_routes {
                all_made = Some(start.elapsed());
            }
        }
        let (ready, reasons) = ready_projects(&projects).await;
        if ready == count {
            break;
        }
        anyhow::ensure!(!reasons.contains_key("InvalidTemplates"), "the templates are wrong");
        if last_report.elapsed() > Duration::from_secs(15) {
            println!(
                "  {:5.0}s: {ready}/{count} Projects Ready; not yet: {reasons:?}",
                start.elapsed().as_secs_f64()
            );
            last_report = Instant::now();
        }
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(1800),
            "not all Ready after 30 min"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let all_ready = start.elapsed();
    let writes = controller.writes();
    if let Some(made) = all_made {
        println!(
            "  every Application's objects made (the last HTTPRoute seen) {:.1}s after the first Project was created",
            made.as_secs_f64()
        );
    }
    println!(
        "  every Project Ready {:.1}s after the first was created (pods made by kube-controller-manager at its \
         default 20 requests/s, played by the pod simulator)",
        all_ready.as_secs_f64()
    );
    println!(
        "  API writes by the executor until then: {writes} ({:.1} per hierarchy resource, {:.1} per object made)",
        writes / resources as f64,
        writes / made as f64
    );

    let mut by_method: Vec<(String, f64)> = controller.requests().into_iter().filter(|(m, _)| m != "GET").collect();
    by_method.sort_by(|a, b| a.0.cmp(&b.0));
    println!("  by method: {by_method:?} (POST: Events and creations; PATCH: applies, status, finalizers)");
    let settled = controller
        .settle(Duration::from_secs(5), Duration::from_secs(600))
        .await?;
    println!(
        "  it stopped writing {:.1}s later; {} writes in all",
        settled.as_secs_f64(),
        controller.writes()
    );
    controller
        .report_at_rest("hierarchy-executor", "the converged trees", at_rest)
        .await;
    repair(&client, count, virtual_clusters, applications).await
}

/// Deletes every quota and every version's Service by hand, and prints how long the executor
/// takes to put all of them back.
async fn repair(
    client: &kube::Client,
    count: usize,
    virtual_clusters: usize,
    applications: usize,
) -> anyhow::Result<()> {
    let owned = ListParams::default().labels(crd_types::hierarchy::OWNER_LABEL);
    let quotas: Api<ResourceQuota> = Api::all(client.clone());
    let services: Api<Service> = Api::all(client.clone());
    let (quotas_wanted, services_wanted) = (count * virtual_clusters, count * virtual_clusters * applications * 2);
    let start = Instant::now();
    for i in 0..count {
        for v in 0..virtual_clusters {
            let namespace = format!("p{i}-vc{v}");
            Api::<ResourceQuota>::namespaced(client.clone(), &namespace)
                .delete("orrery-quota", &DeleteParams::default())
                .await?;
            let services = Api::<Service>::namespaced(client.clone(), &namespace);
            for a in 0..applications {
                services
                    .delete(&format!("p{i}-vc{v}-a{a}-v1"), &DeleteParams::default())
                    .await?;
            }
        }
    }
    let deleting = start.elapsed();
    loop {
        let quotas_there = quotas.list_metadata(&owned).await.map_or(0, |l| l.items.len());
        let services_there = services.list_metadata(&owned).await.map_or(0, |l| l.items.len());
        if quotas_there == quotas_wanted && services_there == services_wanted {
            break;
        }
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(600),
            "after 10 min, {quotas_there}/{quotas_wanted} quotas and {services_there}/{services_wanted} Services"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "  drift: {} quotas and {} Services deleted by hand (taking {:.1}s to delete): all back {:.1}s after the \
         first deletion",
        count * virtual_clusters,
        count * virtual_clusters * applications,
        deleting.as_secs_f64(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
