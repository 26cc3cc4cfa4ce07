"""How the dispatcher waits: LISTEN/NOTIFY on PostgreSQL, a plain sleep elsewhere.

The store of each database picks one (``Store.waiter``).

Inserting into ``worker_jobs`` fires ``NOTIFY worker_jobs`` (a trigger of the
first migration), so a dispatcher waiting here wakes within milliseconds of a
job being scheduled, instead of at its next poll.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Protocol

import psycopg
from sqlalchemy import Engine

logger = logging.getLogger(__name__)

CHANNEL = "worker_jobs"


class Waiter(Protocol):
    """Blocks until work may be there, or a timeout passes."""

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds; True if woken by a notification."""

    def close(self) -> None:
        """Release the connection, if any."""


class SleepWaiter:
    """Polling (SQLite has no notifications): sleeps at most ``poll`` seconds."""

    def __init__(self, poll: float = 1.0) -> None:
        self.poll = poll

    def wait(self, timeout: float) -> bool:
        time.sleep(min(max(timeout, 0.0), self.poll))
        return False

    def close(self) -> None:
        pass


class ListenWaiter:
    """Waits on ``LISTEN worker_jobs`` over a dedicated autocommit connection.

    A lost connection is reopened on the next wait; until then (and while the
    server is down) it sleeps, so the dispatcher degrades to polling.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._connection: psycopg.Connection[Any] | None = None

    def _connect(self) -> psycopg.Connection[Any]:
        if self._connection is None or self._connection.closed:
            url = self._engine.url.set(drivername="postgresql")
            conninfo = url.render_as_string(hide_password=False)
            self._connection = psycopg.connect(conninfo, autocommit=True)
            self._connection.execute(f"LISTEN {CHANNEL}")
        return self._connection

    def wait(self, timeout: float) -> bool:
        if timeout <= 0:
            return False
        deadline = time.monotonic() + timeout
        try:
            connection = self._connect()
            woke = False
            for _ in connection.notifies(timeout=timeout, stop_after=1):
                woke = True
            if woke:
                # Fold the burst that usually follows into this one wake-up.
                for _ in connection.notifies(timeout=0.0):
                    pass
            return woke
        except psycopg.Error as exc:
            logger.warning("LISTEN %s failed (%s); polling until it reconnects", CHANNEL, exc)
            self.close()
            time.sleep(max(0.0, min(deadline - time.monotonic(), 1.0)))
            return False

    def close(self) -> None:
        if self._connection is not None:
            try:
                self._connection.close()
            finally:
                self._connection = None
