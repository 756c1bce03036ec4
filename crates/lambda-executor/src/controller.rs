//! The thin I/O around [`crate::plan`]: watch the four hierarchy kinds, find each claimed
//! resource's declared child kinds and its children, ask the hook or render the templates,
//! apply and prune, write the status.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use crd_types::common::{CONDITION_READY, PluginRef, Time, find_condition, set_condition};
use crd_types::hierarchy::{Application, Cluster, HierarchyStatus, OWNER_LABEL, Project, VirtualCluster};
use futures::future::join_all;
use hierarchy_executor::plan::tenancy::ownership_refusal;
use hierarchy_executor::registry::{Claim, Kind, Registry};
use k8s_openapi::jiff::Timestamp;
use kube::api::{ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, Preconditions};
use kube::core::{GroupVersion, TypeMeta};
use kube::discovery::{self, Scope};
use kube::runtime::controller::{Action, Controller};
use kube::{Api, Client, Resource, ResourceExt};
use orrery_runtime::egress::HttpClient;
use orrery_runtime::{
    BoxError, Configured, Context, Failure, Lock, apply_status, has_finalizer, log_results, set_finalizer,
    watched_and_cached, watcher_config,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

use crate::hook::{self, ChildMap, ParentResource, SyncResponse};
use crate::lambda::{self, ChildResource, Lambda, Source, Webhook};
use crate::plan::{self, ChildKind, Observed, Plan};

/// The controller's name: its field manager, and what it writes in `status.executor`.
pub const NAME: &str = "lambda-executor";
/// Held on a resource whose hook finalizes (`finalize: true`) until it answers `finalized`.
pub const FINALIZER: &str = "hierarchy.orrery.dev/lambda-executor";
/// The most a hook's answer may weigh.
const MAX_ANSWER_BYTES: usize = 4 << 20;
/// How soon a resource whose children changed is synced again, for the hook to see them.
const AFTER_CHANGE: Duration = Duration::from_secs(2);
/// How soon a finalizing hook that is not done yet is asked again.
const FINALIZE_RETRY: Duration = Duration::from_secs(5);

/// Why a reconcile failed; the variant is the reason in `orrery_reconcile_failures`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The hook could not be reached or gave no sync response.
    #[error("the sync hook failed: {0}")]
    Hook(String),
    /// A request to the API server failed.
    #[error(transparent)]
    Api(orrery_runtime::Error),
}

impl Failure for Error {
    fn reason(&self) -> &'static str {
        match self {
            _ if self.is_conflict() => "Conflict",
            Error::Hook(_) => "HookFailed",
            Error::Api(_) => "ApiError",
        }
    }

    fn is_conflict(&self) -> bool {
        matches!(self, Error::Api(error) if error.is_conflict())
    }
}

fn api_error(action: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let wrap = orrery_runtime::Error::api(action);
    move |source| Error::Api(wrap(source))
}

/// A hierarchy kind this controller runs.
pub trait Parent:
    Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + Debug + Send + Sync + 'static
{
    /// Its kind in the registry.
    const KIND: Kind;
    /// Its `spec.executor`.
    fn executor(&self) -> Option<&PluginRef>;
    /// Its shared status.
    fn common(&self) -> Option<&HierarchyStatus>;
    /// The API to watch it through (an Application's within `--watch-namespace`).
    fn watched(context: &Context) -> Api<Self>;
    /// The API to write it through.
    fn api(client: Client, namespace: Option<&str>) -> Api<Self>;
}

