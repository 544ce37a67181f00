"""The command line: ``python -m trio_lavin`` / ``trio-lavin``.

Options are parsed and checked (the URL included) before anything connects: a bad option
or URL prints one line, ``trio-lavin: error: ...``, to stderr and exits 2.  See
:mod:`trio_lavin._cli._common` for the other exit codes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, NoReturn

from .._params import Parameters, parse_url
from .._version import __version__
from ._common import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    PROG,
    RUNTIME_ERRORS,
    CLIError,
    Interrupt,
    leaves,
    parse_shortstr,
    print_error,
)

#: Used when neither ``--uri`` nor the ``AMQP_URL`` environment variable is given.
DEFAULT_URL: Final = "amqp://guest:guest@localhost:5672/"

Command = Callable[[Interrupt], Awaitable[int]]


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (no usage block) and exit 2."""

    def error(self, message: str) -> NoReturn:
        print_error(f"{message} (see `{self.prog} --help`)")
        raise SystemExit(EXIT_USAGE)


# -- option types: each error names the value and what was expected --------------------------


def _integer(low: int, high: int | None = None) -> Callable[[str], int]:
    expected = f"an integer >= {low}" if high is None else f"an integer in {low}..{high}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, not {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"expected {expected}, not {text!r}")
        return value

    return parse


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, not {text!r}")
    return value


