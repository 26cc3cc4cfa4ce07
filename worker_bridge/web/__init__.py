"""The operator's console: ``worker-bridge web``, or an ASGI app to mount in an application.

Server-rendered pages over the table (Starlette and Jinja2, the ``[web]``
extra; no script): the overview by type with the chart of the last hour and
the broker's backlog, the job list with filters (JSON containment on data,
time ranges), capped counts and keyset pagination, a job with its timeline,
lineage, supersede links and why it has not run yet, every live cron series
with its next fire times, and the actions: cancel (one job, or every live
match of a filter after a preview), run now, run again. ``/metrics`` serves
the same Prometheus metrics as ``worker-bridge metrics``.

Pages read the table on Starlette's thread pool (their handlers are plain
functions), so a slow query never blocks the event loop.

Security: actions are POST forms carrying a CSRF token (double submit: the
same random value in a cookie and in the form); ``read_only`` refuses every
action; with ``auth`` ("user:password") every request needs HTTP basic auth.
``worker-bridge web`` refuses to listen beyond loopback without ``auth``.
Pages show no secret: the database URL is shown with its password masked.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit
from zoneinfo import ZoneInfo

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.templating import Jinja2Templates

from worker_bridge import broker, control
from worker_bridge.bridge import BridgeApp, get_bridge
from worker_bridge.db import safe_url
from worker_bridge.errors import ConfigurationError, JobNotFoundError, JobStateError
from worker_bridge.job import JobState
from worker_bridge.store.reports import TIME_FIELDS, JobFilter, JobSummary
from worker_bridge.web import chart, series
from worker_bridge.web.explain import timeline, why_not_run

#: Rows of one page of the job list (and lines of the cron series page).
PAGE_SIZE = 50
#: Counts stop here: "10000+" on millions of rows, instead of reading them all.
COUNT_CAP = 10_000
#: Earlier rows shown per cron series.
SERIES_HISTORY = 5
CSRF_COOKIE = "worker_bridge_csrf"
_TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
#: Query parameters that are not part of a filter.
_NOT_FILTERS = ("before", "before_at", "id", "message", "csrf", "up_to")


def _in_zone(moment: datetime | None, zone: str) -> str:
    return "" if moment is None else moment.astimezone(ZoneInfo(zone)).strftime("%Y-%m-%d %H:%M:%S")


_TEMPLATES.env.filters["in_zone"] = _in_zone


@dataclass(frozen=True, slots=True)
class ConsoleSettings:
    """How the console is served."""

    #: Refuse every action (cancel): a console to look, not to touch.
    read_only: bool = False
    #: "user:password" for HTTP basic auth on every request; None: no authentication.
    auth: str | None = None
    #: Flower's address (e.g. "http://localhost:5555"): a job's page links to its task there.
    flower_url: str | None = None


class _BasicAuth(BaseHTTPMiddleware):
    def __init__(self, app: Any, credentials: str) -> None:
        super().__init__(app)
        self.expected = credentials.encode()

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        try:
            given = base64.b64decode(value, validate=True) if scheme.lower() == "basic" else b""
        except (binascii.Error, ValueError):
            given = b""
        if not secrets.compare_digest(given, self.expected):
            return Response(
                "authentication required",
                status_code=401,
                headers={"WWW-Authenticate": 'Basic realm="worker_bridge"'},
            )
        return await call_next(request)


class Console:
    """The console's pages and actions, on one bridge."""

    def __init__(self, bridge: BridgeApp | None, settings: ConsoleSettings) -> None:
        self._bridge = bridge
        self.settings = settings

    @property
    def bridge(self) -> BridgeApp:
        """The bridge given, else the process's (found on first use)."""
        return self._bridge or get_bridge()

    @property
    def zone(self) -> ZoneInfo:
        """The zone cron schedules are read in, in which the console shows their times."""
        return ZoneInfo(self.bridge.settings.timezone)

    def render(self, request: Request, template: str, **context: Any) -> Response:
        token = request.cookies.get(CSRF_COOKIE) or secrets.token_urlsafe(32)
        response = _TEMPLATES.TemplateResponse(
            request,
            template,
            {
                **context,
                "csrf": token,
                "read_only": self.settings.read_only,
                "database": safe_url(self.bridge.settings.database_url),
                "zone": self.bridge.settings.timezone,
            },
        )
        response.set_cookie(CSRF_COOKIE, token, httponly=True, samesite="strict")
        return response

    # --- pages --------------------------------------------------------------------

    def overview(self, request: Request) -> Response:
        """Live rows by type, the last hour's finished rows and start lags, the broker."""
        app = self.bridge
        now = datetime.now(UTC)
        with app.engine.connect() as connection:
            backlog = app.store.live_backlog(
                connection, now=now, heartbeat_before=now - app.settings.heartbeat_timeout
            )
            minutes = app.store.finished_by_minute(
                connection, since=now - timedelta(hours=1), until=now + timedelta(minutes=1)
            )
            estimate = app.store.estimate_rows(connection)
        lags = {
            row.type: (now - row.oldest_due).total_seconds() if row.oldest_due else None
            for row in backlog
        }
        finished: dict[str, dict[str, int]] = {}
        for item in minutes:
            totals = finished.setdefault(item.type, {"succeeded": 0, "failed": 0, "cancelled": 0})
            totals["succeeded"] += item.succeeded
            totals["failed"] += item.failed
            totals["cancelled"] += item.cancelled
        celery = control.celery_of(app)
        queued = broker.queued_messages(celery, broker.job_queues(app, celery))
        types = sorted({row.type for row in backlog} | set(finished))
        return self.render(
            request, "overview.html", backlog={row.type: row for row in backlog}, types=types,
            lags=lags, finished=finished, in_flight=sum(row.dispatched for row in backlog),
            queued=queued, max_in_flight=app.settings.max_in_flight,
            chart=chart.last_hour(minutes, now=now), estimate=estimate,
        )  # fmt: skip

    def jobs(self, request: Request) -> Response:
        """The job list: filters, newest first, keyset pages of PAGE_SIZE, a capped count."""
        app = self.bridge
        query = request.query_params
        where, extra, problems = _job_filters(query, self.zone)
        context: dict[str, Any] = {
            "query": query, "states": [s.value for s in JobState], "time_fields": TIME_FIELDS,
            "rows": [], "older": None, "count": None, "estimate": None, "filtered": False,
            "query_without_page": _filter_fields(query),
        }  # fmt: skip
        if not problems:
            with app.engine.connect() as connection:
                if extra["job_id"] is not None:
                    found = app.store.get_job(connection, extra["job_id"]) is not None
                    target = (
                        request.url_for("job", job_id=extra["job_id"])
                        if found
                        else request.url_for("jobs")
                    )
                    return RedirectResponse(target, status_code=303)
                try:
                    rows = app.store.list_jobs(
                        connection, where, limit=PAGE_SIZE, before_id=extra["before"],
                        before_at=extra["before_at"],
                    )  # fmt: skip
                    count = app.store.count_jobs(connection, where, cap=COUNT_CAP)
                except ConfigurationError as exc:
                    problems.append(str(exc))
                else:
                    estimate = app.store.estimate_rows(connection) if where.is_empty else None
                    context.update(
                        rows=rows, count=count, estimate=estimate, filtered=not where.is_empty,
                        older={**context["query_without_page"], **_page_after(rows[-1], where)}
                        if len(rows) == PAGE_SIZE else None,
                    )  # fmt: skip
        return self.render(request, "jobs.html", problems=problems, **context)

    def job(self, request: Request) -> Response:
        """One job: timeline, result, lineage both ways, supersede links, why not run yet."""
        app = self.bridge
        job_id = int(request.path_params["job_id"])
        now = datetime.now(UTC)
        with app.engine.connect() as connection:
            row = app.store.get_job(connection, job_id)
            if row is None:
                return self.render(request, "missing.html", job_id=job_id)
            lineage = app.store.job_lineage(connection, job_id, limit=50)
            superseded = app.store.superseded_by(connection, row)
            in_flight = app.store.count_in_flight(connection)
        why = why_not_run(
            row, now=now, known_types=app.jobs.known_types(), in_flight=in_flight,
            max_in_flight=app.settings.max_in_flight,
        )  # fmt: skip
        result = row.result
        # Only a cancelled row's result is ours to read; a job's own result may
        # hold any key, "cancelled_by" included.
        cancelled_by = (
            result.get("cancelled_by")
            if row.state is JobState.CANCELLED and isinstance(result, dict)
            else None
        )
        if not isinstance(cancelled_by, int) or isinstance(cancelled_by, bool):
            cancelled_by = None
        flower = _without_credentials(self.settings.flower_url)
        return self.render(
            request, "job.html", job=row, steps=timeline(row), lineage=lineage,
            superseded=superseded, cancelled_by=cancelled_by, why=why,
            result=json.dumps(result, indent=2, ensure_ascii=False),
            message=request.query_params.get("message"),
            can_run_now=row.state is JobState.PENDING and row.due > now,
            can_run_again=row.finished is not None and not lineage.later,
            flower_task=f"{flower.rstrip('/')}/task/{row.task_id}"
            if flower and row.task_id else None,
        )  # fmt: skip

    def cron(self, request: Request) -> Response:
        """Every live cron series: its last runs, next fire times, late and missed flags."""
        app = self.bridge
        query = request.query_params
        problems: list[str] = []
        user_id = _number(query, "user", problems)
        after = None
        if query.get("after"):
            job_type, _, rest = query["after"].rpartition(":")
            user_text, _, id_text = rest.partition("/")
            try:
                after = (job_type, int(user_text), int(id_text))
            except ValueError:
                problems.append(f"after must be type:user/id, got {query['after']!r}")
        lines: list[series.SeriesLine] = []
        later = None
        if not problems:
            with app.engine.connect() as connection:
                found = app.store.cron_series(
                    connection, job_type=query.get("type") or None, user_id=user_id, after=after,
                    limit=PAGE_SIZE, history=SERIES_HISTORY,
                )  # fmt: skip
            now = datetime.now(UTC)
            fire = series.fire_times()
            lines = [series.describe(item, now=now, zone=self.zone, fire=fire) for item in found]
            if len(found) == PAGE_SIZE:
                last = found[-1].live
                later = {k: v for k, v in query.items() if k != "after" and v}
                later["after"] = f"{last.type}:{last.user_id}/{last.id}"
        return self.render(
            request, "cron.html", lines=lines, query=query, problems=problems, later=later,
            late_after=series.LATE_AFTER,
        )  # fmt: skip

    def bulk_cancel_preview(self, request: Request) -> Response:
        """How many live jobs a filter matches, and a form to cancel them (a confirmation)."""
        app = self.bridge
        query = request.query_params
        where, _extra, problems = _job_filters(query, self.zone)
        if not problems and where.is_empty:
            problems.append("choose a filter first: a bulk cancel never applies to every job")
        count = up_to = None
        if not problems:
            with app.engine.connect() as connection:
                try:
                    count = app.store.count_jobs(connection, where, cap=COUNT_CAP, live=True)
                except ConfigurationError as exc:
                    problems.append(str(exc))
                up_to = app.store.last_id(connection)
        fields = _filter_fields(query)
        return self.render(
            request, "bulk_cancel.html", problems=problems, count=count, up_to=up_to,
            fields=fields,
        )  # fmt: skip

    # --- actions ------------------------------------------------------------------

    async def _form(self, request: Request) -> tuple[Mapping[str, str] | None, Response | None]:
        """The action's form, or the refusal: read-only console, or a wrong CSRF token."""
        if self.settings.read_only:
            return None, Response("the console is read-only", status_code=403)
        form = await request.form()
        cookie = request.cookies.get(CSRF_COOKIE, "")
        sent = str(form.get("csrf", ""))
        if not cookie or not secrets.compare_digest(cookie, sent):
            return None, Response("missing or wrong CSRF token: reload the page", status_code=403)
        return {key: str(value) for key, value in form.items()}, None

    def _back_to_job(self, request: Request, job_id: int, message: str) -> Response:
        target = request.url_for("job", job_id=job_id).include_query_params(message=message)
        return RedirectResponse(target, status_code=303)

    async def _act_on_job(self, request: Request, act: Callable[[int], str]) -> Response:
        """Run ``act`` on the job of the URL (off the event loop); back to its page with
        what it said, or with why the job's state or id refused it."""
        _form, refused = await self._form(request)
        if refused:
            return refused
        job_id = int(request.path_params["job_id"])
        try:
            message = await run_in_threadpool(act, job_id)
        except (JobNotFoundError, JobStateError) as exc:
            message = str(exc)
        return self._back_to_job(request, job_id, message)

    async def cancel(self, request: Request) -> Response:
        """Cancel a live job (stopping it if it runs)."""

        def act(job_id: int) -> str:
            done = control.cancel_job(
                job_id, reason="Cancelled in the console.", bridge=self.bridge
            )
            stopped = "; its run was told to stop" if done.stopped else ""
            return f"cancelled (was {done.before.state.value}){stopped}"

        return await self._act_on_job(request, act)

    async def run_now(self, request: Request) -> Response:
        """Make a pending job due now."""

        def act(job_id: int) -> str:
            job = control.run_now(job_id, bridge=self.bridge)
            return f"due now ({job.due.isoformat()}): the dispatcher sends it on its next pass"

        return await self._act_on_job(request, act)

    async def run_again(self, request: Request) -> Response:
        """Schedule a finished job again as a new row that follows it; show the new row."""
        _form, refused = await self._form(request)
        if refused:
            return refused
        job_id = int(request.path_params["job_id"])
        try:
            new = await run_in_threadpool(control.run_again, job_id, bridge=self.bridge)
        except (JobNotFoundError, JobStateError) as exc:
            return self._back_to_job(request, job_id, str(exc))
        return self._back_to_job(request, new.id, f"scheduled again from job {job_id}, due now")

    async def bulk_cancel(self, request: Request) -> Response:
        """Cancel every live match of the filter the preview showed (rows up to its last id)."""
        form, refused = await self._form(request)
        if refused or form is None:
            return refused or Response(status_code=400)
        where, _extra, problems = _job_filters(form, self.zone)
        up_to_text = form.get("up_to", "")
        if not up_to_text.isdigit():
            problems.append("the confirmation lacks the preview's last id: open the preview again")
        fields = _filter_fields(form)
        if not problems:
            try:
                done = await run_in_threadpool(
                    control.cancel_jobs, where, up_to=int(up_to_text),
                    reason="Cancelled in bulk in the console.", bridge=self.bridge,
                )  # fmt: skip
            except (ValueError, ConfigurationError) as exc:
                problems.append(str(exc))
            else:
                message = f"cancelled {done.cancelled} jobs" + (
                    f"; {done.stopped} running ones were told to stop" if done.stopped else ""
                )
                target = request.url_for("jobs").include_query_params(**fields, message=message)
                return RedirectResponse(target, status_code=303)
        return self.render(
            request, "bulk_cancel.html", problems=problems, count=None, up_to=None, fields=fields
        )


