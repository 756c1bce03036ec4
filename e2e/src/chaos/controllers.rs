//! The controllers under test: in-process tasks killed and started again, their requests counted.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use kube::{Client, Config};
use orrery_runtime::Metrics;

use crate::InProcess;
use crate::replicas::is_write;

use super::*;

/// The controllers under test in this process; ignitor-scheduler runs as [`REPLICATED`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ControllerKind {
    TaskWorkflow,
    HierarchyExecutor,
    PolicyRunner,
}

pub(super) const CONTROLLERS: [ControllerKind; 3] = [
    ControllerKind::TaskWorkflow,
    ControllerKind::HierarchyExecutor,
    ControllerKind::PolicyRunner,
];

/// The controller run as two replicas (processes of its binary) electing a leader: its kills
/// kill the leader, and the other must take over.
pub(super) const REPLICATED: &str = ignitor_scheduler::controller::NAME;
/// How long its Lease lasts unrenewed (15 s in the chart; short here, for many takeovers).
pub(super) const REPLICA_LEASE_SECONDS: u64 = 4;

impl ControllerKind {
    pub(super) fn name(self) -> &'static str {
        match self {
            ControllerKind::TaskWorkflow => task_workflow::controller::NAME,
            ControllerKind::HierarchyExecutor => hierarchy_executor::controller::NAME,
            ControllerKind::PolicyRunner => policy_runner::NAME,
        }
    }

    pub(super) fn start(self, client: Client) -> InProcess {
        let name = self.name();
        match self {
            ControllerKind::TaskWorkflow => InProcess::start_cluster_wide(client, name, task_workflow::run),
            ControllerKind::HierarchyExecutor => InProcess::start_cluster_wide(client, name, hierarchy_executor::run),
            ControllerKind::PolicyRunner => InProcess::start_cluster_wide(client, name, policy_runner::controller::run),
        }
    }
}

/// A controller slot: the running instance (none while killed) and request counts that
/// outlive its restarts.
pub(super) struct Slot {
    kind: ControllerKind,
    requests: Metrics,
    running: Option<InProcess>,
    kills: usize,
}

/// Every controller, started as [`CONTROLLER_USER`] with a client that counts its requests.
pub(super) struct Controllers {
    config: Config,
    slots: tokio::sync::Mutex<Vec<Slot>>,
    /// Controllers found finished (returned or panicked) when they should have been running.
    pub(super) ended_by_themselves: Mutex<Vec<String>>,
}

impl Controllers {
    pub(super) fn start(config: Config) -> anyhow::Result<Self> {
        let mut slots = Vec::new();
        for kind in CONTROLLERS {
            let requests = Metrics::new();
            let client = counting_client(&config, &requests)?;
            slots.push(Slot {
                kind,
                requests,
                running: Some(kind.start(client)),
                kills: 0,
            });
        }
        Ok(Controllers {
            config,
            slots: tokio::sync::Mutex::new(slots),
            ended_by_themselves: Mutex::new(Vec::new()),
        })
    }

    /// Kills controller `index`, waits `pause` (a crashed pod is not back at once), starts it again.
    pub(super) async fn kill_and_restart(&self, index: usize, pause: Duration) -> anyhow::Result<()> {
        let killed = {
            let mut slots = self.slots.lock().await;
            let slot = &mut slots[index % CONTROLLERS.len()];
            slot.kills += 1;
            slot.running.take()
        };
        if let Some(controller) = killed {
            self.note_if_ended(index, &controller);
            controller.kill().await;
        }
        tokio::time::sleep(pause).await;
        let mut slots = self.slots.lock().await;
        let slot = &mut slots[index % CONTROLLERS.len()];
        let client = counting_client(&self.config, &slot.requests)?;
        slot.running = Some(slot.kind.start(client));
        Ok(())
    }

    pub(super) fn note_if_ended(&self, index: usize, controller: &InProcess) {
        if !controller.is_running()
            && let Ok(mut ended) = self.ended_by_themselves.lock()
        {
            ended.push(CONTROLLERS[index % CONTROLLERS.len()].name().to_owned());
        }
    }

    /// Writes (every request but GET) each controller has sent so far.
    pub(super) async fn writes(&self) -> BTreeMap<&'static str, u64> {
        let slots = self.slots.lock().await;
        slots
            .iter()
            .map(|slot| (slot.kind.name(), writes_sent(&slot.requests)))
            .collect()
    }

    pub(super) async fn kills(&self) -> BTreeMap<&'static str, usize> {
        let slots = self.slots.lock().await;
        slots.iter().map(|slot| (slot.kind.name(), slot.kills)).collect()
    }

    /// Stops every controller gracefully, noting those that had ended by themselves.
    pub(super) async fn stop(&self) {
        let mut slots = self.slots.lock().await;
        for (index, slot) in slots.iter_mut().enumerate() {
            if let Some(controller) = slot.running.take() {
                self.note_if_ended(index, &controller);
                if controller.is_running() {
                    controller.stop().await;
                }
            }
        }
    }
}

pub(super) fn counting_client(config: &Config, requests: &Metrics) -> anyhow::Result<Client> {
    // No client-side rate limit: the API server's Priority and Fairness paces.
    Ok(orrery_runtime::build_client(
        config.clone(),
        0.0,
        1,
        requests.requests.clone(),
    )?)
}

/// The writes ([`is_write`]) counted in `metrics`.
pub(super) fn writes_sent(metrics: &Metrics) -> u64 {
    metrics
        .encode()
        .lines()
        .filter(|l| is_write(l))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Panics anywhere in the process while a run goes on, with their messages.
pub(super) fn panics() -> &'static Mutex<Vec<String>> {
    static PANICS: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    PANICS.get_or_init(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if let Ok(mut seen) = panics().lock() {
                seen.push(info.to_string());
            }
            previous(info);
        }));
        Mutex::new(Vec::new())
    })
}

/// The words of a replica's exit when it lost its Lease.
pub(super) const LOST_LEASE: &str = "lost the Lease";

/// Plays the kubelet for the replicas: every second, starts again those that exited.
pub(super) async fn supervise_replicas(world: Arc<World>) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let exits = world.replicas.lock().await.restart_exited();
        match exits {
            Ok(exits) if !exits.is_empty() => {
                if let Ok(mut recorded) = world.replica_exits.lock() {
                    recorded.extend(exits);
                }
            }
            Ok(_) => {}
            Err(error) => println!("chaos: restarting a replica failed: {error:#}"),
        }
    }
}
