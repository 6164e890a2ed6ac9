"""A fault campaign against a cluster of real `spate serve` processes (`scripts/chaos`).

Each node runs in its own network namespace (tests/e2e/netns.py). Producers (librdkafka through
confluent-kafka: acks=all, idempotence) write unique values to every partition of one topic,
transactional producers write theirs in transactions (some aborted on purpose), consumers read
every partition read_committed, and a nemesis driven by the seed injects one fault at a
time: kill -9 and restart, SIGSTOP/SIGCONT, network partitions (one node isolated, halves, a
bridge, one-way), a degraded link, packet loss, and a full disk. Then everything heals, the
workload stops, a final read drains every partition, and the nodes stop.

The history (history.jsonl, the format of HISTORY.md) is checked for lost acknowledged writes,
duplicates, two values at one offset, consumer offsets that skip records, non-monotonic reads,
and transactions that are not all-or-nothing, lose a committed value or show an aborted or
open one (checker.py); the replicas' logs are read off disk and compared with the drain (two different
records at one offset below the high watermark on any replica); and liveness is checked: after
healing, every partition takes an acknowledged write again within a bound. report.py writes
report.md, summary.json and plot.svg. Exit code 0 only when nothing is wrong.

Needs root (namespaces, iptables, tc; tmpfs mounts for disk-full) and the spate binary.
"""

import argparse
import json
import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "e2e")]

from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402

import checker  # noqa: E402
import kproto  # noqa: E402
import report  # noqa: E402
from netns import NetnsLab, missing_tools, not_root  # noqa: E402
from spateproc import REPO_ROOT, SPATE_BIN, Cluster  # noqa: E402
from workload import (CLIENT_LOG, COPY_TOPIC, FLUSH_TIMEOUT_S, TOPIC, TXN_END_BOUND_S,  # noqa: E402
                      ConsumerWorker, CopierWorker, ProducerWorker, TxnProducerWorker, copier_committed, drain)

FAULTS = ("kill", "pause", "partition", "latency", "loss", "disk-full")
# Bounds: every wait of the campaign ends by itself (the workload's own are in workload.py).
START_TIMEOUT_S = 90
FIRST_ACK_TIMEOUT_S = 60
RECOVERY_BOUND_S = 60
DISK_SIZE = "1g"

class History:
    """The campaign's events in order, each stamped with seconds since the start."""

    def __init__(self):
        self.t0 = time.monotonic()
        self.events = []
        self.lock = threading.Lock()

    def now(self):
        return time.monotonic() - self.t0

    def add(self, kind, **fields):
        with self.lock:  # stamping under the lock keeps `t` non-decreasing in list order
            event = {"t": round(self.now(), 6), "kind": kind, **fields}
            self.events.append(event)
        return event

    def write(self, path):
        with open(path, "w") as f:
            for e in self.events:
                f.write(json.dumps(e, separators=(",", ":")) + "\n")


# ---- nemesis ----------------------------------------------------------------------------------


