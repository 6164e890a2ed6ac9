"""kafka-python (pure-Python client, its own protocol code): produce/consume, admin, gzip."""

import time

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import TopicAlreadyExistsError, UnknownTopicOrPartitionError

from ckutil import consume, create_topic, replication_for, topic_names, admin as ck_admin


@pytest.fixture
def bootstrap(bootstrap_both_shapes):
    """Every test here runs against one node and against a 3-node cluster."""
    return bootstrap_both_shapes

T = 20


def kp_producer(bootstrap, **kw):
    return KafkaProducer(bootstrap_servers=bootstrap, request_timeout_ms=T * 1000, **kw)


def kp_read(bootstrap, topic, expected, partitions=(0,), timeout=T):
    c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                      request_timeout_ms=T * 1000, fetch_max_wait_ms=100)
    try:
        tps = [TopicPartition(topic, p) for p in partitions]
        c.assign(tps)
        c.seek_to_beginning(*tps)
        out = []
        deadline = time.monotonic() + timeout
        while len(out) < expected and time.monotonic() < deadline:
            for recs in c.poll(timeout_ms=500).values():
                out += recs
        assert len(out) == expected, f"read {len(out)} of {expected} records in {timeout}s"
        return out
    finally:
        c.close()


def test_kafka_python_roundtrip_keys_headers(bootstrap, topic_name):
    create_topic(bootstrap, topic_name)
    p = kp_producer(bootstrap, acks="all")
    ts0 = int(time.time() * 1000) - 60_000
    sent = [dict(key=b"k%d" % i if i % 3 else None, value=b"v%d" % i,
                 headers=[("idx", b"%d" % i), ("dup", b"a"), ("dup", b"b")], timestamp_ms=ts0 + i)
            for i in range(20)]
    metas = [p.send(topic_name, **s) for s in sent]
    p.flush(timeout=T)
    assert [m.get(timeout=T).offset for m in metas] == list(range(20))
    p.close(timeout=T)

    got = kp_read(bootstrap, topic_name, 20)
    assert [r.offset for r in got] == list(range(20))
    for s, r in zip(sent, got):
        assert (r.key, r.value, r.timestamp) == (s["key"], s["value"], s["timestamp_ms"])
        assert list(r.headers) == s["headers"]
    # A different client reads the same records.
    ck = consume(bootstrap, topic_name, expected=20)
    assert [(m.key(), m.value()) for m in ck] == [(s["key"], s["value"]) for s in sent]


def test_kafka_python_gzip(bootstrap, topic_name):
    create_topic(bootstrap, topic_name)
    p = kp_producer(bootstrap, compression_type="gzip", linger_ms=20)
    values = [(f"gzip {i} " + "x" * 500).encode() for i in range(200)]
    for v in values:
        p.send(topic_name, value=v)
    p.flush(timeout=T)
    p.close(timeout=T)
    assert [r.value for r in kp_read(bootstrap, topic_name, len(values))] == values
    assert [m.value() for m in consume(bootstrap, topic_name, expected=len(values))] == values


def test_kafka_python_admin_create_and_delete_topics(bootstrap, topic_name):
    a = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=T * 1000)
    try:
        a.create_topics({topic_name: {"num_partitions": 3, "replication_factor": replication_for(bootstrap),
                                      "configs": {"retention.ms": "3600000"}}})
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            desc = {t["name"]: t for t in a.describe_topics([topic_name])}
            if desc.get(topic_name, {}).get("error_code") == 0 and len(desc[topic_name]["partitions"]) == 3:
                break
            time.sleep(0.1)
        assert sorted(p["partition_index"] for p in desc[topic_name]["partitions"]) == [0, 1, 2]
        assert topic_name in a.list_topics()
        with pytest.raises(TopicAlreadyExistsError):
            a.create_topics({topic_name: {"num_partitions": 1, "replication_factor": replication_for(bootstrap)}})

        a.delete_topics([topic_name])
        deadline = time.monotonic() + 10
        while topic_name in topic_names(ck_admin(bootstrap)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert topic_name not in a.list_topics()
        with pytest.raises(UnknownTopicOrPartitionError):
            a.delete_topics([topic_name])
    finally:
        a.close()


def test_kafka_python_admin_partitions_configs_records_and_offsets(bootstrap, topic_name):
    from kafka.admin import ConfigResource, ConfigResourceType
    a = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=T * 1000)
    try:
        a.create_topics({topic_name: {"num_partitions": 1, "replication_factor": replication_for(bootstrap),
                                      "configs": {"retention.ms": "3600000"}}}, wait_for_metadata=True)
        a.create_partitions({topic_name: 3})
        a.wait_for_topics([topic_name])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            (desc,) = a.describe_topics([topic_name])
            if len(desc["partitions"]) == 3:
                break
            time.sleep(0.1)
        assert sorted(p["partition_index"] for p in desc["partitions"]) == [0, 1, 2]

        a.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic_name, configs={"retention.ms": "7200000"})])
        # As in Kafka, the node that answers AlterConfigs has applied the change when it answers,
        # but kafka-python may send DescribeConfigs to another node, which applies the committed
        # change a moment later: wait for it there (bounded), then assert.
        deadline = time.monotonic() + 10
        while True:
            cfg = a.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic_name)], config_filter="all")
            assert "topic" in cfg and topic_name in cfg["topic"], cfg
            value = cfg["topic"][topic_name]["retention.ms"]["value"]
            if value == "7200000" or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert value == "7200000"

        p = kp_producer(bootstrap)
        ts0 = int(time.time() * 1000) - 10_000
        for i in range(10):
            p.send(topic_name, value=b"%d" % i, partition=1, timestamp_ms=ts0 + i * 100)
        p.flush(timeout=T)
        p.close(timeout=T)
        tp = TopicPartition(topic_name, 1)
        a.delete_records({tp: 3})

        c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                          request_timeout_ms=T * 1000)
        try:
            assert c.beginning_offsets([tp]) == {tp: 3}
            assert c.end_offsets([tp]) == {tp: 10}
            found = c.offsets_for_times({tp: ts0 + 450})
            assert found[tp].offset == 5 and found[tp].timestamp == ts0 + 500
        finally:
            c.close()
    finally:
        a.close()
