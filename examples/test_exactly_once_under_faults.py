"""An application checked for exactly-once processing under faults, with
``trio_lavin.testing.machines.FaultMachine``.

The application consumes orders and saves each in its store.  The store is idempotent
(saving an order id twice keeps one), so processing is exactly once as long as no
order is lost: the invariant is "once the faults stop and everything settles, the
store holds exactly the orders placed, and the producer gave up on none".  Hypothesis
interleaves placing orders with the machine's faults: severed and blackholed
connections, a broker refusing connections for a while, the application crashing and
starting again, and time passing (on a virtual clock, so the runs are quick).

The correct application acks an order after saving it.  A planted bug, acking before
saving, loses the order being saved when the application crashes; the machine finds
that within hypothesis's default budget of examples (100; it took 4 to 10 when we
measured), which the second test checks.

It is a pytest file, on the in-process fake broker (no broker needed)::

    python -m pytest examples/test_exactly_once_under_faults.py
"""

from __future__ import annotations

import pytest
import trio
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import invariant, rule, run_state_machine_as_test

import trio_lavin as lavin
from trio_lavin.testing.machines import FaultMachine

QUEUE = "orders"

# -- the application under test -----------------------------------------------------------


async def process_orders(
    client: lavin.Client, store: dict[str, bytes], *, ack_first: bool = False
) -> None:
    """Consume the orders and save each in ``store`` (by its message id, so a
    redelivered order is saved once)."""
    async with client.consume(QUEUE, prefetch=10) as deliveries:
        async for delivery in deliveries:
            order_id = delivery.properties.message_id
            assert order_id is not None
            if ack_first:  # the planted bug
                await delivery.ack()
            await trio.sleep(0.01)  # saving takes a moment
            store.setdefault(order_id, delivery.body)
            if not ack_first:
                await delivery.ack()


# -- the state machine -----------------------------------------------------------------------


class OrderMachine(FaultMachine):
    """Orders are placed while the machine's faults happen; none may be lost."""

    ack_first = False

    def __init__(self) -> None:
        self.placed: set[str] = set()
        self.store: dict[str, bytes] = {}
        self.dropped: list[bytes] = []
        super().__init__()

    async def prepare(self, client: lavin.Client) -> None:
        await client.declare_queue(QUEUE, durable=True)
        self.producer = client.producer(QUEUE)
        self.producer.on_drop(lambda message, target, reason: self.dropped.append(message.body))

    async def application(self, client: lavin.Client) -> None:
        await process_orders(client, self.store, ack_first=self.ack_first)

    @rule(count=st.integers(1, 5))
    def place_orders(self, count: int) -> None:
        self.call(self.place, count)  # rules run in hypothesis's thread: act in trio's

    async def place(self, count: int) -> None:
        for _ in range(count):
            order_id = f"order-{len(self.placed)}"
            properties = lavin.BasicProperties(message_id=order_id, delivery_mode=2)
            # Buffered while disconnected; delivered after the reconnect.
            self.producer.publish_nowait(order_id.encode(), properties=properties)
            self.placed.add(order_id)
        await trio.lowlevel.checkpoint()

    @invariant()
    def only_placed_orders_are_saved(self) -> None:
        assert set(self.store) <= self.placed

    async def check_at_end(self) -> None:
        assert self.dropped == []
        assert set(self.store) == self.placed, f"lost: {sorted(self.placed - set(self.store))}"


class AckFirstMachine(OrderMachine):
    """The same application with the planted bug: it acks before it saves."""

    ack_first = True


OrderMachine.TestCase.settings = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestOrdersAreProcessedExactlyOnce = OrderMachine.TestCase


def test_the_machine_finds_an_application_that_acks_before_it_saves() -> None:
    # The default budget of 100 examples, without shrinking the failure found (shrinking
    # is what you want when the bug is yours, but it takes minutes).
    quick = settings(
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=[HealthCheck.too_slow],
    )
    with pytest.raises(AssertionError, match="lost: "):
        run_state_machine_as_test(AckFirstMachine, settings=quick)
