//! A real node for the control plane: containerd and runc (Debian's), the CNI bridge, and the
//! kubelet, kube-proxy and kube-scheduler built from the same `k8s.io/kubernetes` module as the
//! API server (subcommands of the control-plane binary). Pods really run; nothing is pulled:
//! the node imports the images `e2e/node/images.sh` writes (`orrery-test/pause:1`, the sandbox,
//! and `orrery-test/busybox:1`), and tests import more with [`Node::import`].
//!
//! Each node lives in a network namespace of its own, `orrery-node-N`, joined to the host by
//! a veth pair: the host end is `10.251.N.1` (the API server listens there, and pods reach it
//! through the `kubernetes` Service), the node end `10.251.N.2` (the node's IP). Pods get
//! addresses in `10.250.N.0/24` on a bridge inside the namespace, with routes to the Service
//! range and to the host only: no default route, no masquerade, nothing leaves the machine.
//! kube-proxy's and the kubelet's iptables rules stay in that namespace, the kubelet's cgroups
//! under `/orrery-node-N`, its files under `/tmp/orrery-nodes/N`: two test binaries each run a
//! node of their own at once.
//!
//! Everything the node made is removed when it is dropped (or, for the node a test binary
//! shares, when the process exits), also after a failed test: the processes in its cgroups
//! (containers, shims, containerd), the mounts under its directory, its network namespace
//! (with the bridge, the veth pair and its iptables rules) and its cgroups. A node left behind
//! by a killed process is removed by the next node that starts.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::{Node as NodeObject, ServiceAccount};
use kube::{Api, Client};

use crate::control_plane::ControlPlane;

/// The node's name, as the kubelet registers it.
pub const NODE_NAME: &str = "orrery-node";
/// The pause image the node's pods are sandboxed with.
pub const PAUSE_IMAGE: &str = "orrery-test/pause:1";
/// Debian's static busybox (`sh`, `httpd`, `sleep`, `wget`, ...), present on every node.
pub const BUSYBOX_IMAGE: &str = "orrery-test/busybox:1";

/// The pods' bridge, inside the node's network namespace.
const BRIDGE: &str = "orrery0";
/// The control plane's Service range (`--service-cluster-ip-range`).
const SERVICE_RANGE: &str = "10.0.0.0/16";

/// Where the nodes' directories are, one per instance number.
const NODES_DIR: &str = "/tmp/orrery-nodes";
/// How long a node may take from containerd's start to the Node being Ready.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// Why a real node cannot run on this machine, if it cannot: not root, no cgroups, or a tool
/// missing (`e2e/node/setup.sh` installs them).
pub fn unavailable() -> Option<String> {
    if effective_uid() != Some(0) {
        return Some("the real node needs root (containerd, network namespaces, iptables, cgroups)".into());
    }
    if !Path::new("/sys/fs/cgroup").is_dir() || cgroup_roots().is_empty() {
        return Some("the real node needs cgroups, and none are mounted under /sys/fs/cgroup".into());
    }
    for tool in [
        "containerd",
        "containerd-shim-runc-v2",
        "runc",
        "ctr",
        "iptables",
        "nsenter",
        "ip",
        "curl",
    ] {
        if !on_path(tool) {
            return Some(format!("{tool} is missing: run e2e/node/setup.sh as root once"));
        }
    }
    for plugin in ["bridge", "host-local", "loopback"] {
        if !Path::new("/usr/lib/cni").join(plugin).exists() {
            return Some(format!(
                "the CNI plugin /usr/lib/cni/{plugin} is missing: run e2e/node/setup.sh as root once"
            ));
        }
    }
    None
}

/// This process's effective user id, from /proc.
fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// Sends `signal` (`TERM`, `KILL`) to `pids`.
fn signal(signal: &str, pids: &[u32]) {
    if pids.is_empty() {
        return;
    }
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .args(pids.iter().map(u32::to_string))
        .stderr(Stdio::null())
        .status();
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
}

/// The network a node is made in, claimed before the control plane starts (the API server
/// listens on its host address).
#[derive(Debug)]
pub struct NodeNetwork {
    instance: u8,
    dir: PathBuf,
    removed: Mutex<bool>,
}

