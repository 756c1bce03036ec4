//! staged-binding on the real control plane, the KubeStellar simulator playing KubeStellar
//! (with CRDs written from KubeStellar's published schemas): the seed's dev → prod rollout
//! driven by the simulated clusters' Deployments becoming ready, soak time, deadline → pause
//! and → rollback, approval, suspend, bad expressions, runtime errors, deletion, a restart
//! mid-rollout, a policy that may neither take over nor collect a BindingPolicy it does not
//! control, and the BindingPolicy layouts today's KubeStellar keeps and prunes.
//!
//! A test's workload starts with its pods held in every cluster ([`PENDING_IN`] `*`), so no
//! cluster reports it ready; [`ready_in`] lets them start in the clusters named.

// A test that cannot proceed should stop right there, with the error.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crd_types::kubestellar::{Binding, BindingPolicy, CombinedStatus, combined_status_labels};
use crd_types::placement::StagedBindingPolicy;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::api::events::v1::Event;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, Resource, ResourceExt};
use orrery_e2e::kubestellar_simulator::{
    INVENTORY_LABEL, INVENTORY_NAMESPACE, KubeStellarSimulator, PENDING_IN, deployments_aggregator,
    ensure_status_collector,
};
use orrery_e2e::{Deadline, InProcess, TestEnv, access, poll_until};
use serde_json::{Value as Json, json};

const SEED_CONDITION: &str = "combinedStatus.results.exists(r,\n  r.name == 'deployments-aggregator' &&\n  r.rows.exists(row,\n    row.columns.exists(col,\n      col.type == 'Number' &&\n      col.float == '1'\n)))\n";

fn start(env: &TestEnv) -> InProcess {
    InProcess::start(
        env.client.clone(),
        &env.namespace,
        staged_binding::controller::NAME,
        staged_binding::run,
    )
}

/// The inventory clusters, shared by the tests of this binary.
const CLUSTERS: [&str; 4] = ["dev1", "test1", "prod1", "prod2"];

/// Inventory clusters (shared by the tests of this binary), the `deployments-aggregator`
/// StatusCollector, and one nginx Deployment in the test's namespace whose pods start in no
/// cluster yet.
async fn world(env: &TestEnv) -> KubeStellarSimulator {
    ensure_status_collector(&env.client, &deployments_aggregator())
        .await
        .unwrap();
    let namespace: Namespace = serde_json::from_value(json!({"metadata": {"name": INVENTORY_NAMESPACE}})).unwrap();
    let _ = Api::<Namespace>::all(env.client.clone())
        .create(&PostParams::default(), &namespace)
        .await;
    for (cluster, stage) in [("dev1", "dev"), ("test1", "test"), ("prod1", "prod"), ("prod2", "prod")] {
        let cm: ConfigMap = serde_json::from_value(
            json!({"metadata": {"name": cluster, "labels": {INVENTORY_LABEL: "cluster", "env": stage}}}),
        )
        .unwrap();
        let _ = Api::<ConfigMap>::namespaced(env.client.clone(), INVENTORY_NAMESPACE)
            .create(&PostParams::default(), &cm)
            .await;
    }
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "nginx", "labels": {"app.kubernetes.io/name": format!("nginx-{}", env.namespace)}, "annotations": {PENDING_IN: "*"}},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "nginx"}}, "template": {"metadata": {"labels": {"app": "nginx"}}, "spec": {"containers": [{"name": "nginx", "image": "nginx"}]}}}
    }))
    .unwrap();
    env.namespaced::<Deployment>()
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap();
    KubeStellarSimulator::start(env.client.clone()).await.unwrap()
}

/// The seed's policy (its name and object selector made unique to the test), with `extra`
/// merged into each stage by index and into the spec.
fn policy(env: &TestEnv, name: &str, stages: Json, extra: Json) -> StagedBindingPolicy {
    let mut spec = json!({
        "downsync": [{"statusCollectors": ["deployments-aggregator"], "objectSelectors": [{"matchLabels": {"app.kubernetes.io/name": format!("nginx-{}", env.namespace)}}]}],
        "stages": stages,
    });
    for (k, v) in extra.as_object().unwrap() {
        spec[k] = v.clone();
    }
    serde_json::from_value(json!({"metadata": {"name": format!("{}-{name}", env.namespace)}, "spec": spec})).unwrap()
}

fn seed_stages() -> Json {
    json!([
        {"name": "dev", "clusterSelectors": [{"matchLabels": {"env": "dev"}}], "filter": "downsyncClause.resource == \"deployments\"", "condition": SEED_CONDITION},
        {"name": "prod", "clusterSelectors": [{"matchLabels": {"env": "prod"}}]}
    ])
}

async fn status_of(client: &Client, name: &str) -> crd_types::placement::StagedBindingPolicyStatus {
    Api::<StagedBindingPolicy>::all(client.clone())
        .get(name)
        .await
        .unwrap()
        .status
        .unwrap_or_default()
}

fn condition(status: &crd_types::placement::StagedBindingPolicyStatus, type_: &str) -> (String, String, String) {
    let c =
        crd_types::common::find_condition(&status.conditions, type_).unwrap_or_else(|| panic!("no {type_} condition"));
    (c.status.clone(), c.reason.clone(), c.message.clone())
}

