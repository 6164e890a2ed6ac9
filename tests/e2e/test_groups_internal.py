"""__consumer_offsets is internal: listed as such, never written or deleted by clients, and
offsets of a deleted topic go with it."""

import time

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

OFFSETS = "__consumer_offsets"


@pytest.fixture
def groups_broker(broker_factory):
    return broker_factory(args=["--set", "group.initial.rebalance.delay.ms=0",
                                "--set", "offsets.topic.num.partitions=3"])


def commit(bootstrap, group, topic, offset):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        c.commit(offsets=[TopicPartition(topic, 0, offset)], asynchronous=False)
        return c.committed([TopicPartition(topic, 0)], timeout=10)[0].offset
    finally:
        c.close()


def test_offsets_topic_is_internal_and_protected(groups_broker):
    bootstrap = groups_broker.bootstrap
    a = AdminClient({"bootstrap.servers": bootstrap})
    a.create_topics([NewTopic("t", 1, 1)])["t"].result(10)
    assert commit(bootstrap, "g", "t", 5) == 5
    # --- the first group request created __consumer_offsets with the configured partitions
    md = a.list_topics(timeout=10)
    assert OFFSETS in md.topics
    assert len(md.topics[OFFSETS].partitions) == 3
    # --- clients cannot append to it
    p = Producer({"bootstrap.servers": bootstrap, "message.send.max.retries": 0})
    errors = []
    p.produce(OFFSETS, b"x", partition=0, on_delivery=lambda err, msg: errors.append(err))
    p.flush(10)
    assert errors and errors[0] is not None and errors[0].code() == 17, errors  # INVALID_TOPIC_EXCEPTION
    # --- nor delete it
    with pytest.raises(KafkaException) as e:
        a.delete_topics([OFFSETS])[OFFSETS].result(10)
    assert e.value.args[0].code() == 17
    assert commit(bootstrap, "g", "t", 6) == 6


def test_offsets_of_a_deleted_topic_are_removed(groups_broker):
    bootstrap = groups_broker.bootstrap
    a = AdminClient({"bootstrap.servers": bootstrap})
    a.create_topics([NewTopic("gone", 1, 1)])["gone"].result(10)
    assert commit(bootstrap, "g2", "gone", 3) == 3
    a.delete_topics(["gone"])["gone"].result(10)
    a.create_topics([NewTopic("gone", 1, 1)])["gone"].result(10)
    # The re-created topic starts without the old group's offset (OffsetFetch answers -1).
    deadline = time.time() + 10
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "g2"})
    try:
        while True:
            got = c.committed([TopicPartition("gone", 0)], timeout=10)[0].offset
            if got < 0 or time.time() > deadline:
                break
            time.sleep(0.2)
        assert got < 0, got
    finally:
        c.close()
    # --- and it stays gone across a restart (the tombstone is in the offsets log)
    groups_broker.restart()
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "g2"})
    try:
        assert c.committed([TopicPartition("gone", 0)], timeout=10)[0].offset < 0
    finally:
        c.close()
