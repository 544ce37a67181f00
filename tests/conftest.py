"""Test-wide fixtures: a real AMQP broker.

Tests that talk to a broker are marked ``@pytest.mark.broker`` and use one of:

``broker``       (session) a :class:`tests._broker.Broker`: ``.url`` and ``.node``, the
                 :class:`tests._broker.RabbitNode` the harness started (None with AMQP_URL).
``amqp_url``     (session) the broker's URL, a str.
``rabbit_node``  (function) the harness's RabbitNode, for tests that kill, restart or close
                 connections on the node; fails when AMQP_URL points at an outside broker.
                 The node is running when the test starts and is started again afterwards if
                 the test left it down.
``rabbit_cluster`` (function) a :class:`tests._cluster.RabbitCluster`: three throwaway nodes
                 joined into one cluster, started once per session (also with AMQP_URL set);
                 ``.urls``, ``.kill(i)``, ``.start(i)``.  Every node is running when a test
                 starts.  Tests that use it get the ``cluster`` and ``broker`` markers.

With ``AMQP_URL`` set, that broker is used; otherwise a throwaway RabbitMQ node is started
once per session (needs ``apt-get install rabbitmq-server``; never skipped, it fails).
"""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests._broker import INSTALL_HINT, Broker, BrokerError, RabbitNode, find_rabbitmq_sbin
from tests._cluster import RabbitCluster

_BROKER_FIXTURES = frozenset({"broker", "amqp_url", "rabbit_node", "rabbit_cluster"})


def _child_processes() -> list[str]:
    """Processes (zombies included) whose parent is this test process."""
    me = str(os.getpid())
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # it exited while we looked
        if fields[1] == me:
            children.append(f"pid {stat.parent.name} (state {fields[0]})")
    return children


def _open_sockets() -> int:
    count = 0
    for fd in Path("/proc/self/fd").iterdir():
        try:
            count += os.readlink(fd).startswith("socket:")
        except OSError:
            continue
    return count


#: Passwords no log record may ever contain (tests add theirs).
SECRETS: set[str] = set()


class _SecretScanner(logging.Handler):
    """Records every trio_lavin log record that mentions a registered secret."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.leaks: list[str] = []
        self.seen = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.seen += 1
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            text += f" {record.exc_info[1]!r} {record.exc_info[1]}"
        for secret in SECRETS:
            if secret in text:
                self.leaks.append(f"{record.name}: {text[:200]}")


@pytest.fixture(scope="session", autouse=True)
def no_password_in_any_log() -> Iterator[_SecretScanner]:
    """Every log record of trio_lavin in the whole suite is scanned for the
    registered passwords; one leak fails the run."""
    scanner = _SecretScanner()
    logger = logging.getLogger("trio_lavin")
    previous = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(scanner)
    yield scanner
    logger.removeHandler(scanner)
    logger.setLevel(previous)
    if scanner.leaks:
        pytest.fail(f"passwords found in log records: {scanner.leaks[:5]}", pytrace=False)


@pytest.fixture(scope="session", autouse=True)
def nothing_left_behind() -> Iterator[None]:
    """After the whole suite (and the broker's teardown): no child process
    and no socket of ours is left.  Tasks cannot leak: each test's trio.run
    only returns once every task in it has finished."""
    sockets = _open_sockets()
    yield
    gc.collect()
    leftovers = []
    if children := _child_processes():
        leftovers.append(f"child processes still running: {', '.join(children)}")
    if (now := _open_sockets()) > sockets:
        leftovers.append(f"{now - sockets} socket(s) still open")
    if leftovers:
        pytest.fail("the test suite left things behind: " + "; ".join(leftovers), pytrace=False)


@pytest.fixture(scope="session")
def broker() -> Iterator[Broker]:
    url = os.environ.get("AMQP_URL")
    if url:
        yield Broker(url=url, node=None)
        return
    if find_rabbitmq_sbin() is None:
        pytest.fail(INSTALL_HINT, pytrace=False)
    node = RabbitNode()
    error: BrokerError | None = None
    try:
        node.start()
    except BrokerError as exc:  # reported outside the handler, without exception chaining
        node.stop()
        error = exc
    if error is not None:
        pytest.fail(f"could not start the test broker: {error}", pytrace=False)
    try:
        yield Broker(url=node.url, node=node)
    finally:
        node.stop()


@pytest.fixture(scope="session")
def amqp_url(broker: Broker) -> str:
    return broker.url


@pytest.fixture
def rabbit_node(broker: Broker) -> Iterator[RabbitNode]:
    node = broker.node
    if node is None:
        pytest.fail(
            "this test kills/restarts/controls the broker, so it needs the harness's own "
            "RabbitMQ node: unset AMQP_URL (and install rabbitmq-server)",
            pytrace=False,
        )
    if not node.is_running():
        node.start()
    yield node
    if not node.is_running():  # leave a running broker for the tests that follow
        node.start()


@pytest.fixture(scope="session")
def _cluster_session() -> Iterator[RabbitCluster]:
    if find_rabbitmq_sbin() is None:
        pytest.fail(INSTALL_HINT, pytrace=False)
    cluster = RabbitCluster()
    error: BrokerError | None = None
    try:
        cluster.boot()
    except BrokerError as exc:  # reported outside the handler, without exception chaining
        cluster.stop()
        error = exc
    if error is not None:
        pytest.fail(f"could not start the test cluster: {error}", pytrace=False)
    print(
        f"\n[cluster] 3 nodes booted in {cluster.boot_seconds:.1f} s, "
        f"joined in {cluster.join_seconds:.1f} s"
    )
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def rabbit_cluster(_cluster_session: RabbitCluster) -> RabbitCluster:
    cluster = _cluster_session
    down = [i for i in range(len(cluster.nodes)) if not cluster.is_running(i)]
    for index in down:  # a node an earlier test killed
        cluster.start(index)
    return cluster


def _uses_real_broker(item: pytest.Item) -> bool:
    """Whether ``item`` uses (directly or through other fixtures) one of *these* fixtures.

    A test module may define its own fixture with one of these names (say, a fake ``broker``);
    that one does not count.
    """
    names = _BROKER_FIXTURES.intersection(getattr(item, "fixturenames", ()))
    info = getattr(item, "_fixtureinfo", None)
    defs = getattr(info, "name2fixturedefs", None)
    if not names or defs is None:
        return bool(names)
    for name in names:
        chain = defs.get(name) or ()
        if chain and getattr(chain[-1].func, "__module__", __name__) == __name__:
            return True
    return False


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that use the broker fixtures get the ``broker`` marker (so ``-m "not broker"``
    deselects them) even if they forgot it; those that use the cluster get ``cluster`` too."""
    for item in items:
        if item.get_closest_marker("broker") is None and _uses_real_broker(item):
            item.add_marker(pytest.mark.broker)
        if item.get_closest_marker("cluster") is None and "rabbit_cluster" in getattr(
            item, "fixturenames", ()
        ):
            item.add_marker(pytest.mark.cluster)


def pytest_runtest_setup(item: pytest.Item) -> None:
    """A test marked ``broker`` must get its broker from these fixtures."""
    if item.get_closest_marker("broker") is not None and not _uses_real_broker(item):
        pytest.fail(
            f"{item.nodeid} is marked `broker` but uses none of the fixtures "
            f"{sorted(_BROKER_FIXTURES)} of tests/conftest.py: take the URL from `amqp_url` "
            "(or `broker`), not from a hard-coded address",
            pytrace=False,
        )
