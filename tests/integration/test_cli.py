"""The ``worker-bridge`` command against a real PostgreSQL server.

Commands run in-process through ``main()`` on the test database (the ``bridge``
fixture installs it as the process default); a few run as real subprocesses to
prove that errors print one line and no traceback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine

from worker_bridge.bridge import BridgeApp, get_bridge, set_bridge
from worker_bridge.cli import main
from worker_bridge.models import Base, JobState, WorkerJob
from worker_bridge.store import cancellation_result, store_for

ROOT = Path(__file__).resolve().parents[2]
SECRET = "s3cret-pw"
UNREACHABLE = f"postgresql+psycopg://someone:{SECRET}@127.0.0.1:1/nowhere"
STATUSES = [state.value for state in JobState]

Factory = Callable[..., WorkerJob]
Fetch = Callable[[int], WorkerJob]


@dataclass
class Outcome:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


Cli = Callable[..., Outcome]


@pytest.fixture
def cli(
    bridge: BridgeApp,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> Cli:
    """Run ``worker-bridge ARGS`` in-process on the test database."""
    monkeypatch.setenv("WORKER_BRIDGE_DATABASE_URL", database_url)
    assert get_bridge() is bridge

    def run(*args: str) -> Outcome:
        capsys.readouterr()
        code = main(list(args))
        captured = capsys.readouterr()
        return Outcome(code, captured.out, captured.err)

    return run


def assert_one_line_error(outcome: Outcome, *fragments: str) -> None:
    assert outcome.code == 1, outcome
    assert outcome.out == ""
    lines = outcome.err.splitlines()
    assert len(lines) == 1, outcome.err
    assert lines[0].startswith("worker-bridge: "), lines[0]
    assert "Traceback" not in outcome.err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def usage_error(cli: Cli, capsys: pytest.CaptureFixture[str], *args: str) -> str:
    with pytest.raises(SystemExit) as exited:
        cli(*args)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "usage: worker-bridge" in err and "Traceback" not in err
    return err


def parse_time(value: str) -> datetime:
    parsed = datetime.fromisoformat(value)
    assert parsed.tzinfo is not None, value
    return parsed


def make_states(job_factory: Factory) -> dict[str, WorkerJob]:
    """One row in each state; distinct (type, user) so no two unstarted rows collide."""
    now = datetime.now(UTC)
    done = {"started": now, "finished": now}
    return {
        "pending": job_factory(type="echo", user_id=1, due=now - timedelta(hours=1)),
        "dispatched": job_factory(type="echo", user_id=2, dispatched_at=now, task_id="t"),
        "running": job_factory(type="other", user_id=1, started=now, attempts=1),
        "succeeded": job_factory(type="other", user_id=2, **done, success=True, result={"ok": 1}),
        "failed": job_factory(
            type="noop",
            user_id=1,
            **done,
            success=False,
            result={"error": "boom", "exception": "ValueError", "traceback": "Trace\n  line 1"},
        ),
        "cancelled": job_factory(
            type="noop",
            user_id=2,
            **done,
            success=False,
            result=cancellation_result(None, "Cancelled by hand."),
        ),
    }


def make_chain(job_factory: Factory, length: int = 4) -> list[WorkerJob]:
    """Rows that follow each other through rescheduled_from_job; the last is pending."""
    now = datetime.now(UTC)
    chain: list[WorkerJob] = []
    for n in range(length):
        last = n == length - 1
        finished = {} if last else {"started": now, "finished": now, "success": False}
        chain.append(
            job_factory(
                type="echo",
                user_id=5,
                result=None if last else {"error": f"attempt {n}"},
                rescheduled_from_job=chain[-1].id if chain else None,
                **finished,
            )
        )
    return chain


# --- db upgrade -----------------------------------------------------------------------------


def test_db_upgrade_is_a_no_op_on_a_migrated_database(cli: Cli) -> None:
    outcome = cli("db", "upgrade")
    assert outcome.code == 0 and "up to date" in outcome.out
    data = cli("db", "upgrade", "--json").json()
    assert data["before"] == data["after"] is not None
    assert data["database"].startswith("postgresql+psycopg://")


# --- schedule -------------------------------------------------------------------------------


def test_schedule_prints_the_new_job(cli: Cli, fetch: Fetch) -> None:
    before = datetime.now(UTC)
    outcome = cli("schedule", "echo", "--user", "7", "--data", '{"to": "ada", "n": [1, 2]}')
    assert outcome.code == 0, outcome.err
    header, row = outcome.out.splitlines()
    assert header.split() == ["ID", "TYPE", "USER", "DUE", "CRON"]
    job_id, job_type, user, due, cron = row.split()
    job = fetch(int(job_id))
    assert (job_type, user, cron) == ("echo", "7", "-")
    assert job.data == {"to": "ada", "n": [1, 2]}
    assert job.due >= before - timedelta(seconds=1) and due.endswith("Z")
    assert job.auto_reschedule_on_failure is False and job.remove_delay == 0
    assert job.state is JobState.PENDING


def test_schedule_json_with_every_option(cli: Cli, fetch: Fetch) -> None:
    outcome = cli(
        "schedule",
        "echo",
        "--user",
        "0",
        "--due",
        "2030-01-01T10:00:00+02:00",
        "--retry-delay",
        "5000",
        "--remove-delay",
        "60000",
        "--json",
    )
    assert outcome.code == 0, outcome.err
    data = outcome.json()
    assert parse_time(data["due"]) == datetime(2030, 1, 1, 8, tzinfo=UTC)
    assert data["status"] == "pending" and data["data"] == {}
    assert data["auto_reschedule_on_failure"] is True
    assert data["auto_reschedule_on_failure_delay"] == 5000
    job = fetch(data["id"])
    assert job.user_id == 0 and job.due == datetime(2030, 1, 1, 8, tzinfo=UTC)
    assert job.auto_reschedule_on_failure and job.auto_reschedule_on_failure_delay == 5000
    assert job.remove_delay == 60000
    parse_time(data["created_at"])


def test_schedule_accepts_z_and_retry_delay_zero(cli: Cli, fetch: Fetch) -> None:
    data = cli(
        "--json",
        "schedule",
        "echo",
        "--user",
        "1",
        "--due",
        "2030-01-01T00:00Z",
        "--retry-delay",
        "0",
    ).json()
    job = fetch(data["id"])
    assert job.due == datetime(2030, 1, 1, tzinfo=UTC)
    # --retry-delay turns auto-retry on, even with no wait.
    assert job.auto_reschedule_on_failure and job.auto_reschedule_on_failure_delay == 0


def test_schedule_cron(cli: Cli, fetch: Fetch) -> None:
    outcome = cli(
        "schedule", "noop", "--user", "3", "--cron", "*/5 * * * *", "--due", "2030-01-01T00:01:00Z"
    )
    assert outcome.code == 0, outcome.err
    assert "*/5 * * * *" in outcome.out
    job_id = int(outcome.out.splitlines()[1].split()[0])
    job = fetch(job_id)
    assert job.cron_schedule == "*/5 * * * *"
    assert job.due == datetime(2030, 1, 1, 0, 5, tzinfo=UTC)  # the first fire after --due
    data = cli("schedule", "noop", "--user", "4", "--cron", "0 0 * * * *", "--json").json()
    assert data["cron_schedule"] == "0 0 * * * *" and data["status"] == "pending"


def test_schedule_replaces_the_pending_job(cli: Cli, fetch: Fetch) -> None:
    first = cli("--json", "schedule", "echo", "--user", "1").json()
    second = cli("--json", "schedule", "echo", "--user", "1").json()
    assert fetch(first["id"]).result["cancelled_by"] == second["id"]


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["nope", "--user", "1"], ["unknown job type 'nope'", "known types:", "echo"]),
        (["echo", "--user", "1", "--data", "{bad"], ["--data is not valid JSON"]),
        (["echo", "--user", "1", "--data", "[1, 2]"], ["--data must be a JSON object", "[1, 2]"]),
        (["echo", "--user", "1", "--data", '{"a": NaN}'], ["NaN"]),
        (["echo", "--user", "1", "--data", "[" * 50_000], ["--data"]),
        (["echo", "--user", "1", "--due", "2030-01-01T10:00"], ["no UTC offset", "Z", "+02:00"]),
        (["echo", "--user", "1", "--due", "2030-01-01"], ["no UTC offset"]),
        (["echo", "--user", "1", "--due", "tomorrow"], ["not an ISO-8601 timestamp"]),
        (["echo", "--user", "1", "--cron", "61 * * * *"], ["invalid cron expression"]),
        (["echo", "--user", "1", "--cron", "0 0 30 2 *"], ["never fires"]),
        (["echo", "--user", "1", "--retry-delay", str(10**15)], ["over ten years"]),
    ],
)
def test_schedule_errors_are_one_line_and_write_nothing(
    cli: Cli, all_jobs: Callable[[], list[WorkerJob]], args: list[str], fragments: list[str]
) -> None:
    assert_one_line_error(cli("schedule", *args), *fragments)
    assert all_jobs() == []


@pytest.mark.parametrize(
    "args",
    [
        ["schedule", "echo", "--user", "abc"],
        ["schedule", "echo", "--user", str(2**31)],
        ["schedule", "echo"],
        ["schedule", "echo", "--user", "1", "--retry-delay", "-1"],
        ["schedule", "echo", "--user", "1", "--remove-delay", "soon"],
        ["jobs", "--limit", "-5"],
        ["jobs", "--limit", "0"],
        ["jobs", "--limit", "9" * 5000],
        ["jobs", "--user", "x"],
        ["jobs", "--status", "lost"],
        ["show", "abc"],
        ["show", str(2**63)],
        ["cancel", "0"],
        ["frobnicate"],
        [],
    ],
)
def test_bad_arguments_are_usage_errors(
    cli: Cli, capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    usage_error(cli, capsys, *args)


# --- jobs -----------------------------------------------------------------------------------


def test_jobs_lists_newest_first_in_aligned_columns(cli: Cli, job_factory: Factory) -> None:
    states = make_states(job_factory)
    outcome = cli("jobs")
    assert outcome.code == 0, outcome.err
    lines = outcome.out.splitlines()
    assert lines[0].split() == [
        "ID",
        "TYPE",
        "USER",
        "STATUS",
        "DUE",
        "FINISHED",
        "ATTEMPTS",
        "CRON",
        "FROM",
    ]
    ids = [int(line.split()[0]) for line in lines[1:]]
    assert ids == sorted((job.id for job in states.values()), reverse=True)
    by_id = {int(line.split()[0]): line.split()[3] for line in lines[1:]}
    assert by_id == {job.id: status for status, job in states.items()}
    # Plain aligned columns: each column starts at the same offset on every line.
    offset = lines[0].index("STATUS")
    for line, status in zip(lines[1:], [by_id[i] for i in ids], strict=True):
        assert line[offset:].startswith(status)


def test_jobs_json(cli: Cli, job_factory: Factory) -> None:
    states = make_states(job_factory)
    data = cli("jobs", "--json").json()
    assert [row["id"] for row in data] == sorted((j.id for j in states.values()), reverse=True)
    row = next(row for row in data if row["id"] == states["running"].id)
    assert row["status"] == "running" and row["type"] == "other" and row["attempts"] == 1
    assert parse_time(row["due"]) == states["running"].due and row["finished"] is None
    done = next(row for row in data if row["id"] == states["succeeded"].id)
    assert parse_time(done["finished"]) == states["succeeded"].finished
    assert cli("--json", "jobs") == cli("jobs", "--json")


@pytest.mark.parametrize("status", STATUSES)
def test_jobs_filters_by_status(cli: Cli, job_factory: Factory, status: str) -> None:
    states = make_states(job_factory)
    data = cli("jobs", "--status", status, "--json").json()
    assert [row["id"] for row in data] == [states[status].id]
    assert data[0]["status"] == status
    lines = cli("jobs", "--status", status).out.splitlines()
    assert len(lines) == 2 and lines[1].split()[3] == status


def test_jobs_filters_by_type_and_user_together(cli: Cli, job_factory: Factory) -> None:
    states = make_states(job_factory)
    assert {row["id"] for row in cli("jobs", "--type", "noop", "--json").json()} == {
        states["failed"].id,
        states["cancelled"].id,
    }
    assert {row["id"] for row in cli("jobs", "--user", "2", "--json").json()} == {
        states["dispatched"].id,
        states["succeeded"].id,
        states["cancelled"].id,
    }
    both = cli("jobs", "--type", "noop", "--user", "2", "--status", "cancelled", "--json").json()
    assert [row["id"] for row in both] == [states["cancelled"].id]
    assert cli("jobs", "--type", "noop", "--status", "running", "--json").json() == []
    empty = cli("jobs", "--type", "never-scheduled")
    assert empty.code == 0 and empty.out.strip() == "no jobs match"


def test_jobs_limit_defaults_to_50(cli: Cli, job_factory: Factory) -> None:
    now = datetime.now(UTC)
    ids = [
        job_factory(type="noop", user_id=n, started=now, finished=now, success=True).id
        for n in range(55)
    ]
    assert [row["id"] for row in cli("jobs", "--json").json()] == ids[::-1][:50]
    assert [row["id"] for row in cli("jobs", "--limit", "3", "--json").json()] == ids[::-1][:3]
    assert len(cli("jobs", "--limit", "3").out.splitlines()) == 4


# --- show -----------------------------------------------------------------------------------


@pytest.mark.parametrize("position", [0, 1, 2, 3])
def test_show_lineage_both_ways(cli: Cli, job_factory: Factory, position: int) -> None:
    chain = make_chain(job_factory, 4)
    ids = [job.id for job in chain]
    data = cli("show", str(ids[position]), "--json").json()
    assert data["job"]["id"] == ids[position]
    assert [row["id"] for row in data["lineage"]["earlier"]] == ids[:position]
    assert [row["id"] for row in data["lineage"]["later"]] == ids[position + 1 :]
    assert data["lineage"]["truncated"] is False
    statuses = [row["status"] for row in data["lineage"]["earlier"] + data["lineage"]["later"]]
    assert statuses == [("pending" if i == 3 else "failed") for i in range(4) if i != position]

    outcome = cli("show", str(ids[position]))
    assert outcome.code == 0, outcome.err
    table = outcome.out.split("lineage, first to latest:\n", 1)[1].splitlines()
    assert table[0].split()[:2] == ["ID", "TYPE"]
    offset = table[0].index("ID")
    assert [int(line[offset:].split()[0]) for line in table[1:]] == ids
    marked = [line for line in table[1:] if line.startswith(">")]
    assert len(marked) == 1 and int(marked[0].split()[1]) == ids[position]


def test_show_prints_every_column_and_the_result(
    cli: Cli, job_factory: Factory, fetch: Fetch
) -> None:
    failed = make_states(job_factory)["failed"]
    data = cli("show", str(failed.id), "--json").json()["job"]
    assert set(data) == {column.key for column in WorkerJob.__table__.columns} | {"status"}
    assert data["status"] == "failed" and data["success"] is False
    assert data["result"]["error"] == "boom"
    assert parse_time(data["finished"]) == fetch(failed.id).finished
    assert data["heartbeat"] is None

    out = cli("show", str(failed.id)).out
    for column in WorkerJob.__table__.columns:
        if column.key != "result":
            assert any(line.startswith(column.key + " ") for line in out.splitlines()), column
    assert '"error": "boom"' in out
    assert "traceback:\nTrace\n  line 1" in out  # readable, not an escaped JSON string


def test_lineage_stops_at_its_limit(bridge: BridgeApp, job_factory: Factory) -> None:
    ids = [job.id for job in make_chain(job_factory, 5)]
    with bridge.engine.connect() as connection:
        cut = store_for(connection).job_lineage(connection, ids[2], limit=1)
        whole = store_for(connection).job_lineage(connection, ids[2], limit=2)
    assert [j.id for j in cut.earlier] == [ids[1]] and [j.id for j in cut.later] == [ids[3]]
    assert cut.truncated is True
    assert [j.id for j in whole.earlier] == ids[:2] and [j.id for j in whole.later] == ids[3:]
    assert whole.truncated is False


def test_show_unknown_id(cli: Cli) -> None:
    assert_one_line_error(cli("show", "424242"), "no job with id 424242")
    assert_one_line_error(cli("--json", "show", "424242"), "no job with id 424242")


# --- cancel ---------------------------------------------------------------------------------


@pytest.mark.parametrize("status", ["pending", "dispatched", "running"])
def test_cancel_a_live_job(cli: Cli, job_factory: Factory, fetch: Fetch, status: str) -> None:
    job = make_states(job_factory)[status]
    outcome = cli("cancel", str(job.id))
    assert outcome.code == 0, outcome.err
    assert outcome.out.strip() == (
        f"cancelled job {job.id} ({job.type}, user {job.user_id}), which was {status}"
    )
    row = fetch(job.id)
    assert row.state is JobState.CANCELLED and row.success is False
    assert row.finished is not None and row.task_id is None
    assert row.result["cancelled"] is True and "by hand" in row.result["error"]


def test_cancel_json(cli: Cli, job_factory: Factory) -> None:
    job = make_states(job_factory)["pending"]
    data = cli("cancel", str(job.id), "--json").json()
    assert data["previous_status"] == "pending"
    assert data["job"]["id"] == job.id and data["job"]["status"] == "cancelled"
    parse_time(data["job"]["finished"])


@pytest.mark.parametrize("status", ["succeeded", "failed", "cancelled"])
def test_cancel_a_finished_job_is_an_error(
    cli: Cli, job_factory: Factory, fetch: Fetch, status: str
) -> None:
    job = make_states(job_factory)[status]
    assert_one_line_error(cli("cancel", str(job.id)), "already finished", status)
    assert fetch(job.id).updated_at == job.updated_at  # untouched


def test_cancel_unknown_id(cli: Cli) -> None:
    assert_one_line_error(cli("cancel", "424242"), "no job with id 424242")


# --- run-now, run-again ---------------------------------------------------------------------


def test_run_now_and_run_again(cli: Cli, job_factory: Factory, fetch: Fetch) -> None:
    later = job_factory(type="echo", user_id=30, due=datetime.now(UTC) + timedelta(hours=2))
    moved = cli("run-now", str(later.id))
    assert moved.code == 0, moved.err
    assert moved.out.startswith(f"job {later.id} (echo, user 30) is due now")
    assert fetch(later.id).due <= datetime.now(UTC)
    states = make_states(job_factory)
    assert_one_line_error(cli("run-now", str(states["running"].id)), "only a pending job")

    failed = states["failed"]
    again = cli("run-again", str(failed.id), "--json").json()
    new = fetch(again["job"]["id"])
    assert new.rescheduled_from_job == failed.id and new.state is JobState.PENDING
    assert_one_line_error(
        cli("run-again", str(failed.id)), f"already has a follow-up, job {new.id}"
    )
    assert_one_line_error(cli("run-again", "424242"), "no job with id 424242")


# --- stats ----------------------------------------------------------------------------------


def test_stats(cli: Cli, job_factory: Factory) -> None:
    states = make_states(job_factory)
    job_factory(type="echo", user_id=9, due=datetime.now(UTC) + timedelta(hours=2))
    data = cli("stats", "--json").json()
    assert data["total"] == 7
    assert data["by_status"] == {s: 2 if s == "pending" else 1 for s in STATUSES}
    assert data["by_type"] == {
        "echo": {**dict.fromkeys(STATUSES, 0), "pending": 2, "dispatched": 1},
        "noop": {**dict.fromkeys(STATUSES, 0), "failed": 1, "cancelled": 1},
        "other": {**dict.fromkeys(STATUSES, 0), "running": 1, "succeeded": 1},
    }
    oldest = data["oldest_pending"]
    assert oldest["id"] == states["pending"].id
    assert parse_time(oldest["due"]) == states["pending"].due
    assert 3600 <= oldest["late_seconds"] < 3700

    lines = cli("stats").out.splitlines()
    assert lines[0].split() == ["TYPE", *(s.upper() for s in STATUSES), "TOTAL"]
    assert lines[1].split() == ["echo", "2", "1", "0", "0", "0", "0", "3"]
    assert lines[4].split() == ["total", "2", "1", "1", "1", "1", "1", "7"]
    assert lines[-1].startswith(f"oldest pending job: {states['pending'].id} (echo, user 1)")
    assert lines[-1].endswith("late") and ", 1h" in lines[-1]


def test_stats_of_an_empty_table_and_of_a_job_not_yet_due(cli: Cli, job_factory: Factory) -> None:
    data = cli("--json", "stats").json()
    assert data == {
        "total": 0,
        "by_status": dict.fromkeys(STATUSES, 0),
        "by_type": {},
        "oldest_pending": None,
    }
    assert cli("stats").out.splitlines()[-1] == "no pending job"
    job_factory(due=datetime.now(UTC) + timedelta(minutes=10))
    assert cli("stats", "--json").json()["oldest_pending"]["late_seconds"] < -590
    assert "due in 9m" in cli("stats").out.splitlines()[-1]


# --- the database cannot be reached ---------------------------------------------------------


@pytest.fixture
def unreachable(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The process default BridgeApp is rebuilt from an unreachable, password-bearing URL."""
    monkeypatch.setenv("WORKER_BRIDGE_DATABASE_URL", UNREACHABLE)
    set_bridge(None)
    try:
        yield
    finally:
        get_bridge().dispose()
        set_bridge(None)


