"""Badly behaved job modules against a real worker and dispatcher.

A module that raises at import, one without run(), one returning a value that is not
JSON, one returning more than ``worker_bridge_max_result_bytes`` (1 MiB by default), one
returning an int too long for Python's int-to-str limit, and one writing megabytes to
stdout, stderr and its logger: each row ends with a clear outcome, and the same worker
goes on serving other jobs.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from tests.acceptance.conftest import Processes, wait_until
from worker_bridge import WorkerJobConfig, schedule_job
from worker_bridge.models import JobState, WorkerJob

Fetch = Callable[[int], WorkerJob]
MIB = 1024 * 1024


def _finished(fetch: Fetch, job_id: int) -> WorkerJob | None:
    job = fetch(job_id)
    return job if job.finished is not None else None


def _failed_with(job: WorkerJob, exception: str, *fragments: str) -> None:
    """The row failed after one attempt, with ``exception`` and ``fragments`` in its result."""
    assert job.state is JobState.FAILED, (job.state, job.result)
    assert job.attempts == 1 and job.recoveries == 0, (job.attempts, job.recoveries)
    assert isinstance(job.result, dict) and job.result["exception"] == exception, job.result
    for fragment in fragments:
        assert fragment in job.result["error"], job.result["error"]


def test_bad_job_modules_fail_clearly_and_the_worker_keeps_serving(
    processes: Processes, fetch: Fetch
) -> None:
    """broken_import and no_run fail with JobModuleError naming the module and the cause;
    not_json and a 2 MiB result fail with InvalidResultError (the size and the setting
    named, the oversized value not kept); chatty's 11 MB of output does not disturb it and
    it succeeds; and the worker that ran all of them runs a plain job afterwards."""
    worker = processes.worker("wb", 2)
    processes.dispatcher()
    jobs = {
        name: schedule_job(WorkerJobConfig(type=name, user_id=1))
        for name in ("broken_import", "no_run", "not_json", "big_result", "chatty")
    }
    done = {
        name: wait_until(lambda job=job: _finished(fetch, job.id), 60, f"the {name} job")
        for name, job in jobs.items()
    }

    _failed_with(
        done["broken_import"],
        "JobModuleError",
        "job module tests.testjobs.broken_import failed to import",
        "RuntimeError: this module is broken on purpose",
    )
    assert "this module is broken on purpose" in done["broken_import"].result["traceback"]
    _failed_with(
        done["no_run"], "JobModuleError", "tests.testjobs.no_run defines no run(params) function"
    )
    _failed_with(done["not_json"], "InvalidResultError", "cannot be stored", "object at $.when")
    _failed_with(
        done["big_result"],
        "InvalidResultError",
        f"it is {2 * MIB} bytes as JSON, over the limit of {MIB} (worker_bridge_max_result_bytes)",
    )
    assert len(json.dumps(done["big_result"].result)) < 10_000  # the 2 MiB value is not kept

    chatty = done["chatty"]
    assert chatty.state is JobState.SUCCEEDED, chatty.result
    assert chatty.result == {"chatted_mib": 5, "lines": 5 * 1024}
    assert len(processes.log_of(worker)) > 10 * MIB  # its output really went through

    after = schedule_job(WorkerJobConfig(type="echo", user_id=2, data={"still": "serving"}))
    served = wait_until(lambda: _finished(fetch, after.id), 30, "a job after the bad ones")
    assert served.state is JobState.SUCCEEDED and served.result["data"] == {"still": "serving"}
    assert worker.poll() is None, "the worker main process died"


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)  # the same on SQLite
def test_a_result_python_cannot_serialize_fails_the_job_once(
    processes: Processes, fetch: Fetch
) -> None:
    """run() returns {"n": 10**5000}: JSON, but over Python's 4300-digit int-to-str limit, so
    it cannot be stored. The job must fail on its first attempt with InvalidResultError, like
    any unstorable result; it must not leave the row running (the ValueError escaping
    decide_outcome), to be recovered and run again each heartbeat timeout."""
    processes.worker("wh", 1)
    processes.dispatcher()
    job = schedule_job(WorkerJobConfig(type="huge_int_result", user_id=1))
    done = wait_until(lambda: _finished(fetch, job.id), 15, "the huge_int_result job")
    _failed_with(done, "InvalidResultError", "cannot be stored")
    after = schedule_job(WorkerJobConfig(type="echo", user_id=2))
    assert wait_until(lambda: _finished(fetch, after.id), 30, "a job after it").success