async fn wait_stage(client: &Client, name: &str, stage: &str) -> crd_types::placement::StagedBindingPolicyStatus {
    poll_until(
        &format!("{name} to reach stage {stage}"),
        Deadline::default(),
        || async {
            let status = status_of(client, name).await;
            if status.active_stage.as_deref() == Some(stage) {
                Ok(status)
            } else {
                Err(format!("{:?}", status.active_stage))
            }
        },
    )
    .await
}

async fn wait_condition(
    client: &Client,
    name: &str,
    type_: &str,
    reason: &str,
) -> crd_types::placement::StagedBindingPolicyStatus {
    poll_until(
        &format!("{name} {type_} reason {reason}"),
        Deadline::default(),
        || async {
            let status = status_of(client, name).await;
            match crd_types::common::find_condition(&status.conditions, type_) {
                Some(c) if c.reason == reason => Ok(status),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await
}

async fn binding_policies(client: &Client, policy: &str) -> Vec<BindingPolicy> {
    let list = Api::<BindingPolicy>::all(client.clone())
        .list(&ListParams::default().labels(&format!("{}={policy}", staged_binding::plan::POLICY_LABEL)))
        .await
        .unwrap();
    list.items
}

/// Waits until the BindingPolicies `policy` owns are exactly those of `stages`.
async fn wait_placed(client: &Client, policy: &str, stages: &[&str]) {
    let mut wanted: Vec<String> = stages.iter().map(|s| format!("{policy}.{s}")).collect();
    wanted.sort();
    poll_until(&format!("BindingPolicies {wanted:?}"), Deadline::default(), || async {
        let mut names: Vec<String> = binding_policies(client, policy)
            .await
            .iter()
            .map(|b| b.name_any())
            .collect();
        names.sort();
        if names == wanted {
            Ok(())
        } else {
            Err(format!("{names:?}"))
        }
    })
    .await;
}

/// Lets the test's nginx pods start in `clusters` (and only there): those clusters' copies of
/// the Deployment become ready, which the deployments-aggregator then counts.
async fn ready_in(env: &TestEnv, clusters: &[&str]) {
    deployment_ready_in(env, "nginx", clusters).await;
}

async fn deployment_ready_in(env: &TestEnv, deployment: &str, clusters: &[&str]) {
    let pending: Vec<&str> = CLUSTERS.iter().copied().filter(|c| !clusters.contains(c)).collect();
    let patch = json!({"metadata": {"annotations": {PENDING_IN: pending.join(",")}}});
    env.namespaced::<Deployment>()
        .patch(deployment, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
}

/// The CombinedStatus of `bp`'s workload object `name` in the test's namespace, once the
/// simulator has written it with `rows` rows in its first result.
async fn combined_status(env: &TestEnv, bp: &str, name: &str) -> CombinedStatus {
    let selector = format!(
        "{}={bp},{}={name}",
        combined_status_labels::BINDING_POLICY,
        combined_status_labels::NAME
    );
    poll_until(
        &format!("the CombinedStatus of {name} under {bp}"),
        Deadline::default(),
        || async {
            env.namespaced::<CombinedStatus>()
                .list(&ListParams::default().labels(&selector))
                .await
                .map_err(|e| e.to_string())?
                .items
                .into_iter()
                .find(|cs| cs.spec.results.first().is_some_and(|r| !r.rows.is_empty()))
                .ok_or_else(|| "none with rows yet".to_string())
        },
    )
    .await
}

/// The number the deployments-aggregator reports in `status`.
fn ready_count(status: &CombinedStatus) -> Option<String> {
    let result = status
        .spec
        .results
        .iter()
        .find(|r| r.name == "deployments-aggregator")?;
    result.rows.first()?.columns.first()?.float.clone()
}

#[tokio::test]
async fn the_seed_rollout_moves_from_dev_to_prod_when_the_dev_cluster_runs_the_workload_ready() {
    let env = TestEnv::new().await;
    let _kubestellar = world(&env).await;
    let controller = start(&env);
    let name = format!("{}-seed", env.namespace);
    Api::<StagedBindingPolicy>::all(env.client.clone())
        .create(&PostParams::default(), &policy(&env, "seed", seed_stages(), json!({})))
        .await
        .unwrap();

    let status = wait_stage(&env.client, &name, "dev").await;
    assert_eq!(status.history.len(), 1);
    let bps = poll_until("the dev BindingPolicy", Deadline::default(), || async {
        let bps = binding_policies(&env.client, &name).await;
        if bps.len() == 1 {
            Ok(bps)
        } else {
            Err(format!("{} BindingPolicies", bps.len()))
        }
    })
    .await;
    let dev = &bps[0];
    assert_eq!(dev.name_any(), format!("{name}.dev"));
    assert_eq!(
        dev.spec.cluster_selectors[0].match_labels.as_ref().unwrap()["env"],
        "dev"
    );
    assert_eq!(dev.spec.downsync[0].status_collectors, vec!["deployments-aggregator"]);

    // Not yet: the dev cluster's pods do not start, so the aggregator counts 0 ready clusters.
    let waiting = wait_condition(&env.client, &name, "Progressing", "ConditionNotMet").await;
    assert_eq!(waiting.active_stage.as_deref(), Some("dev"));

    ready_in(&env, &["dev1"]).await;
    let status = wait_stage(&env.client, &name, "prod").await;
    let stages: Vec<(&str, &str)> = status
        .history
        .iter()
        .map(|r| (r.name.as_str(), r.outcome.as_str()))
        .collect();
    assert_eq!(stages[0], ("dev", "Fulfilled"));
    assert_eq!(stages[1].0, "prod");
    assert!(status.history[0].started.is_some() && status.history[0].ended.is_some());
    let complete = wait_condition(&env.client, &name, "Complete", "RolloutComplete").await;
    assert_eq!(condition(&complete, "Ready").0, "True");
    // Move (the default): only prod's BindingPolicy remains.
    wait_placed(&env.client, &name, &["prod"]).await;
    let events = env.client.clone();
    let list = Api::<Event>::all(events).list(&ListParams::default()).await.unwrap();
    let reasons: Vec<String> = list
        .items
        .iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name.as_str()))
        .filter_map(|e| e.reason.clone())
        .collect();
    assert!(
        reasons.contains(&"StageAdvanced".to_string()) && reasons.contains(&"RolloutComplete".to_string()),
        "{reasons:?}"
    );
    controller.stop().await;
}

#[tokio::test]
async fn soak_time_keep_mode_approval_and_suspend() {
    let env = TestEnv::new().await;
    let _kubestellar = world(&env).await;
    let controller = start(&env);
    let name = format!("{}-gated", env.namespace);
    let stages = json!([
        {"name": "dev", "clusterSelectors": [{"matchLabels": {"env": "dev"}}], "condition": SEED_CONDITION, "soakSeconds": 2},
        {"name": "prod", "clusterSelectors": [{"matchLabels": {"env": "prod"}}], "requireApproval": true}
    ]);
    let policies = Api::<StagedBindingPolicy>::all(env.client.clone());
    policies
        .create(
            &PostParams::default(),
            &policy(&env, "gated", stages, json!({"placementMode": "Keep"})),
        )
        .await
        .unwrap();
    wait_stage(&env.client, &name, "dev").await;
    ready_in(&env, &["dev1"]).await;
    let soaking = wait_condition(&env.client, &name, "Progressing", "Soaking").await;
    let met = soaking.history[0]
        .condition_met
        .clone()
        .expect("condition met recorded")
        .0;
    let awaiting = wait_condition(&env.client, &name, "Progressing", "AwaitingApproval").await;
    assert_eq!(
        awaiting.active_stage.as_deref(),
        Some("dev"),
        "soaked, but prod needs approval"
    );
    assert!(jiff::Timestamp::now().duration_since(met) >= jiff::SignedDuration::from_secs(2));

    // Suspended, an approval waits; resumed, it goes through.
    policies
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"suspend": true}})),
        )
        .await
        .unwrap();
    wait_condition(&env.client, &name, "Progressing", "Suspended").await;
    let approve = json!({"metadata": {"annotations": {crd_types::placement::APPROVE_ANNOTATION: "prod"}}});
    policies
        .patch(&name, &PatchParams::default(), &Patch::Merge(&approve))
        .await
        .unwrap();
    let still = wait_condition(&env.client, &name, "Progressing", "Suspended").await;
    assert_eq!(still.active_stage.as_deref(), Some("dev"));
    policies
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"suspend": false}})),
        )
        .await
        .unwrap();
    wait_stage(&env.client, &name, "prod").await;
    // Keep: dev's BindingPolicy stays beside prod's.
    wait_placed(&env.client, &name, &["dev", "prod"]).await;
    controller.stop().await;
}

