"""``python -m bench.console``: how fast the operator's console answers on a big table.

Issue 14's target: a console page answers in under 200 ms with 1,000,000 rows
in ``worker_jobs``. This creates a database of its own (dropped at the end,
also on errors and Ctrl-C, unless ``--keep-db``), fills it with a realistic
table (``--rows``, default 1,000,000; see :func:`load`), starts the console as
``worker-bridge web`` in a process of its own, and times real HTTP requests
against it: every page once to warm it, then ``--repeat`` rounds (default 20)
going through the pages in turn, so that a noisy spell on the machine hits
every page alike. The Celery broker the overview counts queues in is a Redis
database of its own (``--redis-db``, default 13, claimed and flushed like
``python -m bench``'s).

It prints the machine, the rows and one Markdown table: a line per page with
the median, 95th percentile, lowest and highest time in milliseconds (request
sent to body read, over a kept-alive connection) and whether the median is
under the target. Progress goes to stderr. The server addresses come from the
same variables as ``python -m bench`` (``WORKER_BRIDGE_BENCH_ADMIN_URL``,
``WORKER_BRIDGE_BENCH_REDIS_URL``).
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import unquote_plus, urlencode

from sqlalchemy import Engine, text

from bench.cli import Interrupted, _on_sigterm, clean_up
from bench.infra import BenchDatabase, BenchError, BenchRedis, Processes, process_env, wait_for
from bench.measurements import say
from bench.report import describe_machine, percentile

#: Issue 14: a page answers within this, its median over the rounds.
TARGET_MS = 200.0
DEFAULT_ROWS = 1_000_000
DEFAULT_REPEAT = 20
#: How long the console may take to listen, and one request to answer.
START_TIMEOUT = 60.0
REQUEST_TIMEOUT = 60.0

#: The one-off job types and their shares of the finished rows: one dominates.
TYPES = (
    ("sync_account", 0.55),
    ("send_email", 0.20),
    ("render_invoice", 0.10),
    ("resize_image", 0.07),
    ("export_report", 0.04),
    ("refresh_token", 0.025),
    ("deliver_webhook", 0.015),
)
BIG_TYPE = TYPES[0][0]
#: The eighth type: about RARE_ROWS finished rows whatever the table's size.
RARE_TYPE = "purge_account"
RARE_ROWS = 100
#: The types of the cron series (each series is one user's), and the one the
#: filtered cron page shows.
CRON_TYPES = ("sync_account", "refresh_token", "export_report")
CRON_PAGE_TYPE = CRON_TYPES[1]
#: Cron schedules, their share of the series (in twentieths), their period and
#: its offset from the epoch in seconds (UTC: the console's default zone).
SCHEDULES = (
    ("*/5 * * * *", 12, 300, 0),
    ("*/15 * * * *", 4, 900, 0),
    ("0 * * * *", 3, 3600, 0),
    ("30 2 * * *", 1, 86400, 9000),
)
#: Finished rows each live cron row follows.
CRON_HISTORY = 5
#: ``data.plan`` is the user's: most are free, one in 500 is enterprise.
RARE_PLAN = "enterprise"
USERS = 10_000
#: A failure's (exception, message), as ``worker_bridge.outcome`` stores them.
ERRORS = (
    ("TimeoutError", "upstream did not answer within 30 s"),
    ("ConnectionResetError", "[Errno 104] Connection reset by peer"),
    ("HTTPError", "503 Service Unavailable"),
    ("ValueError", "the account has no billing address"),
    ("KeyError", "'customer_id'"),
)
#: remove_delay of the one-off rows: a succeeded row is kept 30 days (the table holds a month).
KEEP_MS = 30 * 24 * 3600 * 1000
#: A succeeded cron row is kept a day.
CRON_KEEP_MS = 24 * 3600 * 1000


@dataclass(frozen=True)
class Shape:
    """How many rows of each kind ``--rows`` makes: a month of history and a live part."""

    rows: int
    #: Live cron series: one pending row and CRON_HISTORY finished rows each.
    series: int
    #: Pending one-off rows (unsent; one per type and user), dispatched and running ones.
    pending: int
    dispatched: int
    running: int
    #: Finished one-off rows, the last ``last_hour`` of them in the last hour.
    finished: int
    last_hour: int
    #: Users 1..users; the active ones have more rows (the low numbers).
    users: int

    @classmethod
    def of(cls, rows: int) -> Shape:
        scale = rows / 1_000_000
        series = max(5, round(2_000 * scale))
        pending = max(20, round(3_000 * scale))
        dispatched = max(5, round(300 * scale))
        running = max(5, round(200 * scale))
        finished = rows - series * (CRON_HISTORY + 1) - pending - dispatched - running
        if finished < 2 * RARE_ROWS:
            raise ValueError(f"--rows {rows} is too few for the live part; try 5000 or more")
        # Each unsent row (pending, dispatched, live cron) is a user of its own,
        # which keeps them clear of uq_worker_jobs_one_pending.
        users = max(USERS, pending + dispatched + series)
        return cls(rows, series, pending, dispatched, running, finished,
                   max(10, round(3_000 * scale)), users)  # fmt: skip


@dataclass(frozen=True)
class Page:
    """One page timed: a label for the table and the path requested."""

    label: str
    path: str
    #: What the page shows when its queries ran: a fast page that only
    #: complains about its parameters must not pass for a fast page.
    marker: str


@dataclass
class Timings:
    """The milliseconds each page took, in the order of the rounds."""

    pages: list[Page]
    samples: dict[str, list[float]] = field(default_factory=dict)

    def add(self, page: Page, ms: float) -> None:
        self.samples.setdefault(page.path, []).append(ms)


# --- the data set ---------------------------------------------------------------------


def _pick_type(random: str) -> str:
    """SQL choosing a common type by its share, from a random number in [0, 1)."""
    cases, total = [], 0.0
    for name, share in TYPES[:-1]:
        total += share
        cases.append(f"WHEN {random} < {total:.4f} THEN '{name}'")
    return f"CASE {' '.join(cases)} ELSE '{TYPES[-1][0]}' END"


def _data(user: str, source: str) -> str:
    """SQL for a row's ``data``: the user's plan and account, and where it came from."""
    plan = (
        f"CASE WHEN ({user}) % 500 = 0 THEN '{RARE_PLAN}' WHEN ({user}) % 10 < 6 THEN 'free' "
        f"WHEN ({user}) % 10 < 9 THEN 'pro' ELSE 'team' END"
    )
    return (
        f"jsonb_build_object('plan', {plan}, 'account', 100000 + ({user}), "
        f"'source', (ARRAY['api', 'web', 'import', 'admin'])[1 + ({source}) % 4])"
    )


def _array(values: Sequence[object]) -> str:
    quoted = (str(value).replace("'", "''") for value in values)
    return "(ARRAY[" + ", ".join(f"'{value}'" for value in quoted) + "])"


_EXCEPTIONS = _array([exception for exception, _ in ERRORS])
_MESSAGES = _array([message for _, message in ERRORS])

#: The one-off rows in one statement, numbered in the order they were created
#: (ids follow time, as in a real table). Parts: finished (f), pending (p),
#: dispatched (d), running (r). Every random draw is made once, in ``draws``.
ONE_OFF_ROWS = f"""
INSERT INTO worker_jobs (type, user_id, data, due, started, finished, success, result,
    remove_delay, remove_at, dispatched_at, task_id, worker, heartbeat, attempts, recoveries,
    created_at, updated_at)
