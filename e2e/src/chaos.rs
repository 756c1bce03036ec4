//! The chaos harness: a seeded run of a mixed workload on one control plane under faults, then
//! proof that nothing was lost, nothing ran twice and nothing stayed stuck.
//!
//! The workload, created at a steady pace for the whole run: workflow chains (an Ignitor firing
//! `NOW` starts Task A, whose success starts Task B, and a Task whose pod fails and is retried),
//! one cron Ignitor firing every minute, and Project trees (a Cluster, a VirtualCluster and an
//! Application with two versions released by canary). Every controller runs cluster-wide, as a
//! user of its own (impersonated) so API Priority and Fairness can single it out: in-process,
//! except ignitor-scheduler, which runs as two replicas of its binary electing a leader
//! ([`crate::replicas`]). The pod simulator plays the kubelet.
//!
//! Phases, each with its fault classes: calm (none, the baseline), controller kills, API server
//! restarts, throttling, network faults, watch expiry, then all five at once. Faults come at times drawn from
//! the seed (`ORRERY_CHAOS_SEED`, printed at the start); the run's timing still varies with the
//! machine, so a seed reproduces the schedule, not every interleaving.
//!
//! After the phases the workload stops, everything must converge, the controllers must then
//! send no write for a minute, and [`Report`] checks the invariants and prints the figures.
//! Writes at rest are counted on the controllers' side: each runs with a client built by
//! `orrery_runtime::build_client`, whose request metrics count every request but GET.
//!
//! The controllers reach the API server through a fault proxy ([`crate::fault_proxy`]); the
//! harness itself goes direct. What it found is in `docs/development.md`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crd_types::common::{CONDITION_READY, find_condition};
use crd_types::hierarchy::{Application, OWNER_LABEL, Project};
use crd_types::workflow::{Ignitor, InitiatorKind, TASKRUN_LABEL, Task, TaskRun, TaskRunPhase};
use futures::StreamExt;
use gateway_api::httproutes::HttpRoute;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Config, Resource, ResourceExt};
use orrery_runtime::Metrics;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use crate::fault_proxy::{FaultProxy, Toxic};
use crate::pod_simulator::{self, PodSimulator};
use crate::replicas::{Replicas, TAKEOVER_LIMIT, Takeover, is_write, kubeconfig_as};
use crate::{ControlPlane, Deadline, InProcess, until};

/// The user every controller acts as (through impersonation), matched by the throttling
/// FlowSchema.
pub const CONTROLLER_USER: &str = "orrery-chaos-controllers";
/// The namespace of the workflow chains.
pub const WORKFLOW_NAMESPACE: &str = "chaos-workflow";
const FLOW_SCHEMA: &str = "orrery-chaos-controllers";
const PRIORITY_LEVEL: &str = "orrery-chaos-trickle";
/// Retries of the failing Task: its one run has this many attempts plus one.
const RETRY_LIMIT: i32 = 2;

/// What a run does.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Seeds every random choice of faults.
    pub seed: u64,
    /// Length of all the fault phases together (the calm phase included).
    pub length: Duration,
    /// A new workflow chain this often.
    pub chain_every: Duration,
    /// A new Project tree this often.
    pub tree_every: Duration,
    /// How long the controllers must stay without writes once everything converged.
    pub quiet: Duration,
    /// How long everything may take to converge after the faults stop.
    pub converge_limit: Duration,
    /// The phases to run, by index (0 calm, 1 kills, 2 API restarts, 3 throttling, 4 network
    /// faults, 5 watch expiry, 6 all at once): all of them unless `ORRERY_CHAOS_PHASES` (e.g. `0,2`) picks some, to look at
    /// one fault class alone.
    pub phases: Vec<usize>,
}

impl Settings {
    /// `length` of phases, the seed from `ORRERY_CHAOS_SEED` or drawn at random.
    pub fn new(length: Duration) -> Self {
        let seed = std::env::var("ORRERY_CHAOS_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| rand::rng().random());
        Settings {
            seed,
            length,
            chain_every: Duration::from_secs(2),
            tree_every: Duration::from_secs(8),
            quiet: Duration::from_secs(60),
            converge_limit: Duration::from_secs(300),
            phases: std::env::var("ORRERY_CHAOS_PHASES")
                .ok()
                .map(|list| list.split(',').filter_map(|p| p.trim().parse().ok()).collect())
                .unwrap_or_else(|| (0..PHASES.len()).collect()),
        }
    }
}

/// A kind of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultClass {
    /// A controller's task aborted mid-work (as SIGKILL would), or the leading replica of
    /// [`REPLICATED`] killed with SIGKILL; started again after 0-5 s.
    ControllerKill,
    /// The control plane killed and started again on its data.
    ApiServerRestart,
    /// A FlowSchema gives the controllers' user a priority level of one share that rejects
    /// what exceeds it: the API server answers 429.
    Throttling,
    /// A toxic of the fault proxy between the controllers and the API server, for 2-6 s:
    /// connections reset, delayed, stalled, starved or cut mid-stream ([`Toxic`]).
    Network,
    /// The controllers cut off (the proxy off) for 2-5 s while work goes on, and etcd compacted
    /// meanwhile: the watches they resume of [`UNCACHED`] kinds, served from etcd, answer
    /// 410 Gone, and they must list again.
    WatchExpiry,
}

/// The built-in kinds the controllers watch, served without the API server's watch cache so
/// that an etcd compaction expires their watches (custom resources always have a cache: the
/// API server answers 410 for them only beyond its window, which its restarts exercise).
const UNCACHED: &[&str] = &[
    "pods",
    "namespaces",
    "services",
    "resourcequotas",
    "limitranges",
    "deployments.apps",
    "networkpolicies.networking.k8s.io",
    "rolebindings.rbac.authorization.k8s.io",
];

impl FaultClass {
    fn label(self) -> &'static str {
        match self {
            FaultClass::ControllerKill => "controller kill",
            FaultClass::ApiServerRestart => "API server restart",
            FaultClass::Throttling => "throttling (429)",
            FaultClass::Network => "network fault (proxy)",
            FaultClass::WatchExpiry => "watch expiry (compaction)",
        }
    }
}

/// A phase of the run: its name, its faults and its share of the run's length.
struct Phase {
    name: &'static str,
    faults: &'static [FaultClass],
    share: f64,
}

const PHASES: [Phase; 7] = [
    Phase {
        name: "calm",
        faults: &[],
        share: 0.10,
    },
    Phase {
        name: "kills",
        faults: &[FaultClass::ControllerKill],
        share: 0.20,
    },
    Phase {
        name: "API restarts",
        faults: &[FaultClass::ApiServerRestart],
        share: 0.12,
    },
    Phase {
        name: "throttling",
        faults: &[FaultClass::Throttling],
        share: 0.12,
    },
    Phase {
        name: "network",
        faults: &[FaultClass::Network],
        share: 0.12,
    },
    Phase {
        name: "watch expiry",
        faults: &[FaultClass::WatchExpiry],
        share: 0.10,
    },
    Phase {
        name: "all at once",
        faults: &[
            FaultClass::ControllerKill,
            FaultClass::ApiServerRestart,
            FaultClass::Throttling,
            FaultClass::Network,
            FaultClass::WatchExpiry,
        ],
        share: 0.24,
    },
];

/// One fault as it happened.
#[derive(Clone, Debug)]
struct Fault {
    class: FaultClass,
    phase: usize,
    ended: Instant,
}

/// A piece of work the run created and waits for.
#[derive(Clone, Debug)]
struct Unit {
    kind: UnitKind,
    index: usize,
    phase: usize,
    created: Instant,
    converged: Option<Instant>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum UnitKind {
    Chain,
    Tree,
}

/// The controllers under test in this process; ignitor-scheduler runs as [`REPLICATED`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ControllerKind {
    TaskWorkflow,
    HierarchyExecutor,
    PolicyRunner,
}

const CONTROLLERS: [ControllerKind; 3] = [
    ControllerKind::TaskWorkflow,
    ControllerKind::HierarchyExecutor,
    ControllerKind::PolicyRunner,
];

