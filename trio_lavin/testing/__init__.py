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
against a real RabbitMQ or LavinMQ, which catch what a double cannot.  For
those, :class:`RabbitNode`, :class:`LavinNode` and :class:`RabbitCluster`
start throwaway brokers on free loopback ports in a temporary directory
(``with RabbitNode() as node: node.url``), killed with the process that
started them; ``python -m trio_lavin.testing rabbitmq exec -- COMMAND`` runs
a command with ``AMQP_URL`` set to one.  :class:`FaultProxy` sits between a
client and a real broker and severs, stalls or refuses connections.
"""

from ._cluster import ClusterNode as ClusterNode
from ._cluster import RabbitCluster as RabbitCluster
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
from ._lavinmq import LavinNode as LavinNode
from ._lavinmq import LavinNotFound as LavinNotFound
from ._lavinmq import find_lavinmq as find_lavinmq
from ._rabbitmq import Broker as Broker
from ._rabbitmq import BrokerError as BrokerError
from ._rabbitmq import BrokerNode as BrokerNode
from ._rabbitmq import RabbitNode as RabbitNode
from ._rabbitmq import RabbitNotInstalled as RabbitNotInstalled
from ._rabbitmq import free_port as free_port

__all__ = [
    "Broker",
    "BrokerConnection",
    "BrokerError",
    "BrokerNode",
    "ClusterNode",
    "ConnectionState",
    "FakeBroker",
    "FakeBrokerServer",
    "Fault",
    "FaultProxy",
    "LavinNode",
    "LavinNotFound",
    "Message",
    "QueueInfo",
    "RabbitCluster",
    "RabbitNode",
    "RabbitNotInstalled",
    "find_lavinmq",
    "free_port",
    "open_fake_broker",
    "open_fault_proxy",
]
