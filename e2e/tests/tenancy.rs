//! The hierarchy as attackers would use it, on the real control plane: an impersonated user
//! holding exactly the right each case names asks hierarchy-executor for what that user could
//! not do directly, and the executor refuses with a condition saying why, while the owner's
//! objects stay as they were. Admission policies (the chart's, tested in `admission.rs`) would
//! refuse most of these earlier; here the controller's own checks are shown to hold without
//! them. The controllers act with exactly the chart's RBAC. Each case also shows the
//! legitimate use still working.

// A test that cannot proceed should stop right there, with the error.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::OnceLock;

use crd_types::hierarchy::{Application, Cluster, OWNER_LABEL, Project, VirtualCluster};
use gateway_api::httproutes::HttpRoute;
use hierarchy_executor::plan::tenancy::{ADOPTABLE_BY_ANNOTATION, Protected};
use hierarchy_executor::registry::Registry;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ResourceQuota, Secret};
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use orrery_e2e::{Deadline, TestEnv, access, create, poll_until, serve_every_test, wait_not_ready, wait_ready};
use orrery_runtime::Context;
use serde_json::{Value, json};

/// The namespace the controllers are released into, in these tests.
const RELEASE_NAMESPACE: &str = "orrery-system";

/// hierarchy-executor (protecting [`RELEASE_NAMESPACE`]) and policy-runner, cluster-wide as
/// deployed and each acting as its chart ServiceAccount with exactly the chart's rules, serve
/// every test of this file; each test names its objects after its namespace.
async fn start() -> TestEnv {
    static STARTED: OnceLock<()> = OnceLock::new();
    let env = TestEnv::new().await;
    if STARTED.get().is_some() {
        return env;
    }
    let executor_config = access::controller_config(&env, hierarchy_executor::controller::NAME)
        .await
        .unwrap();
    let runner_config = access::controller_config(&env, policy_runner::NAME).await.unwrap();
    serve_every_test(&STARTED, move |_admin| async move {
        // Made here: a client's connections live on the runtime that made it.
        let (executor_client, runner_client) = (
            Client::try_from(executor_config).unwrap(),
            Client::try_from(runner_config).unwrap(),
        );
        let (executor, _stop_executor) = Context::standalone(executor_client, hierarchy_executor::controller::NAME);
        let (runner, _stop_runner) = Context::standalone(runner_client, policy_runner::NAME);
        let protected = Protected::new([RELEASE_NAMESPACE.to_owned()]);
        let (executed, ran) = tokio::join!(
            hierarchy_executor::controller::run_with(executor, Registry::builtin(), protected),
            policy_runner::controller::run(runner)
        );
        executed.unwrap();
        ran.unwrap();
    })
    .await;
    env
}

/// A client acting as user `who` of this test, allowed exactly `rules` (cluster-wide) and
/// `namespaced` rules in the test's own namespace.
async fn user(env: &TestEnv, who: &str, rules: Value, namespaced: Value) -> Client {
    let name = format!("{}-{who}", env.namespace);
    if rules.as_array().is_some_and(|r| !r.is_empty()) {
        access::grant(env, &name, None, rules).await.unwrap();
    }
    if namespaced.as_array().is_some_and(|r| !r.is_empty()) {
        access::grant(env, &name, Some(&env.namespace), namespaced)
            .await
            .unwrap();
    }
    access::client_as(env, &name).unwrap()
}

/// Creates a namespace as its owner (the admin), holding a ConfigMap of data.
async fn owners_namespace(env: &TestEnv, name: &str) {
    create(
        &Api::<Namespace>::all(env.client.clone()),
        json!({"metadata": {"name": name, "labels": {"orrery.dev/test": "true"}}}),
    )
    .await;
    create(
        &Api::<ConfigMap>::namespaced(env.client.clone(), name),
        json!({"metadata": {"name": "data"}, "data": {"orders": "42"}}),
    )
    .await;
}

/// Objects in `namespace` marked as made by the hierarchy executor for anything.
async fn orrery_objects_in(env: &TestEnv, namespace: &str) -> Vec<String> {
    async fn marked<K>(env: &TestEnv, namespace: &str) -> Vec<String>
    where
        K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        let objects = Api::<K>::namespaced(env.client.clone(), namespace)
            .list(&ListParams::default().labels(OWNER_LABEL))
            .await
            .unwrap();
        objects
            .items
            .iter()
            .map(|o| format!("{} {}", K::kind(&()), o.name_any()))
            .collect()
    }
    [
        marked::<RoleBinding>(env, namespace).await,
        marked::<ResourceQuota>(env, namespace).await,
        marked::<Deployment>(env, namespace).await,
    ]
    .concat()
}