macro_rules! parent {
    ($kind:ty, $registry:expr, cluster, |$resource:ident| $common:expr) => {
        parent!(@ $kind, $registry, |$resource| $common, |context| Api::all(context.client.clone()), |client, _ns| Api::all(client));
    };
    ($kind:ty, $registry:expr, namespaced, |$resource:ident| $common:expr) => {
        parent!(@ $kind, $registry, |$resource| $common, |context| context.api(), |client, ns| Api::namespaced(client, ns.unwrap_or_default()));
    };
    (@ $kind:ty, $registry:expr, |$resource:ident| $common:expr, |$context:ident| $watched:expr, |$client:ident, $ns:ident| $api:expr) => {
        impl Parent for $kind {
            const KIND: Kind = $registry;
            fn executor(&self) -> Option<&PluginRef> {
                self.spec.executor.as_ref()
            }
            fn common(&self) -> Option<&HierarchyStatus> {
                let $resource = self;
                $common
            }
            fn watched($context: &Context) -> Api<Self> {
                $watched
            }
            fn api($client: Client, $ns: Option<&str>) -> Api<Self> {
                $api
            }
        }
    };
}

parent!(Project, Kind::Project, cluster, |p| p.status.as_ref());
parent!(Cluster, Kind::Cluster, cluster, |c| c
    .status
    .as_ref()
    .map(|s| &s.common));
parent!(VirtualCluster, Kind::VirtualCluster, cluster, |v| v
    .status
    .as_ref()
    .map(|s| &s.common));
parent!(Application, Kind::Application, namespaced, |a| a
    .status
    .as_ref()
    .map(|s| &s.common));

/// What every reconcile shares.
struct State {
    context: Context,
    registry: Registry,
    http: HttpClient,
    /// Declared kinds as discovery found them.
    kinds: Lock<HashMap<ChildResource, (ApiResource, ChildKind)>>,
}

/// Runs until the context's shutdown signal.
pub async fn run(context: Context) -> Result<(), BoxError> {
    let state = Arc::new(State {
        http: context.egress.client()?,
        registry: Registry::of(&lambda::executors()),
        kinds: Lock::default(),
        context,
    });
    futures::join!(
        run_kind::<Project>(state.clone()),
        run_kind::<Cluster>(state.clone()),
        run_kind::<VirtualCluster>(state.clone()),
        run_kind::<Application>(state),
    );
    Ok(())
}

async fn run_kind<K: Parent>(state: Arc<State>) {
    let api = K::watched(&state.context);
    let config = watcher_config(&api).await;
    let (store, trigger) = watched_and_cached(&state.context.readiness, api, config);
    let results = Controller::for_stream(trigger, store)
        .configured(&state.context)
        .graceful_shutdown_on(state.context.shutdown_signal())
        .run(
            |resource, state: Arc<State>| async move {
                state
                    .context
                    .reconcile(NAME, resource.as_ref(), sync(resource.as_ref(), &state))
                    .await
            },
            |resource, error, state| state.context.error_policy(NAME, resource.as_ref(), error),
            state,
        );
    log_results(NAME, results).await;
}

/// What a sync found: the resource's readiness and the status its executor reports.
struct Outcome {
    ready: bool,
    reason: String,
    message: String,
    executor_status: Option<Map<String, Value>>,
}

impl Outcome {
    fn not_ready(reason: &str, message: impl Into<String>) -> Self {
        Outcome {
            ready: false,
            reason: reason.into(),
            message: message.into(),
            executor_status: None,
        }
    }
}

