"""aiokafka (asyncio client, its own protocol code): produce/consume with acks all and 1, every
codec, the idempotent producer, consumer groups (split, leave, each record once across members),
manual commits and resuming after them, offset look-ups and seeks, and the admin client. Every
test runs against one node and against a 3-node cluster.

Each test is one coroutine run by `run()` in a fresh event loop under `asyncio.wait_for`, so a
hung client fails the test with a timeout instead of hanging the suite. Waits poll a condition
(`until`), never sleep for a fixed time.
"""

import asyncio
import time
from collections import Counter, defaultdict
from contextlib import asynccontextmanager

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment

import kproto
from ckutil import admin as ck_admin
from ckutil import consume, create_topic, leader_of, replication_for, topic_names


@pytest.fixture
def bootstrap(bootstrap_both_shapes):
    """Every test here runs against one node and against a 3-node cluster."""
    return bootstrap_both_shapes


T = 20  # seconds for one client call (request_timeout_ms) and for one awaited condition
TEST_S = 75  # one test's coroutine: below pytest.ini's 90 s, so a hang ends in a TimeoutError whose
# chained CancelledError shows the await that hung, and the clients still close

# Kafka error codes the admin answers are checked against
NONE = 0
UNKNOWN_TOPIC_OR_PARTITION = 3
TOPIC_ALREADY_EXISTS = 36


def run(coro, timeout=TEST_S):
    """Runs one test's coroutine in a fresh event loop, bounded by `timeout` seconds."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def until(what, check, timeout=T, interval=0.05):
    """Polls `check()` (sync or async) until it returns something truthy; returns that."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def producer(bootstrap, **kw):
    return AIOKafkaProducer(bootstrap_servers=bootstrap, request_timeout_ms=T * 1000, **kw)


def consumer(bootstrap, *topics, group_id=None, **kw):
    base = dict(bootstrap_servers=bootstrap, group_id=group_id, enable_auto_commit=False,
                auto_offset_reset="earliest", request_timeout_ms=T * 1000, fetch_max_wait_ms=100)
    base.update(kw)
    return AIOKafkaConsumer(*topics, **base)


@asynccontextmanager
async def admin_client(bootstrap):
    """A started AIOKafkaAdminClient (it is no async context manager itself), closed on exit."""
    a = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=T * 1000)
    await a.start()
    try:
        yield a
    finally:
        await a.close()


async def read(c, expected, what, timeout=T):
    """getmany() until `expected` records arrived; returns them in arrival order."""
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < expected:
        assert time.monotonic() < deadline, f"{what}: read {len(out)} of {expected} records in {timeout}s"
        for recs in (await c.getmany(timeout_ms=200)).values():
            out += recs
    assert len(out) == expected, f"{what}: read {len(out)} records, expected {expected}"
    return out


async def read_from_beginning(bootstrap, topic, nparts, expected):
    """A fresh consumer without a group reads every partition of `topic` from the beginning until
    it holds `expected` records, and checks that the end offsets account for no more."""
    async with consumer(bootstrap) as c:
        tps = [TopicPartition(topic, p) for p in range(nparts)]
        c.assign(tps)
        await c.seek_to_beginning(*tps)
        got = await read(c, expected, f"read {topic} from the beginning")
        ends = await c.end_offsets(tps)
        assert sum(ends.values()) == expected, f"end offsets {ends} hold more than the {expected} records read"
        return got


def by_position(records):
    """{(partition, offset): record}, asserting that no position was delivered twice."""
    seen = Counter((r.partition, r.offset) for r in records)
    dups = [pos for pos, n in seen.items() if n > 1]
    assert not dups, f"delivered more than once: {dups[:5]}"
    return {(r.partition, r.offset): r for r in records}


def assert_per_partition_order(records):
    """Within each partition, offsets arrive in order, starting at 0 with no gap."""
    per = defaultdict(list)
    for r in records:
        per[r.partition].append(r.offset)
    for p, offsets in per.items():
        assert offsets == list(range(len(offsets))), f"partition {p} offsets out of order: {offsets[:20]}"


# ---- produce / consume ---------------------------------------------------------------------------


