"""What the measurements run on: databases, a Redis database, processes.

Everything here is created by the benchmark and removed by it, also on errors
and Ctrl-C: the databases are dropped (the bench's own and each peer's of item
8), the Redis database flushed, and every process stopped by process group (a
prefork worker's pool children share it).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from worker_bridge.bridge import BridgeApp, set_bridge
from worker_bridge.migrations import upgrade_database
from worker_bridge.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
ADMIN_URL = os.environ.get(
    "WORKER_BRIDGE_BENCH_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("WORKER_BRIDGE_BENCH_REDIS_URL", "redis://127.0.0.1:6379")
JOBS_PACKAGE = "bench.jobs"
#: The key the test suite claims a Redis database number with: holding it keeps
#: a concurrent ``pytest`` run off the benchmark's database, and the other way round.
CLAIM_KEY = "worker_bridge:test-run"
CLAIM_SECONDS = 4 * 3600
#: application_name of the bench's own polling connections: left out of the CPU
#: accounting, which counts the system measured, not the measuring.
MONITOR_APPLICATION = "worker_bridge_bench monitor"


class BenchError(RuntimeError):
    """A measurement could not be taken; the message says why."""


def wait_for(
    condition: Callable[[], Any],
    timeout: float,
    what: str,
    interval: float = 0.05,
    check: Callable[[], None] | None = None,
) -> Any:
    """Poll ``condition`` until truthy; BenchError after ``timeout`` seconds.

    ``check`` runs between polls and raises if waiting has become pointless
    (a process died).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}")
        if check is not None:
            check()
        time.sleep(interval)


class BenchDatabase:
    """A database of the benchmark's own, migrated; dropped by :meth:`drop`.

    Also creates and drops the peers' databases (:meth:`create_extra`), named
    after it, so that :meth:`drop` removes whatever a failed item left.
    """

    def __init__(self, admin_url: str = ADMIN_URL) -> None:
        self.name = f"worker_bridge_bench_{uuid.uuid4().hex[:10]}"
        self._admin_url = admin_url
        self._admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
        self._extras: list[str] = []
        with self._admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{self.name}"'))
        self.url = self._url_of(self.name)
        #: For the bench's polls: connections named MONITOR_APPLICATION.
        self.monitor = create_engine(
            self.url, connect_args={"application_name": MONITOR_APPLICATION}
        )
        engine = create_engine(self.url)
        try:
            upgrade_database(engine)
        finally:
            engine.dispose()
        # The bench process schedules through the public API, which reads the
        # process's BridgeApp: make it this database and the bench's job package.
        self.bridge = BridgeApp.from_settings(
            Settings(database_url=self.url, jobs_package=JOBS_PACKAGE)
        )
        set_bridge(self.bridge)

    def _url_of(self, database: str) -> str:
        return make_url(self._admin_url).set(database=database).render_as_string(
            hide_password=False
        )

    @property
    def engine(self) -> Engine:
        return self.bridge.engine

    def create_extra(self, suffix: str) -> tuple[str, str]:
        """A fresh empty database ``<name>_<suffix>``: (its name, its libpq URL)."""
        name = f"{self.name}_{suffix}"
        self.drop_database(name)
        self._extras.append(name)
        with self._admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        url = make_url(self._url_of(name)).set(drivername="postgresql")
        return name, url.render_as_string(hide_password=False)

    def drop_database(self, name: str) -> None:
        with self._admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        if name in self._extras:
            self._extras.remove(name)

    def backend_pids(self, database: str | None = None) -> list[int]:
        """The PostgreSQL backends connected to ``database`` (default: the bench's),
        the bench's own monitoring connections left out."""
        with self._admin.connect() as connection:
            return list(
                connection.execute(
                    text(
                        "SELECT pid FROM pg_stat_activity WHERE datname = :name "
                        "AND coalesce(application_name, '') <> :monitor"
                    ),
                    {"name": database or self.name, "monitor": MONITOR_APPLICATION},
                ).scalars()
            )

    def truncate(self) -> None:
        with self.engine.begin() as connection:
            connection.execute(text("TRUNCATE worker_jobs, worker_job_minutes RESTART IDENTITY"))

    def drop(self, keep: bool = False, patience: float = 30) -> None:
        """Drop the peers' databases and (unless ``keep``) the bench's own. A server
        restarting meanwhile (a fault test on the same machine) is waited for, up
        to ``patience`` seconds."""
        set_bridge(None)
        self.bridge.dispose()
        self.monitor.dispose()
        names = [*self._extras, *([] if keep else [self.name])]
        deadline = time.monotonic() + patience
        try:
            for name in names:
                while True:
                    try:
                        self.drop_database(name)
                        break
                    except OperationalError:
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(1)
        finally:
            self._admin.dispose()


