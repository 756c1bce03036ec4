use clap::Parser;
use hierarchy_executor::plan::tenancy::Protected;
use hierarchy_executor::registry::Registry;

/// Runs the executors of a Project → Cluster → VirtualCluster → Application hierarchy.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    runtime: orrery_runtime::RuntimeArgs,

    /// Namespaces no VirtualCluster may create or adopt, besides default, kube-system,
    /// kube-public, every kube-* one and the controller's own (its Lease's) namespace.
    #[arg(long, env = "ORRERY_PROTECTED_NAMESPACES", value_delimiter = ',')]
    protected_namespaces: Vec<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let own = cli.runtime.lease_namespace.clone();
    let protected = Protected::new(cli.protected_namespaces.into_iter().chain(own));
    orrery_runtime::run(hierarchy_executor::controller::NAME, cli.runtime, move |context| {
        hierarchy_executor::controller::run_with(context, Registry::builtin(), protected)
    })
    .await?;
    Ok(())
}
