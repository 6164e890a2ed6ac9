//! The nemesis: faults chosen by the seed, injected between `start` and `end` of simulated
//! time, each undone after a while, and all undone at `end` (the cluster heals).
//!
//! Kinds: a process kill with restart (the disk keeps what the page cache held); a power cut
//! with restart (the disk loses what was not fsynced, keeping a torn part of unsynced appends);
//! a node isolated from the others (and maybe from the clients); the cluster cut in halves
//! (five nodes) or a bridge (one node sees both sides); a one-way cut; a link holding its
//! messages and releasing them late (delay and reordering across links); a flaky link that
//! drops at random; a full disk; fsync failing with EIO or ENOSPC, writes failing with EIO; a
//! latent corrupted sector (a bit flipped at rest in a stored batch of the workload topic, in
//! the part its CRC covers); a node's wall clock jumping; a controlled shutdown and restart.
//!
//! A pause (SIGSTOP, a long GC or VM stall) is modelled as every link of the node held both
//! ways, the clients' included: what it sends and what it is sent arrives late, all at once,
//! as after SIGCONT. Turmoil 0.7 cannot stop a host's tasks, so the node's own timers still
//! run during the pause; the fault campaign (`scripts/chaos`) sends real SIGSTOPs.

use crate::history::History;
use crate::{host_name, NodeParts, Rng};
use spate_types::disk::{Disk, DiskError, DiskFault, DiskOp};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

const CLIENT: &str = "client";

/// Nodes that stopped by themselves (a failed start or a storage failure), with the reason,
/// pushed by the node hosts and taken by [`Nemesis::supervise`].
pub type Halts = Rc<RefCell<Vec<(usize, String)>>>;

/// Nodes that finished a controlled shutdown, with its outcome, pushed by the node hosts.
pub type Stops = Rc<RefCell<Vec<(usize, Result<(), String>)>>>;

/// Flips one bit at rest in a batch of a workload topic's partition on `node`'s disk, in the
/// part of the batch its CRC covers (from its attributes on: the base offset, length, leader
/// epoch and CRC fields are outside, as in Kafka's format). Says where, or `None` if the node
/// stores no batch that may rot.
///
/// Which may: the invariants hold while a majority of a partition's replicas keep their disks,
/// so a partition rots on one node per run (`rotted`), and only in a batch another node holds,
/// byte for byte and durably, and that a durable batch follows here (damage in the last one
/// looks like a torn write to recovery, which cuts it: docs/testing.md says what that leaves
/// out).
fn corrupt_a_batch(
    parts: &[NodeParts],
    node: usize,
    rotted: &mut BTreeMap<String, usize>,
    rng: &mut Rng,
) -> Option<String> {
    let disk = &parts[node - 1].disk;
    let logs = PathBuf::from(format!("/{}/logs", host_name(node)));
    let prefix = format!("{}-", crate::workload::TOPIC);
    let mut dirs: Vec<String> = disk
        .read_dir(&logs)
        .ok()?
        .into_iter()
        .map(|e| e.name)
        .filter(|n| n.starts_with(&prefix))
        .filter(|n| rotted.get(n).is_none_or(|n2| *n2 == node))
        .collect();
    dirs.sort();
    let name = dirs.get(pick(rng, dirs.len())?)?.clone();
    let dir = logs.join(&name);
    let mut segments: Vec<String> = disk
        .read_dir(&dir)
        .ok()?
        .into_iter()
        .map(|e| e.name)
        .filter(|n| n.ends_with(".log"))
        .collect();
    segments.sort();
    let segment = segments.get(pick(rng, segments.len())?)?.clone();
    let path = dir.join(&segment);
    let bytes = spate_types::disk::read_bounded(disk, &path, 1 << 30).ok()??;
    // Batch framing: base offset (8 bytes), length of the rest (4), then the rest.
    let mut batches = Vec::new();
    let mut pos = 0usize;
    while let Some(len) = bytes.get(pos + 8..pos + 12) {
        let len = usize::try_from(i32::from_be_bytes(len.try_into().ok()?)).ok()?;
        let end = pos + 12 + len;
        if len < 49 || end > bytes.len() {
            break;
        }
        batches.push((pos, end));
        pos = end;
    }
    let durable = usize::try_from(disk.durable_len(&path)?).ok()?;
    // The same batch, durable, on another node.
    let elsewhere = |(start, end): (usize, usize)| {
        (1..=parts.len()).filter(|n| *n != node).any(|other| {
            let path = PathBuf::from(format!("/{}/logs/{name}/{segment}", host_name(other)));
            let disk = &parts[other - 1].disk;
            disk.durable_len(&path)
                .and_then(|d| usize::try_from(d).ok())
                .is_some_and(|d| end <= d)
                && spate_types::disk::read_bounded(disk, &path, 1 << 30)
                    .ok()
                    .flatten()
                    .is_some_and(|b| b.get(start..end) == bytes.get(start..end))
        })
    };
    let batches: Vec<(usize, usize)> = batches
        .windows(2)
        .filter(|w| w[1].1 <= durable)
        .map(|w| w[0])
        .filter(|b| elsewhere(*b))
        .collect();
    let (start, end) = *batches.get(pick(rng, batches.len())?)?;
    // The CRC covers the batch from its attributes (byte 21) to its end.
    let at = start + 21 + pick(rng, end - start - 21)?;
    let bit = 1u8 << rng.below(8);
    disk.corrupt(&path, at as u64, bit).ok()?;
    rotted.insert(name, node);
    Some(format!(
        "latent corruption on node {node}: bit {bit:#04x} of byte {at} of {} (the batch at byte {start})",
        path.display()
    ))
}

