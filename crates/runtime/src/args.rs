//! Command-line arguments every controller binary takes (flattened into its own clap struct).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

use crate::egress::AllowedEgress;

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

    /// Where webhook policies, metric analysis and http-post may send requests: CIDRs or
    /// addresses, comma-separated. Empty (the default): anywhere but loopback, link-local,
    /// unspecified and multicast addresses and the API server's; otherwise only inside these.
    /// Those guarded addresses open only to an entry within their range (the API server's: its
    /// exact address), e.g. `169.254.169.254/32`, never to a wider one such as `0.0.0.0/0`.
    #[arg(long, env = "ORRERY_ALLOWED_EGRESS", default_value = "")]
    pub allowed_egress: AllowedEgress,

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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        runtime: RuntimeArgs,
    }

    #[test]
    fn allowed_egress_is_empty_by_default_and_takes_a_comma_separated_list() {
        let none = Cli::try_parse_from(["controller"]).unwrap();
        assert!(none.runtime.allowed_egress.0.is_empty());
        let empty = Cli::try_parse_from(["controller", "--allowed-egress="]).unwrap();
        assert!(empty.runtime.allowed_egress.0.is_empty());
        let listed = Cli::try_parse_from(["controller", "--allowed-egress=10.0.0.0/8,169.254.169.254"]).unwrap();
        let shown: Vec<String> = listed
            .runtime
            .allowed_egress
            .0
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(shown, ["10.0.0.0/8", "169.254.169.254/32"]);
        assert!(Cli::try_parse_from(["controller", "--allowed-egress=prometheus"]).is_err());
    }
}
