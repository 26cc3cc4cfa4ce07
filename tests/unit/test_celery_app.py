"""The Celery app carries the settings the bridge's guarantees rest on."""

from __future__ import annotations

from worker_bridge import app
from worker_bridge.celery_app import create_celery_app


def test_the_app_is_configured_for_the_bridge() -> None:
    conf = app.conf
    assert conf.accept_content == ["json"] and conf.task_serializer == "json"
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    # Workers send task events only when a monitor asks (Flower does, by itself);
    # the dispatcher's task-sent events are always sent, batched.
    assert not conf.worker_send_task_events and conf.task_send_sent_event
    assert conf.beat_scheduler == "worker_bridge.dispatcher:DispatcherScheduler"
    assert conf.task_ignore_result


def test_one_task_per_job_type() -> None:
    # The suite sets WORKER_BRIDGE_JOBS=tests.testjobs before the app is built.
    names = {name for name in create_celery_app().tasks if name.startswith("jobs.")}
    assert {"jobs.echo", "jobs.async_echo", "jobs.record", "jobs.fail"} <= names
