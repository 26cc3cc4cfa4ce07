"""The overview's chart of the last hour, laid out as SVG shapes: a pure function.

One bar a minute (succeeded, failed and cancelled stacked) on the left axis,
the mean and the longest start lag of that minute as two lines on the right
one. The page draws it with inline SVG: no script, no chart library.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from worker_bridge.store.minutes import MinuteCounts, merge

WIDTH = 720
HEIGHT = 160
#: Room under the plot for the axis labels.
MARGIN = 18


@dataclass(frozen=True, slots=True)
class Bar:
    """One minute's stacked bar: (y, height) of each part, top to bottom."""

    x: float
    width: float
    minute: datetime
    counts: MinuteCounts
    succeeded: tuple[float, float]
    failed: tuple[float, float]
    cancelled: tuple[float, float]
    #: Where the start lag's mean and longest are drawn (a dot each; None: nothing ran).
    lag_mean_y: float | None
    lag_max_y: float | None


@dataclass(frozen=True, slots=True)
class Chart:
    """The shapes and the scales of the chart."""

    bars: list[Bar]
    #: SVG polyline points of the mean and the longest start lag.
    lag_mean: str
    lag_max: str
    #: What the top of each axis stands for.
    top_count: int
    top_lag: float
    #: Totals over the window.
    finished: int
    succeeded: int
    failed: int
    cancelled: int
    start: datetime
    end: datetime


def last_hour(counts: Sequence[MinuteCounts], *, now: datetime, minutes: int = 60) -> Chart:
    """The chart of the ``minutes`` before ``now`` from the counts by minute and type."""
    end = now.replace(second=0, microsecond=0) + timedelta(minutes=1)
    start = end - timedelta(minutes=minutes)
    # All types together, one entry a minute (empty minutes included).
    by_minute = {
        item.minute: item
        for item in merge(
            MinuteCounts(c.minute, "", c.succeeded, c.failed, c.cancelled, c.ran, c.lag_sum,
                         c.lag_max)
            for c in counts if start <= c.minute < end
        )
    }  # fmt: skip
    series = [
        by_minute.get(start + timedelta(minutes=i), MinuteCounts(start + timedelta(minutes=i), ""))
        for i in range(minutes)
    ]
    top_count = max((c.finished for c in series), default=0) or 1
    top_lag = max((c.lag_max for c in series), default=0.0) or 1.0
    slot = WIDTH / minutes
    plot = HEIGHT - MARGIN
    bars = []
    mean_points = []
    max_points = []
    for i, c in enumerate(series):
        y = float(plot)
        parts = []
        for value in (c.cancelled, c.failed, c.succeeded):  # stacked from the bottom
            height = plot * value / top_count
            y -= height
            parts.append((round(y, 1), round(height, 1)))
        cancelled, failed, succeeded = parts
        mean_y = max_y = None
        x = round(i * slot + slot * 0.4, 1)
        if c.lag_mean is not None:
            mean_y = round(plot - plot * c.lag_mean / top_lag, 1)
            max_y = round(plot - plot * c.lag_max / top_lag, 1)
            mean_points.append(f"{x},{mean_y}")
            max_points.append(f"{x},{max_y}")
        bars.append(Bar(round(i * slot, 1), round(slot * 0.8, 1), c.minute, c, succeeded, failed,
                        cancelled, mean_y, max_y))  # fmt: skip
    return Chart(
        bars=bars, lag_mean=" ".join(mean_points), lag_max=" ".join(max_points),
        top_count=top_count, top_lag=top_lag,
        finished=sum(c.finished for c in series), succeeded=sum(c.succeeded for c in series),
        failed=sum(c.failed for c in series), cancelled=sum(c.cancelled for c in series),
        start=start, end=end,
    )  # fmt: skip
