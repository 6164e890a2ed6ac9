"""Checker of a chaos campaign's history: reads history.jsonl and reports the anomalies.

The history format and the anomaly definitions are the contract in HISTORY.md (this directory);
this module implements them as written there:

- `lost`: an acked value absent from the drain, where the drain of its (acked) partition is
  complete. A value drained in another partition is not lost: it is `wrong_partition`.
- `duplicated`: a value at two or more distinct (partition, offset) positions of the drain
  (the same record drained twice is one position).
- `inconsistent_offset`: a (partition, offset) seen with two different values across acks, reads
  and drain records.
- `wrong_partition`: a value read or drained in a partition other than the one of its first send.
- `skipped`: consecutive reads a < b in one (consumer, session, partition) where the drain has a
  record at an offset strictly between a and b (offsets absent from the drain are no skip).
- `nonmonotonic`: consecutive reads in one (consumer, session, partition) with b <= a.
- `unexpected`: a value read or drained that no `send` event carries.
- `incomplete_drain`: a partition whose last drain-end says complete=false, or that has acks but
  no drain-end.

Transactions (values whose send carries a `txn`; their ack means written, not committed, so
`lost` leaves them to these):
- `txn_lost`: a value of a committed transaction absent from the (complete) drain.
- `txn_aborted_visible`: a value of a transaction that was aborted, or whose commit was never
  asked for, read or drained (every reader is read_committed).
- `txn_partial`: a transaction, whatever its outcome, with some of its values in the drain and
  others not, where the drain of each of its partitions is complete.
- `txn_early_read`: a value of a transaction read before its commit was asked for.

The exactly-once copier (copy-* events: it copies the topic, partition to partition, in
transactions that carry its consumed offsets), judged where the drains of a partition (input
and copy) are complete, against the input drain below the copier's committed offset:
- `copy_missing`: an input value below the committed offset absent from the copy.
- `copy_extra`: a value in the copy that is not an input value below the committed offset of
  the copy's partition (not committed in the input, past what the copier committed, or copied
  into another partition).
- `copy_duplicated`: a value at two or more positions of the copy.
- `copy_order`: two values of one partition's copy in the other order than in the input.
- `copy_incomplete_drain`: a partition with a committed offset whose copy drain is incomplete.

`wrong_partition` and `unexpected` list each (value, partition, offset) once, with its first
observation. Every anomaly list is capped at MAX_LISTED entries; `anomaly_counts` has the totals.

Also reported: `counts` (distinct values sent, acked, failed and indeterminate = sent without
ack; read and drain events), `indeterminate_present` (indeterminate values read or drained),
`availability` and ack `latency_ms` (see `_availability` and `_latency`).

Usage: python3 tests/chaos/checker.py HISTORY.jsonl   (exit 0 valid, 1 anomalies, 2 unreadable)
"""

import json
import math
import sys
from bisect import bisect_left, bisect_right
from collections import defaultdict

ANOMALIES = ("lost", "duplicated", "inconsistent_offset", "wrong_partition", "skipped",
             "nonmonotonic", "unexpected", "incomplete_drain", "txn_lost", "txn_aborted_visible",
             "txn_partial", "txn_early_read", "copy_missing", "copy_extra", "copy_duplicated", "copy_order",
             "copy_incomplete_drain")
MAX_LISTED = 100

# The fields each kind of event has besides t and kind (HISTORY.md).
FIELDS = {
    "send": ("producer", "partition", "value"),
    "ack": ("producer", "partition", "value", "offset"),
    "fail": ("producer", "partition", "value", "error"),
    "read": ("consumer", "session", "partition", "offset", "value"),
    "drain": ("partition", "offset", "value"),
    "drain-end": ("partition", "high_watermark", "complete"),
    "fault": ("fault", "phase", "id", "detail", "nodes"),
    "client-error": ("client", "error", "fatal"),
    "txn-begin": ("producer", "txn"),
    "txn-end": ("producer", "txn", "request"),
    "txn-outcome": ("producer", "txn", "outcome"),
    "copy-txn": ("txn", "records"),
    "copy-committed": ("partition", "offset"),
    "copy-drain": ("partition", "offset", "value"),
    "copy-drain-end": ("partition", "high_watermark", "complete"),
    "heal": (),
    "end": (),
}
FIELD_TYPES = {
    "t": (int, float),
    "partition": (int,),
    "offset": (int,),
    "session": (int,),
    "high_watermark": (int,),
    "id": (int,),
    "value": (str,),
    "complete": (bool,),
    "txn": (str,),
    "records": (int,),
}
# Fields with a closed set of values.
FIELD_VALUES = {
    "request": ("commit", "abort"),
    "outcome": ("committed", "aborted", "unknown"),
}


