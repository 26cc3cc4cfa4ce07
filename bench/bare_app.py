"""Bare Celery, the yardstick of the end-to-end measurement (item 3).

The same broker and the same worker settings as worker_bridge's
``celeryconfig.py``, and one no-op task whose only work is to say it ran, as
cheaply as possible: an ``INCR`` of a Redis counter the benchmark polls. What
separates worker_bridge's throughput from this one is then the bridge itself
(the table's claim and finish, the dispatcher), not Celery.

Worker: ``python -m celery -A bench.bare_app worker --concurrency 2 -P prefork``.
"""

from __future__ import annotations

import os
from typing import Any

import redis
from celery import Celery

from worker_bridge.celery_app import CELERY_DEFAULTS

#: The task every message names.
TASK_NAME = "bench.bare.noop"
#: The counter the task increments; the benchmark deletes it before each run.
COUNTER_KEY = "worker_bridge_bench:bare:done"

app = Celery("bench_bare")
app.conf.update(
    broker_url=os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/13"),
    broker_connection_retry_on_startup=True,
    timezone="UTC",
    enable_utc=True,
    # Everything below is what worker_bridge runs its workers with (its defaults),
    # so that the two measurements differ only by the bridge.
    accept_content=["json"],
    task_serializer="json",
    result_serializer="json",
    event_serializer="json",
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_ignore_result=True,
    worker_send_task_events=True,
    task_send_sent_event=True,
    # Time limits make the prefork pool arm a timer per task: same cost on both sides.
    task_time_limit=CELERY_DEFAULTS["task_time_limit"],
    task_soft_time_limit=CELERY_DEFAULTS["task_soft_time_limit"],
)

_client: redis.Redis | None = None
_client_pid: int | None = None


def _redis() -> redis.Redis:
    # One client per pool process: a socket must not cross the prefork fork.
    global _client, _client_pid
    if _client is None or _client_pid != os.getpid():
        _client = redis.Redis.from_url(app.conf.broker_url)
        _client_pid = os.getpid()
    return _client


@app.task(name=TASK_NAME)
def noop(job_id: int = 0, user_id: int = 0, **_: Any) -> None:
    """Signal completion; the keyword arguments mirror the bridge's messages."""
    _redis().incr(COUNTER_KEY)
