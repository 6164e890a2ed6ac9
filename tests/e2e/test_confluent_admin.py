"""AdminClient operations, offsets and topic auto-creation through confluent-kafka (librdkafka)."""

import time

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import (AlterConfigOpType, ConfigEntry, ConfigResource, ConfigSource, NewPartitions,
                                   NewTopic, OffsetSpec, ResourceType)

import kproto
from ckutil import admin, consume, consumer, create_topic, produce_all, producer, topic_names, wait_topic

T = 20  # seconds for any admin future


def error_code(future):
    """The KafkaError code a future fails with (0 when it succeeds)."""
    try:
        future.result(timeout=T)
        return 0
    except KafkaException as e:
        return e.args[0].code()


def describe_topic_configs(a, topic):
    res = ConfigResource(ResourceType.TOPIC, topic)
    return a.describe_configs([res], request_timeout=T)[res].result(timeout=T)


# ---- CreateTopics ---------------------------------------------------------------------------


def test_create_topic_with_configs_is_described_back(bootstrap, topic_name):
    cfg = {"retention.ms": "86400000", "segment.bytes": "1048576", "cleanup.policy": "delete"}
    a = create_topic(bootstrap, topic_name, partitions=3, config=cfg)
    t = wait_topic(a, topic_name, 3)
    assert sorted(t.partitions) == [0, 1, 2]
    assert all(p.leader == 1 and p.replicas == [1] and p.isrs == [1] for p in t.partitions.values())
    entries = describe_topic_configs(a, topic_name)
    for k, v in cfg.items():
        assert k in entries, f"{k} missing from DescribeConfigs: {sorted(entries)}"
        assert entries[k].value == v, f"{k}={entries[k].value}, created with {v}"
        assert entries[k].source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value, f"{k} source {entries[k].source}"


def test_describe_topic_configs_includes_defaults(bootstrap, topic_name):
    a = create_topic(bootstrap, topic_name)
    entries = describe_topic_configs(a, topic_name)
    # Kafka answers with every topic config, the unset ones marked as defaults.
    for k in ("retention.ms", "segment.bytes", "max.message.bytes", "cleanup.policy"):
        assert k in entries, f"{k} missing from DescribeConfigs of a topic without overrides: {sorted(entries)}"
        assert entries[k].source != ConfigSource.DYNAMIC_TOPIC_CONFIG.value, f"{k} reported as a topic override"


def test_describe_configs_unknown_topic(bootstrap):
    a = admin(bootstrap)
    res = ConfigResource(ResourceType.TOPIC, "no-such-topic-for-describe")
    code = error_code(a.describe_configs([res], request_timeout=T)[res])
    assert code == KafkaError.UNKNOWN_TOPIC_OR_PART
    assert "no-such-topic-for-describe" not in topic_names(a)


def test_create_topics_validate_only_creates_nothing(bootstrap, topic_name):
    a = admin(bootstrap)
    fs = a.create_topics([NewTopic(topic_name, num_partitions=2, replication_factor=1)],
                         validate_only=True, request_timeout=T)
    assert error_code(fs[topic_name]) == 0
    time.sleep(0.5)
    assert topic_name not in topic_names(a)
    # And a real create afterwards is not "already exists".
    fs = a.create_topics([NewTopic(topic_name, num_partitions=2, replication_factor=1)], request_timeout=T)
    assert error_code(fs[topic_name]) == 0
    wait_topic(a, topic_name, 2)


@pytest.mark.parametrize("name", ["bad/name", "with space", "..", ".", "a" * 250, "ümlaut"],
                         ids=["slash", "space", "dotdot", "dot", "250-chars", "non-ascii"])
def test_create_topic_invalid_name(bootstrap, name):
    a = admin(bootstrap)
    fs = a.create_topics([NewTopic(name, num_partitions=1, replication_factor=1)], request_timeout=T)
    assert error_code(fs[name]) == KafkaError.TOPIC_EXCEPTION  # INVALID_TOPIC_EXCEPTION (17)
    assert name not in topic_names(a)


@pytest.mark.parametrize("partitions", [-5, 0])
def test_create_topic_negative_or_zero_partitions(bootstrap, topic_name, partitions):
    # librdkafka refuses such counts itself, so the request is written by hand.
    # (-1 is not tested here: since KIP-464 it means "the broker's default".)
    with kproto.Conn(bootstrap) as c:
        res = kproto.create_topics(c, [(topic_name, partitions, 1, {})])
    assert res[topic_name][0] == kproto.INVALID_PARTITIONS, f"CreateTopics(num_partitions={partitions}) -> {res}"
    assert topic_name not in topic_names(admin(bootstrap))


