"""The ``worker-bridge`` command: migrate, schedule, list, show, cancel and count jobs.

Every command prints plain aligned columns, or JSON with ``--json`` (before or
after the command name). A failure is one line on stderr starting with
``worker-bridge:`` and exit code 1; argparse's own usage errors exit 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, quote_plus

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, OperationalError, SQLAlchemyError

from worker_bridge import store
from worker_bridge.bootstrap import get_bridge
from worker_bridge.db import safe_url
from worker_bridge.errors import WorkerBridgeError
from worker_bridge.migrations import current_revision, upgrade_database
from worker_bridge.models import JobState, WorkerJob
from worker_bridge.scheduling import WorkerJobConfig, schedule_cron_job, schedule_job

_INT32 = (-(2**31), 2**31 - 1)
_BIGINT_MAX = 2**63 - 1
_MAX_LIMIT = 100_000
_STATUSES = [state.value for state in JobState]


class CommandError(Exception):
    """A failure to report as one line on stderr."""


# --- output -------------------------------------------------------------------------------


def _json_default(value: object) -> object:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _print_json(value: object) -> None:
    print(json.dumps(value, default=_json_default, indent=2))


def _stamp(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return _stamp(value)
    # A cell is one line: a control character would break the columns.
    return "".join(ch if ch.isprintable() else " " for ch in str(value))


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Plain columns, left-aligned, two spaces apart."""
    cells = [[_cell(value) for value in row] for row in rows]
    widths = [max([len(h), *(len(row[i]) for row in cells)]) for i, h in enumerate(headers)]
    lines = [list(headers), *cells]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )


