"""The operator's console: ``worker-bridge web``, or an ASGI app to mount in an application.

Server-rendered pages over the table (Starlette and Jinja2, the ``[web]``
extra): the overview by type, the job list with filters and keyset
pagination, a job with its timeline, lineage, supersede links and why it has
not run yet, and a cancel that stops a running job. ``/metrics`` serves the
same Prometheus metrics as ``worker-bridge metrics``.

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
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.templating import Jinja2Templates

from worker_bridge.bridge import BridgeApp, get_bridge
from worker_bridge.control import cancel_job
from worker_bridge.db import safe_url
from worker_bridge.errors import JobFinishedError, JobNotFoundError
from worker_bridge.job import JobState
from worker_bridge.web.explain import timeline, why_not_run

#: Rows of one page of the job list.
PAGE_SIZE = 50
CSRF_COOKIE = "worker_bridge_csrf"
_TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))


@dataclass(frozen=True, slots=True)
class ConsoleSettings:
    """How the console is served."""

    #: Refuse every action (cancel): a console to look, not to touch.
    read_only: bool = False
    #: "user:password" for HTTP basic auth on every request; None: no authentication.
    auth: str | None = None


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
            },
        )
        response.set_cookie(CSRF_COOKIE, token, httponly=True, samesite="strict")
        return response

    async def overview(self, request: Request) -> Response:
        """Live rows by type, how late each type runs, the in-flight window."""
        app = self.bridge
        now = datetime.now(UTC)
        with app.engine.connect() as connection:
            backlog = app.store.live_backlog(
                connection, now=now, heartbeat_before=now - app.settings.heartbeat_timeout
            )
        lags = {
            row.type: (now - row.oldest_due).total_seconds() if row.oldest_due else None
            for row in backlog
        }
        return self.render(
            request, "overview.html", backlog=backlog, lags=lags,
            in_flight=sum(row.dispatched for row in backlog),
            max_in_flight=app.settings.max_in_flight,
        )  # fmt: skip

    async def jobs(self, request: Request) -> Response:
        """The job list: filters, newest first, keyset pages of PAGE_SIZE."""
        app = self.bridge
        query = request.query_params
        filters, problems = _job_filters(query)
        if problems:
            return self.render(
                request, "jobs.html", rows=[], query=query, problems=problems, older=None,
                states=[s.value for s in JobState],
            )  # fmt: skip
        job_id = filters.pop("job_id")
        with app.engine.connect() as connection:
            if job_id is not None:
                found = app.store.get_job(connection, job_id) is not None
                target = request.url_for("job", job_id=job_id) if found else request.url_for("jobs")
                return RedirectResponse(target, status_code=303)
            rows = app.store.list_jobs(connection, limit=PAGE_SIZE, **filters)
        more = {k: v for k, v in query.items() if k != "before" and v}
        older = {**more, "before": str(rows[-1].id)} if len(rows) == PAGE_SIZE else None
        return self.render(
            request, "jobs.html", rows=rows, query=query, problems=[], older=older,
            states=[s.value for s in JobState],
        )  # fmt: skip

    async def job(self, request: Request) -> Response:
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
        cancelled_by = result.get("cancelled_by") if isinstance(result, dict) else None
        return self.render(
            request, "job.html", job=row, steps=timeline(row), lineage=lineage,
            superseded=superseded, cancelled_by=cancelled_by, why=why,
            result=json.dumps(result, indent=2, ensure_ascii=False),
            message=request.query_params.get("message"),
        )  # fmt: skip

    async def cancel(self, request: Request) -> Response:
        """Cancel a live job (stopping it if it runs): a POST with the CSRF token."""
        if self.settings.read_only:
            return Response("the console is read-only", status_code=403)
        form = await request.form()
        cookie = request.cookies.get(CSRF_COOKIE, "")
        sent = str(form.get("csrf", ""))
        if not cookie or not secrets.compare_digest(cookie, sent):
            return Response("missing or wrong CSRF token: reload the page", status_code=403)
        job_id = int(request.path_params["job_id"])
        try:
            done = cancel_job(job_id, reason="Cancelled in the console.", bridge=self.bridge)
            message = f"cancelled (was {done.before.state.value})" + (
                "; its run was told to stop" if done.stopped else ""
            )
        except (JobNotFoundError, JobFinishedError) as exc:
            message = str(exc)
        target = request.url_for("job", job_id=job_id).include_query_params(message=message)
        return RedirectResponse(target, status_code=303)


def _job_filters(query: Any) -> tuple[dict[str, Any], list[str]]:
    """The job list's filters from the query string, and what is wrong with them."""
    problems: list[str] = []

    def number(name: str) -> int | None:
        text = query.get(name, "").strip()
        if not text:
            return None
        try:
            return int(text)
        except ValueError:
            problems.append(f"{name} must be a whole number, got {text!r}")
            return None

    state = None
    state_text = query.get("state", "").strip()
    if state_text:
        try:
            state = JobState(state_text)
        except ValueError:
            problems.append(f"unknown state {state_text!r}")
    filters = {
        "job_id": number("id"),
        "user_id": number("user"),
        "before_id": number("before"),
        "status": state,
        "job_type": query.get("type") or None,
        "task_id": query.get("task_id") or None,
    }
    return filters, problems


def create_app(
    bridge: BridgeApp | None = None, settings: ConsoleSettings | None = None
) -> Starlette:
    """The console as an ASGI app, on ``bridge`` (default: the process's), mountable anywhere."""
    console = Console(bridge, settings or ConsoleSettings())
    routes: list[Route | Mount] = [
        Route("/", console.overview, name="overview"),
        Route("/jobs", console.jobs, name="jobs"),
        Route("/jobs/{job_id:int}", console.job, name="job"),
        Route("/jobs/{job_id:int}/cancel", console.cancel, methods=["POST"], name="cancel"),
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
