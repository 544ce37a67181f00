"""The pytest plugin as a user's project sees it: the documented example test file,
copied into a directory of its own (no conftest, nothing of this repository on the
import path, no ``AMQP_URL``), passes against the throwaway RabbitMQ the plugin starts;
also with nothing but this checkout (and the ``testing`` extra: pytest, pytest-trio,
hypothesis) pip-installed in a fresh virtualenv."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests._checkout import fresh_checkout
from trio_lavin.testing import Broker
from trio_lavin.testing.pytest_plugin import broker_kind

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "test_with_the_pytest_plugin.py"


def run_the_example_in(project: Path, python: str | Path) -> None:
    """Run the plugin example as the only test file of ``project``, with ``python``."""
    project.mkdir(exist_ok=True)
    shutil.copy(EXAMPLE, project / EXAMPLE.name)
    environment = {
        name: value
        for name, value in os.environ.items()
        if name not in ("AMQP_URL", "PYTHONPATH", "VIRTUAL_ENV") and not name.startswith("PYTEST_")
    }
    result = subprocess.run(
        [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", EXAMPLE.name],
        cwd=project,
        env=environment,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "4 passed" in output.splitlines()[-1], output
    assert not (project / "conftest.py").exists()


def test_the_plugin_example_passes_in_a_project_of_its_own(tmp_path: Path) -> None:
    run_the_example_in(tmp_path / "project", sys.executable)


def test_the_plugin_example_passes_with_only_the_checkout_installed(tmp_path: Path) -> None:
    checkout, venv = fresh_checkout(tmp_path)
    python = venv / "bin" / "python"
    install = [str(python), "-m", "pip", "install", "-q", f"{checkout}[testing]"]
    subprocess.run(install, check=True, timeout=300, capture_output=True)
    run_the_example_in(tmp_path / "project", python)


async def test_the_plugin_names_the_broker_at_amqp_url_by_its_product(broker: Broker) -> None:
    """With ``AMQP_URL`` set, ``lavin_broker.kind`` is the product the broker
    names, not always "rabbitmq" (regression)."""
    assert await broker_kind(broker.url) == broker.kind
