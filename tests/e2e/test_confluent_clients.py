"""Produce/consume with confluent-kafka (librdkafka): record fidelity, sizes, codecs, acks,
partitions, idempotence."""

import os
import time

import pytest
from confluent_kafka import TIMESTAMP_CREATE_TIME, KafkaError

import kproto
from ckutil import consume, create_topic, leader_of, produce_all, producer


@pytest.fixture
def bootstrap(bootstrap_both_shapes):
    """Every test here runs against one node and against a 3-node cluster."""
    return bootstrap_both_shapes


def test_roundtrip_keys_values_headers_timestamps_null_and_empty(bootstrap, topic_name):
    create_topic(bootstrap, topic_name)
    ts0 = int(time.time() * 1000) - 3_600_000  # an hour ago: must come back as sent, not as "now"
    sent = [
        dict(key=b"k1", value=b"v1", timestamp=ts0,
             headers=[("h1", b"x"), ("h1", b"y"), ("empty", b""), ("null", None)]),
        dict(key=None, value=b"null key", timestamp=ts0 + 1),
        dict(key=b"tombstone", value=None, timestamp=ts0 + 2),
        dict(key=b"", value=b"", timestamp=ts0 + 3),
        dict(key=bytes(range(256)), value=bytes(range(255, -1, -1)) * 4, timestamp=ts0 + 4,
             headers=[("ünïcode-ключ", "värde".encode())]),
        dict(key=None, value=None, timestamp=ts0 + 5),
    ]
    p = producer(bootstrap)
    delivered = produce_all(p, topic_name, sent)
    assert [m.offset() for m in delivered] == list(range(len(sent)))

    got = consume(bootstrap, topic_name, expected=len(sent))
    assert [m.offset() for m in got] == list(range(len(sent)))
    for s, m in zip(sent, got):
        assert m.key() == s["key"], f"offset {m.offset()}"
        assert m.value() == s["value"], f"offset {m.offset()}"
        assert m.timestamp() == (TIMESTAMP_CREATE_TIME, s["timestamp"]), f"offset {m.offset()}"
        want_headers = [(k, v) for k, v in s.get("headers", [])] or None
        assert m.headers() == want_headers, f"offset {m.offset()}"

    # The client may blur null and empty; the stored records must not.
    with kproto.Conn(leader_of(bootstrap, topic_name)) as c:
        records = [r for b in kproto.fetch_all_batches(c, topic_name, 0) for r in b.records]
    assert [(r["key"], r["value"]) for r in records] == [(s["key"], s["value"]) for s in sent]
    assert [r["timestamp"] for r in records] == [s["timestamp"] for s in sent]


def test_one_mebibyte_message(bootstrap, topic_name):
    # Kafka's default message.max.bytes (1048588) is below a 1 MiB value plus batch overhead,
    # so the topic raises its limit, as an operator would.
    create_topic(bootstrap, topic_name, config={"max.message.bytes": str(4 * 1024 * 1024)})
    values = [os.urandom(1024 * 1024) for _ in range(3)]  # incompressible
    p = producer(bootstrap, **{"message.max.bytes": 8 * 1024 * 1024})
    produce_all(p, topic_name, [dict(key=b"big%d" % i, value=v) for i, v in enumerate(values)])
    got = consume(bootstrap, topic_name, expected=3, **{
        "fetch.max.bytes": 8 * 1024 * 1024, "max.partition.fetch.bytes": 8 * 1024 * 1024,
        "receive.message.max.bytes": 16 * 1024 * 1024})
    assert len(got) == 3
    for i, (v, m) in enumerate(zip(values, got)):
        assert m.key() == b"big%d" % i
        assert len(m.value()) == len(v) and m.value() == v


# librdkafka (rdkafka_feature.c) enables LZ4 only when the broker advertises FindCoordinator
# (key 10), a proxy for "Kafka >= 0.8.2"; otherwise it sends lz4 batches uncompressed. The lz4
# case checks that the stored batch really is lz4, so it fails if FindCoordinator disappears.
@pytest.mark.parametrize("codec", ["none", "gzip", "snappy", "lz4", "zstd"])
def test_compression_codec_roundtrip_and_stored_untouched(bootstrap, topic_name, codec):
    create_topic(bootstrap, topic_name)
    values = [(f"record {i} " + "compressible text " * 20).encode() for i in range(300)]
    p = producer(bootstrap, **{"compression.type": codec, "linger.ms": 50})
    produce_all(p, topic_name, [dict(key=str(i).encode(), value=v) for i, v in enumerate(values)])
    got = consume(bootstrap, topic_name, expected=len(values))
    assert [m.value() for m in got] == values
    assert [m.key() for m in got] == [str(i).encode() for i in range(len(values))]
    assert [m.offset() for m in got] == list(range(len(values)))

    with kproto.Conn(leader_of(bootstrap, topic_name)) as c:
        batches = kproto.fetch_all_batches(c, topic_name, 0)
    assert batches, "no batches fetched"
    assert {b.codec for b in batches} == {codec}, f"stored codecs {[b.codec for b in batches]}"
    assert all(b.crc_ok for b in batches), "a fetched batch has a bad CRC"
    assert sum(b.count for b in batches) == len(values)


