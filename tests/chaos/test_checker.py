"""Tests of checker.py: each anomaly of HISTORY.md alone in a hand-made history, clean histories
that must pass, the availability and latency figures, load() and main()."""

import json
import subprocess
import sys
import time

import pytest

import checker

ANOMALY_NAMES = {"lost", "duplicated", "inconsistent_offset", "wrong_partition", "skipped",
                 "nonmonotonic", "unexpected", "incomplete_drain", "txn_lost", "txn_aborted_visible",
                 "txn_partial", "txn_early_read", "copy_missing", "copy_extra", "copy_duplicated", "copy_order",
                 "copy_incomplete_drain"}
NO_TXNS = {"txn_committed": 0, "txn_aborted": 0, "txn_unknown": 0, "copy_txns": 0, "copied": 0}
LOG0 = {0: "a0", 1: "a1", 2: "a2"}  # partition 0: offset -> value
LOG1 = {0: "b0", 1: "b1"}           # partition 1


class History:
    """Builds a list of events; an event without an explicit t comes 0.1 s after the previous one."""

    def __init__(self):
        self.events = []

    def add(self, kind, t=None, **fields):
        if t is None:
            t = round(self.events[-1]["t"] + 0.1, 3) if self.events else 0.0
        self.events.append({"t": t, "kind": kind, **fields})
        return self

    def send(self, value, partition=0, t=None):
        return self.add("send", t, producer="p0", partition=partition, value=value)

    def ack(self, value, offset, partition=0, t=None):
        return self.add("ack", t, producer="p0", partition=partition, value=value, offset=offset)

    def fail(self, value, partition=0, t=None):
        return self.add("fail", t, producer="p0", partition=partition, value=value, error="timed out")

    def read(self, offset, value, partition=0, consumer="c0", session=0):
        return self.add("read", consumer=consumer, session=session, partition=partition, offset=offset,
                        value=value)

    def drain(self, offset, value, partition=0):
        return self.add("drain", partition=partition, offset=offset, value=value)

    def drain_end(self, high_watermark, partition=0, complete=True):
        return self.add("drain-end", partition=partition, high_watermark=high_watermark, complete=complete)

    def txn(self, txn, values, request=None, outcome=None, producer="x0"):
        """A transaction: begin, each (partition, offset, value) sent and acked (written), then
        txn-end with `request` and txn-outcome with `outcome` when given."""
        self.add("txn-begin", producer=producer, txn=txn)
        for partition, offset, value in values:
            self.add("send", producer=producer, partition=partition, value=value, txn=txn)
            self.ack(value, offset, partition)
        if request:
            self.add("txn-end", producer=producer, txn=txn, request=request)
        if outcome:
            self.add("txn-outcome", producer=producer, txn=txn, outcome=outcome)
        return self

    def end(self, t=None):
        return self.add("end", t)

    def produce(self, log, partition=0):
        for offset, value in log.items():
            self.send(value, partition).ack(value, offset, partition)
        return self

    def read_log(self, log, partition=0, session=0):
        for offset, value in log.items():
            self.read(offset, value, partition, session=session)
        return self

    def drain_log(self, log, partition=0, complete=True):
        for offset, value in log.items():
            self.drain(offset, value, partition)
        return self.drain_end(max(log, default=-1) + 1, partition, complete)

    def t_of(self, kind, value):
        return next(e["t"] for e in self.events if e["kind"] == kind and e.get("value") == value)


def produced_and_read():
    """LOG0 and LOG1 sent, acked and read by c0 (session 0), then the end of the workload."""
    return History().produce(LOG0, 0).produce(LOG1, 1).read_log(LOG0, 0).read_log(LOG1, 1).end()


def assert_valid(result):
    assert set(result["anomalies"]) == ANOMALY_NAMES
    assert result["anomalies"] == {name: [] for name in ANOMALY_NAMES}
    assert result["anomaly_counts"] == {name: 0 for name in ANOMALY_NAMES}
    assert result["valid"] is True


