//! The figures of a run, and the tables they are printed as.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::replicas::Takeover;

use super::*;

/// How many of the slowest pieces of work the report names.
const SLOWEST_SHOWN: usize = 5;

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
    /// The work that took longest to converge, slowest first, described.
    pub slowest: Vec<String>,
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
        println!("slowest work (seconds from the run's start):");
        for slow in &self.slowest {
            println!("    {slow}");
        }
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
pub(super) fn percentile(samples: &[f64], q: f64) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}
impl World {
    pub(super) async fn report(
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
        let mut slowest: Vec<(Duration, &Unit)> = units
            .iter()
            .map(|u| (u.converged.unwrap_or_else(Instant::now) - u.created, u))
            .collect();
        slowest.sort_by_key(|(took, _)| std::cmp::Reverse(*took));
        let slowest = slowest
            .iter()
            .take(SLOWEST_SHOWN)
            .map(|(took, u)| {
                format!(
                    "{:?} {} created at {:.0} s (in {}): {}",
                    u.kind,
                    u.index,
                    (u.created - started).as_secs_f64(),
                    PHASES[u.phase].name,
                    match u.converged {
                        Some(_) => format!("converged after {:.1} s", took.as_secs_f64()),
                        None => "never converged".to_owned(),
                    }
                )
            })
            .collect();
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
                        .filter_map(|(_, t)| match t {
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
            slowest,
            worst_scheduling_delay: self.worst_delay_ms.load(Ordering::SeqCst) as f64 / 1000.0,
            converged_after,
            writes_at_rest,
            quiet: settings.quiet,
            elapsed: started.elapsed(),
        }
    }
}