/// A uniform index below `n`, `None` when there is nothing to pick.
fn pick(rng: &mut Rng, n: usize) -> Option<usize> {
    (n > 0).then(|| usize::try_from(rng.below(n as u64)).unwrap_or(0))
}

/// Starts `node` again (its software anew; its disk as the last crash left it), with a fresh
/// stop signal.
fn restart(sim: &mut turmoil::Sim<'_>, parts: &[NodeParts], node: usize) {
    *parts[node - 1].stop.borrow_mut() = Rc::new(tokio::sync::Notify::new());
    sim.bounce(host_name(node));
}

/// How a fault is undone.
#[derive(Debug)]
enum Undo {
    Restart(usize),
    Repair(Vec<(String, String)>),
    RepairOneway(String, String),
    Release(Vec<(String, String)>),
    Steady(Vec<(String, String)>),
    DiskHealthy(usize),
}

pub struct Nemesis {
    rng: Rng,
    nodes: usize,
    end: Duration,
    next_at: Duration,
    active: Vec<(Duration, Undo)>,
    down: BTreeSet<usize>,
    /// Nodes whose disk has had a fault injected: only these may halt.
    disk_faulted: BTreeSet<usize>,
    /// Halted nodes and when their supervisor restarts them.
    restarts: Vec<(Duration, usize)>,
    healed: bool,
    /// Partition directory → the one node whose copy of it had a bit flipped.
    rotted: BTreeMap<String, usize>,
}

fn pairs(a: &[String], b: &[String]) -> Vec<(String, String)> {
    a.iter()
        .flat_map(|x| b.iter().map(move |y| (x.clone(), y.clone())))
        .collect()
}

impl Nemesis {
    pub fn new(rng: &mut Rng, nodes: usize, start: Duration, end: Duration) -> Nemesis {
        let mut rng = Rng::new(rng.next_u64());
        let next_at = start + rng.millis(0, 2_000);
        Nemesis {
            rng,
            nodes,
            end,
            next_at,
            active: Vec::new(),
            down: BTreeSet::new(),
            disk_faulted: BTreeSet::new(),
            restarts: Vec::new(),
            healed: false,
            rotted: BTreeMap::new(),
        }
    }

    /// The supervisor (systemd, Kubernetes): a node that halted is taken down (its tasks stop
    /// with it) and restarted a moment later, also after the cluster healed. Only a node whose
    /// disk had a fault may halt; any other halt is a violation.
    pub fn supervise(
        &mut self,
        now: Duration,
        sim: &mut turmoil::Sim<'_>,
        parts: &[NodeParts],
        halts: &Halts,
        stops: &Stops,
        history: &Rc<RefCell<History>>,
    ) {
        for (node, outcome) in std::mem::take(&mut *stops.borrow_mut()) {
            let mut h = history.borrow_mut();
            match outcome {
                Ok(()) => h.disturbance(format!("node {node} shut down cleanly")),
                Err(e) if self.disk_faulted.contains(&node) => {
                    h.disturbance(format!("node {node}'s controlled shutdown failed: {e}"))
                }
                Err(e) => h.violation(format!(
                    "node {node}'s controlled shutdown failed with a healthy disk: {e}"
                )),
            }
        }
        for (node, reason) in std::mem::take(&mut *halts.borrow_mut()) {
            sim.crash(host_name(node));
            let mut h = history.borrow_mut();
            h.disturbance(format!("node {node} halted: {reason}"));
            if !self.disk_faulted.contains(&node) {
                h.violation(format!("node {node} halted with a healthy disk: {reason}"));
            }
            self.restarts
                .push((now + self.rng.millis(500, 3_000), node));
        }
        let (due, wait): (Vec<_>, Vec<_>) = std::mem::take(&mut self.restarts)
            .into_iter()
            .partition(|(at, _)| *at <= now);
        self.restarts = wait;
        for (_, node) in due {
            // A node the nemesis itself holds down comes back when that fault is undone.
            if !self.down.contains(&node) {
                restart(sim, parts, node);
                history
                    .borrow_mut()
                    .disturbance(format!("supervisor restarts node {node}"));
            }
        }
    }

