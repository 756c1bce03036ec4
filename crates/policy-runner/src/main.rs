use clap::Parser;

/// Runs the policy pipelines of Applications: canary, health-gate, metric-analysis,
/// experiment, freeze, weight-cap, cel and webhook.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    runtime: orrery_runtime::RuntimeArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    orrery_runtime::run(policy_runner::NAME, cli.runtime, policy_runner::controller::run).await?;
    Ok(())
}
