"""Security: SQL is never built from input, and passwords never reach output or logs.

* SQL-looking strings in every user-controlled field are stored and read back as plain
  data, and the table survives; a static scan of the package finds no SQL text built by
  f-strings, ``%`` or ``.format`` (one allowed constant: ``LISTEN {CHANNEL}``).
* Database and broker passwords never appear in what the CLI prints (success or error,
  reachable or not), in log records, in the representation of the objects a log line or
  an error report would show, nor in the logs of real ``celery`` worker and beat processes.

The server uses trust authentication, so a URL carrying any password reaches the test
database; Redis has no password either, and redis-py (hence kombu) then accepts a URL with
one (Redis answers AUTH with an error that redis-py tolerates), so the broker URL carries
a password too.
"""

from __future__ import annotations

import ast
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest
import redis
from sqlalchemy import inspect, text
from sqlalchemy.engine import make_url

from tests.acceptance.conftest import Processes, wait_until
from tests.conftest import CLAIM_KEY, REDIS_HOST, TEST_JOBS
from worker_bridge import WorkerJobConfig, schedule_job, schedule_jobs
from worker_bridge.bridge import BridgeApp, get_bridge, set_bridge
from worker_bridge.cli import main
from worker_bridge.errors import UnknownJobTypeError
from worker_bridge.models import WorkerJob
from worker_bridge.settings import Settings
from worker_bridge.store import store_for

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "worker_bridge"

DB_PASSWORD = "Sup3rS3cretPw"
# Characters a URL must escape, to check the encoded forms are masked too.
ODD_DB_PASSWORD = "Sup3r S3cret/Pw@!:%"
BROKER_PASSWORD = "Br0kerPw"
SQL_LIKE = [
    "'; DROP TABLE worker_jobs; --",
    '"; DROP TABLE worker_jobs; --',
    "' OR '1'='1",
    "1); DELETE FROM worker_jobs; --",
    "$$; TRUNCATE worker_jobs; $$",
    "%(type)s",
    "%s",
    ":user_id",
    "\\'; SELECT pg_sleep(10); --",
]


def forms(password: str) -> set[str]:
    """Every way a password can appear in a URL or a message."""
    return {password, quote(password, safe=""), quote_plus(password)}


def assert_no_secret(text_: str, *passwords: str) -> None:
    for password in passwords:
        for form in forms(password):
            assert form not in text_, f"password form {form!r} leaked:\n{text_[-3000:]}"


def with_password(
    url: str,
    password: str,
    *,
    host: str | None = None,
    port: int | None = None,
    database: str | None = None,
) -> str:
    """``url`` with ``password`` (and another host, port or database), password in clear."""
    return (
        make_url(url)
        .set(password=password, host=host, port=port, database=database)
        .render_as_string(hide_password=False)
    )


# --- SQL injection ----------------------------------------------------------------------------


def test_sql_looking_input_is_stored_as_data_and_the_table_survives(
    bridge: BridgeApp,
    fetch: Callable[[int], WorkerJob],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    database_url: str,
) -> None:
    """SQL-looking keys and values round-trip through schedule_job and schedule_jobs;
    as a job type they are merely unknown; as a filter they match nothing; afterwards the
    table, its rows and its indexes are all still there."""
    data = {payload: [payload, {payload: payload}] for payload in SQL_LIKE}
    one = schedule_job(WorkerJobConfig(type="echo", user_id=1, data=data))
    many = schedule_jobs(
        [WorkerJobConfig(type="noop", user_id=i, data={"q": p}) for i, p in enumerate(SQL_LIKE)]
    )
    assert fetch(one.id).data == data
    assert [fetch(job.id).data for job in many] == [{"q": p} for p in SQL_LIKE]
    for payload in SQL_LIKE:
        with pytest.raises(UnknownJobTypeError):
            schedule_job(WorkerJobConfig(type=payload, user_id=1))
        with bridge.engine.connect() as connection:
            assert store_for(connection).list_jobs(connection, job_type=payload, limit=10) == []
    monkeypatch.setenv("WORKER_BRIDGE_DATABASE_URL", database_url)
    for payload in SQL_LIKE:
        capsys.readouterr()
        assert main(["--json", "jobs", "--type", payload]) == 0
        assert capsys.readouterr().out.strip() == "[]"
        assert main(["schedule", "echo", "--user", "2", "--data", json.dumps({"k": payload})]) == 0
    with bridge.engine.connect() as connection:
        count = connection.execute(text("SELECT count(*) FROM worker_jobs")).scalar_one()
        indexes = {index["name"] for index in inspect(connection).get_indexes("worker_jobs")}
    assert count == 1 + len(SQL_LIKE) + len(SQL_LIKE)
    assert "uq_worker_jobs_one_pending" in indexes


