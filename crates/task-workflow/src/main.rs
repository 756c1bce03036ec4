use clap::Parser;

/// Runs Orrery Tasks: a pod to completion when an Ignitor fires or another Task succeeds or fails.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    runtime: orrery_runtime::RuntimeArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    orrery_runtime::run(task_workflow::controller::NAME, cli.runtime, task_workflow::run).await?;
    Ok(())
}
