//! The CRDs on the real API server: they install and are Established, a valid object of every
//! kind round-trips, the seeds' manifests apply unchanged but for apiVersion, and a table of
//! invalid objects is rejected with the message the schema or validation rule gives.

// A test that cannot proceed should stop right there, with the error.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use orrery_e2e::TestEnv;
use serde_json::{Value, json};

fn resource(kind: &str) -> (ApiResource, bool) {
    let (group, namespaced) = match kind {
        "Ignitor" | "Task" | "TaskRun" => ("workflow.orrery.dev", true),
        "StagedBindingPolicy" => ("placement.orrery.dev", false),
        "Application" => ("hierarchy.orrery.dev", true),
        "Project" | "Cluster" | "VirtualCluster" => ("hierarchy.orrery.dev", false),
        "BindingPolicy" | "Binding" | "StatusCollector" => ("control.kubestellar.io", false),
        "CombinedStatus" => ("control.kubestellar.io", true),
        other => panic!("unknown kind {other}"),
    };
    (
        ApiResource::from_gvk(&GroupVersionKind::gvk(group, "v1alpha1", kind)),
        namespaced,
    )
}

fn api(client: &Client, namespace: &str, kind: &str) -> Api<DynamicObject> {
    let (resource, namespaced) = resource(kind);
    if namespaced {
        Api::namespaced_with(client.clone(), namespace, &resource)
    } else {
        Api::all_with(client.clone(), &resource)
    }
}

fn object(kind: &str, name: &str, body: Value) -> DynamicObject {
    let (resource, _) = resource(kind);
    let mut value = body;
    value["apiVersion"] = json!(resource.api_version);
    value["kind"] = json!(kind);
    value["metadata"] = json!({"name": name});
    serde_json::from_value(value).expect("object literal")
}

/// Cluster-scoped names carry the test namespace so parallel tests do not collide.
fn unique(env: &TestEnv, name: &str) -> String {
    format!("{}-{name}", env.namespace)
}

fn pod_template() -> Value {
    json!({"spec": {"containers": [{"name": "main", "image": "busybox"}], "restartPolicy": "Never"}})
}

fn valid_objects() -> Vec<(&'static str, Value)> {
    vec![
        (
            "Ignitor",
            json!({"spec": {"scheduled": "*/5 * * * *", "timeZone": "Europe/Amsterdam", "data": "hello", "missedFiringPolicy": "Skip"}}),
        ),
        (
            "Task",
            json!({"spec": {"template": pod_template(), "startOnIgnition": ["ignitor1"], "failureActions": ["notify", {"name": "http-post", "parameters": {"url": "http://127.0.0.1/"}}], "join": {"mode": "AllOf"}, "retry": {"limit": 2}}}),
        ),
        (
            "TaskRun",
            json!({"spec": {"taskRef": {"name": "task1"}, "initiator": {"kind": "Ignitor", "name": "ignitor1", "run": "1"}, "data": "hello"}}),
        ),
        (
            "StagedBindingPolicy",
            json!({"spec": {"downsync": [{"objectSelectors": [{"matchLabels": {"app": "x"}}]}], "stages": [{"name": "dev", "clusterSelectors": [{"matchLabels": {"env": "dev"}}], "condition": "true", "soakSeconds": 30}], "placementMode": "Keep"}}),
        ),
        (
            "Project",
            json!({"spec": {"description": "p", "templates": {"clusters": [{"name": "local", "spec": {}}], "virtualClusters": [{"name": "team-a", "spec": {"cluster": "local"}}]}}}),
        ),
        (
            "Cluster",
            json!({"spec": {"project": "p", "executor": {"name": "default", "parameters": {"installGatewayAPI": true}}}}),
        ),
        (
            "VirtualCluster",
            json!({"spec": {"cluster": "c", "quota": {"cpu": "4"}, "access": [{"kind": "Group", "name": "devs", "role": "admin"}]}}),
        ),
        (
            "Application",
            json!({"spec": {"virtualCluster": "vc", "versions": [{"name": "v1", "image": "nginx"}, {"name": "v2", "image": "nginx:2"}], "weights": [{"version": "v1", "weight": 90}, {"version": "v2", "weight": 10}], "policies": [{"name": "canary", "parameters": {"stepWeight": 10}}]}}),
        ),
        (
            "BindingPolicy",
            json!({"spec": {"clusterSelectors": [{"matchLabels": {"env": "dev"}}], "downsync": [{"objectSelectors": [{"matchLabels": {"app": "x"}}], "createOnly": true, "statusCollectors": ["c"], "wantSingletonReportedState": true, "wantMultiWECReportedState": true}]}}),
        ),
        (
            "Binding",
            json!({"spec": {"workload": {"namespaceScope": [{"group": "apps", "version": "v1", "resource": "deployments", "namespace": "default", "name": "nginx", "resourceVersion": "1", "statusCollectors": ["c"]}]}, "destinations": [{"clusterId": "dev1"}]}}),
        ),
        (
            "StatusCollector",
            json!({"spec": {"filter": "true", "groupBy": [{"name": "phase", "def": "returned.status.phase"}], "combinedFields": [{"name": "n", "type": "COUNT"}, {"name": "s", "type": "SUM", "subject": "1"}], "limit": 20}}),
        ),
        (
            "CombinedStatus",
            json!({"results": [{"name": "deployments-aggregator", "columnNames": ["count"], "rows": [{"columns": [{"type": "Number", "float": "1"}]}]}]}),
        ),
    ]
}

