"""Hand-written requests over a socket: malformed frames, exact error codes, Fetch long-poll and
size limits, pipelining, idempotent sequences. After bad input the broker must close that one
connection (or answer with an error code) and keep serving everyone else."""

import os
import socket
import threading
import time

import pytest

import kproto
from kproto import Conn, i8, i16, i32, i64, string
from ckutil import create_topic
from test_groups import metric_sum


def assert_still_serving(broker):
    assert broker.running, "broker process died\n" + broker.stderr_tail()
    with Conn(broker.bootstrap) as c:
        keys = kproto.api_versions(c)
    for k in (kproto.PRODUCE, kproto.FETCH, kproto.METADATA, kproto.API_VERSIONS):
        assert k in keys, f"API key {k} missing from ApiVersions: {sorted(keys)}"


# ---- malformed frames -----------------------------------------------------------------------


def test_oversized_frame_closes_connection(broker):
    with Conn(broker.bootstrap) as c:
        # 100 MiB + 1 is over the default socket.request.max.bytes (104857600).
        c.send_raw(i32(104857600 + 1) + i16(kproto.API_VERSIONS) + i16(0) + i32(1))
        got = c.wait_closed()
        assert got == b"", f"broker answered an oversized frame with {got[:64]!r}"
    assert_still_serving(broker)


def test_socket_request_max_bytes_is_configurable(broker_factory):
    b = broker_factory(args=["--set", "socket.request.max.bytes=2000"])
    with Conn(b.bootstrap) as c:
        body = i32(10) + b"".join(string("t%04d-" % i + "x" * 200) for i in range(10))  # Metadata v1, ~2 KiB
        c.request(kproto.METADATA, 1, body, expect_response=False)
        assert c.wait_closed() == b""
    with Conn(b.bootstrap) as c:
        kproto.api_versions(c)  # small requests still fine


@pytest.mark.parametrize("size", [-1, -2147483648, 0])
def test_negative_or_zero_frame_length_closes_connection(broker, size):
    with Conn(broker.bootstrap) as c:
        c.send_raw(i32(size) + b"\x00" * 16)
        assert c.wait_closed() == b""
    assert_still_serving(broker)


@pytest.mark.parametrize("api_key", [999, 32767, -1])
def test_unknown_api_key_closes_connection(broker, api_key):
    with Conn(broker.bootstrap) as c:
        c.request(api_key, 0, b"", expect_response=False)
        assert c.wait_closed() == b""
    assert_still_serving(broker)


def test_unsupported_version_of_known_api_closes_connection(broker):
    with Conn(broker.bootstrap) as c:
        c.request(kproto.METADATA, 999, i32(-1), expect_response=False)
        assert c.wait_closed() == b""
    assert_still_serving(broker)


def test_api_versions_unsupported_version_gets_v0_error_response(broker):
    with Conn(broker.bootstrap) as c:
        # A client newer than the broker sends ApiVersions v99 with a flexible (v2) header and a
        # body the broker cannot know. Kafka answers in the v0 shape with UNSUPPORTED_VERSION and
        # its ApiVersions range, so the client can retry with a version both support.
        body = c.request(kproto.API_VERSIONS, 99, kproto.api_versions_v3_body(), flexible_header=True)
        err, keys = kproto.parse_api_versions_v0(body)
        assert err == kproto.UNSUPPORTED_VERSION
        assert kproto.API_VERSIONS in keys, f"error response must list ApiVersions' range: {keys}"
        lo, hi = keys[kproto.API_VERSIONS]
        assert lo == 0 and hi >= 3, f"ApiVersions range v{lo}-v{hi}"
        # The connection stays usable for the retry.
        kproto.api_versions(c)
    assert_still_serving(broker)


def test_api_versions_v3_flexible(broker):
    with Conn(broker.bootstrap) as c:
        body = c.request(kproto.API_VERSIONS, 3, kproto.api_versions_v3_body(), flexible_header=True)
    r = kproto.Reader(body)
    assert r.i16() == 0
    n = r.uvarint() - 1
    keys = {}
    for _ in range(n):
        k, lo, hi = r.i16(), r.i16(), r.i16()
        r.skip_tagged_fields()
        keys[k] = (lo, hi)
    r.i32()  # throttle
    with Conn(broker.bootstrap) as c:
        assert keys == kproto.api_versions(c), "v3 and v0 disagree on the supported versions"
    for k in (0, 1, 2, 3, 18, 19, 20, 21, 22, 32, 33, 37, 44, 60):
        assert k in keys, f"API key {k} not advertised; advertised: {sorted(keys)}"


def test_truncated_frame_then_eof_closes_connection(broker):
    with Conn(broker.bootstrap) as c:
        c.send_raw(i32(100) + i16(kproto.API_VERSIONS) + i16(0) + i32(7))  # 8 of 100 bytes
        c.sock.shutdown(socket.SHUT_WR)
        assert c.wait_closed() == b""
    assert_still_serving(broker)


