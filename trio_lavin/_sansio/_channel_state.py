"""A channel's state machine, as a table.

Same two rules as :mod:`._connection_state`: every legal ``(state, input)``
pair is a row of :data:`CHANNEL_TRANSITIONS`; anything else raises (received
input: the :class:`~._errors.RemoteProtocolError` subclass in
:data:`REMOTE_ERRORS`, which closes the whole connection since 503/504/505
are hard errors; input we would send: :class:`~._errors.LocalProtocolError`).

::

    CLOSED --send Open--> OPENING --recv OpenOk--> OPEN
    OPEN --send Close--> CLOSING --recv CloseOk--> CLOSED
    OPEN --recv Close (we reply CloseOk)--> CLOSED

``CLOSED`` is not terminal: the channel number can be opened again.  Which
methods are replies to which requests, and content assembly, are checked
by the connection on top of this table.
"""

from __future__ import annotations

import enum
from typing import Final

from ._errors import (
    ChannelError,
    CommandInvalid,
    LocalProtocolError,
    RemoteProtocolError,
    UnexpectedFrame,
)


class ChannelState(enum.Enum):
    # Members are singletons: hash by identity, in C (Enum's own __hash__
    # is Python code, and the tables are looked up for every frame).
    __hash__ = object.__hash__

    #: Not open (never opened, or closed); the number is free.
    CLOSED = "CLOSED"
    #: Channel.Open sent; waiting for OpenOk.
    OPENING = "OPENING"
    #: Open.
    OPEN = "OPEN"
    #: We sent Channel.Close; waiting for CloseOk.  Other frames are discarded.
    CLOSING = "CLOSING"


class ChannelInput(enum.Enum):
    # Members are singletons: hash by identity, in C (Enum's own __hash__
    # is Python code, and the tables are looked up for every frame).
    __hash__ = object.__hash__

    SEND_OPEN = "SEND_OPEN"
    SEND_CLOSE = "SEND_CLOSE"
    #: Any other method or content we send.
    SEND_METHOD = "SEND_METHOD"
    RECV_OPEN_OK = "RECV_OPEN_OK"
    RECV_CLOSE = "RECV_CLOSE"
    RECV_CLOSE_OK = "RECV_CLOSE_OK"
    #: Any other method the broker sends.
    RECV_METHOD = "RECV_METHOD"
    #: A content header or body frame from the broker.
    RECV_CONTENT = "RECV_CONTENT"


S = ChannelState
I = ChannelInput  # noqa: E741

#: (state, input) -> next state.  See the module docstring.
CHANNEL_TRANSITIONS: Final[dict[tuple[ChannelState, ChannelInput], ChannelState]] = {
    (S.CLOSED, I.SEND_OPEN): S.OPENING,
    (S.OPENING, I.RECV_OPEN_OK): S.OPEN,
    # The broker refused the channel (e.g. 530 channel_max reached).
    (S.OPENING, I.RECV_CLOSE): S.CLOSED,
    (S.OPENING, I.SEND_CLOSE): S.CLOSING,
    (S.OPEN, I.SEND_METHOD): S.OPEN,
    (S.OPEN, I.RECV_METHOD): S.OPEN,
    (S.OPEN, I.RECV_CONTENT): S.OPEN,
    (S.OPEN, I.SEND_CLOSE): S.CLOSING,
    (S.OPEN, I.RECV_CLOSE): S.CLOSED,
    # After we sent Close, frames already in flight are discarded.
    (S.CLOSING, I.RECV_OPEN_OK): S.CLOSING,
    (S.CLOSING, I.RECV_METHOD): S.CLOSING,
    (S.CLOSING, I.RECV_CONTENT): S.CLOSING,
    # Both sides closed at once: we answer CloseOk and still wait for ours.
    (S.CLOSING, I.RECV_CLOSE): S.CLOSING,
    (S.CLOSING, I.RECV_CLOSE_OK): S.CLOSED,
}

#: The error raised for received input that is not in the table (on a
#: ``CLOSED`` channel it is always :class:`~._errors.ChannelError`).
REMOTE_ERRORS: Final[dict[ChannelInput, type[RemoteProtocolError]]] = {
    I.RECV_OPEN_OK: CommandInvalid,
    I.RECV_CLOSE: ChannelError,
    I.RECV_CLOSE_OK: CommandInvalid,
    I.RECV_METHOD: CommandInvalid,
    I.RECV_CONTENT: UnexpectedFrame,
}


def channel_transition(state: ChannelState, input_: ChannelInput, channel: int) -> ChannelState:
    """The state of channel ``channel`` after ``input_`` in ``state``.

    Raises:
        RemoteProtocolError: (a subclass) for received input not allowed here;
            anything received on a ``CLOSED`` channel is a
            :class:`~._errors.ChannelError` (504).
        LocalProtocolError: for input we would send that is not allowed here.
    """
    try:
        return CHANNEL_TRANSITIONS[state, input_]
    except KeyError:
        pass
    message = f"Invalid input {input_.value} on channel {channel} in state {state.value}"
    error = REMOTE_ERRORS.get(input_)
    if error is None:
        raise LocalProtocolError(message) from None
    if state is S.CLOSED:
        raise ChannelError(message) from None
    raise error(message) from None
