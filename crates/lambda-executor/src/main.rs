use clap::Parser;

/// Runs the `webhook` and `template` executors of Projects, Clusters, VirtualClusters and
/// Applications.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    runtime: orrery_runtime::RuntimeArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    orrery_runtime::run(lambda_executor::NAME, cli.runtime, lambda_executor::run).await?;
    Ok(())
}