def _page_after(last: JobSummary, where: JobFilter) -> dict[str, str]:
    """The query parameters of the page after the one that ends with ``last``."""
    page = {"before": str(last.id)}
    if where.since is not None or where.until is not None:
        moment = getattr(last, where.time_field)
        if moment is not None:
            page["before_at"] = moment.isoformat()
    return page


def _without_credentials(url: str | None) -> str | None:
    """``url`` without a user and password: no secret goes into a page, not even Flower's."""
    if not url:
        return None
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    # A query or fragment may carry a token; the link needs neither.
    return urlunsplit(parts._replace(netloc=netloc, query="", fragment=""))


def _filter_fields(query: Mapping[str, str]) -> dict[str, str]:
    """The parameters that make up a filter (not the page, id, message or token)."""
    return {k: v for k, v in query.items() if k not in _NOT_FILTERS and v}


def _number(query: Mapping[str, str], name: str, problems: list[str]) -> int | None:
    text = query.get(name, "").strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        problems.append(f"{name} must be a whole number, got {text!r}")
        return None


def _moment(query: Mapping[str, str], name: str, zone: ZoneInfo, problems: list[str]) -> Any:
    """A time from the form: ISO 8601, read in the console's zone when it has no offset."""
    text = query.get(name, "").strip()
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        problems.append(f"{name} must be a date and time such as 2026-12-06T14:30, got {text!r}")
        return None
    return moment.replace(tzinfo=zone) if moment.tzinfo is None else moment


