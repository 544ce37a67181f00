"""RPC over direct reply-to: request/reply without a reply queue.

Direct reply-to (``amq.rabbitmq.reply-to``, supported by RabbitMQ and
LavinMQ) lets a client receive replies without declaring a queue: it consumes
the pseudo-queue ``amq.rabbitmq.reply-to`` in no-ack mode and publishes its
requests, with ``reply_to="amq.rabbitmq.reply-to"``, *on that same channel*.
The broker rewrites ``reply_to`` into an address that routes back to the
channel; a server publishes its reply to that address through the default
exchange.

The caller side (:class:`RpcCaller`, used by :meth:`Client.rpc_call`) owns one
such channel per connection and matches replies to calls by correlation id
(a random 128-bit hex string per call).  The replies can only ever reach the
channel that sent the request, so when that channel or its connection dies the
calls waiting on it fail with :class:`RpcReplyLost`; they are *not* retried,
because the server may already have handled the request (retrying a
non-idempotent request is the application's decision).  The next call opens a
channel on the new connection.

The server side (:func:`serve_rpc`, used by :meth:`Client.serve_rpc`)
consumes a queue through the client's recovering consumer, calls the handler
for each request, publishes its reply on the channel the request came on and
then acks the request.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final, NoReturn

import trio

from .._client._channel import Channel
from .._client._consumer import Consumer
from .._client._delivery import BasicProperties, Delivery
from .._exceptions import (
    AMQPConnectionError,
    AMQPError,
    ChannelClosed,
    ConnectionClosed,
    ConnectionLost,
)
from .._sansio import _events as ev

if TYPE_CHECKING:
    from ._client import Client

logger = logging.getLogger("trio_lavin.rpc")

#: The pseudo-queue of direct reply-to (RabbitMQ, LavinMQ).
DIRECT_REPLY_TO: Final = "amq.rabbitmq.reply-to"

#: The reply header that carries a server handler's error to the caller.
ERROR_HEADER: Final = "x-trio-lavin-rpc-error"

#: A handler error is sent to the caller cut to this many characters.
MAX_ERROR_TEXT: Final = 1_000

#: The default limit of :meth:`Client.rpc_call`, in seconds.
DEFAULT_RPC_TIMEOUT: Final = 30.0

#: Requests a server handles at once by default (its consumer's prefetch).
DEFAULT_RPC_PREFETCH: Final = 10

RpcHandler = Callable[[Delivery], Awaitable[bytes]]


class RpcError(AMQPError):
    """Base class of the errors of :meth:`Client.rpc_call`."""


class RpcTimeout(RpcError, TimeoutError):
    """No reply arrived within the call's timeout.

    The timeout covers waiting for a connection, publishing the request and
    waiting for the reply.  The request carried the timeout as its
    ``expiration``, so the broker drops it if no server took it in time; a
    server that took it may still handle it, and its late reply is discarded.
    """

    def __init__(self, exchange: str, routing_key: str, timeout: float, correlation_id: str):
        self.exchange = exchange
        self.routing_key = routing_key
        self.timeout = timeout
        self.correlation_id = correlation_id
        super().__init__(
            f"no reply to the RPC request to {_target(exchange, routing_key)} within "
            f"{timeout:g} s (correlation id {correlation_id})"
        )


class RpcUnroutable(RpcError):
    """The broker returned the request (``mandatory``): no queue was bound
    to its routing key, so no server can be listening."""

    def __init__(self, exchange: str, routing_key: str, reply_code: int, reply_text: str):
        self.exchange = exchange
        self.routing_key = routing_key
        self.reply_code = reply_code
        self.reply_text = reply_text
        super().__init__(
            f"the RPC request to {_target(exchange, routing_key)} was returned unroutable "
            f"({reply_code} {reply_text}): no queue is bound to that routing key"
        )


class RpcRemoteError(RpcError):
    """The server's handler raised: :attr:`error` is its
    ``"ExceptionType: message"`` (at most 1000 characters)."""

    def __init__(self, exchange: str, routing_key: str, error: str):
        self.exchange = exchange
        self.routing_key = routing_key
        self.error = error
        super().__init__(f"the RPC handler for {_target(exchange, routing_key)} failed: {error}")


class RpcReplyLost(RpcError, ConnectionLost):
    """The channel the request went out on closed (usually because the
    connection was lost) before the reply came.  The reply can never arrive:
    direct reply-to routes it to that channel only.  The server may or may not
    have handled the request; the call is not retried.  The channel's error
    is the ``__cause__``."""


#: The longest per-message expiration RabbitMQ takes (ms); more closes the channel (406).
MAX_EXPIRATION_MS: Final = 2**32 - 1


def _expiration(deadline: float) -> str | None:
    """The request's ``expiration`` (ms): the time its caller still waits;
    None (none) past what an expiration can say."""
    if math.isinf(deadline):
        return None
    milliseconds = max(1, math.ceil((deadline - trio.current_time()) * 1000))
    return None if milliseconds > MAX_EXPIRATION_MS else str(milliseconds)


def _target(exchange: str, routing_key: str) -> str:
    if exchange:
        return f"exchange {exchange!r} with routing key {routing_key!r}"
    return f"routing key {routing_key!r}"


class _Call:
    """One call waiting for its reply, registered in its channel's ``pending``."""

    __slots__ = ("correlation_id", "error", "event", "exchange", "pending", "reply", "routing_key")

    def __init__(
        self, pending: dict[str, _Call], correlation_id: str, exchange: str, routing_key: str
    ) -> None:
        self.pending = pending
        self.correlation_id = correlation_id
        self.exchange = exchange
        self.routing_key = routing_key
        self.event = trio.Event()
        self.reply: Delivery | None = None
        self.error: BaseException | None = None
        pending[correlation_id] = self

    def forget(self) -> None:
        """Stop waiting: a reply that comes later is discarded."""
        if self.pending.get(self.correlation_id) is self:
            del self.pending[self.correlation_id]

    def resolve(self, reply: Delivery | None = None, error: BaseException | None = None) -> None:
        if not self.event.is_set():
            self.reply, self.error = reply, error
            self.event.set()


