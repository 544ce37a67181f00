"""What the parent (``bench_suite.py``) and the children (``suite_child.py``) share.

The scenarios and clients are named here; one run of one client in one scenario is described
by a :class:`RunSpec` (sent to the child as JSON on its command line) and answered by one
JSON line on the child's stdout (:func:`result_line`).  Only the standard library is imported,
so the parent never loads a client library.
"""

from __future__ import annotations

import datetime
import json
import random
import resource
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Final

#: Message body of the ``bare`` profile (the size lavinmqperf and the issue's table use).
BODY: Final = b"x" * 16

# -- message profiles ----------------------------------------------------------------------
#
# ``bare``: BODY and no properties.  ``realistic``: what an application's message looks
# like (see benchmarks/README.md): REALISTIC_BODY, delivery_mode 2, content_type
# "application/json", and per message a unique message_id, a timestamp (now, whole seconds)
# and three headers: HEADER_SOURCE, HEADER_ATTEMPT and a W3C traceparent that differs per
# message.  Every client builds these properties per message inside its timed loop, in its
# own API, from the values of :func:`message_ids`.


def _json_body(size: int) -> bytes:
    head = b'{"order_id":"o-1029384756","customer":"c-5647382910","currency":"EUR",'
    head += b'"total_cents":129900,"items":[{"sku":"A-1001","qty":2}],"note":"'
    tail = b'"}'
    return head + b"x" * (size - len(head) - len(tail)) + tail


#: Message body of the ``realistic`` profile: a JSON document of exactly 256 bytes.
REALISTIC_BODY: Final = _json_body(256)
CONTENT_TYPE: Final = "application/json"
#: delivery_mode 2 (persistent).
PERSISTENT: Final = 2
#: The first two headers, the same in every message (the third is ``traceparent``).
HEADER_SOURCE: Final = "checkout"
HEADER_ATTEMPT: Final = 1

#: Profile name (as given to ``--message-profile``) -> what its messages are.
MESSAGE_PROFILES: Final = {
    "bare": "16-byte bodies, no properties",
    "realistic": (
        "256-byte JSON bodies; delivery_mode 2, content_type application/json, a unique "
        "message_id, a timestamp and 3 headers (source, attempt, a 55-character traceparent) "
        "per message, built per message in the timed loop"
    ),
}


def body(profile: str) -> bytes:
    """The message body of ``profile``."""
    return REALISTIC_BODY if profile == "realistic" else BODY


def message_ids(seed: int | None = None) -> Iterator[tuple[str, str]]:
    """Endless ``(message_id, traceparent)`` pairs, unique per message of a run.

    ``message_id`` is a counter in the shape of a UUID (36 characters: a random per-run
    prefix, then the counter), ``traceparent`` a W3C trace context (55 characters:
    ``00-<32 hex trace id>-<16 hex parent id>-01``, the trace id a random per-run prefix
    and the counter).  Both have a fixed length, so every message of a profile encodes to
    the same size (the ceiling clients rely on it).
    """
    rng = random.Random(seed)
    a, b, c, d = (rng.getrandbits(bits) for bits in (32, 16, 12, 12))
    id_prefix = f"{a:08x}-{b:04x}-4{c:03x}-8{d:03x}-"
    trace_prefix = f"00-{rng.getrandbits(64):016x}"
    parent = rng.getrandbits(64)
    for i in range(1 << 48):
        yield f"{id_prefix}{i:012x}", f"{trace_prefix}{i:016x}-{parent ^ i:016x}-01"


def timestamp_now() -> datetime.datetime:
    """Now, in whole seconds, as an aware UTC datetime (trio-lavin, aio-pika and aiormq take
    one: pamqp encodes a timestamp only from a datetime)."""
    # A third of the time of now(UTC).replace(microsecond=0), the same value.
    return datetime.datetime.fromtimestamp(int(time.time()), datetime.UTC)


def timestamp_seconds() -> int:
    """Now, in whole seconds since the epoch (pika and py-amqp take an int)."""
    return int(time.time())


def headers(traceparent: str) -> dict[str, Any]:
    """The ``realistic`` profile's three headers (a fresh dict, as a user's code makes)."""
    return {"source": HEADER_SOURCE, "attempt": HEADER_ATTEMPT, "traceparent": traceparent}


def check_read(message_id: object, traceparent: object) -> None:
    """Raise unless a consumer read a ``realistic`` message's id and traceparent (str or
    bytes, as the library decodes them)."""
    if not (isinstance(message_id, (str, bytes)) and len(message_id) == 36):
        raise RuntimeError(f"the last delivery's message_id is {message_id!r}")
    if not (isinstance(traceparent, (str, bytes)) and len(traceparent) == 55):
        raise RuntimeError(f"the last delivery's traceparent header is {traceparent!r}")


#: Scenario name -> (what it measures, unit of its headline figure).
SCENARIOS: Final = {
    "publish_nowait": ("publish fire-and-forget, until the broker holds all N", "msg/s"),
    "publish": ("N awaited publish calls, fire-and-forget, until the broker holds all N", "msg/s"),
    "publish_confirm": ("publish with pipelined confirms (window 1000)", "msg/s"),
    "publish_confirm_tasks": (
        "--tasks tasks each awaiting confirmed publishes, N in all",
        "msg/s",
    ),
    "publish_confirm_sync": ("one confirmed publish at a time, p50 latency", "us"),
    "consume": ("consume N preloaded messages, prefetch 1000, multiple acks", "msg/s"),
    "roundtrip": ("publish -> deliver round trip, p50 latency", "us"),
    "enqueue": ("buffered publish_nowait calls, no broker involved", "calls/s"),
}

