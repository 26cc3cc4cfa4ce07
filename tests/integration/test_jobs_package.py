"""The jobs package: listing types, loading run(), and the params a job gets."""

from __future__ import annotations

import pytest

from worker_bridge.bridge import BridgeApp
from worker_bridge.errors import ConfigurationError, JobModuleError, UnknownJobTypeError
from worker_bridge.loader import JobRegistry


def test_known_types_are_the_modules() -> None:
    registry = JobRegistry("tests.testjobs")
    assert {"echo", "async_echo", "other", "record"} <= registry.known_types()
    assert "__init__" not in registry.known_types()


def test_the_default_jobs_package_ships_the_removal_job() -> None:
    assert "remove_old_worker_jobs" in JobRegistry("jobs").known_types()


def test_runner_loads_run_and_detects_async() -> None:
    registry = JobRegistry("tests.testjobs")
    assert not registry.is_async(registry.runner("echo"))
    assert registry.is_async(registry.runner("async_echo"))


def test_a_module_that_fails_to_import_is_a_clear_error() -> None:
    registry = JobRegistry("tests.testjobs")
    with pytest.raises(JobModuleError, match="failed to import: RuntimeError: this module is"):
        registry.runner("broken_import")
    with pytest.raises(JobModuleError, match="defines no run"):
        registry.runner("no_run")


def test_unknown_type_and_missing_package() -> None:
    with pytest.raises(UnknownJobTypeError, match="known types"):
        JobRegistry("tests.testjobs").runner("nope")
    with pytest.raises(ConfigurationError, match="WORKER_BRIDGE_JOBS"):
        JobRegistry("no_such_package_here").known_types()


def test_bridge_uses_the_configured_package(bridge: BridgeApp) -> None:
    assert bridge.jobs.package == "tests.testjobs"
