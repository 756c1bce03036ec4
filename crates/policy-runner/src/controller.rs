//! The thin I/O around [`pipeline::plan`]: watch Applications, run their pipelines, write
//! `status.policy` when it changed, publish Events, and come back when a step asked to.
//!
//! A pipeline runs again only when what it reads changed (the spec, annotations, the
//! executor's report) or a step's wake time came: never because of its own status write, so a
//! policy whose state changes on every run (a `cel` counter, say) cannot spin.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crd_types::hierarchy::Application;
use futures::StreamExt;
use jiff::Timestamp;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Resource, ResourceExt};
use orrery_runtime::{BoxError, Context, Error, apply_status, watched_and_cached, watcher_config};
use serde_json::json;

use crate::outside::Http;
use crate::pipeline;
use crate::registry::Registry;

struct State {
    context: Context,
    registry: Registry,
    http: Http,
    applications: Store<Application>,
    /// Per Application, what its pipeline last ran on and when it wanted to run again.
    last_runs: Mutex<HashMap<ObjectRef<Application>, LastRun>>,
}

#[derive(Clone, Copy)]
struct LastRun {
    inputs: u64,
    wake_at: Option<Timestamp>,
}

/// Runs the built-in policies until the context's shutdown signal.
pub async fn run(context: Context) -> Result<(), BoxError> {
    run_with(context, Registry::builtin()).await
}

/// Runs the policies of `registry`.
pub async fn run_with(context: Context, registry: Registry) -> Result<(), BoxError> {
    let config = watcher_config(&context.api::<Application>()).await;
    let (applications, trigger) = watched_and_cached(context.api::<Application>(), config);
    let state = Arc::new(State {
        context: context.clone(),
        registry,
        http: Http::default(),
        applications: applications.clone(),
        last_runs: Mutex::default(),
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
    let registry = &state.registry;
    let runner = registry.runner;
    let current = app.status.as_ref().and_then(|s| s.common.policy.as_ref());
    let api = Api::<Application>::namespaced(state.context.client.clone(), &app.namespace().unwrap_or_default());
    if app.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let names = app.spec.policies.iter().map(|p| p.name.as_str());
    let recorded = current.and_then(|p| p.runner.as_deref());
    if app.spec.policies.is_empty() || !registry.claims(names, recorded) {
        // Not (or no longer) ours to run: remove what we wrote, if we wrote it. Applying
        // nothing under our field manager removes exactly our fields.
        let ours = recorded == Some(runner) || (recorded.is_none() && registry.is_default());
        if current.is_some() && ours && (app.spec.policies.is_empty() || recorded == Some(runner)) {
            apply_status(&api, runner, app, &json!({})).await?;
        }
        return Ok(Action::await_change());
    }

    let key = ObjectRef::from_obj(app);
    let inputs = inputs_of(app);
    let now = Timestamp::now();
    let last = state
        .last_runs
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&key)
        .copied();
    if let Some(last) = last.filter(|l| l.inputs == inputs && l.wake_at.is_none_or(|w| now < w)) {
        return Ok(after(last.wake_at));
    }
    let planned = pipeline::plan(app, registry, now, &state.http).await;
    let wake_at = planned.as_ref().and_then(|p| p.wake_at);
    if let Some(planned) = planned {
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
    }
    remember(state, key, LastRun { inputs, wake_at });
    Ok(after(wake_at))
}

/// Records a run, forgetting Applications that are gone once there are many of them.
fn remember(state: &State, key: ObjectRef<Application>, run: LastRun) {
    let mut last_runs = state.last_runs.lock().unwrap_or_else(|p| p.into_inner());
    last_runs.insert(key, run);
    if last_runs.len() > 2 * state.applications.len() + 64 {
        last_runs.retain(|key, _| state.applications.get(key).is_some());
    }
}

/// A fingerprint of what a pipeline reads: everything but its own status field.
fn inputs_of(app: &Application) -> u64 {
    let mut status = app.status.clone().unwrap_or_default();
    status.common.policy = None;
    let mut hasher = DefaultHasher::new();
    app.metadata.generation.hash(&mut hasher);
    serde_json::to_string(&(app.annotations(), &app.spec, &status))
        .unwrap_or_default()
        .hash(&mut hasher);
    hasher.finish()
}

fn after(wake_at: Option<Timestamp>) -> Action {
    match wake_at {
        Some(at) => Action::requeue(wait_until(at)),
        None => Action::await_change(),
    }
}

/// How long until `at`, at least a second: a wake time already past never spins.
fn wait_until(at: Timestamp) -> Duration {
    Duration::try_from(at.duration_since(Timestamp::now()))
        .unwrap_or(Duration::ZERO)
        .max(Duration::from_secs(1))
}
