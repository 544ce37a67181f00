"""Test-wide fixtures: real AMQP brokers, RabbitMQ and LavinMQ.

Tests that talk to a broker are marked ``@pytest.mark.broker`` and use one of:

``broker``       (session, parametrized: ``rabbitmq`` and ``lavinmq``) a
                 :class:`trio_lavin.testing.Broker`: ``.kind``, ``.url`` and ``.node``, the
                 node the harness started (a :class:`trio_lavin.testing.RabbitNode` or a
                 :class:`trio_lavin.testing.LavinNode`; None for the broker at AMQP_URL).  A
                 test that uses it runs once on each broker; the LavinMQ runs get the
                 ``lavinmq`` marker.
``amqp_url``     (session, parametrized with ``broker``) the broker's URL, a str.
``node``         (function, parametrized with ``broker``) the harness's node, for tests that
                 kill and restart the broker or close its connections as an operator
                 would (:class:`trio_lavin.testing.BrokerNode`: ``kill``, ``start``,
                 ``close_all_connections``); fails when AMQP_URL points at an outside
                 broker.  The node is running when the test starts and is started again
                 afterwards if the test left it down.
``rabbit_node``  (function) the harness's RabbitNode, for tests of RabbitMQ itself
                 (``rabbitmqctl``); like ``node`` otherwise.  A test that uses it runs on
                 RabbitMQ only, whatever other broker fixture it uses.
``lavinmq_node`` (function) the harness's LavinNode, for tests of LavinMQ's own behaviour
                 (its HTTP API, its WebSocket endpoint); like ``node`` otherwise.  Such a test
                 runs on LavinMQ only and gets the ``lavinmq`` marker.
``rabbit_cluster`` (function) a :class:`trio_lavin.testing.RabbitCluster`: three throwaway nodes
                 joined into one cluster, started once per session (also with AMQP_URL set);
                 ``.urls``, ``.kill(i)``, ``.start(i)``.  Every node is running when a test
                 starts.  Tests that use it get the ``cluster`` and ``broker`` markers.

With ``AMQP_URL`` set, that broker is used for the ``rabbitmq`` runs; otherwise a throwaway
RabbitMQ node is started once per session (needs ``apt-get install rabbitmq-server``; never
skipped, it fails).  The ``lavinmq`` runs get a throwaway LavinMQ node, started once per
session (the binary: ``LAVINMQ``, else ``lavinmq`` on PATH, else ``../shared/lavinmq/lavinmq``
beside the repository; see trio_lavin/testing/_lavinmq.py).  Where there is no LavinMQ binary, the
``lavinmq`` runs are deselected (not skipped) with one line saying how to get them, except
in CI (``CI`` set), where they run and fail: CI never passes without LavinMQ.
"""

from __future__ import annotations

import gc
import logging
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from trio_lavin.testing import (
    Broker,
    BrokerError,
    BrokerNode,
    LavinNode,
    RabbitCluster,
    RabbitNode,
    find_lavinmq,
)
from trio_lavin.testing._lavinmq import LAVINMQ_HINT
from trio_lavin.testing._rabbitmq import INSTALL_HINT, find_rabbitmq_sbin

#: Where this project's machines keep a LavinMQ 1.0.1 build: beside the repository.
SHARED_LAVINMQ = Path(__file__).resolve().parents[2] / "shared" / "lavinmq" / "lavinmq"
if not os.environ.get("LAVINMQ") and not shutil.which("lavinmq") and SHARED_LAVINMQ.is_file():
    os.environ["LAVINMQ"] = str(SHARED_LAVINMQ)  # for the tests and what they start

_BROKER_FIXTURES = frozenset(
    {
        "broker",
        "amqp_url",
        "node",
        "rabbit_node",
        "lavinmq_node",
        "rabbit_broker",
        "lavinmq_broker",
        "rabbit_cluster",
    }
)

#: The ``broker`` fixture's parameters, and the session fixture behind each.
BROKER_FIXTURE = {"rabbitmq": "rabbit_broker", "lavinmq": "lavinmq_broker"}
BROKER_KINDS = tuple(BROKER_FIXTURE)


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
def rabbit_broker() -> Iterator[Broker]:
    """The session's RabbitMQ: the broker at AMQP_URL, or a throwaway node."""
    url = os.environ.get("AMQP_URL")
    if url:
        yield Broker(url=url, node=None, kind="rabbitmq")
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
        yield Broker(url=node.url, node=node, kind="rabbitmq")
    finally:
        node.stop()


@pytest.fixture(scope="session")
def lavinmq_broker() -> Iterator[Broker]:
    """The session's throwaway LavinMQ node (one per session: it binds a fixed socket)."""
    error: BrokerError | None = None
    node: LavinNode | None = None
    try:
        node = LavinNode()
        node.start()
    except BrokerError as exc:  # reported outside the handler, without exception chaining
        if node is not None:
            node.stop()
        error = exc
    if error is not None or node is None:
        pytest.fail(f"could not start the test LavinMQ: {error}", pytrace=False)
    try:
        yield Broker(url=node.url, node=node, kind="lavinmq")
    finally:
        node.stop()


@pytest.fixture(scope="session")
def broker(request: pytest.FixtureRequest) -> Broker:
    """Parametrized by :func:`pytest_generate_tests` (``rabbitmq``, ``lavinmq``)."""
    kind: str = getattr(request, "param", "rabbitmq")
    value: Broker = request.getfixturevalue(BROKER_FIXTURE[kind])
    return value


@pytest.fixture(scope="session")
def amqp_url(broker: Broker) -> str:
    return broker.url


