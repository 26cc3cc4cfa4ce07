"""The jobs package: which job types exist, and loading a type's module."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import threading
from collections.abc import Callable
from types import ModuleType
from typing import Any

from worker_bridge.errors import ConfigurationError, JobModuleError, UnknownJobTypeError

#: A job's entry point: ``run(params)``, plain or ``async``.
JobRunner = Callable[[Any], Any]


class JobRegistry:
    """The job types of one package: a type is a module named after it.

    Listing types does not import the modules, so a module that fails at import
    breaks only its own jobs, not scheduling of the others.
    """

    def __init__(self, package: str) -> None:
        self.package = package
        self._types: frozenset[str] | None = None
        self._runners: dict[str, JobRunner] = {}
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
        if runner is not None:
            return runner
        self.check_type(job_type)
        with self._lock:
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
            self._runners[job_type] = run
            return run

    @staticmethod
    def is_async(runner: JobRunner) -> bool:
        """Whether ``runner`` must be awaited."""
        return inspect.iscoroutinefunction(runner)
