"""Consumer groups (classic protocol) with real librdkafka consumers, the admin API and hand-built
requests: assignment, rebalances on leave / kill / join, cooperative-sticky, static membership,
committed offsets across consumer and broker restarts, a 20-member join storm, group admin,
exact error codes, and the group metrics.

Expected behaviour is Apache Kafka's. Brokers here run with `group.initial.rebalance.delay.ms=0`
so a group forms as soon as its first member joins. Tests that do not restart the broker share one
broker per module and use their own group and topic names.

The helpers (`Member`, `ChildMember`, `wait_split`, raw group requests) are reused by
test_groups_clients.py.
"""

import json
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter

import pytest
from confluent_kafka import (OFFSET_INVALID, Consumer, ConsumerGroupState, ConsumerGroupTopicPartitions, KafkaError,
                             KafkaException, TopicPartition)

import kproto
from ckutil import admin, create_topic, produce_all, producer
from conftest import Broker, _die_with_parent, _track

GROUP_ARGS = ["--set", "group.initial.rebalance.delay.ms=0"]
T = 20  # seconds for any admin future / blocking client call

# Kafka error codes used below
ILLEGAL_GENERATION = 22
INCONSISTENT_GROUP_PROTOCOL = 23
INVALID_GROUP_ID = 24
UNKNOWN_MEMBER_ID = 25
INVALID_SESSION_TIMEOUT = 26
REBALANCE_IN_PROGRESS = 27
COORDINATOR_NOT_AVAILABLE = 15
INVALID_REQUEST = 42
NON_EMPTY_GROUP = 68
GROUP_ID_NOT_FOUND = 69
MEMBER_ID_REQUIRED = 79
GROUP_SUBSCRIBED_TO_TOPIC = 86


# ---- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def _groups_broker(tmp_path_factory):
    b = Broker(tmp_path_factory.mktemp("groups-broker"), name="groups broker", args=GROUP_ARGS)
    try:
        b.start()
        yield b
        b.stop()  # asserts a clean exit (exit code 0) with groups and offsets in place
    finally:
        b.cleanup()


@pytest.fixture
def gbroker(_groups_broker, request):
    """One broker per module with `group.initial.rebalance.delay.ms=0` (use unique names)."""
    if not _groups_broker.running:
        pytest.fail("the groups broker is no longer running (it crashed during an earlier test)\n"
                    + _groups_broker.stderr_tail())
    _track(request.node, _groups_broker)
    return _groups_broker


@pytest.fixture
def group_name(request):
    base = "".join(c if c.isalnum() or c in "._-" else "_" for c in request.node.name)[:60]
    return f"g-{base}-{uuid.uuid4().hex[:8]}"


# ---- confluent-kafka group members --------------------------------------------------------------

# librdkafka error names/strings that a healthy group never shows its members.
MEMBER_ERROR_RE = re.compile(r"UNKNOWN_MEMBER_ID|Unknown member|ILLEGAL_GENERATION|"
                             r"Specified group generation id is not valid")


class _ListHandler(logging.Handler):
    def __init__(self, sink):
        super().__init__(logging.DEBUG)
        self.sink = sink

    def emit(self, record):
        self.sink.append(record.getMessage())


class Member:
    """A confluent-kafka consumer in a group, driven by `poll()` from the test's thread.

    Records every rebalance callback as (monotonic time, kind, sorted partitions), every consumed
    record, and errors. With `commit=True` it commits (synchronously) the offsets of what each
    poll returned, after "processing" it: at-least-once, and exactly once in a stable group.
    """

    def __init__(self, bootstrap, group, topics, name="member", commit=True, debug=None, **conf):
        self.name = name
        self.topics = list(topics)
        self.commit_enabled = commit
        self.events = []
        self.assignment = set()
        self.records = []
        self.errors = []
        self.commit_errors = []
        self.logs = []
        self.closed = False
        self.lock = threading.Lock()
        base = {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "client.id": name,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "heartbeat.interval.ms": 500,
            "session.timeout.ms": 10000,
            "fetch.wait.max.ms": 100,
            "reconnect.backoff.max.ms": 1000,
            "error_cb": self._on_error,
        }
        if debug:
            logger = logging.getLogger(f"rdkafka.{name}.{uuid.uuid4().hex[:6]}")
            logger.propagate = False
            logger.setLevel(logging.DEBUG)
            logger.addHandler(_ListHandler(self.logs))
            base.update({"debug": debug, "logger": logger})
        base.update(conf)
        self.conf = base
        self.c = Consumer(base)
        self.subscribed_at = time.monotonic()
        self.c.subscribe(self.topics, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost)

    # rebalance callbacks (run inside poll/consume/close)
    def _cooperative(self):
        return self.conf.get("partition.assignment.strategy") == "cooperative-sticky"

    def _on_assign(self, c, parts):
        tps = sorted((p.topic, p.partition) for p in parts)
        with self.lock:
            self.events.append((time.monotonic(), "assign", tps))
            if self._cooperative():
                self.assignment |= set(tps)
            else:
                self.assignment = set(tps)

    def _on_revoke(self, c, parts):
        tps = sorted((p.topic, p.partition) for p in parts)
        with self.lock:
            self.events.append((time.monotonic(), "revoke", tps))
            if self._cooperative():
                self.assignment -= set(tps)
            else:
                self.assignment = set()

    def _on_lost(self, c, parts):
        tps = sorted((p.topic, p.partition) for p in parts)
        with self.lock:
            self.events.append((time.monotonic(), "lost", tps))
            self.assignment -= set(tps)

    def _on_error(self, err):
        self.errors.append(str(err))

    def partitions(self):
        with self.lock:
            return {p for _, p in self.assignment}

    def poll(self, timeout=0.05):
        if self.closed:
            time.sleep(timeout)
            return []
        msgs = self.c.consume(num_messages=1000, timeout=timeout)
        nexts = {}
        for m in msgs:
            if m.error():
                if m.error().code() != KafkaError._PARTITION_EOF:
                    self.errors.append(str(m.error()))
                continue
            self.records.append((m.topic(), m.partition(), m.offset(), m.key(), m.value()))
            nexts[(m.topic(), m.partition())] = m.offset() + 1
        if nexts and self.commit_enabled:
            try:
                res = self.c.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in nexts.items()],
                                    asynchronous=False)
                self.commit_errors += [(tp.partition, str(tp.error)) for tp in res or [] if tp.error]
            except KafkaException as e:
                self.commit_errors.append(str(e))
        return msgs

    def close(self):
        if not self.closed:
            self.closed = True
            self.c.close()

    def events_since(self, mark):
        with self.lock:
            return list(self.events[mark:])

    def __repr__(self):
        return f"<{self.name} {sorted(self.partitions())}>"


def pump(members, seconds=None, until=None, what="condition", poll=0.05):
    """Poll every member round-robin until `until()` is true (then return the time it became
    true) or for `seconds` (then return None). Fails with `what` if `until` is not met in time."""
    deadline = time.monotonic() + (seconds if seconds is not None else 30)
    while time.monotonic() < deadline:
        for m in members:
            m.poll(poll)
        if until is not None and until():
            return time.monotonic()
    if until is not None:
        raise AssertionError(f"{what}: not reached within {seconds}s; members: "
                             + "; ".join(f"{describe_member(m)}" for m in members))
    return None


