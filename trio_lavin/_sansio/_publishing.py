"""Encoding a publish: ``Basic.Publish``, its content header and its body
frames, straight into the connection's output.

What repeats from message to message is encoded once and kept: the method
frame per destination (channel, exchange, routing key, flags), and the
content-header properties per distinct value.  Pure: no I/O, no clock.
"""

from __future__ import annotations

import struct
from typing import Any, Final

from pamqp import commands

from ._framing import (
    FRAME_BODY,
    FRAME_END_BYTES,
    FRAME_HEADER,
    FRAME_OVERHEAD,
    encode_frame,
)

#: Distinct publish destinations (channel, exchange, routing key, flags) whose
#: method frame is kept pre-encoded; the cache starts over when full.
PUBLISH_CACHE_SIZE: Final = 1_024
#: Distinct property values kept pre-encoded, likewise.
PROPERTIES_CACHE_SIZE: Final = 256
#: Encoded Basic.Properties with no property set: just the flag word.
EMPTY_PROPERTIES: Final = b"\x00\x00"

_PROPERTY_NAMES: Final = tuple(commands.Basic.Properties.__slots__)
#: type, channel, size | class, weight, body size
_CONTENT_HEADER: Final = struct.Struct(">BHIHHQ")
_FRAME_START: Final = struct.Struct(">BHI")


class PublishEncoder:
    """Encodes publishes for one connection (see the module doc)."""

    def __init__(self) -> None:
        self._methods: dict[tuple[int, str, str, bool, bool], bytes] = {}
        self._properties: dict[tuple[Any, ...], bytes] = {}

    def encode(
        self,
        out: list[bytes],
        channel: int,
        body: bytes,
        exchange: str,
        routing_key: str,
        properties: commands.Basic.Properties | None,
        mandatory: bool,
        immediate: bool,
        frame_max: int,
    ) -> None:
        """Append the frames of one message to ``out``: the method, the
        content header, and the body split into frames of at most
        ``frame_max`` (0: no limit).

        Raises:
            ValueError: the exchange, the routing key or a property cannot be
                encoded (e.g. longer than 255 bytes); nothing was appended.
        """
        key = (channel, exchange, routing_key, mandatory, immediate)
        method = self._methods.get(key)
        if method is None:
            # Encoded (and validated) by pamqp once per destination.
            method = encode_frame(
                channel,
                commands.Basic.Publish(
                    exchange=exchange,
                    routing_key=routing_key,
                    mandatory=mandatory,
                    immediate=immediate,
                ),
            )
            if len(self._methods) >= PUBLISH_CACHE_SIZE:
                self._methods.clear()
            self._methods[key] = method
        props = EMPTY_PROPERTIES if properties is None else self.encode_properties(properties)
        size = len(body)
        out.append(method)
        out.append(_CONTENT_HEADER.pack(FRAME_HEADER, channel, 12 + len(props), 60, 0, size))
        out.append(props)
        out.append(FRAME_END_BYTES)
        if size:
            limit = frame_max - FRAME_OVERHEAD if frame_max else size
            if size <= limit:
                out.append(_FRAME_START.pack(FRAME_BODY, channel, size))
                out.append(body)
                out.append(FRAME_END_BYTES)
            else:
                view = memoryview(body)
                for offset in range(0, size, limit):
                    piece = view[offset : offset + limit]
                    out.append(_FRAME_START.pack(FRAME_BODY, channel, len(piece)))
                    out.append(bytes(piece))
                    out.append(FRAME_END_BYTES)

    def encode_properties(self, properties: commands.Basic.Properties) -> bytes:
        """Content-header properties, encoded once per distinct value (values
        with a header table are not hashable and are encoded each time).

        Raises:
            ValueError: a property cannot be encoded.
        """
        try:
            key = tuple([getattr(properties, name) for name in _PROPERTY_NAMES])
            cached = self._properties.get(key)
        except TypeError:
            key, cached = None, None
        if cached is not None:
            return cached
        try:
            encoded: bytes = properties.marshal()
        except (ValueError, TypeError, OverflowError, struct.error) as exc:
            raise ValueError(f"cannot encode message properties: {exc}") from exc
        if key is not None:
            if len(self._properties) >= PROPERTIES_CACHE_SIZE:
                self._properties.clear()
            self._properties[key] = encoded
        return encoded
