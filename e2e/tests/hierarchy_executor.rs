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
use k8s_openapi::api::core::v1::{Namespace, ResourceQuota, Secret, Service};
use k8s_openapi::api::rbac::v1::RoleBinding;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use orrery_e2e::pod_simulator::{OUTCOME, PodSimulator};
use orrery_e2e::{
    ControlPlane, Deadline, InProcess, TestEnv, create, poll_until, ready_condition, wait_gone, wait_not_ready,
    wait_ready,
};
use orrery_runtime::Context;
use serde_json::json;

/// The executor watches cluster-scoped kinds across the whole control plane, so two running at
/// once would both act on every test's tree: the tests of this file take turns.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn start(env: &TestEnv) -> InProcess {
    InProcess::start_cluster_wide(
        env.client.clone(),
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
async fn one_namespace_to_watch_is_refused_at_start() {
    let env = TestEnv::new().await;
    let (context, _stop) = Context::standalone(env.client.clone(), hierarchy_executor::controller::NAME);
    let refused = hierarchy_executor::run(context.in_namespace(&env.namespace))
        .await
        .expect_err("a tree spans namespaces: one namespace cannot be its whole view");
    assert!(
        refused.to_string().contains("--watch-namespace"),
        "the refusal names the flag: {refused}"
    );
}

#[tokio::test]
async fn a_project_with_templates_builds_the_whole_tree_and_rolls_readiness_up() {
    let _turn = ONE_AT_A_TIME.lock().await;
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
    wait_ready(&Api::<Project>::all(env.client.clone()), &name).await;
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
    poll_until(
        "the Project not Ready, naming the Application and its version",
        Deadline(std::time::Duration::from_secs(60)),
        || async {
            match project_ready(&env, &name).await {
                Some((status, _, message))
                    if status == "False"
                        && message.contains(&format!("Application {team_namespace}/shop"))
                        && message.contains("version v2") =>
                {
                    Ok(())
                }
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    // The rollout passes through moments where the old pods still count as ready; the
    // VirtualCluster settles on not Ready too.
    let vcs: Api<VirtualCluster> = Api::all(env.client.clone());
    poll_until("the VirtualCluster not Ready", Deadline::default(), || async {
        match ready_condition(&vcs, &format!("{name}-team")).await? {
            (status, _, _) if status == "False" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;

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

    // Deleting the Project removes the tree: the garbage collector follows the owner references
    // to the Clusters, VirtualClusters and Applications, whose finalizers remove what they made.
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
            let namespace = Api::<Namespace>::all(env.client.clone())
                .get_opt(&team_namespace)
                .await
                .map_err(|e| e.to_string())?;
            if apps_left == 0 && vc.is_none() && cluster.is_none() && namespace.is_none() {
                Ok(())
            } else {
                Err(format!(
                    "{apps_left} Applications, VirtualCluster {}, Cluster {}, namespace {}",
                    vc.is_some(),
                    cluster.is_some(),
                    namespace.is_some()
                ))
            }
        },
    )
    .await;
    executor.stop().await;
}

#[tokio::test]
async fn unknown_executors_bad_parameters_and_missing_parents_are_reported() {
    let _turn = ONE_AT_A_TIME.lock().await;
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

    // A remote Cluster whose Secret is missing.
    create(
        &clusters,
        json!({"metadata": {"name": format!("{name}-far")},
               "spec": {"kubeconfigSecretRef": {"name": "absent", "namespace": name, "key": "kubeconfig"}}}),
    )
    .await;
    let message = wait_not_ready(&clusters, &format!("{name}-far"), "SecretNotFound").await;
    assert!(message.contains(&format!("{name}/absent")), "{message}");

    // Its Secret appears, naming an API server nobody answers at: Unreachable.
    let kubeconfig = "apiVersion: v1\nkind: Config\nclusters: [{name: gone, cluster: {server: 'https://127.0.0.1:1'}}]\n\
                      users: [{name: u, user: {token: t}}]\ncontexts: [{name: c, context: {cluster: gone, user: u}}]\n\
                      current-context: c\n";
    create::<Secret>(
        &env.namespaced(),
        json!({"metadata": {"name": "absent"}, "stringData": {"kubeconfig": kubeconfig}}),
    )
    .await;
    let message = wait_not_ready(&clusters, &format!("{name}-far"), "Unreachable").await;
    assert!(message.contains("does not answer"), "{message}");

    // Two VirtualClusters wanting one namespace: the second is refused, the first keeps it.
    let vcs: Api<VirtualCluster> = Api::all(env.client.clone());
    let shared = format!("{name}-shared");
    let vc = |vc: &str| {
        json!({"metadata": {"name": format!("{name}-{vc}")},
               "spec": {"cluster": format!("{name}-istio"), "namespace": shared}})
    };
    create(&vcs, vc("first")).await;
    let namespaces: Api<Namespace> = Api::all(env.client.clone());
    let first_uid = vcs.get(&format!("{name}-first")).await.unwrap().uid().unwrap();
    poll_until("the namespace labelled by the first", Deadline::default(), || async {
        let namespace = namespaces.get_opt(&shared).await.map_err(|e| e.to_string())?;
        match namespace
            .as_ref()
            .and_then(|n| n.labels().get(crd_types::hierarchy::OWNER_LABEL))
        {
            Some(owner) if *owner == first_uid => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    create(&vcs, vc("second")).await;
    let message = wait_not_ready(&vcs, &format!("{name}-second"), "NamespaceConflict").await;
    assert!(message.contains("another VirtualCluster"), "{message}");
    // Deleting the refused one leaves the namespace to the first.
    vcs.delete(&format!("{name}-second"), &DeleteParams::default())
        .await
        .unwrap();
    wait_gone(&vcs, &format!("{name}-second")).await;
    let namespace = namespaces.get(&shared).await.unwrap();
    assert!(namespace.metadata.deletion_timestamp.is_none());
    assert_eq!(namespace.labels()[crd_types::hierarchy::OWNER_LABEL], first_uid);

    vcs.delete(&format!("{name}-first"), &DeleteParams::default())
        .await
        .unwrap();
    wait_gone(&vcs, &format!("{name}-first")).await;
    for cluster in ["istio", "far"] {
        clusters
            .delete(&format!("{name}-{cluster}"), &DeleteParams::default())
            .await
            .unwrap();
        wait_gone(&clusters, &format!("{name}-{cluster}")).await;
    }
    executor.stop().await;
}

#[tokio::test]
async fn layer_by_layer_with_parent_references_builds_the_same_tree() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let env = TestEnv::new().await;
    let _kubelet = PodSimulator::start(env.client.clone(), None).await.unwrap();
    let executor = start(&env);
    let name = env.namespace.clone();
    let clusters: Api<Cluster> = Api::all(env.client.clone());
    let vcs: Api<VirtualCluster> = Api::all(env.client.clone());
    let apps: Api<Application> = env.namespaced();

    // Kubist style: each layer on its own, naming its parent. The VirtualCluster takes over
    // the test's namespace, which already exists: it is adopted, not created, with the
    // namespace owner's consent.
    env.let_adopt(&format!("{name}-team")).await;
    create(
        &clusters,
        json!({"metadata": {"name": format!("{name}-local")},
               "spec": {"executor": {"name": "default", "parameters": {"installGatewayAPI": true}}}}),
    )
    .await;
    create(
        &vcs,
        json!({"metadata": {"name": format!("{name}-team")},
               "spec": {"cluster": format!("{name}-local"), "namespace": name, "quota": {"pods": "10"}}}),
    )
    .await;
    create(
        &apps,
        json!({"metadata": {"name": "shop"},
               "spec": {"virtualCluster": format!("{name}-team"), "versions": [{"name": "v1", "image": "shop:1"}],
                        "route": {"gateway": "public"}}}),
    )
    .await;
    wait_ready(&apps, "shop").await;
    wait_ready(&vcs, &format!("{name}-team")).await;
    wait_ready(&clusters, &format!("{name}-local")).await;

    // The same objects a template builds.
    let deployments: Api<Deployment> = env.namespaced();
    let services: Api<Service> = env.namespaced();
    let routes: Api<HttpRoute> = env.namespaced();
    deployments.get("shop-v1").await.unwrap();
    for service in ["shop", "shop-v1"] {
        services.get(service).await.unwrap();
    }
    assert_eq!(
        weights_of(&routes.get("shop").await.unwrap()),
        [("shop-v1".into(), 100)]
    );
    let namespaces: Api<Namespace> = Api::all(env.client.clone());
    let namespace = namespaces.get(&name).await.unwrap();
    assert!(
        namespace.annotations().contains_key("hierarchy.orrery.dev/adopted"),
        "{:?}",
        namespace.annotations()
    );

    // Add a version and split the traffic: a second Deployment, the route follows.
    apps.patch(
        "shop",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {
            "versions": [{"name": "v1", "image": "shop:1"}, {"name": "v2", "image": "shop:2"}],
            "weights": [{"version": "v1", "weight": 50}, {"version": "v2", "weight": 50}],
        }})),
    )
    .await
    .unwrap();
    poll_until("the route split 50/50", Deadline::default(), || async {
        let weights = weights_of(&routes.get("shop").await.map_err(|e| e.to_string())?);
        let v2 = deployments.get_opt("shop-v2").await.map_err(|e| e.to_string())?;
        if weights == [("shop-v1".to_owned(), 50), ("shop-v2".to_owned(), 50)] && v2.is_some() {
            Ok(())
        } else {
            Err(format!("{weights:?}, v2 Deployment {}", v2.is_some()))
        }
    })
    .await;

    // Someone scales v1 by hand: the executor owns that field and takes it back, and the
    // Application says what it restored.
    deployments
        .patch(
            "shop-v1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 3}})),
        )
        .await
        .unwrap();
    let repair = poll_until("v1 scaled back", Deadline::default(), || async {
        let replicas = deployments
            .get("shop-v1")
            .await
            .map_err(|e| e.to_string())?
            .spec
            .unwrap()
            .replicas;
        let app = apps.get("shop").await.map_err(|e| e.to_string())?;
        match app.status.and_then(|s| s.common.last_repair) {
            Some(repair) if replicas == Some(1) => Ok(repair),
            other => Err(format!("replicas {replicas:?}, last repair {other:?}")),
        }
    })
    .await;
    assert_eq!(repair.message, "restored Deployment shop-v1 (spec.replicas changed)");

    // Deleting the Application removes its objects; the finalizer holds it until they are gone.
    apps.delete("shop", &DeleteParams::default()).await.unwrap();
    wait_gone(&apps, "shop").await;
    for version in ["shop-v1", "shop-v2"] {
        assert!(deployments.get_opt(version).await.unwrap().is_none(), "{version}");
        assert!(services.get_opt(version).await.unwrap().is_none(), "{version}");
    }
    assert!(services.get_opt("shop").await.unwrap().is_none());
    assert!(routes.get_opt("shop").await.unwrap().is_none());

    // Deleting the VirtualCluster gives the adopted namespace back: the guardrails and our
    // labels go, the namespace and what is in it stay.
    vcs.delete(&format!("{name}-team"), &DeleteParams::default())
        .await
        .unwrap();
    wait_gone(&vcs, &format!("{name}-team")).await;
    let namespace = namespaces.get(&name).await.unwrap();
    assert!(namespace.metadata.deletion_timestamp.is_none());
    assert!(
        !namespace.labels().contains_key(crd_types::hierarchy::OWNER_LABEL),
        "{:?}",
        namespace.labels()
    );
    assert!(
        Api::<ResourceQuota>::namespaced(env.client.clone(), &name)
            .get_opt("orrery-quota")
            .await
            .unwrap()
            .is_none()
    );
    clusters
        .delete(&format!("{name}-local"), &DeleteParams::default())
        .await
        .unwrap();
    wait_gone(&clusters, &format!("{name}-local")).await;
    executor.stop().await;
}

/// A Cluster not Ready on its own account looks again by itself: nothing it watches changes
/// when someone installs the Gateway API by hand (or its API server answers again).
#[tokio::test]
async fn a_local_cluster_missing_the_gateway_api_is_ready_once_someone_installs_it() {
    // A control plane of its own: the shared one has the Gateway API from the other tests.
    let plane = tokio::task::spawn_blocking(|| ControlPlane::start_with(false))
        .await
        .unwrap()
        .unwrap();
    plane.install_crds_blocking().unwrap();
    let admin = plane.client().await;
    let _executor = InProcess::start_cluster_wide(
        admin.clone(),
        hierarchy_executor::controller::NAME,
        hierarchy_executor::run,
    );
    let clusters: Api<Cluster> = Api::all(admin.clone());
    create(&clusters, json!({"metadata": {"name": "local"}, "spec": {}})).await;
    let message = wait_not_ready(&clusters, "local", "GatewayAPIMissing").await;
    assert!(message.contains("httproutes.gateway.networking.k8s.io"), "{message}");

    let crds: Api<CustomResourceDefinition> = Api::all(admin);
    for crd in hierarchy_executor::gateway::crds() {
        crds.create(&PostParams::default(), &crd).await.unwrap();
    }
    wait_ready(&clusters, "local").await;
}

#[tokio::test]
async fn a_remote_cluster_gets_its_namespace_and_objects_and_gateway_api_only_when_asked() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let env = TestEnv::new().await;
    // A second control plane stands for the remote cluster: it has no Gateway API CRDs, and its
    // own pod simulator plays its kubelet.
    let remote = tokio::task::spawn_blocking(ControlPlane::start).await.unwrap().unwrap();
    let remote_client = remote.client().await;
    let _remote_kubelet = PodSimulator::start(remote_client.clone(), None).await.unwrap();
    let executor = start(&env);
    let name = env.namespace.clone();
    let cluster_name = format!("{name}-remote");
    let vc_name = format!("{name}-team");
    let team_namespace = format!("{name}-team");

    // The kubeconfig as the Secret holds it, its CA inline.
    let kubeconfig = remote.kubeconfig_inline().unwrap();
    create::<Secret>(
        &env.namespaced(),
        json!({"metadata": {"name": "remote"}, "stringData": {"kubeconfig": kubeconfig}}),
    )
    .await;
    let clusters: Api<Cluster> = Api::all(env.client.clone());
    create(
        &clusters,
        json!({"metadata": {"name": cluster_name},
               "spec": {"kubeconfigSecretRef": {"name": "remote", "namespace": name, "key": "kubeconfig"}}}),
    )
    .await;

    // Not asked to install the Gateway API: the Cluster reports what is missing.
    let message = wait_not_ready(&clusters, &cluster_name, "GatewayAPIMissing").await;
    assert!(message.contains("httproutes.gateway.networking.k8s.io"), "{message}");
    let status = clusters.get(&cluster_name).await.unwrap().status.unwrap();
    assert!(
        status
            .missing_crds
            .contains(&"httproutes.gateway.networking.k8s.io".to_owned())
    );
    assert!(!status.version.unwrap_or_default().is_empty());
    let remote_crds: Api<CustomResourceDefinition> = Api::all(remote_client.clone());
    assert!(
        remote_crds
            .get_opt("httproutes.gateway.networking.k8s.io")
            .await
            .unwrap()
            .is_none()
    );

    // Asked: it installs them there, and is Ready.
    clusters
        .patch(
            &cluster_name,
            &PatchParams::default(),
            &Patch::Merge(
                json!({"spec": {"executor": {"name": "default", "parameters": {"installGatewayAPI": true}}}}),
            ),
        )
        .await
        .unwrap();
    wait_ready(&clusters, &cluster_name).await;
    remote_crds.get("httproutes.gateway.networking.k8s.io").await.unwrap();

    // The VirtualCluster's namespace and the Application's objects appear on the remote
    // cluster, not here; the Application itself lives here.
    let vcs: Api<VirtualCluster> = Api::all(env.client.clone());
    create(
        &vcs,
        json!({"metadata": {"name": vc_name},
               "spec": {"cluster": cluster_name, "namespace": team_namespace, "quota": {"pods": "10"},
                        "applicationNamespaces": [name]}}),
    )
    .await;
    let apps: Api<Application> = env.namespaced();
    create(
        &apps,
        json!({"metadata": {"name": "shop"},
               "spec": {"virtualCluster": vc_name, "versions": [{"name": "v1", "image": "shop:1"}],
                        "route": {"gateway": "public"}}}),
    )
    .await;
    wait_ready(&apps, "shop").await;
    wait_ready(&vcs, &vc_name).await;
    let remote_namespaces: Api<Namespace> = Api::all(remote_client.clone());
    remote_namespaces.get(&team_namespace).await.unwrap();
    let remote_deployments: Api<Deployment> = Api::namespaced(remote_client.clone(), &team_namespace);
    assert_eq!(
        remote_deployments
            .get("shop-v1")
            .await
            .unwrap()
            .status
            .unwrap()
            .ready_replicas,
        Some(1)
    );
    let remote_routes: Api<HttpRoute> = Api::namespaced(remote_client.clone(), &team_namespace);
    assert_eq!(
        weights_of(&remote_routes.get("shop").await.unwrap()),
        [("shop-v1".into(), 100)]
    );
    let local_namespaces: Api<Namespace> = Api::all(env.client.clone());
    assert!(local_namespaces.get_opt(&team_namespace).await.unwrap().is_none());

    // Deleting them removes what they made there: owner references cannot reach another
    // cluster, the finalizers do.
    apps.delete("shop", &DeleteParams::default()).await.unwrap();
    wait_gone(&apps, "shop").await;
    assert!(remote_deployments.get_opt("shop-v1").await.unwrap().is_none());
    assert!(remote_routes.get_opt("shop").await.unwrap().is_none());
    vcs.delete(&vc_name, &DeleteParams::default()).await.unwrap();
    wait_gone(&vcs, &vc_name).await;
    wait_gone(&remote_namespaces, &team_namespace).await;
    clusters.delete(&cluster_name, &DeleteParams::default()).await.unwrap();
    wait_gone(&clusters, &cluster_name).await;
    executor.stop().await;
}

#[tokio::test]
async fn killed_mid_build_it_finishes_on_restart_with_no_duplicate_or_orphan() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let env = TestEnv::new().await;
    let _kubelet = PodSimulator::start(env.client.clone(), None).await.unwrap();
    let name = env.namespace.clone();
    let teams = ["a", "b"];
    let app = |team: &str, app: &str| {
        // Template names are unique across the Project.
        json!({"name": format!("{app}-{team}"), "namespace": format!("{name}-{team}"), "spec": {
            "virtualCluster": format!("{name}-{team}"),
            "versions": [{"name": "v1", "image": "x:1"}, {"name": "v2", "image": "x:2"}],
            "weights": [{"version": "v1", "weight": 90}, {"version": "v2", "weight": 10}],
            "route": {"gateway": "public"},
        }})
    };
    let project = json!({"metadata": {"name": name}, "spec": {"templates": {
        "clusters": [{"name": format!("{name}-local"), "spec": {"executor": {"name": "default", "parameters": {"installGatewayAPI": true}}}}],
        "virtualClusters": teams.map(|t| json!({"name": format!("{name}-{t}"), "spec": {"namespace": format!("{name}-{t}")}})),
        "applications": [app("a", "cart"), app("a", "shop"), app("b", "cart"), app("b", "shop")],
    }}});
    let projects: Api<Project> = Api::all(env.client.clone());
    create(&projects, project).await;

    // Killed (no graceful shutdown) as soon as the first Deployment exists.
    let executor = start(&env);
    let all_deployments: Api<Deployment> = Api::all(env.client.clone());
    let selector = kube::api::ListParams::default().labels(hierarchy_executor::plan::application::APP_LABEL);
    let at_kill = poll_until("a first Deployment", Deadline::default(), || async {
        let found = all_deployments.list(&selector).await.map_err(|e| e.to_string())?.items;
        let ours = found
            .iter()
            .filter(|d| d.namespace().is_some_and(|n| n.starts_with(&name)))
            .count();
        if ours > 0 { Ok(ours) } else { Err("none yet".to_owned()) }
    })
    .await;
    executor.kill().await;
    println!("killed with {at_kill} of 8 Deployments made");

    let executor = start(&env);
    wait_ready(&projects, &name).await;
    // A Project's readiness may be the one written before the kill, when its VirtualClusters had
    // no Applications yet: each Application Ready is what says its objects are all made.
    for team in teams {
        let apps: Api<Application> = Api::namespaced(env.client.clone(), &format!("{name}-{team}"));
        for app in ["cart", "shop"] {
            wait_ready(&apps, &format!("{app}-{team}")).await;
        }
    }

    // Exactly the objects the templates describe, each owned by an Application that exists.
    for team in teams {
        let namespace = format!("{name}-{team}");
        let apps: Api<Application> = Api::namespaced(env.client.clone(), &namespace);
        let uids: Vec<String> = apps
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .iter()
            .map(|a| a.uid().unwrap())
            .collect();
        assert_eq!(uids.len(), 2);
        let owner_of = |labels: &std::collections::BTreeMap<String, String>| {
            labels
                .get(crd_types::hierarchy::OWNER_LABEL)
                .cloned()
                .unwrap_or_default()
        };
        let deployments = Api::<Deployment>::namespaced(env.client.clone(), &namespace)
            .list(&Default::default())
            .await
            .unwrap()
            .items;
        let mut names: Vec<String> = deployments.iter().map(|d| d.name_any()).collect();
        names.sort();
        let expected = ["cart-{t}-v1", "cart-{t}-v2", "shop-{t}-v1", "shop-{t}-v2"].map(|n| n.replace("{t}", team));
        assert_eq!(names, expected, "{namespace}");
        assert!(deployments.iter().all(|d| uids.contains(&owner_of(d.labels()))));
        let services = Api::<Service>::namespaced(env.client.clone(), &namespace)
            .list(&Default::default())
            .await
            .unwrap()
            .items;
        let mut names: Vec<String> = services.iter().map(|s| s.name_any()).collect();
        names.sort();
        let expected = [
            "cart-{t}",
            "cart-{t}-v1",
            "cart-{t}-v2",
            "shop-{t}",
            "shop-{t}-v1",
            "shop-{t}-v2",
        ]
        .map(|n| n.replace("{t}", team));
        assert_eq!(names, expected, "{namespace}");
        assert!(services.iter().all(|s| uids.contains(&owner_of(s.labels()))));
        let routes = Api::<HttpRoute>::namespaced(env.client.clone(), &namespace)
            .list(&Default::default())
            .await
            .unwrap()
            .items;
        assert_eq!(routes.len(), 2, "{namespace}");
    }

    projects.delete(&name, &DeleteParams::foreground()).await.unwrap();
    for team in teams {
        wait_gone(&Api::<Namespace>::all(env.client.clone()), &format!("{name}-{team}")).await;
    }
    executor.stop().await;
}

#[tokio::test]
async fn an_executor_another_controller_claims_is_left_to_it_and_rolls_up() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let env = TestEnv::new().await;
    let executor = start(&env);
    let example = InProcess::start(
        env.client.clone(),
        &env.namespace,
        example_executor::NAME,
        example_executor::run,
    );
    let name = env.namespace.clone();
    let clusters: Api<Cluster> = Api::all(env.client.clone());
    let vcs: Api<VirtualCluster> = Api::all(env.client.clone());
    let apps: Api<Application> = env.namespaced();
    create(
        &clusters,
        json!({"metadata": {"name": format!("{name}-local")}, "spec": {}}),
    )
    .await;
    env.let_adopt(&format!("{name}-team")).await;
    create(
        &vcs,
        json!({"metadata": {"name": format!("{name}-team")},
               "spec": {"cluster": format!("{name}-local"), "namespace": name}}),
    )
    .await;
    let app = |app: &str, message: serde_json::Value| {
        json!({"metadata": {"name": app}, "spec": {
            "virtualCluster": format!("{name}-team"),
            "versions": [{"name": "v1", "image": "unused:1"}],
            "executor": {"name": "example", "parameters": {"message": message}},
        }})
    };
    create(&apps, app("notes", json!("hello"))).await;
    create(&apps, app("bad", json!(3))).await;

    // The example executor runs them; hierarchy-executor makes nothing for them.
    wait_ready(&apps, "notes").await;
    let notes = apps.get("notes").await.unwrap();
    assert_eq!(
        notes.status.unwrap().common.executor.as_deref(),
        Some(example_executor::NAME)
    );
    let config_map = Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(env.client.clone(), &name)
        .get("notes-example")
        .await
        .unwrap();
    assert_eq!(config_map.data.unwrap()["message"], "hello");
    let message = wait_not_ready(&apps, "bad", "InvalidParameters").await;
    assert!(message.contains("a string"), "{message}");
    assert_eq!(
        apps.get("bad")
            .await
            .unwrap()
            .status
            .unwrap()
            .common
            .executor
            .as_deref(),
        Some(example_executor::NAME)
    );
    let deployments: Api<Deployment> = env.namespaced();
    assert!(deployments.list(&Default::default()).await.unwrap().items.is_empty());

    // Their readiness rolls up like any other: once both have reported, the VirtualCluster
    // names only the bad one.
    poll_until(
        "the VirtualCluster naming only the bad Application",
        Deadline::default(),
        || async {
            match ready_condition(&vcs, &format!("{name}-team")).await? {
                (status, reason, message)
                    if status == "False"
                        && reason == "ChildrenNotReady"
                        && message.contains(&format!("Application {name}/bad"))
                        && !message.contains("notes") =>
                {
                    Ok(())
                }
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;

    for app in ["notes", "bad"] {
        apps.delete(app, &DeleteParams::default()).await.unwrap();
    }
    vcs.delete(&format!("{name}-team"), &DeleteParams::default())
        .await
        .unwrap();
    wait_gone(&vcs, &format!("{name}-team")).await;
    clusters
        .delete(&format!("{name}-local"), &DeleteParams::default())
        .await
        .unwrap();
    wait_gone(&clusters, &format!("{name}-local")).await;
    example.stop().await;
    executor.stop().await;
}
