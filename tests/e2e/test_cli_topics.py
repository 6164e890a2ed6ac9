"""`spate topic create|list|describe|alter-config|add-partitions|delete` against a real broker,
checked against what a confluent-kafka (librdkafka) AdminClient, producer and consumer see."""

import json
import time

from confluent_kafka import TopicCollection
from confluent_kafka.admin import ConfigResource, ConfigSource, ResourceType

from ckutil import admin, consume, produce_all, producer, topic_names, wait_topic
from test_cli_groups import spate

T = 20  # seconds for any admin future


def ok(*args):
    """Runs the CLI; asserts it succeeded; returns stdout."""
    r = spate(*args)
    assert r.returncode == 0, f"spate {' '.join(args)} failed ({r.returncode}): {r.stderr}"
    return r.stdout


def fails(*args, code=None):
    """Runs the CLI; asserts it failed (with `code` if given) and printed nothing on stdout;
    returns stderr."""
    r = spate(*args)
    assert r.returncode != 0, f"spate {' '.join(args)} succeeded: {r.stdout}"
    if code is not None:
        assert r.returncode == code, f"exit code {r.returncode}, expected {code}: {r.stderr}"
    assert r.stdout == "", r.stdout
    return r.stderr


def describe_json(bootstrap, *names):
    return json.loads(ok("topic", "describe", *names, "--bootstrap-server", bootstrap, "--output", "json"))


def confluent_topic_id(a, name):
    """The topic id as Kafka's own tools print it (URL-safe base64): librdkafka prints it in
    standard base64 ('+' and '/')."""
    d = a.describe_topics(TopicCollection([name]), request_timeout=T)[name].result(timeout=T)
    return str(d.topic_id).rstrip("=").replace("+", "-").replace("/", "_")


