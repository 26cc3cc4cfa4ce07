"""End to end on PostgreSQL + RabbitMQ: what only RabbitMQ does.

RabbitMQ closes a consumer's channel when a delivery stays unacknowledged longer
than its ``consumer_timeout``; with ``task_acks_late`` a job's message is
acknowledged when the job ends, so a job longer than the timeout loses its
channel while it runs. The job must still run exactly once to completion (its
redelivered message finds the row running and is refused), the worker must
stay up and go on serving, and a worker whose time limit outlasts the timeout
must say so when it starts.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.acceptance.conftest import RABBITMQ, Processes, wait_until
from tests.conftest import rabbitmqctl
from worker_bridge import WorkerJobConfig, schedule_job
from worker_bridge.models import JobState, WorkerJob

Fetch = Callable[[int], WorkerJob]

#: Milliseconds: RabbitMQ's consumer_timeout during the test, and how often a
#: channel checks it (RabbitMQ's default tick is a minute: too slow for a test).
CONSUMER_TIMEOUT_MS = 3000
CHANNEL_TICK_MS = 500
_KEYS = ("consumer_timeout", "channel_tick_interval")


@pytest.fixture
def backend() -> str:
    return RABBITMQ


def _finished(fetch: Fetch, job_id: int) -> WorkerJob | None:
    job = fetch(job_id)
    return job if job.finished is not None else None


def _rabbit_env() -> list[str]:
    """The node's current values of :data:`_KEYS`, as Erlang terms (``{ok,V}`` or ``undefined``)."""
    output = rabbitmqctl(
        "eval", f"[application:get_env(rabbit, K) || K <- [{', '.join(_KEYS)}]]."
    ).strip()
    terms = re.findall(r"\{ok,\s*\d+\}|undefined", output)
    assert len(terms) == len(_KEYS), f"unexpected rabbitmqctl eval output: {output!r}"
    return terms


def _set_rabbit_env(terms: list[str]) -> None:
    """Give each of :data:`_KEYS` its term (``{ok,V}`` sets V, ``undefined`` unsets), in one call."""
    statements = [
        f"case {term} of {{ok, V{i}}} -> application:set_env(rabbit, {key}, V{i}); "
        f"undefined -> application:unset_env(rabbit, {key}) end"
        for i, (key, term) in enumerate(zip(_KEYS, terms, strict=True))
    ]
    rabbitmqctl("eval", ", ".join(statements) + ".")


@pytest.fixture
def short_consumer_timeout() -> Iterator[None]:
    """RabbitMQ's consumer_timeout at 3 s, checked twice a second, for channels opened now.

    Both settings are read when a channel opens, so start the worker after this
    fixture; the old values come back at the end, whatever happened.
    """
    old = _rabbit_env()
    try:
        _set_rabbit_env([f"{{ok,{CONSUMER_TIMEOUT_MS}}}", f"{{ok,{CHANNEL_TICK_MS}}}"])
        assert _rabbit_env() == [f"{{ok,{CONSUMER_TIMEOUT_MS}}}", f"{{ok,{CHANNEL_TICK_MS}}}"]
        yield
    finally:
        _set_rabbit_env(old)


def _executions(tmp_path: Path, job_id: int) -> list[dict[str, object]]:
    path = tmp_path / "work.jsonl"
    if not path.exists():
        return []
    entries = [json.loads(line) for line in path.read_text().splitlines() if line]
    return [entry for entry in entries if entry["job_id"] == job_id]


def test_a_job_longer_than_consumer_timeout_runs_once_and_the_worker_lives_on(
    short_consumer_timeout: None, processes: Processes, fetch: Fetch, tmp_path: Path
) -> None:
    worker = processes.worker("w1", 2)
    processes.dispatcher()
    processes.wait_ready(worker)
    job = schedule_job(
        WorkerJobConfig(type="work", user_id=1, data={"sleep": 7}, remove_delay=3_600_000)
    )
    wait_until(lambda: fetch(job.id).state is JobState.RUNNING, 30, "the long job to start")
    # RabbitMQ closes the worker's channel 3 s into the job (the delivery is unacknowledged).
    wait_until(
        lambda: (
            "delivery acknowledgement on channel" in processes.log_of(worker)
            or worker.poll() is not None
        ),
        20,
        "RabbitMQ to close the channel at consumer_timeout",
    )
    done = wait_until(lambda: _finished(fetch, job.id), 30, "the long job to finish")
    assert done.state is JobState.SUCCEEDED, done.result
    assert done.attempts == 1 and done.recoveries == 0
    runs = _executions(tmp_path, job.id)
    assert [entry["phase"] for entry in runs] == ["start", "end"], runs
    assert worker.poll() is None, "the worker exited:\n" + processes.log_of(worker)[-4000:]
    # The redelivered message found the row claimed and was refused.
    wait_until(
        lambda: f"job {job.id}: skipped: the row is already" in processes.log_of(worker),
        15,
        "the redelivered message to be refused",
    )
    later = [
        schedule_job(WorkerJobConfig(type="echo", user_id=10 + i, data={"i": i})) for i in range(3)
    ]
    for row in later:
        ran = wait_until(lambda row=row: _finished(fetch, row.id), 30, "a later job")
        assert ran.state is JobState.SUCCEEDED and ran.worker.startswith("w1@")
    assert worker.poll() is None
    assert fetch(job.id).attempts == 1 and len(_executions(tmp_path, job.id)) == 2


WARNING = re.compile(
    r"worker_bridge: task_time_limit \(20 s\) is longer than RabbitMQ's consumer_timeout "
    r"\(10 s, worker_bridge_broker_consumer_timeout\)"
)


def test_a_worker_warns_when_its_time_limit_outlasts_consumer_timeout(
    processes: Processes,
) -> None:
    """task_time_limit 20 s: above a consumer_timeout of 10 s it warns, below 1800 s not."""
    above = processes.worker(
        "wlong", 1, env={"CELERY_CONFIG_MODULE": "tests.acceptance.celeryconfig_consumer_timeout"}
    )
    below = processes.worker("wshort", 1)
    processes.wait_ready(above)
    processes.wait_ready(below)
    assert WARNING.search(processes.log_of(above)), processes.log_of(above)[-4000:]
    assert "consumer_timeout" not in processes.log_of(below), processes.log_of(below)[-4000:]