#[tokio::test]
async fn every_crd_is_established_with_category_and_short_names() {
    let env = TestEnv::new().await;
    let crds: Api<CustomResourceDefinition> = Api::all(env.client.clone());
    for name in crd_types::orrery_crds().iter().filter_map(|c| c.metadata.name.clone()) {
        let crd = crds.get(&name).await.expect("CRD installed");
        let conditions = crd.status.and_then(|s| s.conditions).unwrap_or_default();
        assert!(
            conditions
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True"),
            "{name} not Established: {conditions:?}"
        );
        assert_eq!(crd.spec.names.categories, Some(vec!["orrery".to_string()]), "{name}");
        assert!(
            crd.spec.names.short_names.is_some_and(|s| !s.is_empty()),
            "{name} has no short name"
        );
        let version = &crd.spec.versions[0];
        assert!(
            version.subresources.as_ref().and_then(|s| s.status.as_ref()).is_some(),
            "{name} has no status subresource"
        );
    }
}

#[tokio::test]
async fn a_valid_object_of_every_kind_round_trips() {
    let env = TestEnv::new().await;
    for (kind, body) in valid_objects() {
        let api = api(&env.client, &env.namespace, kind);
        let name = unique(&env, "valid");
        let sent = object(kind, &name, body.clone());
        let created = api
            .create(&PostParams::default(), &sent)
            .await
            .unwrap_or_else(|err| panic!("valid {kind} rejected: {err}"));
        let read = api.get(&name).await.expect("read back");
        for key in ["spec", "results"] {
            if let Some(expected) = body.get(key) {
                assert_eq!(
                    read.data.get(key),
                    Some(expected),
                    "{kind}.{key} changed on the way through the server"
                );
            }
        }
        assert_eq!(created.metadata.uid, read.metadata.uid);
        api.delete(&name, &Default::default()).await.expect("delete");
    }
}