/// The controller run as two replicas (processes of its binary) electing a leader: its kills
/// kill the leader, and the other must take over.
const REPLICATED: &str = ignitor_scheduler::controller::NAME;
/// How long its Lease lasts unrenewed (15 s in the chart; short here, for many takeovers).
const REPLICA_LEASE_SECONDS: u64 = 4;

impl ControllerKind {
    fn name(self) -> &'static str {
        match self {
            ControllerKind::TaskWorkflow => task_workflow::controller::NAME,
            ControllerKind::HierarchyExecutor => hierarchy_executor::controller::NAME,
            ControllerKind::PolicyRunner => policy_runner::NAME,
        }
    }

    fn start(self, client: Client) -> InProcess {
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
struct Slot {
    kind: ControllerKind,
    requests: Metrics,
    running: Option<InProcess>,
    kills: usize,
}

/// Every controller, started as [`CONTROLLER_USER`] with a client that counts its requests.
struct Controllers {
    config: Config,
    slots: tokio::sync::Mutex<Vec<Slot>>,
    /// Controllers found finished (returned or panicked) when they should have been running.
    ended_by_themselves: Mutex<Vec<String>>,
}

impl Controllers {
    fn start(config: Config) -> anyhow::Result<Self> {
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
    async fn kill_and_restart(&self, index: usize, pause: Duration) -> anyhow::Result<()> {
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

    fn note_if_ended(&self, index: usize, controller: &InProcess) {
        if !controller.is_running()
            && let Ok(mut ended) = self.ended_by_themselves.lock()
        {
            ended.push(CONTROLLERS[index % CONTROLLERS.len()].name().to_owned());
        }
    }

    /// Writes (every request but GET) each controller has sent so far.
    async fn writes(&self) -> BTreeMap<&'static str, u64> {
        let slots = self.slots.lock().await;
        slots
            .iter()
            .map(|slot| (slot.kind.name(), writes_sent(&slot.requests)))
            .collect()
    }

    async fn kills(&self) -> BTreeMap<&'static str, usize> {
        let slots = self.slots.lock().await;
        slots.iter().map(|slot| (slot.kind.name(), slot.kills)).collect()
    }

    /// Stops every controller gracefully, noting those that had ended by themselves.
    async fn stop(&self) {
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

fn counting_client(config: &Config, requests: &Metrics) -> anyhow::Result<Client> {
    // No client-side rate limit: the API server's Priority and Fairness paces.
    Ok(orrery_runtime::build_client(
        config.clone(),
        0.0,
        1,
        requests.requests.clone(),
    )?)
}

/// The writes ([`is_write`]) counted in `metrics`.
fn writes_sent(metrics: &Metrics) -> u64 {
    metrics
        .encode()
        .lines()
        .filter(|l| is_write(l))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Panics anywhere in the process while a run goes on, with their messages.
fn panics() -> &'static Mutex<Vec<String>> {
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

/// One invariant: what was checked, how many cases, and the ones that broke it.
#[derive(Debug)]
pub struct Invariant {
    /// What holds.
    pub name: String,
    /// Cases checked.
    pub checked: usize,
    /// Cases that broke it, described.
    pub broken: Vec<String>,
}

/// Figures of one phase.
#[derive(Debug, Default, Clone)]
pub struct PhaseFigures {
    /// The phase.
    pub name: String,
    /// How long it lasted.
    pub length: Duration,
    /// Faults by class.
    pub faults: BTreeMap<String, usize>,
    /// Work created during it.
    pub created: usize,
    /// Work that converged during it (whenever created).
    pub converged: usize,
    /// From creation to convergence, seconds, of the work created during it.
    pub latencies: Vec<f64>,
}

/// What a run found.
#[derive(Debug)]
pub struct Report {
    /// The seed.
    pub seed: u64,
    /// Every invariant checked.
    pub invariants: Vec<Invariant>,
    /// Per phase.
    pub phases: Vec<PhaseFigures>,
    /// Recovery in seconds by fault class (and "all at once" separately): from a fault's end
    /// until everything in flight then has converged.
    pub recovery: BTreeMap<String, Vec<f64>>,
    /// Controller kills by controller.
    pub kills: BTreeMap<&'static str, usize>,
    /// Seconds from killing the leading replica of ignitor-scheduler until the other held
    /// its Lease.
    pub takeovers: Vec<f64>,
    /// Replicas that exited by themselves (and were started again), and how.
    pub replica_exits: Vec<String>,
    /// How long each API server restart kept it away, seconds.
    pub restarts: Vec<f64>,
    /// Requests the API server rejected with 429 for the controllers' FlowSchema.
    pub rejected_429: u64,
    /// The fault proxy's toxics put on, by kind.
    pub toxics: BTreeMap<&'static str, usize>,
    /// Watches of the workflow's pods through the proxy answered 410 Gone.
    pub expired_watches: usize,
    /// The longest a task of this process waited to run past its time, seconds: every
    /// controller runs on this process's runtime, so a long wait stalls them all.
    pub worst_scheduling_delay: f64,
    /// From the end of the faults to everything converged.
    pub converged_after: Duration,
    /// Writes by controller over [`Settings::quiet`] once converged.
    pub writes_at_rest: BTreeMap<&'static str, u64>,
    /// The quiet window.
    pub quiet: Duration,
    /// The whole run.
    pub elapsed: Duration,
}

impl Report {
    /// Every invariant that broke, described.
    pub fn violations(&self) -> Vec<String> {
        self.invariants
            .iter()
            .filter(|i| !i.broken.is_empty())
            .map(|i| format!("{}: {} of {} broken: {:?}", i.name, i.broken.len(), i.checked, i.broken))
            .collect()
    }

    /// Prints the invariants and the figures as tables.
    pub fn print(&self) {
        println!(
            "\nchaos run, seed {} ({:.0} s in all)",
            self.seed,
            self.elapsed.as_secs_f64()
        );
        println!("\n{:<72} {:>8} {:>8}", "invariant", "checked", "broken");
        for invariant in &self.invariants {
            println!(
                "{:<72} {:>8} {:>8}",
                invariant.name,
                invariant.checked,
                invariant.broken.len()
            );
            for broken in invariant.broken.iter().take(5) {
                println!("    {broken}");
            }
        }
        println!(
            "\n{:<14} {:>7} {:>8} {:>8} {:>10} {:>10} {:>9}  faults",
            "phase", "length", "created", "done", "done/min", "p50 lat.", "p99 lat."
        );
        for phase in &self.phases {
            let minutes = phase.length.as_secs_f64() / 60.0;
            let faults: Vec<String> = phase.faults.iter().map(|(c, n)| format!("{n} {c}")).collect();
            println!(
                "{:<14} {:>6.0}s {:>8} {:>8} {:>10.1} {:>9.1}s {:>8.1}s  {}",
                phase.name,
                phase.length.as_secs_f64(),
                phase.created,
                phase.converged,
                phase.converged as f64 / minutes.max(1e-9),
                percentile(&phase.latencies, 0.5),
                percentile(&phase.latencies, 0.99),
                if faults.is_empty() {
                    "none".to_owned()
                } else {
                    faults.join(", ")
                }
            );
        }
        println!("\nrecovery (fault's end → everything in flight then converged)");
        println!("{:<40} {:>6} {:>8} {:>8} {:>8}", "fault", "count", "p50", "p99", "max");
        for (class, samples) in &self.recovery {
            println!(
                "{:<40} {:>6} {:>7.1}s {:>7.1}s {:>7.1}s",
                class,
                samples.len(),
                percentile(samples, 0.5),
                percentile(samples, 0.99),
                percentile(samples, 1.0)
            );
        }
        let kills: usize = self.kills.values().sum();
        println!("\ncontroller kills: {kills} ({:?})", self.kills);
        println!(
            "leader takeovers ({REPLICATED}, 2 replicas, {REPLICA_LEASE_SECONDS} s Lease): {} (p50 {:.1}s, max {:.1}s)",
            self.takeovers.len(),
            percentile(&self.takeovers, 0.5),
            percentile(&self.takeovers, 1.0)
        );
        let lost = self.replica_exits.iter().filter(|e| e.contains(LOST_LEASE)).count();
        println!(
            "replicas that exited by themselves and were started again: {} ({lost} after losing the Lease)",
            self.replica_exits.len()
        );
        println!(
            "API server restarts: {} (away p50 {:.1}s, max {:.1}s)",
            self.restarts.len(),
            percentile(&self.restarts, 0.5),
            percentile(&self.restarts, 1.0)
        );
        println!(
            "requests rejected with 429 by the controllers' FlowSchema: {}",
            self.rejected_429
        );
        println!("network faults by toxic: {:?}", self.toxics);
        println!(
            "watches of pods through the proxy answered 410 Gone: {}",
            self.expired_watches
        );
        println!(
            "worst scheduling delay of this process's runtime: {:.2}s",
            self.worst_scheduling_delay
        );
        println!(
            "converged (or gave up) {:.1}s after the faults stopped; writes over the next {:.0}s: {:?} \
             (counted by each controller's client, every request but GET)",
            self.converged_after.as_secs_f64(),
            self.quiet.as_secs_f64(),
            self.writes_at_rest
        );
    }
}

/// The `q` quantile of `samples` (0 when there are none).
fn percentile(samples: &[f64], q: f64) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// Everything a run shares between its tasks.
struct World {
    plane: Arc<ControlPlane>,
    admin: Client,
    controllers: Controllers,
    units: Mutex<Vec<Unit>>,
    faults: Mutex<Vec<Fault>>,
    restarts: Mutex<Vec<f64>>,
    rejected_429: AtomicUsize,
    proxy: FaultProxy,
    replicas: tokio::sync::Mutex<Replicas>,
    replica_kills: AtomicUsize,
    takeovers: Mutex<Vec<Takeover>>,
    replica_exits: Mutex<Vec<String>>,
    toxics: Mutex<BTreeMap<&'static str, usize>>,
    worst_delay_ms: AtomicUsize,
    expired_watches: AtomicUsize,
    phase: AtomicUsize,
    route_checks: Mutex<RouteChecks>,
}

#[derive(Default)]
struct RouteChecks {
    observed: usize,
    broken: Vec<String>,
}

/// Runs the campaign `settings` describe on a control plane of its own.
pub async fn run(settings: Settings) -> anyhow::Result<Report> {
    println!(
        "chaos: seed {} (ORRERY_CHAOS_SEED={} reproduces the fault schedule), {:.0} s of phases",
        settings.seed,
        settings.seed,
        settings.length.as_secs_f64()
    );
    let started = Instant::now();
    panics().lock().map(|mut p| p.clear()).ok();
    let plane = Arc::new(tokio::task::spawn_blocking(|| ControlPlane::start_with_flow_control(UNCACHED)).await??);
    plane.install_crds_blocking()?;
    let admin = plane.client().await;
    let _kubelet = PodSimulator::start(admin.clone(), None).await?;
    prepare_access(&admin).await?;
    // The controllers reach the API server through the fault proxy; the harness goes direct.
    let proxy = FaultProxy::start(plane.config(), &plane.dir().join("toxiproxy.log")).await?;
    let mut config = proxy.config_for(plane.config())?;
    config.auth_info.impersonate = Some(CONTROLLER_USER.to_owned());
    config.auth_info.impersonate_groups = Some(vec!["system:authenticated".to_owned()]);
    // ignitor-scheduler: two replicas of its binary, as the same user through the same proxy.
    create_retrying(
        &Api::<Namespace>::all(admin.clone()),
        json!({"metadata": {"name": WORKFLOW_NAMESPACE}}),
    )
    .await?;
    let kubeconfig = plane.dir().join("controllers.kubeconfig");
    kubeconfig_as(&plane.kubeconfig_path(), &proxy.url(), CONTROLLER_USER, &kubeconfig)?;
    let replicas = Replicas::start(
        REPLICATED,
        2,
        &kubeconfig,
        WORKFLOW_NAMESPACE,
        REPLICA_LEASE_SECONDS,
        plane.dir(),
        &admin,
    )?;
    let world = Arc::new(World {
        controllers: Controllers::start(config)?,
        proxy,
        replicas: tokio::sync::Mutex::new(replicas),
        replica_kills: AtomicUsize::new(0),
        takeovers: Mutex::new(Vec::new()),
        replica_exits: Mutex::new(Vec::new()),
        toxics: Mutex::new(BTreeMap::new()),
        worst_delay_ms: AtomicUsize::new(0),
        expired_watches: AtomicUsize::new(0),
        plane,
        admin,
        units: Mutex::new(Vec::new()),
        faults: Mutex::new(Vec::new()),
        restarts: Mutex::new(Vec::new()),
        rejected_429: AtomicUsize::new(0),
        phase: AtomicUsize::new(0),
        route_checks: Mutex::new(RouteChecks::default()),
    });
    let stores = Stores::start(&world.admin);
    create_workload_base(&world.admin).await?;
    // The first tree installs the Gateway API, so the route watch can start before any
    // weight moves under faults.
    world.create_tree(0).await?;
    world.wait_converged(&stores, Duration::from_secs(120)).await?;
    let route_watch = tokio::spawn(watch_routes(world.clone()));
    let expiry_count = tokio::spawn(count_expired_watches(
        world.clone(),
        Client::try_from(world.proxy.config_for(world.plane.config())?)?,
    ));
    println!("chaos: set up in {:.1}s", started.elapsed().as_secs_f64());

    let tracker = tokio::spawn(track_convergence(world.clone(), stores.clone()));
    let heartbeat = tokio::spawn(heartbeat(world.clone()));
    let supervisor = tokio::spawn(supervise_replicas(world.clone()));
    let generator = tokio::spawn(generate_workload(world.clone(), settings.clone()));
    let mut phases = Vec::new();
    for (index, phase) in PHASES.iter().enumerate() {
        if !settings.phases.contains(&index) {
            continue;
        }
        world.phase.store(index, Ordering::SeqCst);
        let length = settings.length.mul_f64(phase.share);
        let phase_start = Instant::now();
        println!("chaos: phase {} for {:.0}s", phase.name, length.as_secs_f64());
        let injectors: Vec<_> = phase
            .faults
            .iter()
            .map(|class| {
                let rng = StdRng::seed_from_u64(settings.seed ^ ((index as u64) << 8) ^ (*class as u64));
                tokio::spawn(inject(world.clone(), *class, index, phase_start + length, rng))
            })
            .collect();
        for injector in injectors {
            injector.await??;
        }
        // A fault that began near the end may run past it; the phase lasts until it ended.
        let remaining = (phase_start + length).saturating_duration_since(Instant::now());
        tokio::time::sleep(remaining).await;
        phases.push((index, phase_start, phase_start.elapsed()));
    }
    let faults_over = Instant::now();
    generator.abort();
    let _ = generator.await;
    suspend_cron(&world.admin).await?;
    // Stuck work is a finding, not an end: the invariants below name it.
    if let Err(stuck) = world.wait_converged(&stores, settings.converge_limit).await {
        println!("chaos: {stuck}");
        for line in world.describe_stuck_trees().await {
            println!("chaos:   {line}");
        }
    }
    let converged_after = faults_over.elapsed();
    println!(
        "chaos: converged (or gave up) {:.1}s after the faults stopped",
        converged_after.as_secs_f64()
    );

    let writes_at_rest = world.writes_at_rest(settings.quiet).await;
    tracker.abort();
    heartbeat.abort();
    supervisor.abort();
    route_watch.abort();
    expiry_count.abort();
    world.controllers.stop().await;
    let mut invariants = world.check_invariants().await?;
    world.replicas.lock().await.stop();
    invariants.push(Invariant {
        name: format!(
            "no controller writes in {:.0} s once converged",
            settings.quiet.as_secs_f64()
        ),
        checked: writes_at_rest.len(),
        broken: writes_at_rest
            .iter()
            .filter(|(_, writes)| **writes > 0)
            .map(|(name, writes)| format!("{name}: {writes} writes"))
            .collect(),
    });
    let report = world
        .report(&settings, &phases, invariants, converged_after, writes_at_rest, started)
        .await;
    Ok(report)
}

/// Lets the admin impersonate the controllers' user, gives that user cluster-admin (least
/// authority is tested elsewhere), and sets up the throttling priority level (its FlowSchema
/// comes and goes with the faults).
async fn prepare_access(admin: &Client) -> anyhow::Result<()> {
    let binding = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": CONTROLLER_USER},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": CONTROLLER_USER}]
    });
    Api::<k8s_openapi::api::rbac::v1::ClusterRoleBinding>::all(admin.clone())
        .create(&PostParams::default(), &serde_json::from_value(binding)?)
        .await?;
    let level = json!({
        "apiVersion": "flowcontrol.apiserver.k8s.io/v1", "kind": "PriorityLevelConfiguration",
        "metadata": {"name": PRIORITY_LEVEL},
        "spec": {"type": "Limited", "limited": {
            "nominalConcurrencyShares": 1, "lendablePercent": 0, "borrowingLimitPercent": 0,
            "limitResponse": {"type": "Reject"}}}
    });
    Api::<k8s_openapi::api::flowcontrol::v1::PriorityLevelConfiguration>::all(admin.clone())
        .create(&PostParams::default(), &serde_json::from_value(level)?)
        .await?;
    Ok(())
}