impl NodeNetwork {
    /// Removes everything the node made (see [`teardown`]), once.
    fn remove(&self) {
        let mut removed = self.removed.lock().unwrap_or_else(|p| p.into_inner());
        if !*removed {
            *removed = true;
            teardown(self.instance, &self.dir);
        }
    }
}

impl Drop for NodeNetwork {
    /// A network whose control plane or node never started is removed too.
    fn drop(&mut self) {
        self.remove();
    }
}

impl NodeNetwork {
    /// Claims a free instance number (removing what killed processes left behind), and makes
    /// the network namespace and the veth pair.
    pub fn claim() -> anyhow::Result<Self> {
        std::fs::create_dir_all(NODES_DIR)?;
        for instance in 1..=250u8 {
            let dir = Path::new(NODES_DIR).join(instance.to_string());
            match std::fs::create_dir(&dir) {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
                    if !stale(&dir) {
                        continue;
                    }
                    eprintln!("removing node {instance}, left behind by a process that is gone");
                    teardown(instance, &dir);
                    if std::fs::create_dir(&dir).is_err() {
                        continue;
                    }
                }
                Err(err) => return Err(err).with_context(|| format!("creating {}", dir.display())),
            }
            std::fs::write(dir.join("owner"), std::process::id().to_string())?;
            let network = NodeNetwork {
                instance,
                dir,
                removed: Mutex::new(false),
            };
            // Dropped (and removed) on error.
            network.create()?;
            return Ok(network);
        }
        bail!("no free node instance under {NODES_DIR} (250 in use)")
    }

    /// The host's address on the node's link: the API server listens here.
    pub fn host_address(&self) -> String {
        format!("10.251.{}.1", self.instance)
    }

    /// The node's own address (the kubelet's, kube-proxy's).
    pub fn node_address(&self) -> String {
        format!("10.251.{}.2", self.instance)
    }

    /// The pods' subnet.
    pub fn pod_subnet(&self) -> String {
        format!("10.250.{}.0/24", self.instance)
    }

    fn netns(&self) -> String {
        netns_name(self.instance)
    }

    fn create(&self) -> anyhow::Result<()> {
        let n = self.instance;
        let ns = self.netns();
        let host_link = format!("orrh{n}");
        let node_link = format!("orrn{n}");
        run("ip", &["netns", "add", &ns])?;
        run(
            "ip",
            &["link", "add", &host_link, "type", "veth", "peer", "name", &node_link],
        )?;
        run("ip", &["link", "set", &node_link, "netns", &ns])?;
        run(
            "ip",
            &["addr", "add", &format!("{}/30", self.host_address()), "dev", &host_link],
        )?;
        run("ip", &["link", "set", &host_link, "up"])?;
        run(
            "ip",
            &[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/30", self.node_address()),
                "dev",
                &node_link,
            ],
        )?;
        run("ip", &["-n", &ns, "link", "set", &node_link, "up"])?;
        run("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
        // The pods' bridge, made here rather than by the CNI plugin (which takes it over) so
        // that the node's own connections to Services (a ClusterIP fetched from the node, as a
        // host-network pod would) find a route before kube-proxy's rules rewrite them: with no
        // default route they would fail first. What no rule rewrites finds no one there.
        run("ip", &["-n", &ns, "link", "add", BRIDGE, "type", "bridge"])?;
        run("ip", &["-n", &ns, "link", "set", BRIDGE, "up"])?;
        run("ip", &["-n", &ns, "route", "add", SERVICE_RANGE, "dev", BRIDGE])?;
        // The host reaches pods (the API server answers them) through the node.
        run("ip", &["route", "add", &self.pod_subnet(), "via", &self.node_address()])?;
        // The node routes between its pods and the host; Services between pods on its bridge
        // need bridged traffic to pass iptables.
        let netns = format!("--net=/run/netns/{ns}");
        run(
            "nsenter",
            &[
                &netns,
                "--",
                "sh",
                "-c",
                "echo 1 > /proc/sys/net/ipv4/ip_forward && \
                 if [ -e /proc/sys/net/bridge/bridge-nf-call-iptables ]; then \
                   echo 1 > /proc/sys/net/bridge/bridge-nf-call-iptables; fi",
            ],
        )?;
        Ok(())
    }
}

