"""Cron expression maths: validation and the next fire time, nothing else.

Grammar (case-insensitive, fields separated by ASCII whitespace):

* 5 fields ``minute hour day-of-month month day-of-week`` (minute precision), or 6
  with the SECONDS FIRST (``*/3 * * * * *`` fires every 3 seconds).
* A field is a comma list of ``*``, ``a``, ``a-b``, ``*/n``, ``a-b/n`` or ``a/n`` (``a``
  to the field's end); ``n`` is at most the field's span (60, 60, 24, 31, 12, 7) and
  ranges must not run backwards (``fri-mon``).  Months and weekdays may be named
  (``jan``, ``mon``); 0 and 7 are Sunday, day-of-week spans 0-7 as in cron.
* ``@yearly``, ``@annually``, ``@monthly``, ``@weekly``, ``@daily``, ``@midnight``
  and ``@hourly`` stand for the usual 5-field expressions.
* Rejected: ``@reboot``, a year field and the ``L``, ``W``, ``#``, ``?``, ``H``
  extensions.  So is any expression that can never fire (``0 0 30 2 *``).

Days follow Vixie/Debian cron: when neither the day-of-month nor the day-of-week
field starts with ``*`` a day matches if EITHER matches, otherwise (``*``, ``*/2``)
both must.

The expression is read on the wall clock of a time zone, with the daylight-saving
rules of Debian cron and cronsim.  A job is *fixed-time* when neither its minute
nor its hour field starts with ``*`` (``30 2 * * *``, ``0 9-17 * * *``, and also
``0 30 2 * * *``); any other job is a *wildcard* job.

* A fixed-time job fires once per matching wall-clock time: a time in the skipped
  hour (spring forward) fires at the first instant after the gap (Berlin:
  ``30 2 * * *`` fires at 03:00 CEST that day), a time in the repeated hour (fall
  back) on its first occurrence only.
* A wildcard job fires at every real instant whose wall-clock reading matches:
  ``*/5 * * * *`` and ``*/3 * * * * *`` keep their rhythm through both passes of a
  repeated hour and find nothing to match in a skipped one.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, croniter

from worker_bridge.errors import ConfigurationError, InvalidCronError, InvalidDueError

__all__ = ["has_seconds", "next_fire", "validate_cron"]

# (name, minimum, maximum, largest step) of each field, seconds first.
_FIELDS = (
    ("second", 0, 59, 60),
    ("minute", 0, 59, 60),
    ("hour", 0, 23, 24),
    ("day-of-month", 1, 31, 31),
    ("month", 1, 12, 12),
    ("day-of-week", 0, 7, 7),
)
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_NAMES = {4: {n: i for i, n in enumerate(_MONTHS, 1)}, 5: {n: i for i, n in enumerate(_WEEKDAYS)}}
_ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_DAYS_IN_MONTH = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)  # with February 29
_SEPARATORS = re.compile(r"[ \t\r\n\f\v]+")  # ASCII only: a no-break space is no separator
_ITEM = re.compile(r"(?:(\*)|([0-9a-z]+)(?:-([0-9a-z]+))?)(?:/([0-9]+))?", re.ASCII | re.I)
_EXTENSION = re.compile(r"[?#]|\A(?:[0-9]*l|lw|[0-9]+w|h)(?:[(/].*)?\Z", re.ASCII | re.I)


@dataclass(frozen=True)
class _Spec:
    normalised: str
    six: bool
    fixed: bool  # Debian's fixed-time job: minute and hour fields do not start with '*'
    engine: croniter  # parsed once (the costly part), copied for each search


def _fail(expr: str, problem: str) -> InvalidCronError:
    return InvalidCronError(f"invalid cron expression {expr!r}: {problem}")


def _hint(token: str) -> str:
    return " (L, W, #, ? and H are not supported)" if _EXTENSION.search(token) else ""


def _value(expr: str, index: int, token: str) -> int:
    name, low, high, _ = _FIELDS[index]
    if token.lower() in _NAMES.get(index, {}):
        return _NAMES[index][token.lower()]
    if not token.isdigit():
        raise _fail(expr, f"{name} field: {token!r} is not a number or a known name{_hint(token)}")
    value = int(token) if len(token) <= 4 else high + 1  # int() refuses 5000 digits
    if not low <= value <= high:
        raise _fail(expr, f"{name} value {token} is out of range {low}-{high}")
    return value


def _parse_field(expr: str, index: int, text: str) -> frozenset[int]:
    name, low, high, max_step = _FIELDS[index]
    values: set[int] = set()
    for item in text.split(","):
        match = _ITEM.fullmatch(item)
        if match is None:
            what = repr(item) if item else "an empty list item"
            raise _fail(expr, f"{name} field {text!r}: cannot parse {what}{_hint(item)}")
        star, first, last, step_text = match.groups()
        step = 1 if step_text is None else int(step_text) if len(step_text) <= 4 else 0
        if not 1 <= step <= max_step:
            raise _fail(expr, f"{name} step /{step_text} is not between 1 and {max_step}")
        if star:
            start, stop = low, high
        else:
            start = _value(expr, index, first)
            stop = _value(expr, index, last) if last else high if step_text else start
            if start > stop:
                raise _fail(expr, f"{name} range {first}-{last} runs backwards")
        values.update(range(start, stop + 1, step))
    if 7 in values and index == 5:
        values = (values - {7}) | {0}  # 7 is Sunday too
    return frozenset(values)


def _listing(values: frozenset[int], index: int) -> str:
    _, low, high, _ = _FIELDS[index]
    full = set(range(low, 7 if index == 5 else high + 1))
    return "*" if values >= full else ",".join(map(str, sorted(values)))


@lru_cache(maxsize=512)
def _parse(expr: str) -> _Spec:
    fields = [f for f in _SEPARATORS.split(expr) if f]
    if not fields:
        raise _fail(expr, "it is empty")
    normalised = " ".join(fields)
    if len(fields) == 1 and fields[0].startswith("@"):
        alias = _ALIASES.get(fields[0].lower())
        if alias is None:
            raise _fail(expr, f"unknown alias {fields[0]!r} (known: {', '.join(_ALIASES)})")
        fields = alias.split()
    if len(fields) not in (5, 6):
        raise _fail(expr, f"expected 5 fields, or 6 with the seconds first, got {len(fields)}")
    six = len(fields) == 6
    texts = fields if six else ["0", *fields]
    sets = [_parse_field(expr, i, text) for i, text in enumerate(texts)]
    day_and = texts[3].startswith("*") or texts[5].startswith("*")
    if day_and and not any(d <= _DAYS_IN_MONTH[m - 1] for d in sets[3] for m in sets[4]):
        raise _fail(
            expr, f"it never fires: day-of-month {texts[3]} does not occur in month {texts[4]}"
        )
    listed = [_listing(values, i) for i, values in enumerate(sets)]
    if not day_and and "*" in (listed[3], listed[5]):
        # "Any day OR Mondays" is any day.  Say so, as croniter (like cron) would AND
        # the full field, now written "*", with the other.
        listed[3] = listed[5] = "*"
    # croniter sees 6 fields, seconds first, as plain sorted lists (see _walls).
    engine = croniter(" ".join(listed), day_or=not day_and, second_at_beginning=True)
    fixed = not texts[1].startswith("*") and not texts[2].startswith("*")
    return _Spec(normalised=normalised, six=six, fixed=fixed, engine=engine)


def _spec(expr: object) -> _Spec:
    if not isinstance(expr, str):
        kind = type(expr).__name__
        raise InvalidCronError(f"cron expression must be a string, not {kind}: {expr!r}")
    return _parse(expr)


def validate_cron(expr: str) -> str:
    """Return the normalised expression (whitespace collapsed) or raise InvalidCronError."""
    return _spec(expr).normalised


def has_seconds(expr: str) -> bool:
    """True for the 6-field form (seconds first); raise InvalidCronError if invalid."""
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
            # pytz zones ignore PEP 495's ``fold``, on which the DST rules below rely.
            return _zone(zone_name)
        return tz
    raise ConfigurationError(f"time zone must be a zone name or a tzinfo, not {tz!r}")


def _walls(spec: _Spec, start: datetime) -> Iterator[datetime]:
    """Matching naive wall-clock times strictly after the naive ``start``, in order.

    croniter only ever sees naive wall-clock times and the normalised expression
    (plain sorted lists, seconds first, day-of-week 0-6, day OR/AND decided here).
    WHY: croniter 7.0.0 reads an equal range ``6-6``/``sat-sat``/``1-1/8`` as the
    whole field; it ORs the day fields even when one starts with ``*`` (Vixie ANDs
    ``*/2 * 1``); it ends ``a/n`` in day-of-week at 6, dropping the Sunday that
    cron's 0-7 range gives; and with aware times it fires fixed-time jobs again in
    a repeated hour and moves wildcard jobs that fall in a skipped hour to the end
    of the gap (``34 */22 * * *`` fired at 01:00 after Santiago's midnight gap).
    Its search on naive wall times of plain lists is right (differential tests), so
    the mapping of wall-clock times to real instants is done here.
    """
    engine = copy.copy(spec.engine)
    engine.set_current(start.replace(microsecond=0), force=True)
    while True:
        wall: datetime = engine.get_next(datetime)
        yield wall


def _wall(instant: datetime, zone: tzinfo) -> datetime:
    return instant.astimezone(zone).replace(tzinfo=None)


def _instants(wall: datetime, zone: tzinfo) -> list[datetime]:
    """The real instants (UTC, ascending) at which the zone's clock reads ``wall``."""
    found = {wall.replace(tzinfo=zone, fold=fold).astimezone(UTC) for fold in (0, 1)}
    return sorted(instant for instant in found if _wall(instant, zone) == wall)


def _change(low: datetime, high: datetime, zone: tzinfo) -> datetime:
    """The first whole second in (``low``, ``high``] whose UTC offset is not ``low``'s."""
    offset = low.astimezone(zone).utcoffset()
    while high - low > timedelta(seconds=1):
        middle = low + (high - low) / 2
        if middle.astimezone(zone).utcoffset() == offset:
            low = middle
        else:
            high = middle
    return high.replace(microsecond=0)  # transitions fall on whole seconds


def _gap_end(wall: datetime, zone: tzinfo) -> datetime:
    """The first instant after the gap (spring forward) that swallowed ``wall``."""
    low = high = wall.replace(tzinfo=zone).astimezone(UTC)
    while _wall(low, zone) >= wall:
        low -= timedelta(hours=1)
    while _wall(high, zone) <= wall:
        high += timedelta(hours=1)
    return _change(low, high, zone)


def _fixed_fire(spec: _Spec, zone: tzinfo, after: datetime) -> datetime:
    # A wall time fires at its first occurrence, or at the end of the gap that
    # swallowed it: non-decreasing in wall time, so the first one after ``after`` wins.
    start = _wall(after, zone)
    first_pass = start.replace(tzinfo=zone, fold=0).astimezone(UTC)
    if first_pass < after:  # ``after`` is in the second pass: skip what fired in the first
        start = max(start, _wall(_change(first_pass, after, zone) - timedelta(seconds=1), zone))
    walls = _walls(spec, start)
    while True:
        instants = _instants(wall := next(walls), zone)
        fire = instants[0] if instants else _gap_end(wall, zone)
        if fire > after:
            return fire


def _wildcard_fire(spec: _Spec, zone: tzinfo, after: datetime) -> datetime:
    wall_now = _wall(after, zone)
    candidates: list[datetime] = []
    second_pass = wall_now.replace(tzinfo=zone, fold=1).astimezone(UTC)
    if second_pass > after:
        # ``after`` is in the first pass of a repeated hour: the wall times from the
        # start of the second pass up to ``wall_now`` come round once more.
        change = _change(after, second_pass, zone)
        wall = next(_walls(spec, _wall(change, zone) - timedelta(seconds=1)))
        if wall <= wall_now:
            candidates.append(_instants(wall, zone)[-1])
    walls = _walls(spec, wall_now)
    while True:
        instants = _instants(wall := next(walls), zone)
        if not instants:
            # Swallowed by a gap: resume at its end instead of trying each wall time.
            walls = _walls(spec, _wall(_gap_end(wall, zone), zone) - timedelta(seconds=1))
        later = [i for i in instants if i > after]
        if later:
            return min(candidates + later[:1])


def next_fire(expr: str, after: datetime, tz: str | tzinfo = "UTC") -> datetime:
    """First fire time strictly after `after`, as a timezone-aware UTC datetime.

    ``after`` must be timezone-aware (else :class:`InvalidDueError`); ``tz`` is the
    zone (name or tzinfo) whose wall clock the expression is read on; an unknown
    name raises :class:`ConfigurationError`.  See the module docstring for the
    daylight-saving rules.  Raises :class:`InvalidCronError` for an invalid
    expression, or when no fire time exists within croniter's 50-year search
    window (or before the year 10000).
    """
    spec = _spec(expr)
    if not isinstance(after, datetime) or after.utcoffset() is None:
        raise InvalidDueError(f"after must be a timezone-aware datetime, got {after!r}")
    zone = _zone(tz)
    after = after.astimezone(UTC)
    try:
        return (_fixed_fire if spec.fixed else _wildcard_fire)(spec, zone, after)
    except (CroniterBadDateError, OverflowError, ValueError):
        raise _fail(expr, f"it never fires after {after.isoformat()}") from None
