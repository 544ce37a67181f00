"""Render the public API of trio_lavin (``trio_lavin.__all__``) to docs/api.md.

The reference is generated from the signatures and docstrings, so it cannot
drift from the code: ``tests/test_docs.py`` fails when docs/api.md differs
from what this script renders.  After changing a public docstring or
signature, run::

    python docs/gen_api.py          # rewrites docs/api.md
    python docs/gen_api.py --check  # exit 1 if docs/api.md is out of date

Docstrings are written in reStructuredText-flavoured Google style; this
turns the parts we use into Markdown: ``code`` and :role:`target` become
code spans, ``Args:``/``Raises:``/``Returns:``/``Attributes:`` sections
become lists, and a paragraph ending in ``::`` introduces a code block.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import inspect
import re
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import trio_lavin

API_MD = Path(__file__).resolve().parent / "api.md"

#: The reference's sections, in order: title -> exported names.  A name in
#: ``__all__`` that is in none of them goes under "Other".
SECTIONS: dict[str, list[str]] = {
    "Connecting: the self-healing client": [
        "open_client",
        "Client",
        "Config",
        "ClientState",
        "ClientStatistics",
        "StateChange",
        "QueueRenamed",
        "RecoveryFailed",
        "Backoff",
        "parse_url",
        "Parameters",
    ],
    "Producing": [
        "Producer",
        "PublishMode",
        "BufferPolicy",
        "DropReason",
        "Message",
        "ProducerStatistics",
        "PublishingPaused",
        "PublishingResumed",
    ],
    "Consuming": ["RecoveringConsumer", "Delivery", "StreamOffset"],
    "RPC": ["RpcError", "RpcTimeout", "RpcUnroutable", "RpcRemoteError", "RpcReplyLost"],
    "Low-level API: one connection, its channels": [
        "open_connection",
        "Connection",
        "Channel",
        "Consumer",
        "Confirmation",
        "QueueDeclareOk",
        "BasicProperties",
        "ReturnedMessage",
    ],
    "Errors": [
        "AMQPError",
        "AMQPConnectionError",
        "ConnectionLost",
        "ConnectionClosedByBroker",
        "ConnectionClosed",
        "ChannelClosed",
        "ConsumerCancelled",
        "PublishError",
        "MessageNacked",
        "MessageReturned",
        "PublishTimeout",
        "BufferFull",
        "MessageTooLarge",
        "ProducerClosed",
        "ProtocolError",
        "LocalProtocolError",
        "RemoteProtocolError",
        "FrameError",
    ],
}

#: Exported names whose objects come from another library: only a pointer.
FOREIGN: dict[str, str] = {}

#: Classes the library makes for you: their constructor is not shown.
NOT_CONSTRUCTED = {
    "Channel",
    "Client",
    "Confirmation",
    "Connection",
    "Consumer",
    "Producer",
    "RecoveringConsumer",
}

#: Signatures longer than this are written one parameter per line.
LINE_LENGTH = 88

_SECTION_HEAD = re.compile(r"(Args|Arguments|Attributes|Raises|Returns|Yields)( \(.*\))?:")


class _Annotation:
    """An annotation string shown without quotes in a signature."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


class _Default:
    """A parameter default shown by a stable text (no memory addresses)."""

    def __init__(self, value: object) -> None:
        text = repr(value)
        if " at 0x" in text:
            text = getattr(value, "__name__", type(value).__name__)
        self.text = text

    def __repr__(self) -> str:
        return self.text


def _plain(annotation: Any) -> Any:
    if annotation is inspect.Parameter.empty:
        return annotation
    if isinstance(annotation, str):
        return _Annotation(annotation)
    return _Annotation(inspect.formatannotation(annotation))


def signature(name: str, obj: Callable[..., Any], *, drop_self: bool = False) -> str:
    """``name(params) -> return`` with annotations as written in the source."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return f"{name}(...)"
    params = [
        p.replace(
            annotation=_plain(p.annotation),
            default=p.default if p.default is p.empty else _Default(p.default),
        )
        for p in sig.parameters.values()
    ]
    if drop_self and params and params[0].name in ("self", "cls"):
        params = params[1:]
    params = [p for p in params if not p.name.startswith("_")]
    sig = sig.replace(parameters=params, return_annotation=_plain(sig.return_annotation))
    text = f"{name}{sig}"
    if len(text) <= LINE_LENGTH or not params:
        return text
    rendered = str(sig.replace(return_annotation=inspect.Signature.empty))[1:-1]
    parts = _split_params(rendered)
    tail = ")" if sig.return_annotation is sig.empty else f") -> {sig.return_annotation!r}"
    return f"{name}(\n" + "".join(f"    {part},\n" for part in parts) + tail


def _split_params(text: str) -> list[str]:
    """Split a rendered parameter list at its top-level commas."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    parts.append(text[start:].strip())
    return parts


