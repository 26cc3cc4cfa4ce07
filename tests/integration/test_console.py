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


def listed_ids(page: str) -> list[int]:
    return [int(i) for i in re.findall(r'<a href="[^"]*/jobs/(\d+)">\1</a>', page)]


def test_the_job_list_filters_on_data_and_time_ranges_and_caps_its_count(
    bridge: BridgeApp, job_factory: JobFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    pro = job_factory(user_id=1, data={"plan": "pro", "seats": 5, "tags": ["a", "b"]})
    job_factory(user_id=2, data={"plan": "free"})
    early = job_factory(user_id=3, due=now - timedelta(days=2), started=now - timedelta(days=2),
                        finished=now - timedelta(days=2), success=True)  # fmt: skip
    http = client(bridge)
    assert listed_ids(http.get("/jobs", params={"data": '{"plan": "pro"}'}).text) == [pro.id]
    nested = http.get("/jobs", params={"data": '{"tags": ["b"]}'}).text
    assert listed_ids(nested) == [pro.id]
    assert "1 jobs match" in nested
    bad = html.unescape(http.get("/jobs", params={"data": "[1, 2]"}).text)
    assert "data must be a JSON object, got list" in bad
    assert "data must be a JSON object such as" in html.unescape(
        http.get("/jobs", params={"data": "{plan"}).text
    )

    # A window on finished, read in the console's zone (UTC here) without an offset.
    day_ago = (now - timedelta(days=2, hours=1)).strftime("%Y-%m-%dT%H:%M")
    window = {"field": "finished", "since": day_ago,
              "until": (now - timedelta(days=1)).isoformat()}  # fmt: skip
    assert listed_ids(http.get("/jobs", params=window).text) == [early.id]
    assert "must be a date and time" in http.get("/jobs", params={"since": "yesterday"}).text

    monkeypatch.setattr("worker_bridge.web.COUNT_CAP", 2)
    capped = http.get("/jobs").text
    assert "more than 2 jobs match" in capped and len(listed_ids(capped)) == 3


def test_run_now_makes_a_pending_job_due_and_needs_the_csrf_token(
    bridge: BridgeApp, job_factory: JobFactory, fetch: Fetch
) -> None:
    later = datetime.now(UTC) + timedelta(hours=1)
    job = job_factory(user_id=1, due=later)
    http = client(bridge)
    page = http.get(f"/jobs/{job.id}").text
    assert 'id="run-now"' in page
    forged = http.post(f"/jobs/{job.id}/run-now", data={"csrf": "x"}, follow_redirects=False)
    assert forged.status_code == 403 and fetch(job.id).due == job.due
    done = http.post(f"/jobs/{job.id}/run-now", data={"csrf": csrf_of(page)})
    assert "due now" in done.text and fetch(job.id).due <= datetime.now(UTC)
    assert 'id="run-now"' not in done.text  # due already: nothing to move

    running = job_factory(user_id=2, started=datetime.now(UTC), dispatched_at=datetime.now(UTC))
    refused = http.post(f"/jobs/{running.id}/run-now", data={"csrf": csrf_of(page)})
    assert f"job {running.id} is running: only a pending job can be run now" in refused.text


def test_run_again_writes_a_new_row_that_follows_the_old_one(
    bridge: BridgeApp, job_factory: JobFactory, fetch: Fetch
) -> None:
    now = datetime.now(UTC)
    failed = job_factory(user_id=4, data={"n": 1}, started=now, finished=now, success=False,
                         result={"error": "boom"}, auto_reschedule_on_failure=True,
                         auto_reschedule_on_failure_delay=5000, remove_delay=60000)  # fmt: skip
    http = client(bridge)
    page = http.get(f"/jobs/{failed.id}").text
    assert 'id="run-again"' in page and 'id="run-now"' not in page
    again = http.post(f"/jobs/{failed.id}/run-again", data={"csrf": csrf_of(page)})
    new_id = int(re.search(r"<h1>Job (\d+)", again.text).group(1))  # type: ignore[union-attr]
    assert new_id != failed.id and f"scheduled again from job {failed.id}" in again.text
    new = fetch(new_id)
    assert new.rescheduled_from_job == failed.id and new.state is JobState.PENDING
    assert (new.type, new.user_id, new.data) == (failed.type, failed.user_id, failed.data)
    assert (new.auto_reschedule_on_failure_delay, new.remove_delay) == (5000, 60000)
    assert new.due <= datetime.now(UTC)
    assert fetch(failed.id).result == {"error": "boom"}  # history kept
    # The old row now has a follow-up: no second run again of it, and the page says so.
    assert 'id="run-again"' not in http.get(f"/jobs/{failed.id}").text
    twice = http.post(f"/jobs/{failed.id}/run-again", data={"csrf": csrf_of(page)})
    assert f"already has a follow-up, job {new_id}" in twice.text
    live = http.post(f"/jobs/{new_id}/run-again", data={"csrf": csrf_of(page)})
    assert f"job {new_id} is pending: only a finished job can be run again" in live.text
    read_only = client(bridge, read_only=True)
    assert read_only.post(f"/jobs/{failed.id}/run-again", data={"csrf": "x"}).status_code == 403


def test_bulk_cancel_previews_the_count_then_cancels_only_what_it_showed(
    bridge: BridgeApp, job_factory: JobFactory, fetch: Fetch
) -> None:
    now = datetime.now(UTC)
    targets = [job_factory(type="echo", user_id=n, data={"batch": "b1"}) for n in range(3)]
    running = job_factory(type="echo", user_id=9, data={"batch": "b1"}, started=now,
                          dispatched_at=now, task_id="never-sent")  # fmt: skip
    done = job_factory(type="echo", user_id=10, data={"batch": "b1"}, started=now, finished=now,
                       success=True)  # fmt: skip
    other = job_factory(type="echo", user_id=11, data={"batch": "b2"})
    http = client(bridge)
    listing = http.get("/jobs", params={"data": '{"batch": "b1"}'}).text
    link = re.search(r'id="bulk-cancel" href="([^"]+)"', listing)
    assert link is not None
    preview = http.get(html.unescape(link.group(1)))
    assert re.search(r'<strong id="count">4</strong>', preview.text)
    # A job scheduled after the preview is left alone.
    newer = job_factory(type="echo", user_id=12, data={"batch": "b1"})
    form = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', preview.text))
    form = {key: html.unescape(value) for key, value in form.items()}
    assert form["data"] == '{"batch": "b1"}'
    forged = http.post("/jobs/cancel", data={**form, "csrf": "x"}, follow_redirects=False)
    assert forged.status_code == 403 and fetch(targets[0].id).state is JobState.PENDING
    result = http.post("/jobs/cancel", data=form)
    assert "cancelled 4 jobs" in result.text
    for row in (*targets, running):
        assert fetch(row.id).state is JobState.CANCELLED
    assert fetch(done.id).state is JobState.SUCCEEDED
    assert fetch(other.id).state is JobState.PENDING
    assert fetch(newer.id).state is JobState.PENDING

    everything = http.get("/jobs/cancel").text
    assert "a bulk cancel never applies to every job" in everything
    assert 'id="confirm"' not in everything
    empty = http.post("/jobs/cancel", data={"csrf": form["csrf"], "up_to": "999"}).text
    assert "refusing to cancel every live job" in empty
    assert 'id="bulk-cancel"' not in client(bridge, read_only=True).get(
        "/jobs", params={"type": "echo"}
    ).text


def test_the_cron_page_shows_each_series_with_its_runs_and_flags(
    bridge: BridgeApp, job_factory: JobFactory
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    minute = now.replace(second=0)
    every_minute = "* * * * *"
    # A series on time: each row due at its fire time, the live one at the next minute
    # (so that the page reads the same for a whole minute).
    first = job_factory(type="echo", user_id=1, cron_schedule=every_minute,
                        due=minute - timedelta(minutes=1), started=minute - timedelta(minutes=1),
                        finished=minute - timedelta(minutes=1), success=True)  # fmt: skip
    second = job_factory(type="echo", user_id=1, cron_schedule=every_minute,
                         rescheduled_from_job=first.id, due=minute,
                         started=now, finished=now, success=False, result={"error": "x"})  # fmt: skip
    live = job_factory(type="echo", user_id=1, cron_schedule=every_minute,
                       rescheduled_from_job=second.id, due=minute + timedelta(minutes=1))  # fmt: skip
    # A series stuck for 15 minutes and more: late, and its fire times since missed.
    five = now.replace(minute=now.minute - now.minute % 5, second=0)
    stuck = job_factory(type="fail", user_id=2, cron_schedule="*/5 * * * *",
                        due=five - timedelta(minutes=15))  # fmt: skip
    missed = 3 if five < now else 2
    job_factory(type="echo", user_id=3, due=now)  # one-off: not a series
    page = client(bridge).get("/cron").text
    rows = re.findall(r'<tr data-type="([^"]+)" data-user="(\d+)">(.*?)</tr>', page, re.S)
    assert [(t, int(u)) for t, u, _ in rows] == [("echo", 1), ("fail", 2)]
    echo, fail = rows[0][2], rows[1][2]
    assert [int(i) for i in re.findall(r"/jobs/(\d+)", echo)] == [live.id, second.id, first.id]
    assert "failed" in echo and "succeeded" in echo
    assert len(re.findall(r"<span>\d{4}-\d\d-\d\d \d\d:\d\d:00</span>", echo)) == 5
    assert "flag" not in echo
    assert re.search(r'class="flag late">late \d+ s', fail)
    assert re.search(rf'class="flag missed">missed {missed}<', fail)
    only = client(bridge).get("/cron", params={"type": "fail"}).text
    assert f"/jobs/{stuck.id}" in only and f"/jobs/{live.id}" not in only


def test_the_overview_charts_the_last_hour_including_removed_rows(
    bridge: BridgeApp, job_factory: JobFactory
) -> None:
    now = datetime.now(UTC)
    for n in range(3):
        job_factory(user_id=n, due=now - timedelta(minutes=5, seconds=4), started=now - timedelta(minutes=5),
                    finished=now - timedelta(minutes=4), success=True, remove_at=now)  # fmt: skip
    job_factory(type="fail", user_id=1, started=now, finished=now - timedelta(minutes=4),
                success=False, result={"error": "x"})  # fmt: skip
    http = client(bridge)

    def totals() -> tuple[str, str]:
        page = http.get("/").text
        line = re.search(r'<p id="chart-totals">(.*?)</p>', page, re.S)
        assert line is not None
        fail = re.search(r'<tr data-type="fail">(.*?)</tr>', page, re.S)
        assert fail is not None
        return " ".join(line.group(1).split()), fail.group(1)

    before, fail_row = totals()
    assert before.startswith("4 finished: 3 succeeded, 1 failed, 0 cancelled")
    assert re.findall(r'<td class="num">([^<]*)</td>', fail_row)[-3:] == ["0", "1", "0"]
    with bridge.engine.begin() as connection:
        assert bridge.store.delete_removable_jobs(
            connection, now=now, failed_before=now - timedelta(days=7)
        ) == 3
    assert totals()[0] == before
    page = http.get("/").text
    assert re.search(r'<g class="bar" data-minute="[^"]+" data-finished="4">', page)
    assert 'id="queued"' in page and 'id="max-in-flight"' in page


def test_a_job_links_to_its_task_in_flower_when_flower_is_configured(
    bridge: BridgeApp, job_factory: JobFactory
) -> None:
    job = job_factory(user_id=1, dispatched_at=datetime.now(UTC), task_id="abc-123")
    linked = client(bridge, flower_url="http://flower.internal:5555/").get(f"/jobs/{job.id}")
    assert 'id="flower" href="http://flower.internal:5555/task/abc-123"' in linked.text
    assert 'id="flower"' not in client(bridge).get(f"/jobs/{job.id}").text
    secret = client(bridge, flower_url="https://admin:s3cret@flower.internal/").get(
        f"/jobs/{job.id}"
    )
    assert 'href="https://flower.internal/task/abc-123"' in secret.text
    assert "s3cret" not in secret.text


def test_a_time_range_pages_on_by_that_time(bridge: BridgeApp, job_factory: JobFactory) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    rows = [
        job_factory(user_id=n, started=now, finished=now - timedelta(seconds=n), success=True)
        for n in range(PAGE_SIZE + 5)
    ]
    http = client(bridge)
    window = {"field": "finished", "since": (now - timedelta(hours=1)).isoformat()}
    first = http.get("/jobs", params=window).text
    assert listed_ids(first) == [row.id for row in rows[:PAGE_SIZE]]  # latest finish first
    older = re.search(r'id="older" href="([^"]+)"', first)
    assert older is not None and "before_at=" in older.group(1)
    second = http.get(html.unescape(older.group(1))).text
    assert listed_ids(second) == [row.id for row in rows[PAGE_SIZE:]]


def test_a_broker_that_is_down_is_unknown_not_a_hang() -> None:
    import time

    from celery import Celery

    from worker_bridge.broker import CONNECT_TIMEOUT, queued_messages

    started = time.monotonic()
    assert queued_messages(Celery(broker="redis://127.0.0.1:1/0"), {"celery"}) is None
    assert time.monotonic() - started < 2 * CONNECT_TIMEOUT + 2


def test_review_cases_a_job_result_an_empty_data_filter_a_bad_page_and_flower_tokens(
    bridge: BridgeApp, job_factory: JobFactory
) -> None:
    now = datetime.now(UTC)
    http = client(bridge)
    # A job's own result may say anything, "cancelled_by" included: not a supersede link.
    odd = job_factory(user_id=1, started=now, finished=now, success=True,
                      result={"cancelled_by": "abc"})  # fmt: skip
    liar = job_factory(user_id=2, started=now, finished=now, success=True,
                       result={"cancelled_by": 5})  # fmt: skip
    for job in (odd, liar):
        page = http.get(f"/jobs/{job.id}")
        assert page.status_code == 200 and 'id="cancelled-by"' not in page.text
    # data {} is contained in every row: no filter, and never a bulk cancel of everything.
    empty = html.unescape(http.get("/jobs", params={"data": "{}"}).text)
    assert "name at least one key" in empty
    preview = html.unescape(http.get("/jobs/cancel", params={"data": "{}"}).text)
    assert 'id="confirm"' not in preview and "name at least one key" in preview
    # A page cursor that is not a time is refused, not ignored.
    bad = http.get("/jobs", params={"field": "due", "since": now.isoformat(), "before": "5",
                                    "before_at": "soon"})  # fmt: skip
    assert "before_at must be a date and time" in bad.text
    # A token in Flower's query string never reaches a page.
    sent = job_factory(user_id=3, dispatched_at=now, task_id="t-9")
    tokened = client(bridge, flower_url="http://flower.internal/?token=s3cret#x")
    linked = tokened.get(f"/jobs/{sent.id}").text
    assert 'href="http://flower.internal/task/t-9"' in linked and "s3cret" not in linked