class _ReplyChannel:
    """A channel consuming ``amq.rabbitmq.reply-to``, and its pending calls."""

    def __init__(self, channel: Channel, consumer: Consumer) -> None:
        self.channel = channel
        self.consumer = consumer
        self.pending: dict[str, _Call] = {}
        #: Set once the reader stopped: no reply will be matched any more.
        self.finished = False
        channel.on_return(self._on_return)

    @property
    def usable(self) -> bool:
        return self.channel.is_open and not self.finished

    def _on_return(self, event: ev.ReturnedMessage) -> None:
        correlation_id = event.properties.correlation_id
        call = self.pending.get(correlation_id) if correlation_id else None
        if call is None:
            logger.debug("returned RPC request with unknown correlation id %r", correlation_id)
            return
        call.resolve(
            error=RpcUnroutable(
                event.exchange, event.routing_key, event.reply_code, event.reply_text
            )
        )

    async def read_replies(self) -> None:
        """Match replies to calls until the channel ends, then fail the calls
        still waiting."""
        error: BaseException = ConnectionClosed("the client was closed")
        try:
            async for delivery in self.consumer:
                call = self.pending.get(delivery.properties.correlation_id or "")
                if call is None:
                    logger.debug(
                        "discarded an RPC reply with unknown correlation id %r (its call "
                        "timed out or was cancelled)",
                        delivery.properties.correlation_id,
                    )
                    continue
                call.resolve(delivery)
            error = ChannelClosed("the reply consumer was cancelled")
        except AMQPError as exc:
            error = exc
        finally:
            self.finished = True
            for correlation_id, call in self.pending.items():
                target = _target(call.exchange, call.routing_key)
                ended: AMQPError
                if isinstance(error, ConnectionClosed):  # we closed it: not "lost"
                    ended = ConnectionClosed(
                        f"the client was closed while the RPC request to {target} "
                        f"(correlation id {correlation_id}) waited for its reply"
                    )
                else:
                    ended = RpcReplyLost(
                        f"the channel of the RPC request to {target} closed before its reply "
                        f"came (correlation id {correlation_id}): {error}; the server may or "
                        "may not have handled it, and it is not retried"
                    )
                ended.__cause__ = error
                call.resolve(error=ended)
            self.pending.clear()
            # A reply channel is never reused once its reader stopped.
            with trio.CancelScope(shield=True):
                await self.channel.aclose()


