//! Command-line arguments every controller binary takes (flattened into its own clap struct).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

/// Arguments shared by every Orrery controller.
#[derive(Args, Debug, Clone)]
pub struct RuntimeArgs {
    /// Kubeconfig file; without it, $KUBECONFIG, ~/.kube/config, or the in-cluster config.
    #[arg(long, global = true)]
    pub kubeconfig: Option<PathBuf>,

    /// Kubeconfig context to use instead of the current one.
    #[arg(long, global = true)]
    pub context: Option<String>,

    /// Watch only this namespace (namespaced kinds); all namespaces by default.
    #[arg(long, env = "ORRERY_WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,

    /// Log format; the level comes from RUST_LOG (default `info`).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "ORRERY_LOG_FORMAT")]
    pub log_format: LogFormat,

    /// Address of the HTTP server for /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:8080", env = "ORRERY_HTTP_ADDR")]
    pub http_addr: SocketAddr,

    /// Run only while holding the controller's Lease, so replicas stand by.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,

    /// Namespace of the Lease; the kubeconfig's (or the pod's) namespace by default.
    #[arg(long, env = "POD_NAMESPACE")]
    pub lease_namespace: Option<String>,

    /// Identity written into the Lease; the pod name, or host name and process id.
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,

    /// Seconds a Lease stays valid without renewal; a standby takes over after this.
    #[arg(long, default_value_t = 15)]
    pub lease_duration_seconds: u64,

    /// Client-side limit on API requests per second (sustained); 0, the default, sets none:
    /// the API server's Priority and Fairness paces every client, and `--concurrency` bounds
    /// the requests in flight.
    #[arg(long, default_value_t = 0.0)]
    pub qps: f64,

    /// Client-side limit on API requests in a burst, with `--qps`.
    #[arg(long, default_value_t = 400)]
    pub burst: u32,

    /// Reconciles run at once, per controller. Each holds an API connection while it writes;
    /// more rarely helps, as the request limit above is shared.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: u16,

    /// Seconds to let reconciles finish after SIGTERM before exiting anyway.
    #[arg(long, default_value_t = 20)]
    pub shutdown_timeout_seconds: u64,
}

impl RuntimeArgs {
    /// Grace period after SIGTERM.
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs(self.shutdown_timeout_seconds)
    }
}

/// How logs are written.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}