def describe_member(m):
    if isinstance(m, Member):
        last = [(round(t - m.subscribed_at, 2), k, [p for _, p in tps]) for t, k, tps in m.events[-6:]]
        return f"{m.name} has {sorted(m.partitions())}, last events {last}, errors {m.errors[-3:]}"
    return repr(m)


def split_ok(members, nparts, balanced=True):
    """Every partition 0..nparts-1 is held by exactly one member and every member holds one."""
    held = [sorted(m.partitions()) for m in members]
    flat = [p for h in held for p in h]
    if sorted(flat) != list(range(nparts)) or any(not h for h in held):
        return False
    if balanced and max(map(len, held)) - min(map(len, held)) > 1:
        return False
    return True


def last_event_time(members):
    ts = [m.events[-1][0] for m in members if m.events]
    return max(ts) if ts else 0.0


def wait_split(members, nparts, timeout=30, quiet=1.5, balanced=True, pollers=()):
    """Pump until the members split the partitions (see split_ok) and no member saw a rebalance
    callback for `quiet` seconds. `pollers` are extra members (e.g. ChildMember) that need no
    polling but count for the split."""
    everyone = list(members) + list(pollers)
    return pump(members or [_Sleeper()], timeout,
                until=lambda: split_ok(everyone, nparts, balanced)
                and time.monotonic() - last_event_time(everyone) >= quiet,
                what=f"a stable split of {nparts} partitions over {len(everyone)} members")


class _Sleeper:
    def poll(self, timeout):
        time.sleep(timeout)


# ---- a group member in its own process (to SIGKILL it) ----------------------------------------

CHILD_SCRIPT = r"""
import json, sys, time
from confluent_kafka import Consumer
conf = json.loads(sys.argv[1])
topic = sys.argv[2]
def out(**kw):
    sys.stdout.write(json.dumps(kw) + "\n")
    sys.stdout.flush()
c = Consumer(conf)
c.subscribe([topic],
            on_assign=lambda c, ps: out(event="assign", partitions=[p.partition for p in ps], member=c.memberid()),
            on_revoke=lambda c, ps: out(event="revoke", partitions=[p.partition for p in ps]),
            on_lost=lambda c, ps: out(event="lost", partitions=[p.partition for p in ps]))
out(event="subscribed")
deadline = time.monotonic() + 90
while time.monotonic() < deadline:
    m = c.poll(0.1)
    if m is not None and m.error():
        out(event="error", error=str(m.error()))
c.close()
out(event="closed")
"""


class ChildMember:
    """A confluent-kafka group member in a child process (eager protocol): its callbacks arrive
    as JSON lines and are tracked as in Member."""

    def __init__(self, bootstrap, group, topic, name="child", **conf):
        self.name = name
        base = {"bootstrap.servers": bootstrap, "group.id": group, "client.id": name,
                "enable.auto.commit": False, "auto.offset.reset": "earliest",
                "heartbeat.interval.ms": 500, "session.timeout.ms": 10000}
        base.update(conf)
        self.events = []
        self.assignment = set()
        self.lines = []
        self.lock = threading.Lock()
        self.subscribed_at = time.monotonic()
        self.stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([sys.executable, "-c", CHILD_SCRIPT, json.dumps(base), topic],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self.stderr,
                                     preexec_fn=_die_with_parent)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").strip()
            if not line:
                continue
            self.lines.append(line)
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            parts = sorted(ev.get("partitions", []))
            with self.lock:
                if ev["event"] == "assign":
                    self.assignment = set(parts)
                    self.events.append((time.monotonic(), "assign", parts))
                elif ev["event"] in ("revoke", "lost"):
                    self.assignment = set()
                    self.events.append((time.monotonic(), ev["event"], parts))

    def partitions(self):
        with self.lock:
            return set(self.assignment)

    def kill(self):
        """SIGKILL: no LeaveGroup, no more heartbeats."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        with self.lock:
            self.assignment = set()

    def cleanup(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stderr_tail(self, limit=1500):
        self.stderr.seek(0)
        return self.stderr.read().decode(errors="replace")[-limit:]

    def __repr__(self):
        return (f"<{self.name} pid {self.proc.pid} {sorted(self.partitions())} lines {self.lines[-4:]} "
                f"stderr {self.stderr_tail()!r}>")


def keyed(n, nparts, tag="r"):
    return [dict(partition=i % nparts, key=f"{tag}-k{i}".encode(), value=f"{tag}-v{i}".encode()) for i in range(n)]


def committed_offsets(bootstrap, group, topic, nparts):
    """{partition: (offset, metadata)} (-1001 = none): the offsets as librdkafka's admin API reads
    them, the metadata as the broker sends it in OffsetFetch (decoded by kproto).

    Not librdkafka's metadata: its copy of a partition list (the admin result) copies
    `metadata_size` bytes without a terminating NUL and confluent-kafka reads the attribute with
    strdup, so a non-empty metadata string intermittently comes back with heap bytes after it
    (UnicodeDecodeError on 0xff right after "kp-0-30"), whatever the broker sent. What the broker
    sends is what the committing client sent: confluent-kafka commits `strlen(metadata) + 1` bytes,
    its C string's NUL included, so one trailing NUL is dropped here (kafka-python sends none)."""
    a = admin(bootstrap)
    req = ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p) for p in range(nparts)])
    res = a.list_consumer_group_offsets([req], request_timeout=T)[group].result(timeout=T)
    offsets = {tp.partition: tp.offset for tp in res.topic_partitions}
    with kproto.Conn(bootstrap) as conn:
        raw = kproto.offset_fetch(conn, group, topic, list(range(nparts)))
    assert {p: err for p, (_, _, err) in raw.items()} == {p: 0 for p in range(nparts)}, raw
    assert {p: off if off >= 0 else -1001 for p, (off, _, _) in raw.items()} == offsets, (raw, offsets)
    return {p: (offsets[p], (raw[p][1] or b"").removesuffix(b"\0").decode()) for p in range(nparts)}


def describe_group(bootstrap, group):
    a = admin(bootstrap)  # kept referenced until the future is done (a dropped client never answers)
    return a.describe_consumer_groups([group], request_timeout=T)[group].result(timeout=T)


def close_all(members):
    for m in members:
        try:
            if isinstance(m, Member):
                m.close()
            else:
                m.cleanup()
        except Exception:  # noqa: BLE001 - teardown must not mask the test's own failure
            pass


# =============================================================================================
# 1. members split a topic; steady-state consumption is exactly-once


