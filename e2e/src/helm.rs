//! The Helm chart (`charts/orrery`) rendered by a real `helm` (built once from the Go module
//! proxy by `e2e/helm/fetch.sh`), for tests that apply what users would install.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use kube::api::DynamicObject;

use crate::control_plane::cached_tool;

/// The namespace the chart is rendered into, as the kustomize bases use.
pub const NAMESPACE: &str = "orrery-system";

/// Every controller the chart can enable: its name and its values key.
pub const CONTROLLERS: [(&str, &str); 5] = [
    ("ignitor-scheduler", "ignitorScheduler"),
    ("task-workflow", "taskWorkflow"),
    ("staged-binding", "stagedBinding"),
    ("hierarchy-executor", "hierarchyExecutor"),
    ("policy-runner", "policyRunner"),
];

/// The helm binary: `$ORRERY_HELM`, or built (once, cached) by `e2e/helm/fetch.sh`.
pub fn binary() -> anyhow::Result<PathBuf> {
    cached_tool("ORRERY_HELM", "helm/fetch.sh")
}

/// The chart's directory.
pub fn chart_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/orrery")
}

/// `helm template orrery charts/orrery --namespace orrery-system --set ...`: the YAML a user
/// would install with those values.
pub fn template<S: AsRef<str>>(values: &[S]) -> anyhow::Result<String> {
    let mut command = Command::new(binary()?);
    command
        .args(["template", "orrery"])
        .arg(chart_dir())
        .args(["--namespace", NAMESPACE]);
    for value in values {
        command.args(["--set", value.as_ref()]);
    }
    let output = command.output().context("running helm")?;
    if !output.status.success() {
        bail!("helm template failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(String::from_utf8(output.stdout)?)
}

/// [`template`] parsed into objects.
pub fn render<S: AsRef<str>>(values: &[S]) -> anyhow::Result<Vec<DynamicObject>> {
    crate::yaml_objects(&template(values)?)
}

/// Only `controller` enabled, without CRDs: what its kustomize base holds.
pub fn controller_only(controller: &str) -> anyhow::Result<String> {
    let mut values = only(controller);
    values.push("crds.install=false".into());
    template(&values)
}

/// The values enabling `controller` and no other (`"none"` enables none).
pub fn only(controller: &str) -> Vec<String> {
    CONTROLLERS
        .iter()
        .map(|(name, key)| format!("{key}.enabled={}", *name == controller))
        .collect()
}

/// The text of `manifests/<controller>/<controller>.yaml`: [`controller_only`] under a header.
pub fn kustomize_base(controller: &str) -> anyhow::Result<String> {
    Ok(format!(
        "# {controller}'s ServiceAccount, RBAC and Deployment, rendered from charts/orrery by\n\
         # `just manifests`: change the chart, not this file.\n{}",
        controller_only(controller)?
    ))
}