def test_create_topic_default_partitions_and_replication(bootstrap, topic_name):
    with kproto.Conn(bootstrap) as c:
        res = kproto.create_topics(c, [(topic_name, -1, -1, {})])
    assert res[topic_name][0] == 0, res
    wait_topic(admin(bootstrap), topic_name, 1)  # num.partitions defaults to 1


def test_create_topic_replication_factor_above_broker_count(bootstrap, topic_name):
    with kproto.Conn(bootstrap) as c:
        res = kproto.create_topics(c, [(topic_name, 1, 3, {})])
    assert res[topic_name][0] == 38, f"expected INVALID_REPLICATION_FACTOR (38) on a 1-node cluster: {res}"
    assert topic_name not in topic_names(admin(bootstrap))


def test_create_topic_already_exists(bootstrap, topic_name):
    a = create_topic(bootstrap, topic_name, partitions=2)
    fs = a.create_topics([NewTopic(topic_name, num_partitions=5, replication_factor=1)], request_timeout=T)
    assert error_code(fs[topic_name]) == KafkaError.TOPIC_ALREADY_EXISTS
    wait_topic(a, topic_name, 2)  # unchanged


# ---- DeleteTopics ---------------------------------------------------------------------------


def test_delete_topic_then_recreate_is_empty(bootstrap, topic_name):
    a = create_topic(bootstrap, topic_name)
    produce_all(producer(bootstrap), topic_name, [dict(value=b"old%d" % i) for i in range(5)])
    assert error_code(a.delete_topics([topic_name], operation_timeout=10, request_timeout=T)[topic_name]) == 0
    deadline = time.monotonic() + 10
    while topic_name in topic_names(a) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert topic_name not in topic_names(a)
    assert error_code(a.delete_topics([topic_name], request_timeout=T)[topic_name]) == KafkaError.UNKNOWN_TOPIC_OR_PART

    create_topic(bootstrap, topic_name)
    delivered = produce_all(producer(bootstrap), topic_name, [dict(value=b"new")])
    assert delivered[0].offset() == 0, "a re-created topic must start empty"
    got = consume(bootstrap, topic_name, expected=1)
    assert [m.value() for m in got] == [b"new"]


# ---- CreatePartitions -----------------------------------------------------------------------


def test_create_partitions(bootstrap, topic_name):
    a = create_topic(bootstrap, topic_name, partitions=1)
    fs = a.create_partitions([NewPartitions(topic_name, 3)], request_timeout=T)
    assert error_code(fs[topic_name]) == 0
    wait_topic(a, topic_name, 3)
    delivered = produce_all(producer(bootstrap), topic_name, [dict(value=b"p2", partition=2)])
    assert (delivered[0].partition(), delivered[0].offset()) == (2, 0)

    fs = a.create_partitions([NewPartitions(topic_name, 2)], request_timeout=T)
    assert error_code(fs[topic_name]) == KafkaError.INVALID_PARTITIONS  # cannot shrink
    fs = a.create_partitions([NewPartitions(topic_name, 3)], request_timeout=T)
    assert error_code(fs[topic_name]) == KafkaError.INVALID_PARTITIONS  # no change is an error too
    fs = a.create_partitions([NewPartitions("no-such-topic-for-partitions", 2)], request_timeout=T)
    assert error_code(fs["no-such-topic-for-partitions"]) == KafkaError.UNKNOWN_TOPIC_OR_PART
    wait_topic(a, topic_name, 3)


# ---- AlterConfigs / IncrementalAlterConfigs -------------------------------------------------


def test_alter_configs_replaces_the_whole_set(bootstrap, topic_name):
    a = create_topic(bootstrap, topic_name, config={"segment.bytes": "1048576"})
    res = ConfigResource(ResourceType.TOPIC, topic_name, set_config={"retention.ms": "1234567"})
    assert error_code(a.alter_configs([res], request_timeout=T)[res]) == 0
    entries = describe_topic_configs(a, topic_name)
    assert entries["retention.ms"].value == "1234567"
    assert entries["retention.ms"].source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value
    # Legacy AlterConfigs is not incremental: the earlier override is gone.
    assert entries["segment.bytes"].source != ConfigSource.DYNAMIC_TOPIC_CONFIG.value, (
        f"segment.bytes still an override ({entries['segment.bytes'].value}) after a non-incremental AlterConfigs")


