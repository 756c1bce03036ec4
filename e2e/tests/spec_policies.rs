//! Policy pipelines of Projects, Clusters and VirtualClusters on the real control plane:
//! policy-runner computes the spec document, hierarchy-executor applies it. A `cel` policy sizes
//! a VirtualCluster's quota, a `freeze` holds a spec change until its window ends, a Project's
//! policy decides which of its templates are made, a Cluster's may not pick a kubeconfig its
//! spec does not name, and a traffic policy on a VirtualCluster is refused with nothing applied.

// A test that cannot proceed should stop right there, with the error.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::OnceLock;
use std::time::Duration;

use crd_types::common::{CONDITION_READY, Condition, find_condition};
use crd_types::hierarchy::{Cluster, PolicyPipelineStatus, Project, VirtualCluster};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Namespace, ResourceQuota};
use kube::Api;
use kube::api::{Patch, PatchParams};
use orrery_e2e::{Deadline, TestEnv, create, poll_until, serve_every_test};
use orrery_runtime::Context;
use serde_json::{Value, json};

/// hierarchy-executor and policy-runner, both cluster-wide as deployed, serve every test of
/// this file; each test names its objects after its own namespace.
async fn start() -> TestEnv {
    static STARTED: OnceLock<()> = OnceLock::new();
    let env = TestEnv::new().await;
    serve_every_test(&STARTED, |client| async move {
        let (executor, _stop_executor) = Context::standalone(client.clone(), hierarchy_executor::controller::NAME);
        let (runner, _stop_runner) = Context::standalone(client, policy_runner::NAME);
        let (executed, ran) = tokio::join!(
            hierarchy_executor::run(executor),
            policy_runner::controller::run(runner)
        );
        executed.unwrap();
        ran.unwrap();
    })
    .await;
    env
}

/// A local Cluster named `name`.
async fn local_cluster(env: &TestEnv, name: &str) {
    create(
        &Api::<Cluster>::all(env.client.clone()),
        json!({"metadata": {"name": name}, "spec": {}}),
    )
    .await;
}

async fn virtual_cluster(env: &TestEnv, name: &str, cluster: &str, quota_pods: &str, policies: Value) {
    create(
        &Api::<VirtualCluster>::all(env.client.clone()),
        json!({"metadata": {"name": name},
               "spec": {"cluster": cluster, "quota": {"pods": quota_pods}, "policies": policies}}),
    )
    .await;
}

/// The hard pod quota the executor put in `namespace`, once there is one.
async fn quota_pods(env: &TestEnv, namespace: &str) -> Option<String> {
    let quota = Api::<ResourceQuota>::namespaced(env.client.clone(), namespace)
        .get_opt("orrery-quota")
        .await
        .ok()??;
    quota.spec?.hard?.get("pods").map(|q| q.0.clone())
}