def only(result, name):
    """The entries of anomaly `name`, after asserting that no other anomaly was found."""
    assert {n for n, count in result["anomaly_counts"].items() if count} == {name}
    assert all(not entries for n, entries in result["anomalies"].items() if n != name)
    assert result["valid"] is False
    return result["anomalies"][name]


# Clean histories


def test_clean_history_is_valid():
    h = produced_and_read().drain_log(LOG0, 0).drain_log(LOG1, 1)
    result = checker.check(h.events)
    assert_valid(result)
    assert result["counts"] == {"sent": 5, "acked": 5, "failed": 0, "indeterminate": 0, "read": 5,
                                "drained": 5, **NO_TXNS}
    assert result["indeterminate_present"] == 0


def test_failed_and_unanswered_values_in_the_log_or_absent_are_valid_and_counted():
    h = History().produce(LOG0)
    h.send("failed-in").fail("failed-in").send("failed-out").fail("failed-out")
    h.send("unanswered-in").send("unanswered-out")
    log = {**LOG0, 3: "failed-in", 4: "unanswered-in"}
    h.read_log(log).end().drain_log(log)
    result = checker.check(h.events)
    assert_valid(result)
    assert result["counts"] == {"sent": 7, "acked": 3, "failed": 2, "indeterminate": 4, "read": 5,
                                "drained": 5, **NO_TXNS}
    assert result["indeterminate_present"] == 2


def test_consumer_restarting_with_new_session_rereads_earlier_offsets_validly():
    h = History().produce(LOG0).read_log(LOG0, session=0).read(1, "a1", session=1).read(2, "a2", session=1)
    h.read(0, "a0", session=2).end().drain_log(LOG0)
    result = checker.check(h.events)
    assert_valid(result)
    assert result["counts"]["read"] == 6


def test_consumer_jumping_over_offsets_absent_from_the_drain_is_not_a_skip():
    log = {0: "a0", 1: "a1", 4: "a4", 7: "a7"}  # 2, 3, 5, 6: e.g. transaction markers
    h = History().produce(log).read_log(log).end().drain_log(log)
    assert h.events[-1]["high_watermark"] == 8
    assert_valid(checker.check(h.events))


def test_retried_drain_repeating_records_is_not_duplicated_and_its_last_drain_end_counts():
    h = produced_and_read().drain_log({0: "a0"}, 0, complete=False).drain_log(LOG0, 0).drain_log(LOG1, 1)
    result = checker.check(h.events)
    assert_valid(result)
    assert result["counts"]["drained"] == 6


def test_clean_history_of_200k_events_is_checked_in_seconds():
    logs = {p: {offset: f"v{p}-{offset}" for offset in range(12_500)} for p in range(4)}
    h = History()
    for partition, log in logs.items():
        h.produce(log, partition).read_log(log, partition)
    h.end()
    for partition, log in logs.items():
        h.drain_log(log, partition)
    assert len(h.events) == 200_005  # send, ack, read and drain of 50 000 values, end, 4 drain-ends

    started = time.monotonic()
    result = checker.check(h.events)
    elapsed = time.monotonic() - started

    assert_valid(result)
    assert result["counts"]["acked"] == result["counts"]["drained"] == 50_000
    assert elapsed < 5.0, f"check() took {elapsed:.1f} s"


# Each anomaly alone


def test_acked_value_absent_from_complete_drain_is_lost():
    h = produced_and_read().drain_log({0: "a0", 2: "a2"}, 0).drain_log(LOG1, 1)
    assert only(checker.check(h.events), "lost") == [
        {"value": "a1", "partition": 0, "offset": 1, "t": h.t_of("ack", "a1")}]


def test_acked_value_in_partition_with_incomplete_drain_is_not_lost_but_incomplete_drain():
    h = produced_and_read().add("drain-end", partition=0, high_watermark=3, complete=False).drain_log(LOG1, 1)
    assert only(checker.check(h.events), "incomplete_drain") == [
        {"partition": 0, "reason": "complete=false", "high_watermark": 3}]