#[tokio::test]
async fn the_seed_manifests_apply_with_only_the_api_version_changed() {
    let env = TestEnv::new().await;
    // ORCA's README, verbatim but for apiVersion: empty lists are written as bare keys (null).
    let orca = include_str!("../testdata/orca-example.yaml")
        .split("\n---\n")
        .next()
        .expect("the first document: task1");
    let task: DynamicObject = serde_yaml::from_str(orca).expect("ORCA task parses");
    let tasks = api(&env.client, &env.namespace, "Task");
    tasks
        .create(&PostParams::default(), &task)
        .await
        .expect("ORCA task1 accepted");
    let typed: kube::Api<crd_types::Task> = env.namespaced();
    let task1 = typed.get("task1").await.expect("typed read");
    assert_eq!(task1.spec.start_on_failure, vec!["task1"]);
    assert!(task1.spec.start_on_success.is_empty());
    assert_eq!(
        task1.spec.failure_actions,
        vec![crd_types::workflow::ActionRef::Plugin(crd_types::PluginRef::named(
            "YOUR-PLUGIN-NAME"
        ))]
    );

    // KubeStellar's workload stager README, verbatim but for apiVersion.
    let stager = include_str!("../testdata/stager-example.yaml");
    let mut sbp: DynamicObject = serde_yaml::from_str(stager).expect("stager parses");
    sbp.metadata.name = Some(unique(&env, "nginx-staged-bindingpolicy"));
    let sbps = api(&env.client, &env.namespace, "StagedBindingPolicy");
    sbps.create(&PostParams::default(), &sbp)
        .await
        .expect("seed StagedBindingPolicy accepted");
    sbps.delete(sbp.metadata.name.as_deref().unwrap_or_default(), &Default::default())
        .await
        .expect("delete");
}

