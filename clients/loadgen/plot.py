"""``--plot OUT.png``: a run (or a comparison) as a picture.

Left, the latency distribution the way HdrHistogram draws it: ``receive - ts_recv``
against the percentile, on a scale where each step to the right halves the distance to
100% (50%, 90%, 99%, 99.9%, ...), so that the tail is as readable as the median. Right,
the messages per second received over the window, which shows stalls and a server
falling behind. With ``--compare`` every server is one line on both.

matplotlib (the ``bench`` extra) draws it, without a screen (the Agg backend).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from clients.loadgen.errors import LoadError
from clients.loadgen.report import Report
from clients.loadgen.worker import THROUGHPUT_STEP_S

TICKS = (50.0, 90.0, 99.0, 99.9, 99.99, 99.999)


def _x(percentile: float) -> float:
    """Position of a percentile: ``log10(1 / (1 - p))``, so 90% is 1, 99% is 2..."""
    return math.log10(100.0 / max(100.0 - percentile, 1e-6))


def plot(runs: Sequence[tuple[str, Report]], path: str) -> None:
    """Draw ``runs`` (name, report) into the PNG ``path``. Raises ``LoadError`` when
    matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot
    except ImportError:
        raise LoadError("--plot needs matplotlib: pip install -e '.[bench]'") from None
    figure, (left, right) = pyplot.subplots(1, 2, figsize=(13, 5))
    for name, report in runs:
        curve = report.latency.curve
        if curve:
            left.plot([_x(p) for p, _ in curve], [ms for _, ms in curve], label=name)
        rates = report.throughput
        right.plot([THROUGHPUT_STEP_S * (i + 1) for i in range(len(rates))], rates,
                   label=name)
    left.set_xticks([_x(p) for p in TICKS], [f"{p:g}%" for p in TICKS])
    left.set_yscale("log")
    left.set_xlabel("percentile")
    left.set_ylabel("receive - ts_recv, ms (log scale)")
    left.set_title("latency by percentile")
    left.grid(True, which="both", alpha=0.3)
    right.set_xlabel("seconds into the window")
    right.set_ylabel("messages received per second")
    right.set_title("throughput")
    right.set_ylim(bottom=0)
    right.grid(True, alpha=0.3)
    first = runs[0][1]
    figure.suptitle(f"{first.connections} connections, {first.channel}"
                    + (f" depth {first.depth}" if first.depth else "")
                    + f", compression {'offered' if first.compress else 'off'}, "
                      f"{first.date}")
    for axes in (left, right):
        axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)
