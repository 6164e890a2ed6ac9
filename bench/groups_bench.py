#!/usr/bin/env python3
"""Consumer group rebalance timing against a running broker (driven by scripts/bench-groups).

Per run, with a fresh group on one topic:
  join   N confluent-kafka members subscribe at once (threads released by a barrier); time from
         the first subscribe() to the last assignment callback of the stable split (every
         partition held by exactly one member, every member holding one, then 1 s without any
         rebalance callback; the quiet second is not counted). The coordinator must then
         describe the group as Stable with N members.
  leave  one member close()s (LeaveGroup); time from the start of close() to the last
         assignment callback of the survivors' stable split.

Prints one JSON line per run and a summary line `RESULT join_ms=min/median/max leave_ms=...`.
Every wait is bounded (--phase-timeout); talks to the given loopback bootstrap only.
"""

import argparse
import json
import statistics
import sys
import threading
import time
import uuid

from confluent_kafka import Consumer, ConsumerGroupState
from confluent_kafka.admin import AdminClient, NewTopic


class Member:
    def __init__(self, idx, conf, topic):
        self.idx = idx
        self.conf = conf
        self.topic = topic
        self.assignment = set()
        self.events = []  # (monotonic time, kind)
        self.subscribed_at = None
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.leave = threading.Event()
        self.left_at = None
        self.error = None

    def on_assign(self, c, parts):
        with self.lock:
            self.assignment = {p.partition for p in parts}
            self.events.append((time.monotonic(), "assign"))

    def on_revoke(self, c, parts):
        with self.lock:
            self.assignment = set()
            self.events.append((time.monotonic(), "revoke"))

    def run(self, barrier):
        try:
            c = Consumer(self.conf)
            barrier.wait(timeout=60)
            self.subscribed_at = time.monotonic()
            c.subscribe([self.topic], on_assign=self.on_assign, on_revoke=self.on_revoke)
            while not self.stop.is_set() and not self.leave.is_set():
                c.poll(0.02)
            if self.leave.is_set():
                self.left_at = time.monotonic()
            c.close()
            with self.lock:
                self.assignment = set()
        except Exception as e:  # noqa: BLE001
            self.error = repr(e)


def stable_split(members, nparts, quiet):
    """(True, time of the last callback) once the split is complete and quiet."""
    with_locks = []
    for m in members:
        with m.lock:
            with_locks.append((set(m.assignment), m.events[-1][0] if m.events else 0.0))
    held = [a for a, _ in with_locks]
    flat = sorted(p for a in held for p in a)
    last = max(t for _, t in with_locks)
    ok = flat == list(range(nparts)) and all(held) and time.monotonic() - last >= quiet
    return ok, last


def wait_stable(members, nparts, quiet, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        errs = [m.error for m in members if m.error]
        if errs:
            raise RuntimeError(f"member failed: {errs[0]}")
        ok, last = stable_split(members, nparts, quiet)
        if ok:
            return last
        time.sleep(0.01)
    raise RuntimeError(f"{what}: no stable split within {timeout}s: "
                       + " ".join(f"{m.idx}:{sorted(m.assignment)}" for m in members))


def one_run(args, admin, topic):
    group = f"bench-{uuid.uuid4().hex[:10]}"
    conf = {"bootstrap.servers": args.bootstrap, "group.id": group, "enable.auto.commit": False,
            "auto.offset.reset": "latest"}
    if args.heartbeat_ms:
        conf["heartbeat.interval.ms"] = args.heartbeat_ms
    if args.session_ms:
        conf["session.timeout.ms"] = args.session_ms
    members = [Member(i, dict(conf, **{"client.id": f"bench-{i}"}), topic) for i in range(args.members)]
    barrier = threading.Barrier(args.members)
    threads = [threading.Thread(target=m.run, args=(barrier,), daemon=True) for m in members]
    for t in threads:
        t.start()
    try:
        last = wait_stable(members, args.partitions, 1.0, args.phase_timeout, "join")
        first_sub = min(m.subscribed_at for m in members)
        join_ms = (last - first_sub) * 1000
        d = admin.describe_consumer_groups([group], request_timeout=20)[group].result(timeout=20)
        if d.state != ConsumerGroupState.STABLE or len(d.members) != args.members:
            raise RuntimeError(f"coordinator says {d.state} with {len(d.members)} members after the join")
        generations = sum(1 for m in members for _, k in m.events if k == "assign")

        leaver = members[-1]
        leaver.leave.set()
        rest = members[:-1]
        deadline = time.monotonic() + args.phase_timeout
        while leaver.left_at is None and time.monotonic() < deadline:
            time.sleep(0.005)
        if leaver.left_at is None:
            raise RuntimeError("the leaving member did not start close()")
        last = wait_stable(rest, args.partitions, 1.0, args.phase_timeout, "leave")
        leave_ms = (last - leaver.left_at) * 1000
        return {"join_ms": round(join_ms, 1), "leave_ms": round(leave_ms, 1),
                "assign_callbacks_during_join": generations}
    finally:
        for m in members:
            m.stop.set()
        for t in threads:
            t.join(timeout=60)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--members", type=int, default=10)
    ap.add_argument("--partitions", type=int, default=10)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--heartbeat-ms", type=int, default=0, help="0: librdkafka's default (3000)")
    ap.add_argument("--session-ms", type=int, default=0, help="0: librdkafka's default (45000)")
    ap.add_argument("--phase-timeout", type=float, default=90)
    args = ap.parse_args()

    admin = AdminClient({"bootstrap.servers": args.bootstrap})
    topic = f"bench-groups-{uuid.uuid4().hex[:8]}"
    admin.create_topics([NewTopic(topic, num_partitions=args.partitions, replication_factor=1)],
                        request_timeout=20)[topic].result(timeout=30)
    joins, leaves = [], []
    for i in range(args.runs):
        r = one_run(args, admin, topic)
        r["run"] = i + 1
        print(json.dumps(r), flush=True)
        joins.append(r["join_ms"])
        leaves.append(r["leave_ms"])

    def mmm(xs):
        return f"{min(xs):.0f}/{statistics.median(xs):.0f}/{max(xs):.0f}"
    print(f"RESULT runs={args.runs} members={args.members} partitions={args.partitions} "
          f"join_ms={mmm(joins)} leave_ms={mmm(leaves)}", flush=True)


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # noqa: BLE001
        print(f"groups_bench: {e}", file=sys.stderr)
        sys.exit(1)
