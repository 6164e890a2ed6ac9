"""Topic configs that change what the leader stores, seen through confluent-kafka (librdkafka):
`message.timestamp.type=LogAppendTime` (KIP-32), topic `compression.type` (recompression on
append) and `max.compaction.lag.ms` (KIP-354)."""

import time
from pathlib import Path

import pytest
from confluent_kafka import TIMESTAMP_CREATE_TIME, TIMESTAMP_LOG_APPEND_TIME, TopicPartition
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType

import kproto
from ckutil import consume, consumer, create_topic, produce_all, producer

T = 20  # seconds for any admin future


def now_ms():
    return int(time.time() * 1000)


def describe(a, topic):
    res = ConfigResource(ResourceType.TOPIC, topic)
    return a.describe_configs([res], request_timeout=T)[res].result(timeout=T)


def set_topic_config(a, topic, name, value):
    res = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=[
        ConfigEntry(name, value, incremental_operation=AlterConfigOpType.SET)])
    a.incremental_alter_configs([res], request_timeout=T)[res].result(timeout=T)


# ---- message.timestamp.type=LogAppendTime ----------------------------------------------------


def test_log_append_time_stamps_records_with_the_broker_clock(bootstrap, topic_name):
    a = create_topic(bootstrap, topic_name, config={"message.timestamp.type": "LogAppendTime"})
    assert describe(a, topic_name)["message.timestamp.type"].value == "LogAppendTime"
    # CreateTime far in the past: a broker that kept it would fail every check below.
    create_time = now_ms() - 10 * 24 * 3600 * 1000
    before = now_ms()
    delivered = produce_all(producer(bootstrap, **{"linger.ms": 50}), topic_name,
                            [dict(value=b"v%d" % i, timestamp=create_time + i) for i in range(30)])
    after = now_ms()

    # The delivery report carries the Produce response's log_append_time_ms.
    stamps = {}
    for m in delivered:
        kind, t = m.timestamp()
        assert kind == TIMESTAMP_LOG_APPEND_TIME, f"offset {m.offset()}: timestamp type {kind}"
        assert before <= t <= after, f"offset {m.offset()}: append time {t} outside [{before}, {after}]"
        stamps[m.offset()] = t

    # Every record of a batch reads back with the batch's append time.
    got = consume(bootstrap, topic_name, expected=30)
    assert [m.value() for m in got] == [b"v%d" % i for i in range(30)]
    for m in got:
        assert m.timestamp() == (TIMESTAMP_LOG_APPEND_TIME, stamps[m.offset()]), f"offset {m.offset()}"

    c = consumer(bootstrap)
    try:
        first, last = min(stamps.values()), max(stamps.values())
        res = c.offsets_for_times([TopicPartition(topic_name, 0, create_time)], timeout=T)
        assert res[0].offset == 0, "every append time is after the producer's CreateTime"
        res = c.offsets_for_times([TopicPartition(topic_name, 0, first)], timeout=T)
        assert res[0].offset == 0
        res = c.offsets_for_times([TopicPartition(topic_name, 0, last)], timeout=T)
        assert res[0].offset == min(o for o, t in stamps.items() if t == last)
        res = c.offsets_for_times([TopicPartition(topic_name, 0, last + 1)], timeout=T)
        assert res[0].offset == -1
    finally:
        c.close()


def test_timestamp_type_can_be_altered_and_applies_to_new_appends(bootstrap, topic_name):
    a = create_topic(bootstrap, topic_name)
    create_time = 1_600_000_000_000
    p = producer(bootstrap)

    def send(i):
        before = now_ms()
        (m,) = produce_all(p, topic_name, [dict(value=b"%d" % i, timestamp=create_time + i)])
        return m, before, now_ms()

    m0, _, _ = send(0)
    assert m0.timestamp() == (TIMESTAMP_CREATE_TIME, create_time)
    set_topic_config(a, topic_name, "message.timestamp.type", "LogAppendTime")
    m1, before, after = send(1)
    kind, t1 = m1.timestamp()
    assert kind == TIMESTAMP_LOG_APPEND_TIME and before <= t1 <= after, m1.timestamp()
    set_topic_config(a, topic_name, "message.timestamp.type", "CreateTime")
    m2, _, _ = send(2)
    assert m2.timestamp() == (TIMESTAMP_CREATE_TIME, create_time + 2)

    got = consume(bootstrap, topic_name, expected=3)
    assert [m.timestamp() for m in got] == [
        (TIMESTAMP_CREATE_TIME, create_time), (TIMESTAMP_LOG_APPEND_TIME, t1), (TIMESTAMP_CREATE_TIME, create_time + 2)]