def test_truncated_header_closes_connection(broker):
    with Conn(broker.bootstrap) as c:
        c.send_raw(i32(3) + b"\x00\x12\x00")  # a complete 3-byte frame: not even a request header
        assert c.wait_closed() == b""
    assert_still_serving(broker)


def test_truncated_body_closes_connection(broker):
    with Conn(broker.bootstrap) as c:
        # Metadata v1 whose topics array claims 5 names but the frame ends after the count.
        c.request(kproto.METADATA, 1, i32(5), expect_response=False)
        assert c.wait_closed() == b""
    assert_still_serving(broker)


def test_garbage_after_valid_request_closes_only_that_connection(broker):
    other = Conn(broker.bootstrap)
    try:
        kproto.api_versions(other)
        with Conn(broker.bootstrap) as c:
            c.send_raw(os.urandom(4) + os.urandom(64))
            try:
                c.wait_closed()
            except AssertionError:
                # Random length may be a plausible size the broker waits for: that's fine as long
                # as the other connection is unaffected.
                pass
        kproto.api_versions(other)
    finally:
        other.close()
    assert_still_serving(broker)


# ---- pipelining and acks=0 ------------------------------------------------------------------


def test_pipelined_requests_answered_in_order(bootstrap, topic_name):
    create_topic(bootstrap, topic_name)
    with Conn(bootstrap) as c:
        # A long-poll Fetch first: the later requests' responses must still come after it.
        reqs = [
            (kproto.FETCH, 4, i32(-1) + i32(500) + i32(1) + i32(1 << 20) + i8(0)
             + kproto.array([topic_name], lambda t: string(t) + kproto.array([0], lambda p: i32(p) + i64(0) + i32(1 << 20)))),
            (kproto.API_VERSIONS, 0, b""),
            (kproto.METADATA, 1, i32(-1)),
        ]
        frames = b""
        ids = []
        for key, ver, body in reqs:
            payload = c.header(key, ver) + body
            ids.append(c.correlation_id)
            frames += i32(len(payload)) + payload
        c.send_raw(frames)
        got = [kproto.Reader(c.recv_frame()).i32() for _ in reqs]
    assert got == ids


def test_acks0_produce_gets_no_response(bootstrap, topic_name):
    create_topic(bootstrap, topic_name)
    with Conn(bootstrap) as c:
        assert kproto.produce(c, topic_name, 0, kproto.record_batch([b"fire-and-forget"]), acks=0) is None
        acks0_id = c.correlation_id
        body = c.request(kproto.API_VERSIONS, 0, b"")  # asserts the next frame is this request's
        assert c.correlation_id == acks0_id + 1
        kproto.parse_api_versions_v0(body)
        # acks=0/1 records become visible once fsynced (the high watermark counts only durable
        # records); a waiting consumer makes the broker fsync at once, not at the flush interval.
        p = kproto.fetch(c, topic_name, 0, 0, max_wait_ms=10000, min_bytes=1)
    assert p["high_watermark"] == 1
    assert [r["value"] for b in kproto.parse_batches(p["records"]) for r in b.records] == [b"fire-and-forget"]


# ---- Produce errors -------------------------------------------------------------------------


def test_produce_error_codes(bootstrap, topic_name):
    create_topic(bootstrap, topic_name)
    good = kproto.record_batch([b"a", b"b"])
    with Conn(bootstrap) as c:
        assert kproto.produce(c, topic_name, 7, good)[0] == kproto.UNKNOWN_TOPIC_OR_PARTITION, "partition out of range"

        corrupt = bytearray(good)
        corrupt[-1] ^= 0xFF  # flip a bit in the last record: CRC no longer matches
        assert kproto.produce(c, topic_name, 0, bytes(corrupt))[0] == 2, "expected CORRUPT_MESSAGE (2)"

        body = (string(None) + i16(2) + i32(5000)
                + kproto.array([topic_name], lambda t: string(t) + kproto.array([0], lambda p: i32(p) + kproto.nbytes(good))))
        r = kproto.Reader(c.request(kproto.PRODUCE, 3, body))
        ((_, [(_, err, _, _)]),) = r.array(lambda r: (r.string(), r.array(lambda r: (r.i32(), r.i16(), r.i64(), r.i64()))))
        assert err == 21, f"acks=2: expected INVALID_REQUIRED_ACKS (21), got {err}"

        # Nothing above was written; a good batch lands at offset 0.
        assert kproto.produce(c, topic_name, 0, good) == (0, 0)


# ---- Fetch semantics ------------------------------------------------------------------------


