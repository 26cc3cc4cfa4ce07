"""Settings, read once from the environment and the Celery app's conf.

Connection strings come from the environment (they differ per deployment and
hold secrets); everything else lives where Celery users look for settings:
``celeryconfig.py`` / ``app.conf``, under keys prefixed ``worker_bridge_``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from worker_bridge.errors import ConfigurationError

#: The embedded default: a SQLite file in the working directory, so that a first
#: run needs no server. PostgreSQL is what production uses.
DEFAULT_DATABASE_URL = "sqlite:///worker_bridge.sqlite3"
#: The embedded broker: kombu's SQLAlchemy transport on another SQLite file.
DEFAULT_BROKER_URL = "sqla+sqlite:///worker_bridge-broker.sqlite3"
DEFAULT_JOBS_PACKAGE = "jobs"

#: Every conf key worker_bridge reads, with its default; celeryconfig.py repeats
#: them with a comment each. Durations are seconds.
CONF_DEFAULTS: dict[str, Any] = {
    "worker_bridge_stale_after": 3600.0,
    "worker_bridge_failed_retention": 7 * 24 * 3600.0,
    "worker_bridge_heartbeat_interval": 5.0,
    "worker_bridge_heartbeat_timeout": 60.0,
    "worker_bridge_redispatch_after": 60.0,
    "worker_bridge_dispatch_batch_size": 500,
    "worker_bridge_max_interval": 5.0,
    "worker_bridge_max_in_flight": 5000,
    "worker_bridge_max_data_bytes": 1024 * 1024,
    "worker_bridge_max_result_bytes": 1024 * 1024,
}


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything worker_bridge is configured with, validated.

    Build it with :meth:`from_conf`; tests build it directly.
    """

    #: SQLAlchemy URL of the database that holds ``worker_jobs``.
    #: Not in repr(): it may hold a password, and reprs end up in logs.
    database_url: str = field(default=DEFAULT_DATABASE_URL, repr=False)
    #: Importable package whose modules are the job types.
    jobs_package: str = DEFAULT_JOBS_PACKAGE
    #: Zone in which cron expressions are evaluated (the Celery ``timezone``).
    timezone: str = "UTC"
    #: A started, unfinished job older than this counts as pending again.
    stale_after: timedelta = timedelta(hours=1)
    #: How long failed and cancelled rows are kept before removal.
    failed_retention: timedelta = timedelta(days=7)
    #: How often a worker refreshes the heartbeat of the jobs it runs.
    heartbeat_interval: timedelta = timedelta(seconds=5)
    #: A running job whose heartbeat is older than this is run again.
    heartbeat_timeout: timedelta = timedelta(seconds=60)
    #: A dispatched job not started within this long is sent again.
    redispatch_after: timedelta = timedelta(seconds=60)
    #: Most rows the dispatcher moves to the broker in one transaction.
    dispatch_batch_size: int = 500
    #: Longest the dispatcher sleeps when nothing is due sooner.
    max_interval: timedelta = timedelta(seconds=5)
    #: Most rows sent and not yet started at once; the backlog beyond waits in the table.
    max_in_flight: int = 5000
    #: Largest serialized ``data`` accepted by the scheduling API, in bytes.
    max_data_bytes: int = 1024 * 1024
    #: Largest serialized ``result`` stored; a larger one fails the job.
    max_result_bytes: int = 1024 * 1024

    def __post_init__(self) -> None:
        for name in (
            "stale_after",
            "heartbeat_interval",
            "heartbeat_timeout",
            "redispatch_after",
            "max_interval",
            "failed_retention",
        ):
            value = getattr(self, name)
            if value <= timedelta(0):
                raise ConfigurationError(f"worker_bridge_{name} must be positive, got {value}")
        for name in ("dispatch_batch_size", "max_in_flight", "max_data_bytes", "max_result_bytes"):
            if getattr(self, name) < 1:
                raise ConfigurationError(f"worker_bridge_{name} must be at least 1")
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
    def from_conf(
        cls, conf: Mapping[str, Any], environ: Mapping[str, str] | None = None
    ) -> Settings:
        """Read settings from a Celery conf mapping and the environment."""
        env = os.environ if environ is None else environ

        def get(key: str) -> Any:
            value = conf.get(key)
            return CONF_DEFAULTS[key] if value is None else value

        def seconds(key: str) -> timedelta:
            value = get(key)
            if isinstance(value, timedelta):
                return value
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigurationError(f"{key} must be a number of seconds, got {value!r}")
            return timedelta(seconds=value)

        def integer(key: str) -> int:
            value = get(key)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigurationError(f"{key} must be an int, got {value!r}")
            return value

        return cls(
            database_url=env.get("WORKER_BRIDGE_DATABASE_URL") or DEFAULT_DATABASE_URL,
            jobs_package=env.get("WORKER_BRIDGE_JOBS") or DEFAULT_JOBS_PACKAGE,
            timezone=str(conf.get("timezone") or "UTC"),
            stale_after=seconds("worker_bridge_stale_after"),
            failed_retention=seconds("worker_bridge_failed_retention"),
            heartbeat_interval=seconds("worker_bridge_heartbeat_interval"),
            heartbeat_timeout=seconds("worker_bridge_heartbeat_timeout"),
            redispatch_after=seconds("worker_bridge_redispatch_after"),
            dispatch_batch_size=integer("worker_bridge_dispatch_batch_size"),
            max_interval=seconds("worker_bridge_max_interval"),
            max_in_flight=integer("worker_bridge_max_in_flight"),
            max_data_bytes=integer("worker_bridge_max_data_bytes"),
            max_result_bytes=integer("worker_bridge_max_result_bytes"),
        )