SELECT type, user_id, data, due, started, finished, success, result, remove_delay, remove_at,
       dispatched_at, task_id, worker, heartbeat, attempts, recoveries, created_at,
       coalesce(finished, heartbeat, dispatched_at, created_at)
FROM (
    -- Finished: succeeded (92%), failed (6%), cancelled by hand (2%), over 30 days.
    SELECT type, user_id, {_data("user_id", "g")} AS data,
           CASE WHEN outcome = 'cancelled' THEN at + ahead + interval '1 minute'
                ELSE at - run - lag END AS due,
           CASE WHEN outcome = 'cancelled' THEN at ELSE at - run END AS started,
           at AS finished,
           outcome = 'ok' AS success,
           CASE outcome
               WHEN 'ok' THEN jsonb_build_object('processed', 1 + floor(r_err * 500)::int)
               WHEN 'failed' THEN jsonb_build_object(
                   'error', {_MESSAGES}[e], 'exception', {_EXCEPTIONS}[e],
                   'traceback', 'Traceback (most recent call last):' || chr(10)
                       || '  File "jobs/' || type || '.py", line 42, in run' || chr(10)
                       || {_EXCEPTIONS}[e] || ': ' || {_MESSAGES}[e])
               ELSE jsonb_build_object('error', 'Cancelled by hand.', 'cancelled', true,
                                       'cancelled_by', NULL)
           END AS result,
           {KEEP_MS}::bigint AS remove_delay,
           CASE WHEN outcome = 'ok' THEN at + interval '30 days' END AS remove_at,
           CASE WHEN outcome <> 'cancelled' THEN at - run - lag * 0.3 END AS dispatched_at,
           CASE WHEN outcome <> 'cancelled' THEN md5('f' || g)::uuid::text END AS task_id,
           CASE WHEN outcome <> 'cancelled'
                THEN 'worker-' || (1 + g % 4) || ':' || (4100 + g % 7) END AS worker,
           CASE WHEN outcome <> 'cancelled' THEN greatest(at - run, at - interval '2 s') END
               AS heartbeat,
           CASE WHEN outcome = 'cancelled' THEN 0 WHEN g % 97 = 0 THEN 2 ELSE 1 END AS attempts,
           CASE WHEN outcome <> 'cancelled' AND g % 97 = 0 THEN 1 ELSE 0 END AS recoveries,
           CASE WHEN outcome = 'cancelled' THEN at - ahead - interval '10 s'
                ELSE at - run - lag - ahead END AS created_at
    FROM (
        SELECT g, r_err, 1 + floor(r_err * {len(ERRORS)})::int AS e,
               CASE WHEN g % :rare_step = 0 THEN '{RARE_TYPE}' ELSE {_pick_type("r_type")} END
                   AS type,
               1 + floor(power(r_user, 1.6) * :users)::int AS user_id,
               CASE WHEN r_out < 0.92 THEN 'ok' WHEN r_out < 0.98 THEN 'failed'
                    ELSE 'cancelled' END AS outcome,
               make_interval(secs => 0.05 + power(r_run, 3) * 120) AS run,
               make_interval(secs => power(r_lag, 4) * 5) AS lag,
               CASE WHEN r_ahead < 0.7 THEN interval '0'
                    ELSE make_interval(secs => r_ahead * 3600) END AS ahead,
               CASE WHEN g <= :finished - :last_hour
                    THEN :now - interval '30 days'
                         + (interval '30 days' - interval '1 hour')
                           * (g::float8 / (:finished - :last_hour))
                    ELSE :now - interval '1 hour'
                         + interval '1 hour' * ((g - :finished + :last_hour)::float8 / :last_hour)
               END - make_interval(secs => r_lag * 20) AS at
        FROM (
            SELECT g, random() AS r_type, random() AS r_user, random() AS r_out,
                   random() AS r_run, random() AS r_lag, random() AS r_ahead, random() AS r_err
            FROM generate_series(1, :finished) AS g
        ) AS draws
    ) AS finished_rows

    UNION ALL
    -- Pending: one per (type, user); 40% overdue (a backlog), the rest due within two days.
    SELECT type, user_id, {_data("user_id", "g")}, due, NULL, NULL, NULL, NULL,
           {KEEP_MS}, NULL, NULL, NULL, NULL, NULL, 0, 0,
           least(due, :now) - make_interval(secs => r_ahead * 3600)
    FROM (
        SELECT g, r_ahead, g AS user_id,
               CASE WHEN g % 200 = 0 THEN '{RARE_TYPE}' ELSE {_pick_type("r_type")} END AS type,
               CASE WHEN g % 5 < 2 THEN :now - make_interval(secs => r_due * 600)
                    ELSE :now + make_interval(secs => power(r_due, 2) * 172800) END AS due
        FROM (
            SELECT g, random() AS r_type, random() AS r_due, random() AS r_ahead
            FROM generate_series(1, :pending) AS g
        ) AS draws
    ) AS pending_rows

    UNION ALL
    -- Dispatched: sent in the last 20 s, not started yet.
    SELECT type, :pending + g, {_data(":pending + g", "g")}, sent - make_interval(secs => r * 2),
           NULL, NULL, NULL, NULL, {KEEP_MS}, NULL, sent, md5('d' || g)::uuid::text, NULL,
           NULL, 0, 0, sent - make_interval(secs => r * 600)
    FROM (
        SELECT g, r, {_pick_type("r_type")} AS type,
               :now - make_interval(secs => r_sent * 20) AS sent
        FROM (
            SELECT g, random() AS r, random() AS r_type, random() AS r_sent
            FROM generate_series(1, :dispatched) AS g
        ) AS draws
    ) AS dispatched_rows

    UNION ALL
    -- Running: started in the last 90 s, heartbeats fresh.
    SELECT type, user_id, {_data("user_id", "g")}, started - make_interval(secs => r * 2),
           started, NULL, NULL, NULL, {KEEP_MS}, NULL, started - interval '20 ms',
           md5('r' || g)::uuid::text, 'worker-' || (1 + g % 4) || ':' || (4100 + g % 7),
           greatest(started, :now - make_interval(secs => r * 3)), 1, 0,
           started - make_interval(secs => r * 600)
    FROM (
        SELECT g, r, {_pick_type("r_type")} AS type,
               1 + floor(r_user * :users)::int AS user_id,
               :now - make_interval(secs => power(r_start, 2) * 90) AS started
        FROM (
            SELECT g, random() AS r, random() AS r_type, random() AS r_user, random() AS r_start
            FROM generate_series(1, :running) AS g
        ) AS draws
    ) AS running_rows
) AS one_off
ORDER BY created_at
"""


def _schedule_index(series: str) -> str:
    """SQL: the 1-based index in SCHEDULES of series number ``series``, by their shares."""
    cases, total = [], 0
    for index, (_, share, _, _) in enumerate(SCHEDULES[:-1], start=1):
        total += share
        cases.append(f"WHEN {series} % 20 < {total} THEN {index}")
    return f"CASE {' '.join(cases)} ELSE {len(SCHEDULES)} END"


#: The cron series in one statement, with ids of its own choosing so that each
#: row can name the one it follows: depth 5 (the oldest) of every series first,
#: as when they all fire at the same minute, up to depth 0, the live row, due at
#: the schedule's next fire time (a series in a hundred is late by one period).
#: Series ``j`` is user ``:users + 1 - j``'s, clear of the one-off unsent rows.
CRON_ROWS = f"""
INSERT INTO worker_jobs (id, type, user_id, data, due, started, finished, success, result,
    cron_schedule, remove_delay, remove_at, rescheduled_from_job, dispatched_at, task_id,
    worker, heartbeat, attempts, created_at, updated_at)
