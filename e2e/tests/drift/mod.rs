//! What the drift tests share: the tree they build, every kind of object hierarchy-executor
//! makes for it, and how each is spoiled and recognised as restored.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::runtime::{WatchStreamExt, watcher};

use crd_types::hierarchy::{Application, Cluster, HierarchyStatus, VirtualCluster};
use gateway_api::httproutes::HttpRoute;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{LimitRange, Namespace, ResourceQuota, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::api::{ApiResource, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::{Api, Client, Resource};
use orrery_e2e::{Deadline, InProcess, TestEnv, create, poll_until, wait_gone, wait_ready};
use serde_json::{Value, json};

/// The executor watches cluster-scoped kinds across the whole control plane: the tests of
/// this file take turns.
pub static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One object the executor made, how to spoil it, and how to tell it is back.
struct Made {
    resource: ApiResource,
    namespaced: bool,
    name: String,
    /// A strategic merge patch changing a field the executor sets.
    edit: Value,
    /// The field the edit changes, as the repair names it.
    changed: &'static str,
    /// A JSON pointer into the object and the value the executor gives it.
    pointer: &'static str,
    expected: Value,
}

fn made<K: Resource<DynamicType = ()>>(
    name: &str,
    edit: Value,
    changed: &'static str,
    (pointer, expected): (&'static str, Value),
) -> Made {
    Made {
        resource: ApiResource::erase::<K>(&()),
        namespaced: K::kind(&()) != "Namespace",
        name: name.into(),
        edit,
        changed,
        pointer,
        expected,
    }
}

/// Every kind the executor makes for the tree below, in namespace `team`.
fn everything(team: &str) -> Vec<Made> {
    let binding = hierarchy_executor::plan::virtual_cluster::role_binding_name("view", "User", "alice");
    vec![
        made::<Namespace>(
            team,
            json!({"metadata": {"labels": {"app.kubernetes.io/managed-by": "someone"}}}),
            "metadata.labels.app.kubernetes.io/managed-by",
            ("/metadata/labels/app.kubernetes.io~1managed-by", json!("orrery")),
        ),
        made::<ResourceQuota>(
            "orrery-quota",
            json!({"spec": {"hard": {"pods": "100"}}}),
            "spec.hard.pods",
            ("/spec/hard/pods", json!("10")),
        ),
        made::<LimitRange>(
            "orrery-limits",
            json!({"spec": {"limits": [{"type": "Container", "default": {"cpu": "2"}}]}}),
            "spec.limits.0.default.cpu",
            ("/spec/limits/0/default/cpu", json!("500m")),
        ),
        made::<NetworkPolicy>(
            "orrery-default-deny",
            json!({"spec": {"ingress": null}}),
            "spec.ingress",
            ("/spec/ingress/0/from/0/podSelector", json!({})),
        ),
        made::<RoleBinding>(
            &binding,
            json!({"subjects": [{"kind": "User", "name": "mallory", "apiGroup": "rbac.authorization.k8s.io"}]}),
            "subjects.0.name",
            ("/subjects/0/name", json!("alice")),
        ),
        made::<Deployment>(
            "shop-v1",
            json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "evil:1"}]}}}}),
            "spec.template.spec.containers.0.image",
            ("/spec/template/spec/containers/0/image", json!("shop:1")),
        ),
        made::<Service>(
            "shop-v1",
            json!({"spec": {"selector": {"hierarchy.orrery.dev/version": "v9"}}}),
            "spec.selector.hierarchy.orrery.dev/version",
            ("/spec/selector/hierarchy.orrery.dev~1version", json!("v1")),
        ),
        made::<HttpRoute>(
            "shop",
            json!({"spec": {"parentRefs": [{"name": "elsewhere"}]}}),
            "spec.parentRefs.0.name",
            ("/spec/parentRefs/0/name", json!("public")),
        ),
    ]
}

impl Made {
    fn api(&self, client: &Client, team: &str) -> Api<DynamicObject> {
        if self.namespaced {
            Api::namespaced_with(client.clone(), team, &self.resource)
        } else {
            Api::all_with(client.clone(), &self.resource)
        }
    }

    fn describe(&self, what: &str) -> String {
        format!("{} {} ({what})", self.resource.kind, self.name)
    }

    async fn delete(&self, client: &Client, team: &str) {
        self.api(client, team)
            .delete(&self.name, &DeleteParams::default())
            .await
            .unwrap_or_else(|e| panic!("deleting {}: {e}", self.describe("")));
    }