    /// Called after every simulation step.
    pub fn step(
        &mut self,
        now: Duration,
        sim: &mut turmoil::Sim<'_>,
        parts: &[NodeParts],
        history: &Rc<RefCell<History>>,
    ) {
        if self.healed {
            return;
        }
        if now >= self.end {
            for (_, undo) in std::mem::take(&mut self.active) {
                self.undo(undo, sim, parts, history);
            }
            self.healed = true;
            let mut h = history.borrow_mut();
            h.disturbance("healed: every fault undone".into());
            h.healed_at = Some(now);
            return;
        }
        let (due, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.active)
            .into_iter()
            .partition(|(at, _)| *at <= now);
        self.active = keep;
        for (_, undo) in due {
            self.undo(undo, sim, parts, history);
        }
        if now >= self.next_at {
            self.inject(now, sim, parts, history);
            self.next_at = now + self.rng.millis(500, 4_000);
        }
    }

    fn pick_node(&mut self) -> usize {
        1 + usize::try_from(self.rng.below(self.nodes as u64)).unwrap_or(0)
    }

    fn names(&self, nodes: impl IntoIterator<Item = usize>) -> Vec<String> {
        nodes.into_iter().map(host_name).collect()
    }

    fn inject(
        &mut self,
        now: Duration,
        sim: &mut turmoil::Sim<'_>,
        parts: &[NodeParts],
        history: &Rc<RefCell<History>>,
    ) {
        let lasts = self.rng.millis(300, 5_000);
        let until = now + lasts;
        let node = self.pick_node();
        let others: Vec<usize> = (1..=self.nodes).filter(|n| *n != node).collect();
        let kind = self.rng.below(11);
        let what = match kind {
            0 | 1 if !self.down.contains(&node) && self.down.len() + 1 < self.nodes => {
                sim.crash(host_name(node));
                let power_cut = kind == 1;
                if power_cut {
                    let mut rng = Rng::new(self.rng.next_u64());
                    parts[node - 1]
                        .disk
                        .crash_keeping(&mut |_, tail| rng.below(tail + 1));
                }
                self.down.insert(node);
                self.active.push((until, Undo::Restart(node)));
                if power_cut {
                    format!("power cut on node {node} (unsynced writes lost, torn tails)")
                } else {
                    format!("kill node {node}")
                }
            }
            2 => {
                let mut cut = pairs(&self.names([node]), &self.names(others));
                if self.rng.chance(0.5) {
                    cut.push((host_name(node), CLIENT.to_owned()));
                }
                for (a, b) in &cut {
                    sim.partition(a.as_str(), b.as_str());
                }
                self.active.push((until, Undo::Repair(cut)));
                format!("isolate node {node}")
            }
            3 => {
                // Halves (the smaller side without a majority), or a bridge: `node` sees both.
                let mut rest = others.clone();
                let split = rest.len() / 2;
                let side_b = rest.split_off(split);
                let bridge = self.rng.chance(0.5);
                let mut side_a = rest;
                if !bridge {
                    side_a.push(node);
                }
                let cut = pairs(&self.names(side_a.clone()), &self.names(side_b.clone()));
                for (a, b) in &cut {
                    sim.partition(a.as_str(), b.as_str());
                }
                self.active.push((until, Undo::Repair(cut)));
                if bridge {
                    format!("bridge: {side_a:?} | {side_b:?}, node {node} sees both")
                } else {
                    format!("halves: {side_a:?} | {side_b:?}")
                }
            }
            4 => {
                let to = others[usize::try_from(self.rng.below(others.len() as u64)).unwrap_or(0)];
                sim.partition_oneway(host_name(node).as_str(), host_name(to).as_str());
                self.active
                    .push((until, Undo::RepairOneway(host_name(node), host_name(to))));
                format!("one-way cut: node {node} cannot reach node {to}")
            }
            5 => {
                let pause = self.rng.chance(0.5);
                let mut held = pairs(&self.names([node]), &self.names(others));
                if pause {
                    held.push((host_name(node), CLIENT.to_owned()));
                }
                for (a, b) in &held {
                    sim.hold(a.as_str(), b.as_str());
                }
                self.active.push((until, Undo::Release(held)));
                if pause {
                    format!("pause node {node} (every link held, the clients' too)")
                } else {
                    format!("hold node {node}'s links (messages delivered late, reordered)")
                }
            }
            9 => {
                let what = corrupt_a_batch(parts, node, &mut self.rotted, &mut self.rng);
                if what.is_some() {
                    history.borrow_mut().corrupted.insert(node);
                }
                what.unwrap_or_else(|| format!("no stored batch to corrupt on node {node}"))
            }
            6 => {
                let flaky = pairs(&self.names([node]), &self.names(others));
                for (a, b) in &flaky {
                    sim.set_link_fail_rate(a.as_str(), b.as_str(), 0.02);
                }
                self.active.push((until, Undo::Steady(flaky)));
                format!("flaky links around node {node}")
            }
            7 => {
                let disk = &parts[node - 1].disk;
                disk.set_capacity(Some(disk.used_bytes() + self.rng.below(64 * 1024)));
                self.disk_faulted.insert(node);
                self.active.push((until, Undo::DiskHealthy(node)));
                format!("disk full on node {node}")
            }
            8 => {
                // A failing fsync (EIO, or ENOSPC on a thin-provisioned volume), or a failing
                // write (EIO), the next 1-3 times on that node.
                let (op, error, what) = match self.rng.below(3) {
                    0 => (DiskOp::Sync, DiskError::Io, "fsync fails with EIO"),
                    1 => (DiskOp::Sync, DiskError::NoSpace, "fsync fails with ENOSPC"),
                    _ => (DiskOp::Write, DiskError::Io, "writes fail with EIO"),
                };
                self.disk_faulted.insert(node);
                parts[node - 1].disk.inject(DiskFault {
                    op,
                    under: PathBuf::from(format!("/{}", host_name(node))),
                    error,
                    times: Some(1 + u32::try_from(self.rng.below(3)).unwrap_or(0)),
                });
                self.active.push((until, Undo::DiskHealthy(node)));
                format!("{what} on node {node}")
            }
            10 if !self.down.contains(&node) && self.down.len() + 1 < self.nodes => {
                // An operator's controlled shutdown (leaderships move away first), then a
                // restart once the fault ends; a restart before the shutdown finished is a
                // kill in the middle of it.
                parts[node - 1].stop.borrow().notify_one();
                self.down.insert(node);
                self.active.push((until, Undo::Restart(node)));
                format!("controlled shutdown of node {node}")
            }
            _ => {
                let minutes = i64::try_from(self.rng.below(120)).unwrap_or(0) - 60;
                parts[node - 1].clock.jump(minutes * 60_000);
                format!("node {node}'s wall clock jumps {minutes} minutes")
            }
        };
        history
            .borrow_mut()
            .fault(format!("fault: {what} for {}ms", lasts.as_millis()), lasts);
    }

