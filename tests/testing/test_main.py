"""``python -m trio_lavin.testing``: each broker's --help answers at once, without
starting anything; bad arguments fail with a message naming them; ``exec`` and
``serve``, as the docs show them, start a node a client reaches."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from trio_lavin.testing import Broker


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trio_lavin.testing", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize("kind", ["rabbitmq", "lavinmq", "cluster"])
def test_help_prints_the_usage_and_starts_no_broker(kind: str) -> None:
    """Regression: ``cluster --help`` ignored its arguments and booted a cluster."""
    done = run(kind, "--help")
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.startswith(f"usage: python -m trio_lavin.testing {kind}")
    assert "amqp://" not in done.stdout


def test_a_cluster_of_one_node_is_refused_naming_the_size() -> None:
    done = run("cluster", "--size", "1")
    assert done.returncode == 2
    assert "--size must be at least 2, not 1" in done.stderr


def test_no_broker_named_prints_the_usage() -> None:
    done = run()
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "usage: python -m trio_lavin.testing {rabbitmq,lavinmq,cluster} ..."
    )


#: What ``exec`` runs: it connects to the AMQP_URL it was given and prints the broker.
WHO_ANSWERS = """\
import os, trio, trio_lavin as lavin
async def main():
    async with lavin.open_connection(os.environ["AMQP_URL"]) as connection:
        print(connection.server_properties["product"].lower(), os.environ["AMQP_URL"])
trio.run(main)
"""


WHO = (sys.executable, "-c")


def exec_prints(kind: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-m", "trio_lavin.testing", kind, "exec", "--", *WHO, WHO_ANSWERS],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_rabbitmq_exec_runs_the_command_against_a_node_of_its_own(
    rabbit_broker: Broker,
) -> None:
    product, url = exec_prints("rabbitmq")
    assert product == "rabbitmq"
    assert url.startswith("amqp://guest:guest@127.0.0.1:")
    assert url != rabbit_broker.url  # not the session's


def test_lavinmq_exec_runs_the_command_against_a_node_of_its_own(
    lavinmq_broker: Broker,
) -> None:
    product, url = exec_prints("lavinmq")
    assert product == "lavinmq"
    assert url.startswith("amqp://guest:guest@127.0.0.1:")
    assert url != lavinmq_broker.url


def test_lavinmq_serve_prints_a_url_that_answers_until_interrupted(
    lavinmq_broker: Broker,
) -> None:
    with subprocess.Popen(
        [sys.executable, "-m", "trio_lavin.testing", "lavinmq", "serve"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        try:
            assert process.stdout is not None
            line = process.stdout.readline()  # the node is up once it prints
            assert line.startswith("AMQP_URL=amqp://"), line
            env = dict(os.environ, AMQP_URL=line.strip().removeprefix("AMQP_URL="))
            done = subprocess.run(
                [sys.executable, "-c", WHO_ANSWERS],
                env=env,
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            product, url = done.stdout.split()
            assert (product, url != lavinmq_broker.url) == ("lavinmq", True), done.stderr
            process.send_signal(signal.SIGINT)
            assert process.wait(30) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