/// The directory holding the node's images: `$ORRERY_NODE_IMAGES`, or what `e2e/node/images.sh`
/// builds (once, cached) and prints.
pub fn images_dir() -> anyhow::Result<PathBuf> {
    if let Ok(dir) = std::env::var("ORRERY_NODE_IMAGES") {
        return Ok(PathBuf::from(dir));
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("node/images.sh");
    let output = Command::new("bash")
        .arg(&script)
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !output.status.success() {
        bail!("{} failed ({})", script.display(), output.status);
    }
    let dir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    if !dir.join("busybox.tar").is_file() {
        bail!(
            "{} printed {}, which holds no busybox.tar",
            script.display(),
            dir.display()
        );
    }
    Ok(dir)
}

/// An image reference as containerd stores it: `busybox:1` is `docker.io/library/busybox:1`,
/// `orrery-test/busybox:1` is `docker.io/orrery-test/busybox:1`.
fn normalise_image(reference: &str) -> String {
    let first = reference.split('/').next().unwrap_or_default();
    let has_registry = reference.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    if has_registry {
        reference.to_owned()
    } else if reference.contains('/') {
        format!("docker.io/{reference}")
    } else {
        format!("docker.io/library/{reference}")
    }
}

fn netns_name(instance: u8) -> String {
    format!("orrery-node-{instance}")
}

fn cgroup_name(instance: u8) -> String {
    format!("orrery-node-{instance}")
}

/// A node directory whose owner process is gone (or was never written down, a while ago).
fn stale(dir: &Path) -> bool {
    match std::fs::read_to_string(dir.join("owner")) {
        Ok(pid) => !Path::new("/proc").join(pid.trim()).exists(),
        Err(_) => std::fs::metadata(dir)
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().unwrap_or_default() > Duration::from_secs(60)),
    }
}

fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {program}"))?;
    if !output.status.success() {
        bail!(
            "{program} {} failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// A running node: its processes (each under the control-plane binary's `supervise`, which
/// stops them when this process goes away) and what it made.
#[derive(Debug)]
pub struct Node {
    network: NodeNetwork,
    processes: Mutex<Vec<(String, Child)>>,
    torn_down: Mutex<bool>,
    /// From containerd's start to the Node being Ready.
    pub startup: Duration,
}

impl Node {
    /// Starts containerd, the kubelet, kube-proxy and kube-scheduler against `plane` (started
    /// with `network`'s host address), imports the test images and waits for the Node to be
    /// Ready and schedulable.
    pub fn start(plane: &ControlPlane, network: NodeNetwork) -> anyhow::Result<Self> {
        let started = Instant::now();
        let mut node = Node {
            network,
            processes: Mutex::new(Vec::new()),
            torn_down: Mutex::new(false),
            startup: Duration::ZERO,
        };
        node.start_processes(plane)?;
        node.startup = started.elapsed();
        Ok(node)
    }

    /// The node's directory (configuration, logs, containerd's and the kubelet's state).
    pub fn dir(&self) -> &Path {
        &self.network.dir
    }

    /// The node's network.
    pub fn network(&self) -> &NodeNetwork {
        &self.network
    }

    fn socket(&self) -> PathBuf {
        self.dir().join("containerd.sock")
    }

    /// Runs `ctr image <args>` against the node's containerd, in the kubelet's namespace.
    fn ctr_image(&self, args: &[&str]) -> anyhow::Result<()> {
        let socket = self.socket();
        let mut all = vec![
            "--address",
            socket.to_str().context("a UTF-8 socket path")?,
            "--namespace",
            "k8s.io",
            "image",
        ];
        all.extend_from_slice(args);
        run("ctr", &all)
    }

    /// Imports an image archive (docker-archive or OCI tar) into the node's containerd.
    pub fn import(&self, archive: &Path) -> anyhow::Result<()> {
        self.ctr_image(&["import", &archive.to_string_lossy()])
            .with_context(|| format!("importing {}", archive.display()))
    }

    /// Gives image `source` (already imported) the further name `target`, as if `target` had
    /// been pulled: for manifests naming public images (`busybox:1.36`) that nothing here may
    /// pull. Names are normalised as the kubelet does (`busybox:1.36` is
    /// `docker.io/library/busybox:1.36`).
    pub fn tag(&self, source: &str, target: &str) -> anyhow::Result<()> {
        self.ctr_image(&["tag", "--force", &normalise_image(source), &normalise_image(target)])
            .with_context(|| format!("naming {source} {target}"))
    }

    /// GETs `url` from the node's own network namespace, where kube-proxy's rules are (as the
    /// node itself, or a host-network pod, would reach a Service's ClusterIP), with `curl`:
    /// the body, or why not.
    pub async fn fetch(&self, url: &str) -> anyhow::Result<String> {
        let output = tokio::process::Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.network.netns()))
            .args([
                "--",
                "curl",
                "--silent",
                "--show-error",
                "--fail",
                "--max-time",
                "3",
                url,
            ])
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .context("running curl in the node's network namespace")?;
        if !output.status.success() {
            bail!(
                "GET {url} from the node: {} ({})",
                String::from_utf8_lossy(&output.stderr).trim(),
                output.status
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// The last lines of one of the node's logs (`containerd`, `kubelet`, `kube-proxy`,
    /// `kube-scheduler`).
    pub fn log_tail(&self, name: &str, lines: usize) -> String {
        let log = std::fs::read_to_string(self.dir().join("logs").join(format!("{name}.log"))).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    fn start_processes(&mut self, plane: &ControlPlane) -> anyhow::Result<()> {
        let binary = crate::control_plane::binary()?;
        let images = images_dir().context("building the node's images")?;
        let dir = self.dir().to_path_buf();
        let n = self.network.instance;
        let netns = format!("/run/netns/{}", self.network.netns());
        let cgroup = cgroup_name(n);
        for sub in ["logs", "containerd", "cni/net.d", "cni/ipam", "kubelet", "pod-logs"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        for root in cgroup_roots() {
            create_cgroup(&root, &cgroup)?;
        }
        let d = dir.display();
        let kubeconfig = plane.kubeconfig_path();

        std::fs::write(
            dir.join("containerd.toml"),
            format!(
                r#"version = 2
root = "{d}/containerd/root"
state = "{d}/containerd/state"
[grpc]
  address = "{d}/containerd.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "docker.io/{PAUSE_IMAGE}"
  # The sandbox asks for oom_score_adj -998, which may not be lowered here.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{d}/cni/net.d"
"#
            ),
        )?;
        // Routes to the Service range and to the host's end of the link only: no default route.
        std::fs::write(
            dir.join("cni/net.d/10-orrery.conflist"),
            serde_json::to_string_pretty(&serde_json::json!({
                "cniVersion": "0.4.0",
                "name": format!("orrery-node-{n}"),
                "plugins": [{
                    "type": "bridge",
                    "bridge": BRIDGE,
                    "isGateway": true,
                    "ipMasq": false,
                    "hairpinMode": true,
                    "ipam": {
                        "type": "host-local",
                        "dataDir": format!("{d}/cni/ipam"),
                        "ranges": [[{"subnet": self.network.pod_subnet()}]],
                        "routes": [{"dst": SERVICE_RANGE}, {"dst": format!("10.251.{n}.0/30")}]
                    }
                }]
            }))?,
        )?;
        self.supervise(
            &binary,
            "containerd",
            &netns,
            &format!("{cgroup}/runtime"),
            &["containerd".into(), "--config".into(), format!("{d}/containerd.toml")],
        )?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.socket().exists() {
            self.check_running()?;
            if Instant::now() > deadline {
                bail!(
                    "containerd did not start in 30s; log:\n{}",
                    self.log_tail("containerd", 30)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        for image in ["pause.tar", "busybox.tar"] {
            self.import(&images.join(image))?;
        }

        std::fs::write(
            dir.join("kubelet.yaml"),
            format!(
                r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# cgroup v1 machines are refused unless this says otherwise.
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: /{cgroup}
containerRuntimeEndpoint: unix://{d}/containerd.sock
failSwapOn: false
enforceNodeAllocatable: []
localStorageCapacityIsolation: false
evictionHard: {{}}
imageGCHighThresholdPercent: 100
resolvConf: ""
address: {node_ip}
healthzBindAddress: 127.0.0.1
readOnlyPort: 0
podLogsDir: {d}/pod-logs
volumePluginDir: {d}/kubelet/volume-plugins
nodeStatusUpdateFrequency: 2s
serializeImagePulls: false
authentication:
  anonymous: {{enabled: true}}
  webhook: {{enabled: false}}
authorization:
  mode: AlwaysAllow
"#,
                node_ip = self.network.node_address(),
            ),
        )?;
        std::fs::write(
            dir.join("kube-proxy.yaml"),
            format!(
                r#"apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clientConnection:
  kubeconfig: {kubeconfig}
hostnameOverride: {NODE_NAME}
clusterCIDR: {subnet}
bindAddress: {node_ip}
metricsBindAddress: 127.0.0.1:10249
healthzBindAddress: 127.0.0.1:10256
nodePortAddresses: [{node_ip}/32]
# Leave the machine's conntrack settings as they are.
conntrack:
  maxPerCore: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
iptables:
  localhostNodePorts: false
"#,
                kubeconfig = kubeconfig.display(),
                subnet = self.network.pod_subnet(),
                node_ip = self.network.node_address(),
            ),
        )?;
        let me = binary.to_string_lossy().into_owned();
        let kubeconfig = kubeconfig.to_string_lossy().into_owned();
        self.supervise(
            &binary,
            "kubelet",
            &netns,
            &format!("{cgroup}/node"),
            &[
                me.clone(),
                "kubelet".into(),
                format!("--config={d}/kubelet.yaml"),
                format!("--kubeconfig={kubeconfig}"),
                format!("--root-dir={d}/kubelet"),
                format!("--cert-dir={d}/kubelet/pki"),
                format!("--node-ip={}", self.network.node_address()),
                format!("--hostname-override={NODE_NAME}"),
                "--v=2".into(),
            ],
        )?;
        self.supervise(
            &binary,
            "kube-proxy",
            &netns,
            &format!("{cgroup}/node"),
            &[
                me.clone(),
                "kube-proxy".into(),
                format!("--config={d}/kube-proxy.yaml"),
                "--v=2".into(),
            ],
        )?;
        self.supervise(
            &binary,
            "kube-scheduler",
            "",
            "",
            &[
                me,
                "kube-scheduler".into(),
                format!("--kubeconfig={kubeconfig}"),
                format!("--authentication-kubeconfig={kubeconfig}"),
                format!("--authorization-kubeconfig={kubeconfig}"),
                "--leader-elect=false".into(),
                "--secure-port=0".into(),
            ],
        )?;
        self.wait_ready(plane)
    }

    fn supervise(
        &self,
        binary: &Path,
        name: &str,
        netns: &str,
        cgroup: &str,
        command: &[String],
    ) -> anyhow::Result<()> {
        let log = self.dir().join("logs").join(format!("{name}.log"));
        let mut cmd = Command::new(binary);
        cmd.arg("supervise").arg(format!("--log={}", log.display()));
        if !netns.is_empty() {
            cmd.arg(format!("--netns={netns}"));
        }
        if !cgroup.is_empty() {
            cmd.arg(format!("--cgroup={cgroup}"));
        }
        let child = cmd
            .arg("--")
            .args(command)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(
                self.dir().join("logs").join(format!("{name}.supervise.log")),
            )?)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        self.processes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((name.to_owned(), child));
        Ok(())
    }

    /// Fails with the log of a node process that has exited.
    fn check_running(&self) -> anyhow::Result<()> {
        let mut processes = self.processes.lock().unwrap_or_else(|p| p.into_inner());
        for (name, child) in processes.iter_mut() {
            if let Some(status) = child.try_wait()? {
                let name = name.clone();
                drop(processes);
                bail!("{name} exited ({status}); its log ends:\n{}", self.log_tail(&name, 30));
            }
        }
        Ok(())
    }

    fn wait_ready(&self, plane: &ControlPlane) -> anyhow::Result<()> {
        let config = plane.config().clone();
        let deadline = Instant::now() + READY_TIMEOUT;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        runtime.block_on(async {
            let client = Client::try_from(config)?;
            let nodes: Api<NodeObject> = Api::all(client);
            loop {
                self.check_running()?;
                let observed = match nodes.get_opt(NODE_NAME).await? {
                    None => "not registered yet".to_owned(),
                    Some(node) => {
                        let ready = node
                            .status
                            .as_ref()
                            .and_then(|s| s.conditions.as_ref())
                            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
                            .map(|c| format!("Ready={} ({})", c.status, c.message.clone().unwrap_or_default()));
                        let taints: Vec<String> = node
                            .spec
                            .as_ref()
                            .and_then(|s| s.taints.as_ref())
                            .map(|t| t.iter().map(|t| t.key.clone()).collect())
                            .unwrap_or_default();
                        if ready.as_deref().is_some_and(|r| r.starts_with("Ready=True")) && taints.is_empty() {
                            return Ok(());
                        }
                        format!("{ready:?}, taints {taints:?}")
                    }
                };
                if Instant::now() > deadline {
                    bail!(
                        "node {NODE_NAME} not Ready after {READY_TIMEOUT:?}: {observed}; the kubelet's log ends:\n{}",
                        self.log_tail("kubelet", 30)
                    );
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    }

    /// Stops the node's processes and removes everything it made; runs once.
    pub fn teardown(&self) {
        {
            let mut done = self.torn_down.lock().unwrap_or_else(|p| p.into_inner());
            if *done {
                return;
            }
            *done = true;
        }
        let mut processes = std::mem::take(&mut *self.processes.lock().unwrap_or_else(|p| p.into_inner()));
        // The kubelet first, so it starts nothing while containers are being stopped.
        processes.reverse();
        let pids: Vec<u32> = processes.iter().map(|(_, child)| child.id()).collect();
        signal("TERM", &pids);
        let deadline = Instant::now() + Duration::from_secs(5);
        for (_, child) in &mut processes {
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        self.network.remove();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// Removes what node `instance` made, whatever state it is in: every process in its cgroups,
/// the mounts under `dir`, its network namespace (bridge, veth pair, iptables rules), its
/// host route, its cgroups and `dir`.
fn teardown(instance: u8, dir: &Path) {
    let cgroup = cgroup_name(instance);
    let roots = cgroup_roots();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let mut pids = Vec::new();
        for root in &roots {
            collect_pids(&root.join(&cgroup), &mut pids);
        }
        if pids.is_empty() || Instant::now() > deadline {
            break;
        }
        signal("KILL", &pids);
        std::thread::sleep(Duration::from_millis(50));
    }
    for mount in mounts_under(dir) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&mount)
            .stderr(Stdio::null())
            .status();
    }
    let _ = Command::new("ip")
        .args(["netns", "del", &netns_name(instance)])
        .stderr(Stdio::null())
        .status();
    let _ = Command::new("ip")
        .args(["link", "del", &format!("orrh{instance}")])
        .stderr(Stdio::null())
        .status();
    for root in &roots {
        remove_cgroup(&root.join(&cgroup));
    }
    if mounts_under(dir).is_empty() {
        let _ = std::fs::remove_dir_all(dir);
    } else {
        eprintln!("warning: mounts remain under {}; left in place", dir.display());
    }
}

/// The mount points of the cgroup hierarchies (v1 and v2).
fn cgroup_roots() -> Vec<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let fstype = right.split_whitespace().next()?;
            let mount_point = left.split_whitespace().nth(4)?;
            (fstype == "cgroup" || fstype == "cgroup2").then(|| PathBuf::from(mount_point))
        })
        .collect()
}

/// Mount points at or under `dir`, deepest first.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut mounts: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|line| line.split_whitespace().nth(4).map(unescape_mount))
        .filter(|m| m.starts_with(dir))
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    mounts.dedup();
    mounts
}

/// mountinfo escapes spaces and the like as octal.
fn unescape_mount(field: &str) -> PathBuf {
    let mut out = Vec::new();
    let bytes = field.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && let Ok(v) = u8::from_str_radix(&field[i + 1..i + 4], 8)
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    PathBuf::from(String::from_utf8_lossy(&out).into_owned())
}

fn create_cgroup(root: &Path, name: &str) -> anyhow::Result<()> {
    let dir = root.join(name);
    match std::fs::create_dir(&dir) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(err) => return Err(err).with_context(|| format!("creating cgroup {}", dir.display())),
    }
    // cgroup v1's cpuset takes no process until its CPUs and memory nodes are set.
    for file in ["cpuset.cpus", "cpuset.mems"] {
        if std::fs::read_to_string(dir.join(file)).is_ok_and(|v| v.trim().is_empty()) {
            let inherited = std::fs::read_to_string(root.join(file)).unwrap_or_default();
            let _ = std::fs::write(dir.join(file), inherited.trim());
        }
    }
    Ok(())
}

fn collect_pids(dir: &Path, pids: &mut Vec<u32>) {
    if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        pids.extend(procs.lines().filter_map(|p| p.trim().parse::<u32>().ok()));
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                collect_pids(&entry.path(), pids);
            }
        }
    }
}

fn remove_cgroup(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup(&entry.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// The control plane with a real node, shared by the tests of this binary that run at the same
/// time: the first starts it, the last to let go of it removes it (so its removal never depends
/// on the process exiting cleanly). Where the node cannot start, the reason, remembered so that
/// later tests do not try again. With `ORRERY_REQUIRE_NODE=1` (CI) that is a panic instead.
pub fn acquire() -> Result<Arc<ControlPlane>, String> {
    static CURRENT: Mutex<Weak<ControlPlane>> = Mutex::new(Weak::new());
    static UNAVAILABLE: OnceLock<String> = OnceLock::new();
    let required = std::env::var("ORRERY_REQUIRE_NODE").is_ok_and(|v| v == "1");
    let refuse = |reason: &str| -> Result<Arc<ControlPlane>, String> {
        if required {
            panic!("ORRERY_REQUIRE_NODE=1 but the real node cannot start: {reason}");
        }
        Err(reason.to_owned())
    };
    if let Some(reason) = UNAVAILABLE.get() {
        return refuse(reason);
    }
    let mut current = CURRENT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(plane) = current.upgrade() {
        return Ok(plane);
    }
    let started = ControlPlane::with_node().and_then(|plane| {
        plane.install_crds_blocking()?;
        Ok(plane)
    });
    match started {
        Ok(plane) => {
            let plane = Arc::new(plane);
            *current = Arc::downgrade(&plane);
            Ok(plane)
        }
        Err(err) => {
            let reason = format!("{err:#}");
            // A machine that cannot run it will not later; a node that failed to start once
            // is not tried again by every test either.
            let _ = UNAVAILABLE.set(reason.clone());
            refuse(&reason)
        }
    }
}

/// Waits until `namespace`'s default ServiceAccount exists: with a real node the API server
/// admits no pod before it does.
pub async fn wait_default_service_account(client: &Client, namespace: &str) {
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    crate::poll_until(
        &format!("the default ServiceAccount of {namespace}"),
        crate::Deadline::default(),
        || async {
            match accounts.get_opt("default").await {
                Ok(Some(_)) => Ok(()),
                Ok(None) => Err("not there yet".to_owned()),
                Err(err) => Err(err.to_string()),
            }
        },
    )
    .await
}

/// `target/images/<controller>.tar`, as `images/build.sh` writes it; `None` (saying why) when
/// it is not there, which is a failure with `ORRERY_REQUIRE_NODE=1` (CI).
pub fn controller_image(controller: &str) -> Option<PathBuf> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/images")
        .join(format!("{controller}.tar"));
    if path.is_file() {
        return Some(path);
    }
    let reason = format!("{} is missing: run images/build.sh", path.display());
    if std::env::var("ORRERY_REQUIRE_NODE").is_ok_and(|v| v == "1") {
        panic!("ORRERY_REQUIRE_NODE=1 but {reason}");
    }
    eprintln!("skipped: {reason}");
    None
}