async fn sync<K: Parent>(resource: &K, state: &State) -> Result<Action, Error> {
    let client = &state.context.client;
    let api = K::api(client.clone(), resource.namespace().as_deref());
    let deleting = resource.meta().deletion_timestamp.is_some();
    let executor = resource.executor();
    let parsed = match state.registry.claim(K::KIND, executor) {
        Claim::NotClaimed(_) => {
            // Another executor's now: a finalizer of ours would hold its deletion forever.
            set_finalizer(&api, resource, FINALIZER, false)
                .await
                .map_err(Error::Api)?;
            return Ok(Action::await_change());
        }
        Claim::InvalidParameters(message) => Err(message),
        Claim::Claimed(parameters) => {
            let name = executor.map_or("", |e| e.name.as_str());
            lambda::parse(name, &parameters, K::KIND, resource.namespace().as_deref())
        }
    };
    let lambda = match parsed {
        Ok(lambda) => lambda,
        Err(message) => {
            let invalid = Outcome::not_ready("InvalidParameters", message);
            return report(resource, state, invalid, deleting).await;
        }
    };
    let finalizes = matches!(&lambda.source, Source::Webhook(hook) if hook.finalize);
    if deleting && !(finalizes && has_finalizer(resource, FINALIZER)) {
        // Without a finalize hook the children go with their owner (owner references).
        return Ok(Action::await_change());
    }
    if !deleting {
        set_finalizer(&api, resource, FINALIZER, finalizes)
            .await
            .map_err(Error::Api)?;
    }

    let kinds = match resolve_kinds(state, &lambda.child_resources).await {
        Ok(kinds) => kinds,
        Err(message) => {
            return report(
                resource,
                state,
                Outcome::not_ready("ChildResourceUnknown", message),
                deleting,
            )
            .await
            .map(|_| Action::requeue(lambda.resync));
        }
    };
    let observed = observe(client, &kinds, &lambda.namespace, &resource.uid().unwrap_or_default()).await?;
    let parent = serde_json::to_value(resource).unwrap_or(Value::Null);

    // The template's ids of the desired children, in their order (empty for a hook).
    let (desired, answer, ids) = match &lambda.source {
        Source::Webhook(hook) => {
            // An address refused by itself is refused again: wait for the resource to change.
            if let Some(refused) = refused_address(state, hook) {
                return report(resource, state, Outcome::not_ready("HookFailed", refused), deleting).await;
            }
            let answer = call::<K>(state, hook, &lambda, &kinds, &observed, &parent, deleting).await;
            let answer = match answer {
                Ok(answer) => answer,
                Err(message) => {
                    // What the hook said last stays until it answers again.
                    let failed = Outcome {
                        executor_status: resource.common().and_then(|s| s.executor_status.clone()),
                        ..Outcome::not_ready("HookFailed", message.clone())
                    };
                    report(resource, state, failed, deleting).await?;
                    return Err(Error::Hook(message));
                }
            };
            (answer.children.clone(), Some(answer), Vec::new())
        }
        Source::Template(template) => match template.children(&parent) {
            Ok(children) => {
                let (ids, desired) = children.into_iter().unzip();
                (desired, None, ids)
            }
            Err(message) => {
                return report(resource, state, Outcome::not_ready("TemplateFailed", message), deleting).await;
            }
        },
    };
    let resync = answer
        .as_ref()
        .and_then(|a| a.resync_after)
        .map_or(lambda.resync, |after| after.min(lambda.resync));

    let owner = owner_reference(resource);
    let uid = resource.uid().unwrap_or_default();
    let plan = match plan::plan(&desired, &kinds_of(&kinds), &observed, &lambda.namespace, &uid, &owner) {
        Ok(plan) => plan,
        Err(refusal) => {
            return report(
                resource,
                state,
                Outcome::not_ready(refusal.reason, refusal.message),
                deleting,
            )
            .await
            .map(|_| Action::requeue(resync));
        }
    };
    if let Some(conflict) = taken_names(client, &kinds, &lambda.namespace, &uid, &plan).await? {
        return report(resource, state, conflict, deleting)
            .await
            .map(|_| Action::requeue(resync));
    }
    let now_there = execute(client, &kinds, &lambda.namespace, &plan, &observed).await?;

    if deleting {
        return match answer {
            Some(SyncResponse { finalized: true, .. }) => {
                set_finalizer(&api, resource, FINALIZER, false)
                    .await
                    .map_err(Error::Api)?;
                Ok(Action::await_change())
            }
            _ => Ok(Action::requeue(resync.min(FINALIZE_RETRY))),
        };
    }
    let outcome = match (&lambda.source, answer) {
        (Source::Webhook(_), Some(answer)) => {
            let (ready, reason, message) =
                plan::reported_readiness(answer.status.as_ref()).unwrap_or((true, "Synced".into(), String::new()));
            Outcome {
                ready,
                reason,
                message,
                executor_status: answer.status,
            }
        }
        (Source::Template(template), _) => {
            let by_id = by_id(&ids, &plan, &now_there);
            let readiness = template.readiness(&parent, &ids, &by_id);
            Outcome {
                ready: readiness.is_ok(),
                reason: if readiness.is_ok() { "Synced" } else { "NotReady" }.into(),
                message: readiness.err().unwrap_or_default(),
                executor_status: template.status(&parent, &by_id),
            }
        }
        (Source::Webhook(_), None) => Outcome::not_ready("HookFailed", "no answer"),
    };
    report(resource, state, outcome, false).await?;
    // What changed is news to the hook (Metacontroller would hear of it from its watch).
    let changed = !plan.apply.is_empty() || !plan.prune.is_empty();
    Ok(Action::requeue(if changed { resync.min(AFTER_CHANGE) } else { resync }))
}

