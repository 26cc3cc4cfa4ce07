"""Prometheus metrics: the table's gauges, computed at scrape time, and the processes' counters.

The table is the one place that knows how late each type runs (a backlog past
``worker_bridge_max_in_flight`` waits there, not in the broker), so its gauges
come from one grouped query over the unfinished rows at each scrape
(:class:`TableCollector`). The dispatcher, the workers and recovery count
what they do (:data:`PROCESS`): rows dispatched and their dispatch lag, job
durations by outcome, claims refused, recoveries by reason. No label carries a
user id or a job id.

Optional: it needs ``prometheus-client`` (``pip install 'worker-bridge[metrics]'``);
without it the counters do nothing. A prefork worker's pool processes count
in prometheus-client's multiprocess mode: set ``PROMETHEUS_MULTIPROC_DIR`` to
one empty directory for every worker_bridge process of a host and for
``worker-bridge metrics``, which serves them all with the table's gauges.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

try:
    import prometheus_client
    from prometheus_client.core import GaugeMetricFamily
    from prometheus_client.registry import Collector
except ImportError:  # pragma: no cover - exercised by installs without the extra
    prometheus_client = None  # type: ignore[assignment]
    Collector = object  # type: ignore[assignment,misc]

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

    from worker_bridge.bridge import BridgeApp

#: Histogram buckets of durations and lags, in seconds: from a no-op to an hour.
SECONDS_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600,
)  # fmt: skip
#: What a finished attempt's ``outcome`` label says.
SUCCEEDED, FAILED, REFUSED = "succeeded", "failed", "refused"


class ProcessMetrics:
    """The counters and histograms this process adds to (no-ops without prometheus-client)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.enabled = prometheus_client is not None
        if not self.enabled:
            return
        registry = registry or prometheus_client.REGISTRY
        self._dispatched = prometheus_client.Counter(
            "worker_bridge_jobs_dispatched", "Rows sent to the broker", ["type"], registry=registry
        )
        self._dispatch_lag = prometheus_client.Histogram(
            "worker_bridge_dispatch_lag_seconds",
            "From a row's due time to its dispatch",
            ["type"],
            buckets=SECONDS_BUCKETS,
            registry=registry,
        )
        self._duration = prometheus_client.Histogram(
            "worker_bridge_job_duration_seconds",
            "run() of one job, by how its outcome was taken (succeeded, failed, refused)",
            ["type", "outcome"],
            buckets=SECONDS_BUCKETS,
            registry=registry,
        )
        self._refused = prometheus_client.Counter(
            "worker_bridge_claims_refused",
            "Messages whose claim the table refused (duplicate, outdated, cancelled, deleted)",
            ["type"],
            registry=registry,
        )
        self._recovered = prometheus_client.Counter(
            "worker_bridge_recoveries",
            "Rows taken back from a lost attempt, by reason",
            ["reason"],
            registry=registry,
        )

    def dispatched(self, job_type: str, lag: float) -> None:
        """A row of ``job_type`` was sent ``lag`` seconds after it was due."""
        if self.enabled:
            self._dispatched.labels(job_type).inc()
            self._dispatch_lag.labels(job_type).observe(max(lag, 0.0))

    def finished(self, job_type: str, outcome: str, duration: float) -> None:
        """A run of ``job_type`` took ``duration`` seconds; ``outcome`` says what was kept."""
        if self.enabled:
            self._duration.labels(job_type, outcome).observe(duration)

    def claim_refused(self, job_type: str) -> None:
        """The table refused a message's claim."""
        if self.enabled:
            self._refused.labels(job_type).inc()

    def recovered(self, reason: str) -> None:
        """Recovery took a row back, for ``reason``."""
        if self.enabled:
            self._recovered.labels(reason).inc()


#: The process's counters, shared by the dispatcher, the attempts and recovery.
PROCESS = ProcessMetrics()


class TableCollector(Collector):
    """The table's gauges, read at each scrape in one grouped query."""

    def __init__(self, bridge: BridgeApp) -> None:
        self.bridge = bridge

    def collect(self) -> Iterator[Any]:
        now = datetime.now(UTC)
        settings = self.bridge.settings
        with self.bridge.engine.connect() as connection:
            backlog = self.bridge.store.live_backlog(
                connection, now=now, heartbeat_before=now - settings.heartbeat_timeout
            )
        jobs = GaugeMetricFamily(
            "worker_bridge_jobs",
            "Live rows by type and state (pending includes due; due: pending and due now)",
            labels=["type", "state"],
        )
        lag = GaugeMetricFamily(
            "worker_bridge_oldest_due_lag_seconds",
            "How long the oldest due pending row of each type has waited past its due time",
            labels=["type"],
        )
        stale = GaugeMetricFamily(
            "worker_bridge_stale_heartbeats",
            "Running rows whose heartbeat is older than worker_bridge_heartbeat_timeout",
            labels=["type"],
        )
        for row in backlog:
            for state, count in (
                ("pending", row.pending), ("due", row.due), ("dispatched", row.dispatched),
                ("running", row.running),
            ):  # fmt: skip
                jobs.add_metric([row.type, state], count)
            oldest = 0.0 if row.oldest_due is None else (now - row.oldest_due).total_seconds()
            lag.add_metric([row.type], max(oldest, 0.0))
            stale.add_metric([row.type], row.stale_heartbeats)
        in_flight = GaugeMetricFamily(
            "worker_bridge_in_flight", "Rows sent to the broker and not started, all types"
        )
        in_flight.add_metric([], sum(row.dispatched for row in backlog))
        window = GaugeMetricFamily(
            "worker_bridge_max_in_flight", "worker_bridge_max_in_flight: the dispatcher's window"
        )
        window.add_metric([], settings.max_in_flight)
        yield from (jobs, lag, stale, in_flight, window)


def registry_for(bridge: BridgeApp) -> CollectorRegistry:
    """A registry of the table's gauges and, in multiprocess mode, every process's counters."""
    if prometheus_client is None:
        raise ImportError("metrics need prometheus-client: pip install 'worker-bridge[metrics]'")
    from prometheus_client import CollectorRegistry, multiprocess

    registry = CollectorRegistry()
    registry.register(TableCollector(bridge))
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return registry