def test_incremental_alter_configs_set_and_delete(bootstrap, topic_name):
    a = create_topic(bootstrap, topic_name, config={"segment.bytes": "1048576"})

    def alter(*entries):
        res = ConfigResource(ResourceType.TOPIC, topic_name, incremental_configs=list(entries))
        return error_code(a.incremental_alter_configs([res], request_timeout=T)[res])

    assert alter(ConfigEntry("retention.ms", "7654321", incremental_operation=AlterConfigOpType.SET)) == 0
    entries = describe_topic_configs(a, topic_name)
    assert entries["retention.ms"].value == "7654321"
    assert entries["segment.bytes"].value == "1048576", "incremental SET must keep other overrides"

    assert alter(ConfigEntry("retention.ms", None, incremental_operation=AlterConfigOpType.DELETE)) == 0
    entries = describe_topic_configs(a, topic_name)
    assert entries["retention.ms"].source != ConfigSource.DYNAMIC_TOPIC_CONFIG.value
    assert entries["segment.bytes"].value == "1048576"

    assert alter(ConfigEntry("no.such.config", "1", incremental_operation=AlterConfigOpType.SET)) == \
        KafkaError.INVALID_CONFIG


# ---- DescribeCluster ------------------------------------------------------------------------


def test_describe_cluster(broker):
    a = admin(broker.bootstrap)
    d = a.describe_cluster(request_timeout=T).result(timeout=T)
    assert d.cluster_id, "empty cluster id"
    assert [(n.id, n.host, n.port) for n in d.nodes] == [(1, "127.0.0.1", broker.kafka_port)]
    assert d.controller is not None and d.controller.id == 1
    md = a.list_topics(timeout=T)
    assert md.cluster_id == d.cluster_id
    assert md.controller_id == 1
    assert {(b.id, b.host, b.port) for b in md.brokers.values()} == {(1, "127.0.0.1", broker.kafka_port)}


# ---- ListOffsets / offsets_for_times / DeleteRecords ----------------------------------------


def produce_timed(bootstrap, topic, n, t0):
    return produce_all(producer(bootstrap), topic, [dict(value=b"%d" % i, timestamp=t0 + i * 1000) for i in range(n)])


def test_list_offsets_earliest_latest_and_by_timestamp(bootstrap, topic_name):
    a = create_topic(bootstrap, topic_name)
    tp = TopicPartition(topic_name, 0)

    def lo(spec):
        return a.list_offsets({tp: spec}, request_timeout=T)[tp].result(timeout=T).offset

    assert (lo(OffsetSpec.earliest()), lo(OffsetSpec.latest())) == (0, 0), "empty partition"
    assert lo(OffsetSpec.for_timestamp(0)) == -1, "no record at all: offset -1"

    t0 = int(time.time() * 1000) - 100_000
    produce_timed(bootstrap, topic_name, 10, t0)
    assert lo(OffsetSpec.earliest()) == 0
    assert lo(OffsetSpec.latest()) == 10
    assert lo(OffsetSpec.for_timestamp(t0 - 5)) == 0
    assert lo(OffsetSpec.for_timestamp(t0 + 3000)) == 3      # exact hit
    assert lo(OffsetSpec.for_timestamp(t0 + 2500)) == 3      # first record with timestamp >= ts
    assert lo(OffsetSpec.for_timestamp(t0 + 9000)) == 9
    assert lo(OffsetSpec.for_timestamp(t0 + 9001)) == -1     # past the newest record
    info = a.list_offsets({tp: OffsetSpec.for_timestamp(t0 + 4500)}, request_timeout=T)[tp].result(timeout=T)
    assert info.timestamp == t0 + 5000


