//! The chart's ValidatingAdmissionPolicies on the real control plane, tried as attackers: an
//! impersonated user holding exactly the rights each case names asks a controller (through an
//! Orrery object) for something it may not do itself, and the API server refuses the object
//! at admission with a message naming the missing right; a user holding the rights succeeds;
//! the controllers' own ServiceAccount is exempt. No controller runs here: what is refused is
//! never stored, so no controller could act on it.

// A test that cannot proceed should stop right there, with the error.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crd_types::{Application, Cluster, Project, StagedBindingPolicy, Task, TaskRun, VirtualCluster};
use k8s_openapi::api::authorization::v1::SubjectAccessReview;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::api::{DynamicObject, Patch, PatchParams, PostParams};
use kube::{Api, Client, Resource};
use orrery_e2e::helm;
use orrery_e2e::{Deadline, TestEnv, apply, poll_until};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

/// The chart's admission policies and their bindings, as `helm template` renders them with the
/// default values (release `orrery` in `orrery-system`).
fn chart_policies() -> Vec<DynamicObject> {
    helm::render::<&str>(&[])
        .unwrap()
        .into_iter()
        .filter(|o| {
            o.types
                .as_ref()
                .is_some_and(|t| t.kind.starts_with("ValidatingAdmissionPolicy"))
        })
        .collect()
}

/// The policy named in a refusal: `orrery-<rule>`.
fn policy(rule: &str) -> String {
    format!("orrery-{rule}")
}

/// Installs the chart's policies (idempotent: every test calls it) and waits until each is
/// enforced: a request it refuses (dry run) is refused. Policies take a moment to load.
async fn install_policies(env: &TestEnv) {
    let policies = chart_policies();
    let kinds: Vec<&str> = policies
        .iter()
        .map(|o| o.types.as_ref().unwrap().kind.as_str())
        .collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "ValidatingAdmissionPolicy").count(),
        9,
        "one policy per rule: {kinds:?}"
    );
    for object in &policies {
        apply(&env.client, object, false).await.unwrap();
    }

    // A prober that may create every Orrery kind and update one namespace, and nothing else:
    // each probe below breaks exactly one policy's rule.
    let prober = grant(
        env,
        "admission-prober",
        json!([
            {"apiGroups": ["hierarchy.orrery.dev"], "resources": ["clusters", "virtualclusters", "projects", "applications"], "verbs": ["create"]},
            {"apiGroups": ["placement.orrery.dev"], "resources": ["stagedbindingpolicies"], "verbs": ["create"]},
            {"apiGroups": ["workflow.orrery.dev"], "resources": ["tasks"], "verbs": ["create"]},
            {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["update"], "resourceNames": ["admission-probe"]},
        ]),
    )
    .await;
    // Pods only in kube-public: there a Task breaks only the rule on Secrets.
    grant_in(
        env,
        &prober,
        "kube-public",
        "pods",
        json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["create"]}]),
    )
    .await;
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let app = json!({"versions": [{"name": "v1", "image": "web:1"}]});
    poll_until("every admission policy to be enforced", Deadline::default(), || {
        let (client, dry_run, app) = (prober.client.clone(), dry_run.clone(), app.clone());
        async move {
            let probes = [
                (
                    "virtualcluster-namespace",
                    create::<VirtualCluster>(
                        Api::all(client.clone()),
                        "probe",
                        json!({"namespace": "kube-system"}),
                        &dry_run,
                    )
                    .await
                    .map(drop),
                ),
                (
                    "virtualcluster-access",
                    create::<VirtualCluster>(
                        Api::all(client.clone()),
                        "probe",
                        json!({"namespace": "admission-probe", "access": [{"kind": "User", "name": "x", "role": "admin"}]}),
                        &dry_run,
                    )
                    .await
                    .map(drop),
                ),
                (
                    "cluster-kubeconfig-secret",
                    create::<Cluster>(
                        Api::all(client.clone()),
                        "probe",
                        json!({"kubeconfigSecretRef": {"namespace": "default", "name": "x", "key": "k"}}),
                        &dry_run,
                    )
                    .await
                    .map(drop),
                ),
                (
                    "application-workloads",
                    create::<Application>(Api::namespaced(client.clone(), "default"), "probe", app, &dry_run)
                        .await
                        .map(drop),
                ),
                (
                    "project-templates",
                    create::<Project>(
                        Api::all(client.clone()),
                        "probe",
                        json!({"templates": {"virtualClusters": [{"name": "probe", "spec": {"namespace": "admission-probe", "access": [{"kind": "User", "name": "x", "role": "view"}]}}]}}),
                        &dry_run,
                    )
                    .await
                    .map(drop),
                ),
                (
                    "lambda-children",
                    create::<Project>(
                        Api::all(client.clone()),
                        "probe",
                        json!({"executor": lambda_executor_making("configmaps", Some("admission-probe"))}),
                        &dry_run,
                    )
                    .await
                    .map(drop),
                ),
                (
                    "stagedbindingpolicy-bindingpolicies",
                    create::<StagedBindingPolicy>(Api::all(client.clone()), "probe", staged_spec(), &dry_run)
                        .await
                        .map(drop),
                ),
                (
                    "task-pods",
                    create::<Task>(Api::namespaced(client.clone(), "default"), "probe", task_spec(), &dry_run)
                        .await
                        .map(drop),
                ),
                (
                    "task-secrets",
                    create::<Task>(
                        Api::namespaced(client.clone(), "kube-public"),
                        "probe",
                        task_posting_a_secret_url(),
                        &dry_run,
                    )
                    .await
                    .map(drop),
                ),
            ];
            let waiting: Vec<String> = probes
                .iter()
                .filter(|(rule, result)| !matches!(result, Err(kube::Error::Api(s)) if s.code == 403 && s.message.contains(&format!("'{}'", policy(rule)))))
                .map(|(rule, result)| format!("{rule}: {result:?}"))
                .collect();
            if waiting.is_empty() { Ok(()) } else { Err(waiting.join("; ")) }
        }
    })
    .await;
}

