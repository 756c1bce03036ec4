//! hierarchy-executor on the real control plane (kube-controller-manager runs the Deployments,
//! the pod simulator plays the kubelet): a Project's templates build the whole tree, readiness
//! rolls up to the Project and names the Application at fault, weights reach the HTTPRoute,
//! removed versions go, deleting the Project removes the tree; unknown executors and bad
//! parameters are reported.

// A test that cannot proceed should stop right there, with the error.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crd_types::common::{CONDITION_READY, find_condition};
use crd_types::hierarchy::{Application, Cluster, Project, VirtualCluster};
use gateway_api::httproutes::HttpRoute;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, ResourceQuota, Service};
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use orrery_e2e::pod_simulator::{OUTCOME, PodSimulator};
use orrery_e2e::{Deadline, InProcess, TestEnv, poll_until};
use serde_json::json;

fn start(env: &TestEnv) -> InProcess {
    InProcess::start(
        env.client.clone(),
        &env.namespace,
        hierarchy_executor::controller::NAME,
        hierarchy_executor::run,
    )
}

/// `(status, reason, message)` of the `Ready` condition in `conditions`.
fn ready_of(conditions: Option<&[crd_types::common::Condition]>) -> Option<(String, String, String)> {
    find_condition(conditions?, CONDITION_READY).map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

async fn project_ready(env: &TestEnv, name: &str) -> Option<(String, String, String)> {
    let project = Api::<Project>::all(env.client.clone()).get(name).await.ok()?;
    ready_of(project.status.as_ref().map(|s| s.conditions.as_slice()))
}

fn weights_of(route: &HttpRoute) -> Vec<(String, i32)> {
    route.spec.rules.as_ref().unwrap()[0]
        .backend_refs
        .as_ref()
        .unwrap()
        .iter()
        .map(|b| (b.name.clone(), b.weight.unwrap_or(1)))
        .collect()
}

#[tokio::test]
async fn a_project_with_templates_builds_the_whole_tree_and_rolls_readiness_up() {
    let env = TestEnv::new().await;
    let _kubelet = PodSimulator::start(env.client.clone(), None).await.unwrap();
    let executor = start(&env);
    let name = env.namespace.clone();
    let team_namespace = format!("{name}-team");
    let project: Project = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"templates": {
            "clusters": [{"name": format!("{name}-local"), "spec": {"executor": {"name": "default", "parameters": {"installGatewayAPI": true}}}}],
            "virtualClusters": [{"name": format!("{name}-team"), "spec": {
                "namespace": team_namespace, "labels": {"team": "shop"}, "quota": {"pods": "20"},
                "access": [{"kind": "Group", "name": "shop-devs", "role": "admin"}],
            }}],
            "applications": [{"name": "shop", "spec": {
                "versions": [{"name": "v1", "image": "shop:1"}, {"name": "v2", "image": "shop:2", "replicas": 2}],
                "weights": [{"version": "v1", "weight": 80}, {"version": "v2", "weight": 20}],
                "route": {"gateway": "public", "hostnames": ["shop.example"]},
            }}],
        }},
    }))
    .unwrap();
    Api::<Project>::all(env.client.clone())
        .create(&PostParams::default(), &project)
        .await
        .unwrap();

    // The tree, Ready all the way up (the Cluster installs the Gateway API CRDs on the way).
    poll_until(
        "the Project Ready",
        Deadline(std::time::Duration::from_secs(120)),
        || async {
            match project_ready(&env, &name).await {
                Some((status, _, _)) if status == "True" => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    let cluster = Api::<Cluster>::all(env.client.clone())
        .get(&format!("{name}-local"))
        .await
        .unwrap();
    let cluster_status = cluster.status.unwrap();
    // The version the API server reports (a build from Go modules says what its build stamped).
    assert!(!cluster_status.version.unwrap().is_empty());
    assert!(
        cluster_status
            .gateway_api_crds
            .contains(&"httproutes.gateway.networking.k8s.io".to_owned())
    );
    let namespace = Api::<Namespace>::all(env.client.clone())
        .get(&team_namespace)
        .await
        .unwrap();
    assert_eq!(namespace.labels()["team"], "shop");
    let quota = Api::<ResourceQuota>::namespaced(env.client.clone(), &team_namespace)
        .get("orrery-quota")
        .await
        .unwrap();
    assert_eq!(quota.spec.unwrap().hard.unwrap()["pods"].0, "20");
    let bindings = Api::<RoleBinding>::namespaced(env.client.clone(), &team_namespace)
        .list(&Default::default())
        .await
        .unwrap();
    assert_eq!(bindings.items.len(), 1);
    assert_eq!(bindings.items[0].role_ref.name, "admin");
    let services = Api::<Service>::namespaced(env.client.clone(), &team_namespace);
    for service in ["shop", "shop-v1", "shop-v2"] {
        services.get(service).await.unwrap();
    }
    let routes: Api<HttpRoute> = Api::namespaced(env.client.clone(), &team_namespace);
    let route = routes.get("shop").await.unwrap();
    assert_eq!(weights_of(&route), [("shop-v1".into(), 80), ("shop-v2".into(), 20)]);
    let apps: Api<Application> = Api::namespaced(env.client.clone(), &team_namespace);
    let app_status = apps.get("shop").await.unwrap().status.unwrap();
    let ready: Vec<(String, i32, i32)> = app_status
        .versions
        .iter()
        .map(|v| (v.name.clone(), v.ready_replicas, v.replicas))
        .collect();
    assert_eq!(ready, [("v1".into(), 1, 1), ("v2".into(), 2, 2)]);

    // v2's pods are replaced by pods that never start (fields another manager sets, which the
    // executor leaves be; Recreate so the old pods go first): the Application, the
    // VirtualCluster and the Project are not Ready, and say why.
    let deployments: Api<Deployment> = Api::namespaced(env.client.clone(), &team_namespace);
    deployments
        .patch(
            "shop-v2",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {
                "strategy": {"type": "Recreate", "rollingUpdate": null},
                "template": {"metadata": {"annotations": {OUTCOME: "Pending"}}},
            }})),
        )
        .await
        .unwrap();
    let message = poll_until(
        "the Project not Ready",
        Deadline(std::time::Duration::from_secs(60)),
        || async {
            match project_ready(&env, &name).await {
                Some((status, _, message)) if status == "False" => Ok(message),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    assert!(
        message.contains(&format!("Application {team_namespace}/shop")) && message.contains("version v2"),
        "{message}"
    );
    let vc = Api::<VirtualCluster>::all(env.client.clone())
        .get(&format!("{name}-team"))
        .await
        .unwrap();
    assert_eq!(
        ready_of(vc.status.as_ref().map(|s| s.common.conditions.as_slice())).map(|r| r.0),
        Some("False".into())
    );

    // Change a weight and drop v1 through the template: the route and the objects follow.
    let patch = json!({"spec": {"templates": {"applications": [{"name": "shop", "spec": {
        "versions": [{"name": "v2", "image": "shop:2", "replicas": 2}, {"name": "v3", "image": "shop:3"}],
        "weights": [{"version": "v2", "weight": 60}, {"version": "v3", "weight": 40}],
        "route": {"gateway": "public", "hostnames": ["shop.example"]},
    }}]}}});
    Api::<Project>::all(env.client.clone())
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    poll_until("the route on v2/v3 and v1 gone", Deadline::default(), || async {
        let route = routes.get("shop").await.map_err(|e| e.to_string())?;
        let weights = weights_of(&route);
        let v1 = deployments.get_opt("shop-v1").await.map_err(|e| e.to_string())?;
        let v1_service = services.get_opt("shop-v1").await.map_err(|e| e.to_string())?;
        if weights == [("shop-v2".to_owned(), 60), ("shop-v3".to_owned(), 40)] && v1.is_none() && v1_service.is_none() {
            Ok(())
        } else {
            Err(format!("weights {weights:?}, v1 Deployment {}", v1.is_some()))
        }
    })
    .await;
    deployments.get("shop-v3").await.unwrap();

    // Deleting the Project removes the tree (the garbage collector follows owner references).
    Api::<Project>::all(env.client.clone())
        .delete(&name, &DeleteParams::foreground())
        .await
        .unwrap();
    poll_until(
        "the tree gone",
        Deadline(std::time::Duration::from_secs(120)),
        || async {
            let apps_left = apps
                .list(&Default::default())
                .await
                .map_err(|e| e.to_string())?
                .items
                .len();
            let vc = Api::<VirtualCluster>::all(env.client.clone())
                .get_opt(&format!("{name}-team"))
                .await
                .map_err(|e| e.to_string())?;
            let cluster = Api::<Cluster>::all(env.client.clone())
                .get_opt(&format!("{name}-local"))
                .await
                .map_err(|e| e.to_string())?;
            if apps_left == 0 && vc.is_none() && cluster.is_none() {
                Ok(())
            } else {
                Err(format!(
                    "{apps_left} Applications, VirtualCluster {}, Cluster {}",
                    vc.is_some(),
                    cluster.is_some()
                ))
            }
        },
    )
    .await;
    executor.stop().await;
}

#[tokio::test]
async fn unknown_executors_bad_parameters_and_missing_parents_are_reported() {
    let env = TestEnv::new().await;
    let executor = start(&env);
    let name = env.namespace.clone();
    let clusters: Api<Cluster> = Api::all(env.client.clone());
    let cluster: Cluster = serde_json::from_value(json!({
        "metadata": {"name": format!("{name}-istio")},
        "spec": {"executor": {"name": "default", "parameters": {"installIstio": true}}},
    }))
    .unwrap();
    clusters.create(&PostParams::default(), &cluster).await.unwrap();
    let apps: Api<Application> = env.namespaced();
    let unclaimed: Application = serde_json::from_value(json!({
        "metadata": {"name": "blue-green"},
        "spec": {"executor": {"name": "blue-green"}, "virtualCluster": "nowhere", "versions": [{"name": "v1", "image": "x"}]},
    }))
    .unwrap();
    apps.create(&PostParams::default(), &unclaimed).await.unwrap();
    let orphan: Application = serde_json::from_value(json!({
        "metadata": {"name": "orphan"},
        "spec": {"virtualCluster": format!("{name}-missing"), "versions": [{"name": "v1", "image": "x"}]},
    }))
    .unwrap();
    apps.create(&PostParams::default(), &orphan).await.unwrap();

    let condition_of = |reason: &'static str| {
        move |found: Option<(String, String, String)>| match found {
            Some((status, r, message)) if status == "False" && r == reason => Ok(message),
            other => Err(format!("{other:?}")),
        }
    };
    let message = poll_until("InvalidParameters on the Cluster", Deadline::default(), || async {
        let cluster = clusters
            .get(&format!("{name}-istio"))
            .await
            .map_err(|e| e.to_string())?;
        condition_of("InvalidParameters")(ready_of(
            cluster.status.as_ref().map(|s| s.common.conditions.as_slice()),
        ))
    })
    .await;
    assert!(
        message.contains("installIstio") && message.contains("installGatewayAPI"),
        "{message}"
    );
    let message = poll_until("ExecutorNotClaimed on the Application", Deadline::default(), || async {
        let app = apps.get("blue-green").await.map_err(|e| e.to_string())?;
        condition_of("ExecutorNotClaimed")(ready_of(app.status.as_ref().map(|s| s.common.conditions.as_slice())))
    })
    .await;
    assert!(message.contains("blue-green"), "{message}");
    let message = poll_until("ParentNotFound on the orphan", Deadline::default(), || async {
        let app = apps.get("orphan").await.map_err(|e| e.to_string())?;
        condition_of("ParentNotFound")(ready_of(app.status.as_ref().map(|s| s.common.conditions.as_slice())))
    })
    .await;
    assert!(message.contains(&format!("{name}-missing")), "{message}");

    clusters
        .delete(&format!("{name}-istio"), &DeleteParams::default())
        .await
        .unwrap();
    executor.stop().await;
}