def test_consumer_offsets_for_times_and_watermarks(bootstrap, topic_name):
    create_topic(bootstrap, topic_name, partitions=2)
    t0 = int(time.time() * 1000) - 100_000
    produce_all(producer(bootstrap), topic_name,
                [dict(value=b"%d" % i, partition=i % 2, timestamp=t0 + i * 1000) for i in range(10)])
    c = consumer(bootstrap)
    try:
        res = c.offsets_for_times([TopicPartition(topic_name, 0, t0 + 3000), TopicPartition(topic_name, 1, t0 + 3000)],
                                  timeout=T)
        # partition 0 holds t0+0,2000,4000,...: first >= t0+3000 is t0+4000 at offset 2;
        # partition 1 holds t0+1000,3000,...: exact hit t0+3000 at offset 1.
        assert [(r.partition, r.offset, r.error) for r in res] == [(0, 2, None), (1, 1, None)]
        res = c.offsets_for_times([TopicPartition(topic_name, 0, t0 + 10**6)], timeout=T)
        assert res[0].offset == -1
        assert c.get_watermark_offsets(TopicPartition(topic_name, 0), timeout=T) == (0, 5)
        assert c.get_watermark_offsets(TopicPartition(topic_name, 1), timeout=T) == (0, 5)
    finally:
        c.close()


def test_delete_records(bootstrap, topic_name):
    a = create_topic(bootstrap, topic_name)
    produce_all(producer(bootstrap), topic_name, [dict(value=b"%d" % i) for i in range(10)])
    tp = TopicPartition(topic_name, 0, 4)
    low = a.delete_records([tp], request_timeout=T)[tp].result(timeout=T).low_watermark
    assert low == 4

    tp0 = TopicPartition(topic_name, 0)
    assert a.list_offsets({tp0: OffsetSpec.earliest()}, request_timeout=T)[tp0].result(timeout=T).offset == 4
    assert a.list_offsets({tp0: OffsetSpec.latest()}, request_timeout=T)[tp0].result(timeout=T).offset == 10
    got = consume(bootstrap, topic_name, expected=6)
    assert [(m.offset(), m.value()) for m in got] == [(i, b"%d" % i) for i in range(4, 10)]
    with kproto.Conn(bootstrap) as c:
        assert kproto.fetch(c, topic_name, 0, 2)["error"] == 1  # OFFSET_OUT_OF_RANGE below the log start

    beyond = TopicPartition(topic_name, 0, 11)
    assert error_code(a.delete_records([beyond], request_timeout=T)[beyond]) == KafkaError.OFFSET_OUT_OF_RANGE
    everything = TopicPartition(topic_name, 0, -1)  # -1: up to the high watermark
    assert a.delete_records([everything], request_timeout=T)[everything].result(timeout=T).low_watermark == 10
    assert a.list_offsets({tp0: OffsetSpec.earliest()}, request_timeout=T)[tp0].result(timeout=T).offset == 10


# ---- auto-create ----------------------------------------------------------------------------


def test_auto_create_on_produce(bootstrap, topic_name):
    a = admin(bootstrap)
    assert topic_name not in topic_names(a)
    delivered = produce_all(producer(bootstrap), topic_name, [dict(value=b"hello")])
    assert delivered[0].offset() == 0
    t = wait_topic(a, topic_name, 1)  # num.partitions defaults to 1
    assert t.partitions[0].leader == 1
    assert [m.value() for m in consume(bootstrap, topic_name, expected=1)] == [b"hello"]


def test_auto_create_disabled(broker_factory, topic_name):
    b = broker_factory(args=["--set", "auto.create.topics.enable=false"])
    p = producer(b.bootstrap, **{"topic.metadata.propagation.max.ms": 1000, "message.timeout.ms": 8000})
    [(err, _)] = produce_all(p, topic_name, [dict(value=b"nowhere")], check=False)
    assert err is not None and err.code() in (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC), \
        f"delivery error {err}"
    a = admin(b.bootstrap)
    md = a.list_topics(topic=topic_name, timeout=T)  # sent with allow_auto_topic_creation=true
    assert md.topics[topic_name].error is not None
    assert md.topics[topic_name].error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART
    assert topic_name not in topic_names(a)
    # Explicit creation still works (a new producer: librdkafka caches the topic as unknown).
    create_topic(b.bootstrap, topic_name)
    assert produce_all(producer(b.bootstrap), topic_name, [dict(value=b"now")])[0].offset() == 0


def test_longest_valid_topic_name_works_across_restart(broker_factory, topic_name):
    name = (topic_name + "-" + "x" * 249)[:249]
    b = broker_factory()
    create_topic(b.bootstrap, name)
    produce_all(producer(b.bootstrap), name, [dict(value=b"long name")])
    b.restart()
    assert [m.value() for m in consume(b.bootstrap, name, expected=1)] == [b"long name"]


