"""The ``worker-bridge`` command: migrate, schedule, list, show, cancel, run again and count jobs.

Every command prints plain aligned columns, or JSON with ``--json`` (before or
after the command name). A failure is one line on stderr starting with
``worker-bridge:`` and exit code 1; argparse's own usage errors exit 2.

This module holds the parser and the entry point (:func:`main`, the
``worker-bridge`` console script, also run by ``python -m worker_bridge.cli``).
The handlers are in :mod:`worker_bridge.cli.commands`, the output helpers in
:mod:`worker_bridge.cli.formatting`, the demo in :mod:`worker_bridge.cli.demo`;
imports go one way: this module -> commands -> formatting and demo; demo -> formatting.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import quote, quote_plus

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, OperationalError, SQLAlchemyError

from worker_bridge.bridge import get_bridge
from worker_bridge.cli.commands import (
    MAX_LIMIT,
    STATUSES,
    CommandError,
    cmd_cancel,
    cmd_db_upgrade,
    cmd_demo,
    cmd_jobs,
    cmd_metrics,
    cmd_run_again,
    cmd_run_now,
    cmd_schedule,
    cmd_show,
    cmd_stats,
    cmd_web,
    int_between,
    job_id,
    milliseconds,
    user_id,
)
from worker_bridge.db import safe_url
from worker_bridge.errors import WorkerBridgeError

__all__ = ["CommandError", "build_parser", "main"]


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
    command("upgrade", cmd_db_upgrade, "create or migrate worker_jobs (idempotent)", db_commands)

    schedule = command("schedule", cmd_schedule, "schedule a job, replacing its pending one")
    schedule.add_argument("type", help="job type: a module of the jobs package")
    schedule.add_argument("--user", type=user_id, required=True, help="user id (0: system)")
    schedule.add_argument("--data", help="a JSON object passed to run() as params.job.data")
    schedule.add_argument(
        "--due",
        help="ISO-8601 time with an offset, e.g. 2030-01-31T09:00Z "
        "(default: now; with --cron, the first run is the next fire after it)",
    )
    schedule.add_argument("--cron", help="cron expression: 5 fields, or 6 with seconds first")
    schedule.add_argument(
        "--retry-delay",
        type=milliseconds,
        metavar="MS",
        help="retry a failed run after MS milliseconds",
    )
    schedule.add_argument(
        "--remove-delay",
        type=milliseconds,
        metavar="MS",
        default=0,
        help="keep the row MS milliseconds after it succeeds",
    )

    jobs = command("jobs", cmd_jobs, "list jobs, newest first")
    jobs.add_argument("--type", help="only this job type")
    jobs.add_argument("--user", type=user_id, help="only this user id")
    jobs.add_argument("--status", choices=STATUSES, help="only jobs in this state")
    jobs.add_argument(
        "--limit",
        type=int_between(1, MAX_LIMIT),
        default=50,
        help="at most this many jobs (default 50)",
    )

    show = command("show", cmd_show, "one job: every column, its result and its lineage")
    show.add_argument("id", type=job_id)
    cancel = command("cancel", cmd_cancel, "cancel a live job (a cron job's schedule ends with it)")
    cancel.add_argument("id", type=job_id)
    run_now = command("run-now", cmd_run_now, "make a pending job due now")
    run_now.add_argument("id", type=job_id)
    run_again = command(
        "run-again", cmd_run_again, "schedule a finished job again, as a new row that follows it"
    )
    run_again.add_argument("id", type=job_id)
    command("stats", cmd_stats, "counts by status and type, and the oldest pending job")
    metrics = command("metrics", cmd_metrics, "serve Prometheus metrics of the table at /metrics")
    metrics.add_argument("--port", type=int_between(1, 65_535), default=9808, help="default 9808")
    metrics.add_argument(
        "--address", default="127.0.0.1", help="address to listen on (default 127.0.0.1)"
    )
    web = command("web", cmd_web, "serve the operator's console (pip install 'worker-bridge[web]')")
    web.add_argument("--port", type=int_between(1, 65_535), default=8808, help="default 8808")
    web.add_argument(
        "--address", default="127.0.0.1", help="address to listen on (default 127.0.0.1)"
    )
    web.add_argument(
        "--read-only", action="store_true", help="refuse every action (cancel, run now, run again)"
    )
    web.add_argument(
        "--flower-url",
        default=None,
        help="Flower's address, for links to a job's task (default $WORKER_BRIDGE_FLOWER_URL)",
    )
    web.add_argument(
        "--root-path", default="", help="the path prefix a reverse proxy serves it under"
    )
    demo = command("demo", cmd_demo, "schedule the example jobs and run a worker to watch them")
    demo.add_argument(
        "--seconds",
        type=int_between(0, 86_400),
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


def _run(args: argparse.Namespace) -> int:
    handler: Callable[[argparse.Namespace], int] = args.handler
    if handler in (cmd_demo, cmd_metrics, cmd_web):
        return handler(args)
    # A pooled connection that died idle (the database restarted) is replaced
    # and the command runs again, once, at once: an operator's command should
    # not wait out an outage, and every command is safe to run twice (reads,
    # an idempotent upgrade, a cancel that then reports the row as finished,
    # and schedule_job, which retries by itself).
    return get_bridge().reconnecting(
        f"worker-bridge {args.command}", lambda: handler(args), patience=0
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: run a command; errors become one line on stderr and exit code 1."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # Alembic logs every migration at INFO through its own logger.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    try:
        code: int = _run(args)
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
