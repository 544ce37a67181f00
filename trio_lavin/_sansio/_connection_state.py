"""The connection's state machine, as a table.

This module does not know what the frames mean; it only knows which kind of
input is allowed in which state, and where it leads.  Two rules:

1. Every legal ``(state, input)`` pair is a row of :data:`CONNECTION_TRANSITIONS`.
   Anything not in the table is a protocol error: received input raises the
   :class:`~._errors.RemoteProtocolError` subclass named by
   :data:`REMOTE_ERRORS` (the connection then closes with its reply code), and
   input we would send raises :class:`~._errors.LocalProtocolError` (nothing
   changes).
2. ``CLOSED`` is terminal: no row leaves it.

The handshake, from the client's side::

    INITIAL --send header--> AWAIT_START --recv Start--> AWAIT_TUNE
      --recv Tune--> AWAIT_OPEN_OK --recv OpenOk--> OPEN
    OPEN --send Close--> CLOSING --recv CloseOk--> CLOSED
    OPEN --recv Close (we reply CloseOk)--> CLOSED

StartOk, TuneOk and Open are our automatic replies to Start and Tune, so they
are not inputs of their own.
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


class ConnectionState(enum.Enum):
    # Members are singletons: hash by identity, in C (Enum's own __hash__
    # is Python code, and the tables are looked up for every frame).
    __hash__ = object.__hash__

    #: Nothing sent yet.
    INITIAL = "INITIAL"
    #: Protocol header sent; waiting for Connection.Start.
    AWAIT_START = "AWAIT_START"
    #: StartOk (credentials) sent; waiting for Connection.Tune.
    AWAIT_TUNE = "AWAIT_TUNE"
    #: TuneOk and Open sent; waiting for Connection.OpenOk.
    AWAIT_OPEN_OK = "AWAIT_OPEN_OK"
    #: Open: channels may be used.
    OPEN = "OPEN"
    #: We sent Connection.Close; waiting for CloseOk.  Channel frames are discarded.
    CLOSING = "CLOSING"
    #: Terminal.
    CLOSED = "CLOSED"


class ConnectionInput(enum.Enum):
    # Members are singletons: hash by identity, in C (Enum's own __hash__
    # is Python code, and the tables are looked up for every frame).
    __hash__ = object.__hash__

    SEND_PROTOCOL_HEADER = "SEND_PROTOCOL_HEADER"
    SEND_CLOSE = "SEND_CLOSE"
    SEND_HEARTBEAT = "SEND_HEARTBEAT"
    #: Any frame we send on a channel other than 0.
    SEND_CHANNEL_FRAME = "SEND_CHANNEL_FRAME"
    RECV_START = "RECV_START"
    RECV_TUNE = "RECV_TUNE"
    RECV_OPEN_OK = "RECV_OPEN_OK"
    RECV_CLOSE = "RECV_CLOSE"
    RECV_CLOSE_OK = "RECV_CLOSE_OK"
    RECV_BLOCKED = "RECV_BLOCKED"
    RECV_UNBLOCKED = "RECV_UNBLOCKED"
    RECV_HEARTBEAT = "RECV_HEARTBEAT"
    #: Any frame the broker sends on a channel other than 0.
    RECV_CHANNEL_FRAME = "RECV_CHANNEL_FRAME"
    #: A method on channel 0 that a client never accepts (e.g. Connection.Secure,
    #: since we only speak PLAIN, or Basic.Deliver on channel 0).
    RECV_OTHER_METHOD = "RECV_OTHER_METHOD"
    #: A content header or body on channel 0.
    RECV_CONTENT = "RECV_CONTENT"


S = ConnectionState
I = ConnectionInput  # noqa: E741

#: (state, input) -> next state.  See the module docstring.
CONNECTION_TRANSITIONS: Final[dict[tuple[ConnectionState, ConnectionInput], ConnectionState]] = {
    (S.INITIAL, I.SEND_PROTOCOL_HEADER): S.AWAIT_START,
    (S.AWAIT_START, I.RECV_START): S.AWAIT_TUNE,
    (S.AWAIT_TUNE, I.RECV_TUNE): S.AWAIT_OPEN_OK,
    # Authentication failure: RabbitMQ and LavinMQ send Close 403 here.
    (S.AWAIT_TUNE, I.RECV_CLOSE): S.CLOSED,
    (S.AWAIT_OPEN_OK, I.RECV_OPEN_OK): S.OPEN,
    # Missing vhost or no permission: Close 530 / 403.
    (S.AWAIT_OPEN_OK, I.RECV_CLOSE): S.CLOSED,
    (S.AWAIT_OPEN_OK, I.RECV_HEARTBEAT): S.AWAIT_OPEN_OK,
    (S.AWAIT_OPEN_OK, I.SEND_HEARTBEAT): S.AWAIT_OPEN_OK,
    (S.AWAIT_OPEN_OK, I.SEND_CLOSE): S.CLOSING,
    (S.OPEN, I.RECV_HEARTBEAT): S.OPEN,
    (S.OPEN, I.RECV_BLOCKED): S.OPEN,
    (S.OPEN, I.RECV_UNBLOCKED): S.OPEN,
    (S.OPEN, I.RECV_CHANNEL_FRAME): S.OPEN,
    (S.OPEN, I.RECV_CLOSE): S.CLOSED,
    (S.OPEN, I.SEND_CLOSE): S.CLOSING,
    (S.OPEN, I.SEND_HEARTBEAT): S.OPEN,
    (S.OPEN, I.SEND_CHANNEL_FRAME): S.OPEN,
    (S.CLOSING, I.RECV_HEARTBEAT): S.CLOSING,
    (S.CLOSING, I.RECV_BLOCKED): S.CLOSING,
    (S.CLOSING, I.RECV_UNBLOCKED): S.CLOSING,
    # The specification: after sending Close, discard everything but Close/CloseOk.
    (S.CLOSING, I.RECV_CHANNEL_FRAME): S.CLOSING,
    # Both sides closed at once: we answer CloseOk and still wait for ours.
    (S.CLOSING, I.RECV_CLOSE): S.CLOSING,
    (S.CLOSING, I.RECV_CLOSE_OK): S.CLOSED,
    (S.CLOSING, I.SEND_HEARTBEAT): S.CLOSING,
}

#: The error raised for received input that is not in the table.
REMOTE_ERRORS: Final[dict[ConnectionInput, type[RemoteProtocolError]]] = {
    I.RECV_START: CommandInvalid,
    I.RECV_TUNE: CommandInvalid,
    I.RECV_OPEN_OK: CommandInvalid,
    I.RECV_CLOSE: CommandInvalid,
    I.RECV_CLOSE_OK: CommandInvalid,
    I.RECV_BLOCKED: CommandInvalid,
    I.RECV_UNBLOCKED: CommandInvalid,
    I.RECV_OTHER_METHOD: CommandInvalid,
    I.RECV_HEARTBEAT: UnexpectedFrame,
    I.RECV_CONTENT: UnexpectedFrame,
    I.RECV_CHANNEL_FRAME: ChannelError,
}


def connection_transition(state: ConnectionState, input_: ConnectionInput) -> ConnectionState:
    """The state after ``input_`` in ``state``.

    Raises:
        RemoteProtocolError: (a subclass) for received input not allowed here.
        LocalProtocolError: for input we would send that is not allowed here.
    """
    try:
        return CONNECTION_TRANSITIONS[state, input_]
    except KeyError:
        pass
    message = f"Invalid input {input_.value} in connection state {state.value}"
    error = REMOTE_ERRORS.get(input_)
    if error is None:
        raise LocalProtocolError(message) from None
    raise error(message) from None
