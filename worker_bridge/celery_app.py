"""The Celery app, configured from ``celeryconfig`` (or $CELERY_CONFIG_MODULE).

What the bridge relies on is set here as defaults, so that a configuration
module of the application's own keeps the guarantees unless it overrides them
on purpose; ``celeryconfig.py`` repeats them with comments.
"""

from __future__ import annotations

import importlib
import logging
import os
import time
from collections.abc import Mapping
from typing import Any

from celery import Celery, signals

from worker_bridge.errors import ConfigurationError
from worker_bridge.loader import JobRegistry
from worker_bridge.settings import Settings
from worker_bridge.tasks import register_job_tasks

logger = logging.getLogger(__name__)

#: What the bridge needs from Celery, applied only to the keys the config module
#: leaves unset; celeryconfig.py documents each. A config module's own value wins,
#: except the ones :func:`refuse_unworkable` names.
CELERY_DEFAULTS: dict[str, Any] = {
    # The embedded default broker: kombu's SQLAlchemy transport on a local
    # SQLite file (CELERY_BROKER_URL, which Celery reads itself, overrides it).
    "broker_url": "sqla+sqlite:///worker_bridge-broker.sqlite3",
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
    # Hard and soft time limits of one job, in seconds. Keep the hard limit
    # below worker_bridge_stale_after, or a job still running would be started again.
    "task_time_limit": 3300,
    "task_soft_time_limit": 3240,
    "timezone": "UTC",
    "enable_utc": True,
}

_JSON_CONTENT = {"json", "application/json"}


def refuse_unworkable(config: Mapping[str, Any]) -> None:
    """Raise ConfigurationError for a setting the bridge's guarantees cannot survive."""
    accept = config.get("accept_content")
    if accept is not None:
        others = sorted(str(kind) for kind in accept if kind not in _JSON_CONTENT)
        if others:
            raise ConfigurationError(
                f"accept_content = {list(accept)!r}: worker_bridge accepts JSON only, "
                f"remove {', '.join(others)} (a pickled or YAML message can run code in "
                "the worker)"
            )
    serializer = config.get("task_serializer")
    if serializer is not None and serializer not in _JSON_CONTENT:
        raise ConfigurationError(
            f"task_serializer = {serializer!r}: worker_bridge's workers accept JSON only"
        )
    if config.get("task_acks_late") is False:
        raise ConfigurationError(
            "task_acks_late = False: worker_bridge needs at-least-once delivery "
            "(a message acknowledged before its job ran would be lost with its worker)"
        )


def _config_values(source: str | object) -> dict[str, Any]:
    # What the config module (or object) itself sets, read the way Celery's
    # loader reads it: its public attributes.
    if isinstance(source, str):
        try:
            source = importlib.import_module(source)
        except ImportError as exc:
            raise ConfigurationError(
                f"the Celery config module {source!r} (CELERY_CONFIG_MODULE) cannot be "
                f"imported: {exc}"
            ) from exc
    if isinstance(source, Mapping):
        return dict(source)
    return {key: getattr(source, key) for key in dir(source) if not key.startswith("_")}


def create_celery_app(config_module: str | None = None) -> Celery:
    """Build the Celery app worker_bridge runs on, with one task per job type.

    The config module (``config_module``, else $CELERY_CONFIG_MODULE, else
    ``celeryconfig``) wins over the bridge's defaults: these fill in only the
    keys it leaves unset.
    """
    source = config_module or os.environ.get("CELERY_CONFIG_MODULE", "celeryconfig")
    user = _config_values(source)
    refuse_unworkable(user)
    celery = Celery("worker_bridge")
    celery.config_from_object(source)
    celery.add_defaults({key: value for key, value in CELERY_DEFAULTS.items() if key not in user})
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
