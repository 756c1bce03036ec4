//! The smallest executor of its own, to copy when adding one: it runs Applications whose
//! `spec.executor.name` is `example`, by writing their `message` parameter into a ConfigMap
//! beside them.
//!
//! The contract with the rest of the hierarchy, all of it here:
//! - claim a name: act only on resources naming an executor in your [`Registry`]; validate
//!   their parameters with it;
//! - write `status.executor` (your controller's name) and a `Ready` condition with
//!   `observedGeneration`, through the status subresource: hierarchy-executor then leaves the
//!   resource alone, and its parent rolls that `Ready` up like any other;
//! - server-side apply with your own field manager; label what you create with
//!   `hierarchy.orrery.dev/owner` (the resource's uid).

use std::collections::BTreeMap;
use std::sync::Arc;

use crd_types::common::{CONDITION_READY, Time, set_condition};
use crd_types::hierarchy::{Application, ApplicationStatus, HierarchyStatus, OWNER_LABEL};
use hierarchy_executor::registry::{Claim, Executor, Kind, Parameter, ParameterType, Registry};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::{Api, Resource, ResourceExt};
use orrery_runtime::{
    BoxError, Configured, Context, Failure, apply_status, log_results, watched_and_cached, watcher_config,
};

/// The controller's name: its field manager, and what it writes in `status.executor`.
pub const NAME: &str = "example-executor";

/// Why a reconcile failed; the variant is the reason in `orrery_reconcile_failures`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Applying the Application's ConfigMap.
    #[error(transparent)]
    ConfigMap(orrery_runtime::Error),
    /// Writing the Application's status.
    #[error(transparent)]
    Status(orrery_runtime::Error),
}

impl Failure for Error {
    fn reason(&self) -> &'static str {
        match self {
            _ if self.is_conflict() => "Conflict",
            Error::ConfigMap(_) => "ConfigMap",
            Error::Status(_) => "Status",
        }
    }

    fn is_conflict(&self) -> bool {
        let (Error::ConfigMap(request) | Error::Status(request)) = self;
        request.is_conflict()
    }
}

/// The one executor this controller claims.
pub const EXAMPLE: Executor = Executor {
    kind: Kind::Application,
    name: "example",
    parameters: &[Parameter {
        name: "message",
        type_: ParameterType::String,
        description: "what the ConfigMap says",
    }],
};

/// Runs until the context's shutdown signal.
pub async fn run(context: Context) -> Result<(), BoxError> {
    let config = watcher_config(&context.api::<Application>()).await;
    let (applications, trigger) = watched_and_cached(&context.readiness, context.api::<Application>(), config);
    let state = Arc::new((context.clone(), Registry::of(&[EXAMPLE])));
    let results = Controller::for_stream(trigger, applications)
        .configured(&context)
        .graceful_shutdown_on(context.shutdown_signal())
        .run(
            reconcile,
            |app, error, state| state.0.error_policy(NAME, app.as_ref(), error),
            state,
        );
    log_results(NAME, results).await;
    Ok(())
}

async fn reconcile(app: Arc<Application>, state: Arc<(Context, Registry)>) -> Result<Action, Error> {
    let (context, registry) = state.as_ref();
    context
        .reconcile(NAME, app.as_ref(), run_example(&app, context, registry))
        .await
}

async fn run_example(app: &Application, context: &Context, registry: &Registry) -> Result<Action, Error> {
    let (ready, reason, message) = match registry.claim(Kind::Application, app.spec.executor.as_ref()) {
        // Not ours: another executor's business.
        Claim::NotClaimed(_) => return Ok(Action::await_change()),
        Claim::InvalidParameters(message) => (false, "InvalidParameters", message),
        Claim::Claimed(parameters) => {
            let text = parameters.get("message").and_then(|m| m.as_str()).unwrap_or_default();
            apply_config_map(context, app, text).await?;
            (true, "Ready", String::new())
        }
    };
    let mut conditions = app
        .status
        .as_ref()
        .map(|s| s.common.conditions.clone())
        .unwrap_or_default();
    let generation = app.metadata.generation;
    set_condition(
        &mut conditions,
        CONDITION_READY,
        ready,
        reason,
        message,
        generation,
        Time(Timestamp::now()),
    );
    let status = ApplicationStatus {
        common: HierarchyStatus {
            observed_generation: generation,
            conditions,
            executor: Some(NAME.into()),
            ..HierarchyStatus::default()
        },
        ..ApplicationStatus::default()
    };
    let mut current = app.status.clone();
    if let Some(current) = current.as_mut() {
        current.common.policy = None;
    }
    if current.as_ref() != Some(&status) {
        let api = Api::<Application>::namespaced(context.client.clone(), &app.namespace().unwrap_or_default());
        apply_status(&api, NAME, app, &status).await.map_err(Error::Status)?;
    }
    Ok(Action::await_change())
}

async fn apply_config_map(context: &Context, app: &Application, message: &str) -> Result<(), Error> {
    let namespace = app.namespace().unwrap_or_default();
    let name = format!("{}-example", app.name_any());
    let config_map = ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(namespace.clone()),
            labels: Some(BTreeMap::from([(
                OWNER_LABEL.to_owned(),
                app.uid().unwrap_or_default(),
            )])),
            // Same namespace: an owner reference is enough to remove it with the Application.
            owner_references: app.controller_owner_ref(&()).map(|r| vec![r]),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([("message".to_owned(), message.to_owned())])),
        ..ConfigMap::default()
    };
    Api::<ConfigMap>::namespaced(context.client.clone(), &namespace)
        .patch(&name, &PatchParams::apply(NAME), &Patch::Apply(&config_map))
        .await
        .map_err(|source| Error::ConfigMap(orrery_runtime::Error::api(format!("applying ConfigMap {name}"))(source)))?;
    Ok(())
}
