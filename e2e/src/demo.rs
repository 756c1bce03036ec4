//! What the demo (`just demo`) and the examples test share: reading and applying
//! `examples/`, and a live summary of where each example stands.

use std::path::{Path, PathBuf};

use crd_types::hierarchy::{Application, Project};
use crd_types::placement::StagedBindingPolicy;
use crd_types::workflow::{Ignitor, Task, TaskRun};
use kube::api::{DynamicObject, ListParams};
use kube::{Api, Client, ResourceExt};

/// The examples directory.
pub fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

/// Every object in `examples/` (recursively, files in name order), Namespaces first so what
/// lives in them can follow.
pub fn example_objects() -> anyhow::Result<Vec<DynamicObject>> {
    let mut objects = Vec::new();
    for file in crate::control_plane::yaml_files(&examples_dir())? {
        let text = std::fs::read_to_string(&file)?;
        objects.extend(crate::yaml_objects(&text).map_err(|err| anyhow::anyhow!("{}: {err}", file.display()))?);
    }
    objects.sort_by_key(|o| o.types.as_ref().is_none_or(|t| t.kind != "Namespace"));
    Ok(objects)
}

/// Applies every example (namespaced objects without a namespace go to `default`).
pub async fn apply_examples(client: &Client) -> anyhow::Result<Vec<String>> {
    let mut applied = Vec::new();
    for object in example_objects()? {
        let applied_object = crate::apply(client, &object, false).await?;
        let kind = object.types.map(|t| t.kind).unwrap_or_default();
        applied.push(format!("{kind}/{}", applied_object.name_any()));
    }
    Ok(applied)
}

/// A few lines per example saying where it stands, for the demo's live view.
pub async fn progress(client: &Client) -> anyhow::Result<String> {
    let mut out = String::new();

    out.push_str("WORKFLOW (ignitors → tasks; ORCA_DATA flows from task1 to task2)\n");
    for ignitor in Api::<Ignitor>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items
    {
        let status = ignitor.status.unwrap_or_default();
        let next = status.next_ignition.map_or("-".into(), |t| t.0.to_string());
        out.push_str(&format!(
            "  ignitor {:<22} fired {:>3} times   next {next}\n",
            ignitor.metadata.name.unwrap_or_default(),
            status.ignitions_count
        ));
    }
    for task in Api::<Task>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items
    {
        let status = task.status.unwrap_or_default();
        out.push_str(&format!(
            "  task    {:<22} {:<10} succeeded {:>3}   failed {:>3}\n",
            task.metadata.name.unwrap_or_default(),
            status.state.unwrap_or_default(),
            status.success_count,
            status.failures_count
        ));
    }
    let mut runs = Api::<TaskRun>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items;
    runs.sort_by_key(|r| r.metadata.creation_timestamp.as_ref().map(|t| t.0));
    if let Some(last) = runs.iter().rev().find(|r| r.spec.task_ref.name == "task2") {
        let status = last.status.clone().unwrap_or_default();
        out.push_str(&format!(
            "  last task2 run: {} {:?}: {}\n",
            last.name_any(),
            status.phase.unwrap_or_default(),
            status.message.unwrap_or_default()
        ));
    }

    out.push_str("\nSTAGED PLACEMENT (dev → prod once the simulated dev cluster runs the Deployment ready)\n");
    for policy in Api::<StagedBindingPolicy>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items
    {
        let status = policy.status.clone().unwrap_or_default();
        let history: Vec<String> = status
            .history
            .iter()
            .map(|h| format!("{} {}", h.name, h.outcome))
            .collect();
        out.push_str(&format!(
            "  {}: active stage {}   [{}]\n",
            policy.name_any(),
            status.active_stage.unwrap_or_else(|| "-".into()),
            history.join(", ")
        ));
    }

    out.push_str("\nHIERARCHY (a Project's tree; its Application released by canary)\n");
    for project in Api::<Project>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items
    {
        let tree = kubectl_orrery::execute(
            client.clone(),
            "default",
            &kubectl_orrery::Command::Tree {
                project: project.name_any(),
            },
        )
        .await?;
        for line in tree.lines() {
            out.push_str(&format!("  {line}\n"));
        }
    }
    for app in Api::<Application>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items
    {
        let status = app.status.clone().unwrap_or_default();
        let policy = status.common.policy.clone().unwrap_or_default();
        let steps: Vec<String> = policy.steps.iter().map(|s| format!("{} {}", s.name, s.phase)).collect();
        out.push_str(&format!(
            "  application {}: weights {}   policies [{}]\n",
            app.name_any(),
            kubectl_orrery::render::weights(&status.weights),
            steps.join(", ")
        ));
    }
    Ok(out)
}
