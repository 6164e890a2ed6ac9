"""Faults in a replicated cluster of real `spate serve` processes, driven by real clients:
two of three nodes down (no acknowledgement without a quorum, nothing acknowledged lost,
recovery when one returns), a replica set below min.insync.replicas (NOT_ENOUGH_REPLICAS while
acks=1 still works), a restarted leader truncating a divergent tail (KIP-101), the active
controller killed with SIGKILL, and a batch damaged at rest on the leader (refused, leadership
moved, the batch fetched again). The leader's gauges of parked requests follow: its followers'
long polls while idle, an acks=all produce held while its followers are paused (SIGSTOP) and
answered when they resume, none left after."""

import os
import signal
import threading

import pytest

import kproto
from ckutil import admin, consume, produce_all, producer
from clusterutil import (ContinuousProducer, controller_id, create_replicated, log_bytes, partition_state,
                         raw_produce, replica_records, wait_for)
from test_groups import metric_sum as parked  # a gauge of parked requests, 0 while absent

pytestmark = pytest.mark.timeout(300)

NONE = 0
REQUEST_TIMED_OUT = 7
NOT_ENOUGH_REPLICAS = 19


def survivors_of(cluster):
    return ",".join(b.bootstrap for b in cluster.nodes.values() if b.running)


def isr_of(bootstrap, topic, partition=0):
    return sorted(partition_state(admin(bootstrap), topic, partition)[2])


def assert_acked_read_back_once_in_order(bootstrap, topic, acked):
    got = consume(bootstrap, topic, partitions=[0], expected=len(acked), timeout=60)
    values = [int(m.value()) for m in got if m.value().isdigit()]
    missing = set(acked) - set(values)
    assert not missing, f"{len(missing)} acknowledged writes lost, e.g. {sorted(missing)[:10]}"
    assert len(values) == len(set(values)), "an idempotent retry was written twice"
    assert values == sorted(values), "records out of order"


def wait_identical_replicas(cluster, topic, partition=0, timeout=60):
    """Every node's log holds the same record at every offset (read off disk)."""
    def same():
        logs = [replica_records(n, topic, partition) for n in cluster.nodes.values()]
        return all(log == logs[0] for log in logs) and logs[0]
    return wait_for(f"{topic}-{partition} identical on every node", same, timeout=timeout)


def test_two_of_three_down_stops_acknowledging_and_recovers(cluster_factory, topic_name):
    c = cluster_factory(3)
    a, _ = create_replicated(c.bootstrap, topic_name, 1)
    leader, replicas, _ = partition_state(a, topic_name)
    f1, f2 = [r for r in replicas if r != leader]
    lead = c.nodes[leader]
    # Idle, each follower's fetcher long-polls the leader (only this topic has replicas).
    wait_for("both followers' fetches parked on the leader",
             lambda: parked(lead, "spate_kafka_delayed_fetches", fetcher="follower") == 2)

    prod = ContinuousProducer(c.bootstrap, topic_name).start()
    wait_for("100 acknowledged writes", lambda: prod.acked_count() >= 100)
    print(f"--- kill -9 follower {f1}: the ISR shrinks to two and writes go on (min.insync.replicas=2)")
    c.nodes[f1].kill9()
    wait_for(f"node {f1} out of the ISR", lambda: f1 not in isr_of(lead.bootstrap, topic_name))
    n = prod.acked_count()
    wait_for("100 more acknowledged writes on two replicas", lambda: prod.acked_count() >= n + 100)

    print(f"--- kill -9 follower {f2}: two of three down, no controller quorum, no acknowledgement")
    c.nodes[f2].kill9()
    # The leader cannot shrink the ISR without the quorum, so its high watermark stays where
    # the dead follower left it: an acks=all write times out instead of being acknowledged.
    err, _ = raw_produce(lead.bootstrap, topic_name, 0, [b"probe-1"], acks=-1, timeout_ms=2000)
    assert err in (REQUEST_TIMED_OUT, NOT_ENOUGH_REPLICAS), f"acks=all with two of three down: error {err}"
    frozen = prod.acked_count()
    err, _ = raw_produce(lead.bootstrap, topic_name, 0, [b"probe-2"], acks=-1, timeout_ms=2000)
    assert err in (REQUEST_TIMED_OUT, NOT_ENOUGH_REPLICAS), f"acks=all with two of three down: error {err}"
    assert prod.acked_count() == frozen, "a write was acknowledged while two of three replicas were down"

    print(f"--- restart node {f1}: the quorum returns, {f1} catches up, rejoins, acknowledgements resume")
    c.nodes[f1].start()
    wait_for("acknowledgements resume", lambda: prod.acked_count() >= frozen + 100, timeout=90)
    acked, errors = prod.finish()
    assert not errors, f"delivery errors: {errors[:5]}"
    assert_acked_read_back_once_in_order(lead.bootstrap, topic_name, acked)
    assert parked(lead, "spate_kafka_delayed_produces") == 0, "every answered produce left the gauge"

    print(f"--- restart node {f2}: it catches up and every replica holds the same records")
    c.nodes[f2].start()
    wait_for("all three back in the ISR", lambda: isr_of(c.bootstrap, topic_name) == sorted(replicas), timeout=60)
    log = wait_identical_replicas(c, topic_name)
    assert {v for _, v in log.values()} >= {b"probe-1", b"probe-2"}, "unacknowledged probes are kept once committed"


