//! The thin I/O around [`plan`]: watch Ignitors, write the planned status with the
//! controller's field manager, emit the planned Events, and sleep until the next firing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crd_types::workflow::{FIRE_ANNOTATION, Ignitor};
use futures::StreamExt;
use jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType};
use kube::runtime::watcher;
use kube::{Api, Resource, ResourceExt};
use orrery_runtime::{BoxError, Context};
use serde_json::json;
use tracing::{info, warn};

use crate::plan::{Observed, plan};

/// The controller's name: its field manager, Lease and Event reporter.
pub const NAME: &str = "ignitor-scheduler";

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Another writer changed the Ignitor between our read and our write; we read again.
    #[error("the Ignitor changed while it was being fired; retrying")]
    Conflict,
    /// The API server refused the status write.
    #[error("writing status: {0}")]
    WriteStatus(#[source] kube::Error),
}

impl Error {
    /// Stable reason for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Conflict => "Conflict",
            Error::WriteStatus(_) => "WriteStatusFailed",
        }
    }
}

struct State {
    context: Context,
}

/// Runs the controller until the context's shutdown signal.
pub async fn run(context: Context) -> Result<(), BoxError> {
    let api: Api<Ignitor> = context.api();
    let controller = Controller::new(api, watcher::Config::default().any_semantic());
    let store = controller.store();
    let readiness = context.readiness.clone();
    tokio::spawn(async move { readiness.set_synced_when_ready(&[store]).await });
    let shutdown = context.shutdown_signal();
    controller
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, Arc::new(State { context }))
        .for_each(|_| async {})
        .await;
    Ok(())
}

async fn reconcile(ignitor: Arc<Ignitor>, state: Arc<State>) -> Result<Action, Error> {
    let started = Instant::now();
    let result = fire_if_due(&ignitor, &state.context).await;
    state
        .context
        .metrics
        .observe(NAME, started.elapsed(), result.as_ref().err().map(Error::reason));
    result
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
        // The resourceVersion makes the write conditional: two writers can never both record
        // the same firing, and a firing is in status before anyone acts on it.
        let patch = json!({
            "apiVersion": Ignitor::api_version(&()),
            "kind": Ignitor::kind(&()),
            "metadata": {"resourceVersion": ignitor.resource_version()},
            "status": planned.status,
        });
        match api
            .patch_status(
                &ignitor.name_any(),
                &PatchParams::apply(NAME).force(),
                &Patch::Apply(&patch),
            )
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 409 => return Err(Error::Conflict),
            Err(err) => return Err(Error::WriteStatus(err)),
        }
        if let Some(ignition) = &planned.fired {
            info!(ignitor = %ignitor.name_any(), namespace = ?ignitor.namespace(), sequence = ignition.sequence, reason = %ignition.reason, "fired");
        }
    }

    let reference = ignitor.object_ref(&());
    for planned_event in planned.events {
        let event = Event {
            type_: if planned_event.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: planned_event.reason.to_owned(),
            note: Some(planned_event.note),
            action: "Schedule".into(),
            secondary: None,
        };
        if let Err(err) = context.recorder.publish(&event, &reference).await {
            warn!(ignitor = %ignitor.name_any(), error = %err, "could not publish an Event");
        }
    }

    Ok(match planned.wake_at {
        Some(at) => Action::requeue(Duration::try_from(at.duration_since(Timestamp::now())).unwrap_or(Duration::ZERO)),
        None => Action::await_change(),
    })
}

fn error_policy(_: Arc<Ignitor>, error: &Error, _: Arc<State>) -> Action {
    match error {
        Error::Conflict => Action::requeue(Duration::from_millis(50)),
        Error::WriteStatus(_) => Action::requeue(Duration::from_secs(5)),
    }
}