def test_partition_with_acks_but_no_drain_end_is_incomplete_drain():
    h = produced_and_read().drain_log(LOG0, 0)
    assert only(checker.check(h.events), "incomplete_drain") == [{"partition": 1, "reason": "no drain-end"}]


def test_acked_value_drained_in_another_partition_is_wrong_partition_not_lost():
    h = produced_and_read().drain_log({0: "a0", 1: "a1"}, 0).drain_log({**LOG1, 2: "a2"}, 1)
    assert only(checker.check(h.events), "wrong_partition") == [
        {"value": "a2", "source": "drain", "t": h.events[-2]["t"], "partition": 1, "offset": 2,
         "sent_partition": 0}]


def test_value_at_two_offsets_of_the_drain_is_duplicated():
    h = produced_and_read().drain_log({**LOG0, 3: "a1"}, 0).drain_log(LOG1, 1)
    assert only(checker.check(h.events), "duplicated") == [{"value": "a1", "positions": [[0, 1], [0, 3]]}]


def test_value_drained_in_two_partitions_is_duplicated_and_wrong_partition():
    h = produced_and_read().drain_log(LOG0, 0).drain_log({**LOG1, 2: "a0"}, 1)
    result = checker.check(h.events)
    assert {n for n, count in result["anomaly_counts"].items() if count} == {"duplicated", "wrong_partition"}
    assert result["anomalies"]["duplicated"] == [{"value": "a0", "positions": [[0, 0], [1, 2]]}]
    assert [(e["value"], e["partition"], e["offset"]) for e in result["anomalies"]["wrong_partition"]] == [
        ("a0", 1, 2)]


def test_two_values_acked_at_one_offset_is_inconsistent_offset():
    h = History().produce(LOG0).send("c").ack("c", 1).read_log(LOG0).end().drain_log({**LOG0, 3: "c"})
    assert only(checker.check(h.events), "inconsistent_offset") == [
        {"partition": 0, "offset": 1, "values": [
            {"value": "a1", "source": "ack", "t": h.t_of("ack", "a1"), "producer": "p0"},
            {"value": "c", "source": "ack", "t": h.t_of("ack", "c"), "producer": "p0"}]}]


def test_read_disagreeing_with_the_drain_at_one_offset_is_inconsistent_offset():
    h = History().send("a0").send("a1").read(0, "a1").end().drain_log({0: "a0", 1: "a1"})
    [entry] = only(checker.check(h.events), "inconsistent_offset")
    assert (entry["partition"], entry["offset"]) == (0, 0)
    assert [(v["value"], v["source"]) for v in entry["values"]] == [("a1", "read"), ("a0", "drain")]


def test_consumer_jumping_over_drained_records_is_skipped_counting_only_existing_offsets():
    log = {0: "a0", 1: "a1", 2: "a2", 5: "a5", 6: "a6"}
    h = History().produce(log).read(0, "a0").read(6, "a6").end().drain_log(log)
    assert only(checker.check(h.events), "skipped") == [
        {"consumer": "c0", "session": 0, "partition": 0, "from_offset": 0, "to_offset": 6,
         "first_skipped": 1, "skipped": 3, "t": h.t_of("read", "a6")}]


def test_consumer_rereading_or_going_back_within_one_session_is_nonmonotonic():
    h = History().produce(LOG0).read_log(LOG0).read(2, "a2").read(0, "a0").end().drain_log(LOG0)
    reads = [e for e in h.events if e["kind"] == "read"]
    stream = {"consumer": "c0", "session": 0, "partition": 0}
    assert only(checker.check(h.events), "nonmonotonic") == [
        {**stream, "previous_offset": 2, "offset": 2, "t": reads[3]["t"]},
        {**stream, "previous_offset": 2, "offset": 0, "t": reads[4]["t"]}]


