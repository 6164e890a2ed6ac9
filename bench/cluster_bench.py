#!/usr/bin/env python3
"""Replicated-cluster benchmarks (driven by scripts/bench-cluster; see docs/benchmarks.md).

Starts its own nodes from a private copy of the binary, on free loopback ports, in a temporary
directory, and stops them by PID at the end. Workloads, in this order:

  single     one `spate serve` node, 6-partition topics: acks=all produce throughput (1 KiB),
             and latency at 10 000 msgs/s, 1 KiB, linger.ms=1 (producer ack and end to end),
             once with librdkafka's default in-flight window and once with 5 requests
  rf3        `spate dev --nodes 3` (RF 3, min.insync.replicas 2), 6-partition RF 3 topics: the
             same three runs
  txn        on the same cluster, five fresh 6-partition RF 3 topics, --txn-records records of
             1 KiB each (at most --txn-secs of sending): idempotent acks=all produce (the
             non-transactional figure), then transactions of 100 and of 1 000 records
             (spate_bench txn), each after sync and dropping the page cache (as root);
             records/s, commit latency, and the ratio of each to the non-transactional
             records/s; then transactions of 1 000 from 4 producers side by side, and the
             non-transactional run again (the ratios are to the higher of the two: the
             baseline drifts between runs on this host)
  catchup    SIGTERM one node, write up to --catchup-bytes to a 6-partition RF 3 topic (at most
             --catchup-seconds of sending), restart the node, time its log bytes reaching the
             leaders' and its return to every ISR
  idle       100 topics x 10 partitions at RF 3 more, then CPU (utime+stime) and RSS per node
             over --idle-seconds
  failover   a second `spate dev` cluster (preferred leaders restored within ~1 s), one
             1-partition RF 3 topic led by each node, and one idempotent acks=all producer
             sending 1 KiB round robin to them at a fixed rate. Per trial one leader's
             `spate serve` gets SIGKILL (or SIGTERM: controlled shutdown) -- alternately the
             node of the active controller and another -- and is restarted from its own
             /proc/PID/cmdline once a message sent after the fault is acknowledged, then waited
             for until it is back in the ISR and leads again

Throughput and latency use the C client (bench/spate_bench.c, librdkafka); failover uses
confluent-kafka. Every wait is bounded; every client run has a hard timeout; only processes this
script started are signalled, by PID. Prints Markdown (also --out) and writes the raw figures as
JSON next to it.
"""

import argparse
import json
import os
import random
import re
import resource
import signal
import statistics
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

HZ = os.sysconf("SC_CLK_TCK")
KIB = 1024
STOP_TIMEOUT_S = 45  # a node's controlled shutdown waits at most controlled.shutdown.timeout.ms (30 s)
CLI_TIMEOUT_S = 20


def log(msg):
    print(f"bench-cluster: {msg}", file=sys.stderr, flush=True)


class BenchError(Exception):
    """The run cannot go on (a node exited, a wait timed out); never retried by wait_for."""


class CliError(Exception):
    """A `spate` CLI call failed; transient while nodes fail over, so wait_for retries it."""


# ------------------------------------------------------------------ processes and /proc


def port_free(port):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def port_range():
    """Where listeners may go: below the kernel's ephemeral range. A restarted node binds its
    ports again, and a port in the ephemeral range may meanwhile be the local end of some
    outgoing connection (it was: `Address already in use` for a controller listener)."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    return (10000, low) if low > 12000 else (61000, 65535)


def free_port_blocks(count, width, tries=500):
    """`count` bases b such that b..b+width-1 are all free, the blocks disjoint, all outside the
    ephemeral port range."""
    bases, taken = [], set()
    lo, hi = port_range()
    for _ in range(tries):
        b = random.randrange(lo, hi - width)
        ports = range(b, b + width)
        if any(p in taken for p in ports) or not all(port_free(p) for p in ports):
            continue
        bases.append(b)
        taken.update(ports)
        if len(bases) == count:
            return bases
    raise BenchError("no free loopback ports found")


def proc_stat(pid):
    """(state, ppid, utime+stime ticks) of a process, or None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = raw[raw.rindex(")") + 2:].split()  # after the command name, which may hold spaces
    return fields[0], int(fields[1]), int(fields[11]) + int(fields[12])


def alive(pid):
    st = proc_stat(pid)
    return st is not None and st[0] not in ("Z", "X")


def rss_mib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cmdline(pid):
    return Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")


def loadavg():
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def machine_busy_ticks():
    """CPU ticks spent by anything on this machine (all cores): user, nice, system, irq, softirq
    and steal from /proc/stat, i.e. everything but idle and iowait."""
    f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    return f[0] + f[1] + f[2] + f[5] + f[6] + f[7]


def ticks_of(pids):
    total = 0
    for pid in pids:
        st = proc_stat(pid)
        total += st[2] if st else 0
    return total


class CpuWindow:
    """Where the machine's CPU went over a window: our nodes, our client, everyone else (other
    developers' builds and tests on this shared machine). The load average cannot tell these
    apart: our own nodes and client count in it too."""

    def __init__(self, node_pids):
        self.pids = list(node_pids)
        self.t0, self.busy0, self.nodes0 = time.monotonic(), machine_busy_ticks(), ticks_of(self.pids)

    def end(self, client_cpu_s=0.0):
        wall = time.monotonic() - self.t0
        busy = (machine_busy_ticks() - self.busy0) / HZ
        nodes = (ticks_of(self.pids) - self.nodes0) / HZ
        return {"wall_s": round(wall, 2), "busy_cores": round(busy / wall, 2), "nodes_cores": round(nodes / wall, 2),
                "client_cores": round(client_cpu_s / wall, 2),
                "others_cores": round(max(0.0, busy - nodes - client_cpu_s) / wall, 2)}


def http_ok(addr, path="/health"):
    try:
        with urllib.request.urlopen(f"http://{addr}{path}", timeout=2) as r:
            return r.status == 200
    except Exception:
        return False


def wait_for(what, check, timeout_s, interval_s=0.1):
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except BenchError:
            raise
        except Exception as e:  # a node that just died, a CLI timeout, ...
            last = repr(e)
        time.sleep(interval_s)
    raise BenchError(f"timed out after {timeout_s} s waiting for {what} (last: {last})")


def pct(sorted_vals, q):
    """The same nearest-rank rule as spate_bench.c: element floor(q * n), clamped."""
    if not sorted_vals:
        return float("nan")
    return sorted_vals[min(int(q * len(sorted_vals)), len(sorted_vals) - 1)]


# ------------------------------------------------------------------ spate CLI and the C client


