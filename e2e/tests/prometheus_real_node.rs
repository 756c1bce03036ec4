//! Prometheus scrapes the controllers where they run: the Helm chart on the real node (as
//! `chart_real_node.rs` installs it), and the Prometheus `e2e/` runs, on the host, finding the
//! controllers' pods through Kubernetes service discovery (the API server's address, a
//! ServiceAccount token allowed to list pods, the cluster's CA) and the chart's
//! `prometheus.io/*` annotations, then scraping `/metrics` at each pod's IP on the node's
//! bridge. The test reads a reconcile counter through Prometheus's query API and checks it
//! against what the pods serve. A test binary of its own: the chart's controllers watch every
//! namespace, so no other test shares their node.

// A test that cannot proceed should stop right there, with the error.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use crd_types::workflow::{Task, TaskRun};
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::Api;
use kube::api::{ListParams, PostParams};
use orrery_e2e::helm::{self, CONTROLLERS};
use orrery_e2e::node::BUSYBOX_IMAGE;
use orrery_e2e::prometheus::Prometheus;
use orrery_e2e::{Deadline, TestEnv, create, poll_until};
use serde_json::json;

/// The sum of every `orrery_reconcile_total` series the pods labelled `app` serve on
/// `/metrics`, fetched from the host at their IPs (pods of the node's bridge are routed).
async fn reconciles_served(pods: &Api<Pod>, app: &str) -> Result<f64, String> {
    let list = pods
        .list(&ListParams::default().labels(&format!("app.kubernetes.io/name={app}")))
        .await
        .map_err(|e| e.to_string())?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .map_err(|e| e.to_string())?;
    let mut total = 0.0;
    for pod in list.items {
        let ip = pod.status.and_then(|s| s.pod_ip).ok_or("a pod without an IP")?;
        let text = http
            .get(format!("http://{ip}:8080/metrics"))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| e.to_string())?
            .text()
            .await
            .map_err(|e| e.to_string())?;
        total += text
            .lines()
            .filter(|l| l.starts_with("orrery_reconcile_total{"))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum::<f64>();
    }
    Ok(total)
}

