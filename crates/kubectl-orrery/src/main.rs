use clap::Parser;

/// Orrery from kubectl: a Project's tree, a Task's runs, fire an Ignitor, approve a stage,
/// and promote, abort, pause or resume a canary. Installed on PATH as `kubectl-orrery`, it
/// runs as `kubectl orrery ...`.
#[derive(Parser, Debug)]
#[command(version, about, name = "kubectl orrery")]
struct Cli {
    /// The namespace of namespaced resources (Tasks, Ignitors, Applications); the kubeconfig
    /// context's when absent.
    #[arg(short, long, global = true)]
    namespace: Option<String>,
    #[command(subcommand)]
    command: kubectl_orrery::Command,
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let cli = Cli::parse();
    if let Err(err) = run(cli).await {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = kube::Config::infer()
        .await
        .map_err(|err| anyhow::anyhow!("no cluster to talk to ({err}); set KUBECONFIG or use a kubeconfig context"))?;
    let namespace = cli.namespace.unwrap_or_else(|| config.default_namespace.clone());
    let client = kube::Client::try_from(config)?;
    print!("{}", kubectl_orrery::execute(client, &namespace, &cli.command).await?);
    Ok(())
}
