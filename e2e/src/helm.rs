//! The Helm chart (`charts/orrery`) rendered by a real `helm` (built once from the Go module
//! proxy by `e2e/helm/fetch.sh`), for tests that apply what users would install.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DynamicObject, ListParams};
use kube::{Api, Client, ResourceExt};

use crate::ControlPlane;
use crate::control_plane::cached_tool;

/// The namespace the chart is rendered into, as the kustomize bases use.
pub const NAMESPACE: &str = "orrery-system";

/// Every controller the chart can enable: its name and its values key.
pub const CONTROLLERS: [(&str, &str); 6] = [
    ("ignitor-scheduler", "ignitorScheduler"),
    ("task-workflow", "taskWorkflow"),
    ("staged-binding", "stagedBinding"),
    ("hierarchy-executor", "hierarchyExecutor"),
    ("policy-runner", "policyRunner"),
    ("lambda-executor", "lambdaExecutor"),
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

/// The controllers' images (`images/build.sh`'s), every one, or `None` where one is missing
/// (said why; a failure with `ORRERY_REQUIRE_NODE=1`).
pub fn controller_images() -> Option<Vec<PathBuf>> {
    CONTROLLERS
        .iter()
        .map(|(controller, _)| crate::node::controller_image(controller))
        .collect()
}

/// Installs the chart on `plane`'s real node as a user would, with default values but for the
/// images: `images` are imported into the node's containerd (never pulled) and the CRDs are the
/// harness's. `helm install --wait` into [`NAMESPACE`]; fails with every pod's state when it
/// does not finish.
pub async fn install_on_node(plane: &ControlPlane, client: &Client, images: &[PathBuf]) -> anyhow::Result<()> {
    let node = plane.node().context("the control plane has no node")?;
    for image in images {
        node.import(image)?;
    }
    let output = tokio::process::Command::new(binary()?)
        .args(["install", "orrery"])
        .arg(chart_dir())
        .args([
            "--namespace",
            NAMESPACE,
            "--create-namespace",
            "--wait",
            "--timeout",
            "4m",
        ])
        .args(["--set", "crds.install=false", "--set", "image.registry=orrery"])
        .args(["--set", "image.pullPolicy=Never"])
        .arg("--kubeconfig")
        .arg(plane.kubeconfig_path())
        .output()
        .await?;
    if !output.status.success() {
        let pods = Api::<Pod>::namespaced(client.clone(), NAMESPACE)
            .list(&ListParams::default())
            .await?;
        let states: Vec<String> = pods
            .items
            .iter()
            .map(|p| format!("{}: {:?}", p.name_any(), p.status.as_ref().map(|s| &s.conditions)))
            .collect();
        bail!(
            "helm install --wait: {}\npods: {states:#?}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}