SELECT :base + ({CRON_HISTORY} - d) * :series + j, type, user_id, data, fire,
       CASE WHEN d > 0 THEN fire + lag END,
       CASE WHEN d > 0 THEN fire + lag + run END,
       CASE WHEN d > 0 THEN (j + d) % 20 <> 0 END,
       CASE WHEN d = 0 THEN NULL
            WHEN (j + d) % 20 <> 0 THEN jsonb_build_object('processed', (j * d) % 300)
            ELSE jsonb_build_object('error', 'upstream did not answer within 30 s',
                                    'exception', 'TimeoutError', 'traceback', '') END,
       schedule, {CRON_KEEP_MS},
       CASE WHEN d > 0 AND (j + d) % 20 <> 0 THEN fire + lag + run + interval '1 day' END,
       CASE WHEN d < {CRON_HISTORY} THEN :base + ({CRON_HISTORY} - d - 1) * :series + j END,
       CASE WHEN d > 0 THEN fire + lag * 0.3 END,
       CASE WHEN d > 0 THEN md5('c' || j || '/' || d)::uuid::text END,
       CASE WHEN d > 0 THEN 'worker-' || (1 + j % 4) || ':' || (4100 + j % 7) END,
       CASE WHEN d > 0 THEN fire + lag + run END,
       CASE WHEN d > 0 THEN 1 ELSE 0 END,
       created, coalesce(CASE WHEN d > 0 THEN fire + lag + run END, created)