/// (kind, spec-or-body, what the server's error must say)
fn invalid_objects() -> Vec<(&'static str, Value, &'static str)> {
    let containers = json!([{"name": "c", "image": "i"}]);
    let template = json!({"spec": {"containers": containers}});
    let selector = json!([{"matchLabels": {"env": "dev"}}]);
    let v1 = json!({"name": "v1", "image": "nginx"});
    vec![
        (
            "Ignitor",
            json!({"spec": {"scheduled": "every tuesday"}}),
            "scheduled must be NOW, an RFC 3339 time, a cron schedule",
        ),
        (
            "Ignitor",
            json!({"spec": {"data": "x"}}),
            "spec.scheduled: Required value",
        ),
        (
            "Ignitor",
            json!({"spec": {"scheduled": "NOW", "data": "x".repeat(4097)}}),
            "spec.data: Too long",
        ),
        (
            "Ignitor",
            json!({"spec": {"scheduled": "NOW", "timeZone": "../../etc/passwd"}}),
            "spec.timeZone in body should match",
        ),
        (
            "Ignitor",
            json!({"spec": {"scheduled": "NOW", "missedFiringPolicy": "Sometimes"}}),
            "spec.missedFiringPolicy: Unsupported value: \"Sometimes\"",
        ),
        (
            "Ignitor",
            json!({"spec": {"scheduled": "@hourly", "startingDeadlineSeconds": 0}}),
            "spec.startingDeadlineSeconds: Invalid value: 0",
        ),
        (
            "Ignitor",
            json!({"spec": {"scheduled": "2026-13-45"}}),
            "scheduled must be NOW, an RFC 3339 time",
        ),
        (
            "Task",
            json!({"spec": {"description": "no template"}}),
            "spec.template: Required value",
        ),
        (
            "Task",
            json!({"spec": {"template": {"spec": {}}}}),
            "spec.template.spec.containers: Required value",
        ),
        (
            "Task",
            json!({"spec": {"template": {"spec": {"containers": []}}}}),
            "spec.template.spec.containers: Invalid value: 0",
        ),
        (
            "Task",
            json!({"spec": {"template": template, "startOnSuccess": ["a", "a"]}}),
            "spec.startOnSuccess[1]: Duplicate value: \"a\"",
        ),
        (
            "Task",
            json!({"spec": {"template": template, "concurrencyPolicy": "Sometimes"}}),
            "spec.concurrencyPolicy: Unsupported value",
        ),
        (
            "Task",
            json!({"spec": {"template": template, "join": {"mode": "Condition"}}}),
            "join.condition is required when mode is Condition",
        ),
        (
            "Task",
            json!({"spec": {"template": template, "retry": {"limit": 1000}}}),
            "spec.retry.limit: Invalid value: 1000",
        ),
        (
            "Task",
            json!({"spec": {"template": template, "startOnIgnition": (0..33).map(|i| format!("i{i}")).collect::<Vec<_>>()}}),
            "spec.startOnIgnition: Too many",
        ),
        (
            "TaskRun",
            json!({"spec": {"data": "x"}}),
            "spec.taskRef: Required value",
        ),
        (
            "TaskRun",
            json!({"spec": {"taskRef": {"name": "t"}, "data": "x".repeat(4097)}}),
            "spec.data: Too long",
        ),
        (
            "TaskRun",
            json!({"spec": {"taskRef": {"name": "t"}, "initiator": {"kind": "Cron", "name": "x"}}}),
            "spec.initiator.kind: Unsupported value: \"Cron\"",
        ),
        (
            "StagedBindingPolicy",
            json!({"spec": {"downsync": [{}]}}),
            "spec.stages: Required value",
        ),
        (
            "StagedBindingPolicy",
            json!({"spec": {"downsync": [{}], "stages": [{"name": "dev", "clusterSelectors": selector}, {"name": "dev", "clusterSelectors": selector}]}}),
            "spec.stages[1]: Duplicate value: {\"name\":\"dev\"}",
        ),
        (
            "StagedBindingPolicy",
            json!({"spec": {"downsync": [{}], "stages": [{"name": "Dev_Stage", "clusterSelectors": selector}]}}),
            "spec.stages[0].name in body should match",
        ),
        (
            "StagedBindingPolicy",
            json!({"spec": {"downsync": [{}], "stages": [{"name": "dev"}]}}),
            "spec.stages[0].clusterSelectors: Required value",
        ),
        (
            "StagedBindingPolicy",
            json!({"spec": {"downsync": [{}], "stages": (0..17).map(|i| json!({"name": format!("s{i}"), "clusterSelectors": selector})).collect::<Vec<_>>()}}),
            "spec.stages: Too many",
        ),
        (
            "Application",
            json!({"spec": {"versions": [v1, {"name": "v2", "image": "nginx"}], "weights": [{"version": "v1", "weight": 50}, {"version": "v2", "weight": 40}]}}),
            "weights must sum to 100",
        ),
        (
            "Application",
            json!({"spec": {"versions": [v1], "weights": [{"version": "v9", "weight": 100}]}}),
            "every weight must name a version in spec.versions",
        ),
        (
            "Application",
            json!({"spec": {"versions": [v1, v1]}}),
            "spec.versions[1]: Duplicate value: {\"name\":\"v1\"}",
        ),
        (
            "Application",
            json!({"spec": {"versions": []}}),
            "spec.versions: Invalid value: 0",
        ),
        (
            "Application",
            json!({"spec": {"versions": [v1], "weights": [{"version": "v1", "weight": 101}]}}),
            "spec.weights[0].weight: Invalid value: 101",
        ),
        (
            "VirtualCluster",
            json!({"spec": {"access": [{"kind": "User", "name": "ann", "role": "owner"}]}}),
            "spec.access[0].role: Unsupported value: \"owner\"",
        ),
        (
            "Cluster",
            json!({"spec": {"executor": {"name": "bad name!"}}}),
            "spec.executor.name in body should match",
        ),
        (
            "Project",
            json!({"spec": {"templates": {"clusters": [{"name": "a", "spec": {}}, {"name": "a", "spec": {}}]}}}),
            "spec.templates.clusters[1]: Duplicate value: {\"name\":\"a\"}",
        ),
        // KubeStellar's kinds, as its published CRDs check them.
        (
            "StatusCollector",
            json!({"spec": {"select": [{"name": "wec", "def": "inventory.name"}]}}),
            "spec.limit: Required value",
        ),
        (
            "CombinedStatus",
            json!({"results": [{"name": "deployments-aggregator"}]}),
            "results[0].columnNames: Required value",
        ),
        (
            "Binding",
            json!({"spec": {"workload": {"namespaceScope": [{"group": "apps", "version": "v1", "resource": "deployments", "namespace": "default", "name": "nginx"}]}}}),
            "spec.workload.namespaceScope[0].resourceVersion: Required value",
        ),
    ]
}

