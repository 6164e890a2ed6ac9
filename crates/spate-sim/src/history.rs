//! What the clients and the harness observed during one run (the trace), and the invariant
//! checks over it. Every entry carries the simulated time, so the trace of a seed is the same
//! text every time it runs; its hash is the run's fingerprint.

mod copies;
mod txns;

pub use txns::TxnOutcome;

/// A partition's final log, (offset, value) up to its high watermark, and that high watermark.
type FinalLog = (Vec<(i64, String)>, i64);

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::time::Duration;

/// One producer of the workload.
#[derive(Clone, Debug)]
pub struct Producer {
    pub id: u64,
    /// -1 (all) or 1.
    pub acks: i16,
    pub idempotent: bool,
}

/// An acknowledged write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ack {
    pub value: String,
    pub partition: i32,
    pub offset: i64,
    pub acks: i16,
}

/// The history of one run.
#[derive(Debug, Default)]
pub struct History {
    trace: Vec<String>,
    /// Value → (producer idempotent, partition).
    sent: BTreeMap<String, (bool, i32)>,
    /// Value → how many producer ids it was sent under (more than one when the producer was
    /// fenced while sending it and took a new id: idempotence covers retries within one id,
    /// so each id may write it once).
    producer_ids: BTreeMap<String, usize>,
    acked: Vec<Ack>,
    /// Partition → offset → value, as consumers read them (before the end).
    consumed: BTreeMap<i32, BTreeMap<i64, String>>,
    /// Partition → the highest high watermark a consumer was shown.
    high_watermarks: BTreeMap<i32, i64>,
    /// Group → partition → (the highest offset a commit acknowledged, the highest one sent).
    commits: BTreeMap<&'static str, BTreeMap<i32, (Option<i64>, i64)>>,
    /// Group → its committed offsets read back at the end (absent before).
    committed_at_end: BTreeMap<&'static str, BTreeMap<i32, i64>>,
    /// The members' group's committed offsets as members fetched them on assignment: (asked
    /// at, answered at, partition → offset).
    member_fetches: Vec<(Duration, Duration, BTreeMap<i32, i64>)>,
    /// Generation of the members' group → member id → the partitions SyncGroup assigned it.
    assignments: BTreeMap<i32, BTreeMap<String, Vec<i32>>>,
    /// When the members' group was seen in a generation (a SyncGroup or an OffsetCommit
    /// answered in it): from then on, the group's generation is at least that one.
    generations_seen: Vec<(Duration, i32)>,
    /// Partition → (records up to the high watermark, that high watermark), read at the end.
    drained: BTreeMap<i32, FinalLog>,
    /// The workload topic's partition count, as last grown.
    partitions: i32,
    /// The re-created scratch topic's final log and high watermark, if the seed ran one.
    scratch: Option<FinalLog>,
    /// Nodes whose disk had bits flipped at rest: their copies may end at the damage.
    pub corrupted: BTreeSet<usize>,
    /// When the faults stopped, and the first acks=all acknowledgement after that.
    pub healed_at: Option<Duration>,
    first_ack_after_heal: Option<Duration>,
    /// When the nemesis or the supervisor disturbed the cluster, from when until when (a fault
    /// for as long as it was meant to last; a halt, a restart or a fault's undoing for an
    /// instant), in order: the transaction checks tell a failure a fault explains from one
    /// that came out of the blue.
    disturbances: Vec<(Duration, Duration)>,
    violations: Vec<String>,
    /// The transactional producers' history.
    txns: txns::Txns,
    /// The exactly-once copier's.
    copies: copies::Copies,
    /// The simulation's time as the harness last saw it, for events it records between steps
    /// (outside any host, where turmoil has no current time).
    harness_time: Duration,
}

impl History {
    /// The simulated time: the current host's, or the harness's between steps.
    fn now(&self) -> Duration {
        turmoil::sim_elapsed().unwrap_or(self.harness_time)
    }

    /// Called by the harness after every step.
    pub fn set_harness_time(&mut self, now: Duration) {
        self.harness_time = now;
    }

    /// Appends a line to the trace.
    pub fn event(&mut self, what: String) {
        let t = self.now();
        self.trace.push(format!("{:>9.3} {what}", t.as_secs_f64()));
    }

    /// Appends a line to the trace for something the nemesis or the supervisor did.
    pub fn disturbance(&mut self, what: String) {
        self.fault(what, Duration::ZERO);
    }

    /// Appends a line to the trace for a fault the nemesis put in, meant to last `lasts`.
    pub fn fault(&mut self, what: String, lasts: Duration) {
        let t = self.now();
        self.disturbances.push((t, t + lasts));
        self.event(what);
    }