def _duration(delta: timedelta) -> str:
    seconds = int(abs(delta.total_seconds()))
    parts = [
        (seconds // 86400, "d"),
        (seconds // 3600 % 24, "h"),
        (seconds // 60 % 60, "m"),
        (seconds % 60, "s"),
    ]
    return " ".join(f"{n}{unit}" for n, unit in parts if n) or "0s"


def _job_dict(job: WorkerJob) -> dict[str, Any]:
    """Every column of the row, and its derived status."""
    row = {column.key: getattr(job, column.key) for column in WorkerJob.__table__.columns}
    return {**row, "status": job.state.value}


SUMMARY_HEADERS = ("ID", "TYPE", "USER", "STATUS", "DUE", "FINISHED", "ATTEMPTS", "CRON", "FROM")


def summary_row(job: store.JobSummary | WorkerJob) -> list[object]:
    status = job.state if isinstance(job, WorkerJob) else job.status
    return [
        job.id,
        job.type,
        job.user_id,
        status.value,
        job.due,
        job.finished,
        job.attempts,
        job.cron_schedule,
        job.rescheduled_from_job,
    ]


# --- argument values ----------------------------------------------------------------------


def _int_between(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: an int in [low, high], so the database never sees an overflow."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:  # also for thousands of digits, which int() refuses
            value = None
        if value is None or not low <= value <= high:
            raise argparse.ArgumentTypeError(
                f"expected an integer from {low} to {high}, got {text[:40]!r}"
            )
        return value

    return parse


_job_id = _int_between(1, _BIGINT_MAX)
_user_id = _int_between(*_INT32)
_milliseconds = _int_between(0, _BIGINT_MAX)


def _parse_data(text: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise CommandError(f"--data is not valid JSON: {exc}") from None
    except RecursionError:
        raise CommandError("--data is nested too deeply") from None
    if not isinstance(data, dict):
        raise CommandError(f"--data must be a JSON object ({{...}}), got {text[:40]!r}")
    return data


def _parse_due(text: str) -> datetime:
    try:
        due = datetime.fromisoformat(text)
    except ValueError:
        raise CommandError(
            f"--due {text!r} is not an ISO-8601 timestamp (e.g. 2030-01-31T09:00:00Z)"
        ) from None
    if due.tzinfo is None or due.utcoffset() is None:
        # A naive time would silently mean the host's zone or UTC, depending on who reads it.
        raise CommandError(f"--due {text!r} has no UTC offset: add one, e.g. Z or +02:00")
    return due


# --- commands -----------------------------------------------------------------------------


def _db_upgrade(args: argparse.Namespace) -> int:
    bridge = get_bridge()
    before = current_revision(bridge.engine)
    upgrade_database(bridge.engine)
    after = current_revision(bridge.engine)
    where = safe_url(bridge.settings.database_url)
    if args.json:
        _print_json({"database": where, "before": before, "after": after})
    elif before == after:
        print(f"worker_jobs is up to date (revision {after}) on {where}")
    else:
        print(f"migrated {where} from {before or 'empty'} to revision {after}")
    return 0


def _schedule(args: argparse.Namespace) -> int:
    config = WorkerJobConfig(
        type=args.type,
        user_id=args.user,
        due=None if args.due is None else _parse_due(args.due),
        data=None if args.data is None else _parse_data(args.data),
        auto_reschedule_on_failure=args.retry_delay is not None,
        auto_reschedule_on_failure_delay=args.retry_delay or 0,
        remove_delay=args.remove_delay,
    )
    job = schedule_job(config) if args.cron is None else schedule_cron_job(config, args.cron)
    if args.json:
        _print_json(_job_dict(job))
    else:
        rows = [[job.id, job.type, job.user_id, job.due, job.cron_schedule]]
        print(format_table(["ID", "TYPE", "USER", "DUE", "CRON"], rows))
    return 0


def _jobs(args: argparse.Namespace) -> int:
    status = None if args.status is None else JobState(args.status)
    with get_bridge().engine.connect() as connection:
        jobs = store.list_jobs(
            connection, job_type=args.type, user_id=args.user, status=status, limit=args.limit
        )
    if args.json:
        _print_json([asdict(job) for job in jobs])
    elif jobs:
        print(format_table(SUMMARY_HEADERS, [summary_row(job) for job in jobs]))
    else:
        print("no jobs match")
    return 0


def _show(args: argparse.Namespace) -> int:
    with get_bridge().engine.connect() as connection:
        job = store.get_job(connection, args.id)
        if job is None:
            raise CommandError(f"no job with id {args.id}")
        lineage = store.job_lineage(connection, args.id)
    if args.json:
        chain = {
            "earlier": [asdict(j) for j in lineage.earlier],
            "later": [asdict(j) for j in lineage.later],
            "truncated": lineage.truncated,
        }
        _print_json({"job": _job_dict(job), "lineage": chain})
        return 0
    fields = _job_dict(job)
    result = fields.pop("result")
    fields = {
        "id": fields.pop("id"),
        "type": fields.pop("type"),
        "status": fields.pop("status"),
        **fields,
    }
    fields["data"] = json.dumps(fields["data"], ensure_ascii=False)
    width = max(map(len, fields))
    for key, value in fields.items():
        text = value.isoformat() if isinstance(value, datetime) else _cell(value)
        print(f"{key.ljust(width)}  {text}")
    print("\nresult:")
    print(json.dumps(result, indent=2, ensure_ascii=False))
    if isinstance(result, dict) and isinstance(result.get("traceback"), str):
        print("\ntraceback:\n" + result["traceback"].rstrip())
    chain_rows = [["", *summary_row(j)] for j in lineage.earlier]
    chain_rows += [[">", *summary_row(job)]]
    chain_rows += [["", *summary_row(j)] for j in lineage.later]
    cut = " (cut at the limit)" if lineage.truncated else ""
    print(f"\nlineage, first to latest{cut}:")
    print(format_table(["", *SUMMARY_HEADERS], chain_rows))
    return 0


def _cancel(args: argparse.Namespace) -> int:
    with get_bridge().engine.begin() as connection:
        before = store.get_job(connection, args.id)
        if before is None:
            raise CommandError(f"no job with id {args.id}")
        cancelled = store.cancel_job(
            connection, args.id, now=datetime.now(UTC), reason="Cancelled by hand (worker-bridge)."
        )
        # Read again: the row may have finished, or gone, since the first read.
        after = store.get_job(connection, args.id)
    if after is None:
        raise CommandError(f"no job with id {args.id}")
    if not cancelled:
        raise CommandError(
            f"job {args.id} has already finished ({after.state.value}): only a pending, "
            "dispatched or running job can be cancelled"
        )
    if args.json:
        _print_json({"job": _job_dict(after), "previous_status": before.state.value})
    else:
        print(
            f"cancelled job {after.id} ({after.type}, user {after.user_id}), "
            f"which was {before.state.value}"
        )
    return 0


def _stats(args: argparse.Namespace) -> int:
    with get_bridge().engine.connect() as connection:
        stats = store.job_stats(connection)
    now = datetime.now(UTC)
    by_status = {s: sum(c.get(JobState(s), 0) for c in stats.counts.values()) for s in _STATUSES}
    by_type = {t: {s: c.get(JobState(s), 0) for s in _STATUSES} for t, c in stats.counts.items()}
    oldest = stats.oldest_pending
    if args.json:
        pending = None
        if oldest is not None:
            pending = {**asdict(oldest), "late_seconds": (now - oldest.due).total_seconds()}
        _print_json(
            {
                "total": sum(by_status.values()),
                "by_status": by_status,
                "by_type": by_type,
                "oldest_pending": pending,
            }
        )
        return 0
    rows = [[t, *counts.values(), sum(counts.values())] for t, counts in by_type.items()]
    rows.append(["total", *by_status.values(), sum(by_status.values())])
    print(format_table(["TYPE", *(s.upper() for s in _STATUSES), "TOTAL"], rows))
    if oldest is None:
        print("\nno pending job")
    else:
        late = now - oldest.due
        when = f"{_duration(late)} late" if late >= timedelta(0) else f"due in {_duration(late)}"
        print(
            f"\noldest pending job: {oldest.id} ({oldest.type}, user {oldest.user_id}), "
            f"due {_stamp(oldest.due)}, {when}"
        )
    return 0


# --- parser and entry point -----------------------------------------------------------------


def _demo(args: argparse.Namespace) -> int:
    from worker_bridge.demo import run_demo

    return run_demo(args.seconds)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``worker-bridge``."""
    parser = argparse.ArgumentParser(
        prog="worker-bridge", description="Operate worker_bridge's worker_jobs table."
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of columns")
    # Also accepted after the command; SUPPRESS keeps a global --json from being reset.
    json_flag = argparse.ArgumentParser(add_help=False)
    json_flag.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print JSON instead of columns",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        name: str, handler: Callable[[argparse.Namespace], int], summary: str, on: Any = commands
    ) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = on.add_parser(name, parents=[json_flag], help=summary)
        sub.set_defaults(handler=handler)
        return sub

    db = commands.add_parser("db", help="database schema")
    db_commands = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    command("upgrade", _db_upgrade, "create or migrate worker_jobs (idempotent)", db_commands)

    schedule = command("schedule", _schedule, "schedule a job, replacing its pending one")
    schedule.add_argument("type", help="job type: a module of the jobs package")
    schedule.add_argument("--user", type=_user_id, required=True, help="user id (0: system)")
    schedule.add_argument("--data", help="a JSON object passed to run() as params.job.data")
    schedule.add_argument(
        "--due",
        help="ISO-8601 time with an offset, e.g. 2030-01-31T09:00Z "
        "(default: now; with --cron, the first run is the next fire after it)",
    )
    schedule.add_argument("--cron", help="cron expression: 5 fields, or 6 with seconds first")
    schedule.add_argument(
        "--retry-delay",
        type=_milliseconds,
        metavar="MS",
        help="retry a failed run after MS milliseconds",
    )
    schedule.add_argument(
        "--remove-delay",
        type=_milliseconds,
        metavar="MS",
        default=0,
        help="keep the row MS milliseconds after it succeeds",
    )

    jobs = command("jobs", _jobs, "list jobs, newest first")
    jobs.add_argument("--type", help="only this job type")
    jobs.add_argument("--user", type=_user_id, help="only this user id")
    jobs.add_argument("--status", choices=_STATUSES, help="only jobs in this state")
    jobs.add_argument(
        "--limit",
        type=_int_between(1, _MAX_LIMIT),
        default=50,
        help="at most this many jobs (default 50)",
    )

    show = command("show", _show, "one job: every column, its result and its lineage")
    show.add_argument("id", type=_job_id)
    cancel = command("cancel", _cancel, "cancel a live job (a cron job's schedule ends with it)")
    cancel.add_argument("id", type=_job_id)
    command("stats", _stats, "counts by status and type, and the oldest pending job")
    demo = command("demo", _demo, "schedule the example jobs and run a worker to watch them")
    demo.add_argument(
        "--seconds",
        type=_int_between(0, 86_400),
        default=30,
        help="stop after this many seconds (0: run until Ctrl-C; default 30)",
    )
    return parser


def _bridge_url() -> str | None:
    """The URL of the process's BridgeApp, when it can be built."""
    try:
        return get_bridge().settings.database_url
    except Exception:
        return None


def _fail(message: str, url: str | None = None) -> int:
    """Print ``message`` as one line on stderr, never with a database password; return 1."""
    line = " ".join(part.strip() for part in message.strip().splitlines() if part.strip())
    # The URL in use when the caller knows it, and the configured one: building
    # the bridge (and connecting) just to print an error would be too much.
    for candidate in [u for u in (url, os.environ.get("WORKER_BRIDGE_DATABASE_URL")) if u]:
        line = line.replace(candidate, safe_url(candidate))
        try:
            password = make_url(candidate).password
        except ArgumentError:
            continue
        # Too short a password would mask innocent letters; messages never quote one anyway.
        if password and len(password) >= 4:
            for form in {password, quote(password, safe=""), quote_plus(password)}:
                line = line.replace(form, "***")
    print(f"worker-bridge: {line}", file=sys.stderr)
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: run a command; errors become one line on stderr and exit code 1."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # Alembic logs every migration at INFO through its own logger.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    try:
        code: int = args.handler(args)
        sys.stdout.flush()  # here, so that a closed pipe is caught below
    except OperationalError as exc:
        url = _bridge_url()
        where = safe_url(url) if url else "the configured URL"
        reason = str(exc.orig).strip() if exc.orig else "connection failed"
        # No statement: connecting failed. Otherwise the server refused one (a lock, SQLite's
        # "database is locked"), which says nothing about reaching it.
        what = "cannot reach the database" if exc.statement is None else "database error"
        return _fail(f"{what} at {where}: {reason}", url)
    except (CommandError, WorkerBridgeError) as exc:
        return _fail(str(exc))
    except UnicodeError:
        return _fail("an argument is not valid UTF-8 text")
    except SQLAlchemyError as exc:
        # Only the first line: the rest is the statement and its parameters.
        return _fail(f"database error: {str(exc).strip().splitlines()[0]}", _bridge_url())
    except BrokenPipeError:
        # `worker-bridge jobs | head`: stop quietly, and keep Python from
        # complaining again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        _fail("interrupted")
        return 130
    except Exception as exc:
        # An operator's command prints no traceback, even for a bug; the type says where to look.
        return _fail(f"unexpected {type(exc).__name__}: {exc}")
    return code


if __name__ == "__main__":
    sys.exit(main())