def _job_filters(
    query: Mapping[str, str], zone: ZoneInfo
) -> tuple[JobFilter, dict[str, Any], list[str]]:
    """The job list's filter from the query string, the id and page, and what is wrong."""
    problems: list[str] = []
    extra = {
        "job_id": _number(query, "id", problems),
        "before": _number(query, "before", problems),
        "before_at": _moment(query, "before_at", zone, problems),
    }
    state = None
    state_text = query.get("state", "").strip()
    if state_text:
        try:
            state = JobState(state_text)
        except ValueError:
            problems.append(f"unknown state {state_text!r}")
    data = None
    data_text = query.get("data", "").strip()
    if data_text:
        try:
            data = json.loads(data_text)
        except ValueError as exc:
            problems.append(f'data must be a JSON object such as {{"plan": "pro"}}: {exc}')
        else:
            if not isinstance(data, dict):
                problems.append(f"data must be a JSON object, got {type(data).__name__}")
                data = None
            elif not data:
                problems.append("data {} is contained in every job's data: name at least one key")
                data = None
    time_field = query.get("field", "") or "due"
    if time_field not in TIME_FIELDS:
        problems.append(f"field must be one of {', '.join(TIME_FIELDS)}, got {time_field!r}")
        time_field = "due"
    where = JobFilter(
        job_type=query.get("type") or None,
        user_id=_number(query, "user", problems),
        status=state,
        task_id=query.get("task_id") or None,
        data=data,
        time_field=time_field,
        since=_moment(query, "since", zone, problems),
        until=_moment(query, "until", zone, problems),
    )
    return where, extra, problems


