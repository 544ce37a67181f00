"""Every shell command in README.md and docs/ (the ``sh`` blocks) runs as written, in
the order a newcomer meets them: in a fresh clone of this repository (the README's
two commands are run in a checkout; its ``git clone`` makes another one), with a
fresh virtualenv's ``python3``, ``pip`` and ``nox`` first on PATH.  Only the clone's
origin (``<this repository>``) and the broker's URL are substituted.

Two kinds of command are not run here, and are checked instead: the nox sessions CI
itself runs (``nox -s lint typecheck tests``: they must be what .ci/run runs), and
``nox -s tests -- ARGS``, whose selection is collected (the suite cannot run itself
inside itself) and must be a part of the suite, neither empty nor all of it."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests._checkout import fresh_checkout
from trio_lavin.testing import Broker

ROOT = Path(__file__).resolve().parents[2]
DOC_URL = "amqp://guest:guest@localhost/"
SH_BLOCK = re.compile(r"^```sh\n(.*?)^```", re.M | re.S)
COMMAND_DEADLINE = 300  # seconds; pip and nox download what they install
NOX_SESSIONS = re.compile(r"nox -s ((?:[a-z]+ ?)+?)\s*(?:\|\||$|--)", re.M)

#: What a command must print, beyond exiting 0 (a regex on stdout + stderr).
PRINTS = {
    "nox -s demo": r"Session demo was successful",
    "python -m pytest examples/test_my_app_with_faults.py": r"\b2 passed\b",
}


@dataclass(frozen=True)
class Command:
    page: str
    text: str

    def __str__(self) -> str:
        return f"{self.page}: {self.text}"


def commands() -> list[Command]:
    """The commands of every ``sh`` block, README.md first, then docs/ in order; a
    line's ``# comment`` is dropped and ``a && b`` is two commands."""
    found = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for block in SH_BLOCK.findall(page.read_text()):
            for line in block.splitlines():
                line = re.sub(r"\s+#\s.*$", "", line).strip()
                found += [Command(page.name, part.strip()) for part in line.split(" && ")]
    return [command for command in found if command.text]


def ci_sessions() -> set[str]:
    """The nox sessions .ci/run runs."""
    text = (ROOT / ".ci" / "run").read_text()
    return {name for names in NOX_SESSIONS.findall(text) for name in names.split()}


def collected(args: list[str], cwd: Path) -> int:
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--collect-only", "-q", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=COMMAND_DEADLINE,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    match = re.search(r"^(\d+)(?:/\d+)? tests? collected", result.stdout, re.M)
    assert match, result.stdout
    return int(match.group(1))


@dataclass
class Newcomer:
    """A shell on a fresh machine, in a clone of this repository: its working
    directory and its PATH."""

    home: Path
    url: str
    cwd: Path = field(init=False)
    env: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        self.cwd, venv = fresh_checkout(self.home)
        self.env = {
            "PATH": f"{venv / 'bin'}:/usr/bin:/bin:/usr/sbin:/sbin",
            "HOME": os.environ.get("HOME", str(self.home)),
            "LANG": "C.UTF-8",
        }
        for name in ("AMQP_URL", "CI", "LAVINMQ"):  # how this machine finds its brokers
            if name in os.environ:
                self.env[name] = os.environ[name]

    def run(self, command: Command) -> str:
        text = command.text
        if text.startswith("cd "):
            self.cwd = (self.cwd / text.removeprefix("cd ")).resolve()
            assert self.cwd.is_dir(), command
            return ""
        if text.startswith("git clone "):
            self.cwd = self.home  # a clone of its own, beside the first
        shell = text.replace("<this repository>", str(ROOT)).replace(DOC_URL, self.url)
        result = subprocess.run(
            ["bash", "-o", "pipefail", "-c", shell],
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=COMMAND_DEADLINE,
            check=False,
        )
        output = result.stdout + result.stderr
        assert result.returncode == 0, f"{command} exited {result.returncode}:\n{output}"
        return output


def check_nox(command: Command, cwd: Path, sessions: set[str]) -> bool:
    """True if ``command`` is a nox session CI runs (checked, not run here)."""
    match = re.fullmatch(r"nox -s ([a-z ]+?)(?: -- (.+))?", command.text)
    if match is None or "demo" in match.group(1).split():
        return False
    names, args = match.group(1).split(), match.group(2)
    assert set(names) <= sessions, f"{command}: .ci/run runs {sorted(sessions)}"
    if args is not None:
        assert names == ["tests"], command
        part = collected(shlex.split(args), cwd)
        assert 0 < part < collected([], cwd), f"{command} selects {part} tests"
    return True


def test_the_docs_show_commands_and_ci_runs_nox_sessions() -> None:
    texts = [command.text for command in commands()]
    assert "nox -s demo" in texts
    assert "nox -s tests" in texts
    assert {"lint", "typecheck", "tests", "fuzz"} <= ci_sessions()


@pytest.mark.broker
def test_every_shell_command_in_the_docs_runs_as_written(
    rabbit_broker: Broker, tmp_path: Path
) -> None:
    newcomer = Newcomer(tmp_path, rabbit_broker.url)
    sessions = ci_sessions()
    ran = []
    for command in commands():
        if check_nox(command, newcomer.cwd, sessions):
            continue
        output = newcomer.run(command)
        for prefix, expected in PRINTS.items():
            if command.text.endswith(prefix):
                assert re.search(expected, output), f"{command} printed:\n{output}"
        ran.append(command.text)
    assert any(text.startswith("git clone") for text in ran)
    assert "nox -s demo" in ran
