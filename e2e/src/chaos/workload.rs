//! The workload: what a run creates, and the watches that follow it to convergence.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crd_types::common::{CONDITION_READY, find_condition};
use crd_types::hierarchy::{Application, Project};
use crd_types::workflow::{Ignitor, Task, TaskRun, TaskRunPhase};
use futures::StreamExt;
use gateway_api::httproutes::HttpRoute;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::{Value, json};

use crate::pod_simulator::{self};
use crate::{Deadline, until};

use super::*;

/// The namespace of the chains, and the cron Ignitor with its Task.
pub(super) async fn create_workload_base(admin: &Client) -> anyhow::Result<()> {
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
pub(super) fn task(name: &str, triggers: Value, outcome: &str) -> Value {
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
pub(super) async fn create_retrying<K>(api: &Api<K>, object: Value) -> anyhow::Result<()>
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

pub(super) async fn suspend_cron(admin: &Client) -> anyhow::Result<()> {
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
pub(super) async fn generate_workload(world: Arc<World>, settings: Settings) -> anyhow::Result<()> {
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
    pub(super) fn add_unit(&self, kind: UnitKind, index: usize) {
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
    pub(super) async fn create_chain(&self, i: usize) -> anyhow::Result<()> {
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
    pub(super) async fn create_tree(&self, j: usize) -> anyhow::Result<()> {
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
    pub(super) async fn wait_converged(&self, stores: &Stores, limit: Duration) -> anyhow::Result<()> {
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
    pub(super) fn mark_converged(&self, stores: &Stores) -> Vec<String> {
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
    pub(super) async fn writes(&self) -> BTreeMap<&'static str, u64> {
        let mut writes = self.controllers.writes().await;
        writes.insert(REPLICATED, self.replicas.lock().await.writes().await);
        writes
    }

    /// What each tree not converged has on the API server: each level's `Ready` condition and
    /// whether its namespace exists, to tell where it stopped.
    pub(super) async fn describe_stuck_trees(&self) -> Vec<String> {
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
    pub(super) async fn writes_at_rest(&self, quiet: Duration) -> BTreeMap<&'static str, u64> {
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
pub(super) struct Stores {
    task_runs: Store<TaskRun>,
    projects: Store<Project>,
    applications: Store<Application>,
}

impl Stores {
    pub(super) fn start(admin: &Client) -> Self {
        Stores {
            task_runs: reflect(Api::namespaced(admin.clone(), WORKFLOW_NAMESPACE)),
            projects: reflect(Api::all(admin.clone())),
            applications: reflect(Api::all(admin.clone())),
        }
    }

    pub(super) fn runs_of(&self, task: &str) -> Vec<Arc<TaskRun>> {
        self.task_runs
            .state()
            .into_iter()
            .filter(|r| r.spec.task_ref.name == task)
            .collect()
    }

    pub(super) fn has_run(&self, task: &str, phase: TaskRunPhase) -> Result<(), String> {
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

    pub(super) fn chain_done(&self, i: usize) -> Result<(), String> {
        self.has_run(&format!("a-{i}"), TaskRunPhase::Succeeded)?;
        self.has_run(&format!("b-{i}"), TaskRunPhase::Succeeded)?;
        self.has_run(&format!("r-{i}"), TaskRunPhase::Failed)
    }

    pub(super) fn tree_done(&self, j: usize) -> Result<(), String> {
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

pub(super) fn reflect<K>(api: Api<K>) -> Store<K>
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
pub(super) async fn track_convergence(world: Arc<World>, stores: Stores) {
    loop {
        world.mark_converged(&stores);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Watches every HTTPRoute for the whole run and checks each version of each: every rule's
/// backend weights sum to 100.
pub(super) async fn watch_routes(world: Arc<World>) {
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
pub(super) async fn count_expired_watches(world: Arc<World>, through_proxy: Client) {
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
/// Wakes every 100 ms and records how late it woke: a task's wait to be run.
pub(super) async fn heartbeat(world: Arc<World>) {
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
