"""The workload of a fault campaign (campaign.py): the producers, the transactional producers,
the exactly-once copier and the consumer, each a thread recording into the campaign's History
(the events of HISTORY.md), and the final reads (the drain of a topic, the copier's committed
offsets). Every client is librdkafka through confluent-kafka; every reader is read_committed."""

import logging
import threading
import time

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer, TopicPartition

TOPIC = "chaos"
# The exactly-once copier reads TOPIC (read_committed, group COPY_GROUP) and writes each record to
# the same partition of COPY_TOPIC, in transactions that carry its consumed offsets.
COPY_TOPIC = "chaos-copy"
COPY_GROUP = "chaos-copier"
COPY_BATCH = 50
# Bounds: every wait of the workload ends by itself.
FLUSH_TIMEOUT_S = 30
DRAIN_TIMEOUT_S = 90
# Transactions: values per transaction (1 to this many), the share aborted on purpose, the
# coordinator's timeout for a transaction left open by a dead producer, the bound of one
# commit/abort/init call and of the retries of one transaction's end.
TXN_MAX_VALUES = 6
TXN_ABORT_SHARE = 0.2
TXN_TIMEOUT_MS = 10000
TXN_CALL_TIMEOUT_S = 10
TXN_END_BOUND_S = 60
# librdkafka's own log lines (disconnects, refused connections) go to clients.log in the output
# directory, not to the terminal.
CLIENT_LOG = logging.getLogger("chaos.clients")


class ProducerWorker(threading.Thread):
    """Sends unique values `<name>-<n>` round-robin over the partitions at `rate` per second with
    acks=all and idempotence, recording send, ack and fail. A producer that hits a fatal error is
    replaced (its undelivered values fail)."""

    def __init__(self, name, bootstrap, partitions, rate, history, stop):
        super().__init__(name=name, daemon=True)
        self.bootstrap, self.partitions, self.rate = bootstrap, partitions, rate
        self.history, self.stop = history, stop
        self.fatal = threading.Event()

    def make(self):
        return Producer({
            "bootstrap.servers": self.bootstrap,
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 5,
            "message.timeout.ms": 15000,
            "retry.backoff.ms": 100,
            "reconnect.backoff.max.ms": 1000,
            "error_cb": self.on_error,
            "logger": CLIENT_LOG,
        })

    def on_error(self, err):
        if err.fatal():
            self.history.add("client-error", client=self.name, error=str(err), fatal=True)
            self.fatal.set()

    def delivered(self, err, msg):
        value = msg.value().decode()
        if err is None:
            self.history.add("ack", producer=self.name, partition=msg.partition(), value=value, offset=msg.offset())
        else:
            self.history.add("fail", producer=self.name, partition=msg.partition(), value=value, error=str(err))

    def run(self):
        p = self.make()
        n, next_at = 0, time.monotonic()
        while not self.stop.is_set():
            if self.fatal.is_set():
                p.flush(5)
                self.fatal.clear()
                p = self.make()
            value, partition = f"{self.name}-{n}", n % self.partitions
            n += 1
            self.history.add("send", producer=self.name, partition=partition, value=value)
            try:
                p.produce(TOPIC, value=value.encode(), partition=partition, on_delivery=self.delivered)
            except BufferError as e:
                self.history.add("fail", producer=self.name, partition=partition, value=value, error=repr(e))
            next_at += 1 / self.rate
            while not self.stop.is_set():
                p.poll(0)
                left = next_at - time.monotonic()
                if left <= 0:
                    break
                time.sleep(min(left, 0.01))
        p.flush(FLUSH_TIMEOUT_S)


