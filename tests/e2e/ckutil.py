"""Helpers around confluent-kafka (librdkafka) shared by the tests.

Consumers here use manual assign() with explicit offsets and never commit, so a test reads
exactly what it asks for; consumer groups are tested in test_groups*.py.
"""

import time

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

import kproto

CLIENT_TIMEOUT_S = 20


def producer(bootstrap, **conf):
    base = {
        "bootstrap.servers": bootstrap,
        "linger.ms": 5,
        "message.timeout.ms": 20000,
        "reconnect.backoff.max.ms": 1000,
    }
    base.update(conf)
    return Producer(base)


def produce_all(p, topic, messages, check=True):
    """messages: iterable of dicts of Producer.produce kwargs (value, key, partition, headers,
    timestamp). Returns the delivered Message objects in the order given; raises if any failed."""
    results = {}

    def make_cb(i):
        def cb(err, msg):
            results[i] = (err, msg)
        return cb

    n = 0
    for i, m in enumerate(messages):
        while True:
            try:
                p.produce(topic, on_delivery=make_cb(i), **m)
                break
            except BufferError:
                p.poll(0.1)
        p.poll(0)
        n += 1
    remaining = p.flush(CLIENT_TIMEOUT_S)
    assert remaining == 0, f"{remaining} messages still undelivered after {CLIENT_TIMEOUT_S}s"
    assert len(results) == n, f"only {len(results)} of {n} delivery reports arrived"
    if check:
        errors = [(i, e) for i, (e, _) in sorted(results.items()) if e is not None]
        assert not errors, f"{len(errors)} deliveries failed, first: {errors[:3]}"
    return [results[i] if not check else results[i][1] for i in range(n)]


def consumer(bootstrap, **conf):
    base = {
        "bootstrap.servers": bootstrap,
        # librdkafka insists on a group.id, but nothing here uses the group (no subscribe, no commit).
        "group.id": "spate-e2e-unused",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "enable.partition.eof": True,
        "reconnect.backoff.max.ms": 1000,
        "fetch.wait.max.ms": 100,
    }
    base.update(conf)
    return Consumer(base)


def consume(bootstrap, topic, partitions=(0,), expected=None, start=OFFSET_BEGINNING, timeout=CLIENT_TIMEOUT_S,
            **conf):
    """Read partitions from `start` until each reaches EOF (and at least `expected` messages in
    total when given). Returns the list of Messages in arrival order."""
    c = consumer(bootstrap, **conf)
    try:
        c.assign([TopicPartition(topic, p, start) for p in partitions])
        out = []
        at_eof = set()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = c.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == -191:  # _PARTITION_EOF
                    at_eof.add(msg.partition())
                    if len(at_eof) == len(partitions) and (expected is None or len(out) >= expected):
                        return out
                    continue
                raise KafkaException(msg.error())
            at_eof.discard(msg.partition())
            out.append(msg)
        raise AssertionError(f"consume {topic} {list(partitions)}: timed out after {timeout}s with "
                             f"{len(out)} messages (expected {expected}), partitions at EOF: {sorted(at_eof)}")
    finally:
        c.close()


def admin(bootstrap):
    return AdminClient({"bootstrap.servers": bootstrap})


def replication_for(bootstrap):
    """The replication factor tests use against `bootstrap`: 1 on one node, 3 on a cluster
    (the bootstrap string lists every node)."""
    return min(3, len(bootstrap.split(",")))


def leader_of(bootstrap, topic, partition=0):
    """host:port of the partition's leader, for raw protocol probes (which, unlike clients,
    do not follow leadership themselves)."""
    md = admin(bootstrap).list_topics(topic=topic, timeout=10)
    leader = md.topics[topic].partitions[partition].leader
    b = md.brokers[leader]
    return f"{b.host}:{b.port}"


def create_topic(bootstrap, name, partitions=1, config=None):
    a = admin(bootstrap)
    fs = a.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=replication_for(bootstrap),
                                   config=config or {})],
                         operation_timeout=10, request_timeout=CLIENT_TIMEOUT_S)
    fs[name].result(timeout=CLIENT_TIMEOUT_S)
    wait_topic(a, name, partitions, served=True)
    return a


def wait_topic(a, name, partitions, timeout=10, served=False):
    """Wait until metadata shows `name` with `partitions` partitions, all led; with `served`,
    until each leader also serves its partition (see `leader_serves`)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        md = a.list_topics(topic=name, timeout=5)
        t = md.topics.get(name)
        last = t
        if t is not None and t.error is None and len(t.partitions) == partitions and all(
                p.leader >= 0 for p in t.partitions.values()) and (
                not served or all(leader_serves(md, name, p) for p in t.partitions)):
            return t
        time.sleep(0.1)
    raise AssertionError(f"topic {name} not ready with {partitions} partitions after {timeout}s: {last and (last.error, last.partitions)}")


def leader_serves(md, topic, partition):
    """Whether the leader that Metadata `md` names answers ListOffsets for the partition. The
    node answering Metadata can apply a leadership before the leader itself does; a request
    sent to the leader in between is answered UNKNOWN_TOPIC_OR_PARTITION, which clients retry
    and a test sending one raw request must not see."""
    b = md.brokers[md.topics[topic].partitions[partition].leader]
    try:
        with kproto.Conn(f"{b.host}:{b.port}", timeout=10) as conn:
            return kproto.list_offsets(conn, topic, partition, -1)[0] == kproto.NONE
    except (OSError, kproto.Closed):  # a leader just killed or restarted: ask again
        return False


def topic_names(a):
    """Names of existing topics, from a Metadata request for all topics (never auto-creates,
    unlike list_topics(topic=...), which librdkafka's producer-side clients send with
    allow_auto_topic_creation=true)."""
    return set(a.list_topics(timeout=10).topics)
