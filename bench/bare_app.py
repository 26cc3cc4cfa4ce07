"""Bare Celery, the yardstick of the end-to-end measurement (item 3).

One no-op task whose only work is to say it ran, as cheaply as possible: an
``INCR`` of a Redis counter the benchmark polls, the one Redis round trip the
bridge's no-op (``bench.jobs.noop``) and the peers' make too. It runs on the
same broker, at the same concurrency (2 prefork processes), in two apps that
differ only in configuration:

- :data:`defaults_app` (3a, the target's yardstick): bare Celery as a user
  comparing the two would run it, Celery's own defaults for at-least-once
  delivery. ``task_acks_late = True`` and nothing else: the prefetch
  multiplier stays at Celery's 4, task events stay off, JSON is Celery's
  default serializer, no time limits.
- :data:`bridge_settings_app` (3a'): the settings worker_bridge runs its
  workers with (its ``CELERY_DEFAULTS``): prefetch 1 per process, task events
  and sent events on, time limits (which make the prefork pool arm a timer
  per task). The difference from 2 is then the bridge itself (claim, finish,
  dispatcher), not the settings.

Workers: ``python -m celery -A bench.bare_app:defaults_app worker --concurrency 2
-P prefork`` (or ``:bridge_settings_app``).
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
BROKER_URL = os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/13")

#: The two configurations, by the name the benchmark knows them by.
DEFAULTS = "defaults_app"
BRIDGE_SETTINGS = "bridge_settings_app"


def _app(name: str, **settings: Any) -> Celery:
    app = Celery(name, set_as_current=False)
    # Start-up behaviour only; setting it silences Celery 5's deprecation warning.
    app.conf.update({"broker_connection_retry_on_startup": True, **settings})
    app.conf.broker_url = BROKER_URL
    app.task(name=TASK_NAME)(noop)
    return app


_client: redis.Redis | None = None
_client_pid: int | None = None


def _redis() -> redis.Redis:
    # One client per pool process: a socket must not cross the prefork fork.
    global _client, _client_pid
    if _client is None or _client_pid != os.getpid():
        _client = redis.Redis.from_url(BROKER_URL)
        _client_pid = os.getpid()
    return _client


def noop(job_id: int = 0, user_id: int = 0, **_: Any) -> None:
    """Signal completion; the keyword arguments mirror the bridge's messages."""
    _redis().incr(COUNTER_KEY)


#: 3a: Celery's defaults, at-least-once delivery.
defaults_app = _app("bench_bare_defaults", task_acks_late=True)

#: 3a': what worker_bridge runs its workers with.
bridge_settings_app = _app(
    "bench_bare_bridge_settings",
    **{
        key: value
        for key, value in CELERY_DEFAULTS.items()
        if key not in ("broker_url", "beat_scheduler")
    },
)

APPS = {DEFAULTS: defaults_app, BRIDGE_SETTINGS: bridge_settings_app}