#[tokio::test]
async fn a_missed_deadline_pauses_or_rolls_back() {
    let env = TestEnv::new().await;
    let _kubestellar = world(&env).await;
    let controller = start(&env);
    let stages = json!([
        {"name": "dev", "clusterSelectors": [{"matchLabels": {"env": "dev"}}], "condition": SEED_CONDITION},
        {"name": "test", "clusterSelectors": [{"matchLabels": {"env": "test"}}], "condition": SEED_CONDITION},
        {"name": "prod", "clusterSelectors": [{"matchLabels": {"env": "prod"}}]}
    ]);
    let policies = Api::<StagedBindingPolicy>::all(env.client.clone());
    for (short, on_failure) in [("pause", "Pause"), ("rollback", "Rollback")] {
        let name = format!("{}-{short}", env.namespace);
        policies
            .create(
                &PostParams::default(),
                &policy(
                    &env,
                    short,
                    stages.clone(),
                    // Long enough for dev's copy to be made ready (by kube-controller-manager and
                    // the pod simulator) on a loaded machine; test's never is.
                    json!({"progressDeadlineSeconds": 10, "onFailure": on_failure}),
                ),
            )
            .await
            .unwrap();
        wait_stage(&env.client, &name, "dev").await;
        ready_in(&env, &["dev1"]).await;
        wait_stage(&env.client, &name, "test").await;
        // test1 never runs the workload ready: after 10 s the stage fails.
        let failed = wait_condition(
            &env.client,
            &name,
            "Failed",
            if short == "pause" {
                "ProgressDeadlineExceeded"
            } else {
                "RolledBack"
            },
        )
        .await;
        assert_eq!(condition(&failed, "Failed").0, "True");
        assert_eq!(condition(&failed, "Progressing").0, "False");
        let expected_stage = if short == "pause" { "test" } else { "dev" };
        assert_eq!(failed.active_stage.as_deref(), Some(expected_stage));
        wait_placed(&env.client, &name, &[expected_stage]).await;
    }
    controller.stop().await;
}

