//! Arbitrary JSON as Orrery's resources, through every controller's pure planning: Tasks and
//! TaskRuns (task-workflow), Ignitors (ignitor-scheduler), StagedBindingPolicies
//! (staged-binding), Projects, Clusters, VirtualClusters and Applications (hierarchy-executor's
//! plans and policy-runner's pipelines). Nothing may panic or run for long.
//!
//! Input: one JSON manifest, an array of them, or a `List` (`{"items": [...]}`, with an
//! optional `"now"`: seconds from 2026-01-01T00:00:00Z). The manifests form one world: a Task
//! sees the TaskRuns and Ignitors beside it, a StagedBindingPolicy the BindingPolicies, and so on.

#![no_main]

use std::collections::BTreeMap;

use crd_types::hierarchy::{Application, Cluster, Project, VirtualCluster};
use crd_types::kubestellar::{Binding, BindingPolicy, CombinedStatus};
use crd_types::placement::StagedBindingPolicy;
use crd_types::workflow::{FIRE_ANNOTATION, Ignitor, Task, TaskRun};
use hierarchy_executor::plan::{application, project, tenancy, virtual_cluster};
use hierarchy_executor::registry::Kind;
use jiff::Timestamp;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::ResourceExt;
use libfuzzer_sys::fuzz_target;
use policy_runner::pipeline::{self, Outside};
use policy_runner::policy::{Answer, Request};
use serde::de::DeserializeOwned;
use serde_json::Value;

const EPOCH: i64 = 1_767_225_600; // 2026-01-01T00:00:00Z

/// The outside world of policy-runner: every fetch gets the same answer.
struct Fixed(Answer);

impl Outside for Fixed {
    async fn fetch(&self, _request: Request) -> Answer {
        self.0.clone()
    }
}

#[derive(Default)]
struct World {
    tasks: Vec<Task>,
    runs: Vec<TaskRun>,
    ignitors: Vec<Ignitor>,
    pods: Vec<Pod>,
    staged: Vec<StagedBindingPolicy>,
    binding_policies: Vec<BindingPolicy>,
    bindings: Vec<Binding>,
    combined: Vec<CombinedStatus>,
    projects: Vec<Project>,
    clusters: Vec<Cluster>,
    virtual_clusters: Vec<VirtualCluster>,
    applications: Vec<Application>,
    deployments: Vec<Deployment>,
    namespaces: Vec<Namespace>,
    answer: Option<Value>,
}

fn push<K: DeserializeOwned>(into: &mut Vec<K>, value: &Value) {
    if let Ok(object) = K::deserialize(value) {
        into.push(object);
    }
}

impl World {
    fn add(&mut self, value: &Value) {
        // The kind picks the type, as the API server's path would; without one every type
        // is tried, so the fuzzer need not guess kinds.
        match value.get("kind").and_then(Value::as_str) {
            Some("Task") => push(&mut self.tasks, value),
            Some("TaskRun") => push(&mut self.runs, value),
            Some("Ignitor") => push(&mut self.ignitors, value),
            Some("Pod") => push(&mut self.pods, value),
            Some("StagedBindingPolicy") => push(&mut self.staged, value),
            Some("BindingPolicy") => push(&mut self.binding_policies, value),
            Some("Binding") => push(&mut self.bindings, value),
            Some("CombinedStatus") => push(&mut self.combined, value),
            Some("Project") => push(&mut self.projects, value),
            Some("Cluster") => push(&mut self.clusters, value),
            Some("VirtualCluster") => push(&mut self.virtual_clusters, value),
            Some("Application") => push(&mut self.applications, value),
            Some("Deployment") => push(&mut self.deployments, value),
            Some("Namespace") => push(&mut self.namespaces, value),
            Some("Answer") => self.answer = value.get("value").cloned(),
            Some(_) => {}
            None => {
                push(&mut self.tasks, value);
                push(&mut self.runs, value);
                push(&mut self.ignitors, value);
                push(&mut self.staged, value);
                push(&mut self.projects, value);
                push(&mut self.clusters, value);
                push(&mut self.virtual_clusters, value);
                push(&mut self.applications, value);
            }
        }
    }
}

fn workflow(world: &World, now: Timestamp) {
    let known = task_workflow::actions::Registry::builtin().names();
    for task in &world.tasks {
        let named = |name: &String| world.ignitors.iter().find(|i| i.name_any() == *name);
        let plan = task_workflow::task_plan::plan_task(&task_workflow::task_plan::TaskView {
            now,
            task,
            runs: world.runs.iter().collect(),
            ignitors: task
                .spec
                .start_on_ignition
                .iter()
                .map(|name| (name.clone(), named(name)))
                .collect(),
            predecessors: task
                .spec
                .start_on_success
                .iter()
                .chain(&task.spec.start_on_failure)
                .map(|name| (name.clone(), world.tasks.iter().any(|t| t.name_any() == *name)))
                .collect(),
            known_actions: &known,
            join_error: None,
        });
        for mut run in plan.create {
            task_workflow::task_plan::slim_run(&mut run);
        }
    }
    let pods: Vec<task_workflow::attempt_pod::AttemptPod> = world.pods.iter().cloned().map(Into::into).collect();
    for run in &world.runs {
        let task = world.tasks.iter().find(|t| t.name_any() == run.spec.task_ref.name);
        for pod in std::iter::once(None).chain(pods.iter().map(Some)) {
            let _ = task_workflow::run_plan::plan_run(&task_workflow::run_plan::RunView { now, run, task, pod });
        }
    }
}

