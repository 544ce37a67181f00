"""Connection parameters and AMQP URLs (pure: no trio, no I/O).

URL form (the RabbitMQ URI spec, plus LavinMQ's WebSocket schemes)::

    amqp://user:password@host:port/vhost?heartbeat=30&connection_name=app

* schemes: ``amqp`` (port 5672), ``amqps`` (TLS, 5671), ``ws`` (AMQP over
  WebSocket, 15672) and ``wss`` (WebSocket over TLS, 15671);
* user and password are percent-decoded; default ``guest``/``guest``;
* host: a name, an IPv4 address, or an IPv6 address in brackets;
  default ``localhost``;
* the path is the virtual host, percent-decoded (``%2f`` is ``/``, and so is
  an empty path);
* query parameters: ``heartbeat``, ``frame_max``, ``channel_max``,
  ``connection_timeout`` (milliseconds, as in RabbitMQ's URI spec),
  ``connection_name``, ``auth_mechanism``
  (only PLAIN), and for TLS ``cacertfile``, ``certfile``, ``keyfile``,
  ``verify`` (``verify_peer``/``verify_none``, or true/false) and
  ``server_name_indication``.

Errors are :class:`ValueError` naming the offending part; the password never
appears in an error, a ``repr()`` or a ``str()``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import SplitResult, quote, unquote, urlsplit

DEFAULT_PORTS: Final = {"amqp": 5672, "amqps": 5671, "ws": 15672, "wss": 15671}
TLS_SCHEMES: Final = frozenset({"amqps", "wss"})
REDACTED: Final = "***"

_INT_OPTIONS: Final = {
    "heartbeat": (0, 65_535),
    "frame_max": (0, 2**32 - 1),
    "channel_max": (0, 65_535),
}
_TRUE: Final = frozenset({"1", "true", "yes", "on", "verify_peer"})
_FALSE: Final = frozenset({"0", "false", "no", "off", "verify_none"})


@dataclass(frozen=True)
class Parameters:
    """Where and how to connect.  Build one with :func:`parse_url` or directly.

    ``None`` for a tuning option means "use the client's configuration".
    """

    scheme: str = "amqp"
    host: str = "localhost"
    port: int = 5672
    username: str = "guest"
    password: str = field(default="guest", repr=False)
    virtual_host: str = "/"
    heartbeat: int | None = None
    frame_max: int | None = None
    channel_max: int | None = None
    connection_timeout: float | None = None
    connection_name: str | None = None
    auth_mechanism: str = "PLAIN"
    cacertfile: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    verify: bool = True
    server_name_indication: str | None = None

    def __post_init__(self) -> None:
        if self.scheme not in DEFAULT_PORTS:
            raise ValueError(
                f"URL scheme must be one of {sorted(DEFAULT_PORTS)}, not {self.scheme!r}"
            )
        if not 0 < self.port < 65_536:
            raise ValueError(f"port must be in 1..65535, not {self.port!r}")
        if not self.host:
            raise ValueError("host must not be empty")
        if self.auth_mechanism != "PLAIN":
            raise ValueError(
                f"auth_mechanism must be 'PLAIN' (the only one supported), "
                f"not {self.auth_mechanism!r}"
            )
        for name, (low, high) in _INT_OPTIONS.items():
            value = getattr(self, name)
            if value is not None and not low <= value <= high:
                raise ValueError(f"{name} must be in {low}..{high}, not {value!r}")
        if self.connection_timeout is not None and not self.connection_timeout > 0:
            raise ValueError(
                f"connection_timeout must be > 0 seconds, not {self.connection_timeout!r}"
            )

    @property
    def tls(self) -> bool:
        """True for ``amqps`` and ``wss``."""
        return self.scheme in TLS_SCHEMES

    @property
    def endpoint(self) -> str:
        """``scheme://host:port/vhost`` without credentials, for logs."""
        return self.to_url(include_credentials=False)

    def to_url(self, *, include_credentials: bool = True, redact: bool = True) -> str:
        """Render back to a URL that :func:`parse_url` turns into equal
        parameters (with ``redact=False``); the password is ``***`` unless
        ``redact`` is False."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        userinfo = ""
        if include_credentials:
            password = REDACTED if redact else quote(self.password, safe="")
            userinfo = f"{quote(self.username, safe='')}:{password}@"
        query = []
        for item in dataclasses.fields(self):
            if item.name in _URL_FIELDS:
                continue
            value = getattr(self, item.name)
            if value == item.default:
                continue
            if isinstance(value, bool):
                value = "verify_peer" if value else "verify_none"
            elif item.name == "connection_timeout":
                value = repr(value * 1000.0)
            query.append(f"{item.name}={quote(str(value), safe='')}")
        suffix = ("?" + "&".join(query)) if query else ""
        return (
            f"{self.scheme}://{userinfo}{host}:{self.port}/"
            f"{quote(self.virtual_host, safe='')}{suffix}"
        )

    def __str__(self) -> str:
        return self.to_url()

    def __repr__(self) -> str:
        return f"Parameters({self.to_url()!r})"


#: The start of a URL that an error may show when the scheme is wrong: scheme
#: characters (RFC 3986) and the ":" and "/" after them, never the rest.
_SCHEME_START: Final = re.compile(r"[A-Za-z0-9+.\-]{0,20}[:/]{0,3}")

#: What the host part may be when it has brackets: an address, then perhaps a port.
_BRACKETED_HOST: Final = re.compile(r"\[[^\[\]]*\](:[^:]*)?")

_URL_FIELDS: Final = frozenset({"scheme", "host", "port", "username", "password", "virtual_host"})


def parse_url(url: str) -> Parameters:
    """Parse an AMQP URL (see the module documentation).

    Raises:
        ValueError: the URL is malformed; the message names the part (scheme,
            host, port, vhost or the query parameter) and never contains the
            password.
    """
    if not isinstance(url, str):
        raise TypeError(f"URL must be a str, not {type(url).__name__}")
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in DEFAULT_PORTS:
        # Only the leading scheme-like characters: without "://" the rest of
        # the text may well be "user:password@host".
        start = _SCHEME_START.match(url)
        shown = start.group() if start else ""
        raise ValueError(f"URL scheme must be one of {sorted(DEFAULT_PORTS)}, not {shown!r}")
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        # urlsplit's message quotes the host part, which may hold the password.
        if "NFKC" in str(exc):
            problem = "it has characters that Unicode normalizes to '/', '?', '#', '@' or ':'"
        else:
            problem = "square brackets must hold an IPv6 address, as in amqp://[::1]:5672/"
        raise ValueError(f"malformed URL host: {problem}") from None
    if "@" not in parts.netloc and "@" in rest:
        # An "@" after the host: the user name or password probably holds an
        # unencoded "/", "?" or "#", which ended the host part early, so what
        # urlsplit calls the port, vhost, query or fragment may be a piece of
        # the password.  In the vhost it is refused even when the rest parses
        # ("amqp://user:5672/S3cret@host" would connect as guest to host
        # "user" and show "S3cret" in every log line naming the endpoint); a
        # vhost with an "@" is written %40.  A query value may hold one; only
        # an error must not show those pieces.
        refusal = ValueError(
            "malformed URL: it has an '@' after the host part; if the user name "
            "or password contains '/', '?', '#' or '@', percent-encode it "
            "(e.g. '/' as %2F), and write an '@' in the vhost as %40"
        )
        if "@" in parts.path:
            raise refusal from None
        try:
            return _parse_parts(scheme, parts)
        except ValueError:
            raise refusal from None
    return _parse_parts(scheme, parts)


def _parse_parts(scheme: str, parts: SplitResult) -> Parameters:
    options: dict[str, Any] = {"scheme": scheme}
    if parts.username is not None:
        options["username"] = unquote(parts.username)
    if parts.password is not None:
        options["password"] = unquote(parts.password)
    hostport = parts.netloc.rpartition("@")[2]
    if "[" in hostport and not _BRACKETED_HOST.fullmatch(hostport):
        # urlsplit takes the bracketed text and drops what stands around it.
        raise ValueError(
            f"URL host in square brackets must be '[address]' or '[address]:port', "
            f"not {hostport[:60]!r}"
        )
    if parts.hostname:
        host = parts.hostname
        if "[" in host or "]" in host:
            raise ValueError(f"URL host has unbalanced square brackets: {host[:60]!r}")
        if ":" in host:
            # It was in brackets.  urlsplit checks only the first bracketed
            # text in the netloc, which may be in the user name.
            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                raise ValueError(
                    f"URL host in square brackets must be an IPv6 address, not {host[:60]!r}"
                ) from None
        options["host"] = host
    try:
        port = parts.port
    except ValueError:
        raw = parts.netloc.rpartition("@")[2].rpartition(":")[2]
        raise ValueError(f"URL port must be a number in 1..65535, not {raw[:20]!r}") from None
    options["port"] = port if port is not None else DEFAULT_PORTS[scheme]
    if parts.netloc.rpartition("@")[2].endswith(":"):
        raise ValueError("URL port is empty")
    path = parts.path
    if path.startswith("/"):
        path = path[1:]
    if "/" in path:
        raise ValueError(f"URL vhost must be one path segment (encode '/' as %2f), not {path!r}")
    options["virtual_host"] = unquote(path) if path else "/"
    if parts.fragment:
        raise ValueError("URL must not have a fragment (#...)")
    for item in parts.query.split("&") if parts.query else ():
        name, eq, raw_value = item.partition("=")
        name = unquote(name)
        value = unquote(raw_value)
        if not eq:
            raise ValueError(f"URL query parameter {name!r} has no value")
        options[name] = _convert_option(name, value)
    return Parameters(**options)


def _convert_option(name: str, value: str) -> Any:
    if name in _INT_OPTIONS:
        try:
            return int(value)
        except ValueError:
            raise ValueError(
                f"URL query parameter {name} must be an integer, not {value[:40]!r}"
            ) from None
    if name == "connection_timeout":
        try:
            # RabbitMQ's URI spec gives connection_timeout in milliseconds.
            return float(value) / 1000.0
        except ValueError:
            raise ValueError(
                f"URL query parameter connection_timeout must be a number of "
                f"milliseconds, not {value[:40]!r}"
            ) from None
    if name == "verify":
        lowered = value.lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ValueError(
            f"URL query parameter verify must be verify_peer or verify_none, not {value[:40]!r}"
        )
    if name in (
        "connection_name",
        "auth_mechanism",
        "cacertfile",
        "certfile",
        "keyfile",
        "server_name_indication",
    ):
        return value
    raise ValueError(f"unknown URL query parameter {name[:40]!r}")
