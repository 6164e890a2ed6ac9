"""kafkajs (Node.js, its own protocol code): admin createTopics / offsets / deleteTopics and a
producer sendBatch; records are read back with confluent-kafka (kafkajs consumers need groups)."""

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from ckutil import admin, consume, replication_for, topic_names, wait_topic


@pytest.fixture
def bootstrap(bootstrap_both_shapes):
    """Every test here runs against one node and against a 3-node cluster."""
    return bootstrap_both_shapes

JS_DIR = Path(__file__).parent / "js"
NODE = shutil.which("node")


def kjs(bootstrap, topic, command, arg=None, timeout=60):
    assert NODE, "node is not installed"
    assert (JS_DIR / "node_modules" / "kafkajs").is_dir(), "kafkajs is not installed: run scripts/setup"
    env = dict(os.environ, KAFKAJS_NO_PARTITIONER_WARNING="1")
    if command == "create":
        arg = dict(arg or {}, replicationFactor=replication_for(bootstrap))
    cmd = [NODE, str(JS_DIR / "kjs.js"), bootstrap, topic, command] + ([json.dumps(arg)] if arg is not None else [])
    r = subprocess.run(cmd, capture_output=True, timeout=timeout, env=env, cwd=JS_DIR, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, (f"kjs.js {command} exited {r.returncode}\n"
                               f"stdout: {r.stdout.decode(errors='replace')}\nstderr: {r.stderr.decode(errors='replace')}")
    return json.loads(r.stdout)


def test_kafkajs_create_topic_and_metadata(bootstrap, topic_name):
    out = kjs(bootstrap, topic_name, "create", {"partitions": 3, "configs": {"retention.ms": "3600000"}})
    assert out["created"] is True
    (t,) = out["metadata"]
    assert t["name"] == topic_name
    assert sorted(p["partitionId"] for p in t["partitions"]) == [0, 1, 2]
    rf = replication_for(bootstrap)
    for p in t["partitions"]:
        assert len(set(p["replicas"])) == rf and p["leader"] in p["replicas"], p
        assert sorted(p["isr"]) == sorted(p["replicas"]), f"the ISR is every replica at creation: {p}"
    assert len({p["leader"] for p in t["partitions"]}) == rf, "leaders spread over the nodes"
    wait_topic(admin(bootstrap), topic_name, 3)
    # Creating again reports "not created" (TOPIC_ALREADY_EXISTS is swallowed by kafkajs).
    assert kjs(bootstrap, topic_name, "create", {"partitions": 3})["created"] is False


@pytest.mark.parametrize("compression,idempotent", [("None", False), ("GZIP", True)])
def test_kafkajs_send_batch_read_back(bootstrap, topic_name, compression, idempotent):
    kjs(bootstrap, topic_name, "create", {"partitions": 3})
    ts0 = int(time.time() * 1000) - 50_000
    msgs = [{"key": f"key-{i}", "value": f"value-{i}", "partition": i % 3,
             "headers": {"idx": str(i)}, "timestamp": str(ts0 + i)} for i in range(90)]
    res = kjs(bootstrap, topic_name, "produce", {"messages": msgs, "compression": compression,
                                                 "idempotent": idempotent})
    assert sorted((r["partition"], r["errorCode"], r["baseOffset"]) for r in res) == [(0, 0, 0), (1, 0, 0), (2, 0, 0)]

    offs = kjs(bootstrap, topic_name, "offsets", {"timestamp": ts0 + 30})
    assert sorted((o["partition"], o["low"], o["high"]) for o in offs["offsets"]) == [(0, 0, 30), (1, 0, 30), (2, 0, 30)]
    # Message 30 (partition 0, offset 10) has timestamp ts0+30; partitions 1 and 2 first reach it at offset 10 too.
    assert sorted((o["partition"], o["offset"]) for o in offs["byTimestamp"]) == [(0, 10), (1, 10), (2, 10)]

    for part in range(3):
        got = consume(bootstrap, topic_name, partitions=[part], expected=30)
        want = [m for m in msgs if m["partition"] == part]
        assert [(m.key(), m.value(), m.headers(), m.timestamp()[1]) for m in got] == [
            (w["key"].encode(), w["value"].encode(), [("idx", w["headers"]["idx"].encode())], int(w["timestamp"]))
            for w in want]


def test_kafkajs_delete_topic(bootstrap, topic_name):
    kjs(bootstrap, topic_name, "create", {"partitions": 1})
    out = kjs(bootstrap, topic_name, "delete")
    assert topic_name not in out["topics"]
    assert topic_name not in topic_names(admin(bootstrap))


def test_kafkajs_admin_partitions_configs_records_cluster(broker, topic_name):
    kjs(broker.bootstrap, topic_name, "create", {"partitions": 1})
    msgs = [{"value": f"v{i}", "partition": 0} for i in range(10)]
    kjs(broker.bootstrap, topic_name, "produce", {"messages": msgs})
    out = kjs(broker.bootstrap, topic_name, "adminMisc",
              {"partitions": 3, "retention": "5400000", "deleteBefore": {"0": 4}})
    assert out["partitions"] == [0, 1, 2]
    assert out["retention"] == [["retention.ms", "5400000"]]
    assert sorted((o["partition"], o["low"], o["high"]) for o in out["offsets"]) == [(0, 4, 10), (1, 0, 0), (2, 0, 0)]
    assert out["cluster"]["brokers"] == [[1, "127.0.0.1", broker.kafka_port]]
    assert out["cluster"]["controller"] == 1


@pytest.mark.timeout(120)
def test_kafkajs_idempotent_producer_across_restarts(broker_factory, topic_name):
    """kafkajs has its own idempotent producer (sequence numbers, retries): records it got
    acknowledged across SIGTERM and SIGKILL restarts are all there, once, in order."""
    from test_durability import read_partition
    b = broker_factory()
    kjs(b.bootstrap, topic_name, "create", {"partitions": 1})
    n = 1500
    env = dict(os.environ, KAFKAJS_NO_PARTITIONER_WARNING="1")
    proc = subprocess.Popen([NODE, str(JS_DIR / "kjs.js"), b.bootstrap, topic_name, "produceLoop",
                             json.dumps({"count": n})], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, cwd=JS_DIR, env=env)
    try:
        for graceful in (True, False, False):
            time.sleep(1.0)
            b.restart(graceful=graceful)
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, f"kjs.js produceLoop exited {proc.returncode}: {err.decode(errors='replace')[-3000:]}"
    res = json.loads(out)
    acked = res["acked"]
    print(f"{len(acked)} acknowledged, {len(res['failed'])} failed sends")
    assert len(acked) >= n // 2, f"only {len(acked)} of {n} sends acknowledged; failures: {res['failed'][:5]}"
    log = read_partition(b.bootstrap, topic_name, 0)
    values = [v for _, v in log]
    assert len(values) == len(set(values)), f"{len(values) - len(set(values))} duplicates in the log"
    assert values == sorted(values), "records out of order"
    by_offset = dict(log)
    lost = [(o, v) for o, v in acked if by_offset.get(o) != v.encode()]
    assert not lost, f"{len(lost)} acknowledged records missing or moved: {lost[:5]}"
