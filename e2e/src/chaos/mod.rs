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
//!
//! Its parts: `controllers` (the controllers under test, killed and started again), `faults`
//! (each fault class and its injection), `workload` (what the run creates and how it waits
//! for it), `invariants` (what must hold at the end) and `report` (the figures).

mod controllers;
mod faults;
mod invariants;
mod report;
mod workload;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use kube::{Api, Client};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::ControlPlane;
use crate::fault_proxy::FaultProxy;
use crate::pod_simulator::PodSimulator;
use crate::replicas::{Replicas, Takeover, kubeconfig_through};

use self::controllers::*;
pub use self::faults::FaultClass;
use self::faults::*;
pub use self::invariants::Invariant;
pub use self::report::{PhaseFigures, Report};
use self::workload::*;

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
    /// Each leader kill's takeover, with the phase it was killed in.
    takeovers: Mutex<Vec<(usize, Takeover)>>,
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
    kubeconfig_through(
        &plane.kubeconfig_path(),
        &proxy.url(),
        Some(CONTROLLER_USER),
        &kubeconfig,
    )?;
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
