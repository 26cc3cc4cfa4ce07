"""The jobs package: which job types exist, loading a type's module, and its options.

A job module may declare, beside ``run(params)``::

    BATCH_SIZE = 100   # opt in to batched execution: up to 100 due rows per message

Options are read once per process, when the module is first loaded.
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

    @property
    def batched(self) -> bool:
        """Whether several rows of this type may share one message."""
        return self.batch_size > 1


def read_options(module: ModuleType) -> JobOptions:
    """The options a job module declares; JobModuleError names a bad one."""
    size = getattr(module, "BATCH_SIZE", 1)
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_BATCH_SIZE:
        raise JobModuleError(
            f"job module {module.__name__}: BATCH_SIZE must be an int from 1 to "
            f"{MAX_BATCH_SIZE}, got {size!r}"
        )
    return JobOptions(batch_size=size)


class JobRegistry:
    """The job types of one package: a type is a module named after it.

    Listing types does not import the modules, so a module that fails at import
    breaks only its own jobs, not scheduling of the others.
    """

    def __init__(self, package: str) -> None:
        self.package = package
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
            self._options[job_type] = read_options(module)
            self._runners[job_type] = run

    @staticmethod
    def is_async(runner: JobRunner) -> bool:
        """Whether ``runner`` must be awaited."""
        return inspect.iscoroutinefunction(runner)
