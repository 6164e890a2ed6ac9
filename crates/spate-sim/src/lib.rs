//! Deterministic simulation of whole Spate clusters.
//!
//! One `u64` seed decides everything: the workload ([`workload::plan`]), the faults
//! ([`faults`]), turmoil's message latencies, every id the nodes draw and openraft's election
//! timeouts. The real node ([`spate_server::Node`]: controller, replicas, fetchers, group
//! coordinator, Kafka front end) runs unchanged: each simulated node is a turmoil host with its
//! own paused Tokio runtime, its network turmoil's (behind the network seam), its disk a
//! [`spate_types::MemoryDisk`] the harness keeps across restarts (so a crash can lose what was
//! not fsynced), its clock the simulation's. All of it runs on the calling thread; the thread
//! is marked deterministic ([`spate_types::exec`]) so blocking work runs inline and openraft's
//! randomness comes from the seed.
//!
//! A run ends with the invariant checks of `DESIGN.md` over the history the clients recorded
//! ([`history::History::check`]) and over the replicas' logs read off their disks
//! ([`replicas`]), and over the leaderships the nodes logged ([`leaders`]). [`run`] returns the violations and the hash of the run's trace: the same
//! seed gives the same trace, which `same_seed_same_trace` checks.

pub mod faults;
pub mod history;
pub mod leaders;
pub mod replicas;
pub mod seams;
pub mod workload;

use history::History;
use spate_types::{MemoryDisk, Seams, SeededIds};
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

/// What to simulate.
#[derive(Clone, Debug)]
pub struct Options {
    pub seed: u64,
    /// 3 or 5.
    pub nodes: usize,
    /// How long faults are injected (simulated time).
    pub faults_for: Duration,
    /// After the faults stop: how long the producers go on.
    pub settle: Duration,
    /// After healing, an acks=all write must succeed within this (liveness).
    pub liveness_bound: Duration,
    /// Print node logs and the trace as the run goes.
    pub verbose: bool,
}

impl Options {
    pub fn new(seed: u64, nodes: usize) -> Options {
        Options {
            seed,
            nodes,
            faults_for: Duration::from_secs(20),
            settle: Duration::from_secs(10),
            liveness_bound: Duration::from_secs(20),
            verbose: false,
        }
    }
}

/// The result of one seed.
#[derive(Debug)]
pub struct Outcome {
    pub seed: u64,
    pub violations: Vec<String>,
    pub trace_hash: u64,
    pub trace: Vec<String>,
    pub acked: usize,
    pub steps: u64,
    pub simulated: Duration,
}

/// A small seeded generator (SplitMix64) for the harness's own choices.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// Seeds next to each other start far apart (the stream is not the seed's neighbour's,
    /// shifted by one draw).
    pub fn new(seed: u64) -> Rng {
        Rng(spate_types::clock::splitmix64(seed, 0x5157))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(1);
        spate_types::clock::splitmix64(self.0, 0)
    }

    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }

    /// Uniform in `[min, max)` milliseconds.
    pub fn millis(&mut self, min: u64, max: u64) -> Duration {
        Duration::from_millis(min + self.below(max.saturating_sub(min).max(1)))
    }
}

/// Mixed into the seed for the stream the group members are chosen from.
const MEMBERS_STREAM: u64 = 0x6d65_6d62_6572_7321;
/// Mixed into the seed for the stream the transactional producers are chosen from.
const TXNS_STREAM: u64 = 0x7478_6e73_7478_6e73;

pub const KAFKA_PORT: u16 = 9092;
pub const CONTROLLER_PORT: u16 = 9093;

pub fn host_name(node: usize) -> String {
    format!("n{node}")
}

fn node_config(node: usize, nodes: usize) -> anyhow::Result<spate_server::ServerConfig> {
    let voters = (1..=nodes)
        .map(|i| format!("{i}@{}:{CONTROLLER_PORT}", host_name(i)))
        .collect::<Vec<_>>()
        .join(",");
    let settings = [
        ("node.id", node.to_string()),
        ("data.dir", format!("/{}", host_name(node))),
        ("kafka.listen", format!("0.0.0.0:{KAFKA_PORT}")),
        ("advertised.host", host_name(node)),
        ("http.listen", String::new()),
        ("controller.quorum.voters", voters),
        ("controller.listen", format!("0.0.0.0:{CONTROLLER_PORT}")),
        ("default.replication.factor", "3".into()),
        ("auto.create.topics.enable", "false".into()),
        // The simulated network drops what a partition cuts and, unlike TCP, never sends it
        // again once the link heals: a follower whose fetch was lost waits for this timeout
        // (Kafka's default, 30 s, would outlast the liveness bound).
        ("replica.socket.timeout.ms", "5000".into()),
        // Likewise for a request one broker sends another (a transaction marker, a
        // verification): lost in a partition, it would hold its callers for Kafka's 30 s.
        ("request.timeout.ms", "5000".into()),
        // Fewer than Kafka's 50: the group still has a coordinator that moves with its
        // partition's leadership, and each seed runs about twice as fast.
        ("offsets.topic.num.partitions", "5".into()),
        // Likewise for the transaction coordinators (created by the first transactional id).
        ("transaction.state.log.num.partitions", "3".into()),
    ];
    let overrides: Vec<(String, String)> = settings
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    Ok(spate_server::ServerConfig::load(
        None,
        std::iter::empty(),
        &overrides,
    )?)
}

