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


ClientEvent = StateChange | QueueRenamed | RecoveryFailed