FROM (
    SELECT j, d, type, user_id, data, schedule, fire, lag, run,
           -- A row is written when the one it follows finishes (the first: a minute early).
           CASE WHEN d = {CRON_HISTORY} THEN fire - interval '1 minute'
                ELSE fire - make_interval(secs => period)
                     + make_interval(secs => ((j * 7 + (d + 1) * 13) % 100) / 50.0)
                     + make_interval(secs => 0.2 + ((j * 31 + (d + 1) * 17) % 200) / 10.0)
           END AS created
    FROM (
        SELECT j, d, period, (ARRAY{list(CRON_TYPES)})[1 + j % {len(CRON_TYPES)}] AS type,
               :users + 1 - j AS user_id, {_data(":users + 1 - j", "j")} AS data,
               (ARRAY{[s[0] for s in SCHEDULES]})[k] AS schedule,
               to_timestamp(ceil((extract(epoch FROM :now) - offs) / period) * period + offs)
                   - make_interval(secs => period * (d + CASE WHEN j % 100 = 0 THEN 1 ELSE 0 END))
                   AS fire,
               make_interval(secs => ((j * 7 + d * 13) % 100) / 50.0) AS lag,
               make_interval(secs => 0.2 + ((j * 31 + d * 17) % 200) / 10.0) AS run
        FROM (
            SELECT j, d, k, (ARRAY{[s[2] for s in SCHEDULES]})[k] AS period,
                   (ARRAY{[s[3] for s in SCHEDULES]})[k] AS offs
            FROM (
                SELECT j, d, {_schedule_index("j")} AS k
                FROM generate_series(1, :series) AS j,
                     generate_series(0, {CRON_HISTORY}) AS d
            ) AS numbered
        ) AS scheduled
    ) AS fired
) AS cron
ORDER BY 1
"""


#: What the removal job rolled up in the last hour (rows it deleted), per minute and type.
MINUTE_ROWS = f"""
INSERT INTO worker_job_minutes (minute, type, succeeded, failed, cancelled, ran, lag_sum, lag_max)
SELECT minute, type, succeeded, failed, cancelled, succeeded + failed,
       (succeeded + failed) * lag, CASE WHEN succeeded + failed > 0 THEN lag * 4 ELSE 0 END
