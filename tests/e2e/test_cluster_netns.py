"""A network partition between real cluster nodes, each `spate serve` in its own network
namespace (see netns.py): the partitioned leader stops acknowledging, the majority elects a new
leader in a higher epoch, and after healing every replica holds the same record at every offset.
"""

import pytest

from ckutil import admin, consume, produce_all, producer
from clusterutil import create_replicated, partition_state, raw_produce, replica_records, wait_for
from netns import NetnsLab, missing_tools, not_root

pytestmark = pytest.mark.timeout(300)

NONE = 0
NOT_LEADER_OR_FOLLOWER = 6
REQUEST_TIMED_OUT = 7
NOT_ENOUGH_REPLICAS = 19


@pytest.fixture
def netns_lab():
    if not_root():
        pytest.skip(not_root())
    if missing_tools():
        pytest.fail(missing_tools())
    lab = NetnsLab(3).up()
    try:
        yield lab
    finally:
        lab.teardown()


def test_partitioned_leader_stops_acknowledging_and_heals_without_divergence(netns_lab, cluster_factory,
                                                                              topic_name):
    # netns_lab comes first among the fixtures, so the nodes are stopped before their
    # namespaces go.
    c = cluster_factory(3, hosts=netns_lab.hosts, prefixes=netns_lab.prefixes)
    a, _ = create_replicated(c.bootstrap, topic_name, 1)
    leader, replicas, _ = partition_state(a, topic_name)
    others = [r for r in replicas if r != leader]
    majority = ",".join(c.nodes[r].bootstrap for r in others)
    old = c.nodes[leader]
    base = [f"base-{i}".encode() for i in range(100)]
    produce_all(producer(c.bootstrap, acks="all"), topic_name, ({"value": v} for v in base))

    print(f"--- cut node {leader} (the leader) off from nodes {others}; clients still reach it")
    netns_lab.isolate(leader)
    # The old leader cannot shrink its ISR without the controller quorum, so its high watermark
    # is stuck: an acks=all write is never acknowledged there.
    err, _ = raw_produce(old.bootstrap, topic_name, 0, [b"unacked-all"], acks=-1, timeout_ms=3000)
    assert err in (REQUEST_TIMED_OUT, NOT_ENOUGH_REPLICAS, NOT_LEADER_OR_FOLLOWER), (
        f"the partitioned leader answered acks=all with error {err}")
    # acks=1 is answered after the local append: this tail is what healing must remove.
    err, _ = raw_produce(old.bootstrap, topic_name, 0, [b"stale-0", b"stale-1"], acks=1)
    assert err in (NONE, NOT_LEADER_OR_FOLLOWER), err

    new_leader = wait_for("a new leader on the majority side",
                          lambda: (lambda s: s[0] if s[0] in others else None)(
                              partition_state(admin(majority), topic_name)), timeout=60)
    new = [f"new-{i}".encode() for i in range(100)]
    produce_all(producer(majority, acks="all"), topic_name, ({"value": v} for v in new))
    err, _ = raw_produce(old.bootstrap, topic_name, 0, [b"unacked-all-2"], acks=-1, timeout_ms=2000)
    assert err != NONE, "the partitioned old leader acknowledged an acks=all write"

    print(f"--- heal: node {leader} learns of leader {new_leader}, truncates its tail and catches up")
    netns_lab.heal()
    wait_for("the old leader back in the ISR",
             lambda: sorted(partition_state(admin(majority), topic_name)[2]) == sorted(replicas), timeout=90)

    def identical():
        logs = [replica_records(n, topic_name, 0) for n in c.nodes.values()]
        return logs[0] if all(log == logs[0] for log in logs) else None
    log = wait_for("every replica identical", identical, timeout=60)
    values = [v for _, (_, v) in sorted(log.items())]
    assert values == base + new, f"replicas hold {values[95:105]} around the partition"
    epochs = {v: e for e, v in log.values()}
    assert epochs[b"new-0"] > epochs[b"base-99"], "the new leader wrote in a higher leader epoch"
    assert [m.value() for m in consume(c.bootstrap, topic_name, expected=200)] == base + new
