"""The Celery app, configured from ``celeryconfig`` (or $CELERY_CONFIG_MODULE).

What the bridge relies on is set here as defaults, so that a configuration
module of the application's own keeps the guarantees unless it overrides them
on purpose; ``celeryconfig.py`` repeats them with comments.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from celery import Celery, signals

from worker_bridge.errors import ConfigurationError
from worker_bridge.loader import JobRegistry
from worker_bridge.settings import Settings
from worker_bridge.tasks import register_job_tasks

logger = logging.getLogger(__name__)

#: What the bridge needs from Celery.
CELERY_DEFAULTS: dict[str, Any] = {
    # JSON only: a pickled message could run arbitrary code in the worker.
    "accept_content": ["json"],
    "task_serializer": "json",
    "result_serializer": "json",
    "event_serializer": "json",
    # At-least-once delivery; the atomic claim makes a redelivery harmless.
    "task_acks_late": True,
    "task_reject_on_worker_lost": True,
    # One message per free process: long jobs never hold short ones hostage.
    "worker_prefetch_multiplier": 1,
    # Results live in worker_jobs.result, not in a result backend.
    "task_ignore_result": True,
    # Flower and `celery events` see every job.
    "worker_send_task_events": True,
    "task_send_sent_event": True,
    "beat_scheduler": "worker_bridge.dispatcher:DispatcherScheduler",
    "broker_connection_retry_on_startup": True,
    "timezone": "UTC",
    "enable_utc": True,
}


def create_celery_app(config_module: str | None = None) -> Celery:
    """Build the Celery app worker_bridge runs on, with one task per job type."""
    celery = Celery("worker_bridge")
    celery.add_defaults(CELERY_DEFAULTS)
    celery.config_from_object(
        config_module or os.environ.get("CELERY_CONFIG_MODULE", "celeryconfig")
    )
    settings = Settings.from_conf(celery.conf)
    try:
        register_job_tasks(celery, JobRegistry(settings.jobs_package))
    except ConfigurationError as exc:
        # Application code that only schedules jobs may not have the package.
        logger.warning("no job tasks registered: %s", exc)
    return celery


def declare_embedded_queue(sender: Any = None, **_: Any) -> None:
    """Create the default queue of kombu's SQLAlchemy transport once, up front.

    The transport creates a queue's row on first use without guarding against
    a concurrent creator, so a worker and a dispatcher starting together can
    crash on a unique violation. Declaring here, where the loser of that race
    simply finds the row on a second try, spares them.
    """
    celery = app if sender is None else getattr(sender, "app", app)
    if not str(celery.conf.broker_url or "").startswith("sqla+"):
        return
    for attempt in range(2):
        try:
            with celery.connection_for_write() as connection:
                connection.default_channel.queue_declare(queue=celery.conf.task_default_queue)
            return
        except Exception:
            if attempt:
                logger.exception("could not declare the embedded broker's queue")


app = create_celery_app()
signals.celeryd_init.connect(declare_embedded_queue, weak=False)
signals.beat_init.connect(declare_embedded_queue, weak=False)
