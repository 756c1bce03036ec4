//! The I/O around [`plan`]: watch StagedBindingPolicies, the BindingPolicies they own,
//! KubeStellar's Bindings and CombinedStatuses; apply and delete BindingPolicies; write status.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use cel_conditions::SharedExpressions;
use crd_types::kubestellar::{Binding, BindingPolicy, CombinedStatus, combined_status_labels};
use crd_types::placement::StagedBindingPolicy;
use jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Resource, ResourceExt};
use orrery_runtime::{
    BoxError, Configured, Context, Failure, Lock, apply_status, delete_if_exists, log_results, requeue_at_or_await,
    watched_and_cached, watcher_config,
};

use crate::expressions::{StageExpressions, compile};
use crate::plan::{Observed, POLICY_LABEL, Plan, controlled_by, placed_by, plan};

/// The controller's name: its field manager, Lease and Event reporter.
pub const NAME: &str = "staged-binding";

type Compiled = Result<Arc<Vec<StageExpressions>>, String>;

/// Why a reconcile failed; the variant is the reason in `orrery_reconcile_failures`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading, creating, applying or deleting a BindingPolicy.
    #[error(transparent)]
    BindingPolicy(orrery_runtime::Error),
    /// Writing the StagedBindingPolicy's status.
    #[error(transparent)]
    Status(orrery_runtime::Error),
}

impl Error {
    fn request(&self) -> &orrery_runtime::Error {
        match self {
            Error::BindingPolicy(e) | Error::Status(e) => e,
        }
    }

    fn binding_policy(action: String) -> impl FnOnce(kube::Error) -> Error {
        move |source| Error::BindingPolicy(orrery_runtime::Error::api(action)(source))
    }
}

impl Failure for Error {
    fn reason(&self) -> &'static str {
        match self {
            _ if self.is_conflict() => "Conflict",
            Error::BindingPolicy(_) => "BindingPolicy",
            Error::Status(_) => "Status",
        }
    }

    fn is_conflict(&self) -> bool {
        self.request().is_conflict()
    }
}

struct State {
    context: Context,
    binding_policies: Store<BindingPolicy>,
    bindings: Store<Binding>,
    combined: Store<CombinedStatus>,
    /// Expressions compiled per policy (uid) and generation.
    expressions: Lock<HashMap<(String, i64), Compiled>>,
    /// Compiled expressions shared between policies with the same source.
    shared_expressions: SharedExpressions,
}

impl State {
    fn expressions(&self, policy: &StagedBindingPolicy) -> Compiled {
        let key = (
            policy.uid().unwrap_or_default(),
            policy.metadata.generation.unwrap_or(0),
        );
        let mut cache = self.expressions.lock();
        cache.retain(|(uid, generation), _| uid != &key.0 || *generation == key.1);
        cache
            .entry(key)
            .or_insert_with(|| compile(&policy.spec, &self.shared_expressions).map(Arc::new))
            .clone()
    }
}

/// The policy one of whose stages a BindingPolicy (or its Binding) named `name` places.
fn policy_placing(policies: &Store<StagedBindingPolicy>, name: &str) -> Option<ObjectRef<StagedBindingPolicy>> {
    let (policy, stage) = placed_by(name)?;
    let reference = ObjectRef::new(policy);
    policies
        .get(&reference)?
        .spec
        .stages
        .iter()
        .any(|s| s.name == stage)
        .then_some(reference)
}

/// Runs the controller until the context's shutdown signal. Every cache a reconcile reads is
/// filled by the stream that triggers it, so a trigger never runs ahead of its cache.
pub async fn run(context: Context) -> Result<(), BoxError> {
    let client = context.client.clone();
    let config = watcher_config(&Api::<StagedBindingPolicy>::all(client.clone())).await;
    let (policies, policy_trigger) = watched_and_cached(
        &context.readiness,
        Api::<StagedBindingPolicy>::all(client.clone()),
        config.clone(),
    );
    let (binding_policies, bp_trigger) = watched_and_cached(
        &context.readiness,
        Api::<BindingPolicy>::all(client.clone()),
        config.clone().labels(POLICY_LABEL),
    );
    let (bindings, binding_trigger) =
        watched_and_cached(&context.readiness, Api::<Binding>::all(client.clone()), config.clone());
    let (combined, combined_trigger) = watched_and_cached(
        &context.readiness,
        Api::<CombinedStatus>::all(client),
        config.labels(combined_status_labels::BINDING_POLICY),
    );
    let state = Arc::new(State {
        context: context.clone(),
        binding_policies,
        bindings,
        combined,
        expressions: Lock::default(),
        shared_expressions: SharedExpressions::default(),
    });
    let for_binding = policies.clone();
    let for_status = policies.clone();
    let results = Controller::for_stream(policy_trigger, policies)
        .owns_stream(bp_trigger)
        // A Binding is named after its BindingPolicy.
        .watches_stream(binding_trigger, move |binding: Binding| {
            policy_placing(&for_binding, &binding.name_any())
        })
        .watches_stream(combined_trigger, move |status: CombinedStatus| {
            policy_placing(
                &for_status,
                status.labels().get(combined_status_labels::BINDING_POLICY)?,
            )
        })
        .configured(&context)
        .graceful_shutdown_on(context.shutdown_signal())
        .run(reconcile, error_policy, state);
    log_results(NAME, results).await;
    Ok(())
}

