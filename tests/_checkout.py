"""A fresh git clone of this checkout and a fresh virtualenv beside it: what a
newcomer's machine starts from (tests that run the docs' commands, or install
the checkout with pip, build on it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def fresh_checkout(home: Path) -> tuple[Path, Path]:
    """Clone this repository into ``home/checkout`` and make an empty virtualenv
    in ``home/venv``; return both paths."""
    assert (ROOT / ".git").exists(), "a fresh checkout is a git clone of this one"
    checkout, venv = home / "checkout", home / "venv"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(checkout)], check=True, timeout=120)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    return checkout, venv