#: Scenarios whose headline is a latency (lower is better); the others are rates.
LATENCY_SCENARIOS: Final = frozenset({"publish_confirm_sync", "roundtrip"})


@dataclass(frozen=True)
class ClientInfo:
    """One column of the table."""

    label: str
    #: Module in benchmarks/ with ``run(spec) -> Measurement``.
    module: str
    #: Scenario -> why this client does not take part (shown as "n/a (reason)").
    unsupported: dict[str, str] = field(default_factory=dict)


_NO_BUFFER = "no buffered publish"
_BLOCKING = "blocking client, no concurrent publishers"

#: Client name (as given to ``--clients``) -> column.  Order is the table's.
CLIENTS: Final = {
    "lavin-channel": ClientInfo(
        "trio-lavin Channel",
        "suite_lavin",
        {"enqueue": "needs a connection"},
    ),
    "lavin-client": ClientInfo("trio-lavin Client/Producer", "suite_lavin"),
    "aio-pika": ClientInfo("aio-pika", "suite_asyncio", {"enqueue": _NO_BUFFER}),
    "aiormq": ClientInfo("aiormq", "suite_asyncio", {"enqueue": _NO_BUFFER}),
    "pika": ClientInfo(
        "pika", "suite_pika", {"enqueue": _NO_BUFFER, "publish_confirm_tasks": _BLOCKING}
    ),
    "py-amqp": ClientInfo(
        "py-amqp", "suite_pyamqp", {"enqueue": _NO_BUFFER, "publish_confirm_tasks": _BLOCKING}
    ),
    "socket": ClientInfo("plain-socket ceiling", "suite_ceiling", {"enqueue": "pre-encoded"}),
    # Its enqueue cell is the scale of that row: a bare MemorySendChannel.send_nowait loop.
    "trio-socket": ClientInfo("trio-stream ceiling", "suite_ceiling"),
}

#: The clients that are trio-lavin (the ratios compare these with every other column).
LAVIN_CLIENTS: Final = ("lavin-channel", "lavin-client")


@dataclass(frozen=True)
class RunSpec:
    """One child run: ``client`` in ``scenario`` against ``queue`` at ``url``."""

    client: str
    scenario: str
    url: str
    queue: str
    #: Messages to publish/consume (throughput scenarios) or to time (latency scenarios).
    messages: int
    #: ``bare`` or ``realistic`` (see MESSAGE_PROFILES).
    message_profile: str = "bare"
    #: Unconfirmed messages in flight, at most, in ``publish_confirm``.
    window: int = 1000
    #: Concurrent publishing tasks in ``publish_confirm_tasks``.
    tasks: int = 100
    #: Consumer prefetch in ``consume``.
    prefetch: int = 1000
    #: ``consume`` acks every ``ack_every``-th delivery with ``multiple=True`` (and the last).
    ack_every: int = 100
    #: Untimed messages before a latency scenario's timed ones.
    warmup: int = 100
    #: The child gives up (and says so) after this many seconds; the parent kills it later.
    deadline: float = 120.0
    #: Write a pyinstrument profile of the child's run here (text), if set.
    pyinstrument: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> RunSpec:
        return cls(**json.loads(text))


@dataclass
class Measurement:
    """What a client's ``run`` returns: the timed part only."""

    messages: int
    seconds: float
    cpu_seconds: float
    #: Per-message latencies in seconds (latency scenarios only).
    latencies: list[float] | None = None
    #: How this client ran, when that is not obvious from its name (e.g. "uvloop").
    variant: str = ""
    #: Shown after the figures in the cell (what this cell measured, if not the obvious).
    note: str = ""


class NotSupported(Exception):
    """This client cannot run this scenario (reported as "n/a (reason)")."""


def cpu_seconds() -> float:
    """User + system CPU time of this process so far (all its threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Timer:
    """Wall-clock and process-CPU time of the timed part of a run."""

    def __init__(self) -> None:
        self.wall = 0.0
        self.cpu = 0.0
        self.seconds = 0.0
        self.cpu_seconds = 0.0

    def start(self) -> None:
        self.cpu = cpu_seconds()
        self.wall = time.perf_counter()

    def stop(self) -> None:
        self.seconds = time.perf_counter() - self.wall
        self.cpu_seconds = cpu_seconds() - self.cpu

    def measurement(
        self, messages: int, latencies: list[float] | None = None, variant: str = ""
    ) -> Measurement:
        return Measurement(messages, self.seconds, self.cpu_seconds, latencies, variant)


def percentile(values: list[float], fraction: float) -> float:
    """The nearest-rank percentile of ``values`` (``fraction`` in 0..1)."""
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))
    return ordered[index]


def result_line(spec: RunSpec, status: str, reason: str = "", m: Measurement | None = None) -> str:
    """The one JSON line a child prints: ``status`` is "ok", "n/a", "timeout" or "error"."""
    result: dict[str, Any] = {
        "client": spec.client,
        "scenario": spec.scenario,
        "profile": spec.message_profile,
        "status": status,
        "reason": reason,
    }
    if m is not None:
        result.update(
            messages=m.messages,
            seconds=m.seconds,
            rate=m.messages / m.seconds if m.seconds > 0 else 0.0,
            cpu_us_per_msg=m.cpu_seconds / m.messages * 1e6 if m.messages else 0.0,
            variant=m.variant,
        )
        if m.note:
            result["note"] = m.note
        if m.latencies:
            result.update(
                p50_us=percentile(m.latencies, 0.50) * 1e6,
                p99_us=percentile(m.latencies, 0.99) * 1e6,
            )
    return json.dumps(result)
