"""The jobs package: which job types exist, loading a type's module, and its options.

A job module may declare, beside ``run(params)``, how its jobs are sent and run::

    QUEUE = "reports"        # the Celery queue its messages go to (default: Celery's default)
    TIME_LIMIT = 600         # hard time limit of one run, in seconds (default: the worker's)
    SOFT_TIME_LIMIT = 570    # soft time limit, in seconds (default: the worker's)
    PRIORITY = 5             # message priority, 0 to 9 (default: none)
    MAX_CONCURRENCY = 3      # most jobs of the type sent or running at once, over all workers
    BATCH_SIZE = 100         # batched execution: up to 100 due rows per message

Options are read once per process, when the module is first loaded; a bad
one is a :class:`~worker_bridge.errors.JobModuleError` naming it.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from worker_bridge.errors import ConfigurationError, JobModuleError, UnknownJobTypeError

#: A job's entry point: ``run(params)``, plain or ``async``.
JobRunner = Callable[[Any], Any]

#: Largest ``BATCH_SIZE`` a job module may declare: one message's rows are
#: claimed, heartbeated and finished by single statements.
MAX_BATCH_SIZE = 1000


@dataclass(frozen=True, slots=True)
class JobOptions:
    """What a job module declares about how its jobs are sent and run."""

    #: Most due rows the dispatcher sends in one message (``BATCH_SIZE``); 1
    #: sends every row alone, as Celery does with tasks.
    batch_size: int = 1
    #: The Celery queue the type's messages go to (``QUEUE``); None: the default queue.
    queue: str | None = None
    #: Hard and soft time limits of one run in seconds (``TIME_LIMIT``,
    #: ``SOFT_TIME_LIMIT``); None: the worker's (``task_time_limit``...).
    time_limit: float | None = None
    soft_time_limit: float | None = None
    #: Message priority, 0 to 9 (``PRIORITY``); None: the broker's default.
    priority: int | None = None
    #: Most rows of the type dispatched or running at once, over every worker
    #: (``MAX_CONCURRENCY``, enforced by the dispatcher); None: no cap.
    max_concurrency: int | None = None

    @property
    def batched(self) -> bool:
        """Whether several rows of this type may share one message."""
        return self.batch_size > 1


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def read_options(module: ModuleType, max_time_limit: float | None = None) -> JobOptions:
    """The options a job module declares; JobModuleError names a bad one.

    ``max_time_limit`` (``worker_bridge_stale_after`` in seconds): time limits
    must be shorter, or a run still going would be taken for stale and started
    again beside itself.
    """
    name = module.__name__

    def bad(option: str, wanted: str, value: object) -> JobModuleError:
        return JobModuleError(f"job module {name}: {option} must be {wanted}, got {value!r}")

    size = getattr(module, "BATCH_SIZE", 1)
    if not (_number(size) and isinstance(size, int) and 1 <= size <= MAX_BATCH_SIZE):
        raise bad("BATCH_SIZE", f"an int from 1 to {MAX_BATCH_SIZE}", size)
    queue = getattr(module, "QUEUE", None)
    if queue is not None and not (isinstance(queue, str) and queue.strip() == queue != ""):
        raise bad("QUEUE", "a queue name (a non-empty str)", queue)
    limits = {}
    for option in ("TIME_LIMIT", "SOFT_TIME_LIMIT"):
        value = getattr(module, option, None)
        if value is not None and not (_number(value) and 0 < value < float("inf")):
            raise bad(option, "a positive number of seconds", value)
        limits[option] = None if value is None else float(value)
        if value is not None and max_time_limit is not None and value >= max_time_limit:
            raise bad(
                option,
                f"shorter than worker_bridge_stale_after ({max_time_limit:g} s; a run still "
                "going past it would be started again)",
                value,
            )
    hard, soft = limits["TIME_LIMIT"], limits["SOFT_TIME_LIMIT"]
    if hard is not None and soft is not None and soft >= hard:
        raise bad("SOFT_TIME_LIMIT", f"shorter than TIME_LIMIT ({hard:g} s)", soft)
    priority = getattr(module, "PRIORITY", None)
    if priority is not None and not (
        _number(priority) and isinstance(priority, int) and 0 <= priority <= 9
    ):
        raise bad("PRIORITY", "an int from 0 to 9", priority)
    cap = getattr(module, "MAX_CONCURRENCY", None)
    if cap is not None and not (_number(cap) and isinstance(cap, int) and cap >= 1):
        raise bad("MAX_CONCURRENCY", "an int of at least 1", cap)
    return JobOptions(
        batch_size=size,
        queue=queue,
        time_limit=hard,
        soft_time_limit=soft,
        priority=priority,
        max_concurrency=cap,
    )


class JobRegistry:
    """The job types of one package: a type is a module named after it.

    Listing types does not import the modules, so a module that fails at import
    breaks only its own jobs, not scheduling of the others.
    """

    def __init__(self, package: str, *, max_time_limit: float | None = None) -> None:
        self.package = package
        #: What a module's time limits must stay under (``read_options``).
        self.max_time_limit = max_time_limit
        self._types: frozenset[str] | None = None
        self._runners: dict[str, JobRunner] = {}
        self._options: dict[str, JobOptions] = {}
        self._lock = threading.Lock()

    def _package_module(self) -> ModuleType:
        try:
            module = importlib.import_module(self.package)
        except ImportError as exc:
            raise ConfigurationError(
                f"jobs package {self.package!r} (WORKER_BRIDGE_JOBS) cannot be imported: {exc}"
            ) from exc
        if not hasattr(module, "__path__"):
            raise ConfigurationError(
                f"WORKER_BRIDGE_JOBS={self.package!r} is a module, not a package of job modules"
            )
        return module

    def known_types(self, *, refresh: bool = False) -> frozenset[str]:
        """Names of the job modules in the package."""
        if self._types is None or refresh:
            package = self._package_module()
            self._types = frozenset(
                info.name
                for info in pkgutil.iter_modules(package.__path__)
                if not info.ispkg and not info.name.startswith("_")
            )
        return self._types

    def check_type(self, job_type: object) -> str:
        """Return ``job_type`` if a module of that name exists, else raise."""
        if not isinstance(job_type, str):
            raise UnknownJobTypeError(
                f"job type must be a str naming a module in {self.package!r}, "
                f"got {type(job_type).__name__}"
            )
        if job_type in self.known_types() or job_type in self.known_types(refresh=True):
            return job_type
        known = ", ".join(sorted(self.known_types())) or "none"
        raise UnknownJobTypeError(
            f"unknown job type {job_type!r}: no module {self.package}.{job_type}; "
            f"known types: {known}"
        )

    def runner(self, job_type: str) -> JobRunner:
        """The ``run`` function of the job type's module, imported once."""
        runner = self._runners.get(job_type)
        if runner is None:
            self._load(job_type)
            runner = self._runners[job_type]
        return runner

    def options(self, job_type: str) -> JobOptions:
        """The options the job type's module declares (loading it once)."""
        options = self._options.get(job_type)
        if options is None:
            self._load(job_type)
            options = self._options[job_type]
        return options

    def _load(self, job_type: str) -> None:
        self.check_type(job_type)
        with self._lock:
            if job_type in self._runners:
                return
            module_name = f"{self.package}.{job_type}"
            try:
                module = importlib.import_module(module_name)
            except Exception as exc:
                raise JobModuleError(
                    f"job module {module_name} failed to import: {type(exc).__name__}: {exc}"
                ) from exc
            run: JobRunner | None = getattr(module, "run", None)
            if run is None or not callable(run):
                raise JobModuleError(f"job module {module_name} defines no run(params) function")
            self._options[job_type] = read_options(module, self.max_time_limit)
            self._runners[job_type] = run

    @staticmethod
    def is_async(runner: JobRunner) -> bool:
        """Whether ``runner`` must be awaited."""
        return inspect.iscoroutinefunction(runner)
