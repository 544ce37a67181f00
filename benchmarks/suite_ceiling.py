"""The two ceiling clients: the wire codec of ``suite_wire.py`` over blocking sockets
(``socket``) and over trio streams (``trio-socket``).

Publishing writes pre-encoded frame triples, many per ``send``; receiving reads 256 KiB at
a time and parses with :class:`suite_wire.Wire`.  Nothing else happens per message, so
these bound what any Python client can do against this broker on this machine.

In the ``realistic`` message profile every message is encoded with its own properties
(message_id, traceparent, timestamp) before the timed part (:class:`Outgoing`); consumers
count deliveries without decoding their properties.  ``publish`` is ``publish_nowait`` here,
and ``publish_confirm_tasks`` is pipelined confirms with a window of ``tasks`` (the most a
client with that many tasks can have unconfirmed).  The trio ceiling's ``enqueue`` is the
scale of that row: a bare ``trio.MemorySendChannel.send_nowait`` loop.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import replace

import suite_common as common
import suite_wire as w
import trio
from suite_common import Measurement, NotSupported, RunSpec, Timer

#: Messages per write when publishing without confirms.
PUBLISH_BATCH = 1000
#: Seconds between passive queue.declare polls while waiting for the broker to hold all N.
POLL_INTERVAL = 0.001


class Outgoing:
    """The publish frames of a run's messages, handed out in order by :meth:`take`.

    Bare profile: one pre-encoded message, repeated (as before profiles existed).
    Realistic profile: all ``count`` messages, each with its own properties, encoded into
    one buffer up front (they all have the same size), handed out as slices of it.
    """

    def __init__(self, spec: RunSpec, count: int) -> None:
        body = common.body(spec.message_profile)
        self._one: bytes | None = None
        self._size = 0
        self._position = 0
        self._all = memoryview(b"")
        if spec.message_profile != "realistic":
            self._one = w.publish_frames(1, "", spec.queue, body)
            return
        frames = [
            w.publish_frames(1, "", spec.queue, body, properties)
            for properties in itertools.islice(w.realistic_properties(), count)
        ]
        self._size = len(frames[0])
        if any(len(f) != self._size for f in frames):
            raise RuntimeError("realistic messages of different sizes")
        self._all = memoryview(b"".join(frames))

    def take(self, n: int) -> bytes | memoryview:
        """The frames of the next ``n`` messages."""
        if self._one is not None:
            return self._one * n
        start = self._position
        self._position += n * self._size
        if self._position > len(self._all):
            raise RuntimeError("more messages taken than were encoded")
        return self._all[start : self._position]


def run(spec: RunSpec) -> Measurement:
    if spec.scenario == "enqueue":
        if spec.client == "socket":
            raise NotSupported("frames are pre-encoded")
        measurement = trio.run(_trio_enqueue_scale, spec)
        measurement.variant = f"trio {trio.__version__} SocketStream, struct-encoded frames"
        return measurement
    if spec.scenario == "publish_confirm_tasks":
        spec = replace(spec, window=spec.tasks)
    if spec.client == "socket":
        measurement = _run_socket(spec)
        measurement.variant = "blocking socket, struct-encoded frames"
    else:
        measurement = trio.run(_run_trio, spec)
        measurement.variant = f"trio {trio.__version__} SocketStream, struct-encoded frames"
    return measurement


# -- blocking sockets ----------------------------------------------------------------------


def _run_socket(spec: RunSpec) -> Measurement:
    client = w.SocketClient(spec.url)
    try:
        return _SOCKET_SCENARIOS[spec.scenario](client, spec)
    finally:
        client.close()


def _check_deadline(deadline: float, what: str) -> None:
    if time.monotonic() > deadline:
        raise TimeoutError(f"{what} did not finish in time")


def _socket_publish_nowait(client: w.SocketClient, spec: RunSpec) -> Measurement:
    outgoing = Outgoing(spec, spec.messages)
    deadline = time.monotonic() + spec.deadline
    timer = Timer()
    timer.start()
    sent = 0
    while sent < spec.messages:
        n = min(PUBLISH_BATCH, spec.messages - sent)
        client.sock.sendall(outgoing.take(n))
        sent += n
    while client.message_count(spec.queue) < spec.messages:
        _check_deadline(deadline, "publishing")
        time.sleep(POLL_INTERVAL)
    timer.stop()
    return timer.measurement(spec.messages)


def _socket_publish_confirm(client: w.SocketClient, spec: RunSpec) -> Measurement:
    client.confirm_select()
    outgoing = Outgoing(spec, spec.messages)
    confirms = client.wire.confirms
    deadline = time.monotonic() + spec.deadline
    timer = Timer()
    timer.start()
    sent = 0
    while confirms.settled < spec.messages:
        room = min(spec.window - (sent - confirms.settled), spec.messages - sent)
        if room > 0:
            client.sock.sendall(outgoing.take(room))
            sent += room
        client.receive()
        _check_deadline(deadline, "publishing")
    timer.stop()
    if confirms.nacked:
        raise w.WireError(f"{confirms.nacked} messages were nacked")
    return timer.measurement(spec.messages)


def _socket_confirm_sync(client: w.SocketClient, spec: RunSpec) -> Measurement:
    client.confirm_select()
    outgoing = Outgoing(spec, spec.warmup + spec.messages)
    confirms = client.wire.confirms
    deadline = time.monotonic() + spec.deadline
    latencies: list[float] = []
    timer = Timer()
    for i in range(spec.warmup + spec.messages):
        if i == spec.warmup:
            timer.start()
        start = time.perf_counter()
        client.sock.sendall(outgoing.take(1))
        while confirms.settled <= i:
            client.receive()
            _check_deadline(deadline, "publishing")
        if i >= spec.warmup:
            latencies.append(time.perf_counter() - start)
    timer.stop()
    return timer.measurement(spec.messages, latencies)


def _socket_consume(client: w.SocketClient, spec: RunSpec) -> Measurement:
    wire = client.wire
    wire.ack_every = spec.ack_every
    wire.ack_target = spec.messages
    deadline = time.monotonic() + spec.deadline
    timer = Timer()
    timer.start()
    client.call(w.basic_qos(1, spec.prefetch), w.QOS_OK)
    client.sock.sendall(w.basic_consume(1, spec.queue, "ceiling", no_ack=False))
    while wire.delivered < spec.messages:
        client.receive()
        _check_deadline(deadline, "consuming")
    timer.stop()
    return timer.measurement(spec.messages)


def _socket_roundtrip(client: w.SocketClient, spec: RunSpec) -> Measurement:
    wire = client.wire
    client.call(w.basic_consume(1, spec.queue, "ceiling", no_ack=True), w.CONSUME_OK)
    outgoing = Outgoing(spec, spec.warmup + spec.messages)
    deadline = time.monotonic() + spec.deadline
    latencies: list[float] = []
    timer = Timer()
    for i in range(spec.warmup + spec.messages):
        if i == spec.warmup:
            timer.start()
        start = time.perf_counter()
        client.sock.sendall(outgoing.take(1))
        while wire.delivered <= i:
            client.receive()
            _check_deadline(deadline, "round trips")
        if i >= spec.warmup:
            latencies.append(time.perf_counter() - start)
    timer.stop()
    return timer.measurement(spec.messages, latencies)


_SOCKET_SCENARIOS = {
    "publish_nowait": _socket_publish_nowait,
    "publish": _socket_publish_nowait,
    "publish_confirm": _socket_publish_confirm,
    "publish_confirm_tasks": _socket_publish_confirm,
    "publish_confirm_sync": _socket_confirm_sync,
    "consume": _socket_consume,
    "roundtrip": _socket_roundtrip,
}


# -- trio streams --------------------------------------------------------------------------


class TrioClient:
    """The wire codec over a ``trio.SocketStream`` (TCP_NODELAY is trio's default)."""

    def __init__(self, stream: trio.SocketStream, wire: w.Wire) -> None:
        self.stream = stream
        self.wire = wire

    @classmethod
    async def connect(cls, url: str) -> TrioClient:
        host, port, user, password, vhost = w.parse_url(url)
        stream = await trio.open_tcp_stream(host, port)
        client = cls(stream, w.Wire(1))
        await stream.send_all(w.PROTOCOL_HEADER)
        await client.wait_reply(w.START)
        await stream.send_all(w.start_ok(user, password))
        tune = await client.wait_reply(w.TUNE)
        await stream.send_all(w.tune_ok(tune) + w.connection_open(vhost))
        await client.wait_reply(w.OPEN_OK)
        await client.call(w.channel_open(1), w.CHANNEL_OPEN_OK)
        return client

    async def receive(self) -> None:
        data = await self.stream.receive_some(w.RECEIVE_SIZE)
        if not data:
            raise w.WireError("the broker closed the TCP connection")
        self.wire.feed(data)
        out = self.wire.pending_output()
        if out:
            await self.stream.send_all(out)

    async def wait_reply(self, expected: int) -> bytes:
        while True:
            payload = self.wire.take_reply(expected)
            if payload is not None:
                return payload
            await self.receive()

    async def call(self, request: bytes, expected: int) -> bytes:
        await self.stream.send_all(request)
        return await self.wait_reply(expected)

    async def message_count(self, queue: str) -> int:
        reply = await self.call(w.queue_declare(1, queue, passive=True), w.DECLARE_OK)
        return w.declare_ok_count(reply)

    async def aclose(self) -> None:
        with trio.move_on_after(2):
            try:
                await self.stream.send_all(w.connection_close())
                while not self.wire.replies:
                    await self.receive()
            except (trio.BrokenResourceError, trio.ClosedResourceError, w.WireError):
                pass
        await self.stream.aclose()


async def _run_trio(spec: RunSpec) -> Measurement:
    with trio.fail_after(spec.deadline):
        client = await TrioClient.connect(spec.url)
        try:
            return await _TRIO_SCENARIOS[spec.scenario](client, spec)
        finally:
            await client.aclose()


async def _trio_publish_nowait(client: TrioClient, spec: RunSpec) -> Measurement:
    outgoing = Outgoing(spec, spec.messages)
    timer = Timer()
    timer.start()
    sent = 0
    while sent < spec.messages:
        n = min(PUBLISH_BATCH, spec.messages - sent)
        await client.stream.send_all(outgoing.take(n))
        sent += n
    while True:  # the queue's length is the broker's: poll it
        if await client.message_count(spec.queue) >= spec.messages:
            break
        await trio.sleep(POLL_INTERVAL)
    timer.stop()
    return timer.measurement(spec.messages)


async def _trio_publish_confirm(client: TrioClient, spec: RunSpec) -> Measurement:
    await client.call(w.confirm_select(1), w.SELECT_OK)
    outgoing = Outgoing(spec, spec.messages)
    confirms = client.wire.confirms
    timer = Timer()
    timer.start()
    sent = 0
    while confirms.settled < spec.messages:
        room = min(spec.window - (sent - confirms.settled), spec.messages - sent)
        if room > 0:
            await client.stream.send_all(outgoing.take(room))
            sent += room
        await client.receive()
    timer.stop()
    if confirms.nacked:
        raise w.WireError(f"{confirms.nacked} messages were nacked")
    return timer.measurement(spec.messages)


async def _trio_confirm_sync(client: TrioClient, spec: RunSpec) -> Measurement:
    await client.call(w.confirm_select(1), w.SELECT_OK)
    outgoing = Outgoing(spec, spec.warmup + spec.messages)
    confirms = client.wire.confirms
    latencies: list[float] = []
    timer = Timer()
    for i in range(spec.warmup + spec.messages):
        if i == spec.warmup:
            timer.start()
        start = time.perf_counter()
        await client.stream.send_all(outgoing.take(1))
        while confirms.settled <= i:
            await client.receive()
        if i >= spec.warmup:
            latencies.append(time.perf_counter() - start)
    timer.stop()
    return timer.measurement(spec.messages, latencies)


async def _trio_consume(client: TrioClient, spec: RunSpec) -> Measurement:
    wire = client.wire
    wire.ack_every = spec.ack_every
    wire.ack_target = spec.messages
    timer = Timer()
    timer.start()
    await client.call(w.basic_qos(1, spec.prefetch), w.QOS_OK)
    await client.stream.send_all(w.basic_consume(1, spec.queue, "ceiling", no_ack=False))
    while wire.delivered < spec.messages:
        await client.receive()
    timer.stop()
    return timer.measurement(spec.messages)


async def _trio_roundtrip(client: TrioClient, spec: RunSpec) -> Measurement:
    wire = client.wire
    await client.call(w.basic_consume(1, spec.queue, "ceiling", no_ack=True), w.CONSUME_OK)
    outgoing = Outgoing(spec, spec.warmup + spec.messages)
    latencies: list[float] = []
    timer = Timer()
    for i in range(spec.warmup + spec.messages):
        if i == spec.warmup:
            timer.start()
        start = time.perf_counter()
        await client.stream.send_all(outgoing.take(1))
        while wire.delivered <= i:
            await client.receive()
        if i >= spec.warmup:
            latencies.append(time.perf_counter() - start)
    timer.stop()
    return timer.measurement(spec.messages, latencies)


_TRIO_SCENARIOS = {
    "publish_nowait": _trio_publish_nowait,
    "publish": _trio_publish_nowait,
    "publish_confirm": _trio_publish_confirm,
    "publish_confirm_tasks": _trio_publish_confirm,
    "publish_confirm_sync": _trio_confirm_sync,
    "consume": _trio_consume,
    "roundtrip": _trio_roundtrip,
}


# -- the scale of the enqueue row ----------------------------------------------------------


async def _trio_enqueue_scale(spec: RunSpec) -> Measurement:
    """``spec.messages`` bare ``MemorySendChannel.send_nowait`` calls into a memory channel
    with room for them all, of ``trio_lavin.Message`` objects made before the timed part
    (with the profile's body and properties): the least a buffered publish can cost on
    trio.  No broker is involved."""
    import trio_lavin as lavin

    body = common.body(spec.message_profile)
    properties: list[lavin.BasicProperties | None]
    if spec.message_profile == "realistic":
        properties = [
            lavin.BasicProperties(
                content_type=common.CONTENT_TYPE,
                delivery_mode=common.PERSISTENT,
                message_id=message_id,
                timestamp=common.timestamp_now(),
                headers=common.headers(traceparent),
            )
            for message_id, traceparent in itertools.islice(common.message_ids(), spec.messages)
        ]
    else:
        properties = [None] * spec.messages
    messages = [
        lavin.Message(body, props, "", "bench", False, sequence)
        for sequence, props in enumerate(properties, 1)
    ]
    send, receive = trio.open_memory_channel[lavin.Message](spec.messages + 1)
    send_nowait = send.send_nowait
    timer = Timer()
    timer.start()
    for message in messages:
        send_nowait(message)
    timer.stop()
    held = receive.statistics().current_buffer_used
    if held != spec.messages:
        raise RuntimeError(f"{held} of {spec.messages} messages are in the memory channel")
    measurement = timer.measurement(spec.messages)
    measurement.note = "bare send_nowait"
    return measurement