def test_an_acks_all_produce_parks_while_its_followers_are_paused_and_completes_when_they_resume(
        cluster_factory, topic_name):
    c = cluster_factory(3)
    a, _ = create_replicated(c.bootstrap, topic_name, 1)
    leader, replicas, _ = partition_state(a, topic_name)
    lead = c.nodes[leader]
    followers = [c.nodes[r] for r in replicas if r != leader]
    assert parked(lead, "spate_kafka_delayed_produces") == 0
    result = {}
    th = threading.Thread(target=lambda: result.update(got=raw_produce(
        lead.bootstrap, topic_name, 0, [b"held"], acks=-1, timeout_ms=30_000)))
    for f in followers:
        os.kill(f.proc.pid, signal.SIGSTOP)
    try:
        # Neither follower can fetch, fsync and report the batch (nor can the ISR shrink
        # without the controller quorum): the produce waits on the leader, counted.
        th.start()
        wait_for("the produce parked on the leader",
                 lambda: parked(lead, "spate_kafka_delayed_produces") == 1)
        assert th.is_alive() and "got" not in result, "answered while no follower could fsync it"
    finally:
        for f in followers:
            os.kill(f.proc.pid, signal.SIGCONT)
    th.join(40)
    assert result.get("got") == (NONE, 0), f"acks=all after the followers resumed: {result}"
    assert parked(lead, "spate_kafka_delayed_produces") == 0, "the answered produce left the gauge"
    log = wait_identical_replicas(c, topic_name)
    assert [v for _, v in log.values()] == [b"held"]


