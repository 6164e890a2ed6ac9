"""Transactions (KIP-98) with confluent-kafka (librdkafka), on one node and on a 3-node cluster.

What a read_committed consumer sees: committed transactions, never aborted or open ones; the
last stable offset holds it back while a transaction is open. Offsets sent in a transaction
become the group's committed offsets only when it commits. A second producer with the same
transactional.id fences the first; a transaction open past its timeout is aborted by the
coordinator. `transaction.partition.verification.enable=false` stops the leaders' KIP-890
questions without breaking transactions.
"""

import json
import time
import uuid

import pytest
from confluent_kafka import (OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer,
                             TopicPartition)
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType

from ckutil import CLIENT_TIMEOUT_S, consume, create_topic


@pytest.fixture
def bootstrap(bootstrap_both_shapes):
    return bootstrap_both_shapes


def txn_producer(bootstrap, txn_id=None, **conf):
    base = {
        "bootstrap.servers": bootstrap,
        "transactional.id": txn_id or f"txn-{uuid.uuid4().hex[:8]}",
        "linger.ms": 5,
        "message.timeout.ms": 20000,
        "reconnect.backoff.max.ms": 1000,
    }
    base.update(conf)
    p = Producer(base)
    p.init_transactions(CLIENT_TIMEOUT_S)
    return p


def produce(p, topic, values, partition=0):
    for v in values:
        p.produce(topic, value=v, partition=partition)
    assert p.flush(CLIENT_TIMEOUT_S) == 0


def values(bootstrap, topic, isolation, partitions=(0,), expected=None):
    msgs = consume(bootstrap, topic, partitions=partitions, expected=expected,
                   **{"isolation.level": isolation})
    return [m.value() for m in msgs]