FROM (
    SELECT minute, type,
           floor(random() * 2 * share * :per_minute)::int AS succeeded,
           floor(random() * 0.12 * share * :per_minute)::int AS failed,
           (random() < 0.05)::int AS cancelled,
           0.05 + random() * 0.3 AS lag
    FROM generate_series(date_trunc('minute', CAST(:now AS timestamptz)) - interval '59 minutes',
                         date_trunc('minute', CAST(:now AS timestamptz)),
                         interval '1 minute') AS minute,
         unnest(ARRAY{[name for name, _ in TYPES] + [RARE_TYPE]},
                ARRAY{[share for _, share in TYPES] + [0.0001]}) AS t(type, share)
) AS per_minute
"""


def load(db: BenchDatabase, shape: Shape, seed: float = 0.14) -> None:
    """Fill the (empty, migrated) table as a month of a busy deployment would.

    Rows of eight types, one holding more than half, one about RARE_ROWS;
    ``data`` holds the user's plan (one user in 500 is RARE_PLAN) and account.
    Finished one-off rows, succeeded (92%), failed (6%, with the ``result`` a
    failure stores) and cancelled by hand (2%), finished over the last 30 days
    and ``shape.last_hour`` of them in the last hour, ids in creation order;
    pending rows (some overdue, most due within two days), dispatched and
    running ones; live cron series, each a pending row following a chain of
    CRON_HISTORY finished ones through ``rescheduled_from_job``; and the last
    hour of ``worker_job_minutes``. Then VACUUM ANALYZE, as autovacuum keeps a
    real table.

    The cron series come last, after VACUUM, with due times from a fresh clock:
    by the time the pages are timed, no series has fallen due while nothing
    dispatched it (the cron page would flag them late and count missed fires).
    """
    now = datetime.now(UTC)
    with db.engine.begin() as connection:
        # The statement sorts a million rows by creation time: in memory, not on disk.
        connection.execute(text("SET LOCAL work_mem = '256MB'"))
        connection.execute(text("SELECT setseed(:seed)"), {"seed": seed})
        connection.execute(
            text(ONE_OFF_ROWS),
            {
                "now": now, "users": shape.users, "finished": shape.finished,
                "last_hour": shape.last_hour, "rare_step": max(1, shape.finished // RARE_ROWS),
                "pending": shape.pending, "dispatched": shape.dispatched,
                "running": shape.running,
            },
        )  # fmt: skip
        connection.execute(
            text(MINUTE_ROWS), {"now": now, "per_minute": max(1, shape.last_hour // 60)}
        )
    say("one-off rows inserted; VACUUM ANALYZE")
    _vacuum_analyze(db.engine)
    now = datetime.now(UTC)
    with db.engine.begin() as connection:
        base = connection.execute(text("SELECT coalesce(max(id), 0) FROM worker_jobs")).scalar()
        connection.execute(
            text(CRON_ROWS),
            {"now": now, "base": base, "series": shape.series, "users": shape.users},
        )
        # The ids above were chosen here: the next one drawn must come after them.
        connection.execute(
            text(
                "SELECT setval(pg_get_serial_sequence('worker_jobs', 'id'), "
                "(SELECT max(id) FROM worker_jobs))"
            )
        )
    _vacuum_analyze(db.engine, "ANALYZE worker_jobs")


def _vacuum_analyze(
    engine: Engine, statement: str = "VACUUM ANALYZE worker_jobs, worker_job_minutes"
) -> None:
    # VACUUM refuses to run inside a transaction block. After it, the table is as
    # autovacuum keeps a real one (visibility map set), and it will not start
    # vacuuming the million fresh rows in the middle of the timing.
    with engine.connect() as connection:
        autocommit = connection.execution_options(isolation_level="AUTOCOMMIT")
        autocommit.execute(text(statement))


@dataclass(frozen=True)
class Landmarks:
    """What the loaded table holds, and the rows the pages ask for."""

    rows: int
    minutes: int
    live_series: int
    #: A row from the middle of the table: the second page starts below it.
    middle_id: int
    #: The user of that row (a user as active as the rows say).
    user_id: int
    #: A finished cron row with earlier and later rows in its chain.
    lineage_job: int
    #: The Celery task id of the middle row (Flower's id, looked up in the table).
    task_id: str
    #: When it was loaded: the time ranges asked for are a week and a month before.
    now: datetime


def landmarks(engine: Engine) -> Landmarks:
    """Find the rows the pages ask for, and count what was loaded."""
    with engine.connect() as connection:

        def scalar(sql: str, **params: object) -> int:
            value = connection.execute(text(sql), params).scalar()
            if value is None:
                raise BenchError(f"the data set lacks what this finds: {sql}")
            return int(value)

        rows = scalar("SELECT count(*) FROM worker_jobs")
        minutes = scalar("SELECT count(*) FROM worker_job_minutes")
        live = "cron_schedule IS NOT NULL AND finished IS NULL"
        live_series = scalar(f"SELECT count(*) FROM worker_jobs WHERE {live}")
        middle = scalar("SELECT (min(id) + max(id)) / 2 FROM worker_jobs")
        middle_id = scalar(
            "SELECT id FROM worker_jobs WHERE id >= :middle ORDER BY id LIMIT 1", middle=middle
        )
        user_id = scalar("SELECT user_id FROM worker_jobs WHERE id = :id", id=middle_id)
        # The row two before a live row of the middle series: two rows after it, three before.
        lineage_job = scalar(
            "SELECT earlier.rescheduled_from_job FROM worker_jobs AS live "
            "JOIN worker_jobs AS earlier ON earlier.id = live.rescheduled_from_job "
            "WHERE live.cron_schedule IS NOT NULL AND live.finished IS NULL "
            "ORDER BY live.id LIMIT 1 OFFSET :half",
            half=live_series // 2,
        )
        task_id = connection.execute(
            text(
                "SELECT task_id FROM worker_jobs WHERE id >= :id AND task_id IS NOT NULL "
                "ORDER BY id LIMIT 1"
            ),
            {"id": middle_id},
        ).scalar()
        if task_id is None:
            raise BenchError("the data set has no row with a task id")
    return Landmarks(
        rows, minutes, live_series, middle_id, user_id, lineage_job, str(task_id),
        datetime.now(UTC),
    )  # fmt: skip


# --- the pages --------------------------------------------------------------------------

#: In every page: the filters' problems, if any (then no query ran).
PROBLEM = 'class="problem"'


def pages(marks: Landmarks) -> list[Page]:
    """The pages timed, with the parameters an operator would use on this table."""

    def jobs(label: str, **query: object) -> Page:
        return Page(label, f"/jobs?{urlencode(query)}" if query else "/jobs", 'id="count"')

    def finished(label: str, since: datetime, length: timedelta) -> Page:
        moment = "%Y-%m-%dT%H:%M:%S"  # the form's datetime-local, read in the console's zone
        return jobs(label, field="finished", since=since.strftime(moment),
                    until=(since + length).strftime(moment))  # fmt: skip

    hour = (marks.now - timedelta(days=7)).replace(minute=0, second=0, microsecond=0)
    # A day a month back: many matches (the planner expects the newest ids to hold
    # 50 soon), all of them far down the ids.
    day = (marks.now - timedelta(days=29)).replace(hour=0, minute=0, second=0, microsecond=0)
    return [
        Page("overview", "/", 'id="types"'),
        jobs("jobs, newest first"),
        jobs("jobs of the big type", type=BIG_TYPE),
        jobs("jobs of the rare type", type=RARE_TYPE),
        jobs("jobs of one user", user=marks.user_id),
        jobs("a task id from Flower", task_id=marks.task_id),
        jobs("pending jobs", state="pending"),
        jobs("failed jobs", state="failed"),
        jobs("data contains a rare plan", data=json.dumps({"plan": RARE_PLAN})),
        finished("finished in one hour a week ago", hour, timedelta(hours=1)),
        finished("finished in one day a month ago", day, timedelta(days=1)),
        jobs("jobs, a page from the middle", before=marks.middle_id),
        Page("a cron job and its lineage", f"/jobs/{marks.lineage_job}", 'id="lineage"'),
        Page("cron series", "/cron", "data-type="),
        Page("cron series of one type", f"/cron?{urlencode({'type': CRON_PAGE_TYPE})}",
             "data-type="),
        Page("bulk cancel preview, rare type",
             f"/jobs/cancel?{urlencode({'type': RARE_TYPE})}", 'id="preview"'),
    ]  # fmt: skip


#: A page answering with one of these did not show what it is timed for.
WRONG = (PROBLEM, "no job matches", "no live cron job", "an unknown number of")


class Client:
    """GET requests over one kept-alive connection, timed from sending to the body's end."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._connection: http.client.HTTPConnection | None = None

    def get(self, path: str) -> tuple[int, str, float]:
        """(status, body, milliseconds); reconnects once if the server closed the connection."""
        for attempt in (1, 2):
            if self._connection is None:
                # Connected before the clock starts: the time is the page's, not TCP's.
                self._connection = http.client.HTTPConnection(
                    "127.0.0.1", self.port, timeout=REQUEST_TIMEOUT
                )
                self._connection.connect()
            started = time.perf_counter()
            try:
                self._connection.request("GET", path)
                response = self._connection.getresponse()
                body = response.read()
            except (http.client.HTTPException, ConnectionError):
                self.close()
                if attempt == 2:
                    raise
                continue
            elapsed = (time.perf_counter() - started) * 1000
            if response.will_close:
                self.close()
            return response.status, body.decode(errors="replace"), elapsed
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def fetch(client: Client, page: Page) -> float:
    """Request ``page`` once, check it shows what it should; its milliseconds."""
    status, body, ms = client.get(page.path)
    if status != 200:
        raise BenchError(f"{page.path} answered {status}: {body[:2000]}")
    if page.marker not in body or any(wrong in body for wrong in WRONG):
        problems = [line.strip() for line in body.splitlines() if PROBLEM in line]
        raise BenchError(
            f"{page.path} does not show what it is timed for ({page.marker!r} missing, or "
            f"one of {WRONG} present): {problems or body[:2000]}"
        )
    return ms


