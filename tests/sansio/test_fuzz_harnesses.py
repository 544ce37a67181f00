"""The fuzz harnesses' invariants, run on their seed corpus and on
hypothesis input (atheris explores further in ``nox -s fuzz``)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

FUZZ = Path(__file__).parents[2] / "fuzz"


def harness(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, FUZZ / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


frame_reader = harness("fuzz_frame_reader")
SEEDS = sorted((FUZZ / "corpus" / "frame_reader").iterdir())


@pytest.mark.parametrize("seed", SEEDS, ids=[s.name for s in SEEDS])
def test_frame_reader_invariant_holds_on_the_seed_corpus(seed: Path) -> None:
    frame_reader.check(seed.read_bytes())


def test_seed_corpus_is_not_empty() -> None:
    assert len(SEEDS) >= 5


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_frame_reader_invariant_holds_on_random_bytes(data: bytes) -> None:
    frame_reader.check(data)


@settings(max_examples=200)
@given(st.sampled_from(SEEDS), st.binary(max_size=20), st.integers(0, 200))
def test_frame_reader_invariant_holds_on_mutated_seeds(
    seed: Path, noise: bytes, position: int
) -> None:
    data = seed.read_bytes()
    position %= len(data) + 1
    frame_reader.check(data[:position] + noise + data[position:])