def watermarks(bootstrap, topic, isolation, partition=0):
    """(low, high) as ListOffsets answers them: the high watermark, or for read_committed the
    last stable offset."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "spate-e2e-unused",
                  "isolation.level": isolation})
    try:
        return c.get_watermark_offsets(TopicPartition(topic, partition), timeout=CLIENT_TIMEOUT_S)
    finally:
        c.close()


def wait_stable(bootstrap, topic, want, partition=0, timeout=CLIENT_TIMEOUT_S):
    """Polls ListOffsets (read_committed) until the last stable offset is `want`. EndTxn is
    answered once the transaction's outcome is stored, before its markers are written (as in
    Kafka), so the LSO moves a moment after commit_transaction/abort_transaction return."""
    deadline = time.monotonic() + timeout
    while (got := watermarks(bootstrap, topic, "read_committed", partition)[1]) != want:
        assert time.monotonic() < deadline, f"the last stable offset of {topic}-{partition} is {got}, not {want}"
        time.sleep(0.1)


def test_committed_is_visible_to_read_committed_and_aborted_only_to_read_uncommitted(bootstrap, topic_name):
    create_topic(bootstrap, topic_name)
    p = txn_producer(bootstrap)
    p.begin_transaction()
    produce(p, topic_name, [b"c1", b"c2"])
    p.commit_transaction(CLIENT_TIMEOUT_S)
    p.begin_transaction()
    produce(p, topic_name, [b"a1", b"a2"])
    p.abort_transaction(CLIENT_TIMEOUT_S)
    p.begin_transaction()
    produce(p, topic_name, [b"c3"])
    p.commit_transaction(CLIENT_TIMEOUT_S)

    assert values(bootstrap, topic_name, "read_committed", expected=3) == [b"c1", b"c2", b"c3"]
    assert values(bootstrap, topic_name, "read_uncommitted", expected=5) == [b"c1", b"c2", b"a1", b"a2", b"c3"]
    # 5 records and 3 markers: the last stable offset is the log end once all is decided.
    assert watermarks(bootstrap, topic_name, "read_committed")[1] == 8
    assert watermarks(bootstrap, topic_name, "read_uncommitted")[1] == 8


def test_an_open_transaction_holds_read_committed_consumers_at_its_first_offset(bootstrap, topic_name):
    create_topic(bootstrap, topic_name)
    plain = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for v in (b"before-1", b"before-2"):
        plain.produce(topic_name, value=v, partition=0)
    assert plain.flush(CLIENT_TIMEOUT_S) == 0

    p = txn_producer(bootstrap)
    p.begin_transaction()
    produce(p, topic_name, [b"open-1", b"open-2"])
    # Non-transactional records written after the open transaction's start are held back too.
    plain.produce(topic_name, value=b"after", partition=0)
    assert plain.flush(CLIENT_TIMEOUT_S) == 0

    assert watermarks(bootstrap, topic_name, "read_uncommitted")[1] == 5
    assert watermarks(bootstrap, topic_name, "read_committed")[1] == 2, "the LSO is the open transaction's first offset"
    assert values(bootstrap, topic_name, "read_committed") == [b"before-1", b"before-2"]

    p.commit_transaction(CLIENT_TIMEOUT_S)
    assert values(bootstrap, topic_name, "read_committed", expected=5) == [
        b"before-1", b"before-2", b"open-1", b"open-2", b"after"]


def test_a_read_committed_consumer_waiting_at_the_lso_gets_the_commit(bootstrap, topic_name):
    """A consumer parked in a long poll at the last stable offset is woken by the commit."""
    create_topic(bootstrap, topic_name)
    p = txn_producer(bootstrap)
    p.begin_transaction()
    produce(p, topic_name, [b"x", b"y"])
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "spate-e2e-unused",
                  "isolation.level": "read_committed", "fetch.wait.max.ms": 5000,
                  "enable.partition.eof": True})
    try:
        c.assign([TopicPartition(topic_name, 0, OFFSET_BEGINNING)])
        # The consumer reaches the end of what it may read (the LSO, 0) first.
        deadline = time.monotonic() + CLIENT_TIMEOUT_S
        while time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is not None and m.error() and m.error().code() == KafkaError._PARTITION_EOF:
                break
            assert m is None or m.error(), f"read {m.value()} of an open transaction"
        else:
            pytest.fail("no EOF at the last stable offset")
        p.commit_transaction(CLIENT_TIMEOUT_S)
        got = []
        while len(got) < 2 and time.monotonic() < deadline + CLIENT_TIMEOUT_S:
            m = c.poll(0.5)
            if m is not None and not m.error():
                got.append(m.value())
        assert got == [b"x", b"y"]
    finally:
        c.close()


def test_offsets_sent_in_a_transaction_are_committed_only_when_it_commits(bootstrap, topic_name):
    create_topic(bootstrap, topic_name, partitions=2)
    group = f"g-{uuid.uuid4().hex[:8]}"
    meta_consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                              "enable.auto.commit": False})
    try:
        p = txn_producer(bootstrap)
        tps = [TopicPartition(topic_name, 0, 5), TopicPartition(topic_name, 1, 7)]
        p.begin_transaction()
        produce(p, topic_name, [b"out"])
        p.send_offsets_to_transaction(tps, meta_consumer.consumer_group_metadata(), CLIENT_TIMEOUT_S)
        p.abort_transaction(CLIENT_TIMEOUT_S)
        committed = meta_consumer.committed([TopicPartition(topic_name, 0), TopicPartition(topic_name, 1)],
                                            timeout=CLIENT_TIMEOUT_S)
        assert [tp.offset for tp in committed] == [-1001, -1001], "an aborted transaction commits nothing"

        p.begin_transaction()
        produce(p, topic_name, [b"out2"])
        p.send_offsets_to_transaction(tps, meta_consumer.consumer_group_metadata(), CLIENT_TIMEOUT_S)
        p.commit_transaction(CLIENT_TIMEOUT_S)
        committed = meta_consumer.committed([TopicPartition(topic_name, 0), TopicPartition(topic_name, 1)],
                                            timeout=CLIENT_TIMEOUT_S)
        assert [tp.offset for tp in committed] == [5, 7]
    finally:
        meta_consumer.close()


def test_a_second_producer_with_the_same_transactional_id_fences_the_first(bootstrap, topic_name):
    create_topic(bootstrap, topic_name)
    txn_id = f"zombie-{uuid.uuid4().hex[:8]}"
    old = txn_producer(bootstrap, txn_id)
    old.begin_transaction()
    produce(old, topic_name, [b"zombie"])
    new = txn_producer(bootstrap, txn_id)  # aborts the old one's open transaction
    new.begin_transaction()
    produce(new, topic_name, [b"fresh"])
    new.commit_transaction(CLIENT_TIMEOUT_S)

    with pytest.raises(KafkaException) as e:
        old.commit_transaction(CLIENT_TIMEOUT_S)
    assert e.value.args[0].fatal(), e.value
    assert values(bootstrap, topic_name, "read_committed", expected=1) == [b"fresh"]


def test_a_transaction_open_past_its_timeout_is_aborted(broker_factory, topic_name):
    b = broker_factory(args=["--set", "transaction.abort.timed.out.transaction.cleanup.interval.ms=100"])
    bootstrap = b.bootstrap
    create_topic(bootstrap, topic_name)
    p = txn_producer(bootstrap, **{"transaction.timeout.ms": 1000, "message.timeout.ms": 1000})
    p.begin_transaction()
    produce(p, topic_name, [b"late"])
    # The coordinator aborts it: the ABORT marker moves the LSO past the record.
    wait_stable(bootstrap, topic_name, 2)
    assert values(bootstrap, topic_name, "read_committed") == []
    with pytest.raises(KafkaException):
        p.commit_transaction(CLIENT_TIMEOUT_S)


def test_bad_transactional_requests_get_kafka_errors(bootstrap, topic_name):
    create_topic(bootstrap, topic_name)
    with pytest.raises(KafkaException) as e:
        txn_producer(bootstrap, **{"transaction.timeout.ms": 900_001})
    assert e.value.args[0].code() == KafkaError.INVALID_TRANSACTION_TIMEOUT, e.value
    # Transactions keep working after a refused one.
    p = txn_producer(bootstrap)
    p.begin_transaction()
    produce(p, topic_name, [b"ok"])
    p.commit_transaction(CLIENT_TIMEOUT_S)
    assert values(bootstrap, topic_name, "read_committed", expected=1) == [b"ok"]


def test_kafka_python_transactions_commit_and_abort(bootstrap, topic_name):
    from kafka import KafkaProducer
    create_topic(bootstrap, topic_name)
    p = KafkaProducer(bootstrap_servers=bootstrap, transactional_id=f"kp-{uuid.uuid4().hex[:8]}",
                      request_timeout_ms=CLIENT_TIMEOUT_S * 1000)
    try:
        p.init_transactions()
        p.begin_transaction()
        p.send(topic_name, value=b"kp-c1", partition=0)
        p.commit_transaction()
        p.begin_transaction()
        p.send(topic_name, value=b"kp-a1", partition=0)
        p.flush()  # written, then aborted (kafka-python drops what it has not sent)
        p.abort_transaction()
        p.begin_transaction()
        p.send(topic_name, value=b"kp-c2", partition=0)
        p.commit_transaction()
    finally:
        p.close()
    assert values(bootstrap, topic_name, "read_committed", expected=2) == [b"kp-c1", b"kp-c2"]
    assert values(bootstrap, topic_name, "read_uncommitted", expected=3) == [b"kp-c1", b"kp-a1", b"kp-c2"]


def test_kafkajs_transactions_commit_and_abort(bootstrap, topic_name):
    from test_kafkajs import kjs
    create_topic(bootstrap, topic_name)
    out = kjs(bootstrap, topic_name, "transactions", {
        "transactionalId": f"kjs-{uuid.uuid4().hex[:8]}",
        "transactions": [{"values": ["js-c1", "js-c2"], "commit": True},
                         {"values": ["js-a1"], "commit": False},
                         {"values": ["js-c3"], "commit": True}],
    })
    assert out["ended"] == ["committed", "aborted", "committed"]
    assert values(bootstrap, topic_name, "read_committed", expected=3) == [b"js-c1", b"js-c2", b"js-c3"]
    assert values(bootstrap, topic_name, "read_uncommitted", expected=4) == [b"js-c1", b"js-c2", b"js-a1", b"js-c3"]


def test_kill9_mid_transaction_keeps_the_lso_and_read_committed_results(broker_factory, topic_name):
    """The last stable offset and what read_committed consumers see come back the same after
    a SIGKILL: producer state (open transactions) and the transaction index are recovered
    from the log, and the coordinator reloads the transaction it was in."""
    b = broker_factory()
    bootstrap = b.bootstrap
    create_topic(bootstrap, topic_name)
    txn_id = f"crash-{uuid.uuid4().hex[:8]}"
    p = txn_producer(bootstrap, txn_id)
    p.begin_transaction()
    produce(p, topic_name, [b"c1"])
    p.commit_transaction(CLIENT_TIMEOUT_S)
    p.begin_transaction()
    produce(p, topic_name, [b"a1", b"a2"])
    p.abort_transaction(CLIENT_TIMEOUT_S)
    p.begin_transaction()
    produce(p, topic_name, [b"open"])  # left open across the crash
    wait_stable(bootstrap, topic_name, 5)  # the abort's marker is written after EndTxn's answer
    before = (watermarks(bootstrap, topic_name, "read_committed"),
              watermarks(bootstrap, topic_name, "read_uncommitted"),
              values(bootstrap, topic_name, "read_committed"),
              values(bootstrap, topic_name, "read_uncommitted", expected=4))
    assert before[0][1] == 5, "c1, its marker, a1, a2 and their marker are stable; 'open' is not"
    assert before[2] == [b"c1"]

    b.restart(graceful=False)
    after = (watermarks(bootstrap, topic_name, "read_committed"),
             watermarks(bootstrap, topic_name, "read_uncommitted"),
             values(bootstrap, topic_name, "read_committed"),
             values(bootstrap, topic_name, "read_uncommitted", expected=4))
    assert after == before

    # A new producer with the same id fences the old one: the open transaction is aborted by
    # the coordinator that reloaded it, and the LSO moves past its marker.
    txn_producer(bootstrap, txn_id)
    assert watermarks(bootstrap, topic_name, "read_committed")[1] == 7
    assert values(bootstrap, topic_name, "read_committed") == [b"c1"]


def test_compaction_removes_aborted_records_and_compacts_committed_ones(broker_factory, topic_name):
    """A compacted topic written by a transactional producer (keyed records, every other
    transaction aborted): below the active segment the cleaner (every 200 ms) removes every
    aborted record, even one whose key has an older committed value that must survive, and keeps
    only the latest committed value of each key (the cleaner's key map covers the segments below
    the active one, so a record superseded only there stays). read_committed consumers see the same values
    before and after the passes and after a SIGKILL restart."""
    from pathlib import Path
    b = broker_factory(args=["--set", "log.cleaner.backoff.ms=200"])
    bootstrap = b.bootstrap
    create_topic(bootstrap, topic_name, config={
        "cleanup.policy": "compact", "segment.bytes": "2048", "min.cleanable.dirty.ratio": "0.01",
        "delete.retention.ms": "0"})
    p = txn_producer(bootstrap)
    keys = [b"k%d" % i for i in range(5)]
    committed, aborted = {}, set()
    for t in range(30):
        p.begin_transaction()
        batch = [(keys[(t + r) % len(keys)], b"t%02d-r%d-" % (t, r) + b"x" * 60) for r in range(4)]
        for k, v in batch:
            p.produce(topic_name, key=k, value=v, partition=0)
        assert p.flush(CLIENT_TIMEOUT_S) == 0
        if t % 2:
            p.abort_transaction(CLIENT_TIMEOUT_S)
            aborted.update(v for _, v in batch)
        else:
            p.commit_transaction(CLIENT_TIMEOUT_S)
            committed.update(dict(batch))
    part_dir = Path(b.data_dir) / "logs" / f"{topic_name}-0"

    def read(isolation):
        c = Consumer({"bootstrap.servers": bootstrap, "group.id": "spate-e2e-unused",
                      "isolation.level": isolation, "enable.auto.commit": False})
        try:
            end = c.get_watermark_offsets(TopicPartition(topic_name, 0), timeout=CLIENT_TIMEOUT_S)[1]
            c.assign([TopicPartition(topic_name, 0, OFFSET_BEGINNING)])
            got, deadline = [], time.monotonic() + CLIENT_TIMEOUT_S
            while time.monotonic() < deadline:
                m = c.poll(0.5)
                if m is not None and not m.error():
                    got.append(m)
                position = c.position([TopicPartition(topic_name, 0)])[0].offset
                if position >= end:
                    return got
            raise AssertionError(f"{isolation}: position stayed below {end}")
        finally:
            c.close()

    def active_base():
        return max(int(f.name[:20]) for f in part_dir.glob("*.log"))

    def latest_committed(msgs):
        latest = {}
        for m in msgs:
            latest[m.key()] = m.value()
        return latest

    assert latest_committed(read("read_committed")) == committed
    deadline = time.monotonic() + 30
    while True:
        active = active_base()
        raw = read("read_uncommitted")
        below = [m for m in raw if m.offset() < active]
        stale = [m.value() for m in below if m.value() in aborted]
        superseded = [m.value() for m in below if m.value() != committed[m.key()]
                      and m.value() not in aborted
                      and any(o.key() == m.key() and m.offset() < o.offset() < active
                              and o.value() not in aborted for o in raw)]
        if not stale and not superseded:
            break
        assert time.monotonic() < deadline, (
            f"below the active segment (base {active}): {len(stale)} aborted records left, e.g. "
            f"{stale[:3]}; {len(superseded)} superseded committed records left, e.g. {superseded[:3]}")
        time.sleep(0.3)
    assert active > 0, "segment.bytes=2048 with ~12 KB written must have rolled"
    assert len(raw) < 120, f"only {120 - len(raw)} of 120 records were removed"
    after = read("read_committed")
    assert latest_committed(after) == committed
    assert not [m.value() for m in after if m.value() in aborted]
    b.restart(graceful=False)
    assert [(m.offset(), m.value()) for m in read("read_committed")] == [(m.offset(), m.value()) for m in after]


VERIFICATION = "transaction.partition.verification.enable"


def set_verification(bootstrap, value):
    """Sets (or, value None, deletes) the dynamic value on every broker, as `kafka-configs
    --alter --entity-type brokers --entity-name N` does (librdkafka refuses the cluster-wide
    resource, whose name is empty; the Rust test `read_committed.rs` sets that one); then
    waits until every node describes it."""
    a = AdminClient({"bootstrap.servers": bootstrap})
    op = (ConfigEntry(VERIFICATION, value, incremental_operation=AlterConfigOpType.SET) if value is not None
          else ConfigEntry(VERIFICATION, "", incremental_operation=AlterConfigOpType.DELETE))
    nodes = sorted(a.list_topics(timeout=CLIENT_TIMEOUT_S).brokers)
    for node in nodes:
        res = ConfigResource(ResourceType.BROKER, str(node), incremental_configs=[op])
        a.incremental_alter_configs([res])[res].result(timeout=CLIENT_TIMEOUT_S)
    for node in nodes:
        res = ConfigResource(ResourceType.BROKER, str(node))
        deadline = time.monotonic() + CLIENT_TIMEOUT_S
        while a.describe_configs([res])[res].result(timeout=CLIENT_TIMEOUT_S)[VERIFICATION].value != (value or "true"):
            assert time.monotonic() < deadline, f"node {node} never described {VERIFICATION}={value}"
            time.sleep(0.05)


def add_partitions_received(cluster):
    """AddPartitionsToTxn requests the cluster's brokers received: the producer's own and the
    partition leaders' verification questions (v4 verify_only) to the coordinator."""
    total = 0
    for b in cluster.nodes.values():
        _, _, body = b.http_get("/metrics")
        for line in body.splitlines():
            if line.startswith("spate_kafka_requests_total{") and 'api="AddPartitionsToTxn"' in line:
                total += float(line.rsplit(" ", 1)[1])
    return int(total)