def load(path):
    """The events of a history.jsonl file; blank lines are skipped. Raises ValueError naming the
    number of the first line that is not an event of HISTORY.md, OSError if unreadable."""
    events = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                events.append(_parse(line, number))
    return events


def _parse(line, number):
    try:
        event = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"line {number}: not JSON ({e.msg})") from None
    problem = _malformation(event)
    if problem:
        raise ValueError(f"line {number}: {problem}")
    return event


def _malformation(event):
    """What keeps `event` from being an event of HISTORY.md, or None."""
    if not isinstance(event, dict):
        return "not a JSON object"
    kind = event.get("kind")
    if kind not in FIELDS:
        return f"unknown kind {kind!r}"
    for field in ("t",) + FIELDS[kind]:
        if field not in event:
            return f"{kind} event without {field}"
        if not _has_type(event[field], FIELD_TYPES.get(field)):
            return f"{kind} event with a bad {field}: {event[field]!r}"
        if field in FIELD_VALUES and event[field] not in FIELD_VALUES[field]:
            return f"{kind} event with a bad {field}: {event[field]!r}"
    if kind == "send" and "txn" in event and not _has_type(event["txn"], FIELD_TYPES["txn"]):
        return f"send event with a bad txn: {event['txn']!r}"
    return None


def _has_type(value, types):
    if types is None:
        return True
    return isinstance(value, types) and (bool in types or not isinstance(value, bool))


class _Scan:
    """One pass over the events, keeping what the anomalies and figures need (dicts and sets,
    no per-event copies: the events themselves are kept where an anomaly must show one)."""

    def __init__(self, sent):
        self.sent = sent                          # value -> its first send event
        self.acks = []
        self.failed = set()
        self.observed = set()                     # values read or drained
        self.reads = 0
        self.drains = 0
        self.end_t = None
        self.last_t = None
        self.positions = {}                       # (partition, offset) -> first event there
        self.conflicts = {}                       # (partition, offset) -> {value: first event}
        self.misplaced = {}                       # (value, partition, offset) -> first event
        self.strays = {}                          # (value, partition, offset) -> first event
        self.last_read = {}                       # (consumer, session, partition) -> offset
        self.jumps = []                           # (read, previous offset) with a gap between
        self.backwards = []                       # (read, previous offset) not after previous
        self.drain_first = {}                     # value -> its first drain event
        self.drain_positions = {}                 # value -> {(p, o)} when drained at 2+ places
        self.drain_offsets = defaultdict(set)     # partition -> drained offsets
        self.drain_ends = {}                      # partition -> its last drain-end event
        self._handlers = {"ack": self._ack, "fail": self._fail, "read": self._read,
                          "drain": self._drain, "drain-end": self._drain_end, "end": self._end}

    def add(self, event):
        self.last_t = event["t"]
        handler = self._handlers.get(event["kind"])
        if handler:
            handler(event)

    def _ack(self, event):
        self.acks.append(event)
        self._at_position(event)

    def _fail(self, event):
        self.failed.add(event["value"])

    def _read(self, event):
        self.reads += 1
        self._at_position(event)
        self._in_partition(event)
        self._follow(event)

    def _drain(self, event):
        self.drains += 1
        self._at_position(event)
        self._in_partition(event)
        value, position = event["value"], (event["partition"], event["offset"])
        self.drain_offsets[position[0]].add(position[1])
        first = self.drain_first.setdefault(value, event)
        first_position = (first["partition"], first["offset"])
        if first_position != position:
            self.drain_positions.setdefault(value, {first_position}).add(position)

    def _drain_end(self, event):
        self.drain_ends[event["partition"]] = event

    def _end(self, event):
        self.end_t = event["t"]

    def _at_position(self, event):
        """inconsistent_offset: the value at (partition, offset) differs from one seen before."""
        key = (event["partition"], event["offset"])
        first = self.positions.setdefault(key, event)
        if first["value"] != event["value"]:
            self.conflicts.setdefault(key, {first["value"]: first}).setdefault(event["value"], event)

    def _in_partition(self, event):
        """unexpected / wrong_partition: a read or drained value against its send."""
        value = event["value"]
        self.observed.add(value)
        send = self.sent.get(value)
        if send is None:
            found = self.strays
        elif send["partition"] != event["partition"]:
            found = self.misplaced
        else:
            return
        found.setdefault((value, event["partition"], event["offset"]), event)

    def _follow(self, event):
        """skipped (checked later against the drain) / nonmonotonic: a read against the
        previous read of its consumer session and partition."""
        stream = (event["consumer"], event["session"], event["partition"])
        previous = self.last_read.get(stream)
        self.last_read[stream] = event["offset"]
        if previous is None:
            return
        if event["offset"] <= previous:
            self.backwards.append((event, previous))
        elif event["offset"] > previous + 1:
            self.jumps.append((event, previous))


