"""``python -m trio_lavin.testing rabbitmq|lavinmq|cluster ...``: throwaway brokers.

python -m trio_lavin.testing rabbitmq exec -- python app.py   # AMQP_URL set for it
python -m trio_lavin.testing lavinmq serve                    # prints AMQP_URL until ^C
python -m trio_lavin.testing cluster                          # three nodes, until ^C
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

USAGE = "usage: python -m trio_lavin.testing {rabbitmq,lavinmq,cluster} ..."


def main(argv: Sequence[str] | None = None) -> int:
    """Run the named broker's command line with the rest of ``argv``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in ("rabbitmq", "lavinmq", "cluster"):
        print(USAGE, file=sys.stderr)
        return 2
    kind, rest = args[0], args[1:]
    if kind == "rabbitmq":
        from ._rabbitmq import main as rabbitmq_main

        return rabbitmq_main(rest)
    if kind == "lavinmq":
        from ._lavinmq import main as lavinmq_main

        return lavinmq_main(rest)
    from ._cluster import main as cluster_main

    return cluster_main(rest)


if __name__ == "__main__":
    sys.exit(main())
