"""The metrics: the table's gauges from one grouped query (PostgreSQL and SQLite), and the
process counters as prometheus-client exposes them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import prometheus_client
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.test_store_contract import (
    _cancelled,
    _dispatched,
    _put,
    _running,
    _succeeded,
    contract_bridge,
)
from worker_bridge.bridge import BridgeApp
from worker_bridge.metrics import ProcessMetrics, registry_for
from worker_bridge.store.reports import TypeBacklog

__all__ = ["contract_bridge"]

NOW = datetime(2030, 3, 1, 12, 2, tzinfo=UTC)


def _table(bridge: BridgeApp, now: datetime = NOW) -> None:
    """echo: 2 pending (one due 90 s before ``now``), 1 dispatched, 2 running (one with a
    stale heartbeat), finished rows; fail: one due pending row."""
    _put(bridge, user_id=1, due=now - timedelta(seconds=90))
    _put(bridge, user_id=2, due=now + timedelta(hours=1))
    _put(bridge, user_id=3, **_dispatched("t-3", at=now - timedelta(seconds=2)))
    _put(bridge, user_id=4, **_running("t-4", started=now - timedelta(seconds=5), heartbeat=now))
    _put(bridge, user_id=5, **_running("t-5", started=now - timedelta(minutes=6),
                                       heartbeat=now - timedelta(minutes=5)))  # fmt: skip
    _put(bridge, user_id=6, **_succeeded(finished=now - timedelta(hours=2)))
    _put(bridge, user_id=7, **_cancelled(finished=now - timedelta(hours=2)))
    _put(bridge, type="fail", user_id=1, due=now - timedelta(seconds=10))


def test_live_backlog_counts_the_live_rows_of_each_type(contract_bridge: BridgeApp) -> None:
    _table(contract_bridge)
    with contract_bridge.engine.connect() as connection:
        backlog = contract_bridge.store.live_backlog(
            connection, now=NOW, heartbeat_before=NOW - timedelta(seconds=60)
        )
    assert backlog == [
        TypeBacklog("echo", pending=2, due=1, dispatched=1, running=2, stale_heartbeats=1,
                    oldest_due=NOW - timedelta(seconds=90)),
        TypeBacklog("fail", pending=1, due=1, dispatched=0, running=0, stale_heartbeats=0,
                    oldest_due=NOW - timedelta(seconds=10)),
    ]  # fmt: skip


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_the_scrape_shows_the_tables_gauges(bridge: BridgeApp) -> None:
    _table(bridge, datetime.now(UTC))
    samples = _samples(prometheus_client.generate_latest(registry_for(bridge)).decode())

    def jobs(job_type: str, state: str) -> float:
        return samples[("worker_bridge_jobs", (("state", state), ("type", job_type)))]

    assert [jobs("echo", state) for state in ("pending", "due", "dispatched", "running")] == [
        2, 1, 1, 2,
    ]  # fmt: skip
    assert jobs("fail", "due") == 1
    assert samples[("worker_bridge_stale_heartbeats", (("type", "echo"),))] == 1
    assert 90 <= samples[("worker_bridge_oldest_due_lag_seconds", (("type", "echo"),))] < 150
    assert samples[("worker_bridge_in_flight", ())] == 1
    assert samples[("worker_bridge_max_in_flight", ())] == bridge.settings.max_in_flight
    assert not any("user" in str(key) or "job_id" in str(key) for key in samples)


def test_the_oldest_due_lag_is_how_late_the_oldest_due_row_is(bridge: BridgeApp) -> None:
    _put(bridge, user_id=1, due=datetime.now(UTC) - timedelta(minutes=10))
    samples = _samples(prometheus_client.generate_latest(registry_for(bridge)).decode())
    lag = samples[("worker_bridge_oldest_due_lag_seconds", (("type", "echo"),))]
    assert 600 <= lag < 660


def test_process_metrics_count_with_type_and_outcome_labels_only() -> None:
    registry = prometheus_client.CollectorRegistry()
    metrics = ProcessMetrics(registry)
    metrics.dispatched("echo", 0.2)
    metrics.dispatched("echo", -1.0)  # dispatched before its due time: no negative lag
    metrics.finished("echo", "failed", 0.03)
    metrics.claim_refused("echo")
    metrics.recovered("heartbeat older than heartbeat_timeout")
    samples = _samples(prometheus_client.generate_latest(registry).decode())
    assert samples[("worker_bridge_jobs_dispatched_total", (("type", "echo"),))] == 2
    assert samples[("worker_bridge_dispatch_lag_seconds_count", (("type", "echo"),))] == 2
    assert samples[("worker_bridge_dispatch_lag_seconds_sum", (("type", "echo"),))] == 0.2
    assert (
        samples[
            ("worker_bridge_job_duration_seconds_count", (("outcome", "failed"), ("type", "echo")))
        ]
        == 1
    )
    assert samples[("worker_bridge_claims_refused_total", (("type", "echo"),))] == 1
    assert (
        samples[
            (
                "worker_bridge_recoveries_total",
                (("reason", "heartbeat older than heartbeat_timeout"),),
            )
        ]
        == 1
    )