class Tools:
    def __init__(self, spate_bin, client_bin, out_dir):
        self.bin = spate_bin
        self.client = client_bin
        self.client_log = open(out_dir / "cluster-client.log", "a")

    def cli(self, *args, json_out=False):
        cmd = [self.bin, *args, "--timeout-ms", "10000"] + (["--output", "json"] if json_out else [])
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=CLI_TIMEOUT_S)
        if r.returncode not in (0, 2):  # cluster status exits 2 when unhealthy, with its JSON
            raise CliError(f"{' '.join(map(str, cmd))}: exit {r.returncode}: {r.stderr.strip()}")
        return json.loads(r.stdout) if json_out else r.stdout

    def topic_create(self, server, name, partitions, rf):
        self.cli("topic", "create", "--bootstrap-server", server, "--partitions", str(partitions),
                 "--replication-factor", str(rf), name)

    def describe(self, server, name):
        return self.cli("topic", "describe", "--bootstrap-server", server, name, json_out=True)["topics"][0]

    def status(self, server):
        return self.cli("cluster", "status", "--bootstrap-server", server, json_out=True)

    def run_client(self, name, bootstrap, args, timeout_s, node_pids=(), copies=1):
        """Runs spate_bench (`copies` processes side by side, each its own producer), returns its
        RESULT fields plus where the CPU went meanwhile. With several copies the fields are the
        sum (msgs, errors, aborts, txns), the slowest copy's secs, the rates over those (mb_s,
        msgs_s), and for latencies the median of the copies' p50s and the highest p99/max."""
        cmd = [self.client, *args, "-b", bootstrap, "-T", str(timeout_s)]
        log(f"--- {name}: {copies} x {' '.join(cmd)}" if copies > 1 else f"--- {name}: {' '.join(cmd)}")
        self.client_log.write(f"\n=== {name} ({time.strftime('%H:%M:%S')}, load {loadavg()}, {copies} "
                              f"process(es)): {' '.join(cmd)}\n")
        self.client_log.flush()
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        window = CpuWindow(node_pids)
        procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(copies)]
        outs = []
        for p in procs:
            try:
                out, err = p.communicate(timeout=timeout_s + 10)
            except subprocess.TimeoutExpired:
                p.kill()
                out, err = p.communicate()
            outs.append((p.returncode, out, err))
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        each = []
        for code, out, err in outs:
            self.client_log.write(out + err)
            sys.stderr.write(out + "".join(err.splitlines(True)[:20]))
            lines = [l for l in out.splitlines() if l.startswith("RESULT")]
            r = dict(kv.split("=", 1) for kv in lines[-1].split()[1:]) if lines else {"failed": "1"}
            r["exit"] = str(code)
            each.append(r)
        self.client_log.flush()
        res = each[0] if copies == 1 else combine_results(each)
        res["client_cpu_s"] = round((ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime), 2)
        res["cpu"] = window.end(res["client_cpu_s"])
        res["load"] = loadavg()
        log(f"CPU over the run: {res['cpu']}; load {res['load']}")
        return res


def combine_results(each):
    """The RESULT fields of producers that ran side by side, as one run (see run_client)."""
    if any("failed" in r for r in each):
        return {"failed": "1", "exit": ",".join(r["exit"] for r in each)}
    res = dict(each[0])
    for k in ("msgs", "errors", "aborts", "txns"):
        if k in res:
            res[k] = str(sum(int(r[k]) for r in each))
    secs = max(float(r["secs"]) for r in each)
    size = int(res.get("size", KIB))
    res["secs"] = f"{secs:.3f}"
    res["msgs_s"] = str(round(int(res["msgs"]) / secs))
    res["mb_s"] = f"{int(res['msgs']) * size / secs / 1e6:.1f}"
    res["capped"] = "1" if any(r.get("capped") == "1" for r in each) else "0"
    for k in [k for k in res if k.endswith("_p50_ms")]:
        res[k] = f"{statistics.median(float(r[k]) for r in each):.2f}"
    for k in [k for k in res if k.endswith("_p99_ms") or k.endswith("_max_ms")]:
        res[k] = f"{max(float(r[k]) for r in each):.2f}"
    res["exit"] = ",".join(r["exit"] for r in each) if any(r["exit"] != "0" for r in each) else "0"
    res["producers"] = str(len(each))
    return res


# ------------------------------------------------------------------ nodes


class SingleNode:
    def __init__(self, tools, base_dir, log_path, settings=()):
        self.tools = tools
        kport, hport = free_port_blocks(2, 1)
        self.kafka, self.http = f"127.0.0.1:{kport}", f"127.0.0.1:{hport}"
        self.logf = open(log_path, "w")
        cmd = [tools.bin, "serve", "--data-dir", str(base_dir / "single"), "--kafka-listen", self.kafka,
               "--http-listen", self.http]
        for kv in settings:
            cmd += ["--set", kv]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self.logf, stderr=subprocess.STDOUT)
        log(f"single node pid {self.proc.pid}, kafka {self.kafka}")
        wait_for("single node /health", lambda: self.proc.poll() is None and http_ok(self.http), 60)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                log(f"single node {self.proc.pid} ignored SIGTERM; killing it")
                self.proc.kill()
                self.proc.wait()


class DevCluster:
    """`spate dev --nodes N`. Its `spate serve` children are found by parent PID and --data-dir;
    a node this script restarted is its own child (self.mine). Both are processes we started."""

    def __init__(self, tools, base_dir, name="dev", nodes=3, settings=()):
        self.tools = tools
        self.n = nodes
        self.dir = base_dir / name
        self.kport, self.hport, self.cport = free_port_blocks(3, nodes)
        self.mine = {}  # node id -> Popen of a node restarted by this script
        out = base_dir / f"{name}.out"
        self.dev_log = open(out, "w")
        cmd = [tools.bin, "dev", "--nodes", str(nodes), "--dir", str(self.dir), "--kafka-port", str(self.kport),
               "--http-port", str(self.hport), "--controller-port", str(self.cport)]
        for kv in settings:
            cmd += ["--set", kv]
        log(f"starting: {' '.join(cmd)}")
        self.dev = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self.dev_log, stderr=subprocess.STDOUT)
        wait_for("spate dev: cluster ready",
                 lambda: self.dev.poll() is None and "cluster ready" in out.read_text(), 120, 0.2)
        self.bootstrap = ",".join(self.kafka(i) for i in self.ids())
        log(f"cluster ready: dev pid {self.dev.pid}, nodes {self.pids()}, bootstrap {self.bootstrap}")

    def ids(self):
        return range(1, self.n + 1)

    def kafka(self, node):
        return f"127.0.0.1:{self.kport + node - 1}"

    def http(self, node):
        return f"127.0.0.1:{self.hport + node - 1}"

    def data_dir(self, node):
        return self.dir / f"node-{node}"

    def log_path(self, node):
        return self.dir / f"node-{node}.log"

    def pid(self, node):
        """PID of the live `spate serve` of this node (one we started), or None."""
        p = self.mine.get(node)
        if p is not None and p.poll() is None:
            return p.pid
        want = str(self.data_dir(node)).encode()
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            st = proc_stat(int(entry))
            if st is None or st[1] != self.dev.pid or not alive(int(entry)):
                continue
            try:
                args = cmdline(int(entry))
            except FileNotFoundError:
                continue
            if b"serve" in args and b"--data-dir" in args and args[args.index(b"--data-dir") + 1] == want:
                return int(entry)
        return None

    def pids(self):
        return {i: self.pid(i) for i in self.ids()}

    def live_server(self, exclude=()):
        for i in self.ids():
            if i not in exclude and self.pid(i) is not None:
                return self.kafka(i)
        raise BenchError("no live node")

    def describe(self, topic, exclude=()):
        return self.tools.describe(self.live_server(exclude), topic)

    def status(self, exclude=()):
        return self.tools.status(self.live_server(exclude))

    def signal_node(self, node, sig):
        """Sends sig to the node's process; returns (pid, its command line read just before, the
        monotonic time just before the signal). Finding the PID scans /proc, which takes tens of
        milliseconds on a busy machine: time a fault from the returned instant, not from before
        the call."""
        pid = self.pid(node)
        if pid is None:
            raise BenchError(f"node {node} is not running")
        args = cmdline(pid)
        t = time.monotonic()
        os.kill(pid, sig)
        return pid, args, t

    def wait_exit(self, node, pid, timeout_s):
        p = self.mine.get(node)
        if p is not None and p.pid == pid:
            p.wait(timeout_s)
            return
        wait_for(f"node {node} (pid {pid}) to exit", lambda: not alive(pid), timeout_s, 0.005)

    def restart(self, node, args):
        old = self.mine.get(node)
        if old is not None:
            old.wait(STOP_TIMEOUT_S)  # reap the previous incarnation we started
        with open(self.log_path(node), "ab") as logf:
            self.mine[node] = subprocess.Popen([a.decode() for a in args], stdin=subprocess.DEVNULL, stdout=logf,
                                               stderr=subprocess.STDOUT, process_group=0)
        return self.mine[node].pid

    def check_running(self, node):
        """Raises if a node this script restarted has exited (e.g. it could not bind a port)."""
        p = self.mine.get(node)
        if p is not None and p.poll() is not None:
            tail = self.log_path(node).read_text(errors="replace").splitlines()[-3:]
            raise BenchError(f"restarted node {node} exited ({p.returncode}): {' | '.join(tail)}")

    def wait_isr(self, topic, partitions, node=None, timeout_s=60):
        """Waits until every partition has a leader and `node` (or, without one, every replica) in
        its ISR."""
        def check():
            if node is not None:
                self.check_running(node)
            d = self.describe(topic)
            ps = d["partitions"]
            if len(ps) != partitions:
                return False
            for p in ps:
                if p["leader"] < 0:
                    return False
                if node is not None and node not in p["isr"]:
                    return False
                if node is None and len(p["isr"]) != len(p["replicas"]):
                    return False
            return d
        return wait_for(f"ISR of {topic}" + (f" to hold node {node}" if node else " to be full"), check,
                        timeout_s, 0.05)

    def stop(self):
        mine = [p for p in self.mine.values() if p.poll() is None]
        for p in mine:
            p.send_signal(signal.SIGTERM)
        dev_children = [pid for pid in self.pids().values() if pid is not None and pid not in {p.pid for p in mine}]
        if self.dev.poll() is None:
            self.dev.send_signal(signal.SIGTERM)
            try:
                self.dev.wait(STOP_TIMEOUT_S * self.n + 10)
            except subprocess.TimeoutExpired:
                log(f"spate dev {self.dev.pid} did not stop; killing it and its nodes {dev_children}")
                self.dev.kill()
                self.dev.wait()
        for pid in dev_children:  # orphans only if dev was killed above
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        for p in mine:
            try:
                p.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                log(f"node pid {p.pid} ignored SIGTERM; killing it")
                p.kill()
                p.wait()