/// A user of the test and a client acting as them.
struct User {
    name: String,
    client: Client,
}

/// A user named `<test namespace>-<name>` holding `rules` in every namespace, once the
/// authorizer knows it.
async fn grant(env: &TestEnv, name: &str, rules: Value) -> User {
    let user = format!("{}-{name}", env.namespace);
    grant_more(env, &user, &user, rules).await;
    User {
        client: Client::try_from(env.impersonating(&user, &[])).unwrap(),
        name: user,
    }
}

/// Gives `user` `rules` in every namespace (a ClusterRole and ClusterRoleBinding named
/// `role`), once the authorizer knows it.
async fn grant_more(env: &TestEnv, user: &str, role: &str, rules: Value) {
    let cluster_role: ClusterRole = from_json(json!({"metadata": {"name": role}, "rules": rules}));
    Api::<ClusterRole>::all(env.client.clone())
        .create(&PostParams::default(), &cluster_role)
        .await
        .unwrap();
    let binding: ClusterRoleBinding = from_json(json!({
        "metadata": {"name": role},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"kind": "User", "name": user}]
    }));
    Api::<ClusterRoleBinding>::all(env.client.clone())
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    wait_for_rules(env, user, &rules, None).await;
}

/// Gives `user` `rules` in `namespace` too (a Role `<user>-<what>` and its binding).
async fn grant_in(env: &TestEnv, user: &User, namespace: &str, what: &str, rules: Value) {
    let name = format!("{}-{what}", user.name);
    let role: Role = from_json(json!({"metadata": {"name": name}, "rules": rules}));
    Api::<Role>::namespaced(env.client.clone(), namespace)
        .create(&PostParams::default(), &role)
        .await
        .unwrap();
    bind_in(env, user, namespace, "Role", &name).await;
    wait_for_rules(env, &user.name, &rules, Some(namespace)).await;
}

/// Binds the ClusterRole (e.g. `admin`) or Role `role` to `user` in `namespace`.
async fn bind_in(env: &TestEnv, user: &User, namespace: &str, kind: &str, role: &str) {
    let binding: RoleBinding = from_json(json!({
        "metadata": {"name": format!("{}-{}", user.name, role.to_lowercase())},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": role},
        "subjects": [{"kind": "User", "name": user.name}]
    }));
    Api::<RoleBinding>::namespaced(env.client.clone(), namespace)
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
}

/// Waits until the authorizer grants `user` every verb of every rule (RBAC reaches the
/// authorizer's cache a moment after it is written).
async fn wait_for_rules(env: &TestEnv, user: &str, rules: &Value, namespace: Option<&str>) {
    for rule in rules.as_array().unwrap() {
        let strings = |field: &str| -> Vec<String> {
            rule[field]
                .as_array()
                .map(|items| items.iter().map(|i| i.as_str().unwrap().to_owned()).collect())
                .unwrap_or_default()
        };
        let names = strings("resourceNames");
        for verb in strings("verbs") {
            let access = json!({
                "verb": verb, "group": strings("apiGroups")[0], "resource": strings("resources")[0],
                "namespace": namespace.unwrap_or_default(), "name": names.first().cloned().unwrap_or_default(),
            });
            wait_allowed(env, user, access).await;
        }
    }
}

/// Waits until `user` is allowed the SubjectAccessReview `resourceAttributes` `access`.
async fn wait_allowed(env: &TestEnv, user: &str, access: Value) {
    let review: SubjectAccessReview = from_json(json!({"spec": {"user": user, "resourceAttributes": access}}));
    let reviews = Api::<SubjectAccessReview>::all(env.client.clone());
    poll_until(
        &format!("{user} to be allowed {access}"),
        Deadline::default(),
        || async {
            let answer = reviews
                .create(&PostParams::default(), &review)
                .await
                .map_err(|e| e.to_string())?;
            if answer.status.is_some_and(|s| s.allowed) {
                Ok(())
            } else {
                Err("not yet".into())
            }
        },
    )
    .await;
}

fn from_json<T: DeserializeOwned>(value: Value) -> T {
    serde_json::from_value(value).expect("fixture")
}

/// Creates a `K` named `name` with `spec` through `api`.
async fn create<K>(api: Api<K>, name: &str, spec: Value, params: &PostParams) -> Result<K, kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    let object: K = from_json(json!({"metadata": {"name": name}, "spec": spec}));
    api.create(params, &object).await
}

/// `result` is the API server's refusal by policy `orrery-<rule>`, saying `says`.
fn assert_refused<T: std::fmt::Debug>(result: Result<T, kube::Error>, rule: &str, says: &str) {
    match result {
        Err(kube::Error::Api(status))
            if status.code == 403
                && status
                    .message
                    .contains(&format!("ValidatingAdmissionPolicy '{}'", policy(rule)))
                && status.message.contains(says) => {}
        other => panic!("expected {} to refuse with {says:?}, got {other:?}", policy(rule)),
    }
}