/// The run's tracing: the leadership recorder of invariant 4 and, when `verbose`, the node
/// logs `RUST_LOG` selects (off by default) on stderr, stamped with the simulated time.
fn subscriber(verbose: bool) -> impl tracing::Subscriber + Send + Sync {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::Layer as _;
    let logs = verbose.then(|| {
        tracing_subscriber::fmt::layer()
            .with_timer(SimTime)
            .with_ansi(false)
            .with_writer(std::io::stderr)
            .with_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off")),
            )
    });
    tracing_subscriber::registry()
        .with(leaders::Layer.with_filter(leaders::filter()))
        .with(logs)
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

/// What the harness keeps of a node across its restarts.
#[derive(Clone)]
pub struct NodeParts {
    pub disk: MemoryDisk,
    pub clock: Arc<seams::SimClock>,
    ids: Arc<SeededIds>,
    /// Notified to shut the node down cleanly (an operator's controlled shutdown); a fresh
    /// one for each start (`faults::restart`), so a request never outlives its incarnation.
    pub stop: Rc<RefCell<Rc<tokio::sync::Notify>>>,
    /// Whether the node's current incarnation finished starting and still serves.
    pub serving: Rc<std::cell::Cell<bool>>,
}

thread_local! {
    /// Panics raised on this thread while it runs a simulation: a node task that panics is a
    /// bug even when Tokio contains it.
    static PANICS: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
    /// Whether this thread is running a simulation (and whether its panics are printed too).
    static RECORDING: std::cell::Cell<Option<bool>> = const { std::cell::Cell::new(None) };
}

fn install_panic_recorder() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            match RECORDING.with(std::cell::Cell::get) {
                Some(verbose) => {
                    PANICS.with(|p| p.borrow_mut().push(info.to_string()));
                    if verbose {
                        previous(info);
                    }
                }
                // Outside a simulation (a test's own assertion, for one), as usual.
                None => previous(info),
            }
        }));
    });
}

/// Records this thread's panics until dropped.
struct Recording;

impl Recording {
    fn start(verbose: bool) -> Recording {
        install_panic_recorder();
        PANICS.with(|p| p.borrow_mut().clear());
        RECORDING.with(|r| r.set(Some(verbose)));
        Recording
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        RECORDING.with(|r| r.set(None));
    }
}

