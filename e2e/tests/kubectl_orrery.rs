//! The kubectl plugin against the real control plane: `tree` reads a Project's hierarchy,
//! `fire` makes ignitor-scheduler fire once more and `runs` lists the runs that follow,
//! `approve`, `promote`, `abort`, `pause` and `resume` write the annotations the controllers
//! honour, and mistakes are errors that say what to fix.

// A test that cannot proceed should stop right there, with the error.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crd_types::hierarchy::{
    ABORT_ANNOTATION, Application, Cluster, PAUSE_ANNOTATION, PROMOTE_ANNOTATION, Project, VirtualCluster,
};
use crd_types::placement::{APPROVE_ANNOTATION, StagedBindingPolicy};
use crd_types::workflow::{Ignitor, Task, TaskRun, TaskRunPhase};
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use kubectl_orrery::{Command, execute};
use orrery_e2e::pod_simulator::PodSimulator;
use orrery_e2e::{Deadline, InProcess, TestEnv, create, poll_until};
use serde_json::json;

async fn run(env: &TestEnv, command: Command) -> anyhow::Result<String> {
    execute(env.client.clone(), &env.namespace, &command).await
}

/// Runs an Application command (`Command::Pause` and the like) on `app`.
async fn on_app(env: &TestEnv, command: fn(String) -> Command, app: &str) -> anyhow::Result<String> {
    run(env, command(app.to_owned())).await
}

/// Sets a `Ready` condition in `object`'s status, as its executor would.
async fn set_ready<K>(api: &Api<K>, name: &str, status: &str, reason: &str, message: &str)
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let patch = json!({"status": {"conditions": [{
        "type": "Ready", "status": status, "reason": reason, "message": message,
        "lastTransitionTime": "2026-01-01T00:00:00Z"
    }]}});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
}

#[tokio::test]
async fn tree_shows_each_layer_with_its_ready_state() {
    let env = TestEnv::new().await;
    let ns = env.namespace.clone();
    let projects = Api::<Project>::all(env.client.clone());
    let clusters = Api::<Cluster>::all(env.client.clone());
    let vcs = Api::<VirtualCluster>::all(env.client.clone());
    let apps: Api<Application> = env.namespaced();
    create(&projects, json!({"metadata": {"name": ns}, "spec": {}})).await;
    create(
        &clusters,
        json!({"metadata": {"name": format!("{ns}-local")}, "spec": {"project": ns}}),
    )
    .await;
    create(
        &clusters,
        json!({"metadata": {"name": format!("{ns}-other")}, "spec": {"project": "someone-else"}}),
    )
    .await;
    for vc in ["a", "b"] {
        create(
            &vcs,
            json!({"metadata": {"name": format!("{ns}-{vc}")}, "spec": {"cluster": format!("{ns}-local")}}),
        )
        .await;
    }
    create(
        &apps,
        json!({"metadata": {"name": "shop"}, "spec": {
            "virtualCluster": format!("{ns}-a"), "versions": [{"name": "v1", "image": "shop:1"}]
        }}),
    )
    .await;
    set_ready(
        &projects,
        &ns,
        "False",
        "ChildrenNotReady",
        &format!("Cluster/{ns}-local is not ready"),
    )
    .await;
    set_ready(&clusters, &format!("{ns}-local"), "False", "ChildrenNotReady", "1 of 2").await;
    set_ready(&vcs, &format!("{ns}-a"), "True", "Ready", "").await;
    set_ready(
        &vcs,
        &format!("{ns}-b"),
        "False",
        "QuotaRejected",
        "pods: must be a quantity",
    )
    .await;

    let printed = run(&env, Command::Tree { project: ns.clone() }).await.unwrap();
    let rows: Vec<Vec<&str>> = printed.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows[0], ["NAMESPACE", "NAME", "READY", "REASON", "AGE", "MESSAGE"]);
    let project_name = format!("Project/{ns}");
    assert_eq!(&rows[1][..4], ["-", project_name.as_str(), "False", "ChildrenNotReady"]);
    assert!(
        printed
            .lines()
            .nth(2)
            .unwrap()
            .contains(&format!("└── Cluster/{ns}-local "))
    );
    assert!(
        printed
            .lines()
            .nth(3)
            .unwrap()
            .contains(&format!("├── VirtualCluster/{ns}-a "))
    );
    assert!(printed.lines().nth(4).unwrap().contains("└── Application/shop "));
    assert_eq!(rows[4][0], ns, "the Application's namespace");
    assert!(printed.lines().nth(4).unwrap().contains("no Ready condition yet"));
    let last = printed.lines().nth(5).unwrap();
    assert!(
        last.contains(&format!("└── VirtualCluster/{ns}-b"))
            && last.contains(" QuotaRejected ")
            && last.ends_with(" pods: must be a quantity"),
        "{printed}"
    );
    assert_eq!(
        printed.lines().count(),
        6,
        "another Project's Cluster is not shown:\n{printed}"
    );

    let missing = run(
        &env,
        Command::Tree {
            project: format!("{ns}-nope"),
        },
    )
    .await
    .unwrap_err()
    .to_string();
    assert_eq!(
        missing,
        format!("no project named \"{ns}-nope\"; list them with: kubectl get projects")
    );

    for vc in ["a", "b"] {
        vcs.delete(&format!("{ns}-{vc}"), &DeleteParams::default())
            .await
            .unwrap();
    }
    for cluster in ["local", "other"] {
        clusters
            .delete(&format!("{ns}-{cluster}"), &DeleteParams::default())
            .await
            .unwrap();
    }
    projects.delete(&ns, &DeleteParams::default()).await.unwrap();
}

