"""Fixtures that run the real `spate` binary for end-to-end tests.

- `broker`: one broker for the whole session, for read-mostly tests that use their own topics.
- `broker_factory`: brokers owned by one test (restart, crash, config tests); stopped at its end.

Each broker gets a fresh temporary data dir and free loopback ports; its stderr goes to a file
(the processes themselves are spateproc.py's `Broker` and `Cluster`). When a test fails, the
part of every involved broker's stderr written during that test is attached to the report
(section "spate stderr").
"""

import uuid

import pytest

from spateproc import (REPO_ROOT, SPATE_BIN, Broker, BrokerError, Cluster,  # noqa: F401 (re-exported)
                       _die_with_parent, free_port)

# Brokers touched by the running test, with the stderr offset at which the test began.
_test_brokers = {}


def _track(item, broker):
    _test_brokers.setdefault(item.nodeid, []).append((broker, broker.stderr_size()))


@pytest.fixture(scope="session")
def _session_broker(tmp_path_factory):
    b = Broker(tmp_path_factory.mktemp("session-broker"), name="session broker")
    try:
        b.start()
        yield b
        b.stop()
    finally:
        b.cleanup()


@pytest.fixture
def broker(_session_broker, request):
    """The session-wide broker (shared: use unique topic names)."""
    if not _session_broker.running:
        pytest.fail("the session broker is no longer running (it crashed during an earlier test)\n"
                    + _session_broker.stderr_tail())
    _track(request.node, _session_broker)
    return _session_broker


@pytest.fixture
def bootstrap(broker):
    return broker.bootstrap


@pytest.fixture(scope="session")
def _session_cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("session-cluster"), nodes=3)
    try:
        c.start()
        yield c
    finally:
        c.cleanup()


@pytest.fixture(params=["one-node", "three-nodes"])
def bootstrap_both_shapes(request):
    """The session broker, then the session 3-node cluster (replication factor 3): client
    suites override `bootstrap` with this to run against both shapes (use unique topics)."""
    if request.param == "one-node":
        return request.getfixturevalue("broker").bootstrap
    c = request.getfixturevalue("_session_cluster")
    down = [b.name for b in c.nodes.values() if not b.running]
    if down:
        pytest.fail(f"the session cluster lost {down} during an earlier test")
    for b in c.nodes.values():
        _track(request.node, b)
    return c.bootstrap


@pytest.fixture
def broker_factory(tmp_path, request):
    """broker_factory(args=[...], env={...}, config="toml text", start=True, subdir=None) -> Broker
    owned by this test."""
    made = []

    def make(args=(), env=None, config=None, start=True, subdir=None):
        b = Broker(tmp_path / (subdir or f"broker{len(made)}"), name=f"test broker {len(made)}",
                   args=args, env=env, config=config)
        made.append(b)
        _track(request.node, b)
        if start:
            b.start()
        return b

    yield make
    for b in made:
        b.cleanup()


@pytest.fixture
def cluster_factory(tmp_path, request):
    """cluster_factory(nodes=3, args=[...], start=True, hosts=None, prefixes=None) -> Cluster
    owned by this test."""
    made = []

    def make(nodes=3, args=(), env=None, start=True, hosts=None, prefixes=None):
        c = Cluster(tmp_path / f"cluster{len(made)}", nodes=nodes, args=args, env=env, hosts=hosts,
                    prefixes=prefixes)
        made.append(c)
        for b in c.nodes.values():
            _track(request.node, b)
        if start:
            c.start()
        return c

    yield make
    for c in made:
        c.cleanup()


@pytest.fixture
def topic_name(request):
    """A fresh, valid, unique topic name derived from the test name."""
    base = "".join(c if c.isalnum() or c in "._-" else "_" for c in request.node.name)[:80]
    return f"{base}-{uuid.uuid4().hex[:8]}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "teardown":
        entries = _test_brokers.pop(item.nodeid, [])
    else:
        entries = _test_brokers.get(item.nodeid, [])
    if report.failed and entries:
        for b, since in entries:
            report.sections.append((f"spate stderr: {b.name} ({b.stderr_path})", b.stderr_tail(since)))


def pytest_sessionstart(session):
    if not SPATE_BIN.exists():
        print(f"\nWARNING: {SPATE_BIN} is missing; build it with `cargo build --release -p spate`")