/// An object's spec and labels, and when and how each manager last wrote it: equal before
/// and after means nobody wrote its spec or labels in between.
fn spec_and_writes<K: serde::Serialize + kube::Resource>(object: &K) -> Value {
    let value = serde_json::to_value(object).unwrap();
    let writes: Vec<Value> = value["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|w| w.get("subresource").is_none())
        .map(|w| json!([w["manager"], w["operation"], w["time"]]))
        .collect();
    json!({"spec": value["spec"], "labels": value["metadata"]["labels"], "writes": writes})
}

async fn local_cluster(env: &TestEnv, name: &str) {
    create(
        &Api::<Cluster>::all(env.client.clone()),
        json!({"metadata": {"name": name}, "spec": {"executor": {"name": "default", "parameters": {"installGatewayAPI": true}}}}),
    )
    .await;
}

/// Case 1: someone allowed only to create VirtualClusters names a system namespace, the
/// controllers' release namespace, or another team's namespace, asking for an `admin`
/// RoleBinding, a Pod Security label and a quota there.
#[tokio::test]
async fn a_virtual_cluster_takes_no_system_release_or_unconsenting_namespace() {
    let env = start().await;
    let name = env.namespace.clone();
    let cluster = format!("{name}-local");
    local_cluster(&env, &cluster).await;
    let victim = format!("{name}-victim");
    owners_namespace(&env, &victim).await;
    let _ = Api::<Namespace>::all(env.client.clone())
        .create(
            &Default::default(),
            &serde_json::from_value(json!({"metadata": {"name": RELEASE_NAMESPACE}})).unwrap(),
        )
        .await;
    let mallory = user(
        &env,
        "mallory",
        json!([{"apiGroups": ["hierarchy.orrery.dev"], "resources": ["virtualclusters"], "verbs": ["create", "get"]}]),
        json!([]),
    )
    .await;
    let as_mallory: Api<VirtualCluster> = Api::all(mallory);
    let vcs: Api<VirtualCluster> = Api::all(env.client.clone());
    let takeover = |vc: &str, namespace: &str| {
        json!({"metadata": {"name": vc}, "spec": {"cluster": cluster, "namespace": namespace,
            "labels": {"pod-security.kubernetes.io/enforce": "privileged"}, "quota": {"pods": "0"},
            "networkIsolation": true, "access": [{"kind": "User", "name": "mallory", "role": "admin"}]}})
    };
    for (vc, namespace, reason) in [
        (format!("{name}-kube"), "kube-system", "NamespaceProtected"),
        (format!("{name}-release"), RELEASE_NAMESPACE, "NamespaceProtected"),
        (format!("{name}-victim"), victim.as_str(), "NamespaceNotAdoptable"),
    ] {
        create(&as_mallory, takeover(&vc, namespace)).await;
        let message = wait_not_ready(&vcs, &vc, reason).await;
        assert!(message.contains(namespace), "{message}");
        let found = orrery_objects_in(&env, namespace).await;
        assert!(found.is_empty(), "made in {namespace}: {found:?}");
        let labels = Api::<Namespace>::all(env.client.clone())
            .get(namespace)
            .await
            .unwrap()
            .labels()
            .clone();
        assert!(
            !labels.contains_key("pod-security.kubernetes.io/enforce") && !labels.contains_key(OWNER_LABEL),
            "{namespace} relabelled: {labels:?}"
        );
    }
    let message = wait_not_ready(&vcs, &format!("{name}-victim"), "NamespaceNotAdoptable").await;
    assert!(
        message.contains(&format!("{ADOPTABLE_BY_ANNOTATION}={name}-victim")),
        "{message}"
    );

    // The legitimate use: the namespace's owner consents to a VirtualCluster of its own
    // choosing, which then adopts it, data and all, with nothing changed on the VirtualCluster.
    let owned = format!("{name}-owned");
    create(
        &vcs,
        json!({"metadata": {"name": owned}, "spec": {"cluster": cluster, "namespace": victim, "quota": {"pods": "5"}}}),
    )
    .await;
    wait_not_ready(&vcs, &owned, "NamespaceNotAdoptable").await;
    let consent = json!({"metadata": {"annotations": {ADOPTABLE_BY_ANNOTATION: owned}}});
    Api::<Namespace>::all(env.client.clone())
        .patch(&victim, &PatchParams::default(), &Patch::Merge(consent))
        .await
        .unwrap();
    wait_ready(&vcs, &owned).await;
    assert_eq!(
        orrery_objects_in(&env, &victim).await,
        vec!["ResourceQuota orrery-quota"]
    );
    // Mallory's, named in no consent, is still refused: the namespace is now the other's.
    wait_not_ready(&vcs, &format!("{name}-victim"), "NamespaceConflict").await;
    let data = Api::<ConfigMap>::namespaced(env.client.clone(), &victim)
        .get("data")
        .await
        .unwrap();
    assert_eq!(data.data.unwrap()["orders"], "42");
}

/// Case 2: a VirtualCluster's `cel` policy outputs an `access` list its spec does not carry
/// (the spec's is what admission checked of its creator).
#[tokio::test]
async fn a_policy_output_granting_more_than_the_spec_is_not_applied() {
    let env = start().await;
    let name = env.namespace.clone();
    let cluster = format!("{name}-local");
    local_cluster(&env, &cluster).await;
    let mallory = user(
        &env,
        "mallory",
        json!([{"apiGroups": ["hierarchy.orrery.dev"], "resources": ["virtualclusters"], "verbs": ["create", "get"]}]),
        json!([]),
    )
    .await;
    let vc = format!("{name}-cel");
    let namespace = format!("{name}-cel-ns");
    let grant_mallory = "{'quota': input.quota, 'access': [{'kind': 'User', 'name': 'mallory', 'role': 'admin'}]}";
    create(
        &Api::<VirtualCluster>::all(mallory),
        json!({"metadata": {"name": vc}, "spec": {"cluster": cluster, "namespace": namespace, "quota": {"pods": "3"},
            "policies": [{"name": "cel", "parameters": {"expression": grant_mallory}}]}}),
    )
    .await;
    let vcs: Api<VirtualCluster> = Api::all(env.client.clone());
    let message = wait_not_ready(&vcs, &vc, "PolicyOutputRefused").await;
    assert!(message.contains("access User mallory as Admin"), "{message}");
    let made = Api::<Namespace>::all(env.client.clone())
        .get_opt(&namespace)
        .await
        .unwrap();
    assert!(made.is_none(), "nothing is applied from a refused output");

    // The legitimate use: a policy that narrows (drops the access the spec grants) is applied.
    let narrow = format!("{name}-narrow");
    create(
        &vcs,
        json!({"metadata": {"name": narrow}, "spec": {"cluster": cluster, "namespace": format!("{name}-narrow-ns"),
            "access": [{"kind": "User", "name": "alice", "role": "view"}],
            "policies": [{"name": "cel", "parameters": {"expression": "{'access': []}"}}]}}),
    )
    .await;
    wait_ready(&vcs, &narrow).await;
    assert!(orrery_objects_in(&env, &format!("{name}-narrow-ns")).await.is_empty());
}

/// Case 3: someone allowed only to create Clusters points one at a Secret whose content is not
/// a kubeconfig (it must not be echoed), and at kubeconfigs that run a command or read the
/// controller's own token.
#[tokio::test]
async fn a_cluster_kubeconfig_may_not_run_commands_read_files_or_leak_its_secret() {
    let env = start().await;
    let name = env.namespace.clone();
    let secrets: Api<Secret> = env.namespaced();
    let marker = std::env::temp_dir().join(format!("{name}-ran"));
    let exec = format!(
        "apiVersion: v1\nkind: Config\nclusters: [{{name: c, cluster: {{server: 'https://127.0.0.1:1'}}}}]\n\
         users: [{{name: u, user: {{exec: {{apiVersion: client.authentication.k8s.io/v1, command: touch, args: ['{}']}}}}}}]\n\
         contexts: [{{name: x, context: {{cluster: c, user: u}}}}]\ncurrent-context: x\n",
        marker.display()
    );
    let token_file = "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: 'https://127.0.0.1:1'}}]\n\
                      users: [{name: u, user: {tokenFile: /var/run/secrets/kubernetes.io/serviceaccount/token}}]\n\
                      contexts: [{name: x, context: {cluster: c, user: u}}]\ncurrent-context: x\n";
    for (secret, content) in [
        ("exec", exec.as_str()),
        ("token-file", token_file),
        ("not-a-kubeconfig", "password: hunter2-very-secret"),
    ] {
        create(
            &secrets,
            json!({"metadata": {"name": secret}, "stringData": {"kubeconfig": content}}),
        )
        .await;
    }
    let mallory = user(
        &env,
        "mallory",
        json!([{"apiGroups": ["hierarchy.orrery.dev"], "resources": ["clusters"], "verbs": ["create", "get"]}]),
        json!([]),
    )
    .await;
    let as_mallory: Api<Cluster> = Api::all(mallory);
    let clusters: Api<Cluster> = Api::all(env.client.clone());
    for (secret, reason, says) in [
        ("exec", "KubeconfigRefused", "sets exec"),
        ("token-file", "KubeconfigRefused", "sets tokenFile"),
        ("not-a-kubeconfig", "InvalidKubeconfig", "does not hold a kubeconfig"),
    ] {
        let cluster = format!("{name}-{secret}");
        create(
            &as_mallory,
            json!({"metadata": {"name": cluster},
                   "spec": {"kubeconfigSecretRef": {"namespace": name, "name": secret, "key": "kubeconfig"}}}),
        )
        .await;
        let message = wait_not_ready(&clusters, &cluster, reason).await;
        assert!(message.contains(says), "{message}");
        assert!(
            !message.contains("hunter2"),
            "the Secret's content is echoed: {message}"
        );
        let status = serde_json::to_string(&clusters.get(&cluster).await.unwrap().status).unwrap();
        assert!(!status.contains("hunter2"), "{status}");
    }
    assert!(!marker.exists(), "the kubeconfig's exec command ran in the controller");
}

/// Case 4: an Application in a namespace of its own user's names another team's
/// VirtualCluster, to make Deployments there and take over that team's objects; and an
/// Application whose objects' names are taken by someone else's.
#[tokio::test]
async fn an_application_acts_only_in_its_virtual_clusters_namespace_on_its_own_objects() {
    let env = start().await;
    let name = env.namespace.clone();
    let cluster = format!("{name}-local");
    local_cluster(&env, &cluster).await;
    let team = format!("{name}-team");
    let vcs: Api<VirtualCluster> = Api::all(env.client.clone());
    create(
        &vcs,
        json!({"metadata": {"name": team}, "spec": {"cluster": cluster, "namespace": team}}),
    )
    .await;
    wait_ready(&vcs, &team).await;
    // team-a's own Application: the legitimate use.
    let team_apps = Api::<Application>::namespaced(env.client.clone(), &team);
    let shop = json!({"metadata": {"name": "shop"}, "spec": {"virtualCluster": team,
        "versions": [{"name": "v1", "image": "shop:1"}], "route": {"gateway": "public"}}});
    create(&team_apps, shop).await;
    let deployments = Api::<Deployment>::namespaced(env.client.clone(), &team);
    let routes = Api::<HttpRoute>::namespaced(env.client.clone(), &team);
    // What the executor wrote of each (the Deployment controller writes their status too).
    let written = || async {
        let deployment = deployments.get_opt("shop-v1").await.map_err(|e| e.to_string())?;
        let route = routes.get_opt("shop").await.map_err(|e| e.to_string())?;
        match (deployment, route) {
            (Some(d), Some(r)) => Ok((spec_and_writes(&d), spec_and_writes(&r))),
            other => Err(format!("{:?}", (other.0.is_some(), other.1.is_some()))),
        }
    };
    let before = poll_until("team-a's Deployment and route", Deadline::default(), written).await;

    // Mallory may create Applications in her own namespace (the test's), nothing else.
    let mallory = user(
        &env,
        "mallory",
        json!([]),
        json!([{"apiGroups": ["hierarchy.orrery.dev"], "resources": ["applications"], "verbs": ["create", "get", "delete"]}]),
    )
    .await;
    let as_mallory: Api<Application> = Api::namespaced(mallory, &name);
    create(
        &as_mallory,
        json!({"metadata": {"name": "shop"}, "spec": {"virtualCluster": team,
            "versions": [{"name": "v1", "image": "evil:1"}, {"name": "v2", "image": "evil:2"}],
            "route": {"gateway": "public"}}}),
    )
    .await;
    let apps: Api<Application> = env.namespaced();
    let message = wait_not_ready(&apps, "shop", "NamespaceNotAllowed").await;
    assert!(message.contains(&team) && message.contains(&name), "{message}");
    assert!(deployments.get_opt("shop-v2").await.unwrap().is_none());
    assert_eq!(
        written().await.unwrap(),
        before,
        "team-a's Deployment or route was written"
    );
    // Deleting hers removes nothing of team-a's.
    as_mallory.delete("shop", &DeleteParams::default()).await.unwrap();
    orrery_e2e::wait_gone(&apps, "shop").await;
    assert_eq!(
        written().await.unwrap(),
        before,
        "team-a's Deployment or route was written or deleted"
    );

    // In team-a's namespace, a Deployment made by hand holds a name an Application would use.
    create(
        &deployments,
        json!({"metadata": {"name": "web-v1", "labels": {"app": "hand-made"}}, "spec": {"replicas": 0,
            "selector": {"matchLabels": {"app": "hand-made"}},
            "template": {"metadata": {"labels": {"app": "hand-made"}}, "spec": {"containers": [{"name": "c", "image": "mine:1"}]}}}}),
    )
    .await;
    let hand_made = spec_and_writes(&deployments.get("web-v1").await.unwrap());
    create(
        &team_apps,
        json!({"metadata": {"name": "web"}, "spec": {"virtualCluster": team, "versions": [{"name": "v1", "image": "web:1"}]}}),
    )
    .await;
    let message = wait_not_ready(&team_apps, "web", "OwnershipConflict").await;
    assert!(message.contains("Deployment web-v1"), "{message}");
    let now = deployments.get("web-v1").await.unwrap();
    assert_eq!(spec_and_writes(&now), hand_made);
    assert!(!now.labels().contains_key(OWNER_LABEL));
}

/// Case 5: someone allowed only to create Projects templates an existing VirtualCluster, to
/// take it over and delete it (its namespace and data with it) by dropping the template.
#[tokio::test]
async fn a_project_template_does_not_adopt_an_existing_virtual_cluster() {
    let env = start().await;
    let name = env.namespace.clone();
    let cluster = format!("{name}-local");
    local_cluster(&env, &cluster).await;
    let vcs: Api<VirtualCluster> = Api::all(env.client.clone());
    let victim = format!("{name}-victim");
    create(
        &vcs,
        json!({"metadata": {"name": victim}, "spec": {"cluster": cluster, "namespace": victim}}),
    )
    .await;
    wait_ready(&vcs, &victim).await;
    let before = vcs.get(&victim).await.unwrap();

    let mallory = user(
        &env,
        "mallory",
        json!([{"apiGroups": ["hierarchy.orrery.dev"], "resources": ["projects"], "verbs": ["create", "get", "patch"]}]),
        json!([]),
    )
    .await;
    let as_mallory: Api<Project> = Api::all(mallory);
    let project = format!("{name}-grab");
    create(
        &as_mallory,
        json!({"metadata": {"name": project}, "spec": {"templates": {
            "virtualClusters": [{"name": victim, "spec": {"cluster": cluster, "namespace": victim}}]}}}),
    )
    .await;
    let projects: Api<Project> = Api::all(env.client.clone());
    let message = wait_not_ready(&projects, &project, "OwnershipConflict").await;
    assert!(message.contains(&format!("VirtualCluster {victim}")), "{message}");
    let after = vcs.get(&victim).await.unwrap();
    assert_eq!(
        after.resource_version(),
        before.resource_version(),
        "the victim was written"
    );
    assert!(after.owner_references().is_empty());

    // Dropping the template deletes nothing of the victim's.
    let dropped = json!({"spec": {"templates": {"virtualClusters": []}}});
    as_mallory
        .patch(&project, &PatchParams::default(), &Patch::Merge(dropped))
        .await
        .unwrap();
    let generation = projects.get(&project).await.unwrap().metadata.generation;
    poll_until("the Project run at its new generation", Deadline::default(), || async {
        let now = projects.get(&project).await.map_err(|e| e.to_string())?;
        match now.status.as_ref().and_then(|s| s.observed_generation) {
            observed if observed == generation => Ok(()),
            other => Err(format!("observed {other:?} of {generation:?}")),
        }
    })
    .await;
    wait_ready(&projects, &project).await;
    assert_eq!(
        vcs.get(&victim).await.unwrap().resource_version(),
        before.resource_version()
    );
    let namespace = Api::<Namespace>::all(env.client.clone()).get(&victim).await.unwrap();
    let labels: &BTreeMap<String, String> = namespace.labels();
    assert_eq!(labels.get(OWNER_LABEL), before.uid().as_ref());
}