class Nemesis:
    """One fault at a time, each chosen, placed and timed by the seeded `rng`."""

    def __init__(self, rng, cluster, lab, kinds, history):
        self.rng, self.cluster, self.lab, self.kinds, self.history = rng, cluster, lab, kinds, history
        self.ids = 0

    def run(self, until):
        while True:
            quiet = self.rng.uniform(2, 6)
            length = self.rng.uniform(4, 12)
            if self.history.now() + quiet + length > until:
                return
            time.sleep(quiet)
            kind = self.rng.choice(self.kinds)
            self.ids += 1
            undo, nodes, detail = getattr(self, "start_" + kind.replace("-", "_"))()
            self.history.add("fault", fault=kind, phase="start", id=self.ids, nodes=nodes, detail=detail)
            print(f"  {self.history.now():6.1f}s  fault {self.ids}: {kind} {detail}", flush=True)
            time.sleep(length)
            undo()
            self.history.add("fault", fault=kind, phase="end", id=self.ids, nodes=nodes, detail=detail)

    def node(self):
        return self.rng.choice(sorted(self.cluster.nodes))

    def start_kill(self):
        n = self.node()
        b = self.cluster.nodes[n]
        b.kill9()

        def restart():
            b.launch()
            b.wait_healthy(timeout=START_TIMEOUT_S)
        return restart, [n], f"kill -9 node {n}, then restart it"

    def start_pause(self):
        n = self.node()
        pid = self.cluster.nodes[n].proc.pid
        os.kill(pid, signal.SIGSTOP)
        return (lambda: os.kill(pid, signal.SIGCONT)), [n], f"SIGSTOP node {n}, then SIGCONT"

    def start_partition(self):
        nodes = sorted(self.cluster.nodes)
        self.rng.shuffle(nodes)
        modes = ["isolate", "halves", "one-way"] + (["bridge"] if len(nodes) >= 3 else [])
        mode = self.rng.choice(modes)
        if mode == "isolate":
            self.lab.isolate(nodes[0])
            detail = f"isolate node {nodes[0]}"
        elif mode == "halves":
            cut = len(nodes) // 2
            a, b = self.split(nodes[:cut], nodes[cut:])
            detail = f"halves {a} | {b}"
        elif mode == "bridge":
            bridge, rest = nodes[0], nodes[1:]
            cut = len(rest) // 2
            a, b = self.split(rest[:cut], rest[cut:])
            detail = f"bridge: {a} | {b}, both see node {bridge}"
        else:
            for other in nodes[1:]:
                self.lab.drop_from(nodes[0], other)
            detail = f"one-way: node {nodes[0]} hears no peer, peers hear it"
        return self.lab.heal, sorted(self.cluster.nodes), detail

    def split(self, a, b):
        """Cuts every node of `a` from every node of `b`; returns both, sorted."""
        for x in a:
            for y in b:
                self.lab.cut(x, y)
        return sorted(a), sorted(b)

    def start_latency(self):
        n = self.node()
        how = self.lab.slow(n, self.rng.choice([50, 100, 200]))
        return self.lab.heal, [n], f"slow link on node {n}: {how}"

    def start_loss(self):
        n = self.node()
        percent = self.rng.choice([5, 10, 20])
        self.lab.lose(n, percent)
        return self.lab.heal, [n], f"node {n} drops {percent}% of incoming packets"

    def start_disk_full(self):
        n = self.node()
        ballast = self.cluster.nodes[n].data_dir / "chaos-ballast"
        fill(ballast)
        return (lambda: ballast.unlink(missing_ok=True)), [n], f"node {n}'s disk full"


def fill(path):
    """Takes every free byte of the file system holding `path` (written, not reserved: tmpfs
    refuses a fallocate of exactly the free space)."""
    with open(path, "wb", buffering=0) as f:
        for chunk in (1 << 20, 4096, 1):
            try:
                while True:
                    f.write(b"\0" * chunk)
            except OSError:
                pass


# ---- checks beside the history ----------------------------------------------------------------


CONTROL_BATCH = 0x20  # the attributes bit of a transaction marker's batch


def replica_divergence(cluster, marks, history):
    """Offsets below the high watermark where a replica's log, read off disk after the nodes
    stopped, holds another value than the drain read there, or, at an offset the drain does not
    show (a record of an aborted transaction), another value than the other replicas. Markers
    are skipped (the drain never shows them; the replicas' agreement on them is the LSO's)."""
    drained = {(e["partition"], e["offset"]): e["value"] for e in history.events if e["kind"] == "drain"}
    undrained = {}                                # (p, o) -> (first node, its value)
    found = []
    for n, b in sorted(cluster.nodes.items()):
        for p, hw in marks.items():
            d = b.data_dir / "logs" / f"{TOPIC}-{p}"
            if hw is None or not d.exists():
                continue
            for seg in sorted(d.glob("*.log")):
                for batch in kproto.parse_batches(seg.read_bytes()):
                    if batch.attributes & CONTROL_BATCH:
                        continue
                    for r in batch.records or ():
                        o = r["offset"]
                        if o >= hw:
                            continue
                        value = r["value"].decode(errors="replace") if r["value"] is not None else None
                        if (p, o) in drained:
                            expected, source = drained[(p, o)], "drain"
                        else:
                            first, expected = undrained.setdefault((p, o), (n, value))
                            source = f"node {first}"
                        if value != expected:
                            found.append({"node": n, "partition": p, "offset": o, "replica": value,
                                          "expected": expected, "from": source})
    return found


def recovery(history, healed_at, partitions):
    """Seconds from the heal until every partition had an acknowledged write again, or None
    when one did not within RECOVERY_BOUND_S."""
    deadline = time.monotonic() + RECOVERY_BOUND_S
    while time.monotonic() < deadline:
        with history.lock:
            acked = {e["partition"]: e["t"] for e in history.events if e["kind"] == "ack" and e["t"] >= healed_at}
        if len(acked) == partitions:
            return round(max(acked.values()) - healed_at, 3)
        time.sleep(0.2)
    return None


def copier_progress(history, healed_at):
    """Seconds from the heal until the copier committed a transaction, or None when it did not
    within RECOVERY_BOUND_S."""
    deadline = time.monotonic() + RECOVERY_BOUND_S
    while time.monotonic() < deadline:
        with history.lock:
            done = [e["t"] for e in history.events if e["kind"] == "copy-txn" and e["t"] >= healed_at]
        if done:
            return round(done[0] - healed_at, 3)
        time.sleep(0.2)
    return None


