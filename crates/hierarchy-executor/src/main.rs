use clap::Parser;

/// Runs the executors of a Project → Cluster → VirtualCluster → Application hierarchy.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    runtime: orrery_runtime::RuntimeArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    orrery_runtime::run(
        hierarchy_executor::controller::NAME,
        cli.runtime,
        hierarchy_executor::run,
    )
    .await?;
    Ok(())
}
