//! The controllers' RBAC as the Helm chart renders it (and the kustomize bases hold), on the
//! real control plane, both ways: each controller runs its scenario as its ServiceAccount with
//! exactly those rules (enough), and writes it has no business doing are forbidden (not too
//! much). The rendered objects also pass the API server's validation (server-side dry run).

// A test that cannot proceed should stop right there, with the error.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crd_types::workflow::{Ignitor, Task, TaskRun, TaskRunPhase};
use k8s_openapi::api::authorization::v1::SubjectAccessReview;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use orrery_e2e::helm;
use orrery_e2e::pod_simulator::PodSimulator;
use orrery_e2e::{Deadline, InProcess, TestEnv, apply, poll_until};
use serde_json::json;

/// The controller's objects as the chart renders them with only it enabled (what its
/// kustomize base holds too).
fn chart(controller: &str) -> Vec<DynamicObject> {
    orrery_e2e::yaml_objects(&helm::controller_only(controller).unwrap()).unwrap()
}

/// Binds the chart's ClusterRole rules to ServiceAccount `controller` in the test
/// namespace, and returns a client acting as that ServiceAccount.
async fn as_service_account(env: &TestEnv, controller: &str) -> Client {
    let role = chart(controller)
        .into_iter()
        .find(|o| o.types.as_ref().is_some_and(|t| t.kind == "ClusterRole"))
        .unwrap();
    let name = format!("{}-{controller}", env.namespace);
    let cluster_role: ClusterRole =
        serde_json::from_value(json!({"metadata": {"name": name}, "rules": role.data["rules"]})).unwrap();
    Api::<ClusterRole>::all(env.client.clone())
        .create(&PostParams::default(), &cluster_role)
        .await
        .unwrap();
    let binding: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": controller, "namespace": env.namespace}]
    }))
    .unwrap();
    Api::<ClusterRoleBinding>::all(env.client.clone())
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    let user = format!("system:serviceaccount:{}:{controller}", env.namespace);
    let groups = [
        "system:serviceaccounts",
        &format!("system:serviceaccounts:{}", env.namespace),
        "system:authenticated",
    ];
    let client = Client::try_from(env.impersonating(&user, &groups)).unwrap();
    // RBAC changes take a moment to reach the authorizer's cache: wait until its first rule
    // is in force.
    let rule = &role.data["rules"][0];
    let (group, resource, verb) = (
        rule["apiGroups"][0].as_str().unwrap().to_owned(),
        rule["resources"][0].as_str().unwrap().to_owned(),
        rule["verbs"][0].as_str().unwrap().to_owned(),
    );
    poll_until("the binding to take effect", Deadline::default(), || async {
        if allowed(env, &user, &verb, &group, &resource, &env.namespace).await {
            Ok(())
        } else {
            Err("not yet".into())
        }
    })
    .await;
    client
}

async fn cleanup(env: &TestEnv, controller: &str) {
    let name = format!("{}-{controller}", env.namespace);
    let _ = Api::<ClusterRoleBinding>::all(env.client.clone())
        .delete(&name, &DeleteParams::default())
        .await;
    let _ = Api::<ClusterRole>::all(env.client.clone())
        .delete(&name, &DeleteParams::default())
        .await;
}

fn forbidden<T: std::fmt::Debug>(result: Result<T, kube::Error>, what: &str) {
    match result {
        Err(kube::Error::Api(status)) if status.code == 403 => {}
        other => panic!("{what} should be forbidden, got {other:?}"),
    }
}

/// Would `user` be allowed `verb` on `resource` in `namespace`?
async fn allowed(env: &TestEnv, user: &str, verb: &str, group: &str, resource: &str, namespace: &str) -> bool {
    let review: SubjectAccessReview = serde_json::from_value(json!({
        "spec": {"user": user, "groups": ["system:serviceaccounts", "system:authenticated"],
                 "resourceAttributes": {"verb": verb, "group": group, "resource": resource, "namespace": namespace}}
    }))
    .unwrap();
    let answer = Api::<SubjectAccessReview>::all(env.client.clone())
        .create(&PostParams::default(), &review)
        .await
        .unwrap();
    answer.status.is_some_and(|s| s.allowed)
}

