//! The thin I/O around [`plan`]: watch Ignitors, write the planned status with the
//! controller's field manager, emit the planned Events, and sleep until the next firing.

use std::sync::Arc;

use crd_types::workflow::{FIRE_ANNOTATION, Ignitor};
use jiff::Timestamp;
use kube::runtime::controller::{Action, Controller};
use kube::{Api, Resource, ResourceExt};
use orrery_runtime::{
    BoxError, Configured, Context, Failure, apply_status, log_results, requeue_at_or_await, watched_and_cached,
    watcher_config,
};
use tracing::info;

use crate::plan::{Observed, plan};

/// The controller's name: its field manager, Lease and Event reporter.
pub const NAME: &str = "ignitor-scheduler";

/// Why a reconcile failed; the variant is the reason in `orrery_reconcile_failures`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Writing the Ignitor's status (a firing is recorded there before anyone acts on it).
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

struct State {
    context: Context,
}

/// Runs the controller until the context's shutdown signal.
pub async fn run(context: Context) -> Result<(), BoxError> {
    let api: Api<Ignitor> = context.api();
    let config = watcher_config(&api).await;
    let (store, trigger) = watched_and_cached(&context.readiness, api, config);
    let controller = Controller::for_stream(trigger, store);
    let shutdown = context.shutdown_signal();
    let results = controller.configured(&context).graceful_shutdown_on(shutdown).run(
        reconcile,
        error_policy,
        Arc::new(State { context }),
    );
    log_results(NAME, results).await;
    Ok(())
}

async fn reconcile(ignitor: Arc<Ignitor>, state: Arc<State>) -> Result<Action, Error> {
    state
        .context
        .reconcile(NAME, ignitor.as_ref(), fire_if_due(&ignitor, &state.context))
        .await
}

async fn fire_if_due(ignitor: &Ignitor, context: &Context) -> Result<Action, Error> {
    let now = Timestamp::now();
    let status = ignitor.status.clone().unwrap_or_default();
    let created = ignitor.metadata.creation_timestamp.as_ref().map(|t| t.0).unwrap_or(now);
    let planned = plan(&Observed {
        now,
        generation: ignitor.metadata.generation,
        created,
        spec: &ignitor.spec,
        status: &status,
        fire_annotation: ignitor.annotations().get(FIRE_ANNOTATION).map(String::as_str),
    });

    if planned.status != status {
        let api: Api<Ignitor> = Api::namespaced(context.client.clone(), &ignitor.namespace().unwrap_or_default());
        // The write is conditional on the resourceVersion read: two writers can never both
        // record the same firing, and a firing is in status before anyone acts on it.
        apply_status(&api, NAME, ignitor, &planned.status)
            .await
            .map_err(Error::Status)?;
        if let Some(ignition) = &planned.fired {
            info!(ignitor = %ignitor.name_any(), namespace = ?ignitor.namespace(), sequence = ignition.sequence, reason = %ignition.reason, "fired");
        }
    }

    let reference = ignitor.object_ref(&());
    for planned_event in planned.events {
        context
            .recorder
            .publish_or_log(
                &reference,
                planned_event.warning,
                planned_event.reason,
                planned_event.note,
                "Schedule",
            )
            .await;
    }

    Ok(requeue_at_or_await(planned.wake_at))
}

fn error_policy(ignitor: Arc<Ignitor>, error: &Error, state: Arc<State>) -> Action {
    state.context.error_policy(NAME, ignitor.as_ref(), error)
}