def log_bytes(data_dir, topic):
    """{partition: bytes of its *.log segments} of one node's replicas of `topic`."""
    out = {}
    logs = data_dir / "logs"
    if not logs.is_dir():
        return out
    for d in logs.iterdir():
        m = re.fullmatch(re.escape(topic) + r"-(\d+)", d.name)
        if m:
            out[int(m.group(1))] = sum(f.stat().st_size for f in d.glob("*.log"))
    return out


# ------------------------------------------------------------------ workloads


def latency_args(topic, secs, in_flight=None):
    """10 000 msgs/s of 1 KiB over 6 partitions, acks=all, linger.ms=1; with in_flight, also
    max.in.flight.requests.per.connection (librdkafka's default is 1 000 000)."""
    args = ["latency", "-t", topic, "-p", "6", "-s", str(KIB), "-a", "all", "-r", "10000", "-d", str(secs),
            "-X", "linger.ms=1"]
    return args + (["-X", f"max.in.flight.requests.per.connection={in_flight}"] if in_flight else [])


def produce_args(topic, secs, max_bytes, partitions=6):
    # A 128 MiB client queue: the send phase cannot run far ahead of the acknowledgements, so the
    # run ends within seconds of the -d cap even when the cluster is slow.
    return ["produce", "-t", topic, "-p", str(partitions), "-s", str(KIB), "-a", "all", "-n",
            str(max_bytes // KIB), "-d", str(secs), "-X", "queue.buffering.max.kbytes=131072"]


# Transaction sizes of the txn workload (records of 1 KiB per transaction); the records of each of
# its three runs (~11-13 s of idempotent produce at RF 3 on the quiet 2-core machine, 156-190 MB/s),
# and a cap on each run's sending time, so the runs stay short when transactions are slow. A run
# of 1 000-record transactions at >= 70 % of the non-transactional rate commits them all.
TXN_SIZES = (100, 1000)
# Transactional producers of the side-by-side run (transactions of 1 000).
TXN_PRODUCERS = 4
TXN_RECORDS = 2_000_000
TXN_SECS = 20


def settle_page_cache():
    """Writes back and drops the page cache (as root), so that each run starts from the same
    memory state: on this machine a run that follows gigabytes of writes measured up to 40 %
    slower than the same run after `echo 1 > /proc/sys/vm/drop_caches`, and the first run of
    a sequence (the baseline) would otherwise have an edge over the later ones."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("1\n")
        return True
    except OSError as e:
        log(f"cannot drop the page cache ({e}); runs start from different memory states")
        return False


def bench_txn(tools, cluster, a, results):
    """The same record count three times, each to a fresh 6-partition RF 3 topic (as rf3-tput):
    idempotent acks=all produce with no transactions, then transactions of 100 and of 1 000
    records. Same client settings otherwise (spate_bench's produce settings, a 128 MiB queue).
    Then transactions of 1 000 with TXN_PRODUCERS producers side by side, each sending its
    share. Every run stops sending (beginning transactions) after --txn-secs: a run that is far below
    the non-transactional rate then commits fewer records, and its rate is over those."""
    n = a.txn_records
    log(f"=== 3 nodes, RF 3, 6 partitions: {n} records of 1 KiB (at most {a.txn_secs} s of sending), "
        f"without and with transactions")
    server = cluster.live_server()
    topics = ["txn-plain"] + [f"txn-{size}" for size in TXN_SIZES] + ["txn-1000-many", "txn-plain-after"]
    for t in topics:
        tools.topic_create(server, t, 6, 3)
        cluster.wait_isr(t, 6)
    pids = [p for p in cluster.pids().values() if p is not None]
    common = ["-p", "6", "-s", str(KIB), "-n", str(n), "-d", str(a.txn_secs),
              "-X", "queue.buffering.max.kbytes=131072"]
    timeout_s = a.txn_secs * 6 + 60
    results["txn_page_cache_dropped"] = settle_page_cache()

    def baseline(key, topic):
        results[key] = tools.run_client(
            "txn: produce 1 KiB acks=all, idempotent, no transactions, 6 partitions", cluster.bootstrap,
            ["produce", "-t", topic, "-a", "all", "-X", "enable.idempotence=true", *common], timeout_s, pids)

    baseline("txn_plain", topics[0])
    for size, topic in zip(TXN_SIZES, topics[1:]):
        settle_page_cache()
        results[f"txn_{size}"] = tools.run_client(
            f"txn: transactions of {size} x 1 KiB, 6 partitions", cluster.bootstrap,
            ["txn", "-t", topic, "-x", str(size), *common], timeout_s, pids)
    # Transactions of 1 000 again with several producers side by side (as a Kafka Streams
    # application runs one transactional producer per task), each sending its share, against
    # the same non-transactional rate: one idempotent producer already takes the cluster to
    # the disk's limit, and four of them side by side measured librdkafka's CPU on 2 cores
    # (1.4 cores of client, 73 MB/s), not the cluster.
    k = TXN_PRODUCERS
    share = ["-p", "6", "-s", str(KIB), "-n", str(n // k), "-d", str(a.txn_secs),
             "-X", "queue.buffering.max.kbytes=131072"]
    settle_page_cache()
    results["txn_1000_many"] = tools.run_client(
        f"txn: {k} producers side by side, transactions of 1000 x 1 KiB", cluster.bootstrap,
        ["txn", "-t", topics[3], "-x", "1000", *share], timeout_s, pids, k)
    # The baseline again: between back-to-back runs it has moved by up to half on this host,
    # so the ratios are to the higher of the two (the stricter reading of the target).
    settle_page_cache()
    baseline("txn_plain_after", topics[4])
    base = max((float(results[key]["msgs_s"]) for key in ("txn_plain", "txn_plain_after")
                if "msgs_s" in results[key]), default=None)
    results["txn_baseline_msgs_s"] = base
    for key, what in [(f"txn_{size}", f"transactions of {size}") for size in TXN_SIZES] + [
            ("txn_1000_many", f"{k} producers' transactions of 1000")]:
        note_ratio(results[key], base, what)


def note_ratio(r, base, what):
    """Records r's rate as a fraction of the non-transactional rate `base` (records/s; None
    when no produce run printed a RESULT)."""
    ok = base is not None and base > 0 and "msgs_s" in r
    r["ratio_to_plain"] = round(float(r["msgs_s"]) / base, 3) if ok else None
    log(f"{what}: {r.get('msgs_s')} records/s, {r['ratio_to_plain']} of the "
        f"non-transactional {base}; commit p50 {r.get('commit_p50_ms')} / "
        f"p99 {r.get('commit_p99_ms')} ms")


def bench_single(tools, base_dir, out_dir, a, results):
    log("=== single node, 6 partitions")
    node = SingleNode(tools, base_dir, out_dir / "cluster-single-node.log", a.set)
    try:
        tools.topic_create(node.kafka, "single-tput", 6, 1)
        tools.topic_create(node.kafka, "single-lat", 6, 1)
        tools.topic_create(node.kafka, "single-lat5", 6, 1)
        pids = [node.proc.pid]
        results["single_produce"] = tools.run_client(
            "single: produce 1 KiB acks=all, 6 partitions", node.kafka,
            produce_args("single-tput", a.secs, 2_000_000_000), a.secs * 6 + 60, pids)
        results["single_latency"] = tools.run_client(
            "single: latency 10k msgs/s, 1 KiB, acks=all, linger.ms=1, 6 partitions", node.kafka,
            latency_args("single-lat", a.lat_secs), a.lat_secs + 60, pids)
        results["single_latency_inflight5"] = tools.run_client(
            "single: latency 10k msgs/s, 1 KiB, acks=all, linger.ms=1, max.in.flight 5, 6 partitions", node.kafka,
            latency_args("single-lat5", a.lat_secs, 5), a.lat_secs + 60, pids)
    finally:
        node.stop()


def bench_rf3(tools, cluster, a, results):
    log("=== 3 nodes, RF 3, 6 partitions")
    server = cluster.live_server()
    for t in ("rf3-tput", "rf3-lat", "rf3-lat5"):
        tools.topic_create(server, t, 6, 3)
        cluster.wait_isr(t, 6)
    pids = [p for p in cluster.pids().values() if p is not None]
    results["rf3_produce"] = tools.run_client(
        "rf3: produce 1 KiB acks=all, 6 partitions", cluster.bootstrap,
        produce_args("rf3-tput", a.secs, 2_000_000_000), a.secs * 6 + 60, pids)
    results["rf3_latency"] = tools.run_client(
        "rf3: latency 10k msgs/s, 1 KiB, acks=all, linger.ms=1, 6 partitions", cluster.bootstrap,
        latency_args("rf3-lat", a.lat_secs), a.lat_secs + 60, pids)
    results["rf3_latency_inflight5"] = tools.run_client(
        "rf3: latency 10k msgs/s, 1 KiB, acks=all, linger.ms=1, max.in.flight 5, 6 partitions", cluster.bootstrap,
        latency_args("rf3-lat5", a.lat_secs, 5), a.lat_secs + 60, pids)


class AckRecorder:
    """One idempotent acks=all producer sending 1 KiB at a fixed total rate, round robin over
    partition 0 of several topics, recording per topic (send time, delivery-report time, error, offset)
    of every message. One thread produces and polls, so a delivery report is seen within ~1 ms
    of librdkafka receiving it."""

    def __init__(self, bootstrap, topics, rate):
        self.topics, self.interval = topics, 1.0 / rate
        self.p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True,
                           "linger.ms": 0, "message.timeout.ms": 120000, "client.id": "spate-bench-failover",
                           "log_level": 4})
        self.done = {t: [] for t in topics}  # appended by the producer thread only
        self.sent = 0
        self.stop_flag = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.value = b"f" * KIB

    def run(self):
        nxt = time.monotonic()
        while not self.stop_flag.is_set():
            now = time.monotonic()
            if now >= nxt:
                topic = self.topics[self.sent % len(self.topics)]
                done = self.done[topic]

                def cb(err, msg, t=now, done=done):
                    done.append((t, time.monotonic(), err, msg.offset() if err is None else -1))
                try:
                    self.p.produce(topic, value=self.value, partition=0, on_delivery=cb)
                    self.sent += 1
                except BufferError:
                    pass
                nxt = max(nxt + self.interval, now - 0.01)
            self.p.poll(max(0.0, min(nxt - time.monotonic(), 0.001)))

    def start(self):
        self.thread.start()
        return self

    def finish(self):
        self.stop_flag.set()
        self.thread.join(10)
        return self.p.flush(60)

    def first_ack_of_send_after(self, topic, t, start_idx):
        """Delivery time of the first successful message to topic sent after t, or None yet."""
        best = None
        for ts, ta, err, _ in self.done[topic][start_idx:]:
            if err is None and ts > t and (best is None or ta < best):
                best = ta
        return best

    def longest_gap(self, topic, t_from, t_to):
        """Longest time between consecutive successful delivery reports of topic that ends after
        t_from and starts before t_to (the last report before t_from counts as a start)."""
        acks = sorted(ta for _, ta, err, _ in self.done[topic] if err is None)
        gap, prev = 0.0, None
        for ta in acks:
            if prev is not None and ta > t_from and prev < t_to:
                gap = max(gap, ta - prev)
            prev = ta
            if ta > t_to:
                break
        return gap


def preferred_and_full(cluster, topics):
    """Every topic's partition 0 led by its preferred replica with a full ISR: {topic: state}."""
    out = {}
    for t in topics:
        p = cluster.describe(t)["partitions"][0]
        if p["leader"] != p["replicas"][0] or len(p["isr"]) != len(p["replicas"]):
            return None
        out[t] = p
    return out


def failover_trial(cluster, rec, led_by, sig, trial, want_controller):
    """One fault: the leader of one topic's partition (the active controller too, or not) gets
    sig; returns the trial's figures."""
    states = wait_for("preferred leaders with full ISRs", lambda: preferred_and_full(cluster, rec.topics), 90, 0.1)
    controller = cluster.status().get("controller_id")
    others = [n for n in sorted(led_by) if n != controller]
    victim = controller if want_controller else others[(trial // 2) % len(others)]
    topic = led_by[victim]
    epoch = states[topic]["leader_epoch"]
    # Steady state before the fault: acknowledgements flowing, and the noise floor of the gaps.
    time.sleep(0.5)
    t_pre = time.monotonic()
    time.sleep(1.0)
    floor = rec.longest_gap(topic, t_pre, time.monotonic())
    idx = len(rec.done[topic])

    # The cluster side, polled beside the client: when metadata first names a new leader.
    meta = {}

    def watch_metadata():
        while "t" not in meta and time.monotonic() < t_sig + 60:
            try:
                p = cluster.describe(topic, exclude=(victim,))["partitions"][0]
                if p["leader"] not in (-1, victim) and p["leader_epoch"] > epoch:
                    meta.update(t=time.monotonic(), leader=p["leader"], epoch=p["leader_epoch"])
            except Exception:
                pass
            time.sleep(0.02)

    watcher = threading.Thread(target=watch_metadata, daemon=True)
    pid, args, t_sig = cluster.signal_node(victim, sig)
    watcher.start()
    t_exit = t_ack = None
    deadline = t_sig + 60
    while time.monotonic() < deadline and (t_exit is None or t_ack is None):
        if t_exit is None and not alive(pid):
            t_exit = time.monotonic()
        if t_exit is not None:
            # SIGKILL: the first acknowledgement of a message sent after the kill (an answer the
            # dead leader had already written to the socket cannot count). SIGTERM: of one sent
            # after the process exited, so the gap scan covers the whole shutdown.
            t_ack = rec.first_ack_of_send_after(topic, t_exit if sig == signal.SIGTERM else t_sig, idx)
        time.sleep(0.002)
    if t_ack is None:
        raise BenchError(f"no acknowledged produce to {topic} within 60 s of {signal.Signals(sig).name} "
                         f"to node {victim} (exited: {t_exit is not None})")
    watcher.join(5)
    time.sleep(0.3)  # let later reports arrive, so the gap scan sees the end of the window
    gap = rec.longest_gap(topic, t_sig, t_ack)
    errors = sum(1 for _, _, err, _ in rec.done[topic][idx:] if err is not None)
    t_restart = time.monotonic()
    cluster.restart(victim, args)
    cluster.wait_isr(topic, 1, node=victim, timeout_s=90)
    rejoin = time.monotonic() - t_restart
    row = {"trial": trial, "signal": signal.Signals(sig).name, "node": victim, "pid": pid,
           "controller_killed": controller == victim, "topic": topic, "epoch": epoch,
           "new_leader": meta.get("leader"), "new_epoch": meta.get("epoch"), "stop_s": round(t_exit - t_sig, 3),
           "metadata_s": round(meta["t"] - t_sig, 3) if "t" in meta else None,
           "to_first_ack_s": round(t_ack - t_sig, 3), "longest_gap_s": round(gap, 3),
           "gap_floor_s": round(floor, 3), "errors": errors, "isr_rejoin_s": round(rejoin, 2), "load": loadavg()}
    log(f"trial {trial} {row['signal']}: node {victim}{' (active controller)' if row['controller_killed'] else ''} "
        f"-> leader {row['new_leader']} in metadata after {row['metadata_s']} s; first ack after "
        f"{row['to_first_ack_s']} s, longest gap {row['longest_gap_s']} s (floor {row['gap_floor_s']} s); "
        f"ISR again after {row['isr_rejoin_s']} s")
    return row


# Preferred leaders come back within about a second of the restarted node rejoining the ISR, so
# every trial starts from the same layout: each node leads one of the failover topics.
FAILOVER_SETTINGS = ("leader.imbalance.check.interval.seconds=1",)
# Replicas of a new partition start at (topic id + partition) mod nodes, so a node is the
# preferred leader of a new 1-partition topic with probability 1/3: 30 tries miss one of three
# nodes with probability 3 * (2/3)^30, about 2e-5.
FAILOVER_TOPICS_MAX = 30


def bench_failover(tools, base_dir, a, results):
    log(f"=== failover: {a.kill_trials} x SIGKILL, {a.term_trials} x SIGTERM of a leader, alternately the "
        f"active controller's node and another")
    cluster = DevCluster(tools, base_dir, name="failover", settings=FAILOVER_SETTINGS + tuple(a.set))
    rec = None
    rows = []
    try:
        led_by, spare = {}, []
        for i in range(FAILOVER_TOPICS_MAX):
            t = f"failover-{i}"
            tools.topic_create(cluster.live_server(), t, 1, 3)
            preferred = cluster.wait_isr(t, 1)["partitions"][0]["replicas"][0]
            if preferred in led_by:
                spare.append(t)
            else:
                led_by[preferred] = t
            if len(led_by) == cluster.n:
                break
        if len(led_by) != cluster.n:
            raise BenchError(f"{FAILOVER_TOPICS_MAX} topics did not give every node a preferred leadership: {led_by}")
        if spare:
            tools.cli("topic", "delete", "--bootstrap-server", cluster.live_server(), *spare)
        log(f"failover topics by preferred leader: {led_by}")
        rec = AckRecorder(cluster.bootstrap, sorted(led_by.values()), a.failover_rate).start()
        window = CpuWindow([])
        wait_for("first acknowledgements", lambda: all(len(d) > 20 for d in rec.done.values()), 30)
        for i in range(a.kill_trials):
            rows.append(failover_trial(cluster, rec, led_by, signal.SIGKILL, i + 1, i % 2 == 1))
        for i in range(a.term_trials):
            rows.append(failover_trial(cluster, rec, led_by, signal.SIGTERM, i + 1, i % 2 == 1))
    finally:
        if rec is not None:
            left = rec.finish()
            done = [e for d in rec.done.values() for e in d]
            results["failover_producer"] = {"sent": rec.sent, "reports": len(done),
                                            "errors": sum(1 for _, _, e, _ in done if e is not None),
                                            "undelivered_after_flush": left}
        results["failover"] = rows
        if rec is not None:
            # Nodes (restarted ones included) and the producer all count as "others" here, so
            # this is an upper bound on what other developers used.
            results["failover_cpu"] = window.end()
        log("stopping the failover cluster")
        cluster.stop()


def bench_catchup(tools, cluster, a, results):
    log("=== follower catch-up")
    topic = "catchup"
    tools.topic_create(cluster.live_server(), topic, 6, 3)
    cluster.wait_isr(topic, 6)
    controller = cluster.status().get("controller_id")
    node = next(i for i in reversed(list(cluster.ids())) if i != controller)
    pid, args, t = cluster.signal_node(node, signal.SIGTERM)
    cluster.wait_exit(node, pid, STOP_TIMEOUT_S)
    log(f"node {node} (pid {pid}) stopped in {time.monotonic() - t:.1f} s")
    others = [i for i in cluster.ids() if i != node]
    wait_for(f"node {node} out of every ISR", lambda: all(
        node not in p["isr"] for p in cluster.describe(topic, exclude=(node,))["partitions"]), 30, 0.2)
    before = sum(log_bytes(cluster.data_dir(node), topic).values())
    r = tools.run_client(f"catch-up: write while node {node} is down (RF 3, 2 in sync)", cluster.bootstrap,
                         produce_args(topic, a.catchup_seconds, a.catchup_bytes), a.catchup_seconds * 4 + 60,
                         [p for p in cluster.pids().values() if p is not None])
    # The two live replicas must agree before the target is taken.
    def agreed():
        sizes = [log_bytes(cluster.data_dir(i), topic) for i in others]
        return sizes[0] if all(s == sizes[0] for s in sizes) and len(sizes[0]) == 6 else None
    target = sum(wait_for("the live replicas to agree", agreed, 30, 0.2).values())
    to_copy = target - before
    t_restart = time.monotonic()
    window = CpuWindow([p for p in cluster.pids().values() if p is not None])
    window.pids.append(cluster.restart(node, args))  # it did not exist at the start: all its CPU counts
    samples, t_first, t_full, t_isr = [], None, None, None
    deadline = t_restart + a.catchup_seconds * 4 + 60
    next_isr = t_restart
    while time.monotonic() < deadline and (t_full is None or t_isr is None):
        cluster.check_running(node)
        now = time.monotonic()
        have = sum(log_bytes(cluster.data_dir(node), topic).values())
        samples.append((round(now - t_restart, 2), have))
        if t_first is None and have > before:
            t_first = now
        if t_full is None and have >= target:
            t_full = now
        if t_isr is None and now >= next_isr:
            next_isr = now + 0.25
            try:
                if all(node in p["isr"] for p in cluster.describe(topic, exclude=(node,))["partitions"]):
                    t_isr = time.monotonic()
            except Exception:
                pass
        time.sleep(0.05)
    if t_full is None or t_isr is None:
        live = {i: log_bytes(cluster.data_dir(i), topic) for i in cluster.ids()}
        isr = [p["isr"] for p in cluster.describe(topic, exclude=(node,))["partitions"]]
        raise BenchError(f"node {node} did not catch up within {deadline - t_restart:.0f} s: target {target} B, "
                         f"reached: {t_full is not None}, in every ISR: {t_isr is not None}; log bytes per node "
                         f"and partition {live}; ISRs {isr}")
    copy_s = t_full - (t_first or t_restart)
    cpu = window.end()
    results["catchup"] = {
        "node": node, "produce": r, "bytes_before": before, "target_bytes": target, "copied_bytes": to_copy,
        "first_byte_s": round((t_first or t_restart) - t_restart, 2), "full_s": round(t_full - t_restart, 2),
        "isr_s": round(t_isr - t_restart, 2), "copy_mb_s": round(to_copy / 1e6 / copy_s, 1) if copy_s > 0 else None,
        "restart_to_full_mb_s": round(to_copy / 1e6 / (t_full - t_restart), 1),
        "samples": samples[:: max(1, len(samples) // 60)], "load": loadavg(), "cpu": cpu}
    c = results["catchup"]
    log(f"catch-up: {to_copy / 1e6:.0f} MB in {c['full_s']} s after restart ({c['restart_to_full_mb_s']} MB/s; "
        f"copying {c['copy_mb_s']} MB/s after {c['first_byte_s']} s); every ISR after {c['isr_s']} s")


def bench_idle(tools, cluster, a, results):
    log("=== idle cluster")

    def measure(secs):
        pids = {i: p for i, p in cluster.pids().items() if p is not None}
        t0 = {i: proc_stat(p)[2] for i, p in pids.items()}
        window = CpuWindow(pids.values())
        time.sleep(secs)
        out = {i: {"cpu_pct": round((proc_stat(p)[2] - t0[i]) / HZ / secs * 100, 2), "rss_mib": round(rss_mib(p))}
               for i, p in pids.items()}
        measure.cpu = window.end()
        return out

    time.sleep(3)
    st = cluster.status()
    results["idle_before"] = {"partitions": st["partitions"]["partitions"], "secs": a.idle_base_seconds,
                              "nodes": measure(a.idle_base_seconds), "load": loadavg(), "cpu": measure.cpu}
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
    names = [f"idle-{i:03d}" for i in range(a.idle_topics)]
    t = time.monotonic()
    for chunk in range(0, len(names), 25):
        fs = admin.create_topics([NewTopic(n, num_partitions=a.idle_partitions, replication_factor=3)
                                  for n in names[chunk:chunk + 25]], operation_timeout=30, request_timeout=60)
        for f in fs.values():
            f.result(timeout=90)
    want = results["idle_before"]["partitions"] + a.idle_topics * a.idle_partitions

    def settled():
        s = cluster.status()
        p = s["partitions"]
        return s if (p["partitions"] == want and p["offline"]["count"] == 0 and p["under_replicated"]["count"] == 0
                     and p["under_min_isr"]["count"] == 0) else None
    wait_for(f"{want} partitions online and fully replicated", settled, 180, 0.5)
    created_s = time.monotonic() - t
    log(f"{a.idle_topics * a.idle_partitions} partitions created and fully replicated in {created_s:.1f} s")
    time.sleep(5)
    results["idle"] = {"partitions": want, "create_s": round(created_s, 1), "secs": a.idle_seconds,
                       "nodes": measure(a.idle_seconds), "load": loadavg(), "cpu": measure.cpu}


# ------------------------------------------------------------------ report


def limits(path):
    out = {}
    if path and Path(path).is_file():
        for line in Path(path).read_text().splitlines():
            k, _, v = line.partition("=")
            try:
                out[k] = float(v)
            except ValueError:
                pass
        out["_mtime"] = time.strftime("%Y-%m-%d %H:%M", time.localtime(Path(path).stat().st_mtime))
    return out


def fmt_ms(v):
    return f"{float(v):.2f}" if v not in (None, "") else "—"


def report(results, lim, meta):
    L = []
    w = L.append
    w(f"### Spate replicated-cluster benchmark, {meta['date']}")
    w("")
    for k in ("machine", "memory", "kernel", "commit", "binary", "client", "settings", "load_start", "load_end",
              "limits", "duration"):
        if k in meta:
            w(f"- {k.replace('_', ' ')}: {meta[k]}")
    w("")
    disk, loop = lim.get("disk_mb_s"), lim.get("loopback_mb_s")

    def frac(mb, div, base):
        return f"{float(mb) / (base / div) * 100:.0f} %" if base else "—"

    w("Load: the 1-minute load average when the workload ended (our own nodes and client count in it), and "
      "the cores (of 2) that other processes used meanwhile (machine busy time minus our nodes and client).")
    w("")
    w("| workload | figure | target | met? | load; others' cores | notes |")
    w("| --- | --- | --- | --- | --- | --- |")

    def load_txt(r):
        c = r.get("cpu")
        return f"{r['load'].split()[0]}; others {c['others_cores']:.2f}" if c else r["load"].split()[0]

    def limits_and_cpu(mb, div, r):
        """The throughput's fractions of this machine's limits (div copies of every byte), and the
        CPU our nodes and client used."""
        notes = ""
        if disk:
            notes += f"; {frac(mb, div, disk)} of disk fdatasync/{div} ({disk:.0f}/{div} MB/s)"
        if loop and div > 1:
            notes += f", {frac(mb, div, loop)} of loopback/{div}"
        c = r.get("cpu")
        if c:
            notes += f"; CPU over the run: nodes {c['nodes_cores']:.2f}, client {c['client_cores']:.2f} cores"
        return notes

    def thr_row(name, r, target, div):
        if not r:
            return
        mb = float(r.get("mb_s", "nan"))
        ok = "—" if target is None else ("yes" if mb >= target else "**no**")
        notes = f"{r.get('msgs', '?')} msgs in {r.get('secs', '?')} s, errors {r.get('errors', '?')}, exit {r['exit']}"
        notes += limits_and_cpu(mb, div, r)
        w(f"| {name} | {mb:.1f} MB/s ({r.get('msgs_s', '?')} msg/s) | {'≥ %d MB/s' % target if target else '—'} "
          f"| {ok} | {load_txt(r)} | {notes} |")

    def lat_rows(name, r, ack_target, e2e_target):
        if not r:
            return
        ack99, e2e99 = float(r.get("ack_p99_ms", "nan")), float(r.get("p99_ms", "nan"))
        w(f"| {name}: producer ack | p50 {fmt_ms(r.get('ack_p50_ms'))} / p99 {fmt_ms(r.get('ack_p99_ms'))} / "
          f"p99.9 {fmt_ms(r.get('ack_p999_ms'))} / max {fmt_ms(r.get('ack_max_ms'))} ms "
          f"| p99 ≤ {ack_target} ms | {'yes' if ack99 <= ack_target else '**no**'} | {load_txt(r)} "
          f"| sends >1 ms late: {r.get('late_sends', '?')}; errors {r.get('errors', '?')}; exit {r['exit']} |")
        w(f"| {name}: end to end | p50 {fmt_ms(r.get('p50_ms'))} / p99 {fmt_ms(r.get('p99_ms'))} / "
          f"p99.9 {fmt_ms(r.get('p999_ms'))} / max {fmt_ms(r.get('max_ms'))} ms "
          f"| {'p99 ≤ %d ms' % e2e_target if e2e_target else '—'} "
          f"| {'—' if not e2e_target else ('yes' if e2e99 <= e2e_target else '**no**')} | {load_txt(r)} "
          f"| received {r.get('received', '?')}/{r.get('sent', '?')} |")

    thr_row("RF 3 produce 1 KiB acks=all, 6 partitions", results.get("rf3_produce"), 150, 3)
    lat_rows("RF 3, 10 k msg/s, 1 KiB, linger.ms=1", results.get("rf3_latency"), 20, None)
    lat_rows("RF 3, same, max.in.flight=5", results.get("rf3_latency_inflight5"), 20, None)
    for key, when in (("txn_plain", "before"), ("txn_plain_after", "after")):
        if results.get(key):
            thr_row(f"RF 3 produce 1 KiB acks=all, idempotent, 6 partitions (non-transactional baseline, run "
                    f"{when} the transactions; ratios are to the higher of the two)", results[key], None, 3)
    for size in TXN_SIZES:
        r = results.get(f"txn_{size}")
        if not r:
            continue
        mb, ratio = float(r.get("mb_s", "nan")), r.get("ratio_to_plain")
        target = 0.70 if size == 1000 else None  # issue 9: transactions of 1 000 reach 70 % of plain
        ok = "—" if target is None or ratio is None else ("yes" if ratio >= target else "**no**")
        ratio_txt = f"{ratio * 100:.0f} % of non-transactional" if ratio is not None else "no baseline"
        capped = " (stopped by the send-time cap)" if r.get("capped") == "1" else ""
        notes = (f"{r.get('msgs', '?')}{capped} records in {r.get('txns', '?')} transactions in "
                 f"{r.get('secs', '?')} s, aborts {r.get('aborts', '?')}, errors {r.get('errors', '?')}, "
                 f"exit {r['exit']}; "
                 f"commit max {fmt_ms(r.get('commit_max_ms'))} ms; whole transaction (begin → commit returned) "
                 f"p50 {fmt_ms(r.get('txn_p50_ms'))} / p99 {fmt_ms(r.get('txn_p99_ms'))} ms")
        notes += limits_and_cpu(mb, 3, r)
        size_txt = f"{size:,}".replace(",", " ")  # 1 000, as the docs write it
        w(f"| RF 3 transactions of {size_txt} × 1 KiB, 6 partitions | {mb:.1f} MB/s ({r.get('msgs_s', '?')} "
          f"records/s, {ratio_txt}); commit p50 {fmt_ms(r.get('commit_p50_ms'))} / "
          f"p99 {fmt_ms(r.get('commit_p99_ms'))} ms | {'≥ 70 % of non-transactional' if target else '—'} | {ok} "
          f"| {load_txt(r)} | {notes} |")
    r = results.get("txn_1000_many")
    if r:
        mb, ratio = float(r.get("mb_s", "nan")), r.get("ratio_to_plain")
        ratio_txt = (f"{ratio * 100:.0f} % of non-transactional (one producer, the higher baseline row)"
                     if ratio is not None else "no baseline")
        notes = (f"{r.get('msgs', '?')} records in {r.get('txns', '?')} transactions in {r.get('secs', '?')} s "
                 f"(slowest producer), aborts {r.get('aborts', '?')}, errors {r.get('errors', '?')}, exit {r['exit']}; "
                 f"commit p50 is the median of the producers' p50s, p99 the highest")
        notes += limits_and_cpu(mb, 3, r)
        w(f"| RF 3 transactions of 1 000 × 1 KiB, 6 partitions, {r.get('producers', '?')} producers side by side | "
          f"{mb:.1f} MB/s ({r.get('msgs_s', '?')} records/s, {ratio_txt}); commit p50 {fmt_ms(r.get('commit_p50_ms'))} / "
          f"p99 {fmt_ms(r.get('commit_p99_ms'))} ms | — | — | {load_txt(r)} | {notes} |")
    thr_row("single node produce 1 KiB acks=all, 6 partitions", results.get("single_produce"), None, 1)
    lat_rows("single node, 10 k msg/s, 1 KiB, linger.ms=1", results.get("single_latency"), 10, 10)
    lat_rows("single node, same, max.in.flight=5", results.get("single_latency_inflight5"), 10, 10)

    rows = results.get("failover") or []
    for sig, target, what in (("SIGKILL", 3.0, "kill → first ack"), ("SIGTERM", 1.0, "longest time without an ack")):
        key = "to_first_ack_s" if sig == "SIGKILL" else "longest_gap_s"
        every = [r for r in rows if r["signal"] == sig]
        for label, rs in (("", every),
                          (", leader only", [r for r in every if not r["controller_killed"]]),
                          (", leader and active controller", [r for r in every if r["controller_killed"]])):
            if not rs or (label and len(rs) == len(every)):
                continue
            v = sorted(r[key] for r in rs)
            g = sorted(r["longest_gap_s"] for r in rs)
            m = sorted(r["metadata_s"] for r in rs if r["metadata_s"] is not None)
            meta_txt = f"new leader in metadata p50 {pct(m, .5):.2f} / max {m[-1]:.2f} s; " if m else ""
            j = sorted(r["isr_rejoin_s"] for r in rs)
            p99 = pct(v, 0.99)
            w(f"| failover, {sig} of the leader{label} ({len(rs)} trials): {what} | p50 {pct(v, .5):.2f} / "
              f"p99 {p99:.2f} / max {v[-1]:.2f} s | p99 ≤ {target:g} s | {'yes' if p99 <= target else '**no**'} | "
              f"{rs[0]['load'].split()[0]} → {rs[-1]['load'].split()[0]} | {meta_txt}longest gap p50 {pct(g, .5):.2f} / max {g[-1]:.2f} s; "
              f"delivery errors {sum(r['errors'] for r in rs)}; back in ISR after restart p50 {pct(j, .5):.1f} / "
              f"max {j[-1]:.1f} s |")
    c = results.get("catchup")
    if c:
        pr = c["produce"]
        w(f"| follower catch-up ({c['copied_bytes'] / 1e6:.0f} MB written while node {c['node']} was down) | "
          f"{c['restart_to_full_mb_s']} MB/s restart → caught up ({c['full_s']} s); {c['copy_mb_s']} MB/s while "
          f"copying | — | — | {load_txt(c)} | first new byte {c['first_byte_s']} s after restart; back in every ISR "
          f"after {c['isr_s']} s; written at {pr.get('mb_s')} MB/s with 2 of 3 replicas "
          + (f"({frac(c['copy_mb_s'] or 0, 1, disk)} of disk fdatasync)" if disk else "") + " |")
    for key, label in (("idle_before", "idle"), ("idle", "idle")):
        i = results.get(key)
        if not i:
            continue
        nodes = "; ".join(f"node {n}: {v['cpu_pct']:.2f} % CPU, {v['rss_mib']:.0f} MiB" for n, v in i["nodes"].items())
        extra = f" (created in {i['create_s']} s)" if "create_s" in i else ""
        w(f"| {label}, {i['partitions']} partitions{extra}, {i['secs']} s | {nodes} | — | — | {load_txt(i)} | "
          f"CPU = utime+stime of one core |")
    fc = results.get("failover_cpu")
    if fc:
        w("")
        w(f"Over the failover trials ({fc['wall_s']:.0f} s) the machine was busy {fc['busy_cores']:.2f} of 2 cores "
          f"on average, nodes and producer included.")
    if rows:
        w("")
        w("Failover trials:")
        w("")
        w("| # | signal | node (ctl = active controller) | process gone s | new leader in metadata s | "
          "first ack s | longest gap s | gap before fault s | new leader | ISR again s | load |")
        w("| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | --- |")
        for r in rows:
            w(f"| {r['trial']} | {r['signal']} | {r['node']}{' (ctl)' if r['controller_killed'] else ''} | "
              f"{r['stop_s']} | {r['metadata_s']} | {r['to_first_ack_s']} | {r['longest_gap_s']} | "
              f"{r['gap_floor_s']} | {r['new_leader']} (epoch {r['new_epoch']}) | {r['isr_rejoin_s']} | {r['load'].split()[0]} |")
    return "\n".join(L) + "\n"


# ------------------------------------------------------------------ main


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spate", required=True, help="the spate binary (a private copy)")
    ap.add_argument("--client", required=True, help="the compiled bench/spate_bench.c")
    ap.add_argument("--out", required=True, help="Markdown report; raw figures go to the same name .json")
    ap.add_argument("--limits-env", help="limits.env from scripts/bench --limits, for the fractions")
    ap.add_argument("--only", default="single,rf3,txn,failover,catchup,idle")
    ap.add_argument("--secs", type=int, default=10, help="sending time of a throughput run")
    ap.add_argument("--lat-secs", type=int, default=10, help="duration of a latency run")
    ap.add_argument("--txn-records", type=int, default=TXN_RECORDS,
                    help="records (1 KiB) of each run of the txn workload")
    ap.add_argument("--txn-secs", type=int, default=TXN_SECS,
                    help="sending time cap of each run of the txn workload")
    ap.add_argument("--kill-trials", type=int, default=20)
    ap.add_argument("--term-trials", type=int, default=6)
    ap.add_argument("--failover-rate", type=int, default=1500,
                    help="msgs/s of the failover producer, over one topic per node")
    ap.add_argument("--catchup-bytes", type=int, default=1 << 30)
    ap.add_argument("--catchup-seconds", type=int, default=60)
    ap.add_argument("--idle-topics", type=int, default=100)
    ap.add_argument("--idle-partitions", type=int, default=10)
    ap.add_argument("--idle-seconds", type=int, default=30)
    ap.add_argument("--idle-base-seconds", type=int, default=10)
    ap.add_argument("--meta", action="append", default=[], help="KEY=VALUE lines for the report header")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                    help="a broker setting for every node started (diagnostics, e.g. acks.all.fsync=false)")
    a = ap.parse_args()

    only = set(a.only.split(","))
    out = Path(a.out)
    out_dir = out.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    # SIGTERM/SIGINT to this script unwind through the finally blocks that stop the nodes.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    tools = Tools(a.spate, a.client, out_dir)
    meta = dict(m.split("=", 1) for m in a.meta)
    meta["date"] = time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime())
    meta["load_start"] = loadavg()
    if a.set:
        meta["settings"] = "**non-default** " + ", ".join(a.set)
    results = {}
    base_dir = Path(tempfile.mkdtemp(prefix="spate-bench-cluster."))
    log(f"data under {base_dir}")
    t_start = time.monotonic()
    failures = []

    def guarded(name, fn, *args):
        """Runs one workload; a failure is recorded and the next workload still runs."""
        try:
            fn(*args)
        except (BenchError, CliError, subprocess.TimeoutExpired) as e:
            failures.append(f"{name}: {e}")
            log(f"FAILED: {name}: {e}")

    try:
        if "single" in only:
            guarded("single", bench_single, tools, base_dir, out_dir, a, results)
        if only & {"rf3", "txn", "catchup", "idle"}:
            cluster = DevCluster(tools, base_dir, settings=a.set)
            try:
                for name, fn in (("rf3", bench_rf3), ("txn", bench_txn), ("catchup", bench_catchup),
                                 ("idle", bench_idle)):
                    if name in only:
                        guarded(name, fn, tools, cluster, a, results)
            finally:
                log("stopping the cluster")
                cluster.stop()
        if "failover" in only:
            guarded("failover", bench_failover, tools, base_dir, a, results)
    except (BenchError, CliError, subprocess.TimeoutExpired) as e:
        failures.append(str(e))
        log(f"FAILED: {e}")
    finally:
        if failures:  # keep the nodes' logs for a post-mortem
            keep = out_dir / "cluster-failed-logs"
            subprocess.run(["rm", "-rf", str(keep)], timeout=60)
            keep.mkdir()
            for f in list(base_dir.glob("*.out")) + list(base_dir.glob("*/node-*.log")):
                dest = keep / (f.parent.name + "-" + f.name if f.parent != base_dir else f.name)
                dest.write_bytes(f.read_bytes())
            log(f"node logs kept in {keep}")
        subprocess.run(["rm", "-rf", str(base_dir)], timeout=120)
    meta["load_end"] = loadavg()
    meta["duration"] = f"{time.monotonic() - t_start:.0f} s"
    lim = limits(a.limits_env)
    if lim:
        meta["limits"] = (f"from {a.limits_env} ({lim.get('_mtime')}): disk fdatasync {lim.get('disk_mb_s', 0):.0f} MB/s, "
                          f"loopback {lim.get('loopback_mb_s', 0):.0f} MB/s, 4 KiB O_DSYNC write "
                          f"{lim.get('fsync_4k_ms', 0)} ms")
    text = report(results, lim, meta)
    for f in failures:
        text += f"\n**Failed:** {f}\n"
    out.write_text(text)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "limits": lim, "results": results}, indent=1,
                                                   default=str))
    print(text)
    log(f"done in {meta['duration']}; report {out}, raw figures {out.with_suffix('.json')}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