def test_fetch_long_poll_waits_max_wait_when_no_data(bootstrap, topic_name):
    create_topic(bootstrap, topic_name)
    with Conn(bootstrap) as c:
        t = time.monotonic()
        p = kproto.fetch(c, topic_name, 0, 0, max_wait_ms=800, min_bytes=1)
        took = time.monotonic() - t
    assert p["error"] == 0 and not p["records"]
    assert 0.7 <= took < 5, f"empty long poll with max_wait 800 ms returned after {took:.3f}s"


def test_fetch_min_bytes_zero_returns_at_once(bootstrap, topic_name):
    create_topic(bootstrap, topic_name)
    with Conn(bootstrap) as c:
        t = time.monotonic()
        p = kproto.fetch(c, topic_name, 0, 0, max_wait_ms=5000, min_bytes=0)
        took = time.monotonic() - t
    assert p["error"] == 0
    assert took < 1.0, f"min_bytes=0 fetch waited {took:.3f}s"


def delayed_fetches(broker, fetcher="consumer"):
    """The broker's count of parked Fetch requests (`spate_kafka_delayed_fetches`; absent
    before the first one parks)."""
    return metric_sum(broker, "spate_kafka_delayed_fetches", fetcher=fetcher)


def wait_parked(broker, before, timeout=20):
    """Returns once the broker counts more parked consumer fetches than `before`: the long poll
    a test started is waiting, its watches in place, so what the test does next must wake it."""
    deadline = time.monotonic() + timeout
    while delayed_fetches(broker) <= before:
        assert time.monotonic() < deadline, f"no fetch parked within {timeout}s"
        time.sleep(0.02)


def test_fetch_long_poll_wakes_up_on_produce(broker, topic_name):
    bootstrap = broker.bootstrap
    create_topic(bootstrap, topic_name)
    result = {}

    def poll():
        with Conn(bootstrap, timeout=30) as c:
            result["p"] = kproto.fetch(c, topic_name, 0, 0, max_wait_ms=10_000, min_bytes=1)
            result["t"] = time.monotonic()

    before = delayed_fetches(broker)
    th = threading.Thread(target=poll)
    th.start()
    wait_parked(broker, before)
    with Conn(bootstrap) as c:
        produced_at = time.monotonic()
        assert kproto.produce(c, topic_name, 0, kproto.record_batch([b"wake up"])) == (0, 0)
    th.join(20)
    assert not th.is_alive()
    assert result["t"] - produced_at < 2.0, f"long poll returned {result['t'] - produced_at:.3f}s after the produce"
    recs = [r["value"] for b in kproto.parse_batches(result["p"]["records"]) for r in b.records]
    assert recs == [b"wake up"]


def test_a_long_poll_ends_with_its_connection(broker_factory, topic_name):
    """A client that closes its connection while its Fetch long-polls gets nothing more, and
    the broker lets the parked fetch go at once rather than at its max_wait (as Kafka closes
    the channel): the gauge of parked fetches drops back well within the 30 s asked for. Its
    own broker, so that no other client's fetch moves the gauge."""
    broker = broker_factory()
    bootstrap = broker.bootstrap
    create_topic(bootstrap, topic_name)
    before = delayed_fetches(broker)
    assert before == 0, "a fresh broker has no parked fetch"
    c = Conn(bootstrap, timeout=30)
    body = (i32(-1) + i32(30_000) + i32(1_000_000) + i32(1 << 20) + i8(0)
            + kproto.array([topic_name], lambda t: string(t) + kproto.array(
                [0], lambda p: i32(p) + i64(0) + i32(1 << 20))))
    c.request(kproto.FETCH, 4, body, expect_response=False)
    wait_parked(broker, before)
    assert delayed_fetches(broker) == 1
    closed = time.monotonic()
    c.close()
    deadline = closed + 10
    while delayed_fetches(broker) > 0:
        assert time.monotonic() < deadline, "the closed connection's long poll is still parked"
        time.sleep(0.02)
    assert_still_serving(broker)


def test_fetch_first_batch_larger_than_max_bytes_still_returned(bootstrap, topic_name):
    create_topic(bootstrap, topic_name)
    big = os.urandom(50_000)
    with Conn(bootstrap) as c:
        assert kproto.produce(c, topic_name, 0, kproto.record_batch([big])) == (0, 0)
        assert kproto.produce(c, topic_name, 0, kproto.record_batch([b"small"])) == (0, 1)
        # KIP-74: the first batch comes back whole even when over the limits, so consumers progress.
        p = kproto.fetch(c, topic_name, 0, 0, max_bytes=1000, partition_max_bytes=1000)
    assert p["error"] == 0
    batches = kproto.parse_batches(p["records"] or b"")
    assert batches and batches[0].base_offset == 0 and batches[0].records[0]["value"] == big