# ---- the campaign -----------------------------------------------------------------------------


def parse(argv):
    ap = argparse.ArgumentParser(prog="scripts/chaos", description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, default=3, choices=[3, 4, 5])
    ap.add_argument("--seed", type=int, default=None, help="default: random (printed)")
    ap.add_argument("--duration", type=float, default=60, help="seconds of faults [60]")
    ap.add_argument("--faults", default="kill,pause,partition",
                    help=f"comma list of {','.join(FAULTS)}, or all [kill,pause,partition]")
    ap.add_argument("--partitions", type=int, default=3)
    ap.add_argument("--producers", type=int, default=2)
    ap.add_argument("--rate", type=float, default=100, help="values per second per producer [100]")
    ap.add_argument("--txn-producers", type=int, default=1,
                    help="transactional producers besides --producers [1]")
    ap.add_argument("--txn-rate", type=float, default=10, help="transactions per second per transactional producer [10]")
    ap.add_argument("--copier", type=int, default=1, choices=[0, 1],
                    help="1: an exactly-once copier of the topic runs beside the workload [1]")
    ap.add_argument("--out", type=Path, default=None, help="default: target/chaos/<time>-n<nodes>-s<seed>")
    args = ap.parse_args(argv)
    args.faults = list(FAULTS) if args.faults == "all" else [f for f in args.faults.split(",") if f]
    bad = [f for f in args.faults if f not in FAULTS]
    if bad or not args.faults:
        ap.error(f"unknown fault {bad}; choose from {', '.join(FAULTS)}")
    if not (1 <= args.partitions <= 64 and 1 <= args.producers <= 16 and 0 < args.rate <= 5000
            and 5 <= args.duration <= 3600 and 0 <= args.txn_producers <= 16 and 0 < args.txn_rate <= 1000):
        ap.error("--partitions 1..64, --producers 1..16, --rate up to 5000, --duration 5..3600, "
                 "--txn-producers 0..16, --txn-rate up to 1000")
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1 << 32)
    return args


def command_line(args):
    return (f"scripts/chaos --nodes {args.nodes} --seed {args.seed} --duration {args.duration:g} "
            f"--faults {','.join(args.faults)} --partitions {args.partitions} --producers {args.producers} "
            f"--rate {args.rate:g} --txn-producers {args.txn_producers} --txn-rate {args.txn_rate:g} --copier {args.copier}")


def spate_version():
    r = subprocess.run([str(SPATE_BIN), "--version"], capture_output=True, text=True)
    return r.stdout.strip() or r.stderr.strip()


def create_topic(bootstrap, partitions, rf, topic=TOPIC):
    a = AdminClient({"bootstrap.servers": bootstrap})
    fs = a.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=rf)], request_timeout=30)
    fs[topic].result(timeout=60)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        t = a.list_topics(topic=topic, timeout=10).topics.get(topic)
        if t is not None and len(t.partitions) == partitions and all(
                p.leader >= 0 and len(p.isrs) == rf for p in t.partitions.values()):
            return
        time.sleep(0.2)
    raise SystemExit("scripts/chaos: the topic's partitions never all had a leader and a full ISR")


