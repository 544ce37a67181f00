"""trio-lavin against every Python AMQP peer and two ceiling clients, on one broker.

Like ``lavinmqperf``, every client runs every scenario in the same session against the same
broker, interleaved: round 1 runs each scenario once per client (clients in a shuffled
order), then round 2, and so on; the table shows medians over the rounds.  Each run is a
fresh subprocess (``suite_child.py``) with a fresh queue (deleted afterwards), so event
loops, imports and garbage do not carry over; a run that overruns ``--run-timeout`` is
killed and shown as "timeout", a client that cannot run as "n/a (reason)" or "error".

    nox -s bench -- [--rounds 3] [--messages 50000] [--scenarios ...] [--clients ...]
    nox -s bench -- --broker lavinmq --message-profile realistic bare
    AMQP_URL=amqp://... python benchmarks/bench_suite.py ...

The Markdown report goes to stdout, progress to stderr.  See ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import secrets
import statistics
import struct
import subprocess
import sys
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

from suite_common import (
    CLIENTS,
    LATENCY_SCENARIOS,
    LAVIN_CLIENTS,
    MESSAGE_PROFILES,
    SCENARIOS,
    RunSpec,
    body,
)
from suite_wire import SocketClient, WireError, realistic_properties

CHILD = Path(__file__).with_name("suite_child.py")
#: Queues die by themselves this long after their last use, should we crash before
#: deleting them (milliseconds).
QUEUE_EXPIRES_MS = 600_000

#: ``--broker`` name -> the ``product`` its Connection.Start names.
BROKERS = {"rabbitmq": "RabbitMQ", "lavinmq": "LavinMQ"}

Result = dict[str, Any]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--url",
        default=os.environ.get("AMQP_URL"),
        help=(
            "the broker (default: $AMQP_URL, which "
            "`python -m trio_lavin.testing rabbitmq exec -- ...` sets)"
        ),
    )
    parser.add_argument(
        "--broker",
        choices=list(BROKERS),
        help="the broker the URL must lead to (checked); `nox -s bench -- --broker lavinmq` "
        "starts a throwaway LavinMQ node instead of a RabbitMQ one",
    )
    parser.add_argument(
        "--message-profile",
        nargs="+",
        choices=list(MESSAGE_PROFILES),
        default=["bare"],
        dest="message_profiles",
        metavar="PROFILE",
        help="the messages: bare (16-byte bodies, no properties; the default) and/or "
        "realistic (256-byte JSON bodies with per-message properties); with both, "
        "each gets its own tables",
    )
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument(
        "--messages",
        type=int,
        default=50_000,
        help="messages per throughput run (default 50 000)",
    )
    parser.add_argument(
        "--latency-messages",
        type=int,
        default=2_000,
        help="timed messages per latency run, after 100 untimed ones (default 2000)",
    )
    parser.add_argument(
        "--enqueue-messages",
        type=int,
        default=100_000,
        help="publish_nowait calls per enqueue run (default 100 000)",
    )
    parser.add_argument("--scenarios", nargs="+", choices=list(SCENARIOS), default=list(SCENARIOS))
    parser.add_argument("--clients", nargs="+", choices=list(CLIENTS), default=list(CLIENTS))
    parser.add_argument("--window", type=int, default=1000, help="publish_confirm window")
    parser.add_argument(
        "--tasks", type=int, default=100, help="publishing tasks in publish_confirm_tasks"
    )
    parser.add_argument("--prefetch", type=int, default=1000, help="consume prefetch")
    parser.add_argument(
        "--ack-every", type=int, default=100, help="consume acks (multiple) every N deliveries"
    )
    parser.add_argument(
        "--run-timeout",
        type=float,
        default=120.0,
        help="seconds before a run is killed and shown as timeout (default 120)",
    )
    parser.add_argument("--seed", type=int, default=None, help="seed of the shuffled orders")
    parser.add_argument("--json", type=Path, help="also write every run's result here")
    parser.add_argument(
        "--pyinstrument",
        type=Path,
        metavar="DIR",
        help="write a pyinstrument profile of every child run into this directory (slows it)",
    )
    args = parser.parse_args(argv)
    if not args.url:
        parser.error(
            "no broker: set AMQP_URL or pass --url (or run under trio_lavin.testing rabbitmq exec)"
        )
    where = args.pyinstrument
    if where is not None and where.exists() and not where.is_dir():
        parser.error(f"--pyinstrument {where} exists and is not a directory")
    if min(args.rounds, args.messages, args.latency_messages, args.tasks) < 1:
        parser.error("--rounds, --messages, --latency-messages and --tasks must be >= 1")
    args.message_profiles = list(dict.fromkeys(args.message_profiles))  # once each
    return args


# -- running -------------------------------------------------------------------------------


def server_version(start_payload: bytes) -> str:
    """``product version`` from a Connection.Start's server properties (best effort)."""
    found = []
    for key in (b"product", b"version"):
        marker = bytes([len(key)]) + key + b"S"
        at = start_payload.find(marker)
        if at < 0:
            return "unknown broker"
        at += len(marker)
        (size,) = struct.unpack_from(">I", start_payload, at)
        found.append(start_payload[at + 4 : at + 4 + size].decode(errors="replace"))
    return " ".join(found)


