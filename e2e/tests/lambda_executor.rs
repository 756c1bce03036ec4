//! lambda-executor on the real control plane: a sync hook written in Python for Metacontroller
//! (`e2e/hooks/configmap_per_version.py`, started by the test) runs an Application of a
//! Cluster → VirtualCluster → Application tree; CEL templates run another. Both apply their
//! children marked as the resource's own, prune what is no longer desired, put back what is
//! deleted by hand, pick up after a restart, and clean up on deletion; a hook that fails or
//! answers what may not be made is a condition and an Event, and nothing is pruned for it.
//! The controller runs with the chart's RBAC (its ServiceAccount's rules, not an admin's).

// A test that cannot proceed should stop right there, with the error.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Stdio;

use crd_types::hierarchy::{Application, Cluster, VirtualCluster};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use orrery_e2e::{
    Deadline, InProcess, TestEnv, access, create, poll_until, wait_gone, wait_not_ready, wait_ready, warnings_for,
};
use orrery_runtime::Context;
use orrery_runtime::egress::LOCALHOST;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The controllers watch cluster-scoped kinds across the whole control plane, so two running
/// at once would both act on every test's resources: the tests of this file take turns.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The Python hook, serving on loopback; its URL. Killed when the returned child drops.
async fn start_hook() -> (Child, String) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("hooks/configmap_per_version.py");
    let mut child = Command::new("python3")
        .arg(script)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 runs the hook (install python3)");
    let stdout = child.stdout.take().unwrap();
    let port = BufReader::new(stdout)
        .lines()
        .next_line()
        .await
        .unwrap()
        .expect("the hook prints its port");
    (child, format!("http://127.0.0.1:{port}/sync"))
}

/// lambda-executor with the chart's RBAC, allowed to reach the test's hook on loopback.
async fn start_lambda(env: &TestEnv) -> InProcess {
    let client = access::as_controller(env, lambda_executor::NAME).await.unwrap();
    let (context, stop) = Context::standalone(client, lambda_executor::NAME);
    InProcess::start_with(context.allowing_egress([LOCALHOST]), stop, lambda_executor::run)
}

fn start_hierarchy(env: &TestEnv) -> InProcess {
    InProcess::start_cluster_wide(
        env.client.clone(),
        hierarchy_executor::controller::NAME,
        hierarchy_executor::run,
    )
}

/// The hook's executor reference: ConfigMaps, re-synced every 5 s, finalizing on deletion.
fn webhook(url: &str) -> Value {
    json!({"name": "webhook", "parameters": {
        "url": url,
        "childResources": [{"apiVersion": "v1", "resource": "configmaps"}],
        "resyncPeriodSeconds": 5,
        "finalize": true,
    }})
}

/// The ConfigMaps in the test's namespace that the resource with `uid` owns, by name, with
/// their `image`.
async fn owned_config_maps(env: &TestEnv, uid: &str) -> Vec<(String, String)> {
    let list = env
        .namespaced::<ConfigMap>()
        .list(&kube::api::ListParams::default().labels(&format!("hierarchy.orrery.dev/owner={uid}")))
        .await
        .unwrap();
    let mut found: Vec<(String, String)> = list
        .items
        .iter()
        .map(|c| {
            let image = c
                .data
                .as_ref()
                .and_then(|d| d.get("image"))
                .cloned()
                .unwrap_or_default();
            (c.name_any(), image)
        })
        .collect();
    found.sort();
    found
}

async fn wait_config_maps(env: &TestEnv, uid: &str, what: &str, expected: &[(&str, &str)]) {
    let expected: Vec<(String, String)> = expected.iter().map(|(n, i)| ((*n).into(), (*i).into())).collect();
    poll_until(what, Deadline::default(), || async {
        let found = owned_config_maps(env, uid).await;
        if found == expected {
            Ok(())
        } else {
            Err(format!("{found:?}"))
        }
    })
    .await;
}

