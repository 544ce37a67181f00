"""When a producer holds its messages back because the broker will not take
them, and for how long: :class:`Pauses`, owned by one producer.

Three things make a producer wait, none of them an error of its own:

* ``connection.blocked`` (RabbitMQ's memory or disk alarm): it publishes
  nothing until ``connection.unblocked``, the connection staying up
  (heartbeats go on).  The pause is the connection's state, whatever the
  sender is doing meanwhile (waiting for confirms, or for room in a socket
  that the blocking broker stopped reading).
* LavinMQ low on disk: LavinMQ never sends ``connection.blocked``; it closes
  the publishing channel with 406 PRECONDITION_FAILED ("Server low on disk
  space") and takes publishes again once it has room, which it finds out by
  sampling its disk (every 5 s by default).  Publishing real messages to find
  out would lose them (FIRE_AND_FORGET) or churn them (CONFIRM), so the
  producer probes instead: every :data:`FLOW_PROBE_INTERVAL` it publishes an
  empty message that no queue takes, on a channel of its own in confirm
  mode; the first probe confirmed ends the pause, so publishing resumes
  within about that interval of the broker's flow coming back.
* The broker closed the publishing channel on a publish (404 no such
  exchange, 403 access refused, ...): a *rejection*.  Waiting fixes nothing
  there, so it is not a pause of the flow; the producer backs off (the
  reconnect policy, growing while rejections go on) so that it does not
  repeat the refused publish in a loop, and logs one WARNING per episode.

Each pause of the flow is reported: :attr:`Pauses.reason` (in the producer's
statistics) while it lasts, :attr:`Pauses.count`, and a
:class:`~trio_lavin.PublishingPaused` then a
:class:`~trio_lavin.PublishingResumed` event to the client's subscribers.
"""

from __future__ import annotations

import functools
import logging
import math
import random
import secrets
from typing import TYPE_CHECKING, Final

import trio

from .._client._connection import Connection
from .._exceptions import AMQPConnectionError, ChannelClosed, MessageNacked
from ._backoff import Backoff
from ._events import PublishingPaused, PublishingResumed
from ._message import is_low_disk

if TYPE_CHECKING:
    from ._client import Client

logger = logging.getLogger("trio_lavin.producer")

#: Seconds between two probes of a broker that is low on disk (LavinMQ).
FLOW_PROBE_INTERVAL: Final = 0.5
#: Longest a probe may take (open a channel, publish, get the confirm).
FLOW_PROBE_TIMEOUT: Final = 10.0


class Pauses:
    """The pauses of one producer's publishing (see the module doc)."""

    def __init__(self, client: Client, target: str, *, confirm: bool, rng: random.Random) -> None:
        self._client = client
        self._target = target
        self._confirm = confirm
        self._rng = rng
        #: Pauses of the flow so far.
        self.count = 0
        # Why publishing is paused now, and since when (None: it is not), for
        # each of the two ways.
        self._blocked: tuple[str, float] | None = None
        self._low_disk: tuple[str, float] | None = None
        self._watched: Connection | None = None
        #: While the broker rejects our publishes: the backoff of the next
        #: pause; None outside such an episode.
        self._rejections: Backoff | None = None
        #: When the producer's current channel was opened.
        self._channel_opened_at = -math.inf
        # A routing key no queue is bound with: the probe's message goes nowhere.
        self._probe_key = f"trio-lavin.flow-probe.{secrets.token_hex(8)}"

    @property
    def reason(self) -> str | None:
        """Why publishing is paused now (None: it is not)."""
        pause = self._blocked or self._low_disk
        return None if pause is None else pause[0]

    def channel_opened(self, connection: Connection) -> None:
        """The producer opened a new publishing channel on ``connection``."""
        self._channel_opened_at = trio.current_time()
        if connection is not self._watched:
            self._watched = connection
            connection.on_blocked_change(functools.partial(self._blocked_changed, connection))
            self._blocked_changed(connection)

    def _blocked_changed(self, connection: Connection) -> None:
        """``connection.blocked`` (or its end) is a pause whatever the sender
        is doing (waiting for confirms, or for the socket, which a blocking
        RabbitMQ stops reading)."""
        if connection is not self._watched:
            return
        blocked = connection.blocked and connection.is_open
        if blocked and self._blocked is None:
            reason = connection.blocked_reason or "no reason given"
            self._blocked = self._begin(f"the broker blocked the connection ({reason})")
        elif not blocked and self._blocked is not None:
            self._end(self._blocked)
            self._blocked = None

    def confirmed(self) -> None:
        """The broker confirmed a message: a rejection episode is over."""
        self._rejections = None

    async def after_channel_closed(self, error: ChannelClosed) -> None:
        """The broker closed the publishing channel with ``error``: wait
        until publishing may go on (see the module doc)."""
        if error.reply_code is None:
            return  # we closed it ourselves
        if is_low_disk(error):
            self._low_disk = self._begin(f"the broker refused a publish (low on disk?): {error}")
            try:
                await self._probe_until_flowing()
            finally:
                pause, self._low_disk = self._low_disk, None
            self._end(pause)  # not after an exception: the producer is ending
            return
        config = self._client.config
        lasted = trio.current_time() - self._channel_opened_at >= config.reconnect_max_delay
        episode = self._rejections
        if episode is None or lasted:
            episode = config.backoff()
        delay = episode.delay(self._rng)
        if self._confirm:
            meaning = f"messages are retried up to {config.publish_retries} times, then dropped"
        else:
            meaning = "messages in flight are lost (FIRE_AND_FORGET)"
        # One WARNING per episode; the pauses that follow are at DEBUG.
        logger.log(
            logging.WARNING if episode.attempt == 0 else logging.DEBUG,
            "broker closed the publishing channel of %r (%s); %s; pausing %.2f s",
            self._target,
            error,
            meaning,
            delay,
        )
        self._rejections = episode.next()
        await trio.sleep(delay)

    async def _probe_until_flowing(self) -> None:
        while True:
            await trio.sleep(FLOW_PROBE_INTERVAL)
            try:
                with trio.fail_after(FLOW_PROBE_TIMEOUT):
                    if await self._probe():
                        return
            except (AMQPConnectionError, trio.TooSlowError):
                return  # cannot tell: back to publishing, which finds out

    async def _probe(self) -> bool:
        """Whether the broker takes a publish now: one empty message that no
        queue takes, on a channel of its own in confirm mode."""
        try:
            channel = await self._client.open_channel()
        except ChannelClosed as exc:  # the broker refuses channels: not flowing either
            logger.debug("flow probe for %r: no channel (%s)", self._target, exc)
            return False
        try:
            await channel.confirm_select()
            await channel.publish(b"", routing_key=self._probe_key)
        except (ChannelClosed, MessageNacked) as exc:
            logger.debug("flow probe for %r: still refused (%s)", self._target, exc)
            return False
        finally:
            await channel.aclose()
        return True

    def _begin(self, reason: str) -> tuple[str, float]:
        """A pause begins: report it; (reason, since)."""
        since = trio.current_time()
        self.count += 1
        logger.warning("publishing to %r paused: %s", self._target, reason)
        self._client.report(PublishingPaused(self._target, reason, since))
        return reason, since

    def _end(self, pause: tuple[str, float]) -> None:
        now = trio.current_time()
        paused_for = now - pause[1]
        logger.info("publishing to %r resumed after %.2f s", self._target, paused_for)
        self._client.report(PublishingResumed(self._target, now, paused_for))
