"""pika: ``BlockingConnection`` for every scenario except pipelined confirms, which the
blocking adapter cannot do (its ``confirm_delivery`` mode waits for each confirm), so
``publish_confirm`` uses ``SelectConnection`` with callbacks, as pika's own examples do.
It has one publish call, so ``publish`` runs the ``publish_nowait`` code.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from importlib.metadata import version
from typing import Any

import suite_common as common
from suite_common import Measurement, RunSpec, Timer
from suite_wire import ConfirmTracker

#: Seconds between passive queue.declare polls while waiting for the broker to hold all N.
POLL_INTERVAL = 0.001


def run(spec: RunSpec) -> Measurement:
    import pika

    if spec.scenario == "publish_confirm":
        measurement = _select_publish_confirm(pika, spec)
        measurement.variant = f"pika {version('pika')}, SelectConnection (publish_confirm)"
    else:
        measurement = _blocking(pika, spec)
        measurement.variant = f"pika {version('pika')}, BlockingConnection (the rest)"
    return measurement


def _properties(pika: Any, spec: RunSpec) -> Iterator[Any]:
    """Endless ``pika.BasicProperties``, one per message, for ``spec``'s message profile
    (None in the bare profile; pika's timestamp is an int)."""
    if spec.message_profile != "realistic":
        return itertools.repeat(None)
    return _realistic(pika)


def _realistic(pika: Any) -> Iterator[Any]:
    for message_id, traceparent in common.message_ids():
        yield pika.BasicProperties(
            content_type=common.CONTENT_TYPE,
            delivery_mode=common.PERSISTENT,
            message_id=message_id,
            timestamp=common.timestamp_seconds(),
            headers=common.headers(traceparent),
        )


def _check_deadline(deadline: float, what: str) -> None:
    if time.monotonic() > deadline:
        raise TimeoutError(f"{what} did not finish in time")


def _blocking(pika: Any, spec: RunSpec) -> Measurement:
    params = pika.URLParameters(spec.url)
    params.socket_timeout = 10
    params.blocked_connection_timeout = 30
    connection = pika.BlockingConnection(params)
    try:
        channel = connection.channel()
        queue = spec.queue
        body = common.body(spec.message_profile)
        properties = _properties(pika, spec)
        deadline = time.monotonic() + spec.deadline
        timer = Timer()
        if spec.scenario in ("publish_nowait", "publish"):
            timer.start()
            for props in itertools.islice(properties, spec.messages):
                channel.basic_publish(exchange="", routing_key=queue, body=body, properties=props)
            while channel.queue_declare(queue, passive=True).method.message_count < spec.messages:
                _check_deadline(deadline, "publishing")
                time.sleep(POLL_INTERVAL)
            timer.stop()
        elif spec.scenario == "publish_confirm_sync":
            channel.confirm_delivery()
            latencies: list[float] = []
            for i in range(spec.warmup + spec.messages):
                if i == spec.warmup:
                    timer.start()
                start = time.perf_counter()
                channel.basic_publish(
                    exchange="", routing_key=queue, body=body, properties=next(properties)
                )
                if i >= spec.warmup:
                    latencies.append(time.perf_counter() - start)
            timer.stop()
            return timer.measurement(spec.messages, latencies)
        elif spec.scenario == "consume":
            received = 0
            read = spec.message_profile == "realistic"
            seen: list[object] = [None, None]

            def on_message(ch: Any, method: Any, props: Any, _body: bytes) -> None:
                nonlocal received
                received += 1
                if read:
                    seen[0] = props.message_id
                    seen[1] = props.headers["traceparent"]
                if received % spec.ack_every == 0 or received == spec.messages:
                    ch.basic_ack(method.delivery_tag, multiple=True)

            timer.start()
            channel.basic_qos(prefetch_count=spec.prefetch)
            channel.basic_consume(queue, on_message)
            while received < spec.messages:
                connection.process_data_events(time_limit=1)
                _check_deadline(deadline, "consuming")
            timer.stop()
            if read:
                common.check_read(*seen)
        else:  # roundtrip
            arrived = 0

            def on_delivery(_ch: Any, _method: Any, _properties: Any, _body: bytes) -> None:
                nonlocal arrived
                arrived += 1

            channel.basic_consume(queue, on_delivery, auto_ack=True)
            latencies = []
            for i in range(spec.warmup + spec.messages):
                if i == spec.warmup:
                    timer.start()
                start = time.perf_counter()
                channel.basic_publish(
                    exchange="", routing_key=queue, body=body, properties=next(properties)
                )
                while arrived <= i:
                    connection.process_data_events(time_limit=1)
                    _check_deadline(deadline, "round trips")
                if i >= spec.warmup:
                    latencies.append(time.perf_counter() - start)
            timer.stop()
            return timer.measurement(spec.messages, latencies)
        return timer.measurement(spec.messages)
    finally:
        connection.close()


def _select_publish_confirm(pika: Any, spec: RunSpec) -> Measurement:
    """Publish with up to ``window`` unconfirmed, refilling from the confirm callback."""
    timer = Timer()
    confirms = ConfirmTracker()
    state = {"sent": 0, "done": False}
    failure: list[str] = []
    params = pika.URLParameters(spec.url)
    body = common.body(spec.message_profile)
    if spec.message_profile == "realistic":
        properties: Iterator[Any] = _realistic(pika)
    else:  # as before profiles existed: one empty BasicProperties for every message
        properties = itertools.repeat(pika.BasicProperties())

    def fill(channel: Any) -> None:
        room = min(spec.window - (state["sent"] - confirms.settled), spec.messages - state["sent"])
        for props in itertools.islice(properties, max(room, 0)):
            channel.basic_publish("", spec.queue, body, props)
        state["sent"] += max(room, 0)

    def on_confirm(frame: Any, channel: Any) -> None:
        method = frame.method
        if method.NAME == "Basic.Nack":
            confirms.nacked += 1
        confirms.settle(method.delivery_tag, method.multiple)
        if state["done"]:
            return
        if confirms.settled >= spec.messages:
            timer.stop()
            state["done"] = True
            connection.close()
        else:
            fill(channel)

    def on_channel(channel: Any) -> None:
        def on_selected(_frame: Any) -> None:
            timer.start()
            fill(channel)

        channel.confirm_delivery(lambda frame: on_confirm(frame, channel), on_selected)

    def on_open(conn: Any) -> None:
        conn.channel(on_open_callback=on_channel)

    def on_open_error(_conn: Any, error: Any) -> None:
        failure.append(f"connection failed: {error}")
        connection.ioloop.stop()

    def on_closed(_conn: Any, _reason: Any) -> None:
        connection.ioloop.stop()

    def on_deadline() -> None:
        if not state["done"]:
            state["done"] = True
            failure.append(f"not done after {spec.deadline} s")
            connection.close()

    connection = pika.SelectConnection(
        params,
        on_open_callback=on_open,
        on_open_error_callback=on_open_error,
        on_close_callback=on_closed,
    )
    connection.ioloop.call_later(spec.deadline, on_deadline)
    connection.ioloop.start()
    if failure:
        raise RuntimeError(failure[0])
    if confirms.nacked:
        raise RuntimeError(f"{confirms.nacked} messages were nacked")
    return timer.measurement(spec.messages)
