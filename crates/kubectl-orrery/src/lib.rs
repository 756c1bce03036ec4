//! `kubectl orrery`: what users do to Orrery's resources by hand, each a read or an annotation
//! the controllers already honour, so the plugin needs no controller of its own:
//! - `tree PROJECT`: the Project's hierarchy with each layer's `Ready` state and reason;
//! - `runs TASK`: the Task's TaskRun history with durations and results;
//! - `fire IGNITOR`: fire an Ignitor now (ignitor-scheduler fires it exactly once);
//! - `approve POLICY [STAGE]`: approve a StagedBindingPolicy's gated stage;
//! - `promote` / `abort` / `pause` / `resume APPLICATION`: control an Application's canary.

pub mod render;

use clap::Subcommand;
use crd_types::common::{CONDITION_READY, find_condition};
use crd_types::hierarchy::{
    ABORT_ANNOTATION, Application, Cluster, HierarchyStatus, PAUSE_ANNOTATION, PROMOTE_ANNOTATION, Project,
    VirtualCluster,
};
use crd_types::placement::{APPROVE_ANNOTATION, StagedBindingPolicy};
use crd_types::workflow::{FIRE_ANNOTATION, Ignitor, TASK_LABEL, Task, TaskRun};
use jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;

use crate::render::Node;

/// The plugin's commands.
#[derive(Subcommand, Debug, Clone, PartialEq)]
pub enum Command {
    /// Show a Project's hierarchy (Clusters, VirtualClusters, Applications) with each one's
    /// Ready state and reason.
    Tree { project: String },
    /// List a Task's TaskRuns, oldest first, with durations and results.
    Runs { task: String },
    /// Fire an Ignitor now; the Tasks it starts run once.
    Fire { ignitor: String },
    /// Approve a StagedBindingPolicy's stage that waits for approval (by default the first
    /// gated stage not yet started).
    Approve { policy: String, stage: Option<String> },
    /// Promote an Application's canary now: it becomes the stable version at 100%.
    Promote { application: String },
    /// Abort an Application's canary: all traffic back to the stable version.
    Abort { application: String },
    /// Pause an Application's policy pipeline: the traffic in force stays.
    Pause { application: String },
    /// Resume a paused policy pipeline.
    Resume { application: String },
}

/// Runs `command` in `namespace` (for the namespaced kinds) and returns what to print.
pub async fn execute(client: Client, namespace: &str, command: &Command) -> anyhow::Result<String> {
    let now = Timestamp::now();
    match command {
        Command::Tree { project } => tree(client, project, now).await,
        Command::Runs { task } => runs(client, namespace, task, now).await,
        Command::Fire { ignitor } => fire(client, namespace, ignitor, now).await,
        Command::Approve { policy, stage } => approve(client, policy, stage.as_deref()).await,
        Command::Promote { application } => control(client, namespace, application, PROMOTE_CANARY, now).await,
        Command::Abort { application } => control(client, namespace, application, ABORT_CANARY, now).await,
        Command::Pause { application } => pause(client, namespace, application, true).await,
        Command::Resume { application } => pause(client, namespace, application, false).await,
    }
}

async fn tree(client: Client, project: &str, now: Timestamp) -> anyhow::Result<String> {
    let root = get(&Api::<Project>::all(client.clone()), project, "").await?;
    let clusters = Api::<Cluster>::all(client.clone()).list(&ListParams::default()).await?;
    let virtual_clusters = Api::<VirtualCluster>::all(client.clone())
        .list(&ListParams::default())
        .await?;
    let applications = Api::<Application>::all(client).list(&ListParams::default()).await?;

    let app_nodes = |vc: &str| {
        children(
            &applications.items,
            vc,
            |a| a.spec.virtual_cluster.as_deref(),
            |a| (a.status.as_ref().map(|s| &s.common), vec![]),
        )
    };
    let vc_nodes = |cluster: &str| {
        children(
            &virtual_clusters.items,
            cluster,
            |v| v.spec.cluster.as_deref(),
            |v| (v.status.as_ref().map(|s| &s.common), app_nodes(&v.name_any())),
        )
    };
    let cluster_nodes = children(
        &clusters.items,
        project,
        |c| c.spec.project.as_deref(),
        |c| (c.status.as_ref().map(|s| &s.common), vc_nodes(&c.name_any())),
    );
    Ok(render::tree(&node(&root, root.status.as_ref(), cluster_nodes), now))
}