/// A refused object was not stored.
async fn assert_not_stored<K>(api: &Api<K>, name: &str)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    let stored = api.get_opt(name).await.unwrap();
    assert!(stored.is_none(), "{} {name} was stored", K::kind(&()));
}

fn staged_spec() -> Value {
    json!({
        "downsync": [{"objectSelectors": [{"matchLabels": {"app": "web"}}]}],
        "stages": [{"name": "dev", "clusterSelectors": [{"matchLabels": {"env": "dev"}}]}],
    })
}

fn task_spec() -> Value {
    json!({"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "main", "image": "busybox"}]}}})
}

#[tokio::test]
async fn a_task_or_taskrun_needs_its_creator_to_create_pods_in_its_namespace() {
    let env = TestEnv::new().await;
    install_policies(&env).await;
    let runner = grant(
        &env,
        "task-maker",
        json!([{"apiGroups": ["workflow.orrery.dev"], "resources": ["tasks", "taskruns"], "verbs": ["create"]}]),
    )
    .await;
    let ns = env.namespace.clone();
    let tasks = Api::<Task>::namespaced(runner.client.clone(), &ns);
    let runs = Api::<TaskRun>::namespaced(runner.client.clone(), &ns);
    let params = PostParams::default();
    assert_refused(
        create(tasks.clone(), "hostile", task_spec(), &params).await,
        "task-pods",
        &format!(
            "Task hostile has task-workflow run pods in namespace {ns}: {} lacks create on pods there",
            runner.name
        ),
    );
    assert_refused(
        create(
            runs.clone(),
            "by-hand",
            json!({"taskRef": {"name": "hostile"}}),
            &params,
        )
        .await,
        "task-pods",
        &format!(
            "TaskRun by-hand has task-workflow run pods in namespace {ns}: {} lacks create on pods there",
            runner.name
        ),
    );
    assert!(
        env.namespaced::<Task>()
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );

    // The legitimate use: with the right to create pods there, the same Task is admitted.
    grant_in(
        &env,
        &runner,
        &ns,
        "pods",
        json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["create"]}]),
    )
    .await;
    create(tasks, "hostile", task_spec(), &params).await.unwrap();
    create(runs, "by-hand", json!({"taskRef": {"name": "hostile"}}), &params)
        .await
        .unwrap();
}

fn task_posting_a_secret_url() -> Value {
    let mut spec = task_spec();
    spec["successActions"] = json!(["event", {"name": "http-post", "parameters":
        {"urlFrom": {"secretKeyRef": {"name": "webhook", "key": "url"}}}}]);
    spec
}

