"""The benchmark of worker_bridge: ``python -m bench --n 20000`` from the project root.

It runs against PostgreSQL and Redis, creates and drops a database of its own
(``worker_bridge_bench_<random>``, and one per peer of item 8), uses a Redis
database number of its own (``--redis-db``, default 13, flushed before and
after), starts and stops its own ``celery`` worker, dispatcher and peer worker
processes, and prints the machine and one table: a line per measurement with
its value, unit, range over the rounds, CPU per job, target and whether the
target is met. ``python -m bench --help`` lists the options.

The items: 1 scheduling rate, 2 end-to-end throughput, 3 bare Celery (the
yardstick of 2: Celery's own defaults for at-least-once delivery, and the
bridge's settings as an extra line), 4 latency, 5 cron precision, 6 scale
(``--scale``), 7 dispatcher alone, 8 peers (procrastinate and pgqueuer on the
same no-op jobs; ``pip install -e '.[bench]'``, else "n/a"). Items 2 and 3
alternate for ``--rounds`` rounds (default 3) and report medians and ranges;
see :mod:`bench.measurements` for the rounds and the CPU column, :mod:`bench.cpu`
for the CPU accounting and :mod:`bench.peers` for item 8.

The server addresses come from ``WORKER_BRIDGE_BENCH_ADMIN_URL`` (default
``postgresql+psycopg://postgres@127.0.0.1:5432/postgres``) and
``WORKER_BRIDGE_BENCH_REDIS_URL`` (default ``redis://127.0.0.1:6379``). The
CPU column reads other processes' ``/proc/<pid>/stat`` (PostgreSQL's backends,
the Redis server), so both servers must run on this machine; any user may read
those files unless ``/proc`` is mounted with ``hidepid`` (the development
machine runs the benchmark as root anyway).
"""
