//! `spate dev --nodes N`: a local cluster in one command. Starts N `spate serve` processes on
//! 127.0.0.1, every one a controller voter and a broker, with data under `<dir>/node-N` and
//! each node's log in `<dir>/node-N.log`; prints the bootstrap string; on Ctrl-C (or SIGTERM)
//! stops the nodes one at a time, the highest id first, each with a controlled shutdown, so
//! leadership moves to the nodes still running. A second run reuses the data.
//!
//! Ports: node `i` (1-based) listens for Kafka clients on `kafka_port + i - 1`, for HTTP on
//! `http_port + i - 1` and for controllers on `controller_port + i - 1`.
//!
//! The nodes run in their own process group, so the terminal's Ctrl-C reaches only this
//! command, which then stops them in order.

use anyhow::{bail, Context};
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Largest cluster `spate dev` starts (the controller quorum's voters).
pub const NODES_MAX: u8 = 5;
/// How long the nodes get to become healthy before the command gives up.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long one node gets to stop cleanly before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(40);

#[derive(clap::Args, Debug)]
pub struct DevArgs {
    /// Number of nodes (1 to 5).
    #[arg(long, default_value_t = 3)]
    nodes: u8,
    /// Directory for the nodes' data (node-N/) and logs (node-N.log).
    #[arg(long, default_value = "./spate-dev")]
    dir: PathBuf,
    /// Kafka port of node 1; node N uses this plus N-1.
    #[arg(long, default_value_t = 9092)]
    kafka_port: u16,
    /// HTTP port of node 1 (/metrics, /health).
    #[arg(long, default_value_t = 9644)]
    http_port: u16,
    /// Controller port of node 1.
    #[arg(long, default_value_t = 19092)]
    controller_port: u16,
    /// A setting for every node, e.g. --set num.partitions=6 (repeatable).
    #[arg(long = "set", value_name = "NAME=VALUE")]
    set: Vec<String>,
}

struct Node {
    id: u8,
    kafka: String,
    http: String,
    log: PathBuf,
    child: Child,
}

fn port(base: u16, id: u8) -> anyhow::Result<u16> {
    base.checked_add(u16::from(id) - 1)
        .context("port out of range: choose a lower base port")
}

/// The settings every node of an `n`-node dev cluster gets, before the user's own.
fn cluster_settings(args: &DevArgs, id: u8) -> anyhow::Result<Vec<String>> {
    let voters = (1..=args.nodes)
        .map(|i| Ok(format!("{i}@127.0.0.1:{}", port(args.controller_port, i)?)))
        .collect::<anyhow::Result<Vec<_>>>()?
        .join(",");
    // min.insync.replicas is left to the broker's default: 2 for topics of three replicas.
    let rf = args.nodes.min(3);
    let mut set = vec![
        format!("node.id={id}"),
        format!("controller.quorum.voters={voters}"),
        format!(
            "controller.listen=127.0.0.1:{}",
            port(args.controller_port, id)?
        ),
        format!("default.replication.factor={rf}"),
        format!("offsets.topic.replication.factor={rf}"),
    ];
    set.extend(args.set.iter().cloned());
    Ok(set)
}

pub fn run(args: DevArgs) -> anyhow::Result<()> {
    if !(1..=NODES_MAX).contains(&args.nodes) {
        bail!(
            "--nodes must be between 1 and {NODES_MAX}, got {}",
            args.nodes
        );
    }
    for pair in &args.set {
        if !pair.contains('=') {
            bail!("--set expects NAME=VALUE, got '{pair}'");
        }
    }
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("cannot create {}", args.dir.display()))?;
    let exe = std::env::current_exe().context("cannot find the spate executable")?;
    let mut nodes = Vec::new();
    for id in 1..=args.nodes {
        match start(&exe, &args, id) {
            Ok(node) => nodes.push(node),
            Err(e) => {
                stop_all(&mut nodes);
                return Err(e);
            }
        }
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let bootstrap = nodes
        .iter()
        .map(|n| n.kafka.clone())
        .collect::<Vec<_>>()
        .join(",");
    println!("spate dev: {} node(s) starting", nodes.len());
    for n in &nodes {
        println!(
            "  node {}: kafka {}  http http://{}  log {}",
            n.id,
            n.kafka,
            n.http,
            n.log.display()
        );
    }
    let ready = runtime.block_on(async {
        tokio::select! {
            r = wait_ready(&mut nodes) => Some(r),
            _ = stop_signal() => None,
        }
    });
    match ready {
        Some(Ok(())) => {
            println!("spate dev: cluster ready; bootstrap servers: {bootstrap}");
            println!("spate dev: Ctrl-C stops every node");
            let _ = std::io::stdout().flush();
        }
        Some(Err(e)) => {
            stop_all(&mut nodes);
            return Err(e);
        }
        None => {
            println!("spate dev: stopping");
            stop_all(&mut nodes);
            return Ok(());
        }
    }
    runtime.block_on(async {
        let mut watch = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = stop_signal() => break,
                _ = watch.tick() => {
                    for n in &mut nodes {
                        if let Ok(Some(status)) = n.child.try_wait() {
                            eprintln!("spate dev: node {} exited ({status}); see {}", n.id, n.log.display());
                        }
                    }
                    nodes.retain_mut(|n| !matches!(n.child.try_wait(), Ok(Some(_))));
                    if nodes.is_empty() {
                        break;
                    }
                }
            }
        }
    });
    println!("spate dev: stopping");
    stop_all(&mut nodes);
    println!("spate dev: stopped");
    Ok(())
}