class Admin:
    """The suite's own connection (the wire codec over a blocking socket) for declaring,
    preloading and deleting the queues; reconnects if the broker closed it."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._client: SocketClient | None = None

    @property
    def client(self) -> SocketClient:
        if self._client is None:
            self._client = SocketClient(self.url, timeout=30.0)
        return self._client

    def _retry(self, action: str, queue: str, count: int = 0, profile: str = "bare") -> None:
        for attempt in (1, 2):
            try:
                if action == "declare":
                    self.client.declare(queue, {"x-expires": QUEUE_EXPIRES_MS})
                elif action == "preload":
                    properties = realistic_properties() if profile == "realistic" else None
                    self.client.preload(queue, count, body(profile), properties=properties)
                else:
                    self.client.delete(queue)
                return
            except (OSError, WireError, TimeoutError):
                self.close()
                if attempt == 2:
                    raise

    def prepare(self, queue: str, preload: int, profile: str) -> None:
        """Declare ``queue`` and put ``preload`` messages of ``profile`` in it."""
        self._retry("declare", queue)
        if preload:
            self._retry("preload", queue, preload, profile)
            self.close()  # the preload left the channel in confirm mode

    def delete(self, queue: str) -> None:
        self._retry("delete", queue)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def run_one(spec: RunSpec, timeout: float) -> Result:
    """Run one child; always returns a result (``timeout``/``error`` when it misbehaved)."""
    base: Result = {
        "client": spec.client,
        "scenario": spec.scenario,
        "profile": spec.message_profile,
    }
    try:
        done = subprocess.run(
            [sys.executable, str(CHILD), spec.to_json()],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {**base, "status": "timeout", "reason": f"killed after {timeout:.0f} s"}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("{"):
            result: Result = json.loads(line)
            if result["status"] == "error":
                sys.stderr.write(done.stderr[-3000:])
            return result
    tail = (done.stderr.strip().splitlines() or ["no output"])[-1][:160]
    return {**base, "status": "error", "reason": f"exit code {done.returncode}: {tail}"}


def describe(result: Result) -> str:
    if result["status"] != "ok":
        return f"{result['status']} ({result['reason']})"
    text = f"{result['rate']:>10,.0f} msg/s"
    if "p50_us" in result:
        text += f"  p50 {result['p50_us']:,.0f} us  p99 {result['p99_us']:,.0f} us"
    text += f"  cpu {result['cpu_us_per_msg']:.1f} us/msg"
    return text + (f"  ({result['note']})" if result.get("note") else "")


def run_suite(args: argparse.Namespace) -> list[Result]:
    rng = random.Random(args.seed)
    admin = Admin(args.url)
    results: list[Result] = []
    if args.pyinstrument:
        args.pyinstrument.mkdir(parents=True, exist_ok=True)
    try:
        for round_number in range(1, args.rounds + 1):
            for scenario in args.scenarios:
                for profile in args.message_profiles:
                    order = list(args.clients)
                    rng.shuffle(order)
                    for client in order:
                        result = _run_cell(args, admin, round_number, scenario, client, profile)
                        result["round"] = round_number
                        results.append(result)
                        sys.stderr.write(
                            f"[round {round_number}/{args.rounds}] {profile:9} {scenario:21} "
                            f"{client:13} {describe(result)}\n"
                        )
    finally:
        admin.close()
    return results


def _run_cell(
    args: argparse.Namespace,
    admin: Admin,
    round_number: int,
    scenario: str,
    client: str,
    profile: str,
) -> Result:
    unsupported = CLIENTS[client].unsupported.get(scenario)
    if unsupported:
        return {
            "client": client,
            "scenario": scenario,
            "profile": profile,
            "status": "n/a",
            "reason": unsupported,
        }
    if scenario in LATENCY_SCENARIOS:
        messages = args.latency_messages
    elif scenario == "enqueue":
        messages = args.enqueue_messages
    else:
        messages = args.messages
    queue = f"bench.{scenario}.{client}.{profile}.{round_number}.{secrets.token_hex(3)}"
    spec = RunSpec(
        client=client,
        scenario=scenario,
        url=args.url,
        queue=queue,
        messages=messages,
        message_profile=profile,
        window=args.window,
        tasks=args.tasks,
        prefetch=args.prefetch,
        ack_every=args.ack_every,
        deadline=max(1.0, args.run_timeout - 10.0),
    )
    if args.pyinstrument:
        name = f"{scenario}.{client}.{profile}.{round_number}.txt"
        spec = replace(spec, pyinstrument=str(args.pyinstrument / name))
    if scenario == "enqueue":
        return run_one(spec, args.run_timeout)
    try:
        admin.prepare(queue, messages if scenario == "consume" else 0, profile)
    except (OSError, WireError, TimeoutError) as exc:
        return {
            "client": client,
            "scenario": scenario,
            "profile": profile,
            "status": "error",
            "reason": repr(exc),
        }
    try:
        return run_one(spec, args.run_timeout)
    finally:
        try:
            admin.delete(queue)
        except (OSError, WireError, TimeoutError) as exc:
            sys.stderr.write(f"could not delete {queue}: {exc!r} (it expires by itself)\n")


# -- reporting -----------------------------------------------------------------------------


def _median(results: list[Result], key: str) -> float:
    return float(statistics.median(r[key] for r in results))


class Summary:
    """Medians per (scenario, client) over the rounds that succeeded."""

    def __init__(self, results: list[Result], args: argparse.Namespace) -> None:
        self.args = args
        self.ok: dict[tuple[str, str], list[Result]] = defaultdict(list)
        self.failed: dict[tuple[str, str], list[Result]] = defaultdict(list)
        self.variants: dict[str, list[str]] = defaultdict(list)
        for r in results:
            cell = (r["scenario"], r["client"])
            if r["status"] == "ok":
                self.ok[cell].append(r)
                variant = r.get("variant", "")
                if variant and variant not in self.variants[r["client"]]:
                    self.variants[r["client"]].append(variant)
            else:
                self.failed[cell].append(r)

    def headline(self, scenario: str, client: str, key: str | None = None) -> float | None:
        runs = self.ok.get((scenario, client))
        if not runs:
            return None
        if key is None:
            key = "p50_us" if scenario in LATENCY_SCENARIOS else "rate"
        return _median(runs, key)

    def cell(self, scenario: str, client: str, key: str, fmt: str) -> str:
        runs = self.ok.get((scenario, client))
        failures = self.failed.get((scenario, client), [])
        if not runs:
            if not failures:
                return ""
            first = failures[0]
            if first["status"] == "n/a":
                return f"n/a ({first['reason']})"
            if first["status"] == "timeout":
                return f"timeout ({first['reason']})"
            return f"{first['status']}: {first['reason']}".replace("|", "/")
        text = format(_median(runs, key), fmt).replace(",", " ")
        notes = sorted({r["note"] for r in runs if r.get("note")})
        if notes:
            text += f" ({'; '.join(notes)})"
        if failures:
            text += f" ({len(runs)}/{len(runs) + len(failures)} ok)"
        return text

    def _table(self, header: list[str], rows: list[list[str]]) -> str:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)

    def _rows(self) -> list[tuple[str, str, str]]:
        """(scenario, label, key) per row of the main table."""
        rows = []
        for scenario in self.args.scenarios:
            unit = SCENARIOS[scenario][1]
            if scenario in LATENCY_SCENARIOS:
                rows.append((scenario, f"{scenario} p50 ({unit})", "p50_us"))
                rows.append((scenario, f"{scenario} p99 ({unit})", "p99_us"))
            else:
                rows.append((scenario, f"{scenario} ({unit})", "rate"))
        return rows

    def report(self, profile: str) -> str:
        """The tables of ``profile`` (the results given are of that profile only)."""
        clients = self.args.clients
        labels = [CLIENTS[c].label for c in clients]
        out = [f"**Message profile: {profile}** ({MESSAGE_PROFILES[profile]}).\n"]
        main_rows = [
            [label] + [self.cell(s, c, key, ",.0f") for c in clients]
            for s, label, key in self._rows()
        ]
        out.append(
            f"Medians, {profile} profile (msg/s, calls/s, or microseconds for latencies):\n"
        )
        out.append(self._table(["scenario", *labels], main_rows))
        cpu_rows = [
            [s] + [self.cell(s, c, "cpu_us_per_msg", ",.1f") for c in clients]
            for s in self.args.scenarios
        ]
        out.append(
            f"\nClient CPU time per message, {profile} profile (microseconds, user + system, "
            "medians):\n"
        )
        out.append(self._table(["scenario", *labels], cpu_rows))
        for lavin in (c for c in LAVIN_CLIENTS if c in clients):
            others = [c for c in clients if c not in LAVIN_CLIENTS]
            if not others:
                continue
            rows = []
            for s in self.args.scenarios:
                mine = self.headline(s, lavin)
                row = [s]
                for other in others:
                    theirs = self.headline(s, other)
                    if mine is None or theirs is None or mine == 0 or theirs == 0:
                        row.append("-")
                    elif s in LATENCY_SCENARIOS:
                        row.append(f"{theirs / mine:.2f}x")
                    else:
                        row.append(f"{mine / theirs:.2f}x")
                if any(value != "-" for value in row[1:]):
                    rows.append(row)
            out.append(
                f"\n{CLIENTS[lavin].label} relative to each client, {profile} profile (above 1 "
                "means trio-lavin is faster: rate ratio, or inverse p50 ratio for latencies):\n"
            )
            out.append(self._table(["scenario", *(CLIENTS[c].label for c in others)], rows))
        return "\n".join(out) + "\n"

    def clients_as_run(self) -> str:
        if not self.variants:
            return ""
        lines = ["Clients as run:\n"]
        lines += [
            f"- {CLIENTS[c].label}: {'; '.join(self.variants[c])}"
            for c in self.args.clients
            if c in self.variants
        ]
        return "\n".join(lines) + "\n"


def report(results: list[Result], args: argparse.Namespace) -> str:
    """Every profile's tables, in the order of ``--message-profile``, then the clients."""
    sections = [
        Summary([r for r in results if r.get("profile", "bare") == profile], args).report(profile)
        for profile in args.message_profiles
    ]
    sections.append(Summary(results, args).clients_as_run())
    return "\n".join(section for section in sections if section)