#[tokio::test]
async fn fire_starts_the_tasks_again_and_runs_lists_them() {
    let env = TestEnv::new().await;
    let _kubelet = PodSimulator::start(env.client.clone(), Some(&env.namespace))
        .await
        .unwrap();
    let scheduler = InProcess::start(
        env.client.clone(),
        &env.namespace,
        ignitor_scheduler::controller::NAME,
        ignitor_scheduler::run,
    );
    let workflow = InProcess::start(
        env.client.clone(),
        &env.namespace,
        task_workflow::controller::NAME,
        task_workflow::run,
    );
    create(
        &env.namespaced::<Task>(),
        json!({"metadata": {"name": "build"}, "spec": {
            "startOnIgnition": ["go"],
            "template": {"spec": {"containers": [{"name": "main", "image": "busybox"}]}},
        }}),
    )
    .await;
    create(
        &env.namespaced::<Ignitor>(),
        json!({"metadata": {"name": "go"}, "spec": {"scheduled": "NOW"}}),
    )
    .await;
    let succeeded = |count: usize| {
        let env = &env;
        async move {
            let runs = env
                .namespaced::<TaskRun>()
                .list(&Default::default())
                .await
                .map_err(|e| e.to_string())?;
            let done = runs
                .items
                .iter()
                .filter(|r| r.status.as_ref().and_then(|s| s.phase) == Some(TaskRunPhase::Succeeded))
                .count();
            if done == count {
                Ok(())
            } else {
                Err(format!("{done} of {} runs succeeded", runs.items.len()))
            }
        }
    };
    poll_until("the first run", Deadline::default(), || succeeded(1)).await;

    let said = run(&env, Command::Fire { ignitor: "go".into() }).await.unwrap();
    assert!(
        said.starts_with("ignitor/go fire requested (workflow.orrery.dev/fire=")
            && said.contains("its last firing was #1"),
        "{said}"
    );
    poll_until("the fired run", Deadline::default(), || succeeded(2)).await;
    let ignitor = env.namespaced::<Ignitor>().get("go").await.unwrap();
    assert_eq!(ignitor.status.unwrap().last_ignition.unwrap().sequence, 2);

    let printed = run(&env, Command::Runs { task: "build".into() }).await.unwrap();
    let rows: Vec<Vec<&str>> = printed.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(
        rows[0],
        [
            "NAME",
            "PHASE",
            "INITIATOR",
            "ATTEMPT",
            "STARTED",
            "DURATION",
            "EXIT",
            "MESSAGE"
        ]
    );
    assert_eq!(rows.len(), 3, "{printed}");
    for row in &rows[1..] {
        assert_eq!(&row[1..4], ["Succeeded", "ignitor/go", "1"], "{printed}");
        assert_eq!(row[7], "0", "exit code: {printed}");
    }

    let missing = run(&env, Command::Fire { ignitor: "gone".into() })
        .await
        .unwrap_err()
        .to_string();
    assert!(
        missing.starts_with("no ignitor named \"gone\" in namespace"),
        "{missing}"
    );
    assert!(missing.contains("kubectl get ignitors -n"), "{missing}");

    workflow.stop().await;
    scheduler.stop().await;
}

