"""A private, throwaway RabbitMQ node for tests, demos and benchmarks.

Uses Debian's ``rabbitmq-server`` package (``apt-get install rabbitmq-server``), but none of
its system-wide state: every :class:`RabbitNode` gets its own node name, ports, Erlang cookie,
data and log directories, config file and its own ``epmd`` (on a private port, loopback only),
all under a temporary directory that :meth:`RabbitNode.stop` removes.

Everything listens on 127.0.0.1 only.  The node, and its ``epmd``, are killed by the kernel
(``PR_SET_PDEATHSIG``) if the process that started them dies, so a crashed test run leaves no
broker behind.

Only the standard library is used, so this module also works outside the test environment::

    python -m trio_lavin.testing rabbitmq exec -- python app.py   # runs it with AMQP_URL set
    python -m trio_lavin.testing rabbitmq serve                   # prints AMQP_URL until ^C
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import glob
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Protocol, Self

__all__ = [
    "Broker",
    "BrokerError",
    "BrokerNode",
    "RabbitNode",
    "RabbitNotInstalled",
    "find_rabbitmq_sbin",
    "free_port",
    "main",
]

#: What to tell people who have no RabbitMQ.
INSTALL_HINT = (
    "RabbitMQ is not installed: run `apt-get install rabbitmq-server` (as root, on "
    "Debian/Ubuntu; `nox -s tests` does this for you), or set AMQP_URL to the URL of a "
    "running broker, e.g. AMQP_URL=amqp://guest:guest@127.0.0.1:5672/"
)

_AMQP_HEADER = b"AMQP\x00\x00\x09\x01"
_ANSI_SGR = re.compile(r"\x1b\[[0-9;]*m")
_PR_SET_PDEATHSIG = 1
_BASEDIR_PREFIX = "trio-lavin-rabbit-"


class BrokerError(RuntimeError):
    """The node did not start, stop or answer as expected."""


class RabbitNotInstalled(BrokerError):
    """No ``rabbitmq-server`` scripts were found on this machine."""


class BrokerNode(Protocol):
    """What every throwaway node of the harness can do (:class:`RabbitNode`, and
    ``LavinNode``): the tests that crash and restart a broker, or close its
    connections as an operator would, use only this, so they run on both brokers."""

    #: "rabbitmq" or "lavinmq".
    kind: str

    @property
    def url(self) -> str: ...

    @property
    def amqp_port(self) -> int: ...

    def is_running(self) -> bool: ...

    def start(self) -> None: ...

    def kill(self) -> None: ...

    def restart(self) -> None: ...

    def stop(self) -> None: ...

    def close_all_connections(self, reason: str = ...) -> int: ...

    def add_user(self, user: str, password: str) -> None: ...

    def delete_user(self, user: str) -> None: ...


@dataclass(frozen=True)
class Broker:
    """What the ``broker`` fixture gives: which broker, a URL and, if the harness started
    it, the node (None for the broker at ``AMQP_URL``)."""

    url: str
    node: BrokerNode | None = None
    #: "rabbitmq" or "lavinmq" (the ``broker`` fixture's parameter).
    kind: str = "rabbitmq"


def find_rabbitmq_sbin() -> Path | None:
    """The directory holding RabbitMQ's own ``rabbitmq-server``/``rabbitmqctl`` scripts.

    These are the package's real scripts, not the ``/usr/sbin`` wrappers (which switch to the
    ``rabbitmq`` user and its HOME, so the Erlang cookie would not match ours).
    """
    env_dir = os.environ.get("RABBITMQ_SBIN")
    candidates = [env_dir] if env_dir else []
    candidates += sorted(glob.glob("/usr/lib/rabbitmq/lib/rabbitmq_server-*/sbin"), reverse=True)
    candidates += ["/usr/lib/rabbitmq/bin"]
    for cand in candidates:
        path = Path(cand)
        if (path / "rabbitmq-server").is_file() and (path / "rabbitmqctl").is_file():
            return path
    return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _find_epmd() -> str:
    found = shutil.which("epmd")
    if found:
        return found
    for cand in sorted(glob.glob("/usr/lib/erlang/erts-*/bin/epmd"), reverse=True):
        return cand
    raise RabbitNotInstalled("epmd (Erlang) not found. " + INSTALL_HINT)


def _die_with_parent(parent_pid: int) -> Callable[[], None]:
    """A ``preexec_fn`` that makes the child get SIGKILL when its parent thread dies."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)

    def preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


# PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, not the process.  A
# node started from a short-lived thread (e.g. ``trio.to_thread.run_sync(node.restart)``; trio
# retires idle worker threads after a few seconds) would be killed under the tests' feet, so
# children are forked either by the main thread or by this one long-lived thread.
_spawner: ThreadPoolExecutor | None = None
_spawner_lock = threading.Lock()


def _spawn(argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    def spawn() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            argv,
            preexec_fn=_die_with_parent(os.getpid()),
            start_new_session=True,
            **kwargs,
        )

    if threading.current_thread() is threading.main_thread():
        return spawn()
    global _spawner
    with _spawner_lock:
        if _spawner is None:
            _spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rabbit-spawner")
        return _spawner.submit(spawn).result()


def _kill_group(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGKILL the process group led by ``proc`` and reap ``proc``."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        raise BrokerError(f"process {proc.pid} did not die within {timeout}s of SIGKILL") from None
    finally:
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"({path}: {exc})"
    return "\n".join(text.splitlines()[-lines:])


class StartedNode:
    """``with node:`` starts a node and stops it at the end (also when
    starting fails half-way).  Subclasses define ``start`` and ``stop``."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            self.start()
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


class RabbitNode(StartedNode):
    """One private RabbitMQ node on 127.0.0.1.

    ``plugins`` are enabled at boot (e.g. ``["rabbitmq_management"]``); ``config_lines`` are
    appended to the node's ``rabbitmq.conf`` (new-style sysctl format), e.g. to add a TLS
    listener::

        RabbitNode(config_lines=[f"listeners.ssl.default = 127.0.0.1:{port}",
                                 f"ssl_options.certfile = {cert}", ...])

    Use it as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    kind = "rabbitmq"

    def __init__(
        self,
        *,
        plugins: Sequence[str] = (),
        config_lines: Sequence[str] = (),
        start_timeout: float = 60.0,
        sbin: Path | None = None,
    ) -> None:
        found = sbin or find_rabbitmq_sbin()
        if found is None:
            raise RabbitNotInstalled(INSTALL_HINT)
        self.sbin: Path = found
        self._epmd_bin = _find_epmd()
        self.plugins = tuple(plugins)
        self.config_lines = tuple(config_lines)
        self.start_timeout = start_timeout
        self.nodename = f"trio-lavin-{secrets.token_hex(4)}@localhost"
        self.amqp_port = free_port()
        self.dist_port = free_port()
        self.epmd_port = free_port()
        self.basedir: Path | None = None
        self._server: subprocess.Popen[bytes] | None = None
        self._epmd: subprocess.Popen[bytes] | None = None
        self._env: dict[str, str] = {}

    # -- public API -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.amqp_port}/"

    @property
    def log_file(self) -> Path:
        """The node's main log file (exists once the node has started)."""
        return self._dir("log") / f"{self.nodename}.log"

    def is_running(self) -> bool:
        """Whether the node's OS process is alive (not whether it accepts connections)."""
        return self._server is not None and self._server.poll() is None

    def start(self) -> None:
        """Start the node (again) and wait until it answers AMQP on :attr:`amqp_port`."""
        if self.is_running():
            raise BrokerError(f"{self.nodename} is already running")
        if self.basedir is None:
            self._prepare()
        self._start_epmd()
        self._reap_server()
        out_path = self._dir("log") / "server.out"
        with out_path.open("ab") as out:
            self._server = _spawn(
                [str(self.sbin / "rabbitmq-server")],
                env=self._env,
                cwd=self.basedir,
                # With RABBITMQ_ALLOW_INPUT the script execs the VM instead of running it as a
                # background job, so this process *is* beam.smp.  stdin stays open until stop.
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self._wait_ready()

    def stop(self) -> None:
        """Kill the node and its epmd, and remove all of its files.  Idempotent."""
        try:
            self.kill()
        finally:
            try:
                if self._epmd is not None:
                    _kill_group(self._epmd, timeout=10)
                    self._epmd = None
            finally:
                if self.basedir is not None:
                    shutil.rmtree(self.basedir, ignore_errors=True)
                    self.basedir = None

    def kill(self) -> None:
        """SIGKILL the node (a crash, no clean shutdown); keep its data for :meth:`restart`."""
        self._reap_server()

    def restart(self) -> None:
        """Kill the node if it runs, then start it again on the same ports and data.

        Durable queues, and persistent messages that were confirmed, survive.
        """
        self.kill()
        self.start()

    def rabbitmqctl(self, *args: str, timeout: float = 60.0) -> str:
        """Run ``rabbitmqctl ARGS`` against this node; returns stdout, raises on failure.

        Colour codes (rabbitmqctl emits them even when not on a terminal) are removed.
        """
        if self.basedir is None:
            raise BrokerError(f"{self.nodename} has not been started")
        try:
            res = subprocess.run(
                [str(self.sbin / "rabbitmqctl"), *args],
                env=self._env,
                cwd=self.basedir,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise BrokerError(f"rabbitmqctl {' '.join(args)}: timed out after {timeout}s") from exc
        stdout = _ANSI_SGR.sub("", res.stdout.decode(errors="replace"))
        if res.returncode != 0:
            stderr = res.stderr.decode(errors="replace")
            raise BrokerError(
                f"rabbitmqctl {' '.join(args)} exited {res.returncode}:\n{stdout}{stderr}"
            )
        return stdout

    def list_connection_pids(self) -> list[str]:
        """The Erlang pids (``<rabbit@host.1.2.3>``) of the node's client connections."""
        out = self.rabbitmqctl("list_connections", "pid", "-q", "--no-table-headers")
        return [line.strip() for line in out.splitlines() if line.strip()]

    def close_all_connections(self, reason: str = "closed by test") -> int:
        """Close every client connection; each gets Connection.Close 320 (CONNECTION_FORCED).

        Returns how many connections were closed.
        """
        pids = self.list_connection_pids()
        for pid in pids:
            self.rabbitmqctl("close_connection", pid, reason)
        return len(pids)

    def add_user(self, user: str, password: str) -> None:
        """Add a user with every permission on the vhost ``/``."""
        self.rabbitmqctl("add_user", user, password)
        self.rabbitmqctl("set_permissions", "-p", "/", user, ".*", ".*", ".*")

    def delete_user(self, user: str) -> None:
        self.rabbitmqctl("delete_user", user)

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"<RabbitNode {self.nodename} {self.url} {state}>"

    # -- internals --------------------------------------------------------------------------

    def _dir(self, name: str) -> Path:
        if self.basedir is None:
            raise BrokerError(f"{self.nodename} has not been started")
        return self.basedir / name

    def _prepare(self) -> None:
        _remove_stale_basedirs()
        base = Path(tempfile.mkdtemp(prefix=_BASEDIR_PREFIX))
        self.basedir = base
        (base / "owner.pid").write_text(str(os.getpid()))
        home, mnesia, log = base / "home", base / "mnesia", base / "log"
        for d in (home, mnesia, log):
            d.mkdir()
        cookie = home / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(20).upper())
        cookie.chmod(0o400)
        plugins_file = base / "enabled_plugins"
        plugins_file.write_text(f"[{','.join(self.plugins)}].\n")
        (base / "rabbitmq-env.conf").write_text("")
        conf_lines = [
            "log.file.level = info",
            "log.console = false",
            *self.config_lines,
        ]
        (base / "rabbitmq.conf").write_text("\n".join(conf_lines) + "\n")
        loopback_dist = "-kernel inet_dist_use_interface {127,0,0,1} -start_epmd false"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update(
            HOME=str(home),
            ERL_EPMD_ADDRESS="127.0.0.1",
            ERL_EPMD_PORT=str(self.epmd_port),
            RABBITMQ_NODENAME=self.nodename,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.amqp_port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=str(mnesia),
            RABBITMQ_LOG_BASE=str(log),
            RABBITMQ_PID_FILE=str(base / "rabbit.pid"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(plugins_file),
            RABBITMQ_CONFIG_FILE=str(base / "rabbitmq"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(base / "advanced.config"),
            RABBITMQ_CONF_ENV_FILE=str(base / "rabbitmq-env.conf"),
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=loopback_dist,
            RABBITMQ_CTL_ERL_ARGS=loopback_dist,
            RABBITMQ_ALLOW_INPUT="true",
        )
        self._env = env

    def _start_epmd(self) -> None:
        if self._epmd is not None and self._epmd.poll() is None:
            return
        if self._epmd is not None:
            _kill_group(self._epmd, timeout=10)
        self._epmd = _spawn(
            [self._epmd_bin, "-port", str(self.epmd_port), "-address", "127.0.0.1"],
            env=self._env,
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

    def _reap_server(self) -> None:
        if self._server is not None:
            _kill_group(self._server, timeout=30)
            self._server = None

    def _wait_ready(self) -> None:
        assert self._server is not None
        deadline = time.monotonic() + self.start_timeout
        while True:
            if _answers_amqp(self.amqp_port):
                return
            status = self._server.poll()
            if status is not None or time.monotonic() > deadline:
                why = (
                    f"exited with status {status}"
                    if status is not None
                    else f"did not answer AMQP within {self.start_timeout}s"
                )
                with contextlib.suppress(BrokerError):
                    self.kill()
                raise BrokerError(
                    f"RabbitMQ node {self.nodename} on 127.0.0.1:{self.amqp_port} {why}.\n"
                    f"--- {self.log_file} (tail) ---\n{_tail(self.log_file)}\n"
                    f"--- server output (tail) ---\n{_tail(self._dir('log') / 'server.out')}"
                )
            time.sleep(0.1)


def _remove_stale_basedirs(prefix: str = _BASEDIR_PREFIX) -> None:
    """Remove the files of nodes whose owner was killed before it could clean up."""
    for path in Path(tempfile.gettempdir()).glob(prefix + "*"):
        try:
            owner = int((path / "owner.pid").read_text())
            os.kill(owner, 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except (OSError, ValueError):  # not ours, being created, or owner alive but not ours
            pass


def _can_connect(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _answers_amqp(port: int) -> bool:
    """Whether a broker on ``port`` answers the protocol header with Connection.Start (a
    method frame on channel 0 with class 10, method 10)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(_AMQP_HEADER)
            data = b""
            # type (1) + channel (2) + size (4) + class id (2) + method id (2); at most
            # 11 reads, each bounded by the socket's timeout.
            for _ in range(11):
                if len(data) >= 11:
                    break
                chunk = sock.recv(11 - len(data))
                if not chunk:
                    break
                data += chunk
    except OSError:
        return False
    return data[:3] == b"\x01\x00\x00" and data[7:11] == b"\x00\x0a\x00\x0a"


# -- command line -----------------------------------------------------------------------------


@contextlib.contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _log(msg: str, stream: IO[str] = sys.stderr) -> None:
    print(f"[trio_lavin.testing] {msg}", file=stream, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m trio_lavin.testing rabbitmq", description="Run a throwaway RabbitMQ node."
    )
    parser.add_argument("--plugin", action="append", default=[], help="enable a plugin")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_exec = sub.add_parser(
        "exec", help="start a node, run COMMAND with AMQP_URL set, stop the node"
    )
    p_exec.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    sub.add_parser("serve", help="start a node, print its AMQP_URL, run until interrupted")
    args = parser.parse_args(argv)

    command: list[str] = list(getattr(args, "command", []) or [])
    if command[:1] == ["--"]:
        command = command[1:]
    if args.cmd == "exec" and not command:
        parser.error("exec needs a command: python -m trio_lavin.testing rabbitmq exec -- COMMAND")

    with _sigterm_as_exit():
        try:
            node = RabbitNode(plugins=args.plugin)
        except RabbitNotInstalled as exc:
            _log(str(exc))
            return 2
        t0 = time.monotonic()
        with node:
            _log(f"node {node.nodename} up in {time.monotonic() - t0:.1f}s at {node.url}")
            if args.cmd == "serve":
                print(f"AMQP_URL={node.url}", flush=True)
                try:
                    while node.is_running():
                        time.sleep(0.5)
                except KeyboardInterrupt:
                    return 0
                _log("node died")
                return 1
            env = dict(os.environ, AMQP_URL=node.url)
            with subprocess.Popen(command, env=env) as child:
                try:
                    return child.wait()
                except BaseException:
                    child.terminate()
                    try:
                        child.wait(10)
                    except subprocess.TimeoutExpired:
                        child.kill()
                    raise


if __name__ == "__main__":
    sys.exit(main())