#[tokio::test]
async fn each_controller_runs_with_its_own_rbac_and_no_more() {
    let env = TestEnv::new().await;
    let _kubelet = PodSimulator::start(env.client.clone(), Some(&env.namespace))
        .await
        .unwrap();
    let scheduler_client = as_service_account(&env, "ignitor-scheduler").await;
    let workflow_client = as_service_account(&env, "task-workflow").await;
    let scheduler = InProcess::start(
        scheduler_client.clone(),
        &env.namespace,
        "ignitor-scheduler",
        ignitor_scheduler::run,
    );
    let workflow = InProcess::start(
        workflow_client.clone(),
        &env.namespace,
        "task-workflow",
        task_workflow::run,
    );

    // Enough: an Ignitor fires, its Task runs a pod, an Event action runs, a Secret is read
    // for an http-post URL (the POST itself is refused: loopback is not an allowed egress),
    // and the history limit deletes the older run.
    let secret: Secret =
        serde_json::from_value(json!({"metadata": {"name": "hook"}, "stringData": {"url": "http://127.0.0.1:9/"}}))
            .unwrap();
    env.namespaced::<Secret>()
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let ignitor: Ignitor =
        serde_json::from_value(json!({"metadata": {"name": "go"}, "spec": {"scheduled": "NOW"}})).unwrap();
    env.namespaced::<Ignitor>()
        .create(&PostParams::default(), &ignitor)
        .await
        .unwrap();
    let task: Task = serde_json::from_value(json!({"metadata": {"name": "job"}, "spec": {
        "startOnIgnition": ["go"],
        "successfulRunsHistoryLimit": 1,
        "template": {"spec": {"containers": [{"name": "main", "image": "busybox"}]}},
        "successActions": ["event", {"name": "http-post", "parameters": {"urlFrom": {"secretKeyRef": {"name": "hook", "key": "url"}}, "retries": 0, "timeoutSeconds": 1}}]
    }}))
    .unwrap();
    env.namespaced::<Task>()
        .create(&PostParams::default(), &task)
        .await
        .unwrap();
    let fired = poll_until("the first run to finish", Deadline::default(), || async {
        let runs = env
            .namespaced::<TaskRun>()
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?
            .items;
        runs.into_iter()
            .find(|r| {
                r.status
                    .as_ref()
                    .is_some_and(|s| s.phase == Some(TaskRunPhase::Succeeded) && s.handed_off)
            })
            .ok_or_else(|| "not yet".to_string())
    })
    .await;
    let results = fired.status.clone().unwrap().action_results;
    assert_eq!(results[0].outcome, "Succeeded", "{results:?}");
    let post = results[1].message.clone().unwrap_or_default();
    assert_eq!(
        post,
        "egress to the host of the URL from Secret hook key url is not allowed: it is a loopback address; list it in --allowed-egress",
        "the URL came from the Secret, and is not shown"
    );
    let patch = json!({"metadata": {"annotations": {crd_types::workflow::FIRE_ANNOTATION: "2"}}});
    env.namespaced::<Ignitor>()
        .patch("go", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    poll_until("the older run to be pruned", Deadline::default(), || async {
        let status = env
            .namespaced::<Task>()
            .get("job")
            .await
            .map_err(|e| e.to_string())?
            .status
            .unwrap_or_default();
        let runs = env
            .namespaced::<TaskRun>()
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?
            .items;
        if status.success_count == 2 && runs.len() == 1 {
            Ok(())
        } else {
            Err(format!("{} runs, {} successes", runs.len(), status.success_count))
        }
    })
    .await;

    // No more: writes outside each controller's job are refused.
    let ns = env.namespace.clone();
    forbidden(
        Api::<Task>::namespaced(workflow_client.clone(), &ns)
            .delete("job", &DeleteParams::default())
            .await,
        "task-workflow deleting a Task",
    );
    forbidden(
        Api::<Secret>::namespaced(workflow_client.clone(), &ns)
            .create(&PostParams::default(), &secret)
            .await,
        "task-workflow creating a Secret",
    );
    let status_patch = Patch::Merge(json!({"status": {"ignitionsCount": 99}}));
    forbidden(
        Api::<Ignitor>::namespaced(workflow_client.clone(), &ns)
            .patch_status("go", &PatchParams::default(), &status_patch)
            .await,
        "task-workflow writing Ignitor status",
    );
    forbidden(
        Api::<Pod>::namespaced(scheduler_client.clone(), &ns)
            .list(&ListParams::default())
            .await,
        "ignitor-scheduler listing pods",
    );
    forbidden(
        Api::<Ignitor>::namespaced(scheduler_client.clone(), &ns)
            .delete("go", &DeleteParams::default())
            .await,
        "ignitor-scheduler deleting an Ignitor",
    );
    forbidden(
        Api::<Secret>::namespaced(scheduler_client.clone(), &ns)
            .get("hook")
            .await,
        "ignitor-scheduler reading a Secret",
    );

    scheduler.stop().await;
    workflow.stop().await;
    cleanup(&env, "ignitor-scheduler").await;
    cleanup(&env, "task-workflow").await;
}

#[tokio::test]
async fn the_charts_objects_pass_server_validation_and_grant_the_lease_only_in_their_namespace() {
    let env = TestEnv::new().await;
    let namespaces: Api<Namespace> = Api::all(env.client.clone());
    let system: Namespace = serde_json::from_value(json!({"metadata": {"name": "orrery-system"}})).unwrap();
    match namespaces.create(&PostParams::default(), &system).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(err) => panic!("{err}"),
    }
    for (controller, _) in helm::CONTROLLERS {
        for object in chart(controller) {
            apply(&env.client, &object, true)
                .await
                .unwrap_or_else(|err| panic!("{controller}: {err:#}"));
        }
        // The Lease rules, applied for real so the authorizer can be asked about them.
        for object in chart(controller) {
            let kind = object.types.clone().unwrap().kind;
            if kind == "Role" || kind == "RoleBinding" {
                apply(&env.client, &object, false).await.unwrap();
            }
        }
        let user = format!("system:serviceaccount:orrery-system:{controller}");
        poll_until("the Lease Role to take effect", Deadline::default(), || async {
            if allowed(&env, &user, "patch", "coordination.k8s.io", "leases", "orrery-system").await {
                Ok(())
            } else {
                Err("not yet".into())
            }
        })
        .await;
        for verb in ["get", "create", "update"] {
            assert!(
                allowed(&env, &user, verb, "coordination.k8s.io", "leases", "orrery-system").await,
                "{controller} {verb} lease"
            );
        }
        assert!(
            !allowed(&env, &user, "patch", "coordination.k8s.io", "leases", "kube-system").await,
            "{controller}: leases elsewhere"
        );
        assert!(
            !allowed(&env, &user, "delete", "coordination.k8s.io", "leases", "orrery-system").await,
            "{controller}: deleting leases"
        );
    }
}