/// The template's children by id (`ids` in the order of `plan.desired`), as the API server
/// last returned them.
fn by_id(ids: &[String], plan: &Plan, now_there: &[(usize, String, Value)]) -> BTreeMap<String, Value> {
    ids.iter()
        .zip(&plan.desired)
        .filter_map(|(id, child)| {
            now_there
                .iter()
                .find(|(kind, name, _)| *kind == child.kind && *name == child.name)
                .map(|(_, _, object)| (id.clone(), object.clone()))
        })
        .collect()
}

/// Asks the hook, with the children it made.
async fn call<K: Parent>(
    state: &State,
    hook: &Webhook,
    lambda: &Lambda,
    kinds: &[(ApiResource, ChildKind)],
    observed: &[Observed],
    parent: &Value,
    finalizing: bool,
) -> Result<SyncResponse, String> {
    let mut children = ChildMap::new();
    for (api_resource, _) in kinds {
        children
            .entry(hook::child_map_key(&api_resource.kind, &api_resource.api_version))
            .or_default();
    }
    for child in observed {
        let (api_resource, _) = &kinds[child.kind];
        children
            .entry(hook::child_map_key(&api_resource.kind, &api_resource.api_version))
            .or_default()
            .insert(child.name().to_owned(), child.object.clone());
    }
    let api_version = K::api_version(&()).into_owned();
    let plural = K::plural(&()).into_owned();
    let body = hook::sync_request(
        parent,
        ParentResource {
            api_version: &api_version,
            resource: &plural,
        },
        &lambda.child_resources,
        hook,
        &children,
        finalizing,
    );
    let url = reqwest::Url::parse(&hook.url).map_err(|e| format!("not a valid URL: {e}"))?;
    let request = state.http.post(url).json(&body).timeout(hook.timeout);
    let answer = state.http.fetch_json(request, "call", MAX_ANSWER_BYTES).await?;
    if !answer.status.is_success() {
        return Err(format!("HTTP {}", answer.status));
    }
    hook::parse_response(answer.json.ok_or_else(|| "the answer is not JSON".to_owned())?)
}

/// Why the hook's address is refused, when it is an address `--allowed-egress` refuses (a name
/// is checked as it resolves, on every call).
fn refused_address(state: &State, hook: &Webhook) -> Option<String> {
    let url = reqwest::Url::parse(&hook.url).ok()?;
    state
        .context
        .egress
        .check_url(&url)
        .err()
        .map(|refused| refused.to_string())
}