def test_value_never_sent_is_unexpected_once_per_position_with_its_first_observation():
    h = History().produce(LOG0).read_log({**LOG0, 3: "ghost"}).end().drain_log({**LOG0, 3: "ghost"})
    assert only(checker.check(h.events), "unexpected") == [
        {"value": "ghost", "source": "read", "t": h.t_of("read", "ghost"), "consumer": "c0", "session": 0,
         "partition": 0, "offset": 3}]


def test_anomaly_lists_are_capped_at_100_and_counts_keep_the_total():
    h = History().produce({offset: f"v{offset}" for offset in range(150)}).end().drain_end(150)
    result = checker.check(h.events)
    lost = only(result, "lost")
    assert result["anomaly_counts"]["lost"] == 150
    assert [e["value"] for e in lost] == [f"v{offset}" for offset in range(100)]


# Figures


def test_availability_share_and_longest_gap_on_a_known_timeline():
    h = History()
    h.send("a", t=0.5).ack("a", 0, t=0.6).send("b", t=1.0).ack("b", 1, t=1.2)
    h.send("c", t=1.5).ack("c", 2, t=1.9)
    h.send("d", t=2.0).fail("d", t=4.0).send("e", t=5.0).ack("e", 3, t=5.3).end(t=7.0)
    # Seconds [0, 7): acks in seconds 0, 1 and 5; marks 0.5 0.6 1.2 1.9 5.3 7.0, longest gap 1.9 -> 5.3.
    assert checker.check(h.events)["availability"] == {"share": pytest.approx(3 / 7), "longest_gap_s": 3.4,
                                                       "seconds": 7}


def test_acks_after_the_end_event_do_not_count_for_availability():
    h = History().send("a", t=0.0).ack("a", 0, t=0.5).send("b", t=1.0).end(t=3.0).ack("b", 1, t=3.6)
    assert checker.check(h.events)["availability"] == {"share": pytest.approx(1 / 3), "longest_gap_s": 2.5,
                                                       "seconds": 3}


def test_ack_at_an_integer_end_time_falls_outside_the_seconds_counted():
    h = History().send("a", t=0.0).ack("a", 0, t=0.5).send("b", t=1.0).ack("b", 1, t=2.0).end(t=2.0)
    assert checker.check(h.events)["availability"] == {"share": 0.5, "longest_gap_s": 1.5, "seconds": 2}


def test_availability_without_end_event_runs_to_the_last_event():
    h = History().send("a", t=0.2).ack("a", 0, t=0.4).add("drain", t=3.5, partition=0, offset=0, value="a")
    assert checker.check(h.events)["availability"] == {"share": 0.25, "longest_gap_s": 3.1, "seconds": 4}


def test_latency_percentiles_are_nearest_rank_over_unordered_latencies():
    h = History()
    for i in range(100):
        latency_ms = (i * 37) % 100 + 1  # a permutation of 1..100
        h.send(f"v{i}", t=float(i)).ack(f"v{i}", i, t=i + latency_ms / 1000)
    assert checker.check(h.events)["latency_ms"] == {"p50": 50.0, "p99": 99.0, "max": 100.0}


def test_value_sent_twice_counts_once_and_its_latency_runs_from_the_first_send():
    h = History().send("a", t=0.0).send("a", t=0.5).ack("a", 0, t=0.8).end(t=1.0).drain_log({0: "a"})
    result = checker.check(h.events)
    assert_valid(result)
    assert result["counts"]["sent"] == 1
    assert result["latency_ms"] == {"p50": 800.0, "p99": 800.0, "max": 800.0}


def test_history_without_acks_has_no_latency_and_zero_availability():
    h = History().send("a", t=0.0).fail("a", t=2.5).end(t=3.0)
    result = checker.check(h.events)
    assert result["latency_ms"] == {"p50": None, "p99": None, "max": None}
    assert result["availability"] == {"share": 0.0, "longest_gap_s": 3.0, "seconds": 3}
    assert_valid(result)


# Transactions: partition 0 holds a0 at 0, then the transactions' values; markers take offsets
# the drain never shows.


