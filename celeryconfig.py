"""Celery and worker_bridge settings: this project's config module.

Connection strings come from the environment: CELERY_BROKER_URL (the broker),
WORKER_BRIDGE_DATABASE_URL (the database holding worker_jobs) and
WORKER_BRIDGE_JOBS (the package of job modules).

Every setting below is commented out at its default: the defaults are declared
once, in worker_bridge (``worker_bridge.settings.Settings`` for the
``worker_bridge_*`` keys, ``worker_bridge.celery_app.CELERY_DEFAULTS`` for
Celery's), and apply to every key this module leaves unset. Set a key here (or
in your own CELERY_CONFIG_MODULE) and it wins. Durations are in seconds.
"""

# --- where -----------------------------------------------------------------------
# Without CELERY_BROKER_URL: kombu's SQLAlchemy transport on a local SQLite file
# (the embedded default, one machine). Production: redis://host:6379/0.
# broker_url = "sqla+sqlite:///worker_bridge-broker.sqlite3"
# Zone in which cron expressions are evaluated (and Celery's own clock).
# timezone = "UTC"
# enable_utc = True

# --- worker_bridge ---------------------------------------------------------------
# A started, unfinished job older than this counts as pending again (the seed's hour).
# worker_bridge_stale_after = 3600
# How long failed and cancelled rows are kept before remove_old_worker_jobs deletes them.
# worker_bridge_failed_retention = 7 * 24 * 3600
# How often a worker refreshes the heartbeat of a running job.
# worker_bridge_heartbeat_interval = 3
# A running job whose heartbeat is older than this is run again (its worker died).
# A process stalled longer than this (a suspended VM, a long pause) has its job run
# again elsewhere; its own late writes are refused.
# worker_bridge_heartbeat_timeout = 15
# A dispatched job that no worker started within this long is sent again (lost message).
# worker_bridge_redispatch_after = 60
# Most rows the dispatcher moves to the broker in one transaction.
# worker_bridge_dispatch_batch_size = 500
# Longest the dispatcher sleeps when nothing is due sooner.
# worker_bridge_max_interval = 5
# Most jobs sent to the broker and not yet started at once; a larger backlog waits
# in the table, so the broker never holds more than this (nor Redis's memory).
# worker_bridge_max_in_flight = 5000
# How long schedule_job, the CLI and the dispatcher keep retrying while the database is
# unreachable (a restart, a failover), before they raise DatabaseUnavailableError.
# worker_bridge_reconnect_patience = 10
# RabbitMQ's consumer_timeout as your rabbitmq.conf sets it (RabbitMQ's default is 30
# minutes): a worker on RabbitMQ warns at start when task_time_limit outlasts it.
# worker_bridge_broker_consumer_timeout = 1800
# Largest job data accepted by schedule_job, in bytes of JSON.
# worker_bridge_max_data_bytes = 1024 * 1024
# Largest run() result stored, in bytes of JSON; a larger one fails the job.
# worker_bridge_max_result_bytes = 1024 * 1024

# --- Celery, as the bridge needs it ------------------------------------------------
# JSON only: a pickled message is refused. Anything but JSON here is refused at start.
# accept_content = ["json"]
# task_serializer = "json"
# result_serializer = "json"
# event_serializer = "json"
# At-least-once delivery; the table's atomic claim makes a redelivered message
# harmless. task_acks_late = False is refused at start.
# task_acks_late = True
# task_reject_on_worker_lost = True
# One message per free pool process, so a long job never holds short ones in its prefetch.
# worker_prefetch_multiplier = 1
# Results are written to worker_jobs.result; no result backend is needed.
# task_ignore_result = True
# Workers send task events only while a monitor asks: Flower and `celery events` switch
# them on by themselves. True sends them always (about a quarter of per-job throughput).
# worker_send_task_events = False
# task_send_sent_event = True
# `celery -A worker_bridge beat` (or `worker -B`) runs the dispatcher.
# beat_scheduler = "worker_bridge.dispatcher:DispatcherScheduler"
# broker_connection_retry_on_startup = True
# A lost broker connection leaves running jobs running: their rows are claimed, so the
# redelivered messages are refused (cancelling would rerun every long job each time a
# channel closes, e.g. at RabbitMQ's consumer_timeout).
# worker_cancel_long_running_tasks_on_connection_loss = False
# A channel the broker closes is reopened instead of stopping the worker (RabbitMQ closes
# one when a delivery outlives its consumer_timeout).
# broker_channel_error_retry = True
# Hard and soft time limits of one job, in seconds. Keep the hard limit below
# worker_bridge_stale_after, or a job still running would be started again.
# task_time_limit = 3300
# task_soft_time_limit = 3240