def run(args):
    out = args.out or REPO_ROOT / "target" / "chaos" / f"{time.strftime('%Y%m%d-%H%M%S')}-n{args.nodes}-s{args.seed}"
    out.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(out / "clients.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    CLIENT_LOG.addHandler(handler)
    CLIENT_LOG.setLevel(logging.INFO)
    CLIENT_LOG.propagate = False
    rng = random.Random(args.seed)
    print(f"scripts/chaos: seed {args.seed}, {args.nodes} nodes, {args.duration:g}s of {','.join(args.faults)}; "
          f"output in {out}\n  reproduce: {command_line(args)}", flush=True)
    lab = NetnsLab(args.nodes).up()
    mounts, cluster = [], None
    try:
        rf = min(3, args.nodes)
        cluster = Cluster(out / "cluster", nodes=args.nodes, hosts=lab.hosts, prefixes=lab.prefixes)
        if "disk-full" in args.faults:
            for b in cluster.nodes.values():
                subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_SIZE}", "tmpfs", str(b.data_dir)],
                               check=True)
                mounts.append(b.data_dir)
        for b in cluster.nodes.values():
            b.launch()
        for b in cluster.nodes.values():
            b.wait_healthy(timeout=START_TIMEOUT_S)
        create_topic(cluster.bootstrap, args.partitions, rf)
        if args.copier:
            create_topic(cluster.bootstrap, args.partitions, rf, COPY_TOPIC)

        history = History()
        stop_producers, stop_consumers = threading.Event(), threading.Event()
        producers = [ProducerWorker(f"p{i}", cluster.bootstrap, args.partitions, args.rate, history, stop_producers)
                     for i in range(args.producers)]
        producers += [TxnProducerWorker(f"x{i}", cluster.bootstrap, args.partitions, args.txn_rate,
                                        random.Random(f"{args.seed}-x{i}"), history, stop_producers)
                      for i in range(args.txn_producers)]
        if args.copier:
            producers.append(CopierWorker(cluster.bootstrap, history, stop_producers))
        consumers = [ConsumerWorker("c0", cluster.bootstrap, args.partitions, history, stop_consumers)]
        for w in producers + consumers:
            w.start()
        if recovery(history, 0, args.partitions) is None:
            raise SystemExit("scripts/chaos: no acknowledged write on every partition before any fault")
        Nemesis(rng, cluster, lab, args.faults, history).run(until=history.now() + args.duration)
        lab.heal()
        healed = history.add("heal")["t"]
        print(f"  {healed:6.1f}s  healed; waiting for every partition to take a write", flush=True)
        recovered = recovery(history, healed, args.partitions)
        copier_recovered = copier_progress(history, healed) if args.copier else 0.0
        stop_producers.set()
        for w in producers:
            w.join(FLUSH_TIMEOUT_S + 10 if isinstance(w, ProducerWorker) else TXN_END_BOUND_S + 10)
        if args.copier:
            copier_committed(cluster.bootstrap, args.partitions, history)
        history.add("end")
        time.sleep(2)  # let the consumer read the last acknowledged writes
        stop_consumers.set()
        for w in consumers:
            w.join(15)
        marks = drain(cluster.bootstrap, args.partitions, history)
        if args.copier:
            drain(cluster.bootstrap, args.partitions, history, COPY_TOPIC, "copy-drain")
        for b in cluster.nodes.values():
            b.cleanup()
        history.write(out / "history.jsonl")

        result = checker.check(history.events)
        extra = {"replica_divergence": replica_divergence(cluster, marks, history),
                 "not_recovered": ([] if recovered is not None else [{"bound_s": RECOVERY_BOUND_S}])
                 + ([] if copier_recovered is not None else [{"copier": "no transaction committed",
                                                               "bound_s": RECOVERY_BOUND_S}])}
        for name, found in extra.items():
            result["anomalies"][name] = found[:100]
            result["anomaly_counts"][name] = len(found)
        result["valid"] = not any(result["anomaly_counts"].values())
        result["recovery_s"] = recovered
        result["copier_recovery_s"] = copier_recovered
        run_info = {"seed": args.seed, "nodes": args.nodes, "duration_s": args.duration, "faults": args.faults,
                    "partitions": args.partitions, "producers": args.producers, "rate": args.rate,
                    "txn_producers": args.txn_producers, "txn_rate": args.txn_rate, "copier": args.copier,
                    "replication_factor": rf, "command": command_line(args), "spate": spate_version(),
                    "recovery_s": recovered, "copier_recovery_s": copier_recovered, "disk": f"tmpfs {DISK_SIZE}" if mounts else "host file system"}
        report.write(out, history.events, result, run_info)
        summarize(result, out)
        return 0 if result["valid"] else 1
    finally:
        if cluster is not None:
            cluster.cleanup()
        for m in mounts:
            subprocess.run(["umount", str(m)], capture_output=True)
        lab.teardown()


def summarize(result, out):
    counts = result["counts"]
    bad = {k: v for k, v in result["anomaly_counts"].items() if v}
    avail = result["availability"]
    print(f"scripts/chaos: {'PASS' if result['valid'] else 'FAIL'}: "
          f"{counts.get('acked', 0)} acknowledged, {counts.get('drained', 0)} drained; transactions: "
          f"{counts.get('txn_committed', 0)} committed, {counts.get('txn_aborted', 0)} aborted, "
          f"{counts.get('txn_unknown', 0)} unknown; "
          f"availability {avail['share'] * 100:.1f}% of seconds, longest gap {avail['longest_gap_s']:.1f}s; "
          f"recovery {result['recovery_s']}s (copier {result['copier_recovery_s']}s)")
    if bad:
        print(f"scripts/chaos: anomalies: {bad}")
    print(f"scripts/chaos: report {out / 'report.md'}")


def main(argv):
    args = parse(argv)
    for problem in (not_root(), missing_tools()):
        if problem:
            print(f"scripts/chaos: {problem}", file=sys.stderr)
            return 2
    if not SPATE_BIN.exists():
        print(f"scripts/chaos: {SPATE_BIN} is missing: build it with `cargo build --release -p spate`"
              " or set SPATE_BIN", file=sys.stderr)
        return 2
    return run(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
