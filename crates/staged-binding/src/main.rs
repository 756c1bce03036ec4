use clap::Parser;

/// Moves workloads through stages of clusters (KubeStellar's StagedBindingPolicy).
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    runtime: orrery_runtime::RuntimeArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    orrery_runtime::run(staged_binding::controller::NAME, cli.runtime, staged_binding::run).await?;
    Ok(())
}
