"""Fixtures shared by every layer of the suite.

A test run creates a PostgreSQL database of its own (migrated once), and each
test starts from an empty ``worker_jobs``. The server is
$WORKER_BRIDGE_TEST_ADMIN_URL (default: postgres on 127.0.0.1:5432). A test
that needs RabbitMQ gets a virtual host of the run's own (created on first
use with ``rabbitmqctl``, deleted at the end) and starts and ends with its
queues deleted.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import redis
from kombu import Connection
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from worker_bridge.bridge import BridgeApp, set_bridge
from worker_bridge.job import Job
from worker_bridge.migrations import upgrade_database
from worker_bridge.models import WorkerJob
from worker_bridge.settings import Settings
from worker_bridge.store import store_for

ADMIN_URL = os.environ.get(
    "WORKER_BRIDGE_TEST_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
TEST_JOBS = "tests.testjobs"
REDIS_HOST = os.environ.get("WORKER_BRIDGE_TEST_REDIS_HOST", "127.0.0.1")
CLAIM_KEY = "worker_bridge:test-run"
RABBITMQ_HOST = os.environ.get("WORKER_BRIDGE_TEST_RABBITMQ_HOST", "127.0.0.1")
#: The durable queues a test may leave behind in the run's virtual host: Celery's
#: default queue. (Workers' control and reply queues are auto-delete.)
RABBITMQ_QUEUES = ("celery",)

os.environ.setdefault("WORKER_BRIDGE_JOBS", TEST_JOBS)


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """URL of a database created for this test run, migrated to head, dropped at the end."""
    name = f"worker_bridge_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    engine = create_engine(url)
    upgrade_database(engine)
    engine.dispose()
    admin.dispose()
    try:
        yield url
    finally:
        # A fresh engine: the fault suite may have restarted the server meanwhile.
        admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def session_bridge(database_url: str) -> Iterator[BridgeApp]:
    # pre-ping: the fault suite restarts PostgreSQL under the suite's own pool.
    bridge = BridgeApp.from_settings(
        Settings(database_url=database_url, jobs_package=TEST_JOBS), pool_pre_ping=True
    )
    yield bridge
    bridge.dispose()


@pytest.fixture
def bridge(session_bridge: BridgeApp) -> Iterator[BridgeApp]:
    """The test run's BridgeApp, installed as the process default, on an empty table."""
    with session_bridge.engine.begin() as connection:
        connection.execute(text("TRUNCATE worker_jobs, worker_job_minutes RESTART IDENTITY"))
    set_bridge(session_bridge)
    yield session_bridge
    set_bridge(None)


@pytest.fixture
def engine(bridge: BridgeApp) -> Engine:
    return bridge.engine


def utcnow() -> datetime:
    return datetime.now(UTC)


@pytest.fixture
def job_factory(engine: Engine) -> Callable[..., WorkerJob]:
    """Insert a row directly, in whatever state the overrides describe."""

    def make(**overrides: Any) -> WorkerJob:
        now = utcnow()
        values: dict[str, Any] = {
            "type": "echo",
            "user_id": 1,
            "data": {},
            "due": now,
            "created_at": now,
            "updated_at": now,
        }
        values.update(overrides)
        table = WorkerJob.__table__
        with engine.begin() as connection:
            row = connection.execute(
                table.insert().values(**values).returning(*table.columns)
            ).one()
        return Job.from_row(row)

    return make


@pytest.fixture
def fetch(engine: Engine) -> Callable[[int], WorkerJob]:
    """Read a row back by id (fails the test if it is gone)."""

    def get(job_id: int) -> WorkerJob:
        with engine.connect() as connection:
            job = store_for(connection).get_job(connection, job_id)
        assert job is not None, f"job {job_id} is gone"
        return job

    return get


@pytest.fixture
def all_jobs(engine: Engine) -> Callable[[], list[WorkerJob]]:
    def read() -> list[WorkerJob]:
        with engine.connect() as connection:
            rows = connection.execute(
                WorkerJob.__table__.select().order_by(WorkerJob.__table__.c.id)
            )
            return [Job.from_row(row) for row in rows]

    return read


@pytest.fixture(scope="session")
def redis_db() -> Iterator[int]:
    """A Redis database number nobody else is using, for this test run."""
    run_id = uuid.uuid4().hex
    for number in range(1, 16):
        client = redis.Redis(host=REDIS_HOST, db=number)
        if client.set(CLAIM_KEY, run_id, nx=True, ex=4 * 3600):
            client.flushdb()
            client.set(CLAIM_KEY, run_id, ex=4 * 3600)
            try:
                yield number
            finally:
                client.flushdb()
                client.close()
            return
        client.close()
    pytest.fail("no free Redis database number (1-15) for this test run")


def rabbitmqctl(*args: str, timeout: float = 120) -> str:
    """Run ``rabbitmqctl ARGS`` (about a second a call); fail the test if it fails."""
    try:
        result = subprocess.run(
            ["rabbitmqctl", *args], capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.fail(f"rabbitmqctl {' '.join(args)}: {exc} (is RabbitMQ installed and up?)")
    if result.returncode != 0:
        pytest.fail(
            f"rabbitmqctl {' '.join(args)} exited {result.returncode}: "
            f"{(result.stderr or result.stdout).strip()[-2000:]}\n"
            "The suite needs RabbitMQ on this host (.ci/run starts it)."
        )
    return result.stdout


@pytest.fixture(scope="session")
def rabbitmq_vhost() -> Iterator[str]:
    """A RabbitMQ virtual host of this test run's own, for guest, deleted at the end."""
    name = f"worker_bridge_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    rabbitmqctl("add_vhost", name)
    try:
        rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
        yield name
    finally:
        # The fault suite stops and starts RabbitMQ meanwhile: it is back by now.
        rabbitmqctl("delete_vhost", name)


def delete_rabbitmq_queues(url: str, names: tuple[str, ...] = RABBITMQ_QUEUES) -> None:
    """Delete the queues ``names`` of the broker at ``url`` (a missing queue is no error)."""
    with Connection(url, connect_timeout=10) as connection:
        connection.connect()  # one attempt: a broker that is down fails the test at once
        channel = connection.channel()
        try:
            for name in names:
                channel.queue_delete(queue=name)
        finally:
            channel.close()


@pytest.fixture
def rabbitmq_url(rabbitmq_vhost: str) -> Iterator[str]:
    """``amqp://`` URL of the run's virtual host, whose queues the test starts and ends without."""
    url = f"amqp://guest:guest@{RABBITMQ_HOST}:5672/{rabbitmq_vhost}"
    delete_rabbitmq_queues(url)
    yield url
    delete_rabbitmq_queues(url)
