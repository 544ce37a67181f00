"""Heartbeat deadlines, as arithmetic on ``now``.

With a negotiated heartbeat interval of ``H`` seconds (0 disables heartbeats):

* we send a heartbeat frame when nothing was sent for ``H / 2`` seconds, so
  the broker sees traffic at least twice per interval (as RabbitMQ does);
* the broker is presumed dead when nothing at all was received for
  ``2 * H`` seconds (the specification: "a peer that receives no frame for
  two heartbeat intervals should close the connection").

The caller reports traffic with :meth:`data_sent` / :meth:`data_received` and
asks :meth:`send_deadline` / :meth:`receive_deadline` when to wake up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: Missed intervals after which the peer is presumed dead.
MISSED_INTERVALS = 2


@dataclass
class HeartbeatTimer:
    interval: float
    last_sent: float
    last_received: float

    def __post_init__(self) -> None:
        if self.interval < 0:
            raise ValueError(f"heartbeat interval must be >= 0 seconds, not {self.interval!r}")

    def data_sent(self, now: float) -> None:
        self.last_sent = now

    def data_received(self, now: float) -> None:
        self.last_received = now

    def send_deadline(self) -> float:
        """When we must send a heartbeat if nothing else was sent (inf if disabled)."""
        if not self.interval:
            return math.inf
        return self.last_sent + self.interval / 2

    def receive_deadline(self) -> float:
        """When the peer is dead if nothing arrived by then (inf if disabled)."""
        if not self.interval:
            return math.inf
        return self.last_received + MISSED_INTERVALS * self.interval

    def should_send(self, now: float) -> bool:
        return now >= self.send_deadline()

    def timed_out(self, now: float) -> bool:
        return now >= self.receive_deadline()
