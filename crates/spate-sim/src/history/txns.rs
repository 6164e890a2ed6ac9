//! The transactional producers' history (`workload/txns.rs`) and its checks (violations that
//! start with "transactions:"):
//!
//! - a committed transaction's values are all in the final `read_committed` log, once each,
//!   at the offsets their writes were acknowledged at;
//! - a transaction whose commit was never asked for (aborted on purpose, aborted on an error,
//!   or failed before its EndTxn) is never read: not by the consumer, not in the final log;
//! - every transaction, its outcome known or not, is in the final log whole or not at all;
//! - nothing is read before its transaction's commit was asked for (the last stable offset
//!   holds an open transaction back), and what was read is what the final log holds there;
//! - a producer's values appear in a partition in the order it wrote them;
//! - the last stable offset a consumer is shown never goes back, and the final one (equal to
//!   the high watermark once nothing is open) is not below any it saw; the final
//!   `read_committed` log is the `read_uncommitted` one without markers and aborted records;
//! - a producer's group offset read back at the end is the one its last visible transaction
//!   sent: offsets are applied with the transaction's commit, dropped with its abort;
//! - no spurious failure: a transaction that began at least [`QUIET`] after the nemesis or the
//!   supervisor last acted, and failed before they acted again, is a violation
//!   ("transactions: spurious failure").

use super::{FinalLog, History};
use crate::workload::FetchAnswer;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// How long after the nemesis or the supervisor last acted the cluster may still show the
/// effects (leaders and coordinators moving back, a restarted node catching up): a
/// transaction that begins later than this after them must not fail.
const QUIET: Duration = Duration::from_secs(3);

/// How a transaction ended, as its producer knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxnOutcome {
    /// EndTxn(commit) was answered NONE.
    Committed,
    /// EndTxn(abort) was answered NONE.
    Aborted,
    /// Fenced, or EndTxn never answered: either, as long as it is all or nothing.
    Unknown,
}

#[derive(Debug, Default)]
struct Txn {
    /// (value, partition), in the order written.
    values: Vec<(String, i32)>,
    /// Value → (partition, offset) its write was acknowledged at.
    written: BTreeMap<String, (i32, i64)>,
    /// Whether the transaction sends the producer's group offset.
    offsets: bool,
    /// When EndTxn(commit) was first sent.
    commit_requested: Option<Duration>,
    outcome: Option<TxnOutcome>,
    /// When the producer began it.
    began: Duration,
    /// When and why it could not go on (an error that made its producer abort it, or left its
    /// outcome unknown); `None` when it ended as asked.
    failed: Option<(Duration, String)>,
}

/// Everything the transactional workload observed.
#[derive(Debug, Default)]
pub(super) struct Txns {
    /// (producer, n) → the transaction.
    txns: BTreeMap<(u64, u64), Txn>,
    /// Value → its transaction.
    owner: BTreeMap<String, (u64, u64)>,
    /// Partition → offset → (value, when), as the `read_committed` consumer read them.
    reads: BTreeMap<i32, BTreeMap<i64, (String, Duration)>>,
    /// Partition → the highest last stable offset a fetch answered.
    last_stable: BTreeMap<i32, i64>,
    /// Partition → (the final `read_committed` log, its high watermark).
    drained: BTreeMap<i32, FinalLog>,
    /// Partition → (the final `read_uncommitted` log, markers and aborted records included,
    /// its high watermark).
    drained_uncommitted: BTreeMap<i32, FinalLog>,
    /// Producer → its group offset read back at the end (`None`: no offset).
    offsets_at_end: BTreeMap<u64, Option<i64>>,
    /// The first commit answered after the faults healed.
    first_commit_after_heal: Option<Duration>,
}

impl History {
    pub fn txn_begin(&mut self, producer: u64, n: u64, values: &[(String, i32)], offsets: bool) {
        self.event(format!("txn t{producer}-{n} begins: {values:?}"));
        for (value, _) in values {
            self.txns.owner.insert(value.clone(), (producer, n));
        }
        let began = self.now();
        self.txns.txns.insert(
            (producer, n),
            Txn {
                values: values.to_vec(),
                offsets,
                began,
                ..Txn::default()
            },
        );
    }

