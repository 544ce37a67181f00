"""``python -m trio_lavin.testing``: each broker's --help answers at once, without
starting anything; bad arguments fail with a message naming them."""

from __future__ import annotations

import subprocess
import sys

import pytest


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