def preamble(args: argparse.Namespace, broker: str, now: datetime.datetime) -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    profiles = "; ".join(f"{p} ({MESSAGE_PROFILES[p]})" for p in args.message_profiles)
    rounds = f"{args.rounds} interleaved round{'s' if args.rounds != 1 else ''}"
    return (
        f"trio-lavin benchmark suite against {broker} (same machine, loopback), "
        f"{now:%Y-%m-%d %H:%M} UTC.\n"
        f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}.  "
        f"Message profile{'s' if len(args.message_profiles) > 1 else ''}: {profiles}.\n"
        f"{rounds}; {args.messages} messages per throughput run, {args.latency_messages} per "
        f"latency run, {args.enqueue_messages} enqueue calls; confirm window {args.window}, "
        f"{args.tasks} tasks in publish_confirm_tasks, prefetch {args.prefetch}, consume acks "
        f"every {args.ack_every} (multiple).\n"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        probe = SocketClient(args.url)
    except (OSError, WireError, TimeoutError) as exc:
        sys.exit(f"cannot reach the broker at {args.url}: {exc!r}")
    broker = server_version(probe.start_payload)
    probe.close()
    if args.broker and not broker.startswith(BROKERS[args.broker] + " "):
        sys.exit(f"--broker {args.broker}, but {args.url} is {broker}")
    started = datetime.datetime.now(datetime.UTC)
    sys.stderr.write(preamble(args, broker, started))
    results = run_suite(args)
    if args.json:
        args.json.write_text("\n".join(json.dumps(r) for r in results) + "\n")
    sys.stdout.write(preamble(args, broker, started) + "\n" + report(results, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
