"""Settings, read once from the environment and the Celery app's conf.

Connection strings come from the environment (they differ per deployment and
hold secrets); everything else lives where Celery users look for settings:
``celeryconfig.py`` / ``app.conf``, under keys prefixed ``worker_bridge_``.
Each default is declared once, on the :class:`Settings` field; the conf key of
field ``x`` is ``worker_bridge_x``, and ``celeryconfig.py`` documents them.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from worker_bridge.errors import ConfigurationError

#: The embedded default: a SQLite file in the working directory, so that a first
#: run needs no server. PostgreSQL is what production uses.
DEFAULT_DATABASE_URL = "sqlite:///worker_bridge.sqlite3"
DEFAULT_JOBS_PACKAGE = "jobs"
#: Prefix of every conf key worker_bridge reads.
CONF_PREFIX = "worker_bridge_"


#: Marks a field read from the conf key ``worker_bridge_<name>``.
_CONF = {"conf": True}


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything worker_bridge is configured with, validated.

    Build it with :meth:`from_conf`; tests build it directly.
    """

    #: SQLAlchemy URL of the database that holds ``worker_jobs``
    #: ($WORKER_BRIDGE_DATABASE_URL). Not in repr(): it may hold a password,
    #: and reprs end up in logs.
    database_url: str = field(default=DEFAULT_DATABASE_URL, repr=False)
    #: Importable package whose modules are the job types ($WORKER_BRIDGE_JOBS).
    jobs_package: str = DEFAULT_JOBS_PACKAGE
    #: Zone in which cron expressions are evaluated (the Celery ``timezone``).
    timezone: str = "UTC"
    #: A started, unfinished job older than this counts as pending again.
    stale_after: timedelta = field(default=timedelta(hours=1), metadata=_CONF)
    #: How long failed and cancelled rows are kept before removal.
    failed_retention: timedelta = field(default=timedelta(days=7), metadata=_CONF)
    #: How often a worker refreshes the heartbeat of the jobs it runs.
    heartbeat_interval: timedelta = field(default=timedelta(seconds=3), metadata=_CONF)
    #: A running job whose heartbeat is older than this is run again. Short, so
    #: that a dead worker's jobs run again within seconds; a process stalled
    #: longer (a suspended VM, a long pause) has its job run again elsewhere,
    #: and its own late writes refused.
    heartbeat_timeout: timedelta = field(default=timedelta(seconds=15), metadata=_CONF)
    #: A dispatched job not started within this long is sent again.
    redispatch_after: timedelta = field(default=timedelta(seconds=60), metadata=_CONF)
    #: Most rows the dispatcher moves to the broker in one transaction.
    dispatch_batch_size: int = field(default=500, metadata=_CONF)
    #: Longest the dispatcher sleeps when nothing is due sooner.
    max_interval: timedelta = field(default=timedelta(seconds=5), metadata=_CONF)
    #: Most rows sent and not yet started at once; the backlog beyond waits in the table.
    max_in_flight: int = field(default=5000, metadata=_CONF)
    #: How long an operation keeps retrying while the database is unreachable
    #: (a restart, a failover) before it raises DatabaseUnavailableError.
    reconnect_patience: timedelta = field(default=timedelta(seconds=10), metadata=_CONF)
    #: RabbitMQ's ``consumer_timeout`` as rabbitmq.conf sets it (its default, 30
    #: minutes, otherwise): a worker warns at start when a time limit outlasts it.
    broker_consumer_timeout: timedelta = field(default=timedelta(minutes=30), metadata=_CONF)
    #: Largest serialized ``data`` accepted by the scheduling API, in bytes.
    max_data_bytes: int = field(default=1024 * 1024, metadata=_CONF)
    #: Largest serialized ``result`` stored; a larger one fails the job.
    max_result_bytes: int = field(default=1024 * 1024, metadata=_CONF)

    def __post_init__(self) -> None:
        for spec in fields(self):
            if not spec.metadata.get("conf"):
                continue
            value = getattr(self, spec.name)
            if isinstance(value, timedelta) and value <= timedelta(0):
                raise ConfigurationError(f"{CONF_PREFIX}{spec.name} must be positive, got {value}")
            if isinstance(value, int) and value < 1:
                raise ConfigurationError(f"{CONF_PREFIX}{spec.name} must be at least 1")
        if self.heartbeat_interval >= self.heartbeat_timeout:
            raise ConfigurationError(
                "worker_bridge_heartbeat_interval must be shorter than "
                "worker_bridge_heartbeat_timeout, or live jobs would be recovered"
            )
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ConfigurationError(f"unknown timezone {self.timezone!r}") from exc

    @classmethod
    def from_config_module(cls, source: str | object | None = None) -> Settings:
        """Read settings from a Celery config module (default: $CELERY_CONFIG_MODULE or
        ``celeryconfig``) and the environment, without building a Celery app."""
        return cls.from_conf(read_config_module(source))

    @classmethod
    def from_conf(
        cls, conf: Mapping[str, Any], environ: Mapping[str, str] | None = None
    ) -> Settings:
        """Read settings from a Celery conf mapping and the environment.

        A key that is absent or None keeps the field's default. Durations are
        seconds (a number) or a timedelta.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for spec in fields(cls):
            if not spec.metadata.get("conf"):
                continue
            key = CONF_PREFIX + spec.name
            value = conf.get(key)
            if value is None:
                continue
            if isinstance(spec.default, timedelta):
                values[spec.name] = _seconds(key, value)
            else:
                if isinstance(value, bool) or not isinstance(value, int):
                    raise ConfigurationError(f"{key} must be an int, got {value!r}")
                values[spec.name] = value
        return cls(
            database_url=env.get("WORKER_BRIDGE_DATABASE_URL") or DEFAULT_DATABASE_URL,
            jobs_package=env.get("WORKER_BRIDGE_JOBS") or DEFAULT_JOBS_PACKAGE,
            timezone=str(conf.get("timezone") or "UTC"),
            **values,
        )


def conf_defaults() -> dict[str, Any]:
    """Every ``worker_bridge_*`` conf key with its default (durations as seconds)."""
    defaults: dict[str, Any] = {}
    for spec in fields(Settings):
        if spec.metadata.get("conf"):
            value = spec.default
            defaults[CONF_PREFIX + spec.name] = (
                value.total_seconds() if isinstance(value, timedelta) else value
            )
    return defaults


def _seconds(key: str, value: object) -> timedelta:
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationError(f"{key} must be a number of seconds, got {value!r}")
    return timedelta(seconds=value)


def config_module_name() -> str:
    """The Celery config module this process uses: $CELERY_CONFIG_MODULE, else ``celeryconfig``."""
    return os.environ.get("CELERY_CONFIG_MODULE") or "celeryconfig"


def read_config_module(source: str | object | None = None) -> dict[str, Any]:
    """What a Celery config module (or object, or mapping) itself sets.

    Read the way Celery's loader reads one: its public attributes. ``None``
    means :func:`config_module_name`.
    """
    if source is None:
        source = config_module_name()
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