class RpcCaller:
    """The caller side of RPC over direct reply-to, for one :class:`Client`.
    Made on first use by :meth:`Client.rpc_call`; see the module doc."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._current: _ReplyChannel | None = None
        self._lock = trio.Lock()

    async def _reply_channel(self) -> _ReplyChannel:
        """The live reply channel; opens one (and starts its reader in the
        client's nursery) on the live connection if there is none."""
        async with self._lock:
            current = self._current
            if current is not None and current.usable:
                return current
            client = self._client
            while True:
                connection = await client.wait_connected()
                nursery = client.nursery
                if nursery is None:
                    raise ConnectionClosed("the client is closed")
                try:
                    channel = await client.open_channel(connection)
                except AMQPError:
                    if not connection.is_open:
                        continue  # lost the connection meanwhile: try on the next one
                    raise
                try:
                    consumer = await channel.basic_consume(DIRECT_REPLY_TO, no_ack=True)
                except BaseException as exc:
                    with trio.CancelScope(shield=True):
                        await channel.aclose()
                    if not isinstance(exc, AMQPError):
                        raise
                    if not connection.is_open:
                        continue  # lost the connection meanwhile: try on the next one
                    raise RpcError(
                        f"the broker refused to consume {DIRECT_REPLY_TO!r} ({exc}): "
                        "it must support direct reply-to (RabbitMQ and LavinMQ do)"
                    ) from exc
                current = self._current = _ReplyChannel(channel, consumer)
                nursery.start_soon(current.read_replies, name="trio-lavin rpc replies")
                return current

    async def _send(
        self,
        correlation_id: str,
        deadline: float,
        exchange: str,
        routing_key: str,
        body: bytes,
        headers: dict[str, Any] | None,
        content_type: str | None,
    ) -> _Call:
        """Publish the request on the live reply channel; returns its call,
        which the reply (or the channel's end) resolves.  A request whose
        channel died before it was sent is sent again on the next one."""
        while True:
            reply_channel = await self._reply_channel()
            call = _Call(reply_channel.pending, correlation_id, exchange, routing_key)
            try:
                await reply_channel.channel.basic_publish(
                    body,
                    exchange=exchange,
                    routing_key=routing_key,
                    properties=BasicProperties(
                        reply_to=DIRECT_REPLY_TO,
                        correlation_id=correlation_id,
                        expiration=_expiration(deadline),
                        headers=headers,
                        content_type=content_type,
                    ),
                    mandatory=True,
                )
            except (ChannelClosed, AMQPConnectionError):
                call.forget()
                if reply_channel.channel.is_open or self._client.finished:
                    raise
                continue  # not sent: its channel died; send it on the next one
            except BaseException:
                call.forget()  # cancelled: not sent
                raise
            return call

    async def call(
        self,
        routing_key: str,
        body: bytes,
        *,
        exchange: str = "",
        # Not just a cancel scope: the timeout is also the request's expiration.
        timeout: float | None = DEFAULT_RPC_TIMEOUT,  # noqa: ASYNC109
        headers: dict[str, Any] | None = None,
        content_type: str | None = None,
    ) -> bytes:
        """See :meth:`Client.rpc_call`."""
        if timeout is not None and not (math.isfinite(timeout) and timeout > 0):
            raise ValueError(
                f"timeout must be a positive number of seconds or None, not {timeout!r}"
            )
        correlation_id = uuid.uuid4().hex
        deadline = math.inf if timeout is None else trio.current_time() + timeout
        call: _Call | None = None
        with trio.move_on_at(deadline):
            call = await self._send(
                correlation_id, deadline, exchange, routing_key, body, headers, content_type
            )
            try:
                await call.event.wait()
            finally:
                call.forget()
        if call is None or not call.event.is_set():
            assert timeout is not None
            raise RpcTimeout(exchange, routing_key, timeout, correlation_id)
        if call.error is not None:
            raise call.error
        reply = call.reply
        assert reply is not None
        headers = reply.properties.headers
        if headers and ERROR_HEADER in headers:
            error = headers[ERROR_HEADER]
            if isinstance(error, bytes):
                error = error.decode("utf-8", "replace")
            raise RpcRemoteError(exchange, routing_key, str(error))
        return reply.body


async def serve_rpc(
    client: Client,
    queue: str,
    handler: RpcHandler,
    *,
    prefetch: int = DEFAULT_RPC_PREFETCH,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """See :meth:`Client.serve_rpc`."""
    if prefetch < 1:
        raise ValueError(
            f"prefetch must be >= 1 to bound the concurrent requests, not {prefetch!r}"
        )
    async with (
        client.consume(queue, prefetch=prefetch) as requests,
        trio.open_nursery() as nursery,
    ):
        task_status.started()
        async for request in requests:
            nursery.start_soon(_handle, queue, handler, request)
    raise AssertionError("a recovering consumer never ends while it is open")  # pragma: no cover


async def _call_handler(handler: RpcHandler, request: Delivery) -> bytes:
    result: object = await handler(request)
    if not isinstance(result, (bytes, bytearray, memoryview)):
        raise TypeError(f"an RPC handler must return bytes, not {type(result).__name__}")
    return bytes(result)


async def _handle(queue: str, handler: RpcHandler, request: Delivery) -> None:
    properties = request.properties
    if not properties.reply_to:
        logger.warning(
            "RPC request on queue %r has no reply_to: rejected (not requeued), handler not called",
            queue,
        )
        await request.nack(requeue=False)
        return
    reply_headers: dict[str, Any] | None = None
    try:
        reply = await _call_handler(handler, request)
    except Exception as exc:
        logger.exception("RPC handler for queue %r failed; replying with the error", queue)
        text = f"{type(exc).__name__}: {exc}"[:MAX_ERROR_TEXT]
        reply, reply_headers = b"", {ERROR_HEADER: text}
    try:
        await request.channel.basic_publish(
            reply,
            routing_key=properties.reply_to,
            properties=BasicProperties(
                correlation_id=properties.correlation_id, headers=reply_headers
            ),
        )
    except (ChannelClosed, AMQPConnectionError) as exc:
        # The request is redelivered (its channel is gone) and handled again.
        logger.warning("could not send the RPC reply for queue %r: %s", queue, exc)
        return
    if not request.settled:  # the handler may have settled it itself
        await request.ack()