    async fn spoil(&self, client: &Client, team: &str) {
        // Strategic merge for built-in kinds; JSON merge for the route (a custom resource).
        let patch = if self.resource.group == "gateway.networking.k8s.io" {
            Patch::Merge(&self.edit)
        } else {
            Patch::Strategic(&self.edit)
        };
        self.api(client, team)
            .patch(&self.name, &PatchParams::default(), &patch)
            .await
            .unwrap_or_else(|e| panic!("editing {}: {e}", self.describe("")));
    }

    /// Whether it is there with the executor's value (and not being deleted).
    async fn restored(&self, client: &Client, team: &str) -> Result<(), String> {
        let object = self
            .api(client, team)
            .get_opt(&self.name)
            .await
            .map_err(|e| e.to_string())?;
        let Some(object) = object.filter(|o| o.metadata.deletion_timestamp.is_none()) else {
            return Err(format!("{} is not there", self.describe("")));
        };
        let value = serde_json::to_value(&object).unwrap();
        match value.pointer(self.pointer) {
            Some(found) if *found == self.expected => Ok(()),
            found => Err(format!("{}: {} is {found:?}", self.describe(""), self.pointer)),
        }
    }
}

/// The tree: a Cluster (this one, or the remote one `kubeconfig` reaches), a VirtualCluster
/// with every guardrail and one access entry, an Application with one version and a route.
async fn build(env: &TestEnv, kubeconfig: Option<String>) -> (String, String) {
    let name = env.namespace.clone();
    let (cluster, vc, team) = (format!("{name}-cluster"), format!("{name}-vc"), format!("{name}-team"));
    let mut cluster_spec = json!({"executor": {"name": "default", "parameters": {"installGatewayAPI": true}}});
    if let Some(kubeconfig) = kubeconfig {
        create::<Secret>(
            &env.namespaced(),
            json!({"metadata": {"name": "remote"}, "stringData": {"kubeconfig": kubeconfig}}),
        )
        .await;
        cluster_spec["kubeconfigSecretRef"] = json!({"name": "remote", "namespace": name, "key": "kubeconfig"});
    }
    let clusters: Api<Cluster> = Api::all(env.client.clone());
    create(&clusters, json!({"metadata": {"name": cluster}, "spec": cluster_spec})).await;
    let vcs: Api<VirtualCluster> = Api::all(env.client.clone());
    create(
        &vcs,
        json!({"metadata": {"name": vc},
               "spec": {"cluster": cluster, "namespace": team, "quota": {"pods": "10"},
                        "limits": {"defaultLimit": {"cpu": "500m"}}, "networkIsolation": true,
                        "access": [{"kind": "User", "name": "alice", "role": "view"}],
                        "applicationNamespaces": [name]}}),
    )
    .await;
    let apps: Api<Application> = env.namespaced();
    create(
        &apps,
        json!({"metadata": {"name": "shop"},
               "spec": {"virtualCluster": vc, "versions": [{"name": "v1", "image": "shop:1"}],
                        "route": {"gateway": "public"}}}),
    )
    .await;
    wait_ready(&apps, "shop").await;
    wait_ready(&vcs, &vc).await;
    (vc, team)
}

/// Every `status.lastRepair` message the tree's VirtualCluster and Application ever show,
/// from a watch of each: a poll could miss one that a later repair replaced at once.
struct RepairLog {
    seen: Arc<std::sync::Mutex<Vec<String>>>,
    watches: Vec<tokio::task::JoinHandle<()>>,
}

impl RepairLog {
    /// Watches the tree's VirtualCluster `vc` and its Application, once both are seen.
    async fn start(env: &TestEnv, vc: &str) -> Self {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let listed = Arc::new(AtomicUsize::new(0));
        let named = |name: &str| watcher::Config::default().fields(&format!("metadata.name={name}"));
        let watches = vec![
            tokio::spawn(record(
                Api::<VirtualCluster>::all(env.client.clone()),
                named(vc),
                |v: &VirtualCluster| v.status.as_ref().map(|s| &s.common).cloned(),
                (seen.clone(), listed.clone()),
            )),
            tokio::spawn(record(
                env.namespaced::<Application>(),
                named("shop"),
                |a: &Application| a.status.as_ref().map(|s| &s.common).cloned(),
                (seen.clone(), listed.clone()),
            )),
        ];
        poll_until(
            "the repair watches started",
            Deadline(Duration::from_secs(30)),
            || async {
                match listed.load(Ordering::SeqCst) {
                    2 => Ok(()),
                    n => Err(format!("{n} of 2 listed")),
                }
            },
        )
        .await;
        RepairLog { seen, watches }
    }

    /// Whether a repair reported so far mentions `what`; if not, the last report.
    fn reported(&self, what: &str) -> Result<(), String> {
        let seen = self.seen.lock().unwrap();
        if seen.iter().any(|r| r.contains(what)) {
            Ok(())
        } else {
            Err(format!("status.lastRepair said {:?}", seen.last()))
        }
    }
}

