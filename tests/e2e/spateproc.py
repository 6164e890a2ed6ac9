"""The real `spate` binary as processes: `Broker` (one `spate serve`) and `Cluster` (N of them
forming one cluster), on free loopback ports or on given hosts (network namespaces). Used by the
end-to-end fixtures (conftest.py) and by the chaos campaign (tests/chaos), so it has no pytest
dependency.

Each broker gets its own data dir and free ports; its stderr goes to a file; a broker gets SIGKILL
when the process that started it dies.
"""

import os
import random
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
SPATE_BIN = Path(os.environ.get("SPATE_BIN", REPO_ROOT / "target" / "release" / "spate"))
HEALTH_TIMEOUT_S = 30
STOP_TIMEOUT_S = 15
STDERR_TAIL_BYTES = 8000


def _die_with_parent():
    """preexec_fn: the broker gets SIGKILL if the test process dies, so no broker outlives a
    killed test run (Linux prctl PR_SET_PDEATHSIG)."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
    except Exception:
        pass


_ports_given = set()


def free_port() -> int:
    """A free port below the kernel's ephemeral range: a port the kernel hands out (port 0) can
    be taken by a client's outgoing connection while a broker restarts on it. Never the same
    port twice in one session."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    for _ in range(1000):
        port = random.randrange(10000, max(10001, low))
        if port in _ports_given:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _ports_given.add(port)
        return port
    raise BrokerError("no free port below the ephemeral range")


class BrokerError(AssertionError):
    pass


class Broker:
    """One `spate serve` process. restart() keeps the data dir and ports."""

    def __init__(self, workdir: Path, name="spate", args=(), env=None, config=None, host="127.0.0.1",
                 prefix=()):
        """`host`: the address every listener binds and advertises; `prefix`: a command the
        broker runs under (`ip netns exec NS` for a node in its own network namespace)."""
        self.workdir = Path(workdir)
        self.host = host
        self.prefix = list(prefix)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.data_dir = self.workdir / "data"
        self.data_dir.mkdir(exist_ok=True)
        self.kafka_port = free_port()
        self.http_port = free_port()
        self.args = list(args)
        self.env = dict(env or {})
        self.config_path = None
        if config is not None:
            self.config_path = self.workdir / "spate.toml"
            self.config_path.write_text(config)
        self.stderr_path = self.workdir / "stderr.log"
        self.proc = None
        self.starts = 0

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.kafka_port}"

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    def command(self):
        cmd = self.prefix + [str(SPATE_BIN), "serve", "--data-dir", str(self.data_dir),
                             "--kafka-listen", self.bootstrap, "--http-listen", f"{self.host}:{self.http_port}"]
        if self.config_path is not None:
            cmd += ["--config", str(self.config_path)]
        return cmd + self.args

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self):
        self.launch()
        self.wait_healthy()
        return self

    def launch(self):
        """Starts the process without waiting for it to become healthy (cluster nodes wait for
        a quorum of their peers, so they are launched together and then waited for)."""
        assert self.proc is None or self.proc.poll() is not None, "broker already running"
        if not SPATE_BIN.exists():
            raise BrokerError(f"{SPATE_BIN} does not exist: build it with `cargo build --release -p spate`")
        # Settings reach the broker only through this test's own args/env (SPATE_LOG may pass).
        env = {k: v for k, v in os.environ.items() if not k.startswith("SPATE_") or k == "SPATE_LOG"}
        env.setdefault("RUST_BACKTRACE", "1")
        env.update(self.env)
        self.starts += 1
        with open(self.stderr_path, "ab") as err:
            err.write(f"\n===== e2e: start #{self.starts}: {' '.join(self.command())}\n".encode())
            err.flush()
            self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL,
                                         stdout=err, stderr=err, env=env, preexec_fn=_die_with_parent)
        return self

    def wait_healthy(self, timeout=HEALTH_TIMEOUT_S):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            rc = self.proc.poll()
            if rc is not None:
                raise BrokerError(f"{self.name} exited with code {rc} before becoming healthy\n"
                                  f"--- stderr tail ---\n{self.stderr_tail()}")
            try:
                with urllib.request.urlopen(self.http_url + "/health", timeout=2) as r:
                    if r.status == 200:
                        return
                    last = f"HTTP {r.status}"
            except urllib.error.HTTPError as e:
                last = f"HTTP {e.code}"
            except OSError as e:
                last = repr(e)
            time.sleep(0.05)
        pid = self.proc.pid
        self.proc.kill()
        self.proc.wait()
        raise BrokerError(f"{self.name} (pid {pid}) not healthy after {timeout}s (last: {last})\n"
                          f"--- stderr tail ---\n{self.stderr_tail()}")

    def stop(self, sig=signal.SIGTERM, timeout=STOP_TIMEOUT_S):
        """Graceful stop; asserts exit code 0 within `timeout` seconds."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise BrokerError(f"{self.name} did not exit within {timeout}s of {sig.name}\n"
                              f"--- stderr tail ---\n{self.stderr_tail()}")
        if rc != 0:
            raise BrokerError(f"{self.name} exited with code {rc} after {sig.name} (expected 0)\n"
                              f"--- stderr tail ---\n{self.stderr_tail()}")

    def kill9(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def restart(self, graceful=True):
        if graceful:
            self.stop()
        else:
            self.kill9()
        return self.start()

    def cleanup(self):
        """Teardown: never leave a process behind, whatever state the test left."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    @property
    def running(self):
        return self.proc is not None and self.proc.poll() is None

    # ---- diagnostics -----------------------------------------------------------------------

    def stderr_size(self):
        try:
            return self.stderr_path.stat().st_size
        except FileNotFoundError:
            return 0

    def stderr_text(self, since=0):
        try:
            with open(self.stderr_path, "rb") as f:
                f.seek(since)
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def stderr_tail(self, since=0, limit=STDERR_TAIL_BYTES):
        text = self.stderr_text(since)
        return text if len(text) <= limit else "...\n" + text[-limit:]

    def http_get(self, path, timeout=5):
        """Returns (status, content_type, body_text)."""
        try:
            with urllib.request.urlopen(self.http_url + path, timeout=timeout) as r:
                return r.status, r.headers.get("Content-Type", ""), r.read().decode(errors="replace")
        except urllib.error.HTTPError as e:
            return e.code, e.headers.get("Content-Type", ""), e.read().decode(errors="replace")