/// The nodes of `items` whose parent is `parent`, by namespace and name; `expand` gives each
/// one's status and child nodes.
fn children<K>(
    items: &[K],
    parent: &str,
    parent_of: impl Fn(&K) -> Option<&str>,
    expand: impl Fn(&K) -> (Option<&HierarchyStatus>, Vec<Node>),
) -> Vec<Node>
where
    K: Resource<DynamicType = ()>,
{
    let mut chosen: Vec<&K> = items.iter().filter(|i| parent_of(i) == Some(parent)).collect();
    chosen.sort_by_key(|i| (i.meta().namespace.clone(), i.meta().name.clone()));
    chosen
        .into_iter()
        .map(|i| {
            let (status, grandchildren) = expand(i);
            node(i, status, grandchildren)
        })
        .collect()
}

fn node<K>(object: &K, status: Option<&HierarchyStatus>, children: Vec<Node>) -> Node
where
    K: Resource<DynamicType = ()>,
{
    Node {
        kind: K::kind(&()).into_owned(),
        namespace: object.meta().namespace.clone(),
        name: object.meta().name.clone().unwrap_or_default(),
        ready: status
            .and_then(|s| find_condition(&s.conditions, CONDITION_READY))
            .cloned(),
        created: object.meta().creation_timestamp.as_ref().map(|t| t.0),
        children,
    }
}

async fn runs(client: Client, namespace: &str, task: &str, now: Timestamp) -> anyhow::Result<String> {
    get(&Api::<Task>::namespaced(client.clone(), namespace), task, namespace).await?;
    let runs = Api::<TaskRun>::namespaced(client, namespace)
        .list(&ListParams::default().labels(&format!("{TASK_LABEL}={task}")))
        .await?;
    Ok(render::runs(task, &runs.items, now))
}

async fn fire(client: Client, namespace: &str, name: &str, now: Timestamp) -> anyhow::Result<String> {
    let api = Api::<Ignitor>::namespaced(client, namespace);
    let ignitor = get(&api, name, namespace).await?;
    let token = now.to_string();
    annotate(&api, name, FIRE_ANNOTATION, Some(&token)).await?;
    let last = match ignitor.status.and_then(|s| s.last_ignition) {
        Some(last) => format!("its last firing was #{} at {}", last.sequence, last.time.0),
        None => "it has not fired before".into(),
    };
    Ok(format!(
        "ignitor/{name} fire requested ({FIRE_ANNOTATION}={token}); {last}; \
         watch it with: kubectl get ignitor {name} -n {namespace} -w\n"
    ))
}

async fn approve(client: Client, name: &str, stage: Option<&str>) -> anyhow::Result<String> {
    let api = Api::<StagedBindingPolicy>::all(client);
    let policy = get(&api, name, "").await?;
    let started = |stage: &str| {
        policy
            .status
            .as_ref()
            .is_some_and(|s| s.history.iter().any(|h| h.name == stage && h.started.is_some()))
    };
    let stage = match stage {
        Some(stage) => {
            let Some(found) = policy.spec.stages.iter().find(|s| s.name == stage) else {
                let names: Vec<&str> = policy.spec.stages.iter().map(|s| s.name.as_str()).collect();
                anyhow::bail!(
                    "stagedbindingpolicy/{name} has no stage {stage:?}; its stages are {}",
                    names.join(", ")
                );
            };
            if found.require_approval != Some(true) {
                anyhow::bail!("stage {stage:?} of stagedbindingpolicy/{name} does not require approval");
            }
            if started(stage) {
                anyhow::bail!("stage {stage:?} of stagedbindingpolicy/{name} has already started");
            }
            stage.to_owned()
        }
        None => policy
            .spec
            .stages
            .iter()
            .find(|s| s.require_approval == Some(true) && !started(&s.name))
            .map(|s| s.name.clone())
            .ok_or_else(|| anyhow::anyhow!("stagedbindingpolicy/{name} has no stage waiting for approval"))?,
    };
    annotate(&api, name, APPROVE_ANNOTATION, Some(&stage)).await?;
    Ok(format!(
        "stagedbindingpolicy/{name}: stage {stage:?} approved ({APPROVE_ANNOTATION}={stage}); \
         it starts once the stages before it are fulfilled\n"
    ))
}