fn ignitors(world: &World, now: Timestamp) {
    for ignitor in &world.ignitors {
        let status = ignitor.status.clone().unwrap_or_default();
        let created = ignitor.metadata.creation_timestamp.as_ref().map_or(now, |t| t.0);
        let _ = ignitor_scheduler::plan::plan(&ignitor_scheduler::plan::Observed {
            now,
            generation: ignitor.metadata.generation,
            created,
            spec: &ignitor.spec,
            status: &status,
            fire_annotation: ignitor.annotations().get(FIRE_ANNOTATION).map(String::as_str),
        });
    }
}

fn placement(world: &World, now: Timestamp) {
    let shared = cel_conditions::SharedExpressions::default();
    for policy in &world.staged {
        let expressions = staged_binding::expressions::compile(&policy.spec, &shared);
        let _ = staged_binding::plan::plan(&staged_binding::plan::Observed {
            now,
            policy,
            expressions: match &expressions {
                Ok(e) => Ok(e.as_slice()),
                Err(err) => Err(err.as_str()),
            },
            found: world.binding_policies.iter().collect(),
            bindings: world
                .bindings
                .iter()
                .map(|b| (b.name_any(), b))
                .collect::<BTreeMap<_, _>>(),
            combined: world.combined.iter().collect(),
        });
        for index in 0..policy.spec.stages.len() {
            let _ = staged_binding::plan::stage_binding_policy(policy, index);
        }
    }
}

fn hierarchy(world: &World) {
    let registry = hierarchy_executor::registry::Registry::builtin();
    let owner = "00000000-0000-0000-0000-000000000000";
    for p in &world.projects {
        let _ = project::children(p);
        let _ = tenancy::project_references(&p.spec);
        let _ = registry.claim(Kind::Project, p.spec.executor.as_ref());
    }
    for c in &world.clusters {
        let _ = tenancy::cluster_references(&c.spec);
        let _ = registry.claim(Kind::Cluster, c.spec.executor.as_ref());
    }
    let protected = tenancy::Protected::default();
    for vc in &world.virtual_clusters {
        let _ = registry.claim(Kind::VirtualCluster, vc.spec.executor.as_ref());
        let _ = tenancy::virtual_cluster_references(&vc.spec);
        let name = virtual_cluster::namespace_name(vc);
        let existing = world.namespaces.iter().find(|n| n.name_any() == name);
        let _ = tenancy::namespace_refusal(vc, existing, &protected);
        let adopted = virtual_cluster::adopted(existing);
        let _ = virtual_cluster::objects(vc, owner, adopted);
        for app in &world.applications {
            let _ = tenancy::application_namespace_refusal(&app.namespace().unwrap_or_default(), vc);
        }
    }
    for app in &world.applications {
        let _ = registry.claim(Kind::Application, app.spec.executor.as_ref());
        let namespace = app.namespace().unwrap_or_default();
        let objects = application::objects(app, &namespace, owner);
        let _ = hierarchy_executor::plan::drift::repairs(&objects.deployments, &world.deployments);
        let _ = hierarchy_executor::plan::drift::unwanted(&objects.deployments, &world.deployments).count();
        let versions = application::version_statuses(app, &world.deployments, &world.pods);
        let _ = application::readiness(&versions);
        let _ = application::traffic_in_force(app);
    }
}

fn pipelines(world: &World, now: Timestamp) {
    let registry = policy_runner::registry::Registry::builtin();
    let outside = Fixed(
        world
            .answer
            .clone()
            .ok_or_else(|| "unreachable in the fuzzer".to_owned()),
    );
    let run = |planned: Option<pipeline::Planned>| planned.map(|p| p.status);
    for app in &world.applications {
        let _ = run(futures::executor::block_on(pipeline::plan(
            app, &registry, now, &outside,
        )));
    }
    for p in &world.projects {
        let _ = run(futures::executor::block_on(pipeline::plan(p, &registry, now, &outside)));
    }
    for c in &world.clusters {
        let _ = run(futures::executor::block_on(pipeline::plan(c, &registry, now, &outside)));
    }
    for vc in &world.virtual_clusters {
        let _ = run(futures::executor::block_on(pipeline::plan(
            vc, &registry, now, &outside,
        )));
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let mut now = Timestamp::from_second(EPOCH).expect("2026");
    let mut world = World::default();
    match &value {
        Value::Array(items) => items.iter().for_each(|item| world.add(item)),
        Value::Object(list) if list.get("items").is_some_and(Value::is_array) => {
            if let Some(offset) = list.get("now").and_then(Value::as_i64)
                && let Some(t) = EPOCH.checked_add(offset).and_then(|s| Timestamp::from_second(s).ok())
            {
                now = t;
            }
            for item in list["items"].as_array().into_iter().flatten() {
                world.add(item);
            }
        }
        other => world.add(other),
    }
    workflow(&world, now);
    ignitors(&world, now);
    placement(&world, now);
    hierarchy(&world);
    pipelines(&world, now);
});
