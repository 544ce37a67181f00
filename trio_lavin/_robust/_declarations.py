"""What a client declares (exchanges, queues, bindings): made on its
control channel, recorded in a :class:`~._topology.Topology`, and declared
again on every new connection.  :class:`Declarations` is a base class of
:class:`~._client.Client`."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import trio

from .._client._channel import Channel, QueueDeclareOk
from .._client._connection import Connection
from .._exceptions import AMQPConnectionError, ChannelClosed, CommandRefused
from .._queues import QueueType, check_queue_type
from .._sansio._errors import PRECONDITION_FAILED
from ._events import ClientEvent, QueueRenamed
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


class Declarations:
    """The declaring half of a client (see the module doc)."""

    if TYPE_CHECKING:
        # Provided by Client.
        _connection: Connection | None

        async def wait_connected(self) -> Connection: ...

        async def open_channel(self, connection: Connection | None = None) -> Channel: ...

        def report(self, event: ClientEvent) -> None: ...

        def _recovery_failed(self, what: str, error: ChannelClosed, then: str) -> None: ...

    def __init__(self) -> None:
        self._topology = Topology()
        self._control: Channel | None = None
        self._control_lock = trio.Lock()

    async def _replay_topology(self, connection: Connection) -> None:
        """Declare the recorded topology again on a new ``connection``, in
        order; an entity the broker refuses is reported and forgotten."""
        self._control = None
        channel = await self.open_channel(connection)
        for entry in list(self._topology.entries):
            try:
                await self._apply(channel, entry)
            except ChannelClosed as exc:
                # Refused; the rest goes on.  What the broker will refuse
                # whenever asked (406: it exists with other settings; a hard
                # error) is forgotten.  Other refusals may pass (404: the
                # exchange of a binding is being re-created; 405: the old
                # connection still holds an exclusive queue): kept, and asked
                # again after the next reconnect.
                if isinstance(exc, CommandRefused) or exc.reply_code == PRECONDITION_FAILED:
                    self._topology.discard(entry)
                    then = "forgotten"
                else:
                    then = "kept: declared again after the next reconnect"
                self._recovery_failed(entry.describe(), exc, then)
                if isinstance(exc, CommandRefused):
                    raise  # the connection is gone: the next one recovers the rest
                channel = await self.open_channel(connection)
        self._control = channel

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
                    self.report(QueueRenamed(old, ok.queue, trio.current_time()))
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
        (declarations are idempotent).  A refusal is raised, never repeated:
        :class:`ChannelClosed` (404, 406, ...) or, when the broker closed the
        whole connection over the call, :class:`CommandRefused`."""
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
            CommandRefused: the broker refused it with a hard error, closing
                the connection (e.g. 503 for an exchange type it does not
                know); nothing is remembered, and the client reconnects.
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
        queue_type: QueueType | None = None,
    ) -> QueueDeclareOk:
        """Declare a queue and remember it for reconnects.

        An empty ``name`` makes a server-named queue: use the returned name;
        after a reconnect the queue is declared again under a new name
        (reported as a :class:`QueueRenamed` event), and the client keeps
        translating the first name to the current one in its own calls.
        Exclusive and auto-delete queues are declared again too, since they
        disappear with the connection.

        ``queue_type`` asks for a classic, quorum or stream queue (it sets
        ``x-queue-type``; :func:`~trio_lavin.queue_arguments` builds the
        type's other arguments).  In a cluster use QUORUM: a quorum queue
        keeps its messages when a node goes down.

        Raises:
            ValueError: a quorum or stream queue that is not durable, or is
                exclusive or auto-delete; ``queue_type`` disagreeing with
                ``arguments["x-queue-type"]`` (nothing is sent).
            ChannelClosed: the broker refused (e.g. 406: it exists with other
                settings); nothing is remembered.  :class:`CommandRefused` (a
                subclass) when it closed the connection over it.
        """
        arguments = check_queue_type(
            name,
            queue_type,
            durable=durable,
            exclusive=exclusive,
            auto_delete=auto_delete,
            arguments=arguments,
        )

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
