"""Restart and crash durability: what the broker acknowledged must be there after SIGTERM or
SIGKILL, in order, exactly once; topic metadata and idempotent producer state too."""

import os
import random
import threading
import time
from pathlib import Path

import pytest
from confluent_kafka import TopicPartition
from confluent_kafka.admin import ConfigResource, OffsetSpec, ResourceType

import kproto
from ckutil import admin, consume, create_topic, produce_all, producer, topic_names, wait_topic


def read_partition(bootstrap, topic, partition):
    """[(offset, value)] of the whole partition: raw Fetch (no client-side dedup) for
    uncompressed batches, confluent-kafka when any batch is compressed."""
    with kproto.Conn(bootstrap, timeout=30) as c:
        batches = kproto.fetch_all_batches(c, topic, partition)
    assert all(b.crc_ok for b in batches), f"{topic}/{partition}: a batch has a bad CRC"
    if any(b.records is None for b in batches):
        expected = sum(b.count for b in batches)
        start = batches[0].base_offset if batches else 0
        return [(m.offset(), m.value()) for m in consume(bootstrap, topic, partitions=[partition], start=start,
                                                         expected=expected, timeout=40)]
    return [(r["offset"], r["value"]) for b in batches for r in b.records]


def test_restart_after_sigterm_keeps_acked_data(broker_factory, topic_name):
    b = broker_factory()
    create_topic(b.bootstrap, topic_name, partitions=3)
    n = 3000
    sent = [dict(partition=i % 3, key=b"k%d" % i, value=b"v%d" % i) for i in range(n)]
    produce_all(producer(b.bootstrap, acks="all"), topic_name, sent)

    b.restart()  # SIGTERM: asserts exit code 0, then starts on the same dir and ports

    for part in range(3):
        got = consume(b.bootstrap, topic_name, partitions=[part], expected=n // 3)
        assert [(m.offset(), m.key(), m.value()) for m in got] == [
            (j, s["key"], s["value"]) for j, s in enumerate(x for x in sent if x["partition"] == part)]
    # Appends continue where the log ended.
    more = produce_all(producer(b.bootstrap, acks="all"), topic_name, [dict(partition=p, value=b"after") for p in range(3)])
    assert sorted((m.partition(), m.offset()) for m in more) == [(0, 1000), (1, 1000), (2, 1000)]


def test_sigkill_right_after_acks_all_keeps_acked_data(broker_factory, topic_name):
    b = broker_factory()
    create_topic(b.bootstrap, topic_name, partitions=2)
    sent = [dict(partition=i % 2, value=b"%d" % i) for i in range(2000)]
    delivered = produce_all(producer(b.bootstrap, acks="all", **{"linger.ms": 1}), topic_name, sent)
    b.kill9()  # acks=all is answered after fsync: nothing acknowledged may be lost
    b.start()
    for part in range(2):
        want = [(m.offset(), m.value()) for m in delivered if m.partition() == part]
        assert read_partition(b.bootstrap, topic_name, part) == want


def test_topic_metadata_survives_restart(broker_factory, topic_name):
    b = broker_factory()
    a = create_topic(b.bootstrap, topic_name, partitions=2, config={"retention.ms": "123456789"})
    gone = topic_name + "-deleted"
    create_topic(b.bootstrap, gone)
    assert a.delete_topics([gone], request_timeout=20)[gone].result(timeout=20) is None
    produce_all(producer(b.bootstrap), topic_name, [dict(partition=0, value=b"%d" % i) for i in range(10)])
    tp = TopicPartition(topic_name, 0, 3)
    assert a.delete_records([tp], request_timeout=20)[tp].result(timeout=20).low_watermark == 3

    for graceful in (True, False):
        b.restart(graceful=graceful)
        a = admin(b.bootstrap)
        names = topic_names(a)
        assert topic_name in names and gone not in names, f"after restart (graceful={graceful}): {sorted(names)}"
        wait_topic(a, topic_name, 2)
        res = ConfigResource(ResourceType.TOPIC, topic_name)
        entries = a.describe_configs([res], request_timeout=20)[res].result(timeout=20)
        assert entries["retention.ms"].value == "123456789"
        tp0 = TopicPartition(topic_name, 0)
        assert a.list_offsets({tp0: OffsetSpec.earliest()}, request_timeout=20)[tp0].result(timeout=20).offset == 3, \
            "DeleteRecords' log start offset lost on restart"
        assert a.list_offsets({tp0: OffsetSpec.latest()}, request_timeout=20)[tp0].result(timeout=20).offset == 10


@pytest.mark.parametrize("graceful", [True, False], ids=["sigterm", "sigkill"])
def test_idempotent_producer_state_survives_restart(broker_factory, topic_name, graceful):
    b = broker_factory()
    create_topic(b.bootstrap, topic_name)
    with kproto.Conn(b.bootstrap) as c:
        err, pid, epoch = kproto.init_producer_id(c)
        assert err == 0

    def send(c, seq, n):
        batch = kproto.record_batch([b"s%d" % (seq + i) for i in range(n)], producer_id=pid,
                                    producer_epoch=epoch, base_sequence=seq)
        return kproto.produce(c, topic_name, 0, batch)

    with kproto.Conn(b.bootstrap) as c:
        assert send(c, 0, 3) == (0, 0)
        assert send(c, 3, 2) == (0, 3)

    b.restart(graceful=graceful)

    with kproto.Conn(b.bootstrap) as c:
        assert send(c, 3, 2) == (0, 3), "retry of the last batch after restart must be deduplicated"
        assert send(c, 5, 1) == (0, 5), "the producer's sequence must continue after restart"
        assert send(c, 9, 1)[0] == kproto.OUT_OF_ORDER_SEQUENCE_NUMBER, "gap after restart must be detected"
    assert [v for _, v in read_partition(b.bootstrap, topic_name, 0)] == [b"s%d" % i for i in range(6)]


def test_torn_tail_after_crash_is_truncated(broker_factory, topic_name):
    b = broker_factory()
    create_topic(b.bootstrap, topic_name)
    delivered = produce_all(producer(b.bootstrap, acks="all"), topic_name, [dict(value=b"%d" % i) for i in range(100)])
    b.kill9()
    logs = [p for p in Path(b.data_dir).rglob("*.log") if topic_name in str(p)]
    # The layout is ours (logs/<topic>-<partition>/<base>.log): a missing segment is a bug.
    assert logs, f"no *.log segment file for {topic_name} under {b.data_dir}"
    newest = max(logs, key=lambda p: (p.stat().st_mtime, p.name))
    with open(newest, "ab") as f:
        # A torn write: a batch header announcing 500 bytes, then only part of it.
        f.write(kproto.i64(100) + kproto.i32(500) + os.urandom(100))
    b.start()
    assert read_partition(b.bootstrap, topic_name, 0) == [(m.offset(), m.value()) for m in delivered]
    assert produce_all(producer(b.bootstrap), topic_name, [dict(value=b"next")])[0].offset() == 100
    assert read_partition(b.bootstrap, topic_name, 0)[-1] == (100, b"next")


@pytest.mark.timeout(150)
@pytest.mark.parametrize("segment_bytes,codec", [(None, "none"), (32768, "none"), (32768, "gzip")],
                         ids=["default-segments", "32KiB-segments", "32KiB-segments-gzip"])
def test_crash_loop_acked_records_survive_exactly_once_in_order(broker_factory, topic_name, segment_bytes, codec):
    seed = int(os.environ.get("E2E_SEED", time.time_ns() % 2**32))
    rng = random.Random(seed)
    print(f"crash test seed {seed} (set E2E_SEED={seed} to replay the kill timings)")
    b = broker_factory()
    parts = 3
    # Tiny segments make the kills land around segment rolls too.
    create_topic(b.bootstrap, topic_name, partitions=parts,
                 config={"segment.bytes": str(segment_bytes)} if segment_bytes else None)

    acked = {p: [] for p in range(parts)}      # partition -> [(offset, value)]
    failed = []                                # (value, error)
    fatal = []
    stop = threading.Event()
    lock = threading.Lock()

    def writer(part):
        try:
            write(part)
        except BaseException as e:  # surfaced by the assertions below
            fatal.append((part, repr(e)))

    def write(part):
        def on_error(err):
            if err.fatal():
                fatal.append((part, str(err)))
        p = producer(b.bootstrap, **{
            "acks": "all", "enable.idempotence": True, "linger.ms": 5, "compression.type": codec,
            "message.timeout.ms": 60000, "reconnect.backoff.ms": 50, "reconnect.backoff.max.ms": 300,
            "retry.backoff.ms": 50, "retry.backoff.max.ms": 300, "error_cb": on_error})

        def cb(err, msg):
            with lock:
                if err is None:
                    acked[part].append((msg.offset(), msg.value()))
                else:
                    failed.append((msg.value(), str(err)))

        seq = 0
        while not stop.is_set() and not fatal:
            if len(p) > 2000:
                p.poll(0.05)
                continue
            p.produce(topic_name, value=b"w%d-%07d" % (part, seq), partition=part, on_delivery=cb)
            seq += 1
            p.poll(0)
            if seq % 50 == 0:
                time.sleep(0.005)
        left = p.flush(45)
        if left:
            failed.append((f"writer {part}", f"{left} messages undelivered at the end"))

    threads = [threading.Thread(target=writer, args=(i,), daemon=True) for i in range(parts)]
    for t in threads:
        t.start()

    kills = 5
    for k in range(kills):
        time.sleep(rng.uniform(0.4, 2.0))
        with lock:
            before = sum(len(v) for v in acked.values())
        b.kill9()
        time.sleep(rng.uniform(0.0, 0.3))
        b.start()
        print(f"kill #{k + 1}: {before} acked so far")
    time.sleep(1.5)
    stop.set()
    for t in threads:
        t.join(60)
        assert not t.is_alive(), "a writer did not finish"

    assert not fatal, f"producer fatal errors (idempotent state not kept across a crash?): {fatal}"
    assert not failed, f"{len(failed)} deliveries failed, first: {failed[:5]}"
    total = sum(len(v) for v in acked.values())
    assert total >= 300, f"only {total} records acknowledged: the test did not exercise much"

    b.kill9()  # once more, after everything was acknowledged
    b.start()
    for part in range(parts):
        log = read_partition(b.bootstrap, topic_name, part)
        offsets = [o for o, _ in log]
        assert offsets == list(range(len(log))), f"partition {part}: offsets not contiguous from 0"
        values = [v for _, v in log]
        dups = len(values) - len(set(values))
        assert dups == 0, f"partition {part}: {dups} duplicate records in the log (idempotent producer)"
        seqs = [int(v.split(b"-")[1]) for v in values]
        assert seqs == sorted(seqs), f"partition {part}: records out of order"
        by_offset = dict(log)
        lost = [(o, v) for o, v in acked[part] if by_offset.get(o) != v]
        assert not lost, (f"partition {part}: {len(lost)} of {len(acked[part])} acknowledged records missing or "
                          f"moved, first {lost[:5]}; log has {len(log)} records")
        print(f"partition {part}: {len(acked[part])} acked, {len(log)} in log")


def test_admin_changes_survive_immediate_sigkill(broker_factory, topic_name):
    from confluent_kafka.admin import NewPartitions, NewTopic
    b = broker_factory()
    a = admin(b.bootstrap)
    grown, doomed = topic_name + "-grown", topic_name + "-doomed"
    create_topic(b.bootstrap, grown, partitions=1)
    create_topic(b.bootstrap, doomed)
    # Every change below is acknowledged, then the broker dies at once.
    assert a.create_topics([NewTopic(topic_name, num_partitions=3, replication_factor=1,
                                     config={"retention.ms": "7777777"})],
                           request_timeout=20)[topic_name].result(timeout=20) is None
    assert a.create_partitions([NewPartitions(grown, 4)], request_timeout=20)[grown].result(timeout=20) is None
    assert a.delete_topics([doomed], request_timeout=20)[doomed].result(timeout=20) is None
    b.kill9()
    b.start()
    a = admin(b.bootstrap)
    names = topic_names(a)
    assert topic_name in names and grown in names and doomed not in names, sorted(names)
    wait_topic(a, topic_name, 3)
    wait_topic(a, grown, 4)
    res = ConfigResource(ResourceType.TOPIC, topic_name)
    assert a.describe_configs([res], request_timeout=20)[res].result(timeout=20)["retention.ms"].value == "7777777"


def test_acks1_survives_sigkill(broker_factory, topic_name):
    # acks=1 is answered once the batch is written to the OS (it survives kill -9 of the broker;
    # only a machine crash within log.flush.interval.ms could lose it).
    b = broker_factory(args=["--set", "log.flush.interval.ms=60000"])
    create_topic(b.bootstrap, topic_name)
    delivered = produce_all(producer(b.bootstrap, acks="1"), topic_name, [dict(value=b"%d" % i) for i in range(500)])
    b.kill9()
    b.start()
    assert read_partition(b.bootstrap, topic_name, 0) == [(m.offset(), m.value()) for m in delivered]


def test_sigterm_under_load_exits_cleanly_and_keeps_acked(broker_factory, topic_name):
    b = broker_factory()
    create_topic(b.bootstrap, topic_name, partitions=2)
    acked = {0: [], 1: []}
    stop = threading.Event()

    def write(part):
        p = producer(b.bootstrap, acks="all", **{"message.timeout.ms": 5000, "linger.ms": 2})

        def cb(err, msg):
            if err is None:
                acked[part].append((msg.offset(), msg.value()))
        i = 0
        while not stop.is_set():
            try:
                p.produce(topic_name, value=b"%d" % i, partition=part, on_delivery=cb)
                i += 1
            except BufferError:
                pass
            p.poll(0.001 if i % 20 else 0.01)
        p.flush(10)

    threads = [threading.Thread(target=write, args=(p,)) for p in (0, 1)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    b.stop()  # SIGTERM under load: exit code 0 within 15 s
    stop.set()
    for t in threads:
        t.join(20)
    assert acked[0] and acked[1]
    b.start()
    for part in (0, 1):
        log = dict(read_partition(b.bootstrap, topic_name, part))
        missing = [(o, v) for o, v in acked[part] if log.get(o) != v]
        assert not missing, f"partition {part}: {len(missing)} acknowledged records lost over SIGTERM: {missing[:5]}"


@pytest.mark.timeout(150)
def test_admin_crash_loop_acknowledged_changes_hold(broker_factory, topic_name):
    """Creates and deletes topics while the broker is SIGKILLed at random moments: whatever was
    acknowledged before a kill holds after it (the controller's metadata log recovers)."""
    seed = int(os.environ.get("E2E_SEED", time.time_ns() % 2**32))
    rng = random.Random(seed)
    print(f"admin crash test seed {seed}")
    b = broker_factory()
    state = {}  # topic -> "created" | "deleted" (last acknowledged change)
    stop = threading.Event()
    running = threading.Event()  # cleared while the main thread kills and checks
    running.set()
    lock = threading.Lock()

    def churn():
        from confluent_kafka.admin import NewTopic
        a = admin(b.bootstrap)
        i = 0
        while not stop.is_set():
            if not running.wait(0.1):
                continue
            name = f"{topic_name}-{i % 12}"
            i += 1
            with lock:
                current = state.get(name)
            try:
                if current == "created":
                    a.delete_topics([name], request_timeout=5)[name].result(timeout=6)
                    change = "deleted"
                else:
                    a.create_topics([NewTopic(name, num_partitions=1 + i % 3, replication_factor=1)],
                                    request_timeout=5)[name].result(timeout=6)
                    change = "created"
            except Exception:
                # Not acknowledged (broker down, or the outcome of an interrupted earlier try is
                # unknown): learn the truth once the broker is back.
                time.sleep(0.2)
                try:
                    names = topic_names(admin(b.bootstrap))
                except Exception:
                    continue
                with lock:
                    state[name] = "created" if name in names else "deleted"
                continue
            with lock:
                state[name] = change

    th = threading.Thread(target=churn, daemon=True)
    th.start()
    for k in range(5):
        time.sleep(rng.uniform(0.3, 1.5))
        running.clear()  # no new operation starts; the one in flight meets the kill
        b.kill9()
        with lock:
            acknowledged = dict(state)
        time.sleep(rng.uniform(0.0, 0.2))
        b.start()
        names = topic_names(admin(b.bootstrap))
        running.set()
        # Changes acknowledged before the kill must hold; one operation may have been in flight.
        wrong = [(n, s) for n, s in acknowledged.items() if (n in names) != (s == "created")]
        assert len(wrong) <= 1, f"after kill #{k + 1}: acknowledged topic changes lost: {wrong}"
    stop.set()
    th.join(30)
    time.sleep(0.5)
    names = topic_names(admin(b.bootstrap))
    with lock:
        final = dict(state)
    wrong = [(n, s) for n, s in final.items() if (n in names) != (s == "created")]
    assert not wrong, f"final state disagrees with acknowledged changes: {wrong}"
    b.restart()
    a = admin(b.bootstrap)
    names = topic_names(a)
    assert not [(n, s) for n, s in final.items() if (n in names) != (s == "created")]
    for n, s in final.items():
        if s == "created":
            t = a.list_topics(topic=n, timeout=10).topics[n]
            assert t.error is None and t.partitions, f"{n} exists without partitions: {t.error}"


def test_delete_recreate_then_crash_does_not_resurrect_old_data(broker_factory, topic_name):
    from confluent_kafka.admin import NewTopic
    b = broker_factory()
    a = create_topic(b.bootstrap, topic_name, partitions=2)
    produce_all(producer(b.bootstrap, acks="all"), topic_name, [dict(value=b"old%d" % i, partition=i % 2) for i in range(10)])
    assert a.delete_topics([topic_name], request_timeout=20)[topic_name].result(timeout=20) is None
    deadline = time.monotonic() + 10
    while True:
        fs = a.create_topics([NewTopic(topic_name, num_partitions=1, replication_factor=1)], request_timeout=20)
        try:
            fs[topic_name].result(timeout=20)
            break
        except Exception:
            assert time.monotonic() < deadline, "could not re-create the topic within 10 s of deleting it"
            time.sleep(0.1)
    wait_topic(a, topic_name, 1)
    produce_all(producer(b.bootstrap, acks="all"), topic_name, [dict(value=b"new")])
    b.kill9()
    b.start()
    wait_topic(admin(b.bootstrap), topic_name, 1)
    assert read_partition(b.bootstrap, topic_name, 0) == [(0, b"new")]


@pytest.mark.timeout(120)
def test_disk_full_keeps_acknowledged_records(broker_factory, topic_name, tmp_path):
    """The data dir fills up (an 8 MiB tmpfs): writes must fail rather than be acknowledged and
    lost, and every acknowledged record must be readable once the data has room again."""
    import shutil
    import subprocess
    small = tmp_path / "small"
    small.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(small)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {r.stderr.decode(errors='replace').strip()}")
    try:
        b = broker_factory(start=False)
        b.data_dir = small / "data"
        b.data_dir.mkdir()
        b.start()
        create_topic(b.bootstrap, topic_name, config={"segment.bytes": "1048576"})
        p = producer(b.bootstrap, acks="all", **{"message.timeout.ms": 3000, "linger.ms": 5})
        acked, errors = [], []

        def cb(err, msg):
            (errors if err else acked).append(err if err else (msg.offset(), msg.value()))

        deadline = time.monotonic() + 25
        i = 0
        while time.monotonic() < deadline and len(errors) < 20 and b.running:
            try:
                p.produce(topic_name, value=b"%06d" % i + os.urandom(4000), on_delivery=cb)
                i += 1
            except BufferError:
                pass
            p.poll(0.001)
        p.flush(15)
        assert acked, "nothing was acknowledged before the disk filled"
        assert errors or not b.running, f"{len(acked)} records (~{len(acked) * 4} KiB) acknowledged on an 8 MiB disk"
        print(f"{len(acked)} acknowledged, then {len(errors)} errors, e.g. {errors[:2]}; broker running: {b.running}")
        if b.running:  # librdkafka retries storage errors until it times out; the broker's answer is prompt
            with kproto.Conn(b.bootstrap, timeout=6) as c:
                err, _ = kproto.produce(c, topic_name, 0, kproto.record_batch([os.urandom(200_000)]), timeout_ms=5000)
            assert err == 56, f"append on a full disk: expected KAFKA_STORAGE_ERROR (56), got {err}"
        b.kill9()
        roomy = tmp_path / "roomy"
        shutil.copytree(b.data_dir, roomy)
    finally:
        subprocess.run(["umount", "-l", str(small)], capture_output=True)
    b.data_dir = roomy
    b.start()
    log = dict(read_partition(b.bootstrap, topic_name, 0))
    lost = [(o, v[:6]) for o, v in acked if log.get(o) != v]
    assert not lost, f"{len(lost)} of {len(acked)} acknowledged records lost after the disk filled: {lost[:5]}"
    more = produce_all(producer(b.bootstrap), topic_name, [dict(value=b"after")])
    assert more[0].offset() >= len(acked)


def test_consumer_across_broker_restarts_sees_every_record_once(broker_factory, topic_name):
    from ckutil import consumer
    b = broker_factory()
    create_topic(b.bootstrap, topic_name)
    n = 3000
    received = []
    stop = threading.Event()

    def read():
        c = consumer(b.bootstrap, **{"enable.partition.eof": False, "fetch.wait.max.ms": 200})
        try:
            c.assign([TopicPartition(topic_name, 0, 0)])
            while not stop.is_set() and len(received) < n:
                m = c.poll(0.2)
                if m is not None and not m.error():
                    received.append((m.offset(), m.value()))
        finally:
            c.close()

    th = threading.Thread(target=read)
    th.start()
    p = producer(b.bootstrap, acks="all", **{"enable.idempotence": True, "message.timeout.ms": 30000})
    for chunk in range(3):
        produce_all(p, topic_name, [dict(value=b"%05d" % (chunk * 1000 + i)) for i in range(1000)])
        time.sleep(0.3)
        b.restart(graceful=chunk == 0)
    deadline = time.monotonic() + 30
    while len(received) < n and time.monotonic() < deadline:
        time.sleep(0.1)
    stop.set()
    th.join(10)
    assert [o for o, _ in received] == list(range(len(received))), "the consumer saw a gap or a repeat"
    assert received == [(i, b"%05d" % i) for i in range(n)]


@pytest.mark.parametrize("graceful", [True, False], ids=["after-sigterm", "after-sigkill"])
def test_corrupt_batch_on_disk_is_never_served(broker_factory, topic_name, graceful):
    b = broker_factory()
    create_topic(b.bootstrap, topic_name)
    with kproto.Conn(b.bootstrap) as c:
        for i in range(3):
            assert kproto.produce(c, topic_name, 0, kproto.record_batch([b"batch%d-" % i + b"v" * 2000])) == (0, i)
    if graceful:
        b.stop()
    else:
        b.kill9()
    logs = [p for p in Path(b.data_dir).rglob("*.log") if topic_name in str(p) and p.stat().st_size > 0]
    assert logs, f"no non-empty *.log segment for {topic_name} under {b.data_dir}"
    seg = max(logs, key=lambda p: p.stat().st_size)
    data = bytearray(seg.read_bytes())
    pos = data.find(b"batch1-")
    assert pos > 0, "record payload not found in the segment file"
    data[pos + 100] ^= 0xFF  # flip a bit inside the second batch's record: its CRC no longer matches
    seg.write_bytes(bytes(data))
    b.start()
    with kproto.Conn(b.bootstrap) as c:
        served = []
        for offset in (0, 1, 2):
            p = kproto.fetch(c, topic_name, 0, offset)
            batches = kproto.parse_batches(p["records"] or b"")
            assert all(x.crc_ok for x in batches), f"fetch at {offset} served a batch with a bad CRC"
            served += [(offset, p["error"], [x.base_offset for x in batches])]
    print(f"served (fetch offset, error, batch base offsets): {served}")
    assert b.running
    # Batch 0 is intact and must still be readable.
    assert served[0][1] == 0 and 0 in served[0][2], f"intact batch 0 not served: {served}"
    # Batch 1 is never served (an error, or a log truncated before it).
    assert all(1 not in offs for _, _, offs in served), f"corrupt batch 1 served: {served}"