#[tokio::test]
async fn staged_binding_runs_a_rollout_with_its_own_rbac_and_no_more() {
    use crd_types::kubestellar::Binding;
    use crd_types::placement::StagedBindingPolicy;
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::ConfigMap;
    use orrery_e2e::kubestellar_simulator::{
        INVENTORY_LABEL, INVENTORY_NAMESPACE, KubeStellarSimulator, deployments_aggregator, ensure_status_collector,
    };

    let env = TestEnv::new().await;
    let inventory: Namespace = serde_json::from_value(json!({"metadata": {"name": INVENTORY_NAMESPACE}})).unwrap();
    let _ = Api::<Namespace>::all(env.client.clone())
        .create(&PostParams::default(), &inventory)
        .await;
    for (cluster, stage) in [("rbac-dev", "dev"), ("rbac-prod", "prod")] {
        let cm: ConfigMap = serde_json::from_value(
            json!({"metadata": {"name": cluster, "labels": {INVENTORY_LABEL: "cluster", "env": stage}}}),
        )
        .unwrap();
        let _ = Api::<ConfigMap>::namespaced(env.client.clone(), INVENTORY_NAMESPACE)
            .create(&PostParams::default(), &cm)
            .await;
    }
    let app = format!("rbac-{}", env.namespace);
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web", "labels": {"app": app}},
        "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "web", "image": "nginx"}]}}}
    }))
    .unwrap();
    env.namespaced::<Deployment>()
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap();
    ensure_status_collector(&env.client, &deployments_aggregator())
        .await
        .unwrap();
    let _kubestellar = KubeStellarSimulator::start(env.client.clone()).await.unwrap();
    let client = as_service_account(&env, "staged-binding").await;
    let controller = InProcess::start(client.clone(), &env.namespace, "staged-binding", staged_binding::run);

    let name = format!("{}-rbac", env.namespace);
    let policy: StagedBindingPolicy = serde_json::from_value(json!({"metadata": {"name": name}, "spec": {
        "downsync": [{"statusCollectors": ["deployments-aggregator"], "objectSelectors": [{"matchLabels": {"app": app}}]}],
        "stages": [
            {"name": "dev", "clusterSelectors": [{"matchLabels": {"env": "dev"}}], "condition": "combinedStatus.results.exists(r, r.name == 'deployments-aggregator' && r.rows.exists(row, row.columns[0].float == '1'))"},
            {"name": "prod", "clusterSelectors": [{"matchLabels": {"env": "prod"}}]}
        ]
    }}))
    .unwrap();
    let policies = Api::<StagedBindingPolicy>::all(env.client.clone());
    // The dev cluster runs its copy of the Deployment ready: the rollout moves on by itself.
    policies.create(&PostParams::default(), &policy).await.unwrap();
    poll_until(
        "the rollout to complete as the ServiceAccount",
        Deadline::default(),
        || async {
            let status = policies
                .get(&name)
                .await
                .map_err(|e| e.to_string())?
                .status
                .unwrap_or_default();
            let complete =
                crd_types::common::find_condition(&status.conditions, "Complete").is_some_and(|c| c.status == "True");
            if complete {
                Ok(())
            } else {
                Err(format!("{:?}", status.active_stage))
            }
        },
    )
    .await;

    let as_controller = Api::<StagedBindingPolicy>::all(client.clone());
    forbidden(
        as_controller.delete(&name, &DeleteParams::default()).await,
        "staged-binding deleting a StagedBindingPolicy",
    );
    forbidden(
        Api::<Binding>::all(client.clone())
            .delete(&format!("{name}.prod"), &DeleteParams::default())
            .await,
        "staged-binding deleting KubeStellar's Binding",
    );
    forbidden(
        Api::<Secret>::namespaced(client.clone(), &env.namespace)
            .list(&ListParams::default())
            .await,
        "staged-binding listing Secrets",
    );
    policies.delete(&name, &DeleteParams::default()).await.unwrap();
    controller.stop().await;
    cleanup(&env, "staged-binding").await;
}

