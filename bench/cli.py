"""``python -m bench``: options, the run, clean-up, the table.

Items 2 and 3, when both are chosen, run as one step: their ``--rounds``
alternate (see :mod:`bench.measurements`).
"""

from __future__ import annotations

import argparse
import functools
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from bench.infra import BenchDatabase, BenchError, BenchRedis, Processes, process_env
from bench.measurements import ITEMS, Bench, say
from bench.report import Line, describe_machine, format_table

#: --quick: a smoke run of a few hundred jobs, about a minute.
QUICK = {"n": 300, "latency_jobs": 50, "cron_fires": 3, "rounds": 2, "backlogs": "200,400"}
DEFAULTS = {
    "n": 20_000, "latency_jobs": 1_000, "cron_fires": 60, "rounds": 3,
    "backlogs": "4000,20000,100000",
}

ITEM_NAMES = {
    1: "scheduling rate",
    2: "end-to-end throughput",
    3: "bare Celery",
    4: "latency",
    5: "cron precision",
    6: "scale",
    7: "dispatcher alone",
    8: "peers",
    9: "flat in the backlog",
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark worker_bridge on PostgreSQL + Redis with real celery processes.",
    )
    parser.add_argument("--n", type=int, default=None,
                        help="jobs of the throughput and dispatcher runs (default 20000)")
    parser.add_argument("--latency-jobs", type=int, default=None,
                        help="jobs of the latency run (default 1000: p99 is then the 10th worst)")
    parser.add_argument("--cron-fires", type=int, default=None,
                        help="fires of the every-second cron job (default 60)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="rounds of items 2 and 3, alternating (default 3)")
    parser.add_argument("--backlogs", default=None,
                        help="item 9's backlogs, comma-separated (default 4000,20000,100000)")
    parser.add_argument("--config", default="celeryconfig", metavar="MODULE",
                        help="Celery config module of the bridge's worker and dispatcher "
                             "(default celeryconfig), to measure what a setting costs")
    parser.add_argument("--scale", action="store_true",
                        help="also run item 6 (inserts 1.1M rows first)")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: defaults become {QUICK}")
    parser.add_argument("--only", metavar="ITEMS", default=None,
                        help="comma-separated items to run, e.g. 2,4 (default: every item but 6)")
    parser.add_argument("--redis-db", type=int, default=13,
                        help="Redis database number to use and flush (default 13)")
    parser.add_argument("--keep-db", action="store_true",
                        help="keep the benchmark's PostgreSQL database at the end")
    args = parser.parse_args(argv)
    for key, default in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, default)
    if min(args.n, args.latency_jobs, args.cron_fires, args.rounds) < 1:
        parser.error("--n, --latency-jobs, --cron-fires and --rounds must be at least 1")
    try:
        args.backlogs = [int(part) for part in str(args.backlogs).split(",")]
    except ValueError:
        parser.error(f"--backlogs: {args.backlogs!r} is not comma-separated whole numbers")
    if not args.backlogs or min(args.backlogs) < 1:
        parser.error("--backlogs: every backlog must be at least 1")
    try:
        args.items = selected_items(args.only, args.scale)
    except ValueError as exc:
        parser.error(str(exc))
    return args


def selected_items(only: str | None, scale: bool) -> list[int]:
    if only is None:
        chosen = {item for item in ITEMS if item != 6}
    else:
        chosen = set()
        for part in only.split(","):
            if not part.strip().isdigit() or int(part) not in ITEMS:
                raise ValueError(f"--only: {part!r} is not an item (1-{max(ITEMS)})")
            chosen.add(int(part))
    if scale:
        chosen.add(6)
    return sorted(chosen)


