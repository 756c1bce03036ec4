use clap::Parser;

/// Fires Orrery Ignitors: NOW, at a time, or on a cron schedule.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    runtime: orrery_runtime::RuntimeArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    orrery_runtime::run(ignitor_scheduler::controller::NAME, cli.runtime, ignitor_scheduler::run).await?;
    Ok(())
}
