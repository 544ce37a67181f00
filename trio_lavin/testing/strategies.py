"""Hypothesis strategies for what AMQP messages carry, for an application's own
property-based tests: field values and tables of every AMQP 0-9-1 type (as RabbitMQ's
errata define them), and :class:`~trio_lavin.BasicProperties` with every property.

Each value they draw comes back equal from trio-lavin's encoder and decoder, so a test
can publish what it draws and compare it with what it consumes.  A broker may refuse
some properties, though: RabbitMQ closes the channel over an ``expiration`` that is not
a number of milliseconds and a ``user_id`` other than the connection's user; leave them
out with ``properties(expiration=st.none(), user_id=st.none())``::

    from hypothesis import given
    from trio_lavin.testing import strategies

    @given(strategies.properties())
    def test_my_handler_takes_any_properties(properties):
        ...

Needs hypothesis (``pip install hypothesis``).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any, Final

try:
    from hypothesis import strategies as st
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "trio_lavin.testing.strategies needs hypothesis: pip install hypothesis"
    ) from exc

from .._sansio._properties import BasicProperties
from ._fault_proxy import FAULT_KINDS, Fault

__all__ = [
    "fault_plans",
    "field_tables",
    "field_values",
    "messages",
    "properties",
    "relayed_text",
    "short_strings",
    "timestamps",
]

#: The last second a :class:`datetime.datetime` holds; a timestamp after it is
#: received as an int of seconds.
MAX_DATETIME_SECONDS: Final = 253_402_300_799

#: Text as a broker may relay it from another client: any bytes, decoded the way
#: trio-lavin decodes text that is not UTF-8 (``surrogateescape``); publishing such a
#: str sends the original bytes.
relayed_text: st.SearchStrategy[str] = st.binary(max_size=12).map(
    lambda raw: raw.decode("utf-8", "surrogateescape")
)


def timestamps() -> st.SearchStrategy[datetime.datetime]:
    """Datetimes an AMQP timestamp carries exactly: whole seconds, aware UTC, from
    1970 to the end of 9999 (as they are received)."""
    return st.datetimes(
        min_value=datetime.datetime(1970, 1, 1),
        max_value=datetime.datetime(9999, 12, 31, 23, 59, 59),
    ).map(lambda d: d.replace(microsecond=0, tzinfo=datetime.UTC))


def short_strings(max_size: int = 10) -> st.SearchStrategy[str]:
    """Short-string properties: any text (the empty string included) or relayed text,
    at most 255 bytes encoded."""
    return st.one_of(st.text(max_size=max_size), relayed_text).filter(
        lambda text: len(text.encode("utf-8", "surrogateescape")) < 256
    )


def _keys() -> st.SearchStrategy[str]:
    return short_strings(max_size=8)


def _scalars() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.none(),  # V
        st.booleans(),  # t
        st.integers(-(2**63), 2**63 - 1),  # b s u I i l, the narrowest that holds it
        st.decimals(min_value=-(10**6), max_value=10**6, places=3),  # D
        st.floats(allow_nan=False),  # d
        st.text(max_size=20),  # S
        relayed_text,
        st.binary(max_size=20),  # x
        timestamps(),  # T
    )


def field_values(max_leaves: int = 20) -> st.SearchStrategy[Any]:
    """Any field value: the scalars (None, bool, int of 64 bits, Decimal, float, str,
    bytes, datetime), and lists (A) and dicts (F) of them, nested up to ``max_leaves``
    scalars in all."""
    return st.recursive(
        _scalars(),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_keys(), inner, max_size=4),
        max_leaves=max_leaves,
    )


def field_tables(max_size: int = 6) -> st.SearchStrategy[dict[str, Any]]:
    """Field tables (``headers``, ``arguments``) of up to ``max_size`` entries, each
    value any :func:`field_values`."""
    return st.dictionaries(_keys(), field_values(), max_size=max_size)


def properties(**overrides: st.SearchStrategy[Any]) -> st.SearchStrategy[BasicProperties]:
    """:class:`~trio_lavin.BasicProperties` with any of the properties set, each to any
    value it may carry (``delivery_mode`` and ``priority`` any octet, ``timestamp`` a
    datetime or, past the year 9999, an int of seconds); ``overrides`` give a property
    a strategy of its own (``st.none()`` leaves it out).

    Raises:
        TypeError: an override that names no property.
    """
    text = st.none() | short_strings()
    fields: dict[str, st.SearchStrategy[Any]] = {
        "content_type": text,
        "content_encoding": text,
        "headers": st.none() | field_tables(),
        "delivery_mode": st.none() | st.integers(0, 255),
        "priority": st.none() | st.integers(0, 255),
        "correlation_id": text,
        "reply_to": text,
        "expiration": text,
        "message_id": text,
        "timestamp": st.none() | timestamps() | st.integers(MAX_DATETIME_SECONDS + 1, 2**64 - 1),
        "message_type": text,
        "user_id": text,
        "app_id": text,
        "cluster_id": text,
    }
    unknown = overrides.keys() - fields.keys()
    if unknown:
        raise TypeError(f"not message properties: {', '.join(sorted(unknown))}")
    return st.builds(BasicProperties, **{**fields, **overrides})


@dataclass(frozen=True)
class DrawnMessage:
    """A message :func:`messages` drew: publish it with
    ``producer.publish(m.body, properties=m.properties, routing_key=m.routing_key)``."""

    body: bytes
    properties: BasicProperties
    routing_key: str


def messages(
    routing_keys: st.SearchStrategy[str] | None = None,
    max_body: int = 1024,
    **properties_overrides: st.SearchStrategy[Any],
) -> st.SearchStrategy[DrawnMessage]:
    """Whole messages: a body of up to ``max_body`` bytes, :func:`properties` (with
    ``properties_overrides``), and a routing key from ``routing_keys`` (default: any
    short string)."""
    return st.builds(
        DrawnMessage,
        body=st.binary(max_size=max_body),
        properties=properties(**properties_overrides),
        routing_key=short_strings() if routing_keys is None else routing_keys,
    )


def fault_plans(
    max_faults: int = 5,
    max_wait: float = 0.5,
    max_duration: float = 0.5,
    kinds: tuple[str, ...] = FAULT_KINDS,
) -> st.SearchStrategy[list[Fault]]:
    """Plans for :meth:`~trio_lavin.testing.FaultProxy.replay`: up to ``max_faults``
    faults of ``kinds``, each after up to ``max_wait`` seconds, the lasting ones for up
    to ``max_duration`` seconds (latency up to 50 ms a chunk).  Shrinking makes plans
    shorter, calmer and sooner.

    Raises:
        ValueError: a kind that is not a fault kind.
    """
    unknown = set(kinds) - set(FAULT_KINDS)
    if unknown:
        raise ValueError(f"not fault kinds: {', '.join(sorted(unknown))}")
    seconds = st.floats(0, max_wait, allow_nan=False)
    fault = st.builds(
        Fault,
        wait=seconds,
        kind=st.sampled_from(kinds),
        duration=st.floats(0, max_duration, allow_nan=False),
        latency=st.floats(0, 0.05, allow_nan=False),
    )
    return st.lists(fault, max_size=max_faults)
