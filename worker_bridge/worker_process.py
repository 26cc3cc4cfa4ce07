"""What one worker process keeps across its attempts: a connection and the heartbeat.

One :class:`WorkerProcess` per process and bridge, created when Celery starts
a pool process (``worker_process_init``) or on first use in other pools; it
replaces what used to be module globals, so a test or a second bridge in the
same process gets its own.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime

from sqlalchemy import Connection

from worker_bridge.bridge import BridgeApp
from worker_bridge.heartbeat import Heartbeat


class WorkerProcess:
    """Per-process worker state: the kept connection, the heartbeat, the pool's kind."""

    def __init__(self, bridge: BridgeApp, *, one_task_at_a_time: bool) -> None:
        #: The bridge the process's attempts run on.
        self.bridge = bridge
        #: True in a prefork pool process, which runs one task at a time.
        self.one_task_at_a_time = one_task_at_a_time
        #: Keeps the heartbeat of the attempts this process runs.
        self.heartbeat = Heartbeat(
            self._write_heartbeats, bridge.settings.heartbeat_interval.total_seconds()
        )
        self._kept: Connection | None = None

    @contextmanager
    def connection(self) -> Iterator[Connection]:
        """An autocommit connection for one write of the running attempt.

        A prefork pool process runs one task at a time, so it keeps one
        connection for its claims and finishes rather than taking one from the
        pool for each: two checkouts per job cost about as much CPU as the two
        statements. Any error drops the kept connection (a broken one is not
        reused). Other pools run tasks in several threads of one process and
        use the pool as usual.
        """
        if not self.one_task_at_a_time:
            with self.bridge.autocommit.begin() as connection:
                yield connection
            return
        if self._kept is None:
            self._kept = self.bridge.autocommit.connect()
        connection = self._kept
        try:
            yield connection
            connection.commit()
        except BaseException:
            self._kept = None
            connection.close()
            raise

    def _write_heartbeats(self, attempts: Sequence[tuple[int, str]], now: datetime) -> set[int]:
        with self.bridge.autocommit.begin() as connection:
            return self.bridge.store.refresh_heartbeats(connection, attempts, now=now)

    def close(self) -> None:
        """Release the kept connection."""
        if self._kept is not None:
            self._kept.close()
            self._kept = None
