//! A reconcile that fails shows on its object, not only in the log: a request the API server
//! refuses (here an admission policy freezing TaskRuns in the namespace, 422) gives the Task a
//! `ReconcileFailed` condition with the server's words and a Warning Event at once, and is not
//! retried until the Task changes; once it succeeds the condition goes.

// A test that cannot proceed should stop right there, with the error.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crd_types::workflow::{Ignitor, Task, TaskRun};
use k8s_openapi::api::admissionregistration::v1::{ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding};
use k8s_openapi::api::events::v1::Event;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use orrery_e2e::{Deadline, InProcess, TestEnv, create, poll_until, stays};
use orrery_runtime::Context;
use orrery_runtime::failures::RECONCILE_FAILED;
use serde_json::json;

/// The `ReconcileFailed` condition of Task `name`, as `(reason, message)`.
async fn failure_shown(tasks: &Api<Task>, name: &str) -> Option<(String, String)> {
    let task = tasks.get(name).await.ok()?;
    let condition = task
        .status?
        .conditions
        .into_iter()
        .find(|c| c.type_ == RECONCILE_FAILED)?;
    Some((condition.reason, condition.message))
}

/// An admission policy refusing every TaskRun in the test's namespace, as an organisation's
/// change freeze would.
struct Freeze {
    name: String,
}

impl Freeze {
    async fn start(env: &TestEnv) -> Self {
        let name = format!("{}-freeze", env.namespace);
        let policies: Api<ValidatingAdmissionPolicy> = Api::all(env.client.clone());
        create(
            &policies,
            json!({"metadata": {"name": name},
                   "spec": {"failurePolicy": "Fail",
                            "matchConstraints": {"resourceRules": [{"apiGroups": ["workflow.orrery.dev"],
                                "apiVersions": ["*"], "operations": ["CREATE"], "resources": ["taskruns"]}]},
                            "validations": [{"expression": "false", "message": "runs are frozen here"}]}}),
        )
        .await;
        let bindings: Api<ValidatingAdmissionPolicyBinding> = Api::all(env.client.clone());
        create(
            &bindings,
            json!({"metadata": {"name": name},
                   "spec": {"policyName": name, "validationActions": ["Deny"],
                            "matchResources": {"namespaceSelector": {"matchLabels":
                                {"kubernetes.io/metadata.name": env.namespace}}}}}),
        )
        .await;
        let freeze = Freeze { name };
        freeze.until_runs_are(env, false).await;
        freeze
    }

    async fn lift(&self, env: &TestEnv) {
        Api::<ValidatingAdmissionPolicyBinding>::all(env.client.clone())
            .delete(&self.name, &DeleteParams::default())
            .await
            .unwrap();
        self.until_runs_are(env, true).await;
    }

    /// Waits until a TaskRun created as a dry run is `allowed` (policies take effect a moment
    /// after they are written).
    async fn until_runs_are(&self, env: &TestEnv, allowed: bool) {
        let runs: Api<TaskRun> = env.namespaced();
        let probe: TaskRun =
            serde_json::from_value(json!({"metadata": {"name": "probe"}, "spec": {"taskRef": {"name": "none"}}}))
                .unwrap();
        let dry_run = PostParams {
            dry_run: true,
            ..PostParams::default()
        };
        poll_until(
            "the freeze in force or lifted",
            Deadline(Duration::from_secs(30)),
            || async {
                match runs.create(&dry_run, &probe).await {
                    Ok(_) if allowed => Ok(()),
                    Err(kube::Error::Api(status)) if !allowed && status.code == 422 => Ok(()),
                    other => Err(format!("{:?}", other.map(|r| r.name_any()))),
                }
            },
        )
        .await;
    }
}