def transactional_producer(bootstrap, transactional_id, client, history, stop):
    """A producer with `transactional_id` whose init_transactions succeeded (fencing any earlier
    one with that id, whose open transaction the coordinator then finishes), asked again every
    half second; None once `stop` is set. Each failure is a client-error event of `client`."""
    while not stop.is_set():
        p = Producer({
            "bootstrap.servers": bootstrap,
            "transactional.id": transactional_id,
            "transaction.timeout.ms": TXN_TIMEOUT_MS,
            "linger.ms": 5,
            "message.timeout.ms": TXN_TIMEOUT_MS,
            "retry.backoff.ms": 100,
            "reconnect.backoff.max.ms": 1000,
            "logger": CLIENT_LOG,
        })
        try:
            p.init_transactions(TXN_CALL_TIMEOUT_S)
            return p
        except KafkaException as e:
            history.add("client-error", client=client, error=f"init_transactions: {e}", fatal=e.args[0].fatal())
            time.sleep(0.5)
    return None


class TxnProducerWorker(threading.Thread):
    """Transactions of 1 to TXN_MAX_VALUES unique values `<name>-<n>` over random partitions,
    `rate` transactions per second, a share of them aborted on purpose; the choices come from
    `rng`. Records txn-begin, the sends (carrying their txn), acks and fails, txn-end (commit or
    abort asked for) and txn-outcome. A retriable error of a commit or abort is retried (for at
    most TXN_END_BOUND_S); an error that needs an abort is followed by one. A fatal error (the
    producer was fenced, or the coordinator gave up) leaves the outcome unknown and the producer
    is replaced: its successor's init_transactions, with the same transactional.id, makes the
    coordinator finish or abort what the dead one left open."""

    def __init__(self, name, bootstrap, partitions, rate, rng, history, stop):
        super().__init__(name=name, daemon=True)
        self.bootstrap, self.partitions, self.rate, self.rng = bootstrap, partitions, rate, rng
        self.history, self.stop = history, stop
        self.txns = 0
        self.values = 0

    def make(self):
        """A producer whose init_transactions succeeded, or None once the workload stops."""
        return transactional_producer(self.bootstrap, f"chaos-{self.name}", self.name, self.history, self.stop)

    delivered = ProducerWorker.delivered  # ack / fail, as for the other producers

    def run(self):
        p = self.make()
        next_at = time.monotonic()
        while p is not None and not self.stop.is_set():
            p = self.transaction(p)
            next_at += 1 / self.rate
            left = next_at - time.monotonic()
            if left > 0:
                self.stop.wait(left)
            else:
                next_at = time.monotonic()
            if p is None:
                p = self.make()

    def transaction(self, p):
        """One transaction on `p`; returns `p`, or None when it must be replaced."""
        txn = f"{self.name}-t{self.txns}"
        self.txns += 1
        try:
            p.begin_transaction()
        except KafkaException as e:
            self.history.add("client-error", client=self.name, error=f"begin_transaction: {e}", fatal=True)
            return None
        self.history.add("txn-begin", producer=self.name, txn=txn)
        refused = False
        for _ in range(self.rng.randint(1, TXN_MAX_VALUES)):
            value, partition = f"{self.name}-{self.values}", self.rng.randrange(self.partitions)
            self.values += 1
            self.history.add("send", producer=self.name, partition=partition, value=value, txn=txn)
            try:
                p.produce(TOPIC, value=value.encode(), partition=partition, on_delivery=self.delivered)
            except (BufferError, KafkaException) as e:
                # Not handed to the client, so never written: the transaction must not commit
                # without it (the checks hold every transaction to all or nothing).
                self.history.add("fail", producer=self.name, partition=partition, value=value, error=repr(e))
                refused = True
            p.poll(0)
        request = "abort" if refused or self.rng.random() < TXN_ABORT_SHARE else "commit"
        if request == "abort":
            # Written first, so that the abort has records to hide (abort_transaction would
            # purge the ones still queued in the client).
            p.flush(TXN_CALL_TIMEOUT_S)
        self.history.add("txn-end", producer=self.name, txn=txn, request=request)
        outcome = self.end(p, txn, request)
        self.history.add("txn-outcome", producer=self.name, txn=txn, outcome=outcome)
        return p if outcome != "unknown" else None

    def end(self, p, txn, request):
        """Commits or aborts the open transaction: "committed", "aborted" or "unknown"."""
        deadline = time.monotonic() + TXN_END_BOUND_S
        while time.monotonic() < deadline:
            try:
                if request == "commit":
                    p.commit_transaction(TXN_CALL_TIMEOUT_S)
                    return "committed"
                p.abort_transaction(TXN_CALL_TIMEOUT_S)
                return "aborted"
            except KafkaException as e:
                err = e.args[0]
                self.history.add("client-error", client=self.name, error=f"{request} {txn}: {err}",
                                 fatal=err.fatal())
                if err.txn_requires_abort() and request == "commit":
                    request = "abort"
                    self.history.add("txn-end", producer=self.name, txn=txn, request=request)
                elif not err.retriable():
                    return "unknown"
        return "unknown"