class Interrupted(BaseException):
    """SIGTERM: unwind like Ctrl-C, so that the clean-up below runs (a BaseException,
    as KeyboardInterrupt, so that no item's ``except Exception`` takes it for a
    failed measurement and goes on)."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise Interrupted()


def steps(bench: Bench, items: list[int]) -> list[tuple[list[int], Callable[[], None]]]:
    """The items in order, 2 and 3 as one step when both are chosen."""
    chosen: list[tuple[list[int], Callable[[], None]]] = []
    for item in items:
        if item == 3 and 2 in items:
            continue
        if item == 2 and 3 in items:
            chosen.append(([2, 3], bench.items_2_and_3))
        else:
            chosen.append(([item], functools.partial(bench.run, item)))
    return chosen


def run_items(bench: Bench, processes: Processes, items: list[int]) -> int:
    """Run each item; a failed one gets an ERROR line and the others still run."""
    errors = 0
    for numbers, step in steps(bench, items):
        try:
            step()
        except Exception as exc:
            errors += 1
            names = ", ".join(f"{item} ({ITEM_NAMES[item]})" for item in numbers)
            say(f"item {names} FAILED: {exc}")
            traceback.print_exc(file=sys.stderr)
            for item in numbers:
                bench.lines.append(
                    Line(f"{item} {ITEM_NAMES[item]}", None, "-", "-", False, "ERROR")
                )
        finally:
            processes.stop_all()
    return errors + bench.failures


def print_report(machine: str, args: argparse.Namespace, seconds: float, lines: list[Line]) -> None:
    if machine:
        print(machine)
        command = " ".join(["python -m bench", *args.argv])
        print(f"run:      {command} (n={args.n:,}, rounds={args.rounds}, "
              f"latency jobs={args.latency_jobs}, cron fires={args.cron_fires}; "
              f"took {seconds:.0f} s)")
        print()
    if lines:
        print(format_table(lines))


def clean_up(
    processes: Processes | None,
    db: BenchDatabase | None,
    redis_db: BenchRedis | None,
    *,
    keep_db: bool,
) -> int:
    """Stop every process group, drop the database, release the Redis database; how many failed.

    Whatever happened before: one clean-up failing (a server restarted) does not
    skip the others.
    """
    cleanups: list[tuple[str, Callable[[], None]]] = []
    if processes is not None:
        cleanups.append(("stopping the processes", processes.stop_all))
    if db is not None:
        cleanups.append(("dropping the database", lambda: db.drop(keep=keep_db)))
    if redis_db is not None:
        cleanups.append(("releasing the Redis database", redis_db.release))
    failed = 0
    for what, cleanup in cleanups:
        try:
            cleanup()
        except Exception as exc:
            failed += 1
            say(f"clean-up failed, {what}: {exc}")
    if db is not None and keep_db:
        say(f"kept database {db.name}")
    return failed


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv
    signal.signal(signal.SIGTERM, _on_sigterm)
    log_dir = Path(tempfile.mkdtemp(prefix="worker_bridge_bench_"))
    redis_db: BenchRedis | None = None
    db: BenchDatabase | None = None
    processes: Processes | None = None
    bench: Bench | None = None
    machine = ""
    errors = 0
    interrupted = False
    started = time.monotonic()
    try:
        redis_db = BenchRedis(args.redis_db)
        db = BenchDatabase()
        say(f"database {db.name}, Redis database {args.redis_db}, logs in {log_dir}")
        processes = Processes(process_env(db.url, redis_db.url), log_dir)
        machine = describe_machine(db.engine, redis_db.info("redis_version"))
        bench = Bench(db, redis_db, processes, n=args.n, latency_jobs=args.latency_jobs,
                      cron_fires=args.cron_fires, rounds=args.rounds, backlogs=args.backlogs,
                      config=args.config)
        errors = run_items(bench, processes, args.items)
    except (KeyboardInterrupt, Interrupted):
        interrupted = True
        say("interrupted: stopping processes and cleaning up")
    except BenchError as exc:
        say(f"cannot run: {exc}")
        errors += 1
    finally:
        errors += clean_up(processes, db, redis_db, keep_db=args.keep_db)
        if errors or interrupted:
            say(f"celery logs kept in {log_dir}")
        else:
            shutil.rmtree(log_dir, ignore_errors=True)
    print_report(machine, args, time.monotonic() - started, bench.lines if bench else [])
    if interrupted:
        return 130
    return 1 if errors else 0