    pub fn trace(&self) -> &[String] {
        &self.trace
    }

    /// The run's fingerprint: a hash of the whole trace.
    pub fn trace_hash(&self) -> u64 {
        // SipHash with fixed keys: the same text hashes the same in every process.
        #[allow(deprecated)]
        let mut h = std::hash::SipHasher::new();
        self.trace.hash(&mut h);
        h.finish()
    }

    pub fn sent(&mut self, producer: &Producer, value: &str, partition: i32) {
        self.sent
            .insert(value.to_owned(), (producer.idempotent, partition));
        self.producer_ids.insert(value.to_owned(), 1);
    }

    /// The producer took a new producer id while sending `value` (it was fenced).
    pub fn new_producer_id(&mut self, value: &str) {
        *self.producer_ids.entry(value.to_owned()).or_insert(1) += 1;
    }

    pub fn acked(&mut self, ack: Ack) {
        self.event(format!(
            "ack {} acks={} partition {} offset {}",
            ack.value, ack.acks, ack.partition, ack.offset
        ));
        if ack.acks == -1 {
            if let Some(healed) = self.healed_at {
                let now = self.now();
                if self.first_ack_after_heal.is_none() && now >= healed {
                    self.first_ack_after_heal = Some(now);
                }
            }
        }
        self.acked.push(ack);
    }

    pub fn consumed(&mut self, partition: i32, offset: i64, value: &str) {
        let log = self.consumed.entry(partition).or_default();
        if let Some((&last, _)) = log.last_key_value() {
            if offset <= last {
                self.violations.push(format!(
                    "invariant 3: a consumer read partition {partition} offset {offset} after offset {last}"
                ));
            }
        }
        log.insert(offset, value.to_owned());
    }

    pub fn observed_high_watermark(&mut self, partition: i32, high_watermark: i64) {
        let seen = self.high_watermarks.entry(partition).or_insert(0);
        if high_watermark < *seen {
            let message = format!(
                "invariant 3: partition {partition}'s high watermark went back from {seen} to {high_watermark}"
            );
            self.event(message.clone());
            self.violations.push(message);
        } else {
            *seen = high_watermark;
        }
    }

    /// A client sends a commit of `positions` to `group`.
    pub fn commit_sent(&mut self, group: &'static str, positions: &BTreeMap<i32, i64>) {
        let commits = self.commits.entry(group).or_default();
        for (partition, offset) in positions {
            let entry = commits.entry(*partition).or_insert((None, *offset));
            entry.1 = entry.1.max(*offset);
        }
    }

    /// `group`'s coordinator acknowledged a commit of `positions`.
    pub fn commit_acked(&mut self, group: &'static str, positions: &BTreeMap<i32, i64>) {
        self.event(format!("{group}: offsets committed {positions:?}"));
        let commits = self.commits.entry(group).or_default();
        for (partition, offset) in positions {
            let entry = commits.entry(*partition).or_insert((None, *offset));
            entry.0 = Some(entry.0.map_or(*offset, |acked| acked.max(*offset)));
        }
    }

    /// The members' group acknowledged a commit of `positions` by a member of `generation`,
    /// sent at `sent_at`. A generation only moves forward, so once the group was seen in a
    /// newer one, a commit sent later by a member of an older one must be refused (the member
    /// is a zombie: it stalled past its session timeout and its partitions moved on).
    pub fn member_commit_acked(
        &mut self,
        group: &'static str,
        generation: i32,
        sent_at: Duration,
        positions: &BTreeMap<i32, i64>,
    ) {
        self.commit_acked(group, positions);
        let newer = self
            .generations_seen
            .iter()
            .filter(|(t, g)| *t < sent_at && *g > generation)
            .map(|(t, g)| (*g, *t))
            .max();
        if let Some((seen, at)) = newer {
            self.violation(format!(
                "invariant 6: {group} took a commit of {positions:?} by generation {generation}, sent at {:.3}, after generation {seen} was seen at {:.3}",
                sent_at.as_secs_f64(),
                at.as_secs_f64()
            ));
        }
        let now = self.now();
        self.generations_seen.push((now, generation));
    }