def test_below_min_insync_refuses_acks_all_but_takes_acks_1(cluster_factory, topic_name):
    # Five nodes, replication factor 3: with two replicas down the controller quorum (3 of 5)
    # still works, so the ISR really shrinks to the leader alone.
    c = cluster_factory(5)
    a, _ = create_replicated(c.bootstrap, topic_name, 1)
    leader, replicas, _ = partition_state(a, topic_name)
    followers = [r for r in replicas if r != leader]
    lead = c.nodes[leader]
    produce_all(producer(c.bootstrap, acks="all"), topic_name, ({"value": f"{i}".encode()} for i in range(50)))

    for f in followers:
        c.nodes[f].kill9()
    wait_for("the ISR shrunk to the leader", lambda: isr_of(lead.bootstrap, topic_name) == [leader])
    err, _ = raw_produce(lead.bootstrap, topic_name, 0, [b"refused"], acks=-1)
    assert err == NOT_ENOUGH_REPLICAS, f"acks=all with ISR {{{leader}}} below min.insync.replicas=2: error {err}"
    err, base = raw_produce(lead.bootstrap, topic_name, 0, [b"acks-1"], acks=1)
    assert (err, base) == (NONE, 50), "acks=1 needs no ISR: appended after the 50 records"

    print(f"--- restart node {followers[0]}: back in the ISR, acks=all is accepted again")
    c.nodes[followers[0]].start()
    wait_for("two replicas in the ISR", lambda: len(isr_of(lead.bootstrap, topic_name)) == 2, timeout=60)
    err, base = raw_produce(lead.bootstrap, topic_name, 0, [b"accepted"], acks=-1)
    assert (err, base) == (NONE, 51)
    got = [m.value() for m in consume(lead.bootstrap, topic_name, expected=52)]
    assert got == [f"{i}".encode() for i in range(50)] + [b"acks-1", b"accepted"], got[-5:]


def test_restarted_leader_truncates_a_divergent_tail(cluster_factory, topic_name):
    c = cluster_factory(3)
    a, _ = create_replicated(c.bootstrap, topic_name, 1)
    leader, replicas, _ = partition_state(a, topic_name)
    followers = [r for r in replicas if r != leader]
    old_leader = c.nodes[leader]
    base = [f"base-{i}".encode() for i in range(100)]
    produce_all(producer(c.bootstrap, acks="all"), topic_name, ({"value": v} for v in base))

    print(f"--- kill -9 both followers {followers}; the old leader takes acks=1 writes no follower has")
    for f in followers:
        c.nodes[f].kill9()
    # Without a controller quorum nothing moves: node `leader` still leads and appends.
    tail = [f"tail-{i}".encode() for i in range(50)]
    assert raw_produce(old_leader.bootstrap, topic_name, 0, tail, acks=1) == (NONE, 100)
    old_log = replica_records(old_leader, topic_name, 0)
    assert old_log[100][1] == b"tail-0" and len(old_log) == 150, "the divergent tail is on the old leader's disk"

    print(f"--- kill -9 the old leader, restart the followers: one of them leads in a higher epoch")
    old_leader.kill9()
    for f in followers:
        c.nodes[f].launch()
    for f in followers:
        c.nodes[f].wait_healthy(timeout=60)
    survivors = survivors_of(c)
    new_leader = wait_for("a new leader among the followers",
                          lambda: (lambda s: s[0] if s[0] in followers else None)(
                              partition_state(admin(survivors), topic_name)))
    new = [f"new-{i}".encode() for i in range(50)]
    produce_all(producer(survivors, acks="all"), topic_name, ({"value": v} for v in new))

    print(f"--- restart the old leader {leader}: it truncates its tail to the new leader's log and rejoins")
    old_leader.start()
    wait_for("the old leader back in the ISR", lambda: isr_of(c.bootstrap, topic_name) == sorted(replicas), timeout=60)
    log = wait_identical_replicas(c, topic_name)
    assert [v for _, (_, v) in sorted(log.items())] == base + new, "every replica: the base, then the new leader's records"
    assert log[100][0] > old_log[100][0], "offset 100 now holds a record of the new leader's epoch"
    assert [m.value() for m in consume(c.nodes[new_leader].bootstrap, topic_name, expected=150)] == base + new


