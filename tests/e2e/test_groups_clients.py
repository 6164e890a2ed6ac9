"""Consumer groups with the other clients, which have their own group protocol code:
kafka-python (KafkaConsumer: JoinGroup/SyncGroup/Heartbeat, commits with metadata) and kafkajs
(js/kjs_groups.js). Members split a topic, consume every record once, commit, and a restarted
consumer (also after a broker restart) resumes exactly at the committed offsets.
"""

import json
import os
import shutil
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from ckutil import create_topic, produce_all, producer
from test_groups import (GROUP_ARGS, _groups_broker, committed_offsets, gbroker, group_name,  # noqa: F401 (fixtures)
                         keyed, split_ok)

JS_DIR = Path(__file__).parent / "js"
NODE = shutil.which("node")


# ---- kafka-python ---------------------------------------------------------------------------------


class KPMember:
    """A kafka-python KafkaConsumer in a group, polled by its own thread (kafka-python's poll may
    block for a join, so members must not share a thread). Commits what each poll returned, with
    metadata "kp-P-OFFSET"."""

    def __init__(self, bootstrap, group, topic, name, commit=True):
        from kafka import ConsumerRebalanceListener, KafkaConsumer

        self.name = name
        self.commit_enabled = commit
        self.events = []
        self.assignment = set()
        self.records = []
        self.errors = []
        self.lock = threading.Lock()
        self.stop_flag = threading.Event()
        self.closed = threading.Event()
        member = self

        class Listener(ConsumerRebalanceListener):
            def on_partitions_revoked(self, revoked):
                with member.lock:
                    member.events.append((time.monotonic(), "revoke", sorted(tp.partition for tp in revoked)))
                    member.assignment = set()

            def on_partitions_assigned(self, assigned):
                with member.lock:
                    member.events.append((time.monotonic(), "assign", sorted(tp.partition for tp in assigned)))
                    member.assignment = {tp.partition for tp in assigned}

        self.c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, client_id=name,
                               enable_auto_commit=False, auto_offset_reset="earliest",
                               session_timeout_ms=10000, heartbeat_interval_ms=500, fetch_max_wait_ms=100,
                               reconnect_backoff_max_ms=1000)
        # Known kafka-python 3.0 bug (dpkp/kafka-python#2855: "_on_join_complete never runs ... the
        # consumer spins without an assignment"): a leader that joins before its metadata holds the
        # topic assigns nothing, rejoins when the metadata arrives, and if its poll times out while
        # that rejoin is in flight, the finished join is never completed: no assignment, no
        # heartbeats, the session expires (2 runs in 12 here, with group.initial.rebalance.delay.ms=0).
        # Loading the topic's metadata before subscribing keeps the first join from racing it;
        # the same loss once followed a rebalance another member started, so polls are long.
        assert len(self.c.partitions_for_topic(topic)) > 0, f"{name}: no metadata for {topic}"
        self.c.subscribe([topic], listener=Listener())
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        from kafka.structs import OffsetAndMetadata
        try:
            while not self.stop_flag.is_set():
                # Long polls: kafka-python 3.0 loses a join whose poll timed out while it
                # was in flight (see __init__), so the shorter the poll, the likelier it is.
                batch = self.c.poll(timeout_ms=1000)
                nexts = {}
                for tp, msgs in batch.items():
                    for m in msgs:
                        self.records.append((m.topic, m.partition, m.offset, m.key, m.value))
                        nexts[tp] = m.offset + 1
                if nexts and self.commit_enabled:
                    self.c.commit({tp: OffsetAndMetadata(o, f"kp-{tp.partition}-{o}", -1) for tp, o in nexts.items()})
        except Exception as e:  # noqa: BLE001 - reported by the test
            self.errors.append(repr(e))
        finally:
            try:
                self.c.close()  # LeaveGroup
            finally:
                self.closed.set()

    def partitions(self):
        with self.lock:
            return set(self.assignment)

    def close(self, timeout=20):
        self.stop_flag.set()
        assert self.closed.wait(timeout), f"{self.name} did not close within {timeout}s"

    def __repr__(self):
        return f"<{self.name} {sorted(self.partitions())} events {self.events[-3:]} errors {self.errors[-2:]}>"