def one_transaction(bootstrap, topic, partitions, group):
    """A transaction over every partition of `topic` with offsets sent, committed; then the
    AddPartitionsToTxn requests the producer sent, from librdkafka's statistics."""
    stats = []
    p = txn_producer(bootstrap, **{"statistics.interval.ms": 100, "stats_cb": stats.append})
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        p.begin_transaction()
        for part in range(partitions):
            p.produce(topic, value=f"v{part}".encode(), partition=part)
        p.send_offsets_to_transaction([TopicPartition(topic, 0, 3)], c.consumer_group_metadata(),
                                      CLIENT_TIMEOUT_S)
        p.commit_transaction(CLIENT_TIMEOUT_S)
        # Statistics emitted after the commit count every request it needed.
        seen = len(stats)
        deadline = time.monotonic() + CLIENT_TIMEOUT_S
        while len(stats) <= seen + 1 and time.monotonic() < deadline:
            p.poll(0.1)
        assert len(stats) > seen + 1, "no librdkafka statistics after the commit"
        brokers = json.loads(stats[-1])["brokers"].values()
        sent = sum(b.get("req", {}).get("AddPartitionsToTxn", 0) for b in brokers)
        assert sent >= 1, "librdkafka's statistics count no AddPartitionsToTxn"
        committed = c.committed([TopicPartition(topic, 0)], timeout=CLIENT_TIMEOUT_S)
        assert committed[0].offset == 3, "the offsets of the transaction were committed"
        return sent
    finally:
        c.close()


