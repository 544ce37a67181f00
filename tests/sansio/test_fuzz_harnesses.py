"""The fuzz harnesses' invariants, run on their seed corpus and on
hypothesis input (atheris explores further in ``nox -s fuzz``), plus checks
that the harnesses reach the code they are meant to and can fail."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pamqp import commands

from trio_lavin._sansio import AMQPConnection, FrameReader, RemoteProtocolError, _framing

FUZZ = Path(__file__).parents[2] / "fuzz"


def harness(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, FUZZ / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


HARNESSES = {
    name: harness(f"fuzz_{name}") for name in ("frame_reader", "connection", "url", "properties")
}
SEEDS = {name: sorted((FUZZ / "corpus" / name).iterdir()) for name in HARNESSES}
ALL_SEEDS = [(name, seed) for name, seeds in SEEDS.items() for seed in seeds]


def test_every_harness_in_fuzz_is_checked_here() -> None:
    found = {path.stem.removeprefix("fuzz_") for path in FUZZ.glob("fuzz_*.py")}
    assert found == set(HARNESSES)


@pytest.mark.parametrize(
    ("name", "seed"), ALL_SEEDS, ids=[f"{name}/{seed.name}" for name, seed in ALL_SEEDS]
)
def test_invariant_holds_on_the_seed_corpus(name: str, seed: Path) -> None:
    HARNESSES[name].check(seed.read_bytes())


@pytest.mark.parametrize("name", sorted(HARNESSES))
def test_seed_corpus_has_several_inputs(name: str) -> None:
    assert len(SEEDS[name]) >= 5


@pytest.mark.parametrize("name", sorted(HARNESSES))
@settings(max_examples=150, deadline=None)
@given(data=st.binary(max_size=200))
def test_invariant_holds_on_random_bytes(name: str, data: bytes) -> None:
    HARNESSES[name].check(data)


@pytest.mark.parametrize("name", sorted(HARNESSES))
@settings(max_examples=150, deadline=None)
@given(choice=st.integers(0, 10**6), noise=st.binary(max_size=20), position=st.integers(0, 500))
def test_invariant_holds_on_mutated_seeds(
    name: str, choice: int, noise: bytes, position: int
) -> None:
    data = SEEDS[name][choice % len(SEEDS[name])].read_bytes()
    position %= len(data) + 1
    HARNESSES[name].check(data[:position] + noise + data[position:])


def _count_calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Count the fast decoders' and the whole-delivery shortcut's successes."""
    counts: dict[str, int] = {}

    def counted(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any) -> Any:
            result = function(*args)
            if result is not None:
                counts[name] = counts.get(name, 0) + 1
            return result

        return wrapper

    for method_id in (
        commands.Basic.Deliver.index,
        commands.Basic.Ack.index,
        commands.Basic.Nack.index,
    ):
        decoder = _framing._FAST_METHODS[method_id]
        monkeypatch.setitem(_framing._FAST_METHODS, method_id, counted(decoder.__name__, decoder))
    monkeypatch.setattr(
        FrameReader, "take_delivery", counted("take_delivery", FrameReader.take_delivery)
    )
    return counts


@pytest.mark.parametrize("name", ["frame_reader", "connection"])
def test_seed_corpus_reaches_the_fast_paths(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    counts = _count_calls(monkeypatch)
    for seed in SEEDS[name]:
        HARNESSES[name].check(seed.read_bytes())
    assert set(counts) == {"_decode_deliver", "_decode_ack", "_decode_nack", "take_delivery"}


def test_connection_harness_catches_a_missing_close(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail_silently(self: AMQPConnection, error: RemoteProtocolError) -> None:
        self._error = error

    monkeypatch.setattr(AMQPConnection, "_fail", fail_silently)
    data = (FUZZ / "corpus" / "connection" / "ack_without_confirm_mode").read_bytes()
    with pytest.raises(AssertionError, match="not a Close"):
        HARNESSES["connection"].check(data)


def test_url_harness_catches_a_password_in_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def leaky(url: str) -> None:
        raise ValueError(f"bad URL {url!r}")

    monkeypatch.setattr(HARNESSES["url"], "parse_url", leaky)
    with pytest.raises(AssertionError, match="shows the password"):
        HARNESSES["url"].check(b"amqp\0://\0user\0\0host")
