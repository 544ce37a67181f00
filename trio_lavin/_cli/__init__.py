"""The command-line interface, ``python -m trio_lavin`` (or ``trio-lavin``).

Commands: ``perf throughput``, ``perf latency``, ``publish`` and ``consume``; each has
``--help``.  Built on the public API only (``open_connection`` and ``Channel``).
"""

from ._main import main as main

__all__ = ["main"]
