"""End to end: ``worker-bridge metrics`` serves the table's gauges and every process's counters
(prometheus-client's multiprocess mode) while real workers and a dispatcher run jobs."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.acceptance.conftest import ROOT, Processes, free_port, wait_until
from worker_bridge import WorkerJobConfig, schedule_jobs
from worker_bridge.job import Job

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
def backend() -> str:
    return "postgresql"


def _scrape(port: int) -> Samples | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_show_the_table_and_the_processes_under_load(
    processes: Processes, fetch: Callable[[int], Job], tmp_path: Path
) -> None:
    shared = tmp_path / "prometheus"
    shared.mkdir()
    env = {"PROMETHEUS_MULTIPROC_DIR": str(shared)}
    worker = processes.worker("w1", 2, env=env)
    processes.wait_ready(worker)
    processes.start("d1", "beat", "--loglevel", "INFO", env=env)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "worker_bridge.cli", "metrics", "--port", str(port)],
        cwd=ROOT,
        env={**processes.env, **env},
        start_new_session=True,
    )
    try:
        wait_until(lambda: _scrape(port), 30, "worker-bridge metrics to answer", interval=0.2)
        jobs = schedule_jobs(
            [WorkerJobConfig(type="record", user_id=n, data={"sleep": 0.05}) for n in range(200)]
            + [WorkerJobConfig(type="fail", user_id=n) for n in range(3)]
        )
        # Under load: the table's gauges show the backlog while it drains.
        busy = wait_until(
            lambda: (
                (s := _scrape(port))
                and s.get(("worker_bridge_jobs", (("state", "running"), ("type", "record"))))
            ),
            30,
            "a scrape to show running record jobs",
            interval=0.1,
        )
        assert busy
        wait_until(lambda: all(fetch(job.id).finished for job in jobs), 90, "the jobs to end")

        def counted() -> Samples | None:
            samples = _scrape(port) or {}
            done = samples.get(
                ("worker_bridge_job_duration_seconds_count",
                 (("outcome", "succeeded"), ("type", "record")))
            )  # fmt: skip
            return samples if done == 200 else None

        samples = wait_until(counted, 30, "the counters of every pool process to add up")
        assert samples[("worker_bridge_jobs_dispatched_total", (("type", "record"),))] == 200
        assert samples[("worker_bridge_dispatch_lag_seconds_count", (("type", "record"),))] == 200
        assert (
            samples[
                (
                    "worker_bridge_job_duration_seconds_count",
                    (("outcome", "failed"), ("type", "fail")),
                )
            ]
            == 3
        )
        durations = samples[
            ("worker_bridge_job_duration_seconds_sum",
             (("outcome", "succeeded"), ("type", "record")))
        ]  # fmt: skip
        assert durations >= 200 * 0.05
        # Drained: nothing live is left of the type.
        assert samples.get(("worker_bridge_jobs", (("state", "pending"), ("type", "record")))) in (
            None, 0.0,
        )  # fmt: skip
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)
        server.wait(10)
