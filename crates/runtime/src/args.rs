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

    /// Watch only this namespace: the namespaced kinds in it, and none of the cluster-scoped
    /// kinds a controller reconciles; all namespaces by default (or when empty).
    #[arg(long, env = "ORRERY_WATCH_NAMESPACE", value_parser = parse_namespace)]
    pub watch_namespace: Option<WatchNamespace>,

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

    /// Reconciles run at once by each controller of this binary: each kind it reconciles
    /// (e.g. Task and TaskRun) has its own queue, of this many. Each reconcile holds an API
    /// connection while it writes; more rarely helps, as the request limit above is shared.
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

    /// The one namespace to watch (`--watch-namespace`), or `None` for all of them.
    pub fn namespace(&self) -> Option<String> {
        self.watch_namespace.as_ref().and_then(|n| n.0.clone())
    }
}

/// `--watch-namespace`: a namespace name, or empty for all namespaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchNamespace(pub Option<String>);

/// A namespace's name is a DNS label: at most 63 lowercase letters, digits and '-', starting
/// and ending with a letter or digit. Empty means every namespace.
fn parse_namespace(value: &str) -> Result<WatchNamespace, String> {
    if value.is_empty() {
        return Ok(WatchNamespace(None));
    }
    let alphanumeric = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    let valid = value.len() <= 63
        && value.chars().all(|c| alphanumeric(c) || c == '-')
        && value.starts_with(alphanumeric)
        && value.ends_with(alphanumeric);
    if valid {
        Ok(WatchNamespace(Some(value.to_owned())))
    } else {
        Err(format!(
            "{value:?} is not a namespace name (at most 63 lowercase letters, digits and '-', \
             starting and ending with a letter or digit)"
        ))
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

    #[test]
    fn watch_namespace_is_a_namespace_name_or_empty_for_all() {
        let namespace = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("controller").chain(args.iter().copied()))
                .map(|cli| cli.runtime.namespace())
                .map_err(|err| err.to_string())
        };
        assert_eq!(namespace(&[]), Ok(None));
        assert_eq!(namespace(&["--watch-namespace="]), Ok(None));
        assert_eq!(namespace(&["--watch-namespace", "team-a"]), Ok(Some("team-a".into())));
        for bad in ["Team-A", "-a", "a-", "a.b", &"a".repeat(64)] {
            let refused = namespace(&[&format!("--watch-namespace={bad}")]).unwrap_err();
            assert!(refused.contains("is not a namespace name"), "{refused}");
        }
    }

    #[test]
    fn concurrency_says_it_is_per_controller() {
        use clap::CommandFactory;
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("each controller of this binary"), "{help}");
        assert!(Cli::try_parse_from(["controller", "--concurrency=0"]).is_err());
    }
}
