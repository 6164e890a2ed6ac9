//! The `spate` binary: `spate serve` runs a node, `spate dev` a local cluster; `spate topic`
//! and `spate group` manage topics and inspect consumer groups on any Kafka-compatible broker.

mod cli;
mod cluster;
mod dev;
#[cfg(test)]
mod fake_broker;
mod group;
mod topic;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "spate",
    version,
    about = "An event-streaming platform that speaks the Kafka protocol"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node (single-node cluster by default), data in ./spate-data.
    Serve(ServeArgs),
    /// A local cluster: N `spate serve` processes on 127.0.0.1, data in ./spate-dev.
    Dev(dev::DevArgs),
    /// Topics: create, list, describe, delete, alter configs.
    #[command(subcommand)]
    Topic(topic::TopicCommand),
    /// Consumer groups: list them, describe one with its members and lag.
    #[command(subcommand)]
    Group(group::GroupCommand),
    /// Cluster health: nodes, controller quorum, partitions (exits 2 when unhealthy).
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// TOML file of settings, named as Kafka names them (e.g. "log.retention.ms" = 3600000).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Directory for metadata and partition logs (setting data.dir).
    #[arg(long)]
    data_dir: Option<String>,
    /// Address of the Kafka listener (setting kafka.listen).
    #[arg(long)]
    kafka_listen: Option<String>,
    /// Address of the HTTP listener for /metrics and /health (setting http.listen).
    #[arg(long)]
    http_listen: Option<String>,
    /// This node's id (setting node.id).
    #[arg(long)]
    node_id: Option<String>,
    /// The controller voters, id@host:port,... the same on every node (setting
    /// controller.quorum.voters).
    #[arg(long)]
    controller_voters: Option<String>,
    /// Address of the controller listener (setting controller.listen).
    #[arg(long)]
    controller_listen: Option<String>,
    /// Any setting, e.g. --set num.partitions=3 (repeatable; beats the file and environment).
    #[arg(long = "set", value_name = "NAME=VALUE")]
    set: Vec<String>,
}

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SPATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=error"));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => match serve(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Dev(args) => match dev::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Topic(command) => print(topic::run(command)),
        Command::Group(command) => print(group::run(command)),
        Command::Cluster(command) => cluster::run(command),
    }
}

/// Prints a command's output on stdout, or its error on stderr.
fn print(result: anyhow::Result<String>) -> ExitCode {
    match result {
        Ok(out) => {
            use std::io::Write;
            // A closed stdout (`| head`) is not worth a panic.
            let _ = std::io::stdout().lock().write_all(out.as_bytes());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut overrides = Vec::new();
    for (name, value) in [
        ("data.dir", args.data_dir),
        ("kafka.listen", args.kafka_listen),
        ("http.listen", args.http_listen),
        ("node.id", args.node_id),
        ("controller.quorum.voters", args.controller_voters),
        ("controller.listen", args.controller_listen),
    ] {
        if let Some(value) = value {
            overrides.push((name.to_owned(), value));
        }
    }
    for pair in args.set {
        let (name, value) = pair
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--set expects NAME=VALUE, got '{pair}'"))?;
        overrides.push((name.trim().to_owned(), value.trim().to_owned()));
    }
    let config =
        spate_server::ServerConfig::load(args.config.as_deref(), std::env::vars(), &overrides)?;
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(spate_server::run(config, Some(metrics)));
    // A node that halted on a storage failure must exit even if a blocking disk call hangs.
    runtime.shutdown_timeout(std::time::Duration::from_secs(10));
    result
}
