use clap::Parser;

/// Runs the `example` executor of Applications.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    runtime: orrery_runtime::RuntimeArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    orrery_runtime::run(example_executor::NAME, cli.runtime, example_executor::run).await?;
    Ok(())
}