#[tokio::test]
async fn invalid_objects_are_rejected_with_the_rules_message() {
    let env = TestEnv::new().await;
    let table = invalid_objects();
    assert!(table.len() >= 20, "the table covers at least 20 cases");
    let mut failures = Vec::new();
    for (i, (kind, body, expected)) in table.into_iter().enumerate() {
        let api = api(&env.client, &env.namespace, kind);
        let name = unique(&env, &format!("invalid-{i}"));
        match api.create(&PostParams::default(), &object(kind, &name, body)).await {
            Ok(_) => failures.push(format!("#{i} {kind}: accepted, expected rejection with {expected:?}")),
            Err(kube::Error::Api(status)) => {
                if status.code != 422 || !status.message.contains(expected) {
                    failures.push(format!(
                        "#{i} {kind}: got {} {:?}, expected {expected:?}",
                        status.code, status.message
                    ));
                }
            }
            Err(other) => failures.push(format!("#{i} {kind}: unexpected error {other}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} cases wrong:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[tokio::test]
async fn a_taskrun_spec_cannot_be_changed() {
    let env = TestEnv::new().await;
    let api = api(&env.client, &env.namespace, "TaskRun");
    api.create(
        &PostParams::default(),
        &object("TaskRun", "run", json!({"spec": {"taskRef": {"name": "a"}}})),
    )
    .await
    .expect("created");
    let patch = json!({"spec": {"taskRef": {"name": "b"}}});
    let err = api
        .patch("run", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect_err("the spec is immutable");
    assert!(
        matches!(&err, kube::Error::Api(s) if s.message.contains("a TaskRun's spec is immutable")),
        "{err}"
    );
}

#[tokio::test]
async fn names_that_become_label_values_or_other_names_are_bounded_at_admission() {
    let env = TestEnv::new().await;
    let template = json!({"spec": {"containers": [{"name": "main", "image": "busybox"}]}});
    let long = "n".repeat(64);
    let cases = [
        (
            "Task",
            long.clone(),
            json!({"spec": {"template": template}}),
            Some("a Task's name is at most 63 characters"),
        ),
        ("Task", "n".repeat(63), json!({"spec": {"template": template}}), None),
        (
            "TaskRun",
            long.clone(),
            json!({"spec": {"taskRef": {"name": "t"}}}),
            Some("a TaskRun's name is at most 63 characters"),
        ),
        (
            "Application",
            "a".repeat(40),
            json!({"spec": {"versions": [{"name": "v".repeat(23), "image": "nginx"}]}}),
            Some("<application>-<version> names each version's Deployment and Service"),
        ),
        (
            "Application",
            "a".repeat(40),
            json!({"spec": {"versions": [{"name": "v".repeat(22), "image": "nginx"}]}}),
            None,
        ),
    ];
    for (kind, name, body, refused) in cases {
        let created = api(&env.client, &env.namespace, kind)
            .create(&PostParams::default(), &object(kind, &name, body))
            .await;
        match (created, refused) {
            (Ok(_), None) => {}
            (Err(kube::Error::Api(status)), Some(expected))
                if status.code == 422 && status.message.contains(expected) => {}
            (other, expected) => panic!(
                "{kind} {name}: expected {expected:?}, got {:?}",
                other.map(|o| o.metadata.name)
            ),
        }
    }
}
