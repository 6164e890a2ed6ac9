//! `spate-sim`: runs seeds of the deterministic cluster simulation and reports violations.
//!
//! `spate-sim --seeds 1000 [--nodes 5]` runs seeds 1..=1000, each in a process of its own, as
//! many at once as there are cores, and prints a summary; for a failing seed it prints its
//! violations and the command that replays it with its trace: `spate-sim --seed S --trace`.
//! Exit code 0 only when every seed passed.

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
    /// Seeds run at once, each in its own process [number of cores].
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

/// The line a single seed ends with, which a batch reads back from the seed's process.
fn verdict_line(outcome: &Outcome) -> String {
    format!(
        "seed {}: {} ({} acknowledged, {} events, {:.1} simulated seconds, trace hash {:016x})",
        outcome.seed,
        if outcome.violations.is_empty() {
            "PASS"
        } else {
            "FAIL"
        },
        outcome.acked,
        outcome.trace.len(),
        outcome.simulated.as_secs_f64(),
        outcome.trace_hash
    )
}

/// What a batch needs of a seed's verdict line: passed, acknowledged, events, simulated secs.
fn parse_verdict(line: &str) -> Option<(bool, u64, u64, f64)> {
    let (head, rest) = line.split_once(" (")?;
    let passed = head.ends_with(": PASS");
    let mut fields = rest.split(", ");
    let mut number =
        |suffix: &str| -> Option<f64> { fields.next()?.strip_suffix(suffix)?.trim().parse().ok() };
    let acked = number(" acknowledged")?;
    let events = number(" events")?;
    let simulated = number(" simulated seconds")?;
    Some((passed, acked as u64, events as u64, simulated))
}

fn main() {
    let args = Args::parse();
    match args.seed {
        Some(seed) => single(&args, seed),
        None => batch(&args),
    }
}

/// Runs one seed in this process (a fresh process runs a seed the same way every time).
fn single(args: &Args, seed: u64) {
    let outcome = run(&options(args, seed));
    if args.trace {
        for line in &outcome.trace {
            println!("{line}");
        }
    }
    println!("{}", verdict_line(&outcome));
    for v in &outcome.violations {
        println!("  {v}");
    }
    if !outcome.violations.is_empty() {
        println!("  replay: {}", replay(args, seed));
        std::process::exit(1);
    }
}

/// How often a batch reports its progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(60);

/// Runs each seed in a process of its own, `jobs` at a time. Not threads: Tokio numbers tasks
/// from one process-wide counter and a runtime's shutdown order follows those numbers, so a
/// seed that shares its process with other runs would not replay the same way alone.
fn batch(args: &Args) {
    let seeds: Vec<u64> = (args.first..args.first.saturating_add(args.seeds)).collect();
    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1)
        .min(seeds.len().max(1));
    let exe = std::env::current_exe().unwrap_or_else(|_| "spate-sim".into());
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let seeds = Arc::new(seeds);
    let (tx, rx) = mpsc::channel::<(u64, Result<String, String>)>();
    let workers: Vec<_> = (0..jobs)
        .map(|_| {
            let (next, seeds, tx, exe) = (next.clone(), seeds.clone(), tx.clone(), exe.clone());
            let args = args.clone();
            std::thread::spawn(move || loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(&seed) = seeds.get(usize::try_from(i).unwrap_or(usize::MAX)) else {
                    return;
                };
                let output = std::process::Command::new(&exe)
                    .args(["--seed", &seed.to_string()])
                    .args(["--nodes", &args.nodes.to_string()])
                    .args(["--faults-secs", &args.faults_secs.to_string()])
                    .env_remove("RUST_LOG")
                    .output()
                    .map_err(|e| format!("cannot run {}: {e}", exe.display()))
                    .map(|o| {
                        let mut text = String::from_utf8_lossy(&o.stdout).into_owned();
                        if !o.status.success() && parse_verdict(&text).is_none() {
                            text.push_str(&format!(
                                "  the seed's process failed ({}): {}",
                                o.status,
                                String::from_utf8_lossy(&o.stderr)
                                    .lines()
                                    .rev()
                                    .take(20)
                                    .collect::<Vec<_>>()
                                    .join(" | ")
                            ));
                        }
                        text
                    });
                if tx.send((seed, output)).is_err() {
                    return;
                }
            })
        })
        .collect();
    drop(tx);
    let (mut passed, mut failed) = (0u64, Vec::new());
    let (mut events, mut acked, mut simulated) = (0u64, 0u64, 0f64);
    let total_seeds = seeds.len();
    let mut last_progress = Instant::now();
    for (seed, output) in rx {
        // A long batch says how far it got, on stderr (stdout holds failures and the summary).
        if last_progress.elapsed() >= PROGRESS_EVERY {
            last_progress = Instant::now();
            let done = passed + failed.len() as u64;
            eprintln!(
                "spate-sim: {done}/{total_seeds} seeds, {} failed, {:.2} seeds/s",
                failed.len(),
                done as f64 / started.elapsed().as_secs_f64().max(1e-9)
            );
        }
        let text = output.unwrap_or_else(|e| e);
        match text.lines().next().and_then(parse_verdict) {
            Some((ok, a, e, s)) => {
                acked += a;
                events += e;
                simulated += s;
                if ok {
                    passed += 1;
                    continue;
                }
            }
            None => println!("seed {seed}: FAIL (no verdict)"),
        }
        print!("{text}");
        if !text.ends_with('\n') {
            println!();
        }
        failed.push(seed);
    }
    for w in workers {
        let _ = w.join();
    }
    failed.sort_unstable();
    let total = passed + failed.len() as u64;
    let wall = started.elapsed().as_secs_f64();
    println!(
        "spate-sim: {total} seeds, {passed} passed, {} failed; {:.2} seeds/s with {jobs} jobs, {} events and {} acknowledged writes per seed, {:.0} simulated seconds per seed",
        failed.len(),
        total as f64 / wall.max(1e-9),
        events / total.max(1),
        acked / total.max(1),
        simulated / total.max(1) as f64,
    );
    if !failed.is_empty() {
        println!("failing seeds: {failed:?}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_reads_back_the_verdict_line_a_seed_prints() {
        let outcome = Outcome {
            seed: 7,
            violations: vec!["invariant 1: lost".into()],
            trace_hash: 0xabc,
            trace: vec!["a".into(), "b".into()],
            acked: 12,
            steps: 3,
            simulated: Duration::from_millis(35_250),
        };
        let line = verdict_line(&outcome);
        assert_eq!(
            line,
            "seed 7: FAIL (12 acknowledged, 2 events, 35.2 simulated seconds, trace hash 0000000000000abc)"
        );
        assert_eq!(parse_verdict(&line), Some((false, 12, 2, 35.2)));
        let passing = Outcome {
            violations: vec![],
            ..outcome
        };
        assert_eq!(
            parse_verdict(&verdict_line(&passing)),
            Some((true, 12, 2, 35.2))
        );
        assert_eq!(parse_verdict("thread 'main' panicked"), None);
    }
}