#[tokio::test]
async fn bad_expressions_stop_the_rollout_and_runtime_errors_count_as_not_met() {
    let env = TestEnv::new().await;
    let _kubestellar = world(&env).await;
    let controller = start(&env);
    let policies = Api::<StagedBindingPolicy>::all(env.client.clone());

    let broken = json!([
        {"name": "dev", "clusterSelectors": [{"matchLabels": {"env": "dev"}}], "condition": "combinedStatus.results.exists(r, r.name =="},
        {"name": "prod", "clusterSelectors": [{"matchLabels": {"env": "prod"}}]}
    ]);
    let name = format!("{}-broken", env.namespace);
    policies
        .create(&PostParams::default(), &policy(&env, "broken", broken, json!({})))
        .await
        .unwrap();
    let status = wait_condition(&env.client, &name, "Ready", "InvalidExpression").await;
    let (_, _, message) = condition(&status, "Ready");
    assert!(
        message.contains("stage \"dev\" condition") && message.contains("1:"),
        "{message}"
    );
    assert_eq!(
        status.active_stage.as_deref(),
        Some("dev"),
        "placed, but never advanced"
    );

    let erroring = json!([
        {"name": "dev", "clusterSelectors": [{"matchLabels": {"env": "dev"}}], "condition": "combinedStatus.results[5].name == 'x'"},
        {"name": "prod", "clusterSelectors": [{"matchLabels": {"env": "prod"}}]}
    ]);
    let name = format!("{}-erroring", env.namespace);
    policies
        .create(&PostParams::default(), &policy(&env, "erroring", erroring, json!({})))
        .await
        .unwrap();
    wait_stage(&env.client, &name, "dev").await;
    ready_in(&env, &["dev1"]).await;
    let status = wait_condition(&env.client, &name, "Progressing", "ConditionError").await;
    assert_eq!(status.active_stage.as_deref(), Some("dev"));
    assert_eq!(condition(&status, "Ready").0, "True");
    controller.stop().await;
}

#[tokio::test]
async fn a_restart_mid_rollout_skips_and_repeats_nothing_and_deletion_collects_placement() {
    let env = TestEnv::new().await;
    let _kubestellar = world(&env).await;
    let controller = start(&env);
    let stages = json!([
        {"name": "dev", "clusterSelectors": [{"matchLabels": {"env": "dev"}}], "condition": SEED_CONDITION},
        {"name": "test", "clusterSelectors": [{"matchLabels": {"env": "test"}}], "condition": SEED_CONDITION},
        {"name": "prod", "clusterSelectors": [{"matchLabels": {"env": "prod"}}]}
    ]);
    let name = format!("{}-restart", env.namespace);
    let policies = Api::<StagedBindingPolicy>::all(env.client.clone());
    policies
        .create(&PostParams::default(), &policy(&env, "restart", stages, json!({})))
        .await
        .unwrap();
    wait_stage(&env.client, &name, "dev").await;
    ready_in(&env, &["dev1"]).await;
    wait_stage(&env.client, &name, "test").await;
    controller.stop().await;
    let controller = start(&env);
    // After the restart test is still active: nothing skipped, dev not repeated; test1 does
    // not run the workload ready yet.
    let status = wait_condition(&env.client, &name, "Progressing", "ConditionNotMet").await;
    assert_eq!(status.active_stage.as_deref(), Some("test"));
    assert_eq!(status.history.iter().filter(|r| r.name == "dev").count(), 1);
    ready_in(&env, &["dev1", "test1"]).await;
    let status = wait_condition(&env.client, &name, "Complete", "RolloutComplete").await;
    let order: Vec<&str> = status.history.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(order, ["dev", "test", "prod"]);

    policies.delete(&name, &DeleteParams::default()).await.unwrap();
    // The garbage collector learns of new CRDs on its discovery resync (every 30 s).
    poll_until(
        "the BindingPolicies to be garbage-collected",
        Deadline(std::time::Duration::from_secs(90)),
        || async {
            let left = binding_policies(&env.client, &name).await.len();
            if left == 0 { Ok(()) } else { Err(format!("{left} left")) }
        },
    )
    .await;
    controller.stop().await;
}

