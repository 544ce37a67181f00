"""Encoding a publish: ``Basic.Publish``, its content header and its body
frames, straight into the connection's output.

What repeats from message to message is encoded once and kept: the method
frame per destination (channel, exchange, routing key, flags).  Properties
are encoded for every message (:mod:`._properties`), since real ones differ
from message to message (a message id, a timestamp).  Pure: no I/O, no clock.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Sequence
from typing import Any, Final

from ._fieldtable import encode_shortstr
from ._framing import (
    FRAME_BODY,
    FRAME_END_BYTES,
    FRAME_HEADER,
    FRAME_METHOD,
    FRAME_OVERHEAD,
)
from ._properties import SPEEDUPS, BasicProperties, encode_properties

#: Distinct publish destinations (channel, exchange, routing key, flags) whose
#: method frame is kept pre-encoded; the cache starts over when full.
PUBLISH_CACHE_SIZE: Final = 1_024
#: Encoded Basic.Properties with no property set: just the flag word.
EMPTY_PROPERTIES: Final = b"\x00\x00"

#: type, channel, size | class, weight, body size
_CONTENT_HEADER: Final = struct.Struct(">BHIHHQ")
_FRAME_START: Final = struct.Struct(">BHI")
_EXCHANGE_NAME: Final = re.compile(r"[a-zA-Z0-9\-_.:@#,/+ ]*")
#: type, channel, size | class 60, method 40, reserved short
_PUBLISH_START: Final = struct.Struct(">BHIHHH")


def encode_publish_method(
    channel: int, exchange: str, routing_key: str, mandatory: bool, immediate: bool
) -> bytes:
    """The whole ``Basic.Publish`` method frame.

    Raises:
        TypeError: the exchange or routing key is not a str.
        ValueError: the exchange is not a valid name (as pamqp and the
            specification define it: at most 127 characters of letters,
            digits and ``-_.:@#,/+``), or the routing key is over 255 bytes.
    """
    if not isinstance(exchange, str):
        raise TypeError(f"exchange must be a str, not {type(exchange).__name__}")
    if len(exchange) > 127:
        raise ValueError(
            f"exchange {exchange[:37] + '...'!r} is {len(exchange)} characters, at most 127"
        )
    if not _EXCHANGE_NAME.fullmatch(exchange):
        raise ValueError(
            f"exchange {exchange!r} is not a valid exchange name (letters, digits, space "
            f"and -_.:@#,/+)"
        )
    names = encode_shortstr(exchange, "exchange") + encode_shortstr(routing_key, "routing key")
    bits = (1 if mandatory else 0) | (2 if immediate else 0)
    return b"".join(
        (
            _PUBLISH_START.pack(FRAME_METHOD, channel, 7 + len(names), 60, 40, 0),
            names,
            bytes((bits,)),
            FRAME_END_BYTES,
        )
    )


def frame_message_py(method_frame: bytes, channel: int, properties: bytes, body: bytes) -> bytes:
    """A message whose body fits in one frame, as one bytes object: its method
    frame, its content header frame (``properties`` encoded) and its body frame."""
    size = len(body)
    return b"".join(
        (
            method_frame,
            _CONTENT_HEADER.pack(FRAME_HEADER, channel, 12 + len(properties), 60, 0, size),
            properties,
            FRAME_END_BYTES,
            _FRAME_START.pack(FRAME_BODY, channel, size),
            body,
            FRAME_END_BYTES,
        )
    )


if SPEEDUPS:  # the C version (``_speedups.c``), as for the properties
    from ._speedups import frame_message as frame_message
else:
    frame_message = frame_message_py


#: A message for :meth:`PublishEncoder.encode_many`: ``(body, exchange,
#: routing_key, mandatory, tag, properties)``, the properties encoded
#: (``encode_properties``) and ``tag`` the caller's own (not used here).
PublishFields = tuple[bytes, str, str, bool, object, bytes]


class PublishEncoder:
    """Encodes publishes for one connection (see the module doc)."""

    def __init__(self) -> None:
        self._methods: dict[tuple[int, str, str, bool, bool], bytes] = {}

    def encode_many(
        self, out: list[bytes], channel: int, messages: Sequence[PublishFields], frame_max: int
    ) -> None:
        """Append the frames of several messages to ``out``, in order, as
        :meth:`encode` does for each (not ``immediate``).

        Raises:
            ValueError: as :meth:`encode`; the messages before the one that
                cannot be encoded were appended.
        """
        limit = frame_max - FRAME_OVERHEAD if frame_max else 2**32 - 1
        append = out.append
        # The method frame of the message before, for the next one if it goes
        # to the same place (the usual case: one producer's default).
        method = b""
        last_exchange = last_routing_key = None
        last_mandatory = False
        for body, exchange, routing_key, mandatory, _, properties in messages:
            if (
                routing_key != last_routing_key
                or exchange != last_exchange
                or mandatory != last_mandatory
                or not method
            ):
                method = self.method(channel, exchange, routing_key, mandatory, False)
                last_exchange, last_routing_key, last_mandatory = exchange, routing_key, mandatory
            if 0 < len(body) <= limit:
                append(frame_message(method, channel, properties, body))
            else:
                self.encode(
                    out,
                    channel,
                    body,
                    exchange,
                    routing_key,
                    properties,
                    mandatory,
                    False,
                    frame_max,
                )

    def method(
        self, channel: int, exchange: str, routing_key: str, mandatory: bool, immediate: bool
    ) -> bytes:
        """The ``Basic.Publish`` method frame (see :func:`encode_publish_method`),
        kept for the next message to the same place.

        Raises:
            TypeError, ValueError: as :func:`encode_publish_method`.
        """
        key = (channel, exchange, routing_key, mandatory, immediate)
        method = self._methods.get(key)
        if method is None:
            method = encode_publish_method(channel, exchange, routing_key, mandatory, immediate)
            if len(self._methods) >= PUBLISH_CACHE_SIZE:
                self._methods.clear()
            self._methods[key] = method
        return method

    def encode(
        self,
        out: list[bytes],
        channel: int,
        body: bytes,
        exchange: str,
        routing_key: str,
        properties: BasicProperties | bytes | None,
        mandatory: bool,
        immediate: bool,
        frame_max: int,
        headers: dict[str, Any] | None = None,
    ) -> None:
        """Append the frames of one message to ``out``: the method, the
        content header (``headers``, when not None, standing in for
        ``properties.headers``; ``properties`` may also be the bytes
        ``encode_properties`` made of them), and the body split into frames
        of at most ``frame_max`` (0: no limit).

        Raises:
            ValueError: the exchange, the routing key or a property cannot be
                encoded (e.g. longer than 255 bytes); nothing was appended.
        """
        method = self.method(channel, exchange, routing_key, mandatory, immediate)
        if isinstance(properties, bytes):
            props = properties
        elif properties is None and headers is None:
            props = EMPTY_PROPERTIES
        else:
            props = encode_properties(properties, headers)
        size = len(body)
        if size and (not frame_max or size <= frame_max - FRAME_OVERHEAD):
            out.append(frame_message(method, channel, props, body))  # the usual message
            return
        header = _CONTENT_HEADER.pack(FRAME_HEADER, channel, 12 + len(props), 60, 0, size)
        out += (method, header, props, FRAME_END_BYTES)
        if size:  # larger than a frame: split
            limit = frame_max - FRAME_OVERHEAD
            view = memoryview(body)
            for offset in range(0, size, limit):
                piece = view[offset : offset + limit]
                out.append(_FRAME_START.pack(FRAME_BODY, channel, len(piece)))
                out.append(bytes(piece))
                out.append(FRAME_END_BYTES)