# ---- compression.type --------------------------------------------------------------------------


def segment_batches(broker, topic, partition=0):
    """The batches in the partition's first segment file, read from the broker's data dir
    (Kafka's layout: `<topic>-<partition>/00000000000000000000.log`)."""
    path = Path(broker.data_dir) / "logs" / f"{topic}-{partition}" / ("0" * 20 + ".log")
    data = path.read_bytes()
    return data, kproto.parse_batches(data)


def records_of(sent_codec, n, start=0):
    return [dict(key=b"k%d" % i, value=(b"record %d of %s " % (i, sent_codec.encode())) * 20,
                 headers=[("h", b"%d" % i)]) for i in range(start, start + n)]


@pytest.mark.parametrize("sent_codec", ["none", "lz4"])
def test_gzip_topic_stores_what_producers_send_as_gzip(broker, bootstrap, topic_name, sent_codec):
    a = create_topic(bootstrap, topic_name, config={"compression.type": "gzip"})
    assert describe(a, topic_name)["compression.type"].value == "gzip"
    sent = records_of(sent_codec, 300)
    p = producer(bootstrap, **{"compression.type": sent_codec, "linger.ms": 50})
    produce_all(p, topic_name, sent)

    got = consume(bootstrap, topic_name, expected=len(sent))
    assert [m.offset() for m in got] == list(range(len(sent)))
    assert [(m.key(), m.value(), m.headers()) for m in got] == [
        (s["key"], s["value"], s["headers"]) for s in sent]

    with kproto.Conn(bootstrap) as c:
        fetched = kproto.fetch_all_batches(c, topic_name, 0)
    assert {b.codec for b in fetched} == {"gzip"}, [b.codec for b in fetched]
    assert all(b.crc_ok for b in fetched)
    assert sum(b.count for b in fetched) == len(sent)

    # On disk: the same gzip batches, much smaller than the records they hold.
    data, on_disk = segment_batches(broker, topic_name)
    assert {b.codec for b in on_disk} == {"gzip"}
    assert all(b.crc_ok for b in on_disk)
    payload = sum(len(s["key"]) + len(s["value"]) for s in sent)
    assert len(data) < payload / 4, f"segment {len(data)} bytes for {payload} bytes of keys and values"


def test_uncompressed_topic_stores_zstd_batches_uncompressed(broker, bootstrap, topic_name):
    create_topic(bootstrap, topic_name, config={"compression.type": "uncompressed"})
    sent = records_of("zstd", 100)
    produce_all(producer(bootstrap, **{"compression.type": "zstd", "linger.ms": 50}), topic_name, sent)
    _, on_disk = segment_batches(broker, topic_name)
    assert {b.codec for b in on_disk} == {"none"}
    stored = [r for b in on_disk for r in b.records]
    assert [(r["offset"], r["key"], r["value"]) for r in stored] == [
        (i, s["key"], s["value"]) for i, s in enumerate(sent)]
    got = consume(bootstrap, topic_name, expected=len(sent))
    assert [m.value() for m in got] == [s["value"] for s in sent]


def test_compression_type_can_be_altered_back_to_producer(broker, bootstrap, topic_name):
    a = create_topic(bootstrap, topic_name, config={"compression.type": "zstd"})
    p = producer(bootstrap, **{"compression.type": "snappy", "linger.ms": 50})
    produce_all(p, topic_name, records_of("snappy", 50))
    set_topic_config(a, topic_name, "compression.type", "producer")
    assert describe(a, topic_name)["compression.type"].value == "producer"
    produce_all(p, topic_name, records_of("snappy", 50, start=50))
    _, on_disk = segment_batches(broker, topic_name)
    codecs = [(b.base_offset, b.codec) for b in on_disk]
    assert {c for o, c in codecs if o < 50} == {"zstd"}, codecs
    assert {c for o, c in codecs if o >= 50} == {"snappy"}, codecs
    got = consume(bootstrap, topic_name, expected=100)
    assert [m.key() for m in got] == [b"k%d" % i for i in range(100)]


