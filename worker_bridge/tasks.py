"""The Celery task wrapper: one task per job type, each running an attempt.

Each job type is registered as its own task, ``jobs.<type>``, with keyword
arguments ``job_id`` and ``user_id`` for one row, or ``job_ids`` for a batch
of rows of a batched type (see ``batch``). The task checks the message, builds
an :class:`Attempt` or a :class:`BatchAttempt` from it (the Celery task id is
the attempt token, see ``attempt``) and runs it on the app's bridge and this
process's worker state.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import TYPE_CHECKING, Any

from billiard.einfo import ExceptionWithTraceback
from billiard.exceptions import WorkerLostError
from celery import Task
from celery.exceptions import Ignore, SoftTimeLimitExceeded, TimeLimitExceeded
from celery.utils.saferepr import saferepr
from celery.worker.request import Request
from celery.worker.state import task_ready
from kombu.exceptions import ContentDisallowed

from worker_bridge.attempt import Attempt, AttemptReport, record_hard_timeout, utcnow
from worker_bridge.batch import BatchAttempt, BatchReport
from worker_bridge.loader import MAX_BATCH_SIZE
from worker_bridge.maintenance import JobRecovery
from worker_bridge.store import LostAttempt
from worker_bridge.store.schema import BATCH_STOPPED

if TYPE_CHECKING:
    from celery import Celery

    from worker_bridge.loader import JobRegistry

logger = logging.getLogger(__name__)


class Refused(Ignore):  # type: ignore[misc]
    """A job message the table refused, or a malformed one: its task is rejected.

    Raised in the pool process, where Celery logs it in one line (an ``Ignore``,
    with no traceback); :class:`JobRequest` then rejects the message (not
    requeued) in the worker's main process and reports it as Celery reports a
    task that rejects its message for good: ``task-failed`` naming the refusal,
    then ``task-rejected``. Flower and event receivers see the refusal, never a
    success.
    """


#: Why a refused message is rejected (the worker's log line before it says which case).
REFUSED = (
    "refused by worker_jobs: a duplicate or outdated message, or its row was cancelled, "
    "deleted, or recovered and sent again"
)

#: Prefix of the Celery task name of every job type.
TASK_PREFIX = "jobs."


def task_name(job_type: str) -> str:
    """The Celery task name of a job type."""
    return f"{TASK_PREFIX}{job_type}"


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
            problem = "malformed message body (expected [args, kwargs, embed])"
        except ContentDisallowed:
            valid = False
            problem = (
                f"content type {message.content_type!r} is not in accept_content "
                f"{sorted(app.conf.accept_content)!r}"
            )
        except Exception:
            valid = False
            problem = "malformed message body (it does not decode)"
        if not valid:
            logger.error(
                "task %s[%s]: refused: %s; dropped without running anything",
                task.name,
                (message.headers or {}).get("id"),
                problem,
            )
            message.reject(requeue=False)
            return None
        return handle(message, body, ack, reject, callbacks, **kw)

    return guarded


class JobRequest(Request):  # type: ignore[misc]
    """Celery's request of a job's message, which hands a lost pool process's job back.

    When the pool process running a job dies (SIGKILL, the OOM killer, a
    segfault in an extension), the worker's main process learns it at once
    and calls :meth:`on_failure` with ``WorkerLostError``; Celery then
    requeues the message (``task_reject_on_worker_lost``). The row, though,
    still shows the dead attempt as running, so the redelivered message would
    be refused and the job would wait out ``heartbeat_timeout``. Instead the
    row goes back to pending here, under the dead attempt's token (a later
    attempt is never touched), and the dispatchers are woken to send it again
    under a new token; the redelivered message then finds an outdated token
    and is dropped. So the job runs again within seconds, and still once at a time.
    """

    def on_failure(
        self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False
    ) -> Any:
        exc = exc_info.exception
        if isinstance(exc, ExceptionWithTraceback):
            exc = exc.exc
        if isinstance(exc, Refused):
            # As Celery ends a task that rejects its message without requeueing
            # (task-failed naming the refusal, then task-rejected): Flower shows it
            # failed with the reason, never succeeded; the message is dropped.
            task_ready(self)
            self.send_event("task-failed", exception=saferepr(exc), traceback="")
            return self.reject(requeue=False)
        cancelled = getattr(self, "_already_cancelled", False)
        if _is_worker_lost(exc_info.exception) and not (cancelled or self._already_revoked):
            _recover_lost_attempt(self)
        return super().on_failure(
            exc_info, send_failed_event=send_failed_event, return_ok=return_ok
        )


def _is_worker_lost(exc: BaseException) -> bool:
    if isinstance(exc, ExceptionWithTraceback):
        exc = exc.exc
    # Billiard reports a child that exited as SystemExit before WorkerLostError.
    return isinstance(exc, WorkerLostError | SystemExit | KeyboardInterrupt)


def _is_job_id(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int) and 1 <= value < 2**63


def message_rows(kwargs: Any) -> list[int]:
    """The rows a job message names: its ``job_id``, or its batch's ``job_ids``; [] if neither."""
    kwargs = kwargs if isinstance(kwargs, dict) else {}
    if _is_job_id(kwargs.get("job_id")):
        return [kwargs["job_id"]]
    job_ids = kwargs.get("job_ids")
    if isinstance(job_ids, list) and job_ids and all(_is_job_id(i) for i in job_ids):
        return job_ids
    return []