    /// Transaction `n` of `producer` cannot go on: `why` made its producer abort it (or leave
    /// its outcome unknown).
    pub fn txn_failed(&mut self, producer: u64, n: u64, why: String) {
        self.event(format!("txn t{producer}-{n} failed: {why}"));
        let now = self.now();
        if let Some(txn) = self.txns.txns.get_mut(&(producer, n)) {
            txn.failed.get_or_insert((now, why));
        }
    }

    pub fn txn_written(&mut self, value: &str, partition: i32, offset: i64) {
        if let Some(txn) = self
            .txns
            .owner
            .get(value)
            .and_then(|key| self.txns.txns.get_mut(key))
        {
            txn.written.insert(value.to_owned(), (partition, offset));
        }
    }

    pub fn txn_commit_requested(&mut self, producer: u64, n: u64) {
        let now = self.now();
        if let Some(txn) = self.txns.txns.get_mut(&(producer, n)) {
            txn.commit_requested.get_or_insert(now);
        }
    }

    pub fn txn_outcome(&mut self, producer: u64, n: u64, outcome: TxnOutcome) {
        self.event(format!("txn t{producer}-{n} {outcome:?}"));
        if outcome == TxnOutcome::Committed {
            let now = self.now();
            if self
                .healed_at
                .is_some_and(|healed| now >= healed && self.txns.first_commit_after_heal.is_none())
            {
                self.txns.first_commit_after_heal = Some(now);
            }
        }
        if let Some(txn) = self.txns.txns.get_mut(&(producer, n)) {
            txn.outcome = Some(outcome);
        }
    }

    /// A `read_committed` fetch of `partition` answered: its last stable offset must not go
    /// back, and nothing at or past it may be returned.
    pub fn txn_fetched(&mut self, partition: i32, answer: &FetchAnswer) {
        let lso = answer.last_stable_offset;
        if let Some(r) = answer.records.iter().find(|r| r.offset >= lso) {
            self.violation(format!(
                "transactions: a read_committed fetch of {} partition {partition} returned offset {} ({}), at or past its last stable offset {lso}",
                crate::workload::txns::TXN_TOPIC,
                r.offset,
                r.value
            ));
        }
        let seen = self.txns.last_stable.entry(partition).or_insert(lso);
        if lso < *seen {
            let message = format!(
                "transactions: {} partition {partition}'s last stable offset went back from {seen} to {lso}",
                crate::workload::txns::TXN_TOPIC
            );
            self.violation(message);
        } else {
            *seen = lso;
        }
    }

    pub fn txn_read(&mut self, partition: i32, offset: i64, value: &str) {
        let now = self.now();
        self.txns
            .reads
            .entry(partition)
            .or_default()
            .insert(offset, (value.to_owned(), now));
    }

    pub fn txn_drained(&mut self, partition: i32, log: Vec<(i64, String)>, high_watermark: i64) {
        self.event(format!(
            "drained {} partition {partition} read_committed: {} records, high watermark {high_watermark}",
            crate::workload::txns::TXN_TOPIC,
            log.len()
        ));
        self.txns.drained.insert(partition, (log, high_watermark));
    }

    pub fn txn_drained_uncommitted(
        &mut self,
        partition: i32,
        log: Vec<(i64, String)>,
        high_watermark: i64,
    ) {
        self.txns
            .drained_uncommitted
            .insert(partition, (log, high_watermark));
    }

    pub fn txn_offset_at_end(&mut self, producer: u64, offset: Option<i64>) {
        self.event(format!(
            "txn producer {producer}'s group offset at the end: {offset:?}"
        ));
        self.txns.offsets_at_end.insert(producer, offset);
    }