def transactions():
    """x-1 committed (a value in each partition), x-2 aborted, x-3 ended by its producer's death
    after its commit was asked for (unknown, and committed by the coordinator), x-4 begun and
    never ended (unknown, aborted by the coordinator)."""
    h = History().produce({0: "a0"})
    h.txn("x-1", [(0, 1, "x1a"), (1, 0, "x1b")], "commit", "committed")
    h.txn("x-2", [(0, 3, "x2a"), (1, 2, "x2b")], "abort", "aborted")
    h.txn("x-3", [(0, 5, "x3a")], "commit")
    h.txn("x-4", [(1, 4, "x4a")])
    return h


def drain_transactions(h, log0=None, log1=None):
    log0 = {0: "a0", 1: "x1a", 5: "x3a"} if log0 is None else log0
    log1 = {0: "x1b"} if log1 is None else log1
    return h.end().drain_log(log0, 0).drain_log(log1, 1)


def test_committed_values_visible_aborted_ones_hidden_is_valid_and_counted():
    h = transactions().read(1, "x1a").read(5, "x3a").read(0, "x1b", partition=1)
    result = checker.check(drain_transactions(h).events)
    assert_valid(result)
    assert result["counts"]["txn_committed"] == 1
    assert result["counts"]["txn_aborted"] == 1
    assert result["counts"]["txn_unknown"] == 2
    assert result["counts"]["acked"] == 7  # written; an aborted value's ack is not a lost write


def test_an_unknown_transaction_wholly_absent_is_valid():
    h = drain_transactions(transactions(), log0={0: "a0", 1: "x1a"})
    assert_valid(checker.check(h.events))


def test_a_committed_value_missing_from_the_drain_is_txn_lost():
    h = drain_transactions(transactions(), log0={0: "a0", 5: "x3a"}, log1={})
    found = only(checker.check(h.events), "txn_lost")
    assert [(e["txn"], e["value"], e["partition"]) for e in found] == [("x-1", "x1a", 0), ("x-1", "x1b", 1)]


def test_a_committed_transaction_half_in_the_drain_is_lost_and_partial():
    result = checker.check(drain_transactions(transactions(), log1={}).events)
    assert {k for k, n in result["anomaly_counts"].items() if n} == {"txn_lost", "txn_partial"}
    assert [e["value"] for e in result["anomalies"]["txn_lost"]] == ["x1b"]


def test_a_commit_missing_from_an_incomplete_drain_is_not_judged():
    h = transactions().end().drain_log({0: "a0", 1: "x1a", 5: "x3a"}, 0).drain_log({}, 1, complete=False)
    assert set(k for k, n in checker.check(h.events)["anomaly_counts"].items() if n) == {"incomplete_drain"}


@pytest.mark.parametrize("log0, log1, values", [
    ({0: "a0", 1: "x1a", 3: "x2a", 5: "x3a"}, {0: "x1b", 2: "x2b"}, ["x2a", "x2b"]),   # aborted
    (None, {0: "x1b", 4: "x4a"}, ["x4a"]),                                           # commit never asked for
], ids=["aborted", "never-committed"])
def test_a_value_of_a_transaction_that_did_not_commit_in_the_drain_is_visible(log0, log1, values):
    found = only(checker.check(drain_transactions(transactions(), log0, log1).events), "txn_aborted_visible")
    assert [(e["value"], e["source"]) for e in found] == [(v, "drain") for v in values]


def test_a_read_of_an_aborted_value_is_visible_even_when_the_drain_hides_it():
    h = drain_transactions(transactions().read(1, "x1a").read(3, "x2a"))
    found = only(checker.check(h.events), "txn_aborted_visible")
    assert [(e["value"], e["source"], e["txn"], e["outcome"]) for e in found] == [("x2a", "read", "x-2", "aborted")]