#[tokio::test]
async fn editing_the_spec_continues_from_the_active_stage_or_restarts_if_it_was_removed() {
    let env = TestEnv::new().await;
    let _kubestellar = world(&env).await;
    let controller = start(&env);
    let policies = Api::<StagedBindingPolicy>::all(env.client.clone());
    let stages = json!([
        {"name": "dev", "clusterSelectors": [{"matchLabels": {"env": "dev"}}], "condition": SEED_CONDITION},
        {"name": "test", "clusterSelectors": [{"matchLabels": {"env": "test"}}], "condition": SEED_CONDITION},
        {"name": "prod", "clusterSelectors": [{"matchLabels": {"env": "prod"}}]}
    ]);
    for short in ["edit", "shrink"] {
        let name = format!("{}-{short}", env.namespace);
        policies
            .create(&PostParams::default(), &policy(&env, short, stages.clone(), json!({})))
            .await
            .unwrap();
        wait_stage(&env.client, &name, "dev").await;
        ready_in(&env, &["dev1"]).await;
        wait_stage(&env.client, &name, "test").await;
    }

    // Edit the active stage's condition: the rollout continues from it (dev is not redone).
    let edit = format!("{}-edit", env.namespace);
    let patch = json!({"spec": {"stages": [
        stages[0].clone(),
        {"name": "test", "clusterSelectors": [{"matchLabels": {"env": "test"}}], "condition": "true"},
        stages[2].clone()
    ]}});
    policies
        .patch(&edit, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let done = wait_condition(&env.client, &edit, "Complete", "RolloutComplete").await;
    let order: Vec<&str> = done.history.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(order, ["dev", "test", "prod"]);

    // Remove the active stage: the rollout restarts from the first.
    let shrink = format!("{}-shrink", env.namespace);
    let patch = json!({"spec": {"stages": [stages[0].clone(), stages[2].clone()]}});
    policies
        .patch(&shrink, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let restarted = poll_until("the restart from dev", Deadline::default(), || async {
        let status = status_of(&env.client, &shrink).await;
        if status
            .history
            .iter()
            .any(|r| r.name == "test" && r.outcome == "Removed")
        {
            Ok(status)
        } else {
            Err(format!("{:?}", status.history))
        }
    })
    .await;
    let outcomes: Vec<(&str, &str)> = restarted
        .history
        .iter()
        .map(|r| (r.name.as_str(), r.outcome.as_str()))
        .collect();
    assert_eq!(outcomes[..2], [("dev", "Fulfilled"), ("test", "Removed")]);
    assert_eq!(outcomes[2].0, "dev", "{outcomes:?}");
    controller.stop().await;
}

/// Waits for a Warning Event `reason` about policy `name` and returns its note.
async fn warning_about(env: &TestEnv, name: &str, reason: &str) -> String {
    poll_until(
        &format!("a Warning Event {reason} about {name}"),
        Deadline::default(),
        || async {
            let list = Api::<Event>::all(env.client.clone())
                .list(&ListParams::default())
                .await
                .map_err(|e| e.to_string())?;
            list.items
                .into_iter()
                .find(|e| {
                    e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
                        && e.reason.as_deref() == Some(reason)
                        && e.type_.as_deref() == Some("Warning")
                })
                .and_then(|e| e.note)
                .ok_or_else(|| "none yet".to_string())
        },
    )
    .await
}

#[tokio::test]
async fn a_policy_cannot_take_over_or_collect_a_binding_policy_it_does_not_control() {
    let env = TestEnv::new().await;
    let _kubestellar = world(&env).await;
    let as_controller = access::as_controller(&env, staged_binding::controller::NAME)
        .await
        .unwrap();
    let controller = InProcess::start(
        as_controller,
        &env.namespace,
        staged_binding::controller::NAME,
        staged_binding::run,
    );

    // Another team's BindingPolicies, made by someone allowed to: one at a name a stage can
    // still ask for (`<policy>.<stage>`), one at a name the old `<policy>-<stage>` reached.
    let reachable = format!("{}-shop.web", env.namespace);
    let old_style = format!("{}-team-prod", env.namespace);
    let admin_bps = Api::<BindingPolicy>::all(env.client.clone());
    for name in [&reachable, &old_style] {
        let bp: BindingPolicy = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"team": "victim"}},
            "spec": {"clusterSelectors": [{"matchLabels": {"env": "prod"}}],
                     "downsync": [{"objectSelectors": [{"matchLabels": {"app": "victim"}}]}]}
        }))
        .unwrap();
        admin_bps.create(&PostParams::default(), &bp).await.unwrap();
    }
    let victims_before = [
        admin_bps.get(&reachable).await.unwrap(),
        admin_bps.get(&old_style).await.unwrap(),
    ];

    // Someone allowed only to create (and delete) StagedBindingPolicies.
    let attacker = format!("{}-placer", env.namespace);
    access::grant(
        &env,
        &attacker,
        None,
        json!([{"apiGroups": ["placement.orrery.dev"], "resources": ["stagedbindingpolicies"], "verbs": ["create", "delete"]}]),
    )
    .await
    .unwrap();
    let as_attacker = access::client_as(&env, &attacker).unwrap();
    match Api::<BindingPolicy>::all(as_attacker.clone())
        .patch(
            &reachable,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}})),
        )
        .await
    {
        Err(kube::Error::Api(status)) if status.code == 403 => {}
        other => panic!("the attacker may not write BindingPolicies directly: {other:?}"),
    }
    let stage = |name: &str| json!([{"name": name, "clusterSelectors": [{"matchLabels": {"env": "prod"}}]}]);
    let attacker_policies = Api::<StagedBindingPolicy>::all(as_attacker);
    // `shop` + `web` is the other team's `shop.web`; `team` + `prod` was `team-prod`.
    let shop = format!("{}-shop", env.namespace);
    let team = format!("{}-team", env.namespace);
    // `shop` has a second stage: a refused stage must not count as fulfilled and move on.
    let shop_stages = json!([
        {"name": "web", "clusterSelectors": [{"matchLabels": {"env": "prod"}}]},
        {"name": "next", "clusterSelectors": [{"matchLabels": {"env": "dev"}}]}
    ]);
    for (short, stages) in [("shop", shop_stages), ("team", stage("prod"))] {
        attacker_policies
            .create(&PostParams::default(), &policy(&env, short, stages, json!({})))
            .await
            .unwrap();
    }

    let refused = wait_condition(&env.client, &shop, "Ready", "BindingPolicyConflict").await;
    let (ready, _, message) = condition(&refused, "Ready");
    assert_eq!(ready, "False");
    assert!(
        message.contains(&format!(
            "BindingPolicy {reachable} already exists and is not controlled by this StagedBindingPolicy"
        )),
        "{message}"
    );
    assert_eq!(condition(&refused, "Progressing").1, "BindingPolicyConflict");
    let note = warning_about(&env, &shop, "BindingPolicyConflict").await;
    assert!(note.contains(&reachable), "{note}");
    // `team` places its own `team.prod`, beside the other team's `team-prod`.
    wait_placed(&env.client, &team, &["prod"]).await;
    // Reconciled again (a spec change, as an admin makes it), the refused stage stays where
    // it is: its name is looked up again, not taken to be free.
    let admin_policies = Api::<StagedBindingPolicy>::all(env.client.clone());
    admin_policies
        .patch(
            &shop,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"progressDeadlineSeconds": 600}})),
        )
        .await
        .unwrap();
    let again = poll_until("shop's status for generation 2", Deadline::default(), || async {
        let status = status_of(&env.client, &shop).await;
        if status.observed_generation == Some(2) {
            Ok(status)
        } else {
            Err(format!("{:?}", status.observed_generation))
        }
    })
    .await;
    assert_eq!(again.active_stage.as_deref(), Some("web"));
    assert_eq!(condition(&again, "Ready").1, "BindingPolicyConflict");
    assert!(binding_policies(&env.client, &shop).await.is_empty());

    let unchanged = |when: &str| {
        let admin_bps = admin_bps.clone();
        let victims_before = victims_before.clone();
        let when = when.to_owned();
        async move {
            for before in &victims_before {
                let now = admin_bps
                    .get(&before.name_any())
                    .await
                    .unwrap_or_else(|err| panic!("{when}: the other team's {} is gone: {err}", before.name_any()));
                assert_eq!(
                    now.resource_version(),
                    before.resource_version(),
                    "{when}: {} was written",
                    before.name_any()
                );
                assert_eq!(now.spec, before.spec, "{when}");
                assert_eq!(now.labels(), before.labels(), "{when}");
                assert!(
                    now.owner_references().is_empty(),
                    "{when}: {:?}",
                    now.owner_references()
                );
            }
        }
    };
    unchanged("while the attacker's policies exist").await;

    // Deleting the policies collects what they placed and nothing else.
    for name in [&shop, &team] {
        let uid = admin_policies.get(name).await.unwrap().uid();
        attacker_policies.delete(name, &DeleteParams::default()).await.unwrap();
        poll_until(&format!("{name} to be gone"), Deadline::default(), || async {
            match admin_policies.get_opt(name).await {
                Ok(Some(p)) if p.uid() == uid => Err("still there".to_string()),
                Ok(_) => Ok(()),
                Err(err) => Err(err.to_string()),
            }
        })
        .await;
    }
    // The garbage collector learns of new CRDs on its discovery resync (every 30 s).
    poll_until(
        "team.prod to be garbage-collected",
        Deadline(std::time::Duration::from_secs(90)),
        || async {
            let left = binding_policies(&env.client, &team).await.len();
            if left == 0 { Ok(()) } else { Err(format!("{left} left")) }
        },
    )
    .await;
    unchanged("after the attacker's policies were deleted and collected").await;
    controller.stop().await;
}

