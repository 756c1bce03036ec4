//! The thin I/O around [`pipeline::plan`]: one controller per hierarchy kind (Project,
//! Cluster, VirtualCluster, Application), each watching its kind, running pipelines, writing
//! `status.policy` when it changed, publishing Events, and coming back when a step asked to.
//!
//! A pipeline runs again only when what it reads changed (the spec, annotations, the
//! executor's report) or a step's wake time came: never because of its own status write, so a
//! policy whose state changes on every run (a `cel` counter, say) cannot spin.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use crd_types::hierarchy::{Application, Cluster, Project, VirtualCluster};
use jiff::Timestamp;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use orrery_runtime::{
    BoxError, Configured, Context, Failure, Lock, apply_status, log_results, until, watched_and_cached, watcher_config,
};
use serde::Serialize;
use serde_json::json;

use crate::outside::Http;
use crate::pipeline;
use crate::registry::Registry;
use crate::subject::Subject;

/// Why a reconcile failed; the variant is the reason in `orrery_reconcile_failures`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Writing the resource's `status.policy`.
    #[error(transparent)]
    Status(orrery_runtime::Error),
}

impl Failure for Error {
    fn reason(&self) -> &'static str {
        match self {
            Error::Status(orrery_runtime::Error::Conflict(_)) => "Conflict",
            Error::Status(_) => "Status",
        }
    }

    fn is_conflict(&self) -> bool {
        let Error::Status(request) = self;
        request.is_conflict()
    }
}

struct State<K: Subject> {
    context: Context,
    registry: Registry,
    http: Http,
    cache: Store<K>,
    /// Per resource, what its pipeline last ran on and when it wanted to run again.
    last_runs: Lock<HashMap<ObjectRef<K>, LastRun>>,
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

/// Runs the policies of `registry`. Watching one namespace (`--watch-namespace`), it runs the
/// pipelines of the Applications there; the cluster-scoped kinds are in no namespace.
pub async fn run_with(context: Context, registry: Registry) -> Result<(), BoxError> {
    let http = Http::new(&context.egress)?;
    let config = watcher_config(&context.api::<Application>()).await;
    let applications = run_kind(&context, &registry, &http, context.api::<Application>(), config.clone());
    if context.namespace.is_some() {
        applications.await;
        return Ok(());
    }
    let client = context.client.clone();
    tokio::join!(
        applications,
        run_kind(
            &context,
            &registry,
            &http,
            Api::<Project>::all(client.clone()),
            config.clone()
        ),
        run_kind(
            &context,
            &registry,
            &http,
            Api::<Cluster>::all(client.clone()),
            config.clone()
        ),
        run_kind(&context, &registry, &http, Api::<VirtualCluster>::all(client), config),
    );
    Ok(())
}

/// The controller of one kind.
async fn run_kind<K: Subject>(
    context: &Context,
    registry: &Registry,
    http: &Http,
    api: Api<K>,
    config: watcher::Config,
) {
    let (cache, trigger) = watched_and_cached(&context.readiness, api, config);
    let state = Arc::new(State {
        context: context.clone(),
        registry: registry.clone(),
        http: http.clone(),
        cache: cache.clone(),
        last_runs: Lock::default(),
    });
    let runner = registry.runner;
    let results = Controller::for_stream(trigger, cache)
        .configured(context)
        .graceful_shutdown_on(context.shutdown_signal())
        .run(
            reconcile,
            move |subject, error, state| state.context.error_policy(runner, subject.as_ref(), error),
            state,
        );
    log_results(runner, results).await;
}

async fn reconcile<K: Subject>(subject: Arc<K>, state: Arc<State<K>>) -> Result<Action, Error> {
    let runner = state.registry.runner;
    state
        .context
        .reconcile(runner, subject.as_ref(), run_pipeline(subject.as_ref(), state.as_ref()))
        .await
}

async fn run_pipeline<K: Subject>(subject: &K, state: &State<K>) -> Result<Action, Error> {
    let registry = &state.registry;
    let runner = registry.runner;
    let current = subject.common().and_then(|s| s.policy.as_ref());
    let api = subject.api(state.context.client.clone());
    if subject.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let policies = subject.policies();
    let names = policies.iter().map(|p| p.name.as_str());
    let recorded = current.and_then(|p| p.runner.as_deref());
    if policies.is_empty() || !registry.claims(names, recorded) {
        // Not (or no longer) ours to run: remove what we wrote, if we wrote it. Applying
        // nothing under our field manager removes exactly our fields.
        let ours = recorded == Some(runner) || (recorded.is_none() && registry.is_default());
        if current.is_some() && ours && (policies.is_empty() || recorded == Some(runner)) {
            apply_status(&api, runner, subject, &json!({}))
                .await
                .map_err(Error::Status)?;
        }
        return Ok(Action::await_change());
    }

    let key = ObjectRef::from_obj(subject);
    let inputs = inputs_of(subject);
    let now = Timestamp::now();
    let last = state.last_runs.lock().get(&key).copied();
    if let Some(last) = last.filter(|l| l.inputs == inputs && l.wake_at.is_none_or(|w| now < w)) {
        return Ok(after(last.wake_at));
    }
    let planned = pipeline::plan(subject, registry, now, &state.http).await;
    let wake_at = planned.as_ref().and_then(|p| p.wake_at);
    if let Some(planned) = planned {
        if current != Some(&planned.status) {
            apply_status(&api, runner, subject, &json!({ "policy": planned.status }))
                .await
                .map_err(Error::Status)?;
        }
        let reference = subject.object_ref(&());
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

/// Records a run, forgetting resources that are gone once there are many of them.
fn remember<K: Subject>(state: &State<K>, key: ObjectRef<K>, run: LastRun) {
    let mut last_runs = state.last_runs.lock();
    last_runs.insert(key, run);
    if last_runs.len() > 2 * state.cache.len() + 64 {
        last_runs.retain(|key, _| state.cache.get(key).is_some());
    }
}

/// A fingerprint of what a pipeline reads: its generation, annotations, spec and status but
/// its own field.
fn inputs_of<K: Subject + Serialize>(subject: &K) -> u64 {
    let mut object = serde_json::to_value(subject).unwrap_or_default();
    if let Some(status) = object.get_mut("status").and_then(|s| s.as_object_mut()) {
        status.remove("policy");
    }
    let read = ["spec", "status"].map(|field| object.get(field));
    let mut hasher = DefaultHasher::new();
    subject.meta().generation.hash(&mut hasher);
    serde_json::to_string(&(subject.annotations(), read))
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
    until(at).max(Duration::from_secs(1))
}
