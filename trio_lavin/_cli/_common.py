"""What every command shares: errors and exit codes, connecting, Ctrl-C, output.

Exit codes: 0 success; 1 a runtime failure (the broker cannot be reached or refused us, a
channel was closed, a message was nacked or returned, a wait timed out); 2 a usage error (a
bad option or URL), reported before anything connects; 130 interrupted by Ctrl-C.
"""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from typing import Any, Final, TextIO

import trio

from .._client._connection import CLOSE_TIMEOUT, Connection, open_connection
from .._client._consumer import Consumer
from .._exceptions import AMQPConnectionError, AMQPError
from .._params import Parameters

PROG: Final = "trio-lavin"

EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1
EXIT_USAGE: Final = 2
#: What shells report for a process ended by SIGINT (128 + 2).
EXIT_INTERRUPTED: Final = 130

#: Longest AMQP short string (queue, exchange, routing key names), in UTF-8 bytes.
SHORTSTR_MAX: Final = 255


class CLIError(Exception):
    """A failure the command reports as one line ``trio-lavin: error: ...`` and an exit
    code, without a traceback."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def print_error(message: str, stream: TextIO | None = None) -> None:
    """Print ``trio-lavin: error: <message>`` as one line (newlines folded) to stderr."""
    text = " ".join(message.split("\n"))
    print(f"{PROG}: error: {text}", file=stream or sys.stderr, flush=True)


def print_json(value: dict[str, Any], stream: TextIO) -> None:
    """One JSON object on one line (values JSON cannot hold, such as bytes in headers or a
    timestamp, are written as their ``str()``)."""
    print(json.dumps(value, default=str), file=stream, flush=True)


def leaves(error: BaseException) -> Iterator[BaseException]:
    """The exceptions inside (possibly nested) exception groups, in order."""
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            yield from leaves(inner)
    else:
        yield error


#: Errors that are the broker's or the network's doing: reported in one line, exit 1.
RUNTIME_ERRORS: Final = (AMQPError, TimeoutError, trio.TooSlowError, OSError)


@asynccontextmanager
async def connect(params: Parameters, name: str) -> AsyncIterator[Connection]:
    """``open_connection`` whose connect failures (refused, unreachable, refused by the
    broker, timed out) become a one-line :class:`CLIError` naming the endpoint (never the
    password).  Errors raised later, inside the block, pass through unchanged."""
    async with AsyncExitStack() as stack:
        try:
            connection = await stack.enter_async_context(
                open_connection(params, connection_name=name)
            )
        except ImportError as exc:
            raise CLIError(str(exc)) from exc
        except (AMQPConnectionError, TimeoutError, OSError) as exc:
            text = str(exc)
            if params.endpoint not in text:
                text = f"cannot connect to {params.endpoint}: {text}"
            raise CLIError(text) from exc
        yield connection


async def close_draining(connection: Connection, consumer: Consumer) -> None:
    """Close ``connection`` while still taking (and dropping) ``consumer``'s deliveries.

    A consumer whose buffer is full pauses its connection's reader, and the broker's
    ``CloseOk`` would then wait behind the deliveries nobody takes until the close times
    out.  Dropped deliveries that were not acked go back to the queue.
    """

    async def drain() -> None:
        try:
            async for _ in consumer:
                pass
        except AMQPError:
            pass

    with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(drain)
            await connection.aclose()
            nursery.cancel_scope.cancel()


class Interrupt:
    """Ctrl-C while a command runs.

    The first SIGINT calls the command's handler (by default: cancel the command) and marks
    the run as interrupted, so the command can still print what it measured; the second one
    raises :class:`KeyboardInterrupt` at once.
    """

    def __init__(self) -> None:
        self.received = False
        self._handler: Callable[[], None] | None = None

    def on_interrupt(self, handler: Callable[[], None]) -> None:
        """Call ``handler()`` (it must not block) on the first Ctrl-C instead of the
        default."""
        self._handler = handler

    def _fire(self) -> None:
        if self.received:
            raise KeyboardInterrupt
        self.received = True
        if self._handler is not None:
            self._handler()

    async def watch(self, default: trio.CancelScope) -> None:
        """Listen for SIGINT until cancelled (main thread only)."""
        self._handler = self._handler or default.cancel
        with trio.open_signal_receiver(signal.SIGINT) as signals:
            async for _ in signals:
                self._fire()


class Stopper:
    """Stops a command (at Ctrl-C) without cancelling its connection.

    Leaving an ``open_connection`` block because of a cancellation cancels the
    connection's own tasks as well, and its graceful close then waits out its timeout.
    So the work inside the connection runs in :meth:`working`, which :meth:`stop`
    cancels; only before that work started does :meth:`stop` cancel the whole command
    (:attr:`outer`, which the command enters around its connection).
    """

    def __init__(self) -> None:
        self.outer = trio.CancelScope()
        self._inner: trio.CancelScope | None = None
        self.stopped = False

    def stop(self) -> None:
        self.stopped = True
        (self._inner or self.outer).cancel()

    @contextmanager
    def working(self) -> Iterator[None]:
        scope = self._inner = trio.CancelScope()
        if self.stopped:
            scope.cancel()
        with scope:
            yield


def parse_shortstr(what: str, value: str) -> str:
    """Check an AMQP short string (a name of at most 255 UTF-8 bytes)."""
    size = len(value.encode("utf-8", "surrogateescape"))
    if size > SHORTSTR_MAX:
        raise ValueError(f"{what} must be at most {SHORTSTR_MAX} bytes, not {size} bytes")
    return value
