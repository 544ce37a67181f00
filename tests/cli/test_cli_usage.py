"""The command line without a broker: help, usage errors, URL errors, an unreachable broker,
and the pure helpers behind the commands."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from typing import Any, cast

import pytest
import trio

from trio_lavin import BasicProperties, Delivery
from trio_lavin._cli import main
from trio_lavin._cli._main import DEFAULT_URL, build_parser
from trio_lavin._cli._messages import default_prefetch, delivery_json, read_lines
from trio_lavin._cli._perf import make_body, percentile

SECRET = "cli-s3cret-pw"

HELP_CASES = {
    (): ["perf", "publish", "consume"],
    ("perf",): ["throughput", "latency"],
    ("perf", "throughput"): ["--publishers", "--consumers", "--size", "--time", "--confirm"],
    ("perf", "latency"): ["--count", "--time", "--warmup"],
    ("publish",): ["MESSAGE", "--queue", "--exchange", "--routing-key", "--no-confirm"],
    ("consume",): ["--queue", "--count", "--ack", "--prefetch", "--timeout"],
}


def _one_error_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {lines!r}"
    assert lines[0].startswith("trio-lavin: error: "), lines[0]
    return lines[0]


@pytest.mark.parametrize("command", list(HELP_CASES), ids=lambda c: " ".join(c) or "top")
def test_help_of_each_command_lists_its_options_and_exits_0(
    command: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*command, "--help"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith(f"usage: trio-lavin {' '.join(command)}".rstrip())
    for option in HELP_CASES[command]:
        assert option in out
    assert err == ""


def test_python_dash_m_help_runs_without_a_broker() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "trio_lavin", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: trio-lavin")
    assert "perf" in result.stdout
    assert result.stderr == ""


def test_the_trio_lavin_console_script_runs_main() -> None:
    from importlib.metadata import entry_points

    scripts = entry_points(group="console_scripts", name="trio-lavin")
    assert [script.value for script in scripts] == ["trio_lavin._cli:main"]
    assert next(iter(scripts)).load() is main


def test_version_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    from trio_lavin import __version__

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"trio-lavin {__version__}"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["perf", "throughput", "-x", "abc"],
            "-x/--publishers: expected an integer >= 0, not 'abc'",
        ),
        (
            ["perf", "throughput", "-z", "0"],
            "-z/--time: expected a number of seconds > 0, not '0'",
        ),
        (["perf", "throughput", "-P", "70000"], "expected an integer in 0..65535, not '70000'"),
        (["perf", "throughput", "--queue-args", "[1]"], "expected a JSON object"),
        (["perf", "throughput", "-u", "q" * 256], "queue must be at most 255 bytes, not 256"),
        (["perf", "throughput", "--bogus"], "unrecognized arguments: --bogus"),
        (["perf", "throughput", "-x", "0", "-y", "0"], "nothing to do with -x 0 and -y 0"),
        (["perf", "throughput", "-a", "50", "-P", "10"], "-a/--ack 50 would never be reached"),
        (["perf", "latency", "-C", "0"], "-C/--count: expected an integer >= 1, not '0'"),
        (["perf"], "the following arguments are required: TEST"),
        ([], "the following arguments are required: COMMAND"),
        (["bogus"], "invalid choice: 'bogus'"),
        (["publish", "hello"], "say where to publish"),
        (["publish", "-u", "q", "-k", "k", "x"], "give -u, or -e/-k, not both"),
        (["publish", "-k", "k", "--declare", "x"], "--declare needs the queue to declare"),
        (["publish", "-u", "q", "-H", "novalue", "x"], "expected KEY=VALUE, not 'novalue'"),
        (["consume"], "the following arguments are required: -u/--queue"),
        (["consume", "-u", "q", "--count", "-1"], "expected an integer >= 1, not '-1'"),
    ],
)
def test_a_bad_option_prints_one_error_line_and_exits_2(
    argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert expected in _one_error_line(err)


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        (f"amqp://user:{SECRET}@host:99999/", "URL port must be a number in 1..65535"),
        (f"http://user:{SECRET}@host/", "URL scheme must be one of"),
        (f"amqp://user:{SECRET}@host/a/b", "URL vhost must be one path segment"),
        (f"amqp://user:{SECRET}@host/?heartbeat=soon", "heartbeat must be an integer"),
    ],
)
def test_a_bad_uri_prints_one_line_without_the_password_and_exits_2(
    uri: str, expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["consume", "-u", "q", "--uri", uri]) == 2
    out, err = capsys.readouterr()
    line = _one_error_line(err)
    assert line.startswith("trio-lavin: error: bad --uri: ")
    assert expected in line
    assert SECRET not in out + err


def test_a_bad_amqp_url_environment_variable_is_named_in_the_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AMQP_URL", f"amqp://user:{SECRET}@host:0/")
    assert main(["perf", "latency"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "bad AMQP_URL: port must be in 1..65535, not 0" in line
    assert SECRET not in line


def test_the_default_url_is_guest_on_localhost() -> None:
    args = build_parser().parse_args(["consume", "-u", "q"])
    assert args.uri is None
    assert DEFAULT_URL == "amqp://guest:guest@localhost:5672/"


def _refused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.mark.parametrize(
    "argv",
    [
        ["perf", "throughput", "-z", "1"],
        ["perf", "latency"],
        ["publish", "-u", "q", "hello"],
        ["consume", "-u", "q"],
    ],
    ids=["throughput", "latency", "publish", "consume"],
)
def test_an_unreachable_broker_is_one_error_line_and_exit_1(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    port = _refused_port()
    assert main([*argv, "--uri", f"amqp://guest:{SECRET}@127.0.0.1:{port}/"]) == 1
    out, err = capsys.readouterr()
    line = _one_error_line(err)
    assert f"cannot connect to amqp://127.0.0.1:{port}/" in line
    assert SECRET not in out + err


# -- helpers -----------------------------------------------------------------------------------


def test_percentile_is_nearest_rank() -> None:
    ordered = [float(i) for i in range(1, 101)]
    assert percentile(ordered, 0.5) == 50.0
    assert percentile(ordered, 0.9) == 90.0
    assert percentile(ordered, 0.99) == 99.0
    assert percentile(ordered, 1.0) == 100.0
    assert percentile([7.0], 0.5) == 7.0
    assert percentile([1.0, 2.0, 3.0], 0.5) == 2.0


def test_message_body_has_the_requested_size_and_lavinmqperfs_pattern() -> None:
    assert make_body(0) == b""
    assert make_body(3) == b"@AB"
    body = make_body(100)
    assert len(body) == 100
    assert body[27] == 64  # the pattern repeats every 27 bytes


def test_consume_prefetch_defaults_to_the_count_and_never_stalls_without_acks() -> None:
    assert default_prefetch(5, ack=False) == 5
    assert default_prefetch(5, ack=True) == 5
    assert default_prefetch(100_000, ack=True) == 65_535
    assert default_prefetch(None, ack=True) == 100
    assert default_prefetch(None, ack=False) == 0


async def test_read_lines_splits_chunks_into_lines_without_their_endings() -> None:
    chunks = [b"one\ntw", b"o\r\n", b"\nthr", b"ee", b""]

    def read(size: int) -> bytes:
        assert size > 0
        return chunks.pop(0)

    with trio.fail_after(10):
        lines = [line async for line in read_lines(read)]
    assert lines == [b"one", b"two", b"", b"three"]
    assert chunks == []


def _delivery(body: bytes, properties: BasicProperties) -> Delivery:
    return Delivery(body, properties, 7, True, "amq.topic", "a.b", cast(Any, None))


def test_delivery_json_has_the_text_body_routing_and_the_properties_that_are_set() -> None:
    properties = BasicProperties(
        content_type="text/plain", headers={"k": "v", "raw": b"\x00"}, delivery_mode=2
    )
    record = delivery_json(_delivery("héllo".encode(), properties))
    assert record == {
        "body": "héllo",
        "exchange": "amq.topic",
        "routing_key": "a.b",
        "redelivered": True,
        "delivery_tag": 7,
        "properties": {
            "content_type": "text/plain",
            "headers": {"k": "v", "raw": b"\x00"},
            "delivery_mode": 2,
        },
    }


def test_delivery_json_gives_a_binary_body_in_base64_and_omits_unset_properties() -> None:
    record = delivery_json(_delivery(b"\xff\xfe", BasicProperties()))
    assert record["body_base64"] == "//4="
    assert "body" not in record
    assert "properties" not in record
    json.dumps(record)  # JSON-able as it is
    # A property set to "" is set: shown, as the message carries it.
    record = delivery_json(_delivery(b"x", BasicProperties(correlation_id="")))
    assert record["properties"] == {"correlation_id": ""}
