//! Controllers run inside the test process, scoped to the test's namespace, so a test can
//! start, stop and restart them (a restart is a stop and a fresh start, caches and all).

use std::future::Future;

use kube::Client;
use orrery_runtime::{BoxError, Context, StopHandle};
use tokio::task::JoinHandle;

/// A running controller.
#[derive(Debug)]
pub struct InProcess {
    stop: StopHandle,
    task: JoinHandle<Result<(), BoxError>>,
}

impl InProcess {
    /// Starts `run` as controller `name`, watching only `namespace`.
    pub fn start<F, Fut>(client: Client, namespace: &str, name: &str, run: F) -> Self
    where
        F: FnOnce(Context) -> Fut,
        Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
    {
        let (context, stop) = Context::standalone(client, name);
        let task = tokio::spawn(run(context.in_namespace(namespace)));
        InProcess { stop, task }
    }

    /// Starts `run` as controller `name`, watching every namespace, as it runs when deployed:
    /// for tests that own their control plane.
    pub fn start_cluster_wide<F, Fut>(client: Client, name: &str, run: F) -> Self
    where
        F: FnOnce(Context) -> Fut,
        Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
    {
        let (context, stop) = Context::standalone(client, name);
        let task = tokio::spawn(run(context));
        InProcess { stop, task }
    }

    /// Starts `run` with a context the test made (one allowing egress to the test's own
    /// servers, say), stopped through `stop`.
    pub fn start_with<F, Fut>(context: Context, stop: StopHandle, run: F) -> Self
    where
        F: FnOnce(Context) -> Fut,
        Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
    {
        let task = tokio::spawn(run(context));
        InProcess { stop, task }
    }

    /// Whether it is still running: neither returned nor panicked.
    pub fn is_running(&self) -> bool {
        !self.task.is_finished()
    }

    /// Kills it mid-work, as a crashed or evicted pod would be: no graceful shutdown.
    pub async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }

    /// Stops it gracefully and waits until it has; panics if it failed.
    pub async fn stop(self) {
        self.stop.stop();
        match self.task.await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => panic!("the controller failed: {err}"),
            Err(err) => panic!("the controller panicked: {err}"),
        }
    }
}
