"""What the parent (``bench_suite.py``) and the children (``suite_child.py``) share.

The scenarios and clients are named here; one run of one client in one scenario is described
by a :class:`RunSpec` (sent to the child as JSON on its command line) and answered by one
JSON line on the child's stdout (:func:`result_line`).  Only the standard library is imported,
so the parent never loads a client library.
"""

from __future__ import annotations

import json
import resource
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Final

#: Message body of every scenario (the size lavinmqperf and the issue's table use).
BODY: Final = b"x" * 16

#: Scenario name -> (what it measures, unit of its headline figure).
SCENARIOS: Final = {
    "publish_nowait": ("publish fire-and-forget, until the broker holds all N", "msg/s"),
    "publish_confirm": ("publish with pipelined confirms (window 1000)", "msg/s"),
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
    "pika": ClientInfo("pika", "suite_pika", {"enqueue": _NO_BUFFER}),
    "py-amqp": ClientInfo("py-amqp", "suite_pyamqp", {"enqueue": _NO_BUFFER}),
    "socket": ClientInfo("plain-socket ceiling", "suite_ceiling", {"enqueue": "pre-encoded"}),
    "trio-socket": ClientInfo("trio-stream ceiling", "suite_ceiling", {"enqueue": "pre-encoded"}),
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
    #: Unconfirmed messages in flight, at most, in ``publish_confirm``.
    window: int = 1000
    #: Consumer prefetch in ``consume``.
    prefetch: int = 1000
    #: ``consume`` acks every ``ack_every``-th delivery with ``multiple=True`` (and the last).
    ack_every: int = 100
    #: Untimed messages before a latency scenario's timed ones.
    warmup: int = 100
    #: The child gives up (and says so) after this many seconds; the parent kills it later.
    deadline: float = 120.0
    #: Write a pyinstrument profile of the child's run here (text), if set.
    profile: str | None = None

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
        if m.latencies:
            result.update(
                p50_us=percentile(m.latencies, 0.50) * 1e6,
                p99_us=percentile(m.latencies, 0.99) * 1e6,
            )
    return json.dumps(result)
