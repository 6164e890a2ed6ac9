"""The process contract: HTTP endpoints, listener log lines, signals, config precedence."""

import os
import re
import signal
import subprocess
import time

import pytest

from confluent_kafka import TopicPartition

import kproto
from ckutil import admin, consumer, produce_all, producer, wait_topic
from conftest import SPATE_BIN
from test_protocol_raw import delayed_fetches, wait_parked

PROM_SAMPLE = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{.*\})?\s+\S+(\s+-?\d+)?$')
SAMPLE_PARTS = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)')
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
DEFAULT_NODE_ID = "1"  # node.id's default


def test_health(broker):
    status, _, _ = broker.http_get("/health")
    assert status == 200


def test_metrics_is_prometheus_text(broker, topic_name):
    produce_all(producer(broker.bootstrap), topic_name, [dict(value=b"m")])  # some traffic to count
    status, ctype, body = broker.http_get("/metrics")
    assert status == 200
    assert ctype.startswith("text/plain"), f"Content-Type {ctype!r}"
    samples = []
    for line in body.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        assert PROM_SAMPLE.match(line), f"not a Prometheus sample line: {line!r}"
        samples.append(line)
    assert samples, "no samples in /metrics after produce traffic"
    # A single node is labelled too, with the default node.id.
    for name, labels, _ in parse_samples(body):
        assert labels.get("node") == DEFAULT_NODE_ID, f"{name}{labels} has no node=\"{DEFAULT_NODE_ID}\" label"


def parse_samples(body):
    """[(name, labels dict, value)] of every sample line of Prometheus text."""
    out = []
    for line in body.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        m = SAMPLE_PARTS.match(line)
        assert m, f"not a Prometheus sample line: {line!r}"
        labels = LABEL.findall(m.group(2) or "")
        keys = [k for k, _ in labels]
        assert len(keys) == len(set(keys)), f"a label is repeated: {line!r}"
        out.append((m.group(1), dict(labels), float(m.group(3))))
    return out


def requests_by_api(b):
    """{api label: spate_kafka_requests_total} and the node labels seen on them."""
    status, _, body = b.http_get("/metrics")
    assert status == 200
    counts, nodes = {}, set()
    for name, labels, value in parse_samples(body):
        if name == "spate_kafka_requests_total":
            counts[labels.get("api")] = value
            nodes.add(labels.get("node"))
    return counts, nodes


def test_metrics_label_node_id_and_group_apis(broker_factory, topic_name):
    """Every sample carries node="<node.id>"; group APIs count under their own api label."""
    b = broker_factory(args=["--node-id", "7", "--set", "group.initial.rebalance.delay.ms=0"])
    produce_all(producer(b.bootstrap), topic_name, [dict(value=b"g")])
    c = consumer(b.bootstrap, **{"group.id": f"metrics-{topic_name}", "enable.partition.eof": False,
                                 "auto.offset.reset": "earliest"})
    try:
        c.subscribe([topic_name])  # FindCoordinator, JoinGroup, SyncGroup, OffsetFetch
        deadline = time.monotonic() + 20
        msg = None
        while msg is None or msg.error():
            assert time.monotonic() < deadline, "the subscribed consumer got no record within 20s"
            msg = c.poll(0.5)
        c.commit(offsets=[TopicPartition(topic_name, 0, msg.offset() + 1)], asynchronous=False)
    finally:
        c.close()  # LeaveGroup

    counts, nodes = requests_by_api(b)
    assert nodes == {"7"}, f"spate_kafka_requests_total node labels: {nodes}"
    for api in ("FindCoordinator", "JoinGroup", "SyncGroup", "OffsetFetch", "OffsetCommit", "LeaveGroup",
                "Produce", "Fetch", "Metadata", "ApiVersions"):
        assert counts.get(api, 0) >= 1, f"no spate_kafka_requests_total{{api=\"{api}\"}}: {counts}"
    assert not {"other", "unknown"} & counts.keys(), f"requests counted without their API name: {counts}"

    status, _, body = b.http_get("/metrics")
    assert status == 200
    samples = parse_samples(body)
    unlabelled = [(n, l) for n, l, _ in samples if l.get("node") != "7"]
    assert not unlabelled, f"samples without node=\"7\": {unlabelled[:10]}"
    # Hand-rendered group gauges are labelled like the rest.
    assert any(n == "spate_consumer_group_committed_offset" for n, _, _ in samples), \
        "no spate_consumer_group_committed_offset after a commit"
    durations = {l.get("api") for n, l, _ in samples if n.startswith("spate_kafka_request_duration_seconds")}
    assert {"JoinGroup", "FindCoordinator"} <= durations, f"request durations by api: {sorted(durations)}"


def metric_values(broker):
    status, _, body = broker.http_get("/metrics")
    assert status == 200
    out = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            name_labels, _, value = line.rpartition(" ")
            try:
                out[name_labels] = float(value)
            except ValueError:
                pass
    return out


def test_metrics_move_with_traffic(broker_factory, topic_name):
    b = broker_factory()
    produce_all(producer(b.bootstrap), topic_name, [dict(value=b"warm-up")])
    before = metric_values(b)
    produce_all(producer(b.bootstrap), topic_name, [dict(value=b"x" * 1000) for _ in range(200)])
    after = metric_values(b)
    grown = sorted(k for k, v in after.items() if v > before.get(k, 0))
    assert grown, "no metric changed after 200 records (~200 KB) were produced"
    assert any(("produce" in k.lower() or "bytes" in k.lower() or "records" in k.lower()) for k in grown), (
        f"nothing about produced records/bytes moved; changed: {grown[:20]}")


