"""What the client declared, so it can be declared again after a reconnect.

Pure data: entries in declaration order, with deletions and unbindings taking
entries out again.  Server-named queues (declared with an empty name) get a
new name from the broker on every connection; bindings and consumers refer to
them by the name the user last saw, translated through :meth:`Topology.current`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

FieldTable = dict[str, Any]


def _frozen_args(arguments: FieldTable | None) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted((arguments or {}).items(), key=lambda item: item[0]))


@dataclass(frozen=True)
class ExchangeDeclaration:
    name: str
    exchange_type: str = "direct"
    durable: bool = False
    auto_delete: bool = False
    internal: bool = False
    arguments: FieldTable | None = field(default=None, compare=False)

    def describe(self) -> str:
        return f"exchange {self.name!r}"


@dataclass(frozen=True)
class QueueDeclaration:
    #: The name asked for; "" for a server-named queue.
    name: str
    durable: bool = False
    exclusive: bool = False
    auto_delete: bool = False
    arguments: FieldTable | None = field(default=None, compare=False)
    #: For server-named queues: the first name the broker gave, which the
    #: user holds and which identifies the queue across reconnects.
    handle: str = ""

    @property
    def key(self) -> str:
        return self.name or self.handle

    def describe(self) -> str:
        return f"queue {self.key!r}" + (" (server-named)" if not self.name else "")


@dataclass(frozen=True)
class QueueBinding:
    queue: str
    exchange: str
    routing_key: str = ""
    arguments: FieldTable | None = field(default=None, compare=False)

    @property
    def identity(self) -> tuple[str, str, str, tuple[tuple[str, Any], ...]]:
        return (self.queue, self.exchange, self.routing_key, _frozen_args(self.arguments))

    def describe(self) -> str:
        return f"binding of queue {self.queue!r} to {self.exchange!r} ({self.routing_key!r})"


@dataclass(frozen=True)
class ExchangeBinding:
    destination: str
    source: str
    routing_key: str = ""
    arguments: FieldTable | None = field(default=None, compare=False)

    @property
    def identity(self) -> tuple[str, str, str, tuple[tuple[str, Any], ...]]:
        return (
            self.destination,
            self.source,
            self.routing_key,
            _frozen_args(self.arguments),
        )

    def describe(self) -> str:
        return (
            f"binding of exchange {self.destination!r} to {self.source!r} ({self.routing_key!r})"
        )


Entry = ExchangeDeclaration | QueueDeclaration | QueueBinding | ExchangeBinding


class Topology:
    """The recorded declarations, in order."""

    def __init__(self) -> None:
        self.entries: list[Entry] = []
        #: handle of a server-named queue -> its name on the current connection
        self._names: dict[str, str] = {}
        #: every name a server-named queue has had -> its handle
        self._aliases: dict[str, str] = {}

    def current(self, queue: str) -> str:
        """The name to use now for a queue the user knows as ``queue`` (its
        first name, or any name it has had since)."""
        return self._names.get(self._handle_of(queue), queue)

    def renamed(self, handle: str, new_name: str) -> None:
        self._names[handle] = new_name
        self._aliases[new_name] = handle

    def _replace_or_add(self, declaration: Entry, same: Callable[[Entry], bool]) -> None:
        """Put ``declaration`` where the entry it replaces was, so that what
        was declared after it (its bindings) is still replayed after it."""
        for i, entry in enumerate(self.entries):
            if same(entry):
                self.entries[i] = declaration
                return
        self.entries.append(declaration)

    def add_exchange(self, declaration: ExchangeDeclaration) -> None:
        self._replace_or_add(
            declaration,
            lambda e: isinstance(e, ExchangeDeclaration) and e.name == declaration.name,
        )

    def add_queue(self, declaration: QueueDeclaration) -> None:
        key = declaration.key
        self._replace_or_add(
            declaration, lambda e: isinstance(e, QueueDeclaration) and e.key == key
        )
        if declaration.handle:
            self._names.setdefault(declaration.handle, declaration.handle)

    def add_binding(self, binding: QueueBinding | ExchangeBinding) -> None:
        if not any(
            type(e) is type(binding) and e.identity == binding.identity for e in self.entries
        ):
            self.entries.append(binding)

    def remove_binding(self, binding: QueueBinding | ExchangeBinding) -> None:
        self.entries = [
            e
            for e in self.entries
            if not (type(e) is type(binding) and e.identity == binding.identity)
        ]

    def remove_queue(self, queue: str) -> None:
        """Forget a queue (by the name the user knows) and its bindings."""
        handle = self._handle_of(queue)
        self.entries = [
            e
            for e in self.entries
            if not (isinstance(e, QueueDeclaration) and e.key == handle)
            and not (isinstance(e, QueueBinding) and e.queue == handle)
        ]
        self._names.pop(handle, None)
        self._aliases = {name: h for name, h in self._aliases.items() if h != handle}

    def remove_exchange(self, exchange: str) -> None:
        """Forget an exchange and every binding to or from it."""
        self.entries = [
            e
            for e in self.entries
            if not (isinstance(e, ExchangeDeclaration) and e.name == exchange)
            and not (isinstance(e, QueueBinding) and e.exchange == exchange)
            and not (isinstance(e, ExchangeBinding) and exchange in (e.source, e.destination))
        ]

    def discard(self, entry: Entry) -> None:
        """Forget one entry (the broker refused to declare it again); other
        entries that refer to it stay, and are tried on their own."""
        self.entries = [e for e in self.entries if e is not entry]

    def handle_of(self, queue: str) -> str:
        """The stable name of a queue the user refers to as ``queue`` (which
        may be the current name of a server-named queue)."""
        return self._handle_of(queue)

    def _handle_of(self, queue: str) -> str:
        return self._aliases.get(queue, queue)
