"""The Celery task wrapper: one task per job type, each running an :class:`Attempt`.

Each job type is registered as its own task, ``jobs.<type>``, with keyword
arguments ``job_id`` and ``user_id``. The task checks the message, builds an
attempt from it (the Celery task id is the attempt token, see ``attempt``)
and runs it on the app's bridge and this process's worker state.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import TYPE_CHECKING, Any

from billiard.einfo import ExceptionWithTraceback
from billiard.exceptions import WorkerLostError
from celery import Task
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from celery.worker.request import Request
from kombu.exceptions import ContentDisallowed

from worker_bridge.attempt import Attempt, record_hard_timeout, utcnow
from worker_bridge.maintenance import JobRecovery

if TYPE_CHECKING:
    from celery import Celery

    from worker_bridge.loader import JobRegistry

logger = logging.getLogger(__name__)

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


def _recover_lost_attempt(request: Request) -> None:
    job_id = (request.kwargs or {}).get("job_id")
    if isinstance(job_id, bool) or not isinstance(job_id, int):
        return
    try:
        recovery = JobRecovery(request.task.app.bridge)
        recovery.recover_attempt(job_id, request.id, utcnow())
    except Exception:
        # The heartbeat's timeout still recovers the job; the worker must live on.
        logger.exception("job %s: its pool process died; could not put it back at once", job_id)


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
        if isinstance(exc, TimeLimitExceeded):
            job_id = (kwargs or {}).get("job_id")
            if isinstance(job_id, int):
                record_hard_timeout(self.app.worker_process, job_id, task_id, exc)


def execute_job(task: JobTask, job_id: Any = None, user_id: Any = None, **extra: Any) -> None:
    """The body of every ``jobs.<type>`` task: check the message, run its attempt."""
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
    Attempt(
        task.app.worker_process,
        job_id=job_id,
        token=token,
        job_type=task.job_type,
        worker=f"{task.request.hostname or socket.gethostname()}:{os.getpid()}",
        soft_timeouts=(SoftTimeLimitExceeded,),
        soft_limit=task.soft_time_limit or task.app.conf.task_soft_time_limit,
    ).execute()


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
