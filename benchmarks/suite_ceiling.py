"""The two ceiling clients: the wire codec of ``suite_wire.py`` over blocking sockets
(``socket``) and over trio streams (``trio-socket``).

Publishing writes pre-encoded frame triples, many per ``send``; receiving reads 256 KiB at
a time and parses with :class:`suite_wire.Wire`.  Nothing else happens per message, so
these bound what any Python client can do against this broker on this machine.
"""

from __future__ import annotations

import time

import suite_wire as w
import trio
from suite_common import BODY, Measurement, NotSupported, RunSpec, Timer

#: Messages per write when publishing without confirms.
PUBLISH_BATCH = 1000
#: Seconds between passive queue.declare polls while waiting for the broker to hold all N.
POLL_INTERVAL = 0.001


def run(spec: RunSpec) -> Measurement:
    if spec.scenario == "enqueue":
        raise NotSupported("frames are pre-encoded")
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
    one = w.publish_frames(1, "", spec.queue, BODY)
    deadline = time.monotonic() + spec.deadline
    timer = Timer()
    timer.start()
    sent = 0
    while sent < spec.messages:
        n = min(PUBLISH_BATCH, spec.messages - sent)
        client.sock.sendall(one * n)
        sent += n
    while client.message_count(spec.queue) < spec.messages:
        _check_deadline(deadline, "publishing")
        time.sleep(POLL_INTERVAL)
    timer.stop()
    return timer.measurement(spec.messages)


def _socket_publish_confirm(client: w.SocketClient, spec: RunSpec) -> Measurement:
    client.confirm_select()
    one = w.publish_frames(1, "", spec.queue, BODY)
    confirms = client.wire.confirms
    deadline = time.monotonic() + spec.deadline
    timer = Timer()
    timer.start()
    sent = 0
    while confirms.settled < spec.messages:
        room = min(spec.window - (sent - confirms.settled), spec.messages - sent)
        if room > 0:
            client.sock.sendall(one * room)
            sent += room
        client.receive()
        _check_deadline(deadline, "publishing")
    timer.stop()
    if confirms.nacked:
        raise w.WireError(f"{confirms.nacked} messages were nacked")
    return timer.measurement(spec.messages)


def _socket_confirm_sync(client: w.SocketClient, spec: RunSpec) -> Measurement:
    client.confirm_select()
    one = w.publish_frames(1, "", spec.queue, BODY)
    confirms = client.wire.confirms
    deadline = time.monotonic() + spec.deadline
    latencies: list[float] = []
    timer = Timer()
    for i in range(spec.warmup + spec.messages):
        if i == spec.warmup:
            timer.start()
        start = time.perf_counter()
        client.sock.sendall(one)
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
    one = w.publish_frames(1, "", spec.queue, BODY)
    deadline = time.monotonic() + spec.deadline
    latencies: list[float] = []
    timer = Timer()
    for i in range(spec.warmup + spec.messages):
        if i == spec.warmup:
            timer.start()
        start = time.perf_counter()
        client.sock.sendall(one)
        while wire.delivered <= i:
            client.receive()
            _check_deadline(deadline, "round trips")
        if i >= spec.warmup:
            latencies.append(time.perf_counter() - start)
    timer.stop()
    return timer.measurement(spec.messages, latencies)


_SOCKET_SCENARIOS = {
    "publish_nowait": _socket_publish_nowait,
    "publish_confirm": _socket_publish_confirm,
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
    one = w.publish_frames(1, "", spec.queue, BODY)
    timer = Timer()
    timer.start()
    sent = 0
    while sent < spec.messages:
        n = min(PUBLISH_BATCH, spec.messages - sent)
        await client.stream.send_all(one * n)
        sent += n
    while True:  # the queue's length is the broker's: poll it
        if await client.message_count(spec.queue) >= spec.messages:
            break
        await trio.sleep(POLL_INTERVAL)
    timer.stop()
    return timer.measurement(spec.messages)


async def _trio_publish_confirm(client: TrioClient, spec: RunSpec) -> Measurement:
    await client.call(w.confirm_select(1), w.SELECT_OK)
    one = w.publish_frames(1, "", spec.queue, BODY)
    confirms = client.wire.confirms
    timer = Timer()
    timer.start()
    sent = 0
    while confirms.settled < spec.messages:
        room = min(spec.window - (sent - confirms.settled), spec.messages - sent)
        if room > 0:
            await client.stream.send_all(one * room)
            sent += room
        await client.receive()
    timer.stop()
    if confirms.nacked:
        raise w.WireError(f"{confirms.nacked} messages were nacked")
    return timer.measurement(spec.messages)


async def _trio_confirm_sync(client: TrioClient, spec: RunSpec) -> Measurement:
    await client.call(w.confirm_select(1), w.SELECT_OK)
    one = w.publish_frames(1, "", spec.queue, BODY)
    confirms = client.wire.confirms
    latencies: list[float] = []
    timer = Timer()
    for i in range(spec.warmup + spec.messages):
        if i == spec.warmup:
            timer.start()
        start = time.perf_counter()
        await client.stream.send_all(one)
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
    one = w.publish_frames(1, "", spec.queue, BODY)
    latencies: list[float] = []
    timer = Timer()
    for i in range(spec.warmup + spec.messages):
        if i == spec.warmup:
            timer.start()
        start = time.perf_counter()
        await client.stream.send_all(one)
        while wire.delivered <= i:
            await client.receive()
        if i >= spec.warmup:
            latencies.append(time.perf_counter() - start)
    timer.stop()
    return timer.measurement(spec.messages, latencies)


_TRIO_SCENARIOS = {
    "publish_nowait": _trio_publish_nowait,
    "publish_confirm": _trio_publish_confirm,
    "publish_confirm_sync": _trio_confirm_sync,
    "consume": _trio_consume,
    "roundtrip": _trio_roundtrip,
}