def markdown(doc: str | None) -> str:
    """A docstring as Markdown (see the module doc)."""
    if not doc:
        return ""
    doc = re.sub(r":[a-z]+:`([^`]+)`", lambda m: f"`{_reference(m.group(1))}`", doc)
    doc = re.sub(r"``([^`]+)``", r"`\1`", doc)
    return "\n".join(_blocks(doc.splitlines())).strip() + "\n"


def _reference(target: str) -> str:
    """How a cross-reference reads: ``~a.b.C`` and private paths as ``C``,
    ``trio_lavin.X`` as ``X``, anything else (``trio.WouldBlock``) as written."""
    target = target.removeprefix("trio_lavin.")
    if target.startswith("~") or any(part.startswith("_") for part in target.split(".")):
        return target.split(".")[-1]
    return target


def _blocks(lines: list[str]) -> Iterator[str]:
    i = 0
    while i < len(lines):
        line = lines[i]
        if _SECTION_HEAD.fullmatch(line):
            yield ""
            yield f"**{line[:-1]}:**"
            yield ""
            i += 1
            entry: list[str] = []
            while i < len(lines) and (lines[i].startswith(" ") or not lines[i].strip()):
                if not lines[i].strip():
                    i += 1
                    break
                if len(lines[i]) - len(lines[i].lstrip()) <= 4 and entry:
                    yield "- " + " ".join(entry)
                    entry = []
                entry.append(lines[i].strip())
                i += 1
            if entry:
                yield "- " + " ".join(entry)
            yield ""
            continue
        if line.rstrip().endswith("::"):
            yield line.rstrip()[:-1] if not line.rstrip().endswith(" ::") else line.rstrip()[:-3]
            i += 1
            block: list[str] = []
            while i < len(lines) and (not lines[i].strip() or lines[i].startswith(" ")):
                block.append(lines[i])
                i += 1
            code = textwrap.dedent("\n".join(block)).strip("\n")
            yield ""
            # A table (or any text) rather than code: no Python highlighting.
            yield "```text" if code.startswith("=") else "```python"
            yield code
            yield "```"
            yield ""
            continue
        yield line
        i += 1


def _own_members(cls: type) -> Iterator[tuple[str, Any]]:
    """Public methods and properties defined by ``cls`` itself, in source
    order, then those it inherits from private base classes of trio_lavin
    (which the reader never sees, e.g. the client's ``Declarations``)."""
    seen: set[str] = set()
    for klass in cls.__mro__:
        if klass is not cls and not (
            klass.__name__.startswith("_") or klass.__module__.startswith("trio_lavin._")
        ):
            continue
        if klass is not cls and klass.__name__ in trio_lavin.__all__:
            continue  # a public base class has its own section
        for name, value in _members_of(klass):
            if name not in seen:
                seen.add(name)
                yield name, value


def _members_of(cls: type) -> Iterator[tuple[str, Any]]:
    for name, value in vars(cls).items():
        if name.startswith("_") and name not in ("__aenter__", "__aiter__"):
            continue
        if name.startswith("__"):
            continue  # documented by the class: async with / async for
        doc = inspect.getdoc(value.fget if isinstance(value, property) else value) or ""
        if doc.startswith("Internal:"):
            continue  # public by name for the package's own classes, not for users
        if isinstance(value, property) or inspect.isfunction(value):
            yield name, value
        elif isinstance(value, (staticmethod, classmethod)):
            yield name, value.__func__


def _member_comments(cls: type) -> dict[str, str]:
    """The ``#:`` comments above the attributes, fields or enum members in
    ``cls``'s body, by name."""
    comments: dict[str, str] = {}
    pending: list[str] = []
    for line in inspect.getsource(cls).splitlines():
        if line.startswith("    #:"):
            pending.append(line[6:].strip())
        elif match := re.match(r"    ([A-Za-z_]\w*)\s*[:=]", line):
            if pending:
                comments[match.group(1)] = markdown(" ".join(pending)).strip()
            pending = []
        else:
            pending = []
    return comments


def _kind(func: Callable[..., Any]) -> str:
    wrapped = getattr(func, "__wrapped__", None)
    if wrapped is not None and inspect.isasyncgenfunction(wrapped):
        return "async with "
    if inspect.iscoroutinefunction(func):
        return "await "
    return ""


def render_function(name: str, func: Callable[..., Any], level: str = "###") -> list[str]:
    return [
        f"{level} `{name}`",
        "",
        "```python",
        _kind(func) + signature(name, func),
        "```",
        "",
        markdown(inspect.getdoc(func)),
    ]


