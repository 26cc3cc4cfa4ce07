"""Cron expression maths: validation and the next fire time, nothing else.

Grammar (case-insensitive, fields separated by spaces or tabs):

* 5 fields ``minute hour day-of-month month day-of-week`` (minute precision), or
  6 fields with the SECONDS FIRST: ``second minute hour day-of-month month
  day-of-week`` (``*/3 * * * * *`` fires every 3 seconds).
* Each field is a comma list of ``*``, ``a``, ``a-b``, ``*/n``, ``a-b/n`` or
  ``a/n`` (``a`` up to the field's maximum in steps of ``n``); ``1 <= n <=`` the
  field's span, and ranges must not run backwards (``fri-mon`` is rejected).
* Months ``jan``..``dec`` and weekdays ``sun``..``sat`` by name; 0 and 7 are Sunday.
* The aliases ``@yearly``/``@annually``, ``@monthly``, ``@weekly``, ``@daily``/
  ``@midnight`` and ``@hourly`` (as a whole 5-field expression).
* Not supported, rejected with :class:`InvalidCronError`: ``@reboot``, the
  Quartz/Jenkins extensions ``L``, ``W``, ``#``, ``?``, ``H`` and a year field.

Day matching follows Vixie/Debian cron: when neither the day-of-month nor the
day-of-week field starts with ``*`` a day matches if EITHER matches; otherwise
(one starts with ``*``, including ``*/2``) both must match.  An expression that
can therefore never fire (``0 0 30 2 *``) is rejected by :func:`validate_cron`.

Time zones and daylight saving (the rules of Debian cron and cronsim).  The
expression is matched against the wall clock of the zone.  A job is *fixed-time*
when neither its minute nor its hour field starts with ``*`` (``30 2 * * *``,
``0 9-17 * * *``, also in the 6-field form); every other job is *wildcard*.

* Fixed-time jobs fire once per matching wall-clock time: a time that falls in a
  skipped hour (spring forward) fires once at the first instant after the gap
  (Berlin: ``30 2 * * *`` fires at 03:00 CEST on that day), and a time of the
  repeated hour (fall back) fires only on its first occurrence.
* Wildcard jobs fire at every real instant whose wall-clock reading matches:
  ``*/5 * * * *`` or ``*/3 * * * * *`` keep their rhythm through the repeated hour
  (so they run in both passes) and simply have nothing to match in a skipped hour.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, croniter  # type: ignore[import-untyped,unused-ignore]

from worker_bridge.errors import ConfigurationError, InvalidCronError, InvalidDueError

__all__ = ["has_seconds", "next_fire", "validate_cron"]

_UTC = UTC
# (name, minimum, maximum, largest step) per field, seconds first.
_FIELDS = (
    ("second", 0, 59, 60),
    ("minute", 0, 59, 60),
    ("hour", 0, 23, 24),
    ("day-of-month", 1, 31, 31),
    ("month", 1, 12, 12),
    ("day-of-week", 0, 7, 7),
)
_NAMES = {
    4: {n: i for i, n in enumerate(["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"], 1)},
    5: {n: i for i, n in enumerate(["sun", "mon", "tue", "wed", "thu", "fri", "sat"])},
}
_ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_DAYS_IN_MONTH = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)  # February of leap years
_SEPARATORS = re.compile(r"[ \t]+")
_ITEM = re.compile(r"(?:(\*)|([0-9a-z]+)(?:-([0-9a-z]+))?)(?:/([0-9]+))?", re.ASCII | re.IGNORECASE)
_EXTENSIONS = re.compile(r"[lw#?h]", re.IGNORECASE)


@dataclass(frozen=True)
class _Spec:
    normalised: str
    six: bool
    fixed: bool  # Debian's fixed-time job: minute and hour fields do not start with '*'
    engine_expr: str  # what croniter sees: 6 fields, seconds first, plain sorted lists
    day_or: bool


def _fail(expr: str, problem: str) -> InvalidCronError:
    return InvalidCronError(f"invalid cron expression {expr!r}: {problem}")


def _value(expr: str, index: int, token: str) -> int:
    name, low, high, _ = _FIELDS[index]
    if token.isdigit():
        value = int(token) if len(token) <= 6 else high + 1
    elif token.lower() in _NAMES.get(index, {}):
        return _NAMES[index][token.lower()]
    else:
        hint = " (L, W, #, ?, H are not supported)" if _EXTENSIONS.search(token) else ""
        raise _fail(expr, f"{name} field: {token!r} is not a number or a known name{hint}")
    if not low <= value <= high:
        raise _fail(expr, f"{name} value {token} is out of range {low}-{high}")
    return value


def _parse_field(expr: str, index: int, text: str) -> frozenset[int]:
    name, low, high, max_step = _FIELDS[index]
    values: set[int] = set()
    for item in text.split(","):
        match = _ITEM.fullmatch(item)
        if match is None:
            hint = " (L, W, #, ?, H are not supported)" if _EXTENSIONS.search(item) else ""
            raise _fail(expr, f"{name} field: cannot parse {item or 'an empty item'!r}{hint}")
        star, first, last, step_text = match.groups()
        step = int(step_text) if step_text is not None and len(step_text) <= 6 else 1
        if (step_text is not None and not 1 <= step <= max_step) or (step_text and len(step_text) > 6):
            raise _fail(expr, f"{name} step /{step_text} must be between 1 and {max_step}")
        if star:
            start, stop = low, high
        else:
            start = _value(expr, index, first)
            stop = _value(expr, index, last) if last else high if step_text else start
            if start > stop:
                raise _fail(expr, f"{name} range {first}-{last} runs backwards")
        values.update(range(start, stop + 1, step))
    if index == 5 and 7 in values:
        values = (values - {7}) | {0}  # 7 is another name for Sunday
    return frozenset(values)


def _listing(values: frozenset[int], index: int) -> str:
    _, low, high, _ = _FIELDS[index]
    full = set(range(low, 7 if index == 5 else high + 1))
    return "*" if values >= full else ",".join(map(str, sorted(values)))


@lru_cache(maxsize=512)
def _parse(expr: str) -> _Spec:
    fields = [f for f in _SEPARATORS.split(expr.strip(" \t")) if f]
    if not fields:
        raise _fail(expr, "it is empty")
    normalised = " ".join(fields)
    if len(fields) == 1 and fields[0].startswith("@"):
        alias = _ALIASES.get(fields[0].lower())
        if alias is None:
            raise _fail(expr, f"unknown alias {fields[0]!r} (known: {', '.join(_ALIASES)})")
        fields = alias.split()
    if len(fields) not in (5, 6):
        raise _fail(
            expr,
            f"expected 5 fields (minute hour day-of-month month day-of-week) or 6 "
            f"(seconds first), got {len(fields)}",
        )
    six = len(fields) == 6
    texts = fields if six else ["0", *fields]
    sets = [_parse_field(expr, i, text) for i, text in enumerate(texts)]
    days, months, weekdays = sets[3], sets[4], sets[5]
    day_and = texts[3].startswith("*") or texts[5].startswith("*")
    if day_and and not any(d <= _DAYS_IN_MONTH[m - 1] for d in days for m in months):
        raise _fail(expr, f"it can never fire: day-of-month {texts[3]} never occurs in month {texts[4]}")
    listed = [_listing(values, i) for i, values in enumerate(sets)]
    if not day_and and "*" in (listed[3], listed[5]):
        # WHY: "every day OR mondays" is every day.  Writing it out keeps croniter from
        # ever seeing a full list next to a restricted one, which it narrows to an AND.
        listed[3] = listed[5] = "*"
    return _Spec(
        normalised=normalised,
        six=six,
        fixed=not texts[1].startswith("*") and not texts[2].startswith("*"),
        engine_expr=" ".join(listed),
        day_or=not day_and,
    )


def _spec(expr: object) -> _Spec:
    if not isinstance(expr, str):
        raise InvalidCronError(f"cron expression must be a string, not {type(expr).__name__}: {expr!r}")
    return _parse(expr)


def validate_cron(expr: str) -> str:
    """Return the normalised expression (whitespace collapsed) or raise InvalidCronError."""
    return _spec(expr).normalised


def has_seconds(expr: str) -> bool:
    """Return True for the 6-field form (seconds first); raise InvalidCronError if invalid."""
    return _spec(expr).six


def _zone(tz: str | tzinfo) -> tzinfo:
    if isinstance(tz, str):
        try:
            return ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ConfigurationError(f"unknown time zone {tz!r}") from exc
    if isinstance(tz, tzinfo):
        zone_name = getattr(tz, "zone", None)
        if hasattr(tz, "localize") and isinstance(zone_name, str):
            # WHY: pytz zones ignore PEP 495 ``fold``, on which the DST rules below rely.
            return _zone(zone_name)
        return tz
    raise ConfigurationError(f"time zone must be a zone name or a tzinfo, not {type(tz).__name__}")


def _walls(spec: _Spec, start: datetime) -> Iterator[datetime]:
    """Matching naive wall-clock times strictly after the naive ``start``, in order.

    croniter only ever works on naive wall-clock times here, from the normalised
    expression (plain sorted lists, seconds first, day-of-week 0-6).  WHY: croniter
    7.0.0 gets the raw syntax wrong (``6-6`` or ``mon-mon`` mean EVERY day, an equal
    range being read as the whole field; ``*/n`` and ``a-b/n`` take their phase from
    the start time under some options), and its own DST handling with aware times
    does not follow the fixed-time/wildcard rules above, so the mapping of wall
    clock to real time is done by :func:`next_fire` itself.
    """
    engine = croniter(
        spec.engine_expr,
        start.replace(microsecond=0),
        ret_type=datetime,
        day_or=spec.day_or,
        second_at_beginning=True,
    )
    while True:
        wall: datetime = engine.get_next(datetime)
        yield wall


def _instants(wall: datetime, zone: tzinfo) -> list[datetime]:
    """The real instants (UTC, ascending) at which the zone's clock reads ``wall``."""
    found: list[datetime] = []
    for fold in (0, 1):
        instant = wall.replace(tzinfo=zone, fold=fold).astimezone(_UTC)
        if instant.astimezone(zone).replace(tzinfo=None) == wall and instant not in found:
            found.append(instant)
    return sorted(found)