@pytest.mark.parametrize(
    "args",
    [
        ["db", "upgrade"],
        ["schedule", "echo", "--user", "1"],
        ["jobs", "--json"],
        ["show", "1"],
        ["cancel", "1"],
        ["stats"],
    ],
)
def test_unreachable_database_hides_the_password(
    unreachable: None, capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    code = main(args)
    captured = capsys.readouterr()
    outcome = Outcome(code, captured.out, captured.err)
    assert_one_line_error(outcome, "cannot reach the database at", "someone:***@127.0.0.1:1")
    assert SECRET not in outcome.err


# --- real processes -------------------------------------------------------------------------


def run_cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "WORKER_BRIDGE_DATABASE_URL": url}
    return subprocess.run(
        [sys.executable, "-m", "worker_bridge.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["jobs"], "cannot reach the database at postgresql+psycopg://someone:***@"),
        (["schedule", "echo", "--user", "1", "--data", "{bad"], "--data is not valid JSON"),
    ],
)
def test_subprocess_errors_are_one_line_without_traceback(args: list[str], fragment: str) -> None:
    result = run_cli(UNREACHABLE, *args)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("worker-bridge: ")
    assert fragment in result.stderr
    assert SECRET not in result.stderr and "Traceback" not in result.stderr


def test_subprocess_usage_error_has_no_traceback() -> None:
    result = run_cli(UNREACHABLE, "jobs", "--limit", "-5")
    assert result.returncode == 2
    assert "usage: worker-bridge jobs" in result.stderr and "Traceback" not in result.stderr


