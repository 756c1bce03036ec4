use clap::Parser;

/// Runs Orrery Tasks: a pod to completion when an Ignitor fires or another Task succeeds or fails.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    runtime: orrery_runtime::RuntimeArgs,
}

/// jemalloc rather than the C library's malloc: with thousands of Tasks cached, glibc's malloc
/// holds megabytes more heap (free but not returned to the system).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    orrery_runtime::run(task_workflow::controller::NAME, cli.runtime, task_workflow::run).await?;
    Ok(())
}