class BenchRedis:
    """Redis database ``number``, claimed for the run, flushed before, between and after."""

    def __init__(self, number: int, base_url: str = REDIS_URL) -> None:
        self.number = number
        self.url = f"{base_url.rstrip('/')}/{number}"
        self.client = redis.Redis.from_url(self.url)
        self._claim = f"worker_bridge_bench:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        if not self.client.set(CLAIM_KEY, self._claim, nx=True, ex=CLAIM_SECONDS):
            holder = self.client.get(CLAIM_KEY)
            self.client.close()
            raise BenchError(
                f"Redis database {number} is in use (claimed by {holder!r}); "
                "pick another with --redis-db"
            )
        self.flush()

    def flush(self) -> None:
        # Flush and re-claim in one MULTI, so no test run can slip in between.
        with self.client.pipeline(transaction=True) as pipe:
            pipe.flushdb()
            pipe.set(CLAIM_KEY, self._claim, ex=CLAIM_SECONDS)
            pipe.execute()

    def release(self) -> None:
        if self.client.get(CLAIM_KEY) == self._claim.encode():
            self.client.flushdb()
        self.client.close()

    def info(self, key: str) -> str:
        return str(self.client.info("server").get(key, "?"))

    def server_pid(self) -> int | None:
        """The Redis server's pid (``INFO server``'s process_id), for the CPU accounting."""
        pid = self.client.info("server").get("process_id")
        return int(pid) if pid is not None else None


class Processes:
    """Starts celery (and peer) processes and stops every one of them, by process group."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.running: list[tuple[str, subprocess.Popen[bytes]]] = []
        self._count = 0

    def start(self, name: str, app: str, *args: str, config: str = "celeryconfig") -> None:
        self.spawn(
            name,
            ["-m", "celery", "-A", app, *args],
            {"CELERY_CONFIG_MODULE": config},
        )

    def spawn(self, name: str, python_args: list[str], env: dict[str, str] | None = None) -> None:
        """Run ``python <python_args>`` in a process group of its own, logging to a file."""
        self._count += 1
        log = self.log_dir / f"{self._count:02d}-{name}.log"
        with log.open("ab") as handle:
            process = subprocess.Popen(
                [sys.executable, *python_args],
                cwd=ROOT,
                env={**self.env, **(env or {})},
                stdout=handle,
                stderr=subprocess.STDOUT,
                # A group of its own: Ctrl-C in the terminal reaches only the
                # bench, which then stops the group, pool children included.
                start_new_session=True,
            )
        self.running.append((name, process))

    def worker(self, app: str = "worker_bridge", config: str = "celeryconfig") -> None:
        self.start(
            "worker", app, "worker", "--concurrency", "2", "-P", "prefork",
            "--loglevel", "WARNING", config=config,
        )

    def dispatcher(self, config: str = "celeryconfig") -> None:
        self.start("dispatcher", "worker_bridge", "beat", "--loglevel", "WARNING", config=config)

    def groups(self) -> list[int]:
        """The process group of every running process (each leads its own)."""
        return [process.pid for _, process in self.running if process.poll() is None]

    def check_alive(self) -> None:
        for name, process in self.running:
            if process.poll() is not None:
                raise BenchError(
                    f"the {name} exited with code {process.returncode}:\n{self.log_tail(name)}"
                )

    def log_tail(self, name: str, chars: int = 4000) -> str:
        logs = sorted(self.log_dir.glob(f"*-{name}.log"))
        return logs[-1].read_text(errors="replace")[-chars:] if logs else ""

    def stop_all(self) -> None:
        # Newest first: the dispatcher stops before the worker it feeds.
        while self.running:
            _, process = self.running.pop()
            _stop(process)


def _stop(process: subprocess.Popen[bytes], timeout: float = 15) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=timeout)
    # The group leader may be gone while a pool child lingers: kill the group anyway.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=timeout)


def process_env(database_url: str, broker_url: str) -> dict[str, str]:
    """The environment of every celery process the benchmark starts."""
    path = os.environ.get("PYTHONPATH")
    return {
        **os.environ,
        "WORKER_BRIDGE_DATABASE_URL": database_url,
        "CELERY_BROKER_URL": broker_url,
        "WORKER_BRIDGE_JOBS": JOBS_PACKAGE,
        "PYTHONPATH": f"{ROOT}{os.pathsep}{path}" if path else str(ROOT),
    }
