"""Test hosts in network namespaces, so a test can cut the network between cluster nodes.

One Linux bridge in this (the test's) namespace, and per node a namespace with one veth
interface on the bridge. Node i is at 10.213.S.i and the test process at 10.213.S.254, with S
chosen from the test's pid. These addresses exist only on this machine, inside the namespaces and
the bridge this module creates; nothing is routed anywhere else (an `unreachable` route covers
all of 10.213/16 outside a lab's bridge, so a client left over after its lab is gone cannot
reach out through the default route). Partitions are iptables DROP
rules inside a node's namespace, so the test (the clients) can still reach a node cut off from
its peers, which is what shows that a partitioned leader stops acknowledging writes.

Faults beyond a full cut, for the chaos campaign (tests/chaos): one-way drops between two nodes,
random packet loss (iptables `statistic`), and a degraded link on a node (`tc`: netem delay where
the kernel has it, else a token bucket that queues and drops past a small rate). `heal` undoes
all of them.

Needs root, `ip` and `tc` (iproute2) and `iptables`; scripts/setup installs them.
"""

import os
import shutil
import subprocess


def _run(*cmd):
    r = subprocess.run(list(cmd), capture_output=True, text=True)
    if r.returncode != 0:
        raise AssertionError(f"`{' '.join(cmd)}` failed ({r.returncode}): {r.stderr.strip()}")
    return r.stdout


def not_root():
    """Why this process cannot create namespaces (it is not root), or None."""
    return None if os.geteuid() == 0 else "network namespace tests need root"


def missing_tools():
    """A tool scripts/setup installs that is missing, or None."""
    for tool in ("ip", "iptables", "tc"):
        if shutil.which(tool) is None:
            return f"`{tool}` is missing: run scripts/setup"
    return None


LAB_NET = "10.213"  # every lab address is 10.213.S.x


class NetnsLab:
    def __init__(self, nodes):
        tag = os.getpid() % 10000
        subnet = os.getpid() % 200 + 20
        self.prefix = f"{LAB_NET}.{subnet}"
        self.bridge = f"spbr{tag}"
        self.namespaces = {i: f"spate-e2e-{tag}-{i}" for i in range(1, nodes + 1)}
        self.veths = {i: f"spv{tag}n{i}" for i in range(1, nodes + 1)}
        self.created = []

    @property
    def hosts(self):
        return {i: f"{self.prefix}.{i}" for i in self.namespaces}

    @property
    def prefixes(self):
        return {i: ["ip", "netns", "exec", ns] for i, ns in self.namespaces.items()}

    def up(self):
        self.teardown()  # leftovers of a killed earlier run with the same pid
        # A client that outlives its lab (a test's leftover producer retrying in the background)
        # must not reach these addresses through the default route: the whole 10.213/16 is
        # unreachable except through a lab's own bridge (its /24 is the more specific route).
        # Left in place on teardown; it only ever covers addresses the labs made up.
        _run("ip", "route", "replace", "unreachable", f"{LAB_NET}.0.0/16")
        _run("ip", "link", "add", self.bridge, "type", "bridge")
        self.created.append(("link", self.bridge))
        _run("ip", "addr", "add", f"{self.prefix}.254/24", "dev", self.bridge)
        _run("ip", "link", "set", self.bridge, "up")
        for i, ns in self.namespaces.items():
            _run("ip", "netns", "add", ns)
            self.created.append(("netns", ns))
            _run("ip", "link", "add", self.veths[i], "type", "veth", "peer", "name", "eth0", "netns", ns)
            _run("ip", "link", "set", self.veths[i], "master", self.bridge, "up")
            _run("ip", "netns", "exec", ns, "ip", "addr", "add", f"{self.hosts[i]}/24", "dev", "eth0")
            _run("ip", "netns", "exec", ns, "ip", "link", "set", "eth0", "up")
            _run("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        return self

    def isolate(self, node):
        """Cuts `node` off from every other node, both ways; the test's own address stays
        reachable."""
        ns = self.namespaces[node]
        for other, host in self.hosts.items():
            if other != node:
                _run("ip", "netns", "exec", ns, "iptables", "-A", "INPUT", "-s", host, "-j", "DROP")
                _run("ip", "netns", "exec", ns, "iptables", "-A", "OUTPUT", "-d", host, "-j", "DROP")

    def drop_from(self, node, source):
        """`node` drops every packet from `source` (one way: `node` still sends to `source`, so
        neither side completes a TCP exchange, but each sees the other's SYNs differently)."""
        _run("ip", "netns", "exec", self.namespaces[node], "iptables", "-A", "INPUT", "-s",
             self.hosts[source], "-j", "DROP")

    def cut(self, a, b):
        """Drops everything between nodes `a` and `b`, both ways."""
        self.drop_from(a, b)
        self.drop_from(b, a)

    def lose(self, node, percent):
        """`node` drops `percent` % of the packets it receives, at random (clients' too)."""
        _run("ip", "netns", "exec", self.namespaces[node], "iptables", "-A", "INPUT", "-m", "statistic",
             "--mode", "random", "--probability", f"{percent / 100:.4f}", "-j", "DROP")

    def slow(self, node, delay_ms):
        """Degrades `node`'s outgoing link: netem adds `delay_ms` (with 25 % jitter) where the
        kernel has netem; otherwise a token bucket of 2 Mbit/s whose queue holds up to
        `delay_ms` of traffic delays packets under load and drops past it. Returns which."""
        cmd = ["ip", "netns", "exec", self.namespaces[node], "tc", "qdisc", "replace", "dev", "eth0", "root"]
        netem = subprocess.run(cmd + ["netem", "delay", f"{delay_ms}ms", f"{delay_ms // 4}ms"],
                               capture_output=True, text=True)
        if netem.returncode == 0:
            return f"netem delay {delay_ms}ms"
        _run(*cmd, "tbf", "rate", "2mbit", "burst", "32kbit", "latency", f"{delay_ms}ms")
        return f"tbf 2mbit, queue {delay_ms}ms (no netem in this kernel)"

    def heal(self):
        """Undoes every cut, drop, loss and slow link."""
        for ns in self.namespaces.values():
            _run("ip", "netns", "exec", ns, "iptables", "-F", "INPUT")
            _run("ip", "netns", "exec", ns, "iptables", "-F", "OUTPUT")
            subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "del", "dev", "eth0", "root"],
                           capture_output=True)

    def teardown(self):
        """Deleting a namespace deletes its end of the veth pair, and so the pair."""
        for ns in self.namespaces.values():
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
        for v in self.veths.values():
            subprocess.run(["ip", "link", "del", v], capture_output=True)
        self.created.clear()
