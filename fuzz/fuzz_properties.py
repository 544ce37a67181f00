"""Fuzz the C properties codec (``trio_lavin/_sansio/_speedups.c``) against the Python one.

Invariant: for ANY input bytes, taken as a content header's property flags and values,

1. the C ``decode_properties`` and the Python ``decode_properties_py`` give
   the same properties (the same types too: bool is not int, bytes is not
   bytearray, NaN equals NaN) or raise the same exception with the same
   message;
2. the same holds at an offset inside a larger buffer (a bytearray, as the
   frame reader has it), with ``end`` before the buffer's end;
3. what decodes encodes to the same bytes in C and in Python, and those
   bytes decode to the same properties again.

The C code reads only inside the buffer (a read past it would crash the
process or, under the fuzzer's sanitizer-free build, show as a mismatch).

Run: ``nox -s fuzz`` (all harnesses) or
``python fuzz/fuzz_properties.py fuzz/corpus/properties -max_total_time=60``.
"""

from __future__ import annotations

import math
import sys
from typing import Any

from trio_lavin._sansio._properties import (
    PROPERTY_FLAGS,
    BasicProperties,
    decode_properties_py,
    encode_properties_py,
)


def same(a: Any, b: Any) -> bool:
    """Equal values of the same types, all the way down (NaN equal to NaN)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or (
            a == b and math.copysign(1, a) == math.copysign(1, b)
        )
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, BasicProperties):
        return all(same(getattr(a, n), getattr(b, n)) for n in PROPERTY_FLAGS)
    return bool(a == b)


def outcome(function: Any, *args: Any) -> tuple[str, Any]:
    try:
        return "value", function(*args)
    except Exception as exc:  # the reference's errors, whatever they are
        return "error", (type(exc), str(exc))


def agree(fast: tuple[str, Any], slow: tuple[str, Any], what: str) -> None:
    if fast[0] != slow[0] or not (
        same(fast[1], slow[1]) if fast[0] == "value" else fast[1] == slow[1]
    ):
        raise AssertionError(f"{what}: C gave {fast!r}, Python {slow!r}")


def check(data: bytes) -> None:
    """The invariant, for one input (used by atheris and by the test suite).
    Fails with ImportError where the C module was not built."""
    # Imported here: a checkout that was not built can still collect the tests.
    from trio_lavin._sansio import _speedups

    decoded = outcome(decode_properties_py, data, 0, len(data))
    agree(outcome(_speedups.decode_properties, data, 0, len(data)), decoded, "decode")
    framed = bytearray(b"\xce" * 3 + data + b"\x00\x00")
    for end in (len(data) + 3, len(data) + 2):
        agree(
            outcome(_speedups.decode_properties, framed, 3, end),
            outcome(decode_properties_py, framed, 3, end),
            f"decode at 3 to {end}",
        )
    if decoded[0] == "value":
        encoded = outcome(encode_properties_py, decoded[1])
        agree(outcome(_speedups.encode_properties, decoded[1]), encoded, "encode")
        if encoded[0] == "value":
            again = encoded[1]
            agree(
                outcome(_speedups.decode_properties, again, 0, len(again)), decoded, "round trip"
            )


def main() -> None:
    import atheris

    atheris.instrument_all()
    atheris.Setup(sys.argv, check)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
