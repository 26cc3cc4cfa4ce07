"""The benchmark still runs: ``python -m bench --quick`` exits 0 with a number on every line.

It starts its own database, Redis database and celery processes, so this test
needs nothing from the fixtures but a free Redis database number.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import redis

import worker_bridge
from tests.conftest import CLAIM_KEY, REDIS_HOST

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.e2e

#: The id and the start of the name of every line the table must have in a
#: default (no --scale) run.
EXPECTED = [
    "1a schedule_job, distinct",
    "1a' schedule_job, same",
    "1b schedule_jobs, batches",
    "2 end-to-end",
    "3a bare Celery,",
    "3b ratio 2 / 3a",
    "3c bare Celery publish",
    "4a latency schedule_job -> run(), p50",
    "4b latency schedule_job -> run(), p95",
    "4c latency schedule_job -> run(), p99",
    "5a cron fire (due) -> run(), p50",
    "5b cron fire (due) -> run(), p99",
    "7 dispatcher alone",
]
NUMBER = re.compile(r"^-?[\d,]+(\.\d+)?$")


def _free_redis_db() -> int:
    # Not 13, the benchmark's default, which someone may be running by hand;
    # the benchmark claims the number itself and fails clearly if it lost a race.
    for number in range(15, 0, -1):
        if number == 13:
            continue
        client = redis.Redis(host=REDIS_HOST, db=number)
        try:
            if not client.exists(CLAIM_KEY):
                return number
        finally:
            client.close()
    pytest.fail("no free Redis database number for the benchmark")


def test_quick_benchmark_prints_every_measurement() -> None:
    env = {
        **os.environ,
        "WORKER_BRIDGE_BENCH_REDIS_URL": f"redis://{REDIS_HOST}:6379",
    }
    admin_url = os.environ.get("WORKER_BRIDGE_TEST_ADMIN_URL")
    if admin_url:
        env["WORKER_BRIDGE_BENCH_ADMIN_URL"] = admin_url
    completed = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--redis-db", str(_free_redis_db())],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    output = completed.stdout
    assert completed.returncode == 0, f"{output}\n{completed.stderr[-8000:]}"

    rows = {}
    for line in output.splitlines():
        columns = re.split(r"\s{2,}", line.strip())
        if len(columns) == 5:
            rows[columns[0]] = columns
    for prefix in EXPECTED:
        matches = [columns for name, columns in rows.items() if name.startswith(prefix)]
        assert len(matches) == 1, f"no single line {prefix!r} in:\n{output}"
        value = matches[0][1]
        if prefix.startswith("1b") and not hasattr(worker_bridge, "schedule_jobs"):
            assert value == "n/a (schedule_jobs missing)", output
        else:
            assert NUMBER.match(value), f"line {prefix!r} has no number: {value!r}\n{output}"
    assert "machine:" in output and "PostgreSQL" in output and "Redis" in output, output
