"""The measurements, one method per item of the benchmark (``--only`` selects them).

Every item starts from an empty ``worker_jobs``, an empty Redis database and no
running process, and starts the processes it needs itself. Rows the items
count are told apart by ``user_id`` ranges (see the constants below), so the
warm-up rows and the removal job's row never get in the count.

Items 2 and 3 run in rounds (``--rounds``, default 3), alternating in one
invocation: a round is item 2, then bare Celery with Celery's defaults (3a),
then bare Celery with the bridge's settings (3a'). One run's figure moves too
much on a shared machine to settle a ratio; the table shows each side's median
and range, and the ratio 2 / 3a of each round, its median against the target.
Every no-op of items 2, 3 and 8 has the same body, one Redis round trip (an
``INCR``: ``bench.jobs.noop``, ``bench.bare_app``, ``bench.peers``).

The CPU column (``bench.cpu``) is CPU time per job over every process
involved, sampled before and after the measured run: the worker's process
group (main process and pool children) or the peer's worker processes, the
dispatcher (item 2) or the publishing bench process (item 3, its CPU while it
publishes), the PostgreSQL backends of the database measured (the bench's own
polling connections left out) and the Redis server. The Redis server is shared
with whatever else runs on the machine, which then counts too.
"""

from __future__ import annotations

import asyncio
import math
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import text

from bench import cpu, peers
from bench.infra import BenchDatabase, BenchError, BenchRedis, Processes, wait_for
from bench.report import Line, percentile
from worker_bridge import WorkerJobConfig, schedule_cron_job, schedule_job
from worker_bridge.store.schema import jobs_table

if TYPE_CHECKING:
    from celery import Celery

#: Measured rows have user ids 1..N.
#: One (type, user_id) pair scheduled over and over (item 1, "same pair").
SAME_USER = 99_000_000
#: Item 6's million future rows, and its hundred thousand finished rows.
SCALE_FUTURE_USERS = 100_000_000
SCALE_FINISHED_USERS = 300_000_000
SCALE_FUTURE_ROWS = 1_000_000
SCALE_FINISHED_ROWS = 100_000
#: Warm-up rows, far from everything else.
WARMUP_USERS = 2_000_000_000
WARMUP_JOBS = 20
#: remove_delay of measured rows: the removal job (every minute) must not
#: delete a finished row before the measurement has counted it.
KEEP_MS = 24 * 3600 * 1000
#: Item 1: calls per variant (the rate is steady long before this).
MAX_SCHEDULE_CALLS = 5_000
#: schedule_jobs batch size (item 1b) and insertion chunk.
BATCH = 1_000
#: Pessimistic insertion rate, to put T0 safely after the last insert commits.
INSERT_RATE_FLOOR = 4_000.0
#: Item 4: pause between two schedule_job calls.
LATENCY_SPACING = 0.007

#: Item 3's target: the median over the rounds of 2 / 3a.
RATIO_TARGET = 0.75
#: Item 2b's job type (``bench.jobs.noop_batched``) and its BATCH_SIZE.
BATCHED_TYPE = "noop_batched"
BATCHED_SIZE = 100
#: Item 3's target for batched mode: the median over the rounds of 2b / 3a.
BATCHED_RATIO_TARGET = 3.0
#: Item 9: the backlogs drained, and how far each rate may stray from their median.
BACKLOGS = (4_000, 20_000, 100_000)
FLAT_TOLERANCE = 0.15

ITEMS = (1, 2, 3, 4, 5, 6, 7, 8, 9)