fn flow_schema() -> Value {
    json!({
        "apiVersion": "flowcontrol.apiserver.k8s.io/v1", "kind": "FlowSchema",
        "metadata": {"name": FLOW_SCHEMA},
        "spec": {
            "priorityLevelConfiguration": {"name": PRIORITY_LEVEL},
            "matchingPrecedence": 100,
            "distinguisherMethod": {"type": "ByUser"},
            "rules": [{
                "subjects": [{"kind": "User", "user": {"name": CONTROLLER_USER}}],
                "resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"], "clusterScope": true, "namespaces": ["*"]}],
                "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}]
            }]
        }
    })
}

/// The namespace of the chains, and the cron Ignitor with its Task.
async fn create_workload_base(admin: &Client) -> anyhow::Result<()> {
    create_retrying(
        &Api::<Namespace>::all(admin.clone()),
        json!({"metadata": {"name": WORKFLOW_NAMESPACE}}),
    )
    .await?;
    let tasks: Api<Task> = Api::namespaced(admin.clone(), WORKFLOW_NAMESPACE);
    create_retrying(
        &tasks,
        task(
            "on-the-minute",
            json!({"startOnIgnition": ["every-minute"]}),
            "Succeeded",
        ),
    )
    .await?;
    let ignitors: Api<Ignitor> = Api::namespaced(admin.clone(), WORKFLOW_NAMESPACE);
    create_retrying(
        &ignitors,
        json!({"metadata": {"name": "every-minute"}, "spec": {"scheduled": "* * * * *", "data": "tick"}}),
    )
    .await?;
    Ok(())
}

