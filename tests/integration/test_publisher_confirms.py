"""Publisher confirms on RabbitMQ: a publish the broker refuses rolls the dispatcher's batch back.

On an ``amqp://`` broker the app turns on publisher confirms, so a publish
returns only once RabbitMQ has taken the message. Here RabbitMQ refuses every
message for the default queue (a policy: ``max-length`` 0 with
``overflow = reject-publish``, so each publish is nacked): the pass raises
(kombu's OperationalError, caused by py-amqp's MessageNacked), and the rows
stay pending, as if never claimed. Once the queue takes messages
again, the same dispatcher's next pass sends them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import pytest
from amqp.exceptions import MessageNacked
from celery import Celery
from kombu import Connection, Exchange, Queue
from kombu.exceptions import OperationalError

from tests.conftest import rabbitmqctl
from worker_bridge import WorkerJobConfig, schedule_job
from worker_bridge.bridge import BridgeApp
from worker_bridge.celery_app import create_celery_app
from worker_bridge.dispatcher import Dispatcher
from worker_bridge.models import JobState, WorkerJob

Fetch = Callable[[int], WorkerJob]
POLICY = "worker-bridge-test-refuse"
#: The default queue as Celery declares it (durable, bound to the exchange of its name).
DEFAULT_QUEUE = Queue("celery", Exchange("celery", type="direct"), routing_key="celery")


@pytest.fixture
def celery_app(rabbitmq_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Celery]:
    """The app as a dispatcher on RabbitMQ builds it (CELERY_BROKER_URL is amqp://)."""
    monkeypatch.setenv("CELERY_BROKER_URL", rabbitmq_url)
    app = create_celery_app()
    yield app
    app.close()


def _queued(url: str) -> int:
    """Messages ready in the default queue."""
    with Connection(url) as connection:
        return int(DEFAULT_QUEUE(connection.default_channel).queue_declare(passive=True)[1])


def test_a_publish_the_broker_refuses_rolls_the_batch_back(
    bridge: BridgeApp,
    celery_app: Celery,
    rabbitmq_url: str,
    rabbitmq_vhost: str,
    fetch: Fetch,
) -> None:
    assert celery_app.conf.broker_transport_options.get("confirm_publish") is True
    jobs = [schedule_job(WorkerJobConfig(type="echo", user_id=i)) for i in range(3)]
    dispatcher = Dispatcher(bridge, celery_app)
    try:
        _refused_then_sent(dispatcher, jobs, rabbitmq_url, rabbitmq_vhost, fetch)
    finally:
        dispatcher.close()


def _refused_then_sent(
    dispatcher: Dispatcher,
    jobs: list[WorkerJob],
    rabbitmq_url: str,
    rabbitmq_vhost: str,
    fetch: Fetch,
) -> None:
    refuse = json.dumps({"max-length": 0, "overflow": "reject-publish"})
    rabbitmqctl(
        "set_policy", "-p", rabbitmq_vhost, "--apply-to", "queues", POLICY, "^celery$", refuse
    )
    try:
        # The queue is created by this pass's own declaration, under the policy. kombu
        # retries a nacked publish (task_publish_retry_policy), then gives up.
        with pytest.raises(OperationalError) as refused:
            dispatcher.run_once(datetime.now(UTC))
        assert isinstance(refused.value.__cause__, MessageNacked), repr(refused.value.__cause__)
    finally:
        rabbitmqctl("clear_policy", "-p", rabbitmq_vhost, POLICY)
    for job in jobs:
        row = fetch(job.id)
        assert row.state is JobState.PENDING, row
        assert row.dispatched_at is None and row.task_id is None
    assert _queued(rabbitmq_url) == 0

    # The queue anew, without the policy (a dispatcher that declared it before does not
    # declare it again): the next pass sends every row, each message taken and confirmed.
    with Connection(rabbitmq_url) as connection:
        channel = connection.default_channel
        channel.queue_delete(queue="celery")
        DEFAULT_QUEUE(channel).declare()
    report = dispatcher.run_once(datetime.now(UTC))
    assert sorted(job.id for job in report.sent) == [job.id for job in jobs]
    for job in jobs:
        row = fetch(job.id)
        assert row.state is JobState.DISPATCHED and row.dispatched_at is not None
    assert _queued(rabbitmq_url) == len(jobs)