class Cluster:
    """N `spate serve` processes on loopback forming one cluster: every node a controller voter
    and a broker. Defaults as `spate dev` sets them: replication factor min(3, N), offsets
    topic likewise; min.insync.replicas is the broker's default (2 for three replicas)."""

    def __init__(self, workdir: Path, nodes=3, args=(), env=None, hosts=None, prefixes=None):
        """`hosts`/`prefixes`: per node id, the address and command prefix (see Broker); by
        default every node is on 127.0.0.1 in this network namespace."""
        self.workdir = Path(workdir)
        hosts = hosts or {i: "127.0.0.1" for i in range(1, nodes + 1)}
        prefixes = prefixes or {}
        self.controller_ports = {i: free_port() for i in range(1, nodes + 1)}
        voters = ",".join(f"{i}@{hosts[i]}:{p}" for i, p in self.controller_ports.items())
        rf = min(3, nodes)
        common = ["--set", f"default.replication.factor={rf}",
                  "--set", f"offsets.topic.replication.factor={rf}",
                  "--set", "group.initial.rebalance.delay.ms=0"]
        self.nodes = {}
        for i, port in self.controller_ports.items():
            node_args = ["--node-id", str(i), "--controller-voters", voters,
                         "--controller-listen", f"{hosts[i]}:{port}"] + common + list(args)
            self.nodes[i] = Broker(self.workdir / f"node-{i}", name=f"node {i}", args=node_args, env=env,
                                   host=hosts[i], prefix=prefixes.get(i, ()))

    @property
    def bootstrap(self):
        return ",".join(b.bootstrap for b in self.nodes.values())

    def start(self):
        for b in self.nodes.values():
            b.launch()
        for b in self.nodes.values():
            b.wait_healthy(timeout=60)
        return self

    def node_by_port(self, port):
        return next(b for b in self.nodes.values() if b.kafka_port == port)

    def running(self):
        return {i: b for i, b in self.nodes.items() if b.running}

    def cleanup(self):
        for b in self.nodes.values():
            b.cleanup()
