"""The Celery app: configured from ``celeryconfig`` (or $CELERY_CONFIG_MODULE), carrying the bridge.

This is the one wiring point. :func:`create_celery_app` builds a
:class:`BridgeCelery` with one task per job type; the app carries its
process's bridge (``app.bridge``) and worker state (``app.worker_process``),
which tasks reach as ``task.app.bridge`` and the dispatcher as
``scheduler.app.bridge``. What the bridge relies on fills in the keys the
config module leaves unset (:data:`CELERY_DEFAULTS`); ``celeryconfig.py``
documents them. ``celery -A worker_bridge`` finds :func:`default_app` through
the package's lazy ``app`` attribute.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Mapping
from typing import Any

from celery import Celery, signals

from worker_bridge.bridge import BridgeApp, ProcessBridge, build_bridge, install_default
from worker_bridge.errors import ConfigurationError
from worker_bridge.loader import JobRegistry
from worker_bridge.settings import Settings, config_module_name, read_config_module
from worker_bridge.tasks import register_job_tasks
from worker_bridge.worker_process import WorkerProcess

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
    # Workers send task events only while a monitor asks for them: Flower (its
    # enable_events option, on by default) and `celery events` switch them on by
    # themselves, within seconds. Always on, they cost about a quarter of the
    # per-job throughput (README, Performance). The dispatcher's task-sent events
    # are sent always, batched into one message per pass.
    "worker_send_task_events": False,
    "task_send_sent_event": True,
    "beat_scheduler": "worker_bridge.dispatcher:DispatcherScheduler",
    "broker_connection_retry_on_startup": True,
    # A lost broker connection leaves running jobs running (Celery 6 will cancel
    # them): their rows are claimed, so the redelivered messages are refused, and
    # cancelling would rerun every long job each time a channel closes.
    "worker_cancel_long_running_tasks_on_connection_loss": False,
    # A channel the broker closes is reopened, not fatal: RabbitMQ closes a
    # consumer's channel (PRECONDITION_FAILED) when a delivery outlives its
    # consumer_timeout, which without this stops the whole worker.
    "broker_channel_error_retry": True,
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


class BridgeCelery(Celery):  # type: ignore[misc]
    """A Celery app that carries its bridge and its worker state, one per process."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._bridges = ProcessBridge()
        self._worker_process: tuple[int, WorkerProcess] | None = None
        self._in_pool_process = False

    @property
    def bridge(self) -> BridgeApp:
        """This process's bridge, built from the app's conf on first use.

        It becomes the process default (``get_bridge()``) too, unless the
        process already has one, so that job code scheduling jobs without
        naming a bridge uses the worker's own engine.
        """
        bridge = self._bridges.get(lambda: build_bridge(Settings.from_conf(self.conf), self))
        install_default(bridge)
        return bridge

    @property
    def worker_process(self) -> WorkerProcess:
        """This process's worker state, created on first use (or at pool-process start)."""
        current = self._worker_process
        if current is None or current[0] != os.getpid():
            state = WorkerProcess(self.bridge, one_task_at_a_time=self._in_pool_process)
            self._worker_process = current = (os.getpid(), state)
        return current[1]

    def on_pool_process_start(self, **_: Any) -> None:
        """``worker_process_init``: a prefork pool process, which runs one task at a time."""
        self._in_pool_process = True
        self._worker_process = None


def create_celery_app(config_module: str | None = None) -> BridgeCelery:
    """Build the Celery app worker_bridge runs on, with one task per job type.

    The config module (``config_module``, else $CELERY_CONFIG_MODULE, else
    ``celeryconfig``) wins over the bridge's defaults: these fill in only the
    keys it leaves unset.
    """
    source = config_module or config_module_name()
    user = read_config_module(source)
    refuse_unworkable(user)
    celery = BridgeCelery("worker_bridge")
    celery.config_from_object(source)
    celery.add_defaults({key: value for key, value in CELERY_DEFAULTS.items() if key not in user})
    broker = str(celery.conf.broker_url or "")
    if _is_amqp(broker) and "confirm_publish" not in (celery.conf.broker_transport_options or {}):
        # Publisher confirms: the dispatcher commits a row as sent only once the
        # broker has taken its message (a publish the broker refuses or loses
        # raises, and the batch rolls back to pending).
        celery.conf.broker_transport_options = {
            **(celery.conf.broker_transport_options or {}),
            "confirm_publish": True,
        }
    if broker.startswith("sqla+sqlite") and not (celery.conf.broker_transport_options):
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
    signals.worker_process_init.connect(celery.on_pool_process_start, weak=False)
    signals.celeryd_init.connect(functools.partial(warn_of_consumer_timeout, celery), weak=False)
    for started in (signals.celeryd_init, signals.beat_init):
        started.connect(functools.partial(declare_embedded_queue, celery), weak=False)
    return celery