fn start(exe: &Path, args: &DevArgs, id: u8) -> anyhow::Result<Node> {
    let kafka = format!("127.0.0.1:{}", port(args.kafka_port, id)?);
    let http = format!("127.0.0.1:{}", port(args.http_port, id)?);
    let data = args.dir.join(format!("node-{id}"));
    let log = args.dir.join(format!("node-{id}.log"));
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .with_context(|| format!("cannot open {}", log.display()))?;
    let err = out.try_clone()?;
    let mut command = Command::new(exe);
    command
        .arg("serve")
        .arg("--data-dir")
        .arg(&data)
        .arg("--kafka-listen")
        .arg(&kafka)
        .arg("--http-listen")
        .arg(&http);
    for setting in cluster_settings(args, id)? {
        command.arg("--set").arg(setting);
    }
    let child = command
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .with_context(|| format!("cannot start node {id}"))?;
    Ok(Node {
        id,
        kafka,
        http,
        log,
        child,
    })
}

/// Resolves on Ctrl-C or SIGTERM.
async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
}

/// Waits until every node answers `/health` with 200.
async fn wait_ready(nodes: &mut [Node]) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    for n in nodes.iter_mut() {
        loop {
            if let Ok(Some(status)) = n.child.try_wait() {
                bail!(
                    "node {} exited ({status}) before becoming ready; see {}",
                    n.id,
                    n.log.display()
                );
            }
            if healthy(&n.http) {
                break;
            }
            if Instant::now() >= deadline {
                bail!(
                    "node {} did not become ready within {} s; see {}",
                    n.id,
                    READY_TIMEOUT.as_secs(),
                    n.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}

/// One plain HTTP/1.1 GET of /health.
fn healthy(addr: &str) -> bool {
    let Ok(sock) = addr.parse() else { return false };
    let Ok(mut stream) = std::net::TcpStream::connect_timeout(&sock, Duration::from_secs(1)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = format!("GET /health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.1 200")
}

/// Stops the nodes one at a time, highest id first, each with SIGTERM (a controlled shutdown
/// that moves its leaderships to the nodes still running), killing one that does not stop.
fn stop_all(nodes: &mut Vec<Node>) {
    while let Some(mut n) = nodes.pop() {
        if let Ok(Some(_)) = n.child.try_wait() {
            continue;
        }
        let pid = n.child.id().to_string();
        let _ = Command::new("kill").arg("-TERM").arg(&pid).status();
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            match n.child.try_wait() {
                Ok(Some(status)) => {
                    println!("spate dev: node {} stopped ({status})", n.id);
                    break;
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                _ => {
                    eprintln!("spate dev: node {} did not stop in time; killing it", n.id);
                    let _ = n.child.kill();
                    let _ = n.child.wait();
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(nodes: u8) -> DevArgs {
        DevArgs {
            nodes,
            dir: PathBuf::from("/tmp/x"),
            kafka_port: 9092,
            http_port: 9644,
            controller_port: 19092,
            set: vec!["num.partitions=6".into()],
        }
    }

    #[test]
    fn every_node_gets_the_same_voters_and_its_own_listener() {
        let a = args(3);
        let two = cluster_settings(&a, 2).expect("settings");
        assert!(two.contains(&"node.id=2".to_owned()));
        assert!(two.contains(
            &"controller.quorum.voters=1@127.0.0.1:19092,2@127.0.0.1:19093,3@127.0.0.1:19094"
                .to_owned()
        ));
        assert!(two.contains(&"controller.listen=127.0.0.1:19093".to_owned()));
        assert!(two.contains(&"default.replication.factor=3".to_owned()));
        assert!(
            !two.iter().any(|s| s.starts_with("min.insync.replicas=")),
            "left to the broker's default (2 for three replicas)"
        );
        assert_eq!(
            two.last().map(String::as_str),
            Some("num.partitions=6"),
            "the user's settings win"
        );
        let one = cluster_settings(&args(1), 1).expect("settings");
        assert!(one.contains(&"default.replication.factor=1".to_owned()));
    }

    #[test]
    fn node_counts_and_ports_are_checked() {
        assert!(run(args(0)).is_err());
        assert!(run(args(6)).is_err());
        assert!(port(u16::MAX, 2).is_err());
        assert_eq!(port(9092, 3).expect("port"), 9094);
    }
}
