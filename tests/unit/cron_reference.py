"""A slow, obviously-correct reference for ``worker_bridge.cron``, used only by tests.

Written independently of the module on purpose: its own field parser, and
instead of asking croniter for wall-clock candidates it walks REAL time forward
(whole UTC seconds), reads the zone's wall clock at every step and tests it
against plain sets of allowed values.  Steps skip ahead while a month, day, hour
or minute cannot match, and every UTC-offset change crossed by a step is located
exactly (bisection) so no instant after it goes unchecked.

It encodes the documented semantics directly:

* wildcard jobs fire at every instant whose wall clock matches;
* fixed-time jobs (minute and hour fields not starting with ``*``) skip the second
  pass of a repeated hour, and fire once at the first instant after a gap that
  swallowed a matching wall-clock time.

It accepts only the syntax the module accepts and does no validation.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, tzinfo

_BOUNDS = ((0, 59), (0, 59), (0, 23), (1, 31), (1, 12), (0, 7))
_MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
_DAYS = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]
_ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_SECOND = timedelta(seconds=1)


def _number(token: str, index: int) -> int:
    if token.isdigit():
        return int(token)
    return (_MONTHS.index(token) + 1) if index == 4 else _DAYS.index(token)


def expand(field: str, index: int) -> set[int]:
    """The set of values one field allows (day-of-week 7 folded onto 0)."""
    low, high = _BOUNDS[index]
    values: set[int] = set()
    for part in field.lower().split(","):
        span, slash, step = part.partition("/")
        if span == "*":
            first, last = low, high
        elif "-" in span:
            a, b = span.split("-")
            first, last = _number(a, index), _number(b, index)
        else:
            first = _number(span, index)
            last = high if slash else first
        values.update(range(first, last + 1, int(step) if step else 1))
    if index == 5 and 7 in values:
        values.add(0)
    return values


class Reference:
    """Brute-force next-fire computation for one expression."""

    def __init__(self, expr: str) -> None:
        fields = _ALIASES.get(expr.strip().lower(), expr).split()
        if len(fields) == 5:
            fields = ["0", *fields]
        self.sets = [expand(f, i) for i, f in enumerate(fields)]
        self.day_or = not (fields[3].startswith("*") or fields[5].startswith("*"))
        self.fixed = not fields[1].startswith("*") and not fields[2].startswith("*")

    def day_ok(self, day: date) -> bool:
        if day.month not in self.sets[4]:
            return False
        dom = day.day in self.sets[3]
        dow = day.isoweekday() % 7 in self.sets[5]
        return (dom or dow) if self.day_or else (dom and dow)

    def wall_ok(self, wall: datetime) -> bool:
        return (
            self.day_ok(wall.date())
            and wall.hour in self.sets[2]
            and wall.minute in self.sets[1]
            and wall.second in self.sets[0]
        )

    def _gap_matches(self, gap_start: datetime, gap_end: datetime) -> bool:
        wall = gap_start
        while wall < gap_end:
            if self.wall_ok(wall):
                return True
            wall += _SECOND
        return False

    def next_fire(self, after: datetime, tz: tzinfo, horizon_years: int = 60) -> datetime | None:
        """First fire strictly after ``after`` (aware), or None within the horizon."""
        after = after.astimezone(UTC)
        limit = after + timedelta(days=366 * horizon_years)
        t = after.replace(microsecond=0) + _SECOND
        prev, prev_offset = after, after.astimezone(tz).utcoffset()
        while t < limit:
            local = t.astimezone(tz)
            offset = local.utcoffset()
            if offset != prev_offset:
                assert offset is not None and prev_offset is not None
                low, high = prev, t  # bisect to the first instant with the new offset
                while high - low > timedelta(microseconds=1):
                    middle = low + (high - low) / 2
                    if middle.astimezone(tz).utcoffset() == prev_offset:
                        low = middle
                    else:
                        high = middle
                t, local = high, high.astimezone(tz)
                offset = local.utcoffset()
                assert offset is not None
                if self.fixed and offset > prev_offset and t > after:
                    naive = t.replace(tzinfo=None)
                    if self._gap_matches(naive + prev_offset, naive + offset):
                        return t
                prev_offset = offset
            wall = local.replace(tzinfo=None)
            second_pass = local.replace(fold=0).astimezone(UTC) != t
            if wall.month not in self.sets[4]:
                next_month = (wall.replace(day=1) + timedelta(days=32)).replace(day=1)
                step = datetime.combine(next_month, datetime.min.time()) - wall
            elif not self.day_ok(wall.date()):
                midnight = datetime.combine(wall.date(), datetime.min.time())
                step = timedelta(days=1) - (wall - midnight)
            elif wall.hour not in self.sets[2]:
                step = timedelta(seconds=3600 - wall.minute * 60 - wall.second)
            elif wall.minute not in self.sets[1]:
                step = timedelta(seconds=60 - wall.second)
            elif wall.second not in self.sets[0] or (self.fixed and second_pass):
                step = _SECOND
            else:
                return t
            prev, t = t, t + step
        return None
