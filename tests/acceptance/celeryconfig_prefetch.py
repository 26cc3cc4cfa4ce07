"""A user's own config module that sets two Celery keys and nothing else.

It does not start from the project's ``celeryconfig``: every key it leaves out
(``task_acks_late``, ``accept_content``, ``timezone``, ...) must come from
worker_bridge's own defaults, while the two it sets must win over them. The
broker, database and jobs package come from the environment.
"""

worker_prefetch_multiplier = 4
worker_send_task_events = True