impl Drop for RepairLog {
    fn drop(&mut self) {
        for watch in &self.watches {
            watch.abort();
        }
    }
}

async fn record<K>(
    api: Api<K>,
    config: watcher::Config,
    status: fn(&K) -> Option<HierarchyStatus>,
    (seen, listed): (Arc<std::sync::Mutex<Vec<String>>>, Arc<AtomicUsize>),
) where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let mut objects = std::pin::pin!(watcher(api, config).default_backoff().applied_objects());
    let mut first = true;
    while let Some(object) = objects.next().await {
        let Ok(object) = object else { continue };
        if std::mem::take(&mut first) {
            listed.fetch_add(1, Ordering::SeqCst);
        }
        if let Some(message) = status(&object).and_then(|s| s.last_repair).map(|r| r.message) {
            let mut seen = seen.lock().unwrap();
            if seen.last() != Some(&message) {
                seen.push(message);
            }
        }
    }
}

/// Spoils every object in `objects` with `spoil` at once, then waits until each is restored
/// and its owner has reported `what` about it; prints how long that took.
async fn spoil_all_and_await_repair(
    env: &TestEnv,
    target: &Client,
    (vc, team): (&str, &str),
    objects: &[&Made],
    what: &str,
    deadline: Deadline,
) {
    let started = Instant::now();
    // Repairs found by different reconciles are reported one after the other: every report
    // shown while waiting counts.
    let reports = RepairLog::start(env, vc).await;
    for object in objects {
        match what {
            "deleted" => object.delete(target, team).await,
            _ => object.spoil(target, team).await,
        }
    }
    for object in objects {
        let expected = match what {
            "deleted" => object.describe("deleted"),
            _ => object.describe(&format!("{} changed", object.changed)),
        };
        poll_until(&format!("{expected} repaired"), deadline, || async {
            object.restored(target, team).await?;
            reports.reported(&expected)
        })
        .await;
    }
    println!(
        "{} object(s) {what}: all restored and reported in {:.1?}",
        objects.len(),
        started.elapsed()
    );
}

pub async fn deleted_and_edited_objects_come_back(env: &TestEnv, target: &Client, kubeconfig: Option<String>) {
    let executor = InProcess::start_cluster_wide(
        env.client.clone(),
        hierarchy_executor::controller::NAME,
        hierarchy_executor::run,
    );
    let remote = kubeconfig.is_some();
    let (vc, team) = build(env, kubeconfig).await;
    let objects = everything(&team);
    // On a remote cluster no watch reaches: a repair waits for the 15 s recheck.
    let deadline = Deadline(Duration::from_secs(if remote { 90 } else { 30 }));
    let (namespace, inside) = objects.split_first().unwrap();
    let inside: Vec<&Made> = inside.iter().collect();
    if remote {
        // All at once: one recheck finds them all.
        spoil_all_and_await_repair(env, target, (&vc, &team), &inside, "deleted", deadline).await;
        let all: Vec<&Made> = objects.iter().collect();
        spoil_all_and_await_repair(env, target, (&vc, &team), &all, "edited", deadline).await;
    } else {
        // One by one: each is repaired as soon as its watch sees it.
        for object in &inside {
            spoil_all_and_await_repair(env, target, (&vc, &team), &[object], "deleted", deadline).await;
        }
        for object in &objects {
            spoil_all_and_await_repair(env, target, (&vc, &team), &[object], "edited", deadline).await;
        }
    }
    // The namespace itself, with everything in it: all of it is made again once it is gone.
    let everything_again: Vec<&Made> = objects.iter().collect();
    namespace.delete(target, &team).await;
    let started = Instant::now();
    poll_until(
        "everything in the deleted namespace made again",
        Deadline(Duration::from_secs(90)),
        || async {
            for object in &everything_again {
                object.restored(target, &team).await?;
            }
            Ok(())
        },
    )
    .await;
    println!(
        "namespace deleted: it and its objects made again in {:.1?}",
        started.elapsed()
    );
    wait_ready(&env.namespaced::<Application>(), "shop").await;

    let apps: Api<Application> = env.namespaced();
    apps.delete("shop", &DeleteParams::default()).await.unwrap();
    wait_gone(&apps, "shop").await;
    let vcs: Api<VirtualCluster> = Api::all(env.client.clone());
    vcs.delete(&vc, &DeleteParams::default()).await.unwrap();
    wait_gone(&vcs, &vc).await;
    let clusters: Api<Cluster> = Api::all(env.client.clone());
    let cluster = format!("{}-cluster", env.namespace);
    clusters.delete(&cluster, &DeleteParams::default()).await.unwrap();
    wait_gone(&clusters, &cluster).await;
    executor.stop().await;
}