def time_pages(port: int, chosen: list[Page], repeat: int) -> Timings:
    """Every page once to warm it, then ``repeat`` rounds through them all in turn."""
    client = Client(port)
    timings = Timings(chosen)
    try:
        for page in chosen:
            ms = fetch(client, page)
            say(f"warm-up {page.path}: {ms:,.0f} ms")
        for round_number in range(1, repeat + 1):
            for page in chosen:
                timings.add(page, fetch(client, page))
            if round_number % 5 == 0 or round_number == repeat:
                say(f"round {round_number}/{repeat} done")
    finally:
        client.close()
    return timings


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def start_console(processes: Processes) -> int:
    """``worker-bridge web`` on a free loopback port, in a process group of its own; the port."""
    port = _free_port()
    processes.spawn("console", ["-m", "worker_bridge.cli", "web", "--port", str(port)])
    wait_for(
        lambda: _listening(port), START_TIMEOUT, f"the console to listen on port {port}",
        check=processes.check_alive,
    )  # fmt: skip
    return port


# --- the report ---------------------------------------------------------------------------


def format_table(timings: Timings) -> str:
    """The Markdown table: a line per page, its times and whether its median meets the target."""
    lines = [
        f"| page | path | median ms | p95 ms | min ms | max ms | median < {TARGET_MS:.0f} ms |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for page in timings.pages:
        values = timings.samples.get(page.path, [])
        if not values:
            lines.append(f"| {page.label} | `{_shown(page.path)}` | - | - | - | - | - |")
            continue
        median = statistics.median(values)
        met = "yes" if median < TARGET_MS else "**NO**"
        lines.append(
            f"| {page.label} | `{_shown(page.path)}` | {median:,.1f} | "
            f"{percentile(values, 95):,.1f} | {min(values):,.1f} | {max(values):,.1f} | {met} |"
        )
    return "\n".join(lines)


def _shown(path: str) -> str:
    """The path as a person reads it (its query decoded)."""
    return unquote_plus(path)


# --- the run ------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.console",
        description="Time the operator's console's pages on a table of --rows rows "
        f"(issue 14: under {TARGET_MS:.0f} ms with 1,000,000).",
    )
    parser.add_argument("--rows", type=int, default=DEFAULT_ROWS,
                        help=f"rows in worker_jobs (default {DEFAULT_ROWS:,})")
    parser.add_argument("--repeat", type=int, default=DEFAULT_REPEAT,
                        help=f"timed requests per page, in rounds (default {DEFAULT_REPEAT})")
    parser.add_argument("--redis-db", type=int, default=13,
                        help="Redis database number of the console's broker, claimed and "
                             "flushed (default 13)")
    parser.add_argument("--keep-db", action="store_true",
                        help="keep the benchmark's PostgreSQL database at the end")
    args = parser.parse_args(argv)  # fmt: skip
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    try:
        args.shape = Shape.of(args.rows)
    except ValueError as exc:
        parser.error(str(exc))
    return args