def test_a_transaction_half_in_the_drain_is_partial_whatever_its_outcome():
    h = History().txn("x-5", [(0, 0, "x5a"), (1, 0, "x5b")], "commit")
    h.end().drain_log({0: "x5a"}, 0).drain_log({}, 1)
    found = only(checker.check(h.events), "txn_partial")
    assert found == [{"txn": "x-5", "outcome": "unknown", "present": 1, "absent": 1, "values": ["x5a", "x5b"]}]


def test_a_read_before_the_commit_was_asked_for_is_early():
    h = History().add("txn-begin", producer="x0", txn="x-6")
    h.add("send", producer="x0", partition=0, value="x6a", txn="x-6").ack("x6a", 0)
    h.read(0, "x6a")
    h.add("txn-end", producer="x0", txn="x-6", request="commit").add("txn-outcome", producer="x0", txn="x-6",
                                                                       outcome="committed")
    found = only(checker.check(h.end().drain_log({0: "x6a"}).events), "txn_early_read")
    assert [(e["value"], e["txn"]) for e in found] == [("x6a", "x-6")]
    assert found[0]["t"] < found[0]["commit_asked_t"]


# The exactly-once copier: LOG0 (a0 a1 a2) and LOG1 (b0 b1) in, committed offsets 2 and 2.


def copied(copy0, copy1, committed=(2, 2), complete=True):
    h = History().produce(LOG0, 0).produce(LOG1, 1).add("copy-txn", txn="copy-t0", records=4).end()
    h.drain_log(LOG0, 0).drain_log(LOG1, 1)
    for p, offset in enumerate(committed):
        h.add("copy-committed", partition=p, offset=offset)
    for p, log in enumerate((copy0, copy1)):
        for offset, value in log.items():
            h.add("copy-drain", partition=p, offset=offset, value=value)
        h.add("copy-drain-end", partition=p, high_watermark=max(log, default=-1) + 1,
              complete=complete or p == 1)
    return checker.check(h.events)


def test_a_copy_of_each_committed_input_value_once_in_order_is_valid_and_counted():
    result = copied({0: "a0", 1: "a1"}, {0: "b0", 1: "b1"})
    assert_valid(result)
    assert (result["counts"]["copy_txns"], result["counts"]["copied"]) == (1, 4)


def test_copy_markers_take_offsets_and_the_copy_is_still_valid():
    assert_valid(copied({0: "a0", 2: "a1"}, {1: "b0", 2: "b1"}))


def test_an_input_value_below_the_committed_offset_absent_from_the_copy_is_missing():
    found = only(copied({0: "a0"}, {0: "b0", 1: "b1"}), "copy_missing")
    assert found == [{"partition": 0, "input_offset": 1, "value": "a1", "committed": 2}]


@pytest.mark.parametrize("copy0, value", [
    ({0: "a0", 1: "a1", 2: "a2"}, "a2"),       # past the committed offset
    ({0: "a0", 1: "a1", 2: "zz"}, "zz"),       # never committed in the input
], ids=["past-committed", "not-in-input"])
def test_a_copied_value_that_is_not_a_committed_input_is_extra(copy0, value):
    found = only(copied(copy0, {0: "b0", 1: "b1"}), "copy_extra")
    assert [(e["partition"], e["value"]) for e in found] == [(0, value)]


def test_a_value_copied_twice_is_duplicated():
    found = only(copied({0: "a0", 1: "a1", 2: "a1"}, {0: "b0", 1: "b1"}), "copy_duplicated")
    assert found == [{"value": "a1", "positions": [[0, 1], [0, 2]]}]


def test_a_copy_in_another_order_than_the_input_is_out_of_order():
    found = only(copied({0: "a1", 1: "a0"}, {0: "b0", 1: "b1"}), "copy_order")
    assert found == [{"partition": 0, "value": "a0", "offset": 1, "after": "a1"}]


def test_a_committed_partition_whose_copy_drain_is_incomplete_is_reported_not_judged():
    found = only(copied({0: "a0"}, {0: "b0", 1: "b1"}, complete=False), "copy_incomplete_drain")
    assert found == [{"partition": 0, "committed": 2}]