def _gap_end(wall: datetime, zone: tzinfo) -> datetime:
    """First instant after the gap (spring forward) that swallowed ``wall``."""
    low, high = sorted(wall.replace(tzinfo=zone, fold=f).astimezone(_UTC) for f in (0, 1))
    # Invariant: the clock reads before ``wall`` at ``low`` and after it at ``high``.
    while high - low > timedelta(seconds=1):
        middle = low + (high - low) / 2
        if middle.astimezone(zone).replace(tzinfo=None) > wall:
            high = middle
        else:
            low = middle
    return high.replace(microsecond=0)


def next_fire(expr: str, after: datetime, tz: str | tzinfo = "UTC") -> datetime:
    """First fire time strictly after `after`, as a timezone-aware UTC datetime.

    ``after`` must be timezone-aware (else :class:`InvalidDueError`); ``tz`` is the
    zone (name or tzinfo) whose wall clock the expression is read on; an unknown
    name raises :class:`ConfigurationError`.  See the module docstring for the
    daylight-saving rules.  Raises :class:`InvalidCronError` for an invalid
    expression, or if no fire time exists within croniter's 50-year search window.
    """
    spec = _spec(expr)
    if not isinstance(after, datetime) or after.utcoffset() is None:
        raise InvalidDueError(f"after must be a timezone-aware datetime, got {after!r}")
    zone = _zone(tz)
    after = after.astimezone(_UTC)
    local = after.astimezone(zone)
    wall_now = local.replace(tzinfo=None)
    try:
        if spec.fixed:
            # The first occurrence of an existing wall time, or the end of the gap
            # that swallowed it.  Non-decreasing in wall time, so the first one
            # after ``after`` wins.
            for wall in _walls(spec, wall_now):
                instants = _instants(wall, zone)
                fire = instants[0] if instants else _gap_end(wall, zone)
                if fire > after:
                    return fire
        best: datetime | None = None
        earlier = local.replace(fold=1)
        overlap = (local.utcoffset() or timedelta()) - (earlier.utcoffset() or timedelta())
        if local.fold == 0 and overlap > timedelta():
            # ``after`` lies in the first pass of a repeated hour: wall times up to
            # ``wall_now`` come round once more in the second pass.
            for wall in _walls(spec, wall_now - overlap):
                if wall > wall_now:
                    break
                later = [i for i in _instants(wall, zone) if i > after]
                if later:
                    best = later[0]
                    break
        for wall in _walls(spec, wall_now):
            later = [i for i in _instants(wall, zone) if i > after]
            if later:
                return later[0] if best is None else min(best, later[0])
    except CroniterBadDateError:
        raise _fail(expr, f"it does not fire within 50 years after {after.isoformat()}") from None
    raise AssertionError("unreachable")  # pragma: no cover
