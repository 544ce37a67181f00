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


@given(state=st.sampled_from(ConnectionState), input_=st.sampled_from(ConnectionInput))
def test_connection_table_transitions_or_raises_the_right_error(
    state: ConnectionState, input_: ConnectionInput
) -> None:
    if (state, input_) in CONNECTION_TRANSITIONS:
        assert connection_transition(state, input_) is CONNECTION_TRANSITIONS[state, input_]
        return
    received = input_.value.startswith("RECV_")
    expected = RemoteProtocolError if received else LocalProtocolError
    with pytest.raises(expected) as excinfo:
        connection_transition(state, input_)
    assert excinfo.value.reply_code in (503, 504, 505)
    assert state.value in str(excinfo.value)
    assert input_.value in str(excinfo.value)


@given(state=st.sampled_from(ChannelState), input_=st.sampled_from(ChannelInput))
def test_channel_table_transitions_or_raises_the_right_error(
    state: ChannelState, input_: ChannelInput
) -> None:
    if (state, input_) in CHANNEL_TRANSITIONS:
        assert channel_transition(state, input_, 7) is CHANNEL_TRANSITIONS[state, input_]
        return
    received = input_.value.startswith("RECV_")
    if received and state is ChannelState.CLOSED:
        expected: type[ProtocolError] = ChannelError
    else:
        expected = RemoteProtocolError if received else LocalProtocolError
    with pytest.raises(expected) as excinfo:
        channel_transition(state, input_, 7)
    assert excinfo.value.reply_code in (503, 504, 505)
    assert "channel 7" in str(excinfo.value)


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
