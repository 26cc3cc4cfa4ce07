"""The console in a real browser: Debian's headless Chromium driven by Playwright, against a
real ``worker-bridge web``, worker and dispatcher on PostgreSQL and Redis.

It opens the overview and its chart, filters the job list, opens a job and follows its
lineage, runs a waiting retry now, cancels a running job, and looks at a cron series; a
screenshot of each page is saved under ``test-artifacts/console`` (or
``$WORKER_BRIDGE_TEST_ARTIFACTS``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.acceptance.conftest import ROOT, Processes, free_port, process_gone, wait_until
from worker_bridge import WorkerJobConfig, schedule_cron_job, schedule_job
from worker_bridge.job import Job, JobState

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = (
    Path(os.environ.get("WORKER_BRIDGE_TEST_ARTIFACTS", ROOT / "test-artifacts")) / "console"
)

Fetch = Callable[[int], Job]


@pytest.fixture
def backend() -> str:
    return "postgresql"


@pytest.fixture
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def console(processes: Processes) -> Iterator[str]:
    """A real ``worker-bridge web`` on a free loopback port; its base URL."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "worker_bridge.cli", "web", "--port", str(port)],
        cwd=ROOT,
        env=processes.env,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        try:
            with urllib.request.urlopen(base + "/", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    try:
        wait_until(answers, 30, "the console to answer", interval=0.2)
        yield base
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)
        server.wait(10)


def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_an_operator_watches_and_acts_in_the_console(
    processes: Processes, console: str, browser: Browser, fetch: Fetch
) -> None:
    worker = processes.worker("w1", 2)
    processes.wait_ready(worker)
    processes.dispatcher()
    failing = schedule_job(
        WorkerJobConfig(type="fail", user_id=1, auto_reschedule_on_failure=True,
                        auto_reschedule_on_failure_delay=600_000)
    )  # fmt: skip
    long = schedule_job(WorkerJobConfig(type="record", user_id=2, data={"sleep": 60}))
    # A cron series every two seconds, its rows kept an hour so that its history shows.
    series = schedule_cron_job(
        WorkerJobConfig(type="echo", user_id=3, remove_delay=3_600_000), "*/2 * * * * *"
    )
    wait_until(lambda: fetch(failing.id).finished, 30, "the failing job to fail")
    wait_until(lambda: fetch(long.id).state is JobState.RUNNING, 30, "the long job to run")
    page = browser.new_page()

    # The overview: the running job's type counted, the failure in the last hour's chart.
    page.goto(console + "/")
    row = page.locator('tr[data-type="record"]')
    running = row.locator("td").nth(5).inner_text()
    assert running == "1", page.content()
    assert page.locator('tr[data-type="fail"] td').nth(8).inner_text() == "1"
    assert page.locator("#chart g.bar").count() >= 1
    shot(page, "overview")

    # The job list, filtered by type through the form.
    page.goto(console + "/jobs")
    page.fill('input[name="type"]', "fail")
    page.click('#filters button[type="submit"]')
    page.wait_for_url("**/jobs?*type=fail*")
    listed = page.locator("#job-list td:first-child a").all_inner_texts()
    assert str(failing.id) in listed and str(long.id) not in listed
    shot(page, "jobs")

    # A job, and its lineage followed to the retry.
    page.click(f'#job-list a:text-is("{failing.id}")')
    page.wait_for_url(f"**/jobs/{failing.id}")
    assert page.locator("#state").inner_text() == "failed"
    retry_link = page.locator("#lineage a").first
    retry_id = int(retry_link.inner_text())
    assert fetch(retry_id).rescheduled_from_job == failing.id
    shot(page, "job")
    retry_link.click()
    page.wait_for_url(f"**/jobs/{retry_id}")
    assert "Not run yet: not due yet" in page.locator("#why").inner_text()
    shot(page, "lineage")

    # The retry waits ten minutes: run it now, and the dispatcher sends it at once.
    page.click("#run-now button")
    page.wait_for_url(f"**/jobs/{retry_id}?message=*")
    assert "due now" in page.locator("#message").inner_text()
    wait_until(lambda: fetch(retry_id).finished, 30, "the retry run now to run")
    page.reload()
    assert page.locator("#state").inner_text() == "failed"
    shot(page, "run-now")

    # Cancel the running job: it stops, and its row stays cancelled.
    page.goto(f"{console}/jobs/{long.id}")
    pool_pid = int((fetch(long.id).worker or "").rsplit(":", 1)[1])
    page.click("#cancel button")
    page.wait_for_url(f"**/jobs/{long.id}?message=*")
    message = page.locator("#message").inner_text()
    assert "cancelled (was running); its run was told to stop" in message
    assert page.locator("#state").inner_text() == "cancelled"
    shot(page, "cancelled")

    wait_until(
        lambda: process_gone(pool_pid), 15, "the cancelled job's pool process to be terminated"
    )
    assert fetch(long.id).state is JobState.CANCELLED

    # The cron series: its line, its last runs, its next five fire times.
    wait_until(
        lambda: len(series_runs(fetch, series.id)) >= 3, 30, "three runs of the cron series"
    )
    page.goto(console + "/cron")
    line = page.locator('#series tr[data-type="echo"][data-user="3"]')
    assert line.count() == 1, page.content()
    runs = line.locator("td.history a").all_inner_texts()
    assert len(runs) >= 2 and set(runs) == {"succeeded"}, runs
    assert line.locator("td.fires span").count() == 5
    shot(page, "cron")
    line.locator("td a").first.click()
    page.wait_for_url("**/jobs/*")
    assert page.locator("#lineage a").count() >= 2
    found: list[Any] = sorted(path.name for path in ARTIFACTS.glob("*.png"))
    expected = {"overview", "jobs", "job", "lineage", "run-now", "cancelled", "cron"}
    assert {f"{name}.png" for name in expected} <= set(found)


def series_runs(fetch: Fetch, first_id: int) -> list[Job]:
    """The finished rows of the cron series that starts at ``first_id``, in order."""
    runs = []
    job = fetch(first_id)
    while job.finished is not None:
        runs.append(job)
        follow = job_after(job.id)
        if follow is None:
            break
        job = fetch(follow)
    return runs


def job_after(job_id: int) -> int | None:
    from worker_bridge.bridge import get_bridge

    bridge = get_bridge()
    with bridge.engine.connect() as connection:
        return bridge.store.follow_up_of(connection, job_id)
