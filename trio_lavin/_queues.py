"""Queue types (classic, quorum, stream) and their ``x-`` arguments, by name.

RabbitMQ and LavinMQ choose a queue's type, and its type-specific settings,
from the ``arguments`` table of ``queue.declare`` (``x-queue-type``,
``x-delivery-limit``, ``x-max-age``, ...).  A typo in such a key is not an
error for the broker: it is silently ignored.  :func:`queue_arguments` builds
the table from keyword arguments and checks them; :func:`check_queue_type`
checks the declare flags a type needs (quorum and stream queues are
replicated, so they must be durable and cannot be exclusive or auto-delete).

Pure: no trio, no I/O.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from typing import Any, Final

__all__ = ["QueueType", "check_queue_type", "queue_arguments", "unhonoured_queue_type"]

#: The ``x-`` argument that selects the type.
QUEUE_TYPE_ARGUMENT: Final = "x-queue-type"

_MAX_AGE = re.compile(r"[1-9][0-9]*(Y|M|D|h|m|s)")
_OVERFLOW = ("drop-head", "reject-publish", "reject-publish-dlx")


class QueueType(enum.Enum):
    """The ``x-queue-type`` of a queue."""

    #: The original single-node queue (the broker's default).
    CLASSIC = "classic"
    #: A replicated queue (Raft): survives the loss of a minority of the
    #: cluster's nodes; must be durable, cannot be exclusive or auto-delete.
    QUORUM = "quorum"
    #: A replicated, append-only log that consumers read from an offset
    #: (``x-stream-offset`` in the consumer arguments); needs a prefetch and
    #: manual acks; same declare restrictions as QUORUM.
    STREAM = "stream"


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, not {value!r}")
    return value


def _non_negative_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, not {value!r}")
    return value


def queue_arguments(
    queue_type: QueueType = QueueType.CLASSIC,
    *,
    max_length: int | None = None,
    max_length_bytes: int | None = None,
    overflow: str | None = None,
    single_active_consumer: bool | None = None,
    dead_letter_exchange: str | None = None,
    dead_letter_routing_key: str | None = None,
    message_ttl: int | None = None,
    expires: int | None = None,
    max_priority: int | None = None,
    delivery_limit: int | None = None,
    initial_group_size: int | None = None,
    max_age: str | None = None,
    max_segment_size_bytes: int | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``queue.declare`` arguments for a queue of ``queue_type``::

        await client.declare_queue(
            "orders", durable=True,
            arguments=queue_arguments(QueueType.QUORUM, delivery_limit=5),
        )

    Arguments for all types: ``max_length`` (messages, ``x-max-length``),
    ``max_length_bytes`` (``x-max-length-bytes``), ``overflow``
    (``x-overflow``: ``"drop-head"``, ``"reject-publish"`` or
    ``"reject-publish-dlx"``).  Classic and quorum: ``single_active_consumer``
    (``x-single-active-consumer``: of the queue's consumers one at a time gets
    deliveries, in order; when it goes away the next one takes over),
    ``dead_letter_exchange`` and ``dead_letter_routing_key`` (where rejected,
    expired and overflowing messages go: ``x-dead-letter-exchange``,
    ``x-dead-letter-routing-key``), ``message_ttl`` (milliseconds a message may
    wait, ``x-message-ttl``), ``expires`` (milliseconds an unused queue lives,
    ``x-expires``).  Classic only: ``max_priority`` (1-255, ``x-max-priority``).
    Quorum only: ``delivery_limit`` (redeliveries before a message is dropped
    or dead-lettered, ``x-delivery-limit``),
    ``initial_group_size`` (replicas, ``x-quorum-initial-group-size``).
    Stream only: ``max_age`` (``x-max-age``, e.g. ``"7D"``; units Y, M, D, h,
    m, s) and ``max_segment_size_bytes`` (``x-stream-max-segment-size-bytes``).
    ``extra`` is added as is (for arguments without a keyword here).

    Raises:
        TypeError: ``queue_type`` is not a :class:`QueueType`.
        ValueError: a value of the wrong kind, an argument the type does not
            take, or ``extra`` setting ``x-queue-type`` or a key given by
            keyword; the message names the argument and the value.
    """
    if not isinstance(queue_type, QueueType):
        raise TypeError(f"queue_type must be a QueueType, not {queue_type!r}")
    arguments: dict[str, Any] = {QUEUE_TYPE_ARGUMENT: queue_type.value}
    if max_length is not None:
        arguments["x-max-length"] = _positive_int("max_length", max_length)
    if max_length_bytes is not None:
        arguments["x-max-length-bytes"] = _positive_int("max_length_bytes", max_length_bytes)
    if overflow is not None:
        if overflow not in _OVERFLOW:
            raise ValueError(f"overflow must be one of {', '.join(_OVERFLOW)}, not {overflow!r}")
        if queue_type is QueueType.STREAM:
            raise ValueError(f"overflow is not supported by stream queues (got {overflow!r})")
        arguments["x-overflow"] = overflow
    if single_active_consumer is not None:
        if not isinstance(single_active_consumer, bool):
            raise ValueError(
                f"single_active_consumer must be True or False, not {single_active_consumer!r}"
            )
        if queue_type is QueueType.STREAM:
            raise ValueError("single_active_consumer is for classic and quorum queues here")
        arguments["x-single-active-consumer"] = single_active_consumer
    if queue_type is not QueueType.STREAM:
        for name, key, text in (
            ("dead_letter_exchange", "x-dead-letter-exchange", dead_letter_exchange),
            ("dead_letter_routing_key", "x-dead-letter-routing-key", dead_letter_routing_key),
        ):
            if text is not None:
                if not isinstance(text, str) or len(text.encode()) > 255:
                    raise ValueError(f"{name} must be a name of at most 255 bytes, not {text!r}")
                arguments[key] = text
    elif dead_letter_exchange is not None or dead_letter_routing_key is not None:
        raise ValueError(
            "stream queues do not dead-letter: no dead_letter_exchange or _routing_key"
        )
    if dead_letter_routing_key is not None and dead_letter_exchange is None:
        raise ValueError(
            f"dead_letter_routing_key={dead_letter_routing_key!r} needs a dead_letter_exchange"
        )
    if queue_type is QueueType.STREAM and (message_ttl is not None or expires is not None):
        raise ValueError("stream queues keep messages by max_age, not message_ttl or expires")
    if message_ttl is not None:
        arguments["x-message-ttl"] = _non_negative_int("message_ttl", message_ttl)
    if expires is not None:
        arguments["x-expires"] = _positive_int("expires", expires)
    if max_priority is not None:
        if queue_type is not QueueType.CLASSIC:
            raise ValueError(f"max_priority is for classic queues, not {queue_type.value} ones")
        if isinstance(max_priority, bool) or not isinstance(max_priority, int):
            raise ValueError(
                f"max_priority must be an integer from 1 to 255, not {max_priority!r}"
            )
        if not 1 <= max_priority <= 255:
            raise ValueError(f"max_priority must be from 1 to 255, not {max_priority!r}")
        arguments["x-max-priority"] = max_priority
    only: dict[str, tuple[QueueType, object]] = {
        "delivery_limit": (QueueType.QUORUM, delivery_limit),
        "initial_group_size": (QueueType.QUORUM, initial_group_size),
        "max_age": (QueueType.STREAM, max_age),
        "max_segment_size_bytes": (QueueType.STREAM, max_segment_size_bytes),
    }
    for name, (needed, value) in only.items():
        if value is not None and queue_type is not needed:
            raise ValueError(
                f"{name} is for {needed.value} queues, not {queue_type.value} ones "
                f"(got {name}={value!r})"
            )
    if delivery_limit is not None:
        arguments["x-delivery-limit"] = _positive_int("delivery_limit", delivery_limit)
    if initial_group_size is not None:
        arguments["x-quorum-initial-group-size"] = _positive_int(
            "initial_group_size", initial_group_size
        )
    if max_age is not None:
        if not isinstance(max_age, str) or not _MAX_AGE.fullmatch(max_age):
            raise ValueError(
                f"max_age must be a number and a unit (Y, M, D, h, m or s), e.g. '7D', "
                f"not {max_age!r}"
            )
        arguments["x-max-age"] = max_age
    if max_segment_size_bytes is not None:
        arguments["x-stream-max-segment-size-bytes"] = _positive_int(
            "max_segment_size_bytes", max_segment_size_bytes
        )
    for key, value in (extra or {}).items():
        if key in arguments:
            raise ValueError(f"extra sets {key!r}, which is already set to {arguments[key]!r}")
        arguments[key] = value
    return arguments


