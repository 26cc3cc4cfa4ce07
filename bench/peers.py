"""The peers of item 8: procrastinate and pgqueuer, PostgreSQL-backed job queues.

Each drains the same N no-op jobs as item 2, on a database of its own
(``<bench database>_<peer>``, created empty, its schema installed by the
library's own installer, dropped afterwards), and every job does the same one
Redis round trip as the bridge's no-op (``bench.jobs.noop``) and bare Celery's
(``bench.bare_app``): an ``INCR`` of a counter, which the benchmark polls.
Neither library is a dependency of the project: ``pip install -e '.[bench]'``
adds them, and a peer that is not installed gets an "n/a" line saying so.

How a drain is timed, the same for both:

1. ``PROCESSES`` worker processes start (``python -m bench.peer_worker PEER``),
   each drains a few warm-up jobs (imports, connections, the task's first run),
   pushes its pid to ``READY_KEY`` and blocks on ``GO_KEY``.
2. The benchmark writes the N jobs into the peer's queue table, samples CPU,
   notes T0 and pushes one "go" per process.
3. Each process drains the queue in the library's own drain mode (it stops
   when the queue is empty) and pushes to ``DRAINED_KEY``; jobs/s is N over T0
   to the moment the counter reaches N, CPU is sampled once both processes
   have drained (their last completion records written).

Concurrency: two processes, as worker_bridge's two prefork pool processes, each
with the library's own default where that is bounded:

- procrastinate: ``concurrency=1`` per worker (its default: one job at a time,
  as a prefork pool process), async task, ``listen_notify`` on (its default),
  its psycopg connector;
- pgqueuer: on asyncpg, its first driver (its psycopg driver stalled about a
  second per dequeue cycle here: it waits up to 1 s for notifications on the
  connection its dequeues use),
  batches of 10 (its default), at most 20 jobs in flight per process: its
  default is unbounded, which with jobs already waiting dequeues the whole
  table into one process; 20 is the least it accepts for batches of 10.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from importlib import metadata
from typing import Any, Protocol

import redis.asyncio as aioredis

#: The counter every peer job increments; deleted before the measured drain.
COUNTER_KEY = "worker_bridge_bench:peer:done"
#: Gate keys: ready after warm-up, go for the measured drain, drained after it.
READY_KEY = "worker_bridge_bench:peer:ready"
GO_KEY = "worker_bridge_bench:peer:go"
DRAINED_KEY = "worker_bridge_bench:peer:drained"
#: The environment variable a peer worker process finds its database's libpq URL in.
DSN_VARIABLE = "WORKER_BRIDGE_BENCH_PEER_DSN"
#: Worker processes per peer (worker_bridge runs 2 prefork pool processes).
PROCESSES = 2
TASK_NAME = "bench_noop"
QUEUE = "bench"
#: Jobs per insert statement while filling a queue (not measured).
ENQUEUE_CHUNK = 1_000
PROCRASTINATE_CONCURRENCY = 1
PGQUEUER_BATCH = 10
PGQUEUER_IN_FLIGHT = 2 * PGQUEUER_BATCH

Drain = Callable[[], Awaitable[None]]

_counter: aioredis.Redis | None = None


async def _incr() -> None:
    # The jobs' one Redis round trip.
    assert _counter is not None, "the worker's Redis client is set before any drain"
    await _counter.incr(COUNTER_KEY)


class Peer(Protocol):
    #: The import name, which is also the distribution's.
    name: str
    #: Its concurrency, as the table shows it.
    how: str
    #: What it needs installed.
    modules: tuple[str, ...]

    async def install(self, dsn: str) -> None: ...

    async def enqueue(self, dsn: str, first: int, count: int) -> None: ...

    def drainer(self, dsn: str) -> Any:
        """An async context manager yielding one :data:`Drain`, its connections open."""
        ...


class Procrastinate:
    name = "procrastinate"
    modules: tuple[str, ...] = ("procrastinate",)
    how = f"{PROCESSES} processes x concurrency {PROCRASTINATE_CONCURRENCY}"

    def _app(self, dsn: str) -> Any:
        from procrastinate import App, PsycopgConnector

        app = App(connector=PsycopgConnector(conninfo=dsn))

        @app.task(name=TASK_NAME, queue=QUEUE)
        async def noop(i: int = 0) -> None:
            await _incr()

        return app

    async def install(self, dsn: str) -> None:
        app = self._app(dsn)
        async with app.open_async():
            await app.schema_manager.apply_schema_async()

    async def enqueue(self, dsn: str, first: int, count: int) -> None:
        app = self._app(dsn)
        async with app.open_async():
            task = app.tasks[TASK_NAME]
            for start in range(first, first + count, ENQUEUE_CHUNK):
                stop = min(start + ENQUEUE_CHUNK, first + count)
                await task.batch_defer_async(*({"i": i} for i in range(start, stop)))

    @asynccontextmanager
    async def drainer(self, dsn: str) -> AsyncIterator[Drain]:
        app = self._app(dsn)
        async with app.open_async():

            async def drain() -> None:
                await app.run_worker_async(
                    queues=[QUEUE],
                    concurrency=PROCRASTINATE_CONCURRENCY,
                    wait=False,
                    install_signal_handlers=False,
                )

            yield drain


class PgQueuer:
    name = "pgqueuer"
    modules: tuple[str, ...] = ("pgqueuer", "asyncpg")
    how = (
        f"{PROCESSES} processes x batches of {PGQUEUER_BATCH}, "
        f"<= {PGQUEUER_IN_FLIGHT} in flight"
    )

    async def _connect(self, dsn: str) -> Any:
        # asyncpg, pgqueuer's first driver: its psycopg driver waits for
        # notifications holding the connection, which stalls dequeues up to 1 s.
        asyncpg: Any = importlib.import_module("asyncpg")  # untyped
        return await asyncpg.connect(dsn)

    @asynccontextmanager
    async def _queries(self, dsn: str) -> AsyncIterator[Any]:
        from pgqueuer import Queries

        connection = await self._connect(dsn)
        try:
            yield Queries.from_asyncpg_connection(connection)
        finally:
            await connection.close()

    async def install(self, dsn: str) -> None:
        async with self._queries(dsn) as queries:
            await queries.install()

    async def enqueue(self, dsn: str, first: int, count: int) -> None:
        async with self._queries(dsn) as queries:
            for start in range(first, first + count, ENQUEUE_CHUNK):
                size = min(ENQUEUE_CHUNK, first + count - start)
                await queries.enqueue(
                    [TASK_NAME] * size,
                    [str(i).encode() for i in range(start, start + size)],
                    [0] * size,
                )

    @asynccontextmanager
    async def drainer(self, dsn: str) -> AsyncIterator[Drain]:
        from pgqueuer import QueueManager
        from pgqueuer.types import QueueExecutionMode

        # A queue manager and its driver stop for good at the end of a drain:
        # one connection per drain, as `pgq run` opens one per run.
        async with self._queries(dsn) as queries:
            manager = QueueManager(queries)

            @manager.entrypoint(TASK_NAME)
            async def noop(job: Any) -> None:
                await _incr()

            async def drain() -> None:
                await manager.run(
                    batch_size=PGQUEUER_BATCH,
                    mode=QueueExecutionMode.drain,
                    max_concurrent_tasks=PGQUEUER_IN_FLIGHT,
                )

            yield drain


PEERS: dict[str, Peer] = {peer.name: peer for peer in (Procrastinate(), PgQueuer())}


def missing(peer: Peer) -> str | None:
    """Why ``peer`` cannot run here, or None."""
    for module in peer.modules:
        if importlib.util.find_spec(module) is None:
            return f"{module} not installed: pip install -e '.[bench]'"
    return None


def version(peer: Peer) -> str | None:
    try:
        return metadata.version(peer.name)
    except metadata.PackageNotFoundError:
        return None


async def _work(peer: Peer, dsn: str, redis_url: str) -> None:
    global _counter
    _counter = aioredis.Redis.from_url(redis_url)
    gate = aioredis.Redis.from_url(redis_url)
    async with peer.drainer(dsn) as drain:
        await drain()  # the warm-up jobs
    async with peer.drainer(dsn) as drain:
        await gate.rpush(READY_KEY, os.getpid())
        await gate.blpop([GO_KEY], timeout=0)
        await drain()
        await gate.rpush(DRAINED_KEY, os.getpid())
        # Kept alive, connections open, until the benchmark has sampled CPU and
        # stops the process group.
        await asyncio.Event().wait()


def main(argv: list[str]) -> int:
    """``python -m bench.peer_worker PEER``: one worker process of item 8, on the
    database ``$WORKER_BRIDGE_BENCH_PEER_DSN`` (not an argument: ``ps`` shows those)."""
    dsn = os.environ.get(DSN_VARIABLE)
    if len(argv) != 1 or argv[0] not in PEERS or not dsn:
        print(f"usage: {DSN_VARIABLE}=DSN python -m bench.peer_worker {{{','.join(PEERS)}}}",
              file=sys.stderr)
        return 2
    asyncio.run(_work(PEERS[argv[0]], dsn, os.environ["CELERY_BROKER_URL"]))
    return 0
