"""A ``websockify`` bridge for tests: AMQP over WebSocket in front of the test broker.

RabbitMQ has no AMQP-over-WebSocket listener; LavinMQ has one on its HTTP port.
``websockify`` (PyPI) turns WebSocket binary messages into a TCP byte stream and back,
which is exactly what LavinMQ does in front of its AMQP engine, so the WebSocket transport
is tested against the real broker through it::

    bridge = Websockify("amqp://guest:guest@127.0.0.1:5672/")
    bridge.start()      # ws://127.0.0.1:<free port>/ -> 127.0.0.1:5672
    bridge.url          # "ws://guest:guest@127.0.0.1:<port>/"
    bridge.restart()    # kill it (every bridged connection drops) and start it again
    bridge.stop()       # idempotent

websockify 0.13.0 needs two workarounds, both in :data:`_LAUNCHER`:

* it answers HTTP 400 to a client that offers a subprotocol other than ``binary`` (ours
  offers ``amqp``, as LavinMQ wants): a subclass of its socket class accepts ``amqp``;
* its ``--libserver`` mode crashes, so the default mode is used; it forks one child per
  connection, so it runs in its own session and :meth:`Websockify.stop` kills the whole
  process group.  It is also killed by the kernel if the process that started it dies.

Only the standard library and websockify (in the child) are used.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit

from trio_lavin import parse_url
from trio_lavin.testing._rabbitmq import BrokerError, _kill_group, _spawn, _tail, free_port

__all__ = ["Websockify", "WebsockifyError"]

#: Runs websockify with a request handler that accepts the ``amqp`` subprotocol.
_LAUNCHER = """\
import sys
from websockify import websocketproxy, websockifyserver

class AmqpWebSocket(websockifyserver.CompatibleWebSocket):
    def select_subprotocol(self, protocols):
        for protocol in protocols:
            if protocol.strip() == "amqp":
                return protocol
        return super().select_subprotocol(protocols)

websocketproxy.ProxyRequestHandler.SocketClass = AmqpWebSocket
sys.argv[0] = "websockify"
websocketproxy.websockify_init()
"""

#: How long websockify may take to listen (it starts in well under a second).
START_TIMEOUT = 15.0


class WebsockifyError(BrokerError):
    """websockify is missing, did not start, or did not stop."""


class Websockify:
    """One websockify process bridging ``ws://127.0.0.1:<port>/`` to the AMQP endpoint of
    ``amqp_url``; with ``certfile`` (a PEM with the key, or with ``keyfile``) it serves
    ``wss://`` only.

    :attr:`url` is ``amqp_url`` (its credentials, vhost and options) with the WebSocket
    scheme, host and port.  The port stays the same across :meth:`restart`.
    """

    def __init__(
        self, amqp_url: str, *, certfile: str | None = None, keyfile: str | None = None
    ) -> None:
        self.target = parse_url(amqp_url)
        self.certfile = certfile
        self.keyfile = keyfile
        self.port = free_port()
        self._proc: subprocess.Popen[bytes] | None = None
        self._logdir: Path | None = None  # made by start(), removed by cleanup()

    @property
    def log_file(self) -> Path:
        """websockify's output (kept across restarts until :meth:`cleanup`)."""
        if self._logdir is None:
            self._logdir = Path(tempfile.mkdtemp(prefix="trio-lavin-websockify-"))
        return self._logdir / "websockify.log"

    @property
    def url(self) -> str:
        scheme = "wss" if self.certfile else "ws"
        params = replace(self.target, scheme=scheme, host="127.0.0.1", port=self.port)
        url = urlsplit(params.to_url(redact=False))
        if params.virtual_host == "/":
            url = url._replace(path="/")  # "/" rather than the equivalent "/%2F"
        return url.geturl()

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start websockify and wait until it accepts connections."""
        if self.is_running():
            raise WebsockifyError(f"websockify on port {self.port} is already running")
        argv = [sys.executable, "-c", _LAUNCHER]
        if self.certfile:
            argv += ["--ssl-only", "--cert", self.certfile]
            if self.keyfile:
                argv += ["--key", self.keyfile]
        argv += [f"127.0.0.1:{self.port}", f"{self.target.host}:{self.target.port}"]
        with self.log_file.open("ab") as log:
            self._proc = _spawn(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        try:
            self._wait_listening()
        except BaseException:
            self._kill()
            raise

    def stop(self) -> None:
        """Kill websockify and every connection it bridges (no WebSocket close is sent:
        clients see the connection drop).  Idempotent."""
        self._kill()

    def restart(self) -> None:
        """:meth:`stop`, then :meth:`start` on the same port."""
        self.stop()
        self.start()

    def cleanup(self) -> None:
        """:meth:`stop` and remove the log file."""
        self.stop()
        if self._logdir is not None:
            shutil.rmtree(self._logdir, ignore_errors=True)
            self._logdir = None

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"<Websockify 127.0.0.1:{self.port} -> {self.target.endpoint} {state}>"

    def _kill(self) -> None:
        if self._proc is not None:
            try:
                _kill_group(self._proc, timeout=10)
            except BrokerError as exc:
                raise WebsockifyError(str(exc)) from exc
            self._proc = None

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise WebsockifyError(
                    f"websockify exited with {self._proc.returncode} "
                    "(is it installed? pip install websockify):\n" + _tail(self.log_file)
                )
            try:
                # The probe is bridged like any client: websockify forks a child for it,
                # which ends when the probe closes without a handshake.
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise WebsockifyError(
                        f"websockify did not listen on 127.0.0.1:{self.port} within "
                        f"{START_TIMEOUT} s:\n" + _tail(self.log_file)
                    ) from None
                time.sleep(0.02)