class CopierWorker(threading.Thread):
    """Consume-transform-produce with exactly-once: reads TOPIC read_committed in group
    COPY_GROUP and copies each record, value unchanged, to the same partition of COPY_TOPIC,
    up to COPY_BATCH records per transaction, sending the consumed offsets in the transaction
    (send_offsets_to_transaction). On any error the transaction is aborted and the consumer and
    the producer are replaced: the new consumer resumes at the group's committed offsets, the
    new producer (same transactional.id) fences the old one. Records copy-txn events (the
    transaction's outcome) and client-error events; the check is on the copy's drain."""

    def __init__(self, bootstrap, history, stop):
        super().__init__(name="copier", daemon=True)
        self.bootstrap, self.history, self.stop = bootstrap, history, stop
        self.txns = 0

    def error(self, what, e):
        err = e.args[0] if isinstance(e, KafkaException) and e.args else None
        self.history.add("client-error", client=self.name, error=f"{what}: {e}",
                         fatal=bool(err is not None and err.fatal()))

    def make(self):
        """A producer whose init_transactions succeeded and a consumer subscribed to TOPIC, or
        None once the workload stops."""
        p = transactional_producer(self.bootstrap, "chaos-copier", self.name, self.history, self.stop)
        if p is None:
            return None
        c = Consumer({
            "bootstrap.servers": self.bootstrap,
            "group.id": COPY_GROUP,
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 10000,
            "fetch.wait.max.ms": 100,
            "reconnect.backoff.max.ms": 1000,
            "logger": CLIENT_LOG,
        })
        c.subscribe([TOPIC])
        return c, p

    def run(self):
        pair = self.make()
        while pair is not None and not self.stop.is_set():
            c, p = pair
            try:
                self.copy(c, p)
            except KafkaException as e:
                self.error(f"copy-t{self.txns}", e)
                try:
                    p.abort_transaction(TXN_CALL_TIMEOUT_S)
                except KafkaException:
                    pass  # the successor's init_transactions aborts it
                c.close()
                pair = self.make()
        if pair is not None:
            pair[0].close()

    def copy(self, c, p):
        """One transaction of the records the consumer returns (none: nothing to do)."""
        msgs = [m for m in c.consume(COPY_BATCH, 0.2) if m.error() is None]
        if not msgs:
            return
        txn = f"copy-t{self.txns}"
        self.txns += 1
        p.begin_transaction()
        for m in msgs:
            p.produce(COPY_TOPIC, value=m.value(), partition=m.partition())
        # The positions past what the consumer returned; a partition it has returned nothing
        # from since it was assigned has none yet (a negative offset) and is left out.
        positions = [tp for tp in c.position(c.assignment()) if tp.offset >= 0]
        p.send_offsets_to_transaction(positions, c.consumer_group_metadata(), TXN_CALL_TIMEOUT_S)
        p.commit_transaction(TXN_CALL_TIMEOUT_S)
        self.history.add("copy-txn", txn=txn, records=len(msgs))