/// The declared kinds as discovery knows them; an unknown or cluster-scoped one refuses.
async fn resolve_kinds(state: &State, declared: &[ChildResource]) -> Result<Vec<(ApiResource, ChildKind)>, String> {
    let mut resolved = Vec::with_capacity(declared.len());
    for child in declared {
        let known = state.kinds.lock().get(child).cloned();
        let found = match known {
            Some(found) => found,
            None => {
                let found = discover(&state.context.client, child).await?;
                state.kinds.lock().insert(child.clone(), found.clone());
                found
            }
        };
        if !found.1.namespaced {
            return Err(format!(
                "childResources: {} ({}) is cluster-scoped; only namespaced children are made",
                child.resource, child.api_version
            ));
        }
        resolved.push(found);
    }
    Ok(resolved)
}

async fn discover(client: &Client, child: &ChildResource) -> Result<(ApiResource, ChildKind), String> {
    let unknown = || {
        format!(
            "childResources: the API server has no {} in {}",
            child.resource, child.api_version
        )
    };
    let version: GroupVersion = child.api_version.parse().map_err(|_| unknown())?;
    let group = discovery::pinned_group(client, &version).await.map_err(|_| unknown())?;
    let (api_resource, capabilities) = group
        .versioned_resources(&version.version)
        .into_iter()
        .find(|(r, _)| r.plural == child.resource)
        .ok_or_else(unknown)?;
    let kind = ChildKind {
        declared: child.clone(),
        kind: api_resource.kind.clone(),
        namespaced: capabilities.scope == Scope::Namespaced,
    };
    Ok((api_resource, kind))
}

fn kinds_of(kinds: &[(ApiResource, ChildKind)]) -> Vec<ChildKind> {
    kinds.iter().map(|(_, kind)| kind.clone()).collect()
}

fn child_api(client: &Client, namespace: &str, api_resource: &ApiResource) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), namespace, api_resource)
}

/// The children marked as the resource's own, of every declared kind.
async fn observe(
    client: &Client,
    kinds: &[(ApiResource, ChildKind)],
    namespace: &str,
    owner_uid: &str,
) -> Result<Vec<Observed>, Error> {
    let selector = ListParams::default().labels(&format!("{OWNER_LABEL}={owner_uid}"));
    let lists = join_all(kinds.iter().enumerate().map(|(index, (api_resource, _))| {
        let api = child_api(client, namespace, api_resource);
        let selector = selector.clone();
        async move {
            let list = api
                .list(&selector)
                .await
                .map_err(api_error(format!("listing {} in {namespace}", api_resource.plural)))?;
            Ok::<_, Error>(
                list.items
                    .into_iter()
                    .map(|object| Observed {
                        kind: index,
                        object: as_value(object, api_resource),
                    })
                    .collect::<Vec<_>>(),
            )
        }
    }))
    .await;
    Ok(lists
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .flatten()
        .collect())
}

/// An object as a hook sees it: with its kind, without the server's bookkeeping of writers.
fn as_value(mut object: DynamicObject, api_resource: &ApiResource) -> Value {
    object.types = Some(TypeMeta {
        api_version: api_resource.api_version.clone(),
        kind: api_resource.kind.clone(),
    });
    object.metadata.managed_fields = None;
    serde_json::to_value(object).unwrap_or(Value::Null)
}

/// Names the plan would create that another object holds: never taken over.
async fn taken_names(
    client: &Client,
    kinds: &[(ApiResource, ChildKind)],
    namespace: &str,
    owner_uid: &str,
    plan: &Plan,
) -> Result<Option<Outcome>, Error> {
    for child in plan.apply.iter().filter(|c| !c.exists) {
        let (api_resource, _) = &kinds[child.kind];
        let existing = child_api(client, namespace, api_resource)
            .get_opt(&child.name)
            .await
            .map_err(api_error(format!("reading {} {}", api_resource.kind, child.name)))?;
        if let Some(existing) = existing {
            let labels = existing.labels().clone();
            if let Some(hierarchy_executor::plan::Readiness::NotReady { reason, message }) =
                ownership_refusal(&api_resource.kind, &child.name, &labels, owner_uid)
            {
                return Ok(Some(Outcome::not_ready(&reason, message)));
            }
        }
    }
    Ok(None)
}