#[tokio::test]
async fn a_refused_request_shows_on_the_object_and_is_not_retried_until_it_changes() {
    let env = TestEnv::new().await;
    let freeze = Freeze::start(&env).await;
    let (context, stop) = Context::standalone(env.client.clone(), task_workflow::controller::NAME);
    let metrics = context.metrics.clone();
    let workflow = InProcess::start_with(context.in_namespace(&env.namespace), stop, task_workflow::run);
    let scheduler = InProcess::start(
        env.client.clone(),
        &env.namespace,
        ignitor_scheduler::controller::NAME,
        ignitor_scheduler::run,
    );
    let tasks: Api<Task> = env.namespaced();
    create(
        &tasks,
        json!({"metadata": {"name": "blocked"},
               "spec": {"startOnIgnition": ["now"],
                        "template": {"spec": {"containers": [{"name": "main", "image": "busybox"}]}}}}),
    )
    .await;
    create(
        &env.namespaced::<Ignitor>(),
        json!({"metadata": {"name": "now"}, "spec": {"scheduled": "NOW"}}),
    )
    .await;

    let (reason, message) = poll_until(
        "the refusal shown on the Task",
        Deadline(Duration::from_secs(30)),
        || async {
            failure_shown(&tasks, "blocked")
                .await
                .ok_or_else(|| "no ReconcileFailed condition yet".to_owned())
        },
    )
    .await;
    assert_eq!(reason, "TaskRun");
    assert!(
        message.contains("runs are frozen here"),
        "the server's words: {message}"
    );
    // The Event follows the condition.
    let events: Vec<Event> = poll_until("the Warning Event", Deadline(Duration::from_secs(10)), || async {
        let events: Vec<Event> = env
            .namespaced::<Event>()
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?
            .items
            .into_iter()
            .filter(|e| {
                e.reason.as_deref() == Some(RECONCILE_FAILED)
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("blocked")
            })
            .collect();
        if events.is_empty() {
            Err("none yet".to_owned())
        } else {
            Ok(events)
        }
    })
    .await;
    assert_eq!(
        events.len(),
        1,
        "one Warning Event, however often it repeats: {events:?}"
    );
    assert_eq!(events[0].type_.as_deref(), Some("Warning"));

    // Refused: no retry while nothing changes. Writing the condition and the Ignitor's last
    // writes may bring the Task back once or twice (each is a change); after that, nothing (a
    // retried failure would come back within 1 s, then 2 s, 4 s, 8 s).
    let last = AtomicU64::new(metrics.failures("task", "TaskRun"));
    poll_until("the failures settled", Deadline(Duration::from_secs(20)), || async {
        let before = last.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = metrics.failures("task", "TaskRun");
        last.store(now, Ordering::SeqCst);
        if now == before {
            Ok(())
        } else {
            Err(format!("{before} → {now}"))
        }
    })
    .await;
    let settled = last.load(Ordering::SeqCst);
    stays("no retry of the refused request", Duration::from_secs(10), || async {
        let now = metrics.failures("task", "TaskRun");
        if now == settled {
            Ok(())
        } else {
            Err(format!("{now} failures, {settled} when settled"))
        }
    })
    .await;

    // The freeze lifted and the Task touched: it runs, and the condition goes.
    freeze.lift(&env).await;
    tasks
        .patch(
            "blocked",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"touched": "1"}}})),
        )
        .await
        .unwrap();
    poll_until(
        "a run made and the condition gone",
        Deadline(Duration::from_secs(30)),
        || async {
            let runs = env.namespaced::<TaskRun>().list(&ListParams::default()).await.unwrap();
            if runs.items.is_empty() {
                return Err("no TaskRun yet".to_owned());
            }
            match failure_shown(&tasks, "blocked").await {
                None => Ok(()),
                Some(shown) => Err(format!("still shows {shown:?}")),
            }
        },
    )
    .await;
    assert!(
        tasks
            .get("blocked")
            .await
            .unwrap()
            .managed_fields()
            .iter()
            .all(|m| m.manager.as_deref() != Some("task-failures")
                || m.fields_v1.as_ref().is_none_or(|f| f.0 == json!({}))),
        "nothing left owned by the failure manager"
    );
    scheduler.stop().await;
    workflow.stop().await;
}
