//! Starts a local control plane for trying Orrery by hand: kube-apiserver, etcd and
//! kube-controller-manager on 127.0.0.1, every CRD installed, and the pod simulator playing
//! the kubelet. Prints how to point kubectl at it; stops everything on Ctrl-C.

use clap::Parser;
use orrery_e2e::ControlPlane;
use orrery_e2e::pod_simulator::PodSimulator;

#[derive(Parser, Debug)]
#[command(about = "Run a local Kubernetes control plane with Orrery's CRDs and a simulated kubelet")]
struct Cli {
    /// Do not start kube-controller-manager (no garbage collection, no Deployments).
    #[arg(long)]
    no_controller_manager: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    eprintln!("starting the control plane (the first run builds it; later runs reuse the build)...");
    let plane = tokio::task::spawn_blocking(move || ControlPlane::start_with(!cli.no_controller_manager)).await??;
    let crds = tokio::task::spawn_blocking({
        let config = plane.config().clone();
        move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(async { orrery_e2e::control_plane::install_crds(&kube::Client::try_from(config)?).await })
        }
    })
    .await??;
    let client = plane.client().await;
    let _simulator = PodSimulator::start(client, None).await?;
    let kubeconfig = plane.kubeconfig_path();
    println!(
        "control plane ready in {:.1}s with {} CRDs; pods are run by the pod simulator (no kubelet).",
        plane.startup.as_secs_f64(),
        crds.len()
    );
    println!();
    println!("  export KUBECONFIG={}", kubeconfig.display());
    println!("  kubectl get crds");
    println!("  kubectl explain task.spec");
    println!();
    println!("Ctrl-C stops it and removes its state.");
    tokio::signal::ctrl_c().await?;
    drop(plane);
    Ok(())
}