async fn executor_status(apps: &Api<Application>, name: &str) -> Option<Value> {
    let app = apps.get(name).await.ok()?;
    let status = app.status?.common;
    (status.executor.as_deref() == Some(lambda_executor::NAME))
        .then(|| status.executor_status.map(Value::Object))
        .flatten()
}

async fn set_versions(apps: &Api<Application>, name: &str, versions: Value) {
    apps.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"versions": versions}})),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn a_python_hook_runs_an_application_in_a_tree() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let env = TestEnv::new().await;
    let (_hook, url) = start_hook().await;
    let hierarchy = start_hierarchy(&env);
    let mut lambda = start_lambda(&env).await;
    let name = env.namespace.clone();
    let clusters: Api<Cluster> = Api::all(env.client.clone());
    let vcs: Api<VirtualCluster> = Api::all(env.client.clone());
    let apps: Api<Application> = env.namespaced();

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
               "spec": {"cluster": format!("{name}-local"), "namespace": name}}),
    )
    .await;
    let app = create(
        &apps,
        json!({"metadata": {"name": "shop"},
               "spec": {"virtualCluster": format!("{name}-team"), "executor": webhook(&url),
                        "versions": [{"name": "v1", "image": "shop:1"}, {"name": "v2", "image": "shop:2"}]}}),
    )
    .await;
    let uid = app.uid().unwrap();

    // The hook's children, marked as the Application's own; its status and its Ready word
    // (once it has seen its children) on the Application; readiness rolls up the tree.
    wait_config_maps(
        &env,
        &uid,
        "the hook's ConfigMaps",
        &[("shop-v1", "shop:1"), ("shop-v2", "shop:2")],
    )
    .await;
    let made = env.namespaced::<ConfigMap>().get("shop-v1").await.unwrap();
    let owner = &made.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!((owner.kind.as_str(), owner.uid.as_str()), ("Application", uid.as_str()));
    wait_ready(&apps, "shop").await;
    let (_, reason, message) = orrery_e2e::ready_condition(&apps, "shop").await.unwrap();
    assert_eq!(
        (reason.as_str(), message.as_str()),
        ("AllMade", "2 of 2 ConfigMaps made")
    );
    assert_eq!(executor_status(&apps, "shop").await.unwrap()["versions"], 2);
    wait_ready(&vcs, &format!("{name}-team")).await;
    let app = apps.get("shop").await.unwrap();
    assert!(
        app.finalizers().iter().any(|f| f == lambda_executor::FINALIZER),
        "a finalizing hook holds the Application until it is done: {:?}",
        app.finalizers()
    );

    // A version dropped: its ConfigMap is pruned; one deleted by hand is put back.
    set_versions(&apps, "shop", json!([{"name": "v1", "image": "shop:1"}])).await;
    wait_config_maps(&env, &uid, "v2's ConfigMap pruned", &[("shop-v1", "shop:1")]).await;
    env.namespaced::<ConfigMap>()
        .delete("shop-v1", &DeleteParams::default())
        .await
        .unwrap();
    wait_config_maps(&env, &uid, "shop-v1 put back", &[("shop-v1", "shop:1")]).await;

    // Down while the spec changes; after a restart the change is made.
    lambda.kill().await;
    set_versions(
        &apps,
        "shop",
        json!([{"name": "v1", "image": "shop:1b"}, {"name": "v3", "image": "shop:3"}]),
    )
    .await;
    lambda = start_lambda(&env).await;
    wait_config_maps(
        &env,
        &uid,
        "the change made after a restart",
        &[("shop-v1", "shop:1b"), ("shop-v3", "shop:3")],
    )
    .await;

    // Deleting: the hook is asked to finalize, its children go, then the Application.
    apps.delete("shop", &DeleteParams::default()).await.unwrap();
    wait_gone(&apps, "shop").await;
    assert_eq!(
        owned_config_maps(&env, &uid).await,
        vec![],
        "the hook's children are gone"
    );

    lambda.stop().await;
    hierarchy.stop().await;
}

