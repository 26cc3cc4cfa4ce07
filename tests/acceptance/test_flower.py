"""Flower, through its HTTP API, shows each job type as its own task with the row's ids."""

from __future__ import annotations

import base64
import itertools
import json
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.acceptance.conftest import Processes, free_port, wait_until
from tests.acceptance.test_forged_messages import publish
from worker_bridge import WorkerJobConfig, schedule_job, schedule_jobs
from worker_bridge.control import cancel_job
from worker_bridge.models import WorkerJob

AUTH = "admin:flower-secret"


@pytest.fixture
def backend() -> str:
    # Flower follows the workers through broker events and broadcast, which
    # kombu's SQLAlchemy transport (the embedded default) does not carry.
    return "postgresql"


def _get(port: int, path: str, auth: str | None = AUTH) -> Any:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


def _try_get(port: int, path: str) -> Any:
    try:
        return _get(port, path)
    except urllib.error.HTTPError as exc:
        exc.close()
        return None
    except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
        return None


def test_flower_shows_jobs_with_their_row_ids_and_states(
    processes: Processes, fetch: Callable[[int], WorkerJob]
) -> None:
    port = free_port()
    processes.start(
        "flower", "flower", f"--port={port}", "--address=127.0.0.1", f"--basic-auth={AUTH}"
    )
    processes.worker("wf", 2)
    processes.dispatcher()
    wait_until(
        lambda: _try_get(port, "/api/workers?refresh=1"),
        60,
        "Flower to answer and see the worker",
        interval=0.5,
    )

    # Workers send task events only while a monitor asks for them: Flower
    # switches them on by itself (enable_events), within seconds of starting.
    probes = itertools.count()

    def events_on() -> bool:
        schedule_job(WorkerJobConfig(type="echo", user_id=30, data={"probe": next(probes)}))
        tasks = _try_get(port, "/api/tasks") or {}
        return any(task.get("state") == "SUCCESS" for task in tasks.values())

    wait_until(events_on, 60, "Flower to switch the worker's task events on", interval=1.0)

    ok = schedule_job(WorkerJobConfig(type="echo", user_id=31, data={"x": 1}))
    bad = schedule_job(WorkerJobConfig(type="fail", user_id=32))
    # Due together, so that one dispatcher pass sends them in batches.
    batch = schedule_jobs([WorkerJobConfig(type="batched", user_id=40 + i) for i in range(6)])

    def tasks_done() -> dict[str, Any] | None:
        tasks = _try_get(port, "/api/tasks") or {}
        rows = [fetch(job.id) for job in (ok, bad, *batch)]
        ended = all(
            tasks.get(row.task_id or "", {}).get("state") in ("SUCCESS", "FAILURE") for row in rows
        )
        return tasks if ended else None

    tasks = wait_until(tasks_done, 60, "Flower to see both jobs finish", interval=0.5)
    for job, name, state in ((ok, "jobs.echo", "SUCCESS"), (bad, "jobs.fail", "FAILURE")):
        row = fetch(job.id)
        assert row.task_id in tasks, "Flower's task id is the row's task_id"
        task = tasks[row.task_id]
        assert task["name"] == name
        assert f"'job_id': {job.id}" in task["kwargs"]
        assert f"'user_id': {job.user_id}" in task["kwargs"]
        # The task ends as its row did: a failed run is a failed task, with its exception.
        assert task["state"] == state
    assert "ValueError" in tasks[fetch(bad.id).task_id or ""]["exception"]

    # A refused message (a copy naming a cancelled row) is never shown as a success.
    cancelled = schedule_job(
        WorkerJobConfig(type="echo", user_id=33, due=datetime.now(UTC) + timedelta(hours=1))
    )
    cancel_job(cancelled.id)
    stranger = f"refused-{uuid.uuid4()}"
    publish(
        processes.env["CELERY_BROKER_URL"],
        task="jobs.echo",
        task_id=stranger,
        kwargs={"job_id": cancelled.id, "user_id": 33},
    )
    refused = wait_until(
        lambda: (_try_get(port, "/api/tasks") or {}).get(stranger, {}).get("state")
        not in (None, "RECEIVED", "STARTED"),
        60,
        "Flower to see the refused message end",
        interval=0.5,
    )
    assert refused
    task = _get(port, "/api/tasks")[stranger]
    # Reported as Celery reports a message rejected for good: failed, with the reason.
    assert task["state"] == "FAILURE" and "Refused" in task["exception"], task

    # A batch is one task whose arguments list its rows, under the rows' shared task id.
    batched = {task_id: task for task_id, task in tasks.items() if task["name"] == "jobs.batched"}
    assert batched and all("'job_ids': [" in task["kwargs"] for task in batched.values())
    for job in batch:
        row = fetch(job.id)
        assert row.success is True and row.task_id in batched
        assert str(job.id) in batched[row.task_id]["kwargs"]
    assert len(batched) < len(batch), "the rows went one message each"

    def registered() -> list[str] | None:
        # Flower fills a worker's registered tasks from a broadcast inspect it
        # runs on its own schedule; refresh=1 asks for it now, and it may
        # still answer before the reply has come in.
        workers = _try_get(port, "/api/workers?refresh=1") or {}
        names = next((w.get("registered") for n, w in workers.items() if n.startswith("wf@")), None)
        return names if names and "jobs.echo" in names else None

    assert "jobs.fail" in wait_until(registered, 30, "Flower to list the worker's job tasks")

    with pytest.raises(urllib.error.HTTPError) as denied:
        _get(port, "/api/tasks", auth=None)
    assert denied.value.code == 401
    denied.value.close()
