"""kcat: Debian's build links an older librdkafka (2.0.x) than confluent-kafka's, so it exercises
older request versions against the broker."""

import json
import shutil
import subprocess
import time

import pytest

import kproto
from ckutil import consume, create_topic, leader_of, produce_all, producer


@pytest.fixture
def bootstrap(bootstrap_both_shapes):
    """Every test here runs against one node and against a 3-node cluster."""
    return bootstrap_both_shapes

KCAT = shutil.which("kcat") or shutil.which("kafkacat")


def kcat(bootstrap, *args, stdin=None, timeout=30):
    assert KCAT, "kcat is not installed: run scripts/setup"
    r = subprocess.run([KCAT, "-b", bootstrap, *args], input=stdin if stdin is not None else b"",
                       capture_output=True, timeout=timeout)
    assert r.returncode == 0, f"kcat {' '.join(args)} exited {r.returncode}\nstderr: {r.stderr.decode(errors='replace')}"
    return r.stdout


def kcat_consume(bootstrap, topic, fmt, *extra):
    out = kcat(bootstrap, "-C", "-t", topic, "-e", "-o", "beginning", "-q", "-f", fmt, *extra)
    return out.decode()


def test_kcat_metadata(broker, topic_name):
    create_topic(broker.bootstrap, topic_name, partitions=2)
    md = json.loads(kcat(broker.bootstrap, "-L", "-J", "-t", topic_name))
    assert [(b["id"], b["name"]) for b in md["brokers"]] == [(1, broker.bootstrap)]
    assert md.get("controllerid") == 1
    (t,) = md["topics"]
    assert t["topic"] == topic_name and "error" not in t, t
    parts = sorted(t["partitions"], key=lambda p: p["partition"])
    assert [p["partition"] for p in parts] == [0, 1]
    for p in parts:
        assert p["leader"] == 1 and [r["id"] for r in p["replicas"]] == [1] and [r["id"] for r in p["isrs"]] == [1]


def test_kcat_produce_with_keys_and_consume_from_beginning(bootstrap, topic_name):
    create_topic(bootstrap, topic_name)
    lines = ["k1:v1", "k2:value with spaces", "no delimiter here", "k3:", ":empty key", "k4:v:with:colons"]
    kcat(bootstrap, "-P", "-t", topic_name, "-K:", stdin=("\n".join(lines) + "\n").encode())
    out = kcat_consume(bootstrap, topic_name, "%o|%K|%k|%S|%s\n")
    # %K / %S print the key / value lengths, -1 for null: a line without the delimiter has no key.
    expected = []
    for i, line in enumerate(lines):
        k, sep, v = line.partition(":")
        if not sep:
            k, v = None, line
        expected.append(f"{i}|{-1 if k is None else len(k)}|{k or ''}|{len(v)}|{v}")
    assert out.splitlines() == expected
    got = consume(bootstrap, topic_name, expected=6)
    assert got[2].key() is None and got[4].key() == b""


def test_kcat_headers(bootstrap, topic_name):
    create_topic(bootstrap, topic_name)
    kcat(bootstrap, "-P", "-t", topic_name, "-H", "trace=abc123", "-H", "dup=1", "-H", "dup=2",
         stdin=b"with headers\n")
    out = kcat_consume(bootstrap, topic_name, "%s|%h\n")
    assert out.splitlines() == ["with headers|trace=abc123,dup=1,dup=2"]
    (m,) = consume(bootstrap, topic_name, expected=1)
    assert m.headers() == [("trace", b"abc123"), ("dup", b"1"), ("dup", b"2")]


# librdkafka before 2.8 (Debian's kcat has 2.0.2) enables gzip/snappy only when the broker
# advertises Produce v2 (feature MsgVer1); Spate advertises Produce from v0 as Kafka 4 does for
# this reason (KAFKA-18659). LZ4 is enabled only when FindCoordinator is advertised.
@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_kcat_compression(bootstrap, topic_name, codec):
    create_topic(bootstrap, topic_name)
    values = [f"{codec} line {i} " + "abc" * 40 for i in range(200)]
    kcat(bootstrap, "-P", "-t", topic_name, "-X", f"compression.codec={codec}", "-X", "linger.ms=50",
         stdin=("\n".join(values) + "\n").encode())
    assert kcat_consume(bootstrap, topic_name, "%s\n").splitlines() == values
    with kproto.Conn(leader_of(bootstrap, topic_name)) as c:
        batches = kproto.fetch_all_batches(c, topic_name, 0)
    assert {b.codec for b in batches} == {codec}


def test_kcat_query_offsets_by_timestamp_and_start_at_timestamp(bootstrap, topic_name):
    create_topic(bootstrap, topic_name)
    ts0 = int(time.time() * 1000) - 60_000
    produce_all(producer(bootstrap), topic_name, [dict(value=b"m%d" % i, timestamp=ts0 + i * 1000) for i in range(6)])
    out = kcat(bootstrap, "-Q", "-t", f"{topic_name}:0:{ts0 + 2500}").decode()
    # kcat prints: "<topic> [0] offset 3"
    assert out.split() == [topic_name, "[0]", "offset", "3"], out
    got = kcat_consume(bootstrap, topic_name, "%o:%s\n", "-o", f"s@{ts0 + 4000}")
    assert got.splitlines() == ["4:m4", "5:m5"]
    got = kcat_consume(bootstrap, topic_name, "%o:%s\n", "-o", "-2")  # the last two
    assert got.splitlines() == ["4:m4", "5:m5"]
