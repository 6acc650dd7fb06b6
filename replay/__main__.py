"""``python -m replay``: the same ``convert`` and ``inspect`` commands as ``tickwire``.

    python -m replay convert CAPTURE_OR_TICKS... -o OUT.ticks.zst
    python -m replay inspect FILE...

See ``replay.cli``.
"""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
