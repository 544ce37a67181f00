"""Content assembly: a content-bearing method, its header, then its body.

A message arrives as ``Basic.Deliver`` (or ``Basic.GetOk``, ``Basic.Return``),
then a content header announcing ``body_size``, then body frames until exactly
``body_size`` bytes have arrived (none when the body is empty).  On one
channel nothing may come in between; anything out of order, a body longer than
announced, or a body frame where a header is due is an
:class:`~._errors.UnexpectedFrame` (505).
"""

from __future__ import annotations

from typing import Final

from pamqp import base

from ._errors import UnexpectedFrame
from ._properties import BasicProperties

#: The largest message body accepted by default.  The header announces the
#: size before any body byte arrives, so a hostile or broken broker cannot
#: make us buffer more than this.  RabbitMQ's own max_message_size defaults to
#: 128 MiB.
DEFAULT_MAX_BODY_SIZE: Final = 128 * 1024 * 1024


class BodyTooLarge(Exception):
    """A content header announces a body larger than ``max_body_size``.

    Not a protocol violation: the message is valid, just more than this
    client accepts.  The connection refuses it on its channel (311
    CONTENT_TOO_LARGE) and skips its body frames.
    """

    def __init__(self, method: base.Frame, body_size: int, limit: int) -> None:
        self.method = method
        self.body_size = body_size
        self.limit = limit
        super().__init__(f"{method.name} body of {body_size} bytes, limit {limit}")


class ContentAssembler:
    """Collects one message at a time on one channel.

    Use :meth:`start` with the method, then :meth:`header` with the content
    header, then :meth:`body` for each body frame; :meth:`header` and
    :meth:`body` return the completed ``(method, properties, body)`` once the
    last byte is in, else ``None``.
    """

    __slots__ = (
        "_channel",
        "_chunks",
        "_has_header",
        "_method",
        "_properties",
        "_remaining",
        "max_body_size",
    )

    def __init__(self, channel: int, max_body_size: int = DEFAULT_MAX_BODY_SIZE) -> None:
        self._channel = channel
        self._method: base.Frame | None = None
        self._has_header = False
        #: The message's properties (None: none set), once the header is in.
        self._properties: BasicProperties | None = None
        self._remaining = 0
        self._chunks: list[bytes] = []
        self.max_body_size = max_body_size

    @property
    def in_progress(self) -> bool:
        """True between a content-bearing method and its last body byte."""
        return self._method is not None

    def start(self, method: base.Frame) -> None:
        if self._method is not None:
            raise UnexpectedFrame(
                f"{method.name} on channel {self._channel} while content for "
                f"{self._method.name} is incomplete"
            )
        self._method = method

    def header(
        self, body_size: int, properties: BasicProperties | None
    ) -> tuple[base.Frame, BasicProperties | None, bytes] | None:
        if self._method is None or self._has_header:
            raise UnexpectedFrame(
                f"content header on channel {self._channel} where none was expected"
            )
        if body_size > self.max_body_size:
            method, self._method = self._method, None
            raise BodyTooLarge(method, body_size, self.max_body_size)
        self._properties = properties
        self._has_header = True
        self._remaining = body_size
        if body_size == 0:
            return self._finish()
        return None

    def body(self, payload: bytes) -> tuple[base.Frame, BasicProperties | None, bytes] | None:
        if not self._has_header:
            raise UnexpectedFrame(f"content body on channel {self._channel} before a header")
        if len(payload) > self._remaining:
            raise UnexpectedFrame(
                f"content body on channel {self._channel} overruns the announced size "
                f"by {len(payload) - self._remaining} bytes"
            )
        self._chunks.append(payload)
        self._remaining -= len(payload)
        if self._remaining == 0:
            return self._finish()
        return None

    def _finish(self) -> tuple[base.Frame, BasicProperties | None, bytes]:
        method, properties = self._method, self._properties
        assert method is not None
        chunks = self._chunks
        payload = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self._method = self._properties = None
        self._has_header = False
        self._chunks = []
        return method, properties, payload