def test_without_copy_committed_events_the_copy_is_not_judged():
    h = produced_and_read().drain_log(LOG0, 0).drain_log(LOG1, 1)
    h.add("copy-drain", partition=0, offset=0, value="zz")  # a copy drained, but no committed offsets
    assert_valid(checker.check(h.events))


# load() and main()


def write_history(path, events):
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    return path


def test_load_reads_events_in_order_and_ignores_blank_lines(tmp_path):
    events = produced_and_read().events
    path = tmp_path / "history.jsonl"
    path.write_text(json.dumps(events[0]) + "\n\n   \n" + "".join(json.dumps(e) + "\n" for e in events[1:]))
    assert checker.load(path) == events


@pytest.mark.parametrize("line, problem", [
    ('{"t": 1.0, "kind": "send", ', "not JSON"),
    ('[1, 2]', "not a JSON object"),
    ('{"t": 1.0, "kind": "poke"}', "unknown kind 'poke'"),
    ('{"t": 1.0, "kind": "read", "consumer": "c0", "partition": 0, "offset": 0, "value": "a"}',
     "read event without session"),
    ('{"t": 1.0, "kind": "drain", "partition": true, "offset": 0, "value": "a"}',
     "drain event with a bad partition"),
    ('{"t": 1.0, "kind": "txn-outcome", "producer": "x0", "txn": "x-1", "outcome": "maybe"}',
     "txn-outcome event with a bad outcome"),
    ('{"t": 1.0, "kind": "send", "producer": "x0", "partition": 0, "value": "a", "txn": 7}',
     "send event with a bad txn"),
], ids=["broken-json", "not-an-object", "unknown-kind", "missing-field", "bool-partition", "bad-outcome",
        "bad-txn"])
def test_load_names_the_line_number_of_a_malformed_line(tmp_path, line, problem):
    path = tmp_path / "history.jsonl"
    path.write_text('{"t": 0.0, "kind": "heal"}\n\n' + line + "\n")
    with pytest.raises(ValueError, match=f"^line 3: {problem}"):
        checker.load(path)


def test_main_exits_0_on_a_valid_history_printing_summary_and_json(tmp_path, capsys):
    h = produced_and_read().drain_log(LOG0, 0).drain_log(LOG1, 1)
    path = write_history(tmp_path / "history.jsonl", h.events)
    assert checker.main([str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("VALID\n")
    assert json.loads(out[out.index("{"):])["counts"]["drained"] == 5


def test_main_exits_1_when_an_anomaly_is_found(tmp_path, capsys):
    h = produced_and_read().drain_log({0: "a0"}, 0).drain_log(LOG1, 1)
    path = write_history(tmp_path / "history.jsonl", h.events)
    assert checker.main([str(path)]) == 1
    out = capsys.readouterr().out
    assert out.startswith("INVALID: 2 lost\n")
    assert json.loads(out[out.index("{"):])["anomaly_counts"]["lost"] == 2


@pytest.mark.parametrize("content", [None, '{"t": 0.0, "kind": "end"}\nnot json\n', b"\xff\xfe\n"],
                         ids=["missing-file", "malformed-line", "not-utf8"])
def test_main_exits_2_on_unreadable_input(tmp_path, capsys, content):
    path = tmp_path / "history.jsonl"
    if isinstance(content, str):
        path.write_text(content)
    elif content is not None:
        path.write_bytes(content)
    assert checker.main([str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"checker: {path}: ")


def test_main_exits_2_without_exactly_one_argument(capsys):
    assert checker.main([]) == 2
    assert checker.main(["a.jsonl", "b.jsonl"]) == 2
    assert "usage" in capsys.readouterr().err


def test_script_exit_code_is_mains(tmp_path):
    path = write_history(tmp_path / "history.jsonl", produced_and_read().events)  # no drain-end: incomplete
    run = subprocess.run([sys.executable, checker.__file__, str(path)], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 1, run.stderr
    assert run.stdout.startswith("INVALID: 2 incomplete_drain\n")