_default_app: BridgeCelery | None = None


def default_app() -> BridgeCelery:
    """The process's Celery app, built on first use (``celery -A worker_bridge``)."""
    global _default_app
    if _default_app is None:
        _default_app = create_celery_app()
    return _default_app


def declare_embedded_queue(app: Celery, sender: Any = None, **kwargs: Any) -> None:
    """Create the default queue of kombu's SQLAlchemy transport once, up front.

    The transport creates a queue's row on first use without guarding against
    a concurrent creator, so a worker and a dispatcher starting together can
    crash on a unique violation. Declaring here, where the loser of that race
    simply finds the row on a retry, spares them. Runs for the app whose
    worker or beat is starting (``sender``), not for every app of the process.
    """
    if not _is_starting(app, kwargs.get("instance") or sender):
        return
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


def _is_amqp(broker_url: str) -> bool:
    return broker_url.split("://", 1)[0] in ("amqp", "amqps", "pyamqp")


def consumer_timeout_problem(app: Celery) -> str | None:
    """Why the app's time limits outlast RabbitMQ's consumer_timeout, or None.

    RabbitMQ (3.8.15 and later) closes a consumer's channel when a delivery
    stays unacknowledged longer than ``consumer_timeout``; with
    ``task_acks_late`` a job's message is acknowledged when the job ends.
    The broker's value cannot be read over AMQP: it is RabbitMQ's documented
    default (30 minutes) unless ``worker_bridge_broker_consumer_timeout`` says
    what rabbitmq.conf sets.
    """
    if not _is_amqp(str(app.conf.broker_url or "")):
        return None
    timeout = Settings.from_conf(app.conf).broker_consumer_timeout.total_seconds()
    limit = app.conf.task_time_limit or app.conf.task_soft_time_limit
    if limit is None or float(limit) <= timeout:
        return None
    where = (
        "worker_bridge_broker_consumer_timeout"
        if app.conf.get("worker_bridge_broker_consumer_timeout") is not None
        else "RabbitMQ's default; set worker_bridge_broker_consumer_timeout if rabbitmq.conf "
        "changes it"
    )
    return (
        f"task_time_limit ({float(limit):g} s) is longer than RabbitMQ's consumer_timeout "
        f"({timeout:g} s, {where}): a job that runs longer makes RabbitMQ close its "
        "worker's channel. The job still runs once (its redelivered message is refused), "
        "but the worker reconnects and its other unacknowledged messages are redelivered. "
        f"Set 'consumer_timeout = {int(float(limit) * 1000) + 60_000}' (milliseconds) in "
        "rabbitmq.conf, or a shorter task_time_limit."
    )


def warn_of_consumer_timeout(app: Celery, sender: Any = None, **kwargs: Any) -> None:
    """``celeryd_init``: log :func:`consumer_timeout_problem` when a worker of ``app`` starts."""
    if not _is_starting(app, kwargs.get("instance")):
        return
    problem = consumer_timeout_problem(app)
    if problem is not None:
        logger.warning("worker_bridge: %s", problem)


def _is_starting(app: Celery, service: object) -> bool:
    # A worker (celeryd_init's instance) or a beat service (beat_init's sender) of ``app``.
    return getattr(service, "app", None) is app


def _forget_kombu_engines() -> None:
    from kombu.transport import sqlalchemy as kombu_sqlalchemy

    engines = getattr(kombu_sqlalchemy.Channel, "_engines", None)
    if isinstance(engines, dict):
        for engine, _session in list(engines.values()):
            engine.dispose()
        engines.clear()
