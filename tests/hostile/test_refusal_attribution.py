"""Which call a broker's hard error is raised to: a Connection.Close names a
command but not a channel, so the refusal goes to the call that sent it only
when no other call waits for the same kind of reply."""

from __future__ import annotations

import pytest
import trio
from pamqp import commands

import trio_lavin as tl
from trio_lavin._sansio._framing import FrameReader
from trio_lavin.testing import BrokerConnection, FakeBroker

from ._server import Behaviour, Session, method_frame, open_hostile_broker

CLOSE = commands.Connection.Close(503, "COMMAND_INVALID - unknown exchange type 'x-bad'", 40, 10)


def closes_once_declares_arrive(count: int) -> Behaviour:
    """A broker that opens channels, waits for ``count`` exchange.declare
    frames, and closes the connection over exchange.declare."""

    async def behaviour(session: Session, broker: FakeBroker) -> None:
        def channels_open(conn: BrokerConnection) -> bool:
            return len(conn.channel_ids) >= count

        await session.handshake(broker, until=channels_open)
        reader = FrameReader(0)
        seen = 0
        with trio.fail_after(10):
            while seen < count:
                reader.receive_data(await session.stream.receive_some(65_536))
                while (frame := reader.next_frame()) is not None:
                    seen += isinstance(frame[1], commands.Exchange.Declare)
        await session.send(method_frame(0, CLOSE))
        await session.finish()

    return behaviour


async def _declare_on(count: int) -> dict[str, BaseException]:
    errors: dict[str, BaseException] = {}
    async with (
        open_hostile_broker([closes_once_declares_arrive(count)]) as hostile,
        tl.open_connection(hostile.url) as conn,
    ):
        channels = [await conn.channel() for _ in range(count)]

        async def declare(channel: tl.Channel, name: str) -> None:
            try:
                await channel.exchange_declare(name, "direct")
            except tl.AMQPError as exc:
                errors[name] = exc

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                for number, channel in enumerate(channels):
                    nursery.start_soon(declare, channel, f"exchange-{number}")
    return errors


async def test_the_one_call_waiting_for_the_refused_command_gets_command_refused() -> None:
    errors = await _declare_on(1)
    assert list(errors) == ["exchange-0"]
    refused = errors["exchange-0"]
    assert isinstance(refused, tl.CommandRefused)
    assert refused.reply_code == 503
    assert refused.command == "exchange.declare"


@pytest.mark.parametrize("count", [2, 3])
async def test_calls_waiting_for_the_same_command_on_several_channels_get_the_connection_loss(
    count: int,
) -> None:
    """Regression: each of them got CommandRefused, and the innocent ones
    were not retried."""
    errors = await _declare_on(count)
    assert sorted(errors) == [f"exchange-{n}" for n in range(count)]
    for error in errors.values():
        assert not isinstance(error, tl.CommandRefused)
        assert isinstance(error, tl.ConnectionClosedByBroker)
        assert error.reply_code == 503
        assert error.command == "exchange.declare"