def _recover_lost_attempt(request: Request) -> None:
    job_ids = message_rows(request.kwargs)
    if not job_ids:
        return
    try:
        recovery = JobRecovery(request.task.app.bridge)
        recovery.recover_attempt(LostAttempt(job_ids, request.id), utcnow())
    except Exception:
        # The heartbeat's timeout still recovers the job; the worker must live on.
        logger.exception("jobs %s: their pool process died; could not put them back", job_ids)


class JobTask(Task):  # type: ignore[misc]
    """Base class of the ``jobs.<type>`` tasks."""

    Strategy = "worker_bridge.tasks:job_strategy"
    Request = "worker_bridge.tasks:JobRequest"

    #: Set by :func:`register_job_tasks`.
    job_type: str = ""
    typing = False  # arguments are checked by execute_job, with a clear log line

    def on_failure(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        # A hard time limit kills the pool process mid-run; Celery then calls
        # this in the worker's main process, the only place left to record it.
        # A batch's killed run cannot say which of its rows was running: every
        # row whose outcome was not written goes back to pending instead.
        if isinstance(exc, TimeLimitExceeded):
            job_id = (kwargs or {}).get("job_id")
            if isinstance(job_id, int):
                record_hard_timeout(self.app.worker_process, job_id, task_id, exc)
            elif message_rows(kwargs):
                JobRecovery(self.app.bridge).recover_attempt(
                    LostAttempt(message_rows(kwargs), task_id, BATCH_STOPPED), utcnow()
                )


def execute_job(
    task: JobTask, job_id: Any = None, user_id: Any = None, job_ids: Any = None, **extra: Any
) -> None:
    """The body of every ``jobs.<type>`` task: check the message, run its attempt."""
    token = task.request.id
    batch = message_rows({"job_ids": job_ids}) if job_id is None and user_id is None else []
    is_batch = len(batch) <= MAX_BATCH_SIZE and len(set(batch)) == len(batch) > 0
    if extra or not (is_batch or (_is_job_id(job_id) and job_ids is None)):
        logger.error(
            "task %s[%s]: refused: expected keyword arguments job_id (int) and user_id, "
            "or job_ids (a list of at most %d distinct ints), got job_id=%r%s%s",
            task.name,
            token,
            MAX_BATCH_SIZE,
            job_id,
            "" if job_ids is None else f" and job_ids={job_ids!r:.200}",
            f" and unexpected {sorted(extra)}" if extra else "",
        )
        raise Refused("malformed job message: see the worker's log")
    how = {
        "token": token,
        "job_type": task.job_type,
        "worker": f"{task.request.hostname or socket.gethostname()}:{os.getpid()}",
        "soft_timeouts": (SoftTimeLimitExceeded,),
        # The message's own limit (a job type's SOFT_TIME_LIMIT) before the worker's.
        "soft_limit": (task.request.timelimit or (None, None))[1]
        or task.soft_time_limit
        or task.app.conf.task_soft_time_limit,
    }
    report: AttemptReport | BatchReport = (
        BatchAttempt(task.app.worker_process, job_ids=batch, **how).execute()
        if is_batch
        else Attempt(task.app.worker_process, job_id=job_id, **how).execute()
    )
    # The task's own state tells the truth (Flower, events): a failed run
    # raises once its failure and follow-up are written (the message is then
    # acknowledged, as a failed task's is: no Celery retry or redelivery), and
    # a message the table refused is rejected, never reported a success.
    if report.refused:
        raise Refused(REFUSED)
    failure = report.failure()
    if failure is not None:
        raise failure


def register_job_tasks(celery: Celery, registry: JobRegistry) -> list[str]:
    """Register one ``jobs.<type>`` task per module of the jobs package."""
    names = []
    for job_type in sorted(registry.known_types()):
        name = task_name(job_type)
        if name not in celery.tasks:
            celery.task(name=name, base=JobTask, bind=True, job_type=job_type)(execute_job)
        names.append(name)
    return names


__all__ = ["JobTask", "execute_job", "message_rows", "register_job_tasks", "task_name"]
