"""A network partition between real cluster nodes, each `spate serve` in its own network
namespace (see netns.py): the partitioned leader stops acknowledging, the majority elects a new
leader in a higher epoch, and after healing every replica holds the same record at every offset;
a DeleteTopics sent to a cut-off node gives up within its timeout instead of deleting, after the
heal, the topic re-created meanwhile under the same name; a controller voter cut off and back
does not unseat the active controller.
"""

import json
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from confluent_kafka.admin import NewTopic

import kproto
from ckutil import admin, consume, produce_all, producer, wait_topic
from clusterutil import controller_id, create_replicated, partition_state, raw_produce, replica_records, wait_for
from netns import NetnsLab, missing_tools, not_root
from spateproc import SPATE_BIN

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


def create_assigned(bootstrap, name, replicas):
    """One partition on `replicas` in that order (the first is the preferred leader)."""
    a = admin(bootstrap)
    a.create_topics([NewTopic(name, num_partitions=1, replica_assignment=[replicas])], request_timeout=20)[name].result(timeout=30)
    wait_topic(a, name, 1, timeout=30)


def test_a_delete_sent_to_a_cut_off_node_times_out_and_spares_the_re_created_topic(netns_lab, cluster_factory,
                                                                                   topic_name):
    """Simulator seed 6100: a DeleteTopics waited on a node cut off from the controller for
    up-to-date metadata. Its client gave up and went elsewhere, where the topic was deleted and
    created again; after the heal the first request resolved the name to the new topic and
    deleted it. A DeleteTopics now resolves names only within its own timeout_ms.

    The cut-off node leads the old topic and is made leader of the new one: after the heal, the
    new topic's follower may fetch from it before it has caught up, while it still holds the old
    topic under the same name. That follower once copied the old topic's records into the new
    one (fetching by name); it now fetches by topic id, which the stale node refuses."""
    c = cluster_factory(3, hosts=netns_lab.hosts, prefixes=netns_lab.prefixes)
    cut_off = next(n for n in c.nodes if n != controller_id(c.bootstrap))
    others = [n for n in c.nodes if n != cut_off]
    majority = ",".join(c.nodes[n].bootstrap for n in others)
    create_assigned(c.bootstrap, topic_name, [cut_off] + others)
    produce_all(producer(c.bootstrap, acks="all"), topic_name, ({"value": b"old-%d" % i} for i in range(10)))

    print(f"--- cut node {cut_off} off; a DeleteTopics sent to it waits for metadata it cannot get")
    netns_lab.isolate(cut_off)

    def delete_on_cut_off_node():
        with kproto.Conn(c.nodes[cut_off].bootstrap, timeout=120) as conn:
            return kproto.delete_topics(conn, [topic_name], timeout_ms=2000)

    with ThreadPoolExecutor(1) as pool:
        stale = pool.submit(delete_on_cut_off_node)
        print("--- the majority deletes the topic and creates it again under the same name, led by the cut-off node")
        a = admin(majority)
        a.delete_topics([topic_name], request_timeout=20)[topic_name].result(timeout=30)
        wait_for("the topic gone on the majority",
                 lambda: topic_name not in a.list_topics(timeout=10).topics, timeout=30)
        create_assigned(majority, topic_name, [cut_off, others[0]])
        # The request's 2 s are up while the node is still cut off (before the fix it waited on
        # for the controller's 30 s, and a heal within them let it delete the new topic).
        answer = stale.result(timeout=120)
    assert answer == {topic_name: REQUEST_TIMED_OUT}, f"the DeleteTopics sent to the cut-off node answered {answer}"
    print(f"--- heal: node {cut_off} catches up")
    netns_lab.heal()
    # The new topic has two replicas, the deleted one had three.
    wait_for(f"node {cut_off} sees the re-created topic",
             lambda: partition_state(admin(c.nodes[cut_off].bootstrap), topic_name)[1] == [cut_off, others[0]],
             timeout=60)

    # The re-created topic lives on, and holds nothing of the deleted one on any replica: a
    # write to it is acknowledged (both replicas in sync) and read back alone.
    produce_all(producer(c.bootstrap, acks="all"), topic_name, [{"value": b"new"}])
    assert [m.value() for m in consume(c.bootstrap, topic_name, expected=1)] == [b"new"]
    for n in (cut_off, others[0]):
        on_disk = [v for _, v in replica_records(c.nodes[n], topic_name, 0).values()]
        assert on_disk == [b"new"], f"node {n}'s replica of the re-created topic holds {on_disk[:5]}"


def quorum(bootstrap):
    """The controller quorum as `spate cluster status` reports it (DescribeQuorum), or None."""
    out = subprocess.run([str(SPATE_BIN), "cluster", "status", "--output", "json", "--bootstrap-server",
                          bootstrap, "--timeout-ms", "5000"], capture_output=True, text=True, timeout=30)
    return json.loads(out.stdout).get("quorum") if out.stdout.strip() else None


def caught_up(q, voter):
    """`q` if it has a leader and `voter` is no entry behind it, else None."""
    if not q or q.get("leader_id") is None:
        return None
    lag = next((v.get("lag") for v in q["voters"] if v["id"] == voter), None)
    return q if lag == 0 else None


def test_a_voter_cut_off_and_back_does_not_unseat_the_active_controller(netns_lab, cluster_factory):
    c = cluster_factory(3, hosts=netns_lab.hosts, prefixes=netns_lab.prefixes)
    q = wait_for("a controller quorum with a leader",
                 lambda: (lambda q: q if q and q.get("leader_id") is not None else None)(quorum(c.bootstrap)),
                 timeout=60)
    leader, term = q["leader_id"], q["leader_epoch"]
    voter = next(v["id"] for v in q["voters"] if v["id"] != leader)
    majority = ",".join(n.bootstrap for i, n in c.nodes.items() if i != voter)
    wait_for(f"voter {voter} caught up", lambda: caught_up(quorum(majority), voter), timeout=60)

    print(f"--- cut voter {voter} off for 6 s: its election timeouts pass many times over")
    netns_lab.isolate(voter)
    started = time.monotonic()
    # The metadata log moves on without it (a topic created), so it has entries to catch up on:
    # caught up again, it has answered the leader since the heal.
    a = admin(majority)
    a.create_topics([NewTopic("while-cut-off", num_partitions=1, replication_factor=2)],
                    request_timeout=20)["while-cut-off"].result(timeout=30)
    wait_for(f"voter {voter} behind", lambda: (lambda q: q and not caught_up(q, voter))(quorum(majority)),
             timeout=30)
    time.sleep(max(0.0, 6 - (time.monotonic() - started)))  # the fault's length, not a wait for an event
    netns_lab.heal()
    # Back, it follows the same leader in the same term: had it raised its term at its election
    # timeouts, its first answer after the heal would have made the active controller step down
    # (an election, with no active controller for a while).
    after = wait_for(f"voter {voter} caught up again", lambda: caught_up(quorum(majority), voter), timeout=60)
    assert (after["leader_id"], after["leader_epoch"]) == (leader, term), (
        f"the active controller was {leader} in term {term}; after the heal: {after}")
