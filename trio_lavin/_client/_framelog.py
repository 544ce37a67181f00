"""Frame-by-frame DEBUG logging, off unless asked for.

Every frame a connection sends or receives is logged to the
``trio_lavin.frames`` logger at DEBUG - but only when that logger itself was
set to DEBUG (``logging.getLogger("trio_lavin.frames").setLevel(logging.DEBUG)``)
before the connection opened.  It starts at INFO, so turning on DEBUG for
``trio_lavin`` or for the root logger does not turn it on: a line per frame is
a line per message, which nobody wants by accident.

When it is off a connection keeps no frame log at all, and its reader and
writer pay one ``is None`` test per chunk of bytes (not per frame).  When on,
a second frame parser decodes a copy of the bytes in each direction, so the
protocol machine is not touched.  Credentials (``Connection.StartOk`` and
``SecureOk`` responses) and message bodies (only their size is shown) are
never logged.
"""

from __future__ import annotations

import logging
from typing import Any, Final

from pamqp import body, heartbeat

from .._sansio._framing import ABSOLUTE_FRAME_MAX, PROTOCOL_HEADER, FrameReader, FrameValue
from .._sansio._properties import ContentHeader

frame_logger: Final = logging.getLogger("trio_lavin.frames")
if frame_logger.level == logging.NOTSET:
    # Opt-in: DEBUG inherited from a parent logger does not enable it.
    frame_logger.setLevel(logging.INFO)

#: Method fields that carry credentials.
_SECRET_FIELDS: Final = frozenset({"response", "challenge"})


def frame_log_for(endpoint: str) -> FrameLog | None:
    """A frame log for a new connection, or None when frame logging is off."""
    if frame_logger.isEnabledFor(logging.DEBUG):
        return FrameLog(endpoint)
    return None


def describe(value: FrameValue) -> str:
    """One frame as text, without credentials or message bodies."""
    if isinstance(value, body.ContentBody):
        return f"ContentBody ({len(value.value)} bytes)"
    if isinstance(value, heartbeat.Heartbeat):
        return "Heartbeat"
    if isinstance(value, ContentHeader):
        return f"ContentHeader body_size={value.body_size} properties={value.properties!r}"
    fields: list[str] = []
    for name, field_value in _fields(value):
        shown = "***" if name in _SECRET_FIELDS else repr(field_value)
        fields.append(f"{name}={shown}")
    return f"{value.name} {' '.join(fields)}".rstrip()


def _fields(value: Any) -> list[tuple[str, Any]]:
    try:
        return [(name, getattr(value, name, None)) for name, _ in value]
    except Exception:
        return []


class FrameLog:
    """Decodes a copy of one connection's bytes, each direction on its own,
    and logs every frame."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self._incoming = FrameReader(ABSOLUTE_FRAME_MAX)
        self._outgoing = FrameReader(ABSOLUTE_FRAME_MAX)
        self._header_sent = False
        self._broken = False

    def received(self, data: bytes | bytearray | memoryview) -> None:
        self._log(self._incoming, data, "<-")

    def sent(self, data: bytes | bytearray | memoryview) -> None:
        if not self._header_sent and bytes(data[: len(PROTOCOL_HEADER)]) == PROTOCOL_HEADER:
            self._header_sent = True
            frame_logger.debug("%s -> protocol header %r", self.endpoint, PROTOCOL_HEADER)
            data = data[len(PROTOCOL_HEADER) :]
        self._log(self._outgoing, data, "->")

    def _log(self, reader: FrameReader, data: bytes | bytearray | memoryview, arrow: str) -> None:
        if self._broken:
            return
        try:
            reader.receive_data(data)
            while (frame := reader.next_frame()) is not None:
                channel, value = frame
                frame_logger.debug("%s %s ch%d %s", self.endpoint, arrow, channel, describe(value))
        except Exception as exc:
            # Only the log is affected: the connection parses its own copy.
            self._broken = True
            frame_logger.debug("%s: frame log stopped (%s: %s)", self.endpoint, arrow, exc)