def describe_rows(shape: Shape, marks: Landmarks) -> str:
    return (
        f"rows:     {marks.rows:,} in worker_jobs ({shape.finished:,} finished one-off rows "
        f"over 30 days, {shape.last_hour:,} of them in the last hour; {shape.pending:,} pending, "
        f"{shape.dispatched:,} dispatched, {shape.running:,} running; {marks.live_series:,} live "
        f"cron series with {CRON_HISTORY} earlier rows each), {len(TYPES) + 1} types, "
        f"{shape.users:,} users; {marks.minutes:,} rows in worker_job_minutes"
    )


@dataclass
class Run:
    """What one run set up, to clean it up whatever happens, and what it measured."""

    args: argparse.Namespace
    log_dir: Path
    redis_db: BenchRedis | None = None
    db: BenchDatabase | None = None
    processes: Processes | None = None
    timings: Timings | None = None
    #: The machine and the rows, printed above the table.
    header: list[str] = field(default_factory=list)
    #: Seconds spent creating and loading the database, and starting the console and timing.
    loaded: float = 0.0
    timed: float = 0.0

    def measure(self) -> None:
        started = time.monotonic()
        args = self.args
        self.redis_db = BenchRedis(args.redis_db)
        self.db = BenchDatabase()
        say(f"database {self.db.name}, Redis database {args.redis_db}, logs in {self.log_dir}")
        self.header.append(describe_machine(self.db.engine, self.redis_db.info("redis_version")))
        say(f"loading {args.rows:,} rows")
        load(self.db, args.shape)
        marks = landmarks(self.db.engine)
        self.loaded = time.monotonic() - started
        say(f"loaded in {self.loaded:.0f} s")
        self.header.append(describe_rows(args.shape, marks))
        self.processes = Processes(process_env(self.db.url, self.redis_db.url), self.log_dir)
        port = start_console(self.processes)
        chosen = pages(marks)
        say(f"console on port {port}: {len(chosen)} pages, {args.repeat} rounds")
        self.timings = time_pages(port, chosen, args.repeat)
        self.timed = time.monotonic() - started - self.loaded

    def clean_up(self) -> int:
        """Stop the console, drop the database, release the Redis database; how many failed.

        One clean-up failing does not skip the others.
        """
        return clean_up(self.processes, self.db, self.redis_db, keep_db=self.args.keep_db)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = " ".join(["python -m bench.console", *(sys.argv[1:] if argv is None else argv)])
    signal.signal(signal.SIGTERM, _on_sigterm)
    run = Run(args, Path(tempfile.mkdtemp(prefix="worker_bridge_bench_console_")))
    errors = 0
    interrupted = False
    started = time.monotonic()
    try:
        run.measure()
    except (KeyboardInterrupt, Interrupted):
        interrupted = True
        say("interrupted: stopping the console and cleaning up")
    except BenchError as exc:
        say(f"cannot run: {exc}")
        errors += 1
    except Exception:
        traceback.print_exc(file=sys.stderr)
        errors += 1
    finally:
        errors += run.clean_up()
        if errors or interrupted:
            say(f"console log kept in {run.log_dir}")
        else:
            shutil.rmtree(run.log_dir, ignore_errors=True)
    if run.header:
        print("\n".join(run.header))
        took = time.monotonic() - started
        print(
            f"run:      {command} (rows={args.rows:,}, repeat={args.repeat}; load "
            f"{run.loaded:.0f} s, timing {run.timed:.0f} s, took {took:.0f} s)"
        )
        print()
    if run.timings is not None:
        print(format_table(run.timings))
    if interrupted:
        return 130
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