/// Applies and prunes; returns every desired child as it is now (kind index, name, object).
async fn execute(
    client: &Client,
    kinds: &[(ApiResource, ChildKind)],
    namespace: &str,
    plan: &Plan,
    observed: &[Observed],
) -> Result<Vec<(usize, String, Value)>, Error> {
    let mut now_there: Vec<(usize, String, Value)> = observed
        .iter()
        .map(|o| (o.kind, o.name().to_owned(), o.object.clone()))
        .collect();
    for child in &plan.apply {
        let (api_resource, _) = &kinds[child.kind];
        let written = child_api(client, namespace, api_resource)
            .patch(
                &child.name,
                &PatchParams::apply(NAME).force(),
                &Patch::Apply(&child.object),
            )
            .await
            .map_err(api_error(format!("applying {} {}", api_resource.kind, child.name)))?;
        now_there.retain(|(kind, name, _)| !(*kind == child.kind && *name == child.name));
        now_there.push((child.kind, child.name.clone(), as_value(written, api_resource)));
    }
    for child in &plan.prune {
        let (api_resource, _) = &kinds[child.kind];
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(child.uid.clone()),
                resource_version: None,
            }),
            ..DeleteParams::background()
        };
        match child_api(client, namespace, api_resource)
            .delete(&child.name, &params)
            .await
        {
            Ok(_) => {}
            // Gone already, or another object under the name now: not ours to delete.
            Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => {}
            Err(source) => {
                return Err(api_error(format!("pruning {} {}", api_resource.kind, child.name))(
                    source,
                ));
            }
        }
    }
    Ok(now_there)
}

/// A controller owner reference to `resource` (no `blockOwnerDeletion`: that would need
/// rights on the resource's finalizers).
fn owner_reference<K: Parent>(resource: &K) -> Value {
    json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "name": resource.name_any(),
        "uid": resource.uid().unwrap_or_default(),
        "controller": true,
    })
}

/// Writes the resource's `Ready` condition, executor and executor status when they changed,
/// with an Event when readiness changed. A resource being deleted is not written.
async fn report<K: Parent>(resource: &K, state: &State, outcome: Outcome, deleting: bool) -> Result<Action, Error> {
    if deleting {
        return Ok(Action::await_change());
    }
    let current = resource.common().cloned().unwrap_or_default();
    let generation = resource.meta().generation;
    let mut conditions: Vec<_> = find_condition(&current.conditions, CONDITION_READY)
        .into_iter()
        .cloned()
        .collect();
    let before = conditions.first().cloned();
    set_condition(
        &mut conditions,
        CONDITION_READY,
        outcome.ready,
        &outcome.reason,
        orrery_runtime::failures::within_bytes(&outcome.message, 1024),
        generation,
        Time(Timestamp::now()),
    );
    let next = HierarchyStatus {
        observed_generation: generation,
        conditions,
        executor: Some(NAME.into()),
        executor_status: outcome.executor_status,
        ..HierarchyStatus::default()
    };
    let unchanged = before.as_ref() == next.conditions.first()
        && current.observed_generation == generation
        && current.executor.as_deref() == Some(NAME)
        && current.executor_status == next.executor_status;
    if !unchanged {
        let api = K::api(state.context.client.clone(), resource.namespace().as_deref());
        apply_status(&api, NAME, resource, &next).await.map_err(Error::Api)?;
        let changed = before.is_none_or(|b| b.reason != outcome.reason || b.status != next.conditions[0].status);
        if changed {
            let note = if outcome.message.is_empty() {
                format!("{} {}", outcome.reason, resource.name_any())
            } else {
                outcome.message.clone()
            };
            state
                .context
                .recorder
                .publish_or_log(&resource.object_ref(&()), !outcome.ready, &outcome.reason, note, "Sync")
                .await;
        }
    }
    Ok(Action::await_change())
}