@pytest.mark.parametrize("n_members", [2, 3])
def test_members_split_partitions_and_consume_each_record_once(gbroker, topic_name, group_name, n_members):
    nparts, n = 6, 600
    create_topic(gbroker.bootstrap, topic_name, partitions=nparts)
    members = [Member(gbroker.bootstrap, group_name, [topic_name], name=f"m{i}") for i in range(n_members)]
    try:
        # --- all members join; every partition must be assigned exactly once, evenly (range)
        wait_split(members, nparts)
        held = {m.name: sorted(m.partitions()) for m in members}
        for m in members:
            local = sorted(tp.partition for tp in m.c.assignment())
            assert local == held[m.name], f"{m.name}: callbacks say {held[m.name]}, assignment() says {local}"
            assert len(local) == nparts // n_members, f"uneven split {held}"

        # --- produce N keyed records while the group is stable; consume, committing after processing
        produce_all(producer(gbroker.bootstrap), topic_name, keyed(n, nparts))
        pump(members, 30, until=lambda: sum(len(m.records) for m in members) >= n,
             what=f"{n} records consumed by the group")
        pump(members, 1.5)  # anything more would be a duplicate

        got = Counter((p, k, v) for m in members for (_, p, _, k, v) in m.records)
        dups = [r for r, c in got.items() if c > 1]
        assert not dups, f"{len(dups)} records consumed more than once, e.g. {dups[:3]}"
        want = {(r["partition"], r["key"], r["value"]) for r in keyed(n, nparts)}
        assert set(got) == want, (f"missing {len(want - set(got))}, unexpected {len(set(got) - want)}; "
                                  f"per member: {[(m.name, len(m.records)) for m in members]}")
        for m in members:
            foreign = {p for (_, p, _, _, _) in m.records} - set(held[m.name])
            assert not foreign, f"{m.name} consumed partitions {foreign} it was not assigned ({held})"
            assert not m.commit_errors, f"{m.name} commit errors: {m.commit_errors[:3]}"
        # No rebalance happened while stable: each member's last event is still its assignment.
        for m in members:
            kind, parts = m.events[-1][1], [p for _, p in m.events[-1][2]]
            assert kind == "assign" and parts == held[m.name], f"{m.name} rebalanced while stable: {m.events[-3:]}"

        # --- the group's committed offsets are the log end of every partition
        offs = committed_offsets(gbroker.bootstrap, group_name, topic_name, nparts)
        assert {p: o for p, (o, _) in offs.items()} == {p: n // nparts for p in range(nparts)}, offs
    finally:
        close_all(members)


# =============================================================================================
# 2. leave and kill


def test_clean_leave_hands_partitions_over_before_session_timeout(gbroker, topic_name, group_name):
    nparts, session_ms = 6, 10000
    create_topic(gbroker.bootstrap, topic_name, partitions=nparts)
    a = Member(gbroker.bootstrap, group_name, [topic_name], name="A", **{"session.timeout.ms": session_ms})
    b = Member(gbroker.bootstrap, group_name, [topic_name], name="B", **{"session.timeout.ms": session_ms})
    try:
        wait_split([a, b], nparts)

        # --- B closes (LeaveGroup): A must own all partitions well before the session timeout
        t0 = time.monotonic()
        b.close()
        pump([a], session_ms / 1000, until=lambda: a.partitions() == set(range(nparts)),
             what="A owning every partition after B's LeaveGroup")
        elapsed = a.events[-1][0] - t0  # A's final assignment callback
        print(f"rebalance after LeaveGroup: {elapsed:.2f}s")
        assert elapsed < session_ms / 1000 / 2, (
            f"A got B's partitions {elapsed:.1f}s after B left: the LeaveGroup did not trigger a rebalance "
            f"(Kafka rebalances at once; session.timeout.ms={session_ms})")

        # --- and A really consumes from all of them
        produce_all(producer(gbroker.bootstrap), topic_name, keyed(60, nparts, "after"))
        pump([a], 20, until=lambda: {p for (_, p, _, k, _) in a.records if k.startswith(b"after")} == set(range(nparts)),
             what="A consuming from every partition")
    finally:
        close_all([a, b])


@pytest.mark.timeout(60)
def test_killed_member_partitions_move_after_session_timeout(gbroker, topic_name, group_name):
    nparts, session_ms = 6, 6000
    create_topic(gbroker.bootstrap, topic_name, partitions=nparts)
    conf = {"session.timeout.ms": session_ms}
    a = Member(gbroker.bootstrap, group_name, [topic_name], name="A", **conf)
    b = ChildMember(gbroker.bootstrap, group_name, topic_name, name="B", **conf)
    try:
        wait_split([a], nparts, pollers=[b])
        b_parts = b.partitions()

        # --- SIGKILL member B: no LeaveGroup. A must get B's partitions once B's session expires,
        #     not earlier (Kafka does not evict a member because its TCP connection closed)
        t0 = time.monotonic()
        b.kill()
        pump([a], session_ms / 1000 + 10, until=lambda: a.partitions() == set(range(nparts)),
             what=f"A owning every partition after B (had {sorted(b_parts)}) was killed")
        elapsed = a.events[-1][0] - t0  # A's final assignment callback
        print(f"rebalance after SIGKILL: {elapsed:.2f}s (session.timeout.ms={session_ms})")
        hb = a.conf["heartbeat.interval.ms"] / 1000
        assert elapsed >= session_ms / 1000 - hb - 1.0, (
            f"B's partitions moved {elapsed:.1f}s after the kill, before its {session_ms} ms session expired")
        assert elapsed < session_ms / 1000 + 6, f"B's partitions moved only {elapsed:.1f}s after the kill"
        assert not [e for e in a.events if e[1] == "lost"], f"A lost partitions: {a.events}"
    finally:
        close_all([a, b])


# =============================================================================================
# 3. cooperative-sticky: incremental rebalances


def test_cooperative_sticky_join_revokes_only_moved_partitions(gbroker, topic_name, group_name):
    nparts = 6
    create_topic(gbroker.bootstrap, topic_name, partitions=nparts)
    coop = {"partition.assignment.strategy": "cooperative-sticky"}
    a = Member(gbroker.bootstrap, group_name, [topic_name], name="A", **coop)
    members = [a]
    try:
        # --- A alone gets everything, in one incremental assignment
        wait_split([a], nparts)
        assert [(k, [p for _, p in tps]) for _, k, tps in a.events if tps] == [("assign", list(range(nparts)))], a.events
        mark = len(a.events)

        # --- B joins: A gives up only the partitions that move to B, keeps consuming the rest
        b = Member(gbroker.bootstrap, group_name, [topic_name], name="B", **coop)
        members.append(b)
        wait_split([a, b], nparts, timeout=40)
        new_a = a.events_since(mark)
        revoked = {p for _, k, tps in new_a if k == "revoke" for _, p in tps}
        gained = {p for _, k, tps in new_a if k == "assign" for _, p in tps}
        assert not [e for e in new_a if e[1] == "lost"], f"A lost partitions: {new_a}"
        assert revoked == b.partitions(), (f"A revoked {sorted(revoked)} but B got {sorted(b.partitions())}: "
                                           f"a cooperative rebalance revokes exactly the moved partitions; A's events {new_a}")
        assert not gained, f"A was assigned {sorted(gained)} again (assignments must be incremental): {new_a}"
        assert a.partitions() == set(range(nparts)) - revoked and len(revoked) == nparts // 2, (a, b)
        assert not [e for e in b.events if e[1] != "assign"], f"B saw revocations: {b.events}"
        local = {tp.partition for tp in a.c.assignment()}
        assert local == a.partitions(), f"A's assignment() {sorted(local)} vs callbacks {sorted(a.partitions())}"
    finally:
        close_all(members)


# =============================================================================================
# 4. static membership


def static_pair(bootstrap, group, topic, nparts, restarted_is_leader, b_factory, conf):
    """Static members A (instance inst-a, in this process) and B (inst-b, made by b_factory).
    The first to join leads the group (Kafka keeps the leader as long as it rejoins), so B is made
    first, and alone owns everything, when `restarted_is_leader`."""
    static_a = dict(conf, **{"group.instance.id": "inst-a"})
    if restarted_is_leader:
        b = b_factory("B")
        if isinstance(b, Member):
            wait_split([b], nparts, quiet=0.5)
        else:
            wait_split([], nparts, pollers=[b], quiet=0.5)
        a = Member(bootstrap, group, [topic], name="A", **static_a)
    else:
        a = Member(bootstrap, group, [topic], name="A", **static_a)
        wait_split([a], nparts, quiet=0.5)
        b = b_factory("B")
    return a, b


@pytest.mark.parametrize("restarted_is_leader", [pytest.param(True, id="leader"),
                                                 pytest.param(False, id="follower")])
def test_static_member_closes_and_rejoins_without_rebalance(gbroker, topic_name, group_name, restarted_is_leader):
    nparts, session_ms = 6, 15000
    create_topic(gbroker.bootstrap, topic_name, partitions=nparts)
    conf = {"session.timeout.ms": session_ms}

    def make_b(name):
        return Member(gbroker.bootstrap, group_name, [topic_name], name=name, **{"group.instance.id": "inst-b"}, **conf)

    members = []
    try:
        a, b = static_pair(gbroker.bootstrap, group_name, topic_name, nparts, restarted_is_leader, make_b, conf)
        members += [a, b]
        wait_split(members, nparts)
        b_parts, a_parts = b.partitions(), a.partitions()
        desc = describe_group(gbroker.bootstrap, group_name)
        assert sorted(m.group_instance_id for m in desc.members) == ["inst-a", "inst-b"], desc.members
        mark = len(a.events)

        # --- B closes: a static member sends no LeaveGroup, so the group keeps its slot
        b.close()
        pump([a], 1.0)
        assert a.events_since(mark) == [], f"A rebalanced when static member B closed: {a.events_since(mark)}"

        # --- B restarts with the same group.instance.id within the session timeout:
        #     it gets the same partitions back, and A sees no rebalance at all
        b2 = make_b("B2")
        members.append(b2)
        pump([a, b2], 10, until=lambda: bool(b2.partitions()), what="restarted static member B getting partitions")
        pump([a, b2], 2.0)
        assert b2.partitions() == b_parts, f"B came back with {sorted(b2.partitions())}, had {sorted(b_parts)}"
        assert a.events_since(mark) == [], f"A saw a rebalance when static member B rejoined: {a.events_since(mark)}"
        assert a.partitions() == a_parts
    finally:
        close_all(members)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("restarted_is_leader", [pytest.param(True, id="leader"),
                                                 pytest.param(False, id="follower")])
def test_static_member_killed_and_restarted_gets_same_partitions(gbroker, topic_name, group_name, restarted_is_leader):
    nparts, session_ms = 6, 15000
    create_topic(gbroker.bootstrap, topic_name, partitions=nparts)
    conf = {"session.timeout.ms": session_ms}

    def make_b(name):
        return ChildMember(gbroker.bootstrap, group_name, topic_name, name=name, **{"group.instance.id": "inst-b"}, **conf)

    members = []
    try:
        a, b = static_pair(gbroker.bootstrap, group_name, topic_name, nparts, restarted_is_leader, make_b, conf)
        members += [a, b]
        wait_split([a], nparts, pollers=[b])
        b_parts, a_parts = b.partitions(), a.partitions()
        mark = len(a.events)

        # --- SIGKILL B, restart it at once with the same instance id
        b.kill()
        b2 = make_b("B2")
        members.append(b2)
        pump([a], 12, until=lambda: bool(b2.partitions()), what="restarted static member B getting partitions")
        pump([a], 2.0)
        assert b2.partitions() == b_parts, f"B came back with {sorted(b2.partitions())}, had {sorted(b_parts)}"
        assert a.events_since(mark) == [], f"A saw a rebalance when killed static member B came back: {a.events_since(mark)}"
        assert a.partitions() == a_parts

        # --- the group still has exactly two members (the old incarnation of B was replaced)
        desc = describe_group(gbroker.bootstrap, group_name)
        assert sorted(m.group_instance_id for m in desc.members) == ["inst-a", "inst-b"], desc.members
        assert desc.state == ConsumerGroupState.STABLE, desc.state
    finally:
        close_all(members)


# =============================================================================================
# 5. committed offsets survive consumer restarts and broker restarts


def first_offsets(records):
    out = {}
    for (_, p, o, _, _) in records:
        out.setdefault(p, o)
    return out


def resume_and_check(bootstrap, group, topic, nparts, per_part, expected_commits, label):
    """A fresh member of `group` must report `expected_commits` via committed() and resume exactly
    there: it consumes offsets committed..per_part-1 of every partition and nothing else."""
    m = Member(bootstrap, group, [topic], name=f"resume-{label}", commit=False)
    try:
        pump([m], 20, until=lambda: m.partitions() == set(range(nparts)), what=f"{label}: assignment")
        got = m.c.committed([TopicPartition(topic, p) for p in range(nparts)], timeout=T)
        assert {tp.partition: (tp.offset, tp.metadata or "") for tp in got} == expected_commits, (
            f"{label}: committed() returned {[(tp.partition, tp.offset, tp.metadata) for tp in got]}")
        want = sum(per_part - o for o, _ in expected_commits.values())
        pump([m], 20, until=lambda: len(m.records) >= want, what=f"{label}: {want} records after the commits")
        pump([m], 1.0)
        assert first_offsets(m.records) == {p: o for p, (o, _) in expected_commits.items() if o < per_part}, (
            f"{label}: resumed at {first_offsets(m.records)}, committed {expected_commits}")
        assert sorted((p, o) for (_, p, o, _, _) in m.records) == sorted(
            (p, o) for p, (c, _) in expected_commits.items() for o in range(c, per_part)), f"{label}: wrong records"
    finally:
        m.close()


@pytest.mark.timeout(90)
def test_committed_offsets_survive_consumer_and_broker_restarts(broker_factory, topic_name, group_name):
    b = broker_factory(args=GROUP_ARGS)
    nparts, per_part = 3, 30
    create_topic(b.bootstrap, topic_name, partitions=nparts)
    produce_all(producer(b.bootstrap), topic_name, keyed(nparts * per_part, nparts))

    # --- a member commits chosen offsets with metadata strings
    c1 = Member(b.bootstrap, group_name, [topic_name], name="c1", commit=False)
    try:
        pump([c1], 20, until=lambda: c1.partitions() == set(range(nparts)), what="c1 assignment")
        first = {0: 10, 1: 20, 2: 0}
        res = c1.c.commit(offsets=[TopicPartition(topic_name, p, o, f"meta-{p}-{o}") for p, o in first.items()],
                          asynchronous=False)
        assert not [tp for tp in res if tp.error], res
    finally:
        c1.close()
    expected = {p: (o, f"meta-{p}-{o}") for p, o in first.items()}

    # --- consumer restart: a new member resumes exactly at the commits
    resume_and_check(b.bootstrap, group_name, topic_name, nparts, per_part, expected, "consumer restart")

    # --- broker restart (SIGTERM): offsets and metadata are still there
    b.restart()
    assert committed_offsets(b.bootstrap, group_name, topic_name, nparts) == expected
    resume_and_check(b.bootstrap, group_name, topic_name, nparts, per_part, expected, "broker restart")

    # --- commit again, then SIGKILL the broker: the acknowledged commit survives too
    c2 = Member(b.bootstrap, group_name, [topic_name], name="c2", commit=False)
    try:
        pump([c2], 20, until=lambda: c2.partitions() == set(range(nparts)), what="c2 assignment")
        second = {0: 25, 1: 30, 2: 7}
        res = c2.c.commit(offsets=[TopicPartition(topic_name, p, o, "") for p, o in second.items()], asynchronous=False)
        assert not [tp for tp in res if tp.error], res
    finally:
        c2.close()
    b.restart(graceful=False)
    expected = {p: (o, "") for p, o in second.items()}
    assert committed_offsets(b.bootstrap, group_name, topic_name, nparts) == expected
    resume_and_check(b.bootstrap, group_name, topic_name, nparts, per_part, expected, "after SIGKILL")


# =============================================================================================
# 7. a join storm converges


@pytest.mark.timeout(90)
def test_twenty_members_joining_at_once_converge(gbroker, topic_name, group_name):
    n_members, nparts = 20, 40
    create_topic(gbroker.bootstrap, topic_name, partitions=nparts)
    stop = threading.Event()
    start = threading.Barrier(n_members)
    members = [None] * n_members
    crashes = []

    def run(i):
        try:
            start.wait(timeout=30)
            m = Member(gbroker.bootstrap, group_name, [topic_name], name=f"m{i:02d}", commit=False, debug="cgrp",
                       **{"heartbeat.interval.ms": 1000, "session.timeout.ms": 30000})
            members[i] = m
            while not stop.is_set():
                m.poll(0.1)
            m.close()
        except Exception as e:  # noqa: BLE001
            crashes.append((i, repr(e)))

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(n_members)]
    for t in threads:
        t.start()
    try:
        # --- all 20 subscribe at the same moment; wait for one stable assignment of all 40 partitions
        t0 = time.monotonic()
        deadline = t0 + 45
        converged = None
        while time.monotonic() < deadline and not crashes:
            ms = [m for m in members if m is not None]
            if len(ms) == n_members and split_ok(ms, nparts) and time.monotonic() - last_event_time(ms) >= 2.0:
                converged = last_event_time(ms) - t0
                break
            time.sleep(0.1)
        assert not crashes, crashes
        ms = [m for m in members if m is not None]
        assert converged is not None, ("20 members did not converge within 45 s: "
                                       + "; ".join(f"{m.name}:{sorted(m.partitions())}" for m in ms))
        print(f"20 members converged {converged:.2f}s after subscribing")
        assert all(len(m.partitions()) == nparts // n_members for m in ms), [m.partitions() for m in ms]

        # --- the coordinator agrees: one stable generation with these 20 members and assignments
        desc = describe_group(gbroker.bootstrap, group_name)
        assert desc.state == ConsumerGroupState.STABLE, desc.state
        assert len(desc.members) == n_members, [m.member_id for m in desc.members]
        by_client = {d.client_id: sorted(tp.partition for tp in d.assignment.topic_partitions) for d in desc.members}
        assert by_client == {m.name: sorted(m.partitions()) for m in ms}, by_client

        # --- no member was told it is unknown or of an old generation
        bad = [(m.name, line) for m in ms for line in m.logs if MEMBER_ERROR_RE.search(line)]
        bad += [(m.name, e) for m in ms for e in m.errors if MEMBER_ERROR_RE.search(e)]
        assert not bad, f"{len(bad)} member errors during the join storm, e.g. {bad[:5]}"
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)


