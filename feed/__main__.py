"""``python -m feed``: the tickwire command line."""

import sys

from feed.cli import main

sys.exit(main())