SQL_SINKS = {"text", "execute", "exec_driver_sql", "executemany", "executescript"}
SQL_WORDS = re.compile(
    r"\b(SELECT|INSERT\s+INTO|UPDATE|DELETE\s+FROM|CREATE|DROP|ALTER|TRUNCATE|LISTEN|NOTIFY|"
    r"WHERE|VALUES|GRANT|SET\s+\w+\s*=)\b"
)
# (file relative to the package, source of the expression): built SQL that is allowed.
ALLOWED = {("wakeup.py", 'f"LISTEN {CHANNEL}"')}


def _is_str(node: ast.AST) -> bool:
    return (isinstance(node, ast.Constant) and isinstance(node.value, str)) or isinstance(
        node, ast.JoinedStr
    )


def _is_formatting(node: ast.AST) -> bool:
    """An expression that builds a string from parts: f-string, %, .format() or +.

    (Column arithmetic such as ``attempts + 1`` is no string, and is not counted.)
    """
    if isinstance(node, ast.JoinedStr):
        return any(isinstance(part, ast.FormattedValue) for part in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod):
        return _is_str(node.left)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        sides = (node.left, node.right)
        strings = any(_is_str(side) or _is_formatting(side) for side in sides)
        return strings and not all(isinstance(side, ast.Constant) for side in sides)
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "format"
        and _is_str(node.func.value)
    )


def _literal_text(node: ast.AST) -> str:
    return " ".join(
        n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)
    )


def _sink_name(call: ast.Call) -> str | None:
    func = call.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    return name if name in SQL_SINKS else None


def built_sql(source: str, filename: str) -> list[str]:
    """Expressions of ``source`` that build SQL text from parts, as 'file:line: code'."""
    tree = ast.parse(source, filename)
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        line = getattr(node, "lineno", 0)
        # 1. A SQL sink called with a built string (Core expressions may hold f-strings
        #    as bound VALUES: only the statement text itself counts).
        if isinstance(node, ast.Call) and _sink_name(node) and node.args:
            argument = node.args[0]
            if _is_formatting(argument):
                found.append((line, ast.get_source_segment(source, argument) or ""))
        # 2. A built string whose literal parts read as SQL, wherever it goes.
        elif _is_formatting(node) and SQL_WORDS.search(_literal_text(node)):
            found.append((line, ast.get_source_segment(source, node) or ""))
    return [
        f"{filename}:{line}: {code}"
        for line, code in sorted(set(found))
        if (filename, code) not in ALLOWED
    ]


def test_the_scan_finds_built_sql() -> None:
    """The scanner below is not blind: each way of building SQL from input is caught, and
    constant SQL, bound parameters and ordinary messages are not."""
    bad = [
        "conn.execute(text(f\"SELECT * FROM worker_jobs WHERE type = '{t}'\"))",
        'conn.exec_driver_sql("DELETE FROM worker_jobs WHERE id = %s" % job_id)',
        'sa.text("UPDATE worker_jobs SET data = {}".format(data))',
        'conn.execute(text("SELECT 1 FROM " + table))',
        'query = f"DELETE FROM worker_jobs WHERE user_id = {user}"',
        'op.execute("DROP INDEX %s" % name)',
    ]
    for line in bad:
        assert built_sql(line, "example.py"), line
    good = [
        'conn.execute(text("SELECT 1 FROM worker_jobs WHERE id = :id"), {"id": job_id})',
        'raise ValueError(f"job {job_id} is already running")',
        'logger.info("deleted %s rows", count)',
        'message = f"Cancelled: superseded by job {new_id}"',
    ]
    for line in good:
        assert not built_sql(line, "example.py"), line


