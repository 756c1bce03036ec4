//! The thin I/O around [`pipeline::plan`]: watch Applications, run their pipelines, write
//! `status.policy` when it changed, publish Events, and come back when a step asked to.

use std::sync::Arc;
use std::time::Duration;

use crd_types::hierarchy::{Application, PolicyPipelineStatus};
use futures::StreamExt;
use jiff::Timestamp;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Api, Resource, ResourceExt};
use orrery_runtime::{BoxError, Context, Error, apply_status, watched_and_cached};
use serde_json::json;

use crate::outside::Http;
use crate::pipeline;
use crate::registry::Registry;

struct State {
    context: Context,
    registry: Registry,
    http: Http,
}

/// Runs the built-in policies until the context's shutdown signal.
pub async fn run(context: Context) -> Result<(), BoxError> {
    run_with(context, Registry::builtin()).await
}

/// Runs the policies of `registry`.
pub async fn run_with(context: Context, registry: Registry) -> Result<(), BoxError> {
    let (applications, trigger) =
        watched_and_cached(context.api::<Application>(), watcher::Config::default().any_semantic());
    let state = Arc::new(State {
        context: context.clone(),
        registry,
        http: Http::default(),
    });
    Controller::for_stream(trigger, applications)
        .with_config(context.controller_config())
        .graceful_shutdown_on(context.shutdown_signal())
        .run(reconcile, |_, error, _| error.requeue(), state)
        .for_each(|_| async {})
        .await;
    Ok(())
}

async fn reconcile(app: Arc<Application>, state: Arc<State>) -> Result<Action, Error> {
    let runner = state.registry.runner;
    state.context.metrics.measure(runner, run_pipeline(&app, &state)).await
}

async fn run_pipeline(app: &Application, state: &State) -> Result<Action, Error> {
    let runner = state.registry.runner;
    let current = app.status.as_ref().and_then(|s| s.common.policy.as_ref());
    let api = Api::<Application>::namespaced(state.context.client.clone(), &app.namespace().unwrap_or_default());
    if app.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    if app.spec.policies.is_empty() {
        // No pipeline any more: drop what we wrote (applying nothing removes our fields).
        if current.is_some_and(|p| p.runner.as_deref() == Some(runner)) {
            apply_status(&api, runner, app, &json!({})).await?;
        }
        return Ok(Action::await_change());
    }
    let Some(planned) = pipeline::plan(app, &state.registry, Timestamp::now(), &state.http).await else {
        return Ok(Action::await_change());
    };
    if current != Some(&planned.status) {
        apply_status(&api, runner, app, &json!({ "policy": planned.status })).await?;
    }
    let reference = app.object_ref(&());
    for notice in planned.notices {
        state
            .context
            .recorder
            .publish_or_log(
                &reference,
                notice.warning,
                &notice.reason,
                notice.message,
                "RunPolicies",
            )
            .await;
    }
    Ok(match planned.wake_at {
        Some(at) => Action::requeue(wait_until(at)),
        None => Action::await_change(),
    })
}

/// How long until `at`, at least a second: a wake time already past never spins.
fn wait_until(at: Timestamp) -> Duration {
    Duration::try_from(at.duration_since(Timestamp::now()))
        .unwrap_or(Duration::ZERO)
        .max(Duration::from_secs(1))
}

/// The pipeline status `app` carries, for tests and tools.
pub fn pipeline_status(app: &Application) -> Option<&PolicyPipelineStatus> {
    app.status.as_ref()?.common.policy.as_ref()
}