def _running(broker: Broker) -> Iterator[BrokerNode]:
    node = broker.node
    if node is None:
        pytest.fail(
            "this test kills/restarts/controls the broker, so it needs the harness's own "
            "node: unset AMQP_URL (and install rabbitmq-server)",
            pytrace=False,
        )
    if not node.is_running():
        node.start()
    yield node
    if not node.is_running():  # leave a running broker for the tests that follow
        node.start()


@pytest.fixture
def node(broker: Broker) -> Iterator[BrokerNode]:
    yield from _running(broker)


@pytest.fixture
def rabbit_node(rabbit_broker: Broker) -> Iterator[RabbitNode]:
    for node in _running(rabbit_broker):
        assert isinstance(node, RabbitNode)
        yield node


@pytest.fixture
def lavinmq_node(lavinmq_broker: Broker) -> Iterator[LavinNode]:
    for node in _running(lavinmq_broker):
        assert isinstance(node, LavinNode)
        yield node


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
    return any(_is_ours(item, name) for name in _BROKER_FIXTURES)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test that uses ``broker`` (directly or through ``amqp_url``, ``node``, a proxy...)
    runs once per broker in :data:`BROKER_KINDS`, unless it is a test of one broker's own
    behaviour: ``rabbit_node`` (``rabbitmqctl``) pins it to RabbitMQ, ``lavinmq_node`` to
    LavinMQ.  A test may also parametrize ``broker`` itself (indirectly) to choose."""
    if not _ours(metafunc.fixturenames, metafunc._arg2fixturedefs, "broker"):
        return
    if _parametrizes(metafunc, "broker"):
        return
    names = metafunc.fixturenames
    pinned = [kind for kind, fixture in _PINNING if fixture in names]
    if len(pinned) > 1:
        raise pytest.UsageError(f"{metafunc.definition.nodeid} uses rabbit_node and lavinmq_node")
    metafunc.parametrize("broker", pinned or BROKER_KINDS, indirect=True, scope="session")


_PINNING = (("rabbitmq", "rabbit_node"), ("lavinmq", "lavinmq_node"))


def _parametrizes(metafunc: pytest.Metafunc, name: str) -> bool:
    """Whether the test's own ``parametrize`` marks name ``name``."""
    for mark in metafunc.definition.iter_markers("parametrize"):
        argnames = mark.args[0] if mark.args else mark.kwargs.get("argnames", ())
        if isinstance(argnames, str):
            argnames = [part.strip() for part in argnames.split(",")]
        if name in argnames:
            return True
    return False


def _is_ours(item: pytest.Item, name: str) -> bool:
    """Whether ``item`` uses the fixture ``name`` of this module (not a test module's own
    fixture of the same name, such as a fake ``broker``)."""
    info = getattr(item, "_fixtureinfo", None)
    return _ours(getattr(item, "fixturenames", ()), getattr(info, "name2fixturedefs", None), name)


def _ours(names: Sequence[str], defs: Mapping[str, Sequence[Any]] | None, name: str) -> bool:
    if name not in names:
        return False
    if defs is None:
        return True
    chain = defs.get(name) or ()
    return bool(chain) and getattr(chain[-1].func, "__module__", __name__) == __name__


def _runs_on_lavinmq(item: pytest.Item) -> bool:
    callspec = getattr(item, "callspec", None)
    if callspec is not None and callspec.params.get("broker") == "lavinmq":
        return True
    return _is_ours(item, "lavinmq_node") or _is_ours(item, "lavinmq_broker")


#: Set by pytest_collection_modifyitems when it deselected the LavinMQ runs.
_deselected_lavinmq: list[int] = []


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests that use the broker fixtures get the ``broker`` marker (so ``-m "not broker"``
    deselects them) even if they forgot it; those that use the cluster get ``cluster`` too,
    and the runs on LavinMQ get ``lavinmq``.  Without a LavinMQ binary, outside CI, the
    LavinMQ runs are deselected (in CI they stay, and fail)."""
    for item in items:
        if item.get_closest_marker("broker") is None and _uses_real_broker(item):
            item.add_marker(pytest.mark.broker)
        if item.get_closest_marker("cluster") is None and "rabbit_cluster" in getattr(
            item, "fixturenames", ()
        ):
            item.add_marker(pytest.mark.cluster)
        if item.get_closest_marker("lavinmq") is None and _runs_on_lavinmq(item):
            item.add_marker(pytest.mark.lavinmq)
    if find_lavinmq() is not None or os.environ.get("CI"):
        return
    deselected = [item for item in items if item.get_closest_marker("lavinmq") is not None]
    if deselected:
        items[:] = [item for item in items if item.get_closest_marker("lavinmq") is None]
        config.hook.pytest_deselected(items=deselected)
        _deselected_lavinmq.append(len(deselected))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _deselected_lavinmq:
        terminalreporter.write_line(
            f"{sum(_deselected_lavinmq)} LavinMQ test runs deselected (no LavinMQ binary): "
            f"to run them, {LAVINMQ_HINT}"
        )


def pytest_runtest_setup(item: pytest.Item) -> None:
    """A test marked ``broker`` must get its broker from these fixtures."""
    if item.get_closest_marker("broker") is not None and not _uses_real_broker(item):
        pytest.fail(
            f"{item.nodeid} is marked `broker` but uses none of the fixtures "
            f"{sorted(_BROKER_FIXTURES)} of tests/conftest.py: take the URL from `amqp_url` "
            "(or `broker`), not from a hard-coded address",
            pytrace=False,
        )
