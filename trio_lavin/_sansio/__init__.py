"""The pure AMQP 0-9-1 client machine: bytes in, events out, bytes out.

Nothing in this package imports trio, reads a clock or does I/O; time comes in
as ``now: float`` arguments and deadlines go out as floats.  A test checks it.
"""

from ._channel_state import ChannelInput as ChannelInput
from ._channel_state import ChannelState as ChannelState
from ._connection import AMQPConnection as AMQPConnection
from ._connection import negotiate as negotiate
from ._connection_state import ConnectionInput as ConnectionInput
from ._connection_state import ConnectionState as ConnectionState
from ._content import ContentAssembler as ContentAssembler
from ._errors import ChannelError as ChannelError
from ._errors import CommandInvalid as CommandInvalid
from ._errors import FrameError as FrameError
from ._errors import LocalProtocolError as LocalProtocolError
from ._errors import ProtocolError as ProtocolError
from ._errors import ProtocolVersionMismatch as ProtocolVersionMismatch
from ._errors import RemoteProtocolError as RemoteProtocolError
from ._errors import UnexpectedFrame as UnexpectedFrame
from ._framing import FrameReader as FrameReader
from ._heartbeat import HeartbeatTimer as HeartbeatTimer