/// A Task running a simulated pod that ends with `outcome`, its history kept.
fn task(name: &str, triggers: Value, outcome: &str) -> Value {
    let mut spec = json!({
        "successfulRunsHistoryLimit": 1000,
        "failedRunsHistoryLimit": 1000,
        "template": {
            "metadata": {"annotations": {
                pod_simulator::OUTCOME: outcome,
                pod_simulator::TERMINATION_MESSAGE: "$(ORCA_TASK) got [$(ORCA_DATA)]",
            }},
            "spec": {"restartPolicy": "Never", "containers": [{"name": "main", "image": "busybox"}]}
        }
    });
    for (key, value) in triggers.as_object().into_iter().flatten() {
        spec[key] = value.clone();
    }
    json!({"metadata": {"name": name}, "spec": spec})
}

/// Creates `object`, trying again through API server restarts and throttling; one that
/// exists already (a create whose answer was lost) counts as created.
async fn create_retrying<K>(api: &Api<K>, object: Value) -> anyhow::Result<()>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug + serde::Serialize,
{
    let object: K = serde_json::from_value(object)?;
    until(
        &format!("creating {} {}", K::kind(&()), object.name_any()),
        Deadline(Duration::from_secs(60)),
        || async {
            match api.create(&PostParams::default(), &object).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
                Err(err) => Err(err.to_string()),
            }
        },
    )
    .await?;
    Ok(())
}

async fn suspend_cron(admin: &Client) -> anyhow::Result<()> {
    let ignitors: Api<Ignitor> = Api::namespaced(admin.clone(), WORKFLOW_NAMESPACE);
    until(
        "suspending the cron Ignitor",
        Deadline(Duration::from_secs(60)),
        || async {
            ignitors
                .patch(
                    "every-minute",
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"suspend": true}})),
                )
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        },
    )
    .await?;
    Ok(())
}

/// Creates a chain now and then, and a tree less often, until aborted.
async fn generate_workload(world: Arc<World>, settings: Settings) -> anyhow::Result<()> {
    let mut chains = 0;
    let mut trees = 1;
    let mut next_tree = Instant::now() + settings.tree_every;
    loop {
        world.create_chain(chains).await?;
        chains += 1;
        if Instant::now() >= next_tree {
            world.create_tree(trees).await?;
            trees += 1;
            next_tree += settings.tree_every;
        }
        tokio::time::sleep(settings.chain_every).await;
    }
}

impl World {
    fn add_unit(&self, kind: UnitKind, index: usize) {
        if let Ok(mut units) = self.units.lock() {
            units.push(Unit {
                kind,
                index,
                phase: self.phase.load(Ordering::SeqCst),
                created: Instant::now(),
                converged: None,
            });
        }
    }

    /// Chain `i`: Ignitor `now-i` fires once, starting `a-i` (succeeds, which starts `b-i`)
    /// and `r-i` (fails every attempt, retried [`RETRY_LIMIT`] times).
    async fn create_chain(&self, i: usize) -> anyhow::Result<()> {
        let tasks: Api<Task> = Api::namespaced(self.admin.clone(), WORKFLOW_NAMESPACE);
        let ignitor = format!("now-{i}");
        create_retrying(
            &tasks,
            task(&format!("a-{i}"), json!({"startOnIgnition": [ignitor]}), "Succeeded"),
        )
        .await?;
        create_retrying(
            &tasks,
            task(
                &format!("b-{i}"),
                json!({"startOnSuccess": [format!("a-{i}")]}),
                "Succeeded",
            ),
        )
        .await?;
        create_retrying(
            &tasks,
            task(
                &format!("r-{i}"),
                json!({"startOnIgnition": [ignitor], "retry": {"limit": RETRY_LIMIT, "backoffSeconds": 1}}),
                "Failed",
            ),
        )
        .await?;
        self.add_unit(UnitKind::Chain, i);
        let ignitors: Api<Ignitor> = Api::namespaced(self.admin.clone(), WORKFLOW_NAMESPACE);
        create_retrying(
            &ignitors,
            json!({"metadata": {"name": ignitor}, "spec": {"scheduled": "NOW", "data": format!("chain {i}")}}),
        )
        .await
    }

    /// Tree `j`: Project `tree-j` whose templates make a Cluster, a VirtualCluster (namespace
    /// `tree-j`) and Application `web` with v1 and v2, v2 released by canary.
    async fn create_tree(&self, j: usize) -> anyhow::Result<()> {
        let name = format!("tree-{j}");
        let project = json!({"metadata": {"name": name}, "spec": {"templates": {
            "clusters": [{"name": format!("{name}-local"), "spec": {"executor": {"name": "default", "parameters": {"installGatewayAPI": true}}}}],
            "virtualClusters": [{"name": name, "spec": {"namespace": name, "quota": {"pods": "10"}}}],
            "applications": [{"name": "web", "namespace": name, "spec": {
                "virtualCluster": name,
                "versions": [{"name": "v1", "image": "web:1"}, {"name": "v2", "image": "web:2"}],
                "route": {"gateway": "public"},
                "policies": [{"name": "canary", "parameters": {"stepWeight": 25, "maxWeight": 75, "interval": "2s"}}],
            }}],
        }}});
        self.add_unit(UnitKind::Tree, j);
        create_retrying(&Api::<Project>::all(self.admin.clone()), project).await
    }

