"""The dispatcher: moves due rows of ``worker_jobs`` into Celery tasks.

It runs as a Celery beat scheduler (``celery -A worker_bridge beat``, or
``worker -B``). :meth:`Dispatcher.run_once` is one pass; the beat hook
:meth:`DispatcherScheduler.tick` runs a pass and then waits, on LISTEN/NOTIFY
where the database has it, until the next due time, a notification, or
``worker_bridge_max_interval``.

The crash window between publishing and committing is covered like this: a
batch is claimed (rows locked and stamped with fresh task ids) and published,
and only then committed. A dispatcher that dies before the commit leaves its
rows pending, to be sent again by the next pass of any dispatcher; the
messages it did publish carry task ids the table never recorded, so the
workers' claims refuse them. A dispatcher that dies after the commit has sent
everything it marked. So a crash can neither lose a job nor run it twice.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from celery import beat
from sqlalchemy.exc import DBAPIError

from worker_bridge.attempt import Clock, utcnow
from worker_bridge.bridge import BridgeApp
from worker_bridge.broker import job_queues, queued_messages
from worker_bridge.errors import DatabaseUnavailableError
from worker_bridge.job import Job
from worker_bridge.maintenance import REMOVAL_JOB, JobRecovery, JobRemoval
from worker_bridge.metrics import PROCESS
from worker_bridge.routing import (
    group_into_messages,
    job_options,
    send_options,
    within_caps,
)
from worker_bridge.store import Recovered
from worker_bridge.tasks import task_name
from worker_bridge.wakeup import Waiter

if TYPE_CHECKING:
    from celery import Celery

logger = logging.getLogger(__name__)
#: Wait when due rows exist that another dispatcher holds right now.
BUSY_WAIT = 0.05
#: Wait when max_in_flight rows are already in the broker.
THROTTLED_WAIT = 0.05


@dataclass
class DispatchReport:
    """What one pass did."""

    sent: list[Job] = field(default_factory=list)
    failed: list[Job] = field(default_factory=list)
    recovered: list[Recovered] = field(default_factory=list)
    #: The earliest due time still waiting, after the pass.
    next_due: datetime | None = None
    #: Whether the last batch was full (more may be due right now).
    saturated: bool = False
    #: Whether max_in_flight stopped the pass (workers have not caught up).
    throttled: bool = False


class SentEventBatch:
    """Collects the ``task-sent`` events of one batch and publishes them as one message.

    Celery publishes each ``task-sent`` event on its own, one broker round
    trip per task: half the cost of dispatching a row. Its workers batch
    their task events instead (``buffer_group``, routing key ``task.multi``),
    and Flower, like every ``EventReceiver``, reads such batches; the
    dispatcher does the same. ``send_task`` hands each event to
    :meth:`publish` (the ``event_dispatcher`` option); :meth:`flush` sends them.
    """

    def __init__(self, celery: Celery, producer: Any, size: int) -> None:
        self._events = celery.events.Dispatcher(
            channel=producer.channel,
            buffer_group=("task",),
            # Never flushed halfway: one message per batch.
            buffer_limit=size + 1,
            buffer_while_offline=False,
        )

    def publish(self, type: str, fields: dict[str, Any], producer: Any, **_: Any) -> None:
        """Buffer one event (called by Celery's ``send_task_message``)."""
        self._events.send(type, **fields)

    def flush(self) -> None:
        """Publish the buffered events; a failure is logged, never raised.

        Events are for monitoring: the batch's tasks are already in the
        queue, and failing the batch now would only send them again.
        """
        try:
            self._events.flush()
        except Exception as exc:
            logger.warning("task-sent events of a dispatched batch were not published: %s", exc)
        finally:
            self._events.close()


class Dispatcher:
    """Sends due jobs to Celery, and runs recovery between passes.

    ``clock`` gives "now" to :meth:`tick`-driven passes; tests call
    :meth:`run_once` with a pinned ``now`` instead.
    """

    def __init__(
        self,
        bridge: BridgeApp,
        celery: Celery,
        waiter: Waiter | None = None,
        clock: Clock = utcnow,
    ) -> None:
        self.bridge = bridge
        self.celery = celery
        self.clock = clock
        self.waiter = waiter if waiter is not None else bridge.store.waiter(bridge.engine)
        #: The recovery service, run from the dispatcher's passes.
        self.recovery = JobRecovery(bridge, self.broker_backlog)
        #: The removal service, whose cron job the dispatcher keeps alive.
        self.removal = JobRemoval(bridge)
        self._next_recovery: datetime | None = None

    def run_once(self, now: datetime) -> DispatchReport:
        """One pass at ``now``: recover lost attempts (when due), send every due row."""
        report = DispatchReport()
        if self._next_recovery is None or now >= self._next_recovery:
            report.recovered = self.recovery.run_once(now)
            self._next_recovery = now + timedelta(seconds=self.recovery.interval)
        settings = self.bridge.settings
        store = self.bridge.store
        with self.bridge.engine.connect() as connection:
            room = settings.max_in_flight - store.count_in_flight(connection)
        while room > 0:
            limit = min(settings.dispatch_batch_size, room)
            sent, failed = self.dispatch_batch(now, limit)
            report.sent.extend(sent)
            report.failed.extend(failed)
            room -= len(sent)
            report.saturated = len(sent) + len(failed) >= limit
            if not report.saturated:
                break
        report.throttled = room <= 0
        with self.bridge.engine.connect() as connection:
            report.next_due = store.next_due(connection)
        return report

    def pass_once(self) -> float:
        """One pass at the clock's now, through database blips; seconds until the next.

        A pass is safe to run again after a lost connection (what it sent is
        committed per batch, and the rest is recomputed), so a connection that
        died idle in the pool costs a retry, not a failed pass.
        """
        report = self.bridge.reconnecting(
            "dispatcher pass",
            lambda: self.run_once(self.clock()),
            self.bridge.settings.max_interval.total_seconds(),
        )
        return self.seconds_until_next_pass(report, self.clock())

    def dispatch_batch(self, now: datetime, limit: int) -> tuple[list[Job], list[Job]]:
        """Claim, publish and commit one batch; return (sent, failed as unsendable)."""
        registry = self.bridge.jobs
        store = self.bridge.store
        options = functools.partial(job_options, registry)
        with self.bridge.engine.begin() as connection:
            caps = self.concurrency_caps()
            # One dispatcher at a time counts and fills a capped type, or two could
            # both see room and together send past the cap.
            store.lock_types(connection, sorted(caps))
            live = store.count_live_by_type(connection, sorted(caps))
            full = sorted(
                job_type for job_type, cap in caps.items() if live.get(job_type, 0) >= cap
            )
            jobs = store.claim_due_jobs(connection, now=now, limit=limit, exclude_types=full)
            if not jobs:
                return [], []
            known = registry.known_types()
            if any(job.type not in known for job in jobs):
                known = registry.known_types(refresh=True)
            unsendable = [job for job in jobs if job.type not in known]
            sendable, over = within_caps([job for job in jobs if job.type in known], caps, live)
            # Rows past their type's cap wait in the table for a later pass.
            store.unclaim_jobs(connection, [job.id for job in over])
            for job in unsendable:
                error = (
                    f"no job module {registry.package}.{job.type}: the job type is unknown "
                    "to the dispatcher, so it was not sent"
                )
                store.fail_unsendable(connection, [job.id], now=now, error=error)
                logger.error(
                    "job %s: failed without running: %s",
                    job.id,
                    error,
                    extra={"job_id": job.id, "job_type": job.type},
                )
            messages = group_into_messages(sendable, lambda t: options(t).batch_size)
            sendable = []
            for message in messages:
                if len(message) > 1:
                    # A batch's rows share one token, the message's task id.
                    token = message[0].task_id
                    assert token is not None
                    store.share_token(connection, [job.id for job in message], token)
                    message[:] = [replace(job, task_id=token) for job in message]
                sendable.extend(message)
            # Publishing inside the transaction: see the module docstring.
            with self.celery.producer_or_acquire() as producer:
                sent_events = SentEventBatch(self.celery, producer, len(messages))
                for message in messages:
                    first = message[0]
                    self.celery.send_task(
                        task_name(first.type),
                        kwargs=(
                            {"job_id": first.id, "user_id": first.user_id}
                            if len(message) == 1
                            else {"job_ids": [job.id for job in message]}
                        ),
                        task_id=first.task_id,
                        producer=producer,
                        event_dispatcher=sent_events,
                        **send_options(options(first.type)),
                    )
                sent_events.flush()
        for job in sendable:
            PROCESS.dispatched(job.type, (now - job.due).total_seconds())
        if sendable:
            logger.debug("dispatched %d jobs", len(sendable))
        return sendable, unsendable

    def concurrency_caps(self) -> dict[str, int]:
        """``MAX_CONCURRENCY`` of every job type that declares one."""
        registry = self.bridge.jobs
        caps = {}
        for job_type in registry.known_types():
            cap = job_options(registry, job_type).max_concurrency
            if cap is not None:
                caps[job_type] = cap
        return caps

    def job_queues(self) -> set[str]:
        """Every queue a job type's messages may go to: the default one and the types' own."""
        return job_queues(self.bridge, self.celery)

    def broker_backlog(self) -> int | None:
        """Messages waiting in the job queues, or None if the broker cannot say.

        None leaves dispatched rows alone on this pass: a message not seen may
        still be queued, so it is not taken for lost.
        """
        return queued_messages(self.celery, self.job_queues())

    def seconds_until_next_pass(self, report: DispatchReport, now: datetime) -> float:
        """How long to wait after ``report`` (of a pass at about ``now``) before the next pass."""
        if report.throttled:
            # No notification says that workers started jobs: look again soon.
            return THROTTLED_WAIT
        if report.saturated:
            return 0.0
        wait = self.bridge.settings.max_interval.total_seconds()
        if self._next_recovery is not None:
            wait = min(wait, max((self._next_recovery - now).total_seconds(), 0.0))
        if report.next_due is not None:
            until_due = (report.next_due - now).total_seconds()
            # Due rows left over are held by another dispatcher right now.
            wait = min(wait, until_due if until_due > 0 else BUSY_WAIT)
        return max(wait, 0.0)

    def close(self) -> None:
        """Release the waiter's connection."""
        self.waiter.close()


class DispatcherScheduler(beat.Scheduler):  # type: ignore[misc]
    """Celery beat scheduler that runs the dispatcher instead of a static schedule.

    Construction with ``lazy=True`` (introspection) touches nothing; the
    database is first used in :meth:`setup_schedule`. Entries of Celery's own
    ``beat_schedule`` are not run: schedule recurring jobs with
    ``schedule_cron_job`` so that the table stays the one source of truth.
    """

    _dispatcher: Dispatcher | None = None

    def setup_schedule(self) -> None:
        bridge: BridgeApp = self.app.bridge
        self._dispatcher = Dispatcher(bridge, self.app)
        logger.info(
            "worker_bridge dispatcher started on %s: %s",
            bridge.engine.url.render_as_string(hide_password=True),
            bridge.store.dispatch_mode,
        )
        try:
            self._dispatcher.removal.ensure_job(self._dispatcher.clock())
        except DBAPIError:
            logger.exception("could not ensure the %s job; will retry at next start", REMOVAL_JOB)

    @property
    def dispatcher(self) -> Dispatcher:
        if self._dispatcher is None:
            self.setup_schedule()
        assert self._dispatcher is not None
        return self._dispatcher

    def tick(self, *args: Any, **kwargs: Any) -> float:
        dispatcher = self.dispatcher
        try:
            wait = dispatcher.pass_once()
        except (DBAPIError, DatabaseUnavailableError) as exc:
            reason = exc.orig if isinstance(exc, DBAPIError) and exc.orig else exc
            first_line = str(reason).strip().splitlines()[0]
            logger.error("dispatcher pass failed, retrying: %s", first_line)
            wait = 1.0
        except Exception:
            # The broker may be down (publishing failed): the batch rolled back.
            logger.exception("dispatcher pass failed, retrying")
            wait = 1.0
        if wait > 0:
            dispatcher.waiter.wait(wait)
        # The wait happened above (it may end early on NOTIFY); beat must not sleep.
        return 0.0

    def sync(self) -> None:
        # Nothing to persist: the table is the schedule.
        pass

    def close(self) -> None:
        if self._dispatcher is not None:
            self._dispatcher.close()

    @property
    def info(self) -> str:
        return "    . dispatcher -> worker_jobs (worker_bridge)"