def wait_until(cond, timeout, what):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"{what}: not reached within {timeout}s"
        time.sleep(0.05)


def kp_stable_split(members, nparts, timeout=30, quiet=1.5):
    def ok():
        for m in members:
            assert not m.errors, f"{m.name} failed: {m.errors}"
        last = max((m.events[-1][0] for m in members if m.events), default=0)
        return split_ok(members, nparts) and time.monotonic() - last >= quiet
    try:
        wait_until(ok, timeout, "a stable split")
    except AssertionError as e:
        raise AssertionError(f"{e}: {members}") from None


@pytest.mark.timeout(90)
def test_kafka_python_group_split_commit_and_resume(gbroker, topic_name, group_name):
    from kafka import KafkaConsumer
    from kafka import TopicPartition as KTP
    nparts, n = 4, 120
    create_topic(gbroker.bootstrap, topic_name, partitions=nparts)
    members = [KPMember(gbroker.bootstrap, group_name, topic_name, f"kp{i}") for i in range(2)]
    try:
        # --- two kafka-python members split the partitions (2 each)
        kp_stable_split(members, nparts)
        held = {m.name: sorted(m.partitions()) for m in members}
        assert sorted(len(h) for h in held.values()) == [2, 2], held

        # --- records produced while stable are consumed exactly once, each by its partition's owner
        produce_all(producer(gbroker.bootstrap), topic_name, keyed(n, nparts, "kp"))
        wait_until(lambda: sum(len(m.records) for m in members) >= n, 30, f"{n} records consumed")
        time.sleep(1.0)
        got = Counter((p, k, v) for m in members for (_, p, _, k, v) in m.records)
        assert not [r for r, c in got.items() if c > 1], "records consumed twice"
        assert set(got) == {(r["partition"], r["key"], r["value"]) for r in keyed(n, nparts, "kp")}
        for m in members:
            assert {p for (_, p, _, _, _) in m.records} <= set(held[m.name]), (m.name, held)
            assert not m.errors, (m.name, m.errors)
    finally:
        for m in members:
            m.close()

    # --- the commits (with their metadata) are visible to kafka-python's committed() and to librdkafka
    per_part = n // nparts
    expected = {p: (per_part, f"kp-{p}-{per_part}") for p in range(nparts)}
    c = KafkaConsumer(bootstrap_servers=gbroker.bootstrap, group_id=group_name, enable_auto_commit=False)
    try:
        for p in range(nparts):
            om = c.committed(KTP(topic_name, p), metadata=True)
            assert om is not None and (om.offset, om.metadata) == expected[p], f"partition {p}: {om}"
    finally:
        c.close()
    assert committed_offsets(gbroker.bootstrap, group_name, topic_name, nparts) == expected

    # --- a restarted member resumes at the committed offsets: it reads only the new records
    produce_all(producer(gbroker.bootstrap), topic_name, keyed(40, nparts, "kp2"))
    m = KPMember(gbroker.bootstrap, group_name, topic_name, "kp-resume", commit=False)
    try:
        wait_until(lambda: len(m.records) >= 40, 30, "40 new records after the restart")
        time.sleep(1.0)
        firsts = {}
        for (_, p, o, _, _) in m.records:
            firsts.setdefault(p, o)
        assert firsts == {p: per_part for p in range(nparts)}, f"resumed at {firsts}"
        assert sorted(k for (_, _, _, k, _) in m.records) == sorted(r["key"] for r in keyed(40, nparts, "kp2"))
    finally:
        m.close()


# ---- kafkajs ----------------------------------------------------------------------------------------


