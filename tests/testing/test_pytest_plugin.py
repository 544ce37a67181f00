"""The pytest plugin as a user's project sees it: the documented example test file,
copied into a directory of its own (no conftest, nothing of this repository on the
import path, no ``AMQP_URL``), passes against the throwaway RabbitMQ the plugin starts."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from trio_lavin.testing import Broker
from trio_lavin.testing.pytest_plugin import broker_kind

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "test_with_the_pytest_plugin.py"


def test_the_plugin_example_passes_in_a_project_of_its_own(tmp_path: Path) -> None:
    shutil.copy(EXAMPLE, tmp_path / EXAMPLE.name)
    environment = {
        name: value
        for name, value in os.environ.items()
        if name not in ("AMQP_URL", "PYTHONPATH") and not name.startswith("PYTEST_")
    }
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", EXAMPLE.name],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "4 passed" in output.splitlines()[-1], output
    assert not (tmp_path / "conftest.py").exists()


async def test_the_plugin_names_the_broker_at_amqp_url_by_its_product(broker: Broker) -> None:
    """With ``AMQP_URL`` set, ``lavin_broker.kind`` is the product the broker
    names, not always "rabbitmq" (regression)."""
    assert await broker_kind(broker.url) == broker.kind
