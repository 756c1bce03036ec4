//! The chaos campaign: the mixed workload of `orrery_e2e::chaos` under controller kills (the
//! leader of a replicated controller among them), API server restarts, throttling, network
//! faults and watch expiry (etcd compacted while the controllers are cut off), each alone then
//! all at once, for `ORRERY_CHAOS_SECONDS` (default 900) of phases; then the invariants and the figures. The seed is printed;
//! `ORRERY_CHAOS_SEED` runs the same fault schedule again. Exits non-zero if an invariant broke.
//! `ORRERY_CHAOS_QUIET_SECONDS` (default 60) is the window in which the converged controllers
//! must not write; `ORRERY_CHAOS_CONVERGE_SECONDS` (default 300) how long everything may take to
//! converge once the faults stop. Controller logs: `RUST_LOG` (default errors only).

use std::time::Duration;

use orrery_e2e::bench::{env_usize, invoked_as_benchmark};
use orrery_e2e::chaos::{self, Settings};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if !invoked_as_benchmark() {
        println!("chaos campaign: run it with `just chaos`");
        return Ok(());
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error,kube_client=off")),
        )
        .init();
    let mut settings = Settings::new(Duration::from_secs(env_usize("ORRERY_CHAOS_SECONDS", 900) as u64));
    settings.quiet = Duration::from_secs(env_usize("ORRERY_CHAOS_QUIET_SECONDS", 60) as u64);
    settings.converge_limit = Duration::from_secs(env_usize("ORRERY_CHAOS_CONVERGE_SECONDS", 300) as u64);
    let report = chaos::run(settings).await?;
    report.print();
    let violations = report.violations();
    anyhow::ensure!(violations.is_empty(), "invariants broken:\n{}", violations.join("\n"));
    println!("\nevery invariant held");
    Ok(())
}
