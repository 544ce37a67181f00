"""trio-lavin: a trio-native AMQP 0-9-1 client for LavinMQ and RabbitMQ.

The public API is re-exported here.  Submodules whose name starts with an
underscore are private.

Importing ``trio_lavin._sansio`` alone must not import trio (the protocol
core is pure), so the names that need trio are loaded on first use.

Logging goes through the standard :mod:`logging` module, under ``trio_lavin.*``
loggers.  ``trio_lavin.client`` writes one line per connection event, with
the endpoint (never the password) and the cause: INFO for a connect, a
reconnect and a close, WARNING for a lost connection and a failed attempt,
ERROR when the client gives up.  Nothing is logged per message above DEBUG.
The low-level ``open_connection`` logs its connects and losses at DEBUG
(``trio_lavin.connection``).
``trio_lavin.frames`` logs every frame at DEBUG, but only when that logger is
set to DEBUG itself (it starts at INFO) before a connection opens.

Metrics: ``client.statistics()`` returns a frozen :class:`ClientStatistics`;
:mod:`trio_lavin.prometheus` (the ``prometheus`` extra) exports it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._exceptions import AMQPConnectionError as AMQPConnectionError
from ._exceptions import AMQPError as AMQPError
from ._exceptions import ChannelClosed as ChannelClosed
from ._exceptions import CommandRefused as CommandRefused
from ._exceptions import ConnectionClosed as ConnectionClosed
from ._exceptions import ConnectionClosedByBroker as ConnectionClosedByBroker
from ._exceptions import ConnectionLost as ConnectionLost
from ._exceptions import ConsumerCancelled as ConsumerCancelled
from ._exceptions import DeliveryAlreadySettled as DeliveryAlreadySettled
from ._exceptions import MessageNacked as MessageNacked
from ._exceptions import MessageRejected as MessageRejected
from ._exceptions import MessageReturned as MessageReturned
from ._exceptions import PublishError as PublishError
from ._params import Parameters as Parameters
from ._params import parse_url as parse_url
from ._queues import QueueType as QueueType
from ._queues import queue_arguments as queue_arguments
from ._sansio._errors import FrameError as FrameError
from ._sansio._errors import LocalProtocolError as LocalProtocolError
from ._sansio._errors import ProtocolError as ProtocolError
from ._sansio._errors import RemoteProtocolError as RemoteProtocolError
from ._sansio._events import ReturnedMessage as ReturnedMessage
from ._version import __version__ as __version__

if TYPE_CHECKING:
    from ._client._channel import Channel as Channel
    from ._client._channel import QueueDeclareOk as QueueDeclareOk
    from ._client._connection import Connection as Connection
    from ._client._connection import open_connection as open_connection
    from ._client._consumer import Consumer as Consumer
    from ._client._delivery import Confirmation as Confirmation
    from ._client._delivery import Delivery as Delivery
    from ._robust._backoff import Backoff as Backoff
    from ._robust._client import Client as Client
    from ._robust._client import open_client as open_client
    from ._robust._config import Config as Config
    from ._robust._consumer import ConsumerStatistics as ConsumerStatistics
    from ._robust._consumer import RecoveringConsumer as RecoveringConsumer
    from ._robust._events import PublishingPaused as PublishingPaused
    from ._robust._events import PublishingResumed as PublishingResumed
    from ._robust._events import QueueRenamed as QueueRenamed
    from ._robust._events import RecoveryFailed as RecoveryFailed
    from ._robust._message import BufferFull as BufferFull
    from ._robust._message import BufferPolicy as BufferPolicy
    from ._robust._message import DropReason as DropReason
    from ._robust._message import Message as Message
    from ._robust._message import MessageTooLarge as MessageTooLarge
    from ._robust._message import ProducerClosed as ProducerClosed
    from ._robust._message import ProducerStatistics as ProducerStatistics
    from ._robust._message import PublishMode as PublishMode
    from ._robust._message import PublishTimeout as PublishTimeout
    from ._robust._offsets import StreamOffset as StreamOffset
    from ._robust._producer import Producer as Producer
    from ._robust._retry import Retry as Retry
    from ._robust._rpc import RpcError as RpcError
    from ._robust._rpc import RpcRemoteError as RpcRemoteError
    from ._robust._rpc import RpcReplyLost as RpcReplyLost
    from ._robust._rpc import RpcTimeout as RpcTimeout
    from ._robust._rpc import RpcUnroutable as RpcUnroutable
    from ._robust._statistics import ClientStatistics as ClientStatistics
    from ._robust._supervisor import ClientState as ClientState
    from ._robust._supervisor import StateChange as StateChange
    from ._robust._worker import WorkerStatistics as WorkerStatistics
    from ._sansio._properties import BasicProperties as BasicProperties

#: Names loaded lazily (they import trio): name -> module.
_LAZY = {
    "BasicProperties": "._sansio._properties",
    "Channel": "._client._channel",
    "Confirmation": "._client._delivery",
    "Consumer": "._client._consumer",
    "Delivery": "._client._delivery",
    "QueueDeclareOk": "._client._channel",
    "Connection": "._client._connection",
    "open_connection": "._client._connection",
    "Backoff": "._robust._backoff",
    "Client": "._robust._client",
    "ClientStatistics": "._robust._statistics",
    "PublishingPaused": "._robust._events",
    "PublishingResumed": "._robust._events",
    "QueueRenamed": "._robust._events",
    "RecoveryFailed": "._robust._events",
    "open_client": "._robust._client",
    "Config": "._robust._config",
    "ConsumerStatistics": "._robust._consumer",
    "RecoveringConsumer": "._robust._consumer",
    "BufferFull": "._robust._message",
    "BufferPolicy": "._robust._message",
    "DropReason": "._robust._message",
    "Message": "._robust._message",
    "MessageTooLarge": "._robust._message",
    "Producer": "._robust._producer",
    "ProducerClosed": "._robust._message",
    "StreamOffset": "._robust._offsets",
    "ProducerStatistics": "._robust._message",
    "PublishMode": "._robust._message",
    "PublishTimeout": "._robust._message",
    "Retry": "._robust._retry",
    "RpcError": "._robust._rpc",
    "RpcRemoteError": "._robust._rpc",
    "RpcReplyLost": "._robust._rpc",
    "RpcTimeout": "._robust._rpc",
    "RpcUnroutable": "._robust._rpc",
    "ClientState": "._robust._supervisor",
    "StateChange": "._robust._supervisor",
    "WorkerStatistics": "._robust._worker",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'trio_lavin' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "AMQPConnectionError",
    "AMQPError",
    "Backoff",
    "BasicProperties",
    "BufferFull",
    "BufferPolicy",
    "Channel",
    "ChannelClosed",
    "Client",
    "ClientState",
    "ClientStatistics",
    "CommandRefused",
    "Config",
    "Confirmation",
    "Connection",
    "ConnectionClosed",
    "ConnectionClosedByBroker",
    "ConnectionLost",
    "Consumer",
    "ConsumerCancelled",
    "ConsumerStatistics",
    "Delivery",
    "DeliveryAlreadySettled",
    "DropReason",
    "FrameError",
    "LocalProtocolError",
    "Message",
    "MessageNacked",
    "MessageRejected",
    "MessageReturned",
    "MessageTooLarge",
    "Parameters",
    "Producer",
    "ProducerClosed",
    "ProducerStatistics",
    "ProtocolError",
    "PublishError",
    "PublishMode",
    "PublishTimeout",
    "PublishingPaused",
    "PublishingResumed",
    "QueueDeclareOk",
    "QueueRenamed",
    "QueueType",
    "RecoveringConsumer",
    "RecoveryFailed",
    "RemoteProtocolError",
    "Retry",
    "ReturnedMessage",
    "RpcError",
    "RpcRemoteError",
    "RpcReplyLost",
    "RpcTimeout",
    "RpcUnroutable",
    "StateChange",
    "StreamOffset",
    "WorkerStatistics",
    "__version__",
    "open_client",
    "open_connection",
    "parse_url",
    "queue_arguments",
]