def test_active_controller_killed_the_cluster_keeps_working(cluster_factory, topic_name):
    c = cluster_factory(3)
    a, t = create_replicated(c.bootstrap, topic_name, 3)
    ctrl = controller_id(c.bootstrap)
    assert ctrl in c.nodes, f"DescribeCluster/Metadata names an active controller: {ctrl}"
    # Write to the partition the controller's node leads, so both roles move at once.
    part = next(p.id for p in t.partitions.values() if p.leader == ctrl)
    prod = ContinuousProducer(c.bootstrap, topic_name, partition=part).start()
    wait_for("100 acknowledged writes", lambda: prod.acked_count() >= 100)

    print(f"--- kill -9 node {ctrl}: the active controller and a partition leader")
    c.nodes[ctrl].kill9()
    survivors = survivors_of(c)
    new_ctrl = wait_for("a new active controller", lambda: (lambda i: i if i not in (ctrl, -1) else None)(
        controller_id(survivors)))
    n = prod.acked_count()
    wait_for("100 more acknowledged writes", lambda: prod.acked_count() >= n + 100, timeout=60)
    # Metadata writes work through either survivor (one of them forwards to the new controller).
    for i, b in enumerate(b for b in c.nodes.values() if b.running):
        create_replicated(b.bootstrap, f"{topic_name}-after-{i}", 2, rf=2)
    acked, errors = prod.finish()
    assert not errors, f"delivery errors: {errors[:5]}"
    got = consume(survivors, topic_name, partitions=[part], expected=len(acked), timeout=60)
    values = [int(m.value()) for m in got]
    assert set(acked) <= set(values) and len(values) == len(set(values))

    print(f"--- restart node {ctrl}: it rejoins as a voter and a replica")
    c.nodes[ctrl].start()
    wait_for("every partition fully replicated again",
             lambda: all(isr_of(c.bootstrap, topic_name, p) == [1, 2, 3] for p in range(3)), timeout=60)
    wait_for("every node names the same active controller",
             lambda: len({controller_id(b.bootstrap) for b in c.nodes.values()} - {-1}) == 1)
    print(f"active controller {new_ctrl} after the kill; all nodes agree after the restart")


@pytest.fixture
def tmpfs_mounts():
    """mount(path, size) puts a small tmpfs at `path` (root only); everything is unmounted at
    the end. Requested before cluster_factory, so the nodes stop before their disks go."""
    import os
    import subprocess
    if os.geteuid() != 0:
        pytest.skip("mounting a small filesystem needs root")
    mounted = []

    def mount(path, size):
        path.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
        mounted.append(path)
        return path

    yield mount
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_a_follower_whose_disk_fills_leaves_the_isr_and_rejoins_when_space_returns(tmpfs_mounts, cluster_factory,
                                                                                      topic_name):
    import os
    c = cluster_factory(3, start=False, args=["--set", "replica.lag.time.max.ms=3000"])
    full = 3
    logs = tmpfs_mounts(c.nodes[full].data_dir / "logs", "24m")
    c.start()
    a, t = create_replicated(c.bootstrap, topic_name, 3)
    part = next(p.id for p in t.partitions.values() if p.leader != full)
    leader = t.partitions[part].leader

    st = os.statvfs(logs)
    filler = logs / "filler"
    with open(filler, "wb") as f:
        f.write(b"\0" * (st.f_bavail * st.f_frsize - 256 * 1024))
    print(f"--- node {full}'s log disk is full: it cannot append what it fetches for {topic_name}-{part}")
    values = [f"{i:05d}".encode() + b"x" * 1019 for i in range(3000)]
    produce_all(producer(c.bootstrap, acks="all", **{"message.timeout.ms": 60000}), topic_name,
                ({"value": v, "partition": part} for v in values))
    wait_for(f"node {full} out of the ISR", lambda: full not in isr_of(c.nodes[leader].bootstrap, topic_name, part))
    assert c.nodes[full].running, "a full disk must not take the node down"

    print(f"--- space returns: node {full} catches up and rejoins the ISR")
    filler.unlink()
    wait_for(f"node {full} back in the ISR", lambda: full in isr_of(c.nodes[leader].bootstrap, topic_name, part),
             timeout=60)
    log = wait_identical_replicas(c, topic_name, part)
    assert [v for _, (_, v) in sorted(log.items())] == values