    /// A member fetched the members' group's committed offsets, asked at `asked_at`. Commits
    /// only move forward there (see `check`) and a fetch shows only durable ones, so a fetch
    /// shows no less than any fetch answered before it was asked: one that does saw a commit
    /// that was later taken back (or lost one).
    pub fn member_offsets_fetched(&mut self, asked_at: Duration, offsets: BTreeMap<i32, i64>) {
        let now = self.now();
        self.event(format!(
            "{} fetched {offsets:?} (asked at {:.3})",
            crate::workload::members::GROUP,
            asked_at.as_secs_f64()
        ));
        let mut found = Vec::new();
        for (_, answered, before) in self.member_fetches.iter().filter(|(_, a, _)| *a < asked_at) {
            for (partition, earlier, later) in taken_back(before, &offsets) {
                found.push(format!(
                    "invariant 6: {} partition {partition}'s committed offset was fetched as {earlier} (answered at {:.3}), then as {later:?} (asked at {:.3})",
                    crate::workload::members::GROUP,
                    answered.as_secs_f64(),
                    asked_at.as_secs_f64()
                ));
            }
        }
        self.member_fetches.push((asked_at, now, offsets));
        for v in found {
            self.violation(v);
        }
    }

    pub fn committed_at_end(&mut self, group: &'static str, committed: BTreeMap<i32, i64>) {
        self.event(format!(
            "{group}: committed offsets at the end {committed:?}"
        ));
        self.committed_at_end.insert(group, committed);
    }

    /// SyncGroup gave `member_id` of the members' group `partitions` in `generation`. Within a
    /// generation the members' assignments come from one leader's SyncGroup, so they never
    /// overlap and a member is always told the same; a generation number given twice (a
    /// coordinator that lost the group's state on failover and counted again) breaks that.
    pub fn group_synced(&mut self, generation: i32, member_id: &str, partitions: &[i32]) {
        self.event(format!(
            "member {member_id} synced generation {generation}: partitions {partitions:?}"
        ));
        let members = self.assignments.entry(generation).or_default();
        let mut found = Vec::new();
        if let Some(before) = members.get(member_id) {
            if before.as_slice() != partitions {
                found.push(format!(
                    "invariant 6: member {member_id} was assigned {before:?}, then {partitions:?}, in generation {generation}"
                ));
            }
        }
        for (other, theirs) in members.iter().filter(|(m, _)| m.as_str() != member_id) {
            if let Some(p) = partitions.iter().find(|p| theirs.contains(p)) {
                found.push(format!(
                    "invariant 6: members {other} and {member_id} were both assigned partition {p} in generation {generation}"
                ));
            }
        }
        members.insert(member_id.to_owned(), partitions.to_vec());
        let now = self.now();
        self.generations_seen.push((now, generation));
        for v in found {
            self.violation(v);
        }
    }

    pub fn drained(&mut self, partition: i32, log: Vec<(i64, String)>, high_watermark: i64) {
        self.event(format!(
            "drained partition {partition}: {} records, high watermark {high_watermark}",
            log.len()
        ));
        self.drained.insert(partition, (log, high_watermark));
    }

    /// The workload topic has `count` partitions (at creation, or grown).
    pub fn set_partitions(&mut self, count: i32) {
        self.partitions = count;
    }

    pub fn partitions(&self) -> i32 {
        self.partitions
    }

    pub fn scratch_drained(&mut self, log: Vec<(i64, String)>, high_watermark: i64) {
        self.scratch = Some((log, high_watermark));
    }

    /// The re-created scratch topic's final log and high watermark.
    pub fn scratch_log(&self) -> Option<(&[(i64, String)], i64)> {
        self.scratch.as_ref().map(|(log, hw)| (log.as_slice(), *hw))
    }

    /// A violation the harness found (a node that could not restart, a panic, no liveness).
    pub fn violation(&mut self, what: String) {
        self.event(format!("VIOLATION {what}"));
        self.violations.push(what);
    }

    /// The final log of `partition` (up to its high watermark) and that high watermark.
    pub fn final_log(&self, partition: i32) -> Option<(&[(i64, String)], i64)> {
        self.drained
            .get(&partition)
            .map(|(log, hw)| (log.as_slice(), *hw))
    }

    pub fn first_ack_after_heal(&self) -> Option<Duration> {
        self.first_ack_after_heal
    }

    pub fn acked_count(&self) -> usize {
        self.acked.len()
    }

