"""A private, throwaway 3-node RabbitMQ cluster on 127.0.0.1 for tests.

Three :class:`RabbitNode` nodes that share one Erlang cookie and one private
``epmd`` (the nodes find each other through it), joined with ``rabbitmqctl join_cluster``.
Every port is chosen free, including the range the ``rabbitmqctl`` CLI listens on (RabbitMQ's
default, 35672-35682, is shared by every broker on the machine), so the cluster coexists with
other throwaway nodes.

:meth:`RabbitCluster.boot` starts the cluster; ``kill(i)`` is a SIGKILL of node ``i``'s
process group (a crash: no clean shutdown); ``start(i)`` boots it again with the same name,
ports and data, and it rejoins the cluster by itself.  Every wait has a deadline; a failure
raises :class:`BrokerError` with the tails of the nodes' logs.

Only the standard library is used::

    python -m trio_lavin.testing cluster   # starts a cluster, prints the URLs, waits for ^C
"""

from __future__ import annotations

import contextlib
import json
import random
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType

from ._rabbitmq import (
    BrokerError,
    RabbitNode,
    _can_connect,
    _find_epmd,
    _kill_group,
    _sigterm_as_exit,
    _spawn,
    _tail,
    free_port,
)

__all__ = ["ClusterNode", "RabbitCluster"]

#: Ports the CLI may use: RabbitMQ takes MIN..MIN+10.
_CLI_PORTS = 11


def _free_port_range(count: int, tries: int = 200) -> int:
    """The first of ``count`` consecutive TCP ports on 127.0.0.1 that were free a moment ago."""
    rng = random.Random()
    for _ in range(tries):
        base = rng.randrange(20_000, 32_000)  # below Linux's ephemeral range (32768-60999)
        socks: list[socket.socket] = []
        try:
            for port in range(base, base + count):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
        return base
    raise BrokerError(f"found no {count} consecutive free ports on 127.0.0.1")


class ClusterNode(RabbitNode):
    """A :class:`RabbitNode` that uses the cluster's cookie and ``epmd`` instead of its own."""

    def __init__(self, cluster: RabbitCluster, index: int) -> None:
        super().__init__(start_timeout=cluster.start_timeout)
        self.cluster = cluster
        self.index = index
        self.epmd_port = cluster.epmd_port

    def _prepare(self) -> None:
        super()._prepare()
        assert self.basedir is not None
        cookie = self.basedir / "home" / ".erlang.cookie"
        cookie.unlink()
        cookie.write_text(self.cluster.cookie)
        cookie.chmod(0o400)
        self._env.update(
            RABBITMQ_CTL_DIST_PORT_MIN=str(self.cluster.cli_port_min),
            RABBITMQ_CTL_DIST_PORT_MAX=str(self.cluster.cli_port_min + _CLI_PORTS - 1),
        )

    def _start_epmd(self) -> None:
        self.cluster.ensure_epmd()


