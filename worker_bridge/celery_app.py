"""The Celery app, configured from ``celeryconfig`` (or $CELERY_CONFIG_MODULE).

What the bridge relies on is set here as defaults, so that a configuration
module of the application's own keeps the guarantees unless it overrides them
on purpose; ``celeryconfig.py`` repeats them with comments.
"""

from __future__ import annotations

import logging
import os
import time
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
    if str(celery.conf.broker_url or "").startswith("sqla+sqlite") and not (
        celery.conf.broker_transport_options
    ):
        # kombu's SQLAlchemy transport reads a message, then deletes it, in a
        # deferred SQLite transaction: with a worker and a dispatcher in two
        # processes, the upgrade to a write lock fails at once ("database is
        # locked"). Writes that take the lock up front wait for it instead.
        celery.conf.broker_transport_options = {
            "connect_args": {"timeout": 30, "isolation_level": "IMMEDIATE"}
        }
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
    simply finds the row on a retry, spares them.
    """
    if not str(app.conf.broker_url or "").startswith("sqla+"):
        return
    for attempt in range(5):
        try:
            with app.connection_for_write() as connection:
                connection.default_channel.queue_declare(queue=app.conf.task_default_queue)
            break
        except Exception:
            if attempt == 4:
                logger.exception("could not declare the embedded broker's queue")
            time.sleep(0.2 * (attempt + 1))
    # The worker's main process forks its pool (and `-B`'s dispatcher) after
    # this: no SQLite connection may cross a fork, and kombu keeps its engines
    # in a class-level cache.
    _forget_kombu_engines()


def _forget_kombu_engines() -> None:
    from kombu.transport import sqlalchemy as kombu_sqlalchemy

    engines = getattr(kombu_sqlalchemy.Channel, "_engines", None)
    if isinstance(engines, dict):
        for engine, _session in list(engines.values()):
            engine.dispose()
        engines.clear()


app = create_celery_app()
signals.celeryd_init.connect(declare_embedded_queue, weak=False)
signals.beat_init.connect(declare_embedded_queue, weak=False)