def check_queue_type(
    name: str,
    queue_type: QueueType | None,
    *,
    durable: bool,
    exclusive: bool,
    auto_delete: bool,
    arguments: Mapping[str, Any] | None,
) -> dict[str, Any] | None:
    """The arguments to declare queue ``name`` with, given a ``queue_type``
    (None: whatever ``arguments`` say) and the declare flags.

    Raises:
        TypeError: ``queue_type`` is neither a :class:`QueueType` nor None.
        ValueError: ``queue_type`` and ``arguments["x-queue-type"]`` disagree,
            the type is unknown, or a quorum or stream queue is not durable,
            or is exclusive or auto-delete (the broker would refuse it with
            406 PRECONDITION_FAILED and close the channel).
    """
    given = None if arguments is None else arguments.get(QUEUE_TYPE_ARGUMENT)
    if queue_type is not None and not isinstance(queue_type, QueueType):
        raise TypeError(f"queue_type must be a QueueType or None, not {queue_type!r}")
    if given is not None:
        try:
            from_arguments = QueueType(given)
        except ValueError:
            known = ", ".join(repr(t.value) for t in QueueType)
            raise ValueError(
                f"{QUEUE_TYPE_ARGUMENT} must be one of {known}, not {given!r}"
            ) from None
        if queue_type is not None and queue_type is not from_arguments:
            raise ValueError(
                f"queue_type={queue_type.value!r} but arguments say "
                f"{QUEUE_TYPE_ARGUMENT}={given!r}"
            )
        queue_type = from_arguments
    if queue_type in (QueueType.QUORUM, QueueType.STREAM):
        assert queue_type is not None
        kind = f"a {queue_type.value} queue"
        if not durable:
            raise ValueError(f"{kind} must be durable: declare {name!r} with durable=True")
        if exclusive:
            raise ValueError(f"{kind} cannot be exclusive: declare {name!r} with exclusive=False")
        if auto_delete:
            raise ValueError(
                f"{kind} cannot be auto-delete: declare {name!r} with auto_delete=False"
            )
    if queue_type is None or given is not None:
        return None if arguments is None else dict(arguments)
    return {**(arguments or {}), QUEUE_TYPE_ARGUMENT: queue_type.value}


