//! The exactly-once copier's history (`workload/copier.rs`) and its check (violations that
//! start with "exactly-once copy:"): once the copier has copied everything, its committed
//! offset of each input partition is the input's end, and the copy of that partition, read
//! `read_committed`, is exactly the input's committed records below that offset, each once and
//! in order. A copy lost (offsets committed without it), doubled (a zombie's or a retried
//! transaction's), out of order, of an aborted input record, or an aborted copy that is
//! visible, each breaks it.

use super::{FinalLog, History};
use crate::workload::copier::COPY_TOPIC;
use crate::workload::txns::{TXN_PARTITIONS, TXN_TOPIC};
use std::collections::BTreeMap;

/// How many values a violation lists at most.
const LISTED_MAX: usize = 5;

/// Everything the copier's run left to check.
#[derive(Debug, Default)]
pub(super) struct Copies {
    /// Whether the seed runs the copier.
    ran: bool,
    /// Partition → the copy's final `read_committed` log.
    drained: BTreeMap<i32, FinalLog>,
    /// Partition → the copy's final `read_uncommitted` log (markers and aborted copies
    /// included), for the replicas' comparison.
    drained_uncommitted: BTreeMap<i32, FinalLog>,
    /// Input partition → the copier's committed offset, read back at the end.
    offsets_at_end: Option<BTreeMap<i32, i64>>,
}

impl History {
    pub fn copier_started(&mut self) {
        self.copies.ran = true;
    }

    pub fn copy_drained(&mut self, partition: i32, log: Vec<(i64, String)>, high_watermark: i64) {
        self.event(format!(
            "drained {COPY_TOPIC} partition {partition} read_committed: {} records, high watermark {high_watermark}",
            log.len()
        ));
        self.copies.drained.insert(partition, (log, high_watermark));
    }

    pub fn copy_drained_uncommitted(
        &mut self,
        partition: i32,
        log: Vec<(i64, String)>,
        high_watermark: i64,
    ) {
        self.copies
            .drained_uncommitted
            .insert(partition, (log, high_watermark));
    }

    pub fn copier_offsets_at_end(&mut self, offsets: BTreeMap<i32, i64>) {
        self.event(format!("the copier's offsets at the end: {offsets:?}"));
        self.copies.offsets_at_end = Some(offsets);
    }

    /// The copy's partitions as drained `read_uncommitted`: (partition, log, high watermark).
    pub fn copy_final_logs(&self) -> impl Iterator<Item = (i32, &[(i64, String)], i64)> {
        self.copies
            .drained_uncommitted
            .iter()
            .map(|(p, (log, hw))| (*p, log.as_slice(), *hw))
    }

    /// The copier's check, if the seed runs it.
    pub(super) fn check_copies(&self, out: &mut Vec<String>) {
        if self.copies.ran {
            check(self.drained_committed(), &self.copies, out);
        }
    }
}

fn check(input: &BTreeMap<i32, FinalLog>, copies: &Copies, out: &mut Vec<String>) {
    let Some(offsets) = &copies.offsets_at_end else {
        out.push("exactly-once copy: the copier's offsets were never read back".into());
        return;
    };
    for partition in 0..TXN_PARTITIONS {
        let (Some((input, end)), Some((copy, _))) =
            (input.get(&partition), copies.drained.get(&partition))
        else {
            out.push(format!(
                "exactly-once copy: {TXN_TOPIC} or {COPY_TOPIC} partition {partition} was never drained"
            ));
            continue;
        };
        let committed = offsets.get(&partition).copied().unwrap_or(0);
        if committed != *end {
            out.push(format!(
                "exactly-once copy: the copier finished at offset {committed} of {TXN_TOPIC}-{partition}, not at its end {end}"
            ));
        }
        let expected: Vec<String> = input
            .iter()
            .filter(|(offset, _)| *offset < committed)
            .map(|(_, value)| format!("c-{value}"))
            .collect();
        let got: Vec<&str> = copy.iter().map(|(_, value)| value.as_str()).collect();
        if got != expected {
            out.push(format!(
                "exactly-once copy: {COPY_TOPIC}-{partition} is not the input below offset {committed}: {}",
                difference(&expected, &got)
            ));
        }
    }
}

