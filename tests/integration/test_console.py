"""The operator's console over real PostgreSQL, through Starlette's test client (HTTP, no browser):
its pages, its filters and keyset pages, a job's timeline, lineage and supersede links, why a job
has not run, the cancel action with its CSRF token, read-only mode, authentication, /metrics."""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from starlette.testclient import TestClient

from worker_bridge import WorkerJobConfig, schedule_job
from worker_bridge.bridge import BridgeApp
from worker_bridge.cli import main
from worker_bridge.db import safe_url
from worker_bridge.job import Job, JobState
from worker_bridge.web import PAGE_SIZE, ConsoleSettings, create_app

Fetch = Callable[[int], Job]
JobFactory = Callable[..., Job]


def client(bridge: BridgeApp, **settings: object) -> TestClient:
    return TestClient(create_app(bridge, ConsoleSettings(**settings)))  # type: ignore[arg-type]


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found, "no CSRF token in the page"
    return found.group(1)


def test_the_overview_shows_each_types_live_rows(
    bridge: BridgeApp, job_factory: JobFactory
) -> None:
    now = datetime.now(UTC)
    job_factory(type="echo", user_id=1, due=now - timedelta(seconds=30))
    job_factory(type="echo", user_id=2, dispatched_at=now, task_id="t-2")
    job_factory(type="fail", user_id=1, started=now, heartbeat=now, dispatched_at=now)
    page = client(bridge).get("/")
    assert page.status_code == 200
    echo = re.search(r'<tr data-type="echo">(.*?)</tr>', page.text, re.S)
    assert echo is not None
    cells = re.findall(r'<td class="num">([^<]*)</td>', echo.group(1))
    assert cells[0:2] == ["1", "1"] and cells[3:5] == ["1", "0"]
    assert 30 <= float(cells[2].split()[0]) < 90  # the oldest due row has waited about 30 s
    assert '<span id="in-flight">1</span>' in page.text
    assert safe_url(bridge.settings.database_url) in page.text


def test_the_job_list_filters_and_pages_by_keyset(
    bridge: BridgeApp, job_factory: JobFactory
) -> None:
    rows = [job_factory(type="echo", user_id=n) for n in range(PAGE_SIZE + 10)]
    job_factory(type="fail", user_id=1)
    http = client(bridge)
    first = http.get("/jobs", params={"type": "echo"})
    ids = [int(i) for i in re.findall(r'<a href="[^"]*/jobs/(\d+)">\1</a>', first.text)]
    assert ids == sorted((row.id for row in rows), reverse=True)[:PAGE_SIZE]
    older = re.search(r'id="older" href="([^"]+)"', first.text)
    assert older is not None and f"before={ids[-1]}" in older.group(1)
    second = http.get(older.group(1).replace("&amp;", "&"))
    rest = [int(i) for i in re.findall(r'<a href="[^"]*/jobs/(\d+)">\1</a>', second.text)]
    assert rest == sorted((row.id for row in rows), reverse=True)[PAGE_SIZE:]
    assert 'id="older"' not in second.text

    by_user = http.get("/jobs", params={"type": "echo", "user": "7", "state": "pending"})
    listed = {int(i) for i in re.findall(r'<a href="[^"]*/jobs/(\d+)">\1</a>', by_user.text)}
    assert listed == {rows[7].id}
    none = http.get("/jobs", params={"type": "echo", "user": "7", "state": "running"})
    assert "no job matches" in none.text

    bad = http.get("/jobs", params={"user": "x", "state": "asleep"})
    assert "user must be a whole number" in bad.text and "unknown state" in bad.text
    jump = http.get("/jobs", params={"id": str(rows[3].id)}, follow_redirects=False)
    assert jump.status_code == 303 and jump.headers["location"].endswith(f"/jobs/{rows[3].id}")


