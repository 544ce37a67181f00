"""A private, throwaway LavinMQ node for tests, beside the RabbitMQ one of ``_rabbitmq.py``.

The binary is :envvar:`LAVINMQ` (a path), else ``lavinmq`` on ``PATH``. Every
:class:`LavinNode` gets two free ports on 127.0.0.1 (AMQP, and HTTP: the management API and
AMQP over WebSocket), its own data directory and an empty config file (``-c``), so it reads
nothing system-wide, all under a temporary directory that :meth:`LavinNode.stop` removes.
TLS listeners are off, and ``guest`` may only log in from loopback.

The node is killed by the kernel (``PR_SET_PDEATHSIG``) if the process that started it dies,
so a crashed test run leaves no broker behind.

LavinMQ always binds the control socket ``/tmp/lavinmqctl.sock`` (hard-coded; a second
LavinMQ takes it over and removes it when it stops), so run one node at a time: the test
suite starts one per session.  Nothing here uses that socket (``lavinmqctl``); the HTTP API
does what the tests need.

Only the standard library is used::

    python -m trio_lavin.testing lavinmq serve   # prints AMQP_URL (and the HTTP URL) until ^C
    python -m trio_lavin.testing lavinmq exec -- python my_benchmark.py   # with AMQP_URL set
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._rabbitmq import (
    BrokerError,
    StartedNode,
    _answers_amqp,
    _kill_group,
    _log,
    _remove_stale_basedirs,
    _sigterm_as_exit,
    _spawn,
    _tail,
    free_port,
)

__all__ = [
    "LAVINMQ_HINT",
    "LavinNode",
    "LavinNotFound",
    "find_lavinmq",
]


#: What to tell people who have no LavinMQ.
LAVINMQ_HINT = (
    "set LAVINMQ=/path/to/lavinmq (a LavinMQ binary: https://lavinmq.com/download) or put "
    "`lavinmq` on PATH"
)

_BASEDIR_PREFIX = "trio-lavin-lavinmq-"

#: How long a SIGTERM may take before :meth:`LavinNode.stop` uses SIGKILL (it takes well
#: under a second here).
STOP_TIMEOUT = 10.0


class LavinNotFound(BrokerError):
    """No LavinMQ binary was found (or ``LAVINMQ`` names a file that is not one)."""


def find_lavinmq() -> Path | None:
    """The LavinMQ binary to use, or None if there is none.

    ``LAVINMQ`` wins when set, even if it names nothing: :class:`LavinNode` then fails with
    that path in the message rather than silently using another binary.
    """
    env = os.environ.get("LAVINMQ")
    if env:
        return Path(env)
    on_path = shutil.which("lavinmq")
    if on_path:
        return Path(on_path)
    return None


class LavinNode(StartedNode):
    """One private LavinMQ node on 127.0.0.1.

    :meth:`start` starts it (again, on the same ports and data, after :meth:`kill`),
    :meth:`kill` is a SIGKILL (a crash: durable queues and confirmed persistent messages
    survive it), :meth:`stop` shuts it down and removes its files.  Use it as a context
    manager, or call :meth:`start` and :meth:`stop`.
    """

    kind = "lavinmq"

    def __init__(
        self,
        *,
        binary: Path | None = None,
        start_timeout: float = 30.0,
        config: str = "",
        disk_mib: int | None = None,
    ) -> None:
        """``config``: the ini file's text (empty: LavinMQ's defaults).  ``disk_mib``: the
        data directory is a tmpfs of that many MiB (root only), so that the node can be
        made low on disk (below 2 x ``segment_size``, 16 MiB by default) and given room
        again with :meth:`resize_disk`."""
        found = binary or find_lavinmq()
        if found is None:
            raise LavinNotFound(f"no LavinMQ binary found: {LAVINMQ_HINT}")
        if not (found.is_file() and os.access(found, os.X_OK)):
            raise LavinNotFound(f"{found} is not an executable file: {LAVINMQ_HINT}")
        self.binary: Path = found
        self.start_timeout = start_timeout
        self.config = config
        self.disk_mib = disk_mib
        if disk_mib is not None and os.geteuid() != 0:
            raise BrokerError("a LavinMQ data directory of limited size (a tmpfs) needs root")
        self.amqp_port = free_port()
        self.http_port = free_port()
        self.basedir: Path | None = None
        self._server: subprocess.Popen[bytes] | None = None

    # -- public API -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.amqp_port}/"

    @property
    def ws_url(self) -> str:
        """AMQP over WebSocket on the node's HTTP port (LavinMQ's own endpoint)."""
        return f"ws://guest:guest@127.0.0.1:{self.http_port}/"

    @property
    def http_url(self) -> str:
        """The management API's root (``GET /api/overview`` with basic auth)."""
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def log_file(self) -> Path:
        """Everything the node printed (kept across restarts until :meth:`stop`)."""
        return self._dir("lavinmq.out")

    @property
    def data_dir(self) -> Path:
        return self._dir("data")

    def is_running(self) -> bool:
        """Whether the node's OS process is alive (not whether it accepts connections)."""
        return self._server is not None and self._server.poll() is None

    def start(self) -> None:
        """Start the node (again) and wait until it answers AMQP on :attr:`amqp_port`."""
        if self.is_running():
            raise BrokerError(f"LavinMQ on 127.0.0.1:{self.amqp_port} is already running")
        if self.basedir is None:
            self._prepare()
        self._reap_server()
        argv = [
            str(self.binary),
            "-c",
            str(self._dir("lavinmq.ini")),
            "-D",
            str(self.data_dir),
            "--amqp-bind=127.0.0.1",
            f"--amqp-port={self.amqp_port}",
            "--http-bind=127.0.0.1",
            f"--http-port={self.http_port}",
            "--amqps-port=-1",
            "--https-port=-1",
            "--guest-only-loopback=true",
        ]
        with self.log_file.open("ab") as out:
            self._server = _spawn(
                argv,
                cwd=self.basedir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self._wait_ready()

    def kill(self) -> None:
        """SIGKILL the node (a crash, no clean shutdown); keep its data for :meth:`start`."""
        self._reap_server()

    def restart(self) -> None:
        """Kill the node if it runs, then start it again on the same ports and data."""
        self.kill()
        self.start()

    def stop(self) -> None:
        """Shut the node down (SIGTERM, so it removes its control socket; SIGKILL if that
        takes longer than :data:`STOP_TIMEOUT`) and remove all of its files.  Idempotent."""
        try:
            if self._server is not None and self._server.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    self._server.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._server.wait(STOP_TIMEOUT)
            self._reap_server()
        finally:
            if self.basedir is not None:
                if self.disk_mib is not None:
                    subprocess.run(["umount", "-l", str(self.data_dir)], check=False)
                shutil.rmtree(self.basedir, ignore_errors=True)
                self.basedir = None

    def resize_disk(self, mib: int) -> None:
        """Give the tmpfs data directory (``disk_mib``) a new size, e.g. room again."""
        if self.disk_mib is None:
            raise BrokerError("resize_disk needs a node started with disk_mib")
        subprocess.run(
            ["mount", "-o", f"remount,size={mib}m", str(self.data_dir)], check=True, timeout=30
        )
        self.disk_mib = mib

    def api(
        self, method: str, path: str, body: object = None, *, reason: str | None = None
    ) -> Any:
        """One request to the management API as guest, with ``body`` as JSON; the decoded
        JSON answer (None if empty).  ``reason`` goes in the ``X-Reason`` header (e.g. for
        closing a connection)."""
        auth = base64.b64encode(b"guest:guest").decode()
        headers = {"Authorization": f"Basic {auth}"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(
            self.http_url + path, data=data, method=method, headers=headers
        )
        if reason is not None:
            request.add_header("X-Reason", reason)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                text = response.read().decode()
        except urllib.error.HTTPError as exc:
            raise BrokerError(
                f"LavinMQ API {method} {path}: HTTP {exc.code} {exc.read()[:200]!r}"
            ) from None
        except OSError as exc:
            raise BrokerError(f"LavinMQ API {method} {path}: {exc}") from None
        return json.loads(text) if text.strip() else None

    def list_connection_names(self) -> list[str]:
        """The names (``client address -> server address``) of the node's open connections."""
        return [str(conn["name"]) for conn in self.api("GET", "/api/connections")]

    def close_all_connections(self, reason: str = "closed by test") -> int:
        """Close every client connection; each gets Connection.Close 320 (CONNECTION_FORCED,
        the text is ``CONNECTION_FORCED - <reason>``), as with ``rabbitmqctl close_connection``.

        Returns how many connections were closed.
        """
        names = self.list_connection_names()
        for name in names:
            quoted = urllib.parse.quote(name, safe="")
            self.api("DELETE", f"/api/connections/{quoted}", reason=reason)
        return len(names)

    def add_user(self, user: str, password: str) -> None:
        """Add a user with every permission on the vhost ``/``."""
        name = urllib.parse.quote(user, safe="")
        self.api("PUT", f"/api/users/{name}", {"password": password, "tags": ""})
        permissions = {"configure": ".*", "write": ".*", "read": ".*"}
        self.api("PUT", f"/api/permissions/%2F/{name}", permissions)

    def delete_user(self, user: str) -> None:
        self.api("DELETE", f"/api/users/{urllib.parse.quote(user, safe='')}")

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"<LavinNode {self.url} http={self.http_port} {state}>"

    # -- internals --------------------------------------------------------------------------

    def _dir(self, name: str) -> Path:
        if self.basedir is None:
            raise BrokerError(f"LavinMQ on 127.0.0.1:{self.amqp_port} has not been started")
        return self.basedir / name

    def _prepare(self) -> None:
        _remove_stale_basedirs(_BASEDIR_PREFIX)
        base = Path(tempfile.mkdtemp(prefix=_BASEDIR_PREFIX))
        self.basedir = base
        (base / "owner.pid").write_text(str(os.getpid()))
        (base / "data").mkdir()
        if self.disk_mib is not None:
            subprocess.run(
                [
                    "mount",
                    "-t",
                    "tmpfs",
                    "-o",
                    f"size={self.disk_mib}m",
                    "tmpfs",
                    str(base / "data"),
                ],
                check=True,
                timeout=30,
            )
        # Our own config file (by default empty): without -c, LavinMQ reads
        # /etc/lavinmq/lavinmq.ini.
        (base / "lavinmq.ini").write_text(self.config)

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
                    f"LavinMQ ({self.binary}) on 127.0.0.1:{self.amqp_port} {why} (its "
                    "runtime libraries: apt-get install libgc1 libpcre3 libevent-2.1-7 "
                    "libevent-pthreads-2.1-7).\n"
                    f"--- {self.log_file} (tail) ---\n{_tail(self.log_file)}"
                )
            time.sleep(0.05)


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m trio_lavin.testing lavinmq", description="Run a throwaway LavinMQ node."
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_exec = sub.add_parser(
        "exec",
        help="start a node, run COMMAND with AMQP_URL (and LAVINMQ_HTTP) set, stop the node",
    )
    p_exec.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    sub.add_parser("serve", help="start a node, print its AMQP_URL, run until interrupted")
    args = parser.parse_args(argv)

    command: list[str] = list(getattr(args, "command", []) or [])
    if command[:1] == ["--"]:
        command = command[1:]
    if args.cmd == "exec" and not command:
        parser.error("exec needs a command: python -m trio_lavin.testing lavinmq exec -- COMMAND")

    with _sigterm_as_exit():
        try:
            node = LavinNode()
        except LavinNotFound as exc:
            _log(str(exc))
            return 2
        t0 = time.monotonic()
        with node:
            _log(f"LavinMQ up in {time.monotonic() - t0:.1f}s at {node.url} ({node.binary})")
            if args.cmd == "exec":
                env = dict(os.environ, AMQP_URL=node.url, LAVINMQ_HTTP=node.http_url)
                return _run_command(command, env)
            print(f"AMQP_URL={node.url}", flush=True)
            print(f"LAVINMQ_HTTP={node.http_url}", flush=True)
            try:
                while node.is_running():
                    time.sleep(0.5)
            except KeyboardInterrupt:
                return 0
            _log("node died")
            return 1


def _run_command(command: list[str], env: dict[str, str]) -> int:
    """Run ``command`` to its end (as the RabbitMQ ``exec`` does); its exit status."""
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