def test_topic_names_colliding_on_dot_and_underscore(bootstrap, topic_name):
    # Kafka refuses "a.b" when "a_b" exists (their metric names would collide).
    base = topic_name.replace(".", "").replace("_", "")
    a = create_topic(bootstrap, base + "_x")
    fs = a.create_topics([NewTopic(base + ".x", num_partitions=1, replication_factor=1)], request_timeout=T)
    assert error_code(fs[base + ".x"]) == KafkaError.TOPIC_EXCEPTION
    assert base + ".x" not in topic_names(a)


def test_list_offsets_out_of_order_timestamps_and_max_timestamp(bootstrap, topic_name):
    a = create_topic(bootstrap, topic_name)
    t0 = int(time.time() * 1000) - 100_000
    deltas = [0, 5000, 1000, 6000, 2000]
    produce_all(producer(bootstrap), topic_name, [dict(value=b"%d" % d, timestamp=t0 + d) for d in deltas])
    tp = TopicPartition(topic_name, 0)

    def lo(spec):
        return a.list_offsets({tp: spec}, request_timeout=T)[tp].result(timeout=T)

    # The earliest offset whose timestamp is >= the target: offset 1 (t0+5000) for t0+2000.
    assert lo(OffsetSpec.for_timestamp(t0 + 2000)).offset == 1
    assert lo(OffsetSpec.for_timestamp(t0 + 5500)).offset == 3
    assert lo(OffsetSpec.for_timestamp(t0 + 6001)).offset == -1
    # ListOffsets v7+ (advertised): MAX_TIMESTAMP (-3) names the record with the largest timestamp.
    info = lo(OffsetSpec.max_timestamp())
    assert (info.offset, info.timestamp) == (3, t0 + 6000)


def test_create_topics_invalid_configs(bootstrap, topic_name):
    a = admin(bootstrap)
    cases = {
        topic_name + "-unknown": {"no.such.config": "1"},
        topic_name + "-badvalue": {"retention.ms": "not-a-number"},
        topic_name + "-badpolicy": {"cleanup.policy": "shred"},
    }
    fs = a.create_topics([NewTopic(n, num_partitions=1, replication_factor=1, config=c) for n, c in cases.items()],
                         request_timeout=T)
    for name in cases:
        assert error_code(fs[name]) == KafkaError.INVALID_CONFIG, f"{name}: {cases[name]}"
    names = topic_names(a)
    assert not any(n in names for n in cases)


def test_create_topic_with_replica_assignment(bootstrap, topic_name):
    a = admin(bootstrap)
    fs = a.create_topics([NewTopic(topic_name, num_partitions=2, replica_assignment=[[1], [1]])], request_timeout=T)
    assert error_code(fs[topic_name]) == 0
    t = wait_topic(a, topic_name, 2)
    assert all(p.replicas == [1] for p in t.partitions.values())
    bad = topic_name + "-bad"
    fs = a.create_topics([NewTopic(bad, num_partitions=1, replica_assignment=[[2]])], request_timeout=T)
    assert error_code(fs[bad]) == KafkaError.INVALID_REPLICA_ASSIGNMENT, "broker 2 does not exist"
    assert bad not in topic_names(a)


def test_validate_only_alter_and_create_partitions_change_nothing(bootstrap, topic_name):
    a = create_topic(bootstrap, topic_name, config={"retention.ms": "1000000"})
    res = ConfigResource(ResourceType.TOPIC, topic_name, set_config={"retention.ms": "2000000"})
    assert error_code(a.alter_configs([res], validate_only=True, request_timeout=T)[res]) == 0
    inc = ConfigResource(ResourceType.TOPIC, topic_name, incremental_configs=[
        ConfigEntry("retention.ms", "3000000", incremental_operation=AlterConfigOpType.SET)])
    assert error_code(a.incremental_alter_configs([inc], validate_only=True, request_timeout=T)[inc]) == 0
    fs = a.create_partitions([NewPartitions(topic_name, 4)], validate_only=True, request_timeout=T)
    assert error_code(fs[topic_name]) == 0
    assert describe_topic_configs(a, topic_name)["retention.ms"].value == "1000000"
    wait_topic(a, topic_name, 1)


