"""Celery config of the end-to-end tests: the project's, with short recovery times."""

from celeryconfig import *  # noqa: F403

worker_bridge_heartbeat_interval = 0.5
worker_bridge_heartbeat_timeout = 3
worker_bridge_redispatch_after = 3
worker_bridge_max_interval = 1
task_time_limit = 20
task_soft_time_limit = 15
