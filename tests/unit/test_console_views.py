"""The console's pure views: a cron series line (next fire times, late, missed) and the chart."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from worker_bridge.job import JobState
from worker_bridge.store.minutes import MinuteCounts
from worker_bridge.store.reports import CronSeries, JobSummary
from worker_bridge.web import chart, series

NOW = datetime(2026, 3, 29, 0, 58, 30, tzinfo=UTC)


def summary(job_id: int, due: datetime, status: JobState, schedule: str = "*/5 * * * *") -> JobSummary:
    return JobSummary(
        id=job_id, type="report", user_id=1, status=status, due=due, started=None,
        finished=None, attempts=0, cron_schedule=schedule, rescheduled_from_job=None,
    )  # fmt: skip


def test_a_series_on_time_is_neither_late_nor_missed() -> None:
    live = summary(3, NOW + timedelta(seconds=90), JobState.PENDING)  # 01:00
    history = [
        summary(2, NOW - timedelta(seconds=210), JobState.SUCCEEDED),  # 00:55
        summary(1, NOW - timedelta(seconds=510), JobState.FAILED),  # 00:50
    ]
    line = series.describe(CronSeries(live, history), now=NOW, zone="UTC")
    assert line.late is None and line.missed == 0
    assert [f.strftime("%H:%M") for f in line.next_fires] == ["01:00", "01:05", "01:10", "01:15",
                                                               "01:20"]  # fmt: skip


def test_next_fire_times_are_read_and_shown_in_the_configured_zone() -> None:
    # 2026-03-29 is when Berlin moves from UTC+1 to UTC+2 at 01:00 UTC.
    live = summary(1, NOW + timedelta(seconds=90), JobState.PENDING, schedule="0 * * * *")
    line = series.describe(CronSeries(live, []), now=NOW, zone="Europe/Berlin")
    berlin = ZoneInfo("Europe/Berlin")
    assert all(fire.tzinfo == berlin for fire in line.next_fires)
    assert [f.strftime("%H:%M") for f in line.next_fires] == ["03:00", "04:00", "05:00", "06:00",
                                                               "07:00"]  # fmt: skip


def test_a_row_waiting_past_its_fire_times_is_late_and_has_missed_them() -> None:
    live = summary(2, NOW - timedelta(minutes=13, seconds=30), JobState.PENDING)  # 00:45
    line = series.describe(CronSeries(live, []), now=NOW, zone="UTC")
    assert line.late is not None and abs(line.late - 810) < 1
    assert line.missed == 2  # 00:50 and 00:55 passed while it waited


def test_gaps_in_the_history_count_as_missed_and_the_count_is_capped() -> None:
    live = summary(3, NOW + timedelta(seconds=90), JobState.PENDING)  # 01:00
    history = [summary(2, NOW - timedelta(minutes=28, seconds=30), JobState.SUCCEEDED)]  # 00:30
    line = series.describe(CronSeries(live, history), now=NOW, zone="UTC")
    assert line.missed == 5 and line.late is None  # 00:35 ... 00:55
    every_second = summary(4, NOW - timedelta(hours=1), JobState.PENDING, schedule="* * * * * *")
    capped = series.describe(CronSeries(every_second, []), now=NOW, zone="UTC")
    assert capped.missed == series.MISSED_CAP and capped.missed_capped


def test_a_running_row_is_never_late() -> None:
    live = summary(2, NOW - timedelta(minutes=3), JobState.RUNNING)
    assert series.describe(CronSeries(live, []), now=NOW, zone="UTC").late is None


def test_the_chart_sums_types_per_minute_over_the_last_hour() -> None:
    minute = NOW.replace(second=0) - timedelta(minutes=2)
    counts = [
        MinuteCounts(minute, "a", succeeded=3, failed=1, ran=4, lag_sum=4.0, lag_max=2.0),
        MinuteCounts(minute, "b", succeeded=1, cancelled=2, ran=1, lag_sum=1.0, lag_max=1.0),
        MinuteCounts(minute - timedelta(hours=2), "a", succeeded=50),  # outside the window
    ]
    drawn = chart.last_hour(counts, now=NOW)
    assert len(drawn.bars) == 60
    assert (drawn.finished, drawn.succeeded, drawn.failed, drawn.cancelled) == (7, 4, 1, 2)
    assert drawn.top_count == 7 and drawn.top_lag == 2.0
    full = next(bar for bar in drawn.bars if bar.minute == minute)
    assert full.counts.lag_mean == 1.0
    # The stacked parts fill the plot exactly: 7 of 7 at the top of the axis.
    heights = full.succeeded[1] + full.failed[1] + full.cancelled[1]
    assert abs(heights - (chart.HEIGHT - chart.MARGIN)) < 0.5
    assert full.succeeded[0] == 0.0
    assert drawn.lag_mean.count(",") == 1  # one minute with runs: one point a line
    empty = chart.last_hour([], now=NOW)
    assert empty.finished == 0 and empty.lag_mean == ""


def test_a_page_of_series_shares_its_fire_times_and_reads_the_same() -> None:
    lines = [
        CronSeries(summary(n, NOW - timedelta(minutes=13, seconds=30), JobState.PENDING), [
            summary(100 + n, NOW - timedelta(minutes=28, seconds=30), JobState.SUCCEEDED)
        ])
        for n in range(20)
    ]  # fmt: skip
    fire = series.fire_times()
    shared = [series.describe(line, now=NOW, zone="UTC", fire=fire) for line in lines]
    alone = [series.describe(line, now=NOW, zone="UTC") for line in lines]
    assert shared == alone
    assert fire.cache_info().misses < fire.cache_info().hits  # type: ignore[attr-defined]