def test_no_sql_is_built_by_string_formatting_in_the_package() -> None:
    """Every statement in worker_bridge/ (migrations included) is constant text with bound
    parameters, or SQLAlchemy Core: no f-string, %, .format or + builds SQL, except the
    constant ``LISTEN {CHANNEL}`` (and CHANNEL is a plain identifier)."""
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 15 and any("migrations" in str(f) for f in files)
    findings = [
        finding
        for path in files
        for finding in built_sql(path.read_text(), str(path.relative_to(PACKAGE)))
    ]
    assert findings == []
    from worker_bridge import wakeup

    assert re.fullmatch(r"[a-z_]+", wakeup.CHANNEL)


# --- passwords: the CLI and the objects it reports ---------------------------------------------


@dataclass
class CliRun:
    code: int
    out: str
    err: str


@pytest.fixture
def cli_with_url(
    bridge: BridgeApp,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> Iterator[Callable[..., CliRun]]:
    """Run the CLI in-process with WORKER_BRIDGE_DATABASE_URL set to a given URL."""
    caplog.set_level(logging.DEBUG)
    built: list[BridgeApp] = []

    def run(url: str, *args: str) -> CliRun:
        monkeypatch.setenv("WORKER_BRIDGE_DATABASE_URL", url)
        set_bridge(None)
        capsys.readouterr()
        try:
            code = main(list(args))
        except SystemExit as exited:
            code = exited.code if isinstance(exited.code, int) else -1
        with_bridge = get_bridge()
        built.append(with_bridge)
        captured = capsys.readouterr()
        return CliRun(code, captured.out, captured.err)

    yield run
    for app in built:
        app.dispose()
    set_bridge(bridge)


COMMANDS: list[list[str]] = [
    ["db", "upgrade"],
    ["--json", "db", "upgrade"],
    ["schedule", "echo", "--user", "1", "--data", '{"a": 1}'],
    ["--json", "schedule", "echo", "--user", "2"],
    ["schedule", "nope", "--user", "1"],
    ["schedule", "echo", "--user", "1", "--data", "{bad"],
    ["jobs"],
    ["--json", "jobs", "--type", "echo"],
    ["show", "1"],
    ["--json", "show", "1"],
    ["show", "999999"],
    ["cancel", "2"],
    ["cancel", "999999"],
    ["stats"],
    ["--json", "stats"],
]


@pytest.mark.parametrize("password", [DB_PASSWORD, ODD_DB_PASSWORD])
def test_cli_output_never_shows_the_database_password(
    cli_with_url: Callable[..., CliRun],
    caplog: pytest.LogCaptureFixture,
    database_url: str,
    password: str,
) -> None:
    """Against the reachable test database (trust auth: the password is accepted) and against
    unreachable ones, every command's stdout, stderr and log records are free of the
    password, in clear or URL-encoded; errors still say which server they could not reach."""
    reachable = with_password(database_url, password)
    assert make_url(reachable).password == password
    unreachable = [
        with_password(database_url, password, port=1),
        with_password(database_url, password, host="no-such-host.invalid"),
        with_password(database_url, password, database="no_such_database"),
    ]
    seen = []
    for args in COMMANDS:
        result = cli_with_url(reachable, *args)
        assert result.code in (0, 1), (args, result)
        seen.append(result)
    assert any(r.code == 0 and "postgres:***@" in r.out for r in seen)  # db upgrade's URL
    for url in unreachable:
        for args in (["jobs"], ["--json", "stats"], ["db", "upgrade"], ["show", "1"]):
            result = cli_with_url(url, *args)
            assert result.code == 1 and result.err.count("\n") == 1, (url, args, result)
            seen.append(result)
    everything = "\n".join(f"{r.out}\n{r.err}" for r in seen) + caplog.text
    assert "cannot reach the database at postgresql+psycopg://postgres:***@127.0.0.1:1/" in (
        everything
    )
    assert_no_secret(everything, password)


def test_settings_and_bridge_reprs_hide_the_password(database_url: str) -> None:
    """repr() is what log lines ('%r'), error reports and debuggers show: the Settings and
    the BridgeApp a job receives as params.app must not print the database password
    (SQLAlchemy's Engine already masks it)."""
    url = with_password(database_url, DB_PASSWORD)
    settings = Settings(database_url=url, jobs_package=TEST_JOBS)
    app = BridgeApp.from_settings(settings)
    try:
        assert_no_secret(repr(app.engine), DB_PASSWORD)
        assert_no_secret(repr(settings), DB_PASSWORD)
        assert_no_secret(repr(app), DB_PASSWORD)
    finally:
        app.dispose()


# --- passwords: real celery processes ---------------------------------------------------------


@pytest.fixture
def secret_processes(
    bridge: BridgeApp, database_url: str, redis_db: int, tmp_path: Path
) -> Iterator[Processes]:
    """celery processes whose database and broker URLs both carry a password."""
    client = redis.Redis(host=REDIS_HOST, db=redis_db)
    client.flushdb()
    client.set(CLAIM_KEY, "held", ex=4 * 3600)
    client.close()
    env = {
        **os.environ,
        "WORKER_BRIDGE_DATABASE_URL": with_password(database_url, DB_PASSWORD),
        "CELERY_BROKER_URL": f"redis://:{BROKER_PASSWORD}@{REDIS_HOST}:6379/{redis_db}",
        "WORKER_BRIDGE_JOBS": TEST_JOBS,
        "CELERY_CONFIG_MODULE": "tests.acceptance.celeryconfig_test",
        "PYTHONPATH": str(ROOT),
    }
    group = Processes(env, tmp_path)
    try:
        yield group
    finally:
        group.stop_all()


@pytest.mark.e2e
def test_celery_worker_and_beat_logs_never_show_a_password(
    secret_processes: Processes,
    fetch: Callable[[int], WorkerJob],
    database_url: str,
    redis_db: int,
) -> None:
    """A worker and a dispatcher run jobs (one succeeding, one failing) with passwords in
    both URLs; meanwhile a dispatcher on an unreachable database and a worker on an
    unreachable broker keep failing to connect. None of their logs shows either password,
    while they do show the masked URLs."""
    processes = secret_processes
    worker = processes.worker("ws", 1)
    beat = processes.dispatcher("ds")
    lost_beat = processes.start(
        "dlost",
        "beat",
        "--loglevel",
        "INFO",
        "--pidfile",
        str(processes.log_dir / "dlost.pid"),
        env={"WORKER_BRIDGE_DATABASE_URL": with_password(database_url, DB_PASSWORD, port=1)},
    )
    lost_worker = processes.start(
        "wlost",
        "worker",
        "--loglevel",
        "INFO",
        "-n",
        "wlost@%h",
        env={"CELERY_BROKER_URL": f"redis://:{BROKER_PASSWORD}@{REDIS_HOST}:1/{redis_db}"},
    )
    ok = schedule_job(WorkerJobConfig(type="echo", user_id=1))
    bad = schedule_job(
        WorkerJobConfig(type="fail", user_id=1, data={"message": "boom at the database"})
    )
    for job in (ok, bad):
        wait_until(lambda job=job: fetch(job.id).finished is not None, 30, f"job {job.id}")
    assert fetch(ok.id).success is True and fetch(bad.id).success is False

    def failed_to_connect() -> bool:
        return "Cannot connect to redis://:**@" in processes.log_of(
            lost_worker
        ) and "dispatcher pass failed" in processes.log_of(lost_beat)

    wait_until(failed_to_connect, 30, "the lost processes to report their connection errors")
    time.sleep(1)
    logs = {p: processes.log_of(p) for p in (worker, beat, lost_beat, lost_worker)}
    assert "redis://:**@" in logs[worker]
    assert "postgres:***@127.0.0.1:5432/" in logs[beat]  # "dispatcher started on <URL>"
    assert "postgres:***@127.0.0.1:1/" in logs[lost_beat]
    for log in logs.values():
        assert_no_secret(log, DB_PASSWORD, BROKER_PASSWORD)