# =============================================================================================
# 8. admin API: list / describe / offsets / delete


def group_states(a, group, states=None):
    kw = {"request_timeout": T}
    if states is not None:
        kw["states"] = set(states)
    res = a.list_consumer_groups(**kw).result(timeout=T)
    assert not res.errors, res.errors
    return {g.group_id: g.state for g in res.valid if g.group_id == group}


def test_admin_list_describe_offsets_and_delete_groups(gbroker, topic_name, group_name):
    nparts = 4
    a = create_topic(gbroker.bootstrap, topic_name, partitions=nparts)
    produce_all(producer(gbroker.bootstrap), topic_name, keyed(40, nparts))
    m1 = Member(gbroker.bootstrap, group_name, [topic_name], name="adm-1")
    m2 = Member(gbroker.bootstrap, group_name, [topic_name], name="adm-2")
    members = [m1, m2]
    try:
        wait_split(members, nparts)
        pump(members, 20, until=lambda: len(m1.records) + len(m2.records) >= 40, what="40 records consumed")
        pump(members, 0.5)

        # --- ListGroups: the group is Stable, and a state filter selects it or not
        assert group_states(a, group_name) == {group_name: ConsumerGroupState.STABLE}
        assert group_states(a, group_name, [ConsumerGroupState.STABLE]) == {group_name: ConsumerGroupState.STABLE}
        assert group_states(a, group_name, [ConsumerGroupState.EMPTY]) == {}

        # --- DescribeGroups: members, their client ids and assignments, the protocol
        d = a.describe_consumer_groups([group_name], request_timeout=T)[group_name].result(timeout=T)
        assert d.group_id == group_name and not d.is_simple_consumer_group
        assert d.state == ConsumerGroupState.STABLE
        assert d.partition_assignor == "range", d.partition_assignor  # first of librdkafka's "range,roundrobin"
        assert d.coordinator.id == 1 and d.coordinator.port == gbroker.kafka_port, d.coordinator
        got = {x.member_id: (x.client_id, sorted(tp.partition for tp in x.assignment.topic_partitions)) for x in d.members}
        assert got == {m.c.memberid(): (m.name, sorted(m.partitions())) for m in members}, got
        assert all(tp.topic == topic_name for x in d.members for tp in x.assignment.topic_partitions)

        # --- OffsetFetch through the admin API: what the members committed (10 per partition)
        offs = committed_offsets(gbroker.bootstrap, group_name, topic_name, nparts)
        assert {p: o for p, (o, _) in offs.items()} == {p: 10 for p in range(nparts)}, offs
        # all partitions of the group when none are named
        res = a.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group_name)], request_timeout=T)[group_name].result(T)
        assert sorted((tp.topic, tp.partition, tp.offset) for tp in res.topic_partitions) == [
            (topic_name, p, 10) for p in range(nparts)]

        # --- DeleteGroups is refused while the group has members
        with pytest.raises(KafkaException) as ei:
            a.delete_consumer_groups([group_name], request_timeout=T)[group_name].result(timeout=T)
        assert ei.value.args[0].code() == KafkaError.NON_EMPTY_GROUP, ei.value

        # --- members leave: the group is Empty (offsets kept), then DeleteGroups works
        close_all(members)
        assert group_states(a, group_name, [ConsumerGroupState.EMPTY]) == {group_name: ConsumerGroupState.EMPTY}
        d = a.describe_consumer_groups([group_name], request_timeout=T)[group_name].result(timeout=T)
        assert d.state == ConsumerGroupState.EMPTY and d.members == [], (d.state, d.members)
        a.delete_consumer_groups([group_name], request_timeout=T)[group_name].result(timeout=T)
        assert group_states(a, group_name) == {}, "deleted group still listed"
        offs = committed_offsets(gbroker.bootstrap, group_name, topic_name, nparts)
        assert all(o == OFFSET_INVALID for o, _ in offs.values()), f"offsets of a deleted group: {offs}"
        # deleting it again: GROUP_ID_NOT_FOUND
        with pytest.raises(KafkaException) as ei:
            a.delete_consumer_groups([group_name], request_timeout=T)[group_name].result(timeout=T)
        assert ei.value.args[0].code() == KafkaError.GROUP_ID_NOT_FOUND, ei.value
    finally:
        close_all(members)