async fn reconcile(policy: Arc<StagedBindingPolicy>, state: Arc<State>) -> Result<Action, Error> {
    state
        .context
        .reconcile(NAME, policy.as_ref(), advance(&policy, &state))
        .await
}

fn error_policy(policy: Arc<StagedBindingPolicy>, error: &Error, state: Arc<State>) -> Action {
    state.context.error_policy(NAME, policy.as_ref(), error)
}

async fn advance(policy: &StagedBindingPolicy, state: &State) -> Result<Action, Error> {
    let name = policy.name_any();
    let uid = policy.uid().unwrap_or_default();
    let mut found: Vec<Arc<BindingPolicy>> = state
        .binding_policies
        .state()
        .into_iter()
        .filter(|bp| bp.labels().get(POLICY_LABEL) == Some(&name))
        .collect();
    let expressions = state.expressions(policy);
    let now = Timestamp::now();
    let plan_with = |found: &[Arc<BindingPolicy>]| -> Plan {
        // Only the Bindings and statuses of BindingPolicies this policy controls count.
        let controlled: Vec<String> = found
            .iter()
            .filter(|bp| controlled_by(bp, &uid))
            .map(|bp| bp.name_any())
            .collect();
        let bindings: Vec<Arc<Binding>> = controlled
            .iter()
            .filter_map(|n| state.bindings.get(&ObjectRef::new(n)))
            .collect();
        let combined: Vec<Arc<CombinedStatus>> = state
            .combined
            .state()
            .into_iter()
            .filter(|cs| {
                cs.labels()
                    .get(combined_status_labels::BINDING_POLICY)
                    .is_some_and(|bp| controlled.contains(bp))
            })
            .collect();
        plan(&Observed {
            now,
            policy,
            expressions: match &expressions {
                Ok(e) => Ok(e.as_slice()),
                Err(err) => Err(err.as_str()),
            },
            found: found.iter().map(Arc::as_ref).collect(),
            bindings: bindings
                .iter()
                .map(|b| (b.name_any(), b.as_ref()))
                .collect::<BTreeMap<_, _>>(),
            combined: combined.iter().map(Arc::as_ref).collect(),
        })
    };
    let mut planned = plan_with(&found);

    let bps: Api<BindingPolicy> = Api::all(state.context.client.clone());
    // The cache holds only labelled BindingPolicies: look up every name the plan took to be
    // free, and while one is taken, plan again knowing by whom. Each round looks up new names
    // only, and a policy has at most 16 stages.
    let mut looked_up = BTreeSet::new();
    loop {
        let mut taken = false;
        for name in std::mem::take(&mut planned.unknown) {
            if !looked_up.insert(name.clone()) {
                continue;
            }
            if let Some(existing) = bps
                .get_opt(&name)
                .await
                .map_err(Error::binding_policy(format!("reading BindingPolicy {name}")))?
            {
                found.push(Arc::new(existing));
                taken = true;
            }
        }
        if !taken {
            break;
        }
        planned = plan_with(&found);
    }
    for bp in &planned.create {
        // A create, not an apply: it fails if the name was taken since we looked.
        match bps
            .create(
                &PostParams {
                    dry_run: false,
                    field_manager: Some(NAME.into()),
                },
                bp,
            )
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 409 => {
                return Err(Error::BindingPolicy(orrery_runtime::Error::Conflict(format!(
                    "BindingPolicy {}",
                    bp.name_any()
                ))));
            }
            Err(source) => {
                return Err(Error::binding_policy(format!(
                    "creating BindingPolicy {}",
                    bp.name_any()
                ))(source));
            }
        }
    }
    // Only over BindingPolicies this policy controls, at the version seen: `force` takes back
    // fields someone else edited on them (and those our own create wrote as an update).
    let apply = PatchParams::apply(NAME).force();
    for bp in &planned.apply {
        match bps.patch(&bp.name_any(), &apply, &Patch::Apply(bp)).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 409 => {
                return Err(Error::BindingPolicy(orrery_runtime::Error::Conflict(format!(
                    "BindingPolicy {}",
                    bp.name_any()
                ))));
            }
            Err(source) => {
                return Err(Error::binding_policy(format!(
                    "applying BindingPolicy {}",
                    bp.name_any()
                ))(source));
            }
        }
    }
    for prune in &planned.delete {
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(prune.uid.clone()),
                resource_version: None,
            }),
            ..DeleteParams::background()
        };
        match delete_if_exists(&bps, &prune.name, &params).await {
            // Another object under that name now: not ours to delete.
            Ok(_) | Err(orrery_runtime::Error::Conflict(_)) => {}
            Err(err) => return Err(Error::BindingPolicy(err)),
        }
    }
    if Some(&planned.status) != policy.status.as_ref() {
        apply_status(
            &Api::<StagedBindingPolicy>::all(state.context.client.clone()),
            NAME,
            policy,
            &planned.status,
        )
        .await
        .map_err(Error::Status)?;
    }
    let reference = policy.object_ref(&());
    for planned_event in planned.events {
        state
            .context
            .recorder
            .publish_or_log(
                &reference,
                planned_event.warning,
                &planned_event.reason,
                planned_event.note,
                "Rollout",
            )
            .await;
    }
    Ok(requeue_at_or_await(planned.wake_at))
}
