"""The exception family for AMQP protocol violations.

Every violation of AMQP 0-9-1 that the sans-IO layer detects is raised as a
:class:`ProtocolError`, split by who is at fault:

* :class:`RemoteProtocolError`: the peer (the broker) sent something invalid.
  The connection machine has already queued the ``Connection.Close`` carrying
  :attr:`ProtocolError.reply_code` in ``data_to_send()``; the caller flushes it
  and drops the transport.
* :class:`LocalProtocolError`: the caller asked the machine to send something
  that is not valid in the current state.  Nothing was queued; the connection
  is unchanged.

Any other exception escaping the sans-IO layer is a bug.
"""

from __future__ import annotations

from typing import ClassVar

from pamqp import commands

# Reply codes from the AMQP 0-9-1 specification (section 1.9, "Constants").
REPLY_SUCCESS = 200
CONTENT_TOO_LARGE = 311
NO_ROUTE = 312
NO_CONSUMERS = 313
CONNECTION_FORCED = 320
INVALID_PATH = 402
ACCESS_REFUSED = 403
NOT_FOUND = 404
RESOURCE_LOCKED = 405
PRECONDITION_FAILED = 406
FRAME_ERROR = 501
SYNTAX_ERROR = 502
COMMAND_INVALID = 503
CHANNEL_ERROR = 504
UNEXPECTED_FRAME = 505
RESOURCE_ERROR = 506
NOT_ALLOWED = 530
NOT_IMPLEMENTED = 540
INTERNAL_ERROR = 541

#: Human-readable names of the reply codes, for messages.
REPLY_NAMES: dict[int, str] = {
    REPLY_SUCCESS: "REPLY_SUCCESS",
    CONTENT_TOO_LARGE: "CONTENT_TOO_LARGE",
    NO_ROUTE: "NO_ROUTE",
    NO_CONSUMERS: "NO_CONSUMERS",
    CONNECTION_FORCED: "CONNECTION_FORCED",
    INVALID_PATH: "INVALID_PATH",
    ACCESS_REFUSED: "ACCESS_REFUSED",
    NOT_FOUND: "NOT_FOUND",
    RESOURCE_LOCKED: "RESOURCE_LOCKED",
    PRECONDITION_FAILED: "PRECONDITION_FAILED",
    FRAME_ERROR: "FRAME_ERROR",
    SYNTAX_ERROR: "SYNTAX_ERROR",
    COMMAND_INVALID: "COMMAND_INVALID",
    CHANNEL_ERROR: "CHANNEL_ERROR",
    UNEXPECTED_FRAME: "UNEXPECTED_FRAME",
    RESOURCE_ERROR: "RESOURCE_ERROR",
    NOT_ALLOWED: "NOT_ALLOWED",
    NOT_IMPLEMENTED: "NOT_IMPLEMENTED",
    INTERNAL_ERROR: "INTERNAL_ERROR",
}


def reply_name(code: int) -> str:
    """The specification's name for a reply code, or ``"UNKNOWN_<code>"``."""
    return REPLY_NAMES.get(code, f"UNKNOWN_{code}")


def command_name(class_id: int, method_id: int) -> str | None:
    """The name of an AMQP method, e.g. ``"exchange.declare"`` for (40, 10);
    None for (0, 0), which a ``Connection.Close`` sends when it names no
    command, and for numbers that name no method."""
    if not class_id:
        return None
    method = commands.INDEX_MAPPING.get((class_id << 16) | method_id)
    name: str | None = getattr(method, "name", None)
    return None if name is None else name.lower()


class ProtocolError(Exception):
    """Base class for AMQP protocol violations.

    Attributes:
        reply_code: the AMQP reply code that describes the violation (for
            example 501 for a malformed frame); it is the code of the
            ``Connection.Close`` the machine queued, for remote errors.
        reply_text: a short description, without secrets.

    This class is abstract: only its subclasses are raised.
    """

    default_reply_code: ClassVar[int] = INTERNAL_ERROR

    def __init__(self, reply_text: str, reply_code: int | None = None) -> None:
        self.reply_code = self.default_reply_code if reply_code is None else reply_code
        self.reply_text = reply_text
        super().__init__(reply_text)

    def __str__(self) -> str:
        return f"{self.reply_text} ({self.reply_code} {reply_name(self.reply_code)})"


class LocalProtocolError(ProtocolError):
    """The caller tried to send something invalid in the current state.

    Nothing was queued and the machine's state did not change.
    """

    default_reply_code = COMMAND_INVALID


class RemoteProtocolError(ProtocolError):
    """The broker sent something invalid.

    The machine is now closing: it queued a ``Connection.Close`` with
    :attr:`reply_code` and accepts no further input.
    """

    default_reply_code = INTERNAL_ERROR


class FrameError(RemoteProtocolError):
    """A frame could not be decoded: bad size, bad end octet, bad payload (501)."""

    default_reply_code = FRAME_ERROR


class UnexpectedFrame(RemoteProtocolError):
    """A frame arrived that is not allowed here, e.g. inside content (505)."""

    default_reply_code = UNEXPECTED_FRAME


class CommandInvalid(RemoteProtocolError):
    """A method arrived that is not valid in the current state (503)."""

    default_reply_code = COMMAND_INVALID


class ChannelError(RemoteProtocolError):
    """A frame arrived for a channel that is not open (504)."""

    default_reply_code = CHANNEL_ERROR


class ProtocolVersionMismatch(RemoteProtocolError):
    """The broker answered our protocol header with its own: it does not
    speak AMQP 0-9-1 (or refuses us).  The broker closes the socket next."""

    default_reply_code = NOT_IMPLEMENTED
