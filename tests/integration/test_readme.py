"""README.md's example, run as written (only the URL substituted) against the real
brokers: it prints what its comments say, and again on a second run (it leaves nothing
behind in its durable queue that the next run would read first)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from trio_lavin.testing import Broker

pytestmark = pytest.mark.broker

README = Path(__file__).resolve().parents[2] / "README.md"
README_URL = "amqp://guest:guest@localhost/"


def example_block() -> str:
    text = README.read_text()
    section = text.split("\n## Example\n", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, flags=re.DOTALL)
    assert match is not None, "README.md's Example section has no python block"
    block = match.group(1)
    assert README_URL in block
    return block


def test_the_readme_example_prints_hello_then_fast_on_every_run(
    broker: Broker, tmp_path: Path
) -> None:
    script = tmp_path / "readme_example.py"
    script.write_text(example_block().replace(README_URL, broker.url))
    outputs = []
    for _ in range(2):
        result = subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=False
        )
        assert result.returncode == 0, result.stderr
        outputs.append(result.stdout.splitlines())
    assert outputs == [["b'hello'", "b'fast'"], ["b'hello'", "b'fast'"]]
