"""Exactly-once under faults: a consume-transform-produce pipeline (librdkafka, transactional
producer, read_committed input, offsets sent in each transaction) copies an input topic to an
output topic on a 3-node cluster while the leaders of the input partition, the output
partition, the group's offsets partition and the transactional id's transaction log partition
are killed with SIGKILL in turn (each restarted once the pipeline has committed two
transactions without it; the input is fed in chunks, one after each kill and restart, so the
pipeline is busy when each fault lands). Afterwards a read_committed consumer of the
output sees every input record exactly once, in per-partition order."""

import os
import signal
import threading
import time
import uuid

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

import kproto
from ckutil import CLIENT_TIMEOUT_S, admin, consume, produce_all, producer
from clusterutil import create_replicated, partition_state, wait_for

pytestmark = pytest.mark.timeout(600)

PARTITIONS = 2
RECORDS_PER_PARTITION = 1500
# Records per transaction, at most: about 60 transactions in all, so the faults land mid-run.
BATCH = 50
INTERNAL_PARTITIONS = 50


class PipelineStalled(Exception):
    """The pipeline made no progress in time (it stalled in about one run of three, in
    send_offsets_to_transaction, until Metadata kept listing fenced brokers: see
    test_send_offsets_finds_the_new_group_coordinator_after_its_node_dies)."""


def java_partition(key, partitions=INTERNAL_PARTITIONS):
    """Kafka's abs(key.hashCode()) % partitions for an internal topic's key."""
    h = 0
    data = key.encode("utf-16-be")
    for i in range(0, len(data), 2):
        h = (h * 31 + int.from_bytes(data[i:i + 2], "big")) & 0xFFFFFFFF
    if h >= 1 << 31:
        h -= 1 << 32
    return (h & 0x7FFFFFFF) % partitions


class Pipeline(threading.Thread):
    """The exactly-once loop: read committed input, write it to the output partition of the
    same number inside a transaction that also commits the input offsets; on an abortable
    error abort and rewind to the committed offsets; on a fatal one start a new producer with
    the same transactional id (which fences the old one)."""

    def __init__(self, bootstrap, input_topic, output_topic, group, txn_id):
        super().__init__(daemon=True)
        self.bootstrap, self.input, self.output = bootstrap, input_topic, output_topic
        self.group, self.txn_id = group, txn_id
        self.stop = threading.Event()
        self.committed_txns = 0
        self.aborts = 0
        self.restarts = 0
        self.error = None
        # What the loop did last, for a failure message.
        self.last = "starting"
        self.assigned = []

    def new_producer(self):
        # metadata.recovery.strategy=none: when the one broker a librdkafka (2.10+) client is
        # connected to dies, it re-bootstraps and retires every broker it knew, while its
        # coordinator cache may still name the dead one; send_offsets_to_transaction then
        # waits for that broker for ever (librdkafka issue 5511, open). This happens when one
        # node leads everything the pipeline uses and is killed, with any Kafka broker; the
        # other path to the same hang (a Metadata answer leaving a dead broker out) is what
        # Spate prevents, see the test below.
        p = Producer({"bootstrap.servers": self.bootstrap, "transactional.id": self.txn_id,
                      "transaction.timeout.ms": 20000, "message.timeout.ms": 20000,
                      "reconnect.backoff.max.ms": 500, "linger.ms": 5,
                      "metadata.recovery.strategy": "none"})
        deadline = time.monotonic() + 120
        while True:
            try:
                p.init_transactions(CLIENT_TIMEOUT_S)
                return p
            except KafkaException as e:
                if time.monotonic() > deadline or not e.args[0].retriable():
                    raise
                time.sleep(0.2)

    def rewind(self, consumer):
        assignment = consumer.assignment()
        if not assignment:
            return
        for tp in consumer.committed(assignment, timeout=CLIENT_TIMEOUT_S):
            consumer.seek(TopicPartition(tp.topic, tp.partition, tp.offset if tp.offset >= 0 else 0))

    def run(self):
        try:
            self.loop()
        except Exception as e:  # noqa: BLE001 (reported by the test)
            self.error = e

    def loop(self):
        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": self.group,
                             "isolation.level": "read_committed", "enable.auto.commit": False,
                             "auto.offset.reset": "earliest", "session.timeout.ms": 10000,
                             "reconnect.backoff.max.ms": 500})
        consumer.subscribe([self.input])
        p = self.new_producer()
        try:
            while not self.stop.is_set():
                msgs = [m for m in consumer.consume(BATCH, 0.5) if not m.error()]
                self.assigned = [(tp.partition, tp.offset) for tp in consumer.assignment()]
                if not msgs:
                    self.last = "consumed nothing"
                    continue
                self.last = f"transaction of {len(msgs)} records"
                try:
                    self.last = "begin_transaction"
                    p.begin_transaction()
                    self.last = "produce"
                    for m in msgs:
                        while True:
                            try:
                                p.produce(self.output, value=m.value(), partition=m.partition())
                                break
                            except BufferError:
                                p.poll(0.1)
                    self.last = "position"
                    positions = consumer.position(consumer.assignment())
                    self.last = f"send_offsets_to_transaction since {time.monotonic():.1f}"
                    p.send_offsets_to_transaction(positions, consumer.consumer_group_metadata(),
                                                  CLIENT_TIMEOUT_S)
                    self.commit(p)
                    self.committed_txns += 1
                except KafkaException as e:
                    err = e.args[0]
                    self.last = f"error {err}"
                    if err.fatal():
                        self.restarts += 1
                        p = self.new_producer()
                    else:
                        self.aborts += 1
                        self.abort(p)
                    self.rewind(consumer)
        finally:
            consumer.close()

    def commit(self, p):
        deadline = time.monotonic() + 60
        while True:
            try:
                self.last = f"commit_transaction since {time.monotonic():.1f}"
                p.commit_transaction(CLIENT_TIMEOUT_S)
                return
            except KafkaException as e:
                self.last = f"commit_transaction failed {e.args[0]} at {time.monotonic():.1f}"
                if e.args[0].retriable() and time.monotonic() < deadline:
                    continue
                raise

    def abort(self, p):
        deadline = time.monotonic() + 60
        while True:
            try:
                self.last = f"abort_transaction since {time.monotonic():.1f}"
                p.abort_transaction(CLIENT_TIMEOUT_S)
                return
            except KafkaException as e:
                if e.args[0].retriable() and time.monotonic() < deadline:
                    continue
                raise