class RabbitCluster:
    """Three private RabbitMQ nodes joined into one cluster (see the module doc).

    Use it as a context manager, or call :meth:`boot` and :meth:`stop`.
    """

    def __init__(self, size: int = 3, *, start_timeout: float = 90.0) -> None:
        if size < 2:
            raise ValueError(f"a cluster needs at least 2 nodes, not {size!r}")
        self.start_timeout = start_timeout
        self.cookie = secrets.token_hex(20).upper()
        self.epmd_port = free_port()
        self.cli_port_min = _free_port_range(_CLI_PORTS)
        self._epmd: subprocess.Popen[bytes] | None = None
        self._epmd_lock = threading.Lock()
        self.nodes = [ClusterNode(self, i) for i in range(size)]
        #: Seconds the last :meth:`boot` took: booting the nodes, then joining them.
        self.boot_seconds = 0.0
        self.join_seconds = 0.0

    # -- public API -------------------------------------------------------------------------

    @property
    def urls(self) -> list[str]:
        """Each node's AMQP URL, in node order."""
        return [node.url for node in self.nodes]

    def url(self, index: int) -> str:
        return self.nodes[index].url

    def boot(self) -> None:
        """Boot every node in parallel, then join nodes 1.. to node 0.  Raises BrokerError
        (with the nodes' log tails) if that does not work within the deadlines."""
        t0 = time.monotonic()
        self.ensure_epmd()
        self._in_parallel([node.start for node in self.nodes], "starting the nodes")
        t1 = time.monotonic()
        self.boot_seconds = t1 - t0
        # The other nodes join node 0 one after the other: two joining at once can fail
        # (seen: start_app exiting 69 with node_not_running, twice in a row), which costs
        # a whole CI run; a node whose join fails resets and tries again.
        try:
            for node in self.nodes[1:]:
                self._join(node)
        except BrokerError as exc:
            raise self.error(f"joining the cluster failed: {exc}") from exc
        self.join_seconds = time.monotonic() - t1

    def stop(self) -> None:
        """Kill every node and the epmd, and remove all files.  Idempotent."""
        try:
            for node in self.nodes:
                node.stop()
        finally:
            if self._epmd is not None:
                _kill_group(self._epmd, timeout=10)
                self._epmd = None

    def kill(self, index: int) -> None:
        """SIGKILL node ``index``'s process group (a crash); its data stays for :meth:`start`."""
        self.nodes[index].kill()

    def start(self, index: int) -> None:
        """Boot node ``index`` again (same name, ports and data).  Returns once it answers
        AMQP, which it does only after it rejoined the cluster."""
        self.nodes[index].start()

    def is_running(self, index: int) -> bool:
        return self.nodes[index].is_running()

    def running_nodes(self, via: int | None = None) -> list[str]:
        """The node names ``cluster_status`` reports as running, asked of node ``via`` (by
        default the first one whose process is alive)."""
        node = self._live_node(via)
        out = node.rabbitmqctl("cluster_status", "--formatter", "json", timeout=30)
        status = json.loads(out[out.index("{") :])
        running: list[str] = status["running_nodes"]
        return running

    def wait_running(self, indexes: Sequence[int], timeout: float) -> None:
        """Wait until every node in ``indexes`` is listed as running by the cluster."""
        wanted = {self.nodes[i].nodename for i in indexes}
        deadline = time.monotonic() + timeout
        last: object = None
        while True:
            try:
                running = set(self.running_nodes(via=indexes[0]))
                if wanted <= running:
                    return
                last = sorted(running)
            except (BrokerError, ValueError, KeyError) as exc:
                last = exc
            if time.monotonic() > deadline:
                raise self.error(
                    f"nodes {sorted(wanted)} not all running after {timeout}s (last: {last})"
                )
            time.sleep(0.2)

    def queue_leader(self, queue: str, vhost: str = "/") -> int | None:
        """The index of the node that leads quorum queue ``queue`` (None while it has no
        leader: during an election, when the queue may not even be listed)."""
        node = self._live_node(None)
        out = node.rabbitmqctl(
            "list_queues", "-p", vhost, "name", "leader", "--formatter", "json", timeout=30
        )
        for row in json.loads(out[out.index("[") :]):
            if row["name"] == queue:
                leader = row.get("leader")
                for candidate in self.nodes:
                    if candidate.nodename == leader:
                        return candidate.index
                if leader in (None, "", "undefined"):
                    return None
                raise BrokerError(f"queue {queue!r} is led by {leader!r}, not one of ours")
        # Right after its leader died, list_queues may leave the queue out altogether.
        return None

    def close_all_connections(self, reason: str = "closed by test") -> None:
        """Close every client connection in the cluster (Connection.Close 320)."""
        self._live_node(None).rabbitmqctl("close_all_connections", reason, timeout=30)

    def node_of_port(self, port: int) -> int:
        """The index of the node whose AMQP port is ``port``."""
        for node in self.nodes:
            if node.amqp_port == port:
                return node.index
        raise ValueError(f"no node of this cluster listens on port {port!r}")

    def error(self, message: str) -> BrokerError:
        """A BrokerError carrying ``message`` and the tail of every node's log."""
        parts = [message]
        for node in self.nodes:
            if node.basedir is None:
                continue
            parts.append(f"--- node {node.index} {node.nodename} log (tail) ---")
            parts.append(_tail(node.log_file, 25))
            parts.append(f"--- node {node.index} server output (tail) ---")
            parts.append(_tail(Path(node.basedir) / "log" / "server.out", 10))
        return BrokerError("\n".join(parts))

    def __enter__(self) -> RabbitCluster:
        try:
            self.boot()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        states = ", ".join(
            f"{n.index}:{n.amqp_port}:{'up' if n.is_running() else 'down'}" for n in self.nodes
        )
        return f"<RabbitCluster {states}>"

    # -- internals --------------------------------------------------------------------------

    def _live_node(self, via: int | None) -> ClusterNode:
        if via is not None:
            return self.nodes[via]
        for node in self.nodes:
            if node.is_running():
                return node
        raise BrokerError("no node of the cluster is running")

    def _join(self, node: ClusterNode) -> None:
        attempts = 3
        for attempt in range(1, attempts + 1):
            try:
                node.rabbitmqctl("stop_app", timeout=60)
                if attempt > 1:
                    node.rabbitmqctl("reset", timeout=60)  # forget a half-done join
                node.rabbitmqctl("join_cluster", self.nodes[0].nodename, timeout=60)
                node.rabbitmqctl("start_app", timeout=60)
                return
            except BrokerError as exc:
                if attempt == attempts:
                    raise BrokerError(f"node {node.index} could not join node 0: {exc}") from exc
                time.sleep(1)

    def ensure_epmd(self) -> None:
        """Start the cluster's own epmd (Erlang's port mapper, on a private
        port), or start it again if it died; the nodes call it as they start."""
        with self._epmd_lock:
            if self._epmd is not None and self._epmd.poll() is None:
                return
            if self._epmd is not None:
                _kill_group(self._epmd, timeout=10)
            self._epmd = _spawn(
                [_find_epmd(), "-port", str(self.epmd_port), "-address", "127.0.0.1"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            deadline = time.monotonic() + 10
            while not _can_connect(self.epmd_port):
                if self._epmd.poll() is not None or time.monotonic() > deadline:
                    raise BrokerError(
                        f"epmd on 127.0.0.1:{self.epmd_port} did not start "
                        f"(exit status {self._epmd.poll()})"
                    )
                time.sleep(0.02)

    def _in_parallel(self, calls: Sequence[Callable[[], object]], what: str) -> None:
        """Run ``calls`` in threads (``what`` they do, for errors); re-raise the first
        failure with every node's log."""
        errors: list[BaseException] = []

        def run(i: int) -> None:
            try:
                calls[i]()
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(calls))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(self.start_timeout + 30)
        if any(thread.is_alive() for thread in threads):
            raise self.error(f"{what} took longer than {self.start_timeout + 30}s")
        if errors:
            raise self.error(f"{what} failed: {errors[0]}") from errors[0]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m trio_lavin.testing cluster [--size N]``: boot a cluster, print
    its URLs, run until interrupted (or a node dies)."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m trio_lavin.testing cluster",
        description="Boot a throwaway RabbitMQ cluster on free loopback ports in a "
        "temp dir, print each node's AMQP URL, and run until interrupted (^C) or a "
        "node stops; everything is removed afterwards.",
    )
    parser.add_argument(
        "--size", type=int, default=3, help="nodes in the cluster, at least 2 (default 3)"
    )
    args = parser.parse_args(argv)
    if args.size < 2:
        parser.error(f"--size must be at least 2, not {args.size}")
    with _sigterm_as_exit(), contextlib.suppress(KeyboardInterrupt):
        t0 = time.monotonic()
        with RabbitCluster(args.size) as cluster:
            print(
                f"cluster up in {time.monotonic() - t0:.1f}s (boot {cluster.boot_seconds:.1f}s, "
                f"join {cluster.join_seconds:.1f}s)",
                flush=True,
            )
            for url in cluster.urls:
                print(url, flush=True)
            while all(node.is_running() for node in cluster.nodes):
                time.sleep(0.5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
