//! `just demo`: Orrery on a machine with no cluster. Starts a local control plane, installs
//! the CRDs, runs every controller as its own local process, applies `examples/` (the ORCA
//! workflow, a staged rollout dev → prod, a Project tree with a canary Application) and shows
//! their progress live until Ctrl-C, then stops everything and removes its state.
//!
//! Pods run on the real node (`orrery_e2e::node`: containerd, runc, the kubelet) where it can
//! start (root, cgroups, `e2e/node/setup.sh` run once); the images the examples name are the
//! node's busybox under those names, since nothing is pulled. Elsewhere, or with `--simulate`,
//! the pod simulator plays the kubelet's part; the demo says which, and why. The KubeStellar
//! simulator plays KubeStellar's part either way (each simulated cluster runs its copy of a
//! placed Deployment, on the node or the simulator as the rest, and reports it).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use orrery_e2e::ControlPlane;
use orrery_e2e::demo::{apply_examples, progress};
use orrery_e2e::helm::CONTROLLERS;
use orrery_e2e::kubestellar_simulator::KubeStellarSimulator;
use orrery_e2e::pod_simulator::PodSimulator;
use tokio::process::{Child, Command};

#[derive(Parser, Debug)]
#[command(about = "Run Orrery's examples on a local control plane, every controller a local process")]
struct Cli {
    /// Seconds between refreshes of the live view.
    #[arg(long, default_value_t = 2)]
    refresh: u64,
    /// Stop by itself after this many seconds (Ctrl-C stops it in any case).
    #[arg(long)]
    seconds: Option<u64>,
    /// Play the kubelet's part with the pod simulator even where the real node can start.
    #[arg(long)]
    simulate: bool,
}

/// The images `examples/` name, given to the node's busybox: it has `sh` and `httpd`, which is
/// what the examples' containers run.
const EXAMPLE_IMAGES: [&str; 2] = ["busybox:1.36", "busybox:1.37"];

/// The control plane, with the real node where it can start: the plane, and what plays the
/// kubelet (said to the user).
fn start_plane(simulate: bool) -> anyhow::Result<(ControlPlane, String)> {
    let why_not = if simulate {
        "--simulate asked for the pod simulator".to_owned()
    } else if let Some(reason) = orrery_e2e::node::unavailable() {
        reason
    } else {
        eprintln!(
            "starting the control plane and a real node (the first run builds them; later runs reuse the build)..."
        );
        match ControlPlane::with_node() {
            Ok(plane) => {
                let node = plane.node().context("a node")?;
                for image in EXAMPLE_IMAGES {
                    node.tag(orrery_e2e::node::BUSYBOX_IMAGE, image)?;
                }
                let says = format!(
                    "pods run on a real node (containerd, runc, the kubelet; its files in {}):\n\
                     the examples' busybox images are the node's own, as nothing is pulled here",
                    node.dir().display()
                );
                return Ok((plane, says));
            }
            Err(err) => format!("{err:#}"),
        }
    };
    eprintln!("the real node is not used: {why_not}; the pod simulator plays the kubelet instead");
    eprintln!("starting the control plane (the first run builds it; later runs reuse the build)...");
    let plane = ControlPlane::start()?;
    let says =
        format!("pods are played by the pod simulator (no kubelet), as the real node does not run here:\n{why_not}");
    Ok((plane, says))
}

struct Controller {
    name: &'static str,
    log: PathBuf,
    process: Child,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let bin_dir = std::env::current_exe()?
        .parent()
        .context("the demo binary has no directory")?
        .to_path_buf();
    let simulate = cli.simulate;
    let (plane, pods) = tokio::task::spawn_blocking(move || start_plane(simulate)).await??;
    eprintln!("{pods}");
    let crds = plane.install_crds_blocking()?;
    let client = plane.client().await;
    let kubeconfig = plane.kubeconfig_path();
    eprintln!(
        "control plane up in {:.1}s; {} CRDs installed",
        plane.startup.as_secs_f64(),
        crds.len()
    );

    // The simulator only where no kubelet runs.
    let _kubelet = match plane.node() {
        Some(_) => None,
        None => Some(PodSimulator::start(client.clone(), None).await?),
    };
    let _kubestellar = KubeStellarSimulator::start_without_kubelets(client.clone()).await?;
    let mut controllers = Vec::new();
    for (i, (name, _)) in CONTROLLERS.iter().enumerate() {
        controllers.push(spawn(&bin_dir, name, &kubeconfig, plane.dir(), 18_081 + i as u16)?);
    }
    let applied = apply_examples(&client).await?;
    eprintln!("applied {} objects from examples/", applied.len());

    let started = std::time::Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_secs(cli.refresh.max(1)));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = ticker.tick() => {}
        }
        for controller in &mut controllers {
            if let Some(status) = controller.process.try_wait()? {
                anyhow::bail!(
                    "{} exited ({status}); its log: {}",
                    controller.name,
                    std::fs::read_to_string(&controller.log).unwrap_or_default()
                );
            }
        }
        let view = progress(&client)
            .await
            .unwrap_or_else(|err| format!("(cannot read progress: {err:#})\n"));
        // Clear the screen and draw from the top, like `watch`.
        print!("\x1b[2J\x1b[H");
        println!(
            "Orrery demo, {}s in: every controller runs as a local process;\n{pods}.\n\
             KubeStellar is played by its simulator. In another terminal:\n\
             \n  export KUBECONFIG={} PATH={}:$PATH\n  kubectl get tasks,taskruns,sbp,applications,pods -A\n  kubectl orrery tree shop\n  kubectl orrery runs task2 -n default\n\
             \nControllers' logs are in {}. Ctrl-C stops everything and cleans up.\n",
            started.elapsed().as_secs(),
            kubeconfig.display(),
            bin_dir.display(),
            plane.dir().display(),
        );
        print!("{view}");
        if cli.seconds.is_some_and(|s| started.elapsed() >= Duration::from_secs(s)) {
            break;
        }
    }
    eprintln!("stopping the controllers and the control plane...");
    for mut controller in controllers {
        let _ = controller.process.kill().await;
    }
    drop(plane);
    Ok(())
}

/// Starts controller `name` from `bin_dir` against the control plane, logging into `dir`.
fn spawn(bin_dir: &Path, name: &'static str, kubeconfig: &Path, dir: &Path, port: u16) -> anyhow::Result<Controller> {
    let binary = bin_dir.join(name);
    anyhow::ensure!(
        binary.is_file(),
        "{} is missing: build the controllers first (`just demo` does)",
        binary.display()
    );
    let log = dir.join(format!("{name}.log"));
    let file = std::fs::File::create(&log)?;
    let process = Command::new(&binary)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["--leader-elect=false", &format!("--http-addr=127.0.0.1:{port}")])
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    Ok(Controller { name, log, process })
}