def wait_gone(a, name, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if name not in topic_names(a):
            return
        time.sleep(0.1)
    raise AssertionError(f"topic {name} still listed {timeout}s after it was deleted")


def test_create_list_describe_alter_and_delete(bootstrap, topic_name):
    a = admin(bootstrap)
    b = f"{topic_name}-defaults"

    # --- create: 3 partitions with two configs; then one with the broker's defaults
    out = ok("topic", "create", topic_name, "--partitions", "3", "--config", "retention.ms=3600000",
             "--config", "cleanup.policy=compact", "--bootstrap-server", bootstrap)
    wait_topic(a, topic_name, 3)
    topic_id = confluent_topic_id(a, topic_name)
    assert out == f"Created topic {topic_name} (topic id {topic_id}, 3 partitions, replication factor 1).\n"
    created = json.loads(ok("topic", "create", b, "--output", "json", "--bootstrap-server", bootstrap))
    wait_topic(a, b, 1)
    assert created == {"topic": b, "topic_id": confluent_topic_id(a, b), "partitions": 1,
                       "replication_factor": 1}

    # --- list: both, with their partition counts; internal topics only with --internal
    lines = ok("topic", "list", "--bootstrap-server", bootstrap).splitlines()
    assert lines[0].split() == ["NAME", "PARTITIONS", "REPLICATION", "FACTOR"], lines
    rows = [line.split() for line in lines[1:]]
    assert [topic_name, "3", "1"] in rows and [b, "1", "1"] in rows, rows
    assert not [r for r in rows if r[0].startswith("__")], rows
    assert [r[0] for r in rows] == sorted(r[0] for r in rows)
    listed = json.loads(ok("topic", "list", "--output", "json", "--internal", "--bootstrap-server", bootstrap))
    mine = [t for t in listed["topics"] if t["topic"] == topic_name]
    assert mine == [{"topic": topic_name, "topic_id": topic_id, "partitions": 3, "replication_factor": 1,
                     "internal": False}]
    internal = {t["topic"] for t in listed["topics"] if t["internal"]}
    assert internal == {n for n in topic_names(a) if n.startswith("__")}

    # --- describe: header line, then partitions as librdkafka sees them
    md = a.list_topics(topic=topic_name, timeout=10).topics[topic_name]
    text = ok("topic", "describe", topic_name, "--bootstrap-server", bootstrap)
    header, columns, *partition_lines = text.splitlines()
    fields = dict(f.split(": ", 1) for f in header.split("\t"))
    assert fields["Topic"] == topic_name
    assert fields["TopicId"] == topic_id
    assert (fields["PartitionCount"], fields["ReplicationFactor"]) == ("3", "1")
    assert sorted(fields["Configs"].split(",")) == ["cleanup.policy=compact", "retention.ms=3600000"], header
    assert columns.split() == ["PARTITION", "LEADER", "LEADER", "EPOCH", "REPLICAS", "ISR", "OFFLINE"]
    assert len(partition_lines) == 3, text
    for line in partition_lines:
        partition, leader, epoch, replicas, isr, offline = line.split()
        p = md.partitions[int(partition)]
        assert int(leader) == p.leader, line
        assert int(epoch) >= 0, line
        assert [int(x) for x in replicas.split(",")] == p.replicas, line
        assert [int(x) for x in isr.split(",")] == p.isrs, line
        assert offline == "-", line

    d = describe_json(bootstrap, topic_name, b)
    assert [t["topic"] for t in d["topics"]] == [topic_name, b], "in the order asked"
    t = d["topics"][0]
    assert (t["topic_id"], t["partition_count"], t["replication_factor"]) == (topic_id, 3, 1)
    assert t["configs"] == {"cleanup.policy": "compact", "retention.ms": "3600000"}
    assert [p["partition"] for p in t["partitions"]] == [0, 1, 2]
    for p in t["partitions"]:
        seen = md.partitions[p["partition"]]
        assert (p["leader"], p["replicas"], p["isr"]) == (seen.leader, seen.replicas, seen.isrs), p
        assert p["offline_replicas"] == [] and p["error"] is None, p
        assert isinstance(p["leader_epoch"], int) and p["leader_epoch"] >= 0, p
    assert d["topics"][1]["configs"] == {}, "no overrides, nothing but defaults"

    # --- alter-config: set one, delete the other; describe (and librdkafka) show it
    out = ok("topic", "alter-config", topic_name, "--set", "retention.ms=60000", "--delete", "cleanup.policy",
             "--bootstrap-server", bootstrap)
    assert out == f"Altered configs of topic {topic_name}.\n"
    assert describe_json(bootstrap, topic_name)["topics"][0]["configs"] == {"retention.ms": "60000"}
    res = ConfigResource(ResourceType.TOPIC, topic_name)
    entries = a.describe_configs([res], request_timeout=T)[res].result(timeout=T)
    assert entries["retention.ms"].value == "60000"
    assert entries["retention.ms"].source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value
    assert entries["cleanup.policy"].value == "delete"
    assert entries["cleanup.policy"].source != ConfigSource.DYNAMIC_TOPIC_CONFIG.value
    altered = json.loads(ok("topic", "alter-config", topic_name, "--set", "segment.ms=3600000",
                            "--output", "json", "--bootstrap-server", bootstrap))
    assert altered == {"topic": topic_name, "set": {"segment.ms": "3600000"}, "deleted": []}

    # --- delete: both go
    out = ok("topic", "delete", topic_name, b, "--bootstrap-server", bootstrap)
    assert out == f"Deleted topic {topic_name}.\nDeleted topic {b}.\n"
    wait_gone(a, topic_name)
    wait_gone(a, b)
    assert topic_name not in [line.split()[0] for line in
                              ok("topic", "list", "--bootstrap-server", bootstrap).splitlines()[1:]]
    err = fails("topic", "describe", topic_name, "--bootstrap-server", bootstrap)
    assert f"topic {topic_name} does not exist" in err, err


def test_internal_topics_are_listed_only_when_asked(bootstrap):
    # The first group request creates __consumer_offsets.
    spate("group", "describe", "cli-topics-no-such-group", "--bootstrap-server", bootstrap)
    a = admin(bootstrap)
    deadline = time.monotonic() + 10
    while "__consumer_offsets" not in topic_names(a):
        assert time.monotonic() < deadline, "__consumer_offsets was not created"
        time.sleep(0.1)
    names = [line.split()[0] for line in ok("topic", "list", "--bootstrap-server", bootstrap).splitlines()[1:]]
    assert "__consumer_offsets" not in names
    rows = {line.split()[0]: line.split()[1:] for line in
            ok("topic", "list", "--internal", "--bootstrap-server", bootstrap).splitlines()[1:]}
    md = a.list_topics(timeout=10).topics["__consumer_offsets"]
    assert rows["__consumer_offsets"] == [str(len(md.partitions)), "1"]


def test_create_errors_are_clear(bootstrap, topic_name):
    a = admin(bootstrap)
    ok("topic", "create", topic_name, "--bootstrap-server", bootstrap)
    wait_topic(a, topic_name, 1)

    err = fails("topic", "create", topic_name, "--bootstrap-server", bootstrap)
    assert f"cannot create topic {topic_name}: TOPIC_ALREADY_EXISTS" in err, err

    # One broker: a replication factor of 2 cannot be met; the broker says why.
    two = f"{topic_name}-rf2"
    err = fails("topic", "create", two, "--replication-factor", "2", "--bootstrap-server", bootstrap)
    assert f"cannot create topic {two}: INVALID_REPLICATION_FACTOR: " in err, err
    assert "replication factor" in err.lower() and "2" in err.split("INVALID_REPLICATION_FACTOR: ", 1)[1], err

    bad = f"{topic_name}-badcfg"
    err = fails("topic", "create", bad, "--config", "retention.ms=soon", "--bootstrap-server", bootstrap)
    assert f"cannot create topic {bad}: INVALID_CONFIG" in err and "retention.ms" in err, err
    err = fails("topic", "create", bad, "--config", "no.such.config=1", "--bootstrap-server", bootstrap)
    assert f"cannot create topic {bad}: INVALID_CONFIG" in err and "no.such.config" in err, err

    # Bad flag syntax never reaches the broker (clap's usage error, exit code 2).
    err = fails("topic", "create", bad, "--config", "retention.ms", "--bootstrap-server", bootstrap, code=2)
    assert "expected NAME=VALUE, got 'retention.ms'" in err, err
    err = fails("topic", "create", bad, "--partitions", "0", "--bootstrap-server", bootstrap, code=2)
    assert "invalid value '0'" in err, err
    err = fails("topic", "create", bad, "--config", "a=1", "--config", "a=2", "--bootstrap-server", bootstrap)
    assert "config a is given twice" in err, err
    err = fails("topic", "alter-config", topic_name, "--bootstrap-server", bootstrap, code=2)
    assert "--set" in err and "--delete" in err, err
    err = fails("topic", "alter-config", topic_name, "--set", "retention.ms=-5x", "--bootstrap-server", bootstrap)
    assert f"cannot alter configs of topic {topic_name}: INVALID_CONFIG" in err, err

    names = topic_names(a)
    assert two not in names and bad not in names, "nothing was created by a failed command"


def test_unknown_topics_are_named(bootstrap, topic_name):
    a = admin(bootstrap)
    ok("topic", "create", topic_name, "--bootstrap-server", bootstrap)
    wait_topic(a, topic_name, 1)
    gone = f"{topic_name}-nope"

    err = fails("topic", "describe", gone, "--bootstrap-server", bootstrap)
    assert err.strip() == f"error: topic {gone} does not exist", err
    err = fails("topic", "describe", topic_name, gone, f"{gone}2", "--bootstrap-server", bootstrap)
    assert f"topics {gone}, {gone}2 do not exist" in err, err
    err = fails("topic", "alter-config", gone, "--set", "retention.ms=1000", "--bootstrap-server", bootstrap)
    assert f"topic {gone} does not exist" in err, err
    err = fails("topic", "delete", gone, "--bootstrap-server", bootstrap)
    assert f"topic {gone} does not exist" in err, err
    assert gone not in topic_names(a), "describing an unknown topic does not create it"

    # Deleting an existing and a missing topic deletes the one and names the other.
    err = fails("topic", "delete", topic_name, gone, "--bootstrap-server", bootstrap)
    assert f"topic {gone} does not exist (deleted: {topic_name})" in err, err
    wait_gone(a, topic_name)


def test_add_partitions_grows_the_topic_for_describe_and_producers(bootstrap, topic_name):
    a = admin(bootstrap)
    ok("topic", "create", topic_name, "--partitions", "2", "--bootstrap-server", bootstrap)
    wait_topic(a, topic_name, 2)

    # --- 2 -> 4: one line; describe and librdkafka's metadata show 4 led partitions
    out = ok("topic", "add-partitions", topic_name, "--partitions", "4", "--bootstrap-server", bootstrap)
    assert out == f"Topic {topic_name} now has 4 partitions.\n"
    header = ok("topic", "describe", topic_name, "--bootstrap-server", bootstrap).splitlines()[0]
    assert "\tPartitionCount: 4\t" in header, header
    t = describe_json(bootstrap, topic_name)["topics"][0]
    assert t["partition_count"] == 4 and [p["partition"] for p in t["partitions"]] == [0, 1, 2, 3], t
    assert all(p["replicas"] == t["partitions"][0]["replicas"] for p in t["partitions"]), \
        "new partitions keep the replication factor"
    wait_topic(a, topic_name, 4)

    # --- a producer writes to a new partition; a consumer reads it back from there
    delivered = produce_all(producer(bootstrap), topic_name,
                            [{"value": b"into-3", "partition": 3}, {"value": b"into-0", "partition": 0}])
    assert [(m.partition(), m.offset()) for m in delivered] == [(3, 0), (0, 0)]
    got = consume(bootstrap, topic_name, partitions=(3,), expected=1)
    assert [(m.partition(), m.value()) for m in got] == [(3, b"into-3")]

    # --- JSON output
    grown = json.loads(ok("topic", "add-partitions", topic_name, "--partitions", "5", "--output", "json",
                          "--bootstrap-server", bootstrap))
    assert grown == {"topic": topic_name, "partitions": 5}
    wait_topic(a, topic_name, 5)


def test_add_partitions_errors_are_clear(bootstrap, topic_name):
    a = admin(bootstrap)
    ok("topic", "create", topic_name, "--partitions", "2", "--bootstrap-server", bootstrap)
    wait_topic(a, topic_name, 2)
    gone = f"{topic_name}-nope"

    err = fails("topic", "add-partitions", gone, "--partitions", "3", "--bootstrap-server", bootstrap)
    assert err.strip() == f"error: topic {gone} does not exist", err
    assert gone not in topic_names(a), "adding partitions to an unknown topic does not create it"

    # Not an increase: the broker's INVALID_PARTITIONS, with Kafka's message.
    err = fails("topic", "add-partitions", topic_name, "--partitions", "2", "--bootstrap-server", bootstrap)
    assert err.strip() == (f"error: cannot add partitions to topic {topic_name}: INVALID_PARTITIONS: "
                           "Topic already has 2 partition(s)."), err
    err = fails("topic", "add-partitions", topic_name, "--partitions", "1", "--bootstrap-server", bootstrap)
    assert err.strip() == (f"error: cannot add partitions to topic {topic_name}: INVALID_PARTITIONS: "
                           f"The topic {topic_name} currently has 2 partition(s); 1 would not be an increase."), err
    # Over the broker's limit of partitions per topic.
    err = fails("topic", "add-partitions", topic_name, "--partitions", "10001", "--bootstrap-server", bootstrap)
    assert f"cannot add partitions to topic {topic_name}: INVALID_PARTITIONS: " in err, err
    assert "10000" in err and "10001" in err, err

    # Bad arguments never reach the broker (clap's usage error, exit code 2).
    err = fails("topic", "add-partitions", topic_name, "--bootstrap-server", bootstrap, code=2)
    assert "--partitions <N>" in err, err
    for bad in ("0", "-1", "many", "3000000000"):
        err = fails("topic", "add-partitions", topic_name, f"--partitions={bad}", "--bootstrap-server", bootstrap,
                    code=2)
        assert f"invalid value '{bad}'" in err, err
    err = fails("topic", "add-partitions", "--partitions", "3", "--bootstrap-server", bootstrap, code=2)
    assert "<NAME>" in err, err

    assert describe_json(bootstrap, topic_name)["topics"][0]["partition_count"] == 2, "nothing changed"


def test_bootstrap_server_takes_a_list_and_uses_the_first_that_answers(bootstrap, topic_name):
    # A port nothing listens on: the CLI must fall through to the live broker, as Kafka's
    # tools do with `--bootstrap-server a,b`.
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    ok("topic", "create", topic_name, "--partitions", "2", "--bootstrap-server", f"{dead},{bootstrap}")
    assert describe_json(f"{dead}, {bootstrap}", topic_name)["topics"][0]["partition_count"] == 2
    err = fails("topic", "list", "--bootstrap-server", f"{dead},{dead}", "--timeout-ms", "2000")
    assert f"cannot connect to broker {dead}" in err, err