#[tokio::test]
async fn approve_names_the_waiting_stage_and_refuses_what_cannot_be_approved() {
    let env = TestEnv::new().await;
    let name = format!("{}-gated", env.namespace);
    let policies = Api::<StagedBindingPolicy>::all(env.client.clone());
    create(
        &policies,
        json!({"metadata": {"name": name}, "spec": {
            "downsync": [{"objectSelectors": [{"matchLabels": {"app": "x"}}]}],
            "stages": [
                {"name": "dev", "clusterSelectors": [{"matchLabels": {"env": "dev"}}]},
                {"name": "prod", "clusterSelectors": [{"matchLabels": {"env": "prod"}}], "requireApproval": true},
            ],
        }}),
    )
    .await;
    let approve = |stage: Option<&str>| Command::Approve {
        policy: name.clone(),
        stage: stage.map(str::to_owned),
    };

    let err = run(&env, approve(Some("test"))).await.unwrap_err().to_string();
    assert_eq!(
        err,
        format!("stagedbindingpolicy/{name} has no stage \"test\"; its stages are dev, prod")
    );
    let err = run(&env, approve(Some("dev"))).await.unwrap_err().to_string();
    assert_eq!(
        err,
        format!("stage \"dev\" of stagedbindingpolicy/{name} does not require approval")
    );

    let said = run(&env, approve(None)).await.unwrap();
    assert!(
        said.starts_with(&format!("stagedbindingpolicy/{name}: stage \"prod\" approved")),
        "{said}"
    );
    let annotations = policies.get(&name).await.unwrap().annotations().clone();
    assert_eq!(annotations[APPROVE_ANNOTATION], "prod");

    policies.delete(&name, &DeleteParams::default()).await.unwrap();
}

#[tokio::test]
async fn canary_controls_write_their_annotations_once_each() {
    let env = TestEnv::new().await;
    let apps: Api<Application> = env.namespaced();
    create(
        &apps,
        json!({"metadata": {"name": "shop"}, "spec": {
            "versions": [{"name": "v1", "image": "shop:1"}, {"name": "v2", "image": "shop:2"}],
            "policies": [{"name": "canary"}],
        }}),
    )
    .await;
    create(
        &apps,
        json!({"metadata": {"name": "plain"}, "spec": {"versions": [{"name": "v1", "image": "shop:1"}]}}),
    )
    .await;
    let annotations = || async { apps.get("shop").await.unwrap().annotations().clone() };

    let said = on_app(&env, |application| Command::Pause { application }, "shop")
        .await
        .unwrap();
    assert!(said.starts_with("application/shop paused"), "{said}");
    assert_eq!(annotations().await[PAUSE_ANNOTATION], "true");
    let said = on_app(&env, |application| Command::Pause { application }, "shop")
        .await
        .unwrap();
    assert_eq!(said, "application/shop is already paused: nothing to do\n");
    let said = on_app(&env, |application| Command::Resume { application }, "shop")
        .await
        .unwrap();
    assert!(said.starts_with("application/shop resumed"), "{said}");
    assert!(!annotations().await.contains_key(PAUSE_ANNOTATION));

    let said = on_app(&env, |application| Command::Promote { application }, "shop")
        .await
        .unwrap();
    assert!(said.contains("promote requested"), "{said}");
    let first = annotations().await[PROMOTE_ANNOTATION].clone();
    on_app(&env, |application| Command::Promote { application }, "shop")
        .await
        .unwrap();
    let second = annotations().await[PROMOTE_ANNOTATION].clone();
    assert_ne!(first, second, "each promote is a new token, honoured once");
    let said = on_app(&env, |application| Command::Abort { application }, "shop")
        .await
        .unwrap();
    assert!(said.contains("abort requested"), "{said}");
    assert!(annotations().await.contains_key(ABORT_ANNOTATION));

    let err = on_app(&env, |application| Command::Promote { application }, "plain")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("application/plain has no policies"), "{err}");
    let err = on_app(&env, |application| Command::Abort { application }, "nope")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("no application named \"nope\""), "{err}");
}