#[tokio::test]
async fn a_failing_hook_or_a_child_it_may_not_make_is_a_condition_and_nothing_is_pruned() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let env = TestEnv::new().await;
    let (_hook, url) = start_hook().await;
    let lambda = start_lambda(&env).await;
    let apps: Api<Application> = env.namespaced();
    let mut executor = webhook(&url);
    executor["parameters"]["timeoutSeconds"] = json!(1);
    let app = create(
        &apps,
        json!({"metadata": {"name": "moody"},
               "spec": {"executor": executor, "versions": [{"name": "v1", "image": "moody:1"}]}}),
    )
    .await;
    let uid = app.uid().unwrap();
    wait_config_maps(&env, &uid, "the hook's ConfigMap", &[("moody-v1", "moody:1")]).await;

    let cases = [
        (
            "secret",
            "ChildNotDeclared",
            "children[1] is a Secret (v1), not one of childResources: ConfigMap (v1)",
        ),
        (
            "elsewhere",
            "ChildInOtherNamespace",
            "ConfigMap moody-v1 is in namespace kube-system",
        ),
        ("garbage", "HookFailed", "the answer is not a JSON object"),
        ("error", "HookFailed", "HTTP 500 Internal Server Error"),
        ("slow", "HookFailed", "the call timed out"),
    ];
    for (mode, reason, expected) in cases {
        apps.patch(
            "moody",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"hooks.orrery.dev/mode": mode}}})),
        )
        .await
        .unwrap();
        // Two cases share a reason: wait for this one's message.
        poll_until(
            &format!("{mode}: {reason} saying {expected}"),
            Deadline::default(),
            || async {
                match orrery_e2e::ready_condition(&apps, "moody").await? {
                    (status, r, message) if status == "False" && r == reason && message.contains(expected) => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            },
        )
        .await;
        // A refused answer changes nothing: the ConfigMap made before stays.
        assert_eq!(
            owned_config_maps(&env, &uid).await,
            vec![("moody-v1".to_owned(), "moody:1".to_owned())],
            "{mode}"
        );
    }
    let secrets: Api<Secret> = env.namespaced();
    assert!(
        secrets.get_opt("moody-token").await.unwrap().is_none(),
        "no undeclared kind is made"
    );
    for (reason, expected) in [
        ("ChildNotDeclared", "is a Secret"),
        ("ChildInOtherNamespace", "kube-system"),
        ("HookFailed", "the answer is not a JSON object"),
    ] {
        let notes = warnings_for(&env, "moody", reason, 1).await;
        assert!(notes.iter().any(|n| n.contains(expected)), "{reason}: {notes:?}");
    }

    // The hook is called only where the operator allows: never the metadata service.
    let point_at = |url: &str| {
        json!({"metadata": {"annotations": {"hooks.orrery.dev/mode": null}},
               "spec": {"executor": {"parameters": {"url": url}}}})
    };
    apps.patch(
        "moody",
        &PatchParams::default(),
        &Patch::Merge(point_at("http://169.254.169.254/latest/meta-data")),
    )
    .await
    .unwrap();
    poll_until("the metadata service refused", Deadline::default(), || async {
        match orrery_e2e::ready_condition(&apps, "moody").await? {
            (status, r, message) if status == "False" && r == "HookFailed" && message.contains("link-local") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    apps.patch("moody", &PatchParams::default(), &Patch::Merge(point_at(&url)))
        .await
        .unwrap();

    // Someone else's ConfigMap under a name the hook wants is never taken over.
    let config_maps: Api<ConfigMap> = env.namespaced();
    config_maps
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "moody-v2"}, "data": {"image": "theirs"}})).unwrap(),
        )
        .await
        .unwrap();
    apps.patch(
        "moody",
        &PatchParams::default(),
        &Patch::Merge(
            json!({"spec": {"versions": [{"name": "v1", "image": "moody:1"}, {"name": "v2", "image": "moody:2"}]}}),
        ),
    )
    .await
    .unwrap();
    let message = wait_not_ready(&apps, "moody", "OwnershipConflict").await;
    assert!(message.contains("moody-v2"), "{message}");
    let theirs = config_maps.get("moody-v2").await.unwrap();
    assert_eq!(theirs.data.unwrap()["image"], "theirs");
    lambda.stop().await;
}

