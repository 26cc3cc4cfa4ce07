"""Settings, read once from the environment and the Celery app's conf.

Connection strings come from the environment (they differ per deployment and
hold secrets); everything else lives where Celery users look for settings:
``celeryconfig.py`` / ``app.conf``, under keys prefixed ``worker_bridge_``.
Each default is declared once, on the :class:`Settings` field; the conf key of
field ``x`` is ``worker_bridge_x``, and ``celeryconfig.py`` documents them.
"""

from __future__ import annotations

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


def _conf(default: Any, **kwargs: Any) -> Any:
    # A field read from the conf key worker_bridge_<name>.
    return field(default=default, metadata={"conf": True}, **kwargs)


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
    stale_after: timedelta = _conf(timedelta(hours=1))
    #: How long failed and cancelled rows are kept before removal.
    failed_retention: timedelta = _conf(timedelta(days=7))
    #: How often a worker refreshes the heartbeat of the jobs it runs.
    heartbeat_interval: timedelta = _conf(timedelta(seconds=5))
    #: A running job whose heartbeat is older than this is run again.
    heartbeat_timeout: timedelta = _conf(timedelta(seconds=60))
    #: A dispatched job not started within this long is sent again.
    redispatch_after: timedelta = _conf(timedelta(seconds=60))
    #: Most rows the dispatcher moves to the broker in one transaction.
    dispatch_batch_size: int = _conf(500)
    #: Longest the dispatcher sleeps when nothing is due sooner.
    max_interval: timedelta = _conf(timedelta(seconds=5))
    #: Most rows sent and not yet started at once; the backlog beyond waits in the table.
    max_in_flight: int = _conf(5000)
    #: Largest serialized ``data`` accepted by the scheduling API, in bytes.
    max_data_bytes: int = _conf(1024 * 1024)
    #: Largest serialized ``result`` stored; a larger one fails the job.
    max_result_bytes: int = _conf(1024 * 1024)

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
