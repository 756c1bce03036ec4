//! Writes each controller's kustomize base (`manifests/<controller>/<controller>.yaml`) from
//! the Helm chart, so the chart is the one source of RBAC and Deployments; with `--check`,
//! fails when a base differs from the chart.

use std::path::Path;

use orrery_e2e::helm;

fn main() -> anyhow::Result<()> {
    let check = std::env::args().any(|a| a == "--check");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests");
    let mut stale = Vec::new();
    for (controller, _) in helm::CONTROLLERS {
        let path = root.join(controller).join(format!("{controller}.yaml"));
        let wanted = helm::kustomize_base(controller)?;
        let current = std::fs::read_to_string(&path).unwrap_or_default();
        if current == wanted {
            continue;
        }
        if check {
            stale.push(path.display().to_string());
        } else {
            std::fs::write(&path, wanted)?;
            println!("wrote {}", path.display());
        }
    }
    if !stale.is_empty() {
        anyhow::bail!(
            "out of date with charts/orrery (run `just manifests`): {}",
            stale.join(", ")
        );
    }
    Ok(())
}