def kp_admin(bootstrap):
    from kafka.admin import KafkaAdminClient
    return KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=T * 1000)


def test_admin_delete_group_offsets(gbroker, topic_name, group_name):
    """OffsetDelete (confluent-kafka's Python AdminClient lacks it; kafka-python's has it)."""
    from kafka import TopicPartition as KTP
    from kafka import errors as kerrors
    nparts = 3
    create_topic(gbroker.bootstrap, topic_name, partitions=nparts)
    produce_all(producer(gbroker.bootstrap), topic_name, keyed(30, nparts))
    m = Member(gbroker.bootstrap, group_name, [topic_name], name="od")
    kadm = kp_admin(gbroker.bootstrap)
    try:
        pump([m], 20, until=lambda: len(m.records) >= 30, what="30 records consumed")
        pump([m], 0.5)

        # --- while a member subscribes to the topic, its offsets cannot be deleted
        res = kadm.delete_group_offsets(group_name, [KTP(topic_name, 0)])
        assert res == {KTP(topic_name, 0): kerrors.GroupSubscribedToTopicError}, res

        # --- once the group is empty, deleting partition 0's offset leaves the others alone
        m.close()
        res = kadm.delete_group_offsets(group_name, [KTP(topic_name, 0)])
        assert res == {KTP(topic_name, 0): kerrors.NoError}, res
        offs = committed_offsets(gbroker.bootstrap, group_name, topic_name, nparts)
        assert {p: o for p, (o, _) in offs.items()} == {0: OFFSET_INVALID, 1: 10, 2: 10}, offs

        # --- a group that does not exist: GROUP_ID_NOT_FOUND
        with pytest.raises(kerrors.GroupIdNotFoundError):
            kadm.delete_group_offsets(f"{group_name}-nope", [KTP(topic_name, 0)])
    finally:
        m.close()
        kadm.close()