async fn wait_quota(env: &TestEnv, namespace: &str, pods: &str) {
    poll_until(
        &format!("quota pods={pods} in {namespace}"),
        Deadline(Duration::from_secs(60)),
        || async {
            match quota_pods(env, namespace).await {
                Some(found) if found == pods => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
}

async fn vc_status(env: &TestEnv, name: &str) -> (Option<PolicyPipelineStatus>, Option<Condition>, Option<i64>) {
    let vc = Api::<VirtualCluster>::all(env.client.clone()).get(name).await.unwrap();
    let status = vc.status.map(|s| s.common).unwrap_or_default();
    let ready = find_condition(&status.conditions, CONDITION_READY).cloned();
    (status.policy, ready, vc.metadata.generation)
}

#[tokio::test]
async fn a_virtual_clusters_quota_comes_from_its_cel_policy() {
    let env = start().await;
    let (cluster, vc) = (format!("{}-local", env.namespace), format!("{}-cel", env.namespace));
    local_cluster(&env, &cluster).await;
    let doubled = json!([{"name": "cel", "parameters": {
        "expression": "{'quota': {'pods': string(int(input.quota.pods) * 2)}, 'labels': {'sized-by': 'cel'}}",
    }}]);
    virtual_cluster(&env, &vc, &cluster, "10", doubled).await;
    wait_quota(&env, &vc, "20").await;
    let namespace = Api::<Namespace>::all(env.client.clone()).get(&vc).await.unwrap();
    assert_eq!(
        namespace.metadata.labels.unwrap().get("sized-by").map(String::as_str),
        Some("cel")
    );

    let change = json!({"spec": {"quota": {"pods": "7"}}});
    Api::<VirtualCluster>::all(env.client.clone())
        .patch(&vc, &PatchParams::default(), &Patch::Merge(&change))
        .await
        .unwrap();
    wait_quota(&env, &vc, "14").await;
    let (pipeline, _, _) = vc_status(&env, &vc).await;
    assert_eq!(
        pipeline.unwrap().output,
        Some(json!({"quota": {"pods": "14"}, "labels": {"sized-by": "cel"}}))
    );
}

#[tokio::test]
async fn a_freeze_holds_a_virtual_clusters_spec_until_its_window_ends() {
    let env = start().await;
    let (cluster, vc) = (format!("{}-local", env.namespace), format!("{}-frozen", env.namespace));
    local_cluster(&env, &cluster).await;
    let now = Timestamp::now();
    let end = now + jiff::SignedDuration::from_secs(30);
    let window = json!([{"name": "freeze", "parameters": {"windows": [
        {"start": (now - jiff::SignedDuration::from_secs(60)).to_string(), "end": end.to_string()}]}}]);
    // Nothing is in force when it is created: the freeze lets the first spec through.
    virtual_cluster(&env, &vc, &cluster, "10", window).await;
    wait_quota(&env, &vc, "10").await;

    let change = json!({"spec": {"quota": {"pods": "15"}}});
    let changed = Api::<VirtualCluster>::all(env.client.clone())
        .patch(&vc, &PatchParams::default(), &Patch::Merge(&change))
        .await
        .unwrap();
    poll_until(
        "the freeze holding the new generation",
        Deadline(Duration::from_secs(20)),
        || async {
            let (pipeline, _, _) = vc_status(&env, &vc).await;
            let pipeline = pipeline.ok_or("no pipeline yet")?;
            let step = &pipeline.steps[0];
            if pipeline.observed_generation == changed.metadata.generation && step.phase == "Holding" {
                Ok(())
            } else {
                Err(format!(
                    "{:?} {} {:?}",
                    pipeline.observed_generation, step.phase, step.message
                ))
            }
        },
    )
    .await;
    assert!(
        Timestamp::now() < end,
        "the window was still open when the change was held"
    );
    assert_eq!(
        quota_pods(&env, &vc).await.as_deref(),
        Some("10"),
        "frozen: the quota in force stays"
    );

    wait_quota(&env, &vc, "15").await;
    assert!(
        Timestamp::now() >= end,
        "the change went through only when the window ended"
    );
}

#[tokio::test]
async fn a_traffic_policy_on_a_virtual_cluster_is_refused_and_nothing_is_applied() {
    let env = start().await;
    let (cluster, vc) = (format!("{}-local", env.namespace), format!("{}-canary", env.namespace));
    local_cluster(&env, &cluster).await;
    virtual_cluster(&env, &vc, &cluster, "10", json!([{"name": "canary"}])).await;
    let message = poll_until(
        "the VirtualCluster waiting for its policies",
        Deadline(Duration::from_secs(30)),
        || async {
            let (pipeline, ready, _) = vc_status(&env, &vc).await;
            let refused = pipeline
                .as_ref()
                .and_then(|p| find_condition(&p.conditions, CONDITION_READY))
                .is_some_and(|c| c.reason == "PolicyNotApplicable");
            // The executor writes a message-only change a few seconds later: wait for it.
            match ready {
                Some(ready) if refused && ready.message.contains("does not run") => Ok(ready.message),
                other => Err(format!("{pipeline:?} {other:?}")),
            }
        },
    )
    .await;
    assert!(
        message.contains("\"canary\" does not run on this kind of resource (these do: freeze, cel, webhook)"),
        "{message}"
    );
    let namespace = Api::<Namespace>::all(env.client.clone()).get_opt(&vc).await.unwrap();
    assert!(namespace.is_none(), "no namespace is made before a spec is computed");
}

#[tokio::test]
async fn a_projects_policy_decides_which_of_its_templates_are_made() {
    let env = start().await;
    let ns = &env.namespace;
    let (cluster, kept, draft) = (format!("{ns}-pc"), format!("{ns}-kept"), format!("{ns}-draft"));
    create(
        &Api::<Project>::all(env.client.clone()),
        json!({"metadata": {"name": ns}, "spec": {
            "templates": {
                "clusters": [{"name": cluster, "spec": {}}],
                "virtualClusters": [{"name": kept, "spec": {"cluster": cluster}}, {"name": draft, "spec": {"cluster": cluster}}],
            },
            "policies": [{"name": "cel", "parameters": {"expression":
                "{'templates': {'clusters': input.templates.clusters, 'virtualClusters': input.templates.virtualClusters.filter(v, !v.name.endsWith('-draft'))}}"}}],
        }}),
    )
    .await;
    let vcs = Api::<VirtualCluster>::all(env.client.clone());
    poll_until("the kept VirtualCluster", Deadline(Duration::from_secs(30)), || async {
        vcs.get_opt(&kept)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "not yet".to_owned())
    })
    .await;
    let project = Api::<Project>::all(env.client.clone()).get(ns).await.unwrap();
    let output = project.status.unwrap().policy.unwrap().output.unwrap();
    assert_eq!(output["templates"]["virtualClusters"].as_array().unwrap().len(), 1);
    assert!(
        vcs.get_opt(&draft).await.unwrap().is_none(),
        "the policy left the draft out: it is not made"
    );
}

#[tokio::test]
async fn a_clusters_policy_may_not_choose_a_kubeconfig_its_spec_does_not_name() {
    // The spec's Secret is what admission checked its creator may read; a policy's output
    // naming another would read it for them.
    let env = start().await;
    let cluster = format!("{}-remote", env.namespace);
    create(
        &Api::<Cluster>::all(env.client.clone()),
        json!({"metadata": {"name": cluster}, "spec": {"policies": [{"name": "cel", "parameters": {"expression":
            "{'kubeconfigSecretRef': {'namespace': 'default', 'name': 'from-policy', 'key': 'kubeconfig'}}"}}]}}),
    )
    .await;
    let clusters = Api::<Cluster>::all(env.client.clone());
    let message = poll_until(
        "the Cluster refusing the policy's Secret",
        Deadline(Duration::from_secs(30)),
        || async {
            let status = clusters.get(&cluster).await.map_err(|e| e.to_string())?.status;
            let ready = status.and_then(|s| find_condition(&s.common.conditions, CONDITION_READY).cloned());
            match ready {
                Some(ready) if ready.reason == "PolicyOutputRefused" => Ok(ready.message),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    assert!(
        message.ends_with("which admission has not checked: Secret default/from-policy"),
        "{message}"
    );
}
