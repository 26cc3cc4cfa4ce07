"""worker_bridge: background jobs on Celery, with a PostgreSQL table as the source of truth.

Application code::

    from worker_bridge import WorkerJobConfig, schedule_job
    schedule_job(WorkerJobConfig(type="send_email", user_id=42, data={"to": "a@b.c"}))

Workers: ``celery -A worker_bridge worker``. Importing the package builds no
Celery app and imports no job module: ``worker_bridge.app`` (also
``worker_bridge.celery``) builds the app on first access.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from worker_bridge.bridge import BridgeApp, get_bridge, set_bridge
from worker_bridge.errors import (
    InvalidCronError,
    InvalidJobError,
    UnknownJobTypeError,
    WorkerBridgeError,
)
from worker_bridge.job import Job, JobState
from worker_bridge.models import WorkerJob
from worker_bridge.params import JobParams
from worker_bridge.scheduling import (
    WorkerJobConfig,
    schedule_cron_job,
    schedule_job,
    schedule_jobs,
)
from worker_bridge.settings import Settings

if TYPE_CHECKING:
    from worker_bridge.celery_app import BridgeCelery
    from worker_bridge.control import cancel_job, run_again, run_now

    app: BridgeCelery
    celery: BridgeCelery


def __getattr__(name: str) -> Any:
    # The Celery app, built on first access: `celery -A worker_bridge` asks for
    # `app`, while application code that only schedules jobs never does.
    if name in ("app", "celery"):
        from worker_bridge.celery_app import default_app

        return default_app()
    if name in ("cancel_job", "run_now", "run_again"):
        # control reaches Celery (to stop a running job): imported on first use.
        from worker_bridge import control

        return getattr(control, name)
    raise AttributeError(f"module 'worker_bridge' has no attribute {name!r}")


__all__ = [
    "BridgeApp",
    "InvalidCronError",
    "InvalidJobError",
    "Job",
    "JobParams",
    "JobState",
    "Settings",
    "UnknownJobTypeError",
    "WorkerBridgeError",
    "WorkerJob",
    "WorkerJobConfig",
    "app",
    "cancel_job",
    "celery",
    "get_bridge",
    "run_again",
    "run_now",
    "schedule_cron_job",
    "schedule_job",
    "schedule_jobs",
    "set_bridge",
]