class ConsumerWorker(threading.Thread):
    """Reads every partition from the beginning, recording each record. On an error it cannot
    read past, it starts a new session at the next offset it has not read."""

    def __init__(self, name, bootstrap, partitions, history, stop):
        super().__init__(name=name, daemon=True)
        self.bootstrap, self.partitions = bootstrap, partitions
        self.history, self.stop = history, stop
        self.session = 0
        self.next = {p: OFFSET_BEGINNING for p in range(partitions)}

    def make(self):
        c = Consumer({
            "bootstrap.servers": self.bootstrap,
            "group.id": "chaos-unused",  # librdkafka wants one; assign() never uses it
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "error",
            "isolation.level": "read_committed",  # librdkafka's default, said: the checks rely on it
            "fetch.wait.max.ms": 100,
            "reconnect.backoff.max.ms": 1000,
            "logger": CLIENT_LOG,
        })
        c.assign([TopicPartition(TOPIC, p, o) for p, o in self.next.items()])
        return c

    def run(self):
        c = self.make()
        while not self.stop.is_set():
            msg = c.poll(0.2)
            if msg is None:
                continue
            err = msg.error()
            if err is not None:
                if err.fatal() or err.code() in (KafkaError.OFFSET_OUT_OF_RANGE, KafkaError._AUTO_OFFSET_RESET):
                    self.history.add("client-error", client=self.name, error=str(err), fatal=err.fatal())
                    c.close()
                    self.session += 1
                    c = self.make()
                continue
            self.history.add("read", consumer=self.name, session=self.session, partition=msg.partition(),
                             offset=msg.offset(), value=msg.value().decode())
            self.next[msg.partition()] = msg.offset() + 1
        c.close()


def drain(bootstrap, partitions, history, topic=TOPIC, kind="drain"):
    """Reads each partition of `topic` from offset 0 to its high watermark, read_committed
    (records of aborted transactions and the transaction markers are never delivered: the drain
    is complete once the consumer's position reaches the high watermark, which needs every
    transaction on the partition ended), recording `kind` and `<kind>-end` events; returns
    {partition: hw}."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "chaos-drain", "enable.auto.commit": False,
                  "isolation.level": "read_committed", "enable.partition.eof": True,
                  "fetch.wait.max.ms": 100, "logger": CLIENT_LOG})
    marks = {}
    try:
        for p in range(partitions):
            deadline = time.monotonic() + DRAIN_TIMEOUT_S
            hw = None
            while hw is None and time.monotonic() < deadline:
                try:
                    hw = c.get_watermark_offsets(TopicPartition(topic, p), timeout=5)[1]
                except Exception:  # the leader may still be moving: ask again
                    time.sleep(0.5)
            got = 0
            if hw is not None and hw > 0:
                c.assign([TopicPartition(topic, p, 0)])
                while got < hw and time.monotonic() < deadline:
                    msg = c.poll(0.5)
                    if msg is not None and not msg.error():
                        history.add(kind, partition=p, offset=msg.offset(), value=msg.value().decode())
                    # The end of the partition: its position past the last record, or the EOF
                    # event's offset (past trailing markers, which move no position).
                    eof = (msg.offset() if msg is not None and msg.error() is not None
                           and msg.error().code() == KafkaError._PARTITION_EOF else -1)
                    got = max(got, eof, c.position([TopicPartition(topic, p)])[0].offset)
                c.unassign()
            complete = hw is not None and got >= hw
            history.add(f"{kind}-end", partition=p, high_watermark=-1 if hw is None else hw, complete=complete)
            marks[p] = hw
    finally:
        c.close()
    return marks


def copier_committed(bootstrap, partitions, history):
    """Records the copier group's committed offset of each input partition (copy-committed;
    -1 when none), read once the copier stopped."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": COPY_GROUP, "enable.auto.commit": False,
                  "logger": CLIENT_LOG})
    try:
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while True:
            try:
                committed = c.committed([TopicPartition(TOPIC, p) for p in range(partitions)], timeout=10)
                break
            except KafkaException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        for tp in committed:
            history.add("copy-committed", partition=tp.partition, offset=tp.offset if tp.offset >= 0 else -1)
    finally:
        c.close()
