"""Consumer lag of an exactly-once group (offsets committed in transactions, consumers reading
read_committed) is measured against the partition's last stable offset, not its high watermark.

A transactional producer (confluent-kafka) commits records, and one group commits its offsets in
a transaction (send_offsets_to_transaction) while another commits the same offset plainly. A
transaction left open past that offset is no lag of the exactly-once group in
`spate_consumer_group_lag` (its consumers cannot read past the last stable offset) but is for the
plain group (high watermark), across a broker restart too (the coordinator learns which groups are
exactly-once again by replaying `__consumer_offsets`). `spate group describe` shows the last stable
offset as the log end offset for every group. Once the transaction commits, both lags count its
records and its commit marker.
"""

import time
import uuid

import pytest
from confluent_kafka import Consumer, TopicPartition

from ckutil import CLIENT_TIMEOUT_S, create_topic
from test_cli_groups import describe_json, spate
from test_groups import metric_samples
from test_transactions import produce, txn_producer, wait_stable, watermarks

COMMITTED = 5  # records of the first, committed transaction
OPEN = 4  # records of the transaction left open
METRIC = "spate_consumer_group_lag"


def lags(broker, topic):
    """{group: lag} of `topic`-0 in one scrape of /metrics."""
    return {labels["group"]: int(v) for labels, v in metric_samples(broker, METRIC)
            if labels.get("topic") == topic and labels.get("partition") == "0"}


def wait_lags(broker, topic, want, timeout=20):
    """Polls /metrics until the lags of the groups in `want` are `want`, in the same scrape."""
    deadline = time.monotonic() + timeout
    while True:
        got = lags(broker, topic)
        if {g: got.get(g) for g in want} == want:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{METRIC} of {topic}-0: {got}, expected {want} within {timeout}s")
        time.sleep(0.2)


def describe_row(bootstrap, group, topic):
    """(current offset, log end offset, lag) of `topic`-0 in `spate group describe GROUP`."""
    d = describe_json(bootstrap, group)
    rows = [r for r in d["offsets"] if r["topic"] == topic and r["partition"] == 0]
    assert len(rows) == 1, d
    return rows[0]["current_offset"], rows[0]["log_end_offset"], rows[0]["lag"]


@pytest.mark.timeout(150)
def test_an_exactly_once_groups_lag_ends_at_the_last_stable_offset(broker_factory, topic_name):
    b = broker_factory()
    bootstrap = b.bootstrap
    create_topic(bootstrap, topic_name)
    suffix = uuid.uuid4().hex[:8]
    eos, plain = f"eos-{suffix}", f"plain-{suffix}"
    consumers = [Consumer({"bootstrap.servers": bootstrap, "group.id": g, "enable.auto.commit": False,
                           "isolation.level": "read_committed"}) for g in (eos, plain)]
    try:
        # --- a transaction commits records; both groups commit the end of what is committed
        p = txn_producer(bootstrap)
        p.begin_transaction()
        produce(p, topic_name, [b"c%d" % i for i in range(COMMITTED)])
        p.commit_transaction(CLIENT_TIMEOUT_S)
        stable_end = COMMITTED + 1  # the records and their commit marker
        wait_stable(bootstrap, topic_name, stable_end)  # the marker follows EndTxn's answer
        p.begin_transaction()
        p.send_offsets_to_transaction([TopicPartition(topic_name, 0, stable_end)],
                                      consumers[0].consumer_group_metadata(), CLIENT_TIMEOUT_S)
        p.commit_transaction(CLIENT_TIMEOUT_S)
        consumers[1].commit(offsets=[TopicPartition(topic_name, 0, stable_end)], asynchronous=False)
        for c in consumers:
            assert [tp.offset for tp in c.committed([TopicPartition(topic_name, 0)],
                                                    timeout=CLIENT_TIMEOUT_S)] == [stable_end]
        wait_lags(b, topic_name, {eos: 0, plain: 0})

        # --- a transaction is left open: no lag of the exactly-once group, lag of the plain one
        p.begin_transaction()
        produce(p, topic_name, [b"open-%d" % i for i in range(OPEN)])
        assert watermarks(bootstrap, topic_name, "read_uncommitted")[1] == stable_end + OPEN
        assert watermarks(bootstrap, topic_name, "read_committed")[1] == stable_end
        wait_lags(b, topic_name, {eos: 0, plain: OPEN})

        # `spate group describe` shows the last stable offset as the log end, for every group.
        assert describe_row(bootstrap, eos, topic_name) == (stable_end, stable_end, 0)
        assert describe_row(bootstrap, plain, topic_name) == (stable_end, stable_end, 0)
        r = spate("group", "describe", eos, "--bootstrap-server", bootstrap)
        assert r.returncode == 0, r.stderr
        header, row = [line.split() for line in r.stdout.splitlines()
                       if line.startswith("TOPIC") or line.startswith(topic_name)]
        shown = dict(zip(header, row))
        assert (shown["LOG-END-OFFSET"], shown["LAG"]) == (str(stable_end), "0"), r.stdout
        r = spate("group", "describe", "--help")
        assert r.returncode == 0, r.stderr
        assert "last stable offset" in " ".join(r.stdout.split()), r.stdout

        # --- a restart: the coordinator replays __consumer_offsets and knows the group again
        b.restart()
        assert watermarks(bootstrap, topic_name, "read_committed")[1] == stable_end, "still open"
        wait_lags(b, topic_name, {eos: 0, plain: OPEN})

        # --- the transaction commits: its records and its marker are lag of both groups
        p.commit_transaction(CLIENT_TIMEOUT_S)
        end = stable_end + OPEN + 1
        wait_stable(bootstrap, topic_name, end)
        wait_lags(b, topic_name, {eos: OPEN + 1, plain: OPEN + 1})
        assert describe_row(bootstrap, eos, topic_name) == (stable_end, end, OPEN + 1)
    finally:
        for c in consumers:
            c.close()