def say(message: str) -> None:
    """Progress on stderr; stdout carries only the machine and the table."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def rate_line(label: str, value: float, unit: str, floor: float | None) -> Line:
    if floor is None:
        return Line(label, value, unit)
    return Line(label, value, unit, f">= {floor:,.0f}", value >= floor)


@dataclass(frozen=True)
class Run:
    """One measured run: its rate and the CPU it cost per job."""

    rate: float
    #: Microseconds of CPU per job, over every process involved.
    cpu_us: float


def _median_line(label: str, runs: list[Run], unit: str) -> Line:
    rates = [run.rate for run in runs]
    return Line(
        label,
        statistics.median(rates),
        unit,
        spread=(min(rates), max(rates)),
        cpu_us=statistics.median(run.cpu_us for run in runs),
    )


def _ratio_line(label: str, ratios: list[float], target: float | None) -> Line:
    median = statistics.median(ratios)
    spread = (min(ratios), max(ratios))
    if target is None:
        return Line(label, median, "ratio", spread=spread)
    return Line(label, median, "ratio", f">= {target:.2f}", median >= target, spread=spread)


def _import_schedule_jobs() -> Callable[..., Any] | None:
    # Being added to worker_bridge by another change: absent, item 1b says n/a.
    try:
        from worker_bridge import schedule_jobs
    except ImportError:
        return None
    return schedule_jobs


class Bench:
    """The run's database, Redis database and processes, and the lines measured so far."""

    def __init__(
        self,
        db: BenchDatabase,
        redis_db: BenchRedis,
        processes: Processes,
        *,
        n: int,
        latency_jobs: int,
        cron_fires: int,
        rounds: int = 3,
        backlogs: Sequence[int] = BACKLOGS,
        config: str = "celeryconfig",
    ) -> None:
        self.db = db
        self.redis = redis_db
        self.processes = processes
        self.n = n
        self.latency_jobs = latency_jobs
        self.cron_fires = cron_fires
        self.rounds = rounds
        self.backlogs = tuple(backlogs)
        #: The Celery config module of the bridge's worker and dispatcher.
        self.config = config
        self.lines: list[Line] = []
        #: Measurements that failed inside an item that went on (a peer of item 8).
        self.failures = 0
        self._warned_cpu = False
        #: Figures later items compare with (item 6 with 2 and 4, item 7 with 3).
        self.figures: dict[str, float] = {}
        self._warmups = 0
        #: While item 6 runs: keep its 1.1M rows between its two runs.
        self._scale_rows = False

    # --- plumbing ---------------------------------------------------------------

    def run(self, item: int) -> None:
        getattr(self, f"item{item}")()

    def items_2_and_3(self) -> None:
        """Items 2 and 3 together: their rounds alternate."""
        self._rounds(bridge=True, bare=True)

    def reset(self) -> None:
        """No process, no measured row, an empty Redis database."""
        self.processes.stop_all()
        if self._scale_rows:
            self._delete_measured_rows()
        else:
            self.db.truncate()
        self.redis.flush()

    def _delete_measured_rows(self) -> None:
        with self.db.engine.begin() as connection:
            connection.execute(
                text("DELETE FROM worker_jobs WHERE user_id < :low OR user_id >= :warm"),
                {"low": SCALE_FUTURE_USERS, "warm": WARMUP_USERS},
            )
        self._vacuum()

    def _vacuum(self) -> None:
        # VACUUM refuses to run inside a transaction block.
        with self.db.engine.connect() as connection:
            autocommit = connection.execution_options(isolation_level="AUTOCOMMIT")
            autocommit.execute(text("VACUUM ANALYZE worker_jobs"))

    def scalar(self, sql: str, **params: Any) -> Any:
        # On the monitor engine: the CPU accounting leaves these connections out.
        with self.db.monitor.connect() as connection:
            return connection.execute(text(sql), params).scalar()

    def cpu_sample(self, database: str | None = None) -> cpu.Sample:
        """CPU used so far by every process involved: the process groups running,
        the backends of ``database`` (default: the bench's) and the Redis server."""
        pids = cpu.group_members(self.processes.groups())
        servers = self.db.backend_pids(database)
        backends, strangers = cpu.named(servers, "postgres")
        redis_pid = self.redis.server_pid()
        redis, others = cpu.named([] if redis_pid is None else [redis_pid], "redis-server")
        strangers += others
        if strangers and not self._warned_cpu:
            # A server in a container or elsewhere: its pids are not this machine's.
            self._warned_cpu = True
            say(f"CPU column: pids {strangers} are not this machine's PostgreSQL or Redis "
                "processes; their CPU is left out")
        return cpu.sample(pids + backends + redis)

    def cpu_per_job(
        self, before: cpu.Sample, after: cpu.Sample, jobs: int, extra_seconds: float = 0.0
    ) -> float:
        """Microseconds of CPU per job between two samples (plus ``extra_seconds``
        the caller measured itself)."""
        return (cpu.used_seconds(before, after) + extra_seconds) * 1e6 / jobs

    def start_bridge(self, *, worker: bool = True, config: str | None = None) -> None:
        """Start a worker (optional) and one dispatcher, and wait until they have
        run (or, without worker, dispatched) a few jobs: the measurements leave
        out start-up, imports and first connections."""
        config = self.config if config is None else config
        if worker:
            self.processes.worker(config=config)
        self.processes.dispatcher(config)
        first = WARMUP_USERS + self._warmups
        self._warmups += WARMUP_JOBS
        for user in range(first, first + WARMUP_JOBS):
            schedule_job(WorkerJobConfig(type="noop", user_id=user, remove_delay=KEEP_MS))
        column = "finished" if worker else "dispatched_at"
        wait_for(
            lambda: self.scalar(
                f"SELECT count(*) FROM worker_jobs WHERE user_id >= :first AND {column} IS NULL",
                first=first,
            )
            == 0,
            120,
            "the worker and dispatcher to warm up",
            interval=0.1,
            check=self.processes.check_alive,
        )

    def insert_jobs(self, job_type: str, users: Sequence[int], due: datetime) -> None:
        """Write one row per user, due at ``due``, in one transaction (not measured)."""
        schedule_jobs = _import_schedule_jobs()
        with self.db.engine.begin() as connection:
            for chunk in _chunks(users, BATCH):
                if schedule_jobs is not None:
                    schedule_jobs(
                        [
                            WorkerJobConfig(
                                type=job_type, user_id=user, due=due, remove_delay=KEEP_MS
                            )
                            for user in chunk
                        ],
                        session=connection,
                    )
                else:
                    now = datetime.now(UTC)
                    connection.execute(
                        jobs_table.insert(),
                        [
                            {
                                "type": job_type,
                                "user_id": user,
                                "data": {},
                                "due": due,
                                "remove_delay": KEEP_MS,
                                "created_at": now,
                                "updated_at": now,
                            }
                            for user in chunk
                        ],
                    )

    def insert_due_later(self, count: int, job_type: str = "noop") -> float:
        """Insert ``count`` rows of ``job_type`` due at one instant T0 after they are
        all committed; return T0 (epoch seconds)."""
        margin = 2.0 + count / INSERT_RATE_FLOOR
        t0 = datetime.now(UTC) + timedelta(seconds=margin)
        say(f"inserting {count:,} rows due at T0 = now + {margin:.1f} s")
        self.insert_jobs(job_type, range(1, count + 1), t0)
        left = t0.timestamp() - time.time()
        if left < 0.2:
            raise BenchError(
                f"inserting {count:,} rows took longer than the {margin:.1f} s margin before T0; "
                "the measurement would include insertion"
            )
        return t0.timestamp()

    def _wait_unfinished(self, job_type: str, count: int, what: str) -> None:
        wait_for(
            lambda: self.scalar(
                "SELECT count(*) FROM worker_jobs WHERE type = :type AND user_id BETWEEN 1 "
                "AND :n AND finished IS NULL",
                type=job_type,
                n=count,
            )
            == 0,
            60 + count / 50,
            what,
            # The figures come from the rows' own timestamps, not from when this
            # poll sees them: poll gently, so as not to load the system measured.
            interval=0.5,
            check=self.processes.check_alive,
        )
        failed = self.scalar(
            "SELECT count(*) FROM worker_jobs WHERE type = :type AND user_id BETWEEN 1 AND :n "
            "AND success IS NOT TRUE",
            type=job_type,
            n=count,
        )
        if failed:
            raise BenchError(f"{failed} of the {count} {job_type} jobs did not succeed")

    # --- item 1: scheduling rate ------------------------------------------------

    def item1(self) -> None:
        self.reset()
        calls = min(self.n, MAX_SCHEDULE_CALLS)
        for user in range(WARMUP_USERS, WARMUP_USERS + 50):
            # First calls pay for connections and compiling the statements.
            schedule_job(WorkerJobConfig(type="noop", user_id=user))

        say(f"1a: {calls:,} schedule_job calls, each to a distinct (type, user_id)")
        started = time.perf_counter()
        for user in range(1, calls + 1):
            schedule_job(WorkerJobConfig(type="noop", user_id=user))
        distinct = calls / (time.perf_counter() - started)
        self.lines.append(
            rate_line("1a schedule_job, distinct (type, user_id)", distinct, "jobs/s", 1_500)
        )

        say(f"1a': {calls:,} schedule_job calls to one (type, user_id), each cancelling one")
        started = time.perf_counter()
        for _ in range(calls):
            schedule_job(WorkerJobConfig(type="noop", user_id=SAME_USER))
        same = calls / (time.perf_counter() - started)
        cancelled = self.scalar(
            "SELECT count(*) FROM worker_jobs WHERE user_id = :u AND success = false", u=SAME_USER
        )
        if cancelled != calls - 1:
            raise BenchError(f"expected {calls - 1} cancelled rows, found {cancelled}")
        self.lines.append(
            rate_line(
                "1a' schedule_job, same (type, user_id), cancels one each", same, "jobs/s", 1_500
            )
        )

        label = f"1b schedule_jobs, batches of {BATCH:,}"
        schedule_jobs = _import_schedule_jobs()
        if schedule_jobs is None:
            self.lines.append(
                Line(label, None, "rows/s", ">= 20,000", None, "n/a (schedule_jobs missing)")
            )
            return
        self.db.truncate()
        rows = max(math.ceil(self.n / BATCH), 2) * BATCH
        schedule_jobs([WorkerJobConfig(type="noop", user_id=WARMUP_USERS + i) for i in range(50)])
        say(f"1b: {rows:,} rows through schedule_jobs in batches of {BATCH:,}")
        started = time.perf_counter()
        for chunk in _chunks(range(1, rows + 1), BATCH):
            schedule_jobs([WorkerJobConfig(type="noop", user_id=user) for user in chunk])
        batched = rows / (time.perf_counter() - started)
        self.lines.append(rate_line(label, batched, "rows/s", 20_000))

    # --- item 2: end-to-end throughput ------------------------------------------

    def throughput(self, job_type: str = "noop", n: int | None = None) -> Run:
        """N no-op jobs of ``job_type`` due at T0, worker and dispatcher warm: jobs/s
        from T0 to the last finish; CPU of the worker, the dispatcher, the database
        and Redis."""
        n = self.n if n is None else n
        self.reset()
        self.start_bridge()
        t0 = self.insert_due_later(n, job_type)
        before = self.cpu_sample()
        self._wait_unfinished(job_type, n, f"{n:,} {job_type} jobs to finish")
        after = self.cpu_sample()
        last = self.scalar(
            "SELECT extract(epoch FROM max(finished)) FROM worker_jobs "
            "WHERE type = :type AND user_id BETWEEN 1 AND :n",
            type=job_type,
            n=n,
        )
        return Run(n / (float(last) - t0), self.cpu_per_job(before, after, n))

    def item2(self) -> None:
        self._rounds(bridge=True, bare=False)

    def _rounds(self, *, bridge: bool, bare: bool) -> None:
        """``self.rounds`` rounds of item 2 and/or item 3's two bare runs, alternating."""
        from bench.bare_app import BRIDGE_SETTINGS, DEFAULTS

        ours: list[Run] = []
        batched: list[Run] = []
        defaults: list[Run] = []
        same: list[Run] = []
        for number in range(1, self.rounds + 1):
            round_text = f"round {number}/{self.rounds}"
            if bridge:
                say(f"2, {round_text}: end-to-end throughput of {self.n:,} no-op jobs")
                ours.append(self.throughput())
                say(f"2, {round_text}: {ours[-1].rate:,.0f} jobs/s")
                say(f"2b, {round_text}: the same in batched mode (BATCH_SIZE {BATCHED_SIZE})")
                batched.append(self.throughput(BATCHED_TYPE))
                say(f"2b, {round_text}: {batched[-1].rate:,.0f} jobs/s")
            if bare:
                say(f"3a, {round_text}: {self.n:,} no-op tasks, bare Celery, Celery's defaults")
                defaults.append(self.bare_run(DEFAULTS))
                say(f"3a, {round_text}: {defaults[-1].rate:,.0f} tasks/s")
                say(f"3a', {round_text}: {self.n:,} no-op tasks, bare Celery, "
                    "the bridge's settings")
                same.append(self.bare_run(BRIDGE_SETTINGS))
                say(f"3a', {round_text}: {same[-1].rate:,.0f} tasks/s")
        of = f"median of {self.rounds}"
        if bridge:
            self.figures["throughput"] = statistics.median(run.rate for run in ours)
            self.lines.append(
                _median_line(f"2 end-to-end, {self.n:,} no-op jobs, {of}", ours, "jobs/s")
            )
            self.lines.append(_median_line(
                f"2b end-to-end, batched mode (BATCH_SIZE {BATCHED_SIZE}), {of}", batched, "jobs/s"
            ))
            self.figures["batched"] = statistics.median(run.rate for run in batched)
        if not bare:
            return
        self.lines.append(_median_line(
            f"3a bare Celery, Celery's defaults (acks_late, prefetch 4, no events), {of}",
            defaults, "tasks/s",
        ))
        self.lines.append(_median_line(
            f"3a' bare Celery, the bridge's settings (prefetch 1, events), {of}",
            same, "tasks/s",
        ))
        for label, mine, yardstick, target in (
            ("3b ratio 2 / 3a, per round", ours, defaults, RATIO_TARGET),
            ("3b' ratio 2 / 3a', per round", ours, same, None),
            ("3d ratio 2b (batched) / 3a, per round", batched, defaults, BATCHED_RATIO_TARGET),
        ):
            if bridge:
                ratios = [a.rate / b.rate for a, b in zip(mine, yardstick, strict=True)]
                self.lines.append(_ratio_line(label, ratios, target))
            else:
                self.lines.append(Line(label, None, "ratio",
                                       "-" if target is None else f">= {target:.2f}",
                                       None, "n/a (item 2 not run)"))
        say(f"3c: publishing {self.n:,} messages with no worker running")
        publish = self.bare_publish_rate()
        self.lines.append(
            Line("3c bare Celery publish, no worker (the bridge's settings)", publish, "msgs/s")
        )

    # --- item 9: flat in the backlog --------------------------------------------

    def item9(self) -> None:
        """Item 2 with backlogs of 4,000, 20,000 and 100,000 due jobs (``--backlogs``)."""
        rates = []
        for n in self.backlogs:
            say(f"9: end-to-end throughput of a backlog of {n:,} no-op jobs")
            run = self.throughput(n=n)
            say(f"9: {run.rate:,.0f} jobs/s")
            rates.append(run.rate)
            self.lines.append(
                Line(f"9 end-to-end, backlog of {n:,} due at once", run.rate, "jobs/s",
                     cpu_us=run.cpu_us)
            )
        median = statistics.median(rates)
        worst = max(abs(rate - median) / median for rate in rates)
        self.lines.append(Line(
            "9 flat in the backlog: largest distance from the median", worst * 100, "%",
            f"<= {FLAT_TOLERANCE * 100:.0f}", worst <= FLAT_TOLERANCE,
        ))

    # --- item 3: bare Celery ----------------------------------------------------

    def _bare_app(self, name: str) -> Celery:
        from bench.bare_app import APPS

        app = APPS[name]
        app.conf.broker_url = self.redis.url
        return app

    def _publish(self, app: Celery, count: int) -> None:
        from bench.bare_app import TASK_NAME

        # One producer for the whole run, as the dispatcher uses per batch.
        with app.producer_or_acquire() as producer:
            for i in range(count):
                app.send_task(
                    TASK_NAME,
                    kwargs={"job_id": i, "user_id": i},
                    producer=producer,
                    time_limit=None,
                    soft_time_limit=None,
                )

    def _bare_done(self) -> int:
        from bench.bare_app import COUNTER_KEY

        return int(self.redis.client.get(COUNTER_KEY) or 0)

    def bare_publish_rate(self) -> float:
        """Messages/s one process publishes with no worker running (item 7's target),
        with the bridge's settings: a ``task-sent`` event per message, as the
        dispatcher sends (batched)."""
        from bench.bare_app import BRIDGE_SETTINGS

        self.reset()
        app = self._bare_app(BRIDGE_SETTINGS)
        self._publish(app, 50)  # connection and first-use costs
        started = time.perf_counter()
        self._publish(app, self.n)
        value = self.n / (time.perf_counter() - started)
        self.redis.flush()
        self.figures["bare_publish"] = value
        return value

    def item3(self) -> None:
        self._rounds(bridge=False, bare=True)

    def bare_run(self, name: str) -> Run:
        """N no-op tasks published to a warm bare Celery worker (``bench.bare_app``'s
        app ``name``): tasks/s from the first publish to the counter reaching N;
        CPU of the worker, the publishing (this process's) and Redis."""
        from bench.bare_app import COUNTER_KEY

        self.reset()
        app = self._bare_app(name)
        self.processes.worker(app=f"bench.bare_app:{name}")
        self._publish(app, WARMUP_JOBS)
        wait_for(lambda: self._bare_done() >= WARMUP_JOBS, 120, "the bare worker to warm up",
                 interval=0.05, check=self.processes.check_alive)
        self.redis.client.delete(COUNTER_KEY)

        before = self.cpu_sample()
        started = time.time()
        publishing = time.process_time()
        self._publish(app, self.n)
        publishing = time.process_time() - publishing
        wait_for(lambda: self._bare_done() >= self.n, 60 + self.n / 50,
                 f"{self.n:,} bare tasks", interval=0.01, check=self.processes.check_alive)
        elapsed = time.time() - started
        after = self.cpu_sample()
        return Run(self.n / elapsed, self.cpu_per_job(before, after, self.n, publishing))

    # --- item 4: latency --------------------------------------------------------

    def latency(self) -> dict[str, float]:
        """schedule_job() returning -> run() starting, over --latency-jobs jobs, in ms."""
        self.reset()
        self.start_bridge()
        count = self.latency_jobs
        returned: dict[int, float] = {}
        for user in range(1, count + 1):
            job = schedule_job(WorkerJobConfig(type="stamp", user_id=user, remove_delay=KEEP_MS))
            returned[job.id] = time.time()
            time.sleep(LATENCY_SPACING)
        self._wait_unfinished("stamp", count, f"{count} stamp jobs to finish")
        with self.db.engine.connect() as connection:
            rows = connection.execute(
                text("SELECT id, result FROM worker_jobs WHERE type = 'stamp' "
                     "AND user_id BETWEEN 1 AND :n"),
                {"n": count},
            ).all()
        delays = [(row.result["t"] - returned[row.id]) * 1000 for row in rows]
        return {q: percentile(delays, float(q[1:])) for q in ("p50", "p95", "p99")}

    def item4(self) -> None:
        say(f"4: latency over {self.latency_jobs} jobs, {LATENCY_SPACING * 1000:.0f} ms apart")
        figures = self.latency()
        self.figures.update({f"latency_{q}": value for q, value in figures.items()})
        label = "4{} latency schedule_job -> run(), {}"
        targets = {"p50": 10.0, "p95": None, "p99": 50.0}
        for letter, (q, value) in zip("abc", figures.items(), strict=True):
            target = targets[q]
            if target is None:
                self.lines.append(Line(label.format(letter, q), value, "ms"))
            else:
                self.lines.append(Line(label.format(letter, q), value, "ms", f"<= {target:.0f}",
                                       value <= target))

    # --- item 5: cron precision -------------------------------------------------

    def item5(self) -> None:
        self.reset()
        self.start_bridge()
        fires = self.cron_fires
        say(f"5: cron '* * * * * *' for {fires} fires (about {fires} s)")
        schedule_cron_job(
            WorkerJobConfig(type="stamp", user_id=1, remove_delay=KEEP_MS), "* * * * * *"
        )
        wait_for(
            lambda: self.scalar(
                "SELECT count(*) FROM worker_jobs WHERE type = 'stamp' AND finished IS NOT NULL"
            )
            >= fires,
            30 + fires * 2,
            f"{fires} cron fires",
            interval=0.2,
            check=self.processes.check_alive,
        )
        with self.db.engine.connect() as connection:
            rows = connection.execute(
                text("SELECT extract(epoch FROM due) AS due, success, result FROM worker_jobs "
                     "WHERE type = 'stamp' AND finished IS NOT NULL ORDER BY due LIMIT :n"),
                {"n": fires},
            ).all()
        if not all(row.success for row in rows):
            raise BenchError("a cron run did not succeed")
        delays = [(row.result["t"] - float(row.due)) * 1000 for row in rows]
        label = f"5{{}} cron fire (due) -> run(), {{}} of {fires}"
        self.lines.append(Line(label.format("a", "p50"), percentile(delays, 50), "ms"))
        p99 = percentile(delays, 99)
        self.lines.append(Line(label.format("b", "p99"), p99, "ms", "<= 100", p99 <= 100))

    # --- item 6: scale ----------------------------------------------------------

    def item6(self) -> None:
        # The comparison needs the empty-table figures of this run and machine.
        if "throughput" not in self.figures:
            self.item2()
        if "latency_p50" not in self.figures:
            self.item4()
        self.reset()
        say(f"6: inserting {SCALE_FUTURE_ROWS:,} future and {SCALE_FINISHED_ROWS:,} "
            "finished rows")
        started = time.perf_counter()
        self._insert_scale_rows()
        say(f"6: inserted and analyzed in {time.perf_counter() - started:.0f} s")
        self._scale_rows = True
        try:
            say(f"6: end-to-end throughput of {self.n:,} no-op jobs beside 1.1M rows")
            run = self.throughput()
            value = run.rate
            say(f"6: latency over {self.latency_jobs} jobs beside 1.1M rows")
            latency = self.latency()
        finally:
            self._scale_rows = False
        base = self.figures["throughput"]
        ratio = value / base
        self.lines.append(Line(f"6a end-to-end, {self.n:,} jobs, 1.1M rows in table", value,
                               "jobs/s", f">= {0.8 * base:,.0f} (80% of 2)", ratio >= 0.8,
                               cpu_us=run.cpu_us))
        self.lines.append(Line("6b ratio 6a / 2", ratio, "ratio", ">= 0.80", ratio >= 0.8))
        for letter, q in (("c", "p50"), ("e", "p99")):
            empty = self.figures[f"latency_{q}"]
            scaled = latency[q]
            ratio = scaled / empty
            self.lines.append(Line(f"6{letter} latency {q}, 1.1M rows in table", scaled, "ms",
                                   f"<= {1.2 * empty:.1f} (120% of 4)", ratio <= 1.2))
            self.lines.append(Line(f"6{chr(ord(letter) + 1)} ratio 6{letter} / 4 {q}", ratio,
                                   "ratio", "<= 1.20", ratio <= 1.2))

    def _insert_scale_rows(self) -> None:
        # Server-side generate_series: a million rows in seconds, not minutes.
        with self.db.engine.begin() as connection:
            connection.execute(
                text(
                    """
                    INSERT INTO worker_jobs (type, user_id, data, due, remove_delay,
                                             created_at, updated_at)
                    SELECT 'noop', :base + g, '{}'::jsonb,
                           now() + interval '365 days' + g * interval '1 second',
                           :keep, now(), now()
                    FROM generate_series(1, :count) AS g
                    """
                ),
                {"base": SCALE_FUTURE_USERS, "count": SCALE_FUTURE_ROWS, "keep": KEEP_MS},
            )
            # Succeeded long ago, kept for ten more years: the removal job leaves them.
            connection.execute(
                text(
                    """
                    INSERT INTO worker_jobs (type, user_id, data, due, started, finished,
                        success, remove_delay, remove_at, dispatched_at, task_id, worker,
                        heartbeat, attempts, created_at, updated_at)
                    SELECT 'noop', :base + g, '{}'::jsonb, t, t, t + interval '2 ms', true,
                           :keep, now() + interval '10 years', t, gen_random_uuid()::text,
                           'bench@scale:1', NULL, 1, t, t
                    FROM (SELECT g, now() - interval '2 days' + g * interval '1 second' AS t
                          FROM generate_series(1, :count) AS g) AS s
                    """
                ),
                {"base": SCALE_FINISHED_USERS, "count": SCALE_FINISHED_ROWS, "keep": KEEP_MS},
            )
        self._vacuum()

    # --- item 7: dispatcher alone -----------------------------------------------

    def item7(self) -> None:
        publish = self.figures.get("bare_publish")
        if publish is None:
            say("7: measuring bare Celery's publish rate first (the target)")
            publish = self.bare_publish_rate()
        self.reset()
        say(f"7: dispatcher alone, {self.n:,} due rows, no worker")
        self.start_bridge(worker=False, config="bench.celeryconfig_bench")
        t0 = self.insert_due_later(self.n)
        wait_for(
            lambda: self.scalar(
                "SELECT count(*) FROM worker_jobs WHERE type = 'noop' AND user_id BETWEEN 1 "
                "AND :n AND dispatched_at IS NOT NULL",
                n=self.n,
            )
            >= self.n,
            60 + self.n / 50,
            f"{self.n:,} rows to be dispatched",
            interval=0.02,
            check=self.processes.check_alive,
        )
        value = self.n / (time.time() - t0)
        self.lines.append(Line(f"7 dispatcher alone, {self.n:,} rows", value, "rows/s",
                               f">= {publish:,.0f} (3c)", value >= publish))


    # --- item 8: peers -----------------------------------------------------------

    def item8(self) -> None:
        for letter, peer in zip("ab", peers.PEERS.values(), strict=True):
            installed = peers.version(peer)
            name = peer.name if installed is None else f"{peer.name} {installed}"
            label = f"8{letter} {name}, {self.n:,} no-op jobs, {peer.how}"
            reason = peers.missing(peer)
            if reason is not None:
                say(f"8{letter}: n/a ({reason})")
                self.lines.append(Line(label, None, "jobs/s", note=f"n/a ({reason})"))
                continue
            say(f"8{letter}: {peer.name} drains {self.n:,} no-op jobs ({peer.how})")
            try:
                run = self.peer_run(peer)
            except Exception as exc:
                # The other peer still runs; the exit code still says it failed.
                self.failures += 1
                say(f"8{letter} ({peer.name}) FAILED: {exc}")
                traceback.print_exc(file=sys.stderr)
                self.lines.append(Line(label, None, "jobs/s", "-", False, "ERROR"))
                continue
            say(f"8{letter}: {run.rate:,.0f} jobs/s")
            self.lines.append(Line(label, run.rate, "jobs/s", cpu_us=run.cpu_us))

    def _peer_done(self) -> int:
        return int(self.redis.client.get(peers.COUNTER_KEY) or 0)

    def _peer_processes(self, key: str) -> int:
        """How many worker processes have passed the gate ``key`` (ready, drained)."""
        return int(self.redis.client.llen(key))

    def peer_run(self, peer: peers.Peer) -> Run:
        """N no-op jobs waiting in ``peer``'s queue table, drained by its warm workers:
        jobs/s from T0 (go) to the counter reaching N; CPU of the worker processes,
        the peer's database and Redis. See :mod:`bench.peers`."""
        self.reset()
        database, dsn = self.db.create_extra(peer.name)
        try:
            asyncio.run(peer.install(dsn))
            first = WARMUP_USERS
            asyncio.run(peer.enqueue(dsn, first, WARMUP_JOBS))
            for number in range(1, peers.PROCESSES + 1):
                self.processes.spawn(
                    f"{peer.name}-{number}",
                    ["-m", "bench.peer_worker", peer.name],
                    {peers.DSN_VARIABLE: dsn},
                )
            wait_for(
                lambda: self._peer_processes(peers.READY_KEY) >= peers.PROCESSES
                and self._peer_done() >= WARMUP_JOBS,
                120,
                f"the {peer.name} workers to warm up",
                interval=0.05,
                check=self.processes.check_alive,
            )
            self.redis.client.delete(peers.COUNTER_KEY)
            asyncio.run(peer.enqueue(dsn, 1, self.n))

            before = self.cpu_sample(database)
            started = time.time()
            for _ in range(peers.PROCESSES):
                self.redis.client.rpush(peers.GO_KEY, "go")
            wait_for(lambda: self._peer_done() >= self.n, 60 + self.n / 50,
                     f"{self.n:,} {peer.name} jobs", interval=0.01,
                     check=self.processes.check_alive)
            elapsed = time.time() - started
            wait_for(lambda: self._peer_processes(peers.DRAINED_KEY) >= peers.PROCESSES, 60,
                     f"the {peer.name} workers to finish their drain", interval=0.01,
                     check=self.processes.check_alive)
            after = self.cpu_sample(database)
            done = self._peer_done()
            if done != self.n:
                raise BenchError(f"{peer.name} ran {done} jobs for {self.n}")
            return Run(self.n / elapsed, self.cpu_per_job(before, after, self.n))
        finally:
            self.processes.stop_all()
            self.db.drop_database(database)


def _chunks(items: Sequence[int], size: int) -> Iterable[Sequence[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
