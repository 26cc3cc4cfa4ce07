"""``worker-bridge demo``: the first run. Schedules the example jobs, runs a worker
with its embedded dispatcher, and prints the table as the jobs run.

On the embedded default it needs no server; with WORKER_BRIDGE_DATABASE_URL and
CELERY_BROKER_URL set it runs against those instead.

Of the ``worker_bridge.cli`` package it uses only :mod:`worker_bridge.cli.formatting`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta

from worker_bridge.bridge import get_bridge
from worker_bridge.cli.formatting import SUMMARY_HEADERS, format_table, summary_row
from worker_bridge.db import safe_url
from worker_bridge.scheduling import WorkerJobConfig, schedule_cron_job, schedule_job

#: The examples of the jobs package: a one-off job, a cron job every 3 seconds,
#: and a job that fails twice and is retried, so that the lineage shows.
EXAMPLES = (
    ("hello", "one-off"),
    ("tick", "cron */3 * * * * *"),
    ("flaky", "fails twice, retried after 2 s"),
)


def schedule_examples() -> None:
    """Schedule the three example jobs (replacing pending ones from an earlier run)."""
    # Kept an hour after they succeed, so the minutely removal job leaves them in view.
    keep = timedelta(hours=1)
    schedule_job(
        WorkerJobConfig(type="hello", user_id=1, data={"name": "worker_bridge"}, remove_delay=keep)
    )
    schedule_cron_job(WorkerJobConfig(type="tick", user_id=0, remove_delay=keep), "*/3 * * * * *")
    schedule_job(
        WorkerJobConfig(
            type="flaky",
            user_id=1,
            data={"fail_times": 2},
            auto_reschedule_on_failure=True,
            auto_reschedule_on_failure_delay=timedelta(seconds=2),
            remove_delay=keep,
        )
    )


def print_jobs(limit: int = 12) -> None:
    """Print the newest rows, as `worker-bridge jobs` does."""
    bridge = get_bridge()
    with bridge.engine.connect() as connection:
        jobs = bridge.store.list_jobs(connection, limit=limit)
    print(format_table(SUMMARY_HEADERS, [summary_row(job) for job in jobs]), flush=True)


def run_demo(seconds: float, every: float = 5.0) -> int:
    """Run the demo for ``seconds`` (until Ctrl-C when 0); return the worker's exit code."""
    bridge = get_bridge()
    print(f"worker_bridge demo on {safe_url(bridge.settings.database_url)}", flush=True)
    schedule_examples()
    for job_type, what in EXAMPLES:
        print(f"  scheduled {job_type}: {what}", flush=True)
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "worker_bridge",
            "worker",
            "-B",
            "--loglevel",
            "INFO",
            "--concurrency",
            "2",
        ],
        env=os.environ.copy(),
    )
    deadline = time.monotonic() + seconds if seconds > 0 else None
    try:
        while worker.poll() is None and (deadline is None or time.monotonic() < deadline):
            left = every if deadline is None else deadline - time.monotonic()
            time.sleep(max(0.0, min(every, left)))
            print_jobs()
    except KeyboardInterrupt:
        pass
    finally:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
    print_jobs()
    print("see one job and its lineage: worker-bridge show ID", flush=True)
    return 0