#[tokio::test]
async fn names_that_collided_now_differ_and_binding_policies_under_old_names_are_replaced() {
    let env = TestEnv::new().await;
    let _kubestellar = world(&env).await;
    let controller = start(&env);
    let policies = Api::<StagedBindingPolicy>::all(env.client.clone());
    let stage = |name: &str| json!([{"name": name, "clusterSelectors": [{"matchLabels": {"env": "prod"}}]}]);

    // `a` + `b-c` and `a-b` + `c` were both `a-b-c`.
    let a = format!("{}-a", env.namespace);
    let a_b = format!("{}-a-b", env.namespace);
    policies
        .create(&PostParams::default(), &policy(&env, "a", stage("b-c"), json!({})))
        .await
        .unwrap();
    policies
        .create(&PostParams::default(), &policy(&env, "a-b", stage("c"), json!({})))
        .await
        .unwrap();
    wait_placed(&env.client, &a, &["b-c"]).await;
    wait_placed(&env.client, &a_b, &["c"]).await;
    for (policy_name, bp_name) in [(&a, format!("{a}.b-c")), (&a_b, format!("{a_b}.c"))] {
        let uid = policies.get(policy_name).await.unwrap().uid();
        let bp = Api::<BindingPolicy>::all(env.client.clone())
            .get(&bp_name)
            .await
            .unwrap();
        let controller_uid = bp
            .owner_references()
            .iter()
            .find(|o| o.controller == Some(true))
            .map(|o| o.uid.clone());
        assert_eq!(controller_uid, uid, "{bp_name} is controlled by {policy_name}");
        let status = wait_condition(&env.client, policy_name, "Complete", "RolloutComplete").await;
        assert_eq!(condition(&status, "Ready").0, "True");
    }

    // Its own BindingPolicy is updated in place when the stage changes (over the version the
    // controller checked, taking back the fields its create wrote).
    let placed = Api::<BindingPolicy>::all(env.client.clone())
        .get(&format!("{a}.b-c"))
        .await
        .unwrap();
    policies
        .patch(
            &a,
            &PatchParams::default(),
            &Patch::Merge(
                json!({"spec": {"stages": [{"name": "b-c", "clusterSelectors": [{"matchLabels": {"env": "test"}}]}]}}),
            ),
        )
        .await
        .unwrap();
    poll_until("a.b-c to select env=test", Deadline::default(), || async {
        let bp = Api::<BindingPolicy>::all(env.client.clone())
            .get(&format!("{a}.b-c"))
            .await
            .map_err(|e| e.to_string())?;
        let selected = bp.spec.cluster_selectors[0]
            .match_labels
            .as_ref()
            .and_then(|l| l.get("env").cloned());
        if selected.as_deref() == Some("test") && bp.uid() == placed.uid() {
            Ok(())
        } else {
            Err(format!("{selected:?}, uid {:?}", bp.uid()))
        }
    })
    .await;

    // A BindingPolicy the previous version placed under `<policy>-<stage>` (labelled and
    // controlled by the policy) is pruned; the new name stays.
    let old = policies.get(&a).await.unwrap();
    let old_name = format!("{a}-b-c");
    let mut previous: BindingPolicy = serde_json::from_value(json!({
        "metadata": {"name": old_name, "labels": {
            staged_binding::plan::POLICY_LABEL: a, staged_binding::plan::STAGE_LABEL: "b-c"}},
        "spec": {"clusterSelectors": [{"matchLabels": {"env": "prod"}}]}
    }))
    .unwrap();
    previous.metadata.owner_references = Some(vec![old.controller_owner_ref(&()).unwrap()]);
    Api::<BindingPolicy>::all(env.client.clone())
        .create(&PostParams::default(), &previous)
        .await
        .unwrap();
    wait_placed(&env.client, &a, &["b-c"]).await;

    // A name too long to be a label value is refused at admission.
    let long = policy(&env, &"x".repeat(64), stage("dev"), json!({}));
    match policies.create(&PostParams::default(), &long).await {
        Err(kube::Error::Api(status)) if status.code == 422 => {
            assert!(status.message.contains("at most 63 characters"), "{}", status.message);
        }
        other => panic!("a 64-character name should be refused: {other:?}"),
    }
    controller.stop().await;
}