def test_log_append_time_and_recompression_together(bootstrap, topic_name):
    create_topic(bootstrap, topic_name, config={"compression.type": "lz4", "message.timestamp.type": "LogAppendTime"})
    before = now_ms()
    delivered = produce_all(producer(bootstrap, **{"compression.type": "gzip", "linger.ms": 50}), topic_name,
                            [dict(value=b"v%d" % i, timestamp=1) for i in range(20)])
    after = now_ms()
    stamps = {m.offset(): m.timestamp() for m in delivered}
    assert all(k == TIMESTAMP_LOG_APPEND_TIME and before <= t <= after for k, t in stamps.values()), stamps
    got = consume(bootstrap, topic_name, expected=20)
    assert [(m.value(), m.timestamp()) for m in got] == [(b"v%d" % i, stamps[i]) for i in range(20)]
    with kproto.Conn(bootstrap) as c:
        fetched = kproto.fetch_all_batches(c, topic_name, 0)
    assert {b.codec for b in fetched} == {"lz4"}
    assert all(b.attributes & 8 for b in fetched), "LogAppendTime attribute bit"


# ---- max.compaction.lag.ms ---------------------------------------------------------------------


def test_max_compaction_lag_is_accepted_described_and_validated(bootstrap, topic_name):
    a = create_topic(bootstrap, topic_name, config={"cleanup.policy": "compact", "max.compaction.lag.ms": "60000"})
    entries = describe(a, topic_name)
    assert entries["max.compaction.lag.ms"].value == "60000"
    other = create_topic(bootstrap, topic_name + "-default")
    assert describe(other, topic_name + "-default")["max.compaction.lag.ms"].value == str(2**63 - 1)
    with kproto.Conn(bootstrap) as c:
        res = kproto.create_topics(c, [
            (topic_name + "-zero", 1, 1, {"max.compaction.lag.ms": "0"}),
            (topic_name + "-below-min", 1, 1, {"min.compaction.lag.ms": "5000", "max.compaction.lag.ms": "4000"}),
        ])
    assert {n: e for n, (e, _) in res.items()} == {topic_name + "-zero": 40, topic_name + "-below-min": 40}, res


def compaction_passes(broker, topic):
    return sum(1 for line in broker.stderr_text().splitlines()
               if "compacted log" in line and f"{topic}-0" in line)


def wait_for(cond, what, timeout=15):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.1)


def test_max_compaction_lag_cleans_a_log_below_its_dirty_ratio(broker_factory, topic_name):
    """KIP-354: the active segment rolls at max.compaction.lag.ms, and the cleaner compacts a log
    whose dirty part holds a record older than that even though its dirty ratio (tiny here) is
    below min.cleanable.dirty.ratio."""
    b = broker_factory(args=["--set", "log.cleaner.backoff.ms=200"])
    lag_ms = 1500
    create_topic(b.bootstrap, topic_name, config={
        "cleanup.policy": "compact", "max.compaction.lag.ms": str(lag_ms), "min.cleanable.dirty.ratio": "0.9"})
    p = producer(b.bootstrap, **{"linger.ms": 0})
    big = b"v" * 5000

    # Phase 1: 20 large distinct keys; an append after max.compaction.lag.ms rolls them out of the
    # active segment, and the first pass (everything dirty) cleans them.
    produce_all(p, topic_name, [dict(key=b"k%02d" % i, value=big) for i in range(20)])
    time.sleep(lag_ms / 1000 + 0.2)
    produce_all(p, topic_name, [dict(key=b"x", value=b"roll")])
    wait_for(lambda: compaction_passes(b, topic_name) >= 1, "the first compaction pass")

    # Phase 2: one small record superseding k00. Once rolled, the dirty part is ~0.2% of the
    # log: only the max compaction lag can make the cleaner run.
    produce_all(p, topic_name, [dict(key=b"k00", value=b"new")])
    time.sleep(lag_ms / 1000 + 0.2)
    produce_all(p, topic_name, [dict(key=b"y", value=b"roll")])
    wait_for(lambda: compaction_passes(b, topic_name) >= 2, "a compaction pass forced by max.compaction.lag.ms")
    got = consume(b.bootstrap, topic_name)
    k00 = [(m.offset(), m.value()) for m in got if m.key() == b"k00"]
    assert k00 == [(21, b"new")], f"the superseded k00 at offset 0 must be gone: {k00}"
    assert {m.key() for m in got} == {b"k%02d" % i for i in range(20)} | {b"x", b"y"}