def create_app(
    bridge: BridgeApp | None = None, settings: ConsoleSettings | None = None
) -> Starlette:
    """The console as an ASGI app, on ``bridge`` (default: the process's), mountable anywhere."""
    console = Console(bridge, settings or ConsoleSettings())
    routes: list[Route | Mount] = [
        Route("/", console.overview, name="overview"),
        Route("/jobs", console.jobs, name="jobs"),
        Route("/jobs/cancel", console.bulk_cancel_preview, name="bulk_cancel_preview"),
        Route("/jobs/cancel", console.bulk_cancel, methods=["POST"], name="bulk_cancel"),
        Route("/jobs/{job_id:int}", console.job, name="job"),
        Route("/jobs/{job_id:int}/cancel", console.cancel, methods=["POST"], name="cancel"),
        Route("/jobs/{job_id:int}/run-now", console.run_now, methods=["POST"], name="run_now"),
        Route(
            "/jobs/{job_id:int}/run-again", console.run_again, methods=["POST"], name="run_again"
        ),
        Route("/cron", console.cron, name="cron"),
    ]
    try:
        from prometheus_client import make_asgi_app

        from worker_bridge.metrics import registry_for

        routes.append(Mount("/metrics", app=make_asgi_app(registry_for(console.bridge))))
    except ImportError:  # pragma: no cover - prometheus-client is part of [web]
        pass
    auth = console.settings.auth
    middleware = [Middleware(_BasicAuth, credentials=auth)] if auth else []
    return Starlette(routes=routes, middleware=middleware)