def check(events):
    """The checker's verdict on a history (a list of events as load() returns)."""
    sent = {}
    for event in events:
        if event["kind"] == "send":
            sent.setdefault(event["value"], event)
    scan = _Scan(sent)
    for event in events:
        scan.add(event)

    outcomes = _outcomes(events)
    found = {
        "lost": _lost(scan),
        "duplicated": _duplicated(scan),
        "inconsistent_offset": _inconsistent(scan),
        "wrong_partition": [dict(_placed(e), sent_partition=sent[e["value"]]["partition"])
                            for e in scan.misplaced.values()],
        "skipped": _skipped(scan),
        "nonmonotonic": [dict(_stream(e), previous_offset=prev, offset=e["offset"], t=e["t"])
                         for e, prev in scan.backwards],
        "unexpected": [_placed(e) for e in scan.strays.values()],
        "incomplete_drain": _incomplete_drain(scan),
        **_transactions(events, sent, scan, outcomes),
        **_copies(events, scan),
    }
    acked = {ack["value"] for ack in scan.acks}
    indeterminate = [value for value in sent if value not in acked]
    stop = scan.end_t if scan.end_t is not None else scan.last_t
    return {
        "valid": not any(found.values()),
        "anomalies": {name: found[name][:MAX_LISTED] for name in ANOMALIES},
        "anomaly_counts": {name: len(found[name]) for name in ANOMALIES},
        "counts": {"sent": len(sent), "acked": len(acked), "failed": len(scan.failed),
                   "indeterminate": len(indeterminate), "read": scan.reads, "drained": scan.drains,
                   **{f"txn_{o}": sum(1 for x in outcomes.values() if x == o)
                      for o in FIELD_VALUES["outcome"]},
                   "copy_txns": sum(1 for e in events if e["kind"] == "copy-txn"),
                   "copied": sum(1 for e in events if e["kind"] == "copy-drain")},
        "indeterminate_present": sum(1 for value in indeterminate if value in scan.observed),
        "availability": _availability([e["t"] for e in sent.values()], stop,
                                      [ack["t"] for ack in scan.acks]),
        "latency_ms": _latency(scan.acks, sent),
    }


def _lost(scan):
    complete = {p for p, end in scan.drain_ends.items() if end["complete"]}
    lost = {}
    for ack in scan.acks:
        if "txn" in scan.sent.get(ack["value"], {}):
            continue  # written, not committed: its transaction's outcome decides (_transactions)
        if ack["partition"] in complete and ack["value"] not in scan.drain_first:
            lost.setdefault(ack["value"], {"value": ack["value"], "partition": ack["partition"],
                                           "offset": ack["offset"], "t": ack["t"]})
    return list(lost.values())


def _duplicated(scan):
    return [{"value": value, "positions": [list(p) for p in sorted(positions)]}
            for value, positions in scan.drain_positions.items()]


def _inconsistent(scan):
    return [{"partition": p, "offset": o, "values": [_observation(e) for e in by_value.values()]}
            for (p, o), by_value in scan.conflicts.items()]


def _outcomes(events):
    """txn -> its outcome: the last txn-outcome event's, "unknown" for a transaction begun
    without one (its producer was cut short)."""
    outcomes = {}
    for event in events:
        if event["kind"] == "txn-begin":
            outcomes.setdefault(event["txn"], "unknown")
        elif event["kind"] == "txn-outcome":
            outcomes[event["txn"]] = event["outcome"]
    return outcomes