    /// The transactional topic's partitions as drained `read_uncommitted`: (partition, log,
    /// high watermark), for the replicas' comparison.
    pub fn txn_final_logs(&self) -> impl Iterator<Item = (i32, &[(i64, String)], i64)> {
        self.txns
            .drained_uncommitted
            .iter()
            .map(|(p, (log, hw))| (*p, log.as_slice(), *hw))
    }

    /// Partition → (its final `read_committed` log, its high watermark).
    pub(super) fn drained_committed(&self) -> &BTreeMap<i32, FinalLog> {
        &self.txns.drained
    }

    pub fn txn_first_commit_after_heal(&self) -> Option<Duration> {
        self.txns.first_commit_after_heal
    }

    /// The transaction checks over the whole run.
    pub(super) fn check_txns(&self, out: &mut Vec<String>) {
        let t = &self.txns;
        if t.txns.is_empty() {
            return;
        }
        let topic = crate::workload::txns::TXN_TOPIC;
        if t.drained.is_empty() {
            out.push(format!("transactions: {topic} was never drained"));
            return;
        }
        // Value → where the final read_committed log holds it.
        let mut places: BTreeMap<&str, Vec<(i32, i64)>> = BTreeMap::new();
        let mut at: BTreeMap<(i32, i64), &str> = BTreeMap::new();
        for (partition, (log, _)) in &t.drained {
            for (offset, value) in log {
                places.entry(value).or_default().push((*partition, *offset));
                at.insert((*partition, *offset), value);
            }
        }
        for (value, found) in &places {
            let Some(key) = t.owner.get(*value) else {
                out.push(format!("transactions: {value} at {found:?} was never sent"));
                continue;
            };
            let txn = &t.txns[key];
            if txn.commit_requested.is_none() {
                out.push(format!(
                    "transactions: {value} of transaction t{}-{} ({:?}, no commit asked) is in the read_committed log at {found:?}",
                    key.0, key.1, txn.outcome
                ));
            }
            if found.len() > 1 {
                out.push(format!(
                    "transactions: {value} is in the read_committed log {} times: {found:?}",
                    found.len()
                ));
            }
            if let Some(&(partition, offset)) = txn.written.get(*value) {
                if !found.contains(&(partition, offset)) {
                    out.push(format!(
                        "transactions: {value}'s write was acknowledged at partition {partition} offset {offset}, the read_committed log has it at {found:?}"
                    ));
                }
            }
        }
        for ((producer, n), txn) in &t.txns {
            let visible = txn
                .values
                .iter()
                .filter(|(v, _)| places.contains_key(v.as_str()))
                .count();
            if visible != 0 && visible != txn.values.len() {
                out.push(format!(
                    "transactions: transaction t{producer}-{n} ({:?}) is partly visible: {visible} of {:?}",
                    txn.outcome, txn.values
                ));
            }
            if txn.outcome == Some(TxnOutcome::Committed) && visible != txn.values.len() {
                out.push(format!(
                    "transactions: committed transaction t{producer}-{n} is lost: {visible} of {:?} in the read_committed log",
                    txn.values
                ));
            }
        }
        self.check_txn_reads(&at, out);
        self.check_quiet_failures(out);
        check_order(t, out);
        self.check_txn_logs(out);
        check_offsets(t, &places, out);
    }

    /// A transaction fails only when a fault explains it: one that began at least [`QUIET`]
    /// after the nemesis or the supervisor last acted, and failed before they acted again,
    /// with no fault in effect meanwhile, saw a healthy cluster throughout (retriable errors
    /// are retried; nothing should make a producer abort).
    fn check_quiet_failures(&self, out: &mut Vec<String>) {
        for ((producer, n), txn) in &self.txns.txns {
            let Some((at, why)) = &txn.failed else {
                continue;
            };
            let from = txn.began.saturating_sub(QUIET);
            if !self
                .disturbances
                .iter()
                .any(|(start, end)| start <= at && *end >= from)
            {
                out.push(format!(
                    "transactions: spurious failure: transaction t{producer}-{n} failed at {:.3}s with no fault in effect since {:.3}s: {why}",
                    at.as_secs_f64(),
                    from.as_secs_f64()
                ));
            }
        }
    }