# =============================================================================================
# 9. exact error codes, with hand-built requests

FIND_COORDINATOR, OFFSET_COMMIT, OFFSET_FETCH = 10, 8, 9
JOIN_GROUP, HEARTBEAT, LEAVE_GROUP, SYNC_GROUP = 11, 12, 13, 14
S = kproto


def subscription(topics):
    """ConsumerProtocolSubscription v0."""
    return S.i16(0) + S.array(topics, S.string) + S.nbytes(None)


def assignment_bytes(parts):
    """ConsumerProtocolAssignment v0; parts: {topic: [partition]}."""
    return S.i16(0) + S.array(sorted(parts.items()), lambda kv: S.string(kv[0]) + S.array(kv[1], S.i32)) + S.nbytes(None)


def find_coordinator(conn, key, key_type=0):
    """FindCoordinator v2: (error, node_id, host, port)."""
    r = S.Reader(conn.request(FIND_COORDINATOR, 2, S.string(key) + S.i8(key_type)))
    r.i32()
    err = r.i16()
    r.string()  # error message
    return err, r.i32(), r.string(), r.i32()


def join_group(conn, group, member_id="", session_ms=10000, rebalance_ms=10000, instance_id=None, topics=("t",)):
    """JoinGroup v5 (consumer protocol, "range"): dict of the response."""
    body = (S.string(group) + S.i32(session_ms) + S.i32(rebalance_ms) + S.string(member_id) + S.string(instance_id)
            + S.string("consumer") + S.array([("range", subscription(list(topics)))],
                                              lambda p: S.string(p[0]) + S.nbytes(p[1])))
    r = S.Reader(conn.request(JOIN_GROUP, 5, body))
    r.i32()
    return dict(error=r.i16(), generation=r.i32(), protocol=r.string(), leader=r.string(), member_id=r.string(),
                members=r.array(lambda r: (r.string(), r.string(), r.nbytes())))


def sync_group(conn, group, generation, member_id, assignments=(), instance_id=None):
    """SyncGroup v3: (error, assignment bytes)."""
    body = (S.string(group) + S.i32(generation) + S.string(member_id) + S.string(instance_id)
            + S.array(list(assignments), lambda a: S.string(a[0]) + S.nbytes(a[1])))
    r = S.Reader(conn.request(SYNC_GROUP, 3, body))
    r.i32()
    return r.i16(), r.nbytes()


def heartbeat(conn, group, generation, member_id, instance_id=None):
    """Heartbeat v3: error code."""
    r = S.Reader(conn.request(HEARTBEAT, 3, S.string(group) + S.i32(generation) + S.string(member_id)
                              + S.string(instance_id)))
    r.i32()
    return r.i16()


def leave_group(conn, group, member_id, instance_id=None):
    """LeaveGroup v3: (error, [(member_id, instance_id, error)])."""
    r = S.Reader(conn.request(LEAVE_GROUP, 3, S.string(group) + S.array(
        [(member_id, instance_id)], lambda m: S.string(m[0]) + S.string(m[1]))))
    r.i32()
    return r.i16(), r.array(lambda r: (r.string(), r.string(), r.i16()))


def offset_commit(conn, group, generation, member_id, topic, offsets, instance_id=None, metadata=None):
    """OffsetCommit v7; offsets {partition: offset}: {partition: error}."""
    body = (S.string(group) + S.i32(generation) + S.string(member_id) + S.string(instance_id)
            + S.array([topic], lambda t: S.string(t) + S.array(
                sorted(offsets.items()), lambda po: S.i32(po[0]) + S.i64(po[1]) + S.i32(-1) + S.string(metadata))))
    r = S.Reader(conn.request(OFFSET_COMMIT, 7, body))
    r.i32()
    ((name, parts),) = r.array(lambda r: (r.string(), r.array(lambda r: (r.i32(), r.i16()))))
    assert name == topic
    return dict(parts)


def offset_fetch(conn, group, topic, partitions):
    """OffsetFetch v5 (the last non-flexible version): (top-level error, {partition: (offset, metadata, error)})."""
    body = S.string(group) + S.array([topic], lambda t: S.string(t) + S.array(list(partitions), S.i32))
    r = S.Reader(conn.request(OFFSET_FETCH, 5, body))
    r.i32()
    topics = r.array(lambda r: (r.string(), r.array(lambda r: (r.i32(), r.i64(), r.i32(), r.string(), r.i16()))))
    err = r.i16()
    return err, {p: (o, md, e) for _, parts in topics for (p, o, _le, md, e) in parts}


def join_as_new_member(conn, group, topics, **kw):
    """JoinGroup v5 the way clients do it: the first join is answered MEMBER_ID_REQUIRED with the
    member id to use (KIP-394); the second one joins."""
    first = join_group(conn, group, topics=topics, **kw)
    assert first["error"] == MEMBER_ID_REQUIRED and first["member_id"], f"first JoinGroup v5: {first}"
    second = join_group(conn, group, member_id=first["member_id"], topics=topics, **kw)
    assert second["error"] == 0, f"second JoinGroup: {second}"
    assert second["member_id"] == first["member_id"], (first, second)
    return second


