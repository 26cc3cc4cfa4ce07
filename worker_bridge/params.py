"""The job interface: what ``run(params)`` receives.

A job type is a module in the jobs package that defines::

    def run(params: JobParams) -> JSON-serializable   # or: async def run(params)
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any

from worker_bridge.bridge import BridgeApp
from worker_bridge.job import Job


class JobLogger(logging.LoggerAdapter[logging.Logger]):
    """A logger whose records carry the job's id, type and user."""

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        kwargs["extra"] = {**(self.extra or {}), **kwargs.get("extra", {})}
        return msg, kwargs


def job_logger(job: Job) -> JobLogger:
    """The logger handed to ``run()`` for ``job``."""
    return JobLogger(
        logging.getLogger(f"worker_bridge.jobs.{job.type}"),
        {"job_id": job.id, "job_type": job.type, "user_id": job.user_id},
    )


@dataclass(frozen=True)
class JobParams:
    """The argument of a job's ``run()``."""

    #: The bootstrapped application: settings, engine, session factory, Celery app.
    app: BridgeApp
    #: Logger whose records carry ``job_id``, ``job_type`` and ``user_id``.
    log: JobLogger
    #: The job's own row as claimed, a frozen value (``job.data``, ``job.user_id``,
    #: ``job.id``...); its ``data`` is run()'s own copy, so changing it changes
    #: neither the table nor the job's retry or next cron row.
    job: Job

    @property
    def data(self) -> dict[str, Any]:
        """Shorthand for ``job.data``."""
        return self.job.data
