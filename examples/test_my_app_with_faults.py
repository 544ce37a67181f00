"""Testing your own application against network faults, with FaultProxy and hypothesis.

Shows how an application built on trio-lavin can prove it loses nothing when
the network misbehaves: :class:`trio_lavin.testing.FaultProxy` sits between
the app and a real broker and severs or stalls the connection on command, and
hypothesis generates the sequences of orders and faults.  The property: every
order the app accepted reaches the queue at least once (duplicates are
allowed: that is what at-least-once means), and the app's producer reports
no message dropped.

It is a pytest file; run it against a broker (default
``amqp://guest:guest@localhost/``) with::

    AMQP_URL=amqp://guest:guest@localhost/ python -m pytest examples/test_my_app_with_faults.py

``HYPOTHESIS_EXAMPLES`` sets how many fault sequences to try (default 5).
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import trio_lavin as lavin
from trio_lavin.testing import FaultProxy, open_fault_proxy

URL = os.environ.get("AMQP_URL", "amqp://guest:guest@localhost/")
EXAMPLES = int(os.environ.get("HYPOTHESIS_EXAMPLES", "5"))

# -- the application under test -----------------------------------------------------------


class OrderService:
    """A (tiny) application: it accepts orders and records each one by
    publishing it to a queue, with publisher confirms."""

    def __init__(self, client: lavin.Client, queue: str) -> None:
        self.producer = client.producer(queue, mode=lavin.PublishMode.CONFIRM)
        self.dropped: list[bytes] = []
        self.producer.on_drop(lambda message, target, reason: self.dropped.append(message.body))

    async def place_order(self, order_id: int) -> None:
        await self.producer.enqueue(json.dumps({"order": order_id}).encode())

    async def flush(self) -> None:
        await self.producer.drain()


# -- the tests -------------------------------------------------------------------------------

#: Reconnect quickly: the faults below are short.
CONFIG = lavin.Config(reconnect_initial_delay=0.05, reconnect_max_delay=0.5, heartbeat=5)


@dataclass(frozen=True)
class PlaceOrders:
    count: int


@dataclass(frozen=True)
class Sever:
    """The connection is reset (a broker crash, a load balancer)."""


@dataclass(frozen=True)
class Stall:
    """Nothing passes for a moment (a network hiccup), then it heals."""

    seconds: float


Step = PlaceOrders | Sever | Stall

steps = st.lists(
    st.one_of(
        st.builds(PlaceOrders, st.integers(1, 20)),
        st.builds(Sever),
        st.builds(Stall, st.floats(0.05, 0.3)),
    ),
    min_size=1,
    max_size=6,
)


async def read_orders(queue: str) -> list[int]:
    """Every order in ``queue`` (emptying it), straight from the broker."""
    orders = []
    async with lavin.open_connection(URL) as connection:
        channel = await connection.channel()
        while (delivery := await channel.basic_get(queue, no_ack=True)) is not None:
            orders.append(json.loads(delivery.body)["order"])
        await channel.queue_delete(queue)
    return orders


async def run_scenario(script: list[Step]) -> tuple[list[int], list[int], list[bytes]]:
    queue = f"my-app-orders-{secrets.token_hex(4)}"
    params = lavin.parse_url(URL)
    placed: list[int] = []
    with trio.fail_after(60):
        async with (
            open_fault_proxy(params.host, params.port) as proxy,
            lavin.open_client(proxy.url_for(URL), CONFIG) as client,
        ):
            await client.declare_queue(queue)
            service = OrderService(client, queue)
            for step in script:
                await apply(step, service, proxy, placed)
            await service.flush()
    return placed, await read_orders(queue), service.dropped


async def apply(step: Step, service: OrderService, proxy: FaultProxy, placed: list[int]) -> None:
    if isinstance(step, PlaceOrders):
        for _ in range(step.count):
            placed.append(len(placed))
            await service.place_order(placed[-1])
    elif isinstance(step, Sever):
        proxy.sever()
    else:
        proxy.blackhole()
        await trio.sleep(step.seconds)
        proxy.restore()


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,  # keep no example database in the working directory
    suppress_health_check=[HealthCheck.too_slow],
)
@given(script=steps)
def test_every_accepted_order_reaches_the_queue_despite_faults(script: list[Step]) -> None:
    placed, received, dropped = trio.run(run_scenario, script)
    assert dropped == []
    assert set(received) == set(placed)  # at least once each
    assert len(received) >= len(placed)  # a resend after a fault may duplicate


@pytest.mark.trio
async def test_orders_placed_while_the_broker_is_unreachable_are_sent_after_it_returns() -> None:
    queue = f"my-app-orders-{secrets.token_hex(4)}"
    params = lavin.parse_url(URL)
    with trio.fail_after(30):
        async with (
            open_fault_proxy(params.host, params.port) as proxy,
            lavin.open_client(proxy.url_for(URL), CONFIG) as client,
        ):
            await client.declare_queue(queue)
            service = OrderService(client, queue)
            proxy.refuse = True  # the broker is "down": reconnects fail
            proxy.sever()
            for order_id in range(10):
                await service.place_order(order_id)  # buffered meanwhile
            await trio.sleep(0.5)
            proxy.refuse = False
            await service.flush()
    assert sorted(set(await read_orders(queue))) == list(range(10))
    assert service.dropped == []