    /// What the consumer read: after the commit was asked for, and the final log's value there.
    fn check_txn_reads(&self, at: &BTreeMap<(i32, i64), &str>, out: &mut Vec<String>) {
        let t = &self.txns;
        for (partition, reads) in &t.reads {
            for (offset, (value, when)) in reads {
                let asked = t
                    .owner
                    .get(value)
                    .and_then(|key| t.txns[key].commit_requested);
                match asked {
                    Some(asked) if asked <= *when => {}
                    _ => out.push(format!(
                        "transactions: {value} was read at {:.3} from partition {partition} offset {offset}, its commit asked at {asked:?}",
                        when.as_secs_f64()
                    )),
                }
                match at.get(&(*partition, *offset)) {
                    Some(v) if *v == value => {}
                    other => out.push(format!(
                        "transactions: {value} was read at partition {partition} offset {offset}, where the final read_committed log has {other:?}"
                    )),
                }
            }
        }
    }

    /// The final logs: the last stable offsets seen are not above the final high watermark,
    /// and the read_committed log is within the read_uncommitted one.
    fn check_txn_logs(&self, out: &mut Vec<String>) {
        let t = &self.txns;
        for (partition, (log, high_watermark)) in &t.drained {
            if let Some(seen) = t.last_stable.get(partition).filter(|s| *s > high_watermark) {
                out.push(format!(
                    "transactions: partition {partition} ends at high watermark {high_watermark}, below the last stable offset {seen} a consumer saw"
                ));
            }
            let Some((everything, _)) = t.drained_uncommitted.get(partition) else {
                out.push(format!(
                    "transactions: partition {partition} was not drained read_uncommitted"
                ));
                continue;
            };
            let everything: BTreeMap<i64, &String> =
                everything.iter().map(|(o, v)| (*o, v)).collect();
            for (offset, value) in log {
                if everything.get(offset) != Some(&value) {
                    out.push(format!(
                        "transactions: partition {partition} offset {offset} holds {value} read_committed, {:?} read_uncommitted",
                        everything.get(offset)
                    ));
                }
            }
        }
    }
}

/// Each producer's values in a partition of the final log, in the order written.
fn check_order(t: &Txns, out: &mut Vec<String>) {
    for (partition, (log, _)) in &t.drained {
        let mut last: BTreeMap<u64, ((u64, usize), &str)> = BTreeMap::new();
        for (_, value) in log {
            let Some(&(producer, n)) = t.owner.get(value) else {
                continue;
            };
            let k = t.txns[&(producer, n)]
                .values
                .iter()
                .position(|(v, _)| v == value)
                .unwrap_or(0);
            if let Some((before, previous)) = last.get(&producer) {
                if *before > (n, k) {
                    out.push(format!(
                        "transactions: partition {partition} has {value} after {previous}, written later"
                    ));
                }
            }
            last.insert(producer, ((n, k), value));
        }
    }
}

/// The group offset read back is the one the producer's last visible transaction sent (each
/// of its transactions sends `n + 1`), or none when no transaction is visible.
fn check_offsets(t: &Txns, places: &BTreeMap<&str, Vec<(i32, i64)>>, out: &mut Vec<String>) {
    for (producer, at_end) in &t.offsets_at_end {
        let visible: BTreeSet<u64> = t
            .txns
            .iter()
            .filter(|((p, _), txn)| {
                p == producer
                    && txn.offsets
                    && txn
                        .values
                        .first()
                        .is_some_and(|(v, _)| places.contains_key(v.as_str()))
            })
            .map(|((_, n), _)| *n)
            .collect();
        let expected = visible
            .last()
            .map(|n| i64::try_from(*n).unwrap_or(i64::MAX - 1) + 1);
        if *at_end != expected {
            out.push(format!(
                "transactions: txn producer {producer}'s group offset is {at_end:?} at the end, but its last visible transaction sent {expected:?}"
            ));
        }
    }
}
