"""The bootstrapped application: settings, engine, sessions, Celery app, job types.

Jobs receive it as ``params.app``. One is built per process on first use
(:func:`get_bridge`); a forked worker child builds its own, since a database
connection must never cross a fork.
"""

from __future__ import annotations

import os
import threading
from dataclasses import InitVar, dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from worker_bridge.db import autocommit_engine, create_db_engine, create_session_factory
from worker_bridge.loader import JobRegistry
from worker_bridge.settings import Settings

if TYPE_CHECKING:
    from celery import Celery


@dataclass(frozen=True)
class BridgeApp:
    """What a job (and worker_bridge itself) needs to reach the world."""

    #: Validated settings.
    settings: Settings
    #: Engine of the database that holds ``worker_jobs`` (and the application's tables).
    engine: Engine
    #: Sessions on ``engine``; objects stay readable after commit.
    session_factory: sessionmaker[Session]
    #: The Celery app the jobs run under, or None outside Celery.
    celery: Celery | None = None
    #: The job types of ``settings.jobs_package``.
    jobs: JobRegistry = field(init=False)
    #: An autocommit engine on the same database, for writes that are one
    #: statement. Built by :meth:`from_settings`; when not given, ``engine``
    #: itself is used in autocommit mode.
    autocommit_engine: InitVar[Engine | None] = None
    #: The engine for single-statement writes (see ``autocommit_engine``).
    autocommit: Engine = field(init=False)

    def __post_init__(self, autocommit_engine: Engine | None) -> None:
        object.__setattr__(self, "jobs", JobRegistry(self.settings.jobs_package))
        if autocommit_engine is None:
            autocommit_engine = (
                self.engine
                if self.engine.dialect.name == "sqlite"
                else self.engine.execution_options(isolation_level="AUTOCOMMIT")
            )
        object.__setattr__(self, "autocommit", autocommit_engine)

    @classmethod
    def from_settings(
        cls, settings: Settings, *, celery: Celery | None = None, **engine_options: Any
    ) -> BridgeApp:
        """Build the app, creating an engine for ``settings.database_url``."""
        engine = create_db_engine(settings.database_url, **engine_options)
        return cls(
            settings=settings,
            engine=engine,
            session_factory=create_session_factory(engine),
            celery=celery,
            autocommit_engine=autocommit_engine(engine, **engine_options),
        )

    def dispose(self, close: bool = True) -> None:
        """Close the engines' pooled connections (``close=False``: forget them, after a fork)."""
        self.engine.dispose(close=close)
        if self.autocommit.pool is not self.engine.pool:
            self.autocommit.dispose(close=close)


_lock = threading.Lock()
_bridge: BridgeApp | None = None
_bridge_pid: int | None = None


def get_bridge() -> BridgeApp:
    """The process's BridgeApp, built from the Celery app's conf on first use."""
    global _bridge, _bridge_pid
    bridge = _bridge
    if bridge is not None and _bridge_pid == os.getpid():
        return bridge
    with _lock:
        if _bridge is None or _bridge_pid != os.getpid():
            if _bridge is not None:
                # Inherited across fork: drop the parent's pooled connections
                # without closing the sockets the parent still uses.
                _bridge.dispose(close=False)
            from worker_bridge.celery_app import app as celery

            _bridge = BridgeApp.from_settings(Settings.from_conf(celery.conf), celery=celery)
            _bridge_pid = os.getpid()
            if _bridge.engine.dialect.name == "sqlite":
                ensure_embedded_schema(_bridge.engine)
        return _bridge


def ensure_embedded_schema(engine: Engine) -> None:
    """Create or migrate the table of the embedded SQLite default on first use.

    A first run needs nothing but ``pip install``; on PostgreSQL migrations
    stay an explicit step (``worker-bridge db upgrade``).
    """
    import logging

    # Alembic narrates every check (and its plugins, at import) at INFO; a
    # worker's log is no place for it.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    from worker_bridge.migrations import upgrade_database
    try:
        upgrade_database(engine)
    except OperationalError:
        # Another process of the same start-up (worker -B forks several)
        # created the table between our check and our CREATE: it is there now.
        upgrade_database(engine)


def set_bridge(bridge: BridgeApp | None) -> None:
    """Replace the process's BridgeApp (tests, or applications that build their own)."""
    global _bridge, _bridge_pid
    with _lock:
        _bridge = bridge
        _bridge_pid = os.getpid() if bridge is not None else None