#[tokio::test]
async fn the_seeds_manifest_advances_through_its_stages_as_the_simulated_clusters_become_ready() {
    let env = TestEnv::new().await;
    let _kubestellar = world(&env).await;
    // The workload the seed's manifest selects (app.kubernetes.io/name=nginx), its pods held
    // in every cluster for now. No other test of this binary labels a Deployment so.
    let workload: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "seed-nginx", "labels": {"app.kubernetes.io/name": "nginx"}, "annotations": {PENDING_IN: "*"}},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "seed-nginx"}}, "template": {"metadata": {"labels": {"app": "seed-nginx"}}, "spec": {"containers": [{"name": "nginx", "image": "nginx"}]}}}
    }))
    .unwrap();
    env.namespaced::<Deployment>()
        .create(&PostParams::default(), &workload)
        .await
        .unwrap();
    let controller = start(&env);
    // The seed's manifest as its README has it (only apiVersion changed; named for this test).
    let mut seed: StagedBindingPolicy = serde_yaml::from_str(include_str!("../testdata/stager-example.yaml")).unwrap();
    let name = format!("{}-seed-manifest", env.namespace);
    seed.metadata.name = Some(name.clone());
    let policies = Api::<StagedBindingPolicy>::all(env.client.clone());
    policies.create(&PostParams::default(), &seed).await.unwrap();
    wait_stage(&env.client, &name, "dev").await;

    // KubeStellar's CombinedStatus, computed from dev1's copy: no cluster ready yet, 0.
    let dev = format!("{name}.dev");
    let waiting = combined_status(&env, &dev, "seed-nginx").await;
    assert_eq!(ready_count(&waiting).as_deref(), Some("0"), "{waiting:?}");
    assert_eq!(waiting.spec.results[0].column_names, ["ready"]);
    let not_met = wait_condition(&env.client, &name, "Progressing", "ConditionNotMet").await;
    assert_eq!(not_met.active_stage.as_deref(), Some("dev"));
    let copies = |cluster: &str| {
        Api::<Deployment>::namespaced(
            env.client.clone(),
            &orrery_e2e::kubestellar_simulator::cluster_namespace(cluster, &env.namespace),
        )
    };
    let dev_copy = copies("dev1").get("seed-nginx").await.unwrap();
    assert_eq!(
        dev_copy.status.and_then(|s| s.ready_replicas).unwrap_or(0),
        0,
        "dev1's pods are held"
    );

    // dev1's pods start; its Deployment reports a ready replica; the aggregator counts 1 and
    // the seed's condition holds: on to prod.
    deployment_ready_in(&env, "seed-nginx", &["dev1"]).await;
    let done = wait_condition(&env.client, &name, "Complete", "RolloutComplete").await;
    let order: Vec<(&str, &str)> = done
        .history
        .iter()
        .map(|r| (r.name.as_str(), r.outcome.as_str()))
        .collect();
    assert_eq!(order[0], ("dev", "Fulfilled"));
    assert_eq!(order[1].0, "prod");
    // Move: the workload now runs in the prod clusters only.
    for cluster in ["prod1", "prod2"] {
        poll_until(&format!("the copy in {cluster}"), Deadline::default(), || async {
            copies(cluster)
                .get_opt("seed-nginx")
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| "not yet".to_string())
        })
        .await;
    }
    poll_until("dev1's copy to go", Deadline::default(), || async {
        match copies("dev1").get_opt("seed-nginx").await {
            Ok(None) => Ok(()),
            other => Err(format!("{:?}", other.map(|d| d.map(|d| d.metadata.deletion_timestamp)))),
        }
    })
    .await;
    policies.delete(&name, &DeleteParams::default()).await.unwrap();
    controller.stop().await;
}

