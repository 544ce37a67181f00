"""``publish`` and ``consume``: move a few messages from the shell.

``publish`` sends each argument, or else each line of stdin, as one message, in order, with
publisher confirms and ``mandatory`` (unless ``--no-confirm``): it exits 0 only when the
broker confirmed every message, and 1 on the first message that was nacked or could not be
routed.  ``consume`` prints each delivery's body as one line on stdout (or one JSON object
per line with ``--json``).
"""

from __future__ import annotations

import base64
import io
import math
import sys
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Final, cast

import trio

from .._client._channel import Channel
from .._client._delivery import BasicProperties, Confirmation, Delivery
from .._exceptions import PublishError
from .._params import Parameters
from .._sansio._properties import PROPERTY_FLAGS
from ._common import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    CLIError,
    Interrupt,
    Stopper,
    close_draining,
    connect,
    print_json,
)

#: Confirms ``publish`` waits for at most at once: messages from stdin are pipelined, not
#: published one round trip at a time, and memory stays bounded however long the input.
PUBLISH_WINDOW: Final = 1000

#: Bytes read from stdin at a time.
STDIN_CHUNK: Final = 64 * 1024


@dataclass(frozen=True)
class PublishOptions:
    """Everything ``publish`` was asked to do (already validated)."""

    params: Parameters
    #: None: read the messages from stdin, one per line.
    messages: tuple[bytes, ...] | None
    exchange: str = ""
    routing_key: str = ""
    #: A queue to declare (durable) first; None: declare nothing.
    declare: str | None = None
    persistent: bool = False
    content_type: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    confirm: bool = True
    #: Seconds to wait for a confirm.
    timeout: float = 30.0


async def read_lines(read: Callable[[int], bytes]) -> AsyncIterator[bytes]:
    """The lines that ``read(size)`` (such as ``sys.stdin.buffer.read1``) returns, without
    their line ending (``\\n`` or ``\\r\\n``); it is called in a worker thread that Ctrl-C
    can abandon."""
    pending = b""
    while True:
        chunk = await trio.to_thread.run_sync(read, STDIN_CHUNK, abandon_on_cancel=True)
        if not chunk:
            break
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            yield line.removesuffix(b"\r")
    if pending:
        yield pending.removesuffix(b"\r")


async def _from_tuple(messages: tuple[bytes, ...]) -> AsyncIterator[bytes]:
    for message in messages:
        yield message


async def run_publish(options: PublishOptions, interrupt: Interrupt) -> int:
    """Run ``publish``; return the exit code."""
    stopper = Stopper()  # at Ctrl-C, messages not yet confirmed are in an unknown state
    interrupt.on_interrupt(stopper.stop)
    properties = None
    if options.persistent or options.content_type or options.headers:
        properties = BasicProperties(
            delivery_mode=2 if options.persistent else None,
            content_type=options.content_type,
            headers=dict(options.headers) or None,
        )
    messages = (
        _from_tuple(options.messages)
        if options.messages is not None
        else read_lines(cast(io.BufferedReader, sys.stdin.buffer).read1)
    )
    with stopper.outer:
        async with connect(options.params, "trio-lavin publish") as connection:
            channel = await connection.channel()
            if options.declare is not None:
                await channel.queue_declare(options.declare, durable=True)
            if options.confirm:
                await channel.confirm_select()
            with stopper.working():
                await _publish_all(channel, messages, properties, options)
            await channel.aclose()
    return EXIT_OK


async def _publish_all(
    channel: Channel,
    messages: AsyncIterator[bytes],
    properties: BasicProperties | None,
    options: PublishOptions,
) -> None:
    window: deque[tuple[int, Confirmation]] = deque()
    number = 0
    async for body in messages:
        number += 1
        confirmation = await channel.basic_publish(
            body,
            exchange=options.exchange,
            routing_key=options.routing_key,
            properties=properties,
            mandatory=options.confirm,
        )
        if confirmation is not None:
            window.append((number, confirmation))
            if len(window) >= PUBLISH_WINDOW:
                await _confirmed(window.popleft(), options.timeout)
    while window:
        await _confirmed(window.popleft(), options.timeout)