    /// Waits until every unit created so far has converged.
    async fn wait_converged(&self, stores: &Stores, limit: Duration) -> anyhow::Result<()> {
        until("every chain done and every tree Ready", Deadline(limit), || async {
            let pending = self.mark_converged(stores);
            if pending.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "{} not converged, e.g. {:?}",
                    pending.len(),
                    &pending[..pending.len().min(5)]
                ))
            }
        })
        .await?;
        Ok(())
    }

    /// Marks the units that have converged by now; returns those that have not.
    fn mark_converged(&self, stores: &Stores) -> Vec<String> {
        let now = Instant::now();
        let Ok(mut units) = self.units.lock() else {
            return vec!["(lock poisoned)".to_owned()];
        };
        let mut pending = Vec::new();
        for unit in units.iter_mut().filter(|u| u.converged.is_none()) {
            let done = match unit.kind {
                UnitKind::Chain => stores.chain_done(unit.index),
                UnitKind::Tree => stores.tree_done(unit.index),
            };
            match done {
                Ok(()) => unit.converged = Some(now),
                Err(why) => pending.push(why),
            }
        }
        pending
    }

    /// Writes (every request but GET) each controller has sent so far.
    async fn writes(&self) -> BTreeMap<&'static str, u64> {
        let mut writes = self.controllers.writes().await;
        writes.insert(REPLICATED, self.replicas.lock().await.writes().await);
        writes
    }

    /// What each tree not converged has on the API server: each level's `Ready` condition and
    /// whether its namespace exists, to tell where it stopped.
    async fn describe_stuck_trees(&self) -> Vec<String> {
        use crd_types::hierarchy::{Cluster, HierarchyStatus, VirtualCluster};
        fn ready(status: Option<&HierarchyStatus>) -> String {
            status
                .and_then(|s| find_condition(&s.conditions, CONDITION_READY))
                .map(|c| format!("{} {}: {}", c.status, c.reason, c.message))
                .unwrap_or_else(|| "no Ready condition".to_owned())
        }
        let units = self.units.lock().map(|u| u.clone()).unwrap_or_default();
        let mut lines = Vec::new();
        for unit in units
            .iter()
            .filter(|u| u.kind == UnitKind::Tree && u.converged.is_none())
        {
            let name = format!("tree-{}", unit.index);
            let admin = &self.admin;
            let project = Api::<Project>::all(admin.clone()).get_opt(&name).await.ok().flatten();
            let cluster = Api::<Cluster>::all(admin.clone())
                .get_opt(&format!("{name}-local"))
                .await
                .ok()
                .flatten();
            let virtual_cluster = Api::<VirtualCluster>::all(admin.clone())
                .get_opt(&name)
                .await
                .ok()
                .flatten();
            let namespace = Api::<Namespace>::all(admin.clone()).get_opt(&name).await.ok().flatten();
            let application = Api::<Application>::namespaced(admin.clone(), &name)
                .get_opt("web")
                .await
                .ok()
                .flatten();
            lines.push(format!(
                "{name}: Project {}; Cluster {}; VirtualCluster {}; namespace {}; Application {}",
                ready(project.as_ref().and_then(|p| p.status.as_ref())),
                cluster.map_or("missing".to_owned(), |c| ready(c.status.as_ref().map(|s| &s.common))),
                virtual_cluster.map_or("missing".to_owned(), |v| ready(v.status.as_ref().map(|s| &s.common))),
                if namespace.is_some() { "exists" } else { "missing" },
                application.map_or("missing".to_owned(), |a| ready(a.status.as_ref().map(|s| &s.common))),
            ));
        }
        lines
    }

    /// Waits until the controllers have written nothing for 5 s, then counts their writes
    /// over `quiet`.
    async fn writes_at_rest(&self, quiet: Duration) -> BTreeMap<&'static str, u64> {
        let settled = Mutex::new((self.writes().await, Instant::now()));
        let _ = until(
            "the controllers to stop writing",
            Deadline(Duration::from_secs(120)),
            || async {
                let writes = self.writes().await;
                let Ok(mut last) = settled.lock() else {
                    return Ok(());
                };
                if writes != last.0 {
                    *last = (writes, Instant::now());
                }
                if last.1.elapsed() >= Duration::from_secs(5) {
                    Ok(())
                } else {
                    Err(format!("still writing: {:?}", last.0))
                }
            },
        )
        .await;
        let before = self.writes().await;
        // The window is the measurement itself: nothing is awaited, writes are counted.
        tokio::time::sleep(quiet).await;
        let after = self.writes().await;
        after
            .into_iter()
            .map(|(name, count)| (name, count - before.get(name).copied().unwrap_or(0)))
            .collect()
    }
}

/// Caches of what the convergence tracker looks at, filled by watches of the admin (which
/// no fault throttles).
#[derive(Clone)]
struct Stores {
    task_runs: Store<TaskRun>,
    projects: Store<Project>,
    applications: Store<Application>,
}

impl Stores {
    fn start(admin: &Client) -> Self {
        Stores {
            task_runs: reflect(Api::namespaced(admin.clone(), WORKFLOW_NAMESPACE)),
            projects: reflect(Api::all(admin.clone())),
            applications: reflect(Api::all(admin.clone())),
        }
    }

    fn runs_of(&self, task: &str) -> Vec<Arc<TaskRun>> {
        self.task_runs
            .state()
            .into_iter()
            .filter(|r| r.spec.task_ref.name == task)
            .collect()
    }

    fn has_run(&self, task: &str, phase: TaskRunPhase) -> Result<(), String> {
        let runs = self.runs_of(task);
        if runs
            .iter()
            .any(|r| r.status.as_ref().and_then(|s| s.phase) == Some(phase))
        {
            Ok(())
        } else {
            let phases: Vec<_> = runs.iter().map(|r| r.status.as_ref().and_then(|s| s.phase)).collect();
            Err(format!("{task}: runs {phases:?}, want one {phase:?}"))
        }
    }

    fn chain_done(&self, i: usize) -> Result<(), String> {
        self.has_run(&format!("a-{i}"), TaskRunPhase::Succeeded)?;
        self.has_run(&format!("b-{i}"), TaskRunPhase::Succeeded)?;
        self.has_run(&format!("r-{i}"), TaskRunPhase::Failed)
    }

    fn tree_done(&self, j: usize) -> Result<(), String> {
        let name = format!("tree-{j}");
        let project = self
            .projects
            .state()
            .into_iter()
            .find(|p| p.name_any() == name)
            .ok_or(format!("{name}: no Project yet"))?;
        let ready = project
            .status
            .as_ref()
            .and_then(|s| find_condition(&s.conditions, CONDITION_READY))
            .map(|c| (c.status.clone(), c.message.clone()));
        if ready.as_ref().map(|r| r.0.as_str()) != Some("True") {
            return Err(format!("{name}: Project not Ready: {ready:?}"));
        }
        let app = self
            .applications
            .state()
            .into_iter()
            .find(|a| a.namespace().as_deref() == Some(name.as_str()) && a.name_any() == "web")
            .ok_or(format!("{name}: no Application yet"))?;
        let status = app.status.as_ref().ok_or(format!("{name}: no Application status"))?;
        let v2: i32 = status
            .weights
            .iter()
            .filter(|w| w.version == "v2")
            .map(|w| w.weight)
            .sum();
        if v2 != 100 {
            return Err(format!("{name}: v2 at {v2}%, not promoted yet"));
        }
        Ok(())
    }
}

fn reflect<K>(api: Api<K>) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(api, watcher::Config::default()))
        .default_backoff()
        .touched_objects();
    tokio::spawn(stream.for_each(|_| std::future::ready(())));
    reader
}

