"""Fuzz AMQP URL parsing (``trio_lavin._params.parse_url``).

The input, decoded as UTF-8 (bad bytes replaced), is used in one of two ways:

* without a NUL character it is the URL itself ("free-form");
* with NULs it is split into five fields ``scheme, separator, user, rest,
  host`` and the URL is ``scheme + separator + user + ":" + PASSWORD + rest +
  "@" + host``, where :data:`PASSWORD` is a known secret, ``separator`` is
  reduced to the characters ``:`` and ``/``, never three slashes in a row
  (so typos such as ``amqp:/`` are covered, but not ``amqp:///``, which is
  a valid URL with an empty host) and ``user`` has no ``:/?#@`` - so whatever else the fuzzer puts
  around it, ``PASSWORD + rest`` is what a person meant as the password
  ("structured").

Invariant:

1. ``parse_url`` returns :class:`~trio_lavin.Parameters` or raises
   ``ValueError`` - never another exception;
2. the error message (``str``, ``repr`` and any chained exception a
   traceback would show) contains no 4-character piece of the password,
   compared case-insensitively, in structured mode (unless the fuzzer wrote
   that piece elsewhere in the URL itself);
3. a parsed URL's ``repr()`` and ``str()`` do not depend on the password,
   and in structured mode the password holds :data:`PASSWORD`;
4. a parsed URL round-trips: ``parse_url(p.to_url(redact=False)) == p``
   (``connection_timeout``, kept in seconds but written in milliseconds, to
   within 1e-9 relative).

Run: ``nox -s fuzz`` (all harnesses) or
``python fuzz/fuzz_url.py fuzz/corpus/url -max_total_time=60``.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from typing import Final

from trio_lavin._params import Parameters, parse_url

#: The secret put in the password position of structured URLs.
PASSWORD: Final = "Sekr3tPw"
#: The pieces of it that must never show in an error.
_PIECES: Final = tuple(PASSWORD[i : i + 4].lower() for i in range(len(PASSWORD) - 3))


def _shown(error: BaseException) -> str:
    """Everything a log line or traceback would show of ``error``."""
    shown = [str(error), repr(error)]
    cause = error.__cause__
    if cause is None and not error.__suppress_context__:
        cause = error.__context__
    if cause is not None:
        shown.append(_shown(cause))
    return " ".join(shown)


def _structured(text: str) -> tuple[str, str]:
    """The URL for structured mode and the text the fuzzer chose itself."""
    scheme, separator, user, rest, host = (text.split("\0", 4) + [""] * 5)[:5]
    separator = "".join(c for c in separator if c in ":/")[:4]
    while "///" in separator:  # "amqp:///x" is a URL with an empty host and vhost "x"
        separator = separator.replace("///", "//")
    scheme = "".join(c for c in scheme if c not in ":/?#@\0")
    user = "".join(c for c in user if c not in ":/?#@\0")
    own = f"{scheme}{separator}{user}:{rest}@{host}"
    return f"{scheme}{separator}{user}:{PASSWORD}{rest}@{host}", own


def _check_round_trip(params: Parameters) -> None:
    url = params.to_url(redact=False)
    again = parse_url(url)
    if again.connection_timeout is not None and params.connection_timeout is not None:
        if not math.isclose(again.connection_timeout, params.connection_timeout, rel_tol=1e-9):
            raise AssertionError(f"{params!r} -> {url!r} -> {again!r}: timeout differs")
        again = dataclasses.replace(again, connection_timeout=params.connection_timeout)
    if again != params:
        raise AssertionError(f"{params!r} -> to_url -> {again!r}")


def _check(url: str, own: str | None) -> None:
    try:
        params = parse_url(url)
    except ValueError as exc:
        if own is not None:
            shown = _shown(exc).lower()
            mine = own.lower()
            leaked = [p for p in _PIECES if p in shown and p not in mine]
            if leaked:
                raise AssertionError(f"error for {url!r} shows the password: {shown!r}") from exc
        return
    other = dataclasses.replace(params, password=params.password + "-other")
    if repr(params) != repr(other) or str(params) != str(other):
        raise AssertionError(f"repr/str of {url!r} depends on the password: {params!r}")
    if own is not None and PASSWORD not in params.password:
        raise AssertionError(f"{url!r} parsed with a password without {PASSWORD!r}: {params!r}")
    _check_round_trip(params)


def check(data: bytes) -> None:
    """The invariant, for one input (used by atheris and by the test suite)."""
    text = data.decode("utf-8", "replace")
    if "\0" in text:
        url, own = _structured(text)
        _check(url, own)
    else:
        _check(text, None)


def main() -> None:
    import atheris

    atheris.instrument_all()
    atheris.Setup(sys.argv, check)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