def test_a_data_directory_of_another_cluster_or_node_is_refused(cluster_factory):
    a = cluster_factory(3)
    b = cluster_factory(3)
    a.nodes[1].stop()
    b.nodes[1].stop()
    stranger = a.nodes[1]
    own = stranger.data_dir

    def refused(data_dir, node):
        node.data_dir = data_dir
        node.launch()
        rc = node.proc.wait(timeout=60)
        assert rc != 0, "started on a directory that is not its own"
        return node.stderr_tail()

    print("--- node 1 of cluster A on node 1 of cluster B's directory: another cluster")
    err = refused(b.nodes[1].data_dir, stranger)
    assert "this data directory is from another cluster" in err, err
    assert "voters in controller.quorum.voters" in err and "belongs to cluster" in err, err
    print("--- node 1 of cluster A on node 2's directory: another node")
    a.nodes[2].stop()
    err = refused(a.nodes[2].data_dir, stranger)
    assert "belongs to node 2, not node 1" in err and "set node.id to 2" in err, err
    print("--- its own directory: it rejoins")
    stranger.data_dir = own
    a.nodes[2].data_dir = a.nodes[2].workdir / "data"
    a.nodes[2].launch()
    stranger.start()
    a.nodes[2].wait_healthy(timeout=60)


def test_a_batch_damaged_at_rest_on_the_leader_is_refused_and_fetched_again(cluster_factory, topic_name):
    c = cluster_factory(3)
    a, _ = create_replicated(c.bootstrap, topic_name, 1)
    leader, replicas, _ = partition_state(a, topic_name)
    values = [f"v-{i}".encode() for i in range(100)]
    for i in range(0, 100, 10):
        assert raw_produce(c.nodes[leader].bootstrap, topic_name, 0, values[i:i + 10]) == (NONE, i)
    wait_identical_replicas(c, topic_name)

    print(f"--- a bit flips at rest in the leader's (node {leader}) batch at offset 50, inside its CRC")
    segment = c.nodes[leader].data_dir / "logs" / f"{topic_name}-0" / f"{0:020}.log"
    stored = bytearray(segment.read_bytes())
    pos = 0
    for b in kproto.parse_batches(bytes(stored)):
        if b.base_offset == 50:
            break
        pos += 12 + b.length
    end = pos + 12 + b.length
    stored[end - 1] ^= 0x01
    segment.write_bytes(bytes(stored))  # the running node reads it through the same page cache
    assert [b.crc_ok for b in kproto.parse_batches(bytes(stored))].count(False) == 1

    print("--- a consumer reading from the start gets every record, in order, from a healthy replica")
    got = consume(c.bootstrap, topic_name, expected=100, timeout=60)
    assert [m.value() for m in got if not m.error()] == values
    new_leader = wait_for("leadership moved off the damaged replica",
                          lambda: (lambda s: s[0] if s[0] != leader else None)(partition_state(a, topic_name)))
    assert new_leader in replicas

    print(f"--- node {leader} cuts the damaged batch away, fetches it again and rejoins the ISR")
    wait_for("the damaged replica back in the ISR", lambda: isr_of(c.bootstrap, topic_name) == sorted(replicas),
             timeout=60)
    log = wait_identical_replicas(c, topic_name)
    assert [v for _, (_, v) in sorted(log.items())] == values
    assert all(b.crc_ok for b in kproto.parse_batches(segment.read_bytes())), "repaired on disk"
    assert not (segment.parent / "damaged").exists(), "the damage record goes with the repair"
    assert raw_produce(c.nodes[new_leader].bootstrap, topic_name, 0, [b"after"]) == (NONE, 100)


