"""The message properties codec and the publish framing in C (``_speedups.c``); see
``_properties.py`` and ``_publishing.py``."""

from collections.abc import Callable
from typing import Any

from ._properties import BasicProperties

def setup(
    properties_type: type[BasicProperties],
    decode_properties: Callable[[bytes | bytearray, int, int], BasicProperties],
    encode_properties: Callable[[BasicProperties | None, dict[str, Any] | None], bytes],
    decode_timestamp: Callable[[int], Any],
    encode_timestamp_property: Callable[[Any], bytes],
) -> None: ...
def decode_properties(data: bytes | bytearray, pos: int, end: int) -> BasicProperties: ...
def encode_properties(
    properties: BasicProperties | None, headers: dict[str, Any] | None = None
) -> bytes: ...
def frame_message(method_frame: bytes, channel: int, properties: bytes, body: bytes) -> bytes: ...
