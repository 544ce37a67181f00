"""Test helpers for code that speaks AMQP 0-9-1: an in-process fake broker.

:class:`FakeBroker` is a small AMQP 0-9-1 broker that lives in memory, built
on pamqp: exchanges (direct, fanout, topic, headers), queues, bindings,
consumers with prefetch, acknowledgements, publisher confirms, transactions,
and the faults a client must survive (forced connection and channel closes,
consumer cancellation, resource alarms, nacked publishes).  Its core is
sans-IO, so protocol tests can push bytes through it without an event loop;
:func:`open_fake_broker` serves it over in-memory trio streams (or a socket
pair) and adds
transport faults (severed, half-open and refused connections).

It makes tests fast and deterministic, for trio-lavin's own suite and for
applications built on it.  It is a test double that copies RabbitMQ's
behaviour where a client can see it, not a broker: it never replaces tests
against a real RabbitMQ or LavinMQ, which catch what a double cannot.
"""

from ._fake_broker import FakeBroker as FakeBroker
from ._fake_connection import BrokerConnection as BrokerConnection
from ._fake_model import ConnectionState as ConnectionState
from ._fake_model import Message as Message
from ._fake_model import QueueInfo as QueueInfo
from ._fake_server import FakeBrokerServer as FakeBrokerServer
from ._fake_server import open_fake_broker as open_fake_broker
from ._fault_proxy import Fault as Fault
from ._fault_proxy import FaultProxy as FaultProxy
from ._fault_proxy import open_fault_proxy as open_fault_proxy

__all__ = [
    "BrokerConnection",
    "ConnectionState",
    "FakeBroker",
    "FakeBrokerServer",
    "Fault",
    "FaultProxy",
    "Message",
    "QueueInfo",
    "open_fake_broker",
    "open_fault_proxy",
]
