"""Every (state, input) pair of both tables either transitions or raises a
protocol error of the right side and code."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_lavin._sansio import (
    ChannelError,
    ChannelInput,
    ChannelState,
    ConnectionInput,
    ConnectionState,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
)
from trio_lavin._sansio._channel_state import CHANNEL_TRANSITIONS, channel_transition
from trio_lavin._sansio._connection_state import CONNECTION_TRANSITIONS, connection_transition

# The rules, stated again independently of the tables (from AMQP 0-9-1 and
# the modules' docstrings): None means "not allowed here".
CS, CI = ConnectionState, ConnectionInput
_HANDSHAKE = {
    CS.INITIAL: (CI.SEND_PROTOCOL_HEADER, CS.AWAIT_START),
    CS.AWAIT_START: (CI.RECV_START, CS.AWAIT_TUNE),
    CS.AWAIT_TUNE: (CI.RECV_TUNE, CS.AWAIT_OPEN_OK),
    CS.AWAIT_OPEN_OK: (CI.RECV_OPEN_OK, CS.OPEN),
}


def expected_connection_state(
    state: ConnectionState, input_: ConnectionInput
) -> ConnectionState | None:
    """Where ``input_`` takes a connection in ``state``, by the rules."""
    if state in _HANDSHAKE and input_ is _HANDSHAKE[state][0]:
        return _HANDSHAKE[state][1]
    tuned = state in (CS.AWAIT_OPEN_OK, CS.OPEN, CS.CLOSING)  # heartbeats agreed
    if input_ is CI.RECV_CLOSE:
        # The broker may close from Tune on (403 after StartOk, 530 after
        # Open); while we close, we answer it and still wait for our CloseOk.
        if state in (CS.AWAIT_TUNE, CS.AWAIT_OPEN_OK, CS.OPEN):
            return CS.CLOSED
        return CS.CLOSING if state is CS.CLOSING else None
    if input_ is CI.RECV_CLOSE_OK:
        return CS.CLOSED if state is CS.CLOSING else None
    if input_ is CI.SEND_CLOSE:
        return CS.CLOSING if state in (CS.AWAIT_OPEN_OK, CS.OPEN) else None
    if input_ in (CI.RECV_HEARTBEAT, CI.SEND_HEARTBEAT):
        return state if tuned else None
    if input_ in (CI.RECV_BLOCKED, CI.RECV_UNBLOCKED, CI.RECV_CHANNEL_FRAME):
        # Only once open; after our Close they are discarded.
        return state if state in (CS.OPEN, CS.CLOSING) else None
    if input_ is CI.SEND_CHANNEL_FRAME:
        return CS.OPEN if state is CS.OPEN else None
    return None  # other methods and content on channel 0, and anything once CLOSED


HS, HI = ChannelState, ChannelInput


def expected_channel_state(state: ChannelState, input_: ChannelInput) -> ChannelState | None:
    """Where ``input_`` takes a channel in ``state``, by the rules."""
    if state is HS.CLOSED:
        return HS.OPENING if input_ is HI.SEND_OPEN else None
    if state is HS.OPENING:
        return {HI.RECV_OPEN_OK: HS.OPEN, HI.RECV_CLOSE: HS.CLOSED, HI.SEND_CLOSE: HS.CLOSING}.get(
            input_
        )
    if state is HS.OPEN:
        if input_ in (HI.SEND_METHOD, HI.RECV_METHOD, HI.RECV_CONTENT):
            return HS.OPEN
        return {HI.SEND_CLOSE: HS.CLOSING, HI.RECV_CLOSE: HS.CLOSED}.get(input_)
    # CLOSING: our Close is out; everything but its CloseOk is discarded, and
    # we send nothing more.
    if input_ is HI.RECV_CLOSE_OK:
        return HS.CLOSED
    if input_ in (HI.RECV_OPEN_OK, HI.RECV_METHOD, HI.RECV_CONTENT, HI.RECV_CLOSE):
        return HS.CLOSING
    return None


@given(state=st.sampled_from(ConnectionState), input_=st.sampled_from(ConnectionInput))
def test_connection_table_transitions_or_raises_the_right_error(
    state: ConnectionState, input_: ConnectionInput
) -> None:
    expected = expected_connection_state(state, input_)
    if expected is not None:
        assert connection_transition(state, input_) == expected
        return
    received = input_.value.startswith("RECV_")
    expected_error = RemoteProtocolError if received else LocalProtocolError
    with pytest.raises(expected_error) as excinfo:
        connection_transition(state, input_)
    assert excinfo.value.reply_code in (503, 504, 505)
    assert state.value in str(excinfo.value)
    assert input_.value in str(excinfo.value)


@given(state=st.sampled_from(ChannelState), input_=st.sampled_from(ChannelInput))
def test_channel_table_transitions_or_raises_the_right_error(
    state: ChannelState, input_: ChannelInput
) -> None:
    expected = expected_channel_state(state, input_)
    if expected is not None:
        assert channel_transition(state, input_, 7) == expected
        return
    received = input_.value.startswith("RECV_")
    if received and state is ChannelState.CLOSED:
        expected_error: type[ProtocolError] = ChannelError
    else:
        expected_error = RemoteProtocolError if received else LocalProtocolError
    with pytest.raises(expected_error) as excinfo:
        channel_transition(state, input_, 7)
    assert excinfo.value.reply_code in (503, 504, 505)
    assert "channel 7" in str(excinfo.value)


def test_the_tables_hold_exactly_the_pairs_the_rules_allow() -> None:
    allowed_connection = {
        (state, input_): expected
        for state in ConnectionState
        for input_ in ConnectionInput
        if (expected := expected_connection_state(state, input_)) is not None
    }
    assert allowed_connection == CONNECTION_TRANSITIONS
    allowed_channel = {
        (channel_state, channel_input): next_state
        for channel_state in ChannelState
        for channel_input in ChannelInput
        if (next_state := expected_channel_state(channel_state, channel_input)) is not None
    }
    assert allowed_channel == CHANNEL_TRANSITIONS


def test_closed_connection_state_is_terminal() -> None:
    assert not [pair for pair in CONNECTION_TRANSITIONS if pair[0] is ConnectionState.CLOSED]


def test_every_connection_state_is_reachable_from_initial() -> None:
    reached = {ConnectionState.INITIAL}
    frontier = [ConnectionState.INITIAL]
    while frontier:
        state = frontier.pop()
        for (source, _), target in CONNECTION_TRANSITIONS.items():
            if source is state and target not in reached:
                reached.add(target)
                frontier.append(target)
    assert reached == set(ConnectionState)


def test_data_in_closed_state_is_rejected_with_state_in_message() -> None:
    with pytest.raises(
        RemoteProtocolError, match="Invalid input RECV_START in connection state OPEN"
    ):
        connection_transition(ConnectionState.OPEN, ConnectionInput.RECV_START)


def test_importing_the_sansio_core_does_not_import_trio() -> None:
    code = (
        "import sys; import trio_lavin._sansio, trio_lavin._params; print('trio' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "False"


def test_sansio_sources_do_not_mention_trio_or_clocks() -> None:
    import pathlib

    import trio_lavin._sansio

    root = pathlib.Path(trio_lavin._sansio.__file__).parent
    for path in root.glob("*.py"):
        text = path.read_text()
        assert "import trio" not in text, path
        assert "import time" not in text, path
        assert "time.monotonic" not in text, path