#[tokio::test]
async fn a_task_posting_to_a_url_from_a_secret_needs_its_creator_to_read_secrets_there() {
    let env = TestEnv::new().await;
    install_policies(&env).await;
    let ns = env.namespace.clone();
    let author = grant(
        &env,
        "task-author",
        json!([{"apiGroups": ["workflow.orrery.dev"], "resources": ["tasks"], "verbs": ["create", "update"]},
               {"apiGroups": [""], "resources": ["pods"], "verbs": ["create"]}]),
    )
    .await;
    let tasks = Api::<Task>::namespaced(author.client.clone(), &ns);
    let params = PostParams::default();
    assert_refused(
        create(tasks.clone(), "notify", task_posting_a_secret_url(), &params).await,
        "task-secrets",
        &format!(
            "Task notify has task-workflow read a Secret in namespace {ns} for an http-post URL: {} lacks get on secrets there",
            author.name
        ),
    );
    // A literal URL, or no http-post, reads no Secret: admitted.
    let mut literal = task_spec();
    literal["successActions"] = json!([{"name": "http-post", "parameters": {"url": "http://hooks.example/x"}}]);
    create(tasks.clone(), "literal", literal, &params).await.unwrap();

    // The legitimate use: with the right to read Secrets there, the same Task is admitted.
    grant_in(
        &env,
        &author,
        &ns,
        "secrets",
        json!([{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]),
    )
    .await;
    create(tasks, "notify", task_posting_a_secret_url(), &params)
        .await
        .unwrap();
}

fn application_spec() -> Value {
    json!({"versions": [{"name": "v1", "image": "web:1"}]})
}

#[tokio::test]
async fn a_virtualcluster_cannot_take_a_namespace_its_creator_may_not_update() {
    let env = TestEnv::new().await;
    install_policies(&env).await;
    let mallory = grant(
        &env,
        "mallory",
        json!([{"apiGroups": ["hierarchy.orrery.dev"], "resources": ["virtualclusters"], "verbs": ["create", "get", "update", "patch"]}]),
    )
    .await;
    let as_mallory = Api::<VirtualCluster>::all(mallory.client.clone());
    let name = format!("{}-takeover", env.namespace);

    // Naming kube-system as its namespace, and naming the VirtualCluster after an existing
    // namespace (the default when spec.namespace is absent).
    let refused = create(
        as_mallory.clone(),
        &name,
        json!({"namespace": "kube-system"}),
        &PostParams::default(),
    )
    .await;
    assert_refused(
        refused,
        "virtualcluster-namespace",
        &format!(
            "VirtualCluster {name} takes namespace kube-system as its own (quota, limits, network policy, access): {} lacks update on namespaces/kube-system",
            mallory.name
        ),
    );
    let refused = create(as_mallory.clone(), &env.namespace, json!({}), &PostParams::default()).await;
    assert_refused(
        refused,
        "virtualcluster-namespace",
        &format!("{} lacks update on namespaces/{}", mallory.name, env.namespace),
    );
    let admin_view = Api::<VirtualCluster>::all(env.client.clone());
    assert_not_stored(&admin_view, &name).await;

    // An existing VirtualCluster (a platform admin's) cannot be moved onto a namespace either,
    // while a change that moves nothing (a label) needs no right on the namespace.
    let owned = format!("{}-owned", env.namespace);
    create(
        admin_view.clone(),
        &owned,
        json!({"namespace": owned}),
        &PostParams::default(),
    )
    .await
    .unwrap();
    let moved = as_mallory
        .patch(
            &owned,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"namespace": "kube-system"}})),
        )
        .await;
    assert_refused(
        moved,
        "virtualcluster-namespace",
        &format!("{} lacks update on namespaces/kube-system", mallory.name),
    );
    as_mallory
        .patch(
            &owned,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"team": "a"}}})),
        )
        .await
        .unwrap();
    let stored = admin_view.get(&owned).await.unwrap();
    assert_eq!(
        stored.spec.namespace.as_deref(),
        Some(owned.as_str()),
        "the namespace is untouched"
    );

    // Given update on that one namespace (and only it), the same user may take it.
    let mine = format!("{}-mine", env.namespace);
    grant_more(
        &env,
        &mallory.name,
        &format!("{}-own-namespace", mallory.name),
        json!([{"apiGroups": [""], "resources": ["namespaces"], "verbs": ["update"], "resourceNames": [mine]}]),
    )
    .await;
    create(as_mallory, &mine, json!({"namespace": mine}), &PostParams::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn a_virtualcluster_cannot_grant_a_role_its_creator_may_not_bind() {
    let env = TestEnv::new().await;
    install_policies(&env).await;
    let team = format!("{}-team", env.namespace);
    // Mallory may create VirtualClusters and manage the one namespace, but not bind `admin`.
    let mallory = grant(
        &env,
        "mallory",
        json!([
            {"apiGroups": ["hierarchy.orrery.dev"], "resources": ["virtualclusters"], "verbs": ["create"]},
            {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["update"], "resourceNames": [team]},
        ]),
    )
    .await;
    let spec = |who: &str| {
        json!({"namespace": team, "quota": {"pods": "10"},
               "access": [{"kind": "User", "name": who, "role": "admin"}, {"kind": "Group", "name": "readers", "role": "view"}]})
    };
    let refused = create(
        Api::<VirtualCluster>::all(mallory.client.clone()),
        &team,
        spec(&mallory.name),
        &PostParams::default(),
    )
    .await;
    assert_refused(
        refused,
        "virtualcluster-access",
        &format!(
            "VirtualCluster {team} grants the ClusterRole admin in namespace {team} (spec.access): {} lacks bind on clusterroles/admin in namespace {team}",
            mallory.name
        ),
    );
    // `view` alone is no better without `bind` on it.
    let refused = create(
        Api::<VirtualCluster>::all(mallory.client.clone()),
        &team,
        json!({"namespace": team, "access": [{"kind": "User", "name": mallory.name, "role": "view"}]}),
        &PostParams::default(),
    )
    .await;
    assert_refused(
        refused,
        "virtualcluster-access",
        &format!("{} lacks bind on clusterroles/view in namespace {team}", mallory.name),
    );
    assert_not_stored(&Api::<VirtualCluster>::all(env.client.clone()), &team).await;

    // A platform admin (create VirtualClusters, manage namespaces, bind admin and view; not
    // system:masters) creates the same VirtualCluster granting access to a team.
    let platform = grant(
        &env,
        "platform",
        json!([
            {"apiGroups": ["hierarchy.orrery.dev"], "resources": ["virtualclusters"], "verbs": ["create"]},
            {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["update"]},
            {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["clusterroles"], "verbs": ["bind"], "resourceNames": ["admin", "view"]},
        ]),
    )
    .await;
    wait_allowed(
        &env,
        &platform.name,
        json!({"verb": "bind", "group": "rbac.authorization.k8s.io", "resource": "clusterroles", "name": "view"}),
    )
    .await;
    let created = create(
        Api::<VirtualCluster>::all(platform.client.clone()),
        &team,
        spec("alice"),
        &PostParams::default(),
    )
    .await
    .unwrap();
    assert_eq!(created.spec.access.len(), 2);
}

#[tokio::test]
async fn a_cluster_cannot_name_a_secret_its_creator_may_not_read() {
    let env = TestEnv::new().await;
    install_policies(&env).await;
    // The victim's kubeconfig Secret, in the test namespace.
    let secret: Secret = from_json(
        json!({"metadata": {"name": "kubeconfig"}, "stringData": {"value": "apiVersion: v1\nkind: Config\n"}}),
    );
    env.namespaced::<Secret>()
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let mallory = grant(
        &env,
        "mallory",
        json!([{"apiGroups": ["hierarchy.orrery.dev"], "resources": ["clusters"], "verbs": ["create"]}]),
    )
    .await;
    let name = format!("{}-stolen", env.namespace);
    let refused = create(
        Api::<Cluster>::all(mallory.client.clone()),
        &name,
        json!({"kubeconfigSecretRef": {"namespace": env.namespace, "name": "kubeconfig", "key": "value"}}),
        &PostParams::default(),
    )
    .await;
    assert_refused(
        refused,
        "cluster-kubeconfig-secret",
        &format!(
            "Cluster {name} has hierarchy-executor read Secret kubeconfig (spec.kubeconfigSecretRef): {} lacks get on secrets/kubeconfig in namespace {}",
            mallory.name, env.namespace
        ),
    );
    // Without a namespace the Secret could be anyone's: reading it would need every namespace.
    let refused = create(
        Api::<Cluster>::all(mallory.client.clone()),
        &name,
        json!({"kubeconfigSecretRef": {"name": "kubeconfig", "key": "value"}}),
        &PostParams::default(),
    )
    .await;
    assert_refused(
        refused,
        "cluster-kubeconfig-secret",
        &format!("{} lacks get on secrets/kubeconfig in every namespace", mallory.name),
    );
    // The local cluster (no Secret) needs no more than `create`.
    create(
        Api::<Cluster>::all(mallory.client.clone()),
        &format!("{}-local", env.namespace),
        json!({}),
        &PostParams::default(),
    )
    .await
    .unwrap();

    // The Secret's owner (who may read it) points a Cluster at it.
    let owner = grant(
        &env,
        "owner",
        json!([{"apiGroups": ["hierarchy.orrery.dev"], "resources": ["clusters"], "verbs": ["create"]}]),
    )
    .await;
    grant_in(
        &env,
        &owner,
        &env.namespace,
        "secret",
        json!([{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"], "resourceNames": ["kubeconfig"]}]),
    )
    .await;
    create(
        Api::<Cluster>::all(owner.client.clone()),
        &name,
        json!({"kubeconfigSecretRef": {"namespace": env.namespace, "name": "kubeconfig", "key": "value"}}),
        &PostParams::default(),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn an_application_needs_its_creator_to_create_its_workloads_there() {
    let env = TestEnv::new().await;
    install_policies(&env).await;
    // Mallory may create Applications in the team's namespace, but not Deployments or Services.
    let mallory = grant(&env, "mallory", json!([])).await;
    grant_in(
        &env,
        &mallory,
        &env.namespace,
        "applications",
        json!([{"apiGroups": ["hierarchy.orrery.dev"], "resources": ["applications"], "verbs": ["create", "update", "patch"]}]),
    )
    .await;
    let refused = create(
        Api::<Application>::namespaced(mallory.client.clone(), &env.namespace),
        "shop",
        application_spec(),
        &PostParams::default(),
    )
    .await;
    assert_refused(
        refused,
        "application-workloads",
        &format!(
            "Application shop has hierarchy-executor create Deployments in namespace {ns}: {} lacks create on deployments.apps in namespace {ns}",
            mallory.name,
            ns = env.namespace
        ),
    );
    // With Deployments but not Services, the message names Services.
    grant_in(
        &env,
        &mallory,
        &env.namespace,
        "deployments",
        json!([{"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["create"]}]),
    )
    .await;
    let refused = create(
        Api::<Application>::namespaced(mallory.client.clone(), &env.namespace),
        "shop",
        application_spec(),
        &PostParams::default(),
    )
    .await;
    assert_refused(
        refused,
        "application-workloads",
        &format!(
            "{} lacks create on services in namespace {}",
            mallory.name, env.namespace
        ),
    );
    let apps = env.namespaced::<Application>();
    assert_not_stored(&apps, "shop").await;

    // The tenant: `admin` in its namespace (Deployments, Services, ...) and `create` on
    // Applications there, creates its own Application. This control plane runs no ClusterRole
    // aggregation, so `admin` is bound as the roles it aggregates.
    let alice = grant(&env, "alice", json!([])).await;
    for part in ["admin", "edit", "view"] {
        bind_in(
            &env,
            &alice,
            &env.namespace,
            "ClusterRole",
            &format!("system:aggregate-to-{part}"),
        )
        .await;
    }
    for (group, resource) in [("apps", "deployments"), ("", "services")] {
        let access = json!({"verb": "create", "group": group, "resource": resource, "namespace": env.namespace});
        wait_allowed(&env, &alice.name, access).await;
    }
    grant_in(
        &env,
        &alice,
        &env.namespace,
        "applications",
        json!([{"apiGroups": ["hierarchy.orrery.dev"], "resources": ["applications"], "verbs": ["create"]}]),
    )
    .await;
    create(
        Api::<Application>::namespaced(alice.client.clone(), &env.namespace),
        "shop",
        application_spec(),
        &PostParams::default(),
    )
    .await
    .unwrap();

    // Mallory may still pause it (metadata makes no workload), but not change its versions.
    let as_mallory = Api::<Application>::namespaced(mallory.client.clone(), &env.namespace);
    as_mallory
        .patch(
            "shop",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"hierarchy.orrery.dev/pause": "true"}}})),
        )
        .await
        .unwrap();
    let changed = as_mallory
        .patch(
            "shop",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"versions": [{"name": "v1", "image": "evil:1"}]}})),
        )
        .await;
    assert_refused(
        changed,
        "application-workloads",
        &format!(
            "{} lacks create on services in namespace {}",
            mallory.name, env.namespace
        ),
    );
    let stored = apps.get("shop").await.unwrap();
    assert_eq!(
        stored.spec.versions[0].image, "web:1",
        "the tenant's Application is untouched"
    );
}

