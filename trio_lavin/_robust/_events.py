"""The events a client publishes besides its state changes."""

from __future__ import annotations

from dataclasses import dataclass

from ._supervisor import StateChange


@dataclass(frozen=True)
class QueueRenamed:
    """A server-named queue got a new name after a reconnect."""

    old: str
    new: str
    at: float


@dataclass(frozen=True)
class RecoveryFailed:
    """An entity could not be declared again after a reconnect."""

    entity: str
    error: BaseException
    at: float


@dataclass(frozen=True)
class PublishingPaused:
    """A producer stopped publishing because the broker will not take
    messages now: ``connection.blocked`` (RabbitMQ's memory or disk alarm),
    or a publish refused with 406 (LavinMQ low on disk).  Its messages stay
    buffered; a :class:`PublishingResumed` follows."""

    #: The producer's :attr:`~trio_lavin.Producer.target`.
    target: str
    reason: str
    at: float


@dataclass(frozen=True)
class PublishingResumed:
    """The producer's pause is over: it publishes again."""

    target: str
    at: float
    #: How long the pause lasted, in seconds.
    paused_for: float


ClientEvent = StateChange | QueueRenamed | RecoveryFailed | PublishingPaused | PublishingResumed
