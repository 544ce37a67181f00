"""A request on a channel waiting for its reply, and which request a
broker's hard error names."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .._exceptions import ConnectionClosedByBroker
from ._reading import Signal


class Waiter:
    """One request waiting for its reply; replies come in request order.
    ``request`` is the request's method index (pamqp's ``index``: class id
    << 16 | method id), to tell which call a broker's hard error names."""

    __slots__ = ("abandoned", "error", "on_late_reply", "request", "signal", "value")

    def __init__(self, request: int, on_late_reply: Callable[[Any], None] | None = None) -> None:
        self.request = request
        self.signal = Signal()
        self.value: Any = None
        self.error: BaseException | None = None
        self.abandoned = False
        self.on_late_reply = on_late_reply

    def resolve(self, value: Any = None, error: BaseException | None = None) -> None:
        self.value = value
        self.error = error
        self.signal.set()
        if self.abandoned and error is None and self.on_late_reply is not None:
            self.on_late_reply(value)


def names_request(error: BaseException, request: int) -> bool:
    """Is ``error`` the broker closing the connection over the command
    ``request`` (a method index)?  A channel's replies come in request order,
    so the command the broker refused is the oldest one still waiting on its
    channel."""
    return (
        isinstance(error, ConnectionClosedByBroker)
        and error.class_id != 0
        and (error.class_id << 16 | error.method_id) == request
    )
