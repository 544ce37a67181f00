"""The message properties codec in C (``_speedups.c``); see ``_properties.py``."""

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