def committed_offsets(bootstrap, group, topic, partitions=PARTITIONS):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        return [tp.offset for tp in c.committed(tps, timeout=CLIENT_TIMEOUT_S)]
    finally:
        c.close()


def test_a_pipeline_copies_every_record_exactly_once_while_leaders_are_killed(cluster_factory):
    c = cluster_factory(3)
    bootstrap = c.bootstrap
    suffix = uuid.uuid4().hex[:8]
    input_topic, output_topic = f"eos-in-{suffix}", f"eos-out-{suffix}"
    group, txn_id = f"eos-group-{suffix}", f"eos-pipe-{suffix}"
    a, _ = create_replicated(bootstrap, input_topic, PARTITIONS)
    create_replicated(bootstrap, output_topic, PARTITIONS)
    sent = {p: [f"{p}-{i:05d}".encode() for i in range(RECORDS_PER_PARTITION)] for p in range(PARTITIONS)}
    prod = producer(bootstrap, **{"enable.idempotence": True, "acks": "all"})
    # The input arrives in chunks, one before the pipeline starts and one after each kill and
    # each restart, so that the pipeline always has records to copy when a fault lands (it
    # copies a chunk in well under a second; all of the input at once was done before the
    # last kill).
    chunks = 9
    bounds = [RECORDS_PER_PARTITION * k // chunks for k in range(chunks + 1)]
    fed = iter(range(chunks))

    def feed():
        k = next(fed)
        produce_all(prod, input_topic, [{"value": v, "partition": p}
                                        for p in sent for v in sent[p][bounds[k]:bounds[k + 1]]])

    feed()
    end = RECORDS_PER_PARTITION  # no markers in the input: offsets are dense

    pipe = Pipeline(bootstrap, input_topic, output_topic, group, txn_id)
    pipe.start()
    try:
        def progressed_by(n):
            before = pipe.committed_txns
            try:
                wait_for(f"{n} more committed transactions",
                         lambda: pipe.error or pipe.committed_txns >= before + n, timeout=60)
            except AssertionError as e:
                raise PipelineStalled(f"{e} at {time.monotonic():.1f}; pipeline: {pipe.committed_txns} committed, {pipe.aborts} aborted, "
                                     f"last: {pipe.last}, assigned: {pipe.assigned}") from None
            assert pipe.error is None, f"pipeline failed: {pipe.error!r}"

        progressed_by(2)
        victims = [
            ("input partition 0's leader", input_topic, 0),
            ("output partition 1's leader", output_topic, 1),
            ("the group's __consumer_offsets leader", "__consumer_offsets", java_partition(group)),
            ("the transactional id's __transaction_state leader", "__transaction_state", java_partition(txn_id)),
        ]
        for what, topic, partition in victims:
            live = ",".join(b.bootstrap for b in c.nodes.values() if b.running)
            leader = partition_state(admin(live), topic, partition)[0]
            print(f"--- kill -9 node {leader}: {what} ({topic}-{partition})")
            c.nodes[leader].kill9()
            feed()
            # The pipeline goes on only once leadership has moved to another replica.
            progressed_by(2)
            print(f"--- restart node {leader}")
            c.nodes[leader].start()
            feed()
            progressed_by(1)

        assert next(fed, None) is None, "every chunk of the input was fed"
        try:
            wait_for("the pipeline consumed every input record",
                     lambda: pipe.error or committed_offsets(bootstrap, group, input_topic) == [end] * PARTITIONS,
                     timeout=120, interval=0.5)
        except AssertionError as e:
            raise PipelineStalled(f"{e}; pipeline: {pipe.committed_txns} committed, last: {pipe.last}") from None
        assert pipe.error is None, f"pipeline failed: {pipe.error!r}"
    finally:
        pipe.stop.set()
        pipe.join(60)
    print(f"pipeline: {pipe.committed_txns} transactions committed, {pipe.aborts} aborted, "
          f"{pipe.restarts} producer restarts")

    for p in range(PARTITIONS):
        got = [m.value() for m in consume(bootstrap, output_topic, partitions=[p], expected=RECORDS_PER_PARTITION,
                                          timeout=60, **{"isolation.level": "read_committed"})]
        dups = len(got) - len(set(got))
        missing = set(sent[p]) - set(got)
        assert not missing, f"partition {p}: {len(missing)} input records never committed, e.g. {sorted(missing)[:5]}"
        assert dups == 0, f"partition {p}: {dups} records committed twice"
        assert got == sent[p], f"partition {p}: out of order"


def test_send_offsets_finds_the_new_group_coordinator_after_its_node_dies(cluster_factory):
    """Regression: the node coordinating both the transactional id and the group dies during a
    transaction. librdkafka (2.10 on) drops from its broker list every broker a Metadata answer
    leaves out, but its coordinator cache can still point at it; a request then waits for that
    broker to come up without ever asking again (librdkafka issue 5511), and
    send_offsets_to_transaction hangs past its own timeout. A fenced node therefore stays in
    Metadata's broker list for a while (`metadata.fenced.broker.listed.ms`), and the client, failing
    to connect, looks the coordinator up again."""
    c = cluster_factory(3)
    bootstrap = c.bootstrap
    suffix = uuid.uuid4().hex[:8]
    topic, txn_id = f"coord-out-{suffix}", f"coord-txn-{suffix}"
    a, _ = create_replicated(bootstrap, topic, 1)
    p = Producer({"bootstrap.servers": bootstrap, "transactional.id": txn_id,
                  "transaction.timeout.ms": 60000, "reconnect.backoff.max.ms": 500})
    p.init_transactions(CLIENT_TIMEOUT_S)
    # __consumer_offsets exists once a group has been looked up.
    wait_for("the offsets topic", lambda: committed_offsets(bootstrap, f"warmup-{suffix}", topic, 1), timeout=60)
    txn_leader = partition_state(a, "__transaction_state", java_partition(txn_id))[0]
    # A group coordinated by the same node as the transactional id.
    group = next(g for g in (f"coord-group-{suffix}-{i}" for i in range(1000))
                 if partition_state(a, "__consumer_offsets", java_partition(g))[0] == txn_leader)
    meta = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        def transaction(value, offset):
            p.begin_transaction()
            p.produce(topic, value=value, partition=0)
            return [TopicPartition(topic, 0, offset)]

        # The client caches the group's coordinator.
        p.send_offsets_to_transaction(transaction(b"one", 1), meta.consumer_group_metadata(), CLIENT_TIMEOUT_S)
        p.commit_transaction(CLIENT_TIMEOUT_S)

        offsets = transaction(b"two", 2)
        p.flush(CLIENT_TIMEOUT_S)
        print(f"--- kill -9 node {txn_leader}: coordinator of {txn_id} and {group}")
        c.nodes[txn_leader].kill9()
        live = ",".join(b.bootstrap for b in c.nodes.values() if b.running)
        wait_for("both coordinators to move", lambda: all(
            partition_state(admin(live), t, java_partition(k))[0] not in (-1, txn_leader)
            for t, k in (("__transaction_state", txn_id), ("__consumer_offsets", group))), timeout=60)
        # A Metadata answer reaches the producer after the fencing.
        p.list_topics(timeout=CLIENT_TIMEOUT_S)

        done = threading.Event()
        outcome = []

        def send():
            try:
                p.send_offsets_to_transaction(offsets, meta.consumer_group_metadata(), 20)
                outcome.append(None)
            except KafkaException as e:
                outcome.append(e.args[0])
            done.set()

        threading.Thread(target=send, daemon=True).start()
        assert done.wait(60), "send_offsets_to_transaction hung (its own timeout is 20 s)"
        assert outcome == [None], f"send_offsets_to_transaction failed: {outcome}"
        p.commit_transaction(CLIENT_TIMEOUT_S)
        assert wait_for("the committed offset", lambda: committed_offsets(live, group, topic, 1)) == [2]
        got = [m.value() for m in consume(live, topic, expected=2, **{"isolation.level": "read_committed"})]
        assert got == [b"one", b"two"]
    finally:
        meta.close()


def topic_and_remote_coordinator(c, prefix):
    """A 1-partition RF 3 topic on cluster `c`, and a transactional id whose coordinator is
    another node than the partition's leader (so verification and markers cross the network):
    (admin, topic, leader id, transactional id, coordinator id)."""
    suffix = uuid.uuid4().hex[:8]
    topic = f"{prefix}-{suffix}"
    a, _ = create_replicated(c.bootstrap, topic, 1)
    leader = partition_state(a, topic)[0]

    def init_warmup():
        with kproto.Conn(c.nodes[leader].bootstrap) as conn:
            return kproto.init_transactional_producer_id(conn, f"warmup-{suffix}")[0]

    # The first transactional id asked for creates __transaction_state.
    wait_for("__transaction_state", lambda: init_warmup() in (kproto.NONE, kproto.NOT_COORDINATOR)
             and partition_state(a, "__transaction_state"), timeout=60)
    txn_id = next(t for t in (f"{prefix}-txn-{suffix}-{i}" for i in range(1000))
                  if partition_state(a, "__transaction_state", java_partition(t))[0] not in (-1, leader))
    coordinator = partition_state(a, "__transaction_state", java_partition(txn_id))[0]
    return a, topic, leader, txn_id, coordinator


def test_a_write_verified_with_a_stopped_coordinator_is_answered_once_it_is_fenced(cluster_factory):
    """Regression (simulator seeds 10 and 55): a partition leader verifies a transaction's first
    write to it with the transactional id's coordinator (KIP-890), over its connection to that
    node. When the coordinator's process stops with the question in flight, no answer comes;
    the leader gave up only after request.timeout.ms (30 s), and every request queued behind it
    on that connection (other verifications, the coordinator's markers) waited too. Now a
    request to another broker ends as soon as the controller fences it (it went silent for
    broker.session.timeout.ms, 2.4 s): the write is refused with NOT_ENOUGH_REPLICAS, which
    producers retry, and once the coordinator has moved the same write is taken and the
    transaction commits. The protocol is spoken by hand so that the coordinator stops between
    AddPartitionsToTxn and the write."""
    c = cluster_factory(3)
    a, topic, leader, txn_id, coordinator = topic_and_remote_coordinator(c, "verify")
    live = ",".join(b.bootstrap for i, b in c.nodes.items() if i != coordinator)

    def at_coordinator(call):
        node = partition_state(admin(live), "__transaction_state", java_partition(txn_id))[0]
        with kproto.Conn(c.nodes[node].bootstrap) as conn:
            return call(conn)

    err, pid, epoch = wait_for("a producer id", lambda: (lambda r: r if r[0] == kproto.NONE else None)(
        at_coordinator(lambda conn: kproto.init_transactional_producer_id(conn, txn_id))))
    added = at_coordinator(lambda conn: kproto.add_partitions_to_txn(conn, txn_id, pid, epoch, topic, [0]))
    assert added == {0: kproto.NONE}, added
    batch = kproto.record_batch([b"held"], producer_id=pid, producer_epoch=epoch, base_sequence=0,
                                transactional=True)

    def write(timeout_ms):
        with kproto.Conn(c.nodes[leader].bootstrap, timeout=timeout_ms / 1000 + 10) as conn:
            return kproto.produce(conn, topic, 0, batch, timeout_ms=timeout_ms, transactional_id=txn_id)[0]

    print(f"--- SIGSTOP node {coordinator}, coordinator of {txn_id}; write to leader {leader}")
    os.kill(c.nodes[coordinator].proc.pid, signal.SIGSTOP)
    try:
        start = time.monotonic()
        refused = write(60_000)
        took = time.monotonic() - start
        print(f"the write was answered {refused} after {took:.1f}s")
        assert refused == kproto.NOT_ENOUGH_REPLICAS, f"the write got {refused}, not NOT_ENOUGH_REPLICAS"
        assert took < 15, (f"the write was answered {took:.1f}s after its coordinator stopped: the "
                           "verification waited for the peer timeout, not for the fencing")
        wait_for("the coordinator to move", lambda: partition_state(
            admin(live), "__transaction_state", java_partition(txn_id))[0] not in (-1, coordinator), timeout=60)
        wait_for("the write, sent again, to be taken", lambda: write(20_000) == kproto.NONE, timeout=60)
        wait_for("the commit", lambda: at_coordinator(
            lambda conn: kproto.end_txn(conn, txn_id, pid, epoch, True)) == kproto.NONE, timeout=60)
        got = [m.value() for m in consume(live, topic, expected=1, **{"isolation.level": "read_committed"})]
        assert got == [b"held"]
    finally:
        os.kill(c.nodes[coordinator].proc.pid, signal.SIGCONT)


def test_version_2_transactions_back_to_back_on_a_partition_led_elsewhere(cluster_factory):
    """Regression (simulator, transaction version 2 producers): a version 2 producer (KIP-890
    part 2, as Kafka 4's clients speak it) writes each transaction's first record to a partition
    led by another node than its coordinator, as soon as the previous EndTxn v5 answers. The
    write can reach the leader before the previous transaction's marker: the leader takes a
    verification guard and asks the coordinator to add the partition, the coordinator holds the
    add until the markers are written, and the marker dropped the guard, so the write was
    refused with INVALID_TXN_STATE (an abortable error: the client aborts). The leader now asks
    again with a fresh guard. Every transaction must commit, its record visible
    read_committed. The protocol is spoken by hand: no client the tests run speaks version 2."""
    c = cluster_factory(3)
    _, topic, leader, txn_id, coordinator = topic_and_remote_coordinator(c, "tv2")
    with kproto.Conn(c.nodes[coordinator].bootstrap) as to_coordinator, \
            kproto.Conn(c.nodes[leader].bootstrap) as to_leader:
        err, pid, epoch = wait_for("a producer id", lambda: (lambda r: r if r[0] == kproto.NONE else None)(
            kproto.init_transactional_producer_id(to_coordinator, txn_id)))
        refused = []
        transactions = 150
        for n in range(transactions):
            batch = kproto.record_batch([f"v{n}".encode()], producer_id=pid, producer_epoch=epoch,
                                        base_sequence=0, transactional=True)
            while True:
                err = kproto.produce_v12(to_leader, txn_id, topic, 0, batch)
                if err != kproto.NOT_ENOUGH_REPLICAS:  # the coordinator busy: producers retry
                    break
                time.sleep(0.01)
            if err != kproto.NONE:
                refused.append((n, err))
                assert err == kproto.INVALID_TXN_STATE, f"transaction {n}'s write got {err}"
            end, pid, epoch = kproto.end_txn_v5(to_coordinator, txn_id, pid, epoch, err == kproto.NONE)
            assert end == kproto.NONE, f"transaction {n}'s EndTxn got {end}"
    print(f"{len(refused)} of {transactions} writes refused: {refused}")
    assert refused == [], f"writes sent as soon as EndTxn answered were refused: {refused}"
    got = [m.value() for m in consume(c.bootstrap, topic, expected=transactions,
                                      **{"isolation.level": "read_committed"})]
    assert got == [f"v{n}".encode() for n in range(transactions)]