#[tokio::test]
async fn todays_binding_policy_layout_is_kept_and_fields_only_older_layouts_had_are_pruned() {
    use kube::api::{ApiResource, DynamicObject};

    let env = TestEnv::new().await;
    let _kubestellar = world(&env).await;
    ready_in(&env, &["dev1"]).await;
    let app = format!("nginx-{}", env.namespace);
    let resource = ApiResource::erase::<BindingPolicy>(&());
    let raw = Api::<DynamicObject>::all_with(env.client.clone(), &resource);
    let write = |name: &str, spec: Json| {
        let object: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "control.kubestellar.io/v1alpha1", "kind": "BindingPolicy",
            "metadata": {"name": name}, "spec": spec,
        }))
        .unwrap();
        let raw = raw.clone();
        async move { raw.create(&PostParams::default(), &object).await.unwrap() }
    };
    let selectors = json!([{"matchLabels": {"app.kubernetes.io/name": app}}]);
    let dev = json!([{"matchLabels": {"env": "dev"}}]);

    // KubeStellar 0.24's `statusCollection` and the older spec-level
    // `wantSingletonReportedState`: today's schema drops both.
    let old = format!("{}-layout-old", env.namespace);
    let created = write(
        &old,
        json!({"clusterSelectors": dev, "wantSingletonReportedState": true,
               "downsync": [{"objectSelectors": selectors, "statusCollection": {"statusCollectors": ["deployments-aggregator"]}}]}),
    )
    .await;
    assert_eq!(
        created.data["spec"],
        json!({"clusterSelectors": dev, "downsync": [{"objectSelectors": selectors}]}),
        "the old layout's fields are pruned"
    );
    // Today's layout: the modulation beside the object test, all kept.
    let today = format!("{}-layout-today", env.namespace);
    let clause = json!({"objectSelectors": selectors, "createOnly": true, "statusCollectors": ["deployments-aggregator"], "wantSingletonReportedState": true});
    let created = write(&today, json!({"clusterSelectors": dev, "downsync": [clause]})).await;
    assert_eq!(
        created.data["spec"]["downsync"][0], clause,
        "today's layout is kept whole"
    );

    // So KubeStellar collects status for today's layout only: its CombinedStatus counts dev1's
    // ready copy, while the pruned policy's Binding names no StatusCollector and gets none.
    let status = combined_status(&env, &today, "nginx").await;
    poll_until("the aggregator to count dev1", Deadline::default(), || async {
        let status = combined_status(&env, &today, "nginx").await;
        match ready_count(&status).as_deref() {
            Some("1") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(status.labels()[combined_status_labels::BINDING_POLICY], today);
    let bindings = Api::<Binding>::all(env.client.clone());
    let clause_of = |name: String| {
        let bindings = bindings.clone();
        async move {
            poll_until(&format!("the Binding {name}"), Deadline::default(), || async {
                let binding = bindings.get_opt(&name).await.map_err(|e| e.to_string())?;
                binding
                    .and_then(|b| b.spec.workload.namespace_scope.first().cloned())
                    .ok_or_else(|| "not resolved yet".to_string())
            })
            .await
        }
    };
    let old_clause = clause_of(old.clone()).await;
    assert!(old_clause.status_collectors.is_empty(), "{old_clause:?}");
    let today_clause = clause_of(today.clone()).await;
    assert_eq!(today_clause.status_collectors, ["deployments-aggregator"]);
    assert!(today_clause.create_only && today_clause.want_singleton_reported_state);
    let selector = format!("{}={old}", combined_status_labels::BINDING_POLICY);
    let none = env
        .namespaced::<CombinedStatus>()
        .list(&ListParams::default().labels(&selector))
        .await
        .unwrap();
    assert!(none.items.is_empty(), "{:?}", none.items);

    // A StagedBindingPolicy written in the 0.24 layout still collects: it is translated.
    let controller = start(&env);
    let name = format!("{}-layout-sbp", env.namespace);
    // Keep: dev's BindingPolicy stays to be read once the rollout is through.
    let mut translated = policy(&env, "layout-sbp", seed_stages(), json!({"placementMode": "Keep"}));
    translated.spec.downsync[0].status_collectors.clear();
    translated.spec.downsync[0].status_collection = Some(crd_types::placement::StatusCollection {
        status_collectors: vec!["deployments-aggregator".into()],
    });
    Api::<StagedBindingPolicy>::all(env.client.clone())
        .create(&PostParams::default(), &translated)
        .await
        .unwrap();
    wait_condition(&env.client, &name, "Complete", "RolloutComplete").await;
    let dev_bp = format!("{name}.dev");
    let written = raw.get(&dev_bp).await.unwrap();
    assert_eq!(
        written.data["spec"]["downsync"][0]["statusCollectors"],
        json!(["deployments-aggregator"])
    );
    assert!(written.data["spec"]["downsync"][0].get("statusCollection").is_none());
    for bp in [old, today] {
        raw.delete(&bp, &DeleteParams::default()).await.unwrap();
    }
    Api::<StagedBindingPolicy>::all(env.client.clone())
        .delete(&name, &DeleteParams::default())
        .await
        .unwrap();
    controller.stop().await;
}
