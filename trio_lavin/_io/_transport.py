"""Transports: open the byte stream an AMQP connection runs on.

This layer moves bytes only; it never interprets frames.  Every transport is
presented as one :class:`trio.abc.Stream`.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Awaitable, Callable

import trio

from .._exceptions import ConnectionLost
from .._params import Parameters

logger = logging.getLogger("trio_lavin.transport")

#: Something that opens a stream: ``await factory()``.  Tests plug in
#: :class:`trio_lavin.testing.FakeBroker` or a fault proxy here.
StreamFactory = Callable[[], Awaitable[trio.abc.Stream]]


def make_ssl_context(params: Parameters) -> ssl.SSLContext:
    """The TLS context for ``amqps``/``wss``: certificates are verified
    against the system's CAs (or ``cacertfile``) unless ``verify`` is off."""
    context = ssl.create_default_context(cafile=params.cacertfile)
    if params.certfile:
        context.load_cert_chain(params.certfile, params.keyfile)
    if not params.verify:
        logger.warning(
            "TLS certificate verification is OFF for %s: the connection can be intercepted",
            params.endpoint,
        )
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


async def open_stream(params: Parameters) -> trio.abc.Stream:
    """Open a TCP (``amqp``) or TLS (``amqps``) stream to ``params``, or for
    ``ws``/``wss`` a WebSocket (over TLS for ``wss``) carrying AMQP in binary
    messages (see :mod:`trio_lavin._io._websocket`).

    Raises:
        ConnectionLost: the connection could not be made (refused, unreachable,
            TLS failure, WebSocket upgrade refused), with the endpoint in the
            message (never a password).
        ImportError: ``ws``/``wss`` without the ``trio-lavin[ws]`` extra.
    """
    if params.scheme in ("ws", "wss"):
        try:
            from ._websocket import connect_websocket
        except ImportError as exc:
            raise ImportError(
                f"the {params.scheme}:// transport needs wsproto: "
                "install trio-lavin[ws] (pip install 'trio-lavin[ws]')"
            ) from exc
        return await connect_websocket(params, make_ssl_context(params) if params.tls else None)
    try:
        stream: trio.abc.Stream = await trio.open_tcp_stream(params.host, params.port)
    except OSError as exc:
        raise ConnectionLost(f"cannot connect to {params.endpoint}: {exc}") from exc
    if not params.tls:
        return stream
    tls = trio.SSLStream(
        stream,
        make_ssl_context(params),
        server_hostname=params.server_name_indication or params.host,
        https_compatible=True,
    )
    try:
        await tls.do_handshake()
    except (trio.BrokenResourceError, ssl.SSLError, OSError) as exc:
        await trio.aclose_forcefully(tls)
        # trio wraps the ssl error: its text says what went wrong.
        detail = exc.__cause__ if isinstance(exc, trio.BrokenResourceError) else exc
        raise ConnectionLost(
            f"TLS handshake with {params.endpoint} failed: {detail or type(exc).__name__}"
        ) from exc
    return tls
