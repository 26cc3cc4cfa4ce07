"""Real `celery` worker and dispatcher processes against PostgreSQL and Redis.

Each test run takes a Redis database number of its own (claimed with a key,
flushed before and after), and every process a test starts is stopped by
process group when the test ends. The back end of a test is its ``backend``:
"postgresql" (PostgreSQL + Redis) and "sqlite" (the embedded default) for
every test, and "rabbitmq" (PostgreSQL + RabbitMQ, in the run's own virtual
host) for the tests marked :data:`ALSO_ON_RABBITMQ` or parametrized with it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import text

from tests.conftest import CLAIM_KEY as _CLAIM_KEY
from tests.conftest import REDIS_HOST, TEST_JOBS
from worker_bridge.bridge import BridgeApp, set_bridge
from worker_bridge.settings import Settings

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.e2e


def free_port() -> int:
    """A TCP port free on the loopback interface right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def process_gone(pid: int) -> bool:
    """Whether no process with ``pid`` runs any more (it was killed, or ended)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def wait_until(
    condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.05
) -> Any:
    """Poll ``condition`` until it returns a truthy value; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class Processes:
    """Starts celery processes and stops every one of them, by process group."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.started: list[tuple[subprocess.Popen[bytes], Path]] = []
        self.commands: dict[int, tuple[str, tuple[str, ...], dict[str, str] | None]] = {}

    def start(
        self, name: str, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        log = self.log_dir / f"{name}.log"
        handle = log.open("ab")
        process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "worker_bridge", *args],
            cwd=ROOT,
            env={**self.env, **(env or {})},
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        handle.close()
        self.started.append((process, log))
        self.commands[process.pid] = (name, args, env)
        return process

    def restart_exited(self) -> list[str]:
        """Start again every process that exited, as a supervisor (systemd, compose) would."""
        restarted = []
        for process, _ in list(self.started):
            if process.poll() is not None and process.pid in self.commands:
                name, args, env = self.commands.pop(process.pid)
                self.start(f"{name}-restarted", *args, env=env)
                restarted.append(name)
        return restarted

    def worker(
        self,
        name: str = "w1",
        concurrency: int = 2,
        *extra: str,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        return self.start(
            name,
            "worker",
            "--loglevel",
            "INFO",
            "--concurrency",
            str(concurrency),
            "-n",
            f"{name}@%h",
            "--without-mingle",
            "--without-gossip",
            *extra,
            env=env,
        )

    def dispatcher(self, name: str = "d1") -> subprocess.Popen[bytes]:
        return self.start(
            name, "beat", "--loglevel", "INFO", "--pidfile", str(self.log_dir / f"{name}.pid")
        )

    def wait_ready(self, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
        """Wait until the worker ``process`` consumes (its queues are declared by then)."""
        wait_until(
            lambda: " ready." in self.log_of(process) or process.poll() is not None,
            timeout,
            "the worker to be ready",
        )
        assert process.poll() is None, f"the worker exited:\n{self.log_of(process)[-4000:]}"

    def log_of(self, process: subprocess.Popen[bytes]) -> str:
        for candidate, log in self.started:
            if candidate is process:
                return log.read_text(errors="replace")
        return ""

    def stop(self, process: subprocess.Popen[bytes], timeout: float = 15) -> None:
        self.commands.pop(process.pid, None)  # stopped on purpose: not to be restarted
        if process.poll() is None:
            # The main process only: it shuts its pool down itself (a TERM to the
            # whole group leaves the embedded broker's worker hanging in warm shutdown).
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=timeout)
        # Pool children and the embedded beat share the group: none may outlive the test.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=timeout)

    def stop_all(self) -> None:
        """End every process the test started, all at once, by process group (SIGKILL).

        The test is over: nothing it checks depends on a graceful stop, and a warm
        shutdown costs a worker seconds (3 s on Redis, 6 s on the embedded broker),
        one process after another. Each test starts from an empty table, a flushed
        Redis database, its own SQLite files and deleted RabbitMQ queues.
        """
        for process, _ in self.started:
            self.commands.pop(process.pid, None)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        for process, _ in self.started:
            process.wait(timeout=15)

    def dump_logs(self) -> str:
        return "\n".join(
            f"===== {log.name}\n{log.read_text(errors='replace')[-6000:]}"
            for _, log in self.started
        )


#: The back ends on which every end-to-end test runs.
DEFAULT_BACKENDS = ("postgresql", "sqlite")
#: PostgreSQL + RabbitMQ: only for the tests that ask for it (it costs a third run).
RABBITMQ = "rabbitmq"
#: The back ends that use the suite's PostgreSQL database.
POSTGRESQL_BACKENDS = ("postgresql", RABBITMQ)
#: Marks a test that runs on RabbitMQ too, beside the default back ends.
ALSO_ON_RABBITMQ = pytest.mark.parametrize("backend", [*DEFAULT_BACKENDS, RABBITMQ])


@pytest.fixture(params=DEFAULT_BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The back end a test runs on: PostgreSQL + Redis, or the embedded SQLite default.

    A test parametrized with ``backend`` (e.g. :data:`ALSO_ON_RABBITMQ`) names its own.
    """
    return str(request.param)


@pytest.fixture
def bridge(backend: str, session_bridge: BridgeApp, tmp_path: Path) -> Iterator[BridgeApp]:
    """The BridgeApp of the test's back end, installed as the process default, empty."""
    if backend in POSTGRESQL_BACKENDS:
        with session_bridge.engine.begin() as connection:
            connection.execute(text("TRUNCATE worker_jobs, worker_job_minutes RESTART IDENTITY"))
        bridge = session_bridge
    else:
        url = f"sqlite:///{tmp_path / 'worker_bridge.sqlite3'}"
        bridge = BridgeApp.from_settings(Settings(database_url=url, jobs_package=TEST_JOBS))
        bridge.store.ensure_schema(bridge.engine)
    set_bridge(bridge)
    try:
        yield bridge
    finally:
        set_bridge(None)
        if bridge is not session_bridge:
            bridge.dispose()


@pytest.fixture
def processes(
    backend: str, bridge: BridgeApp, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Processes]:
    if backend == "postgresql":
        redis_db: int = request.getfixturevalue("redis_db")
        client = redis.Redis(host=REDIS_HOST, db=redis_db)
        client.flushdb()
        client.set(_CLAIM_KEY, "held", ex=4 * 3600)
        client.close()
        broker_url = f"redis://{REDIS_HOST}:6379/{redis_db}"
    elif backend == RABBITMQ:
        broker_url = request.getfixturevalue("rabbitmq_url")
    else:
        broker_url = f"sqla+sqlite:///{tmp_path / 'broker.sqlite3'}"
    env = {
        **os.environ,
        "WORKER_BRIDGE_DATABASE_URL": bridge.settings.database_url,
        "CELERY_BROKER_URL": broker_url,
        "WORKER_BRIDGE_JOBS": "tests.testjobs",
        "CELERY_CONFIG_MODULE": "tests.acceptance.celeryconfig_test",
        "PYTHONPATH": str(ROOT),
        "WORKER_BRIDGE_TEST_RECORD_DIR": str(tmp_path),
    }
    group = Processes(env, tmp_path)
    try:
        yield group
    finally:
        group.stop_all()
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            print(group.dump_logs())


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
