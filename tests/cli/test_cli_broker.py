"""The command line against the real broker, each command run as ``python -m trio_lavin`` in
a subprocess (with a deadline)."""

from __future__ import annotations

import json
import secrets
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

import trio_lavin as lavin

pytestmark = pytest.mark.broker

#: Seconds one command may take, startup included (the machine may be loaded).
COMMAND_DEADLINE = 60.0


async def run_cli(*args: str, stdin: bytes = b"") -> tuple[int, str, str]:
    """Run ``python -m trio_lavin ARGS``; return (exit code, stdout, stderr)."""
    with trio.fail_after(COMMAND_DEADLINE):
        result = await trio.run_process(
            [sys.executable, "-m", "trio_lavin", *args],
            stdin=stdin,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    return result.returncode, result.stdout.decode(), result.stderr.decode()


@pytest.fixture
async def queue(amqp_url: str) -> AsyncIterator[str]:
    """A fresh queue name; the queue is deleted after the test."""
    name = f"cli-test-{secrets.token_hex(4)}"
    yield name
    with trio.fail_after(30):
        async with lavin.open_connection(amqp_url) as connection:
            channel = await connection.channel()
            await channel.queue_delete(name)


def _json_line(out: str) -> dict[str, Any]:
    lines = out.splitlines()
    assert len(lines) == 1, f"expected one JSON line on stdout, got {lines!r}"
    value = json.loads(lines[0])
    assert isinstance(value, dict)
    return value


async def test_perf_throughput_json_reports_publish_and_consume_rates(
    amqp_url: str, queue: str
) -> None:
    code, out, err = await run_cli(
        "perf", "throughput", "--json", "-z", "2", "-u", queue, "--uri", amqp_url
    )
    assert code == 0, err
    summary = _json_line(out)
    assert summary["avg_pub_rate"] > 0
    assert summary["avg_consume_rate"] > 0
    assert summary["published"] > 0
    assert summary["consumed"] > 0
    assert 1.9 < summary["elapsed_seconds"] < 3.0
    assert summary["avg_pub_rate"] == pytest.approx(
        summary["published"] / summary["elapsed_seconds"], rel=0.01
    )
    assert summary["interrupted"] is False
    assert (summary["publishers"], summary["consumers"], summary["size"]) == (1, 1, 16)
    assert "Publish rate: " in err  # the live lines go to stderr


async def test_perf_throughput_without_a_queue_uses_its_own_and_deletes_it(amqp_url: str) -> None:
    """Regression: it used the shared durable queue perf-test and left it behind (on a
    shared broker it consumed other people's messages)."""
    code, out, err = await run_cli(
        "perf", "throughput", "-j", "-q", "-C", "500", "-c", "100", "--uri", amqp_url
    )
    assert code == 0, err
    summary = _json_line(out)
    assert (summary["published"], summary["consumed"]) == (500, 500)
    assert str(summary["queue"]).startswith("perf-test-")
    assert summary["queue_deleted"] is True
    async with lavin.open_connection(amqp_url) as connection:
        channel = await connection.channel()
        with pytest.raises(lavin.ChannelClosed) as refused:
            await channel.queue_declare(str(summary["queue"]), passive=True)
    assert refused.value.reply_code == 404


async def test_perf_throughput_with_a_message_count_and_confirms_stops_by_itself(
    amqp_url: str, queue: str
) -> None:
    code, out, err = await run_cli(
        "perf", "throughput", "-j", "-q", "-x", "2", "-y", "2", "-C", "3000", "-c", "100",
        "-a", "50", "-P", "200", "-s", "100", "-V", "-u", queue, "--uri", amqp_url,
    )  # fmt: skip
    assert code == 0, err
    assert err == ""  # -q: no live lines
    summary = _json_line(out)
    assert summary["published"] == 3000
    assert summary["confirmed"] == 3000
    assert summary["nacked"] == 0
    assert summary["consumed"] == 3000
    assert (summary["publishers"], summary["consumers"], summary["size"]) == (2, 2, 100)


async def test_perf_throughput_publishers_finish_after_the_consumers_stopped(
    amqp_url: str, queue: str
) -> None:
    # Publishers pause while consumers lag 10 000 behind; consumers that are done (-D)
    # must not keep them waiting.
    code, out, err = await run_cli(
        "perf", "throughput", "-j", "-q", "-C", "12000", "-D", "500", "-u", queue,
        "--uri", amqp_url,
    )  # fmt: skip
    assert code == 0, err
    summary = _json_line(out)
    assert summary["published"] == 12000
    assert summary["consumed"] == 500


async def test_perf_throughput_rate_limit_paces_the_publisher(amqp_url: str, queue: str) -> None:
    code, out, err = await run_cli(
        "perf", "throughput", "-j", "-q", "-y", "0", "-r", "400", "-C", "200", "-u", queue,
        "--uri", amqp_url,
    )  # fmt: skip
    assert code == 0, err
    summary = _json_line(out)
    assert summary["published"] == 200
    # 200 messages at 400/s cannot take less than half a second (the first is due at once).
    assert summary["elapsed_seconds"] >= 0.49
    assert summary["avg_pub_rate"] <= 410


async def test_perf_latency_with_a_duration_runs_that_long(amqp_url: str) -> None:
    code, out, err = await run_cli(
        "perf", "latency", "-j", "-q", "-z", "0.5", "--warmup", "0", "--uri", amqp_url
    )
    assert code == 0, err
    summary = _json_line(out)
    assert summary["roundtrips"] > 0
    assert 0.5 <= summary["elapsed_seconds"] < 2.0


async def test_perf_latency_reports_ordered_percentiles(amqp_url: str) -> None:
    code, out, err = await run_cli(
        "perf", "latency", "-j", "-C", "300", "--warmup", "20", "--uri", amqp_url
    )
    assert code == 0, err
    summary = _json_line(out)
    assert summary["roundtrips"] == 300
    figures = [summary[key] for key in ("min_ms", "p50_ms", "p90_ms", "p99_ms", "max_ms")]
    assert figures[0] > 0
    assert figures == sorted(figures)
    assert summary["min_ms"] <= summary["mean_ms"] <= summary["max_ms"]


async def test_perf_latency_human_summary_names_each_percentile(amqp_url: str) -> None:
    code, out, err = await run_cli("perf", "latency", "-C", "50", "--uri", amqp_url)
    assert code == 0, err
    assert out.startswith("Summary:\nRound trips: 50 in ")
    for name in ("min", "p50", "p90", "p99", "max"):
        assert f" {name} " in out


async def test_published_arguments_and_stdin_lines_are_consumed_in_order(
    amqp_url: str, queue: str
) -> None:
    code, out, err = await run_cli(
        "publish", "-u", queue, "--declare", "first", "second one", "--uri", amqp_url
    )
    assert (code, out, err) == (0, "", "")
    code, out, err = await run_cli(
        "publish", "-u", queue, "--uri", amqp_url, stdin=b"third\r\n\nfifth\nsixth"
    )
    assert (code, out, err) == (0, "", "")
    code, out, err = await run_cli(
        "consume", "-u", queue, "--count", "6", "--ack", "--uri", amqp_url
    )
    assert code == 0, err
    assert out == "first\nsecond one\nthird\n\nfifth\nsixth\n"
    # All six were acked: the queue is empty now.
    code, out, err = await run_cli(
        "consume", "-u", queue, "--count", "1", "--timeout", "0.5", "--uri", amqp_url
    )
    assert (code, out) == (1, "")
    assert (
        err == f"trio-lavin: error: received 0 of 1 messages from queue '{queue}' within 0.5 s\n"
    )


async def test_consume_without_ack_leaves_the_messages_in_the_queue(
    amqp_url: str, queue: str
) -> None:
    code, _, err = await run_cli("publish", "-u", queue, "--declare", "a", "b", "--uri", amqp_url)
    assert code == 0, err
    code, out, err = await run_cli("consume", "-u", queue, "-n", "2", "--uri", amqp_url)
    assert (code, out) == (0, "a\nb\n"), err
    code, out, err = await run_cli("consume", "-u", queue, "-n", "2", "--json", "--uri", amqp_url)
    assert code == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    assert [record["body"] for record in records] == ["a", "b"]
    assert [record["redelivered"] for record in records] == [True, True]
    assert {record["routing_key"] for record in records} == {queue}


async def test_publish_to_a_queue_that_does_not_exist_fails_with_no_route(amqp_url: str) -> None:
    missing = f"cli-missing-{secrets.token_hex(4)}"
    code, out, err = await run_cli("publish", "-u", missing, "hello", "--uri", amqp_url)
    assert (code, out) == (1, "")
    assert err.count("\n") == 1
    assert err.startswith("trio-lavin: error: message 1 was not accepted: ")
    assert "312 NO_ROUTE" in err


async def test_consume_from_a_missing_queue_fails_with_not_found(amqp_url: str) -> None:
    missing = f"cli-missing-{secrets.token_hex(4)}"
    code, out, err = await run_cli("consume", "-u", missing, "--uri", amqp_url)
    assert (code, out) == (1, "")
    assert err.startswith("trio-lavin: error: 404 NOT_FOUND")
    assert missing in err
    assert err.count("\n") == 1


async def test_bad_credentials_fail_in_one_line_without_the_password(amqp_url: str) -> None:
    params = lavin.parse_url(amqp_url)
    password = "wrong-" + secrets.token_hex(8)
    url = f"amqp://{params.username}:{password}@{params.host}:{params.port}/"
    code, out, err = await run_cli("perf", "latency", "--uri", url)
    assert (code, out) == (1, "")
    assert err.count("\n") == 1
    assert err.startswith("trio-lavin: error: ")
    assert "403" in err or "ACCESS_REFUSED" in err or "cannot connect" in err
    assert password not in err


async def test_ctrl_c_ends_perf_throughput_with_its_summary_and_exit_130(
    amqp_url: str, queue: str
) -> None:
    command = [sys.executable, "-m", "trio_lavin", "perf", "throughput", "-j", "-u", queue]
    process = await trio.lowlevel.open_process(
        [*command, "--uri", amqp_url], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert process.stdout is not None
    assert process.stderr is not None
    try:
        with trio.fail_after(COMMAND_DEADLINE):
            err = b""
            while b"Publish rate: " not in err:  # measuring has started
                chunk = await process.stderr.receive_some()
                assert chunk, f"exited before measuring: {err!r}"
                err += chunk
            process.send_signal(signal.SIGINT)
            out = b""
            while chunk := await process.stdout.receive_some():
                out += chunk
            code = await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
        with trio.CancelScope(shield=True):
            await process.wait()
            await process.stdout.aclose()
            await process.stderr.aclose()
    assert code == 130
    summary = _json_line(out.decode())
    assert summary["interrupted"] is True
    assert summary["published"] > 0
    assert summary["elapsed_seconds"] >= 1.0


async def test_ctrl_c_ends_consume_promptly_with_exit_130_and_unacked_messages_kept(
    amqp_url: str, queue: str
) -> None:
    code, _, err = await run_cli("publish", "-u", queue, "--declare", "kept", "--uri", amqp_url)
    assert code == 0, err
    command = [sys.executable, "-m", "trio_lavin", "consume", "-u", queue, "--uri", amqp_url]
    process = await trio.lowlevel.open_process(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert process.stdout is not None
    assert process.stderr is not None
    try:
        with trio.fail_after(COMMAND_DEADLINE):
            out = b""
            while b"\n" not in out:  # the message was printed: it is consuming
                chunk = await process.stdout.receive_some()
                assert chunk, f"exited before printing: {out!r}"
                out += chunk
            process.send_signal(signal.SIGINT)
            interrupted = trio.current_time()
            code = await process.wait()
            # Well under the connection's 5 s close timeout: the close was graceful.
            assert trio.current_time() - interrupted < 4.0
            err_bytes = await process.stderr.receive_some()
    finally:
        if process.returncode is None:
            process.kill()
        with trio.CancelScope(shield=True):
            await process.wait()
            await process.stdout.aclose()
            await process.stderr.aclose()
    assert code == 130
    assert out == b"kept\n"
    assert err_bytes == b""
    code, out_text, err = await run_cli("consume", "-u", queue, "-n", "1", "--uri", amqp_url)
    assert (code, out_text) == (0, "kept\n"), err


def help_examples() -> list[str]:
    """The example command lines of every ``--help`` epilog, in order."""
    from trio_lavin._cli._main import _CONSUME_EPILOG, _PUBLISH_EPILOG

    lines = [*_PUBLISH_EPILOG.splitlines(), *_CONSUME_EPILOG.splitlines()]
    return [line.strip() for line in lines if line.startswith("  ") and "trio-lavin " in line]


async def test_every_example_in_the_help_runs_as_written(amqp_url: str) -> None:
    examples = help_examples()
    assert len(examples) == 5
    try:
        for example in examples:
            shell = example.replace("trio-lavin ", f"{sys.executable} -m trio_lavin ")
            with trio.fail_after(COMMAND_DEADLINE):
                result = await trio.run_process(
                    ["bash", "-o", "pipefail", "-c", shell],
                    env={"AMQP_URL": amqp_url, "PATH": "/usr/bin:/bin"},
                    capture_stdout=True,
                    capture_stderr=True,
                    check=False,
                )
            assert result.returncode == 0, (example, result.stderr.decode())
            if "consume -u orders" in example:
                assert result.stdout.decode().splitlines() == ["first order", "second order"]
    finally:
        async with lavin.open_connection(amqp_url) as connection:
            channel = await connection.channel()
            for queue in ("orders", "numbers"):
                await channel.queue_delete(queue)
