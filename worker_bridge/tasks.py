"""The Celery task wrapper: claim the row, call ``run()``, write the outcome.

Each job type is registered as its own task, ``jobs.<type>``, with keyword
arguments ``job_id`` and ``user_id``. The Celery task id is the attempt token:
the dispatcher wrote it into the row, and every write below (claim,
heartbeat, finish, follow-up) applies only while the row still carries it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from celery import Task, signals
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError

from worker_bridge import store
from worker_bridge.bootstrap import BridgeApp, get_bridge
from worker_bridge.heartbeat import Heartbeat
from worker_bridge.models import WorkerJob
from worker_bridge.outcome import Outcome, decide_outcome, error_result
from worker_bridge.params import JobParams, job_logger

if TYPE_CHECKING:
    from celery import Celery

    from worker_bridge.loader import JobRegistry

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Prefix of the Celery task name of every job type.
TASK_PREFIX = "jobs."

#: Longest a claim waits for a dispatcher's transaction to end (ms).
CLAIM_LOCK_TIMEOUT_MS = 30_000

_heartbeat: Heartbeat | None = None


#: Set in prefork pool children, which run one task at a time (see _attempt_connection).
_one_task_at_a_time = False
_kept: Connection | None = None
_kept_pid: int | None = None


def _on_pool_child_start(**_: Any) -> None:
    global _one_task_at_a_time
    _one_task_at_a_time = True


signals.worker_process_init.connect(_on_pool_child_start, weak=False)


@contextmanager
def _attempt_connection(bridge: BridgeApp) -> Iterator[Connection]:
    """An autocommit connection for one statement of the running attempt.

    A prefork child runs one task at a time, so it keeps one connection for
    its claims and finishes rather than taking one from the pool for each:
    two checkouts per job cost about as much CPU as the two statements. Any
    error drops the kept connection (a broken one is not reused). Other pools
    run tasks in several threads of one process and use the pool as usual.
    """
    global _kept, _kept_pid
    if not _one_task_at_a_time:
        with bridge.autocommit.begin() as connection:
            yield connection
        return
    if _kept is None or _kept_pid != os.getpid() or _kept.engine is not bridge.autocommit:
        _kept = bridge.autocommit.connect()
        _kept_pid = os.getpid()
    connection = _kept
    try:
        yield connection
        connection.commit()
    except BaseException:
        _kept = None
        connection.close()
        raise


def task_name(job_type: str) -> str:
    """The Celery task name of a job type."""
    return f"{TASK_PREFIX}{job_type}"


def _heartbeat_for(bridge: BridgeApp) -> Heartbeat:
    global _heartbeat
    if _heartbeat is None:

        def write(attempts: Sequence[tuple[int, str]], now: datetime) -> set[int]:
            with bridge.autocommit.begin() as connection:
                return store.refresh_heartbeats(connection, attempts, now=now)

        _heartbeat = Heartbeat(write, bridge.settings.heartbeat_interval.total_seconds())
    return _heartbeat


def _with_db_retry(bridge: BridgeApp, what: str, work: Callable[[], T], patience: float) -> T:
    """Run ``work``, retrying for up to ``patience`` seconds while the database is unreachable."""
    deadline = time.monotonic() + patience
    delay = 0.1
    while True:
        try:
            return work()
        except DBAPIError as exc:
            if not (exc.connection_invalidated or _is_connection_error(exc)):
                raise
            if time.monotonic() + delay > deadline:
                raise
            logger.warning(
                "%s: database unreachable (%s); retrying in %.1fs",
                what,
                str(exc.orig).strip().splitlines()[0] if exc.orig else exc,
                delay,
            )
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def _is_connection_error(exc: DBAPIError) -> bool:
    import psycopg

    return isinstance(exc.orig, psycopg.OperationalError | psycopg.InterfaceError)


def _is_protocol2_body(payload: Any) -> bool:
    return (
        isinstance(payload, list | tuple)
        and len(payload) == 3
        and isinstance(payload[0], list | tuple)
        and isinstance(payload[1], dict)
        and isinstance(payload[2], dict)
    )


def job_strategy(task: JobTask, app: Celery, consumer: Any, **options: Any) -> Any:
    """Celery's default strategy, behind a check of the message's shape.

    Celery's request object assumes a body of ``[args, kwargs, embed]``; a
    forged message with any other JSON body would crash the worker's main
    process (and, redelivered under acks_late, the next worker's too). Such a
    message is refused with one log line and dropped.
    """
    from celery.worker.strategy import default

    handle = default(task, app, consumer, **options)

    def guarded(message: Any, body: Any, ack: Any, reject: Any, callbacks: Any, **kw: Any) -> Any:
        try:
            valid = _is_protocol2_body(message.payload)
        except Exception:
            valid = False
        if not valid:
            logger.error(
                "task %s[%s]: refused: malformed message body (expected [args, kwargs, embed])",
                task.name,
                (message.headers or {}).get("id"),
            )
            message.reject(requeue=False)
            return None
        return handle(message, body, ack, reject, callbacks, **kw)

    return guarded


class JobTask(Task):  # type: ignore[misc]
    """Base class of the ``jobs.<type>`` tasks."""

    Strategy = "worker_bridge.tasks:job_strategy"

    #: Set by :func:`register_job_tasks`.
    job_type: str = ""
    typing = False  # arguments are checked by execute_job, with a clear log line

    def on_failure(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        # A hard time limit kills the pool process mid-run; Celery then calls
        # this in the worker's main process, the only place left to record it.
        if isinstance(exc, TimeLimitExceeded):
            job_id = (kwargs or {}).get("job_id")
            if isinstance(job_id, int):
                record_hard_timeout(get_bridge(), job_id, task_id, exc)


def execute_job(task: JobTask, job_id: Any = None, user_id: Any = None, **extra: Any) -> None:
    """The body of every ``jobs.<type>`` task."""
    token = task.request.id
    if isinstance(job_id, bool) or not isinstance(job_id, int) or not 1 <= job_id < 2**63 or extra:
        logger.error(
            "task %s[%s]: refused: expected keyword arguments job_id (int) and user_id, "
            "got job_id=%r%s",
            task.name,
            token,
            job_id,
            f" and unexpected {sorted(extra)}" if extra else "",
        )
        return
    bridge = get_bridge()
    worker = f"{task.request.hostname or socket.gethostname()}:{os.getpid()}"
    patience = bridge.settings.redispatch_after.total_seconds() / 2

    job = _with_db_retry(
        bridge,
        f"claiming job {job_id}",
        lambda: _claim(bridge, job_id, token, worker),
        patience,
    )
    if job is None:
        return
    if job.type != task.job_type:
        outcome = Outcome(
            False,
            error_result(
                f"message for task {task.name} named row {job_id} of type {job.type}",
                "TaskMismatchError",
            ),
            None,
            None,
        )
        _write_outcome(bridge, job, token, outcome)
        return
    heartbeat = _heartbeat_for(bridge)
    heartbeat.add(job.id, token)
    log = job_logger(job)
    started = time.monotonic()
    log.info("job %s (%s, user %s) started", job.id, job.type, job.user_id)
    try:
        returned: Any = None
        error: BaseException | dict[str, Any] | None = None
        try:
            returned = _call_run(bridge, job, log)
        except SoftTimeLimitExceeded:
            limit = task.soft_time_limit or task.app.conf.task_soft_time_limit
            error = error_result(
                f"job exceeded the soft time limit ({limit} s) and was stopped",
                "SoftTimeLimitExceeded",
            )
        except Exception as exc:
            error = exc
        outcome = decide_outcome(
            job,
            now=datetime.now(UTC),
            timezone=bridge.settings.timezone,
            returned=returned,
            error=error,
            max_result_bytes=bridge.settings.max_result_bytes,
        )
        follow_up = _write_outcome(bridge, job, token, outcome)
    finally:
        heartbeat.remove(job.id)
    duration = time.monotonic() - started
    if follow_up is not False:
        what = "succeeded" if outcome.success else f"failed: {outcome.result.get('error')}"
        then = ""
        if isinstance(follow_up, WorkerJob):
            kind = "retry" if not outcome.success and job.auto_reschedule_on_failure else "next run"
            then = f"; {kind} is job {follow_up.id} due {follow_up.due.isoformat()}"
        log.info(
            "job %s (%s, user %s) %s in %.3fs%s",
            job.id,
            job.type,
            job.user_id,
            what,
            duration,
            then,
            extra={"duration": duration, "success": outcome.success},
        )


def _claim(bridge: BridgeApp, job_id: int, token: str, worker: str) -> WorkerJob | None:
    # One autocommit UPDATE: the whole claim is a single round trip.
    with _attempt_connection(bridge) as connection:
        claimed = store.claim_job(connection, job_id, token, worker=worker, now=datetime.now(UTC))
    if claimed is not None:
        return claimed
    # The message may have outrun the dispatcher's commit: wait for the row
    # to be free and look again before refusing it.
    with bridge.engine.begin() as connection:
        store.wait_for_dispatch_commit(connection, job_id, timeout_ms=CLAIM_LOCK_TIMEOUT_MS)
    with bridge.autocommit.begin() as connection:
        claimed = store.claim_job(connection, job_id, token, worker=worker, now=datetime.now(UTC))
        if claimed is None:
            reason = store.describe_refusal(connection, job_id, token)
            logger.info("job %s: skipped: %s", job_id, reason, extra={"job_id": job_id})
    return claimed


def _call_run(bridge: BridgeApp, job: WorkerJob, log: Any) -> Any:
    runner = bridge.jobs.runner(job.type)
    params = JobParams(app=bridge, log=log, job=job)
    if bridge.jobs.is_async(runner):
        return asyncio.run(runner(params))
    return runner(params)


def _write_outcome(
    bridge: BridgeApp, job: WorkerJob, token: str, outcome: Outcome
) -> WorkerJob | bool | None:
    """Write ``outcome`` for attempt ``token``; the follow-up row, None, or False if refused."""
    now = datetime.now(UTC)
    stale_before = now - bridge.settings.stale_after

    def write() -> WorkerJob | bool | None:
        # Without a follow-up the finish is one UPDATE: autocommit, one round trip.
        if outcome.follow_up is None:
            with _attempt_connection(bridge) as connection:
                return None if finish(connection) else False
        with bridge.engine.begin() as connection:
            # Lock before touching the row: a scheduler holding this pair's
            # lock may be about to cancel it, and must not wait on us.
            store.lock_type_user(connection, job.type, job.user_id)
            if not finish(connection):
                return False
            return store.supersede_and_insert(
                connection, outcome.follow_up, now=now, stale_before=stale_before
            )

    def finish(connection: Connection) -> bool:
        return store.finish_job(
            connection,
            job.id,
            token,
            now=now,
            success=outcome.success,
            result=outcome.result,
            remove_at=outcome.remove_at,
        )

    try:
        written = _with_db_retry(
            bridge,
            f"writing the result of job {job.id}",
            write,
            bridge.settings.heartbeat_timeout.total_seconds(),
        )
    except DBAPIError:
        logger.exception(
            "job %s: result NOT written, the database stayed unreachable; the job "
            "will run again once its heartbeat expires",
            job.id,
            extra={"job_id": job.id},
        )
        raise
    if written is False:
        logger.warning(
            "job %s: result refused: attempt %s is no longer current (the job was "
            "cancelled, or recovered and run again)",
            job.id,
            token,
            extra={"job_id": job.id},
        )
    return written


def record_hard_timeout(bridge: BridgeApp, job_id: int, token: str, exc: BaseException) -> None:
    """Record a run killed by Celery's hard time limit as failed, with its follow-up."""
    with bridge.engine.connect() as connection:
        job = store.get_job(connection, job_id)
    if job is None or job.task_id != token or job.finished is not None:
        return
    message = f"job exceeded the hard time limit ({exc}) and was killed"
    outcome = decide_outcome(
        job,
        now=datetime.now(UTC),
        timezone=bridge.settings.timezone,
        error=error_result(message, "TimeLimitExceeded"),
        max_result_bytes=bridge.settings.max_result_bytes,
    )
    _write_outcome(bridge, job, token, outcome)


def register_job_tasks(celery: Celery, registry: JobRegistry) -> list[str]:
    """Register one ``jobs.<type>`` task per module of the jobs package."""
    names = []
    for job_type in sorted(registry.known_types()):
        name = task_name(job_type)
        if name not in celery.tasks:
            celery.task(name=name, base=JobTask, bind=True, job_type=job_type)(execute_job)
        names.append(name)
    return names


__all__ = ["JobTask", "execute_job", "register_job_tasks", "task_name"]
