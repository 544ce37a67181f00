"""open_client: a connection that comes back by itself.

:func:`open_client` owns a nursery with

* the **supervisor**: connects, and after every loss reconnects with backoff
  (decisions in :mod:`._supervisor`), re-declaring the recorded topology and
  re-subscribing consumers before it reports the client connected;
* the **health poll**: every ``health_check_interval`` it looks at the live
  connection and ends it when its tasks died, a write hangs, or the broker has
  been silent past the heartbeat timeout - whatever the event path missed;
* the live connection's own reader, writer and heartbeat tasks.

Nothing outlives the ``async with`` block.
"""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import trio

from .._client._channel import Channel, QueueDeclareOk
from .._client._connection import Connection, open_connection
from .._exceptions import (
    AMQPConnectionError,
    AMQPError,
    ChannelClosed,
    ConnectionClosed,
    ConnectionLost,
)
from .._io._transport import StreamFactory
from .._params import Parameters, parse_url
from .._sansio._errors import ProtocolError
from .._util import unwrap_single_exception
from ._config import Config
from ._consumer import RecoveringConsumer
from ._producer import (
    DEFAULT_CONFIRM_WINDOW,
    DEFAULT_MAX_MESSAGE_SIZE,
    BufferPolicy,
    Producer,
    PublishMode,
)
from ._supervisor import (
    ClientState,
    Connect,
    Detection,
    StateChange,
    Stop,
    Supervisor,
    Wait,
    describe_stop,
)
from ._topology import (
    Entry,
    ExchangeBinding,
    ExchangeDeclaration,
    QueueBinding,
    QueueDeclaration,
    Topology,
)

logger = logging.getLogger("trio_lavin.client")

T = TypeVar("T")

#: Errors that mean "this connection attempt failed" (anything else is a bug
#: and propagates).
CONNECT_ERRORS = (AMQPError, ProtocolError, OSError, TimeoutError, trio.BrokenResourceError)

#: Events kept for a slow ``events()`` subscriber before it misses some.
EVENT_BUFFER = 1_000


@dataclass(frozen=True)
class QueueRenamed:
    """A server-named queue got a new name after a reconnect."""

    old: str
    new: str
    at: float


@dataclass(frozen=True)
class RecoveryFailed:
    """An entity could not be declared again after a reconnect."""

    entity: str
    error: BaseException
    at: float


ClientEvent = StateChange | QueueRenamed | RecoveryFailed


@dataclass(frozen=True)
class ClientStatistics:
    """A snapshot of :meth:`Client.statistics`."""

    state: ClientState
    endpoint: str | None
    connected_since: float | None
    connects: int
    reconnects: int
    connect_attempts: int
    failed_attempts: int
    last_error: str | None
    detections_by_event: int
    detections_by_poll: int
    recovery_failures: int
    events_dropped: int