def render_class(name: str, cls: type) -> list[str]:
    out = [f"### `{name}`", ""]
    if name in FOREIGN:
        out += [f"An alias of `{FOREIGN[name]}` (see pamqp's documentation).", ""]
        return out
    bases = [b.__name__ for b in cls.__bases__ if b is not object]
    if issubclass(cls, enum.Enum):
        comments = _member_comments(cls)
        out += ["An enum:", ""]
        out += [
            f"- `{m.name}`" + (f": {comments[m.name]}" if m.name in comments else "") for m in cls
        ]
        out.append("")
    elif issubclass(cls, BaseException):
        out += [f"Subclass of {', '.join(f'`{b}`' for b in bases)}.", ""]
    elif name in NOT_CONSTRUCTED:
        pass
    else:
        init = signature(name, cls.__init__, drop_self=True)
        out += ["```python", init, "```", ""]
    doc = cls.__doc__  # not inspect.getdoc: no docstring inherited from a base
    if doc and doc.startswith(f"{cls.__name__}("):
        doc = None  # the signature dataclasses put in place of a missing docstring
    out.append(markdown(inspect.cleandoc(doc) if doc else None))
    if dataclasses.is_dataclass(cls):
        comments = _member_comments(cls)
        documented = [
            f for f in dataclasses.fields(cls) if f.name in comments and not f.name.startswith("_")
        ]
        if documented:
            out += ["", "**Fields:**", ""]
            out += [f"- `{f.name}`: {comments[f.name]}" for f in documented]
            out.append("")
    if issubclass(cls, (BaseException, enum.Enum)):
        return out
    for member_name, member in _own_members(cls):
        qualified = f"{name}.{member_name}"
        if isinstance(member, property):
            out += [f"#### `{qualified}` (property)", "", markdown(inspect.getdoc(member))]
            continue
        out += [
            f"#### `{qualified}`",
            "",
            "```python",
            _kind(member) + signature(qualified, member, drop_self=True),
            "```",
            "",
            markdown(inspect.getdoc(member)),
        ]
    return out


def render() -> str:
    """The whole of docs/api.md."""
    exported = list(trio_lavin.__all__)
    placed = {name for names in SECTIONS.values() for name in names}
    sections = dict(SECTIONS)
    other = [n for n in exported if n not in placed and n != "__version__"]
    if other:
        sections["Other"] = other
    out = [
        "# API reference",
        "",
        "<!-- Generated by docs/gen_api.py from the docstrings: do not edit by hand. -->",
        "",
        "Everything below is importable from `trio_lavin` (`import trio_lavin as lavin`).",
        "Names starting with an underscore, and modules whose name does, are private.",
        "The Prometheus exporter, `trio_lavin.prometheus`, and the test helpers, "
        "`trio_lavin.testing`, are at the end (and in [Testing your app](testing.md)).",
        "",
    ]
    for title, names in sections.items():
        present = [n for n in names if n in exported]
        if present:
            out.append(f"- [{title}](#{_anchor(title)})")
    out.append("")
    for title, names in sections.items():
        present = [n for n in names if n in exported]
        if not present:
            continue
        out += [f"## {title}", ""]
        for name in present:
            obj = getattr(trio_lavin, name)
            if inspect.isclass(obj):
                out += render_class(name, obj)
            else:
                out += render_function(name, obj)
    out += render_prometheus()
    out += render_testing()
    text = "\n".join(out)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.rstrip("\n") + "\n"


def render_prometheus() -> list[str]:
    """The Prometheus exporter: ``trio_lavin.prometheus`` (the ``prometheus`` extra)."""
    import trio_lavin.prometheus

    out = ["## Prometheus metrics", ""]
    out += [markdown(inspect.getdoc(trio_lavin.prometheus) or ""), ""]
    for name in trio_lavin.prometheus.__all__:
        obj = getattr(trio_lavin.prometheus, name)
        title = f"prometheus.{name}"
        out += render_class(title, obj) if inspect.isclass(obj) else render_function(title, obj)
    return out


def render_testing() -> list[str]:
    """The test helpers: ``trio_lavin.testing``, its strategies and its pytest fixtures."""
    import trio_lavin.testing
    import trio_lavin.testing.machines
    import trio_lavin.testing.pytest_plugin
    import trio_lavin.testing.strategies

    out = ["## Test helpers", ""]
    out += [markdown(inspect.getdoc(trio_lavin.testing) or ""), ""]
    modules = (trio_lavin.testing, trio_lavin.testing.strategies, trio_lavin.testing.machines)
    for module in modules:
        for name in module.__all__:
            obj = getattr(module, name)
            title = f"{module.__name__.removeprefix('trio_lavin.')}.{name}"
            if inspect.isclass(obj):
                out += render_class(title, obj)
            elif callable(obj):
                out += render_function(title, obj)
            else:  # a strategy value
                out += [f"### `{title}`", "", f"A strategy: `{obj!r}`."[:300], ""]
    out += ["### pytest fixtures", ""]
    out += [markdown(inspect.getdoc(trio_lavin.testing.pytest_plugin) or ""), ""]
    return out


def _anchor(title: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^a-z0-9 -]", "", title.lower()).replace(" ", "-")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="render docs/api.md from the docstrings")
    parser.add_argument("--check", action="store_true", help="exit 1 if api.md is out of date")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if API_MD.read_text() != text:
            print(f"{API_MD} is out of date: run `python docs/gen_api.py`", file=sys.stderr)
            return 1
        return 0
    API_MD.write_text(text)
    print(f"wrote {API_MD}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
