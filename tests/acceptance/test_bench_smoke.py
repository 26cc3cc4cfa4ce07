"""The benchmark still runs: ``python -m bench --quick`` exits 0 with a number on every line.

The peers of item 8 are optional (``pip install -e '.[bench]'``): a peer that is
not installed must say so instead of failing the run. Nothing here times anything.

It starts its own database, Redis database and celery processes, so this test
needs nothing from the fixtures but a free Redis database number.
"""

from __future__ import annotations

import importlib.util
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
    "2b end-to-end, batched mode",
    "3a bare Celery, Celery's defaults",
    "3a' bare Celery, the bridge's settings",
    "3b ratio 2 / 3a,",
    "3b' ratio 2 / 3a',",
    "3c bare Celery publish",
    "3d ratio 2b (batched) / 3a,",
    "4a latency schedule_job -> run(), p50",
    "4b latency schedule_job -> run(), p95",
    "4c latency schedule_job -> run(), p99",
    "5a cron fire (due) -> run(), p50",
    "5b cron fire (due) -> run(), p99",
    "7 dispatcher alone",
    "8a procrastinate",
    "8b pgqueuer",
    "9 end-to-end, backlog of 200 ",
    "9 end-to-end, backlog of 400 ",
    "9 flat in the backlog",
]
#: Lines measured in rounds: a median and the range of the rounds.
IN_ROUNDS = ["2 ", "2b ", "3a ", "3a' ", "3b ", "3b' ", "3d "]
#: Lines with a CPU figure (µs per job); 8a and 8b when their peer is installed.
WITH_CPU = ["2 ", "2b ", "3a ", "3a' ", "9 end-to-end, backlog of 200 "]
#: The modules each peer needs.
PEERS = {"8a": ("procrastinate",), "8b": ("pgqueuer", "asyncpg")}
NUMBER = re.compile(r"^-?[\d,]+(\.\d+)?$")
RANGE = re.compile(r"^[\d,]+(\.\d+)?-[\d,]+(\.\d+)?$")
#: measurement, value, unit, range, CPU µs/job, target, met?
COLUMNS = 7


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


def _run_bench(*arguments: str) -> subprocess.CompletedProcess[str]:
    """``python -m <arguments>`` against the test run's services, on a free Redis database."""
    env = {
        **os.environ,
        "WORKER_BRIDGE_BENCH_REDIS_URL": f"redis://{REDIS_HOST}:6379",
    }
    admin_url = os.environ.get("WORKER_BRIDGE_TEST_ADMIN_URL")
    if admin_url:
        env["WORKER_BRIDGE_BENCH_ADMIN_URL"] = admin_url
    return subprocess.run(
        [sys.executable, "-m", *arguments, "--redis-db", str(_free_redis_db())],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def test_quick_benchmark_prints_every_measurement() -> None:
    completed = _run_bench("bench", "--quick")
    output = completed.stdout
    assert completed.returncode == 0, f"{output}\n{completed.stderr[-8000:]}"

    rows = {}
    for line in output.splitlines():
        columns = re.split(r"\s{2,}", line.strip())
        if len(columns) == COLUMNS:
            rows[columns[0]] = columns

    def row(prefix: str) -> list[str]:
        matches = [columns for name, columns in rows.items() if name.startswith(prefix)]
        assert len(matches) == 1, f"no single line {prefix!r} in:\n{output}"
        return matches[0]

    for prefix in EXPECTED:
        value = row(prefix)[1]
        peer = PEERS.get(prefix[:2])
        if prefix.startswith("1b") and not hasattr(worker_bridge, "schedule_jobs"):
            assert value == "n/a (schedule_jobs missing)", output
        elif peer and any(importlib.util.find_spec(module) is None for module in peer):
            assert value.startswith("n/a (") and "not installed" in value, output
        else:
            assert NUMBER.match(value), f"line {prefix!r} has no number: {value!r}\n{output}"
    for prefix in IN_ROUNDS:
        spread = row(prefix)[3]
        assert RANGE.match(spread), f"line {prefix!r} has no range: {spread!r}\n{output}"
    cpu_lines = WITH_CPU + [
        key
        for key, modules in PEERS.items()
        if all(importlib.util.find_spec(module) is not None for module in modules)
    ]
    for prefix in cpu_lines:
        cpu = row(prefix)[4]
        assert NUMBER.match(cpu), f"line {prefix!r} has no CPU figure: {cpu!r}\n{output}"
    assert row("3b ")[5] == ">= 0.75" and row("3b ")[6] in ("met", "NOT met"), output
    assert row("3d ")[5] == ">= 3.00" and row("3d ")[6] in ("met", "NOT met"), output
    assert row("9 flat")[5] == "<= 15" and row("9 flat")[6] in ("met", "NOT met"), output
    assert "machine:" in output and "PostgreSQL" in output and "Redis" in output, output


#: A line of the console benchmark's Markdown table: page, path, median, p95, min, max, met.
CONSOLE_CELLS = 7
MILLISECONDS = re.compile(r"^[\d,]+\.\d$")


def test_console_benchmark_prints_a_line_per_page() -> None:
    from datetime import UTC, datetime

    from bench.console import Landmarks, pages

    completed = _run_bench("bench.console", "--rows", "20000", "--repeat", "2")
    output = completed.stdout
    assert completed.returncode == 0, f"{output}\n{completed.stderr[-8000:]}"
    assert "PostgreSQL" in output and "20,000 in worker_jobs" in output, output

    table = [line for line in output.splitlines() if line.startswith("|")]
    header, rule, *lines = table
    assert "median ms" in header and set(rule) <= set("|-: "), output
    expected = pages(Landmarks(0, 0, 0, 1, 1, 1, "task", datetime.now(UTC)))
    assert len(lines) == len(expected), output
    for line, page in zip(lines, expected, strict=True):
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        assert len(cells) == CONSOLE_CELLS and cells[0] == page.label, line
        for value in cells[2:6]:
            assert MILLISECONDS.match(value), f"no number in {line!r}\n{output}"
        assert cells[6] in ("yes", "**NO**"), line
