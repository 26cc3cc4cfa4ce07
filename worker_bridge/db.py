"""Engines and sessions: how worker_bridge connects. No queries live here."""

from __future__ import annotations

import functools
import json
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import Session, sessionmaker

from worker_bridge.errors import ConfigurationError

#: JSON as PostgreSQL accepts it: NaN and Infinity are not JSON, and compact
#: separators keep large payloads smaller on the wire.
json_dumps = functools.partial(json.dumps, allow_nan=False, separators=(",", ":"))


def create_db_engine(url: str, **kwargs: Any) -> Engine:
    """Create the engine worker_bridge uses for ``url``.

    On PostgreSQL every connection runs in UTC so that timestamps need no
    conversion; on SQLite foreign keys are switched on (off by default there).
    """
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ConfigurationError(
            "WORKER_BRIDGE_DATABASE_URL is not a SQLAlchemy URL "
            "(e.g. postgresql+psycopg://user@host/db)"
        ) from exc
    backend = parsed.get_backend_name()
    # No pool_pre_ping: it costs a round trip on every checkout, on the hot
    # path of every job. A connection found dead is invalidated with the whole
    # pool on first use, and the worker and dispatcher retry that operation.
    options: dict[str, Any] = {"json_serializer": json_dumps}
    if backend == "postgresql":
        options["connect_args"] = {"options": "-c timezone=UTC"}
    elif backend == "sqlite":
        options["connect_args"] = {"timeout": 30}
    options.update(kwargs)
    engine = create_engine(parsed, **options)
    if backend == "sqlite":
        event.listen(engine, "connect", _sqlite_on_connect)
        event.listen(engine, "begin", _sqlite_on_begin)
    return engine


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # Take over transaction control from the sqlite3 module (see _sqlite_on_begin).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _sqlite_on_begin(connection: Any) -> None:
    # Every transaction takes SQLite's write lock up front: a deferred
    # transaction that reads and then writes can fail with "database is
    # locked" at once when another process writes, instead of waiting.
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def autocommit_engine(engine: Engine, **kwargs: Any) -> Engine:
    """An engine in autocommit mode for ``engine``'s database, for single-statement writes.

    One conditional UPDATE is atomic by itself; autocommit spares it the
    BEGIN and COMMIT round trips. The engine has a pool of its own whose
    connections stay in autocommit: sharing ``engine``'s pool would switch
    each connection's mode at every checkout and back at every return, which
    costs more than the statement on the worker's hot path. ``kwargs`` are
    the options ``engine`` was created with. SQLite keeps its explicit
    transactions (see ``_sqlite_on_begin``), which cost no network there.
    """
    if engine.dialect.name == "sqlite":
        return engine
    return create_db_engine(
        engine.url.render_as_string(hide_password=False),
        **{**kwargs, "isolation_level": "AUTOCOMMIT"},
    )


def create_session_factory(engine: Engine) -> sessionmaker[Session]:
    """A session factory bound to ``engine`` whose objects stay readable after commit."""
    return sessionmaker(engine, expire_on_commit=False)


def safe_url(url: str) -> str:
    """``url`` with its password masked, for logs and error messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable database URL>"