/// Runs one seed to the end and checks it.
pub fn run(options: &Options) -> Outcome {
    let recording = Recording::start(options.verbose);
    let _logs = tracing::subscriber::set_default(subscriber(options.verbose));
    leaders::reset();
    let _deterministic = spate_types::exec::enter_deterministic(options.seed);
    let mut rng = Rng::new(options.seed);
    let nodes = options.nodes;
    let mut sim = turmoil::Builder::new()
        .rng_seed(options.seed)
        .epoch(std::time::UNIX_EPOCH + Duration::from_millis(seams::EPOCH_MS as u64))
        .simulation_duration(Duration::from_secs(24 * 3600))
        .tick_duration(Duration::from_millis(1))
        .min_message_latency(Duration::from_millis(0))
        .max_message_latency(rng.millis(2, 30))
        .tcp_capacity(1024)
        .build();
    let history = Rc::new(RefCell::new(History::default()));
    let mut parts = Vec::new();
    let halts: faults::Halts = Rc::default();
    let stops: faults::Stops = Rc::default();
    for node in 1..=nodes {
        let clock = Arc::new(seams::SimClock::default());
        let part = NodeParts {
            disk: MemoryDisk::new(clock.clone()),
            clock,
            ids: Arc::new(SeededIds::new(rng.next_u64())),
            stop: Rc::default(),
            serving: Rc::default(),
        };
        parts.push(part.clone());
        let (halts, stops) = (halts.clone(), stops.clone());
        sim.host(host_name(node), move || {
            let part = part.clone();
            let (halts, stops) = (halts.clone(), stops.clone());
            async move {
                let config = node_config(node, nodes).map_err(|e| e.to_string())?;
                let seams = Seams {
                    clock: part.clock.clone(),
                    ids: part.ids.clone(),
                    net: Arc::new(seams::SimNetwork),
                    disk: Arc::new(part.disk.clone()),
                };
                // A node that cannot start, or that halts on a storage failure, exits as the
                // process would; the nemesis, as its supervisor, takes it down and restarts it.
                let stop = part.stop.borrow().clone();
                part.serving.set(false);
                let running = match spate_server::Node::start_with_seams(config, None, seams).await
                {
                    Ok(running) => running,
                    Err(e) => {
                        halts
                            .borrow_mut()
                            .push((node, format!("did not start: {e:#}")));
                        return std::future::pending().await;
                    }
                };
                part.serving.set(true);
                let halted = tokio::select! {
                    biased;
                    reason = running.halted() => Some(reason),
                    () = stop.notified() => None,
                };
                part.serving.set(false);
                match halted {
                    Some(reason) => halts.borrow_mut().push((node, reason)),
                    None => {
                        let outcome = running.shutdown().await.map_err(|e| format!("{e:#}"));
                        stops.borrow_mut().push((node, outcome));
                    }
                }
                std::future::pending::<()>().await;
                Ok(())
            }
        });
    }
    let fault_start = Duration::from_secs(5);
    let fault_end = fault_start + options.faults_for;
    let produce_until = fault_end + options.settle;
    let mut members_rng = Rng::new(options.seed ^ MEMBERS_STREAM);
    let mut txns_rng = Rng::new(options.seed ^ TXNS_STREAM);
    let plan = workload::plan(
        &mut rng,
        &mut members_rng,
        &mut txns_rng,
        nodes,
        produce_until,
    );
    history.borrow_mut().event(format!(
        "seed {} nodes {nodes} partitions {} producers {:?} grow {:?} scratch {:?} members {:?} transactional producers {:?} copier {:?}",
        options.seed, plan.partitions, plan.producers, plan.grow, plan.scratch, plan.members, plan.txn_producers, plan.copier
    ));
    sim.client("client", workload::run(plan.clone(), history.clone()));

    let mut nemesis = faults::Nemesis::new(&mut rng, nodes, fault_start, fault_end);
    let deadline = produce_until + Duration::from_secs(120);
    let mut steps = 0u64;
    loop {
        steps += 1;
        match sim.step() {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => {
                history
                    .borrow_mut()
                    .violation(format!("the simulation failed: {e}"));
                break;
            }
        }
        let now = sim.elapsed();
        history.borrow_mut().set_harness_time(now);
        nemesis.supervise(now, &mut sim, &parts, &halts, &stops, &history);
        nemesis.step(now, &mut sim, &parts, &history);
        if now > deadline {
            history.borrow_mut().violation(format!(
                "liveness: the workload had not finished {}s after the producers stopped",
                (deadline - produce_until).as_secs()
            ));
            break;
        }
    }
    let simulated = sim.elapsed();
    {
        let h = history.borrow();
        if let Some(healed) = h.healed_at {
            let any_acks_all = plan.producers.iter().any(|p| p.acks == -1);
            match h.first_ack_after_heal() {
                Some(t) if t <= healed + options.liveness_bound => {}
                _ if !any_acks_all => {}
                other => {
                    drop(h);
                    history.borrow_mut().violation(format!(
                        "liveness: no acks=all write succeeded within {}s of healing (first: {other:?})",
                        options.liveness_bound.as_secs()
                    ));
                }
            }
        }
    }
    {
        let h = history.borrow();
        if let (Some(healed), false) = (h.healed_at, plan.txn_producers.is_empty()) {
            match h.txn_first_commit_after_heal() {
                Some(t) if t <= healed + options.liveness_bound => {}
                other => {
                    drop(h);
                    history.borrow_mut().violation(format!(
                        "liveness: no transaction committed within {}s of healing (first: {other:?})",
                        options.liveness_bound.as_secs()
                    ));
                }
            }
        }
    }
    // Every node serves again by the end: one stuck starting (or never restarted) is a
    // liveness failure even when the others carry the workload.
    for (i, part) in parts.iter().enumerate() {
        if !part.serving.get() {
            history.borrow_mut().violation(format!(
                "liveness: node {} was not serving at the end (it had not finished starting)",
                i + 1
            ));
        }
    }
    // Stop every node as a kill would (their disks keep what the page cache held), then
    // compare the replicas' logs with the final log the clients read.
    for node in 1..=nodes {
        if sim.is_host_running(host_name(node)) {
            sim.crash(host_name(node));
        }
    }
    drop(sim);
    let mut violations = history.borrow().check();
    violations.extend(replicas::compare(&parts, &history.borrow()));
    violations.extend(leaders::check(
        &leaders::seen(),
        workload::TOPIC,
        history.borrow().partitions(),
    ));
    drop(recording);
    PANICS.with(|p| {
        for panic in p.borrow_mut().drain(..) {
            violations.push(format!("invariant 7: a node panicked: {panic}"));
        }
    });
    let h = history.borrow();
    Outcome {
        seed: options.seed,
        violations,
        trace_hash: h.trace_hash(),
        trace: h.trace().to_vec(),
        acked: h.acked_count(),
        steps,
        simulated,
    }
}
