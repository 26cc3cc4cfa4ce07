"""The bridge: settings, engines, the store and the job types, in one value passed explicitly.

Jobs receive it as ``params.app``; the scheduling API, the dispatcher and the
task wrapper are handed one. In a worker it is the Celery app's own
(``app.bridge``, see ``celery_app``). Application code that schedules jobs
without passing one gets the process default, :func:`get_bridge`, built on
first use from the Celery config module and the environment, without
building a Celery app or importing a job module.

A database connection must never cross a fork: a bridge inherited by a forked
child is dropped (without closing the parent's sockets) and built anew there.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import InitVar, dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from worker_bridge.db import create_session_factory, safe_url
from worker_bridge.errors import DatabaseUnavailableError
from worker_bridge.loader import JobRegistry
from worker_bridge.settings import Settings
from worker_bridge.store import Store, store_for

if TYPE_CHECKING:
    from celery import Celery

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class BridgeApp:
    """What a job (and worker_bridge itself) needs to reach the world."""

    #: Validated settings.
    settings: Settings
    #: Engine of the database that holds ``worker_jobs`` (and the application's tables).
    engine: Engine
    #: Sessions on ``engine``; objects stay readable after commit.
    session_factory: sessionmaker[Session]
    #: The Celery app the jobs run under; None in a process that built no Celery app.
    celery: Celery | None = None
    #: The job types of ``settings.jobs_package``.
    jobs: JobRegistry = field(init=False)
    #: The queries of ``engine``'s database.
    store: Store = field(init=False)
    #: An autocommit engine on the same database, for writes that are one
    #: statement. Built by :meth:`from_settings`; when not given, ``engine``'s
    #: own pool is used in autocommit mode.
    autocommit_engine: InitVar[Engine | None] = None
    #: The engine for single-statement writes (see ``autocommit_engine``).
    autocommit: Engine = field(init=False)

    def __post_init__(self, autocommit_engine: Engine | None) -> None:
        store = store_for(self.engine)
        object.__setattr__(self, "store", store)
        registry = JobRegistry(
            self.settings.jobs_package,
            max_time_limit=self.settings.stale_after.total_seconds(),
        )
        object.__setattr__(self, "jobs", registry)
        if autocommit_engine is None:
            autocommit_engine = store.autocommit_view(self.engine)
        object.__setattr__(self, "autocommit", autocommit_engine)

    @classmethod
    def from_settings(
        cls, settings: Settings, *, celery: Celery | None = None, **engine_options: Any
    ) -> BridgeApp:
        """Build the bridge, creating its engines for ``settings.database_url``."""
        store = store_for(settings.database_url)
        engine = store.create_engine(settings.database_url, **engine_options)
        return cls(
            settings=settings,
            engine=engine,
            session_factory=create_session_factory(engine),
            celery=celery,
            autocommit_engine=store.autocommit_engine(engine, **engine_options),
        )

    def reconnecting(self, what: str, work: Callable[[], T], patience: float | None = None) -> T:
        """Run ``work``, running it again while the database cannot be reached.

        Only a lost or refused connection is retried (``Store.is_disconnect``):
        the dead connection is dropped with the rest of the pool, and the next
        try takes a new one, at once, then after growing pauses. Call it only
        for work that is safe to run twice (see the README: a lost reply may
        hide a commit). After ``patience`` seconds (default
        ``settings.reconnect_patience``) it raises DatabaseUnavailableError,
        naming the database with its password masked.
        """
        if patience is None:
            patience = self.settings.reconnect_patience.total_seconds()
        deadline = time.monotonic() + patience
        delay = 0.0
        tries = 0
        while True:
            try:
                return work()
            except DBAPIError as exc:
                if not self.store.is_disconnect(exc):
                    raise
                tries += 1
                reason = str(exc.orig or exc).strip().splitlines()[0]
                # The first retry is immediate, whatever the patience: a
                # connection that died idle in the pool needs nothing more.
                remaining = deadline - time.monotonic()
                if tries > 1 and remaining <= 0:
                    where = safe_url(self.settings.database_url)
                    raise DatabaseUnavailableError(
                        f"cannot reach the database at {where} ({what}; tried {tries} times "
                        f"in {patience:g} s, worker_bridge_reconnect_patience): {reason}"
                    ) from exc
                pause = min(delay, max(remaining, 0.0))
                # The immediate retry is routine after a restart: no warning for it.
                logger.log(
                    logging.INFO if tries == 1 else logging.WARNING,
                    "%s: database unreachable (%s); retrying in %.1fs",
                    what,
                    reason,
                    pause,
                )
                time.sleep(pause)
                delay = min(max(delay * 2, 0.1), 5.0)

    def dispose(self, close: bool = True) -> None:
        """Close the engines' pooled connections (``close=False``: forget them, after a fork)."""
        self.engine.dispose(close=close)
        if self.autocommit.pool is not self.engine.pool:
            self.autocommit.dispose(close=close)


class ProcessBridge:
    """One bridge per process, built on first use by ``build``; rebuilt in a forked child."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._bridge: BridgeApp | None = None
        self._pid: int | None = None

    def get(self, build: Callable[[], BridgeApp]) -> BridgeApp:
        """This process's bridge, built with ``build()`` (a BridgeApp factory) if it has none."""
        bridge = self._bridge
        if bridge is not None and self._pid == os.getpid():
            return bridge
        with self._lock:
            if self._bridge is None or self._pid != os.getpid():
                if self._bridge is not None:
                    # Inherited across fork: drop the parent's pooled connections
                    # without closing the sockets the parent still uses.
                    self._bridge.dispose(close=False)
                self._bridge = build()
                self._pid = os.getpid()
            return self._bridge

    def current(self) -> BridgeApp | None:
        """The bridge built in this process, if any."""
        return self._bridge if self._pid == os.getpid() else None

    def set(self, bridge: BridgeApp | None) -> None:
        """Replace this process's bridge (None: build anew on next use)."""
        with self._lock:
            self._bridge = bridge
            self._pid = os.getpid() if bridge is not None else None


def build_bridge(settings: Settings, celery: Celery | None = None) -> BridgeApp:
    """A bridge for ``settings``, its table created first where the store does that on use."""
    bridge = BridgeApp.from_settings(settings, celery=celery)
    bridge.store.ensure_schema(bridge.engine)
    return bridge


_default = ProcessBridge()


def get_bridge() -> BridgeApp:
    """The process's default bridge, for callers that pass none.

    In a worker it is the Celery app's bridge (installed by the app when it
    builds it); elsewhere it is built on first use from the Celery config
    module and the environment.
    """
    return _default.get(lambda: build_bridge(Settings.from_config_module()))


def set_bridge(bridge: BridgeApp | None) -> None:
    """Replace the process's default bridge (tests, or applications that build their own)."""
    _default.set(bridge)


def install_default(bridge: BridgeApp) -> None:
    """Make ``bridge`` the process default unless this process already has one."""
    _default.get(lambda: bridge)
