"""Every whole program in README.md and docs/ (a python block that calls ``trio.run``)
runs as written against the real brokers, with only the URL substituted.  A program that
cannot run here (it needs a cluster, or it is a test function for your own application)
says so in an HTML comment on the line before it (``<!-- not run: why -->``); every
python block, run or not, is also compiled by tests/test_docs.py."""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from trio_lavin.testing import Broker

ROOT = Path(__file__).resolve().parents[2]
DOC_URL = "amqp://guest:guest@localhost/"
BLOCK = re.compile(r"(?:^(<!-- not run: [^>]+ -->)\n)?^```python\n(.*?)^```", re.M | re.S)


@dataclass(frozen=True)
class Program:
    page: str
    number: int
    source: str
    not_run: str | None

    def __str__(self) -> str:
        return f"{self.page}#{self.number}"


def programs() -> list[Program]:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    found = []
    for page in pages:
        if page.name == "api.md":
            continue  # signatures
        for number, match in enumerate(BLOCK.finditer(page.read_text()), 1):
            marker, source = match.groups()
            if "trio.run(" in source:
                found.append(Program(page.name, number, source, marker))
    return found


PROGRAMS = programs()
RUNNABLE = [program for program in PROGRAMS if program.not_run is None]


def run(source: str, url: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "program.py"
    script.write_text(source.replace(DOC_URL, url))
    return subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.broker
@pytest.mark.parametrize("program", RUNNABLE, ids=str)
def test_the_program_runs_as_written(program: Program, broker: Broker, tmp_path: Path) -> None:
    assert DOC_URL in program.source, f"{program} must connect to {DOC_URL} to be run here"
    result = run(program.source, broker.url, tmp_path)
    assert result.returncode == 0, f"{program}:\n{result.stdout}{result.stderr}"


def test_programs_that_are_not_run_say_why_and_stay_few() -> None:
    reasons = {str(program): program.not_run for program in PROGRAMS if program.not_run}
    assert sorted(reasons) == ["clusters.md#1", "testing.md#6"], reasons
    assert len(RUNNABLE) >= 3


@pytest.mark.broker
def test_a_program_that_fails_fails_the_runner(broker: Broker, tmp_path: Path) -> None:
    broken = RUNNABLE[0].source.replace("trio.run(main)", "raise SystemExit(3)")
    assert run(broken, broker.url, tmp_path).returncode == 3
