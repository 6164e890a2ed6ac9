"""`spate group list` and `spate group describe` against a real broker, with a real
consumer group (confluent-kafka) to look at."""

import json
import os
import socket
import subprocess
import time

import pytest
from confluent_kafka import Consumer, TopicPartition

from ckutil import create_topic, produce_all, producer
from conftest import SPATE_BIN, free_port

GROUP = "g1"
PARTITIONS = 3
RECORDS = 30
CONSUMED = 10
CLIENT_ID = "cli-groups-e2e"


def spate(*args, env=None, timeout=30):
    """Runs the CLI; returns the CompletedProcess. No SPATE_* variable leaks in unless given."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SPATE_")}
    full_env.update(env or {})
    return subprocess.run([str(SPATE_BIN), *args], capture_output=True, text=True,
                          timeout=timeout, env=full_env)


def describe_json(bootstrap, group=GROUP):
    r = spate("group", "describe", group, "--bootstrap-server", bootstrap, "--output", "json")
    assert r.returncode == 0, f"describe failed ({r.returncode}): {r.stderr}"
    return json.loads(r.stdout)


def wait_for_state(bootstrap, state, timeout=20):
    deadline = time.monotonic() + timeout
    d = None
    while time.monotonic() < deadline:
        d = describe_json(bootstrap)
        if d["state"] == state:
            return d
        time.sleep(0.2)
    raise AssertionError(f"group {GROUP} not {state} after {timeout}s; last: {d}")


@pytest.fixture
def group_broker(broker_factory):
    return broker_factory(args=["--set", "group.initial.rebalance.delay.ms=0"])


def test_list_and_describe_a_live_then_empty_group(group_broker, topic_name):
    bootstrap = group_broker.bootstrap
    create_topic(bootstrap, topic_name, partitions=PARTITIONS)
    per_partition = RECORDS // PARTITIONS
    produce_all(producer(bootstrap), topic_name,
                [dict(value=b"v%d" % i, partition=i % PARTITIONS) for i in range(RECORDS)])

    # --- a consumer in g1 reads 10 records and commits synchronously; it stays subscribed
    c = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": GROUP,
        "client.id": CLIENT_ID,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "reconnect.backoff.max.ms": 1000,
        "fetch.wait.max.ms": 100,
    })
    closed = False
    try:
        c.subscribe([topic_name])
        consumed = {p: 0 for p in range(PARTITIONS)}
        got = 0
        deadline = time.monotonic() + 30
        while got < CONSUMED and time.monotonic() < deadline:
            msg = c.poll(0.5)
            if msg is None or msg.error():
                continue
            assert msg.offset() == consumed[msg.partition()], "records arrive in order per partition"
            consumed[msg.partition()] = msg.offset() + 1
            got += 1
        assert got == CONSUMED, f"consumed only {got} records in 30s"
        # Partitions not reached yet are committed at 0, so every partition has a committed offset.
        c.commit(offsets=[TopicPartition(topic_name, p, o) for p, o in consumed.items()],
                 asynchronous=False)
        committed = {tp.partition: tp.offset for tp in
                     c.committed([TopicPartition(topic_name, p) for p in range(PARTITIONS)], timeout=10)}
        assert committed == consumed

        # --- list: the group is there, Stable, of protocol type consumer
        r = spate("group", "list", "--bootstrap-server", bootstrap)
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        assert lines[0].split() == ["GROUP", "STATE", "PROTOCOL", "TYPE"], r.stdout
        rows = [line.split() for line in lines[1:]]
        assert [GROUP, "Stable", "consumer"] in rows, r.stdout

        r = spate("group", "list", "--output", "json", env={"SPATE_BOOTSTRAP_SERVER": bootstrap})
        assert r.returncode == 0, r.stderr
        assert {"group": GROUP, "state": "Stable", "protocol_type": "consumer"} in json.loads(r.stdout)["groups"]

        r = spate("group", "list", "--bootstrap-server", bootstrap, "--state", "empty", "--output", "json")
        assert r.returncode == 0, r.stderr
        assert GROUP not in [g["group"] for g in json.loads(r.stdout)["groups"]]
        r = spate("group", "list", "--bootstrap-server", bootstrap, "--state", "Stable,Empty", "--output", "json")
        assert GROUP in [g["group"] for g in json.loads(r.stdout)["groups"]], r.stdout

        # --- describe: state, member with its partitions, committed offsets, lag
        d = wait_for_state(bootstrap, "Stable")
        assert d["group"] == GROUP
        assert d["protocol_type"] == "consumer"
        assert d["protocol"], "the assignor is named"
        assert len(d["members"]) == 1, d["members"]
        member = d["members"][0]
        assert member["client_id"] == CLIENT_ID
        assert member["member_id"]
        assert member["group_instance_id"] is None
        assert sorted((a["topic"], a["partition"]) for a in member["assignment"]) == \
            [(topic_name, p) for p in range(PARTITIONS)]
        rows = [r for r in d["offsets"] if r["topic"] == topic_name]
        assert [r["partition"] for r in rows] == list(range(PARTITIONS))
        for row in rows:
            p = row["partition"]
            assert row["current_offset"] == committed[p], row
            assert row["log_end_offset"] == per_partition, row
            assert row["lag"] == per_partition - committed[p], row
            assert row["consumer_id"] == member["member_id"], row
        assert sum(r["lag"] for r in rows) == RECORDS - CONSUMED
        assert d["total_lag"] == RECORDS - CONSUMED

        r = spate("group", "describe", GROUP, "--bootstrap-server", bootstrap)
        assert r.returncode == 0, r.stderr
        assert "TOPIC" in r.stdout and "LOG-END-OFFSET" in r.stdout and "CONSUMER-ID" in r.stdout, r.stdout
        assert member["member_id"] in r.stdout

        # --- the consumer leaves: Empty, offsets and lag still shown, no consumer
        c.close()
        closed = True
        d = wait_for_state(bootstrap, "Empty")
        assert d["members"] == []
        rows = [r for r in d["offsets"] if r["topic"] == topic_name]
        assert [(r["current_offset"], r["lag"], r["consumer_id"]) for r in rows] == \
            [(committed[p], per_partition - committed[p], None) for p in range(PARTITIONS)]
        assert d["total_lag"] == RECORDS - CONSUMED
        r = spate("group", "describe", GROUP, "--bootstrap-server", bootstrap)
        assert r.returncode == 0, r.stderr
        assert f"Group {GROUP} has no active members." in r.stdout

        r = spate("group", "list", "--bootstrap-server", bootstrap, "--state", "Empty", "--output", "json")
        assert {"group": GROUP, "state": "Empty", "protocol_type": "consumer"} in json.loads(r.stdout)["groups"]
    finally:
        if not closed:
            c.close()


def test_describe_unknown_group_fails_clearly(group_broker):
    r = spate("group", "describe", "no-such-group", "--bootstrap-server", group_broker.bootstrap)
    assert r.returncode != 0
    assert "group no-such-group does not exist" in r.stderr
    assert r.stdout == ""


def test_unreachable_broker_fails_clearly_within_the_timeout():
    addr = f"127.0.0.1:{free_port()}"  # nobody listens there
    started = time.monotonic()
    r = spate("group", "list", "--bootstrap-server", addr, "--timeout-ms", "2000")
    assert r.returncode != 0
    assert f"cannot connect to broker {addr}" in r.stderr, r.stderr
    assert time.monotonic() - started < 5

    # A listener that accepts connections and never answers: the timeout ends it.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        addr = "127.0.0.1:%d" % silent.getsockname()[1]
        started = time.monotonic()
        r = spate("group", "describe", GROUP, "--bootstrap-server", addr, "--timeout-ms", "1000")
        elapsed = time.monotonic() - started
    assert r.returncode != 0
    assert "timed out after 1000 ms" in r.stderr and addr in r.stderr, r.stderr
    assert elapsed < 5, f"took {elapsed:.1f}s with --timeout-ms 1000"
