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

UTC = datetime.UTC

#: Text as a broker may relay it: any bytes, decoded the way the codec does.
relayed_text = st.binary(max_size=12).map(lambda raw: raw.decode("utf-8", "surrogateescape"))
keys = st.one_of(st.text(max_size=8), relayed_text).filter(
    lambda key: len(key.encode("utf-8", "surrogateescape")) < 256
)
#: Datetimes a timestamp carries exactly: whole seconds, UTC, from 1970 on.
whole_second_datetimes = st.datetimes(
    min_value=datetime.datetime(1970, 1, 1), max_value=datetime.datetime(9999, 12, 31, 23, 59, 59)
).map(lambda d: d.replace(microsecond=0, tzinfo=UTC))


def scalars(*, pamqp_safe: bool = False) -> st.SearchStrategy[Any]:
    """Every scalar a field table carries; ``pamqp_safe``: only those pamqp
    encodes and decodes right (no doubles, no bytes, small timestamps,
    non-negative decimals, UTF-8 text)."""
    common = [
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**63 - 1),
        st.decimals(min_value=0, max_value=10**6, places=2),
    ]
    if pamqp_safe:
        return st.one_of(
            *common,
            st.text(max_size=20),
            st.datetimes(
                min_value=datetime.datetime(1970, 1, 2), max_value=datetime.datetime(2100, 1, 1)
            ).map(lambda d: d.replace(microsecond=0, tzinfo=UTC)),
        )
    return st.one_of(
        *common,
        st.decimals(min_value=-(10**6), max_value=10**6, places=3),
        st.floats(allow_nan=False),
        st.text(max_size=20),
        relayed_text,
        st.binary(max_size=20),
        whole_second_datetimes,
    )


def values(*, pamqp_safe: bool = False) -> st.SearchStrategy[Any]:
    return st.recursive(
        scalars(pamqp_safe=pamqp_safe),
        lambda inner: (
            st.lists(inner, max_size=4)
            | st.dictionaries(keys if not pamqp_safe else st.text(max_size=8), inner, max_size=4)
        ),
        max_leaves=20,
    )


def tables(*, pamqp_safe: bool = False) -> st.SearchStrategy[dict[str, Any]]:
    key = st.text(max_size=8).filter(lambda k: len(k.encode()) < 129) if pamqp_safe else keys
    return st.dictionaries(key, values(pamqp_safe=pamqp_safe), max_size=6)


def short_strings(*, pamqp_safe: bool = False) -> st.SearchStrategy[str]:
    if pamqp_safe:  # pamqp drops empty strings
        return st.text(min_size=1, max_size=10)
    return st.one_of(st.text(max_size=10), relayed_text)


def properties(*, pamqp_safe: bool = False) -> st.SearchStrategy[BasicProperties]:
    text = st.none() | short_strings(pamqp_safe=pamqp_safe)
    timestamps = (
        st.datetimes(
            min_value=datetime.datetime(1970, 1, 2), max_value=datetime.datetime(2100, 1, 1)
        ).map(lambda d: d.replace(microsecond=0, tzinfo=UTC))
        if pamqp_safe
        else whole_second_datetimes | st.integers(MAX_DATETIME_SECONDS + 1, 2**64 - 1)
    )
    return st.builds(
        BasicProperties,
        content_type=text,
        content_encoding=text,
        headers=st.none() | tables(pamqp_safe=pamqp_safe),
        # pamqp refuses delivery modes other than 1 and 2; AMQP carries any octet
        delivery_mode=st.none() | (st.sampled_from([1, 2]) if pamqp_safe else st.integers(0, 255)),
        priority=st.none() | st.integers(0, 255),
        correlation_id=text,
        reply_to=text,
        expiration=text,
        message_id=text,
        timestamp=st.none() | timestamps,
        message_type=text,
        user_id=text,
        app_id=text,
        cluster_id=st.none() if pamqp_safe else text,
    )


MAX_DATETIME_SECONDS = 253_402_300_799


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
