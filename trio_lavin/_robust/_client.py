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
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, NoReturn, TypeVar

import trio

from .._client._channel import Channel
from .._client._connection import Connection, open_connection
from .._client._counters import DeliveryCounters
from .._client._delivery import Delivery
from .._exceptions import (
    AMQPConnectionError,
    AMQPError,
    ChannelClosed,
    CommandRefused,
    ConnectionClosed,
)
from .._io._transport import StreamFactory
from .._params import Parameters, parse_url
from .._sansio._errors import ProtocolError
from .._util import unwrap_single_exception
from ._config import Config
from ._consumer import RecoveringConsumer
from ._declarations import Declarations
from ._events import ClientEvent, RecoveryFailed
from ._message import (
    DEFAULT_CONFIRM_WINDOW,
    DEFAULT_MAX_MESSAGE_SIZE,
    BufferPolicy,
    PublishMode,
)
from ._offsets import StreamOffset, check_stream_offset
from ._producer import Producer
from ._rpc import DEFAULT_RPC_PREFETCH, DEFAULT_RPC_TIMEOUT, RpcCaller, serve_rpc
from ._statistics import ClientStatistics, consumer_statistics, summarize
from ._supervisor import (
    ClientState,
    Connect,
    Detection,
    Stop,
    Supervisor,
    Wait,
)
from ._worker import Serving

logger = logging.getLogger("trio_lavin.client")

T = TypeVar("T")

#: Errors that mean "this connection attempt failed" (anything else is a bug
#: and propagates).
CONNECT_ERRORS = (AMQPError, ProtocolError, OSError, TimeoutError, trio.BrokenResourceError)

#: Events kept for a slow ``events()`` subscriber before it misses some.
EVENT_BUFFER = 1_000