#[tokio::test]
async fn prometheus_discovers_the_controllers_pods_and_scrapes_their_reconciles() {
    let Some(images) = helm::controller_images() else {
        return;
    };
    let Some(env) = TestEnv::with_node().await else { return };
    helm::install_on_node(env.plane(), &env.client, &images).await.unwrap();
    let namespace = helm::NAMESPACE;

    // Prometheus's own identity: a ServiceAccount that may list and watch the controllers'
    // pods, and a token for it.
    create(
        &env.namespaced::<ServiceAccount>(),
        json!({"metadata": {"name": "prometheus"}}),
    )
    .await;
    create(
        &Api::<Role>::namespaced(env.client.clone(), namespace),
        json!({"metadata": {"name": "prometheus"},
               "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]}),
    )
    .await;
    create(
        &Api::<RoleBinding>::namespaced(env.client.clone(), namespace),
        json!({"metadata": {"name": "prometheus"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "prometheus"},
               "subjects": [{"kind": "ServiceAccount", "name": "prometheus", "namespace": env.namespace}]}),
    )
    .await;
    let token = env
        .namespaced::<ServiceAccount>()
        .create_token_request(
            "prometheus",
            &PostParams::default(),
            &serde_json::from_value::<TokenRequest>(json!({"spec": {"audiences": []}})).unwrap(),
        )
        .await
        .unwrap()
        .status
        .unwrap()
        .token;

    // Kubernetes' own example configuration for annotated pods, pointed at this control plane.
    let api_server = env.plane().config().cluster_url.to_string();
    let ca = env.plane().dir().join("pki/ca.crt");
    let scrape_configs = json!([{
        "job_name": "kubernetes-pods",
        "kubernetes_sd_configs": [{
            "role": "pod",
            "api_server": api_server,
            "namespaces": {"names": [namespace]},
            "authorization": {"credentials": token},
            "tls_config": {"ca_file": ca},
        }],
        "relabel_configs": [
            {"source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_scrape"], "action": "keep", "regex": "true"},
            {"source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_path"], "target_label": "__metrics_path__", "regex": "(.+)"},
            {"source_labels": ["__address__", "__meta_kubernetes_pod_annotation_prometheus_io_port"],
             "target_label": "__address__", "regex": "([^:]+)(?::\\d+)?;(\\d+)", "replacement": "$1:$2"},
            {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
            {"source_labels": ["__meta_kubernetes_pod_label_app_kubernetes_io_name"], "target_label": "app"},
        ],
    }]);
    let started = Instant::now();
    // Two replicas of each controller.
    let targets = 2 * CONTROLLERS.len();
    let prometheus = Prometheus::start_with(scrape_configs, targets).await.unwrap();
    eprintln!(
        "Prometheus found and scraped the {targets} controller pods {:.1}s after it started",
        started.elapsed().as_secs_f64()
    );
    let query = |promql: &'static str| {
        let prometheus = &prometheus;
        async move { prometheus.query(promql).await.map_err(|e| format!("{e:#}")) }
    };
    poll_until("every controller pod up", Deadline(Duration::from_secs(30)), || async {
        match query(r#"sum(up{job="kubernetes-pods"})"#).await? {
            Some(up) if up == targets as f64 => Ok(()),
            other => Err(format!("{other:?} up; log: {}", prometheus.log())),
        }
    })
    .await;
    // One replica of each leads, as the pods say through Prometheus.
    poll_until(
        "one leader per controller",
        Deadline(Duration::from_secs(30)),
        || async {
            match query("count(orrery_leader == 1)").await? {
                Some(leaders) if leaders == CONTROLLERS.len() as f64 => Ok(()),
                other => Err(format!("{other:?} leaders")),
            }
        },
    )
    .await;

    // task-workflow reconciles a TaskRun; its counter rises on the pod, then in Prometheus.
    let pods = Api::<Pod>::namespaced(env.client.clone(), namespace);
    let before = reconciles_served(&pods, "task-workflow").await.unwrap();
    create(
        &env.namespaced::<Task>(),
        json!({"metadata": {"name": "counted"}, "spec": {"template": {"spec": {"restartPolicy": "Never",
            "containers": [{"name": "main", "image": BUSYBOX_IMAGE, "command": ["true"]}]}}}}),
    )
    .await;
    create(
        &env.namespaced::<TaskRun>(),
        json!({"metadata": {"name": "counted-1"}, "spec": {"taskRef": {"name": "counted"}}}),
    )
    .await;
    let served = poll_until(
        "task-workflow's pods to count a reconcile",
        Deadline(Duration::from_secs(60)),
        || async {
            match reconciles_served(&pods, "task-workflow").await? {
                now if now > before => Ok(now),
                now => Err(format!("{now} reconciles, {before} before")),
            }
        },
    )
    .await;
    let served_at = Instant::now();
    let queried = poll_until(
        "Prometheus to have what the pods served",
        Deadline(Duration::from_secs(30)),
        || async {
            match query(r#"sum(orrery_reconcile_total{job="kubernetes-pods", app="task-workflow"})"#).await? {
                Some(value) if value >= served => Ok(value),
                other => Err(format!("{other:?}, the pods {served}")),
            }
        },
    )
    .await;
    eprintln!(
        "task-workflow's reconciles: {before} on its pods, then {served}; Prometheus answered {queried} {:.2}s after the pods served it",
        served_at.elapsed().as_secs_f64()
    );
    // Each series names the pod it was scraped from, a replica of task-workflow.
    let by_pod = query(r#"count(count by (pod) (orrery_reconcile_total{app="task-workflow"}))"#)
        .await
        .unwrap();
    assert!(matches!(by_pod, Some(n) if (1.0..=2.0).contains(&n)), "{by_pod:?}");
    prometheus.stop();
}