@pytest.mark.parametrize("acks", ["all", 1])
def test_aiokafka_roundtrip_keys_headers_timestamps(bootstrap, topic_name, acks):
    nparts, n = 3, 60
    create_topic(bootstrap, topic_name, partitions=nparts)
    ts0 = int(time.time() * 1000) - 3_600_000  # an hour ago: must come back as sent, not as "now"

    def record(i):
        return dict(partition=i % nparts, timestamp_ms=ts0 + i,
                    key=None if i % 5 == 0 else b"k%d" % i,
                    # aiokafka refuses a record with neither key nor value
                    value=None if i % 7 == 3 and i % 5 else (b"" if i % 11 == 4 else b"v%d-" % i + bytes(range(i))),
                    headers=[("idx", b"%d" % i), ("dup", b"a"), ("dup", b"b"), ("empty", b""),
                             ("null", None), ("ünïcode-ключ", "värde".encode())] if i % 2 else [])

    sent = [record(i) for i in range(n)]

    async def main():
        async with producer(bootstrap, acks=acks, linger_ms=5) as p:
            # The first half one at a time (send_and_wait), the second half in flight together.
            metas = [await p.send_and_wait(topic_name, **s) for s in sent[:n // 2]]
            futures = [await p.send(topic_name, **s) for s in sent[n // 2:]]
            metas += await asyncio.gather(*futures)
        positions = [(m.partition, m.offset) for m in metas]
        assert [m.partition for m in metas] == [s["partition"] for s in sent]
        # Only the one-record batches: for a batch with several records aiokafka 0.14 gives every
        # record the first one's timestamp (MessageBatch.done() overwrites `timestamp` while it
        # resolves the records' futures), whatever the broker answers. The reads check them all.
        assert [(m.timestamp, m.timestamp_type) for m in metas[:n // 2]] == [
            (s["timestamp_ms"], 0) for s in sent[:n // 2]], "CreateTime not echoed"
        for p in range(nparts):
            assert [o for q, o in positions if q == p] == list(range(n // nparts)), f"partition {p} offsets"

        got = await read_from_beginning(bootstrap, topic_name, nparts, n)
        assert_per_partition_order(got)
        at = by_position(got)
        assert set(at) == set(positions)
        for s, pos in zip(sent, positions):
            r = at[pos]
            assert (r.key, r.value, r.timestamp, r.timestamp_type) == (
                s["key"], s["value"], s["timestamp_ms"], 0), f"record at {pos}"
            assert list(r.headers) == s["headers"], f"headers at {pos}"

    run(main())

    # A different client reads the same records off the same partitions.
    ck = consume(bootstrap, topic_name, partitions=range(nparts), expected=n)
    assert sorted((m.partition(), m.offset(), m.key(), m.value()) for m in ck) == sorted(
        (s["partition"], i // nparts, s["key"], s["value"]) for i, s in enumerate(sent))


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_aiokafka_compression_roundtrip_and_stored_codec(bootstrap, topic_name, codec):
    create_topic(bootstrap, topic_name)
    values = [(f"record {i} " + "compressible text " * 20).encode() for i in range(300)]

    async def main():
        async with producer(bootstrap, compression_type=codec, linger_ms=50, acks="all") as p:
            futures = [await p.send(topic_name, key=b"%d" % i, value=v, partition=0) for i, v in enumerate(values)]
            metas = await asyncio.gather(*futures)
        assert [m.offset for m in metas] == list(range(len(values)))
        got = await read_from_beginning(bootstrap, topic_name, 1, len(values))
        assert [r.value for r in got] == values
        assert [r.key for r in got] == [b"%d" % i for i in range(len(values))]

    run(main())
    # The broker stores the batches as the client compressed them, and librdkafka decodes them.
    with kproto.Conn(leader_of(bootstrap, topic_name)) as c:
        batches = kproto.fetch_all_batches(c, topic_name, 0)
    assert {b.codec for b in batches} == {codec}, f"stored codecs {[b.codec for b in batches]}"
    assert len(batches) < len(values), "linger.ms should have batched records together"
    assert [m.value() for m in consume(bootstrap, topic_name, expected=len(values))] == values


def test_aiokafka_idempotent_producer_writes_each_record_once(bootstrap, topic_name):
    nparts, n = 3, 300
    create_topic(bootstrap, topic_name, partitions=nparts)
    values = [b"idem-%d-" % i + b"x" * 100 for i in range(n)]  # 100 per partition fill several batches

    async def main():
        async with producer(bootstrap, enable_idempotence=True, linger_ms=5, max_batch_size=2048) as p:
            futures = [await p.send(topic_name, value=v, partition=i % nparts) for i, v in enumerate(values)]
            metas = await asyncio.gather(*futures)
        for part in range(nparts):
            assert [m.offset for m in metas if m.partition == part] == list(range(n // nparts))
        got = await read_from_beginning(bootstrap, topic_name, nparts, n)
        assert_per_partition_order(got)
        by_position(got)
        assert Counter(r.value for r in got) == Counter(values), "a record is missing or written twice"
        for part in range(nparts):
            assert [r.value for r in got if r.partition == part] == values[part::nparts]

    run(main())
    # Stored batches carry one producer id and sequences that continue batch after batch.
    pids = set()
    for part in range(nparts):
        with kproto.Conn(leader_of(bootstrap, topic_name, part)) as c:
            batches = kproto.fetch_all_batches(c, topic_name, part)
        assert len(batches) > 1, f"partition {part}: expected several batches, got {len(batches)}"
        pids |= {(b.producer_id, b.producer_epoch) for b in batches}
        seq = 0
        for b in batches:
            assert b.base_sequence == seq and b.base_offset == seq, f"partition {part}: {b}"
            seq += b.count
        assert seq == n // nparts
    assert len(pids) == 1 and next(iter(pids))[0] >= 0, f"producer (id, epoch) in stored batches: {pids}"


# ---- consumer groups -----------------------------------------------------------------------------


class Member:
    """One consumer in a group, consuming in its own task: it records every record it gets and
    commits after each non-empty batch; its rebalance listener tracks the assignment."""

    def __init__(self, bootstrap, group, topic, name):
        self.name = name
        self.records = []
        self.assigned = set()
        self.events = []
        self.commits_pending = False
        self.error = None
        self.c = consumer(bootstrap, topic, group_id=group, client_id=name, session_timeout_ms=10000,
                          heartbeat_interval_ms=500)
        member = self

        class Listener(ConsumerRebalanceListener):
            def on_partitions_revoked(self, revoked):
                member.events.append(("revoke", sorted(tp.partition for tp in revoked)))
                member.assigned = set()

            def on_partitions_assigned(self, assigned):
                member.events.append(("assign", sorted(tp.partition for tp in assigned)))
                member.assigned = {tp.partition for tp in assigned}

        self.c.subscribe([topic], listener=Listener())
        self.task = None

    async def start(self):
        await self.c.start()
        self.task = asyncio.create_task(self._run())
        return self

    async def _run(self):
        try:
            while True:
                batch = await self.c.getmany(timeout_ms=200)
                got = [r for recs in batch.values() for r in recs]
                if got:
                    self.commits_pending = True
                    self.records += got
                    await self.c.commit()
                    self.commits_pending = False
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - the test asserts on it
            self.error = e

    def check(self):
        assert self.error is None, f"{self.name} failed: {self.error!r} (events {self.events})"

    async def stop(self):
        """Stops consuming, then leaves the group (AIOKafkaConsumer.stop sends LeaveGroup)."""
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        await self.c.stop()

    def __repr__(self):
        return f"<{self.name} {sorted(self.assigned)} {len(self.records)} records, events {self.events[-4:]}>"


async def group_offsets(bootstrap, group, tps):
    """{partition: committed offset} as the admin client reads them (OffsetFetch)."""
    async with admin_client(bootstrap) as a:
        offsets = await a.list_consumer_group_offsets(group, partitions=tps)
    return {tp.partition: om.offset for tp, om in offsets.items()}


def consumed(members, n):
    """Whether the members got `n` records in all and committed after each batch they got."""
    for m in members:
        m.check()
    return sum(len(m.records) for m in members) >= n and not any(m.commits_pending for m in members)


def split(members, nparts):
    """Whether every partition is held by exactly one member and every member holds some."""
    for m in members:
        m.check()
    held = [m.assigned for m in members]
    return all(held) and sorted(p for h in held for p in h) == list(range(nparts))


def test_aiokafka_group_split_leave_and_each_record_once(bootstrap, topic_name):
    nparts, per_phase = 6, 120
    group = f"g-{topic_name}"
    create_topic(bootstrap, topic_name, partitions=nparts)
    tps = [TopicPartition(topic_name, p) for p in range(nparts)]

    async def produce(p, tag):
        futures = [await p.send(topic_name, key=f"{tag}-{i}".encode(), value=f"{tag}-v{i}".encode(),
                                partition=i % nparts) for i in range(per_phase)]
        return await asyncio.gather(*futures)

    async def main():
        c1 = await Member(bootstrap, group, topic_name, "c1").start()
        c2 = None
        try:
            await until("c1 holds every partition", lambda: split([c1], nparts))
            c2 = await Member(bootstrap, group, topic_name, "c2").start()
            # --- two members: the partitions split between them, disjoint and complete
            await until("a split between c1 and c2", lambda: split([c1, c2], nparts))
            held = {m.name: set(m.assigned) for m in (c1, c2)}
            # The coordinator's view (DescribeGroups) is the members' view.
            async with admin_client(bootstrap) as a:
                (resp,) = await a.describe_consumer_groups([group])
            (g,) = resp.to_object()["groups"]
            assert (g["error_code"], g["state"], g["protocol_type"]) == (NONE, "Stable", "consumer"), g
            assert {m["client_id"]: {p for _, ps in ConsumerProtocolMemberAssignment.decode(
                m["member_assignment"]).assignment for p in ps} for m in g["members"]} == held, g

            async with producer(bootstrap, acks="all") as p:
                first = await produce(p, "a")
            await until("phase 1 consumed and committed", lambda: consumed([c1, c2], per_phase))
            for m in (c1, c2):
                assert {r.partition for r in m.records} <= held[m.name], f"{m} read a partition it did not hold"
                assert m.assigned == held[m.name], f"{m}: assignment changed during phase 1"
            got = by_position(c1.records + c2.records)
            assert set(got) == {(m.partition, m.offset) for m in first}
            assert await group_offsets(bootstrap, group, tps) == {p: per_phase // nparts for p in range(nparts)}

            # --- c2 leaves: c1 takes every partition and resumes c2's at c2's commits
            await c2.stop()
            await until("c1 holds every partition after c2 left", lambda: split([c1], nparts))
            async with producer(bootstrap, acks="all") as p:
                second = await produce(p, "b")
            await until("phase 2 consumed by c1", lambda: consumed([c1, c2], 2 * per_phase))
            got = by_position(c1.records + c2.records)  # nothing delivered twice across the pair
            assert set(got) == {(m.partition, m.offset) for m in first + second}
            assert all(r.value == r.key.replace(b"-", b"-v", 1) for r in got.values())
            assert await group_offsets(bootstrap, group, tps) == {p: 2 * per_phase // nparts for p in range(nparts)}
        finally:
            for m in (c2, c1):
                if m is not None:
                    await m.stop()

    run(main())


def test_aiokafka_manual_commit_and_resume_without_redelivery(bootstrap, topic_name):
    nparts, per_part = 3, 10
    group = f"g-{topic_name}"
    create_topic(bootstrap, topic_name, partitions=nparts)
    tps = [TopicPartition(topic_name, p) for p in range(nparts)]
    chosen = {0: 3, 1: 7, 2: 0}  # 0 is a real commit ("from the start"), not "no commit"

    async def main():
        async with producer(bootstrap, acks="all") as p:
            for i in range(nparts * per_part):
                await p.send_and_wait(topic_name, value=b"%d" % i, partition=i % nparts)

        # --- a member reads everything, then commits chosen offsets (with metadata) and leaves
        async with consumer(bootstrap, topic_name, group_id=group) as a:
            await read(a, nparts * per_part, "first member")
            for tp in tps:
                assert await a.committed(tp) is None, f"{tp} committed before any commit"
            await a.commit({tp: (chosen[tp.partition], f"meta-{tp.partition}") for tp in tps})
            for tp in tps:
                assert await a.committed(tp) == chosen[tp.partition], tp
        async with admin_client(bootstrap) as adm:
            offsets = await adm.list_consumer_group_offsets(group, partitions=tps)
        assert {tp.partition: (om.offset, om.metadata) for tp, om in offsets.items()} == {
            p: (o, f"meta-{p}") for p, o in chosen.items()}

        # --- a new member resumes exactly after the commits: nothing before them comes again.
        # auto_offset_reset="none": a partition without a committed offset would raise.
        remaining = sum(per_part - o for o in chosen.values())
        async with consumer(bootstrap, topic_name, group_id=group, auto_offset_reset="none") as b:
            got = await read(b, remaining, "resumed member")
            for tp in tps:
                want = list(range(chosen[tp.partition], per_part))
                assert [r.offset for r in got if r.partition == tp.partition] == want, tp
                assert await b.position(tp) == per_part
            assert not await b.getmany(timeout_ms=300), "more records than were left after the commits"
            await b.commit()  # the consumed positions
            for tp in tps:
                assert await b.committed(tp) == per_part, tp

    run(main())


def test_aiokafka_offset_lookups_and_seeks(bootstrap, topic_name):
    nparts, per_part = 2, 10
    create_topic(bootstrap, topic_name, partitions=nparts)
    tps = [TopicPartition(topic_name, p) for p in range(nparts)]
    ts0 = int(time.time() * 1000) - 60_000

    async def main():
        async with producer(bootstrap, acks="all") as p:
            for i in range(per_part):
                for tp in tps:
                    await p.send_and_wait(topic_name, value=b"%d-%d" % (tp.partition, i), partition=tp.partition,
                                          timestamp_ms=ts0 + i * 100)
        async with consumer(bootstrap) as c:
            c.assign(tps)
            assert await c.beginning_offsets(tps) == {tp: 0 for tp in tps}
            assert await c.end_offsets(tps) == {tp: per_part for tp in tps}
            found = await c.offsets_for_times({tp: ts0 + 450 for tp in tps})
            assert {tp: (ot.offset, ot.timestamp) for tp, ot in found.items()} == {
                tp: (5, ts0 + 500) for tp in tps}
            later = await c.offsets_for_times({tps[0]: ts0 + 10_000})
            assert later[tps[0]] is None, "no record at or after that time"

            tp = tps[1]
            c.seek(tp, 6)
            r = await c.getone(tp)
            assert (r.partition, r.offset, r.value) == (1, 6, b"1-6")
            await c.seek_to_beginning(tp)
            assert await c.position(tp) == 0
            assert (await c.getone(tp)).offset == 0
            await c.seek_to_end(tp)
            assert await c.position(tp) == per_part
            assert c.highwater(tp) == per_part
            assert not (await c.getmany(tp, timeout_ms=300)), "records past the end"

    run(main())


# ---- admin ---------------------------------------------------------------------------------------


def test_aiokafka_admin_create_describe_delete_topic(bootstrap, topic_name):
    rf = replication_for(bootstrap)

    async def main():
        async with admin_client(bootstrap) as a:
            resp = await a.create_topics([NewTopic(topic_name, 3, rf, topic_configs={"retention.ms": "3600000"})])
            assert [(t[0], t[1]) for t in resp.topic_errors] == [(topic_name, NONE)], resp

            async def ready():
                (t,) = await a.describe_topics([topic_name])
                if t["error_code"] == NONE and len(t["partitions"]) == 3 and all(
                        p["leader"] >= 0 for p in t["partitions"]):
                    return t
            t = await until(f"{topic_name} with 3 led partitions", ready)
            assert t["topic"] == topic_name and not t["is_internal"]
            assert sorted(p["partition"] for p in t["partitions"]) == [0, 1, 2]
            for p in t["partitions"]:
                assert len(p["replicas"]) == rf and sorted(p["isr"]) == sorted(p["replicas"]), p
            assert topic_name in await a.list_topics()

            (cfg,) = await a.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic_name)])
            entries = {e[0]: e[1] for (_, _, _, _, es) in cfg.resources for e in es}
            assert entries.get("retention.ms") == "3600000", cfg

            resp = await a.create_topics([NewTopic(topic_name, 1, rf)])
            assert [(t[0], t[1]) for t in resp.topic_errors] == [(topic_name, TOPIC_ALREADY_EXISTS)], resp

            resp = await a.delete_topics([topic_name])
            assert [tuple(t[:2]) for t in resp.topic_error_codes] == [(topic_name, NONE)], resp
            await until(f"{topic_name} gone from the metadata",
                        lambda: topic_name not in topic_names(ck_admin(bootstrap)))
            assert topic_name not in await a.list_topics()
            resp = await a.delete_topics([topic_name])
            assert [tuple(t[:2]) for t in resp.topic_error_codes] == [(topic_name, UNKNOWN_TOPIC_OR_PARTITION)], resp

    run(main())
