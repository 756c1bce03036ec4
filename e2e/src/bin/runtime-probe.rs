//! The smallest controller built on orrery-runtime, used by the runtime's end-to-end test:
//! it reconciles ConfigMaps labelled `orrery.dev/probe` by stamping an annotation with the
//! probe's identity, so a test can see which replica is leading.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use orrery_runtime::{BoxError, Context, RuntimeArgs};

#[derive(Parser, Debug)]
#[command(about = "A probe controller exercising orrery-runtime")]
struct Cli {
    #[command(flatten)]
    runtime: RuntimeArgs,
}

const NAME: &str = "runtime-probe";

#[derive(Debug, thiserror::Error)]
#[error("writing the annotation: {0}")]
struct ProbeError(#[from] kube::Error);

struct State {
    api: Api<ConfigMap>,
    identity: String,
    context: Context,
}

async fn reconcile(cm: Arc<ConfigMap>, state: Arc<State>) -> Result<Action, ProbeError> {
    let start = Instant::now();
    let current = cm.annotations().get("orrery.dev/probed-by");
    let result = if current != Some(&state.identity) {
        let patch = serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"annotations": {"orrery.dev/probed-by": state.identity}}
        });
        let api: Api<ConfigMap> = Api::namespaced(state.api.clone().into_client(), &cm.namespace().unwrap_or_default());
        api.patch(&cm.name_any(), &PatchParams::apply(NAME).force(), &Patch::Apply(&patch))
            .await
            .map(|_| ())
    } else {
        Ok(())
    };
    state
        .context
        .metrics
        .observe(NAME, start.elapsed(), result.as_ref().err().map(|_| "ApiError"));
    result?;
    Ok(Action::await_change())
}

fn error_policy(_: Arc<ConfigMap>, _: &ProbeError, _: Arc<State>) -> Action {
    Action::requeue(Duration::from_secs(1))
}

async fn controllers(context: Context) -> Result<(), BoxError> {
    let api: Api<ConfigMap> = Api::all(context.client.clone());
    let identity = std::env::var("POD_NAME").unwrap_or_else(|_| NAME.into());
    let controller = Controller::new(api.clone(), watcher::Config::default().labels("orrery.dev/probe"));
    context.readiness.track(&controller.store());
    let shutdown = context.shutdown_signal();
    let state = Arc::new(State { api, identity, context });
    let results = controller
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, state);
    orrery_runtime::log_results(NAME, results).await;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    orrery_runtime::run(NAME, cli.runtime, controllers).await?;
    Ok(())
}