class Client(Declarations, Serving):
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
        Declarations.__init__(self)
        Serving.__init__(self)
        self._subscribers: list[trio.MemorySendChannel[ClientEvent]] = []
        self._consumers: set[RecoveringConsumer] = set()
        self._producers: list[Producer] = []
        #: Consumer counters per queue, kept for the client's life.
        self._delivery_counters: dict[str, DeliveryCounters] = {}
        #: (bytes sent, bytes received) by finished connections, and the
        #: live (or last) connection; replaced as one tuple, so a reader in
        #: another thread never counts a connection twice or not at all.
        self._traffic: tuple[int, int, Connection | None] = (0, 0, None)
        #: ``time.time()`` of the last successful connection, for readers
        #: outside this trio run.
        self._last_connected_wall: float | None = None
        self._trio_token = trio.lowlevel.current_trio_token()
        #: When and why the last connection was lost (for the reconnect line).
        self._lost: tuple[float, str] | None = None
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
            self.raise_if_finished()
            connection = self._connection
            if connection is not None and connection.is_open:
                return connection
            with trio.CancelScope() as scope:
                self._stop_waiters.append(scope)
                try:
                    await self._connected.wait()
                finally:
                    self._stop_waiters.remove(scope)

    def raise_if_finished(self) -> None:
        """Internal: raise why the client will not connect again, if it will not.

        Raises:
            ConnectionLost: the client gave up.
            ConnectionClosed: the client was closed.
        """
        state = self._supervisor.state
        if state is ClientState.STOPPED:
            raise self._supervisor.final_error()
        if state is ClientState.CLOSED:
            raise ConnectionClosed("the client was closed")

    def statistics(self) -> ClientStatistics:
        """A frozen snapshot of the client's counters and state.

        Cheap (it reads counters the client keeps anyway; nothing is
        counted at call time) and never blocks.  It may be called from
        another thread, for example by a Prometheus exporter's HTTP thread:
        it only reads, and copies every container before iterating it; the
        values are then each exact, but a message moving on meanwhile may be
        counted in two places (or none) of one snapshot.
        """
        last_connected_at = self._supervisor.last_connected_at
        since: float | None = None
        if last_connected_at is not None:
            if self._in_own_run():
                since = trio.current_time() - last_connected_at
            elif self._last_connected_wall is not None:
                since = time.time() - self._last_connected_wall
        sent, received, connection = self._traffic
        if connection is not None:
            sent += connection.bytes_sent
            received += connection.bytes_received
        return summarize(
            self._supervisor,
            connected=self.connected,
            seconds_since_connect=since,
            bytes_sent=sent,
            bytes_received=received,
            recovery_failures=self._recovery_failures,
            events_dropped=self._events_dropped,
            producers=tuple(producer.statistics() for producer in tuple(self._producers)),
            consumers=consumer_statistics(self._delivery_counters, tuple(self._consumers)),
            workers=self._worker_snapshots(),
        )

    def _in_own_run(self) -> bool:
        try:
            return trio.lowlevel.current_trio_token() is self._trio_token
        except RuntimeError:
            return False

    @asynccontextmanager
    async def events(self) -> AsyncIterator[trio.MemoryReceiveChannel[ClientEvent]]:
        """Subscribe to the client's events: every :class:`StateChange`,
        :class:`QueueRenamed`, :class:`RecoveryFailed`,
        :class:`PublishingPaused` and :class:`PublishingResumed` from now on::

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

    def report(self, event: ClientEvent) -> None:
        """Internal: hand ``event`` to the subscribers of :meth:`events`."""
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
            self.report(change)
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
                final = sup.final_error()
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
            logger.debug("connecting to %s (attempt %d)", params.endpoint, sup.failures + 1)
            try:
                connection = await self._start_connection(params)
            except CONNECT_ERRORS as exc:
                if self._closing:
                    return
                now = trio.current_time()
                sup.connect_failed(now, exc)
                if sup.state is ClientState.STOPPED:
                    then = ""
                elif sup.retry_at <= now:
                    then = "; trying the next URL"
                else:
                    then = f"; retrying in {sup.retry_at - now:.2f} s"
                logger.warning("connecting to %s failed: %s%s", params.endpoint, exc, then)
                continue
            if self._closing:
                return
            sup.connected(trio.current_time())
            self._last_connected_wall = time.time()
            sent, received, previous = self._traffic
            if previous is not None:
                sent += previous.bytes_sent
                received += previous.bytes_received
            self._traffic = (sent, received, connection)
            self._connection = connection
            self._connected.set()
            self._log_connected(connection)
            self._publish_changes()
            error = await connection.wait_closed()
            self._connection = None
            self._control = None
            self._connected = trio.Event()
            if self.finished:
                return
            detected = Detection.POLL if connection.failed_by_poll else Detection.EVENT
            sup.lost(trio.current_time(), error, detected)
            self._lost = (trio.current_time(), str(error))
            then = (
                "giving up"
                if sup.state is ClientState.STOPPED
                else f"reconnecting in {sup.retry_at - trio.current_time():.2f} s"
            )
            logger.warning(
                "lost the connection to %s (%s, detected by %s); %s",
                params.endpoint,
                str(error),  # not the error: a kept record would keep the connection
                detected.value,
                then,
            )

    def _log_connected(self, connection: Connection) -> None:
        """The one INFO line of a connection or reconnection."""
        tuning = (
            f"heartbeat {connection.heartbeat} s, frame_max {connection.frame_max}, "
            f"channel_max {connection.channel_max}"
        )
        lost = self._lost
        if lost is None:
            logger.info("connected to %s (%s)", connection.params.endpoint, tuning)
            return
        lost_at, cause = lost
        logger.info(
            "reconnected to %s after %.2f s (reconnect %d; the connection was lost: %s; %s)",
            connection.params.endpoint,
            trio.current_time() - lost_at,
            self._supervisor.reconnects,
            cause,
            tuning,
        )

    def _wake_waiters(self) -> None:
        """The client finished: wake whoever waits for a connection."""
        for scope in list(self._stop_waiters):
            scope.cancel()
        for consumer in list(self._consumers):
            consumer.client_finished()

    async def _start_connection(self, params: Parameters) -> Connection:
        """Connect to ``params`` and recover the topology, within
        ``endpoint_timeout`` if set; the connection then runs in the
        client's nursery."""
        assert self._nursery is not None
        limit = self.config.endpoint_timeout
        if limit is None:
            connection: Connection = await self._nursery.start(self._run_connection, params)
            return connection
        with trio.move_on_after(limit):
            started: Connection = await self._nursery.start(self._run_connection, params)
            return started
        raise TimeoutError(f"no connection to {params.endpoint} within endpoint_timeout {limit} s")

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
            with trio.move_on_after(config.connect_timeout) as recovery:
                await self._recover(connection)
            if recovery.cancelled_caught:
                # This attempt failed (trio's TooSlowError would end the client).
                raise TimeoutError(
                    f"recovering the declarations on {params.endpoint} took longer than "
                    f"connect_timeout ({config.connect_timeout} s)"
                )
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
            if (
                now - connection.last_received < interval
                and connection.sending.write_started is None
            ):
                continue  # traffic proves liveness
            problem = connection.health_problem(now, write_timeout)
            if problem is not None:
                # The supervisor logs the loss (detected by poll) in its one line.
                logger.debug("health poll: %s", problem)
                connection.fail_by_poll(problem)

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
                if attempt == attempts or not connection.is_open:
                    raise
                await trio.sleep(self.config.channel_retry_delay)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _recover(self, connection: Connection) -> None:
        """Declare the recorded topology again, then re-subscribe consumers."""
        await self._replay_topology(connection)
        for consumer in list(self._consumers):
            try:
                await consumer.subscribe(connection)
            except CommandRefused as exc:
                self._consumers.discard(consumer)  # not subscribed again
                consumer.end_with(exc)
                self._recovery_failed(repr(consumer), exc, "it ends with that error")
                raise
            except ChannelClosed as exc:
                consumer.subscription_refused(exc)
                self._recovery_failed(repr(consumer), exc, "it tries again with backoff")

    def _recovery_failed(self, what: str, error: ChannelClosed, then: str) -> None:
        """Report an entity the broker refused to recover: one WARNING, the
        ``recovery_failures`` count, and a :class:`RecoveryFailed` event."""
        self._recovery_failures += 1
        logger.warning("could not recover %s: %s; %s", what, error, then)
        self.report(RecoveryFailed(what, error, trio.current_time()))

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
        message_ids: bool = False,
    ) -> Producer:
        """A buffered producer for ``queue`` (through the default exchange),
        or for ``exchange`` with ``routing_key``.

        ``publish_timeout`` is the default limit of ``producer.publish()``.
        ``message_ids`` gives every message without a ``message_id`` a unique
        one (a UUID4 in hex), kept when it is republished after a reconnect,
        so a worker's duplicate window (:meth:`serve`) can skip the copies.
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
            rng=self._supervisor.rng,
            message_ids=message_ids,
        )
        self._producers.append(producer)
        self._nursery.start_soon(
            producer.run_sender, name=f"trio-lavin producer {producer.target}"
        )
        return producer

    _shared_producer: Producer | None = None

    def shared_producer(self) -> Producer:
        """Internal: the client's producer for copies to any queue (a worker's
        retries and dead letters): default exchange, CONFIRM, mandatory, and
        a size limit that takes any body a consumer of this client received."""
        if self._shared_producer is None:
            self._shared_producer = self.producer(
                exchange="",
                routing_key="",
                mandatory=True,
                max_message_size=max(DEFAULT_MAX_MESSAGE_SIZE, self.config.max_body_size),
            )
        return self._shared_producer

    def spawn(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Internal: run ``fn(*args)`` in the client's nursery (a producer's
        async ``on_drop`` callbacks); nothing once the client closed."""
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
        stream_offset: StreamOffset | None = None,
    ) -> AsyncIterator[RecoveringConsumer]:
        """Consume ``queue`` on a channel of its own, across reconnects.

        Iterating yields :class:`~trio_lavin.Delivery` objects; after a
        reconnect, a server ``basic.cancel`` or a broker channel close, the
        consumer subscribes again by itself (with backoff while the broker
        refuses, e.g. 404 while the queue is gone).  ``delivery.ack()``
        returns False for deliveries from a channel that has since died (the
        broker redelivers those).

        ``stream_offset`` reads a stream queue from there: "first", "last",
        "next", an offset, a datetime, or an interval such as "1h".  Each
        re-subscription starts at the first offset the application has not
        settled, and what it settled is not handed over again (see
        docs/streams.md); the consumer's ``stream_offset`` is where to start
        next run.  A stream needs a prefetch; with ``no_ack`` the consumer
        acks each delivery as it hands it over.

        Raises:
            ChannelClosed: entering the block, when the broker refuses the
                first subscription (404: no such queue; 405: another
                connection's exclusive queue): it is not tried again.
            CommandRefused: from the iteration, when the broker refused a
                subscription with a hard error (closing the connection).
            ValueError: ``prefetch`` is not in 0..65535 (1..65535 for a
                stream), or ``stream_offset`` is given twice (in
                ``arguments`` too) or is not an offset.
        """
        if not 0 <= prefetch <= 65_535:
            raise ValueError(f"prefetch must be in 0..65535, not {prefetch!r}")
        if stream_offset is not None:
            check_stream_offset(stream_offset, prefetch, arguments)
        counters = self._delivery_counters.get(queue)
        if counters is None:
            counters = self._delivery_counters[queue] = DeliveryCounters()
        consumer = RecoveringConsumer(
            self,
            queue,
            prefetch,
            no_ack,
            exclusive,
            consumer_tag,
            arguments,
            counters,
            rng=self._supervisor.rng,
            stream_offset=stream_offset,
        )
        self._consumers.add(consumer)
        try:
            while True:
                connection = await self.wait_connected()
                try:
                    await consumer.subscribe(connection)
                except (AMQPConnectionError, ChannelClosed) as exc:
                    if connection.is_open or isinstance(exc, CommandRefused):
                        raise  # refused: asking again would be refused again
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

    def start(self, nursery: trio.Nursery) -> None:
        """Internal: run the client's tasks in ``nursery`` (:func:`open_client`'s)."""
        self._nursery = nursery
        nursery.start_soon(self._supervise, name="trio-lavin supervisor")
        nursery.start_soon(self._health_poll, name="trio-lavin health poll")

    @property
    def nursery(self) -> trio.Nursery | None:
        """Internal: the nursery the client's tasks run in; None once it is
        closing (nothing new may start then)."""
        return None if self._closing else self._nursery

    async def shut_down(self) -> None:
        """Internal: close the connection and give up on what is pending
        (:func:`open_client`, leaving its block)."""
        self._closing = True
        self._supervisor_scope.cancel()
        for producer in self._producers:
            producer.give_up()
        self._supervisor.close(trio.current_time())
        self._publish_changes()
        connection = self._connection
        if connection is not None:
            with trio.CancelScope(shield=True):
                await connection.aclose()
            logger.info("closed the connection to %s", connection.params.endpoint)
        self._wake_waiters()
        for subscriber in self._subscribers:
            subscriber.close()

    # -- RPC over direct reply-to ----------------------------------------------------

    _rpc_caller: RpcCaller | None = None

    async def rpc_call(
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
        """Send a request and return the body of its reply (RPC over direct
        reply-to, ``amq.rabbitmq.reply-to``: no reply queue is declared).

        The request is published ``mandatory`` to ``exchange`` (default: the
        default exchange, so ``routing_key`` is the server's queue) with a
        fresh correlation id, ``reply_to`` set, and ``expiration`` set to the
        time left of ``timeout``, on a channel of the client that consumes
        the replies; concurrent calls share that channel.  ``timeout`` (in
        seconds, or None for no limit) bounds the whole call: waiting for a
        connection, publishing and the reply.

        A call is never retried once its request was sent: after a reconnect
        the server may or may not have handled it.  Retry yourself when the
        request is idempotent.

        Cancellation: if cancelled, the caller stops waiting; the request may
        already have been sent, and a reply arriving later is discarded.

        Raises:
            RpcTimeout: no reply within ``timeout`` (also a ``TimeoutError``).
            RpcUnroutable: the broker returned the request: nothing is bound
                to ``routing_key`` (no server queue).
            RpcRemoteError: the server's handler raised (see
                :meth:`serve_rpc`).
            RpcReplyLost: the request's channel or connection closed before
                the reply came (also a :class:`ConnectionLost`).
            RpcError: the broker refused to consume ``amq.rabbitmq.reply-to``
                (it does not support direct reply-to).
            ConnectionClosed: the client was closed, before or during the
                call.
            ConnectionLost: the client gave up (see :func:`open_client`).
            ValueError: ``timeout`` is not a positive number or None.
        """
        if self._rpc_caller is None:
            self._rpc_caller = RpcCaller(self)
        return await self._rpc_caller.call(
            routing_key,
            body,
            exchange=exchange,
            timeout=timeout,
            headers=headers,
            content_type=content_type,
        )

    async def serve_rpc(
        self,
        queue: str,
        handler: Callable[[Delivery], Awaitable[bytes]],
        *,
        prefetch: int = DEFAULT_RPC_PREFETCH,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> NoReturn:
        """Answer the RPC requests arriving on ``queue`` until cancelled.

        Run it in a nursery (``await nursery.start(client.serve_rpc, queue,
        handler)`` returns once it consumes).  For each request it calls
        ``await handler(delivery)``, publishes the returned bytes to the
        request's ``reply_to`` with its ``correlation_id``, and then acks the
        request.  Up to ``prefetch`` requests are handled concurrently.  The
        consumer is a recovering one: it re-subscribes after reconnects.

        Errors: when the handler raises an :class:`Exception`, it is logged
        (logger ``trio_lavin.rpc``) and the caller gets an error reply, raised
        there as :class:`RpcRemoteError` with ``"ExceptionType: message"``;
        the request is acked (not redelivered, as it would fail again).  A
        request without ``reply_to`` is rejected without requeueing (it goes
        to the queue's dead-letter exchange, if any) and the handler is not
        called.  If the channel dies before the ack, the broker redelivers
        the request and it is handled again (at-least-once): make handlers
        idempotent or check ``delivery.redelivered``.

        Cancellation: requests being handled are not acked, so the broker
        redelivers them.

        Raises:
            ValueError: ``prefetch`` is less than 1.
            ConnectionClosed, ConnectionLost: the client was closed or gave
                up.
        """
        await serve_rpc(self, queue, handler, prefetch=prefetch, task_status=task_status)


@asynccontextmanager
async def open_client(
    url: str | Parameters | Sequence[str | Parameters] = "amqp://guest:guest@localhost/",
    config: Config | None = None,
    *,
    stream_factory: StreamFactory | None = None,
    rng: random.Random | None = None,
) -> AsyncIterator[Client]:
    """A client that stays connected, for the duration of an ``async with``.

    ``url`` is one AMQP URL or a list of them, e.g. the nodes of a cluster
    (failover: each new attempt tries the next one; ``Config.shuffle_urls``
    says whether the client goes round them in a random order, the default,
    or in the order given; a failed attempt moves on to the next URL at once,
    and only a round in which every URL failed is followed by a backoff wait;
    ``Config.endpoint_timeout`` bounds the time spent on one).  The block
    starts at once, connected or not; calls wait for the connection.  Leaving
    the block closes the connection and stops every task the client started.

    Raises (out of the ``async with``):
        ConnectionLost: the client gave up - a fatal error such as 403
            ACCESS_REFUSED or 530 NOT_ALLOWED after ``max_fatal_attempts``
            tries (a :class:`ConnectionClosedByBroker` with the broker's
            reply code and text), ``max_reconnect_attempts`` failures, or
            ``max_broker_closes`` connections in a row closed by the broker
            with the same hard error (a :class:`ConnectionClosedByBroker`
            that names it).
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
            client.start(nursery)
            try:
                yield client
            finally:
                await client.shut_down()
                nursery.cancel_scope.cancel()
