"""The benchmark of worker_bridge: ``python -m bench --n 20000`` from the project root.

It runs against PostgreSQL and Redis, creates and drops a database of its own
(``worker_bridge_bench_<random>``), uses a Redis database number of its own
(``--redis-db``, default 13, flushed before and after), starts and stops its
own ``celery`` worker and dispatcher processes, and prints the machine and one
table: a line per measurement with its value, unit, target and whether the
target is met. ``python -m bench --help`` lists the options.

The server addresses come from ``WORKER_BRIDGE_BENCH_ADMIN_URL`` (default
``postgresql+psycopg://postgres@127.0.0.1:5432/postgres``) and
``WORKER_BRIDGE_BENCH_REDIS_URL`` (default ``redis://127.0.0.1:6379``).
"""