def test_multi_partition_per_partition_ordering(bootstrap, topic_name):
    parts = 4
    per = 150
    create_topic(bootstrap, topic_name, partitions=parts)
    msgs = [dict(partition=i % parts, key=b"p%d" % (i % parts), value=b"%d:%d" % (i % parts, i // parts))
            for i in range(parts * per)]
    p = producer(bootstrap, **{"linger.ms": 20})
    delivered = produce_all(p, topic_name, msgs)
    for part in range(parts):
        offs = [m.offset() for m in delivered if m.partition() == part]
        assert offs == list(range(per)), f"partition {part} delivery offsets {offs[:10]}..."
    for part in range(parts):
        got = consume(bootstrap, topic_name, partitions=[part], expected=per)
        assert [m.value() for m in got] == [b"%d:%d" % (part, j) for j in range(per)], f"partition {part}"
        assert [m.offset() for m in got] == list(range(per))


@pytest.mark.parametrize("acks", ["0", "1", "all"])
def test_acks(bootstrap, topic_name, acks):
    create_topic(bootstrap, topic_name)
    n = 100
    p = producer(bootstrap, **{"acks": acks})
    # Two rounds through the same producer: after acks=0 (no responses) the connection must
    # still be in step, so the second round must be delivered too.
    first = produce_all(p, topic_name, [dict(value=b"a%d" % i) for i in range(n // 2)])
    second = produce_all(p, topic_name, [dict(value=b"b%d" % i) for i in range(n // 2)])
    if acks != "0":
        assert [m.offset() for m in first + second] == list(range(n))
    got = consume(bootstrap, topic_name, expected=n)
    assert [m.value() for m in got] == [b"a%d" % i for i in range(n // 2)] + [b"b%d" % i for i in range(n // 2)]


def test_idempotent_producer_no_duplicates_and_sequences_stored(bootstrap, topic_name):
    create_topic(bootstrap, topic_name, partitions=2)
    n = 3000
    p = producer(bootstrap, **{"enable.idempotence": True, "linger.ms": 2, "batch.num.messages": 50})
    delivered = produce_all(p, topic_name, [dict(partition=i % 2, value=b"%d" % i) for i in range(n)])
    for part in (0, 1):
        assert [m.offset() for m in delivered if m.partition() == part] == list(range(n // 2))
        got = consume(bootstrap, topic_name, partitions=[part], expected=n // 2)
        assert [m.value() for m in got] == [b"%d" % i for i in range(part, n, 2)]

        with kproto.Conn(leader_of(bootstrap, topic_name, part)) as c:
            batches = kproto.fetch_all_batches(c, topic_name, part)
        pids = {(b.producer_id, b.producer_epoch) for b in batches}
        assert len(pids) == 1 and next(iter(pids))[0] >= 0, f"producer ids in batches: {pids}"
        seq = 0
        for b in batches:
            assert b.base_sequence == seq, f"partition {part} batch at {b.base_offset}: seq {b.base_sequence} != {seq}"
            seq += b.count


def test_message_larger_than_message_max_bytes_is_rejected(broker_factory, topic_name):
    b = broker_factory(args=["--set", "message.max.bytes=100000"])
    create_topic(b.bootstrap, topic_name)
    p = producer(b.bootstrap, **{"message.max.bytes": 1_000_000})
    [(err, _)] = produce_all(p, topic_name, [dict(value=os.urandom(200_000))], check=False)
    assert err is not None and err.code() == KafkaError.MSG_SIZE_TOO_LARGE, f"delivery error {err}"

    with kproto.Conn(b.bootstrap) as c:
        err, _ = kproto.produce(c, topic_name, 0, kproto.record_batch([os.urandom(150_000)]))
        assert err == kproto.MESSAGE_TOO_LARGE
        # The connection and the partition keep working.
        err, off = kproto.produce(c, topic_name, 0, kproto.record_batch([b"small"]))
        assert (err, off) == (0, 0)
    ok = produce_all(p, topic_name, [dict(value=os.urandom(50_000))])
    assert ok[0].offset() == 1
    got = consume(b.bootstrap, topic_name, expected=2)
    assert [m.offset() for m in got] == [0, 1] and got[0].value() == b"small"


@pytest.mark.parametrize("reset,expected", [("earliest", [b"old0", b"old1", b"old2"]), ("latest", [b"new"])])
def test_consumer_offset_out_of_range_resets(bootstrap, topic_name, reset, expected):
    from confluent_kafka import TopicPartition
    from ckutil import consumer
    create_topic(bootstrap, topic_name)
    produce_all(producer(bootstrap), topic_name, [dict(value=b"old%d" % i) for i in range(3)])
    c = consumer(bootstrap, **{"auto.offset.reset": reset, "enable.partition.eof": False})
    try:
        c.assign([TopicPartition(topic_name, 0, 50)])  # past the end: OFFSET_OUT_OF_RANGE, then reset
        got = []
        deadline = time.monotonic() + 15
        sent_new = False
        while time.monotonic() < deadline and len(got) < len(expected):
            m = c.poll(0.2)
            if m is not None and not m.error():
                got.append(m.value())
            if not sent_new and time.monotonic() > deadline - 13:
                produce_all(producer(bootstrap), topic_name, [dict(value=b"new")])
                sent_new = True
        assert got[:len(expected)] == expected
    finally:
        c.close()


def test_concurrent_auto_create_of_one_topic(bootstrap, topic_name):
    import threading
    results, errors = [], []

    def run(i):
        try:
            results.extend(produce_all(producer(bootstrap), topic_name, [dict(value=b"%d" % i)]))
        except Exception as e:
            errors.append(repr(e))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    assert sorted(m.offset() for m in results) == list(range(6))
    got = consume(bootstrap, topic_name, expected=6)
    assert sorted(m.value() for m in got) == [b"%d" % i for i in range(6)]
