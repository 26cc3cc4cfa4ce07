"""A no-op: what is measured is the bridge around it (claim, finish, dispatch).

Its only work is the one Redis round trip every no-op of the benchmark does,
bare Celery's (``bench.bare_app``) and the peers' (``bench.peers``) alike: an
``INCR`` of a counter, so that items 2, 3 and 8 run the same job body. Item 2
times the jobs by their rows' ``finished``, not by this counter.
"""

from __future__ import annotations

import os

import redis

from worker_bridge.params import JobParams

#: Incremented once per run; the benchmark flushes its Redis database between items.
COUNTER_KEY = "worker_bridge_bench:noop:done"

_client: redis.Redis | None = None
_client_pid: int | None = None


def _redis() -> redis.Redis:
    # One client per pool process: a socket must not cross the prefork fork.
    global _client, _client_pid
    if _client is None or _client_pid != os.getpid():
        _client = redis.Redis.from_url(
            os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/13")
        )
        _client_pid = os.getpid()
    return _client


def run(params: JobParams) -> None:
    _redis().incr(COUNTER_KEY)