#[tokio::test]
async fn hierarchy_executor_builds_and_removes_a_tree_with_its_own_rbac_and_no_more() {
    use crd_types::hierarchy::{Project, VirtualCluster};
    use k8s_openapi::api::rbac::v1::RoleBinding;

    let env = TestEnv::new().await;
    let _kubelet = PodSimulator::start(env.client.clone(), None).await.unwrap();
    let client = as_service_account(&env, "hierarchy-executor").await;
    let controller = InProcess::start_cluster_wide(client.clone(), "hierarchy-executor", hierarchy_executor::run);
    let name = format!("{}-rbac", env.namespace);
    let team = format!("{name}-team");
    let project: Project = serde_json::from_value(json!({"metadata": {"name": name}, "spec": {"templates": {
        "clusters": [{"name": format!("{name}-local"), "spec": {"executor": {"name": "default", "parameters": {"installGatewayAPI": true}}}}],
        "virtualClusters": [{"name": team, "spec": {
            "quota": {"pods": "10"}, "limits": {"defaultRequest": {"cpu": "10m"}}, "networkIsolation": true,
            "access": [{"kind": "Group", "name": "devs", "role": "admin"}, {"kind": "User", "name": "eve", "role": "view"}],
        }}],
        "applications": [{"name": "shop", "namespace": team, "spec": {
            "versions": [{"name": "v1", "image": "shop:1"}], "route": {"gateway": "public"},
        }}],
    }}}))
    .unwrap();
    let projects = Api::<Project>::all(env.client.clone());
    projects.create(&PostParams::default(), &project).await.unwrap();
    poll_until(
        "the tree Ready as the ServiceAccount",
        Deadline(std::time::Duration::from_secs(120)),
        || async {
            let status = projects
                .get(&name)
                .await
                .map_err(|e| e.to_string())?
                .status
                .unwrap_or_default();
            match crd_types::common::find_condition(&status.conditions, "Ready") {
                Some(c) if c.status == "True" => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;

    let secret: Secret = serde_json::from_value(json!({"metadata": {"name": "x"}})).unwrap();
    forbidden(
        Api::<Secret>::namespaced(client.clone(), &team)
            .create(&PostParams::default(), &secret)
            .await,
        "hierarchy-executor creating a Secret",
    );
    forbidden(
        Api::<Secret>::namespaced(client.clone(), &env.namespace)
            .list(&ListParams::default())
            .await,
        "hierarchy-executor listing Secrets",
    );
    let escalation: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "root"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"kind": "User", "name": "mallory"}],
    }))
    .unwrap();
    forbidden(
        Api::<RoleBinding>::namespaced(client.clone(), &team)
            .create(&PostParams::default(), &escalation)
            .await,
        "hierarchy-executor granting cluster-admin",
    );
    forbidden(
        Api::<Pod>::namespaced(client.clone(), &team)
            .delete_collection(&DeleteParams::default(), &ListParams::default())
            .await,
        "hierarchy-executor deleting pods",
    );

    // Deleting the Project removes the tree, the namespace included, as the ServiceAccount.
    projects.delete(&name, &DeleteParams::foreground()).await.unwrap();
    poll_until(
        "the tree gone",
        Deadline(std::time::Duration::from_secs(150)),
        || async {
            let vc = Api::<VirtualCluster>::all(env.client.clone())
                .get_opt(&team)
                .await
                .map_err(|e| e.to_string())?;
            let namespace = Api::<Namespace>::all(env.client.clone())
                .get_opt(&team)
                .await
                .map_err(|e| e.to_string())?;
            if vc.is_none() && namespace.is_none() {
                Ok(())
            } else {
                Err(format!(
                    "VirtualCluster {}, namespace {}",
                    vc.is_some(),
                    namespace.is_some()
                ))
            }
        },
    )
    .await;
    controller.stop().await;
    cleanup(&env, "hierarchy-executor").await;
}