/// What differs between the copy expected and the one read: counts, the first difference,
/// and the values doubled, missing and unexpected (a few of each).
fn difference(expected: &[String], got: &[&str]) -> String {
    let first = expected
        .iter()
        .map(String::as_str)
        .zip(got.iter().copied())
        .position(|(e, g)| e != g)
        .unwrap_or(expected.len().min(got.len()));
    let mut counts: BTreeMap<&str, i64> = BTreeMap::new();
    for g in got {
        *counts.entry(g).or_default() += 1;
    }
    let doubled: Vec<&str> = counts
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(v, _)| *v)
        .take(LISTED_MAX)
        .collect();
    for e in expected {
        *counts.entry(e).or_default() -= 1;
    }
    let missing: Vec<&str> = counts
        .iter()
        .filter(|(_, n)| **n < 0)
        .map(|(v, _)| *v)
        .take(LISTED_MAX)
        .collect();
    let unexpected: Vec<&str> = counts
        .iter()
        .filter(|(v, n)| **n > 0 && !expected.iter().any(|e| e == *v))
        .map(|(v, _)| *v)
        .take(LISTED_MAX)
        .collect();
    format!(
        "{} copies, {} expected; first difference at copy {first} (expected {:?}, read {:?}); doubled {doubled:?}, missing {missing:?}, not in the input {unexpected:?}",
        got.len(),
        expected.len(),
        expected.get(first),
        got.get(first)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Input partitions 0 and 1: (offset, value), with gaps where markers and aborted
    /// records sit, and their ends.
    fn input() -> BTreeMap<i32, FinalLog> {
        BTreeMap::from([
            (
                0,
                (vec![(0, "a".into()), (1, "b".into()), (4, "c".into())], 6),
            ),
            (1, (vec![(2, "x".into())], 4)),
        ])
    }

    fn copies(copy0: &[&str], copy1: &[&str], offsets: [i64; 2]) -> Copies {
        let log = |values: &[&str]| -> FinalLog {
            let log: Vec<(i64, String)> = values
                .iter()
                .enumerate()
                .map(|(i, v)| (i as i64 * 2, v.to_string()))
                .collect();
            let end = log.len() as i64 * 2 + 1;
            (log, end)
        };
        Copies {
            ran: true,
            drained: BTreeMap::from([(0, log(copy0)), (1, log(copy1))]),
            drained_uncommitted: BTreeMap::new(),
            offsets_at_end: Some(BTreeMap::from([(0, offsets[0]), (1, offsets[1])])),
        }
    }

    fn violations(copies: &Copies) -> Vec<String> {
        let mut out = Vec::new();
        check(&input(), copies, &mut out);
        out
    }

    #[test]
    fn an_exact_copy_to_the_end_passes() {
        let ok = copies(&["c-a", "c-b", "c-c"], &["c-x"], [6, 4]);
        assert_eq!(violations(&ok), Vec::<String>::new());
    }

    #[test]
    fn a_doubled_copy_is_found() {
        let v = violations(&copies(&["c-a", "c-b", "c-b", "c-c"], &["c-x"], [6, 4]));
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(
            v[0].contains("sim-copy-0") && v[0].contains("doubled [\"c-b\"]"),
            "{v:?}"
        );
        assert!(v[0].contains("first difference at copy 2"), "{v:?}");
    }

    #[test]
    fn a_copy_lost_under_committed_offsets_is_found() {
        let v = violations(&copies(&["c-a", "c-c"], &["c-x"], [6, 4]));
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].contains("missing [\"c-b\"]"), "{v:?}");
    }

    #[test]
    fn a_copy_of_a_record_the_input_does_not_commit_is_found() {
        let v = violations(&copies(&["c-a", "c-b", "c-c"], &["c-y", "c-x"], [6, 4]));
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(
            v[0].contains("sim-copy-1") && v[0].contains("not in the input [\"c-y\"]"),
            "{v:?}"
        );
    }

    #[test]
    fn copies_reordered_are_found() {
        let v = violations(&copies(&["c-b", "c-a", "c-c"], &["c-x"], [6, 4]));
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].contains("first difference at copy 0"), "{v:?}");
    }

    #[test]
    fn offsets_short_of_the_end_are_found_and_bound_the_copy() {
        // Committed at 2 of partition 0: only a and b below it; the copy of c is one too many.
        let v = violations(&copies(&["c-a", "c-b", "c-c"], &["c-x"], [2, 4]));
        assert_eq!(v.len(), 2, "{v:?}");
        assert!(
            v[0].contains("finished at offset 2 of sim-txn-0, not at its end 6"),
            "{v:?}"
        );
        assert!(v[1].contains("not in the input [\"c-c\"]"), "{v:?}");
    }

    #[test]
    fn offsets_never_read_back_are_a_violation() {
        let mut c = copies(&[], &[], [0, 0]);
        c.offsets_at_end = None;
        assert_eq!(
            violations(&c),
            vec!["exactly-once copy: the copier's offsets were never read back".to_string()]
        );
    }
}
