//! What the benchmarks in `e2e/benches/` share: controllers run as their release binaries,
//! read for memory and API requests, and figures printed as percentiles.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::ControlPlane;
use crate::process::KilledOnDrop;

/// Starts a control plane with kube-controller-manager and every CRD installed, says how long
/// it took, and returns it with an admin client.
pub async fn control_plane() -> anyhow::Result<(ControlPlane, kube::Client)> {
    let plane = tokio::task::spawn_blocking(ControlPlane::start).await??;
    plane.install_crds_blocking()?;
    let client = plane.client().await;
    println!(
        "control plane up in {:.1}s (kube-apiserver + etcd + kube-controller-manager)",
        plane.startup.as_secs_f64()
    );
    Ok((plane, client))
}

/// A number from the environment (`ORRERY_BENCH_*`), or `default`.
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// `cargo test --all-targets` runs bench targets once as tests; benchmarks take minutes and
/// measure rather than check, so they run only under `cargo bench` (which passes `--bench`).
pub fn invoked_as_benchmark() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// A controller binary running against the control plane as a user would run it (default
/// settings, leader election off so Lease renewals do not count as writes); killed on drop.
#[derive(Debug)]
pub struct Controller {
    child: KilledOnDrop,
    port: u16,
}

impl Controller {
    /// Starts `target/release/<binary>` (or `$ORRERY_BIN_DIR/<binary>`), watching `namespace`
    /// or, with `None`, every namespace. Its log goes to the control plane's directory.
    pub fn start(binary: &str, plane: &ControlPlane, namespace: Option<&str>) -> anyhow::Result<Self> {
        let dir = std::env::var("ORRERY_BIN_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release"));
        let path = dir.join(binary);
        let port = crate::free_port()?;
        let log = std::fs::File::create(plane.dir().join(format!("{binary}.log")))?;
        let mut command = Command::new(&path);
        command
            .arg("--leader-elect=false")
            .arg("--kubeconfig")
            .arg(plane.kubeconfig_path())
            .arg("--http-addr")
            .arg(format!("127.0.0.1:{port}"));
        if let Some(namespace) = namespace {
            command.args(["--watch-namespace", namespace]);
        }
        let child = command
            .env("RUST_LOG", "warn")
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("{} (run `just bench`, which builds it)", path.display()))?;
        Ok(Controller {
            child: child.into(),
            port,
        })
    }

    /// Resident memory (VmRSS), in MiB.
    pub fn rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<f64>().ok())
            .map(|kb| kb / 1024.0)
            .unwrap_or(f64::NAN)
    }

    /// API requests this controller sent, by HTTP method, from its /metrics.
    pub fn requests(&self) -> HashMap<String, f64> {
        let mut out = HashMap::new();
        for line in self
            .metrics()
            .lines()
            .filter(|l| l.starts_with("orrery_api_requests_total{"))
        {
            if let (Some(method), Some(value)) = (line.split('"').nth(1), line.rsplit(' ').next()) {
                out.insert(method.to_owned(), value.parse().unwrap_or(0.0));
            }
        }
        out
    }

    /// Its /metrics text (empty when it cannot be read).
    fn metrics(&self) -> String {
        let mut text = String::new();
        if let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
            let _ = stream.write_all(b"GET /metrics HTTP/1.0\r\n\r\n");
            let _ = stream.read_to_string(&mut text);
        }
        text
    }

    /// API requests its client-side rate limit has delayed, from its /metrics.
    pub fn throttled(&self) -> f64 {
        self.metrics()
            .lines()
            .filter(|l| l.starts_with("orrery_api_requests_throttled_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Reconciles that failed on a conflict (a write under a stale resourceVersion) and were
    /// retried, from its /metrics.
    pub fn conflicts(&self) -> f64 {
        self.metrics()
            .lines()
            .filter(|l| l.starts_with("orrery_reconcile_failures_total{") && l.contains("reason=\"Conflict\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Reconciles this controller has run, from its /metrics.
    pub fn reconciles(&self) -> f64 {
        self.metrics()
            .lines()
            .filter(|l| l.starts_with("orrery_reconcile_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// API writes (every request but GET) this controller has sent.
    pub fn writes(&self) -> f64 {
        self.requests()
            .iter()
            .filter(|(m, _)| m.as_str() != "GET")
            .map(|(_, v)| v)
            .sum()
    }
}

impl Controller {
    /// Prints its memory holding `what`, then the writes it sends over `at_rest` while nothing
    /// happens.
    pub async fn report_at_rest(&self, name: &str, what: &str, at_rest: Duration) {
        println!("\nmemory (VmRSS) holding {what}: {name} {:.1} MiB", self.rss_mib());
        let before = self.writes();
        tokio::time::sleep(at_rest).await;
        println!(
            "API writes while nothing happens, over {at_rest:?}: {name} {}",
            self.writes() - before
        );
    }

    /// Waits until the controller has written nothing for `quiet`: it has caught up with
    /// everything so far. How long that took.
    pub async fn settle(&self, quiet: Duration, limit: Duration) -> anyhow::Result<Duration> {
        let start = Instant::now();
        let mut last = (self.writes(), Instant::now());
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let writes = self.writes();
            if writes != last.0 {
                last = (writes, Instant::now());
            } else if last.1.elapsed() >= quiet {
                return Ok(start.elapsed());
            }
            anyhow::ensure!(start.elapsed() < limit, "still writing after {limit:?}");
        }
    }
}

/// Latencies in milliseconds as "p50 … p99 … max … (n=…)".
pub fn percentiles(mut samples: Vec<f64>) -> String {
    if samples.is_empty() {
        return "no samples".into();
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    let at = |p: f64| samples[((samples.len() - 1) as f64 * p).round() as usize];
    format!(
        "p50 {:7.1} ms   p99 {:7.1} ms   max {:7.1} ms   (n={})",
        at(0.5),
        at(0.99),
        at(1.0),
        samples.len()
    )
}

/// Polls `done` every 20 ms until it holds; how long that took, or an error after `limit`.
pub async fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let check = || std::future::ready(if done() { Ok(()) } else { Err("not yet".to_owned()) });
    crate::wait::until_every(what, crate::Deadline(limit), Duration::from_millis(20), check).await?;
    Ok(start.elapsed())
}
