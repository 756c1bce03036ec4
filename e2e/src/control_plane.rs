//! Starts the control-plane binary (`e2e/control-plane`, built once per machine by its
//! `build.sh`) on 127.0.0.1 and hands out clients of it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
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
    /// Replaced by [`ControlPlane::restart`], which callers sharing the plane may call.
    process: Mutex<Child>,
    /// The `serve` arguments, to start it again the same way.
    serve_args: Vec<String>,
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

    /// Starts one with kube-controller-manager and API Priority and Fairness on, so that
    /// FlowSchemas and PriorityLevelConfigurations throttle clients (with 429s) as a
    /// production API server does (the other constructors leave it off), and without a watch
    /// cache for the `uncached` built-in resources (`resource[.group]`, e.g. `pods`,
    /// `deployments.apps`): [`Self::compact_etcd`] expires their watches when resumed.
    pub fn start_with_flow_control(uncached: &[&str]) -> anyhow::Result<Self> {
        let uncached = format!("--uncached={}", uncached.join(","));
        Self::start_at_with(true, "127.0.0.1", &["--priority-and-fairness", &uncached])
    }

    /// Starts one without kube-controller-manager whose API server has no watch cache: every
    /// watch is served from etcd, so [`Self::compact_etcd`] expires watches resumed from before
    /// it (410 Gone), as a watch cache's window does only after a long outage.
    pub fn start_without_watch_cache() -> anyhow::Result<Self> {
        Self::start_at_with(false, "127.0.0.1", &["--watch-cache=false"])
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
        Self::start_at_with(controller_manager, address, &[])
    }

    fn start_at_with(controller_manager: bool, address: &str, extra_args: &[&str]) -> anyhow::Result<Self> {
        match Self::start_once(controller_manager, address, extra_args) {
            Err(first) if first.to_string().starts_with("control plane exited") => {
                eprintln!("warning: {first:#}; starting it again");
                Self::start_once(controller_manager, address, extra_args)
            }
            other => other,
        }
    }

    fn start_once(controller_manager: bool, address: &str, extra_args: &[&str]) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("orrery-control-plane-").tempdir()?;
        let mut serve_args = vec![
            "serve".to_owned(),
            format!("--dir={}", dir.path().display()),
            format!("--controller-manager={controller_manager}"),
            format!("--address={address}"),
            "--remove-dir-on-exit".to_owned(),
        ];
        serve_args.extend(extra_args.iter().map(|a| (*a).to_owned()));
        let started = Instant::now();
        let process = spawn(dir.path(), &serve_args)?;
        let mut plane = ControlPlane {
            node: None,
            process: Mutex::new(process),
            serve_args,
            config: Config::new("https://127.0.0.1:1".parse()?),
            dir,
            startup: Duration::ZERO,
        };
        plane.wait_serving(started)?;
        plane.startup = started.elapsed();
        plane.config = load_kubeconfig(&plane.kubeconfig_path())?;
        // Started again, it must listen where its clients already point.
        let port = plane
            .config
            .cluster_url
            .port_u16()
            .context("the kubeconfig names no port")?;
        plane.serve_args.push(format!("--port={port}"));
        Ok(plane)
    }

    /// Waits until the program has written the kubeconfig, which it does once the API server
    /// is ready.
    fn wait_serving(&self, started: Instant) -> anyhow::Result<()> {
        let kubeconfig = self.kubeconfig_path();
        while !kubeconfig.exists() {
            if let Some(status) = self.process().try_wait()? {
                bail!("control plane exited with {status}; log:\n{}", self.log_tail());
            }
            if started.elapsed() > Duration::from_secs(180) {
                bail!("control plane not ready after 180s; log:\n{}", self.log_tail());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Kills the control plane (SIGKILL: etcd, kube-apiserver and kube-controller-manager go at
    /// once, as in a crash) and starts it again on the same directory and port, with the same
    /// certificates; returns how long it was away, once it serves again. Clients made before
    /// reconnect by themselves; watches resume or list again. Blocking, like the start.
    pub fn restart(&self) -> anyhow::Result<Duration> {
        let started = Instant::now();
        {
            let mut process = self.process();
            process.kill().context("killing the control plane")?;
            process.wait()?;
            // Only the new process may write the kubeconfig this waits for.
            let _ = std::fs::remove_file(self.kubeconfig_path());
            *process = spawn(self.dir(), &self.serve_args)?;
        }
        self.wait_serving(started)?;
        Ok(started.elapsed())
    }

    fn process(&self) -> std::sync::MutexGuard<'_, Child> {
        // A poisoned lock only means a restart panicked; the child it holds is still the one to use.
        self.process.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Compacts etcd at its current revision (through its JSON gateway), dropping every older
    /// revision; returns that revision.
    pub async fn compact_etcd(&self) -> anyhow::Result<i64> {
        let url = std::fs::read_to_string(self.dir().join("etcd-url")).context("reading etcd's URL")?;
        let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?;
        // Any read answers with the current revision in its header; int64s come as strings.
        let range: serde_json::Value = http
            .post(format!("{url}/v3/kv/range"))
            .json(&serde_json::json!({"key": "AA==", "limit": 1}))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let revision: i64 = range["header"]["revision"]
            .as_str()
            .and_then(|r| r.parse().ok())
            .with_context(|| format!("no revision in etcd's answer {range}"))?;
        http.post(format!("{url}/v3/kv/compaction"))
            .json(&serde_json::json!({"revision": revision.to_string(), "physical": true}))
            .send()
            .await?
            .error_for_status()?;
        Ok(revision)
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
        self.process().id()
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
        let process = self
            .process
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let _ = Command::new("kill").arg("-TERM").arg(process.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = process.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = process.kill();
        let _ = process.wait();
    }
}

/// Spawns the control-plane program with `serve_args`, its output appended to its log in `dir`.
fn spawn(dir: &Path, serve_args: &[String]) -> anyhow::Result<Child> {
    let binary = binary()?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("control-plane.log"))?;
    Command::new(&binary)
        .args(serve_args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("spawning {}", binary.display()))
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