def kjs_groups(bootstrap, topic, command, arg, timeout=75):
    assert NODE, "node is not installed"
    assert (JS_DIR / "node_modules" / "kafkajs").is_dir(), "kafkajs is not installed: run scripts/setup"
    env = dict(os.environ, KAFKAJS_NO_PARTITIONER_WARNING="1")
    cmd = [NODE, str(JS_DIR / "kjs_groups.js"), bootstrap, topic, command, json.dumps(arg)]
    r = subprocess.run(cmd, capture_output=True, timeout=timeout, env=env, cwd=JS_DIR, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, (f"kjs_groups.js {command} exited {r.returncode}\n"
                               f"stdout: {r.stdout.decode(errors='replace')[-3000:]}\n"
                               f"stderr: {r.stderr.decode(errors='replace')[-5000:]}")
    return json.loads(r.stdout)


@pytest.mark.timeout(90)
def test_kafkajs_group_split_and_commit(gbroker, topic_name, group_name):
    nparts, n = 4, 80
    create_topic(gbroker.bootstrap, topic_name, partitions=nparts)
    out = kjs_groups(gbroker.bootstrap, topic_name, "split",
                     {"group": group_name, "members": 2, "partitions": nparts, "count": n})
    a, b = out["members"]
    # --- the two kafkajs members split the partitions, each consumed only its own, each record once
    assert sorted(a["partitions"] + b["partitions"]) == list(range(nparts)), (a["partitions"], b["partitions"])
    assert a["partitions"] and b["partitions"]
    for m in (a, b):
        assert {p for p, _, _, _ in m["records"]} <= set(m["partitions"]), (m["name"], m["partitions"])
    got = Counter((p, k, v) for m in (a, b) for p, _, k, v in m["records"])
    assert not [r for r, c in got.items() if c > 1], "records consumed twice"
    assert set(got) == {(i % nparts, f"js-k{i}", f"js-v{i}") for i in range(n)}

    # --- the commits (with metadata) as kafkajs' admin and librdkafka read them back
    per_part = n // nparts
    assert out["committed"] == [[p, per_part, f"js-{p}-{per_part}"] for p in range(nparts)], out["committed"]
    assert committed_offsets(gbroker.bootstrap, group_name, topic_name, nparts) == {
        p: (per_part, f"js-{p}-{per_part}") for p in range(nparts)}


@pytest.mark.timeout(120)
def test_kafkajs_group_resumes_after_consumer_and_broker_restart(broker_factory, topic_name, group_name):
    b = broker_factory(args=GROUP_ARGS)
    nparts, n = 3, 90
    create_topic(b.bootstrap, topic_name, partitions=nparts)
    produce_all(producer(b.bootstrap), topic_name, keyed(n, nparts, "js"))
    seen = []
    committed = {p: 0 for p in range(nparts)}  # where the next read of each partition starts
    ever = set()  # partitions with a commit (OffsetFetch says -1 for the others)

    def run(label, expect):
        out = kjs_groups(b.bootstrap, topic_name, "consume", {"group": group_name, "expect": expect})
        recs = out["member"]["records"]
        assert len(recs) == expect, f"{label}: processed {len(recs)}"
        # it started every partition it read exactly at the committed offset, and read in order
        for p in {p for p, _, _, _ in recs}:
            offs = [o for q, o, _, _ in recs if q == p]
            assert offs == list(range(committed[p], committed[p] + len(offs))), (
                f"{label}: partition {p} read {offs[:5]}..., committed offset was {committed[p]}")
        for p, o in out["commits"]:
            committed[p] = o
            ever.add(p)
        want = [[p, committed[p] if p in ever else -1] for p in range(nparts)]
        assert [[p, o] for p, o, _ in out["committed"]] == want, (
            f"{label}: committed after the run {out['committed']}, expected {committed}")
        seen.extend((p, o) for p, o, _, _ in recs)

    # --- first consumer: 30 records, commit, leave
    run("first run", 30)
    # --- consumer restart: the next 30 from the commits
    run("after a consumer restart", 30)
    # --- broker restart (SIGTERM), then SIGKILL: the rest, from the commits, nothing twice
    b.restart()
    run("after a broker restart", 20)
    b.restart(graceful=False)
    run("after a broker SIGKILL", 10)
    assert sorted(seen) == sorted(set(seen)), "records read twice"
    assert sorted(seen) == [(p, o) for p in range(nparts) for o in range(n // nparts)]