def test_many_partitions_topic(broker_factory, topic_name):
    b = broker_factory()
    parts = 500
    t = time.monotonic()
    a = create_topic(b.bootstrap, topic_name, partitions=parts)
    created_s = time.monotonic() - t
    delivered = produce_all(producer(b.bootstrap), topic_name, [dict(value=b"%d" % p, partition=p) for p in range(parts)])
    assert sorted((m.partition(), m.offset()) for m in delivered) == [(p, 0) for p in range(parts)]
    t = time.monotonic()
    b.restart()
    restart_s = time.monotonic() - t
    a = admin(b.bootstrap)
    wait_topic(a, topic_name, parts)
    got = consume(b.bootstrap, topic_name, partitions=[0, 250, 499], expected=3)
    assert sorted(m.value() for m in got) == [b"0", b"250", b"499"]
    # Speed is reported, not asserted (a busy machine would fail a bound); the restart's own
    # bound is the graceful stop's (STOP_TIMEOUT_S): 500 partitions must still shut down.
    print(f"500 partitions: create {created_s:.1f} s, restart {restart_s:.1f} s")


def test_describe_topics_topic_ids_change_on_recreate(bootstrap, topic_name):
    from confluent_kafka import TopicCollection
    a = create_topic(bootstrap, topic_name, partitions=2)
    d = a.describe_topics(TopicCollection([topic_name]), request_timeout=T)[topic_name].result(timeout=T)
    assert d.name == topic_name and d.topic_id is not None
    assert [(p.id, p.leader.id, [r.id for r in p.replicas], [r.id for r in p.isr]) for p in d.partitions] == [
        (0, 1, [1], [1]), (1, 1, [1], [1])]
    first_id = str(d.topic_id)
    assert error_code(a.delete_topics([topic_name], request_timeout=T)[topic_name]) == 0
    deadline = time.monotonic() + 10
    while topic_name in topic_names(a) and time.monotonic() < deadline:
        time.sleep(0.1)
    create_topic(bootstrap, topic_name)
    d = a.describe_topics(TopicCollection([topic_name]), request_timeout=T)[topic_name].result(timeout=T)
    assert str(d.topic_id) != first_id, "a re-created topic must get a new topic id"


def test_describe_broker_configs(broker):
    a = admin(broker.bootstrap)
    res = ConfigResource(ResourceType.BROKER, "1")
    entries = a.describe_configs([res], request_timeout=T)[res].result(timeout=T)
    for k, v in {"num.partitions": "1", "auto.create.topics.enable": "true",
                 "socket.request.max.bytes": "104857600", "message.max.bytes": "1048588"}.items():
        assert k in entries, f"{k} missing from broker DescribeConfigs: {sorted(entries)}"
        assert entries[k].value == v, f"{k}={entries[k].value}"


def test_incremental_alter_configs_append_subtract_list(bootstrap, topic_name):
    a = create_topic(bootstrap, topic_name, config={"cleanup.policy": "delete"})

    def alter(op, value):
        res = ConfigResource(ResourceType.TOPIC, topic_name, incremental_configs=[
            ConfigEntry("cleanup.policy", value, incremental_operation=op)])
        return error_code(a.incremental_alter_configs([res], request_timeout=T)[res])

    assert alter(AlterConfigOpType.APPEND, "compact") == 0
    assert set(describe_topic_configs(a, topic_name)["cleanup.policy"].value.split(",")) == {"delete", "compact"}
    assert alter(AlterConfigOpType.SUBTRACT, "delete") == 0
    assert describe_topic_configs(a, topic_name)["cleanup.policy"].value == "compact"
    # APPEND on a non-list config is invalid.
    res = ConfigResource(ResourceType.TOPIC, topic_name, incremental_configs=[
        ConfigEntry("retention.ms", "5", incremental_operation=AlterConfigOpType.APPEND)])
    assert error_code(a.incremental_alter_configs([res], request_timeout=T)[res]) == KafkaError.INVALID_CONFIG