def test_fetch_respects_partition_max_bytes(bootstrap, topic_name):
    create_topic(bootstrap, topic_name)
    with Conn(bootstrap) as c:
        for i in range(5):
            assert kproto.produce(c, topic_name, 0, kproto.record_batch([os.urandom(10_000)])) == (0, i)
        p = kproto.fetch(c, topic_name, 0, 0, partition_max_bytes=25_000)
        assert len(p["records"]) <= 25_000, f"{len(p['records'])} bytes returned for partition_max_bytes 25000"
        assert [b.base_offset for b in kproto.parse_batches(p["records"])] == [0, 1]
        p = kproto.fetch(c, topic_name, 0, 0, max_bytes=35_000)
        assert len(p["records"]) <= 35_000
        assert [b.base_offset for b in kproto.parse_batches(p["records"])] == [0, 1, 2]
        p = kproto.fetch(c, topic_name, 0, 3)
        assert [b.base_offset for b in kproto.parse_batches(p["records"])] == [3, 4]
        assert p["high_watermark"] == 5


def test_fetch_errors(bootstrap, topic_name):
    create_topic(bootstrap, topic_name)
    with Conn(bootstrap) as c:
        assert kproto.produce(c, topic_name, 0, kproto.record_batch([b"x"])) == (0, 0)
        assert kproto.fetch(c, topic_name, 0, 1)["error"] == 0, "fetch at the log end is not an error"
        assert kproto.fetch(c, topic_name, 0, 2)["error"] == 1, "OFFSET_OUT_OF_RANGE past the log end"
        assert kproto.fetch(c, topic_name, 0, -5)["error"] == 1, "OFFSET_OUT_OF_RANGE for a negative offset"
        assert kproto.fetch(c, topic_name, 3, 0)["error"] == kproto.UNKNOWN_TOPIC_OR_PARTITION
        assert kproto.fetch(c, "no-such-topic-fetch", 0, 0)["error"] == kproto.UNKNOWN_TOPIC_OR_PARTITION


# ---- idempotent producer sequences ----------------------------------------------------------


def test_idempotent_sequences_duplicates_gaps_and_fencing(bootstrap, topic_name):
    create_topic(bootstrap, topic_name)
    with Conn(bootstrap) as c:
        err, pid, epoch = kproto.init_producer_id(c)
        assert err == 0 and pid >= 0 and epoch >= 0, (err, pid, epoch)
        err2, pid2, _ = kproto.init_producer_id(c)
        assert err2 == 0 and pid2 != pid, "each InitProducerId without a transactional id gets a new producer id"

        def send(seq, n, ep=epoch, p=pid):
            batch = kproto.record_batch([b"s%d" % (seq + i) for i in range(n)], producer_id=p,
                                        producer_epoch=ep, base_sequence=seq)
            return kproto.produce(c, topic_name, 0, batch)

        assert send(0, 3) == (0, 0)
        assert send(3, 2) == (0, 3)
        assert send(3, 2) == (0, 3), "a retried batch must be acknowledged with its original offset"
        assert send(0, 3) == (0, 0), "a retry of an older batch (within the last 5) too"
        assert send(8, 1)[0] == kproto.OUT_OF_ORDER_SEQUENCE_NUMBER, "sequence gap 5 -> 8"
        assert send(5, 1) == (0, 5)
        # A second producer interleaves; sequences are per producer.
        assert send(0, 1, p=pid2, ep=0) == (0, 6)
        # Epoch bump (a new epoch starts again at sequence 0), then the old epoch is fenced.
        assert send(0, 1, ep=epoch + 1) == (0, 7)
        err, _ = send(6, 1, ep=epoch)
        assert err in (kproto.INVALID_PRODUCER_EPOCH, kproto.PRODUCER_FENCED), f"stale epoch accepted (error {err})"

        batches = kproto.fetch_all_batches(c, topic_name, 0)
    values = [r["value"] for b in batches for r in b.records]
    assert values == [b"s0", b"s1", b"s2", b"s3", b"s4", b"s5", b"s0", b"s0"]


# ---- Metadata -------------------------------------------------------------------------------


def test_metadata_invalid_topic_name_and_no_auto_create_when_not_allowed(bootstrap, topic_name):
    with Conn(bootstrap) as c:
        md = kproto.metadata(c, ["bad/name", topic_name], allow_auto_topic_creation=False)
        assert md["bad/name"][0] == kproto.INVALID_TOPIC_EXCEPTION
        # The broker allows auto-creation, but this request does not (librdkafka consumers send
        # false by default): Kafka answers UNKNOWN_TOPIC_OR_PARTITION and creates nothing.
        assert md[topic_name][0] == kproto.UNKNOWN_TOPIC_OR_PARTITION
        md = kproto.metadata(c, None)
        assert topic_name not in md
        md = kproto.metadata(c, ["bad/name"], allow_auto_topic_creation=True)
        assert md["bad/name"][0] == kproto.INVALID_TOPIC_EXCEPTION
        md = kproto.metadata(c, [topic_name], allow_auto_topic_creation=True)
        assert md[topic_name][0] in (0, 5), f"auto-create answered {md[topic_name]}"  # 5: LEADER_NOT_AVAILABLE while creating
        host, port = bootstrap.rsplit(":", 1)
        assert [b[:3] for b in md[None]] == [(1, host, int(port))]