/// A `webhook` executor making `resource` (core group), its children in `namespace` (for
/// the cluster-scoped kinds).
fn lambda_executor_making(resource: &str, namespace: Option<&str>) -> Value {
    let mut parameters =
        json!({"url": "http://hook.example/sync", "childResources": [{"apiVersion": "v1", "resource": resource}]});
    if let Some(namespace) = namespace {
        parameters["namespace"] = json!(namespace);
    }
    json!({"name": "webhook", "parameters": parameters})
}

#[tokio::test]
async fn a_lambda_executor_makes_only_what_its_creator_could_create() {
    let env = TestEnv::new().await;
    install_policies(&env).await;
    let ns = env.namespace.clone();
    // Mallory may create Applications and their workloads in the team's namespace, and
    // Projects with Application templates anywhere; not ConfigMaps or Secrets.
    let mallory = grant(
        &env,
        "mallory",
        json!([
            {"apiGroups": ["hierarchy.orrery.dev"], "resources": ["projects", "applications"], "verbs": ["create", "patch"]},
            {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["create"]},
            {"apiGroups": [""], "resources": ["services"], "verbs": ["create"]},
        ]),
    )
    .await;
    let m = mallory.name.clone();
    let apps = Api::<Application>::namespaced(mallory.client.clone(), &ns);
    let with_executor = |resource: &str| {
        let mut spec = application_spec();
        spec["executor"] = lambda_executor_making(resource, None);
        spec
    };
    let refused = create(
        apps.clone(),
        "shop",
        with_executor("configmaps"),
        &PostParams::default(),
    )
    .await;
    assert_refused(
        refused,
        "lambda-children",
        &format!(
            "Application shop has lambda-executor create configmaps in namespace {ns} (spec.executor.parameters.childResources): {m} lacks create on configmaps in namespace {ns}"
        ),
    );
    assert_not_stored(&env.namespaced::<Application>(), "shop").await;

    // In a Project's templates the kind is needed everywhere.
    let refused = create_project(
        &mallory,
        &format!("{ns}-p"),
        json!({"applications": [{"name": "web", "namespace": ns, "spec": with_executor("secrets")}]}),
        &PostParams::default(),
    )
    .await;
    assert_refused(
        refused,
        "project-templates",
        &format!(
            "Project {ns}-p has templates whose webhook or template executor makes secrets (childResources): {m} lacks create on secrets in every namespace"
        ),
    );

    // With ConfigMaps granted in the namespace, the Application is admitted; switching its
    // executor to making Secrets is not.
    grant_in(
        &env,
        &mallory,
        &ns,
        "configmaps",
        json!([{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create"]}]),
    )
    .await;
    create(
        apps.clone(),
        "shop",
        with_executor("configmaps"),
        &PostParams::default(),
    )
    .await
    .unwrap();
    let changed = apps
        .patch(
            "shop",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"executor": lambda_executor_making("secrets", None)}})),
        )
        .await;
    assert_refused(
        changed,
        "lambda-children",
        &format!("{m} lacks create on secrets in namespace {ns}"),
    );
}