def _name(what: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        try:
            return parse_shortstr(what, text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(
            f"expected a JSON object such as '{{\"x-max-length\": 1000}}', not {text!r}"
        )
    return value


def _header(text: str) -> tuple[str, str]:
    key, eq, value = text.partition("=")
    if not eq or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, not {text!r}")
    return key, value


# -- the parser ------------------------------------------------------------------------------

_URI_HELP = (
    "the broker's URL (default: the AMQP_URL environment variable, else "
    f"{DEFAULT_URL}); amqp://, amqps://, ws:// or wss://"
)


def _add_uri(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--uri", metavar="URL", help=_URI_HELP)


_THROUGHPUT_EPILOG = """\
Once every client is connected, a line per second goes to stderr (publish rate, consume rate,
messages in flight = published - consumed, and with -c the unconfirmed ones); the summary goes
to stdout when the run ends: after -z seconds, when -C messages were published and (with
consumers) -D (default: -C) were consumed, or at Ctrl-C (then the exit code is 130).  With
no -z and no -C it runs until Ctrl-C.  --json prints the summary as one JSON line with
lavinmqperf's keys (elapsed_seconds, avg_pub_rate, avg_consume_rate) and the totals.
A message counts as published once handed to its connection (up to 4 MiB per connection
may still be on the way when the run ends).  Without -u the run has a queue of its own,
deleted when it ends; a queue named with -u is declared durable, as lavinmqperf does,
and left in place afterwards (with the messages no consumer took).

Publishers and consumers share one thread here (lavinmqperf uses threads): when consumers
fall 10 000 messages behind, publishers pause until they are 5 000 behind, so the rates
are what one process sustains end to end.  Consumers that do not catch up within a second
(or with -R) switch this off.  -y 0 or -x 0 measures one side alone.

The option letters are lavinmqperf's.  Not supported: -t/-T (transactions), -g (basic.get
polling), --properties, --random-bodies.  Different: -z accepts fractions of seconds;
with -C, consumers stop after -C messages unless -D says otherwise (lavinmqperf's keep
waiting); -u '' uses a server-named auto-delete queue; live lines go to stderr.

example: trio-lavin perf throughput -x 2 -y 2 -s 256 -c 1000 -z 10 --uri amqp://localhost
"""

_LATENCY_EPILOG = """\
Each round trip publishes one message to a private, server-named queue and waits for its
delivery to a no-ack consumer on the same connection.  Percentiles are nearest-rank over the
timed round trips (the warm-up ones are not counted).  A line per second goes to stderr, the
summary to stdout (one JSON line with --json).
"""

_PUBLISH_EPILOG = """\
Each MESSAGE argument is one message; with none, each line of stdin is one (without its line
ending).  By default every message is published with mandatory=true in confirm mode, so the
command exits 0 only once the broker confirmed all of them, and 1 at the first message
that was nacked or could not be routed.

examples (the last one fire and forget: with nothing bound to amq.topic yet, a mandatory
message would come back unroutable and the command exit 1):
  trio-lavin publish -u orders --declare "first order" "second order"
  seq 1 1000 | trio-lavin publish -u numbers --declare
  trio-lavin publish -e amq.topic -k logs.error -H source=cron --no-confirm "disk full"
"""

_CONSUME_EPILOG = """\
Each delivery's body is printed as one line on stdout (--json: one JSON object per line,
with routing information and properties).  Without --ack nothing is acknowledged: the
messages stay in the queue (the broker re-queues them when the command exits).

examples:
  trio-lavin consume -u orders --count 2 --ack
  trio-lavin consume -u numbers --json --timeout 1
"""


def build_parser() -> argparse.ArgumentParser:
    """The whole command line, for ``main`` and for generating documentation."""
    formatter = argparse.RawDescriptionHelpFormatter
    parser = _Parser(
        prog=PROG,
        description="trio-lavin: an AMQP 0-9-1 client for LavinMQ and RabbitMQ, from the shell.",
        formatter_class=formatter,
        epilog="Run `trio-lavin COMMAND --help` for the options of each command.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    perf = commands.add_parser(
        "perf",
        help="measure the broker and the client: throughput or latency",
        description="Performance tests against a broker.",
        formatter_class=formatter,
    )
    tests = perf.add_subparsers(dest="test", metavar="TEST", required=True)

    throughput = tests.add_parser(
        "throughput",
        help="publish and consume as fast as possible (like lavinmqperf throughput)",
        description="Publishers and consumers, each on its own connection, on one queue.",
        epilog=_THROUGHPUT_EPILOG,
        formatter_class=formatter,
    )
    _add_uri(throughput)
    add = throughput.add_argument
    add("-x", "--publishers", type=_integer(0), default=1, metavar="N", help="default 1")
    add("-y", "--consumers", type=_integer(0), default=1, metavar="N", help="default 1")
    add("-s", "--size", type=_integer(0), default=16, metavar="BYTES", help="body size (16)")
    add("-z", "--time", type=_seconds, metavar="SECONDS", help="measure for this long")
    add("-C", "--pmessages", type=_integer(1), metavar="N", help="publish N messages in all")
    add("-D", "--cmessages", type=_integer(1), metavar="N", help="consume N messages in all")
    add(
        "-c",
        "--confirm",
        type=_integer(0),
        default=0,
        metavar="N",
        help="publisher confirms, at most N unconfirmed per publisher (default 0: off)",
    )
    add(
        "-a",
        "--ack",
        type=_integer(0),
        default=0,
        metavar="N",
        help="ack every N deliveries, multiple=true (default 0: no-ack consumers)",
    )
    add("-P", "--prefetch", type=_integer(0, 65_535), metavar="N", help="basic.qos prefetch")
    add("-r", "--rate", type=_integer(0), default=0, metavar="N", help="max msgs/s per publisher")
    add(
        "-R",
        "--consumer-rate",
        type=_integer(0),
        default=0,
        metavar="N",
        help="max msgs/s per consumer",
    )
    add("-p", "--persistent", action="store_true", help="delivery_mode 2")
    add(
        "-u",
        "--queue",
        type=_name("queue"),
        default="",
        help="(default: a queue of the run's own, deleted when it ends)",
    )
    add("-e", "--exchange", type=_name("exchange"), default="", help='(default "")')
    add("-k", "--routing-key", type=_name("routing key"), help="(default: the queue name)")
    add("--queue-args", type=_json_object, default={}, metavar="JSON", help="queue arguments")
    add("--consumer-args", type=_json_object, default={}, metavar="JSON")
    add("-V", "--verify", action="store_true", help="check every body consumed")
    add("-j", "--json", action="store_true", help="print the summary as one JSON line")
    add("-q", "--quiet", action="store_true", help="no per-second lines")

    latency = tests.add_parser(
        "latency",
        help="round-trip latency percentiles (p50/p90/p99/max)",
        description="Publish one message at a time and time it until it is delivered.",
        epilog=_LATENCY_EPILOG,
        formatter_class=formatter,
    )
    _add_uri(latency)
    add = latency.add_argument
    add("-s", "--size", type=_integer(0), default=16, metavar="BYTES", help="body size (16)")
    add(
        "-C",
        "--count",
        type=_integer(1),
        metavar="N",
        help="timed round trips (default 1000 unless -z is given)",
    )
    add("-z", "--time", type=_seconds, metavar="SECONDS", help="measure for this long")
    add("--warmup", type=_integer(0), default=100, metavar="N", help="untimed first (100)")
    add("-p", "--persistent", action="store_true", help="delivery_mode 2")
    add("-j", "--json", action="store_true", help="print the summary as one JSON line")
    add("-q", "--quiet", action="store_true", help="no per-second lines")

    publish = commands.add_parser(
        "publish",
        help="publish messages from arguments or stdin lines",
        description="Publish messages, one per argument or per line of stdin.",
        epilog=_PUBLISH_EPILOG,
        formatter_class=formatter,
    )
    _add_uri(publish)
    add = publish.add_argument
    add("messages", nargs="*", metavar="MESSAGE", help="message bodies (default: stdin lines)")
    add("-u", "--queue", type=_name("queue"), help="publish to this queue (default exchange)")
    add("-e", "--exchange", type=_name("exchange"), default="", help='(default "")')
    add("-k", "--routing-key", type=_name("routing key"), help="(default: the queue, -u)")
    add("--declare", action="store_true", help="declare the queue (-u), durable, first")
    add("-p", "--persistent", action="store_true", help="delivery_mode 2")
    add("--content-type", metavar="TYPE")
    add("-H", "--header", type=_header, action="append", default=[], metavar="KEY=VALUE")
    add("--no-confirm", action="store_true", help="fire and forget: no confirms, no mandatory")
    add(
        "--timeout",
        type=_seconds,
        default=30.0,
        metavar="SECONDS",
        help="how long to wait for a confirm (default 30)",
    )

    consume = commands.add_parser(
        "consume",
        help="print the messages of a queue",
        description="Consume from a queue and print each delivery.",
        epilog=_CONSUME_EPILOG,
        formatter_class=formatter,
    )
    _add_uri(consume)
    add = consume.add_argument
    add("-u", "--queue", type=_name("queue"), required=True, help="the queue to consume")
    add("-n", "--count", type=_integer(1), metavar="N", help="stop after N deliveries")
    add("--ack", action="store_true", help="acknowledge each delivery after printing it")
    add(
        "-P",
        "--prefetch",
        type=_integer(0, 65_535),
        metavar="N",
        help="default: --count if given, else 100 with --ack, else 0 (no limit)",
    )
    add("--declare", action="store_true", help="declare the queue, durable, first")
    add(
        "--timeout",
        type=_seconds,
        metavar="SECONDS",
        help="stop after this long (exit 1 if --count was not reached)",
    )
    add("-j", "--json", action="store_true", help="one JSON object per delivery")
    return parser


# -- from options to a command ---------------------------------------------------------------


def _parameters(uri: str | None) -> Parameters:
    source = "--uri"
    if uri is None:
        uri = os.environ.get("AMQP_URL") or None
        source = "AMQP_URL"
    if uri is None:
        uri, source = DEFAULT_URL, "the default URL"
    try:
        return parse_url(uri)
    except ValueError as exc:  # the message never contains the password
        raise CLIError(f"bad {source}: {exc}", EXIT_USAGE) from None


def prepare(args: argparse.Namespace) -> Command:
    """Turn parsed arguments into the command to run; usage errors raise
    :class:`CLIError` with exit code 2."""
    params = _parameters(args.uri)
    if args.command == "perf" and args.test == "throughput":
        return _prepare_throughput(args, params)
    if args.command == "perf":
        return _prepare_latency(args, params)
    if args.command == "publish":
        return _prepare_publish(args, params)
    return _prepare_consume(args, params)


def _prepare_throughput(args: argparse.Namespace, params: Parameters) -> Command:
    from ._perf import ThroughputOptions, run_throughput

    prog = f"{PROG} perf throughput"
    if args.publishers == 0 and args.consumers == 0:
        raise CLIError(f"nothing to do with -x 0 and -y 0 (see `{prog} --help`)", EXIT_USAGE)
    if args.ack and args.prefetch and args.ack > args.prefetch:
        raise CLIError(
            f"-a/--ack {args.ack} would never be reached with -P/--prefetch {args.prefetch}: "
            f"the broker stops after {args.prefetch} unacked deliveries",
            EXIT_USAGE,
        )
    options = ThroughputOptions(
        params=params,
        publishers=args.publishers,
        consumers=args.consumers,
        size=args.size,
        duration=args.time,
        pmessages=args.pmessages,
        cmessages=args.cmessages,
        confirm=args.confirm,
        ack=args.ack,
        prefetch=args.prefetch,
        rate=args.rate,
        consume_rate=args.consumer_rate,
        persistent=args.persistent,
        queue=args.queue,
        exchange=args.exchange,
        routing_key=args.routing_key,
        queue_args=args.queue_args,
        consumer_args=args.consumer_args,
        verify=args.verify,
        json=args.json,
        quiet=args.quiet,
    )
    return lambda interrupt: run_throughput(options, interrupt)


def _prepare_latency(args: argparse.Namespace, params: Parameters) -> Command:
    from ._perf import LatencyOptions, run_latency

    options = LatencyOptions(
        params=params,
        size=args.size,
        count=args.count,
        duration=args.time,
        warmup=args.warmup,
        persistent=args.persistent,
        json=args.json,
        quiet=args.quiet,
    )
    return lambda interrupt: run_latency(options, interrupt)


def _prepare_publish(args: argparse.Namespace, params: Parameters) -> Command:
    from ._messages import PublishOptions, run_publish

    prog = f"{PROG} publish"
    if args.queue is None and args.routing_key is None and not args.exchange:
        raise CLIError(
            f"say where to publish: -u QUEUE, or -e EXCHANGE and/or -k ROUTING_KEY "
            f"(see `{prog} --help`)",
            EXIT_USAGE,
        )
    if args.queue is not None and (args.routing_key is not None or args.exchange):
        raise CLIError(
            f"-u/--queue publishes through the default exchange with the queue's name as "
            f"routing key: give -u, or -e/-k, not both (see `{prog} --help`)",
            EXIT_USAGE,
        )
    if args.declare and args.queue is None:
        raise CLIError(
            f"--declare needs the queue to declare: -u QUEUE (see `{prog} --help`)", EXIT_USAGE
        )
    messages = None
    if args.messages:
        messages = tuple(os.fsencode(message) for message in args.messages)
    options = PublishOptions(
        params=params,
        messages=messages,
        exchange=args.exchange,
        routing_key=args.queue if args.queue is not None else (args.routing_key or ""),
        declare=args.queue if args.declare else None,
        persistent=args.persistent,
        content_type=args.content_type,
        headers=tuple(args.header),
        confirm=not args.no_confirm,
        timeout=args.timeout,
    )
    return lambda interrupt: run_publish(options, interrupt)


def _prepare_consume(args: argparse.Namespace, params: Parameters) -> Command:
    from ._messages import ConsumeOptions, run_consume

    options = ConsumeOptions(
        params=params,
        queue=args.queue,
        count=args.count,
        ack=args.ack,
        prefetch=args.prefetch,
        declare=args.declare,
        timeout=args.timeout,
        json=args.json,
    )
    return lambda interrupt: run_consume(options, interrupt)


# -- running ---------------------------------------------------------------------------------


async def _run(command: Command, interrupt: Interrupt) -> int:
    import trio

    code = EXIT_INTERRUPTED
    async with trio.open_nursery() as nursery:
        scope = trio.CancelScope()
        nursery.start_soon(interrupt.watch, scope)
        with scope:
            code = await command(interrupt)
        nursery.cancel_scope.cancel()
    return EXIT_INTERRUPTED if interrupt.received else code


def _silence_stdout() -> None:
    """After a broken pipe on stdout, point it at /dev/null so that the interpreter's final
    flush does not fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    finally:
        os.close(devnull)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); return the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        command = prepare(args)
    except SystemExit as exc:  # --help, --version, or a usage error already printed
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    except CLIError as exc:
        print_error(str(exc))
        return exc.exit_code
    import trio

    try:
        return trio.run(_run, command, Interrupt())
    except BaseException as exc:
        errors = list(leaves(exc))
        if any(isinstance(error, KeyboardInterrupt) for error in errors):
            return EXIT_INTERRUPTED
        for error in errors:
            if isinstance(error, CLIError):
                print_error(str(error))
                return error.exit_code
        for error in errors:
            if isinstance(error, RUNTIME_ERRORS):
                if isinstance(error, BrokenPipeError):
                    _silence_stdout()
                    return EXIT_FAILURE
                print_error(str(error) or type(error).__name__)
                return EXIT_FAILURE
        raise
