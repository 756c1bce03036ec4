//! What must hold once a run is over, checked on what the API server holds.

use std::collections::{BTreeMap, BTreeSet};

use crd_types::common::{CONDITION_READY, find_condition};
use crd_types::hierarchy::{Application, OWNER_LABEL, Project};
use crd_types::workflow::{Ignitor, InitiatorKind, TASKRUN_LABEL, TaskRun, TaskRunPhase};
use gateway_api::httproutes::HttpRoute;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::ListParams;
use kube::{Api, ResourceExt};

use crate::replicas::{TAKEOVER_LIMIT, Takeover};

use super::*;

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
impl World {
    /// Checks every invariant on what the API server holds now.
    pub(super) async fn check_invariants(&self) -> anyhow::Result<Vec<Invariant>> {
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
        for (phase, takeover) in self.takeovers.lock().map(|t| t.clone()).unwrap_or_default() {
            replaced.checked += 1;
            if let Takeover::NotWithin(limit) = takeover {
                let phase = PHASES[phase].name;
                replaced
                    .broken
                    .push(format!("killed in phase {phase}, still not replaced after {limit:?}"));
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
    pub(super) async fn describe(&self, unit: &Unit, runs: &[TaskRun], pods: &[Pod]) -> String {
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
    pub(super) async fn check_trees(&self, units: &[Unit]) -> anyhow::Result<Vec<Invariant>> {
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
}

pub(super) fn invariant(name: &str) -> Invariant {
    Invariant {
        name: name.to_owned(),
        checked: 0,
        broken: Vec::new(),
    }
}

pub(super) fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| (*n).to_owned()).collect()
}

pub(super) fn names_owned_by<K>(objects: &[kube::core::PartialObjectMeta<K>], uid: &str) -> BTreeSet<String> {
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

pub(super) fn initiated_by(run: &TaskRun, kind: InitiatorKind, name: &str, sequence: Option<&str>) -> bool {
    run.spec
        .initiator
        .as_ref()
        .is_some_and(|i| i.kind == kind && i.name == name && i.run.as_deref() == sequence)
}
