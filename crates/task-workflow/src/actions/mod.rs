//! Success and failure actions: `[{name, parameters}]` plugins run when a TaskRun ends.
//! Adding one is one module: implement [`Action`] and list it in [`Registry::builtin`].
//!
//! An action runs with task-workflow's rights, which serve every namespace's Tasks: it acts
//! only in its run's namespace (the run itself, a Secret or an object there), never on a
//! namespace a parameter names, and refuses what it will not do as its result's message.

mod annotate;
mod event;
mod http_post;

use std::collections::BTreeMap;

use crd_types::common::Parameters;
use crd_types::workflow::{ActionRef, ActionResult, Task, TaskRun, TaskRunPhase};
use futures::future::BoxFuture;
use kube::Client;
use kube::ResourceExt;
use orrery_runtime::Recorder;

/// What an action gets to work with.
pub struct ActionContext<'a> {
    /// Client of the cluster.
    pub client: &'a Client,
    /// Publishes Events as task-workflow.
    pub recorder: &'a Recorder,
    /// HTTP client for notifications, sending only where `--allowed-egress` allows.
    pub http: &'a orrery_runtime::egress::HttpClient,
    /// The finished run.
    pub run: &'a TaskRun,
    /// Its Task.
    pub task: &'a Task,
}

impl std::fmt::Debug for ActionContext<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActionContext")
            .field("run", &self.run.name_any())
            .finish_non_exhaustive()
    }
}

impl ActionContext<'_> {
    /// How the run ended.
    pub fn phase(&self) -> TaskRunPhase {
        self.run.status.as_ref().and_then(|s| s.phase).unwrap_or_default()
    }

    /// `$(PHASE)`, `$(TASK)`, `$(TASKRUN)`, `$(MESSAGE)`, `$(EXIT_CODE)` in `text`, filled in.
    pub fn expand(&self, text: &str) -> String {
        let status = self.run.status.clone().unwrap_or_default();
        text.replace("$(PHASE)", &format!("{:?}", self.phase()))
            .replace("$(TASK)", &self.task.name_any())
            .replace("$(TASKRUN)", &self.run.name_any())
            .replace("$(MESSAGE)", status.message.as_deref().unwrap_or(""))
            .replace(
                "$(EXIT_CODE)",
                &status.exit_code.map(|c| c.to_string()).unwrap_or_default(),
            )
    }
}

/// A plugin run when a TaskRun ends. `Ok` carries what it did, `Err` why it failed.
pub trait Action: Send + Sync {
    /// The name Tasks use.
    fn name(&self) -> &'static str;
    /// Runs the action.
    fn run<'a>(
        &'a self,
        context: &'a ActionContext<'a>,
        parameters: &'a Parameters,
    ) -> BoxFuture<'a, Result<String, String>>;
}

/// The actions task-workflow knows.
pub struct Registry {
    actions: BTreeMap<&'static str, Box<dyn Action>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.actions.keys()).finish()
    }
}

impl Registry {
    /// The built-in actions: `event`, `annotate`, `http-post`.
    pub fn builtin() -> Self {
        let actions: Vec<Box<dyn Action>> = vec![
            Box::new(event::EmitEvent),
            Box::new(annotate::Annotate),
            Box::new(http_post::HttpPost),
        ];
        Registry {
            actions: actions.into_iter().map(|a| (a.name(), a)).collect(),
        }
    }

    /// The names of the actions.
    pub fn names(&self) -> Vec<&'static str> {
        self.actions.keys().copied().collect()
    }

    /// Runs `actions` in order; every one runs, whatever the others did.
    pub async fn run_all(&self, context: &ActionContext<'_>, actions: &[ActionRef]) -> Vec<ActionResult> {
        let mut results = Vec::with_capacity(actions.len());
        let empty = Parameters::new();
        for action in actions {
            let (name, outcome, message) = match action {
                ActionRef::Invalid(value) => (
                    value.to_string(),
                    "Unknown",
                    "neither a name nor {name, parameters}".to_string(),
                ),
                ActionRef::Plugin(plugin) => match self.actions.get(plugin.name.as_str()) {
                    None => (
                        plugin.name.clone(),
                        "Unknown",
                        format!("no action called {:?}; known: {self:?}", plugin.name),
                    ),
                    Some(implementation) => {
                        let parameters = plugin.parameters.as_ref().unwrap_or(&empty);
                        match implementation.run(context, parameters).await {
                            Ok(done) => (plugin.name.clone(), "Succeeded", done),
                            Err(why) => (plugin.name.clone(), "Failed", why),
                        }
                    }
                },
            };
            results.push(ActionResult {
                name,
                outcome: outcome.into(),
                message: Some(message),
                time: Some(crd_types::common::seconds(jiff::Timestamp::now())),
            });
        }
        results
    }
}

/// A string parameter, if present.
fn string_param<'a>(parameters: &'a Parameters, key: &str) -> Result<Option<&'a str>, String> {
    match parameters.get(key) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(format!("parameter {key:?} must be a string, got {other}")),
    }
}

/// A map of strings parameter, if present.
fn string_map_param(parameters: &Parameters, key: &str) -> Result<BTreeMap<String, String>, String> {
    match parameters.get(key) {
        None | Some(serde_json::Value::Null) => Ok(BTreeMap::new()),
        Some(value) => {
            serde_json::from_value(value.clone()).map_err(|_| format!("parameter {key:?} must map strings to strings"))
        }
    }
}

/// Rejects parameters the action does not declare, so a typo is reported, not ignored.
fn only_known(parameters: &Parameters, known: &[&str]) -> Result<(), String> {
    match parameters.keys().find(|k| !known.contains(&k.as_str())) {
        Some(unknown) => Err(format!("unknown parameter {unknown:?}; this action takes {known:?}")),
        None => Ok(()),
    }
}
