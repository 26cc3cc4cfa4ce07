"""Every exception worker_bridge raises, under one root.

::

    WorkerBridgeError
    ├── ConfigurationError            settings or environment that cannot work
    ├── InvalidJobError               a job config that must not be written
    │   ├── InvalidJobConfigError     (also TypeError) not a WorkerJobConfig, or a bad flag
    │   ├── UnknownJobTypeError       (also ValueError) no module of that name in the jobs package
    │   ├── InvalidJobDataError       (also ValueError/TypeError) not storable JSON, or too large
    │   ├── InvalidUserIdError        (also TypeError/ValueError) not a 32-bit int
    │   ├── InvalidDueError           (also ValueError/TypeError) due naive or not a datetime
    │   ├── InvalidDelayError         (also ValueError/TypeError) negative or non-numeric delay
    │   └── InvalidCronError          (also ValueError) a cron string that cannot be parsed
    ├── PendingJobConflictError       another writer added a pending job of the pair first
    ├── DatabaseUnavailableError      the database stayed unreachable past the reconnect patience
    ├── JobModuleError                a job module that cannot be imported or has no run()
    ├── JobNotFoundError              (also LookupError) no row with that id
    ├── JobStateError                 (also ValueError) the row's state forbids the action
    │   └── JobFinishedError          the row has finished: nothing to cancel
    └── JobFailedError                a job's run failed; what its Celery task raises when run()
                                      raised nothing of its own (a time limit, a bad result)

Validation errors also subclass ValueError or TypeError so that callers who
catch the built-in kind keep working.
"""

from __future__ import annotations


class WorkerBridgeError(Exception):
    """Root of every exception raised by worker_bridge."""


class ConfigurationError(WorkerBridgeError):
    """A setting or environment variable has a value that cannot work."""


class InvalidJobError(WorkerBridgeError):
    """A job config was rejected before anything was written or cancelled."""


class InvalidJobConfigError(InvalidJobError, TypeError):
    """The config is not a WorkerJobConfig, or one of its flags has the wrong type."""


class UnknownJobTypeError(InvalidJobError, ValueError):
    """The job type names no module in the jobs package."""


class InvalidJobDataError(InvalidJobError, ValueError, TypeError):
    """The job's data (or a run() result) is not a JSON object that can be stored."""


class InvalidUserIdError(InvalidJobError, TypeError, ValueError):
    """user_id is not an int, or does not fit the table's 32-bit column."""


class InvalidDueError(InvalidJobError, ValueError, TypeError):
    """due is not a timezone-aware datetime."""


class InvalidDelayError(InvalidJobError, ValueError, TypeError):
    """A delay is negative or is neither milliseconds (int) nor a timedelta."""


class InvalidCronError(InvalidJobError, ValueError):
    """A cron expression that cannot be parsed or never fires."""


class PendingJobConflictError(WorkerBridgeError):
    """Another writer inserted a pending job of the same type and user first.

    Only raised by writes that skip the per-pair lock (single-statement,
    autocommit scheduling), which then retry: the next attempt cancels the
    other writer's job, as if the two had been serialised.
    """


class DatabaseUnavailableError(WorkerBridgeError):
    """The database could not be reached within ``worker_bridge_reconnect_patience``.

    The message names the database (password masked) and the last error; the
    driver's error is the ``__cause__``.
    """


class JobModuleError(WorkerBridgeError):
    """A job module failed to import or does not define a callable run()."""


class JobNotFoundError(WorkerBridgeError, LookupError):
    """No row of ``worker_jobs`` has the id asked for."""


class JobStateError(WorkerBridgeError, ValueError):
    """The row's state does not allow what was asked (run a running job now, for one)."""


class JobFinishedError(JobStateError):
    """The row has already finished (succeeded, failed or cancelled): it cannot be cancelled."""


class JobFailedError(WorkerBridgeError):
    """A job's run failed, as recorded in its row's result.

    The Celery task of a failed job raises what ``run()`` raised, so that
    Flower and Celery's events show the job's own exception; this one when
    the failure was not an exception of ``run()`` (a soft time limit, a
    result that cannot be stored, a row of another type). Its message is
    ``"<exception name>: <error>"`` from the row's result.
    """
