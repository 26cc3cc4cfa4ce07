"""worker_bridge: background jobs on Celery, with a PostgreSQL table as the source of truth.

Application code::

    from worker_bridge import WorkerJobConfig, schedule_job
    schedule_job(WorkerJobConfig(type="send_email", user_id=42, data={"to": "a@b.c"}))

Workers: ``celery -A worker_bridge worker``.
"""

from __future__ import annotations

from worker_bridge.bootstrap import BridgeApp, get_bridge, set_bridge
from worker_bridge.celery_app import app
from worker_bridge.errors import (
    InvalidCronError,
    InvalidJobError,
    UnknownJobTypeError,
    WorkerBridgeError,
)
from worker_bridge.models import JobState, WorkerJob
from worker_bridge.params import JobParams
from worker_bridge.scheduling import (
    WorkerJobConfig,
    schedule_cron_job,
    schedule_job,
    schedule_jobs,
)
from worker_bridge.settings import Settings

celery = app

__all__ = [
    "BridgeApp",
    "InvalidCronError",
    "InvalidJobError",
    "JobParams",
    "JobState",
    "Settings",
    "UnknownJobTypeError",
    "WorkerBridgeError",
    "WorkerJob",
    "WorkerJobConfig",
    "app",
    "celery",
    "get_bridge",
    "schedule_cron_job",
    "schedule_job",
    "schedule_jobs",
    "set_bridge",
]
