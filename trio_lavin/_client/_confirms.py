"""The bookkeeping of a channel in confirm mode: the messages published and
not yet confirmed, and the ``mandatory`` ones a ``Basic.Return`` may still
name.  No I/O: the channel feeds it the broker's acks, nacks and returns."""

from __future__ import annotations

from collections import deque

from .._exceptions import MessageNacked, MessageReturned
from .._sansio import _events as ev
from ._delivery import Confirmation


class Confirms:
    """The unconfirmed messages of one channel, by publish sequence number."""

    def __init__(self) -> None:
        self._unconfirmed: dict[int, Confirmation] = {}
        #: Their sequence numbers, oldest first (some may be confirmed already).
        self._order: deque[int] = deque()
        #: The ``mandatory`` ones, oldest first: a return names one of them.
        self._mandatory: deque[Confirmation] = deque()

    def add(self, confirmation: Confirmation) -> None:
        """A message was published with this sequence number."""
        tag = confirmation.delivery_tag
        self._unconfirmed[tag] = confirmation
        self._order.append(tag)
        if confirmation.mandatory:
            self._mandatory.append(confirmation)

    def last(self) -> Confirmation | None:
        """The newest unconfirmed message, if any."""
        while self._order:
            last = self._unconfirmed.get(self._order[-1])
            if last is not None:
                return last
            self._order.pop()
        return None

    def settle(self, delivery_tag: int, multiple: bool, acked: bool) -> None:
        """The broker acked (or nacked) ``delivery_tag`` (``multiple``: and
        every earlier one)."""
        unconfirmed = self._unconfirmed
        order = self._order
        if multiple:
            while order and order[0] <= delivery_tag:
                confirmation = unconfirmed.pop(order.popleft(), None)
                if confirmation is not None:
                    _verdict(confirmation, acked)
        else:
            confirmation = unconfirmed.pop(delivery_tag, None)
            if confirmation is not None:
                _verdict(confirmation, acked)
            while order and order[0] not in unconfirmed:
                order.popleft()
        mandatory = self._mandatory
        while mandatory and mandatory[0].done:
            mandatory.popleft()

    def returned(self, event: ev.ReturnedMessage) -> bool:
        """A ``Basic.Return``: mark the mandatory message it names (its
        confirm, which follows, then raises :class:`MessageReturned`); False
        if it names none of ours."""
        for confirmation in self._mandatory:
            if (
                confirmation.returned is None
                and not confirmation.done
                and confirmation.exchange == event.exchange
                and confirmation.routing_key == event.routing_key
                and confirmation.body == event.body
            ):
                confirmation.returned = MessageReturned(
                    event.reply_code, event.reply_text, event.exchange, event.routing_key
                )
                return True
        return False

    def fail_all(self, error: BaseException) -> None:
        """The channel is gone: every unconfirmed message gets ``error``."""
        for confirmation in self._unconfirmed.values():
            confirmation.resolve(error)
        self._unconfirmed.clear()
        self._order.clear()
        self._mandatory.clear()


def _verdict(confirmation: Confirmation, acked: bool) -> None:
    if not acked:
        confirmation.resolve(MessageNacked(confirmation.delivery_tag))
    else:
        confirmation.resolve(confirmation.returned)