def _transactions(events, sent, scan, outcomes):
    """The four transaction anomalies (module docstring), from the sends that carry a txn;
    `outcomes` as _outcomes() gives them."""
    commit_asked = {}                             # txn -> t of its first txn-end request=commit
    for event in events:
        if event["kind"] == "txn-end" and event["request"] == "commit":
            commit_asked.setdefault(event["txn"], event["t"])
    values = defaultdict(list)                    # txn -> its sends, in order
    for send in sent.values():
        if "txn" in send:
            values[send["txn"]].append(send)
    complete = {p for p, end in scan.drain_ends.items() if end["complete"]}
    lost, partial, invisible = [], [], set()
    for txn, sends in values.items():
        outcome = outcomes.get(txn, "unknown")
        if outcome == "aborted" or txn not in commit_asked:
            invisible.update(send["value"] for send in sends)
        if not all(send["partition"] in complete for send in sends):
            continue
        present = [send["value"] for send in sends if send["value"] in scan.drain_first]
        if outcome == "committed":
            lost += [{"txn": txn, "value": send["value"], "partition": send["partition"], "t": send["t"]}
                     for send in sends if send["value"] not in scan.drain_first]
        if 0 < len(present) < len(sends):
            partial.append({"txn": txn, "outcome": outcome, "present": len(present),
                            "absent": len(sends) - len(present), "values": [s["value"] for s in sends]})
    visible, early = {}, []
    for event in events:
        if event["kind"] not in ("read", "drain"):
            continue
        send = sent.get(event["value"])
        if send is None or "txn" not in send:
            continue
        if event["value"] in invisible:
            visible.setdefault((event["value"], event["partition"], event["offset"]),
                               dict(_placed(event), txn=send["txn"], outcome=outcomes.get(send["txn"], "unknown")))
        elif event["kind"] == "read" and event["t"] < commit_asked[send["txn"]]:
            early.append(dict(_placed(event), txn=send["txn"], commit_asked_t=commit_asked[send["txn"]]))
    return {"txn_lost": lost, "txn_aborted_visible": list(visible.values()), "txn_partial": partial,
            "txn_early_read": early}


def _copies(events, scan):
    """The copier's anomalies (module docstring); none without copy-committed events."""
    found = {name: [] for name in ("copy_missing", "copy_extra", "copy_duplicated", "copy_order",
                                   "copy_incomplete_drain")}
    committed = {e["partition"]: e["offset"] for e in events if e["kind"] == "copy-committed"}
    if not committed:
        return found
    inputs, copies, copy_ends = defaultdict(list), defaultdict(list), {}
    for e in events:
        if e["kind"] == "drain":
            inputs[e["partition"]].append((e["offset"], e["value"]))
        elif e["kind"] == "copy-drain":
            copies[e["partition"]].append((e["offset"], e["value"]))
        elif e["kind"] == "copy-drain-end":
            copy_ends[e["partition"]] = e
    complete = {p for p, end in scan.drain_ends.items() if end["complete"]}
    positions = defaultdict(set)                  # copied value -> {(partition, offset)}
    for p, records in copies.items():
        for o, v in records:
            positions[v].add((p, o))
    found["copy_duplicated"] = [{"value": v, "positions": [list(x) for x in sorted(ps)]}
                                for v, ps in positions.items() if len(ps) > 1]
    for p, upto in sorted(committed.items()):
        end = copy_ends.get(p)
        if upto > 0 and (end is None or not end["complete"]):
            found["copy_incomplete_drain"].append({"partition": p, "committed": upto})
            continue
        if p not in complete:
            continue
        wanted = {v: o for o, v in inputs[p] if o < upto}
        got = {}
        for o, v in copies[p]:
            got.setdefault(v, o)
        found["copy_missing"] += [{"partition": p, "input_offset": o, "value": v, "committed": upto}
                                  for v, o in wanted.items() if v not in got]
        found["copy_extra"] += [{"partition": p, "offset": o, "value": v, "committed": upto}
                                for v, o in got.items() if v not in wanted]
        order = [(o, wanted[v], v) for v, o in sorted(got.items(), key=lambda x: x[1]) if v in wanted]
        found["copy_order"] += [{"partition": p, "value": b[2], "offset": b[0], "after": a[2]}
                                for a, b in zip(order, order[1:]) if b[1] < a[1]]
    return found


