"""The project's removal job, so the dispatcher runs it every minute as in production.

Benchmark rows are written with a long ``remove_delay`` (or a far ``remove_at``),
so the removal job runs but never deletes a row a measurement still counts.
"""

from __future__ import annotations

from jobs.remove_old_worker_jobs import run

__all__ = ["run"]