def _version(text: object) -> tuple[int, ...]:
    """``"1.0.1"`` as (1, 0, 1); what does not parse as numbers gives ()."""
    numbers = []
    for part in str(text).split("-")[0].split("."):
        if not part.isdigit():
            break
        numbers.append(int(part))
    return tuple(numbers)


def unhonoured_queue_type(
    server_properties: Mapping[str, Any], queue: str, arguments: Mapping[str, Any] | None
) -> str | None:
    """What to warn of when ``queue`` is declared with ``arguments`` on the
    broker that sent ``server_properties`` in Connection.Start, if that
    broker will make it a classic queue though ``arguments`` ask for another
    type; None if, as far as is known, it honours the type.

    LavinMQ takes any ``x-queue-type`` and ignores the ones it lacks: it has
    no quorum queues (a LavinMQ cluster replicates every queue), and stream
    queues only from 1.2.0.
    """
    wanted = None if arguments is None else arguments.get(QUEUE_TYPE_ARGUMENT)
    if wanted not in (QueueType.QUORUM.value, QueueType.STREAM.value):
        return None
    if server_properties.get("product") != "LavinMQ":
        return None
    version = server_properties.get("version")
    if wanted == QueueType.QUORUM.value:
        lacking = f"LavinMQ {version} has no quorum queues"
    elif (1, 0) <= _version(version) < (1, 2):  # an unknown version: no warning
        lacking = f"LavinMQ {version} has no stream queues (they came in 1.2.0)"
    else:
        return None
    return f"queue {queue!r}: {lacking}; it is a classic queue ({QUEUE_TYPE_ARGUMENT} ignored)"
