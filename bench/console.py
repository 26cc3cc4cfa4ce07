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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlencode

from sqlalchemy import Engine, text

from bench.cli import Interrupted, _on_sigterm
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
#: Every 30 days a succeeded one-off row is kept (so the table holds a month).
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
        users = max(USERS, 2 * (pending + dispatched + series))
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
    return "ARRAY[" + ", ".join(f"'{value}'" for value in values) + "]"


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
        SELECT g, random() AS r, {_pick_type("random()")} AS type,
               :now - make_interval(secs => random() * 20) AS sent
        FROM generate_series(1, :dispatched) AS g
    ) AS dispatched_rows

    UNION ALL
    -- Running: started in the last 90 s, heartbeats fresh.
    SELECT type, user_id, {_data("user_id", "g")}, started - make_interval(secs => r * 2),
           started, NULL, NULL, NULL, {KEEP_MS}, NULL, started - interval '20 ms',
           md5('r' || g)::uuid::text, 'worker-' || (1 + g % 4) || ':' || (4100 + g % 7),
           greatest(started, :now - make_interval(secs => r * 3)), 1, 0,
           started - make_interval(secs => r * 600)
    FROM (
        SELECT g, random() AS r, {_pick_type("random()")} AS type,
               1 + floor(random() * :users)::int AS user_id,
               :now - make_interval(secs => power(random(), 2) * 90) AS started
        FROM generate_series(1, :running) AS g
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