def test_unknown_partition_and_topic_errors(bootstrap, topic_name):
    create_topic(bootstrap, topic_name)
    with kproto.Conn(bootstrap) as c:  # librdkafka checks partitions itself, so this is raw
        assert kproto.list_offsets(c, topic_name, 5, -1)[0] == kproto.UNKNOWN_TOPIC_OR_PARTITION
        assert kproto.list_offsets(c, "no-such-topic-list-offsets", 0, -1)[0] == kproto.UNKNOWN_TOPIC_OR_PARTITION
        assert kproto.list_offsets(c, topic_name, 0, -2) == (0, -1, 0)
        assert kproto.delete_records(c, "no-such-topic-delete-records", 0, 1)[0] == kproto.UNKNOWN_TOPIC_OR_PARTITION
        assert kproto.delete_records(c, topic_name, 3, 0)[0] == kproto.UNKNOWN_TOPIC_OR_PARTITION
        assert kproto.delete_records(c, topic_name, 0, 0) == (0, 0)


def test_authorized_operations_are_every_operation_when_asked(bootstrap, topic_name):
    """KIP-430: with no authorizer every operation Kafka defines on a resource is allowed, and
    the answer comes only when asked (librdkafka's 0081_admin DescribeTopics/DescribeCluster
    expected 8 and 7 operations and got none)."""
    from confluent_kafka import ConsumerGroupTopicPartitions, TopicCollection
    from confluent_kafka.admin import AclOperation
    a = create_topic(bootstrap, topic_name)
    topic = a.describe_topics(TopicCollection([topic_name]), request_timeout=T,
                              include_authorized_operations=True)[topic_name].result(timeout=T)
    assert set(topic.authorized_operations) == {
        AclOperation.READ, AclOperation.WRITE, AclOperation.CREATE, AclOperation.DELETE, AclOperation.ALTER,
        AclOperation.DESCRIBE, AclOperation.DESCRIBE_CONFIGS, AclOperation.ALTER_CONFIGS}
    plain = a.describe_topics(TopicCollection([topic_name]), request_timeout=T)[topic_name].result(timeout=T)
    assert not plain.authorized_operations, "not asked for: none given"

    cluster = a.describe_cluster(request_timeout=T, include_authorized_operations=True).result(timeout=T)
    assert set(cluster.authorized_operations) == {
        AclOperation.CREATE, AclOperation.CLUSTER_ACTION, AclOperation.DESCRIBE_CONFIGS,
        AclOperation.ALTER_CONFIGS, AclOperation.IDEMPOTENT_WRITE, AclOperation.ALTER, AclOperation.DESCRIBE}
    assert not a.describe_cluster(request_timeout=T).result(timeout=T).authorized_operations

    group = f"{topic_name}-group"
    committed = a.alter_consumer_group_offsets(
        [ConsumerGroupTopicPartitions(group, [TopicPartition(topic_name, 0, 0)])], request_timeout=T)
    committed[group].result(timeout=T)
    g = a.describe_consumer_groups([group], request_timeout=T,
                                   include_authorized_operations=True)[group].result(timeout=T)
    assert set(g.authorized_operations) == {AclOperation.READ, AclOperation.DESCRIBE, AclOperation.DELETE}


def test_keyless_records_on_a_compacted_topic_fail_alone(bootstrap, topic_name):
    """KIP-467: a batch refused for records without a key names them (record_errors), so the
    client fails those with INVALID_RECORD and the rest of the batch as collateral
    (_INVALID_DIFFERENT_RECORD), which it may send again (librdkafka's 0011_produce_batch)."""
    create_topic(bootstrap, topic_name, config={"cleanup.policy": "compact"})
    p = producer(bootstrap, **{"linger.ms": 1000, "batch.num.messages": 10, "retries": 0})
    results = {}
    for i in range(10):
        key = None if i in (2, 7) else b"k%d" % i
        p.produce(topic_name, key=key, value=b"v%d" % i, partition=0,
                  on_delivery=lambda err, msg, i=i: results.__setitem__(i, err))
    assert p.flush(T) == 0
    codes = {i: (err.code() if err else 0) for i, err in results.items()}
    assert codes[2] == codes[7] == KafkaError.INVALID_RECORD, codes
    assert all(codes[i] == KafkaError._INVALID_DIFFERENT_RECORD for i in range(10) if i not in (2, 7)), codes

    ok = producer(bootstrap)
    produce_all(ok, topic_name, [dict(key=b"k%d" % i, value=b"v%d" % i, partition=0) for i in range(10) if i not in (2, 7)])
    assert [m.key() for m in consume(bootstrap, topic_name, expected=8)] == [
        b"k%d" % i for i in range(10) if i not in (2, 7)], "nothing of the refused batch was stored"
