"""``python -m trio_lavin``: the command-line interface (see ``--help``)."""

import sys

from trio_lavin._cli import main

if __name__ == "__main__":
    sys.exit(main())
