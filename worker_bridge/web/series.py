"""A cron series as the console shows it: next fire times, late and missed flags.

Pure functions of the rows, ``now`` and the zone the schedule is read in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, tzinfo
from functools import lru_cache
from itertools import pairwise
from zoneinfo import ZoneInfo

from worker_bridge.cron import next_fire
from worker_bridge.job import JobState
from worker_bridge.store.reports import CronSeries

#: A live row not started this long after its due time is flagged late.
LATE_AFTER = 60.0
#: Fire times counted as missed per series, at most (a second-level schedule
#: left alone for a day would otherwise cost the page thousands of steps).
MISSED_CAP = 20


@dataclass(frozen=True, slots=True)
class SeriesLine:
    """One line of the cron series page."""

    series: CronSeries
    #: The schedule's next fire times after now, in the zone it is read in.
    next_fires: list[datetime]
    #: Seconds the live row is past its due time without starting, if over LATE_AFTER.
    late: float | None
    #: Fire times that passed without a run starting at them, in the rows shown
    #: and since the live row fell due (up to MISSED_CAP).
    missed: int

    @property
    def missed_capped(self) -> bool:
        """Whether the count stopped at MISSED_CAP."""
        return self.missed >= MISSED_CAP


#: ``next_fire(schedule, after, zone)``: a page passes one that remembers, since its
#: series mostly share a few schedules and fire times.
FireTime = Callable[[str, datetime, str | tzinfo], datetime]


def fire_times() -> FireTime:
    """A ``next_fire`` that remembers its answers: one per page of series."""
    return lru_cache(maxsize=4096)(next_fire)


def describe(
    series: CronSeries,
    *,
    now: datetime,
    zone: str | tzinfo,
    fires: int = 5,
    fire: FireTime = next_fire,
) -> SeriesLine:
    """The line of ``series`` at ``now``, its schedule read in ``zone``."""
    live = series.live
    schedule = live.cron_schedule
    assert schedule is not None, "a cron series' live row has a schedule"
    upcoming: list[datetime] = []
    moment = now
    for _ in range(fires):
        moment = fire(schedule, moment, zone)
        upcoming.append(moment)
    unstarted = live.status in (JobState.PENDING, JobState.DISPATCHED)
    waited = (now - live.due).total_seconds()
    late = waited if unstarted and waited > LATE_AFTER else None
    # Oldest first: each gap between two rows' due times should hold no fire
    # time; one that does is an occurrence that never ran at its time.
    dues = [row.due for row in reversed(series.history)] + [live.due]
    if unstarted:
        dues.append(now)
    missed = 0
    for earlier, later in pairwise(dues):
        missed += _fires_between(
            fire, schedule, (earlier, later), zone=zone, cap=MISSED_CAP - missed
        )
        if missed >= MISSED_CAP:
            break
    return SeriesLine(series, [fire.astimezone(_tz(zone)) for fire in upcoming], late, missed)


def _fires_between(
    fire: FireTime,
    schedule: str,
    window: tuple[datetime, datetime],
    *,
    zone: str | tzinfo,
    cap: int,
) -> int:
    """Fire times strictly inside ``window``, counting no further than ``cap``."""
    start, end = window
    count = 0
    moment = fire(schedule, start, zone)
    while moment < end and count < cap:
        count += 1
        moment = fire(schedule, moment, zone)
    return count


def _tz(zone: str | tzinfo) -> tzinfo:
    return ZoneInfo(zone) if isinstance(zone, str) else zone