    fn undo(
        &mut self,
        undo: Undo,
        sim: &mut turmoil::Sim<'_>,
        parts: &[NodeParts],
        history: &Rc<RefCell<History>>,
    ) {
        let what = match undo {
            Undo::Restart(node) => {
                restart(sim, parts, node);
                self.down.remove(&node);
                format!("restart node {node}")
            }
            Undo::Repair(cut) => {
                for (a, b) in &cut {
                    sim.repair(a.as_str(), b.as_str());
                }
                "repair cut links".into()
            }
            Undo::RepairOneway(a, b) => {
                sim.repair_oneway(a.as_str(), b.as_str());
                "repair one-way cut".into()
            }
            Undo::Release(held) => {
                for (a, b) in &held {
                    sim.release(a.as_str(), b.as_str());
                }
                "release held links".into()
            }
            Undo::Steady(flaky) => {
                for (a, b) in &flaky {
                    sim.set_link_fail_rate(a.as_str(), b.as_str(), 0.0);
                    sim.repair(a.as_str(), b.as_str());
                }
                "steady links".into()
            }
            Undo::DiskHealthy(node) => {
                let disk = &parts[node - 1].disk;
                disk.set_capacity(None);
                disk.clear_faults();
                format!("node {node}'s disk healthy")
            }
        };
        history.borrow_mut().disturbance(format!("undo: {what}"));
    }
}
