//! A controller binary run as replicas with leader election, as its Deployment runs it: each a
//! real process holding or waiting for the controller's Lease, killed with SIGKILL (as a node
//! or the OOM killer would) and started again like a restarted pod. Built by `cargo build
//! --workspace --bins`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use k8s_openapi::api::coordination::v1::Lease;
use kube::config::Kubeconfig;
use kube::{Api, Client};

use crate::free_port;
use crate::process::KilledOnDrop;
use crate::wait::{Deadline, until};

/// Whether `line` of a controller's `/metrics` counts writes: requests but GET, and but the
/// renewals of a leader's Lease (which go on at rest, by design).
pub fn is_write(line: &str) -> bool {
    line.starts_with("orrery_api_requests_total{")
        && !line.contains("method=\"GET\"")
        && !line.contains("resource=\"leases\"")
}

/// Where `cargo build --workspace --bins` puts the controller binaries.
pub fn built_binary(name: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
        .join("debug")
        .join(name);
    if !path.is_file() {
        bail!(
            "{} is missing: run `cargo build --workspace --bins` first",
            path.display()
        );
    }
    Ok(path)
}

/// `kubeconfig` (a file) rewritten to reach `server`, as `user` if given (impersonated, in
/// `system:authenticated`), written to `to`: how a controller process reaches the API server
/// through a [`crate::fault_proxy::FaultProxy`].
pub fn kubeconfig_through(kubeconfig: &Path, server: &str, user: Option<&str>, to: &Path) -> anyhow::Result<()> {
    let mut config = Kubeconfig::read_from(kubeconfig)?;
    for named in &mut config.clusters {
        if let Some(cluster) = named.cluster.as_mut() {
            cluster.server = Some(server.to_owned());
        }
    }
    for named in &mut config.auth_infos {
        if let (Some(auth), Some(user)) = (named.auth_info.as_mut(), user) {
            auth.impersonate = Some(user.to_owned());
            auth.impersonate_groups = Some(vec!["system:authenticated".to_owned()]);
        }
    }
    std::fs::write(to, serde_yaml::to_string(&config)?)?;
    Ok(())
}

/// The identity holding Lease `name` among `leases`, if any.
async fn holder(leases: &Api<Lease>, name: &str) -> Option<String> {
    let lease = leases.get_opt(name).await.ok()??;
    lease.spec?.holder_identity
}

/// What followed a leader's kill.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Takeover {
    /// No replica held the Lease yet: one was killed all the same.
    NoLeader,
    /// Another replica held the Lease after this long.
    After(Duration),
    /// None did within this long.
    NotWithin(Duration),
}

/// How long a killed leader may go unreplaced: the Lease lapses after its duration, but a
/// standby whose requests failed meanwhile (an API server away, throttled) backs off up to
/// 30 s between tries.
pub const TAKEOVER_LIMIT: Duration = Duration::from_secs(120);

struct Replica {
    identity: String,
    port: u16,
    /// `None` while killed, until started again.
    child: Option<KilledOnDrop>,
}

/// Replicas of one controller binary, each with its log in the state directory; killed when
/// dropped.
pub struct Replicas {
    name: &'static str,
    binary: PathBuf,
    kubeconfig: PathBuf,
    lease_namespace: String,
    lease_seconds: u64,
    dir: PathBuf,
    replicas: Vec<Replica>,
    leases: Api<Lease>,
}

