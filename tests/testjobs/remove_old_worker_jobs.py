"""The shipped removal job, served by the test package too."""

from jobs.remove_old_worker_jobs import run

__all__ = ["run"]