/// A Project named `name` with `templates`.
async fn create_project(
    user: &User,
    name: &str,
    templates: Value,
    params: &PostParams,
) -> Result<Project, kube::Error> {
    create(
        Api::<Project>::all(user.client.clone()),
        name,
        json!({"templates": templates}),
        params,
    )
    .await
}

#[tokio::test]
async fn a_projects_templates_ask_nothing_its_creator_could_not_do_directly() {
    let env = TestEnv::new().await;
    install_policies(&env).await;
    let secret: Secret = from_json(json!({"metadata": {"name": "kubeconfig"}, "stringData": {"value": "x"}}));
    env.namespaced::<Secret>()
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let own = format!("{}-own", env.namespace);
    // Mallory may create every hierarchy kind and manage one namespace of her own; nothing else.
    let mallory = grant(
        &env,
        "mallory",
        json!([
            {"apiGroups": ["hierarchy.orrery.dev"], "resources": ["projects", "clusters", "virtualclusters", "applications"], "verbs": ["create"]},
            {"apiGroups": ["hierarchy.orrery.dev"], "resources": ["projects"], "verbs": ["patch"]},
            {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["update"], "resourceNames": [own]},
        ]),
    )
    .await;
    let project = format!("{}-p", env.namespace);
    let m = &mallory.name;
    let ns = &env.namespace;
    let vc_in = |namespace: &str| json!({"name": "team", "spec": {"cluster": "local", "namespace": namespace}});
    let cases = [
        (
            json!({"virtualClusters": [vc_in("kube-system")]}),
            format!(
                "Project {project} has a VirtualCluster template taking namespace kube-system as its own: {m} lacks update on namespaces/kube-system"
            ),
        ),
        (
            json!({"virtualClusters": [{"name": "team", "spec": {"cluster": "local", "namespace": own, "access": [{"kind": "User", "name": m, "role": "admin"}]}}]}),
            format!(
                "Project {project} has VirtualCluster templates granting the ClusterRole admin: {m} lacks bind on clusterroles/admin in every namespace"
            ),
        ),
        (
            json!({"clusters": [{"name": "remote", "spec": {"kubeconfigSecretRef": {"namespace": ns, "name": "kubeconfig", "key": "value"}}}]}),
            format!(
                "Project {project} has a Cluster template reading Secret kubeconfig (kubeconfigSecretRef): {m} lacks get on secrets/kubeconfig in namespace {ns}"
            ),
        ),
        (
            json!({"virtualClusters": [vc_in(&own)], "applications": [{"name": "web", "namespace": ns, "spec": application_spec()}]}),
            format!(
                "Project {project} has hierarchy-executor create Deployments in namespace {ns} from its Application templates: {m} lacks create on deployments.apps in namespace {ns}"
            ),
        ),
        // An Application template without a namespace lands in its VirtualCluster's.
        (
            json!({"virtualClusters": [vc_in(&own)], "applications": [{"name": "web", "spec": application_spec()}]}),
            format!("{m} lacks create on deployments.apps in namespace {own}"),
        ),
    ];
    for (templates, says) in cases {
        let refused = create_project(&mallory, &project, templates.clone(), &PostParams::default()).await;
        assert_refused(refused, "project-templates", &says);
    }
    assert_not_stored(&Api::<Project>::all(env.client.clone()), &project).await;

    // Without `create` on a templated kind, the Project may not create it either.
    let nobody = grant(
        &env,
        "projects-only",
        json!([{"apiGroups": ["hierarchy.orrery.dev"], "resources": ["projects"], "verbs": ["create"]}]),
    )
    .await;
    let refused = create_project(
        &nobody,
        &project,
        json!({"virtualClusters": [vc_in(&own)]}),
        &PostParams::default(),
    )
    .await;
    assert_refused(
        refused,
        "project-templates",
        &format!(
            "Project {project} has hierarchy-executor create VirtualClusters from its templates: {} lacks create on virtualclusters.hierarchy.orrery.dev",
            nobody.name
        ),
    );

    // Mallory's own Project (her namespace, no access, no Secret, no Application) is admitted;
    // she may label it, but not change its templates into an attack.
    create_project(
        &mallory,
        &project,
        json!({"virtualClusters": [vc_in(&own)]}),
        &PostParams::default(),
    )
    .await
    .unwrap();
    let as_mallory = Api::<Project>::all(mallory.client.clone());
    as_mallory
        .patch(
            &project,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"team": "a"}}})),
        )
        .await
        .unwrap();
    let changed = as_mallory
        .patch(
            &project,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"templates": {"virtualClusters": [vc_in("kube-system")]}}})),
        )
        .await;
    assert_refused(
        changed,
        "project-templates",
        &format!("{m} lacks update on namespaces/kube-system"),
    );
    let stored = Api::<Project>::all(env.client.clone()).get(&project).await.unwrap();
    assert_eq!(
        stored.spec.templates.unwrap().virtual_clusters[0]
            .spec
            .namespace
            .as_deref(),
        Some(own.as_str())
    );

    // A platform admin holding every right creates a Project whose templates use them all.
    let platform = grant(&env, "platform", platform_rules()).await;
    create_project(
        &platform,
        &format!("{}-platform", env.namespace),
        json!({
            "clusters": [{"name": "remote", "spec": {"kubeconfigSecretRef": {"namespace": ns, "name": "kubeconfig", "key": "value"}}}],
            "virtualClusters": [{"name": "team", "spec": {"namespace": own, "access": [{"kind": "User", "name": "alice", "role": "admin"}, {"kind": "Group", "name": "readers", "role": "view"}]}}],
            "applications": [{"name": "web", "spec": application_spec()}, {"name": "api", "namespace": ns, "spec": application_spec()}],
        }),
        &PostParams::default(),
    )
    .await
    .unwrap();
}

