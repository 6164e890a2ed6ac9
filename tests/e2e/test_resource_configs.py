"""Config resources other than topics, through confluent-kafka's AdminClient (librdkafka):
group configs (KIP-848 dynamic group configs, Kafka 4.0's `GroupConfig`, resource type GROUP)
and dynamic broker configs (resource type BROKER: per broker, or cluster-wide under "").

Both are stored by the controller, so a value set through one node is what every node
describes, and it survives restarts. Spate's groups use the classic protocol, which ignores
group configs (as Kafka does for classic groups): they are stored and described only."""

import time
import uuid

import pytest
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, ConfigSource, ResourceType

import kproto
from ckutil import admin

T = 20  # seconds for any admin future

SET, DELETE = AlterConfigOpType.SET, AlterConfigOpType.DELETE
APPEND, SUBTRACT = AlterConfigOpType.APPEND, AlterConfigOpType.SUBTRACT

# Kafka 4.0's group configs and their defaults.
GROUP_DEFAULTS = {
    "consumer.heartbeat.interval.ms": "5000",
    "consumer.session.timeout.ms": "45000",
    "share.auto.offset.reset": "latest",
    "share.heartbeat.interval.ms": "5000",
    "share.record.lock.duration.ms": "30000",
    "share.session.timeout.ms": "45000",
}