async def _confirmed(item: tuple[int, Confirmation], seconds: float) -> None:
    number, confirmation = item
    with trio.move_on_after(seconds) as scope:
        try:
            await confirmation.wait()
        except PublishError as exc:
            raise CLIError(f"message {number} was not accepted: {exc}") from exc
    if scope.cancelled_caught:
        raise CLIError(f"the broker did not confirm message {number} within {seconds:g} s")


@dataclass(frozen=True)
class ConsumeOptions:
    """Everything ``consume`` was asked to do (already validated)."""

    params: Parameters
    queue: str
    #: Stop after this many deliveries (None: run until Ctrl-C or the timeout).
    count: int | None = None
    ack: bool = False
    #: None: ``count`` (at most 65535) if given, else 100 with ``ack``, else unlimited.
    prefetch: int | None = None
    declare: bool = False
    #: Seconds to run at most (None: no limit).
    timeout: float | None = None
    json: bool = False


def default_prefetch(count: int | None, ack: bool) -> int:
    """Without acks, a prefetch would stop the broker after that many deliveries, so it is
    only set to ``count`` (the broker then sends no more than we print); with acks, 100."""
    if count is not None:
        return min(count, 65_535)
    return 100 if ack else 0


def delivery_json(delivery: Delivery) -> dict[str, Any]:
    """A delivery as a JSON-able dict: ``body`` (UTF-8 text) or ``body_base64``, routing
    information, and the properties that are set (not empty)."""
    record: dict[str, Any] = {}
    try:
        record["body"] = delivery.body.decode("utf-8")
    except UnicodeDecodeError:
        record["body_base64"] = base64.b64encode(delivery.body).decode("ascii")
    record.update(
        exchange=delivery.exchange,
        routing_key=delivery.routing_key,
        redelivered=delivery.redelivered,
        delivery_tag=delivery.delivery_tag,
    )
    properties = {}
    for name in PROPERTY_FLAGS:
        value = getattr(delivery.properties, name)
        if value is not None:
            properties[name] = value
    if properties:
        record["properties"] = properties
    return record


async def run_consume(options: ConsumeOptions, interrupt: Interrupt) -> int:
    """Run ``consume``; return the exit code."""
    stopper = Stopper()  # at Ctrl-C, unacked deliveries go back to the queue
    interrupt.on_interrupt(stopper.stop)
    out = sys.stdout
    prefetch = options.prefetch
    if prefetch is None:
        prefetch = default_prefetch(options.count, options.ack)
    received = 0
    with stopper.outer:
        async with connect(options.params, "trio-lavin consume") as connection:
            channel = await connection.channel()
            if options.declare:
                await channel.queue_declare(options.queue, durable=True)
            if prefetch:
                await channel.basic_qos(prefetch)
            consumer = await channel.basic_consume(options.queue)
            timeout = options.timeout if options.timeout is not None else math.inf
            try:
                with stopper.working(), trio.move_on_after(timeout):
                    async for delivery in consumer:
                        if options.json:
                            print_json(delivery_json(delivery), out)
                        else:
                            out.buffer.write(delivery.body + b"\n")
                            out.buffer.flush()
                        received += 1
                        if options.ack:  # printed, so acked even if Ctrl-C came meanwhile
                            with trio.CancelScope(shield=True):
                                await delivery.ack()
                        if options.count is not None and received >= options.count:
                            break
            finally:
                await close_draining(connection, consumer)
    if stopper.stopped:
        return EXIT_INTERRUPTED
    if options.count is not None and received < options.count:
        within = f" within {options.timeout:g} s" if options.timeout is not None else ""
        raise CLIError(
            f"received {received} of {options.count} messages from queue {options.queue!r}{within}"
        )
    return EXIT_OK