def _skipped(scan):
    drained = {p: sorted(offsets) for p, offsets in scan.drain_offsets.items()}
    skipped = []
    for read, previous in scan.jumps:
        offsets = drained.get(read["partition"], [])
        first = bisect_right(offsets, previous)
        past = bisect_left(offsets, read["offset"])
        if past > first:
            skipped.append(dict(_stream(read), from_offset=previous, to_offset=read["offset"],
                                first_skipped=offsets[first], skipped=past - first, t=read["t"]))
    return skipped


def _incomplete_drain(scan):
    unfinished = [{"partition": p, "reason": "complete=false", "high_watermark": end["high_watermark"]}
                  for p, end in sorted(scan.drain_ends.items()) if not end["complete"]]
    acked_partitions = {ack["partition"] for ack in scan.acks}
    missing = [{"partition": p, "reason": "no drain-end"}
               for p in sorted(acked_partitions - scan.drain_ends.keys())]
    return unfinished + missing


def _observation(event):
    """Who saw which value, and when: for anomaly entries."""
    seen = {"value": event["value"], "source": event["kind"], "t": event["t"]}
    if event["kind"] == "read":
        seen.update(_stream(event))
    elif event["kind"] == "ack":
        seen["producer"] = event["producer"]
    return seen


def _placed(event):
    return dict(_observation(event), partition=event["partition"], offset=event["offset"])


def _stream(read):
    return {"consumer": read["consumer"], "session": read["session"], "partition": read["partition"]}


def _availability(send_times, stop, ack_times):
    """Over the whole seconds [floor(first send), ceil(stop)) (at least one; `stop` is the end
    event, else the last event): the share of seconds with an ack, and the longest interval
    without ack between the first send, the acks and `stop`. Acks after `stop` do not count."""
    if not send_times:
        return {"share": 0.0, "longest_gap_s": 0.0, "seconds": 0}
    first = min(send_times)
    stop = max(stop, first)
    start = math.floor(first)
    seconds = max(1, math.ceil(stop) - start)
    in_window = sorted(t for t in ack_times if first <= t <= stop)
    acked_seconds = {s for s in map(math.floor, in_window) if s < start + seconds}
    marks = [first] + in_window + [stop]
    gap = max(b - a for a, b in zip(marks, marks[1:]))
    return {"share": len(acked_seconds) / seconds, "longest_gap_s": round(gap, 6), "seconds": seconds}


def _latency(acks, sent):
    """ack.t - t of the value's first send, per ack, in ms: nearest-rank p50 and p99, and max."""
    latencies = sorted((ack["t"] - sent[ack["value"]]["t"]) * 1000
                       for ack in acks if ack["value"] in sent)
    if not latencies:
        return {"p50": None, "p99": None, "max": None}
    return {"p50": round(_nearest_rank(latencies, 50), 3), "p99": round(_nearest_rank(latencies, 99), 3),
            "max": round(latencies[-1], 3)}


def _nearest_rank(ordered, percent):
    rank = -(-percent * len(ordered) // 100)  # ceil(percent / 100 * n), in integers
    return ordered[rank - 1]


def summary(result):
    """A few human lines about a check() result."""
    counts, available, latency = result["counts"], result["availability"], result["latency_ms"]
    found = [f"{n} {name}" for name, n in result["anomaly_counts"].items() if n]
    lines = [
        "VALID" if result["valid"] else "INVALID: " + ", ".join(found),
        (f"{counts['sent']} sent, {counts['acked']} acked, {counts['failed']} failed, "
         f"{counts['indeterminate']} indeterminate ({result['indeterminate_present']} in the log), "
         f"{counts['read']} read, {counts['drained']} drained"),
        (f"availability {available['share']:.1%} of {available['seconds']} s, "
         f"longest gap without ack {available['longest_gap_s']:.3f} s"),
    ]
    if latency["max"] is None:
        lines.append("ack latency: no acks")
    else:
        lines.append(f"ack latency p50 {latency['p50']} ms, p99 {latency['p99']} ms, max {latency['max']} ms")
    return "\n".join(lines)


def main(argv):
    if len(argv) != 1:
        print("usage: checker.py HISTORY.jsonl", file=sys.stderr)
        return 2
    try:
        events = load(argv[0])
    except (OSError, ValueError) as e:
        print(f"checker: {argv[0]}: {e}", file=sys.stderr)
        return 2
    result = check(events)
    print(summary(result))
    print(json.dumps(result, indent=1))
    return 0 if result["valid"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
