"""One client in one scenario, in a process of its own: ``python suite_child.py SPEC_JSON``.

Prints exactly one JSON line (see ``suite_common.result_line``) on stdout: ``ok`` with the
figures, ``n/a`` when the client's library is missing or cannot do the scenario,
``timeout`` when it ran past its deadline, or ``error`` with the exception.  The parent
(``bench_suite.py``) kills it if it overruns anyway.
"""

from __future__ import annotations

import importlib
import sys
import traceback
from typing import Any

from suite_common import CLIENTS, Measurement, NotSupported, RunSpec, result_line

#: Third-party modules whose absence makes a cell "n/a" (anything else missing is an error).
PEER_MODULES = frozenset({"aio_pika", "aiormq", "pika", "amqp", "uvloop", "pyinstrument"})


def _profiled(run: Any, spec: RunSpec) -> Measurement:
    """Run under pyinstrument and write its text report to ``spec.pyinstrument``."""
    from pyinstrument import Profiler

    profiler = Profiler(interval=0.0005, async_mode="disabled")
    profiler.start()
    try:
        measurement: Measurement = run(spec)
    finally:
        profiler.stop()
        assert spec.pyinstrument is not None
        with open(spec.pyinstrument, "w") as out:
            out.write(profiler.output_text(unicode=True, color=False, show_all=False))
    return measurement


def main(argv: list[str]) -> int:
    spec = RunSpec.from_json(argv[1])
    info = CLIENTS[spec.client]
    if spec.scenario in info.unsupported:
        print(result_line(spec, "n/a", info.unsupported[spec.scenario]), flush=True)
        return 0
    try:
        module = importlib.import_module(info.module)
        measurement = _profiled(module.run, spec) if spec.pyinstrument else module.run(spec)
    except NotSupported as exc:
        print(result_line(spec, "n/a", str(exc)), flush=True)
    except BaseException as exc:
        missing = exc.name if isinstance(exc, ModuleNotFoundError) else None
        if missing and missing.partition(".")[0] in PEER_MODULES:
            print(result_line(spec, "n/a", f"not installed: {missing}"), flush=True)
            return 0
        if isinstance(exc, TimeoutError) or type(exc).__name__ == "TooSlowError":
            reason = f"gave up after its {spec.deadline:.0f} s deadline"
            print(result_line(spec, "timeout", reason), flush=True)
            return 0
        traceback.print_exc()
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:160]
        print(result_line(spec, "error", reason), flush=True)
        return 1
    else:
        print(result_line(spec, "ok", m=measurement), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