#[tokio::test]
async fn policy_runner_runs_a_canary_with_its_own_rbac_and_no_more() {
    use crd_types::hierarchy::Application;
    use gateway_api::httproutes::HttpRoute;

    let env = TestEnv::new().await;
    let client = as_service_account(&env, "policy-runner").await;
    let runner = InProcess::start(
        client.clone(),
        &env.namespace,
        policy_runner::NAME,
        policy_runner::controller::run,
    );
    let apps: Api<Application> = env.namespaced();
    let app: Application = serde_json::from_value(json!({"metadata": {"name": "shop"}, "spec": {
        "versions": [{"name": "v1", "image": "shop:1"}, {"name": "v2", "image": "shop:2"}],
        "policies": [{"name": "canary", "parameters": {"stepWeight": 50, "maxWeight": 50, "interval": "1s"}}],
    }}))
    .unwrap();
    let generation = apps
        .create(&PostParams::default(), &app)
        .await
        .unwrap()
        .metadata
        .generation;
    // The executor's part, written by the test as admin: both versions ready, and the weights
    // the route carries follow the pipeline's output.
    let report = |weights: serde_json::Value| {
        let status = json!({"apiVersion": "hierarchy.orrery.dev/v1alpha1", "kind": "Application",
            "status": {"observedGeneration": generation, "weights": weights, "versions": [
                {"name": "v1", "replicas": 1, "readyReplicas": 1}, {"name": "v2", "replicas": 1, "readyReplicas": 1}]}});
        let apps = apps.clone();
        async move {
            apps.patch_status("shop", &PatchParams::apply("stand-in-executor"), &Patch::Apply(&status))
                .await
                .unwrap();
        }
    };
    report(json!([{"version": "v1", "weight": 100}])).await;
    for want in [50, 100] {
        let output = poll_until(
            &format!("the pipeline asks v2 {want}% as the ServiceAccount"),
            Deadline::default(),
            || async {
                let app = apps.get("shop").await.map_err(|e| e.to_string())?;
                let output = app
                    .status
                    .and_then(|s| s.common.policy)
                    .and_then(|p| p.output)
                    .ok_or("no output yet")?;
                if output["weights"][1]["weight"] == want {
                    Ok(output)
                } else {
                    Err(output.to_string())
                }
            },
        )
        .await;
        assert_eq!(output["weights"][1]["version"], "v2");
        report(output["weights"].clone()).await;
    }

    let mine: Api<Application> = Api::namespaced(client.clone(), &env.namespace);
    forbidden(
        mine.patch(
            "shop",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"policies": []}})),
        )
        .await,
        "policy-runner changing an Application's spec",
    );
    forbidden(
        mine.delete("shop", &DeleteParams::default()).await,
        "policy-runner deleting an Application",
    );
    forbidden(
        Api::<HttpRoute>::namespaced(client.clone(), &env.namespace)
            .list(&ListParams::default())
            .await,
        "policy-runner listing HTTPRoutes",
    );
    forbidden(
        Api::<Secret>::namespaced(client.clone(), &env.namespace)
            .list(&ListParams::default())
            .await,
        "policy-runner listing Secrets",
    );
    runner.stop().await;
    cleanup(&env, "policy-runner").await;
}