# ---- many requests, many connections --------------------------------------------------------


def test_five_hundred_pipelined_requests(broker):
    with Conn(broker.bootstrap, timeout=30) as c:
        frames = b""
        ids = []
        for _ in range(500):
            payload = c.header(kproto.API_VERSIONS, 0)
            ids.append(c.correlation_id)
            frames += i32(len(payload)) + payload
        c.send_raw(frames)
        got = []
        for _ in ids:
            frame = c.recv_frame()
            got.append(kproto.Reader(frame).i32())
            kproto.parse_api_versions_v0(frame[4:])
    assert got == ids


def fd_count(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_many_connections_are_served_and_released(broker_factory):
    b = broker_factory()
    with Conn(b.bootstrap) as c:
        kproto.api_versions(c)
    time.sleep(0.3)
    base = fd_count(b.proc.pid)
    conns = [Conn(b.bootstrap) for _ in range(300)]
    for i, c in enumerate(conns):
        if i % 3 == 0:
            kproto.api_versions(c)
        elif i % 3 == 1:
            c.send_raw(i32(50) + b"\x00\x12")  # a frame that never completes
        # else: idle
    assert fd_count(b.proc.pid) >= base + 250, "connections were not all accepted"
    with Conn(b.bootstrap) as c:
        kproto.api_versions(c)  # still serving with 300 open connections
    for c in conns:
        c.close()
    deadline = time.monotonic() + 10
    while fd_count(b.proc.pid) > base + 5 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert fd_count(b.proc.pid) <= base + 5, (
        f"{fd_count(b.proc.pid)} fds open 10 s after closing 300 connections (before: {base})")


def test_produce_base_offset_and_leader_epoch_are_assigned_by_the_broker(bootstrap, topic_name):
    create_topic(bootstrap, topic_name)
    batch = bytearray(kproto.record_batch([b"a", b"b"]))
    batch[0:8] = i64(12345)  # producers send 0; whatever they send, the broker assigns the offset
    with Conn(bootstrap) as c:
        assert kproto.produce(c, topic_name, 0, kproto.record_batch([b"first"])) == (0, 0)
        assert kproto.produce(c, topic_name, 0, bytes(batch)) == (0, 1)
        batches = kproto.fetch_all_batches(c, topic_name, 0)
    assert [b.base_offset for b in batches] == [0, 1]
    assert [r["offset"] for r in batches[1].records] == [1, 2]
    assert all(b.leader_epoch >= 0 for b in batches), "partitionLeaderEpoch must be set by the leader"
    assert all(b.crc_ok for b in batches)


def test_produce_batch_with_bad_inner_offsets_is_rejected(bootstrap, topic_name):
    create_topic(bootstrap, topic_name)
    good = kproto.record_batch([b"a", b"b", b"c"])
    # lastOffsetDelta claims 5 records while the batch holds 3 (the CRC is recomputed, so only
    # the batch's own consistency is wrong).
    body = bytearray(good[12 + 4 + 1 + 4:])  # from attributes on
    body[2:6] = i32(4)
    import struct
    bad = good[:12 + 4 + 1] + struct.pack(">I", kproto.crc32c(bytes(body))) + bytes(body)
    with Conn(bootstrap) as c:
        err, _ = kproto.produce(c, topic_name, 0, bad)
        assert err in (2, 87), f"expected CORRUPT_MESSAGE (2) or INVALID_RECORD (87), got {err}"
        assert kproto.produce(c, topic_name, 0, good) == (0, 0)


def test_fetch_min_bytes_waits_for_enough_data(broker, topic_name):
    bootstrap = broker.bootstrap
    create_topic(bootstrap, topic_name)
    with Conn(bootstrap) as c:
        assert kproto.produce(c, topic_name, 0, kproto.record_batch([b"x" * 100])) == (0, 0)
        t = time.monotonic()
        p = kproto.fetch(c, topic_name, 0, 0, max_wait_ms=700, min_bytes=100_000)
        took = time.monotonic() - t
    assert 0.6 <= took < 5, f"min_bytes not reached: should wait max_wait (0.7 s), took {took:.2f}s"
    assert len(kproto.parse_batches(p["records"])) == 1, "after max_wait the available data comes back"

    result = {}

    def poll():
        with Conn(bootstrap, timeout=30) as c2:
            result["p"] = kproto.fetch(c2, topic_name, 0, 0, max_wait_ms=10_000, min_bytes=20_000)
            result["t"] = time.monotonic()

    before = delayed_fetches(broker)
    th = threading.Thread(target=poll)
    th.start()
    wait_parked(broker, before)
    with Conn(bootstrap) as c:
        assert kproto.produce(c, topic_name, 0, kproto.record_batch([b"y" * 5_000])) == (0, 1)
        # An observation window: a fetch woken by this produce would return within it.
        time.sleep(0.5)
        assert th.is_alive(), "returned before min_bytes was reached"
        assert kproto.produce(c, topic_name, 0, kproto.record_batch([os.urandom(30_000)])) == (0, 2)
        produced = time.monotonic()
    th.join(15)
    assert result["t"] - produced < 2, "min_bytes reached, but the fetch kept waiting"
    assert [b.base_offset for b in kproto.parse_batches(result["p"]["records"])] == [0, 1, 2]


# ---- header and encoding details ------------------------------------------------------------


def test_null_client_id_and_unknown_tagged_fields_are_accepted(broker):
    with Conn(broker.bootstrap) as c:
        # Request header v1 with a null client id.
        c.correlation_id += 1
        payload = i16(kproto.API_VERSIONS) + i16(0) + i32(c.correlation_id) + i16(-1)
        c.send_raw(i32(len(payload)) + payload)
        frame = c.recv_frame()
        assert kproto.Reader(frame).i32() == c.correlation_id
        assert kproto.parse_api_versions_v0(frame[4:])[0] == 0

        # ApiVersions v3: a tagged field the broker does not know, in the header and in the body.
        tag = kproto.uvarint(1) + kproto.uvarint(99) + kproto.uvarint(3) + b"xyz"
        c.correlation_id += 1
        header = i16(kproto.API_VERSIONS) + i16(3) + i32(c.correlation_id) + string("e2e") + tag
        body = kproto.compact_string("spate-e2e") + kproto.compact_string("1.0") + tag
        c.send_raw(i32(len(header) + len(body)) + header + body)
        frame = c.recv_frame()
        r = kproto.Reader(frame)
        assert r.i32() == c.correlation_id
        assert r.i16() == 0, "unknown tagged fields must be skipped, not rejected"


def test_metadata_v0_empty_list_means_all_topics(bootstrap, topic_name):
    create_topic(bootstrap, topic_name)
    with Conn(bootstrap) as c:
        # v0: an empty topic array asks for every topic; v1+: null asks for all, empty for none.
        r = kproto.Reader(c.request(kproto.METADATA, 0, i32(0)))
        r.array(lambda r: (r.i32(), r.string(), r.i32()))
        names_v0 = [t[1] for t in r.array(lambda r: (r.i16(), r.string(), r.array(
            lambda r: (r.i16(), r.i32(), r.i32(), r.array(kproto.Reader.i32), r.array(kproto.Reader.i32)))))]
        assert topic_name in names_v0
        md = kproto.metadata(c, [], allow_auto_topic_creation=False)
        assert [k for k in md if k is not None] == [], "Metadata v4 with an empty list must return no topics"


def test_acks0_produce_error_closes_connection(bootstrap, topic_name):
    create_topic(bootstrap, topic_name)
    with Conn(bootstrap) as c:
        # No response can carry the error, so Kafka closes the connection to make the client notice.
        assert kproto.produce(c, topic_name, 9, kproto.record_batch([b"lost"]), acks=0) is None
        assert c.wait_closed() == b""


def test_message_max_bytes_boundary(broker_factory, topic_name):
    limit = 10_000
    b = broker_factory(args=["--set", f"message.max.bytes={limit}"])
    create_topic(b.bootstrap, topic_name)

    def batch_of_size(total):
        probe = kproto.record_batch([b""])
        return kproto.record_batch([b"x" * (total - len(probe) - 2)])  # value length varint grows by 1-2 bytes

    with Conn(b.bootstrap) as c:
        exact = batch_of_size(limit)
        while len(exact) > limit:
            exact = kproto.record_batch([b"x" * (len(kproto.parse_batches(exact)[0].records[0]["value"]) - 1)])
        while len(exact) < limit:
            exact = kproto.record_batch([b"x" * (len(kproto.parse_batches(exact)[0].records[0]["value"]) + 1)])
        assert len(exact) == limit
        assert kproto.produce(c, topic_name, 0, exact) == (0, 0), "a batch of exactly message.max.bytes is allowed"
        over = kproto.record_batch([b"x" * (len(kproto.parse_batches(exact)[0].records[0]["value"]) + 1)])
        assert len(over) == limit + 1
        assert kproto.produce(c, topic_name, 0, over)[0] == kproto.MESSAGE_TOO_LARGE


def test_socket_request_max_bytes_boundary(broker_factory):
    limit = 2000
    b = broker_factory(args=["--set", f"socket.request.max.bytes={limit}"])

    def metadata_frame(c, size):
        # Metadata v4 (allow_auto_topic_creation=false) naming one topic padded to `size` bytes.
        c.correlation_id += 1
        header = i16(kproto.METADATA) + i16(4) + i32(c.correlation_id) + string("e2e")
        fixed = len(header) + 4 + 2 + 1
        body = kproto.array(["n" + "x" * (size - fixed - 1)], string) + i8(0)
        payload = header + body
        assert len(payload) == size
        return i32(size) + payload

    with Conn(b.bootstrap) as c:
        c.send_raw(metadata_frame(c, limit))
        frame = c.recv_frame()
        assert kproto.Reader(frame).i32() == c.correlation_id, "a frame of exactly socket.request.max.bytes is served"
    with Conn(b.bootstrap) as c:
        c.send_raw(metadata_frame(c, limit + 1))
        assert c.wait_closed() == b""


def rss_bytes(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_client_that_never_reads_responses_does_not_grow_broker_memory(broker_factory, topic_name):
    b = broker_factory()
    create_topic(b.bootstrap, topic_name)
    with Conn(b.bootstrap) as c:
        for _ in range(4):
            assert kproto.produce(c, topic_name, 0, kproto.record_batch([os.urandom(250_000)]))[0] == 0
    base = rss_bytes(b.proc.pid)
    # Each Fetch below is answered with ~1 MB. A client that pipelines thousands and never reads
    # must be throttled by the broker (in-flight limit / backpressure), not buffered in memory.
    greedy = Conn(b.bootstrap, timeout=2)
    sent = 0
    try:
        body = (i32(-1) + i32(0) + i32(0) + i32(50 << 20) + i8(0)
                + kproto.array([topic_name], lambda t: string(t) + kproto.array([0], lambda p: i32(p) + i64(0) + i32(10 << 20))))
        for _ in range(3000):
            payload = greedy.header(kproto.FETCH, 4) + body
            greedy.send_raw(i32(len(payload)) + payload)
            sent += 1
    except (socket.timeout, TimeoutError):
        pass  # the broker stopped reading: backpressure, as it should
    time.sleep(2)
    grown = rss_bytes(b.proc.pid) - base
    print(f"sent {sent} Fetch requests before the broker stopped reading; RSS grew {grown >> 20} MiB")
    try:
        assert b.running
        with Conn(b.bootstrap) as c:
            kproto.api_versions(c)
        assert grown < 300 << 20, (f"broker RSS grew by {grown >> 20} MiB with {sent} unread ~1 MB Fetch "
                                   f"responses queued on one connection")
    finally:
        greedy.close()


def test_init_producer_id_v3_with_existing_producer(bootstrap):
    def init_v3(c, pid, epoch):
        body = kproto.uvarint(0) + i32(60000) + i64(pid) + i16(epoch) + kproto.uvarint(0)  # null transactional id
        r = kproto.Reader(c.request(kproto.INIT_PRODUCER_ID, 3, body, flexible_header=True))
        r.i32()
        return r.i16(), r.i64(), r.i16()

    with Conn(bootstrap) as c:
        kproto.require_version(c, kproto.INIT_PRODUCER_ID, 3)
        err, pid, epoch = init_v3(c, -1, -1)
        assert err == 0 and pid >= 0 and epoch >= 0
        # KIP-360: an idempotent producer re-initialising with its current id/epoch gets a fresh
        # identity (Kafka: a new producer id, epoch 0) so it can reset its sequences.
        err, pid2, epoch2 = init_v3(c, pid, epoch)
        assert err == 0 and (pid2, epoch2) != (pid, epoch)


def test_fetch_v5_reports_log_start_offset(bootstrap, topic_name):
    create_topic(bootstrap, topic_name)
    with Conn(bootstrap) as c:
        kproto.require_version(c, kproto.FETCH, 5)
        assert kproto.produce(c, topic_name, 0, kproto.record_batch([b"%d" % i for i in range(10)])) == (0, 0)
        assert kproto.delete_records(c, topic_name, 0, 4) == (0, 4)
        body = (i32(-1) + i32(0) + i32(0) + i32(1 << 20) + i8(0)
                + kproto.array([topic_name], lambda t: string(t) + kproto.array(
                    [0], lambda p: i32(p) + i64(4) + i64(-1) + i32(1 << 20))))
        r = kproto.Reader(c.request(kproto.FETCH, 5, body))
        r.i32()
        ((_, [p]),) = r.array(lambda r: (r.string(), r.array(lambda r: dict(
            partition=r.i32(), error=r.i16(), high_watermark=r.i64(), last_stable_offset=r.i64(),
            log_start_offset=r.i64(), aborted=r.array(lambda r: (r.i64(), r.i64())), records=r.nbytes()))))
    assert (p["error"], p["high_watermark"], p["last_stable_offset"], p["log_start_offset"]) == (0, 10, 10, 4)
    records = [r["offset"] for b in kproto.parse_batches(p["records"]) for r in b.records]
    assert 4 in records and records[-1] == 9


def test_produce_errors_are_per_partition(bootstrap, topic_name):
    create_topic(bootstrap, topic_name, partitions=2)
    unknown = topic_name + "-never-created"
    batch = kproto.record_batch([b"v"])
    body = (string(None) + i16(-1) + i32(10000) + kproto.array(
        [(topic_name, [0, 7, 1]), (unknown, [0])],
        lambda t: string(t[0]) + kproto.array(t[1], lambda p: i32(p) + kproto.nbytes(batch))))
    with Conn(bootstrap) as c:
        r = kproto.Reader(c.request(kproto.PRODUCE, 3, body))
        topics = r.array(lambda r: (r.string(), r.array(lambda r: (r.i32(), r.i16(), r.i64(), r.i64()))))
        got = {(t, p): (err, off) for t, parts in topics for p, err, off, _ in parts}
        assert got[(topic_name, 0)] == (0, 0)
        assert got[(topic_name, 1)] == (0, 0)
        assert got[(topic_name, 7)][0] == kproto.UNKNOWN_TOPIC_OR_PARTITION
        # Produce does not auto-create (Kafka creates topics from Metadata requests only).
        assert got[(unknown, 0)][0] == kproto.UNKNOWN_TOPIC_OR_PARTITION
        assert unknown not in kproto.metadata(c, None)


@pytest.mark.parametrize("acks", [1, -1])
def test_pipelined_produces_are_appended_in_request_order(bootstrap, topic_name, acks):
    """Clients with several requests in flight on one connection (librdkafka's
    max.in.flight) rely on the broker appending them in the order they were sent."""
    create_topic(bootstrap, topic_name)
    n = 400
    with Conn(bootstrap, timeout=30) as c:
        frames = b""
        ids = []
        for i in range(n):
            batch = kproto.record_batch([b"%04d" % i])
            body = (string(None) + i16(acks) + i32(10000) + kproto.array(
                [topic_name], lambda t: string(t) + kproto.array([0], lambda p: i32(p) + kproto.nbytes(batch))))
            if i % 50 == 25:  # other requests in between
                payload = c.header(kproto.API_VERSIONS, 0)
                ids.append((c.correlation_id, None))
                frames += i32(len(payload)) + payload
            payload = c.header(kproto.PRODUCE, 3) + body
            ids.append((c.correlation_id, i))
            frames += i32(len(payload)) + payload
        c.send_raw(frames)
        offsets = {}
        for cid, i in ids:
            frame = c.recv_frame()
            r = kproto.Reader(frame)
            assert r.i32() == cid, "responses out of order"
            if i is not None:
                ((_, [(_, err, off, _)]),) = r.array(
                    lambda r: (r.string(), r.array(lambda r: (r.i32(), r.i16(), r.i64(), r.i64()))))
                assert err == 0
                offsets[i] = off
        assert [offsets[i] for i in range(n)] == list(range(n)), "appends reordered within one connection"
        # acks=1 records are visible once fsynced: wait (long poll) for the last one.
        last = kproto.fetch(c, topic_name, 0, n - 1, max_wait_ms=10000, min_bytes=1)
        assert last["high_watermark"] == n, last["high_watermark"]
        values = [r["value"] for b in kproto.fetch_all_batches(c, topic_name, 0) for r in b.records]
    assert values == [b"%04d" % i for i in range(n)]


def _fetch_requests(broker):
    _, _, text = broker.http_get("/metrics")
    for line in text.splitlines():
        if line.startswith("spate_kafka_requests_total{") and 'api="Fetch"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_parked_fetch_wakes_up_on_an_acks_1_produce(broker_factory, topic_name):
    # An acks=1 record becomes visible once fsynced. With a one-minute flush interval, only the
    # parked consumer fetch noticing the new log end can ask for that fsync in time.
    b = broker_factory(args=["--set", "log.flush.interval.ms=60000"])
    create_topic(b.bootstrap, topic_name)
    result = {}
    before = _fetch_requests(b)

    def poll():
        with Conn(b.bootstrap, timeout=60) as c:
            result["p"] = kproto.fetch(c, topic_name, 0, 0, max_wait_ms=20_000, min_bytes=1)
            result["t"] = time.monotonic()

    th = threading.Thread(target=poll)
    th.start()
    deadline = time.monotonic() + 10
    while _fetch_requests(b) <= before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _fetch_requests(b) > before, "the fetch never reached the broker"
    with Conn(b.bootstrap) as c:
        produced_at = time.monotonic()
        assert kproto.produce(c, topic_name, 0, kproto.record_batch([b"acks one"]), acks=1) == (0, 0)
    th.join(40)
    assert not th.is_alive()
    waited = result["t"] - produced_at
    assert waited < 10, f"the parked fetch returned {waited:.1f}s after the produce (max wait 20 s)"
    recs = [r["value"] for b_ in kproto.parse_batches(result["p"]["records"]) for r in b_.records]
    assert recs == [b"acks one"]