class Client:
    """A self-healing AMQP client.  Made by :func:`open_client`.

    Declarations made through the client (``declare_queue``,
    ``bind_queue``, ...) are remembered and made again, in order, after every
    reconnect; consumers from :meth:`consume` re-subscribe by themselves.
    Calls made while disconnected wait for the connection (use a trio
    timeout to bound them).
    """

    def __init__(
        self,
        endpoints: Sequence[Parameters],
        config: Config,
        stream_factory: StreamFactory | None,
        rng: random.Random | None,
    ) -> None:
        self.config = config
        self._endpoints = list(endpoints)
        self._stream_factory = stream_factory
        self._supervisor = Supervisor(
            config, [p.endpoint for p in endpoints], trio.current_time(), rng
        )
        self._connection: Connection | None = None
        self._connected = trio.Event()
        self._topology = Topology()
        self._control: Channel | None = None
        self._control_lock = trio.Lock()
        self._subscribers: list[trio.MemorySendChannel[ClientEvent]] = []
        self._consumers: set[RecoveringConsumer] = set()
        self._producers: list[Producer] = []
        self._recovery_failures = 0
        self._events_dropped = 0
        self._nursery: trio.Nursery | None = None
        self._closing = False
        self._stop_waiters: list[trio.CancelScope] = []
        self._supervisor_scope = trio.CancelScope()

    def __repr__(self) -> str:
        return f"<Client {self._supervisor.state.value} {self._supervisor.endpoints}>"

    # -- state -------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True while a recovered connection is up."""
        return self._connection is not None and self._connection.is_open

    @property
    def state(self) -> ClientState:
        return self._supervisor.state

    @property
    def finished(self) -> bool:
        """True once the client is closed or gave up (it will not connect again)."""
        return self._closing or self._supervisor.state in (ClientState.CLOSED, ClientState.STOPPED)

    @property
    def connection(self) -> Connection | None:
        """The live connection, if any (it changes on every reconnect)."""
        return self._connection

    async def wait_connected(self) -> Connection:
        """Wait until the client is connected and return the connection.

        Raises:
            ConnectionLost: the client gave up (a fatal error such as 403
                ACCESS_REFUSED, or ``max_reconnect_attempts``).
            ConnectionClosed: the client was closed.
        """
        while True:
            self._raise_if_finished()
            connection = self._connection
            if connection is not None and connection.is_open:
                return connection
            with trio.CancelScope() as scope:
                self._stop_waiters.append(scope)
                try:
                    await self._connected.wait()
                finally:
                    self._stop_waiters.remove(scope)

    def _raise_if_finished(self) -> None:
        state = self._supervisor.state
        if state is ClientState.STOPPED:
            assert self._supervisor.stop_error is not None
            raise describe_stop(self._supervisor.stop_error, self._supervisor.attempts)
        if state is ClientState.CLOSED:
            raise ConnectionClosed("the client was closed")

    def statistics(self) -> ClientStatistics:
        """A frozen snapshot of the client's counters and state."""
        sup = self._supervisor
        return ClientStatistics(
            state=sup.state,
            endpoint=sup.endpoints[sup.endpoint] if sup.attempts else None,
            connected_since=sup.connected_since,
            connects=sup.connects,
            reconnects=sup.reconnects,
            connect_attempts=sup.attempts,
            failed_attempts=sup.attempts - sup.connects,
            last_error=None if sup.last_error is None else str(sup.last_error),
            detections_by_event=sup.detections[Detection.EVENT],
            detections_by_poll=sup.detections[Detection.POLL],
            recovery_failures=self._recovery_failures,
            events_dropped=self._events_dropped,
        )

    @asynccontextmanager
    async def events(self) -> AsyncIterator[trio.MemoryReceiveChannel[ClientEvent]]:
        """Subscribe to the client's events: every :class:`StateChange`,
        :class:`QueueRenamed` and :class:`RecoveryFailed` from now on::

            async with client.events() as events:
                async for event in events:
                    ...

        A subscriber more than 1000 events behind misses the newest ones
        (counted in ``statistics().events_dropped``).
        """
        send, receive = trio.open_memory_channel[ClientEvent](EVENT_BUFFER)
        self._subscribers.append(send)
        try:
            async with receive:
                yield receive
        finally:
            self._subscribers.remove(send)
            send.close()

    def _emit(self, event: ClientEvent) -> None:
        for subscriber in self._subscribers:
            try:
                subscriber.send_nowait(event)
            except trio.WouldBlock:
                self._events_dropped += 1
            except trio.BrokenResourceError:
                pass

    def _publish_changes(self) -> None:
        changes = self._supervisor.changes
        for change in changes:
            self._emit(change)
        changes.clear()

    # -- supervisor ---------------------------------------------------------------

    async def _supervise(self) -> None:
        with self._supervisor_scope:
            await self._supervise_loop()

    async def _supervise_loop(self) -> None:
        sup = self._supervisor
        assert self._nursery is not None
        while True:
            self._publish_changes()
            action = sup.next_action(trio.current_time())
            if isinstance(action, Stop):
                final = describe_stop(action.error, sup.attempts)
                logger.error("giving up: %s", final)
                self._wake_waiters()
                raise final
            if isinstance(action, Wait):
                await trio.sleep_until(action.until)
                continue
            if action is None:
                return  # closed
            assert isinstance(action, Connect)
            params = self._endpoints[action.endpoint]
            sup.connect_started(trio.current_time(), action.endpoint)
            self._publish_changes()
            logger.info("connecting to %s (attempt %d)", params.endpoint, sup.failures + 1)
            try:
                connection: Connection = await self._nursery.start(self._run_connection, params)
            except CONNECT_ERRORS as exc:
                if self._closing:
                    return
                sup.connect_failed(trio.current_time(), exc)
                logger.warning(
                    "connecting to %s failed: %s%s",
                    params.endpoint,
                    exc,
                    ""
                    if sup.state is ClientState.STOPPED
                    else f"; retrying in {sup.retry_at - trio.current_time():.2f} s",
                )
                continue
            if self._closing:
                return
            sup.connected(trio.current_time())
            self._connection = connection
            self._connected.set()
            logger.info(
                "connected to %s%s",
                params.endpoint,
                f" (reconnect {sup.reconnects})" if sup.reconnects else "",
            )
            self._publish_changes()
            error = await connection.wait_closed()
            self._connection = None
            self._control = None
            self._connected = trio.Event()
            if self.finished:
                return
            detected = Detection.POLL if connection.failed_by_poll else Detection.EVENT
            sup.lost(trio.current_time(), error, detected)
            logger.warning(
                "lost the connection to %s (%s, detected by %s); reconnecting in %.2f s",
                params.endpoint,
                str(error),  # not the error: a kept record would keep the connection
                detected.value,
                sup.retry_at - trio.current_time(),
            )

    def _wake_waiters(self) -> None:
        for scope in list(self._stop_waiters):
            scope.cancel()

    async def _run_connection(
        self, params: Parameters, *, task_status: trio.TaskStatus[Connection]
    ) -> None:
        config = self.config
        async with open_connection(
            params,
            heartbeat=config.heartbeat,
            frame_max=config.frame_max,
            channel_max=config.channel_max,
            connect_timeout=config.connect_timeout,
            connection_name=config.connection_name,
            max_body_size=config.max_body_size,
            stream_factory=self._stream_factory,
        ) as connection:
            with trio.fail_after(config.connect_timeout):
                await self._recover(connection)
            task_status.started(connection)
            await connection.wait_closed()

    async def _health_poll(self) -> None:
        """Every ``health_check_interval``: does the live connection still
        work?  Costs one attribute read while frames flow."""
        interval = self.config.health_check_interval
        write_timeout = self.config.write_timeout
        while True:
            await trio.sleep(interval)
            connection = self._connection
            if connection is None or not connection.is_open:
                continue
            now = trio.current_time()
            if now - connection.last_received < interval and connection._write_started is None:
                continue  # traffic proves liveness
            problem = connection.health_problem(now, write_timeout)
            if problem is not None:
                logger.warning("health poll: %s", problem)
                connection._fail(ConnectionLost(problem), by_poll=True)

    # -- recovery -------------------------------------------------------------------

    async def open_channel(self, connection: Connection | None = None) -> Channel:
        """Open a channel on ``connection`` (default: the live one, waiting for
        it), retrying ``channel_retry_attempts`` times ``channel_retry_delay``
        apart when the broker refuses."""
        if connection is None:
            connection = await self.wait_connected()
        attempts = self.config.channel_retry_attempts
        for attempt in range(1, attempts + 1):
            try:
                return await connection.channel()
            except ChannelClosed:
                if attempt == attempts:
                    raise
                await trio.sleep(self.config.channel_retry_delay)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _recover(self, connection: Connection) -> None:
        """Declare the recorded topology again, then re-subscribe consumers."""
        channel = await self.open_channel(connection)
        for entry in list(self._topology.entries):
            try:
                await self._apply(channel, entry)
            except ChannelClosed as exc:
                self._recovery_failures += 1
                logger.error("could not recover %s: %s", entry.describe(), exc)
                self._emit(RecoveryFailed(entry.describe(), exc, trio.current_time()))
                channel = await self.open_channel(connection)
        self._control = channel
        for consumer in list(self._consumers):
            try:
                await consumer._subscribe(connection)
            except ChannelClosed as exc:
                # The consumer retries by itself when iterated.
                self._recovery_failures += 1
                logger.error("could not re-subscribe %r: %s", consumer, exc)
                self._emit(RecoveryFailed(repr(consumer), exc, trio.current_time()))

    async def _apply(self, channel: Channel, entry: Entry) -> None:
        topology = self._topology
        if isinstance(entry, ExchangeDeclaration):
            await channel.exchange_declare(
                entry.name,
                entry.exchange_type,
                durable=entry.durable,
                auto_delete=entry.auto_delete,
                internal=entry.internal,
                arguments=entry.arguments,
            )
        elif isinstance(entry, QueueDeclaration):
            ok = await channel.queue_declare(
                entry.name,
                durable=entry.durable,
                exclusive=entry.exclusive,
                auto_delete=entry.auto_delete,
                arguments=entry.arguments,
            )
            if not entry.name:
                old = topology.current(entry.handle)
                if ok.queue != old:
                    topology.renamed(entry.handle, ok.queue)
                    logger.info("server-named queue %r is now %r", old, ok.queue)
                    self._emit(QueueRenamed(old, ok.queue, trio.current_time()))
        elif isinstance(entry, QueueBinding):
            await channel.queue_bind(
                topology.current(entry.queue),
                entry.exchange,
                entry.routing_key,
                arguments=entry.arguments,
            )
        else:
            await channel.exchange_bind(
                entry.destination, entry.source, entry.routing_key, arguments=entry.arguments
            )

    # -- declarations (recorded) -------------------------------------------------------

    async def _control_call(self, call: Callable[[Channel], Awaitable[T]]) -> T:
        """Run ``call`` on the client's control channel, on the live
        connection; a lost connection is waited out and the call repeated
        (declarations are idempotent)."""
        while True:
            connection = await self.wait_connected()
            async with self._control_lock:
                try:
                    if self._control is None or not self._control.is_open:
                        self._control = await self.open_channel(connection)
                    return await call(self._control)
                except AMQPConnectionError:
                    if self._connection is connection and connection.is_open:
                        raise
                    continue  # the connection died under us: try on the next one

    async def declare_exchange(
        self,
        name: str,
        exchange_type: str = "direct",
        *,
        durable: bool = False,
        auto_delete: bool = False,
        internal: bool = False,
        arguments: dict[str, Any] | None = None,
    ) -> None:
        """Declare an exchange and remember it for reconnects.

        Raises:
            ChannelClosed: the broker refused (e.g. 406: it exists with other
                settings); nothing is remembered.
        """
        declaration = ExchangeDeclaration(
            name, exchange_type, durable, auto_delete, internal, arguments
        )
        await self._control_call(lambda channel: self._apply(channel, declaration))
        self._topology.add_exchange(declaration)

    async def declare_queue(
        self,
        name: str = "",
        *,
        durable: bool = False,
        exclusive: bool = False,
        auto_delete: bool = False,
        arguments: dict[str, Any] | None = None,
    ) -> QueueDeclareOk:
        """Declare a queue and remember it for reconnects.

        An empty ``name`` makes a server-named queue: use the returned name;
        after a reconnect the queue is declared again under a new name
        (reported as a :class:`QueueRenamed` event), and the client keeps
        translating the first name to the current one in its own calls.
        Exclusive and auto-delete queues are declared again too, since they
        disappear with the connection.
        """

        async def declare(channel: Channel) -> QueueDeclareOk:
            return await channel.queue_declare(
                name,
                durable=durable,
                exclusive=exclusive,
                auto_delete=auto_delete,
                arguments=arguments,
            )

        ok = await self._control_call(declare)
        self._topology.add_queue(
            QueueDeclaration(
                name, durable, exclusive, auto_delete, arguments, handle="" if name else ok.queue
            )
        )
        return ok

    async def bind_queue(
        self,
        queue: str,
        exchange: str,
        routing_key: str = "",
        *,
        arguments: dict[str, Any] | None = None,
    ) -> None:
        """Bind a queue to an exchange and remember it for reconnects."""
        topology = self._topology
        binding = QueueBinding(topology.handle_of(queue), exchange, routing_key, arguments)
        await self._control_call(lambda channel: self._apply(channel, binding))
        topology.add_binding(binding)

    async def unbind_queue(
        self,
        queue: str,
        exchange: str,
        routing_key: str = "",
        *,
        arguments: dict[str, Any] | None = None,
    ) -> None:
        topology = self._topology
        binding = QueueBinding(topology.handle_of(queue), exchange, routing_key, arguments)
        await self._control_call(
            lambda channel: channel.queue_unbind(
                topology.current(binding.queue), exchange, routing_key, arguments=arguments
            )
        )
        topology.remove_binding(binding)

    async def bind_exchange(
        self,
        destination: str,
        source: str,
        routing_key: str = "",
        *,
        arguments: dict[str, Any] | None = None,
    ) -> None:
        """Bind an exchange to another and remember it for reconnects."""
        binding = ExchangeBinding(destination, source, routing_key, arguments)
        await self._control_call(lambda channel: self._apply(channel, binding))
        self._topology.add_binding(binding)

    async def unbind_exchange(
        self,
        destination: str,
        source: str,
        routing_key: str = "",
        *,
        arguments: dict[str, Any] | None = None,
    ) -> None:
        binding = ExchangeBinding(destination, source, routing_key, arguments)
        await self._control_call(
            lambda channel: channel.exchange_unbind(
                destination, source, routing_key, arguments=arguments
            )
        )
        self._topology.remove_binding(binding)

    async def delete_queue(
        self, queue: str, *, if_unused: bool = False, if_empty: bool = False
    ) -> int:
        """Delete a queue and forget it; returns the messages deleted."""
        topology = self._topology
        count = await self._control_call(
            lambda channel: channel.queue_delete(
                topology.current(queue), if_unused=if_unused, if_empty=if_empty
            )
        )
        topology.remove_queue(queue)
        return count

    async def delete_exchange(self, exchange: str, *, if_unused: bool = False) -> None:
        """Delete an exchange and forget it and its bindings."""
        await self._control_call(
            lambda channel: channel.exchange_delete(exchange, if_unused=if_unused)
        )
        self._topology.remove_exchange(exchange)

    async def purge_queue(self, queue: str) -> int:
        """Remove the ready messages of a queue; returns how many."""
        topology = self._topology
        return await self._control_call(
            lambda channel: channel.queue_purge(topology.current(queue))
        )

    def current_queue_name(self, queue: str) -> str:
        """The name a server-named queue has on the current connection."""
        return self._topology.current(queue)

    # -- producing -----------------------------------------------------------------

    def producer(
        self,
        queue: str | None = None,
        *,
        exchange: str = "",
        routing_key: str | None = None,
        mode: PublishMode = PublishMode.CONFIRM,
        buffer_policy: BufferPolicy = BufferPolicy.BLOCK,
        mandatory: bool = False,
        confirm_window: int = DEFAULT_CONFIRM_WINDOW,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        publish_timeout: float | None = None,
    ) -> Producer:
        """A buffered producer for ``queue`` (through the default exchange),
        or for ``exchange`` with ``routing_key``.

        ``publish_timeout`` is the default limit of ``producer.publish()``.
        Its sender task runs in the client's nursery until the client closes;
        messages still buffered then are reported to ``on_drop`` as CLOSED
        (call ``await producer.drain()`` first to avoid that).
        """
        if queue is not None and (exchange or routing_key is not None):
            raise ValueError("give either queue, or exchange and routing_key, not both")
        if self._closing or self._nursery is None:
            raise ConnectionClosed("the client is closed")
        producer = Producer(
            self,
            exchange=exchange,
            routing_key=queue if queue is not None else (routing_key or ""),
            mode=mode,
            buffer_policy=buffer_policy,
            mandatory=mandatory,
            confirm_window=confirm_window,
            max_message_size=max_message_size,
            publish_timeout=publish_timeout,
        )
        self._producers.append(producer)
        self._nursery.start_soon(producer._run, name=f"trio-lavin producer {producer.target}")
        return producer

    def _spawn(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        if self._nursery is not None:
            self._nursery.start_soon(fn, *args)

    # -- consuming -----------------------------------------------------------------

    @asynccontextmanager
    async def consume(
        self,
        queue: str,
        *,
        prefetch: int = 100,
        no_ack: bool = False,
        exclusive: bool = False,
        consumer_tag: str | None = None,
        arguments: dict[str, Any] | None = None,
    ) -> AsyncIterator[RecoveringConsumer]:
        """Consume ``queue`` on a channel of its own, across reconnects.

        Iterating yields :class:`~trio_lavin.Delivery` objects; after a
        reconnect, a server ``basic.cancel`` or a broker channel close, the
        consumer subscribes again by itself.  ``delivery.ack()`` returns
        False for deliveries from a channel that has since died (the broker
        redelivers those).
        """
        if not 0 <= prefetch <= 65_535:
            raise ValueError(f"prefetch must be in 0..65535, not {prefetch!r}")
        consumer = RecoveringConsumer(
            self, queue, prefetch, no_ack, exclusive, consumer_tag, arguments
        )
        self._consumers.add(consumer)
        try:
            while True:
                connection = await self.wait_connected()
                try:
                    await consumer._subscribe(connection)
                except (AMQPConnectionError, ChannelClosed):
                    if connection.is_open:
                        raise
                    # The connection died under us: the next connection's
                    # recovery subscribes the consumer; wait for that one.
                    continue
                break
            del connection  # not kept alive after it dies, for as long as we consume
            yield consumer
        finally:
            self._consumers.discard(consumer)
            with trio.move_on_after(5) as scope:
                scope.shield = True
                await consumer.aclose()

    # -- life cycle ------------------------------------------------------------------

    async def _close(self) -> None:
        self._closing = True
        self._supervisor_scope.cancel()
        for producer in self._producers:
            producer._close()
        self._supervisor.close(trio.current_time())
        self._publish_changes()
        connection = self._connection
        if connection is not None:
            with trio.CancelScope(shield=True):
                await connection.aclose()
        self._wake_waiters()
        for subscriber in self._subscribers:
            subscriber.close()


@asynccontextmanager
async def open_client(
    url: str | Parameters | Sequence[str | Parameters] = "amqp://guest:guest@localhost/",
    config: Config | None = None,
    *,
    stream_factory: StreamFactory | None = None,
    rng: random.Random | None = None,
) -> AsyncIterator[Client]:
    """A client that stays connected, for the duration of an ``async with``.

    ``url`` is one AMQP URL or a list of them (failover: each new attempt
    tries the next).  The block starts at once, connected or not; calls wait
    for the connection.  Leaving the block closes the connection and stops
    every task the client started.

    Raises (out of the ``async with``):
        ConnectionLost: the client gave up - a fatal error such as 403
            ACCESS_REFUSED or 530 NOT_ALLOWED after ``max_fatal_attempts``
            tries (a :class:`ConnectionClosedByBroker` with the broker's
            reply code and text), or ``max_reconnect_attempts`` failures.
        ValueError: a bad URL or configuration.
    """
    config = config if config is not None else Config()
    urls = [url] if isinstance(url, (str, Parameters)) else list(url)
    if not urls:
        raise ValueError("open_client needs at least one URL")
    endpoints = [parse_url(u) if isinstance(u, str) else u for u in urls]
    client = Client(endpoints, config, stream_factory, rng)
    with unwrap_single_exception():
        async with trio.open_nursery() as nursery:
            client._nursery = nursery
            nursery.start_soon(client._supervise, name="trio-lavin supervisor")
            nursery.start_soon(client._health_poll, name="trio-lavin health poll")
            try:
                yield client
            finally:
                await client._close()
                nursery.cancel_scope.cancel()