    /// The invariants over the whole history; empty when all hold.
    pub fn check(&self) -> Vec<String> {
        let mut out = self.violations.clone();
        let mut at: BTreeMap<(i32, i64), &str> = BTreeMap::new();
        let mut seen: BTreeMap<&str, Vec<(i32, i64)>> = BTreeMap::new();
        for (partition, (log, _)) in &self.drained {
            for (offset, value) in log {
                at.insert((*partition, *offset), value);
                seen.entry(value).or_default().push((*partition, *offset));
            }
        }
        let drained_all = self.drained.len();
        // 1: acks=all writes are in the final log, at the offset acknowledged.
        for ack in self.acked.iter().filter(|a| a.acks == -1) {
            if !self.drained.contains_key(&ack.partition) {
                continue;
            }
            match at.get(&(ack.partition, ack.offset)) {
                Some(v) if *v == ack.value => {}
                Some(v) => out.push(format!(
                    "invariant 1: {} acknowledged (acks=all) at partition {} offset {}, which holds {v}",
                    ack.value, ack.partition, ack.offset
                )),
                None => out.push(format!(
                    "invariant 1: {} acknowledged (acks=all) at partition {} offset {} is lost",
                    ack.value, ack.partition, ack.offset
                )),
            }
        }
        // 6: an acknowledged offset commit survives: the offset read back at the end is at
        // least the last one acknowledged, and no more than the last one sent. Commits only
        // move forward: one committer in the standalone group; in the members' group the
        // values come from one counter, sent in order, and a member's commit is refused once
        // its generation is over, so a late one never lands after a newer member's.
        for (group, commits) in &self.commits {
            let Some(end) = self.committed_at_end.get(group) else {
                if commits.values().any(|(acked, _)| acked.is_some()) {
                    out.push(format!(
                        "invariant 6: {group}'s committed offsets were never read back"
                    ));
                }
                continue;
            };
            for (partition, (acked, sent)) in commits {
                let Some(acked) = acked else { continue };
                match end.get(partition) {
                    Some(o) if o >= acked && o <= sent => {}
                    other => out.push(format!(
                        "invariant 6: {group} partition {partition}'s committed offset is {other:?} at the end, but {acked} was acknowledged (the highest sent: {sent})"
                    )),
                }
            }
        }
        // 6: what a member fetched is not taken back: the offset read at the end is at least it.
        if let Some(end) = self.committed_at_end.get(crate::workload::members::GROUP) {
            for (_, answered, fetched) in &self.member_fetches {
                for (partition, offset, at_end) in taken_back(fetched, end) {
                    out.push(format!(
                        "invariant 6: {} partition {partition}'s committed offset was fetched as {offset} (answered at {:.3}), and is {at_end:?} at the end",
                        crate::workload::members::GROUP,
                        answered.as_secs_f64()
                    ));
                }
            }
        }
        // 5: an idempotent producer's value is written once.
        for (value, places) in &seen {
            let idempotent = self.sent.get(*value).is_some_and(|(i, _)| *i);
            let ids = self.producer_ids.get(*value).copied().unwrap_or(1);
            if idempotent && places.len() > ids {
                out.push(format!(
                    "invariant 5: idempotent value {value} written {} times under {ids} producer ids: {places:?}",
                    places.len()
                ));
            }
            if let Some((_, partition)) = self.sent.get(*value) {
                if places.iter().any(|(p, _)| p != partition) {
                    out.push(format!(
                        "value {value} sent to partition {partition} found at {places:?}"
                    ));
                }
            } else {
                out.push(format!("value {value} at {places:?} was never sent"));
            }
        }
        // 2 (as consumers see it): what a consumer read below the high watermark is what the
        // final log holds there.
        for (partition, log) in &self.consumed {
            let Some((_, final_hw)) = self.drained.get(partition) else {
                continue;
            };
            for (offset, value) in log {
                if offset >= final_hw {
                    out.push(format!(
                        "invariant 2: a consumer read partition {partition} offset {offset} ({value}), beyond the final high watermark {final_hw}"
                    ));
                } else if at.get(&(*partition, *offset)).is_some_and(|v| v != value) {
                    out.push(format!(
                        "invariant 2: a consumer read {value} at partition {partition} offset {offset}, which finally holds {}",
                        at[&(*partition, *offset)]
                    ));
                }
            }
        }
        // 3: the final high watermark is not below one a consumer saw.
        for (partition, seen) in &self.high_watermarks {
            if let Some((_, final_hw)) = self.drained.get(partition) {
                if final_hw < seen {
                    out.push(format!(
                        "invariant 3: partition {partition} ends at high watermark {final_hw}, below the {seen} a consumer saw"
                    ));
                }
            }
        }
        if drained_all == 0 {
            out.push("the final logs were never read".into());
        }
        self.check_txns(&mut out);
        self.check_copies(&mut out);
        out
    }
}

/// The partitions whose committed offset `later` shows below `earlier` (or not at all):
/// (partition, earlier offset, later offset).
fn taken_back<'a>(
    earlier: &'a BTreeMap<i32, i64>,
    later: &'a BTreeMap<i32, i64>,
) -> impl Iterator<Item = (i32, i64, Option<i64>)> + 'a {
    earlier.iter().filter_map(|(partition, offset)| {
        let now = later.get(partition).copied();
        now.is_none_or(|o| o < *offset)
            .then_some((*partition, *offset, now))
    })
}
