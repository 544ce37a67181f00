"""Hypothesis strategies for field tables and properties, and converters
between pamqp's properties and ours, for the codec tests."""

from __future__ import annotations

import datetime
from decimal import Decimal
from typing import Any

from hypothesis import strategies as st
from pamqp import commands

from trio_lavin import BasicProperties
from trio_lavin._sansio._properties import PROPERTY_FLAGS
from trio_lavin.testing import strategies

UTC = datetime.UTC

relayed_text = strategies.relayed_text


def _safe_scalars() -> st.SearchStrategy[Any]:
    """The scalars pamqp encodes and decodes right: no doubles, no bytes, small
    timestamps, non-negative decimals, UTF-8 text."""
    return st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**63 - 1),
        st.decimals(min_value=0, max_value=10**6, places=2),
        st.text(max_size=20),
        safe_timestamps,
    )


#: Timestamps pamqp reads right (it takes values above 2**32 for milliseconds).
safe_timestamps = st.datetimes(
    min_value=datetime.datetime(1970, 1, 2), max_value=datetime.datetime(2100, 1, 1)
).map(lambda d: d.replace(microsecond=0, tzinfo=UTC))


def tables(*, pamqp_safe: bool = False) -> st.SearchStrategy[dict[str, Any]]:
    """Field tables: every type (the public strategy), or ``pamqp_safe`` only those
    pamqp gets right."""
    if not pamqp_safe:
        return strategies.field_tables()
    values = st.recursive(
        _safe_scalars(),
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
        ),
        max_leaves=20,
    )
    key = st.text(max_size=8).filter(lambda k: len(k.encode()) < 129)
    return st.dictionaries(key, values, max_size=6)


def properties(*, pamqp_safe: bool = False) -> st.SearchStrategy[BasicProperties]:
    """Properties: every value (the public strategy), or ``pamqp_safe`` only those pamqp
    gets right (it drops empty strings, refuses delivery modes other than 1 and 2)."""
    if not pamqp_safe:
        return strategies.properties()
    text = st.none() | st.text(min_size=1, max_size=10)
    return strategies.properties(
        content_type=text,
        content_encoding=text,
        headers=st.none() | tables(pamqp_safe=True),
        delivery_mode=st.none() | st.sampled_from([1, 2]),
        correlation_id=text,
        reply_to=text,
        expiration=text,
        message_id=text,
        timestamp=st.none() | safe_timestamps,
        message_type=text,
        user_id=text,
        app_id=text,
        cluster_id=st.none(),
    )


def to_pamqp(properties: BasicProperties) -> commands.Basic.Properties:
    values = {name: getattr(properties, name) for name in PROPERTY_FLAGS}
    if values["cluster_id"] is None:
        values["cluster_id"] = ""  # pamqp's "not set"
    return commands.Basic.Properties(**values)


def from_pamqp(properties: commands.Basic.Properties) -> BasicProperties:
    values = {name: getattr(properties, name) for name in PROPERTY_FLAGS}
    values = {name: (None if value == "" else value) for name, value in values.items()}
    return BasicProperties(**values)


def normalized(value: Any) -> Any:
    """A value as the decoder gives it back: tuples as lists, bytearrays and
    memoryviews as bytes, naive datetimes as UTC, Decimals as they are."""
    if isinstance(value, dict):
        return {key: normalized(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [normalized(item) for item in value]
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, datetime.datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    if isinstance(value, Decimal):
        return value
    return value


def sorted_headers(props: BasicProperties) -> BasicProperties:
    """``props`` with its header tables' keys sorted, as pamqp encodes them."""
    if props.headers is None:
        return props
    return props.replace(headers=sorted_tables(props.headers))


def sorted_tables(value: Any) -> Any:
    """Tables with their keys sorted, as pamqp encodes them."""
    if isinstance(value, dict):
        return {key: sorted_tables(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [sorted_tables(item) for item in value]
    return value