/// Promote and abort: an annotation whose value is a fresh token, each honoured once.
struct Control {
    verb: &'static str,
    annotation: &'static str,
    effect: &'static str,
}

const PROMOTE_CANARY: Control = Control {
    verb: "promote",
    annotation: PROMOTE_ANNOTATION,
    effect: "the canary becomes the stable version at 100%",
};
const ABORT_CANARY: Control = Control {
    verb: "abort",
    annotation: ABORT_ANNOTATION,
    effect: "all traffic goes back to the stable version",
};

async fn control(
    client: Client,
    namespace: &str,
    name: &str,
    control: Control,
    now: Timestamp,
) -> anyhow::Result<String> {
    let api = Api::<Application>::namespaced(client, namespace);
    let app = with_policies(&api, name, namespace).await?;
    let token = now.to_string();
    annotate(&api, name, control.annotation, Some(&token)).await?;
    let weights = app.status.map(|s| s.weights).unwrap_or_default();
    Ok(format!(
        "application/{name}: {} requested ({}={token}): {}; weights in force now: {}\n",
        control.verb,
        control.annotation,
        control.effect,
        render::weights(&weights)
    ))
}

async fn pause(client: Client, namespace: &str, name: &str, pause: bool) -> anyhow::Result<String> {
    let api = Api::<Application>::namespaced(client, namespace);
    let app = with_policies(&api, name, namespace).await?;
    let paused = app.annotations().get(PAUSE_ANNOTATION).is_some_and(|v| v != "false");
    if paused == pause {
        let state = if pause { "already paused" } else { "not paused" };
        return Ok(format!("application/{name} is {state}: nothing to do\n"));
    }
    annotate(&api, name, PAUSE_ANNOTATION, pause.then_some("true")).await?;
    Ok(if pause {
        format!("application/{name} paused ({PAUSE_ANNOTATION}=true): the traffic in force stays until resumed\n")
    } else {
        format!("application/{name} resumed ({PAUSE_ANNOTATION} removed): its policies run again\n")
    })
}

async fn with_policies(api: &Api<Application>, name: &str, namespace: &str) -> anyhow::Result<Application> {
    let app = get(api, name, namespace).await?;
    if app.spec.policies.is_empty() {
        anyhow::bail!(
            "application/{name} has no policies, so there is no canary to control; \
             add one to spec.policies, e.g. [{{name: canary}}]"
        );
    }
    Ok(app)
}

/// Reads `name`, turning "not found" into an error that says where it looked.
async fn get<K>(api: &Api<K>, name: &str, namespace: &str) -> anyhow::Result<K>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.get(name).await {
        Ok(object) => Ok(object),
        Err(kube::Error::Api(status)) if status.code == 404 => {
            let kind = K::kind(&()).to_lowercase();
            let plural = K::plural(&());
            if namespace.is_empty() {
                anyhow::bail!("no {kind} named {name:?}; list them with: kubectl get {plural}")
            } else {
                anyhow::bail!(
                    "no {kind} named {name:?} in namespace {namespace:?}; list them with: kubectl get {plural} -n {namespace} (or pass -n)"
                )
            }
        }
        Err(err) => Err(err.into()),
    }
}

/// Sets (or with `None` removes) one annotation.
async fn annotate<K>(api: &Api<K>, name: &str, key: &str, value: Option<&str>) -> anyhow::Result<()>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let patch = json!({"metadata": {"annotations": {key: value}}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
    Ok(())
}
