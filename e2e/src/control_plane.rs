//! Starts the control-plane binary (`e2e/control-plane`, built once per machine by its
//! `build.sh`) on 127.0.0.1 and hands out clients of it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

use crate::node::{Node, NodeNetwork};

/// Field manager of what the test harness applies.
pub const FIELD_MANAGER: &str = "orrery-e2e";

/// A running control plane: etcd, kube-apiserver and kube-controller-manager, and a real node
/// when started with [`ControlPlane::with_node`].
#[derive(Debug)]
pub struct ControlPlane {
    node: Option<Node>,
    process: Child,
    dir: tempfile::TempDir,
    config: Config,
    /// Seconds from spawn to the API server answering `/readyz`.
    pub startup: Duration,
}

impl ControlPlane {
    /// Builds (once per machine) and starts a control plane with kube-controller-manager.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with(true)
    }

    /// Starts one, with or without kube-controller-manager. A start whose process exits before
    /// it is ready is tried once more: seen once on a clean clone, with its log already removed
    /// with its directory, so the second attempt's error is the one reported.
    pub fn start_with(controller_manager: bool) -> anyhow::Result<Self> {
        Self::start_at(controller_manager, "127.0.0.1")
    }

    /// Starts one with a real node ([`crate::node`]): the API server listens on the host's
    /// address on the node's link, kube-controller-manager also runs the node lifecycle and
    /// EndpointSlice controllers, and the call returns once the Node is Ready. Fails with the
    /// reason where the node cannot run ([`crate::node::unavailable`]).
    pub fn with_node() -> anyhow::Result<Self> {
        if let Some(reason) = crate::node::unavailable() {
            bail!("{reason}");
        }
        let network = NodeNetwork::claim()?;
        let mut plane = Self::start_at(true, &network.host_address())?;
        let node = Node::start(&plane, network)?;
        eprintln!(
            "real node {} Ready in {:.1}s (control plane {:.1}s); its files: {}",
            crate::node::NODE_NAME,
            node.startup.as_secs_f64(),
            plane.startup.as_secs_f64(),
            node.dir().display()
        );
        plane.node = Some(node);
        Ok(plane)
    }

    /// The real node, if this control plane has one.
    pub fn node(&self) -> Option<&Node> {
        self.node.as_ref()
    }

    fn start_at(controller_manager: bool, address: &str) -> anyhow::Result<Self> {
        match Self::start_once(controller_manager, address) {
            Err(first) if first.to_string().starts_with("control plane exited") => {
                eprintln!("warning: {first:#}; starting it again");
                Self::start_once(controller_manager, address)
            }
            other => other,
        }
    }

    fn start_once(controller_manager: bool, address: &str) -> anyhow::Result<Self> {
        let binary = binary()?;
        let dir = tempfile::Builder::new().prefix("orrery-control-plane-").tempdir()?;
        let log = std::fs::File::create(dir.path().join("control-plane.log"))?;
        let started = Instant::now();
        let process = Command::new(&binary)
            .arg("serve")
            .arg("--dir")
            .arg(dir.path())
            .arg(format!("--controller-manager={controller_manager}"))
            .arg(format!("--address={address}"))
            .arg("--remove-dir-on-exit")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawning {}", binary.display()))?;
        let mut plane = ControlPlane {
            node: None,
            process,
            config: Config::new("https://127.0.0.1:1".parse()?),
            dir,
            startup: Duration::ZERO,
        };
        let kubeconfig = plane.kubeconfig_path();
        while !kubeconfig.exists() {
            if let Some(status) = plane.process.try_wait()? {
                bail!("control plane exited with {status}; log:\n{}", plane.log_tail());
            }
            if started.elapsed() > Duration::from_secs(180) {
                bail!("control plane not ready after 180s; log:\n{}", plane.log_tail());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        plane.startup = started.elapsed();
        plane.config = load_kubeconfig(&kubeconfig)?;
        Ok(plane)
    }

    /// The admin kubeconfig file.
    pub fn kubeconfig_path(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    /// The admin kubeconfig with its CA certificate inline, as a Secret for a remote Cluster
    /// holds it (the executor reads no files a kubeconfig names).
    pub fn kubeconfig_inline(&self) -> anyhow::Result<String> {
        let mut kubeconfig = Kubeconfig::read_from(self.kubeconfig_path())?;
        for named in &mut kubeconfig.clusters {
            if let Some(cluster) = named.cluster.as_mut()
                && let Some(file) = cluster.certificate_authority.take()
            {
                let pem = std::fs::read(file)?;
                // ByteString serializes as the base64 a kubeconfig's *-data fields hold.
                let data = serde_json::to_value(k8s_openapi::ByteString(pem))?;
                cluster.certificate_authority_data = data.as_str().map(str::to_owned);
            }
        }
        Ok(serde_yaml::to_string(&kubeconfig)?)
    }

    /// The state directory (logs, certificates, etcd data).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The admin client configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// A new admin client, bound to the calling test's runtime.
    pub async fn client(&self) -> Client {
        Client::try_from(self.config.clone()).expect("client from the control plane's kubeconfig")
    }

    /// Process id of the control plane (for memory readings).
    pub fn pid(&self) -> u32 {
        self.process.id()
    }

    /// Installs Orrery's CRDs (`manifests/crds/`) and KubeStellar's as its tests know them
    /// ([`kubestellar_crd_dir`]) and waits until each is Established. Runs its own runtime, so it can be called from anywhere.
    pub fn install_crds_blocking(&self) -> anyhow::Result<Vec<String>> {
        let config = self.config.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(async move {
                let client = Client::try_from(config)?;
                install_crds(&client).await
            })
        })
        .join()
        .map_err(|_| anyhow::anyhow!("CRD installation panicked"))?
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("control-plane.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        // The node first: its kubelet would otherwise go on without an API server.
        drop(self.node.take());
        // SIGTERM lets the API server and etcd shut down cleanly; the program also stops by
        // itself when this process goes away, which is what happens to the shared one.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.process.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.process.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// The control-plane binary: `$ORRERY_CONTROL_PLANE`, or built (once, cached) by `build.sh`.
pub fn binary() -> anyhow::Result<PathBuf> {
    cached_tool("ORRERY_CONTROL_PLANE", "control-plane/build.sh")
}

/// A tool's binary: the path in `variable` if set, else the one `script` (under `e2e/`, building
/// or fetching it once into the cache) prints.
pub(crate) fn cached_tool(variable: &str, script: &str) -> anyhow::Result<PathBuf> {
    if let Ok(path) = std::env::var(variable) {
        return Ok(PathBuf::from(path));
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(script);
    let output = Command::new("bash")
        .arg(&script)
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !output.status.success() {
        bail!("{} failed ({})", script.display(), output.status);
    }
    let path = String::from_utf8(output.stdout).context("the script printed a non-UTF-8 path")?;
    let path = PathBuf::from(path.trim());
    if !path.is_file() {
        bail!("{} printed {}, which is not a file", script.display(), path.display());
    }
    Ok(path)
}

fn load_kubeconfig(path: &Path) -> anyhow::Result<Config> {
    let kubeconfig = Kubeconfig::read_from(path)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    Ok(runtime.block_on(Config::from_custom_kubeconfig(
        kubeconfig,
        &KubeConfigOptions::default(),
    ))?)
}

/// The directory holding the generated CRD YAML.
pub fn crd_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/crds")
}

/// KubeStellar's CRDs, written from its published schemas (not from Orrery's types): the tests
/// see the pruning and validation a real KubeStellar applies.
pub fn kubestellar_crd_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/kubestellar-crds")
}

/// The `.yaml` files under `dir` (recursively, in path order), kustomizations left out.
pub fn yaml_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml")
                && path.file_name().is_some_and(|n| n != "kustomization.yaml")
            {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// Reads every CRD under `manifests/crds/` and [`kubestellar_crd_dir`] (recursively).
pub fn read_crds() -> anyhow::Result<Vec<CustomResourceDefinition>> {
    let mut files = yaml_files(&crd_dir())?;
    files.extend(yaml_files(&kubestellar_crd_dir())?);
    files
        .iter()
        .map(|path| {
            let text = std::fs::read_to_string(path)?;
            serde_yaml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
        })
        .collect()
}

/// Applies the CRDs and waits for each to be Established; returns their names.
pub async fn install_crds(client: &Client) -> anyhow::Result<Vec<String>> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let mut names = Vec::new();
    for crd in read_crds()? {
        let name = crd.metadata.name.clone().context("CRD without a name")?;
        api.patch(&name, &params, &Patch::Apply(&crd))
            .await
            .with_context(|| format!("applying CRD {name}"))?;
        names.push(name);
    }
    for name in &names {
        crate::wait::until(
            &format!("CRD {name} Established"),
            crate::Deadline::default(),
            || async {
                let crd = api.get(name).await.map_err(|e| e.to_string())?;
                let established = crd
                    .status
                    .and_then(|s| s.conditions)
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True");
                if established {
                    Ok(())
                } else {
                    Err("not Established".to_owned())
                }
            },
        )
        .await?;
    }
    Ok(names)
}