/// Marks units converged as they do, so each has its time.
async fn track_convergence(world: Arc<World>, stores: Stores) {
    loop {
        world.mark_converged(&stores);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Watches every HTTPRoute for the whole run and checks each version of each: every rule's
/// backend weights sum to 100.
async fn watch_routes(world: Arc<World>) {
    let routes: Api<HttpRoute> = Api::all(world.admin.clone());
    let stream = watcher(routes, watcher::Config::default())
        .default_backoff()
        .applied_objects();
    futures::pin_mut!(stream);
    while let Some(event) = stream.next().await {
        let Ok(route) = event else { continue };
        let sums: Vec<i32> = route
            .spec
            .rules
            .iter()
            .flatten()
            .map(|rule| rule.backend_refs.iter().flatten().map(|b| b.weight.unwrap_or(1)).sum())
            .collect();
        if let Ok(mut checks) = world.route_checks.lock() {
            checks.observed += 1;
            if sums.is_empty() || sums.iter().any(|s| *s != 100) {
                checks.broken.push(format!(
                    "{}/{} rv {}: rule weights sum to {sums:?}",
                    route.namespace().unwrap_or_default(),
                    route.name_any(),
                    route.resource_version().unwrap_or_default()
                ));
            }
        }
    }
}

/// Watches the workflow's pods through the fault proxy, as the controllers do, and counts the
/// 410s (resource version too old) it is answered: proof that watch expiry reached clients.
async fn count_expired_watches(world: Arc<World>, through_proxy: Client) {
    let pods: Api<Pod> = Api::namespaced(through_proxy, WORKFLOW_NAMESPACE);
    let stream = watcher(pods, watcher::Config::default()).default_backoff();
    futures::pin_mut!(stream);
    while let Some(event) = stream.next().await {
        if let Err(watcher::Error::WatchError(status)) = event
            && status.code == 410
        {
            world.expired_watches.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// The words of a replica's exit when it lost its Lease.
const LOST_LEASE: &str = "lost the Lease";

/// Plays the kubelet for the replicas: every second, starts again those that exited.
async fn supervise_replicas(world: Arc<World>) {
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

/// Wakes every 100 ms and records how late it woke: a task's wait to be run.
async fn heartbeat(world: Arc<World>) {
    const TICK: Duration = Duration::from_millis(100);
    loop {
        let asleep = Instant::now();
        tokio::time::sleep(TICK).await;
        let late = asleep.elapsed().saturating_sub(TICK).as_millis() as usize;
        world.worst_delay_ms.fetch_max(late, Ordering::SeqCst);
        if late > 1000 {
            println!("chaos: this process's runtime ran a task {late} ms late");
        }
    }
}

/// Injects faults of `class` until `until`, at gaps drawn from `rng`.
async fn inject(
    world: Arc<World>,
    class: FaultClass,
    phase: usize,
    until: Instant,
    mut rng: StdRng,
) -> anyhow::Result<()> {
    loop {
        let gap = match class {
            FaultClass::ControllerKill => rng.random_range(1.0..4.0),
            FaultClass::ApiServerRestart => rng.random_range(6.0..14.0),
            FaultClass::Throttling => rng.random_range(3.0..8.0),
            FaultClass::Network => rng.random_range(2.0..6.0),
            FaultClass::WatchExpiry => rng.random_range(3.0..8.0),
        };
        let gap = Duration::from_secs_f64(gap);
        if Instant::now() + gap >= until {
            return Ok(());
        }
        tokio::time::sleep(gap).await;
        match class {
            FaultClass::ControllerKill => {
                let drawn = rng.random_range(0..=CONTROLLERS.len());
                // A phase's first kill is of the leading replica: every run measures a takeover.
                let first = world.faults.lock().is_ok_and(|f| {
                    !f.iter()
                        .any(|f| f.phase == phase && f.class == FaultClass::ControllerKill)
                });
                let index = if first { CONTROLLERS.len() } else { drawn };
                let pause = Duration::from_secs_f64(rng.random_range(0.0..5.0));
                if index == CONTROLLERS.len() {
                    let takeover = Replicas::kill_leader(&world.replicas, pause).await?;
                    world.replica_kills.fetch_add(1, Ordering::SeqCst);
                    if let Ok(mut takeovers) = world.takeovers.lock() {
                        takeovers.push(takeover);
                    }
                } else {
                    world.controllers.kill_and_restart(index, pause).await?;
                }
            }
            FaultClass::ApiServerRestart => {
                let plane = world.plane.clone();
                let away = tokio::task::spawn_blocking(move || plane.restart()).await??;
                if let Ok(mut restarts) = world.restarts.lock() {
                    restarts.push(away.as_secs_f64());
                }
            }
            FaultClass::Throttling => {
                let hold = Duration::from_secs_f64(rng.random_range(5.0..12.0));
                world.throttle_for(hold).await?;
            }
            FaultClass::Network => {
                let toxic = Toxic::ALL[rng.random_range(0..Toxic::ALL.len())];
                let hold = Duration::from_secs_f64(rng.random_range(2.0..6.0));
                world.proxy.add(toxic).await?;
                tokio::time::sleep(hold).await;
                world.proxy.remove(toxic).await?;
                if let Ok(mut toxics) = world.toxics.lock() {
                    *toxics.entry(toxic.name()).or_default() += 1;
                }
            }
            FaultClass::WatchExpiry => {
                let hold = Duration::from_secs_f64(rng.random_range(2.0..5.0));
                world.expire_watches(hold).await?;
            }
        }
        if let Ok(mut faults) = world.faults.lock() {
            faults.push(Fault {
                class,
                phase,
                ended: Instant::now(),
            });
        }
    }
}

impl World {
    /// Cuts the controllers off for `hold`, compacts etcd, and lets them back.
    async fn expire_watches(&self, hold: Duration) -> anyhow::Result<()> {
        self.proxy.set_enabled(false).await?;
        tokio::time::sleep(hold).await;
        // An API server restarting meanwhile (all at once) moves etcd to a new URL.
        let compacted = until("compacting etcd", Deadline(Duration::from_secs(60)), || async {
            self.plane.compact_etcd().await.map_err(|e| format!("{e:#}"))
        })
        .await;
        self.proxy.set_enabled(true).await?;
        compacted?;
        Ok(())
    }

    /// Puts the controllers' user under the trickle priority level for `hold`, and counts the
    /// 429s the API server answered meanwhile.
    async fn throttle_for(&self, hold: Duration) -> anyhow::Result<()> {
        let schemas: Api<k8s_openapi::api::flowcontrol::v1::FlowSchema> = Api::all(self.admin.clone());
        let before = self.rejected_so_far().await;
        create_retrying(&schemas, flow_schema()).await?;
        tokio::time::sleep(hold).await;
        until("deleting the FlowSchema", Deadline(Duration::from_secs(60)), || async {
            match schemas.delete(FLOW_SCHEMA, &DeleteParams::default()).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
                Err(err) => Err(err.to_string()),
            }
        })
        .await?;
        let after = self.rejected_so_far().await;
        // An API server restarted meanwhile counts from zero again.
        let rejected = if after >= before { after - before } else { after };
        self.rejected_429.fetch_add(rejected as usize, Ordering::SeqCst);
        Ok(())
    }

    /// `apiserver_flowcontrol_rejected_requests_total` for the controllers' FlowSchema, from
    /// the API server's /metrics (0 when it cannot be read).
    async fn rejected_so_far(&self) -> u64 {
        let Ok(request) = http::Request::get("/metrics").body(Vec::new()) else {
            return 0;
        };
        let Ok(text) = self.admin.request_text(request).await else {
            return 0;
        };
        text.lines()
            .filter(|l| {
                l.starts_with("apiserver_flowcontrol_rejected_requests_total{")
                    && l.contains(&format!("flow_schema=\"{FLOW_SCHEMA}\""))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }
}

impl World {
    /// Checks every invariant on what the API server holds now.
    async fn check_invariants(&self) -> anyhow::Result<Vec<Invariant>> {
        let mut invariants = Vec::new();
        let units = self.units.lock().map(|u| u.clone()).unwrap_or_default();
        let runs: Api<TaskRun> = Api::namespaced(self.admin.clone(), WORKFLOW_NAMESPACE);
        let runs = runs.list(&ListParams::default()).await?.items;
        let pods: Api<Pod> = Api::namespaced(self.admin.clone(), WORKFLOW_NAMESPACE);
        let pods = pods.list(&ListParams::default()).await?.items;
        let mut runs_by_task: BTreeMap<String, Vec<&TaskRun>> = BTreeMap::new();
        for run in &runs {
            runs_by_task
                .entry(run.spec.task_ref.name.clone())
                .or_default()
                .push(run);
        }
        let runs_of = |task: &str| runs_by_task.get(task).cloned().unwrap_or_default();
        let chains: Vec<usize> = units
            .iter()
            .filter(|u| u.kind == UnitKind::Chain)
            .map(|u| u.index)
            .collect();

        // Each firing of a NOW Ignitor ran a-i once.
        let mut fired = invariant("NOW Ignitor firing → exactly one TaskRun of its Task (a-i)");
        // Each success of a-i ran b-i once, with a-i's message as its data.
        let mut handed = invariant("Task success → exactly one TaskRun of its successor (b-i)");
        let mut retried = invariant(&format!(
            "failing Task → one TaskRun, Failed after exactly {} attempts (pods)",
            RETRY_LIMIT + 1
        ));
        for i in &chains {
            fired.checked += 1;
            let a_runs = runs_of(&format!("a-{i}"));
            let by_firing = a_runs
                .iter()
                .filter(|r| initiated_by(r, InitiatorKind::Ignitor, &format!("now-{i}"), Some("1")))
                .count();
            if a_runs.len() != 1 || by_firing != 1 {
                fired
                    .broken
                    .push(format!("a-{i}: {} runs, {by_firing} from firing 1", a_runs.len()));
            }
            handed.checked += 1;
            let b_runs = runs_of(&format!("b-{i}"));
            let a_run = a_runs.first().map(|r| r.name_any());
            let from_a = b_runs
                .iter()
                .filter(|r| initiated_by(r, InitiatorKind::Task, &format!("a-{i}"), a_run.as_deref()))
                .filter(|r| r.spec.data.as_deref() == Some(&format!("a-{i} got [chain {i}]")))
                .count();
            if b_runs.len() != 1 || from_a != 1 {
                let data: Vec<_> = b_runs.iter().map(|r| r.spec.data.clone()).collect();
                handed.broken.push(format!(
                    "b-{i}: {} runs, {from_a} from {a_run:?} with its data; data {data:?}",
                    b_runs.len()
                ));
            }
            retried.checked += 1;
            let r_runs = runs_of(&format!("r-{i}"));
            let attempts: Vec<(Option<TaskRunPhase>, i32, usize)> = r_runs
                .iter()
                .map(|r| {
                    let status = r.status.clone().unwrap_or_default();
                    let pods_of_run = pods
                        .iter()
                        .filter(|p| p.labels().get(TASKRUN_LABEL) == Some(&r.name_any()))
                        .count();
                    (status.phase, status.attempt, pods_of_run)
                })
                .collect();
            if attempts != [(Some(TaskRunPhase::Failed), RETRY_LIMIT, (RETRY_LIMIT + 1) as usize)] {
                retried
                    .broken
                    .push(format!("r-{i}: (phase, last attempt, pods) per run {attempts:?}"));
            }
        }
        invariants.extend([fired, handed, retried]);

        // Every cron firing ran its Task once.
        let ignitor = Api::<Ignitor>::namespaced(self.admin.clone(), WORKFLOW_NAMESPACE)
            .get("every-minute")
            .await?;
        let status = ignitor.status.unwrap_or_default();
        let firings = status.last_ignition.map_or(0, |l| l.sequence);
        let mut cron = invariant(&format!(
            "cron firing → exactly one TaskRun (missed firings reported: {})",
            status.missed_count
        ));
        let cron_runs = runs_of("on-the-minute");
        for sequence in 1..=firings {
            cron.checked += 1;
            let count = cron_runs
                .iter()
                .filter(|r| initiated_by(r, InitiatorKind::Ignitor, "every-minute", Some(&sequence.to_string())))
                .count();
            if count != 1 {
                cron.broken.push(format!("firing {sequence}: {count} runs"));
            }
        }
        if cron_runs.len() as i64 != firings {
            cron.broken
                .push(format!("{} runs for {firings} firings", cron_runs.len()));
        }
        invariants.push(cron);

        invariants.extend(self.check_trees(&units).await?);

        let route_checks = self
            .route_checks
            .lock()
            .map(|c| (c.observed, c.broken.clone()))
            .unwrap_or_default();
        invariants.push(Invariant {
            name: "every HTTPRoute version watched: each rule's weights sum to 100".to_owned(),
            checked: route_checks.0,
            broken: route_checks.1,
        });
        let mut panicked = invariant("no panic in any task; no controller ended by itself");
        panicked.checked = CONTROLLERS.len() + 1;
        panicked
            .broken
            .extend(panics().lock().map(|p| p.clone()).unwrap_or_default());
        panicked.broken.extend(self.replicas.lock().await.panics());
        // A replica that lost its Lease exits to stand by afresh, by design; any other exit
        // is the replica's own failure.
        panicked.broken.extend(
            self.replica_exits
                .lock()
                .map(|e| {
                    e.iter()
                        .filter(|e| !e.contains(LOST_LEASE))
                        .cloned()
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default(),
        );
        panicked.broken.extend(
            self.controllers
                .ended_by_themselves
                .lock()
                .map(|e| e.iter().map(|n| format!("{n} had ended")).collect::<Vec<_>>())
                .unwrap_or_default(),
        );
        invariants.push(panicked);
        let mut replaced = invariant(&format!(
            "a killed leader of {REPLICATED} is replaced within {} s",
            TAKEOVER_LIMIT.as_secs()
        ));
        for takeover in self.takeovers.lock().map(|t| t.clone()).unwrap_or_default() {
            replaced.checked += 1;
            if let Takeover::NotWithin(limit) = takeover {
                replaced.broken.push(format!("still not replaced after {limit:?}"));
            }
        }
        invariants.push(replaced);
        let mut converged = invariant("after the faults: every chain done, every Project Ready and promoted");
        converged.checked = units.len();
        for unit in units.iter().filter(|u| u.converged.is_none()) {
            converged.broken.push(self.describe(unit, &runs, &pods).await);
        }
        invariants.push(converged);
        Ok(invariants)
    }

    /// What a unit that did not converge shows: its Ignitor, Tasks, runs and pods, or its
    /// Project's Ready condition and its pods.
    async fn describe(&self, unit: &Unit, runs: &[TaskRun], pods: &[Pod]) -> String {
        let phase_of = |pod: &Pod| pod.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default();
        match unit.kind {
            UnitKind::Chain => {
                let i = unit.index;
                let ignitor = Api::<Ignitor>::namespaced(self.admin.clone(), WORKFLOW_NAMESPACE)
                    .get_opt(&format!("now-{i}"))
                    .await;
                let fired = ignitor.map(|i| i.and_then(|i| i.status).map(|s| s.ignitions_count));
                let mut out = format!("chain {i}: now-{i} firings {fired:?}");
                for task in [format!("a-{i}"), format!("b-{i}"), format!("r-{i}")] {
                    let task_runs: Vec<String> = runs
                        .iter()
                        .filter(|r| r.spec.task_ref.name == task)
                        .map(|r| {
                            let status = r.status.clone().unwrap_or_default();
                            let run_pods: Vec<String> = pods
                                .iter()
                                .filter(|p| p.labels().get(TASKRUN_LABEL) == Some(&r.name_any()))
                                .map(|p| format!("{} {}", p.name_any(), phase_of(p)))
                                .collect();
                            format!(
                                "{} {:?} attempt {} pods {run_pods:?}",
                                r.name_any(),
                                status.phase,
                                status.attempt
                            )
                        })
                        .collect();
                    out.push_str(&format!("; {task}: {task_runs:?}"));
                }
                out
            }
            UnitKind::Tree => {
                let name = format!("tree-{}", unit.index);
                let ready = match Api::<Project>::all(self.admin.clone()).get_opt(&name).await {
                    Ok(Some(project)) => format!(
                        "{:?}",
                        project
                            .status
                            .as_ref()
                            .and_then(|s| find_condition(&s.conditions, CONDITION_READY))
                            .map(|c| (c.status.clone(), c.message.clone()))
                    ),
                    other => format!("{other:?}"),
                };
                let tree_pods: Vec<String> = Api::<Pod>::namespaced(self.admin.clone(), &name)
                    .list(&ListParams::default())
                    .await
                    .map(|l| {
                        l.items
                            .iter()
                            .map(|p| format!("{} {}", p.name_any(), phase_of(p)))
                            .collect()
                    })
                    .unwrap_or_default();
                format!("{name}: Ready {ready}; pods {tree_pods:?}")
            }
        }
    }

    /// Each tree has exactly its templated objects, and nothing carries the owner label of an
    /// Application that does not exist.
    async fn check_trees(&self, units: &[Unit]) -> anyhow::Result<Vec<Invariant>> {
        let owned = ListParams::default().labels(OWNER_LABEL);
        let deployments = Api::<Deployment>::all(self.admin.clone())
            .list_metadata(&owned)
            .await?
            .items;
        let services = Api::<Service>::all(self.admin.clone())
            .list_metadata(&owned)
            .await?
            .items;
        let routes = Api::<HttpRoute>::all(self.admin.clone())
            .list_metadata(&owned)
            .await?
            .items;
        let applications = Api::<Application>::all(self.admin.clone())
            .list(&ListParams::default())
            .await?
            .items;
        let projects = Api::<Project>::all(self.admin.clone())
            .list(&ListParams::default())
            .await?
            .items;
        let mut exact =
            invariant("tree → exactly its objects (2 Deployments, 3 Services, 1 HTTPRoute per Application)");
        for unit in units.iter().filter(|u| u.kind == UnitKind::Tree) {
            exact.checked += 1;
            let name = format!("tree-{}", unit.index);
            if !projects.iter().any(|p| p.name_any() == name) {
                exact.broken.push(format!("{name}: Project missing"));
                continue;
            }
            let Some(app) = applications
                .iter()
                .find(|a| a.namespace().as_deref() == Some(name.as_str()))
            else {
                exact.broken.push(format!("{name}: Application missing"));
                continue;
            };
            let uid = app.uid().unwrap_or_default();
            let found = (
                names_owned_by(&deployments, &uid),
                names_owned_by(&services, &uid),
                names_owned_by(&routes, &uid),
            );
            let want = (
                set(&["web-v1", "web-v2"]),
                set(&["web-v1", "web-v2", "web"]),
                set(&["web"]),
            );
            if found != want {
                exact.broken.push(format!("{name}: found {found:?}"));
            }
        }
        let application_uids: BTreeSet<String> = applications.iter().filter_map(|a| a.uid()).collect();
        let mut orphans = invariant("no Deployment, Service or HTTPRoute owned by a missing Application");
        let all_owned = deployments
            .iter()
            .map(|d| {
                (
                    "Deployment",
                    d.namespace(),
                    d.name_any(),
                    d.labels().get(OWNER_LABEL).cloned(),
                )
            })
            .chain(services.iter().map(|s| {
                (
                    "Service",
                    s.namespace(),
                    s.name_any(),
                    s.labels().get(OWNER_LABEL).cloned(),
                )
            }))
            .chain(routes.iter().map(|r| {
                (
                    "HTTPRoute",
                    r.namespace(),
                    r.name_any(),
                    r.labels().get(OWNER_LABEL).cloned(),
                )
            }));
        for (kind, namespace, name, owner) in all_owned {
            orphans.checked += 1;
            if !owner.is_some_and(|o| application_uids.contains(&o)) {
                orphans
                    .broken
                    .push(format!("{kind} {}/{name}", namespace.unwrap_or_default()));
            }
        }
        Ok(vec![exact, orphans])
    }

    async fn report(
        &self,
        settings: &Settings,
        phases: &[(usize, Instant, Duration)],
        invariants: Vec<Invariant>,
        converged_after: Duration,
        writes_at_rest: BTreeMap<&'static str, u64>,
        started: Instant,
    ) -> Report {
        let units = self.units.lock().map(|u| u.clone()).unwrap_or_default();
        let faults = self.faults.lock().map(|f| f.clone()).unwrap_or_default();
        let mut figures = Vec::new();
        for (index, start, length) in phases {
            let end = *start + *length;
            let mut phase = PhaseFigures {
                name: PHASES[*index].name.to_owned(),
                length: *length,
                ..PhaseFigures::default()
            };
            for fault in faults.iter().filter(|f| f.phase == *index) {
                *phase.faults.entry(fault.class.label().to_owned()).or_default() += 1;
            }
            for unit in &units {
                if unit.phase == *index && unit.created >= *start {
                    phase.created += 1;
                    if let Some(done) = unit.converged {
                        phase.latencies.push((done - unit.created).as_secs_f64());
                    }
                }
                if unit.converged.is_some_and(|done| done >= *start && done < end) {
                    phase.converged += 1;
                }
            }
            figures.push(phase);
        }
        let mut recovery: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        for fault in &faults {
            // What was in flight when the fault ended: created before, converged after.
            let in_flight = units
                .iter()
                .filter(|u| u.created < fault.ended && u.converged.is_none_or(|done| done > fault.ended));
            let last = in_flight.map(|u| {
                u.converged
                    .map_or(f64::INFINITY, |done| (done - fault.ended).as_secs_f64())
            });
            let seconds = last.fold(0.0, f64::max);
            let key = if PHASES[fault.phase].faults.len() > 1 {
                format!("{} (all at once)", fault.class.label())
            } else {
                fault.class.label().to_owned()
            };
            recovery.entry(key).or_default().push(seconds);
        }
        Report {
            seed: settings.seed,
            invariants,
            phases: figures,
            recovery,
            kills: {
                let mut kills = self.controllers.kills().await;
                kills.insert(REPLICATED, self.replica_kills.load(Ordering::SeqCst));
                kills
            },
            replica_exits: self.replica_exits.lock().map(|e| e.clone()).unwrap_or_default(),
            takeovers: self
                .takeovers
                .lock()
                .map(|t| {
                    t.iter()
                        .filter_map(|t| match t {
                            Takeover::After(took) => Some(took.as_secs_f64()),
                            _ => None,
                        })
                        .collect()
                })
                .unwrap_or_default(),
            restarts: self.restarts.lock().map(|r| r.clone()).unwrap_or_default(),
            rejected_429: self.rejected_429.load(Ordering::SeqCst) as u64,
            toxics: self.toxics.lock().map(|t| t.clone()).unwrap_or_default(),
            expired_watches: self.expired_watches.load(Ordering::SeqCst),
            worst_scheduling_delay: self.worst_delay_ms.load(Ordering::SeqCst) as f64 / 1000.0,
            converged_after,
            writes_at_rest,
            quiet: settings.quiet,
            elapsed: started.elapsed(),
        }
    }
}

fn invariant(name: &str) -> Invariant {
    Invariant {
        name: name.to_owned(),
        checked: 0,
        broken: Vec::new(),
    }
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| (*n).to_owned()).collect()
}

fn names_owned_by<K>(objects: &[kube::core::PartialObjectMeta<K>], uid: &str) -> BTreeSet<String> {
    objects
        .iter()
        .filter(|o| {
            o.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(OWNER_LABEL))
                .map(String::as_str)
                == Some(uid)
        })
        .filter_map(|o| o.metadata.name.clone())
        .collect()
}

fn initiated_by(run: &TaskRun, kind: InitiatorKind, name: &str, sequence: Option<&str>) -> bool {
    run.spec
        .initiator
        .as_ref()
        .is_some_and(|i| i.kind == kind && i.name == name && i.run.as_deref() == sequence)
}