def test_subprocess_against_the_test_database(
    bridge: BridgeApp, database_url: str, job_factory: Factory
) -> None:
    job = job_factory(type="echo", user_id=3)
    result = run_cli(database_url, "--json", "jobs", "--user", "3")
    assert result.returncode == 0, result.stderr
    assert [row["id"] for row in json.loads(result.stdout)] == [job.id]


# --- portability ----------------------------------------------------------------------------


def test_the_cli_queries_run_on_sqlite() -> None:
    """queries.py is portable Core: the same calls on an in-memory SQLite database."""
    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine)
    table = WorkerJob.__table__
    now = datetime.now(UTC)
    common = {"type": "echo", "user_id": 1, "data": {}, "created_at": now, "updated_at": now}
    try:
        with engine.begin() as connection:
            first = connection.execute(
                table.insert().values(
                    **common,
                    due=now,
                    started=now,
                    finished=now,
                    success=False,
                    result=cancellation_result(None, "by hand"),
                )
            ).inserted_primary_key[0]
            second = connection.execute(
                table.insert().values(**common, due=now, rescheduled_from_job=first)
            ).inserted_primary_key[0]
            listed = store_for(connection).list_jobs(connection, status=JobState.CANCELLED)
            lineage = store_for(connection).job_lineage(connection, second)
            stats = store_for(connection).job_stats(connection)
        assert [job.id for job in listed] == [first]
        assert [job.id for job in lineage.earlier] == [first] and lineage.later == []
        assert stats.counts == {"echo": {JobState.CANCELLED: 1, JobState.PENDING: 1}}
        assert stats.oldest_pending is not None and stats.oldest_pending.id == second
    finally:
        engine.dispose()