def test_unknown_http_path_is_404(broker):
    assert broker.http_get("/no-such-path")[0] == 404


def test_one_log_line_per_listener(broker_factory):
    b = broker_factory()
    text = b.stderr_text()
    kafka_lines = [l for l in text.splitlines() if b.bootstrap in l]
    http_lines = [l for l in text.splitlines() if f"127.0.0.1:{b.http_port}" in l]
    assert kafka_lines, f"no stderr line names the Kafka listener {b.bootstrap}:\n{text}"
    assert http_lines, f"no stderr line names the HTTP listener 127.0.0.1:{b.http_port}:\n{text}"


def test_sigint_clean_shutdown(broker_factory):
    b = broker_factory()
    b.stop(sig=signal.SIGINT)  # asserts exit code 0 within 15 s


def test_sigterm_with_open_connections_and_long_poll(broker_factory, topic_name):
    b = broker_factory()
    a = admin(b.bootstrap)
    produce_all(producer(b.bootstrap), topic_name, [dict(value=b"x")])
    wait_topic(a, topic_name, 1)
    idle = kproto.Conn(b.bootstrap)
    kproto.api_versions(idle)
    poller = kproto.Conn(b.bootstrap, timeout=30)
    # A long poll that would outlive the shutdown deadline if the broker waited for it.
    body = (kproto.i32(-1) + kproto.i32(60_000) + kproto.i32(1) + kproto.i32(1 << 20) + kproto.i8(0)
            + kproto.array([topic_name], lambda t: kproto.string(t) + kproto.array(
                [0], lambda p: kproto.i32(p) + kproto.i64(1) + kproto.i32(1 << 20))))
    before = delayed_fetches(b)
    poller.request(kproto.FETCH, 4, body, expect_response=False)
    wait_parked(b, before)
    t = time.monotonic()
    try:
        b.stop()
    finally:
        idle.close()
        poller.close()
    assert time.monotonic() - t < 15


def created_partitions(b, topic):
    """Auto-create `topic` (a Metadata request with allow_auto_topic_creation) and return its partition count."""
    a = admin(b.bootstrap)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        t = a.list_topics(topic=topic, timeout=10).topics.get(topic)
        if t is not None and t.error is None and t.partitions:
            return len(t.partitions)
        time.sleep(0.2)
    raise AssertionError(f"{topic} was not auto-created")


def test_config_precedence_set_over_env_over_file(broker_factory):
    toml = '"num.partitions" = 2\n'
    b = broker_factory(config=toml)
    assert created_partitions(b, "from-file") == 2
    b.stop()
    b = broker_factory(config=toml, env={"SPATE_NUM_PARTITIONS": "3"})
    assert created_partitions(b, "from-env") == 3
    b.stop()
    b = broker_factory(config=toml, env={"SPATE_NUM_PARTITIONS": "3"}, args=["--set", "num.partitions=4"])
    assert created_partitions(b, "from-set") == 4


def test_invalid_config_value_refuses_to_start(tmp_path):
    r = subprocess.run([str(SPATE_BIN), "serve", "--data-dir", str(tmp_path / "d"),
                        "--kafka-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
                        "--set", "num.partitions=not-a-number"],
                       capture_output=True, timeout=15)
    assert r.returncode != 0, "started with num.partitions=not-a-number"
    assert b"num.partitions" in r.stderr, f"error does not name the bad setting: {r.stderr[-2000:]!r}"


def test_second_broker_on_same_data_dir_refuses_to_start(broker_factory):
    a = broker_factory()
    b = broker_factory(start=False)
    b.data_dir = a.data_dir  # same directory, different ports
    r = subprocess.run(b.command(), capture_output=True, timeout=20)
    assert r.returncode != 0, "a second broker started on a data dir in use (Kafka refuses: .lock)"
    assert a.running
    with kproto.Conn(a.bootstrap) as c:
        kproto.api_versions(c)


def test_kafka_port_in_use_fails_fast(broker_factory):
    a = broker_factory()
    b = broker_factory(start=False)
    b.kafka_port = a.kafka_port
    r = subprocess.run(b.command(), capture_output=True, timeout=20)
    assert r.returncode != 0
    assert str(a.kafka_port).encode() in r.stderr, f"error does not name the address: {r.stderr[-2000:]!r}"


# (An unknown SPATE_* environment variable is not tested: which variables are settings cannot be
# told apart from other SPATE_* variables such as SPATE_LOG.)
@pytest.mark.parametrize("how", ["set", "toml"])
def test_unknown_setting_refuses_to_start(tmp_path, how):
    cmd = [str(SPATE_BIN), "serve", "--data-dir", str(tmp_path / "d"),
           "--kafka-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPATE_")}
    if how == "set":
        cmd += ["--set", "no.such.setting=1"]
    else:
        (tmp_path / "c.toml").write_text('"no.such.setting" = 1\n')
        cmd += ["--config", str(tmp_path / "c.toml")]
    try:
        r = subprocess.run(cmd, capture_output=True, timeout=15, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail(f"started with an unknown setting ({how})")
    assert r.returncode != 0
    assert b"no.such.setting" in r.stderr.lower() or b"no_such_setting" in r.stderr.lower(), r.stderr[-1000:]


def test_data_dir_with_spaces_and_unicode(broker_factory, topic_name):
    b = broker_factory(subdir="dir with spaces ünïcødé")
    produce_all(producer(b.bootstrap), topic_name, [dict(value=b"ok")])
    b.restart()
    from ckutil import consume
    assert [m.value() for m in consume(b.bootstrap, topic_name, expected=1)] == [b"ok"]
