//! `event`: emit a Kubernetes Event on the TaskRun.
//! Parameters: `reason` (default `TaskRunFinished`), `message` (default the run's outcome and
//! message), `type` (`Normal` or `Warning`; default by outcome). `$(PHASE)`-style fields expand.

use crd_types::common::Parameters;
use crd_types::workflow::TaskRunPhase;
use futures::future::BoxFuture;
use kube::Resource;
use kube::runtime::events::{Event, EventType};

use super::{Action, ActionContext, only_known, string_param};

pub struct EmitEvent;

impl Action for EmitEvent {
    fn name(&self) -> &'static str {
        "event"
    }

    fn run<'a>(
        &'a self,
        context: &'a ActionContext<'a>,
        parameters: &'a Parameters,
    ) -> BoxFuture<'a, Result<String, String>> {
        Box::pin(async move {
            only_known(parameters, &["reason", "message", "type"])?;
            let reason = context.expand(string_param(parameters, "reason")?.unwrap_or("TaskRunFinished"));
            let note =
                context.expand(string_param(parameters, "message")?.unwrap_or("$(TASKRUN) $(PHASE): $(MESSAGE)"));
            let type_ = match string_param(parameters, "type")? {
                Some("Warning") => EventType::Warning,
                Some("Normal") => EventType::Normal,
                Some(other) => return Err(format!("type must be Normal or Warning, got {other:?}")),
                None if context.phase() == TaskRunPhase::Failed => EventType::Warning,
                None => EventType::Normal,
            };
            let event = Event {
                type_,
                reason: reason.clone(),
                note: Some(note),
                action: "Action".into(),
                secondary: None,
            };
            context
                .recorder
                .publish(&event, &context.run.object_ref(&()))
                .await
                .map_err(|err| format!("publishing the Event: {err}"))?;
            Ok(format!("emitted Event {reason}"))
        })
    }
}
