//! `spate-sim`: runs seeds of the deterministic cluster simulation and reports violations.
//!
//! `spate-sim --seeds 1000 [--nodes 5]` runs seeds 1..=1000 over the cores and prints a
//! summary; for a failing seed it prints the command that replays it with its trace:
//! `spate-sim --seed S --trace`. Exit code 0 only when every seed passed.

use clap::Parser;
use spate_sim::{run, Options, Outcome};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

#[derive(Parser, Debug, Clone)]
#[command(about = "Deterministic simulation of Spate clusters under faults")]
struct Args {
    /// How many seeds to run (from --first).
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    /// The first seed.
    #[arg(long, default_value_t = 1)]
    first: u64,
    /// Run exactly this seed (with --trace: print its trace and node logs).
    #[arg(long)]
    seed: Option<u64>,
    /// Nodes per cluster (3 or 5).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(3..=5))]
    nodes: u64,
    /// Seconds of simulated faults per seed.
    #[arg(long, default_value_t = 20)]
    faults_secs: u64,
    /// Print the trace (and, with RUST_LOG, the nodes' logs).
    #[arg(long)]
    trace: bool,
    /// Parallel simulations [number of cores].
    #[arg(long)]
    jobs: Option<usize>,
}

fn options(args: &Args, seed: u64) -> Options {
    let mut o = Options::new(seed, usize::try_from(args.nodes).unwrap_or(3));
    o.faults_for = Duration::from_secs(args.faults_secs);
    o.verbose = args.trace;
    o
}

fn replay(args: &Args, seed: u64) -> String {
    format!(
        "cargo run --release -p spate-sim -- --seed {seed} --nodes {} --faults-secs {} --trace",
        args.nodes, args.faults_secs
    )
}

fn main() {
    let args = Args::parse();
    if args.trace {
        tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off")),
            )
            .with_timer(SimTime)
            .with_ansi(false)
            .with_writer(std::io::stderr)
            .init();
    }
    let seeds: Vec<u64> = match args.seed {
        Some(s) => vec![s],
        None => (args.first..args.first + args.seeds).collect(),
    };
    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1)
        .min(seeds.len().max(1));
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let seeds = Arc::new(seeds);
    let (tx, rx) = mpsc::channel::<Outcome>();
    let workers: Vec<_> = (0..jobs)
        .map(|_| {
            let (next, seeds, tx) = (next.clone(), seeds.clone(), tx.clone());
            let args = args.clone();
            std::thread::Builder::new()
                .stack_size(64 << 20)
                .spawn(move || loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(&seed) = seeds.get(usize::try_from(i).unwrap_or(usize::MAX)) else {
                        return;
                    };
                    if tx.send(run(&options(&args, seed))).is_err() {
                        return;
                    }
                })
                .expect("spawn a simulation thread")
        })
        .collect();
    drop(tx);
    let (mut passed, mut failed) = (0u64, Vec::new());
    let (mut events, mut acked, mut simulated) = (0usize, 0usize, Duration::ZERO);
    for outcome in rx {
        events += outcome.trace.len();
        acked += outcome.acked;
        simulated += outcome.simulated;
        if args.trace {
            for line in &outcome.trace {
                println!("{line}");
            }
        }
        if outcome.violations.is_empty() {
            passed += 1;
            if args.seed.is_some() {
                println!(
                    "seed {}: PASS ({} acknowledged, {} events, trace hash {:016x})",
                    outcome.seed,
                    outcome.acked,
                    outcome.trace.len(),
                    outcome.trace_hash
                );
            }
        } else {
            println!("seed {}: FAIL", outcome.seed);
            for v in &outcome.violations {
                println!("  {v}");
            }
            println!("  replay: {}", replay(&args, outcome.seed));
            failed.push(outcome.seed);
        }
    }
    for w in workers {
        let _ = w.join();
    }
    let total = passed + failed.len() as u64;
    let wall = started.elapsed().as_secs_f64();
    println!(
        "spate-sim: {total} seeds, {passed} passed, {} failed; {:.2} seeds/s on {jobs} threads, {} events and {} acknowledged writes per seed, {:.0} simulated seconds per seed",
        failed.len(),
        total as f64 / wall.max(1e-9),
        events / usize::try_from(total.max(1)).unwrap_or(1),
        acked / usize::try_from(total.max(1)).unwrap_or(1),
        simulated.as_secs_f64() / total.max(1) as f64,
    );
    if !failed.is_empty() {
        println!("failing seeds: {failed:?}");
        std::process::exit(1);
    }
}

/// Node log lines carry the simulated time (seconds since the simulation began), the time the
/// trace shows.
struct SimTime;

impl tracing_subscriber::fmt::time::FormatTime for SimTime {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        let elapsed = turmoil::sim_elapsed().unwrap_or_default();
        write!(w, "{:9.3}", elapsed.as_secs_f64())
    }
}