/// Everything a Project's templates may ask, in every namespace: a platform admin's rights
/// (not system:masters).
fn platform_rules() -> Value {
    json!([
        {"apiGroups": ["hierarchy.orrery.dev"], "resources": ["projects", "clusters", "virtualclusters", "applications"], "verbs": ["create"]},
        {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["update"]},
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["services"], "verbs": ["create"]},
        {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["create"]},
        {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["clusterroles"], "verbs": ["bind"], "resourceNames": ["admin", "view"]},
    ])
}

#[tokio::test]
async fn a_project_spanning_many_namespaces_needs_the_rights_in_every_namespace() {
    let env = TestEnv::new().await;
    install_policies(&env).await;
    let namespaces: Vec<String> = (0..5).map(|i| format!("{}-n{i}", env.namespace)).collect();
    // Update on each of five namespaces, by name: enough for four VirtualCluster templates,
    // checked one by one, but five are checked as "every namespace".
    let mallory = grant(
        &env,
        "mallory",
        json!([
            {"apiGroups": ["hierarchy.orrery.dev"], "resources": ["projects", "virtualclusters"], "verbs": ["create"]},
            {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["update"], "resourceNames": namespaces},
        ]),
    )
    .await;
    for namespace in &namespaces {
        wait_allowed(
            &env,
            &mallory.name,
            json!({"verb": "update", "resource": "namespaces", "name": namespace}),
        )
        .await;
    }
    let templates = |count: usize| {
        let vcs: Vec<Value> = namespaces[..count]
            .iter()
            .map(|n| json!({"name": n, "spec": {"cluster": "local", "namespace": n}}))
            .collect();
        json!({"virtualClusters": vcs})
    };
    let project = format!("{}-wide", env.namespace);
    let refused = create_project(&mallory, &project, templates(5), &PostParams::default()).await;
    assert_refused(
        refused,
        "project-templates",
        &format!(
            "Project {project} has VirtualCluster templates taking more than 4 namespaces: {} lacks update on every namespace",
            mallory.name
        ),
    );
    create_project(&mallory, &project, templates(4), &PostParams::default())
        .await
        .unwrap();

    // The largest Project the schema allows (64 Clusters, 256 VirtualClusters of 64 access
    // entries, 1024 Applications), every per-item check used, stays within the API server's
    // CEL cost budget: a platform admin's is admitted (dry run), not refused for cost.
    let platform = grant(&env, "platform", platform_rules()).await;
    let ns = &env.namespace;
    let clusters: Vec<Value> = (0..64)
        .map(|i| json!({"name": format!("c{i}"), "spec": {"kubeconfigSecretRef": {"namespace": ns, "name": format!("kubeconfig-{}", i % 2), "key": "value"}}}))
        .collect();
    let access: Vec<Value> = (0..64)
        .map(|i| json!({"kind": "User", "name": format!("u{i}"), "role": if i % 2 == 0 { "admin" } else { "view" }}))
        .collect();
    let vcs: Vec<Value> = (0..256)
        .map(|i| json!({"name": format!("vc{i}"), "spec": {"cluster": "c0", "namespace": namespaces[i % 4], "access": access}}))
        .collect();
    let apps: Vec<Value> = (0..1024)
        .map(|i| json!({"name": format!("app{i}"), "spec": {"virtualCluster": format!("vc{}", i % 256), "versions": [{"name": "v1", "image": "web:1"}]}}))
        .collect();
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    create_project(
        &platform,
        &format!("{}-largest", env.namespace),
        json!({"clusters": clusters, "virtualClusters": vcs, "applications": apps}),
        &dry_run,
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn a_staged_binding_policy_needs_its_creator_to_create_binding_policies() {
    let env = TestEnv::new().await;
    install_policies(&env).await;
    let mallory = grant(
        &env,
        "mallory",
        json!([{"apiGroups": ["placement.orrery.dev"], "resources": ["stagedbindingpolicies"], "verbs": ["create"]}]),
    )
    .await;
    let name = format!("{}-hijack", env.namespace);
    let refused = create(
        Api::<StagedBindingPolicy>::all(mallory.client.clone()),
        &name,
        staged_spec(),
        &PostParams::default(),
    )
    .await;
    assert_refused(
        refused,
        "stagedbindingpolicy-bindingpolicies",
        &format!(
            "StagedBindingPolicy {name} has staged-binding create a BindingPolicy per stage: {} lacks create on bindingpolicies.control.kubestellar.io",
            mallory.name
        ),
    );
    assert_not_stored(&Api::<StagedBindingPolicy>::all(env.client.clone()), &name).await;

    // Whoever may create BindingPolicies directly may have them created in stages.
    let placer = grant(
        &env,
        "placer",
        json!([
            {"apiGroups": ["placement.orrery.dev"], "resources": ["stagedbindingpolicies"], "verbs": ["create"]},
            {"apiGroups": ["control.kubestellar.io"], "resources": ["bindingpolicies"], "verbs": ["create"]},
        ]),
    )
    .await;
    create(
        Api::<StagedBindingPolicy>::all(placer.client.clone()),
        &name,
        staged_spec(),
        &PostParams::default(),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn the_controllers_own_service_account_is_exempt_and_no_other() {
    let env = TestEnv::new().await;
    install_policies(&env).await;
    // hierarchy-executor's ClusterRole as the chart renders it: it may create VirtualClusters
    // and bind admin, but holds `patch` on namespaces, not `update`, so the namespace rule
    // would refuse it were it not exempt.
    let rules = helm::render(&helm::only("hierarchy-executor"))
        .unwrap()
        .into_iter()
        .find(|o| o.types.as_ref().is_some_and(|t| t.kind == "ClusterRole"))
        .unwrap()
        .data["rules"]
        .clone();
    let role = format!("{}-executor", env.namespace);
    let cluster_role: ClusterRole = from_json(json!({"metadata": {"name": role}, "rules": rules}));
    Api::<ClusterRole>::all(env.client.clone())
        .create(&PostParams::default(), &cluster_role)
        .await
        .unwrap();
    // The ServiceAccount the exemption names, and an impostor with the very same rules.
    let binding: ClusterRoleBinding = from_json(json!({
        "metadata": {"name": role},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [
            {"kind": "ServiceAccount", "name": "hierarchy-executor", "namespace": helm::NAMESPACE},
            {"kind": "ServiceAccount", "name": "impostor", "namespace": helm::NAMESPACE},
        ]
    }));
    Api::<ClusterRoleBinding>::all(env.client.clone())
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    let as_account = |name: &str| {
        let user = format!("system:serviceaccount:{}:{name}", helm::NAMESPACE);
        let groups = [
            "system:serviceaccounts",
            &format!("system:serviceaccounts:{}", helm::NAMESPACE),
            "system:authenticated",
        ];
        (
            user.clone(),
            Client::try_from(env.impersonating(&user, &groups)).unwrap(),
        )
    };
    let (executor, executor_client) = as_account("hierarchy-executor");
    let (impostor, impostor_client) = as_account("impostor");
    for user in [&executor, &impostor] {
        let access = json!({"verb": "create", "group": "hierarchy.orrery.dev", "resource": "virtualclusters"});
        wait_allowed(&env, user, access).await;
    }
    let name = format!("{}-exempt", env.namespace);
    let spec = json!({"namespace": name, "access": [{"kind": "User", "name": "alice", "role": "admin"}]});
    let refused = create(
        Api::<VirtualCluster>::all(impostor_client),
        &name,
        spec.clone(),
        &PostParams::default(),
    )
    .await;
    assert_refused(
        refused,
        "virtualcluster-namespace",
        &format!("{impostor} lacks update on namespaces/{name}"),
    );
    create(
        Api::<VirtualCluster>::all(executor_client),
        &name,
        spec,
        &PostParams::default(),
    )
    .await
    .unwrap();
}