def test_raw_group_protocol_error_codes(gbroker, topic_name, group_name):
    create_topic(gbroker.bootstrap, topic_name, partitions=2)
    with S.Conn(gbroker.bootstrap) as c:
        for key, version in ((FIND_COORDINATOR, 2), (JOIN_GROUP, 5), (SYNC_GROUP, 3), (HEARTBEAT, 3),
                             (LEAVE_GROUP, 3), (OFFSET_COMMIT, 7), (OFFSET_FETCH, 5)):
            S.require_version(c, key, version)

        # --- FindCoordinator: this broker, for groups
        assert find_coordinator(c, group_name) == (0, 1, "127.0.0.1", gbroker.kafka_port)
        # for a transactional id (key type 1): Kafka answers with the broker; a broker without a
        # transaction coordinator may say COORDINATOR_NOT_AVAILABLE, but must answer sanely
        err, node, host, port = find_coordinator(c, "some-transactional-id", key_type=1)
        assert err in (0, COORDINATOR_NOT_AVAILABLE), f"FindCoordinator(transaction): error {err}"
        if err == 0:
            assert (node, host, port) == (1, "127.0.0.1", gbroker.kafka_port)
        # an unknown key type: INVALID_REQUEST
        assert find_coordinator(c, group_name, key_type=99)[0] == INVALID_REQUEST

        # --- JoinGroup validation: session timeout outside [6000, 1800000] ms, empty group id
        for bad in (1000, 5999, 1800001):
            r = join_group(c, group_name, session_ms=bad, topics=[topic_name])
            assert r["error"] == INVALID_SESSION_TIMEOUT, f"session timeout {bad}: {r}"
        # (the bounds themselves are valid; another group, so no pending member is left in this one)
        assert join_group(c, group_name + "-bounds", session_ms=6000, topics=[topic_name])["error"] == MEMBER_ID_REQUIRED
        assert join_group(c, "", topics=[topic_name])["error"] == INVALID_GROUP_ID

        # --- join as the only member (generation g, leader = us) and sync an assignment
        j = join_as_new_member(c, group_name, [topic_name])
        me, gen = j["member_id"], j["generation"]
        assert gen >= 1 and j["leader"] == me and j["protocol"] == "range", j
        assert [(m, md) for m, _, md in j["members"]] == [(me, subscription([topic_name]))], j["members"]
        mine = assignment_bytes({topic_name: [0, 1]})
        assert sync_group(c, group_name, gen, me, [(me, mine)]) == (0, mine)

        # --- Heartbeat: ok; stale generation; unknown member
        assert heartbeat(c, group_name, gen, me) == 0
        assert heartbeat(c, group_name, gen + 1, me) == ILLEGAL_GENERATION
        assert heartbeat(c, group_name, gen, "no-such-member") == UNKNOWN_MEMBER_ID

        # --- OffsetCommit: stale generation, unknown member, then a good one; OffsetFetch reads it
        assert offset_commit(c, group_name, gen + 1, me, topic_name, {0: 5}) == {0: ILLEGAL_GENERATION}
        assert offset_commit(c, group_name, gen - 1, me, topic_name, {0: 5}) == {0: ILLEGAL_GENERATION}
        assert offset_commit(c, group_name, gen, "no-such-member", topic_name, {0: 5}) == {0: UNKNOWN_MEMBER_ID}
        # a "simple" commit (generation -1, no member) into a group that has members
        assert offset_commit(c, group_name, -1, "", topic_name, {0: 5}) == {0: UNKNOWN_MEMBER_ID}
        assert offset_commit(c, group_name, gen, me, topic_name, {0: 5, 1: 7}, metadata="raw-md") == {0: 0, 1: 0}
        assert offset_fetch(c, group_name, topic_name, [0, 1]) == (0, {0: (5, "raw-md", 0), 1: (7, "raw-md", 0)})

        # --- LeaveGroup; afterwards the old member id is unknown everywhere
        err, results = leave_group(c, group_name, me)
        assert err == 0 and [(m, e) for m, _, e in results] == [(me, 0)], (err, results)
        assert heartbeat(c, group_name, gen, me) == UNKNOWN_MEMBER_ID
        assert offset_commit(c, group_name, gen, me, topic_name, {0: 6}) == {0: UNKNOWN_MEMBER_ID}
        # the group is Empty now: a simple commit (generation -1, no member id) is accepted;
        # Kafka stores null metadata as "" (OffsetAndMetadata.NoMetadata)
        assert offset_commit(c, group_name, -1, "", topic_name, {0: 9}) == {0: 0}
        assert offset_fetch(c, group_name, topic_name, [0, 1]) == (0, {0: (9, "", 0), 1: (7, "raw-md", 0)})
        # a group nobody ever used: offset -1, metadata "", no error
        assert offset_fetch(c, f"{group_name}-unused", topic_name, [0]) == (0, {0: (-1, "", 0)})

        # --- the connection is still healthy after all the errors
        S.api_versions(c)


def test_raw_rejoin_with_stale_generation_after_rebalance(gbroker, topic_name, group_name):
    """A member that missed a rebalance commits with its old generation: ILLEGAL_GENERATION."""
    create_topic(gbroker.bootstrap, topic_name, partitions=2)
    with S.Conn(gbroker.bootstrap) as c1, S.Conn(gbroker.bootstrap) as c2:
        j1 = join_as_new_member(c1, group_name, [topic_name])
        m1, g1 = j1["member_id"], j1["generation"]
        assert sync_group(c1, group_name, g1, m1, [(m1, assignment_bytes({topic_name: [0, 1]}))])[0] == 0

        # --- a second member joins: the group prepares a rebalance; member 1 learns it by heartbeat
        first = join_group(c2, group_name, topics=[topic_name])
        assert first["error"] == MEMBER_ID_REQUIRED
        m2 = first["member_id"]
        # c2's JoinGroup is held until member 1 rejoins, so send it and rejoin member 1 on c1
        c2.send_raw(_join_frame(c2, group_name, m2, [topic_name]))
        deadline = time.monotonic() + 10
        while True:
            hb = heartbeat(c1, group_name, g1, m1)
            if hb == REBALANCE_IN_PROGRESS:
                break
            assert hb == 0 and time.monotonic() < deadline, f"heartbeat during a pending join: {hb}"
            time.sleep(0.1)
        j1b = join_group(c1, group_name, member_id=m1, topics=[topic_name])
        assert j1b["error"] == 0 and j1b["generation"] == g1 + 1, j1b
        j2 = _read_join(c2)
        assert j2["error"] == 0 and j2["generation"] == g1 + 1 and j2["member_id"] == m2, j2
        assert sorted(m for m, _, _ in j1b["members"] or j2["members"]) == sorted([m1, m2])

        # --- committing with the previous generation is refused
        assert offset_commit(c1, group_name, g1, m1, topic_name, {0: 1}) == {0: ILLEGAL_GENERATION}
        assert heartbeat(c1, group_name, g1, m1) == ILLEGAL_GENERATION