def test_an_offset_commit_is_fetched_only_once_durable(cluster_factory, topic_name):
    """Regression: the group coordinator applied an OffsetCommit to memory once its record was
    in the leader's log, and OffsetFetch showed it at once, while the commit itself was
    answered only when the record was fsynced on every in-sync replica. A commit that a
    failover then took back had been shown: offsets went backwards. Now OffsetFetch shows a
    commit once its record is below the offsets partition's high watermark, and the one it
    replaced until then (Kafka serves commits whose append completed)."""
    from test_groups import find_coordinator, offset_commit, offset_fetch
    from test_transactions_faults import java_partition

    c = cluster_factory(3)
    a, _ = create_replicated(c.bootstrap, topic_name, 1)
    group = f"g-{topic_name}"

    def coordinator():
        with kproto.Conn(c.nodes[1].bootstrap) as conn:
            err, node, _, _ = find_coordinator(conn, group)
            return node if err == NONE else None

    def commit_5():
        # Retried as clients do: a coordinator still loading the new __consumer_offsets
        # partition answers NOT_COORDINATOR or COORDINATOR_LOAD_IN_PROGRESS.
        node = coordinator()
        if node is None:
            return None
        with kproto.Conn(c.nodes[node].bootstrap) as conn:
            return node if offset_commit(conn, group, -1, "", topic_name, {0: 5}) == {0: NONE} else None

    coord = wait_for("the commit of 5", commit_5, timeout=60)
    offsets_partition = java_partition(group)
    lead = c.nodes[coord]

    def fetched(node):
        with kproto.Conn(node.bootstrap) as conn:
            err, parts = offset_fetch(conn, group, topic_name, [0])
            return err, parts[0][0], parts[0][2]

    assert wait_for("5 fetched", lambda: (lambda r: r if r[0] == NONE else None)(fetched(lead))) == (NONE, 5, NONE)
    _, replicas, _ = wait_for("the offsets partition's ISR whole", lambda: (lambda s: s if len(s[2]) == 3 else None)(
        partition_state(a, "__consumer_offsets", offsets_partition)))
    followers = [c.nodes[r] for r in replicas if r != coord]

    print(f"--- SIGSTOP the followers {[r for r in replicas if r != coord]} of the coordinator's "
          f"__consumer_offsets-{offsets_partition}; commit 9")
    before = log_bytes(lead, "__consumer_offsets", offsets_partition)
    result = {}

    def commit_9():
        try:
            with kproto.Conn(lead.bootstrap, timeout=60) as conn:
                result["got"] = offset_commit(conn, group, -1, "", topic_name, {0: 9})
        except (OSError, kproto.Closed) as e:  # the coordinator is killed below
            result["got"] = repr(e)

    th = threading.Thread(target=commit_9, daemon=True)
    for f in followers:
        os.kill(f.proc.pid, signal.SIGSTOP)
    try:
        th.start()
        wait_for("the commit of 9 in the coordinator's log",
                 lambda: log_bytes(lead, "__consumer_offsets", offsets_partition) > before)
        assert "got" not in result, f"answered while no follower could fsync it: {result}"
        assert fetched(lead) == (NONE, 5, NONE), "a commit no follower has was shown"
        print(f"--- kill -9 the coordinator (node {coord}); resume the followers")
        lead.kill9()
    finally:
        for f in followers:
            os.kill(f.proc.pid, signal.SIGCONT)
    th.join(30)

    def new_coordinator():
        for f in followers:
            with kproto.Conn(f.bootstrap) as conn:
                err, node, _, _ = find_coordinator(conn, group)
            if err == NONE and node != coord:
                return node
        return None

    new_coord = wait_for("a new coordinator", new_coordinator, timeout=60)
    after = wait_for("OffsetFetch at the new coordinator", lambda: (lambda r: r if r[0] == NONE else None)(
        fetched(c.nodes[new_coord])), timeout=60)
    print(f"--- node {new_coord} coordinates the group and shows {after[1]}")
    # The commit of 9 was never acknowledged: it may be gone, or a follower may have it (the
    # answer to a fetch it had parked on the leader before it stopped can carry the record).
    # Either is consistent with what the reader was shown before; nothing below 5 is.
    assert after in ((NONE, 5, NONE), (NONE, 9, NONE)), after
