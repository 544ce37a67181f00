"""The public hypothesis strategies (trio_lavin.testing.strategies): what they draw
comes back equal from the codec, and their options do what they say."""

from __future__ import annotations

import datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import trio_lavin as tl
from trio_lavin._sansio._fieldtable import encode_table, table
from trio_lavin._sansio._properties import decode_properties, encode_properties
from trio_lavin.testing import Fault, strategies
from trio_lavin.testing._fault_proxy import FAULT_KINDS

#: What a field table's scalars decode to.
SCALARS = (type(None), bool, int, float, str, bytes, Decimal, datetime.datetime)


@settings(max_examples=300)
@given(strategies.properties())
def test_drawn_properties_come_back_equal_from_the_codec(properties: tl.BasicProperties) -> None:
    encoded = encode_properties(properties)
    assert decode_properties(encoded, 0, len(encoded)) == properties


@settings(max_examples=300)
@given(strategies.field_tables())
def test_drawn_tables_come_back_equal_from_the_codec(value: dict[str, Any]) -> None:
    decoded, end = table(encode_table(value), 0)
    assert decoded == value
    assert end == len(encode_table(value))


@given(strategies.properties(expiration=st.none(), user_id=st.none()))
def test_an_override_gives_a_property_its_own_strategy(properties: tl.BasicProperties) -> None:
    assert properties.expiration is None
    assert properties.user_id is None


def test_an_override_that_names_no_property_is_refused() -> None:
    with pytest.raises(TypeError, match="not message properties: expiry"):
        strategies.properties(expiry=st.none())


@given(strategies.field_values())
def test_field_values_are_of_the_types_a_table_carries(value: object) -> None:
    def check(item: object) -> None:
        if isinstance(item, list):
            for inner in item:
                check(inner)
        elif isinstance(item, dict):
            for key, inner in item.items():
                assert isinstance(key, str)
                check(inner)
        else:
            assert isinstance(item, SCALARS), type(item)

    check(value)
    encode_table({"v": value})  # encodable, or this raises


@given(strategies.fault_plans(max_faults=4, max_wait=0.2, max_duration=0.3))
def test_fault_plans_are_lists_of_faults_within_the_bounds(plan: list[Fault]) -> None:
    assert len(plan) <= 4
    for fault in plan:
        assert fault.kind in FAULT_KINDS
        assert 0 <= fault.wait <= 0.2
        assert 0 <= fault.duration <= 0.3
        assert 0 <= fault.latency <= 0.05


def test_fault_plans_of_a_kind_that_does_not_exist_are_refused() -> None:
    with pytest.raises(ValueError, match="not fault kinds: explode"):
        strategies.fault_plans(kinds=("sever_rst", "explode"))


@given(strategies.messages(routing_keys=st.just("orders"), max_body=16, user_id=st.none()))
def test_messages_have_a_body_properties_and_a_routing_key(
    message: strategies.DrawnMessage,
) -> None:
    assert len(message.body) <= 16
    assert message.routing_key == "orders"
    assert message.properties.user_id is None
    encoded = encode_properties(message.properties)
    assert decode_properties(encoded, 0, len(encoded)) == message.properties