def test_raw_sync_join_commit_validation(gbroker, topic_name, group_name):
    """More of Kafka's validation: SyncGroup with a stale generation / unknown member, a JoinGroup
    with another protocol type, Heartbeat to an unknown group, commits to unknown partitions."""
    create_topic(gbroker.bootstrap, topic_name, partitions=2)
    with S.Conn(gbroker.bootstrap) as c:
        j = join_as_new_member(c, group_name, [topic_name])
        me, gen = j["member_id"], j["generation"]
        mine = assignment_bytes({topic_name: [0, 1]})
        # --- SyncGroup: wrong generation, unknown member, then the right one
        assert sync_group(c, group_name, gen + 1, me, [(me, mine)])[0] == ILLEGAL_GENERATION
        assert sync_group(c, group_name, gen, "no-such-member", [])[0] == UNKNOWN_MEMBER_ID
        assert sync_group(c, group_name, gen, me, [(me, mine)]) == (0, mine)

        # --- a member speaking another protocol type cannot join a consumer group
        body = (S.string(group_name) + S.i32(10000) + S.i32(10000) + S.string("") + S.string(None)
                + S.string("connect") + S.array([("default", b"x")], lambda p: S.string(p[0]) + S.nbytes(p[1])))
        r = S.Reader(c.request(JOIN_GROUP, 5, body))
        r.i32()
        assert r.i16() == INCONSISTENT_GROUP_PROTOCOL

        # --- Heartbeat for a group that does not exist: UNKNOWN_MEMBER_ID
        assert heartbeat(c, f"{group_name}-nope", 1, "someone") == UNKNOWN_MEMBER_ID

        # --- commits to partitions that do not exist: UNKNOWN_TOPIC_OR_PARTITION, per partition
        assert offset_commit(c, group_name, gen, me, topic_name, {0: 1, 7: 1}) == {0: 0, 7: S.UNKNOWN_TOPIC_OR_PARTITION}
        assert offset_commit(c, group_name, gen, me, f"{topic_name}-nope", {0: 1}) == {0: S.UNKNOWN_TOPIC_OR_PARTITION}
        assert leave_group(c, group_name, me)[0] == 0
        S.api_versions(c)


def test_raw_member_not_rejoining_is_removed_after_rebalance_timeout(gbroker, topic_name, group_name):
    """A member that keeps heartbeating but does not rejoin a rebalance is dropped when the
    rebalance timeout passes; the others complete the join without it."""
    create_topic(gbroker.bootstrap, topic_name, partitions=2)
    with S.Conn(gbroker.bootstrap) as c1, S.Conn(gbroker.bootstrap) as c2:
        j1 = join_as_new_member(c1, group_name, [topic_name], rebalance_ms=2000)
        m1, g1 = j1["member_id"], j1["generation"]
        assert sync_group(c1, group_name, g1, m1, [(m1, assignment_bytes({topic_name: [0, 1]}))])[0] == 0

        # --- member 2 joins (held: the group waits for member 1 to rejoin)
        first = join_group(c2, group_name, topics=[topic_name], rebalance_ms=2000)
        assert first["error"] == MEMBER_ID_REQUIRED
        m2 = first["member_id"]
        t0 = time.monotonic()
        c2.send_raw(_join_frame(c2, group_name, m2, [topic_name], rebalance_ms=2000))

        # --- member 1 only heartbeats: REBALANCE_IN_PROGRESS, until it is removed
        seen = []
        deadline = t0 + 15
        while time.monotonic() < deadline:
            seen.append(heartbeat(c1, group_name, g1, m1))
            if seen[-1] == UNKNOWN_MEMBER_ID:
                break
            time.sleep(0.2)
        assert seen[-1] == UNKNOWN_MEMBER_ID and REBALANCE_IN_PROGRESS in seen, f"heartbeats of member 1: {seen}"
        c2.sock.settimeout(15)
        j2 = _read_join(c2)
        elapsed = time.monotonic() - t0
        assert j2["error"] == 0 and j2["generation"] == g1 + 1 and j2["leader"] == m2, j2
        assert [m for m, _, _ in j2["members"]] == [m2], f"members of the new generation: {j2['members']}"
        assert 1.5 <= elapsed < 8, f"member 2's join completed {elapsed:.1f}s after it was sent (rebalance timeout 2 s)"


def _join_frame(conn, group, member_id, topics, session_ms=10000, rebalance_ms=10000):
    body = (S.string(group) + S.i32(session_ms) + S.i32(rebalance_ms) + S.string(member_id) + S.string(None)
            + S.string("consumer") + S.array([("range", subscription(list(topics)))],
                                              lambda p: S.string(p[0]) + S.nbytes(p[1])))
    payload = conn.header(JOIN_GROUP, 5) + body
    return S.i32(len(payload)) + payload


def _read_join(conn):
    frame = conn.recv_frame()
    r = S.Reader(frame)
    assert r.i32() == conn.correlation_id
    r.i32()
    return dict(error=r.i16(), generation=r.i32(), protocol=r.string(), leader=r.string(), member_id=r.string(),
                members=r.array(lambda r: (r.string(), r.string(), r.nbytes())))


# =============================================================================================
# 10. metrics


_SAMPLE_RE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)')
_LABEL_RE = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def metric_samples(broker, name):
    """[(labels dict, value)] of one metric in /metrics."""
    status, _, body = broker.http_get("/metrics")
    assert status == 200, f"/metrics: HTTP {status}"
    out = []
    for line in body.splitlines():
        m = _SAMPLE_RE.match(line)
        if m and m.group(1) == name:
            out.append((dict(_LABEL_RE.findall(m.group(2) or "")), float(m.group(3))))
    return out


def metric_sum(broker, name, **labels):
    """The sum of one metric's samples whose labels include `labels` (0 while it is absent)."""
    return sum(v for got, v in metric_samples(broker, name)
               if all(got.get(k) == want for k, want in labels.items()))


def group_metric(broker, name, group, topic=None):
    """{partition: value} (or {None: value} for per-group metrics) for one group."""
    out = {}
    for labels, v in metric_samples(broker, name):
        if labels.get("group") == group and (topic is None or labels.get("topic") == topic):
            out[int(labels["partition"]) if "partition" in labels else None] = v
    return out


def wait_metric(broker, name, group, want, topic=None, timeout=15):
    deadline = time.monotonic() + timeout
    while True:
        got = group_metric(broker, name, group, topic)
        if got == want:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{name}{{group={group}}}: {got}, expected {want} within {timeout}s")
        time.sleep(0.2)


def test_metrics_committed_offset_lag_and_members(gbroker, topic_name, group_name):
    nparts = 2
    create_topic(gbroker.bootstrap, topic_name, partitions=nparts)
    p = producer(gbroker.bootstrap)
    produce_all(p, topic_name, [dict(partition=i % 2, value=b"x") for i in range(20)])  # 10 per partition
    m = Member(gbroker.bootstrap, group_name, [topic_name], name="metrics", commit=False)
    try:
        pump([m], 20, until=lambda: m.partitions() == {0, 1}, what="assignment")
        wait_metric(gbroker, "spate_consumer_group_members", group_name, {None: 1})

        # --- commit 4 on partition 0 and 10 on partition 1: lag = log end - committed
        m.c.commit(offsets=[TopicPartition(topic_name, 0, 4), TopicPartition(topic_name, 1, 10)], asynchronous=False)
        wait_metric(gbroker, "spate_consumer_group_committed_offset", group_name, {0: 4, 1: 10}, topic_name)
        wait_metric(gbroker, "spate_consumer_group_lag", group_name, {0: 6, 1: 0}, topic_name)

        # --- the log grows: lag follows the log end
        produce_all(p, topic_name, [dict(partition=0, value=b"y") for _ in range(5)])
        wait_metric(gbroker, "spate_consumer_group_lag", group_name, {0: 11, 1: 0}, topic_name)

        # --- the member leaves: no members counted any more, offsets still reported
        m.close()
        deadline = time.monotonic() + 15
        while group_metric(gbroker, "spate_consumer_group_members", group_name) not in ({}, {None: 0}):
            assert time.monotonic() < deadline, (
                f"members gauge after the only member left: {group_metric(gbroker, 'spate_consumer_group_members', group_name)}")
            time.sleep(0.2)
        assert group_metric(gbroker, "spate_consumer_group_committed_offset", group_name, topic_name) == {0: 4, 1: 10}
    finally:
        m.close()
