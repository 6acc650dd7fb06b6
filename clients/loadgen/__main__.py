"""``python -m clients.loadgen``: see ``clients.loadgen.cli``."""

import sys

from clients.loadgen.cli import main

if __name__ == "__main__":
    sys.exit(main())