def test_a_job_page_shows_timeline_lineage_supersede_links_and_why_it_waits(
    bridge: BridgeApp, job_factory: JobFactory
) -> None:
    now = datetime.now(UTC)
    first = job_factory(type="echo", user_id=5, due=now - timedelta(minutes=2), started=now,
                        finished=now, success=False, result={"error": "boom"})  # fmt: skip
    retry = job_factory(type="echo", user_id=5, rescheduled_from_job=first.id, started=now,
                        finished=now, success=True, result={"ok": True})  # fmt: skip
    later = job_factory(type="echo", user_id=5, rescheduled_from_job=retry.id,
                        due=now + timedelta(hours=1))  # fmt: skip
    http = client(bridge)
    page = http.get(f"/jobs/{retry.id}").text
    lineage = re.search(r'<table id="lineage">(.*?)</table>', page, re.S)
    assert lineage is not None
    assert [int(i) for i in re.findall(r"/jobs/(\d+)", lineage.group(1))] == [first.id, later.id]
    assert "Not run yet" not in page and "succeeded" in page
    waiting = http.get(f"/jobs/{later.id}").text
    assert re.search(r"Not run yet: not due yet: due in 3[56]\d\d\.\d s", waiting)

    # Supersede links, both ways: a second schedule_job of the pair cancels the first.
    old = schedule_job(WorkerJobConfig(type="echo", user_id=9, due=now + timedelta(hours=1)))
    new = schedule_job(WorkerJobConfig(type="echo", user_id=9, due=now + timedelta(hours=1)))
    assert (
        f'Superseded by <a href="http://testserver/jobs/{new.id}">'
        in http.get(f"/jobs/{old.id}").text
    )
    assert re.search(rf'Superseded when scheduled: <a href="[^"]*/jobs/{old.id}">',
                     http.get(f"/jobs/{new.id}").text)  # fmt: skip

    stranger = job_factory(type="no_such_type", user_id=1, due=now - timedelta(seconds=1))
    explained = html.unescape(http.get(f"/jobs/{stranger.id}").text)
    assert "no job module for its type 'no_such_type'" in explained
    assert http.get("/jobs/987654321").text.count("No job 987654321") == 1


def test_cancel_needs_the_csrf_token_and_is_refused_read_only(
    bridge: BridgeApp, job_factory: JobFactory, fetch: Fetch
) -> None:
    job = job_factory(type="echo", user_id=1, due=datetime.now(UTC) + timedelta(hours=1))
    http = client(bridge)
    page = http.get(f"/jobs/{job.id}").text
    token = csrf_of(page)
    forged = http.post(f"/jobs/{job.id}/cancel", data={"csrf": "guess"}, follow_redirects=False)
    assert forged.status_code == 403 and fetch(job.id).state is JobState.PENDING
    done = http.post(f"/jobs/{job.id}/cancel", data={"csrf": token}, follow_redirects=True)
    assert done.status_code == 200 and "cancelled (was pending)" in done.text
    assert fetch(job.id).state is JobState.CANCELLED
    again = http.post(f"/jobs/{job.id}/cancel", data={"csrf": token}, follow_redirects=True)
    assert "has already finished (cancelled)" in again.text

    other = job_factory(type="echo", user_id=2, due=datetime.now(UTC) + timedelta(hours=1))
    read_only = client(bridge, read_only=True)
    shown = read_only.get(f"/jobs/{other.id}").text
    assert 'id="cancel"' not in shown and "read-only" in shown
    refused = read_only.post(
        f"/jobs/{other.id}/cancel", data={"csrf": csrf_of(page)}, follow_redirects=False
    )
    assert refused.status_code == 403 and fetch(other.id).state is JobState.PENDING


def test_authentication_when_configured(bridge: BridgeApp) -> None:
    http = client(bridge, auth="ops:s3cret-pass")
    assert http.get("/").status_code == 401
    wrong = base64.b64encode(b"ops:nope").decode()
    assert http.get("/", headers={"Authorization": f"Basic {wrong}"}).status_code == 401
    right = base64.b64encode(b"ops:s3cret-pass").decode()
    page = http.get("/", headers={"Authorization": f"Basic {right}"})
    assert page.status_code == 200 and "s3cret-pass" not in page.text


def test_metrics_are_served_under_the_console(bridge: BridgeApp, job_factory: JobFactory) -> None:
    job_factory(type="echo", user_id=1, due=datetime.now(UTC) - timedelta(seconds=5))
    metrics = client(bridge).get("/metrics/")
    assert metrics.status_code == 200
    assert 'worker_bridge_jobs{state="due",type="echo"} 1.0' in metrics.text


@pytest.mark.parametrize("address", ["0.0.0.0", "10.1.2.3", "::"])
def test_the_console_refuses_a_non_loopback_address_without_authentication(
    address: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WORKER_BRIDGE_WEB_AUTH", raising=False)
    assert main(["web", "--address", address]) == 1
    err = capsys.readouterr().err
    assert f"refusing to serve the console on {address} without authentication" in err
