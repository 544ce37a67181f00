"""py-amqp (the ``amqp`` package, kombu's and celery's transport): a blocking client.

One-at-a-time confirms use its own ``confirm_publish=True`` mode.  It has no pipelined
confirm API, so ``publish_confirm`` turns confirm mode on with ``confirm_select()``,
publishes with the plain ``basic_publish`` and counts the broker's acks from the channel's
``basic_ack`` event while ``drain_events`` reads them.  It has one publish call, so
``publish`` runs the ``publish_nowait`` code.  Its natural API carries the properties in
the ``amqp.Message`` (``application_headers`` for the headers, an int ``timestamp``), one
made per message.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from importlib.metadata import version
from typing import Any

import suite_common as common
from suite_common import Measurement, RunSpec, Timer
from suite_wire import ConfirmTracker, parse_url

#: Seconds between passive queue.declare polls while waiting for the broker to hold all N.
POLL_INTERVAL = 0.001
#: Longest wait for one frame, in seconds.
DRAIN_TIMEOUT = 10.0


def run(spec: RunSpec) -> Measurement:
    import amqp

    host, port, user, password, vhost = parse_url(spec.url)
    connection = amqp.Connection(
        f"{host}:{port}",
        userid=user,
        password=password,
        virtual_host=vhost,
        connect_timeout=10,
        confirm_publish=spec.scenario == "publish_confirm_sync",
    )
    connection.connect()
    try:
        measurement = _SCENARIOS[spec.scenario](amqp, connection, spec)
    finally:
        connection.close()
    measurement.variant = f"amqp {version('amqp')}"
    return measurement


def _messages(amqp: Any, spec: RunSpec) -> Iterator[Any]:
    """Endless ``amqp.Message`` objects, one made per message, for ``spec``'s profile."""
    if spec.message_profile == "realistic":
        return _realistic(amqp)
    return _bare(amqp.Message)


def _bare(message: Callable[[bytes], Any]) -> Iterator[Any]:
    body = common.BODY
    while True:
        yield message(body)


def _realistic(amqp: Any) -> Iterator[Any]:
    body = common.REALISTIC_BODY
    for message_id, traceparent in common.message_ids():
        yield amqp.Message(
            body,
            content_type=common.CONTENT_TYPE,
            delivery_mode=common.PERSISTENT,
            message_id=message_id,
            timestamp=common.timestamp_seconds(),  # its property is a u64, not a datetime
            application_headers=common.headers(traceparent),
        )


def _drain(connection: Any, deadline: float, what: str) -> None:
    if time.monotonic() > deadline:
        raise TimeoutError(f"{what} did not finish in time")
    try:
        connection.drain_events(timeout=DRAIN_TIMEOUT)
    except TimeoutError:
        pass


def _publish_nowait(amqp: Any, connection: Any, spec: RunSpec) -> Measurement:
    channel = connection.channel()
    queue = spec.queue
    messages = _messages(amqp, spec)
    deadline = time.monotonic() + spec.deadline
    timer = Timer()
    timer.start()
    for message in itertools.islice(messages, spec.messages):
        channel.basic_publish(message, exchange="", routing_key=queue)
    while channel.queue_declare(queue, passive=True).message_count < spec.messages:
        if time.monotonic() > deadline:
            raise TimeoutError("publishing did not finish in time")
        time.sleep(POLL_INTERVAL)
    timer.stop()
    return timer.measurement(spec.messages)


def _publish_confirm(amqp: Any, connection: Any, spec: RunSpec) -> Measurement:
    channel = connection.channel()
    confirms = ConfirmTracker()

    def on_ack(delivery_tag: int, multiple: bool) -> None:
        confirms.settle(delivery_tag, multiple)

    def on_nack(delivery_tag: int, multiple: bool) -> None:
        confirms.nacked += 1
        confirms.settle(delivery_tag, multiple)

    channel.events["basic_ack"].add(on_ack)
    channel.events["basic_nack"].add(on_nack)
    channel.confirm_select()
    messages = _messages(amqp, spec)
    deadline = time.monotonic() + spec.deadline
    timer = Timer()
    timer.start()
    sent = 0
    while confirms.settled < spec.messages:
        room = min(spec.window - (sent - confirms.settled), spec.messages - sent)
        for message in itertools.islice(messages, max(room, 0)):
            channel.basic_publish(message, exchange="", routing_key=spec.queue)
        sent += max(room, 0)
        _drain(connection, deadline, "publishing")
    timer.stop()
    if confirms.nacked:
        raise RuntimeError(f"{confirms.nacked} messages were nacked")
    return timer.measurement(spec.messages)


def _confirm_sync(amqp: Any, connection: Any, spec: RunSpec) -> Measurement:
    channel = connection.channel()
    messages = _messages(amqp, spec)
    latencies: list[float] = []
    timer = Timer()
    for i in range(spec.warmup + spec.messages):
        if i == spec.warmup:
            timer.start()
        start = time.perf_counter()
        channel.basic_publish(
            next(messages), exchange="", routing_key=spec.queue, confirm_timeout=10
        )
        if i >= spec.warmup:
            latencies.append(time.perf_counter() - start)
    timer.stop()
    return timer.measurement(spec.messages, latencies)


def _consume(amqp: Any, connection: Any, spec: RunSpec) -> Measurement:
    channel = connection.channel()
    received = 0
    read = spec.message_profile == "realistic"
    seen: list[object] = [None, None]

    def on_message(message: Any) -> None:
        nonlocal received
        received += 1
        if read:
            seen[0] = message.properties["message_id"]
            seen[1] = message.headers["traceparent"]
        if received % spec.ack_every == 0 or received == spec.messages:
            channel.basic_ack(message.delivery_tag, multiple=True)

    deadline = time.monotonic() + spec.deadline
    timer = Timer()
    timer.start()
    channel.basic_qos(0, spec.prefetch, False)
    channel.basic_consume(spec.queue, callback=on_message)
    while received < spec.messages:
        _drain(connection, deadline, "consuming")
    timer.stop()
    if read:
        common.check_read(*seen)
    return timer.measurement(spec.messages)


def _roundtrip(amqp: Any, connection: Any, spec: RunSpec) -> Measurement:
    channel = connection.channel()
    arrived = 0

    def on_message(_message: Any) -> None:
        nonlocal arrived
        arrived += 1

    channel.basic_consume(spec.queue, callback=on_message, no_ack=True)
    messages = _messages(amqp, spec)
    deadline = time.monotonic() + spec.deadline
    latencies: list[float] = []
    timer = Timer()
    for i in range(spec.warmup + spec.messages):
        if i == spec.warmup:
            timer.start()
        start = time.perf_counter()
        channel.basic_publish(next(messages), exchange="", routing_key=spec.queue)
        while arrived <= i:
            _drain(connection, deadline, "round trips")
        if i >= spec.warmup:
            latencies.append(time.perf_counter() - start)
    timer.stop()
    return timer.measurement(spec.messages, latencies)


_SCENARIOS = {
    "publish_nowait": _publish_nowait,
    "publish": _publish_nowait,
    "publish_confirm": _publish_confirm,
    "publish_confirm_sync": _confirm_sync,
    "consume": _consume,
    "roundtrip": _roundtrip,
}