def test_verification_off_skips_the_leaders_questions_and_transactions_still_work(_session_cluster, topic_name):
    """`transaction.partition.verification.enable=false` (on every broker, with the admin client):
    the partition leaders stop asking the coordinator before a transaction's first write to
    each partition (KIP-890 part 1), so the brokers receive only the producer's own
    AddPartitionsToTxn; transactions still commit, with their offsets, and read_committed sees
    them. Deleted again, the questions come back."""
    cluster = _session_cluster
    bootstrap = cluster.bootstrap
    partitions = 6  # two led by each node: most are not on the coordinator's node
    create_topic(bootstrap, topic_name, partitions=partitions)
    group = f"g-{uuid.uuid4().hex[:8]}"

    before = add_partitions_received(cluster)
    sent = one_transaction(bootstrap, topic_name, partitions, group)
    asked = add_partitions_received(cluster) - before - sent
    assert asked >= 1, "with verification on, leaders on other nodes ask the coordinator"

    set_verification(bootstrap, "false")
    try:
        before = add_partitions_received(cluster)
        sent = one_transaction(bootstrap, topic_name, partitions, group)
        assert add_partitions_received(cluster) - before == sent, \
            "with verification off, the brokers receive only the producer's AddPartitionsToTxn"
    finally:
        set_verification(bootstrap, None)
    assert sorted(values(bootstrap, topic_name, "read_committed", partitions=range(partitions),
                         expected=2 * partitions)) == sorted([f"v{i}".encode() for i in range(partitions)] * 2)