impl std::fmt::Debug for Replicas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replicas")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Replicas {
    /// Starts `count` replicas of the binary `name` with `kubeconfig`, electing a leader on a
    /// Lease in `lease_namespace` that lapses after `lease_seconds`; `admin` reads the Lease.
    pub fn start(
        name: &'static str,
        count: usize,
        kubeconfig: &Path,
        lease_namespace: &str,
        lease_seconds: u64,
        dir: &Path,
        admin: &Client,
    ) -> anyhow::Result<Self> {
        let mut replicas = Replicas {
            name,
            binary: built_binary(name)?,
            kubeconfig: kubeconfig.to_owned(),
            lease_namespace: lease_namespace.to_owned(),
            lease_seconds,
            dir: dir.to_owned(),
            replicas: Vec::new(),
            leases: Api::namespaced(admin.clone(), lease_namespace),
        };
        for index in 0..count {
            let identity = format!("{name}-{index}");
            let port = free_port()?;
            replicas.replicas.push(Replica {
                identity,
                port,
                child: None,
            });
            replicas.spawn(index)?;
        }
        Ok(replicas)
    }

    fn log_path(&self, index: usize) -> PathBuf {
        self.dir.join(format!("{}.log", self.replicas[index].identity))
    }

    fn spawn(&mut self, index: usize) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(index))?;
        let replica = &self.replicas[index];
        let child = Command::new(&self.binary)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg(format!("--http-addr=127.0.0.1:{}", replica.port))
            .arg(format!("--lease-namespace={}", self.lease_namespace))
            .arg(format!("--identity={}", replica.identity))
            .arg(format!("--lease-duration-seconds={}", self.lease_seconds))
            .env("RUST_LOG", "warn")
            .env("RUST_BACKTRACE", "0")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.binary.display()))?;
        self.replicas[index].child = Some(child.into());
        Ok(())
    }

    /// The identity holding the controller's Lease, if any.
    pub async fn leader(&self) -> Option<String> {
        holder(&self.leases, self.name).await
    }

    /// Kills the leader of `replicas` with SIGKILL, waits (up to [`TAKEOVER_LIMIT`]) until
    /// another replica holds the Lease, and starts the killed one again after `pause`. With no
    /// leader yet, kills the first replica. The replicas are not locked while it waits, so a
    /// supervisor ([`Self::restart_exited`]) may go on restarting them.
    pub async fn kill_leader(replicas: &tokio::sync::Mutex<Self>, pause: Duration) -> anyhow::Result<Takeover> {
        let (leader, index, leases, name) = {
            let mut this = replicas.lock().await;
            let leader = this.leader().await;
            let index = leader
                .as_ref()
                .and_then(|l| this.replicas.iter().position(|r| &r.identity == l))
                .unwrap_or(0);
            // Dropped, it is killed with SIGKILL.
            drop(this.replicas[index].child.take());
            (leader, index, this.leases.clone(), this.name)
        };
        let killed = Instant::now();
        let takeover = match leader {
            Some(old) => {
                let taken = until(
                    "another replica to hold the Lease",
                    Deadline(TAKEOVER_LIMIT),
                    || async {
                        match holder(&leases, name).await {
                            Some(holder) if holder != old => Ok(()),
                            holder => Err(format!("held by {holder:?}")),
                        }
                    },
                )
                .await;
                match taken {
                    Ok(()) => Takeover::After(killed.elapsed()),
                    Err(_) => Takeover::NotWithin(TAKEOVER_LIMIT),
                }
            }
            None => Takeover::NoLeader,
        };
        tokio::time::sleep(pause).await;
        replicas.lock().await.spawn(index)?;
        Ok(takeover)
    }

    /// Starts again each replica that exited by itself, as the kubelet restarts a container;
    /// returns, for each, how it ended: its exit status and the last line of its log.
    pub fn restart_exited(&mut self) -> anyhow::Result<Vec<String>> {
        let mut exits = Vec::new();
        for index in 0..self.replicas.len() {
            let status = match self.replicas[index].child.as_mut().map(|child| child.try_wait()) {
                Some(Ok(Some(status))) => status,
                _ => continue,
            };
            let log = std::fs::read_to_string(self.log_path(index)).unwrap_or_default();
            // A binary returning an error prints it as its last `Error: ` line.
            let why = log
                .lines()
                .rev()
                .find(|l| l.starts_with("Error: "))
                .or_else(|| log.lines().rev().find(|l| !l.trim().is_empty()))
                .unwrap_or("")
                .trim();
            exits.push(format!("{} exited ({status}): {why}", self.replicas[index].identity));
            self.spawn(index)?;
        }
        Ok(exits)
    }

    /// Kills every replica.
    pub fn stop(&mut self) {
        for replica in &mut self.replicas {
            replica.child = None;
        }
    }

    /// Panics in the replicas' logs.
    pub fn panics(&self) -> Vec<String> {
        (0..self.replicas.len())
            .filter_map(|index| std::fs::read_to_string(self.log_path(index)).ok())
            .flat_map(|log| {
                log.lines()
                    .filter(|l| l.contains("panicked at"))
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// The writes ([`is_write`]) the running replicas have sent, from their `/metrics`.
    pub async fn writes(&self) -> u64 {
        let http = reqwest::Client::new();
        let mut writes = 0.0;
        for replica in self.replicas.iter().filter(|r| r.child.is_some()) {
            let url = format!("http://127.0.0.1:{}/metrics", replica.port);
            let Ok(response) = http.get(url).timeout(Duration::from_secs(5)).send().await else {
                continue;
            };
            let Ok(text) = response.text().await else { continue };
            writes += text
                .lines()
                .filter(|l| is_write(l))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>();
        }
        writes as u64
    }
}
