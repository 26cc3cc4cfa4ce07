"""The command handlers of ``worker-bridge`` and the parsers of their argument values.

Each handler takes the parsed ``argparse.Namespace`` and returns an exit code; a
failure to report to the operator is raised as :class:`CommandError`, which
:func:`worker_bridge.cli.main` prints as one line on stderr.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import threading
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import Any

from worker_bridge.bridge import get_bridge
from worker_bridge.cli.demo import run_demo
from worker_bridge.cli.formatting import (
    SUMMARY_HEADERS,
    cell,
    duration,
    format_table,
    job_dict,
    print_json,
    stamp,
    summary_row,
)
from worker_bridge.control import cancel_job, run_again, run_now
from worker_bridge.db import safe_url
from worker_bridge.errors import JobFinishedError, JobNotFoundError, JobStateError
from worker_bridge.job import Job
from worker_bridge.migrations import current_revision, upgrade_database
from worker_bridge.models import JobState
from worker_bridge.scheduling import WorkerJobConfig, schedule_cron_job, schedule_job

__all__ = [
    "MAX_LIMIT",
    "STATUSES",
    "CommandError",
    "cmd_cancel",
    "cmd_db_upgrade",
    "cmd_demo",
    "cmd_jobs",
    "cmd_schedule",
    "cmd_show",
    "cmd_stats",
    "int_between",
    "job_id",
    "milliseconds",
    "user_id",
]

_INT32 = (-(2**31), 2**31 - 1)
_BIGINT_MAX = 2**63 - 1
#: The largest ``jobs --limit``.
MAX_LIMIT = 100_000
#: The values of ``jobs --status``, in the order of the ``stats`` columns.
STATUSES = [state.value for state in JobState]


class CommandError(Exception):
    """A failure to report as one line on stderr."""


# --- argument values ----------------------------------------------------------------------


def int_between(low: int, high: int) -> Callable[[str], int]:
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


#: A job id: a positive BIGINT.
job_id = int_between(1, _BIGINT_MAX)
#: A user id: an INTEGER (0 is the system).
user_id = int_between(*_INT32)
#: A delay in milliseconds: a non-negative BIGINT.
milliseconds = int_between(0, _BIGINT_MAX)


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


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    """``db upgrade``: create or migrate worker_jobs, and say which revision it is at."""
    bridge = get_bridge()
    before = current_revision(bridge.engine)
    upgrade_database(bridge.engine)
    after = current_revision(bridge.engine)
    where = safe_url(bridge.settings.database_url)
    if args.json:
        print_json({"database": where, "before": before, "after": after})
    elif before == after:
        print(f"worker_jobs is up to date (revision {after}) on {where}")
    else:
        print(f"migrated {where} from {before or 'empty'} to revision {after}")
    return 0


def cmd_schedule(args: argparse.Namespace) -> int:
    """``schedule``: schedule a job (or a cron job), replacing its pending one."""
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
        print_json(job_dict(job))
    else:
        rows = [[job.id, job.type, job.user_id, job.due, job.cron_schedule]]
        print(format_table(["ID", "TYPE", "USER", "DUE", "CRON"], rows))
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    """``jobs``: list jobs, newest first, filtered by type, user and status."""
    status = None if args.status is None else JobState(args.status)
    bridge = get_bridge()
    with bridge.engine.connect() as connection:
        jobs = bridge.store.list_jobs(
            connection, job_type=args.type, user_id=args.user, status=status, limit=args.limit
        )
    if args.json:
        print_json([asdict(job) for job in jobs])
    elif jobs:
        print(format_table(SUMMARY_HEADERS, [summary_row(job) for job in jobs]))
    else:
        print("no jobs match")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    """``show``: one job, every column, its result and its lineage."""
    bridge = get_bridge()
    with bridge.engine.connect() as connection:
        job = bridge.store.get_job(connection, args.id)
        if job is None:
            raise CommandError(f"no job with id {args.id}")
        lineage = bridge.store.job_lineage(connection, args.id)
    if args.json:
        chain = {
            "earlier": [asdict(j) for j in lineage.earlier],
            "later": [asdict(j) for j in lineage.later],
            "truncated": lineage.truncated,
        }
        print_json({"job": job_dict(job), "lineage": chain})
        return 0
    fields = job_dict(job)
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
        text = value.isoformat() if isinstance(value, datetime) else cell(value)
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


def cmd_cancel(args: argparse.Namespace) -> int:
    """``cancel``: cancel a pending, dispatched or running job (a running one is stopped)."""
    try:
        done = cancel_job(args.id, reason="Cancelled by hand (worker-bridge).", bridge=get_bridge())
    except (JobNotFoundError, JobFinishedError) as exc:
        raise CommandError(str(exc)) from exc
    before, after = done.before, done.after
    if args.json:
        print_json(
            {"job": job_dict(after), "previous_status": before.state.value, "stopped": done.stopped}
        )
    else:
        stopped = "; its run was told to stop" if done.stopped else ""
        print(
            f"cancelled job {after.id} ({after.type}, user {after.user_id}), "
            f"which was {before.state.value}{stopped}"
        )
    return 0


def cmd_run_now(args: argparse.Namespace) -> int:
    """``run-now``: make a pending job due now."""
    job = _job_action(lambda: run_now(args.id, bridge=get_bridge()))
    return _print_job(args, job, f"is due now ({job.due.isoformat()})")


def cmd_run_again(args: argparse.Namespace) -> int:
    """``run-again``: schedule a finished job again as a new row that follows it."""
    job = _job_action(lambda: run_again(args.id, bridge=get_bridge()))
    return _print_job(args, job, f"was scheduled again from job {args.id}")


def _job_action(act: Callable[[], Job]) -> Job:
    try:
        return act()
    except (JobNotFoundError, JobStateError) as exc:
        raise CommandError(str(exc)) from exc


def _print_job(args: argparse.Namespace, job: Job, what: str) -> int:
    if args.json:
        print_json({"job": job_dict(job)})
    else:
        print(f"job {job.id} ({job.type}, user {job.user_id}) {what}")
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    """``stats``: counts by status and type, and the oldest pending job."""
    bridge = get_bridge()
    with bridge.engine.connect() as connection:
        stats = bridge.store.job_stats(connection)
    now = datetime.now(UTC)
    by_status = {s: sum(c.get(JobState(s), 0) for c in stats.counts.values()) for s in STATUSES}
    by_type = {t: {s: c.get(JobState(s), 0) for s in STATUSES} for t, c in stats.counts.items()}
    oldest = stats.oldest_pending
    if args.json:
        pending = None
        if oldest is not None:
            pending = {**asdict(oldest), "late_seconds": (now - oldest.due).total_seconds()}
        print_json(
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
    print(format_table(["TYPE", *(s.upper() for s in STATUSES), "TOTAL"], rows))
    if oldest is None:
        print("\nno pending job")
    else:
        late = now - oldest.due
        when = f"{duration(late)} late" if late >= timedelta(0) else f"due in {duration(late)}"
        print(
            f"\noldest pending job: {oldest.id} ({oldest.type}, user {oldest.user_id}), "
            f"due {stamp(oldest.due)}, {when}"
        )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """``demo``: schedule the example jobs and run a worker to watch them."""
    return run_demo(args.seconds)


def cmd_metrics(args: argparse.Namespace) -> int:
    """``metrics``: serve ``/metrics`` until interrupted (the table's gauges, and every
    worker_bridge process's counters when ``PROMETHEUS_MULTIPROC_DIR`` is shared)."""
    try:
        from prometheus_client import start_http_server

        from worker_bridge.metrics import registry_for
    except ImportError as exc:
        raise CommandError(
            "metrics need prometheus-client: pip install 'worker-bridge[metrics]'"
        ) from exc
    registry = registry_for(get_bridge())
    try:
        server, _thread = start_http_server(args.port, addr=args.address, registry=registry)
    except OSError as exc:
        raise CommandError(f"cannot listen on {args.address}:{args.port}: {exc}") from exc
    print(f"serving http://{args.address}:{args.port}/metrics (Ctrl-C to stop)", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
    return 0


#: The environment variable with the console's "user:password" (HTTP basic auth).
WEB_AUTH_VARIABLE = "WORKER_BRIDGE_WEB_AUTH"
#: The environment variable with Flower's address, for the console's links to tasks.
FLOWER_URL_VARIABLE = "WORKER_BRIDGE_FLOWER_URL"


def is_loopback(address: str) -> bool:
    """Whether ``address`` is this machine's loopback only (localhost, 127.0.0.0/8, ::1)."""
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def cmd_web(args: argparse.Namespace) -> int:
    """``web``: serve the console until interrupted."""
    auth = os.environ.get(WEB_AUTH_VARIABLE) or None
    if auth is not None and ":" not in auth:
        raise CommandError(f"{WEB_AUTH_VARIABLE} must be user:password")
    if not is_loopback(args.address) and auth is None:
        raise CommandError(
            f"refusing to serve the console on {args.address} without authentication: set "
            f"{WEB_AUTH_VARIABLE}=user:password, or listen on 127.0.0.1 behind a proxy"
        )
    try:
        import uvicorn

        from worker_bridge.web import ConsoleSettings, create_app
    except ImportError as exc:
        raise CommandError(
            f"the console needs its extra: pip install 'worker-bridge[web]' ({exc})"
        ) from exc
    flower = args.flower_url or os.environ.get(FLOWER_URL_VARIABLE) or None
    app = create_app(
        get_bridge(), ConsoleSettings(read_only=args.read_only, auth=auth, flower_url=flower)
    )
    print(
        f"serving the console on http://{args.address}:{args.port}{args.root_path}/ "
        "(Ctrl-C to stop)",
        flush=True,
    )
    uvicorn.run(
        app, host=args.address, port=args.port, root_path=args.root_path, log_level="warning"
    )
    return 0