def unique(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def op(name, value, kind=SET):
    return ConfigEntry(name, value, incremental_operation=kind)


def describe(a, res):
    return a.describe_configs([res], request_timeout=T)[res].result(timeout=T)


def alter(a, res, validate_only=False):
    return a.incremental_alter_configs([res], request_timeout=T, validate_only=validate_only)[res].result(timeout=T)


def group(name, *ops):
    return ConfigResource(ResourceType.GROUP, name, incremental_configs=list(ops) or None)


def refused(fn):
    """The KafkaError of an admin call expected to fail."""
    with pytest.raises(KafkaException) as e:
        fn()
    return e.value.args[0]


def raw_describe(bootstrap, resource_type, name):
    """DescribeConfigs v1 (with synonyms) sent to exactly this node: {config: (value, source,
    read_only, [(synonym, value, source)])}, or the (error code, message) of the resource."""
    body = (kproto.array([(resource_type, name)], lambda r: kproto.i8(r[0]) + kproto.string(r[1]) + kproto.i32(-1))
            + kproto.i8(1))
    with kproto.Conn(bootstrap) as c:
        r = kproto.Reader(c.request(32, 1, body))
    r.i32()  # throttle time
    synonym = lambda r: (r.string(), r.string(), r.i8())
    config = lambda r: (r.string(), r.string(), r.i8(), r.i8(), r.i8(), r.array(synonym))
    (result,) = r.array(lambda r: (r.i16(), r.string(), r.i8(), r.string(), r.array(config)))
    code, message, _, _, configs = result
    if code != 0:
        return code, message
    return {n: (v, source, bool(ro), syn) for n, v, ro, source, _sensitive, syn in configs}


def wait_for(what, check, timeout=10):
    deadline = time.monotonic() + timeout
    while True:
        last = check()
        if last is True:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: still {last!r} after {timeout}s")
        time.sleep(0.1)


# ---- group configs -----------------------------------------------------------------------------


def test_any_group_describes_kafkas_defaults(bootstrap_both_shapes):
    # Also a group that does not exist, as Kafka answers.
    got = describe(admin(bootstrap_both_shapes), group(unique("no-such-group")))
    assert {n: e.value for n, e in got.items()} == GROUP_DEFAULTS
    for e in got.values():
        assert e.source == ConfigSource.DEFAULT_CONFIG.value, e
        assert not e.is_read_only
    session = got["consumer.session.timeout.ms"]
    assert [(s.name, s.value, s.source) for s in session.synonyms.values()] == [
        ("group.consumer.session.timeout.ms", "45000", ConfigSource.DEFAULT_CONFIG.value)]


def test_group_overrides_are_set_replaced_and_deleted(bootstrap_both_shapes):
    a = admin(bootstrap_both_shapes)
    g = unique("group")
    alter(a, group(g, op("consumer.session.timeout.ms", "50000"), op("share.auto.offset.reset", "earliest")))
    got = describe(a, group(g))
    session = got["consumer.session.timeout.ms"]
    assert (session.value, session.source) == ("50000", ConfigSource.GROUP_CONFIG.value)
    assert [(s.name, s.source) for s in session.synonyms.values()] == [
        ("consumer.session.timeout.ms", ConfigSource.GROUP_CONFIG.value),
        ("group.consumer.session.timeout.ms", ConfigSource.DEFAULT_CONFIG.value)]
    assert got["share.auto.offset.reset"].value == "earliest"
    assert got["consumer.heartbeat.interval.ms"].source == ConfigSource.DEFAULT_CONFIG.value

    # validate_only changes nothing.
    alter(a, group(g, op("consumer.session.timeout.ms", "55000")), validate_only=True)
    assert describe(a, group(g))["consumer.session.timeout.ms"].value == "50000"

    # DELETE (librdkafka sends an empty value with it) restores the default; the other stays.
    alter(a, group(g, op("consumer.session.timeout.ms", "", DELETE)))
    got = describe(a, group(g))
    assert (got["consumer.session.timeout.ms"].value, got["consumer.session.timeout.ms"].source) == (
        "45000", ConfigSource.DEFAULT_CONFIG.value)
    assert got["share.auto.offset.reset"].value == "earliest"

    # The legacy AlterConfigs replaces the whole map.
    res = ConfigResource(ResourceType.GROUP, g, set_config={"consumer.heartbeat.interval.ms": "6000"})
    a.alter_configs([res], request_timeout=T)[res].result(timeout=T)
    got = describe(a, group(g))
    assert got["consumer.heartbeat.interval.ms"].value == "6000"
    assert got["share.auto.offset.reset"].value == "latest", "not listed, so removed"


@pytest.mark.parametrize("name,value,message", [
    ("consumer.session.timeout.ms", "44999",
     "consumer.session.timeout.ms must be greater than or equal to group.consumer.min.session.timeout.ms"),
    ("consumer.session.timeout.ms", "60001",
     "consumer.session.timeout.ms must be less than or equal to group.consumer.max.session.timeout.ms"),
    ("consumer.heartbeat.interval.ms", "16000",
     "consumer.heartbeat.interval.ms must be less than or equal to group.consumer.max.heartbeat.interval.ms"),
    ("consumer.session.timeout.ms", "soon",
     "Invalid value soon for configuration consumer.session.timeout.ms: Not a number of type INT"),
    ("share.auto.offset.reset", "none",
     "Invalid value none for configuration share.auto.offset.reset: String must be one of: latest, earliest"),
    ("session.timeout.ms", "50000", "Unknown group config name: session.timeout.ms"),
])
def test_bad_group_configs_are_refused_with_the_reason(bootstrap_both_shapes, name, value, message):
    a = admin(bootstrap_both_shapes)
    g = unique("group")
    err = refused(lambda: alter(a, group(g, op(name, value))))
    assert err.code() == KafkaError.INVALID_CONFIG, err
    assert message in err.str(), err.str()
    assert {n: e.value for n, e in describe(a, group(g)).items()} == GROUP_DEFAULTS
    # List operations: no group config is a list.
    err = refused(lambda: alter(a, group(g, op("consumer.session.timeout.ms", "50000", APPEND))))
    assert err.code() == KafkaError.INVALID_CONFIG, err
    assert "because its type is not LIST" in err.str()


def test_group_config_set_through_one_node_is_what_every_node_describes_and_survives_restarts(cluster_factory):
    c = cluster_factory(nodes=3)
    g = unique("group")
    alter(admin(c.nodes[1].bootstrap), group(g, op("consumer.session.timeout.ms", "50000")))

    def every_node_shows(value, source):
        def check():
            seen = {i: raw_describe(b.bootstrap, 32, g)["consumer.session.timeout.ms"][:2]
                    for i, b in c.nodes.items()}
            return True if set(seen.values()) == {(value, source)} else seen
        return check

    print("--- every node describes the override set through node 1")
    wait_for("the override on every node", every_node_shows("50000", 8))

    print("--- crash and restart the whole cluster: the override is still there")
    for b in c.nodes.values():
        b.kill9()
    c.start()
    wait_for("the override after the restart", every_node_shows("50000", 8), timeout=20)

    print("--- delete it through node 3: every node shows the default again")
    alter(admin(c.nodes[3].bootstrap), group(g, op("consumer.session.timeout.ms", "", DELETE)))
    wait_for("the default on every node", every_node_shows("45000", 5))


def test_group_config_survives_a_restart_of_one_node(broker_factory):
    b = broker_factory()
    g = unique("group")
    alter(admin(b.bootstrap), group(g, op("share.record.lock.duration.ms", "20000")))
    b.restart()
    got = describe(admin(b.bootstrap), group(g))
    assert (got["share.record.lock.duration.ms"].value, got["share.record.lock.duration.ms"].source) == (
        "20000", ConfigSource.GROUP_CONFIG.value)


# ---- dynamic broker configs --------------------------------------------------------------------


def broker_res(name, *ops):
    return ConfigResource(ResourceType.BROKER, str(name), incremental_configs=list(ops) or None)


def broker_ids(a):
    return sorted(a.list_topics(timeout=T).brokers)


def raw_incremental_alter(bootstrap, resource_type, name, ops):
    """IncrementalAlterConfigs v0 sent to exactly this node: (error code, message)."""
    enc_op = lambda o: kproto.string(o[0]) + kproto.i8(o[1]) + kproto.string(o[2])
    body = (kproto.array([(resource_type, name, ops)],
                         lambda r: kproto.i8(r[0]) + kproto.string(r[1]) + kproto.array(r[2], enc_op))
            + kproto.i8(0))
    with kproto.Conn(bootstrap) as c:
        r = kproto.Reader(c.request(44, 0, body))
    r.i32()  # throttle time
    ((code, message, _, _),) = r.array(lambda r: (r.i16(), r.string(), r.i8(), r.string()))
    return code, message


def test_per_broker_dynamic_configs_as_librdkafkas_admin_test_sets_them(bootstrap_both_shapes):
    a = admin(bootstrap_both_shapes)
    b = broker_ids(a)[0]
    try:
        alter(a, broker_res(b, op("sasl.kerberos.min.time.before.relogin", "58000")))
        alter(a, broker_res(b, op("background.threads", "9"), op("log.cleanup.policy", "compact", APPEND)))
        got = describe(a, broker_res(b))
        relogin = got["sasl.kerberos.min.time.before.relogin"]
        assert (relogin.value, relogin.source, relogin.is_read_only) == (
            "58000", ConfigSource.DYNAMIC_BROKER_CONFIG.value, False)
        threads = got["background.threads"]
        assert (threads.value, threads.source) == ("9", ConfigSource.DYNAMIC_BROKER_CONFIG.value)
        # Synonyms (the client keys them by name, so they are read raw from that broker).
        node = a.list_topics(timeout=T).brokers[b]
        raw = raw_describe(f"{node.host}:{node.port}", 4, str(b))
        assert raw["background.threads"][3] == [("background.threads", "9", 2), ("background.threads", "10", 5)]
        assert set(got["log.cleanup.policy"].value.split(",")) == {"delete", "compact"}
        assert got["num.partitions"].is_read_only, "not dynamically updatable"

        alter(a, broker_res(b, op("background.threads", "", DELETE), op("log.cleanup.policy", "compact", SUBTRACT)))
        got = describe(a, broker_res(b))
        assert (got["background.threads"].value, got["background.threads"].source) == (
            "10", ConfigSource.DEFAULT_CONFIG.value)
        assert got["log.cleanup.policy"].value == "delete"
    finally:
        res = ConfigResource(ResourceType.BROKER, str(b), set_config={})
        a.alter_configs([res], request_timeout=T)[res].result(timeout=T)
    got = describe(a, broker_res(b))
    assert got["log.cleanup.policy"].source != ConfigSource.DYNAMIC_BROKER_CONFIG.value


def test_cluster_wide_dynamic_configs_reach_every_broker_and_topic_defaults(bootstrap_both_shapes, topic_name):
    # The cluster-wide resource (name "") is sent raw: librdkafka refuses an empty broker name.
    from ckutil import create_topic
    a = create_topic(bootstrap_both_shapes, topic_name)
    nodes = bootstrap_both_shapes.split(",")
    ids = broker_ids(a)
    try:
        assert raw_incremental_alter(nodes[0], 4, "", [("log.retention.ms", 0, "3600000"),
                                                       ("background.threads", 0, "12")]) == (0, None)
        # The other nodes learn the change from the replicated metadata, a moment later.
        want = {"background.threads": ("12", 3, [("background.threads", "12", 3)]),
                "log.retention.ms": ("3600000", 3, [("log.retention.ms", "3600000", 3)])}
        for node in nodes:
            wait_for(f"node {node} describes the cluster-wide configs", lambda: (
                got := {n: (v, src, syn) for n, (v, src, _ro, syn) in raw_describe(node, 4, "").items()}) == want or got)
        for b in ids:
            got = describe(a, broker_res(b))
            assert (got["log.retention.ms"].value, got["log.retention.ms"].source) == (
                "3600000", ConfigSource.DYNAMIC_DEFAULT_BROKER_CONFIG.value), b
        # A topic without its own retention.ms takes the cluster-wide default, on every node.
        for node in nodes:
            value, source, _ro, synonyms = raw_describe(node, 2, topic_name)["retention.ms"]
            assert (value, source) == ("3600000", 3), node
            assert synonyms == [("log.retention.ms", "3600000", 3), ("log.retention.ms", "604800000", 5)]
        # Its own override still wins.
        alter(a, ConfigResource(ResourceType.TOPIC, topic_name, incremental_configs=[op("retention.ms", "60000")]))
        retention = describe(a, ConfigResource(ResourceType.TOPIC, topic_name))["retention.ms"]
        assert (retention.value, retention.source) == ("60000", ConfigSource.DYNAMIC_TOPIC_CONFIG.value)
    finally:
        assert raw_incremental_alter(nodes[0], 4, "", [("log.retention.ms", 1, None),
                                                       ("background.threads", 1, None)]) == (0, None)
    wait_for("the cluster-wide configs are gone", lambda: (got := raw_describe(nodes[-1], 4, "")) == {} or got)


def test_bad_dynamic_broker_configs_are_refused_with_kafkas_reasons(bootstrap_both_shapes):
    a = admin(bootstrap_both_shapes)
    b = broker_ids(a)[0]
    for res, message in [
        (broker_res(b, op("node.id", "5")), "Cannot update these configs dynamically: Set(node.id)"),
        (broker_res(b, op("background.threads", "4")),
         "Dynamic thread count update validation failed for background.threads=4, value should be at least half the current value 10"),
        (broker_res(b, op("background.threads", "many")),
         "Invalid value many for configuration background.threads: Not a number of type INT"),
    ]:
        err = refused(lambda: alter(a, res))
        assert err.code() == KafkaError.INVALID_CONFIG, err
        assert message in err.str(), err.str()
    # Sent raw: librdkafka refuses the empty broker name, and routes a BROKER resource to the
    # broker it names, so it cannot send one for a broker the cluster does not know.
    first = bootstrap_both_shapes.split(",")[0]
    code, message = raw_incremental_alter(first, 4, "", [("sasl.kerberos.min.time.before.relogin", 0, "58000")])
    assert (code, message) == (40, "Cannot update these configs at default cluster level, broker id must be "
                                    "specified: Set(sasl.kerberos.min.time.before.relogin)")  # INVALID_CONFIG
    assert raw_describe(first, 4, "") == {}
    code, message = raw_incremental_alter(first, 4, "999", [("background.threads", 0, "9")])
    assert (code, message) == (102, "No broker with id 999 found.")  # BROKER_ID_NOT_REGISTERED


def test_dynamic_broker_configs_survive_a_restart_and_are_seen_by_every_node(cluster_factory):
    c = cluster_factory(nodes=3)
    assert raw_incremental_alter(c.nodes[1].bootstrap, 4, "", [("log.segment.bytes", 0, "2097152")]) == (0, None)
    alter(admin(c.nodes[1].bootstrap), broker_res(2, op("num.io.threads", "12")))

    def every_node_shows():
        seen = {}
        for i, b in c.nodes.items():
            own = raw_describe(b.bootstrap, 4, str(i))
            seen[i] = (own["log.segment.bytes"][:2], own["num.io.threads"][:2])
        want = {1: (("2097152", 3), ("8", 5)), 2: (("2097152", 3), ("12", 2)), 3: (("2097152", 3), ("8", 5))}
        return True if seen == want else seen

    print("--- every node describes the cluster-wide value; node 2 its own")
    wait_for("dynamic configs on every node", every_node_shows)
    print("--- crash and restart the whole cluster")
    for b in c.nodes.values():
        b.kill9()
    c.start()
    wait_for("dynamic configs after the restart", every_node_shows, timeout=20)


def test_a_cluster_wide_dynamic_log_default_reaches_a_running_partition(broker_factory, topic_name):
    # Not only described: the partition's log takes the new default while it runs (the node
    # re-resolves every hosted partition's config when the metadata changes).
    from pathlib import Path
    from ckutil import create_topic, produce_all, producer
    b = broker_factory()
    create_topic(b.bootstrap, topic_name)
    part_dir = Path(b.data_dir) / "logs" / f"{topic_name}-0"
    segments = lambda: sorted(part_dir.glob("*.log"))
    batch = lambda start: [dict(key=b"%d" % i, value=b"v" * 200) for i in range(start, start + 200)]
    p = producer(b.bootstrap, **{"linger.ms": 0, "batch.num.messages": 10})
    produce_all(p, topic_name, batch(0))
    assert len(segments()) == 1, segments()

    assert raw_incremental_alter(b.bootstrap, 4, "", [("log.segment.bytes", 0, "16384")]) == (0, None)
    value, source, _ro, _syn = raw_describe(b.bootstrap, 2, topic_name)["segment.bytes"]
    assert (value, source) == ("16384", 3)
    produce_all(p, topic_name, batch(200))
    rolled = len(segments())
    assert rolled >= 3, f"~45 KB written at log.segment.bytes=16384 left {rolled} segment files"

    # Back to the static default: no more rolls at 16 KiB.
    assert raw_incremental_alter(b.bootstrap, 4, "", [("log.segment.bytes", 1, None)]) == (0, None)
    produce_all(p, topic_name, batch(400))
    assert len(segments()) == rolled, segments()


def test_a_brokers_rack_is_described_as_clients_read_it(broker_factory):
    # librdkafka's 0101_fetch_from_follower reads each replica's rack here before it fetches
    # from a follower in the consumer's rack; it skipped itself while the entry was missing.
    racked = broker_factory(args=["--set", "broker.rack=rack-a"])
    a = admin(racked.bootstrap)
    rack = describe(a, broker_res(broker_ids(a)[0]))["broker.rack"]
    assert (rack.value, rack.source, rack.is_read_only) == (
        "rack-a", ConfigSource.STATIC_BROKER_CONFIG.value, True)
    plain = broker_factory()
    a = admin(plain.bootstrap)
    assert "broker.rack" not in describe(a, broker_res(broker_ids(a)[0])), "no rack, no entry"


def test_topic_configs_start_from_the_dynamic_defaults_in_force(broker_factory, topic_name):
    # The defaults a topic's configs start from are the ones DescribeConfigs shows: with a
    # cluster-wide log.cleanup.policy=compact, APPEND delete to a topic without its own policy
    # gives compact,delete (from the static default, delete, it would stay delete), and
    # CreateTopics echoes the dynamic default with its source.
    from ckutil import create_topic
    b = broker_factory()
    a = create_topic(b.bootstrap, topic_name)
    assert raw_incremental_alter(b.bootstrap, 4, "", [("log.cleanup.policy", 0, "compact"),
                                                      ("log.retention.ms", 0, "7200000")]) == (0, None)
    alter(a, ConfigResource(ResourceType.TOPIC, topic_name, incremental_configs=[op("cleanup.policy", "delete", APPEND)]))
    got = describe(a, ConfigResource(ResourceType.TOPIC, topic_name))["cleanup.policy"]
    assert (got.value, got.source) == ("compact,delete", ConfigSource.DYNAMIC_TOPIC_CONFIG.value)

    created = kproto.create_topic_echo(b.bootstrap, topic_name + "-echo")
    assert created["retention.ms"] == ("7200000", 3), "DYNAMIC_DEFAULT_BROKER_CONFIG"
    assert created["cleanup.policy"] == ("compact", 3)
