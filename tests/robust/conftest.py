"""Fixtures of the fake-broker tests of the robust layer."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from trio_lavin.testing import FakeBrokerServer, open_fake_broker


@pytest.fixture(params=["memory", "socketpair"])
async def broker(request: pytest.FixtureRequest) -> AsyncIterator[FakeBrokerServer]:
    """A FakeBroker served over in-memory streams, and over a socket pair
    (the TCP code paths)."""
    async with open_fake_broker(heartbeat=10, transport=request.param) as broker:
        yield broker
