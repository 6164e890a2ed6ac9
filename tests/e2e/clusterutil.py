"""Helpers for tests against a replicated cluster (tests/e2e/test_cluster*.py): topic creation
at a replication factor, partition state from Metadata, waiting on an event, replica logs read
off disk, and an acks=all idempotent producer that records every acknowledgement."""

import threading
import time

from confluent_kafka.admin import NewTopic

import kproto
from ckutil import CLIENT_TIMEOUT_S, admin, producer, wait_topic


def create_replicated(bootstrap, name, partitions, rf=3):
    a = admin(bootstrap)
    fs = a.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=rf)],
                         operation_timeout=10, request_timeout=CLIENT_TIMEOUT_S)
    fs[name].result(timeout=CLIENT_TIMEOUT_S)
    return a, wait_topic(a, name, partitions, served=True)


def partition_state(a, topic, partition=0):
    md = a.list_topics(topic=topic, timeout=10)
    p = md.topics[topic].partitions[partition]
    return p.leader, list(p.replicas), list(p.isrs)


def wait_for(what, check, timeout=30, interval=0.1):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except Exception as e:  # metadata from a node that just died, etc.
            last = repr(e)
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last})")


def log_bytes(node, topic, partition):
    d = node.data_dir / "logs" / f"{topic}-{partition}"
    return sum(f.stat().st_size for f in d.glob("*.log"))


class ContinuousProducer:
    """Produces numbered values to one partition with acks=all and idempotence until stopped,
    recording which values were acknowledged and any delivery error."""

    def __init__(self, bootstrap, topic, partition=0, **conf):
        self.topic, self.partition = topic, partition
        settings = {"enable.idempotence": True, "acks": "all", "linger.ms": 2,
                    "message.timeout.ms": 60000, "retry.backoff.ms": 50}
        settings.update(conf)
        self.p = producer(bootstrap, **settings)
        self.acked, self.errors = [], []
        self.lock = threading.Lock()
        self.stop_flag = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.sent = 0

    def on_delivery(self, err, msg):
        with self.lock:
            if err is not None:
                self.errors.append(err)
            else:
                self.acked.append(int(msg.value()))

    def run(self):
        while not self.stop_flag.is_set():
            try:
                self.p.produce(self.topic, value=str(self.sent).encode(), partition=self.partition,
                               on_delivery=self.on_delivery)
                self.sent += 1
            except BufferError:
                pass
            self.p.poll(0.002)

    def start(self):
        self.thread.start()
        return self

    def acked_count(self):
        with self.lock:
            return len(self.acked)

    def finish(self):
        self.stop_flag.set()
        self.thread.join(10)
        remaining = self.p.flush(60)
        assert remaining == 0, f"{remaining} messages never got a delivery report"
        return list(self.acked), list(self.errors)


def replica_records(node, topic, partition):
    """{offset: (leader_epoch, value)} of every record in one replica's log, read off disk (the
    segment files hold v2 batches exactly as Fetch returns them)."""
    out = {}
    d = node.data_dir / "logs" / f"{topic}-{partition}"
    for seg in sorted(d.glob("*.log")):
        for b in kproto.parse_batches(seg.read_bytes()):
            assert b.records is not None, f"{seg}: compressed batch; these tests produce uncompressed"
            for r in b.records:
                out[r["offset"]] = (b.leader_epoch, r["value"])
    return out


def controller_id(bootstrap):
    return admin(bootstrap).list_topics(timeout=10).controller_id


def raw_produce(bootstrap, topic, partition, values, acks=-1, timeout_ms=3000):
    """One Produce request straight to `bootstrap` (no client retries): (error_code, base_offset)."""
    with kproto.Conn(bootstrap, timeout=timeout_ms / 1000 + 10) as conn:
        return kproto.produce(conn, topic, partition, kproto.record_batch(values), acks=acks,
                              timeout_ms=timeout_ms)
