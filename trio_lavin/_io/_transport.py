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
    against the system's CAs (or ``cacertfile``) unless ``verify`` is off.

    Raises:
        ValueError: ``cacertfile``, ``certfile`` or ``keyfile`` cannot be
            read or loaded (named in the message).
    """
    try:
        context = ssl.create_default_context(cafile=params.cacertfile)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"cacertfile {params.cacertfile!r} cannot be loaded: {exc}") from exc
    if params.certfile:
        try:
            context.load_cert_chain(params.certfile, params.keyfile)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(
                f"certfile {params.certfile!r} (keyfile {params.keyfile!r}) cannot be "
                f"loaded: {exc}"
            ) from exc
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
        ValueError: a certificate or key file cannot be loaded (before
            anything is connected).

    Cancelled (or failing) half-way, it closes what it opened.
    """
    # Before connecting: a certificate file that cannot be loaded opens no socket.
    context = make_ssl_context(params) if params.tls else None
    if params.scheme in ("ws", "wss"):
        try:
            from ._websocket import connect_websocket
        except ImportError as exc:
            raise ImportError(
                f"the {params.scheme}:// transport needs wsproto: "
                "install trio-lavin[ws] (pip install 'trio-lavin[ws]')"
            ) from exc
        return await connect_websocket(params, context)
    try:
        stream: trio.abc.Stream = await trio.open_tcp_stream(params.host, params.port)
    except OSError as exc:
        raise ConnectionLost(f"cannot connect to {params.endpoint}: {exc}") from exc
    if context is None:
        return stream
    try:
        tls = trio.SSLStream(
            stream,
            context,
            server_hostname=params.server_name_indication or params.host,
            https_compatible=True,
        )
        await tls.do_handshake()
    except BaseException as exc:  # failed or cancelled: no socket left behind
        await trio.aclose_forcefully(stream)
        if not isinstance(exc, (trio.BrokenResourceError, ssl.SSLError, OSError)):
            raise
        # trio wraps the ssl error: its text says what went wrong.
        detail = exc.__cause__ if isinstance(exc, trio.BrokenResourceError) else exc
        raise ConnectionLost(
            f"TLS handshake with {params.endpoint} failed: {detail or type(exc).__name__}"
        ) from exc
    return tls