#[tokio::test]
async fn cel_templates_render_children_readiness_and_status() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let env = TestEnv::new().await;
    let mut lambda = start_lambda(&env).await;
    let apps: Api<Application> = env.namespaced();
    let template = json!({"name": "template", "parameters": {
        "childResources": [{"apiVersion": "v1", "resource": "configmaps"}],
        "resyncPeriodSeconds": 5,
        "resources": [
            {"id": "config",
             "template": {"apiVersion": "v1", "kind": "ConfigMap",
                          "metadata": {"name": "${parent.metadata.name}-config"},
                          "data": {"image": "${parent.spec.versions[0].image}",
                                   "versions": "${string(size(parent.spec.versions))}"}},
             "readyWhen": ["${has(config.data.image)}"]},
            {"id": "canary",
             "includeWhen": ["${size(parent.spec.versions) > 1}"],
             "template": {"apiVersion": "v1", "kind": "ConfigMap",
                          "metadata": {"name": "${parent.metadata.name}-canary"},
                          "data": {"image": "${parent.spec.versions[1].image}"}}},
        ],
        "status": {"config": "${config.metadata.name}", "canary": "${canary != null}"},
    }});
    let app = create(
        &apps,
        json!({"metadata": {"name": "tpl"},
               "spec": {"executor": template, "versions": [{"name": "v1", "image": "tpl:1"}, {"name": "v2", "image": "tpl:2"}]}}),
    )
    .await;
    let uid = app.uid().unwrap();
    wait_config_maps(
        &env,
        &uid,
        "both rendered",
        &[("tpl-canary", "tpl:2"), ("tpl-config", "tpl:1")],
    )
    .await;
    wait_ready(&apps, "tpl").await;
    poll_until("the rendered status", Deadline::default(), || async {
        match executor_status(&apps, "tpl").await {
            Some(status) if status == json!({"config": "tpl-config", "canary": true}) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    // includeWhen turns false: the canary's ConfigMap goes; a restart changes nothing.
    set_versions(&apps, "tpl", json!([{"name": "v1", "image": "tpl:1"}])).await;
    wait_config_maps(&env, &uid, "the canary pruned", &[("tpl-config", "tpl:1")]).await;
    lambda.kill().await;
    lambda = start_lambda(&env).await;
    poll_until("the status after a restart", Deadline::default(), || async {
        match executor_status(&apps, "tpl").await {
            Some(status) if status == json!({"config": "tpl-config", "canary": false}) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    // A template that does not compile is a condition naming where.
    apps.patch(
        "tpl",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"executor": {"parameters": {"status": {"x": "${nothing.here}"}}}}})),
    )
    .await
    .unwrap();
    let message = wait_not_ready(&apps, "tpl", "InvalidParameters").await;
    assert!(message.starts_with("status.x:"), "{message}");

    // Deleting: the children go with their owner (no finalizer without a finalizing hook).
    apps.delete("tpl", &DeleteParams::default()).await.unwrap();
    wait_gone(&apps, "tpl").await;
    poll_until(
        "the garbage collector removes the children",
        Deadline::default(),
        || async {
            let left = owned_config_maps(&env, &uid).await;
            if left.is_empty() {
                Ok(())
            } else {
                Err(format!("{left:?}"))
            }
        },
    )
    .await;
    lambda.stop().await;
}
